"""The sample record and its bytes: a ``tf.train.Example`` per sample, in gzip TFRecord shards.

A record holds ``volume`` (the conducting mask, ``numpy.packbits`` of the C-ordered cube),
``relative_conductivity`` and ``tortuosity`` on axes 0, 1, 2 (tortuosity inf when not percolating),
``porosity``, ``family``, ``params`` (JSON), ``seed`` and ``index``. The codec needs no TensorFlow: the
Example's messages are defined here (same field numbers as TensorFlow's example.proto) and the TFRecord
framing (length, masked CRC-32C) is written and checked here, so the numpy reader works without it.
"""

import gzip
import hashlib
import io
import json
import struct
import zlib

import crc32c
import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from conductivity_tf import physics
from conductivity_tf.errors import UserError
from conductivity_tf.fileio import atomic_path

SUFFIX = ".tfrecord.gz"


def shard_name(split, number):
    """The file name of shard ``number`` of ``split``: ``train-00000.tfrecord.gz``."""
    return "{}-{:05d}{}".format(split, number, SUFFIX)


def shard_groups(split, items, shard_size):
    """[(shard name, items)] cutting ``items`` of ``split`` into shards of ``shard_size``, in order."""
    return [(shard_name(split, k // shard_size), items[k:k + shard_size]) for k in range(0, len(items), shard_size)]


def labelled_sample(index, volume, family, params, seed):
    """A sample record: ``volume`` labelled by ``physics.solve`` on axes 0, 1, 2 (what ``serialize`` writes)."""
    results = physics.solve(volume)
    return {
        "index": index,
        "volume": volume,
        "relative_conductivity": [r.relative_conductivity for r in results],
        "tortuosity": [r.tortuosity for r in results],
        "porosity": float(volume.mean()),
        "family": family,
        "params": params,
        "seed": seed,
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
