"""Training end to end on a small dataset: the run directory, exports, several workers, Keras 3."""

import json
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import yaml

from conductivity_tf import microstructure
from tests.conftest import ROOT, assert_one_line_error, build_dataset, run_module

TINY = ["model.widths=[4,8]", "model.head_units=8", "data.size=16", "train.batch_size=8", "train.epochs=2",
        "train.tensorboard=false"]


@pytest.fixture(scope="module")
def data16(tmp_path_factory):
    return build_dataset(tmp_path_factory.mktemp("data") / "d16", samples=160, size=16, seed=1)


@pytest.fixture(scope="module")
def run_dir(data16, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "r"
    proc = run_module("conductivity_tf.train", "data.path={}".format(data16), *TINY, "--out", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return str(out)


def test_the_run_directory_holds_every_output(run_dir):
    for name in ("config.yaml", "metrics.json", "parity.png", "training_log.csv", "model.weights.h5",
                 "saved_model/saved_model.pb", "checkpoints/best.weights.h5", "checkpoints/last.weights.h5"):
        assert os.path.exists(os.path.join(run_dir, name)), name
    with open(os.path.join(run_dir, "config.yaml")) as handle:
        assert yaml.safe_load(handle)["model"]["widths"] == [4, 8]
    metrics = json.load(open(os.path.join(run_dir, "metrics.json")))
    for part in ("test", "bruggeman"):
        assert set(metrics[part]) >= {"r2", "mae", "rmse", "mape_percolating"}
    assert 1.0 < metrics["bruggeman"]["exponent"] < 5.0
    with open(os.path.join(run_dir, "parity.png"), "rb") as handle:
        assert handle.read(8) == b"\x89PNG\r\n\x1a\n"
    log = open(os.path.join(run_dir, "training_log.csv")).read().splitlines()
    assert len(log) == 3 and "val_loss" in log[0]


def test_saved_model_loads_in_a_fresh_process_with_only_tensorflow(run_dir, data16, tmp_path):
    from conductivity_tf import dataset

    volumes = np.stack([s["volume"] for s in dataset.iterate(data16, "test", limit=4)]).astype("float32")
    np.save(tmp_path / "volumes.npy", volumes)
    code = textwrap.dedent('''
        import sys, numpy as np, tensorflow as tf
        assert "conductivity_tf" not in sys.modules
        module = tf.saved_model.load(sys.argv[1])
        out = module.signatures["serving_default"](volume=tf.constant(np.load(sys.argv[2])[..., None]))
        np.save(sys.argv[3], out["relative_conductivity"].numpy())
    ''')
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", code, os.path.join(run_dir, "saved_model"),
                           str(tmp_path / "volumes.npy"), str(tmp_path / "out.npy")],
                          cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    fresh = np.load(tmp_path / "out.npy")
    # the same volumes through the predict CLI, and through the Keras weights
    for i, v in enumerate(volumes):
        np.save(tmp_path / "v{}.npy".format(i), v.astype(np.uint8))
    by_precision = {}
    from conductivity_tf.keras_compat import cpu_bfloat16_convolutions

    bfloat16 = cpu_bfloat16_convolutions()  # TensorFlow 2.6 exports (and runs) float32 alone
    for precision in ("fp32", "bf16") if bfloat16 else ("fp32",):
        cli = run_module("conductivity_tf.predict", "--model", run_dir, "--json", "--precision", precision,
                         *[tmp_path / "v{}.npy".format(i) for i in range(4)])
        assert cli.returncode == 0, cli.stderr
        by_precision[precision] = np.array([json.loads(line)["relative_conductivity"]
                                            for line in cli.stdout.splitlines()])
    # predict states exact zeros where an axis has no conducting path (the run's domain and error model compute the
    # descriptors that say it), the SavedModel's values elsewhere
    from conductivity_tf import domain

    no_path = domain.without_path(domain.describe_many(volumes.astype(np.uint8)))
    assert np.all(fresh[no_path] > 0) and np.all(by_precision["fp32"][no_path] == 0.0)
    np.testing.assert_allclose(by_precision["fp32"], np.where(no_path, 0.0, fresh), rtol=1e-5, atol=1e-6)
    # the bfloat16 signature computes in bfloat16 (not bit-equal) and stays within its rounding of float32
    if bfloat16:
        assert np.any(by_precision["bf16"] != fresh)
        np.testing.assert_allclose(by_precision["bf16"], np.where(no_path, 0.0, fresh), atol=3e-3)
    # physics bound: 0 <= prediction <= porosity
    porosity = volumes.reshape(4, -1).mean(1)
    assert np.all(fresh >= 0) and np.all(fresh <= porosity[:, None] + 1e-6)


def test_evaluate_matches_the_training_metrics(run_dir, data16):
    from conductivity_tf import dataset, domain
    from conductivity_tf.metrics import regression_metrics
    from conductivity_tf.predict import Predictor

    proc = run_module("conductivity_tf.evaluate", "--model", run_dir, "--data", data16, "--json",
                      "--precision", "fp32")
    assert proc.returncode == 0, proc.stderr
    evaluated = json.loads(proc.stdout)["all"]
    trained = json.load(open(os.path.join(run_dir, "metrics.json")))["test"]
    # training's metrics are the network's alone; evaluate's are predict's output, the same values but exact zeros
    # along the axes without a conducting path
    volumes, sigma = dataset.load_arrays(data16, "test")[:2]
    network = Predictor(run_dir, "fp32")._run(volumes)[0]
    assert trained["rmse"] == pytest.approx(regression_metrics(sigma, network)["rmse"], rel=1e-5)
    stated = np.where(domain.without_path(domain.describe_many(volumes)), 0.0, network)
    assert evaluated["rmse"] == pytest.approx(regression_metrics(sigma, stated)["rmse"], rel=1e-5)


def test_predict_refuses_a_smaller_volume_and_takes_a_larger_one_whole(run_dir, tmp_path):
    np.save(tmp_path / "small.npy", np.ones((12, 20, 20), np.uint8))
    assert_one_line_error(run_module("conductivity_tf.predict", "--model", run_dir, tmp_path / "small.npy"),
                          "12x20x20", "16^3")
    np.save(tmp_path / "cube.npy", np.ones((16, 16, 16), np.uint8))
    np.save(tmp_path / "big.npy", np.ones((20, 20, 20), np.uint8))
    proc = run_module("conductivity_tf.predict", "--model", run_dir, tmp_path / "cube.npy", tmp_path / "big.npy",
                      "--json", "--precision", "fp32")
    assert proc.returncode == 0, proc.stderr
    cube, big = (json.loads(line) for line in proc.stdout.splitlines())
    # eight identical windows: cells of one conductivity per axis, so the whole is the window's value
    assert big["windows"] == 8 and big["cells"] == [2, 2, 2]
    assert big["relative_conductivity"] == pytest.approx(cube["relative_conductivity"], rel=1e-5)


def test_a_model_exported_without_bfloat16_runs_in_fp32_and_refuses_bf16(tmp_path):
    """SavedModels from before the bfloat16 signature: auto falls back to fp32, bf16 is one clear line."""
    from conductivity_tf.keras_compat import tf

    class Porosity(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 16, 16, 16, 1], tf.float32, name="volume")])
        def serve(self, volume):
            return {"relative_conductivity": tf.reduce_mean(volume, axis=[1, 2, 3]) * tf.ones([1, 3])}

    module = Porosity()
    tf.saved_model.save(module, str(tmp_path / "old"), signatures={"serving_default": module.serve})
    volume = (np.random.default_rng(0).random((16, 16, 16)) < 0.3).astype(np.uint8)
    np.save(tmp_path / "v.npy", volume)
    proc = run_module("conductivity_tf.predict", "--model", tmp_path / "old", "--json", tmp_path / "v.npy")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout)["relative_conductivity"] == pytest.approx([volume.mean()] * 3, rel=1e-6)
    assert_one_line_error(run_module("conductivity_tf.predict", "--model", tmp_path / "old", "--precision", "bf16",
                                     tmp_path / "v.npy"), "bfloat16", "--precision fp32")


def test_dataset_of_another_size_than_the_model(data16, tmp_path):
    proc = run_module("conductivity_tf.train", "data.path={}".format(data16), *TINY[:-4], "data.size=32",
                      "--out", tmp_path / "r")
    assert_one_line_error(proc, "16^3", "data.size=16")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_workers_on_loopback_end_with_identical_weights(data16, tmp_path):
    ports = [_free_port(), _free_port()]
    cluster = {"worker": ["127.0.0.1:{}".format(p) for p in ports]}
    procs = []
    for index in range(2):
        env = dict(os.environ, PYTHONPATH=ROOT,
                   TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}))
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "conductivity_tf.train", "data.path={}".format(data16)] + TINY +
            ["train.epochs=1", "--out", str(tmp_path / "w{}".format(index))],
            env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outputs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-3000:]
    assert "MultiWorkerMirroredStrategy, 2 replicas" in outputs[0][0]
    import h5py

    def layer_weights(path):   # the model's layers only (a training checkpoint also holds optimizer state)
        values = {}            # (tf-keras writes layers/..., Keras 2.6 one group per layer name)
        with h5py.File(path, "r") as f:
            f.visititems(lambda name, obj: values.__setitem__(name, obj[()])
                         if isinstance(obj, h5py.Dataset) and not name.startswith(("optimizer", "vars", "metrics"))
                         else None)
        return values

    a = layer_weights(tmp_path / "w0" / "checkpoints" / "last.weights.h5")    # the chief's weights after training
    b = layer_weights(tmp_path / "w1" / "worker-1" / "final.weights.h5")
    assert sorted(a) == sorted(b) and len(a) > 4
    for name in a:
        assert np.array_equal(a[name], b[name]), name


def _keras_3_installed():
    proc = subprocess.run([sys.executable, "-c", "import importlib.metadata as m; print(m.version('keras'))"],
                          capture_output=True, text=True)
    return proc.returncode == 0 and proc.stdout.startswith("3")


@pytest.mark.skipif(not _keras_3_installed(), reason="Keras 3 is not installed here (TensorFlow 2.6 has Keras 2.6)")
@pytest.mark.parametrize("heads,inputs", [("global", "volume"), ("slices,cells", "spanning")])
def test_model_builds_and_fits_under_keras_3(tmp_path, heads, inputs):
    code = textwrap.dedent('''
        import os, sys
        os.environ["TF_USE_LEGACY_KERAS"] = "0"
        import numpy as np, keras
        assert keras.__version__.startswith("3"), keras.__version__
        from conductivity_tf import config, model
        for head in sys.argv[1].split(","):
            cfg = config.load_config(overrides=["model.widths=[4,8]", "model.head_units=8", "model.norm=group",
                                                "model.groups=4", "data.size=16", "model.head=" + head,
                                                "model.inputs=" + sys.argv[2]])
            m = model.build_model(cfg.model, 16, 3, keras=keras)
            volumes = (np.random.default_rng(0).random((16, 16, 16, 16)) < 0.4).astype("uint8")
            x = model.network_input(volumes, sys.argv[2])
            y = np.random.default_rng(1).random((16, 3)).astype("float32") * 0.2
            m.compile(optimizer="adam", loss="mse")
            history = m.fit(x, y, epochs=2, batch_size=8, verbose=0)
            p = m.predict(x, verbose=0)
            eps = volumes.reshape(16, -1).mean(1)
            assert np.all(p >= 0) and np.all(p <= eps[:, None] + 1e-6), head
            assert np.isfinite(history.history["loss"]).all(), head
        print("keras", keras.__version__, "ok")
    ''')
    proc = subprocess.run([sys.executable, "-c", code, heads, inputs], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env=dict(os.environ, PYTHONPATH=ROOT, TF_USE_LEGACY_KERAS="0"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ok" in proc.stdout


def test_the_batch_norm_on_a_4d_view_trains_like_the_5d_one():
    """Outputs in training and inference, gradients and moving statistics equal to a plain 5-D batch norm's."""
    from conductivity_tf.keras_compat import keras, tf
    from conductivity_tf.model import _batch_norm

    layers = keras.layers
    inputs = keras.Input((6, 5, 4, 3))
    viewed = keras.Model(inputs, _batch_norm(keras, layers.Conv3D(4, 3, padding="same", name="c")(inputs), "n"))
    plain = keras.Model(inputs, layers.BatchNormalization(name="n")(layers.Conv3D(4, 3, padding="same",
                                                                                   name="c")(inputs)))
    rng = np.random.default_rng(0)
    for name in ("c", "n"):
        weights = [rng.normal(1.0, 0.5, w.shape).astype("float32") for w in viewed.get_layer(name).get_weights()]
        weights[-1] = np.abs(weights[-1])                              # the moving variance
        viewed.get_layer(name).set_weights(weights)
        plain.get_layer(name).set_weights(weights)
    x = tf.constant(rng.normal(0, 1, (5, 6, 5, 4, 3)).astype("float32"))
    target = tf.constant(rng.normal(0, 1, (5, 6, 5, 4, 4)).astype("float32"))
    results = []
    for model in (viewed, plain):
        with tf.GradientTape() as tape:
            out = model(x, training=True)
            loss = tf.reduce_mean(tf.square(out - target))
        grads = tape.gradient(loss, model.trainable_variables)
        results.append([out.numpy(), model(x, training=False).numpy()] + [g.numpy() for g in grads] +
                       [w for w in model.get_layer("n").get_weights()])
    assert np.ptp(results[1][0]) > 1.0
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_the_slices_head_puts_each_axis_slices_in_series():
    """Along each axis: one resistance per slice across it, the fraction 1 / (1 + mean resistance) of the porosity."""
    from conductivity_tf import config as C
    from conductivity_tf.keras_compat import keras, set_random_seed
    from conductivity_tf.model import build_model

    cfg = C.load_config(overrides=["model.widths=[4,8]", "model.head_units=8", "model.head=slices", "data.size=16"])
    set_random_seed(0)
    model = build_model(cfg.model, 16, 3)
    rng = np.random.default_rng(0)
    for axis in range(3):                                              # resistances far from 1
        layer = model.get_layer("axis{}_resistance".format(axis))
        kernel, bias = layer.get_weights()
        layer.set_weights([rng.normal(0, 1, kernel.shape).astype("float32"), bias + axis - 1.0])
    volumes = (rng.random((5, 16, 16, 16, 1)) < 0.5).astype("float32")
    names = ["axis{}_resistance".format(a) for a in range(3)]
    probe = keras.Model(model.input, [model.get_layer(n).output for n in names] + [model.output])
    *resistances, sigma = (t.numpy() for t in probe(volumes, training=False))
    porosity = volumes.reshape(5, -1).mean(1)
    for axis, r in enumerate(resistances):
        edge = [1, 1, 1]
        edge[axis] = 4                                                 # 16^3 -> 8^3 stem -> 4^3: 4 slices
        assert r.shape == (5, *edge, 1) and np.all(r > 0)
        np.testing.assert_allclose(sigma[:, axis], porosity / (1.0 + r.reshape(5, -1).mean(1)), rtol=1e-5)
    assert np.ptp(sigma[:, 0] / sigma[:, 2]) > 0 and np.all(sigma[:, 0] > sigma[:, 2])


@pytest.mark.parametrize("kernel, blind", [(4, 0), (3, 37)])
def test_a_stem_whose_kernel_spans_its_stride_sees_every_voxel(kernel, blind):
    """One conducting voxel at each position of a 4^3 block: with a stride-4 stem of kernel 4 each reaches the first
    convolution's output; of kernel 3 (which the configuration refuses) 37 of the 64 positions are never seen."""
    from conductivity_tf import config as C
    from conductivity_tf.keras_compat import keras
    from conductivity_tf.model import build_model

    cfg = C.load_config(overrides=["model.widths=[4,8]", "model.stem_stride=4", "model.stem_kernel=4",
                                   "data.size=16"])
    cfg.model.stem_kernel = kernel
    model = build_model(cfg.model, 16, 3)
    stem = model.get_layer("level0_conv0")
    stem.set_weights([np.ones_like(w) for w in stem.get_weights()])
    probe = keras.Model(model.input, stem.output)
    volumes = np.zeros((64, 16, 16, 16, 1), "float32")
    for n, (i, j, k) in enumerate(np.ndindex(4, 4, 4)):
        volumes[n, 4 + i, 4 + j, 4 + k] = 1.0
    seen = np.abs(probe(volumes, training=False).numpy()).reshape(64, -1).max(1) > 0
    assert probe.output_shape[1:4] == (4, 4, 4) and np.count_nonzero(~seen) == blind


def test_the_slices_head_drops_out_the_slice_features_when_asked():
    from conductivity_tf import config as C
    from conductivity_tf.keras_compat import keras, set_random_seed
    from conductivity_tf.model import build_model

    cfg = C.load_config(overrides=["model.widths=[4,8]", "model.head_units=8", "model.head=slices", "data.size=16",
                                   "model.dropout=0.5", "model.norm=none"])  # training differs by dropout alone
    set_random_seed(0)
    model = build_model(cfg.model, 16, 3)
    assert sorted(layer.name for layer in model.layers if isinstance(layer, keras.layers.Dropout)) == [
        "axis0_dropout", "axis1_dropout", "axis2_dropout"]
    volumes = (np.random.default_rng(0).random((4, 16, 16, 16, 1)) < 0.5).astype("float32")
    inference = model(volumes, training=False).numpy()
    np.testing.assert_array_equal(model(volumes, training=False).numpy(), inference)
    assert not np.allclose(model(volumes, training=True).numpy(), inference)


def test_the_cells_head_solves_its_grid_of_cells_like_the_solver():
    """model.head=cells: sigma = porosity x the solver's sigma_eff of the last level's grid of cell conductivities."""
    from conductivity_tf import cell_grid
    from conductivity_tf import config as C
    from conductivity_tf.keras_compat import keras, set_random_seed
    from conductivity_tf.model import CELL_FLOOR, build_model

    cfg = C.load_config(overrides=["model.widths=[4,8]", "model.head_units=8", "model.head=cells", "data.size=16"])
    set_random_seed(0)
    model = build_model(cfg.model, 16, 3)
    layer = model.get_layer("cell_conductivity")                      # cell conductivities spread over decades
    kernel, bias = layer.get_weights()
    layer.set_weights([np.random.default_rng(1).normal(0, 20, kernel.shape).astype("float32"), bias - 2.0])
    volumes = (np.random.default_rng(0).random((4, 16, 16, 16, 1)) < 0.5).astype("float32")
    probe = keras.Model(model.input, [model.get_layer("cell_floor").output, model.output])
    cells, sigma = (t.numpy() for t in probe(volumes, training=False))
    assert cells.shape == (4, 4, 4, 4, 3) and cells.min() >= CELL_FLOOR and np.log10(cells.max() / cells.min()) > 2
    porosity = volumes.reshape(4, -1).mean(1)
    expected = [cell_grid.solve_cells(c.astype(np.float64), tol=1e-10) for c in cells]
    np.testing.assert_allclose(sigma, porosity[:, None] * np.array(expected), rtol=2e-4)
    assert np.ptp(sigma / porosity[:, None]) > 0.05


def test_the_cell_network_layer_puts_layers_in_series_and_columns_in_parallel_with_the_solvers_gradient():
    from conductivity_tf import cell_grid
    from conductivity_tf.keras_compat import keras, tf
    from conductivity_tf.model import cell_network_layer

    layers = np.array([0.5, 0.01, 0.2])[:, None, None] * np.ones((3, 3, 3))   # varies along axis 0
    k = np.repeat(layers[..., None], 3, axis=-1)
    sigma = cell_network_layer(keras)(dtype="float32")(k[None].astype("float32")).numpy()[0]
    np.testing.assert_allclose(sigma, [3 / np.sum(1 / layers[:, 0, 0]), layers[:, 0, 0].mean(),
                                       layers[:, 0, 0].mean()], rtol=5e-5)   # series / parallel
    field = np.exp(np.random.default_rng(2).uniform(-4, 0, (3, 3, 3, 3)))
    x = tf.constant(field[None], tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(x)
        out = cell_network_layer(keras)(dtype="float32")(x)[0, 1]
    gradient = tape.gradient(out, x).numpy()[0]
    for cell in [(0, 1, 2, 1), (1, 1, 1, 0), (2, 0, 1, 1)]:           # central differences of the solver's answer
        step = np.zeros_like(field)
        step[cell] = 1e-4 * field[cell]
        diff = (cell_grid.solve_cells(field + step, axes=[1], tol=1e-12)[0] -
                cell_grid.solve_cells(field - step, axes=[1], tol=1e-12)[0]) / (2 * step[cell])
        np.testing.assert_allclose(gradient[cell], diff, rtol=2e-3, atol=1e-6)


def test_the_slices_head_needs_all_three_axes():
    from conductivity_tf import config as C
    from conductivity_tf.errors import UserError

    with pytest.raises(UserError, match="data.axes=\\[0,1,2\\]"):
        C.load_config(overrides=["model.head=slices", "data.axes=[1]"])


def test_folded_batch_norms_predict_what_the_trained_model_predicts():
    """The exported inference copy: each batch norm folded into its convolution, same predictions."""
    from conductivity_tf import config as C
    from conductivity_tf.keras_compat import keras, set_random_seed
    from conductivity_tf.model import build_model, inference_copy

    cfg = C.load_config(overrides=["model.widths=[4,8,8]", "model.head_units=8", "model.norm=batch"])
    set_random_seed(0)  # the same weights whichever tests ran before in this process
    model = build_model(cfg.model, 16, 3)
    rng = np.random.default_rng(0)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):       # statistics far from the initial ones
            channels = layer.get_weights()[0].shape[0]
            layer.set_weights([rng.uniform(0.5, 2.0, channels), rng.normal(0, 0.5, channels),
                               rng.normal(0, 0.5, channels), rng.uniform(1e-3, 0.05, channels)])
    folded = inference_copy(model, cfg.model)
    assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in folded.layers)
    volumes = (rng.random((6, 16, 16, 16, 1)) < 0.5).astype("float32")
    expected = model(volumes, training=False).numpy()
    np.testing.assert_allclose(folded(volumes, training=False).numpy(), expected, rtol=1e-4, atol=1e-6)
    assert np.ptp(expected) > 1e-3                                     # the predictions are not all alike
    from conductivity_tf.keras_compat import cpu_bfloat16_convolutions

    if not cpu_bfloat16_convolutions():
        pytest.skip("this TensorFlow has no bfloat16 CPU convolutions (TensorFlow 2.6)")
    # the bfloat16 copy: convolutions compute in bfloat16, the output stays float32 and near the model's
    half = inference_copy(model, cfg.model, policy="mixed_bfloat16")
    assert half.get_layer("level1_conv0").compute_dtype == "bfloat16"
    assert half.get_layer("relative_conductivity").compute_dtype == "float32"
    assert half(volumes, training=False).numpy().dtype == np.float32
    # (the random statistics saturate the sigmoid, so compare the features before it)
    head, half_head = (keras.Model(m.input, m.get_layer("head").output) for m in (model, half))
    features = head(volumes, training=False).numpy()
    rounded = half_head(volumes, training=False).numpy().astype(np.float32)
    assert np.any(rounded != features) and np.ptp(features) > 1.0
    np.testing.assert_allclose(rounded, features, atol=2e-2 * np.abs(features).max())
    assert keras.mixed_precision.global_policy().name == "float32"     # the global policy is left alone


def test_a_deterministic_run_ends_without_tensorflow_native_log_lines(data16, tmp_path):
    proc = run_module("conductivity_tf.train", "data.path={}".format(data16), *TINY, "train.epochs=1",
                      "train.deterministic=true", "--out", tmp_path / "det")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "NodeDef" not in proc.stderr, proc.stderr[-2000:]
    assert not [line for line in proc.stderr.splitlines() if line[:1] in "EWF" and line[1:5].isdigit()]


def test_a_network_that_sees_the_spanning_clusters_predicts_through_the_predictor_as_in_keras(tmp_path):
    from conductivity_tf import config, microstructure, serving
    from conductivity_tf.model import build_model, network_input
    from conductivity_tf.predict import Predictor

    cfg = config.load_config(overrides=TINY + ["model.inputs=spanning"])
    base = build_model(cfg.model, 16, 3)
    serving.export(base, str(tmp_path), cfg.model)
    config.save_config(cfg, tmp_path / "config.yaml")
    volumes = np.stack([microstructure.blobs(16, porosity=p, correlation_length=2.0, seed=i)
                        for i, p in enumerate((0.25, 0.35, 0.5))])
    channels = network_input(volumes, "spanning")
    assert channels.shape == (3, 16, 16, 16, 4) and (channels[..., 1:] < channels[..., :1]).any()  # dead ends
    expected = base.predict(channels, verbose=0)
    unlabelled = base.predict(np.repeat(channels[..., :1], 4, axis=-1), verbose=0)
    assert np.abs(unlabelled - expected).max() > 1e-5      # the clusters' channels count
    predictor = Predictor(str(tmp_path), precision="fp32")
    assert predictor.inputs == "spanning"
    np.testing.assert_allclose(predictor(volumes), expected, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(predictor(volumes.astype(np.float32)), expected, rtol=1e-4, atol=1e-6)


def test_the_first_convolutions_blocks_are_laid_out_as_its_kernel():
    from conductivity_tf import serving

    volumes = (np.random.default_rng(3).random((3, 16, 16, 16)) < 0.4).astype(np.uint8)
    for k in (2, 4, 8):
        blocks, ones = serving.stem_blocks(volumes, k)
        c = 16 // k
        expected = volumes.reshape(3, c, k, c, k, c, k).transpose(0, 1, 3, 5, 2, 4, 6).reshape(3, c, c, c, k ** 3)
        assert np.array_equal(blocks, expected)
        assert np.array_equal(ones, volumes.reshape(3, -1).sum(axis=1))


def test_the_blocks_signature_predicts_what_the_bfloat16_signature_predicts(run_dir, tmp_path):
    """A network whose first convolution reads each block of voxels once (kernel = stride) is exported with a
    signature fed those blocks; predict uses it in bfloat16 and states the bfloat16 signature's values to the bit.
    The fixture's run (kernel 3, stride 2) has none and predicts as before."""
    import shutil

    from conductivity_tf import config as config_lib
    from conductivity_tf import serving
    from conductivity_tf.keras_compat import cpu_bfloat16_convolutions
    from conductivity_tf.model import build_model
    from conductivity_tf.predict import Predictor
    from conductivity_tf.strategies import native_bfloat16

    if not cpu_bfloat16_convolutions():
        pytest.skip("this TensorFlow has no bfloat16 CPU convolutions (TensorFlow 2.6): no bfloat16 signatures")
    assert Predictor(run_dir, "bf16").serve_blocks is None
    blocks_run = str(tmp_path / "blocks")
    shutil.copytree(run_dir, blocks_run)
    with open(os.path.join(blocks_run, "config.yaml")) as handle:
        raw = yaml.safe_load(handle)
    raw["model"]["stem_kernel"] = raw["model"]["stem_stride"] = 2
    with open(os.path.join(blocks_run, "config.yaml"), "w") as handle:
        yaml.safe_dump(raw, handle)
    cfg = config_lib.load_config(os.path.join(blocks_run, "config.yaml"))
    base = build_model(cfg.model, cfg.data.size, len(cfg.data.axes))
    rng = np.random.default_rng(1)
    norms = [layer for layer in base.layers if "_norm" in layer.name and len(layer.get_weights()) == 4]
    assert len(norms) == len(cfg.model.widths)
    for layer in norms:   # batch norms far from the identity, so that their folding is exercised
        gamma, beta, mean, var = layer.get_weights()
        layer.set_weights([rng.uniform(0.5, 2, gamma.shape), rng.normal(0, 0.3, beta.shape),
                           rng.normal(0, 0.3, mean.shape), rng.uniform(0.5, 2, var.shape)])
    base.save_weights(os.path.join(blocks_run, "model.weights.h5"))
    serving.reexport(blocks_run)
    predictor = Predictor(blocks_run, "bf16")
    assert predictor.serve_blocks is not None and predictor.stem == 2
    volumes = np.stack([microstructure.generate(family, 16, seed=40 + i) for i, family in
                        enumerate(("blobs", "fibres", "overlapping_spheres", "graded"))]).astype(np.uint8)
    fed_blocks = predictor._run(volumes)[0]
    predictor.serve_blocks = None
    fed_volumes = predictor._run(volumes)[0]
    assert fed_volumes.std() > 0
    if native_bfloat16():   # oneDNN's bfloat16 kernels: the same arithmetic, the same bits
        assert np.array_equal(fed_blocks, fed_volumes)
    else:                   # TensorFlow's fallback kernels round the product and the convolution apart
        np.testing.assert_allclose(fed_blocks, fed_volumes, rtol=5e-3)
