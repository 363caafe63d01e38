"""Bounded traffic for the end-to-end suite: the demo app's request mix, clients that send
an exact number of requests (or until stopped), and the ledger of what they sent."""
from __future__ import annotations

import collections
import threading
import time
from typing import Dict, List, Optional, Sequence, Tuple

Key = Tuple[str, str, str]  # (method, route, status)


class Req:
    """One kind of request and the labels the exporter must give it."""

    def __init__(self, path: str, route: str, status: int, method: str = "GET",
                 body: Optional[bytes] = None) -> None:
        self.path, self.route, self.status, self.method, self.body = (path, route, status,
                                                                      method, body)

    def key(self) -> Key:
        return (self.method, self.route, str(self.status))


# The demo app's routes (but /slow, kept for the duration histogram), with the route label
# and status each must be recorded with; 2 of the 9 answer 5xx.
MIX = [
    Req("/", "/", 200),
    Req("/users/17", "/users/{id}", 200),
    Req("/users/90210", "/users/{id}", 200),
    Req("/status/201", "/status/{id}", 201),
    Req("/status/503", "/status/{id}", 503),
    Req("/error", "/error", 500),
    Req("/upload", "/upload", 200, method="POST", body=b"x" * 3000),
    Req("/stream?chunks=4&size=512", "/stream", 200),
    Req("/no/such/page", "unmatched", 404),
]


class Ledger:
    """What the clients sent and got back, by (method, route, status)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counts: Dict[Key, int] = collections.Counter()
        self.failures: List[str] = []

    def record(self, req: Req, status: int, port: int = 0) -> None:
        with self.lock:
            if status != req.status:
                self.failures.append(f"{req.method} 127.0.0.1:{port}{req.path}: {status}, "
                                     f"expected {req.status} at {time.time():.3f}")
            self.counts[(req.method, req.route, str(status))] += 1

    def fail(self, req: Req, error: BaseException, port: int = 0) -> None:
        with self.lock:
            self.failures.append(f"{req.method} 127.0.0.1:{port}{req.path}: {error!r} "
                                 f"at {time.time():.3f}")

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def by_key(self) -> Dict[Key, float]:
        with self.lock:
            return {k: float(v) for k, v in self.counts.items()}

    def by_route(self) -> Dict[Tuple[str], float]:
        out: Dict[Tuple[str], float] = collections.Counter()
        for (_, route, _), v in self.by_key().items():
            out[(route,)] += v
        return dict(out)


def send(port: int, req: Req, ledger: Ledger, timeout: float = 30.0) -> None:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(req.method, req.path, body=req.body)
        resp = conn.getresponse()
        resp.read()
        ledger.record(req, resp.status, port)
    except OSError as exc:
        ledger.fail(req, exc, port)
    finally:
        conn.close()


def burst(ports: Sequence[int], ledger: Ledger, count: int, mix: Sequence[Req] = MIX,
          threads: int = 2, deadline: float = 60.0) -> None:
    """Send exactly ``count`` requests (the ``mix`` in turn, spread over ``ports`` in turn) from
    ``threads`` clients; return when all are answered. Bounded in count and in time."""
    lock = threading.Lock()
    state = {"next": 0}
    stop_at = time.monotonic() + deadline

    def client() -> None:
        while time.monotonic() < stop_at:
            with lock:
                i = state["next"]
                if i >= count:
                    return
                state["next"] = i + 1
            send(ports[i % len(ports)], mix[i % len(mix)], ledger)

    workers = [threading.Thread(target=client, daemon=True) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(deadline + 5)
    assert state["next"] >= count, f"only {state['next']} of {count} requests in {deadline}s"


class Background(threading.Thread):
    """Requests of the mix, one after another, until ``stop()`` (at most ``limit`` requests
    or ``deadline`` seconds, whichever comes first): traffic while a fault is injected."""

    def __init__(self, port: int, ledger: Ledger, mix: Sequence[Req] = MIX,
                 limit: int = 20000, deadline: float = 90.0) -> None:
        super().__init__(daemon=True)
        self.port, self.ledger, self.mix, self.limit, self.deadline = (port, ledger, mix,
                                                                       limit, deadline)
        self._halt = threading.Event()
        self.sent = 0

    def run(self) -> None:
        stop_at = time.monotonic() + self.deadline
        while not self._halt.is_set() and self.sent < self.limit and time.monotonic() < stop_at:
            send(self.port, self.mix[self.sent % len(self.mix)], self.ledger)
            self.sent += 1

    def stop(self) -> int:
        self._halt.set()
        self.join(self.deadline)
        return self.sent

    def __enter__(self) -> "Background":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
