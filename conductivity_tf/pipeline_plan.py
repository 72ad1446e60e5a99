"""The IPU pipeline plan, in plain Python: cost per layer, balanced stages, and every IPU rule checked.

Nothing here imports Graphcore's SDK, so a plan can be made, printed and checked on any machine
(``python -m conductivity_tf.train hardware.kind=ipu ... --plan-only``) before a job is sent to a POD.

Cost model, per layer, at the configured micro-batch and precision (documented estimates, not Poplar's
own numbers, which need the compiler):

- parameters, and their memory when training: weight + gradient accumulator + two optimizer slots
  (Adam), all at the parameter precision;
- activations: the layer's output at the micro-batch size. In a grouped pipeline stage s (0-based) of S
  keeps the activations of up to 2(S - s) - 1 micro-batches in flight for the backward pass; with
  recomputation it keeps only its input per micro-batch in flight plus one micro-batch of activations;
- FLOPs: forward multiply-adds x 2 for convolutions and dense layers, a few per element for the rest;
  training is taken as 3x forward.

Stages are contiguous runs of layers in the model's order. Without split points the plan chooses the
split that minimises the largest stage's training FLOPs (dynamic programming over the cut positions)
among the splits whose stages fit the memory budget (``ipu_memory_mb - memory_reserve_mb`` per IPU).
With ``hardware.split_points`` the user's split is taken and its balance reported.
"""

from dataclasses import dataclass, field
from typing import List

from conductivity_tf.errors import UserError
from conductivity_tf.model import build_model
from conductivity_tf.steps import StepPlan, describe, nearest_global_batch, step_plan

BYTES = {"fp32": 4, "fp16": 2, "mixed_float16": 2, "mixed_bfloat16": 2, "auto": 4}
OPTIMIZER_COPIES = 4  # weight, gradient accumulator, Adam m and v


@dataclass
class LayerCost:
    name: str
    kind: str
    params: int
    activation_values: int  # output values per sample
    flops: int              # forward FLOPs per sample


@dataclass
class Stage:
    index: int
    layers: List[LayerCost]
    ipu: int
    params: int = 0
    activation_mb: float = 0.0
    memory_mb: float = 0.0
    train_gflops: float = 0.0  # per micro-batch
    available_memory_proportion: float = 0.0


@dataclass
class PipelinePlan:
    stages: List[Stage]
    ipus: int
    ipus_per_replica: int
    steps: StepPlan
    schedule: str
    reduction: str
    budget_mb: float
    device_mapping: List[int]
    violations: List[str] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)

    @property
    def balance(self):
        """Largest stage's compute over the mean (1.0 = perfectly balanced)."""
        loads = [s.train_gflops for s in self.stages]
        return max(loads) / (sum(loads) / len(loads)) if sum(loads) else 1.0


def layer_costs(model):
    """Per-layer parameters, output size and forward FLOPs of a built Keras model (any Keras)."""
    costs = []
    for layer in model.layers:
        kind = type(layer).__name__
        if kind == "InputLayer":
            continue
        shape = layer.output.shape
        values = 1
        for d in shape[1:]:
            values *= int(d)
        flops = 4 * values  # normalisation, activation, pooling, elementwise: a few per element
        if kind == "Conv3D":
            k = layer.kernel_size
            flops = 2 * k[0] * k[1] * k[2] * int(layer.input.shape[-1]) * values
        elif kind == "Dense":
            flops = 2 * int(layer.input.shape[-1]) * layer.units
        costs.append(LayerCost(layer.name, kind, int(layer.count_params()), values, int(flops)))
    return costs


def next_power_of_two(n):
    """The IPUs a replica of ``n`` pipeline stages occupies (the SDK attaches IPUs in powers of two)."""
    p = 1
    while p < n:
        p *= 2
    return p


def _stage(index, layers, micro_batch, bytes_per_value, in_flight, recompute):
    params = sum(c.params for c in layers)
    act_values = sum(c.activation_values for c in layers) * micro_batch
    if recompute:
        stashed = layers[0].activation_values * micro_batch * in_flight + act_values
    else:
        stashed = act_values * in_flight
    activation_mb = stashed * bytes_per_value / 1e6
    weights_mb = params * OPTIMIZER_COPIES * bytes_per_value / 1e6
    flops = 3 * sum(c.flops for c in layers) * micro_batch
    return Stage(index, layers, index, params, activation_mb, weights_mb + activation_mb, flops / 1e9)


def _in_flight(stage, stages, schedule):
    if stages == 1 or schedule == "sequential":
        return 1
    return 2 * (stages - stage) - 1


def _balanced_cuts(costs, stages, fits):
    """Cut positions (len stages - 1) minimising the largest stage's FLOPs, among splits that fit."""
    n = len(costs)
    prefix = [0]
    for c in costs:
        prefix.append(prefix[-1] + c.flops)
    inf = float("inf")
    # best[s][i]: smallest achievable max-load placing layers[:i] into s stages; cut[s][i]: last cut
    best = [[inf] * (n + 1) for _ in range(stages + 1)]
    cut = [[-1] * (n + 1) for _ in range(stages + 1)]
    best[0][0] = 0
    for s in range(1, stages + 1):
        for i in range(s, n - (stages - s) + 1):
            for j in range(s - 1, i):
                if best[s - 1][j] == inf or not fits(s - 1, j, i):
                    continue
                load = max(best[s - 1][j], prefix[i] - prefix[j])
                if load < best[s][i]:
                    best[s][i], cut[s][i] = load, j
    if best[stages][n] == inf:
        return None
    cuts, i = [], n
    for s in range(stages, 0, -1):
        j = cut[s][i]
        cuts.append(j)
        i = j
    return sorted(cuts)[1:]


@dataclass
class Layout:
    """How many IPUs a replica takes and how many replicas there are: from the configuration alone, so the IPU
    system can be configured before the model exists (the plan's stages need the model)."""
    stages: int
    ipus_per_replica: int  # the stages rounded up to a power of two (the SDK attaches IPUs in powers of two)
    ipus: int
    replicas: int
    violations: List[str] = field(default_factory=list)


def layout(hardware_cfg):
    """The ``Layout`` of ``hardware_cfg`` (a ``config.HardwareConfig``), with the violated rules, one line each."""
    h = hardware_cfg
    stages = h.pipeline_stages
    violations = []
    ipus_per_replica = next_power_of_two(stages)
    ipus = h.ipus or ipus_per_replica * (h.replicas or 1)
    if stages > ipus:
        violations.append("hardware.pipeline_stages={} needs at least {} IPUs but hardware.ipus={}; use more IPUs or "
                          "fewer stages".format(stages, stages, ipus))
    replicas = h.replicas or max(1, ipus // ipus_per_replica)
    if ipus_per_replica * replicas > ipus and stages <= ipus:
        violations.append("{} replicas x {} IPUs per replica ({} stages, rounded up to a power of two) need {} IPUs "
                          "but hardware.ipus={}; lower hardware.replicas or raise hardware.ipus".format(
                              replicas, ipus_per_replica, stages, ipus_per_replica * replicas, ipus))
    elif ipus % ipus_per_replica and stages <= ipus:
        violations.append("hardware.ipus={} is not a multiple of the {} IPUs a replica of {} stages occupies; use {} "
                          "IPUs".format(ipus, ipus_per_replica, stages, ipus // ipus_per_replica * ipus_per_replica
                                        or ipus_per_replica))
    return Layout(stages, ipus_per_replica, ipus, replicas, violations)


def _steps(cfg, devices, train_samples=None):
    """The plan's ``StepPlan`` for the ``Layout`` ``devices``, and the violated rules of the batch split and the
    epoch (a batch that does not split is planned as the nearest one that does)."""
    h, t = cfg.hardware, cfg.train
    replicas, accumulation, violations = devices.replicas, h.gradient_accumulation, []
    try:
        steps = step_plan(t.batch_size, replicas, accumulation, h.steps_per_execution, on_ipu=True)
    except UserError as err:
        violations.append(str(err))
        steps = step_plan(nearest_global_batch(t.batch_size, replicas, accumulation), replicas, accumulation,
                          accumulation, on_ipu=True)
    if train_samples is not None:
        try:
            steps = step_plan(steps.global_batch, replicas, accumulation, steps.steps_per_execution, on_ipu=True,
                              train_samples=train_samples)
        except UserError as err:
            violations.append(str(err))
    return steps, violations


def model_free_violations(cfg, train_samples=None):
    """The violated IPU rules that need no model (devices, the batch split, the epoch), first in ``make_plan``'s
    order: checked before a model is built, so that such a plan fails before TensorFlow loads."""
    devices = layout(cfg.hardware)
    return devices.violations + _steps(cfg, devices, train_samples)[1]


def make_plan(cfg, model=None, train_samples=None):
    """The pipeline plan for a resolved configuration (``hardware.kind=ipu``) and its built model (training
    passes the one it trains; without one, for planning alone, the configured model is built here).

    ``train_samples``: training-split size, to check that an epoch is a whole number of executions.
    Violations of IPU rules are collected in ``plan.violations`` (one line each, with the fix).
    """
    devices = layout(cfg.hardware)
    steps, violations = _steps(cfg, devices, train_samples)
    violations = devices.violations + violations
    if model is None:
        model = build_model(cfg.model, cfg.data.size, len(cfg.data.axes))
    h, t = cfg.hardware, cfg.train
    costs = layer_costs(model)
    stages, ipus_per_replica, ipus = devices.stages, devices.ipus_per_replica, devices.ipus
    notes = []
    accumulation = h.gradient_accumulation
    micro_batch = steps.micro_batch
    if stages > 1:
        # SDK 3.4 (tensorflow/compiler/plugin/poplar/driver/visitors/pipeline_visitor.cc,
        # PipelineVisitor::VerifyPipelineArgumentsFixed): the accumulation count must be a multiple of the
        # schedule's overlap length: Grouped, every forward and backward stage (2 x stages when training);
        # Interleaved, the stages on distinct IPUs (pipeline_visitor_utils.h, CircularUnion); Sequential, 1.
        # The project sets no IO tiles (io_tiles.num_io_tiles = 0), so the Grouped rule is not the IO-tile
        # visitor's (grouped_overlap_pipeline_visitor.cc: >= 2 x stages + 2).
        if h.schedule == "grouped" and accumulation % (2 * stages):
            violations.append("the grouped pipeline schedule needs hardware.gradient_accumulation to be a multiple "
                              "of 2 x stages = {} (got {}); use {}".format(
                                  2 * stages, accumulation, -(-accumulation // (2 * stages)) * 2 * stages))
        if h.schedule == "interleaved" and accumulation % stages:
            violations.append("the interleaved schedule needs hardware.gradient_accumulation to be a multiple of the "
                              "{} stages (got {})".format(stages, accumulation))
        if model_uses_batch_norm(costs):
            notes.append("BatchNormalization in a pipeline does not update its moving statistics properly on IPUs; "
                         "model.norm=group is the usual choice")
    bytes_per_value = BYTES.get(t.precision, 4)
    budget = h.ipu_memory_mb - h.memory_reserve_mb

    def build_stage(index, layers):
        stage = _stage(index, layers, micro_batch, bytes_per_value, _in_flight(index, stages, h.schedule),
                       h.recomputation)
        if h.available_memory_proportion:
            stage.available_memory_proportion = h.available_memory_proportion[index]
        return stage

    names = [c.name for c in costs]
    if stages > len(costs):
        raise UserError("hardware.pipeline_stages={} exceeds the model's {} layers; use fewer stages".format(
            stages, len(costs)))
    if h.split_points:
        missing = [p for p in h.split_points if p not in names]
        if missing:
            raise UserError("hardware.split_points names {} which is not a layer of the model; layers are: {}".format(
                missing[0], ", ".join(names)))
        cuts = [names.index(p) for p in h.split_points]
        if cuts != sorted(cuts) or len(set(cuts)) != len(cuts) or cuts[0] == 0:
            raise UserError("hardware.split_points must name layers in model order, after the first layer: {}".format(
                ", ".join(h.split_points)))
    else:
        def fits(stage_index, start, end):
            return build_stage(stage_index, costs[start:end]).memory_mb <= budget

        cuts = _balanced_cuts(costs, stages, fits)
        if cuts is None:
            cuts = _balanced_cuts(costs, stages, lambda *a: True)
    bounds = [0] + list(cuts) + [len(costs)]
    plan_stages = [build_stage(i, costs[bounds[i]:bounds[i + 1]]) for i in range(stages)]
    for stage in plan_stages:
        if stage.memory_mb > budget:
            violations.append("stage {} needs about {:.0f} MB but an IPU has {:.0f} MB for it; add pipeline stages, "
                              "enable hardware.recomputation or lower the micro-batch".format(
                                  stage.index, stage.memory_mb, budget))
    return PipelinePlan(plan_stages, ipus, ipus_per_replica, steps, h.schedule, h.reduction, budget,
                        list(range(stages)), violations, notes)


def model_uses_batch_norm(costs):
    return any(c.kind == "BatchNormalization" for c in costs)


def format_plan(plan, train_cfg=None):
    """The plan as a table and a summary, for ``--plan-only``; with ``train_cfg`` (a ``config.TrainConfig``) also
    an epoch in the SDK's steps and the learning-rate schedule in weight updates."""
    lines = ["IPU pipeline plan: {} stage(s) x {} replica(s) on {} IPUs ({} IPUs per replica), schedule {}".format(
        len(plan.stages), plan.steps.replicas, plan.ipus, plan.ipus_per_replica, plan.schedule),
        "global batch {} = micro-batch {} x gradient accumulation {} x replicas {}; steps per execution {}; "
        "reduction {}".format(plan.steps.global_batch, plan.steps.micro_batch, plan.steps.accumulation,
                              plan.steps.replicas, plan.steps.steps_per_execution, plan.reduction),
        "",
        "| stage | IPU | layers | parameters | activations (MB) | memory (MB) / budget | train GFLOP per micro-batch |",
        "|---|---|---|---|---|---|---|"]
    for s in plan.stages:
        lines.append("| {} | {} | {} .. {} ({}) | {:,} | {:.1f} | {:.0f} / {:.0f} ({:.0%}) | {:.2f} |".format(
            s.index, s.ipu, s.layers[0].name, s.layers[-1].name, len(s.layers), s.params, s.activation_mb,
            s.memory_mb, plan.budget_mb, s.memory_mb / plan.budget_mb, s.train_gflops))
    lines.append("")
    lines.append("balance: the largest stage does {:.2f}x the mean stage's compute".format(plan.balance))
    if train_cfg is not None:
        lines += describe(plan.steps, train_cfg.epochs, train_cfg.warmup_epochs, train_cfg.schedule)
    lines += ["note: " + n for n in plan.notes]
    lines += ["violation: " + v for v in plan.violations]
    return "\n".join(lines)
