"""
What is read before a connection's protocol starts
(L{meshproxy.transport.preamble}): with Twisted's C{iosim} pumps, the
ClientHello and PROXY header read in fragments, then handed on whole and
the reader stepped out of the path; oversized and garbage preambles
refused; and on the memory network, back-pressure and half-close through
a router that routed by SNI. Then, through the whole process
(L{MemoryProxy}): an HTTP router taking the client from a balancer's
header for C{X-Forwarded-For}, the access policy and C{trust}.
"""

import json

from twisted.internet import protocol
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.task import Clock
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from meshproxy.transport.preamble import IPreambleListener, Preamble, PreambleSettings
from meshproxy.transport.proxyprotocol import TrustedSenders, formatHeader
from tests.memory_support import MemoryNetwork, MemoryProxy, backends
from tests.support import okHandler
from tests.test_tcp_clienthello import realClientHello
from tests.test_tcp_router import Answerer, Client, MiB, Source
from tests.test_tcp_routing import LB, RouterTestCase

PEER = IPv4Address("TCP", "192.0.2.1", 40000)
BALANCER = IPv4Address("TCP", LB, 40001)
HOST = IPv4Address("TCP", "127.0.0.1", 4140)


@implementer(IPreambleListener, IHalfCloseableProtocol)
class Listener(protocol.Protocol):
    """
    A protocol that records what the preamble told it and what it read.
    """

    def __init__(self):
        self.told = None
        self.connectedWhenTold = None
        self.received = b""
        self.readEnded = False
        self.lostReason = None

    def preambleRead(self, proxied, serverName):
        self.told = (proxied, serverName)
        self.connectedWhenTold = self.connected

    def dataReceived(self, data):
        self.received += data

    def readConnectionLost(self):
        self.readEnded = True

    def writeConnectionLost(self):
        pass

    def connectionLost(self, reason):
        self.lostReason = reason


class Owner:
    """
    What a preamble needs of its router's factory.
    """

    draining = False

    def __init__(self):
        self.errors = []
        self.router = self

    def countError(self, reason):
        self.errors.append(reason)


class IOSimTestCase(SynchronousTestCase):
    def preamble(self, peer=PEER, **settings):
        """
        A L{Preamble} in front of a L{Listener}, connected by an C{iosim}
        pump to a client.

        @return: C{(listener, preamble, client, pump)}.
        """
        self.clock = Clock()
        self.owner = Owner()
        listener = Listener()
        reader = Preamble(
            listener, PreambleSettings(**settings), clock=self.clock, owner=self.owner
        )
        serverTransport = iosim.FakeTransport(reader, isServer=True, peerAddress=peer,
                                              hostAddress=HOST)
        client = protocol.Protocol()
        clientTransport = iosim.FakeTransport(client, isServer=False)
        pump = iosim.connect(reader, serverTransport, client, clientTransport, clock=self.clock)
        return listener, reader, client, pump

    def sendInPieces(self, client, pump, data, size):
        for i in range(0, len(data), size):
            client.transport.write(data[i : i + size])
            pump.flush()


class ClientHelloTests(IOSimTestCase):
    def test_fragmentedClientHello(self):
        """
        A ClientHello read a few bytes at a time is handed on whole, with
        its server name told first, and the preamble steps out of the
        connection's path.
        """
        listener, reader, client, pump = self.preamble(clientHello=True)
        hello = realClientHello("frag.example")
        self.sendInPieces(client, pump, hello[:-1], 7)
        self.assertIsNone(listener.told)
        self.assertFalse(listener.connected)
        client.transport.write(hello[-1:] + b"tail")
        pump.flush()
        self.assertEqual(listener.told, (None, "frag.example"))
        self.assertEqual(listener.connectedWhenTold, False)
        self.assertTrue(listener.connected)
        self.assertEqual(listener.received, hello + b"tail")
        transport = pump.serverIO
        self.assertIs(transport.protocol, listener)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        verifyObject(IPreambleListener, listener)

    def test_oversized(self):
        """
        A ClientHello larger than the bound closes the connection, counted;
        the protocol never starts.
        """
        listener, reader, client, pump = self.preamble(clientHello=True, maxClientHelloBytes=600)
        # A ClientHello of 636 bytes, in a record of 640.
        client.transport.write(b"\x16\x03\x01\x02\x80" + b"\x01\x00\x02\x7c" + b"\x03" * 620)
        pump.flush()
        self.assertEqual(self.owner.errors, ["client-hello-oversized"])
        self.assertTrue(pump.serverIO.disconnecting)
        self.assertFalse(listener.connected)
        self.assertIsNone(listener.lostReason)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_garbage(self):
        """
        Bytes that are not TLS close the connection at the first byte.
        """
        for garbage, reason in [
            (b"\x00\x01\x02", "client-hello-invalid"),
            (b"\x16\x03\x01\x00\x05\x02\x00\x00\x01\x00", "client-hello-invalid"),
            (b"\x16\x03\x01\x00\x00", "client-hello-invalid"),
        ]:
            listener, reader, client, pump = self.preamble(clientHello=True)
            client.transport.write(garbage)
            pump.flush()
            self.assertEqual(self.owner.errors, [reason], garbage)
            self.assertTrue(pump.serverIO.disconnecting)
            self.assertFalse(listener.connected)

    def test_proxySignatureFromAnUntrustedPeer(self):
        """
        Where headers are accepted from others, a PROXY signature from this
        peer is a refusal, not a bad ClientHello.
        """
        listener, reader, client, pump = self.preamble(
            clientHello=True, senders=TrustedSenders([LB + "/32"])
        )
        client.transport.write(b"PROXY TCP4 ")
        pump.flush()
        self.assertEqual(self.owner.errors, ["proxy-protocol-refused"])

    def test_timeout(self):
        listener, reader, client, pump = self.preamble(clientHello=True, clientHelloTimeout=3.0)
        client.transport.write(realClientHello("a.example")[:30])
        pump.flush()
        self.clock.advance(3)
        self.assertEqual(self.owner.errors, ["client-hello-timeout"])
        self.assertTrue(pump.serverIO.disconnecting)

    def test_endBeforeTheClientHello(self):
        """
        A client that ends its writing before its ClientHello is complete
        is closed.
        """
        listener, reader, client, pump = self.preamble(clientHello=True)
        client.transport.write(realClientHello("a.example")[:30])
        pump.flush()
        reader.readConnectionLost()
        self.assertEqual(self.owner.errors, ["client-hello-invalid"])

    def test_drainingCloses(self):
        """
        A connection whose preamble ends once its router's factory drains
        is closed rather than started.
        """
        listener, reader, client, pump = self.preamble(clientHello=True)
        self.owner.draining = True
        client.transport.write(realClientHello("a.example"))
        pump.flush()
        self.assertFalse(listener.connected)
        self.assertTrue(pump.serverIO.disconnecting)


class ProxyHeaderTests(IOSimTestCase):
    def test_headerInPieces(self):
        """
        A trusted peer's header read in pieces is told to the protocol; the
        bytes after it are the protocol's.
        """
        listener, reader, client, pump = self.preamble(
            peer=BALANCER, senders=TrustedSenders([LB + "/32"])
        )
        source = IPv4Address("TCP", "203.0.113.7", 5555)
        header = formatHeader(2, source, HOST)
        self.sendInPieces(client, pump, header + b"data", 3)
        proxied, name = listener.told
        self.assertEqual((proxied.source, name), (source, None))
        self.assertEqual(listener.received, b"data")

    def test_untrustedPeerHandedOnAtOnce(self):
        """
        An untrusted peer's connection starts at once; its first bytes are
        held only while they could still be a signature.
        """
        listener, reader, client, pump = self.preamble(senders=TrustedSenders([LB + "/32"]))
        self.assertTrue(listener.connected)
        self.assertEqual(listener.told, (None, None))
        client.transport.write(b"\r\n")
        pump.flush()
        self.assertEqual(listener.received, b"")
        client.transport.write(b"GET")
        pump.flush()
        self.assertEqual(listener.received, b"\r\nGET")
        self.assertIs(pump.serverIO.protocol, listener)

    def test_untrustedPeerHalfClosesWhileHeld(self):
        """
        What was held is passed on before the end of the client's writing.
        """
        listener, reader, client, pump = self.preamble(senders=TrustedSenders([LB + "/32"]))
        client.transport.write(b"PRO")
        pump.flush()
        reader.readConnectionLost()
        self.assertEqual(listener.received, b"PRO")
        self.assertTrue(listener.readEnded)

    def test_untrustedPeerHeldBytesReleasedInTime(self):
        listener, reader, client, pump = self.preamble(
            senders=TrustedSenders([LB + "/32"]), proxyTimeout=2.0
        )
        client.transport.write(b"\r\n\r\n")
        pump.flush()
        self.clock.advance(2)
        self.assertEqual(listener.received, b"\r\n\r\n")
        self.assertEqual(self.owner.errors, [])


class SplicedTests(RouterTestCase):
    """
    Back-pressure and half-close on a connection routed by its ClientHello
    (the preamble stepped out of its path), on the memory network.
    """

    def sniRouter(self, backendClass, **attributes):
        port, backend = self.backend(backendClass, **attributes)
        listen = self.router(
            "    identifier: {kind: sni}\n    rules: /svc => /#/static;\n", {"a.example": [port]}
        )
        return listen, backend

    def test_pausedReaderPausesTheUpstream(self):
        """
        A client that stops reading stops the proxy reading the upstream,
        whose writes then stop; once it reads again, everything arrives.
        """
        total = 8 * MiB
        listen, backend = self.sniRouter(Source, total=total, reactor=self.network)
        client = self.connect(listen, Client(keep=False))
        client.transport.pauseProducing()
        client.transport.write(realClientHello("a.example"))
        self.network.flush()
        [source] = backend.connections
        self.assertTrue(source.paused)
        self.assertLess(source.sent, total)
        self.assertLess(client.count, total)
        client.transport.resumeProducing()
        self.network.flush()
        self.assertEqual(client.count, total)

    def test_halfClose(self):
        """
        The client's end of writing reaches the upstream, whose answer
        still comes back.
        """
        listen, backend = self.sniRouter(Answerer)
        client = self.connect(listen)
        hello = realClientHello("a.example")
        client.transport.write(hello + b"x" * 1000)
        client.transport.loseWriteConnection()
        self.network.flush()
        self.assertEqual(client.received, b"got %d bytes" % (len(hello) + 1000,))
        self.assertIsNotNone(client.reason)


class HttpRouterTests(SynchronousTestCase):
    """
    An HTTP router accepting PROXY headers from a balancer, through the
    whole process as C{buildServices} wires it.
    """

    def proxy(self, accept, policy=""):
        network = MemoryNetwork()
        [(self.backend, port)] = backends(network, okHandler())
        text = (
            'admin: {listen: "tcp:0:interface=127.0.0.1"}\n'
            "namers: [{kind: static, prefix: /#/static, services: {hello: [\"127.0.0.1:%d\"]}}]\n"
            "routers:\n"
            "  - name: web\n"
            '    listen: "tcp:0:interface=127.0.0.1"\n'
            "    rules: /svc => /#/static;\n"
            "    proxyProtocol: %s\n" % (port, accept)
        ) + policy
        return MemoryProxy(self, text, network=network)

    def test_forwardedForIsTheHeadersClient(self):
        proxy = self.proxy("{accept: true, from: [%s/32]}" % (LB,))
        client = proxy.connect(peerHost=LB)
        source = IPv4Address("TCP", "203.0.113.9", 1234)
        client.transport.write(
            formatHeader(1, source, HOST) + b"GET / HTTP/1.1\r\nHost: hello\r\n\r\n"
        )
        proxy.network.flush()
        [request] = self.backend.requests
        self.assertEqual(request.header(b"x-forwarded-for"), b"203.0.113.9")
        client.transport.loseConnection()
        proxy.network.flush()

    def test_policyAndTrust(self):
        """
        The access policy and C{trust} judge the header's client.
        """
        proxy = self.proxy(
            "{accept: true, from: [%s/32]}" % (LB,),
            "    policy: {default: deny, rules: [{callers: [203.0.113.0/24]}]}\n",
        )
        statuses = []
        for host in ("203.0.113.9", "192.0.2.9"):
            client = proxy.connect(peerHost=LB)
            client.transport.write(
                formatHeader(2, IPv4Address("TCP", host, 1), HOST)
                + b"GET / HTTP/1.1\r\nHost: hello\r\nConnection: close\r\n\r\n"
            )
            proxy.network.flush()
            statuses.append(client.responses[0].status)
        self.assertEqual(statuses, [200, 403])

    def test_headerRefusedFromOthers(self):
        proxy = self.proxy("{accept: true, from: [%s/32]}" % (LB,))
        client = proxy.connect(peerHost="192.0.2.50")
        client.transport.write(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\nGET / HTTP/1.1\r\n\r\n")
        proxy.network.flush()
        self.assertEqual(self.backend.requests, [])
        self.assertEqual(client.responses, [])
        metrics = proxy.admin.get("/metrics")
        self.assertIn(
            b'meshproxy_errors_total{reason="proxy-protocol-refused",router="web"} 1.0',
            metrics.body,
        )
        # The others' requests pass.
        ok = proxy.send()
        self.assertEqual(ok.responses[0].status, 200)

    def test_stateAndRulesOfATcpRouter(self):
        """
        The admin API's rules store and explain work for TCP routers.
        """
        network = MemoryNetwork()
        [(backend, port)] = backends(network, okHandler())
        proxy = MemoryProxy(
            self,
            'admin: {listen: "tcp:0:interface=127.0.0.1"}\n'
            "namers: [{kind: static, prefix: /#/static, services: {pg: [\"127.0.0.1:%d\"]}}]\n"
            "routers:\n"
            "  - name: db\n"
            "    protocol: tcp\n"
            '    listen: "tcp:0:interface=127.0.0.1"\n'
            "    identifier: {kind: sni}\n"
            "    rules: /svc => /#/static;\n" % (port,),
            network=network,
        )
        rules = proxy.admin.get("/admin/routers/db/rules")
        self.assertEqual((rules.code, rules.body), (200, b"/svc => /#/static;"))
        etag = rules.headers.getRawHeaders(b"etag")[0]
        changed = proxy.admin.put(
            "/admin/routers/db/rules",
            b"/svc/a.example => /#/static/pg;",
            headers={b"if-match": etag, b"content-type": b"text/plain"},
        )
        self.assertEqual(changed.code, 200, changed.body)
        explained = json.loads(proxy.admin.get("/admin/routers/db/explain?host=a.example").body)
        self.assertEqual(explained["destination"], "/#/static/pg")
        state = json.loads(proxy.admin.get("/admin/state").body)["routers"]["db"]
        self.assertEqual(state["rules"], "/svc/a.example=>/#/static/pg")
        self.assertEqual(list(state["boundNames"]), ["/#/static/pg"])
