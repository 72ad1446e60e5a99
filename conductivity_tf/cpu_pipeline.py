"""The CPU pipeline reference: an IPU pipeline plan's stages on logical CPU devices, with the same gradients.

This is how a pipeline configuration is checked without IPUs (``train --plan-only --check-on-cpu``, the ``train``
benchmark's CPU pipeline rows): stage s of the plan (``pipeline_plan``) runs on ``devices[s]``; a step takes the
global batch, splits it into micro-batches, sends each through the stages in order, adds the gradients and
applies them once with Graphcore's reductions (``strategies.reduce_accumulated``).
"""

import numpy as np

from conductivity_tf import dataset as dataset_lib
from conductivity_tf.errors import UserError
from conductivity_tf.model import network_input
from conductivity_tf.strategies import reduce_accumulated


def _run_layers(layers, values, training):
    """Call each layer on the outputs of the layers feeding it (each layer of the model is called once)."""
    for layer in layers:
        inbound = layer._inbound_nodes[0].inbound_layers
        if isinstance(inbound, (list, tuple)):
            args = [values[source.name] for source in inbound]
        else:
            args = values[inbound.name]
        values[layer.name] = layer(args, training=training)
    return values


class CpuPipeline(object):
    """The plan's stages on separate CPU devices, fed micro-batch by micro-batch, gradients accumulated.

    This is how a pipeline configuration is checked without IPUs: stage s runs on ``devices[s]``; a step
    takes the global batch, splits it into ``accumulation`` micro-batches, sends each through the stages in
    order (the grouped schedule's order of work per micro-batch), adds the gradients and applies them once
    ('sum' adds, 'mean' and 'running_mean' divide by the number of micro-batches, as on IPUs).
    """

    def __init__(self, model, plan, devices, loss, optimizer, reduction="mean"):
        if len(devices) < len(plan.stages):
            raise UserError("the CPU pipeline needs {} devices for {} stages".format(len(plan.stages), len(devices)))
        self.model, self.plan, self.devices = model, plan, devices
        self.loss, self.optimizer, self.reduction = loss, optimizer, reduction
        by_name = {layer.name: layer for layer in model.layers}
        self.stage_layers = [[by_name[c.name] for c in stage.layers] for stage in plan.stages]
        self.input_name = [layer.name for layer in model.layers if type(layer).__name__ == "InputLayer"][0]
        self.output_name = model.layers[-1].name

    def forward(self, x, training=True):
        from conductivity_tf.keras_compat import tf

        values = {self.input_name: x}
        for device, layers in zip(self.devices, self.stage_layers):
            with tf.device(device):
                _run_layers(layers, values, training)
        return values[self.output_name]

    def gradients(self, x, y):
        """(accumulated gradients, mean loss) for one global batch."""
        total, loss = self.gradients_graph(x, y)
        return total, float(loss)

    def gradients_graph(self, x, y):
        """Like ``gradients`` but the loss stays a tensor (usable inside ``tf.function``)."""
        from conductivity_tf.keras_compat import tf

        k = self.plan.steps.accumulation
        variables = self.model.trainable_variables
        total, losses = None, []
        for xi, yi in zip(tf.split(x, k), tf.split(y, k)):
            with tf.GradientTape() as tape:
                loss = self.loss(yi, self.forward(xi))
            grads = tape.gradient(loss, variables)
            total = grads if total is None else [a + b for a, b in zip(total, grads)]
            losses.append(loss)
        return reduce_accumulated(total, k, self.reduction), tf.reduce_mean(losses)

    def train_step(self, x, y):
        grads, loss = self.gradients(x, y)
        self.optimizer.apply_gradients(zip(grads, self.model.trainable_variables))
        return loss


def check_pipeline_on_cpu(cfg, plan, model):
    """One global batch through the CPU pipeline reference against unpipelined gradients."""
    from conductivity_tf.keras_compat import keras, tf

    steps = plan.steps
    try:
        x, y = next(iter(dataset_lib.make_dataset(cfg.data.path, "train", steps.global_batch, axes=cfg.data.axes,
                                                  inputs=cfg.model.inputs)))
        source = "a batch of {}".format(cfg.data.path)
    except UserError:
        rng = np.random.default_rng(cfg.train.seed)
        x = tf.constant(network_input(rng.random((steps.global_batch,) + (cfg.data.size,) * 3) < 0.5,
                                      cfg.model.inputs))
        y = tf.constant(rng.random((steps.global_batch, len(cfg.data.axes))).astype("float32") * 0.3)
        source = "random volumes (no dataset of this size at data.path)"
    loss = keras.losses.MeanSquaredError()
    devices = ["/cpu:{}".format(i) for i in range(len(plan.stages))]
    replica = steps.micro_batch * steps.accumulation  # one replica's share of the global batch
    piped, piped_loss = CpuPipeline(model, plan, devices, loss, None, cfg.hardware.reduction).gradients(
        x[:replica], y[:replica])
    with tf.GradientTape() as tape:
        full_loss = loss(y[:replica], model(x[:replica], training=True))
    full = tape.gradient(full_loss, model.trainable_variables)
    if cfg.hardware.reduction == "sum":
        full = [g * steps.accumulation for g in full]
    # relative L2 norm over all gradients together
    error = float(tf.linalg.global_norm([a - b for a, b in zip(piped, full)]) / tf.linalg.global_norm(full))
    print("CPU pipeline check ({} stages on {}, {} micro-batches of {} from {}): loss {:.6g} vs {:.6g} unpipelined, "
          "relative gradient difference (L2 over all weights) {:.2e}".format(
              len(plan.stages), ", ".join(devices), steps.accumulation, steps.micro_batch, source, piped_loss,
              float(full_loss), error))
