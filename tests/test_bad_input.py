"""Bad input through the command-line tools: one line naming the problem and the fix, exit status 2, no
traceback, nothing left behind. One table; every case runs a real process on real files."""

import os

import numpy as np
import pytest
import tifffile

from tests.conftest import ROOT, assert_one_line_error, run_module

SMALL = os.path.join(ROOT, "data", "small32")
TINY_TRAIN = ["model.widths=[4,8]", "model.head_units=8", "train.epochs=1", "train.tensorboard=false"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    rng = np.random.default_rng(0)
    good = (rng.random((16, 16, 16)) < 0.6).astype(np.uint8)
    f = {"dir": str(d)}

    def save(name, array):
        path = str(d / name)
        np.save(path, array)
        f[name] = path

    nan = good.astype(np.float32)
    nan[3, 4, 5] = np.nan
    save("nan.npy", nan)
    inf = good.astype(np.float32)
    inf[0, 0, 0] = np.inf
    save("inf.npy", inf)
    save("rank2.npy", good[0])
    save("rank4.npy", good[None])
    save("complex.npy", good.astype(np.complex64))
    save("strings.npy", np.array([["a", "b"], ["c", "d"]]))
    save("three_phase.npy", (rng.random((16, 16, 16)) * 3).astype(np.uint8))
    save("empty_phase.npy", np.zeros((16, 16, 16), np.uint8))
    blocked = np.ones((16, 16, 16), np.uint8)
    blocked[8] = 0  # a wall across axis 0: no path between the faces
    save("blocked.npy", blocked)
    save("good.npy", good)
    save("good32.npy", (rng.random((32, 32, 32)) < 0.6).astype(np.uint8))
    save("zero.npy", np.zeros((0, 16, 16), np.uint8))
    large = (rng.random((96, 64, 72)) < 0.6).astype(np.uint8)
    save("grey_large.npy", large * 200)
    save("good64.npy", large[:64, :, :64])
    save("large.npy", large)
    whole = open(f["large.npy"], "rb").read()
    path = str(d / "truncated_large.npy")
    with open(path, "wb") as handle:
        handle.write(whole[:len(whole) // 3])
    f["truncated_large.npy"] = path
    path = str(d / "truncated_large.tif")
    tifffile.imwrite(path, large)
    with open(path, "r+b") as handle:
        handle.truncate(len(large.tobytes()) // 2)
    f["truncated_large.tif"] = path
    path = str(d / "garbage.tif")
    with open(path, "wb") as handle:
        handle.write(b"II*\x00" + b"\x17" * 50)
    f["garbage.tif"] = path
    path = str(d / "volume.raw")
    good.tofile(path)
    f["volume.raw"] = path
    path = str(d / "pickle.npy")
    np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    f["pickle.npy"] = path
    path = str(d / "bad.yaml")
    with open(path, "w") as handle:
        handle.write("train: {epochs: [unclosed\n")
    f["bad.yaml"] = path
    return f


# (case, module, arguments (with {file} placeholders), fragments of the one error line, output that must not exist)
CASES = [
    ("NaN voxels", "conductivity_tf.physics", ["{nan.npy}"], ["nan.npy", "NaN"], None),
    ("infinite voxels", "conductivity_tf.physics", ["{inf.npy}"], ["inf.npy", "inf"], None),
    ("2-D array", "conductivity_tf.physics", ["{rank2.npy}"], ["rank2.npy", "3-D"], None),
    ("4-D array", "conductivity_tf.predict", ["{rank4.npy}"], ["rank4.npy", "3-D"], None),
    ("complex dtype", "conductivity_tf.physics", ["{complex.npy}"], ["complex.npy", "complex"], None),
    ("complex dtype into predict", "conductivity_tf.predict", ["{complex.npy}"], ["complex.npy", "complex"], None),
    ("string dtype", "conductivity_tf.physics", ["{strings.npy}"], ["strings.npy"], None),
    ("non-binary without phase map", "conductivity_tf.physics", ["{three_phase.npy}"],
     ["three_phase.npy", "--sigma"], None),
    ("non-binary into predict", "conductivity_tf.predict", ["{three_phase.npy}"], ["three_phase.npy", "binary"],
     None),
    ("non-binary whole volume", "conductivity_tf.predict", ["{grey_large.npy}"], ["grey_large.npy", "binary"],
     None),
    ("truncated .npy whole volume", "conductivity_tf.predict", ["{truncated_large.npy}"], ["truncated_large.npy"],
     None),
    ("truncated TIFF whole volume", "conductivity_tf.predict", ["{truncated_large.tif}"], ["truncated_large.tif"],
     None),
    ("map without a whole volume", "conductivity_tf.predict", ["{good64.npy}", "--map", "{dir}/map.npy"], ["--map"],
     "{dir}/map.npy"),
    ("detours without a whole volume", "conductivity_tf.predict", ["{good64.npy}", "--detours"], ["--detours"], None),
    ("model directory that is not a run", "conductivity_tf.predict", ["--model", "{dir}/nothing", "{good.npy}"],
     ["nothing"], None),
    ("unreadable TIFF", "conductivity_tf.physics", ["{garbage.tif}"], ["garbage.tif"], None),
    ("missing volume file", "conductivity_tf.physics", ["{dir}/absent.npy"], ["absent.npy", "does not exist"], None),
    ("raw without shape", "conductivity_tf.physics", ["{volume.raw}"], ["--shape"], None),
    ("raw of the wrong size", "conductivity_tf.physics", ["{volume.raw}", "--shape", "16", "16", "15", "--dtype",
                                                          "uint8"], ["volume.raw", "bytes"], None),
    ("pickled object array", "conductivity_tf.physics", ["{pickle.npy}"], ["pickle.npy"], None),
    ("phase map malformed", "conductivity_tf.physics", ["{three_phase.npy}", "--phase-map", "2to1"],
     ["--phase-map", "OLD=NEW"], None),
    ("empty array", "conductivity_tf.physics", ["{zero.npy}"], ["zero.npy"], None),
    ("unknown config key", "conductivity_tf.train", ["model.nope=1", "--out", "{dir}/run_key"],
     ["model.nope", "valid keys"], "{dir}/run_key"),
    ("unknown config section", "conductivity_tf.train", ["optimizer.lr=1", "--out", "{dir}/run_section"],
     ["optimizer"], "{dir}/run_section"),
    ("wrong value type", "conductivity_tf.train", ["train.epochs=many", "--out", "{dir}/run_type"],
     ["train.epochs"], "{dir}/run_type"),
    ("negative epochs", "conductivity_tf.train", ["train.epochs=-1", "--out", "{dir}/run_neg"],
     ["train.epochs", ">= 1"], "{dir}/run_neg"),
    ("negative dataset size", "conductivity_tf.dataset", ["build", "--out", "{dir}/ds_neg", "--samples", "-5"],
     ["samples"], "{dir}/ds_neg"),
    ("negative tile size", "conductivity_tf.dataset", ["import", "{good.npy}", "--out", "{dir}/imp_neg", "--tile",
                                                       "-8"], ["tile"], "{dir}/imp_neg"),
    ("batch not divisible by replicas x accumulation", "conductivity_tf.train",
     ["train.batch_size=30", "hardware.gradient_accumulation=4", "--out", "{dir}/run_batch"],
     ["train.batch_size", "accumulation"], "{dir}/run_batch"),
    ("more stages than IPUs", "conductivity_tf.train",
     ["hardware.kind=ipu", "hardware.ipus=2", "hardware.pipeline_stages=4", "hardware.gradient_accumulation=8",
      "--plan-only"], ["stages", "IPUs"], None),
    ("steps per execution not divisible by accumulation", "conductivity_tf.train",
     ["hardware.kind=ipu", "hardware.ipus=2", "hardware.pipeline_stages=2", "hardware.gradient_accumulation=8",
      "hardware.steps_per_execution=12", "--plan-only"], ["steps_per_execution", "accumulation"], None),
    ("pipeline stages without IPUs", "conductivity_tf.train", ["hardware.pipeline_stages=2", "--out",
                                                               "{dir}/run_stages"], ["pipeline_stages", "ipu"],
     "{dir}/run_stages"),
    ("fp16 on CPU", "conductivity_tf.train", ["train.precision=fp16", "--out", "{dir}/run_fp16"],
     ["fp16", "mixed"], "{dir}/run_fp16"),
    ("dataset of another sample size than the model", "conductivity_tf.train",
     ["data.path=" + SMALL, "data.size=16"] + TINY_TRAIN + ["--out", "{dir}/run_size"], ["data.size=32"], None),
    ("missing dataset", "conductivity_tf.train", ["data.path={dir}/no_dataset"] + TINY_TRAIN +
     ["--out", "{dir}/run_missing"], ["no_dataset"], None),
    ("run directory not writable", "conductivity_tf.train", ["data.path=" + SMALL] + TINY_TRAIN +
     ["--out", "{good.npy}/run"], ["not writable"], None),
    ("dataset directory not writable", "conductivity_tf.dataset", ["build", "--out", "{good.npy}/ds",
                                                                   "--samples", "8", "--size", "16"],
     ["not writable"], None),
    ("missing configuration file", "conductivity_tf.train", ["--config", "{dir}/absent.yaml"], ["absent.yaml"],
     None),
    ("broken YAML", "conductivity_tf.train", ["--config", "{bad.yaml}"], ["bad.yaml"], None),
    ("override without '='", "conductivity_tf.train", ["train.epochs"], ["section.key=value"], None),
    ("predict volume smaller than the model's cube", "conductivity_tf.predict", ["{good32.npy}"],
     ["32x32x32", "64^3"],
     None),
    ("evaluate on a missing dataset", "conductivity_tf.evaluate", ["--data", "{dir}/no_dataset"], ["no_dataset"],
     None),
    ("correction data without the correction", "conductivity_tf.evaluate",
     ["--calibrate", "--correction-data", "{dir}"], ["--correction-data", "--calibrate --correction"], None),
    ("dataset info of a non-dataset", "conductivity_tf.dataset", ["info", "{dir}"], ["manifest"], None),
    ("benchmark CSV is a directory", "conductivity_tf.benchmark", ["solver", "--csv", "{dir}"], ["--csv"], None),
    ("compare with a missing CSV", "conductivity_tf.benchmark", ["compare", "{dir}/absent.csv"], ["absent.csv"],
     None),
    ("compare with a non-benchmark CSV", "conductivity_tf.benchmark", ["compare", "{bad.yaml}"],
     ["not a train benchmark CSV"], None),
]


def _fill(text, files):
    for key, value in files.items():
        text = text.replace("{" + key + "}", value)
    return text


@pytest.mark.parametrize("case,module,args,fragments,output", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gets_one_line(files, case, module, args, fragments, output):
    args = [_fill(a, files) for a in args]
    target = _fill(output, files) if output else None
    proc = run_module(module, *args, cwd=files["dir"])
    assert_one_line_error(proc, *fragments)
    if target:  # nothing half-written, not even an empty directory
        assert not os.path.exists(target), os.listdir(target)


@pytest.mark.parametrize("name", ["blocked.npy", "empty_phase.npy"])
def test_a_volume_without_a_conducting_path_is_zero_not_an_error(files, name):
    import json

    proc = run_module("conductivity_tf.physics", files[name], "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.splitlines()[0])
    assert result["relative_conductivity"] == [0.0], result
    assert result["tortuosity"] == [None]


def test_the_table_covers_at_least_thirty_bad_inputs():
    assert len(CASES) >= 30
