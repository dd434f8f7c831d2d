"""Flax linen modules with the Keras 2 signatures."""
from rnnjax.layers.base import RNN, StackedRNNCells, RecurrentLayer, STATE_COLLECTION
from rnnjax.layers.states import reset_states
from rnnjax.layers.cells import KerasCell
from rnnjax.layers.conv_lstm import ConvLSTMCell
from rnnjax.layers.recurrent import (
    GRU, LSTM, SimpleRNN, GRUCell, LSTMCell, SimpleRNNCell,
    ConvLSTM1D, ConvLSTM2D, ConvLSTM3D, ConvLSTM1DCell, ConvLSTM2DCell, ConvLSTM3DCell,
)
from rnnjax.layers.basic import Activation, Dense, Dropout, Embedding, Masking
from rnnjax.layers.wrappers import Bidirectional, TimeDistributed
from rnnjax.layers.sequential import Sequential

__all__ = [
    "RNN", "StackedRNNCells", "RecurrentLayer", "reset_states", "STATE_COLLECTION",
    "Activation", "Dense", "Dropout", "Embedding", "Masking", "Bidirectional", "TimeDistributed", "Sequential",
    "GRUCell", "KerasCell", "LSTMCell", "SimpleRNNCell", "GRU", "LSTM", "SimpleRNN",
    "ConvLSTM1D", "ConvLSTM2D", "ConvLSTM3D", "ConvLSTM1DCell", "ConvLSTM2DCell", "ConvLSTM3DCell", "ConvLSTMCell",
]
