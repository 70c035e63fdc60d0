"""
The listening port and the accepted connections of a TCP router: Twisted's
L{tcp.Port} and L{tcp.Server}, without the work a spliced connection does
not need.

A short connection through a TCP router is accepted, routed, dialed,
spliced and closed in a few reactor events, and Twisted's own work per
accepted connection is a good part of its cost: L{tcp.Port.doRead} buffers
its log events through a context manager and two L{Logger<twisted.logger.Logger>}s
per wake-up, accepts through C{socket.accept} (two enum conversions and a
Python-level socket object per connection) and a generator, and
L{tcp.Server.__init__} formats two strings (the log prefix and the C{repr})
per connection that are read only if something logs about it; its
C{connectionLost} asks C{hasattr} and L{Failure.check<twisted.python.failure.Failure.check>}
and closes through the socket object's Python wrappers.

L{SplicePort} accepts with the socket's own C{_accept} in a loop bounded
per wake-up (adapted as Twisted's is, at most L{SplicePort.maxAccepts}),
and makes each connection a L{SpliceServer}: a L{tcp.Server} (so
everything that reads a plain TCP connection's buffers, the splice's fast
writes and closes, works on it unchanged) built without those strings and
closed without those lookups. When the process runs out of file
descriptors (or the system of memory for sockets), the port stops
accepting for L{SplicePort.acceptPause} seconds instead of waking up again
at once: connections wait in the backlog meanwhile, and the reactor does
not spin.

L{spliceEndpoint} makes a C{tcp:}/C{tcp6:} server endpoint listen with a
L{SplicePort} (the listeners of TCP routers,
L{meshproxy.listeners._ListenerService}); L{adoptSplicePort} adopts a
listening socket bound elsewhere (the workers' shared sockets).
"""

from __future__ import annotations

import _socket
import errno
import os
import socket
import struct
from typing import TYPE_CHECKING, Any

from twisted.internet import address, tcp
from twisted.internet.defer import fail, succeed
from twisted.internet.epollreactor import EPollReactor
from twisted.internet.error import ConnectionAborted
from twisted.internet.interfaces import IHalfCloseableProtocol, IStreamServerEndpoint
from twisted.internet.main import CONNECTION_DONE, CONNECTION_LOST
from twisted.internet.posixbase import PosixReactorBase
from twisted.logger import Logger
from twisted.python import reflect
from zope.interface import implementer

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred
    from twisted.internet.endpoints import TCP4ServerEndpoint, TCP6ServerEndpoint
    from twisted.internet.interfaces import IDelayedCall, IListeningPort, IProtocolFactory
    from twisted.python.failure import Failure

__all__ = [
    "RawSocket",
    "SplicePort",
    "SpliceServer",
    "adoptSplicePort",
    "ipv4Address",
    "readConnection",
    "releaseConnection",
    "spliceEndpoint",
]

_log = Logger()

#: The socket type beneath C{socket.socket}, without its Python wrapper
#: (whose constructor and C{close} are Python code): what a connection's
#: transport calls on it (C{recv}, C{send}, C{shutdown}, C{close},
#: C{fileno}, C{getsockname}, C{setsockopt}) are the same methods.
RawSocket = _socket.socket

#: Errors of C{accept} that concern the one connection being accepted (it
#: was reset before it was accepted, or the firewall refused it): accept
#: the next.
_SKIP = frozenset([errno.ECONNABORTED, errno.EPERM, errno.EPROTO, errno.EINTR])

#: Errors of C{accept} saying the process or the system has no room for
#: another socket: accepting pauses.
_EXHAUSTED = frozenset([errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM])

#: SO_LINGER on, with a zero timeout: C{close} resets the connection.
_LINGER_RESET = struct.pack("ii", 1, 0)

_IPv6Address = address.IPv6Address
_newObject = object.__new__
_IPv4Address = address.IPv4Address
_NUMERIC = socket.NI_NUMERICHOST | socket.NI_NUMERICSERV


def readConnection(conn: tcp.Connection) -> Any:
    """
    What L{tcp.Connection.doRead} does, in one function: read what the
    socket has (up to C{bufferSize}) and give it to the protocol. At the
    end, a half-closeable protocol is told here what the reactor would
    tell it once it had this method's C{CONNECTION_DONE} (the reading
    stops, and its C{readConnectionLost} is called), without the
    reactor's Failure, lookups and adaptations.

    @return: L{None}; the reactor's reason at the end of a protocol that
        is not half-closeable (C{CONNECTION_DONE}) or after an error
        (C{CONNECTION_LOST}).
    """
    try:
        data = conn.socket.recv(conn.bufferSize)
    except BlockingIOError:
        return None
    except OSError:
        return CONNECTION_LOST
    if data:
        conn.protocol.dataReceived(data)
        return None
    halfCloseable = IHalfCloseableProtocol(conn.protocol, None)
    if halfCloseable is None:
        return CONNECTION_DONE
    conn.reactor.removeReader(conn)
    halfCloseable.readConnectionLost()
    return None


def ipv4Address(host: str, port: int) -> address.IPv4Address:
    """
    An L{IPv4Address<twisted.internet.address.IPv4Address>} of TCP, made
    without its constructor's checks (C{host} and C{port} come from the
    kernel): one per accepted connection and per dialed one.
    """
    peer = _newObject(_IPv4Address)
    peer.type = "TCP"
    peer.host = host
    peer.port = port
    return peer


def releaseConnection(conn: tcp.Connection, reason: Failure) -> Any:
    """
    What L{tcp.Connection.connectionLost} and
    L{FileDescriptor.connectionLost<twisted.internet.abstract.FileDescriptor.connectionLost>}
    do before they tell the protocol, without their lookups: the first
    time, stop the producer, stop watching the connection, close its
    socket (with a reset after an abort, else after a C{shutdown} unless
    C{_shouldShutdown} is off) and let go of its protocol.

    @param conn: a plain TCP connection.
    @param reason: why it is lost.
    @return: the protocol to tell, or L{None} when the connection was
        released already.
    """
    state = conn.__dict__
    sock = state.get("socket")
    if sock is None:
        return None
    conn.disconnected = 1
    conn.connected = 0
    producer = conn.producer
    if producer is not None:
        conn.producer = None
        producer.stopProducing()
    # Stopped watching only for what an epoll reactor's sets say it
    # watches: the loss of a short connection finds it watched for neither,
    # most often.
    reactor: Any = conn.reactor
    if isinstance(reactor, EPollReactor):
        fd = sock.fileno()
        if fd in reactor._reads:
            reactor.removeReader(conn)
        if fd in reactor._writes:
            reactor.removeWriter(conn)
    else:
        reactor.removeReader(conn)
        reactor.removeWriter(conn)
    if isinstance(reason.value, ConnectionAborted):
        # A reset rather than the orderly end.
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
        except OSError:
            pass
    elif conn._shouldShutdown:
        try:
            sock.shutdown(2)
        except OSError:
            pass
    try:
        sock.close()
    except OSError:
        pass
    del state["socket"]
    del state["fileno"]
    return state.pop("protocol")


class SpliceServer(tcp.Server):
    """
    An accepted connection of a L{SplicePort}: a L{tcp.Server} whose log
    prefix and C{repr} are made when asked for, whose socket is the bare
    socket type, and whose loss is handled in one method (see the module
    docstring).
    """

    def __init__(
        self,
        sock: Any,
        protocol: Any,
        client: tuple[Any, ...],
        server: tcp.Port,
        sessionno: int,
        reactor: Any,
    ) -> None:
        """
        As L{tcp.Server.__init__}: C{sock} is the accepted socket, made
        non-blocking here; the connection is read from now on.
        """
        # (FileDescriptor.__init__ and Connection.__init__, inline)
        self.reactor = reactor
        self._tempDataBuffer = []
        self._tempDataLen = 0
        sock.setblocking(False)
        self.socket = sock
        self.fileno = sock.fileno
        self.protocol = protocol
        if len(client) != 2:
            self._addressType = _IPv6Address
        self.server = server
        self.client = client
        self.sessionno = sessionno
        self.hostname = client[0]
        reactor.addReader(self)
        self.connected = 1

    @property
    def logstr(self) -> str:
        """
        The log prefix, made when asked for: C{Protocol,sessionno,host},
        as Twisted's.
        """
        return "%s,%s,%s" % (self._getLogPrefix(self.protocol), self.sessionno, self.hostname)

    @logstr.setter
    def logstr(self, value: str) -> None:
        # (Twisted's code only sets it in __init__, which this one skips;
        # a later assignment is kept as an instance attribute would be.)
        self.__dict__["_logstr"] = value

    def logPrefix(self) -> str:
        """
        See L{tcp.Connection.logPrefix}.
        """
        return self.__dict__.get("_logstr") or self.logstr

    def __repr__(self) -> str:
        """
        Twisted's C{repr}, made when asked for.
        """
        return "<%s #%s on %s>" % (
            type(self.__dict__.get("protocol")).__name__,
            self.sessionno,
            self.server._realPortNumber,
        )

    #: (L{readConnection}: Twisted's C{doRead} in one call rather than two)
    doRead = readConnection

    def connectionLost(self, reason: Failure) -> None:
        """
        The connection is lost: stop watching it, close its socket (with a
        reset after an abort), and tell its protocol, once (as
        L{tcp.Connection.connectionLost} does).
        """
        protocol = releaseConnection(self, reason)
        if protocol is not None:
            protocol.connectionLost(reason)


class SplicePort(tcp.Port):
    """
    A TCP listening port whose connections are L{SpliceServer}s, accepting
    without Twisted's per-connection overhead and pausing when out of
    descriptors (see the module docstring).

    @ivar accepted: the connections accepted.
    @ivar pauses: how many times accepting paused for want of descriptors
        or memory.
    @ivar failing: whether accepting failed and has not succeeded since.
    """

    transport = SpliceServer

    #: The most connections accepted per wake-up. Within it, as Twisted's
    #: port does, a wake-up accepts as many as the last one did (at least
    #: one), and 20 more when the last one took all it could.
    maxAccepts = 100

    #: Seconds accepting pauses when the process or the system cannot take
    #: another socket (C{EMFILE}, C{ENFILE}, C{ENOBUFS}, C{ENOMEM}).
    acceptPause = 0.1

    accepted = 0
    pauses = 0
    failing = False
    _resume: IDelayedCall | None = None
    _limit = 1

    def doRead(self) -> None:
        """
        Accept the connections waiting, at most as many as the limit of this
        wake-up, and start each (see L{tcp.Port.doRead}).
        """
        listener: Any = self.socket
        accept = listener._accept
        factory = self.factory
        family = self.addressFamily
        reactor = self.reactor
        make = self.transport
        newObject = _newObject
        IPv4 = _IPv4Address
        limit = self._limit
        n = 0
        for _ in range(limit):
            try:
                fd, addr = accept()
            except BlockingIOError:
                break
            except OSError as e:
                if e.errno in _SKIP:
                    continue
                self._exhausted(e)
                return
            n += 1
            try:
                skt = RawSocket(family, socket.SOCK_STREAM, 0, fd)
            except OSError as e:
                # (the descriptor is ours: without a socket, close it here)
                _closeDescriptor(fd)
                self._exhausted(e)
                return
            if len(addr) == 4:
                # IPv6: the scope ID in the host, as Twisted gives it.
                host = socket.getnameinfo(addr, _NUMERIC)[0]
                addr = (host,) + tuple(addr[1:])
                peer: Any = _IPv6Address("TCP", *addr)
            else:
                # (ipv4Address, inline)
                peer = newObject(IPv4)
                peer.type = "TCP"
                peer.host, peer.port = addr
            try:
                protocol = factory.buildProtocol(peer)  # type: ignore[union-attr]
                if protocol is None:
                    skt.close()
                    continue
                s = self.sessionno
                self.sessionno = s + 1
                transport = make(skt, protocol, addr, self, s, reactor)
                protocol.makeConnection(transport)
            except Exception:
                # What Twisted's port does with what a factory or protocol
                # raises: logged; the port goes on accepting.
                _log.failure("accepting a connection on {port}", port=self.logPrefix())
        if n:
            self.accepted += n
            if self.failing:
                self.failing = False
                _log.info("{port}: accepting connections again", port=self.logPrefix())
        if n >= limit:
            self._limit = min(limit + 20, self.maxAccepts)
        else:
            self._limit = n if n > 1 else 1

    def _exhausted(self, e: OSError) -> None:
        """
        C{accept} failed for want of descriptors or memory (or with an error
        it should not give): stop accepting for L{acceptPause} seconds. The
        listening socket stays readable meanwhile, and a reactor watching it
        would wake up at once, again and again. Said once until a
        connection is accepted again.
        """
        self.pauses += 1
        if not self.failing:
            self.failing = True
            if e.errno in _EXHAUSTED:
                reason = "%s: %s" % (errno.errorcode[e.errno], e.strerror)
            else:
                reason = str(e)
            _log.warn(
                "{port}: cannot accept connections ({reason}): pausing {seconds} s at a time"
                " until it can",
                port=self.logPrefix(), reason=reason, seconds=self.acceptPause,
            )
        if self._resume is None:
            self.stopReading()
            self._resume = self.reactor.callLater(  # type: ignore[attr-defined]
                self.acceptPause, self._resumeAccepting
            )

    def _resumeAccepting(self) -> None:
        self._resume = None
        if self.connected and not self.disconnecting:
            self._limit = 1
            self.startReading()

    def loseConnection(self, connDone: Failure | None = None) -> Deferred[None] | None:
        """
        See L{tcp.Port.loseConnection}: a pause in progress is called off.
        """
        resume, self._resume = self._resume, None
        if resume is not None and resume.active():
            resume.cancel()
        if connDone is None:
            return tcp.Port.loseConnection(self)
        return tcp.Port.loseConnection(self, connDone)

    stopListening = loseConnection

    def logPrefix(self) -> str:
        """
        See L{tcp.Port.logPrefix}: the factory's own, when it has one.
        """
        factory = self.factory
        prefix = getattr(factory, "logPrefix", None)
        if prefix is not None:
            try:
                return str(prefix())
            except TypeError:
                pass
        return reflect.qual(factory.__class__)


def _closeDescriptor(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass


@implementer(IStreamServerEndpoint)
class SpliceEndpoint:
    """
    A C{tcp:}/C{tcp6:} server endpoint that listens with a L{SplicePort}.

    @ivar endpoint: the Twisted endpoint it stands for.
    """

    def __init__(self, endpoint: TCP4ServerEndpoint | TCP6ServerEndpoint) -> None:
        self.endpoint = endpoint

    def listen(self, protocolFactory: IProtocolFactory) -> Deferred[IListeningPort]:
        """
        See L{IStreamServerEndpoint.listen}: bound at once (a Deferred
        already fired with the port, or failed with
        L{CannotListenError<twisted.internet.error.CannotListenError>}).
        """
        endpoint = self.endpoint
        port = SplicePort(
            endpoint._port,
            protocolFactory,
            endpoint._backlog,
            endpoint._interface,
            endpoint._reactor,
        )
        try:
            port.startListening()
        except Exception:
            return fail()
        return succeed(port)


def spliceEndpoint(endpoint: IStreamServerEndpoint) -> IStreamServerEndpoint:
    """
    The endpoint a TCP router listens with: a Twisted C{tcp:}/C{tcp6:}
    endpoint on a POSIX reactor listens with a L{SplicePort}; any other
    (C{systemd:}, UNIX, the memory reactors of tests) is returned as it
    is.
    """
    from twisted.internet.endpoints import TCP4ServerEndpoint, TCP6ServerEndpoint

    if type(endpoint) in (TCP4ServerEndpoint, TCP6ServerEndpoint):
        tcpEndpoint: Any = endpoint
        if isinstance(tcpEndpoint._reactor, PosixReactorBase):
            return SpliceEndpoint(tcpEndpoint)
    return endpoint


def adoptSplicePort(
    reactor: Any,
    fd: int,
    family: socket.AddressFamily,
    factory: IProtocolFactory,
    *,
    maxAccepts: int | None = None,
) -> SplicePort:
    """
    A L{SplicePort} accepting on a listening socket bound elsewhere (see
    C{IReactorSocket.adoptStreamPort}): the reactor uses its own copy of
    C{fd}, which the caller may close.

    @param maxAccepts: the most connections accepted per wake-up, when not
        L{SplicePort.maxAccepts} (workers sharing a socket take one at a
        time, so that one does not take a whole burst).
    """
    if family not in (socket.AF_INET, socket.AF_INET6):
        raise ValueError("a TCP port is IPv4 or IPv6, not %r" % (family,))
    # (it makes its own socket of a copy of fd)
    port = SplicePort._fromListeningDescriptor(reactor, fd, family, factory)
    if maxAccepts is not None:
        port.maxAccepts = maxAccepts
    port.startListening()
    return port
