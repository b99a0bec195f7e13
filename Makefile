# Two commands do everything on a fresh machine: `make demo` and `make test`.
# Each creates the virtual environment on first use and reinstalls when pyproject.toml changes.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch is installed first and on its own: 2.13.0 is the CPU wheel on the project's machines (fast set-up).
# On a CUDA machine pass the build you want, e.g. `make test TORCH_SPEC=torch`.
TORCH_SPEC ?= torch==2.13.0
PARAMS ?= params/demo.yaml
STAMP := $(VENV)/.installed

.PHONY: setup bench-setup demo demo-encoder test lab lint docs clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[dev,all,docs]"
	touch $(STAMP)

setup: $(STAMP)

# Benchmarks' peers (pyproject's `bench` extra); dictionary-learning without its language-model dependencies.
bench-setup: setup
	$(BIN)/python -m pip install --quiet -e ".[dev,all,docs,bench]"
	$(BIN)/python -m pip install --quiet --no-deps "dictionary-learning==0.1.0"

demo: setup
	$(BIN)/python -m corelib run $(PARAMS)

# Remake the demo's bundled, pretrained scVI (corelib/datasets/pretrained/pbmc3k_scvi, about 2 min on 2 cores):
# the recipe of corelib.encoders.pretrained.DEMO_RECIPE; tests/test_pretrained.py checks that it reproduces it.
demo-encoder: setup
	$(BIN)/python -m corelib pretrain-demo corelib/datasets/pretrained/pbmc3k_scvi

test: setup
	$(BIN)/python -m pytest

# JupyterLab at the repository root (runs/ and notebooks/ both in its file browser), opening notebook 06 on the
# run `make demo` made; a notebook run by hand finds runs/<run_name> from there too (corelib.runs.by_hand).
lab: setup
	$(BIN)/jupyter lab --ServerApp.default_url=/lab/tree/notebooks/06_concept_explorer.ipynb

# The API reference, from the docstrings (pdoc): docs/api/index.html. tests/test_docs.py builds it too.
docs: setup
	$(BIN)/pdoc --docformat numpy -o docs/api corelib

lint: setup
	$(BIN)/ruff check corelib tests benchmarks notebooks
	$(BIN)/ruff format --check corelib tests benchmarks notebooks

clean:
	rm -rf runs
