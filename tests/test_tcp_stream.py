"""
The TCP routers' own listening port and accepted connections
(L{meshproxy.transport.stream}): accepting bounded per wake-up, pausing
rather than spinning when out of descriptors, the connections' loss told
once, and the listeners that use them.
"""

import errno
import socket
import struct

from twisted.internet import defer, protocol
from twisted.internet.endpoints import TCP4ServerEndpoint, TCP6ServerEndpoint, UNIXServerEndpoint
from twisted.internet.error import ConnectionAborted, ConnectionDone
from twisted.internet.interfaces import IHalfCloseableProtocol, IPushProducer, IStreamServerEndpoint
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from meshproxy.transport.stream import (
    RawSocket,
    SpliceEndpoint,
    SplicePort,
    SpliceServer,
    adoptSplicePort,
    releaseConnection,
    spliceEndpoint,
)
from tests.test_tcp_eagerreads import FDReactor, LoopbackTestCase


class Recorder(protocol.Protocol):
    """
    Keeps what its connection gives it.
    """

    def __init__(self):
        self.received = b""
        self.losses = []

    def dataReceived(self, data):
        self.received += data

    def connectionLost(self, reason=protocol.connectionDone):
        self.losses.append(reason)


class Refusing(protocol.Factory):
    """
    Refuses every connection (a draining router does).
    """

    def buildProtocol(self, addr):
        return None


class FakeListener:
    """
    A listening socket whose C{_accept} plays a script: each item a
    connected socket to hand out (its descriptor is detached) or an
    C{OSError} to raise; past the script, C{EAGAIN}.
    """

    family = socket.AF_INET

    def __init__(self, script):
        self.script = list(script)
        self.calls = 0

    def _accept(self):
        self.calls += 1
        if not self.script:
            raise BlockingIOError(errno.EAGAIN, "no more")
        item = self.script.pop(0)
        if isinstance(item, OSError):
            raise item
        return item.detach(), ("127.0.0.1", 40000 + self.calls)

    def fileno(self):
        return -1


class FakePortTests(SynchronousTestCase):
    """
    L{SplicePort.doRead} on a memory reactor, its listening socket faked.
    """

    def port(self, script, factory=None):
        self.reactor = MemoryReactorClock()
        factory = factory or protocol.Factory.forProtocol(Recorder)
        port = SplicePort(0, factory, 50, "127.0.0.1", self.reactor)
        port.socket = FakeListener(script)
        port.connected = True
        port.startReading()
        self.addCleanup(self.closeAll)
        return port

    def closeAll(self):
        for reader in list(self.reactor.readers):
            if isinstance(reader, SpliceServer):
                reader.socket.close()

    def connections(self, n):
        """
        C{n} connected sockets (one end of a pair each; the other ends are
        closed at cleanup).
        """
        ends = []
        for _ in range(n):
            a, b = socket.socketpair()
            self.addCleanup(b.close)
            ends.append(a)
        return ends

    def accepted(self):
        return [r for r in self.reactor.readers if isinstance(r, SpliceServer)]

    def test_acceptsAndStartsEach(self):
        """
        Each connection accepted is a L{SpliceServer} being read, its
        protocol connected, its peer's address given to the factory.
        """
        addresses = []

        class Factory(protocol.Factory):
            def buildProtocol(self, addr):
                addresses.append(addr)
                return Recorder()

        port = self.port(self.connections(2), Factory())
        port._limit = 5
        port.doRead()
        transports = self.accepted()
        self.assertEqual(len(transports), 2)
        self.assertEqual(sorted(t.sessionno for t in transports), [0, 1])
        for transport in transports:
            self.assertTrue(transport.connected)
            self.assertIs(transport.protocol.transport, transport)
            self.assertIsInstance(transport.socket, RawSocket)
        self.assertEqual([(a.type, a.host) for a in addresses], [("TCP", "127.0.0.1")] * 2)
        self.assertEqual(port.accepted, 2)

    def test_boundedPerWakeUp(self):
        """
        A wake-up accepts at most as many connections as the last one did,
        20 more when the last one took all it could, never more than
        C{maxAccepts}; the rest wait for the next wake-up.
        """
        port = self.port(self.connections(60))
        port.maxAccepts = 25
        taken = []
        for _ in range(4):
            before = port.accepted
            port.doRead()
            taken.append(port.accepted - before)
        self.assertEqual(taken, [1, 21, 25, 13])
        # The last wake-up found the backlog empty: the next takes as many.
        self.assertEqual(port._limit, 13)

    def test_refusedConnectionClosed(self):
        """
        A connection the factory refuses is closed at once.
        """
        a, b = socket.socketpair()
        self.addCleanup(b.close)
        port = self.port([a], Refusing())
        port.doRead()
        self.assertEqual(self.accepted(), [])
        b.settimeout(5)
        self.assertEqual(b.recv(10), b"")

    def test_abortedConnectionSkipped(self):
        """
        A connection reset before it was accepted (C{ECONNABORTED}) is
        skipped, and the next accepted.
        """
        [conn] = self.connections(1)
        port = self.port([OSError(errno.ECONNABORTED, "aborted"), conn])
        port._limit = 5
        port.doRead()
        self.assertEqual(len(self.accepted()), 1)
        self.assertFalse(port.failing)

    def test_outOfDescriptorsPauses(self):
        """
        Out of file descriptors (C{EMFILE}), the port stops reading its
        socket, which would wake the reactor again at once, for
        C{acceptPause} seconds, says so once, then accepts again.
        """
        [conn] = self.connections(1)
        port = self.port([OSError(errno.EMFILE, "Too many open files"), conn])
        port.doRead()
        self.assertNotIn(port, self.reactor.readers)
        self.assertEqual(port.pauses, 1)
        self.assertTrue(port.failing)
        [call] = self.reactor.getDelayedCalls()
        self.assertEqual(call.getTime(), port.acceptPause)
        self.assertEqual(len(self.flushLoggedErrors()), 0)
        self.reactor.advance(port.acceptPause)
        self.assertIn(port, self.reactor.readers)
        port.doRead()
        self.assertEqual(len(self.accepted()), 1)
        self.assertFalse(port.failing)

    def test_outOfDescriptorsAgainPausesAgain(self):
        """
        Still out of descriptors after a pause, the port pauses again: it
        never reads its socket in a loop.
        """
        from twisted.logger import Logger, formatEvent

        from meshproxy.transport import stream

        events = []
        self.patch(stream, "_log", Logger(observer=events.append))
        errors = [OSError(errno.ENFILE, "File table overflow") for _ in range(3)]
        [conn] = self.connections(1)
        port = self.port(errors + [conn])
        port.factory.logPrefix = lambda: "router db"
        for n in range(1, 4):
            port.doRead()
            self.assertEqual(port.pauses, n)
            self.assertNotIn(port, self.reactor.readers)
            self.reactor.advance(port.acceptPause)
        self.assertEqual(port.socket.calls, 3)
        port.doRead()
        self.assertEqual(len(self.accepted()), 1)
        self.assertEqual([formatEvent(e) for e in events], [
            "router db: cannot accept connections (ENFILE: File table overflow):"
            " pausing 0.1 s at a time until it can",
            "router db: accepting connections again",
        ])

    def test_unexpectedErrorPausesToo(self):
        """
        An error C{accept} should not give pauses accepting too, rather
        than escaping to the reactor (which would close the port).
        """
        port = self.port([OSError(errno.EINVAL, "Invalid argument")])
        port.doRead()
        self.assertEqual(port.pauses, 1)
        self.assertNotIn(port, self.reactor.readers)

    def test_stopListeningCallsThePauseOff(self):
        """
        A port stopped while accepting is paused does not start reading
        again when the pause is over.
        """
        port = self.port([OSError(errno.EMFILE, "Too many open files")])
        port.doRead()
        # (tcp.Port closes the socket on the next turn of the reactor)
        self.patch(port, "connectionLost", lambda reason: None)
        port.stopListening()
        self.reactor.advance(port.acceptPause)
        self.assertNotIn(port, self.reactor.readers)
        self.assertEqual(
            [c for c in self.reactor.getDelayedCalls() if c.func == port._resumeAccepting], []
        )

    def test_factoryErrorLoggedAndAcceptingGoesOn(self):
        """
        What a factory raises is logged; the port accepts the next
        connection.
        """
        calls = []

        class Factory(protocol.Factory):
            def buildProtocol(self, addr):
                calls.append(addr)
                if len(calls) == 1:
                    raise RuntimeError("boom")
                return Recorder()

        port = self.port(self.connections(2), Factory())
        port._limit = 5
        port.doRead()
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(len(self.accepted()), 1)
        self.assertIn(port, self.reactor.readers)


class FakeSocket:
    """
    Records what is done to a connection's socket.
    """

    def __init__(self):
        self.calls = []

    def fileno(self):
        return 7

    def setblocking(self, flag):
        self.calls.append(("setblocking", flag))

    def setsockopt(self, *args):
        self.calls.append(("setsockopt",) + args)

    def shutdown(self, how):
        self.calls.append(("shutdown", how))

    def close(self):
        self.calls.append(("close",))


class SpliceServerTests(SynchronousTestCase):
    """
    L{SpliceServer} on a memory reactor, its socket faked.
    """

    def server(self, client=("127.0.0.1", 5000)):
        self.reactor = MemoryReactorClock()
        self.sock = FakeSocket()
        self.protocol = Recorder()
        port = SplicePort(4140, protocol.Factory(), 50, "127.0.0.1", self.reactor)
        port._realPortNumber = 4140
        transport = SpliceServer(self.sock, self.protocol, client, port, 3, self.reactor)
        self.protocol.makeConnection(transport)
        return transport

    def test_startsReadingNonBlocking(self):
        transport = self.server()
        self.assertIn(transport, self.reactor.readers)
        self.assertEqual(self.sock.calls, [("setblocking", False)])
        self.assertTrue(transport.connected)

    def test_logPrefixAndRepr(self):
        """
        The log prefix and C{repr} are Twisted's, made when asked for.
        """
        transport = self.server()
        self.assertNotIn("logstr", transport.__dict__)
        self.assertEqual(transport.logPrefix(), "Recorder,3,127.0.0.1")
        self.assertEqual(repr(transport), "<Recorder #3 on 4140>")
        transport.logstr = "set"
        self.assertEqual(transport.logPrefix(), "set")

    def test_addresses(self):
        transport = self.server(("::1", 5000, 0, 0))
        peer = transport.getPeer()
        self.assertEqual((peer.type, peer.host, peer.port), ("TCP", "::1", 5000))

    def test_lostOnce(self):
        """
        The protocol hears of the loss once, however often the transport is
        told; the socket is shut down and closed once, and no longer
        watched.
        """
        transport = self.server()
        transport.startWriting()
        transport.connectionLost(Failure(ConnectionDone()))
        transport.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(len(self.protocol.losses), 1)
        self.assertEqual(self.sock.calls[1:], [("shutdown", 2), ("close",)])
        self.assertNotIn(transport, self.reactor.readers)
        self.assertNotIn(transport, self.reactor.writers)
        self.assertTrue(transport.disconnected)
        self.assertFalse(transport.connected)

    def test_abortResets(self):
        """
        A connection lost to an abort is closed with a reset (C{SO_LINGER}
        0), not shut down.
        """
        transport = self.server()
        transport.connectionLost(Failure(ConnectionAborted()))
        self.assertEqual(
            self.sock.calls[1][:3], ("setsockopt", socket.SOL_SOCKET, socket.SO_LINGER)
        )
        self.assertEqual(self.sock.calls[2:], [("close",)])

    def test_noShutdownWhenTold(self):
        """
        With C{_shouldShutdown} off, the socket is only closed.
        """
        transport = self.server()
        transport._shouldShutdown = False
        transport.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.sock.calls[1:], [("close",)])

    def test_producerStopped(self):
        """
        A producer registered on the connection is stopped with it.
        """

        @implementer(IPushProducer)
        class Producer:
            stopped = 0

            def pauseProducing(self):
                pass

            def resumeProducing(self):
                pass

            def stopProducing(self):
                self.stopped += 1

        transport = self.server()
        producer = Producer()
        transport.registerProducer(producer, True)
        transport.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(producer.stopped, 1)
        self.assertIsNone(transport.producer)

    def test_releaseReturnsTheProtocolOnce(self):
        transport = self.server()
        self.assertIs(releaseConnection(transport, Failure(ConnectionDone())), self.protocol)
        self.assertIsNone(releaseConnection(transport, Failure(ConnectionDone())))


class EndpointTests(SynchronousTestCase):
    """
    L{spliceEndpoint}: which endpoints listen with a L{SplicePort}.
    """

    def test_tcpOnAPosixReactor(self):
        from twisted.internet import reactor

        endpoint = spliceEndpoint(TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1"))
        self.assertIsInstance(endpoint, SpliceEndpoint)
        verifyObject(IStreamServerEndpoint, endpoint)
        self.assertIsInstance(
            spliceEndpoint(TCP6ServerEndpoint(reactor, 0, interface="::1")), SpliceEndpoint
        )

    def test_othersLeftAsTheyAre(self):
        from twisted.internet import reactor

        memory = TCP4ServerEndpoint(MemoryReactorClock(), 0)
        self.assertIs(spliceEndpoint(memory), memory)
        unix = UNIXServerEndpoint(reactor, "/tmp/x.sock")
        self.assertIs(spliceEndpoint(unix), unix)

    def test_cannotListen(self):
        """
        A port that cannot be bound fails the listen's Deferred with
        Twisted's C{CannotListenError}.
        """
        from twisted.internet import reactor
        from twisted.internet.error import CannotListenError

        taken = socket.socket()
        self.addCleanup(taken.close)
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        endpoint = spliceEndpoint(
            TCP4ServerEndpoint(reactor, taken.getsockname()[1], interface="127.0.0.1")
        )
        self.failureResultOf(endpoint.listen(protocol.Factory()), CannotListenError)


@implementer(IHalfCloseableProtocol)
class HalfCloser(Recorder):
    """
    Answers what it received once its peer ended its writing, then closes.
    """

    def __init__(self, done):
        Recorder.__init__(self)
        self.done = done

    def readConnectionLost(self):
        self.transport.write(b"got " + self.received)
        self.transport.loseConnection()

    def writeConnectionLost(self):
        pass

    def connectionLost(self, reason=protocol.connectionDone):
        Recorder.connectionLost(self, reason)
        self.done.callback(self)


class Collector(protocol.Protocol):
    def __init__(self):
        self.received = b""
        self.lost = defer.Deferred()

    def dataReceived(self, data):
        self.received += data

    def connectionLost(self, reason=protocol.connectionDone):
        self.reason = reason
        self.lost.callback(None)


class LoopbackTests(TestCase):
    """
    A L{SplicePort} on loopback with the real reactor.
    """

    timeout = 10

    @defer.inlineCallbacks
    def listen(self, factory):
        from twisted.internet import reactor

        self.reactor = reactor
        port = yield spliceEndpoint(TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")).listen(
            factory
        )
        self.addCleanup(port.stopListening)
        return port

    @defer.inlineCallbacks
    def test_halfCloseAndLossOnce(self):
        """
        The peer's half-close reaches a half-closeable protocol, which can
        still answer; the loss is told once, as a clean close.
        """
        done = defer.Deferred()
        port = yield self.listen(protocol.Factory.forProtocol(lambda: HalfCloser(done)))
        client = Collector()
        yield protocol.ClientCreator(self.reactor, lambda: client).connectTCP(
            "127.0.0.1", port.getHost().port
        )
        client.transport.write(b"hello")
        client.transport.loseWriteConnection()
        server = yield done
        yield client.lost
        self.assertEqual(client.received, b"got hello")
        self.assertIsInstance(server.transport, SpliceServer)
        self.assertEqual(len(server.losses), 1)
        server.losses[0].trap(ConnectionDone)

    @defer.inlineCallbacks
    def test_pauseAndResumeReading(self):
        """
        A paused connection is not watched for reading; resumed, it is, and
        what was sent meanwhile arrives.
        """
        accepted = defer.Deferred()
        got = defer.Deferred()

        class Paused(Recorder):
            def connectionMade(self):
                self.transport.pauseProducing()
                accepted.callback(self)

            def dataReceived(self, data):
                Recorder.dataReceived(self, data)
                if self.received == b"abc":
                    got.callback(None)

        port = yield self.listen(protocol.Factory.forProtocol(Paused))
        client = Collector()
        yield protocol.ClientCreator(self.reactor, lambda: client).connectTCP(
            "127.0.0.1", port.getHost().port
        )
        server = yield accepted
        client.transport.write(b"abc")
        self.assertNotIn(server.transport, self.reactor.getReaders())
        self.assertEqual(server.received, b"")
        server.transport.resumeProducing()
        self.assertIn(server.transport, self.reactor.getReaders())
        yield got
        client.transport.loseConnection()
        yield client.lost

    @defer.inlineCallbacks
    def test_ipv6(self):
        """
        A C{tcp6:} listener accepts IPv6 connections, its peers' addresses
        IPv6 ones.
        """
        from twisted.internet import reactor
        from twisted.internet.address import IPv6Address

        try:
            probe = socket.socket(socket.AF_INET6)
            probe.bind(("::1", 0))
            probe.close()
        except OSError:
            raise SkipTest("no IPv6 loopback here") from None
        accepted = defer.Deferred()

        class Accepted(Recorder):
            def connectionMade(self):
                accepted.callback(self)

        port = yield spliceEndpoint(TCP6ServerEndpoint(reactor, 0, interface="::1")).listen(
            protocol.Factory.forProtocol(Accepted)
        )
        self.addCleanup(port.stopListening)
        self.assertIsInstance(port, SplicePort)
        client = Collector()
        yield protocol.ClientCreator(reactor, lambda: client).connectTCP(
            "::1", port.getHost().port
        )
        server = yield accepted
        peer = server.transport.getPeer()
        self.assertIsInstance(peer, IPv6Address)
        self.assertEqual(peer.host, "::1")
        client.transport.loseConnection()
        yield client.lost

    @defer.inlineCallbacks
    def test_adopted(self):
        """
        L{adoptSplicePort} accepts on a socket bound elsewhere, one
        connection per wake-up when told to.
        """
        from twisted.internet import reactor

        bound = socket.socket()
        bound.bind(("127.0.0.1", 0))
        bound.listen(5)
        bound.setblocking(False)
        accepted = defer.Deferred()

        class Accepted(Recorder):
            def connectionMade(self):
                accepted.callback(self)

        port = adoptSplicePort(
            reactor, bound.fileno(), bound.family, protocol.Factory.forProtocol(Accepted),
            maxAccepts=1,
        )
        host = bound.getsockname()
        bound.close()
        self.addCleanup(port.stopListening)
        self.assertEqual(port.maxAccepts, 1)
        client = Collector()
        yield protocol.ClientCreator(reactor, lambda: client).connectTCP(*host)
        server = yield accepted
        self.assertIsInstance(server.transport, SpliceServer)
        client.transport.loseConnection()
        yield client.lost



class ListenerTests(TestCase):
    """
    The process's listeners (L{meshproxy.listeners}): a TCP router's listens
    with a L{SplicePort}, an HTTP router's and the admin API's with
    Twisted's.
    """

    timeout = 10

    @defer.inlineCallbacks
    def test_tcpRoutersOnly(self):
        from twisted.internet import tcp

        from tests.support import startProxy

        config = (
            'admin: {listen: "tcp:0:interface=127.0.0.1"}\n'
            "namers: [{kind: static, prefix: /#/static, services: {db: [\"127.0.0.1:1\"]}}]\n"
            "routers:\n"
            "  - name: db\n"
            "    protocol: tcp\n"
            '    listen: "tcp:0:interface=127.0.0.1"\n'
            "    destination: /#/static/db\n"
            "  - name: web\n"
            '    listen: "tcp:0:interface=127.0.0.1"\n'
            "    rules: /svc => /#/static;\n"
        )
        _, _, runtime = yield startProxy(self, None, config=config)
        ports = {parts.router.name: parts.listener.port for parts in runtime.parts.values()}
        self.assertIsInstance(ports["db"], SplicePort)
        self.assertIs(type(ports["web"]), tcp.Port)

    def test_servesTcpRouter(self):
        """
        A TCP router's factory is known as such, alone or behind its
        preamble; others are not.
        """
        from twisted.internet.testing import MemoryReactorClock

        from meshproxy.listeners import servesTcpRouter
        from meshproxy.tcp.router import TcpServerFactory
        from meshproxy.transport.preamble import PreambleFactory

        tcpFactory = TcpServerFactory.__new__(TcpServerFactory)
        other = protocol.Factory()
        clock = MemoryReactorClock()
        self.assertTrue(servesTcpRouter(tcpFactory))
        self.assertTrue(servesTcpRouter(PreambleFactory(tcpFactory, other, clock=clock)))
        self.assertFalse(servesTcpRouter(other))
        self.assertFalse(servesTcpRouter(PreambleFactory(other, other, clock=clock)))

    def test_workersAdoptTcpRoutersOnSplicePorts(self):
        """
        A worker adopts a TCP router's shared socket on a L{SplicePort}
        taking one connection per wake-up, and any other listener's on
        Twisted's port, also one at a time.
        """
        from twisted.internet import reactor

        from meshproxy.tcp.router import TcpServerFactory
        from meshproxy.workers.worker import AdoptedListener, _OneAcceptPort

        def adopted(factory):
            bound = socket.socket()
            bound.bind(("127.0.0.1", 0))
            bound.listen(5)
            listener = AdoptedListener(bound, factory, reactor=reactor)
            listener.startService()
            self.addCleanup(listener.stopService)
            self.assertEqual(bound.fileno(), -1)
            return listener.port

        port = adopted(TcpServerFactory.__new__(TcpServerFactory))
        self.assertIs(type(port), SplicePort)
        self.assertEqual(port.maxAccepts, 1)
        self.assertIs(type(adopted(protocol.Factory())), _OneAcceptPort)


class ReadTests(LoopbackTestCase):
    """
    L{readConnection}, the accepted and dialed connections' C{doRead}, on a
    real socket pair and a memory reactor.
    """

    def transport(self, proto):
        b, a, _ = self.pair()
        reactor = FDReactor()
        transport = SpliceServer(a, proto, ("127.0.0.1", 1), None, 0, reactor)
        proto.makeConnection(transport)
        self.addCleanup(lambda: transport.connected and transport.connectionLost(
            Failure(ConnectionDone())))
        return transport, b, reactor

    def test_bytesToTheProtocol(self):
        proto = Recorder()
        transport, peer, reactor = self.transport(proto)
        peer.sendall(b"abc")
        self.assertIsNone(transport.doRead())
        self.assertEqual(proto.received, b"abc")
        self.assertIsNone(transport.doRead())

    def test_endOfAHalfCloseableProtocol(self):
        """
        The peer's end is told to a half-closeable protocol at once: the
        connection is no longer read, stays open for writing, and the
        reactor is given nothing to do.
        """
        from twisted.internet.main import CONNECTION_DONE

        proto = HalfCloser(defer.Deferred())
        transport, peer, reactor = self.transport(proto)
        peer.sendall(b"x")
        peer.shutdown(socket.SHUT_WR)
        self.assertIsNone(transport.doRead())
        self.assertIsNone(transport.doRead())
        self.assertNotIn(transport, reactor.readers)
        # HalfCloser answered, and closes once that is sent.
        self.assertIs(transport.doWrite(), CONNECTION_DONE)
        self.assertEqual(peer.recv(100), b"got x")

    def test_endOfAnotherProtocol(self):
        """
        The end of a protocol that is not half-closeable is the reactor's
        to handle: C{CONNECTION_DONE}.
        """
        from twisted.internet.main import CONNECTION_DONE

        transport, peer, reactor = self.transport(Recorder())
        peer.shutdown(socket.SHUT_WR)
        self.assertIs(transport.doRead(), CONNECTION_DONE)

    def test_error(self):
        from twisted.internet.main import CONNECTION_LOST

        transport, peer, reactor = self.transport(Recorder())
        # The peer resets the connection.
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        peer.close()
        self.assertIs(transport.doRead(), CONNECTION_LOST)


class WatchTests(SynchronousTestCase):
    """
    A lost connection is no longer watched: an epoll reactor is asked to
    stop watching only what it watches.
    """

    def lose(self, reactor):
        calls = []
        reactor.addReader = lambda r: None
        reactor.removeReader = lambda r: calls.append("reader")
        reactor.removeWriter = lambda w: calls.append("writer")
        transport = SpliceServer(FakeSocket(), Recorder(), ("127.0.0.1", 1), None, 0, reactor)
        transport.connectionLost(Failure(ConnectionDone()))
        return calls

    def epoll(self, reads, writes):
        from twisted.internet.epollreactor import EPollReactor

        reactor = EPollReactor.__new__(EPollReactor)
        # (FakeSocket's descriptor is 7)
        reactor._reads = set(reads)
        reactor._writes = set(writes)
        return reactor

    def test_onlyWhatIsWatched(self):
        self.assertEqual(self.lose(self.epoll([], [])), [])
        self.assertEqual(self.lose(self.epoll([7], [])), ["reader"])
        self.assertEqual(self.lose(self.epoll([], [7])), ["writer"])
        self.assertEqual(self.lose(self.epoll([7], [7])), ["reader", "writer"])

    def test_otherReactorsAskedForBoth(self):
        self.assertEqual(self.lose(MemoryReactorClock()), ["reader", "writer"])


class AddressTests(SynchronousTestCase):
    def test_ipv4Address(self):
        """
        L{ipv4Address} is Twisted's L{IPv4Address}, equal to one made by its
        constructor.
        """
        from twisted.internet.address import IPv4Address

        from meshproxy.transport.stream import ipv4Address

        made = ipv4Address("10.0.0.1", 5432)
        self.assertIs(type(made), IPv4Address)
        self.assertEqual(made, IPv4Address("TCP", "10.0.0.1", 5432))
        self.assertEqual(hash(made), hash(IPv4Address("TCP", "10.0.0.1", 5432)))
