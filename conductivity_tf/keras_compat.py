"""The single place that imports TensorFlow and Keras.

The project uses the Keras 2 API: on current TensorFlow that is tf-keras, selected by setting
``TF_USE_LEGACY_KERAS=1`` before TensorFlow is first imported; on Graphcore's SDK (TensorFlow 2.6.3)
``from tensorflow import keras`` is the IPU-enabled Keras 2.6 fork. Keras 3 breaks gradient
accumulation, ``steps_per_execution`` and multi-worker training under ``tf.distribute``.

Every other module does ``from conductivity_tf.keras_compat import tf, keras``.
"""

import contextlib
import os
import sys


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


if "tensorflow" not in sys.modules:
    # forced, not defaulted: an inherited TF_USE_LEGACY_KERAS=0 or empty would silently give Keras 3
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

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


KERAS_VERSION = _keras_version()
IS_KERAS_3 = KERAS_VERSION.split(".")[0] == "3"
if IS_KERAS_3:
    import warnings

    warnings.warn("TensorFlow was imported before conductivity_tf.keras_compat, so Keras {} is active: gradient "
                  "accumulation, steps_per_execution and multi-worker training need the Keras 2 API; import "
                  "conductivity_tf modules before tensorflow, or set TF_USE_LEGACY_KERAS=1".format(KERAS_VERSION),
                  stacklevel=2)

__all__ = ["tf", "keras", "KERAS_VERSION", "IS_KERAS_3"]
