"""Fetch and parse /metrics."""
from __future__ import annotations

import urllib.request
from typing import Callable, Dict, FrozenSet, Optional, Tuple

from prometheus_client.parser import text_string_to_metric_families

from .wait import until

SampleKey = Tuple[str, FrozenSet[Tuple[str, str]]]


class Scrape:
    """One parsed exposition: ``value(name, **labels)`` and sums over label subsets."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.samples: Dict[SampleKey, float] = {}
        self.types: Dict[str, str] = {}
        for family in text_string_to_metric_families(text):
            self.types[family.name] = family.type
            for s in family.samples:
                self.samples[(s.name, frozenset(s.labels.items()))] = s.value

    def value(self, name: str, **labels: str) -> Optional[float]:
        return self.samples.get((name, frozenset(labels.items())))

    def total(self, name: str, **labels: str) -> float:
        """Sum of every sample ``name`` whose labels include ``labels``."""
        want = set(labels.items())
        return sum(v for (n, ls), v in self.samples.items() if n == name and want <= ls)

    def series(self, name: str) -> Dict[FrozenSet[Tuple[str, str]], float]:
        return {ls: v for (n, ls), v in self.samples.items() if n == name}

    def names(self) -> set:
        return {n for n, _ in self.samples}


def fetch_bytes(url: str, timeout: float = 10.0, headers: Optional[dict] = None) -> bytes:
    """The body as sent (a protobuf exposition is no text)."""
    request = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(request, timeout=timeout) as resp:
        return resp.read()


def fetch(url: str, timeout: float = 10.0, headers: Optional[dict] = None) -> str:
    return fetch_bytes(url, timeout, headers).decode()


OPENMETRICS = "application/openmetrics-text; version=1.0.0"


def exemplars(port: int, host: str = "127.0.0.1") -> Dict[SampleKey, Tuple[Dict[str, str],
                                                                           float, float]]:
    """The exemplars of an OpenMetrics scrape: (labels, value, timestamp) by sample."""
    from prometheus_client.openmetrics.parser import text_string_to_metric_families as om

    text = fetch(f"http://{host}:{port}/metrics", headers={"Accept": OPENMETRICS})
    return {(s.name, frozenset(s.labels.items())): (s.exemplar.labels, s.exemplar.value,
                                                    s.exemplar.timestamp)
            for family in om(text) for s in family.samples if s.exemplar is not None}


def scrape(port: int, host: str = "127.0.0.1") -> Scrape:
    return Scrape(fetch(f"http://{host}:{port}/metrics"))


def scrape_until(port: int, condition: Callable[[Scrape], object], timeout: float = 10.0,
                 message: str = "", output: Callable[[], str] = lambda: "") -> Scrape:
    """Requests are recorded after their last byte is sent, so a client can be faster
    than the record: poll the metrics on ``port`` until ``condition(scrape)`` holds. On
    timeout the last scrape and ``output()`` (the process's log) are in the message."""
    last = []

    def check() -> Optional[Scrape]:
        s = scrape(port)
        last[:] = [s]
        return s if condition(s) else None

    try:
        return until(check, timeout=timeout, message=message or "the expected metrics")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; last scrape:\n" + (last[0].text if last else "(none)")
                             + "\n--- process output ---\n" + output()) from None


def assert_get_requests(s: Scrape, counts: Dict[Tuple[str, str], float]) -> None:
    """Exactly ``counts[(route, status)]`` GET requests on each route, and none besides:
    the per-series values and the family's total both checked, so a miscount or a stray
    series fails."""
    for (route, status), count in counts.items():
        assert s.value("gunicorn_http_requests_total", method="GET", route=route,
                       status=status) == count, (route, status)
    assert s.total("gunicorn_http_requests_total") == sum(counts.values())
