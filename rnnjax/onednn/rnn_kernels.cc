// rnnjax's oneDNN extra: LSTM, GRU (Keras 2's reset_after=False) and linear-before-reset GRU
// (Keras's reset_after=True) through oneDNN's fused RNN primitives, as XLA typed-FFI handlers
// for the CPU. Compiled at first use by rnnjax/onednn/_build.py against jax.ffi.include_dir()
// and the onednn-devel-cpu-gomp headers; linked to the onednn-cpu-gomp library by path (rpath).
//
// Handlers (rnnjax/onednn/ops.py calls them; attributes: cell 0 LSTM, 1 GRU, 2 LBR GRU;
// reverse: right-to-left; x and y batch-major, (N, T, C)):
//   rnnjax_onednn_fwd  args  x, h0, [c0], w_layer (I,G,U), w_iter (U,G,U), bias (Gb,U)
//                      rets  y, hT, [cT], [workspace (bytes,) u8 when training]
//   rnnjax_onednn_bwd  args  x, h0, [c0], w_layer, w_iter, bias, y, hT, [cT], workspace, dy, dhT, [dcT]
//                      rets  dx, dh0, [dc0], dw_layer, dw_iter, dbias
// ([c0], [cT], [dc0], [dcT]: the LSTM only.) Weights are oneDNN's ldigo with L = D = 1, i.e.
// Keras's (I, G*U) kernel as (I, G, U); biases ldgo.
#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>
#include <unordered_map>
#include <vector>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using dnnl::memory;
using tag = memory::format_tag;
using dt = memory::data_type;

namespace {

enum Cell : int64_t { kLSTM = 0, kGRU = 1, kLBRGRU = 2 };

struct Dims {
  int64_t cell, T, N, I, U;
  bool reverse;
  auto key() const { return std::make_tuple(cell, T, N, I, U, reverse); }
};

int64_t Gates(int64_t cell) { return cell == kLSTM ? 4 : 3; }
int64_t BiasGates(int64_t cell) { return cell == kGRU ? 3 : 4; }
bool HasC(int64_t cell) { return cell == kLSTM; }

dnnl::engine& Engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

struct Descs {
  memory::desc layer_in, layer_out, iter, wl, wi, wl_any, wi_any, bias;
};

Descs MakeDescs(const Dims& d) {
  const int64_t g = Gates(d.cell);
  Descs s;
  s.layer_in = memory::desc({d.T, d.N, d.I}, dt::f32, tag::ntc);
  s.layer_out = memory::desc({d.T, d.N, d.U}, dt::f32, tag::ntc);
  s.iter = memory::desc({1, 1, d.N, d.U}, dt::f32, tag::ldnc);
  s.wl = memory::desc({1, 1, d.I, g, d.U}, dt::f32, tag::ldigo);
  s.wi = memory::desc({1, 1, d.U, g, d.U}, dt::f32, tag::ldigo);
  s.wl_any = memory::desc({1, 1, d.I, g, d.U}, dt::f32, tag::any);
  s.wi_any = memory::desc({1, 1, d.U, g, d.U}, dt::f32, tag::any);
  s.bias = memory::desc({1, 1, BiasGates(d.cell), d.U}, dt::f32, tag::ldgo);
  return s;
}

dnnl::rnn_direction Direction(const Dims& d) {
  return d.reverse ? dnnl::rnn_direction::unidirectional_right2left
                   : dnnl::rnn_direction::unidirectional_left2right;
}

// A primitive with its descriptor, made once per shape and phase (making one JIT-compiles kernels).
struct Entry {
  dnnl::rnn_primitive_desc_base pd;
  dnnl::primitive prim;
};

enum Phase : int { kInference = 0, kTraining = 1, kBackward = 2 };

// The forward primitive of `phase` or, for kBackward, the backward one with the training forward's
// descriptor as its hint. (Typed descriptors throughout: a typed descriptor made from another's raw
// handle would own, and free, that handle a second time.)
template <class Fwd, class Bwd, class... A>
Entry Make(Phase phase, dnnl::rnn_direction dir, const std::tuple<A...>& fwd_args,
           const std::tuple<A...>& bwd_extra) {
  const auto prop = phase == kInference ? dnnl::prop_kind::forward_inference : dnnl::prop_kind::forward_training;
  // The caller passes the scratchpad (Scratchpad()): oneDNN's own is per creating thread, and XLA
  // runs a call on any of its threads.
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  typename Fwd::primitive_desc f = std::apply(
      [&](const auto&... m) { return typename Fwd::primitive_desc(Engine(), prop, dir, m..., attr); }, fwd_args);
  if (phase != kBackward) return Entry{f, Fwd(f)};
  typename Bwd::primitive_desc b = std::apply(
      [&](const auto&... m) {
        return typename Bwd::primitive_desc(Engine(), dnnl::prop_kind::backward, dir, m..., f, attr);
      },
      std::tuple_cat(fwd_args, bwd_extra));
  return Entry{b, Bwd(b)};
}

Entry MakeEntry(const Dims& d, Phase phase) {
  const Descs s = MakeDescs(d);
  const auto dir = Direction(d);
  // forward: src_layer, src_iter[, src_iter_c], weights_layer, weights_iter, bias, dst_layer, dst_iter[, dst_iter_c];
  // backward adds the diffs of the same in the same order (plain layouts for the weight gradients)
  switch (d.cell) {
    case kLSTM:
      return Make<dnnl::lstm_forward, dnnl::lstm_backward>(
          phase, dir, std::make_tuple(s.layer_in, s.iter, s.iter, s.wl_any, s.wi_any, s.bias, s.layer_out, s.iter, s.iter),
          std::make_tuple(s.layer_in, s.iter, s.iter, s.wl, s.wi, s.bias, s.layer_out, s.iter, s.iter));
    case kGRU:
      return Make<dnnl::gru_forward, dnnl::gru_backward>(
          phase, dir, std::make_tuple(s.layer_in, s.iter, s.wl_any, s.wi_any, s.bias, s.layer_out, s.iter),
          std::make_tuple(s.layer_in, s.iter, s.wl, s.wi, s.bias, s.layer_out, s.iter));
    default:
      return Make<dnnl::lbr_gru_forward, dnnl::lbr_gru_backward>(
          phase, dir, std::make_tuple(s.layer_in, s.iter, s.wl_any, s.wi_any, s.bias, s.layer_out, s.iter),
          std::make_tuple(s.layer_in, s.iter, s.wl, s.wi, s.bias, s.layer_out, s.iter));
  }
}

std::mutex cache_mutex;
std::map<std::tuple<int, int64_t, int64_t, int64_t, int64_t, int64_t, bool>, Entry> cache;

const Entry& Get(const Dims& d, Phase phase) {
  auto k = std::tuple_cat(std::make_tuple(static_cast<int>(phase)), d.key());
  std::lock_guard<std::mutex> lock(cache_mutex);
  auto it = cache.find(k);
  if (it != cache.end()) return it->second;
  return cache.emplace(k, MakeEntry(d, phase)).first->second;
}

dnnl::stream& Stream() {
  thread_local dnnl::stream stream(Engine());
  return stream;
}

// This thread's scratchpad for `e`, grown as needed (64-byte aligned).
memory Scratchpad(const Entry& e) {
  thread_local std::unique_ptr<char[]> buffer;
  thread_local size_t capacity = 0;
  const memory::desc md = e.pd.scratchpad_desc();
  const size_t need = md.get_size() + 64;
  if (need > capacity) {
    buffer.reset(new char[need]);
    capacity = need;
  }
  const auto address = reinterpret_cast<std::uintptr_t>(buffer.get());
  return memory(md, Engine(), reinterpret_cast<void*>((address + 63) & ~std::uintptr_t{63}));
}

// `user` (the layout XLA holds) in the layout `wanted`: the user memory itself when they agree,
// else a reordered copy (e.g. packed weights for the inference GEMMs).
memory AsLayout(const memory& user, const memory::desc& wanted) {
  if (user.get_desc() == wanted) return user;
  memory m(wanted, Engine());
  dnnl::reorder(user, m).execute(Stream(), const_cast<memory&>(user), m);
  return m;
}

memory Mem(const memory::desc& md, const ffi::AnyBuffer& b) { return memory(md, Engine(), b.untyped_data()); }

// The arguments the forward and the backward primitive share: sources, weights (in the layout the
// primitive wants), bias, destinations; c0/cT: the LSTM's cell states (nullptr for the GRUs).
std::unordered_map<int, memory> PrimalArgs(const Descs& s, const Entry& e, const ffi::AnyBuffer& x,
                                           const ffi::AnyBuffer& h0, const ffi::AnyBuffer* c0,
                                           const ffi::AnyBuffer& wl, const ffi::AnyBuffer& wi,
                                           const ffi::AnyBuffer& b, const ffi::AnyBuffer& y,
                                           const ffi::AnyBuffer& hT, const ffi::AnyBuffer* cT) {
  std::unordered_map<int, memory> m;
  m[DNNL_ARG_SRC_LAYER] = Mem(s.layer_in, x);
  m[DNNL_ARG_SRC_ITER] = Mem(s.iter, h0);
  m[DNNL_ARG_WEIGHTS_LAYER] = AsLayout(Mem(s.wl, wl), e.pd.weights_layer_desc());
  m[DNNL_ARG_WEIGHTS_ITER] = AsLayout(Mem(s.wi, wi), e.pd.weights_iter_desc());
  m[DNNL_ARG_BIAS] = Mem(s.bias, b);
  m[DNNL_ARG_DST_LAYER] = Mem(s.layer_out, y);
  m[DNNL_ARG_DST_ITER] = Mem(s.iter, hT);
  if (c0 != nullptr) {
    m[DNNL_ARG_SRC_ITER_C] = Mem(s.iter, *c0);
    m[DNNL_ARG_DST_ITER_C] = Mem(s.iter, *cT);
  }
  return m;
}

// The sizes of a call from x ((N, T, I), or (T, N, I) time-major) and w_iter (U, G, U); false on bad ranks.
bool ReadDims(int64_t cell, bool reverse, const ffi::AnyBuffer& x, const ffi::AnyBuffer& w_iter, Dims* d) {
  auto xd = x.dimensions();
  auto wd = w_iter.dimensions();
  if (cell < kLSTM || cell > kLBRGRU || xd.size() != 3 || wd.size() != 3) return false;
  d->cell = cell;
  d->reverse = reverse;
  d->T = xd[1];
  d->N = xd[0];
  d->I = xd[2];
  d->U = wd[0];
  return true;
}

std::vector<ffi::AnyBuffer> Buffers(const ffi::RemainingArgs& args) {
  std::vector<ffi::AnyBuffer> a;
  for (size_t i = 0; i < args.size(); ++i) a.push_back(args.get<ffi::AnyBuffer>(i).value());
  return a;
}

std::vector<ffi::AnyBuffer> Buffers(const ffi::RemainingRets& rets) {
  std::vector<ffi::AnyBuffer> r;
  for (size_t i = 0; i < rets.size(); ++i) r.push_back(*rets.get<ffi::AnyBuffer>(i).value());
  return r;
}

const ffi::Error kBadOperands = ffi::Error::InvalidArgument("rnnjax_onednn: unexpected operands");

ffi::Error Fail(const std::exception& e) { return ffi::Error::Internal(std::string("rnnjax_onednn: ") + e.what()); }

ffi::Error Forward(int64_t cell, bool reverse, bool training, ffi::RemainingArgs args, ffi::RemainingRets rets) {
  try {
    const bool c = HasC(cell);
    const size_t n_args = c ? 6 : 5, n_rets = (c ? 3 : 2) + (training ? 1 : 0);
    if (args.size() != n_args || rets.size() != n_rets)
      return kBadOperands;
    const std::vector<ffi::AnyBuffer> a = Buffers(args), r = Buffers(rets);
    for (const auto& b : a)
      if (b.element_type() != ffi::DataType::F32) return ffi::Error::InvalidArgument("rnnjax_onednn: float32 only");
    const ffi::AnyBuffer &x = a[0], &h0 = a[1], &wl = a[c ? 3 : 2], &wi = a[c ? 4 : 3], &b = a[c ? 5 : 4];
    Dims d;
    if (!ReadDims(cell, reverse, x, wi, &d)) return kBadOperands;
    const Descs s = MakeDescs(d);
    const Entry& e = Get(d, training ? kTraining : kInference);
    std::unordered_map<int, memory> m =
        PrimalArgs(s, e, x, h0, c ? &a[2] : nullptr, wl, wi, b, r[0], r[1], c ? &r[2] : nullptr);
    if (training) {
      const ffi::AnyBuffer& ws = r[c ? 3 : 2];
      if (ws.size_bytes() != e.pd.workspace_desc().get_size())
        return ffi::Error::InvalidArgument("rnnjax_onednn_fwd: workspace size mismatch");
      m[DNNL_ARG_WORKSPACE] = Mem(e.pd.workspace_desc(), ws);
    }
    m[DNNL_ARG_SCRATCHPAD] = Scratchpad(e);
    e.prim.execute(Stream(), m);
    Stream().wait();
    return ffi::Error::Success();
  } catch (const std::exception& ex) {
    return Fail(ex);
  }
}

ffi::Error Backward(int64_t cell, bool reverse, ffi::RemainingArgs args, ffi::RemainingRets rets) {
  try {
    const bool c = HasC(cell);
    const size_t n_args = c ? 13 : 10, n_rets = c ? 6 : 5;
    if (args.size() != n_args || rets.size() != n_rets)
      return kBadOperands;
    const std::vector<ffi::AnyBuffer> a = Buffers(args), r = Buffers(rets);
    // args: x h0 [c0] wl wi b y hT [cT] ws dy dhT [dcT]; rets: dx dh0 [dc0] dwl dwi db
    size_t i = 0;
    const ffi::AnyBuffer &x = a[i++], &h0 = a[i++];
    const ffi::AnyBuffer* c0 = c ? &a[i++] : nullptr;
    const ffi::AnyBuffer &wl = a[i++], &wi = a[i++], &b = a[i++], &y = a[i++], &hT = a[i++];
    const ffi::AnyBuffer* cT = c ? &a[i++] : nullptr;
    const ffi::AnyBuffer &ws = a[i++], &dy = a[i++], &dhT = a[i++];
    const ffi::AnyBuffer* dcT = c ? &a[i++] : nullptr;
    size_t j = 0;
    const ffi::AnyBuffer &dx = r[j++], &dh0 = r[j++];
    const ffi::AnyBuffer* dc0 = c ? &r[j++] : nullptr;
    const ffi::AnyBuffer &dwl = r[j++], &dwi = r[j++], &db = r[j++];
    Dims d;
    if (!ReadDims(cell, reverse, x, wi, &d)) return kBadOperands;
    const Descs s = MakeDescs(d);
    const Entry& e = Get(d, kBackward);
    if (ws.size_bytes() != e.pd.workspace_desc().get_size())
      return ffi::Error::InvalidArgument("rnnjax_onednn_bwd: workspace size mismatch");
    std::unordered_map<int, memory> m = PrimalArgs(s, e, x, h0, c0, wl, wi, b, y, hT, cT);
    m[DNNL_ARG_WORKSPACE] = Mem(e.pd.workspace_desc(), ws);
    m[DNNL_ARG_DIFF_DST_LAYER] = Mem(s.layer_out, dy);
    m[DNNL_ARG_DIFF_DST_ITER] = Mem(s.iter, dhT);
    m[DNNL_ARG_DIFF_SRC_LAYER] = Mem(s.layer_in, dx);
    m[DNNL_ARG_DIFF_SRC_ITER] = Mem(s.iter, dh0);
    // The C++ API's backward adds the weight gradients to the memory given: start from zeros.
    memory dwl_user = Mem(s.wl, dwl), dwi_user = Mem(s.wi, dwi);
    memory dwl_m = dwl_user.get_desc() == e.pd.diff_weights_layer_desc() ? dwl_user
                                                                          : memory(e.pd.diff_weights_layer_desc(), Engine());
    memory dwi_m = dwi_user.get_desc() == e.pd.diff_weights_iter_desc() ? dwi_user
                                                                        : memory(e.pd.diff_weights_iter_desc(), Engine());
    std::memset(dwl_m.get_data_handle(), 0, dwl_m.get_desc().get_size());
    std::memset(dwi_m.get_data_handle(), 0, dwi_m.get_desc().get_size());
    std::memset(db.untyped_data(), 0, db.size_bytes());
    m[DNNL_ARG_DIFF_WEIGHTS_LAYER] = dwl_m;
    m[DNNL_ARG_DIFF_WEIGHTS_ITER] = dwi_m;
    m[DNNL_ARG_DIFF_BIAS] = Mem(s.bias, db);
    if (c) {
      m[DNNL_ARG_DIFF_DST_ITER_C] = Mem(s.iter, *dcT);
      m[DNNL_ARG_DIFF_SRC_ITER_C] = Mem(s.iter, *dc0);
    }
    m[DNNL_ARG_SCRATCHPAD] = Scratchpad(e);
    e.prim.execute(Stream(), m);
    if (dwl_m != dwl_user) dnnl::reorder(dwl_m, dwl_user).execute(Stream(), dwl_m, dwl_user);
    if (dwi_m != dwi_user) dnnl::reorder(dwi_m, dwi_user).execute(Stream(), dwi_m, dwi_user);
    Stream().wait();
    return ffi::Error::Success();
  } catch (const std::exception& ex) {
    return Fail(ex);
  }
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(rnnjax_onednn_fwd, Forward,
                              ffi::Ffi::Bind()
                                  .Attr<int64_t>("cell")
                                  .Attr<bool>("reverse")
                                  .Attr<bool>("training")
                                  .RemainingArgs()
                                  .RemainingRets());

XLA_FFI_DEFINE_HANDLER_SYMBOL(rnnjax_onednn_bwd, Backward,
                              ffi::Ffi::Bind()
                                  .Attr<int64_t>("cell")
                                  .Attr<bool>("reverse")
                                  .RemainingArgs()
                                  .RemainingRets());

// The training forward's workspace in bytes (the size of the u8 buffer the forward returns and the
// backward reads), or -1 when oneDNN cannot make the primitive (rnnjax_onednn_error says why).
namespace {
thread_local std::string last_error;
}

extern "C" int64_t rnnjax_onednn_workspace_bytes(int64_t cell, int64_t T, int64_t N, int64_t I, int64_t U,
                                                 int reverse) {
  try {
    Dims d{cell, T, N, I, U, reverse != 0};
    return static_cast<int64_t>(Get(d, kTraining).pd.workspace_desc().get_size());
  } catch (const std::exception& ex) {
    last_error = ex.what();
    return -1;
  }
}

extern "C" const char* rnnjax_onednn_error() { return last_error.c_str(); }

extern "C" int rnnjax_onednn_version() {
  const dnnl_version_t* v = dnnl_version();
  return v->major * 10000 + v->minor * 100 + v->patch;
}
