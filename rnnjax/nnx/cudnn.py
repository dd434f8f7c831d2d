"""NNX ``CuDNNLSTM`` and ``CuDNNGRU``: Keras 2's cuDNN layers with Keras 2's weight layout (see
:mod:`rnnjax.cudnn.layers` for the equations, backends and masks; the arguments are the linen
twins'; the call is :func:`rnnjax.cudnn.path.run_cudnn_layer`'s, as in linen)::

    layer = rnnjax.nnx.CuDNNLSTM(64, return_sequences=True, input_dim=8, rngs=nnx.Rngs(0))
    y = layer(x, *, mask=None, initial_state=None, seq_lengths=None)

Parameters at the layer's top level, as in linen: ``kernel (I, G*U)``, ``recurrent_kernel (U, G*U)``,
``bias (2*G*U,)`` (G = 4 for the LSTM, 3 for the GRU).
"""

from __future__ import annotations

from typing import Any, ClassVar

import jax
from flax import nnx

from rnnjax.cudnn import layers as linen_cudnn
from rnnjax.cudnn.path import WEIGHTS, check_backend, initial_weight, run_cudnn_layer
from rnnjax.functional.core import check_units
from rnnjax.functional.protocol import PARAM_NAMES, make_params
from rnnjax.layers import path
from rnnjax.nnx import _args
from rnnjax.nnx.base import Recurrent
from rnnjax.nnx.cells import weight_param


class NNXCuDNN(Recurrent):
    """Shared NNX CuDNN layer (``linen_class``: the linen twin, its arguments; its ``cudnn_kind``
    the weight layout and backends)."""

    linen_class: ClassVar[type]  # set by each subclass
    kernel: nnx.Param  # the weights (setattr in __init__, in cuDNN's layout)
    recurrent_kernel: nnx.Param
    bias: nnx.Param

    def __init__(self, *args, input_dim: int | None = None, batch_size: Any = None, rngs: Any = None, **kwargs):
        owner = type(self).__name__
        config = _args.bind(owner, self.linen_class, args, kwargs, "stateful", "units")
        spec = self.spec = self.linen_class(**config)  # the static configuration, validated by the linen twin
        check_units(spec.units)
        check_backend(spec.backend)
        input_dim = _args.check_input_dim(owner, input_dim)
        keys = jax.random.split(_args.check_rngs(owner, rngs).params(), 3)
        for key, (name, arg) in zip(keys, WEIGHTS):
            value = initial_weight(spec.cudnn_kind, spec, name, key, input_dim, spec.param_dtype)
            setattr(
                self,
                name,
                weight_param(value, getattr(spec, f"{arg}_regularizer"), getattr(spec, f"{arg}_constraint"), arg),
            )
        self._setup(config, batch_size, None)

    def _state_template(self, feature_shape):
        return self.spec.cudnn_kind.scan_core(self.spec.units).initial_state(self.batch_shape)

    def _params(self, input_dim: int):
        if input_dim != self.kernel.shape[0]:
            raise ValueError(
                f"`inputs`: {input_dim} features per step, but {type(self).__name__} was built "
                f"for {self.kernel.shape[0]} (input_dim={self.kernel.shape[0]})."
            )
        return make_params(self.spec.cudnn_kind.params_class, {name: getattr(self, name)[...] for name in PARAM_NAMES})

    # Keras's CuDNN layers take seq_lengths and no constants or dropout: a narrower call than Recurrent's.
    def __call__(  # type: ignore[override]
        self,
        inputs: jax.Array,
        *,
        mask: jax.Array | None = None,
        initial_state: Any = None,
        seq_lengths: jax.Array | None = None,
        training: bool | None = None,
        reset: jax.Array | None = None,
    ):
        """``inputs (*batch, timesteps, features)`` -> the output, then the final states with
        ``return_state``; ``mask``: right-padded boolean ``(*batch, timesteps)``, or ``seq_lengths
        (*batch,)``; ``reset``: boolean ``(*batch, timesteps)``, True where a new sequence starts
        (the scan backend, see :mod:`rnnjax.cudnn.layers`). ``training`` is accepted and unused (no
        dropout)."""
        del training
        options = path.CallOptions.of(self)
        call = run_cudnn_layer(
            self.spec.cudnn_kind,
            self.spec.units,
            self.spec.backend,
            options,
            self._params,
            inputs,
            mask=mask,
            seq_lengths=seq_lengths,
            reset=reset,
            initial_state=initial_state,
            read_state=lambda template: self.states.get_value(),
        )
        self._store(call.state, call.activity_penalty)
        return call.results


class CuDNNLSTM(NNXCuDNN):
    """Fast LSTM with Keras 2's ``CuDNNLSTM`` signature and weight layout (see :class:`rnnjax.CuDNNLSTM`):
    ``CuDNNLSTM(units, kernel_initializer=..., ..., stateful=False, *, input_dim, rngs)``."""

    linen_class = linen_cudnn.CuDNNLSTM


class CuDNNGRU(NNXCuDNN):
    """Fast GRU with Keras 2's ``CuDNNGRU`` signature and weight layout (see :class:`rnnjax.CuDNNGRU`):
    ``CuDNNGRU(units, ..., stateful=False, *, input_dim, rngs)``."""

    linen_class = linen_cudnn.CuDNNGRU
