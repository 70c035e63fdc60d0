"""
Tests for L{meshproxy.workers.collect}: the AMP commands a worker answers
its supervisor, over real AMP protocols connected by memory transports
(L{twisted.test.iosim}), with a real L{MeshMetrics} and a real L{TapHub}.
"""

from __future__ import annotations

import json
from typing import Any

from prometheus_client import CollectorRegistry
from twisted.internet.task import Clock
from twisted.protocols import amp
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase

from meshproxy.telemetry.metrics import MeshMetrics
from meshproxy.telemetry.tap import TapFilter, TapHub, TapUnavailable
from meshproxy.workers.collect import (
    CHUNK,
    BigBytes,
    CollectMetrics,
    CollectState,
    TapEvents,
    TapSubscribe,
    TapUnsubscribe,
    WorkerResponder,
    dumpFamilies,
    dumpFilter,
    loadFamilies,
    loadFilter,
)
from tests.test_telemetry_tap import makeSummary


class FakeNode:
    """
    A balancer node as L{MeshMetrics}' node source hands them.
    """

    def __init__(self, port: int, pending: int = 0, cost: float = 0.002,
                 state: str = "live", requests: int = 0) -> None:
        self.endpoint = ("10.0.%d.%d" % (port // 250, port % 250), port)
        self.state = state
        self.pending = pending
        self.cost = cost
        self.requests = requests
        self.successes = requests
        self.failures = 0
        self.consecutiveFailures = 0


class Worker:
    """
    A worker as far as the supervisor sees it: a registry with a real
    L{MeshMetrics}, a L{TapHub}, a L{WorkerResponder} answering on one end
    of an AMP channel in memory; the supervisor's end is L{proto}.

    @ivar nodes: the endpoint nodes the metrics report.
    @ivar routers: what the state callable answers under C{"routers"}.
    """

    def __init__(self, clock: Clock, *, process: bool = False,
                 maxTapBytes: int = 256 * 1024, tapOptions: dict[str, Any] | None = None) -> None:
        self.clock = clock
        self.registry = CollectorRegistry()
        self.nodes: list[tuple[str, str, Any]] = []
        self.metrics = MeshMetrics(
            self.registry, lambda: self.nodes, process=process, wallClock=lambda: 1.8e9
        )
        self.hub = TapHub(self.metrics.telemetry, clock=clock, **(tapOptions or {}))
        self.routers: dict[str, Any] = {}
        self.responder = WorkerResponder(
            self.registry, lambda: {"routers": self.routers}, self.hub,
            clock=clock, maxTapBytes=maxTapBytes,
        )
        self.workerSide = amp.AMP(locator=self.responder)
        self.proto = amp.AMP()
        self.pump = iosim.connect(
            self.workerSide, iosim.makeFakeServer(self.workerSide),
            self.proto, iosim.makeFakeClient(self.proto),
        )
        self.blocked = False

    def callRemote(self, command: Any, **arguments: Any) -> Any:
        return self.proto.callRemote(command, **arguments)

    def record(self, count: int, router: str = "web", name: str = "/#/fs/users",
               status: int = 200, seconds: float = 0.004, **kw: Any) -> None:
        stats = self.metrics.route(router, name)
        for _ in range(count):
            stats.record(status, seconds, b"GET", ttfb=seconds / 2, **kw)

    def flush(self) -> None:
        if not self.blocked:
            self.pump.flush()

    def die(self) -> None:
        """
        The worker process is gone: its channel is lost.
        """
        self.pump.serverIO.loseConnection()
        self.pump.clientIO.loseConnection()
        self.pump.flush()


def settle(clock: Clock, workers: list[Worker], turns: int = 10) -> None:
    """
    Deliver what is in flight between the workers and the supervisor, and
    run the calls due now, a few times over (an answer can lead to another
    call, and a due call to another answer).
    """
    for _ in range(turns):
        clock.advance(0)
        for worker in workers:
            worker.flush()


class BigBytesCommand(amp.Command):
    arguments = [(b"value", BigBytes())]
    response = [(b"value", BigBytes())]


class Echo(amp.CommandLocator):
    @BigBytesCommand.responder
    def echo(self, value: bytes) -> dict[str, bytes]:
        return {"value": value}


class BigBytesTests(SynchronousTestCase):
    """
    L{BigBytes} carries values past AMP's 64 KiB limit.
    """

    def roundTrip(self, value: bytes) -> bytes:
        server = amp.AMP(locator=Echo())
        client = amp.AMP()
        pump = iosim.connect(server, iosim.makeFakeServer(server), client,
                             iosim.makeFakeClient(client))
        d = client.callRemote(BigBytesCommand, value=value)
        pump.flush()
        answer: bytes = self.successResultOf(d)["value"]
        return answer

    def test_largeValueRoundTrips(self) -> None:
        value = bytes(range(256)) * 1000  # 256000 bytes: four chunks
        self.assertGreater(len(value), 3 * CHUNK)
        self.assertEqual(self.roundTrip(value), value)

    def test_exactChunkAndEmpty(self) -> None:
        self.assertEqual(self.roundTrip(b"x" * CHUNK), b"x" * CHUNK)
        self.assertEqual(self.roundTrip(b""), b"")

    def test_plainStringRefusesTheSameValue(self) -> None:
        """
        What BigBytes is for: AMP's own String refuses a value over 64 KiB.
        """
        box = amp.AmpBox(value=b"x" * (CHUNK + 1))
        self.assertRaises(amp.TooLong, box.serialize)

    def test_badChunkCountRefused(self) -> None:
        for count in (b"x", b"0", b"99999"):
            strings = {b"value": count, b"value.0": b"a"}
            self.assertRaises(ValueError, BigBytes().fromBox, b"value", strings, {}, None)


class FamiliesTests(SynchronousTestCase):
    """
    L{dumpFamilies} and L{loadFamilies}.
    """

    def test_roundTripKeepsEverySample(self) -> None:
        worker = Worker(Clock())
        worker.record(3, traceId="0af7651916cd43dd8448eb211c80319c")
        worker.nodes = [("web", "/#/fs/users", FakeNode(8080, pending=2))]
        families = loadFamilies(dumpFamilies(worker.registry))
        expected = list(worker.registry.collect())
        self.assertEqual(
            [(f[0], f[1], len(f[4])) for f in families],
            [(m.name, m.type, len(m.samples)) for m in expected],
        )
        [duration] = [f for f in families if f[0] == "meshproxy_request_duration_seconds"]
        exemplars = [s[3] for s in duration[4] if s[3] is not None]
        self.assertEqual(exemplars, [[{"trace_id": "0af7651916cd43dd8448eb211c80319c"},
                                      0.004, 1.8e9]])

    def test_badShapesRefused(self) -> None:
        for data in (b"{}", b"[[1]]", b'[["a","counter","","",[["a",{},"x",null]]]]', b"nope"):
            self.assertRaises(ValueError, loadFamilies, data)


class FilterTests(SynchronousTestCase):
    def test_roundTrip(self) -> None:
        tapFilter = TapFilter.fromQuery({"router": "web", "status": "5xx", "path": "/api"})
        self.assertEqual(loadFilter(dumpFilter(tapFilter)), tapFilter)
        self.assertEqual(loadFilter(dumpFilter(TapFilter())), TapFilter())

    def test_badFilterRefused(self) -> None:
        for data in (b"[]", b'{"colour": "red"}', b'{"status": [1]}'):
            self.assertRaises(ValueError, loadFilter, data)


class CollectTests(SynchronousTestCase):
    """
    L{CollectMetrics} and L{CollectState} over AMP.
    """

    def test_metricsOverAMP(self) -> None:
        """
        The supervisor gets the worker's families as they are when the
        command arrives: requests recorded before it count.
        """
        worker = Worker(Clock())
        d = worker.callRemote(CollectMetrics)
        worker.record(7)
        worker.flush()
        families = loadFamilies(self.successResultOf(d)["families"])
        [requests] = [f for f in families if f[0] == "meshproxy_requests"]
        self.assertEqual(requests[4], [["meshproxy_requests_total",
                                        {"router": "web", "name": "/#/fs/users"}, 7, None]])

    def test_metricsPast64KiB(self) -> None:
        """
        A worker with hundreds of endpoints answers more than AMP's 64 KiB
        in one value, and the supervisor gets all of it.
        """
        worker = Worker(Clock())
        worker.nodes = [("web", "/#/fs/users", FakeNode(port, pending=1))
                        for port in range(1000, 1600)]
        data = dumpFamilies(worker.registry)
        self.assertGreater(len(data), 4 * 65535)
        d = worker.callRemote(CollectMetrics)
        worker.flush()
        families = loadFamilies(self.successResultOf(d)["families"])
        [pending] = [f for f in families if f[0] == "meshproxy_endpoint_pending"]
        self.assertEqual(len(pending[4]), 600)

    def test_state(self) -> None:
        worker = Worker(Clock())
        worker.routers = {"web": {"protocol": "http", "boundNames": {}}}
        d = worker.callRemote(CollectState)
        worker.flush()
        self.assertEqual(json.loads(self.successResultOf(d)["state"]),
                         {"routers": {"web": {"protocol": "http", "boundNames": {}}}})


    def test_stateOfARuntime(self) -> None:
        """
        Given a runtime rather than a callable, the responder answers its
        routers' C{state()}.
        """

        class Router:
            def state(self) -> dict[str, Any]:
                return {"protocol": "tcp"}

        class Runtime:
            routers = {"db": Router()}

        responder = WorkerResponder(CollectorRegistry(), Runtime(), None, clock=Clock())
        self.assertEqual(json.loads(responder.collectState()["state"]),
                         {"routers": {"db": {"protocol": "tcp"}}})


class TapTests(SynchronousTestCase):
    """
    The tap commands: subscriptions on the worker's hub, long polls,
    bounds.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.worker = Worker(self.clock, maxTapBytes=2000, tapOptions={"maxEvents": 10})

    def call(self, command: Any, **arguments: Any) -> Any:
        d = self.worker.callRemote(command, **arguments)
        settle(self.clock, [self.worker])
        return d

    def summarize(self, count: int, **fields: Any) -> None:
        for i in range(count):
            summary = makeSummary(reqId=f"r-{i}", **fields)
            self.worker.hub.summarize(summary, json.dumps(summary).encode())

    def subscribe(self, key: int = 1, tapFilter: TapFilter | None = None) -> None:
        self.successResultOf(self.call(
            TapSubscribe, key=key, filter=dumpFilter(tapFilter or TapFilter())
        ))

    def test_subscribeMakesTheHubWant(self) -> None:
        self.assertFalse(self.worker.hub.wants("web"))
        self.subscribe(tapFilter=TapFilter(router="web"))
        self.assertTrue(self.worker.hub.wants("web"))
        self.assertFalse(self.worker.hub.wants("db"))
        self.assertEqual(self.worker.responder.tapKeys, (1,))
        self.successResultOf(self.call(TapUnsubscribe, key=1))
        self.assertFalse(self.worker.hub.wants("web"))
        self.assertEqual(self.worker.responder.tapKeys, ())

    def test_pollWaitsForEventsAndBatchesThem(self) -> None:
        self.subscribe(tapFilter=TapFilter(status=(500, 599)))
        poll = self.call(TapEvents, key=1)
        self.assertNoResult(poll)
        self.summarize(1, status=200)
        self.summarize(3, status=503)
        settle(self.clock, [self.worker])
        answer = self.successResultOf(poll)
        self.assertFalse(answer["ended"])
        frames = answer["events"].split(b"\n\n")[:-1]
        self.assertEqual(len(frames), 3)
        self.assertTrue(all(f.startswith(b"data: {") for f in frames))
        self.assertEqual({json.loads(f[6:])["status"] for f in frames}, {503})

    def test_unsubscribeEndsTheWaitingPoll(self) -> None:
        self.subscribe()
        poll = self.call(TapEvents, key=1)
        self.assertNoResult(poll)
        self.call(TapUnsubscribe, key=1)
        self.assertEqual(self.successResultOf(poll), {"events": b"", "ended": True})
        self.assertEqual(self.successResultOf(self.call(TapEvents, key=1))["ended"], True)

    def test_hubCloseEndsTheSubscription(self) -> None:
        self.subscribe()
        self.summarize(2)
        self.worker.hub.close()
        answer = self.successResultOf(self.call(TapEvents, key=1))
        self.assertTrue(answer["ended"])
        self.assertEqual(answer["events"].count(b"data: {"), 2)
        self.assertNotIn(b"event: end", answer["events"])
        self.assertEqual(self.worker.responder.tapKeys, ())

    def test_boundedWithoutPollsAndDropsCounted(self) -> None:
        """
        While the supervisor does not poll, the worker keeps about
        C{maxTapBytes}, then its hub's queue (C{maxEvents}), then drops and
        counts; the next polls carry what was kept and the drop notice.
        """
        self.subscribe()
        self.summarize(200)
        stats = self.worker.metrics.telemetry
        self.assertGreater(stats.tapDropped, 100)
        answers = []
        for _ in range(10):
            poll = self.call(TapEvents, key=1)
            if not poll.called:
                # All taken: this poll waits for the next event.
                break
            answers.append(self.successResultOf(poll)["events"])
        events = b"".join(answers)
        sent = [f for f in events.split(b"\n\n") if f.startswith(b"data: ")]
        self.assertEqual(len(sent), 200 - stats.tapDropped)
        self.assertIn(b'event: dropped\ndata: {"dropped":%d}' % (stats.tapDropped,), events)
        # Bounded: what fits in the pipe's 2000 bytes, then the hub's queue
        # of ten.
        self.assertLess(len(sent), 2000 // len(sent[0]) + 12)

    def test_noTapRefused(self) -> None:
        registry = CollectorRegistry()
        responder = WorkerResponder(registry, dict, None, clock=self.clock)
        self.assertRaises(TapUnavailable, responder.tapSubscribe, 1, dumpFilter(TapFilter()))
        self.assertEqual(responder.tapEvents(1), {"events": b"", "ended": True})

    def test_badFilterIsARemoteError(self) -> None:
        d = self.worker.callRemote(TapSubscribe, key=1, filter=b'{"colour": 1}')
        failures: list[Any] = []
        d.addErrback(failures.append)
        settle(self.clock, [self.worker])
        [failure] = failures
        failure.trap(ValueError)
        self.assertIn("not a tap filter", failure.getErrorMessage())
        self.assertEqual(self.worker.hub.subscriptions, ())

    def test_stopUnsubscribesEverything(self) -> None:
        self.subscribe(1)
        self.subscribe(2, TapFilter(router="db"))
        self.assertEqual(len(self.worker.hub.subscriptions), 2)
        self.worker.responder.stop()
        self.assertEqual(self.worker.hub.subscriptions, ())
        self.assertEqual(self.worker.responder.tapKeys, ())
