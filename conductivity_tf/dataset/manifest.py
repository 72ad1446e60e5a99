"""The manifest (manifest.json): schema version, sample size, counts, shards (sha256, records), label statistics,
the split rule and the build specification; opening a dataset and checking its shards against it."""

import json
import math
import os

from conductivity_tf.config import resolve_data_path
from conductivity_tf.dataset.records import sha256
from conductivity_tf.dataset.spec import spec_to_dict
from conductivity_tf.errors import UserError
from conductivity_tf.fileio import check_writable_dir, write_text

SCHEMA_VERSION = 1


SPLITS = ("train", "validation", "test")


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


def _statistics_of(manifests):
    """The label statistics of datasets taken together, from each one's (counts, means, spreads)."""
    stats = [(m["samples"], m["label_statistics"]) for m in manifests if m["samples"] and m["label_statistics"]]
    count = sum(n for n, _ in stats)
    if not count:
        return {}
    mean = [math.fsum(n * st["relative_conductivity_mean"][a] for n, st in stats) / count for a in range(3)]
    square = [math.fsum(n * (st["relative_conductivity_std"][a] ** 2 + st["relative_conductivity_mean"][a] ** 2)
                        for n, st in stats) / count for a in range(3)]
    families = {}
    for _, st in stats:
        for f, c in st["families"].items():
            families[f] = families.get(f, 0) + c
    return {
        "relative_conductivity_mean": mean,
        "relative_conductivity_std": [math.sqrt(max(sq - m * m, 0.0)) for sq, m in zip(square, mean)],
        "relative_conductivity_min": [min(st["relative_conductivity_min"][a] for _, st in stats) for a in range(3)],
        "relative_conductivity_max": [max(st["relative_conductivity_max"][a] for _, st in stats) for a in range(3)],
        "porosity_mean": math.fsum(n * st["porosity_mean"] for n, st in stats) / count,
        "percolating_fraction": math.fsum(n * st["percolating_fraction"] for n, st in stats) / count,
        "families": dict(sorted(families.items())),
    }


def combine(paths, out):
    """One dataset in ``out`` made of the datasets at ``paths``: a manifest listing each one's shards where they
    are (by paths relative to ``out``; nothing is copied), every split the union of theirs, so that training,
    evaluation and calibration read them as one. Their shards are checked (sizes) first; they must hold cubes
    of one edge. Returns the manifest."""
    if len(paths) < 2:
        raise UserError("give at least two datasets to combine")
    manifests = [load_manifest(p) for p in paths]
    sizes = sorted({m["sample_size"] for m in manifests})
    if len(sizes) > 1:
        raise UserError("the datasets hold cubes of different edges ({}); combine datasets of one edge".format(
            ", ".join(map(str, sizes))))
    for m in manifests:
        check_shards(m, checksums=False)
    if os.path.isfile(os.path.join(out, "manifest.json")):
        raise UserError("{} already holds a dataset; choose another --out".format(out))
    shards, offset = [], 0
    for m in manifests:
        for s in m["shards"]:
            source = os.path.join(m["path"], s["file"])
            shards.append(dict(s, file=os.path.relpath(source, out), first_index=s["first_index"] + offset))
        offset += m["samples"]
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "sample_size": sizes[0],
        "samples": offset,
        "counts": {s: sum(m["counts"][s] for m in manifests) for s in SPLITS},
        "shards": shards,
        "label_statistics": _statistics_of(manifests),
        "split_rule": "each combined dataset's own (build.combined_from)",
        "record_format": manifests[0]["record_format"],
        "build": {"combined_from": [{"path": os.path.relpath(m["path"], out), "samples": m["samples"],
                                     "build": m["build"]} for m in manifests]},
    }
    check_writable_dir(out)
    write_manifest(out, manifest)
    return manifest
