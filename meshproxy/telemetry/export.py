"""
Export finished spans to a Zipkin v2 collector or an OTLP/HTTP (JSON)
collector, in batches, through treq.

The request path hands each finished span to L{SpanExporter.submit}, which
only appends it to a bounded queue: it never blocks, never does I/O and,
when the queue is full, drops the span and counts it. The exporter posts a
batch as soon as C{batch.size} spans wait (with at most L{MAX_IN_FLIGHT}
posts in flight; further spans wait in the queue), and otherwise every
C{batch.interval} seconds whatever is queued (no timer runs while the
queue is empty).

A post that fails (refused, timed out, answered with a status that is not
2xx) drops its spans: they are counted, never retried, so a collector that
is down costs a counter and one log line a minute, and no memory.

Wire formats:

  - L{zipkinJSON}: a Zipkin v2 C{ListOfSpans} (C{POST /api/v2/spans});
  - L{otlpJSON}: an OTLP C{ExportTraceServiceRequest} in the OTLP/JSON
    encoding (C{POST /v1/traces}): ids as hex, enums as integers, 64-bit
    integers as decimal strings.
"""

from __future__ import annotations

import gzip as _gzip
import ipaddress
import json
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IConsumer, IDelayedCall
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import PotentialDataLoss
from twisted.web.iweb import IBodyProducer, IResponse
from zope.interface import implementer

from meshproxy.config.telemetry import BatchConfig, TracingConfig
from meshproxy.telemetry.spans import (
    CLIENT,
    MAX_KEPT_TARGET,
    SERVER,
    SPAN_COUNT,
    ISpanSink,
    RequestSpans,
    Span,
    TelemetryStats,
    addressOf,
    jsonString,
    serviceOf,
    splitAddress,
)

if TYPE_CHECKING:
    from treq.client import HTTPClient
    from twisted.web.client import HTTPConnectionPool

    from meshproxy.balancing.node import Node

__all__ = [
    "MAX_IN_FLIGHT",
    "LOG_INTERVAL",
    "SpanExporter",
    "SpanFanOut",
    "ZipkinEncoder",
    "exportersFor",
    "otlpJSON",
    "zipkinJSON",
]

_log = Logger()

#: Posts one exporter has in flight at most; a full batch waits in the queue
#: beyond that.
MAX_IN_FLIGHT = 2

#: Seconds at least between two log lines about failed posts of one exporter.
LOG_INTERVAL = 60.0

_JSON = b"application/json"

# The lifecycle of an exporter: NEW (spans queue, nothing is posted),
# RUNNING, STOPPING (the queue is flushed within the post timeout; new
# spans are dropped), STOPPED.
NEW = "NEW"
RUNNING = "RUNNING"
STOPPING = "STOPPING"
STOPPED = "STOPPED"
_CLOSED = (STOPPING, STOPPED)


# -- Zipkin v2 ---------------------------------------------------------------


def _zipkinEndpoint(serviceName: str | None, ip: str | None, port: int) -> dict[str, Any]:
    """
    A Zipkin C{Endpoint}: only the fields that are known (no port 0, no
    empty name); an IPv4-mapped IPv6 address is written as C{ipv4}, as the
    Zipkin API prefers, and an IPv6 zone is dropped. A host name (an
    endpoint a namer gave by name) has no field of its own in the schema,
    whose C{ipv4} and C{ipv6} hold addresses only: it is left out (the
    span's C{mesh.endpoint} tag still names it).
    """
    endpoint: dict[str, Any] = {}
    if serviceName:
        endpoint["serviceName"] = serviceName
    if ip:
        try:
            address = ipaddress.ip_address(ip.partition("%")[0])
        except ValueError:
            address = None
        if isinstance(address, ipaddress.IPv6Address):
            mapped = address.ipv4_mapped
            if mapped is not None:
                endpoint["ipv4"] = str(mapped)
            else:
                endpoint["ipv6"] = ip.partition("%")[0]
        elif address is not None:
            endpoint["ipv4"] = ip
    if port:
        endpoint["port"] = port
    return endpoint


def zipkinJSON(
    spans: Iterable[Span | RequestSpans], serviceName: str | None = None
) -> bytes:
    """
    Encode spans as a Zipkin v2 JSON C{ListOfSpans}.

    Times are whole microseconds (C{timestamp} since the epoch, C{duration}
    at least 1, as the API requires). A span in error without an C{error}
    tag gets C{"error": "true"} (Zipkin marks a span failed by the presence
    of that tag). A root span has no C{parentId}; endpoint fields that are
    unknown are left out.

    @param spans: the finished spans, and requests' spans (each written as
        the spans L{RequestSpans.spans} makes).
    @param serviceName: the C{localEndpoint.serviceName} of every span;
        L{None} to use each span's own (C{span.local[0]}).
    @return: UTF-8 JSON.
    """
    return ZipkinEncoder(serviceName).encode(spans)


#: What the spans of a route share (L{ZipkinEncoder._route}): the server
#: and the client spans' kind, name and C{timestamp} key; the local
#: endpoint; the server span's tags up to its path's value; a status → what
#: follows the path in a request's JSON that needs no other tag (see
#: L{ZipkinEncoder._status}); the client spans' endpoints met; and the
#: server span's tags after the status.
_Route = tuple[str, str, str, str, dict[int, str], dict["Node | str", str], str]

#: C{round} of a float (a float's own method: C{round()} looks it up at
#: each call).
_round = float.__round__


def _serverExtra(record: RequestSpans) -> str:
    """
    The tags a request's server span has after the route's when they
    apply: the C{mesh-err} reason, the peer identity, the tries, the gRPC
    verdict and C{error}.
    """
    extra = ""
    if record.meshErr is not None:
        extra = ',"mesh.err":' + jsonString(record.meshErr)
    if record.identity is not None:
        extra += ',"mesh.peer_identity":' + jsonString(record.identity)
    if record.tries > 1:
        extra += ',"mesh.tries":"%d"' % (record.tries,)
    status = record.status
    inError = status == 0 or status >= 500
    if record.grpc is not None:
        code, rpcService, rpcMethod, failed = record.grpc
        extra += ',"rpc.system":"grpc","rpc.grpc.status_code":"%d"' % (code,)
        if rpcService is not None and rpcMethod is not None:
            extra += ',"rpc.service":%s,"rpc.method":%s' % (
                jsonString(rpcService), jsonString(rpcMethod)
            )
        inError = inError or failed
    if inError:
        extra += ',"error":"true"'
    return extra


class ZipkinEncoder:
    """
    Writes spans as Zipkin v2 JSON: with templates rather than through
    C{json.dumps} of a dict per span (a third of the cost, for the same
    JSON). Ids, kinds and numbers need no escaping; text goes through
    L{jsonString}. The endpoints' JSON is made once per address (at most
    L{MAX_ENDPOINTS} kept).

    A request's spans (L{RequestSpans}) are written straight from the
    record, without making L{Span}s: what every request of a route shares
    (the name, the local endpoint, the method, router, Host and bound name
    tags) is written once into a template per route (at most L{MAX_ROUTES}
    kept), and each span is one formatting of that template. An encoder
    kept across batches (an exporter's) keeps these.
    """

    MAX_ENDPOINTS = 1024
    MAX_ROUTES = 1024
    MAX_STATUSES = 64
    MAX_PATHS = 1024

    def __init__(self, serviceName: str | None = None) -> None:
        """
        @param serviceName: the C{localEndpoint.serviceName} of every span;
            L{None} to use each span's own (C{span.local[0]}).
        """
        self.serviceName = serviceName
        self._locals: dict[Any, str] = {}
        self._remotes: dict[Any, str] = {}
        self._routes: dict[Any, _Route] = {}
        # The last route written and its key: (method, Host, name, router,
        # service name, route); a name that is no string matches none.
        self._last: tuple[Any, ...] = (None, None, 0, None, None, None)
        # (local endpoint, bound name) → endpoint address → what its client
        # spans share (see _upstream); _upstreamCount addresses in all.
        self._upstreams: dict[tuple[str, str | None], dict[Node | str, str]] = {}
        self._upstreamCount = 0
        self._peers: dict[str | None, str] = {}
        # A request target → its path's JSON, without the quotes.
        self._paths: dict[bytes, str] = {}
        # A client span's status → the end of its JSON (see _tryStatus).
        self._tryStatuses: dict[int, str] = {}

    def encode(self, items: Iterable[Span | RequestSpans]) -> bytes:
        """
        A request body: the C{ListOfSpans} of spans and requests' spans.
        """
        out: list[str] = []
        append = out.append
        request = self.request
        for item in items:
            if type(item) is RequestSpans:
                append(request(item))
            else:
                append(self.span(item))  # type: ignore[arg-type]
        return self.wrap(out)

    def span(self, span: Span) -> str:
        """
        One span's JSON object.
        """
        local = span.local
        localEndpoint = self._local(self.serviceName or local[0], local[1], local[2])
        parentId = span.parentId
        remote = span.remote
        remoteEndpoint = "" if remote is None else self._remote(remote)
        tags = span.tags
        if span.error and "error" not in tags:
            tags = dict(tags)
            tags["error"] = "true"
        return _ZIPKIN_SPAN % (
            span.traceId,
            span.spanId,
            "" if parentId is None else ',"parentId":"%s"' % (parentId,),
            span.kind,
            jsonString(span.name),
            round(span.start * 1e6),
            max(1, round(span.duration * 1e6)),
            localEndpoint,
            remoteEndpoint,
            ""
            if not tags
            else ',"tags":{%s}'
            % ",".join(
                "%s:%s" % (jsonString(key), jsonString(value)) for key, value in tags.items()
            ),
        )

    def request(self, record: RequestSpans) -> str:
        """
        A request's spans as JSON objects, comma-separated: the JSON
        L{span} writes for each of C{record.spans()}.

        The commonest request (answered below 500 at its only try, with
        nothing else to tag) is written by one formatting of few parts,
        most of them kept from request to request (see L{_route}); the
        others part by part.
        """
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
            _,
        ) = record
        # The route of the request before, most often this one's too: told
        # by comparing (the methods and Hosts are bytes of their own).
        lastMethod, lastHost, lastName, lastRouter, lastService, route = self._last
        if not (
            name is lastName
            and method == lastMethod
            and host == lastHost
            and router is lastRouter
            and serviceName is lastService
        ):
            key = (method, host, name, router, serviceName)
            route = self._routes.get(key)
            if route is None:
                route = self._route(record, key)
            self._last = (method, host, name, router, serviceName, route)
        # What the route's spans share, written once (see _route).
        serverHead, clientHead, local, tagsHead, statuses, upstreams, shared = route
        duration = _round((end - start) * 1e6)
        if duration < 1:
            duration = 1
        # The path's JSON, without its quotes.
        path = self._paths.get(target)
        if path is None:
            path = self._path(target)
        remote = self._peers.get(peer)
        if remote is None:
            remote = self._peer(peer)
        parent = "" if parentId is None else f',"parentId":"{parentId}"'
        if (
            len(tryRecords) == 1
            and 0 < status < 500
            and meshErr is None
            and identity is None
            and tries <= 1
            and grpc is None
        ):
            trySpanId, tryStart, tryEnd, address, tryStatus, error = tryRecords[0]
            if error is None and 0 < tryStatus < 500:
                tryDuration = _round((tryEnd - tryStart) * 1e6)
                if tryDuration < 1:
                    tryDuration = 1
                return (
                    f'{{"traceId":"{traceId}","id":"{spanId}"{parent}{serverHead}'
                    f'{_round(start * 1e6)},"duration":{duration}{local}{remote}{tagsHead}{path}'
                    f'{statuses.get(status) or self._status(route, status)}'
                    f'{traceId}","id":"{trySpanId}","parentId":"{spanId}"{clientHead}'
                    f'{_round(tryStart * 1e6)},"duration":{tryDuration}'
                    f'{upstreams.get(address) or self._upstream(route, record, address)}'
                    f'{self._tryStatuses.get(tryStatus) or self._tryStatus(tryStatus)}'
                )
        written = (
            f'{{"traceId":"{traceId}","id":"{spanId}"{parent}{serverHead}'
            f'{_round(start * 1e6)},"duration":{duration}{local}{remote}{tagsHead}{path}'
            f'","http.status_code":"{status}"{shared}{_serverExtra(record)}}}}}'
        )
        if not tryRecords:
            return written
        out = [written]
        retryReason = None
        for trySpanId, tryStart, tryEnd, address, tryStatus, error in tryRecords:
            upstream = upstreams.get(address) or self._upstream(route, record, address)
            tags = f',"http.status_code":"{tryStatus}"' if tryStatus else ""
            if error is not None:
                tags += ',"error":' + jsonString(error)
            if retryReason is not None:
                tags += ',"mesh.retry_reason":' + jsonString(retryReason)
            if error is None:
                if tryStatus >= 500:
                    tags += ',"error":"true"'
                    retryReason = "status %d" % (tryStatus,)
                else:
                    retryReason = None
            else:
                retryReason = error
            tryDuration = _round((tryEnd - tryStart) * 1e6)
            out.append(
                f'{{"traceId":"{traceId}","id":"{trySpanId}","parentId":"{spanId}"'
                f"{clientHead}{_round(tryStart * 1e6)},"
                f'"duration":{tryDuration if tryDuration > 1 else 1}{upstream}{tags}}}}}'
            )
        return ",".join(out)

    def _route(self, record: RequestSpans, key: Any) -> _Route:
        """
        What the spans of a route share, written once and kept when its
        method and Host are short (L{MAX_KEPT_TARGET} together; see
        L{_Route}): the parts of the server and client spans' JSON around
        what changes from request to request, the part after the path of a
        server span for each status met, and the client spans' endpoints
        met (a dict shared by the routes of a bound name).
        """
        routes = self._routes
        if len(routes) >= self.MAX_ROUTES:
            routes.clear()
            self._upstreams.clear()
            self._upstreamCount = 0
            self._last = (None, None, 0, None, None, None)
        name = jsonString(record.operation())
        local = ',"localEndpoint":' + self._local(self.serviceName or record.serviceName, None, 0)
        method = jsonString(record.method.decode("latin-1"))
        shared = ',"mesh.router":' + jsonString(record.router)
        if record.host is not None:
            shared += ',"http.host":' + jsonString(record.host.decode("latin-1"))
        if record.name is not None:
            shared += ',"mesh.name":' + jsonString(record.name)
        byName = (local, record.name)
        upstreams = self._upstreams.get(byName)
        if upstreams is None:
            upstreams = self._upstreams[byName] = {}
        route: _Route = (
            ',"kind":"SERVER","name":' + name + ',"timestamp":',
            ',"kind":"CLIENT","name":' + name + ',"timestamp":',
            local,
            ',"tags":{"http.method":' + method + ',"http.path":"',
            {},
            upstreams,
            shared,
        )
        # Kept unless the client made it long (its method and Host): what
        # a client sends bounds what is kept (MAX_ROUTES of these).
        host = record.host
        if len(record.method) + (0 if host is None else len(host)) <= MAX_KEPT_TARGET:
            routes[key] = route
        return route

    def _path(self, target: bytes) -> str:
        """
        A request target's path (without the query) as a JSON string
        without its quotes; kept (L{MAX_PATHS} at most) when the target is
        short (L{MAX_KEPT_TARGET}): what a client sends bounds what is kept.
        """
        query = target.find(b"?")
        path = (target if query < 0 else target[:query]).decode("latin-1")
        if not (path.isascii() and path.isprintable() and '"' not in path and "\\" not in path):
            path = jsonString(path.encode("latin-1").decode("utf-8", "replace"))[1:-1]
        if len(target) <= MAX_KEPT_TARGET:
            paths = self._paths
            if len(paths) >= self.MAX_PATHS:
                paths.clear()
            paths[target] = path
        return path

    def _status(self, route: _Route, status: int) -> str:
        """
        What a server span of a route that needs no other tag has after its
        path, for a status, and the start of the client span after it (up
        to its C{traceId}'s value); kept (L{MAX_STATUSES} per route).
        """
        statuses = route[4]
        if len(statuses) >= self.MAX_STATUSES:
            statuses.clear()
        written = statuses[status] = (
            f'","http.status_code":"{status}"{route[6]}}}}},{{"traceId":"'
        )
        return written

    def _tryStatus(self, status: int) -> str:
        """
        The end of a client span that answered C{status} and needs no other
        tag; kept (L{MAX_STATUSES} at most).
        """
        tryStatuses = self._tryStatuses
        if len(tryStatuses) >= self.MAX_STATUSES:
            tryStatuses.clear()
        written = tryStatuses[status] = f',"http.status_code":"{status}"}}}}'
        return written

    def _upstream(self, route: _Route, record: RequestSpans, endpoint: Node | str) -> str:
        """
        What a client span to an endpoint of a route's bound name has after
        its duration: the local endpoint, the remote one (as L{_remote}
        writes it) and the start of its tags, up to its C{mesh.endpoint}
        tag's value; kept (L{MAX_ENDPOINTS} at most, over all names).
        """
        if self._upstreamCount >= self.MAX_ENDPOINTS:
            for upstreams in self._upstreams.values():
                upstreams.clear()
            self._upstreamCount = 0
        name = record.name
        address = addressOf(endpoint)
        host, port = splitAddress(address)
        remote = (None if name is None else serviceOf(name), host, port)
        upstream = route[5][endpoint] = (
            route[2] + self._remote(remote) + ',"tags":{"mesh.endpoint":' + jsonString(address)
        )
        self._upstreamCount += 1
        return upstream

    def _peer(self, peer: str | None) -> str:
        """
        A server span's remote endpoint (a client's address, or L{None}),
        as L{_remote} writes it; kept (L{MAX_ENDPOINTS} at most).
        """
        peers = self._peers
        if len(peers) >= self.MAX_ENDPOINTS:
            peers.clear()
        remote = peers[peer] = self._remote((None, peer, 0))
        return remote

    def _local(self, serviceName: str | None, ip: str | None, port: int) -> str:
        """
        A local endpoint's JSON object, made once.
        """
        key = (serviceName, ip, port)
        locals_ = self._locals
        localEndpoint = locals_.get(key)
        if localEndpoint is None:
            if len(locals_) >= self.MAX_ENDPOINTS:
                locals_.clear()
            localEndpoint = locals_[key] = _compact(_zipkinEndpoint(*key))
        return localEndpoint

    def _remote(self, remote: tuple[str | None, str | None, int]) -> str:
        """
        A remote endpoint as the members it adds to a span
        (C{,"remoteEndpoint":{…}}, or nothing when nothing is known),
        made once.
        """
        remotes = self._remotes
        remoteEndpoint = remotes.get(remote)
        if remoteEndpoint is None:
            if len(remotes) >= self.MAX_ENDPOINTS:
                remotes.clear()
            fields = _zipkinEndpoint(*remote)
            remoteEndpoint = remotes[remote] = (
                ',"remoteEndpoint":' + _compact(fields) if fields else ""
            )
        return remoteEndpoint

    @staticmethod
    def wrap(spans: list[str]) -> bytes:
        """
        The request body of spans written by L{span}: a C{ListOfSpans}.
        """
        if not spans:
            return b"[]"
        # The brackets added to the first and the last span's text: the
        # batch's text is copied once (joined) rather than once per
        # concatenation.
        spans = list(spans)
        spans[0] = "[" + spans[0]
        spans[-1] += "]"
        return ",".join(spans).encode("utf-8")


_ZIPKIN_SPAN = (
    '{"traceId":"%s","id":"%s"%s,"kind":"%s","name":%s,"timestamp":%d,"duration":%d,'
    '"localEndpoint":%s%s%s}'
)


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


# -- OTLP/JSON ---------------------------------------------------------------

#: OTLP C{Span.SpanKind} values.
_OTLP_KINDS = {SERVER: 2, CLIENT: 3}

#: OTLP C{Status.StatusCode.STATUS_CODE_ERROR}.
_OTLP_ERROR = {"code": 2}


#: The attributes L{otlpJSON} adds from a span's addresses.
_OTLP_ADDRESS_KEYS = frozenset(
    [
        "network.local.address",
        "network.local.port",
        "peer.service",
        "network.peer.address",
        "network.peer.port",
    ]
)


def _otlpAddress(
    side: str, serviceName: str | None, ip: str | None, port: int
) -> list[dict[str, Any]]:
    """
    The attributes of one side's address, as the OpenTelemetry semantic
    conventions name them: C{network.<side>.address}, C{network.<side>.port}
    and, for the peer, C{peer.service}; only what is known.
    """
    attributes: list[dict[str, Any]] = []
    if serviceName:
        attributes.append({"key": "peer.service", "value": {"stringValue": serviceName}})
    if ip:
        attributes.append(
            {"key": "network.%s.address" % (side,), "value": {"stringValue": ip}}
        )
    if port:
        attributes.append(
            {"key": "network.%s.port" % (side,), "value": {"intValue": str(port)}}
        )
    return attributes


def otlpJSON(spans: Iterable[Span | RequestSpans], serviceName: str) -> bytes:
    """
    Encode spans as an OTLP/HTTP JSON C{ExportTraceServiceRequest}: one
    resource (C{service.name}), one scope (C{meshproxy}).

    Following the OTLP/JSON encoding: C{traceId}, C{spanId} and
    C{parentSpanId} (absent for a root) are hex; C{kind} is the enum's
    integer (C{SERVER} 2, C{CLIENT} 3); C{startTimeUnixNano} and
    C{endTimeUnixNano} are decimal strings. Tags become string attributes;
    the local and remote addresses become C{network.local.*} and
    C{network.peer.*} attributes and a remote service name
    C{peer.service}, unless a tag already has that key. A span in error has
    C{status.code} 2 (C{STATUS_CODE_ERROR}); the others no status (unset).

    @param spans: the finished spans, and requests' spans (made into
        their L{Span}s).
    @param serviceName: the resource's C{service.name}.
    @return: UTF-8 JSON (ASCII in fact: non-ASCII text is escaped).
    """
    # Spans of a batch share addresses and tags: their attributes are made
    # once per batch (json.dumps writes a shared object at each use).
    addresses: dict[Any, list[dict[str, Any]]] = {}
    tagAttributes: dict[tuple[str, str], dict[str, Any]] = {}
    out = []
    for span in _expand(spans):
        startNanos = round(span.start * 1e6) * 1000
        tags = span.tags
        attributes = []
        for item in tags.items():
            attribute = tagAttributes.get(item)
            if attribute is None:
                attribute = tagAttributes[item] = {
                    "key": item[0],
                    "value": {"stringValue": item[1]},
                }
            attributes.append(attribute)
        local = span.local
        localKey = ("local", None, local[1], local[2])
        localAttributes = addresses.get(localKey)
        if localAttributes is None:
            localAttributes = addresses[localKey] = _otlpAddress(*localKey)
        attributes += localAttributes
        remote = span.remote
        if remote is not None:
            remoteAttributes = addresses.get(remote)
            if remoteAttributes is None:
                remoteAttributes = addresses[remote] = _otlpAddress("peer", *remote)
            attributes += remoteAttributes
        if not _OTLP_ADDRESS_KEYS.isdisjoint(tags):
            # A tag names an address attribute: the tag is kept, once.
            attributes = attributes[: len(tags)] + [
                a for a in attributes[len(tags) :] if a["key"] not in tags
            ]
        record: dict[str, Any] = {
            "traceId": span.traceId,
            "spanId": span.spanId,
            "name": span.name,
            "kind": _OTLP_KINDS.get(span.kind, 0),
            "startTimeUnixNano": str(startNanos),
            "endTimeUnixNano": str(startNanos + round(span.duration * 1e9)),
            "attributes": attributes,
        }
        if span.parentId is not None:
            record["parentSpanId"] = span.parentId
        if span.error:
            record["status"] = _OTLP_ERROR
        out.append(record)
    request = {
        "resourceSpans": [
            {
                "resource": {
                    "attributes": [
                        {"key": "service.name", "value": {"stringValue": serviceName}}
                    ]
                },
                "scopeSpans": [{"scope": {"name": "meshproxy"}, "spans": out}],
            }
        ]
    }
    return json.dumps(request, separators=(",", ":")).encode("ascii")


def _expand(items: Iterable[Span | RequestSpans]) -> Iterable[Span]:
    """
    The spans of a batch, requests' spans made into theirs.
    """
    for item in items:
        if type(item) is RequestSpans:
            yield from item.spans()
        else:
            yield item  # type: ignore[misc]


# -- posting -----------------------------------------------------------------


@implementer(IBodyProducer)
class _BytesProducer:
    """
    A request body already in memory, written at once (treq's default
    producer for bytes goes through the global cooperator).
    """

    def __init__(self, body: bytes) -> None:
        self._body = body
        self.length = len(body)

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:
        consumer.write(self._body)
        return succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


class _Discard(Protocol):
    """
    Reads a response body to its end and throws it away (so that the
    connection goes back to the pool); cancelling L{done} closes the
    connection.
    """

    def __init__(self) -> None:
        self.done: Deferred[None] = Deferred(self._cancel)

    def _cancel(self, d: Deferred[None]) -> None:
        if self.transport is not None:
            self.transport.stopProducing()  # type: ignore[attr-defined]

    def dataReceived(self, data: bytes) -> None:
        pass

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.done.called:
            return
        from twisted.web.client import ResponseDone

        if reason.check(ResponseDone, PotentialDataLoss):
            self.done.callback(None)
        else:
            self.done.errback(reason)


class _BadStatus(Exception):
    """
    The collector answered with a status that is not 2xx.
    """

    def __str__(self) -> str:
        return "HTTP status %s" % (self.args[0],)


def _readResponse(response: IResponse) -> Deferred[None]:
    """
    Read the response to a post to its end; fail when its status is not
    2xx.
    """
    discard = _Discard()
    if response.length == 0:
        done: Deferred[None] = succeed(None)
    else:
        response.deliverBody(discard)
        done = discard.done
    code = response.code

    def check(_: None) -> None:
        if not 200 <= code < 300:
            raise _BadStatus(code)

    return done.addCallback(check)


def _httpClient(
    reactor: Any, inFlight: int, timeout: float, url: str
) -> tuple[HTTPClient, HTTPConnectionPool, Any]:
    """
    A treq client over one L{Agent} with a persistent connection pool, made
    for posting to one URL often: the agent's endpoint for the collector is
    made once (L{_KeptEndpoints}), and so is the URL's URI form
    (L{_sentURL}).

    @return: the client, its pool (closed when the exporter stops) and the
        URL to give its C{post}.
    """
    from treq.client import HTTPClient
    from twisted.web.client import Agent

    from meshproxy.transport.webpool import quietPool

    pool = quietPool(reactor, inFlight)
    agent = Agent.usingEndpointFactory(reactor, _KeptEndpoints(reactor, timeout), pool=pool)
    client = HTTPClient(agent, cookiejar=_noCookies(), data_to_body_producer=_BytesProducer)
    return client, pool, _sentURL(url)


def _noCookies() -> Any:
    """
    A cookie jar that keeps no cookie and sends none: a collector's answer
    sets none worth keeping, and a treq client's own jar reads the
    request's URL and the answer's headers for cookies at every post.
    """
    from treq.cookies import IndexableCookieJar

    class NoCookies(IndexableCookieJar):
        def add_cookie_header(self, request: Any) -> None:
            pass

        def extract_cookies(self, response: Any, request: Any) -> None:
            pass

        def set_cookie(self, cookie: Any) -> None:
            pass

    return NoCookies()


class _KeptEndpoints:
    """
    An agent's endpoints (an L{IAgentEndpointFactory}), as L{Agent} makes
    them (TCP for C{http}, TLS over TCP verified as a browser would for
    C{https}, with a connect timeout), made once per collector rather than
    once per request.
    """

    #: Endpoints kept at most (an exporter posts to one collector).
    MAX_KEPT = 8

    def __init__(self, reactor: Any, connectTimeout: float) -> None:
        self._reactor = reactor
        self._connectTimeout = connectTimeout
        self._endpoints: dict[tuple[bytes, bytes, int], Any] = {}

    def endpointForURI(self, uri: Any) -> Any:
        """
        The endpoint of a request's URI (a C{twisted.web.client.URI}).
        """
        key = (uri.scheme, uri.host, uri.port)
        endpoint = self._endpoints.get(key)
        if endpoint is None:
            if len(self._endpoints) >= self.MAX_KEPT:
                self._endpoints.clear()
            endpoint = self._endpoints[key] = self._make(uri)
        return endpoint

    def _make(self, uri: Any) -> Any:
        from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
        from twisted.web.client import BrowserLikePolicyForHTTPS
        from twisted.web.error import SchemeNotSupported

        endpoint = HostnameEndpoint(
            self._reactor, uri.host.decode("ascii"), uri.port, timeout=self._connectTimeout
        )
        if uri.scheme == b"http":
            return endpoint
        if uri.scheme == b"https":
            creator = BrowserLikePolicyForHTTPS().creatorForNetloc(uri.host, uri.port)
            return wrapClientTLS(creator, endpoint)
        raise SchemeNotSupported("Unsupported scheme: %r" % (uri.scheme,))


def _sentURL(url: str) -> Any:
    """
    A URL as treq sends it, made once: treq's C{request} writes each
    request's URL as C{url.to_uri().to_text()} (IDNA and percent-encoding
    every time); the URL returned is already that URI, its text kept
    (or the text given, when it has no URI form).
    """
    from hyperlink import EncodedURL

    class SentURL(EncodedURL):
        """
        A URL already in its URI form, its text made once.
        """

        _text: str | None = None

        def to_uri(self) -> SentURL:
            return self

        def to_text(self, with_password: bool = False) -> str:
            if with_password:
                return super().to_text(with_password)
            if self._text is None:
                self._text = super().to_text()
            return self._text

    try:
        uri = EncodedURL.from_text(url).to_uri()
    except Exception:
        # One treq cannot write either (hyperlink's IDNA refuses an IPv6
        # literal): given as it is, each post fails as it would have.
        return url
    return SentURL(
        uri.scheme, uri.host, uri.path, uri.query, uri.fragment, uri.port, uri.rooted,
        uri.userinfo, uri.uses_netloc,
    )


@implementer(ISpanSink)
class SpanExporter(Service):
    """
    Batches finished spans and posts them to one collector.

    A L{Service}: L{startService} starts posting (spans submitted before are
    kept, within the queue bound); L{stopService} flushes what is queued,
    within the post timeout, and drops (counting them as C{shutdown}) the
    spans it could not post by then and those submitted afterwards.

    @ivar exporter: the exporter's name in the counters and logs
        (C{"zipkin"}, C{"otlp"}); the service's C{name} is left to the
        parent.
    @ivar url: the collector's URL.
    """

    def __init__(
        self,
        name: str,
        url: str,
        encode: Callable[[list[Span | RequestSpans]], bytes],
        *,
        batch: BatchConfig,
        gzip: bool,
        timeout: float,
        stats: TelemetryStats,
        reactor: Any,
        httpClient: Any = None,
        maxInFlight: int = MAX_IN_FLIGHT,
    ) -> None:
        """
        @param name: the exporter's name in the counters and logs.
        @param url: where batches are posted.
        @param encode: a batch (L{Span}s and L{RequestSpans}) → request
            body (L{zipkinJSON}, L{otlpJSON}, L{ZipkinEncoder.encode}).
        @param batch: the batch size, interval and queue bound.
        @param gzip: whether bodies are sent gzip-compressed.
        @param timeout: seconds one post (connect, send, read the answer)
            may take; also how long L{stopService} waits.
        @param stats: where exported and dropped spans are counted.
        @param reactor: the clock and the network (L{IReactorTime}, and
            L{IReactorTCP} when no C{httpClient} is given).
        @param httpClient: a C{treq.client.HTTPClient} (or anything with its
            C{post}); by default one over an L{Agent} with a persistent
            connection pool, closed when the exporter stops.
        @param maxInFlight: posts in flight at most.
        """
        self.exporter = name
        self.url = url
        self._encode = encode
        self._size: int = batch.size
        self._interval: float = batch.interval
        self._bound: int = batch.queue
        # What submitRequest checks first: the bound, or -1 once stopping
        # (nothing fits then).
        self._room = self._bound
        self._gzip = gzip
        self._timeout = timeout
        self._stats = stats
        self._reactor = reactor
        self._maxInFlight = maxInFlight
        self._pool: HTTPConnectionPool | None = None
        # What the client's post is given: the URL, or with a client of our
        # own its URI form made once.
        self._target: Any = url
        # With a client of our own, the cookies its posts are given: an
        # empty jar made once (treq makes one per post when given none).
        self._cookies: dict[str, Any] = {}
        if httpClient is None:
            httpClient, self._pool, self._target = _httpClient(
                reactor, maxInFlight, timeout, url
            )
            self._cookies = {"cookies": _noCookies()}
        self._client = httpClient
        headers = {b"Content-Type": [_JSON]}
        if gzip:
            headers[b"Content-Encoding"] = [b"gzip"]
        self._headers: Any = headers
        if self._pool is not None:
            # treq takes Headers as they are (a dict is made into Headers
            # per post); the agents copy them before they add theirs.
            from twisted.web.http_headers import Headers

            self._headers = Headers(headers)

        self._state = NEW
        # Spans and requests' spans (RequestSpans) in the order they came,
        # and how many spans they make (what the bound and batches count).
        self._queue: deque[Span | RequestSpans] = deque()
        self._queued = 0
        self._inFlight: set[Deferred[None]] = set()
        self._timer: IDelayedCall | None = None
        # Set when the interval has passed for what is queued: post it as
        # soon as the in-flight cap allows, full batch or not.
        self._due = False
        self._drained: Deferred[None] | None = None
        self._deadline: IDelayedCall | None = None
        self._stopBy = 0.0
        # Failed posts and their spans since the last log line.
        self._lastLog: float | None = None
        self._failedPosts = 0
        self._failedSpans = 0

    def __repr__(self) -> str:
        return "<SpanExporter %s %s %s queued=%d>" % (
            self.exporter,
            self.url,
            self._state,
            self._queued,
        )

    # -- ISpanSink -------------------------------------------------------------

    def submit(self, span: Span) -> None:
        """
        Queue one finished span; drop it (counted) when the queue is full or
        the exporter is stopping.
        """
        self._add(span, 1)

    def submitRequest(self, spans: RequestSpans) -> None:
        """
        Queue a finished request's spans, as one record (made into spans,
        or their JSON, when their batch is encoded); drop them all
        (counted) when they do not fit in the queue or the exporter is
        stopping.
        """
        # _add's work, without its call (once per recorded request).
        count = spans[SPAN_COUNT]
        queued = self._queued + count
        if queued > self._room:
            # Full, or stopping: dropped and counted by _add.
            self._add(spans, count)
            return
        self._queue.append(spans)
        self._queued = queued
        if queued >= self._size:
            self._pump()
        elif self._timer is None and self._state == RUNNING:
            self._timer = self._reactor.callLater(self._interval, self._tick)

    def _add(self, item: Span | RequestSpans, count: int) -> None:
        queued = self._queued + count
        if queued > self._bound:
            self._stats.dropped(self.exporter, "queue-full", count)
            return
        if self._state in _CLOSED:
            self._stats.dropped(self.exporter, "shutdown", count)
            return
        self._queue.append(item)
        self._queued = queued
        if queued >= self._size:
            self._pump()
        elif self._timer is None and self._state == RUNNING:
            self._timer = self._reactor.callLater(self._interval, self._tick)

    # -- IService --------------------------------------------------------------

    def startService(self) -> None:
        """
        Start posting: what was queued before is posted within one interval
        (at once if it makes a full batch).
        """
        Service.startService(self)
        self._state = RUNNING
        self._due = False
        self._pump()

    def stopService(self) -> Deferred[None]:
        """
        Post what is queued (in batches, within the in-flight cap) and wait
        for the posts in flight, for the post timeout at most; then drop
        what is left (C{shutdown}), cancel what is still in flight
        (C{export-failed}) and close the connection pool if it is ours.

        @return: a L{Deferred} that fires when that is done.
        """
        Service.stopService(self)
        self._state = STOPPING
        self._room = -1
        self._cancelTimer()
        self._due = True
        # A post that ends synchronously can drain the queue inside _pump.
        drained = self._drained = Deferred()
        self._stopBy = self._reactor.seconds() + self._timeout
        self._deadline = self._reactor.callLater(self._timeout, self._abandon)
        self._pump()
        self._checkDrained()
        return drained.addCallback(self._closePool)

    def _abandon(self) -> None:
        """
        The flush took too long: drop the rest.
        """
        self._deadline = None
        if self._queue:
            self._stats.dropped(self.exporter, "shutdown", self._queued)
            self._queue.clear()
            self._queued = 0
        for d in list(self._inFlight):
            d.cancel()
        self._checkDrained()

    def _checkDrained(self) -> None:
        if self._state != STOPPING or self._queue or self._inFlight:
            return
        self._state = STOPPED
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        drained, self._drained = self._drained, None
        assert drained is not None
        drained.callback(None)

    def _closePool(self, _: None) -> Deferred[None] | None:
        if self._pool is None:
            return None
        return self._pool.closeCachedConnections()

    # -- batching --------------------------------------------------------------

    def _cancelTimer(self) -> None:
        if self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None

    def _tick(self) -> None:
        """
        The interval passed since the first span now queued: post what is
        queued.
        """
        self._timer = None
        self._due = True
        self._pump()

    def _pump(self) -> None:
        """
        Post full batches, and whatever is queued when it is due, while the
        in-flight cap allows; then keep a timer running only while spans
        wait for one.
        """
        if self._state == NEW or self._state == STOPPED:
            return
        if self._state == STOPPING and self._reactor.seconds() >= self._stopBy:
            # Past the deadline (a post that timed out just before it
            # fired freed a slot): nothing new goes out.
            return
        queue = self._queue
        size = self._size
        while len(self._inFlight) < self._maxInFlight and (
            self._queued >= size or (self._due and queue)
        ):
            batch, count = self._batch()
            if not queue:
                self._due = False
            self._post(batch, count)
        if not queue:
            self._cancelTimer()
        elif self._timer is None and not self._due and self._state == RUNNING:
            self._timer = self._reactor.callLater(self._interval, self._tick)

    def _batch(self) -> tuple[list[Span | RequestSpans], int]:
        """
        Take the next batch from the queue: C{batch.size} spans at most. A
        request with more spans than that (more tries than a batch holds)
        is split into its spans.

        @return: the batch and how many spans it holds.
        """
        queue = self._queue
        size = self._size
        count = self._queued
        if count <= size:
            # All of it (the usual batch: the queue reached the batch size
            # exactly, or the interval passed), taken at once.
            batch = list(queue)
            queue.clear()
            self._queued = 0
            return batch, count
        batch = []
        append = batch.append
        popleft = queue.popleft
        count = 0
        while queue:
            item = queue[0]
            n = item[SPAN_COUNT] if type(item) is RequestSpans else item.spanCount
            if count + n > size:
                if count == 0 and type(item) is RequestSpans:
                    popleft()
                    queue.extendleft(reversed(item.spans()))
                    continue
                break
            popleft()
            append(item)
            count += n
        self._queued -= count
        return batch, count

    def _post(self, batch: list[Span | RequestSpans], count: int) -> None:
        """
        Post one batch of C{count} spans; count them as exported or
        dropped.
        """
        try:
            body = self._encode(batch)
            if self._gzip:
                body = _gzip.compress(body, compresslevel=6)
            d: Deferred[Any] = self._client.post(
                self._target,
                data=body,
                headers=self._headers,
                allow_redirects=False,
                unbuffered=True,
                reactor=self._reactor,
                **self._cookies,
            )
        except Exception:
            self._failed(Failure(), count)
            return
        d.addCallback(_readResponse)
        d.addTimeout(self._timeout, self._reactor)
        d.addCallbacks(self._posted, self._failed, callbackArgs=(count,), errbackArgs=(count,))
        self._inFlight.add(d)
        d.addBoth(self._finished, d)

    def _posted(self, _: None, count: int) -> None:
        self._stats.exported(self.exporter, count)

    def _failed(self, reason: Failure, count: int) -> None:
        """
        Count the batch's spans as dropped; log one line per
        L{LOG_INTERVAL} at most, with the failures since the previous one.
        """
        self._stats.dropped(self.exporter, "export-failed", count)
        self._failedPosts += 1
        self._failedSpans += count
        now = self._reactor.seconds()
        if self._lastLog is not None and now - self._lastLog < LOG_INTERVAL:
            return
        self._lastLog = now
        _log.warn(
            "{exporter} span export to {url} failed: {reason}"
            " ({posts} failed posts, {spans} spans dropped since the last report)",
            exporter=self.exporter,
            url=self.url,
            reason=_describe(reason),
            posts=self._failedPosts,
            spans=self._failedSpans,
        )
        self._failedPosts = 0
        self._failedSpans = 0

    def _finished(self, _: None, d: Deferred[None]) -> None:
        self._inFlight.discard(d)
        self._pump()
        self._checkDrained()


def _describe(reason: Failure) -> str:
    """
    A failure in a few words, for a log line (no traceback).
    """
    value = reason.value
    reasons = getattr(value, "reasons", None)
    if reasons:
        # ResponseNeverReceived, RequestTransmissionFailed, ResponseFailed:
        # the first underlying failure says what happened.
        value = reasons[0].value
    text = str(value)
    kind = value.__class__.__name__
    return "%s: %s" % (kind, text) if text else kind


@implementer(ISpanSink)
class SpanFanOut:
    """
    Hands each span to several sinks (the Zipkin and the OTLP exporter), so
    that the request path holds one L{ISpanSink}.
    """

    def __init__(self, sinks: Sequence[ISpanSink]) -> None:
        """
        @param sinks: where every span goes.
        """
        self._sinks = tuple(sinks)

    def submit(self, span: Span) -> None:
        for sink in self._sinks:
            sink.submit(span)

    def submitRequest(self, spans: RequestSpans) -> None:
        for sink in self._sinks:
            sink.submitRequest(spans)


def exportersFor(
    tracing: TracingConfig, stats: TelemetryStats, reactor: Any, httpClient: Any = None
) -> list[SpanExporter]:
    """
    The exporters a tracing config asks for: Zipkin first, then OTLP.

    @param tracing: the C{telemetry.tracing} section.
    @param stats: where exported and dropped spans are counted.
    @param reactor: the clock and the network.
    @param httpClient: the treq client to post through; by default each
        exporter makes its own, with its own connection pool.
    @return: L{SpanExporter}s, not started (services for the caller to
        parent); empty when no exporter is configured.
    """
    exporters = []
    serviceName = tracing.serviceName
    formats: list[tuple[str, Any, Callable[[list[Span | RequestSpans]], bytes]]] = [
        # One encoder per exporter, which keeps what routes share.
        ("zipkin", tracing.zipkin, ZipkinEncoder(serviceName).encode),
        ("otlp", tracing.otlp, partial(otlpJSON, serviceName=serviceName)),
    ]
    for name, config, encode in formats:
        if config is None:
            continue
        exporters.append(
            SpanExporter(
                name,
                config.url,
                encode,
                batch=tracing.batch,
                gzip=config.gzip,
                timeout=config.timeout,
                stats=stats,
                reactor=reactor,
                httpClient=httpClient,
            )
        )
    return exporters
