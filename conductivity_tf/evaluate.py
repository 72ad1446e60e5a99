"""Evaluate a trained model on a dataset split (``evaluate``), and fit what a run states about trust
(``calibrate``: its training domain, correction and error model):
``python -m conductivity_tf.evaluate --model RUN_DIR [--data DIR] [--split test] [--json]``; with ``--calibrate``
first fits the run's training domain and error model from DIR (the dataset it was trained on) into RUN_DIR, the
error model also from ``--calibration-data DIR ...`` (more datasets' validation splits); the correction from their
train splits and those of ``--correction-data DIR ...``."""

import argparse
import json
import os
import sys

import numpy as np
from tqdm import tqdm

from conductivity_tf import correction as correction_lib
from conductivity_tf import dataset as dataset_lib
from conductivity_tf import domain as domain_lib
from conductivity_tf import uncertainty as uncertainty_lib
from conductivity_tf.errors import UserError, run_cli
from conductivity_tf.metrics import calibration_metrics, per_family, regression_metrics
from conductivity_tf.predict import ZERO_WITHOUT_PATH_HELP, Predictor
from conductivity_tf.serving import PRECISION_HELP, PRECISIONS


def _predictor_for(model_dir, data_path, precision, trusted=True):
    manifest = dataset_lib.load_manifest(data_path)  # the cheap check first
    predictor = Predictor(model_dir, precision, trusted)
    return _manifest_for(predictor, data_path, manifest), predictor


def _manifest_for(predictor, data_path, manifest=None):
    """The manifest of a dataset ``predictor`` can be evaluated on (its cubes of the model's size)."""
    manifest = manifest or dataset_lib.load_manifest(data_path)
    if manifest["sample_size"] != predictor.size:
        raise UserError("the dataset {} holds {}^3 samples but the model takes {}^3; evaluate on a dataset of that "
                        "size".format(manifest["path"], manifest["sample_size"], predictor.size))
    return manifest


def _dataset_name(manifest):
    """A dataset's directory name (what the calibration files record it by)."""
    return os.path.basename(os.path.normpath(manifest["path"]))


def calibrate(model_dir, data_path, precision="auto", calibration_data=(), correction=False, correction_data=()):
    """Fit what a trained model states about trust from the dataset it was trained on, as training does, and keep
    it in its run directory: the training domain (train split, ``domain.json``), with ``correction`` the correction
    of its predictions (train splits, ``correction.json``; removed without it) and the error model of its
    uncertainty (validation split, of the corrected predictions, ``uncertainty.json``). The correction and the error
    model are also fitted on the train and validation splits of the ``calibration_data`` datasets: structures
    unlike the training families, where the model errs more, teach the correction the sign of its error there and
    make the uncertainty grow. With ``correction`` the domain is that of every train split fitted on (the
    network's and the correction's), so that structures the correction has learnt are not flagged. The
    ``correction_data`` datasets' train splits are fitted on by the correction (and count in its domain) but their
    validation splits not by the error model: structures the corrected model predicts well would teach it to be surer
    than it is on others."""
    manifest, predictor = _predictor_for(model_dir, data_path, precision, trusted=False)
    if not manifest["counts"].get("validation"):
        raise UserError("the error model is fitted on the validation split, which {} does not have; use the "
                        "dataset the model was trained on".format(manifest["path"]))
    extra = []
    for path in calibration_data:
        more = _manifest_for(predictor, path)   # each dataset's checks first
        for split, use in [("validation", "the error model")] + ([("train", "the correction")] if correction else []):
            if not more["counts"].get(split):
                raise UserError("--calibration-data {} has no {} split to fit {} on".format(path, split, use))
        extra.append(more)
    learnt = []
    for path in correction_data if correction else ():
        more = _manifest_for(predictor, path)
        if not more["counts"].get("train"):
            raise UserError("--correction-data {} has no train split to fit the correction on".format(path))
        learnt.append(more)
    bar = tqdm(desc="calibrating", unit=" step", disable=not sys.stderr.isatty(), file=sys.stderr)

    def progress(text):   # what runs now (the fits take minutes)
        bar.update()
        bar.set_postfix_str(text)

    train = {"descriptions": [], "truth": [], "values": [], "families": []}
    for fitted_on in [manifest] + (extra + learnt if correction else []):
        progress("the train split of {}".format(_dataset_name(fitted_on)))
        volumes, sigma, _, families = dataset_lib.load_arrays(fitted_on["path"], "train")
        described = domain_lib.describe_many(volumes)
        if not correction:
            domain_lib.save(predictor.run_dir, domain_lib.training_domain(described))
        else:
            train["descriptions"] += described
            train["truth"].append(sigma[:, predictor.axes])
            train["values"].append(predictor._run(volumes)[0])
            train["families"].append(np.asarray(families))
        del volumes
    predictor.correction = None
    if correction:
        # the domain of the network and its correction: every train split either was fitted on
        domain_lib.save(predictor.run_dir, domain_lib.training_domain(train["descriptions"]))
        train = dict(train, **{k: np.concatenate(train[k]) for k in ("truth", "values", "families")})
        predictor.correction = correction_lib.fit(train["descriptions"], train["truth"], train["values"],
                                                  predictor.axes, progress=progress)
    if predictor.correction is not None:
        predictor.correction["train_splits_of"] = [_dataset_name(m) for m in [manifest] + extra + learnt]
        correction_lib.save(predictor.run_dir, predictor.correction)
    elif os.path.isfile(os.path.join(predictor.run_dir, correction_lib.CORRECTION_FILE)):
        os.remove(os.path.join(predictor.run_dir, correction_lib.CORRECTION_FILE))   # not one of another fit
    descriptions, truth, predicted, served, families = [], [], [], [], []
    for fitted_on in [manifest] + extra:
        progress("the validation split of {}".format(_dataset_name(fitted_on)))
        volumes, sigma, _, kinds = dataset_lib.load_arrays(fitted_on["path"], "validation")
        values, spread = predictor._run(volumes)
        descriptions += domain_lib.describe_many(volumes)
        truth.append(sigma[:, predictor.axes])
        predicted.append(values)
        served.append(spread)
        families.append(np.asarray(kinds))
    served = None if served[0] is None else np.concatenate(served)
    predicted, truth = np.concatenate(predicted), np.concatenate(truth)
    if predictor.correction is not None:
        # the errors' shape from the validation values corrected as predict corrects them; the scale from the same
        # values corrected as by a correction that never saw their family, so that the interval holds on a kind of
        # structure new to it, as a tomogram is
        factor = correction_lib.factor(predictor.correction, descriptions, predicted, predictor.axes)
        held_out = correction_lib.held_out_factors(train, descriptions, predicted, np.concatenate(families),
                                                   predictor.axes, progress=progress)
        error_model = uncertainty_lib.fit(
            descriptions, truth, predicted * factor, predictor.axes, None if served is None else served * factor,
            network=predicted, held_out=predicted * held_out,
            held_out_spread=None if served is None else served * held_out)
    else:
        error_model = uncertainty_lib.fit(descriptions, truth, predicted, predictor.axes, served)
    bar.close()
    if error_model is None:
        raise UserError("the validation split of {} has too few conducting values to fit an error model".format(
            manifest["path"]))
    if extra:
        error_model["validation_splits_of"] = [_dataset_name(m) for m in [manifest] + extra]
    uncertainty_lib.save(predictor.run_dir, error_model)


def evaluate(model_dir, data_path, split="test", zero_without_path=False, precision="auto"):
    """Metrics (R2, MAE, RMSE, MAPE) of a model on a dataset split."""

    manifest, predictor = _predictor_for(model_dir, data_path, precision)
    volumes, sigma, porosity, families = dataset_lib.load_arrays(data_path, split)
    predicted, served = predictor._run(volumes)
    network = predicted
    wanted = predictor.domain or predictor.error_model or predictor.correction or zero_without_path
    descriptions = predictor.describe(volumes) if wanted else None
    predicted, served, descriptions = predictor.corrected(volumes, predicted, served, descriptions)
    flags = [domain_lib.outside(d, predictor.domain) for d in descriptions] if predictor.domain else None
    uncertainty = predictor.stated_uncertainty(volumes, predicted, served, descriptions, network, flags)
    if descriptions is not None:       # as predict's output: exact zeros without a path, with no uncertainty
        no_path = domain_lib.without_path(descriptions, predictor.axes)
        predicted[no_path] = 0.0
        if uncertainty is not None:
            uncertainty = np.where(no_path, 0.0, uncertainty)
    truth = sigma[:, predictor.axes]
    metrics = {"split": split, "dataset": manifest["path"], "axes": predictor.axes, "precision": predictor.precision,
               "all": regression_metrics(truth, predicted),
               "per_family": per_family(truth, predicted, families)}
    if uncertainty is not None:
        metrics["calibration"] = calibration_metrics(truth, predicted, uncertainty)
    return metrics


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
