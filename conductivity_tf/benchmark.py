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
  train      training throughput, latency, memory and FLOP utilisation per configuration of
             configs/benchmarks.yaml (CPU, GPUs, IPUs; unavailable hardware is listed as skipped), then
             our training step against a bare model.fit and gradient accumulation against one batch
  compare    the train suite's plots drawn from CSVs taken on several machines
"""

import argparse
import csv
import functools
import json
import math
import os
import platform
import statistics
import sys
import time

import numpy as np

from conductivity_tf import config as config_lib
from conductivity_tf import dataset as dataset_lib
from conductivity_tf import microstructure, physics, pipeline_plan, plots, real_structures, strategies
from conductivity_tf import train as train_lib
from conductivity_tf.config import CONFIG_DIR
from conductivity_tf.errors import UserError, run_cli
from conductivity_tf.fileio import atomic_path, write_text
from conductivity_tf.model import build_model, inference_copy
from conductivity_tf.plots import comparison_plot, throughput_plots
from conductivity_tf.predict import Predictor, resolve_precision
from conductivity_tf.steps import global_batch_of
from conductivity_tf.strategies import configure_logical_cpus

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


def _anchor_installed(name):
    import importlib.util

    return importlib.util.find_spec(name) is not None


def _time_anchor(name, volume, repeats):
    """(best seconds, sigma) of an anchor on ``volume``; runs in the anchors' own process."""
    if name == "taufactor":
        module = _taufactor()
        return best_time(lambda: taufactor_relative_conductivity(module, volume), repeats)
    module = _porespy()
    return best_time(lambda: porespy_relative_conductivity(module, volume), repeats)


SOLVER_COLUMNS = ["size", "porosity", "ours_s", "iterations", "ours_sigma", "taufactor_s", "taufactor_sigma",
                  "porespy_s", "porespy_sigma", "speedup", "max_rel_diff"]


def run_solver_suite(args):
    import concurrent.futures
    import multiprocessing

    import numpy as np


    sizes = [64, 128] if args.quick else [64, 128, 256]
    porosities = [0.3, 0.5] if args.quick else [0.3, 0.45, 0.6]
    anchors = [name for name in ("taufactor", "porespy") if _anchor_installed(name)]
    for name in ("taufactor", "porespy"):
        if name not in anchors:
            say("{} is not installed: skipped (pip install -e .[bench])".format(name))
    # The anchors run in a process of their own: with torch (TauFactor's) imported, our solver's numba
    # kernels ran 10-65 % slower in the same process, which would measure the neighbour, not the
    # solver. The volumes go there by pipe; each side times itself.
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        def anchor(name, volume, repeats):
            return pool.submit(_time_anchor, name, volume, repeats).result()

        rows = []
        warm = microstructure.blobs(16, 0.5, 2, seed=0)
        physics.solve(warm, axes=[0])  # compile the numba kernels outside the timings
        for name in anchors:
            anchor(name, warm, 1)      # and import the anchors
        for size in sizes:
            # best of several runs in two rounds, each a block of ours then a block of TauFactor's, so that
            # a slow spell of this shared machine hits both; a 64^3 solve takes tens of milliseconds, so
            # more runs there
            rounds, repeats = {64: (2, 4), 128: (2, 2)}.get(size, (1, 1))
            for porosity in porosities:
                volume = microstructure.blobs(size, porosity=porosity, correlation_length=4, seed=size)
                row = {"size": size, "porosity": porosity}
                ours, theirs = [], []
                for _ in range(rounds):
                    # at least two of ours: the first solve at 256^3 spent 3 of its 4-5 s in the kernel,
                    # touching fresh memory (~2 GB); TauFactor's one run there takes 1.5-3 minutes
                    ours.append(best_time(lambda v=volume: physics.solve(v, axes=[0])[0], max(repeats, 2)))
                    if "taufactor" in anchors:
                        theirs.append(anchor("taufactor", volume, repeats))
                seconds, result = min(ours, key=lambda pair: pair[0])
                row.update(ours_s=seconds, iterations=result.iterations, ours_sigma=result.relative_conductivity)
                if theirs:
                    seconds, sigma = min(theirs, key=lambda pair: pair[0])
                    row.update(taufactor_s=seconds, taufactor_sigma=sigma)
                if "porespy" in anchors:
                    seconds, sigma = anchor("porespy", volume, 1)
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
        per_iteration = np.log([statistics.median([r["ours_s"] / max(r["iterations"], 1) for r in rows
                                                   if r["size"] == s]) for s in sizes])
        print("cost growth {}^3 -> {}^3: time ~ voxels^{:.2f} (1.00 = linear); time per CG iteration ~ voxels^{:.2f} "
              "(the rest is the growth in iterations)".format(sizes[0], sizes[-1], exponent,
                                                               float(np.polyfit(voxels, per_iteration, 1)[0])))
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
    from conductivity_tf.keras_compat import keras, tf

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
    batch = np.stack(volumes)      # uint8 labels, as the generators and TIFF stacks give them
    infer = {}                     # precision -> function predicting the batch
    infer_checked = infer_full = None
    if args.model:
        from conductivity_tf.keras_compat import tf

        predictors = {"fp32": Predictor(args.model, "fp32")}
        if predictors["fp32"].has_bfloat16:
            predictors["bf16"] = Predictor(args.model, "bf16")
        chosen = resolve_precision("auto", "bf16" in predictors, tf)     # what predict picks here by default
        if predictors["fp32"].size != size:
            raise UserError("--model takes {0}^3 volumes; run with --size {0}".format(predictors["fp32"].size))
        for precision, predictor in predictors.items():
            infer[precision] = functools.partial(predictor, batch, batch_size=len(batch))
        infer_checked = functools.partial(predictors[chosen], batch, batch_size=len(batch), zero_without_path=True)
        infer_full = functools.partial(predictors[chosen].predict, batch, batch_size=len(batch))
        which = args.model
    else:
        from conductivity_tf.keras_compat import tf

        cfg = config_lib.load_config()
        model = build_model(cfg.model, size, 3)
        data = tf.constant(batch[..., None].astype("float32"))

        def predicting(served):
            serve = tf.function(lambda x: served(x, training=False))
            return lambda: serve(data).numpy()

        for precision, policy in (("fp32", "float32"), ("bf16", "mixed_bfloat16")):
            # as exported: batch norms folded, one copy per precision
            infer[precision] = predicting(inference_copy(model, cfg.model, policy=policy))
        chosen = resolve_precision("auto", True, tf)
        which = "default architecture as exported (untrained weights: the time does not depend on them)"
    rows = [{"method": "physics solver, 3 axes", "seconds_per_volume": solver, "min": min(solver_times),
             "max": max(solver_times)}]
    cnn = {}
    timed = [("CNN {}, batches of {}".format(p, len(batch)), p, fn) for p, fn in infer.items()]
    if infer_checked is not None:
        timed.append(("CNN {}, batches of {}, exact zeros without a path".format(chosen, len(batch)), "checked",
                      infer_checked))
        timed.append(("CNN {}, batches of {}, with uncertainty and training-domain check (predict's output)".format(
            chosen, len(batch)), "full", infer_full))
    for method, key, fn in timed:
        median, low, high = windows_throughput(fn, len(batch), windows=5, steps_per_window=2, warmup=1)
        cnn[key] = 1.0 / median
        rows.append({"method": method, "seconds_per_volume": cnn[key], "min": 1.0 / high, "max": 1.0 / low})
    print("model: {}".format(which))
    print(markdown_table(rows, ["method", "seconds_per_volume", "min", "max"]))
    if args.csv:
        write_csv(args.csv, rows, ["method", "seconds_per_volume", "min", "max"])
    print()
    for precision in infer:
        print("CNN inference in {} is {:.0f}x faster per {}^3 volume than the solver (all three axes){}".format(
            precision, solver / cnn[precision], size, "  <- predict's default on this machine"
            if precision == chosen else ""))
    if "checked" in cnn:
        print("with --zero-without-path (cluster labelling per volume): {:.0f}x faster than the solver".format(
            solver / cnn["checked"]))
        print("predict's output (values, uncertainty, training-domain check): {:.0f}x faster than the solver".format(
            solver / cnn["full"]))
    if args.tiles:
        if not args.model:
            raise UserError("--tiles measures a trained model; add --model RUN_DIR")
        tile_report(predictors[chosen], args.tiles, args.csv)
    return 0


def tile_report(predictor, paths, csv_path=None):
    """The model on tiles of third-party volumes (``real_structures``): the table per volume-phase, the
    --max-error trade-off curve as a table and a PNG."""

    groups = []
    for path in paths:
        say("labelling the {}^3 tiles of {} with the solver (each phase conducting in turn)".format(
            predictor.size, path))
        groups += real_structures.phase_tiles(path, predictor.size)
    table, curve = real_structures.measure(predictor, groups)
    columns = ["volume", "phase", "tiles", "values", "flagged", "mape", "median_ape", "r2", "coverage_90",
               "spearman_error_uncertainty"]
    print()
    print("Pure prediction on tiles of third-party volumes (percolating values; coverage of the ~90 % interval):")
    print(markdown_table(table, [c for c in columns if any(c in row for row in table)]))
    print()
    print("--max-error trade-off (the solver answers where the model is unsure or outside its domain):")
    curve_columns = ["max_error", "solved_fraction", "mape", "median_ape", "r2", "seconds_per_tile", "speedup"]
    print(markdown_table(curve, curve_columns))
    stem = os.path.splitext(csv_path)[0] if csv_path else os.path.join("benchmark_results", "surrogate")
    if csv_path:
        write_csv(stem + "_tiles.csv", table, [c for c in columns if any(c in row for row in table)])
        write_csv(stem + "_tradeoff.csv", curve, curve_columns)
    figure = plots.tradeoff_plot(stem + "_tradeoff.png", curve)
    print("trade-off figure: {}".format(figure))


# ---------------------------------------------------------------------------------------------
# train suite: one child process per configuration (a fresh TensorFlow each: devices, precision
# policy and memory peaks are per configuration), then the reference comparisons in one process


TRAIN_COLUMNS = ["name", "kind", "replicas", "pipeline_stages", "gradient_accumulation", "micro_batch",
                 "global_batch", "precision", "size", "status", "first_step_s", "samples_per_s",
                 "min_samples_per_s", "max_samples_per_s", "step_latency_ms", "peak_memory_mb", "memory_source",
                 "train_gflop_per_sample", "peak_tflops", "peak_source", "utilisation", "device"]

# Graphcore's published peak arithmetic per IPU (TFLOP/s): GC200 (IPU-M2000, Colossus Mk2) and Bow (Bow-2000)
IPU_PEAK_TFLOPS = {("gc200", "fp16"): 250.0, ("gc200", "fp32"): 62.5, ("bow", "fp16"): 350.0, ("bow", "fp32"): 87.5}
ROW_MARK = "BENCHMARK-ROW "


def _bench_dataclasses():
    from dataclasses import dataclass, field
    from typing import Any, Dict, List

    @dataclass
    class Run:
        name: str = ""
        kind: str = "cpu"
        replicas: int = 1
        pipeline_stages: int = 1
        gradient_accumulation: int = 1
        micro_batch: int = 8
        precision: str = "fp32"
        size: int = 32
        steps_per_execution: int = 0
        ipu_model: str = "gc200"
        quick: bool = False
        model: Dict[str, Any] = field(default_factory=dict)

    @dataclass
    class Reference:
        size: int = 32
        micro_batch: int = 8
        accumulation: int = 4
        windows: int = 7
        steps_per_window: int = 20

    @dataclass
    class BenchFile:
        defaults: Dict[str, Any] = field(default_factory=dict)
        windows: int = 5
        steps_per_window: int = 6
        warmup_steps: int = 2
        reference: Reference = field(default_factory=Reference)
        runs: List[Any] = field(default_factory=list)

    return Run, BenchFile


def load_benchmarks(path=None):
    """The benchmark file as (settings, [runs as dicts]); UserError naming the file and key on any problem."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException


    path = path or os.path.join(CONFIG_DIR, "benchmarks.yaml")
    if not os.path.isfile(path):
        raise UserError("benchmark configuration {} not found; give a YAML file like "
                        "conductivity_tf/configs/benchmarks.yaml".format(path))
    Run, BenchFile = _bench_dataclasses()
    try:
        settings = OmegaConf.merge(OmegaConf.structured(BenchFile), OmegaConf.load(path))
        runs = []
        for i, item in enumerate(settings.runs):
            run = OmegaConf.merge(OmegaConf.structured(Run), settings.defaults, item)
            if not run.name:
                raise UserError("{}: runs[{}] has no name; give every run a name".format(path, i))
            runs.append(OmegaConf.to_container(run))
    except OmegaConfBaseException as err:
        raise UserError("{}: {} (key {})".format(path, str(err).splitlines()[0], getattr(err, "full_key", "?")))
    for run in runs:
        if run["kind"] not in ("cpu", "gpu", "ipu"):
            raise UserError("{}: run {} has kind={}; use cpu, gpu or ipu".format(path, run["name"], run["kind"]))
        if run["ipu_model"] not in ("gc200", "bow"):
            raise UserError("{}: run {} has ipu_model={}; use gc200 or bow".format(path, run["name"],
                                                                                  run["ipu_model"]))
        for key in ("replicas", "pipeline_stages", "gradient_accumulation", "micro_batch", "size"):
            if run[key] < 1:
                raise UserError("{}: run {} has {}={}; it must be >= 1".format(path, run["name"], key, run[key]))
    names = [r["name"] for r in runs]
    if len(set(names)) != len(names):
        raise UserError("{}: run names must be unique".format(path))
    return OmegaConf.to_container(settings), runs


def run_training_config(run):
    """The training configuration (config.Config) a benchmark run describes; its checks apply."""

    cpu_pipeline = run["kind"] == "cpu" and run["pipeline_stages"] > 1
    kind = "ipu" if cpu_pipeline else run["kind"]
    overrides = ["data.size={}".format(run["size"]), "hardware.kind={}".format(kind),
                 "train.batch_size={}".format(_global_batch(run)),
                 "hardware.gradient_accumulation={}".format(run["gradient_accumulation"]),
                 "hardware.pipeline_stages={}".format(run["pipeline_stages"]),
                 "train.precision={}".format(run["precision"]), "train.tensorboard=false",
                 "hardware.steps_per_execution={}".format(run["steps_per_execution"])]
    if kind == "ipu":
        overrides.append("hardware.ipus={}".format(_ipus(run)))
        overrides.append("hardware.replicas={}".format(run["replicas"]))
    elif run["replicas"] > 1:
        prefix = "cpu" if kind == "cpu" else "gpu"
        overrides.append("hardware.devices=[{}]".format(",".join(
            "/{}:{}".format(prefix, i) for i in range(run["replicas"]))))
    for key, value in run["model"].items():
        overrides.append("model.{}={}".format(key, json.dumps(value)))
    return config_lib.load_config(None, overrides)


def _ipus(run):
    return pipeline_plan.next_power_of_two(run["pipeline_stages"]) * run["replicas"]


def _synthetic(tf, count, size, outputs, seed=0):
    """Binary volumes and labels in memory: every configuration is fed the same data, with no input cost."""
    rng = np.random.default_rng(seed)
    x = (rng.random((count, size, size, size, 1)) < 0.5).astype("float32")
    y = (rng.random((count, outputs)) * 0.3).astype("float32")
    return tf.constant(x), tf.constant(y)


def _clock(keras):
    class Clock(keras.callbacks.Callback):
        """Wall time at the end of every step (or execution of several steps); logs are synchronised."""

        def on_train_begin(self, logs=None):
            self.times = [time.perf_counter()]

        def on_train_batch_end(self, batch, logs=None):
            self.times.append(time.perf_counter())

    return Clock()


def matmul_peak(tf, device, dtype, size=None):
    """Best sustained matrix-multiply FLOP/s on ``device`` (the probe utilisation is measured against)."""
    size = size or (8192 if "GPU" in device.upper() else 2048)
    with tf.device(device):
        a = tf.random.normal((size, size), dtype=tf.float32)
        a = tf.cast(a, dtype)

        @tf.function
        def product(m):
            return tf.reduce_sum(tf.cast(tf.matmul(m, m)[:1, :1], tf.float32))

        product(a).numpy()
        best = math.inf
        for _ in range(5):
            t0 = time.perf_counter()
            product(a).numpy()
            best = min(best, time.perf_counter() - t0)
    return 2.0 * size ** 3 / best


def _peak_memory(tf, kind, replicas):
    if kind == "gpu":
        try:
            peak = sum(tf.config.experimental.get_memory_info("GPU:{}".format(i))["peak"] for i in range(replicas))
            return peak / 1e6, "TensorFlow GPU allocator peak"
        except (ValueError, RuntimeError):
            return None, "not reported"
    if kind == "ipu":
        return None, "not reported by TensorFlow (PopVision Graph Analyser)"
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, "process peak RSS"


def _windows(times, samples_per_tick, warmup, ticks_per_window, windows):
    rates = []
    for w in range(windows):
        start = warmup + w * ticks_per_window
        rates.append(samples_per_tick * ticks_per_window / (times[start + ticks_per_window] - times[start]))
    return rates


def _global_batch(run):
    return global_batch_of(run["micro_batch"], run["gradient_accumulation"], run["replicas"])


def _row_head(run):
    """The columns of a row that describe its configuration."""
    row = {k: run[k] for k in ("name", "kind", "replicas", "pipeline_stages", "gradient_accumulation",
                               "micro_batch", "precision", "size")}
    row["global_batch"] = _global_batch(run)
    return row


def measure_run(run, settings):
    """Time one configuration; returns its CSV row."""
    from conductivity_tf.keras_compat import keras, tf

    cfg = run_training_config(run)
    row = _row_head(run)
    windows, per_window, warmup = settings["windows"], settings["steps_per_window"], settings["warmup_steps"]
    if run["kind"] == "cpu" and run["pipeline_stages"] > 1:
        return measure_cpu_pipeline(run, cfg, row, windows, per_window, warmup)
    session = train_lib.setup(cfg, 10 ** 7)
    steps = session.steps
    spe = steps.steps_per_execution
    ticks_per_window = max(1, -(-per_window // spe))
    ticks = warmup + windows * ticks_per_window
    x, y = _synthetic(tf, steps.dataset_batch * 4, run["size"], len(cfg.data.axes))
    ds = tf.data.Dataset.from_tensor_slices((x, y)).repeat().batch(steps.dataset_batch, drop_remainder=True)
    ds = ds.prefetch(tf.data.AUTOTUNE)
    clock = _clock(keras)
    with session.hardware.strategy.scope():
        session.model.fit(ds, epochs=1, steps_per_epoch=steps.fit_steps(ticks * spe), callbacks=[clock], verbose=0)
    samples_per_tick = steps.samples_per_step * spe
    rates = _windows(clock.times, samples_per_tick, warmup, ticks_per_window, windows)
    row.update(status="ok", first_step_s=clock.times[1] - clock.times[0], samples_per_s=statistics.median(rates),
               min_samples_per_s=min(rates), max_samples_per_s=max(rates))
    # one optimizer step = one global batch
    row["step_latency_ms"] = 1000.0 * row["global_batch"] / row["samples_per_s"]
    row["peak_memory_mb"], row["memory_source"] = _peak_memory(tf, session.hardware.kind, run["replicas"])
    _utilisation(tf, row, run, session.forward_flops, session.policy, session.hardware)
    return row


def _utilisation(tf, row, run, forward_flops, policy, hardware):
    row["train_gflop_per_sample"] = 3.0 * forward_flops / 1e9  # forward + backward (~2x forward)
    kind = hardware.kind if hardware is not None else "cpu"
    if kind == "ipu":
        precision = "fp16" if run["precision"] in ("fp16", "mixed_float16") else "fp32"
        per_ipu = IPU_PEAK_TFLOPS[(run["ipu_model"], precision)]
        row["peak_tflops"] = per_ipu * _ipus(run)
        row["peak_source"] = "{} {} published peak x {} IPUs".format(run["ipu_model"].upper(), precision, _ipus(run))
        row["device"] = "{} x{}".format(run["ipu_model"].upper(), _ipus(run))
    else:
        dtype = {"mixed_float16": tf.float16, "mixed_bfloat16": tf.bfloat16}.get(policy, tf.float32)
        devices = 1
        device = "/CPU:0"
        if kind == "gpu":
            devices = max(1, run["replicas"])
            device = "/GPU:0"
            row["device"] = tf.config.experimental.get_device_details(
                tf.config.list_physical_devices("GPU")[0]).get("device_name", "GPU")
        else:
            row["device"] = machine_description()["cpu"]
        peak = matmul_peak(tf, device, dtype) * devices
        row["peak_tflops"] = peak / 1e12
        row["peak_source"] = "matmul probe ({}, {}{})".format(device, dtype.name,
                                                             " x {} GPUs".format(devices) if devices > 1 else "")
    row["utilisation"] = row["train_gflop_per_sample"] * 1e9 * row["samples_per_s"] / (row["peak_tflops"] * 1e12)


def measure_cpu_pipeline(run, cfg, row, windows, per_window, warmup):
    """The IPU pipeline's stages on logical CPU devices (the CPU pipeline reference), as one compiled step."""
    from conductivity_tf import keras_compat
    from conductivity_tf.keras_compat import keras, tf

    stages = run["pipeline_stages"]
    configure_logical_cpus(tf, stages)
    keras_compat.set_random_seed(cfg.train.seed)
    model = build_model(cfg.model, cfg.data.size, len(cfg.data.axes))
    plan = pipeline_plan.make_plan(cfg, model)
    if plan.violations:
        raise UserError(plan.violations[0])
    devices = ["/cpu:{}".format(i) for i in range(stages)]
    optimizer = keras.optimizers.Adam(1e-3)
    pipe = pipeline_plan.CpuPipeline(model, plan, devices, keras.losses.MeanSquaredError(), optimizer,
                                     cfg.hardware.reduction)
    x, y = _synthetic(tf, plan.steps.global_batch, run["size"], len(cfg.data.axes))

    @tf.function
    def step():
        grads, _ = pipe.gradients_graph(x, y)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return tf.add_n([tf.reduce_sum(g) for g in grads])

    times = [time.perf_counter()]
    for _ in range(warmup + windows * per_window):
        step().numpy()
        times.append(time.perf_counter())
    rates = _windows(times, plan.steps.global_batch, warmup, per_window, windows)
    row.update(status="ok (CPU pipeline reference on {} logical CPU devices)".format(stages),
               first_step_s=times[1] - times[0], samples_per_s=statistics.median(rates),
               min_samples_per_s=min(rates), max_samples_per_s=max(rates))
    row["step_latency_ms"] = 1000.0 * row["global_batch"] / row["samples_per_s"]
    row["peak_memory_mb"], row["memory_source"] = _peak_memory(tf, "cpu", 1)
    _utilisation(tf, row, run, sum(c.flops for c in pipeline_plan.layer_costs(model)), "float32", None)
    return row


def measure_reference(settings):
    """Interleaved windows in one process: our training step vs a bare model.fit, and k micro-batches
    accumulated vs one batch of the same global size. Returns rows."""
    from conductivity_tf.keras_compat import keras, tf

    ref = settings["reference"]
    size, micro, k, windows = ref["size"], ref["micro_batch"], ref["accumulation"], ref["windows"]
    per_window = ref["steps_per_window"]
    global_batch = global_batch_of(micro, k, 1)

    def ours(accumulation):
        cfg = config_lib.load_config(None, ["data.size={}".format(size), "hardware.kind=cpu",
                                            "train.batch_size={}".format(global_batch),
                                            "hardware.gradient_accumulation={}".format(accumulation),
                                            "train.tensorboard=false"])
        return train_lib.setup(cfg, 10 ** 7).model

    def bare():
        cfg = config_lib.load_config(None, ["data.size={}".format(size)])
        model = build_model(cfg.model, size, len(cfg.data.axes))
        model.compile(optimizer=keras.optimizers.Adam(cfg.train.learning_rate), loss="mse")
        return model

    x, y = _synthetic(tf, global_batch * 4, size, 3)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).repeat().batch(global_batch, drop_remainder=True)
    ds = ds.prefetch(tf.data.AUTOTUNE)
    contenders = {"ours": ours(1), "bare": bare(), "accumulated": ours(k)}

    def window(model):
        clock = _clock(keras)
        model.fit(ds, epochs=1, steps_per_epoch=per_window + 1, callbacks=[clock], verbose=0)
        # from the end of the first step: fit's own set-up is outside the window
        return global_batch * per_window / (clock.times[-1] - clock.times[1])

    for model in contenders.values():  # tracing and warm-up
        window(model)
    rates = {name: [] for name in contenders}
    for _ in range(windows):
        for name, model in contenders.items():
            rates[name].append(window(model))
    labels = {"ours": "our training step (accumulation 1)", "bare": "bare model.fit",
              "accumulated": "our training step, {} micro-batches of {} accumulated".format(k, micro)}
    rows = []
    for name, values in rates.items():
        rows.append({"name": "reference: " + labels[name], "kind": "cpu", "replicas": 1, "pipeline_stages": 1,
                     "gradient_accumulation": k if name == "accumulated" else 1,
                     "micro_batch": micro if name == "accumulated" else global_batch, "global_batch": global_batch,
                     "precision": "fp32", "size": size, "status": "ok (interleaved windows)",
                     "samples_per_s": statistics.median(values), "min_samples_per_s": min(values),
                     "max_samples_per_s": max(values),
                     "step_latency_ms": 1000.0 * global_batch / statistics.median(values)})
    return rows


def _child(args_list):
    """Run this module in a child process; returns (row dicts, error line or None)."""
    import subprocess

    env = dict(os.environ)
    proc = subprocess.run([sys.executable, "-m", "conductivity_tf.benchmark"] + args_list, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)
    rows = [json.loads(line[len(ROW_MARK):]) for line in proc.stdout.splitlines() if line.startswith(ROW_MARK)]
    if proc.returncode != 0 or not rows:
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        errors = [line for line in lines if line.startswith("conductivity_tf: error:")]
        message = (errors or lines or ["exit status {}".format(proc.returncode)])[-1]
        return rows, message.replace("conductivity_tf: error: ", "")
    return rows, None


def run_train_suite(args):
    settings, runs = load_benchmarks(args.config)
    if args.one:
        run = json.loads(args.one)
        print(ROW_MARK + json.dumps(measure_run(run, settings)), flush=True)
        return 0
    if args.reference:
        for row in measure_reference(settings):
            print(ROW_MARK + json.dumps(row), flush=True)
        return 0
    csv_path = args.csv or os.path.join("benchmark_results", "train.csv")
    os.makedirs(os.path.dirname(os.path.abspath(csv_path)), exist_ok=True)
    chosen = [r for r in runs if r["quick"] or not args.quick]
    if args.only:
        wanted = set(args.only.split(","))
        chosen = [r for r in runs if r["name"] in wanted]
        if not chosen:
            raise UserError("--only {}: no such run in the benchmark file; runs are {}".format(
                args.only, ", ".join(r["name"] for r in runs)))
    from tqdm import tqdm

    config_args = ["--config", args.config] if args.config else []
    rows = []
    with tqdm(total=len(chosen) + 1, desc="train benchmark", unit="run", file=sys.stderr) as bar:
        for run in chosen:
            bar.set_postfix_str(run["name"])
            got, error = _child(["train", "--one", json.dumps(run)] + config_args)
            if error:
                rows.append(dict(_row_head(run), status="skipped: " + error))
            else:
                rows.extend(got)
            bar.update()
        bar.set_postfix_str("reference comparisons")
        reference, error = _child(["train", "--reference"] + config_args)
        if error:
            raise UserError("the reference comparisons failed: {}".format(error))
        bar.update()
    rows.extend(reference)
    table = markdown_table(rows, TRAIN_COLUMNS)
    print(table)
    write_csv(csv_path, rows, TRAIN_COLUMNS)
    stem = os.path.splitext(csv_path)[0]

    write_text(stem + ".md", "Machine: {}\n\n{}\n".format(
        ", ".join("{}={}".format(k, v) for k, v in machine_description().items()), table))
    pngs = throughput_plots(read_csv_rows([csv_path]), stem)
    print()
    print("wrote {}, {}.md, {}".format(csv_path, stem, ", ".join(pngs)))
    by_name = {r["name"].split(": ", 1)[1]: r["samples_per_s"] for r in reference}
    k = settings["reference"]["accumulation"]
    ours = by_name["our training step (accumulation 1)"]
    accumulated = [v for n, v in by_name.items() if "accumulated" in n][0]
    print("our training step / bare model.fit: {:.3f} (median of {} interleaved windows each, same network and data)"
          .format(ours / by_name["bare model.fit"], settings["reference"]["windows"]))
    print("gradient accumulation ({} micro-batches of {}) / one batch of {}: {:.3f}".format(
        k, settings["reference"]["micro_batch"], k * settings["reference"]["micro_batch"], accumulated / ours))
    return 0


def read_csv_rows(paths):
    """Rows of benchmark CSVs (numbers converted), each tagged with its file."""
    rows = []
    for path in paths:
        if not os.path.isfile(path):
            raise UserError("{} not found; give CSV files written by 'benchmark train --csv'".format(path))
        with open(path, newline="") as handle:
            reader = csv.DictReader(handle)
            if not reader.fieldnames or "samples_per_s" not in reader.fieldnames:
                raise UserError("{} is not a train benchmark CSV (no samples_per_s column)".format(path))
            for raw in reader:
                row = {}
                for key, value in raw.items():
                    try:
                        row[key] = float(value) if value not in ("", None) else None
                    except ValueError:
                        row[key] = value
                row["source"] = path
                rows.append(row)
    return rows


def run_compare(args):

    if not args.files:
        raise UserError("compare needs CSV files: python -m conductivity_tf.benchmark compare A.csv B.csv")
    rows = read_csv_rows(args.files)
    stem = os.path.splitext(args.out)[0]
    os.makedirs(os.path.dirname(os.path.abspath(stem)) or ".", exist_ok=True)
    pngs = throughput_plots(rows, stem) + [comparison_plot(rows, stem + "_by_configuration.png")]
    ok = [r for r in rows if r.get("samples_per_s")]
    columns = ["machine", "device", "name", "global_batch", "samples_per_s", "utilisation"]
    print(markdown_table(sorted(ok, key=lambda r: -r["samples_per_s"]), columns))
    print()
    print("wrote {}".format(", ".join(pngs)))
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
        if name == "compare":
            p.add_argument("files", nargs="*", metavar="CSV", help="CSV files from 'benchmark train' runs")
            p.add_argument("--out", default=os.path.join("benchmark_results", "compare.png"),
                           help="plot file stem (default benchmark_results/compare.png)")
            continue
        p.add_argument("--quick", action="store_true", help="fewer and smaller cases (minutes)")
        p.add_argument("--csv", help="write the rows (with a machine description) to this CSV file" + (
            "; the Markdown table and the PNG plots go beside it (default benchmark_results/train.csv)"
            if name == "train" else ""))
        if name == "train":
            p.add_argument("--config", help="benchmark configurations (default: conductivity_tf/configs/"
                                            "benchmarks.yaml)")
            p.add_argument("--only", help="comma-separated run names to time (default: all, or the quick ones)")
            p.add_argument("--one", help=argparse.SUPPRESS)
            p.add_argument("--reference", action="store_true", help=argparse.SUPPRESS)
        if name == "surrogate":
            p.add_argument("--model", help="a run directory to time (default: the default architecture)")
            p.add_argument("--size", type=int, default=64, help="volume edge (default 64)")
            p.add_argument("--tiles", nargs="+", metavar="VOLUME",
                           help="also measure --model on tiles of these volumes (.npy, TIFF or a .zip of one), "
                                "each phase conducting in turn: errors, calibration and the --max-error trade-off")
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.suite:
        parser.print_help()
        return 2
    if getattr(args, "csv", None) and os.path.isdir(args.csv):
        raise UserError("--csv {} is a directory; give a file name such as results.csv".format(args.csv))
    if args.suite == "solver":
        return run_solver_suite(args)
    if args.suite == "input":
        return run_input_suite(args)
    if args.suite == "surrogate":
        return run_surrogate_suite(args)
    if args.suite == "train":
        return run_train_suite(args)
    return run_compare(args)


def cli():
    run_cli(main)


if __name__ == "__main__":
    cli()
