"""Damaged run files are named: a truncated checkpoint or resume backup on resuming, a damaged SavedModel when
predicting (the runs made by the real commands, killed by tests.fault_runs)."""

import os

import numpy as np
import pytest

from tests.conftest import assert_one_line_error, run_module
from tests.fault_runs import ARGS, kill_at


def _flip_byte(path, offset_fraction=0.5):
    with open(path, "r+b") as handle:
        handle.seek(0, 2)
        size = handle.tell()
        handle.seek(int(size * offset_fraction))
        byte = handle.read(1)
        handle.seek(int(size * offset_fraction))
        handle.write(bytes([byte[0] ^ 0xFF]))


def test_damaged_checkpoint_is_named_on_resume(data16, tmp_path):
    out = str(tmp_path / "run")
    command = ["data.path=" + data16] + ARGS + ["--out", out]
    kill_at("epoch:2", command)
    best = os.path.join(out, "checkpoints", "best.weights.h5")
    with open(best, "r+b") as handle:
        handle.truncate(os.path.getsize(best) // 3)
    proc = run_module("conductivity_tf.train", *command)
    assert_one_line_error(proc, "best.weights.h5", "damaged")


def test_damaged_resume_backup_is_named(data16, tmp_path):
    out = str(tmp_path / "run")
    command = ["data.path=" + data16] + ARGS + ["--out", out]
    kill_at("epoch:2", command)
    backup = os.path.join(out, "backup", "chief")
    data_files = [os.path.join(backup, n) for n in os.listdir(backup) if ".data-" in n]
    assert data_files
    for path in data_files:
        with open(path, "r+b") as handle:
            handle.truncate(10)
    proc = run_module("conductivity_tf.train", *command)
    assert_one_line_error(proc, "backup", "delete")


@pytest.mark.parametrize("damage", ["flip", "truncate", "remove_variables"])
def test_damaged_saved_model_is_named(reference_run, tmp_path, damage):
    import shutil

    run = str(tmp_path / "run")
    shutil.copytree(reference_run, run)
    target = os.path.join(run, "saved_model")
    volume = tmp_path / "v.npy"
    np.save(volume, (np.random.default_rng(0).random((16, 16, 16)) < 0.5).astype(np.uint8))
    if damage == "flip":
        data = [n for n in os.listdir(os.path.join(target, "variables")) if ".data-" in n][0]
        _flip_byte(os.path.join(target, "variables", data), 0.5)
    elif damage == "truncate":
        path = os.path.join(target, "saved_model.pb")
        with open(path, "r+b") as handle:
            handle.truncate(os.path.getsize(path) // 2)
    else:
        shutil.rmtree(os.path.join(target, "variables"))
    proc = run_module("conductivity_tf.predict", "--model", run, volume)
    assert_one_line_error(proc, "saved_model")
