"""rnnjax: the Keras 2 recurrent layer set for JAX and Flax.

Three ways in:

* pure functions (:mod:`rnnjax.functional`): the cores ``SimpleRNNCore``/``LSTMCore``/``GRUCore``/
  ``ConvLSTMCore`` and the one sequence driver ``scan_rnn``/``rnn``, for ``jax.jit``/``jax.grad``/
  ``jax.vmap`` (the cores live there only);
* Flax modules with Keras 2's signatures and defaults: ``RNN``, ``SimpleRNN``, ``GRU``,
  ``LSTM``, the cells and ``StackedRNNCells``;
* stateful mode: states in the ``'rnn_state'`` collection, :func:`reset_states`;
* the Keras layers around them: ``Bidirectional``, ``Embedding``, ``Masking``,
  ``TimeDistributed``, ``Dense``, ``Dropout``, ``Activation``, a mask-propagating
  ``Sequential``, and Keras's reshaping, activation, merge, convolution, pooling, normalization
  and attention layers (``RepeatVector``, ``Reshape``, ``Conv2D``, ``Attention``, ... :
  ``rnnjax.layers.KERAS_LAYERS``; their NNX twins in :mod:`rnnjax.nnx` under the same names);
* ``reset`` on every recurrent layer (episodes, packed sequences) and the packing helpers of
  :mod:`rnnjax.packing`;
* Keras 2's cuDNN layers ``CuDNNLSTM``/``CuDNNGRU``; their weight conversions (canonical <->
  cuDNN <-> PyTorch) live in :mod:`rnnjax.cudnn` only (``rnnjax.cudnn.cudnn_lstm_to_lstm``, ...);
* Keras files: :func:`load_keras`, :func:`load_keras_weights`, :func:`load_keras_optimizer`,
  :func:`inspect_keras` and :func:`save_keras` (:mod:`rnnjax.keras`, needs ``rnnjax[keras]``);
* Flax NNX: :mod:`rnnjax.nnx` (imported on demand), the same layers as NNX modules.

Each public name is defined in one module; the top level re-exports the layers and the helpers
a model needs, not the cores or the conversions. Each built-in cell kind is one record
(:mod:`rnnjax.kinds`) from which its linen and NNX classes are made.
"""

from rnnjax import constraints, cudnn, functional, packing, regularizers
from rnnjax.constraints import keras_constraints
from rnnjax.cudnn import CuDNNGRU, CuDNNLSTM
from rnnjax.functional import activations, initializers
from rnnjax.layers import (  # noqa: F401  (KERAS_LAYERS: their names)
    GRU,
    KERAS_LAYERS,
    LSTM,
    RNN,
    STATE_COLLECTION,
    Activation,
    Add,
    AdditiveAttention,
    Attention,
    Average,
    AveragePooling1D,
    AveragePooling2D,
    BatchNormalization,
    Bidirectional,
    Concatenate,
    Conv1D,
    Conv2D,
    Conv3D,
    ConvLSTM1D,
    ConvLSTM1DCell,
    ConvLSTM2D,
    ConvLSTM2DCell,
    ConvLSTM3D,
    ConvLSTM3DCell,
    ConvLSTMCell,
    Cropping1D,
    Dense,
    Dot,
    Dropout,
    Embedding,
    Flatten,
    GlobalAveragePooling1D,
    GlobalAveragePooling2D,
    GlobalMaxPooling1D,
    GlobalMaxPooling2D,
    GRUCell,
    LayerNormalization,
    LeakyReLU,
    LSTMCell,
    Masking,
    Maximum,
    MaxPooling1D,
    MaxPooling2D,
    Minimum,
    Multiply,
    Permute,
    ReLU,
    RepeatVector,
    Reshape,
    Sequential,
    SimpleRNN,
    SimpleRNNCell,
    Softmax,
    StackedRNNCells,
    Subtract,
    TimeDistributed,
    UpSampling1D,
    ZeroPadding1D,
    reset_states,
)
from rnnjax.regularizers import regularization_loss

__version__ = "0.1.0"

_KERAS_FILES = ("load_keras", "load_keras_weights", "load_keras_optimizer", "inspect_keras", "save_keras")


def __getattr__(name):
    # Keras files are read and written by rnnjax.keras (h5py, an optional extra): imported on first use only.
    if name in _KERAS_FILES or name == "keras":
        import sys

        import rnnjax.keras  # noqa: F401  (`from rnnjax import keras` would come back here)

        keras = sys.modules["rnnjax.keras"]
        return keras if name == "keras" else getattr(keras, name)
    raise AttributeError(f"module 'rnnjax' has no attribute {name!r}")


__all__ = [
    "GRU",
    "LSTM",
    "RNN",
    "SimpleRNN",
    "GRUCell",
    "LSTMCell",
    "SimpleRNNCell",
    "StackedRNNCells",
    "Activation",
    "Bidirectional",
    "Dense",
    "Dropout",
    "Embedding",
    "Masking",
    "Sequential",
    "TimeDistributed",
    "reset_states",
    "regularization_loss",
    "keras_constraints",
    "STATE_COLLECTION",
    "activations",
    "initializers",
    "constraints",
    "regularizers",
    "functional",
    "ConvLSTM1D",
    "ConvLSTM2D",
    "ConvLSTM3D",
    "ConvLSTM1DCell",
    "ConvLSTM2DCell",
    "ConvLSTM3DCell",
    "ConvLSTMCell",
    "cudnn",
    "CuDNNLSTM",
    "CuDNNGRU",
    "packing",
    "load_keras",
    "load_keras_weights",
    "load_keras_optimizer",
    "inspect_keras",
    "save_keras",
    *KERAS_LAYERS,
]
