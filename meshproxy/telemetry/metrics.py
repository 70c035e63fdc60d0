"""
Prometheus metrics for meshproxy, kept off the hot path.

The data path never touches C{prometheus_client}: it holds a L{RouteStats}
(or a L{ConnectionStats}, or the L{TelemetryStats} of L{MeshMetrics.telemetry})
and bumps plain attributes on it. One custom collector, registered by
L{MeshMetrics} on the service's C{CollectorRegistry}, reads those
attributes, the error counts and the balancers' per-endpoint nodes when
Prometheus scrapes C{/metrics}; L{MeshMetrics} also registers
C{prometheus_client}'s process and platform collectors on the same
registry.

Everything runs on the reactor thread (the admin API calls L{exposition}
from a Klein handler), so a scrape never sees a half-updated record and no
lock is needed.

Every label takes its values from a bounded set: router names and bound
names (the config's and the namers'), endpoint addresses (the namers'
current sets: an endpoint's series go when it leaves its set), status
classes, the standard methods (any other is C{other}), the C{mesh-err}
reasons and the other fixed words below. Never a raw path, a client's
address or a status code.

Exported families::

    meshproxy_requests_total{router,name}
    meshproxy_responses_total{router,name,method,code_class}
                                        code_class="1xx".."5xx"; method = one of
                                        METHODS: GET HEAD POST PUT DELETE CONNECT
                                        OPTIONS TRACE PATCH, or "other"
    meshproxy_request_duration_seconds{router,name}           histogram; in the
                                        OpenMetrics format its buckets carry
                                        exemplars {trace_id} of sampled requests
    meshproxy_request_ttfb_seconds{router,name}               histogram: to the
                                        response head (requests that got one)
    meshproxy_request_bytes_total{router,name,direction}      body bytes,
                                        direction="in" (from the client) or "out"
    meshproxy_grpc_responses_total{router,name,service,method,code}
                                        gRPC calls answered; service and method as
                                        named in the router's grpc.methods, else
                                        "other"; code = the status code's name (OK,
                                        UNAVAILABLE, ...), "other" outside the 17
    meshproxy_errors_total{router,reason}                     reason = the mesh-err value
    meshproxy_retries_total{router,reason}
    meshproxy_policy_denied_total{router,rule,identity}       rule = index or "default"
    meshproxy_server_connections_opened_total{router}
    meshproxy_server_connections_closed_total{router}
    meshproxy_server_connections_open{router}                 gauge
    meshproxy_endpoint_pending{router,name,endpoint}          gauge
    meshproxy_endpoint_ewma_seconds{router,name,endpoint}     gauge (peak EWMA)
    meshproxy_endpoint_up{router,name,endpoint}               gauge, 1 when state is "live"
    meshproxy_endpoint_requests_total{router,name,endpoint}
    meshproxy_endpoint_failures_total{router,name,endpoint}
    meshproxy_endpoint_events_total{router,event}             ejected, revived, ...
    meshproxy_upstream_connections_open{router,name,endpoint} gauge (HTTP: pooled,
                                        idle and busy; TCP: spliced)
    meshproxy_upstream_connections_idle{router,name,endpoint} gauge (HTTP only)
    meshproxy_tls_certificate_expiry_timestamp_seconds{router,certificate}
                                                              gauge, Unix time; certificate = file
    meshproxy_tls_reload_failures_total{router}
    meshproxy_trace_spans_exported_total{exporter}            exporter = zipkin, otlp
    meshproxy_trace_spans_dropped_total{exporter,reason}      queue-full, export-failed,
                                                              shutdown
    meshproxy_access_log_lines_total
    meshproxy_access_log_dropped_total
    meshproxy_tap_events_total
    meshproxy_tap_dropped_total
    meshproxy_build_info{version,python,twisted}              gauge, 1
    process_*, python_info                                    prometheus_client's
                                        process (CPU, memory, open file
                                        descriptors, start time) and platform
                                        collectors
"""

from __future__ import annotations

import platform
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.openmetrics import exposition as openmetrics
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.samples import Exemplar
from prometheus_client.utils import floatToGoString
from twisted.copyright import version as twistedVersion
from twisted.logger import Logger

from meshproxy import __version__
from meshproxy.grpc import CODE_NAMES
from meshproxy.telemetry.spans import TelemetryStats

_log = Logger()

__all__ = [
    "BUCKETS",
    "METHODS",
    "OPENMETRICS_CONTENT_TYPE",
    "ConnectionStats",
    "MeshMetrics",
    "RouteStats",
    "buildInfo",
    "exposition",
]

#: Upper bounds (seconds) of the latency histogram buckets, +Inf excluded.
BUCKETS: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)

#: The values of the C{method} label: the standard methods, then C{"other"}
#: for any other (an extension method, or a client's invention).
METHODS: tuple[str, ...] = (
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH", "other",
)

#: The content type of the OpenMetrics exposition L{exposition} answers.
OPENMETRICS_CONTENT_TYPE: str = openmetrics.CONTENT_TYPE_LATEST

# The "le" label of each bucket, formatted once the way prometheus_client
# formats its own buckets; the last one is the +Inf bucket.
_LE = tuple(floatToGoString(b) for b in BUCKETS) + ("+Inf",)

# Status classes exported for every method a route has answered, all five
# from its first answer, so that rate() over a class that has not happened
# yet reads 0, not "no data".
_CODE_CLASSES = ((1, "1xx"), (2, "2xx"), (3, "3xx"), (4, "4xx"), (5, "5xx"))

# RouteStats.methods holds, per method of METHODS, six slots indexed by the
# status class (slot 0 unused, as in RouteStats.responses): a method's first
# slot is its index times six. Both spellings are keys, so that a caller
# passing text costs nothing more than one passing bytes.
_CLASSES = 6
_METHOD_BASE: dict[bytes | str, int] = {
    spelling: index * _CLASSES
    for index, method in enumerate(METHODS[:-1])
    for spelling in (method, method.encode("ascii"))
}
_OTHER_BASE = (len(METHODS) - 1) * _CLASSES

NodesSource = Callable[[], Iterable[tuple[str, str, Any]]]
TLSSource = Callable[[], Iterable[tuple[str, Iterable[Any]]]]


class RouteStats:
    """
    Request counters and latency histograms of one (router, bound name).

    The router asks L{MeshMetrics.route} for this object once and keeps it,
    then calls L{record} once per answered request; the collector reads the
    attributes at scrape time.

    @ivar router: the router's name.
    @ivar name: the bound name, as a string (C{"/#/fs/users"}).
    @ivar methods: answers per method and status class: the slots of the
        method at index M of L{METHODS} start at C{6 * M}, then one per
        status class as in L{responses}.
    @ivar buckets: non-cumulative counts per bucket of L{BUCKETS}, plus a
        last slot for the observations above the highest bound.
    @ivar seconds: the sum of all recorded durations.
    @ivar ttfbBuckets: as L{buckets}, for the time to the response head, of
        the requests that got one.
    @ivar ttfbSeconds: the sum of those times.
    @ivar bytesIn: request body bytes received from clients.
    @ivar bytesOut: response body bytes sent to clients.
    @ivar exemplars: per slot of L{buckets}, C{(traceId, seconds)} of the
        latest sampled request that fell in it, or L{None}.
    @ivar grpc: gRPC calls answered, by C{(service, method, code)} labels,
        or L{None} before the first.
    """

    __slots__ = (
        "router",
        "name",
        "methods",
        "buckets",
        "seconds",
        "ttfbBuckets",
        "ttfbSeconds",
        "bytesIn",
        "bytesOut",
        "exemplars",
        "grpc",
    )

    def __init__(self, router: str, name: str) -> None:
        """
        @param router: the router's name.
        @param name: the bound name, as a string.
        """
        self.router = router
        self.name = name
        self.methods = [0] * (_CLASSES * len(METHODS))
        self.buckets = [0] * (len(BUCKETS) + 1)
        self.seconds = 0.0
        self.ttfbBuckets = [0] * (len(BUCKETS) + 1)
        self.ttfbSeconds = 0.0
        self.bytesIn = 0
        self.bytesOut = 0
        self.exemplars: list[tuple[str, float] | None] = [None] * (len(BUCKETS) + 1)
        self.grpc: dict[tuple[str, str, str], int] | None = None

    def record(
        self,
        status: int,
        seconds: float,
        method: bytes | str = b"",
        ttfb: float | None = None,
        bytesIn: int = 0,
        bytesOut: int = 0,
        traceId: str | None = None,
    ) -> None:
        """
        Count one answered request. Called for every request: attribute and
        list-slot updates and one dictionary lookup only.

        @param status: the HTTP status sent to the client.
        @param seconds: how long the request took; a negative value (a
            clock stepping back) counts as 0 so the sum never decreases.
        @param method: the request's method (C{b"GET"}); one that is not in
            L{METHODS} counts as C{other}, as does the default (a caller
            that does not say).
        @param ttfb: seconds from the request to the response head, or
            L{None} when no head came (the answer was made by meshproxy or
            the client went away); negative counts as 0.
        @param bytesIn: request body bytes received from the client.
        @param bytesOut: response body bytes sent to the client.
        @param traceId: the trace id (32 hex digits) of a sampled request,
            kept as the exemplar of the latency bucket it falls in; L{None}
            when the request was not sampled.
        """
        if seconds < 0.0:
            seconds = 0.0
        cls = status // 100
        if 0 < cls < 6:
            self.methods[_METHOD_BASE.get(method, _OTHER_BASE) + cls] += 1
        # bisect_left finds the first bound >= seconds: Prometheus buckets
        # are "le" (less than or equal).
        slot = bisect_left(BUCKETS, seconds)
        self.buckets[slot] += 1
        self.seconds += seconds
        if ttfb is not None:
            if ttfb < 0.0:
                ttfb = 0.0
            self.ttfbBuckets[bisect_left(BUCKETS, ttfb)] += 1
            self.ttfbSeconds += ttfb
        self.bytesIn += bytesIn
        self.bytesOut += bytesOut
        if traceId is not None:
            self.exemplars[slot] = (traceId, seconds)

    def recordGrpc(self, service: str, method: str, code: int | None) -> None:
        """
        Count one gRPC call answered (besides L{record}).

        @param service: its service label (from a bounded set: the
            router's C{grpc.methods}, or C{"other"}).
        @param method: its method label (likewise).
        @param code: its status code; one outside the 17 counts as
            C{"other"}, L{None} (not known) as C{"UNKNOWN"}.
        """
        label = "UNKNOWN" if code is None else CODE_NAMES.get(code, "other")
        counts = self.grpc
        if counts is None:
            counts = self.grpc = {}
        key = (service, method, label)
        counts[key] = counts.get(key, 0) + 1

    # The totals are read (by a scrape, by the admin API) far less often
    # than record() runs: they are summed when read rather than counted
    # apart on every request.

    @property
    def requests(self) -> int:
        """
        Answered requests.
        """
        return sum(self.buckets)

    @property
    def responses(self) -> list[int]:
        """
        Answers per status class, all methods together: C{responses[2]}
        counts 2xx (index 0 is unused; statuses outside 100..599 are not
        counted here). A new list at each read.
        """
        methods = self.methods
        return [
            sum(methods[cls:len(methods):_CLASSES]) if cls else 0 for cls in range(_CLASSES)
        ]

    def __repr__(self) -> str:
        return f"<RouteStats {self.router} {self.name} requests={self.requests}>"


class ConnectionStats:
    """
    Server-side (client-facing) connection counters of one router.

    The server factory bumps L{opened} in C{buildProtocol} (or the protocol's
    C{connectionMade}) and L{closed} in C{connectionLost}; the collector
    exports their difference as the connections open.

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


def buildInfo() -> dict[str, str]:
    """
    The labels of C{meshproxy_build_info}: meshproxy's version (the
    package's C{__version__}, which its distribution's version is read
    from), Python's and Twisted's.
    """
    return {
        "version": __version__,
        "python": platform.python_version(),
        "twisted": twistedVersion,
    }


class MeshMetrics:
    """
    The process's metrics: owns the per-route records and exports them,
    with the balancers' per-endpoint counters, through one collector.

    @ivar telemetry: the L{TelemetryStats} the trace exporters, the access
        log and the tap count in; exported at scrape time.

    @param registry: the C{CollectorRegistry} to register the collector on
        (the service owns it; tests build their own).
    @param nodes: called at each scrape; returns an iterable of
        C{(routerName, boundName, node)} for every endpoint of every
        balancer. A node has C{endpoint} (with C{host} and C{port}
        attributes, or a C{(host, port)} pair), C{state} (C{"live"},
        C{"ejected"}, ...), C{pending}, C{cost} (peak EWMA, seconds),
        C{requests}, C{successes}, C{failures} and C{consecutiveFailures};
        and may have a C{payload}: an HTTP connection pool (C{all}, the set
        of its open connections, and C{idle}, the idle ones among them) or
        the counts of a TCP endpoint's connections (C{open}, an int), read
        for the upstream connection gauges. A closure over the runtime is
        fine: it is not called before the first scrape. Defaults to no
        endpoints.
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
    @param process: whether to register C{prometheus_client}'s process and
        platform collectors on C{registry} too (the service does; a test
        wanting only meshproxy's own families does not).
    @param wallClock: the time since the epoch, to timestamp exemplars
        with when a scrape first sees them.
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        nodes: NodesSource = _noNodes,
        *,
        costScale: float = 1.0,
        tls: TLSSource = _noTLS,
        process: bool = True,
        wallClock: Callable[[], float] = time.time,
    ) -> None:
        self._nodes = nodes
        self._tls = tls
        self._costScale = costScale
        self._wallClock = wallClock
        self._routes: dict[tuple[str, str], RouteStats] = {}
        self._errors: dict[tuple[str, str], int] = {}
        self._retries: dict[tuple[str, str], int] = {}
        self._denied: dict[tuple[str, str, str], int] = {}
        self._events: dict[tuple[str, str], int] = {}
        self._connections: dict[str, ConnectionStats] = {}
        self._registry = registry
        self._extensions: dict[str, Collector] = {}
        self.telemetry = TelemetryStats()
        # meshproxy's own collector first: a second MeshMetrics on the same
        # registry is refused on it, before anything else is registered.
        registry.register(_MeshCollector(self))
        if process:
            ProcessCollector(registry=registry)
            PlatformCollector(registry=registry)

    def extension(
        self, name: str, make: Callable[[NodesSource], Collector]
    ) -> Collector:
        """
        The collector of another part of the proxy (the TCP routers' per
        connection families), made and registered on this registry the
        first time it is asked for.

        @param name: the extension's name.
        @param make: makes the collector, given the node source (see the
            class docstring).
        @return: the same collector for the same name.
        """
        collector = self._extensions.get(name)
        if collector is None:
            collector = self._extensions[name] = make(self._nodes)
            self._registry.register(collector)
        return collector

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



def _upstreamConnections(node: Any) -> tuple[int, int | None] | None:
    """
    The connections a node's payload holds to its endpoint: C{(open, idle)}
    for an HTTP pool, C{(open, None)} for a TCP endpoint's counts, L{None}
    for anything else (no payload yet).
    """
    payload = getattr(node, "payload", None)
    if payload is None:
        return None
    conns = getattr(payload, "all", None)
    if conns is not None:
        return len(conns), len(payload.idle)
    opened = getattr(payload, "open", None)
    if isinstance(opened, int):
        return opened, None
    return None


def _cumulative(
    counts: list[int], exemplars: list[Exemplar | None] | None = None
) -> list[Any]:
    """
    The buckets of a histogram family from non-cumulative counts (one per
    bound of L{BUCKETS}, then +Inf), each with its exemplar if given.
    """
    buckets: list[Any] = []
    cumulative = 0
    # Both have one entry per bound plus +Inf.
    for slot, (le, count) in enumerate(zip(_LE, counts, strict=True)):
        cumulative += count
        exemplar = None if exemplars is None else exemplars[slot]
        if exemplar is None:
            buckets.append((le, cumulative))
        else:
            buckets.append((le, cumulative, exemplar))
    return buckets


class _MeshCollector(Collector):
    """
    Reads a L{MeshMetrics} and its node source at scrape time.
    """

    def __init__(self, metrics: MeshMetrics) -> None:
        self._metrics = metrics
        self._build = buildInfo()
        # (router, name, bucket) -> (trace id, when a scrape first saw it):
        # an exemplar keeps one timestamp however often it is scraped, so
        # Prometheus stores it once. One entry per bucket of each route.
        self._stamps: dict[tuple[str, str, int], tuple[str, float]] = {}

    def describe(self) -> Iterator[Metric]:
        # Lets the registry detect a clash with another collector's names at
        # register() time without walking the nodes.
        yield from self._routeFamilies()
        yield from self._errorFamilies()
        yield from self._telemetryFamilies()
        yield self._buildFamily()
        yield from self._tlsFamilies()
        yield from self._endpointFamilies()

    def collect(self) -> Iterator[Metric]:
        yield from self._collectRoutes()
        yield from self._collectErrors()
        yield from self._collectTelemetry()
        build = self._buildFamily()
        build.add_metric([], self._build)
        yield build
        yield from self._collectTLS()
        yield from self._collectEndpoints()

    def _collectRoutes(self) -> Iterator[Metric]:
        """
        The families of the routes' records.
        """
        metrics = self._metrics
        now: float | None = None
        routeFamilies = self._routeFamilies()
        requests, responses, duration, ttfb, transferred, grpcResponses = routeFamilies
        for stats in metrics._routes.values():
            router, name = stats.router, stats.name
            labels = [router, name]
            requests.add_metric(labels, stats.requests)
            counts = stats.methods
            for index, method in enumerate(METHODS):
                base = index * _CLASSES
                # A method appears once it has been seen, with every class.
                if not any(counts[base + 1:base + _CLASSES]):
                    continue
                for cls, codeClass in _CODE_CLASSES:
                    responses.add_metric([router, name, method, codeClass], counts[base + cls])
            exemplars: list[Exemplar | None] | None = None
            if any(stats.exemplars):
                if now is None:
                    now = metrics._wallClock()
                exemplars = self._exemplars(stats, now)
            duration.add_metric(labels, _cumulative(stats.buckets, exemplars), stats.seconds)
            ttfb.add_metric(labels, _cumulative(stats.ttfbBuckets), stats.ttfbSeconds)
            transferred.add_metric([router, name, "in"], stats.bytesIn)
            transferred.add_metric([router, name, "out"], stats.bytesOut)
            if stats.grpc is not None:
                for (service, method, code), count in stats.grpc.items():
                    grpcResponses.add_metric([router, name, service, method, code], count)
        yield from routeFamilies

    def _exemplars(self, stats: RouteStats, now: float) -> list[Exemplar | None]:
        """
        The exemplars of one route's latency buckets, each timestamped with
        the time a scrape first saw it.
        """
        stamps = self._stamps
        exemplars: list[Exemplar | None] = []
        for slot, kept in enumerate(stats.exemplars):
            if kept is None:
                exemplars.append(None)
                continue
            traceId, seconds = kept
            key = (stats.router, stats.name, slot)
            stamp = stamps.get(key)
            if stamp is None or stamp[0] != traceId:
                stamp = stamps[key] = (traceId, now)
            exemplars.append(Exemplar({"trace_id": traceId}, seconds, stamp[1]))
        return exemplars

    def _collectErrors(self) -> Iterator[Metric]:
        """
        The errors, retries, policy denials, accrual events and client
        connections.
        """
        metrics = self._metrics
        errors, opened, closed, openNow = errorFamilies = self._errorFamilies()
        for (router, reason), count in metrics._errors.items():
            errors.add_metric([router, reason], count)
        for router, conns in metrics._connections.items():
            opened.add_metric([router], conns.opened)
            closed.add_metric([router], conns.closed)
            openNow.add_metric([router], max(conns.opened - conns.closed, 0))
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

    def _collectTelemetry(self) -> Iterator[Metric]:
        """
        Telemetry's own counters: spans exported and dropped, access log
        lines, tap events.
        """
        stats = self._metrics.telemetry
        families = self._telemetryFamilies()
        exported, dropped, lines, linesDropped, events, eventsDropped = families
        for exporter, count in sorted(stats.spansExported.items()):
            exported.add_metric([exporter], count)
        for (exporter, reason), count in sorted(stats.spansDropped.items()):
            dropped.add_metric([exporter, reason], count)
        lines.add_metric([], stats.accessLogLines)
        linesDropped.add_metric([], stats.accessLogDropped)
        events.add_metric([], stats.tapEvents)
        eventsDropped.add_metric([], stats.tapDropped)
        yield from families

    def _collectEndpoints(self) -> Iterator[Metric]:
        """
        The per-endpoint families, read from the balancers' current nodes:
        an endpoint that left its set has no series any more.
        """
        metrics = self._metrics
        endpointFamilies = self._endpointFamilies()
        pending, ewma, up, epRequests, epFailures, upstreamOpen, upstreamIdle = endpointFamilies
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
                conns = _upstreamConnections(node)
                if conns is not None:
                    upstreamOpen.add_metric(labels, conns[0])
                    if conns[1] is not None:
                        upstreamIdle.add_metric(labels, conns[1])
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
    def _routeFamilies() -> tuple[
        CounterMetricFamily, CounterMetricFamily, HistogramMetricFamily,
        HistogramMetricFamily, CounterMetricFamily, CounterMetricFamily,
    ]:
        return (
            CounterMetricFamily(
                "meshproxy_requests_total",
                "Requests answered, per router and bound name.",
                labels=["router", "name"],
            ),
            CounterMetricFamily(
                "meshproxy_responses_total",
                "Responses sent, per router, bound name, method (the standard ones, the rest"
                " as other) and status class.",
                labels=["router", "name", "method", "code_class"],
            ),
            HistogramMetricFamily(
                "meshproxy_request_duration_seconds",
                "Time from request received to response complete, per router and bound name.",
                labels=["router", "name"],
            ),
            HistogramMetricFamily(
                "meshproxy_request_ttfb_seconds",
                "Time from request received to the response head, per router and bound name,"
                " of the requests that got one.",
                labels=["router", "name"],
            ),
            CounterMetricFamily(
                "meshproxy_request_bytes_total",
                "Body bytes per router and bound name: in, of requests received from clients;"
                " out, of responses sent to them.",
                labels=["router", "name", "direction"],
            ),
            CounterMetricFamily(
                "meshproxy_grpc_responses_total",
                "gRPC calls answered, per router, bound name, service and method (those the"
                " router's grpc.methods names, the rest as other) and status code.",
                labels=["router", "name", "service", "method", "code"],
            ),
        )

    @staticmethod
    def _errorFamilies() -> tuple[
        CounterMetricFamily, CounterMetricFamily, CounterMetricFamily, GaugeMetricFamily,
    ]:
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
            GaugeMetricFamily(
                "meshproxy_server_connections_open",
                "Client connections open, per router.",
                labels=["router"],
            ),
        )

    @staticmethod
    def _telemetryFamilies() -> tuple[
        CounterMetricFamily, CounterMetricFamily, CounterMetricFamily,
        CounterMetricFamily, CounterMetricFamily, CounterMetricFamily,
    ]:
        return (
            CounterMetricFamily(
                "meshproxy_trace_spans_exported_total",
                "Spans a trace collector accepted, per exporter.",
                labels=["exporter"],
            ),
            CounterMetricFamily(
                "meshproxy_trace_spans_dropped_total",
                "Spans dropped, per exporter and reason (queue-full, export-failed, shutdown).",
                labels=["exporter", "reason"],
            ),
            CounterMetricFamily(
                "meshproxy_access_log_lines_total",
                "Access log lines written.",
            ),
            CounterMetricFamily(
                "meshproxy_access_log_dropped_total",
                "Access log lines dropped (the buffer was full, or a write failed).",
            ),
            CounterMetricFamily(
                "meshproxy_tap_events_total",
                "Request summaries sent to tap subscribers.",
            ),
            CounterMetricFamily(
                "meshproxy_tap_dropped_total",
                "Request summaries dropped because a tap subscriber was slow.",
            ),
        )

    @staticmethod
    def _buildFamily() -> InfoMetricFamily:
        return InfoMetricFamily(
            "meshproxy_build",
            "meshproxy's version, and Python's and Twisted's, as labels; always 1.",
            labels=["version", "python", "twisted"],
        )

    @staticmethod
    def _endpointFamilies() -> tuple[
        GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily,
        CounterMetricFamily, CounterMetricFamily, GaugeMetricFamily, GaugeMetricFamily,
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
            GaugeMetricFamily(
                "meshproxy_upstream_connections_open",
                "Connections open to the endpoint: HTTP, pooled ones, idle and busy; TCP,"
                " spliced ones.",
                labels=labels,
            ),
            GaugeMetricFamily(
                "meshproxy_upstream_connections_idle",
                "HTTP connections to the endpoint idle in its pool.",
                labels=labels,
            ),
        )


def _openMetricsWanted(accept: str) -> bool:
    """
    Whether an C{Accept} header asks for OpenMetrics rather than the text
    format: it lists C{application/openmetrics-text} with a quality above
    0, and not below that of C{text/plain} (Prometheus lists both, in the
    order of its C{scrape_protocols}).
    """
    openQuality = textQuality = 0.0
    for mediaRange in accept.split(","):
        mediaType, *params = mediaRange.split(";")
        mediaType = mediaType.strip().lower()
        if mediaType not in ("application/openmetrics-text", "text/plain"):
            continue
        quality = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    quality = float(value.strip())
                except ValueError:
                    quality = 0.0
        if mediaType == "text/plain":
            textQuality = max(textQuality, quality)
        else:
            openQuality = max(openQuality, quality)
    return openQuality > 0.0 and openQuality >= textQuality


def exposition(registry: CollectorRegistry, accept: bytes | str | None) -> tuple[bytes, str]:
    """
    Render a registry in the format a scraper asks for: OpenMetrics (with
    the latency histogram's exemplars) when its C{Accept} header prefers
    C{application/openmetrics-text}, the Prometheus text format otherwise.

    @param registry: the registry to render.
    @param accept: the request's C{Accept} header, or L{None}.
    @return: C{(body, contentType)}.
    """
    if isinstance(accept, bytes):
        accept = accept.decode("latin-1")
    if accept and _openMetricsWanted(accept):
        return openmetrics.generate_latest(registry), OPENMETRICS_CONTENT_TYPE
    return generate_latest(registry), CONTENT_TYPE_LATEST
