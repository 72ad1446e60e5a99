"""Reading a dataset: verifying it, numpy arrays without TensorFlow (``iterate``, ``load_arrays``), and the
``tf.data`` input pipeline training reads (``make_dataset``)."""

import os

import numpy as np

from conductivity_tf.dataset.manifest import check_shards, load_manifest, shard_paths
from conductivity_tf.dataset.records import deserialize, read_records
from conductivity_tf.errors import UserError
from conductivity_tf.physics import spanning_channels


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
                 epochs=None, inputs="volume"):
    """A ``tf.data.Dataset`` of (volume float32 (S, S, S, 1), sigma float32 (len(axes),)) batches; with
    ``inputs`` "spanning" (``model.inputs``) the volumes are (S, S, S, 4), ``physics.spanning_channels`` of each
    sample after its symmetry.

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
        # kept as uint8 through the cache and the shuffle buffer (a quarter of float32's memory), cast to
        # float32 per sample after them
        volume = tf.reshape(tf.reshape(bits, [-1])[: size ** 3], [size, size, size])  # packbits pads to bytes
        return volume, parsed["relative_conductivity"]

    ds = ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE)
    if cache:
        ds = ds.cache()
    perms = allowed_permutations(axes)

    def symmetry(volume, sigma, key):
        """One of the allowed cube symmetries, drawn from the stateless key (seed, epoch, position)."""
        volume = tf.cast(volume, tf.float32)     # float32 from here (oneDNN has no uint8 transpose on every CPU)
        choice = tf.random.stateless_uniform([], key, 0, len(perms), dtype=tf.int32)
        branches = [(lambda p=p: (tf.transpose(volume, p), tf.gather(sigma, p))) for p in perms]
        volume, sigma = tf.switch_case(choice, branches)
        flips = tf.random.stateless_uniform([3], key + tf.constant([0, 1 << 40], tf.int64), 0, 2, dtype=tf.int32)
        for axis in range(3):
            volume = tf.cond(flips[axis] > 0, lambda a=axis, v=volume: tf.reverse(v, [a]), lambda v=volume: v)
        return volume, sigma

    def finish(volume, sigma):
        if inputs == "spanning":
            channels = tf.numpy_function(spanning_channels, [tf.cast(volume, tf.uint8)], tf.uint8)
            volume = tf.ensure_shape(tf.cast(channels, tf.float32), [size, size, size, 4])
        else:
            volume = tf.ensure_shape(tf.cast(volume, tf.float32)[..., None], [size, size, size, 1])
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
