"""The uncertainty of a prediction from what kind of structure the volume is: plain numpy, no TensorFlow.

A model's error is not the same everywhere: it is small on open, well-connected phases and large where few thin
paths carry the current (low porosity, a conducting phase of few, large features, little of it joining the two
faces). An ensemble's spread sees little of this (its members agree on a volume whose value none of them can
know), so the stated uncertainty is an error model fitted to the model's own errors on the validation split: the
logarithm of the relative error, linear in the logarithms of the volume's descriptors along each axis
(``domain.describe``), of the predicted fraction of the porosity that conducts, of the prediction's
disagreement with the renormalised conductivity and with that of the cells joined through their faces and, for an
ensemble, of its members' relative spread (``FEATURES``), and of the products of every two of them (``design``:
the error grows with one where another is large; on a volume outside the training domain, the larger of that and
the linear form fitted alike). Its scale is then fitted so that the prediction +- Z90 of
it holds 90 % of the validation values: one calibrated standard deviation, like the ensemble's. It costs the
descriptors only (about a millisecond per 64^3 volume on two cores, computed anyway for the training-domain check).
A run directory keeps it in ``uncertainty.json``.

A model with a correction (``correction.py``) has two more features, how close the value comes to the porosity's
share and how far the correction moved the network's value (``CORRECTED_FEATURES``); the weights are fitted on the
validation splits corrected as predict corrects them, which ranks the errors as predict's values make them, and the
scale on the same values corrected as by a correction that never saw their family, so that the interval holds on
kinds of structure new to the correction, as a tomogram is.
"""

import os

import numpy as np

from conductivity_tf.errors import refuse_removed_inputs
from conductivity_tf.fileio import read_json, write_json
from conductivity_tf.metrics import Z90

UNCERTAINTY_FILE = "uncertainty.json"
FEATURES = ["constant", "log porosity", "log mean chord of the conducting phase along the axis",
            "log mean chord of the insulating phase", "log anisotropy",
            "log fraction of the conducting phase joining the faces normal to the axis",
            "log predicted fraction of the porosity that conducts",
            "log disagreement of the prediction with the renormalised conductivity",
            "log disagreement of the prediction with the conductivity of the cells joined through their faces"]
SPREAD_FEATURE = "log relative spread of the ensemble's members"
HEADROOM_FEATURE = "log headroom of the prediction: one minus the predicted fraction of the porosity that conducts"
FACTOR_FEATURE = "log size of the correction's factor, |log(value / the network's value)|"
# a corrected model's error model (``fit`` with ``network``): the features above and these two
CORRECTED_FEATURES = FEATURES + [HEADROOM_FEATURE, FACTOR_FEATURE]
FLOOR = 1e-3   # relative errors and fractions below this are taken as this (their logarithms stay finite)
INTERACTION_ROWS = 20  # conducting values per weight below which an error model is fitted without interactions


def features(descriptions, values, axes, spread=None, names=None, network=None):
    """(N * len(axes), F) features of N described volumes (``domain.describe``) and their (N, len(axes)) predicted
    values (and the ensemble's spread), one row per value: those named in ``names`` (``FEATURES``, and the spread's,
    by default; an error model fitted before a feature was added keeps its own). The disagreement is |log(value /
    renormalised)|: where the network (corrected) and the renormalisation of the volume's blocks part, one of them is
    far off. ``network``: the network's own (N, len(axes)) values before the correction, for ``FACTOR_FEATURE``."""
    values = np.asarray(values, float)
    network = values if network is None else np.asarray(network, float)
    rows = []
    for i, description in enumerate(descriptions):
        porosity = max(description["porosity"], FLOOR)
        for j, axis in enumerate(axes):
            conducting = min(max(values[i, j] / porosity, FLOOR), 1.0)
            row = [1.0, np.log(porosity), np.log(max(description["axis_chords"][axis], FLOOR)),
                   np.log(max(description["insulating_chord"], FLOOR)), np.log(max(description["anisotropy"], 1.0)),
                   np.log(max(description["axis_spanning"][axis], FLOOR)), np.log(conducting),
                   np.log(abs(np.log(max(values[i, j], FLOOR) / max(description["axis_renormalised"][axis], FLOOR)))
                          + 0.05),
                   np.log(abs(np.log(max(values[i, j], FLOOR) / max(description["axis_faces"][axis], FLOOR))) + 0.05)]
            if spread is not None:
                row.append(np.log(max(float(spread[i, j]), 0.0) / max(values[i, j], FLOOR) + FLOOR))
            row += [np.log(max(1.0 - conducting, FLOOR)),
                    np.log(abs(np.log(max(values[i, j], FLOOR) / max(network[i, j], FLOOR))) + 0.01)]
            rows.append(row)
    every = FEATURES + ([SPREAD_FEATURE] if spread is not None else []) + [HEADROOM_FEATURE, FACTOR_FEATURE]
    x = np.array(rows, float).reshape(len(rows), len(every))
    names = names or every[:len(FEATURES) + (spread is not None)]
    return x[:, [every.index(name) for name in names]]


def fit(descriptions, truth, values, axes, spread=None, network=None, held_out=None, held_out_spread=None,
        interactions=True):
    """``fitted``'s error model; one with interactions keeps the linear form fitted alike too (``plain``), which
    ``evaluate`` states where it is larger on the volumes outside the training domain."""
    model = fitted(descriptions, truth, values, axes, spread, network, held_out, held_out_spread, interactions)
    if model is not None and "ranges" in model:
        plain = fitted(descriptions, truth, values, axes, spread, network, held_out, held_out_spread, False)
        model["plain"] = {"weights": plain["weights"], "scale": plain["scale"]}
    return model


def fitted(descriptions, truth, values, axes, spread=None, network=None, held_out=None, held_out_spread=None,
           interactions=True):
    """The error model of a model's (N, len(axes)) predicted ``values`` against the solver's ``truth`` (the
    validation split): least squares of the log relative error over the conducting values, then the scale that
    makes +-Z90 of it hold 90 % of them. For a corrected model (``network``: its values before the correction) the
    features are ``CORRECTED_FEATURES``, and the scale is fitted on the ``held_out`` values instead (the same volumes
    corrected as by a correction that never saw their family; ``held_out_spread`` an ensemble's spread with them):
    the weights rank the errors as predict's values make them, the scale holds on kinds of structure new to the
    correction. With ``interactions`` (and at least ``INTERACTION_ROWS`` conducting values per weight) the
    products of every two features are inputs too (``design``). A dict, as ``uncertainty.json`` keeps it; None with
    fewer than four conducting values per feature."""
    truth, values = np.asarray(truth, float), np.asarray(values, float)
    names = (FEATURES if network is None else CORRECTED_FEATURES) + ([SPREAD_FEATURE] if spread is not None else [])
    x = features(descriptions, values, axes, spread, names, network)
    live = truth.ravel() > 1e-6
    if live.sum() < 4 * x.shape[1]:  # too few to fit one
        return None
    model = {"features": names}
    if interactions and live.sum() >= INTERACTION_ROWS * _products(x.shape[1]):
        model["ranges"] = [[float(v) for v in x[live].min(axis=0)], [float(v) for v in x[live].max(axis=0)]]
    x = design(model, x)
    predicted = np.maximum(values.ravel(), FLOOR * FLOOR)
    relative = np.abs(values.ravel() - truth.ravel()) / predicted
    weights = np.linalg.lstsq(x[live], np.log(relative[live] + FLOOR), rcond=None)[0]
    model.update(weights=[float(w) for w in weights], scale=1.0, fitted_values=int(live.sum()))
    if "ranges" in model:
        logs = x[live] @ weights
        model["log_range"] = [float(logs.min()), float(logs.max())]
    if held_out is not None:
        values, spread = np.asarray(held_out, float), held_out_spread
    typical = evaluate(model, descriptions, values, axes, spread, network).ravel()
    model["scale"] = float(np.quantile(np.abs(values.ravel() - truth.ravel())[live] / typical[live], 0.9) / Z90)
    return model


def _products(count):
    """The weights of a design with interactions on ``count`` features (the first the constant)."""
    return count + (count - 1) * count // 2


def design(model, x):
    """The error model's inputs from its features ``x`` (rows, F): the features themselves, or, for a model with
    ``ranges``, the features held within the range they had on the fitted values and then the products of every two
    but the constant (the error grows with one feature faster where another is large: on the test split the ranking
    of the errors went from a Spearman correlation of 0.45 to 0.53, on the shared volumes' tiles from 0.69 to 0.73;
    held within their range, as the log error below is, no product runs away on a structure unlike any fitted)."""
    if "ranges" not in model:
        return x
    x = np.clip(x, *model["ranges"])
    first, second = np.triu_indices(x.shape[1] - 1)
    return np.hstack([x, x[:, 1:][:, first] * x[:, 1:][:, second]])


def evaluate(model, descriptions, values, axes, spread=None, network=None, outside=None):
    """(N, len(axes)) uncertainty (one calibrated standard deviation) of the predicted ``values`` by the error
    model ``model`` (a dict from ``fit``; one fitted for a corrected model needs the ``network``'s own values before
    the correction). ``outside``: per volume, whether (or the reasons why) it lies outside the training domain;
    there a model with interactions states the larger of its two forms' (``plain``): the products, fitted where the
    inputs go together as in the fitted volumes, can fall where they do not (a 64^3 cube of plates, its anisotropy
    41, 17 % off along one axis, stated 0.9 % by the products and 11 % by the linear form)."""
    values = np.asarray(values, float)
    uses_spread = SPREAD_FEATURE in model["features"]
    if uses_spread and spread is None:
        raise ValueError("this error model was fitted with an ensemble's spread, which these predictions lack")
    if FACTOR_FEATURE in model["features"] and network is None:
        raise ValueError("this error model was fitted on the correction's factor: give the network's own values")
    x = features(descriptions, values, axes, spread if uses_spread else None, model["features"], network)
    stated = _stated(model, x, values)
    far = np.zeros(len(descriptions), bool) if outside is None else np.array([bool(o) for o in outside], bool)
    if "plain" in model and far.any():
        stated = np.where(far[:, None], np.maximum(stated, _stated(model["plain"], x, values)), stated)
    return stated


def _stated(model, x, values):
    """The uncertainty (N, len(axes)) of ``values`` by ``model``'s weights, log range and scale from its features
    ``x`` (one row per value)."""
    log_error = design(model, x) @ np.asarray(model["weights"], float)
    if "log_range" in model:
        log_error = np.clip(log_error, *model["log_range"])
    typical = np.maximum(values.ravel(), FLOOR * FLOOR) * np.exp(log_error)
    return (model["scale"] * typical).reshape(values.shape)


def save(directory, model):
    write_json(os.path.join(directory, UNCERTAINTY_FILE), model)


def load(directory):
    """The error model a run directory keeps, or None (a run from before error models)."""
    model = read_json(os.path.join(directory, UNCERTAINTY_FILE))
    if model is not None:
        refuse_removed_inputs("the error model", directory, model["features"],
                              FEATURES + [SPREAD_FEATURE, HEADROOM_FEATURE, FACTOR_FEATURE],
                              " (with --correction if the run has a correction.json)")
    return model
