"""
The HTTP router from end to end through the same wiring as a running proxy
(C{buildServices}), on a memory network and a fake clock
(L{tests.memory_support}): forwarding, framing, strict parsing, limits,
errors and drain, with scripted upstreams and a raw client that sees every
byte.

What only sockets show (a real client's address, a connection refused by
the kernel, a tunnel after 101) stays in L{tests.test_http_integration}.
"""

from twisted.trial.unittest import SynchronousTestCase

from tests.memory_support import Instance, MemoryNetwork, MemoryProxy, resultOf
from tests.support import okHandler, proxyConfig


class ProxyTestCase(SynchronousTestCase):
    def setUp(self):
        self.network = MemoryNetwork()

    def proxy(self, handler=None, services=None, total="5s", server="", config=None):
        """
        Start an upstream answering with C{handler} (L{okHandler} by
        default) as the one instance of C{hello}, and a proxy.

        @return: the L{MemoryProxy}; the upstream is C{self.backend}.
        """
        backend = Instance(self.network, handler)
        port = backend.start()
        self.backend = backend.factory
        if config is None:
            config = proxyConfig({"hello": [port]} if services is None else services, total, server)
        self.mesh = MemoryProxy(self, config, network=self.network)
        return self.mesh


class ForwardingTests(ProxyTestCase):
    def test_appendsToExistingForwardedFor(self):
        """
        An incoming X-Forwarded-For is appended to, not replaced.
        """
        proxy = self.proxy()
        proxy.exchange(b"GET / HTTP/1.1\r\nHost: hello\r\nX-Forwarded-For: 10.1.2.3\r\n\r\n")
        [seen] = self.backend.requests
        self.assertEqual(seen.header(b"x-forwarded-for"), b"10.1.2.3, 127.0.0.1")

    def test_removesHopByHopHeaders(self):
        """
        Connection, Keep-Alive, TE, Proxy-* and headers named in Connection
        do not cross the proxy.
        """
        proxy = self.proxy()
        proxy.exchange(
            b"GET / HTTP/1.1\r\nHost: hello\r\nConnection: keep-alive, X-Secret\r\n"
            b"Keep-Alive: timeout=5\r\nTE: trailers\r\nX-Secret: 1\r\n"
            b"Proxy-Authorization: Basic Zm9vOmJhcg==\r\nX-Kept: 2\r\n\r\n",
        )
        [seen] = self.backend.requests
        names = seen.headerNames()
        for name in (b"connection", b"keep-alive", b"te", b"x-secret", b"proxy-authorization"):
            self.assertNotIn(name, names)
        self.assertEqual(seen.header(b"x-kept"), b"2")

    def test_keepAliveReusesOneUpstreamConnection(self):
        """
        Sequential requests on one client connection share one pooled
        upstream connection.
        """
        proxy = self.proxy()
        client = proxy.connect()
        for i in range(3):
            client.transport.write(b"GET /%d HTTP/1.1\r\nHost: hello\r\n\r\n" % (i,))
            self.network.flush()
            self.assertEqual(len(client.responses), i + 1)
        self.assertEqual([r.body for r in client.responses], [b"ok /0", b"ok /1", b"ok /2"])
        self.assertEqual(len(self.backend.connections), 1)
        self.assertEqual(len(self.network.attempts), 1)

    def test_pipelinedRequestsAnsweredInOrder(self):
        """
        Requests sent back to back in one write are answered in order.
        """
        proxy = self.proxy()
        data = b"".join(b"GET /%d HTTP/1.1\r\nHost: hello\r\n\r\n" % (i,) for i in range(5))
        client = proxy.exchange(data)
        self.assertEqual([r.body for r in client.responses], [b"ok /%d" % i for i in range(5)])

    def test_headThenGetOnPooledConnection(self):
        """
        A HEAD response (with a Content-Length and no body) ends at its
        header block; the next response on the same pooled upstream
        connection is read whole.
        """
        proxy = self.proxy()
        client = proxy.connect(heads=[b"HEAD"])
        client.transport.write(b"HEAD /h HTTP/1.1\r\nHost: hello\r\n\r\n")
        self.network.flush()
        self.assertEqual(len(client.responses), 1)
        client.transport.write(b"GET /g HTTP/1.1\r\nHost: hello\r\n\r\n")
        self.network.flush()
        head, get = client.responses
        self.assertEqual(head.status, 200)
        self.assertEqual(head.header(b"content-length"), b"5")
        self.assertEqual(get.body, b"ok /g")
        self.assertEqual(len(self.backend.connections), 1)
        # Nothing but the two responses came back.
        self.assertEqual(client.raw.count(b"HTTP/1.1 200"), 2)

    def test_chunkedRequestBodyWithTrailers(self):
        """
        A chunked request body and its trailers reach the upstream.
        """
        proxy = self.proxy()
        proxy.exchange(
            b"POST /p HTTP/1.1\r\nHost: hello\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n6\r\n world\r\n0\r\nX-Checksum: 42\r\n\r\n",
        )
        [seen] = self.backend.requests
        self.assertEqual(seen.body, b"hello world")
        self.assertEqual(seen.trailers, [(b"X-Checksum", b"42")])

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

        proxy = self.proxy(handler)
        client = proxy.exchange(b"GET / HTTP/1.1\r\nHost: hello\r\n\r\n")
        [response] = client.responses
        self.assertEqual(response.body, b"abcde")
        self.assertEqual(response.trailers, [(b"X-Sum", b"9")])

    def test_responseWithoutLengthToHttp10Client(self):
        """
        An HTTP/1.0 client gets a close-delimited body, never chunked.
        """

        def handler(proto, request):
            proto.transport.write(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
            )

        proxy = self.proxy(handler)
        client = proxy.exchange(b"GET / HTTP/1.0\r\nHost: hello\r\n\r\n")
        self.assertTrue(client.closed.called)
        [response] = client.responses
        self.assertEqual(response.body, b"abc")
        self.assertNotIn(b"transfer-encoding", response.headerNames())

    def test_noBodyFor204And304(self):
        """
        204 and 304 answers carry no body even if the upstream announced a
        length.
        """

        def handler(proto, request):
            code = b"204 No Content" if request.url == b"/a" else b"304 Not Modified"
            proto.transport.write(b"HTTP/1.1 %s\r\nX-A: 1\r\n\r\n" % (code,))

        proxy = self.proxy(handler)
        client = proxy.exchange(
            b"GET /a HTTP/1.1\r\nHost: hello\r\n\r\nGET /b HTTP/1.1\r\nHost: hello\r\n\r\n"
        )
        self.assertEqual([r.status for r in client.responses], [204, 304])
        self.assertEqual([r.body for r in client.responses], [b"", b""])

    def test_expectContinue(self):
        """
        A client that sends Expect: 100-continue gets 100 Continue once the
        upstream connection is ready, then the final answer.
        """
        proxy = self.proxy()
        client = proxy.connect()
        client.transport.write(
            b"PUT /x HTTP/1.1\r\nHost: hello\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n"
        )
        self.network.flush()
        self.assertTrue(client.raw.startswith(b"HTTP/1.1 100 Continue\r\n\r\n"), client.raw)
        self.assertEqual(client.responses, [])
        client.transport.write(b"data")
        self.network.flush()
        self.assertEqual(client.responses[0].status, 200)
        [seen] = self.backend.requests
        self.assertEqual(seen.body, b"data")
        self.assertIsNone(seen.header(b"expect"))

    def test_continueWaitsForTheUpstreamConnection(self):
        """
        The 100 Continue is sent only once the upstream connection is made
        (here after the upstream took 1s to accept).
        """
        hole = self.network.unusedPort()
        self.network.blackhole(hole)
        proxy = self.proxy(config=proxyConfig({"hello": [hole]}))
        client = proxy.connect()
        client.transport.write(
            b"PUT /x HTTP/1.1\r\nHost: hello\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n"
        )
        self.network.advance(1)
        self.assertEqual(client.raw, b"")
        [attempt] = self.network.attempts
        attempt.complete(self.backend)
        self.network.flush()
        self.assertEqual(client.raw, b"HTTP/1.1 100 Continue\r\n\r\n")


class ErrorTests(ProxyTestCase):
    def test_unknownServiceIs503(self):
        """
        A request for a service no namer knows gets 503 with mesh-err.
        """
        proxy = self.proxy()
        client = proxy.exchange(b"GET / HTTP/1.1\r\nHost: nosuch\r\n\r\n")
        [response] = client.responses
        self.assertEqual(response.status, 503)
        self.assertIsNotNone(response.header(b"mesh-err"))

    def test_garbageFromUpstreamIs502(self):
        """
        An upstream answering with something that is not HTTP gives 502.
        """

        def handler(proto, request):
            proto.transport.write(b"SSH-2.0-OpenSSH\r\n\r\n")

        proxy = self.proxy(handler)
        client = proxy.exchange(b"GET / HTTP/1.1\r\nHost: hello\r\n\r\n")
        [response] = client.responses
        self.assertEqual(response.status, 502)
        self.assertEqual(response.header(b"mesh-err"), b"upstream-protocol")

    def test_hungUpstreamIs504(self):
        """
        An upstream that never answers gives 504 when the total timeout
        passes, not before.
        """
        proxy = self.proxy(lambda proto, request: None, total="300ms")
        client = proxy.exchange(b"GET / HTTP/1.1\r\nHost: hello\r\n\r\n")
        self.network.advance(0.299)
        self.assertEqual(client.responses, [])
        self.network.advance(0.001)
        [response] = client.responses
        self.assertEqual(response.status, 504)
        self.assertEqual(response.header(b"mesh-err"), b"timeout")


# Requests that must be refused with the given status before anything
# reaches an upstream (and the connection closed).
SMUGGLING = {
    "bothLengths": (
        b"POST / HTTP/1.1\r\nHost: hello\r\nContent-Length: 4\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
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
        b"POST / HTTP/1.1\r\nHost: hello\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"zz\r\nabc\r\n0\r\n\r\n",
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
    def test(self):
        proxy = self.proxy()
        client = proxy.exchange(data)
        self.assertTrue(client.closed.called)
        self.assertEqual(len(client.responses), 1, client.raw)
        [response] = client.responses
        self.assertEqual(response.status, status, client.raw)
        self.assertIsNotNone(response.header(b"mesh-err"))
        self.assertEqual(response.header(b"connection"), b"close")
        self.assertEqual(self.backend.requests, [])
        self.assertEqual(self.network.attempts, [])

    return test


for _name, (_data, _status) in SMUGGLING.items():
    _test = _makeSmugglingTest(_data, _status)
    _test.__name__ = "test_refuses_" + _name
    _test.__doc__ = "Refused with %d and closed: %r" % (_status, _data[:60])
    setattr(StrictFramingTests, _test.__name__, _test)


class LimitTests(ProxyTestCase):
    def test_headerTooLargeIs431(self):
        proxy = self.proxy(server="maxHeaderBytes: 1024")
        client = proxy.exchange(
            b"GET / HTTP/1.1\r\nHost: hello\r\nX-Big: " + b"a" * 2000 + b"\r\n\r\n"
        )
        self.assertEqual(client.responses[0].status, 431)

    def test_tooManyHeadersIs431(self):
        proxy = self.proxy(server="maxHeaders: 10")
        headers = b"".join(b"X-%d: v\r\n" % i for i in range(20))
        client = proxy.exchange(b"GET / HTTP/1.1\r\nHost: hello\r\n" + headers + b"\r\n")
        self.assertEqual(client.responses[0].status, 431)

    def test_uriTooLongIs414(self):
        proxy = self.proxy(server="maxUriLength: 100")
        client = proxy.exchange(b"GET /" + b"a" * 200 + b" HTTP/1.1\r\nHost: hello\r\n\r\n")
        self.assertEqual(client.responses[0].status, 414)

    def test_bodyTooLargeIs413(self):
        proxy = self.proxy(server="maxBodyBytes: 10")
        client = proxy.exchange(
            b"POST / HTTP/1.1\r\nHost: hello\r\nContent-Length: 11\r\n\r\nhello world"
        )
        self.assertEqual(client.responses[0].status, 413)
        self.assertEqual(self.backend.requests, [])


class MoreRoutingTests(ProxyTestCase):
    def test_inetPathRoutesToFixedAddress(self):
        """
        A rule to /$/inet/<host>/<port> sends requests to that address.
        """
        backend = Instance(self.network, okHandler(b"inet"))
        bport = backend.start()
        config = (
            'admin: {listen: "tcp:port=0:interface=127.0.0.1"}\n'
            "namers: []\n"
            "routers:\n"
            "  - name: web\n"
            '    listen: "tcp:0:interface=127.0.0.1"\n'
            '    rules: "/svc/direct => /$/inet/127.0.0.1/%d;"\n' % (bport,)
        )
        proxy = MemoryProxy(self, config, network=self.network)
        client = proxy.exchange(b"GET /x HTTP/1.1\r\nHost: direct\r\n\r\n")
        self.assertEqual(client.responses[0].body, b"inet /x")
        self.assertEqual(
            [(a.host, a.port) for a in self.network.attempts], [("127.0.0.1", bport)]
        )

    def test_unknownNameIsNoRoute(self):
        """
        A name its namer does not know answers 503 no-route.
        """
        proxy = self.proxy()
        client = proxy.exchange(b"GET / HTTP/1.1\r\nHost: nosuch\r\n\r\n")
        self.assertEqual(client.responses[0].header(b"mesh-err"), b"no-route")

    def test_chunkedBodyOverLimitIs413(self):
        """
        The body size limit holds for chunked bodies too, and the upstream
        never sees a complete request.
        """
        proxy = self.proxy(server="maxBodyBytes: 10")
        client = proxy.exchange(
            b"POST / HTTP/1.1\r\nHost: hello\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"8\r\n12345678\r\n8\r\n12345678\r\n0\r\n\r\n",
        )
        self.assertEqual(client.responses[0].status, 413)
        self.assertEqual(self.backend.requests, [])

    def test_connectionsOverLimitGet503(self):
        """
        A connection over maxConnections is answered 503 and closed; the
        ones within the limit keep working.
        """
        proxy = self.proxy(server="maxConnections: 1")
        first = proxy.connect()
        second = proxy.exchange(b"GET / HTTP/1.1\r\nHost: hello\r\n\r\n")
        self.assertTrue(second.closed.called)
        self.assertEqual(second.responses[0].status, 503)
        self.assertEqual(second.responses[0].header(b"mesh-err"), b"overloaded")
        first.transport.write(b"GET / HTTP/1.1\r\nHost: hello\r\n\r\n")
        self.network.flush()
        self.assertEqual(first.responses[0].status, 200)


class DrainTests(ProxyTestCase):
    def test_shutdownLetsInFlightRequestFinish(self):
        """
        Draining the listener's factory refuses new connections at once,
        while a request in flight still gets its whole answer (with
        Connection: close); the drain ends with it.
        """
        held = []
        proxy = self.proxy(lambda proto, request: held.append(proto))
        client = proxy.connect()
        client.transport.write(b"GET / HTTP/1.1\r\nHost: hello\r\n\r\n")
        self.network.flush()
        self.assertEqual(len(held), 1)
        [factory] = [
            listener.factory
            for listener in proxy.runtime.listeners
            if hasattr(listener.factory, "drain")
        ]
        drained = factory.drain(5.0)
        self.assertNoResult(drained)
        late = proxy.exchange(b"GET / HTTP/1.1\r\nHost: hello\r\n\r\n")
        self.assertTrue(late.closed.called)
        self.assertEqual(late.raw, b"")
        held[0].transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\ndone")
        self.network.flush()
        resultOf(drained)
        self.assertEqual(client.responses[0].body, b"done")
        self.assertEqual(client.responses[0].header(b"connection"), b"close")
        self.assertTrue(client.closed.called)
        self.assertEqual(len(self.backend.requests), 1)
