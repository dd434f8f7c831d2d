"""rnnjax: the Keras 2 recurrent layer set for JAX and Flax.

Three ways in:

* pure functions (:mod:`rnnjax.functional`): ``LSTMCore``/``GRUCore``/``SimpleRNNCore`` and the
  one sequence driver ``scan_rnn``/``rnn``, for ``jax.jit``/``jax.grad``/``jax.vmap``;
* Flax modules with Keras 2's signatures and defaults: ``RNN``, ``SimpleRNN``, ``GRU``,
  ``LSTM``, the cells and ``StackedRNNCells``;
* stateful mode: states in the ``'rnn_state'`` collection, :func:`reset_states`;
* the Keras layers around them: ``Bidirectional``, ``Embedding``, ``Masking``,
  ``TimeDistributed``, ``Dense``, ``Dropout``, ``Activation`` and a mask-propagating
  ``Sequential``;
* Keras files: :func:`save_keras` writes a Keras 3 ``.keras`` archive (needs ``rnnjax[keras]``).
"""
from rnnjax import constraints, functional, regularizers
from rnnjax.functional import activations, initializers
from rnnjax.layers import (
    Activation, Bidirectional, Dense, Dropout, Embedding, Masking, Sequential, TimeDistributed,
    GRU, LSTM, RNN, STATE_COLLECTION, GRUCell, LSTMCell, SimpleRNN, SimpleRNNCell, StackedRNNCells, reset_states,
)
from rnnjax.layers.conv_lstm import (
    ConvLSTM1D, ConvLSTM2D, ConvLSTM3D, ConvLSTM1DCell, ConvLSTM2DCell, ConvLSTM3DCell, ConvLSTMCell,
)
from rnnjax.functional.conv_lstm import ConvLSTMCore
from rnnjax import cudnn
from rnnjax.cudnn import (
    CuDNNGRU, CuDNNLSTM, cudnn_gru_to_gru, cudnn_gru_to_torch, cudnn_lstm_to_lstm, cudnn_lstm_to_torch,
    gru_to_cudnn_gru, gru_to_torch, lstm_to_cudnn_lstm, lstm_to_torch, torch_to_cudnn_gru,
    torch_to_cudnn_lstm, torch_to_gru, torch_to_lstm,
)
from rnnjax.regularizers import regularization_loss
from rnnjax.constraints import keras_constraints

__version__ = "0.1.0"

_KERAS_FILES = ("load_keras", "load_keras_weights", "inspect_keras", "save_keras")


def __getattr__(name):
    # Keras files are read and written by rnnjax.keras (h5py, an optional extra): imported on first use only.
    if name in _KERAS_FILES or name == "keras":
        import sys
        import rnnjax.keras  # noqa: F401  (`from rnnjax import keras` would come back here)

        keras = sys.modules["rnnjax.keras"]
        return keras if name == "keras" else getattr(keras, name)
    raise AttributeError(f"module 'rnnjax' has no attribute {name!r}")


__all__ = [
    "GRU", "LSTM", "RNN", "SimpleRNN", "GRUCell", "LSTMCell", "SimpleRNNCell", "StackedRNNCells",
    "Activation", "Bidirectional", "Dense", "Dropout", "Embedding", "Masking", "Sequential", "TimeDistributed",
    "reset_states", "regularization_loss", "keras_constraints", "STATE_COLLECTION",
    "activations", "initializers", "constraints", "regularizers", "functional",
    "ConvLSTM1D", "ConvLSTM2D", "ConvLSTM3D", "ConvLSTM1DCell", "ConvLSTM2DCell", "ConvLSTM3DCell",
    "ConvLSTMCell", "ConvLSTMCore",
    "cudnn", "CuDNNLSTM", "CuDNNGRU", "cudnn_lstm_to_lstm", "lstm_to_cudnn_lstm", "lstm_to_torch",
    "torch_to_lstm", "cudnn_lstm_to_torch", "torch_to_cudnn_lstm", "cudnn_gru_to_gru", "gru_to_cudnn_gru",
    "gru_to_torch", "torch_to_gru", "cudnn_gru_to_torch", "torch_to_cudnn_gru",
    "load_keras", "load_keras_weights", "inspect_keras", "save_keras",
]
