# Container images (image/, tests/image/). Included by the root Makefile (include mk/*.mk).
#   make image-tools   install podman, buildah, runc, debootstrap, ... and the test tools (root)
#   make image         build gunicorn-prometheus-exporter and -demo (docker or podman)
#   make image-base    only make the base image (pull, or a local Debian one)
#   make image-lint    hadolint on both Dockerfiles
#   make image-test    pytest tests/image (builds the images; container tests skip without a runtime;
#                      --confcutdir: the image tests need none of tests/conftest.py)
#   make kube-test     pytest tests/kube: the chart's rendered pods under `podman kube play`
#                      (root, podman; about 2 minutes with the images cached)
# Keep whatever default goal another mk/*.mk file chose.
_image_mk_default_goal := $(.DEFAULT_GOAL)

IMAGE_PYTHON ?= python3
IMAGE_PYTEST_ARGS ?= -v -rs

.PHONY: image image-base image-lint image-test image-tools kube-test

image:
	bash image/build.sh build

image-base:
	bash image/build.sh base

image-lint:
	hadolint image/Dockerfile image/Dockerfile.demo

image-test:
	$(IMAGE_PYTHON) -m pytest tests/image --confcutdir=tests/image $(IMAGE_PYTEST_ARGS)

image-tools:
	bash image/install-tools.sh

kube-test: venv $(CHART_HELM)
	$(CHART_HELM_ENV) $(BIN)/python -m pytest tests/kube $(IMAGE_PYTEST_ARGS)

.DEFAULT_GOAL := $(_image_mk_default_goal)
