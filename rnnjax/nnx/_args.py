"""Keras 2 arguments for the NNX modules, read from the linen module of the same name.

Every rnnjax NNX class takes exactly the arguments of its linen twin (same names, order and
defaults: one declaration, in :mod:`rnnjax.layers`), the Keras 2 ones positionally and the rest
keyword-only, plus the NNX ones (``input_dim``, ``rngs``, ...). Building the linen twin validates
the values, so a bad argument fails at construction with the linen layer's message.
"""

from __future__ import annotations

import dataclasses
import numbers

_NOT_ARGUMENTS = ("parent", "name")
# Second positional Keras 2 arguments that can never be an int: an int there is NNX's
# (in_features, out_features) order.
_NEVER_INT = ("activation", "kernel_initializer")


def keras_fields(linen_class) -> list:
    return [f for f in dataclasses.fields(linen_class) if f.name not in _NOT_ARGUMENTS]


def bind(owner: str, linen_class, args: tuple, kwargs: dict, last_positional: str | None, first: str | None) -> dict:
    """``{argument: value}`` for all of ``linen_class``'s fields: ``args`` bound in Keras 2 order up to
    ``last_positional`` (None: none positional), then ``kwargs``, then the defaults. ``first``
    names the first argument (``units``/``filters``/``cell``) for the error messages."""
    fields = keras_fields(linen_class)
    names = [f.name for f in fields]
    positional = names[: names.index(last_positional) + 1] if last_positional else []
    if len(args) > len(positional):
        raise TypeError(
            f"{owner}: takes at most {len(positional)} positional "
            f"arguments (Keras's: {', '.join(positional) or 'none'}),"
            f" got {len(args)}; pass the others by keyword."
        )
    if (
        len(args) >= 2
        and positional[1] in _NEVER_INT
        and isinstance(args[1], numbers.Integral)
        and not isinstance(args[1], bool)
    ):
        raise TypeError(
            f"{owner}({args[0]!r}, {args[1]!r}, ...): the second argument is `{positional[1]}`, got the int "
            f"{args[1]!r}. rnnjax.nnx follows Keras 2's order, `{first}` first, with the input size as a keyword: "
            f"write {owner}({args[1]!r}, input_dim={args[0]!r}, rngs=...) for {args[0]!r} input features and "
            f"{args[1]!r} {first} (NNX's own cells take (in_features, hidden_features))."
        )
    config = dict(zip(positional, args))
    for key, value in kwargs.items():
        if key not in names:
            raise TypeError(f"{owner}: unexpected argument `{key}`; the arguments are {names}.")
        if key in config:
            raise TypeError(f"{owner}: got `{key}` both positionally and by keyword.")
        config[key] = value
    missing = []
    for f in fields:
        if f.name in config:
            continue
        if f.default is not dataclasses.MISSING:
            config[f.name] = f.default
        else:
            missing.append(f.name)
    if missing:
        raise TypeError(f"{owner}: missing required argument(s) {missing}.")
    return config


def check_input_dim(owner: str, input_dim, what: str = "input features") -> int:
    """NNX builds parameters at construction, so the input size must be given (Keras 2's ``input_dim``)."""
    if input_dim is None:
        raise TypeError(
            f"{owner}: `input_dim` is required: NNX creates the parameters at construction, so pass the number "
            f"of {what}, e.g. {owner}(64, input_dim=8, rngs=nnx.Rngs(0))."
        )
    if isinstance(input_dim, bool) or not isinstance(input_dim, numbers.Integral) or input_dim <= 0:
        raise ValueError(f"`input_dim`: expected a positive integer ({what}), got {input_dim!r}.")
    return int(input_dim)


def check_rngs(owner: str, rngs):
    from flax import nnx

    if not isinstance(rngs, nnx.Rngs):
        raise TypeError(
            f"{owner}: `rngs` must be an nnx.Rngs (keyword-only, e.g. rngs=nnx.Rngs(0)), got {type(rngs).__name__}."
        )
    return rngs
