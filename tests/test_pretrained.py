"""The pretrained model shipped in the package: found without --model, right on new structures, JSON output."""

import json
import os

import numpy as np
import pytest

from conductivity_tf import microstructure, physics
from tests.conftest import run_module


def test_predict_without_model_uses_the_pretrained_model_and_agrees_with_the_solver(tmp_path):
    volumes = [microstructure.generate("blobs", 64, seed=900, porosity=0.5, correlation_length=3.0),
               microstructure.generate("fibres", 64, seed=901, porosity=0.75, radius=2.0, axis=1, spread=20.0),
               microstructure.generate("packed_spheres", 64, seed=902, porosity=0.8, radius=4.0)]
    paths = []
    for i, volume in enumerate(volumes):
        paths.append(tmp_path / "v{}.npy".format(i))
        np.save(paths[-1], volume)
    proc = run_module("conductivity_tf.predict", *paths, "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [line["file"] for line in lines] == [str(p) for p in paths]
    for line, volume in zip(lines, volumes):
        assert set(line) == {"file", "relative_conductivity", "porosity", "seconds", "uncertainty", "interval_90",
                             "source", "outside_training_domain"}
        # the shipped model is one network: its uncertainty is its error model's (uncertainty.json), a few per cent
        # of the value on these open structures of its training families, which lie inside its training domain
        assert line["source"] == ["model"] * 3 and line["outside_training_domain"] == []
        for value, deviation, (low, high) in zip(line["relative_conductivity"], line["uncertainty"],
                                                 line["interval_90"]):
            assert 0.0 < deviation < 0.1 * value and low < value < high
        assert abs(line["porosity"] - volume.mean()) < 1e-6
        solver = [r.relative_conductivity for r in physics.solve(volume)]
        predicted = line["relative_conductivity"]
        assert len(predicted) == 3
        # within [0, porosity] by construction, and close to the solver on every axis
        assert all(0.0 <= p <= line["porosity"] + 1e-6 for p in predicted)
        assert np.max(np.abs(np.array(predicted) - solver)) < 0.04, (predicted, solver)


def test_percolating_axes_agrees_with_the_solver():
    for seed, porosity in enumerate((0.12, 0.16, 0.2, 0.25)):
        volume = microstructure.blobs(32, porosity=porosity, correlation_length=2.0, seed=seed)
        spans = physics.percolating_axes(volume > 0)
        assert spans == {r.axis: r.percolates for r in physics.solve(volume)}


def test_axes_without_a_path_are_exact_zeros_and_other_axes_are_left_alone(tmp_path):
    from conductivity_tf.predict import Predictor

    volume = microstructure.generate("blobs", 64, seed=903, porosity=0.5, correlation_length=3.0)
    volume[30:32] = 0                                   # an insulating slab across axis 0
    assert [r.percolates for r in physics.solve(volume)] == [False, True, True]
    np.save(tmp_path / "slab.npy", volume)
    outputs = []
    for flags in ((), ("--zero-without-path",)):
        proc = run_module("conductivity_tf.predict", tmp_path / "slab.npy", "--json", *flags)
        assert proc.returncode == 0, proc.stderr[-2000:]
        outputs.append(json.loads(proc.stdout))
    plain, flagged = outputs
    # the pretrained model computes the descriptors anyway (its error model and domain): the zero is exact without
    # the flag, with no uncertainty, where the network alone states a positive value
    network = Predictor()._run(volume[None])[0][0]
    assert network[0] > 0.0
    assert plain["relative_conductivity"][0] == 0.0 and plain["uncertainty"][0] == 0.0
    assert plain["interval_90"][0] == [0.0, 0.0] and plain["source"] == ["solver", "model", "model"]
    assert min(plain["relative_conductivity"][1:]) > 0.05 and min(plain["uncertainty"][1:]) > 0.0
    assert flagged["relative_conductivity"] == plain["relative_conductivity"]


def test_byte_volumes_give_the_predictions_of_float_volumes():
    # uint8 and bool volumes go into the graph as bytes and are converted there
    from conductivity_tf.predict import Predictor

    volumes = np.stack([microstructure.generate("blobs", 64, seed=910 + i, porosity=0.3 + 0.2 * i,
                                                correlation_length=3.0) for i in range(3)])
    predictor = Predictor()
    as_float = predictor(volumes.astype(np.float32), batch_size=2)
    np.testing.assert_array_equal(predictor(volumes.astype(np.uint8), batch_size=2), as_float)
    np.testing.assert_array_equal(predictor(volumes.astype(bool), batch_size=2), as_float)
    assert as_float.shape == (3, 3) and np.all(np.diff(as_float.mean(axis=1)) > 0)   # denser conducts better


def test_bfloat16_is_the_default_where_the_cpu_has_it_and_agrees_with_fp32():
    from conductivity_tf.predict import PRETRAINED, Predictor
    from conductivity_tf.strategies import native_bfloat16

    volumes = np.stack([microstructure.generate(family, 64, seed=920 + i) for i, family in
                        enumerate(("blobs", "fibres", "overlapping_spheres", "graded", "packed_spheres"))])
    assert Predictor().precision == ("bf16" if native_bfloat16() else "fp32")     # no GPU in these tests
    from conductivity_tf.keras_compat import cpu_bfloat16_convolutions

    if not cpu_bfloat16_convolutions():
        pytest.skip("this TensorFlow has no bfloat16 CPU convolutions (TensorFlow 2.6): fp32 only")
    fp32 = Predictor(precision="fp32")(volumes)
    in_bf16 = Predictor(precision="bf16")
    assert in_bf16.serve_blocks is not None   # the shipped network is fed its first convolution's blocks ...
    bf16 = in_bf16(volumes)
    in_bf16.serve_blocks = None
    if native_bfloat16():   # ... and predicts what its bfloat16 signature does, to the bit with oneDNN's kernels
        assert np.array_equal(in_bf16(volumes), bf16)
    else:                   # (TensorFlow's fallback kernels round the product and the convolution apart)
        np.testing.assert_allclose(in_bf16(volumes), bf16, rtol=5e-3)
    assert np.any(bf16 != fp32)
    if native_bfloat16():  # oneDNN's bfloat16 kernels, which accumulate in float32
        np.testing.assert_allclose(bf16, fp32, atol=2e-3)
    else:  # asked for where the CPU lacks it: TensorFlow's fallback kernels, still well inside the model's error
        with open(os.path.join(PRETRAINED, "metrics.json")) as handle:
            rmse = json.load(handle)["test"]["rmse"]
        np.testing.assert_allclose(bf16, fp32, atol=0.5 * rmse)


def test_the_keras_weights_rebuild_predicts_what_the_saved_model_predicts():
    """Where the shipped SavedModel cannot load (TensorFlow 2.6: ops it does not know), predict rebuilds the
    network from the run's config.yaml and Keras weights; that copy computes the SavedModel's function."""
    import os

    from conductivity_tf.keras_compat import tf
    from conductivity_tf.predict import PRETRAINED, Predictor
    from conductivity_tf.serving import keras_signatures

    volumes = np.stack([microstructure.generate(family, 64, seed=930 + i) for i, family in
                        enumerate(("blobs", "fibres", "packed_spheres"))]).astype(np.float32)
    module = keras_signatures(os.path.join(PRETRAINED, "config.yaml"), os.path.join(PRETRAINED, "model.weights.h5"))
    rebuilt = module.signatures["serving_default"](volume=tf.constant(volumes[..., None]))["relative_conductivity"]
    predictor = Predictor(precision="fp32")
    if predictor.note is None:  # the SavedModel loaded: the two networks must agree (before the correction)
        np.testing.assert_allclose(rebuilt.numpy(), predictor._run(volumes)[0], rtol=1e-5, atol=1e-6)
    else:
        assert "Keras weights" in predictor.note and tf.__version__ in predictor.note
        np.testing.assert_array_equal(rebuilt.numpy(), predictor._run(volumes)[0])
    assert np.ptp(rebuilt.numpy()) > 0.05


def test_masks_saved_as_0_255_or_0_65535_read_as_the_binary_volume(tmp_path):
    """A segmented mask as image tools save it (white conducts) gives what its 0/1 volume gives: predict on a cube
    and on a whole volume, the solver without --sigma; with --sigma its labels are the phases, as before."""
    import tifffile

    cube = microstructure.generate("blobs", 64, seed=910, porosity=0.45, correlation_length=3.0)
    whole = microstructure.generate("blobs", 80, seed=911, porosity=0.45, correlation_length=3.0)[:, :72]
    np.save(tmp_path / "cube.npy", cube)
    tifffile.imwrite(tmp_path / "cube255.tif", cube * np.uint8(255))
    np.save(tmp_path / "cube65535.npy", cube.astype(np.uint16) * np.uint16(65535))
    np.save(tmp_path / "whole.npy", whole)
    tifffile.imwrite(tmp_path / "whole255.tif", whole * np.uint8(255))
    names = ["cube.npy", "cube255.tif", "cube65535.npy", "whole.npy", "whole255.tif"]
    proc = run_module("conductivity_tf.predict", *[tmp_path / n for n in names], "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [os.path.basename(line["file"]) for line in lines] == names
    for first, others in ((lines[0], lines[1:3]), (lines[3], lines[4:])):
        assert 0.05 < min(first["relative_conductivity"]) and first["porosity"] > 0.4
        for line in others:
            assert line["porosity"] == first["porosity"]
            for key in ("relative_conductivity", "uncertainty"):      # to rounding: each its place in the batch
                assert line[key] == pytest.approx(first[key], rel=1e-6), (line["file"], key)
    proc = run_module("conductivity_tf.physics", tmp_path / "cube.npy", tmp_path / "cube255.tif", "--axis", "all",
                      "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    binary, mask = (json.loads(line) for line in proc.stdout.splitlines())
    assert mask["relative_conductivity"] == binary["relative_conductivity"]
    assert binary["relative_conductivity"] == pytest.approx(
        [r.relative_conductivity for r in physics.solve(cube)], rel=1e-9)
    proc = run_module("conductivity_tf.physics", tmp_path / "cube255.tif", "--sigma", "0=0", "--sigma", "255=1",
                      "--axis", "all", "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout)["relative_conductivity"] == pytest.approx(binary["relative_conductivity"],
                                                                            rel=1e-6)


def test_the_python_api_reads_a_0_255_mask_as_binary_and_refuses_other_labels():
    """Fed as they were, a 0/255 cube's 255s made the network state sigma_eff/sigma_0 above 4."""
    from conductivity_tf.errors import UserError
    from conductivity_tf.predict import Predictor

    cube = microstructure.generate("blobs", 64, seed=912, porosity=0.45, correlation_length=3.0)[None]
    predictor = Predictor(precision="fp32")
    binary = predictor.predict(cube)
    for mask in (cube * np.uint8(255), cube.astype(np.uint16) * np.uint16(65535)):
        np.testing.assert_allclose(predictor.predict(mask).values, binary.values, rtol=1e-6)
        np.testing.assert_allclose(predictor(mask), predictor(cube), rtol=1e-6)
    assert 0.05 < binary.values.min() and binary.values.max() < cube.mean()     # below the porosity
    for labels in (cube * np.uint8(3), cube.astype(np.float32) * 255.5):
        with pytest.raises(UserError, match="not binary"):
            predictor.predict(labels)
        with pytest.raises(UserError, match="not binary"):
            predictor(labels)
