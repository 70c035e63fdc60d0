"""
What a TCP router counts per endpoint, and the Prometheus families made of
it at scrape time.

Each endpoint of a TCP router's bound names carries an
L{EndpointConnections} (its node's C{payload}): the spliced connections
open and being opened, and counters the splices add to when they end. The
data path only bumps plain attributes; L{TcpCollector}, registered once on
the process's registry (by
L{MeshMetrics.extension<meshproxy.telemetry.metrics.MeshMetrics.extension>}),
reads them when Prometheus scrapes, the bytes of the connections still
open included. An endpoint that leaves its set takes its series with it,
as the other per-endpoint families do.

Exported families (labels C{router}, C{name}: the bound name, C{endpoint})::

    meshproxy_tcp_connections_opened_total       spliced to the endpoint
    meshproxy_tcp_connections_closed_total
    meshproxy_tcp_connections_active             gauge
    meshproxy_tcp_bytes_total{direction}         in: from the client, out: to it
    meshproxy_tcp_connection_duration_seconds    histogram, accept to close
    meshproxy_tcp_connect_failures_total{reason} refused, timeout,
                                                 unreachable, other
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString
from twisted.internet import error
from twisted.logger import Logger

if TYPE_CHECKING:
    from twisted.python.failure import Failure

    from meshproxy.tcp.splice import Splice

__all__ = [
    "DURATION_BUCKETS",
    "EndpointConnections",
    "TcpCollector",
    "connectFailureReason",
]

_log = Logger()

#: Upper bounds (seconds) of the connection duration buckets, +Inf
#: excluded: connections last from milliseconds (a query) to hours (a pool).
DURATION_BUCKETS: tuple[float, ...] = (
    0.005, 0.025, 0.1, 0.5, 1.0, 5.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 14400.0,
)

_LE = tuple(floatToGoString(b) for b in DURATION_BUCKETS) + ("+Inf",)

#: The reasons a connection attempt fails, as labels.
CONNECT_FAILURES = ("refused", "timeout", "unreachable", "other")


def connectFailureReason(reason: Failure) -> str:
    """
    Why a connection attempt failed, as one of L{CONNECT_FAILURES}.
    """
    if reason.check(error.ConnectionRefusedError):
        return "refused"
    if reason.check(error.TimeoutError):
        return "timeout"
    if reason.check(error.NoRouteError, error.DNSLookupError):
        return "unreachable"
    return "other"


class EndpointConnections:
    """
    The connections of one endpoint of a TCP router (its node's
    C{payload}).

    @ivar connecting: connection attempts in progress.
    @ivar open: spliced pairs open.
    @ivar opened: pairs spliced so far.
    @ivar closed: pairs ended so far.
    @ivar bytesIn: bytes read from the clients of the pairs ended.
    @ivar bytesOut: bytes read from the endpoint for the pairs ended.
    @ivar buckets: the pairs ended, by duration (one slot per bound of
        L{DURATION_BUCKETS}, then +Inf).
    @ivar seconds: the durations of the pairs ended, summed.
    @ivar failures: connection attempts that failed, by reason.
    @ivar live: the splices open, whose bytes count at scrape time.
    """

    __slots__ = (
        "connecting",
        "open",
        "opened",
        "closed",
        "bytesIn",
        "bytesOut",
        "buckets",
        "seconds",
        "failures",
        "live",
    )

    def __init__(self) -> None:
        self.connecting = 0
        self.open = 0
        self.opened = 0
        self.closed = 0
        self.bytesIn = 0
        self.bytesOut = 0
        self.buckets = [0] * (len(DURATION_BUCKETS) + 1)
        self.seconds = 0.0
        self.failures: dict[str, int] = {}
        self.live: set[Splice] = set()

    def spliced(self, splice: Splice) -> None:
        """
        A connection to this endpoint is made and spliced.
        """
        self.connecting -= 1
        self.open += 1
        self.opened += 1
        self.live.add(splice)

    def ended(self, splice: Splice, seconds: float, bytesIn: int, bytesOut: int) -> None:
        """
        A spliced pair ended after C{seconds}, having carried C{bytesIn}
        from the client and C{bytesOut} to it.
        """
        self.open -= 1
        self.closed += 1
        self.live.discard(splice)
        self.bytesIn += bytesIn
        self.bytesOut += bytesOut
        self.seconds += seconds
        self.buckets[bisect_left(DURATION_BUCKETS, seconds)] += 1

    def failed(self, reason: str) -> None:
        """
        A connection attempt to this endpoint failed for C{reason}.
        """
        self.connecting -= 1
        self.failures[reason] = self.failures.get(reason, 0) + 1

    def transferred(self) -> tuple[int, int]:
        """
        The bytes carried so far each way, those of the pairs open
        included: C{(in, out)}.
        """
        bytesIn, bytesOut = self.bytesIn, self.bytesOut
        for splice in self.live:
            bytesIn += splice.client.received
            upstream = splice.upstream
            if upstream is not None:
                bytesOut += upstream.received
        return bytesIn, bytesOut

    def counts(self) -> dict[str, int]:
        """
        The C{connections} of this endpoint in C{GET /admin/state}.
        """
        return {
            "open": self.open,
            "connecting": self.connecting,
            "opened": self.opened,
            "closed": self.closed,
        }


class TcpCollector(Collector):
    """
    Reads the L{EndpointConnections} of every TCP router's endpoints at
    scrape time (see the module docstring).
    """

    def __init__(self, nodes: Callable[[], Iterable[tuple[str, str, Any]]]) -> None:
        """
        @param nodes: every C{(router, bound name, node)} of the process's
            balancers; the nodes whose payload is an
            L{EndpointConnections} are a TCP router's.
        """
        self._nodes = nodes

    @staticmethod
    def _families() -> tuple[Any, ...]:
        labels = ["router", "name", "endpoint"]
        return (
            CounterMetricFamily(
                "meshproxy_tcp_connections_opened",
                "TCP connections spliced to the endpoint.",
                labels=labels,
            ),
            CounterMetricFamily(
                "meshproxy_tcp_connections_closed",
                "TCP connections to the endpoint that ended (both sides closed).",
                labels=labels,
            ),
            GaugeMetricFamily(
                "meshproxy_tcp_connections_active",
                "TCP connections spliced to the endpoint now.",
                labels=labels,
            ),
            CounterMetricFamily(
                "meshproxy_tcp_bytes",
                "Bytes carried by TCP connections to the endpoint: in from the clients,"
                " out to them.",
                labels=[*labels, "direction"],
            ),
            HistogramMetricFamily(
                "meshproxy_tcp_connection_duration_seconds",
                "How long TCP connections to the endpoint lasted, from accept to close.",
                labels=labels,
            ),
            CounterMetricFamily(
                "meshproxy_tcp_connect_failures",
                "Connection attempts to the endpoint that failed, by reason: refused,"
                " timeout, unreachable, other.",
                labels=[*labels, "reason"],
            ),
        )

    def describe(self) -> Iterator[Metric]:
        yield from self._families()

    def collect(self) -> Iterator[Metric]:
        families = self._families()
        opened, closed, active, transferred, duration, failures = families
        seen = set()
        try:
            for router, name, node in self._nodes():
                conns = node.payload
                if not isinstance(conns, EndpointConnections):
                    continue
                endpoint = _address(node.endpoint)
                labels = [router, name, endpoint]
                key = (router, name, endpoint)
                if key in seen:
                    continue
                seen.add(key)
                opened.add_metric(labels, conns.opened)
                closed.add_metric(labels, conns.closed)
                active.add_metric(labels, conns.open)
                bytesIn, bytesOut = conns.transferred()
                transferred.add_metric([*labels, "in"], bytesIn)
                transferred.add_metric([*labels, "out"], bytesOut)
                buckets = []
                cumulative = 0
                for le, count in zip(_LE, conns.buckets, strict=True):
                    cumulative += count
                    buckets.append((le, cumulative))
                duration.add_metric(labels, buckets, conns.seconds)
                for reason, count in sorted(conns.failures.items()):
                    failures.add_metric([*labels, reason], count)
        except Exception:
            _log.failure("reading TCP endpoint nodes for metrics")
            return
        yield from families


def _address(endpoint: Any) -> str:
    host = endpoint.host
    if ":" in host:
        return "[%s]:%d" % (host, endpoint.port)
    return "%s:%d" % (host, endpoint.port)
