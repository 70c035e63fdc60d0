"""
What the request path hands to telemetry: finished spans (L{Span}) for the
trace exporters, request summaries (L{summary}) for the access log and the
live tap, and the plain counters (L{TelemetryStats}) the metrics collector
reads at scrape time.

These records are made only when something consumes them: a span when the
trace is sampled and an exporter is configured, a summary when the access
log is on (and the request sampled) or a tap has a subscriber.
"""

from __future__ import annotations

import json
from typing import Any

from zope.interface import Interface

__all__ = [
    "ISpanSink",
    "ISummarySink",
    "SERVER",
    "CLIENT",
    "Span",
    "SUMMARY_FIELDS",
    "TelemetryStats",
    "jsonString",
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


class ISpanSink(Interface):
    """
    Takes finished spans for export. Never blocks and never grows without
    bound: a span that does not fit is dropped and counted.
    """

    def submit(span: Span) -> None:
        """
        Queue one finished span.
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

    def summarize(summary: dict[str, Any], line: bytes) -> None:
        """
        One finished request.

        @param summary: the fields of L{SUMMARY_FIELDS}, JSON-ready.
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
