# Two commands for a newcomer:  make train  and  make test.
# Both create .venv if needed and install the package with pinned versions (constraints.txt):
# the [gpu] extra when an NVIDIA GPU is visible, otherwise [cpu]; plus [dev].
# make test also builds .venv-sdk, the stack of Graphcore's SDK 3.4 images (Python 3.8, TensorFlow 2.6.3,
# Keras 2.6; constraints-sdk.txt) without the IPU parts, and runs the suite there too. It needs a Python 3.8
# (on PATH as python3.8, or from pyenv); without one that leg is skipped, saying so (REQUIRE_SDK_LEG=1: an error).

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
HAS_GPU := $(shell nvidia-smi -L >/dev/null 2>&1 && echo yes)
EXTRAS ?= $(if $(HAS_GPU),gpu,cpu),dev
comma := ,
STAMP := $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))
PYTEST_ARGS ?=
# test files spread over the cores (pytest-xdist, from [dev]); a file's tests stay in one process, in order
PYTEST_WORKERS ?= -n auto --dist loadfile
ARGS ?=
# the first Python 3.8 that runs: pyenv's, then one on PATH (a pyenv shim for an inactive version does not run)
PYTHON_SDK ?= $(shell for p in $${PYENV_ROOT:-$$HOME/.pyenv}/versions/3.8*/bin/python3.8 $$(command -v python3.8); do \
                "$$p" -c "" 2>/dev/null && echo "$$p" && break; done)
SDK_VENV ?= .venv-sdk
SDK_PY := $(SDK_VENV)/bin/python
SDK_STAMP := $(SDK_VENV)/.installed
REQUIRE_SDK_LEG ?=

.PHONY: install install-sdk kernels kernels-sdk train test test-sdk lint clean-venv

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): setup.cfg pyproject.toml constraints.txt | $(PY)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e ".[$(EXTRAS)]"
	rm -f $(VENV)/.installed-*
	touch $@

install: $(STAMP)

# The main job on the embedded default (configs/train/default.yaml: the small dataset in data/, best hardware found).
train: install
	$(PY) -m conductivity_tf.train $(ARGS)

# Both environments installed and the solver's numba kernels compiled into each (cached beside the sources; a
# few seconds once cached), the two side by side, before either suite starts.
test:
	@$(MAKE) --no-print-directory -j2 kernels kernels-sdk
	$(PY) -m pytest $(PYTEST_WORKERS) $(PYTEST_ARGS)
	@$(MAKE) --no-print-directory test-sdk

KERNELS := -c "from conductivity_tf import kernels; kernels.compile_kernels()"

kernels: install
	$(PY) $(KERNELS)

$(SDK_STAMP): setup.cfg pyproject.toml constraints-sdk.txt
	rm -rf $(SDK_VENV)
	$(PYTHON_SDK) -m venv $(SDK_VENV)
	$(SDK_PY) -m pip install --quiet -c constraints-sdk.txt -e ".[cpu,dev]"
	touch $@

install-sdk:
ifeq ($(PYTHON_SDK),)
	@echo "SDK-like leg skipped: no Python 3.8 here (install one, e.g. pyenv install 3.8, or set PYTHON_SDK=...)"
	@test -z "$(REQUIRE_SDK_LEG)"
else
	@$(MAKE) --no-print-directory $(SDK_STAMP)
endif

kernels-sdk: install-sdk
ifneq ($(PYTHON_SDK),)
	$(SDK_PY) $(KERNELS)
endif

# the same suite on the SDK images' stack; tests that need what TensorFlow 2.6 lacks skip, saying why
test-sdk: install-sdk
ifneq ($(PYTHON_SDK),)
	@echo "SDK-like leg: $$($(SDK_PY) -c 'import sys, tensorflow as tf, keras; print("Python {}, TensorFlow {}, Keras {}".format(sys.version.split()[0], tf.__version__, keras.__version__))' 2>/dev/null)"
	$(SDK_PY) -m pytest -p no:cacheprovider $(PYTEST_WORKERS) $(PYTEST_ARGS)
endif

lint: install
	$(PY) -m ruff check conductivity_tf tests
	$(dir $(PY))vermin --no-tips --violations -t=3.8- conductivity_tf

clean-venv:
	rm -rf $(VENV) $(SDK_VENV)
