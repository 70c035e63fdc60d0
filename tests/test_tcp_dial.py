"""
L{meshproxy.transport.dial}: upstream TCP connections made with one
non-blocking connect, on real loopback sockets; and the splice's immediate
close of a plain TCP connection with nothing left to send.
"""

import socket

from twisted.internet import defer, protocol
from twisted.internet.error import (
    ConnectionDone,
    ConnectionRefusedError,
    NotConnectingError,
    TimeoutError,
    UserError,
)
from twisted.internet.interfaces import IConnector
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from meshproxy.tcp.splice import _close
from meshproxy.transport.dial import Dial, DialedClient, dial
from meshproxy.transport.fastwrite import PLAIN_TCP
from tests.test_tcp_router import deadPort, waitUntil


class Recorder(protocol.Protocol):
    """
    Keeps what happens to its connection.
    """

    def __init__(self):
        self.received = b""
        self.made = False
        self.reason = None
        self.lost = defer.Deferred()

    def connectionMade(self):
        self.made = True

    def dataReceived(self, data):
        self.received += data

    def connectionLost(self, reason=None):
        self.reason = reason
        self.lost.callback(None)


class Factory(protocol.ClientFactory):
    """
    Builds one L{Recorder} and keeps what the attempt reports.
    """

    noisy = False

    def __init__(self):
        self.protocol = None
        self.failed = None
        self.failures = defer.Deferred()

    def buildProtocol(self, addr):
        self.addr = addr
        self.protocol = Recorder()
        return self.protocol

    def clientConnectionFailed(self, connector, reason):
        self.failed = reason
        self.failures.callback(None)


class Server(protocol.Protocol):
    def connectionMade(self):
        self.factory.connections.append(self)
        self.transport.write(b"hello")

    def dataReceived(self, data):
        self.factory.received += data


class DialTests(TestCase):
    """
    L{dial} with the global reactor, on loopback.
    """

    timeout = 10

    def setUp(self):
        from twisted.internet import reactor

        self.reactor = reactor

    def listen(self, interface="127.0.0.1"):
        factory = protocol.Factory.forProtocol(Server)
        factory.noisy = False
        factory.connections = []
        factory.received = b""
        port = self.reactor.listenTCP(0, factory, interface=interface)

        def cleanup():
            for conn in factory.connections:
                conn.transport.abortConnection()
            return port.stopListening()

        self.addCleanup(cleanup)
        return port.getHost().port, factory

    def close(self, factory):
        proto = factory.protocol
        if proto is not None and proto.reason is None:
            proto.transport.abortConnection()
            return proto.lost

    @defer.inlineCallbacks
    def test_connectedBeforeReturningOnLoopback(self):
        """
        On loopback, the protocol is connected within L{dial}: no turn of
        the reactor, a plain TCP transport the fast paths know, and no
        timer left behind.
        """
        port, server = self.listen()
        factory = Factory()
        before = len(self.reactor.getDelayedCalls())
        attempt = dial(self.reactor, "127.0.0.1", port, factory, 5.0)
        self.addCleanup(self.close, factory)
        self.assertTrue(factory.protocol.made)
        transport = factory.protocol.transport
        self.assertIs(type(transport), DialedClient)
        self.assertIn(DialedClient, PLAIN_TCP)
        self.assertEqual(len(self.reactor.getDelayedCalls()), before)
        self.assertEqual((factory.addr.host, factory.addr.port), ("127.0.0.1", port))
        self.assertEqual(transport.getPeer().port, port)
        self.assertEqual(transport.getHost().host, "127.0.0.1")
        self.assertEqual(attempt.getDestination().port, port)
        transport.write(b"ping")
        yield waitUntil(self.reactor, lambda: server.received == b"ping")
        yield waitUntil(self.reactor, lambda: factory.protocol.received == b"hello")
        with self.assertRaises(NotConnectingError):
            attempt.stopConnecting()

    @defer.inlineCallbacks
    def test_ipv6Literal(self):
        """
        An IPv6 address is dialed too.
        """
        try:
            skt = socket.socket(socket.AF_INET6)
            skt.bind(("::1", 0))
            skt.close()
        except OSError:
            raise self.skipTest("no IPv6 loopback here") from None
        port, server = self.listen("::1")
        factory = Factory()
        dial(self.reactor, "::1", port, factory, 5.0)
        self.addCleanup(self.close, factory)
        yield waitUntil(self.reactor, lambda: factory.protocol is not None)
        self.assertIs(type(factory.protocol.transport), DialedClient)
        yield waitUntil(self.reactor, lambda: factory.protocol.received == b"hello")

    @defer.inlineCallbacks
    def test_refusedIsReportedLater(self):
        """
        A refused connection is reported to the factory on a later turn of
        the reactor, never within L{dial}, as a
        L{ConnectionRefusedError}.
        """
        factory = Factory()
        dial(self.reactor, "127.0.0.1", deadPort(), factory, 5.0)
        self.assertIsNone(factory.failed)
        yield factory.failures
        self.assertTrue(factory.failed.check(ConnectionRefusedError))
        self.assertIsNone(factory.protocol)

    @defer.inlineCallbacks
    def test_pendingConnectTimesOut(self):
        """
        A connection the peer does not complete (a listener whose backlog
        is full drops the handshake) waits for the socket to be writable,
        and fails with L{TimeoutError} after the timeout.
        """
        listener, fill = self.fullBacklog()
        factory = Factory()
        dial(self.reactor, "127.0.0.1", listener.getsockname()[1], factory, 0.2)
        self.assertIsNone(factory.protocol)
        yield factory.failures
        self.assertTrue(factory.failed.check(TimeoutError))
        self.assertIsNone(factory.protocol)

    @defer.inlineCallbacks
    def test_stopConnecting(self):
        """
        A pending attempt called off reports a L{UserError} at once and
        leaves no timer.
        """
        listener, fill = self.fullBacklog()
        factory = Factory()
        before = len(self.reactor.getDelayedCalls())
        attempt = dial(self.reactor, "127.0.0.1", listener.getsockname()[1], factory, 5.0)
        verifyObject(IConnector, attempt)
        attempt.stopConnecting()
        self.assertTrue(factory.failed.check(UserError))
        self.assertEqual(len(self.reactor.getDelayedCalls()), before)
        yield defer.succeed(None)

    def countTimers(self):
        """
        Record the delays of the reactor's C{callLater} calls from now on.
        """
        delays = []
        callLater = self.reactor.callLater

        def recording(delay, f, *args, **kw):
            delays.append(delay)
            return callLater(delay, f, *args, **kw)

        self.patch(self.reactor, "callLater", recording)
        return delays

    @defer.inlineCallbacks
    def test_noTimerWhenConnectedWithinDial(self):
        """
        A connection made within L{dial} never arms the connect timeout's
        timer (rather than arming and cancelling it).
        """
        port, server = self.listen()
        delays = self.countTimers()
        factory = Factory()
        dial(self.reactor, "127.0.0.1", port, factory, 5.0)
        self.addCleanup(self.close, factory)
        self.assertTrue(factory.protocol.made)
        self.assertEqual(delays, [])
        yield waitUntil(self.reactor, lambda: factory.protocol.received == b"hello")

    @defer.inlineCallbacks
    def test_timerArmedWhenPending(self):
        """
        A connection still pending when L{dial} returns arms the connect
        timeout, which the end of the attempt cancels.
        """
        listener, fill = self.fullBacklog()
        delays = self.countTimers()
        factory = Factory()
        attempt = dial(self.reactor, "127.0.0.1", listener.getsockname()[1], factory, 5.0)
        self.assertEqual(delays, [5.0])
        self.assertTrue(attempt.timer.active())
        timer = attempt.timer
        attempt.stopConnecting()
        yield factory.failures
        self.assertFalse(timer.active())

    def test_socketMadeNonBlocking(self):
        """
        The attempt's socket is non-blocking from the start.
        """
        listener, fill = self.fullBacklog()
        factory = Factory()
        attempt = dial(self.reactor, "127.0.0.1", listener.getsockname()[1], factory, 5.0)
        self.addCleanup(lambda: attempt.state == "connecting" and attempt.stopConnecting())
        self.assertFalse(attempt.transport.socket.getblocking())
        self.assertIsNone(attempt.transport.protocol)

    def fullBacklog(self):
        """
        A listening socket never accepting, whose backlog is full.
        """
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        self.addCleanup(listener.close)
        fill = []
        for _ in range(4):
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(listener.getsockname())
            fill.append(s)
            self.addCleanup(s.close)
        return listener, fill


class FallbackTests(SynchronousTestCase):
    """
    What L{dial} leaves to the reactor's C{connectTCP}.
    """

    def test_notAPosixReactor(self):
        """
        A reactor that is not a POSIX one (the tests' memory reactors) is
        asked to C{connectTCP}, with the timeout.
        """
        reactor = MemoryReactorClock()
        factory = Factory()
        dial(reactor, "10.0.0.1", 5432, factory, 1.5)
        [(host, port, f, timeout, _)] = reactor.tcpClients
        self.assertEqual((host, port, f, timeout), ("10.0.0.1", 5432, factory, 1.5))

    def test_hostName(self):
        """
        A host name (to resolve) goes through C{connectTCP}.
        """
        from twisted.internet import reactor

        factory = Factory()
        attempt = dial(reactor, "localhost", deadPort(), factory, 1.0)
        self.assertNotIsInstance(attempt, Dial)
        attempt.stopConnecting()


class CloseTests(TestCase):
    """
    The splice's L{_close}: at once for a plain TCP connection with nothing
    left to send, Twisted's C{loseConnection} otherwise.
    """

    timeout = 10

    @defer.inlineCallbacks
    def pair(self):
        from twisted.internet import reactor

        server = protocol.Factory.forProtocol(Recorder)
        server.noisy = False
        accepted = []

        def build(addr):
            proto = Recorder()
            accepted.append(proto)
            return proto

        server.buildProtocol = build
        port = reactor.listenTCP(0, server, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        factory = Factory()
        dial(reactor, "127.0.0.1", port.getHost().port, factory, 5.0)
        yield waitUntil(reactor, lambda: accepted and factory.protocol is not None)
        client = factory.protocol
        self.addCleanup(lambda: client.reason is None and client.transport.abortConnection())
        self.addCleanup(
            lambda: accepted[0].reason is None and accepted[0].transport.abortConnection()
        )
        return accepted[0], client

    @defer.inlineCallbacks
    def test_closedAtOnceWithNothingBuffered(self):
        """
        Nothing buffered: the connection is lost before L{_close} returns,
        cleanly, and the peer sees a clean close.
        """
        server, client = yield self.pair()
        _close(client.transport)
        self.assertIsNotNone(client.reason)
        self.assertTrue(client.reason.check(ConnectionDone))
        yield server.lost
        self.assertTrue(server.reason.check(ConnectionDone))

    @defer.inlineCallbacks
    def test_bufferedBytesSentFirst(self):
        """
        With bytes buffered, the connection closes the usual way, once they
        are sent: the peer receives them all.
        """
        from twisted.internet import reactor

        server, client = yield self.pair()
        server.transport.pauseProducing()
        data = b"x" * (8 * 1024 * 1024)
        client.transport.write(data)
        _close(client.transport)
        self.assertIsNone(client.reason)
        self.assertTrue(client.transport.disconnecting)
        server.transport.resumeProducing()
        yield server.lost
        self.assertEqual(len(server.received), len(data))
        yield waitUntil(reactor, lambda: client.reason is not None)

    @defer.inlineCallbacks
    def test_closeAfterHalfCloseMakesNoShutdown(self):
        """
        L{_close} of a half-closed connection makes no C{shutdown} of its
        own (it would do nothing on the wire, or fail once the peer has
        ended too).
        """
        from meshproxy.tcp.splice import _halfClose

        server, client = yield self.pair()
        calls = []
        client.transport.socket = ShutdownRecorder(client.transport.socket, calls)
        _halfClose(client.transport)
        _close(client.transport)
        self.assertEqual(calls, [socket.SHUT_WR])
        self.assertTrue(client.reason.check(ConnectionDone))
        yield server.lost
        self.assertTrue(server.reason.check(ConnectionDone))

    @defer.inlineCallbacks
    def test_closeShutsDownOtherwise(self):
        """
        A connection not half-closed is shut down before it is closed, as
        Twisted does.
        """
        server, client = yield self.pair()
        calls = []
        client.transport.socket = ShutdownRecorder(client.transport.socket, calls)
        _close(client.transport)
        self.assertEqual(calls, [socket.SHUT_RDWR])
        yield server.lost


    @defer.inlineCallbacks
    def test_closeAfterThePeersEndMakesNoShutdown(self):
        """
        L{_close} of a connection whose peer's end was read makes no
        C{shutdown}: nothing is left unread, and the close ends the
        connection the same way.
        """
        server, client = yield self.pair()
        calls = []
        client.transport.socket = ShutdownRecorder(client.transport.socket, calls)
        _close(client.transport, True)
        self.assertEqual(calls, [])
        self.assertTrue(client.reason.check(ConnectionDone))
        yield server.lost
        self.assertTrue(server.reason.check(ConnectionDone))

    @defer.inlineCallbacks
    def test_lossToldOnce(self):
        """
        A dialed connection's loss is told to its protocol, then to its
        factory (C{clientConnectionLost}), once however often it is
        reported.
        """
        server, client = yield self.pair()
        transport = client.transport
        lost = []
        factory = transport.connector.factory
        factory.clientConnectionLost = lambda connector, reason: lost.append(reason)
        reason = Failure(ConnectionDone())
        transport.connectionLost(reason)
        transport.connectionLost(reason)
        self.assertIs(client.reason, reason)
        self.assertEqual(lost, [reason])
        self.assertFalse(transport.connected)
        yield server.lost


class ShutdownRecorder:
    """
    A socket standing in for another, recording its C{shutdown} calls.
    """

    def __init__(self, skt, calls):
        self._skt = skt
        self._calls = calls

    def shutdown(self, how):
        self._calls.append(how)
        return self._skt.shutdown(how)

    def __getattr__(self, name):
        return getattr(self._skt, name)
