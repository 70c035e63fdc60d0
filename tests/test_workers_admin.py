"""
Tests for the admin reads that depend on traffic, with worker processes:
C{/admin/stats} (L{CollectStats}, L{Aggregator.stats}), explain
(L{CollectExplain}, L{Aggregator.explain}) and the rules dry run
(L{CollectRecentNames}, L{Aggregator.recentNames}), each worker a
L{WorkerResponder} over routers answering on an AMP channel in memory, on a
fake clock.
"""

from __future__ import annotations

import json
from typing import Any

from prometheus_client import CollectorRegistry
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.protocols import amp
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from meshproxy.telemetry.metrics import ConnectionStats, MeshMetrics
from meshproxy.workers.collect import (
    CollectExplain,
    CollectRecentNames,
    CollectStats,
    WorkerResponder,
)
from meshproxy.workers.interfaces import IWorkerAggregator
from meshproxy.workers.merge import Aggregator, mergeStats
from meshproxy.workers.supervisor import LocalAggregator
from tests.test_admin_api import _RulesMixin
from tests.test_admin_rules import USERS_V2
from tests.test_workers import FakePool

USERS = "/#/fs/users"


class FakeBalancer:
    """
    A balancer's C{nodes()} and C{load(node, now)}: the load is the node's
    C{score}.
    """

    def __init__(self, endpoints: list[dict[str, Any]]) -> None:
        self.endpoints = endpoints

    def nodes(self) -> list[dict[str, Any]]:
        return self.endpoints

    def load(self, node: dict[str, Any], now: float) -> float:
        return float(node["score"])


class FakeDestination:
    """
    A bound name a router bound: its C{name}, C{state()} and C{balancer}.
    """

    def __init__(self, name: str, *endpoints: dict[str, Any]) -> None:
        self.name = name
        self.balancer = FakeBalancer(list(endpoints))

    def state(self) -> dict[str, Any]:
        return {"endpoints": [
            {k: v for k, v in ep.items() if k != "score"} for ep in self.balancer.endpoints
        ]}


class FakeRules:
    def __init__(self, names: list[str]) -> None:
        self.names = names

    def recentNames(self) -> list[str]:
        return list(self.names)


class FakeRouter:
    """
    A worker's HTTP router as the responders read it.
    """

    def __init__(self, metrics: MeshMetrics, clock: Clock) -> None:
        self.clients: list[FakeDestination] = []
        self.rules = FakeRules([])
        self.metrics = metrics
        self.connStats = ConnectionStats("web")
        self.clock = clock


class Runtime:
    def __init__(self) -> None:
        self.routers: dict[str, Any] = {}


class Worker:
    """
    One worker: a L{MeshMetrics}, a router C{web}, and a L{WorkerResponder}
    over them on one end of an AMP channel in memory.
    """

    def __init__(self, clock: Clock) -> None:
        self.registry = CollectorRegistry()
        self.metrics = MeshMetrics(self.registry, lambda: [], wallClock=lambda: 1.8e9)
        self.runtime = Runtime()
        self.web = self.runtime.routers["web"] = FakeRouter(self.metrics, clock)
        self.responder = WorkerResponder(self.registry, self.runtime, None, clock=clock)
        self.workerSide = amp.AMP(locator=self.responder)
        self.proto = amp.AMP()
        self.pump = iosim.connect(
            self.workerSide, iosim.makeFakeServer(self.workerSide),
            self.proto, iosim.makeFakeClient(self.proto),
        )
        self.blocked = False

    def callRemote(self, command: Any, **arguments: Any) -> Any:
        return self.proto.callRemote(command, **arguments)

    def serve(self, count: int, name: str = USERS, status: int = 200,
              connections: int = 0) -> None:
        stats = self.metrics.route("web", name)
        for _ in range(count):
            stats.record(status, 0.004, b"GET", ttfb=0.002)
        self.web.connStats.opened += connections

    def flush(self) -> None:
        if not self.blocked:
            self.pump.flush()

    def die(self) -> None:
        self.pump.serverIO.loseConnection()
        self.pump.clientIO.loseConnection()
        self.pump.flush()


class Group:
    """
    An aggregator and its workers on one fake clock.
    """

    def __init__(self, count: int = 2) -> None:
        self.clock = Clock()
        self.aggregator = Aggregator(None, clock=self.clock)
        self.workers: dict[int, Worker] = {}
        self.generations: dict[int, int] = {}
        for workerId in range(count):
            self.start(workerId)

    def start(self, workerId: int) -> Worker:
        worker = self.workers[workerId] = Worker(self.clock)
        generation = self.generations[workerId] = self.generations.get(workerId, -1) + 1
        self.aggregator.workerStarted(workerId, generation, worker.callRemote)
        return worker

    def kill(self, workerId: int) -> None:
        self.workers.pop(workerId).die()
        self.aggregator.workerStopped(workerId)

    def run(self, d: defer.Deferred[Any]) -> Any:
        for _ in range(10):
            self.clock.advance(0)
            for worker in self.workers.values():
                worker.flush()
        results: list[Any] = []
        d.addBoth(results.append)
        assert results, "no result"
        return results[0]

    def stats(self, own: dict[str, Any] | None = None) -> dict[str, Any]:
        result: dict[str, Any] = self.run(self.aggregator.stats(own or {"routers": {}}))
        return result


def endpoint(address: str, **fields: Any) -> dict[str, Any]:
    values = {"address": address, "state": "live", "ewmaMs": 1.0, "pending": 0,
              "requests": 0, "successes": 0, "failures": 0, "consecutiveFailures": 0,
              "score": 1.0}
    values.update(fields)
    return values


class InterfaceTests(SynchronousTestCase):
    def test_bothAggregatorsProvideTheReads(self) -> None:
        verifyObject(IWorkerAggregator, Aggregator(None, clock=Clock()))
        verifyObject(IWorkerAggregator, LocalAggregator(None))

    def test_localAggregatorGivesTheSupervisorsOwn(self) -> None:
        """
        Until the real aggregation is plugged in, the reads are the
        supervisor's own.
        """
        local = LocalAggregator(None)
        own = {"routers": {"web": {"connections": None, "boundNames": {}}}}
        self.assertEqual(
            self.successResultOf(local.stats(own)), {"routers": own["routers"], "missing": []}
        )
        explained = {"boundNames": [], "endpoints": {}}
        self.assertEqual(self.successResultOf(local.explain("web", explained)), explained)
        self.assertEqual(
            self.successResultOf(local.recentNames("web")), {"names": [], "missing": []}
        )


class CollectTests(SynchronousTestCase):
    """
    The worker's answers.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.worker = Worker(self.clock)

    def call(self, command: Any, **arguments: Any) -> Any:
        d = self.worker.callRemote(command, **arguments)
        self.worker.flush()
        return self.successResultOf(d)

    def test_stats(self) -> None:
        self.worker.serve(3, connections=2)
        self.worker.serve(1, status=503)
        stats = json.loads(self.call(CollectStats)["stats"])
        web = stats["routers"]["web"]
        self.assertEqual(web["connections"], {"opened": 2, "closed": 0})
        self.assertEqual(web["boundNames"][USERS]["requests"], 4)
        self.assertEqual(web["boundNames"][USERS]["responses"]["5xx"], 1)

    def test_explainOnlyBoundNames(self) -> None:
        """
        Only the names the router bound are answered, with their scores;
        an unknown router answers nothing.
        """
        self.worker.web.clients.append(FakeDestination(USERS, endpoint("10.0.0.1:80", score=2.5)))
        names = json.dumps([USERS, "/#/fs/other"]).encode()
        entries = json.loads(self.call(CollectExplain, router="web", names=names)["entries"])
        self.assertEqual(list(entries), [USERS])
        self.assertEqual(entries[USERS]["name"], USERS)
        self.assertEqual(entries[USERS]["endpoints"][0]["score"], 2.5)
        entries = json.loads(self.call(CollectExplain, router="nope", names=names)["entries"])
        self.assertEqual(entries, {})

    def test_recentNames(self) -> None:
        self.worker.web.rules.names = ["/svc/b", "/svc/a"]
        names = json.loads(self.call(CollectRecentNames, router="web")["names"])
        self.assertEqual(names, ["/svc/b", "/svc/a"])
        self.assertEqual(json.loads(self.call(CollectRecentNames, router="db")["names"]), [])


class StatsTests(SynchronousTestCase):
    """
    L{Aggregator.stats}: the counters summed over the workers and the
    supervisor, never going back.
    """

    def test_summedOverWorkersAndSupervisor(self) -> None:
        group = Group()
        group.workers[0].serve(3, connections=3)
        group.workers[1].serve(5, connections=4)
        group.workers[1].serve(2, status=502)
        own = {"routers": {"web": {"connections": {"opened": 1, "closed": 1},
                                   "boundNames": {}}}}
        stats = group.stats(own)
        self.assertEqual(stats["missing"], [])
        web = stats["routers"]["web"]
        self.assertEqual(web["connections"], {"opened": 8, "closed": 1})
        users = web["boundNames"][USERS]
        self.assertEqual(users["requests"], 10)
        self.assertEqual(users["responses"]["2xx"], 8)
        self.assertEqual(users["responses"]["5xx"], 2)
        self.assertEqual(users["duration"]["buckets"][-1], 10)
        self.assertAlmostEqual(users["duration"]["sum"], 0.04)
        # The bounds are the bounds, not their sum.
        one = Worker(Clock())
        one.serve(1)
        self.assertEqual(
            users["duration"]["bounds"],
            json.loads(
                WorkerResponder(one.registry, one.runtime, None, clock=Clock())
                .collectStats()["stats"]
            )["routers"]["web"]["boundNames"][USERS]["duration"]["bounds"],
        )

    def test_restartedWorkerDoesNotTakeCountsBack(self) -> None:
        """
        A worker's last answer stays counted once it stops; the next
        generation in its slot adds from zero.
        """
        group = Group()
        group.workers[0].serve(4)
        group.workers[1].serve(6)
        self.assertEqual(group.stats()["routers"]["web"]["boundNames"][USERS]["requests"], 10)
        group.kill(1)
        self.assertEqual(group.stats()["routers"]["web"]["boundNames"][USERS]["requests"], 10)
        group.start(1).serve(1)
        self.assertEqual(group.stats()["routers"]["web"]["boundNames"][USERS]["requests"], 11)

    def test_lateWorkerNamedAndCountedWithItsLastAnswer(self) -> None:
        group = Group()
        group.workers[0].serve(4)
        group.workers[1].serve(6)
        group.stats()
        group.workers[1].serve(5)
        group.workers[1].blocked = True
        d = group.aggregator.stats({"routers": {}})
        group.clock.advance(0)
        group.workers[0].flush()
        self.assertNoResult(d)
        group.clock.advance(2.0)
        stats = self.successResultOf(d)
        self.assertEqual(stats["missing"], [{"worker": 1, "error": "no answer within 2 s"}])
        self.assertEqual(stats["routers"]["web"]["boundNames"][USERS]["requests"], 10)

    def test_mergeStatsKeepsAbsentConnections(self) -> None:
        merged = mergeStats([
            {"routers": {"db": {"connections": None, "boundNames": {}}}},
            {"routers": {"db": {"connections": None, "boundNames": {}}}},
        ])
        self.assertEqual(merged, {"db": {"connections": None, "boundNames": {}}})


class ExplainTests(SynchronousTestCase):
    """
    L{Aggregator.explain}: the supervisor's explain with the endpoints of
    the workers that bound the names.
    """

    def explained(self) -> dict[str, Any]:
        entries = [
            {"name": USERS, "endpoints": [endpoint("10.0.0.1:80"), endpoint("10.0.0.2:80")]},
            {"name": "/#/fs/cold", "endpoints": [endpoint("10.0.0.9:80", ewmaMs=0.0)]},
        ]
        return {
            "router": "web", "name": "/svc/users", "destination": USERS,
            "delegation": ["the supervisor's"], "boundNames": entries,
            "endpoints": {entry["name"]: entry["endpoints"] for entry in entries},
        }

    def test_endpointsMergedOverTheWorkers(self) -> None:
        group = Group()
        group.workers[0].web.clients.append(FakeDestination(
            USERS,
            endpoint("10.0.0.1:80", ewmaMs=2.0, pending=1, requests=30, successes=30, score=4.0),
            endpoint("10.0.0.2:80", ewmaMs=1.0, requests=10, successes=10, score=1.0),
        ))
        group.workers[1].web.clients.append(FakeDestination(
            USERS,
            endpoint("10.0.0.1:80", ewmaMs=6.0, pending=2, requests=10, successes=9, failures=1,
                     state="ejected", score=8.0),
            endpoint("10.0.0.2:80", ewmaMs=3.0, requests=10, successes=10, score=3.0),
        ))
        result = group.run(group.aggregator.explain("web", self.explained()))
        self.assertEqual(result["delegation"], ["the supervisor's"])
        self.assertEqual(result["missing"], [])
        users = result["endpoints"][USERS]
        self.assertEqual([ep["address"] for ep in users], ["10.0.0.1:80", "10.0.0.2:80"])
        first, second = users
        self.assertEqual(first["pending"], 3)
        self.assertEqual(first["requests"], 40)
        self.assertEqual(first["ewmaMs"], 3.0)
        self.assertEqual(first["ewmaMsMax"], 6.0)
        self.assertEqual(first["state"], "ejected")
        self.assertEqual(first["stateDetail"], "ejected on 1/2, live on 1/2")
        self.assertEqual(first["score"], 5.0)
        self.assertEqual(first["scoreMax"], 8.0)
        self.assertEqual(second["score"], 2.0)
        self.assertEqual(result["boundNames"][0]["name"], USERS)
        self.assertIs(result["boundNames"][0]["endpoints"], users)
        # No worker bound this one: the supervisor's entry stays.
        cold = self.explained()["endpoints"]["/#/fs/cold"]
        self.assertEqual(result["endpoints"]["/#/fs/cold"], cold)

    def test_lateWorkerNamed(self) -> None:
        group = Group()
        group.workers[0].web.clients.append(FakeDestination(
            USERS, endpoint("10.0.0.1:80", requests=5, successes=5, pending=2),
        ))
        group.workers[1].blocked = True
        d = group.aggregator.explain("web", self.explained())
        group.clock.advance(0)
        group.workers[0].flush()
        group.clock.advance(2.0)
        result = self.successResultOf(d)
        self.assertEqual(result["missing"], [{"worker": 1, "error": "no answer within 2 s"}])
        self.assertEqual(result["endpoints"][USERS][0]["pending"], 2)

    def test_nothingToAskWithoutBoundNames(self) -> None:
        group = Group()
        explained = {"router": "web", "error": "loop", "boundNames": [], "endpoints": {}}
        result = self.successResultOf(group.aggregator.explain("web", explained))
        self.assertEqual(result, dict(explained, missing=[]))


class RecentNamesTests(SynchronousTestCase):
    def test_unionTakingTheWorkersInTurn(self) -> None:
        group = Group()
        group.workers[0].web.rules.names = ["/svc/a", "/svc/b", "/svc/c"]
        group.workers[1].web.rules.names = ["/svc/x", "/svc/a"]
        result = group.run(group.aggregator.recentNames("web"))
        self.assertEqual(result, {
            "names": ["/svc/a", "/svc/x", "/svc/b", "/svc/c"], "missing": [],
        })


class SupervisorReadsAPITests(_RulesMixin, SynchronousTestCase):
    """
    The admin API of a supervisor (C{runtime.workers} set) asks its
    aggregation for C{/admin/stats}, the explain's endpoints and the names
    a dry run checks.
    """

    def setUp(self) -> None:
        super().setUp()
        self.pool = FakePool()
        self.runtime.workers = self.pool  # type: ignore[attr-defined]
        self.asked: list[Any] = []

    def test_statsFromTheAggregation(self) -> None:
        def stats(own: dict[str, Any]) -> defer.Deferred[dict[str, Any]]:
            self.asked.append(own)
            return defer.succeed({"routers": {"web": "merged"}, "missing": [{"worker": 1}]})

        self.pool.aggregator.stats = stats  # type: ignore[method-assign]
        response, body = self.request("GET", "/admin/stats")
        self.assertEqual(response.code, 200)
        answer = json.loads(body)
        self.assertEqual(answer["routers"], {"web": "merged"})
        self.assertEqual(answer["missing"], [{"worker": 1}])
        self.assertIsInstance(answer["time"], float)
        # The supervisor's own counters are given to be summed in.
        [own] = self.asked
        self.assertEqual(sorted(own["routers"]), ["db", "web"])

    def test_explainCompletedByTheAggregation(self) -> None:
        def explain(router: str, explained: dict[str, Any]) -> defer.Deferred[dict[str, Any]]:
            self.asked.append((router, explained))
            return defer.succeed(dict(explained, merged=True))

        self.pool.aggregator.explain = explain  # type: ignore[method-assign]
        response, body = self.request("GET", "/admin/routers/web/explain?name=/svc/users")
        self.assertEqual(response.code, 200)
        self.assertEqual(json.loads(body), {"name": "/svc/users", "merged": True})
        self.assertEqual(self.asked, [("web", {"name": "/svc/users"})])

    def test_dryRunChecksTheWorkersNames(self) -> None:
        """
        The names checked are the supervisor's own and the workers', each
        once.
        """
        def recentNames(router: str) -> defer.Deferred[dict[str, Any]]:
            self.asked.append(router)
            return defer.succeed({"names": ["/svc/users", "/svc/other"], "missing": []})

        self.pool.aggregator.recentNames = recentNames  # type: ignore[method-assign]
        self.web.names = ["/svc/search"]
        response, body = self.request(
            "POST", "/admin/routers/web/rules?dryRun=1", data=USERS_V2.encode(),
            headers={"Content-Type": "text/plain"},
        )
        self.assertEqual(response.code, 200, body)
        self.assertEqual(json.loads(body), {
            "valid": True, "checked": 3, "changes": [{
                "name": "/svc/users", "old": "/#/fs/users", "new": "/#/fs/users-v2 | /#/fs/users",
            }],
        })
        self.assertEqual(self.asked, ["web"])

    def test_badRulesStill400(self) -> None:
        self.pool.aggregator.recentNames = (  # type: ignore[method-assign]
            lambda router: defer.succeed({"names": ["/svc/users"], "missing": []})
        )
        response, body = self.request(
            "POST", "/admin/routers/web/rules?dryRun=1", data=b"/svc =>\n  /#/fs/x |;",
            headers={"Content-Type": "text/plain"},
        )
        self.assertEqual(response.code, 400)
        self.assertFalse(json.loads(body)["valid"])
