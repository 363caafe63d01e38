"""The demo app's request mix and a ledger of what a client sent and got back, by (method,
route, status): shared by the e2e suite and the kube play tests (tests/kube), which compare a
scrape with it exactly."""
from __future__ import annotations

import collections
import threading
import time
from typing import Dict, List, Optional, Tuple

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
