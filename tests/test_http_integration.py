"""
The HTTP router end to end on loopback: a real proxy, real upstream servers
and a raw client that sees every byte.
"""

from twisted.internet import defer
from twisted.trial.unittest import TestCase

from tests.support import (
    BackendFactory,
    connectClient,
    exchange,
    listenBackend,
    okHandler,
    startProxy,
)


class ProxyTestCase(TestCase):
    timeout = 20

    @defer.inlineCallbacks
    def proxy(self, handler=None, services=None, **kwargs):
        backend = BackendFactory(handler)
        port = yield listenBackend(self, backend)
        svc = {"hello": [port]} if services is None else services
        proxyPort, adminPort, runtime = yield startProxy(self, svc, **kwargs)
        self.backend = backend
        self.runtime = runtime
        return proxyPort


class ForwardingTests(ProxyTestCase):
    @defer.inlineCallbacks
    def test_forwardsGetAndAddsForwardingHeaders(self):
        """
        A GET reaches the upstream with X-Forwarded-For, X-Forwarded-Proto,
        Forwarded and Via, and its answer comes back byte-exact.
        """
        port = yield self.proxy()
        client = yield exchange(
            self, port, b"GET /a?b=1 HTTP/1.1\r\nHost: hello\r\nX-Custom-Case: VaLuE\r\n\r\n"
        )
        [response] = client.responses
        self.assertEqual(response.status, 200)
        self.assertEqual(response.body, b"ok /a?b=1")
        self.assertEqual(response.header(b"x-upstream"), b"ok")
        self.assertEqual(response.header(b"via"), b"1.1 meshproxy")
        [seen] = self.backend.requests
        self.assertEqual(seen.url, b"/a?b=1")
        self.assertEqual(seen.header(b"x-forwarded-for"), b"127.0.0.1")
        self.assertEqual(seen.header(b"x-forwarded-proto"), b"http")
        self.assertEqual(seen.header(b"forwarded"), b"for=127.0.0.1;proto=http")
        self.assertEqual(seen.header(b"via"), b"1.1 meshproxy")
        self.assertIn((b"X-Custom-Case", b"VaLuE"), seen.headers)

    @defer.inlineCallbacks
    def test_appendsToExistingForwardedFor(self):
        """
        An incoming X-Forwarded-For is appended to, not replaced.
        """
        port = yield self.proxy()
        yield exchange(
            self, port, b"GET / HTTP/1.1\r\nHost: hello\r\nX-Forwarded-For: 10.1.2.3\r\n\r\n"
        )
        [seen] = self.backend.requests
        self.assertEqual(seen.header(b"x-forwarded-for"), b"10.1.2.3, 127.0.0.1")

    @defer.inlineCallbacks
    def test_removesHopByHopHeaders(self):
        """
        Connection, Keep-Alive, TE, Proxy-* and headers named in Connection
        do not cross the proxy.
        """
        port = yield self.proxy()
        yield exchange(
            self,
            port,
            b"GET / HTTP/1.1\r\nHost: hello\r\nConnection: keep-alive, X-Secret\r\n"
            b"Keep-Alive: timeout=5\r\nTE: trailers\r\nX-Secret: 1\r\n"
            b"Proxy-Authorization: Basic Zm9vOmJhcg==\r\nX-Kept: 2\r\n\r\n",
        )
        [seen] = self.backend.requests
        names = seen.headerNames()
        for name in (b"connection", b"keep-alive", b"te", b"x-secret", b"proxy-authorization"):
            self.assertNotIn(name, names)
        self.assertEqual(seen.header(b"x-kept"), b"2")

    @defer.inlineCallbacks
    def test_keepAliveReusesOneUpstreamConnection(self):
        """
        Sequential requests on one client connection share one pooled
        upstream connection.
        """
        port = yield self.proxy()
        client = yield connectClient(self, port)
        for i in range(3):
            client.transport.write(b"GET /%d HTTP/1.1\r\nHost: hello\r\n\r\n" % (i,))
            yield client.waitFor(i + 1)
        self.assertEqual([r.body for r in client.responses], [b"ok /0", b"ok /1", b"ok /2"])
        self.assertEqual(len(self.backend.connections), 1)

    @defer.inlineCallbacks
    def test_pipelinedRequestsAnsweredInOrder(self):
        """
        Requests sent back to back in one write are answered in order.
        """
        port = yield self.proxy()
        data = b"".join(
            b"GET /%d HTTP/1.1\r\nHost: hello\r\n\r\n" % (i,) for i in range(5)
        )
        client = yield exchange(self, port, data, count=5)
        self.assertEqual([r.body for r in client.responses], [b"ok /%d" % i for i in range(5)])

    @defer.inlineCallbacks
    def test_headThenGetOnPooledConnection(self):
        """
        A HEAD response (with a Content-Length and no body) ends at its
        header block; the next response on the same pooled upstream
        connection is read whole.
        """
        port = yield self.proxy()
        client = yield connectClient(self, port, heads=[b"HEAD"])
        client.transport.write(b"HEAD /h HTTP/1.1\r\nHost: hello\r\n\r\n")
        yield client.waitFor(1)
        client.transport.write(b"GET /g HTTP/1.1\r\nHost: hello\r\n\r\n")
        yield client.waitFor(2)
        head, get = client.responses
        self.assertEqual(head.status, 200)
        self.assertEqual(head.header(b"content-length"), b"5")
        self.assertEqual(get.body, b"ok /g")
        self.assertEqual(len(self.backend.connections), 1)
        # Nothing but the two responses came back.
        self.assertEqual(client.raw.count(b"HTTP/1.1 200"), 2)

    @defer.inlineCallbacks
    def test_chunkedRequestBodyWithTrailers(self):
        """
        A chunked request body and its trailers reach the upstream.
        """
        port = yield self.proxy()
        yield exchange(
            self,
            port,
            b"POST /p HTTP/1.1\r\nHost: hello\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n6\r\n world\r\n0\r\nX-Checksum: 42\r\n\r\n",
        )
        [seen] = self.backend.requests
        self.assertEqual(seen.body, b"hello world")
        self.assertEqual(seen.trailers, [(b"X-Checksum", b"42")])

    @defer.inlineCallbacks
    def test_chunkedResponseWithTrailers(self):
        """
        A chunked response streams back to an HTTP/1.1 client with its
        trailers.
        """

        def handler(proto, request):
            proto.transport.write(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n"
                b"3\r\nabc\r\n2\r\nde\r\n0\r\nX-Sum: 9\r\n\r\n"
            )

        port = yield self.proxy(handler)
        client = yield exchange(self, port, b"GET / HTTP/1.1\r\nHost: hello\r\n\r\n")
        [response] = client.responses
        self.assertEqual(response.body, b"abcde")
        self.assertEqual(response.trailers, [(b"X-Sum", b"9")])

    @defer.inlineCallbacks
    def test_responseWithoutLengthToHttp10Client(self):
        """
        An HTTP/1.0 client gets a close-delimited body, never chunked.
        """

        def handler(proto, request):
            proto.transport.write(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
            )

        port = yield self.proxy(handler)
        client = yield exchange(self, port, b"GET / HTTP/1.0\r\nHost: hello\r\n\r\n")
        yield client.closed
        [response] = client.responses
        self.assertEqual(response.body, b"abc")
        self.assertNotIn(b"transfer-encoding", response.headerNames())

    @defer.inlineCallbacks
    def test_noBodyFor204And304(self):
        """
        204 and 304 answers carry no body even if the upstream announced a
        length.
        """

        def handler(proto, request):
            code = b"204 No Content" if request.url == b"/a" else b"304 Not Modified"
            proto.transport.write(b"HTTP/1.1 %s\r\nX-A: 1\r\n\r\n" % (code,))

        port = yield self.proxy(handler)
        client = yield exchange(
            self,
            port,
            b"GET /a HTTP/1.1\r\nHost: hello\r\n\r\nGET /b HTTP/1.1\r\nHost: hello\r\n\r\n",
            count=2,
        )
        self.assertEqual([r.status for r in client.responses], [204, 304])
        self.assertEqual([r.body for r in client.responses], [b"", b""])

    @defer.inlineCallbacks
    def test_expectContinue(self):
        """
        A client that sends Expect: 100-continue gets 100 Continue once the
        upstream connection is ready, then the final answer.
        """
        port = yield self.proxy()
        client = yield connectClient(self, port)
        client.transport.write(
            b"PUT /x HTTP/1.1\r\nHost: hello\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n"
        )
        # Wait for the interim response before sending the body.
        for _ in range(200):
            if b"100 Continue" in client.raw:
                break
            yield _tick()
        self.assertIn(b"HTTP/1.1 100 Continue\r\n\r\n", client.raw)
        client.transport.write(b"data")
        yield client.waitFor(1)
        self.assertEqual(client.responses[0].status, 200)
        [seen] = self.backend.requests
        self.assertEqual(seen.body, b"data")
        self.assertIsNone(seen.header(b"expect"))

    @defer.inlineCallbacks
    def test_upgradeBecomesTunnel(self):
        """
        A 101 answer to an Upgrade request turns the connection into a byte
        tunnel both ways.
        """

        def raw(proto, data):
            if not getattr(proto, "switched", False):
                proto.switched = True
                proto.transport.write(
                    b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n"
                )
                rest = data.split(b"\r\n\r\n", 1)[1]
                if rest:
                    proto.transport.write(b"echo:" + rest)
            else:
                proto.transport.write(b"echo:" + data)

        backend = BackendFactory(rawHandler=raw)
        bport = yield listenBackend(self, backend)
        port, _, _ = yield startProxy(self, {"hello": [bport]})
        client = yield connectClient(self, port)
        client.transport.write(
            b"GET /ws HTTP/1.1\r\nHost: hello\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n"
        )
        for _ in range(200):
            if b"\r\n\r\n" in client.raw:
                break
            yield _tick()
        self.assertTrue(client.raw.startswith(b"HTTP/1.1 101 "))
        client.transport.write(b"ping")
        for _ in range(200):
            if b"echo:ping" in client.raw:
                break
            yield _tick()
        self.assertIn(b"echo:ping", client.raw)


class ErrorTests(ProxyTestCase):
    @defer.inlineCallbacks
    def test_unknownServiceIs503(self):
        """
        A request for a service no namer knows gets 503 with mesh-err.
        """
        port = yield self.proxy()
        client = yield exchange(self, port, b"GET / HTTP/1.1\r\nHost: nosuch\r\n\r\n")
        [response] = client.responses
        self.assertEqual(response.status, 503)
        self.assertIsNotNone(response.header(b"mesh-err"))

    @defer.inlineCallbacks
    def test_refusedUpstreamIs502(self):
        """
        An endpoint that refuses connections gives 502 upstream-connect.
        """
        backend = BackendFactory()
        bport = yield listenBackend(self, backend)
        port, _, _ = yield startProxy(self, {"hello": [1]})
        client = yield exchange(self, port, b"GET / HTTP/1.1\r\nHost: hello\r\n\r\n")
        [response] = client.responses
        self.assertEqual(response.status, 502)
        self.assertEqual(response.header(b"mesh-err"), b"upstream-connect")
        del bport

    @defer.inlineCallbacks
    def test_garbageFromUpstreamIs502(self):
        """
        An upstream answering with something that is not HTTP gives 502.
        """

        def handler(proto, request):
            proto.transport.write(b"SSH-2.0-OpenSSH\r\n\r\n")

        port = yield self.proxy(handler)
        client = yield exchange(self, port, b"GET / HTTP/1.1\r\nHost: hello\r\n\r\n")
        [response] = client.responses
        self.assertEqual(response.status, 502)
        self.assertEqual(response.header(b"mesh-err"), b"upstream-protocol")

    @defer.inlineCallbacks
    def test_hungUpstreamIs504(self):
        """
        An upstream that never answers gives 504 after the total timeout.
        """
        port = yield self.proxy(lambda proto, request: None, total="300ms")
        client = yield exchange(self, port, b"GET / HTTP/1.1\r\nHost: hello\r\n\r\n")
        [response] = client.responses
        self.assertEqual(response.status, 504)
        self.assertEqual(response.header(b"mesh-err"), b"timeout")


def _tick():
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    return deferLater(reactor, 0.01, lambda: None)


# Requests that must be refused with the given status before anything
# reaches an upstream (and the connection closed).
SMUGGLING = {
    "bothLengths": (
        b"POST / HTTP/1.1\r\nHost: hello\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    "differingLengths": (
        b"POST / HTTP/1.1\r\nHost: hello\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde",
        400,
    ),
    "teNotFinalChunked": (
        b"POST / HTTP/1.1\r\nHost: hello\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n",
        400,
    ),
    "teGzipChunked": (
        b"POST / HTTP/1.1\r\nHost: hello\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        501,
    ),
    "teOnHttp10": (
        b"POST / HTTP/1.0\r\nHost: hello\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    "badChunkSize": (
        b"POST / HTTP/1.1\r\nHost: hello\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
        400,
    ),
    "obsFold": (b"GET / HTTP/1.1\r\nHost: hello\r\nX-A: a\r\n b\r\n\r\n", 400),
    "spaceBeforeColon": (b"GET / HTTP/1.1\r\nHost : hello\r\n\r\n", 400),
    "nulInValue": (b"GET / HTTP/1.1\r\nHost: hello\r\nX-A: a\x00b\r\n\r\n", 400),
    "invalidHeaderName": (b"GET / HTTP/1.1\r\nHost: hello\r\nX(A): b\r\n\r\n", 400),
    "bareCRInValue": (b"GET / HTTP/1.1\r\nHost: hello\r\nX-A: a\rb\r\n\r\n", 400),
    "bareLF": (b"GET / HTTP/1.1\nHost: hello\n\n", 400),
    "plusLength": (b"POST / HTTP/1.1\r\nHost: hello\r\nContent-Length: +4\r\n\r\nabcd", 400),
    "noHost": (b"GET / HTTP/1.1\r\n\r\n", 400),
    "twoHosts": (b"GET / HTTP/1.1\r\nHost: hello\r\nHost: other\r\n\r\n", 400),
    "badVersion": (b"GET / HTTP/1.7\r\nHost: hello\r\n\r\n", 400),
    "connect": (b"CONNECT hello:443 HTTP/1.1\r\nHost: hello:443\r\n\r\n", 405),
    "badTarget": (b"GET nothing HTTP/1.1\r\nHost: hello\r\n\r\n", 400),
}


class StrictFramingTests(ProxyTestCase):
    """
    Requests that could be framed two ways are refused, never forwarded.
    """


def _makeSmugglingTest(data, status):
    @defer.inlineCallbacks
    def test(self):
        port = yield self.proxy()
        client = yield exchange(self, port, data)
        yield client.closed
        self.assertEqual(len(client.responses), 1, client.raw)
        [response] = client.responses
        self.assertEqual(response.status, status, client.raw)
        self.assertIsNotNone(response.header(b"mesh-err"))
        self.assertEqual(response.header(b"connection"), b"close")
        self.assertEqual(self.backend.requests, [])

    return test


for _name, (_data, _status) in SMUGGLING.items():
    _test = _makeSmugglingTest(_data, _status)
    _test.__name__ = "test_refuses_" + _name
    _test.__doc__ = "Refused with %d and closed: %r" % (_status, _data[:60])
    setattr(StrictFramingTests, _test.__name__, _test)


class LimitTests(ProxyTestCase):
    @defer.inlineCallbacks
    def test_headerTooLargeIs431(self):
        port = yield self.proxy(server="maxHeaderBytes: 1024")
        client = yield exchange(
            self, port, b"GET / HTTP/1.1\r\nHost: hello\r\nX-Big: " + b"a" * 2000 + b"\r\n\r\n"
        )
        self.assertEqual(client.responses[0].status, 431)

    @defer.inlineCallbacks
    def test_tooManyHeadersIs431(self):
        port = yield self.proxy(server="maxHeaders: 10")
        headers = b"".join(b"X-%d: v\r\n" % i for i in range(20))
        client = yield exchange(self, port, b"GET / HTTP/1.1\r\nHost: hello\r\n" + headers + b"\r\n")
        self.assertEqual(client.responses[0].status, 431)

    @defer.inlineCallbacks
    def test_uriTooLongIs414(self):
        port = yield self.proxy(server="maxUriLength: 100")
        client = yield exchange(self, port, b"GET /" + b"a" * 200 + b" HTTP/1.1\r\nHost: hello\r\n\r\n")
        self.assertEqual(client.responses[0].status, 414)

    @defer.inlineCallbacks
    def test_bodyTooLargeIs413(self):
        port = yield self.proxy(server="maxBodyBytes: 10")
        client = yield exchange(
            self, port, b"POST / HTTP/1.1\r\nHost: hello\r\nContent-Length: 11\r\n\r\nhello world"
        )
        self.assertEqual(client.responses[0].status, 413)
        self.assertEqual(self.backend.requests, [])


class MoreRoutingTests(ProxyTestCase):
    @defer.inlineCallbacks
    def test_inetPathRoutesToFixedAddress(self):
        """
        A rule to /$/inet/<host>/<port> sends requests to that address.
        """
        backend = BackendFactory(okHandler(b"inet"))
        bport = yield listenBackend(self, backend)
        config = (
            'admin: {listen: "tcp:port=0:interface=127.0.0.1"}\n'
            "namers: []\n"
            "routers:\n"
            "  - name: web\n"
            '    listen: "tcp:0:interface=127.0.0.1"\n'
            '    rules: "/svc/direct => /$/inet/127.0.0.1/%d;"\n' % (bport,)
        )
        port, _, _ = yield startProxy(self, None, config=config)
        client = yield exchange(self, port, b"GET /x HTTP/1.1\r\nHost: direct\r\n\r\n")
        self.assertEqual(client.responses[0].body, b"inet /x")

    @defer.inlineCallbacks
    def test_unknownNameIsNoRoute(self):
        """
        A name its namer does not know answers 503 no-route.
        """
        port = yield self.proxy()
        client = yield exchange(self, port, b"GET / HTTP/1.1\r\nHost: nosuch\r\n\r\n")
        self.assertEqual(client.responses[0].header(b"mesh-err"), b"no-route")

    @defer.inlineCallbacks
    def test_chunkedBodyOverLimitIs413(self):
        """
        The body size limit holds for chunked bodies too, and the upstream
        never sees a complete request.
        """
        port = yield self.proxy(server="maxBodyBytes: 10")
        client = yield exchange(
            self,
            port,
            b"POST / HTTP/1.1\r\nHost: hello\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"8\r\n12345678\r\n8\r\n12345678\r\n0\r\n\r\n",
        )
        self.assertEqual(client.responses[0].status, 413)
        self.assertEqual(self.backend.requests, [])

    @defer.inlineCallbacks
    def test_connectionsOverLimitGet503(self):
        """
        A connection over maxConnections is answered 503 and closed; the
        ones within the limit keep working.
        """
        port = yield self.proxy(server="maxConnections: 1")
        first = yield connectClient(self, port)
        second = yield exchange(self, port, b"GET / HTTP/1.1\r\nHost: hello\r\n\r\n")
        yield second.closed
        self.assertEqual(second.responses[0].status, 503)
        self.assertEqual(second.responses[0].header(b"mesh-err"), b"overloaded")
        first.transport.write(b"GET / HTTP/1.1\r\nHost: hello\r\n\r\n")
        yield first.waitFor(1)
        self.assertEqual(first.responses[0].status, 200)


class DrainTests(ProxyTestCase):
    @defer.inlineCallbacks
    def test_shutdownLetsInFlightRequestFinish(self):
        """
        Stopping the services stops new connections at once, while a request
        in flight still gets its whole answer (with Connection: close).
        """
        held = []
        port = yield self.proxy(lambda proto, request: held.append(proto))
        client = yield connectClient(self, port)
        client.transport.write(b"GET / HTTP/1.1\r\nHost: hello\r\n\r\n")
        for _ in range(200):
            if held:
                break
            yield _tick()
        [factory] = [l.factory for l in self.runtime.listeners if hasattr(l.factory, "drain")]
        drained = factory.drain(5.0)
        self.assertNoResult(drained)
        held[0].transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\ndone")
        yield client.waitFor(1)
        yield drained
        self.assertEqual(client.responses[0].body, b"done")
        self.assertEqual(client.responses[0].header(b"connection"), b"close")
