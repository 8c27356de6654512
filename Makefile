# sglang-dcp: two commands on a fresh machine — `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
STAMP  := $(VENV)/.sglang-dcp-installed
SGLANG_VERSION := 0.5.21
TORCHVISION_VERSION := 0.28.0
PYTEST_ARGS ?=
NVIDIA_INDEX ?= https://pypi.nvidia.com

.PHONY: install install-gpu test test-fast demo bench-planner bench-sim bench-exchange bench-kernels-dry clean help

help:
	@echo "make install      create $(VENV) with the pinned CPU stack (torch 2.13.0 CPU, triton 3.7.1, sglang $(SGLANG_VERSION))"
	@echo "make demo         install, then serve the tiny demo model with DP attention on CPU"
	@echo "make test         install, then run the whole test suite"
	@echo "make install-gpu  the same venv on a CUDA machine (+ sglang-kernel, sgl-deep-ep, flashinfer)"
	@echo "make bench-planner | bench-sim | bench-exchange | bench-kernels-dry"

install: $(STAMP)

# A second `make install` is a no-op: the stamp is newer than every input.
$(STAMP): requirements/cpu.txt requirements/constraints.txt setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --disable-pip-version-check -q -r requirements/cpu.txt -c requirements/constraints.txt
	# sglang's declared dependencies are CUDA-13 only (cuda-tile, flashinfer, sgl-kernel, ...):
	# install it without them; requirements/cpu.txt lists what it really needs on CPU.
	$(PIP) install --disable-pip-version-check -q --no-deps sglang==$(SGLANG_VERSION) torchvision==$(TORCHVISION_VERSION)
	$(PIP) install --disable-pip-version-check -q --no-deps --no-build-isolation -e .
	$(PY) -c "from sglang_dcp.sglang.cpu_compat import install_pth; install_pth()"
	touch $(STAMP)

# On a CUDA machine: torch/triton CUDA wheels, then sglang with its CUDA dependencies.
install-gpu:
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install torch==2.13.0 triton==3.7.1
	$(PIP) install --extra-index-url $(NVIDIA_INDEX) cuda-tile==1.6.0rc5
	$(PIP) install -r requirements/gpu.txt
	$(PIP) install --no-deps --no-build-isolation -e .
	$(PIP) install pytest pytest-timeout hypothesis matplotlib safetensors
	touch $(STAMP)

test: install
	$(PY) -m pytest test $(PYTEST_ARGS)

# Everything but the end-to-end server tests.
test-fast: install
	$(PY) -m pytest test -m "not e2e" $(PYTEST_ARGS)

demo: install
	$(PY) -m sglang_dcp.launch_server --demo

bench-planner: install
	$(PY) bench/planner.py

bench-sim: install
	$(PY) bench/sim.py

bench-exchange: install
	$(PY) bench/exchange.py

bench-kernels-dry: install
	TRITON_INTERPRET=1 $(PY) bench/kernels.py --dry-run

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache
