"""A run directory's checkpoints and resume state, written so that a kill at any moment leaves a run that resumes
to the same bytes: the CSV log trimmed to the epochs kept, ``last``/``best`` weights written under temporary names
and renamed, the best value so far kept beside them, and every file checked before it is trusted (a damaged one is
a UserError naming it and what to delete)."""

import math
import os
import re

import h5py

from conductivity_tf import fileio  # fileio.atomic_path looked up per call: a test kills a run mid-checkpoint
from conductivity_tf.errors import UserError


def trim_log(path, start):
    """Keep the CSV log's lines of epochs before ``start`` (a resumed run redoes the others)."""
    import csv as csv_lib
    import io


    if not os.path.exists(path):
        return
    with open(path, newline="") as handle:
        rows = list(csv_lib.reader(handle))
    kept = rows[:1] + [r for r in rows[1:] if r and r[0].isdigit() and int(r[0]) < start]
    text = io.StringIO()
    csv_lib.writer(text).writerows(kept)  # the dialect CSVLogger writes
    fileio.write_text(path, text.getvalue())


def checkpoint_callback(keras, directory, monitor, is_chief=True, resuming=False):
    """``last.weights.h5`` after every epoch and ``best.weights.h5`` when ``monitor`` improves, each written
    under a temporary name and renamed (a kill while saving leaves the previous file whole). The best value
    so far is kept in ``best.json``, so a resumed run compares against the same record as an uninterrupted one."""
    import json as json_lib


    state_path = os.path.join(directory, "best.json")

    class Checkpoints(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.best = math.inf
            for name in os.listdir(directory):  # temporaries of a run killed while saving
                if name.startswith(".") and ".tmp" in name:
                    os.remove(os.path.join(directory, name))
            if not resuming:  # a new run: an earlier run's record in this directory does not count
                if os.path.exists(state_path):
                    os.remove(state_path)
                return
            for name in ("best.weights.h5", "last.weights.h5"):
                path = os.path.join(directory, name)
                if os.path.exists(path):
                    check_h5(path)
            if os.path.exists(state_path):
                try:
                    with open(state_path) as handle:
                        self.best = float(json_lib.load(handle)["value"])
                except (ValueError, KeyError, TypeError, OSError):
                    raise UserError("{} is damaged; delete the run directory's checkpoints/ (or the whole run) and "
                                    "train again".format(state_path))

        def _save(self, name):
            if not is_chief:
                # every worker holds the same weights and the chief writes them; the others save the same way
                # (reading batch-norm statistics is a collective under several workers), to a scratch file
                import tempfile

                with tempfile.TemporaryDirectory() as scratch:
                    self.model.save_weights(os.path.join(scratch, name))
                return
            with fileio.atomic_path(os.path.join(directory, name), suffix=".tmp.weights.h5") as tmp:
                self.model.save_weights(tmp)

        def on_epoch_end(self, epoch, logs=None):
            value = (logs or {}).get(monitor)
            if value is not None and value < self.best:
                self.best = float(value)
                self._save("best.weights.h5")
                # every worker keeps the record (the same on all), so resumed workers agree on what to save
                fileio.write_text(state_path, json_lib.dumps({"monitor": monitor, "value": self.best,
                                                              "epoch": epoch + 1}))
            self._save("last.weights.h5")

    return Checkpoints()


def resume_epoch(backup_dir):
    """The epoch a run resumes at from its BackupAndRestore directory (0 when there is none); UserError when
    the backup is damaged."""
    from conductivity_tf.keras_compat import tf

    directory = os.path.join(backup_dir, "chief")
    if not os.path.isdir(directory):
        return 0
    try:
        latest = tf.train.latest_checkpoint(directory)
        if latest is None:
            return 0
        reader = tf.train.load_checkpoint(latest)
        for name in reader.get_variable_to_shape_map():  # every tensor readable: what BackupAndRestore will read
            reader.get_tensor(name)
        names = [n for n in reader.get_variable_to_shape_map() if "ckpt_saved_epoch" in n]
        epoch = int(reader.get_tensor(names[0])) if names else -1
    except (tf.errors.OpError, ValueError, IndexError) as err:
        raise UserError("the resume backup {} is damaged ({}); delete that directory to restart the run from its "
                        "beginning".format(directory, str(err).splitlines()[0][:120]))
    return epoch + 1 if epoch >= 0 else 0


def check_h5(path):
    """UserError naming ``path`` unless it is a readable HDF5 file whose every array can be read."""
    import h5py

    try:
        with h5py.File(path, "r") as handle:
            handle.visititems(lambda name, obj: obj[()] if isinstance(obj, h5py.Dataset) else None)
    except Exception as err:  # OSError, KeyError, ... from a truncated or overwritten file
        raise UserError("checkpoint {} is damaged ({}); delete the run directory's checkpoints/ and backup/ to "
                        "train again from the start".format(path, str(err).splitlines()[0][:120] if str(err) else
                                                           type(err).__name__))


def load_weights(model, path):
    """Set ``model``'s weights from a Keras ``.weights.h5`` file in either layout: Keras 2's (weights by layer
    name: what Keras 2.6 writes) or the one tf-keras >= 2.13 writes for this suffix (``layers/<layer class in
    snake case>[_<n>]/vars/<i>``, the model's layers in order, counted per class), which Keras 2.6 cannot
    read."""
    with h5py.File(path, "r") as handle:
        if "layers" not in handle or "layer_names" in handle.attrs:
            model.load_weights(path)
            return
        seen = {}
        for layer in model.layers:
            if not layer.weights:  # weightless layers (reshapes, pools) are not read: inserting one changes no key
                continue
            kind = re.sub("([a-z])([A-Z])", r"\1_\2", re.sub("(.)([A-Z][a-z]+)", r"\1_\2", type(layer).__name__))
            kind = kind.lower()
            key = kind if kind not in seen else "{}_{}".format(kind, seen[kind])
            seen[kind] = seen.get(kind, 0) + 1
            group = handle["layers"][key]["vars"]
            layer.set_weights([group[str(i)][()] for i in range(len(group))])


def load_weights_checked(model, path):
    """``load_weights(model, path)``; a damaged or foreign file is a UserError naming it."""
    try:
        load_weights(model, path)
    except Exception as err:  # h5py OSError, ValueError for mismatched layers, ...
        raise UserError("cannot load weights {}: {}; it is damaged or from another model (delete it, or give the "
                        "matching configuration)".format(path, str(err).splitlines()[0][:160] if str(err) else
                                                         type(err).__name__))
