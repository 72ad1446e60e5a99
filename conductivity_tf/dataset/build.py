"""Building a dataset: samples labelled in worker processes into shards, resumable and byte-for-byte
reproducible (``--shard I/N`` jobs merged afterwards), and tomograms cut into labelled tiles.

A shard is written under a temporary name and renamed; its ``.json`` record is written after it; re-running an
interrupted build keeps the shards that have their record and redoes the rest.
"""

import glob
import json
import math
import multiprocessing
import os
import sys

import numba
import numpy as np
from tqdm import tqdm

from conductivity_tf.dataset.manifest import SPLITS, make_manifest, write_manifest
from conductivity_tf.dataset.records import labelled_sample, serialize, sha256, shard_groups, write_shard
from conductivity_tf.dataset.spec import BuildSpec, load_build_spec, make_sample, spec_to_dict, split_of
from conductivity_tf.errors import UserError
from conductivity_tf.fileio import check_writable_dir, write_text
from conductivity_tf.volumes import binary_mask, load_volume, load_volume_from_args, tile


def plan_shards(spec):
    """[(file name, split, [sample indices])] for the whole dataset, in a fixed order."""
    members = {s: [] for s in SPLITS}
    for index in range(spec.samples):
        members[split_of(spec.seed, index, spec)].append(index)
    return [(name, split, idx) for split in SPLITS for name, idx in shard_groups(split, members[split],
                                                                                  spec.shard_size)]


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


def finish_shard(out, name, split, samples):
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
    numba.set_num_threads(1)


def _worker_sample(index):
    return make_sample(_WORKER_SPEC, index)


def _clean_stale_temporaries(out):
    for stale in glob.glob(os.path.join(out, ".*.tmp")):
        os.remove(stale)


def run_build(spec, out, workers=1, shard=None, progress=True):
    """Build (or finish building) the dataset in ``out``; returns the list of shard records."""
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
                done[name] = finish_shard(out, name, split, samples)
    return [done[name] for name, _, _ in shards]


def _check_existing_spec(out, spec):
    path = os.path.join(out, "build-spec.json")
    if os.path.isfile(path):
        with open(path) as handle:
            previous = json.load(handle)
        if previous != json.loads(json.dumps(spec_to_dict(spec))):
            raise UserError("{} holds a dataset built with a different specification; use another --out or "
                            "delete it".format(out))


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


def import_volumes(paths, out, tile_size, stride=None, load_args=None, seed=0, shard_size=256,
                   validation_fraction=0.1, test_fraction=0.1, progress=True):
    """Cut volumes into cubes, label them on three axes and write a dataset like ``build`` does."""
    loaded = [(p, load_volume_from_args(p, load_args) if load_args is not None else load_volume(p)) for p in paths]
    spec = BuildSpec(samples=0, size=tile_size, seed=seed, shard_size=shard_size,
                     validation_fraction=validation_fraction, test_fraction=test_fraction, families={})
    per_split = {s: [] for s in SPLITS}
    index = 0
    tiles = []
    for path, vol in loaded:
        vol.array = binary_mask(vol.array)       # a mask saved as 0/255 (or 0/65535): 1 where white
        if not set(np.unique(vol.array).tolist()) <= {0, 1}:
            raise UserError("{} is not binary; segment it (--otsu / --threshold) or map its phases to 0/1 with "
                            "--phase-map".format(path))
        for origin, cube in tile(vol.array, tile_size, stride):
            tiles.append((path, origin, cube))
    check_writable_dir(out)  # after every input is read and cut: bad input leaves no directory behind
    for path, origin, cube in tqdm(tiles, desc="labelling tiles", unit="tile", disable=not progress):
        sample = labelled_sample(index, cube, "imported", {"file": os.path.basename(path), "origin": list(origin)},
                                 0)
        per_split[split_of(seed, index, spec)].append(sample)
        index += 1
    records = []
    for split in SPLITS:
        for name, samples in shard_groups(split, per_split[split], shard_size):
            records.append(finish_shard(out, name, split, samples))
    spec.samples = index
    manifest = make_manifest(spec, records)
    manifest["build"]["imported_from"] = [os.path.basename(p) for p in paths]
    write_manifest(out, manifest)
    return manifest
