"""
Tests for L{meshproxy.telemetry.metrics}: what the hot path records is what
a Prometheus scrape reads back.
"""

from __future__ import annotations

import importlib.metadata
import math
import os
import platform
from typing import Any

import attrs
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openMetricsFamilies,
)
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.task import Clock as TaskClock
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from meshproxy import __version__
from meshproxy.config import parseConfig
from meshproxy.config.policies import ClientConfig
from meshproxy.discovery.endpoints import Addr, Endpoint
from meshproxy.discovery.file import FileNamer
from meshproxy.discovery.static import StaticNamer
from meshproxy.http.client import Pool
from meshproxy.http.message import Request
from meshproxy.http.router import HttpRouter
from meshproxy.routing.path import Path
from meshproxy.runtime import balancerFactory
from meshproxy.tcp.router import TcpRouter
from meshproxy.tcp.stats import EndpointConnections
from meshproxy.telemetry.metrics import (
    BUCKETS,
    METHODS,
    OPENMETRICS_CONTENT_TYPE,
    ConnectionStats,
    MeshMetrics,
    RouteStats,
    buildInfo,
    exposition,
)
from meshproxy.telemetry.spans import TelemetryStats


@attrs.frozen
class FakeEndpoint:
    """
    Stands for L{meshproxy.discovery.endpoints.Endpoint}.
    """

    host: str
    port: int
    weight: float = 1.0


@attrs.define
class FakeNode:
    """
    Stands for L{meshproxy.balancing.node.Node}: the attributes the
    collector reads.
    """

    endpoint: Any
    state: str = "live"
    pending: int = 0
    cost: float = 0.0
    requests: int = 0
    successes: int = 0
    failures: int = 0
    consecutiveFailures: int = 0
    payload: Any = None


def scrape(registry: CollectorRegistry) -> dict[tuple[str, frozenset], float]:
    """
    Render C{registry} in the text format, parse it back, and index the
    samples by (sample name, frozenset of label pairs).
    """
    text = generate_latest(registry).decode("utf-8")
    samples: dict[tuple[str, frozenset], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = (sample.name, frozenset(sample.labels.items()))
            assert key not in samples, f"duplicate series {key}"
            samples[key] = sample.value
    return samples


def families(registry: CollectorRegistry) -> dict[str, str]:
    """
    The families of a scrape, name to type.
    """
    text = generate_latest(registry).decode("utf-8")
    return {f.name: f.type for f in text_string_to_metric_families(text)}


def key(sample: str, /, **labels: str) -> tuple[str, frozenset]:
    """
    The index L{scrape} uses for one sample.
    """
    return (sample, frozenset(labels.items()))


class RouteStatsTests(SynchronousTestCase):
    """
    L{RouteStats} keeps plain counters.
    """

    def test_startsAtZero(self) -> None:
        stats = RouteStats("web", "/#/fs/users")
        self.assertEqual(
            (stats.router, stats.name, stats.requests, stats.seconds),
            ("web", "/#/fs/users", 0, 0.0),
        )
        self.assertEqual(stats.responses, [0] * 6)
        self.assertEqual(stats.methods, [0] * (6 * len(METHODS)))
        self.assertEqual(stats.buckets, [0] * (len(BUCKETS) + 1))
        self.assertEqual(stats.ttfbBuckets, [0] * (len(BUCKETS) + 1))
        self.assertEqual((stats.ttfbSeconds, stats.bytesIn, stats.bytesOut), (0.0, 0, 0))
        self.assertEqual(stats.exemplars, [None] * (len(BUCKETS) + 1))

    def test_hasSlots(self) -> None:
        """
        No per-instance dict: cheap attribute access, and a typo in the
        router's code fails loudly instead of creating a new attribute.
        """
        stats = RouteStats("web", "/#/fs/users")
        self.assertFalse(hasattr(stats, "__dict__"))
        self.assertRaises(AttributeError, setattr, stats, "request", 1)
        self.assertFalse(hasattr(ConnectionStats("web"), "__dict__"))

    def test_recordCountsRequestsClassesAndSum(self) -> None:
        stats = RouteStats("web", "/#/fs/users")
        for status in (200, 204, 301, 404, 503, 101):
            stats.record(status, 0.5)
        self.assertEqual(stats.requests, 6)
        self.assertEqual(stats.responses, [0, 1, 2, 1, 1, 1])
        self.assertEqual(stats.seconds, 3.0)

    def test_recordBucketsAreLessOrEqual(self) -> None:
        """
        A duration equal to a bound falls in that bound's bucket, as
        Prometheus's "le" means; one just above falls in the next.
        """
        stats = RouteStats("web", "/#/fs/users")
        stats.record(200, 0.001)
        stats.record(200, 0.0010001)
        stats.record(200, 10.0)
        stats.record(200, 10.5)
        expected = [0] * (len(BUCKETS) + 1)
        expected[0] = 1
        expected[1] = 1
        expected[BUCKETS.index(10.0)] = 1
        expected[-1] = 1
        self.assertEqual(stats.buckets, expected)

    def test_recordOutOfRangeStatusCountsOnlyTheRequest(self) -> None:
        """
        A status outside 100..599 cannot index a class slot: it is counted
        as a request and nothing else breaks.
        """
        stats = RouteStats("web", "/#/fs/users")
        stats.record(0, 0.01)
        stats.record(600, 0.01)
        stats.record(999, 0.01)
        self.assertEqual(stats.requests, 3)
        self.assertEqual(stats.responses, [0] * 6)
        self.assertEqual(sum(stats.buckets), 3)

    def test_recordNegativeDurationCountsAsZero(self) -> None:
        """
        A wall clock stepping back must not make the sum, a counter,
        decrease.
        """
        stats = RouteStats("web", "/#/fs/users")
        stats.record(200, 0.25)
        stats.record(200, -3.0)
        self.assertEqual(stats.seconds, 0.25)
        self.assertEqual(stats.buckets[0], 1)

    def test_recordCountsMethodsPerClass(self) -> None:
        """
        Each standard method has its own slots, laid out per status class;
        any other method, and a caller that does not say, counts as
        C{other}. Methods are case-sensitive: C{get} is not C{GET}.
        """
        stats = RouteStats("web", "/#/fs/users")
        stats.record(200, 0.01, b"GET")
        stats.record(503, 0.01, b"GET")
        stats.record(201, 0.01, b"POST")
        stats.record(200, 0.01, "PATCH")
        stats.record(200, 0.01, b"BREW")
        stats.record(404, 0.01, b"get")
        stats.record(200, 0.01)
        stats.record(0, 0.01, b"GET")

        def count(method: str, cls: int) -> int:
            return stats.methods[6 * METHODS.index(method) + cls]

        self.assertEqual((count("GET", 2), count("GET", 5)), (1, 1))
        self.assertEqual(count("POST", 2), 1)
        self.assertEqual(count("PATCH", 2), 1)
        self.assertEqual((count("other", 2), count("other", 4)), (2, 1))
        self.assertEqual(sum(stats.methods), 7)
        self.assertEqual(stats.responses, [0, 0, 5, 0, 1, 1])
        self.assertEqual(stats.requests, 8)

    def test_everyStandardMethodHasItsOwnSlots(self) -> None:
        stats = RouteStats("web", "/#/fs/users")
        for method in METHODS[:-1]:
            stats.record(200, 0.01, method.encode("ascii"))
        self.assertEqual(
            [stats.methods[6 * i + 2] for i in range(len(METHODS))], [1] * 9 + [0]
        )

    def test_recordTimeToFirstByte(self) -> None:
        """
        The time to the response head goes into its own histogram, for the
        requests that got one; a negative one counts as 0.
        """
        stats = RouteStats("web", "/#/fs/users")
        stats.record(200, 0.5, b"GET", 0.004)
        stats.record(200, 0.5, b"GET", -1.0)
        stats.record(504, 0.5, b"GET", None)
        expected = [0] * (len(BUCKETS) + 1)
        expected[0] = 1
        expected[BUCKETS.index(0.005)] = 1
        self.assertEqual(stats.ttfbBuckets, expected)
        self.assertEqual(stats.ttfbSeconds, 0.004)
        self.assertEqual(sum(stats.buckets), 3)

    def test_recordBytes(self) -> None:
        stats = RouteStats("web", "/#/fs/users")
        stats.record(200, 0.01, b"POST", 0.001, 100, 2000)
        stats.record(200, 0.01, b"GET", bytesOut=5)
        self.assertEqual((stats.bytesIn, stats.bytesOut), (100, 2005))

    def test_recordKeepsTheLatestTraceIdPerBucket(self) -> None:
        """
        A sampled request's trace id and duration become the exemplar of
        the bucket it falls in, replacing the one before; a request not
        sampled changes nothing.
        """
        stats = RouteStats("web", "/#/fs/users")
        first, second, third = "a" * 32, "b" * 32, "c" * 32
        stats.record(200, 0.003, b"GET", traceId=first)
        stats.record(200, 0.004, b"GET", traceId=second)
        stats.record(200, 0.0045, b"GET")
        stats.record(200, 3.0, b"GET", traceId=third)
        slot = BUCKETS.index(0.005)
        self.assertEqual(stats.exemplars[slot], (second, 0.004))
        self.assertEqual(stats.exemplars[BUCKETS.index(5.0)], (third, 3.0))
        self.assertEqual(sum(1 for e in stats.exemplars if e is not None), 2)


class MeshMetricsTests(SynchronousTestCase):
    """
    L{MeshMetrics} hands out records and exports them at scrape time.
    """

    def setUp(self) -> None:
        self.registry = CollectorRegistry()
        self.nodes: list[tuple[str, str, Any]] = []
        self.metrics = MeshMetrics(self.registry, lambda: self.nodes)

    def test_routeIsCached(self) -> None:
        first = self.metrics.route("web", "/#/fs/users")
        self.assertIs(self.metrics.route("web", "/#/fs/users"), first)
        self.assertIsNot(self.metrics.route("web", "/#/fs/orders"), first)
        self.assertIsNot(self.metrics.route("api", "/#/fs/users"), first)

    def test_routesListsOneRoutersRecordsByName(self) -> None:
        orders = self.metrics.route("web", "/#/fs/orders")
        users = self.metrics.route("web", "/#/fs/users")
        self.metrics.route("api", "/#/fs/users")
        self.assertEqual(self.metrics.routes("web"), [orders, users])
        self.assertEqual(self.metrics.routes("nope"), [])

    def test_routesAreTheLiveRecords(self) -> None:
        users = self.metrics.route("web", "/#/fs/users")
        users.record(200, 0.002)
        [read] = self.metrics.routes("web")
        self.assertIs(read, users)
        self.assertEqual((read.requests, read.responses[2]), (1, 1))
        users.record(503, 0.004)
        self.assertEqual(self.metrics.routes("web")[0].responses[5], 1)

    def test_connectionsIsCached(self) -> None:
        conns = self.metrics.connections("web")
        self.assertIsInstance(conns, ConnectionStats)
        self.assertEqual((conns.opened, conns.closed), (0, 0))
        self.assertIs(self.metrics.connections("web"), conns)
        self.assertIsNot(self.metrics.connections("db"), conns)

    def test_registersOneCollector(self) -> None:
        """
        Without the process collectors, exactly one collector goes on the
        registry; a second L{MeshMetrics} on the same registry is refused
        as a duplicate rather than silently exporting every series twice.
        """
        registry = CollectorRegistry()
        MeshMetrics(registry, process=False)
        collectors = list(registry._collector_to_names)
        self.assertEqual(len(collectors), 1)
        self.assertTrue(callable(collectors[0].collect))
        self.assertRaises(ValueError, MeshMetrics, registry)
        self.assertRaises(ValueError, MeshMetrics, self.registry)
        self.assertEqual(len(self.registry._collector_to_names), 3)

    def test_emptyScrapeIsValid(self) -> None:
        """
        Before any traffic every family is declared with its type; only
        the build information and telemetry's own unlabelled counters (at
        0) have samples.
        """
        registry = CollectorRegistry()
        MeshMetrics(registry, process=False)
        self.assertEqual(
            scrape(registry),
            {
                key("meshproxy_build_info", **buildInfo()): 1,
                key("meshproxy_access_log_lines_total"): 0,
                key("meshproxy_access_log_dropped_total"): 0,
                key("meshproxy_tap_events_total"): 0,
                key("meshproxy_tap_dropped_total"): 0,
            },
        )
        self.assertEqual(
            families(registry),
            {
                "meshproxy_requests": "counter",
                "meshproxy_responses": "counter",
                "meshproxy_request_duration_seconds": "histogram",
                "meshproxy_request_ttfb_seconds": "histogram",
                "meshproxy_request_bytes": "counter",
                "meshproxy_grpc_responses": "counter",
                "meshproxy_errors": "counter",
                "meshproxy_server_connections_opened": "counter",
                "meshproxy_server_connections_closed": "counter",
                "meshproxy_server_connections_open": "gauge",
                "meshproxy_endpoint_pending": "gauge",
                "meshproxy_endpoint_ewma_seconds": "gauge",
                "meshproxy_endpoint_up": "gauge",
                "meshproxy_endpoint_requests": "counter",
                "meshproxy_endpoint_failures": "counter",
                "meshproxy_upstream_connections_open": "gauge",
                "meshproxy_upstream_connections_idle": "gauge",
                "meshproxy_retries": "counter",
                "meshproxy_endpoint_events": "counter",
                "meshproxy_policy_denied": "counter",
                "meshproxy_tls_certificate_expiry_timestamp_seconds": "gauge",
                "meshproxy_tls_reload_failures": "counter",
                "meshproxy_trace_spans_exported": "counter",
                "meshproxy_trace_spans_dropped": "counter",
                "meshproxy_access_log_lines": "counter",
                "meshproxy_access_log_dropped": "counter",
                "meshproxy_tap_events": "counter",
                "meshproxy_tap_dropped": "counter",
                "meshproxy_build_info": "gauge",
            },
        )

    def test_policyDenied(self) -> None:
        self.metrics.denied("web", 2, "spiffe://mesh.local/x")
        self.metrics.denied("web", None, None)
        self.metrics.denied("web", None, None)
        samples = scrape(self.registry)
        self.assertEqual(
            samples[
                (
                    "meshproxy_policy_denied_total",
                    frozenset(
                        {"identity": "spiffe://mesh.local/x", "router": "web", "rule": "2"}.items()
                    ),
                )
            ],
            1,
        )
        self.assertEqual(
            samples[
                (
                    "meshproxy_policy_denied_total",
                    frozenset(
                        {"identity": "unauthenticated", "router": "web", "rule": "default"}.items()
                    ),
                )
            ],
            2,
        )

    def test_requestsAndResponseClasses(self) -> None:
        users = self.metrics.route("web", "/#/fs/users")
        orders = self.metrics.route("web", "/#/fs/orders")
        for status in (200, 200, 201, 404, 502):
            users.record(status, 0.01)
        orders.record(503, 0.01)
        samples = scrape(self.registry)
        self.assertEqual(
            samples[key("meshproxy_requests_total", router="web", name="/#/fs/users")], 5
        )
        self.assertEqual(
            samples[key("meshproxy_requests_total", router="web", name="/#/fs/orders")], 1
        )
        byClass = {
            codeClass: samples[
                key("meshproxy_responses_total", router="web",
                    name="/#/fs/users", method="other", code_class=codeClass)
            ]
            for codeClass in ("1xx", "2xx", "3xx", "4xx", "5xx")
        }
        self.assertEqual(
            byClass, {"1xx": 0, "2xx": 3, "3xx": 0, "4xx": 1, "5xx": 1}
        )
        self.assertEqual(
            samples[key("meshproxy_responses_total", router="web",
                        name="/#/fs/orders", method="other", code_class="5xx")],
            1,
        )

    def test_histogramIsCumulative(self) -> None:
        """
        Buckets are exported cumulatively in increasing "le" order, the
        +Inf bucket equals _count, and _sum is the sum of durations.
        """
        stats = self.metrics.route("web", "/#/fs/users")
        durations = [0.0005, 0.003, 0.003, 0.07, 0.9, 4.0, 30.0]
        for seconds in durations:
            stats.record(200, seconds)
        text = generate_latest(self.registry).decode("utf-8")
        [family] = [
            f for f in text_string_to_metric_families(text)
            if f.name == "meshproxy_request_duration_seconds"
        ]
        buckets = [
            (float(s.labels["le"]), s.value)
            for s in family.samples
            if s.name.endswith("_bucket")
        ]
        self.assertEqual([le for le, _ in buckets], list(BUCKETS) + [math.inf])
        for le, value in buckets:
            self.assertEqual(
                value, sum(1 for d in durations if d <= le), f"bucket le={le}"
            )
        values = [v for _, v in buckets]
        self.assertEqual(values, sorted(values))
        others = {s.name: s for s in family.samples if not s.name.endswith("_bucket")}
        self.assertEqual(others["meshproxy_request_duration_seconds_count"].value, 7)
        self.assertAlmostEqual(
            others["meshproxy_request_duration_seconds_sum"].value, sum(durations)
        )
        self.assertEqual(
            others["meshproxy_request_duration_seconds_count"].labels,
            {"router": "web", "name": "/#/fs/users"},
        )

    def test_scrapeReadsCurrentValues(self) -> None:
        """
        The collector reads the records at each scrape: updates made after
        one scrape show in the next.
        """
        stats = self.metrics.route("web", "/#/fs/users")
        stats.record(200, 0.01)
        requests = key("meshproxy_requests_total", router="web", name="/#/fs/users")
        self.assertEqual(scrape(self.registry)[requests], 1)
        stats.record(200, 0.01)
        stats.record(200, 0.01)
        self.assertEqual(scrape(self.registry)[requests], 3)

    def test_errorsPerRouterAndReason(self) -> None:
        self.metrics.error("web", "no-endpoint")
        self.metrics.error("web", "no-endpoint")
        self.metrics.error("web", "timeout")
        self.metrics.error("api", "no-endpoint")
        samples = scrape(self.registry)
        errors = {
            (dict(labels)["router"], dict(labels)["reason"]): value
            for (name, labels), value in samples.items()
            if name == "meshproxy_errors_total"
        }
        self.assertEqual(
            errors,
            {("web", "no-endpoint"): 2, ("web", "timeout"): 1, ("api", "no-endpoint"): 1},
        )

    def test_serverConnections(self) -> None:
        conns = self.metrics.connections("web")
        conns.opened += 3
        conns.closed += 2
        samples = scrape(self.registry)
        self.assertEqual(
            samples[key("meshproxy_server_connections_opened_total", router="web")], 3
        )
        self.assertEqual(
            samples[key("meshproxy_server_connections_closed_total", router="web")], 2
        )

    def test_endpointMetrics(self) -> None:
        self.nodes.append((
            "web", "/#/fs/users",
            FakeNode(FakeEndpoint("10.0.0.1", 8080), state="live", pending=3,
                     cost=0.0125, requests=40, successes=38, failures=2),
        ))
        self.nodes.append((
            "web", "/#/fs/users",
            FakeNode(FakeEndpoint("10.0.0.2", 8080), state="ejected",
                     requests=9, failures=9, consecutiveFailures=9),
        ))
        samples = scrape(self.registry)
        one = dict(router="web", name="/#/fs/users", endpoint="10.0.0.1:8080")
        two = dict(router="web", name="/#/fs/users", endpoint="10.0.0.2:8080")
        self.assertEqual(samples[key("meshproxy_endpoint_pending", **one)], 3)
        self.assertEqual(samples[key("meshproxy_endpoint_ewma_seconds", **one)], 0.0125)
        self.assertEqual(samples[key("meshproxy_endpoint_up", **one)], 1)
        self.assertEqual(samples[key("meshproxy_endpoint_up", **two)], 0)
        self.assertEqual(samples[key("meshproxy_endpoint_requests_total", **one)], 40)
        self.assertEqual(samples[key("meshproxy_endpoint_failures_total", **one)], 2)
        self.assertEqual(samples[key("meshproxy_endpoint_failures_total", **two)], 9)

    def test_endpointStatesOtherThanLiveAreDown(self) -> None:
        for i, state in enumerate(["live", "ejected", "probing", "draining"]):
            self.nodes.append(
                ("web", "/#/fs/users", FakeNode(FakeEndpoint("10.0.0.1", 8000 + i), state=state))
            )
        samples = scrape(self.registry)
        up = {
            dict(labels)["endpoint"]: value
            for (name, labels), value in samples.items()
            if name == "meshproxy_endpoint_up"
        }
        self.assertEqual(
            up,
            {"10.0.0.1:8000": 1, "10.0.0.1:8001": 0, "10.0.0.1:8002": 0, "10.0.0.1:8003": 0},
        )

    def test_endpointAsTupleAndIPv6(self) -> None:
        """
        An endpoint may be a C{(host, port)} pair; IPv6 literals are
        bracketed so the label reads as an address.
        """
        self.nodes.append(("web", "/#/fs/a", FakeNode(("::1", 9000))))
        self.nodes.append(("web", "/#/fs/b", FakeNode(FakeEndpoint("fe80::1", 443))))
        samples = scrape(self.registry)
        self.assertIn(
            key("meshproxy_endpoint_up", router="web", name="/#/fs/a", endpoint="[::1]:9000"),
            samples,
        )
        self.assertIn(
            key("meshproxy_endpoint_up", router="web", name="/#/fs/b", endpoint="[fe80::1]:443"),
            samples,
        )

    def test_sameEndpointUnderTwoNamesIsTwoSeries(self) -> None:
        node = FakeNode(FakeEndpoint("10.0.0.1", 8080), requests=5)
        self.nodes.append(("web", "/#/fs/users", node))
        self.nodes.append(("web", "/#/fs/accounts", node))
        self.nodes.append(("api", "/#/fs/users", node))
        samples = scrape(self.registry)
        requests = [
            labels for (name, labels), _ in samples.items()
            if name == "meshproxy_endpoint_requests_total"
        ]
        self.assertEqual(len(requests), 3)

    def test_duplicateAddressExportedOnce(self) -> None:
        """
        Two nodes with the same address under one bound name (a namer
        listing it twice with different weights) give one series, not a
        duplicate that would make the exposition invalid.
        """
        self.nodes.append(
            ("web", "/#/fs/users", FakeNode(FakeEndpoint("10.0.0.1", 8080, 1.0), requests=1))
        )
        self.nodes.append(
            ("web", "/#/fs/users", FakeNode(FakeEndpoint("10.0.0.1", 8080, 2.0), requests=2))
        )
        samples = scrape(self.registry)  # asserts no duplicate series
        self.assertEqual(
            samples[key("meshproxy_endpoint_requests_total", router="web",
                        name="/#/fs/users", endpoint="10.0.0.1:8080")],
            1,
        )

    def test_nodesSourceCalledAtEachScrape(self) -> None:
        calls = []

        def nodes() -> list[tuple[str, str, Any]]:
            calls.append(None)
            return []

        MeshMetrics(CollectorRegistry(), nodes)
        self.assertEqual(calls, [])
        registry = CollectorRegistry()
        MeshMetrics(registry, nodes)
        generate_latest(registry)
        generate_latest(registry)
        self.assertEqual(len(calls), 2)

    def test_brokenNodesSourceKeepsRouteMetrics(self) -> None:
        """
        If reading the nodes raises, the failure is logged, the route
        metrics are still exported and the endpoint families are dropped.
        """
        events: list[dict] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)

        def nodes():
            yield ("web", "/#/fs/users", FakeNode(FakeEndpoint("10.0.0.1", 80)))
            raise RuntimeError("balancer gone")

        registry = CollectorRegistry()
        metrics = MeshMetrics(registry, nodes)
        metrics.route("web", "/#/fs/users").record(200, 0.01)
        samples = scrape(registry)
        self.assertEqual(
            samples[key("meshproxy_requests_total", router="web", name="/#/fs/users")], 1
        )
        self.assertFalse(any(name.startswith("meshproxy_endpoint") for name, _ in samples))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertTrue(any("log_failure" in e for e in events))

    def test_costScaleConvertsToSeconds(self) -> None:
        """
        A balancer keeping its EWMA in milliseconds is exported in seconds
        with C{costScale=0.001}.
        """
        nodes = [("web", "/#/fs/users", FakeNode(FakeEndpoint("10.0.0.1", 80), cost=12.5))]
        registry = CollectorRegistry()
        MeshMetrics(registry, lambda: nodes, costScale=0.001)
        samples = scrape(registry)
        self.assertAlmostEqual(
            samples[key("meshproxy_endpoint_ewma_seconds", router="web",
                        name="/#/fs/users", endpoint="10.0.0.1:80")],
            0.0125,
        )

    def test_realNodeAndEndpoint(self) -> None:
        """
        The collector reads the balancer's own L{Node} records.
        """
        try:
            from meshproxy.balancing.node import Node
            from meshproxy.discovery.endpoints import Endpoint
        except ImportError as e:
            raise SkipTest(f"balancing or discovery not there yet: {e}") from e
        node = Node(Endpoint("::1", 8080, 2.0))
        node.pending = 1
        node.requests = 3
        node.failures = 1
        node.state = "ejected"
        registry = CollectorRegistry()
        MeshMetrics(registry, lambda: [("web", "/#/fs/users", node)])
        labels = dict(router="web", name="/#/fs/users", endpoint="[::1]:8080")
        samples = scrape(registry)
        self.assertEqual(samples[key("meshproxy_endpoint_pending", **labels)], 1)
        self.assertEqual(samples[key("meshproxy_endpoint_up", **labels)], 0)
        self.assertEqual(samples[key("meshproxy_endpoint_requests_total", **labels)], 3)
        self.assertEqual(samples[key("meshproxy_endpoint_failures_total", **labels)], 1)

    def test_defaultNodesSourceIsEmpty(self) -> None:
        registry = CollectorRegistry()
        metrics = MeshMetrics(registry)
        metrics.route("web", "/#/fs/users").record(200, 0.01)
        samples = scrape(registry)
        self.assertFalse(any(name.startswith("meshproxy_endpoint") for name, _ in samples))

    def test_labelValuesAreEscaped(self) -> None:
        """
        Label values with quotes, backslashes or newlines survive the text
        format.
        """
        name = '/#/fs/we"ird\\na\nme'
        self.metrics.route("web", name).record(200, 0.01)
        samples = scrape(self.registry)
        self.assertEqual(samples[key("meshproxy_requests_total", router="web", name=name)], 1)


@attrs.define
class FakeTLS:
    """
    Stands for L{meshproxy.tls.ServerTLS} and L{meshproxy.tls.ClientTLS}:
    the attributes the collector reads.
    """

    expiries: dict[str, float] = attrs.Factory(dict)
    reloadFailures: int = 0


class TLSMetricsTests(SynchronousTestCase):
    """
    Certificate expiries and reload failures are read from the TLS contexts
    at scrape time.
    """

    def setUp(self) -> None:
        self.registry = CollectorRegistry()
        self.tls: list[tuple[str, list[FakeTLS]]] = []
        MeshMetrics(self.registry, tls=lambda: self.tls)

    def test_expiryPerRouterAndFile(self) -> None:
        server = FakeTLS({"/etc/mesh/web.pem": 1_900_000_000.0, "/etc/mesh/api.pem": 1.8e9})
        client = FakeTLS({"/etc/mesh/caller.pem": 1_850_000_000.0})
        self.tls = [("web", [server, client]), ("tcp", [FakeTLS({"/etc/mesh/web.pem": 1e9})])]
        samples = scrape(self.registry)
        name = "meshproxy_tls_certificate_expiry_timestamp_seconds"
        self.assertEqual(
            {labels: value for (sample, labels), value in samples.items() if sample == name},
            {
                frozenset({"router": "web", "certificate": "/etc/mesh/web.pem"}.items()):
                    1_900_000_000.0,
                frozenset({"router": "web", "certificate": "/etc/mesh/api.pem"}.items()): 1.8e9,
                frozenset({"router": "web", "certificate": "/etc/mesh/caller.pem"}.items()):
                    1_850_000_000.0,
                frozenset({"router": "tcp", "certificate": "/etc/mesh/web.pem"}.items()): 1e9,
            },
        )
        self.assertEqual(families(self.registry)[name], "gauge")

    def test_oneSeriesPerFileTheSoonest(self) -> None:
        """
        Several upstream connectors presenting one file (one per expected
        identity) make one series, the soonest expiry: a connector made
        just before a rotation still presents the old certificate.
        """
        self.tls = [(
            "web",
            [FakeTLS({"/c.pem": 2e9}), FakeTLS({"/c.pem": 1.5e9}), FakeTLS({"/c.pem": 2e9})],
        )]
        samples = scrape(self.registry)  # asserts no duplicate series
        self.assertEqual(
            samples[key("meshproxy_tls_certificate_expiry_timestamp_seconds",
                        router="web", certificate="/c.pem")],
            1.5e9,
        )

    def test_reloadFailuresSummedPerRouter(self) -> None:
        """
        A router's reload failures are those of its listener and of every
        upstream connector; a router with TLS and no context yet (upstream
        TLS not used so far) reads 0 rather than nothing.
        """
        self.tls = [
            ("web", [FakeTLS(reloadFailures=2), FakeTLS(reloadFailures=1)]),
            ("out", []),
        ]
        samples = scrape(self.registry)
        self.assertEqual(samples[key("meshproxy_tls_reload_failures_total", router="web")], 3)
        self.assertEqual(samples[key("meshproxy_tls_reload_failures_total", router="out")], 0)
        self.assertEqual(families(self.registry)["meshproxy_tls_reload_failures"], "counter")
        self.tls[0][1][0].reloadFailures += 1
        samples = scrape(self.registry)
        self.assertEqual(samples[key("meshproxy_tls_reload_failures_total", router="web")], 4)

    def test_noTLSNoFamilySamples(self) -> None:
        samples = scrape(self.registry)
        self.assertFalse(any(name.startswith("meshproxy_tls") for name, _ in samples))

    def test_brokenTLSSourceKeepsTheRest(self) -> None:
        """
        If reading the TLS contexts raises, the failure is logged and the
        other families are still exported.
        """
        def broken() -> list[tuple[str, list[FakeTLS]]]:
            raise RuntimeError("context gone")

        registry = CollectorRegistry()
        node = FakeNode(FakeEndpoint("10.0.0.1", 80))
        metrics = MeshMetrics(registry, lambda: [("web", "/#/fs/users", node)], tls=broken)
        metrics.route("web", "/#/fs/users").record(200, 0.01)
        samples = scrape(registry)
        self.assertEqual(
            samples[key("meshproxy_requests_total", router="web", name="/#/fs/users")], 1
        )
        self.assertIn(
            key("meshproxy_endpoint_up", router="web", name="/#/fs/users", endpoint="10.0.0.1:80"),
            samples,
        )
        self.assertFalse(any(name.startswith("meshproxy_tls") for name, _ in samples))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


def scrapeOpenMetrics(registry: CollectorRegistry) -> list[Any]:
    """
    Render C{registry} as L{exposition} does for an OpenMetrics scraper and
    parse it back with the OpenMetrics parser (which refuses an invalid
    exposition).
    """
    body, contentType = exposition(registry, b"application/openmetrics-text; version=1.0.0")
    assert contentType == OPENMETRICS_CONTENT_TYPE, contentType
    return list(openMetricsFamilies(body.decode("utf-8")))


class WallClock:
    """
    A settable wall clock.
    """

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class RequestFamiliesTests(SynchronousTestCase):
    """
    The per-route families added to the requests and latencies: methods,
    time to first byte, bytes and exemplars.
    """

    def setUp(self) -> None:
        self.registry = CollectorRegistry()
        self.clock = WallClock(1_800_000_000.0)
        self.metrics = MeshMetrics(self.registry, process=False, wallClock=self.clock)
        self.stats = self.metrics.route("web", "/#/fs/users")

    def test_responsesPerMethodSeenWithEveryClass(self) -> None:
        """
        A method has series once it has been seen, one per status class (0
        for the classes it has not had); an unknown method is C{other}.
        """
        self.stats.record(200, 0.01, b"GET")
        self.stats.record(502, 0.01, b"GET")
        self.stats.record(201, 0.01, b"BREW")
        samples = scrape(self.registry)
        responses = {
            (dict(labels)["method"], dict(labels)["code_class"]): value
            for (name, labels), value in samples.items()
            if name == "meshproxy_responses_total"
        }
        self.assertEqual(
            responses,
            {
                ("GET", "1xx"): 0, ("GET", "2xx"): 1, ("GET", "3xx"): 0,
                ("GET", "4xx"): 0, ("GET", "5xx"): 1,
                ("other", "1xx"): 0, ("other", "2xx"): 1, ("other", "3xx"): 0,
                ("other", "4xx"): 0, ("other", "5xx"): 0,
            },
        )
        self.assertEqual(
            samples[key("meshproxy_requests_total", router="web", name="/#/fs/users")], 3
        )

    def test_methodLabelIsBounded(self) -> None:
        """
        However many methods clients invent, the label has at most the
        values of L{METHODS}.
        """
        for i in range(200):
            self.stats.record(200, 0.01, b"M%d" % (i,))
        for method in METHODS[:-1]:
            self.stats.record(200, 0.01, method.encode("ascii"))
        seen = {
            dict(labels)["method"]
            for (name, labels), _ in scrape(self.registry).items()
            if name == "meshproxy_responses_total"
        }
        self.assertEqual(seen, set(METHODS))

    def test_ttfbHistogram(self) -> None:
        self.stats.record(200, 0.5, b"GET", 0.003)
        self.stats.record(200, 0.5, b"GET", 0.2)
        self.stats.record(504, 2.0, b"GET", None)
        samples = scrape(self.registry)
        labels = dict(router="web", name="/#/fs/users")
        self.assertEqual(samples[key("meshproxy_request_ttfb_seconds_count", **labels)], 2)
        self.assertAlmostEqual(
            samples[key("meshproxy_request_ttfb_seconds_sum", **labels)], 0.203
        )
        self.assertEqual(
            samples[key("meshproxy_request_ttfb_seconds_bucket", le="0.005", **labels)], 1
        )
        self.assertEqual(
            samples[key("meshproxy_request_ttfb_seconds_bucket", le="0.25", **labels)], 2
        )
        self.assertEqual(
            samples[key("meshproxy_request_ttfb_seconds_bucket", le="+Inf", **labels)], 2
        )
        self.assertEqual(samples[key("meshproxy_request_duration_seconds_count", **labels)], 3)

    def test_bytesInAndOut(self) -> None:
        self.stats.record(200, 0.01, b"POST", 0.001, 300, 40)
        self.stats.record(200, 0.01, b"GET", 0.001, 0, 2)
        samples = scrape(self.registry)
        labels = dict(router="web", name="/#/fs/users")
        self.assertEqual(
            samples[key("meshproxy_request_bytes_total", direction="in", **labels)], 300
        )
        self.assertEqual(
            samples[key("meshproxy_request_bytes_total", direction="out", **labels)], 42
        )

    def test_exemplarsOnlyInOpenMetrics(self) -> None:
        """
        The latency bucket a sampled request fell in carries its trace id
        as an OpenMetrics exemplar, with its duration; the text format
        has none.
        """
        traceId = "4bf92f3577b34da6a3ce929d0e0e4736"
        self.stats.record(200, 0.004, b"GET", 0.001, traceId=traceId)
        self.stats.record(200, 0.3, b"GET", 0.001)
        text, contentType = exposition(self.registry, None)
        self.assertNotIn(traceId.encode("ascii"), text)
        self.assertNotIn(b"openmetrics", contentType.encode("ascii"))
        [duration] = [
            f for f in scrapeOpenMetrics(self.registry)
            if f.name == "meshproxy_request_duration_seconds"
        ]
        withExemplar = [s for s in duration.samples if s.exemplar is not None]
        self.assertEqual(len(withExemplar), 1)
        [sample] = withExemplar
        self.assertEqual(sample.labels["le"], "0.005")
        self.assertEqual(sample.exemplar.labels, {"trace_id": traceId})
        self.assertEqual(sample.exemplar.value, 0.004)
        self.assertEqual(float(sample.exemplar.timestamp), 1_800_000_000.0)

    def test_exemplarKeepsItsTimestampAcrossScrapes(self) -> None:
        """
        An exemplar is stamped with the time a scrape first saw it, and
        keeps that stamp at later scrapes (so Prometheus stores it once);
        a newer one in the same bucket gets the time of the scrape that
        sees it.
        """
        def stampOf() -> tuple[str, float]:
            [duration] = [
                f for f in scrapeOpenMetrics(self.registry)
                if f.name == "meshproxy_request_duration_seconds"
            ]
            [sample] = [s for s in duration.samples if s.exemplar is not None]
            return sample.exemplar.labels["trace_id"], float(sample.exemplar.timestamp)

        self.stats.record(200, 0.004, b"GET", traceId="a" * 32)
        self.assertEqual(stampOf(), ("a" * 32, 1_800_000_000.0))
        self.clock.now += 15
        self.assertEqual(stampOf(), ("a" * 32, 1_800_000_000.0))
        self.stats.record(200, 0.004, b"GET", traceId="b" * 32)
        self.clock.now += 15
        self.assertEqual(stampOf(), ("b" * 32, 1_800_000_030.0))

    def test_noClockReadWithoutExemplars(self) -> None:
        """
        A scrape reads the wall clock only for routes with exemplars.
        """
        calls = []

        def clock() -> float:
            calls.append(None)
            return 0.0

        registry = CollectorRegistry()
        metrics = MeshMetrics(registry, process=False, wallClock=clock)
        metrics.route("web", "/#/fs/users").record(200, 0.01, b"GET")
        exposition(registry, b"application/openmetrics-text")
        self.assertEqual(calls, [])


class ConnectionGaugeTests(SynchronousTestCase):
    """
    The connections open now, client side (per router) and upstream (per
    endpoint, read from each node's payload).
    """

    def setUp(self) -> None:
        self.registry = CollectorRegistry()
        self.nodes: list[tuple[str, str, Any]] = []
        self.metrics = MeshMetrics(self.registry, lambda: self.nodes, process=False)

    def test_serverConnectionsOpen(self) -> None:
        conns = self.metrics.connections("web")
        conns.opened += 5
        conns.closed += 2
        self.metrics.connections("db")
        samples = scrape(self.registry)
        self.assertEqual(samples[key("meshproxy_server_connections_open", router="web")], 3)
        self.assertEqual(samples[key("meshproxy_server_connections_open", router="db")], 0)

    def test_upstreamConnectionsOfAnHttpPool(self) -> None:
        """
        An HTTP endpoint's pool gives the connections open (idle and busy)
        and the idle ones.
        """
        endpoint = Endpoint("10.0.0.1", 8080)
        pool = Pool(endpoint, clock=TaskClock(), connector=None, limits=ClientConfig())  # type: ignore[arg-type]
        busy, idle = object(), object()
        pool.all.update({busy, idle})
        pool.idle.append(idle)
        node = FakeNode(endpoint)
        node.payload = pool
        self.nodes.append(("web", "/#/fs/users", node))
        labels = dict(router="web", name="/#/fs/users", endpoint="10.0.0.1:8080")
        samples = scrape(self.registry)
        self.assertEqual(samples[key("meshproxy_upstream_connections_open", **labels)], 2)
        self.assertEqual(samples[key("meshproxy_upstream_connections_idle", **labels)], 1)

    def test_upstreamConnectionsOfATcpEndpoint(self) -> None:
        """
        A TCP endpoint's counts give its spliced connections; it has no
        idle ones.
        """
        conns = EndpointConnections()
        conns.open = 4
        conns.connecting = 1
        node = FakeNode(FakeEndpoint("10.0.0.1", 5432))
        node.payload = conns
        self.nodes.append(("db", "/#/fs/pg", node))
        labels = dict(router="db", name="/#/fs/pg", endpoint="10.0.0.1:5432")
        samples = scrape(self.registry)
        self.assertEqual(samples[key("meshproxy_upstream_connections_open", **labels)], 4)
        self.assertNotIn(key("meshproxy_upstream_connections_idle", **labels), samples)

    def test_noPayloadNoUpstreamSeries(self) -> None:
        self.nodes.append(("web", "/#/fs/users", FakeNode(FakeEndpoint("10.0.0.1", 80))))
        samples = scrape(self.registry)
        self.assertIn(
            key("meshproxy_endpoint_up", router="web", name="/#/fs/users", endpoint="10.0.0.1:80"),
            samples,
        )
        self.assertFalse(any(name.startswith("meshproxy_upstream") for name, _ in samples))


class TelemetryAndBuildTests(SynchronousTestCase):
    """
    Telemetry's own counters, the build information and the process
    collectors.
    """

    def test_telemetryCounters(self) -> None:
        """
        What the exporters, the access log and the tap count in
        L{MeshMetrics.telemetry} is exported at scrape time.
        """
        registry = CollectorRegistry()
        metrics = MeshMetrics(registry, process=False)
        stats = metrics.telemetry
        self.assertIsInstance(stats, TelemetryStats)
        stats.exported("zipkin", 10)
        stats.exported("zipkin", 5)
        stats.exported("otlp", 1)
        stats.dropped("zipkin", "queue-full", 3)
        stats.dropped("otlp", "export-failed")
        stats.accessLogLines += 7
        stats.accessLogDropped += 1
        stats.tapEvents += 4
        stats.tapDropped += 2
        samples = scrape(registry)
        exported = "meshproxy_trace_spans_exported_total"
        self.assertEqual(samples[key(exported, exporter="zipkin")], 15)
        self.assertEqual(samples[key(exported, exporter="otlp")], 1)
        self.assertEqual(
            samples[key("meshproxy_trace_spans_dropped_total",
                        exporter="zipkin", reason="queue-full")],
            3,
        )
        self.assertEqual(
            samples[key("meshproxy_trace_spans_dropped_total",
                        exporter="otlp", reason="export-failed")],
            1,
        )
        self.assertEqual(samples[key("meshproxy_access_log_lines_total")], 7)
        self.assertEqual(samples[key("meshproxy_access_log_dropped_total")], 1)
        self.assertEqual(samples[key("meshproxy_tap_events_total")], 4)
        self.assertEqual(samples[key("meshproxy_tap_dropped_total")], 2)

    def test_eachMeshMetricsHasItsOwnTelemetryStats(self) -> None:
        one = MeshMetrics(CollectorRegistry(), process=False)
        two = MeshMetrics(CollectorRegistry(), process=False)
        self.assertIsNot(one.telemetry, two.telemetry)

    def test_buildInfo(self) -> None:
        registry = CollectorRegistry()
        MeshMetrics(registry, process=False)
        labels = {"version": __version__, "python": platform.python_version(),
                  "twisted": importlib.metadata.version("twisted")}
        self.assertEqual(buildInfo(), labels)
        self.assertEqual(scrape(registry)[key("meshproxy_build_info", **labels)], 1)
        [build] = [f for f in scrapeOpenMetrics(registry) if f.name == "meshproxy_build"]
        self.assertEqual(build.type, "info")

    def test_processCollectors(self) -> None:
        """
        By default the registry also has the process's CPU, memory, open
        file descriptors and start time, and the platform's Python.
        """
        if not os.path.exists("/proc/self/stat"):
            raise SkipTest("prometheus_client reads the process's figures from /proc")
        registry = CollectorRegistry()
        MeshMetrics(registry)
        names = {name for name, _ in scrape(registry)}
        for name in (
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_virtual_memory_bytes",
            "process_open_fds",
            "process_max_fds",
            "process_start_time_seconds",
            "python_info",
        ):
            self.assertIn(name, names)
        without = CollectorRegistry()
        MeshMetrics(without, process=False)
        self.assertFalse(any(
            name.startswith(("process_", "python_")) for name, _ in scrape(without)
        ))


class ExpositionTests(SynchronousTestCase):
    """
    L{exposition} answers in the format the C{Accept} header prefers.
    """

    def setUp(self) -> None:
        self.registry = CollectorRegistry()
        MeshMetrics(self.registry, process=False).route("web", "/#/fs/a").record(200, 0.1)

    def assertFormat(self, accept: bytes | str | None, openMetrics: bool) -> None:
        body, contentType = exposition(self.registry, accept)
        if openMetrics:
            self.assertEqual(contentType, OPENMETRICS_CONTENT_TYPE)
            self.assertTrue(contentType.startswith("application/openmetrics-text;"))
            self.assertTrue(body.endswith(b"# EOF\n"), accept)
        else:
            self.assertEqual(contentType, CONTENT_TYPE_LATEST)
            self.assertNotIn(b"# EOF", body)
            self.assertIn(b"meshproxy_requests_total{", body)

    def test_textByDefault(self) -> None:
        for accept in (None, b"", b"*/*", b"text/plain", b"text/plain;version=0.0.4",
                       b"application/json", b"text/html,application/xhtml+xml"):
            self.assertFormat(accept, False)

    def test_openMetricsWhenAsked(self) -> None:
        for accept in (
            b"application/openmetrics-text",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            b"Application/OpenMetrics-Text;version=0.0.1",
            # Prometheus 2's default scrape protocols.
            b"application/openmetrics-text;version=1.0.0,application/openmetrics-text;"
            b"version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
            b"text/plain;q=0.5, application/openmetrics-text;q=0.5",
        ):
            self.assertFormat(accept, True)

    def test_qualityIsRespected(self) -> None:
        """
        A scraper preferring the text format, or refusing OpenMetrics with
        a quality of 0 (or one that is not a number), gets the text format.
        """
        for accept in (
            b"text/plain;version=0.0.4;q=1,application/openmetrics-text;version=1.0.0;q=0.5",
            b"application/openmetrics-text;q=0",
            b"application/openmetrics-text;q=0.0, text/plain",
            b"application/openmetrics-text;q=high",
        ):
            self.assertFormat(accept, False)

    def test_openMetricsParses(self) -> None:
        """
        The OpenMetrics exposition is valid for the OpenMetrics parser,
        counters keep their C{_total} samples.
        """
        names = {s.name for f in scrapeOpenMetrics(self.registry) for s in f.samples}
        self.assertIn("meshproxy_requests_total", names)
        self.assertIn("meshproxy_request_duration_seconds_bucket", names)


_ROUTER_CONFIG = """\
namers:
  - {kind: static, prefix: /#/static, services: {pg: []}}
routers:
  - name: web
    listen: "tcp:4140"
    rules: "/svc => /#/fs;"
  - name: db
    protocol: tcp
    listen: "tcp:5433"
    destination: /#/static/pg
"""


class EndpointSeriesRemovalTests(SynchronousTestCase):
    """
    An endpoint's series go from C{/metrics} when it leaves its bound
    name's set: the collector reads the balancers' current nodes, so
    nothing is left behind for an endpoint that is gone.
    """

    def setUp(self) -> None:
        self.root = self.mktemp()
        os.makedirs(self.root)
        self.write("10.0.0.1:8080\n10.0.0.2:8080\n")
        reactor = MemoryReactorClock()
        self.fileNamer = FileNamer("/#/fs", self.root, reactor=reactor)
        self.staticNamer = StaticNamer("/#/static", {"pg": ["10.0.1.1:5432", "10.0.1.2:5432"]})
        namers = {Path.read("/#/fs"): self.fileNamer, Path.read("/#/static"): self.staticNamer}
        web, db = parseConfig(_ROUTER_CONFIG).routers
        self.registry = CollectorRegistry()
        routers: list[Any] = []
        self.metrics = MeshMetrics(
            self.registry,
            lambda: [(r.name, b, n) for r in routers for b, n in r.nodes()],
            process=False,
        )
        self.http = HttpRouter(
            web, namers, reactor=reactor, metrics=self.metrics,
            balancerFactory=balancerFactory(web.loadBalancer, reactor),
        )
        self.tcp = TcpRouter(
            db, namers, reactor=reactor, metrics=self.metrics,
            balancerFactory=balancerFactory(db.loadBalancer, reactor),
        )
        routers.extend([self.http, self.tcp])
        self.tcp.start()
        self.addCleanup(self.tcp.stop)
        self.addCleanup(self.http.stop)

    def write(self, text: str) -> None:
        with open(os.path.join(self.root, "users"), "w") as f:
            f.write(text)

    def endpointSeries(self, router: str) -> dict[str, set[str]]:
        """
        Family name → endpoints with a series in it, of one router's
        per-endpoint families.
        """
        series: dict[str, set[str]] = {}
        for (name, labels), _ in scrape(self.registry).items():
            labels = dict(labels)
            if "endpoint" in labels and labels["router"] == router:
                series.setdefault(name, set()).add(labels["endpoint"])
        return series

    def test_fileNamerUpdateRemovesSeries(self) -> None:
        """
        An endpoint taken out of its file has no series left after the
        namer's next poll; an emptied file leaves none.
        """
        request = Request(b"GET", b"/", "1.1", [(b"Host", b"users")])
        request.host = b"users"
        client, _ = self.http.route(request, False)
        self.http.record(client, 200, 0.01)
        both = {"10.0.0.1:8080", "10.0.0.2:8080"}
        before = self.endpointSeries("web")
        self.assertEqual(
            set(before),
            {
                "meshproxy_endpoint_pending",
                "meshproxy_endpoint_ewma_seconds",
                "meshproxy_endpoint_up",
                "meshproxy_endpoint_requests_total",
                "meshproxy_endpoint_failures_total",
                "meshproxy_upstream_connections_open",
                "meshproxy_upstream_connections_idle",
            },
        )
        self.assertEqual(set(map(frozenset, before.values())), {frozenset(both)})

        self.write("10.0.0.1:8080\n# 10.0.0.2 left\n")
        self.fileNamer.poll()
        after = self.endpointSeries("web")
        self.assertEqual(set(after), set(before))
        self.assertEqual(set(map(frozenset, after.values())), {frozenset({"10.0.0.1:8080"})})

        self.write("")
        self.fileNamer.poll()
        self.assertEqual(self.endpointSeries("web"), {})
        # The route's own series stay: they are counters of what happened.
        self.assertEqual(
            scrape(self.registry)[
                key("meshproxy_requests_total", router="web", name="/#/fs/users")
            ],
            1,
        )

    def test_balancerNodeRemovalRemovesSeries(self) -> None:
        """
        A TCP router's endpoint removed from its balancer (its namer's set
        changed) has no series left.
        """
        self.assertEqual(
            self.endpointSeries("db")["meshproxy_endpoint_up"], {"10.0.1.1:5432", "10.0.1.2:5432"}
        )
        self.assertEqual(
            self.endpointSeries("db")["meshproxy_upstream_connections_open"],
            {"10.0.1.1:5432", "10.0.1.2:5432"},
        )
        self.staticNamer.bind("pg").set(Addr.bound(frozenset({Endpoint("10.0.1.2", 5432)})))
        series = self.endpointSeries("db")
        self.assertEqual(set(map(frozenset, series.values())), {frozenset({"10.0.1.2:5432"})})
        # The six endpoint families, and the TCP router's own per-endpoint
        # ones (meshproxy.tcp.stats: opened, closed, active, bytes, and the
        # duration histogram's bucket, count and sum).
        self.assertEqual(len(series), 13)
        self.assertEqual(len([name for name in series if name.startswith("meshproxy_tcp_")]), 7)
