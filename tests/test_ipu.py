"""The IPU path's calls into Graphcore's SDK, checked against SDK 3.4 by the recorder in ipu_recorder.py.

Tests that need the real SDK run where ``tensorflow.python.ipu`` imports (IPU Model when no hardware) and
are skipped, saying so, elsewhere.
"""

import os

import pytest

from conductivity_tf import config as C
from conductivity_tf import ipu
from conductivity_tf import pipeline_plan as PP
from tests import ipu_recorder as R
from tests.conftest import assert_one_line_error, run_module

BASE = ["hardware.kind=ipu", "data.size=64", "model.norm=group", "hardware.ipus=4", "hardware.pipeline_stages=2",
        "hardware.gradient_accumulation=8"]


def configured(*overrides, replicas=2):
    from conductivity_tf.model import build_model

    cfg = C.load_config(overrides=BASE + list(overrides))
    plan = PP.make_plan(cfg)
    sdk = R.make_sdk(replicas)
    model = R.attach_keras_methods(build_model(cfg.model, cfg.data.size, 3), sdk)
    ipu.configure_model(model, plan, cfg, sdk)
    return cfg, plan, sdk


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
    _, _, sdk = configured("hardware.schedule={}".format(schedule), "hardware.reduction={}".format(reduction))
    (options,) = sdk.recorder.named("set_pipelining_options")
    assert options["pipeline_schedule"] is enum_schedule
    assert options["gradient_accumulation_reduction_method"] is enum_reduction


def test_one_stage_uses_gradient_accumulation_options():
    _, _, sdk = configured("hardware.pipeline_stages=1", "hardware.ipus=1", "hardware.gradient_accumulation=4")
    assert not sdk.recorder.named("set_pipelining_options")
    (options,) = sdk.recorder.named("set_gradient_accumulation_options")
    assert options["gradient_accumulation_steps_per_replica"] == 4


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
    assert (hardware.kind, hardware.replicas) == ("ipu", 2)


def test_precompile_connects_to_no_device():
    cfg = C.load_config(overrides=BASE + ["hardware.precompile=true"])
    sdk = R.make_sdk(2)
    ipu.ipu_config(cfg, PP.make_plan(cfg), sdk)
    assert sdk.recorder.named("IPUConfig.device_connection.type") == [{"value": R.DeviceConnectionType.PRE_COMPILE}]
    assert sdk.recorder.named("IPUConfig.device_connection.version") == [{"value": "ipu2"}]


def test_the_recorder_rejects_what_sdk_3_4_rejects():
    from conductivity_tf.model import build_model

    sdk = R.make_sdk()
    cfg = C.load_config(overrides=BASE)
    model = R.attach_keras_methods(build_model(cfg.model, 64, 3), sdk)
    with pytest.raises(ValueError, match="gradient_accumulation_count"):
        model.set_pipelining_options(gradient_accumulation_steps_per_replica=8, gradient_accumulation_count=8)
    with pytest.raises(TypeError):
        model.set_pipelining_options(gradient_accumulation_steps_per_replica=8, pipeline_schedule="grouped")
    with pytest.raises(TypeError):
        model.set_pipelining_options(8, None, None, "mean", pipeline_stages=2)
    config = sdk.config.IPUConfig()
    with pytest.raises(AttributeError):
        config.num_ipus = 4
    with pytest.raises(TypeError):
        config.convolutions.poplar_options = {"availableMemoryProportion": 0.6}
    with pytest.raises(TypeError):
        sdk.config.IPUConfig(4)
    # a stage assignment that uses a later stage's output is refused, as by the SDK
    assignments = model.get_pipeline_stage_assignment()
    for i, a in enumerate(assignments):
        a.pipeline_stage = 1 if i == 0 else 0
    with pytest.raises(ValueError, match="dependency"):
        model.set_pipeline_stage_assignment(assignments)


def test_training_on_ipus_without_the_sdk_is_one_line():
    if ipu.sdk_available():
        pytest.skip("Graphcore's SDK is installed here")
    proc = run_module("conductivity_tf.train", "hardware.kind=ipu", "hardware.ipus=4", "hardware.pipeline_stages=2",
                      "hardware.gradient_accumulation=8", "model.norm=group", "--out", "/tmp/ipu-run-not-created")
    assert_one_line_error(proc, "Poplar SDK", "--plan-only")


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
        ipu.configure_model(model, hardware.plan, cfg, sdk)
        model.compile(optimizer="adam", loss="mse", steps_per_execution=hardware.plan.steps_per_execution)
