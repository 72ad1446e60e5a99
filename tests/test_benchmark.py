"""The train benchmark writes its CSV, table and plots, skips absent hardware with the reason, and compares CSVs."""

import csv
import os

from tests.conftest import run_module

SMALL = """
defaults: {size: 16, micro_batch: 4, model: {widths: [4, 8], head_units: 8}}
windows: 5
steps_per_window: 2
warmup_steps: 1
reference: {size: 16, micro_batch: 4, accumulation: 2, windows: 2, steps_per_window: 3,
            model: {widths: [4, 8], head_units: 8}}
runs:
  - {name: tiny-b4, quick: true}
  - {name: tiny-b4-ga2, gradient_accumulation: 2, quick: true}
  - {name: tiny-gpu, kind: gpu, quick: true}
  - {name: tiny-ipu, kind: ipu, pipeline_stages: 2, gradient_accumulation: 4, precision: fp16, quick: true}
  - {name: not-quick, micro_batch: 8}
"""


def test_train_suite_and_compare(tmp_path):
    config = tmp_path / "bench.yaml"
    config.write_text(SMALL)
    out = tmp_path / "results" / "train.csv"
    proc = run_module("conductivity_tf.benchmark", "train", "--quick", "--config", config, "--csv", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(out) as handle:
        rows = {r["name"]: r for r in csv.DictReader(handle)}
    assert "not-quick" not in rows
    for name in ("tiny-b4", "tiny-b4-ga2"):
        row = rows[name]
        assert row["status"] == "ok" and float(row["samples_per_s"]) > 0
        assert float(row["min_samples_per_s"]) <= float(row["samples_per_s"]) <= float(row["max_samples_per_s"])
        assert 0 < float(row["utilisation"]) < 1 and "matmul probe" in row["peak_source"]
        assert float(row["peak_memory_mb"]) > 100 and row["machine"] and row["cpu"]
    assert rows["tiny-b4-ga2"]["global_batch"] == "8"
    assert rows["tiny-gpu"]["status"].startswith("skipped: hardware.kind=gpu")
    assert rows["tiny-ipu"]["status"].startswith("skipped: hardware.kind=ipu needs Graphcore's Poplar SDK")
    assert sum(name.startswith("reference: ") for name in rows) == 4
    last = proc.stdout.strip().splitlines()[-3:]
    assert last[0].startswith("our training step / bare model.fit: ")
    assert last[1].startswith("gradient accumulation (2 micro-batches of 4) / one batch of 8: ")
    assert last[2].startswith("batch norms on a 4-D view / on the 5-D tensors (bare model.fit, 16^3): ")
    for suffix in (".md", "_vs_batch.png", "_vs_accumulation.png", "_vs_stages.png"):
        path = str(out)[:-4] + suffix
        with open(path, "rb") as handle:
            head = handle.read(8)
        assert head == b"\x89PNG\r\n\x1a\n" or suffix == ".md", path
    proc = run_module("conductivity_tf.benchmark", "compare", out, out, "--out", tmp_path / "cmp" / "both.png")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert os.path.exists(tmp_path / "cmp" / "both_by_configuration.png")
    assert "tiny-b4" in proc.stdout


def test_solver_suite_quick(tmp_path):
    # without the anchors (not in [dev]) it times ours alone and says which anchors it skipped
    import pytest

    pytest.importorskip("numba")
    from conductivity_tf import microstructure, physics

    out = tmp_path / "solver.csv"
    proc = run_module("conductivity_tf.benchmark", "solver", "--quick", "--csv", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(out) as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["size"], r["porosity"]) for r in rows] == [("64", "0.3"), ("64", "0.5"), ("128", "0.3"), ("128", "0.5")]
    first = microstructure.blobs(64, porosity=0.3, correlation_length=4, seed=64)
    assert abs(float(rows[0]["ours_sigma"]) / physics.solve(first, axes=[0])[0].relative_conductivity - 1) < 1e-6
    assert all(float(r["ours_s"]) > 0 and int(r["iterations"]) > 0 for r in rows)
    for anchor in ("taufactor", "porespy"):
        if not rows[0].get(anchor + "_s"):
            assert "{} is not installed: skipped".format(anchor) in proc.stderr


def test_surrogate_suite_times_both_precisions_of_the_pretrained_model(tmp_path):
    out = tmp_path / "surrogate.csv"
    proc = run_module("conductivity_tf.benchmark", "surrogate", "--quick", "--model", "conductivity_tf/pretrained",
                      "--csv", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(out) as handle:
        rows = {r["method"]: float(r["seconds_per_volume"]) for r in csv.DictReader(handle)}
    solver = rows["physics solver, 3 axes"]
    from conductivity_tf.keras_compat import cpu_bfloat16_convolutions

    # (TensorFlow 2.6 has no bfloat16 CPU convolutions: float32 alone there)
    for precision in ("fp32", "bf16") if cpu_bfloat16_convolutions() else ("fp32",):
        cnn = rows["CNN {}, batches of 8".format(precision)]
        # the printed ratio is the one measured in this run, from these rows
        assert "CNN inference in {} is {:.0f}x faster".format(precision, solver / cnn) in proc.stdout
    assert any(m.endswith("exact zeros without a path") for m in rows)
    assert rows["of it: the descriptors alone (domain.describe_many)"] > 0
