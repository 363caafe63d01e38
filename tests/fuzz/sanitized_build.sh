#!/bin/sh
# The C speedups built with AddressSanitizer and UBSan in place of the normal build, for the
# fuzz harness and the C-path tests (docs/reliability.md, "The compiled reader under hostile
# files"). Prints the environment to run them with (eval "$(tests/fuzz/sanitized_build.sh)");
# undo: .venv/bin/pip install -q -e ./exporter
set -eu
cd "$(dirname "$0")/../.."
PY=${PYTHON:-.venv/bin/python}
PKG=exporter/gunicorn_prometheus_exporter
# where the installed module is looked for (found, not loaded: a sanitized one needs its runtime)
OUT=$("$PY" -c 'import importlib.util as u; print(u.find_spec("gunicorn_prometheus_exporter._speedups").origin)')
# the digest of the source beside it, or speedups.load() takes the build as stale
DIGEST=$("$PY" -c 'import runpy, sys; print(runpy.run_path(sys.argv[1])["source_digest"](sys.argv[2]))' \
    "$PKG/speedups.py" "$PKG/_speedups.c")
INCLUDE=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
gcc -shared -fPIC -g -O0 -fno-omit-frame-pointer -fsanitize=address,undefined \
    -I"$INCLUDE" -DSOURCE_DIGEST="\"$DIGEST\"" "$PKG/_speedups.c" -o "$OUT"
# -O0: at -O1 gcc folds away an int32 overflow UBSan should see. PYTHONMALLOC=malloc:
# CPython's small-object allocator would hide overruns of small blocks from ASan.
# libstdc++ after it: greenlet (gevent) throws C++ exceptions, which ASan's interceptor
# cannot pass on when the interpreter itself does not link libstdc++. handle_sigbus=0: the
# reader's own SIGBUS guard (a file truncated while mapped) must see the fault, not ASan.
echo "export LD_PRELOAD='$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libstdc++.so.6)'" \
    "PYTHONMALLOC=malloc" \
    "ASAN_OPTIONS=detect_leaks=0:handle_sigbus=0 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1"
