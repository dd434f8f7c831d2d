"""The argument descriptions of the API reference: the seed's (Keras 2's documentation) for
Keras's arguments, rnnjax's own for the rest.

One description per argument name, shared by every class that takes it (``rnnjax.LSTM``,
``rnnjax.LSTMCell``, ``rnnjax.nnx.LSTM``, ...), so that the Keras wording is written once. A
class's own docstring wins where it describes an argument in an ``Args:`` section (for an
argument whose meaning differs there). ``TYPES`` names what an argument annotated ``Any``
accepts. ``NNX`` holds the NNX front end's own keyword arguments, whose meaning differs from a
linen field of the same name. ``rnnjax_griffe.py`` applies them; the strict build fails on a
class argument that has no description anywhere.
"""

_SEE = {
    "activations": "(a Keras name, config dict or callable: [`rnnjax.activations`][rnnjax.functional.activations])",
    "initializers": "(a Keras name, config dict, object or callable: "
    "[`rnnjax.initializers`][rnnjax.functional.initializers])",
    "regularizers": "(a Keras name, config dict, object or callable: [`rnnjax.regularizers`][rnnjax.regularizers])",
    "constraints": "(a Keras name, config dict, object or callable: [`rnnjax.constraints`][rnnjax.constraints])",
}

ARGUMENTS = {
    # The seed: Keras 2's recurrent layers.
    "units": "Positive integer, dimensionality of the output space.",
    "activation": "Activation function to use " + _SEE["activations"] + ". If you pass None, no activation is "
    'applied (ie. "linear" activation: `a(x) = x`).',
    "recurrent_activation": "Activation function to use for the recurrent step " + _SEE["activations"] + ". "
    "Keras 2's `'hard_sigmoid'` is `clip(0.2x + 0.5, 0, 1)`; Keras 3's is "
    "`'hard_sigmoid_keras3'`.",
    "use_bias": "Boolean, whether the layer uses a bias vector.",
    "kernel_initializer": "Initializer for the `kernel` weights matrix, used for the linear transformation of "
    "the inputs " + _SEE["initializers"] + ".",
    "recurrent_initializer": "Initializer for the `recurrent_kernel` weights matrix, used for the linear "
    "transformation of the recurrent state " + _SEE["initializers"] + ".",
    "bias_initializer": "Initializer for the bias vector " + _SEE["initializers"] + ".",
    "unit_forget_bias": "Boolean. If True, add 1 to the bias of the forget gate at initialization. Setting it "
    'to true will also force `bias_initializer="zeros"`. This is recommended in Jozefowicz '
    "et al. (2015).",
    "kernel_regularizer": "Regularizer function applied to the `kernel` weights matrix "
    + _SEE["regularizers"]
    + "; its penalty goes to the `'losses'` collection.",
    "recurrent_regularizer": "Regularizer function applied to the `recurrent_kernel` weights matrix "
    + _SEE["regularizers"]
    + ".",
    "bias_regularizer": "Regularizer function applied to the bias vector " + _SEE["regularizers"] + ".",
    "activity_regularizer": 'Regularizer function applied to the output of the layer (its "activation") '
    + _SEE["regularizers"]
    + "; divided by the batch size, as tf.keras and Keras 3 do.",
    "kernel_constraint": "Constraint function applied to the `kernel` weights matrix "
    + _SEE["constraints"]
    + "; applied after each optimizer step by "
    "[`rnnjax.keras_constraints`][rnnjax.keras_constraints].",
    "recurrent_constraint": "Constraint function applied to the `recurrent_kernel` weights matrix "
    + _SEE["constraints"]
    + ".",
    "bias_constraint": "Constraint function applied to the bias vector " + _SEE["constraints"] + ".",
    "dropout": "Float between 0 and 1. Fraction of the units to drop for the linear transformation of the "
    "inputs (only when called with `training=True`; masks from the `'dropout'` RNG stream).",
    "recurrent_dropout": "Float between 0 and 1. Fraction of the units to drop for the linear transformation of "
    "the recurrent state (only when called with `training=True`).",
    "implementation": "Implementation mode, either 1 or 2. Mode 1 will structure its operations as a larger "
    "number of smaller dot products and additions, whereas mode 2 will batch them into fewer, "
    "larger operations. In rnnjax both compute the same function; they differ in dropout: "
    "mode 1 draws one mask per gate, mode 2 one mask shared by the gates. Keras 2's deprecated "
    "0 (older Keras 2 files carry it) is accepted with Keras 2.3's warning and runs mode 1.",
    "return_sequences": "Boolean. Whether to return the last output in the output sequence, or the full sequence.",
    "return_state": "Boolean. Whether to return the last state in addition to the output.",
    "go_backwards": "Boolean (default False). If True, process the input sequence backwards and return the "
    "reversed sequence.",
    "stateful": "Boolean (default False). If True, the last state for each sample at index i in a batch will "
    "be used as initial state for the sample of index i in the following batch (the states live "
    "in the `'rnn_state'` collection; see [Stateful layers](../guides/stateful.md)).",
    "unroll": "Boolean (default False). If True, the network will be unrolled, else a symbolic loop will be "
    "used. Unrolling can speed-up a RNN, although it tends to be more memory-intensive. Unrolling is "
    "only suitable for short sequences.",
    "input_dim": "Dimensionality of the input (integer). Optional here (JAX shapes are known when the layer is "
    "called); when given, the input's last axis is checked against it.",
    "input_length": "Length of input sequences, to be specified when it is constant; when given, the input's "
    "time axis is checked against it.",
    "cell": "A RNN cell instance (an rnnjax cell, or any Flax module with the Keras cell protocol: "
    "`state_size` and `__call__(inputs, states)`), or a list of cells, which are stacked.",
    "cells": "The cells to stack, in order: each cell's output is the next cell's input.",
    # ConvLSTM (the seed).
    "filters": "Integer, the dimensionality of the output space (i.e. the number of output filters in the "
    "convolution).",
    "kernel_size": "An integer or tuple/list of n integers, specifying the dimensions of the convolution window.",
    "strides": "An integer or tuple/list of n integers, how far the window moves: the strides of the "
    "convolution (any stride != 1 is incompatible with any `dilation_rate` != 1), or of the pooling "
    "window (None: `pool_size`).",
    "padding": 'One of `"valid"` or `"same"` (case-insensitive; TensorFlow\'s split of the padding, and a '
    "`'same'` average pooling counts only real entries); Conv1D also `\"causal\"`.",
    "data_format": "A string, one of `channels_last` (default) or `channels_first`. The ordering of the "
    "dimensions in the inputs: `channels_last` puts the channels last, `channels_first` before "
    "the spatial axes (ConvLSTM: `(batch, time, ..., channels)` or `(batch, time, channels, ...)`; "
    "Conv2D: `(batch, rows, cols, channels)` or `(batch, channels, rows, cols)`).",
    "rank": "The number of spatial dimensions: 1, 2 or 3 (ConvLSTM1D, 2D, 3D).",
    "dilation_rate": "An integer or tuple/list of n integers, specifying the dilation rate to use for dilated "
    "convolution. Specifying any `dilation_rate` value != 1 is incompatible with specifying "
    "any `strides` value != 1.",
    # Beyond the seed.
    "reset_after": "GRU convention (whether to apply the reset gate after or before the recurrent matrix "
    "multiplication). False is Keras 2's default; True is Keras 3's and cuDNN's.",
    "zero_output_for_mask": "Boolean. If True, a masked step outputs zeros; if False (the default), it repeats "
    "the previous output (0 before the first unmasked step).",
    "param_dtype": "The dtype of the parameters (`jnp.float32` by default).",
    "scan_unroll": "Integer, the `unroll` of the `lax.scan` time loop: that many steps per loop iteration (a "
    "speed option; the numbers are the same).",
    "remat": "Boolean. If True, run the time loop in chunks of about `sqrt(T)` steps and keep only the chunk "
    "boundaries for the backward pass: memory grows as `sqrt(T)` for about one extra forward pass "
    "(see [Long sequences](../guides/long-sequences.md)).",
    "custom_backward": "Boolean. If True (the default), the loop runs with rnnjax's hand-written backward pass "
    "(`jax.custom_vjp`); False runs the generic loop, which forward-mode differentiation "
    "(`jax.jvp`, `jax.jacfwd`, `jax.hessian`) needs.",
    "backend": "`'auto'` (the default: the CuDNN layers' cuDNN when the input is on a GPU and the call allows "
    "it; on the CPU, oneDNN's fused LSTM/GRU kernels where the `onednn` extra is installed, the call "
    "allows them and the batch is large enough, see [Performance](../guides/performance.md); the scan "
    "driver elsewhere), `'scan'` (always the scan driver), `'cudnn'` (CuDNN layers: cuDNN or an error "
    "saying why not) or `'onednn'` (`LSTM`, `GRU`: oneDNN's kernels or an error saying why not).",
    # The layers around the recurrent ones (Keras 2).
    "layer": "The layer to wrap: any rnnjax recurrent layer (Bidirectional), or any Flax module (TimeDistributed).",
    "merge_mode": "Mode by which outputs of the forward and backward RNNs will be combined. One of "
    "`'sum'`, `'mul'`, `'concat'`, `'ave'`, None. If None, the outputs will not be combined, "
    "they will be returned as a list.",
    "backward_layer": "Optional recurrent layer to handle backwards input processing. If not given, a copy of "
    "`layer` with `go_backwards` flipped is used.",
    "layers": "The layers, in order.",
    "output_dim": "Integer, >= 0. Dimension of the dense embedding.",
    "embeddings_initializer": "Initializer for the `embeddings` matrix " + _SEE["initializers"] + "; `'uniform'` "
    "is Keras 2's `RandomUniform(-0.05, 0.05)`.",
    "embeddings_regularizer": "Regularizer function applied to the `embeddings` matrix " + _SEE["regularizers"] + ".",
    "embeddings_constraint": "Constraint function applied to the `embeddings` matrix " + _SEE["constraints"] + ".",
    "mask_zero": 'Whether or not the input value 0 is a special "padding" value that should be masked out. '
    "If True, index 0 cannot be used in the vocabulary (`input_dim` should equal the size of the "
    "vocabulary + 1).",
    "mask_value": "A step is masked where every feature of the input equals `mask_value`.",
    "rate": "Float between 0 and 1. Fraction of the input units to drop.",
    "noise_shape": "1D integer tensor representing the shape of the binary dropout mask that will be "
    "multiplied with the input (`None` entries take the input's size).",
    "seed": "An integer to use as random seed (folded into the `'dropout'` stream's key).",
    # The layers around the recurrent ones (rnnjax.layers.KERAS_LAYERS; Keras's arguments).
    "axis": "The axis (or axes) the layer acts along.",
    "epsilon": "Small float added to the variance to avoid dividing by zero.",
    "center": "If True, add the offset `beta` to the normalized tensor.",
    "scale": "If True, multiply by `gamma`.",
    "rms_scaling": "If True (Keras 3), divide the inputs, not centred, by their standard deviation and keep "
    "only `gamma`: `center` and `beta` are ignored.",
    "groups": "A positive integer specifying the number of groups in which the input is split along the channel axis.",
    "pool_size": "An integer or tuple/list of n integers, the size of the pooling windows.",
    "keepdims": "Whether to keep the pooled axes (with size 1).",
    "n": "Integer, the number of repetitions.",
    "target_shape": "Tuple of integers, the shape of a sample after the reshape (not including the batch axis); "
    "one entry may be -1.",
    "dims": "Tuple of integers, the permutation of the non-batch axes, indexed from 1: `(2, 1)` swaps the first "
    "and second.",
    "cropping": "An integer (both sides) or a tuple `(start, end)`: how many steps to drop at the start and the end.",
    "size": "Integer, how many times each step is repeated.",
    "max_value": "Float >= 0, the largest value the activation returns (None: no cap).",
    "negative_slope": "Float >= 0, the slope below the threshold (Keras 2's `alpha`).",
    "threshold": "Float >= 0, the value below which the input is damped (or set to 0).",
    "alpha": "Keras 2's name for `negative_slope` (give one of the two).",
    "robust_masking": "Keras 2 (tf-keras) only: if True, masked entries are replaced by a large negative value "
    "instead of having it added.",
    "keras_version": "2 (default) or 3: which Keras version's rule to follow where the two compute differently "
    "(masks; `Dot`'s normalization epsilon). `load_keras` sets the file's.",
    "axes": "Integer or tuple of two integers, the axis of each input along which the dot product is taken "
    "(not the batch axis).",
    "normalize": "Whether to L2-normalize samples along the dot product axis before taking the dot product "
    "(the result is then the cosine proximity).",
    "use_scale": "If True, the scores are multiplied by a trained scale (a scalar for `Attention`, a vector "
    "for `AdditiveAttention`).",
    "score_mode": "Function to compute the attention scores: `'dot'` (the query-key dot product) or "
    "`'concat'` (`sum tanh(query + key)`).",
    "causal": "Keras 2's (tf-keras up to 2.10) constructor form of `use_causal_mask`: if True, position `i` "
    "cannot attend to positions `j > i`.",
    "names": "The layers' Keras names, in `layers` order.",
}

# The NNX front end's own keyword arguments (rnnjax.nnx), where a linen field of the same name means
# something else.
NNX = {
    "input_dim": "The number of input features (Keras 2's `input_dim`; for ConvLSTM and the convolutions, the "
    "input channels; for BatchNormalization/LayerNormalization, the size of `axis` (a tuple for "
    "several axes); for AdditiveAttention, the query's features). Required: NNX creates the "
    "parameters at construction.",
    "rngs": "An `nnx.Rngs` (keyword-only): the `params` stream initialises the parameters, the `dropout` "
    "stream (or `rng_collection`) draws the dropout masks.",
    "batch_size": "For `stateful=True`: the batch size (an int, or a tuple of batch axes) of the states, "
    "created at construction.",
    "deterministic": "If True, dropout is off unless a call says `training=True` (`model.eval()` sets it, "
    "`model.train()` clears it).",
    "rng_collection": "The name of the `nnx.Rngs` stream the dropout masks are drawn from.",
    "input_spatial_shape": "For `stateful=True`: the input's spatial shape, which fixes the states' shape at "
    "construction.",
}

# What an argument annotated `Any` accepts (rendered as its type).
TYPES = {
    "activation": "str | Callable | None",
    "recurrent_activation": "str | Callable",
    "param_dtype": "jnp.dtype",
    "cell": "Module | Sequence[Module]",
    "layer": "Module",
}
for _name in ARGUMENTS:
    if _name.endswith("_initializer"):
        TYPES[_name] = "str | dict | Callable"
    elif _name.endswith(("_regularizer", "_constraint")):
        TYPES[_name] = "str | dict | Callable | None"
