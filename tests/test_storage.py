"""The storage directory: prometheus_client's file format, start-up clean-up, slots."""
import os
import struct

from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector

from gunicorn_prometheus_exporter.collector import DirectoryCollector
from gunicorn_prometheus_exporter.recorder import Recorder
from gunicorn_prometheus_exporter.storage import directory as storage_dir
from gunicorn_prometheus_exporter.storage.mmap_file import MmapFile, sample_key
from gunicorn_prometheus_exporter.storage.reader import FileReader
from gunicorn_prometheus_exporter.storage.store import ProcessStore


def _record(directory, identity, requests):
    store = ProcessStore(str(directory), identity)
    rec = Recorder(store, [0.1, 1.0], [100.0], threaded=False)
    series = rec.series("GET", "/a", "200")
    for _ in range(requests):
        rec.add(series, 0.05, 10, 20)
    store.close()


def test_prometheus_client_reads_our_files(tmp_path):
    _record(tmp_path, "w0", 3)
    _record(tmp_path, "w1", 4)
    registry = CollectorRegistry()
    theirs = {s.name: s.value for f in MultiProcessCollector(registry, path=str(tmp_path))
              .collect() for s in f.samples if s.labels.get("route") == "/a"}
    ours = {s.name: s.value for f in DirectoryCollector(str(tmp_path)).read()
            for s in f.samples if s.labels.get("route") == "/a"}
    assert theirs["gunicorn_http_requests_total"] == ours["gunicorn_http_requests_total"] == 7
    assert theirs["gunicorn_http_request_duration_seconds_count"] == 7
    assert ours["gunicorn_http_request_duration_seconds_count"] == 7
    assert ours["gunicorn_http_request_size_bytes_sum"] == 70


def test_sizes_land_in_the_buckets_their_bounds_name(tmp_path):
    """Sizes are compared with the bounds' floors (a cheaper int bisect): every size must
    still fall where ``size <= bound`` puts it, fractional bounds included, and an empty body
    in the first bucket."""
    store = ProcessStore(str(tmp_path), "w0")
    rec = Recorder(store, [1.0], [0.5, 100.5, 1000.0], threaded=False)
    sizes = (0, 1, 100, 101, 1000, 1001)
    series = rec.series("POST", "/a", "200")
    for size in sizes:
        rec.add(series, 0.01, size, size)
    store.close()
    buckets = {s.labels["le"]: s.value for f in DirectoryCollector(str(tmp_path)).read()
               if f.name == "gunicorn_http_request_size_bytes" for s in f.samples
               if s.name.endswith("_bucket")}
    # cumulative: <=0.5 {0}, <=100.5 {0, 1, 100}, <=1000 {+101, 1000}, +Inf all six
    assert buckets == {"0.5": 1, "100.5": 3, "1000.0": 5, "+Inf": 6}
    sums = {s.name: s.value for f in DirectoryCollector(str(tmp_path)).read()
            for s in f.samples if s.name.startswith("gunicorn_http_")
            and s.name.endswith("_bytes_sum")}
    assert sums == {"gunicorn_http_request_size_bytes_sum": sum(sizes),
                    "gunicorn_http_response_size_bytes_sum": sum(sizes)}


def test_reopened_slot_continues_its_counters(tmp_path):
    _record(tmp_path, "w0", 3)
    _record(tmp_path, "w0", 2)  # the next worker of slot 0
    families = {f.name: f for f in DirectoryCollector(str(tmp_path)).read()}
    assert families["gunicorn_worker_requests"].samples[0].value == 5


def test_reader_stops_at_a_torn_entry_and_reports_it(tmp_path):
    path = str(tmp_path / "counter_w0.db")
    f = MmapFile(path)
    i = f.index(sample_key("c", "c_total", {}, "h"))
    f.values[i] = 4.0
    # a writer died in the middle of appending: the length says more than was written
    used = struct.unpack_from("<i", f._m, 0)[0]
    struct.pack_into("<i", f._m, used, 999)
    struct.pack_into("<i", f._m, 0, used + 8)
    reader = FileReader(path)
    assert reader.read() == (4.0,)
    assert reader.torn and reader.keys == [sample_key("c", "c_total", {}, "h")]


def test_cleanup_spares_a_directory_in_use(tmp_path):
    _record(tmp_path, "w0", 1)
    claim = storage_dir.claim(str(tmp_path), "m")
    assert storage_dir.prepare(str(tmp_path), cleanup=True) is False
    assert os.path.exists(tmp_path / "counter_w0.db")
    claim.release()
    assert storage_dir.prepare(str(tmp_path), cleanup=True) is True
    assert not any(name.endswith(".db") for name in os.listdir(tmp_path))


def test_slots_are_exclusive_and_reused(tmp_path):
    a = storage_dir.claim(str(tmp_path), "w")
    b = storage_dir.claim(str(tmp_path), "w")
    assert (a.identity, b.identity) == ("w0", "w1")
    assert storage_dir.is_live(str(tmp_path), "w0")
    a.release()
    assert not storage_dir.is_live(str(tmp_path), "w0")
    assert storage_dir.claim(str(tmp_path), "w").identity == "w0"


def test_a_slot_held_by_a_freshly_forked_child_is_waited_for(tmp_path):
    """A child forked while the master holds slot w0 holds a copy of its lock until it
    drops it; the master, once w0's worker is gone, gets w0 back by waiting for that,
    not a new slot (which would leave another slot's files behind)."""
    claim = storage_dir.claim(str(tmp_path), "w")
    ready, go = os.pipe()
    child = os.fork()
    if child == 0:  # holds the inherited copy until told to drop it
        os.read(ready, 1)
        os._exit(0)
    claim.release()
    assert storage_dir.claim_identity(str(tmp_path), "w0") is None
    assert storage_dir.claim(str(tmp_path), "w").identity == "w1"
    os.write(go, b"x")  # the child drops the copy (exits) while the master waits
    again = storage_dir.claim_identity(str(tmp_path), "w0", wait=30)
    os.waitpid(child, 0)
    assert again is not None and again.identity == "w0"


def test_restart_empties_the_directory_unless_told_not_to(start_gunicorn, tmp_path):
    directory = str(tmp_path / "shared")
    for cleanup, expected in (("true", 3), ("true", 3), ("false", 6)):
        g = start_gunicorn(workers=1, env={"PROMETHEUS_MULTIPROC_DIR": directory,
                                           "CLEANUP_DB_FILES": cleanup}).wait_ready(workers=1)
        for _ in range(3):
            assert g.request("/")[0] == 200
        g.scrape_until(lambda s: s.total("gunicorn_http_requests_total") == expected)
        g.stop()
