"""Flax linen modules with the Keras 2 signatures."""

from rnnjax.layers.advanced_activations import LeakyReLU, ReLU, Softmax  # noqa: F401
from rnnjax.layers.attention import AdditiveAttention, Attention  # noqa: F401
from rnnjax.layers.base import RNN, STATE_COLLECTION, RecurrentLayer, StackedRNNCells
from rnnjax.layers.basic import Activation, Dense, Dropout, Embedding, Masking
from rnnjax.layers.cells import KerasCell
from rnnjax.layers.conv_lstm import ConvLSTMCell
from rnnjax.layers.convolutional import Conv1D, Conv2D, Conv3D  # noqa: F401
from rnnjax.layers.merging import Add, Average, Concatenate, Dot, Maximum, Minimum, Multiply, Subtract  # noqa: F401
from rnnjax.layers.normalization import BatchNormalization, LayerNormalization  # noqa: F401
from rnnjax.layers.pooling import (  # noqa: F401
    AveragePooling1D,
    AveragePooling2D,
    GlobalAveragePooling1D,
    GlobalAveragePooling2D,
    GlobalMaxPooling1D,
    GlobalMaxPooling2D,
    MaxPooling1D,
    MaxPooling2D,
)
from rnnjax.layers.recurrent import (
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

# Re-exported through KERAS_LAYERS in __all__, which ruff cannot expand (hence the noqa: F401):
from rnnjax.layers.reshaping import (  # noqa: F401
    Cropping1D,
    Flatten,
    Permute,
    RepeatVector,
    Reshape,
    UpSampling1D,
    ZeroPadding1D,
)
from rnnjax.layers.sequential import Sequential
from rnnjax.layers.states import reset_states
from rnnjax.layers.wrappers import Bidirectional, TimeDistributed

# Keras's layers around the recurrent ones (Keras-named, Keras semantics), one list for the top level.
KERAS_LAYERS = (
    "RepeatVector",
    "Reshape",
    "Permute",
    "Flatten",
    "ZeroPadding1D",
    "Cropping1D",
    "UpSampling1D",
    "ReLU",
    "LeakyReLU",
    "Softmax",
    "Add",
    "Subtract",
    "Multiply",
    "Average",
    "Maximum",
    "Minimum",
    "Concatenate",
    "Dot",
    "Conv1D",
    "Conv2D",
    "Conv3D",
    "MaxPooling1D",
    "AveragePooling1D",
    "MaxPooling2D",
    "AveragePooling2D",
    "GlobalMaxPooling1D",
    "GlobalAveragePooling1D",
    "GlobalMaxPooling2D",
    "GlobalAveragePooling2D",
    "BatchNormalization",
    "LayerNormalization",
    "Attention",
    "AdditiveAttention",
)

__all__ = [
    "RNN",
    "StackedRNNCells",
    "RecurrentLayer",
    "reset_states",
    "STATE_COLLECTION",
    "Activation",
    "Dense",
    "Dropout",
    "Embedding",
    "Masking",
    "Bidirectional",
    "TimeDistributed",
    "Sequential",
    "GRUCell",
    "KerasCell",
    "LSTMCell",
    "SimpleRNNCell",
    "GRU",
    "LSTM",
    "SimpleRNN",
    "ConvLSTM1D",
    "ConvLSTM2D",
    "ConvLSTM3D",
    "ConvLSTM1DCell",
    "ConvLSTM2DCell",
    "ConvLSTM3DCell",
    "ConvLSTMCell",
    *KERAS_LAYERS,
]
