"""NNX ``CuDNNLSTM`` and ``CuDNNGRU``: Keras 2's cuDNN layers with Keras 2's weight layout (see
:mod:`rnnjax.cudnn.layers` for the equations, backends and masks; the arguments are the linen
twins')::

    layer = rnnjax.nnx.CuDNNLSTM(64, return_sequences=True, input_dim=8, rngs=nnx.Rngs(0))
    y = layer(x, mask=None, initial_state=None, seq_lengths=None)

Parameters at the layer's top level, as in linen: ``kernel (I, G*U)``, ``recurrent_kernel (U, G*U)``,
``bias (2*G*U,)`` (G = 4 for the LSTM, 3 for the GRU).
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from rnnjax.cudnn import layers as linen_cudnn
from rnnjax.functional.core import check_units, init_weight
from rnnjax.functional.protocol import PARAM_NAMES, make_params
from rnnjax.layers import path
from rnnjax.nnx import _args
from rnnjax.nnx.cells import WEIGHTS, weight_param
from rnnjax.nnx.recurrent import Recurrent


class _CuDNN(Recurrent):
    """Shared NNX CuDNN layer (``linen_class``: the linen twin, whose weight layout, backend
    choice and kernel/scan run it uses; the rest of a call is the layer-side path's)."""

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

    def _state_template(self, feature_shape):
        return self.spec.scan_core().initial_state(self.batch_shape, jnp.float32)

    def __call__(self, inputs, mask=None, initial_state=None, seq_lengths=None, training=None, *, reset=None):
        """``inputs (*batch, timesteps, features)`` -> the output, then the final states with
        ``return_state``; ``mask``: right-padded boolean ``(*batch, timesteps)``, or ``seq_lengths
        (*batch,)``; ``reset``: boolean ``(*batch, timesteps)``, True where a new sequence starts
        (the scan backend, see :mod:`rnnjax.cudnn.layers`). ``training`` is accepted and unused (no
        dropout)."""
        del training
        spec, options = self.spec, path.CallOptions.of(self)
        seq = path.check_sequence(inputs)
        if seq.feature_shape[0] != self.kernel.shape[0]:
            raise ValueError(f"`inputs`: {seq.feature_shape[0]} features per step, but {type(self).__name__} was built "
                             f"for {self.kernel.shape[0]} (input_dim={self.kernel.shape[0]}).")
        params = make_params(spec.params_class, {name: getattr(self, name)[...] for name in PARAM_NAMES})
        rows = math.prod(seq.batch_shape)
        lengths, ok = linen_cudnn.resolve_lengths(mask, seq_lengths, seq.batch_shape, seq.steps)
        reset = linen_cudnn.check_reset(reset, seq, rows)
        init = path.start_state(spec.scan_core().initial_state, seq, inputs.dtype, initial_state=initial_state,
                                read_state=(lambda template: self.states.get_value()) if self.stateful else None)
        x = inputs.reshape((rows,) + inputs.shape[-2:]) if len(seq.batch_shape) != 1 else inputs
        output, final = spec._run(params, x, linen_cudnn._to_rows(init, seq.batch_shape, rows), lengths, options,
                                  reset)
        if ok is not None:
            output, final = linen_cudnn._poison((output, final), ok)
        call = path.finish(*linen_cudnn._from_rows((output, final), seq.batch_shape), options, seq)
        self._store(call.state, call.activity_penalty)
        return call.results


class CuDNNLSTM(_CuDNN):
    """Fast LSTM with Keras 2's ``CuDNNLSTM`` signature and weight layout (see :class:`rnnjax.CuDNNLSTM`):
    ``CuDNNLSTM(units, kernel_initializer=..., ..., stateful=False, *, input_dim, rngs)``."""

    linen_class = linen_cudnn.CuDNNLSTM


class CuDNNGRU(_CuDNN):
    """Fast GRU with Keras 2's ``CuDNNGRU`` signature and weight layout (see :class:`rnnjax.CuDNNGRU`):
    ``CuDNNGRU(units, ..., stateful=False, *, input_dim, rngs)``."""

    linen_class = linen_cudnn.CuDNNGRU
