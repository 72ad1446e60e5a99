"""Benchmarks: ``python -m conductivity_tf.benchmark SUITE`` with suites solver, input, train, surrogate,
and ``compare`` to draw CSVs from different machines against each other."""

import argparse

from conductivity_tf.errors import not_available, run_cli

SUITES = {
    "solver": "our conduction solver against TauFactor and PoreSpy on the same volumes",
    "input": "input pipeline throughput against training throughput",
    "train": "training throughput per hardware configuration (benchmarks.yaml)",
    "surrogate": "CNN inference against the physics solver",
    "compare": "plot benchmark CSVs from several machines against each other",
}


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m conductivity_tf.benchmark",
                                     description="Measure speed side by side, in one run.")
    sub = parser.add_subparsers(dest="suite", metavar="SUITE")
    for name, help_ in SUITES.items():
        sub.add_parser(name, help=help_, description=help_)
    return parser


def main(argv=None):
    parser = build_parser()
    args, _ = parser.parse_known_args(argv)
    if not args.suite:
        parser.print_help()
        return 2
    return not_available("conductivity_tf.benchmark", "the '{}' suite".format(args.suite))


def cli():
    run_cli(main)


if __name__ == "__main__":
    cli()
