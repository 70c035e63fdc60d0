"""
Tests for L{meshproxy.tls} and L{meshproxy.certs}: TLS in memory
(L{meshproxy.transport.tls} over iosim), with certificates from the
development CA.
"""

import os
import shutil
import ssl
import warnings

from service_identity import VerificationError
from twisted.internet.protocol import Factory, Protocol
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase

from meshproxy import certs
from meshproxy.tls import (
    CertificateFile,
    ClientContext,
    ClientTLS,
    ServerTLS,
    TLSFileError,
    identityOf,
)
from meshproxy.transport.tls import TLSClientFactory, TLSServerFactory


class _Peer(Protocol):
    def __init__(self):
        self.data = b""
        self.lost = None
        self.handshook = False

    def connectionMade(self):
        self.transport.write(b"hello")

    def dataReceived(self, data):
        self.data += data

    def connectionLost(self, reason):
        self.lost = reason


def makeCA(testCase):
    directory = testCase.mktemp()
    certs.initAuthority(directory)
    return directory


def pair(server, client):
    """
    Connect a TLS server and client in memory and run the handshake.

    @return: the server and client application protocols, and the pump.
    """
    serverApp, clientApp = _Peer(), _Peer()
    serverFactory = TLSServerFactory(Factory.forProtocol(lambda: serverApp), server)
    clientFactory = TLSClientFactory(Factory.forProtocol(lambda: clientApp), client)
    clientTLS, serverTLS, pump = iosim.connectedServerAndClient(
        lambda: serverFactory.buildProtocol(None),
        lambda: clientFactory.buildProtocol(None),
    )
    pump.flush()
    return serverApp, clientApp, serverTLS, clientTLS


class CertsTests(SynchronousTestCase):
    def test_issueNames(self):
        ca = makeCA(self)
        issued = certs.issue(ca, "web", uris=("spiffe://mesh.local/web",), ips=("127.0.0.1",))
        with open(issued.cert, "rb") as f:
            from cryptography import x509

            identity = identityOf(x509.load_pem_x509_certificate(f.read()))
        self.assertEqual(identity.uris, ("spiffe://mesh.local/web",))
        self.assertEqual(identity.dnsNames, ("web",))
        self.assertEqual(identity.name, "spiffe://mesh.local/web")
        self.assertEqual(os.stat(issued.key).st_mode & 0o777, 0o600)

    def test_nameNotADNSNameGetsNoDNSName(self):
        ca = makeCA(self)
        issued = certs.issue(ca, "my_svc", uris=("spiffe://mesh.local/my_svc",))
        with open(issued.cert, "rb") as f:
            from cryptography import x509

            identity = identityOf(x509.load_pem_x509_certificate(f.read()))
        self.assertEqual((identity.dnsNames, identity.commonName), ((), "my_svc"))

    def test_caNeverOverwritten(self):
        ca = makeCA(self)
        self.assertRaises(certs.CertsError, certs.initAuthority, ca)

    def test_badInput(self):
        ca = makeCA(self)
        for bad in ("", "../x", "a/b", "ca"):
            self.assertRaises(certs.CertsError, certs.issue, ca, bad)
        self.assertRaises(certs.CertsError, certs.issue, ca, "web", uris=("not a uri",))
        self.assertRaises(certs.CertsError, certs.issue, ca, "web", ips=("300.1.1.1",))
        e = self.assertRaises(certs.CertsError, certs.issue, self.mktemp(), "web")
        self.assertIn("meshproxy certs init", str(e))


class TLSTests(SynchronousTestCase):
    def setUp(self):
        self.ca = makeCA(self)
        self.caFile = os.path.join(self.ca, "ca.pem")
        self.web = certs.issue(self.ca, "web", uris=("spiffe://mesh.local/web",))
        self.api = certs.issue(self.ca, "api", dnsNames=("api.example",))
        self.caller = certs.issue(self.ca, "caller", uris=("spiffe://mesh.local/caller",))

    def server(self, **kw):
        return ServerTLS([CertificateFile(self.web.cert, self.web.key)], **kw)

    def test_verifiedByDNSName(self):
        serverApp, clientApp, _, clientTLS = pair(self.server(), ClientTLS("web", ca=self.caFile))
        self.assertEqual(clientApp.data, b"hello")
        self.assertEqual(serverApp.data, b"hello")
        self.assertEqual(clientTLS.negotiatedProtocol, b"http/1.1")

    def test_verifiedByURI(self):
        serverApp, clientApp, _, _ = pair(
            self.server(), ClientTLS("spiffe://mesh.local/web", ca=self.caFile)
        )
        self.assertEqual(clientApp.data, b"hello")

    def test_wrongNameRefused(self):
        for expected in ("users", "spiffe://mesh.local/users"):
            serverApp, clientApp, _, _ = pair(self.server(), ClientTLS(expected, ca=self.caFile))
            self.assertEqual(clientApp.data, b"", expected)
            self.assertTrue(clientApp.lost.check(VerificationError), expected)

    def test_wrongCARefused(self):
        other = makeCA(self)
        serverApp, clientApp, _, _ = pair(
            self.server(), ClientTLS("web", ca=os.path.join(other, "ca.pem"))
        )
        self.assertEqual(clientApp.data, b"")
        self.assertTrue(clientApp.lost.check(ssl.SSLCertVerificationError))

    def test_sniChoosesTheCertificate(self):
        server = ServerTLS(
            [
                CertificateFile(self.web.cert, self.web.key),
                CertificateFile(self.api.cert, self.api.key, sni=("*.example",)),
            ]
        )
        serverApp, clientApp, _, _ = pair(server, ClientTLS("api.example", ca=self.caFile))
        self.assertEqual(clientApp.data, b"hello")
        # Without a matching name, the default certificate (web) is served.
        serverApp, clientApp, _, _ = pair(server, ClientTLS("web", ca=self.caFile))
        self.assertEqual(clientApp.data, b"hello")

    def test_clientCertificateRequired(self):
        server = self.server(clientCA=self.caFile, verify="required")
        serverApp, clientApp, _, _ = pair(server, ClientTLS("web", ca=self.caFile))
        self.assertEqual(serverApp.data, b"")
        serverApp, clientApp, serverTLS, _ = pair(
            server,
            ClientTLS("web", ca=self.caFile, cert=self.caller.cert, key=self.caller.key),
        )
        self.assertEqual(serverApp.data, b"hello")
        identity = identityOf(serverTLS.getPeerCertificate())
        self.assertEqual(identity.name, "spiffe://mesh.local/caller")

    def test_clientCertificateOptional(self):
        server = self.server(clientCA=self.caFile, verify="optional")
        serverApp, clientApp, serverTLS, _ = pair(server, ClientTLS("web", ca=self.caFile))
        self.assertEqual(serverApp.data, b"hello")
        self.assertIsNone(serverTLS.getPeerCertificate())

    def test_noCommonALPNProtocolStillHandshakes(self):
        client = ClientTLS("web", ca=self.caFile, protocols=(b"h2",))
        serverApp, clientApp, _, clientTLS = pair(self.server(), client)
        self.assertEqual(clientApp.data, b"hello")
        self.assertIsNone(clientTLS.negotiatedProtocol)

    def test_oldVersionsRefused(self):
        client = ClientTLS("web", ca=self.caFile)
        with warnings.catch_warnings():
            # (Python warns that TLS 1.1 is deprecated: the point here)
            warnings.simplefilter("ignore", DeprecationWarning)
            client.settings.context.maximum_version = ssl.TLSVersion.TLSv1_1
            client.settings.context.minimum_version = ssl.TLSVersion.TLSv1_1
        serverApp, clientApp, _, _ = pair(self.server(), client)
        self.assertEqual(serverApp.data, b"")

    def test_reloadServesNewFilesAndKeepsOldOnError(self):
        directory = self.mktemp()
        os.makedirs(directory)
        certFile, keyFile = os.path.join(directory, "c.pem"), os.path.join(directory, "c.key")
        shutil.copy(self.web.cert, certFile)
        shutil.copy(self.web.key, keyFile)
        server = ServerTLS([CertificateFile(certFile, keyFile)])
        shutil.copy(self.api.cert, certFile)
        shutil.copy(self.api.key, keyFile)
        self.assertTrue(server.reload())
        serverApp, clientApp, _, _ = pair(server, ClientTLS("api.example", ca=self.caFile))
        self.assertEqual(clientApp.data, b"hello")
        with open(keyFile, "wb") as f:
            f.write(b"garbage")
        self.assertFalse(server.reload())
        self.assertEqual(server.reloadFailures, 1)
        serverApp, clientApp, _, _ = pair(server, ClientTLS("api.example", ca=self.caFile))
        self.assertEqual(clientApp.data, b"hello")

    def test_mismatchedKeyRefused(self):
        e = self.assertRaises(
            TLSFileError, ServerTLS, [CertificateFile(self.web.cert, self.api.key)]
        )
        self.assertIn("does not belong", str(e))
        e = self.assertRaises(
            TLSFileError, ServerTLS, [CertificateFile("/nonexistent.pem", self.web.key)]
        )
        self.assertIn("cannot read certificate file /nonexistent.pem", str(e))

    def test_expiries(self):
        server = self.server()
        [(path, expiry)] = server.expiries.items()
        self.assertEqual(path, self.web.cert)
        import time

        self.assertGreater(expiry, time.time() + 300 * 86400)

    def test_clientExpiriesFollowReloads(self):
        """
        A L{ClientContext} knows when its client certificate expires, by file:
        a reload that reads a new certificate updates it, a failed reload
        keeps the previous one (and is counted).
        """
        import time

        self.assertEqual(ClientContext(ca=self.caFile).expiries, {})
        directory = self.mktemp()
        os.makedirs(directory)
        certFile, keyFile = os.path.join(directory, "c.pem"), os.path.join(directory, "c.key")
        shutil.copy(self.caller.cert, certFile)
        shutil.copy(self.caller.key, keyFile)
        client = ClientContext(ca=self.caFile, cert=certFile, key=keyFile)
        [(path, expiry)] = client.expiries.items()
        self.assertEqual(path, certFile)
        self.assertGreater(expiry, time.time() + 300 * 86400)
        self.patch(certs, "LEAF_DAYS", 30)
        shorter = certs.issue(self.ca, "shorter", uris=("spiffe://mesh.local/caller",))
        shutil.copy(shorter.cert, certFile)
        shutil.copy(shorter.key, keyFile)
        self.assertTrue(client.reload())
        rotated = client.expiries[certFile]
        self.assertLess(rotated, time.time() + 31 * 86400)
        with open(certFile, "wb") as f:
            f.write(b"garbage")
        self.assertFalse(client.reload())
        self.assertEqual((client.expiries, client.reloadFailures), ({certFile: rotated}, 1))

    def test_failedReloadKeepsIdentityAndExpiries(self):
        """
        A reload that reads the first certificate and fails on the second
        leaves the listener's identity and expiries as they were.
        """
        directory = self.mktemp()
        os.makedirs(directory)
        paths = {}
        for name, issued in (("first", self.web), ("second", self.api)):
            paths[name] = (os.path.join(directory, name + ".pem"),
                           os.path.join(directory, name + ".key"))
            shutil.copy(issued.cert, paths[name][0])
            shutil.copy(issued.key, paths[name][1])
        server = ServerTLS([CertificateFile(*paths["first"]),
                            CertificateFile(*paths["second"], sni=("api.example",))])
        before = (server.identity, dict(server.expiries))
        shutil.copy(self.caller.cert, paths["first"][0])
        shutil.copy(self.caller.key, paths["first"][1])
        with open(paths["second"][1], "wb") as f:
            f.write(b"garbage")
        self.assertFalse(server.reload())
        self.assertEqual((server.identity, server.expiries), before)
        self.assertEqual(server.identity.name, "spiffe://mesh.local/web")
