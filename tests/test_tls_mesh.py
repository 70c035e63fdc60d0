"""
TLS both ways on loopback, with real clients (curl, openssl s_client): the
listener's certificate chosen by SNI, ALPN answered (h2 or http/1.1), TLS 1.1 refused,
client certificates required, two meshproxies talking mTLS with the caller's
identity checked by policy, a wrong CA or name refused, rotation while a
connection stays open, and a TCP router's TLS listener with a client that
offers ALPN.
"""

import os
import shutil

from twisted.internet import defer
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SkipTest, TestCase

from meshproxy import certs
from tests.support import BackendFactory, connectClient, listenBackend, startProxy


def _need(program):
    if shutil.which(program) is None:
        raise SkipTest(f"{program} is not installed")


def _config(body):
    return 'admin: {listen: "tcp:port=0:interface=127.0.0.1"}\n' + body


class TLSMeshTestCase(TestCase):
    timeout = 60

    def setUp(self):
        self.ca = self.mktemp()
        certs.initAuthority(self.ca)
        self.caFile = os.path.join(self.ca, "ca.pem")
        self.web = certs.issue(
            self.ca, "web", uris=("spiffe://mesh.local/web",), dnsNames=("web.mesh.local",)
        )
        self.api = certs.issue(self.ca, "api", dnsNames=("api.example",))
        self.users = certs.issue(
            self.ca, "users", uris=("spiffe://mesh.local/users",), dnsNames=("users.mesh.local",)
        )
        self.caller = certs.issue(self.ca, "caller", uris=("spiffe://mesh.local/caller",))
        self.stranger = certs.issue(self.ca, "stranger", uris=("spiffe://mesh.local/stranger",))

    @defer.inlineCallbacks
    def curl(self, port, *args, host="web.mesh.local"):
        """
        curl https://HOST:PORT/ with the name resolved to 127.0.0.1.

        @return: C{(exit code, output, stderr)}.
        """
        _need("curl")
        out, err, code = yield getProcessOutputAndValue(
            "curl",
            (
                "-sS", "--max-time", "10", "--cacert", self.caFile,
                "--resolve", f"{host}:{port}:127.0.0.1",
                "-w", "\n%{http_code} %{http_version}",
                *args,
                f"https://{host}:{port}/x",
            ),
        )
        return code, out.decode("utf-8", "replace"), err.decode("utf-8", "replace")

    @defer.inlineCallbacks
    def backend(self):
        self.backendFactory = BackendFactory()
        port = yield listenBackend(self, self.backendFactory)
        return port


class TerminationTests(TLSMeshTestCase):
    @defer.inlineCallbacks
    def proxy(self, clientCertificates=""):
        backend = yield self.backend()
        port, admin, runtime = yield startProxy(
            self,
            None,
            config=_config(
                f"""
namers:
  - {{kind: static, prefix: /#/s, services: {{web: ["127.0.0.1:{backend}"]}}}}
routers:
  - name: web
    listen: "tcp:0:interface=127.0.0.1"
    identifier: {{kind: path, segments: 1}}
    rules: "/svc => /#/s/web;"
    tls:
      certificates:
        - {{cert: {self.web.cert}, key: {self.web.key}}}
        - {{cert: {self.api.cert}, key: {self.api.key}, sni: ["*.example"]}}
      {clientCertificates}
"""
            ),
        )
        self.runtime = runtime
        return port

    @defer.inlineCallbacks
    def test_curlGetsAnAnswerOverHTTP2ByALPN(self):
        """
        curl offers h2 and http/1.1 by ALPN: h2 is chosen, and the request
        goes upstream as HTTP/1.1 with the scheme it came by.
        """
        port = yield self.proxy()
        code, out, err = yield self.curl(port)
        self.assertEqual(code, 0, err)
        self.assertTrue(out.endswith("\n200 2"), out)
        [request] = self.backendFactory.requests
        self.assertEqual(request.header(b"x-forwarded-proto"), b"https")

    @defer.inlineCallbacks
    def test_curlGetsAnAnswerOverHTTP11(self):
        port = yield self.proxy()
        code, out, err = yield self.curl(port, "--http1.1")
        self.assertEqual(code, 0, err)
        self.assertTrue(out.endswith("\n200 1.1"), out)
        [request] = self.backendFactory.requests
        self.assertEqual(request.header(b"x-forwarded-proto"), b"https")

    @defer.inlineCallbacks
    def test_sniChoosesTheCertificate(self):
        port = yield self.proxy()
        # curl verifies the name: only the api certificate names api.example.
        code, out, err = yield self.curl(port, host="api.example")
        self.assertEqual(code, 0, err)
        self.assertTrue(out.endswith("\n200 2"), out)

    @defer.inlineCallbacks
    def test_oldTLSRefused(self):
        _need("openssl")
        port = yield self.proxy()
        out, err, code = yield getProcessOutputAndValue(
            "openssl",
            ("s_client", "-connect", f"127.0.0.1:{port}", "-tls1_1", "-CAfile", self.caFile),
            stdinBytes=b"",
        )
        self.assertNotEqual(code, 0, out)
        out, err, code = yield getProcessOutputAndValue(
            "openssl",
            ("s_client", "-connect", f"127.0.0.1:{port}", "-tls1_2", "-alpn", "h2,http/1.1",
             "-CAfile", self.caFile),
            stdinBytes=b"",
        )
        self.assertEqual(code, 0, err)
        self.assertIn(b"ALPN protocol: h2", out)
        out, err, code = yield getProcessOutputAndValue(
            "openssl",
            ("s_client", "-connect", f"127.0.0.1:{port}", "-tls1_2", "-alpn", "http/1.1",
             "-CAfile", self.caFile),
            stdinBytes=b"",
        )
        self.assertEqual(code, 0, err)
        self.assertIn(b"ALPN protocol: http/1.1", out)

    @defer.inlineCallbacks
    def test_clientCertificateRequired(self):
        port = yield self.proxy(f"clientCertificates: {{ca: {self.caFile}, verify: required}}")
        code, out, err = yield self.curl(port)
        self.assertNotEqual(code, 0, out)
        code, out, err = yield self.curl(port, "--cert", self.caller.cert, "--key", self.caller.key)
        self.assertEqual(code, 0, err)
        [request] = self.backendFactory.requests
        xfcc = request.header(b"x-forwarded-client-cert")
        self.assertIn(b"URI=spiffe://mesh.local/caller", xfcc)
        self.assertIn(b"By=spiffe://mesh.local/web", xfcc)

    @defer.inlineCallbacks
    def test_forwardedClientCertFromAClientIsDropped(self):
        port = yield self.proxy()
        code, out, err = yield self.curl(port, "-H", "x-forwarded-client-cert: URI=spiffe://fake")
        self.assertEqual(code, 0, err)
        [request] = self.backendFactory.requests
        self.assertIsNone(request.header(b"x-forwarded-client-cert"))

    @defer.inlineCallbacks
    def test_rotationKeepsOpenConnections(self):
        """
        New certificate files are served to new connections within a
        second or two; a connection open before keeps working.
        """
        directory = self.mktemp()
        os.makedirs(directory)
        certFile = os.path.join(directory, "web.pem")
        keyFile = os.path.join(directory, "web.key")
        shutil.copy(self.web.cert, certFile)
        shutil.copy(self.web.key, keyFile)
        self.web = certs.Issued(certFile, keyFile)
        port = yield self.proxy()
        code, out, err = yield self.curl(port)
        self.assertEqual(code, 0, err)
        # Now a certificate for another name: curl for web.mesh.local must
        # fail once it is in use.
        other = certs.issue(self.ca, "other", dnsNames=("other.mesh.local",))
        shutil.copy(other.cert, certFile)
        shutil.copy(other.key, keyFile)

        results = []

        @defer.inlineCallbacks
        def newCertificateServed():
            code, out, err = yield self.curl(port, host="other.mesh.local")
            results.append(code)
            return code == 0

        for _ in range(40):
            served = yield newCertificateServed()
            if served:
                break
            from tests.resilience_support import tick

            yield tick(0.1)
        self.assertEqual(results[-1], 0, results)
        code, out, err = yield self.curl(port)
        self.assertNotEqual(code, 0)


class MeshTests(TLSMeshTestCase):
    """
    Two meshproxies: the outbound one originates mTLS with its client
    certificate, the inbound one terminates it, verifies the caller and
    applies its policy by identity.
    """

    @defer.inlineCallbacks
    def pair(
        self,
        policy,
        *,
        inboundCert=None,
        outboundServerName="spiffe://mesh.local/{service}",
        ca=None,
    ):
        backend = yield self.backend()
        inboundCert = inboundCert or self.users
        inPort, _, self.inbound = yield startProxy(
            self,
            None,
            config=_config(
                f"""
namers:
  - {{kind: static, prefix: /#/s, services: {{users: ["127.0.0.1:{backend}"]}}}}
routers:
  - name: inbound
    listen: "tcp:0:interface=127.0.0.1"
    rules: "/svc => /#/s;"
    tls:
      certificates: [{{cert: {inboundCert.cert}, key: {inboundCert.key}}}]
      clientCertificates: {{ca: {self.caFile}, verify: required}}
    policy:
{policy}
"""
            ),
        )
        self.outboundAdmins = {}
        ports = {}
        for name, identity in (("caller", self.caller), ("stranger", self.stranger)):
            port, admin, runtime = yield startProxy(
                self,
                None,
                config=_config(
                    f"""
namers:
  - {{kind: static, prefix: /#/mesh, services: {{users: ["127.0.0.1:{inPort}"]}}}}
routers:
  - name: outbound
    listen: "tcp:0:interface=127.0.0.1"
    rules: "/svc => /#/mesh;"
    upstreamTls:
      ca: {ca or self.caFile}
      serverName: "{outboundServerName}"
      cert: {identity.cert}
      key: {identity.key}
"""
                ),
            )
            ports[name] = port
            self.outboundAdmins[name] = admin
        return ports

    @defer.inlineCallbacks
    def get(self, port):
        client = yield connectClient(self, port)
        client.transport.write(b"GET /x HTTP/1.1\r\nHost: users\r\n\r\n")
        [response] = yield client.waitFor(1)
        return response

    POLICY = """      default: deny
      rules:
        - {callers: ["spiffe://mesh.local/caller"], names: [/svc/users], methods: [GET]}
"""

    @defer.inlineCallbacks
    def test_identityCheckedByPolicy(self):
        ports = yield self.pair(self.POLICY)
        response = yield self.get(ports["caller"])
        self.assertEqual(response.status, 200, response.body)
        [request] = self.backendFactory.requests
        self.assertIn(b"URI=spiffe://mesh.local/caller", request.header(b"x-forwarded-client-cert"))
        response = yield self.get(ports["stranger"])
        self.assertEqual(response.status, 403)
        self.assertEqual(response.header(b"mesh-err"), b"forbidden")
        self.assertIn(b"spiffe://mesh.local/stranger may not call /svc/users", response.body)
        self.assertEqual(len(self.backendFactory.requests), 1)
        metrics = self.inbound.routers["inbound"].metrics
        self.assertEqual(
            metrics._denied, {("inbound", "default", "spiffe://mesh.local/stranger"): 1}
        )

    @defer.inlineCallbacks
    def test_clientCertificateExpiryScraped(self):
        """
        Once the outbound proxy made its first mTLS connection, its
        /metrics tell when the client certificate it presents expires.
        """
        _need("curl")
        ports = yield self.pair(self.POLICY)
        response = yield self.get(ports["caller"])
        self.assertEqual(response.status, 200, response.body)
        out, err, code = yield getProcessOutputAndValue(
            "curl",
            ("-sS", "--max-time", "10", f"http://127.0.0.1:{self.outboundAdmins['caller']}/metrics"),
        )
        self.assertEqual(code, 0, err)
        from prometheus_client.parser import text_string_to_metric_families

        from tests.test_tls_metrics import expiryOf

        samples = [
            (sample.labels, sample.value)
            for family in text_string_to_metric_families(out.decode("utf-8"))
            for sample in family.samples
            if sample.name.startswith("meshproxy_tls_")
        ]
        self.assertEqual(
            sorted(samples, key=lambda s: sorted(s[0].items())),
            [
                # (the config made the path absolute)
                ({"router": "outbound", "certificate": os.path.abspath(self.caller.cert)},
                 expiryOf(self.caller.cert)),
                ({"router": "outbound"}, 0.0),
            ],
        )

    @defer.inlineCallbacks
    def test_wrongNameRefused(self):
        """
        The upstream's certificate names users; expecting someone else is
        a 502 upstream-tls, and nothing reaches the backend.
        """
        ports = yield self.pair(self.POLICY, outboundServerName="spiffe://mesh.local/orders")
        response = yield self.get(ports["caller"])
        self.assertEqual(response.status, 502)
        self.assertEqual(response.header(b"mesh-err"), b"upstream-tls")
        self.assertIn(b"certificate for another identity", response.body)
        self.assertEqual(self.backendFactory.requests, [])

    @defer.inlineCallbacks
    def test_wrongCARefused(self):
        other = self.mktemp()
        certs.initAuthority(other)
        ports = yield self.pair(self.POLICY, ca=os.path.join(other, "ca.pem"))
        response = yield self.get(ports["caller"])
        self.assertEqual(response.status, 502)
        self.assertEqual(response.header(b"mesh-err"), b"upstream-tls")
        self.assertIn(b"not signed by the trusted CA", response.body)
        self.assertEqual(self.backendFactory.requests, [])

    @defer.inlineCallbacks
    def test_pooled(self):
        """
        TLS upstream connections are kept alive and reused.
        """
        ports = yield self.pair(self.POLICY)
        client = yield connectClient(self, ports["caller"])
        for i in range(3):
            client.transport.write(b"GET /x HTTP/1.1\r\nHost: users\r\n\r\n")
            responses = yield client.waitFor(i + 1)
        self.assertEqual([r.status for r in responses], [200, 200, 200])
        self.assertEqual(len(self.backendFactory.requests), 3)
        inbound = self.inbound.routers["inbound"]
        self.assertEqual(inbound.connStats.opened, 1)


class TcpTLSTests(TLSMeshTestCase):
    @defer.inlineCallbacks
    def tcpRouter(self, listen="tcp:0:interface=127.0.0.1", more=""):
        """
        A TCP router to a backend, listening on C{listen}, with C{more}
        config lines (its tls section and policy).

        @return: the port and the runtime.
        """
        backend = yield self.backend()
        port, _, runtime = yield startProxy(
            self,
            None,
            config=_config(
                f"""
namers:
  - {{kind: static, prefix: /#/s, services: {{web: ["127.0.0.1:{backend}"]}}}}
routers:
  - name: tcp
    protocol: tcp
    listen: "{listen}"
    destination: /#/s/web
{more}"""
            ),
        )
        return port, runtime

    @defer.inlineCallbacks
    def test_tcpRouterTLSListenerWithALPNClient(self):
        """
        A TCP router terminating TLS answers no ALPN protocol (it carries
        bytes, not HTTP) and the handshake of a client offering h2 and
        http/1.1 goes on: curl gets the backend's answer.
        """
        port, runtime = yield self.tcpRouter(
            more=f"""    tls:
      certificates: [{{cert: {self.web.cert}, key: {self.web.key}}}]
"""
        )
        code, out, err = yield self.curl(port)
        self.assertEqual(code, 0, err)
        self.assertTrue(out.endswith("\n200 1.1"), out)

    @defer.inlineCallbacks
    def test_tcpPolicyDeniesByIdentity(self):
        port, runtime = yield self.tcpRouter(
            more=f"""    tls:
      certificates: [{{cert: {self.web.cert}, key: {self.web.key}}}]
      clientCertificates: {{ca: {self.caFile}, verify: required}}
    policy:
      default: deny
      rules: [{{callers: ["spiffe://mesh.local/caller"]}}]
"""
        )
        code, out, err = yield self.curl(port, "--cert", self.caller.cert, "--key", self.caller.key)
        self.assertEqual(code, 0, err)
        code, out, err = yield self.curl(
            port, "--cert", self.stranger.cert, "--key", self.stranger.key
        )
        self.assertNotEqual(code, 0, out)
        self.assertEqual(len(self.backendFactory.requests), 1)
        metrics = runtime.routers["tcp"].metrics
        self.assertEqual(metrics._denied, {("tcp", "default", "spiffe://mesh.local/stranger"): 1})

    @defer.inlineCallbacks
    def test_sslListenStringOnATcpRouter(self):
        """
        An C{ssl:} listen string (as before the tls section existed) gets
        meshproxy's TLS too: a client offering ALPN completes its
        handshake on a TCP router (Twisted's own listener aborted it).
        """
        port, runtime = yield self.tcpRouter(
            listen=f"ssl:0:interface=127.0.0.1:privateKey={self.web.key}:certKey={self.web.cert}"
        )
        code, out, err = yield self.curl(port)
        self.assertEqual(code, 0, err)
        self.assertTrue(out.endswith("\n200 1.1"), out)
