# sglang-dcp: two commands on a fresh machine — `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
STAMP  := $(VENV)/.sglang-dcp-installed
SGLANG_VERSION := 0.5.21
TORCHVISION_VERSION := 0.28.0
PYTEST_ARGS ?=
TEST_WORKERS ?= 2
XDIST = $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile)
NVIDIA_INDEX ?= https://pypi.nvidia.com

# Patch-and-rebuild of the pinned SGLang wheel (patches/README.md). The venv's Python is 3.11 on
# x86_64 Linux, so pip fetches this file; its sha256 was recorded when the series was made.
SGLANG_WHEEL_DIR    := .cache/wheels
SGLANG_WHEEL        := $(SGLANG_WHEEL_DIR)/sglang-$(SGLANG_VERSION)-cp311-cp311-manylinux_2_34_x86_64.whl
SGLANG_WHEEL_SHA256 := 96c029f75dec99baa33a5db3d41b1bebefdd6bcfba3a2f7c807fe1cf49a87c20
SGLANG_BUILD_TAG    := 1dcp
SGLANG_BUILD_DIR    := .cache/sglang-build
PATCHES             := $(sort $(wildcard patches/*.patch))
PATCH_STAMP         := $(VENV)/.sglang-dcp-patched
CHECK_WHEEL          = echo "$(SGLANG_WHEEL_SHA256)  $(SGLANG_WHEEL)" | sha256sum -c --quiet

.PHONY: install install-gpu libibverbs patch check-patches test test-fast demo demo-router demo-pd bench-planner bench-sim bench-sim-heldout bench-sim-families bench-sim-sessions bench-sim-wire bench-exchange bench-kernels-dry bench-serving clean help

help:
	@echo "make install      create $(VENV) with the pinned CPU stack (torch 2.13.0 CPU, triton 3.7.1, sglang $(SGLANG_VERSION))"
	@echo "make demo         install, then serve the tiny demo model with DP attention on CPU"
	@echo "make demo-router  install, then two tiny demo servers (2 DP ranks each) behind the router on :30000"
	@echo "make demo-pd      install, then a prefill server, a decode server (planner, 4 DP ranks) and the router in PD mode on :30000"
	@echo "make test         install, then run the whole test suite"
	@echo "make patch        rebuild the pinned sglang wheel with patches/*.patch and install it (part of install)"
	@echo "make check-patches  prove patches/ applies, compiles and reverses cleanly on the pinned wheel"
	@echo "make install-gpu  the same venv on a CUDA machine (+ sglang-kernel, sgl-deep-ep, flashinfer)"
	@echo "make bench-planner | bench-sim | bench-sim-heldout | bench-sim-families | bench-sim-sessions | bench-sim-wire"
	@echo "make bench-exchange | bench-kernels-dry"
	@echo "make bench-serving  SGLang's bench_serving against the demo, dcp vs round_robin (CPU numbers)"

install: $(STAMP) $(PATCH_STAMP)

# A second `make install` is a no-op: the stamp is newer than every input.
$(STAMP): requirements/cpu.txt requirements/constraints.txt setup.py
	$(MAKE) libibverbs
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
	$(MAKE) libibverbs
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install torch==2.13.0 triton==3.7.1
	$(PIP) install --extra-index-url $(NVIDIA_INDEX) cuda-tile==1.6.0rc5
	$(PIP) install -r requirements/gpu.txt
	$(PIP) install --no-deps --no-build-isolation -e .
	$(PIP) install pytest pytest-timeout pytest-xdist hypothesis matplotlib safetensors wheel
	touch $(STAMP)
	$(MAKE) patch

patch: $(PATCH_STAMP)

# The mooncake transfer engine (requirements/) links libibverbs.so.1 even for TCP transfers
# ("libibverbs.so.1: cannot open shared object file" at import). Debian's package, when missing;
# CI and developers run as root (else: sudo apt-get install libibverbs1).
libibverbs:
	@ldconfig -p | grep -q 'libibverbs\.so\.1 ' || { \
	  command -v apt-get >/dev/null || { echo "libibverbs.so.1 is missing and there is no apt-get: install your distribution's libibverbs (rdma-core) package"; exit 1; }; \
	  echo "installing Debian's libibverbs1 (the mooncake transfer engine links it)"; \
	  apt-get install -y -q libibverbs1 >/dev/null || { apt-get update -q >/dev/null && apt-get install -y -q libibverbs1 >/dev/null; }; }

# Cached: downloaded once, then make never looks at the index again (works offline).
$(SGLANG_WHEEL): | $(STAMP)
	mkdir -p $(SGLANG_WHEEL_DIR)
	$(PIP) download --disable-pip-version-check -q --no-deps sglang==$(SGLANG_VERSION) -d $(SGLANG_WHEEL_DIR)
	test -f $@ || { echo "pip did not fetch $@ (the Makefile expects CPython 3.11 on x86_64)"; exit 1; }
	$(CHECK_WHEEL) || { rm -f $@; echo "sha256 mismatch: not the wheel the patches were made on"; exit 1; }

# Unpack the pristine wheel, apply the series in order (dry run first, no fuzz), repack with a
# local build tag (sglang-$(SGLANG_VERSION)-$(SGLANG_BUILD_TAG)-...whl) and install it over the
# stock one. Order-only on $(STAMP): re-running that only no-ops on sglang==$(SGLANG_VERSION).
$(PATCH_STAMP): $(SGLANG_WHEEL) $(PATCHES) | $(STAMP)
	$(CHECK_WHEEL)
	$(PY) sglang_dcp/sglang/patch_series.py check --wheel $(SGLANG_WHEEL) $(PATCHES)
	rm -rf $(SGLANG_BUILD_DIR) && mkdir -p $(SGLANG_BUILD_DIR)/dist
	$(PY) -m wheel unpack -d $(SGLANG_BUILD_DIR) $(SGLANG_WHEEL) >/dev/null
	set -e; for p in $(PATCHES); do \
	  patch -p1 --batch --fuzz=0 --dry-run -d $(SGLANG_BUILD_DIR)/sglang-$(SGLANG_VERSION) < $$p >/dev/null; \
	  patch -p1 --batch --fuzz=0 --no-backup-if-mismatch -d $(SGLANG_BUILD_DIR)/sglang-$(SGLANG_VERSION) < $$p; \
	done
	$(PY) -m wheel pack --build-number $(SGLANG_BUILD_TAG) -d $(SGLANG_BUILD_DIR)/dist $(SGLANG_BUILD_DIR)/sglang-$(SGLANG_VERSION)
	rm -rf $(SGLANG_BUILD_DIR)/sglang-$(SGLANG_VERSION)
	$(PIP) install --disable-pip-version-check -q --no-deps --force-reinstall $(SGLANG_BUILD_DIR)/dist/sglang-$(SGLANG_VERSION)-$(SGLANG_BUILD_TAG)-*.whl
	touch $@

check-patches: $(SGLANG_WHEEL)
	$(CHECK_WHEEL)
	$(PY) sglang_dcp/sglang/patch_series.py check --wheel $(SGLANG_WHEEL) $(PATCHES)

# Two pytest-xdist workers, whole modules each (--dist loadfile: a module's servers start once);
# a test module waits on its servers or requests more than it computes. TEST_WORKERS=0: one process.
test: install
	$(PY) -m pytest test $(XDIST) $(PYTEST_ARGS)

# Everything but the end-to-end server tests.
test-fast: install
	$(PY) -m pytest test -m "not e2e" $(XDIST) $(PYTEST_ARGS)

demo: install
	$(PY) -m sglang_dcp.launch_server --demo

demo-router: install
	$(PY) -m sglang_dcp.launch_router --demo

# PD disaggregation on CPU: a prefill server, a decode server with the planner, the router in PD mode
demo-pd: install
	$(PY) -m sglang_dcp.router.pd_demo

bench-planner: install
	$(PY) bench/planner.py

bench-sim: install
	$(PY) bench/sim.py

bench-sim-heldout: install
	$(PY) bench/sim.py --heldout

bench-sim-families: install
	$(PY) bench/sim_families.py

bench-sim-sessions: install
	$(PY) bench/sim_sessions.py

bench-sim-wire: install
	$(PY) bench/sim_wire.py

bench-exchange: install
	$(PY) bench/exchange.py

# SGLang's own client (python -m sglang.bench_serving, random-ids prompts) against the demo
# server, once with --dcp-policy dcp and once with round_robin; bench/results/serving-cpu.*
bench-serving: install
	$(PY) bench/serving.py

bench-kernels-dry: install
	TRITON_INTERPRET=1 $(PY) bench/kernels.py --dry-run

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache $(SGLANG_BUILD_DIR)
