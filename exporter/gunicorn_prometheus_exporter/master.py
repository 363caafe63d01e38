"""The master (arbiter) side of the plugin.

Gunicorn calls a worker class's ``check_config(cfg, log)`` in the master once before the
first fork; from there the plugin sets up storage and adds its own server hooks in front of
the user's (``when_ready``, ``pre_fork``, ``child_exit``, ``worker_exit``, ``on_exit``), so
``worker_class`` alone is a complete set-up. Nothing of gunicorn is replaced: the hooks are
gunicorn's documented ones, chained, and they are added again to the fresh config object a
HUP reload creates (from the worker class's ``__init__``, which runs in the master).

The runtime is no module global: it is kept on gunicorn's own objects (the config it was
made for, and the application object, which a HUP reload keeps), handed to each worker
object, and below it only values go down (the settings, the directory, ``MasterId``)."""
from __future__ import annotations

import functools
import os
import signal
from typing import Any, Dict, Optional, Sequence, Set, Tuple

from . import config, dirty, exits, families, hookchain, identity, logcount, signals, speedups
from .master_id import MasterId
from .server.sockets import shares_port
from .server.supervisor import MetricsSupervisor
from .storage import directory as storage_dir
from .storage.directory import Claim
from .storage.store import ProcessStore
from .writer import Writer

#: the attribute of gunicorn's config and application objects that holds the runtime
RUNTIME_ATTR = "_gunicorn_prometheus_master"
#: how long the master waits for a slot a worker of its own left to be free again (a worker
#: forked a moment before holds a copy of its lock for the few milliseconds until it drops
#: it; a slot held longer is someone else's, and a new one is taken)
SLOT_WAIT = 0.2


class MasterRuntime:
    """Process-wide state of one master; workers inherit a copy through fork."""

    def __init__(self, log: Any, binds: Sequence[Any] = ()) -> None:
        self.log = log
        self.pid = os.getpid()
        try:
            self.settings = config.settings()
            _check_metrics_address(self.settings, binds)
        except config.ConfigError as exc:
            log.error("%s", exc)
            raise SystemExit(1) from None
        self.directory = self.settings.multiproc_dir
        try:
            self.claim, self.writer = self._open_storage(log)
        except OSError as exc:
            log.error("%s", storage_dir.unusable(self.directory, exc))
            raise SystemExit(1) from None
        #: gunicorn 27's dirty arbiter and workers (forked from here) measure through it
        self.dirty_pool = dirty.DirtyPool(self.directory,
                                          self.settings.metrics.duration_buckets)
        self.witness = exits.ExitWitness()
        logcount.counter().use(self.writer, self.witness.observe_log)
        self.worker_claims: Dict[str, Claim] = {}
        self.workers: Dict[str, Any] = {}
        #: slots whose worker ended, taken again first (``_claim_worker_slot``)
        self.slots_left: Set[str] = set()
        self.supervisor: Optional[MetricsSupervisor] = None
        self.arbiter: Optional[Any] = None
        self._signals_installed = False

    def _open_storage(self, log: Any) -> Tuple[Claim, Writer]:
        if storage_dir.prepare(self.directory, self.settings.cleanup.db_files):
            log.info("prometheus: emptied the multiprocess directory %s", self.directory)
        identity.route_prometheus_client(self.directory)
        claim = storage_dir.claim(self.directory, "m")
        writer = Writer(ProcessStore(self.directory, claim.identity), log=log)
        identity.report_unstored(writer.unstored)  # a preloaded app's own metrics
        return claim, writer

    @property
    def id(self) -> MasterId:
        return MasterId(self.pid, self.claim.identity)

    # -- hooks ---------------------------------------------------------------------------------
    def when_ready(self, server: Any) -> None:
        self.arbiter = server
        setattr(server.app, RUNTIME_ATTR, self)  # a HUP replaces the config, not the app
        self.nworkers_changed(server, server.num_workers, None)
        if not self._signals_installed:
            self._signals_installed = True
            server.log.info("prometheus: request path %s", speedups.describe(speedups.load()))
            signals.install(self.writer, self._on_signal)
            self._watch_metrics_process(server)
        self.start_metrics_process()

    def nworkers_changed(self, server: Any, new_value: int, old_value: Any) -> None:
        self.writer.set_gauge(families.WORKERS_DESIRED, float(new_value))

    def pre_fork(self, server: Any, worker: Any) -> None:
        # a HUP sets num_workers from the re-read config before our hooks are on it (they
        # come with the first worker it spawns, here): desired follows the arbiter again
        self.nworkers_changed(server, server.num_workers, None)
        claim = self._claim_worker_slot()
        worker._gunicorn_prometheus_claim = claim
        self.worker_claims[claim.identity] = claim
        self.workers[claim.identity] = worker
        self.restart_metrics_process_if_gone()

    def _claim_worker_slot(self) -> Claim:
        """The slot of a worker about to be forked: first a slot a worker of ours left
        (lowest first), waiting up to ``SLOT_WAIT`` s for it, since a worker forked a moment
        ago still holds a copy of its lock until ``enter_worker``; else the lowest free
        one. Without the wait, a replacement spawned in that moment took a new slot, and
        its files, under worker churn on a loaded machine."""
        for identity in sorted(self.slots_left,
                               key=lambda i: int(storage_dir.worker_id_of(i) or 0)):
            self.slots_left.discard(identity)
            claim = storage_dir.claim_identity(self.directory, identity, wait=SLOT_WAIT)
            if claim is not None:
                return claim
        return storage_dir.claim(self.directory, "w")

    def worker_gone(self, server: Any, worker: Any) -> None:
        """``child_exit`` (and ``worker_exit`` when the master finds a worker vanished)."""
        if os.getpid() != self.pid:
            return  # worker_exit also runs inside the worker itself
        claim = getattr(worker, "_gunicorn_prometheus_claim", None)
        if claim is None or claim.identity not in self.worker_claims:
            return
        intent = exits.take_intent(self.directory, claim.identity)
        reason, how = self.witness.reason(worker.pid, intent)
        slot = storage_dir.worker_id_of(claim.identity) or claim.identity
        self.writer.count(families.WORKER_RESTARTS, (slot, reason))
        self.writer.count(families.WORKER_RESTART_COUNT, (slot, how, reason))
        self.writer.count(families.MASTER_RESTARTS, (reason,))
        self.writer.count(families.MASTER_RESTART_COUNT, (slot, reason, how))
        storage_dir.remove_live_gauges(self.directory, claim.identity)
        self.worker_claims.pop(claim.identity).release()
        self.slots_left.add(claim.identity)
        self.workers.pop(claim.identity, None)

    def on_exit(self, server: Any) -> None:
        for worker in list(self.workers.values()):
            if self.witness.ended(getattr(worker, "pid", None)):
                self.worker_gone(server, worker)  # reaped, but gunicorn halted before child_exit
        if self.supervisor is not None:
            self.supervisor.stop()
            self.supervisor = None

    def _on_signal(self, name: str) -> None:
        """Called from the master's signal handlers, before gunicorn's own."""
        if name == "HUP" and self.arbiter is not None:
            self.witness.reloading.update(self.arbiter.WORKERS)
        elif name in ("INT", "TERM", "QUIT"):
            self.witness.stopping = True

    def _watch_metrics_process(self, server: Any) -> None:
        """Start the metrics server again soon after it dies, from the master's loop: each
        pass calls ``manage_workers`` (at least once a second, and at once after the
        SIGCHLD that gunicorn's handler queues wakes it), which we run after our check.
        Never from a signal handler: forking or logging there can deadlock on a lock the
        interrupted code holds."""
        theirs = server.manage_workers

        @functools.wraps(theirs)
        def manage_workers() -> None:
            try:
                self.restart_metrics_process_if_gone()
            except Exception:  # noqa: BLE001 - never break gunicorn's loop; retried next pass
                self.log.exception("prometheus: starting the metrics server again failed")
            theirs()

        server.manage_workers = manage_workers

    # -- the metrics server ----------------------------------------------------------------------
    def start_metrics_process(self) -> None:
        if self.supervisor is not None:
            return
        listeners = getattr(self.arbiter, "LISTENERS", ())
        supervisor = MetricsSupervisor(self.settings, self.directory, self.log, self.id,
                                       listeners, in_child=self._release_worker_claims)
        if supervisor.needed:
            self.supervisor = supervisor
            supervisor.start()

    def restart_metrics_process_if_gone(self) -> None:
        """Start the metrics server again if it died (checked in each pass of the master's
        loop and at each worker spawn)."""
        if self.supervisor is not None:
            self.supervisor.restart_if_gone()

    def _release_worker_claims(self, keep: Optional[str] = None) -> None:
        """In a forked child (a worker keeps its own, ``keep``; a restarted metrics process
        none): the workers' slot locks it inherited would keep their slots taken after
        those workers end, so a replacement would take a new slot."""
        for identity, claim in self.worker_claims.items():
            if identity != keep:
                claim.release()

    # -- in a freshly forked worker --------------------------------------------------------------
    def enter_worker(self, own: Claim) -> None:
        """Drop what the worker inherited but must not hold: other slots' locks (they
        would keep dead slots 'live'), the master's identity and the metrics socket."""
        self._release_worker_claims(keep=own.identity)
        self.worker_claims = {own.identity: own}
        self.workers = {}
        self.slots_left = set()
        self.claim.release()
        if self.supervisor is not None:
            self.supervisor.forget()
            self.supervisor = None
        for sig in (signal.SIGCHLD,):
            signal.signal(sig, signal.SIG_DFL)


def _check_metrics_address(settings: config.Settings, binds: Sequence[Any]) -> None:
    """A metrics port that is also gunicorn's would take its listener (or fail to bind
    later, after the workers have started): refuse it before any worker."""
    p = settings.prometheus
    if not p.server:
        return
    for bind in binds:
        if shares_port(p.bind_address, p.metrics_port, bind):
            raise config.ConfigError(
                f"metrics address {p.bind_address}:{p.metrics_port} "
                f"(PROMETHEUS_BIND_ADDRESS, PROMETHEUS_METRICS_PORT) takes the port of "
                f"gunicorn's bind {bind[0]}:{bind[1]}; expected a port of its own")


def ensure(cfg: Any, log: Any, app: Any = None) -> MasterRuntime:
    """The master's runtime, with our hooks on ``cfg``: created at the first call (the
    worker class's ``check_config``, or a legacy hook) and kept on ``cfg`` and ``app``, so
    the worker class's ``__init__`` (in the master, with a HUP-reloaded config too) finds
    it on the application object and hands it to the worker."""
    runtime = getattr(cfg, RUNTIME_ATTR, None) or getattr(app, RUNTIME_ATTR, None)
    if runtime is None:
        runtime = MasterRuntime(log, cfg.address)
    setattr(cfg, RUNTIME_ATTR, runtime)
    if app is not None:
        setattr(app, RUNTIME_ATTR, runtime)
    install_hooks(cfg, runtime)
    return runtime


def of(server: Any) -> Optional[MasterRuntime]:
    """The runtime of the master ``server`` (gunicorn's arbiter), if it has one."""
    return getattr(server.app, RUNTIME_ATTR, None) or getattr(server.cfg, RUNTIME_ATTR, None)


def install_hooks(cfg: Any, runtime: MasterRuntime) -> None:
    if getattr(cfg, hookchain.MARK, False):
        return
    hookchain.chain(cfg, "when_ready", lambda server: runtime.when_ready(server))
    hookchain.chain(cfg, "pre_fork", lambda server, worker: runtime.pre_fork(server, worker))
    hookchain.chain(cfg, "child_exit",
                    lambda server, worker: runtime.worker_gone(server, worker))
    hookchain.chain(cfg, "worker_exit",
                    lambda server, worker: runtime.worker_gone(server, worker))
    hookchain.chain(cfg, "on_exit", lambda server: runtime.on_exit(server))
    hookchain.chain(cfg, "nworkers_changed",
                    lambda server, new, old: runtime.nworkers_changed(server, new, old))
    if "dirty_worker_init" in cfg.settings:  # gunicorn >= 27: the dirty-worker pool
        for name, hook in dirty.hooks(runtime.dirty_pool).items():
            hookchain.chain(cfg, name, hook)
    setattr(cfg, hookchain.MARK, True)
