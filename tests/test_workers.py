"""
Tests for L{meshproxy.workers}: the C{workers} setting, the AMP commands,
the pushed namer, the worker's responders, and the supervisor's pool
driven over memory connections on a fake clock.
"""

from __future__ import annotations

import json
import os
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.protocols import amp
from twisted.python import usage
from twisted.test.iosim import FakeTransport, connect
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from meshproxy.config import ConfigError, parseConfig
from meshproxy.discovery.endpoints import Addr, Endpoint, Observable
from meshproxy.resilience.backoff import Backoff
from meshproxy.routing.path import Path
from meshproxy.workers.count import availableCPUs, cgroupQuota, resolveWorkers
from meshproxy.workers.interfaces import IWorkerAggregator
from meshproxy.workers.namer import PushedNamer
from meshproxy.workers.protocol import Configure, Pickled, Snapshot
from meshproxy.workers.supervisor import LocalAggregator, WorkerPool, WorkersBehind
from meshproxy.workers.worker import WorkerLocator
from meshproxy.workers.zygote import ZygoteGone
from tests.test_admin_api import CONFIG_VERSION, _RulesMixin, quoted
from tests.test_admin_rules import USERS_V2

CONFIG = """\
%s
namers:
  - {kind: static, prefix: /#/static, services: {a: ["127.0.0.1:8081"]}}
routers:
  - name: web
    listen: "tcp:0:interface=127.0.0.1"
    identifier: {kind: host}
    rules: "/svc => /#/static;"
"""


class WorkersSettingTests(SynchronousTestCase):
    """
    The C{workers} key, C{--workers}, and what C{auto} means.
    """

    def workers(self, text: str) -> Any:
        return parseConfig(CONFIG % (text,)).workers

    def test_defaultIsOne(self) -> None:
        """
        Without the key, one process: nothing changes.
        """
        self.assertEqual(self.workers(""), 1)

    def test_numberAndAuto(self) -> None:
        self.assertEqual(self.workers("workers: 4"), 4)
        self.assertEqual(self.workers("workers: 64"), 64)
        self.assertEqual(self.workers("workers: auto"), "auto")

    def test_badValues(self) -> None:
        """
        Zero, too many, a string number, a boolean, a float and a misspelt
        C{auto} are refused with the key named.
        """
        for text, message in [
            ("0", "workers: must be between 1 and 64, got 0"),
            ("65", "workers: must be between 1 and 64, got 65"),
            ('"3"', 'workers: expected a number of worker processes (1 to 64) or "auto",'
                    ' got "3"'),
            ("true", 'workers: expected a number of worker processes (1 to 64) or "auto",'
                     " got true"),
            ("2.0", 'workers: expected a number of worker processes (1 to 64) or "auto",'
                    " got 2.0"),
            ("autoo", 'workers: expected a number of worker processes (1 to 64) or "auto",'
                      ' got "autoo"'),
        ]:
            with self.assertRaises(ConfigError) as caught:
                self.workers("workers: " + text)
            self.assertIn(message, str(caught.exception))

    def options(self, *args: str) -> Any:
        import os

        from meshproxy.tap import Options

        path = self.mktemp()
        with open(path, "w") as f:
            f.write(CONFIG % ("workers: 3",))
        options = Options()
        options.parseOptions(["--config", os.path.abspath(path), *args])
        return options

    def test_optionWinsOverTheFile(self) -> None:
        self.assertEqual(self.options().workerCount(), 3)
        self.assertEqual(self.options("--workers", "2").workerCount(), 2)
        self.assertEqual(self.options("-w", "1").workerCount(), 1)

    def test_optionAuto(self) -> None:
        self.assertEqual(self.options("--workers", "auto").workerCount(), availableCPUs())

    def test_badOption(self) -> None:
        for bad in ("0", "65", "two", "1.5", ""):
            with self.assertRaises(usage.UsageError) as caught:
                self.options("--workers", bad)
            self.assertIn("--workers: expected a number of worker processes (1 to 64) or"
                          " auto", str(caught.exception))

    def test_autoCountsAffinity(self) -> None:
        self.assertEqual(availableCPUs(lambda: {0, 1, 2, 3}, lambda: None), 4)

    def test_autoHonoursTheQuota(self) -> None:
        """
        A cgroup quota lower than the affinity mask wins, rounded up.
        """
        self.assertEqual(availableCPUs(lambda: {0, 1, 2, 3}, lambda: 1.5), 2)
        self.assertEqual(availableCPUs(lambda: {0, 1}, lambda: 8.0), 2)
        self.assertEqual(availableCPUs(lambda: {0, 1}, lambda: 0.2), 1)
        self.assertEqual(availableCPUs(set, lambda: None), 1)

    def test_cgroupQuota(self) -> None:
        """
        C{cpu.max} of the process's cgroup v2: quota over period, L{None}
        without a quota, without cgroup v2 or when unreadable.
        """
        files = {
            "/proc/self/cgroup": "0::/system.slice/mesh.service\n",
            "/sys/fs/cgroup/system.slice/mesh.service/cpu.max": "250000 100000\n",
        }

        def read(path: str) -> str:
            try:
                return files[path]
            except KeyError:
                raise FileNotFoundError(path) from None

        self.assertEqual(cgroupQuota(read), 2.5)
        files["/sys/fs/cgroup/system.slice/mesh.service/cpu.max"] = "max 100000\n"
        self.assertIsNone(cgroupQuota(read))
        files["/sys/fs/cgroup/system.slice/mesh.service/cpu.max"] = "garbage\n"
        self.assertIsNone(cgroupQuota(read))
        files["/proc/self/cgroup"] = "4:memory:/x\n"
        self.assertIsNone(cgroupQuota(read))
        del files["/proc/self/cgroup"]
        self.assertIsNone(cgroupQuota(read))

    def test_resolve(self) -> None:
        self.assertEqual(resolveWorkers(3, lambda: 8), 3)
        self.assertEqual(resolveWorkers("auto", lambda: 8), 8)


class _Echo(amp.Command):
    arguments = [(b"value", Pickled())]
    response = [(b"value", Pickled())]


class _EchoLocator(amp.CommandLocator):
    @_Echo.responder
    def echo(self, value: Any) -> dict[str, Any]:
        return {"value": value}


def _pair(server: amp.AMP, client: amp.AMP) -> Any:
    return connect(
        server, FakeTransport(server, isServer=True),
        client, FakeTransport(client, isServer=False),
        greet=False,
    )


class PickledTests(SynchronousTestCase):
    """
    L{Pickled} carries values larger than one AMP value.
    """

    def test_bigValueRoundTrip(self) -> None:
        server = amp.AMP(locator=_EchoLocator())
        client = amp.AMP()
        pump = _pair(server, client)
        value = {"rules": "x" * 300_000, "addr": Addr.bound(frozenset([Endpoint("h", 1)]))}
        d = client.callRemote(_Echo, value=value)
        pump.flush()
        self.assertEqual(self.successResultOf(d), {"value": value})


class PushedNamerTests(SynchronousTestCase):
    """
    L{PushedNamer}: a bound name is asked of the supervisor once, pending
    until its first push.
    """

    def test_bindAsksOnce(self) -> None:
        asked: list[tuple[str, str]] = []
        namer = PushedNamer(Path.read("/#/static"), lambda p, s: asked.append((p, s)))
        observable = namer.bind("a")
        self.assertIs(namer.bind("a"), observable)
        self.assertEqual(asked, [("/#/static", "a")])
        self.assertEqual(observable.current, Addr.pending())
        self.assertTrue(namer.loaded)
        self.successResultOf(namer.whenLoaded())

    def test_updateSetsTheValue(self) -> None:
        namer = PushedNamer(Path.read("/#/static"), lambda p, s: None)
        observable = namer.bind("a")
        seen: list[Addr] = []
        observable.subscribe(seen.append)
        addr = Addr.bound(frozenset([Endpoint("127.0.0.1", 8081)]))
        namer.update("a", addr)
        self.assertEqual(seen, [addr])
        # A push for a name not bound yet is kept for its bind.
        namer.update("b", Addr.neg())
        self.assertEqual(namer.bind("b").current, Addr.neg())


# -- the pool -----------------------------------------------------------------------------------


class FakeWorker:
    """
    The worker side as L{WorkerLocator} drives it.
    """

    def __init__(self, pid: int, clock: Clock) -> None:
        self.pid = pid
        self.reactor = clock
        self.snapshots: list[tuple[int, Snapshot]] = []
        self.hold = False
        self.held: list[Deferred[dict[str, int]]] = []
        self.endpoints: list[tuple[str, str, Addr]] = []
        self.drains: list[tuple[str, str, str, bool]] = []
        self.known = True

    def configure(self, version: int, snapshot: Snapshot) -> Any:
        self.snapshots.append((version, snapshot))
        answer = {"version": version, "pid": self.pid}
        if self.hold:
            d: Deferred[dict[str, int]] = Deferred()
            self.held.append(d)
            return d.addCallback(lambda _: answer)
        return answer

    def drain(self, router: str, name: str, address: str, draining: bool) -> bool:
        self.drains.append((router, name, address, draining))
        return self.known


class FakeSpawner:
    """
    Starts "workers" as memory AMP connections, each with a L{FakeWorker}.
    """

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.pumps: list[Any] = []
        self.workers: list[FakeWorker] = []
        self.protocols: list[amp.AMP] = []
        self.stopped: list[FakeWorker] = []
        self.broken = False
        self.hold = False

    def spawn(self, workerId: int, protocol: amp.AMP) -> None:
        if self.broken:
            raise ZygoteGone("gone")
        worker = FakeWorker(1000 + len(self.workers), self.clock)
        worker.hold = self.hold
        workerEnd = amp.AMP()

        def stop() -> None:
            self.stopped.append(worker)
            workerEnd.transport.loseConnection()

        workerEnd.locator = WorkerLocator(worker, stop)  # type: ignore[arg-type]
        workerEnd.boxReceiver = workerEnd  # (the locator given after __init__)
        self.workers.append(worker)
        self.protocols.append(workerEnd)
        self.pumps.append(_pair(protocol, workerEnd))  # type: ignore[arg-type]

    def flush(self) -> None:
        for _ in range(3):
            for pump in self.pumps:
                pump.flush()
            # (a worker stops on the reactor's next turn)
            self.clock.advance(0)

    def kill(self, index: int) -> None:
        """
        The worker's process dies: its end of the connection goes.
        """
        self.protocols[index].transport.loseConnection()
        self.flush()


class FakeNamer:
    def __init__(self, prefix: str) -> None:
        self.prefix = Path.read(prefix)
        self.observables: dict[str, Observable] = {}

    def bind(self, service: str) -> Observable:
        return self.observables.setdefault(service, Observable(Addr.pending()))


class FakeRuntime:
    def __init__(self) -> None:
        self.rules = "/svc => /#/static;"
        self.namers = [FakeNamer("/#/static")]
        self.shutdownGrace = 10.0


class RecordingAggregator(LocalAggregator):
    def __init__(self) -> None:
        LocalAggregator.__init__(self, None)
        self.events: list[tuple[Any, ...]] = []

    def workerStarted(self, workerId: int, generation: int, callRemote: Any) -> None:
        LocalAggregator.workerStarted(self, workerId, generation, callRemote)
        self.events.append(("started", workerId, generation))

    def workerStopped(self, workerId: int) -> None:
        LocalAggregator.workerStopped(self, workerId)
        self.events.append(("stopped", workerId))


class _Random:
    def random(self) -> float:
        return 1.0


class PoolTests(SynchronousTestCase):
    """
    L{WorkerPool} against memory workers on a fake clock.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.spawner = FakeSpawner(self.clock)
        self.runtime = FakeRuntime()
        self.aggregator = RecordingAggregator()
        self.kills: list[tuple[int, int]] = []
        self.pool = WorkerPool(
            self.runtime,  # type: ignore[arg-type]
            2,
            self.spawner,
            clock=self.clock,
            aggregator=self.aggregator,
            backoff=Backoff(1.0, 8.0, random=_Random()),
            snapshot=lambda runtime, generation: Snapshot(
                generation, None, (), {"web": runtime.rules}, {}  # type: ignore[attr-defined]
            ),
            kill=lambda pid, sig: self.kills.append((pid, sig)),
        )

    def start(self) -> None:
        self.pool.startService()
        self.spawner.flush()

    def test_defaultAggregator(self) -> None:
        verifyObject(IWorkerAggregator, LocalAggregator(None))

    def test_startsEveryWorkerWithVersionOne(self) -> None:
        self.start()
        self.assertEqual(len(self.spawner.workers), 2)
        for worker in self.spawner.workers:
            [(version, snapshot)] = worker.snapshots
            self.assertEqual(version, 1)
            self.assertEqual(snapshot.rules, {"web": "/svc => /#/static;"})
        self.assertEqual(
            [(s["id"], s["pid"], s["state"], s["version"], s["restarts"])
             for s in self.pool.state()],
            [(0, 1000, "running", 1, 0), (1, 1001, "running", 1, 0)],
        )
        self.assertTrue(self.pool.isCurrent())
        self.assertEqual(self.pool.behind(), [])
        self.assertEqual(self.aggregator.events, [("started", 0, 0), ("started", 1, 0)])

    def test_notCurrentUntilEveryAck(self) -> None:
        """
        Until each worker acked the version, the pool is not current and
        says which worker it waits for.
        """
        self.spawner.hold = True
        self.start()
        self.assertFalse(self.pool.isCurrent())
        self.assertEqual(self.pool.behind(), ["worker 0 is starting", "worker 1 is starting"])
        self.spawner.workers[0].held[0].callback(None)
        self.spawner.flush()
        self.assertEqual(self.pool.behind(), ["worker 1 is starting"])
        self.spawner.workers[1].held[0].callback(None)
        self.spawner.flush()
        self.assertTrue(self.pool.isCurrent())

    def test_publishPushesANewVersion(self) -> None:
        self.start()
        self.runtime.rules = "/svc => /#/other;"
        self.assertEqual(self.pool.publish(), 2)
        d = self.pool.whenApplied()
        self.spawner.flush()
        self.successResultOf(d)
        for worker in self.spawner.workers:
            self.assertEqual(
                [(v, s.rules["web"]) for v, s in worker.snapshots],
                [(1, "/svc => /#/static;"), (2, "/svc => /#/other;")],
            )
        self.assertEqual([s["version"] for s in self.pool.state()], [2, 2])

    def test_whenAppliedNamesTheLateWorker(self) -> None:
        """
        A worker that does not ack within the timeout is named by the
        failure; the others' acks are not enough.
        """
        self.start()
        self.spawner.workers[1].hold = True
        self.pool.publish()
        d = self.pool.whenApplied()
        self.spawner.flush()
        self.assertNoResult(d)
        self.clock.advance(self.pool.ackTimeout)
        failure = self.failureResultOf(d, WorkersBehind)
        self.assertEqual(failure.value.behind, ["worker 1 (pid 1001) runs version 1, not 2"])

    def test_whenAppliedAtOnceWhenCurrent(self) -> None:
        self.start()
        self.successResultOf(self.pool.whenApplied())

    def test_deadWorkerRestartedAfterBackoff(self) -> None:
        """
        A worker whose connection ends is restarted after the backoff, in
        its slot, with a new generation and the current version; the other
        worker is not touched.
        """
        self.start()
        self.spawner.kill(0)
        [slot0, slot1] = self.pool.state()
        self.assertEqual((slot0["state"], slot0["restarts"]), ("restarting", 1))
        self.assertEqual(slot1["state"], "running")
        self.assertEqual(self.aggregator.events[-1], ("stopped", 0))
        self.assertEqual(len(self.spawner.workers), 2)
        self.clock.advance(0.99)
        self.assertEqual(len(self.spawner.workers), 2)
        self.clock.advance(0.01)
        self.spawner.flush()
        self.assertEqual(len(self.spawner.workers), 3)
        [slot0, slot1] = self.pool.state()
        self.assertEqual(
            (slot0["state"], slot0["pid"], slot0["generation"], slot0["version"]),
            ("running", 1002, 1, 1),
        )
        self.assertEqual(self.aggregator.events[-1], ("started", 0, 1))
        self.assertEqual(self.spawner.stopped, [])

    def test_backoffGrowsThenStartsOver(self) -> None:
        """
        Each quick death doubles the wait; a worker that ran long enough
        starts the backoff over.
        """
        self.start()
        waits = []
        for _ in range(3):
            self.spawner.kill(0)
            call = self.pool.slots[0].restartCall
            assert call is not None
            waits.append(call.getTime() - self.clock.seconds())
            self.clock.advance(waits[-1])
            self.spawner.flush()
            # The new worker of slot 0 is the last one spawned.
            self.spawner.protocols.insert(0, self.spawner.protocols.pop())
        self.assertEqual(waits, [1.0, 2.0, 4.0])
        self.clock.advance(self.pool.stableAfter)
        self.spawner.kill(0)
        call = self.pool.slots[0].restartCall
        assert call is not None
        self.assertEqual(call.getTime() - self.clock.seconds(), 1.0)

    def test_zygoteGone(self) -> None:
        """
        A worker that cannot be spawned leaves its slot stopped, and the
        pool not current.
        """
        self.spawner.broken = True
        self.start()
        self.assertEqual([s["state"] for s in self.pool.state()], ["stopped", "stopped"])
        self.assertFalse(self.pool.isCurrent())

    def test_stopDrainsEveryWorker(self) -> None:
        """
        The stop tells each worker to shut down and fires once they are all
        gone; nothing is restarted.
        """
        self.start()
        d = self.pool.stopService()
        self.assertNoResult(d)
        self.spawner.flush()
        self.successResultOf(d)
        self.assertEqual(self.spawner.stopped, self.spawner.workers)
        self.assertEqual([s["state"] for s in self.pool.state()], ["stopped", "stopped"])
        self.clock.advance(100)
        self.assertEqual(len(self.spawner.workers), 2)
        self.assertEqual(self.kills, [])

    def test_stopKillsWorkersThatStay(self) -> None:
        """
        A worker still there after the grace period and the stop timeout is
        killed.
        """
        import signal

        self.start()
        # Worker 1 ignores its Shutdown.
        self.spawner.protocols[1].locator.stop = lambda: None  # type: ignore[attr-defined]
        d = self.pool.stopService()
        self.spawner.flush()
        self.assertNoResult(d)
        self.clock.advance(self.runtime.shutdownGrace + self.pool.stopTimeout)
        self.spawner.flush()
        self.successResultOf(d)
        self.assertEqual(self.kills, [(1001, signal.SIGKILL)])

    def test_configChangedReplacesEveryWorker(self) -> None:
        """
        A new config: each slot gets a new process of the next generation,
        and the old ones are told to shut down.
        """
        self.start()
        old = list(self.spawner.workers)
        self.pool.configChanged()
        self.spawner.flush()
        self.assertEqual(self.spawner.stopped, old)
        self.assertEqual(len(self.spawner.workers), 4)
        new = self.spawner.workers[2:]
        self.assertEqual([w.snapshots[0][1].configGeneration for w in new], [2, 2])
        self.assertEqual(
            [(s["state"], s["generation"], s["version"], s["restarts"])
             for s in self.pool.state()],
            [("running", 1, 2, 0), ("running", 1, 2, 0)],
        )
        self.assertEqual(
            self.aggregator.events[2:],
            [("stopped", 0), ("stopped", 1), ("started", 0, 1), ("started", 1, 1)],
        )

    def test_followPushesEndpoints(self) -> None:
        """
        A worker's Bind makes the supervisor push the namer's answer now and
        at each change, until the worker goes.
        """
        from meshproxy.workers.protocol import Bind

        self.start()
        pushed: list[tuple[str, str, Addr]] = []
        worker = self.spawner.workers[0]
        worker.namers = {}  # type: ignore[attr-defined]
        self.spawner.protocols[0].locator.worker.endpoints = (  # type: ignore[attr-defined]
            lambda prefix, service, addr: pushed.append((prefix, service, addr))
        )
        d = self.spawner.protocols[0].callRemote(Bind, prefix="/#/static", service="a")
        self.spawner.flush()
        self.successResultOf(d)
        self.assertEqual(pushed, [("/#/static", "a", Addr.pending())])
        addr = Addr.bound(frozenset([Endpoint("127.0.0.1", 8081)]))
        self.runtime.namers[0].observables["a"].set(addr)
        self.spawner.flush()
        self.assertEqual(pushed[-1], ("/#/static", "a", addr))
        # An unknown prefix is a negative answer.
        self.spawner.protocols[0].callRemote(Bind, prefix="/#/nope", service="a")
        self.spawner.flush()
        self.assertEqual(pushed[-1], ("/#/nope", "a", Addr.neg()))
        self.spawner.kill(0)
        self.assertFalse(self.runtime.namers[0].observables["a"].subscribed)

    def test_drainsReachWorkersStartedLater(self) -> None:
        """
        A worker started after a drain gets it in its snapshot; an undrain
        takes it out.
        """
        self.start()
        self.pool.drain("web", "/#/static/a", "127.0.0.1:8081", True)
        self.spawner.flush()
        self.spawner.kill(0)
        self.clock.advance(1.0)
        self.spawner.flush()
        restarted = self.spawner.workers[-1]
        self.assertEqual(
            restarted.snapshots[0][1].drains, {("web", "/#/static/a", "127.0.0.1:8081")}
        )
        self.pool.drain("web", "/#/static/a", "127.0.0.1:8081", False)
        self.pool.publish()
        self.spawner.flush()
        self.assertEqual(restarted.snapshots[-1][1].drains, frozenset())

    def test_drainReachesEveryWorker(self) -> None:
        self.start()
        self.spawner.workers[0].known = False
        d = self.pool.drain("web", "/#/static/a", "127.0.0.1:8081", True)
        self.spawner.flush()
        self.assertTrue(self.successResultOf(d))
        for worker in self.spawner.workers:
            self.assertEqual(worker.drains, [("web", "/#/static/a", "127.0.0.1:8081", True)])
        self.spawner.workers[1].known = False
        d = self.pool.drain("web", "/#/static/a", "127.0.0.1:8081", False)
        self.spawner.flush()
        self.assertFalse(self.successResultOf(d))


class WorkerLocatorTests(SynchronousTestCase):
    """
    The worker's responders, and the aggregation's commands handed to the
    extra locator.
    """

    def test_unknownCommandsGoToTheExtraLocator(self) -> None:
        clock = Clock()
        worker = FakeWorker(7, clock)
        locator = WorkerLocator(worker, lambda: None, extra=_EchoLocator())  # type: ignore[arg-type]
        server = amp.AMP(locator=locator)
        client = amp.AMP()
        pump = _pair(server, client)
        d = client.callRemote(_Echo, value=[1, 2])
        pump.flush()
        self.assertEqual(self.successResultOf(d), {"value": [1, 2]})
        d = client.callRemote(Configure, version=3, snapshot=Snapshot(1, None, (), {}, {}))
        pump.flush()
        self.assertEqual(self.successResultOf(d), {"version": 3, "pid": 7})

    def test_extraMadeOnceTheWorkerIsBuilt(self) -> None:
        """
        C{makeExtra} makes the extra locator from the worker after its
        first snapshot, once.
        """
        made: list[Any] = []

        def makeExtra(worker: Any) -> Any:
            made.append(worker)
            return _EchoLocator()

        worker = FakeWorker(7, Clock())
        locator = WorkerLocator(worker, lambda: None, makeExtra=makeExtra)  # type: ignore[arg-type]
        self.assertIsNone(locator.locateResponder(b"_Echo"))
        server = amp.AMP(locator=locator)
        client = amp.AMP()
        pump = _pair(server, client)
        for version in (1, 2):
            client.callRemote(Configure, version=version, snapshot=Snapshot(1, None, (), {}, {}))
            pump.flush()
        self.assertEqual(made, [worker])
        self.assertIsNotNone(locator.locateResponder(b"_Echo"))

    def test_withoutExtraUnknownCommandsAreUnknown(self) -> None:
        locator = WorkerLocator(FakeWorker(7, Clock()), lambda: None)  # type: ignore[arg-type]
        self.assertIsNone(locator.locateResponder(b"_Echo"))
        self.assertIsNotNone(locator.locateResponder(b"Configure"))


# -- the supervisor's admin API and readiness -----------------------------------------------------


class FakePool:
    """
    A worker pool as the admin API and the runtime see it.
    """

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry

        self.version = 3
        self.current = True
        self.applied: list[Deferred[None]] = []
        self.drains: list[tuple[str, str, str, bool]] = []
        self.known = True
        self.published = 0
        self.registry = CollectorRegistry()
        self.aggregator = LocalAggregator(self.registry)

    def state(self) -> list[dict[str, Any]]:
        return [{"id": 0, "pid": 42, "state": "running", "version": 3, "generation": 0,
                 "started": 1.0, "restarts": 0}]

    def whenApplied(self) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        self.applied.append(d)
        return d

    def drain(self, router: str, name: str, address: str, draining: bool) -> Deferred[bool]:
        from twisted.internet.defer import succeed

        self.drains.append((router, name, address, draining))
        return succeed(self.known)

    def isCurrent(self) -> bool:
        return self.current

    def behind(self) -> list[str]:
        return [] if self.current else ["worker 1 (pid 43) runs version 2, not 3"]

    def publish(self) -> int:
        self.published += 1
        return self.version




class SupervisorAPITests(_RulesMixin, SynchronousTestCase):
    """
    The admin API of a supervisor (C{runtime.workers} set).
    """

    def setUp(self) -> None:
        super().setUp()
        self.pool = FakePool()
        self.runtime.workers = self.pool  # type: ignore[attr-defined]
        self.runtime.whenApplied = self.pool.whenApplied  # type: ignore[attr-defined]

    def test_stateShowsTheWorkers(self) -> None:
        response, body = self.request("GET", "/admin/state")
        self.assertEqual(response.code, 200)
        self.assertEqual(json.loads(body)["workers"], {"version": 3, "workers": self.pool.state()})

    def test_stateMergedByTheAggregator(self) -> None:
        """
        The aggregation's state (the routers merged over the workers, per
        worker when asked) replaces the supervisor's own routers; the
        workers list stays the supervisor's.
        """
        from twisted.internet.defer import succeed

        asked: list[bool] = []

        def state(perWorker: bool) -> Deferred[dict[str, Any]]:
            asked.append(perWorker)
            return succeed({"routers": {"web": {"merged": True}}, "workers": "not this"})

        self.pool.aggregator.state = state  # type: ignore[method-assign]
        response, body = self.request("GET", "/admin/state?perWorker=1")
        answer = json.loads(body)
        self.assertEqual(answer["routers"], {"web": {"merged": True}})
        self.assertEqual(answer["workers"], {"version": 3, "workers": self.pool.state()})
        self.request("GET", "/admin/state")
        self.assertEqual(asked, [True, False])

    def test_tapFromTheAggregator(self) -> None:
        """
        C{/admin/tap} subscribes to the aggregation's hub (fed by every
        worker), not to the supervisor's own.
        """
        from meshproxy.telemetry.tap import TapUnavailable

        class Hub:
            def subscribe(self, tapFilter: Any, stream: Any) -> Any:
                raise TapUnavailable("the aggregation's hub")

        self.pool.aggregator.tap = Hub()  # type: ignore[attr-defined]
        response, body = self.request("GET", "/admin/tap")
        self.assertEqual(response.code, 503)
        self.assertEqual(json.loads(body), {"error": "the aggregation's hub"})

    def test_metricsFromTheAggregator(self) -> None:
        from prometheus_client import Counter

        Counter("from_the_aggregation", "x", registry=self.pool.registry).inc()
        response, body = self.request("GET", "/metrics")
        self.assertEqual(response.code, 200)
        self.assertIn(b"from_the_aggregation_total 1.0", body)

    def test_putAnswersOnceEveryWorkerRunsIt(self) -> None:
        d = self.client.request(
            "PUT", "http://127.0.0.1:9990/admin/routers/web/rules", data=USERS_V2.encode(),
            headers={"Content-Type": "text/plain; charset=utf-8",
                     "If-Match": quoted(CONFIG_VERSION)},
        )
        self.assertNoResult(d)
        self.pool.applied[0].callback(None)
        self.client.flush()
        response = self.successResultOf(d)
        self.assertEqual(response.code, 200)
        body = json.loads(self.successResultOf(self.client.content(response)))
        self.assertEqual(body["previous"], CONFIG_VERSION)

    def test_putFailsNamingTheLateWorker(self) -> None:
        d = self.client.request(
            "PUT", "http://127.0.0.1:9990/admin/routers/web/rules", data=USERS_V2.encode(),
            headers={"Content-Type": "text/plain; charset=utf-8",
                     "If-Match": quoted(CONFIG_VERSION)},
        )
        self.pool.applied[0].errback(WorkersBehind(["worker 1 (pid 43) runs version 2, not 3"]))
        self.client.flush()
        response = self.successResultOf(d)
        self.assertEqual(response.code, 503)
        body = json.loads(self.successResultOf(self.client.content(response)))
        self.assertIn("is not running in every worker: worker 1 (pid 43) runs version 2, not 3",
                      body["error"])
        self.assertEqual(body["behind"], ["worker 1 (pid 43) runs version 2, not 3"])

    def test_drainGoesToTheWorkers(self) -> None:
        body = {"router": "web", "name": "/#/fs/users", "address": "127.0.0.1:8081"}
        response, answer = self.postJSON("/admin/endpoints/drain", body)
        self.assertEqual((response.code, json.loads(answer)), (200, {"draining": True}))
        self.assertEqual(self.pool.drains, [("web", "/#/fs/users", "127.0.0.1:8081", True)])
        # The supervisor's own router is not drained: it serves nothing.
        self.assertEqual(self.web.drained, set())
        self.pool.known = False
        response, answer = self.postJSON("/admin/endpoints/undrain", body)
        self.assertEqual(response.code, 404)
        self.assertIn("in any worker", json.loads(answer)["error"])


class RuntimeWithWorkersTests(SynchronousTestCase):
    """
    L{Runtime} with a worker pool: readiness waits for the workers, and
    the stores' changes are published.
    """

    def runtime(self) -> Any:
        from meshproxy.runtime import Runtime

        runtime = Runtime(reactor=Clock())
        runtime.workers = FakePool()  # type: ignore[assignment]
        return runtime

    def test_readyWaitsForTheWorkers(self) -> None:
        runtime = self.runtime()
        self.assertTrue(runtime.isReady())
        runtime.workers.current = False
        self.assertFalse(runtime.isReady())
        self.assertEqual(runtime.waitingFor(), ["worker 1 (pid 43) runs version 2, not 3"])

    def test_slotsPublish(self) -> None:
        """
        A change through the stores' slots (rules or policy) is published
        to the workers.
        """
        from meshproxy.reload import PolicySlot, RulesSlot
        from meshproxy.routing.table import RuleTable

        runtime = self.runtime()

        class Router:
            rules = RuleTable("web", [Path.read("/#/s")], "/a => /#/s/a;")
            policy = None

        runtime.routers["web"] = Router()  # type: ignore[assignment]
        slot = RulesSlot(runtime, "web")
        slot.setRules(slot.validateRules("/b => /#/s/b;"), "/b => /#/s/b;")
        self.assertEqual(runtime.workers.published, 1)
        PolicySlot(runtime, "web").policy = None
        self.assertEqual(runtime.workers.published, 2)

    def test_withoutWorkersAppliedAtOnce(self) -> None:
        from meshproxy.runtime import Runtime

        runtime = Runtime(reactor=Clock())
        self.successResultOf(runtime.whenApplied())
        runtime.valuesChanged()


class ReopenLogsTests(SynchronousTestCase):
    """
    C{SIGUSR1}'s reopen of the access log reaches every worker.
    """

    def test_reopenReachesTheWorkers(self) -> None:
        from meshproxy.workers.protocol import ReopenLogs

        clock = Clock()
        spawner = FakeSpawner(clock)
        pool = WorkerPool(
            FakeRuntime(),  # type: ignore[arg-type]
            2, spawner, clock=clock,
            snapshot=lambda runtime, generation: Snapshot(generation, None, (), {}, {}),
        )
        pool.startService()
        spawner.flush()
        reopened: list[int] = []
        for worker in spawner.workers:
            worker.telemetry = type(  # type: ignore[attr-defined]
                "T", (), {"reopenLogs": lambda self, pid=worker.pid: reopened.append(pid)}
            )()
        pool.reopenLogs()
        spawner.flush()
        self.assertEqual(sorted(reopened), [1000, 1001])
        self.assertIsNotNone(WorkerLocator(spawner.workers[0], lambda: None)  # type: ignore[arg-type]
                             .locateResponder(ReopenLogs.commandName))


# -- the listening sockets ----------------------------------------------------------------------


class _AdoptedPort:
    """
    What the supervisor's reactor gives for an adopted socket.
    """

    def __init__(self, fd: int, family: int, factory: Any) -> None:
        import socket

        self.socket = socket.socket(family, socket.SOCK_STREAM, fileno=os.dup(fd))
        self.factory = factory
        self.reading = True
        self.listening = True

    def startReading(self) -> None:
        self.reading = True

    def stopReading(self) -> None:
        self.reading = False

    def stopListening(self) -> None:
        self.listening = False
        self.socket.close()


class _AdoptingReactor:
    def __init__(self) -> None:
        self.ports: list[_AdoptedPort] = []

    def adoptStreamPort(self, fd: int, family: int, factory: Any) -> _AdoptedPort:
        port = _AdoptedPort(fd, family, factory)
        self.ports.append(port)
        return port


class _Listener:
    def __init__(self, port: Any) -> None:
        self.port = port
        self.factory = object()


class _Parts:
    def __init__(self, listen: str, port: Any) -> None:
        self.config = type("RouterConfig", (), {"listen": listen})()
        self.listener = _Listener(port)


class _BoundPort:
    """
    The supervisor's own listener of a router (a Twisted port's view).
    """

    backlog = 50

    def __init__(self, sock: Any) -> None:
        self.socket = sock


class ListenerGroupsTests(SynchronousTestCase):
    """
    L{ListenerGroups}: one C{SO_REUSEPORT} socket per worker slot for the
    TCP listeners the supervisor bound.
    """

    def bound(self) -> Any:
        import socket

        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(50)
        self.addCleanup(sock.close)
        return sock

    def groups(self, parts: dict[str, Any], count: int = 2) -> Any:
        from meshproxy.workers.sockets import ListenerGroups

        runtime = type("Runtime", (), {"parts": parts})()
        self.reactor = _AdoptingReactor()
        groups = ListenerGroups(runtime, count, reactor=self.reactor)  # type: ignore[arg-type]
        groups.prepare()
        for port in self.reactor.ports:
            self.addCleanup(port.socket.close)
        return groups

    def accepted(self, sock: Any) -> int:
        sock.setblocking(False)
        n = 0
        while True:
            try:
                conn, _ = sock.accept()
            except BlockingIOError:
                return n
            conn.close()
            n += 1

    def test_kernelSpreadsConnectionsOverTheSlots(self) -> None:
        """
        Each slot gets its own socket on the listener's address; the
        kernel gives each some of 40 connections, and the supervisor's own
        socket none.
        """
        import socket

        own = self.bound()
        groups = self.groups({"web": _Parts("tcp:0", _BoundPort(own))})
        [(name0, sock0)] = groups.sockets(0)
        [(name1, sock1)] = groups.sockets(1)
        self.assertEqual((name0, name1), ("web", "web"))
        self.assertNotEqual(sock0.fileno(), sock1.fileno())
        self.assertEqual(sock0.getsockname(), own.getsockname())
        # Not read by the supervisor while workers run.
        self.assertEqual([p.reading for p in self.reactor.ports], [False, False])
        clients = [socket.create_connection(own.getsockname()) for _ in range(40)]
        for client in clients:
            self.addCleanup(client.close)
        counts = [self.accepted(sock0), self.accepted(sock1)]
        self.assertEqual(sum(counts), 40, counts)
        self.assertTrue(counts[0] > 0 and counts[1] > 0, counts)
        # The supervisor's own socket is still bound, but listens no more.
        self.assertEqual(own.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN), 0)
        self.assertEqual(own.getsockname(), sock0.getsockname())

    def test_sharedSocketOtherwise(self) -> None:
        """
        A systemd listener and a UNIX one stay one socket shared by every
        slot.
        """
        import socket

        systemd = self.bound()
        unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.addCleanup(unix.close)
        groups = self.groups({
            "a": _Parts("systemd:domain=INET:index=0", _BoundPort(systemd)),
            "b": _Parts("unix:/tmp/x.sock", _BoundPort(unix)),
        })
        self.assertEqual(groups.groups, {})
        self.assertEqual(groups.sockets(1), [("a", systemd), ("b", unix)])

    def test_slotDownTheSupervisorAccepts(self) -> None:
        groups = self.groups({"web": _Parts("tcp:0", _BoundPort(self.bound()))})
        groups.slotDown(1)
        self.assertEqual([p.reading for p in self.reactor.ports], [False, True])
        groups.slotUp(1)
        self.assertEqual([p.reading for p in self.reactor.ports], [False, False])
        groups.slotDown(0)
        groups.close()
        self.assertEqual([p.reading for p in self.reactor.ports], [False, False])

    def test_groupOfAReplacedListenerIsClosed(self) -> None:
        parts = {"web": _Parts("tcp:0", _BoundPort(self.bound()))}
        groups = self.groups(parts)
        parts["web"] = _Parts("tcp:0", _BoundPort(self.bound()))
        self.assertEqual(groups.sockets(0), [("web", parts["web"].listener.port.socket)])
        self.assertEqual([p.listening for p in self.reactor.ports], [False, False])

    def test_poolTellsTheGroups(self) -> None:
        """
        The pool says when a slot's worker runs, when it died, and stops
        the groups' reading at its stop.
        """
        events: list[tuple[str, int]] = []

        class Listeners:
            def slotUp(self, workerId: int) -> None:
                events.append(("up", workerId))

            def slotDown(self, workerId: int) -> None:
                events.append(("down", workerId))

            def close(self) -> None:
                events.append(("close", -1))

        clock = Clock()
        spawner = FakeSpawner(clock)
        pool = WorkerPool(
            FakeRuntime(),  # type: ignore[arg-type]
            2, spawner, clock=clock, listeners=Listeners(),
            backoff=Backoff(1.0, 1.0, random=_Random()),
            snapshot=lambda runtime, generation: Snapshot(generation, None, (), {}, {}),
        )
        pool.startService()
        spawner.flush()
        self.assertEqual(events, [("up", 0), ("up", 1)])
        spawner.kill(1)
        self.assertEqual(events[-1], ("down", 1))
        clock.advance(1.0)
        spawner.flush()
        self.assertEqual(events[-1], ("up", 1))
        pool.stopService()
        self.assertEqual(events[-1], ("close", -1))

    def test_groupFollowsItsListenerToARenamedRouter(self) -> None:
        """
        A reload that hands a listener to a router of another name keeps
        the listener's group.
        """
        parts = {"web": _Parts("tcp:0", _BoundPort(self.bound()))}
        groups = self.groups(parts)
        [(_, before)] = groups.sockets(1)
        parts["www"] = parts.pop("web")
        self.assertEqual(groups.sockets(1), [("www", before)])
        self.assertEqual([p.listening for p in self.reactor.ports], [True, True])

    def test_prepareAgainAddsOnlyNewListeners(self) -> None:
        """
        After a reload, C{prepare} makes the group of a listener it added,
        and leaves the others' groups alone.
        """
        parts = {"web": _Parts("tcp:0", _BoundPort(self.bound()))}
        groups = self.groups(parts)
        [(_, before)] = groups.sockets(0)
        parts["api"] = _Parts("tcp:0", _BoundPort(self.bound()))
        groups.prepare()
        for port in self.reactor.ports[2:]:
            self.addCleanup(port.socket.close)
        self.assertEqual(len(self.reactor.ports), 4)
        [(web, same), (api, new)] = groups.sockets(0)
        self.assertEqual((web, api), ("web", "api"))
        self.assertIs(same, before)
        self.assertIs(new, self.reactor.ports[2].socket)


class WorkerDrainTests(SynchronousTestCase):
    """
    A worker drains the endpoints of its snapshot once its routers have
    bound their names.
    """

    def test_pendingUntilBound(self) -> None:
        from meshproxy.workers.worker import WorkerProcess

        class Router:
            rules = None
            policy = None

            def __init__(self) -> None:
                self.bound = False
                self.drained: list[tuple[str, str]] = []

            def drain(self, name: str, address: str) -> None:
                if not self.bound:
                    raise KeyError(name)
                self.drained.append((name, address))

            def undrain(self, name: str, address: str) -> None:
                raise KeyError(name)

        router = Router()
        worker = WorkerProcess(0, {}, reactor=Clock())
        worker.runtime = type("Runtime", (), {"routers": {"web": router}})()  # type: ignore[assignment]
        drain = ("web", "/#/static/a", "127.0.0.1:8081")
        worker._apply(Snapshot(1, None, (), {}, {}, frozenset([drain])))
        self.assertEqual(worker.pendingDrains, {drain})
        # The name gets bound; its endpoints come from the supervisor.
        router.bound = True
        worker.endpoints("/#/static", "a", Addr.neg())
        self.assertEqual(router.drained, [("/#/static/a", "127.0.0.1:8081")])
        self.assertEqual(worker.pendingDrains, set())

    def test_undrainForgetsAPendingDrain(self) -> None:
        from meshproxy.workers.worker import WorkerProcess

        worker = WorkerProcess(0, {}, reactor=Clock())
        worker.pendingDrains.add(("web", "n", "a:1"))
        self.assertFalse(worker.drain("web", "n", "a:1", False))
        self.assertEqual(worker.pendingDrains, set())
