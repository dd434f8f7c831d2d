"""rnnjax's Flax NNX front end (imported on demand: ``import rnnjax.nnx``).

Every layer as an ``nnx.Module`` with the Keras 2 arguments of its linen twin, in Keras 2's
order, plus NNX's conventions: the input size at construction (``input_dim``), ``rngs``
keyword-only, parameters as ``nnx.Param`` under the Keras names in Keras layout::

    from flax import nnx
    import rnnjax.nnx as rnx
    layer = rnx.LSTM(64, return_sequences=True, input_dim=8, rngs=nnx.Rngs(0))
    y = layer(x)                              # x (batch, T, 8) -> (batch, T, 64)

The companion layers too (``Embedding``, ``Masking``, ``Dense``, ``Dropout``, ``Activation``,
``TimeDistributed``), Keras's layers around the recurrent ones under the linen names
(``rnnjax.layers.KERAS_LAYERS``: ``RepeatVector``, ``Reshape``, ``Conv2D``, ``Attention``, ...)
and the mask-carrying ``Sequential``.
The same numbers as the linen layers: :func:`from_linen` / :func:`to_linen` convert variables.
"""

from __future__ import annotations

MIN_FLAX = "0.12.8"
"""The oldest Flax the NNX front end is tested with (it needs ``nnx.List``, ``nnx.data``, ``nnx.view``)."""


def _check_flax():
    import flax

    def parts(v):
        return tuple(int(p) for p in v.split(".")[:3] if p.isdigit())

    try:
        from flax import nnx  # noqa: F401

        new_enough = parts(flax.__version__) >= parts(MIN_FLAX) and hasattr(nnx, "List") and hasattr(nnx, "data")
    except ImportError:
        new_enough = False
    if not new_enough:
        raise ImportError(
            f"rnnjax.nnx needs flax>={MIN_FLAX} (flax.nnx with nnx.List, nnx.data and nnx.view); "
            f"flax {flax.__version__} is installed: pip install 'flax>={MIN_FLAX}'. The linen layers "
            "(rnnjax.LSTM, ...) do not need it."
        )


_check_flax()

from rnnjax.layers import KERAS_LAYERS  # noqa: E402  (the same names as the linen layers around the RNNs)
from rnnjax.nnx.base import RNN  # noqa: E402
from rnnjax.nnx.basic import Activation, Dense, Dropout, Embedding, Masking  # noqa: E402
from rnnjax.nnx.cells import StackedRNNCells  # noqa: E402
from rnnjax.nnx.convert import from_linen, linen_path, to_linen  # noqa: E402
from rnnjax.nnx.cudnn import CuDNNGRU, CuDNNLSTM  # noqa: E402

# Re-exported through KERAS_LAYERS in __all__, which ruff cannot expand (hence the noqa: F401):
from rnnjax.nnx.keras_layers import (  # noqa: E402, F401
    Add,
    Average,
    AveragePooling1D,
    AveragePooling2D,
    Concatenate,
    Cropping1D,
    Dot,
    Flatten,
    GlobalAveragePooling1D,
    GlobalAveragePooling2D,
    GlobalMaxPooling1D,
    GlobalMaxPooling2D,
    LeakyReLU,
    Maximum,
    MaxPooling1D,
    MaxPooling2D,
    Minimum,
    Multiply,
    Permute,
    ReLU,
    RepeatVector,
    Reshape,
    Softmax,
    Subtract,
    UpSampling1D,
    ZeroPadding1D,
)
from rnnjax.nnx.keras_weighted import (  # noqa: E402, F401
    AdditiveAttention,
    Attention,
    BatchNormalization,
    Conv1D,
    Conv2D,
    Conv3D,
    LayerNormalization,
)
from rnnjax.nnx.recurrent import (  # noqa: E402
    GRU,
    LSTM,
    ConvLSTM1D,
    ConvLSTM1DCell,
    ConvLSTM2D,
    ConvLSTM2DCell,
    ConvLSTM3D,
    ConvLSTM3DCell,
    GRUCell,
    LSTMCell,
    SimpleRNN,
    SimpleRNNCell,
)
from rnnjax.nnx.sequential import Sequential  # noqa: E402
from rnnjax.nnx.variables import (  # noqa: E402
    ActivityPenalty,
    RNNState,
    apply_constraints,
    regularization_loss,
    reset_states,
)
from rnnjax.nnx.wrappers import Bidirectional, TimeDistributed  # noqa: E402

__all__ = [
    "MIN_FLAX",
    "RNNState",
    "ActivityPenalty",
    "regularization_loss",
    "apply_constraints",
    "reset_states",
    "SimpleRNNCell",
    "GRUCell",
    "LSTMCell",
    "StackedRNNCells",
    "RNN",
    "SimpleRNN",
    "GRU",
    "LSTM",
    "from_linen",
    "to_linen",
    "linen_path",
    "CuDNNLSTM",
    "CuDNNGRU",
    "Bidirectional",
    "TimeDistributed",
    "Sequential",
    "Embedding",
    "Masking",
    "Dense",
    "Dropout",
    "Activation",
    "ConvLSTM1D",
    "ConvLSTM2D",
    "ConvLSTM3D",
    "ConvLSTM1DCell",
    "ConvLSTM2DCell",
    "ConvLSTM3DCell",
    *KERAS_LAYERS,
]
