# Two commands for a newcomer:  make train  and  make test.
# Both create .venv if needed and install the package with pinned versions (constraints.txt):
# the [gpu] extra when an NVIDIA GPU is visible, otherwise [cpu]; plus [dev].

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
HAS_GPU := $(shell nvidia-smi -L >/dev/null 2>&1 && echo yes)
EXTRAS ?= $(if $(HAS_GPU),gpu,cpu),dev
comma := ,
STAMP := $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))
PYTEST_ARGS ?=
ARGS ?=

.PHONY: install train test lint clean-venv

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): setup.cfg pyproject.toml constraints.txt | $(PY)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e ".[$(EXTRAS)]"
	rm -f $(VENV)/.installed-*
	touch $@

install: $(STAMP)

# The main job on the embedded default (configs/default.yaml: the small dataset in data/, best hardware found).
train: install
	$(PY) -m conductivity_tf.train $(ARGS)

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

lint: install
	$(PY) -m ruff check conductivity_tf tests
	$(dir $(PY))vermin --no-tips --violations -t=3.8- conductivity_tf

clean-venv:
	rm -rf $(VENV)
