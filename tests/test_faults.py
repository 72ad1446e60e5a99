"""Faults: training killed with SIGKILL at chosen and random moments resumes to the same weights
(damaged checkpoints, backups and SavedModels: test_damaged_runs.py)."""

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np

from tests.conftest import ROOT, run_module
from tests.fault_runs import ARGS, env, kill_at


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


def test_training_killed_at_three_moments_resumes_to_identical_weights(data16, reference_run, tmp_path):
    out = str(tmp_path / "killed")
    command = ["data.path=" + data16] + ARGS + ["--out", out]
    moments = ["batch:1:5",                     # mid-epoch (the second epoch)
               "save:last.weights.h5:1",        # while writing the first checkpoint after resuming
               "epoch:3"]                       # between epochs 2 and 3
    for moment in moments:
        kill_at(moment, command)
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
        proc = subprocess.Popen(command, cwd=ROOT, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
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
