# The two commands a newcomer needs: `make demo` and `make test`.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
export PYTHONPATH := $(CURDIR)/include:$(PYTHONPATH)
export MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR := false

.PHONY: lock install demo replay ui table history test test-unit test-e2e lint clean bench bench-docs lab stack stack-down stack-status

# requirements*.txt say what the project needs; requirements.lock pins every package to the versions
# CI tested (Airflow installs are meant to be constrained), so a fresh machine gets exactly those.
$(BIN)/.installed: requirements.txt requirements-dev.txt requirements.lock
	@command -v $(PYTHON) >/dev/null || { echo "needs $(PYTHON) (set PYTHON=...)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.txt -r requirements-dev.txt -c requirements.lock
	# The venv's python finds the library and the ops package: `.venv/bin/python -m driftwheel ...` works anywhere.
	echo "$(CURDIR)/include" > "$$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/driftwheel.pth"
	touch $@

install: $(BIN)/.installed

demo: install  ## install, then backfill the flywheel through the real scheduler over START..END (default 2008-2020, or the file source's years)
	$(BIN)/python -m driftwheel demo $(if $(START),--start $(START)) $(if $(END),--end $(END))

replay: install  ## the flywheel's steps over START..END in this process, no Airflow; own state (state/replay/<source>)
	$(BIN)/python -m driftwheel replay $(if $(START),--start $(START)) $(if $(END),--end $(END))

ui: install  ## serve the Airflow UI (:8080) and the MLflow UI (:5000) on the demo's state
	$(BIN)/python -m driftwheel ui

table: install
	$(BIN)/python -m driftwheel table

history: install  ## every promotion, refusal, rejection and rollback of the champion
	$(BIN)/python -m driftwheel history

bench: install  ## prequential benchmark of every policy on the seed data (else synthetic); writes state/bench/
	$(BIN)/python benchmarks/prequential.py --out state/bench

bench-docs: install  ## regenerate docs/benchmark/ (seed data) and docs/benchmark/synthetic/ (state in state/bench-docs/)
	$(BIN)/python benchmarks/prequential.py --out docs/benchmark --state state/bench-docs/seed
	$(BIN)/python benchmarks/prequential.py --synthetic --last-year 2020 --out docs/benchmark/synthetic --state state/bench-docs/synthetic

lab: install  ## drift lab: every retrain policy on every scenario preset (SCENARIOS=..., POLICIES=... to narrow); writes docs/benchmark/lab/
	$(BIN)/python -m driftwheel lab --out $(or $(OUT),docs/benchmark/lab) $(if $(SCENARIOS),--scenarios $(SCENARIOS)) $(if $(POLICIES),--policies $(POLICIES))

test: install lint  ## lint, then unit, DAG and end-to-end tests (the e2e tests use PostgreSQL on 127.0.0.1:5432)
	$(BIN)/python -m pytest

lint: install  ## ruff's lint rules and its formatter (check only) on everything, mypy on the library and the operations package
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test-unit: install
	$(BIN)/python -m pytest -m "not e2e"

stack: install  ## the server topology without Docker: MLflow + Airflow on Celery workers (scripts/stack.sh up)
	scripts/stack.sh up

stack-down:  ## stop what `make stack` started
	scripts/stack.sh down

stack-status:
	scripts/stack.sh status

lock:  ## re-resolve requirements*.txt in a scratch venv and pin the result in requirements.lock (then run make test)
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/pip install --quiet --upgrade pip
	.lock-venv/bin/pip install --quiet -r requirements.txt -r requirements-dev.txt
	{ echo "# Every package make install puts in .venv, at the version CI tested. Refresh: make lock"; \
	  .lock-venv/bin/pip freeze; } > requirements.lock
	rm -rf .lock-venv

clean:  ## forget every run: databases, models, data and reports of the embedded default
	rm -rf state
