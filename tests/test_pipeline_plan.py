"""The IPU pipeline plan: costs, balanced stages, IPU rules — on any machine."""

import itertools

import numpy as np
import pytest

from conductivity_tf import config as C
from conductivity_tf import pipeline_plan as PP
from conductivity_tf.errors import UserError
from tests.conftest import assert_one_line_error, needs_group_norm, run_module

# the plan does not depend on the normalisation; norm=none also plans on Keras 2.6 without Graphcore's GroupNorm
IPU = ["hardware.kind=ipu", "data.size=64", "model.norm=none"]


def plan_for(*overrides):
    return PP.make_plan(C.load_config(overrides=IPU + list(overrides)))


def test_default_model_on_4_ipus_with_2_stages_fits_and_is_optimally_balanced():
    plan = plan_for("hardware.ipus=4", "hardware.pipeline_stages=2", "hardware.gradient_accumulation=8")
    assert plan.violations == []
    steps = plan.steps
    assert (plan.ipus_per_replica, steps.replicas, steps.micro_batch, steps.global_batch) == (2, 2, 2, 32)
    assert all(s.memory_mb <= plan.budget_mb for s in plan.stages)
    costs = PP.layer_costs(__import__("conductivity_tf.model", fromlist=["build_model"]).build_model(
        C.load_config(overrides=IPU).model, 64, 3))
    # the stages are the model's layers, in order, each once
    assert [c.name for s in plan.stages for c in s.layers] == [c.name for c in costs]
    # no other contiguous split has a smaller largest stage
    best = min(max(sum(c.flops for c in costs[:k]), sum(c.flops for c in costs[k:])) for k in range(1, len(costs)))
    assert max(sum(c.flops for c in s.layers) for s in plan.stages) == best


def test_four_stages_balance_by_brute_force():
    plan = plan_for("hardware.ipus=4", "hardware.pipeline_stages=4", "hardware.gradient_accumulation=8",
                    "model.widths=[8,16,32,64]")
    layers = [c for s in plan.stages for c in s.layers]
    n = len(layers)

    def worst(cuts):
        bounds = [0] + list(cuts) + [n]
        return max(sum(c.flops for c in layers[a:b]) for a, b in zip(bounds, bounds[1:]))

    best = min(worst(cuts) for cuts in itertools.combinations(range(1, n), 3))
    assert max(sum(c.flops for c in s.layers) for s in plan.stages) == best
    assert plan.ipus_per_replica == 4 and plan.steps.replicas == 1


def test_conv_flops_match_the_textbook_count():
    from conductivity_tf.model import build_model

    cfg = C.load_config(overrides=IPU)
    costs = {c.name: c for c in PP.layer_costs(build_model(cfg.model, 64, 3))}
    edge = 64 // cfg.model.stem_stride
    # 3x3x3 kernel, 1 input channel, 16 filters, edge^3 outputs; without a normalisation the convolution has a bias
    assert costs["level0_conv0"].flops == 2 * 27 * 1 * 16 * edge ** 3
    assert costs["level0_conv0"].params == 27 * 16 + 16
    assert costs["level1_conv0"].activation_values == (edge // 2) ** 3 * 32


@pytest.mark.parametrize("overrides, fragment", [
    (["hardware.ipus=2", "hardware.pipeline_stages=3", "hardware.gradient_accumulation=8"], "needs at least 3 IPUs"),
    # tensorflow/compiler/plugin/poplar/driver/visitors/pipeline_visitor.cc, VerifyPipelineArgumentsFixed: the
    # accumulation count is a multiple of the overlap length, for Grouped all forward + backward stages
    # (pipeline_visitor_utils.h, GroupedScheduler / AllUnion): 2 x stages
    (["hardware.ipus=4", "hardware.pipeline_stages=2", "hardware.gradient_accumulation=2"],
     "multiple of 2 x stages = 4"),
    (["hardware.ipus=4", "hardware.pipeline_stages=2", "hardware.gradient_accumulation=6", "train.batch_size=24"],
     "multiple of 2 x stages = 4 (got 6); use 8"),
    (["hardware.ipus=4", "hardware.pipeline_stages=3", "hardware.gradient_accumulation=8"],
     "multiple of 2 x stages = 6 (got 8)"),
    # the same visitor for Interleaved, whose overlap length is the stages on distinct IPUs (CircularUnion)
    (["hardware.ipus=4", "hardware.pipeline_stages=2", "hardware.gradient_accumulation=4",
      "hardware.schedule=interleaved", "hardware.pipeline_stages=3", "train.batch_size=24"], "multiple of the 3"),
    (["hardware.ipus=6", "hardware.pipeline_stages=2", "hardware.gradient_accumulation=8",
      "hardware.replicas=4"], "need 8 IPUs"),
    (["hardware.ipus=2", "hardware.pipeline_stages=2", "hardware.gradient_accumulation=8",
      "hardware.ipu_memory_mb=205"], "stage 0 needs about"),
])
def test_ipu_rules_are_violations_with_a_fix(overrides, fragment):
    plan = plan_for(*overrides)
    assert any(fragment in v for v in plan.violations), plan.violations


def test_three_stages_take_four_ipus_per_replica():
    plan = plan_for("hardware.ipus=8", "hardware.pipeline_stages=3", "hardware.gradient_accumulation=12",
                    "train.batch_size=24")
    assert (plan.ipus_per_replica, plan.steps.replicas, plan.violations) == (4, 2, [])


def test_recomputation_lowers_the_first_stage_memory():
    plain = plan_for("hardware.ipus=2", "hardware.pipeline_stages=2", "hardware.gradient_accumulation=8")
    recomputed = plan_for("hardware.ipus=2", "hardware.pipeline_stages=2", "hardware.gradient_accumulation=8",
                          "hardware.recomputation=true")
    assert recomputed.stages[0].activation_mb < plain.stages[0].activation_mb


def test_user_split_points():
    plan = plan_for("hardware.ipus=2", "hardware.pipeline_stages=2", "hardware.gradient_accumulation=8",
                    "hardware.split_points=[level2_conv0]")
    assert plan.stages[1].layers[0].name == "level2_conv0"
    assert plan.balance > 1.0
    with pytest.raises(UserError, match="not a layer of the model"):
        plan_for("hardware.ipus=2", "hardware.pipeline_stages=2", "hardware.gradient_accumulation=8",
                 "hardware.split_points=[nope]")


def test_plan_only_cli():
    ok = run_module("conductivity_tf.train", *IPU, "hardware.ipus=4", "hardware.pipeline_stages=2",
                    "hardware.gradient_accumulation=8", "--plan-only")
    assert ok.returncode == 0, ok.stderr
    assert "| 0 | 0 |" in ok.stdout and "| 1 | 1 |" in ok.stdout and "budget" in ok.stdout
    assert_one_line_error(run_module("conductivity_tf.train", *IPU, "hardware.ipus=2", "hardware.pipeline_stages=3",
                                     "hardware.gradient_accumulation=8", "--plan-only"), "at least 3 IPUs")
    assert_one_line_error(run_module("conductivity_tf.train", *IPU, "hardware.ipus=4", "hardware.pipeline_stages=2",
                                     "hardware.gradient_accumulation=8", "hardware.steps_per_execution=12",
                                     "--plan-only"), "steps_per_execution=12 is not divisible")
    assert_one_line_error(run_module("conductivity_tf.train", "--plan-only"), "hardware.kind=ipu")


@needs_group_norm  # the presets' models use group normalisation
@pytest.mark.parametrize("preset", [p for p in C.list_presets() if C.load_config(p).hardware.kind == "ipu"])
def test_shipped_ipu_presets_pass_their_plan(preset):
    plan = PP.make_plan(C.load_config(preset))
    assert plan.violations == [] and all(s.memory_mb <= plan.budget_mb for s in plan.stages)


PIPELINE_SCRIPT = '''
import json, sys
import numpy as np
from conductivity_tf.keras_compat import tf, keras, set_random_seed
cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(cpus[0], [tf.config.LogicalDeviceConfiguration()] * 4)
from conductivity_tf import config as C, pipeline_plan as PP
from conductivity_tf.cpu_pipeline import CpuPipeline
from conductivity_tf.model import build_model

stages = int(sys.argv[1])
cfg = C.load_config(overrides=["hardware.kind=ipu", "data.size=16", "model.norm=none", "model.widths=[4,8,16,32]",
                               "model.head_units=8", "hardware.ipus={}".format(stages),
                               "hardware.pipeline_stages={}".format(stages), "hardware.schedule=grouped",
                               "hardware.gradient_accumulation=8", "train.batch_size=16"])
rng = np.random.default_rng(1)
x = tf.constant((rng.random((16, 16, 16, 16, 1)) < 0.5).astype("float32"))
y = tf.constant(rng.random((16, 3)).astype("float32") * 0.3)
loss = keras.losses.MeanSquaredError()


def fresh():
    set_random_seed(0)
    return build_model(cfg.model, 16, 3)


model = fresh()
plan = PP.make_plan(cfg, model)
assert not plan.violations, plan.violations
pipe = CpuPipeline(model, plan, ["/cpu:{}".format(i) for i in range(stages)], loss, keras.optimizers.SGD(0.5))
piped, _ = pipe.gradients(x, y)
with tf.GradientTape() as tape:
    full_loss = loss(y, model(x, training=True))
full = tape.gradient(full_loss, model.trainable_variables)
grad_error = max(float(tf.reduce_max(tf.abs(a - b)) / tf.reduce_max(tf.abs(b))) for a, b in zip(piped, full))
curve_pipe = [pipe.train_step(x, y) for _ in range(3)]
reference = fresh()
optimizer = keras.optimizers.SGD(0.5)
curve_full = []
for _ in range(3):
    with tf.GradientTape() as tape:
        value = loss(y, reference(x, training=True))
    optimizer.apply_gradients(zip(tape.gradient(value, reference.trainable_variables), reference.trainable_variables))
    curve_full.append(float(value))
print(json.dumps({"grad_error": grad_error, "pipe": curve_pipe, "full": curve_full,
                  "layers_per_stage": [len(s.layers) for s in plan.stages]}))
'''


@pytest.mark.parametrize("stages", [2, 4])
def test_cpu_pipeline_reference_matches_unpipelined_training(stages):
    import json
    import os
    import subprocess
    import sys

    from tests.conftest import ROOT

    proc = subprocess.run([sys.executable, "-c", PIPELINE_SCRIPT, str(stages)], capture_output=True, text=True,
                          cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(result["layers_per_stage"]) == stages
    assert result["grad_error"] <= 1e-5
    np.testing.assert_allclose(result["pipe"], result["full"], rtol=1e-5)
    assert result["full"][2] < result["full"][0]      # the curve is a real descent, not a constant


def test_check_on_cpu_from_the_command_line():
    import re

    proc = run_module("conductivity_tf.train", "hardware.kind=ipu", "hardware.ipus=2", "hardware.pipeline_stages=2",
                      "hardware.gradient_accumulation=8", "model.norm=none", "--plan-only", "--check-on-cpu")
    assert proc.returncode == 0, proc.stderr[-2000:]
    line = [x for x in proc.stdout.splitlines() if x.startswith("CPU pipeline check")][0]
    assert "/cpu:0, /cpu:1" in line and "data/small32" in line
    assert float(re.search(r"all weights\) ([0-9.e+-]+)", line).group(1)) < 1e-5
