#!/usr/bin/env bash
# Fresh virtual environments with ONLY the plugin from ./exporter and one of its extras
# (no test dependencies), for tests/workers/test_extras.py: a user's
# `pip install 'gunicorn-prometheus-exporter[EXTRA]'`. One wheel is built from ./exporter,
# then the venvs are made in parallel under .venv-extras/NAME (default: all of them).
# Idempotent: a venv whose stamp matches the hash of ./exporter's sources is kept, so a CI
# run builds them once; `make test-deps` calls this, and the test calls it for a venv it
# finds missing or stale. pip's cache makes a rebuild quick.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT="${GPE_EXTRAS_VENVS:-.venv-extras}"
PYTHON="${PYTHON:-python3}"
ALL=(bare gevent eventlet async asgi redis all)
NAMES=("$@")
[ ${#NAMES[@]} -gt 0 ] || NAMES=("${ALL[@]}")
export PIP_DISABLE_PIP_VERSION_CHECK=1

# the sources that make the package (compiled files and caches excluded)
STAMP=$(find exporter -type f \( -name '*.py' -o -name '*.c' -o -name '*.toml' -o -name '*.html' \
          -o -name '*.typed' -o -name '*.md' \) -not -path '*/build/*' -not -path '*.egg-info/*' \
        | LC_ALL=C sort | xargs sha256sum | sha256sum | cut -c1-16)

fresh() { [ -x "$ROOT/$1/bin/gunicorn" ] && [ "$(cat "$ROOT/$1/.stamp" 2>/dev/null)" = "$STAMP" ]; }

todo=()
for name in "${NAMES[@]}"; do
  case " ${ALL[*]} " in *" $name "*) ;; *) echo "unknown extra: $name (one of ${ALL[*]})" >&2; exit 2;; esac
  fresh "$name" || todo+=("$name")
done
[ ${#todo[@]} -gt 0 ] || { echo "extras venvs up to date in $ROOT"; exit 0; }

mkdir -p "$ROOT"
WHEELS="$ROOT/.wheel-$STAMP"
if ! ls "$WHEELS"/*.whl >/dev/null 2>&1; then
  rm -rf "$ROOT"/.wheel-*
  tmp=$(mktemp -d)
  "$PYTHON" -m venv "$tmp/build"
  "$tmp/build/bin/pip" wheel -q --no-deps ./exporter -w "$WHEELS"
  rm -rf "$tmp"
fi
WHEEL=$(ls "$WHEELS"/*.whl | head -1)

build() {
  local name=$1 venv="$ROOT/$1" spec
  spec="$WHEEL"
  [ "$name" = bare ] || spec="$WHEEL[$name]"
  rm -rf "$venv"
  "$PYTHON" -m venv "$venv"
  "$venv/bin/pip" install -q "$spec" > "$venv.log" 2>&1 || { cat "$venv.log" >&2; return 1; }
  echo "$STAMP" > "$venv/.stamp"
}

started=$(date +%s)
pids=()
for name in "${todo[@]}"; do build "$name" & pids+=($!); done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
echo "extras venvs (${todo[*]}) built in $(( $(date +%s) - started ))s in $ROOT"
exit $status
