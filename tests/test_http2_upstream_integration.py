"""
HTTP/2 to upstreams on real loopback sockets: a real HTTP/2 server (the h2
library on Twisted, L{tests.h2_support.H2Backend}) behind meshproxy, and real
clients in front: curl over HTTP/1.1 and over HTTP/2 with prior knowledge,
a raw socket sending a chunked body with trailers, and an h2 client; trailers
both ways.
"""

import shutil

from twisted.internet import defer, protocol
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SkipTest, TestCase

from tests.h2_support import H2BackendFactory, H2ClientProtocol
from tests.support import listenBackend, startProxy

CONFIG = """\
admin: {listen: "tcp:port=0:interface=127.0.0.1"}
namers:
  - {kind: static, prefix: /#/static, services: {hello: ["127.0.0.1:%d"]}}
routers:
  - name: web
    listen: "tcp:0:interface=127.0.0.1"
    identifier: {kind: host}
    rules: "/svc => /#/static;"
    timeouts: {total: 10s}
    boundNames: {/#/static/hello: {upstreamProtocol: h2}}
"""


def answer(request):
    """
    Echo the request's body and trailers back, with trailers of its own.
    """
    if not request.ended:
        return
    count = b"%d" % (len(request.trailers or ()),)
    trailers = [(b"grpc-status", b"0"), (b"x-echo-trailers", count)]
    request.respond(
        200,
        [(b"content-type", b"text/plain"), (b"x-proto", b"h2")],
        b"got " + request.path + b" " + request.body,
        trailers=trailers,
    )


class _Collect(protocol.Protocol):
    def __init__(self):
        self.data = b""
        self.done = defer.Deferred()

    def dataReceived(self, data):
        self.data += data
        if self.data.endswith(b"\r\n\r\n") and b"0\r\n" in self.data:
            self.transport.loseConnection()

    def connectionLost(self, reason=None):
        self.done.callback(self.data)


class UpstreamH2Tests(TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def proxy(self):
        self.backend = H2BackendFactory(answer)
        backendPort = yield listenBackend(self, self.backend)
        port, _, self.runtime = yield startProxy(self, None, config=CONFIG % (backendPort,))
        return port

    @defer.inlineCallbacks
    def curl(self, *args):
        if shutil.which("curl") is None:
            raise SkipTest("curl is not installed")
        out, err, code = yield getProcessOutputAndValue(
            "curl",
            ("-sS", "--max-time", "10", "-D", "-", "-w", "\n%{http_code} %{http_version}", *args),
        )
        return code, out.decode("utf-8", "replace"), err.decode("utf-8", "replace")

    @defer.inlineCallbacks
    def test_curlHTTP1ToH2Upstream(self):
        """
        curl over HTTP/1.1 reaches the HTTP/2 upstream; the answer comes
        chunked, with the upstream's trailers as chunked trailers.
        """
        port = yield self.proxy()
        code, out, err = yield self.curl(
            "--http1.1", "-H", "Host: hello", "--data-binary", "ping",
            f"http://127.0.0.1:{port}/one",
        )
        self.assertEqual(code, 0, err)
        self.assertIn("got /one ping", out)
        self.assertTrue(out.endswith("\n200 1.1"), out)
        lower = out.lower()
        self.assertIn("transfer-encoding: chunked", lower)
        self.assertIn("grpc-status: 0", lower)
        [request] = self.backend.requests
        self.assertEqual(request.header(b":authority"), b"hello")
        self.assertEqual(request.body, b"ping")

    @defer.inlineCallbacks
    def test_curlPriorKnowledgeToH2Upstream(self):
        """
        curl over HTTP/2 (h2c) reaches the HTTP/2 upstream; its trailers
        come back as a trailers HEADERS frame.
        """
        port = yield self.proxy()
        code, out, err = yield self.curl(
            "--http2-prior-knowledge", "-H", "Host: hello", f"http://127.0.0.1:{port}/two",
        )
        self.assertEqual(code, 0, err)
        self.assertIn("got /two ", out)
        self.assertTrue(out.endswith("\n200 2"), out)
        self.assertIn("grpc-status: 0", out.lower())
        self.assertIn("x-proto: h2", out.lower())

    @defer.inlineCallbacks
    def test_chunkedRequestTrailersReachTheUpstream(self):
        """
        A chunked HTTP/1.1 body's trailers (from a raw socket) reach the
        HTTP/2 upstream as trailers; its trailers come back chunked.
        """
        from twisted.internet import reactor

        port = yield self.proxy()
        client = _Collect()
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), client)
        client.transport.write(
            b"POST /three HTTP/1.1\r\nHost: hello\r\nTransfer-Encoding: chunked\r\n"
            b"TE: trailers\r\nConnection: close\r\n\r\n4\r\nping\r\n0\r\nx-sum: 7\r\n\r\n"
        )
        data = yield client.done
        self.assertIn(b"got /three ping", data)
        self.assertIn(b"x-echo-trailers: 1\r\n", data)
        [request] = self.backend.requests
        self.assertEqual(request.trailers, [(b"x-sum", b"7")])
        self.assertEqual(request.header(b"te"), b"trailers")

    @defer.inlineCallbacks
    def test_h2ClientTrailersBothWays(self):
        """
        An HTTP/2 client's request trailers reach the HTTP/2 upstream, and
        the upstream's come back.
        """
        from twisted.internet import reactor

        port = yield self.proxy()
        client = H2ClientProtocol()
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), client)
        self.addCleanup(client.transport.abortConnection)
        sid = client.request(
            [(b":method", b"POST"), (b":scheme", b"http"), (b":authority", b"hello"),
             (b":path", b"/four"), (b"te", b"trailers")],
            body=b"abc",
            trailers=[(b"x-req", b"1")],
        )
        yield client.whenEnded(sid)
        headers, body, trailers, ended = client.response(sid)
        self.assertTrue(ended)
        self.assertEqual(headers[b":status"], b"200")
        self.assertEqual(body, b"got /four abc")
        self.assertEqual(trailers, [(b"grpc-status", b"0"), (b"x-echo-trailers", b"1")])
        [request] = self.backend.requests
        self.assertEqual(request.trailers, [(b"x-req", b"1")])


class UpstreamH2OverTLSTests(TestCase):
    """
    meshproxy to meshproxy over HTTP/2 and TLS: the outbound proxy offers
    h2 by ALPN to the inbound proxy's TLS listener, which forwards to an
    HTTP/1.1 backend.
    """

    timeout = 60

    @defer.inlineCallbacks
    def test_h2ByALPNToATLSUpstream(self):
        import os

        from meshproxy import certs
        from meshproxy.http2.client import H2Pool
        from tests.support import BackendFactory, connectClient

        ca = self.mktemp()
        certs.initAuthority(ca)
        caFile = os.path.join(ca, "ca.pem")
        users = certs.issue(ca, "users", dnsNames=("users.mesh.local",))
        backend = BackendFactory()
        backendPort = yield listenBackend(self, backend)
        inPort, _, _ = yield startProxy(
            self,
            None,
            config=f"""\
admin: {{listen: "tcp:port=0:interface=127.0.0.1"}}
namers:
  - {{kind: static, prefix: /#/s, services: {{users: ["127.0.0.1:{backendPort}"]}}}}
routers:
  - name: inbound
    listen: "tcp:0:interface=127.0.0.1"
    rules: "/svc => /#/s;"
    tls: {{certificates: [{{cert: {users.cert}, key: {users.key}}}]}}
""",
        )
        outPort, _, runtime = yield startProxy(
            self,
            None,
            config=f"""\
admin: {{listen: "tcp:port=0:interface=127.0.0.1"}}
namers:
  - {{kind: static, prefix: /#/mesh, services: {{users: ["127.0.0.1:{inPort}"]}}}}
routers:
  - name: outbound
    listen: "tcp:0:interface=127.0.0.1"
    rules: "/svc => /#/mesh;"
    upstreamTls: {{ca: {caFile}, serverName: "{{service}}.mesh.local"}}
    client: {{upstreamProtocol: h2}}
""",
        )
        client = yield connectClient(self, outPort)
        client.transport.write(b"GET /x HTTP/1.1\r\nHost: users\r\n\r\n")
        [response] = yield client.waitFor(1)
        self.assertEqual(response.status, 200, response.body)
        [request] = backend.requests
        self.assertEqual(request.header(b"host"), b"users")
        [node] = runtime.routers["outbound"].clients.find("/#/mesh/users").balancer.nodes()
        self.assertIsInstance(node.payload, H2Pool)
        self.assertEqual(len(node.payload.all), 1)
        self.assertEqual(node.payload.scheme, b"https")
