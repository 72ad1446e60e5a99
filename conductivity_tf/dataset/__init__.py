"""Datasets of labelled microstructures: build, import, merge, combine, inspect, verify, and read.

``spec`` (what to build, sample i) -> ``records`` (a sample's bytes, shard files) -> ``build`` (workers, shards,
import of tomograms) -> ``manifest`` (manifest.json, opening and checking) -> ``reader`` (numpy, tf.data);
``cli`` is ``python -m conductivity_tf.dataset``. Everything a caller needs is importable from here.

Layout of a dataset directory::

    manifest.json                    schema version, sample size, counts, shards (sha256, records),
                                     label statistics, the split rule, the build specification
    train-00000.tfrecord.gz ...      gzip-compressed TFRecord shards, one tf.train.Example per sample
    validation-00000.tfrecord.gz ...
    test-00000.tfrecord.gz ...
    train-00000.tfrecord.gz.json     per-shard record (written after the shard: marks it complete)

A combined dataset (``combine``) is a manifest alone, listing other datasets' shards by relative paths.

A record (``records.py``) holds the packed volume, its labels on three axes and where it came from.

Determinism: sample i is made from ``numpy.random.default_rng([seed, i])`` only, and its split too, so
any division of the work into worker processes or ``--shard I/N`` jobs writes the same bytes (gzip with
mtime 0, protobuf serialised deterministically). A shard is written under a temporary name and renamed;
its ``.json`` record is written after it; re-running an interrupted build keeps the shards that have
their record and redoes the rest.

Reading needs TensorFlow only for ``make_dataset`` (tf.data); ``iterate`` gives numpy arrays and
metadata without it.
"""

from conductivity_tf.dataset.build import import_volumes, merge_parts, plan_shards, run_build
from conductivity_tf.dataset.manifest import (
                                              SCHEMA_VERSION,
                                              SPLITS,
                                              check_shards,
                                              combine,
                                              load_manifest,
                                              make_manifest,
                                              shard_paths,
                                              write_manifest,
)
from conductivity_tf.dataset.reader import (
                                              PERMUTATIONS,
                                              allowed_permutations,
                                              iterate,
                                              load_arrays,
                                              make_dataset,
                                              verify,
)
from conductivity_tf.dataset.records import SUFFIX, deserialize, read_records, serialize, sha256, write_shard
from conductivity_tf.dataset.spec import BuildSpec, FamilySpec, load_build_spec, make_sample, spec_to_dict, split_of

__all__ = ["BuildSpec", "FamilySpec", "PERMUTATIONS", "SCHEMA_VERSION", "SPLITS", "SUFFIX", "allowed_permutations",
           "check_shards", "combine", "deserialize", "import_volumes", "iterate", "load_arrays", "load_build_spec",
           "load_manifest", "make_dataset", "make_manifest", "make_sample", "merge_parts", "plan_shards",
           "read_records", "run_build", "serialize", "sha256", "shard_paths", "spec_to_dict", "split_of", "verify",
           "write_manifest", "write_shard"]
