"""Train the 3-D CNN: ``python -m conductivity_tf.train [--config PRESET|FILE] [section.key=value ...]``.

The recipe, top to bottom: resolve the configuration -> seed -> choose the hardware (strategies.py or
ipu.py) -> open the dataset splits -> build the model inside the strategy's scope -> fit with
checkpoints, BackupAndRestore, TensorBoard, CSV log, early stopping and a warm-up + cosine learning
rate -> evaluate on the test split -> write the run directory:

    config.yaml            the resolved configuration
    checkpoints/           best.weights.h5 (lowest validation loss) and last.weights.h5
    backup/                BackupAndRestore state while training (re-running resumes from it)
    logs/                  TensorBoard
    training_log.csv       per-epoch loss, metrics and learning rate
    metrics.json           R2, MAE, MAPE, RMSE on the test split, and the same for a Bruggeman fit; for an
                           ensemble the calibration of its uncertainty
    domain.json            the training split's range of porosity, feature sizes, anisotropy and percolation
    parity.png             predicted against solver values on the test split
    saved_model/           SavedModel, loadable by plain TensorFlow (tf.saved_model.load)
    model.weights.h5       Keras weights of the best model
"""

import argparse
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from typing import Optional

import numpy as np

from conductivity_tf import config as config_lib
from conductivity_tf import cpu_pipeline, ipu, pipeline_plan, plots, serving, strategies
from conductivity_tf import dataset as dataset_lib
from conductivity_tf import domain as domain_lib
from conductivity_tf import uncertainty as uncertainty_lib
from conductivity_tf.checkpoints import checkpoint_callback, load_weights_checked, resume_epoch, trim_log
from conductivity_tf.dataset import load_manifest
from conductivity_tf.errors import UserError, run_cli
from conductivity_tf.fileio import check_writable_dir, write_text
from conductivity_tf.hardware import Hardware
from conductivity_tf.metrics import (
    bruggeman_fit,
    calibration_metrics,
    per_family,
    regression_metrics,
    uncertainty_scale,
)
from conductivity_tf.model import build_model, members_summary, network_input
from conductivity_tf.pipeline_plan import PipelinePlan, layer_costs
from conductivity_tf.steps import StepPlan, step_plan
from conductivity_tf.strategies import configure_logical_cpus, native_bfloat16


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m conductivity_tf.train",
        description="Train the conductivity CNN. Settings come from configs/train/default.yaml, then an optional "
                    "--config preset or YAML file, then section.key=value overrides.",
        epilog="Examples:\n"
               "  python -m conductivity_tf.train                                   # the embedded default run\n"
               "  python -m conductivity_tf.train train.epochs=3 data.path=my_dataset\n"
               "  python -m conductivity_tf.train --config gpu_node --out runs/gpu\n"
               "  python -m conductivity_tf.train hardware.kind=ipu hardware.ipus=4 "
               "hardware.pipeline_stages=2 --plan-only\n\n"
               "Re-running the same command with the same run directory resumes an interrupted run.\n\n"
               "Presets: {}\n\nConfiguration sections and keys (default value, meaning):\n{}".format(
                   ", ".join(config_lib.list_presets()), config_lib.describe_config()),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", metavar="section.key=value", help="configuration overrides")
    parser.add_argument("--config", help="a preset name or a YAML file layered over the defaults")
    parser.add_argument("--out", help="run directory (same as train.out_dir=...)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved configuration and exit")
    parser.add_argument("--plan-only", action="store_true",
                        help="with hardware.kind=ipu: print the pipeline plan and exit (any machine)")
    parser.add_argument("--train-samples", type=int, metavar="N",
                        help="with --plan-only and no dataset at data.path: size the epoch (steps, learning-rate "
                             "schedule) for N training samples")
    parser.add_argument("--check-on-cpu", action="store_true",
                        help="with --plan-only: run one batch through the plan's stages on CPU devices and compare "
                             "the accumulated gradients with unpipelined training")
    return parser


def resolve(args):
    overrides = list(args.overrides)
    if args.out:
        overrides.append("train.out_dir={}".format(args.out))
    return config_lib.load_config(args.config, overrides)


# ---------------------------------------------------------------------------------------------
# pieces of the recipe


def precision_policy(precision, kind):
    """The Keras mixed-precision policy name for ``train.precision`` on this hardware."""
    if precision == "auto":
        if kind == "gpu":
            return "mixed_float16"

        return "mixed_bfloat16" if native_bfloat16() else "float32"
    return {"fp32": "float32", "fp16": "float16"}.get(precision, precision)


def warmup_cosine(keras, peak, total_steps, warmup_steps, schedule):
    """Linear warm-up to ``peak`` then cosine decay to 0 (or constant) over ``total_steps``."""
    from conductivity_tf.keras_compat import tf

    class WarmupCosine(keras.optimizers.schedules.LearningRateSchedule):
        def __call__(self, step):
            step = tf.cast(step, tf.float32)
            warm = peak * (step + 1.0) / float(max(warmup_steps, 1))
            if schedule == "constant":
                decayed = tf.constant(peak, tf.float32)
            else:
                progress = (step - warmup_steps) / float(max(total_steps - warmup_steps, 1))
                decayed = 0.5 * peak * (1.0 + tf.cos(math.pi * tf.clip_by_value(progress, 0.0, 1.0)))
            return tf.where(step < warmup_steps, warm, decayed)

        def get_config(self):
            return {"peak": peak, "total_steps": total_steps, "warmup_steps": warmup_steps, "schedule": schedule}

    return WarmupCosine()


def loss_function(keras, tf, name, members=1):
    """The Keras loss for ``train.loss``; for an ensemble of ``members`` (predictions (N, K, axes)) every
    member fits the target, each sample counting twice or not at all for each member, at random (bagging: the
    members see different halves of the data, so they disagree where the data do not decide)."""
    if name == "log_mse":
        def log_mse(y_true, y_pred):
            y_true, y_pred = tf.cast(y_true, tf.float32), tf.cast(y_pred, tf.float32)
            return tf.reduce_mean(tf.square(tf.math.log(y_pred + 1e-3) - tf.math.log(y_true + 1e-3)), axis=-1)
        if members == 1:
            return log_mse
        base = log_mse
    elif members == 1:
        return {"mse": "mse", "mae": "mae", "huber": keras.losses.Huber(0.02)}[name]
    else:
        base = {"mse": keras.losses.mean_squared_error, "mae": keras.losses.mean_absolute_error,
                "huber": keras.losses.Huber(0.02, reduction="none")}[name]

    def member_loss(y_true, y_pred):
        y_pred = tf.cast(y_pred, tf.float32)
        target = tf.broadcast_to(tf.cast(y_true, tf.float32)[:, None, :], tf.shape(y_pred))
        per_member = base(target, y_pred)                                     # (N, K)
        return per_member * 2.0 * tf.cast(tf.random.uniform(tf.shape(per_member)) < 0.5, tf.float32)

    return member_loss


def metrics_for(tf, members=1):
    """The MAE metric ("mae"); of the members' mean for an ensemble."""
    if members == 1:
        return ["mae"]

    def mae(y_true, y_pred):
        return tf.reduce_mean(tf.abs(tf.reduce_mean(tf.cast(y_pred, tf.float32), axis=1) - y_true), axis=-1)

    return [mae]


def verbose_level():
    return 1 if sys.stdout.isatty() else 2


# ---------------------------------------------------------------------------------------------
# the recipe


@dataclass
class Session:
    """What ``setup`` makes before fitting (and the ``train`` benchmark times)."""
    hardware: Hardware
    steps: StepPlan  # the batch split and the epoch, in the units fit takes on this hardware
    policy: str  # the Keras mixed-precision policy
    base: object  # the functional model (its weights are the run's)
    model: object  # what fits: ``base`` on IPUs (the SDK pipelines and accumulates), else an accumulating wrapper
    forward_flops: int  # per sample
    plan: Optional[PipelinePlan] = None  # the IPU pipeline plan (on IPUs), made once from ``base``

    @property
    def on_ipu(self):
        return self.hardware.kind == "ipu"


def setup(cfg, train_samples, validation_samples=0):
    """Seed, strategy, step plan, precision, and the model built once and compiled in the strategy's scope:
    everything the recipe sets up before fitting (also what the ``train`` benchmark times), as a ``Session``.

    ``train_samples`` sizes the epoch (and so the learning-rate schedule, in weight updates). On IPUs the
    pipeline plan is made here, once, from the model that trains."""
    from conductivity_tf import keras_compat
    from conductivity_tf.keras_compat import keras, tf

    if cfg.train.deterministic:  # first: before TensorFlow 2.8 it sets the thread pools, before anything runs
        keras_compat.enable_op_determinism()
    keras_compat.set_random_seed(cfg.train.seed)
    compile_options = keras_compat.compile_options(cfg.train.xla)
    hardware = strategies.make_strategy(cfg.hardware, cfg)
    on_ipu = hardware.kind == "ipu"
    # on IPUs a step is one micro-batch per replica and the SDK accumulates; elsewhere a step is a global batch
    steps = step_plan(cfg.train.batch_size, hardware.replicas, cfg.hardware.gradient_accumulation,
                      cfg.hardware.steps_per_execution, on_ipu, train_samples, validation_samples, hardware.instances)
    policy = precision_policy(cfg.train.precision, hardware.kind)
    keras.mixed_precision.set_global_policy(policy)
    axes = list(cfg.data.axes)
    plan = None
    with hardware.strategy.scope():
        base = build_model(cfg.model, cfg.data.size, len(axes))
        if cfg.train.initial_weights:
            if not os.path.isfile(cfg.train.initial_weights):
                raise UserError("train.initial_weights={} does not exist; give a run's model.weights.h5".format(
                    cfg.train.initial_weights))
            load_weights_checked(base, cfg.train.initial_weights)
        warmup, total = steps.learning_rate_steps(cfg.train.epochs, cfg.train.warmup_epochs)
        lr = warmup_cosine(keras, cfg.train.learning_rate, total, warmup, cfg.train.schedule)
        if on_ipu:  # the SDK pipelines and accumulates; overriding train_step is not allowed there
            plan = pipeline_plan.make_plan(cfg, base, train_samples=train_samples)
            if plan.violations:
                raise UserError(plan.violations[0])
            ipu.configure_model(base, plan, cfg, ipu.import_sdk())
            model = base
            optimizer = ipu.optimizer(cfg, lr, keras)
        else:
            model = strategies.for_training(base, cfg.hardware.gradient_accumulation, cfg.hardware.reduction)
            optimizer = (keras.optimizers.Adam(lr) if cfg.train.optimizer == "adam"
                         else keras.optimizers.SGD(lr, momentum=0.9))
        loss = loss_function(keras, tf, cfg.train.loss, cfg.model.ensemble)
        model.compile(optimizer=optimizer, loss=loss, metrics=metrics_for(tf, cfg.model.ensemble),
                      steps_per_execution=steps.steps_per_execution,
                      **compile_options)
    forward_flops = sum(c.flops for c in layer_costs(base))
    return Session(hardware, steps, policy, base, model, forward_flops, plan)


def train(cfg):
    """Run the whole recipe for a resolved configuration; returns the metrics dict."""
    out = cfg.train.out_dir
    manifest = dataset_lib.load_manifest(cfg.data.path)  # the data first: a run that cannot start leaves no directory
    if manifest["sample_size"] != cfg.data.size:
        raise UserError("the dataset {} holds {}^3 samples but data.size={}; set data.size={} (or use another "
                        "dataset)".format(manifest["path"], manifest["sample_size"], cfg.data.size,
                                          manifest["sample_size"]))
    for split in ("train", "validation"):  # sizes always, checksums below 1 GB (the input pipelines then skip them)
        if manifest["counts"].get(split):
            split_bytes = sum(s["bytes"] for s in manifest["shards"] if s["split"] == split)
            dataset_lib.check_shards(manifest, split, checksums=split_bytes < 1e9)
    check_writable_dir(out, "run directory")
    # TensorFlow loads only once the inputs are known to be good: bad ones fail in a fraction of a second
    from conductivity_tf import keras_compat
    from conductivity_tf.keras_compat import keras, tf

    config_lib.save_config(cfg, os.path.join(out, "config.yaml"))
    counts = manifest["counts"]
    session = setup(cfg, counts["train"], counts["validation"])
    hardware, steps, policy, base, model = (session.hardware, session.steps, session.policy, session.base,
                                            session.model)
    on_ipu = session.on_ipu
    axes = list(cfg.data.axes)
    input_context = None
    if hardware.instances > 1:  # PopDist: each instance reads its own shards
        input_context = tf.distribute.InputContext(hardware.instances, hardware.worker, 1)
    # a resumed run (BackupAndRestore) starts its data at the epoch it resumes at: same batches as without the kill
    start = 0 if on_ipu else resume_epoch(os.path.join(out, "backup"))
    # every stream epoch is exactly the batches a training epoch consumes (steps.fit_steps: on IPUs one
    # micro-batch per replica per step), so stream epochs and training epochs coincide
    train_ds = dataset_lib.make_dataset(manifest["path"], "train", steps.dataset_batch, axes=axes,
                                        augment=cfg.data.augment, shuffle=True, seed=cfg.train.seed, repeat=True,
                                        cache=True, input_context=input_context, start_epoch=start, checksums=False,
                                        epoch_batches=steps.steps_per_epoch, epochs=cfg.train.epochs,
                                        inputs=cfg.model.inputs)
    val_ds = None
    if steps.validation_steps:
        # finite and the same every epoch: Keras reads it from the start each time (resumable, deterministic)
        val_ds = dataset_lib.make_dataset(manifest["path"], "validation", steps.dataset_batch, axes=axes,
                                          cache=True, input_context=input_context, checksums=False,
                                          epoch_batches=steps.validation_steps, inputs=cfg.model.inputs)

    gflops = session.forward_flops / 1e9
    print("conductivity_tf.train: {} | {} replica(s) | global batch {} = micro-batch {} x accumulation {} x "
          "replicas {} | {} | {:.2f} GFLOP/sample forward | {} train, {} validation samples".format(
              hardware.description, hardware.replicas, steps.global_batch, steps.micro_batch, steps.accumulation,
              steps.replicas, policy, gflops, counts["train"], counts["validation"]), flush=True)

    checkpoints = os.path.join(out, "checkpoints")
    os.makedirs(checkpoints, exist_ok=True)
    monitor = "val_loss" if val_ds is not None else "loss"
    log = os.path.join(out, "training_log.csv")
    if start > 0:
        trim_log(log, start)
    callbacks = [checkpoint_callback(keras, checkpoints, monitor, hardware.is_chief, resuming=start > 0),
                 keras.callbacks.CSVLogger(log, append=start > 0)]
    if cfg.train.tensorboard:
        callbacks.append(keras.callbacks.TensorBoard(os.path.join(out, "logs"), profile_batch=0))
    if cfg.train.early_stopping:
        callbacks.append(keras.callbacks.EarlyStopping(monitor=monitor, patience=cfg.train.early_stopping,
                                                       restore_best_weights=False))
    if not on_ipu:
        # last, so that an epoch counts as done only once its checkpoints and log line are written: a kill
        # before that redoes the epoch (identically) on resume
        callbacks.append(keras_compat.backup_and_restore(os.path.join(out, "backup")))
    t0 = time.time()
    with hardware.strategy.scope():  # Graphcore's Keras wants fit inside the IPUStrategy's scope; harmless elsewhere
        # steps in the unit fit takes here (the IPU data handler divides by the replicas); validation_steps
        # always given: the IPU data handler cannot infer the length of a dataset of unknown cardinality
        model.fit(train_ds, epochs=cfg.train.epochs, steps_per_epoch=steps.steps_per_epoch, validation_data=val_ds,
                  validation_steps=steps.validation_steps or None, callbacks=callbacks, verbose=verbose_level())
    train_seconds = time.time() - t0
    # evaluation and exports run on a plain copy outside the strategy: no collectives, so only the chief
    # does them; other workers keep their final weights (identical to the chief's) for inspection
    plain = build_model(cfg.model, cfg.data.size, len(axes))
    plain.set_weights(base.get_weights())
    if not hardware.is_chief:
        worker_dir = os.path.join(out, "worker-{}".format(hardware.worker))
        os.makedirs(worker_dir, exist_ok=True)
        plain.save_weights(os.path.join(worker_dir, "final.weights.h5"))
        return None
    best = os.path.join(checkpoints, "best.weights.h5")
    if os.path.exists(best):
        load_weights_checked(plain, best)
    return finish_run(cfg, plain, manifest, out, train_seconds)


def finish_run(cfg, base, manifest, out, train_seconds):
    """Test metrics, Bruggeman baseline, parity plot and exports for a trained model."""
    from conductivity_tf.keras_compat import quiet_native_stderr

    axes = list(cfg.data.axes)

    def predict_split(split):
        volumes, sigma, porosity, families = dataset_lib.load_arrays(manifest["path"], split)
        # Keras's input pipeline for arrays makes TensorFlow log a C++ line about an op attribute under op
        # determinism (harmless): kept quiet, as at start-up
        with quiet_native_stderr():  # in chunks: four input channels of a whole split would not fit in memory
            raw = np.concatenate([base.predict(network_input(volumes[i:i + 256], cfg.model.inputs), batch_size=64,
                                               verbose=0) for i in range(0, len(volumes), 256)])
        mean, spread = members_summary(np, raw)
        return sigma[:, axes], mean, spread, porosity, families, volumes

    truth, predicted, spread, porosity, families, test_volumes = predict_split("test")
    train_volumes, train_sigma, train_porosity, _ = dataset_lib.load_arrays(manifest["path"], "train")
    trained_on = domain_lib.training_domain(domain_lib.describe_many(train_volumes))
    domain_lib.save(out, trained_on)
    exponent = bruggeman_fit(train_porosity, train_sigma[:, axes])
    baseline = np.repeat(porosity[:, None], len(axes), axis=1) ** exponent
    metrics = {
        "test": regression_metrics(truth, predicted),
        "bruggeman": dict(regression_metrics(truth, baseline), exponent=exponent),
        "per_family": per_family(truth, predicted, families),
        "axes": axes, "dataset": manifest["path"], "train_seconds": train_seconds,
    }
    metrics["rmse_ratio_bruggeman_over_cnn"] = metrics["bruggeman"]["rmse"] / max(metrics["test"]["rmse"], 1e-12)
    scale = None
    if spread is not None and not manifest["counts"].get("validation"):
        raise UserError("an ensemble (model.ensemble > 1) calibrates its uncertainty on the validation split, "
                        "which {} does not have; rebuild the dataset with validation_fraction > 0".format(
                            manifest["path"]))
    if manifest["counts"].get("validation"):
        valid_truth, valid_predicted, valid_spread, _, _, valid_volumes = predict_split("validation")
        if spread is not None:  # an ensemble: its spread scaled to cover 90 % of the validation values
            scale = uncertainty_scale(valid_truth, valid_predicted, valid_spread)
            metrics["calibration"] = dict(calibration_metrics(truth, predicted, spread * scale), scale=scale)
        # the uncertainty stated with each prediction: the error model of uncertainty.py, fitted on the
        # validation split (with the ensemble's calibrated spread among its features), measured on the test split
        error_model = uncertainty_lib.fit(domain_lib.describe_many(valid_volumes), valid_truth,
                                          valid_predicted, axes, None if scale is None else valid_spread * scale)
        if error_model is not None:
            uncertainty_lib.save(out, error_model)
            described = domain_lib.describe_many(test_volumes)
            stated = uncertainty_lib.evaluate(error_model, described, predicted, axes,
                                              None if scale is None else spread * scale,
                                              outside=[domain_lib.outside(d, trained_on) for d in described])
            # as predict states them: exact zeros, with no uncertainty, along the axes without a conducting path
            no_path = domain_lib.without_path(described, axes)
            metrics["uncertainty"] = dict(calibration_metrics(truth, np.where(no_path, 0.0, predicted),
                                                              np.where(no_path, 0.0, stated)),
                                          fitted_values=error_model["fitted_values"])
    write_text(os.path.join(out, "metrics.json"), json.dumps(metrics, indent=1) + "\n")
    plots.parity_plot(os.path.join(out, "parity.png"), truth, predicted, porosity,
                      title="Test split: R² {:.4f}, RMSE {:.4f} (Bruggeman ε^{:.2f}: RMSE {:.4f})".format(
                          metrics["test"]["r2"], metrics["test"]["rmse"], exponent, metrics["bruggeman"]["rmse"]),
                      labels=["axis {}".format(a) for a in axes])
    serving.export(base, out, cfg.model, scale)
    print("test: R² {:.4f}  MAE {:.4f}  RMSE {:.4f}  MAPE (percolating) {:.2f} %  |  Bruggeman ε^{:.2f}: R² {:.4f} "
          "RMSE {:.4f}  ({:.1f}x the CNN's RMSE)".format(
              metrics["test"]["r2"], metrics["test"]["mae"], metrics["test"]["rmse"],
              metrics["test"]["mape_percolating"] or 0.0, exponent, metrics["bruggeman"]["r2"],
              metrics["bruggeman"]["rmse"], metrics["rmse_ratio_bruggeman_over_cnn"]))
    if "uncertainty" in metrics:
        print("uncertainty (error model fitted on the validation split): the ~90 % interval holds {:.1f} % of the "
              "test values; Spearman (|error|, uncertainty) {:.2f}".format(
                  100.0 * metrics["uncertainty"]["coverage_90"],
                  metrics["uncertainty"]["spearman_error_uncertainty"] or 0.0))
    print("run directory: {}".format(out), flush=True)
    return metrics


def print_plan(cfg, check_on_cpu=False, train_samples=None):
    """``--plan-only``: the IPU pipeline plan as a table, an epoch in the SDK's steps and the learning-rate
    schedule in weight updates; a violated IPU rule is one line and exit status 2. ``train_samples`` sizes the
    epoch when there is no dataset at ``data.path``."""

    if cfg.hardware.kind != "ipu":
        raise UserError("--plan-only plans IPU pipelines; add hardware.kind=ipu (with hardware.ipus, "
                        "hardware.pipeline_stages, hardware.gradient_accumulation)")
    if train_samples is None:
        try:
            manifest = load_manifest(cfg.data.path)
            train_samples = manifest["counts"]["train"] if manifest["sample_size"] == cfg.data.size else None
        except UserError:
            pass  # planning needs no dataset; the epoch is then not sized
    elif train_samples < 1:
        raise UserError("--train-samples {} must be a positive number of samples".format(train_samples))
    early = pipeline_plan.model_free_violations(cfg, train_samples)
    if early:
        raise UserError(early[0])
    if check_on_cpu:
        from conductivity_tf.keras_compat import tf

        configure_logical_cpus(tf, cfg.hardware.pipeline_stages)
    model = None
    if check_on_cpu:  # the checked model is the planned one: built once, seeded
        from conductivity_tf import keras_compat

        keras_compat.set_random_seed(cfg.train.seed)
        model = build_model(cfg.model, cfg.data.size, len(cfg.data.axes))
    plan = pipeline_plan.make_plan(cfg, model, train_samples=train_samples)
    if plan.violations:
        raise UserError(plan.violations[0])
    print(pipeline_plan.format_plan(plan, cfg.train))
    if check_on_cpu:
        cpu_pipeline.check_pipeline_on_cpu(cfg, plan, model)
    return 0


def main(argv=None):
    args = build_parser().parse_intermixed_args(argv)
    cfg = resolve(args)
    if args.print_config:
        print(config_lib.config_to_yaml(cfg), end="")
        return 0
    if (args.check_on_cpu or args.train_samples is not None) and not args.plan_only:
        raise UserError("--check-on-cpu and --train-samples go with --plan-only")
    if args.plan_only:
        return print_plan(cfg, args.check_on_cpu, args.train_samples)
    train(cfg)
    from conductivity_tf import keras_compat

    if strategies.multi_worker() and keras_compat.TF_VERSION < (2, 8):
        # TensorFlow 2.6 can abort while tearing its collective-op threads down at interpreter exit ("terminate
        # called without an active exception"); everything is written by now, so leave without that teardown
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    return 0


def cli():
    run_cli(main)


if __name__ == "__main__":
    cli()
