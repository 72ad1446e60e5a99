"""``benchmark input``, ``train`` and ``compare``: the input pipeline against the training step; training throughput,
latency, memory and FLOP utilisation per configuration of configs/benchmarks.yaml (one child process per
configuration: a fresh TensorFlow each, as devices, precision policy and memory peaks are per configuration),
then our training step against a bare model.fit and gradient accumulation against one batch, in one process;
and the train suite's plots drawn from CSVs taken on several machines."""

import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List

from omegaconf import OmegaConf
from tqdm import tqdm

from conductivity_tf import config as config_lib
from conductivity_tf import dataset as dataset_lib
from conductivity_tf import pipeline_plan, strategies
from conductivity_tf import train as train_lib
from conductivity_tf.benchmark.common import (
    machine_description,
    markdown_table,
    read_csv_rows,
    say,
    synthetic_batch,
    window_rates,
    windows_throughput,
    write_csv,
)
from conductivity_tf.config import CONFIG_DIR
from conductivity_tf.cpu_pipeline import CpuPipeline
from conductivity_tf.errors import UserError
from conductivity_tf.fileio import write_text
from conductivity_tf.model import build_model
from conductivity_tf.plots import comparison_plot, throughput_plots
from conductivity_tf.steps import global_batch_of
from conductivity_tf.strategies import configure_logical_cpus


def training_throughput(cfg, windows=5, steps_per_window=5):
    """Samples/s of the configured model's training step on in-memory data (the input is not involved)."""
    from conductivity_tf.keras_compat import keras, tf

    size, outputs, batch = cfg.data.size, len(cfg.data.axes), cfg.train.batch_size
    base = build_model(cfg.model, size, outputs)
    model = strategies.for_training(base, cfg.hardware.gradient_accumulation, cfg.hardware.reduction)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
    x, y = (tf.constant(a) for a in synthetic_batch(batch, size, outputs))
    return windows_throughput(lambda: model.train_on_batch(x, y), batch, windows, steps_per_window)


def run_input_suite(args):
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
                                  seed=0, repeat=True, cache=True, inputs=cfg.model.inputs)
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


TRAIN_COLUMNS = ["name", "kind", "replicas", "pipeline_stages", "gradient_accumulation", "micro_batch",
                 "global_batch", "precision", "size", "status", "first_step_s", "samples_per_s",
                 "min_samples_per_s", "max_samples_per_s", "step_latency_ms", "peak_memory_mb", "memory_source",
                 "train_gflop_per_sample", "peak_tflops", "peak_source", "utilisation", "device"]


# Graphcore's published peak arithmetic per IPU (TFLOP/s): GC200 (IPU-M2000, Colossus Mk2) and Bow (Bow-2000)
IPU_PEAK_TFLOPS = {("gc200", "fp16"): 250.0, ("gc200", "fp32"): 62.5, ("bow", "fp16"): 350.0, ("bow", "fp32"): 87.5}


ROW_MARK = "BENCHMARK-ROW "


@dataclass
class Run:
    """One configuration of the train benchmark (configs/benchmarks.yaml: ``runs``, over ``defaults``)."""
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
    model: Dict[str, Any] = field(default_factory=dict)


@dataclass
class BenchFile:
    defaults: Dict[str, Any] = field(default_factory=dict)
    windows: int = 5
    steps_per_window: int = 6
    warmup_steps: int = 2
    reference: Reference = field(default_factory=Reference)
    runs: List[Any] = field(default_factory=list)


def load_benchmarks(path=None):
    """The benchmark file as (settings, [runs as dicts]); UserError naming the file and key on any problem."""

    path = path or os.path.join(CONFIG_DIR, "benchmarks.yaml")
    if not os.path.isfile(path):
        raise UserError("benchmark configuration {} not found; give a YAML file like "
                        "conductivity_tf/configs/benchmarks.yaml".format(path))
    settings = config_lib.merge_layers(BenchFile, [path], what="benchmark configuration")
    runs = []
    for i, item in enumerate(settings.runs):
        run = config_lib.merge_layers(Run, [settings.defaults, item], what="benchmark configuration")
        if not run.name:
            raise UserError("{}: runs[{}] has no name; give every run a name".format(path, i))
        runs.append(OmegaConf.to_container(run))
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
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, "process peak RSS"


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
    x, y = (tf.constant(a) for a in synthetic_batch(steps.dataset_batch * 4, run["size"], len(cfg.data.axes)))
    ds = tf.data.Dataset.from_tensor_slices((x, y)).repeat().batch(steps.dataset_batch, drop_remainder=True)
    ds = ds.prefetch(tf.data.AUTOTUNE)
    clock = _clock(keras)
    with session.hardware.strategy.scope():
        session.model.fit(ds, epochs=1, steps_per_epoch=steps.fit_steps(ticks * spe), callbacks=[clock], verbose=0)
    samples_per_tick = steps.samples_per_step * spe
    rates = window_rates(clock.times, samples_per_tick, warmup, ticks_per_window, windows)
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
    pipe = CpuPipeline(model, plan, devices, keras.losses.MeanSquaredError(), optimizer,
                                     cfg.hardware.reduction)
    x, y = (tf.constant(a) for a in synthetic_batch(plan.steps.global_batch, run["size"], len(cfg.data.axes)))

    @tf.function
    def step():
        grads, _ = pipe.gradients_graph(x, y)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return tf.add_n([tf.reduce_sum(g) for g in grads])

    times = [time.perf_counter()]
    for _ in range(warmup + windows * per_window):
        step().numpy()
        times.append(time.perf_counter())
    rates = window_rates(times, plan.steps.global_batch, warmup, per_window, windows)
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
    # the default network, or the reference's model keys over it
    network = ["model.{}={}".format(key, json.dumps(value)) for key, value in ref["model"].items()]

    def ours(accumulation):
        cfg = config_lib.load_config(None, ["data.size={}".format(size), "hardware.kind=cpu",
                                            "train.batch_size={}".format(global_batch),
                                            "hardware.gradient_accumulation={}".format(accumulation),
                                            "train.tensorboard=false"] + network)
        return train_lib.setup(cfg, 10 ** 7).model

    def bare(norm_view=True):
        cfg = config_lib.load_config(None, ["data.size={}".format(size)] + network)
        model = build_model(cfg.model, size, len(cfg.data.axes), norm_view=norm_view)
        model.compile(optimizer=keras.optimizers.Adam(cfg.train.learning_rate), loss="mse")
        return model

    x, y = (tf.constant(a) for a in synthetic_batch(global_batch * 4, size, 3))
    ds = tf.data.Dataset.from_tensor_slices((x, y)).repeat().batch(global_batch, drop_remainder=True)
    ds = ds.prefetch(tf.data.AUTOTUNE)
    contenders = {"ours": ours(1), "bare": bare(), "accumulated": ours(k), "bare_5d": bare(norm_view=False)}

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
              "accumulated": "our training step, {} micro-batches of {} accumulated".format(k, micro),
              "bare_5d": "bare model.fit, batch norms on the 5-D tensors (unfused)"}
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
    print("batch norms on a 4-D view / on the 5-D tensors (bare model.fit, {}^3): {:.3f}".format(
        settings["reference"]["size"], by_name["bare model.fit"] / [v for n, v in by_name.items() if "5-D" in n][0]))
    return 0


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
