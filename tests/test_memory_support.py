"""
Tests for L{tests.memory_support}: the memory network behaves as its
docstring says (as Twisted's TCP transports report things), since the
tests of the routers' logic rely on it.
"""

import random

from twisted.internet import error, protocol
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.interfaces import IHalfCloseableProtocol, IPushProducer
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from tests.memory_support import MemoryNetwork, seedRandomness


@implementer(IHalfCloseableProtocol)
class Recorder(protocol.Protocol):
    """
    Keeps what it receives and how its connection ended.
    """

    def __init__(self):
        self.received = b""
        self.events = []
        self.reason = None

    def connectionMade(self):
        self.events.append("made")

    def dataReceived(self, data):
        self.received += data

    def readConnectionLost(self):
        self.events.append("read lost")

    def writeConnectionLost(self):
        self.events.append("write lost")

    def connectionLost(self, reason):
        self.events.append("lost")
        self.reason = reason.value


class Plain(protocol.Protocol):
    """
    A protocol that cannot be half-closed.
    """

    def __init__(self):
        self.received = b""
        self.reason = None

    def dataReceived(self, data):
        self.received += data

    def connectionLost(self, reason):
        self.reason = reason.value


@implementer(IPushProducer)
class Producer:
    def __init__(self):
        self.state = "producing"

    def pauseProducing(self):
        self.state = "paused"

    def resumeProducing(self):
        self.state = "producing"

    def stopProducing(self):
        self.state = "stopped"


class MemoryNetworkTests(SynchronousTestCase):
    def setUp(self):
        self.network = MemoryNetwork()
        self.servers = []

        def build():
            server = Recorder()
            self.servers.append(server)
            return server

        self.factory = protocol.Factory.forProtocol(build)
        self.port = self.network.listenTCP(0, self.factory, interface="127.0.0.1").getHost().port

    def endpoint(self, port=None, timeout=2):
        return TCP4ClientEndpoint(self.network, "127.0.0.1", port or self.port, timeout=timeout)

    def connected(self, client=None):
        """
        A client connected to the listener, and its server.
        """
        client = client or Recorder()
        self.network.connectClient(self.port, client)
        return client, self.servers[-1]

    def test_attemptCompletesAtTheNextFlush(self):
        """
        A connection attempt to a listening port completes when the network
        moves, not inside C{connectTCP}.
        """
        d = connectProtocol(self.endpoint(), Recorder())
        self.assertNoResult(d)
        self.network.flush()
        client = self.successResultOf(d)
        self.assertEqual(client.events, ["made"])
        self.assertEqual(self.servers[0].events, ["made"])
        [attempt] = self.network.attempts
        self.assertEqual(attempt.state, "connected")
        self.assertEqual(client.transport.getPeer().port, self.port)
        self.assertEqual(self.servers[0].transport.getPeer().host, "127.0.0.1")

    def test_closedPortRefuses(self):
        """
        An attempt to a port nothing listens on is refused.
        """
        d = connectProtocol(self.endpoint(self.network.unusedPort()), Recorder())
        self.network.flush()
        self.failureResultOf(d, error.ConnectionRefusedError)
        self.assertEqual(self.network.attempts[0].state, "refused")

    def test_stoppedListenerRefuses(self):
        """
        Once a port stops listening, attempts to it are refused, and so are
        the tests' own clients.
        """
        [(port, factory, backlog, interface)] = self.network.tcpServers
        self.network._listeners[port].stopListening()
        d = connectProtocol(self.endpoint(), Recorder())
        self.network.flush()
        self.failureResultOf(d, error.ConnectionRefusedError)
        self.assertRaises(
            error.ConnectionRefusedError, self.network.connectClient, port, Recorder()
        )

    def test_blackholeTimesOutAtTheConnectTimeout(self):
        """
        An attempt to a blackhole neither succeeds nor fails until its
        connect timeout.
        """
        hole = self.network.unusedPort()
        self.network.blackhole(hole)
        d = connectProtocol(self.endpoint(hole, timeout=2), Recorder())
        self.network.advance(1.999)
        self.assertNoResult(d)
        self.network.advance(0.001)
        self.failureResultOf(d, error.TimeoutError)
        self.assertEqual(self.network.attempts[0].state, "timed out")

    def test_cancelledAttemptStopsConnecting(self):
        """
        Cancelling a connect calls the attempt off, and its timeout with it.
        """
        hole = self.network.unusedPort()
        self.network.blackhole(hole)
        d = connectProtocol(self.endpoint(hole), Recorder())
        d.cancel()
        self.failureResultOf(d, error.ConnectingCancelledError)
        [attempt] = self.network.attempts
        self.assertTrue(attempt.stoppedConnecting)
        self.assertEqual(attempt.state, "cancelled")
        self.network.advance(10)
        self.assertEqual(attempt.state, "cancelled")

    def test_pausedReaderReadsNothing(self):
        """
        A transport paused reads nothing, nor sees the end of the
        connection, until resumed; the writer's producer is paused once more
        than 64 KiB wait, and resumed once they are read.
        """
        client, server = self.connected()
        producer = Producer()
        client.transport.registerProducer(producer, True)
        server.transport.pauseProducing()
        client.transport.write(b"x" * 65536)
        self.network.flush()
        self.assertEqual((server.received, producer.state), (b"", "producing"))
        client.transport.write(b"y")
        self.assertEqual(producer.state, "paused")
        client.transport.loseConnection()
        self.network.flush()
        self.assertEqual(server.events, ["made"])
        server.transport.resumeProducing()
        self.network.flush()
        self.assertEqual(server.received, b"x" * 65536 + b"y")
        self.assertEqual(server.events, ["made", "read lost"])
        self.assertIsInstance(client.reason, error.ConnectionDone)

    def test_readsAreAtMost64KiB(self):
        """
        Bytes are delivered in reads of at most 64 KiB.
        """
        sizes = []
        server = Plain()
        server.dataReceived = lambda data: sizes.append(len(data))
        self.factory.protocol = lambda: server
        client = Plain()
        self.network.connectClient(self.port, client)
        client.transport.write(b"z" * 150000)
        self.network.flush()
        self.assertEqual(sizes, [65536, 65536, 150000 - 2 * 65536])

    def test_loseConnectionAfterTheBytes(self):
        """
        C{loseConnection} ends the connection once the bytes written are
        read: C{ConnectionDone} both sides when neither can be half-closed,
        and the registered producer is stopped first.
        """
        server = Plain()
        self.factory.protocol = lambda: server
        client = Plain()
        self.network.connectClient(self.port, client)
        producer = Producer()
        client.transport.registerProducer(producer, True)
        client.transport.write(b"last words")
        client.transport.loseConnection()
        self.network.flush()
        self.assertEqual(server.received, b"last words")
        self.assertIsInstance(server.reason, error.ConnectionDone)
        self.assertIsInstance(client.reason, error.ConnectionDone)
        self.assertEqual(producer.state, "stopped")
        self.assertEqual(self.network.transports(), [])

    def test_abortResetsThePeer(self):
        """
        C{abortConnection} drops what is unsent: the aborter sees
        C{ConnectionAborted}, the peer C{ConnectionLost}.
        """
        client, server = self.connected()
        client.transport.write(b"never sent")
        client.transport.abortConnection()
        self.network.flush()
        self.assertEqual(server.received, b"")
        self.assertIsInstance(client.reason, error.ConnectionAborted)
        self.assertIsInstance(server.reason, error.ConnectionLost)

    def test_halfClose(self):
        """
        C{loseWriteConnection} ends one direction: the half-closeable peer
        reads the end and may still answer.
        """
        client, server = self.connected()
        client.transport.write(b"question")
        client.transport.loseWriteConnection()
        self.network.flush()
        self.assertEqual(server.received, b"question")
        self.assertEqual(server.events, ["made", "read lost"])
        self.assertEqual(client.events, ["made", "write lost"])
        server.transport.write(b"answer")
        server.transport.loseConnection()
        self.network.flush()
        self.assertEqual(client.received, b"answer")
        self.assertEqual(client.events, ["made", "write lost", "read lost"])
        self.assertIsInstance(server.reason, error.ConnectionDone)

    def test_writingToAClosedPeerIsAReset(self):
        """
        Writing to a connection whose peer closed loses it with
        C{ConnectionLost}.
        """
        client, server = self.connected()
        client.transport.loseConnection()
        self.network.flush()
        self.assertEqual(server.events, ["made", "read lost"])
        server.transport.write(b"too late")
        self.network.flush()
        self.assertIsInstance(server.reason, error.ConnectionLost)

    def test_timersFireWithTheNetworkSettledBetween(self):
        """
        L{MemoryNetwork.advance} fires each timer at its time, and what one
        timer sends is delivered before the next fires.
        """
        client, server = self.connected()
        seen = []
        self.network.callLater(1, client.transport.write, b"ping")
        self.network.callLater(2, lambda: seen.append((self.network.seconds(), server.received)))
        self.network.advance(5)
        self.assertEqual(seen, [(2, b"ping")])
        self.assertEqual(self.network.seconds(), 5)

    def test_runUntil(self):
        """
        L{MemoryNetwork.runUntil} lets time pass timer by timer until the
        condition holds, and says how long that took; it gives up after
        its limit.
        """
        done = []
        self.network.callLater(0.25, done.append, True)
        self.assertEqual(self.network.runUntil(lambda: done, 1), 0.25)
        self.assertRaises(AssertionError, self.network.runUntil, lambda: False, 1)

    def test_assertNothingOpen(self):
        """
        L{MemoryNetwork.assertNothingOpen} fails while a connection is open.
        """
        client, server = self.connected()
        self.assertRaises(AssertionError, self.network.assertNothingOpen)
        client.transport.loseConnection()
        # The server, which can be half-closed, has only read the end.
        self.assertRaises(AssertionError, self.network.assertNothingOpen)
        server.transport.loseConnection()
        self.network.assertNothingOpen()


class SeedRandomnessTests(SynchronousTestCase):
    def test_sameSequenceEachTime(self):
        """
        Generators created without a seed draw the same numbers from one
        test run to the next; an explicit seed is kept.
        """
        seedRandomness(self, 5)
        first = [random.Random().random() for _ in range(3)]
        self.assertEqual(random.Random(42).random(), random.Random(42).random())
        seedRandomness(self, 5)
        self.assertEqual([random.Random().random() for _ in range(3)], first)
        self.assertEqual(len(set(first)), 3)
