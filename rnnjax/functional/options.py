"""The driver's options as one value: :class:`LoopOptions` (how a sequence is run) with its
:class:`PlanOverrides` (planner switches forced, for tests), and :func:`force_plan`, the test hook
that forces switches for a block of code.

Both are NamedTuples of static Python values (hashable): built once where a call enters the
driver (:func:`rnnjax.functional.rnn`, :func:`~rnnjax.functional.scan_rnn`, the layers) and handed
down unchanged to the loops and the planner. Data (inputs, mask, constants, states) never goes in
an options value; it travels as arguments.
"""

from __future__ import annotations

import contextlib
import numbers
from typing import Any, NamedTuple

import jax

from rnnjax.functional.core import check_custom_backward


class PlanOverrides(NamedTuple):
    """Planner switches forced (``docs/design.md`` has the table); None leaves a switch to the
    planner. ``project_chunk``/``infer_span``: an int (0: all steps at once / no inference spans);
    the others True or False. A switch forced to a value that would change the numbers (e.g.
    ``carry_prev_output=False`` with a mask) raises when the call is traced."""

    project_chunk: int | None = None
    infer_span: int | None = None
    loop_bias: bool | None = None
    train_in_one_loop: bool | None = None
    in_place_z: bool | None = None
    prefetch_z: bool | None = None
    carry_prev_output: bool | None = None
    bias_grad_after_loop: bool | None = None

    def choose(self, name: str, default: Any, allowed: tuple[Any, bool] | None = None) -> Any:
        """The value of switch ``name``: forced here, else ``default``. ``allowed``: ``(value,
        ok)``: forcing ``value`` is always allowed, the other value only where ``ok``."""
        value = getattr(self, name)
        if value is None:
            return default
        if allowed is not None and value != allowed[0] and not allowed[1]:
            raise ValueError(f"force_plan: {name}={value!r} is not valid for this step (it would change the numbers).")
        return value


SWITCHES = PlanOverrides._fields

# The overrides of `force_plan` blocks: a jax user context, so its value (thread-local) is part
# of every jit cache key: a function traced under one override is traced again under another.
_FORCED = jax.make_user_context(default_value=PlanOverrides())


def force_plan(**switches: int | bool | None) -> contextlib.AbstractContextManager:
    """``with force_plan(in_place_z=False): ...``: forces planner switches (:class:`PlanOverrides`'
    fields) for the calls made inside the block, a test hook. The value is read once per call,
    when the call's :class:`LoopOptions` is completed (:meth:`LoopOptions.checked`), and is part
    of ``jax.jit``'s cache key: a jitted function called inside and outside the block is traced
    for each, never running a stale plan. Blocks nest (inner switches win); each thread has its
    own. An explicit ``LoopOptions(plan=...)`` is used instead of the block's."""
    unknown = sorted(set(switches) - set(SWITCHES))
    if unknown:
        raise ValueError(f"force_plan: unknown switch(es) {unknown}; expected some of {SWITCHES}.")
    return _FORCED(_FORCED.value._replace(**switches))


BACKENDS = ("auto", "scan", "onednn")


class LoopOptions(NamedTuple):
    """How the driver runs a sequence (static values; :func:`rnnjax.functional.scan_rnn`
    documents each): ``go_backwards``, ``return_sequences``, ``zero_output_for_mask``, ``unroll``
    (a Python loop), ``scan_unroll`` (``lax.scan``'s unroll factor), ``remat``, ``time_major``
    (inputs ``(T, *batch, F)``), ``feature_axes`` (the trailing feature axes of a step's input:
    ConvLSTM ``rank + 1``; batch-major only), ``custom_backward`` (use the program's hand-written
    backward forms; False: autodiff of the generic loop, which forward mode can differentiate)
    ``plan`` (:class:`PlanOverrides`; None: the enclosing :func:`force_plan` block's) and
    ``backend`` (one of :data:`BACKENDS`: ``"scan"``, rnnjax's loops; ``"onednn"``, oneDNN's fused
    LSTM/GRU kernels on the CPU, an error where they cannot compute the call exactly; ``"auto"``,
    oneDNN where it applies and is expected faster, else the scan: :mod:`rnnjax.onednn.dispatch`
    lists the rules)."""

    go_backwards: bool = False
    return_sequences: bool = False
    zero_output_for_mask: bool = False
    unroll: bool = False
    scan_unroll: int = 1
    remat: bool = False
    time_major: bool = False
    feature_axes: int = 1
    custom_backward: bool = True
    plan: PlanOverrides | None = None
    backend: str = "auto"

    def checked(self) -> LoopOptions:
        """These options checked (each error names its argument), with ``plan`` read from the
        :func:`force_plan` block where it is None."""
        if isinstance(self.scan_unroll, bool) or not isinstance(self.scan_unroll, int) or self.scan_unroll < 1:
            raise ValueError(f"`scan_unroll`: expected a positive integer, got {self.scan_unroll!r}.")
        n = self.feature_axes
        if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
            raise ValueError(f"`feature_axes`: expected a positive integer, got {n!r}.")
        if n != 1 and self.time_major:
            raise ValueError(f"`time_major`: inputs with {n} feature axes are batch-major; got time_major=True.")
        check_custom_backward(self.custom_backward)
        if self.backend not in BACKENDS:
            raise ValueError(f"`backend`: expected one of {BACKENDS}, got {self.backend!r}.")
        if self.plan is None:
            return self._replace(plan=_FORCED.value)
        if not isinstance(self.plan, PlanOverrides):
            raise TypeError(f"`plan`: expected a PlanOverrides, got {type(self.plan).__name__}.")
        return self
