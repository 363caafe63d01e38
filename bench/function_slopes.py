"""Per function, the instructions one request costs in two variants and their difference: a
server's total count moves by 1-5 k between runs, which hides what a change of 2 k does;
function by function, a difference shows where it goes, and the calls per request tell
code that runs more often from the same calls costing more (a cache or heap in another
state).

Input: callgrind files named ``case.variant.requests.run.out`` (``bench/instructions.py
--keep DIR`` writes them for the worker process; for ``bench/asgi_instructions.py
--serve`` name them so by hand). A variant is given as ``DIR:case.variant``. For each
function, its self cost (``callgrind_annotate --inclusive=no``, every function) at the
high request count less that at the low one, divided by the difference of the counts, is
its slope per request; the median of the runs is shown. ``--callers FUNCTION`` shows
instead, for each caller of that function, its calls per request and their cost
(``callgrind_annotate --tree=caller``).

Run: ``python bench/function_slopes.py DIR:uvicorn.plain DIR:uvicorn.plugin [--top 40]
[--callers FUNCTION]``.
"""
from __future__ import annotations

import argparse
import re
import statistics
import subprocess
from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Tuple

#: ``case.variant.requests.run.out``
KEPT = re.compile(r"^(?P<case>[\w-]+)\.(?P<variant>[\w-]+)\.(?P<requests>\d+)\.(?P<run>\d+)"
                  r"\.out$")
#: a function's own line: its count, then ``file:function [object]``
OWN = re.compile(r"^\s*([\d,]+)\s+(\*\s+)?(\S.*?)\s*$")
#: a caller's line under ``--tree=caller``: the cost of its calls, the caller, the calls
CALLER = re.compile(r"^\s*([\d,]+)\s+<\s+(.*?) \(([\d,]+)x\)")
#: the parts of a name that only say where the build ran
NOISE = re.compile(r"/tmp/python-build[^ ]*?/Python-[\d.]+/| \[[^]]*\]")

Costs = Dict[str, Tuple[float, float]]  #: name -> (calls, instructions); calls 0 if unknown


def _number(text: str) -> int:
    return int(text.replace(",", ""))


def annotate(path: Path, callers_of: str = "") -> Costs:
    """Each function's own instructions in one file; with ``callers_of``, each caller of
    that function with its calls and their cost instead."""
    tree = ["--tree=caller"] if callers_of else []
    out = subprocess.run(["callgrind_annotate", "--inclusive=no", "--threshold=100",
                          "--auto=no", "--show-percs=no", *tree, str(path)],
                         capture_output=True, text=True, check=True).stdout
    found: Dict[str, List[float]] = defaultdict(lambda: [0.0, 0.0])
    block: List[str] = []
    for line in out.split("file:function", 1)[-1].splitlines():
        if not line.strip():
            block = []
            continue
        block.append(line)
        own = OWN.match(line)
        if own is None or (callers_of and own.group(2) is None):
            continue
        name = NOISE.sub("", own.group(3))
        if not callers_of:
            found[name][1] += _number(own.group(1))
        elif name.rsplit(":", 1)[-1] == callers_of:
            for caller in filter(None, map(CALLER.match, block[:-1])):
                entry = found[NOISE.sub("", caller.group(2))]
                entry[0] += _number(caller.group(3))
                entry[1] += _number(caller.group(1))
    return {name: (calls, cost) for name, (calls, cost) in found.items()}


def slopes(spec: str, callers_of: str = "") -> Dict[str, List[Tuple[float, float]]]:
    """Per name, (calls, instructions) per request in each run of ``DIR:case.variant``."""
    directory, _, wanted = spec.rpartition(":")
    runs: Dict[str, Dict[int, Path]] = defaultdict(dict)
    for path in Path(directory).iterdir():
        match = KEPT.match(path.name)
        if match and f"{match['case']}.{match['variant']}" == wanted:
            runs[match["run"]][int(match["requests"])] = path
    found: Dict[str, List[Tuple[float, float]]] = defaultdict(list)
    for run in runs.values():
        if len(run) != 2:
            continue
        (low, low_path), (high, high_path) = sorted(run.items())
        below, above = annotate(low_path, callers_of), annotate(high_path, callers_of)
        for name in below.keys() | above.keys():
            (c0, i0), (c1, i1) = below.get(name, (0, 0)), above.get(name, (0, 0))
            found[name].append(((c1 - c0) / (high - low), (i1 - i0) / (high - low)))
    if not found:
        raise SystemExit(f"no pair of runs for {spec}")
    return found


def _median(runs: List[Tuple[float, float]], part: int) -> float:
    return statistics.median(r[part] for r in runs) if runs else 0.0


def table(first: Dict[str, list], second: Dict[str, list], top: int,
          with_calls: bool) -> List[str]:
    """The ``top`` names by the size of their difference in instructions, and the totals."""
    rows = []
    for name in first.keys() | second.keys():
        a, b = _median(first.get(name, []), 1), _median(second.get(name, []), 1)
        calls = (_median(first.get(name, []), 0), _median(second.get(name, []), 0))
        rows.append((b - a, a, b, calls, name))
    rows.sort(key=lambda row: -abs(row[0]))
    head = f"{'difference':>11s} {'first':>9s} {'second':>9s}"
    lines = [head + ("  calls first, second" if with_calls else "") + "  function"]
    for difference, a, b, (ca, cb), name in rows[:top]:
        calls = f"  {ca:6.2f} {cb:6.2f}" if with_calls else ""
        lines.append(f"{difference:+11.1f} {a:9.1f} {b:9.1f}{calls}  {name}")
    total_a, total_b = sum(r[1] for r in rows), sum(r[2] for r in rows)
    lines.append(f"{total_b - total_a:+11.1f} {total_a:9.1f} {total_b:9.1f}  (all)")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("first", help="DIR:case.variant, for instance keep:uvicorn.plain")
    parser.add_argument("second", help="DIR:case.variant, compared with the first")
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--callers", metavar="FUNCTION", default="",
                        help="the callers of FUNCTION (its name without file), with calls")
    args = parser.parse_args()
    first, second = slopes(args.first, args.callers), slopes(args.second, args.callers)
    what = f"calls of {args.callers} by caller" if args.callers else "own instructions"
    print(f"per request, {what}: {args.second} less {args.first} (median of the runs)")
    print("\n".join(table(first, second, args.top, bool(args.callers))))


if __name__ == "__main__":
    main()
