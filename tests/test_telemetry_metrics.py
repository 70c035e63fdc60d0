"""
Tests for L{meshproxy.telemetry.metrics}: what the hot path records is what
a Prometheus scrape reads back.
"""

from __future__ import annotations

import math
from typing import Any

import attrs
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from meshproxy.telemetry.metrics import BUCKETS, ConnectionStats, MeshMetrics, RouteStats


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
        self.assertEqual(stats.buckets, [0] * (len(BUCKETS) + 1))

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
        Exactly one collector goes on the registry; a second L{MeshMetrics}
        on the same registry is refused as a duplicate rather than silently
        exporting every series twice.
        """
        collectors = list(self.registry._collector_to_names)
        self.assertEqual(len(collectors), 1)
        self.assertTrue(callable(collectors[0].collect))
        self.assertRaises(ValueError, MeshMetrics, self.registry)

    def test_emptyScrapeIsValid(self) -> None:
        """
        Before any traffic every family is declared with its type and no
        samples.
        """
        self.assertEqual(scrape(self.registry), {})
        self.assertEqual(
            families(self.registry),
            {
                "meshproxy_requests": "counter",
                "meshproxy_responses": "counter",
                "meshproxy_request_duration_seconds": "histogram",
                "meshproxy_errors": "counter",
                "meshproxy_server_connections_opened": "counter",
                "meshproxy_server_connections_closed": "counter",
                "meshproxy_endpoint_pending": "gauge",
                "meshproxy_endpoint_ewma_seconds": "gauge",
                "meshproxy_endpoint_up": "gauge",
                "meshproxy_endpoint_requests": "counter",
                "meshproxy_endpoint_failures": "counter",
                "meshproxy_retries": "counter",
                "meshproxy_endpoint_events": "counter",
                "meshproxy_policy_denied": "counter",
                "meshproxy_tls_certificate_expiry_timestamp_seconds": "gauge",
                "meshproxy_tls_reload_failures": "counter",
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
                    name="/#/fs/users", code_class=codeClass)
            ]
            for codeClass in ("1xx", "2xx", "3xx", "4xx", "5xx")
        }
        self.assertEqual(
            byClass, {"1xx": 0, "2xx": 3, "3xx": 0, "4xx": 1, "5xx": 1}
        )
        self.assertEqual(
            samples[key("meshproxy_responses_total", router="web",
                        name="/#/fs/orders", code_class="5xx")],
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
