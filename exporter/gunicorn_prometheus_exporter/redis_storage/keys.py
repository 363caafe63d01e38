"""Key layout of one prefix, field encoding and timing rules shared by writers and readers.

Every key of a prefix carries the same hash tag (``{prefix}``), so in a Redis Cluster the
whole prefix lives in one hash slot and every script touches one node::

    {P}:hb         ZSET  incarnation -> time of its last flush (Redis's clock)
    {P}:node       HASH  incarnation -> node name ('' when NODE_NAME is unset)
    {P}:i:<inc>    HASH  '<shard>\\n<entry key>' -> value; '@' -> JSON about the instance
    {P}:t:<node>   HASH  same fields: the folded counters/histograms of ended instances
    {P}:tn         SET   nodes that have a total hash
    {P}:gone       ZSET  incarnation -> fold time (tombstones, kept a day)
    {P}:f:<inc>    HASH  what was folded of an incarnation (for its writer, if it revives)
    {P}:epoch      HASH  'id' -> epoch, new whenever the prefix was lost; 't:<node>' -> when
                         a reader restored that node's part after the loss

``<shard>`` is a multiprocess file's name without ``.db`` (``counter_w0``,
``gauge_livesum_w1``, ``histogram_w0.app``, ``histogram_native_w0`` without ``.nh``);
``<entry key>`` is prometheus_client's JSON key, so a shard in Redis is exactly a file of the
directory. One more shard, ``exemplars``, holds the instance's newest exemplar per sample
(``<timestamp> <value> <trace id> <span id>``); it is never folded: exemplars end with their
instance."""
from __future__ import annotations

from typing import Optional, Tuple

from ..storage import directory as storage_dir

SEPARATOR = "\n"
#: the shard of an instance's exemplars (``storage.exemplars``), merged across its workers
EXEMPLAR_SHARD = "exemplars"
META_FIELD = "@"
#: types whose values are summed across instances and folded into the durable totals
FOLDED_TYPES = ("counter", "histogram", "summary")
#: tombstones of folded incarnations are kept this long
TOMBSTONE_SECONDS = 86400


def base(prefix: str) -> str:
    """``{prefix}:``, or the prefix as given when it already has a hash tag."""
    if "{" in prefix and "}" in prefix.split("{", 1)[1]:
        return prefix if prefix.endswith(":") else prefix + ":"
    return "{" + prefix + "}:"


class Layout:
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.base = base(prefix)
        self.hb = self.base + "hb"
        self.node = self.base + "node"
        self.totals_nodes = self.base + "tn"
        self.gone = self.base + "gone"
        self.epoch = self.base + "epoch"

    def data(self, incarnation: str) -> str:
        return f"{self.base}i:{incarnation}"

    def total(self, node: str) -> str:
        return f"{self.base}t:{node}"

    def snapshot(self, incarnation: str) -> str:
        return f"{self.base}f:{incarnation}"


def shard_name(typ: str, mode: str, identity: str) -> str:
    return f"{typ}_{mode}_{identity}" if mode else f"{typ}_{identity}"


def parse_shard(name: str) -> Optional[storage_dir.DbFile]:
    return storage_dir.parse_stem(name)


def field(shard: str, key: str) -> str:
    return shard + SEPARATOR + key


def split_field(name: str) -> Tuple[str, str]:
    shard, _, key = name.partition(SEPARATOR)
    return shard, key


class Timing:
    """How long silence means death, and how long things are kept, from the settings."""

    def __init__(self, flush_interval: float, socket_timeout: float, ttl_seconds: int,
                 ttl_disabled: bool) -> None:
        self.flush_interval = flush_interval
        #: an instance whose last flush is older than this is folded by whoever sees it
        self.dead_after = max(10.0 * flush_interval, 3.0 * socket_timeout)
        #: expiry of a prefix nobody writes to; never shorter than what liveness needs
        self.ttl = 0 if ttl_disabled else int(max(ttl_seconds, 3 * self.dead_after + 1))
        #: how long the folded state of an incarnation is kept for its reviving writer
        self.snapshot_ttl = int(max(300.0, 10 * self.dead_after, self.ttl))
        #: retries after a failure back off up to this many seconds
        self.backoff_cap = max(0.5, min(5.0, self.dead_after / 3.0))

    @classmethod
    def from_settings(cls, settings) -> "Timing":
        r = settings.redis
        return cls(r.flush_interval, r.socket_timeout, r.ttl_seconds, r.ttl_disabled)
