"""Renders are stable: the same values give byte-identical manifests. GitOps tools (Argo CD, Flux)
render the chart at every sync; anything random (a generated password, and the checksum
annotations over it) would change the objects and roll every pod each time."""
from __future__ import annotations

import pytest

import chartlib

pytestmark = pytest.mark.needs_helm


@pytest.mark.parametrize("values_file", chartlib.CI_FILES)
def test_same_values_render_the_same_bytes(values_file):
    # two separate helm processes, as two syncs are (chartlib.render caches: render_text does not)
    first = chartlib.render_text(values_file)
    second = chartlib.render_text(values_file)
    assert first, values_file
    assert first == second
