"""The single place that imports TensorFlow and Keras.

The project uses the Keras 2 API: on current TensorFlow that is tf-keras, selected by setting
``TF_USE_LEGACY_KERAS=1`` before TensorFlow is first imported; on Graphcore's SDK (TensorFlow 2.6.3)
``from tensorflow import keras`` is the IPU-enabled Keras 2.6 fork. Keras 3 breaks gradient
accumulation, ``steps_per_execution`` and multi-worker training under ``tf.distribute``.

Every other module does ``from conductivity_tf.keras_compat import tf, keras``.
"""

import contextlib
import functools
import inspect
import os
import random
import sys

import numpy as np

from conductivity_tf.errors import UserError


@contextlib.contextmanager
def quiet_native_stderr():
    """Silence C++ log lines (absl logs before TensorFlow's log level applies, CUDA probes on machines
    without a GPU) while TensorFlow starts up, so that a bad input still ends in one clean line.
    TF_CPP_MIN_LOG_LEVEL=0 shows them."""
    if os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2") == "0":
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _installed_tensorflow_version():
    """(major, minor) of the installed TensorFlow from its package metadata, without importing it; None if
    unknown."""
    from importlib import metadata

    for name in ("tensorflow", "tensorflow-cpu", "tensorflow-intel"):
        try:
            return tuple(int(part) for part in metadata.version(name).split(".")[:2])
        except (metadata.PackageNotFoundError, ValueError):
            continue
    return None


if "tensorflow" not in sys.modules:
    # forced, not defaulted: an inherited TF_USE_LEGACY_KERAS=0 or empty would silently give Keras 3
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # oneDNN's CPU kernels: TensorFlow >= 2.9 turns them on by itself only where the CPU has AVX-512 VNNI/BF16 or
    # AMX; elsewhere (AVX2 CPUs) its fallback runs the backward pass of a strided 3-D convolution 20-30x slower
    # (a 16^3 training step 257 ms against 8 ms measured). TensorFlow 2.6 aborts with them on, so it keeps its
    # default. TF_ENABLE_ONEDNN_OPTS=0 chooses the fallback.
    if (_installed_tensorflow_version() or (0,)) >= (2, 9):
        os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

with quiet_native_stderr():
    import tensorflow as tf
    from tensorflow import keras

    tf.config.list_physical_devices()  # device discovery logs its probes here, silenced


def _keras_version():
    version = getattr(keras, "__version__", None)
    if version:
        return version
    name = getattr(keras, "__name__", "")  # tf.keras is a lazy loader that points at a package
    package = "tf_keras" if name.startswith("tf_keras") else "keras" if name.startswith("keras") else None
    if package:
        return __import__(package).__version__
    return "unknown"


TF_VERSION = tuple(int(part) for part in tf.__version__.split(".")[:2])
KERAS_VERSION = _keras_version()
IS_KERAS_3 = KERAS_VERSION.split(".")[0] == "3"
if IS_KERAS_3:
    import warnings

    warnings.warn("TensorFlow was imported before conductivity_tf.keras_compat, so Keras {} is active: gradient "
                  "accumulation, steps_per_execution and multi-worker training need the Keras 2 API; import "
                  "conductivity_tf modules before tensorflow, or set TF_USE_LEGACY_KERAS=1".format(KERAS_VERSION),
                  stacklevel=2)



# ---------------------------------------------------------------------------------------------
# what differs between the Keras 2 versions the project runs on: tf-keras 2.21 and Keras 2.6 (Graphcore's SDK)


def set_random_seed(seed):
    """Seed Python, numpy and TensorFlow (``keras.utils.set_random_seed``, which arrived in TensorFlow 2.7)."""
    if hasattr(keras.utils, "set_random_seed"):
        keras.utils.set_random_seed(seed)
        return
    random.seed(seed)
    np.random.seed(seed)
    tf.random.set_seed(seed)


def enable_op_determinism():
    """Bitwise reproducible runs: ``tf.config.experimental.enable_op_determinism`` (TensorFlow >= 2.8). Before it
    (the SDK's 2.6): the deterministic kernels that ``TF_DETERMINISTIC_OPS`` selects, and one thread within and
    between ops, so that every reduction adds in one order. Call it before TensorFlow runs anything."""
    if hasattr(tf.config.experimental, "enable_op_determinism"):
        tf.config.experimental.enable_op_determinism()
        return
    os.environ["TF_DETERMINISTIC_OPS"] = "1"
    try:
        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:
        raise UserError("train.deterministic=true must be set before TensorFlow runs anything (TensorFlow {} has "
                        "no enable_op_determinism); start a fresh process".format(tf.__version__))


@functools.lru_cache(maxsize=None)
def cpu_bfloat16_convolutions():
    """Whether TensorFlow here has CPU kernels for bfloat16 3-D convolutions (TensorFlow 2.6 has none). Where the
    CPU lacks native bfloat16, oneDNN logs once that it falls back to TensorFlow's own kernels: the probe keeps
    that line quiet."""
    try:
        with tf.device("/cpu:0"), quiet_native_stderr():
            tf.nn.conv3d(tf.zeros([1, 1, 1, 1, 1], tf.bfloat16), tf.zeros([1, 1, 1, 1, 1], tf.bfloat16),
                         [1, 1, 1, 1, 1], "SAME")
        return True
    except (tf.errors.NotFoundError, tf.errors.InvalidArgumentError, tf.errors.UnimplementedError):
        return False


def backup_and_restore(directory):
    """``keras.callbacks.BackupAndRestore`` (``keras.callbacks.experimental.BackupAndRestore`` before Keras 2.8)."""
    callback = getattr(keras.callbacks, "BackupAndRestore", None) or keras.callbacks.experimental.BackupAndRestore
    return callback(directory)


def compile_options(xla):
    """Keyword arguments for ``model.compile`` that turn XLA on or off: ``jit_compile`` where compile takes it
    (Keras >= 2.8; Keras 2.6 raises TypeError for it); UserError when XLA is asked for and compile cannot."""
    if "jit_compile" in inspect.signature(keras.Model.compile).parameters:
        return {"jit_compile": bool(xla)}
    if xla:
        raise UserError("train.xla=true needs Keras >= 2.8 (compile(jit_compile=...)); this is Keras {} (on IPUs "
                        "every step is compiled by XLA anyway): set train.xla=false".format(KERAS_VERSION))
    return {}


__all__ = ["tf", "keras", "TF_VERSION", "KERAS_VERSION", "IS_KERAS_3", "set_random_seed", "enable_op_determinism",
           "backup_and_restore", "compile_options", "cpu_bfloat16_convolutions"]
