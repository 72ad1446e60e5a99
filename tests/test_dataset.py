"""Datasets: identical bytes however the build is split or interrupted; damage is named; readers are right."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conductivity_tf import dataset as D
from conductivity_tf import physics
from conductivity_tf.errors import UserError
from tests.conftest import ROOT, assert_one_line_error, run_module

SMALL = ["--samples", "48", "--size", "16", "--seed", "3", "--quiet", "shard_size=8"]


def checksums(path):
    return {name: D.sha256(os.path.join(path, name)) for name in sorted(os.listdir(path))
            if name.endswith(D.SUFFIX) or name == "manifest.json"}


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    out = tmp_path_factory.mktemp("small") / "ds"
    proc = run_module("conductivity_tf.dataset", "build", "--out", out, "--workers", "1", *SMALL)
    assert proc.returncode == 0, proc.stderr
    return str(out)


def test_workers_and_shard_jobs_write_identical_bytes(small, tmp_path):
    two = tmp_path / "two"
    assert run_module("conductivity_tf.dataset", "build", "--out", two, "--workers", "2", *SMALL).returncode == 0
    jobs = tmp_path / "jobs"
    for i in range(3):
        proc = run_module("conductivity_tf.dataset", "build", "--out", jobs, "--workers", "1", "--shard",
                          "{}/3".format(i), *SMALL)
        assert proc.returncode == 0, proc.stderr
        assert not (jobs / "manifest.json").exists()
    assert run_module("conductivity_tf.dataset", "merge", jobs).returncode == 0
    reference = checksums(small)
    assert len(reference) > 4
    assert checksums(two) == reference
    assert checksums(jobs) == reference


def test_merge_refuses_while_jobs_are_missing(tmp_path):
    jobs = tmp_path / "jobs"
    run_module("conductivity_tf.dataset", "build", "--out", jobs, "--shard", "0/2", *SMALL)
    assert_one_line_error(run_module("conductivity_tf.dataset", "merge", jobs), "missing or incomplete")


def test_killed_build_resumes_to_identical_bytes(tmp_path):
    args = ["--samples", "96", "--size", "20", "--seed", "9", "--quiet", "shard_size=8"]
    reference = tmp_path / "reference"
    assert run_module("conductivity_tf.dataset", "build", "--out", reference, "--workers", "2", *args).returncode == 0
    for attempt, wait_for in enumerate((1, 5)):   # killed after the first shard, then later on
        out = tmp_path / "killed{}".format(attempt)
        env = dict(os.environ, PYTHONPATH=ROOT)
        proc = subprocess.Popen([sys.executable, "-m", "conductivity_tf.dataset", "build", "--out", str(out),
                                 "--workers", "2"] + args, env=env, start_new_session=True)
        deadline = time.time() + 120
        while time.time() < deadline and len(list(out.glob("*.json"))) < wait_for + 1:   # + build-spec.json
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        assert not (out / "manifest.json").exists()
        assert run_module("conductivity_tf.dataset", "build", "--out", out, "--workers", "1", *args).returncode == 0
        assert checksums(out) == checksums(reference)
        assert not list(out.glob(".*.tmp"))


def test_a_different_specification_is_not_mixed_in(small):
    proc = run_module("conductivity_tf.dataset", "build", "--out", small, "--samples", "40", "--size", "16",
                      "--seed", "3", "--quiet", "shard_size=8")
    assert_one_line_error(proc, "different specification")


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_damaged_shards_are_named_by_verify_and_readers(small, tmp_path, damage):
    copy = tmp_path / "copy"
    shutil.copytree(small, copy)
    victim = copy / "train-00001.tfrecord.gz"
    data = bytearray(victim.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0xFF
    else:
        data = data[: len(data) * 2 // 3]
    victim.write_bytes(bytes(data))
    proc = run_module("conductivity_tf.dataset", "verify", copy)
    assert proc.returncode == 1 and "train-00001.tfrecord.gz" in proc.stdout
    with pytest.raises(UserError, match="train-00001.tfrecord.gz"):
        list(D.iterate(str(copy), "train"))
    with pytest.raises(UserError, match="train-00001.tfrecord.gz"):
        D.make_dataset(str(copy), "train", batch_size=4)
    # the record reader alone (no manifest) also names the file
    with pytest.raises(UserError, match="train-00001.tfrecord.gz"):
        list(D.read_records(str(victim)))


def test_manifest_of_another_schema_is_refused(small, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(small, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["schema_version"] = 99
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UserError, match="schema version 99"):
        D.load_manifest(str(copy))
    assert_one_line_error(run_module("conductivity_tf.dataset", "info", copy), "schema version 99")


def test_numpy_iterator_gives_labels_the_solver_reproduces(small):
    manifest = D.load_manifest(small)
    samples = list(D.iterate(small, "test"))
    assert len(samples) == manifest["counts"]["test"] > 0
    for sample in samples[:3]:
        assert sample["volume"].shape == (16, 16, 16) and sample["volume"].dtype == np.uint8
        assert sample["porosity"] == pytest.approx(sample["volume"].mean())
        again = [r.relative_conductivity for r in physics.solve(sample["volume"])]
        np.testing.assert_allclose(sample["relative_conductivity"], again, rtol=1e-6, atol=1e-7)
    assert sum(manifest["counts"].values()) == 48
    assert "tensorflow" not in sys.modules or True   # iterate itself never imports it (checked in test_static)


def _physics_labels(volume):
    return np.array([r.relative_conductivity for r in physics.solve(volume)], np.float32)


@pytest.mark.parametrize("axes", [(0, 1, 2), (1,)])
def test_tf_dataset_static_shapes_and_physical_augmentation(small, axes):
    import tensorflow as tf

    tf.random.set_seed(1)
    ds = D.make_dataset(small, "train", batch_size=5, axes=axes, augment=True, shuffle=True, seed=1)
    assert ds.element_spec[0].shape.as_list() == [5, 16, 16, 16, 1]
    assert ds.element_spec[1].shape.as_list() == [5, len(axes)]
    batches = list(ds)
    assert len(batches) == D.load_manifest(small)["counts"]["train"] // 5
    volumes, labels = batches[0]
    for volume, label in zip(volumes.numpy()[:3], labels.numpy()[:3]):
        # the augmented volume, solved afresh, has the augmented labels
        solved = _physics_labels(volume[..., 0].astype(np.uint8))[list(axes)]
        np.testing.assert_allclose(label, solved, rtol=1e-5, atol=1e-6)


def test_spanning_inputs_are_the_clusters_of_each_augmented_volume(small):
    from conductivity_tf.physics import connected_to_both_faces

    ds = D.make_dataset(small, "train", batch_size=4, augment=True, shuffle=True, seed=2, inputs="spanning")
    assert ds.element_spec[0].shape.as_list() == [4, 16, 16, 16, 4]
    volumes, labels = next(iter(ds))
    for volume, label in zip(volumes.numpy(), labels.numpy()):
        # after the symmetry: the channels belong to the volume as the network sees it, and its labels
        spans = connected_to_both_faces(volume[..., 0] > 0.5)
        for axis in range(3):
            assert np.array_equal(volume[..., 1 + axis] > 0.5, spans[axis]), axis
            assert (label[axis] > 0) == bool(spans[axis].any()), axis
        np.testing.assert_allclose(label, _physics_labels(volume[..., 0].astype(np.uint8)), rtol=1e-5, atol=1e-6)


def test_a_cube_of_odd_edge_reads_as_it_was_written(tmp_path):
    out = tmp_path / "odd"                               # 9^3 = 729 voxels: the packed bits end inside a byte
    proc = run_module("conductivity_tf.dataset", "build", "--out", out, "--workers", "1", "--samples", "12",
                      "--size", "9", "--seed", "3", "--quiet", "shard_size=8")
    assert proc.returncode == 0, proc.stderr
    expected = sorted(s["volume"].tobytes() for s in D.iterate(str(out), "train"))   # the reader interleaves shards
    ds = D.make_dataset(str(out), "train", batch_size=1, augment=False, shuffle=False)
    assert ds.element_spec[0].shape.as_list() == [1, 9, 9, 9, 1]
    got = sorted(v.numpy()[0, ..., 0].astype(np.uint8).tobytes() for v, _ in ds)
    assert len(got) == len(expected) > 0 and got == expected
    assert len(set(got)) > 1


def test_allowed_permutations():
    assert len(D.allowed_permutations([0, 1, 2])) == 6
    assert D.allowed_permutations([1]) == [(0, 1, 2), (2, 1, 0)]


def test_input_pipelines_read_disjoint_shards(small):
    import tensorflow as tf

    def indices(ctx):
        ds = D.make_dataset(small, "train", batch_size=1, input_context=ctx)
        return sorted(float(v.numpy().sum()) + 1000 * float(s.numpy()[0, 0]) for v, s in ds)

    whole = indices(None)
    parts = [indices(tf.distribute.InputContext(2, i, 1)) for i in range(2)]
    assert sorted(parts[0] + parts[1]) == whole and parts[0] and parts[1]


def test_import_tiles_a_tomogram(tmp_path):
    from conductivity_tf import microstructure

    grey = microstructure.gaussian_field((40, 40, 24), 3.0, seed=4) * 50 + 100
    np.save(tmp_path / "scan.npy", grey.astype(np.float32))
    proc = run_module("conductivity_tf.dataset", "import", "--out", tmp_path / "imp", tmp_path / "scan.npy",
                      "--tile", "12", "--stride", "12", "--otsu", "--quiet")
    assert proc.returncode == 0, proc.stderr
    manifest = D.load_manifest(str(tmp_path / "imp"))
    assert manifest["samples"] == 3 * 3 * 2
    samples = [s for split in D.SPLITS for s in D.iterate(str(tmp_path / "imp"), split)]
    first = min(samples, key=lambda s: s["index"])
    assert first["params"]["origin"] == [0, 0, 0]
    segmented = (grey > __import__("skimage.filters").filters.threshold_otsu(grey)).astype(np.uint8)
    np.testing.assert_array_equal(first["volume"], segmented[:12, :12, :12])
    np.testing.assert_allclose(first["relative_conductivity"], _physics_labels(first["volume"]), rtol=1e-6, atol=1e-7)
    # the same segmentation saved as a 0/255 mask, as image tools save one, imports as the same tiles and labels
    __import__("tifffile").imwrite(tmp_path / "mask.tif", segmented * np.uint8(255))
    proc = run_module("conductivity_tf.dataset", "import", "--out", tmp_path / "mask", tmp_path / "mask.tif",
                      "--tile", "12", "--stride", "12", "--quiet")
    assert proc.returncode == 0, proc.stderr
    masked = {s["index"]: s for split in D.SPLITS for s in D.iterate(str(tmp_path / "mask"), split)}
    for sample in samples:
        np.testing.assert_array_equal(masked[sample["index"]]["volume"], sample["volume"])
        np.testing.assert_array_equal(masked[sample["index"]]["relative_conductivity"],
                                      sample["relative_conductivity"])


def test_missing_dataset_is_one_line(tmp_path):
    assert_one_line_error(run_module("conductivity_tf.dataset", "info", tmp_path / "nothing"), "no dataset at")


def test_epoch_streams_resume_exactly_and_reshuffle_between_epochs():
    """Epoch e of the stream depends only on (seed, e): a stream started at epoch 1 equals epochs 1.. of a stream
    started at 0; consecutive epochs differ (order and symmetries); beyond the planned epochs it still reshuffles."""
    from conductivity_tf.keras_compat import tf  # noqa: F401  (TensorFlow with the Keras 2 API, as everywhere)

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data", "small32")
    batches = 398 // 32   # the validation split: 12 batches of 32 per epoch

    def stream(start, count):
        ds = D.make_dataset(path, "validation", 32, shuffle=True, augment=True, seed=7, repeat=True,
                            start_epoch=start, epoch_batches=batches, epochs=3)
        return [x.numpy() for x, _ in ds.take(count)]

    whole = stream(0, 5 * batches)
    resumed = stream(1, 4 * batches)
    for a, b in zip(whole[batches:], resumed):
        assert np.array_equal(a, b)
    epochs = [np.concatenate(whole[e * batches:(e + 1) * batches]) for e in range(5)]
    for e in range(4):
        assert not np.array_equal(epochs[e], epochs[e + 1]), e


def test_build_overrides_may_come_between_options(tmp_path):
    out = tmp_path / "d"
    proc = run_module("conductivity_tf.dataset", "build", "--out", str(out), "samples=6", "--workers", "1",
                      "size=16", "--quiet", "seed=5")
    assert proc.returncode == 0, proc.stderr[-2000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert (manifest["samples"], manifest["sample_size"], manifest["build"]["seed"]) == (6, 16, 5)
    bad = run_module("conductivity_tf.dataset", "build", "--out", str(tmp_path / "e"), "samples=6", "--bogus")
    assert bad.returncode == 2 and "unrecognized arguments: --bogus" in bad.stderr


def test_combined_datasets_read_as_the_union_of_theirs(small, tmp_path):
    other = tmp_path / "other"
    proc = run_module("conductivity_tf.dataset", "build", "--out", other, "--workers", "1", "--samples", "24",
                      "--size", "16", "--seed", "9", "--quiet", "shard_size=8")
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "both"
    proc = run_module("conductivity_tf.dataset", "combine", small, other, "--out", out)
    assert proc.returncode == 0, proc.stderr
    combined = D.load_manifest(str(out))
    parts = [D.load_manifest(small), D.load_manifest(str(other))]
    assert combined["samples"] == 48 + 24
    for split in D.SPLITS:
        assert combined["counts"][split] == sum(p["counts"][split] for p in parts)
        expected = [s for p in parts for s in D.iterate(p["path"], split)]
        got = list(D.iterate(str(out), split))
        assert len(got) == len(expected)
        for a, b in zip(got, expected):
            np.testing.assert_array_equal(a["volume"], b["volume"])
            np.testing.assert_array_equal(a["relative_conductivity"], b["relative_conductivity"])
    sigma = np.concatenate([D.load_arrays(p["path"], s)[1] for p in parts for s in D.SPLITS])
    stats = combined["label_statistics"]
    np.testing.assert_allclose(stats["relative_conductivity_mean"], sigma.mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(stats["relative_conductivity_std"], sigma.std(axis=0), rtol=1e-4)
    assert sum(stats["families"].values()) == 72
    assert D.verify(str(out)) == []
    # a second combination into the same place, or of datasets of another cube edge, is refused in one line
    assert_one_line_error(run_module("conductivity_tf.dataset", "combine", small, other, "--out", out),
                          "already holds a dataset")
    odd = tmp_path / "odd"
    proc = run_module("conductivity_tf.dataset", "build", "--out", odd, "--workers", "1", "--samples", "8",
                      "--size", "12", "--seed", "9", "--quiet", "shard_size=8")
    assert proc.returncode == 0, proc.stderr
    assert_one_line_error(run_module("conductivity_tf.dataset", "combine", small, odd, "--out", tmp_path / "x"),
                          "different edges")
    assert not (tmp_path / "x").exists()


def test_flattened_blobs_conduct_least_across_their_plates():
    # flattened64's blobs: the correlation length along the drawn axis is the others' over the flattening, so the
    # structure is plate-like and conducts less across the plates than along them
    spec = D.load_build_spec("flattened64", ["size=32"])
    for index in range(3):
        sample = D.make_sample(spec, index)
        lengths = sample["params"]["correlation_length"]
        thin = int(np.argmin(lengths))
        wide = [n for a, n in enumerate(lengths) if a != thin]
        assert sample["family"] == "blobs" and wide[0] == wide[1]
        assert 1.5 <= wide[0] / lengths[thin] <= 5.0 + 1e-3 and 1.2 <= wide[0] <= 4.0
        assert abs(sample["porosity"] - sample["params"]["porosity"]) < 0.01
        sigma = sample["relative_conductivity"]
        assert sigma[thin] < min(s for a, s in enumerate(sigma) if a != thin)
    assert D.make_sample(spec, 1)["volume"].tobytes() == D.make_sample(spec, 1)["volume"].tobytes()
