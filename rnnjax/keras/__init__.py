"""Keras model files in JAX, without TensorFlow and without running code from the file.

* :func:`load_keras`: a Keras 2 / tf-keras ``.h5`` or Keras 3 ``.keras`` model -> ``(model,
  variables)``;
* :func:`load_keras_weights`: a file's weights into a model you built;
* :func:`load_keras_optimizer`: the optimizer a trained file saved, as an optax transformation
  with its state (resume training where Keras stopped);
* :func:`inspect_keras` (``python -m rnnjax.keras inspect FILE``): what a file holds and what
  rnnjax cannot load, without building anything;
* :func:`save_keras`: an rnnjax model -> a Keras 3 ``.keras`` archive that Keras 3 loads in safe mode.

Reading and writing files needs h5py (``pip install rnnjax[keras]``), imported only when a file is read.
"""

from rnnjax.keras.formats import KerasImportError
from rnnjax.keras.graph import KerasGraph
from rnnjax.keras.inspect import inspect_keras
from rnnjax.keras.loader import load_keras, load_keras_weights
from rnnjax.keras.optimizer_import import load_keras_optimizer
from rnnjax.keras.optimizer_rules import KerasOptimizerState
from rnnjax.keras.save import KerasSaveError, save_keras

__all__ = [
    "load_keras",
    "load_keras_weights",
    "load_keras_optimizer",
    "inspect_keras",
    "save_keras",
    "KerasImportError",
    "KerasSaveError",
    "KerasGraph",
    "KerasOptimizerState",
]
