import os
import subprocess
import sys

import pytest

# the whole test process uses the Keras 2 API, as every entry point does (see keras_compat)
os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# With the files spread over worker processes, each worker (and each process a test starts) gets its share of the
# cores for the solver's numba threads and TensorFlow's threads within an op: without it two workers' threads
# outnumber the cores and the solver's parallel loops wait at their barriers for a thread that is not running
# (a whole-volume test took 123 s beside another worker, 12 s alone).
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    _SHARE = str(max(1, (os.cpu_count() or 1) // _WORKERS))
    os.environ.setdefault("NUMBA_NUM_THREADS", _SHARE)
    os.environ.setdefault("TF_NUM_INTRAOP_THREADS", _SHARE)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATA = os.path.join(os.path.dirname(ROOT), "shared", "data")


def _env():
    """This environment with the checkout first on PYTHONPATH: what a process a test starts runs under."""
    return dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))


def pytest_configure(config):
    """Before any test worker starts (in the controller, or the only process): the solver's numba kernels compiled
    and cached, one process per kernel path side by side. Otherwise on a fresh checkout every worker, and every
    process a test starts, compiles the same kernels at once (about a minute each on one core)."""
    if hasattr(config, "workerinput"):
        return
    code = "import sys; from conductivity_tf import kernels; kernels.compile_kernels([sys.argv[1]])"
    procs = [subprocess.Popen([sys.executable, "-c", code, path], cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True) for path in ("general", "binary")]
    for proc in procs:
        _, err = proc.communicate()
        if proc.returncode:
            raise pytest.UsageError("compiling the solver's kernels failed:\n" + err[-2000:])


# The test files that take longest (chains of TensorFlow processes, trained runs shared by a file's tests), longest
# first: the workers take files in collection order, so these start first and the last files to finish are short.
SLOW_FILES = ["test_trust.py", "test_train.py", "test_faults.py", "test_benchmark.py", "test_pipeline_plan.py",
              "test_notebooks.py", "test_dataset.py", "test_bad_input.py", "test_damaged_runs.py", "test_strategies.py",
              "test_ipu.py", "test_whole_volume.py"]


def pytest_collection_modifyitems(session, config, items):
    def rank(item):
        name = os.path.basename(str(item.fspath))
        return SLOW_FILES.index(name) if name in SLOW_FILES else len(SLOW_FILES)

    items.sort(key=rank)  # stable: a file's tests keep their order


def run_module(module, *args, cwd=None, timeout=600, env=None):
    """Run ``python -m module args`` in a fresh process; return the CompletedProcess (text)."""
    full_env = _env()
    if env:
        full_env.update(env)
    return subprocess.run([sys.executable, "-m", module] + [str(a) for a in args], cwd=cwd or ROOT,
                          capture_output=True, text=True, timeout=timeout, env=full_env)


def build_dataset(out, samples, size, seed, shard_size=16):
    """A small dataset built by the real command; returns its path."""
    proc = run_module("conductivity_tf.dataset", "build", "--out", out, "--samples", samples, "--size", size,
                      "--seed", seed, "--quiet", "shard_size={}".format(shard_size))
    assert proc.returncode == 0, proc.stderr
    return str(out)


def assert_one_line_error(proc, *fragments):
    """Exit status 2, exactly one line on stderr containing every fragment, no traceback."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


@pytest.fixture
def shared_data():
    if not os.path.isdir(SHARED_DATA):
        pytest.skip("the third-party validation volumes (../shared/data) are not beside this checkout")
    return SHARED_DATA


def _group_norm_available():
    from conductivity_tf.keras_compat import keras

    if hasattr(keras.layers, "GroupNormalization"):
        return True
    try:
        import ipu_tensorflow_addons  # noqa: F401  (the SDK's GroupNorm)
    except ImportError:
        return False
    return True


# Keras 2.6 (the SDK's TensorFlow without the SDK) has neither keras.layers.GroupNormalization nor Graphcore's GroupNorm
needs_group_norm = pytest.mark.skipif(
    not _group_norm_available(),
    reason="model.norm=group needs keras.layers.GroupNormalization (TensorFlow >= 2.11) or ipu_tensorflow_addons")


# the fault tests' dataset and uninterrupted run (tests.fault_runs), made once per test module that asks
@pytest.fixture(scope="module")
def data16(tmp_path_factory):
    return build_dataset(tmp_path_factory.mktemp("faults") / "d16", samples=144, size=16, seed=5)


@pytest.fixture(scope="module")
def reference_run(data16, tmp_path_factory):
    from tests.fault_runs import ARGS

    out = str(tmp_path_factory.mktemp("faults") / "uninterrupted")
    proc = run_module("conductivity_tf.train", "data.path=" + data16, *ARGS, "--out", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out
