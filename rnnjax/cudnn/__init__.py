"""Keras 2's cuDNN layers (``CuDNNLSTM``, ``CuDNNGRU``), their weight layout and its conversions.

* :mod:`rnnjax.cudnn.layers`: the Flax layers (cuDNN on a GPU for the LSTM, rnnjax's scan driver
  elsewhere and for the GRU);
* :mod:`rnnjax.cudnn.convert`: Keras 2 CuDNN weights <-> canonical ``rnnjax.LSTM``/``rnnjax.GRU``
  weights <-> PyTorch ``nn.LSTM``/``nn.GRU`` ``state_dict`` tensors;
* :mod:`rnnjax.cudnn.fused`: the fused GPU path (``jax.experimental.rnn.lstm``) and its packing.
"""

from rnnjax.cudnn.convert import (
    CuDNNGRUParams,
    CuDNNLSTMParams,
    cudnn_gru_to_gru,
    cudnn_gru_to_torch,
    cudnn_lstm_to_lstm,
    cudnn_lstm_to_torch,
    gru_to_cudnn_gru,
    gru_to_torch,
    lstm_to_cudnn_lstm,
    lstm_to_torch,
    torch_to_cudnn_gru,
    torch_to_cudnn_lstm,
    torch_to_gru,
    torch_to_lstm,
)
from rnnjax.cudnn.fused import cudnn_lstm_unavailable_reason, fused_lstm, pack_lstm_weights
from rnnjax.cudnn.layers import CuDNNGRU, CuDNNLSTM

__all__ = [
    "CuDNNLSTM",
    "CuDNNGRU",
    "CuDNNLSTMParams",
    "CuDNNGRUParams",
    "cudnn_lstm_to_lstm",
    "lstm_to_cudnn_lstm",
    "lstm_to_torch",
    "torch_to_lstm",
    "cudnn_lstm_to_torch",
    "torch_to_cudnn_lstm",
    "cudnn_gru_to_gru",
    "gru_to_cudnn_gru",
    "gru_to_torch",
    "torch_to_gru",
    "cudnn_gru_to_torch",
    "torch_to_cudnn_gru",
    "cudnn_lstm_unavailable_reason",
    "fused_lstm",
    "pack_lstm_weights",
]
