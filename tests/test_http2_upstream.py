"""
HTTP/2 to upstreams (L{meshproxy.http2.client}), end to end through the same
wiring as a running proxy, on a memory network and a fake clock
(L{tests.memory_support}), with the h2 library as the upstream server
(L{tests.h2_support.H2Backend}): translation both ways, multiplexing,
stream limits, flow control as back-pressure, GOAWAY and REFUSED_STREAM
retries, resets, malformed answers, trailers.
"""

from h2.errors import ErrorCodes
from h2.settings import SettingCodes
from hpack import NeverIndexedHeaderTuple
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from meshproxy.config import ConfigError, parseConfig
from meshproxy.http.interfaces import IRequestWriter, IUpstreamConnection
from meshproxy.http2.client import H2Pool, H2UpstreamStream
from tests.h2_support import H2BackendFactory, H2ClientProtocol, okH2
from tests.memory_support import MemoryNetwork, MemoryProxy

CONFIG = """\
admin: {listen: "tcp:port=0:interface=127.0.0.1"}
namers:
  - {kind: static, prefix: /#/static, services: {hello: [%(ports)s]}}
routers:
  - name: web
    listen: "tcp:0:interface=127.0.0.1"
    identifier: {kind: host}
    rules: "/svc => /#/static;"
    timeouts: {total: %(total)s}
    boundNames: {/#/static/hello: {upstreamProtocol: h2}}
    %(extra)s
"""


def held(request):
    """
    Answer nothing (the test answers).
    """


class UpstreamTestCase(SynchronousTestCase):
    def setUp(self):
        self.network = MemoryNetwork()

    def proxy(self, handler=okH2, settings=None, backends=1, total="5s", extra=""):
        """
        Start C{backends} h2 upstreams as the instances of C{hello}, and a
        proxy that speaks h2 to them.
        """
        self.backends = []
        ports = []
        for _ in range(backends):
            factory = H2BackendFactory(handler, settings)
            port = self.network.listenTCP(0, factory).getHost().port
            self.backends.append(factory)
            ports.append('"127.0.0.1:%d"' % (port,))
        self.backend = self.backends[0]
        text = CONFIG % {"ports": ", ".join(ports), "total": total, "extra": extra}
        self.mesh = MemoryProxy(self, text, network=self.network)
        return self.mesh

    def h2client(self):
        client = H2ClientProtocol()
        self.network.connectClient(self.mesh.proxyPort, client)
        return client

    def errors(self, reason):
        return self.mesh.router().metrics._errors.get(("web", reason), 0)


class SeamTests(SynchronousTestCase):
    def test_interfaces(self):
        """
        A stream is the exchange's upstream connection and request writer.
        """
        stream = H2UpstreamStream.__new__(H2UpstreamStream)
        self.assertTrue(IUpstreamConnection.implementedBy(H2UpstreamStream))
        self.assertTrue(IRequestWriter.implementedBy(H2UpstreamStream))
        self.assertTrue(stream is not None)

    def test_configUpstreamProtocol(self):
        """
        C{upstreamProtocol} is C{http/1.1} or C{h2}, per bound name or for
        the router (C{client}); a TCP router refuses it.
        """
        base = CONFIG % {"ports": '"127.0.0.1:1"', "total": "5s", "extra": ""}
        config = parseConfig(base)
        names = dict(config.routers[0].boundNames)
        self.assertEqual(names["/#/static/hello"].upstreamProtocol, "h2")
        self.assertEqual(config.routers[0].client.upstreamProtocol, "http/1.1")
        with self.assertRaises(ConfigError) as e:
            parseConfig(base.replace("upstreamProtocol: h2", "upstreamProtocol: h3"))
        self.assertIn(
            'upstreamProtocol: expected one of "http/1.1", "h2", "auto"', str(e.exception)
        )
        routerWide = base.replace(
            "boundNames: {/#/static/hello: {upstreamProtocol: h2}}",
            "client: {upstreamProtocol: h2}",
        )
        self.assertEqual(parseConfig(routerWide).routers[0].client.upstreamProtocol, "h2")
        tcp = """\
routers:
  - name: db
    protocol: tcp
    listen: "tcp:0"
    destination: /$/inet/127.0.0.1/5432
    boundNames: {/$/inet/127.0.0.1/5432: {upstreamProtocol: h2}}
"""
        with self.assertRaises(ConfigError) as e:
            parseConfig(tcp)
        self.assertIn('upstreamProtocol: only for protocol "http"', str(e.exception))


class TranslationTests(UpstreamTestCase):
    def test_http1ClientToH2Upstream(self):
        """
        An HTTP/1.1 request goes upstream as an HTTP/2 stream: its pseudo-
        header fields from the request line and Host, the forwarding, via
        and mesh fields added, hop-by-hop fields dropped; the answer comes
        back as HTTP/1.1 with its length.
        """
        proxy = self.proxy()
        client = proxy.exchange(
            b"GET /a?b=1 HTTP/1.1\r\nHost: hello\r\nConnection: keep-alive, X-Secret\r\n"
            b"Keep-Alive: timeout=5\r\nX-Secret: 1\r\nProxy-Connection: x\r\n"
            b"TE: trailers, deflate\r\nUpgrade-Insecure-Requests: 1\r\nX-Kept: 2\r\n\r\n"
        )
        [response] = client.responses
        self.assertEqual(response.status, 200)
        self.assertEqual(response.body, b"ok /a?b=1")
        self.assertIn((b"content-length", b"9"), [(n.lower(), v) for n, v in response.headers])
        [seen] = self.backend.requests
        self.assertEqual(
            seen.headers[:4],
            [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"hello"),
             (b":path", b"/a?b=1")],
        )
        names = [n for n, _ in seen.headers]
        for name in (b"connection", b"keep-alive", b"x-secret", b"proxy-connection", b"host"):
            self.assertNotIn(name, names)
        self.assertEqual(seen.header(b"te"), b"trailers")
        self.assertEqual(seen.header(b"x-kept"), b"2")
        self.assertEqual(seen.header(b"upgrade-insecure-requests"), b"1")
        self.assertEqual(seen.header(b"via"), b"1.1 meshproxy")
        self.assertEqual(seen.header(b"x-forwarded-for"), b"127.0.0.1")
        self.assertIsNotNone(seen.header(b"mesh-ctx-deadline"))
        self.assertIsNotNone(seen.header(b"traceparent"))
        self.assertIsNotNone(seen.header(b"mesh-reqid"))
        self.assertEqual([n for n in names if n != n.lower()], [])
        # Literals are not Huffman-coded (CPU over bytes, between proxies).
        self.assertIn(b"mesh-ctx-deadline", self.backend.connections[0].raw)
        # Values new on every request stay out of the HPACK table.
        unique = [h for h in seen.headers if isinstance(h, NeverIndexedHeaderTuple)]
        self.assertEqual(
            sorted(n for n, _ in unique),
            [b"b3", b"mesh-ctx-deadline", b"mesh-reqid", b"traceparent"],
        )

    def test_responseWithoutLengthIsChunkedWithTrailers(self):
        """
        A response without C{content-length} goes to an HTTP/1.1 client
        chunked, its trailers as chunked trailers (those that may not be
        trailers dropped).
        """

        def handler(request):
            if request.ended:
                request.respond(
                    200,
                    [(b"content-type", b"application/grpc")],
                    b"abc",
                    trailers=[(b"grpc-status", b"0"), (b"set-cookie", b"no")],
                )

        proxy = self.proxy(handler)
        client = proxy.exchange(b"POST /x HTTP/1.1\r\nHost: hello\r\nContent-Length: 2\r\n\r\nhi")
        [response] = client.responses
        self.assertEqual(response.body, b"abc")
        self.assertIn(b"Transfer-Encoding: chunked", client.raw)
        self.assertEqual(response.trailers, [(b"grpc-status", b"0")])
        self.assertEqual(self.errors("trailer-dropped"), 1)
        [seen] = self.backend.requests
        self.assertEqual(seen.body, b"hi")
        self.assertEqual(seen.header(b"content-length"), b"2")

    def test_chunkedRequestTrailersBecomeH2Trailers(self):
        """
        A chunked HTTP/1.1 request body goes upstream as DATA (no length),
        its trailers as a trailers HEADERS frame.
        """
        proxy = self.proxy()
        client = proxy.exchange(
            b"POST /t HTTP/1.1\r\nHost: hello\r\nTransfer-Encoding: chunked\r\nTE: trailers\r\n\r\n"
            b"3\r\nabc\r\n2\r\nde\r\n0\r\nx-checksum: 42\r\n\r\n"
        )
        [response] = client.responses
        self.assertEqual(response.status, 200)
        [seen] = self.backend.requests
        self.assertEqual(seen.body, b"abcde")
        self.assertIsNone(seen.header(b"content-length"))
        self.assertIsNone(seen.header(b"transfer-encoding"))
        self.assertEqual(seen.trailers, [(b"x-checksum", b"42")])

    def test_h2ClientToH2UpstreamTrailersBothWays(self):
        """
        An HTTP/2 client's request reaches an HTTP/2 upstream with its
        trailers, and the upstream's trailers reach the client.
        """

        def handler(request):
            if request.ended:
                request.respond(200, [], b"pong", trailers=[(b"grpc-status", b"0")])

        proxy = self.proxy(handler)
        client = self.h2client()
        sid = client.request(
            [(b":method", b"POST"), (b":scheme", b"http"), (b":authority", b"hello"),
             (b":path", b"/svc/M"), (b"te", b"trailers")],
            body=b"ping",
            trailers=[(b"x-req-trailer", b"1")],
        )
        self.network.flush()
        headers, body, trailers, ended = client.response(sid)
        self.assertEqual(headers[b":status"], b"200")
        self.assertEqual(body, b"pong")
        self.assertEqual(trailers, [(b"grpc-status", b"0")])
        self.assertTrue(ended)
        [seen] = self.backend.requests
        self.assertEqual(seen.body, b"ping")
        self.assertEqual(seen.trailers, [(b"x-req-trailer", b"1")])
        self.assertEqual(seen.header(b"te"), b"trailers")
        self.assertTrue(proxy)

    def test_upgradeRefused(self):
        """
        An upgrade cannot go to an HTTP/2 upstream: 501, said so.
        """
        proxy = self.proxy()
        client = proxy.exchange(
            b"GET /ws HTTP/1.1\r\nHost: hello\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
        )
        [response] = client.responses
        self.assertEqual(response.status, 501)
        self.assertEqual(response.header(b"mesh-err"), b"upstream-h2-upgrade")
        self.assertEqual(self.backend.requests, [])

    def test_headRequest(self):
        """
        A HEAD's answer ends with its head, its length kept.
        """

        def handler(request):
            request.respond(200, [(b"content-length", b"10")])

        proxy = self.proxy(handler)
        client = proxy.exchange(b"HEAD / HTTP/1.1\r\nHost: hello\r\n\r\n", heads=[b"HEAD"])
        [response] = client.responses
        self.assertEqual(response.status, 200)
        self.assertEqual(response.header(b"content-length"), b"10")


class MultiplexingTests(UpstreamTestCase):
    def test_concurrentRequestsShareOneConnection(self):
        """
        Requests in flight together go as streams of one connection, each
        counted pending on the endpoint.
        """
        proxy = self.proxy(held)
        clients = [proxy.connect() for _ in range(3)]
        for i, client in enumerate(clients):
            client.transport.write(b"GET /%d HTTP/1.1\r\nHost: hello\r\n\r\n" % (i,))
        self.network.flush()
        self.assertEqual(len(self.backend.connections), 1)
        self.assertEqual([r.streamId for r in self.backend.requests], [1, 3, 5])
        [node] = proxy.router().clients.find("/#/static/hello").balancer.nodes()
        self.assertEqual(node.pending, 3)
        self.assertIsInstance(node.payload, H2Pool)
        for request in reversed(self.backend.requests):
            request.respond(200, [], b"r" + request.path)
        self.network.flush()
        self.assertEqual([c.responses[0].body for c in clients], [b"r/0", b"r/1", b"r/2"])
        self.assertEqual(node.pending, 0)

    def test_maxConcurrentStreamsRespected(self):
        """
        The upstream's SETTINGS_MAX_CONCURRENT_STREAMS is never exceeded: a
        request over it goes on another connection (a few at most), then
        waits for a stream to end.
        """
        proxy = self.proxy(held, settings={SettingCodes.MAX_CONCURRENT_STREAMS: 1})
        warm = proxy.exchange(b"GET /warm HTTP/1.1\r\nHost: hello\r\n\r\n")
        self.backend.requests[0].respond(200, [], b"w")
        self.network.flush()
        self.assertEqual(len(warm.responses), 1)
        clients = [proxy.connect() for _ in range(6)]
        for i, client in enumerate(clients):
            client.transport.write(b"GET /%d HTTP/1.1\r\nHost: hello\r\n\r\n" % (i,))
        self.network.flush()
        self.assertEqual(len(self.backend.connections), 4)
        active = [r for r in self.backend.requests[1:]]
        self.assertEqual(len(active), 4)
        for conn in self.backend.connections:
            self.assertLessEqual(conn.conn.open_inbound_streams, 1)
        answered = set()
        for _ in range(6):
            for request in list(self.backend.requests[1:]):
                if request not in answered:
                    answered.add(request)
                    request.respond(200, [], b"x")
                    self.network.flush()
                    for conn in self.backend.connections:
                        self.assertLessEqual(conn.conn.open_inbound_streams, 1)
        self.assertEqual([len(c.responses) for c in clients], [1] * 6)
        self.assertEqual(len(self.backend.connections), 4)


class BackPressureTests(UpstreamTestCase):
    def test_slowClientClosesTheStreamWindow(self):
        """
        A response body the client does not read is not acknowledged to the
        upstream: the stream's window closes, meshproxy holds at most about
        one window, and the rest comes once the client reads.
        """
        size = 1024 * 1024

        def handler(request):
            if request.ended:
                request.respond(200, [(b"content-length", b"%d" % (size,))], b"x" * size)

        proxy = self.proxy(handler)
        client = proxy.connect()
        client.transport.pauseProducing()
        client.transport.write(b"GET /big HTTP/1.1\r\nHost: hello\r\n\r\n")
        self.network.flush()
        [backend] = self.backend.connections
        [sid] = list(backend.pending)
        waiting = len(backend.pending[sid][0])
        self.assertGreater(waiting, size - 300 * 1024)
        client.transport.resumeProducing()
        self.network.flush()
        [response] = client.responses
        self.assertEqual(len(response.body), size)
        self.assertEqual(backend.pending, {})

    def test_closedUpstreamWindowPausesTheClient(self):
        """
        A request body the upstream's window does not let out pauses the
        client's reading; it goes on once the window opens.
        """
        proxy = self.proxy()
        size = 1024 * 1024
        client = proxy.connect()
        client.transport.write(
            b"POST /up HTTP/1.1\r\nHost: hello\r\nContent-Length: %d\r\n\r\n" % (size,)
        )
        self.network.flush()
        [conn] = self.backend.connections
        conn.holdWindow = True
        client.transport.write(b"y" * size)
        self.network.flush()
        [request] = self.backend.requests
        self.assertLess(len(request.body), 200 * 1024)
        self.assertGreater(len(client.transport.unread()), size - 400 * 1024)
        conn.holdWindow = False
        conn.conn.acknowledge_received_data(len(request.body), request.streamId)
        conn.flush()
        self.network.flush()
        self.assertEqual(len(request.body), size)
        [response] = client.responses
        self.assertEqual(response.status, 200)


class FailureTests(UpstreamTestCase):
    def test_goAwayRetriesWhatWasNotProcessed(self):
        """
        Streams above a GOAWAY's last stream id were not processed: retried
        (a POST too) on a new connection.
        """
        first = []

        def handler(request):
            if not request.ended:
                return
            if not first:
                first.append(request)
                request.proto.goAway(0)
                return
            okH2(request)

        proxy = self.proxy(handler)
        client = proxy.exchange(b"POST /once HTTP/1.1\r\nHost: hello\r\nContent-Length: 1\r\n\r\nz")
        [response] = client.responses
        self.assertEqual(response.status, 200)
        self.assertEqual(response.body, b"ok /once")
        self.assertEqual(len(self.backend.connections), 2)
        self.assertEqual(self.backend.requests[-1].body, b"z")
        # Not a failure of the endpoint.
        [node] = proxy.router().clients.find("/#/static/hello").balancer.nodes()
        self.assertEqual(node.consecutiveFailures, 0)

    def test_goAwayUnderManyStreamsRetriesThemAll(self):
        """
        Every stream above the GOAWAY's last stream id goes again, on one new
        connection, and the endpoint is not charged for them.
        """
        first = []

        def handler(request):
            if request.proto is self.backend.connections[0]:
                first.append(request)
                if len(first) == 5:
                    request.proto.goAway(first[0].streamId)
                    first[0].respond(200, [], b"first")
                return
            okH2(request)

        proxy = self.proxy(handler)
        clients = [proxy.connect() for _ in range(5)]
        for i, client in enumerate(clients):
            client.transport.write(
                b"POST /%d HTTP/1.1\r\nHost: hello\r\nContent-Length: 0\r\n\r\n" % (i,)
            )
            self.network.flush()
        self.assertEqual([c.responses[0].status for c in clients], [200] * 5)
        self.assertEqual(clients[0].responses[0].body, b"first")
        self.assertEqual(len(self.backend.connections), 2)
        [node] = proxy.router().clients.find("/#/static/hello").balancer.nodes()
        self.assertEqual(node.consecutiveFailures, 0)
        self.assertEqual(node.pending, 0)

    def test_gracefulGoAwayLetsStreamsBelowFinish(self):
        """
        A graceful GOAWAY lets the streams it names finish; new requests go
        to a new connection.
        """
        proxy = self.proxy(held)
        client = proxy.connect()
        client.transport.write(b"GET /a HTTP/1.1\r\nHost: hello\r\n\r\n")
        self.network.flush()
        [request] = self.backend.requests
        request.proto.goAway(request.streamId)
        self.network.flush()
        other = proxy.connect()
        other.transport.write(b"GET /b HTTP/1.1\r\nHost: hello\r\n\r\n")
        self.network.flush()
        self.assertEqual(len(self.backend.connections), 2)
        request.respond(200, [], b"first")
        self.backend.requests[1].respond(200, [], b"second")
        self.network.flush()
        self.assertEqual(client.responses[0].body, b"first")
        self.assertEqual(other.responses[0].body, b"second")

    def test_refusedStreamRetried(self):
        """
        REFUSED_STREAM: not processed, retried whatever the method.
        """
        seen = []

        def handler(request):
            seen.append(request)
            if len(seen) == 1:
                request.proto.conn.reset_stream(request.streamId, ErrorCodes.REFUSED_STREAM)
                request.proto.flush()
                return
            okH2(request)

        proxy = self.proxy(handler)
        client = proxy.exchange(b"POST /r HTTP/1.1\r\nHost: hello\r\nContent-Length: 0\r\n\r\n")
        [response] = client.responses
        self.assertEqual(response.status, 200)
        self.assertEqual(len(seen), 2)
        [node] = proxy.router().clients.find("/#/static/hello").balancer.nodes()
        self.assertEqual(node.consecutiveFailures, 0)

    def test_refusedEveryTimeGivesUp(self):
        """
        A request refused again and again is answered 502 after a few
        tries (not a loop).
        """

        def handler(request):
            request.proto.conn.reset_stream(request.streamId, ErrorCodes.REFUSED_STREAM)
            request.proto.flush()

        proxy = self.proxy(handler)
        client = proxy.exchange(b"POST /r HTTP/1.1\r\nHost: hello\r\nContent-Length: 0\r\n\r\n")
        [response] = client.responses
        self.assertEqual(response.status, 502)
        self.assertEqual(response.header(b"mesh-err"), b"upstream-reset")
        self.assertEqual(len(self.backend.requests), 4)

    def test_otherResetIsUpstreamReset(self):
        """
        Another reset of a POST's stream before its answer: 502
        C{upstream-reset}, not retried.
        """

        def handler(request):
            request.proto.conn.reset_stream(request.streamId, ErrorCodes.INTERNAL_ERROR)
            request.proto.flush()

        proxy = self.proxy(handler)
        client = proxy.exchange(b"POST /r HTTP/1.1\r\nHost: hello\r\nContent-Length: 0\r\n\r\n")
        [response] = client.responses
        self.assertEqual(response.status, 502)
        self.assertEqual(response.header(b"mesh-err"), b"upstream-reset")
        self.assertEqual(len(self.backend.requests), 1)

    def test_resetOfAGetIsRetried(self):
        """
        A GET whose stream is reset is retried (idempotent), here on the
        other endpoint.
        """
        calls = []

        def handler(request):
            calls.append(request)
            if len(calls) == 1:
                request.proto.conn.reset_stream(request.streamId, ErrorCodes.INTERNAL_ERROR)
                request.proto.flush()
                return
            okH2(request)

        proxy = self.proxy(handler, backends=2)
        client = proxy.exchange(b"GET /g HTTP/1.1\r\nHost: hello\r\n\r\n")
        [response] = client.responses
        self.assertEqual(response.status, 200)
        self.assertEqual(len(calls), 2)

    def malformed(self, headers):
        def handler(request):
            if request.ended:
                request.proto.conn.send_headers(request.streamId, headers, end_stream=True)
                request.proto.flush()

        proxy = self.proxy(handler)
        client = proxy.exchange(b"GET /m HTTP/1.1\r\nHost: hello\r\n\r\n")
        [response] = client.responses
        self.assertEqual(response.status, 502)
        self.assertEqual(response.header(b"mesh-err"), b"upstream-protocol")
        return client

    def test_connectionSpecificFieldRefused(self):
        self.malformed([(b":status", b"200"), (b"connection", b"close")])

    def test_uppercaseNameRefused(self):
        self.malformed([(b":status", b"200"), (b"X-Upper", b"1")])

    def test_unknownPseudoHeaderRefused(self):
        self.malformed([(b":status", b"200"), (b":path", b"/")])

    def test_badStatusRefused(self):
        self.malformed([(b":status", b"2000")])

    def test_pseudoHeaderAfterRegularRefused(self):
        self.malformed([(b"x-a", b"1"), (b":status", b"200")])

    def test_valueWithNewlineRefused(self):
        self.malformed([(b":status", b"200"), (b"x-a", b"1\r\nx-b: 2")])

    def test_tooManyFieldsRefused(self):
        self.malformed([(b":status", b"200")] + [(b"x-%d" % i, b"v") for i in range(101)])

    def test_badStreamDoesNotHurtOthers(self):
        """
        A malformed answer resets its own stream only; the connection goes
        on carrying others.
        """
        client = self.malformed([(b":status", b"200"), (b"connection", b"close")])
        self.assertTrue(client)
        again = self.mesh.exchange(b"GET /m HTTP/1.1\r\nHost: hello\r\n\r\n")
        self.assertEqual(again.responses[0].status, 502)
        self.assertEqual(len(self.backend.connections), 1)

    def test_oversizedHeaderListFailsTheConnection(self):
        """
        A header list past C{client.maxHeaderBytes} fails the connection
        (the h2 library's bound): 502 C{upstream-protocol}, no traceback.
        """
        self.malformed([(b":status", b"200"), (b"x-big", b"v" * 70000)])
        self.assertEqual(self.backend.lost, 1)

    def test_upstreamGoneIsUpstreamReset(self):
        """
        The connection closing under a POST: 502 C{upstream-reset}.
        """

        def handler(request):
            request.proto.transport.loseConnection()

        proxy = self.proxy(handler)
        client = proxy.exchange(b"POST /x HTTP/1.1\r\nHost: hello\r\nContent-Length: 0\r\n\r\n")
        [response] = client.responses
        self.assertEqual(response.status, 502)
        self.assertEqual(response.header(b"mesh-err"), b"upstream-reset")


class LifecycleTests(UpstreamTestCase):
    def test_idleConnectionExpires(self):
        """
        A connection without a stream for C{client.idleTimeout} is closed.
        """
        proxy = self.proxy(extra="client: {idleTimeout: 10s}")
        proxy.exchange(b"GET / HTTP/1.1\r\nHost: hello\r\n\r\n")
        self.assertEqual(self.backend.lost, 0)
        self.network.advance(16)
        self.assertEqual(self.backend.lost, 1)

    def test_routerWideUpstreamProtocol(self):
        """
        C{client.upstreamProtocol: h2} makes every bound name's upstreams
        HTTP/2.
        """
        factory = H2BackendFactory()
        port = self.network.listenTCP(0, factory).getHost().port
        text = CONFIG % {"ports": '"127.0.0.1:%d"' % (port,), "total": "5s",
                         "extra": "client: {upstreamProtocol: h2}"}
        text = text.replace("    boundNames: {/#/static/hello: {upstreamProtocol: h2}}\n", "")
        mesh = MemoryProxy(self, text, network=self.network)
        client = mesh.exchange(b"GET /w HTTP/1.1\r\nHost: hello\r\n\r\n")
        self.assertEqual(client.responses[0].body, b"ok /w")
        self.assertEqual(len(factory.requests), 1)

    def test_endpointStreamsVerified(self):
        proxy = self.proxy(held)
        client = proxy.connect()
        client.transport.write(b"GET / HTTP/1.1\r\nHost: hello\r\n\r\n")
        self.network.flush()
        [node] = proxy.router().clients.find("/#/static/hello").balancer.nodes()
        [conn] = node.payload.all
        [stream] = conn.streams.values()
        verifyObject(IUpstreamConnection, stream)
        self.backend.requests[0].respond(200, [], b"")
        self.network.flush()


class ALPNTests(SynchronousTestCase):
    def test_h2UpstreamMustChooseH2(self):
        """
        Over TLS, an HTTP/2 upstream that did not choose C{h2} by ALPN
        fails the handshake (before any certificate check).
        """
        import ssl

        from meshproxy.tls import ClientTLS

        class FakeTLS:
            def __init__(self, chosen):
                self.chosen = chosen

            def selected_alpn_protocol(self):
                return self.chosen

            def getpeercert(self, binary_form=False):
                raise AssertionError("not reached")

        creator = ClientTLS.__new__(ClientTLS)
        creator.h2 = True
        with self.assertRaises(ssl.SSLError):
            creator.verify(FakeTLS("http/1.1"))
        with self.assertRaises(ssl.SSLError):
            creator.verify(FakeTLS(None))
        with self.assertRaises(AssertionError):
            creator.verify(FakeTLS("h2"))


class TryTests(UpstreamTestCase):
    def test_perTryTimeoutResetsTheStreamAndRetries(self):
        """
        A try that times out resets its stream (CANCEL), not the
        connection; the retry goes on another stream.
        """
        calls = []

        def handler(request):
            calls.append(request)
            if len(calls) > 1:
                okH2(request)

        proxy = self.proxy(handler, total="5s, perTry: 1s")
        client = proxy.connect()
        client.transport.write(b"GET /slow HTTP/1.1\r\nHost: hello\r\n\r\n")
        self.network.flush()
        self.network.advance(1.5)
        [response] = client.responses
        self.assertEqual(response.status, 200)
        self.assertEqual(calls[0].reset, ErrorCodes.CANCEL)
        self.assertEqual(len(self.backend.connections), 1)
        self.assertEqual(self.errors("try-timeout"), 1)

    def test_clientGoneResetsTheStream(self):
        """
        A client that goes away resets its stream upstream.
        """
        proxy = self.proxy(held)
        client = proxy.connect()
        client.transport.write(b"GET /bye HTTP/1.1\r\nHost: hello\r\n\r\n")
        self.network.flush()
        client.transport.loseConnection()
        self.network.flush()
        [request] = self.backend.requests
        self.assertEqual(request.reset, ErrorCodes.CANCEL)
        [node] = proxy.router().clients.find("/#/static/hello").balancer.nodes()
        self.assertEqual(node.pending, 0)
        [conn] = node.payload.all
        self.assertEqual(conn.streams, {})

    def test_earlyHintsPassedOn(self):
        """
        An interim 103 goes on to the HTTP/1.1 client before the answer.
        """

        def handler(request):
            if request.ended:
                request.proto.conn.send_headers(
                    request.streamId, [(b":status", b"103"), (b"link", b"</a.css>")]
                )
                okH2(request)

        proxy = self.proxy(handler)
        client = proxy.exchange(b"GET /hint HTTP/1.1\r\nHost: hello\r\n\r\n")
        self.assertTrue(client.raw.startswith(b"HTTP/1.1 103 Early Hints\r\n"), client.raw)
        self.assertEqual(client.responses[-1].status, 200)

    def test_drainedEndpointClosesAfterItsStreams(self):
        """
        An endpoint leaving the set (the router stops) closes its idle
        connections at once and a busy one after its last stream.
        """
        proxy = self.proxy(held)
        client = proxy.connect()
        client.transport.write(b"GET /last HTTP/1.1\r\nHost: hello\r\n\r\n")
        self.network.flush()
        [node] = proxy.router().clients.find("/#/static/hello").balancer.nodes()
        pool = node.payload
        pool.close()
        self.network.flush()
        self.assertEqual(self.backend.lost, 0)
        self.backend.requests[0].respond(200, [], b"done")
        self.network.flush()
        self.assertEqual(client.responses[0].body, b"done")
        self.assertEqual(self.backend.lost, 1)
        self.assertEqual(pool.all, [])

    def test_staleConnectionRetriedOnAFreshOne(self):
        """
        A used connection lost before a GET's answer: a keep-alive race,
        retried on a fresh connection.
        """
        calls = []

        def handler(request):
            if not request.ended:
                return
            calls.append(request)
            if len(calls) == 2:
                request.proto.transport.loseConnection()
                return
            okH2(request)

        proxy = self.proxy(handler)
        proxy.exchange(b"GET /1 HTTP/1.1\r\nHost: hello\r\n\r\n")
        client = proxy.exchange(b"GET /2 HTTP/1.1\r\nHost: hello\r\n\r\n")
        [response] = client.responses
        self.assertEqual(response.status, 200)
        self.assertEqual(len(calls), 3)
        self.assertEqual(len(self.backend.connections), 2)


class AutoTests(UpstreamTestCase):
    def test_autoOnAPlainUpstreamIsHTTP1(self):
        """
        C{auto} learns by ALPN, so only over TLS: a plain upstream is never
        guessed at, and gets HTTP/1.1.
        """
        from meshproxy.http.client import Pool
        from tests.memory_support import Instance

        backend = Instance(self.network)
        port = backend.start()
        text = CONFIG % {"ports": '"127.0.0.1:%d"' % (port,), "total": "5s", "extra": ""}
        text = text.replace("upstreamProtocol: h2", "upstreamProtocol: auto")
        mesh = MemoryProxy(self, text, network=self.network)
        client = mesh.exchange(b"GET /p HTTP/1.1\r\nHost: hello\r\n\r\n")
        self.assertEqual(client.responses[0].status, 200)
        [node] = mesh.router().clients.find("/#/static/hello").balancer.nodes()
        self.assertIs(type(node.payload), Pool)


class PoolTests(SynchronousTestCase):
    def test_connectFailureFailsOnlyWhatNoConnectionCarries(self):
        """
        A connection attempt failing fails the requests waiting for it,
        retryably, unless an open connection will carry them.
        """
        from twisted.internet.defer import fail
        from twisted.internet.error import ConnectionRefusedError
        from twisted.internet.task import Clock

        from meshproxy.config import ClientConfig
        from meshproxy.discovery.endpoints import Endpoint

        class Connector:
            timeout = 1.0

            def connect(self, endpoint, factory):
                return fail(ConnectionRefusedError())

        class Exchange:
            def __init__(self):
                self.request = type("R", (), {"upgrade": False, "method": b"GET"})()
                self.failed = []
                self.connecting = None

            def connectFailed(self, why, retryable, tls=False):
                self.failed.append((why, retryable, tls))

            def flush(self):
                pass

        pool = H2Pool(
            Endpoint("127.0.0.1", 1), clock=Clock(), connector=Connector(), limits=ClientConfig()
        )
        exchange = Exchange()
        pool.acquire(exchange)
        self.assertEqual(exchange.failed, [("refused the connection", True, False)])
        self.assertEqual(list(pool.waiting), [])
        self.assertEqual(pool.connecting, 0)

        class Open:
            goingAway = False
            closed = False
            settled = True

            def available(self):
                return False

        pool.all.append(Open())
        waiting = Exchange()
        pool.acquire(waiting)
        self.assertEqual(waiting.failed, [])
        self.assertEqual(len(pool.waiting), 1)
        pool.waiting[0].abandon()
        self.assertEqual(list(pool.waiting), [])


class SendFailureTests(UpstreamTestCase):
    def test_headersTheLibraryRefusesAreSentAgain(self):
        """
        A request the h2 library refuses to send (its connection closing)
        was not processed: it goes again (from a call later: never inside
        the exchange's own write).
        """
        from h2.exceptions import ProtocolError

        proxy = self.proxy()
        proxy.exchange(b"GET /warm HTTP/1.1\r\nHost: hello\r\n\r\n")
        [node] = proxy.router().clients.find("/#/static/hello").balancer.nodes()
        [conn] = node.payload.all
        from meshproxy.http2 import client as clientModule

        real = clientModule.sendHeaders
        calls = []

        def refuseOnce(h2, *args, **kwargs):
            self.assertIs(h2, conn.h2)
            calls.append(args[0])
            if len(calls) == 1:
                raise ProtocolError("closing")
            return real(h2, *args, **kwargs)

        # (what sends a request's head: the fast path, or the library)
        self.patch(clientModule, "sendHeaders", refuseOnce)
        client = proxy.connect()
        client.transport.write(b"POST /p HTTP/1.1\r\nHost: hello\r\nContent-Length: 1\r\n\r\nx")
        self.network.flush()
        [response] = client.responses
        self.assertEqual(response.status, 200)
        self.assertEqual(response.body, b"ok /p")
        self.assertEqual(len(calls), 2)
        self.assertEqual(self.backend.requests[-1].body, b"x")

    def test_streamIdsExhaustedMeansANewConnection(self):
        """
        A connection whose stream ids are all used takes no more requests:
        the next goes on a new connection, and the old one closes.
        """
        proxy = self.proxy()
        proxy.exchange(b"GET /a HTTP/1.1\r\nHost: hello\r\n\r\n")
        [node] = proxy.router().clients.find("/#/static/hello").balancer.nodes()
        [conn] = node.payload.all
        conn.h2.highest_outbound_stream_id = 2**31 - 1
        client = proxy.exchange(b"GET /b HTTP/1.1\r\nHost: hello\r\n\r\n")
        self.assertEqual(client.responses[0].body, b"ok /b")
        self.assertEqual(len(self.backend.connections), 2)
        self.assertEqual(self.backend.lost, 1)
        self.assertNotIn(conn, node.payload.all)


class DeclaredLengthTrailerTests(UpstreamTestCase):
    def request(self, client, sid=None):
        return client.request(
            [(b":method", b"PUT"), (b":scheme", b"http"), (b":authority", b"hello"),
             (b":path", b"/len"), (b"content-length", b"4")],
            body=b"data",
            trailers=[(b"x-sum", b"9")],
        )

    def test_h2UpstreamGetsTrailersOfADeclaredLength(self):
        """
        An HTTP/2 client's body with a declared length and trailers reaches
        an HTTP/2 upstream with both.
        """
        self.proxy()
        client = self.h2client()
        sid = self.request(client)
        self.network.flush()
        self.assertEqual(client.response(sid)[0][b":status"], b"200")
        [seen] = self.backend.requests
        self.assertEqual(seen.header(b"content-length"), b"4")
        self.assertEqual(seen.body, b"data")
        self.assertEqual(seen.trailers, [(b"x-sum", b"9")])
        self.assertEqual(self.errors("trailer-dropped"), 0)

    def test_http1UpstreamDropsThemCounted(self):
        """
        Over HTTP/1.1 such a body has no way to carry trailers: they are
        dropped, and counted.
        """
        from tests.memory_support import Instance

        backend = Instance(self.network)
        port = backend.start()
        text = CONFIG % {"ports": '"127.0.0.1:%d"' % (port,), "total": "5s", "extra": ""}
        text = text.replace("upstreamProtocol: h2", "upstreamProtocol: http/1.1")
        self.mesh = MemoryProxy(self, text, network=self.network)
        client = self.h2client()
        sid = self.request(client)
        self.network.flush()
        self.assertEqual(client.response(sid)[0][b":status"], b"200")
        [seen] = backend.factory.requests
        self.assertEqual(seen.body, b"data")
        self.assertEqual(self.errors("trailer-dropped"), 1)
