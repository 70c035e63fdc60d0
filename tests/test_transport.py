"""
Tests for L{meshproxy.transport}: the fast write path (and the private
Twisted attributes it relies on), the pause gate, and the connector.
"""

import socket

from twisted.internet import defer, error, tcp
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from meshproxy.discovery.endpoints import Endpoint
from meshproxy.transport.connector import (
    DialEndpoint,
    IConnector,
    TCPConnector,
    describeConnectFailure,
)
from meshproxy.transport.dial import DialedClient
from meshproxy.transport.fastwrite import writerFor
from meshproxy.transport.gate import PauseGate
from tests.test_tcp_router import deadPort, waitUntil

#: What the fast write path reads of Twisted's TCP transports. If a Twisted
#: release renames one of these, the test below fails loudly instead of the
#: fast path silently writing out of order.
PRIVATE_ATTRIBUTES = (
    "_tempDataBuffer",
    "offset",
    "dataBuffer",
    "connected",
    "disconnecting",
    "_writeDisconnected",
    "socket",
)


class _Collect(Protocol):
    def __init__(self):
        self.data = b""
        self.got = defer.Deferred()
        self.want = 0

    def dataReceived(self, data):
        self.data += data
        if len(self.data) >= self.want and not self.got.called:
            self.got.callback(self.data)


class FastWriteTests(TestCase):
    timeout = 10

    @defer.inlineCallbacks
    def connectedPair(self):
        from twisted.internet import reactor

        server = _Collect()
        port = reactor.listenTCP(0, Factory.forProtocol(lambda: server), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        client = yield TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port).connect(
            Factory.forProtocol(Protocol)
        )
        self.addCleanup(client.transport.abortConnection)
        return client, server

    @defer.inlineCallbacks
    def test_twistedPrivateAttributes(self):
        """
        The attributes the fast path reads exist on a connected TCP
        transport of the installed Twisted, with the types it expects.
        """
        client, server = yield self.connectedPair()
        transport = client.transport
        self.assertIsInstance(transport, tcp.Client)
        for name in PRIVATE_ATTRIBUTES:
            self.assertTrue(
                hasattr(transport, name),
                "Twisted's tcp.Client has no %r any more: meshproxy.transport.fastwrite "
                "must be updated for this Twisted release" % (name,),
            )
        self.assertIsInstance(transport._tempDataBuffer, list)
        self.assertIsInstance(transport.dataBuffer, bytes)
        self.assertIsInstance(transport.offset, int)

    @defer.inlineCallbacks
    def test_fastPathSendsInOrder(self):
        """
        Writes through the fast path arrive whole and in order, also when
        some are buffered by the transport in between.
        """
        client, server = yield self.connectedPair()
        write = writerFor(client.transport)
        self.assertIsNot(write, client.transport.write)
        server.want = 6 + 2 * 1024 * 1024
        write(b"one")
        # Too much for the socket at once: the rest is buffered, and what
        # follows must queue behind it.
        write(b"x" * (2 * 1024 * 1024))
        write(b"two")
        data = yield server.got
        self.assertEqual(data[:3], b"one")
        self.assertEqual(data[-3:], b"two")
        self.assertEqual(len(data), server.want)

    def test_otherTransportsWriteAsUsual(self):
        transport = StringTransport()
        self.assertEqual(writerFor(transport), transport.write)


class PauseGateTests(SynchronousTestCase):
    def test_pausedUntilEveryReasonIsGone(self):
        transport = StringTransport()
        gate = PauseGate(transport)
        gate.pause("a")
        gate.pause("b")
        self.assertEqual(transport.producerState, "paused")
        gate.resume("a")
        self.assertTrue(gate.paused)
        self.assertEqual(transport.producerState, "paused")
        gate.resume("b")
        self.assertFalse(gate.paused)
        self.assertEqual(transport.producerState, "producing")

    def test_producerReason(self):
        transport = StringTransport()
        gate = PauseGate(transport, producerReason="upstream")
        gate.pauseProducing()
        self.assertTrue(gate.pausedFor("upstream"))
        gate.resumeProducing()
        self.assertFalse(gate.paused)
        gate.pauseProducing()
        gate.stopProducing()
        self.assertFalse(gate.paused)
        self.assertEqual(transport.producerState, "producing")

    def test_neverResumedOnceEnded(self):
        transport = StringTransport()
        gate = PauseGate(transport)
        gate.pause("a")
        gate.ended = True
        gate.resume("a")
        self.assertFalse(gate.paused)
        self.assertEqual(transport.producerState, "paused")


class ConnectorTests(SynchronousTestCase):
    def test_interface(self):
        verifyObject(IConnector, TCPConnector(MemoryReactorClock(), 2.0))

    def test_endpointsCachedPerAddress(self):
        connector = TCPConnector(MemoryReactorClock(), 2.0)
        a = connector.endpointFor(Endpoint("127.0.0.1", 80))
        self.assertIs(connector.endpointFor(Endpoint("127.0.0.1", 80, 2.0)), a)
        self.assertIsInstance(a, TCP4ClientEndpoint)
        self.assertIsInstance(connector.endpointFor(Endpoint("::1", 80)), TCP6ClientEndpoint)
        self.assertIsNot(connector.endpointFor(Endpoint("127.0.0.1", 81)), a)

    def test_cacheBounded(self):
        connector = TCPConnector(MemoryReactorClock(), 2.0)
        connector.MAX_CACHED = 3
        for port in range(1, 11):
            connector.endpointFor(Endpoint("127.0.0.1", port))
        self.assertLessEqual(len(connector._endpoints), 3)

    def test_connectWithTimeout(self):
        reactor = MemoryReactorClock()
        connector = TCPConnector(reactor, 0.25)
        d = connector.connect(Endpoint("10.0.0.1", 5432), Factory.forProtocol(Protocol))
        [(host, port, factory, timeout, bindAddress)] = reactor.tcpClients
        self.assertEqual((host, port, timeout), ("10.0.0.1", 5432, 0.25))
        factory.clientConnectionFailed(None, Failure(error.ConnectionRefusedError()))
        self.failureResultOf(d, error.ConnectionRefusedError)

    def test_memoryReactorKeepsTwistedEndpoints(self):
        """
        A reactor that is not a POSIX one (the tests' memory reactors) is
        still reached through Twisted's endpoints, IP address or not.
        """
        connector = TCPConnector(MemoryReactorClock(), 2.0)
        self.assertIsInstance(connector.endpointFor(Endpoint("10.0.0.1", 80)), TCP4ClientEndpoint)

    def test_describeFailures(self):
        cases = [
            (error.ConnectionRefusedError(), "refused the connection"),
            (error.TimeoutError(), "did not accept the connection within 2s"),
            (error.DNSLookupError(), "could not be resolved"),
            (error.NoRouteError(), "is unreachable (no route)"),
        ]
        for exception, words in cases:
            self.assertEqual(describeConnectFailure(Failure(exception), 2.0), words)
        self.assertEqual(
            describeConnectFailure(Failure(error.TimeoutError())),
            "did not accept the connection in time",
        )
        other = describeConnectFailure(Failure(error.ConnectError("boom")))
        self.assertTrue(other.startswith("could not be connected to ("), other)


class _Made(Protocol):
    """
    Keeps what it reads, and whether its transport was its own when
    C{connectionMade} ran.
    """

    def __init__(self):
        self.received = b""
        self.ownTransport = None

    def connectionMade(self):
        self.ownTransport = getattr(self.transport, "protocol", None) is self

    def dataReceived(self, data):
        self.received += data


class _Hello(Protocol):
    def connectionMade(self):
        self.transport.write(b"hello")


class DialConnectorTests(TestCase):
    """
    L{TCPConnector} on the global (POSIX) reactor: IP addresses are dialed
    (L{DialEndpoint}), and the protocol is the transport's own.
    """

    timeout = 10

    def setUp(self):
        from twisted.internet import reactor

        self.reactor = reactor
        self.connector = TCPConnector(reactor, 5.0)

    def listen(self):
        server = Factory.forProtocol(_Hello)
        server.noisy = False
        accepted = []
        build = server.buildProtocol

        def buildProtocol(addr):
            p = build(addr)
            accepted.append(p)
            return p

        server.buildProtocol = buildProtocol
        port = self.reactor.listenTCP(0, server, interface="127.0.0.1")

        def cleanup():
            for p in accepted:
                p.transport.abortConnection()
            return port.stopListening()

        self.addCleanup(cleanup)
        return port.getHost().port

    def fullBacklog(self):
        """
        A listening socket never accepting, whose backlog is full (a
        connection to it stays pending).
        """
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        self.addCleanup(listener.close)
        for _ in range(4):
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(listener.getsockname())
            self.addCleanup(s.close)
        return listener.getsockname()[1]

    def test_ipAddressesDialed(self):
        """
        An IPv4 or IPv6 address gets a L{DialEndpoint} (cached); a host name
        Twisted's endpoint, which resolves it.
        """
        a = self.connector.endpointFor(Endpoint("127.0.0.1", 80))
        self.assertIsInstance(a, DialEndpoint)
        self.assertIs(self.connector.endpointFor(Endpoint("127.0.0.1", 80)), a)
        verifyObject(IStreamClientEndpoint, a)
        self.assertIsInstance(self.connector.endpointFor(Endpoint("::1", 80)), DialEndpoint)
        self.assertIsInstance(
            self.connector.endpointFor(Endpoint("localhost", 80)), TCP4ClientEndpoint
        )

    @defer.inlineCallbacks
    def test_protocolIsTheTransportsOwn(self):
        """
        The connection's protocol is the factory's, with no wrapper between
        it and the transport (a dialed, plain TCP one), connected before the
        Deferred fires, and reading from the transport directly.
        """
        port = self.listen()
        made = yield self.connector.connect(
            Endpoint("127.0.0.1", port), Factory.forProtocol(_Made)
        )
        self.addCleanup(made.transport.abortConnection)
        self.assertIsInstance(made, _Made)
        self.assertTrue(made.ownTransport)
        self.assertIs(type(made.transport), DialedClient)
        self.assertIs(made.transport.protocol, made)
        self.assertEqual(made.transport.logPrefix(), "_Made,client")
        yield waitUntil(self.reactor, lambda: made.received == b"hello")

    @defer.inlineCallbacks
    def test_refused(self):
        """
        A refused connection fails the Deferred with
        L{error.ConnectionRefusedError}, on a later turn of the reactor.
        """
        d = self.connector.connect(Endpoint("127.0.0.1", deadPort()), Factory.forProtocol(_Made))
        self.assertNoResult(d)
        with self.assertRaises(error.ConnectionRefusedError):
            yield d

    @defer.inlineCallbacks
    def test_connectTimeout(self):
        """
        A connection not made within the connector's timeout fails with
        L{error.TimeoutError}, worded with the timeout.
        """
        connector = TCPConnector(self.reactor, 0.2)
        d = connector.connect(Endpoint("127.0.0.1", self.fullBacklog()), Factory.forProtocol(_Made))
        self.assertNoResult(d)
        [failure] = yield d.addErrback(lambda f: [f])
        self.assertTrue(failure.check(error.TimeoutError))
        self.assertEqual(
            describeConnectFailure(failure, connector.timeout),
            "did not accept the connection within 0.2s",
        )

    def test_cancel(self):
        """
        Cancelling a pending connection fails its Deferred with
        L{error.ConnectingCancelledError} naming the address, and leaves no
        timer behind.
        """
        before = len(self.reactor.getDelayedCalls())
        port = self.fullBacklog()
        d = self.connector.connect(Endpoint("127.0.0.1", port), Factory.forProtocol(_Made))
        self.assertNoResult(d)
        d.cancel()
        failure = self.failureResultOf(d, error.ConnectingCancelledError)
        self.assertEqual(failure.value.address.port, port)
        self.assertEqual(len(self.reactor.getDelayedCalls()), before)

    def test_factoryFails(self):
        """
        A factory that raises, or builds no protocol, fails the Deferred
        (the exception, or L{error.NoProtocol}) and the connection is
        dropped.
        """
        port = self.listen()

        class Broken(Factory):
            def buildProtocol(self, addr):
                raise ValueError("no")

        class Nothing(Factory):
            def buildProtocol(self, addr):
                return None

        self.failureResultOf(
            self.connector.connect(Endpoint("127.0.0.1", port), Broken()), ValueError
        )
        self.failureResultOf(
            self.connector.connect(Endpoint("127.0.0.1", port), Nothing()), error.NoProtocol
        )
