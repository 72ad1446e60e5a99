"""Faults: training killed with SIGKILL at chosen and random moments resumes to the same weights; damaged
checkpoints, backups and SavedModels are named."""

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from tests.conftest import ROOT, assert_one_line_error, build_dataset, run_module

ARGS = ["model.widths=[4,8]", "model.head_units=8", "data.size=16", "train.batch_size=8", "train.epochs=4",
        "train.tensorboard=false", "train.deterministic=true", "train.seed=3"]

# Runs the real training command in a real process and SIGKILLs that process at one precise moment:
#   batch:E:B   after batch B of epoch E (mid-epoch)
#   save:NAME:N while the N-th save of checkpoint NAME is on disk under its temporary name (checkpoint writing)
#   epoch:E     when epoch E begins, every callback of epoch E-1 having run (between epochs)
KILLER = textwrap.dedent("""
    import contextlib, os, signal, sys
    from conductivity_tf import fileio, train
    from conductivity_tf.keras_compat import keras

    spec = sys.argv[1].split(":")

    def die():
        sys.stdout.flush()
        os.kill(os.getpid(), signal.SIGKILL)

    if spec[0] == "save":
        real, seen = fileio.atomic_path, [0]

        @contextlib.contextmanager
        def atomic_path(path, suffix=".tmp"):
            with real(path, suffix) as tmp:
                yield tmp
                if os.path.basename(path) == spec[1]:
                    seen[0] += 1
                    if seen[0] == int(spec[2]):
                        assert os.path.getsize(tmp) > 0
                        die()
        fileio.atomic_path = atomic_path
    else:
        class Killer(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                self.epoch = epoch
                if spec[0] == "epoch" and epoch == int(spec[1]):
                    die()

            def on_train_batch_end(self, batch, logs=None):
                if spec[0] == "batch" and self.epoch == int(spec[1]) and batch == int(spec[2]):
                    die()

        fit = keras.Model.fit

        def killing_fit(self, *args, **kwargs):
            kwargs["callbacks"] = [Killer()] + list(kwargs.get("callbacks") or [])
            return fit(self, *args, **kwargs)
        keras.Model.fit = killing_fit
    train.main(sys.argv[2:])
""")


def _env():
    return dict(os.environ, PYTHONPATH=ROOT)


def _kill_at(moment, command):
    """Run the training command under KILLER; it must end by SIGKILL at ``moment``."""
    proc = subprocess.run([sys.executable, "-c", KILLER, moment] + command, cwd=ROOT, env=_env(),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == -signal.SIGKILL, (moment, proc.returncode, proc.stderr[-2000:])


def _weights(path):
    import h5py

    values = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: values.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
    return values


def _assert_same_run(a, b):
    for name in ("model.weights.h5", "checkpoints/last.weights.h5", "checkpoints/best.weights.h5"):
        wa, wb = _weights(os.path.join(a, name)), _weights(os.path.join(b, name))
        assert sorted(wa) == sorted(wb) and len(wa) > 4, name
        for key in wa:
            assert np.array_equal(wa[key], wb[key]), (name, key)
    ma, mb = (json.load(open(os.path.join(d, "metrics.json"))) for d in (a, b))
    assert ma["test"] == mb["test"]
    with open(os.path.join(a, "training_log.csv")) as fa, open(os.path.join(b, "training_log.csv")) as fb:
        assert fa.read() == fb.read()
    assert not [n for n in os.listdir(os.path.join(b, "checkpoints")) if ".tmp" in n]
    # the resume state is gone once the run has finished
    assert not [f for _, _, files in os.walk(os.path.join(b, "backup")) for f in files]


@pytest.fixture(scope="module")
def data16(tmp_path_factory):
    return build_dataset(tmp_path_factory.mktemp("faults") / "d16", samples=144, size=16, seed=5)


@pytest.fixture(scope="module")
def reference_run(data16, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("faults") / "uninterrupted")
    proc = run_module("conductivity_tf.train", "data.path=" + data16, *ARGS, "--out", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_training_killed_at_three_moments_resumes_to_identical_weights(data16, reference_run, tmp_path):
    out = str(tmp_path / "killed")
    command = ["data.path=" + data16] + ARGS + ["--out", out]
    moments = ["batch:1:5",                     # mid-epoch (the second epoch)
               "save:last.weights.h5:1",        # while writing the first checkpoint after resuming
               "epoch:3"]                       # between epochs 2 and 3
    for moment in moments:
        _kill_at(moment, command)
        assert os.path.isdir(os.path.join(out, "backup")) or moment == "batch:1:5"
    # the checkpoint-writing kill left its temporary behind; resuming removes it
    proc = run_module("conductivity_tf.train", *command)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _assert_same_run(reference_run, out)


def test_training_killed_at_random_moments_resumes_to_identical_weights(data16, reference_run, tmp_path):
    out = str(tmp_path / "random")
    command = [sys.executable, "-m", "conductivity_tf.train", "data.path=" + data16] + ARGS + ["--out", out]
    rng = random.Random(int(os.environ.get("FAULT_SEED", "11")))
    for _ in range(2):
        proc = subprocess.Popen(command, cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        # wait for training to start (the CSV log appears with the first epoch's end), then kill a moment later
        deadline = time.time() + 300
        while not os.path.exists(os.path.join(out, "training_log.csv")) and proc.poll() is None:
            assert time.time() < deadline
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 1.5))
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    proc = run_module("conductivity_tf.train", *command[3:])
    assert proc.returncode == 0, proc.stderr[-3000:]
    _assert_same_run(reference_run, out)


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
    _kill_at("epoch:2", command)
    best = os.path.join(out, "checkpoints", "best.weights.h5")
    with open(best, "r+b") as handle:
        handle.truncate(os.path.getsize(best) // 3)
    proc = run_module("conductivity_tf.train", *command)
    assert_one_line_error(proc, "best.weights.h5", "damaged")


def test_damaged_resume_backup_is_named(data16, tmp_path):
    out = str(tmp_path / "run")
    command = ["data.path=" + data16] + ARGS + ["--out", out]
    _kill_at("epoch:2", command)
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
