"""``python -m conductivity_tf.benchmark SUITE [--quick] [--csv OUT]``."""

import argparse
import os

from conductivity_tf.benchmark.solver import run_solver_suite
from conductivity_tf.benchmark.surrogate import run_surrogate_suite
from conductivity_tf.benchmark.training import run_compare, run_input_suite, run_train_suite
from conductivity_tf.benchmark.whole import run_whole_suite
from conductivity_tf.errors import UserError, run_cli

SUITES = {
    "solver": "our conduction solver against TauFactor and PoreSpy on the same volumes",
    "input": "input pipeline throughput against training throughput",
    "train": "training throughput per hardware configuration (benchmarks.yaml)",
    "surrogate": "CNN inference against the physics solver",
    "whole": "whole volumes: the model's windows combined by physics against the full solve (time, memory, error)",
    "compare": "plot benchmark CSVs from several machines against each other",
}


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
        if name == "solver":
            p.add_argument("--memory", action="store_true",
                           help="peak resident memory per voxel and time per direction of the binary fine level "
                                "beside the general layout (128^3, 256^3, 500^3; --quick: 128^3, 192^3)")
            p.add_argument("--volumes", nargs="+", metavar="VOLUME",
                           help="with --memory: also these volumes (.npy, TIFF or a .zip of one; non-zero voxels "
                                "conduct)")
            p.add_argument("--axis", default="all",
                           help="with --memory: the transport axes to solve, 0, 1, 2 or all (default all)")
            p.add_argument("--one", help=argparse.SUPPRESS)
        if name in ("whole", "surrogate"):
            whole = name == "whole"
            p.add_argument("--model", help="a run directory to time (default: {})".format(
                "the pretrained model" if whole else "the default architecture"))
            p.add_argument("--size", type=int, default=256 if whole else 64, help="edge of the generated volumes "
                                                                                  "(default {})".format(
                                                                                      256 if whole else 64))
        if name == "whole":
            p.add_argument("--volumes", nargs="+", metavar="VOLUME",
                           help="measure these volumes (.npy, TIFF or a .zip of one; each phase conducting in turn) "
                                "instead of one generated volume per family")
            p.add_argument("--repeats", type=int, default=3,
                           help="time the full solve and each of the model's runs this many times in its process "
                                "and take the median (default 3: this machine's noise spikes single runs)")
            p.add_argument("--one", help=argparse.SUPPRESS)
        if name == "surrogate":
            p.add_argument("--tiles", nargs="+", metavar="VOLUME",
                           help="also measure --model on tiles of these volumes (.npy, TIFF or a .zip of one), "
                                "each phase conducting in turn: errors, calibration and the --max-error trade-off")
            p.add_argument("--porespy", action="store_true",
                           help="also measure --model on 24 volumes from PoreSpy's generators (needs the [bench] "
                                "extra): errors and calibration")
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
    if args.suite == "whole":
        return run_whole_suite(args)
    return run_compare(args)


def cli():
    run_cli(main)
