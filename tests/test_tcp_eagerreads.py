"""
The reads the TCP router makes at once rather than on another turn of the
reactor, on real loopback sockets (no reactor running: the events are
played by calling the transport's C{doRead} as the reactor would): the
ClientHello read as the connection is accepted
(L{meshproxy.transport.preamble}), and the upstream's end read with its
first bytes (L{meshproxy.tcp.splice.Upstream}).
"""

import socket
import struct

from twisted.internet import tcp
from twisted.internet.posixbase import _DisconnectSelectableMixin
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from meshproxy.tcp.splice import Upstream
from meshproxy.transport.preamble import Preamble, PreambleSettings
from meshproxy.transport.stream import SpliceServer
from tests.test_tcp_clienthello import realClientHello
from tests.test_tcp_preamble import Listener, Owner


class FDReactor(MemoryReactorClock, _DisconnectSelectableMixin):
    """
    A memory reactor that disconnects a real transport as a POSIX reactor
    does after a read.
    """


class LoopbackTestCase(SynchronousTestCase):
    def pair(self):
        """
        A connected pair of loopback sockets: the peer's (blocking, with a
        timeout) and the accepted one with its address.
        """
        listener = socket.socket()
        self.addCleanup(listener.close)
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        peer = socket.create_connection(listener.getsockname(), timeout=5)
        self.addCleanup(peer.close)
        accepted, address = listener.accept()
        self.addCleanup(accepted.close)
        return peer, accepted, address

    def waitReadable(self, sock):
        """
        Wait (bounded) until what the peer sent has reached C{sock}.
        """
        import select

        readable, _, _ = select.select([sock], [], [], 5)
        self.assertEqual(readable, [sock])


class ClientHelloAtAcceptTests(LoopbackTestCase):
    #: The accepted connection's transport.
    transportClass = tcp.Server

    def accept(self, accepted, address):
        reactor = FDReactor()
        owner = Owner()
        listener = Listener()
        preamble = Preamble(
            listener, PreambleSettings(clientHello=True), clock=reactor, owner=owner
        )
        transport = self.transportClass(accepted, preamble, address, None, 0, reactor)
        preamble.makeConnection(transport)
        return reactor, owner, listener, transport

    def test_helloAlreadyThereReadAtAccept(self):
        """
        A ClientHello already received when the connection is accepted is
        read then: the router's protocol is connected and given it at once,
        with no timer armed for it.
        """
        peer, accepted, address = self.pair()
        flight = realClientHello("a.example")
        peer.sendall(flight)
        self.waitReadable(accepted)
        reactor, owner, listener, transport = self.accept(accepted, address)
        self.assertEqual(listener.told, (None, "a.example"))
        self.assertEqual(listener.received, flight)
        self.assertIs(transport.protocol, listener)
        self.assertEqual(reactor.getDelayedCalls(), [])
        self.assertEqual(owner.errors, [])

    def test_helloNotThereYet(self):
        """
        With nothing received yet, the ClientHello is awaited as before,
        bounded in time, and read on the reactor's next read.
        """
        peer, accepted, address = self.pair()
        reactor, owner, listener, transport = self.accept(accepted, address)
        self.assertIsNone(listener.told)
        self.assertEqual(len(reactor.getDelayedCalls()), 1)
        flight = realClientHello("b.example")
        peer.sendall(flight)
        self.waitReadable(accepted)
        self.assertIsNone(transport.doRead())
        self.assertEqual(listener.told, (None, "b.example"))
        self.assertEqual(listener.received, flight)
        self.assertEqual(reactor.getDelayedCalls(), [])

    def test_partOfTheHelloThere(self):
        """
        A part of the ClientHello read at accept waits for the rest, within
        the time bound.
        """
        peer, accepted, address = self.pair()
        flight = realClientHello("c.example")
        peer.sendall(flight[:20])
        self.waitReadable(accepted)
        reactor, owner, listener, transport = self.accept(accepted, address)
        self.assertIsNone(listener.told)
        self.assertEqual(len(reactor.getDelayedCalls()), 1)
        peer.sendall(flight[20:])
        self.waitReadable(accepted)
        transport.doRead()
        self.assertEqual(listener.told, (None, "c.example"))
        self.assertEqual(listener.received, flight)

    def test_garbageAtAcceptRefused(self):
        """
        Bytes read at accept that are no ClientHello are refused and
        counted, as on a later read.
        """
        peer, accepted, address = self.pair()
        peer.sendall(b"GET / HTTP/1.1\r\n\r\n")
        self.waitReadable(accepted)
        reactor, owner, listener, transport = self.accept(accepted, address)
        self.assertEqual(owner.errors, ["client-hello-invalid"])
        self.assertIsNone(listener.told)

    def test_resetBeforeTheHello(self):
        """
        A client that reset its connection before sending anything is lost
        as the reactor's read would have found: nothing counted, the
        router's protocol never connected.
        """
        peer, accepted, address = self.pair()
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        peer.close()
        self.waitReadable(accepted)
        reactor, owner, listener, transport = self.accept(accepted, address)
        reactor.advance(0)
        self.assertEqual(owner.errors, [])
        self.assertIsNone(listener.told)
        self.assertTrue(transport.disconnected)


class FakeSplice:
    """
    What an L{Upstream} tells its splice.
    """

    lastActivity = 0.0
    watchIdle = False

    def __init__(self):
        self.ended_ = []
        self.lost_ = []

    def seconds(self):
        return 0.0

    def connected(self, upstream):
        pass

    def ended(self, end):
        self.ended_.append(end)

    def lost(self, end, reason):
        self.lost_.append((end, reason))


class SpliceServerHelloAtAcceptTests(ClientHelloAtAcceptTests):
    """
    The same with the transport of a TCP router's own port
    (L{meshproxy.transport.stream.SpliceServer}).
    """

    transportClass = SpliceServer


class UpstreamEndTests(LoopbackTestCase):
    def connect(self, accepted, address):
        reactor = FDReactor()
        splice = FakeSplice()
        upstream = Upstream(splice)
        forwarded = []
        upstream.forward = forwarded.append
        transport = tcp.Server(accepted, upstream, address, None, 0, reactor)
        upstream.makeConnection(transport)
        return reactor, splice, upstream, forwarded, transport

    def test_endReadWithTheFirstBytes(self):
        """
        An upstream that answered and ended before its first bytes were
        read has its end read in the same event: the splice hears of it
        and the socket is no longer read.
        """
        backend, accepted, address = self.pair()
        reactor, splice, upstream, forwarded, transport = self.connect(accepted, address)
        backend.sendall(b"answer")
        backend.shutdown(socket.SHUT_WR)
        self.waitReadable(accepted)
        self.assertIsNone(transport.doRead())
        self.assertEqual(forwarded, [b"answer"])
        self.assertEqual(splice.ended_, [upstream])
        self.assertNotIn(transport, reactor.getReaders())

    def test_resetAfterTheFirstBytes(self):
        """
        An upstream that answered and reset the connection: the bytes are
        forwarded, then the connection is lost (not ended cleanly) in the
        same event.
        """
        from twisted.internet.error import ConnectionLost

        backend, accepted, address = self.pair()
        reactor, splice, upstream, forwarded, transport = self.connect(accepted, address)
        backend.sendall(b"answer")
        backend.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        backend.close()
        self.waitReadable(accepted)
        self.assertIsNone(transport.doRead())
        self.assertEqual(forwarded, [b"answer"])
        self.assertEqual(splice.ended_, [])
        [(end, reason)] = splice.lost_
        self.assertIs(end, upstream)
        self.assertTrue(reason.check(ConnectionLost))
        self.assertTrue(transport.disconnected)

    def test_onlyAfterTheFirstRead(self):
        """
        An upstream that goes on sending costs one read more, after its
        first bytes, not one per read: its end is read on a later turn.
        """
        backend, accepted, address = self.pair()
        reactor, splice, upstream, forwarded, transport = self.connect(accepted, address)
        backend.sendall(b"first")
        self.waitReadable(accepted)
        self.assertIsNone(transport.doRead())
        self.assertEqual(forwarded, [b"first"])
        self.assertEqual(splice.ended_, [])
        backend.sendall(b"second")
        backend.shutdown(socket.SHUT_WR)
        self.waitReadable(accepted)
        self.assertIsNone(transport.doRead())
        self.assertEqual(forwarded, [b"first", b"second"])
        self.assertEqual(splice.ended_, [])
        self.assertIsNotNone(transport.doRead())

    def test_notWhenPaused(self):
        """
        When forwarding the first bytes paused the upstream (the client's
        buffer is full), nothing more is read until it is resumed.
        """
        from meshproxy.transport.gate import PauseGate

        backend, accepted, address = self.pair()
        reactor, splice, upstream, forwarded, transport = self.connect(accepted, address)
        upstream.gate = PauseGate(transport)

        def forward(data):
            forwarded.append(data)
            upstream.gate.pause("peer")

        upstream.forward = forward
        backend.sendall(b"answer")
        backend.shutdown(socket.SHUT_WR)
        self.waitReadable(accepted)
        self.assertIsNone(transport.doRead())
        self.assertEqual(forwarded, [b"answer"])
        self.assertEqual(splice.ended_, [])
        self.assertNotIn(transport, reactor.getReaders())
