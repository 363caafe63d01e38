"""Entry keys damaged a character at a time, parsed by ``_speedups.parse_key`` and by the
Python parse: the compiled parse must give the Python parts for every key it answers (and
leave every other key, None, to the Python parse, which then answers as it always did).

Denser than the file harness (storage_files.py) for the key grammar: a key of plain
strings with characters inserted, deleted or replaced by ones that matter to JSON (quotes,
backslashes, braces, commas, colons, spaces, control and non-ASCII characters)."""
from __future__ import annotations

import random
from types import ModuleType
from typing import List

from gunicorn_prometheus_exporter.collector import Merger, _parse_key
from gunicorn_prometheus_exporter.storage.mmap_file import sample_key

SEEDS = [sample_key("f", "f_bucket", {"le": "0.5", "route": "/r"}, "Help."),
         sample_key("f", "f_total", {}, ""), '["f","f",{"a":"1","b":"2"},"h"]',
         ' ["f" , "f" , { "a" : "x" } , "h" ] ']
CHARS = '"\\{}[],: \t\n\x00\x1f\x7fa0-é\u2028'


def damaged(rng: random.Random) -> str:
    key = list(rng.choice(SEEDS))
    for _ in range(rng.randint(1, 3)):
        at = rng.randrange(len(key) + 1)
        action = rng.randrange(3)
        if action == 0 or not key:
            key.insert(at, rng.choice(CHARS))
        elif action == 1:
            del key[min(at, len(key) - 1)]
        else:
            key[min(at, len(key) - 1)] = rng.choice(CHARS)
    return "".join(key)


def run(native: ModuleType, cases: int, seed: int) -> List[str]:
    """Each key whose compiled parts differ from the Python ones, as one line."""
    rng = random.Random(seed)
    compiled, python = Merger(native), Merger()
    problems = []
    for _ in range(cases):
        key = damaged(rng)
        parts = native.parse_key(key)
        if parts is not None and parts != _parse_key(key):
            problems.append(f"parse_key({key!r}) = {parts!r}, Python: {_parse_key(key)!r}")
        elif compiled._parse_key(key) != python._parse_key(key):
            problems.append(f"Merger._parse_key({key!r}) differs")
    return problems
