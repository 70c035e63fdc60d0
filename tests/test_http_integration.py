"""
The HTTP router end to end on loopback, for what only real sockets show: a
client's real address in the forwarding headers, a connection refused by
the kernel, and a byte tunnel after a 101. A real proxy, real upstream
servers and a raw client that sees every byte.

The router's logic (forwarding, framing, strict parsing, limits, errors,
drain) is tested on a memory network and a fake clock in
L{tests.test_http_proxy}.
"""

from twisted.internet import defer
from twisted.trial.unittest import TestCase

from tests.support import BackendFactory, connectClient, exchange, listenBackend, startProxy


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
    def test_upgradeBecomesTunnel(self):
        """
        A 101 answer to an Upgrade request turns the connection into a byte
        tunnel both ways.
        """

        def raw(proto, data):
            if not getattr(proto, "switched", False):
                proto.switched = True
                proto.transport.write(
                    b"HTTP/1.1 101 Switching Protocols\r\n"
                    b"Connection: Upgrade\r\nUpgrade: echo\r\n\r\n"
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


def _tick():
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    return deferLater(reactor, 0.01, lambda: None)
