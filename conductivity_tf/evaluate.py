"""Evaluate a trained model on a dataset split:
``python -m conductivity_tf.evaluate --model RUN_DIR [--data DIR] [--split test] [--json]``; with ``--calibrate``
first fits the run's training domain and error model from DIR (the dataset it was trained on) into RUN_DIR, the
error model also from ``--calibration-data DIR ...`` (more datasets' validation splits); the correction from their
train splits and those of ``--correction-data DIR ...``."""

import argparse
import json

from conductivity_tf.errors import UserError, run_cli
from conductivity_tf.predict import ZERO_WITHOUT_PATH_HELP, calibrate, evaluate
from conductivity_tf.serving import PRECISION_HELP, PRECISIONS


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m conductivity_tf.evaluate",
                                     description="R², MAE, RMSE and MAPE of a trained model on a dataset split, "
                                                 "overall and per microstructure family.")
    parser.add_argument("--model", help="run directory or SavedModel (default: the pretrained model)")
    parser.add_argument("--data", default="data/small32", help="dataset directory (default data/small32)")
    parser.add_argument("--split", default="test", choices=["train", "validation", "test"])
    parser.add_argument("--json", action="store_true", help="print the metrics as JSON")
    parser.add_argument("--zero-without-path", action="store_true", help=ZERO_WITHOUT_PATH_HELP)
    parser.add_argument("--precision", default="auto", choices=PRECISIONS, help=PRECISION_HELP)
    parser.add_argument("--calibrate", action="store_true",
                        help="first fit the model's training domain (train split of --data) and the error model of "
                             "its uncertainty (validation split) into its run directory, as training does: for "
                             "runs made before either existed; --data must be the dataset it was trained on")
    parser.add_argument("--calibration-data", nargs="+", default=[], metavar="DIR",
                        help="with --calibrate: fit the error model on these datasets' validation splits too "
                             "(structures unlike the training families teach it where the model is unsure; the "
                             "training domain stays that of --data)")
    parser.add_argument("--correction", action="store_true",
                        help="with --calibrate: also fit the correction of the model's predictions from the volumes' "
                             "paths (train splits of --data and --calibration-data; correction.json), which predict "
                             "then applies; without it a run's correction is removed (the error model is then the "
                             "uncorrected model's)")
    parser.add_argument("--correction-data", nargs="+", default=[], metavar="DIR",
                        help="with --correction: fit the correction on these datasets' train splits too, but not the "
                             "error model on their validation splits (kinds of structure the correction should "
                             "learn that would teach the error model to be surer than it is on others)")
    return parser


def main(argv=None):

    args = build_parser().parse_args(argv)
    if (args.calibration_data or args.correction) and not args.calibrate:
        raise UserError("--{} is used by --calibrate; add --calibrate".format(
            "calibration-data" if args.calibration_data else "correction"))
    if args.correction_data and not args.correction:
        raise UserError("--correction-data is used by --calibrate --correction; add both")
    if args.calibrate:
        calibrate(args.model, args.data, args.precision, args.calibration_data, args.correction,
                  args.correction_data)
    metrics = evaluate(args.model, args.data, args.split, args.zero_without_path, args.precision)
    if args.json:
        print(json.dumps(metrics))
        return 0
    m = metrics["all"]
    print("{} split of {} ({} values, {}): R² {:.4f}  MAE {:.4f}  RMSE {:.4f}  MAPE (percolating) {:.2f} %".format(
        args.split, metrics["dataset"], m["count"], metrics["precision"], m["r2"], m["mae"], m["rmse"],
        m["mape_percolating"] or 0.0))
    for family, fm in metrics["per_family"].items():
        print("  {:20s} R² {:.4f}  MAE {:.4f}".format(family, fm["r2"], fm["mae"]))
    if "calibration" in metrics:
        c = metrics["calibration"]
        print("uncertainty: the stated ~90 % interval holds {:.1%} of the values; Spearman correlation of |error| "
              "and uncertainty {:.2f}".format(c["coverage_90"], c["spearman_error_uncertainty"]))
    return 0


def cli():
    run_cli(main)


if __name__ == "__main__":
    cli()
