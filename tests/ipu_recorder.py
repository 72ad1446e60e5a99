"""A recorder standing in for Graphcore's SDK 3.4 (``tensorflow.python.ipu`` and the Keras IPU model methods).

It accepts exactly what SDK 3.4 accepts (signatures, keyword arguments, enum members, IPUConfig attributes,
as in the SDK's sources: graphcore/tensorflow and graphcore/keras, branch r2.6/sdk-release-3.4) and records
every call; anything else raises as the SDK would. This is the only stand-in in the test suite.
"""

import contextlib
import enum
import types


class Recorder(object):
    def __init__(self):
        self.calls = []

    def record(self, name, **kwargs):
        self.calls.append((name, kwargs))

    def named(self, name):
        return [kw for n, kw in self.calls if n == name]


class SelectionOrder(enum.Enum):
    AUTO = 0
    ZIGZAG = 1
    SNAKE = 2
    HOOF = 3


class StochasticRoundingBehaviour(enum.Enum):
    OFF = 0
    ON = 1
    REPLICA_IDENTICAL_ONLY = 2


class DeviceConnectionType(enum.Enum):
    ALWAYS = 0
    ON_DEMAND = 1
    PRE_COMPILE = 2
    NEVER = 3


class PipelineSchedule(enum.IntEnum):
    Grouped = 0
    Interleaved = 1
    Sequential = 2


class RecomputationMode(enum.Enum):
    Auto = 0
    RecomputeThenBackpropagate = 1
    RecomputeAndBackpropagateInterleaved = 2


class GradientAccumulationReductionMethod(enum.Enum):
    SUM = 0
    MEAN = 1
    RUNNING_MEAN = 2


# IPUConfig attributes the project may set, with the type each takes (SDK 3.4 ipu.config)
CONFIG_ATTRIBUTES = {
    "auto_select_ipus": (int, list, tuple),
    "selection_order": SelectionOrder,
    "allow_recompute": bool,
    "convolutions.poplar_options": dict,
    "matmuls.poplar_options": dict,
    "floating_point_behaviour.esr": StochasticRoundingBehaviour,
    "norms.use_stable_statistics": bool,
    "device_connection.type": DeviceConnectionType,
    "device_connection.version": str,
}


class _ConfigNode(object):
    def __init__(self, recorder, prefix):
        object.__setattr__(self, "_recorder", recorder)
        object.__setattr__(self, "_prefix", prefix)

    def __getattr__(self, name):
        key = self._prefix + name
        if any(k.startswith(key + ".") for k in CONFIG_ATTRIBUTES):
            return _ConfigNode(self._recorder, key + ".")
        raise AttributeError("IPUConfig has no attribute {}".format(key))

    def __setattr__(self, name, value):
        key = self._prefix + name
        if key not in CONFIG_ATTRIBUTES:
            raise AttributeError("IPUConfig has no settable attribute {}".format(key))
        if not isinstance(value, CONFIG_ATTRIBUTES[key]) or (CONFIG_ATTRIBUTES[key] is int and isinstance(value, bool)):
            raise TypeError("IPUConfig.{} takes {}, got {!r}".format(key, CONFIG_ATTRIBUTES[key], value))
        if key.endswith("poplar_options") and not all(isinstance(v, str) for v in value.values()):
            raise TypeError("poplar options must be strings: {!r}".format(value))
        self._recorder.record("IPUConfig." + key, value=value)


def make_sdk(replicas=1):
    """A module-like namespace with the parts of ``tensorflow.python.ipu`` the project calls."""
    rec = Recorder()

    class IPUConfig(_ConfigNode):
        def __init__(self):  # SDK 3.4: no constructor arguments
            super(IPUConfig, self).__init__(rec, "")

        def configure_ipu_system(self, device="cpu"):
            rec.record("configure_ipu_system", device=device)

    class _Strategy(object):
        num_replicas_in_sync = replicas

        def scope(self):
            return contextlib.nullcontext()

    def IPUStrategy(ipu_device="/device:IPU:0", cpu_device="/device:CPU:0", enable_dataset_iterators=True,
                    enable_keras_extensions=True):
        rec.record("IPUStrategy", ipu_device=ipu_device, enable_keras_extensions=enable_keras_extensions)
        return _Strategy()

    def PipelineStageOptions(convolution_options=None, matmul_options=None, slice_matmul_options=None):
        for opts in (convolution_options, matmul_options):
            if opts is not None and not all(isinstance(v, str) for v in opts.values()):
                raise TypeError("PipelineStageOptions values must be strings")
        return types.SimpleNamespace(convolution_options=convolution_options, matmul_options=matmul_options)

    def reset_ipu_seed(seed, device="/device:IPU:0", cpu_device="cpu", experimental_identical_replicas=False):
        rec.record("reset_ipu_seed", seed=seed)

    sdk = types.SimpleNamespace(
        config=types.SimpleNamespace(IPUConfig=IPUConfig, SelectionOrder=SelectionOrder,
                                     StochasticRoundingBehaviour=StochasticRoundingBehaviour,
                                     DeviceConnectionType=DeviceConnectionType),
        ipu_strategy=types.SimpleNamespace(IPUStrategy=IPUStrategy, IPUStrategyV1=IPUStrategy),
        ops=types.SimpleNamespace(pipelining_ops=types.SimpleNamespace(
            PipelineSchedule=PipelineSchedule, RecomputationMode=RecomputationMode,
            PipelineStageOptions=PipelineStageOptions)),
        optimizers=types.SimpleNamespace(GradientAccumulationReductionMethod=GradientAccumulationReductionMethod),
        utils=types.SimpleNamespace(reset_ipu_seed=reset_ipu_seed),
    )
    sdk.recorder = rec
    return sdk


# keyword arguments SDK 3.4 forwards from set_pipelining_options(**pipelining_kwargs) to the pipeline op,
# and those it rejects because the Keras extension sets them itself
PIPELINING_ACCEPTED = {"pipeline_schedule", "recomputation_mode", "forward_propagation_stages_poplar_options",
                       "backward_propagation_stages_poplar_options", "weight_update_poplar_options",
                       "offload_weight_update_variables", "replicated_optimizer_state_sharding",
                       "offload_activations", "offload_gradient_accumulation_buffers",
                       "replicated_weight_sharding", "offload_weights", "gradient_accumulation_dtype",
                       "reduction_method", "name"}
PIPELINING_REJECTED = {"gradient_accumulation_count", "computational_stages", "repeat_count", "inputs",
                       "infeed_queue", "outfeed_queue", "optimizer_function", "outfeed_loss",
                       "batch_serialization_iterations", "device_mapping_fn"}


def attach_keras_methods(model, sdk):
    """Give a built functional Keras model the IPU extension methods of SDK 3.4, recording their calls."""
    rec = sdk.recorder
    assignments_holder = {}

    def post_order_layers():
        return [layer for layer in model.layers if type(layer).__name__ != "InputLayer"]

    def get_pipeline_stage_assignment():
        if "current" in assignments_holder:
            return list(assignments_holder["current"])
        return [types.SimpleNamespace(layer=layer, node_index=0, pipeline_stage=None) for layer in post_order_layers()]

    def set_pipeline_stage_assignment(pipeline_stage_assignment):
        stages = {}
        for a in pipeline_stage_assignment:
            if a.pipeline_stage is None or not isinstance(a.pipeline_stage, int):
                raise ValueError("layer {} has no pipeline stage".format(a.layer.name))
            stages[a.layer.name] = a.pipeline_stage
        if set(stages) != {layer.name for layer in post_order_layers()}:
            raise ValueError("every layer invocation needs a pipeline stage")
        # a layer may only use outputs of its own or earlier stages
        for layer in post_order_layers():
            nodes = layer._inbound_nodes
            for inbound in nodes[0].inbound_layers if isinstance(nodes[0].inbound_layers, list) else [
                    nodes[0].inbound_layers]:
                if inbound.name in stages and stages[inbound.name] > stages[layer.name]:
                    raise ValueError("Layer {} in pipeline stage {} has a dependency from a pipeline stage which "
                                     "has not yet been executed".format(layer.name, stages[layer.name]))
        assignments_holder["current"] = list(pipeline_stage_assignment)
        rec.record("set_pipeline_stage_assignment", stages=stages)

    def set_pipelining_options(gradient_accumulation_steps_per_replica=None, device_mapping=None,
                               accumulate_outfeed=None, gradient_accumulation_reduction_method="sum",
                               **pipelining_kwargs):
        bad = set(pipelining_kwargs) & PIPELINING_REJECTED
        if bad:
            raise ValueError("Found {} key in pipelining_kwargs. This argument is not compatible with Keras".format(
                sorted(bad)[0]))
        unknown = set(pipelining_kwargs) - PIPELINING_ACCEPTED
        if unknown:
            raise TypeError("pipeline got unexpected keyword arguments {}".format(sorted(unknown)))
        if not isinstance(gradient_accumulation_steps_per_replica, int):
            raise TypeError("gradient_accumulation_steps_per_replica must be an int")
        if not (isinstance(gradient_accumulation_reduction_method, (str, GradientAccumulationReductionMethod))):
            raise TypeError("gradient_accumulation_reduction_method must be a string or the enum")
        if "pipeline_schedule" in pipelining_kwargs and not isinstance(pipelining_kwargs["pipeline_schedule"],
                                                                        PipelineSchedule):
            raise TypeError("pipeline_schedule must be a PipelineSchedule")
        rec.record("set_pipelining_options", gradient_accumulation_steps_per_replica=(
            gradient_accumulation_steps_per_replica), device_mapping=device_mapping,
            gradient_accumulation_reduction_method=gradient_accumulation_reduction_method, **pipelining_kwargs)

    def set_gradient_accumulation_options(gradient_accumulation_steps_per_replica=None,
                                          gradient_accumulation_reduction_method="sum",
                                          use_v2_gradient_accumulation_optimizer=False,
                                          **gradient_accumulation_optimizer_kwargs):
        if {"opt", "num_mini_batches"} & set(gradient_accumulation_optimizer_kwargs):
            raise ValueError("opt and num_mini_batches cannot be passed")
        rec.record("set_gradient_accumulation_options",
                   gradient_accumulation_steps_per_replica=gradient_accumulation_steps_per_replica,
                   gradient_accumulation_reduction_method=gradient_accumulation_reduction_method)

    model.get_pipeline_stage_assignment = get_pipeline_stage_assignment
    model.set_pipeline_stage_assignment = set_pipeline_stage_assignment
    model.set_pipelining_options = set_pipelining_options
    model.set_gradient_accumulation_options = set_gradient_accumulation_options
    return model
