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
export MPLBACKEND := Agg

.PHONY: install demo test test-demo-other-kernel lint clean lock gpu-wheels

$(PY):
	$(PYTHON) -m venv $(VENV)

install: $(STAMP)

# torch first: where the local CPU build of torch 2.13.0 is on disk, take it; an unpinned torch would pull
# a multi-GB CUDA build. On a GPU box torch is whatever is already installed or the registry's default.
$(STAMP): pyproject.toml constraints.txt | $(PY)
	$(PY) -m pip install -q --upgrade pip
	@if $(PY) -m pip download -q --no-deps --no-index -d $(VENV)/.probe "torch==2.13.0" >/dev/null 2>&1; then \
		echo "installing the local torch 2.13.0 build"; $(PY) -m pip install -q "torch==2.13.0"; \
	fi; rm -rf $(VENV)/.probe
	@locked=$$(sed -n 's/.*on Python \([0-9.]*\).*/\1/p' constraints.txt | head -1); \
	mine=$$($(PY) -c 'import sys; print("%d.%d" % sys.version_info[:2])'); \
	if [ "$$locked" = "$$mine" ]; then set -x; $(PY) -m pip install -q -c constraints.txt -e ".[ray,bench,dev]"; \
	else echo "constraints.txt is locked for Python $$locked, this is $$mine: installing within pyproject's ranges"; \
		set -x; $(PY) -m pip install -q -e ".[ray,bench,dev]"; fi
	touch $@

# Re-resolve every dependency to the newest release that pyproject.toml admits, in a throw-away venv, and
# write the result to constraints.txt (what `make install` and CI then use). Run the suite after it.
lock:
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/python -m pip install -q --upgrade pip
	@if .lock-venv/bin/python -m pip download -q --no-deps --no-index -d .lock-venv/.probe "torch==2.13.0" >/dev/null 2>&1; then \
		.lock-venv/bin/python -m pip install -q "torch==2.13.0"; fi
	.lock-venv/bin/python -m pip install -q -e ".[ray,bench,dev]"
	.lock-venv/bin/python -m pip freeze --exclude-editable > .lock-venv/freeze.txt
	{ echo "# Locked versions that CI tested, for \`make install\` (pip -c), on Python $$(.lock-venv/bin/python -c 'import sys; print("%d.%d" % sys.version_info[:2])'): refresh with \`make lock\`."; \
	  echo "# torch is not pinned here: the Makefile installs it first (the local CPU build, or the GPU box's own)."; \
	  grep -v -i -E "^(torch|triton|mmmo)[=@ ]|^nvidia-" .lock-venv/freeze.txt; \
	} > constraints.txt.new && mv constraints.txt.new constraints.txt
	rm -rf .lock-venv

demo: install
	$(VENV)/bin/mmmo demo --dir demo
	$(VENV)/bin/mmmo search configs/demo.yaml

test: install
	$(VENV)/bin/pytest -q

# The claims about the trained demo (pytest -m demo) under another CPU kernel choice than this machine's
# (avx2 on an AVX-512 CPU, else the plain kernels), on a demo built afresh in a temporary folder.
test-demo-other-kernel: install
	@mine=$$($(PY) -c "import torch; print(torch.backends.cpu.get_cpu_capability())"); \
	if [ "$$mine" = "AVX512" ]; then other=avx2; elif [ "$$mine" != "DEFAULT" ]; then other=default; \
	else echo "skipped: this CPU already runs torch's plain kernels (DEFAULT), there is no second choice here"; exit 0; fi; \
	dir=$$(mktemp -d "$${TMPDIR:-/tmp}/mmmo-kernel-check-XXXXXX"); \
	echo "demo claims with ATEN_CPU_CAPABILITY=$$other (this CPU: $$mine), demo built afresh in $$dir"; \
	ATEN_CPU_CAPABILITY=$$other MMMO_DEMO_DIR=$$dir/demo $(VENV)/bin/pytest -q -m demo -p no:cacheprovider; \
	rc=$$?; rm -rf "$$dir"; exit $$rc

lint: install
	$(VENV)/bin/ruff check src tests benchmarks scripts

clean:
	rm -rf runs demo .cache .lock-venv

# Every wheel an offline GPU box needs for scripts/gpu_check.sh, for the box's Python, glibc and CPU, pinned by
# constraints.txt, plus a wheel of mmmo from this checkout. torch, triton and nvidia-*/cuda-* are left out: the box
# brings its own CUDA torch (and these are GBs). Needs the package index; writes GPU_WHEELS and MANIFEST.txt in it.
GPU_PYTHON ?= $(shell $(PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])')
GPU_GLIBC ?= 2.28
GPU_ARCH ?= x86_64
GPU_EXTRAS ?= dev
GPU_WHEELS ?= .gpu-wheels
gpu-wheels: | $(PY)
	$(PY) scripts/gpu_wheels.py --python-version $(GPU_PYTHON) --glibc $(GPU_GLIBC) --arch $(GPU_ARCH) \
		--extras $(GPU_EXTRAS) --dest $(GPU_WHEELS)
