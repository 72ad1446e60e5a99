"""What a built dataset holds: the build specification (families, porosity ranges, parameter ranges), and
sample i made from it, from ``numpy.random.default_rng([seed, i])`` only (its split too)."""

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, List

import numpy as np
from omegaconf import OmegaConf

from conductivity_tf import config as config_lib
from conductivity_tf import microstructure
from conductivity_tf.dataset.records import labelled_sample
from conductivity_tf.errors import UserError


@dataclass
class FamilySpec:
    weight: float = 1.0
    porosity: List[float] = field(default_factory=lambda: [0.2, 0.8])
    # each parameter: [low, high] (uniform), a single value, or a list of choices (strings / 3+ values)
    params: Dict[str, Any] = field(default_factory=dict)


def _default_families():
    return {
        "blobs": FamilySpec(1.0, [0.15, 0.85], {"correlation_length": [1.0, 4.0], "anisotropy": [1.0, 3.0]}),
        "overlapping_spheres": FamilySpec(1.0, [0.3, 0.85], {"radius": [1.5, 5.0], "polydispersity": [0.0, 0.5],
                                                             "conducting": ["pores", "spheres"]}),
        "packed_spheres": FamilySpec(0.6, [0.7, 0.92], {"radius": [2.0, 4.0], "polydispersity": [0.0, 0.4]}),
        "fibres": FamilySpec(0.8, [0.4, 0.9], {"radius": [1.0, 2.5], "spread": [0.0, 60.0], "axis": [0, 1, 2]}),
        "graded": FamilySpec(0.8, [0.2, 0.8], {"correlation_length": [1.0, 3.5], "layers": [0, 0, 2, 3, 4],
                                               "axis": [0, 1, 2]}),
    }


@dataclass
class BuildSpec:
    samples: int = 4096
    size: int = 32
    seed: int = 0
    shard_size: int = 256
    validation_fraction: float = 0.1
    test_fraction: float = 0.1
    families: Dict[str, FamilySpec] = field(default_factory=_default_families)


def load_build_spec(config_file=None, overrides=(), **explicit):
    """Default spec <- optional YAML (a path, or the name of one in configs/datasets/: ``mix64``, ``real64``) <-
    key=value overrides <- explicit command-line values."""
    layers = [config_lib.resolve_config_file(config_file, config_lib.DATASET_SPEC_DIR, "dataset configuration",
                                            "shipped specifications")] if config_file else []
    cfg = config_lib.merge_layers(BuildSpec, layers, overrides, [{k: v for k, v in explicit.items() if v is not None}],
                                  what="dataset configuration")
    spec = OmegaConf.to_object(cfg)
    if spec.samples < 1 or spec.size < 4 or spec.shard_size < 1:
        raise UserError("samples, size and shard_size must be positive (size >= 4); got {}, {}, {}".format(
            spec.samples, spec.size, spec.shard_size))
    if not 0 <= spec.validation_fraction + spec.test_fraction < 1:
        raise UserError("validation_fraction + test_fraction must be in [0, 1)")
    for name, fam in spec.families.items():
        if name not in microstructure.FAMILIES:
            raise UserError("unknown family {!r} in families; use {}".format(name, ", ".join(microstructure.FAMILIES)))
        if len(fam.porosity) != 2 or not 0 < fam.porosity[0] <= fam.porosity[1] < 1:
            raise UserError("families.{}.porosity={} must be [low, high] within (0, 1)".format(name, fam.porosity))
    if sum(f.weight for f in spec.families.values()) <= 0:
        raise UserError("every family has weight 0; give at least one a positive weight")
    return spec


def spec_to_dict(spec):
    return dataclasses.asdict(spec)


def _draw(rng, value):
    if isinstance(value, (list, tuple)):
        if len(value) == 2 and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            return float(rng.uniform(value[0], value[1]))
        return value[int(rng.integers(len(value)))]
    return value


def split_of(seed, index, spec):
    """The split of sample ``index``: a function of (seed, index) only."""
    u = np.random.default_rng([seed, index, 1]).random()
    if u < spec.test_fraction:
        return "test"
    if u < spec.test_fraction + spec.validation_fraction:
        return "validation"
    return "train"


def make_sample(spec, index):
    """Generate and label sample ``index``: a dict ready to serialise. Depends on (spec, index) only."""
    rng = np.random.default_rng([spec.seed, index])
    names = sorted(spec.families)
    weights = np.array([spec.families[n].weight for n in names], float)
    family = names[int(rng.choice(len(names), p=weights / weights.sum()))]
    fam = spec.families[family]
    params = {k: _draw(rng, v) for k, v in sorted(fam.params.items())}
    if family == "graded":
        params["porosity_start"] = float(rng.uniform(*fam.porosity))
        params["porosity_end"] = float(rng.uniform(*fam.porosity))
    else:
        params["porosity"] = float(rng.uniform(*fam.porosity))
    if "anisotropy" in params:  # per-axis lengths (blobs' correlation, foam's cells): l * anisotropy^u, |u| <= 1/2
        a = params.pop("anisotropy")
        key = "correlation_length" if "correlation_length" in params else "cell_size"
        params[key] = [round(params[key] * a ** u, 4) for u in rng.uniform(-0.5, 0.5, 3)]
    if "flattening" in params:  # blobs flattened along one axis (plate-like, layered): its length / flattening
        flat, axis = params.pop("flattening"), int(params.pop("axis"))
        lengths = np.broadcast_to(params["correlation_length"], (3,))
        params["correlation_length"] = [round(float(n) / flat if a == axis else float(n), 4)
                                        for a, n in enumerate(lengths)]
    for key in ("axis", "layers"):
        if key in params:
            params[key] = int(params[key])
    for attempt in range(8):
        sample_seed = int(rng.integers(2 ** 31))
        try:
            volume = microstructure.generate(family, spec.size, seed=sample_seed, **params)
            break
        except UserError:  # e.g. random packing jammed before its porosity: the next seed (still reproducible)
            if attempt == 7:
                raise
    return labelled_sample(index, volume, family, params, sample_seed)
