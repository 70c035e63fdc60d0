"""
HTTP/2 from clients, on memory transports: an h2 client connection (the h2
library, client side) against the router's server protocol, each stream an
exchange to an HTTP/1.1 upstream: requests and bodies both ways, trailers,
flow control as back-pressure, the concurrent streams limit, resets both
ways, GOAWAY on drain, timeouts, protocol errors and floods.
"""

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    InformationalResponseReceived,
    ResponseReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
)
from h2.settings import SettingCodes
from hyperframe.frame import ContinuationFrame, DataFrame, HeadersFrame, PingFrame, SettingsFrame
from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from meshproxy.config import parseConfig
from meshproxy.http.interfaces import IClientConnection, IResponseWriter
from meshproxy.http2.frames import FloodGuard, FloodLimits, FrameScanner, TokenBucket
from meshproxy.http2.stream import H2Stream
from tests.test_http_server import Harness

CONFIG = """\
namers:
  - {kind: static, prefix: /#/static, services: {hello: ["127.0.0.1:9001"]}}
routers:
  - name: web
    listen: "tcp:4140"
    rules: "/svc => /#/static;"
    timeouts: {total: 60s}
    server: {headerTimeout: 5s, idleTimeout: 30s, bodyTimeout: 7s%(server)s}
    http2: {%(http2)s}
"""

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def config(server="", http2=""):
    return CONFIG % {"server": server, "http2": http2}


def errors(harness, reason):
    return harness.metrics._errors.get(("web", reason), 0)


def closed(transport):
    return transport.disconnecting or transport.disconnected


def get(path=b"/", authority=b"hello", method=b"GET", extra=()):
    return [
        (b":method", method),
        (b":scheme", b"http"),
        (b":authority", authority),
        (b":path", path),
        *extra,
    ]


class H2Client:
    """
    An h2 client connection talking to a server protocol over memory
    transports; every event it got, by stream.
    """

    def __init__(self, harness, limits=None, settings=None):
        self.harness = harness
        self.proto, self.transport = harness.client()
        if limits is not None:
            self.proto.h2Limits = limits
        self.conn = H2Connection(H2Configuration(client_side=True, header_encoding=None))
        if settings:
            self.conn.local_settings.update(settings)
            self.conn.local_settings.acknowledge()
        self.conn.initiate_connection()
        self.events = []
        self.pump()

    def pump(self):
        """
        Exchange bytes until neither side has more to say.
        """
        for _ in range(100):
            data = self.conn.data_to_send()
            if data and not closed(self.transport):
                self.proto.dataReceived(data)
            answer = self.transport.value()
            self.transport.clear()
            if answer:
                self.events += self.conn.receive_data(answer)
            if not data and not answer:
                return
        raise AssertionError("the conversation does not end")

    def raw(self, data):
        """
        Send bytes the client library would not make.
        """
        self.proto.dataReceived(data)
        answer = self.transport.value()
        self.transport.clear()
        if answer:
            self.events += self.conn.receive_data(answer)

    def request(self, headers, body=None, end=True):
        sid = self.conn.get_next_available_stream_id()
        self.conn.send_headers(sid, headers, end_stream=end and body is None)
        if body is not None:
            self.conn.send_data(sid, body, end_stream=end)
        self.pump()
        return sid

    def of(self, sid, kind=None):
        return [
            e
            for e in self.events
            if getattr(e, "stream_id", None) == sid and (kind is None or isinstance(e, kind))
        ]

    def response(self, sid):
        """
        The response of stream C{sid}: its head, body and trailers, and
        whether it ended.
        """
        head = self.of(sid, ResponseReceived)
        body = b"".join(e.data for e in self.of(sid, DataReceived))
        trailers = self.of(sid, TrailersReceived)
        return (
            dict(head[0].headers) if head else None,
            body,
            trailers[0].headers if trailers else None,
            bool(self.of(sid, StreamEnded)),
        )

    def resets(self, sid):
        return [e.error_code for e in self.of(sid, StreamReset)]

    def goaway(self):
        ended = [e for e in self.events if isinstance(e, ConnectionTerminated)]
        return ended[0] if ended else None


class H2Harness(Harness):
    def __init__(self, text=None, ports=(9001,)):
        text = config() if text is None else text
        Harness.__init__(self, text, ports)
        self.http2 = parseConfig(text).routers[0].http2

    def client(self):
        proto, transport = Harness.client(self)
        proto.http2 = self.http2
        return proto, transport

    def h2(self, **kwargs):
        return H2Client(self, **kwargs)


class StreamTests(SynchronousTestCase):
    def test_interfaces(self):
        h = H2Harness()
        c = h.h2()
        c.request(get(), end=False)
        [stream] = c.proto._h2.streams.values()
        self.assertTrue(verifyObject(IClientConnection, stream))
        self.assertTrue(verifyObject(IResponseWriter, stream.responseWriter(False)))

    def test_getRoutedAsHTTP1(self):
        """
        A stream's request goes upstream as HTTP/1.1, its C{:authority} as
        C{Host}; the response comes back as HEADERS and DATA, lowercased,
        without connection-specific fields, with C{via} and the length.
        """
        h = H2Harness()
        c = h.h2()
        sid = c.request(get(b"/x?y=1", extra=[(b"x-custom", b"VaLuE")]))
        up, upTransport = h.upstream()
        head = upTransport.value()
        self.assertTrue(head.startswith(b"GET /x?y=1 HTTP/1.1\r\nhost: hello\r\n"), head)
        self.assertIn(b"x-custom: VaLuE\r\n", head)
        self.assertIn(b"X-Forwarded-Proto: http\r\n", head)
        self.assertNotIn(b"Transfer-Encoding", head)
        self.assertNotIn(b"Content-Length", head)
        up.dataReceived(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: keep-alive, X-Hop\r\n"
            b"Keep-Alive: timeout=5\r\nX-Hop: 1\r\nX-Kept: Yes\r\nUpgrade: h3\r\n\r\nhello"
        )
        c.pump()
        headers, body, trailers, ended = c.response(sid)
        self.assertEqual(headers[b":status"], b"200")
        self.assertEqual(headers[b"x-kept"], b"Yes")
        self.assertEqual(headers[b"via"], b"1.1 meshproxy")
        self.assertEqual(headers[b"content-length"], b"5")
        for name in (b"connection", b"keep-alive", b"x-hop", b"upgrade"):
            self.assertNotIn(name, headers)
        self.assertEqual(body, b"hello")
        self.assertTrue(ended)
        # The connection stays for more streams.
        # (the upstream connection went back to the pool: reused)
        sid2 = c.request(get(b"/2"))
        self.assertFalse(closed(c.transport))
        self.assertIn(b"GET /2 HTTP/1.1", upTransport.value())
        up.dataReceived(OK)
        c.pump()
        self.assertEqual(c.response(sid2)[1], b"ok")

    def test_wholeBodyInTheFirstReadHasItsLength(self):
        """
        A body that ended in the read that brought its head goes upstream
        with its length.
        """
        h = H2Harness()
        c = h.h2()
        sid = c.request(get(method=b"POST"), body=b"payload")
        up, upTransport = h.upstream()
        sent = upTransport.value()
        self.assertIn(b"Content-Length: 7\r\n", sent)
        self.assertTrue(sent.endswith(b"\r\n\r\npayload"), sent)
        up.dataReceived(OK)
        c.pump()
        self.assertEqual(c.response(sid)[1], b"ok")

    def test_streamingBodyGoesChunked(self):
        """
        A body still arriving when the exchange starts, without a length,
        goes upstream chunked; its end is the last chunk.
        """
        h = H2Harness()
        c = h.h2()
        sid = c.request(get(method=b"POST"), end=False)
        up, upTransport = h.upstream()
        self.assertIn(b"Transfer-Encoding: chunked\r\n", upTransport.value())
        upTransport.clear()
        c.conn.send_data(sid, b"abc")
        c.pump()
        self.assertEqual(upTransport.value(), b"3\r\nabc\r\n")
        c.conn.end_stream(sid)
        c.pump()
        self.assertEqual(upTransport.value(), b"3\r\nabc\r\n0\r\n\r\n")

    def test_declaredLengthIsForwarded(self):
        h = H2Harness()
        c = h.h2()
        sid = c.request(get(method=b"PUT", extra=[(b"content-length", b"4")]), end=False)
        up, upTransport = h.upstream()
        self.assertIn(b"Content-Length: 4\r\n", upTransport.value())
        c.conn.send_data(sid, b"data", end_stream=True)
        c.pump()
        self.assertTrue(upTransport.value().endswith(b"\r\n\r\ndata"))

    def test_requestTrailers(self):
        """
        Request trailers go upstream after the last chunk; those that may
        not be trailers are dropped and counted.
        """
        h = H2Harness()
        c = h.h2()
        sid = c.request(get(method=b"POST"), end=False)
        up, upTransport = h.upstream()
        c.conn.send_data(sid, b"x")
        c.conn.send_headers(sid, [(b"x-sum", b"1"), (b"authorization", b"no")], end_stream=True)
        c.pump()
        self.assertTrue(upTransport.value().endswith(b"1\r\nx\r\n0\r\nx-sum: 1\r\n\r\n"))
        self.assertEqual(errors(h, "trailer-dropped"), 1)

    def test_chunkedResponseWithTrailers(self):
        """
        A chunked response's body becomes DATA frames, its trailers a
        HEADERS frame ending the stream.
        """
        h = H2Harness()
        c = h.h2()
        sid = c.request(get())
        up, _ = h.upstream()
        up.dataReceived(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3\r\nabc\r\n2\r\nde\r\n0\r\nGrpc-Status: 0\r\n\r\n"
        )
        c.pump()
        headers, body, trailers, ended = c.response(sid)
        self.assertNotIn(b"transfer-encoding", headers)
        self.assertNotIn(b"content-length", headers)
        self.assertEqual(body, b"abcde")
        self.assertEqual(trailers, [(b"grpc-status", b"0")])
        self.assertTrue(ended)

    def test_headResponseEndsWithItsHead(self):
        h = H2Harness()
        c = h.h2()
        sid = c.request(get(method=b"HEAD"))
        up, _ = h.upstream()
        up.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n")
        c.pump()
        headers, body, _, ended = c.response(sid)
        self.assertEqual(headers[b"content-length"], b"10")
        self.assertEqual(body, b"")
        self.assertTrue(ended)

    def test_continueAndEarlyHints(self):
        """
        C{Expect: 100-continue} is answered once an upstream connection is
        made; a 103 from the upstream is passed on; both as informational
        HEADERS.
        """
        h = H2Harness()
        c = h.h2()
        sid = c.request(get(method=b"POST", extra=[(b"expect", b"100-continue")]), end=False)
        self.assertEqual(c.of(sid, InformationalResponseReceived), [])
        up, _ = h.upstream()
        c.pump()
        [hundred] = c.of(sid, InformationalResponseReceived)
        self.assertEqual(dict(hundred.headers)[b":status"], b"100")
        c.conn.send_data(sid, b"x", end_stream=True)
        c.pump()
        up.dataReceived(b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" + OK)
        c.pump()
        hints = c.of(sid, InformationalResponseReceived)[1]
        self.assertEqual(dict(hints.headers)[b"link"], b"</a>")
        self.assertEqual(c.response(sid)[1], b"ok")

    def test_errorAnswerOnTheStream(self):
        """
        An error made by meshproxy is an answer on the stream, with its
        C{mesh-err}; the connection stays.
        """
        h = H2Harness()
        c = h.h2()
        sid = c.request(get(authority=b"nowhere"))
        headers, body, _, ended = c.response(sid)
        self.assertEqual(headers[b":status"], b"503")
        self.assertEqual(headers[b"mesh-err"], b"no-route")
        self.assertEqual(int(headers[b"content-length"]), len(body))
        self.assertTrue(ended)
        self.assertFalse(closed(c.transport))

    def test_unaskedUpgradeIsNoTunnel(self):
        h = H2Harness()
        c = h.h2()
        sid = c.request(get())
        up, upTransport = h.upstream()
        up.dataReceived(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n")
        c.pump()
        self.assertEqual(c.response(sid)[0][b":status"], b"502")
        self.assertTrue(closed(upTransport))
        self.assertFalse(closed(c.transport))


class RequestCheckTests(SynchronousTestCase):
    """
    A stream's request is checked as an HTTP/1 request head is; a refused
    one is answered on its stream, and the connection goes on.
    """

    def answer(self, headers, h=None, **kwargs):
        h = h or H2Harness()
        c = h.h2()
        sid = c.request(headers, **kwargs)
        self.assertEqual(h.reactor.tcpClients, [])
        headers, body, _, ended = c.response(sid)
        self.assertTrue(ended)
        self.assertFalse(closed(c.transport))
        return int(headers[b":status"]), headers[b"mesh-err"], c

    def test_connectRefused(self):
        headers = [(b":method", b"CONNECT"), (b":authority", b"hello:443")]
        self.assertEqual(self.answer(headers)[:2], (405, b"method-not-allowed"))

    def test_badHost(self):
        self.assertEqual(self.answer(get(authority=b"a b"))[:2], (400, b"bad-host"))

    def test_badExpectation(self):
        status, reason, _ = self.answer(get(extra=[(b"expect", b"magic")]))
        self.assertEqual((status, reason), (417, b"expectation-failed"))

    def test_tooManyHeaders(self):
        h = H2Harness(config(server=", maxHeaders: 3"))
        extra = [(b"x-%d" % i, b"v") for i in range(4)]
        self.assertEqual(self.answer(get(extra=extra), h)[:2], (431, b"too-many-headers"))

    def test_longTarget(self):
        h = H2Harness(config(server=", maxUriLength: 10"))
        self.assertEqual(self.answer(get(b"/" + b"a" * 20), h)[:2], (414, b"uri-too-long"))

    def test_declaredBodyTooLarge(self):
        h = H2Harness(config(server=", maxBodyBytes: 3"))
        headers = get(method=b"POST", extra=[(b"content-length", b"4")])
        status, reason, c = self.answer(headers, h, end=False)
        self.assertEqual((status, reason), (413, b"body-too-large"))
        # The client is told to stop sending (RFC 9113 8.1).
        self.assertEqual(c.resets(1), [ErrorCodes.NO_ERROR])
        self.assertEqual(c.proto._h2.streams, {})

    def test_bodyTooLargeAsItArrives(self):
        """
        A body without a declared length is counted as it arrives: past
        C{maxBodyBytes}, its exchange is abandoned and 413 answered.
        """
        h = H2Harness(config(server=", maxBodyBytes: 3"))
        c = h.h2()
        sid = c.request(get(method=b"POST"), end=False)
        up, upTransport = h.upstream()
        c.conn.send_data(sid, b"abcd")
        c.pump()
        self.assertTrue(closed(upTransport))
        self.assertEqual(c.response(sid)[0][b":status"], b"413")
        self.assertEqual(errors(h, "body-too-large"), 1)

    def test_otherStreamsGoOn(self):
        h = H2Harness()
        c = h.h2()
        good = c.request(get(), end=False)
        bad = c.request(get(authority=b"a b"))
        self.assertEqual(c.response(bad)[0][b":status"], b"400")
        c.conn.end_stream(good)
        c.pump()
        up, _ = h.upstream()
        up.dataReceived(OK)
        c.pump()
        self.assertEqual(c.response(good)[1], b"ok")

    def malformed(self, headers, status=400, reason=b"bad-request"):
        """
        A header list that breaks RFC 9113 (sent raw, past the client
        library's own checks) is answered on its stream; the connection
        goes on.
        """
        h = H2Harness()
        c = h.h2()
        c.conn.config.validate_outbound_headers = False
        c.conn.config.normalize_outbound_headers = False
        sid = c.request(headers)
        self.assertIsNone(c.goaway())
        response = c.response(sid)[0]
        self.assertEqual((int(response[b":status"]), response[b"mesh-err"]), (status, reason))
        self.assertEqual(h.reactor.tcpClients, [])
        self.assertFalse(closed(c.transport))
        good = c.request(get())
        self.assertEqual(len(h.reactor.tcpClients), 1)
        del good

    def test_connectionSpecificField(self):
        self.malformed(get(extra=[(b"connection", b"close")]))
        self.malformed(get(extra=[(b"transfer-encoding", b"chunked")]))

    def test_teOtherThanTrailers(self):
        self.malformed(get(extra=[(b"te", b"gzip")]))

    def test_uppercaseName(self):
        self.malformed(get(extra=[(b"X-Upper", b"1")]), reason=b"bad-header")

    def test_valueWithSurroundingSpace(self):
        self.malformed(get(extra=[(b"x-a", b" 1")]), reason=b"bad-header")

    def test_pseudoHeaderAfterARegularField(self):
        headers = get()
        self.malformed(headers[:3] + [(b"x-a", b"1")] + headers[3:])

    def test_unknownOrRepeatedPseudoHeader(self):
        self.malformed(get() + [(b":status", b"200")])
        self.malformed([(b":path", b"/")] + get())
        self.malformed(get() + [(b":protocol", b"websocket")])

    def test_missingPseudoHeaders(self):
        self.malformed([(b":method", b"GET"), (b":authority", b"hello"), (b":scheme", b"http")])
        self.malformed([(b":path", b"/"), (b":authority", b"hello"), (b":scheme", b"http")])

    def test_authorityAndHostDiffer(self):
        self.malformed(get(extra=[(b"host", b"other")]), reason=b"bad-host")
        headers = [h for h in get() if h[0] != b":authority"]
        self.malformed(headers, reason=b"bad-host")

    def test_hostWithoutAuthority(self):
        h = H2Harness()
        c = h.h2()
        headers = [h for h in get() if h[0] != b":authority"] + [(b"host", b"hello")]
        c.request(headers)
        up, upTransport = h.upstream()
        self.assertIn(b"host: hello\r\n", upTransport.value())

    def test_cookiesGoAsOneField(self):
        """
        Cookie crumbs go upstream in one field (RFC 9113 8.2.3).
        """
        h = H2Harness()
        c = h.h2()
        c.request(get(extra=[(b"cookie", b"a=1"), (b"x-b", b"2"), (b"cookie", b"c=3")]))
        up, upTransport = h.upstream()
        self.assertIn(b"cookie: a=1; c=3\r\n", upTransport.value())
        self.assertEqual(upTransport.value().count(b"cookie"), 1)

    def test_malformedTrailers(self):
        h = H2Harness()
        c = h.h2()
        c.conn.config.validate_outbound_headers = False
        c.conn.config.normalize_outbound_headers = False
        sid = c.request(get(method=b"POST"), end=False)
        up, upTransport = h.upstream()
        c.conn.send_headers(sid, [(b":path", b"/x")], end_stream=True)
        c.pump()
        self.assertEqual(c.response(sid)[0][b":status"], b"400")
        self.assertTrue(closed(upTransport))
        self.assertFalse(closed(c.transport))

    def test_trailersAfterTheAnswerAreDropped(self):
        """
        Trailers (even malformed ones) that come while a refused request's
        answer still waits for the window are dropped: the answer is sent
        once.
        """
        h = H2Harness()
        c = h.h2(settings={SettingCodes.INITIAL_WINDOW_SIZE: 5})
        c.conn.config.validate_outbound_headers = False
        c.conn.config.normalize_outbound_headers = False
        sid = c.request(get(method=b"POST", extra=[(b"expect", b"magic")]), end=False)
        c.conn.send_headers(sid, [(b":path", b"/x")], end_stream=True)
        c.pump()
        c.conn.increment_flow_control_window(100, sid)
        c.pump()
        self.assertEqual(len(c.of(sid, ResponseReceived)), 1)
        headers, body, trailers, ended = c.response(sid)
        self.assertEqual(headers[b":status"], b"417")
        self.assertEqual(body, b"Unsupported expectation.\n")
        self.assertIsNone(trailers)
        self.assertTrue(ended)
        self.assertEqual(c.proto._h2.streams, {})

    def test_frameTheLibraryRefusesEndsTheConnection(self):
        """
        A header block the h2 library cannot decode ends the connection
        with its GOAWAY (COMPRESSION_ERROR is what RFC 9113 asks; h2 says
        PROTOCOL_ERROR), counted; nothing goes upstream.
        """
        h = H2Harness()
        c = h.h2()
        frame = HeadersFrame(1, data=b"\xff\xff\xff\xff", flags=["END_HEADERS", "END_STREAM"])
        c.raw(frame.serialize())
        self.assertEqual(c.goaway().error_code, ErrorCodes.PROTOCOL_ERROR)
        self.assertTrue(closed(c.transport))
        self.assertEqual(errors(h, "h2-protocol-error"), 1)
        self.assertEqual(h.reactor.tcpClients, [])

    def test_oversizedHeaderList(self):
        h = H2Harness(config(http2="maxHeaderListSize: 200"))
        c = h.h2()
        c.request(get(extra=[(b"x-big", b"v" * 300)]))
        self.assertEqual(c.goaway().error_code, ErrorCodes.ENHANCE_YOUR_CALM)
        self.assertEqual(errors(h, "header-too-large"), 1)

    def test_settingsAnnounced(self):
        h = H2Harness(
            config(http2="maxConcurrentStreams: 7, initialWindowSize: 1000, maxFrameSize: 20000")
        )
        c = h.h2()
        remote = c.conn.remote_settings
        self.assertEqual(remote[SettingCodes.MAX_CONCURRENT_STREAMS], 7)
        self.assertEqual(remote[SettingCodes.INITIAL_WINDOW_SIZE], 1000)
        self.assertEqual(remote[SettingCodes.MAX_FRAME_SIZE], 20000)
        # server.maxHeaderBytes by default.
        self.assertEqual(remote[SettingCodes.MAX_HEADER_LIST_SIZE], 65536)

    def test_connectionWindowIsTheStreamsWindows(self):
        """
        The connection's window is opened to the sum of the streams': one
        stream holding its window never stalls the others.
        """
        c = H2Harness(config(http2="maxConcurrentStreams: 10, initialWindowSize: 100000")).h2()
        self.assertEqual(c.conn.outbound_flow_control_window, 1000000)


class FlowControlTests(SynchronousTestCase):
    def test_requestBodyWindowOpensAsUpstreamConsumes(self):
        """
        While the upstream's transport is full, the stream's window is not
        given back: the client can send no more than one window.
        """
        h = H2Harness(config(http2="initialWindowSize: 100"))
        c = h.h2()
        sid = c.request(get(method=b"POST"), end=False)
        up, upTransport = h.upstream()
        # The upstream's transport is full: it pauses the stream's gate.
        upTransport.producer.pauseProducing()
        c.conn.send_data(sid, b"a" * 100)
        c.pump()
        self.assertEqual(c.conn.local_flow_control_window(sid), 0)
        self.assertIn(b"a" * 100, upTransport.value())
        upTransport.producer.resumeProducing()
        c.pump()
        self.assertEqual(c.conn.local_flow_control_window(sid), 100)

    def test_oneSlowStreamDoesNotStallOthers(self):
        h = H2Harness(config(http2="initialWindowSize: 100"))
        c = h.h2()
        slow = c.request(get(method=b"POST"), end=False)
        up1, up1Transport = h.upstream()
        up1Transport.producer.pauseProducing()
        c.conn.send_data(slow, b"a" * 100)
        c.pump()
        fast = c.request(get(method=b"POST"), end=False)
        up2, up2Transport = h.upstream()
        for _ in range(5):
            c.conn.send_data(fast, b"b" * 100)
            c.pump()
        self.assertEqual(up2Transport.value().count(b"b" * 100), 5)
        self.assertEqual(c.conn.local_flow_control_window(slow), 0)

    def test_bodyHeldBeforeAConnectionIsBounded(self):
        """
        Before an upstream connection exists, the body is held up to
        meshproxy's buffer; past it the window is held.
        """
        h = H2Harness(config(http2="initialWindowSize: 100000"))
        c = h.h2()
        sid = c.request(get(method=b"POST"), end=False)
        for _ in range(7):
            c.conn.send_data(sid, b"x" * 10000)
        c.pump()
        # Past 64 KiB held, the window of what comes is held too.
        [stream] = c.proto._h2.streams.values()
        self.assertTrue(stream.gate.pausedFor("preconnect"))
        self.assertEqual(stream._unacked, 10000)
        up, upTransport = h.upstream()
        c.pump()
        self.assertFalse(stream.gate.paused)
        self.assertEqual(stream._unacked, 0)
        self.assertEqual(upTransport.value().count(b"x" * 10000), 7)

    def test_responseWaitsForTheWindowAndPausesTheUpstream(self):
        """
        A response larger than the client's window waits for it; meanwhile
        the upstream connection is paused.
        """
        h = H2Harness()
        c = h.h2(settings={SettingCodes.INITIAL_WINDOW_SIZE: 10})
        sid = c.request(get())
        up, upTransport = h.upstream()
        up.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"z" * 30)
        c.pump()
        self.assertEqual(len(c.response(sid)[1]), 10)
        self.assertEqual(upTransport.producerState, "paused")
        [stream] = c.proto._h2.streams.values()
        self.assertTrue(stream.readingPaused())
        c.conn.increment_flow_control_window(90, sid)
        c.pump()
        self.assertEqual(len(c.response(sid)[1]), 30)
        self.assertEqual(upTransport.producerState, "producing")
        up.dataReceived(b"z" * 70)
        c.pump()
        self.assertEqual(len(c.response(sid)[1]), 100)
        self.assertTrue(c.response(sid)[3])

    def test_fullTransportPausesReadingAndUpstreams(self):
        h = H2Harness()
        c = h.h2()
        sid = c.request(get())
        up, upTransport = h.upstream()
        up.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"z" * 30)
        c.pump()
        connection = c.transport.producer
        connection.pauseProducing()
        self.assertEqual(c.transport.producerState, "paused")
        self.assertEqual(upTransport.producerState, "paused")
        connection.resumeProducing()
        self.assertEqual(c.transport.producerState, "producing")
        self.assertEqual(upTransport.producerState, "producing")
        self.assertEqual(len(c.response(sid)[1]), 30)


class MemoryTests(SynchronousTestCase):
    def test_closedStreamsRememberedAreBounded(self):
        """
        A long-lived connection does not remember every stream it closed.
        """
        h = H2Harness()
        c = h.h2()
        c.request(get())
        up, _ = h.upstream()
        up.dataReceived(OK)
        c.pump()
        for _ in range(1500):
            c.request(get())
            up.dataReceived(OK)
        c.pump()
        h2 = c.proto._h2.h2
        # (what the library remembers is pruned once the connection is idle)
        self.assertEqual(h2.open_inbound_streams, 0)
        self.assertLessEqual(len(h2._closed_streams), 1024)
        self.assertLessEqual(len(h2.streams), 2)
        self.assertEqual(c.proto._h2.streams, {})


class StreamLimitTests(SynchronousTestCase):
    def test_streamsOverTheLimitRefused(self):
        """
        Streams over C{maxConcurrentStreams} are reset with REFUSED_STREAM
        (the client may send them again), not the whole connection; once
        one ends, a new one is taken.
        """
        h = H2Harness(config(http2="maxConcurrentStreams: 2"))
        c = h.h2()
        # (the client ignores the setting, as one that has not read it yet)
        c.conn.remote_settings[SettingCodes.MAX_CONCURRENT_STREAMS] = 10
        c.conn.remote_settings.acknowledge()
        first = c.request(get())
        c.request(get())
        third = c.request(get())
        self.assertEqual(c.resets(third), [ErrorCodes.REFUSED_STREAM])
        self.assertEqual(errors(h, "h2-stream-refused"), 1)
        self.assertEqual(len(h.reactor.tcpClients), 2)
        up, _ = h.upstream(0)
        up.dataReceived(OK)
        c.pump()
        self.assertTrue(c.response(first)[3])
        fourth = c.request(get(b"/fourth"))
        self.assertEqual(c.resets(fourth), [])
        # (on the first stream's upstream connection, back in the pool)
        self.assertIn(b"GET /fourth HTTP/1.1", up.transport.value())
        self.assertIsNone(c.goaway())


class ResetTests(SynchronousTestCase):
    def test_clientResetDropsTheUpstream(self):
        h = H2Harness()
        c = h.h2()
        sid = c.request(get())
        up, upTransport = h.upstream()
        c.conn.reset_stream(sid, ErrorCodes.CANCEL)
        c.pump()
        self.assertTrue(closed(upTransport))
        self.assertEqual(errors(h, "client-gone"), 1)
        self.assertEqual(c.proto._h2.streams, {})
        self.assertFalse(closed(c.transport))

    def test_resetInTheSameReadNeverStarts(self):
        """
        A stream reset in the read that opened it never reaches the router.
        """
        h = H2Harness()
        c = h.h2()
        sid = c.conn.get_next_available_stream_id()
        c.conn.send_headers(sid, get(), end_stream=True)
        c.conn.reset_stream(sid, ErrorCodes.CANCEL)
        c.pump()
        self.assertEqual(h.reactor.tcpClients, [])
        self.assertEqual(c.proto._h2.streams, {})

    def test_upstreamFailureMidResponseResetsOnlyItsStream(self):
        h = H2Harness()
        c = h.h2()
        broken = c.request(get())
        upBroken, _ = h.upstream()
        other = c.request(get())
        upOther, _ = h.upstream()
        upBroken.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        upBroken.connectionLost(Failure(ConnectionDone()))
        c.pump()
        self.assertEqual(c.resets(broken), [ErrorCodes.INTERNAL_ERROR])
        upOther.dataReceived(OK)
        c.pump()
        self.assertEqual(c.response(other)[1], b"ok")
        self.assertFalse(closed(c.transport))

    def test_answerBeforeTheBodyEndsResetsWithNoError(self):
        """
        A response complete before the request body is told to the client
        with a reset (NO_ERROR) after it.
        """
        h = H2Harness()
        c = h.h2()
        sid = c.request(get(method=b"POST"), end=False)
        up, _ = h.upstream()
        up.dataReceived(OK)
        c.pump()
        self.assertTrue(c.response(sid)[3])
        self.assertEqual(c.resets(sid), [ErrorCodes.NO_ERROR])


class DrainTests(SynchronousTestCase):
    def test_drainSendsGoAwayAndFinishesStreams(self):
        """
        A drain sends GOAWAY (NO_ERROR) with the last stream taken; the
        streams under way finish; later ones are refused; the connection
        closes after the last.
        """
        h = H2Harness()
        c = h.h2()
        first = c.request(get())
        second = c.request(get())
        c.proto.drain()
        c.pump()
        goaway = c.goaway()
        self.assertEqual(goaway.error_code, ErrorCodes.NO_ERROR)
        self.assertEqual(goaway.last_stream_id, second)
        self.assertFalse(closed(c.transport))
        # A client that did not see it yet.
        c.conn.state_machine.state = c.conn.state_machine.state.__class__.CLIENT_OPEN
        late = c.request(get())
        self.assertEqual(c.resets(late), [ErrorCodes.REFUSED_STREAM])
        self.assertEqual(len(h.reactor.tcpClients), 2)
        up1, _ = h.upstream(0)
        up1.dataReceived(OK)
        self.assertFalse(closed(c.transport))
        up2, _ = h.upstream(1)
        up2.dataReceived(OK)
        self.assertTrue(closed(c.transport))
        c.pump()
        self.assertTrue(c.response(first)[3] and c.response(second)[3])

    def test_idleConnectionDrainsAtOnce(self):
        h = H2Harness()
        c = h.h2()
        c.proto.drain()
        c.pump()
        self.assertEqual(c.goaway().last_stream_id, 0)
        self.assertTrue(closed(c.transport))

    def test_clientGoAwayEndsTheConnection(self):
        h = H2Harness()
        c = h.h2()
        sid = c.request(get())
        up, upTransport = h.upstream()
        c.conn.close_connection()
        c.pump()
        self.assertTrue(closed(c.transport))
        self.assertTrue(closed(upTransport))
        self.assertEqual(c.proto._h2.streams, {})
        del sid


class TimeoutTests(SynchronousTestCase):
    def test_idleConnectionClosed(self):
        h = H2Harness()
        c = h.h2()
        h.reactor.advance(29)
        self.assertFalse(closed(c.transport))
        h.reactor.advance(2)
        c.pump()
        self.assertEqual(c.goaway().error_code, ErrorCodes.NO_ERROR)
        self.assertTrue(closed(c.transport))

    def test_idleCountsFromTheLastStream(self):
        h = H2Harness()
        c = h.h2()
        h.reactor.advance(20)
        sid = c.request(get())
        up, _ = h.upstream()
        h.reactor.advance(20)
        self.assertFalse(closed(c.transport))
        up.dataReceived(OK)
        c.pump()
        self.assertTrue(c.response(sid)[3])
        h.reactor.advance(29)
        self.assertFalse(closed(c.transport))
        h.reactor.advance(2)
        self.assertTrue(closed(c.transport))

    def test_incompleteHeaderBlockTimesOut(self):
        """
        A header block whose CONTINUATION never comes ends the connection
        after C{server.headerTimeout} (a slowloris).
        """
        h = H2Harness()
        c = h.h2()
        frame = HeadersFrame(1)
        frame.data = b"\x82"  # (:method GET, from the static table)
        c.raw(frame.serialize())
        h.reactor.advance(4.9)
        self.assertFalse(closed(c.transport))
        h.reactor.advance(0.2)
        self.assertTrue(closed(c.transport))
        self.assertEqual(errors(h, "client-timeout"), 1)

    def test_stalledRequestBodyGets408(self):
        h = H2Harness()
        c = h.h2()
        sid = c.request(get(method=b"POST"), end=False)
        up, upTransport = h.upstream()
        h.reactor.advance(6)
        c.conn.send_data(sid, b"x")
        c.pump()
        h.reactor.advance(6)
        self.assertEqual(c.response(sid)[0], None)
        h.reactor.advance(1.1)
        c.pump()
        self.assertEqual(c.response(sid)[0][b":status"], b"408")
        self.assertTrue(closed(upTransport))
        self.assertFalse(closed(c.transport))

    def test_heldBodyDoesNotTimeOut(self):
        """
        Time during which meshproxy itself holds the body (the upstream is
        full) is not the client's.
        """
        h = H2Harness()
        c = h.h2()
        sid = c.request(get(method=b"POST"), end=False)
        up, upTransport = h.upstream()
        upTransport.producer.pauseProducing()
        h.reactor.advance(20)
        c.pump()
        self.assertEqual(c.response(sid)[0], None)
        upTransport.producer.resumeProducing()
        h.reactor.advance(6)
        self.assertEqual(c.response(sid)[0], None)
        h.reactor.advance(1.1)
        c.pump()
        self.assertEqual(c.response(sid)[0][b":status"], b"408")

    def test_responseStalledOnTheWindowIsReset(self):
        h = H2Harness()
        c = h.h2(settings={SettingCodes.INITIAL_WINDOW_SIZE: 10})
        sid = c.request(get())
        up, upTransport = h.upstream()
        up.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"z" * 100)
        c.pump()
        h.reactor.advance(29)
        self.assertEqual(c.resets(sid), [])
        h.reactor.advance(2)
        c.pump()
        self.assertEqual(c.resets(sid), [ErrorCodes.CANCEL])
        self.assertEqual(c.proto._h2.streams, {})
        self.assertFalse(closed(c.transport))


class FloodTests(SynchronousTestCase):
    """
    Each flood ends the connection with GOAWAY (ENHANCE_YOUR_CALM), counted
    under its reason, once past its limit.
    """

    def flooded(self, c, h, reason):
        self.assertEqual(c.goaway().error_code, ErrorCodes.ENHANCE_YOUR_CALM)
        self.assertTrue(closed(c.transport))
        self.assertEqual(errors(h, reason), 1)

    def test_pingFlood(self):
        h = H2Harness()
        c = h.h2(limits=FloodLimits(pings=(5, 1.0)))
        for i in range(5):
            c.conn.ping(b"%08d" % i)
        c.pump()
        self.assertIsNone(c.goaway())
        c.raw(PingFrame(0, opaque_data=b"12345678").serialize())
        self.flooded(c, h, "h2-flood-ping")

    def test_pingsWithinTheRateAreFine(self):
        h = H2Harness()
        c = h.h2(limits=FloodLimits(pings=(2, 1.0)))
        for i in range(10):
            c.conn.ping(b"%08d" % i)
            c.pump()
            h.reactor.advance(1)
        self.assertIsNone(c.goaway())

    def test_settingsFlood(self):
        h = H2Harness()
        c = h.h2(limits=FloodLimits(settings=(3, 1.0)))
        for _ in range(4):
            c.raw(SettingsFrame(0).serialize())
        self.flooded(c, h, "h2-flood-settings")

    def test_emptyDataFlood(self):
        h = H2Harness()
        c = h.h2(limits=FloodLimits(emptyFrames=(10, 1.0)))
        sid = c.request(get(method=b"POST"), end=False)
        c.raw(DataFrame(sid).serialize() * 11)
        self.flooded(c, h, "h2-flood-empty-frames")

    def test_continuationFlood(self):
        """
        CONTINUATION frames past the limit, or a block past the header list
        size, end the connection before the h2 library buffers more.
        """
        h = H2Harness()
        c = h.h2(limits=FloodLimits(continuations=4))
        frame = HeadersFrame(1)
        frame.data = b"\x82"
        c.raw(frame.serialize())
        for _ in range(4):
            c.raw(ContinuationFrame(1, data=b"\x00").serialize())
        self.assertIsNone(c.goaway())
        c.raw(ContinuationFrame(1, data=b"\x00").serialize())
        self.flooded(c, h, "h2-flood-continuation")

    def test_continuationBlockTooLarge(self):
        h = H2Harness(config(http2="maxHeaderListSize: 1000"))
        c = h.h2()
        frame = HeadersFrame(1)
        frame.data = b"\x82"
        c.raw(frame.serialize() + ContinuationFrame(1, data=b"\x00" * 1000).serialize())
        self.flooded(c, h, "h2-flood-continuation")

    def test_rapidReset(self):
        """
        Streams opened and reset past the limit end the connection (CVE
        2023-44487); those reset in the read that opened them never
        reached an upstream.
        """
        h = H2Harness()
        c = h.h2(limits=FloodLimits(resets=(10, 1.0)))
        for _ in range(10):
            sid = c.conn.get_next_available_stream_id()
            c.conn.send_headers(sid, get(), end_stream=True)
            c.conn.reset_stream(sid)
        c.pump()
        self.assertIsNone(c.goaway())
        sid = c.conn.get_next_available_stream_id()
        c.conn.send_headers(sid, get(), end_stream=True)
        c.conn.reset_stream(sid)
        c.pump()
        self.flooded(c, h, "h2-flood-rapid-reset")
        self.assertEqual(h.reactor.tcpClients, [])

    def test_refusedStreamsFlood(self):
        h = H2Harness(config(http2="maxConcurrentStreams: 1"))
        c = h.h2(limits=FloodLimits(refusals=(3, 1.0)))
        c.conn.remote_settings[SettingCodes.MAX_CONCURRENT_STREAMS] = 100
        c.conn.remote_settings.acknowledge()
        for _ in range(4):
            c.request(get(), end=False)
        self.assertIsNone(c.goaway())
        c.request(get(), end=False)
        self.flooded(c, h, "h2-flood-refused-streams")

    def test_floodAbandonsStreamsUnderWay(self):
        h = H2Harness()
        c = h.h2(limits=FloodLimits(pings=(1, 1.0)))
        c.request(get())
        up, upTransport = h.upstream()
        c.raw(PingFrame(0).serialize() * 2)
        self.assertTrue(closed(upTransport))

    def test_protocolErrorIsAGoAwayNotATraceback(self):
        """
        A frame the h2 library refuses (DATA on stream 0) ends the
        connection with its GOAWAY; nothing is logged as a failure.
        """
        h = H2Harness()
        c = h.h2()
        c.raw(b"\x00\x00\x01\x00\x00\x00\x00\x00\x00x")
        self.assertEqual(c.goaway().error_code, ErrorCodes.PROTOCOL_ERROR)
        self.assertTrue(closed(c.transport))
        self.assertEqual(errors(h, "h2-protocol-error"), 1)
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_flowControlViolation(self):
        h = H2Harness(config(http2="initialWindowSize: 10"))
        c = h.h2()
        sid = c.request(get(method=b"POST"), end=False)
        c.raw(DataFrame(sid, data=b"x" * 11).serialize())
        self.assertEqual(c.goaway().error_code, ErrorCodes.FLOW_CONTROL_ERROR)
        self.assertEqual(errors(h, "h2-flow-control-error"), 1)


class FrameScannerTests(SynchronousTestCase):
    def scanner(self, **limits):
        from twisted.internet.task import Clock

        guard = FloodGuard(FloodLimits(**limits), 100, Clock())
        return FrameScanner(guard, 100)

    def test_framesSplitAnywhere(self):
        """
        Frame headers split between reads at any byte are read the same.
        """
        data = (
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
            + PingFrame(0).serialize() * 3
            + DataFrame(1, data=b"abc").serialize()
        )
        for cut in range(len(data)):
            scanner = self.scanner(pings=(2, 0.0))
            first = scanner.scan(data[:cut])
            second = scanner.scan(data[cut:])
            self.assertEqual((first or second), "h2-flood-ping", cut)

    def test_headerPending(self):
        scanner = self.scanner()
        scanner.scan(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        frame = HeadersFrame(1, data=b"\x82\x84", flags=["END_HEADERS"]).serialize()
        scanner.scan(frame[:10])
        self.assertTrue(scanner.headerPending)
        scanner.scan(frame[10:])
        self.assertFalse(scanner.headerPending)
        scanner.scan(HeadersFrame(3, data=b"\x82").serialize())
        self.assertTrue(scanner.headerPending)
        scanner.scan(ContinuationFrame(3, data=b"\x84", flags=["END_HEADERS"]).serialize())
        self.assertFalse(scanner.headerPending)

    def test_tokenBucket(self):
        bucket = TokenBucket(2, 1.0, 0.0)
        self.assertTrue(bucket.take(0.0))
        self.assertTrue(bucket.take(0.0))
        self.assertFalse(bucket.take(0.5))
        self.assertTrue(bucket.take(1.0))
        self.assertFalse(bucket.take(1.0))
        self.assertTrue(bucket.take(100.0))


class StreamObjectTests(SynchronousTestCase):
    def test_writeIsRefused(self):
        """
        Raw HTTP/1 bytes never go to a stream.
        """
        h = H2Harness()
        c = h.h2()
        c.request(get(), end=False)
        [stream] = c.proto._h2.streams.values()
        self.assertIsInstance(stream, H2Stream)
        self.assertRaises(RuntimeError, stream.write, b"HTTP/1.1 200 OK\r\n")
