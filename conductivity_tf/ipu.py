"""Graphcore IPUs: IPUConfig, IPUStrategy / PopDistStrategy, pipeline stages and gradient accumulation.

Targets Poplar SDK 3.4 (TensorFlow 2.6.3, Graphcore's Keras 2.6, ipu_tensorflow_addons). Every call into
the SDK goes through the ``sdk`` argument (``tensorflow.python.ipu`` by default), so the calls can be
checked against the SDK's signatures on machines without it (tests/ipu_recorder.py). The model is the
same functional model as everywhere; this module only assigns its layers to the stages of the plan
(``pipeline_plan.py``) and sets the options. ``model.py`` never imports this module.
"""

import os

from conductivity_tf import pipeline_plan
from conductivity_tf.errors import UserError
from conductivity_tf.hardware import Hardware

SCHEDULES = {"grouped": "Grouped", "interleaved": "Interleaved", "sequential": "Sequential"}
REDUCTIONS = {"sum": "SUM", "mean": "MEAN", "running_mean": "RUNNING_MEAN"}
# hardware.recomputation per schedule: SDK 3.4 accepts RecomputeAndBackpropagateInterleaved (the one that keeps
# the least in flight) with Grouped and Sequential only, and RecomputeThenBackpropagate with Grouped and
# Interleaved (tensorflow/compiler/plugin/poplar/driver/tools/pipeline_util.cc, GetPipelineRecomputationMode)
RECOMPUTATION = {"grouped": "RecomputeAndBackpropagateInterleaved", "interleaved": "RecomputeThenBackpropagate",
                 "sequential": "RecomputeAndBackpropagateInterleaved"}


def import_sdk():
    """``tensorflow.python.ipu`` from Graphcore's SDK; UserError saying what to do when it is missing."""
    from conductivity_tf.keras_compat import tf  # noqa: F401  (TensorFlow first, with the Keras 2 API)

    try:
        from tensorflow.python import ipu
    except ImportError:
        raise UserError("hardware.kind=ipu needs Graphcore's Poplar SDK (tensorflow.python.ipu is not importable "
                        "here); run in the SDK's container (see the Dockerfile), or use --plan-only to check a "
                        "pipeline on any machine")
    return ipu


def sdk_available():
    try:
        import_sdk()
        return True
    except UserError:
        return False


def _poplar_options(precision, proportion=None):
    options = {}
    if precision == "fp16":
        options["partialsType"] = "half"
    if proportion:
        options["availableMemoryProportion"] = str(proportion)
    return options


def ipu_config(cfg, devices, sdk):
    """An ``IPUConfig`` for the configuration and its ``pipeline_plan.Layout`` (or plan: both say how many IPUs)
    (attributes only: the SDK's constructor takes none)."""
    h = cfg.hardware
    config = sdk.config.IPUConfig()
    config.auto_select_ipus = devices.ipus
    config.selection_order = getattr(sdk.config.SelectionOrder, h.selection_order.upper())
    config.allow_recompute = bool(h.recomputation)
    # per-stage options reach only a pipeline of two or more stages (pipelining_ops.pipeline); one stage takes its
    # available memory proportion here, for every convolution and matmul
    single = h.available_memory_proportion[0] if h.pipeline_stages == 1 and h.available_memory_proportion else None
    options = _poplar_options(cfg.train.precision, single)
    if options:
        config.convolutions.poplar_options = dict(options)
        config.matmuls.poplar_options = dict(options)
    if cfg.train.precision == "fp16":
        config.floating_point_behaviour.esr = sdk.config.StochasticRoundingBehaviour.ON
    if cfg.model.norm == "group":
        config.norms.use_stable_statistics = True
    if h.precompile:
        config.device_connection.type = sdk.config.DeviceConnectionType.PRE_COMPILE
        config.device_connection.version = h.ipu_version
    return config


def _launched_by_poprun():
    return "POPDIST_NUM_INSTANCES" in os.environ or "POPRUN_VERSION" in os.environ


def make_strategy(hardware_cfg, cfg=None, sdk=None, popdist_module=None):
    """Configure the IPU system and return a ``hardware.Hardware`` with IPUStrategy or PopDistStrategy.

    The IPUs come from the configuration (``pipeline_plan.layout``); the stages, which need the model, are
    planned once the model is built in this strategy's scope (``train.setup``)."""
    if cfg is None:
        raise UserError("the IPU strategy needs the whole configuration (train.setup passes it)")
    sdk = sdk or import_sdk()
    devices = pipeline_plan.layout(hardware_cfg)
    if devices.violations:
        raise UserError(devices.violations[0])
    if hardware_cfg.executable_cache:
        flags = os.environ.get("TF_POPLAR_FLAGS", "")
        if "--executable_cache_path" not in flags:
            cache = " --executable_cache_path=" + hardware_cfg.executable_cache
            os.environ["TF_POPLAR_FLAGS"] = (flags + cache).strip()
    config = ipu_config(cfg, devices, sdk)
    if popdist_module is not None or _launched_by_poprun():
        if popdist_module is None:
            import popdist
            import popdist.tensorflow  # noqa: F401

            popdist_module = popdist
        from tensorflow.python.ipu.distributed.popdist_strategy import PopDistStrategy

        popdist_module.tensorflow.set_ipu_config(config, ipus_per_replica=devices.ipus_per_replica)
        config.configure_ipu_system()
        strategy = PopDistStrategy()
        worker, instances = popdist_module.getInstanceIndex(), popdist_module.getNumInstances()
        description = "PopDistStrategy: instance {} of {}".format(worker, instances)
    else:
        config.configure_ipu_system()
        strategy = sdk.ipu_strategy.IPUStrategy()
        worker, instances = 0, 1
        description = "IPUStrategy: {} IPUs, {} stage(s) x {} replica(s)".format(devices.ipus, devices.stages,
                                                                              devices.replicas)
    sdk.utils.reset_ipu_seed(cfg.train.seed)
    return Hardware(strategy, "ipu", devices.replicas, description, worker, instances, devices.ipus)


def configure_model(model, plan, cfg, sdk):
    """Assign the plan's stages to the model's layers and set pipelining or gradient-accumulation options.

    Called inside the strategy scope on the model built there.
    """
    h = cfg.hardware
    reduction = getattr(sdk.optimizers.GradientAccumulationReductionMethod, REDUCTIONS[h.reduction])
    if len(plan.stages) > 1:
        stage_of = {layer.name: stage.index for stage in plan.stages for layer in stage.layers}
        assignments = model.get_pipeline_stage_assignment()
        for assignment in assignments:
            assignment.pipeline_stage = stage_of[assignment.layer.name]
        model.set_pipeline_stage_assignment(assignments)
        ops = sdk.ops.pipelining_ops
        kwargs = {"gradient_accumulation_steps_per_replica": plan.steps.accumulation,
                  "device_mapping": list(plan.device_mapping),
                  "gradient_accumulation_reduction_method": reduction,
                  "pipeline_schedule": getattr(ops.PipelineSchedule, SCHEDULES[h.schedule])}
        if h.recomputation:
            kwargs["recomputation_mode"] = getattr(ops.RecomputationMode, RECOMPUTATION[h.schedule])
        if h.available_memory_proportion or cfg.train.precision == "fp16":
            per_stage = [ops.PipelineStageOptions(
                convolution_options=_poplar_options(cfg.train.precision, stage.available_memory_proportion),
                matmul_options=_poplar_options(cfg.train.precision, stage.available_memory_proportion))
                for stage in plan.stages]
            kwargs["forward_propagation_stages_poplar_options"] = per_stage
            kwargs["backward_propagation_stages_poplar_options"] = per_stage
        model.set_pipelining_options(**kwargs)
    elif plan.steps.accumulation > 1:
        model.set_gradient_accumulation_options(gradient_accumulation_steps_per_replica=plan.steps.accumulation,
                                                gradient_accumulation_reduction_method=reduction)


def optimizer(cfg, learning_rate, keras):
    """Graphcore's IPU Adam/SGD from ipu_tensorflow_addons where installed, else Keras's."""
    try:
        from ipu_tensorflow_addons.keras import optimizers as ipu_optimizers
    except ImportError:
        ipu_optimizers = None
    if cfg.train.optimizer == "adam":
        if ipu_optimizers is not None:
            return ipu_optimizers.AdamIpuOptimizer(learning_rate=learning_rate)
        return keras.optimizers.Adam(learning_rate)
    if ipu_optimizers is not None:
        return ipu_optimizers.SGDIpuOptimizer(learning_rate=learning_rate, momentum=0.9)
    return keras.optimizers.SGD(learning_rate, momentum=0.9)
