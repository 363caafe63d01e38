"""Fixtures of the container image tests (tests/image): they live in
tests/support/container_fixtures.py, shared with the kube play tests (tests/kube)."""

from support.container_fixtures import (  # noqa: F401 - pytest finds fixtures and hooks here
    docker_host,
    images,
    pytest_configure,
    pytest_runtest_setup,
    runtime,
)
