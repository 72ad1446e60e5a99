"""Step arithmetic, computed once: how the global batch splits into micro-batches and replicas, what one
Keras step is, and how many steps, executions and weight updates an epoch has. Training, the IPU plan
(``--plan-only``) and the benchmarks all read a ``StepPlan``; nothing else divides a batch.

    global batch = micro-batch x gradient accumulation x replicas

What a Keras step is differs between the two Keras flavours the project runs on:

- CPU/GPU (``strategies.AccumulatingModel``): one step is one global batch; each replica splits its share
  into ``accumulation`` micro-batches and applies their gradients once. One step = one weight update, and
  ``fit(steps_per_epoch=N)`` counts those steps.
- IPU (Graphcore's Keras 2.6, Poplar SDK 3.4): one step is one micro-batch on every replica, and the SDK
  applies the accumulated gradients every ``accumulation`` steps. Its data handler takes
  ``fit(steps_per_epoch=N)`` as the total over replicas and runs ``N // replicas`` steps on each
  (``IPUDataHandler._infer_steps``, keras/ipu/extensions/data_adapter.py); the steps per replica must be a
  multiple of ``steps_per_execution`` (``IPUDataHandler._validate_data_handler``, same file), which must be a
  multiple of the accumulation (``KerasExtensionBase._verify_and_get_gradient_accumulation_steps_per_replica``,
  keras/ipu/extensions/extensions_base.py). ``optimizer.iterations`` advances once per weight update (Keras's
  ``apply_gradients`` runs inside the resource update of ``GradientAccumulationOptimizerV2`` and of
  ``pipelining_ops.pipeline``, tensorflow/python/ipu), so learning-rate schedules count weight updates.
"""

from dataclasses import dataclass

from conductivity_tf.errors import UserError


@dataclass(frozen=True)
class BatchArithmetic:
    global_batch: int
    micro_batch: int
    accumulation: int
    replicas: int


def batch_arithmetic(global_batch, replicas, accumulation):
    """global batch = micro-batch x accumulation x replicas; UserError when it does not divide."""
    per_step = replicas * accumulation
    if global_batch % per_step:
        lower = max(per_step, global_batch // per_step * per_step)
        raise UserError(
            "train.batch_size={} is not divisible by replicas x gradient accumulation = {} x {} = {}; "
            "use a multiple such as {}".format(global_batch, replicas, accumulation, per_step, lower))
    return BatchArithmetic(global_batch, global_batch // per_step, accumulation, replicas)


def global_batch_of(micro_batch, accumulation, replicas):
    """The global batch a micro-batch makes: micro-batch x accumulation x replicas (benchmarks name runs by it)."""
    return micro_batch * accumulation * replicas


def nearest_global_batch(global_batch, replicas, accumulation):
    """The largest global batch up to ``global_batch`` that splits (at least one micro-batch)."""
    return global_batch_of(max(1, global_batch // (replicas * accumulation)), accumulation, replicas)


@dataclass(frozen=True)
class StepPlan(BatchArithmetic):
    """One epoch in steps, for a batch split and a kind of hardware (``step_plan`` makes it)."""

    on_ipu: bool = False
    steps_per_execution: int = 1
    replica_steps: int = 0             # Keras steps per replica in an epoch, a whole number of executions
    untrimmed_replica_steps: int = 0   # before trimming to whole executions
    validation_replica_steps: int = 0  # the same for the validation split (0: no validation)
    instances: int = 1                 # processes feeding the replicas (PopDist), each its share of the replicas

    @property
    def dataset_batch(self):
        """The batch the input pipeline yields: a micro-batch on IPUs (one per replica per step), else global."""
        return self.micro_batch if self.on_ipu else self.global_batch

    @property
    def samples_per_step(self):
        """Samples one Keras step consumes over all replicas."""
        return self.micro_batch * self.replicas if self.on_ipu else self.global_batch

    def fit_steps(self, replica_steps):
        """``replica_steps`` per replica in the unit ``fit(steps_per_epoch=)`` takes (also the number of dataset
        batches they consume): on IPUs the total over this process's replicas (all of them, or a PopDist
        instance's share), elsewhere the steps themselves."""
        return replica_steps * (self.replicas // self.instances) if self.on_ipu else replica_steps

    @property
    def steps_per_epoch(self):
        """``fit(steps_per_epoch=)``."""
        return self.fit_steps(self.replica_steps)

    @property
    def validation_steps(self):
        """``fit(validation_steps=)`` (0: no validation)."""
        return self.fit_steps(self.validation_replica_steps)

    @property
    def updates_per_epoch(self):
        """Weight updates (optimizer steps, ``optimizer.iterations``) in an epoch."""
        return self.replica_steps // self.accumulation if self.on_ipu else self.replica_steps

    @property
    def executions_per_epoch(self):
        return self.replica_steps // self.steps_per_execution

    def learning_rate_steps(self, epochs, warmup_epochs):
        """(warm-up, total) of the learning-rate schedule in weight updates, the unit it is called with."""
        return int(warmup_epochs * self.updates_per_epoch), self.updates_per_epoch * epochs


def step_plan(global_batch, replicas, accumulation, steps_per_execution=0, on_ipu=False, train_samples=None,
              validation_samples=0, instances=1):
    """The ``StepPlan`` for a global batch on ``replicas`` replicas with ``accumulation`` micro-batches.

    ``steps_per_execution`` 0 means the default: the accumulation on IPUs (one weight update per host call),
    1 elsewhere. ``train_samples`` None plans the batch split only (no epoch: ``replica_steps`` 0).
    UserError when the batch does not divide, when ``steps_per_execution`` is not a multiple of the
    accumulation on IPUs, or when an epoch is shorter than one execution."""
    batch = batch_arithmetic(global_batch, replicas, accumulation)
    spe = steps_per_execution or (accumulation if on_ipu else 1)
    if on_ipu and spe % accumulation:
        raise UserError("hardware.steps_per_execution={} is not divisible by hardware.gradient_accumulation={}; "
                        "use a multiple, e.g. {}".format(spe, accumulation, accumulation))
    per_step = batch.micro_batch * replicas if on_ipu else global_batch
    untrimmed = replica = validation = 0
    if train_samples is not None:
        untrimmed = train_samples // per_step
        if untrimmed < 1:
            raise UserError("the training split has {} samples, fewer than one batch of train.batch_size={}; use a "
                            "smaller batch".format(train_samples, global_batch))
        replica = untrimmed - untrimmed % spe
        if replica < 1:
            raise UserError("an epoch of {} samples is {} steps per replica, shorter than one execution of "
                            "hardware.steps_per_execution={} steps; lower it (or the batch)".format(
                                train_samples, untrimmed, spe))
        validation = validation_samples // per_step
        validation -= validation % spe
    return StepPlan(batch.global_batch, batch.micro_batch, accumulation, replicas, on_ipu, spe, replica, untrimmed,
                    validation, instances)


def describe(steps, epochs, warmup_epochs, schedule="cosine"):
    """Lines for ``--plan-only``: an epoch in the SDK's units and the learning-rate schedule in weight updates."""
    if not steps.replica_steps:
        return ["steps per epoch: no training split to size it (give a dataset at data.path, or --train-samples N)"]
    lines = ["steps per epoch: fit(steps_per_epoch={}) = {} steps per replica x {} replica(s) (the SDK counts the "
             "total over replicas); {} execution(s) of {} steps per replica; {} weight updates per epoch".format(
                 steps.steps_per_epoch, steps.replica_steps, steps.replicas, steps.executions_per_epoch,
                 steps.steps_per_execution, steps.updates_per_epoch)
             if steps.on_ipu else
             "steps per epoch: fit(steps_per_epoch={}) steps of the global batch ({} executions of {} steps); {} "
             "weight updates per epoch".format(steps.steps_per_epoch, steps.executions_per_epoch,
                                               steps.steps_per_execution, steps.updates_per_epoch)]
    if steps.untrimmed_replica_steps != steps.replica_steps:
        lines.append("an epoch is trimmed to {} of {} steps per replica (a whole number of executions of {} steps)"
                     .format(steps.replica_steps, steps.untrimmed_replica_steps, steps.steps_per_execution))
    warmup, total = steps.learning_rate_steps(epochs, warmup_epochs)
    decay = "cosine decay to 0" if schedule == "cosine" else "constant"
    lines.append("learning rate (in weight updates, as optimizer.iterations counts them): linear warm-up over {} "
                 "updates, then {} until update {} ({} epochs x {} updates)".format(
                     warmup, decay, total, epochs, steps.updates_per_epoch))
    return lines
