"""
The request path's telemetry: trace context sent upstream per try, the
spans of a recorded trace, C{mesh-reqid}, and the request summaries given
to the access log and the tap; on fake transports and a fake clock.
"""

import json
import random

from prometheus_client import CollectorRegistry
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from meshproxy.balancing.node import Node
from meshproxy.config import parseConfig
from meshproxy.discovery.endpoints import Endpoint
from meshproxy.discovery.static import StaticNamer
from meshproxy.http.message import Request
from meshproxy.http.router import HttpRouter
from meshproxy.http.server import ServerProtocol
from meshproxy.routing.path import Path
from meshproxy.runtime import balancerFactory
from meshproxy.telemetry.metrics import MeshMetrics
from meshproxy.telemetry.observe import RequestObserver, Tracer
from meshproxy.telemetry.spans import (
    CLIENT,
    SERVER,
    SUMMARY_FIELDS,
    ISpanSink,
    ISummarySink,
    RequestSpans,
    addressOf,
)

CONFIG = """\
namers:
  - {kind: static, prefix: /#/static, services: {hello: ["127.0.0.1:9001"]}}
routers:
  - name: web
    listen: "tcp:4140"
    rules: "/svc => /#/static;"
    timeouts: {total: 60s, perTry: 1s}
    classifier: {kind: retryableRead5XX}
    trust: {callers: ["10.0.0.0/8"]}
"""

CALLER_TRACE = "0af7651916cd43dd8448eb211c80319c"
CALLER_SPAN = "b7ad6b7169203331"


@implementer(ISpanSink)
class SpanList:
    def __init__(self):
        self.spans = []
        self.records = []

    def submit(self, span):
        self.spans.append(span)

    def submitRequest(self, spans):
        # The spans an exporter makes of a request's record.
        self.records.append(spans)
        self.spans.extend(spans.spans())


@implementer(ISummarySink)
class SummaryList:
    def __init__(self, wanted=True):
        self.wanted = wanted
        self.asked = []
        self.summaries = []

    def wants(self, router):
        self.asked.append(router)
        return self.wanted

    def summarize(self, summary, line):
        self.summaries.append((summary, line))


class Harness:
    def __init__(self, sampleRate=1.0, recording=True, peer="10.0.0.7", ports=(9001, 9002)):
        self.reactor = MemoryReactorClock()
        self.reactor.advance(1764579600.0)
        mesh = parseConfig(CONFIG)
        routerConfig = mesh.routers[0]
        namers = {
            Path.read("/#/static"): StaticNamer(
                Path.read("/#/static"), {"hello": [Endpoint("127.0.0.1", p) for p in ports]}
            )
        }
        self.registry = CollectorRegistry()
        self.spans = SpanList()
        self.summaries = SummaryList()
        self.tracer = Tracer(
            sampleRate=sampleRate,
            sinks=[self.spans] if recording else [],
            rng=random.Random(7),
        )
        self.router = HttpRouter(
            routerConfig,
            namers,
            reactor=self.reactor,
            metrics=MeshMetrics(self.registry),
            balancerFactory=balancerFactory(routerConfig.loadBalancer, self.reactor),
            tracer=self.tracer,
            summaries=[self.summaries],
        )
        self.settings = routerConfig.server
        self.peer = peer

    def client(self):
        proto = ServerProtocol(self.router, self.settings, self.reactor)
        transport = StringTransport(peerAddress=IPv4Address("TCP", self.peer, 5555))
        proto.makeConnection(transport)
        return proto, transport

    def upstream(self, index=-1):
        host, port, factory, timeout, bindAddress = self.reactor.tcpClients[index]
        proto = factory.buildProtocol(None)
        transport = StringTransport()
        proto.makeConnection(transport)
        return proto, transport, port


def errorCount(h, reason):
    """
    meshproxy_errors_total{router="web", reason=...} as scraped.
    """
    for family in h.registry.collect():
        for sample in family.samples:
            if sample.name == "meshproxy_errors_total" and sample.labels == {
                "router": "web",
                "reason": reason,
            }:
                return sample.value
    return 0


def headersOf(raw):
    """
    The header fields of a request sent upstream, lowercased names.
    """
    head = raw.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]
    fields = {}
    for line in head:
        name, _, value = line.partition(b":")
        fields.setdefault(name.strip().lower(), []).append(value.strip())
    return fields


class PropagationTests(SynchronousTestCase):
    def test_newTraceSentUpstream(self):
        """
        A request without trace context starts a trace: the upstream gets a
        version-00 traceparent naming the try's span as parent, sampled,
        a matching b3 header and a mesh-reqid.
        """
        h = Harness()
        proto, transport = h.client()
        proto.dataReceived(b"GET / HTTP/1.1\r\nHost: hello\r\n\r\n")
        up, upTransport, port = h.upstream()
        fields = headersOf(upTransport.value())
        [traceparent] = fields[b"traceparent"]
        version, traceId, parent, flags = traceparent.split(b"-")
        self.assertEqual((version, flags), (b"00", b"01"))
        self.assertEqual(len(traceId), 32)
        self.assertEqual(len(parent), 16)
        self.assertEqual(fields[b"b3"], [b"%s-%s-1" % (traceId, parent)])
        [reqId] = fields[b"mesh-reqid"]
        self.assertTrue(reqId)
        up.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        server, client = h.spans.spans
        self.assertEqual((server.kind, client.kind), (SERVER, CLIENT))
        self.assertEqual(server.traceId, traceId.decode())
        self.assertIsNone(server.parentId)
        self.assertEqual(client.spanId, parent.decode())
        self.assertEqual(client.parentId, server.spanId)

    def test_callerTraceContinued(self):
        """
        A caller's valid traceparent is continued: same trace id, this hop's
        try span as the parent sent upstream, the server span a child of
        the caller's span; the caller's header is not forwarded as is.
        """
        h = Harness()
        proto, transport = h.client()
        proto.dataReceived(
            b"GET / HTTP/1.1\r\nHost: hello\r\n"
            b"traceparent: 00-%s-%s-01\r\n\r\n" % (CALLER_TRACE.encode(), CALLER_SPAN.encode())
        )
        up, upTransport, port = h.upstream()
        [traceparent] = headersOf(upTransport.value())[b"traceparent"]
        self.assertTrue(traceparent.startswith(b"00-" + CALLER_TRACE.encode() + b"-"))
        self.assertNotIn(CALLER_SPAN.encode(), traceparent)
        up.dataReceived(b"HTTP/1.1 204 No Content\r\n\r\n")
        server, client = h.spans.spans
        self.assertEqual(server.traceId, CALLER_TRACE)
        self.assertEqual(server.parentId, CALLER_SPAN)
        self.assertEqual(client.parentId, server.spanId)
        self.assertEqual(traceparent.split(b"-")[2].decode(), client.spanId)

    def test_callerNotSampledHonoured(self):
        """
        A caller's unsampled flag is passed on, and no span is recorded.
        """
        h = Harness()
        proto, transport = h.client()
        proto.dataReceived(
            b"GET / HTTP/1.1\r\nHost: hello\r\n"
            b"traceparent: 00-%s-%s-00\r\n\r\n" % (CALLER_TRACE.encode(), CALLER_SPAN.encode())
        )
        up, upTransport, port = h.upstream()
        [traceparent] = headersOf(upTransport.value())[b"traceparent"]
        self.assertTrue(traceparent.endswith(b"-00"))
        up.dataReceived(b"HTTP/1.1 204 No Content\r\n\r\n")
        self.assertEqual(h.spans.spans, [])

    def test_sampleRateZero(self):
        """
        With C{sampleRate: 0}, traces started here are not sampled (and
        still propagated, unsampled).
        """
        h = Harness(sampleRate=0.0)
        proto, transport = h.client()
        proto.dataReceived(b"GET / HTTP/1.1\r\nHost: hello\r\n\r\n")
        up, upTransport, port = h.upstream()
        [traceparent] = headersOf(upTransport.value())[b"traceparent"]
        self.assertTrue(traceparent.endswith(b"-00"))
        up.dataReceived(b"HTTP/1.1 204 No Content\r\n\r\n")
        self.assertEqual(h.spans.spans, [])

    def test_notRecordingWithoutExporter(self):
        """
        Without an exporter no span is made, but the trace is propagated.
        """
        h = Harness(recording=False)
        proto, transport = h.client()
        proto.dataReceived(b"GET / HTTP/1.1\r\nHost: hello\r\n\r\n")
        up, upTransport, port = h.upstream()
        self.assertIn(b"traceparent", headersOf(upTransport.value()))
        up.dataReceived(b"HTTP/1.1 204 No Content\r\n\r\n")
        self.assertEqual(h.spans.spans, [])

    def test_callerSpanPassedOnWhenNotRecording(self):
        """
        A trace this hop does not record (no exporter; or the caller's
        unsampled one) keeps the caller's span as the parent sent upstream,
        on every try, B3 too: no span id of a span no one will see.
        """
        for recording, flags in ((False, b"01"), (False, b"00"), (True, b"00")):
            h = Harness(recording=recording)
            proto, transport = h.client()
            proto.dataReceived(
                b"GET / HTTP/1.1\r\nHost: hello\r\n"
                b"traceparent: 00-%s-%s-%s\r\n\r\n"
                % (CALLER_TRACE.encode(), CALLER_SPAN.encode(), flags)
            )
            up, upTransport, port = h.upstream()
            fields = headersOf(upTransport.value())
            self.assertEqual(
                fields[b"traceparent"],
                [b"00-%s-%s-%s" % (CALLER_TRACE.encode(), CALLER_SPAN.encode(), flags)],
            )
            self.assertEqual(
                fields[b"b3"],
                [b"%s-%s-%s" % (CALLER_TRACE.encode(), CALLER_SPAN.encode(), flags[1:])],
            )
            # A retry (503 from the first endpoint) passes it on too.
            up.dataReceived(b"HTTP/1.1 503 Unavailable\r\nContent-Length: 0\r\n\r\n")
            h.reactor.advance(1)
            up2, upTransport2, port2 = h.upstream()
            self.assertEqual(
                headersOf(upTransport2.value())[b"traceparent"], fields[b"traceparent"]
            )
            self.assertEqual(h.spans.spans, [])

    def test_invalidContextRestartedAndCounted(self):
        """
        An invalid traceparent restarts the trace here (a new trace id, no
        parent), counted as trace-restarted in the router's errors, with
        the shared tracer the process gives every router.
        """
        h = Harness()
        proto, transport = h.client()
        proto.dataReceived(
            b"GET / HTTP/1.1\r\nHost: hello\r\n"
            b"traceparent: 00-%s-%s-01\r\n\r\n"
            % (CALLER_TRACE.upper().encode(), CALLER_SPAN.encode())
        )
        up, upTransport, port = h.upstream()
        [traceparent] = headersOf(upTransport.value())[b"traceparent"]
        self.assertNotIn(CALLER_TRACE.encode(), traceparent.lower())
        up.dataReceived(b"HTTP/1.1 204 No Content\r\n\r\n")
        server = h.spans.spans[0]
        self.assertIsNone(server.parentId)
        self.assertEqual(errorCount(h, "trace-restarted"), 1)

    def test_reqIdKeptFromTrustedCaller(self):
        """
        A trusted caller's mesh-reqid is kept; an untrusted caller's is
        replaced by one made here.
        """
        for peer, kept in (("10.0.0.7", True), ("192.0.2.1", False)):
            h = Harness(peer=peer)
            proto, transport = h.client()
            proto.dataReceived(b"GET / HTTP/1.1\r\nHost: hello\r\nmesh-reqid: abc-123\r\n\r\n")
            up, upTransport, port = h.upstream()
            reqIds = headersOf(upTransport.value())[b"mesh-reqid"]
            self.assertEqual(len(reqIds), 1)
            self.assertEqual(reqIds[0] == b"abc-123", kept, peer)

    def test_badReqIdReplaced(self):
        """
        A trusted caller's mesh-reqid that is not a short token is replaced.
        """
        h = Harness()
        proto, transport = h.client()
        proto.dataReceived(
            b"GET / HTTP/1.1\r\nHost: hello\r\nmesh-reqid: " + b"a" * 65 + b"\r\n\r\n"
        )
        up, upTransport, port = h.upstream()
        [reqId] = headersOf(upTransport.value())[b"mesh-reqid"]
        self.assertNotEqual(reqId, b"a" * 65)


class RetrySpanTests(SynchronousTestCase):
    def test_retriesAreSiblingClientSpans(self):
        """
        Each try is its own client span, children of the server span, each
        sent upstream as that try's parent; the failed one carries its
        status, the retry the reason.
        """
        h = Harness()
        proto, transport = h.client()
        proto.dataReceived(b"GET /x?secret=1 HTTP/1.1\r\nHost: hello\r\n\r\n")
        first, firstTransport, firstPort = h.upstream(0)
        first.dataReceived(b"HTTP/1.1 503 Busy\r\nContent-Length: 4\r\n\r\nbusy")
        second, secondTransport, secondPort = h.upstream(1)
        h.reactor.advance(0.25)
        second.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        server, try1, try2 = h.spans.spans
        self.assertEqual(try1.parentId, server.spanId)
        self.assertEqual(try2.parentId, server.spanId)
        self.assertNotEqual(try1.spanId, try2.spanId)
        parents = [
            headersOf(t.value())[b"traceparent"][0].split(b"-")[2].decode()
            for t in (firstTransport, secondTransport)
        ]
        self.assertEqual(parents, [try1.spanId, try2.spanId])
        self.assertEqual(try1.tags["http.status_code"], "503")
        self.assertTrue(try1.error)
        self.assertEqual(try2.tags["mesh.retry_reason"], "status 503")
        self.assertEqual(try2.tags["mesh.endpoint"], "127.0.0.1:%d" % (secondPort,))
        self.assertEqual(try2.remote, ("hello", "127.0.0.1", secondPort))
        self.assertFalse(try2.error)
        self.assertEqual(server.tags["http.status_code"], "200")
        self.assertEqual(server.tags["mesh.tries"], "2")
        self.assertEqual(server.tags["http.path"], "/x")
        self.assertAlmostEqual(server.duration, 0.25)
        self.assertEqual(server.start, 1764579600.0)

    def test_requestRecord(self):
        """
        A recorded request is handed to the exporters as one record holding
        what the request path knew, field by field.
        """
        h = Harness()
        proto, transport = h.client()
        proto.dataReceived(b"GET /x?q=1 HTTP/1.1\r\nHost: hello\r\n\r\n")
        upstream, upstreamTransport, port = h.upstream(0)
        h.reactor.advance(0.25)
        upstream.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        [record] = h.spans.records
        self.assertIs(type(record), RequestSpans)
        [(tryId, tryStart, tryEnd, address, tryStatus, error)] = record.tryRecords
        traceparent = headersOf(upstreamTransport.value())[b"traceparent"][0].decode()
        self.assertEqual(traceparent, "00-%s-%s-01" % (record.traceId, tryId))
        # The try's balancer node, its address written with the spans.
        self.assertIsInstance(address, Node)
        self.assertEqual(
            (tryStart, tryEnd, addressOf(address), tryStatus, error),
            (1764579600.0, 1764579600.25, "127.0.0.1:%d" % (port,), 200, None),
        )
        self.assertEqual(h.spans.spans[1].tags["mesh.endpoint"], "127.0.0.1:%d" % (port,))
        self.assertEqual(
            record[2:],
            (None, 1764579600.0, 1764579600.25, b"GET", b"/x?q=1", b"hello", 200, None, "web",
             "/#/static/hello", "10.0.0.7", None, 1, record.tryRecords, "meshproxy", None, 2),
        )

    def test_connectFailureSpan(self):
        """
        A try whose connection failed is a client span in error, tagged with
        why.
        """
        from twisted.internet.error import ConnectionRefusedError
        from twisted.python.failure import Failure

        h = Harness()
        proto, transport = h.client()
        proto.dataReceived(b"POST / HTTP/1.1\r\nHost: hello\r\nContent-Length: 1\r\n\r\nx")
        host, port, factory, timeout, bind = h.reactor.tcpClients[0]
        factory.clientConnectionFailed(None, Failure(ConnectionRefusedError()))
        second, secondTransport, secondPort = h.upstream(1)
        second.dataReceived(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n")
        server, try1, try2 = h.spans.spans
        self.assertEqual(try1.tags["error"], "upstream-connect")
        self.assertEqual(try2.tags["mesh.retry_reason"], "upstream-connect")


class SummaryTests(SynchronousTestCase):
    def test_summaryOfProxiedRequest(self):
        """
        A proxied request's summary has every field, the query dropped, the
        body bytes both ways, and the time to the response head.
        """
        h = Harness()
        proto, transport = h.client()
        proto.dataReceived(
            b"POST /a/b?token=s3cret HTTP/1.1\r\nHost: hello\r\nContent-Length: 5\r\n\r\nhello"
        )
        up, upTransport, port = h.upstream()
        h.reactor.advance(0.010)
        up.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n")
        h.reactor.advance(0.005)
        up.dataReceived(b"abc")
        [(summary, line)] = h.summaries.summaries
        self.assertEqual(list(summary), list(SUMMARY_FIELDS))
        self.assertEqual(json.loads(line), summary)
        self.assertNotIn(b"\n", line)
        expected = {
            "time": "2025-12-01T09:00:00.000Z",
            "router": "web",
            "name": "/#/static/hello",
            "method": "POST",
            "authority": "hello",
            "path": "/a/b",
            "status": 200,
            "meshErr": None,
            "bytesIn": 5,
            "bytesOut": 3,
            "endpoint": "127.0.0.1:%d" % (port,),
            "tries": 1,
            "client": "10.0.0.7",
            "identity": None,
        }
        for key, value in expected.items():
            self.assertEqual(summary[key], value, key)
        self.assertAlmostEqual(summary["durationMs"], 15.0, places=2)
        self.assertAlmostEqual(summary["ttfbMs"], 10.0, places=2)
        self.assertEqual(summary["traceId"], h.spans.spans[0].traceId)
        [reqId] = headersOf(upTransport.value())[b"mesh-reqid"]
        self.assertEqual(summary["reqId"], reqId.decode())

    def answeredHere(self, method):
        """
        Send a request for a Host no rule routes: its summary, its spans
        and what the client got.
        """
        h = Harness()
        proto, transport = h.client()
        proto.dataReceived(method + b" / HTTP/1.1\r\nHost: nowhere\r\n\r\n")
        [(summary, line)] = h.summaries.summaries
        return summary, h.spans.spans, transport.value()

    def test_summaryOfAnswerMadeHere(self):
        """
        A request meshproxy answers itself (no route) is summarised with
        its mesh-err and no endpoint, and gets a server span in error.
        """
        summary, spans, sent = self.answeredHere(b"GET")
        self.assertEqual(summary["status"], 503)
        self.assertEqual(summary["meshErr"], "no-route")
        self.assertIsNone(summary["endpoint"])
        self.assertIsNone(summary["name"])
        self.assertIsNone(summary["ttfbMs"])
        self.assertEqual(summary["tries"], 0)
        # The answer's body bytes, as for a forwarded answer.
        head, body = sent.split(b"\r\n\r\n", 1)
        self.assertIn(b"\r\nContent-Length: %d" % (len(body),), head)
        self.assertEqual((summary["bytesOut"], summary["bytesIn"]), (len(body), 0))
        self.assertGreater(len(body), 0)
        [server] = spans
        self.assertTrue(server.error)
        self.assertEqual(server.tags["mesh.err"], "no-route")

    def test_summaryOfHeadAnsweredHere(self):
        """
        An answer made here to a HEAD request sends no body, and counts
        none.
        """
        summary, spans, sent = self.answeredHere(b"HEAD")
        self.assertEqual((summary["status"], summary["meshErr"]), (503, "no-route"))
        self.assertTrue(sent.endswith(b"\r\n\r\n"))
        self.assertEqual(summary["bytesOut"], 0)

    def test_noSummaryUnlessWanted(self):
        """
        A sink that does not want the router's requests gets nothing.
        """
        h = Harness()
        h.summaries.wanted = False
        proto, transport = h.client()
        proto.dataReceived(b"GET / HTTP/1.1\r\nHost: nowhere\r\n\r\n")
        self.assertEqual(h.summaries.asked, ["web"])
        self.assertEqual(h.summaries.summaries, [])

    def test_framingErrorSummarised(self):
        """
        A request refused before it became an exchange (its head is
        malformed) still gets its summary: the status and reason sent, the
        caller, nothing of the request.
        """
        h = Harness()
        proto, transport = h.client()
        proto.dataReceived(b"GET / HTTP/1.1\r\nHost: hello\r\nBad Header: x\r\n\r\n")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 400 "))
        [(summary, line)] = h.summaries.summaries
        self.assertEqual(json.loads(line), summary)
        self.assertEqual(
            (summary["status"], summary["meshErr"], summary["client"], summary["method"]),
            (400, "bad-request", "10.0.0.7", None),
        )
        self.assertEqual(h.spans.spans, [])

    def test_headerTimeoutSummarised(self):
        """
        A request whose head never came in time is summarised as 408.
        """
        h = Harness()
        proto, transport = h.client()
        proto.dataReceived(b"GET / HTTP/1.1\r\nHost: hel")
        h.reactor.advance(60)
        [(summary, line)] = h.summaries.summaries
        self.assertEqual((summary["status"], summary["meshErr"]), (408, "client-timeout"))

    def test_clientGone(self):
        """
        A client that goes away before the answer is summarised with status
        0 and C{client-gone}.
        """
        from twisted.internet.error import ConnectionLost
        from twisted.python.failure import Failure

        h = Harness()
        proto, transport = h.client()
        proto.dataReceived(b"GET / HTTP/1.1\r\nHost: hello\r\n\r\n")
        h.upstream()
        proto.connectionLost(Failure(ConnectionLost()))
        [(summary, line)] = h.summaries.summaries
        self.assertEqual((summary["status"], summary["meshErr"]), (0, "client-gone"))
        server, client = h.spans.spans
        self.assertEqual(client.tags["error"], "client-gone")


class TracerIdTests(SynchronousTestCase):
    """
    The ids of a trace started here.
    """

    def test_idsFromOneDraw(self):
        """
        A new trace's id, this hop's span id and its first try's are the
        256 bits of one draw, as 64 lowercase hex digits with leading zeros.
        """
        for bits in [
            random.Random(7).getrandbits(256),
            (1 << 255) | (0xAB << 64) | 0xEF,
            0x0000000000000001_0000000000000002_0000000000000003_0000000000000004,
        ]:
            tracer = Tracer(sampleRate=1.0)
            tracer._getrandbits = lambda n, bits=bits: bits
            trace = tracer.begin(Request(b"GET", b"/", "1.1", [(b"host", b"a")]), False)
            text = "%064x" % (bits,)
            self.assertEqual(trace.traceId, text[:32])
            self.assertEqual(trace.spanId, text[32:48])
            self.assertEqual(trace.reqId, text[32:48])
            trace.startTry(0.0)
            self.assertEqual(trace.tryId, text[48:])


class HelperTests(SynchronousTestCase):
    def test_sinksProvideInterfaces(self):
        verifyObject(ISpanSink, SpanList())
        verifyObject(ISummarySink, SummaryList())


class LineTests(SynchronousTestCase):
    """
    The summary line made without the JSON encoder is the access log's
    line.
    """

    VALUES = (
        "2026-12-01T09:00:00.123Z",
        "web",
        "/#/fs/users",
        "GET",
        "users",
        "/a/b",
        200,
        None,
        12.345,
        1.5,
        10,
        20,
        "127.0.0.1:8080",
        1,
        "0af7651916cd43dd8448eb211c80319c",
        "b7ad6b7169203331",
        "10.0.0.7",
        None,
    )

    def check(self, values):
        from meshproxy.telemetry.accesslog import formatLine
        from meshproxy.telemetry.observe import _line

        summary = dict(zip(SUMMARY_FIELDS, values, strict=True))
        line = _line(values)
        self.assertEqual(json.loads(line), summary)
        self.assertNotIn(b"\n", line)
        self.assertEqual(json.loads(formatLine(summary)), json.loads(line))
        return line

    def test_plain(self):
        self.assertEqual(self.check(self.VALUES), formatLine_(self.VALUES))

    def test_escapes(self):
        """
        Text that needs escaping (a certificate's identity, a decoded path
        with replacement characters, line separators) still makes one
        valid line.
        """
        values = list(self.VALUES)
        values[17] = 'spiffe://td/"quoted"\\back\u2028sep\nline'
        values[5] = "/caf\ufffd"
        values[9] = None
        values[2] = None
        line = self.check(tuple(values))
        self.assertNotIn("\u2028".encode(), line)


def formatLine_(values):
    from meshproxy.telemetry.accesslog import formatLine

    return formatLine(dict(zip(SUMMARY_FIELDS, values, strict=True)))


class _Fake:
    def __init__(self, **kw):
        self.__dict__.update(kw)


def fakeExchange(**kw):
    """
    What L{RequestObserver} reads of a finished exchange; keywords override
    the request's (C{method}, C{target}, C{host}, C{peer}, C{identity}) and
    the exchange's fields.
    """
    request = _Fake(
        method=kw.pop("method", b"GET"),
        target=kw.pop("target", b"/a/b?q=1"),
        host=kw.pop("host", b"users"),
        peer=kw.pop("peer", "10.0.0.7"),
        identity=kw.pop("identity", None),
    )
    values = dict(
        request=request,
        client=_Fake(name="/#/fs/users"),
        trace=_Fake(traceId=CALLER_TRACE, reqId="b7ad6b7169203331"),
        startTime=1764579600.25,
        headTime=1764579600.2625,
        lastNode=_Fake(endpoint=Endpoint("10.0.0.2", 8080)),
        grpc=False,
        status=200,
        meshErr=None,
        bytesIn=3,
        bytesOut=5,
        tries=1,
    )
    values.update(kw)
    return _Fake(**values)


class SummaryLineTests(SynchronousTestCase):
    """
    The observer makes each summary and its line together, keeping the JSON
    of what repeats: the line is L{formatLine}'s, byte for byte, whatever
    the text.
    """

    EXCHANGES = [
        {},
        {"target": b"/plain"},
        {"target": b'/q"uote\\/100%?x=%s', "method": b"P%sT"},
        {"target": b"/caf\xc3\xa9/\xff?x", "host": b"h\xe9te"},
        {"host": None, "client": None, "lastNode": None, "headTime": 0.0, "status": 503,
         "meshErr": "no-route", "tries": 0},
        {"identity": _Fake(name='spiffe://td/"q"\u2028x'), "peer": None, "trace": None},
        {"lastNode": _Fake(endpoint=Endpoint("::1", 80))},
    ]

    def check(self, observer):
        from meshproxy.telemetry.accesslog import formatLine

        for _ in range(2):  # made, then from what was kept
            for changes in self.EXCHANGES:
                exchange = fakeExchange(**changes)
                summary, line = observer._summary(exchange, 1764579600.5)
                self.assertEqual(list(summary), list(SUMMARY_FIELDS))
                self.assertEqual(line, formatLine(dict(summary)), changes)
                self.assertEqual(json.loads(line), dict(summary))
                self.assertEqual(observer.summary(exchange, 1764579600.5), dict(summary))
        return observer

    def test_line(self):
        observer = self.check(RequestObserver('w"e%sb', Tracer()))
        summary, line = observer._summary(fakeExchange(), 1764579600.5)
        self.assertEqual(summary["path"], "/a/b")
        self.assertEqual(summary["router"], 'w"e%sb')
        self.assertEqual(summary["durationMs"], 250.0)
        self.assertEqual(summary["ttfbMs"], 12.5)
        self.assertEqual(summary["endpoint"], "10.0.0.2:8080")

    def test_lineWithQuery(self):
        observer = self.check(RequestObserver("web", Tracer(), query=True))
        summary, line = observer._summary(fakeExchange(), 1764579600.5)
        self.assertEqual(summary["path"], "/a/b?q=1")

    def test_keptBounded(self):
        """
        The JSON kept of names, methods, Hosts, endpoints, paths and client
        addresses is bounded, and what is made after a clearing is right.
        """
        from meshproxy.telemetry.observe import MAX_KEPT

        observer = RequestObserver("web", Tracer())
        for i in range(MAX_KEPT * 2):
            peer = "10.0.%d.%d" % (i // 256, i % 256)
            exchange = fakeExchange(host=b"h%d" % (i,), target=b"/p%d?q" % (i,), peer=peer)
            summary, line = observer._summary(exchange, 1764579600.5)
            self.assertEqual((summary["path"], summary["client"]), ("/p%d" % (i,), peer))
            self.assertEqual(json.loads(line), dict(summary))
            for kept in (observer._texts, observer._paths, observer._peers):
                self.assertLessEqual(len(kept), MAX_KEPT)

    def test_longTargetsNotKept(self):
        """
        A target longer than MAX_KEPT_TARGET is written each time and not
        kept: a client choosing long targets does not grow what is kept.
        """
        from meshproxy.telemetry.spans import MAX_KEPT_TARGET

        observer = RequestObserver("web", Tracer())
        for n in range(3):
            target = b"/" + b"x" * MAX_KEPT_TARGET + b"%d?q" % (n,)
            summary, line = observer._summary(fakeExchange(target=target), 1764579600.5)
            self.assertEqual(summary["path"], "/" + "x" * MAX_KEPT_TARGET + "%d" % (n,))
            self.assertEqual(json.loads(line), dict(summary))
        self.assertEqual(observer._paths, {})
        short = b"/" + b"y" * (MAX_KEPT_TARGET - 1)
        observer._summary(fakeExchange(target=short), 1764579600.5)
        self.assertEqual(list(observer._paths), [short])

    def test_longHostsAndMethodsNotKept(self):
        """
        A Host or method longer than MAX_KEPT_TARGET is written each time
        and not kept.
        """
        from meshproxy.telemetry.spans import MAX_KEPT_TARGET

        observer = RequestObserver("web", Tracer())
        host, method = b"h" * (MAX_KEPT_TARGET + 1), b"M" * (MAX_KEPT_TARGET + 1)
        summary, line = observer._summary(fakeExchange(host=host, method=method), 1764579600.5)
        self.assertEqual(summary["authority"], host.decode())
        self.assertEqual(summary["method"], method.decode())
        self.assertEqual(json.loads(line), dict(summary))
        self.assertNotIn(host, observer._texts)
        self.assertNotIn(method, observer._texts)


class SummaryMappingTests(SynchronousTestCase):
    def test_mapping(self):
        """
        L{Summary} is a read-only mapping of the summary fields, in order,
        equal to the dict of the same.
        """
        from meshproxy.telemetry.spans import Summary

        values = tuple(range(len(SUMMARY_FIELDS)))
        summary = Summary(values)
        self.assertEqual(list(summary), list(SUMMARY_FIELDS))
        self.assertEqual(summary, dict(zip(SUMMARY_FIELDS, values, strict=True)))
        self.assertEqual(summary["status"], SUMMARY_FIELDS.index("status"))
        self.assertEqual(summary.get("nope", "x"), "x")
        self.assertRaises(KeyError, summary.__getitem__, "nope")
        self.assertRaises(ValueError, Summary, values[:-1])
