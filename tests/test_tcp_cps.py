"""
What a short connection through a TCP router costs, pinned where it is a
behaviour: the clock readings of a spliced pair, the accept time reused by
the retry budget and by a connection made within
L{dial<meshproxy.transport.dial.dial>}, and the adaptation Twisted makes of
the splice's ends at each end of a direction.
"""

import socket

from twisted.internet import defer, protocol
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from meshproxy.resilience.budget import RetryBudget
from meshproxy.tcp.router import TcpServerFactory
from meshproxy.tcp.splice import Downstream, End, Upstream
from tests.test_tcp_router import (
    Answerer,
    Client,
    FakeTransport,
    LoopbackTestCase,
    buildRouter,
    routerConfig,
    waitUntil,
)


class ClockReadingTests(SynchronousTestCase):
    """
    The clock readings of a spliced pair, on a memory reactor.
    """

    def setUp(self):
        self.reactor = MemoryReactorClock()
        self.readings = 0
        seconds = self.reactor.seconds

        def counting():
            self.readings += 1
            return seconds()

        self.patch(self.reactor, "seconds", counting)

    def splice(self, extra=""):
        router, registry = buildRouter(routerConfig('["10.0.0.1:5432"]', extra), self.reactor)
        router.start()
        self.addCleanup(router.stop)
        factory = TcpServerFactory(router)
        down = factory.buildProtocol(None)
        downT = FakeTransport(down)
        down.makeConnection(downT)
        connectFactory = self.reactor.tcpClients[-1][2]
        up = connectFactory.buildProtocol(None)
        upT = FakeTransport(up)
        up.makeConnection(upT)
        return router, down, downT, up, upT

    def test_noReadingPerReadWithoutIdleTimeout(self):
        """
        Without an idle timeout, the bytes either way read no clock.
        """
        router, down, downT, up, upT = self.splice()
        before = self.readings
        down.dataReceived(b"request")
        up.dataReceived(b"answer")
        self.assertEqual(self.readings, before)
        self.assertEqual((upT.value(), downT.value()), (b"request", b"answer"))

    def test_readingPerReadWithIdleTimeout(self):
        """
        With an idle timeout, each read notes the time of the last
        activity.
        """
        router, down, downT, up, upT = self.splice("    idleTimeout: 10s\n")
        self.reactor.advance(3)
        before = self.readings
        down.dataReceived(b"request")
        first = self.readings - before
        self.assertEqual(down.splice.lastActivity, 3)
        self.reactor.advance(2)
        before = self.readings
        up.dataReceived(b"answer")
        self.assertEqual(down.splice.lastActivity, 5)
        self.assertEqual((first, self.readings - before), (1, 1))

    def test_budgetDepositTakesTheAcceptTime(self):
        """
        The retry budget counts the connection at the time it was accepted,
        read once.
        """
        router, registry = buildRouter(routerConfig('["10.0.0.1:5432"]'), self.reactor)
        router.start()
        self.addCleanup(router.stop)
        deposits = []
        self.patch(RetryBudget, "deposit", lambda budget, now=None: deposits.append(now))
        self.reactor.advance(7)
        factory = TcpServerFactory(router)
        down = factory.buildProtocol(None)
        down.makeConnection(FakeTransport(down))
        self.assertEqual(deposits, [7.0])
        self.assertEqual(down.splice.accepted, 7.0)


class AdaptationTests(SynchronousTestCase):
    """
    Twisted adapts a connection's protocol to L{IHalfCloseableProtocol} at
    each end of a direction.
    """

    def test_endsAreTheirOwnAdapters(self):
        """
        Both ends adapt to themselves, with no C{__conform__} of their own
        to call (the class attribute is L{None}, which an interface's
        adaptation treats as none).
        """
        self.assertIsNone(End.__conform__)
        router, registry = buildRouter(routerConfig('["10.0.0.1:5432"]'), MemoryReactorClock())
        down = Downstream(TcpServerFactory(router))
        up = Upstream(None)
        self.assertIs(IHalfCloseableProtocol(down, None), down)
        self.assertIs(IHalfCloseableProtocol(up, None), up)


class ConnectTimeTests(LoopbackTestCase):
    """
    On loopback, the upstream connection is made within the attempt.
    """

    @defer.inlineCallbacks
    def test_connectedWithinDialTakesTheAttemptsTime(self):
        """
        A connection made within L{dial<meshproxy.transport.dial.dial>}
        took the attempt's start time: its connect time is 0, with no
        clock reading of its own.
        """
        backendPort, backend = self.backend(Answerer)
        port, router, factory, registry = self.router([backendPort])
        splices = []
        from meshproxy.tcp import splice as spliceModule

        connected = spliceModule.Splice.connected

        def recording(splice, upstream):
            splices.append((splice, splice.dialing))
            return connected(splice, upstream)

        self.patch(spliceModule.Splice, "connected", recording)
        client = yield self.connect(port, Client())
        client.transport.write(b"ping")
        client.transport.loseWriteConnection()
        yield client.lost
        self.assertEqual(client.received, b"got 4 bytes")
        [(splice, dialing)] = splices
        self.assertTrue(dialing)
        self.assertEqual(splice.connectSeconds, 0.0)

    @defer.inlineCallbacks
    def test_clientReadAsItIsAccepted(self):
        """
        A client that spoke before it was accepted is read as its upstream
        connection is made within the accept: its bytes are on their way
        to the upstream before the reactor turns again.
        """
        backendPort, backend = self.backend(Answerer)
        port, router, factory, registry = self.router([backendPort])
        seen = []
        from meshproxy.tcp import splice as spliceModule

        connected = spliceModule.Splice.connected

        def recording(splice, upstream):
            connected(splice, upstream)
            seen.append((splice.dialing, splice.client.received))

        self.patch(spliceModule.Splice, "connected", recording)
        raw = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.addCleanup(raw.close)
        raw.sendall(b"ping")
        raw.shutdown(socket.SHUT_WR)
        yield waitUntil(self.reactor, lambda: seen)
        self.assertEqual(seen, [(True, 4)])
        yield waitUntil(
            self.reactor,
            lambda: backend.connections and backend.connections[0].received == b"ping",
        )

    @defer.inlineCallbacks
    def test_serverSpeaksFirst(self):
        """
        A client that waits for the upstream to speak first is not hurt by
        that read: it finds nothing, and the greeting comes through.
        """
        backendPort, backend = self.backend(Greeter)
        port, router, factory, registry = self.router([backendPort])
        client = yield self.connect(port, Client())
        yield client.waitFor(len(Greeter.greeting))
        self.assertEqual(client.received, Greeter.greeting)
        client.transport.write(b"reply")
        yield waitUntil(
            self.reactor,
            lambda: backend.connections and backend.connections[0].received == b"reply",
        )


class Greeter(protocol.Protocol):
    """
    A backend that speaks first, then keeps what it is sent.
    """

    greeting = b"220 ready\r\n"

    def connectionMade(self):
        self.factory.connections.append(self)
        self.received = b""
        self.transport.write(self.greeting)

    def dataReceived(self, data):
        self.received += data


class CleanCloseTests(SynchronousTestCase):
    """
    The reason given when the splice closes a connection itself.
    """

    def test_checkAgreesWithFailures(self):
        """
        Its C{check} answers as L{Failure.check} does, for classes and for
        qualified names.
        """
        from twisted.internet import error
        from twisted.python.failure import Failure

        from meshproxy.tcp.splice import _CLEAN_CLOSE

        plain = Failure(error.ConnectionDone())
        cases = [
            (error.ConnectionDone,),
            (error.ConnectionAborted,),
            (error.ConnectionLost, error.ConnectionDone),
            (Exception,),
            (BaseException,),
            (error.ConnectError,),
            ("twisted.internet.error.ConnectionDone",),
            ("twisted.internet.error.ConnectionLost",),
            (),
        ]
        for errors in cases:
            self.assertEqual(_CLEAN_CLOSE.check(*errors), plain.check(*errors), errors)
        self.assertIsInstance(_CLEAN_CLOSE.value, error.ConnectionDone)
