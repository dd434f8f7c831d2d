"""NNX ``CuDNNLSTM`` and ``CuDNNGRU``: Keras 2's cuDNN layers with Keras 2's weight layout (see
:mod:`rnnjax.cudnn.layers` for the equations, backends and masks; the arguments are the linen
twins')::

    layer = rnnjax.nnx.CuDNNLSTM(64, return_sequences=True, input_dim=8, rngs=nnx.Rngs(0))
    y = layer(x, mask=None, initial_state=None, seq_lengths=None)

Parameters at the layer's top level, as in linen: ``kernel (I, G*U)``, ``recurrent_kernel (U, G*U)``,
``bias (2*G*U,)`` (G = 4 for the LSTM, 3 for the GRU).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from rnnjax.cudnn import convert, fused, layers as linen_cudnn
from rnnjax.functional.core import check_units, init_weight
from rnnjax.functional.gru import GRUCore
from rnnjax.functional.lstm import LSTMCore
from rnnjax.nnx import _args, _path
from rnnjax.nnx.cells import WEIGHTS, weight_param
from rnnjax.nnx.recurrent import Recurrent


class _CuDNN(Recurrent):
    """Shared NNX CuDNN layer (``linen_class``: the linen twin, whose ``kind``/``gates``/backend
    choice and scan backend it uses)."""

    linen_class = None

    def __init__(self, *args, input_dim=None, batch_size=None, rngs=None, **kwargs):
        owner = type(self).__name__
        config = _args.bind(owner, self.linen_class, args, kwargs, "stateful", "units")
        spec = self.spec = self.linen_class(**config)
        check_units(spec.units)
        if spec.backend not in linen_cudnn.BACKENDS:
            raise ValueError(f"`backend`: expected one of {linen_cudnn.BACKENDS}, got {spec.backend!r}.")
        input_dim = _args.check_input_dim(owner, input_dim)
        keys = jax.random.split(_args.check_rngs(owner, rngs).params(), 3)
        u, g, dtype = spec.units, spec.gates, spec.param_dtype
        values = {
            "kernel": init_weight(spec.kernel_initializer, keys[0], (input_dim, g * u), dtype, "kernel_initializer"),
            "recurrent_kernel": init_weight(spec.recurrent_initializer, keys[1], (u, g * u), dtype,
                                            "recurrent_initializer"),
            "bias": spec._bias_init(keys[2], (2 * g * u,), dtype),
        }
        for name, arg in WEIGHTS:
            setattr(self, name, weight_param(values[name], getattr(spec, f"{arg}_regularizer"),
                                             getattr(spec, f"{arg}_constraint"), arg))
        self._setup(config, batch_size, None)

    def _core(self):
        return LSTMCore(self.spec.units) if self.spec.kind == "LSTM" else GRUCore(self.spec.units)

    def _state_template(self, feature_shape):
        return self._core().initial_state((self.batch_size,), jnp.float32)

    def __call__(self, inputs, mask=None, initial_state=None, seq_lengths=None, training=None):
        """``inputs (batch, timesteps, features)`` -> the output, then the final states with
        ``return_state``; ``mask``: right-padded boolean ``(batch, timesteps)``, or ``seq_lengths
        (batch,)``. ``training`` is accepted and unused (no dropout)."""
        del training
        spec = self.spec
        _path.check_inputs(inputs)
        batch, steps, features = inputs.shape
        if steps == 0:
            raise ValueError(f"`inputs`: the time axis is empty (shape {inputs.shape}).")
        if features != self.kernel.shape[0]:
            raise ValueError(f"`inputs`: {features} features per step, but {type(self).__name__} was built for "
                             f"{self.kernel.shape[0]} (input_dim={self.kernel.shape[0]}).")
        params_class = convert.CuDNNLSTMParams if spec.kind == "LSTM" else convert.CuDNNGRUParams
        params = params_class(self.kernel[...], self.recurrent_kernel[...], self.bias[...])
        lengths, ok = linen_cudnn.resolve_lengths(mask, seq_lengths, batch, steps)
        template = self._core().initial_state((batch,), _path.state_dtype(inputs.dtype))
        init = _path.initial(template, initial_state, self.states.get_value() if self.stateful else None)
        if spec._backend(inputs, params) == "cudnn":
            output, final = fused.fused_lstm(params, inputs, init, lengths, go_backwards=spec.go_backwards,
                                             return_sequences=spec.return_sequences,
                                             zero_output_for_mask=spec.zero_output_for_mask)
        else:
            output, final = spec._run_scan(params, inputs, init, lengths)
        if ok is not None:
            output, final = linen_cudnn._poison((output, final), ok)
        results = (output, *jax.tree_util.tree_leaves(final)) if self.return_state else output
        self._store(final, _path.activity_penalty(self.activity_regularizer, results))
        return results


class CuDNNLSTM(_CuDNN):
    """Fast LSTM with Keras 2's ``CuDNNLSTM`` signature and weight layout (see :class:`rnnjax.CuDNNLSTM`):
    ``CuDNNLSTM(units, kernel_initializer=..., ..., stateful=False, *, input_dim, rngs)``."""

    linen_class = linen_cudnn.CuDNNLSTM


class CuDNNGRU(_CuDNN):
    """Fast GRU with Keras 2's ``CuDNNGRU`` signature and weight layout (see :class:`rnnjax.CuDNNGRU`):
    ``CuDNNGRU(units, ..., stateful=False, *, input_dim, rngs)``."""

    linen_class = linen_cudnn.CuDNNGRU
