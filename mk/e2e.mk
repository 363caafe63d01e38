# End-to-end suites (e2e/, see e2e/README.md). Included by the root Makefile (include mk/*.mk).
#   make e2e        the local suite: a real Prometheus (Debian's `prometheus`, on loopback, 1 s
#                   scrapes, the chart's alert rules loaded) scraping real gunicorn, in file mode
#                   and in Redis mode; about 1.5 minutes on 2 cores. `make test` runs it too.
#   make e2e-kind   the whole stack in a kind cluster (kind-config.yaml): images, helm install of
#                   both topologies, NetworkPolicies, the raw k8s/ manifests. Needs a Docker
#                   engine, kind >= 0.24 and kubectl; without them it says so in one line and exits 0.
#                   E2E_KIND_KEEP=1 keeps the cluster, E2E_KIND_REUSE=1 reuses a running one.
# Keep whatever default goal another mk/*.mk file chose.
_e2e_mk_default_goal := $(.DEFAULT_GOAL)

E2E_PYTEST_ARGS ?= -v -rs
# every command of the kind suite is logged live
E2E_KIND_PYTEST_ARGS ?= -v -rs -o log_cli=true --log-cli-level=INFO --timeout=3600

.PHONY: e2e e2e-kind e2e-kind-run

e2e: test-deps
	$(BIN)/python -m pytest e2e --ignore=e2e/kind $(E2E_PYTEST_ARGS)

# Without a Docker engine, kind or kubectl: one line, exit 0, nothing installed.
e2e-kind:
	@reason="$$(PYTHONPATH=tests $(PYTHON) e2e/kind/kindlib.py)" || exit 1; \
	if [ -n "$$reason" ]; then echo "make e2e-kind: skipped: $$reason"; exit 0; fi; \
	$(MAKE) --no-print-directory e2e-kind-run

e2e-kind-run: venv $(CHART_HELM)
	$(CHART_HELM_ENV) $(BIN)/python -m pytest e2e/kind $(E2E_KIND_PYTEST_ARGS)

.DEFAULT_GOAL := $(_e2e_mk_default_goal)
