"""What differs between the Keras 2 versions the project runs on (tf-keras 2.21; Keras 2.6 of Graphcore's SDK,
run here by the Python 3.8 / TensorFlow 2.6.3 leg of ``make test``): each shim does the right thing on both."""

import numpy as np
import pytest

from conductivity_tf import keras_compat
from conductivity_tf.keras_compat import keras, tf
from tests.conftest import assert_one_line_error, run_module

TINY = ["model.widths=[4,8]", "model.head_units=8", "train.epochs=1", "train.tensorboard=false"]


def _weights(seed):
    keras_compat.set_random_seed(seed)
    model = keras.Sequential([keras.layers.Dense(4, input_shape=(3,))])
    return model.get_weights()[0], np.random.random(), float(tf.random.uniform([]))


def test_set_random_seed_seeds_keras_numpy_and_tensorflow():
    # keras.utils.set_random_seed arrived in TensorFlow 2.7: the SDK's Keras 2.6 has none
    first, again, other = _weights(3), _weights(3), _weights(4)
    assert np.array_equal(first[0], again[0]) and first[1:] == again[1:]
    assert not np.array_equal(first[0], other[0]) and first[1] != other[1]


def test_compile_options_are_accepted_by_this_kerass_compile():
    # Keras 2.6's compile raises TypeError for jit_compile (keras/engine/training.py, _validate_compile)
    model = keras.Sequential([keras.layers.Dense(1, input_shape=(3,))])
    model.compile(optimizer="sgd", loss="mse", steps_per_execution=2, **keras_compat.compile_options(False))
    model.fit(np.ones((4, 3), "float32"), np.ones((4, 1), "float32"), epochs=1, verbose=0)


@pytest.mark.skipif("jit_compile" in __import__("inspect").signature(keras.Model.compile).parameters,
                    reason="this Keras compiles with XLA on request (Keras >= 2.8)")
def test_xla_on_a_keras_without_jit_compile_is_one_line(tmp_path):
    proc = run_module("conductivity_tf.train", *TINY, "train.xla=true", "--out", tmp_path / "run")
    assert_one_line_error(proc, "train.xla=true needs Keras >= 2.8", keras_compat.KERAS_VERSION)


def test_bfloat16_convolutions_are_reported_as_this_tensorflow_runs_them():
    try:
        with tf.device("/cpu:0"):
            tf.nn.conv3d(tf.ones([1, 2, 2, 2, 1], tf.bfloat16), tf.ones([1, 1, 1, 1, 1], tf.bfloat16),
                         [1, 1, 1, 1, 1], "SAME").numpy()
        runs = True
    except tf.errors.OpError:
        runs = False
    assert keras_compat.cpu_bfloat16_convolutions() is runs
