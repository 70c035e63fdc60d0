"""
The C{telemetry} section: distributed tracing (sampling, exporters, batching)
and the access log.

Every key is optional. Without a C{tracing} exporter no span is kept (trace
context is still propagated); without C{accessLog} no line is written.
"""

from collections.abc import Iterable
from typing import Any

from meshproxy.config import checks
from meshproxy.config.fields import (
    Bool,
    Checked,
    Context,
    Defaulted,
    Duration,
    Integer,
    NonEmptyText,
    Number,
    baseDirectory,
)
from meshproxy.config.problems import Problem
from meshproxy.config.section import Section, View

__all__ = [
    "AccessLogConfig",
    "BatchConfig",
    "ExporterConfig",
    "TelemetryConfig",
    "TracingConfig",
]


def _httpURL(value: Any) -> str:
    """
    An C{http://} or C{https://} URL with a host (a collector's address).
    """
    checks.httpURL(value, "a collector URL", "http://127.0.0.1:9411/api/v2/spans")
    return value


HttpURL = Checked(_httpURL, {"type": "string", "pattern": "^https?://"})


def _logPath(value: Any, context: Context) -> str:
    """
    C{-} (standard output), or a file made absolute against the config
    file's directory.
    """
    if value == "-":
        return value
    return checks.directory(value, baseDirectory(context))


LogPath = Checked(
    _logPath,
    {"type": "string", "minLength": 1, "description": '"-" or a file'},
    withContext=True,
)


class ExporterConfig(Section):
    """
    Where one exporter posts spans.

    @ivar url: the collector's URL (Zipkin: C{…/api/v2/spans}; OTLP/HTTP:
        C{…/v1/traces}).
    @ivar gzip: whether bodies are sent gzip-compressed (C{Content-Encoding:
        gzip}); plain JSON with a C{Content-Length} otherwise.
    @ivar timeout: seconds one post may take before it is abandoned (its
        spans are counted as dropped).
    """

    url: HttpURL
    gzip: Bool = False
    timeout: Duration() = "5s"


class BatchConfig(Section):
    """
    How finished spans are batched for export.

    @ivar size: spans per post at most; a full batch is sent at once.
    @ivar interval: seconds at most between a span's end and its post.
    @ivar queue: spans waiting for export at most; past it, spans are
        dropped and counted.
    """

    size: Integer(1, 100000) = 256
    interval: Duration() = "1s"
    queue: Integer(1, 10000000) = 10000

    @classmethod
    def _crossCheck(cls, view: View) -> Iterable[Problem]:
        values = view.values("size", "queue")
        if values is not None and values[0] > values[1]:
            yield Problem(("size",), f"must not be larger than queue ({values[1]})")


class TracingConfig(Section):
    """
    Distributed tracing.

    @ivar sampleRate: the share (0 to 1) of the traces started here that are
        recorded; a caller's sampled flag is honoured as received.
    @ivar zipkin: the Zipkin v2 exporter, or L{None}.
    @ivar otlp: the OTLP/HTTP (JSON) exporter, or L{None}.
    @ivar batch: the L{BatchConfig}.
    @ivar serviceName: the local service name spans carry
        (C{localEndpoint.serviceName}, OTLP C{service.name}).
    """

    sampleRate: Number(0, 1) = 1.0
    zipkin: ExporterConfig | None = None
    otlp: ExporterConfig | None = None
    batch: Defaulted(BatchConfig)
    serviceName: NonEmptyText = "meshproxy"


class AccessLogConfig(Section):
    """
    The access log: one JSON object per line per request.

    @ivar path: C{-} for standard output (journald), or a file, reopened on
        SIGUSR1 (logrotate).
    @ivar sampleRate: the share (0 to 1) of requests logged.
    @ivar query: whether C{path} keeps the query string (dropped by
        default: it may carry secrets).
    @ivar buffer: lines waiting to be written at most; past it, lines are
        dropped and counted.
    """

    path: LogPath = "-"
    sampleRate: Number(0, 1) = 1.0
    query: Bool = False
    buffer: Integer(1, 10000000) = 10000


class TelemetryConfig(Section):
    """
    Tracing and the access log (metrics need no settings).

    @ivar tracing: the L{TracingConfig}.
    @ivar accessLog: the L{AccessLogConfig}, or L{None} when off.
    """

    tracing: Defaulted(TracingConfig)
    accessLog: AccessLogConfig | None = None
