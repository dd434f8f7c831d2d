"""The NNX twins of Keras's parameterless layers around the recurrent ones: reshaping
(``RepeatVector``, ``Reshape``, ``Permute``, ``Flatten``, ``ZeroPadding1D``, ``Cropping1D``,
``UpSampling1D``), activations (``ReLU``, ``LeakyReLU``, ``Softmax``), merges (``Add``,
``Subtract``, ``Multiply``, ``Average``, ``Maximum``, ``Minimum``, ``Concatenate``, ``Dot``) and
pooling (``MaxPooling1D/2D``, ``AveragePooling1D/2D``, ``GlobalMaxPooling1D/2D``,
``GlobalAveragePooling1D/2D``)::

    rnx.RepeatVector(8)(h)                         # (batch, units) -> (batch, 8, units)
    rnx.Concatenate()([a, b], mask=[ma, mb])        # multi-input layers take lists

Each takes its linen twin's arguments (Keras's, in Keras's order: :mod:`rnnjax.layers`), holds
the twin as ``spec`` and computes with it (no parameters, so nothing to convert); masks follow
the twin's ``compute_mask``. ``rngs`` is accepted and unused.
"""

from __future__ import annotations

from rnnjax import layers as L
from rnnjax.nnx.basic import _Parameterless


class _Masked(_Parameterless):
    """A layer whose call reads a mask (a list of masks for several inputs)."""

    def __call__(self, inputs, *, mask=None):
        return self.spec(inputs, mask=mask)


class RepeatVector(_Parameterless):
    """``RepeatVector(n)``: ``(batch, features) -> (batch, n, features)`` (see :class:`rnnjax.RepeatVector`)."""

    linen_class, last_positional, first_argument = L.RepeatVector, "n", "n"


class Reshape(_Parameterless):
    """``Reshape(target_shape)``: ``(batch, ...) -> (batch, *target_shape)`` (see :class:`rnnjax.Reshape`)."""

    linen_class, last_positional, first_argument = L.Reshape, "target_shape", "target_shape"


class Permute(_Parameterless):
    """``Permute(dims)``: the non-batch axes permuted, 1-indexed (see :class:`rnnjax.Permute`)."""

    linen_class, last_positional, first_argument = L.Permute, "dims", "dims"


class Flatten(_Parameterless):
    """``Flatten(data_format='channels_last')``: ``(batch, ...) -> (batch, prod(...))`` (see
    :class:`rnnjax.Flatten`)."""

    linen_class, last_positional, first_argument = L.Flatten, "data_format", "data_format"


class ZeroPadding1D(_Parameterless):
    """``ZeroPadding1D(padding=1, data_format='channels_last')`` (see :class:`rnnjax.ZeroPadding1D`).

    Args:
      padding: an integer (both sides) or a tuple ``(before, after)``: how many zero steps to add.
    """

    linen_class, last_positional, first_argument = L.ZeroPadding1D, "data_format", "padding"


class Cropping1D(_Parameterless):
    """``Cropping1D(cropping=(1, 1))`` (see :class:`rnnjax.Cropping1D`)."""

    linen_class, last_positional, first_argument = L.Cropping1D, "cropping", "cropping"


class UpSampling1D(_Parameterless):
    """``UpSampling1D(size=2)``: each step repeated ``size`` times (see :class:`rnnjax.UpSampling1D`)."""

    linen_class, last_positional, first_argument = L.UpSampling1D, "size", "size"


class ReLU(_Parameterless):
    """``ReLU(max_value=None, negative_slope=0.0, threshold=0.0)`` (see :class:`rnnjax.ReLU`)."""

    linen_class, last_positional, first_argument = L.ReLU, "threshold", "max_value"


class LeakyReLU(_Parameterless):
    """``LeakyReLU(negative_slope=0.3)`` (Keras 2's ``alpha=`` too; see :class:`rnnjax.LeakyReLU`)."""

    linen_class, last_positional, first_argument = L.LeakyReLU, "negative_slope", "negative_slope"


class Softmax(_Masked):
    """``Softmax(axis=-1, *, robust_masking=False, keras_version=2)``; call ``(inputs, mask=None)``
    (see :class:`rnnjax.Softmax`)."""

    linen_class, last_positional, first_argument = L.Softmax, "axis", "axis"


def _merge(linen, doc: str) -> type:
    """The NNX twin of an element-wise merge layer (one keyword argument, ``keras_version``)."""
    return type(
        linen.__name__,
        (_Masked,),
        {
            "__doc__": doc,
            "__module__": __name__,
            "linen_class": linen,
            "last_positional": None,
            "first_argument": "keras_version",
        },
    )


Add = _merge(
    L.Add, "``Add(*, keras_version=2)``: ``[x1, x2, ...] -> x1 + x2 + ...`` (see :mod:`rnnjax.layers.merging`)."
)
Subtract = _merge(L.Subtract, "``Subtract(*, keras_version=2)``: ``[x1, x2] -> x1 - x2``.")
Multiply = _merge(L.Multiply, "``Multiply(*, keras_version=2)``: ``[x1, x2, ...] -> x1 * x2 * ...``.")
Average = _merge(L.Average, "``Average(*, keras_version=2)``: the element-wise mean of the inputs.")
Maximum = _merge(L.Maximum, "``Maximum(*, keras_version=2)``: the element-wise maximum of the inputs.")
Minimum = _merge(L.Minimum, "``Minimum(*, keras_version=2)``: the element-wise minimum of the inputs.")


class Concatenate(_Masked):
    """``Concatenate(axis=-1, *, keras_version=2)`` (see :class:`rnnjax.Concatenate`)."""

    linen_class, last_positional, first_argument = L.Concatenate, "axis", "axis"


class Dot(_Masked):
    """``Dot(axes, normalize=False, *, keras_version=2)``: per-sample dot products (see :class:`rnnjax.Dot`)."""

    linen_class, last_positional, first_argument = L.Dot, "normalize", "axes"


class MaxPooling1D(_Parameterless):
    """``MaxPooling1D(pool_size=2, strides=None, padding='valid', data_format='channels_last')``."""

    linen_class, last_positional, first_argument = L.MaxPooling1D, "data_format", "pool_size"


class AveragePooling1D(_Parameterless):
    """``AveragePooling1D(pool_size=2, strides=None, padding='valid', data_format='channels_last')``."""

    linen_class, last_positional, first_argument = L.AveragePooling1D, "data_format", "pool_size"


class MaxPooling2D(_Parameterless):
    """``MaxPooling2D(pool_size=(2, 2), strides=None, padding='valid', data_format='channels_last')``."""

    linen_class, last_positional, first_argument = L.MaxPooling2D, "data_format", "pool_size"


class AveragePooling2D(_Parameterless):
    """``AveragePooling2D(pool_size=(2, 2), strides=None, padding='valid', data_format='channels_last')``."""

    linen_class, last_positional, first_argument = L.AveragePooling2D, "data_format", "pool_size"


class GlobalMaxPooling1D(_Parameterless):
    """``GlobalMaxPooling1D(data_format='channels_last', keepdims=False)``."""

    linen_class, last_positional, first_argument = L.GlobalMaxPooling1D, "keepdims", "data_format"


class GlobalAveragePooling1D(_Masked):
    """``GlobalAveragePooling1D(data_format='channels_last', keepdims=False)``; the mean over the unmasked steps."""

    linen_class, last_positional, first_argument = L.GlobalAveragePooling1D, "keepdims", "data_format"


class GlobalMaxPooling2D(_Parameterless):
    """``GlobalMaxPooling2D(data_format='channels_last', keepdims=False)``."""

    linen_class, last_positional, first_argument = L.GlobalMaxPooling2D, "keepdims", "data_format"


class GlobalAveragePooling2D(_Parameterless):
    """``GlobalAveragePooling2D(data_format='channels_last', keepdims=False)``."""

    linen_class, last_positional, first_argument = L.GlobalAveragePooling2D, "keepdims", "data_format"
