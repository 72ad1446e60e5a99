"""Benchmarks: ``python -m conductivity_tf.benchmark SUITE [--quick] [--csv OUT]``.

Every suite measures the things it compares side by side, in one run, on the same inputs, and prints
its ratios last. Rows go to a Markdown table on stdout and, with ``--csv``, to a CSV file whose rows
carry a description of the machine, so that CSVs from different machines can be compared.

Suites:
  solver     our conduction solver against TauFactor (CPU) and PoreSpy ``tortuosity_fd`` (anchors from
             the ``bench`` extra; a missing anchor is skipped, saying so)
  input      augmented input batches against the default model's training step; dataset build speed with
             1 and 2 worker processes
  surrogate  batched CNN inference against the solver on the same 64^3 volumes
  train, compare   (not in this version yet)
"""

import argparse
import csv
import math
import os
import platform
import statistics
import sys
import time

import numpy as np

from conductivity_tf.errors import UserError, not_available, run_cli
from conductivity_tf.fileio import atomic_path

SUITES = {
    "solver": "our conduction solver against TauFactor and PoreSpy on the same volumes",
    "input": "input pipeline throughput against training throughput",
    "train": "training throughput per hardware configuration (benchmarks.yaml)",
    "surrogate": "CNN inference against the physics solver",
    "compare": "plot benchmark CSVs from several machines against each other",
}


# ---------------------------------------------------------------------------------------------
# shared runner pieces


def machine_description():
    """A short description of this machine for every CSV row."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"machine": platform.node(), "cpu": cpu, "cores": os.cpu_count(),
            "python": platform.python_version()}


def markdown_table(rows, columns):
    def fmt(value):
        if isinstance(value, float):
            if math.isinf(value) or math.isnan(value):
                return str(value)
            return "{:.4g}".format(value)
        return "" if value is None else str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(fmt(row.get(c)) for c in columns) + " |")
    return "\n".join(lines)


def write_csv(path, rows, columns):
    extra = machine_description()
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(columns) + list(extra))
            writer.writeheader()
            for row in rows:
                writer.writerow(dict({c: row.get(c) for c in columns}, **extra))


def best_time(fn, repeats):
    """Run ``fn`` ``repeats`` times; return (best seconds, last result)."""
    best, result = math.inf, None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return best, result


def say(*args):
    print(*args, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# solver suite


def _taufactor():
    try:
        import taufactor

        return taufactor
    except ImportError:
        return None


def _porespy():
    try:
        import logging

        import porespy

        logging.getLogger("porespy").setLevel(logging.ERROR)
        return porespy
    except ImportError:
        return None


def taufactor_relative_conductivity(taufactor, volume):
    """TauFactor's D_eff/D_0 along numpy axis 0 (its default convergence criterion)."""
    import numpy as np

    solver = taufactor.Solver(volume.astype(np.float32), device="cpu")
    solver.solve(verbose=False)
    return float(np.asarray(solver.D_eff).ravel()[0])


def porespy_relative_conductivity(porespy, volume):
    """PoreSpy's effective porosity / tortuosity along numpy axis 0."""
    result = porespy.simulations.tortuosity_fd(volume.astype(bool), axis=0)
    return float(result.effective_porosity / result.tortuosity)


SOLVER_COLUMNS = ["size", "porosity", "ours_s", "iterations", "ours_sigma", "taufactor_s", "taufactor_sigma",
                  "porespy_s", "porespy_sigma", "speedup", "max_rel_diff"]


def run_solver_suite(args):
    import numpy as np

    from conductivity_tf import microstructure, physics

    sizes = [64, 128] if args.quick else [64, 128, 256]
    porosities = [0.3, 0.5] if args.quick else [0.3, 0.45, 0.6]
    anchors = {"taufactor": _taufactor(), "porespy": _porespy()}
    for name, module in anchors.items():
        if module is None:
            say("{} is not installed: skipped (pip install -e .[bench])".format(name))
    rows = []
    warm = microstructure.blobs(16, 0.5, 2, seed=0)
    physics.solve(warm, axes=[0])  # compile the numba kernels outside the timings
    for size in sizes:
        repeats = 3 if size <= 128 else 1
        for porosity in porosities:
            volume = microstructure.blobs(size, porosity=porosity, correlation_length=4, seed=size)
            row = {"size": size, "porosity": porosity}
            seconds, result = best_time(lambda v=volume: physics.solve(v, axes=[0])[0], repeats)
            row.update(ours_s=seconds, iterations=result.iterations, ours_sigma=result.relative_conductivity)
            if anchors["taufactor"] is not None:
                seconds, sigma = best_time(lambda v=volume: taufactor_relative_conductivity(anchors["taufactor"], v),
                                           repeats)
                row.update(taufactor_s=seconds, taufactor_sigma=sigma)
            if anchors["porespy"] is not None:
                seconds, sigma = best_time(lambda v=volume: porespy_relative_conductivity(anchors["porespy"], v), 1)
                row.update(porespy_s=seconds, porespy_sigma=sigma)
            anchor_times = [row[k] for k in ("taufactor_s", "porespy_s") if k in row]
            anchor_sigmas = [row[k] for k in ("taufactor_sigma", "porespy_sigma") if k in row]
            if anchor_times:
                row["speedup"] = min(anchor_times) / row["ours_s"]
                row["max_rel_diff"] = max(abs(row["ours_sigma"] - s) / s for s in anchor_sigmas)
            rows.append(row)
            say("solver {}^3 porosity {}: ours {:.3f} s{}".format(size, porosity, row["ours_s"], "".join(
                ", {} {:.3f} s".format(k[:-2], row[k]) for k in ("taufactor_s", "porespy_s") if k in row)))
    print(markdown_table(rows, SOLVER_COLUMNS))
    if args.csv:
        write_csv(args.csv, rows, SOLVER_COLUMNS)
    # ratios, printed last
    print()
    for size in sizes:
        speedups = [r["speedup"] for r in rows if r["size"] == size and "speedup" in r]
        diffs = [r["max_rel_diff"] for r in rows if r["size"] == size and "max_rel_diff" in r]
        if speedups:
            print("{}^3: ours is {:.2f}x faster than the faster anchor (median over porosities; min {:.2f}x); "
                  "largest relative disagreement {:.2e}".format(size, statistics.median(speedups), min(speedups),
                                                                max(diffs)))
    if len(sizes) > 1:
        voxels = np.log([s ** 3 for s in sizes])
        times = np.log([statistics.median([r["ours_s"] for r in rows if r["size"] == s]) for s in sizes])
        exponent = float(np.polyfit(voxels, times, 1)[0])
        print("cost growth {}^3 -> {}^3: time ~ voxels^{:.2f} (1.00 = linear)".format(sizes[0], sizes[-1], exponent))
    return 0


# ---------------------------------------------------------------------------------------------
# input suite


def windows_throughput(step, samples_per_step, windows=7, steps_per_window=10, warmup=3):
    """Median (min, max) samples/s over timed windows of ``steps_per_window`` calls to ``step``."""
    for _ in range(warmup):
        step()
    rates = []
    for _ in range(windows):
        t0 = time.perf_counter()
        for _ in range(steps_per_window):
            step()
        rates.append(samples_per_step * steps_per_window / (time.perf_counter() - t0))
    return statistics.median(rates), min(rates), max(rates)


def training_throughput(cfg, windows=5, steps_per_window=5):
    """Samples/s of the configured model's training step on in-memory data (the input is not involved)."""
    from conductivity_tf import strategies
    from conductivity_tf.keras_compat import keras, tf
    from conductivity_tf.model import build_model

    size, outputs, batch = cfg.data.size, len(cfg.data.axes), cfg.train.batch_size
    base = build_model(cfg.model, size, outputs)
    model = strategies.for_training(base, cfg.hardware.gradient_accumulation, cfg.hardware.reduction)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
    rng = np.random.default_rng(0)
    x = tf.constant((rng.random((batch, size, size, size, 1)) < 0.5).astype("float32"))
    y = tf.constant(rng.random((batch, outputs)).astype("float32") * 0.3)
    return windows_throughput(lambda: model.train_on_batch(x, y), batch, windows, steps_per_window)


def run_input_suite(args):
    import tempfile

    from conductivity_tf import config as config_lib
    from conductivity_tf import dataset as dataset_lib

    cfg = config_lib.load_config()
    rows = []
    # dataset building first, before TensorFlow starts its threads in this process (workers are forked)
    samples = 96 if args.quick else 256
    build = {}
    for workers in (1, 2):
        with tempfile.TemporaryDirectory() as tmp:
            spec = dataset_lib.load_build_spec(samples=samples, size=32, seed=11)
            t0 = time.perf_counter()
            dataset_lib.run_build(spec, os.path.join(tmp, "ds"), workers=workers, progress=False)
            build[workers] = samples / (time.perf_counter() - t0)
        say("build with {} worker(s): {:.1f} samples/s".format(workers, build[workers]))
    batch = cfg.train.batch_size
    # the pipeline as training runs it: decoded volumes cached after the first pass, then shuffling and the
    # random cube symmetries on every batch; the first pass (decoding) is the warm-up
    ds = dataset_lib.make_dataset(cfg.data.path, "train", batch, axes=cfg.data.axes, augment=True, shuffle=True,
                                  seed=0, repeat=True, cache=True)
    iterator = iter(ds)
    first_pass = dataset_lib.load_manifest(cfg.data.path)["counts"]["train"] // batch + 1
    median, low, high = windows_throughput(lambda: next(iterator), batch, warmup=first_pass)
    rows.append({"measure": "augmented input batches", "samples_per_s": median, "min": low, "max": high})
    say("input pipeline: {:.0f} samples/s".format(median))
    median_t, low_t, high_t = training_throughput(cfg)
    rows.append({"measure": "default model training", "samples_per_s": median_t, "min": low_t, "max": high_t})
    say("training: {:.0f} samples/s".format(median_t))
    for workers in (1, 2):
        rows.append({"measure": "dataset build, {} worker(s), 32^3".format(workers), "samples_per_s": build[workers]})
    columns = ["measure", "samples_per_s", "min", "max"]
    print(markdown_table(rows, columns))
    if args.csv:
        write_csv(args.csv, rows, columns)
    print()
    print("input pipeline / training throughput: {:.1f}x (augmented {}^3 batches of {}, decoded volumes cached as in "
          "training, against the default model's training step)".format(median / median_t, cfg.data.size, batch))
    print("dataset build, 2 workers / 1 worker: {:.2f}x".format(build[2] / build[1]))
    return 0


# ---------------------------------------------------------------------------------------------
# surrogate suite


def run_surrogate_suite(args):
    """Per-volume time of batched CNN inference (three axes) against the physics solver, same volumes."""
    from conductivity_tf import config as config_lib
    from conductivity_tf import microstructure, physics

    size = args.size
    families = [("blobs", dict(porosity=0.4, correlation_length=4)),
                ("overlapping_spheres", dict(porosity=0.5, radius=5)),
                ("fibres", dict(porosity=0.7, radius=2.5)),
                ("graded", dict(porosity_start=0.6, porosity_end=0.3)),
                ("packed_spheres", dict(porosity=0.7, radius=4))]
    count = 8 if args.quick else 32
    volumes = []
    for i in range(count):
        name, params = families[i % len(families)]
        volumes.append(microstructure.generate(name, size, seed=i, **params))
    physics.solve(microstructure.blobs(16, 0.5, 2, seed=0))     # compile outside the timing
    solver_times = []
    for v in volumes:
        t0 = time.perf_counter()
        physics.solve(v)
        solver_times.append(time.perf_counter() - t0)
    solver = statistics.median(solver_times)
    say("solver: {:.3f} s per {}^3 volume (three axes)".format(solver, size))
    batch = np.stack(volumes).astype("float32")
    if args.model:
        from conductivity_tf.predict import Predictor

        predictor = Predictor(args.model)
        if predictor.size != size:
            raise UserError("--model takes {0}^3 volumes; run with --size {0}".format(predictor.size))

        def infer():
            return predictor(batch, batch_size=len(batch))
        which = args.model
    else:
        from conductivity_tf.keras_compat import tf
        from conductivity_tf.model import build_model

        cfg = config_lib.load_config()
        model = build_model(cfg.model, size, 3)
        @tf.function
        def serve(x):
            return model(x, training=False)

        data = tf.constant(batch[..., None])

        def infer():
            return serve(data).numpy()
        which = "default architecture (untrained weights: the time does not depend on them)"
    median, low, high = windows_throughput(infer, len(batch), windows=5, steps_per_window=2, warmup=1)
    cnn = 1.0 / median
    rows = [{"method": "physics solver, 3 axes", "seconds_per_volume": solver, "min": min(solver_times),
             "max": max(solver_times)},
            {"method": "CNN, batches of {}".format(len(batch)), "seconds_per_volume": cnn, "min": 1.0 / high,
             "max": 1.0 / low}]
    print("model: {}".format(which))
    print(markdown_table(rows, ["method", "seconds_per_volume", "min", "max"]))
    if args.csv:
        write_csv(args.csv, rows, ["method", "seconds_per_volume", "min", "max"])
    print()
    print("CNN inference is {:.0f}x faster per {}^3 volume than the solver (all three axes)".format(
        solver / cnn, size))
    return 0


# ---------------------------------------------------------------------------------------------
# command line


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m conductivity_tf.benchmark",
        description="Measure speed side by side, in one run; ratios are printed last.")
    sub = parser.add_subparsers(dest="suite", metavar="SUITE")
    for name, help_ in SUITES.items():
        p = sub.add_parser(name, help=help_, description=help_)
        p.add_argument("--quick", action="store_true", help="fewer and smaller cases (minutes)")
        p.add_argument("--csv", help="write the rows (with a machine description) to this CSV file")
        if name == "surrogate":
            p.add_argument("--model", help="a run directory to time (default: the default architecture)")
            p.add_argument("--size", type=int, default=64, help="volume edge (default 64)")
    return parser


def main(argv=None):
    parser = build_parser()
    args, _ = parser.parse_known_args(argv)
    if not args.suite:
        parser.print_help()
        return 2
    if args.csv and os.path.isdir(args.csv):
        raise UserError("--csv {} is a directory; give a file name such as results.csv".format(args.csv))
    if args.suite == "solver":
        return run_solver_suite(args)
    if args.suite == "input":
        return run_input_suite(args)
    if args.suite == "surrogate":
        return run_surrogate_suite(args)
    return not_available("conductivity_tf.benchmark", "the '{}' suite".format(args.suite))


def cli():
    run_cli(main)


if __name__ == "__main__":
    cli()
