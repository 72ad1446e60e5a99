"""A recorder standing in for Graphcore's SDK 3.4 (``tensorflow.python.ipu``, the Keras IPU model methods and
``ipu_tensorflow_addons``' GroupNorm).

It accepts exactly what SDK 3.4 accepts (signatures, keyword arguments, enum members, IPUConfig attributes)
and records every call; anything else raises what the SDK raises. Each piece names the file and function of
the SDK's source it is written from (graphcore/tensorflow, graphcore/keras, graphcore/ipu_tensorflow_addons,
branch r2.6/sdk-release-3.4); tests/test_ipu.py pins them. This is the only stand-in in the test suite.
"""

import contextlib
import enum
import sys
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


# IPUConfig attributes the project may set, with the type each takes (tensorflow/python/ipu/config.py, IPUConfig;
# the types are checked strictly by _ConfigBase.__setattr__: TypeError "Trying to set X to V, but it must be of type T")
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
    "slices.poplar_options": dict,
    "io_tiles.num_io_tiles": int,
}


class _ConfigNode(object):
    def __init__(self, recorder, prefix):
        object.__setattr__(self, "_recorder", recorder)
        object.__setattr__(self, "_prefix", prefix)

    # tensorflow/python/ipu/config.py, _ConfigBase.__getattr__ / __setattr__: an unknown attribute, read or set,
    # is a ValueError ("'x' is not a valid attribute of this config. Did you mean ...?"), not an AttributeError
    def __getattr__(self, name):
        key = self._prefix + name
        if any(k.startswith(key + ".") for k in CONFIG_ATTRIBUTES):
            return _ConfigNode(self._recorder, key + ".")
        raise ValueError("'{}' is not a valid attribute of this config.".format(name))

    def __setattr__(self, name, value):
        key = self._prefix + name
        if key not in CONFIG_ATTRIBUTES:
            raise ValueError("'{}' is not a valid attribute of this config.".format(name))
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

    # tensorflow/python/ipu/ops/pipelining_ops.py, PipelineStageOptions.__init__: three dicts (TypeError otherwise)
    # whose values go into string fields of a proto (TypeError for a non-string)
    def PipelineStageOptions(convolution_options=None, matmul_options=None, slice_options=None):
        for name, opts in (("convolution_options", convolution_options), ("matmul_options", matmul_options),
                           ("slice_options", slice_options)):
            if opts and not isinstance(opts, dict):
                raise TypeError("PipelineStageOptions.{} must be dictionary.".format(name))
            if opts and not all(isinstance(v, str) for v in opts.values()):
                raise TypeError("PipelineStageOptions.{} values must be strings".format(name))
        return types.SimpleNamespace(convolution_options=convolution_options, matmul_options=matmul_options,
                                     slice_options=slice_options)

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
    sdk.recorder, sdk.replicas = rec, replicas
    return sdk


# The keyword arguments of tensorflow/python/ipu/ops/pipelining_ops.py, pipeline(), after computational_stages.
PIPELINE_ARGUMENTS = {"gradient_accumulation_count", "gradient_accumulation_dtype",
                      "gradient_accumulation_for_captured_grads", "repeat_count", "batch_serialization_iterations",
                      "inputs", "infeed_queue", "outfeed_queue", "optimizer_function", "device_mapping",
                      "pipeline_schedule", "recomputation_mode", "forward_propagation_stages_poplar_options",
                      "backward_propagation_stages_poplar_options", "weight_update_poplar_options",
                      "offload_weight_update_variables", "replicated_optimizer_state_sharding", "offload_activations",
                      "offload_gradient_accumulation_buffers", "replicated_weight_sharding", "offload_weights",
                      "continuous_weight_updates", "outfeed_loss", "accumulate_outfeed", "accumulate_outfeed_dtype",
                      "outfeed_mask", "reduction_method", "name"}
# keras/ipu/extensions/extensions_base.py, KerasExtensionBase._set_pipelining_options_impl: pipelining_kwargs it
# refuses with a ValueError (explicit_args, automatic_args, invalid_args and the removed argument)
PIPELINING_REJECTED = {"gradient_accumulation_count", "device_mapping", "accumulate_outfeed", "computational_stages",
                       "repeat_count", "inputs", "infeed_queue", "outfeed_queue", "optimizer_function",
                       "outfeed_loss", "outfeed_mask", "batch_serialization_iterations",
                       "experimental_normalize_gradients"}
# ... and those it passes itself beside **pipelining_kwargs when it builds the pipeline (_make_pipeline), so that
# a user's value is a duplicate keyword (TypeError when fit builds the pipeline)
PIPELINING_SET_BY_KERAS = {"reduction_method"}
# every other argument of pipeline() is forwarded as it is
PIPELINING_ACCEPTED = PIPELINE_ARGUMENTS - PIPELINING_REJECTED - PIPELINING_SET_BY_KERAS
# tensorflow/python/ipu/optimizers/gradient_accumulation_optimizer.py, GradientAccumulationOptimizerV2.__init__
# arguments that set_gradient_accumulation_options forwards (opt, num_mini_batches are refused with ValueError;
# reduction_method is passed by Keras itself: _make_single_ipu_train_function_with_gradient_accumulation)
ACCUMULATION_OPTIMIZER_ACCEPTED = {"offload_weight_update_variables", "replicated_optimizer_state_sharding", "dtype",
                                   "name"}


def _check_steps_per_replica(value):
    # keras/ipu/extensions/extensions_base.py, _set_gradient_accumulation_options_impl and
    # _set_pipelining_options_impl: a Python int >= 1, else ValueError (not TypeError)
    if value is not None and (not isinstance(value, int) or value < 1):
        raise ValueError("Expected `gradient_accumulation_steps_per_replica` to be a positive integer, but got {} "
                         "instead.".format(value))


def _parse_reduction(method):
    # tensorflow/python/ipu/gradient_accumulation.py, GradientAccumulationReductionMethod.parse
    if isinstance(method, GradientAccumulationReductionMethod):
        return method
    if isinstance(method, str) and method.upper() in GradientAccumulationReductionMethod.__members__:
        return GradientAccumulationReductionMethod[method.upper()]
    raise ValueError("Cannot parse {} as one of GradientAccumulationReductionMethod.".format(method))


class FitReached(Exception):
    """Raised by the recorder's ``fit`` (record-only) once the SDK's checks of the call have passed."""

    def __init__(self, model, call):
        super(FitReached, self).__init__("fit called: {}".format(call))
        self.model, self.call = model, call


def _state(model):
    return model.__dict__.setdefault("_ipu_recorder", {})


def keras_methods(sdk, stock_fit=None):
    """The IPU extension methods of SDK 3.4's Keras models, as functions of the model, recording their calls.

    ``fit`` makes the checks of the SDK's data handler, records the call and then raises ``FitReached``; given
    ``stock_fit`` (Keras's own ``Model.fit``) it runs one training step with it instead and exits the process
    with status 0 (how a command is run as far as its first training step)."""
    rec = sdk.recorder
    replicas = sdk.replicas

    def post_order_layers(model):
        return [layer for layer in model.layers if type(layer).__name__ != "InputLayer"]

    # keras/ipu/extensions/functional_extensions.py, get_pipeline_stage_assignment: one
    # FunctionalLayerPipelineStageAssignment (layer, node_index, pipeline_stage) per layer call, in post order
    def get_pipeline_stage_assignment(model):
        state = _state(model)
        if "assignments" in state:
            return list(state["assignments"])
        return [types.SimpleNamespace(layer=layer, node_index=0, pipeline_stage=None)
                for layer in post_order_layers(model)]

    # functional_extensions.py, _validate_pipeline_stage_assignment: every call assigned, no use of a later stage
    def set_pipeline_stage_assignment(model, pipeline_stage_assignment):
        stages = {}
        for a in pipeline_stage_assignment:
            if a.pipeline_stage is None or not isinstance(a.pipeline_stage, int):
                raise ValueError("layer {} has no pipeline stage".format(a.layer.name))
            stages[a.layer.name] = a.pipeline_stage
        if set(stages) != {layer.name for layer in post_order_layers(model)}:
            raise ValueError("every layer invocation needs a pipeline stage")
        # a layer may only use outputs of its own or earlier stages
        for layer in post_order_layers(model):
            nodes = layer._inbound_nodes
            for inbound in nodes[0].inbound_layers if isinstance(nodes[0].inbound_layers, list) else [
                    nodes[0].inbound_layers]:
                if inbound.name in stages and stages[inbound.name] > stages[layer.name]:
                    raise ValueError("Layer {} in pipeline stage {} has a dependency from a pipeline stage which "
                                     "has not yet been executed".format(layer.name, stages[layer.name]))
        _state(model)["assignments"] = list(pipeline_stage_assignment)
        rec.record("set_pipeline_stage_assignment", stages=stages)

    # keras/ipu/extensions/functional_extensions.py, FunctionalExtension.set_pipelining_options (the signature);
    # the checks: extensions_base.py, _set_pipelining_options_impl; what pipeline() then refuses
    def set_pipelining_options(model, gradient_accumulation_steps_per_replica=None, device_mapping=None,
                               accumulate_outfeed=None, gradient_accumulation_reduction_method="sum",
                               **pipelining_kwargs):
        reduction = _parse_reduction(gradient_accumulation_reduction_method)
        _check_steps_per_replica(gradient_accumulation_steps_per_replica)
        if device_mapping is not None and (not isinstance(device_mapping, list) or not all(
                isinstance(x, int) for x in device_mapping)):
            raise ValueError("Expected `device_mapping` to be a list of integers.")
        bad = set(pipelining_kwargs) & PIPELINING_REJECTED
        if bad:
            raise ValueError("Found `{}` key in `pipelining_kwargs`.".format(sorted(bad)[0]))
        duplicate = set(pipelining_kwargs) & PIPELINING_SET_BY_KERAS
        if duplicate:
            raise TypeError("pipeline() got multiple values for keyword argument '{}'".format(sorted(duplicate)[0]))
        unknown = set(pipelining_kwargs) - PIPELINING_ACCEPTED
        if unknown:
            raise TypeError("pipeline() got an unexpected keyword argument '{}'".format(sorted(unknown)[0]))
        # pipelining_ops.pipeline: the schedule and recomputation mode must be enum members (TypeError)
        if "pipeline_schedule" in pipelining_kwargs and not isinstance(pipelining_kwargs["pipeline_schedule"],
                                                                        PipelineSchedule):
            raise TypeError("The given pipeline_schedule is not a member of the PipelineSchedule enumeration.")
        if "recomputation_mode" in pipelining_kwargs and not isinstance(pipelining_kwargs["recomputation_mode"],
                                                                         RecomputationMode):
            raise TypeError("The given recomputation_mode is not a member of the RecomputationMode enumeration.")
        # tensorflow/compiler/plugin/poplar/driver/tools/pipeline_util.cc, GetPipelineRecomputationMode (UNIMPLEMENTED)
        schedule = pipelining_kwargs.get("pipeline_schedule", PipelineSchedule.Grouped)
        mode = pipelining_kwargs.get("recomputation_mode", RecomputationMode.Auto)
        if (schedule, mode) in ((PipelineSchedule.Interleaved, RecomputationMode.RecomputeAndBackpropagateInterleaved),
                                (PipelineSchedule.Sequential, RecomputationMode.RecomputeThenBackpropagate)):
            raise NotImplementedError("Pipeline schedule {} does not support '{}' recomputation mode.".format(
                schedule.name, mode.name))
        _state(model)["pipelined_accumulation"] = gradient_accumulation_steps_per_replica
        rec.record("set_pipelining_options", gradient_accumulation_steps_per_replica=(
            gradient_accumulation_steps_per_replica), device_mapping=device_mapping,
            gradient_accumulation_reduction_method=reduction, **pipelining_kwargs)

    # keras/ipu/extensions/functional_extensions.py, FunctionalExtension.set_gradient_accumulation_options;
    # extensions_base.py, _set_gradient_accumulation_options_impl
    def set_gradient_accumulation_options(model, gradient_accumulation_steps_per_replica=None,
                                          gradient_accumulation_reduction_method="sum",
                                          use_v2_gradient_accumulation_optimizer=False,
                                          **gradient_accumulation_optimizer_kwargs):
        reduction = _parse_reduction(gradient_accumulation_reduction_method)
        _check_steps_per_replica(gradient_accumulation_steps_per_replica)
        bad = {"opt", "num_mini_batches", "experimental_normalize_gradients"} & set(
            gradient_accumulation_optimizer_kwargs)
        if bad:
            raise ValueError("Found `{}` key in `gradient_accumulation_optimizer_kwargs`.".format(sorted(bad)[0]))
        if "reduction_method" in gradient_accumulation_optimizer_kwargs:
            raise TypeError("__init__() got multiple values for keyword argument 'reduction_method'")
        unknown = set(gradient_accumulation_optimizer_kwargs) - ACCUMULATION_OPTIMIZER_ACCEPTED
        if unknown:
            raise TypeError("__init__() got an unexpected keyword argument '{}'".format(sorted(unknown)[0]))
        _state(model)["accumulation"] = gradient_accumulation_steps_per_replica
        rec.record("set_gradient_accumulation_options",
                   gradient_accumulation_steps_per_replica=gradient_accumulation_steps_per_replica,
                   gradient_accumulation_reduction_method=reduction,
                   use_v2_gradient_accumulation_optimizer=use_v2_gradient_accumulation_optimizer,
                   **gradient_accumulation_optimizer_kwargs)

    def infer_steps(steps, dataset, replication_factor):
        # keras/ipu/extensions/data_adapter.py, IPUDataHandler._infer_steps: the given steps (else the dataset's
        # length) divided by the replication factor; a dataset of unknown length without steps is a ValueError
        if steps is None:
            import tensorflow as tf

            size = int(tf.data.experimental.cardinality(dataset))
            steps = size if size >= 0 else None
        if steps is None:
            raise ValueError("Could not infer the size of the data. You must specify the number of steps to run.")
        return int(steps // replication_factor)

    def check_execution(steps, spe, replication_factor):
        # data_adapter.py, IPUDataHandler._validate_data_handler (steps_per_execution truncated to the epoch)
        if steps == 0:
            raise ValueError("The provided dataset contains too few items for {} replicas".format(replication_factor))
        spe = min(spe, steps)
        if steps % spe:
            raise ValueError("`steps_per_execution` ({}) must be a divisor of the number of batches ({}) in the "
                             "dataset provided{}.".format(spe, steps,
                                                          " to this replica" if replication_factor > 1 else ""))
        return spe

    # keras/ipu/extensions/extensions_base.py, KerasExtensionBase._fit_delegate
    def fit(model, x=None, y=None, batch_size=None, epochs=1, verbose="auto", callbacks=None, validation_split=0.0,
            validation_data=None, shuffle=True, class_weight=None, sample_weight=None, initial_epoch=0,
            steps_per_epoch=None, validation_steps=None, validation_batch_size=None, validation_freq=1,
            max_queue_size=10, workers=1, use_multiprocessing=False):
        state = _state(model)
        compiled = int(model._steps_per_execution.numpy())
        replica_steps = infer_steps(steps_per_epoch, x, replicas)
        spe = check_execution(replica_steps, compiled, replicas)
        # _verify_and_get_gradient_accumulation_steps_per_replica: a pipelined model needs its accumulation
        # count; steps_per_execution (compiled and truncated) must be a multiple of it (RuntimeError)
        if state.get("assignments") is not None and state.get("pipelined_accumulation") is None:
            raise ValueError("The model which you are attempting to train is pipelined, however "
                             "`gradient_accumulation_steps_per_replica` has not been set")
        accumulation = state.get("pipelined_accumulation") or state.get("accumulation") or 1
        for value in (compiled, spe):
            if value % accumulation:
                raise RuntimeError("the current `steps_per_execution` value (set to {}) is not divisible by "
                                   "`gradient_accumulation_steps_per_replica` ({})".format(value, accumulation))
        validation = None
        if validation_data is not None:
            # the validation data handler is made with replication factor 1 (after the first epoch), then
            # evaluate divides by the replicas
            validation = infer_steps(validation_steps, validation_data, 1)
            check_execution(validation, compiled, 1)
            check_execution(validation // replicas, compiled, replicas)
        call = {"steps_per_epoch": steps_per_epoch, "replica_steps": replica_steps, "validation_steps": validation,
                "epochs": epochs, "steps_per_execution": compiled, "accumulation": accumulation}
        rec.record("fit", **call)
        if stock_fit is None:
            raise FitReached(model, call)
        stock_fit(model, x, epochs=1, steps_per_epoch=1, verbose=0)
        print("reached the first fit step: {}".format(call), flush=True)
        sys.exit(0)

    return {"get_pipeline_stage_assignment": get_pipeline_stage_assignment,
            "set_pipeline_stage_assignment": set_pipeline_stage_assignment,
            "set_pipelining_options": set_pipelining_options,
            "set_gradient_accumulation_options": set_gradient_accumulation_options,
            "fit": fit}


def attach_keras_methods(model, sdk):
    """Give one built Keras model the IPU extension methods of SDK 3.4 (not ``fit``), recording their calls."""
    for name, method in keras_methods(sdk).items():
        if name != "fit":
            setattr(model, name, types.MethodType(method, model))
    return model


def extend_keras(keras, sdk, setattr=setattr, run_fit=False):
    """Give every ``keras.Model`` the IPU extension methods and the IPU ``fit`` checks, as Graphcore's Keras gives
    models built in an ``IPUStrategy`` scope. ``setattr``: e.g. pytest's ``monkeypatch.setattr`` (undone after
    the test); ``run_fit``: see ``keras_methods``."""
    for name, method in keras_methods(sdk, keras.Model.fit if run_fit else None).items():
        setattr(keras.Model, name, method)


def make_addons(keras, tf):
    """``ipu_tensorflow_addons.keras`` as far as the project uses it: ``layers.GroupNorm`` and the IPU optimizers.

    GroupNorm computes what the SDK's computes (its kernels run only on IPUs): statistics over each group of
    channels, where ``strided_channel_grouping=True`` (the default) puts channel c in group c % groups and False
    makes contiguous blocks (tensorflow/python/ipu/ops/normalization_ops.py, group_norm; its numpy reference in
    tensorflow/python/ipu/tests/group_norm_test.py), then gamma and beta per channel."""
    rec = Recorder()

    class GroupNorm(keras.layers.Layer):
        # ipu_tensorflow_addons/keras/layers/normalization.py, GroupNormalization.__init__ (GroupNorm is its alias)
        def __init__(self, groups=2, channels_axis=-1, center=True, scale=True, epsilon=1e-3,
                     beta_initializer=None, gamma_initializer=None, strided_channel_grouping=True, trainable=True,
                     **kwargs):
            super(GroupNorm, self).__init__(trainable=trainable, **kwargs)
            if channels_axis not in (1, -1):
                raise ValueError("channels_axis must be 1 or -1")
            rec.record("GroupNorm", groups=groups, channels_axis=channels_axis, center=center, scale=scale,
                       epsilon=epsilon, beta_initializer=beta_initializer, gamma_initializer=gamma_initializer,
                       strided_channel_grouping=strided_channel_grouping)
            self.groups, self.epsilon, self.strided = groups, epsilon, strided_channel_grouping
            self.center, self.scale = center, scale
            self.beta_initializer, self.gamma_initializer = beta_initializer, gamma_initializer

        def build(self, input_shape):
            channels = int(input_shape[-1])
            # build(): add_weight("gamma"), then add_weight("beta"), shape [C]; an initializer of None is Keras's
            # default for a float weight, glorot_uniform
            self.gamma = self.add_weight("gamma", [channels], initializer=self.gamma_initializer) if self.scale \
                else None
            self.beta = self.add_weight("beta", [channels], initializer=self.beta_initializer) if self.center \
                else None
            super(GroupNorm, self).build(input_shape)

        def call(self, x):
            channels, groups = int(x.shape[-1]), self.groups
            spatial = list(range(1, len(x.shape) - 1))
            shape = tf.shape(x)
            split = [channels // groups, groups] if self.strided else [groups, channels // groups]
            grouped = tf.reshape(x, tf.concat([shape[:-1], split], 0))
            within = len(x.shape) - 1 if self.strided else len(x.shape)  # the axis of the channels of one group
            mean, variance = tf.nn.moments(grouped, spatial + [within], keepdims=True)
            y = tf.reshape((grouped - mean) * tf.math.rsqrt(variance + self.epsilon), shape)
            if self.gamma is not None:
                y = y * self.gamma
            if self.beta is not None:
                y = y + self.beta
            return y

    # ipu_tensorflow_addons/keras/optimizers: AdamIpuOptimizer and SGDIpuOptimizer are Keras 2.6's Adam and SGD
    # (OptimizerV2) with optional state dtypes; with their defaults they compute Keras's updates
    def AdamIpuOptimizer(learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7, amsgrad=False, name="Adam",
                         m_dtype=None, v_dtype=None, vhat_dtype=None, debiasing=True, **kwargs):
        rec.record("AdamIpuOptimizer", learning_rate=learning_rate)
        return keras.optimizers.Adam(learning_rate, beta_1, beta_2, epsilon, amsgrad, name=name)

    def SGDIpuOptimizer(learning_rate=0.01, momentum=0.0, nesterov=False, name="SGD", momentum_accum_dtype=None,
                        **kwargs):
        rec.record("SGDIpuOptimizer", learning_rate=learning_rate, momentum=momentum)
        return keras.optimizers.SGD(learning_rate, momentum, nesterov, name=name)

    layers = types.SimpleNamespace(GroupNorm=GroupNorm, GroupNormalization=GroupNorm)
    optimizers = types.SimpleNamespace(AdamIpuOptimizer=AdamIpuOptimizer, SGDIpuOptimizer=SGDIpuOptimizer)
    addons = types.SimpleNamespace(keras=types.SimpleNamespace(layers=layers, optimizers=optimizers))
    addons.recorder = rec
    return addons


def modules(sdk=None, addons=None):
    """{module name: module} that make ``from tensorflow.python import ipu`` and ``from ipu_tensorflow_addons.keras
    import ...`` find the recorders (for ``sys.modules``)."""
    out = {}
    if sdk is not None:
        out["tensorflow.python.ipu"] = sdk
    if addons is not None:
        for name, value in (("ipu_tensorflow_addons", addons), ("ipu_tensorflow_addons.keras", addons.keras),
                            ("ipu_tensorflow_addons.keras.layers", addons.keras.layers),
                            ("ipu_tensorflow_addons.keras.optimizers", addons.keras.optimizers)):
            module = type(sys)(name)
            module.__dict__.update(vars(value))
            out[name] = module
    return out


def install(replicas=1, run_fit=True):
    """Stand the recorders in for the SDK in this process (``tensorflow.python.ipu``, ``ipu_tensorflow_addons``,
    the Keras extension methods); for running a command under them in a fresh process."""
    from conductivity_tf.keras_compat import keras, tf

    sdk, addons = make_sdk(replicas), make_addons(keras, tf)
    sys.modules.update(modules(sdk, addons))
    extend_keras(keras, sdk, run_fit=run_fit)
    return sdk, addons
