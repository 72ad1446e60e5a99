"""How far a prediction can be trusted: the ensemble's uncertainty, its calibration, the training domain, and the
solver answering where the model is unsure (``predict --max-error``)."""

import json

import numpy as np
import pytest

from conductivity_tf import coarse, domain, faces, metrics, microstructure, physics
from tests.conftest import assert_one_line_error, run_module

SPEC = """
samples: 768
size: 16
# layered over the default families (blobs, spheres, fibres, graded): no spheroids
seed: 5
shard_size: 128
families:
  blobs: {weight: 1.0, porosity: [0.3, 0.8], params: {correlation_length: [1.0, 2.5]}}
  overlapping_spheres: {weight: 1.0, porosity: [0.3, 0.8], params: {radius: [1.5, 3.0], conducting: [pores, spheres]}}
"""
UNSEEN_SPEC = """
samples: 96
size: 16
seed: 11
shard_size: 96
families:
  blobs: {weight: 0.0}
  overlapping_spheres: {weight: 0.0}
  packed_spheres: {weight: 0.0}
  fibres: {weight: 0.0}
  graded: {weight: 0.0}
  spheroids: {weight: 1.0, porosity: [0.35, 0.75], params: {radius: [1.0, 1.5], aspect: [0.2, 5.0], spread: [5.0]}}
"""
ENSEMBLE = ["data.size=16", "model.widths=[8,16]", "model.head_units=16", "model.ensemble=4", "model.branch_level=1",
            "train.epochs=8", "train.batch_size=16", "train.tensorboard=false", "train.deterministic=true"]


def _fast_convolution_gradients():
    """TensorFlow >= 2.9 trains with oneDNN's kernels (keras_compat); TensorFlow 2.6's own CPU gradients of
    strided 3-D convolutions are about 8x slower (the ensemble below: 250 s against 30 s on a 2-core AVX2 CPU)."""
    from conductivity_tf.keras_compat import TF_VERSION

    return TF_VERSION >= (2, 9)


@pytest.fixture(scope="module")
def ensemble_run(tmp_path_factory):
    """A small ensemble trained on the default families (no spheroids), by the real commands. On TensorFlow 2.6
    one epoch: every path (export with the uncertainty, calibration, domain, --max-error) runs alike, and the
    held-out family, which needs a trained ensemble, is checked on current TensorFlow."""
    base = tmp_path_factory.mktemp("trust")
    (base / "spec.yaml").write_text(SPEC)
    proc = run_module("conductivity_tf.dataset", "build", "--config", base / "spec.yaml", "--out", base / "data",
                      "--quiet")
    assert proc.returncode == 0, proc.stderr
    epochs = [] if _fast_convolution_gradients() else ["train.epochs=1"]
    proc = run_module("conductivity_tf.train", "data.path={}".format(base / "data"), *ENSEMBLE, *epochs,
                      "--out", base / "run")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return str(base / "run")


def _family(name, **params):
    return np.stack([microstructure.generate(name, 16, seed=300 + i, porosity=p, **params)
                     for i, p in enumerate(np.linspace(0.35, 0.75, 12))])


def test_the_ensemble_is_more_uncertain_on_a_family_it_never_saw(ensemble_run):
    from conductivity_tf.predict import Predictor

    if not _fast_convolution_gradients():
        pytest.skip("the ensemble trains one epoch on TensorFlow 2.6 (its CPU convolution gradients are ~8x "
                    "slower); the held-out family is checked on current TensorFlow")

    predictor = Predictor(ensemble_run, precision="fp32")
    assert predictor.has_uncertainty
    trained = np.concatenate([_family("blobs", correlation_length=1.8), _family("overlapping_spheres", radius=2.2)])
    unseen = _family("spheroids", radius=1.0, aspect=0.2, spread=5.0)
    on_trained = np.median(predictor.predict(trained).uncertainty)
    on_unseen = np.median(predictor.predict(unseen).uncertainty)
    assert on_unseen > 1.15 * on_trained > 0


def test_the_run_states_its_calibration_and_its_training_domain(ensemble_run):
    from conductivity_tf import dataset
    from conductivity_tf.predict import Predictor

    with open(ensemble_run + "/metrics.json") as handle:
        calibration = json.load(handle)["calibration"]
    # fitted on the validation split to hold 90 % there; on the test split (same families) about as much
    assert 0.75 <= calibration["coverage_90"] <= 1.0 and calibration["scale"] > 0
    # the exported spread is the one metrics.json's calibration describes, and the uncertainty predict states (the
    # error model) the one its "uncertainty" describes: the same coverage from the SavedModel
    volumes, sigma = dataset.load_arrays(ensemble_run.replace("/run", "/data"), "test")[:2]
    predictor = Predictor(ensemble_run, precision="fp32")
    values, served = predictor._run(volumes)
    stated_by_predict = predictor.predict(volumes)      # exact zeros, with no uncertainty, where there is no path
    for given, stated, described in ((values, served, calibration), (stated_by_predict.values,
                                     stated_by_predict.uncertainty,
                                     json.load(open(ensemble_run + "/metrics.json"))["uncertainty"])):
        recomputed = metrics.calibration_metrics(sigma, given, stated)
        assert recomputed["coverage_90"] == pytest.approx(described["coverage_90"], abs=2.0 / sigma.size)
        assert recomputed["mean_uncertainty"] == pytest.approx(described["mean_uncertainty"], rel=1e-3)

    trained_on = domain.load(ensemble_run)
    porosity = dataset.load_arrays(ensemble_run.replace("/run", "/data"), "train")[2]
    assert porosity.min() <= trained_on["porosity"][0] < trained_on["porosity"][1] <= porosity.max()
    proc = run_module("conductivity_tf.evaluate", "--model", ensemble_run, "--data",
                      ensemble_run.replace("/run", "/data"), "--precision", "fp32")
    assert proc.returncode == 0, proc.stderr
    assert "the stated ~90 % interval holds" in proc.stdout


def test_max_error_takes_the_solvers_value_where_unsure_and_the_models_elsewhere(ensemble_run, tmp_path):
    from conductivity_tf.predict import Predictor

    volumes = np.concatenate([_family("blobs", correlation_length=1.8)[:4], _family("spheroids", radius=1.0,
                                                                                      aspect=0.2, spread=5.0)[:2]])
    volumes[0, :, 8, :] = 0   # no path along axis 1
    predictor = Predictor(ensemble_run, precision="fp32")
    plain = predictor.predict(volumes)
    loose = predictor.predict(volumes, max_error=1e9)
    tight = predictor.predict(volumes, max_error=1e-9)
    for i, volume in enumerate(volumes):
        solved = [r.relative_conductivity for r in physics.solve(volume)]
        for axis in range(3):
            if solved[axis] == 0.0:  # no path: an exact zero either way
                assert loose.values[i, axis] == 0.0 == tight.values[i, axis]
                assert loose.source[i, axis] == "solver"
            elif plain.flags[i]:     # outside the training domain: solved whatever the uncertainty
                assert loose.values[i, axis] == solved[axis] and loose.source[i, axis] == "solver"
            else:
                assert loose.values[i, axis] == plain.values[i, axis] and loose.source[i, axis] == "model"
            assert tight.values[i, axis] == solved[axis] and tight.source[i, axis] == "solver"
    assert any(plain.flags[4:]) and not plain.flags[1]
    # the command line says the same, per value
    path = tmp_path / "v.npy"
    np.save(path, volumes[1])
    proc = run_module("conductivity_tf.predict", "--model", ensemble_run, "--json", "--max-error", "1e-9", path)
    assert proc.returncode == 0, proc.stderr
    line = json.loads(proc.stdout)
    assert line["source"] == ["solver"] * 3 and line["relative_conductivity"] == pytest.approx(
        [r.relative_conductivity for r in physics.solve(volumes[1])], rel=1e-12)


def test_uncertainty_scale_turns_a_spread_into_a_calibrated_standard_deviation():
    rng = np.random.default_rng(0)
    spread = rng.uniform(0.01, 0.1, 20000)
    truth = rng.uniform(0.1, 0.9, 20000)
    predicted = truth + rng.normal(0.0, 3.0 * spread)          # errors three times the raw spread
    scale = metrics.uncertainty_scale(truth, predicted, spread)
    assert scale == pytest.approx(3.0, rel=0.05)
    calibrated = metrics.calibration_metrics(truth, predicted, scale * spread)
    assert calibrated["coverage_90"] == pytest.approx(0.9, abs=0.01)
    assert calibrated["spearman_error_uncertainty"] > 0.3
    shuffled = metrics.calibration_metrics(truth, predicted, rng.permutation(scale * spread))
    assert abs(shuffled["spearman_error_uncertainty"]) < 0.05
    assert metrics.calibration_metrics(truth, predicted, np.full_like(spread, 0.05))[
        "spearman_error_uncertainty"] is None


def _described(rng, count):
    """Descriptions (as ``domain.describe`` gives them) of ``count`` made-up volumes."""
    return [{"porosity": rng.uniform(0.2, 0.8), "insulating_chord": rng.uniform(2, 8), "anisotropy": rng.uniform(1, 3),
             "axis_chords": list(rng.uniform(2, 10, 3)), "axis_spanning": list(rng.uniform(0.05, 1.0, 3)),
             "axis_renormalised": list(rng.uniform(0.02, 0.6, 3)), "axis_faces": list(rng.uniform(0.02, 0.6, 3))}
            for _ in range(count)]


def _axis(described, key):
    """(N, 3): a descriptor of each made-up volume along each axis (a volume's one value repeated)."""
    return np.array([d[key] if isinstance(d[key], list) else [d[key]] * 3 for d in described])


def _with_errors(rng, count, relative):
    """(descriptions, values, truth, relative errors) of ``count`` made-up volumes whose values err by
    ``relative(descriptions)`` (N, 3), one standard deviation relative to the value."""
    described = _described(rng, count)
    values = rng.uniform(0.05, 0.5, (count, 3))
    spread = relative(described)
    return described, values, values * (1.0 + rng.normal(0.0, 1.0, values.shape) * spread), spread


def test_the_error_model_states_more_where_the_prediction_and_the_renormalisation_part():
    from conductivity_tf import uncertainty

    rng = np.random.default_rng(5)
    described = _described(rng, 3000)
    values = rng.uniform(0.05, 0.5, (3000, 3))
    renormalised = values * np.exp(rng.normal(0.0, 0.5, values.shape))
    for d, r in zip(described, renormalised):
        d["axis_renormalised"] = list(r)
    gap = np.abs(np.log(values / renormalised))
    truth = values * (1.0 + rng.normal(0.0, 1.0, values.shape) * 0.1 * gap)   # errors grow with the disagreement
    model = uncertainty.fit(described, truth, values, [0, 1, 2], interactions=False)
    weight = model["weights"][uncertainty.FEATURES.index(
        "log disagreement of the prediction with the renormalised conductivity")]
    assert 0.6 < weight < 1.4                       # the log relative error goes as the log disagreement
    relative = uncertainty.evaluate(model, described, values, [0, 1, 2]) / values
    assert np.median(relative[gap > 0.6]) > 3 * np.median(relative[gap < 0.2])
    # an error model fitted before the feature existed states what its own seven features give
    old = dict(model, features=uncertainty.FEATURES[:7], weights=model["weights"][:7])
    x = uncertainty.features(described, values, [0, 1, 2])[:, :7]
    np.testing.assert_allclose(uncertainty.evaluate(old, described, values, [0, 1, 2]).ravel(),
                               model["scale"] * values.ravel() * np.exp(x @ np.array(model["weights"][:7])))


def test_an_error_model_fitted_on_an_input_no_longer_computed_is_refused_with_the_command_that_refits_it(tmp_path):
    from conductivity_tf import uncertainty
    from conductivity_tf.errors import UserError

    fitted = {"features": uncertainty.FEATURES, "weights": [0.0] * len(uncertainty.FEATURES), "scale": 1.0}
    (tmp_path / uncertainty.UNCERTAINTY_FILE).write_text(json.dumps(fitted))
    assert uncertainty.load(str(tmp_path)) == fitted
    stale = dict(fitted, features=uncertainty.FEATURES[:-1] + [
        "log disagreement of the prediction with the conductivity of the cells solved"])
    (tmp_path / uncertainty.UNCERTAINTY_FILE).write_text(json.dumps(stale))
    with pytest.raises(UserError, match="cells solved.*--calibrate"):
        uncertainty.load(str(tmp_path))


def test_the_error_model_learns_where_errors_are_large_and_states_a_calibrated_deviation():
    from conductivity_tf import uncertainty

    rng = np.random.default_rng(1)

    def draw(count):
        # relative errors 0.02 on phases that all join the faces, growing as spanning**-1 where few paths do
        return _with_errors(rng, count, lambda described: 0.02 / _axis(described, "axis_spanning"))[:3]

    described, values, truth = draw(4000)
    model = uncertainty.fit(described, truth, values, [0, 1, 2], interactions=False)
    spanning_weight = model["weights"][uncertainty.FEATURES.index(
        "log fraction of the conducting phase joining the faces normal to the axis")]
    assert spanning_weight == pytest.approx(-1.0, abs=0.1)   # the floor of 1e-3 flattens it a little
    described, values, truth = draw(4000)          # fresh volumes
    stated = uncertainty.evaluate(model, described, values, [0, 1, 2])
    calibrated = metrics.calibration_metrics(truth, values, stated)
    assert calibrated["coverage_90"] == pytest.approx(0.9, abs=0.02)
    assert calibrated["spearman_error_uncertainty"] > 0.4
    # the stated deviation is the error's: on the few-path values about 0.02 / spanning of the value
    few = np.array([[d["axis_spanning"][a] < 0.1 for a in range(3)] for d in described])
    open_ = np.array([[d["axis_spanning"][a] > 0.9 for a in range(3)] for d in described])
    ratio = np.median((stated / values)[few]) / np.median((stated / values)[open_])
    assert 5.0 < ratio < 20.0
    assert uncertainty.fit(described[:5], truth[:5], values[:5], [0, 1, 2]) is None   # too few to fit


def test_the_corrected_models_error_model_ranks_by_the_known_errors_and_holds_on_the_held_out_ones():
    from conductivity_tf import uncertainty

    rng = np.random.default_rng(2)

    def draw(count):
        described = _described(rng, count)
        network = rng.uniform(0.05, 0.5, (count, 3))
        values = network * rng.uniform(0.8, 1.25, network.shape)          # the correction's factors
        spanning = np.array([d["axis_spanning"] for d in described])
        # corrected as predict corrects: relative errors 0.02 / spanning; as a correction that never saw the
        # family would: the same values off by a further 10 % (one standard deviation)
        truth = values * (1.0 + rng.normal(0.0, 1.0, values.shape) * 0.02 / spanning)
        held_out = values * np.exp(rng.normal(0.0, 0.1, values.shape))
        return described, network, values, truth, held_out

    described, network, values, truth, held_out = draw(3000)
    model = uncertainty.fit(described, truth, values, [0, 1, 2], network=network, held_out=held_out,
                            interactions=False)
    assert model["features"] == uncertainty.CORRECTED_FEATURES and model["fitted_values"] == 9000
    spanning_weight = model["weights"][uncertainty.FEATURES.index(
        "log fraction of the conducting phase joining the faces normal to the axis")]
    assert spanning_weight == pytest.approx(-1.0, abs=0.1)   # the weights are the known errors'
    # the scale is the held-out values': larger than the known values' own
    assert model["scale"] > 1.5 * uncertainty.fit(described, truth, values, [0, 1, 2], network=network,
                                                  interactions=False)["scale"]
    described, network, values, truth, held_out = draw(3000)          # fresh volumes
    stated = uncertainty.evaluate(model, described, values, [0, 1, 2], network=network)
    # its scale holds 90 % of the held-out values ...
    on_held_out = uncertainty.evaluate(model, described, held_out, [0, 1, 2], network=network)
    assert metrics.calibration_metrics(truth, held_out, on_held_out)["coverage_90"] == pytest.approx(0.9, abs=0.03)
    # ... so more of the known ones, whose errors it ranks as the errors go
    known = metrics.calibration_metrics(truth, values, stated)
    assert known["coverage_90"] > 0.95 and known["spearman_error_uncertainty"] > 0.4
    few = np.array([[d["axis_spanning"][a] < 0.1 for a in range(3)] for d in described])
    open_ = np.array([[d["axis_spanning"][a] > 0.9 for a in range(3)] for d in described])
    assert np.median((stated / values)[few]) > 3 * np.median((stated / values)[open_])
    with pytest.raises(ValueError, match="network's own values"):
        uncertainty.evaluate(model, described, values, [0, 1, 2])
    assert uncertainty.fit(described[:5], truth[:5], values[:5], [0, 1, 2], network=network[:5],
                           held_out=held_out[:5]) is None                 # too few to fit


def test_the_error_model_with_interactions_ranks_errors_that_grow_with_two_features_together():
    from conductivity_tf import uncertainty

    rng = np.random.default_rng(3)

    def draw(count):
        # errors large where few paths join the faces of a low porosity and where many join those of a high one,
        # small on the other two corners: neither feature alone says which
        return _with_errors(rng, count, lambda described: 0.02 * np.exp(
            2.0 * np.log(_axis(described, "axis_spanning") / 0.3) * np.log(_axis(described, "porosity") / 0.4)))

    described, values, truth, _ = draw(3000)
    plain = uncertainty.fit(described, truth, values, [0, 1, 2], interactions=False)
    both = uncertainty.fit(described, truth, values, [0, 1, 2])
    assert "ranges" not in plain and len(plain["weights"]) == len(uncertainty.FEATURES)
    assert len(both["weights"]) == len(uncertainty.FEATURES) + 8 * 9 // 2    # and the products of the other eight
    described, values, truth, relative = draw(3000)     # fresh volumes
    ranked = {name: metrics.calibration_metrics(truth, values, uncertainty.evaluate(
        model, described, values, [0, 1, 2]))["spearman_error_uncertainty"] for name, model in
        [("plain", plain), ("both", both)]}
    assert ranked["both"] > ranked["plain"] + 0.08
    for model, least, most in [(plain, 0.0, 0.7), (both, 0.95, 1.0)]:     # the stated deviation against the known
        stated = uncertainty.evaluate(model, described, values, [0, 1, 2]) / values
        assert least < np.corrcoef(np.log(stated.ravel()), np.log(relative.ravel()))[0, 1] < most
    # it keeps its linear form fitted alike, and states the larger of the two on the volumes outside the domain
    assert both["plain"] == {"weights": plain["weights"], "scale": plain["scale"]}
    flagged = np.arange(len(described)) % 3 == 0
    hedged = uncertainty.evaluate(both, described, values, [0, 1, 2], outside=flagged)
    products = uncertainty.evaluate(both, described, values, [0, 1, 2])
    linear = uncertainty.evaluate(plain, described, values, [0, 1, 2])
    np.testing.assert_array_equal(hedged[~flagged], products[~flagged])
    np.testing.assert_array_equal(hedged[flagged], np.maximum(products, linear)[flagged])
    assert np.any(linear[flagged] > products[flagged]) and np.any(linear[flagged] < products[flagged])
    # a volume far outside every fitted range states no more than the largest fitted log error allows
    far = [dict(d, porosity=1e-3, axis_spanning=[1e-3] * 3, anisotropy=1e3) for d in described[:10]]
    ceiling = both["scale"] * np.exp(both["log_range"][1])
    assert np.all(uncertainty.evaluate(both, far, values[:10], [0, 1, 2]) / values[:10] <= ceiling * (1 + 1e-9))
    assert uncertainty.fit(described[:100], truth[:100], values[:100], [0, 1, 2])["weights"] == pytest.approx(
        plain["weights"], abs=10.0) and "ranges" not in uncertainty.fit(      # too few values per product: plain
        described[:100], truth[:100], values[:100], [0, 1, 2])


def test_calibrate_refits_a_runs_trust_files_from_its_dataset(ensemble_run, tmp_path):
    import shutil

    from conductivity_tf import uncertainty

    run = str(tmp_path / "run")
    shutil.copytree(ensemble_run, run)
    for name in (domain.DOMAIN_FILE, uncertainty.UNCERTAINTY_FILE):
        (tmp_path / "run" / name).unlink()
    proc = run_module("conductivity_tf.evaluate", "--model", run, "--data", ensemble_run.replace("/run", "/data"),
                      "--precision", "fp32", "--calibrate")
    assert proc.returncode == 0, proc.stderr
    assert "the stated ~90 % interval holds" in proc.stdout
    # the same fit as training's (its Keras model there, the exported one here: equal to rounding)
    assert domain.load(run) == domain.load(ensemble_run)
    refit, trained = uncertainty.load(run), uncertainty.load(ensemble_run)
    assert refit["features"] == trained["features"]
    np.testing.assert_allclose(refit["weights"] + [refit["scale"]], trained["weights"] + [trained["scale"]],
                               rtol=1e-3, atol=1e-3)


def test_calibration_data_adds_validation_splits_to_the_error_model_not_to_the_domain(ensemble_run, tmp_path):
    import shutil

    from conductivity_tf import dataset, uncertainty
    from conductivity_tf.predict import Predictor

    (tmp_path / "spec.yaml").write_text(UNSEEN_SPEC)
    other = tmp_path / "spheroids"
    proc = run_module("conductivity_tf.dataset", "build", "--config", tmp_path / "spec.yaml", "--out", other,
                      "--quiet")
    assert proc.returncode == 0, proc.stderr
    run, data = str(tmp_path / "run"), ensemble_run.replace("/run", "/data")
    shutil.copytree(ensemble_run, run)
    proc = run_module("conductivity_tf.evaluate", "--model", run, "--data", data, "--precision", "fp32",
                      "--calibrate", "--calibration-data", other)
    assert proc.returncode == 0, proc.stderr
    assert domain.load(run) == domain.load(ensemble_run)      # the training domain stays the training data's
    refit = uncertainty.load(run)
    assert refit["validation_splits_of"] == ["data", "spheroids"]
    # the least squares over both validation splits together, as fitted here from the same predictions
    predictor = Predictor(run, "fp32")
    parts = [dataset.load_arrays(path, "validation") for path in (data, other)]
    runs = [predictor._run(volumes) for volumes, _, _, _ in parts]
    expected = uncertainty.fit(domain.describe_many(np.concatenate([p[0] for p in parts])),
                               np.concatenate([p[1] for p in parts]), np.concatenate([r[0] for r in runs]),
                               [0, 1, 2], np.concatenate([r[1] for r in runs]))
    np.testing.assert_allclose(refit["weights"] + [refit["scale"]], expected["weights"] + [expected["scale"]],
                               rtol=1e-9)
    alone = uncertainty.load(ensemble_run)
    assert refit["fitted_values"] > alone["fitted_values"]
    assert not np.allclose(refit["weights"], alone["weights"], rtol=0.05)
    from conductivity_tf import evaluate
    from conductivity_tf.errors import UserError

    with pytest.raises(UserError, match="add --calibrate"):   # the CLI's one line and exit 2 (errors.run_cli)
        evaluate.main(["--model", run, "--data", data, "--calibration-data", str(other)])


def test_domain_descriptors_of_known_structures():
    channels = np.zeros((24, 24, 24), np.uint8)
    channels[:, ::4, ::4] = 1                     # straight channels along axis 0
    described = domain.describe(channels)
    assert described["porosity"] == pytest.approx(1 / 16)
    assert described["conducting_chord"] == pytest.approx((24 + 1 + 1) / 3)  # 24 along axis 0, 1 across
    assert described["anisotropy"] == pytest.approx(24.0)
    assert described["spanning"] == 0.0         # no path along axes 1 and 2
    assert described["axis_chords"] == [24.0, 1.0, 1.0] and described["axis_spanning"] == [1.0, 0.0, 0.0]
    blobs = domain.describe(microstructure.blobs(32, porosity=0.5, correlation_length=2, seed=1))
    box = {name: [0.5 * blobs[name], 2.0 * blobs[name] + 1e-9] for name in domain.DESCRIPTORS}
    assert domain.outside(blobs, box) == []
    reasons = domain.outside(described, box)
    assert any(r.startswith("porosity") for r in reasons) and any(r.startswith("anisotropy") for r in reasons)


def _reference_description(volume):
    """Chords from numpy's run counting and spanning fractions from scipy's cluster labels, for comparison."""
    import scipy.ndimage

    phase = np.asarray(volume) > 0
    labels, count = scipy.ndimage.label(phase)
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    chords, spanning = [], []
    for axis in range(3):
        padded = np.moveaxis(np.pad(np.moveaxis(phase, axis, 0), ((1, 0), (0, 0), (0, 0))), 0, axis)
        starts = np.count_nonzero(np.diff(padded.astype(np.int8), axis=axis) == 1)
        chords.append(phase.sum() / starts if starts else 0.0)
        both = np.intersect1d(np.take(labels, 0, axis=axis), np.take(labels, -1, axis=axis))
        both = both[both > 0]
        spanning.append(sizes[both].sum() / phase.sum() if phase.any() else 0.0)
    return chords, spanning


def test_descriptors_equal_scipy_cluster_labels_and_numpy_run_counts_in_batches():
    rng = np.random.default_rng(3)
    # rows of 8-64 voxels (a multiple of 8) take the bit-packed path, the others the byte loop
    shapes = [(1, 1, 1), (1, 5, 7), (9, 1, 4), (7, 6, 1), (13, 17, 11), (1, 1, 8), (6, 7, 16), (5, 4, 64), (4, 3, 72)]
    volumes = [(rng.random(shape) < p).astype(np.uint8) for shape in shapes for p in (0.0, 0.2, 0.35, 0.6, 1.0)]
    volumes.append(microstructure.blobs(24, porosity=0.3, correlation_length=2, seed=4))
    for volume in volumes:
        described = domain.describe(volume)
        chords, spanning = _reference_description(volume)
        np.testing.assert_allclose(described["axis_chords"], chords, rtol=1e-12)
        np.testing.assert_allclose(described["axis_spanning"], spanning, rtol=1e-12)
        # the insulating phase's chords are the conducting chords of the complement
        complement = _reference_description(1 - volume)[0]
        insulating = [c for c in complement if c] or [float(volume.shape[0])]
        assert described["insulating_chord"] == pytest.approx(np.mean(insulating), rel=1e-12)
        assert described["porosity"] == pytest.approx(volume.mean(), rel=1e-12)
    batch = np.stack([microstructure.blobs(16, porosity=p, correlation_length=2, seed=9) for p in (0.15, 0.3, 0.6)])
    assert domain.describe_many(batch, chunk=2) == [domain.describe(v) for v in batch]
    assert [d["axis_spanning"][0] > 0 for d in domain.describe_many(batch)] == [
        physics.percolating_axes(v > 0)[0] for v in batch]


def test_an_ensemble_model_predicts_its_members_and_folds_like_one_network():
    from conductivity_tf import config
    from conductivity_tf.keras_compat import keras, set_random_seed, tf
    from conductivity_tf.model import build_model, inference_copy, members_summary

    cfg = config.load_config(overrides=["model.widths=[4,8,8]", "model.head_units=8", "model.ensemble=3",
                                        "model.branch_level=1"])
    set_random_seed(0)
    model = build_model(cfg.model, 16, 3)
    assert model.output_shape == (None, 3, 3)
    rng = np.random.default_rng(0)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            channels = layer.get_weights()[0].shape[0]
            layer.set_weights([rng.uniform(0.5, 2.0, channels), rng.normal(0, 0.5, channels),
                               rng.normal(0, 0.5, channels), rng.uniform(1e-3, 0.05, channels)])
    volumes = (rng.random((5, 16, 16, 16, 1)) < 0.5).astype("float32")
    members = model(volumes, training=False).numpy()
    np.testing.assert_allclose(inference_copy(model, cfg.model)(volumes, training=False).numpy(), members,
                               rtol=1e-4, atol=1e-6)
    mean, spread = members_summary(np, members)
    assert np.any(spread > 1e-4) and np.all(mean <= volumes.reshape(5, -1).mean(1)[:, None] + 1e-6)
    tf_mean, tf_spread = members_summary(tf, tf.constant(members))
    np.testing.assert_allclose(tf_mean.numpy(), mean, rtol=1e-6)
    np.testing.assert_allclose(tf_spread.numpy(), spread, rtol=1e-4, atol=1e-7)


def test_tiles_of_a_three_phase_volume_each_phase_conducting_measure_the_model(ensemble_run, tmp_path, monkeypatch):
    import types
    import zipfile

    from conductivity_tf import real_structures, volumes
    from conductivity_tf.predict import Predictor

    phases = microstructure.electrode(32, porosity=0.4, binder=0.12, radius=3, seed=8, return_phases=True) * 85
    volumes.save_volume(str(tmp_path / "e.tif"), phases)
    with zipfile.ZipFile(tmp_path / "e.tif.zip", "w") as archive:
        archive.write(tmp_path / "e.tif", "e.tif")
    groups = real_structures.phase_tiles(str(tmp_path / "e.tif.zip"), 16, workers=1)
    assert [(g.phase, len(g.tiles)) for g in groups] == [(0, 8), (85, 8), (170, 8)]
    tile = (phases[16:, :16, 16:] == 85).astype(np.uint8)          # the sixth tile in C order, phase 85
    np.testing.assert_array_equal(groups[1].tiles[5], tile)
    assert list(groups[1].labels[5]) == [r.relative_conductivity for r in physics.solve(tile)]
    # a clock that advances one second per solve in this process and not otherwise: the speed-up's reference
    # must be the solver timed where the model is (a reference timed elsewhere would not advance it)
    clock, solve = [0.0], physics.solve

    def counted_solve(*args, **kwargs):
        clock[0] += 1.0
        return solve(*args, **kwargs)

    monkeypatch.setattr(physics, "solve", counted_solve)
    monkeypatch.setattr(real_structures, "time", types.SimpleNamespace(perf_counter=lambda: clock[0]))
    table, curve = real_structures.measure(Predictor(ensemble_run, precision="fp32"), groups,
                                           max_errors=(1e9, 1e-9))
    assert [row["phase"] for row in table] == [0, 85, 170, "all"] and "coverage_90" in table[-1]
    assert all(row["solver_seconds"] == 1.0 for row in table[:-1])
    assert curve[1]["solved_fraction"] == 1.0 and curve[1]["mape"] == 0.0
    # solving everything costs one solve per tile with a path (none without: those are exact zeros)
    tiles = np.concatenate([g.labels for g in groups])
    assert curve[1]["speedup"] == pytest.approx(len(tiles) / np.sum(tiles.max(axis=1) > 0))
    assert curve[0]["solved_fraction"] < 1.0 and curve[0]["mape"] > 0.0


def test_tile_errors_are_over_the_percolating_values_r2_included():
    from conductivity_tf.real_structures import percolating_errors

    truth = np.array([[0.3, 0.0, 0.1], [0.2, 0.25, 0.0]])
    predicted = np.array([[0.33, 0.15, 0.1], [0.18, 0.25, 0.1]])
    errors = percolating_errors(truth, predicted)
    # percolating: 0.3, 0.1, 0.2, 0.25 (mean 0.2125) predicted 0.33, 0.1, 0.18, 0.25
    assert errors["values"] == 4
    assert errors["mape"] == pytest.approx((10.0 + 0.0 + 10.0 + 0.0) / 4)
    assert errors["median_ape"] == pytest.approx(5.0)
    squares = 0.03 ** 2 + 0.02 ** 2
    spread = 0.0875 ** 2 + 0.1125 ** 2 + 0.0125 ** 2 + 0.0375 ** 2
    assert errors["r2"] == pytest.approx(1.0 - squares / spread)
    # over all six values (zeros and the errors on them included) it would be another number
    everything = 1.0 - ((predicted - truth) ** 2).sum() / ((truth - truth.mean()) ** 2).sum()
    assert everything < errors["r2"] - 0.3
    assert percolating_errors(np.zeros((2, 3)), predicted) == {"values": 0, "mape": None, "median_ape": None,
                                                               "r2": None}


def test_the_keras_weights_rebuild_of_an_ensemble_states_the_same_uncertainty(ensemble_run):
    import os

    from conductivity_tf.keras_compat import tf
    from conductivity_tf.predict import Predictor
    from conductivity_tf.serving import keras_signatures

    volumes = _family("blobs", correlation_length=1.8)[:4]
    rebuilt = keras_signatures(os.path.join(ensemble_run, "config.yaml"),
                               os.path.join(ensemble_run, "model.weights.h5")).signatures["serving_default"](
        volume=tf.constant(volumes[..., None].astype(np.float32)))
    values, served = Predictor(ensemble_run, precision="fp32")._run(volumes)   # the SavedModel's own outputs
    np.testing.assert_allclose(rebuilt["relative_conductivity"].numpy(), values, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(rebuilt["uncertainty"].numpy(), served, rtol=1e-4, atol=1e-7)


def _coarse_tortuosity_reference(volume, axis):
    """The twofold-coarsened volume's geodesic tortuosity by scipy's shortest paths on its 6-connected graph."""
    import scipy.sparse
    import scipy.sparse.csgraph

    padded = np.pad(volume > 0, [(0, s % 2) for s in volume.shape])
    coarse = padded.reshape(padded.shape[0] // 2, 2, padded.shape[1] // 2, 2, padded.shape[2] // 2, 2).any(
        axis=(1, 3, 5))
    index = np.arange(coarse.size).reshape(coarse.shape)
    rows, cols = [], []
    for a in range(3):
        both = np.logical_and(np.take(coarse, range(coarse.shape[a] - 1), axis=a),
                              np.take(coarse, range(1, coarse.shape[a]), axis=a))
        rows.append(np.take(index, range(coarse.shape[a] - 1), axis=a)[both])
        cols.append(np.take(index, range(1, coarse.shape[a]), axis=a)[both])
    rows, cols = np.concatenate(rows), np.concatenate(cols)
    graph = scipy.sparse.coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(coarse.size,) * 2).tocsr()
    near = np.take(index, 0, axis=axis)[np.take(coarse, 0, axis=axis)]
    far = np.take(index, -1, axis=axis)[np.take(coarse, -1, axis=axis)]
    if not len(near) or not len(far):
        return 0.0
    lengths = scipy.sparse.csgraph.shortest_path(graph, directed=False, unweighted=True, indices=near).min(axis=0)
    reached = lengths[far][np.isfinite(lengths[far])]
    return float(reached.mean() / (coarse.shape[axis] - 1)) if len(reached) else 0.0


def test_series_bound_and_tortuosity_of_known_paths_and_against_scipy():
    # one path two voxels wide: 16 voxels along axis 0, 20 along axis 1, then on along axis 0 to the far face
    path = np.zeros((32, 32, 32), np.uint8)
    path[:16, 0:2, 0:2] = 1
    path[14:16, 0:22, 0:2] = 1
    path[14:, 20:22, 0:2] = 1
    path[:, 26:, 26:] = 1                     # and a straight bar 6 x 6 along axis 0, apart from it
    described = domain.describe(path)
    # coarse cells of 2^3: 7 along axis 0, 10 along axis 1, 8 along axis 0 = 25 steps to the path's far cell, 15
    # to each of the bar's nine; over the 15 of a straight path
    assert described["axis_tortuosity"][0] == pytest.approx((25 + 9 * 15) / 10 / 15)
    assert described["axis_tortuosity"][1] == 0.0 == described["axis_series"][1]      # no path along axis 1
    # slices normal to axis 0 hold the bar (36 voxels) and 4 of the path, 44 where the path turns (x = 14, 15)
    filled = np.full(32, 40.0)
    filled[14:16] = 36 + 44
    assert described["axis_series"][0] == pytest.approx(32 / np.sum(32 * 32 / filled))
    straight = domain.describe(np.pad(np.ones((24, 6, 6), np.uint8), ((0, 0), (0, 18), (0, 18))))
    assert straight["axis_tortuosity"][0] == 1.0 and straight["axis_series"][0] == pytest.approx(36 / 576)
    rng = np.random.default_rng(7)
    volumes = [microstructure.blobs(24, porosity=p, correlation_length=1.5, seed=s)
               for s, p in enumerate((0.3, 0.45, 0.7))] + [(rng.random((9, 13, 16)) < 0.5).astype(np.uint8)]
    # a whole level of the search at a time on rows of bits (up to 64 coarse voxels a row), and the queue's search
    # beyond (the last two: 65 coarse voxels along axis 0, then along axis 2)
    volumes += [microstructure.blobs(48, porosity=0.35, correlation_length=2, seed=3),
                microstructure.fibres(48, porosity=0.6, radius=1.5, seed=4)[:, :46, :47],
                (rng.random((130, 12, 14)) < 0.6).astype(np.uint8), (rng.random((12, 14, 129)) < 0.6).astype(np.uint8)]
    for volume in volumes:
        described = domain.describe(volume)
        for axis in range(3):
            assert described["axis_tortuosity"][axis] == pytest.approx(
                _coarse_tortuosity_reference(volume, axis), rel=1e-12)



def _renormalised_reference(volume, levels=None):
    """Real-space renormalisation of a 0/1 volume with sides a power of two, in numpy: per axis, each 2x2x2 block
    takes the mean of its layers in series (each layer's cells in parallel) and its columns in parallel (each
    column's cells in series), ``levels`` times (the cells (3, ...)) or until one cell is left (its (3,))."""
    cells = np.repeat(np.asarray(volume, float)[None], 3, axis=0)
    for _ in range(levels or int(np.log2(cells.shape[1]))):
        coarser = []
        for a in range(3):
            f = np.moveaxis(cells[a], a, 0)
            n = f.shape[0] // 2
            blocks = f.reshape(n, 2, n, 2, n, 2)
            p, q = blocks[:, 0], blocks[:, 1]             # the two layers along the axis: (n, n, 2, n, 2)
            with np.errstate(invalid="ignore", divide="ignore"):
                low = np.where((p > 0) & (q > 0), 2 * p * q / (p + q), 0.0).mean(axis=(2, 4))
                first, second = p.mean(axis=(2, 4)), q.mean(axis=(2, 4))
                high = np.where((first > 0) & (second > 0), 2 * first * second / (first + second), 0.0)
            coarser.append(np.moveaxis(0.5 * (low + high), 0, a))
        cells = np.stack(coarser)
    return cells if levels else cells[:, 0, 0, 0]


def test_renormalised_conductivity_of_straight_paths_and_against_a_reference():
    channel = np.zeros((16, 16, 16), np.uint8)
    channel[:, 5, 9] = 1                      # one straight line of voxels along axis 0: exact, 1 / 256
    assert domain.describe(channel)["axis_renormalised"] == pytest.approx([1 / 256, 0.0, 0.0], abs=1e-15)
    stripes = np.zeros((32, 32, 32), np.uint8)
    stripes[:, :, np.arange(32) % 6 < 3] = 1    # slabs 3 voxels thick, across the blocks: exact, their fraction
    renormalised = domain.describe(stripes)["axis_renormalised"]
    assert renormalised[:2] == pytest.approx([17 / 32, 17 / 32], rel=1e-12) and renormalised[2] == 0.0
    assert domain.describe(np.ones((7, 9, 5), np.uint8))["axis_renormalised"] == pytest.approx([1.0] * 3)
    rng = np.random.default_rng(3)
    volumes = [microstructure.blobs(32, porosity=p, correlation_length=1.5, seed=s)
               for s, p in enumerate((0.25, 0.5))] + [(rng.random((16, 16, 16)) < 0.6).astype(np.uint8)]
    described = domain.describe_many(np.stack(volumes[:2]))
    for volume, batch in zip(volumes, described + [None]):
        single = domain.describe(volume)["axis_renormalised"]
        assert single == pytest.approx(_renormalised_reference(volume), rel=1e-12)
        if batch is not None:
            assert batch["axis_renormalised"] == single


def test_the_renormalised_field_of_a_level_and_of_a_volume_read_slab_by_slab():
    from conductivity_tf import volumes
    from conductivity_tf import whole_volume as W

    volume = microstructure.blobs(32, porosity=0.4, correlation_length=1.5, seed=5)
    for levels in (1, 2, 3):
        assert coarse.renormalised_field(volume, levels) == pytest.approx(_renormalised_reference(volume, levels),
                                                                          rel=1e-12)
    odd = microstructure.blobs(70, porosity=0.4, correlation_length=2, seed=6)[:, :66, :61]
    field = coarse.renormalised_field(odd, W.DETOUR_LEVELS)
    assert field.shape == (3, 18, 17, 16)        # a last block of 2, 2 and 1 voxels along the three axes
    slabs = W.renormalised_volume(volumes.VolumeSource.of(odd), window=16)     # 16, 16, 16, 16 and 6 slices
    assert np.array_equal(slabs, field)

def _paths_described(rng, count):
    """Descriptions with the paths' descriptors (as ``domain.describe`` gives them) of ``count`` made-up volumes."""
    described = _described(rng, count)
    for d in described:
        d["axis_series"] = list(rng.uniform(0.05, 0.9) * np.array(d["axis_spanning"]))
        d["axis_tortuosity"] = list(rng.uniform(1.0, 2.5, 3))
        d["axis_renormalised"] = list(rng.uniform(0.3, 1.0) * np.array(d["axis_series"]))
        d["axis_faces"] = list(rng.uniform(0.9, 1.5) * np.array(d["axis_renormalised"]))
        d["axis_capped_kept"] = list(rng.uniform(0.2, 1.0, 3))
        d["axis_capped"] = list(rng.uniform(0.5, 1.0) * np.array(d["axis_faces"]))
        d["spanning"] = min(d["axis_spanning"])
    return described


def test_the_correction_learns_the_sign_of_a_models_error_from_the_paths():
    from conductivity_tf import correction

    rng = np.random.default_rng(4)

    def draw(count):
        # a model that overestimates winding paths: its value is the truth times tortuosity^1.5 (and 3 % noise)
        described = _paths_described(rng, count)
        truth = rng.uniform(0.02, 0.6, (count, 3))
        tortuosity = np.array([d["axis_tortuosity"] for d in described])
        return described, truth, truth * tortuosity ** 1.5 * np.exp(rng.normal(0, 0.03, (count, 3)))

    described, truth, values = draw(3000)
    model = correction.fit(described, truth, values, [0, 1, 2], members=2, epochs=20)
    described, truth, values = draw(1000)                           # fresh volumes
    corrected = correction.apply(model, described, values, [0, 1, 2])
    before = np.mean(np.abs(values - truth) / truth)
    after = np.mean(np.abs(corrected - truth) / truth)
    assert before > 0.4 and after < 0.1, (before, after)
    # one axis at a time gives the same (the rows of a volume's axes are its axes')
    np.testing.assert_allclose(correction.apply(model, described, values[:, [1]], [1])[:, 0], corrected[:, 1],
                               rtol=1e-12)
    assert correction.apply(None, described, values, [0, 1, 2]) is values
    # half the members blind to the capped junctions: their factors do not move when those do, the others' do
    assert model["member_features"] == [correction.MEMBER_INPUTS[0]] * 2 + [correction.FEATURES] * 2
    blind = dict(model, members=model["members"][:2], member_features=model["member_features"][:2])
    moved = [dict(d, axis_capped=list(0.5 * np.array(d["axis_capped"]))) for d in described]
    np.testing.assert_array_equal(correction.factor(blind, moved, values, [0, 1, 2]),
                                  correction.factor(blind, described, values, [0, 1, 2]))
    assert not np.allclose(correction.factor(model, moved, values, [0, 1, 2]), corrected / values, rtol=1e-3)
    # descriptions without the capped junctions: the blind members alone (a run whose members are all blind does
    # not solve them)
    assert correction.reads_capped(model) and not correction.reads_capped(blind) and not correction.reads_capped(None)
    without = [{k: v for k, v in d.items() if k not in ("axis_capped", "axis_capped_kept")} for d in described]
    np.testing.assert_array_equal(correction.factor(model, without, values, [0, 1, 2]),
                                  correction.factor(blind, described, values, [0, 1, 2]))
    # a correction fitted before the capped junctions (every member reading its 14 features) predicts as it did
    width = len(correction.MEMBER_INPUTS[0])
    legacy = {"features": correction.MEMBER_INPUTS[0], "mean": model["mean"][:width], "scale": model["scale"][:width],
              "members": blind["members"]}
    assert correction.FEATURES[:width] == legacy["features"] and not correction.reads_capped(legacy)
    np.testing.assert_array_equal(correction.factor(legacy, without, values, [0, 1, 2]),
                                  correction.factor(blind, described, values, [0, 1, 2]))
    assert correction.fit(described[:10], truth[:10], values[:10], [0, 1, 2]) is None   # too few to fit
    again = [correction.fit(described, truth, values, [0, 1, 2], members=1, epochs=1) for _ in range(2)]
    assert again[0] == again[1]                                      # seeded: the same fit twice


def test_calibrate_with_correction_keeps_it_and_predict_applies_it(ensemble_run, tmp_path):
    import shutil

    from conductivity_tf import correction, dataset, uncertainty
    from conductivity_tf.predict import Predictor

    (tmp_path / "spec.yaml").write_text(UNSEEN_SPEC.replace("samples: 96", "samples: 160"))
    other, learnt = tmp_path / "spheroids", tmp_path / "flakes"
    proc = run_module("conductivity_tf.dataset", "build", "--config", tmp_path / "spec.yaml", "--out", other,
                      "--quiet")
    assert proc.returncode == 0, proc.stderr
    # a dataset the correction is fitted on but not the error model
    proc = run_module("conductivity_tf.dataset", "build", "--config", tmp_path / "spec.yaml", "--out", learnt,
                      "--quiet", "samples=64", "seed=12", "families.spheroids.params.aspect=[0.1,0.2]")
    assert proc.returncode == 0, proc.stderr
    run, data = str(tmp_path / "run"), ensemble_run.replace("/run", "/data")
    shutil.copytree(ensemble_run, run)
    # a correction fitted on an input this version no longer computes: predict says how to refit it, calibrate does
    stale = {"features": correction.FEATURES[:-1] + ["log conductivity of the 4^3-voxel cells solved along the axis"]}
    (tmp_path / "run" / correction.CORRECTION_FILE).write_text(json.dumps(stale))
    np.save(tmp_path / "cube.npy", _family("blobs", correlation_length=1.8)[0])
    assert_one_line_error(run_module("conductivity_tf.predict", "--model", run, tmp_path / "cube.npy"),
                          "no longer computes", "cells solved", "--calibrate --correction")
    proc = run_module("conductivity_tf.evaluate", "--model", run, "--data", data, "--precision", "fp32",
                      "--calibrate", "--correction", "--calibration-data", other, "--correction-data", learnt)
    assert proc.returncode == 0, proc.stderr
    fitted = correction.load(run)
    assert fitted["train_splits_of"] == ["data", "spheroids", "flakes"] and fitted["features"] == correction.FEATURES
    # the domain is that of every train split the network or its correction was fitted on
    every = np.concatenate([dataset.load_arrays(path, "train")[0] for path in (data, str(other), str(learnt))])
    assert domain.load(run) == domain.training_domain(domain.describe_many(every)) != domain.load(ensemble_run)
    assert uncertainty.load(run)["validation_splits_of"] == ["data", "spheroids"]      # not the flakes'
    assert uncertainty.load(run)["fitted_values"] == sum(
        int((dataset.load_arrays(str(path), "validation")[1] > 1e-6).sum()) for path in (data, other))
    # predict states the network's values times the correction's factors, and the ensemble's spread with them
    predictor = Predictor(run, "fp32")
    volumes = np.concatenate([_family("blobs", correlation_length=1.8)[:3], _family("spheroids", radius=1.0,
                                                                                      aspect=0.2, spread=5.0)[:3]])
    raw, _ = predictor._run(volumes)
    factors = correction.factor(fitted, domain.describe_many(volumes), raw, [0, 1, 2])
    assert not np.allclose(factors, 1.0, rtol=1e-3)
    corrected = np.where(domain.without_path(domain.describe_many(volumes)), 0.0, raw * factors)  # exact zeros
    np.testing.assert_allclose(predictor.predict(volumes).values, corrected, rtol=1e-6)
    np.testing.assert_allclose(predictor(volumes), corrected, rtol=1e-6)
    # calibrated again without --correction, the run predicts the network's values again
    proc = run_module("conductivity_tf.evaluate", "--model", run, "--data", data, "--precision", "fp32",
                      "--calibrate")
    assert proc.returncode == 0, proc.stderr
    assert correction.load(run) is None
    np.testing.assert_allclose(Predictor(run, "fp32").predict(volumes).values, np.where(corrected == 0, 0.0, raw),
                               rtol=1e-6)


def _faces_reference(x, axis, w=4):
    """sigma_eff/sigma_0 along ``axis`` of the cells of w^3 voxels joined through their faces, by a sparse direct
    solve: the conductance between neighbouring cells is the conducting fraction of the voxel pairs across their
    face, a face cell's to the electrode twice the conducting fraction of its outer voxel layer."""
    import scipy.sparse
    import scipy.sparse.linalg

    x = np.moveaxis(np.asarray(x, bool), axis, 0)
    m = [-(-n // w) for n in x.shape]
    cell = np.arange(int(np.prod(m))).reshape(m)[np.ix_(*[np.arange(n) // w for n in x.shape])]
    size = cell.max() + 1
    laplacian = scipy.sparse.csr_matrix((size, size))
    for b in range(3):
        last = (np.arange(x.shape[b] - 1) % w == w - 1)              # voxels on a cell's last layer with a next one
        here = np.compress(last, np.take(x, np.arange(x.shape[b] - 1), b), b)
        there = np.compress(last, np.take(x, np.arange(1, x.shape[b]), b), b)
        a = np.compress(last, np.take(cell, np.arange(x.shape[b] - 1), b), b).ravel()
        c = np.compress(last, np.take(cell, np.arange(1, x.shape[b]), b), b).ravel()
        pairs = scipy.sparse.coo_matrix(((here & there).ravel().astype(float), (a, c)), (size, size)).tocsr()
        area = scipy.sparse.coo_matrix((np.ones(a.size), (a, c)), (size, size)).tocsr()
        g = pairs.multiply(area.power(-1.0)) if area.nnz else area
        g = g + g.T
        laplacian = laplacian + scipy.sparse.diags(np.asarray(g.sum(axis=1)).ravel()) - g
    ends = []
    for layer in (0, x.shape[0] - 1):
        conducting = np.bincount(cell[layer].ravel(), x[layer].ravel().astype(float), size)
        face = np.bincount(cell[layer].ravel(), None, size)
        ends.append(2 * np.divide(conducting, face, out=np.zeros(size), where=face > 0))
    system = laplacian + scipy.sparse.diags(ends[0] + ends[1] + 1e-12)
    potential = scipy.sparse.linalg.spsolve(system.tocsc(), ends[0])
    return float(np.sum(ends[0] * (1 - potential)) * m[0] / (m[1] * m[2]))


def test_the_cells_faces_counted_on_words_of_eight_voxels_give_the_voxel_loops_problem():
    # the packed count (rows as words of eight voxels) and the voxel loop give the same conductances, bit for bit,
    # for cells of 4^3 voxels (two a word) and of 8^3 (one a word; the whole-volume detours' coarse proxy)
    for shape, seed, w in (((64, 64, 64), 3, 4), ((32, 40, 48), 4, 4), ((8, 12, 16), 5, 4), ((64, 64, 64), 3, 8),
                           ((16, 40, 24), 6, 8)):
        volume = np.ascontiguousarray(microstructure.blobs(shape, porosity=0.3, correlation_length=1.5, seed=seed))
        packed, looped = faces._face_links(volume, True, w), faces._face_links(volume, False, w)
        assert packed[2] == looped[2]
        for a, b in zip(packed[:2], looped[:2]):
            assert a.dtype == b.dtype == np.float32 and np.array_equal(a, b) and a.max() > 0
    # sides that are not whole words of cells: counted on words of the volume padded with insulating voxels, the
    # last cells' smaller faces and the outer layers counted apart (and for cells of 4 the layer of cells the words'
    # padding adds along the last axis, 20 -> 24 and 36 -> 40, left out); the voxel loop's problem, bit for bit
    for shape, seed, w in (((21, 30, 45), 7, 8), ((13, 17, 19), 8, 8), ((12, 18, 22), 9, 4), ((12, 18, 20), 10, 4),
                           ((9, 12, 36), 11, 4)):
        volume = np.ascontiguousarray(microstructure.blobs(shape, porosity=0.3, correlation_length=1.5, seed=seed))
        g, ends, m = faces._face_links(volume, False, w)
        n, lo = m[0] * m[1] * m[2], m[1] * m[2]
        e = ends[:, :, lo:lo + n].reshape((3, 2) + tuple(m))
        padded = faces._padded_links(volume, w)
        assert np.array_equal(padded[0], g[:, lo:lo + n].reshape((3,) + tuple(m)))
        for a in range(3):
            for side, layer in ((0, 0), (1, m[a] - 1)):
                expected = np.take(e[a, side], layer, axis=a)
                assert padded[1][a][side].dtype == np.float32 and np.array_equal(padded[1][a][side], expected)


def test_the_cells_joined_through_their_faces_solve_a_volume_of_whole_cells_as_the_solver_does_its_voxels():
    # a volume of whole 4^3 cells is, cell for cell, the solver's problem on the mask of its cells: pairs across a
    # face between two full cells all conduct (conductance 1), between a full and an empty one none, and a face
    # cell is half a cell from the electrode
    rng = np.random.default_rng(5)
    for porosity in (0.45, 0.7):
        mask = (rng.random((12, 10, 14)) < porosity).astype(np.uint8)
        cells = np.kron(mask, np.ones((4, 4, 4), np.uint8))
        faces = domain.describe(cells)["axis_faces"]
        assert faces == pytest.approx([r.relative_conductivity for r in physics.solve(mask)], rel=0.015, abs=1e-6)
        assert domain.describe_many(cells[None])[0]["axis_faces"] == faces
    # a wall one voxel thick, inside the cells, conducts along itself: its pairs across the faces carry it
    wall = np.zeros((32, 32, 32), np.uint8)
    wall[:, 13, :] = 1
    described = domain.describe(wall)
    exact = [r.relative_conductivity for r in physics.solve(wall)]
    assert described["axis_faces"][0] == pytest.approx(exact[0], rel=0.02) and exact[0] == pytest.approx(1 / 32)
    assert domain.describe(np.ones((7, 9, 5), np.uint8))["axis_faces"] == pytest.approx([1.0] * 3, rel=0.01)
    assert domain.describe(np.zeros((8, 8, 8), np.uint8))["axis_faces"] == [0.0, 0.0, 0.0]
    # blobs with thin necks, a cube and an odd-sided volume (smaller cells at its far sides)
    for shape, seed in (((32, 32, 32), 1), ((34, 29, 31), 2)):
        volume = microstructure.blobs(shape, porosity=0.35, correlation_length=1.5, seed=seed)
        expected = [_faces_reference(volume, a) for a in range(3)]
        assert domain.describe(volume)["axis_faces"] == pytest.approx(expected, rel=0.02)


def test_the_capped_junctions_see_a_break_inside_the_cells_that_the_faces_pairs_do_not():
    # an insulating plane inside a layer of cells: every pair across the cells' faces conducts, so the faces' problem
    # conducts across it; the renormalised cells holding the plane do not, so their junctions are capped to zero
    volume = np.ones((32, 32, 32), np.uint8)
    volume[9] = 0
    exact = [r.relative_conductivity for r in physics.solve(volume)]
    described = domain.describe(volume)
    assert exact[0] == 0.0 and described["axis_faces"][0] > 0.5 and abs(described["axis_capped"][0]) < 1e-6
    assert described["axis_capped_kept"][0] == pytest.approx(1 - 2 / 7)   # 2 of the 7 junctions along the axis
    # along the plane no junction is capped, and both give the solver's 31/32
    assert described["axis_capped_kept"][1:] == [1.0, 1.0] and exact[1] == pytest.approx(31 / 32)
    for key in ("axis_capped", "axis_faces"):
        assert described[key][1:] == pytest.approx(exact[1:], rel=0.02)
    whole = domain.describe(np.ones((16, 16, 16), np.uint8))
    assert whole["axis_capped"] == pytest.approx([1.0] * 3, rel=0.01) and whole["axis_capped_kept"] == [1.0] * 3
    # capping only lowers conductances, so it never raises the value (to the solves' tolerance)
    for seed in range(4):
        volume = microstructure.blobs((32, 32, 32), porosity=0.3 + 0.1 * seed, correlation_length=1.5, seed=seed)
        d = domain.describe(volume)
        assert all(c <= f * (1 + 2 * faces.CELL_TOLERANCE) + 1e-7 for c, f in zip(d["axis_capped"], d["axis_faces"]))
        assert all(0.0 < k < 1.0 for k in d["axis_capped_kept"]) and d["axis_capped"] != d["axis_faces"]
        # without them, the same descriptions less the two
        blind = domain.describe_many(volume[None], capped=False)[0]
        assert blind == {k: v for k, v in d.items() if k not in ("axis_capped", "axis_capped_kept")}
