"""Keras model files in and out, with h5py only and no code from a file ever run.

``rnnjax.save_keras`` (:mod:`rnnjax.keras.save`) writes Keras 3 ``.keras`` archives.
"""
