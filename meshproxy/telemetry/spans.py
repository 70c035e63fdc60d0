"""
What the request path hands to telemetry: finished spans (L{Span}) for the
trace exporters, request summaries (L{summary}) for the access log and the
live tap, and the plain counters (L{TelemetryStats}) the metrics collector
reads at scrape time.

These records are made only when something consumes them: a request's
spans when the trace is sampled and an exporter is configured, a summary
when the access log is on (and the request sampled) or a tap has a
subscriber.

The request path hands the exporters one L{RequestSpans} per recorded
request: what it knows, as it is, in one object. The spans themselves
(L{Span}s, or their JSON straight away) are made from it when a batch is
encoded, off the request, where what a route's spans share (names, tags,
endpoints) is written once and reused.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from operator import itemgetter
from typing import TYPE_CHECKING, Any, Final

from zope.interface import Interface

from meshproxy.discovery.endpoints import formatAddress

if TYPE_CHECKING:
    from meshproxy.balancing.node import Node

__all__ = [
    "ISpanSink",
    "ISummarySink",
    "RequestSpans",
    "SERVER",
    "CLIENT",
    "SPAN_COUNT",
    "Span",
    "SUMMARY_FIELDS",
    "Summary",
    "TelemetryStats",
    "addressOf",
    "jsonString",
    "make",
]

SERVER = "SERVER"
CLIENT = "CLIENT"


class Span:
    """
    One finished span, in the terms both Zipkin v2 and OTLP use.

    @ivar traceId: 32 lowercase hex digits (a 64-bit B3 trace id is
        left-padded with zeros to 32).
    @ivar spanId: 16 lowercase hex digits.
    @ivar parentId: the parent span's 16 hex digits, or L{None} for a root.
    @ivar kind: L{SERVER} (the request as meshproxy received it) or
        L{CLIENT} (one try to an upstream).
    @ivar name: the operation, e.g. C{"GET /svc/users"}; bounded (a method
        and a logical name, never a raw path).
    @ivar start: when it started, seconds since the epoch (float).
    @ivar duration: how long it took, seconds (float, never negative).
    @ivar local: C{(serviceName, ip, port)} of meshproxy's side; C{ip} may
        be L{None}, C{port} 0 when unknown.
    @ivar remote: C{(serviceName, ip, port)} of the other side, or L{None};
        C{serviceName} may be L{None}.
    @ivar tags: C{str} → C{str}.
    @ivar error: whether the span ended in error (an OTLP status of error,
        a Zipkin C{error} tag).
    """

    __slots__ = (
        "traceId",
        "spanId",
        "parentId",
        "kind",
        "name",
        "start",
        "duration",
        "local",
        "remote",
        "tags",
        "error",
    )

    #: How many spans it is (queues count spans and L{RequestSpans} alike).
    spanCount = 1

    def __init__(
        self,
        traceId: str,
        spanId: str,
        parentId: str | None,
        kind: str,
        name: str,
        start: float,
        duration: float,
        local: tuple[str, str | None, int],
        remote: tuple[str | None, str | None, int] | None,
        tags: dict[str, str],
        error: bool = False,
    ) -> None:
        self.traceId = traceId
        self.spanId = spanId
        self.parentId = parentId
        self.kind = kind
        self.name = name
        self.start = start
        self.duration = duration if duration > 0.0 else 0.0
        self.local = local
        self.remote = remote
        self.tags = tags
        self.error = error

    def __repr__(self) -> str:
        return "<Span %s %s/%s parent=%s %s>" % (
            self.kind,
            self.traceId,
            self.spanId,
            self.parentId,
            self.name,
        )


#: The index of a L{RequestSpans}' span count (its last field).
SPAN_COUNT: Final = 18

#: A L{RequestSpans} made of its fields, the span count last (1 + the
#: number of try records): C{make(RequestSpans, (traceId, …, grpc,
#: spanCount))}, C{tuple.__new__} called directly (no Python frame).
make = tuple.__new__

# A finished try of a recorded request: (its span id, start, end, the
# endpoint: its address as "host:port", or the balancer's Node of it (its
# address written when the spans are, see addressOf), the status it
# answered (0 for none), why it failed (a reason such as
# "upstream-connect") or None).
TryRecord = tuple[str, float, float, "Node | str", int, str | None]


def addressOf(endpoint: Node | str) -> str:
    """
    The C{"host:port"} of a try's endpoint (see C{TryRecord}): the text as
    it is, or a balancer node's endpoint's address.
    """
    if type(endpoint) is str:
        return endpoint
    return formatAddress(endpoint.endpoint)  # type: ignore[union-attr]


_RequestFields = tuple[
    str,
    str,
    str | None,
    float,
    float,
    bytes,
    bytes,
    bytes | None,
    int,
    str | None,
    str,
    str | None,
    str | None,
    str | None,
    int,
    list[TryRecord],
    str,
    tuple[int, str | None, str | None, bool] | None,
    int,
]


class RequestSpans(_RequestFields):
    """
    The spans of one finished request, not yet made: its server span and
    one client span per try, children of the server span.

    A tuple, made by the request path for a recorded trace in one step
    (L{make}: a tuple of what it knows, no Python call); expanded into
    L{Span}s by L{spans}, or written as Zipkin JSON directly by the
    exporter's encoder (which unpacks it), giving the same spans. Its
    fields, in order (each also an attribute):

    @ivar traceId: 32 lowercase hex digits.
    @ivar spanId: the server span's id.
    @ivar parentId: the caller's span id, or L{None} for a root.
    @ivar start: when the request started, seconds since the epoch.
    @ivar end: when it ended, on the same clock.
    @ivar method: the request's method (C{b"GET"}).
    @ivar target: the request target as received (the query is not kept in
        the spans).
    @ivar host: the Host, or L{None}.
    @ivar status: the status sent to the client (0 when none was).
    @ivar meshErr: the C{mesh-err} reason of an answer made here, or
        L{None}.
    @ivar router: the router's name.
    @ivar name: the bound name the request went to, or L{None} when it was
        not routed.
    @ivar peer: the client's address, or L{None}.
    @ivar identity: the client's verified identity, or L{None}.
    @ivar tries: tries made (the server span is tagged when more than 1).
    @ivar tryRecords: the finished tries kept (see C{TryRecord}), in order.
    @ivar serviceName: C{localEndpoint.serviceName} of its spans.
    @ivar grpc: for a gRPC call, C{(code, service, method, failed)}: its
        status code (a number), the service and method its path names
        (L{None} for a path not of that form), and whether the code is a
        failure (the server span is then in error whatever its HTTP
        status); L{None} for another request.
    @ivar spanCount: how many spans it makes: 1 + C{len(tryRecords)}.
    """

    __slots__ = ()

    def __new__(
        cls,
        traceId: str,
        spanId: str,
        parentId: str | None,
        start: float,
        end: float,
        method: bytes,
        target: bytes,
        host: bytes | None,
        status: int,
        meshErr: str | None,
        router: str,
        name: str | None,
        peer: str | None,
        identity: str | None,
        tries: int,
        tryRecords: list[TryRecord],
        serviceName: str,
        grpc: tuple[int, str | None, str | None, bool] | None = None,
    ) -> RequestSpans:
        """
        A request's spans from its fields by name (the request path makes
        them with L{make}, which is cheaper; the span count is worked out
        here).
        """
        return tuple.__new__(
            cls,
            (
                traceId,
                spanId,
                parentId,
                start,
                end,
                method,
                target,
                host,
                status,
                meshErr,
                router,
                name,
                peer,
                identity,
                tries,
                tryRecords,
                serviceName,
                grpc,
                1 + len(tryRecords),
            ),
        )

    traceId = property(itemgetter(0))
    spanId = property(itemgetter(1))
    parentId = property(itemgetter(2))
    start = property(itemgetter(3))
    end = property(itemgetter(4))
    method = property(itemgetter(5))
    target = property(itemgetter(6))
    host = property(itemgetter(7))
    status = property(itemgetter(8))
    meshErr = property(itemgetter(9))
    router = property(itemgetter(10))
    name = property(itemgetter(11))
    peer = property(itemgetter(12))
    identity = property(itemgetter(13))
    tries = property(itemgetter(14))
    tryRecords = property(itemgetter(15))
    serviceName = property(itemgetter(16))
    grpc = property(itemgetter(17))
    spanCount = property(itemgetter(SPAN_COUNT))

    def __repr__(self) -> str:
        return "<RequestSpans %s/%s parent=%s spans=%d>" % (
            self.traceId,
            self.spanId,
            self.parentId,
            self[SPAN_COUNT],
        )

    def operation(self) -> str:
        """
        The name of its spans: the method and the bound name (or the
        router's name when the request was not routed).
        """
        return "%s %s" % (
            self.method.decode("latin-1"),
            self.router if self.name is None else self.name,
        )

    def spans(self) -> list[Span]:
        """
        Its spans: the server span, then a client span per try.

        The server span is tagged with the method, the path (without the
        query), the status, the router, the Host, the bound name, and when
        they apply the C{mesh-err} reason, the peer identity and the number
        of tries, and for a gRPC call its verdict (C{rpc.system},
        C{rpc.grpc.status_code}, C{rpc.service}, C{rpc.method}); it is in
        error when no status was sent, the status was 5xx, or a gRPC call's
        code is a failure. Each client span is tagged with its endpoint, its status (when
        one came), why it failed (C{error}) and why it was made
        (C{mesh.retry_reason}: the previous try's failure); it is in error
        when it failed or answered 5xx. Its remote endpoint is the bound
        name's last segment, the host and the port of the endpoint.
        """
        method = self.method.decode("latin-1")
        target = self.target
        query = target.find(b"?")
        if query >= 0:
            target = target[:query]
        tags = {
            "http.method": method,
            "http.path": target.decode("utf-8", "replace"),
            "http.status_code": str(self.status),
            "mesh.router": self.router,
        }
        if self.host is not None:
            tags["http.host"] = self.host.decode("latin-1")
        if self.name is not None:
            tags["mesh.name"] = self.name
        if self.meshErr is not None:
            tags["mesh.err"] = self.meshErr
        if self.identity is not None:
            tags["mesh.peer_identity"] = self.identity
        if self.tries > 1:
            tags["mesh.tries"] = str(self.tries)
        status = self.status
        inError = status == 0 or status >= 500
        if self.grpc is not None:
            code, rpcService, rpcMethod, failed = self.grpc
            tags["rpc.system"] = "grpc"
            tags["rpc.grpc.status_code"] = str(code)
            if rpcService is not None and rpcMethod is not None:
                tags["rpc.service"] = rpcService
                tags["rpc.method"] = rpcMethod
            inError = inError or failed
        name = self.operation()
        local = (self.serviceName, None, 0)
        spans = [
            Span(
                self.traceId,
                self.spanId,
                self.parentId,
                SERVER,
                name,
                self.start,
                self.end - self.start,
                local,
                (None, self.peer, 0),
                tags,
                error=inError,
            )
        ]
        service = None if self.name is None else serviceOf(self.name)
        retryReason = None
        for spanId, start, end, address, tryStatus, error in self.tryRecords:
            # The server span, their parent, has the router, name and method.
            address = addressOf(address)
            tryTags = {"mesh.endpoint": address}
            if tryStatus:
                tryTags["http.status_code"] = str(tryStatus)
            if error is not None:
                tryTags["error"] = error
            if retryReason is not None:
                tryTags["mesh.retry_reason"] = retryReason
            retryReason = retryReasonOf(tryStatus, error)
            host, port = splitAddress(address)
            spans.append(
                Span(
                    self.traceId,
                    spanId,
                    self.spanId,
                    CLIENT,
                    name,
                    start,
                    end - start,
                    local,
                    (service, host, port),
                    tryTags,
                    error=error is not None or tryStatus >= 500,
                )
            )
        return spans


def retryReasonOf(status: int, error: str | None) -> str | None:
    """
    Why a try after one that ended so was made (its C{mesh.retry_reason}
    tag): the failure's reason, or C{"status 503"} for a 5xx answer;
    L{None} after a try that did neither.
    """
    if error is not None:
        return error
    if status >= 500:
        return "status %d" % (status,)
    return None


def splitAddress(address: str) -> tuple[str | None, int]:
    """
    An endpoint's C{"host:port"} (C{"[::1]:80"} for IPv6) as its host
    (without brackets; L{None} when empty) and port (0 when not a number).
    """
    host, _, port = address.rpartition(":")
    return host.strip("[]") or None, int(port) if port.isdigit() else 0


def serviceOf(name: str) -> str:
    """
    A bound name's last segment (C{/#/fs/users} → C{users}), the remote
    service of a client span.
    """
    return name.rstrip("/").rpartition("/")[2] or name


#: The fields of a request summary (the access log's JSON object, one per
#: request, and the tap's event), in the order they are written:
#:
#:   - C{time}: when the request started, RFC 3339 UTC with milliseconds
#:     (C{"2026-12-01T09:00:00.123Z"});
#:   - C{router}: the router's name;
#:   - C{name}: the bound name (C{"/#/fs/users"}), or L{None} when the
#:     request was not routed;
#:   - C{method}, C{authority} (the Host), C{path} (the query dropped unless
#:     configured);
#:   - C{status}: the status sent to the client (0 when none was: the client
#:     went away);
#:   - C{meshErr}: the C{mesh-err} reason of an answer meshproxy made, or
#:     L{None};
#:   - C{durationMs}, C{ttfbMs}: from the request head to the end, and to
#:     the response head (L{None} when none came), in milliseconds
#:     (3 decimals);
#:   - C{bytesIn}, C{bytesOut}: request and response body bytes;
#:   - C{endpoint}: the last try's endpoint (C{"127.0.0.1:8080"}) or L{None};
#:   - C{tries}: tries made;
#:   - C{traceId}: 32 hex digits;
#:   - C{reqId}: the C{mesh-reqid} sent upstream;
#:   - C{client}: the caller's address (as X-Forwarded-For would name it);
#:   - C{identity}: the caller's verified certificate identity, or L{None}.
SUMMARY_FIELDS = (
    "time",
    "router",
    "name",
    "method",
    "authority",
    "path",
    "status",
    "meshErr",
    "durationMs",
    "ttfbMs",
    "bytesIn",
    "bytesOut",
    "endpoint",
    "tries",
    "traceId",
    "reqId",
    "client",
    "identity",
)


_FIELD_INDEX = {field: index for index, field in enumerate(SUMMARY_FIELDS)}


class Summary(Mapping[str, Any]):
    """
    A request summary: the fields of L{SUMMARY_FIELDS} in that order, as a
    read-only mapping over their values (made in one step; a dict is made
    only by whoever asks for one).
    """

    __slots__ = ("row",)

    def __init__(self, values: tuple[Any, ...]) -> None:
        """
        @param values: the values of L{SUMMARY_FIELDS}, in order (kept as
            C{row}).
        """
        if len(values) != len(SUMMARY_FIELDS):
            raise ValueError("%d summary values for %d fields" % (len(values), len(SUMMARY_FIELDS)))
        self.row = values

    def __getitem__(self, field: str) -> Any:
        return self.row[_FIELD_INDEX[field]]

    def get(self, field: str, default: Any = None) -> Any:
        index = _FIELD_INDEX.get(field)
        return default if index is None else self.row[index]

    def __iter__(self) -> Iterator[str]:
        return iter(SUMMARY_FIELDS)

    def __len__(self) -> int:
        return len(SUMMARY_FIELDS)

    def __repr__(self) -> str:
        return "Summary(%r)" % (dict(self),)


class ISpanSink(Interface):
    """
    Takes finished spans for export. Never blocks and never grows without
    bound: a span that does not fit is dropped and counted.
    """

    def submit(span: Span) -> None:
        """
        Queue one finished span.
        """

    def submitRequest(spans: RequestSpans) -> None:
        """
        Queue the spans of one finished request (what the request path
        hands on), counted as C{spans.spanCount} spans.
        """


class ISummarySink(Interface):
    """
    Takes request summaries (the access log, the tap). Never blocks.
    """

    def wants(router: str) -> bool:
        """
        Whether a summary of a request of C{router} would be used now (the
        request path builds none otherwise).
        """

    def summarize(summary: Mapping[str, Any], line: bytes) -> None:
        """
        One finished request.

        @param summary: the fields of L{SUMMARY_FIELDS}, JSON-ready (the
            request path gives a L{Summary}).
        @param line: the same, serialised once: a compact JSON object
            (UTF-8, no newline), shared by every consumer.
        """


class TelemetryStats:
    """
    Plain counters of telemetry itself, bumped by the exporters, the access
    log and the tap, and read by the metrics collector at scrape time.

    @ivar spansExported: exporter name (C{"zipkin"}, C{"otlp"}) → spans
        accepted by the collector.
    @ivar spansDropped: C{(exporter, reason)} → spans dropped; reasons:
        C{queue-full}, C{export-failed} (the collector refused or could not
        be reached), C{shutdown}.
    @ivar accessLogLines: lines written.
    @ivar accessLogDropped: lines dropped because the buffer was full (or a
        write failed).
    @ivar tapEvents: events sent to tap subscribers.
    @ivar tapDropped: events dropped because a subscriber was slow.
    """

    __slots__ = (
        "spansExported",
        "spansDropped",
        "accessLogLines",
        "accessLogDropped",
        "tapEvents",
        "tapDropped",
    )

    def __init__(self) -> None:
        self.spansExported: dict[str, int] = {}
        self.spansDropped: dict[tuple[str, str], int] = {}
        self.accessLogLines = 0
        self.accessLogDropped = 0
        self.tapEvents = 0
        self.tapDropped = 0

    def exported(self, exporter: str, count: int) -> None:
        """
        Count spans a collector accepted.
        """
        self.spansExported[exporter] = self.spansExported.get(exporter, 0) + count

    def dropped(self, exporter: str, reason: str, count: int = 1) -> None:
        """
        Count spans dropped.
        """
        key = (exporter, reason)
        self.spansDropped[key] = self.spansDropped.get(key, 0) + count


#: The longest request target (or method and Host together) whose JSON
#: telemetry keeps from request to request (a longer one is written each
#: time): the client chooses them, so this and the count kept bound the
#: memory.
MAX_KEPT_TARGET = 256

_dumps = json.JSONEncoder(ensure_ascii=False).encode



def jsonString(value: str | None) -> str:
    """
    A JSON string (or C{null}) for telemetry written without a JSON encoder:
    the text as it is when it needs no escape (the usual case: names,
    tokens, addresses and request-targets meshproxy checked), else through
    the encoder.
    """
    if value is None:
        return "null"
    if value.isascii() and value.isprintable() and '"' not in value and "\\" not in value:
        return '"' + value + '"'
    return _dumps(value)
