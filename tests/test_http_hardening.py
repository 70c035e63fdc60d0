"""
The HTTP router against hostile clients and upstreams, on a memory reactor:
bounded trailers and response heads, trailers that may not be trailers,
absolute-form targets, overrides that may not lead to addresses, framing
checked before anything is forwarded, empty-line dribbles, and HTTP
versions meshproxy does not speak.
"""

from twisted.internet.error import ConnectionLost
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from meshproxy.http.message import forbiddenTrailer
from meshproxy.http.router import InetNotAllowed, RulesError, checkRules
from meshproxy.routing.path import Path
from tests.test_http_server import CONFIG, Harness

CHUNKED_HEAD = b"POST / HTTP/1.1\r\nHost: hello\r\nTransfer-Encoding: chunked\r\n\r\n"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def errors(harness, reason):
    """
    How many times the router counted C{reason} as an error.
    """
    return harness.metrics._errors.get(("web", reason), 0)


def closed(transport):
    return transport.disconnecting or transport.disconnected


class ForbiddenTrailerTests(SynchronousTestCase):
    def test_forbiddenTrailers(self):
        for name in (
            b"Content-Length",
            b"transfer-encoding",
            b"Host",
            b"Authorization",
            b"Connection",
            b"TE",
            b"Trailer",
            b"mesh-dtab",
            b"Mesh-Ctx-Deadline",
            b"Proxy-Authorization",
            b"Cookie",
        ):
            self.assertTrue(forbiddenTrailer(name), name)
        for name in (b"grpc-status", b"X-Checksum", b"server-timing"):
            self.assertFalse(forbiddenTrailer(name), name)


class RequestTrailerTests(SynchronousTestCase):
    """
    Request trailers count against C{server.maxHeaderBytes} and
    C{server.maxHeaders} as they arrive.
    """

    config = CONFIG.replace(
        "server: {headerTimeout: 5s,",
        "server: {maxHeaderBytes: 4096, maxHeaders: 10, headerTimeout: 5s,",
    )

    def test_longTrailerRefusedAsBytesArrive(self):
        """
        A trailer value sent in many pieces is refused with 431 once the
        bytes read past the last chunk exceed the limit, long before it
        ends: the parser never holds more than about the limit and one
        read. Nothing of the trailer reaches the upstream.
        """
        h = Harness(self.config)
        proto, transport = h.client()
        proto.dataReceived(CHUNKED_HEAD + b"3\r\nabc\r\n0\r\nX-Big: ")
        up, upTransport = h.upstream()
        fed = 0
        while not closed(transport) and fed < 1024 * 1024:
            proto.dataReceived(b"v" * 1000)
            fed += 1000
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 431 "), transport.value()[:80])
        self.assertIn(b"mesh-err: header-too-large", transport.value())
        self.assertLessEqual(fed, 4096 + 1000)
        self.assertNotIn(b"X-Big", upTransport.value())
        # The upstream try is abandoned: its connection is aborted.
        self.assertTrue(closed(upTransport))

    def test_trailerFieldsOverTheLimit(self):
        """
        Trailers whose fields add up past the limit in one read get 431.
        """
        h = Harness(self.config)
        proto, transport = h.client()
        trailers = b"".join(b"X-T%d: %s\r\n" % (i, b"v" * 500) for i in range(9))
        proto.dataReceived(CHUNKED_HEAD + b"3\r\nabc\r\n0\r\n" + trailers + b"\r\n")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 431 "))
        self.assertIn(b"Request trailers too large.", transport.value())
        self.assertTrue(closed(transport))
        # Refused before anything was sent upstream (see also
        # test_framingCheckedBeforeForwarding).
        self.assertEqual(h.reactor.tcpClients, [])

    def test_tooManyTrailers(self):
        h = Harness(self.config)
        proto, transport = h.client()
        trailers = b"".join(b"X-T%d: v\r\n" % (i,) for i in range(11))
        proto.dataReceived(CHUNKED_HEAD + b"3\r\nabc\r\n0\r\n" + trailers + b"\r\n")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 431 "))
        self.assertIn(b"mesh-err: too-many-headers", transport.value())

    def test_manySmallChunksAreNotTrailers(self):
        """
        Chunk framing between body pieces does not add up: a body of many
        one-byte chunks, far more framing than the limit, goes through.
        """
        h = Harness(self.config)
        proto, transport = h.client()
        proto.dataReceived(CHUNKED_HEAD)
        up, upTransport = h.upstream()
        for _ in range(3000):
            proto.dataReceived(b"1;e=1\r\nx\r\n")
        proto.dataReceived(b"0\r\n\r\n")
        self.assertTrue(upTransport.value().endswith(b"0\r\n\r\n"))
        self.assertEqual(upTransport.value().count(b"\r\nx\r\n"), 3000)
        up.dataReceived(OK)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 200 OK"))

    def test_forbiddenTrailersDropped(self):
        """
        Framing, routing, authentication, hop-by-hop and mesh fields sent as
        trailers are never forwarded; other trailers are.
        """
        h = Harness(self.config)
        proto, transport = h.client()
        proto.dataReceived(CHUNKED_HEAD + b"3\r\nabc\r\n")
        up, upTransport = h.upstream()
        proto.dataReceived(
            b"0\r\n"
            b"Host: evil\r\n"
            b"Authorization: Bearer x\r\n"
            b"Connection: close\r\n"
            b"TE: trailers\r\n"
            b"Trailer: X-Ok\r\n"
            b"mesh-dtab: /svc => /$/inet/10.1.2.3/22\r\n"
            b"X-Ok: fine\r\n"
            b"\r\n"
        )
        sent = upTransport.value()
        self.assertTrue(sent.endswith(b"0\r\nX-Ok: fine\r\n\r\n"), sent[-120:])
        for name in (b"Host: evil", b"Authorization", b"TE:", b"mesh-dtab", b"Connection"):
            self.assertNotIn(name, sent.split(b"\r\n\r\n", 1)[1])
        self.assertEqual(errors(h, "trailer-dropped"), 6)

    def test_framingTrailersRefused(self):
        """
        Content-Length or Transfer-Encoding in trailers breaks the request:
        the parser refuses it (400), the upstream try is abandoned, and
        nothing of them is forwarded.
        """
        for trailer in (b"Content-Length: 5", b"Transfer-Encoding: chunked"):
            h = Harness(self.config)
            proto, transport = h.client()
            proto.dataReceived(CHUNKED_HEAD + b"3\r\nabc\r\n")
            up, upTransport = h.upstream()
            proto.dataReceived(b"0\r\n" + trailer + b"\r\n\r\n")
            self.assertTrue(transport.value().startswith(b"HTTP/1.1 400 "), trailer)
            self.assertTrue(closed(transport))
            self.assertTrue(closed(upTransport))
            self.assertNotIn(trailer, upTransport.value().split(b"\r\n\r\n", 1)[1])

    def test_trailersTooLargeAfterResponseStarted(self):
        """
        Once the response has started, oversized trailers abort the upstream
        try and close the client connection (no answer can be made).
        """
        h = Harness(self.config)
        proto, transport = h.client()
        proto.dataReceived(CHUNKED_HEAD + b"3\r\nabc\r\n")
        up, upTransport = h.upstream()
        up.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n01234")
        proto.dataReceived(b"0\r\nX-Big: ")
        for _ in range(10):
            proto.dataReceived(b"v" * 1000)
        self.assertTrue(transport.disconnected)
        self.assertTrue(closed(upTransport))
        self.assertNotIn(b"431", transport.value())

    def test_errorThenStopsReading(self):
        """
        After a framing error the connection is answered and closed: bytes
        that follow are neither parsed nor forwarded.
        """
        h = Harness(self.config)
        proto, transport = h.client()
        proto.dataReceived(b"GET / HTTP/1.1\r\nHost: hello\r\nContent-Length: x\r\n\r\n")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 400 "))
        self.assertTrue(closed(transport))
        proto.dataReceived(b"GET / HTTP/1.1\r\nHost: hello\r\n\r\n")
        self.assertEqual(h.reactor.tcpClients, [])


class RefusedUpgradeTests(SynchronousTestCase):
    def test_refusedUpgradeClosesTheConnection(self):
        """
        An upgrade request answered without switching protocols ends its
        connection after the answer: the parser stopped at the request's
        head, so the connection could not be read on correctly.
        """
        h = Harness()
        proto, transport = h.client()
        proto.dataReceived(
            b"GET /ws HTTP/1.1\r\nHost: hello\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\nX"
        )
        up, upTransport = h.upstream()
        up.dataReceived(OK)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 200 OK"))
        self.assertIn(b"Connection: close\r\n", transport.value())
        self.assertTrue(closed(transport))


    def test_unaskedSwitchIsNoTunnel(self):
        """
        A 101 answer to a request that asked for no upgrade is an invalid
        response (RFC 9110 15.2.2): 502, and no tunnel is made.
        """
        h = Harness()
        proto, transport = h.client()
        proto.dataReceived(b"GET / HTTP/1.1\r\nHost: hello\r\n\r\n")
        up, upTransport = h.upstream()
        up.dataReceived(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\nraw")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 502 "), transport.value())
        self.assertIn(b"mesh-err: upstream-protocol", transport.value())
        self.assertTrue(upTransport.disconnecting or upTransport.disconnected)
        self.assertIsNone(proto._tunnel)
        self.assertNotIn(b"raw", transport.value())


class FramingBeforeForwardingTests(SynchronousTestCase):
    def test_framingCheckedBeforeForwarding(self):
        """
        A request whose chunked framing fails in the same read as its head
        is refused without its head ever reaching the upstream, even on an
        idle pooled connection that would take it at once.
        """
        h = Harness()
        proto, transport = h.client()
        proto.dataReceived(b"GET /1 HTTP/1.1\r\nHost: hello\r\n\r\n")
        up, upTransport = h.upstream()
        up.dataReceived(OK)
        upTransport.clear()
        transport.clear()
        proto.dataReceived(CHUNKED_HEAD + b"zz\r\nabc\r\n")
        self.assertEqual(upTransport.value(), b"")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 400 "))

    def test_wholeRequestInOneReadStillCoalesced(self):
        """
        A well-formed request read at once goes upstream in one write.
        """
        h = Harness()
        proto, transport = h.client()
        proto.dataReceived(b"GET /1 HTTP/1.1\r\nHost: hello\r\n\r\n")
        up, upTransport = h.upstream()
        up.dataReceived(OK)
        upTransport.clear()
        proto.dataReceived(CHUNKED_HEAD + b"3\r\nabc\r\n0\r\n\r\n")
        self.assertTrue(upTransport.value().startswith(b"POST / HTTP/1.1\r\n"))
        self.assertTrue(upTransport.value().endswith(b"3\r\nabc\r\n0\r\n\r\n"))


class ResponseHeadLimitTests(SynchronousTestCase):
    """
    Upstream response heads count against the C{client} limits as bytes
    arrive; past them the try fails as C{upstream-protocol}, not retried.
    """

    config = CONFIG.replace(
        "    timeouts: {total: 60s}\n",
        "    timeouts: {total: 60s}\n"
        "    classifier: {kind: retryableRead5XX}\n"
        "    client: {maxHeaderBytes: 4096, maxHeaders: 10, maxInformational: 2}\n",
    )

    def assertProtocolError(self, h, transport, upTransport):
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 502 "), transport.value()[:80])
        self.assertIn(b"mesh-err: upstream-protocol", transport.value())
        self.assertTrue(closed(upTransport))
        # Not retried, although there is another endpoint and GET is a read.
        self.assertEqual(len(h.reactor.tcpClients), 1)

    def test_longHeadRefusedAsBytesArrive(self):
        h = Harness(self.config, ports=(9001, 9002))
        proto, transport = h.client()
        proto.dataReceived(b"GET / HTTP/1.1\r\nHost: hello\r\n\r\n")
        up, upTransport = h.upstream()
        up.dataReceived(b"HTTP/1.1 200 OK\r\nX-Big: ")
        fed = 0
        while not closed(upTransport) and fed < 1024 * 1024:
            up.dataReceived(b"v" * 1000)
            fed += 1000
        self.assertLessEqual(fed, 4096 + 1000)
        self.assertProtocolError(h, transport, upTransport)
        self.assertNotIn(b"vvvv", transport.value())

    def test_longReasonPhraseRefused(self):
        h = Harness(self.config)
        proto, transport = h.client()
        proto.dataReceived(b"GET / HTTP/1.1\r\nHost: hello\r\n\r\n")
        up, upTransport = h.upstream()
        up.dataReceived(b"HTTP/1.1 200 ")
        for _ in range(10):
            up.dataReceived(b"O" * 1000)
        self.assertProtocolError(h, transport, upTransport)

    def test_headFieldsOverLimitInOneRead(self):
        h = Harness(self.config)
        proto, transport = h.client()
        proto.dataReceived(b"GET / HTTP/1.1\r\nHost: hello\r\n\r\n")
        up, upTransport = h.upstream()
        fields = b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 1000) for i in range(5))
        up.dataReceived(b"HTTP/1.1 200 OK\r\n" + fields + b"Content-Length: 2\r\n\r\nok")
        self.assertProtocolError(h, transport, upTransport)

    def test_tooManyHeaders(self):
        h = Harness(self.config)
        proto, transport = h.client()
        proto.dataReceived(b"GET / HTTP/1.1\r\nHost: hello\r\n\r\n")
        up, upTransport = h.upstream()
        fields = b"".join(b"X-H%d: v\r\n" % (i,) for i in range(11))
        up.dataReceived(b"HTTP/1.1 200 OK\r\n" + fields + b"\r\n")
        self.assertProtocolError(h, transport, upTransport)
        self.assertIn(b"more than 10 header fields", transport.value())

    def test_tenHeadersAreFine(self):
        h = Harness(self.config)
        proto, transport = h.client()
        proto.dataReceived(b"GET / HTTP/1.1\r\nHost: hello\r\n\r\n")
        up, upTransport = h.upstream()
        fields = b"".join(b"X-H%d: v\r\n" % (i,) for i in range(9))
        up.dataReceived(b"HTTP/1.1 200 OK\r\n" + fields + b"Content-Length: 2\r\n\r\nok")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 200 OK"))

    def test_tooManyInterimResponses(self):
        h = Harness(self.config)
        proto, transport = h.client()
        proto.dataReceived(b"GET / HTTP/1.1\r\nHost: hello\r\n\r\n")
        up, upTransport = h.upstream()
        up.dataReceived(b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" * 2)
        self.assertFalse(closed(upTransport))
        up.dataReceived(b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n")
        self.assertIn(b"HTTP/1.1 502 ", transport.value())
        self.assertIn(b"more than 2 interim (1xx) responses", transport.value())
        self.assertTrue(closed(upTransport))

    def test_interimCountIsPerRequest(self):
        """
        A pooled connection starts each request with no interim response
        counted.
        """
        h = Harness(self.config)
        proto, transport = h.client()
        for i in range(3):
            proto.dataReceived(b"GET / HTTP/1.1\r\nHost: hello\r\n\r\n")
            if i == 0:
                up, upTransport = h.upstream()
            up.dataReceived(b"HTTP/1.1 103 Early Hints\r\n\r\n" * 2 + OK)
        self.assertEqual(transport.value().count(b"HTTP/1.1 200 OK"), 3)
        self.assertEqual(len(h.reactor.tcpClients), 1)

    def test_responseTrailersBoundedAndFiltered(self):
        """
        Response trailers are bounded like the head; forbidden ones are
        dropped, others forwarded.
        """
        h = Harness(self.config)
        proto, transport = h.client()
        proto.dataReceived(b"GET / HTTP/1.1\r\nHost: hello\r\n\r\n")
        up, upTransport = h.upstream()
        up.dataReceived(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n"
            b"0\r\nConnection: x\r\nSet-Cookie: a=b\r\nmesh-x: 1\r\ngrpc-status: 0\r\n\r\n"
        )
        self.assertTrue(transport.value().endswith(b"0\r\ngrpc-status: 0\r\n\r\n"))
        self.assertEqual(errors(h, "trailer-dropped"), 3)

        proto.dataReceived(b"GET / HTTP/1.1\r\nHost: hello\r\n\r\n")
        up.dataReceived(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nX-Big: "
        )
        for _ in range(10):
            up.dataReceived(b"v" * 1000)
        # The response had started: the client connection is cut.
        self.assertTrue(transport.disconnected)
        self.assertTrue(closed(upTransport))


class AbsoluteFormTests(SynchronousTestCase):
    def test_authorityReplacesHost(self):
        """
        An absolute-form request is routed by the target's authority and
        forwarded in origin-form with that authority as its Host.
        """
        h = Harness()
        proto, transport = h.client()
        proto.dataReceived(b"GET http://hello/x?y=1 HTTP/1.1\r\nHost: internal.example\r\n\r\n")
        up, upTransport = h.upstream()
        sent = upTransport.value()
        self.assertTrue(sent.startswith(b"GET /x?y=1 HTTP/1.1\r\n"), sent[:60])
        self.assertIn(b"\r\nHost: hello\r\n", sent)
        self.assertNotIn(b"internal.example", sent)

    def test_otherHostInHeaderDoesNotRoute(self):
        """
        The Host header does not decide the route of an absolute-form
        request: C{nope} is unknown, whatever the header says.
        """
        h = Harness()
        proto, transport = h.client()
        proto.dataReceived(b"GET http://nope/ HTTP/1.1\r\nHost: hello\r\n\r\n")
        self.assertIn(b"mesh-err: no-route", transport.value())
        self.assertEqual(h.reactor.tcpClients, [])

    def test_http10WithoutHostGetsOne(self):
        h = Harness()
        proto, transport = h.client()
        proto.dataReceived(b"GET http://hello HTTP/1.0\r\n\r\n")
        up, upTransport = h.upstream()
        sent = upTransport.value()
        self.assertTrue(sent.startswith(b"GET / HTTP/1.1\r\n"), sent[:60])
        self.assertIn(b"\r\nHost: hello\r\n", sent)

    def test_userinfoRefused(self):
        for target in (b"http://users@evil/", b"http://a:b@hello/", b"https://@hello/"):
            h = Harness()
            proto, transport = h.client()
            proto.dataReceived(b"GET " + target + b" HTTP/1.1\r\nHost: hello\r\n\r\n")
            self.assertTrue(transport.value().startswith(b"HTTP/1.1 400 "), target)
            self.assertIn(b"Userinfo", transport.value())
            self.assertEqual(h.reactor.tcpClients, [])

    def test_emptyAuthorityRefused(self):
        h = Harness()
        proto, transport = h.client()
        proto.dataReceived(b"GET http:///x HTTP/1.1\r\nHost: hello\r\n\r\n")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 400 "))
        self.assertEqual(h.reactor.tcpClients, [])


TRUSTING = CONFIG.replace(
    "    timeouts: {total: 60s}\n",
    "    timeouts: {total: 60s}\n    trust: {callers: [10.0.0.0/8]}\n",
)


class OverrideDestinationTests(SynchronousTestCase):
    """
    A trusted caller's override may lead only to names of configured
    namers, unless C{trust.allowInet} is set.
    """

    def send(self, h, override):
        proto, transport = h.client()
        proto.dataReceived(
            b"GET / HTTP/1.1\r\nHost: hello\r\nmesh-dtab: " + override + b"\r\n\r\n"
        )
        return transport

    def test_inetRefused(self):
        for override in (
            b"/svc/hello => /$/inet/10.1.2.3/22",
            b"/svc => /$/inet/127.0.0.1/22",
            b"/svc/hello => /x; /x => /$/inet/127.0.0.1/6379",
            b"/svc/hello => /#/static/hello | /$/inet/127.0.0.1/22",
            b"/svc/hello => /$/nil",
        ):
            h = Harness(TRUSTING)
            transport = self.send(h, override)
            self.assertTrue(transport.value().startswith(b"HTTP/1.1 400 "), override)
            self.assertIn(b"mesh-err: bad-dtab", transport.value())
            self.assertIn(b"leads to an address", transport.value())
            self.assertEqual(h.reactor.tcpClients, [], override)
            self.assertEqual(errors(h, "dtab-override-inet"), 1)

    def test_longOverrideNotKept(self):
        """
        An override text longer than MAX_CACHED_OVERRIDE_LENGTH is applied
        but not kept parsed: what a caller's headers make the router keep
        is bounded by length as well as count.
        """
        from meshproxy.http.trust import MAX_CACHED_OVERRIDE_LENGTH

        h = Harness(TRUSTING)
        short = b"/svc/other => /#/static/hello"
        long = short + b";" + b"/svc/x => /#/static/hello;" * (MAX_CACHED_OVERRIDE_LENGTH // 20)
        self.send(h, long)
        self.assertEqual(len(h.reactor.tcpClients), 1)
        self.assertEqual(h.router.trust._overrides, {})
        self.send(h, short)
        self.assertEqual(list(h.router.trust._overrides), [short.decode()])

    def test_namerNamesAllowed(self):
        h = Harness(TRUSTING)
        self.send(h, b"/svc/other => /#/static/hello")
        self.assertEqual(len(h.reactor.tcpClients), 1)

    def test_allowInet(self):
        h = Harness(
            TRUSTING.replace(
                "trust: {callers: [10.0.0.0/8]}", "trust: {callers: [10.0.0.0/8], allowInet: true}"
            )
        )
        self.send(h, b"/svc/hello => /$/inet/127.0.0.1/9009")
        [(host, port, _, _, _)] = h.reactor.tcpClients
        self.assertEqual((host, port), ("127.0.0.1", 9009))

    def test_prefixRefusalCounted(self):
        h = Harness(
            TRUSTING.replace(
                "callers: [10.0.0.0/8]", "callers: [10.0.0.0/8], dtabPrefixes: [/svc/a]"
            )
        )
        transport = self.send(h, b"/svc/hello => /#/static/hello")
        self.assertIn(b"mesh-err: bad-dtab", transport.value())
        self.assertEqual(errors(h, "dtab-override-prefix"), 1)

    def test_checkRules(self):
        prefixes = [Path.read("/#/static")]
        checkRules("/svc => /$/inet/127.0.0.1/80;", prefixes)
        e = self.assertRaises(
            InetNotAllowed, checkRules, "/svc => /#/static;\n/a => /$/inet/h/1;", prefixes, False
        )
        self.assertIsInstance(e, RulesError)
        self.assertEqual((e.line, e.column), (2, 7))

    def test_rulesAllowInetFalse(self):
        """
        With C{admin.rulesAllowInet: false}, rules replaced through the
        admin API may not lead to addresses.
        """
        h = Harness()
        h.router.rules.validateRules("/svc => /$/inet/127.0.0.1/80;")
        from meshproxy.config import parseConfig
        from meshproxy.http.router import HttpRouter
        from meshproxy.runtime import balancerFactory

        config = parseConfig(CONFIG).routers[0]
        router = HttpRouter(
            config,
            h.router.namers,
            reactor=h.reactor,
            metrics=h.metrics,
            balancerFactory=balancerFactory(config.loadBalancer, h.reactor),
            rulesAllowInet=False,
        )
        self.assertRaises(
            InetNotAllowed, router.rules.validateRules, "/svc => /$/inet/127.0.0.1/80;"
        )
        router.rules.validateRules("/svc => /#/static;")


class PreambleTests(SynchronousTestCase):
    def test_dribbledEmptyLinesTimeOut(self):
        """
        Empty lines before a request line count against the header timeout
        (5 s here), not the idle timeout (30 s).
        """
        h = Harness()
        proto, transport = h.client()
        for _ in range(4):
            proto.dataReceived(b"\r\n")
            h.reactor.advance(1)
        h.reactor.advance(1.1)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 408 "))
        self.assertTrue(closed(transport))

    def test_dribbleCountsIntoTheHead(self):
        """
        A head that follows a dribble has what is left of the timeout.
        """
        h = Harness()
        proto, transport = h.client()
        proto.dataReceived(b"\r\n\r\n")
        h.reactor.advance(4)
        proto.dataReceived(b"GET / HTTP/1.1\r\n")
        h.reactor.advance(1.1)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 408 "))

    def test_servedRequestIsNoPreamble(self):
        """
        The bytes of a request read whole are not a preamble: the kept-alive
        connection after its answer waits the idle timeout (30 s here),
        not the header timeout (5 s), and then closes without an answer.
        """
        h = Harness()
        proto, transport = h.client()
        proto.dataReceived(b"GET / HTTP/1.1\r\nHost: hello\r\n\r\n")
        up, upTransport = h.upstream()
        up.dataReceived(OK)
        transport.clear()
        h.reactor.advance(10)
        self.assertFalse(closed(transport))
        h.reactor.advance(21)
        self.assertTrue(closed(transport))
        self.assertEqual(transport.value(), b"")

    def test_oneEmptyLineTolerated(self):
        """
        One empty line (an old client's extra CRLF) is not a preamble: the
        request that follows is served, and an idle connection closes
        quietly.
        """
        h = Harness()
        proto, transport = h.client()
        proto.dataReceived(b"\r\n")
        h.reactor.advance(10)
        self.assertFalse(closed(transport))
        proto.dataReceived(b"GET / HTTP/1.1\r\nHost: hello\r\n\r\n")
        up, upTransport = h.upstream()
        up.dataReceived(OK)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 200 OK"))


class VersionTests(SynchronousTestCase):
    def test_unsupportedVersions(self):
        """
        An HTTP/2.0 request line in HTTP/1 syntax, and HTTP/0.9, get 505.
        """
        for request in (
            b"GET / HTTP/2.0\r\nHost: hello\r\n\r\n",
            b"GET / HTTP/0.9\r\n\r\n",
        ):
            h = Harness()
            proto, transport = h.client()
            proto.dataReceived(request)
            self.assertTrue(transport.value().startswith(b"HTTP/1.1 505 "), request)
            self.assertIn(b"mesh-err: version-not-supported", transport.value())
            self.assertTrue(closed(transport))
            self.assertEqual(h.reactor.tcpClients, [])


    def test_brokenPrefaceGets400(self):
        """
        A PRI line that does not go on as the HTTP/2 preface is a malformed
        request.
        """
        h = Harness()
        proto, transport = h.client()
        proto.dataReceived(b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 400 "), transport.value())
        self.assertTrue(closed(transport))
        self.assertEqual(h.reactor.tcpClients, [])

    def test_prefaceAfterARequestGets505(self):
        """
        The HTTP/2 preface is HTTP/2 only at the start of a connection:
        after an HTTP/1 request it is a request line of an unsupported
        version.
        """
        h = Harness()
        proto, transport = h.client()
        proto.dataReceived(b"GET / HTTP/1.1\r\nHost: hello\r\n\r\n")
        up, upTransport = h.upstream()
        up.dataReceived(OK)
        transport.clear()
        proto.dataReceived(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 505 "), transport.value())
        self.assertTrue(closed(transport))

    def test_prefaceStartsHTTP2(self):
        """
        The HTTP/2 preface at the start of a connection (h2c with prior
        knowledge), even split between reads, is answered with the server's
        SETTINGS frame (tests/test_http2_server.py has the rest).
        """
        h = Harness()
        proto, transport = h.client()
        proto.dataReceived(b"PRI * HTTP/2")
        self.assertEqual(transport.value(), b"")
        proto.dataReceived(b".0\r\n\r\nSM\r\n\r\n")
        # A frame header: a SETTINGS frame (type 4) on stream 0.
        self.assertEqual(transport.value()[3:4], b"\x04")
        self.assertEqual(transport.value()[5:9], b"\x00\x00\x00\x00")
        self.assertFalse(closed(transport))
        self.assertEqual(errors(h, "version-not-supported"), 0)


    def test_partialPrefaceTimesOut(self):
        """
        A preface that stops half way is bounded by the header timeout.
        """
        h = Harness()
        proto, transport = h.client()
        proto.dataReceived(b"PRI * HTTP/2.0\r\n")
        h.reactor.advance(4.9)
        self.assertFalse(closed(transport))
        h.reactor.advance(0.2)
        self.assertTrue(closed(transport))
        self.assertEqual(errors(h, "client-timeout"), 1)

    def test_requestLineStartingLikeThePreface(self):
        """
        Bytes that start like the preface and then differ are HTTP/1.
        """
        h = Harness()
        proto, transport = h.client()
        proto.dataReceived(b"P")
        proto.dataReceived(b"OST / HTTP/1.1\r\nHost: hello\r\nContent-Length: 0\r\n\r\n")
        up, upTransport = h.upstream()
        self.assertTrue(upTransport.value().startswith(b"POST / HTTP/1.1\r\n"))


class UpstreamLostTests(SynchronousTestCase):
    def test_lostAfterHeadLimitErrorIsQuiet(self):
        """
        The connection aborted for an oversized head reports nothing more
        to the exchange that already answered 502.
        """
        h = Harness(ResponseHeadLimitTests.config)
        proto, transport = h.client()
        proto.dataReceived(b"GET / HTTP/1.1\r\nHost: hello\r\n\r\n")
        up, upTransport = h.upstream()
        up.dataReceived(b"HTTP/1.1 200 OK\r\nX: " + b"v" * 5000)
        before = transport.value()
        up.connectionLost(Failure(ConnectionLost()))
        self.assertEqual(transport.value(), before)
