"""A trained model on disk and back: the SavedModel export, and loading it for prediction.

``export`` writes a run's ``saved_model/`` (signatures ``serving_default``, float32, and ``serving_bfloat16``, and
for a single network whose first convolution reads each block of voxels once, ``serving_blocks_bfloat16``: the
same network fed those blocks, ``stem_blocks``) and ``model.weights.h5``; ``reexport`` writes the SavedModel again
from a run's Keras weights. ``load`` reads a run directory (or its ``saved_model/``) back as callable signatures
with ``tf.saved_model.load``: no pickled Python objects are read. A SavedModel from a newer TensorFlow than the one
here (the shipped model, exported by 2.21, on the SDK's 2.6) is served by the same network rebuilt from the run's
configuration and Keras weights (``keras_signatures``).
"""

import json
import os
import shutil
import types

import numpy as np
from numba import njit, prange

from conductivity_tf import config as config_lib
from conductivity_tf.checkpoints import load_weights
from conductivity_tf.errors import UserError
from conductivity_tf.model import BFLOAT16_SIGNATURE, build_model, inference_copy, members_summary
from conductivity_tf.strategies import native_bfloat16

# the bfloat16 network fed its first convolution's blocks of voxels (``stem_blocks``) and the porosity
BLOCKS_SIGNATURE = "serving_blocks_bfloat16"
_WORDS = {2: np.uint16, 4: np.uint32, 8: np.uint64}      # a row of a block's voxels is one word of these

PRECISIONS = ("auto", "fp32", "bf16")
PRECISION_HELP = ("auto (default): bf16 on CPUs with native bfloat16 (AVX512-BF16 or AMX) when no GPU is visible, "
                  "else fp32; fp32; bf16 (1.65x faster on such CPUs, within about 1e-3 of fp32)")


def resolve_precision(precision, has_bfloat16, tf, saved="the model"):
    """The precision ``--precision`` (auto | fp32 | bf16) comes to: "fp32" or "bf16"."""
    if precision not in PRECISIONS:
        raise UserError("--precision {} is not one of auto, fp32, bf16".format(precision))
    if precision == "bf16":
        from conductivity_tf.keras_compat import cpu_bfloat16_convolutions

        if not cpu_bfloat16_convolutions():
            raise UserError("--precision bf16 needs bfloat16 CPU convolutions, which TensorFlow {} lacks; use "
                            "--precision fp32".format(tf.__version__))
    if precision == "bf16" and not has_bfloat16:
        raise UserError("{} has no bfloat16 signature (it was exported by an older version); use --precision "
                        "fp32, or retrain to export one".format(saved))
    if precision == "auto":
        gpus = tf.config.list_physical_devices("GPU")

        return "bf16" if has_bfloat16 and not gpus and native_bfloat16() else "fp32"
    return precision


def export(base, out, model_cfg, uncertainty_scale=None, weights=True):
    """SavedModel (plain TensorFlow can load and call it) and Keras weights, each written atomically.
    The SavedModel serves inference copies of ``base`` (``model.inference_copy``: batch norms folded
    into the convolutions): signature ``serving_default`` computes in float32, ``serving_bfloat16`` in
    bfloat16 (what ``predict`` picks on CPUs with native bfloat16; not exported by TensorFlow 2.6, which has
    no bfloat16 CPU convolutions). For an ensemble both also return ``uncertainty``: the members' spread times
    ``uncertainty_scale`` (calibrated on the validation split: one standard deviation, so +-1.645 of it is the
    90 % interval). The Keras weights are always the trained model's (written unless ``weights`` is False)."""
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
        if policy == "mixed_bfloat16" and _stem_block(served, model_cfg):
            signatures[BLOCKS_SIGNATURE] = _blocks_function(served, tf)
    target = os.path.join(out, "saved_model")
    staging = target + ".tmp"
    shutil.rmtree(staging, ignore_errors=True)
    tf.saved_model.save(root, staging, signatures=signatures)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(staging, target)
    if weights:
        base.save_weights(os.path.join(out, "model.weights.h5"))


def _stem_block(served, model_cfg):
    """The edge k of the blocks of voxels the first convolution of an inference copy reads, each once (kernel =
    stride = k, in 2, 4 or 8, the cube a whole number of blocks, one input channel, the convolution's output straight
    into its activation), for a single network; None otherwise."""
    if model_cfg.ensemble != 1 or served.input_shape[-1] != 1:
        return None
    k, size = model_cfg.stem_kernel, int(served.input_shape[1])
    conv, act = served.get_layer("level0_conv0"), served.get_layer("level0_act0")
    if k != model_cfg.stem_stride or k not in _WORDS or size % k or act.input is not conv.output:
        return None
    return k


def _blocks_function(served, tf):
    """``served``'s function fed ``stem_blocks``' blocks and the porosity: the first convolution as one matrix
    product over each block's voxels (a convolution with one input channel whose kernel is its stride runs four
    times longer in oneDNN here than the product), the rest of the network as it is. The same arithmetic in
    bfloat16: the same predictions."""
    from conductivity_tf.keras_compat import keras

    conv = served.get_layer("level0_conv0")
    k, size = conv.kernel_size[0], int(served.input_shape[1])
    cells, voxels = size // k, k ** 3
    rest = keras.Model(served.get_layer("level0_act0").input, served.get_layer("fraction").output)
    dtype = conv.compute_dtype

    @tf.function(input_signature=[tf.TensorSpec([None, cells, cells, cells, voxels], tf.uint8, name="blocks"),
                                  tf.TensorSpec([None], tf.float32, name="porosity")])
    def serve(blocks, porosity):
        kernel = tf.cast(tf.reshape(conv.kernel, [voxels, conv.filters]), dtype)
        z = tf.matmul(tf.reshape(tf.cast(blocks, dtype), [-1, voxels]), kernel) + tf.cast(conv.bias, dtype)
        fraction = rest(tf.reshape(z, [-1, cells, cells, cells, conv.filters]), training=False)
        return {"relative_conductivity": fraction * porosity[:, None]}

    return serve


def blocks_signature(module, size):
    """(the loaded SavedModel's ``BLOCKS_SIGNATURE``, the edge of its blocks) for cubes of edge ``size``; (None, None)
    where it has none."""
    if BLOCKS_SIGNATURE not in module.signatures:
        return None, None
    signature = module.signatures[BLOCKS_SIGNATURE]
    return signature, size // int(signature.structured_input_signature[1]["blocks"].shape[1])


def run_blocks(signature, volumes, k, tf):
    """``blocks_signature``'s outputs for an (N, n, n, n) batch of 0/1 uint8 volumes."""
    blocks, ones = stem_blocks(volumes, k)
    porosity = (ones / float(np.prod(volumes.shape[1:]))).astype(np.float32)
    return signature(blocks=tf.constant(blocks), porosity=tf.constant(porosity))


def stem_blocks(volumes, k):
    """(blocks (N, n/k, n/k, n/k, k^3) uint8, conducting voxels (N,)) of an (N, n, n, n) batch of 0/1 volumes: each
    block of k^3 voxels as one row, its voxel (i, j, l) at (i k + j) k + l, as the first convolution's kernel
    reshaped; what ``BLOCKS_SIGNATURE`` takes. The volumes spread over numba's threads."""
    volumes = np.ascontiguousarray(volumes, dtype=np.uint8)
    words = volumes.view(_WORDS[k])
    blocks, ones = _stem_blocks(words, volumes.shape[1] // k, k, np.uint64(int("01" * k, 16)), np.uint64(8 * k - 8))
    return blocks.view(np.uint8), ones


@njit(parallel=True, cache=True)
def _stem_blocks(words, cells, k, spread, shift):
    """Each row of a block's voxels is one word (k bytes) of the volume's row and of the block's: words are
    copied, and each word's bytes summed in its top byte by a product."""
    n = words.shape[0]
    out = np.empty((n, cells, cells, cells, k * k), words.dtype)
    ones = np.zeros(n, np.int64)
    for b in prange(n):
        total = np.uint64(0)
        for i in range(cells):
            for di in range(k):
                for j in range(cells):
                    for dj in range(k):
                        row = words[b, i * k + di, j * k + dj]
                        q = di * k + dj
                        for c in range(cells):
                            w = row[c]
                            out[b, i, j, c, q] = w
                            total += ((np.uint64(w) * spread) >> shift) & np.uint64(0xFF)
        ones[b] = total
    return out, ones


def reexport(run_dir):
    """Write a run's SavedModel again from its Keras weights and configuration (its signatures as this version
    exports them; the weights are left as they are)."""
    base, cfg = _keras_base(os.path.join(run_dir, "config.yaml"), os.path.join(run_dir, "model.weights.h5"))
    export(base, run_dir, cfg.model, _calibration_scale(run_dir), weights=False)


def keras_model(config_path, weights_path):
    """(the run's network rebuilt from its configuration and Keras weights, batch norms folded as in the export;
    the uncertainty scale an ensemble was calibrated with, 1.0 otherwise). Build it inside a strategy's scope to
    spread predictions over its replicas."""
    base, cfg = _keras_base(config_path, weights_path)
    return inference_copy(base, cfg.model), float(_calibration_scale(os.path.dirname(config_path)) or 1.0)


def _keras_base(config_path, weights_path):
    """(the run's network built from its configuration with its Keras weights, the configuration)."""
    cfg = config_lib.load_config(config_path)
    base = build_model(cfg.model, cfg.data.size, len(cfg.data.axes))
    try:
        load_weights(base, weights_path)
    except Exception as err:  # h5py, a mismatched layer, ...
        raise UserError("cannot load the Keras weights {} ({}); they are damaged or from another model".format(
            weights_path, str(err).splitlines()[0][:160] if str(err) else type(err).__name__))
    return base, cfg


def _calibration_scale(run_dir):
    """An ensemble's calibration scale, as the export bakes it into the SavedModel (None when the run has none)."""
    metrics_path = os.path.join(run_dir, "metrics.json")
    if os.path.isfile(metrics_path):
        with open(metrics_path) as handle:
            return json.load(handle).get("calibration", {}).get("scale")
    return None


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


def saved_model_dir(model_dir):
    """The SavedModel's directory of a run directory (its ``saved_model/``) or of a SavedModel's own directory; the
    run's files (config.yaml, the trust files) lie in its parent."""
    saved = os.path.join(model_dir, "saved_model")
    return saved if os.path.isdir(saved) else model_dir


def load(model_dir, default_dir=None):
    """A run directory (or its ``saved_model/``) as a ``types.SimpleNamespace``: ``module`` (with ``signatures``),
    ``saved`` (the SavedModel's directory), ``config_path`` (the run's config.yaml, which may be absent) and
    ``note`` (what a caller should know about how the model was loaded; None when loaded as exported)."""
    saved = saved_model_dir(model_dir)
    if not os.path.isfile(os.path.join(saved, "saved_model.pb")):   # said before TensorFlow is imported
        if model_dir == default_dir:
            raise UserError("no pretrained model is installed with this copy of conductivity_tf; give --model "
                            "RUN_DIR (a directory written by python -m conductivity_tf.train)")
        raise UserError("{} is not a run directory or SavedModel (no saved_model.pb); give the --out directory "
                        "of a training run".format(model_dir))
    from conductivity_tf.keras_compat import tf

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
