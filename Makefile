# sendmap: `make demo` sets up .venv and runs the whole job on data_samples/; `make test` runs the tests.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
CONFIG ?= configs/demo.yaml
BATCH_DIR ?= configs/scenarios

.PHONY: demo test run batch bench venv clean scenarios

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
	$(BIN)/python -m pytest -q

run: $(STAMP)
	$(BIN)/sendmap run $(CONFIG)

batch: $(STAMP)
	@set -e; for c in $(BATCH_DIR)/*.yaml; do echo "== $$c"; $(BIN)/sendmap run "$$c" --no-progress || echo "FAILED: $$c"; done

bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e ".[bench]"
	$(BIN)/python benchmarks/run.py

clean:
	rm -rf results

# The synthetic published scenarios (configs/scenarios/*.yaml), with ground truth, then their accuracy.
scenarios: $(STAMP)
	$(BIN)/sendmap synth data/synthetic/li_cu_2e4 --dose 20000 --seed 0 --quiet
	$(BIN)/sendmap synth data/synthetic/li_cu_5e3 --dose 5000 --seed 0 --quiet
	@for d in 2e4 5e3; do $(BIN)/sendmap run configs/scenarios/li_cu_$$d.yaml --no-progress && \
	  $(BIN)/python -m sendmap.evaluate results/li_cu_$$d data/synthetic/li_cu_$$d --brief; done
