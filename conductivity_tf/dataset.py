"""Datasets of labelled microstructures: build, import, merge, inspect, verify, and read.

Layout of a dataset directory::

    manifest.json                    schema version, sample size, counts, shards (sha256, records),
                                     label statistics, the split rule, the build specification
    train-00000.tfrecord.gz ...      gzip-compressed TFRecord shards, one tf.train.Example per sample
    validation-00000.tfrecord.gz ...
    test-00000.tfrecord.gz ...
    train-00000.tfrecord.gz.json     per-shard record (written after the shard: marks it complete)

A record holds ``volume`` (the conducting mask, ``numpy.packbits`` of the C-ordered cube),
``relative_conductivity`` and ``tortuosity`` on axes 0, 1, 2 (tortuosity inf when not percolating),
``porosity``, ``family``, ``params`` (JSON), ``seed`` and ``index``.

Determinism: sample i is made from ``numpy.random.default_rng([seed, i])`` only, and its split too, so
any division of the work into worker processes or ``--shard I/N`` jobs writes the same bytes (gzip with
mtime 0, protobuf serialised deterministically). A shard is written under a temporary name and renamed;
its ``.json`` record is written after it; re-running an interrupted build keeps the shards that have
their record and redoes the rest.

Reading needs TensorFlow only for ``make_dataset`` (tf.data); ``iterate`` gives numpy arrays and
metadata without it.
"""

import argparse
import dataclasses
import glob
import gzip
import hashlib
import io
import json
import math
import os
import struct
import sys
import zlib
from dataclasses import dataclass, field
from typing import Any, Dict, List

import numpy as np

from conductivity_tf import microstructure, physics
from conductivity_tf.config import resolve_data_path
from conductivity_tf.errors import UserError, run_cli
from conductivity_tf.fileio import atomic_path, check_writable_dir, write_text
from conductivity_tf.volumes import add_volume_arguments, load_volume, load_volume_from_args, tile

SCHEMA_VERSION = 1
SPLITS = ("train", "validation", "test")
SUFFIX = ".tfrecord.gz"


# ---------------------------------------------------------------------------------------------
# build specification


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
    """Default spec <- optional YAML <- key=value overrides <- explicit command-line values."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException


    cfg = OmegaConf.structured(BuildSpec)
    try:
        if config_file:
            if not os.path.isfile(config_file):
                raise UserError("dataset configuration {} not found; give a YAML file".format(config_file))
            cfg = OmegaConf.merge(cfg, OmegaConf.load(config_file))
        for item in overrides:
            if "=" not in item:
                raise UserError("override {!r} is not key=value, e.g. families.fibres.weight=0".format(item))
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides)))
        cfg = OmegaConf.merge(cfg, {k: v for k, v in explicit.items() if v is not None})
    except OmegaConfBaseException as err:
        raise UserError("bad dataset configuration: {} (key {})".format(
            str(err).splitlines()[0], getattr(err, "full_key", "?")))
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


# ---------------------------------------------------------------------------------------------
# samples


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
    if "anisotropy" in params:  # per-axis correlation lengths: cl * anisotropy^u, u in [-1/2, 1/2]
        a = params.pop("anisotropy")
        params["correlation_length"] = [round(params["correlation_length"] * a ** u, 4)
                                        for u in rng.uniform(-0.5, 0.5, 3)]
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
    results = physics.solve(volume)
    return {
        "index": index,
        "volume": volume,
        "relative_conductivity": [r.relative_conductivity for r in results],
        "tortuosity": [r.tortuosity for r in results],
        "porosity": float(volume.mean()),
        "family": family,
        "params": params,
        "seed": sample_seed,
    }


_PROTO = {}


def _example_classes():
    """tf.train.Example's messages, defined in a private descriptor pool.

    Same field numbers and types as tensorflow/core/example/{example,feature}.proto, so the bytes are a
    tf.train.Example; a private pool (and package name) keeps them from clashing with TensorFlow's own
    registration when both live in one process, and lets the numpy reader work without TensorFlow.
    """
    if _PROTO:
        return _PROTO
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    F = descriptor_pb2.FieldDescriptorProto
    fdp = descriptor_pb2.FileDescriptorProto(name="conductivity_tf_example.proto", package="conductivity_tf_example",
                                             syntax="proto3")

    def message(name, fields, nested=None, oneof=None, map_entry=False):
        m = fdp.message_type.add() if nested is None else nested.nested_type.add()
        m.name = name
        if map_entry:
            m.options.map_entry = True
        if oneof:
            m.oneof_decl.add(name=oneof)
        for number, (fname, ftype, label, type_name) in enumerate(fields, 1):
            f = m.field.add(name=fname, number=number, type=ftype, label=label)
            if type_name:
                f.type_name = type_name
            if oneof:
                f.oneof_index = 0
        return m

    rep, opt = F.LABEL_REPEATED, F.LABEL_OPTIONAL
    message("BytesList", [("value", F.TYPE_BYTES, rep, None)])
    message("FloatList", [("value", F.TYPE_FLOAT, rep, None)])
    message("Int64List", [("value", F.TYPE_INT64, rep, None)])
    pkg = ".conductivity_tf_example."
    message("Feature", [("bytes_list", F.TYPE_MESSAGE, opt, pkg + "BytesList"),
                        ("float_list", F.TYPE_MESSAGE, opt, pkg + "FloatList"),
                        ("int64_list", F.TYPE_MESSAGE, opt, pkg + "Int64List")], oneof="kind")
    features = message("Features", [("feature", F.TYPE_MESSAGE, rep, pkg + "Features.FeatureEntry")])
    message("FeatureEntry", [("key", F.TYPE_STRING, opt, None), ("value", F.TYPE_MESSAGE, opt, pkg + "Feature")],
            nested=features, map_entry=True)
    message("Example", [("features", F.TYPE_MESSAGE, opt, pkg + "Features")])
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    for name in ("BytesList", "FloatList", "Int64List", "Feature", "Features", "Example"):
        descriptor = pool.FindMessageTypeByName("conductivity_tf_example." + name)
        if hasattr(message_factory, "GetMessageClass"):
            _PROTO[name] = message_factory.GetMessageClass(descriptor)
        else:  # protobuf 3 (Graphcore SDK images)
            _PROTO[name] = message_factory.MessageFactory(pool).GetPrototype(descriptor)
    return _PROTO


def serialize(sample):
    """One sample -> a serialized tf.train.Example (deterministic bytes)."""
    pb = _example_classes()

    def feature(kind, values):
        if kind == "bytes":
            return pb["Feature"](bytes_list=pb["BytesList"](value=values))
        if kind == "float":
            return pb["Feature"](float_list=pb["FloatList"](value=values))
        return pb["Feature"](int64_list=pb["Int64List"](value=values))

    volume = np.ascontiguousarray(sample["volume"], dtype=np.uint8)
    features = {
        "volume": feature("bytes", [np.packbits(volume.ravel()).tobytes()]),
        "size": feature("int", [volume.shape[0]]),
        "relative_conductivity": feature("float", sample["relative_conductivity"]),
        "tortuosity": feature("float", sample["tortuosity"]),
        "porosity": feature("float", [sample["porosity"]]),
        "family": feature("bytes", [sample["family"].encode()]),
        "params": feature("bytes", [json.dumps(sample["params"], sort_keys=True).encode()]),
        "seed": feature("int", [sample["seed"]]),
        "index": feature("int", [sample["index"]]),
    }
    example = pb["Example"](features=pb["Features"](feature=features))
    return example.SerializeToString(deterministic=True)


def deserialize(record, size=None):
    """A serialized Example -> dict with the volume unpacked to uint8 (size^3)."""
    feats = _example_classes()["Example"].FromString(record).features.feature
    n = size or feats["size"].int64_list.value[0]
    bits = np.frombuffer(feats["volume"].bytes_list.value[0], np.uint8)
    return {
        "index": feats["index"].int64_list.value[0],
        "volume": np.unpackbits(bits)[: n ** 3].reshape(n, n, n),
        "relative_conductivity": np.array(feats["relative_conductivity"].float_list.value, np.float32),
        "tortuosity": np.array(feats["tortuosity"].float_list.value, np.float32),
        "porosity": feats["porosity"].float_list.value[0],
        "family": feats["family"].bytes_list.value[0].decode(),
        "params": json.loads(feats["params"].bytes_list.value[0].decode()),
        "seed": feats["seed"].int64_list.value[0],
    }


def _masked_crc(data):
    """TFRecord's masked CRC-32C of ``data`` (4 bytes, little endian)."""
    import crc32c

    crc = crc32c.crc32c(data)
    return struct.pack("<I", (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF)


def _frame(record):
    """TFRecord framing: length, its masked CRC, the data, its masked CRC."""
    length = struct.pack("<Q", len(record))
    return length + _masked_crc(length) + record + _masked_crc(record)


def write_shard(path, records):
    """Write records as a gzip TFRecord file, atomically and byte-for-byte reproducibly."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as raw:
            with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz:
                for record in records:
                    gz.write(_frame(record))


def read_records(path):
    """Yield the records of a gzip TFRecord file; UserError naming the file if it is damaged."""

    def damaged(what):
        return UserError("shard {} is damaged ({}); rebuild it (re-run 'dataset build' after deleting it) or "
                         "restore it from a copy".format(path, what))

    try:
        with gzip.open(path, "rb") as gz:
            stream = io.BufferedReader(gz)
            count = 0
            while True:
                head = stream.read(12)
                if not head:
                    return
                if len(head) < 12:
                    raise damaged("truncated after {} records".format(count))
                length_bytes, crc = head[:8], head[8:]
                if _masked_crc(length_bytes) != crc:
                    raise damaged("bad length checksum at record {}".format(count))
                (length,) = struct.unpack("<Q", length_bytes)
                record = stream.read(length)
                crc = stream.read(4)
                if len(record) < length or len(crc) < 4:
                    raise damaged("truncated inside record {}".format(count))
                if _masked_crc(record) != crc:
                    raise damaged("bad data checksum at record {}".format(count))
                count += 1
                yield record
    except (OSError, EOFError, gzip.BadGzipFile, zlib.error) as err:   # zlib: a flipped bit in deflate data
        raise damaged(str(err) or type(err).__name__)


def sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------
# planning and building


def plan_shards(spec):
    """[(file name, split, [sample indices])] for the whole dataset, in a fixed order."""
    members = {s: [] for s in SPLITS}
    for index in range(spec.samples):
        members[split_of(spec.seed, index, spec)].append(index)
    shards = []
    for split in SPLITS:
        idx = members[split]
        for k in range(0, len(idx), spec.shard_size):
            name = "{}-{:05d}{}".format(split, k // spec.shard_size, SUFFIX)
            shards.append((name, split, idx[k:k + spec.shard_size]))
    return shards


def _shard_record_path(out, name):
    return os.path.join(out, name + ".json")


def completed_shard(out, name):
    """The shard's record if the shard is complete and matches it, else None."""
    record_path = _shard_record_path(out, name)
    path = os.path.join(out, name)
    if not (os.path.isfile(record_path) and os.path.isfile(path)):
        return None
    try:
        with open(record_path) as handle:
            record = json.load(handle)
    except (OSError, ValueError):
        return None
    if record.get("bytes") != os.path.getsize(path) or record.get("sha256") != sha256(path):
        return None
    return record


def _label_stats(samples):
    """Per-shard label sums over the values as stored (float32), exactly rounded (``math.fsum``): numpy's
    SIMD sums can differ in the last bit with memory alignment, and the manifest must be the same bytes on
    every build."""
    sigma = [np.float32(s["relative_conductivity"]).tolist() for s in samples]
    columns = list(zip(*sigma))
    return {"count": len(samples), "sigma_sum": [math.fsum(c) for c in columns],
            "sigma_sq": [math.fsum(v * v for v in c) for c in columns],
            "sigma_min": [min(c) for c in columns], "sigma_max": [max(c) for c in columns],
            "porosity_sum": math.fsum(float(np.float32(s["porosity"])) for s in samples),
            "percolating": sum(1 for s in samples if s["relative_conductivity"][0] > 0),
            "families": {f: sum(1 for s in samples if s["family"] == f)
                         for f in sorted({s["family"] for s in samples})}}


def _finish_shard(out, name, split, samples):
    path = os.path.join(out, name)
    write_shard(path, [serialize(s) for s in samples])
    record = {"file": name, "split": split, "records": len(samples), "bytes": os.path.getsize(path),
              "sha256": sha256(path), "first_index": samples[0]["index"], "stats": _label_stats(samples)}
    write_text(_shard_record_path(out, name), json.dumps(record, indent=1, sort_keys=True))
    return record


_WORKER_SPEC = None


def _worker_init(spec):
    global _WORKER_SPEC
    _WORKER_SPEC = spec
    # one worker = one core: the solver's threads would otherwise oversubscribe the machine
    import numba

    numba.set_num_threads(1)


def _worker_sample(index):
    return make_sample(_WORKER_SPEC, index)


def _clean_stale_temporaries(out):
    for stale in glob.glob(os.path.join(out, ".*.tmp")):
        os.remove(stale)


def run_build(spec, out, workers=1, shard=None, progress=True):
    """Build (or finish building) the dataset in ``out``; returns the list of shard records."""
    import multiprocessing

    from tqdm import tqdm


    check_writable_dir(out)
    _check_existing_spec(out, spec)
    _clean_stale_temporaries(out)
    write_text(os.path.join(out, "build-spec.json"), json.dumps(spec_to_dict(spec), indent=1, sort_keys=True))
    shards = plan_shards(spec)
    if shard is not None:
        i, n = shard
        shards = [s for k, s in enumerate(shards) if k % n == i]
    done = {name: completed_shard(out, name) for name, _, _ in shards}
    todo = [s for s in shards if done[s[0]] is None]
    total = sum(len(idx) for _, _, idx in todo)
    if todo:
        # fork is fast, but forking a process whose TensorFlow threads are running can deadlock the child
        ctx = multiprocessing.get_context("spawn" if sys.platform == "darwin" or "tensorflow" in sys.modules
                                          else "fork")
        order = [i for _, _, idx in todo for i in idx]
        with ctx.Pool(max(1, workers), initializer=_worker_init, initargs=(spec,)) as pool, \
                tqdm(total=total, desc="labelling samples", unit="sample", disable=not progress) as bar:
            results = pool.imap(_worker_sample, order, chunksize=2)
            for name, split, idx in todo:
                samples = []
                for _ in idx:
                    samples.append(next(results))
                    bar.update(1)
                done[name] = _finish_shard(out, name, split, samples)
    return [done[name] for name, _, _ in shards]


def _check_existing_spec(out, spec):
    path = os.path.join(out, "build-spec.json")
    if os.path.isfile(path):
        with open(path) as handle:
            previous = json.load(handle)
        if previous != json.loads(json.dumps(spec_to_dict(spec))):
            raise UserError("{} holds a dataset built with a different specification; use another --out or "
                            "delete it".format(out))


def _combine_stats(records):
    count = sum(r["stats"]["count"] for r in records)
    if not count:
        return {}
    stats = [r["stats"] for r in records]
    mean = [math.fsum(st["sigma_sum"][a] for st in stats) / count for a in range(3)]
    square = [math.fsum(st["sigma_sq"][a] for st in stats) / count for a in range(3)]
    families = {}
    for st in stats:
        for f, c in st["families"].items():
            families[f] = families.get(f, 0) + c
    return {
        "relative_conductivity_mean": mean,
        "relative_conductivity_std": [math.sqrt(max(sq - m * m, 0.0)) for sq, m in zip(square, mean)],
        "relative_conductivity_min": [min(st["sigma_min"][a] for st in stats) for a in range(3)],
        "relative_conductivity_max": [max(st["sigma_max"][a] for st in stats) for a in range(3)],
        "porosity_mean": math.fsum(st["porosity_sum"] for st in stats) / count,
        "percolating_fraction": sum(st["percolating"] for st in stats) / count,
        "families": dict(sorted(families.items())),
    }


def make_manifest(spec, records):
    records = sorted(records, key=lambda r: (SPLITS.index(r["split"]), r["file"]))
    return {
        "schema_version": SCHEMA_VERSION,
        "sample_size": spec.size,
        "samples": sum(r["records"] for r in records),
        "counts": {s: sum(r["records"] for r in records if r["split"] == s) for s in SPLITS},
        "shards": [{k: r[k] for k in ("file", "split", "records", "bytes", "sha256", "first_index")}
                   for r in records],
        "label_statistics": _combine_stats(records),
        "split_rule": "sample i is test if u < test_fraction, validation if u < test_fraction + "
                      "validation_fraction, else train; u = numpy.random.default_rng([seed, i, 1]).random()",
        "record_format": {"volume": "numpy.packbits of the C-ordered uint8 cube, 1 = conducting",
                          "relative_conductivity": "sigma_eff/sigma_0 along axes 0, 1, 2",
                          "tortuosity": "tau along axes 0, 1, 2 (inf when not percolating)"},
        "build": spec_to_dict(spec),
    }


def write_manifest(out, manifest, name="manifest.json"):
    write_text(os.path.join(out, name), json.dumps(manifest, indent=1, sort_keys=True) + "\n")


def merge_parts(out):
    """Join the shard records in ``out`` (from several ``--shard I/N`` jobs) into manifest.json."""
    path = os.path.join(out, "build-spec.json")
    if not os.path.isfile(path):
        raise UserError("{} has no build-spec.json; it is not a dataset build directory".format(out))
    spec = load_build_spec(path)
    records, missing = [], []
    for name, _, _ in plan_shards(spec):
        record = completed_shard(out, name)
        (records.append(record) if record else missing.append(name))
    if missing:
        raise UserError("{} shard(s) are missing or incomplete in {} (first: {}); run the remaining "
                        "'dataset build --shard I/N' jobs, then merge again".format(len(missing), out, missing[0]))
    manifest = make_manifest(spec, records)
    write_manifest(out, manifest)
    return manifest


# ---------------------------------------------------------------------------------------------
# opening, verifying, iterating


def load_manifest(path):
    """The manifest of dataset directory ``path``; UserError if missing or of another schema."""

    path = resolve_data_path(path)
    manifest_path = os.path.join(path, "manifest.json")
    if not os.path.isfile(manifest_path):
        raise UserError("no dataset at {} (manifest.json not found); build one with 'python -m "
                        "conductivity_tf.dataset build --out {}' or fix data.path".format(path, path))
    try:
        with open(manifest_path) as handle:
            manifest = json.load(handle)
    except ValueError as err:
        raise UserError("{} is not valid JSON ({}); rebuild the manifest with 'dataset merge'".format(
            manifest_path, err))
    version = manifest.get("schema_version") if isinstance(manifest, dict) else None
    if version != SCHEMA_VERSION:
        raise UserError("{} has schema version {}, this version of conductivity_tf reads version {}; rebuild the "
                        "dataset with this version".format(manifest_path, version, SCHEMA_VERSION))
    manifest["path"] = path
    return manifest


def shard_paths(manifest, split):
    if split not in SPLITS:
        raise UserError("split {!r} does not exist; use one of {}".format(split, ", ".join(SPLITS)))
    return [os.path.join(manifest["path"], s["file"]) for s in manifest["shards"] if s["split"] == split]


def check_shards(manifest, split=None, checksums=True):
    """Sizes (and sha256) of the shards against the manifest; UserError naming the first bad file."""
    for s in manifest["shards"]:
        if split and s["split"] != split:
            continue
        path = os.path.join(manifest["path"], s["file"])
        if not os.path.isfile(path):
            raise UserError("shard {} listed in the manifest is missing; restore it or rebuild the dataset".format(
                path))
        if os.path.getsize(path) != s["bytes"]:
            raise UserError("shard {} is damaged (truncated: {} bytes, the manifest says {}); restore or rebuild "
                            "it".format(path, os.path.getsize(path), s["bytes"]))
        if checksums and sha256(path) != s["sha256"]:
            raise UserError("shard {} is damaged (sha256 does not match the manifest); restore or rebuild it".format(
                path))


def verify(path):
    """Check a dataset fully; return a list of problems (empty when sound)."""
    try:
        manifest = load_manifest(path)
    except UserError as err:
        return [str(err)]
    problems = []
    size = manifest["sample_size"]
    for s in manifest["shards"]:
        shard = os.path.join(manifest["path"], s["file"])
        try:
            check_shards(dict(manifest, shards=[s]))
            count = 0
            for record in read_records(shard):
                sample = deserialize(record, size)
                count += 1
                sigma, tau, eps = sample["relative_conductivity"], sample["tortuosity"], sample["porosity"]
                if abs(sample["volume"].mean() - eps) > 1e-6:
                    problems.append("{}: sample {} porosity {} does not match its volume".format(
                        shard, sample["index"], eps))
                if np.any(sigma < 0) or np.any(sigma > eps + 1e-5):
                    problems.append("{}: sample {} has sigma_eff/sigma_0 {} outside [0, porosity {:.4f}]".format(
                        shard, sample["index"], sigma.tolist(), eps))
                if np.any(tau < 1 - 1e-5):
                    problems.append("{}: sample {} has tortuosity below 1: {}".format(
                        shard, sample["index"], tau.tolist()))
            if count != s["records"]:
                problems.append("{}: {} records, the manifest says {}".format(shard, count, s["records"]))
        except UserError as err:
            problems.append(str(err))
    return problems


def iterate(path, split="train", limit=None):
    """Yield samples (dicts with a uint8 ``volume`` and metadata) of a split, with no TensorFlow.

    >>> for sample in iterate("data/small32", "test", limit=2):   # doctest: +SKIP
    ...     print(sample["family"], sample["porosity"], sample["relative_conductivity"])
    """
    manifest = load_manifest(path)
    count = 0
    for shard in shard_paths(manifest, split):
        for record in read_records(shard):
            yield deserialize(record, manifest["sample_size"])
            count += 1
            if limit is not None and count >= limit:
                return


def load_arrays(path, split="train", limit=None):
    """A split as numpy arrays: volumes (N, S, S, S) uint8, sigma (N, 3), porosity (N,), families (N,)."""
    samples = list(iterate(path, split, limit))
    if not samples:
        raise UserError("split {} of {} is empty".format(split, path))
    return (np.stack([s["volume"] for s in samples]), np.stack([s["relative_conductivity"] for s in samples]),
            np.array([s["porosity"] for s in samples]), np.array([s["family"] for s in samples]))


# ---------------------------------------------------------------------------------------------
# tf.data


# the 48 symmetries of the cube: 6 axis permutations x 8 reflections
PERMUTATIONS = [(0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0)]


def allowed_permutations(axes):
    """Axis permutations that keep the labels meaningful: all six when all three axes are predicted
    (labels permuted to match), else those that keep the transport axis in place."""
    if len(axes) == 3:
        return PERMUTATIONS
    return [p for p in PERMUTATIONS if p[axes[0]] == axes[0]]


def make_dataset(path, split, batch_size, axes=(0, 1, 2), augment=False, shuffle=False, seed=0,
                 repeat=False, input_context=None, checksums=None, cache=False, start_epoch=0, epoch_batches=None,
                 epochs=None):
    """A ``tf.data.Dataset`` of (volume float32 (S, S, S, 1), sigma float32 (len(axes),)) batches.

    Static shapes and ``drop_remainder=True`` (IPUs need both). Shards are split between input
    pipelines at file level when ``input_context`` (from ``distribute_datasets_from_function``) says
    there are several; otherwise the whole split is read. ``augment`` applies random cube symmetries
    that keep the labels right (see ``allowed_permutations``). Shards are checked against the manifest
    first (sizes always; sha256 when ``checksums`` or when the split is below 1 GB).

    Repeated streams are reproducible epoch by epoch: epoch e's order and symmetries depend only on
    (``seed``, e, position), so a run resumed at ``start_epoch`` sees exactly the batches an
    uninterrupted run saw from that epoch on (epochs ``start_epoch`` .. ``epochs - 1``, then more as
    needed). ``epoch_batches`` makes every epoch of the stream exactly that many batches (Keras's
    ``steps_per_epoch``), so stream epochs and training epochs coincide.
    """
    from conductivity_tf.keras_compat import tf

    manifest = load_manifest(path)
    files = shard_paths(manifest, split)
    if not files:
        raise UserError("split {} of {} has no shards".format(split, manifest["path"]))
    split_bytes = sum(s["bytes"] for s in manifest["shards"] if s["split"] == split)
    check_shards(manifest, split, checksums=split_bytes < 1e9 if checksums is None else checksums)
    size = manifest["sample_size"]
    axes = list(axes)
    ds = tf.data.Dataset.from_tensor_slices(files)
    if input_context is not None and input_context.num_input_pipelines > 1:
        if len(files) < input_context.num_input_pipelines:
            raise UserError("split {} has {} shard(s) for {} input pipelines; rebuild with a smaller shard_size".format(
                split, len(files), input_context.num_input_pipelines))
        ds = ds.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
    if shuffle:  # one file order per seed; the samples are reshuffled every epoch below
        ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=False)
    ds = ds.interleave(lambda f: tf.data.TFRecordDataset(f, compression_type="GZIP"),
                       cycle_length=min(4, len(files)), num_parallel_calls=tf.data.AUTOTUNE,
                       deterministic=True)
    features = {"volume": tf.io.FixedLenFeature([], tf.string),
                "relative_conductivity": tf.io.FixedLenFeature([3], tf.float32)}
    shifts = tf.constant([7, 6, 5, 4, 3, 2, 1, 0], tf.uint8)

    def decode(record):
        parsed = tf.io.parse_single_example(record, features)
        packed = tf.io.decode_raw(parsed["volume"], tf.uint8)
        bits = tf.bitwise.bitwise_and(tf.bitwise.right_shift(packed[:, None], shifts[None, :]), 1)
        volume = tf.reshape(tf.cast(bits, tf.float32)[: size ** 3 // 8 * 8], [size, size, size])
        return volume, parsed["relative_conductivity"]

    ds = ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE)
    if cache:
        ds = ds.cache()
    perms = allowed_permutations(axes)

    def symmetry(volume, sigma, key):
        """One of the allowed cube symmetries, drawn from the stateless key (seed, epoch, position)."""
        choice = tf.random.stateless_uniform([], key, 0, len(perms), dtype=tf.int32)
        branches = [(lambda p=p: (tf.transpose(volume, p), tf.gather(sigma, p))) for p in perms]
        volume, sigma = tf.switch_case(choice, branches)
        flips = tf.random.stateless_uniform([3], key + tf.constant([0, 1 << 40], tf.int64), 0, 2, dtype=tf.int32)
        for axis in range(3):
            volume = tf.cond(flips[axis] > 0, lambda a=axis, v=volume: tf.reverse(v, [a]), lambda v=volume: v)
        return volume, sigma

    def finish(volume, sigma):
        volume = tf.ensure_shape(volume[..., None], [size, size, size, 1])
        return volume, tf.ensure_shape(tf.gather(sigma, axes), [len(axes)])

    def one_epoch(epoch, samples, tail=False):
        """Epoch ``epoch``'s batches; ``tail``: every epoch from this one on, each reshuffled (not resumable)."""
        epoch_seed = (int(seed) * 1000003 + int(epoch)) % (1 << 62)
        if shuffle:
            samples = samples.shuffle(4096, seed=epoch_seed, reshuffle_each_iteration=tail)
        if tail:
            samples = samples.repeat()
        if augment:  # positions keep counting through a repeated tail, so its symmetries differ epoch to epoch
            samples = samples.enumerate().map(
                lambda i, item: symmetry(item[0], item[1], tf.stack([tf.constant(epoch_seed, tf.int64), i])),
                num_parallel_calls=tf.data.AUTOTUNE)
        samples = samples.map(finish, num_parallel_calls=tf.data.AUTOTUNE)
        batches = samples.batch(batch_size, drop_remainder=True)
        return batches.take(epoch_batches) if epoch_batches and not tail else batches

    if repeat:
        stop = max(int(epochs or 0), start_epoch + 1)
        stream = one_epoch(start_epoch, ds)
        for epoch in range(start_epoch + 1, stop):
            stream = stream.concatenate(one_epoch(epoch, ds))
        # beyond the planned epochs (validation streams, benchmarks): reshuffled every pass
        ds = stream.concatenate(one_epoch(stop, ds, tail=True))
    else:
        ds = one_epoch(start_epoch, ds)
    if input_context is None:
        # several workers fed by Keras: each reads the stream and keeps its share of every batch, so all
        # workers run the same number of steps (file-level sharding would not) in the same order
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
        ds = ds.with_options(options)
    return ds.prefetch(tf.data.AUTOTUNE)


# ---------------------------------------------------------------------------------------------
# import of tomograms


def import_volumes(paths, out, tile_size, stride=None, load_args=None, seed=0, shard_size=256,
                   validation_fraction=0.1, test_fraction=0.1, progress=True):
    """Cut volumes into cubes, label them on three axes and write a dataset like ``build`` does."""
    from tqdm import tqdm


    loaded = [(p, load_volume_from_args(p, load_args) if load_args is not None else load_volume(p)) for p in paths]
    spec = BuildSpec(samples=0, size=tile_size, seed=seed, shard_size=shard_size,
                     validation_fraction=validation_fraction, test_fraction=test_fraction, families={})
    per_split = {s: [] for s in SPLITS}
    index = 0
    tiles = []
    for path, vol in loaded:
        if not set(np.unique(vol.array).tolist()) <= {0, 1}:
            raise UserError("{} is not binary; segment it (--otsu / --threshold) or map its phases to 0/1 with "
                            "--phase-map".format(path))
        for origin, cube in tile(vol.array, tile_size, stride):
            tiles.append((path, origin, cube))
    check_writable_dir(out)  # after every input is read and cut: bad input leaves no directory behind
    for path, origin, cube in tqdm(tiles, desc="labelling tiles", unit="tile", disable=not progress):
        results = physics.solve(cube)
        sample = {"index": index, "volume": cube, "relative_conductivity": [r.relative_conductivity for r in results],
                  "tortuosity": [r.tortuosity for r in results], "porosity": float(cube.mean()),
                  "family": "imported", "params": {"file": os.path.basename(path), "origin": list(origin)},
                  "seed": 0}
        per_split[split_of(seed, index, spec)].append(sample)
        index += 1
    records = []
    for split in SPLITS:
        samples = per_split[split]
        for k in range(0, len(samples), shard_size):
            name = "{}-{:05d}{}".format(split, k // shard_size, SUFFIX)
            records.append(_finish_shard(out, name, split, samples[k:k + shard_size]))
    spec.samples = index
    manifest = make_manifest(spec, records)
    manifest["build"]["imported_from"] = [os.path.basename(p) for p in paths]
    write_manifest(out, manifest)
    return manifest


# ---------------------------------------------------------------------------------------------
# command line


def _parse_shard(text):
    try:
        i, n = (int(x) for x in text.split("/"))
        if not 0 <= i < n:
            raise ValueError
        return i, n
    except ValueError:
        raise UserError("--shard {!r} is not I/N with 0 <= I < N, e.g. --shard 0/4".format(text))


def build_parser():

    parser = argparse.ArgumentParser(prog="python -m conductivity_tf.dataset",
                                     description="Datasets of labelled microstructures (TFRecord shards + manifest).")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    b = sub.add_parser("build", help="generate and label samples into TFRecord shards",
                       description="Generate microstructures, label them on all three axes with the solver and "
                                   "write TFRecord shards. Re-running the same command finishes an interrupted build.")
    b.add_argument("--out", required=True, help="dataset directory")
    b.add_argument("--samples", type=int, help="number of samples (default 4096)")
    b.add_argument("--size", type=int, help="cube edge in voxels (default 32)")
    b.add_argument("--seed", type=int, help="dataset seed (default 0)")
    b.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="worker processes (default: all cores)")
    b.add_argument("--shard", help="I/N: build only this job's share of the shards (SLURM job arrays); "
                                   "then 'dataset merge'")
    b.add_argument("--config", help="YAML build specification (families, porosity ranges, parameters)")
    b.add_argument("--quiet", action="store_true", help="no progress bar")
    b.add_argument("overrides", nargs="*", metavar="key=value",
                   help="specification overrides, e.g. shard_size=128 families.fibres.weight=0")
    m = sub.add_parser("merge", help="write manifest.json once every --shard job has finished")
    m.add_argument("out", help="dataset directory the jobs wrote to")
    i = sub.add_parser("import", help="cut tomograms into cubes and label them")
    i.add_argument("--out", required=True)
    i.add_argument("volumes", nargs="+", metavar="VOLUME")
    i.add_argument("--tile", type=int, required=True, help="cube edge in voxels")
    i.add_argument("--stride", type=int, help="distance between cube origins (default: --tile)")
    i.add_argument("--seed", type=int, default=0, help="seed of the split assignment")
    i.add_argument("--quiet", action="store_true")
    add_volume_arguments(i)
    n = sub.add_parser("info", help="summarise a dataset")
    n.add_argument("path")
    v = sub.add_parser("verify", help="check checksums, record counts and labels")
    v.add_argument("path")
    return parser


def main(argv=None):
    parser = build_parser()
    # argparse cannot intermix a sub-command's positionals with its options: key=value overrides that come
    # between options are picked up here
    args, extra = parser.parse_known_args(argv)
    if extra:
        if args.command != "build" or any(e.startswith("-") or "=" not in e for e in extra):
            parser.error("unrecognized arguments: {}".format(" ".join(extra)))
        args.overrides = list(args.overrides) + extra
    if args.command == "build":
        spec = load_build_spec(args.config, args.overrides, samples=args.samples, size=args.size, seed=args.seed)
        if args.workers < 1:
            raise UserError("--workers {} must be at least 1".format(args.workers))
        shard = _parse_shard(args.shard) if args.shard else None
        records = run_build(spec, args.out, workers=args.workers, shard=shard, progress=not args.quiet)
        if shard is None:
            write_manifest(args.out, make_manifest(spec, records))
            print("wrote {} samples in {} shards to {}".format(sum(r["records"] for r in records), len(records),
                                                                args.out))
        else:
            print("shard job {}/{} done: {} shards in {}; run 'python -m conductivity_tf.dataset merge {}' when every "
                  "job has finished".format(shard[0], shard[1], len(records), args.out, args.out))
        return 0
    if args.command == "merge":
        manifest = merge_parts(args.out)
        print("merged {} shards ({} samples) into {}".format(len(manifest["shards"]), manifest["samples"],
                                                               os.path.join(args.out, "manifest.json")))
        return 0
    if args.command == "import":
        manifest = import_volumes(args.volumes, args.out, args.tile, args.stride, load_args=args, seed=args.seed,
                                  progress=not args.quiet)
        print("wrote {} tiles to {}".format(manifest["samples"], args.out))
        return 0
    if args.command == "info":
        manifest = load_manifest(args.path)
        stats = manifest["label_statistics"]
        print("dataset {}: {} samples of {}^3 (train {}, validation {}, test {}) in {} shards, {:.1f} MB".format(
            manifest["path"], manifest["samples"], manifest["sample_size"], manifest["counts"]["train"],
            manifest["counts"]["validation"], manifest["counts"]["test"], len(manifest["shards"]),
            sum(s["bytes"] for s in manifest["shards"]) / 1e6))
        if stats:
            print("  sigma_eff/sigma_0 mean {} (std {}), porosity mean {:.3f}, percolating {:.1%}".format(
                [round(x, 4) for x in stats["relative_conductivity_mean"]],
                [round(x, 4) for x in stats["relative_conductivity_std"]], stats["porosity_mean"],
                stats["percolating_fraction"]))
            print("  families: " + ", ".join("{} {}".format(k, v) for k, v in stats["families"].items()))
        return 0
    if args.command == "verify":
        problems = verify(args.path)
        for problem in problems:
            print("FAILED: " + problem)
        if problems:
            return 1
        print("OK: {} verified (checksums, record counts, labels)".format(args.path))
        return 0
    parser.print_help()
    return 2


def cli():
    run_cli(main)


if __name__ == "__main__":
    cli()
