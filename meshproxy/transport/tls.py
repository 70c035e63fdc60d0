"""
TLS over a connection with the standard library's C{ssl}: an
L{ssl.SSLObject} between two memory BIOs, in place of Twisted's
L{TLSMemoryBIOProtocol<twisted.protocols.tls.TLSMemoryBIOProtocol>}.

L{TLSProtocol} sits between a TCP transport and the protocol it wraps (an
HTTP server connection, a TCP splice's end), and is that protocol's
transport. What it does differently from Twisted's, and why:

  - A write is encrypted and handed to the socket at once (through
    L{writerFor<meshproxy.transport.fastwrite.writerFor>}): no write
    aggregated until a scheduled call, which cost a timer per write.
  - A read is decrypted record by record until the memory BIO is empty,
    without asking OpenSSL once more to be told there is nothing left (an
    exception per read).
  - Back-pressure is the TCP transport's own: a producer registered here is
    registered there, and pausing or resuming this transport pauses or
    resumes the TCP connection's reading.
  - C{loseConnection} sends a close_notify and closes the TCP connection
    once what was written is sent, as a TCP connection does; it does not
    wait for the peer's close_notify (TLS 1.3 does not require it) nor for
    a registered producer to be unregistered (a spliced connection's
    never is).
  - Half-close: C{loseWriteConnection} sends a close_notify and ends the
    TCP connection's writing; a protocol providing
    L{IHalfCloseableProtocol} hears of the peer's close_notify by
    C{readConnectionLost} and may go on writing. Other protocols' peers get
    a close_notify back and the connection closes.

Failures reach the wrapped protocol's C{connectionLost}: an
L{ssl.SSLError} (a failed handshake, a bad record), a
L{VerificationError<service_identity.VerificationError>} (a client whose
peer names another identity), or L{ConnectionLost} for a TCP connection
that ended without a close_notify (a truncation), as Twisted reports them.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from cryptography import x509
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import (
    IHalfCloseableProtocol,
    IHandshakeListener,
    ILoggingContext,
    INegotiated,
    IProtocol,
    IProtocolFactory,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Factory, connectionDone
from twisted.python.failure import Failure
from zope.interface import implementer

from meshproxy.transport.fastwrite import writerFor
from meshproxy.transport.interfaces import IStreamTransport, ITLSClientContexts, ITLSServerContexts

if TYPE_CHECKING:
    from twisted.internet.address import IPv4Address, IPv6Address
    from twisted.internet.defer import Deferred
    from twisted.internet.interfaces import IAddress, IProducer

__all__ = [
    "TLSClientEndpoint",
    "TLSClientFactory",
    "TLSProtocol",
    "TLSServerFactory",
]

#: The most plaintext one TLS record holds: what one C{read} can return.
_RECORD = 16384

#: Reads of fewer bytes than this are served by Python's small-object pool.
_SMALL = 512

# The states of a connection's TLS layer.
_HANDSHAKING = "HANDSHAKING"
_OPEN = "OPEN"
# Aborted, or failed: nothing more is read or written.
_CLOSED = "CLOSED"


@implementer(IStreamTransport, INegotiated, IProtocol, IHalfCloseableProtocol, ILoggingContext)
class TLSProtocol:
    """
    One connection's TLS layer: the wrapped protocol's transport, and the
    TCP transport's protocol.

    @ivar wrappedProtocol: the protocol it carries.
    @ivar transport: the TCP transport, once connected.
    @ivar disconnecting: whether C{loseConnection} was called.
    @ivar connected: whether the TCP connection is open.
    """

    __slots__ = (
        "wrappedProtocol",
        "transport",
        "disconnecting",
        "connected",
        "_tls",
        "_incoming",
        "_outgoing",
        "_state",
        "_send",
        "_pending",
        "_reason",
        "_readEnded",
        "_writeEnded",
        "_endWrite",
        "_halfCloseable",
        "_peerCertificate",
        "_verify",
        "_sslRead",
        "_sslWrite",
        "_sslPending",
        "_readOut",
    )

    def __init__(
        self,
        wrappedProtocol: IProtocol,
        tls: ssl.SSLObject,
        incoming: ssl.MemoryBIO,
        outgoing: ssl.MemoryBIO,
        verify: Callable[[ssl.SSLObject], None] | None = None,
    ) -> None:
        """
        @param wrappedProtocol: the protocol to carry.
        @param tls: the connection's TLS, server or client side, over
        @param incoming: the BIO the peer's bytes are written to, and
        @param outgoing: the BIO the bytes for the peer are read from.
        @param verify: called with C{tls} once its handshake is over, before
            the wrapped protocol hears of it; what it raises fails the
            connection (a client's check of the server's identity).
        """
        self.wrappedProtocol = wrappedProtocol
        self.transport: Any = None
        self.disconnecting = False
        self.connected = False
        self._tls = tls
        self._incoming = incoming
        self._outgoing = outgoing
        self._state = _HANDSHAKING
        self._send: Callable[[bytes], None] = None  # type: ignore[assignment]  # made connected
        # Writes made before the end of the handshake.
        self._pending: list[bytes] = []
        # Why the connection is lost, when it is the TLS layer's doing.
        self._reason: Failure | None = None
        # Whether the peer's close_notify was read, and ours was sent.
        self._readEnded = False
        self._writeEnded = False
        # loseWriteConnection was called during the handshake.
        self._endWrite = False
        self._halfCloseable: Any = IHalfCloseableProtocol(wrappedProtocol, None)
        self._peerCertificate: Any = _UNREAD
        self._verify = verify
        # The C object under the SSLObject, whose methods its own only call
        # through (a Python frame each, three per request); the SSLObject
        # where there is none. SNI switching its context keeps it.
        ssl_ = getattr(tls, "_sslobj", tls)
        self._sslRead: Callable[[int], bytes] = ssl_.read
        self._sslWrite: Callable[[bytes], int] = ssl_.write
        self._sslPending: Callable[[], int] = ssl_.pending
        self._readOut = outgoing.read

    # -- as the TCP transport's protocol ----------------------------------

    def makeConnection(self, transport: Any) -> None:
        """
        See L{IProtocol.makeConnection}: the wrapped protocol is connected
        now (before the handshake); a client starts its handshake.
        """
        self.transport = transport
        self.connected = True
        self._send = writerFor(transport)
        self.wrappedProtocol.makeConnection(self)
        if not self._tls.server_side and self._state is _HANDSHAKING:
            # The ClientHello (a server has nothing to say first).
            self._handshake()

    def connectionMade(self) -> None:
        """
        See L{IProtocol.connectionMade}: nothing more (the wrapped protocol
        is connected by L{makeConnection}).
        """

    def dataReceived(self, data: bytes) -> None:
        """
        See L{IProtocol.dataReceived}: TLS bytes from the peer, decrypted
        record by record until the incoming BIO is empty and passed on.
        """
        # (one method: a call more per read is a Python frame more per
        # request)
        state = self._state
        incoming = self._incoming
        if state is _OPEN:
            incoming.write(data)
            # The most plaintext to read first. The common case is a request
            # in one small record, all the BIO holds: read at most what came,
            # which Python allocates from its own pool rather than 16 KiB
            # from malloc, then shrinks (whole records hold less plaintext
            # than their bytes). Otherwise a record's worth, since the rest
            # of a record begun in an earlier read may hold more plaintext
            # than the bytes that complete it.
            size = len(data)
            if size >= _SMALL or size != incoming.pending:
                size = _RECORD
        elif state is _HANDSHAKING:
            incoming.write(data)
            self._handshake()
            if self._state is not _OPEN:
                return
            size = _RECORD
        else:
            return
        read = self._sslRead
        while True:
            try:
                plaintext = read(size)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:
                self._closeNotified()
                break
            except ssl.SSLError:
                self._fail(Failure())
                return
            if not plaintext:
                # (read returns nothing for a close_notify it reads first)
                self._closeNotified()
                break
            self.wrappedProtocol.dataReceived(plaintext)
            if self._state is not _OPEN:
                return
            if not incoming.pending and (len(plaintext) < size or not self._sslPending()):
                # Nothing left to decrypt: asking again would only raise
                # SSLWantReadError. (A read that returned less than asked
                # for left no plaintext in OpenSSL: SSL_read stops short
                # only at the end of what it has decrypted.)
                break
            size = _RECORD
        if self._outgoing.pending:
            # (a reply to a post-handshake message)
            self._flush()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """
        See L{IProtocol.connectionLost}: the wrapped protocol is told why,
        the TLS layer's reason first.
        """
        self.connected = False
        if self._reason is not None:
            reason = self._reason
        elif self._readEnded and self._writeEnded:
            # Both close_notify alerts said all was said: a reset after them
            # loses nothing.
            reason = Failure(ConnectionDone())
        elif reason.check(ConnectionDone) and not (
            self._readEnded or self.disconnecting or self._state is _CLOSED
        ):
            # The TCP connection ended, but TLS did not: a truncation (or a
            # peer that gave up during the handshake).
            reason = _truncated()
        self._state = _CLOSED
        self._reason = None
        self._pending = []
        wrapped = self.wrappedProtocol
        wrapped.connectionLost(reason)

    def readConnectionLost(self) -> None:
        """
        See L{IHalfCloseableProtocol.readConnectionLost}: the TCP
        connection's reading ended. After the peer's close_notify, that
        was all; before it, the connection is truncated, and closed.
        """
        if self._readEnded or self.disconnecting or self._state is _CLOSED:
            return
        if self._reason is None:
            self._reason = _truncated()
        self._state = _CLOSED
        self._pending = []
        self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        """
        See L{IHalfCloseableProtocol.writeConnectionLost}: the TCP
        connection's writing ended (after L{loseWriteConnection}).
        """
        if self._halfCloseable is not None:
            self._halfCloseable.writeConnectionLost()

    def logPrefix(self) -> str:
        """
        See L{ILoggingContext.logPrefix}: the wrapped protocol's.
        """
        wrapped = self.wrappedProtocol
        if ILoggingContext.providedBy(wrapped):
            prefix: str = wrapped.logPrefix()
        else:
            prefix = wrapped.__class__.__name__
        return prefix + " (TLS)"

    # -- TLS ----------------------------------------------------------------

    def _handshake(self) -> None:
        """
        Take the handshake as far as the bytes read so far allow.
        """
        tls = self._tls
        try:
            tls.do_handshake()
        except ssl.SSLWantReadError:
            self._flush()
            return
        except ssl.SSLError:
            self._fail(Failure())
            return
        self._flush()
        if self._verify is not None:
            try:
                self._verify(tls)
            except Exception:
                self._fail(Failure())
                return
        self._state = _OPEN
        pending, self._pending = self._pending, []
        for data in pending:
            self.write(data)
        if IHandshakeListener.providedBy(self.wrappedProtocol):
            self.wrappedProtocol.handshakeCompleted()
        if self._state is not _OPEN:
            return
        if self.disconnecting:
            # loseConnection was called during the handshake, with writes
            # waiting for it.
            self.disconnecting = False
            self.loseConnection()
        elif self._endWrite:
            self.loseWriteConnection()

    def _closeNotified(self) -> None:
        """
        The peer sent its close_notify: it writes no more.
        """
        if self._readEnded:
            return
        self._readEnded = True
        if self._halfCloseable is not None and not self.disconnecting:
            self._halfCloseable.readConnectionLost()
            if not (self._writeEnded or self.disconnecting):
                # It may go on writing.
                return
        if self._state is _CLOSED:
            return
        self._closeNotify()
        self.transport.loseConnection()

    def _closeNotify(self) -> None:
        """
        Send our close_notify, once: we write no more.
        """
        if self._writeEnded:
            return
        self._writeEnded = True
        try:
            self._tls.unwrap()
        except ssl.SSLError:
            # Sent; the peer's close_notify is not waited for (SSLWantRead),
            # or the connection is broken already.
            pass
        self._flush()

    def _flush(self) -> None:
        """
        Send what OpenSSL wrote to the outgoing BIO.
        """
        if self._outgoing.pending:
            self._send(self._outgoing.read())

    def _fail(self, reason: Failure) -> None:
        """
        The TLS layer failed: send any alert OpenSSL made, close, and report
        C{reason} to the wrapped protocol.
        """
        if self._reason is None:
            self._reason = reason
        self._state = _CLOSED
        self._pending = []
        self._flush()
        self.transport.loseConnection()

    # -- as the wrapped protocol's transport ------------------------------

    def write(self, data: bytes) -> None:
        """
        See L{ITransport.write}: encrypted and sent now (written before the
        end of the handshake, sent once it is over).
        """
        if self._state is _OPEN:
            if self._writeEnded:
                return
            try:
                self._sslWrite(data)
            except ssl.SSLError:
                self._fail(Failure())
                return
            self._send(self._readOut())
        elif self._state is _HANDSHAKING and not self.disconnecting:
            self._pending.append(data)

    def writeSequence(self, data: Iterable[bytes]) -> None:
        """
        See L{ITransport.writeSequence}.
        """
        self.write(b"".join(data))

    def loseConnection(self) -> None:
        """
        See L{ITransport.loseConnection}: a close_notify after what was
        written, then the TCP connection closes once all is sent. During the
        handshake, with nothing waiting to be written, the connection is
        aborted (as Twisted's does: a close_notify cannot be sent yet).
        """
        if self.disconnecting or self._state is _CLOSED:
            return
        self.disconnecting = True
        if self._state is _HANDSHAKING:
            if not self._pending:
                self.abortConnection()
            return
        self._closeNotify()
        self.transport.loseConnection()

    def loseWriteConnection(self) -> None:
        """
        See L{ITCPTransport.loseWriteConnection}: a close_notify, then the
        end of the TCP connection's writing; reading goes on until the peer
        closes too.
        """
        if self._writeEnded or self.disconnecting or self._state is _CLOSED:
            return
        if self._state is _HANDSHAKING:
            self._endWrite = True
            return
        self._closeNotify()
        if self._readEnded:
            self.transport.loseConnection()
        else:
            self.transport.loseWriteConnection()

    def abortConnection(self) -> None:
        """
        See L{ITCPTransport.abortConnection}: closed at once, nothing more is
        read or written.
        """
        if self._state is _CLOSED:
            return
        self._state = _CLOSED
        self.disconnecting = True
        self._pending = []
        self.transport.abortConnection()

    def getPeer(self) -> IPv4Address | IPv6Address:
        """
        See L{ITransport.getPeer}.
        """
        peer: IPv4Address | IPv6Address = self.transport.getPeer()
        return peer

    def getHost(self) -> IPv4Address | IPv6Address:
        """
        See L{ITransport.getHost}.
        """
        host: IPv4Address | IPv6Address = self.transport.getHost()
        return host

    def getTcpNoDelay(self) -> bool:
        """
        See L{ITCPTransport.getTcpNoDelay}.
        """
        return bool(self.transport.getTcpNoDelay())

    def setTcpNoDelay(self, enabled: bool) -> None:
        """
        See L{ITCPTransport.setTcpNoDelay}.
        """
        self.transport.setTcpNoDelay(enabled)

    def getTcpKeepAlive(self) -> bool:
        """
        See L{ITCPTransport.getTcpKeepAlive}.
        """
        return bool(self.transport.getTcpKeepAlive())

    def setTcpKeepAlive(self, enabled: bool) -> None:
        """
        See L{ITCPTransport.setTcpKeepAlive}.
        """
        self.transport.setTcpKeepAlive(enabled)

    def registerProducer(self, producer: IProducer, streaming: bool) -> None:
        """
        See L{IConsumer.registerProducer}: registered on the TCP transport,
        whose write buffer pauses it (a TLS write adds nothing to buffer).
        """
        self.transport.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        """
        See L{IConsumer.unregisterProducer}.
        """
        self.transport.unregisterProducer()

    def pauseProducing(self) -> None:
        """
        See L{IPushProducer.pauseProducing}: the TCP connection stops
        reading (during the handshake too, which then waits).
        """
        self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        """
        See L{IPushProducer.resumeProducing}.
        """
        self.transport.resumeProducing()

    def stopProducing(self) -> None:
        """
        See L{IProducer.stopProducing}: the connection is closed (with a
        close_notify, as by L{loseConnection}).
        """
        self.loseConnection()

    @property
    def producerPaused(self) -> bool:
        """
        Whether the TCP transport paused its producer (its write buffer is
        full).
        """
        return bool(getattr(self.transport, "producerPaused", False))

    def getPeerCertificate(self) -> x509.Certificate | None:
        """
        See L{ISSLTransport.getPeerCertificate}: the peer's certificate,
        verified, or L{None} (no handshake yet, or none presented).
        """
        certificate = self._peerCertificate
        if certificate is _UNREAD:
            if self._state is not _OPEN:
                return None
            der = self._tls.getpeercert(binary_form=True)
            certificate = None if der is None else x509.load_der_x509_certificate(der)
            self._peerCertificate = certificate
        return certificate

    @property
    def negotiatedProtocol(self) -> bytes | None:
        """
        See L{INegotiated.negotiatedProtocol}: the ALPN protocol, or L{None}.
        """
        if self._state is _HANDSHAKING:
            return None
        protocol = self._tls.selected_alpn_protocol()
        return None if protocol is None else protocol.encode("ascii")


#: A peer certificate not read yet.
_UNREAD = object()


def _truncated() -> Failure:
    """
    Why a connection is lost whose TCP connection ended without a TLS
    close_notify (as Twisted's TLS reports it).
    """
    return Failure(ConnectionLost("the peer closed without a TLS close_notify"))


class _TLSFactory(Factory):
    """
    Wraps the protocols of a factory in TLS.

    @ivar wrappedFactory: the factory whose protocols are wrapped.
    """

    noisy = False

    def __init__(self, wrappedFactory: IProtocolFactory) -> None:
        self.wrappedFactory = wrappedFactory

    def buildProtocol(self, addr: IAddress) -> TLSProtocol | None:  # type: ignore[override]
        """
        The wrapped factory's protocol in TLS, or L{None} when it refuses the
        connection.
        """
        wrapped = self.wrappedFactory.buildProtocol(addr)
        if wrapped is None:
            return None
        return self._wrap(wrapped)

    def _wrap(self, wrapped: IProtocol) -> TLSProtocol:
        raise NotImplementedError()

    def doStart(self) -> None:
        """
        Start the wrapped factory too.
        """
        self.wrappedFactory.doStart()
        super().doStart()

    def doStop(self) -> None:
        """
        Stop the wrapped factory too.
        """
        self.wrappedFactory.doStop()
        super().doStop()

    def logPrefix(self) -> str:
        """
        The wrapped factory's log prefix.
        """
        wrapped = self.wrappedFactory
        if ILoggingContext.providedBy(wrapped):
            return str(wrapped.logPrefix()) + " (TLS)"
        return wrapped.__class__.__name__ + " (TLS)"


class TLSServerFactory(_TLSFactory):
    """
    Wraps the connections of a listening factory in TLS.

    @ivar contexts: makes each connection's TLS.
    """

    def __init__(self, wrappedFactory: IProtocolFactory, contexts: ITLSServerContexts) -> None:
        """
        @param wrappedFactory: builds the protocols to wrap.
        @param contexts: makes each connection's TLS (the certificates, the
            settings), asked once per connection.
        """
        _TLSFactory.__init__(self, wrappedFactory)
        self.contexts = contexts

    def _wrap(self, wrapped: IProtocol) -> TLSProtocol:
        incoming = ssl.MemoryBIO()
        outgoing = ssl.MemoryBIO()
        tls = self.contexts.serverObject(incoming, outgoing)
        return TLSProtocol(wrapped, tls, incoming, outgoing)


class TLSClientFactory(_TLSFactory):
    """
    Wraps the connections of a client factory in TLS.

    @ivar contexts: makes each connection's TLS, and checks the server.
    """

    def __init__(self, wrappedFactory: IProtocolFactory, contexts: ITLSClientContexts) -> None:
        """
        @param wrappedFactory: builds the protocols to wrap.
        @param contexts: makes each connection's TLS and checks the server's
            identity at the end of its handshake.
        """
        _TLSFactory.__init__(self, wrappedFactory)
        self.contexts = contexts

    def _wrap(self, wrapped: IProtocol) -> TLSProtocol:
        incoming = ssl.MemoryBIO()
        outgoing = ssl.MemoryBIO()
        contexts = self.contexts
        tls = contexts.clientObject(incoming, outgoing)
        return TLSProtocol(wrapped, tls, incoming, outgoing, verify=contexts.verify)


@implementer(IStreamClientEndpoint)
class TLSClientEndpoint:
    """
    Connections of another endpoint (TCP), in TLS.
    """

    def __init__(self, inner: IStreamClientEndpoint, contexts: ITLSClientContexts) -> None:
        """
        @param inner: makes the connections.
        @param contexts: makes each connection's TLS, and checks the server.
        """
        self._inner = inner
        self._contexts = contexts

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        """
        See L{IStreamClientEndpoint.connect}: fires with the protocol
        C{protocolFactory} built, once the TCP connection is made (its
        handshake then runs: an L{IHandshakeListener} hears of its end).
        """
        d = self._inner.connect(TLSClientFactory(protocolFactory, self._contexts))
        return d.addCallback(_wrapped)


def _wrapped(tls: Any) -> IProtocol:
    return tls.wrappedProtocol
