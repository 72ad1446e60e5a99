"""Train the 3-D CNN: ``python -m conductivity_tf.train [--config PRESET|FILE] [section.key=value ...]``.

The recipe: resolve the configuration -> open the dataset -> choose the hardware strategy ->
build the model inside its scope -> fit -> write the run directory (resolved config, checkpoints,
logs, metrics, parity plot, exported SavedModel).
"""

import argparse
import os

from conductivity_tf import config as config_lib
from conductivity_tf.errors import not_available, run_cli


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m conductivity_tf.train",
        description="Train the conductivity CNN. Settings come from configs/default.yaml, then an optional "
                    "--config preset or YAML file, then section.key=value overrides.",
        epilog="Examples:\n"
               "  python -m conductivity_tf.train                                   # the embedded default run\n"
               "  python -m conductivity_tf.train train.epochs=3 data.path=my_dataset\n"
               "  python -m conductivity_tf.train --config pretrained64 --out runs/p64\n"
               "  python -m conductivity_tf.train hardware.kind=ipu hardware.ipus=4 "
               "hardware.pipeline_stages=2 --plan-only\n\n"
               "Presets: {}\n\nConfiguration sections and keys (default value, meaning):\n{}".format(
                   ", ".join(config_lib.list_presets()), config_lib.describe_config()),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", metavar="section.key=value", help="configuration overrides")
    parser.add_argument("--config", help="a preset name or a YAML file layered over the defaults")
    parser.add_argument("--out", help="run directory (same as train.out_dir=...)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved configuration and exit")
    parser.add_argument("--plan-only", action="store_true",
                        help="with hardware.kind=ipu: print the pipeline plan and exit (any machine)")
    return parser


def resolve(args):
    overrides = list(args.overrides)
    if args.out:
        overrides.append("train.out_dir={}".format(args.out))
    return config_lib.load_config(args.config, overrides)


def main(argv=None):
    args = build_parser().parse_args(argv)
    cfg = resolve(args)
    if args.print_config:
        print(config_lib.config_to_yaml(cfg), end="")
        return 0
    if args.plan_only:
        return not_available("conductivity_tf.train", "the IPU pipeline plan (--plan-only)")
    os.environ.setdefault("PYTHONHASHSEED", str(cfg.train.seed))
    return not_available("conductivity_tf.train", "the training loop (configuration checked: valid)")


def cli():
    run_cli(main)


if __name__ == "__main__":
    cli()
