"""
Tests for L{meshproxy.transport.tls}: two L{TLSProtocol}s (a server made by
L{TLSServerFactory} with a L{ServerTLS}, and a client) over a
L{MemoryNetwork} connection, which models back-pressure and half-close as
Twisted's TCP transports do.
"""

import os
import ssl

from twisted.internet import error
from twisted.internet.interfaces import (
    IHalfCloseableProtocol,
    IHandshakeListener,
    INegotiated,
    IProtocol,
    IPushProducer,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from meshproxy import certs
from meshproxy.tls import CertificateFile, ServerTLS, identityOf
from meshproxy.transport.interfaces import IStreamTransport
from meshproxy.transport.tls import TLSProtocol, TLSServerFactory
from tests.memory_support import Instance, MemoryNetwork, MemoryProxy, sample
from tests.support import RawClient, okHandler


@implementer(IHandshakeListener)
class _App(Protocol):
    """
    One side's application: records what happens to it.
    """

    def __init__(self, greeting=b""):
        self.greeting = greeting
        self.data = b""
        self.handshaken = False
        self.lost = None
        self.events = []

    def connectionMade(self):
        if self.greeting:
            # Before the handshake: sent once it is over.
            self.transport.write(self.greeting)

    def handshakeCompleted(self):
        self.handshaken = True
        self.events.append("handshake")

    def dataReceived(self, data):
        self.data += data
        self.events.append("data")

    def connectionLost(self, reason):
        self.lost = reason
        self.events.append("lost")


@implementer(IHalfCloseableProtocol)
class _HalfCloseableApp(_App):
    def readConnectionLost(self):
        self.events.append("read-lost")

    def writeConnectionLost(self):
        self.events.append("write-lost")


@implementer(IPushProducer)
class _Producer:
    def __init__(self):
        self.events = []

    def pauseProducing(self):
        self.events.append("pause")

    def resumeProducing(self):
        self.events.append("resume")

    def stopProducing(self):
        self.events.append("stop")


class TLSProtocolTests(SynchronousTestCase):
    def setUp(self):
        ca = self.mktemp()
        certs.initAuthority(ca)
        self.caFile = os.path.join(ca, "ca.pem")
        self.web = certs.issue(ca, "web", uris=("spiffe://mesh.local/web",))
        self.caller = certs.issue(ca, "caller", uris=("spiffe://mesh.local/caller",))
        self.network = MemoryNetwork()
        self.REQUIRED = {"clientCA": self.caFile, "verify": "required"}

    def listen(self, app, **kw):
        """
        Listen with a TLS server whose connection protocol is C{app}.

        @return: the port.
        """
        server = ServerTLS([CertificateFile(self.web.cert, self.web.key)], **kw)
        self.factory = TLSServerFactory(Factory.forProtocol(lambda: app), server)
        return self.network.listenTCP(0, self.factory).getHost().port

    def client(self, app, *, ca=None, cert=None):
        """
        A client TLS protocol carrying C{app}, verifying the server's
        certificate against C{ca} (the test CA by default).
        """
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(ca or self.caFile)
        ctx.set_alpn_protocols(["h2", "http/1.1"])
        if cert is not None:
            ctx.load_cert_chain(cert.cert, cert.key)
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = ctx.wrap_bio(incoming, outgoing, server_hostname="web")
        return TLSProtocol(app, tls, incoming, outgoing)

    def connect(self, serverApp, clientApp, *, listen=None, **client):
        """
        Connect a client carrying C{clientApp} to a server carrying
        C{serverApp}, and settle the network.

        @return: the server's and the client's TLS protocols.
        """
        port = self.listen(serverApp, **(listen or {}))
        clientTLS = self.client(clientApp, **client)
        self.network.connectClient(port, clientTLS)
        return serverApp.transport, clientTLS

    def test_interfaces(self):
        """
        A TLS protocol is the transport its protocol expects of a TCP
        connection, with the TLS details: L{IStreamTransport} and
        L{INegotiated} (so L{ISSLTransport}).
        """
        serverTLS, clientTLS = self.connect(_App(), _App())
        for tls in (serverTLS, clientTLS):
            verifyObject(IStreamTransport, tls)
            verifyObject(INegotiated, tls)
            verifyObject(IProtocol, tls)

    def test_exchange(self):
        """
        After the handshake both sides hear of it, the bytes written before
        it arrive, in order, then those written after; ALPN chose
        C{http/1.1}, the client sees the server's certificate and the server
        none (none asked).
        """
        serverApp, clientApp = _App(b"from server"), _App(b"from client")
        serverTLS, clientTLS = self.connect(serverApp, clientApp)
        self.assertTrue(serverApp.handshaken and clientApp.handshaken)
        self.assertEqual((serverApp.data, clientApp.data), (b"from client", b"from server"))
        clientTLS.write(b"more")
        clientTLS.writeSequence([b" and ", b"more"])
        self.network.flush()
        self.assertEqual(serverApp.data, b"from clientmore and more")
        self.assertEqual(serverTLS.negotiatedProtocol, b"http/1.1")
        self.assertEqual(clientTLS.negotiatedProtocol, b"http/1.1")
        self.assertEqual(
            identityOf(clientTLS.getPeerCertificate()).name, "spiffe://mesh.local/web"
        )
        self.assertIsNone(serverTLS.getPeerCertificate())
        self.assertEqual(serverTLS.getPeer(), serverTLS.transport.getPeer())
        self.assertEqual(serverTLS.getHost(), serverTLS.transport.getHost())

    def test_largeWrites(self):
        """
        Writes larger than a TLS record arrive whole.
        """
        serverApp, clientApp = _App(), _App()
        serverTLS, _ = self.connect(serverApp, clientApp)
        body = os.urandom(300_000)
        serverTLS.write(body)
        self.network.flush()
        self.assertEqual(clientApp.data, body)

    def _records(self, clientTLS, *writes):
        """
        What the client's TLS sends for C{writes}, one record (or more) a
        write, without sending it.
        """
        for data in writes:
            clientTLS._tls.write(data)
        return clientTLS._outgoing.read()

    def test_smallRecordsInOneRead(self):
        """
        Several small records read at once (fewer bytes than a record
        holds) arrive whole and in order.
        """
        serverApp, clientApp = _App(), _App()
        serverTLS, clientTLS = self.connect(serverApp, clientApp)
        records = self._records(clientTLS, b"a" * 50, b"b" * 60, b"c" * 70)
        self.assertLess(len(records), 512)
        serverTLS.dataReceived(records)
        self.assertEqual(serverApp.data, b"a" * 50 + b"b" * 60 + b"c" * 70)

    def test_recordEndingInASmallRead(self):
        """
        A record whose last few bytes come in a read of their own arrives
        whole, and not in pieces the size of that read: the plaintext of a
        record begun earlier may be larger than the bytes that complete it.
        """
        serverApp, clientApp = _App(), _App()
        serverTLS, clientTLS = self.connect(serverApp, clientApp)
        body = os.urandom(4000)
        record = self._records(clientTLS, body)
        serverTLS.dataReceived(record[:-100])
        self.assertEqual(serverApp.data, b"")
        serverTLS.dataReceived(record[-100:])
        self.assertEqual(serverApp.data, body)
        self.assertLessEqual(len(serverApp.events), 3)

    def test_noALPNForProtocolsNotOffered(self):
        """
        A listener that offers no ALPN protocol (a TCP router's) answers
        none, and the handshake goes on.
        """
        serverApp, clientApp = _App(), _App(b"hi")
        serverTLS, clientTLS = self.connect(serverApp, clientApp, listen={"protocols": ()})
        self.assertEqual(serverApp.data, b"hi")
        self.assertIsNone(clientTLS.negotiatedProtocol)

    def test_writerBackPressure(self):
        """
        A producer registered on the TLS transport is paused when the TCP
        transport beneath holds too much unread, and resumed once the peer
        reads again.
        """
        serverApp, clientApp = _App(), _App()
        serverTLS, clientTLS = self.connect(serverApp, clientApp)
        producer = _Producer()
        serverTLS.registerProducer(producer, True)
        clientTLS.pauseProducing()
        self.assertFalse(clientTLS.transport.reading)
        serverTLS.write(b"x" * 200_000)
        self.network.flush()
        self.assertEqual(producer.events, ["pause"])
        self.assertTrue(serverTLS.producerPaused)
        self.assertEqual(clientApp.data, b"")
        clientTLS.resumeProducing()
        self.network.flush()
        self.assertEqual(producer.events, ["pause", "resume"])
        self.assertFalse(serverTLS.producerPaused)
        self.assertEqual(clientApp.data, b"x" * 200_000)
        serverTLS.unregisterProducer()
        self.assertIsNone(serverTLS.transport.producer)

    def test_loseConnectionSendsCloseNotify(self):
        """
        C{loseConnection} sends what was written, then a close_notify: the
        peer reads it all and both sides see a clean close.
        """
        serverApp, clientApp = _App(), _App()
        serverTLS, clientTLS = self.connect(serverApp, clientApp)
        serverTLS.write(b"bye")
        serverTLS.loseConnection()
        serverTLS.write(b"too late")
        self.network.flush()
        self.assertEqual(clientApp.data, b"bye")
        self.assertTrue(clientTLS._readEnded)
        self.assertEqual(clientApp.events[-1], "lost")
        clientApp.lost.trap(error.ConnectionDone)
        serverApp.lost.trap(error.ConnectionDone)
        self.network.assertNothingOpen()

    def test_stopProducingClosesCleanly(self):
        """
        A consumer that stops the TLS transport as its producer (the other
        side of a tunnel went away) closes it as C{loseConnection} does.
        """
        serverApp, clientApp = _App(), _App()
        serverTLS, clientTLS = self.connect(serverApp, clientApp)
        serverTLS.stopProducing()
        self.network.flush()
        self.assertTrue(clientTLS._readEnded)
        clientApp.lost.trap(error.ConnectionDone)
        serverApp.lost.trap(error.ConnectionDone)

    def test_truncationIsConnectionLost(self):
        """
        A TCP connection that ends without a close_notify is reported as
        L{ConnectionLost}, not as a clean close.
        """
        serverApp, clientApp = _App(), _App()
        serverTLS, clientTLS = self.connect(serverApp, clientApp)
        serverTLS.write(b"partial")
        serverTLS.transport.loseConnection()
        self.network.flush()
        self.assertEqual(clientApp.data, b"partial")
        clientApp.lost.trap(error.ConnectionLost)

    def test_halfClose(self):
        """
        C{loseWriteConnection} sends a close_notify and ends the TCP
        writing: a half-closeable peer hears C{readConnectionLost} and may
        still write, which the half-closed side reads; the peer's own close
        then ends the connection cleanly.
        """
        serverApp, clientApp = _HalfCloseableApp(), _HalfCloseableApp()
        serverTLS, clientTLS = self.connect(serverApp, clientApp)
        clientTLS.write(b"request")
        clientTLS.loseWriteConnection()
        self.network.flush()
        self.assertEqual(serverApp.data, b"request")
        self.assertEqual(serverApp.events[-1], "read-lost")
        self.assertIn("write-lost", clientApp.events)
        self.assertIsNone(clientApp.lost)
        serverTLS.write(b"response")
        self.network.flush()
        self.assertEqual(clientApp.data, b"response")
        serverTLS.loseConnection()
        self.network.flush()
        self.assertEqual(clientApp.events[-2:], ["read-lost", "lost"])
        clientApp.lost.trap(error.ConnectionDone)
        serverApp.lost.trap(error.ConnectionDone)
        self.network.assertNothingOpen()

    def test_closeNotifyToAProtocolThatCannotHalfClose(self):
        """
        A protocol that cannot be half-closed has its connection closed by
        the peer's close_notify, answered by ours.
        """
        serverApp, clientApp = _App(), _HalfCloseableApp()
        serverTLS, clientTLS = self.connect(serverApp, clientApp)
        clientTLS.loseWriteConnection()
        self.network.flush()
        serverApp.lost.trap(error.ConnectionDone)
        self.assertIn("read-lost", clientApp.events)
        clientApp.lost.trap(error.ConnectionDone)

    def test_failedHandshake(self):
        """
        A client that does not trust the server's CA fails the handshake:
        both sides' protocols lose the connection with an L{ssl.SSLError},
        without a byte or a completed handshake.
        """
        other = self.mktemp()
        certs.initAuthority(other)
        serverApp, clientApp = _App(b"secret"), _App(b"secret")
        self.connect(serverApp, clientApp, ca=os.path.join(other, "ca.pem"))
        self.assertEqual(clientApp.events, ["lost"])
        self.assertEqual(serverApp.events, ["lost"])
        clientApp.lost.trap(ssl.SSLCertVerificationError)
        serverApp.lost.trap(ssl.SSLError)
        self.network.assertNothingOpen()

    def test_clientCertificateRequiredAndMissing(self):
        """
        A listener requiring a client certificate refuses a client without
        one: its protocol sees an L{ssl.SSLError} and no byte.
        """
        serverApp, clientApp = _App(), _App(b"hello")
        self.connect(
            serverApp, clientApp, listen={"clientCA": self.caFile, "verify": "required"}
        )
        self.assertEqual(serverApp.events, ["lost"])
        serverApp.lost.trap(ssl.SSLError)
        # (TLS 1.3: the client finished its handshake before the server
        # refused it.)
        clientApp.lost.trap(ssl.SSLError)
        self.assertEqual(clientApp.data, b"")
        self.network.assertNothingOpen()

    def test_clientCertificateRequiredAndGiven(self):
        """
        A client certificate signed by the CA is accepted, and read by the
        server's protocol.
        """
        serverApp, clientApp = _App(), _App(b"hello")
        serverTLS, _ = self.connect(
            serverApp,
            clientApp,
            listen={"clientCA": self.caFile, "verify": "required"},
            cert=self.caller,
        )
        self.assertEqual(serverApp.data, b"hello")
        self.assertEqual(
            identityOf(serverTLS.getPeerCertificate()).name, "spiffe://mesh.local/caller"
        )

    def test_sessionResumed(self):
        """
        A client that kept its session resumes it on its next connection
        (TLS 1.3 tickets, TLS 1.2 session IDs or tickets), also where a
        client certificate is required; one from another listener's
        session is not resumed.
        """
        for version in (ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2):
            for listen, cert in (({}, None), (self.REQUIRED, self.caller)):
                port = self.listen(_App(b"ticket"), **listen)
                ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
                ctx.load_verify_locations(self.caFile)
                ctx.maximum_version = version
                if cert is not None:
                    ctx.load_cert_chain(cert.cert, cert.key)

                def connect(session, port=port, ctx=ctx):
                    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
                    tls = ctx.wrap_bio(incoming, outgoing, server_hostname="web",
                                       session=session)
                    clientApp = _App()
                    self.network.connectClient(port, TLSProtocol(clientApp, tls, incoming,
                                                                 outgoing))
                    self.assertEqual(clientApp.data, b"ticket")
                    clientApp.transport.loseConnection()
                    self.network.flush()
                    return tls

                first = connect(None)
                self.assertFalse(first.session_reused)
                again = connect(first.session)
                self.assertTrue(again.session_reused, (version, listen))
                other = self.listen(_App(b"ticket"), **listen)
                self.assertFalse(connect(first.session, port=other).session_reused)

    def test_loseConnectionDuringHandshakeAborts(self):
        """
        C{loseConnection} before the handshake is over, with nothing
        written, aborts the connection (no close_notify can be sent yet).
        """
        serverApp = _App()
        port = self.listen(serverApp)
        clientApp = _App()
        clientTLS = self.client(clientApp)
        self.network._link(clientTLS, self.factory, "127.0.0.1", port)
        serverApp.transport.loseConnection()
        self.network.flush()
        self.assertFalse(serverApp.handshaken)
        serverApp.lost.trap(error.ConnectionAborted)
        self.network.assertNothingOpen()

    def test_abortConnection(self):
        """
        C{abortConnection} closes at once: nothing more is written or read.
        """
        serverApp, clientApp = _App(), _App()
        serverTLS, clientTLS = self.connect(serverApp, clientApp)
        clientTLS.write(b"unread")
        serverTLS.abortConnection()
        serverTLS.write(b"dropped")
        self.network.flush()
        self.assertEqual((serverApp.data, clientApp.data), (b"", b""))
        serverApp.lost.trap(error.ConnectionAborted)
        clientApp.lost.trap(error.ConnectionLost)

    def test_refusedConnection(self):
        """
        A factory that refuses a connection (L{None}) refuses it in TLS too.
        """
        class Refusing(Factory):
            def buildProtocol(self, addr):
                return None

        server = ServerTLS([CertificateFile(self.web.cert, self.web.key)])
        self.assertIsNone(TLSServerFactory(Refusing(), server).buildProtocol(None))

    def test_factoryStartsAndStopsTheWrappedOne(self):
        """
        Listening with the TLS factory starts the wrapped factory, and
        stopping stops it.
        """
        inner = Factory.forProtocol(_App)
        server = ServerTLS([CertificateFile(self.web.cert, self.web.key)])
        port = self.network.listenTCP(0, TLSServerFactory(inner, server))
        self.assertEqual(inner.numPorts, 1)
        port.stopListening()
        self.assertEqual(inner.numPorts, 0)


class ProxyOverTLSTests(SynchronousTestCase):
    """
    meshproxy's routers behind L{TLSServerFactory}, built from a config on a
    L{MemoryNetwork}: requests over TLS on a keep-alive connection, and a
    client whose handshake fails counted as C{client-tls-failed}.
    """

    def setUp(self):
        ca = self.mktemp()
        certs.initAuthority(ca)
        self.caFile = os.path.join(ca, "ca.pem")
        self.web = certs.issue(ca, "web", uris=("spiffe://mesh.local/web",))
        self.caller = certs.issue(ca, "caller", uris=("spiffe://mesh.local/caller",))
        self.network = MemoryNetwork()
        backend = Instance(self.network, okHandler(b"hello"))
        port = backend.start()
        self.backend = backend
        tls = (
            "    tls:\n"
            f"      certificates: [{{cert: {self.web.cert}, key: {self.web.key}}}]\n"
            f"      clientCertificates: {{ca: {self.caFile}, verify: required}}\n"
        )
        self.proxy = MemoryProxy(
            self,
            'admin: {listen: "tcp:port=0:interface=127.0.0.1"}\n'
            f'namers: [{{kind: static, prefix: /#/s, services: {{hello: ["127.0.0.1:{port}"]}}}}]\n'
            "routers:\n"
            "  - name: web\n"
            '    listen: "tcp:0:interface=127.0.0.1"\n'
            '    rules: "/svc => /#/s;"\n' + tls + "  - name: db\n"
            "    protocol: tcp\n"
            '    listen: "tcp:0:interface=127.0.0.1"\n'
            "    destination: /#/s/hello\n" + tls,
            network=self.network,
        )
        self.ports = [
            s.port.getHost().port
            for s in self.proxy.services
            if hasattr(s, "whenBound") and s.owner.startswith("router")
        ]

    def connect(self, port, app, cert=None):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(self.caFile)
        ctx.check_hostname = False
        if cert is not None:
            ctx.load_cert_chain(cert.cert, cert.key)
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = TLSProtocol(app, ctx.wrap_bio(incoming, outgoing), incoming, outgoing)
        self.network.connectClient(port, tls)
        return tls

    def errors(self, router):
        return sample(
            self.proxy.scrape(), "meshproxy_errors_total", router=router,
            reason="client-tls-failed",
        )

    def test_requestsOnAKeepAliveConnection(self):
        """
        Two requests over one TLS connection are answered; the upstream is
        told who the caller is.
        """
        client = RawClient()
        tls = self.connect(self.ports[0], client, cert=self.caller)
        for _ in range(2):
            tls.write(b"GET /x HTTP/1.1\r\nHost: hello\r\n\r\n")
            self.network.flush()
        self.assertEqual([r.status for r in client.responses], [200, 200])
        self.assertIn(
            b"URI=spiffe://mesh.local/caller",
            self.backend.requests[0].header(b"x-forwarded-client-cert"),
        )
        tls.loseConnection()
        self.network.flush()

    def test_failedHandshakeCounted(self):
        """
        A client without the required certificate is refused, and counted
        as C{client-tls-failed} by the HTTP and the TCP router.
        """
        for port, router in zip(self.ports, ("web", "db"), strict=True):
            self.assertEqual(self.errors(router), 0)
            client = RawClient()
            self.connect(port, client)
            self.network.flush()
            self.assertEqual(client.raw, b"")
            self.assertEqual(self.errors(router), 1)
        self.assertEqual(self.backend.requests, [])

    def outbound(self, serverName):
        """
        A second proxy, originating mTLS (the caller's certificate) to the
        HTTP router, expecting it to be C{serverName}.

        @return: the proxy.
        """
        return MemoryProxy(
            self,
            'admin: {listen: "tcp:port=0:interface=127.0.0.1"}\n'
            "namers: [{kind: static, prefix: /#/mesh, services: "
            f'{{hello: ["127.0.0.1:{self.ports[0]}"]}}}}]\n'
            "routers:\n"
            "  - name: out\n"
            '    listen: "tcp:0:interface=127.0.0.1"\n'
            '    rules: "/svc => /#/mesh;"\n'
            "    upstreamTls:\n"
            f"      ca: {self.caFile}\n"
            f'      serverName: "{serverName}"\n'
            f"      cert: {self.caller.cert}\n"
            f"      key: {self.caller.key}\n",
            network=self.network,
        )

    def test_originatedMutualTLS(self):
        """
        A proxy originating TLS with a client certificate reaches the TLS
        listener, which reads the caller's identity; its connection is kept
        and reused.
        """
        out = self.outbound("spiffe://mesh.local/web")
        for _ in range(2):
            client = out.exchange(b"GET /x HTTP/1.1\r\nHost: hello\r\n\r\n")
            self.assertEqual(client.responses[0].status, 200, client.responses[0].body)
        self.assertEqual(len(self.backend.requests), 2)
        self.assertIn(
            b"URI=spiffe://mesh.local/caller",
            self.backend.requests[0].header(b"x-forwarded-client-cert"),
        )
        self.assertEqual(self.proxy.router("web").connStats.opened, 1)

    def test_originatedTLSToAnotherIdentityRefused(self):
        """
        An upstream whose certificate names another identity (a URI, or a
        DNS name) is refused after the handshake: 502 C{upstream-tls}, and
        no request is sent.
        """
        for serverName in ("spiffe://mesh.local/other", "other.mesh.local"):
            out = self.outbound(serverName)
            client = out.exchange(b"GET /x HTTP/1.1\r\nHost: hello\r\n\r\n")
            [response] = client.responses
            self.assertEqual(response.status, 502)
            self.assertEqual(response.header(b"mesh-err"), b"upstream-tls")
            self.assertIn(b"certificate for another identity", response.body)
        self.assertEqual(self.backend.requests, [])

