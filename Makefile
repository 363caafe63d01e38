# Root Makefile. Each area keeps its targets in mk/*.mk, included here.
.DEFAULT_GOAL := help

.PHONY: help
help:
	@echo "make demo        the demo app under gunicorn (127.0.0.1:8000), metrics on 127.0.0.1:9091"
	@echo "make test        install what the tests need and run them all (what CI runs; root, ~15 min)"
	@echo "make test-quick  no root, no containers: the plugin's tests with real gunicorn and Redis"
	@echo "make e2e         end-to-end suite with a real Prometheus"
	@echo "make e2e-kind    the whole stack in kind (needs docker + kind)"
	@echo "make image       build the exporter and demo images (docker or podman)"
	@echo "make chart-test  Helm chart tests; make k8s-manifests re-renders k8s/"
	@echo "make bench       benchmarks (docs/benchmarks.md); make bench-instructions counts instructions (valgrind)"

include mk/*.mk
