"""The catalogue of every family this exporter writes or derives: names, types, help,
labels and how files are merged. The recorder, the collector and the metric reference in
docs/metrics.md all follow this one list."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple


@dataclass(frozen=True)
class Family:
    name: str  # for counters, without the ``_total`` of the sample
    typ: str  # counter | gauge | histogram
    help: str
    labels: Tuple[str, ...] = ()
    #: gauge multiprocess mode (how values of several processes merge)
    mode: str = ""
    #: the collector adds ``worker_id`` from the writing file's slot
    per_worker: bool = False
    #: histogram bucket bounds come from this setting
    buckets: Optional[str] = None
    #: computed by the collector from another family, never written
    derived_from: Optional[str] = None
    #: where the values come from: request | worker | master | exporter
    origin: str = "request"
    #: storage the family exists with: "any", or "redis" for Redis-only health metrics
    storage: str = "any"
    #: the servers that write it: "any", "asgi" (the ASGI workers' WebSockets), "dirty"
    #: (gunicorn 27's dirty-worker pool)
    servers: str = "any"

    @property
    def sample(self) -> str:
        return self.name + "_total" if self.typ == "counter" else self.name

    @property
    def file_mode(self) -> str:
        return self.mode if self.typ == "gauge" else ""


def _f(*args, **kwargs) -> Family:
    return Family(*args, **kwargs)


ML = ("method", "route")
ERR = ("method", "endpoint", "error_type")

# -- per request (written on the request path) ---------------------------------------------
HTTP_REQUESTS = _f("gunicorn_http_requests", "counter",
                   "HTTP requests completed, by method, route template and status code.",
                   ("method", "route", "status"))
HTTP_DURATION = _f("gunicorn_http_request_duration_seconds", "histogram",
                   "Time from the parsed request to the last byte of the response body.",
                   ML, buckets="duration")
HTTP_REQUEST_SIZE = _f("gunicorn_http_request_size_bytes", "histogram",
                       "Request body bytes received.", ML, buckets="size")
HTTP_RESPONSE_SIZE = _f("gunicorn_http_response_size_bytes", "histogram",
                        "Response body bytes sent.", ML, buckets="size")
HTTP_QUEUE = _f("gunicorn_http_request_queue_duration_seconds", "histogram",
                "Time a request waited between the front proxy stamping it (X-Request-Start "
                "or X-Queue-Start) and a worker starting it; only stamped requests.",
                buckets="queue")
HTTP_QUEUE_INVALID = _f("gunicorn_http_request_queue_invalid", "counter",
                        "Queue stamps not observed as sent: malformed (dropped), negative "
                        "(clock skew, observed as 0), too_large (dropped).", ("reason",))
HTTP_PROTOCOL = _f("gunicorn_http_protocol_requests", "counter",
                   "Requests over a protocol other than HTTP/1.1: HTTP/1.0, HTTP/2, and "
                   "websocket (WebSocket upgrades, ASGI workers); HTTP/1.1 requests are the "
                   "rest of gunicorn_http_requests_total.", ("protocol",))
FAILED_REQUESTS = _f("gunicorn_worker_failed_requests", "counter",
                     "Requests whose application raised an exception, by exception class.",
                     ERR, per_worker=True)
ERROR_HANDLING = _f("gunicorn_worker_error_handling", "counter",
                    "Errors gunicorn handled itself (malformed HTTP, limits, TLS), by type.",
                    ERR, per_worker=True)
IN_FLIGHT = _f("gunicorn_worker_in_flight_requests", "gauge",
               "Requests the worker is handling now.", mode="livesum", per_worker=True,
               origin="worker")

WEBSOCKET_OPEN = _f("gunicorn_websocket_connections", "gauge",
                    "WebSocket connections the worker holds open now (ASGI workers).",
                    mode="livesum", per_worker=True, origin="worker", servers="asgi")
WEBSOCKET_DURATION = _f("gunicorn_websocket_connection_duration_seconds", "histogram",
                        "How long closed WebSocket connections lasted, from the "
                        "application's accept to its return (ASGI workers).",
                        buckets="websocket", servers="asgi")

# -- per worker (derived from the request families of the worker's slot) -------------------
WORKER_REQUESTS = _f("gunicorn_worker_requests", "counter",
                     "Requests handled by the worker slot.", derived_from=HTTP_REQUESTS.name,
                     per_worker=True, origin="worker")
WORKER_DURATION = _f("gunicorn_worker_request_duration_seconds", "histogram",
                     "Request duration per worker slot.", derived_from=HTTP_DURATION.name,
                     per_worker=True, buckets="duration", origin="worker")
WORKER_REQUEST_SIZE = _f("gunicorn_worker_request_size_bytes", "histogram",
                         "Request body bytes per worker slot.",
                         derived_from=HTTP_REQUEST_SIZE.name, per_worker=True,
                         buckets="size", origin="worker")
WORKER_RESPONSE_SIZE = _f("gunicorn_worker_response_size_bytes", "histogram",
                          "Response body bytes per worker slot.",
                          derived_from=HTTP_RESPONSE_SIZE.name, per_worker=True,
                          buckets="size", origin="worker")

# -- per worker (sampled on a timer) -----------------------------------------------------------
WORKER_MEMORY = _f("gunicorn_worker_memory_bytes", "gauge",
                   "Resident memory of the worker process.", mode="livesum",
                   per_worker=True, origin="worker")
WORKER_CPU_SECONDS = _f("gunicorn_worker_cpu_seconds", "counter",
                        "CPU time (user and system) used by the workers of the slot.",
                        per_worker=True, origin="worker")
WORKER_CPU_PERCENT = _f("gunicorn_worker_cpu_percent", "gauge",
                        "CPU use of the worker over the last sampling interval, percent of "
                        "one core.", mode="livesum", per_worker=True, origin="worker")
WORKER_UPTIME = _f("gunicorn_worker_uptime_seconds", "gauge",
                   "Seconds since the worker process started.", mode="livesum",
                   per_worker=True, origin="worker")
WORKER_STATE = _f("gunicorn_worker_state", "gauge",
                  "1 for the worker's current state (running or stopping), else 0.",
                  ("state",), mode="livesum", per_worker=True, origin="worker")
WORKER_CAPACITY = _f("gunicorn_worker_capacity", "gauge",
                     "Requests the worker can handle at once (1 sync, threads gthread, "
                     "worker_connections async).", mode="livesum", per_worker=True,
                     origin="worker")

# -- master view (derived from live workers) ---------------------------------------------------
WORKERS = _f("gunicorn_workers", "gauge",
             "Live workers, busy (handling a request) or idle.", ("state",),
             derived_from=IN_FLIGHT.name, origin="master")

WORKERS_DESIRED = _f("gunicorn_workers_desired", "gauge",
                     "Workers the master aims to run (changed by TTIN/TTOU).",
                     mode="livemax", origin="master")
LISTEN_BACKLOG = _f("gunicorn_listen_backlog", "gauge",
                    "Connections waiting in the kernel's accept queue of a listener "
                    "(Linux TCP_INFO).", ("listener",), mode="livemax", origin="master")
LISTEN_BACKLOG_MAX = _f("gunicorn_listen_backlog_max", "gauge",
                        "Configured accept queue length of a listener.", ("listener",),
                        mode="livemax", origin="master")
MASTER_SIGNALS = _f("gunicorn_master_signals", "counter",
                    "Signals received by the master, by name.", ("signal",), origin="master")
LOG_MESSAGES = _f("gunicorn_log_messages", "counter",
                  "Messages gunicorn logged (gunicorn.error), by level.", ("level",),
                  origin="master")
WORKER_RESTARTS = _f("gunicorn_worker_restart", "counter",
                     "Worker exits by slot and reason: max_requests, timeout, killed, "
                     "crashed, exited, reload, scale_down, shutdown.",
                     ("worker_id", "reason"), origin="master")
WORKER_RESTART_COUNT = _f("gunicorn_worker_restart_count", "counter",
                          "Worker exits by slot, how the process ended (restart_type: "
                          "signal name or exit_<code>) and reason.",
                          ("worker_id", "restart_type", "reason"), origin="master")
MASTER_RESTARTS = _f("gunicorn_master_worker_restart", "counter",
                     "Worker exits seen by the master, by reason.", ("reason",),
                     origin="master")
MASTER_RESTART_COUNT = _f("gunicorn_master_worker_restart_count", "counter",
                          "Worker exits seen by the master, by slot, reason and how the "
                          "process ended.", ("worker_id", "reason", "restart_type"),
                          origin="master")

# -- gunicorn 27's dirty-worker pool (dirty.py; only where dirty_workers and dirty_apps are set)
DIRTY_WORKERS_DESIRED = _f("gunicorn_dirty_workers_desired", "gauge",
                           "Dirty workers the dirty arbiter aims to run (dirty_workers).",
                           mode="livemax", origin="master", servers="dirty")
DIRTY_WORKERS = _f("gunicorn_dirty_workers", "gauge",
                   "Live dirty workers, busy (running a task) or idle.", ("state",),
                   mode="livesum", origin="master", servers="dirty")
DIRTY_TASKS = _f("gunicorn_dirty_tasks", "counter",
                 "Tasks the dirty workers ran, by dirty app.", ("app",), origin="master",
                 servers="dirty")
DIRTY_TASK_FAILURES = _f("gunicorn_dirty_task_failures", "counter",
                         "Tasks whose dirty app raised, by dirty app and exception class.",
                         ("app", "error_type"), origin="master", servers="dirty")
DIRTY_TASK_DURATION = _f("gunicorn_dirty_task_duration_seconds", "histogram",
                         "Time a dirty app took for a task (to its return; a streamed "
                         "result's generator is not included).", ("app",),
                         buckets="duration", origin="master", servers="dirty")
DIRTY_WORKER_EXITS = _f("gunicorn_dirty_worker_exits", "counter",
                        "Dirty worker exits seen by the dirty arbiter, by reason: timeout "
                        "(killed after dirty_timeout), killed (SIGKILL from elsewhere, e.g. "
                        "the OOM killer), crashed (another signal or a non-zero exit code), "
                        "exited (exit code 0: told to stop; or the status was unknown).", ("reason",),
                        origin="master", servers="dirty")

# -- the exporter itself -----------------------------------------------------------------------
BUILD_INFO = _f("gunicorn_exporter_build_info", "gauge",
                "Always 1; the exporter and library versions as labels.",
                ("version", "gunicorn", "prometheus_client", "python"), origin="exporter")
SCRAPE_DURATION = _f("gunicorn_exporter_scrape_duration_seconds", "gauge",
                     "Seconds the previous collection took.", origin="exporter")
FILES_READ = _f("gunicorn_exporter_storage_files", "gauge",
                "Storage files read by the last collection.", origin="exporter")
SAMPLES_READ = _f("gunicorn_exporter_storage_values", "gauge",
                  "Stored values read by the last collection.", origin="exporter")
READ_ERRORS = _f("gunicorn_exporter_read_errors", "counter",
                 "Storage files that could not be read completely.", origin="exporter")
SOURCE_UP = _f("gunicorn_exporter_source_up", "gauge",
               "1 when the last read of the storage (directory or Redis) succeeded.",
               ("source",), origin="exporter")
WARM = _f("gunicorn_exporter_warm", "gauge",
          "1 once the exporter's series tables hold the storage's keys (built by the "
          "metrics process's read at start, or by a scrape's read): until then a scrape "
          "numbers every stored key, several times the work of a repeat scrape.",
          origin="exporter")
TABLE_RESETS = _f("gunicorn_exporter_table_resets", "counter",
                  "Times the exporter dropped its tables of keys and series because they "
                  "held far more than the storage needs (keys that churn: label values that "
                  "keep changing, files replaced with other keys); the read after each "
                  "numbers every key again, as a first read does.", origin="exporter")
LAST_READ = _f("gunicorn_exporter_last_read_timestamp_seconds", "gauge",
               "Unix time of the last successful storage read.", origin="exporter")
UNSTORED = _f("gunicorn_exporter_storage_unstored", "counter",
               "Records (requests, events) a process could not store because its storage "
               "files could not grow (no space left, quota, read-only file system), and one "
               "for each of its files found shortened by another process (whose later "
               "records past the cut are lost); the requests themselves were served.",
               per_worker=True, origin="exporter")

# -- Redis storage (redis_storage/): the flusher of each instance, and the Redis reader -------
REDIS_UP = _f("gunicorn_exporter_redis_up", "gauge",
              "1 when this instance's last flush to Redis succeeded.", mode="livemax",
              origin="exporter", storage="redis")
REDIS_LAST_FLUSH = _f("gunicorn_exporter_redis_last_flush_timestamp_seconds", "gauge",
                      "Unix time of this instance's last successful flush to Redis.",
                      mode="livemax", origin="exporter", storage="redis")
REDIS_FLUSH_DURATION = _f("gunicorn_exporter_redis_flush_duration_seconds", "gauge",
                          "Seconds this instance's last successful flush to Redis took.",
                          mode="livemax", origin="exporter", storage="redis")
REDIS_INSTANCES = _f("gunicorn_exporter_redis_instances", "gauge",
                     "Live gunicorn instances the Redis reader serves.", origin="exporter",
                     storage="redis")
REDIS_FLUSH_AGE = _f("gunicorn_exporter_redis_flush_age_seconds", "gauge",
                     "Seconds since each served instance last flushed (Redis's clock).",
                     ("instance",), origin="exporter", storage="redis")
REDIS_ROUND_TRIPS = _f("gunicorn_exporter_redis_read_round_trips", "gauge",
                       "Redis round trips of the reader's last read.", origin="exporter",
                       storage="redis")
REDIS_FOLDED = _f("gunicorn_exporter_redis_folded_instances", "counter",
                  "Vanished instances this reader folded into the durable totals.",
                  origin="exporter", storage="redis")

ALL: Tuple[Family, ...] = tuple(v for v in globals().values() if isinstance(v, Family))
BY_NAME: Dict[str, Family] = {f.name: f for f in ALL}
DERIVED: Dict[str, Family] = {f.derived_from: f for f in ALL
                              if f.derived_from and f.typ != "gauge"}
