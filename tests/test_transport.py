"""
Tests for L{meshproxy.transport}: the fast write path (and the private
Twisted attributes it relies on), the pause gate, and the connector.
"""

from twisted.internet import defer, error, tcp
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from meshproxy.discovery.endpoints import Endpoint
from meshproxy.transport.connector import IConnector, TCPConnector, describeConnectFailure
from meshproxy.transport.fastwrite import writerFor
from meshproxy.transport.gate import PauseGate

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
