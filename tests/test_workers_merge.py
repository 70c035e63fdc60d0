"""
Tests for L{meshproxy.workers.merge}: the supervisor's one view over its
workers, each a real L{MeshMetrics} and L{TapHub} answering over a real
AMP channel in memory (see L{tests.test_workers_collect.Worker}), on a
fake clock; and the merged C{/metrics} checked by C{promtool}.
"""

from __future__ import annotations

import json
import socket
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import defer
from twisted.internet.protocol import Factory
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.protocols import amp
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from meshproxy.telemetry.metrics import OPENMETRICS_CONTENT_TYPE, MeshMetrics
from meshproxy.telemetry.tap import TapFilter
from meshproxy.workers.interfaces import IWorkerAggregator
from meshproxy.workers.merge import (
    MERGE_RULES,
    SUM,
    SUPERVISOR,
    WORKER,
    Aggregator,
    mergeStates,
    ruleFor,
)
from tests.test_metrics_promtool import PromtoolTestCase
from tests.test_telemetry_tap import makeSummary
from tests.test_workers_collect import FakeNode, Worker, settle

USERS = {"router": "web", "name": "/#/fs/users"}


def samples(body: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """
    Every sample of a Prometheus text exposition, by name and labels.
    """
    found = {}
    for family in text_string_to_metric_families(body.decode("utf-8")):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(body: bytes, sampleName: str, /, **labels: str) -> float | None:
    """
    The value of one sample of a Prometheus text exposition, or L{None}.
    """
    return samples(body).get((sampleName, tuple(sorted(labels.items()))))


class Group:
    """
    A supervisor's aggregator and its workers, on one fake clock.
    """

    def __init__(self, count: int = 2, *, supervisor: bool = False, process: bool = False,
                 **aggregatorOptions: Any) -> None:
        self.clock = Clock()
        self.registry = None
        self.supervisorMetrics = None
        if supervisor:
            self.registry = CollectorRegistry()
            self.supervisorMetrics = MeshMetrics(self.registry, process=process)
            aggregatorOptions.setdefault("tapStats", self.supervisorMetrics.telemetry)
        self.aggregator = Aggregator(self.registry, clock=self.clock, **aggregatorOptions)
        self.workers: dict[int, Worker] = {}
        self.generations: dict[int, int] = {}
        for workerId in range(count):
            self.start(workerId, process=process)

    def start(self, workerId: int, **options: Any) -> Worker:
        worker = self.workers[workerId] = Worker(self.clock, **options)
        generation = self.generations[workerId] = self.generations.get(workerId, -1) + 1
        self.aggregator.workerStarted(workerId, generation, worker.callRemote)
        return worker

    def kill(self, workerId: int) -> None:
        self.workers.pop(workerId).die()
        self.aggregator.workerStopped(workerId)

    def settle(self) -> None:
        settle(self.clock, list(self.workers.values()))

    def scrape(self, accept: str | None = None) -> bytes:
        d = self.aggregator.exposition(accept)
        self.settle()
        body: bytes = self.result(d)[0]
        return body

    def state(self, perWorker: bool = False) -> dict[str, Any]:
        d = self.aggregator.state(perWorker)
        self.settle()
        state: dict[str, Any] = self.result(d)
        return state

    @staticmethod
    def result(d: defer.Deferred[Any]) -> Any:
        results: list[Any] = []
        d.addBoth(results.append)
        assert results, "no result"
        if isinstance(results[0], Exception) or hasattr(results[0], "raiseException"):
            results[0].raiseException()
        return results[0]


class RuleTests(SynchronousTestCase):
    """
    L{ruleFor}: the table, then the defaults.
    """

    def test_table(self) -> None:
        self.assertEqual(ruleFor("meshproxy_endpoint_pending", "gauge"), SUM)
        self.assertEqual(ruleFor("meshproxy_endpoint_ewma_seconds", "gauge"), WORKER)
        self.assertEqual(ruleFor("meshproxy_tap_events", "counter"), SUPERVISOR)
        self.assertIn("meshproxy_server_connections_open", MERGE_RULES)

    def test_defaults(self) -> None:
        self.assertEqual(ruleFor("meshproxy_requests", "counter"), SUM)
        self.assertEqual(ruleFor("meshproxy_request_duration_seconds", "histogram"), SUM)
        self.assertEqual(ruleFor("meshproxy_something_new", "gauge"), WORKER)
        self.assertEqual(ruleFor("process_cpu_seconds", "counter"), WORKER)
        self.assertEqual(ruleFor("python_info", "info"), WORKER)


class ExpositionTests(SynchronousTestCase):
    """
    L{Aggregator.exposition}: sums, per-worker series, the supervisor's own.
    """

    def test_providesInterface(self) -> None:
        verifyObject(IWorkerAggregator, Aggregator(clock=Clock()))

    def test_countersAndHistogramsSummed(self) -> None:
        group = Group(2)
        group.workers[0].record(3, seconds=0.004)
        group.workers[1].record(4, seconds=0.3)
        body = group.scrape()
        self.assertEqual(value(body, "meshproxy_requests_total", **USERS), 7)
        self.assertEqual(value(body, "meshproxy_request_duration_seconds_count", **USERS), 7)
        self.assertEqual(
            value(body, "meshproxy_request_duration_seconds_bucket", le="0.005", **USERS), 3)
        self.assertEqual(
            value(body, "meshproxy_request_duration_seconds_bucket", le="+Inf", **USERS), 7)
        self.assertAlmostEqual(
            value(body, "meshproxy_request_duration_seconds_sum", **USERS), 3 * 0.004 + 4 * 0.3)
        # One series per label set: no worker label on summed families.
        self.assertNotIn(b'worker="', b"\n".join(
            line for line in body.splitlines() if line.startswith(b"meshproxy_requests")))

    def test_askedWhenTheScrapeBegins(self) -> None:
        """
        Requests answered before the scrape began count, though the workers
        answer later.
        """
        group = Group(2)
        d = group.aggregator.exposition(None)
        group.workers[0].record(2)
        group.workers[1].record(5)
        group.settle()
        body = group.result(d)[0]
        self.assertEqual(value(body, "meshproxy_requests_total", **USERS), 7)

    def test_gaugesSummedOrPerWorker(self) -> None:
        group = Group(2)
        for workerId, (pending, cost) in enumerate([(2, 0.001), (3, 0.004)]):
            group.workers[workerId].nodes = [
                ("web", "/#/fs/users", FakeNode(8080, pending=pending, cost=cost,
                                                state="live" if workerId else "ejected")),
            ]
            group.workers[workerId].metrics.connections("web").opened = 4 + workerId
        body = group.scrape()
        endpoint = dict(USERS, endpoint="10.0.32.80:8080")
        self.assertEqual(value(body, "meshproxy_endpoint_pending", **endpoint), 5)
        self.assertEqual(value(body, "meshproxy_server_connections_open", router="web"), 9)
        self.assertEqual(value(body, "meshproxy_endpoint_ewma_seconds", worker="0", **endpoint),
                         0.001)
        self.assertEqual(value(body, "meshproxy_endpoint_ewma_seconds", worker="1", **endpoint),
                         0.004)
        self.assertEqual(value(body, "meshproxy_endpoint_up", worker="0", **endpoint), 0)
        self.assertEqual(value(body, "meshproxy_endpoint_up", worker="1", **endpoint), 1)
        self.assertIsNone(value(body, "meshproxy_endpoint_ewma_seconds", **endpoint))
        self.assertEqual(value(body, "meshproxy_worker_scrape_up", worker="0"), 1)
        self.assertEqual(value(body, "meshproxy_worker_scrape_up", worker="1"), 1)

    def test_supervisorIncludedOnce(self) -> None:
        """
        The supervisor's own families (its process, its build) are in the
        scrape once, labelled C{worker="supervisor"} where they are per
        process; the tap's events are the supervisor's count only.
        """
        group = Group(2, supervisor=True, process=True)
        group.supervisorMetrics.telemetry.tapEvents = 5
        group.supervisorMetrics.telemetry.tapDropped = 1
        for worker in group.workers.values():
            worker.metrics.telemetry.tapEvents = 100
            worker.metrics.telemetry.tapDropped = 2
        body = group.scrape()
        builds = [key for key in samples(body) if key[0] == "meshproxy_build_info"]
        self.assertEqual(sorted(dict(labels)["worker"] for _, labels in builds),
                         ["0", "1", "supervisor"])
        cpu = [key for key in samples(body) if key[0] == "process_cpu_seconds_total"]
        self.assertEqual(sorted(dict(labels)["worker"] for _, labels in cpu),
                         ["0", "1", "supervisor"])
        self.assertEqual(value(body, "meshproxy_tap_events_total"), 5)
        self.assertEqual(value(body, "meshproxy_tap_dropped_total"), 5)

    def test_openMetricsWithExemplars(self) -> None:
        group = Group(2)
        group.workers[0].record(1, seconds=0.004, traceId="a" * 32)
        group.workers[1].record(1, seconds=0.004, traceId="b" * 32)
        d = group.aggregator.exposition("application/openmetrics-text")
        group.settle()
        body, contentType = group.result(d)
        self.assertEqual(contentType, OPENMETRICS_CONTENT_TYPE)
        self.assertTrue(body.endswith(b"# EOF\n"))
        [line] = [line for line in body.splitlines()
                  if line.startswith(b'meshproxy_request_duration_seconds_bucket{')
                  and b'le="0.005"' in line]
        self.assertIn(b" 2.0 # {trace_id=", line)

    def test_pastAMPsValueLimit(self) -> None:
        """
        Workers with hundreds of endpoints each (an answer far over 64 KiB)
        are merged whole.
        """
        group = Group(2)
        for worker in group.workers.values():
            worker.nodes = [("web", "/#/fs/users", FakeNode(port, pending=1, requests=2))
                            for port in range(1000, 1500)]
        body = group.scrape()
        found = samples(body)
        pending = [v for (name, _), v in found.items() if name == "meshproxy_endpoint_pending"]
        self.assertEqual(pending, [2] * 500)
        ewma = [k for k in found if k[0] == "meshproxy_endpoint_ewma_seconds"]
        self.assertEqual(len(ewma), 1000)


class RestartTests(SynchronousTestCase):
    """
    No double counting and no counter going back when workers restart.
    """

    def test_restartedWorkerAddsToTheRetiredCount(self) -> None:
        """
        Worker 1 counts 10, is scraped, dies; its next generation counts 5:
        the scrapes show 10, 10, 15; never 10 then 5.
        """
        group = Group(2)
        group.workers[1].record(10)
        self.assertEqual(value(group.scrape(), "meshproxy_requests_total", **USERS), 10)
        group.kill(1)
        self.assertEqual(value(group.scrape(), "meshproxy_requests_total", **USERS), 10)
        group.start(1)
        self.assertEqual(value(group.scrape(), "meshproxy_requests_total", **USERS), 10)
        group.workers[1].record(5)
        body = group.scrape()
        self.assertEqual(value(body, "meshproxy_requests_total", **USERS), 15)
        self.assertEqual(value(body, "meshproxy_request_duration_seconds_count", **USERS), 15)
        group.workers[0].record(1)
        group.kill(1)
        group.start(1).record(2)
        self.assertEqual(value(group.scrape(), "meshproxy_requests_total", **USERS), 18)

    def test_neverScrapedGenerationIsLost(self) -> None:
        """
        What a worker counted after its last answer is lost with it (as in
        one process that dies), never counted twice.
        """
        group = Group(1)
        group.workers[0].record(3)
        group.scrape()
        group.workers[0].record(4)
        group.kill(0)
        group.start(0).record(1)
        self.assertEqual(value(group.scrape(), "meshproxy_requests_total", **USERS), 4)

    def test_answerAfterStopCountsOnlyTheGrowth(self) -> None:
        """
        A worker stopped while a scrape waits for it (a graceful stop) still
        answers: what it counted since its previous answer goes to the
        retired total, once.
        """
        group = Group(1)
        worker = group.workers[0]
        worker.record(3)
        group.scrape()
        worker.record(4)
        d = group.aggregator.exposition(None)
        group.aggregator.workerStopped(0)
        worker.flush()
        group.settle()
        # Stopped: its answer goes to the retired total, counted once.
        self.assertEqual(value(group.result(d)[0], "meshproxy_requests_total", **USERS), 7)
        del group.workers[0]
        self.assertEqual(value(group.scrape(), "meshproxy_requests_total", **USERS), 7)
        self.assertEqual(value(group.scrape(), "meshproxy_requests_total", **USERS), 7)

    def test_perWorkerSeriesOfAStoppedWorkerGo(self) -> None:
        group = Group(2, process=True)
        self.assertIsNotNone(value(group.scrape(), "meshproxy_worker_scrape_up", worker="1"))
        group.kill(1)
        body = group.scrape()
        self.assertIsNone(value(body, "meshproxy_worker_scrape_up", worker="1"))
        self.assertEqual(
            [dict(k[1])["worker"] for k in samples(body) if k[0] == "process_cpu_seconds_total"],
            ["0"])

    def test_retiredEndpointSeriesForgottenWhenTheEndpointLeaves(self) -> None:
        group = Group(2)
        node = ("web", "/#/fs/users", FakeNode(8080, requests=6))
        gone = ("web", "/#/fs/users", FakeNode(8081, requests=4))
        group.workers[0].nodes = [node]
        group.workers[1].nodes = [node, gone]
        group.scrape()
        group.kill(1)
        endpoint = dict(USERS, endpoint="10.0.32.81:8081")
        # Worker 0 has no such endpoint: the endpoint left every live set.
        body = group.scrape()
        self.assertIsNone(value(body, "meshproxy_endpoint_requests_total", **endpoint))
        # One still reported keeps its retired count.
        self.assertEqual(value(body, "meshproxy_endpoint_requests_total",
                               **dict(USERS, endpoint="10.0.32.80:8080")), 12)


class MissingWorkerTests(SynchronousTestCase):
    """
    A worker that does not answer in time is named, and holds nothing.
    """

    def test_scrapeDoesNotWaitPastTheTimeout(self) -> None:
        group = Group(2, timeout=2.0)
        group.workers[0].record(1)
        group.workers[1].record(2)
        group.scrape()
        group.workers[1].record(5)
        group.workers[1].nodes = [("web", "/#/fs/users", FakeNode(8080, pending=3))]
        group.workers[1].blocked = True
        d = group.aggregator.exposition(None)
        group.settle()
        self.assertNoResult(d)
        group.clock.advance(2.0)
        body = group.result(d)[0]
        self.assertEqual(value(body, "meshproxy_worker_scrape_up", worker="1"), 0)
        self.assertEqual(value(body, "meshproxy_worker_scrape_up", worker="0"), 1)
        # Its last answer counts, so no counter goes back.
        self.assertEqual(value(body, "meshproxy_requests_total", **USERS), 3)
        # Its gauges are unknown: left out.
        self.assertIsNone(value(body, "meshproxy_endpoint_pending",
                                endpoint="10.0.32.80:8080", **USERS))
        # Once it answers again, all of it counts.
        group.workers[1].blocked = False
        self.assertEqual(value(group.scrape(), "meshproxy_requests_total", **USERS), 8)

    def test_stateNamesTheMissingWorker(self) -> None:
        group = Group(2)
        group.workers[1].blocked = True
        d = group.aggregator.state(False)
        group.settle()
        self.assertNoResult(d)
        group.clock.advance(2.0)
        state = group.result(d)
        self.assertEqual(state["missing"], [{"worker": 1, "error": "no answer within 2 s"}])

    def test_garbledAnswerIsMissing(self) -> None:
        """
        A worker answering something that is not metric families is named
        missing; the scrape goes on with the others.
        """
        group = Group(1)
        group.workers[0].record(2)
        group.aggregator.workerStarted(
            1, 0, lambda command, **kw: defer.succeed({"families": b'[["x"]]'}))
        body = group.scrape()
        self.assertEqual(value(body, "meshproxy_worker_scrape_up", worker="1"), 0)
        self.assertEqual(value(body, "meshproxy_requests_total", **USERS), 2)
        self.flushLoggedErrors()

    def test_startedAgainWithoutStopRetiresTheOldGeneration(self) -> None:
        group = Group(1)
        group.workers[0].record(4)
        group.scrape()
        group.workers[0].die()
        group.start(0).record(1)
        self.assertEqual(value(group.scrape(), "meshproxy_requests_total", **USERS), 5)

    def test_brokenChannelIsMissing(self) -> None:
        group = Group(2)
        group.workers[1].die()
        state = group.state()
        [missing] = state["missing"]
        self.assertEqual(missing["worker"], 1)


def endpoint(address: str, **fields: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "address": address, "weight": 1.0, "state": "live", "ewmaMs": 1.0, "pending": 0,
        "requests": 0, "successes": 0, "failures": 0, "successRate": None,
        "consecutiveFailures": 0, "ejectedUntil": None, "backoffStep": 0,
        "connections": {"open": 1, "idle": 1},
    }
    entry.update(fields)
    return entry


def router(*endpoints: dict[str, Any], requests: int = 0) -> dict[str, Any]:
    return {
        "protocol": "http", "listen": "tcp:4140", "rules": "/svc => /#/fs;",
        "connections": {"opened": 3, "closed": 1},
        "boundNames": {"/#/fs/users": {
            "resolution": "bound", "namer": "bound", "reason": None, "panicking": False,
            "limits": None, "requests": requests, "endpoints": list(endpoints),
        }},
    }


class StateTests(SynchronousTestCase):
    """
    L{Aggregator.state} and L{mergeStates}.
    """

    def test_merge(self) -> None:
        group = Group(2)
        group.workers[0].routers = {"web": router(
            endpoint("10.0.0.1:80", ewmaMs=2.0, pending=1, requests=30, successes=30),
            endpoint("10.0.0.2:80", requests=1, successes=1),
            requests=31,
        )}
        group.workers[1].routers = {"web": router(
            endpoint("10.0.0.1:80", ewmaMs=6.0, pending=2, requests=10, successes=5,
                     failures=5, consecutiveFailures=5, state="ejected", ejectedUntil=100.0,
                     backoffStep=1),
            requests=10,
        )}
        state = group.state()
        self.assertEqual(state["missing"], [])
        self.assertNotIn("byWorker", state)
        web = state["routers"]["web"]
        self.assertEqual(web["connections"], {"opened": 6, "closed": 2})
        users = web["boundNames"]["/#/fs/users"]
        self.assertEqual(users["requests"], 41)
        first, second = users["endpoints"]
        self.assertEqual(first["address"], "10.0.0.1:80")
        self.assertEqual(first["pending"], 3)
        self.assertEqual(first["requests"], 40)
        self.assertEqual(first["successRate"], 35 / 40)
        # Weighted by requests: (2 * 30 + 6 * 10) / 40.
        self.assertEqual(first["ewmaMs"], 3.0)
        self.assertEqual(first["ewmaMsMax"], 6.0)
        self.assertEqual(first["state"], "ejected")
        self.assertEqual(first["stateDetail"], "ejected on 1/2, live on 1/2")
        self.assertEqual(first["consecutiveFailures"], 5)
        self.assertEqual(first["ejectedUntil"], 100.0)
        self.assertEqual(first["connections"], {"open": 2, "idle": 2})
        # Only on one worker.
        self.assertEqual(second["state"], "live")
        self.assertEqual(second["stateDetail"], "live on 1/2")

    def test_perWorker(self) -> None:
        group = Group(2)
        group.workers[0].routers = {"web": router(endpoint("10.0.0.1:80", pending=1))}
        group.workers[1].routers = {"web": router(endpoint("10.0.0.1:80", pending=2))}
        state = group.state(perWorker=True)
        self.assertEqual(sorted(state["byWorker"]), ["0", "1"])
        self.assertEqual(
            state["byWorker"]["1"]["web"]["boundNames"]["/#/fs/users"]["endpoints"][0]["pending"],
            2)
        self.assertEqual(
            state["routers"]["web"]["boundNames"]["/#/fs/users"]["endpoints"][0]["pending"], 3)

    def test_ewmaPlainMeanBeforeRequests(self) -> None:
        merged = mergeStates([
            {"routers": {"web": router(endpoint("a:1", ewmaMs=1.0))}},
            {"routers": {"web": router(endpoint("a:1", ewmaMs=3.0))}},
        ])
        [entry] = merged["web"]["boundNames"]["/#/fs/users"]["endpoints"]
        self.assertEqual(entry["ewmaMs"], 2.0)
        self.assertEqual(entry["stateDetail"], "live on 2/2")

    def test_noWorkers(self) -> None:
        self.assertEqual(Group(0).state(), {"routers": {}, "missing": []})


class Reader(StringTransport):
    """
    A tap subscriber's consumer: the events written to it.
    """

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(frame[6:]) for frame in self.value().split(b"\n\n")
                if frame.startswith(b"data: {")]


class TapTests(SynchronousTestCase):
    """
    L{Aggregator.tap}: the workers' streams merged into the supervisor's
    subscribers.
    """

    def summarize(self, worker: Worker, count: int, **fields: Any) -> None:
        for i in range(count):
            summary = makeSummary(reqId=f"{id(worker)}-{i}", **fields)
            worker.hub.summarize(summary, json.dumps(summary).encode())

    def test_eventsOfEveryWorkerReachTheSubscriber(self) -> None:
        group = Group(2)
        reader = Reader()
        group.aggregator.tap.subscribe(TapFilter(router="web"), reader)
        group.settle()
        for worker in group.workers.values():
            self.assertTrue(worker.hub.wants("web"))
            self.assertFalse(worker.hub.wants("db"))
        self.summarize(group.workers[0], 3)
        self.summarize(group.workers[1], 2)
        self.summarize(group.workers[1], 2, router="db")
        group.settle()
        self.assertEqual(len(reader.events()), 5)
        self.assertTrue(reader.value().startswith(b": meshproxy tap\n\n"))

    def test_oneWorkerSubscriptionPerDistinctFilter(self) -> None:
        group = Group(1)
        first, second, other = Reader(), Reader(), Reader()
        tap = group.aggregator.tap
        a = tap.subscribe(TapFilter(router="web"), first)
        tap.subscribe(TapFilter(router="web"), second)
        c = tap.subscribe(TapFilter(status=(500, 599)), other)
        group.settle()
        worker = group.workers[0]
        self.assertEqual(len(worker.hub.subscriptions), 2)
        self.summarize(worker, 1, status=200)
        self.summarize(worker, 1, status=503)
        group.settle()
        self.assertEqual(len(first.events()), 2)
        self.assertEqual(len(second.events()), 2)
        self.assertEqual([e["status"] for e in other.events()], [503])
        tap.unsubscribe(a)
        group.settle()
        self.assertEqual(len(worker.hub.subscriptions), 2)
        tap.unsubscribe(c)
        group.settle()
        self.assertEqual(len(worker.hub.subscriptions), 1)
        self.assertEqual(len(worker.responder.tapKeys), 1)

    def test_lastSubscriberGoneUnsubscribesTheWorkers(self) -> None:
        group = Group(2)
        subscription = group.aggregator.tap.subscribe(TapFilter(), Reader())
        group.settle()
        group.aggregator.tap.unsubscribe(subscription)
        group.settle()
        for worker in group.workers.values():
            self.assertEqual(worker.hub.subscriptions, ())
            self.assertFalse(worker.hub.wants("web"))

    def test_restartedWorkerSubscribedAgain(self) -> None:
        group = Group(2)
        reader = Reader()
        group.aggregator.tap.subscribe(TapFilter(), reader)
        group.settle()
        group.kill(1)
        worker = group.start(1)
        group.settle()
        self.assertTrue(worker.hub.wants("web"))
        self.summarize(worker, 2)
        group.settle()
        self.assertEqual(len(reader.events()), 2)

    def test_slowSubscriberBoundedOthersServed(self) -> None:
        """
        A subscriber that does not read is bounded by the supervisor's hub
        (its drops counted and announced); another one, and the workers,
        go on.
        """
        group = Group(2, supervisor=True, maxEvents=5)
        fast, slow = Reader(), Reader()
        tap = group.aggregator.tap
        tap.subscribe(TapFilter(), fast)
        slowSubscription = tap.subscribe(TapFilter(), slow)
        group.settle()
        slowSubscription.pauseProducing()
        for _ in range(4):
            self.summarize(group.workers[0], 10)
            self.summarize(group.workers[1], 10)
            group.settle()
        self.assertEqual(len(fast.events()), 80)
        self.assertEqual(len(slow.events()), 0)
        self.assertEqual(slowSubscription.queued, 5)
        self.assertEqual(group.supervisorMetrics.telemetry.tapDropped, 75)
        slowSubscription.resumeProducing()
        self.assertEqual(len(slow.events()), 5)
        self.assertIn(b'event: dropped\ndata: {"dropped":75}', slow.value())
        for worker in group.workers.values():
            self.assertEqual(worker.metrics.telemetry.tapDropped, 0)

    def test_closeEndsTheWorkersSubscriptions(self) -> None:
        group = Group(1)
        reader = Reader()
        group.aggregator.tap.subscribe(TapFilter(), reader)
        group.settle()
        group.aggregator.tap.close()
        group.settle()
        self.assertIn(b"event: end", reader.value())
        self.assertEqual(group.workers[0].hub.subscriptions, ())


class _Channel(amp.AMP):
    """
    An AMP end that says when its connection is gone.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.lost: defer.Deferred[None] = defer.Deferred()

    def connectionLost(self, reason: Any) -> None:
        super().connectionLost(reason)
        self.lost.callback(None)


class SocketPairTests(TestCase):
    """
    The aggregator and workers over real socket pairs on the reactor, as the
    supervisor runs them: answers of hundreds of KiB arrive whole.
    """

    timeout = 30

    @defer.inlineCallbacks
    def test_scrapeOverSocketPairs(self) -> Any:
        from twisted.internet import reactor

        aggregator = Aggregator(clock=reactor)
        channels: list[_Channel] = []
        for workerId in range(2):
            worker = Worker(Clock())
            worker.record(3 + workerId)
            worker.nodes = [("web", "/#/fs/users", FakeNode(port, pending=1))
                            for port in range(1000, 1600)]
            ours, theirs = socket.socketpair()
            supervisorSide = _Channel()
            workerSide = _Channel(locator=worker.responder)
            for sock, proto in ((ours, supervisorSide), (theirs, workerSide)):
                factory = Factory.forProtocol(lambda proto=proto: proto)
                reactor.adoptStreamConnection(sock.fileno(), socket.AF_UNIX, factory)
                sock.close()
                channels.append(proto)
            aggregator.workerStarted(workerId, 0, supervisorSide.callRemote)
        try:
            body, _ = yield aggregator.exposition(None)
        finally:
            for proto in channels:
                proto.transport.loseConnection()
            yield defer.gatherResults([proto.lost for proto in channels])
        self.assertGreater(len(body), 65535)
        self.assertEqual(value(body, "meshproxy_requests_total", **USERS), 7)
        self.assertEqual(value(body, "meshproxy_endpoint_pending", endpoint="10.0.6.99:1599",
                               **USERS), 2)
        self.assertEqual(value(body, "meshproxy_worker_scrape_up", worker="1"), 1)


class PromtoolTests(PromtoolTestCase):
    """
    The merged exposition of workers under traffic, and of a restart,
    passes Prometheus' own checks in both formats.
    """

    def group(self) -> Group:
        group = Group(2, supervisor=True, process=True)
        for workerId, worker in group.workers.items():
            worker.record(5, seconds=0.01, traceId="%032x" % (workerId + 1))
            worker.record(2, name="/#/fs/other", status=503, seconds=0.2)
            worker.metrics.error("web", "no-endpoint")
            worker.metrics.retry("web", "status")
            worker.metrics.connections("web").opened = 3
            worker.nodes = [("web", "/#/fs/users", FakeNode(port, pending=workerId,
                                                              requests=4))
                            for port in range(8080, 8090)]
        group.scrape()
        group.kill(1)
        group.start(1, process=True).record(1)
        return group

    @defer.inlineCallbacks
    def test_textFormat(self) -> Any:
        body = self.group().scrape()
        self.assertEqual(value(body, "meshproxy_requests_total", **USERS), 11)
        yield self.checkText(body)

    @defer.inlineCallbacks
    def test_openMetricsFormat(self) -> Any:
        body = self.group().scrape("application/openmetrics-text")
        self.assertIn(b"# {trace_id=", body)
        yield self.checkOpenMetrics(body)
