"""What the fault tests share: the tiny training run, and running it under a killer that SIGKILLs it at one
precise moment."""

import os
import signal
import subprocess
import sys
import textwrap

from tests.conftest import ROOT

ARGS = ["model.widths=[4,8]", "model.head_units=8", "data.size=16", "train.batch_size=8", "train.epochs=4",
        "train.tensorboard=false", "train.deterministic=true", "train.seed=3"]

# Runs the real training command in a real process and SIGKILLs that process at one precise moment:
#   batch:E:B   after batch B of epoch E (mid-epoch)
#   save:NAME:N while the N-th save of checkpoint NAME is on disk under its temporary name (checkpoint writing)
#   epoch:E     when epoch E begins, every callback of epoch E-1 having run (between epochs)
KILLER = textwrap.dedent("""
    import contextlib, os, signal, sys
    from conductivity_tf import fileio, train
    from conductivity_tf.keras_compat import keras

    spec = sys.argv[1].split(":")

    def die():
        sys.stdout.flush()
        os.kill(os.getpid(), signal.SIGKILL)

    if spec[0] == "save":
        real, seen = fileio.atomic_path, [0]

        @contextlib.contextmanager
        def atomic_path(path, suffix=".tmp"):
            with real(path, suffix) as tmp:
                yield tmp
                if os.path.basename(path) == spec[1]:
                    seen[0] += 1
                    if seen[0] == int(spec[2]):
                        assert os.path.getsize(tmp) > 0
                        die()
        fileio.atomic_path = atomic_path
    else:
        class Killer(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                self.epoch = epoch
                if spec[0] == "epoch" and epoch == int(spec[1]):
                    die()

            def on_train_batch_end(self, batch, logs=None):
                if spec[0] == "batch" and self.epoch == int(spec[1]) and batch == int(spec[2]):
                    die()

        fit = keras.Model.fit

        def killing_fit(self, *args, **kwargs):
            kwargs["callbacks"] = [Killer()] + list(kwargs.get("callbacks") or [])
            return fit(self, *args, **kwargs)
        keras.Model.fit = killing_fit
    train.main(sys.argv[2:])
""")


def env():
    return dict(os.environ, PYTHONPATH=ROOT)


def kill_at(moment, command):
    """Run the training command under KILLER; it must end by SIGKILL at ``moment``."""
    proc = subprocess.run([sys.executable, "-c", KILLER, moment] + command, cwd=ROOT, env=env(),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == -signal.SIGKILL, (moment, proc.returncode, proc.stderr[-2000:])
