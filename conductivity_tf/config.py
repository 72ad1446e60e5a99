"""Configuration as data: four sections (data, model, train, hardware), YAML files, dotted overrides.

A run's configuration is resolved in layers, later ones winning::

    dataclass defaults  <-  configs/train/default.yaml  <-  --config PRESET_OR_FILE  <-  section.key=value ...

``configs/train/default.yaml`` spells out every key of the embedded default run (a test keeps it equal to the
dataclass defaults below); presets in ``configs/train/`` change only what they need. Values are checked once,
here, at the edge: an unknown key, a wrong type or an inconsistent combination raises ``UserError`` with
one line naming the key and the fix. The resolved configuration is saved beside every run's outputs.

``merge_layers`` is the one loader of every YAML kind: training configurations (here), dataset specifications
(``configs/datasets/``, ``dataset.spec``) and the train benchmark's list (``configs/benchmarks.yaml``). The batch
split is checked with ``steps.batch_arithmetic``, the one place it is computed.
"""

import dataclasses
import os
from dataclasses import dataclass, field
from typing import List

from omegaconf import OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException, ValidationError

from conductivity_tf.errors import UserError
from conductivity_tf.fileio import write_text
from conductivity_tf.steps import batch_arithmetic

CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")
PRESET_DIR = os.path.join(CONFIG_DIR, "train")  # training presets (default.yaml: the embedded run)
DATASET_SPEC_DIR = os.path.join(CONFIG_DIR, "datasets")  # dataset build specifications
PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _f(default, help):
    """A dataclass field with a help string (lists get a fresh copy per instance)."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass
class DataConfig:
    path: str = _f("data/small32", "dataset directory (manifest.json + TFRecord shards); relative paths are "
                   "looked up in the working directory, then in the project checkout")
    size: int = _f(32, "edge of the cubic samples in voxels; must match the dataset")
    axes: List[int] = _f([0, 1, 2], "transport axes whose sigma_eff/sigma_0 the model predicts (1 or 3 of 0,1,2)")
    augment: bool = _f(True, "physics-aware flips/rotations that permute the labels to match")
    shuffle_buffer: int = _f(2048, "samples in the shuffle buffer")


@dataclass
class ModelConfig:
    widths: List[int] = _f([16, 32, 64], "filters of each resolution level of the 3-D CNN")
    blocks: int = _f(1, "3x3x3 convolutions per level (the first of a level strides when stride > 1)")
    stride: int = _f(2, "downsampling between levels (1 = none, then a 2x max-pool)")
    stem_stride: int = _f(2, "stride of the very first convolution (2 halves the resolution at once: ~6x fewer "
                          "FLOPs at the same accuracy on the shipped data)")
    stem_kernel: int = _f(3, "edge of the very first convolution's kernel (at least the stem stride, so that it "
                          "sees every voxel: 4 with stem_stride 4)")
    norm: str = _f("batch", "normalisation: batch | group | none (group suits IPU pipelines)")
    groups: int = _f(8, "groups for group normalisation")
    activation: str = _f("relu", "activation: relu | gelu | swish | elu")
    dropout: float = _f(0.0, "dropout before the head, 0 to 1")
    head_units: int = _f(64, "units of the dense layer before the output (0 = none)")
    head: str = _f("global", "global: one average over the whole volume, then dense layers | slices: per axis, "
                   "the features averaged over each slice across it, a resistance per slice, the slices in "
                   "series (needs data.axes [0,1,2]) | cells: per cell of the last level a "
                   "conductivity along each axis, the cells' conduction problem solved exactly in the model (needs "
                   "data.axes [0,1,2])")
    inputs: str = _f("volume", "what the network sees: volume (the binary volume, one channel) | spanning (also, per "
                     "axis, the voxels in clusters joining the two faces normal to it: four channels, labelled "
                     "per volume before the network)")
    ensemble: int = _f(1, "members of the built-in ensemble: the levels from branch_level on and the head, "
                          "repeated with weights of their own; their spread is each prediction's uncertainty (1 = "
                          "one network, no uncertainty)")
    branch_level: int = _f(2, "with ensemble > 1: the level where the members branch off the shared first levels")


@dataclass
class TrainConfig:
    epochs: int = _f(12, "passes over the training split")
    batch_size: int = _f(32, "global batch: micro-batch x gradient accumulation x replicas")
    learning_rate: float = _f(2e-3, "peak learning rate")
    optimizer: str = _f("adam", "adam | sgd")
    schedule: str = _f("cosine", "learning-rate schedule: cosine | constant")
    warmup_epochs: float = _f(0.5, "linear warm-up length in epochs")
    loss: str = _f("mse", "mse | mae | huber | log_mse (squared error of log(sigma + 0.001): weighs relative "
                          "error, for low-conductivity samples)")
    early_stopping: int = _f(0, "stop after this many epochs without validation improvement (0 = off)")
    seed: int = _f(0, "seed for weights, shuffling and augmentation")
    deterministic: bool = _f(False, "op determinism: bitwise reproducible CPU runs (slower)")
    precision: str = _f("fp32", "fp32 | mixed_float16 | mixed_bfloat16 | fp16 (IPU: fp16 partials, "
                        "stochastic rounding) | auto")
    xla: bool = _f(False, "compile the training step with XLA (jit_compile)")
    out_dir: str = _f("runs/default", "run directory: checkpoints, logs, metrics, exported model")
    tensorboard: bool = _f(True, "write TensorBoard logs")
    initial_weights: str = _f("", "start from these Keras weights (a run's model.weights.h5) to fine-tune; '' = random")


@dataclass
class HardwareConfig:
    kind: str = _f("auto", "auto | cpu | gpu | ipu (auto picks GPUs if visible, else CPU)")
    devices: List[str] = _f([], "GPU devices for MirroredStrategy, e.g. ['/gpu:0','/gpu:1'] (empty = all)")
    replicas: int = _f(0, "data-parallel replicas (0 = all devices, or IPUs / IPUs per replica)")
    ipus: int = _f(0, "IPUs to attach (0 = pipeline stages rounded up to a power of two, x replicas)")
    pipeline_stages: int = _f(1, "IPU pipeline stages (1 = no pipeline)")
    split_points: List[str] = _f([], "layer names that begin stages 2..N (empty = balanced automatically)")
    gradient_accumulation: int = _f(1, "micro-batches accumulated per optimizer step, per replica")
    reduction: str = _f("mean", "gradient accumulation reduction: mean | sum | running_mean")
    schedule: str = _f("grouped", "pipeline schedule: grouped | interleaved | sequential")
    recomputation: bool = _f(False, "recompute activations in the backward pass (IPU)")
    steps_per_execution: int = _f(0, "steps run per host call (0 = gradient accumulation steps)")
    available_memory_proportion: List[float] = _f([], "per stage, 0 to 1 (empty = SDK default)")
    selection_order: str = _f("snake", "IPU selection order: auto | zigzag | snake | hoof")
    executable_cache: str = _f("", "directory for compiled IPU executables (empty = none)")
    precompile: bool = _f(False, "compile for IPUs without any attached, then stop")
    ipu_version: str = _f("ipu2", "IPU version for pre-compilation: ipu2 (GC200 and Bow)")
    ipu_memory_mb: float = _f(900.0, "in-processor memory of one IPU, MB")
    memory_reserve_mb: float = _f(200.0, "part of each IPU kept for code and exchange buffers, MB")


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    hardware: HardwareConfig = field(default_factory=HardwareConfig)


SECTIONS = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig, "hardware": HardwareConfig}

CHOICES = {
    "model.norm": ("batch", "group", "none"),
    "model.activation": ("relu", "gelu", "swish", "elu"),
    "model.head": ("global", "slices", "cells"),
    "model.inputs": ("volume", "spanning"),
    "train.optimizer": ("adam", "sgd"),
    "train.schedule": ("cosine", "constant"),
    "train.loss": ("mse", "mae", "huber", "log_mse"),
    "train.precision": ("fp32", "mixed_float16", "mixed_bfloat16", "fp16", "auto"),
    "hardware.kind": ("auto", "cpu", "gpu", "ipu"),
    "hardware.reduction": ("mean", "sum", "running_mean"),
    "hardware.schedule": ("grouped", "interleaved", "sequential"),
    "hardware.selection_order": ("auto", "zigzag", "snake", "hoof"),
    "hardware.ipu_version": ("ipu2",),
}

# key -> (smallest allowed value, what the value means); checked for every int/float key named here
MINIMUMS = {
    "data.size": 4,
    "data.shuffle_buffer": 1,
    "model.blocks": 1,
    "model.stride": 1,
    "model.stem_stride": 1,
    "model.stem_kernel": 1,
    "model.groups": 1,
    "model.head_units": 0,
    "model.ensemble": 1,
    "model.branch_level": 0,
    "train.epochs": 1,
    "train.batch_size": 1,
    "train.early_stopping": 0,
    "train.seed": 0,
    "train.warmup_epochs": 0,
    "hardware.replicas": 0,
    "hardware.ipus": 0,
    "hardware.pipeline_stages": 1,
    "hardware.gradient_accumulation": 1,
    "hardware.steps_per_execution": 0,
    "hardware.ipu_memory_mb": 1,
    "hardware.memory_reserve_mb": 0,
}


def default_config():
    """The embedded default run as a ``Config`` (the dataclass defaults)."""
    return Config()


def _fields_at(schema, key):
    """(the dotted path of ``key``'s parent, the dataclass there) in ``schema``; (path, None) past a dict or list."""
    cls, parents = schema, key.split(".")[:-1]
    for depth, part in enumerate(parents):
        field_types = {f.name: f.type for f in dataclasses.fields(cls)}
        cls = field_types.get(part.split("[")[0])
        if cls is None or not dataclasses.is_dataclass(cls):
            return ".".join(parents[:depth + 1]), None
    return ".".join(parents), cls


TYPE_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string",
              List[int]: "a list of integers, e.g. [0,1,2]", List[str]: "a list of strings",
              List[float]: "a list of numbers"}


def _explain_omegaconf_error(err, source, schema):
    """An OmegaConf error as one line naming the key (and the valid keys, or the type wanted) and the fix."""
    key = getattr(err, "full_key", None) or ""
    where = " (in {})".format(source) if source else ""
    parent, cls = _fields_at(schema, key) if key else ("", None)
    if isinstance(err, (ConfigKeyError, ConfigAttributeError)):
        if cls is None:
            return "unknown key {}{}".format(key or "?", where)
        names = [f.name for f in dataclasses.fields(cls)]
        if not parent and all(dataclasses.is_dataclass(f.type) for f in dataclasses.fields(cls)):
            return "unknown key {}{}; the sections are {}".format(key, where, ", ".join(names))
        return "unknown key {}{}; valid keys{}: {}".format(key, where, " in '{}'".format(parent) if parent else "",
                                                           ", ".join(names))
    if isinstance(err, ValidationError):
        name = key.split(".")[-1].split("[")[0]
        wanted = {f.name: f.type for f in dataclasses.fields(cls)}.get(name) if cls is not None else None
        return "{}={!r}{} has the wrong type; give {}".format(key, getattr(err, "value", None), where,
                                                             TYPE_NAMES.get(wanted, "a valid value"))
    return "bad configuration{}: {}{}".format(where, str(err).splitlines()[0], " (key {})".format(key) if key else "")


def merge_layers(schema, layers=(), overrides=(), last=(), what="configuration"):
    """The one loader of every YAML kind the project reads (training configurations, dataset specifications,
    benchmark lists): the dataclass ``schema``'s defaults, then each layer in order (a YAML file's path, or a
    mapping), then ``key=value`` overrides (YAML values), then the mappings in ``last``. Returns the merged
    OmegaConf node (``OmegaConf.to_object`` makes it dataclasses); UserError naming the file or the command line
    and the key on any problem."""
    node = OmegaConf.structured(schema)
    schema = schema if isinstance(schema, type) else type(OmegaConf.to_object(node))

    def merge(node, layer, source):
        try:
            return OmegaConf.merge(node, layer)
        except OmegaConfBaseException as err:
            raise UserError(_explain_omegaconf_error(err, source, schema))

    for layer in layers:
        source = None
        if isinstance(layer, str):
            source = layer
            try:
                layer = OmegaConf.load(layer)
            except Exception as err:  # yaml.YAMLError and OSError: either way the file is unusable
                raise UserError("cannot read {} {}: {}".format(what, source, str(err).splitlines()[0]))
        node = merge(node, layer, source)
    for item in overrides:
        if "=" not in item or item.startswith("="):
            raise UserError("override {!r} is not of the form {}, e.g. {}".format(
                item, *(("section.key=value", "train.epochs=5") if schema is Config else
                        ("key=value", "families.fibres.weight=0"))))
        node = merge(node, OmegaConf.from_dotlist([item]), "command line")
    for layer in last:
        node = merge(node, layer, "command line")
    return node


def resolve_config_file(name, directory=PRESET_DIR, what="configuration", kind="presets"):
    """A shipped configuration's name (``pretrained64``: a preset in configs/train/; ``real64`` with
    ``directory=DATASET_SPEC_DIR``: a dataset specification) or a path to a YAML file -> an existing path."""
    if os.path.isfile(name):
        return name
    candidate = os.path.join(directory, name if name.endswith(".yaml") else name + ".yaml")
    if os.path.isfile(candidate):
        return candidate
    shipped = list_presets() if directory == PRESET_DIR else list_configs(directory)
    raise UserError("{} {} not found; give a YAML file or one of the {}: {}".format(what, name, kind,
                                                                                 ", ".join(shipped)))


def list_configs(directory=PRESET_DIR):
    """The names of the shipped configurations in ``directory``."""
    return sorted(n[:-5] for n in os.listdir(directory) if n.endswith(".yaml"))


def list_presets():
    return [n for n in list_configs(PRESET_DIR) if n != "default"]


def load_config(config_file=None, overrides=()):
    """Resolve the configuration: defaults, default.yaml, an optional preset/file, then overrides.

    ``overrides`` are strings ``section.key=value`` (YAML values: ``model.widths=[8,16]``).
    Returns a validated ``Config``; raises ``UserError`` on any problem.
    """
    layers = [os.path.join(PRESET_DIR, "default.yaml")]
    if config_file:
        layers.append(resolve_config_file(config_file))
    for item in overrides:
        key = item.split("=", 1)[0]
        if "=" in item and not item.startswith("=") and "." not in key:
            raise UserError("override {!r} needs a section: one of {} (e.g. train.{}=...)".format(
                item, ", ".join(SECTIONS), key))
    config = OmegaConf.to_object(merge_layers(Config, layers, overrides))
    validate(config)
    return config


def config_to_dict(config):
    return dataclasses.asdict(config)


def config_to_yaml(config):
    return OmegaConf.to_yaml(OmegaConf.structured(config))


def save_config(config, path):
    """Write the resolved configuration as YAML (atomically)."""
    write_text(path, config_to_yaml(config))


def describe_config():
    """Text for ``--help``: every section and key with its default and meaning."""
    lines = []
    defaults = default_config()
    for section, cls in SECTIONS.items():
        lines.append("{}:".format(section))
        values = getattr(defaults, section)
        for f in dataclasses.fields(cls):
            value = getattr(values, f.name)
            lines.append("  {}.{} = {!r}".format(section, f.name, value))
            lines.append("      {}".format(f.metadata.get("help", "")))
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# validation


def _check_choices(config):
    for key, allowed in CHOICES.items():
        section, name = key.split(".")
        value = getattr(getattr(config, section), name)
        if value not in allowed:
            raise UserError("{}={!r} is not allowed; use one of {}".format(key, value, " | ".join(allowed)))


def _check_minimums(config):
    for key, low in MINIMUMS.items():
        section, name = key.split(".")
        value = getattr(getattr(config, section), name)
        if value < low:
            raise UserError("{}={} is out of range; it must be >= {}".format(key, value, low))


def validate(config):
    """Check ranges, choices and the consistency between sections; raise UserError on the first problem."""
    _check_choices(config)
    _check_minimums(config)
    d, m, t, h = config.data, config.model, config.train, config.hardware
    if not d.axes or len(d.axes) not in (1, 3) or len(set(d.axes)) != len(d.axes) or any(
            a not in (0, 1, 2) for a in d.axes):
        raise UserError("data.axes={} is invalid; predict one axis ([0]) or all three ([0,1,2])".format(d.axes))
    if m.head in ("slices", "cells") and sorted(d.axes) != [0, 1, 2]:
        raise UserError("model.head={} predicts the three axes; set data.axes=[0,1,2] or model.head=global".format(
            m.head))
    if not m.widths or any(w < 1 for w in m.widths):
        raise UserError("model.widths={} is invalid; give positive filter counts, e.g. [16,32,64]".format(m.widths))
    if not 0.0 <= m.dropout < 1.0:
        raise UserError("model.dropout={} is out of range; it must be in [0, 1)".format(m.dropout))
    if m.norm == "group" and any(w % m.groups for w in m.widths):
        raise UserError("model.groups={} must divide every width in model.widths={}; change one of them".format(
            m.groups, m.widths))
    levels = len(m.widths)
    if m.branch_level > levels:
        raise UserError("model.branch_level={} is beyond the {} levels of model.widths; use 0 to {}".format(
            m.branch_level, levels, levels))
    if m.stem_kernel < m.stem_stride:
        raise UserError("model.stem_kernel={} is smaller than model.stem_stride={}, so the first convolution would "
                        "skip voxels; use model.stem_kernel={}".format(m.stem_kernel, m.stem_stride, m.stem_stride))
    if d.size < m.stem_stride * 2 ** (levels - 1):
        raise UserError("data.size={} is too small for {} levels in model.widths with model.stem_stride={}; use "
                        "fewer widths or a smaller stem stride".format(d.size, levels, m.stem_stride))
    if not t.learning_rate > 0:
        raise UserError("train.learning_rate={} is out of range; it must be > 0".format(t.learning_rate))
    if t.precision == "fp16" and h.kind != "ipu":
        raise UserError("train.precision=fp16 is for IPUs; on CPU/GPU use mixed_float16 or mixed_bfloat16")
    if h.kind != "ipu" and h.pipeline_stages > 1:
        raise UserError("hardware.pipeline_stages={} needs hardware.kind=ipu; on CPU/GPU use 1".format(
            h.pipeline_stages))
    if h.split_points and len(h.split_points) != h.pipeline_stages - 1:
        raise UserError("hardware.split_points names {} layers but hardware.pipeline_stages={} needs {}".format(
            len(h.split_points), h.pipeline_stages, h.pipeline_stages - 1))
    if h.available_memory_proportion and (
            len(h.available_memory_proportion) != h.pipeline_stages
            or any(not 0 < p <= 1 for p in h.available_memory_proportion)):
        raise UserError("hardware.available_memory_proportion needs one value in (0, 1] per pipeline stage "
                        "({} stages)".format(h.pipeline_stages))
    replicas = h.replicas or 1
    batch_arithmetic(t.batch_size, replicas, h.gradient_accumulation)
    steps = h.steps_per_execution
    if steps and steps % h.gradient_accumulation:
        raise UserError(
            "hardware.steps_per_execution={} is not divisible by hardware.gradient_accumulation={}; "
            "use a multiple, e.g. {}".format(steps, h.gradient_accumulation, h.gradient_accumulation))


def resolve_data_path(path):
    """A dataset path as given, or relative to the project checkout when not found in the working dir."""
    if os.path.isabs(path) or os.path.exists(path):
        return path
    candidate = os.path.join(PROJECT_ROOT, path)
    return candidate if os.path.exists(candidate) else path
