"""A trained model on disk and back: the SavedModel export, and loading it for prediction.

``export`` writes a run's ``saved_model/`` (signatures ``serving_default``, float32, and ``serving_bfloat16``) and
``model.weights.h5``. ``load`` reads a run directory (or its ``saved_model/``) back as callable signatures with
``tf.saved_model.load``: no pickled Python objects are read. A SavedModel from a newer TensorFlow than the one
here (the shipped model, exported by 2.21, on the SDK's 2.6) is served by the same network rebuilt from the run's
configuration and Keras weights (``keras_signatures``).
"""

import json
import os
import shutil
import types

from conductivity_tf import config as config_lib
from conductivity_tf.checkpoints import load_weights
from conductivity_tf.errors import UserError
from conductivity_tf.model import BFLOAT16_SIGNATURE, build_model, inference_copy, members_summary


def export(base, out, model_cfg, uncertainty_scale=None):
    """SavedModel (plain TensorFlow can load and call it) and Keras weights, each written atomically.
    The SavedModel serves inference copies of ``base`` (``model.inference_copy``: batch norms folded
    into the convolutions): signature ``serving_default`` computes in float32, ``serving_bfloat16`` in
    bfloat16 (what ``predict`` picks on CPUs with native bfloat16; not exported by TensorFlow 2.6, which has
    no bfloat16 CPU convolutions). For an ensemble both also return ``uncertainty``: the members' spread times
    ``uncertainty_scale`` (calibrated on the validation split: one standard deviation, so +-1.645 of it is the
    90 % interval). The Keras weights are always the trained model's."""
    from conductivity_tf.keras_compat import cpu_bfloat16_convolutions, tf

    spec = tf.TensorSpec([None] + list(base.input_shape[1:]), tf.float32, name="volume")
    root = tf.Module()
    root.uncertainty_scale = tf.Variable(float(uncertainty_scale or 1.0), trainable=False, name="uncertainty_scale")
    signatures = {}

    def serving_function(served):
        @tf.function(input_signature=[spec])
        def serve(volume):
            mean, spread = members_summary(tf, served(volume, training=False))
            if spread is None:
                return {"relative_conductivity": mean}
            return {"relative_conductivity": mean, "uncertainty": spread * root.uncertainty_scale}
        return serve

    exported = [("serving_default", "float32")]
    if cpu_bfloat16_convolutions():  # TensorFlow 2.6 cannot run (so cannot trace) bfloat16 convolutions on CPUs
        exported.append((BFLOAT16_SIGNATURE, "mixed_bfloat16"))
    for signature, policy in exported:
        served = inference_copy(base, model_cfg, policy=policy)
        setattr(root, policy, served)          # tracked: the copy's variables are saved with the root
        signatures[signature] = serving_function(served)
    target = os.path.join(out, "saved_model")
    staging = target + ".tmp"
    shutil.rmtree(staging, ignore_errors=True)
    tf.saved_model.save(root, staging, signatures=signatures)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(staging, target)
    base.save_weights(os.path.join(out, "model.weights.h5"))



def keras_model(config_path, weights_path):
    """(the run's network rebuilt from its configuration and Keras weights, batch norms folded as in the export;
    the uncertainty scale an ensemble was calibrated with, 1.0 otherwise). Build it inside a strategy's scope to
    spread predictions over its replicas."""
    cfg = config_lib.load_config(config_path)
    base = build_model(cfg.model, cfg.data.size, len(cfg.data.axes))
    try:
        load_weights(base, weights_path)
    except Exception as err:  # h5py, a mismatched layer, ...
        raise UserError("cannot load the Keras weights {} ({}); they are damaged or from another model".format(
            weights_path, str(err).splitlines()[0][:160] if str(err) else type(err).__name__))
    metrics_path = os.path.join(os.path.dirname(config_path), "metrics.json")
    scale = 1.0
    if os.path.isfile(metrics_path):  # an ensemble's calibration, as the export bakes it into the SavedModel
        with open(metrics_path) as handle:
            scale = float(json.load(handle).get("calibration", {}).get("scale", 1.0))
    return inference_copy(base, cfg.model), scale


def keras_signatures(config_path, weights_path):
    """An object with a ``signatures`` dict like a loaded SavedModel's (``serving_default``, float32): the network
    of ``keras_model``."""
    from conductivity_tf.keras_compat import tf

    served, scale = keras_model(config_path, weights_path)

    @tf.function(input_signature=[tf.TensorSpec([None] + list(served.input_shape[1:]), tf.float32, name="volume")])
    def serve(volume):
        mean, spread = members_summary(tf, served(volume, training=False))
        if spread is None:
            return {"relative_conductivity": mean}
        return {"relative_conductivity": mean, "uncertainty": spread * scale}

    return types.SimpleNamespace(signatures={"serving_default": serve.get_concrete_function()}, model=served)


def load(model_dir, default_dir=None):
    """A run directory (or its ``saved_model/``) as a ``types.SimpleNamespace``: ``module`` (with ``signatures``),
    ``saved`` (the SavedModel's directory), ``config_path`` (the run's config.yaml, which may be absent) and
    ``note`` (what a caller should know about how the model was loaded; None when loaded as exported)."""
    from conductivity_tf.keras_compat import tf

    saved = os.path.join(model_dir, "saved_model")
    if not os.path.isdir(saved):
        saved = model_dir
    if not os.path.isfile(os.path.join(saved, "saved_model.pb")):
        if model_dir == default_dir:
            raise UserError("no pretrained model is installed with this copy of conductivity_tf; give --model "
                            "RUN_DIR (a directory written by python -m conductivity_tf.train)")
        raise UserError("{} is not a run directory or SavedModel (no saved_model.pb); give the --out directory "
                        "of a training run".format(model_dir))
    config_path = os.path.join(os.path.dirname(saved), "config.yaml")
    note = None
    try:
        module = tf.saved_model.load(saved)
    except Exception as err:  # any load failure means the directory is damaged, not ours, or from a newer TF
        reason = str(err).splitlines()[0][:200]
        weights = os.path.join(os.path.dirname(saved), "model.weights.h5")
        if "Op type not registered" not in reason or not os.path.isfile(weights) or not os.path.isfile(
                config_path):
            raise UserError("cannot load the SavedModel in {} ({}); it is damaged or incomplete: re-export or "
                            "retrain".format(saved, reason))
        # written by a newer TensorFlow (e.g. the shipped model, exported by 2.21, on the SDK's 2.6): the same
        # network, rebuilt from the run's configuration and Keras weights, in float32
        module = keras_signatures(config_path, weights)
        note = ("the SavedModel in {} needs a newer TensorFlow than {} ({}); predicting with the run's Keras weights "
                "instead (float32)".format(saved, tf.__version__, reason.split(" in binary")[0]))
    return types.SimpleNamespace(module=module, saved=saved, config_path=config_path, note=note)
