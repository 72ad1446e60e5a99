"""A correction of a model's predictions by what the volume's paths say: plain numpy at prediction time.

The network sees a 64^3 cube through its convolutions and pools it; where few, thin or winding paths carry the
current (barely connected phases, elongated features across the axis) it errs by tens of per cent, and the sign
of its error follows the structure. The correction is a small multilayer perceptron of the volume's descriptors
along each axis (``domain.describe``: porosity, chords, the fraction joining the faces, the series bound of the
spanning clusters, the geodesic tortuosity, the renormalised conductivity, the conductivity of the coarse problem of
its cells of 4^3 voxels, and of those cells joined through their faces' voxel pairs, with and without each
junction capped by its cells' renormalised conductivities) and of the model's own prediction, trained on the
logarithm of the solver's value over the model's (``FEATURES``); the corrected value is the prediction times its
exponential. Several members, trained from different seeds, half of them blind to the capped junctions, are
averaged. It is fitted on the train splits of the model's dataset and of broader ones (``evaluate --calibrate
--calibration-data`` and ``--correction-data``), never on a validation or test split, costs the descriptors the
domain check computes anyway plus a few small matrix products, and is kept in a run directory's
``correction.json``.
"""

import os

import numpy as np

from conductivity_tf.errors import refuse_removed_inputs
from conductivity_tf.fileio import read_json, write_json

CORRECTION_FILE = "correction.json"
FEATURES = ["log porosity", "log mean chord of the conducting phase along the axis",
            "log mean chord of the conducting phase along the next axis",
            "log mean chord of the conducting phase along the last axis", "log mean chord of the insulating phase",
            "log anisotropy", "log fraction of the conducting phase joining the faces normal to the axis",
            "log smallest such fraction over the axes", "log predicted value",
            "log predicted fraction of the porosity that conducts",
            "log series bound of the spanning clusters along the axis", "log geodesic tortuosity along the axis",
            "log renormalised conductivity along the axis",
            "log conductivity of the 4^3-voxel cells joined through their faces along the axis",
            "log conductivity of those cells, each junction capped by its cells' renormalised ones, along the axis",
            "log fraction of the junctions' conductance the capping keeps along the axis"]
# half the members read the capped junctions too, half not (``fit``): seeing them, the correction finds the
# barely connected phases (the shared electrode's active phase) better and the open ones a little worse; the
# members' mean keeps most of both
CAPPED = FEATURES[-2:]
MEMBER_INPUTS = ([name for name in FEATURES if name not in CAPPED], FEATURES)
FLOOR = 1e-4      # values and fractions below this are taken as this (their logarithms stay finite)
LARGEST = 3.0     # the correction's logarithm is clipped to +-LARGEST (a factor of 20 at most)


def features(descriptions, values, axes, names=None):
    """(N * len(axes), F) features of N described volumes (``domain.describe``) and their (N, len(axes)) predicted
    values, one row per value: those of ``FEATURES`` named in ``names`` (all of them by default; a correction
    fitted before a feature was added keeps its own); NaN for the capped junctions where the descriptions leave them
    out (``domain.describe_many(..., capped=False)``)."""
    values = np.maximum(np.asarray(values, float).reshape(len(descriptions), len(axes)), FLOOR)
    keys = ("porosity", "insulating_chord", "anisotropy", "spanning", "axis_chords", "axis_spanning", "axis_series",
            "axis_tortuosity", "axis_renormalised", "axis_faces", "axis_capped", "axis_capped_kept")
    per_volume = {key: np.array([d.get(key, [np.nan] * 3) for d in descriptions], float).reshape(len(descriptions), -1)
                  for key in keys}
    porosity = np.maximum(per_volume["porosity"], FLOOR)
    chords = np.log(np.maximum(per_volume["axis_chords"], FLOOR))
    columns = []
    for j, axis in enumerate(axes):
        value = values[:, j:j + 1]
        columns.append(np.hstack([
            np.log(porosity), chords[:, [axis]], chords[:, [(axis + 1) % 3]], chords[:, [(axis + 2) % 3]],
            np.log(np.maximum(per_volume["insulating_chord"], FLOOR)),
            np.log(np.maximum(per_volume["anisotropy"], 1.0)),
            np.log(np.maximum(per_volume["axis_spanning"][:, [axis]], FLOOR)),
            np.log(np.maximum(per_volume["spanning"], FLOOR)), np.log(value),
            np.log(np.minimum(value / porosity, 1.0)),
            np.log(np.maximum(per_volume["axis_series"][:, [axis]], FLOOR)),
            np.log(np.maximum(per_volume["axis_tortuosity"][:, [axis]], 1.0)),
            np.log(np.maximum(per_volume["axis_renormalised"][:, [axis]], FLOOR)),
            np.log(np.maximum(per_volume["axis_faces"][:, [axis]], FLOOR)),
            np.log(np.maximum(per_volume["axis_capped"][:, [axis]], FLOOR)),
            np.log(np.maximum(per_volume["axis_capped_kept"][:, [axis]], FLOOR))]))
    # one row per value, the volume's axes in turn (as values.ravel())
    x = np.stack(columns, axis=1).reshape(len(descriptions) * len(axes), len(FEATURES))
    return x if names is None else x[:, [FEATURES.index(name) for name in names]]


def fit(descriptions, truth, values, axes, members=3, width=64, epochs=40, learning_rate=0.002, seed=0,
        keras=None, progress=None):
    """The correction of a model's (N, len(axes)) predicted ``values`` towards the solver's ``truth`` (train
    splits): ``members`` perceptrons of two hidden layers of ``width`` (GELU) for each of ``MEMBER_INPUTS``, each fitted
    for ``epochs`` (Adam, cosine decay from ``learning_rate`` to 0) on the squared error of log(truth / value) over
    the values that conduct. A dict, as ``correction.json`` keeps it (``member_features``: the features each member
    reads); None with fewer than 100 conducting values. ``progress(text)`` is told of each member as it starts."""
    from conductivity_tf import keras_compat

    keras = keras or keras_compat.keras

    truth, values = np.asarray(truth, float).ravel(), np.asarray(values, float)
    x = features(descriptions, values, axes)
    live = (truth > 1e-6) & (values.ravel() > FLOOR)
    if live.sum() < 100:
        return None
    target = np.log(truth[live] / values.ravel()[live])
    mean, scale = x[live].mean(axis=0), x[live].std(axis=0) + 1e-9
    inputs = ((x[live] - mean) / scale).astype(np.float32)
    layers, reads = [], []
    for names in MEMBER_INPUTS:
        columns = [FEATURES.index(name) for name in names]
        for member in range(members):
            if progress:
                progress("the correction's member {} of {}".format(len(layers) + 1, members * len(MEMBER_INPUTS)))
            keras_compat.set_random_seed(seed + member)   # the same fit from the same values, run after run
            net = keras.Sequential([keras.layers.Dense(width, activation="gelu", input_shape=(len(names),)),
                                    keras.layers.Dense(width, activation="gelu"), keras.layers.Dense(1)])
            steps = epochs * -(-int(live.sum()) // 256)
            # to 0: no step's noise left at the end
            rate = keras.optimizers.schedules.CosineDecay(learning_rate, steps)
            net.compile(optimizer=keras.optimizers.Adam(rate), loss="mse")
            net.fit(inputs[:, columns], target.astype(np.float32), batch_size=256, epochs=epochs, verbose=0,
                    shuffle=True)
            layers.append([[w.tolist() for w in layer.get_weights()] for layer in net.layers])
            reads.append(list(names))
    return {"features": FEATURES, "mean": mean.tolist(), "scale": scale.tolist(), "members": layers,
            "member_features": reads, "fitted_values": int(live.sum())}


def held_out_factors(train, descriptions, values, families, axes, members=1, progress=None):
    """(N, len(axes)) factors for the validation ``values`` of N described volumes of the given ``families``, each
    from a correction fitted (``members`` of it) on the ``train`` values (a dict of descriptions, truth, values,
    families) of every other family: how the correction does on a kind of structure it has not seen. Where the
    train values hold a single family, the correction fitted on all of them."""
    train_families, families = np.asarray(train["families"]), np.asarray(families)
    factors = np.ones(np.shape(values))
    for kind in sorted(set(families.tolist())):
        rows = families == kind
        keep = train_families != kind
        if not keep.any():     # a single family: nothing to hold out
            keep[:] = True
        if progress:
            progress("the correction without {}".format(kind))
        model = fit([d for d, k in zip(train["descriptions"], keep) if k], train["truth"][keep],
                    train["values"][keep], axes, members=members)
        if model is not None:
            factors[rows] = factor(model, [d for d, k in zip(descriptions, rows) if k], values[rows], axes)
    return factors


def reads_capped(model):
    """Whether a correction (a dict from ``fit``, or None) has members that read the capped junctions: if not, the
    descriptions need not solve them (``domain.describe_many(..., capped=False)``)."""
    if model is None:
        return False
    reads = model.get("member_features") or [model["features"]]
    return any(name in CAPPED for names in reads for name in names)


def _gelu(x):
    from scipy.special import erf  # here: commands that never correct start without scipy.special (0.15 s)

    return 0.5 * x * (1.0 + erf(x / np.sqrt(2.0)))


def factor(model, descriptions, values, axes):
    """(N, len(axes)) factors the correction ``model`` (a dict from ``fit``) multiplies the predicted ``values``
    by: the exponential of its members' mean output (each member reading its ``member_features``, or all). Where
    the descriptions leave out the capped junctions, the members that read them are left out of the mean."""
    values = np.asarray(values, float)
    if not len(values):
        return np.ones_like(values)
    x = features(descriptions, values, axes, model["features"])
    x = (x - np.asarray(model["mean"])) / np.asarray(model["scale"])
    outputs = []
    reads = model.get("member_features") or [model["features"]] * len(model["members"])
    for layers, names in zip(model["members"], reads):
        h = x[:, [model["features"].index(name) for name in names]]
        if np.isnan(h).any():
            continue
        for k, (weights, bias) in enumerate(layers):
            h = h @ np.asarray(weights) + np.asarray(bias)
            if k < len(layers) - 1:
                h = _gelu(h)
        outputs.append(h[:, 0])
    if not outputs:
        raise ValueError("every member of the correction reads the capped junctions, which the descriptions leave out")
    return np.exp(np.clip(np.mean(outputs, axis=0), -LARGEST, LARGEST)).reshape(values.shape)


def apply(model, descriptions, values, axes):
    """The predicted ``values`` (N, len(axes)) corrected by ``model``; unchanged where ``model`` is None."""
    if model is None:
        return values
    return np.asarray(values, float) * factor(model, descriptions, values, axes)


def save(directory, model):
    write_json(os.path.join(directory, CORRECTION_FILE), model)


def load(directory):
    """The correction a run directory keeps, or None when it has none (it predicts the network's values)."""
    model = read_json(os.path.join(directory, CORRECTION_FILE))
    if model is not None:
        refuse_removed_inputs("the correction", directory, model["features"], FEATURES, " --correction")
    return model
