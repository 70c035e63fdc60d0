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
    HTTP/1.1 backend; and C{auto}, which learns the protocol by ALPN.
    """

    timeout = 60

    def setUp(self):
        import os

        from meshproxy import certs

        ca = self.mktemp()
        certs.initAuthority(ca)
        self.caFile = os.path.join(ca, "ca.pem")
        self.users = certs.issue(ca, "users", dnsNames=("users.mesh.local",))

    @defer.inlineCallbacks
    def inbound(self):
        """
        A meshproxy with a TLS listener (ALPN: h2, http/1.1) in front of an
        HTTP/1.1 backend.
        """
        from tests.support import BackendFactory

        self.backend = BackendFactory()
        backendPort = yield listenBackend(self, self.backend)
        users = self.users
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
        return inPort

    @defer.inlineCallbacks
    def http1Only(self):
        """
        A TLS backend answering HTTP/1.1 only (ALPN: http/1.1).
        """
        from meshproxy.tls import CertificateFile, ServerTLS
        from meshproxy.transport.tls import TLSServerFactory
        from tests.support import BackendFactory

        self.backend = BackendFactory()
        contexts = ServerTLS(
            [CertificateFile(self.users.cert, self.users.key)], protocols=[b"http/1.1"]
        )
        factory = TLSServerFactory(self.backend, contexts)
        factory.connections = self.backend.connections
        port = yield listenBackend(self, factory)
        return port

    @defer.inlineCallbacks
    def outbound(self, upstreamPort, protocol):
        outPort, _, runtime = yield startProxy(
            self,
            None,
            config=f"""\
admin: {{listen: "tcp:port=0:interface=127.0.0.1"}}
namers:
  - {{kind: static, prefix: /#/mesh, services: {{users: ["127.0.0.1:{upstreamPort}"]}}}}
routers:
  - name: outbound
    listen: "tcp:0:interface=127.0.0.1"
    rules: "/svc => /#/mesh;"
    upstreamTls: {{ca: {self.caFile}, serverName: "{{service}}.mesh.local"}}
    client: {{upstreamProtocol: {protocol}}}
""",
        )
        self.runtime = runtime
        return outPort

    @defer.inlineCallbacks
    def get(self, port, count=1):
        from tests.support import connectClient

        client = yield connectClient(self, port)
        for i in range(count):
            client.transport.write(b"GET /%d HTTP/1.1\r\nHost: users\r\n\r\n" % (i,))
        responses = yield client.waitFor(count)
        return responses

    def pool(self):
        [node] = self.runtime.routers["outbound"].clients.find("/#/mesh/users").balancer.nodes()
        return node.payload

    @defer.inlineCallbacks
    def test_h2ByALPNToATLSUpstream(self):
        """
        C{h2} over TLS: one HTTP/2 connection, C{:scheme} https.
        """
        from meshproxy.http2.client import H2Pool

        inPort = yield self.inbound()
        outPort = yield self.outbound(inPort, "h2")
        [response] = yield self.get(outPort)
        self.assertEqual(response.status, 200, response.body)
        [request] = self.backend.requests
        self.assertEqual(request.header(b"host"), b"users")
        pool = self.pool()
        self.assertIsInstance(pool, H2Pool)
        self.assertEqual(len(pool.all), 1)
        self.assertEqual(pool.scheme, b"https")

    @defer.inlineCallbacks
    def test_h2RefusedByAnHTTP1Upstream(self):
        """
        C{h2} to a TLS upstream that does not choose it: 502
        C{upstream-tls}.
        """
        port = yield self.http1Only()
        outPort = yield self.outbound(port, "h2")
        [response] = yield self.get(outPort)
        self.assertEqual(response.status, 502, response.body)
        self.assertEqual(response.header(b"mesh-err"), b"upstream-tls")
        self.assertEqual(self.backend.requests, [])

    @defer.inlineCallbacks
    def test_autoLearnsH2(self):
        """
        C{auto} offers h2 and http/1.1; an upstream choosing h2 gets every
        request over HTTP/2.
        """
        inPort = yield self.inbound()
        outPort = yield self.outbound(inPort, "auto")
        responses = yield self.get(outPort, 3)
        self.assertEqual([r.status for r in responses], [200, 200, 200])
        pool = self.pool()
        self.assertEqual(pool.learnt, "h2")
        self.assertEqual(len(pool.h2.all), 1)
        self.assertEqual(pool.h1.all, set())

    @defer.inlineCallbacks
    def test_autoLearnsHTTP1(self):
        """
        C{auto} to an upstream choosing http/1.1: HTTP/1.1, its connection
        pooled.
        """
        port = yield self.http1Only()
        outPort = yield self.outbound(port, "auto")
        for _ in range(3):
            [response] = yield self.get(outPort)
            self.assertEqual(response.status, 200)
        pool = self.pool()
        self.assertEqual(pool.learnt, "http/1.1")
        self.assertEqual(len(pool.h1.all), 1)
        self.assertEqual(pool.h2.all, [])
        self.assertEqual(len(self.backend.requests), 3)
