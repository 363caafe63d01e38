"""A storage file shortened in place (``truncate``) while the reader has it mapped.

A read of a mapped page past the file's new end raises SIGBUS, which killed the metrics
process (and the standalone exporter). The compiled reader guards its reads of the map:
the file is read as torn (the entries its new size holds), counted once in
``gunicorn_exporter_read_errors_total``, and every other file is served exactly. Reads run
in a child process, so a SIGBUS fails the test instead of ending the run. A SIGBUS outside
a guarded read still kills the process as before (the handler hands it on)."""
from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from gunicorn_prometheus_exporter import speedups
from gunicorn_prometheus_exporter.storage.reader import FileReader
from support.child import run_child
from support.procs import Serve
from support.scrape import Scrape, scrape

TESTS = str(Path(__file__).resolve().parents[1])
READ_ERRORS = "gunicorn_exporter_read_errors_total"
needs_native = pytest.mark.skipif(speedups.load({}) is None,
                                  reason="the C speedups are not built here")

#: writes counter_w0.db (keys /a0.. valued 1, 2, ...) and counter_w1.db (/b0../b2), reads
#: the directory, shortens w0 to CUT bytes while the collector holds its map, reads again
READ_TRUNCATED = """
import json, os, sys
from gunicorn_prometheus_exporter import speedups
from gunicorn_prometheus_exporter.collector import DirectoryCollector
from gunicorn_prometheus_exporter.storage.mmap_file import MmapFile, sample_key

directory, where, cut, path = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
native = speedups.load({{}}) if path == "c" else None

def write(f, prefix, numbers):
    for n in numbers:
        f.values[f.index(sample_key("c", "c_total", {{"route": f"/{{prefix}}{{n}}"}}, "h"))] \\
            = n + 1.0

def served(collector):
    return {{s.labels["route"]: s.value for f in collector.read() for s in f.samples
            if s.name == "c_total"}}, collector.read_errors

other = MmapFile(os.path.join(directory, "counter_w1.db"))
write(other, "b", range(3))
victim = MmapFile(os.path.join(directory, "counter_w0.db"))
write(victim, "a", range({entries} if where != "walk" else 10))
collector = DirectoryCollector(directory, compiled=native)
before = served(collector)
if where == "walk":  # entries appended after the first read: the key walk meets the cut
    write(victim, "a", range(10, {entries}))
os.truncate(victim.path, cut)
after = served(collector)
again = served(collector)
print(json.dumps({{"before": before, "after": after, "again": again}}))
"""

ENTRIES = 200  # about 17,000 bytes: the cut at 4,096 leaves a few dozen entries


def _held_in(path: Path) -> dict:
    """The routes (and values) a fresh reader finds in what is left of the file."""
    reader = FileReader(str(path))
    values = reader.read() or ()
    return {json.loads(k)[2]["route"]: v for k, v in zip(reader.keys, values)}


@needs_native
@pytest.mark.parametrize("where,cut", [("values", 4096), ("walk", 8192), ("header", 0)])
def test_a_file_truncated_while_mapped_is_read_as_torn_by_the_compiled_reader(
        tmp_path, where, cut):
    """``values``: the values read past the cut; ``walk``: the key walk over entries
    appended since the last read; ``header``: the file cut to nothing."""
    done = run_child(READ_TRUNCATED.format(entries=ENTRIES), str(tmp_path), where, str(cut), "c")
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    others = {f"/b{n}": n + 1.0 for n in range(3)}
    first = ENTRIES if where != "walk" else 10
    assert out["before"] == [{**others, **{f"/a{n}": n + 1.0 for n in range(first)}}, 0]
    held = _held_in(tmp_path / "counter_w0.db")
    assert (0 < len(held) < ENTRIES) if cut else held == {}
    assert held == {f"/a{n}": n + 1.0 for n in range(len(held))}
    assert out["after"] == out["again"] == [{**others, **held}, 1]
    assert done.stderr.count("was shortened while mapped") == 1
    assert "counter_w0.db" in done.stderr


def test_the_python_reader_still_dies_of_a_file_truncated_while_mapped(tmp_path):
    """The documented limit (docs/reliability.md): the Python path reads the map unguarded."""
    done = run_child(READ_TRUNCATED.format(entries=ENTRIES), str(tmp_path), "values", "4096",
                  "python")
    assert done.returncode == -signal.SIGBUS, (done.returncode, done.stderr)


@needs_native
def test_a_sigbus_outside_a_guarded_read_still_kills_the_process(tmp_path):
    """After a guarded read installed the handler, a plain Python read of a truncated map
    dies of SIGBUS as before, through the handler installed earlier (faulthandler's
    report, then the default action)."""
    code = """
    import faulthandler, mmap, os, sys
    faulthandler.enable()
    from gunicorn_prometheus_exporter import speedups
    from gunicorn_prometheus_exporter.collector import DirectoryCollector
    from gunicorn_prometheus_exporter.storage.mmap_file import MmapFile, sample_key
    f = MmapFile(os.path.join(sys.argv[1], "counter_w0.db"))
    f.values[f.index(sample_key("c", "c_total", {}, "h"))] = 1.0
    DirectoryCollector(sys.argv[1], compiled=speedups.load({})).read()  # installs it
    with open(f.path, "rb") as raw:
        m = mmap.mmap(raw.fileno(), 0, prot=mmap.PROT_READ)
    os.truncate(f.path, 4096)
    print(m[8192], flush=True)
    """
    done = run_child(code, str(tmp_path))
    assert done.returncode == -signal.SIGBUS, (done.returncode, done.stderr)
    assert "Fatal Python error: Bus error" in done.stderr


REQUESTS = "gunicorn_http_requests_total"


def _routes_in(path: Path) -> set:
    """The routes whose request count a fresh reader finds in what the file holds."""
    reader = FileReader(str(path))
    reader.read()
    parsed = (json.loads(key) for key in reader.keys)
    return {labels["route"] for _, sample, labels, _ in parsed if sample == REQUESTS}


@needs_native
def test_a_worker_file_truncated_under_a_running_scrape(start_gunicorn, tmp_path):
    """A worker's counter file shortened while the metrics process (and the standalone
    exporter) hold it mapped: the same metrics process answers 200, what the other files
    hold is served exactly, the cut file counts once as a read error."""
    g = start_gunicorn(app="apps.routed:app", workers=2,
                       extra_args=["--chdir", TESTS]).wait_ready(workers=2)
    routes = 120  # about 10,000 bytes of counter entries per worker
    for n in range(routes):
        assert g.request(f"/x?template=/r/{n}")[0] == 200
    g.scrape_until(lambda s: s.total(REQUESTS) == routes)
    serve = Serve(tmp_path, Path(g.directory)).wait_listening()
    try:
        assert scrape(serve.port).total(REQUESTS) == routes  # it maps the files too
        monitor = g.monitor_pid()
        victim = max(Path(g.directory).glob("counter_*.db"), key=lambda p: p.stat().st_size)
        had = _routes_in(victim)
        os.truncate(victim, 4096)
        lost = had - _routes_in(victim)
        assert lost and lost != had
        expected = {f"/r/{n}": 1.0 for n in range(routes) if f"/r/{n}" not in lost}
        for port in (g.metrics_port, serve.port):
            for _ in range(2):  # counted once, however often it is read
                s: Scrape = scrape(port)  # 200, or it raises
                assert s.value(READ_ERRORS) == 1
                assert {dict(ls)["route"]: v for ls, v in s.series(REQUESTS).items()} \
                    == expected
        assert g.monitor_pid() == monitor and serve.proc.poll() is None
        os.kill(monitor, 0)  # alive
    finally:
        serve.stop()
    assert "was shortened while mapped" in g.output()
