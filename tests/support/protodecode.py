"""Decode the delimited protobuf exposition with the ``protobuf`` package and a schema
compiled at test time (grpcio-tools' protoc) from tests/support/metrics.proto: a decoder
that shares nothing with server/protobuf.py."""
from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Tuple

PROTO = Path(__file__).with_name("metrics.proto")


def compiled(out_dir: Path):
    """The generated ``metrics_pb2`` module, compiled into ``out_dir``."""
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTO.parent}",
                    f"--python_out={out_dir}", str(PROTO)], check=True)
    sys.path.insert(0, str(out_dir))
    try:
        sys.modules.pop("metrics_pb2", None)
        return importlib.import_module("metrics_pb2")
    finally:
        sys.path.remove(str(out_dir))


def decode(pb2, body: bytes) -> List:
    """The MetricFamily messages of a delimited stream (varint length, message)."""
    from google.protobuf.internal.decoder import _DecodeVarint32

    families = []
    pos = 0
    while pos < len(body):
        length, pos = _DecodeVarint32(body, pos)
        family = pb2.MetricFamily()
        family.ParseFromString(body[pos:pos + length])
        families.append(family)
        pos += length
    assert pos == len(body), "the stream ends inside a message"
    return families


def native_buckets(histogram) -> Tuple[Dict[int, int], int]:
    """``{index: count}`` of a Histogram's positive spans and deltas, and its zero count."""
    out: Dict[int, int] = {}
    index = 0
    count = 0
    deltas = iter(histogram.positive_delta)
    for span in histogram.positive_span:
        index += span.offset  # the first index, then the gap after the previous span
        for _ in range(span.length):
            count += next(deltas)
            if count:
                out[index] = count
            index += 1
    return out, histogram.zero_count
