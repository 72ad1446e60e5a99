"""Where the model runs: one small interface for CPU, GPUs, several workers and (hooked in) IPUs.

``make_strategy(hardware_cfg)`` returns a ``hardware.Hardware`` with the ``tf.distribute`` strategy, its kind
and the number of replicas:

- ``cpu``: the default strategy on the CPU; or a ``MirroredStrategy`` over logical CPU devices listed in
  ``hardware.devices`` (``['/cpu:0', '/cpu:1']``, for tests and pipeline checks without accelerators);
- ``gpu``: the default strategy on one GPU, or ``MirroredStrategy`` over the visible GPUs (or those in
  ``hardware.devices``);
- several workers: ``MultiWorkerMirroredStrategy`` whenever ``TF_CONFIG`` names more than one worker;
- ``ipu``: delegated to ``conductivity_tf.ipu`` (Graphcore SDK);
- ``auto``: GPUs if any are visible, else the CPU.

Gradient accumulation on CPU/GPU is ``AccumulatingModel``: its ``train_step`` splits each replica's
batch into k micro-batches, adds their gradients and applies them once, with Graphcore's reductions:
'sum' adds the micro-batch gradients, 'mean' and 'running_mean' divide the sum by k (so that with a
mean loss the step equals one step on the whole batch). It works under ``MirroredStrategy`` and with
``steps_per_execution`` (tf-keras; Keras 3's optimizer option does not).
"""

import json
import os

from conductivity_tf import ipu
from conductivity_tf.errors import UserError
from conductivity_tf.hardware import Hardware


def native_bfloat16():
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX-BF16; Linux CPU flags) and TensorFlow here
    has bfloat16 CPU convolutions (TensorFlow 2.6 has none)."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("flags"):
                    if not set(line.split(":", 1)[1].split()) & {"avx512_bf16", "amx_bf16"}:
                        return False
                    from conductivity_tf.keras_compat import cpu_bfloat16_convolutions

                    return cpu_bfloat16_convolutions()
    except OSError:
        pass
    return False


def configure_logical_cpus(tf, count):
    """Split the CPU into ``count`` logical devices (for MirroredStrategy over CPUs and the CPU pipeline)."""
    cpus = tf.config.list_physical_devices("CPU")
    current = tf.config.get_logical_device_configuration(cpus[0])
    if current is not None and len(current) >= count:
        return
    try:
        tf.config.set_logical_device_configuration(cpus[0], [tf.config.LogicalDeviceConfiguration()] * count)
    except RuntimeError:
        raise UserError("hardware.devices asks for {} CPU devices but TensorFlow is already initialised with fewer; "
                        "set it before anything else runs".format(count))


def _tf_config():
    """TF_CONFIG as a dict ({} when unset)."""
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        return {}
    try:
        return json.loads(raw)
    except ValueError:
        raise UserError("TF_CONFIG is not valid JSON; see tf.distribute.MultiWorkerMirroredStrategy's documentation")


def multi_worker():
    """Whether TF_CONFIG names more than one worker (then training runs under MultiWorkerMirroredStrategy)."""
    cluster = _tf_config().get("cluster", {})
    return len(cluster.get("worker", [])) + len(cluster.get("chief", [])) > 1


def _worker_index(tf_config):
    """This process's index among all workers, the chief (if any) first."""
    task = tf_config.get("task", {})
    if task.get("type") == "chief":
        return 0
    return int(task.get("index", 0)) + (1 if "chief" in tf_config.get("cluster", {}) else 0)


def make_strategy(hardware_cfg, cfg=None):
    """Choose and create the strategy for ``hardware_cfg`` (a ``config.HardwareConfig``); IPUs also need the
    whole configuration ``cfg`` (the pipeline plan depends on the model and the batch)."""
    kind = hardware_cfg.kind
    if kind == "ipu":

        return ipu.make_strategy(hardware_cfg, cfg)
    from conductivity_tf.keras_compat import tf

    gpus = tf.config.list_physical_devices("GPU")
    if kind == "auto":
        kind = "gpu" if gpus else "cpu"
    if kind == "gpu" and not gpus:
        raise UserError("hardware.kind=gpu but TensorFlow sees no GPU; use hardware.kind=cpu (or auto), or install "
                        "the [gpu] extra and check nvidia-smi")
    worker = 0
    if multi_worker():
        worker = _worker_index(_tf_config())
        communication = tf.distribute.experimental.CommunicationImplementation
        strategy = tf.distribute.MultiWorkerMirroredStrategy(communication_options=tf.distribute.experimental.
                                                             CommunicationOptions(implementation=communication.AUTO))
        description = "MultiWorkerMirroredStrategy, {} replicas".format(strategy.num_replicas_in_sync)
    else:
        devices = list(hardware_cfg.devices)
        if kind == "cpu" and len(devices) > 1:
            if not all(d.lower().startswith("/cpu:") for d in devices):
                raise UserError("hardware.kind=cpu takes CPU devices only, e.g. ['/cpu:0','/cpu:1']")
            configure_logical_cpus(tf, len(devices))
        if kind == "gpu" and not devices:
            devices = ["/gpu:{}".format(i) for i in range(len(gpus))]
        if len(devices) > 1:
            strategy = tf.distribute.MirroredStrategy(devices)
            description = "MirroredStrategy over {}".format(", ".join(devices))
        else:
            # the default strategy: TensorFlow places ops on the GPU when there is one; BackupAndRestore
            # (resuming) supports it, and not OneDeviceStrategy
            strategy = tf.distribute.get_strategy()
            description = "one device ({})".format("GPU" if kind == "gpu" else "CPU")
    replicas = strategy.num_replicas_in_sync
    if hardware_cfg.replicas and hardware_cfg.replicas != replicas:
        raise UserError("hardware.replicas={} but the strategy has {} replicas; set hardware.replicas=0 (derive) or "
                        "list the devices in hardware.devices".format(hardware_cfg.replicas, replicas))
    return Hardware(strategy, kind, replicas, description, worker)


def reduce_accumulated(total, k, reduction):
    """The gradient applied after adding those of ``k`` micro-batches, as Graphcore's reductions define it: 'sum'
    the sum, 'mean' and 'running_mean' the sum over k (so that with a mean loss the step equals one step on the
    whole batch)."""
    return list(total) if reduction == "sum" or k == 1 else [g / float(k) for g in total]


def accumulating_model_class(keras, tf):
    """A ``keras.Model`` subclass whose ``train_step`` accumulates gradients over micro-batches."""

    class AccumulatingModel(keras.Model):
        def configure_accumulation(self, steps, reduction="mean"):
            if steps < 1:
                raise UserError("gradient accumulation steps must be >= 1")
            if reduction not in ("mean", "sum", "running_mean"):
                raise UserError("gradient accumulation reduction {!r}: use mean, sum or running_mean".format(
                    reduction))
            self.accumulation_steps = int(steps)
            self.accumulation_reduction = reduction

        def train_step(self, data):
            x, y = data[0], data[1]
            k = getattr(self, "accumulation_steps", 1)
            variables = self.trainable_variables
            micro_x = tf.split(x, k) if k > 1 else [x]
            micro_y = tf.split(y, k) if k > 1 else [y]
            grads = None
            predictions = []
            for xi, yi in zip(micro_x, micro_y):
                with tf.GradientTape() as tape:
                    pred = self(xi, training=True)
                    loss = self._loss(xi, yi, pred)
                    if self.optimizer.__class__.__name__ == "LossScaleOptimizer":
                        loss = self.optimizer.get_scaled_loss(loss)
                g = tape.gradient(loss, variables)
                if self.optimizer.__class__.__name__ == "LossScaleOptimizer":
                    g = self.optimizer.get_unscaled_gradients(g)
                grads = g if grads is None else [a + b for a, b in zip(grads, g)]
                predictions.append(pred)
            grads = reduce_accumulated(grads, k, getattr(self, "accumulation_reduction", "mean"))
            self.optimizer.apply_gradients(zip(grads, variables))
            pred = tf.concat(predictions, axis=0) if k > 1 else predictions[0]
            if hasattr(keras.Model, "compute_metrics"):
                return self.compute_metrics(x, y, pred, None)
            self.compiled_metrics.update_state(y, pred)  # Keras < 2.8 (the SDK's 2.6): no compute_metrics
            return {m.name: m.result() for m in self.metrics}

        def _loss(self, x, y, pred):
            if hasattr(keras.Model, "compute_loss"):
                return self.compute_loss(x, y, pred)
            return self.compiled_loss(y, pred, regularization_losses=self.losses)  # Keras < 2.8: no compute_loss

    return AccumulatingModel


def for_training(model, accumulation=1, reduction="mean"):
    """The same layers and weights as ``model``, as a model whose training step accumulates gradients."""
    from conductivity_tf.keras_compat import keras, tf

    cls = accumulating_model_class(keras, tf)
    wrapped = cls(inputs=model.inputs, outputs=model.outputs, name=model.name)
    wrapped.configure_accumulation(accumulation, reduction)
    return wrapped
