"""The package must run on the Graphcore SDK's Python 3.8 and stay light to import."""

import os
import shutil
import subprocess
import sys

import pytest

from tests.conftest import ROOT

PACKAGE = os.path.join(ROOT, "conductivity_tf")


def _tool(name):
    path = os.path.join(os.path.dirname(sys.executable), name)
    if os.path.exists(path):
        return path
    found = shutil.which(name)
    if not found:
        pytest.skip("{} is not installed (pip install -e .[dev])".format(name))
    return found


def test_vermin_finds_nothing_newer_than_python_3_8():
    proc = subprocess.run([_tool("vermin"), "--no-tips", "--violations", "-t=3.8-",
                           PACKAGE], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_ruff_is_clean():
    proc = subprocess.run([_tool("ruff"), "check", PACKAGE, os.path.join(ROOT, "tests")],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("module", ["conductivity_tf", "conductivity_tf.physics", "conductivity_tf.microstructure",
                                    "conductivity_tf.volumes", "conductivity_tf.config"])
def test_light_modules_do_not_import_tensorflow(module):
    code = "import sys, {m}; assert 'tensorflow' not in sys.modules, 'tensorflow imported'".format(m=module)
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("inherited", ["", "0"])
def test_keras_compat_gives_the_keras_2_api(inherited):
    code = ("import conductivity_tf.keras_compat as k; "
            "print(k.KERAS_VERSION, k.IS_KERAS_3, hasattr(k.keras.optimizers, 'legacy'))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          env=dict(os.environ, TF_USE_LEGACY_KERAS=inherited))
    if proc.returncode and "No module named 'tensorflow'" in proc.stderr:
        pytest.skip("TensorFlow is not installed (pip install -e .[cpu])")
    assert proc.returncode == 0, proc.stderr
    version, is3, _ = proc.stdout.split()
    assert version.startswith("2.") and is3 == "False"


def test_no_unsafe_deserialisation_of_user_files():
    """User files are read as data only: no pickle, no yaml.load without a safe loader, no Keras unsafe mode."""
    import re

    package = os.path.join(ROOT, "conductivity_tf")
    forbidden = [r"\bimport pickle\b", r"\bpickle\.load", r"allow_pickle\s*=\s*True", r"yaml\.load\(",
                 r"yaml\.unsafe_load", r"safe_mode\s*=\s*False", r"\beval\(", r"\bexec\(", r"marshal\.loads"]
    hits = []
    for name in sorted(os.listdir(package)):
        if name.endswith(".py"):
            with open(os.path.join(package, name)) as handle:
                for number, line in enumerate(handle, 1):
                    hits += ["{}:{}: {}".format(name, number, line.strip()) for pattern in forbidden
                             if re.search(pattern, line)]
    assert not hits, hits
