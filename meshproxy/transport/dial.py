"""
A TCP connection to an IP address made with one non-blocking C{connect}.

C{reactor.connectTCP} makes a L{Connector}, a L{tcp.Client} that resolves
its address through a L{Deferred} on the next turn of the reactor (even an
IP literal), then connects, watching the socket for reading and writing,
and once writable asks the kernel again, unregisters the socket, looks up
the peer's address and registers it for reading. For a proxy that opens a
connection per client connection, that is a good part of the cost of a
connection. L{dial} does the same job for an IP address in one step: it
calls C{connect} at once; on loopback the connection is usually made
within that call (a second C{connect} says so), and the protocol is
connected before L{dial} returns; otherwise the socket is watched for
writing only. The transport is a L{tcp.Client} (L{DialedClient}): once
connected, it is the reactor's own TCP connection.

A host name, or a reactor that is not a POSIX one (the memory reactors of
the tests), goes through C{reactor.connectTCP} as before.

As with C{connectTCP}, a failure (refused, unreachable, the connect
timeout) is reported to the factory's C{clientConnectionFailed} on a later
turn of the reactor, never from within L{dial}.
"""

from __future__ import annotations

import socket
from errno import EALREADY, EINPROGRESS, EISCONN, EWOULDBLOCK
from functools import lru_cache
from os import strerror
from typing import TYPE_CHECKING, Any

from twisted.internet import abstract, address, error, tcp
from twisted.internet.interfaces import IConnector
from twisted.internet.posixbase import PosixReactorBase
from zope.interface import implementer

from meshproxy.transport.stream import RawSocket, ipv4Address, readConnection, releaseConnection

if TYPE_CHECKING:
    from twisted.internet.interfaces import IAddress, IDelayedCall, IProtocol
    from twisted.internet.protocol import ClientFactory
    from twisted.python.failure import Failure

__all__ = ["DialedClient", "Dial", "dial"]

_PENDING = (EINPROGRESS, EALREADY, EWOULDBLOCK)

#: Makes a socket non-blocking as it is made, where the system can (Linux).
_NONBLOCK: int = getattr(socket, "SOCK_NONBLOCK", 0)


def dial(
    reactor: Any, host: str, port: int, factory: ClientFactory, timeout: float
) -> IConnector:
    """
    Connect to C{host}:C{port} (see the module docstring).

    @param reactor: the reactor; anything but a POSIX reactor is asked to
        C{connectTCP}.
    @param host: an IPv4 or IPv6 address (a name goes through
        C{connectTCP}).
    @param port: the port.
    @param factory: builds the protocol once connected
        (C{buildProtocol}), or hears of the failure
        (C{clientConnectionFailed}) and, once connected, of the end
        (C{clientConnectionLost}).
    @param timeout: the seconds the connection may take.
    @return: the attempt, whose C{stopConnecting} calls it off.
    """
    if not isinstance(reactor, PosixReactorBase):
        return reactor.connectTCP(host, port, factory, timeout)
    known = _kindOf(host)
    if known is None:
        return reactor.connectTCP(host, port, factory, timeout)
    family, kind = known
    if family == socket.AF_INET6:
        target: tuple[Any, ...] = tcp._resolveIPv6(host, port)
    else:
        target = (host, port)
    attempt = Dial(factory, host, port, kind)
    attempt.transport = transport = DialedClient(attempt, family, target, kind, reactor)
    transport.start()
    if attempt.state == "connecting":
        # Not connected within start (on loopback it mostly is): the
        # timeout runs from now. A connection made at once needs no timer,
        # nor the work of setting and cancelling one.
        attempt.timer = reactor.callLater(
            timeout, transport.failIfNotConnected, error.TimeoutError()
        )
    return attempt


@lru_cache(maxsize=4096)
def _kindOf(
    host: str,
) -> tuple[socket.AddressFamily, type[address.IPv4Address | address.IPv6Address]] | None:
    """
    The address family and address type of an IP address (L{None} for a
    name): asked once per address rather than per connection (the checks
    are Python code; the endpoints of a process are few).
    """
    if abstract.isIPAddress(host):
        return socket.AF_INET, address.IPv4Address
    if abstract.isIPv6Address(host):
        return socket.AF_INET6, address.IPv6Address
    return None


@implementer(IConnector)
class Dial:
    """
    One connection attempt of L{dial}: the L{IConnector} its transport
    reports to, passing on to the factory.

    @ivar factory: the factory.
    @ivar transport: the L{DialedClient}.
    @ivar timer: the connect timeout's call, until connected or failed.
    """

    __slots__ = ("factory", "transport", "timer", "host", "port", "_kind", "state")

    def __init__(
        self,
        factory: ClientFactory,
        host: str,
        port: int,
        kind: type[address.IPv4Address | address.IPv6Address],
    ) -> None:
        self.factory = factory
        self.host = host
        self.port = port
        self._kind = kind
        self.transport: DialedClient | None = None
        self.timer: IDelayedCall | None = None
        self.state = "connecting"

    def _cancelTimer(self) -> None:
        timer, self.timer = self.timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def buildProtocol(self, addr: IAddress | None) -> IProtocol | None:
        """
        The connection is made: the factory's protocol for it.
        """
        if self.timer is not None:
            self._cancelTimer()
        self.state = "connected"
        return self.factory.buildProtocol(addr)

    def connectionFailed(self, reason: Failure) -> None:
        """
        The attempt failed (or was called off).
        """
        self._cancelTimer()
        self.state = "disconnected"
        self.factory.clientConnectionFailed(self, reason)

    def connectionLost(self, reason: Failure) -> None:
        """
        The connection, once made, is lost.
        """
        self.state = "disconnected"
        factory = self.factory
        # The transport keeps its connector: let go of the rest, so that
        # nothing here waits for the garbage collector.
        self.transport = None
        self.factory = None  # type: ignore[assignment]
        factory.clientConnectionLost(self, reason)

    # -- IConnector -------------------------------------------------------------

    def stopConnecting(self) -> None:
        """
        See L{IConnector.stopConnecting}: the factory hears of a
        L{UserError<twisted.internet.error.UserError>}.
        """
        if self.state != "connecting":
            raise error.NotConnectingError("we're not trying to connect")
        self.transport.failIfNotConnected(error.UserError())  # type: ignore[union-attr]

    def disconnect(self) -> None:
        """
        See L{IConnector.disconnect}.
        """
        if self.state == "connecting":
            self.stopConnecting()
        elif self.state == "connected":
            self.transport.loseConnection()  # type: ignore[union-attr]

    def connect(self) -> None:
        """
        See L{IConnector.connect}: an attempt is made once.

        @raise RuntimeError: always.
        """
        raise RuntimeError("a dialed connection is not made again")

    def getDestination(self) -> IAddress:
        """
        See L{IConnector.getDestination}.
        """
        return self._kind("TCP", self.host, self.port)


class DialedClient(tcp.Client):
    """
    The transport of a L{dial}: a L{tcp.Client} that connects at once (see
    the module docstring).
    """

    def __init__(
        self,
        connector: Dial,
        family: socket.AddressFamily,
        target: tuple[Any, ...],
        kind: type[address.IPv4Address | address.IPv6Address],
        reactor: Any,
    ) -> None:
        # Not tcp.Client.__init__: it resolves the address through a
        # Deferred and connects on the next turn of the reactor.
        self.connector = connector
        self.addr = self.realAddress = target
        self.addressFamily = family
        self._addressType = kind  # type: ignore[assignment]  # IPv4Address or IPv6Address
        self._requiresResolution = False
        # tcp.Connection.__init__ without its setblocking(False): the
        # socket is made non-blocking (one ioctl less per connection); and
        # FileDescriptor.__init__, inline.
        self.reactor = reactor
        self._tempDataBuffer = []
        self._tempDataLen = 0
        # (the bare socket type: see meshproxy.transport.stream.RawSocket)
        skt: Any = RawSocket(family, socket.SOCK_STREAM | _NONBLOCK)
        if not _NONBLOCK:
            skt.setblocking(False)
        self.socket = skt
        self.fileno = skt.fileno
        self.protocol = None  # type: ignore[assignment]  # built once connected

    def start(self) -> None:
        """
        Connect: at once when the kernel can, else once the socket is
        writable.
        """
        skt = self.socket
        target = self.realAddress
        try:
            result = skt.connect_ex(target)
            if result == EINPROGRESS:
                # On loopback the handshake is over by now.
                result = skt.connect_ex(target)
        except OSError as e:
            result = e.args[0]
        if result == 0 or result == EISCONN:
            self._connectDone()
        elif result in _PENDING:
            self.doWrite = self._whenWritable  # type: ignore[method-assign]
            self.startWriting()
        else:
            self.reactor.callLater(  # type: ignore[attr-defined]  # a PosixReactorBase
                0, self.failIfNotConnected, error.getConnectError((result, strerror(result)))
            )

    def _whenWritable(self) -> None:
        """
        The socket is writable while connecting: connected, or failed.
        """
        err = self.socket.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self.failIfNotConnected(error.getConnectError((err, strerror(err))))
            return
        del self.doWrite
        self.stopWriting()
        self._connectDone()

    def _connectDone(self) -> None:
        """
        Connected: build the protocol, read, and connect the protocol (as
        L{tcp.BaseClient._connectDone}, without asking the kernel for the
        peer's address, which is the one dialed).
        """
        target = self.realAddress
        peer = ipv4Address(*target) if self.addressFamily == socket.AF_INET else self.getPeer()
        protocol = self.connector.buildProtocol(peer)
        self.connected = 1
        if protocol is None:
            # (as Twisted does)
            from twisted.internet.protocol import Protocol

            self.protocol = Protocol()
            self.logstr = "Uninitialized,client"
            self.loseConnection()
            return
        self.protocol = protocol
        self.reactor.addReader(self)
        protocol.makeConnection(self)

    #: The log prefix given by L{logstr}'s setter, until then L{None}.
    _logstr: str | None = None

    @property
    def logstr(self) -> str:
        """
        The log prefix, made when asked for (C{Protocol,client}, as
        Twisted's), unless one was given.
        """
        # (Never through self.__dict__: in CPython 3.11 asking an object
        # for its __dict__ turns its attribute values into a dictionary for
        # good, and every later method lookup on it is then a full one.)
        logstr = self._logstr
        if logstr is not None:
            return logstr
        # (no protocol once the connection was released)
        protocol = getattr(self, "protocol", None)
        if protocol is None:
            return "Uninitialized"
        return "%s,client" % (protocol.__class__.__name__,)

    @logstr.setter
    def logstr(self, value: str) -> None:
        self._logstr = value

    #: (L{readConnection<meshproxy.transport.stream.readConnection>}:
    #: Twisted's C{doRead} in one call rather than two)
    doRead = readConnection

    def connectionLost(self, reason: Failure) -> None:
        """
        See L{tcp.BaseClient.connectionLost}; while connecting (the socket
        reported an error or a hang-up), the kernel's reason is the one
        given. Once connected, the protocol and then the attempt hear of
        the loss, once.
        """
        if not self.connected:
            if not self.disconnected and hasattr(self, "socket"):
                err = self.socket.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    self.failIfNotConnected(error.getConnectError((err, strerror(err))))
                    return
            tcp.Client.connectionLost(self, reason)
            return
        protocol = releaseConnection(self, reason)
        if protocol is not None:
            protocol.connectionLost(reason)
            self.connector.connectionLost(reason)
