# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.mmmo-installed
# Caches stay in the project; nothing is fetched from the model hub.
export HF_HOME := $(CURDIR)/.cache/hf_home
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export RAY_AUTH_MODE := disabled
export MPLBACKEND := Agg

.PHONY: install demo test lint clean

$(PY):
	$(PYTHON) -m venv $(VENV)

install: $(STAMP)

# torch first: where the local CPU build of torch 2.13.0 is on disk, take it; an unpinned torch would pull
# a multi-GB CUDA build. On a GPU box torch is whatever is already installed or the registry's default.
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q --upgrade pip
	@if $(PY) -m pip download -q --no-deps --no-index -d $(VENV)/.probe "torch==2.13.0" >/dev/null 2>&1; then \
		echo "installing the local torch 2.13.0 build"; $(PY) -m pip install -q "torch==2.13.0"; \
	fi; rm -rf $(VENV)/.probe
	$(PY) -m pip install -q -e ".[ray,bench,dev]"
	touch $@

demo: install
	$(VENV)/bin/mmmo demo --dir demo
	$(VENV)/bin/mmmo search configs/demo.yaml

test: install
	$(VENV)/bin/pytest -q

lint: install
	$(VENV)/bin/ruff check src tests benchmarks scripts

clean:
	rm -rf runs demo .cache
