"""rnnjax's oneDNN extra: the LSTM and GRU on the CPU through oneDNN's fused RNN kernels.

``pip install 'rnnjax[onednn]'`` installs oneDNN 3.2 (the ``onednn-cpu-gomp`` and
``onednn-devel-cpu-gomp`` wheels); rnnjax compiles its small C++ kernel file against them with the
machine's C++ compiler at first use and keeps the result in a per-user cache
(:mod:`rnnjax.onednn._build`). Then ``backend='auto'`` (the default of ``rnnjax.LSTM``,
``rnnjax.GRU``, their NNX twins and :func:`rnnjax.functional.rnn`) runs the calls oneDNN computes
exactly (sigmoid gates, tanh, no mask, float32, one CPU device, ...: the rules are
:mod:`rnnjax.onednn.dispatch`'s) on it, and the scan path elsewhere; ``backend='onednn'`` asks for
it and says why not where it cannot apply; ``backend='scan'`` never uses it.

* :func:`unavailable_reason`: None when the kernels can run in this process (building them on the
  first call), else what is missing and how to get it.
* :func:`installed`: whether the extra's wheels are installed (nothing is built).
* :mod:`rnnjax.onednn.ops`: the kernels as a differentiable JAX function (``fused_rnn``).
"""

from rnnjax.onednn._build import OneDNNUnavailable, installed, unavailable_reason

__all__ = ["OneDNNUnavailable", "installed", "unavailable_reason"]
