"""
What is read of a connection before its protocol starts: a PROXY header
from a trusted load balancer, and (for a TCP router routing by SNI) the
TLS ClientHello, peeked at without being consumed.

L{PreambleFactory} stands in front of a router's listening factory (in
front of its TLS, when it terminates TLS: the PROXY header comes before
the TLS handshake, and the server name is read from the handshake's first
message). For each connection it asks the router's factory what to read
(L{PreambleSettings}); when there is nothing to read, the connection goes
to the router's protocol as it is. Otherwise a L{Preamble} reads first,
bounded in bytes and in time, then tells the router's innermost protocol
what it read (L{IPreambleListener.preambleRead}: the header, the server
name), connects it, gives it every byte read after the PROXY header
(the ClientHello included), and steps out of the connection's path.

From peers outside C{proxyProtocol.from}, a connection that starts with
a PROXY signature is refused (a client must not choose the address the
proxy sees); the others go to their protocol at once, their first bytes
looked at on the way.

A bad header or ClientHello, one that does not come in time, or a
missing header where one is required closes the connection, counted by
reason in the router's errors.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import attrs
from twisted.internet.interfaces import IHalfCloseableProtocol, ILoggingContext, IProtocol
from twisted.internet.protocol import Factory, connectionDone
from twisted.logger import Logger
from zope.interface import Interface, implementer

from meshproxy.transport.clienthello import ClientHelloError, ClientHelloReader
from meshproxy.transport.fastwrite import PLAIN_TCP
from meshproxy.transport.proxyprotocol import (
    ProxyHeader,
    ProxyProtocolError,
    TrustedSenders,
    looksLikeHeader,
    parseHeader,
)

if TYPE_CHECKING:
    from twisted.internet.interfaces import IAddress, IDelayedCall, IReactorTime
    from twisted.python.failure import Failure

__all__ = ["IPreambleListener", "Preamble", "PreambleFactory", "PreambleSettings"]

_log = Logger()


class IPreambleListener(Interface):
    """
    A router's protocol that wants to know what was read before it.
    """

    def preambleRead(proxied: ProxyHeader | None, serverName: str | None) -> None:
        """
        Called once, before the protocol's connection is made.

        @param proxied: the PROXY header read, or L{None} when none was.
        @param serverName: the ClientHello's server name, or L{None} (not
            read, or the client sent none).
        """


@attrs.frozen
class PreambleSettings:
    """
    What a router reads before its protocol starts.

    @ivar senders: the peers whose PROXY headers are read, or L{None}
        when the router accepts none.
    @ivar required: whether those peers must send one.
    @ivar proxyTimeout: seconds a trusted peer has to send its header.
    @ivar clientHello: whether the ClientHello's server name is read.
    @ivar maxClientHelloBytes: the bytes read at most for it.
    @ivar clientHelloTimeout: seconds a client has to send it all.
    """

    senders: TrustedSenders | None = None
    required: bool = False
    proxyTimeout: float = 5.0
    clientHello: bool = False
    maxClientHelloBytes: int = 16384
    clientHelloTimeout: float = 5.0

    @classmethod
    def fromConfig(cls, config: Any) -> PreambleSettings | None:
        """
        The settings of a router's config, or L{None} when it reads
        nothing before its protocol.

        @param config: a L{RouterConfig<meshproxy.config.RouterConfig>}.
        """
        proxy = config.proxyProtocol
        accept = proxy is not None and proxy.accept
        identifier = config.identifier
        hello = config.protocol == "tcp" and identifier.kind == "sni"
        if not (accept or hello):
            return None
        return cls(
            senders=TrustedSenders(proxy.from_) if accept else None,
            required=bool(accept and proxy.required),
            proxyTimeout=proxy.timeout if accept else 5.0,
            clientHello=hello,
            maxClientHelloBytes=identifier.maxClientHelloBytes,
            clientHelloTimeout=identifier.clientHelloTimeout,
        )


# The states of a preamble.
_PROXY = "PROXY"  # reading a trusted peer's PROXY header
_HELLO = "HELLO"  # reading the ClientHello
_CHECK = "CHECK"  # handed on; the first bytes of an untrusted peer looked at
_DONE = "DONE"  # handed on; bytes passed through (when not stepped out)
_CLOSED = "CLOSED"  # closed before handing on


@implementer(IProtocol, IHalfCloseableProtocol, ILoggingContext)
class Preamble:
    """
    Reads one connection's preamble, then hands the connection on (see the
    module docstring).

    @ivar wrapped: the protocol the connection goes to.
    @ivar transport: the connection.
    @ivar proxied: the PROXY header read, or L{None}.
    @ivar serverName: the ClientHello's server name, or L{None}.
    """

    __slots__ = (
        "wrapped",
        "transport",
        "connected",
        "proxied",
        "serverName",
        "_settings",
        "_clock",
        "_owner",
        "_state",
        "_buffer",
        "_hello",
        "_timer",
        "_watch",
        "_handed",
    )

    def __init__(
        self,
        wrapped: IProtocol,
        settings: PreambleSettings,
        *,
        clock: IReactorTime,
        owner: Any,
    ) -> None:
        """
        @param wrapped: the protocol the connection goes to (the router's,
            or the TLS layer in front of it).
        @param settings: what to read.
        @param clock: for the time bounds.
        @param owner: the router's listening factory: its C{router}'s
            C{countError(reason)} counts the refusals, and no connection is
            handed on once it is C{draining}.
        """
        self.wrapped = wrapped
        self.transport: Any = None
        self.connected = False
        self.proxied: ProxyHeader | None = None
        self.serverName: str | None = None
        self._settings = settings
        self._clock = clock
        self._owner = owner
        self._state = _PROXY
        self._buffer = b""
        self._hello: ClientHelloReader | None = None
        self._timer: IDelayedCall | None = None
        # Whether the first bytes are looked at for a PROXY signature.
        self._watch = False
        # Whether the wrapped protocol's connection is made.
        self._handed = False

    # -- IProtocol ----------------------------------------------------------

    def makeConnection(self, transport: Any) -> None:
        """
        See L{IProtocol.makeConnection}: decide what to read from this peer.
        """
        self.transport = transport
        self.connected = True
        settings = self._settings
        senders = settings.senders
        if senders is not None and senders.trusts(getattr(transport.getPeer(), "host", None)):
            self._state = _PROXY
            self._arm(settings.proxyTimeout)
            return
        self._watch = senders is not None
        if settings.clientHello:
            # A TLS client speaks first, and has mostly spoken by the time
            # its connection is accepted: its ClientHello is read now, which
            # saves a turn of the reactor and the time bound's timer.
            first = _readNow(transport)
            if first is None:
                # Reset before it spoke: lost, as the reactor's read would
                # have found (nothing to count).
                self._state = _CLOSED
                transport.abortConnection()
            elif first:
                self._hello = ClientHelloReader(settings.maxClientHelloBytes)
                self._state = _HELLO
                self._readHello(first)
                if self._state is _HELLO:
                    self._arm(settings.clientHelloTimeout)
            else:
                self._readHello(b"")
        elif self._watch:
            self._state = _CHECK
            self._arm(settings.proxyTimeout)
            self._connectWrapped()
        else:
            self._handOn(b"")

    def connectionMade(self) -> None:
        """
        See L{IProtocol.connectionMade} (L{makeConnection} did the work).
        """

    def dataReceived(self, data: bytes) -> None:
        """
        See L{IProtocol.dataReceived}.
        """
        state = self._state
        if state is _DONE:
            self.wrapped.dataReceived(data)
        elif state is _PROXY:
            self._readProxy(data)
        elif state is _HELLO:
            self._readHello(data)
        elif state is _CHECK:
            self._check(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """
        See L{IProtocol.connectionLost}: passed on once handed on.
        """
        self.connected = False
        self._disarm()
        self._state = _CLOSED
        if self._handed:
            self.wrapped.connectionLost(reason)

    def readConnectionLost(self) -> None:
        """
        See L{IHalfCloseableProtocol.readConnectionLost}.
        """
        state = self._state
        if state is _CHECK:
            # What was held back is no header: it goes on first.
            self._state = _DONE
            self._disarm()
            self._release()
            state = _DONE
        if state is _DONE:
            halfCloseable = IHalfCloseableProtocol(self.wrapped, None)
            if halfCloseable is not None:
                halfCloseable.readConnectionLost()
            else:
                self.transport.loseConnection()
        elif state is _PROXY and not self._buffer and not self._settings.required:
            # A peer that sent nothing: no header.
            self._afterProxy(b"")
            if self._state is _DONE:
                self.readConnectionLost()
            elif self._state is _HELLO:
                self._refuse("client-hello-invalid", "the client ended before its ClientHello")
        elif state is _PROXY:
            self._refuse("proxy-protocol-missing" if not self._buffer else
                         "proxy-protocol-invalid", "the peer ended before its PROXY header")
        elif state is _HELLO:
            self._refuse("client-hello-invalid", "the client ended before its ClientHello")

    def writeConnectionLost(self) -> None:
        """
        See L{IHalfCloseableProtocol.writeConnectionLost}.
        """
        halfCloseable = IHalfCloseableProtocol(self.wrapped, None)
        if halfCloseable is not None and self._handed:
            halfCloseable.writeConnectionLost()

    def logPrefix(self) -> str:
        """
        See L{ILoggingContext.logPrefix}.
        """
        wrapped = self.wrapped
        if ILoggingContext.providedBy(wrapped):
            return str(wrapped.logPrefix())
        return wrapped.__class__.__name__

    # -- the stages -----------------------------------------------------------

    def _readProxy(self, data: bytes) -> None:
        buffer = self._buffer = self._buffer + data
        if not self._settings.required and looksLikeHeader(buffer) is False:
            # Not a header, and none is needed: the client's own bytes.
            self._buffer = b""
            self._afterProxy(buffer)
            return
        try:
            header = parseHeader(buffer)
        except ProxyProtocolError as e:
            self._refuse(
                "proxy-protocol-invalid" if looksLikeHeader(buffer) else "proxy-protocol-missing",
                e.detail,
            )
            return
        if header is None:
            return
        self.proxied = header
        self._buffer = b""
        self._afterProxy(buffer[header.length :])

    def _afterProxy(self, rest: bytes) -> None:
        """
        The PROXY stage is over (with a header or without): read the
        ClientHello next, or hand on.
        """
        self._disarm()
        if self._settings.clientHello:
            self._readHello(rest)
        else:
            self._handOn(rest)

    def _readHello(self, data: bytes) -> None:
        hello = self._hello
        if hello is None:
            hello = self._hello = ClientHelloReader(self._settings.maxClientHelloBytes)
            self._state = _HELLO
            self._arm(self._settings.clientHelloTimeout)
            if not data:
                return
        try:
            done = hello.feed(data)
        except ClientHelloError as e:
            if self._watch and looksLikeHeader(hello.received) is not False:
                self._refuse("proxy-protocol-refused", "a PROXY header from an untrusted peer")
            elif e.reason == "oversized":
                self._refuse("client-hello-oversized", str(e))
            else:
                self._refuse("client-hello-invalid", str(e))
            return
        if done:
            self.serverName = hello.serverName
            received = hello.received
            self._hello = None
            self._handOn(received)

    def _check(self, data: bytes) -> None:
        buffer = self._buffer + data
        verdict = looksLikeHeader(buffer)
        if verdict is None:
            self._buffer = buffer
            return
        if verdict:
            self._refuse("proxy-protocol-refused", "a PROXY header from an untrusted peer")
            return
        self._buffer = buffer
        self._state = _DONE
        self._disarm()
        self._release()

    # -- handing on -----------------------------------------------------------

    def _handOn(self, rest: bytes) -> None:
        """
        Tell the router's protocol what was read, connect it, and give it
        C{rest}, the bytes read after the PROXY header.
        """
        if self._timer is not None:
            self._disarm()
        if getattr(self._owner, "draining", False):
            self._state = _CLOSED
            self.transport.loseConnection()
            return
        self._state = _DONE
        self._connectWrapped()
        if self._state is not _DONE:
            return
        self._buffer = rest
        self._release()

    def _connectWrapped(self) -> None:
        wrapped = self.wrapped
        listener = wrapped if IPreambleListener.providedBy(wrapped) else _listenerOf(wrapped)
        if listener is not None:
            listener.preambleRead(self.proxied, self.serverName)
        self._handed = True
        self.wrapped.makeConnection(self.transport)

    def _release(self) -> None:
        """
        Give the bytes held to the protocol, and step out of the
        connection's path where the transport allows it (a Twisted TCP
        connection reads its C{protocol} at each event).
        """
        transport = self.transport
        if getattr(transport, "protocol", None) is self:
            transport.protocol = self.wrapped
        data, self._buffer = self._buffer, b""
        if data and self.connected:
            self.wrapped.dataReceived(data)

    # -- refusals and time ------------------------------------------------------

    def _refuse(self, reason: str, detail: str) -> None:
        """
        Close a connection whose preamble is not acceptable, counted.
        """
        self._state = _CLOSED
        self._disarm()
        self._buffer = b""
        self._hello = None
        _log.debug("preamble refused ({reason}): {detail}", reason=reason, detail=detail)
        self._owner.router.countError(reason)
        # (a protocol already connected hears of the loss)
        self.transport.abortConnection()

    def _arm(self, seconds: float) -> None:
        self._disarm()
        self._timer = self._clock.callLater(seconds, self._timedOut)

    def _disarm(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def _timedOut(self) -> None:
        self._timer = None
        state = self._state
        if state is _PROXY:
            if not self._buffer and not self._settings.required:
                # No header came, and none is needed (a client that waits
                # for the server to speak first).
                self._afterProxy(b"")
            elif not self._buffer:
                self._refuse("proxy-protocol-missing", "no PROXY header in time")
            else:
                self._refuse("proxy-protocol-timeout", "no complete PROXY header in time")
        elif state is _HELLO:
            self._refuse("client-hello-timeout", "no complete ClientHello in time")
        elif state is _CHECK:
            # A few bytes that may still become a signature, and no more:
            # not a header.
            self._state = _DONE
            self._release()


def _readNow(transport: Any) -> bytes | None:
    """
    The bytes a plain TCP connection has already received, read at once
    (as the reactor would on its next turn).

    @return: the bytes; C{b""} when there are none yet, at the end (which
        the reactor's own read meets again), or for another kind of
        transport; L{None} when the connection failed.
    """
    if type(transport) not in PLAIN_TCP or transport.disconnecting:
        return b""
    try:
        data: bytes = transport.socket.recv(transport.bufferSize)
    except BlockingIOError:
        return b""
    except OSError:
        return None
    return data


def _listenerOf(protocol: Any) -> Any:
    """
    The first L{IPreambleListener} down a chain of wrapping protocols (a
    TLS layer's C{wrappedProtocol}), or L{None}.
    """
    while protocol is not None:
        if IPreambleListener.providedBy(protocol):
            return protocol
        protocol = getattr(protocol, "wrappedProtocol", None)
    return None


class PreambleFactory(Factory):
    """
    Stands in front of a router's listening factory (see the module
    docstring).

    @ivar routerFactory: the router's factory: C{preamble()} gives the
        L{PreambleSettings} (or L{None}) of each new connection, from the
        router in force.
    @ivar listening: the factory connections are built with (the router's
        factory, or the TLS in front of it).
    """

    noisy = False

    def __init__(self, routerFactory: Any, listening: Any, *, clock: IReactorTime) -> None:
        self.routerFactory = routerFactory
        self.listening = listening
        self.clock = clock

    def buildProtocol(self, addr: IAddress) -> IProtocol | None:  # type: ignore[override]
        """
        The listening factory's protocol, behind a L{Preamble} when the
        router reads one.
        """
        protocol = self.listening.buildProtocol(addr)
        if protocol is None:
            return None
        settings = self.routerFactory.preamble()
        if settings is None:
            return protocol
        return Preamble(protocol, settings, clock=self.clock, owner=self.routerFactory)

    def __getattr__(self, name: str) -> Any:
        # Everything else is the listening factory's: the listener's
        # factory is still the router's (or its TLS) to whoever looks at it
        # (a reload's switch, the drain, tests).
        if name.startswith("__") or name in ("listening", "routerFactory"):
            raise AttributeError(name)
        return getattr(self.listening, name)

    def doStart(self) -> None:
        """
        Start the listening factory too.
        """
        self.listening.doStart()
        super().doStart()

    def doStop(self) -> None:
        """
        Stop the listening factory too.
        """
        self.listening.doStop()
        super().doStop()

