# The plugin: virtual environment, demo, tests, benchmarks.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# the oldest gunicorn we support, tested in a second environment
GUNICORN_OLDEST ?= 23.0.0
VENV_OLDEST ?= .venv-gunicorn-$(GUNICORN_OLDEST)
PYTEST_ARGS ?=

.PHONY: venv demo system-deps test-deps test test-quick test-core test-oldest lint-imports e2e bench bench-instructions bench-memory clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

## venv: the project's virtual environment with the plugin (editable) and its test tools
venv: $(BIN)/python
	$(BIN)/pip install -q -e './exporter[dev]' -r tests/requirements.txt \
		$(addprefix -r ,$(wildcard tests/requirements-*.txt))

## demo: the demo app under gunicorn (2 workers, 127.0.0.1:8000), metrics on 127.0.0.1:9091
demo: $(BIN)/python
	$(BIN)/pip install -q -e ./exporter
	PROMETHEUS_BIND_ADDRESS=127.0.0.1 PROMETHEUS_METRICS_PORT=9091 \
	GUNICORN_BIND=127.0.0.1:8000 GUNICORN_WORKERS=2 \
	$(BIN)/gunicorn -c python:gunicorn_prometheus_exporter.demo.gunicorn_conf \
		gunicorn_prometheus_exporter.demo.app:app

## system-deps: Debian packages the tests use (promtool/prometheus, redis-server, wrk)
system-deps:
	bash .ci/system-deps.sh

## test-deps: what the tests need; extras-venvs.sh makes one fresh venv per extra of the
## plugin (tests/workers/test_extras.py), in parallel, kept while ./exporter is unchanged
test-deps: system-deps venv
	bash tests/workers/eventlet-venv.sh
	bash tests/workers/extras-venvs.sh
	$(MAKE) --no-print-directory chart-tools CHART_PYTHON=$(abspath $(BIN)/python)
	-INSTALL_PY=0 $(MAKE) --no-print-directory image-tools

## test: everything CI runs: the import contracts (.importlinter), unit, integration, chart,
## image (skips without a runtime), e2e
test: test-deps test-oldest lint-imports
	$(CHART_HELM_ENV) $(BIN)/python -m pytest $(PYTEST_ARGS)

## lint-imports: the layering of the package (.importlinter; docs/architecture.md)
lint-imports: $(BIN)/python
	$(BIN)/lint-imports

## test-quick: no root, no containers, no cluster: the import contracts, then the plugin's tests
## under real gunicorn and real redis-server processes (tests/ without tests/chart and
## tests/image, and without the tests marked slow; no e2e). Needs python3 with venv, a C compiler
## (for the C speedups) and redis-server + redis-cli on PATH (the Redis tests start their own on
## free loopback ports; without them those tests skip with one line).
test-quick: venv lint-imports
	bash tests/workers/eventlet-venv.sh
	$(BIN)/python -m pytest tests --ignore=tests/chart --ignore=tests/image -m "not slow" $(PYTEST_ARGS)

## test-oldest: the request tests again on the oldest supported gunicorn
test-oldest: $(BIN)/python
	test -x $(VENV_OLDEST)/bin/python || $(PYTHON) -m venv $(VENV_OLDEST)
	$(VENV_OLDEST)/bin/pip install -q -e ./exporter 'gunicorn==$(GUNICORN_OLDEST)' \
		-r tests/requirements.txt
	$(VENV_OLDEST)/bin/python -m pytest -q -m "not slow" tests/test_requests.py tests/test_lifecycle.py

## bench: hot-path microbenchmark and wrk throughput against plain gunicorn
bench: venv
	$(BIN)/python bench/hot_path.py
	$(BIN)/python bench/throughput.py

clean:
	rm -rf $(VENV) $(VENV_OLDEST) .venv-eventlet .venv-extras .cache .pytest_cache

## bench-instructions: instructions per request in a running worker, plain and with the plugin (valgrind)
bench-instructions: venv
	$(BIN)/python bench/instructions.py

## bench-memory: RSS and PSS of the workers, master and metrics process, plain and with the plugin
bench-memory: venv
	$(BIN)/python bench/memory.py
