"""Build, inspect and read datasets of labelled microstructures:
``python -m conductivity_tf.dataset {build,import,merge,info,verify} ...``."""

import argparse

from conductivity_tf.errors import not_available, run_cli

COMMANDS = {
    "build": "generate and label samples into TFRecord shards",
    "import": "cut tomograms into cubes and label them",
    "merge": "join the manifests of shards built separately",
    "info": "summarise a dataset",
    "verify": "check checksums, record counts and labels",
}


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m conductivity_tf.dataset",
                                     description="Datasets of labelled microstructures.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, help_ in COMMANDS.items():
        sub.add_parser(name, help=help_, description=help_)
    return parser


def main(argv=None):
    parser = build_parser()
    args, _ = parser.parse_known_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    return not_available("conductivity_tf.dataset", "'dataset {}'".format(args.command))


def cli():
    run_cli(main)


if __name__ == "__main__":
    cli()
