"""``benchmark surrogate``: batched CNN inference against the physics solver on the same 64^3 volumes, and (with
``--tiles``) a trained model on tiles of third-party volumes: errors, calibration, the --max-error trade-off."""

import functools
import os
import statistics
import time

import numpy as np

from conductivity_tf import config as config_lib
from conductivity_tf import microstructure, physics, plots, real_structures
from conductivity_tf.benchmark.common import markdown_table, say, windows_throughput, write_csv
from conductivity_tf.errors import UserError
from conductivity_tf.model import build_model, inference_copy, network_input
from conductivity_tf.predict import Predictor
from conductivity_tf.serving import resolve_precision


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
        data = tf.constant(network_input(batch, cfg.model.inputs))

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
        # what the correction, the uncertainty and the domain check cost besides the network
        timed.append(("of it: the descriptors alone (domain.describe_many)", "descriptors",
                      functools.partial(predictors[chosen].describe, batch)))
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
    if args.porespy:
        if not args.model:
            raise UserError("--porespy measures a trained model; add --model RUN_DIR")
        porespy_report(predictors[chosen], args.csv)
    if args.tiles:
        if not args.model:
            raise UserError("--tiles measures a trained model; add --model RUN_DIR")
        tile_report(predictors[chosen], args.tiles, args.csv)
    return 0


_OVER = ("MAPE, median APE and R² over the percolating values; coverage of the ~90 % interval and Spearman "
         "correlation of |error| with the uncertainty over all values")
_TABLE_COLUMNS = ["volume", "phase", "tiles", "values", "flagged", "mape", "median_ape", "r2", "coverage_90",
                  "spearman_error_uncertainty"]


def porespy_report(predictor, csv_path=None):
    """The model on volumes from PoreSpy's generators (``real_structures.porespy_groups``), pure prediction."""
    say("generating {} PoreSpy volumes of {}^3 and labelling them with the solver".format(
        6 * len(real_structures.PORESPY_KINDS), predictor.size))
    groups = real_structures.porespy_groups(predictor.size)
    table, _ = real_structures.measure(predictor, groups, max_errors=())
    columns = [c for c in _TABLE_COLUMNS if any(c in row for row in table)]
    print()
    print("Pure prediction on PoreSpy's structures ({}):".format(_OVER))
    print(markdown_table(table, columns))
    if csv_path:
        write_csv(os.path.splitext(csv_path)[0] + "_porespy.csv", table, columns)


def tile_report(predictor, paths, csv_path=None):
    """The model on tiles of third-party volumes (``real_structures``): the table per volume-phase, the
    --max-error trade-off curve as a table and a PNG."""
    groups = []
    for path in paths:
        say("labelling the {}^3 tiles of {} with the solver (each phase conducting in turn)".format(
            predictor.size, path))
        groups += real_structures.phase_tiles(path, predictor.size)
    table, curve = real_structures.measure(predictor, groups)
    columns = _TABLE_COLUMNS
    print()
    print("Pure prediction on tiles of third-party volumes ({}):".format(_OVER))
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
