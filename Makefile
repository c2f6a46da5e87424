# sendmap: `make demo` sets up .venv and runs the whole job on data_samples/; `make test` runs the tests.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
CONFIG ?= configs/demo.yaml
BATCH_DIR ?= configs/scenarios
BATCH_ARGS ?=
# test processes (pytest-xdist; one per core of the 2-core reference machine; TEST_WORKERS=0 runs them in one)
TEST_WORKERS ?= 2

.PHONY: demo test run batch bench venv clean clean-numba scenarios scenarios-reduced

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/sendmap run configs/demo.yaml
	@echo "figures: results/demo/figures   tables: results/demo/tables   summary: results/demo/summary.json"

test: $(STAMP)
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile

run: $(STAMP)
	$(BIN)/sendmap run $(CONFIG)

batch: $(STAMP)
	$(BIN)/sendmap batch $(BATCH_DIR) $(BATCH_ARGS)

# `make bench`: sendmap vs pyFAI (in .venv) and py4DSTEM (own venv: it pins numpy<2) and rosettasciio, on a 256²
# and a 128² file side by side; writes ~8 GB of synthetic Merlin data into bench_data/ once. BENCH_ARGS e.g.
# "--only profiles --files 128 --data128 /elsewhere" (python benchmarks/run.py --help lists them).
PY4D_VENV  := .venv-py4dstem
PY4D_STAMP := $(PY4D_VENV)/.installed
PY4DSTEM_SPEC ?= py4DSTEM>=0.14.18,<0.15
BENCH_ARGS ?=

# No network or no wheel: the bench still runs and says py4DSTEM was skipped and why (bench_data/py4dstem_install.log).
$(PY4D_STAMP):
	@mkdir -p bench_data; echo "setting up $(PY4D_VENV) with $(PY4DSTEM_SPEC) ..."; \
	if $(PYTHON) -m venv $(PY4D_VENV) > bench_data/py4dstem_install.log 2>&1 && \
	   $(PY4D_VENV)/bin/python -m pip install --quiet --retries 1 --timeout 30 "$(PY4DSTEM_SPEC)" \
	     >> bench_data/py4dstem_install.log 2>&1 && \
	   $(PY4D_VENV)/bin/python -c "import py4DSTEM" >> bench_data/py4dstem_install.log 2>&1; then \
	  touch $@; \
	else \
	  rm -rf $(PY4D_VENV); \
	  echo "py4DSTEM: could not set up $(PY4D_VENV) (bench_data/py4dstem_install.log); the bench runs without it"; \
	fi

bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e ".[bench]"
	@$(MAKE) --no-print-directory $(PY4D_STAMP)
	$(BIN)/python benchmarks/run.py $(BENCH_ARGS)

clean:
	rm -rf results

# numba's compiled kernels live in ~/.cache/sendmap/numba/<digest of sendmap's sources> (sendmap/codehash.py):
# an edit never loads a stale kernel; this removes them all (and the ones older builds left beside the sources).
clean-numba:
	rm -rf "$${XDG_CACHE_HOME:-$$HOME/.cache}/sendmap/numba"
	find sendmap -name '*.nbi' -delete -o -name '*.nbc' -delete

# The synthetic published scenarios (configs/scenarios/*.yaml), with ground truth, then their accuracy.
scenarios: $(STAMP)
	$(BIN)/sendmap synth data/synthetic/li_cu_2e4 --dose 20000 --seed 0 --quiet
	$(BIN)/sendmap synth data/synthetic/li_cu_5e3 --dose 5000 --seed 0 --quiet
	@for d in 2e4 5e3; do $(BIN)/sendmap run configs/scenarios/li_cu_$$d.yaml --no-progress && \
	  $(BIN)/python -m sendmap.evaluate results/li_cu_$$d data/synthetic/li_cu_$$d --brief; done
	$(MAKE) scenarios-matrix

# The scenario matrix of issue 18 (benchmarks/scenario_matrix.py): every cell synthesised (48 x 64 positions),
# run and scored against its truth; markdown table with the seed of every cell in $(MATRIX_OUT)/scenario_matrix.md.
# MATRIX_ARGS e.g. "--only all spread --doses 5000". Exit status 1 while any cell misses issue 18's targets.
MATRIX_OUT ?= results/scenario_matrix
MATRIX_ARGS ?=
.PHONY: scenarios-matrix
scenarios-matrix: $(STAMP)
	$(BIN)/python benchmarks/scenario_matrix.py --out $(MATRIX_OUT) $(MATRIX_ARGS)

# The reduced sweep (three cells on 32 x 48 scans, a few minutes): the CI subset.
scenarios-reduced: $(STAMP)
	$(BIN)/python benchmarks/scenario_matrix.py --reduced --out $(MATRIX_OUT)_reduced $(MATRIX_ARGS)
