"""
The supervisor's side of the workers: L{WorkerPool} starts N workers
(through a spawner: the zygote in a real process, memory connections in
tests), pushes them versioned snapshots of what they run, knows which
version each runs, restarts a worker that dies after a backoff, replaces
them all for a new config, and stops them at shutdown after their drain.
"""

from __future__ import annotations

import os
import random
import signal
import socket
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import attrs
from twisted.application.service import Service
from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.protocols import amp
from zope.interface import implementer

from meshproxy.resilience.backoff import Backoff
from meshproxy.workers.interfaces import CallRemote, IWorkerAggregator
from meshproxy.workers.protocol import (
    Bind,
    Configure,
    Drain,
    Endpoints,
    QuietAMP,
    ReopenLogs,
    Shutdown,
    Snapshot,
)

if TYPE_CHECKING:
    from twisted.internet.interfaces import IDelayedCall
    from twisted.python.failure import Failure

    from meshproxy.runtime import Runtime
    from meshproxy.workers.zygote import Zygote

__all__ = [
    "LocalAggregator",
    "WorkerPool",
    "WorkerSlot",
    "WorkersBehind",
    "ZygoteSpawner",
    "snapshotOf",
]

_log = Logger()


class WorkersBehind(Exception):
    """
    Some workers did not come to run the current version in time.

    @ivar behind: one phrase per late worker (C{"worker 1 (pid 4242) runs
        version 3, not 4"}).
    """

    def __init__(self, behind: list[str]) -> None:
        Exception.__init__(self, behind)
        self.behind = behind

    def __str__(self) -> str:
        return "; ".join(self.behind)


@implementer(IWorkerAggregator)
class LocalAggregator:
    """
    The aggregation used until the real one is plugged in: the supervisor's
    own registry and nothing merged from the workers.
    """

    def __init__(self, registry: Any) -> None:
        """
        @param registry: the supervisor's C{CollectorRegistry}, or L{None}.
        """
        self.registry = registry
        self.workers: dict[int, tuple[int, CallRemote]] = {}

    def workerStarted(self, workerId: int, generation: int, callRemote: CallRemote) -> None:
        self.workers[workerId] = (generation, callRemote)

    def workerStopped(self, workerId: int) -> None:
        self.workers.pop(workerId, None)

    def exposition(self, accept: bytes | str | None) -> Deferred[tuple[bytes, str]]:
        from meshproxy.telemetry.metrics import exposition

        if self.registry is None:
            return succeed((b"", "text/plain; version=0.0.4; charset=utf-8"))
        return succeed(exposition(self.registry, accept))

    def state(self, perWorker: bool) -> Deferred[dict[str, Any]]:
        return succeed({})

    def stats(self, own: dict[str, Any]) -> Deferred[dict[str, Any]]:
        return succeed({"routers": own.get("routers", {}), "missing": []})

    def explain(self, router: str, explained: dict[str, Any]) -> Deferred[dict[str, Any]]:
        return succeed(explained)

    def recentNames(self, router: str) -> Deferred[dict[str, Any]]:
        return succeed({"names": [], "missing": []})


def snapshotOf(runtime: Runtime, configGeneration: int) -> Snapshot:
    """
    What the workers of C{runtime} run now: its config in force, its
    namers' prefixes, each router's rules and policy.
    """
    reloader = runtime.reloader
    config = reloader.config if reloader is not None else getattr(runtime, "config", None)
    rules: dict[str, str] = {}
    policies: dict[str, Any] = {}
    for name, router in runtime.routers.items():
        table = getattr(router, "rules", None)
        if table is not None:
            rules[name] = str(table.rulesText)
        policies[name] = getattr(router, "policy", None)
    return Snapshot(
        configGeneration=configGeneration,
        config=config,
        namerPrefixes=tuple(namer.prefix for namer in runtime.namers),
        rules=rules,
        policies=policies,
    )


class WorkerSlot:
    """
    One worker's place in the pool: a restarted worker keeps its slot.

    @ivar workerId: 0 to N-1.
    @ivar state: C{"starting"} (spawned, its first snapshot not acked),
        C{"running"}, C{"restarting"} (waiting its backoff), C{"stopping"},
        C{"stopped"}.
    @ivar generation: how many processes ran in the slot before this one.
    @ivar pid: the process's pid, once it acked its first snapshot.
    @ivar version: the version it acked last (0: none).
    @ivar startedAt: when the current process was spawned (the clock's
        seconds), or L{None}.
    @ivar restarts: how many times the slot's process died and was
        restarted.
    @ivar failures: deaths since the last process that ran
        L{WorkerPool.stableAfter} seconds (for the backoff).
    """

    def __init__(self, workerId: int) -> None:
        self.workerId = workerId
        self.state = "stopped"
        self.generation = -1
        self.pid: int | None = None
        self.version = 0
        self.startedAt: float | None = None
        self.runningSince: float | None = None
        self.restarts = 0
        self.failures = 0
        self.protocol: SupervisorAMP | None = None
        self.restartCall: IDelayedCall | None = None

    def describe(self) -> str:
        """
        C{"worker 1 (pid 4242)"}, as messages name it.
        """
        if self.pid is None:
            return "worker %d" % (self.workerId,)
        return "worker %d (pid %d)" % (self.workerId, self.pid)


class SupervisorAMP(QuietAMP):
    """
    The supervisor's end of one worker's control socket.
    """

    def __init__(self, pool: WorkerPool, slot: WorkerSlot) -> None:
        QuietAMP.__init__(self)
        self.pool = pool
        self.slot = slot
        self.subscriptions: list[Callable[[], None]] = []
        self.lost = False
        self.pid: int | None = None
        self._whenLost: list[Deferred[None]] = []

    @Bind.responder
    def bind(self, prefix: str, service: str) -> dict[str, Any]:
        self.pool.follow(self, prefix, service)
        return {}

    def whenLost(self) -> Deferred[None]:
        """
        A Deferred firing once the connection is gone.
        """
        if self.lost:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._whenLost.append(d)
        return d

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        QuietAMP.connectionLost(self, reason)
        self.lost = True
        for cancel in self.subscriptions:
            cancel()
        self.subscriptions = []
        waiters, self._whenLost = self._whenLost, []
        for d in waiters:
            d.callback(None)
        self.pool.lost(self)


class ZygoteSpawner:
    """
    Starts workers through the zygote: a socketpair per worker, its end
    and the listening sockets passed to the zygote, which forks the
    worker; the supervisor's end is adopted by the reactor and speaks AMP.
    """

    def __init__(
        self,
        zygote: Zygote,
        listeners: Callable[[int], list[tuple[str, socket.socket]]],
        *,
        reactor: Any,
    ) -> None:
        """
        @param zygote: the zygote.
        @param listeners: the listening socket of each router, by name, for
            a worker slot (asked at each spawn: a reload changes them).
        @param reactor: an C{IReactorSocket}.
        """
        self.zygote = zygote
        self.listeners = listeners
        self.reactor = reactor

    def spawn(self, workerId: int, protocol: amp.AMP) -> None:
        """
        Start one worker, connected to C{protocol}.

        @raise ZygoteGone: when the zygote died.
        """
        from twisted.internet.protocol import Factory

        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            names, sockets = [], []
            for name, sock in self.listeners(workerId):
                names.append(name)
                sockets.append(sock)
            self.zygote.spawn({"worker": workerId, "routers": names}, [theirs, *sockets])
        except BaseException:
            mine.close()
            raise
        finally:
            theirs.close()
        mine.setblocking(False)
        factory = Factory.forProtocol(lambda: protocol)
        factory.noisy = False
        self.reactor.adoptStreamConnection(mine.fileno(), socket.AF_UNIX, factory)
        mine.close()

    def close(self) -> None:
        self.zygote.close()


def quietListeners(runtime: Runtime) -> None:
    """
    Keep the supervisor from accepting on its routers' listening sockets
    (the workers do), and from shutting them down when it closes them (a
    shutdown would stop them in every worker too: only a close is
    harmless).
    """
    for parts in runtime.parts.values():
        port = parts.listener.port
        if port is None:
            continue
        stopReading = getattr(port, "stopReading", None)
        if stopReading is not None:
            stopReading()
        # (twisted.internet.tcp.Port shuts down the sockets it bound itself
        # when it closes them)
        port._shouldShutdown = False  # type: ignore[attr-defined]


class WorkerPool(Service):
    """
    The worker processes of a supervisor (see the module docstring).

    @ivar slots: the workers' slots.
    @ivar version: the version of the latest snapshot pushed.
    @ivar aggregator: the L{IWorkerAggregator} told of workers coming and
        going.
    @ivar ackTimeout: seconds L{whenApplied} waits for every worker.
    @ivar stableAfter: seconds a worker must run for its slot's backoff to
        start over.
    @ivar stopTimeout: seconds past the grace period the stop waits before
        killing workers that did not exit.
    """

    stableAfter = 30.0

    def __init__(
        self,
        runtime: Runtime,
        count: int,
        spawner: Any,
        *,
        clock: Any,
        aggregator: IWorkerAggregator | None = None,
        ackTimeout: float = 5.0,
        backoff: Backoff | None = None,
        stopTimeout: float = 5.0,
        snapshot: Callable[[Runtime, int], Snapshot] = snapshotOf,
        kill: Callable[[int, int], None] = os.kill,
        listeners: Any = None,
    ) -> None:
        """
        @param runtime: the supervisor's runtime (config, namers, routers).
        @param count: how many workers, at least 1.
        @param spawner: has C{spawn(workerId, protocol)}, which starts a
            worker and connects it to C{protocol}; or a callable returning
            one, called at the start (the zygote forks then).
        @param clock: an C{IReactorTime}.
        @param aggregator: told of each worker's channel; a
            L{LocalAggregator} of no registry when L{None}.
        @param backoff: the wait before restarting a worker that died
            (0.1 s doubling to 30 s, jittered, when L{None}).
        @param snapshot: makes a snapshot of the runtime (tests give one).
        @param kill: C{os.kill}, for workers that outlive the stop.
        @param listeners: told when a slot has no running worker and when
            it has one again (C{slotDown(workerId)}, C{slotUp(workerId)};
            L{ListenerGroups<meshproxy.workers.sockets.ListenerGroups>}),
            and C{close()} at the stop; or L{None}.
        """
        if count < 1:
            raise ValueError("a worker pool needs at least one worker")
        self.runtime = runtime
        self.slots = [WorkerSlot(i) for i in range(count)]
        self._spawner = spawner
        self.clock = clock
        self.aggregator: IWorkerAggregator = aggregator or LocalAggregator(None)
        self.ackTimeout = ackTimeout
        self.backoff = backoff or Backoff(0.1, 30.0, random=random.Random())
        self.stopTimeout = stopTimeout
        self._snapshotOf = snapshot
        self._kill = kill
        self.listeners = listeners
        self.version = 0
        self.configGeneration = 1
        self._snapshot: Snapshot | None = None
        self.drains: set[tuple[str, str, str]] = set()
        self._waiters: list[tuple[Deferred[None], int, IDelayedCall]] = []
        self._retiring: list[SupervisorAMP] = []
        self._stopping = False

    # -- the start ---------------------------------------------------------------------------

    def startService(self) -> None:
        """
        Start every worker with version 1 of the snapshot.
        """
        Service.startService(self)
        if not hasattr(self._spawner, "spawn"):
            self._spawner = self._spawner()
        self.version += 1
        self._snapshot = self._takeSnapshot()
        for slot in self.slots:
            self._start(slot)

    def _takeSnapshot(self) -> Snapshot:
        snapshot = self._snapshotOf(self.runtime, self.configGeneration)
        return attrs.evolve(snapshot, drains=frozenset(self.drains))

    def _start(self, slot: WorkerSlot) -> None:
        from meshproxy.workers.zygote import ZygoteGone

        slot.restartCall = None
        slot.generation += 1
        slot.pid = None
        slot.state = "starting"
        slot.startedAt = self.clock.seconds()
        slot.runningSince = None
        protocol = slot.protocol = SupervisorAMP(self, slot)
        try:
            self._spawner.spawn(slot.workerId, protocol)
        except ZygoteGone as e:
            _log.critical("cannot start worker {worker}: the zygote is gone ({error})",
                          worker=slot.workerId, error=str(e))
            slot.protocol = None
            slot.state = "stopped"
            return
        self._configure(slot, protocol)

    def _configure(self, slot: WorkerSlot, protocol: SupervisorAMP) -> None:
        version = self.version
        d = protocol.callRemote(Configure, version=version, snapshot=self._snapshot)
        d.addCallbacks(
            self._acked, self._refused, (slot, protocol), None, (slot, protocol, version)
        )

    def _acked(self, answer: dict[str, int], slot: WorkerSlot, protocol: SupervisorAMP) -> None:
        if slot.protocol is not protocol:
            return
        slot.pid = protocol.pid = answer["pid"]
        slot.version = max(slot.version if slot.state == "running" else 0, answer["version"])
        if slot.state == "starting":
            slot.state = "running"
            slot.runningSince = self.clock.seconds()
            _log.info("{worker} running version {version}", worker=slot.describe(),
                      version=slot.version)
            if self.listeners is not None:
                self.listeners.slotUp(slot.workerId)
            self.aggregator.workerStarted(slot.workerId, slot.generation, protocol.callRemote)
        self._checkWaiters()

    def _refused(
        self, failure: Any, slot: WorkerSlot, protocol: SupervisorAMP, version: int
    ) -> None:
        if protocol.lost or slot.protocol is not protocol:
            return
        _log.error("{worker} did not take version {version}: {error}",
                   worker=slot.describe(), version=version, error=failure.getErrorMessage())
        # A worker that cannot run what it is given is restarted with it.
        if protocol.transport is not None:
            protocol.transport.loseConnection()

    # -- pushes -------------------------------------------------------------------------------

    def publish(self) -> int:
        """
        Push the runtime's rules and policies as a new version to every
        worker.

        @return: the new version.
        """
        if not self.running:
            return self.version
        self.version += 1
        self._snapshot = self._takeSnapshot()
        for slot in self.slots:
            if slot.protocol is not None and slot.state in ("starting", "running"):
                self._configure(slot, slot.protocol)
        return self.version

    def configChanged(self) -> None:
        """
        The config in force changed (a reload): replace every worker by one
        built from it; the old ones stop accepting and drain.
        """
        if not self.running:
            return
        self.configGeneration += 1
        self.version += 1
        self._snapshot = self._takeSnapshot()
        for slot in self.slots:
            old = slot.protocol
            if slot.restartCall is not None and slot.restartCall.active():
                slot.restartCall.cancel()
            if old is not None:
                if slot.state == "running":
                    self.aggregator.workerStopped(slot.workerId)
                slot.protocol = None
                self._retire(old)
            self._start(slot)

    def _retire(self, protocol: SupervisorAMP) -> None:
        self._retiring.append(protocol)
        protocol.callRemote(Shutdown).addErrback(lambda _: None)
        protocol.whenLost().addCallback(lambda _: self._retiring.remove(protocol))

    def follow(self, protocol: SupervisorAMP, prefix: str, service: str) -> None:
        """
        Push the endpoints of C{service} under the namer of C{prefix} to a
        worker, now and at each change, while it is connected.
        """
        from meshproxy.discovery.endpoints import Addr

        for namer in self.runtime.namers:
            if str(namer.prefix) == prefix:
                observable = namer.bind(service)
                break
        else:
            protocol.callRemote(Endpoints, prefix=prefix, service=service, addr=Addr.neg())
            return

        def push(addr: Any) -> None:
            if not protocol.lost:
                protocol.callRemote(Endpoints, prefix=prefix, service=service, addr=addr)

        protocol.subscriptions.append(observable.subscribe(push))
        push(observable.current)

    def drain(self, router: str, name: str, address: str, draining: bool) -> Deferred[bool]:
        """
        Drain (or undrain) an endpoint in every running worker.

        @return: a Deferred firing with whether some worker knew it.
        """
        key = (router, name, address)
        if draining:
            self.drains.add(key)
        else:
            self.drains.discard(key)
        if self._snapshot is not None:
            # (workers started from now on drain it too)
            self._snapshot = attrs.evolve(self._snapshot, drains=frozenset(self.drains))
        calls = [
            slot.protocol.callRemote(
                Drain, router=router, name=name, address=address, draining=draining
            ).addCallbacks(lambda answer: answer["known"], lambda _: False)
            for slot in self.slots
            if slot.protocol is not None and slot.state == "running"
        ]
        return gatherResults(calls).addCallback(any)

    def reopenLogs(self) -> None:
        """
        Have every running worker reopen its access log (C{SIGUSR1}).
        """
        for slot in self.slots:
            if slot.protocol is not None and slot.state == "running":
                slot.protocol.callRemote(ReopenLogs).addErrback(lambda _: None)

    # -- versions -----------------------------------------------------------------------------

    def isCurrent(self) -> bool:
        """
        Whether every worker runs the latest version.
        """
        return all(
            slot.state == "running" and slot.version >= self.version for slot in self.slots
        )

    def behind(self) -> list[str]:
        """
        One phrase per worker not running the latest version (empty when
        all do).
        """
        late = []
        for slot in self.slots:
            if slot.state == "running":
                if slot.version < self.version:
                    late.append("%s runs version %d, not %d"
                                % (slot.describe(), slot.version, self.version))
            else:
                late.append("%s is %s" % (slot.describe(), slot.state))
        return late

    def whenApplied(self) -> Deferred[None]:
        """
        Wait until every worker runs the latest version.

        @return: a Deferred firing with L{None} once they do, or failing
            with L{WorkersBehind} naming those that did not after
            L{ackTimeout} seconds.
        """
        if self.isCurrent():
            return succeed(None)
        d: Deferred[None] = Deferred()
        version = self.version
        call = self.clock.callLater(self.ackTimeout, self._late, d)
        self._waiters.append((d, version, call))
        return d

    def _late(self, d: Deferred[None]) -> None:
        self._waiters = [w for w in self._waiters if w[0] is not d]
        d.errback(WorkersBehind(self.behind()))

    def _checkWaiters(self) -> None:
        waiting = []
        for d, version, call in self._waiters:
            if all(
                slot.state == "running" and slot.version >= version for slot in self.slots
            ):
                call.cancel()
                d.callback(None)
            else:
                waiting.append((d, version, call))
        self._waiters = waiting

    def state(self) -> list[dict[str, Any]]:
        """
        Each worker, as C{GET /admin/state} shows it.
        """
        return [
            {
                "id": slot.workerId,
                "pid": slot.pid,
                "state": slot.state,
                "version": slot.version,
                "generation": slot.generation,
                "started": slot.startedAt,
                "restarts": slot.restarts,
            }
            for slot in self.slots
        ]

    # -- deaths and the stop -----------------------------------------------------------------

    def lost(self, protocol: SupervisorAMP) -> None:
        """
        A worker's control socket ended: it exited, was killed, or stopped.
        """
        slot = protocol.slot
        if slot.protocol is not protocol:
            # A retired worker, replaced already.
            return
        slot.protocol = None
        wasRunning = slot.state == "running"
        if wasRunning:
            self.aggregator.workerStopped(slot.workerId)
        if self._stopping or not self.running:
            slot.state = "stopped"
            return
        if wasRunning and self.listeners is not None:
            # The connections the kernel gives this slot meanwhile are
            # taken by the supervisor.
            self.listeners.slotDown(slot.workerId)
        now = self.clock.seconds()
        if slot.runningSince is not None and now - slot.runningSince >= self.stableAfter:
            slot.failures = 0
        slot.failures += 1
        slot.restarts += 1
        delay = self.backoff.delay(slot.failures)
        _log.warn(
            "{worker} exited{how}; restarting it in {delay:.2f} s (restart {n})",
            worker=slot.describe(),
            how="" if wasRunning else " before running",
            delay=delay,
            n=slot.restarts,
        )
        slot.state = "restarting"
        slot.restartCall = self.clock.callLater(delay, self._start, slot)

    def stopService(self) -> Deferred[None]:
        """
        Tell every worker to stop accepting and drain (each within the grace
        period), and wait for them to exit; kill those still there
        L{stopTimeout} seconds past the grace period.
        """
        Service.stopService(self)
        self._stopping = True
        if self.listeners is not None:
            self.listeners.close()
        protocols: list[SupervisorAMP] = list(self._retiring)
        for slot in self.slots:
            if slot.restartCall is not None and slot.restartCall.active():
                slot.restartCall.cancel()
            slot.restartCall = None
            if slot.protocol is not None:
                slot.state = "stopping"
                protocols.append(slot.protocol)
            else:
                slot.state = "stopped"
        for protocol in protocols:
            protocol.callRemote(Shutdown).addErrback(lambda _: None)
        for d, _, call in self._waiters:
            call.cancel()
            d.errback(WorkersBehind(["the process is stopping"]))
        self._waiters = []
        done: Deferred[Any] = gatherResults([p.whenLost() for p in protocols])
        limit = self.runtime.shutdownGrace + self.stopTimeout
        timer = self.clock.callLater(limit, self._killLeft, protocols)
        done.addCallback(lambda _: timer.cancel() if timer.active() else None)
        done.addCallback(lambda _: self._closeSpawner())
        return done

    def _killLeft(self, protocols: Iterable[SupervisorAMP]) -> None:
        for protocol in protocols:
            if protocol.lost:
                continue
            pid = protocol.pid
            _log.warn("worker {worker} (pid {pid}) did not exit after its drain: killing it",
                      worker=protocol.slot.workerId, pid=pid)
            if pid is not None:
                try:
                    self._kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            if protocol.transport is not None:
                protocol.transport.loseConnection()

    def _closeSpawner(self) -> None:
        close = getattr(self._spawner, "close", None)
        if close is not None:
            close()
