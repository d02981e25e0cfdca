# Two commands: `make demo` and `make test`. Each creates .venv when it is missing.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed

.PHONY: demo test test-fast bench bench-rehearse bench-fidelity bench-server install clean proto

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	OPENBLAS_NUM_THREADS=1 $(BIN)/servelab mode=compare scenario=quickstart out_dir=runs/demo

# Two passes: the tests that start no real server run on both cores (pytest-xdist), then the
# real-stack tests one at a time, since they measure latencies and a host's capacity and must
# not share the machine with each other or with the first pass.
test: $(STAMP)
	OPENBLAS_NUM_THREADS=1 $(BIN)/python -m pytest -q -m 'not real' -n 2
	OPENBLAS_NUM_THREADS=1 $(BIN)/python -m pytest -q -m real

test-fast: $(STAMP)
	OPENBLAS_NUM_THREADS=1 $(BIN)/python -m pytest -q -m 'not slow and not real' -n 2
	OPENBLAS_NUM_THREADS=1 $(BIN)/python -m pytest -q -m 'not slow and real'

bench: $(STAMP)
	OPENBLAS_NUM_THREADS=1 $(BIN)/python -m scenarios.bench_twin

bench-rehearse: $(STAMP)
	OPENBLAS_NUM_THREADS=1 $(BIN)/python -m scenarios.bench_rehearse

bench-fidelity: $(STAMP)
	OPENBLAS_NUM_THREADS=1 $(BIN)/python -m scenarios.bench_fidelity

bench-server: $(STAMP)
	OPENBLAS_NUM_THREADS=1 $(BIN)/python -m scenarios.bench_server

.PHONY: bench-ab-stats
bench-ab-stats: $(STAMP)
	OPENBLAS_NUM_THREADS=1 $(BIN)/python -m scenarios.bench_ab_stats

.PHONY: bench-ab-twin
bench-ab-twin: $(STAMP)
	OPENBLAS_NUM_THREADS=1 $(BIN)/python -m scenarios.bench_ab_twin

proto: $(STAMP)
	$(BIN)/python -m real.grpc.generate

clean:
	rm -rf $(VENV) runs outputs multirun
