"""Predict sigma_eff/sigma_0 of volumes with a trained model:
``python -m conductivity_tf.predict [--model DIR] VOLUME ... [--json]``."""

import argparse

from conductivity_tf.errors import not_available, run_cli


def build_parser():
    from conductivity_tf.volumes import add_volume_arguments

    parser = argparse.ArgumentParser(
        prog="python -m conductivity_tf.predict",
        description="Predict the relative effective conductivity of voxel volumes with a trained model "
                    "(default: the pretrained model shipped with the package).")
    parser.add_argument("volumes", nargs="+", metavar="VOLUME", help=".npy, .tif/.tiff or raw binary")
    parser.add_argument("--model", help="a run directory or exported SavedModel (default: pretrained)")
    parser.add_argument("--batch-size", type=int, default=8, help="volumes per batch")
    parser.add_argument("--json", action="store_true", help="one JSON object per volume and line")
    add_volume_arguments(parser)
    return parser


def main(argv=None):
    build_parser().parse_args(argv)
    return not_available("conductivity_tf.predict", "prediction (no trained model in this version)")


def cli():
    run_cli(main)


if __name__ == "__main__":
    cli()
