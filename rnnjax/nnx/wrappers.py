"""NNX ``Bidirectional`` and ``TimeDistributed`` (Keras 2's wrappers; see :class:`rnnjax.Bidirectional`
and :class:`rnnjax.TimeDistributed` for the semantics)::

    bi = rnnjax.nnx.Bidirectional(rnx.LSTM(16, return_sequences=True, input_dim=8, rngs=rngs), rngs=rngs)
    y = bi(x, mask=mask)              # (batch, T, 32): forward and time-reversed backward outputs

The backward layer is a copy of ``layer`` with ``go_backwards`` flipped (Keras 2), its rnnjax
cells' parameters drawn afresh from ``rngs`` (a custom cell's keep the forward values), or
``backward_layer``. The two live under ``forward_<name>``/``backward_<name>`` as in linen, so
variables convert with :func:`rnnjax.nnx.from_linen`. ``TimeDistributed(layer)`` holds ``layer``
under its Keras name (``dense``), as linen's does.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from rnnjax.layers.protocol import call_layer, check_mask, snake_case
from rnnjax.layers.wrappers import MERGE_MODES, check_steps, fold_steps, time_distributed_mask, unfold_steps
from rnnjax.nnx import _args
from rnnjax.nnx.cells import NNXKerasCell

_COMMON = ("stateful", "return_sequences", "return_state")


def _check_recurrent(layer, argument):
    if not isinstance(layer, nnx.Module) or not all(hasattr(layer, a) for a in ("go_backwards", *_COMMON)):
        raise ValueError(
            f"`{argument}`: expected an rnnjax.nnx recurrent layer (or an NNX module with go_backwards, "
            f"return_sequences, return_state and stateful), got {type(layer).__name__}."
        )


def _redraw(layer, rngs):
    """Fresh parameter values for the rnnjax cells inside ``layer`` (Keras gives the backward copy its own)."""
    for _, node in nnx.iter_graph(layer):
        if isinstance(node, NNXKerasCell):
            values = node.core.init(rngs.params(), node.kernel.shape[-2], node.spec.param_dtype)
            for name in ("kernel", "recurrent_kernel", "bias"):
                if getattr(node, name) is not None:
                    getattr(node, name)[...] = getattr(values, name)


class Bidirectional(nnx.Module):
    """``Bidirectional(layer, merge_mode='concat', backward_layer=None, *, rngs=None)``: ``merge_mode``
    ``'concat'``/``'sum'``/``'mul'``/``'ave'``/``None``; with ``return_state`` the result is
    ``(output, *forward states, *backward states)``; ``initial_state`` and ``reset_states(states)``
    take the forward states then the backward ones; ``reset (*batch, timesteps)`` (True where a new
    sequence starts) goes to both directions, as in :class:`rnnjax.Bidirectional`."""

    def __init__(self, layer, merge_mode="concat", backward_layer=None, *, rngs=None):
        if merge_mode not in MERGE_MODES:
            raise ValueError(f"`merge_mode`: expected one of {list(MERGE_MODES)}, got {merge_mode!r}.")
        _check_recurrent(layer, "layer")
        if backward_layer is None:
            backward_layer = nnx.clone(layer)
            backward_layer.go_backwards = not layer.go_backwards
            _redraw(backward_layer, _args.check_rngs("Bidirectional", rngs))
        else:
            _check_recurrent(backward_layer, "backward_layer")
            if backward_layer.go_backwards == layer.go_backwards:
                raise ValueError(
                    f"`backward_layer`: it must run in the other direction: layer.go_backwards="
                    f"{layer.go_backwards} and backward_layer.go_backwards={backward_layer.go_backwards}."
                )
            for a in _COMMON:
                if getattr(layer, a) != getattr(backward_layer, a):
                    raise ValueError(
                        f"`backward_layer`: expected the same `{a}` as `layer` ({getattr(layer, a)}), "
                        f"got {getattr(backward_layer, a)}."
                    )
        for which in (layer, backward_layer):  # Keras forces zero outputs at masked steps with sequences
            if hasattr(which, "zero_output_for_mask"):
                which.zero_output_for_mask = which.return_sequences
        self.merge_mode = merge_mode
        self.names = (
            f"forward_{snake_case(type(layer).__name__)}",
            f"backward_{snake_case(type(backward_layer).__name__)}",
        )
        setattr(self, self.names[0], layer)
        setattr(self, self.names[1], backward_layer)

    @property
    def layers(self):
        return getattr(self, self.names[0]), getattr(self, self.names[1])

    @property
    def stateful(self):
        return self.layers[0].stateful

    @property
    def return_sequences(self):
        return self.layers[0].return_sequences

    def _halves(self, states, argument):
        given = [states] if hasattr(states, "shape") else list(jax.tree_util.tree_leaves(states))
        if len(given) % 2:
            raise ValueError(
                f"`{argument}`: expected an even number of state arrays (the forward layer's, then the "
                f"backward layer's), got {len(given)}."
            )
        return given[: len(given) // 2], given[len(given) // 2 :]

    def __call__(self, inputs, *, mask=None, initial_state=None, training: bool | None = None, reset=None, **kwargs):
        halves = (None, None) if initial_state is None else self._halves(initial_state, "initial_state")
        if reset is not None:
            kwargs["reset"] = reset
        outs = [
            layer(inputs, mask=mask, initial_state=h, training=training, **kwargs)
            for layer, h in zip(self.layers, halves)
        ]
        (y, *f_states), (y_rev, *b_states) = (o if isinstance(o, tuple) else (o,) for o in outs)
        if [s.shape for s in f_states] != [s.shape for s in b_states]:
            raise ValueError(
                f"`backward_layer`: its states have shapes {[s.shape for s in b_states]}, the forward "
                f"layer's {[s.shape for s in f_states]}; Bidirectional needs the same in both."
            )
        if self.layers[0].return_sequences:
            y_rev = jnp.flip(y_rev, axis=1)
        states = (*f_states, *b_states)
        if self.merge_mode is None:
            return [y, y_rev, *states]
        merged = {
            "concat": lambda: jnp.concatenate([y, y_rev], axis=-1),
            "sum": lambda: y + y_rev,
            "mul": lambda: y * y_rev,
            "ave": lambda: (y + y_rev) / 2,
        }[self.merge_mode]()
        return (merged, *states) if states else merged

    def reset_states(self, states=None):
        """Zeroes both directions' states, or sets them to ``states`` (forward's, then backward's)."""
        if not self.stateful:
            raise ValueError("reset_states: the layer is not stateful (stateful=False).")
        halves = (None, None) if states is None else self._halves(states, "states")
        for layer, part in zip(self.layers, halves):
            layer.reset_states(part)

    def compute_mask(self, inputs, mask=None):
        """Keras's rule: the input mask with ``return_sequences`` (one per output with ``merge_mode=None``)."""
        del inputs
        out = mask if self.return_sequences else None
        return [out, out] if self.merge_mode is None else out


class TimeDistributed(nnx.Module):
    """``TimeDistributed(layer, *, rngs=None)``: ``y[:, t] = layer(x[:, t])`` for inputs ``(batch,
    timesteps, ...)``, the steps folded into the batch (batch major) for one call of ``layer`` (any
    NNX module); a mask ``(batch, timesteps)`` is folded and passed on to a layer that takes one.
    The output mask is ``layer``'s own, unfolded, when it computes one, else the input mask (Keras 2).
    Call: ``layer(inputs, *, mask=None, training=None)`` (None: the mode set by ``train()``/``eval()``)."""

    def __init__(self, layer, *, rngs=None):
        del rngs  # ``layer`` holds its own parameters; accepted for a uniform signature
        if not isinstance(layer, nnx.Module):
            raise ValueError(f"`layer`: expected an NNX module, got {type(layer).__name__}.")
        self.layer_name = snake_case(type(layer).__name__)
        setattr(self, self.layer_name, layer)

    @property
    def layer(self):
        return getattr(self, self.layer_name)

    def __call__(self, inputs, *, mask=None, training: bool | None = None):
        check_steps(inputs)
        mask = check_mask(mask, inputs, "TimeDistributed", nested=True)
        return unfold_steps(call_layer(self.layer, fold_steps(inputs), fold_steps(mask), training), inputs)

    def compute_mask(self, inputs, mask=None):
        return time_distributed_mask(self.layer, inputs, mask)
