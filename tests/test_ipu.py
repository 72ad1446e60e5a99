"""The IPU path's calls into Graphcore's SDK, checked against SDK 3.4 by the recorder in ipu_recorder.py.

Each rule pinned here names the file and function of the SDK's source (graphcore/tensorflow, graphcore/keras,
graphcore/ipu_tensorflow_addons, branch r2.6/sdk-release-3.4) it comes from. Tests that need the real SDK run
where ``tensorflow.python.ipu`` imports (IPU Model when no hardware) and are skipped, saying so, elsewhere.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conductivity_tf import config as C
from conductivity_tf import ipu
from conductivity_tf import pipeline_plan as PP
from tests import ipu_recorder as R
from tests.conftest import ROOT, assert_one_line_error, needs_group_norm, run_module

BASE = ["hardware.kind=ipu", "data.size=64", "model.norm=none", "hardware.ipus=4", "hardware.pipeline_stages=2",
        "hardware.gradient_accumulation=8"]
SMALL = ["hardware.kind=ipu", "data.size=32", "model.norm=none", "model.widths=[4,8]", "model.head_units=8"]


def configured(*overrides, replicas=2, base=BASE):
    from conductivity_tf.model import build_model

    cfg = C.load_config(overrides=base + list(overrides))
    plan = PP.make_plan(cfg)
    sdk = R.make_sdk(replicas)
    model = R.attach_keras_methods(build_model(cfg.model, cfg.data.size, 3), sdk)
    ipu.configure_model(model, plan, cfg, sdk)
    return cfg, plan, sdk


def model_for(sdk):
    from conductivity_tf.model import build_model

    cfg = C.load_config(overrides=SMALL)
    return R.attach_keras_methods(build_model(cfg.model, cfg.data.size, 3), sdk)


# ---------------------------------------------------------------------------------------------
# the recorder: SDK 3.4's signatures and errors as its source defines them


def test_recorder_pipeline_stage_options_take_slice_options():
    # tensorflow/python/ipu/ops/pipelining_ops.py, PipelineStageOptions.__init__(convolution_options,
    # matmul_options, slice_options): dicts of string values
    options = R.make_sdk().ops.pipelining_ops.PipelineStageOptions
    assert options(slice_options={"availableMemoryProportion": "0.2"}).slice_options
    with pytest.raises(TypeError):
        options(slice_matmul_options={})
    with pytest.raises(TypeError):
        options(convolution_options={"availableMemoryProportion": 0.6})


def test_recorder_set_pipelining_options_forwards_what_pipeline_takes():
    # keras/ipu/extensions/extensions_base.py, _set_pipelining_options_impl (refused keys: ValueError) and
    # _make_pipeline (passes reduction_method itself); pipelining_ops.py, pipeline() (its keyword arguments)
    model = model_for(R.make_sdk())
    for accepted in ("gradient_accumulation_for_captured_grads", "continuous_weight_updates",
                     "accumulate_outfeed_dtype", "offload_activations", "gradient_accumulation_dtype"):
        model.set_pipelining_options(8, **{accepted: None})
    with pytest.raises(ValueError, match="gradient_accumulation_count"):
        model.set_pipelining_options(8, gradient_accumulation_count=8)
    with pytest.raises(ValueError, match="device_mapping"):
        model.set_pipelining_options(8, device_mapping=(0, 1))
    with pytest.raises(TypeError, match="unexpected keyword argument 'device_mapping_fn'"):
        model.set_pipelining_options(8, device_mapping_fn=lambda x: x)
    with pytest.raises(TypeError, match="multiple values for keyword argument 'reduction_method'"):
        model.set_pipelining_options(8, reduction_method="mean")
    with pytest.raises(TypeError):
        model.set_pipelining_options(8, pipeline_schedule="grouped")


def test_recorder_accumulation_counts_must_be_python_ints():
    # extensions_base.py, _set_gradient_accumulation_options_impl / _set_pipelining_options_impl: ValueError
    model = model_for(R.make_sdk())
    for bad in (8.0, np.int64(8), 0, "8"):
        with pytest.raises(ValueError, match="positive integer"):
            model.set_pipelining_options(bad)
        with pytest.raises(ValueError, match="positive integer"):
            model.set_gradient_accumulation_options(bad)
    # GradientAccumulationOptimizerV2.__init__ gets reduction_method from Keras: a user's is a duplicate
    with pytest.raises(TypeError, match="multiple values"):
        model.set_gradient_accumulation_options(4, reduction_method="mean")
    with pytest.raises(ValueError, match="num_mini_batches"):
        model.set_gradient_accumulation_options(4, num_mini_batches=4)


def test_recorder_ipu_config_raises_what_ipu_config_raises():
    # tensorflow/python/ipu/config.py, _ConfigBase.__getattr__/__setattr__: unknown attributes are ValueError
    # (read or set), a wrong type TypeError; IPUConfig() takes no arguments
    config = R.make_sdk().config.IPUConfig()
    with pytest.raises(ValueError, match="not a valid attribute"):
        config.num_ipus = 4
    with pytest.raises(ValueError, match="not a valid attribute"):
        config.convolutions.poplar_option = {}
    with pytest.raises(TypeError):
        config.allow_recompute = 1
    with pytest.raises(TypeError):
        config.convolutions.poplar_options = {"availableMemoryProportion": 0.6}
    with pytest.raises(TypeError):
        R.make_sdk().config.IPUConfig(4)


def test_recorder_refuses_a_pipeline_schedule_its_recomputation_mode_does_not_support():
    # tensorflow/compiler/plugin/poplar/driver/tools/pipeline_util.cc, GetPipelineRecomputationMode
    sdk = R.make_sdk()
    ops = sdk.ops.pipelining_ops
    model = model_for(sdk)
    with pytest.raises(NotImplementedError):
        model.set_pipelining_options(8, pipeline_schedule=ops.PipelineSchedule.Interleaved,
                                     recomputation_mode=ops.RecomputationMode.RecomputeAndBackpropagateInterleaved)
    with pytest.raises(NotImplementedError):
        model.set_pipelining_options(8, pipeline_schedule=ops.PipelineSchedule.Sequential,
                                     recomputation_mode=ops.RecomputationMode.RecomputeThenBackpropagate)


def test_recorder_stage_assignment_refuses_a_later_stages_output():
    # keras/ipu/extensions/functional_extensions.py, _validate_pipeline_stage_assignment
    model = model_for(R.make_sdk())
    assignments = model.get_pipeline_stage_assignment()
    for i, a in enumerate(assignments):
        a.pipeline_stage = 1 if i == 0 else 0
    with pytest.raises(ValueError, match="dependency"):
        model.set_pipeline_stage_assignment(assignments)


# ---------------------------------------------------------------------------------------------
# the project's calls


def test_pipelined_model_calls_match_sdk_3_4():
    cfg, plan, sdk = configured("train.precision=fp16", "hardware.recomputation=true",
                                "hardware.available_memory_proportion=[0.3,0.6]", "hardware.schedule=grouped")
    (stages,) = sdk.recorder.named("set_pipeline_stage_assignment")
    assert stages["stages"] == {c.name: s.index for s in plan.stages for c in s.layers}
    (options,) = sdk.recorder.named("set_pipelining_options")
    assert options["gradient_accumulation_steps_per_replica"] == 8
    assert options["device_mapping"] == [0, 1]
    assert options["gradient_accumulation_reduction_method"] is R.GradientAccumulationReductionMethod.MEAN
    assert options["pipeline_schedule"] is R.PipelineSchedule.Grouped
    assert options["recomputation_mode"] is R.RecomputationMode.RecomputeAndBackpropagateInterleaved
    forward = options["forward_propagation_stages_poplar_options"]
    assert [f.convolution_options for f in forward] == [
        {"partialsType": "half", "availableMemoryProportion": "0.3"},
        {"partialsType": "half", "availableMemoryProportion": "0.6"}]
    assert not sdk.recorder.named("set_gradient_accumulation_options")


@pytest.mark.parametrize("schedule, reduction, enum_schedule, enum_reduction", [
    ("interleaved", "sum", R.PipelineSchedule.Interleaved, R.GradientAccumulationReductionMethod.SUM),
    ("sequential", "running_mean", R.PipelineSchedule.Sequential, R.GradientAccumulationReductionMethod.RUNNING_MEAN),
])
def test_schedules_and_reductions_map_to_sdk_enums(schedule, reduction, enum_schedule, enum_reduction):
    _, _, sdk = configured("hardware.schedule={}".format(schedule), "hardware.reduction={}".format(reduction),
                           base=SMALL + ["hardware.ipus=4", "hardware.pipeline_stages=2",
                                         "hardware.gradient_accumulation=8"])
    (options,) = sdk.recorder.named("set_pipelining_options")
    assert options["pipeline_schedule"] is enum_schedule
    assert options["gradient_accumulation_reduction_method"] is enum_reduction


@pytest.mark.parametrize("schedule, mode", [("grouped", "RecomputeAndBackpropagateInterleaved"),
                                            ("interleaved", "RecomputeThenBackpropagate"),
                                            ("sequential", "RecomputeAndBackpropagateInterleaved")])
def test_recomputation_asks_for_a_mode_the_schedule_supports(schedule, mode):
    # fault 6: the interleaved schedule was given RecomputeAndBackpropagateInterleaved, which the SDK rejects
    _, _, sdk = configured("hardware.schedule={}".format(schedule), "hardware.recomputation=true",
                           base=SMALL + ["hardware.ipus=4", "hardware.pipeline_stages=2",
                                         "hardware.gradient_accumulation=8"])
    (options,) = sdk.recorder.named("set_pipelining_options")
    assert options["recomputation_mode"] is getattr(R.RecomputationMode, mode)


def test_one_stage_uses_gradient_accumulation_options():
    _, _, sdk = configured("hardware.pipeline_stages=1", "hardware.ipus=1", "hardware.gradient_accumulation=4")
    assert not sdk.recorder.named("set_pipelining_options")
    (options,) = sdk.recorder.named("set_gradient_accumulation_options")
    assert options["gradient_accumulation_steps_per_replica"] == 4


def test_one_stage_applies_its_available_memory_proportion_to_every_convolution_and_matmul():
    # fault 9: per-stage options reach only a pipeline (pipelining_ops.pipeline needs >= 2 stages), so with one
    # stage the proportion must go into IPUConfig's convolution and matmul options
    cfg = C.load_config(overrides=SMALL + ["hardware.ipus=1", "hardware.available_memory_proportion=[0.3]"])
    sdk = R.make_sdk(1)
    ipu.ipu_config(cfg, PP.make_plan(cfg), sdk)
    for kind in ("convolutions", "matmuls"):
        assert sdk.recorder.named("IPUConfig.{}.poplar_options".format(kind)) == [
            {"value": {"availableMemoryProportion": "0.3"}}]


def test_ipu_config_and_strategy_calls(monkeypatch):
    monkeypatch.delenv("TF_POPLAR_FLAGS", raising=False)
    cfg = C.load_config(overrides=BASE + ["train.precision=fp16", "hardware.executable_cache=/tmp/cache",
                                          "hardware.selection_order=snake", "train.seed=7"])
    sdk = R.make_sdk(2)
    hardware = ipu.make_strategy(cfg.hardware, cfg, sdk=sdk)
    rec = sdk.recorder
    assert rec.named("IPUConfig.auto_select_ipus") == [{"value": 4}]
    assert rec.named("IPUConfig.selection_order") == [{"value": R.SelectionOrder.SNAKE}]
    assert rec.named("IPUConfig.floating_point_behaviour.esr") == [{"value": R.StochasticRoundingBehaviour.ON}]
    assert rec.named("IPUConfig.convolutions.poplar_options") == [{"value": {"partialsType": "half"}}]
    assert rec.named("configure_ipu_system") and rec.named("IPUStrategy")
    assert rec.named("reset_ipu_seed") == [{"seed": 7}]
    assert "--executable_cache_path=/tmp/cache" in os.environ["TF_POPLAR_FLAGS"]
    assert (hardware.kind, hardware.replicas, hardware.instances, hardware.ipus) == ("ipu", 2, 1, 4)


def test_precompile_connects_to_no_device():
    cfg = C.load_config(overrides=BASE + ["hardware.precompile=true"])
    sdk = R.make_sdk(2)
    ipu.ipu_config(cfg, PP.make_plan(cfg), sdk)
    assert sdk.recorder.named("IPUConfig.device_connection.type") == [{"value": R.DeviceConnectionType.PRE_COMPILE}]
    assert sdk.recorder.named("IPUConfig.device_connection.version") == [{"value": "ipu2"}]


IPU_RUN = SMALL + ["hardware.ipus=4", "hardware.replicas=2", "hardware.pipeline_stages=2",
                   "hardware.gradient_accumulation=4", "hardware.steps_per_execution=8", "train.batch_size=16",
                   "train.epochs=3", "train.tensorboard=false"]


def test_training_on_ipus_calls_fit_in_the_sdks_units(monkeypatch, tmp_path):
    """Faults 3, 4 and 7, through the real train.train up to its fit call, with the recorder as the SDK."""
    from conductivity_tf import dataset, train
    from conductivity_tf.keras_compat import keras

    sdk = R.make_sdk(replicas=2)
    for name, module in R.modules(sdk).items():
        monkeypatch.setitem(sys.modules, name, module)
    R.extend_keras(keras, sdk, setattr=lambda *a: monkeypatch.setattr(*a, raising=False))
    cfg = C.load_config(overrides=IPU_RUN + ["train.out_dir={}".format(tmp_path / "run")])
    with pytest.raises(R.FitReached) as reached:
        train.train(cfg)
    call, model = reached.value.call, reached.value.model
    counts = dataset.load_manifest(cfg.data.path)["counts"]
    micro, replicas, spe, accumulation = 2, 2, 8, 4  # train.batch_size 16 = 2 x 4 x 2
    # 3: the SDK divides steps_per_epoch by the replicas; an epoch must still see the whole training split
    assert call["replica_steps"] == call["steps_per_epoch"] // replicas
    assert call["replica_steps"] % spe == 0
    assert counts["train"] - spe * micro * replicas < call["replica_steps"] * micro * replicas <= counts["train"]
    # 4: validation steps given (the SDK cannot infer the length of an interleaved, taken dataset)
    assert call["validation_steps"] and call["validation_steps"] * micro <= counts["validation"]
    # 7: the learning-rate schedule ends with the last weight update (optimizer.iterations counts updates)
    optimizer = model.optimizer  # tf-keras keeps the schedule in _learning_rate, Keras 2.6 among its hyperparameters
    schedule = getattr(optimizer, "_learning_rate", None) or optimizer._get_hyper("learning_rate")
    schedule = schedule.get_config()
    updates = call["replica_steps"] // accumulation * cfg.train.epochs
    assert schedule["total_steps"] == updates
    assert schedule["warmup_steps"] == int(cfg.train.warmup_epochs * call["replica_steps"] // accumulation)


def test_training_the_ipu_plan_and_the_train_benchmark_share_one_step_plan_and_one_model(monkeypatch):
    """The batch split is computed once (steps.step_plan): the session training sets up, the IPU plan made from
    the model it trains and the train benchmark's row for the same run agree; the model is built once."""
    from conductivity_tf import train
    from conductivity_tf.benchmark import training as benchmark
    from conductivity_tf.keras_compat import keras

    sdk = R.make_sdk(replicas=2)
    for name, module in R.modules(sdk).items():
        monkeypatch.setitem(sys.modules, name, module)
    R.extend_keras(keras, sdk, setattr=lambda *a: monkeypatch.setattr(*a, raising=False))
    builds = []
    real_build = train.build_model

    def counting_build(*args, **kwargs):
        builds.append(args)
        return real_build(*args, **kwargs)

    monkeypatch.setattr(train, "build_model", counting_build)
    monkeypatch.setattr(PP, "build_model", counting_build)
    run = dict(name="pod", kind="ipu", replicas=2, pipeline_stages=2, gradient_accumulation=4, micro_batch=2,
               precision="fp32", size=32, steps_per_execution=8, ipu_model="gc200", quick=False,
               model={"norm": "none", "widths": [4, 8], "head_units": 8})
    session = train.setup(benchmark.run_training_config(run), 4935)
    assert len(builds) == 1
    assert session.plan.steps == session.steps
    assert (session.steps.micro_batch, session.steps.accumulation, session.steps.replicas) == (2, 4, 2)
    assert session.steps.global_batch == benchmark._row_head(run)["global_batch"] == 16
    assert session.hardware.ipus == session.plan.ipus == benchmark._ipus(run) == 4
    assert session.steps.replica_steps == 4935 // (2 * 2) // 8 * 8


@needs_group_norm  # ipu_pod16's model
def test_plan_only_prints_steps_in_the_sdks_units_and_the_schedule_in_weight_updates():
    proc = run_module("conductivity_tf.train", "--config", "ipu_pod16", "--plan-only", "--train-samples", "4935")
    assert proc.returncode == 0, proc.stderr
    # ipu_pod16: micro-batch 2, 8 replicas, steps_per_execution 16, accumulation 8, 40 epochs
    per_replica = 4935 // (2 * 8) // 16 * 16
    assert "fit(steps_per_epoch={}) = {} steps per replica x 8 replica(s)".format(per_replica * 8, per_replica) \
        in proc.stdout
    assert "{} weight updates per epoch".format(per_replica // 8) in proc.stdout
    assert "until update {} (40 epochs".format(per_replica // 8 * 40) in proc.stdout


def test_training_on_ipus_without_the_sdk_is_one_line():
    if ipu.sdk_available():
        pytest.skip("Graphcore's SDK is installed here")
    proc = run_module("conductivity_tf.train", "hardware.kind=ipu", "hardware.ipus=4", "hardware.pipeline_stages=2",
                      "hardware.gradient_accumulation=8", "model.norm=none", "--out", "/tmp/ipu-run-not-created")
    assert_one_line_error(proc, "Poplar SDK", "--plan-only")


@needs_group_norm
def test_group_norm_on_ipus_computes_what_keras_group_normalization_computes(monkeypatch):
    """Fault 8: weights moved between keras.layers.GroupNormalization (CPU/GPU) and ipu_tensorflow_addons'
    GroupNorm (the SDK's Keras 2.6 has no GroupNormalization) must compute the same function."""
    from conductivity_tf.keras_compat import keras, tf
    from conductivity_tf.model import build_model

    if not hasattr(keras.layers, "GroupNormalization"):
        pytest.skip("this Keras has no keras.layers.GroupNormalization to compare with")
    cfg = C.load_config(overrides=["data.size=16", "model.norm=group", "model.widths=[8,16]", "model.groups=4"])
    reference = build_model(cfg.model, 16, 3)
    rng = np.random.default_rng(0)
    reference.set_weights([w + rng.normal(0, 0.3, w.shape).astype(w.dtype) for w in reference.get_weights()])
    addons = R.make_addons(keras, tf)
    for name, module in R.modules(addons=addons).items():
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.delattr(keras.layers, "GroupNormalization")
    on_ipu = build_model(cfg.model, 16, 3)
    calls = addons.recorder.named("GroupNorm")
    assert len(calls) == 2
    fresh = [w for layer in on_ipu.layers if "norm" in layer.name for w in layer.get_weights()]
    assert all(np.array_equal(w, np.ones_like(w)) or np.array_equal(w, np.zeros_like(w)) for w in fresh)
    on_ipu.set_weights(reference.get_weights())
    x = (rng.random((2, 16, 16, 16, 1)) < 0.5).astype("float32")
    np.testing.assert_allclose(on_ipu(x, training=False).numpy(), reference(x, training=False).numpy(), atol=1e-5)
    # the SDK's default grouping would compute another function with the same weights
    strided = R.make_addons(keras, tf).keras.layers.GroupNorm(groups=4, strided_channel_grouping=True)
    contiguous = R.make_addons(keras, tf).keras.layers.GroupNorm(groups=4, strided_channel_grouping=False,
                                                                 gamma_initializer="ones", beta_initializer="zeros")
    strided.build((None, 4, 4, 4, 16))
    strided.set_weights([np.ones(16, "float32"), np.zeros(16, "float32")])
    features = tf.constant(rng.normal(size=(2, 4, 4, 4, 16)) * np.arange(1, 17), tf.float32)
    assert not np.allclose(strided(features).numpy(), contiguous(features).numpy(), atol=1e-3)


def test_dockerfile_default_command_reaches_its_first_fit_step_with_the_recorder_as_the_sdk(tmp_path):
    """The IPU image's ENTRYPOINT + CMD, run by this Python with the recorder standing in for
    ``tensorflow.python.ipu`` and ``ipu_tensorflow_addons`` (the SDK images run Python 3.8 / TF 2.6)."""
    text = open(os.path.join(ROOT, "Dockerfile")).read()
    entrypoint = json.loads([line for line in text.splitlines() if line.startswith("ENTRYPOINT")][0][10:])
    command = json.loads([line for line in text.splitlines() if line.startswith("CMD")][0][3:])
    assert entrypoint[:2] == ["python3", "-m"]
    bootstrap = ("import runpy, sys; sys.path.insert(0, {root!r}); from tests import ipu_recorder as R; "
                 "sdk, _ = R.install(); sys.argv = [{module!r}] + sys.argv[1:]; "
                 "runpy.run_module({module!r}, run_name='__main__')").format(root=ROOT, module=entrypoint[2])
    env = dict(os.environ, PYTHONPATH=ROOT, TF_POPLAR_FLAGS="--executable_cache_path=" + str(tmp_path / "cache"))
    proc = subprocess.run([sys.executable, "-c", bootstrap] + command, cwd=str(tmp_path), capture_output=True,
                          text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "IPUStrategy" in proc.stdout and "reached the first fit step" in proc.stdout, proc.stdout


@pytest.mark.skipif(not ipu.sdk_available(), reason="Graphcore's SDK (tensorflow.python.ipu) is not importable here; "
                                                    "these run in the SDK container, on IPUs or the IPU Model")
def test_real_sdk_accepts_the_configuration():
    os.environ.setdefault("TF_POPLAR_FLAGS", "--use_ipu_model --ipu_model_tiles=8")
    sdk = ipu.import_sdk()
    cfg = C.load_config(overrides=BASE + ["data.size=16", "model.widths=[4,8]"])
    hardware = ipu.make_strategy(cfg.hardware, cfg, sdk=sdk)
    from conductivity_tf.model import build_model

    with hardware.strategy.scope():
        model = build_model(cfg.model, 16, 3)
        plan = PP.make_plan(cfg, model)
        ipu.configure_model(model, plan, cfg, sdk)
        model.compile(optimizer="adam", loss="mse", steps_per_execution=plan.steps.steps_per_execution)
