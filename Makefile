# One command sets everything up and runs the main job (`make demo`); one sets up and tests (`make test`).
VENV ?= .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false

.PHONY: setup demo test lint benchmarks ui server clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first and pinned: a range admitting newer releases pulls a multi-GB CUDA build on CPU machines
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

demo: setup
	$(VENV)/bin/diffpipe run pipelines/digits.yaml

test: setup
	$(PY) -m pytest

lint: setup
	$(VENV)/bin/ruff check .

benchmarks: setup
	$(PY) benchmarks/pipeline_cache.py
	$(PY) benchmarks/pretrain_throughput.py

# `make ui PORT=4300` / `make server PORT=4300` for another port: the browser UI is told to read that
# port's API (PREFECT_UI_API_URL), unless PREFECT_UI_API_URL is set already.
PORT ?= 4200

ui: setup
	PREFECT_UI_API_URL=$${PREFECT_UI_API_URL:-http://127.0.0.1:$(PORT)/api} \
	  $(VENV)/bin/prefect server start --host 127.0.0.1 --port $(PORT)

# A Prefect server on PostgreSQL (a local cluster under .prefect/postgres unless
# PREFECT_API_DATABASE_CONNECTION_URL names one), on 127.0.0.1:$(PORT); see README "Running a server for a team".
server: setup
	$(PY) -m diffpipe.server --port $(PORT)

clean:
	rm -rf artifacts .prefect
