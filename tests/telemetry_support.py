"""
A span collector for tests, benchmarks and manual tries: L{SpanReceiver}, a
twisted.web resource that accepts Zipkin v2 (C{POST /api/v2/spans}) and
OTLP/HTTP JSON (C{POST /v1/traces}) posts and counts the spans in them.

Serve it on loopback::

    receiver = SpanReceiver()
    site = ReceiverSite(receiver)
    port = reactor.listenTCP(0, site, interface="127.0.0.1")
    zipkinURL = receiverURL(port, ZIPKIN_PATH)
    ...
    yield site.drained()     # the clients closed their connections
    yield port.stopListening()
"""

import gzip
import json
from collections import deque

from twisted.internet import defer
from twisted.web.resource import Resource
from twisted.web.server import Site

ZIPKIN_PATH = b"/api/v2/spans"
OTLP_PATH = b"/v1/traces"


class Posted:
    """
    One post as the receiver saw it.

    @ivar kind: C{"zipkin"} or C{"otlp"}.
    @ivar contentType: the C{Content-Type} header, or L{None}.
    @ivar contentLength: the C{Content-Length} header, or L{None}.
    @ivar contentEncoding: the C{Content-Encoding} header, or L{None}.
    @ivar raw: the body as sent.
    @ivar payload: the decoded JSON document.
    @ivar spans: spans in it.
    """

    def __init__(self, kind, contentType, contentLength, contentEncoding, raw, payload, spans):
        self.kind = kind
        self.contentType = contentType
        self.contentLength = contentLength
        self.contentEncoding = contentEncoding
        self.raw = raw
        self.payload = payload
        self.spans = spans

    def __repr__(self):
        return "<Posted %s %d spans>" % (self.kind, self.spans)


def countSpans(kind, payload):
    """
    Spans in a decoded Zipkin list or OTLP C{ExportTraceServiceRequest}.
    """
    if kind == "zipkin":
        return len(payload)
    return sum(
        len(scope.get("spans", ()))
        for resource in payload.get("resourceSpans", ())
        for scope in resource.get("scopeSpans", ())
    )


class SpanReceiver(Resource):
    """
    A collector that counts spans: Zipkin answers 202 with no body, OTLP
    200 with C{{}} (as the real collectors do), or L{status} when set.

    @ivar spans: C{"zipkin"} / C{"otlp"} → spans received.
    @ivar posts: C{"zipkin"} / C{"otlp"} → posts received.
    @ivar received: the last C{keep} posts (L{Posted}), oldest first.
    @ivar status: when not L{None}, the status every post gets (to play a
        failing collector).
    """

    isLeaf = True

    def __init__(self, keep=100, status=None):
        """
        @param keep: posts kept in L{received} (the counters count all).
        @param status: see L{status}.
        """
        super().__init__()
        self.spans = {"zipkin": 0, "otlp": 0}
        self.posts = {"zipkin": 0, "otlp": 0}
        self.received = deque(maxlen=keep)
        self.status = status

    def render_POST(self, request):
        kind = {ZIPKIN_PATH: "zipkin", OTLP_PATH: "otlp"}.get(request.path)
        if kind is None:
            request.setResponseCode(404)
            return b""
        raw = request.content.read()
        encoding = request.getHeader(b"content-encoding")
        body = gzip.decompress(raw) if encoding == b"gzip" else raw
        try:
            payload = json.loads(body)
        except ValueError:
            request.setResponseCode(400)
            return b"not JSON"
        count = countSpans(kind, payload)
        self.posts[kind] += 1
        self.spans[kind] += count
        self.received.append(
            Posted(
                kind,
                request.getHeader(b"content-type"),
                request.getHeader(b"content-length"),
                encoding,
                raw,
                payload,
                count,
            )
        )
        if self.status is not None:
            request.setResponseCode(self.status)
            return b""
        if kind == "zipkin":
            request.setResponseCode(202)
            return b""
        request.setHeader(b"content-type", b"application/json")
        return b"{}"


def receiverURL(port, path):
    """
    The URL of a receiver's C{path} on a listening port.
    """
    return "http://127.0.0.1:%d%s" % (port.getHost().port, path.decode("ascii"))


class ReceiverSite(Site):
    """
    A L{Site} that knows its open connections, so that a test can wait
    until the clients closed them (trial wants a clean reactor).

    @ivar connections: connections accepted so far.
    @ivar open: connections still open.
    """

    def __init__(self, resource):
        super().__init__(resource)
        self.connections = 0
        self.open = set()
        self._waiting = []

    def log(self, request):
        # No access-log line per post.
        pass

    def buildProtocol(self, addr):
        channel = super().buildProtocol(addr)
        self.connections += 1
        self.open.add(channel)
        original = channel.connectionLost

        def connectionLost(reason):
            original(reason)
            self.open.discard(channel)
            if not self.open:
                waiting, self._waiting = self._waiting, []
                for d in waiting:
                    d.callback(None)

        channel.connectionLost = connectionLost
        return channel

    def drained(self):
        """
        A L{Deferred} that fires once no connection is open.
        """
        if not self.open:
            return defer.succeed(None)
        d = defer.Deferred()
        self._waiting.append(d)
        return d
