#!/usr/bin/env bash
# The environment of the eventlet worker test: gunicorn 26 removed the eventlet worker, so
# it gets gunicorn 25.3 in a venv of its own (default .venv-eventlet at the repository root;
# the tests also look at $GPE_EVENTLET_VENV). Idempotent.
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV="${1:-${GPE_EVENTLET_VENV:-.venv-eventlet}}"
PYTHON="${PYTHON:-python3}"
test -x "$VENV/bin/python" || "$PYTHON" -m venv "$VENV"
"$VENV/bin/pip" install -q --disable-pip-version-check -e './exporter[eventlet]' \
  'gunicorn==25.3.0' 'eventlet>=0.40.3' 'flask>=3.0'
