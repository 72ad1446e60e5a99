"""The package must run on the Graphcore SDK's Python 3.8 and stay light to import."""

import ast
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


@pytest.mark.parametrize("module", ["conductivity_tf", "conductivity_tf.physics", "conductivity_tf.cell_grid",
                                    "conductivity_tf.microstructure",
                                    "conductivity_tf.volumes", "conductivity_tf.config", "conductivity_tf.dataset",
                                    "conductivity_tf.pipeline_plan", "conductivity_tf.cpu_pipeline",
                                    "conductivity_tf.predict", "conductivity_tf.train", "conductivity_tf.benchmark"])
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


def _project_imports():
    """{module: [(imported module, inside a function?)]} for every module of the package, from its source."""
    graph = {}
    for folder, _, files in os.walk(PACKAGE):
        for name in files:
            if not name.endswith(".py"):
                continue
            path = os.path.join(folder, name)
            module = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".").replace(".__init__", "")
            tree = ast.parse(open(path).read())
            inside = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                      for n in ast.walk(f) if n is not f}
            edges = []
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("conductivity_tf"):
                    targets = [node.module + "." + a.name for a in node.names]
                    targets = [t if os.path.exists(os.path.join(ROOT, *t.split(".")) + ".py") or
                               os.path.isdir(os.path.join(ROOT, *t.split("."))) else node.module for t in targets]
                elif isinstance(node, ast.Import):
                    targets = [a.name for a in node.names if a.name.startswith("conductivity_tf")]
                else:
                    continue
                edges += [(t, id(node) in inside) for t in targets]
            graph[module] = edges
    return graph


def test_project_modules_are_imported_at_module_level_except_keras_compat():
    lazy = sorted("{} imports {} inside a function".format(m, t) for m, edges in _project_imports().items()
                  for t, inner in edges if inner and t != "conductivity_tf.keras_compat")
    assert not lazy, lazy


def test_the_import_graph_has_no_cycle():
    graph = {m: {t for t, _ in edges if t != m} for m, edges in _project_imports().items()}
    for module in graph:  # a package's modules import each other, not the package itself
        graph[module] = {t for t in graph[module] if not module.startswith(t + ".")}
    state, cycles = {}, []

    def visit(module, path):
        state[module] = "open"
        for target in sorted(graph.get(module, ())):
            if state.get(target) == "open":
                cycles.append(path[path.index(target):] + [target] if target in path else path + [target])
            elif target not in state:
                visit(target, path + [target])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, cycles

