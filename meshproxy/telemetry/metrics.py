"""
Prometheus metrics for meshproxy, kept off the hot path.

The data path never touches C{prometheus_client}: it holds a L{RouteStats}
(or a L{ConnectionStats}) and bumps plain attributes on it. One custom
collector, registered by L{MeshMetrics} on the service's
C{CollectorRegistry}, reads those attributes, the error counts and the
balancers' per-endpoint nodes when Prometheus scrapes C{/metrics}.

Everything runs on the reactor thread (the admin API calls
C{generate_latest} from a Klein handler), so a scrape never sees a
half-updated record and no lock is needed.

Exported families::

    meshproxy_requests_total{router,name}
    meshproxy_responses_total{router,name,code_class}        code_class="1xx".."5xx"
    meshproxy_request_duration_seconds{router,name}           histogram
    meshproxy_errors_total{router,reason}                     reason = the mesh-err value
    meshproxy_policy_denied_total{router,rule,identity}       rule = index or "default"
    meshproxy_server_connections_opened_total{router}
    meshproxy_server_connections_closed_total{router}
    meshproxy_endpoint_pending{router,name,endpoint}          gauge
    meshproxy_endpoint_ewma_seconds{router,name,endpoint}     gauge (peak EWMA)
    meshproxy_endpoint_up{router,name,endpoint}               gauge, 1 when state is "live"
    meshproxy_endpoint_requests_total{router,name,endpoint}
    meshproxy_endpoint_failures_total{router,name,endpoint}
    meshproxy_tls_certificate_expiry_timestamp_seconds{router,certificate}
                                                              gauge, Unix time; certificate = file
    meshproxy_tls_reload_failures_total{router}
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.utils import floatToGoString
from twisted.logger import Logger

_log = Logger()

#: Upper bounds (seconds) of the latency histogram buckets, +Inf excluded.
BUCKETS: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)

# The "le" label of each bucket, formatted once the way prometheus_client
# formats its own buckets; the last one is the +Inf bucket.
_LE = tuple(floatToGoString(b) for b in BUCKETS) + ("+Inf",)

# Status classes exported for every route, present from the first scrape so
# that rate() over a class that has not happened yet reads 0, not "no data".
_CODE_CLASSES = ((1, "1xx"), (2, "2xx"), (3, "3xx"), (4, "4xx"), (5, "5xx"))

NodesSource = Callable[[], Iterable[tuple[str, str, Any]]]
TLSSource = Callable[[], Iterable[tuple[str, Iterable[Any]]]]


class RouteStats:
    """
    Request counters and latency histogram of one (router, bound name).

    The router asks L{MeshMetrics.route} for this object once and keeps it,
    then calls L{record} once per answered request; the collector reads the
    attributes at scrape time.

    @ivar router: the router's name.
    @ivar name: the bound name, as a string (C{"/#/fs/users"}).
    @ivar requests: answered requests.
    @ivar responses: answers per status class: C{responses[2]} counts 2xx
        (index 0 is unused; statuses outside 100..599 are not counted here).
    @ivar buckets: non-cumulative counts per bucket of L{BUCKETS}, plus a
        last slot for the observations above the highest bound.
    @ivar seconds: the sum of all recorded durations.
    """

    __slots__ = ("router", "name", "requests", "responses", "buckets", "seconds")

    def __init__(self, router: str, name: str) -> None:
        """
        @param router: the router's name.
        @param name: the bound name, as a string.
        """
        self.router = router
        self.name = name
        self.requests = 0
        self.responses = [0, 0, 0, 0, 0, 0]
        self.buckets = [0] * (len(BUCKETS) + 1)
        self.seconds = 0.0

    def record(self, status: int, seconds: float) -> None:
        """
        Count one answered request. Called for every request: attribute and
        list-slot updates only.

        @param status: the HTTP status sent to the client.
        @param seconds: how long the request took; a negative value (a
            clock stepping back) counts as 0 so the sum never decreases.
        """
        if seconds < 0.0:
            seconds = 0.0
        self.requests += 1
        cls = status // 100
        if 0 < cls < 6:
            self.responses[cls] += 1
        # bisect_left finds the first bound >= seconds: Prometheus buckets
        # are "le" (less than or equal).
        self.buckets[bisect_left(BUCKETS, seconds)] += 1
        self.seconds += seconds

    def __repr__(self) -> str:
        return f"<RouteStats {self.router} {self.name} requests={self.requests}>"


class ConnectionStats:
    """
    Server-side (client-facing) connection counters of one router.

    The server factory bumps L{opened} in C{buildProtocol} (or the protocol's
    C{connectionMade}) and L{closed} in C{connectionLost}.

    @ivar router: the router's name.
    @ivar opened: connections accepted so far.
    @ivar closed: connections closed so far.
    """

    __slots__ = ("router", "opened", "closed")

    def __init__(self, router: str) -> None:
        """
        @param router: the router's name.
        """
        self.router = router
        self.opened = 0
        self.closed = 0

    def __repr__(self) -> str:
        return f"<ConnectionStats {self.router} opened={self.opened} closed={self.closed}>"


def _noNodes() -> Iterable[tuple[str, str, Any]]:
    return ()


def _noTLS() -> Iterable[tuple[str, Iterable[Any]]]:
    return ()


class MeshMetrics:
    """
    The process's metrics: owns the per-route records and exports them,
    with the balancers' per-endpoint counters, through one collector.

    @param registry: the C{CollectorRegistry} to register the collector on
        (the service owns it; tests build their own).
    @param nodes: called at each scrape; returns an iterable of
        C{(routerName, boundName, node)} for every endpoint of every
        balancer. A node has C{endpoint} (with C{host} and C{port}
        attributes, or a C{(host, port)} pair), C{state} (C{"live"},
        C{"ejected"}, ...), C{pending}, C{cost} (peak EWMA, seconds),
        C{requests}, C{successes}, C{failures} and C{consecutiveFailures}.
        A closure over the runtime is fine: it is not called before the
        first scrape. Defaults to no endpoints.
    @param costScale: what C{node.cost} is multiplied by to give seconds:
        1.0 when the balancer keeps it in seconds, 0.001 when in
        milliseconds.
    @param tls: called at each scrape; returns an iterable of
        C{(routerName, contexts)} for every router with TLS (terminated or
        to upstreams), where each context (a
        L{ServerTLS<meshproxy.tls.ServerTLS>} or
        L{ClientTLS<meshproxy.tls.ClientTLS>}) has C{expiries} (the Unix
        time each loaded certificate expires, by its file) and
        C{reloadFailures}. A router with no context yet (upstream TLS not
        used so far) still gets its reload failures, at 0. Defaults to no
        TLS.
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        nodes: NodesSource = _noNodes,
        *,
        costScale: float = 1.0,
        tls: TLSSource = _noTLS,
    ) -> None:
        self._nodes = nodes
        self._tls = tls
        self._costScale = costScale
        self._routes: dict[tuple[str, str], RouteStats] = {}
        self._errors: dict[tuple[str, str], int] = {}
        self._retries: dict[tuple[str, str], int] = {}
        self._denied: dict[tuple[str, str, str], int] = {}
        self._events: dict[tuple[str, str], int] = {}
        self._connections: dict[str, ConnectionStats] = {}
        registry.register(_MeshCollector(self))

    def route(self, router: str, name: str) -> RouteStats:
        """
        The record of one (router, bound name), created on first use.

        Callers should keep the returned object rather than ask again per
        request.

        @param router: the router's name.
        @param name: the bound name, as a string.
        @return: the same L{RouteStats} for the same arguments.
        """
        key = (router, name)
        stats = self._routes.get(key)
        if stats is None:
            stats = self._routes[key] = RouteStats(router, name)
        return stats

    def routes(self, router: str) -> list[RouteStats]:
        """
        The records of one router, for reads outside a scrape (the admin
        API's C{GET /admin/stats}). Reading changes nothing: the records
        are the live objects, to be read on the reactor thread and not
        kept or changed.

        @param router: the router's name.
        @return: its L{RouteStats}, one per bound name that has answered a
            request, sorted by bound name.
        """
        return sorted(
            (stats for (name, _), stats in self._routes.items() if name == router),
            key=lambda stats: stats.name,
        )

    def error(self, router: str, reason: str) -> None:
        """
        Count one error answer made by the proxy itself.

        @param router: the router's name.
        @param reason: the value of the C{mesh-err} header sent
            (C{"no-endpoint"}, C{"timeout"}, ...). Keep it to a small fixed
            set: each value is a time series.
        """
        key = (router, reason)
        self._errors[key] = self._errors.get(key, 0) + 1

    def denied(self, router: str, rule: int | None, identity: str | None) -> None:
        """
        Count one request (or TCP connection) the access policy denied.

        @param rule: the index of the rule that denied it, or L{None} for
            the default (or a name only its allow rules may call).
        @param identity: the caller's verified identity, or L{None}. The
            identities come from certificates the configured CA signed.
        """
        key = (router, "default" if rule is None else str(rule), identity or "unauthenticated")
        self._denied[key] = self._denied.get(key, 0) + 1

    def retry(self, router: str, reason: str) -> None:
        """
        Count one retry (or one retry refused, with reason
        C{"budget-exhausted"}).

        @param router: the router's name.
        @param reason: why the try failed: C{"connect"}, C{"reset"},
            C{"status"}, C{"timeout"}, or C{"budget-exhausted"}.
        """
        key = (router, reason)
        self._retries[key] = self._retries.get(key, 0) + 1

    def event(self, router: str, kind: str) -> None:
        """
        Count one failure-accrual event (C{"ejected"}, C{"revived"},
        C{"probe-failed"}, C{"panic"}).
        """
        key = (router, kind)
        self._events[key] = self._events.get(key, 0) + 1

    def connections(self, router: str) -> ConnectionStats:
        """
        The client-connection counters of one router, created on first use.

        @param router: the router's name.
        @return: the same L{ConnectionStats} for the same router.
        """
        stats = self._connections.get(router)
        if stats is None:
            stats = self._connections[router] = ConnectionStats(router)
        return stats


def _address(endpoint: Any) -> str:
    """
    Format an endpoint as C{host:port}, bracketing IPv6 literals.
    """
    host = getattr(endpoint, "host", None)
    if host is None:
        host, port = endpoint
    else:
        port = endpoint.port
    if ":" in host:
        return f"[{host}]:{port}"
    return f"{host}:{port}"


class _MeshCollector(Collector):
    """
    Reads a L{MeshMetrics} and its node source at scrape time.
    """

    def __init__(self, metrics: MeshMetrics) -> None:
        self._metrics = metrics

    def describe(self) -> Iterator[Metric]:
        # Lets the registry detect a clash with another collector's names at
        # register() time without walking the nodes.
        yield from self._routeFamilies()
        yield from self._errorFamilies()
        yield from self._tlsFamilies()
        yield from self._endpointFamilies()

    def collect(self) -> Iterator[Metric]:
        metrics = self._metrics
        requests, responses, duration = routeFamilies = self._routeFamilies()
        for stats in metrics._routes.values():
            labels = [stats.router, stats.name]
            requests.add_metric(labels, stats.requests)
            counts = stats.responses
            for cls, codeClass in _CODE_CLASSES:
                responses.add_metric([stats.router, stats.name, codeClass], counts[cls])
            cumulative = 0
            buckets = []
            # Both have one entry per bound plus +Inf.
            for le, count in zip(_LE, stats.buckets, strict=True):
                cumulative += count
                buckets.append((le, cumulative))
            duration.add_metric(labels, buckets, stats.seconds)
        yield from routeFamilies

        errors, opened, closed = errorFamilies = self._errorFamilies()
        for (router, reason), count in metrics._errors.items():
            errors.add_metric([router, reason], count)
        for router, conns in metrics._connections.items():
            opened.add_metric([router], conns.opened)
            closed.add_metric([router], conns.closed)
        yield from errorFamilies

        retries = CounterMetricFamily(
            "meshproxy_retries_total",
            "Retries per router and reason (budget-exhausted: a retry refused by the budget).",
            labels=["router", "reason"],
        )
        for (router, reason), count in metrics._retries.items():
            retries.add_metric([router, reason], count)
        yield retries
        denied = CounterMetricFamily(
            "meshproxy_policy_denied",
            "Requests (HTTP) or connections (TCP) the access policy denied, by the rule that"
            " decided (its index, or default) and the caller's identity.",
            labels=["router", "rule", "identity"],
        )
        for (router, rule, identity), count in metrics._denied.items():
            denied.add_metric([router, rule, identity], count)
        yield denied
        events = CounterMetricFamily(
            "meshproxy_endpoint_events_total",
            "Failure accrual events per router: ejected, revived, probe-failed, panic.",
            labels=["router", "event"],
        )
        for (router, kind), count in metrics._events.items():
            events.add_metric([router, kind], count)
        yield events
        yield from self._collectTLS()

        endpointFamilies = self._endpointFamilies()
        pending, ewma, up, epRequests, epFailures = endpointFamilies
        seen = set()
        try:
            for router, name, node in metrics._nodes():
                labels = [router, name, _address(node.endpoint)]
                # Two nodes can share an address (a namer listing one
                # host:port twice with different weights); a repeated
                # series would make the whole exposition invalid.
                key = tuple(labels)
                if key in seen:
                    continue
                seen.add(key)
                pending.add_metric(labels, node.pending)
                ewma.add_metric(labels, node.cost * metrics._costScale)
                up.add_metric(labels, 1 if node.state == "live" else 0)
                epRequests.add_metric(labels, node.requests)
                epFailures.add_metric(labels, node.failures)
        except Exception:
            # A broken node source must not take the route metrics down
            # with it: export the rest and drop the endpoint families.
            _log.failure("reading endpoint nodes for metrics")
            return
        yield from endpointFamilies

    def _collectTLS(self) -> Iterator[Metric]:
        """
        The TLS families: each router's certificate expiries and reload
        failures, read from its TLS contexts.
        """
        failures: dict[str, int] = {}
        expiries: dict[tuple[str, str], float] = {}
        try:
            for router, contexts in self._metrics._tls():
                failures.setdefault(router, 0)
                for context in contexts:
                    failures[router] += context.reloadFailures
                    for path, when in context.expiries.items():
                        # Several upstream connectors can present one file
                        # (one per expected identity): one series, the
                        # soonest expiry (a connector made just before a
                        # rotation is reloaded within a second).
                        key = (router, path)
                        if key not in expiries or when < expiries[key]:
                            expiries[key] = when
        except Exception:
            # As for the nodes: the rest of the scrape goes on without them.
            _log.failure("reading TLS contexts for metrics")
            return
        expiry, reloads = self._tlsFamilies()
        for (router, path), when in sorted(expiries.items()):
            expiry.add_metric([router, path], when)
        for router, count in failures.items():
            reloads.add_metric([router], count)
        yield expiry
        yield reloads

    @staticmethod
    def _tlsFamilies() -> tuple[GaugeMetricFamily, CounterMetricFamily]:
        return (
            GaugeMetricFamily(
                "meshproxy_tls_certificate_expiry_timestamp_seconds",
                "When each certificate a router presents expires (its listener's, and its"
                " client certificates to upstreams once used), as a Unix time, by file.",
                labels=["router", "certificate"],
            ),
            CounterMetricFamily(
                "meshproxy_tls_reload_failures",
                "Reloads of rotated TLS files that failed (the previous files stay in use),"
                " per router.",
                labels=["router"],
            ),
        )

    @staticmethod
    def _routeFamilies() -> tuple[CounterMetricFamily, CounterMetricFamily, HistogramMetricFamily]:
        return (
            CounterMetricFamily(
                "meshproxy_requests_total",
                "Requests answered, per router and bound name.",
                labels=["router", "name"],
            ),
            CounterMetricFamily(
                "meshproxy_responses_total",
                "Responses sent, per router, bound name and status class.",
                labels=["router", "name", "code_class"],
            ),
            HistogramMetricFamily(
                "meshproxy_request_duration_seconds",
                "Time from request received to response complete, per router and bound name.",
                labels=["router", "name"],
            ),
        )

    @staticmethod
    def _errorFamilies() -> tuple[CounterMetricFamily, CounterMetricFamily, CounterMetricFamily]:
        return (
            CounterMetricFamily(
                "meshproxy_errors_total",
                "Error answers made by the proxy itself, per router and mesh-err reason.",
                labels=["router", "reason"],
            ),
            CounterMetricFamily(
                "meshproxy_server_connections_opened_total",
                "Client connections accepted, per router.",
                labels=["router"],
            ),
            CounterMetricFamily(
                "meshproxy_server_connections_closed_total",
                "Client connections closed, per router.",
                labels=["router"],
            ),
        )

    @staticmethod
    def _endpointFamilies() -> tuple[
        GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily,
        CounterMetricFamily, CounterMetricFamily,
    ]:
        labels = ["router", "name", "endpoint"]
        return (
            GaugeMetricFamily(
                "meshproxy_endpoint_pending",
                "Requests in flight to the endpoint.",
                labels=labels,
            ),
            GaugeMetricFamily(
                "meshproxy_endpoint_ewma_seconds",
                "Peak EWMA latency of the endpoint, as the balancer sees it.",
                labels=labels,
            ),
            GaugeMetricFamily(
                "meshproxy_endpoint_up",
                "1 when the endpoint is live, 0 when ejected, probing or draining.",
                labels=labels,
            ),
            CounterMetricFamily(
                "meshproxy_endpoint_requests_total",
                "Requests sent to the endpoint.",
                labels=labels,
            ),
            CounterMetricFamily(
                "meshproxy_endpoint_failures_total",
                "Requests to the endpoint classified as failures.",
                labels=labels,
            ),
        )
