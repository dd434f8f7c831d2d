"""Flax linen modules with the Keras 2 signatures."""
from rnnjax.layers.base import RNN, StackedRNNCells, CellProgram, reset_states, STATE_COLLECTION
from rnnjax.layers.cells import GRUCell, KerasCell, LSTMCell, SimpleRNNCell
from rnnjax.layers.recurrent import GRU, LSTM, SimpleRNN
from rnnjax.layers.conv_lstm import (
    ConvLSTM1D, ConvLSTM2D, ConvLSTM3D, ConvLSTM1DCell, ConvLSTM2DCell, ConvLSTM3DCell, ConvLSTMCell,
)

__all__ = [
    "RNN", "StackedRNNCells", "CellProgram", "reset_states", "STATE_COLLECTION",
    "GRUCell", "KerasCell", "LSTMCell", "SimpleRNNCell", "GRU", "LSTM", "SimpleRNN",
    "ConvLSTM1D", "ConvLSTM2D", "ConvLSTM3D", "ConvLSTM1DCell", "ConvLSTM2DCell", "ConvLSTM3DCell", "ConvLSTMCell",
]
