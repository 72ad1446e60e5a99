"""The 3-D CNN: one functional Keras model, built from ``ModelConfig``, knowing nothing about hardware.

Input: a conducting mask (S, S, S, 1), float, 1 = conducting; with ``model.inputs: spanning`` (S, S, S, 4):
the mask and, per axis, the voxels of its clusters joining the two faces normal to that axis
(``physics.spanning_channels``; connectivity is global, which a network's local filters see only in part).
Output: sigma_eff/sigma_0 along the configured axes. The output is physics-bounded by construction: the
network predicts a fraction f in (0, 1) (sigmoid) and the model multiplies it by the porosity eps, computed
from the input inside the model, so 0 <= prediction <= eps (Wiener's bound: a conductor in an insulator never
beats the parallel arrangement).

Only layers that exist in Keras 2.6 (Graphcore's SDK), tf-keras 2.x and Keras 3 are used; group
normalisation comes from ``keras.layers.GroupNormalization`` where it exists, else from Graphcore's
``ipu_tensorflow_addons``. Pass ``keras=`` to build with a specific Keras module (a test builds and fits
it under Keras 3).
"""

from conductivity_tf.errors import UserError
from conductivity_tf.physics import spanning_channels

BFLOAT16_SIGNATURE = "serving_bfloat16"   # the SavedModel signature computing in bfloat16 (serving.export)


def _keras(keras):
    if keras is not None:
        return keras
    from conductivity_tf.keras_compat import keras as compat

    return compat


def _group_norm(keras, groups, name):
    layer = getattr(keras.layers, "GroupNormalization", None)
    if layer is not None:
        return layer(groups=groups, name=name)
    try:  # Keras 2.6 on Graphcore's SDK
        from ipu_tensorflow_addons.keras.layers import GroupNorm
    except ImportError:
        GroupNorm = None
    if GroupNorm is not None:
        # the function keras.layers.GroupNormalization computes: contiguous channel groups (GroupNorm's default
        # strided_channel_grouping=True puts channel c in group c % groups), gamma 1 and beta 0 at the start (its
        # None initializers are Keras's glorot_uniform), epsilon 1e-3 (ipu_tensorflow_addons/keras/layers/
        # normalization.py, GroupNormalization.__init__; the grouping: tensorflow/python/ipu/ops/normalization_ops.py)
        return GroupNorm(groups=groups, channels_axis=-1, center=True, scale=True, epsilon=1e-3,
                         beta_initializer="zeros", gamma_initializer="ones", strided_channel_grouping=False, name=name)
    raise UserError("model.norm=group needs keras.layers.GroupNormalization (TensorFlow >= 2.11) or "
                        "ipu_tensorflow_addons; use model.norm=batch or none")


def _batch_norm(keras, x, name):
    """Batch normalisation of a 5-D (N, D, H, W, C) tensor computed on its (N, D*H, W, C) view: the same
    per-channel statistics over the same elements, but TensorFlow's fused kernel, which takes 4-D tensors
    only (2-3x faster on a 64^3 model's first level on CPU, where the unfused 5-D form took 40 % of a
    training step). The reshapes are views; the norm layer keeps its name and weights."""
    layers = keras.layers
    d, h, w, c = (int(n) for n in x.shape[1:])
    x = layers.Reshape((d * h, w, c), name=name + "_4d")(x)
    x = layers.BatchNormalization(name=name)(x)
    return layers.Reshape((d, h, w, c), name=name + "_5d")(x)


def input_channels(model_cfg):
    """Channels of the network's input: 1 (the volume) or 4 (the volume and, per axis, its clusters joining the
    two faces normal to it, ``physics.spanning_channels``), by ``model.inputs``."""
    return 4 if getattr(model_cfg, "inputs", "volume") == "spanning" else 1


def network_input(volumes, inputs="volume"):
    """The float32 input of a network with ``model.inputs`` ``inputs`` for binary volumes (N, S, S, S): the volumes
    as one channel, or their ``physics.spanning_channels``."""
    import numpy as np

    volumes = np.asarray(volumes)
    if inputs == "spanning":
        return spanning_channels(volumes).astype(np.float32)
    return volumes[..., None].astype(np.float32)


_CELL_LAYERS = {}
CELL_FLOOR = 1e-4   # the least conductivity of a cell of model.head=cells, as a fraction of the porosity


def slice_links(n):
    """The links inside one n x n slice of a cubic grid of cells (flat index i * n + j), first those along the
    slice's first axis, then along its second: the (n*n)^2 flat entries of the slice Laplacian they add to, in the
    order +g at (i, i), +g at (j, j), -g at (i, j), -g at (j, i)."""
    import numpy as np

    index = np.arange(n * n).reshape(n, n)
    first = np.concatenate([index[:-1, :].ravel(), index[:, :-1].ravel()])
    second = np.concatenate([index[1:, :].ravel(), index[:, 1:].ravel()])
    m = n * n
    return np.concatenate([first * m + first, second * m + second, first * m + second, second * m + first])


def cell_network_layer(keras):
    """The Keras layer solving the conduction problem of a grid of cells (``model.head=cells``), for ``keras``.

    Input: (N, n, n, n, 3) cell conductivities along the three axes (> 0); output (N, 3): sigma_eff of the grid
    along each axis in the same unit, with ``physics.solve``'s boundary conditions (unit potential drop between the
    faces normal to the axis, insulating sides) on unit cells: neighbours along axis b are joined by the harmonic
    mean of their conductivities along b, the face cells to their face by twice their own.

    Ordered slice by slice along the transport axis, the system is block tridiagonal: an n^2 x n^2 block per slice
    (its in-slice links, summed by one segment sum), diagonal blocks between neighbouring slices. The slices are
    eliminated from the outlet to the inlet (each step one Cholesky factorisation and one triangular solve of an
    n^2 block: the Schur complement S <- D - G S^-1 G), which leaves the inlet slice's potentials, all the current
    needs. The three axes are one batch. Exact and differentiable; against factorising the whole n^3-unknown system
    at once (measured side by side, batch 32, two cores): for the 8^3 grid of a 64^3 cube 5.8x faster forward and
    7.6x with the gradient (40 against 234 ms, 178 against 1353 ms), for the 4^3 grid as fast forward and 2.1x with
    the gradient. ``tests/test_train.py`` checks it against ``cell_grid.solve_cells``."""
    if id(keras) in _CELL_LAYERS:
        return _CELL_LAYERS[id(keras)]

    class CellNetwork(keras.layers.Layer):
        def build(self, input_shape):
            self._n = int(input_shape[1])
            self._entries = slice_links(self._n)
            super().build(input_shape)

        def call(self, conductivity):
            import tensorflow as tf

            n, m = self._n, self._n ** 2
            k = tf.cast(conductivity, tf.float32)
            problems = []   # per transport axis a: the grid turned so that a is first, components (a, b, c)
            for order in ((0, 1, 2), (1, 0, 2), (2, 0, 1)):
                turned = tf.transpose(k, (0, 1 + order[0], 1 + order[1], 1 + order[2], 4))
                problems.append(tf.gather(turned, list(order), axis=4))
            k = tf.concat(problems, axis=0)                                       # (3N, n, n, n, 3)
            batch = tf.shape(k)[0]

            def harmonic(a, b):
                return 2.0 * a * b / (a + b)

            along = tf.reshape(harmonic(k[:, :-1, ..., 0], k[:, 1:, ..., 0]), (batch, n - 1, m))
            inside = tf.concat([tf.reshape(harmonic(k[:, :, :-1, :, 1], k[:, :, 1:, :, 1]), (batch, n, -1)),
                                tf.reshape(harmonic(k[:, :, :, :-1, 2], k[:, :, :, 1:, 2]), (batch, n, -1))], 2)
            entries = tf.concat([inside, inside, -inside, -inside], axis=2)      # (3N, n slices, 4 x links)
            entries = tf.reshape(tf.transpose(entries, (2, 0, 1)), (-1, batch * n))
            blocks = tf.math.unsorted_segment_sum(entries, self._entries, m * m)
            blocks = tf.reshape(tf.transpose(blocks), (batch, n, m, m))
            none = tf.zeros_like(along[:, :1])
            blocks += tf.linalg.diag(tf.concat([none, along], 1) + tf.concat([along, none], 1))
            inflow = 2.0 * tf.reshape(k[:, 0, ..., 0], (batch, m))               # the inlet face at potential 1
            schur = blocks[:, n - 1] + tf.linalg.diag(2.0 * tf.reshape(k[:, n - 1, ..., 0], (batch, m)))
            for s in range(n - 2, -1, -1):
                scaled = tf.linalg.triangular_solve(tf.linalg.cholesky(schur), tf.linalg.diag(along[:, s]))
                schur = blocks[:, s] - tf.matmul(scaled, scaled, transpose_a=True)
            factor = tf.linalg.cholesky(schur + tf.linalg.diag(inflow))
            potential = tf.linalg.cholesky_solve(factor, inflow[..., None])[..., 0]
            current = tf.reduce_sum(inflow * (1.0 - potential), axis=-1) / float(n)   # current x n / n^2
            return tf.transpose(tf.reshape(current, (3, -1)))

        def compute_output_shape(self, input_shape):
            return (input_shape[0], 3)

    _CELL_LAYERS[id(keras)] = CellNetwork
    return CellNetwork


def build_model(model_cfg, input_size, outputs, keras=None, name="conductivity_cnn", norm_view=True):
    """The CNN for cubes of edge ``input_size`` predicting ``outputs`` (1 or 3) values.

    model_cfg: a ``config.ModelConfig`` (widths, blocks, stride, stem_stride, norm, groups, activation,
    dropout, head_units, head, ensemble, branch_level). ``norm_view`` False: batch norms on the 5-D tensors
    (unfused; for the training benchmark's comparison only). Layer names are stable (``level{l}_conv{b}`` ...) so that
    pipeline split points and checkpoints can name them.

    With ``ensemble`` K > 1 the levels from ``branch_level`` on, the pooling and the head are built K times
    (members ``m{k}_...``) on the shared first levels, and the output is (N, K, outputs): every member's
    prediction. Their mean is the prediction, their spread its uncertainty (``members_summary``). The first
    levels, on the largest activations, take most of the time, so K members cost far less than K networks.
    """
    keras = _keras(keras)
    layers = keras.layers
    channels = input_channels(model_cfg)
    inputs = keras.Input((input_size, input_size, input_size, channels), name="volume")
    porosity = layers.GlobalAveragePooling3D(name="porosity", dtype="float32")(inputs)
    if channels > 1:  # the volume is channel 0; the others are its spanning clusters
        porosity = layers.Reshape((channels, 1), name="channel_means", dtype="float32")(porosity)
        porosity = layers.Cropping1D((0, channels - 1), name="volume_mean", dtype="float32")(porosity)
        porosity = layers.Reshape((1,), name="porosity_of_volume", dtype="float32")(porosity)

    def level(x, index, width, prefix=""):
        for block in range(model_cfg.blocks):
            strides = model_cfg.stride if (index > 0 and block == 0 and model_cfg.stride > 1) else 1
            kernel = 3
            if index == 0 and block == 0:
                strides, kernel = model_cfg.stem_stride, model_cfg.stem_kernel
            if index > 0 and block == 0 and model_cfg.stride == 1:
                x = layers.MaxPooling3D(2, name="{}level{}_pool".format(prefix, index))(x)
            x = layers.Conv3D(width, kernel, strides=strides, padding="same", use_bias=model_cfg.norm == "none",
                              name="{}level{}_conv{}".format(prefix, index, block))(x)
            norm = "{}level{}_norm{}".format(prefix, index, block)
            if model_cfg.norm == "batch":  # without the view only for the training benchmark's comparison
                x = _batch_norm(keras, x, norm) if norm_view else layers.BatchNormalization(name=norm)(x)
            elif model_cfg.norm == "group":
                x = _group_norm(keras, model_cfg.groups, norm)(x)
            x = layers.Activation(model_cfg.activation, name="{}level{}_act{}".format(prefix, index, block))(x)
        return x

    def slices_head(x, prefix=""):
        # per axis: the features averaged over each slice across it (the slices conduct in parallel within),
        # a positive resistance per slice, the slices in series along the axis (mean resistance R); the fraction
        # of the porosity that conducts is 1 / (1 + R), 1 - softsign(R) for R > 0
        fractions = []
        edge = int(x.shape[1])
        for axis in range(3):
            pool = [edge] * 3
            pool[axis] = 1
            y = layers.AveragePooling3D(pool, name="{}axis{}_slices".format(prefix, axis))(x)
            if model_cfg.dropout:
                y = layers.Dropout(model_cfg.dropout, name="{}axis{}_dropout".format(prefix, axis))(y)
            if model_cfg.head_units:
                y = layers.Conv3D(model_cfg.head_units, 1, activation=model_cfg.activation,
                                  name="{}axis{}_head".format(prefix, axis))(y)
            y = layers.Conv3D(1, 1, activation="exponential", dtype="float32",
                              name="{}axis{}_resistance".format(prefix, axis))(y)
            y = layers.GlobalAveragePooling3D(name="{}axis{}_series".format(prefix, axis), dtype="float32")(y)
            y = layers.Activation("softsign", name="{}axis{}_softsign".format(prefix, axis), dtype="float32")(y)
            fractions.append(layers.Rescaling(-1.0, 1.0, name="{}axis{}_fraction".format(prefix, axis),
                                              dtype="float32")(y))
        return layers.Concatenate(name=prefix + "fraction", dtype="float32")(fractions)

    def cells_head(x, prefix=""):
        # per cell of the last level, a conductivity along each axis (a fraction of the porosity, at least
        # CELL_FLOOR so that the grid's system stays positive definite), then the cells' conduction problem
        if model_cfg.dropout:
            x = layers.Dropout(model_cfg.dropout, name=prefix + "dropout")(x)
        if model_cfg.head_units:
            x = layers.Conv3D(model_cfg.head_units, 1, activation=model_cfg.activation, name=prefix + "head")(x)
        x = layers.Conv3D(3, 1, activation="sigmoid", dtype="float32", name=prefix + "cell_conductivity")(x)
        x = layers.Rescaling(1.0 - CELL_FLOOR, CELL_FLOOR, name=prefix + "cell_floor", dtype="float32")(x)
        return cell_network_layer(keras)(name=prefix + "fraction", dtype="float32")(x)

    def head(x, prefix=""):
        if model_cfg.head in ("slices", "cells"):
            if outputs != 3:
                raise ValueError("the {} head predicts three axes, not {}".format(model_cfg.head, outputs))
            return slices_head(x, prefix) if model_cfg.head == "slices" else cells_head(x, prefix)
        x = layers.GlobalAveragePooling3D(name=prefix + "pool")(x)
        if model_cfg.dropout:
            x = layers.Dropout(model_cfg.dropout, name=prefix + "dropout")(x)
        if model_cfg.head_units:
            x = layers.Dense(model_cfg.head_units, activation=model_cfg.activation, name=prefix + "head")(x)
        return layers.Dense(outputs, activation="sigmoid", dtype="float32", name=prefix + "fraction")(x)

    members = model_cfg.ensemble
    shared = len(model_cfg.widths) if members == 1 else model_cfg.branch_level
    x = inputs
    for index in range(shared):
        x = level(x, index, model_cfg.widths[index])
    if members == 1:
        sigma = layers.Multiply(name="relative_conductivity", dtype="float32")([head(x), porosity])
        return keras.Model(inputs, sigma, name=name)
    fractions = []
    for member in range(members):  # each member: the remaining levels and a head of its own, (N, 1, outputs)
        prefix = "m{}_".format(member)
        y = x
        for index in range(shared, len(model_cfg.widths)):
            y = level(y, index, model_cfg.widths[index], prefix)
        fractions.append(layers.Reshape((1, outputs), name=prefix + "member", dtype="float32")(head(y, prefix)))
    fraction = layers.Concatenate(axis=1, name="members", dtype="float32")(fractions)
    scale = layers.Reshape((1, 1), name="porosity_per_member", dtype="float32")(porosity)
    sigma = layers.Multiply(name="relative_conductivity", dtype="float32")([fraction, scale])
    return keras.Model(inputs, sigma, name=name)


def inference_copy(model, model_cfg, keras=None, policy="float32"):
    """An inference copy of ``model``: batch norms folded into the convolutions, computing in ``policy``.

    In inference a batch norm is a per-channel affine map, y = s (z - mean) + beta with
    s = gamma / sqrt(var + epsilon), so conv-then-norm equals one convolution with kernel W s and bias
    beta - mean s. The copy is the same architecture built with ``norm: none`` (convolutions with a
    bias); it predicts what ``model`` predicts in inference (up to rounding) and skips the batch norms'
    passes over the activations (30 % of a 64^3 prediction here). ``policy`` is a Keras dtype policy:
    "float32", or "mixed_bfloat16" for a copy whose convolutions compute in bfloat16 (weights, porosity
    and output stay float32; 1.65x faster on CPUs with native bfloat16, within about 1e-3 of float32 on
    the pretrained model). Group-norm and norm-free models are copied as they are."""
    import dataclasses

    import numpy as np

    keras = _keras(keras)
    outputs = int(model.output_shape[-1])
    fold = model_cfg.norm == "batch"
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(policy)
    try:
        copy = build_model(dataclasses.replace(model_cfg, norm="none") if fold else model_cfg,
                           int(model.input_shape[1]), outputs, keras=keras, name=model.name)
    finally:
        keras.mixed_precision.set_global_policy(previous)
    for layer in copy.layers:
        weights = layer.get_weights()
        if not weights:
            continue
        source = model.get_layer(layer.name)
        if fold and "level" in layer.name and "_conv" in layer.name:
            norm = model.get_layer(layer.name.replace("_conv", "_norm"))
            gamma, beta, mean, var = (np.asarray(w, np.float64) for w in norm.get_weights())
            scale = gamma / np.sqrt(var + norm.epsilon)
            kernel = np.asarray(source.get_weights()[0], np.float64)
            layer.set_weights([(kernel * scale).astype(np.float32), (beta - mean * scale).astype(np.float32)])
        else:
            layer.set_weights(source.get_weights())
    return copy


def members_summary(xp, predicted):
    """(mean, standard deviation) over an ensemble's members of (N, K, outputs) predictions, with ``xp`` numpy
    or TensorFlow; a single network's (N, outputs) gives (itself, None)."""
    if len(predicted.shape) == 2:
        return predicted, None
    if xp.__name__ == "numpy":
        return predicted.mean(axis=1), predicted.std(axis=1)
    mean = xp.reduce_mean(predicted, axis=1)
    return mean, xp.sqrt(xp.reduce_mean(xp.square(predicted - mean[:, None, :]), axis=1))
