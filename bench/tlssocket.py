"""
A prototype, for measurement only (C{bench/tlsloop.py}'s C{sock-tlsfd}
variants): TLS done on an accepted connection's socket, OpenSSL reading and
writing the socket itself (C{SSL_read}/C{SSL_write} on its descriptor), the
connection's transport a L{tcp.Server<twisted.internet.tcp.Server>} of its
own, L{TLSServerConnection}. meshproxy does not use it: measured, it saves
no CPU per keep-alive request over
L{TLSProtocol<meshproxy.transport.tls.TLSProtocol>} (see C{bench/README.md},
"TLS on the socket").

L{TLSProtocol} carries TLS between two memory BIOs: each record is received
into a bytes object, copied into a BIO, decrypted, and each answer encrypted
into a BIO, read out into bytes, then sent. Here one C call does a record's
reads and its decryption, another a write's encryption and C{send}: no
copies through BIOs, no bytes objects in between, fewer Python calls. But
OpenSSL without read-ahead (which the C{ssl} module cannot turn on) reads a
record in two C{read} calls, its 5-byte header then its body: one system
call more per request than C{TLSProtocol}'s single C{recv}.

L{TLSSocketServerFactory} stands where a
L{TLSServerFactory<meshproxy.transport.tls.TLSServerFactory>} would. Each
connection it accepts on a plain TCP port (its transport a C{tcp.Server}
whose protocol it built, nothing read yet) moves to a
L{TLSServerConnection} on the same socket; other connections (read first by
a L{Preamble<meshproxy.transport.preamble.Preamble>}, which consumed bytes
the TLS layer needs, or on other transports, or for a protocol that
half-closes) get a C{TLSProtocol}.

What a L{TLSServerConnection} does, as C{TLSProtocol} does (exercised by
the loop, not by tests):

  - The handshake runs as the client's bytes come (SNI switching the
    certificate, ALPN answered, a client certificate verified); the wrapped
    protocol is connected at once (its own timers bound the handshake) and
    an L{IHandshakeListener} hears of its end. What it writes before the end
    is sent after it.
  - A write is encrypted and sent at once when nothing waits to be sent;
    what the socket does not take waits in the transport's buffer, whose
    size pauses a registered producer (Twisted's own back-pressure), and is
    sent when the socket is writable (OpenSSL takes the retry of a write it
    began from the start of that buffer).
  - C{loseConnection} sends a close_notify once what was written is sent,
    then closes; a peer's close_notify gets one back, and the connection
    closes.
  - A TCP connection that ends without a close_notify is lost with a
    L{ConnectionLost} (a truncation); a failed handshake or a bad record,
    with the L{ssl.SSLError}.

Known limits, had it been kept: C{shutdown} (the close_notify) reads the
socket once more and discards a record the peer sent after it (so no
half-closing protocol is given one), and a close_notify the socket does not
take at once is not retried.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from cryptography import x509
from twisted.internet import main, tcp
from twisted.internet.abstract import FileDescriptor
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import (
    IHalfCloseableProtocol,
    IHandshakeListener,
    ILoggingContext,
    INegotiated,
    IProtocol,
)
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure
from zope.interface import implementer

from meshproxy.tls import ServerTLS
from meshproxy.transport.interfaces import IStreamTransport
from meshproxy.transport.tls import TLSProtocol, TLSServerFactory, _truncated

if TYPE_CHECKING:
    from twisted.internet.interfaces import IAddress, IProtocolFactory

__all__ = ["TLSServerConnection", "TLSSocketServerFactory"]

#: The most plaintext one TLS record holds: what one read returns at most.
_RECORD = 16384

# The states of a connection's TLS.
_HANDSHAKING = "HANDSHAKING"
_OPEN = "OPEN"
# Failed, or closing: nothing more is read.
_CLOSED = "CLOSED"


@implementer(IStreamTransport, INegotiated)
class TLSServerConnection(tcp.Server):
    """
    An accepted TCP connection whose socket carries TLS, done by OpenSSL on
    the socket (see the module docstring). Made by L{adopt}.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        tcp.Server.__init__(self, *args, **kwargs)
        self._state = _HANDSHAKING
        self._tls: Any = None
        # Writes made before the end of the handshake.
        self._early: list[bytes] = []
        # Why the connection is lost, when it is the TLS layer's doing.
        self._reason: Failure | None = None
        # Which call OpenSSL must repeat once the socket is writable: the
        # handshake, or a read (whose record needed an answer written).
        self._retryOnWrite: Any = None
        self._closeNotifySent = False
        self._peerCertificate: Any = _UNREAD
        # The C object's methods (set by adopt).
        self._sslRead: Any = None
        self._sslWrite: Any = None
        self._sslPending: Any = None

    @classmethod
    def adopt(
        cls, transport: tcp.Server, protocol: IProtocol, contexts: ServerTLS, readAhead: bool
    ) -> TLSServerConnection:
        """
        Move a just accepted connection, nothing read of it yet, to a
        L{TLSServerConnection} on its socket, and connect C{protocol} to it.

        @param transport: the connection, as the port made it.
        @param protocol: the protocol to carry (the router's).
        @param contexts: makes the connection's TLS.
        @param readAhead: whether OpenSSL reads ahead (see L{_readAhead}).
        @return: the new transport.
        """
        # (its reactor registration is the new transport's from now on)
        transport.stopReading()
        self = cls(
            transport.socket,
            protocol,
            transport.client,
            transport.server,
            transport.sessionno,
            transport.reactor,
        )
        self.repstr = transport.repstr
        # The C object an ssl.SSLSocket wraps, without the SSLSocket (which
        # would take the descriptor over from the socket Twisted reads), on
        # the listener's default context (SNI switches it through the
        # "context" property below).
        default: Any = contexts._default
        tls = self._tls = default._wrap_socket(self.socket, True, None, owner=self)
        if readAhead:
            _readAhead(tls)
        self._sslRead = tls.read
        self._sslWrite = tls.write
        self._sslPending = tls.pending
        protocol.makeConnection(self)
        return self

    # -- reading ----------------------------------------------------------

    def doRead(self) -> Any:
        """
        See L{IReadDescriptor.doRead}: a step of the handshake, or the
        records the socket holds, decrypted and passed on.
        """
        state = self._state
        if state is _OPEN:
            return self._readRecords()
        if state is _HANDSHAKING:
            return self._handshake()
        return None

    def _readRecords(self) -> Any:
        read = self._sslRead
        while True:
            try:
                data = read(_RECORD)
            except ssl.SSLWantReadError:
                return None
            except ssl.SSLWantWriteError:
                # (a record that needs an answer, which the socket did not take)
                return self._waitWritable(self._readRecords)
            except ssl.SSLZeroReturnError:
                return self._closeNotified()
            except (ssl.SSLEOFError, ssl.SSLSyscallError):
                return self._lost(_truncated())
            except ssl.SSLError:
                return self._lost(Failure())
            except OSError:
                return main.CONNECTION_LOST
            if not data:
                # (read returns nothing for a close_notify it reads first)
                return self._closeNotified()
            self.protocol.dataReceived(data)
            # Only what OpenSSL holds decrypted already: the socket's next
            # record is the reactor's to report (one record is read at once).
            if self._state is not _OPEN or not self._sslPending():
                return None

    def _handshake(self) -> Any:
        """
        Take the handshake as far as the socket allows.
        """
        try:
            self._tls.do_handshake()
        except ssl.SSLWantReadError:
            return None
        except ssl.SSLWantWriteError:
            return self._waitWritable(self._handshake)
        except (ssl.SSLEOFError, ssl.SSLSyscallError):
            return self._lost(_truncated())
        except ssl.SSLError:
            return self._lost(Failure())
        except OSError:
            return main.CONNECTION_LOST
        self._state = _OPEN
        early, self._early = self._early, []
        for data in early:
            self.write(data)
        protocol = self.protocol
        if IHandshakeListener.providedBy(protocol):
            protocol.handshakeCompleted()
        if self._state is not _OPEN or self.disconnecting:
            return None
        # The client's first request mostly comes with its last handshake
        # message.
        return self._readRecords()

    def _waitWritable(self, retry: Any) -> None:
        self._retryOnWrite = retry
        self.startWriting()
        return None

    def _lost(self, reason: Failure) -> Any:
        """
        The TLS layer failed: the connection is lost with C{reason}.
        """
        self._state = _CLOSED
        if self._reason is None:
            self._reason = reason
        return main.CONNECTION_LOST

    def _closeNotified(self) -> Any:
        """
        The peer sent its close_notify: it writes no more. Ours is sent back
        once what was written is sent, and the connection closes.
        """
        self._state = _CLOSED
        if not self.disconnecting:
            self.loseConnection()
        return None

    # -- writing ----------------------------------------------------------

    def write(self, data: bytes) -> None:
        """
        See L{ITransport.write}: encrypted and sent now when nothing waits to
        be sent (written before the end of the handshake, once it is over).
        """
        if not data:
            return
        state = self._state
        if state is _HANDSHAKING:
            if not self.disconnecting:
                self._early.append(data)
            return
        if (
            self._tempDataLen
            or self.dataBuffer
            or not self.connected
            or self.disconnecting
            or self._writeDisconnecting
            or self._retryOnWrite is not None
        ):
            FileDescriptor.write(self, data)
            return
        try:
            self._sslWrite(data)
        except (ssl.SSLWantWriteError, ssl.SSLWantReadError):
            # Begun: the rest is sent from the buffer, which starts with
            # this write (as OpenSSL's retry needs).
            FileDescriptor.write(self, data)
        except ssl.SSLError:
            self._fail(Failure())
        except OSError:
            self._fail(Failure())

    def writeSequence(self, iovec: Iterable[bytes]) -> None:
        """
        See L{ITransport.writeSequence}.
        """
        self.write(b"".join(iovec))

    def writeSomeData(self, data: bytes) -> Any:
        """
        See L{FileDescriptor.writeSomeData}: encrypted and sent, all of it
        or nothing (OpenSSL keeps what it began and is given it again).
        """
        try:
            return self._sslWrite(data)
        except (ssl.SSLWantWriteError, ssl.SSLWantReadError):
            return 0
        except ssl.SSLError:
            return self._lost(Failure())
        except OSError:
            return main.CONNECTION_LOST

    def doWrite(self) -> Any:
        """
        See L{IWriteDescriptor.doWrite}: a handshake or a read waiting for
        the socket first, then what is buffered.
        """
        retry = self._retryOnWrite
        if retry is not None:
            self._retryOnWrite = None
            if not (self.dataBuffer or self._tempDataLen or self.disconnecting):
                self.stopWriting()
            result = retry()
            if result is not None or self._retryOnWrite is not None:
                return result
            if not (self.dataBuffer or self._tempDataLen or self.disconnecting):
                return None
        return FileDescriptor.doWrite(self)

    def _fail(self, reason: Failure) -> None:
        """
        A write failed: close at once, reporting C{reason}.
        """
        self._state = _CLOSED
        if self._reason is None:
            self._reason = reason
        self.stopReading()
        self.stopWriting()
        self.reactor.callLater(  # type: ignore[attr-defined]
            0, self.connectionLost, Failure(main.CONNECTION_LOST)
        )

    # -- closing ----------------------------------------------------------

    def loseConnection(self) -> None:
        """
        See L{ITransport.loseConnection}: a close_notify after what was
        written, then the TCP connection closes. During the handshake, with
        nothing waiting to be written, the connection is aborted (a
        close_notify cannot be sent yet).
        """
        if self._state is _HANDSHAKING and not self._early:
            self.abortConnection()
            return
        FileDescriptor.loseConnection(self)

    def _postLoseConnection(self) -> Any:
        """
        Everything written is sent: our close_notify, then the end.
        """
        self._closeNotify()
        return main.CONNECTION_DONE

    def _closeWriteConnection(self) -> Any:
        """
        Our writing ends (C{loseWriteConnection}): a close_notify first.
        """
        self._closeNotify()
        return tcp.Server._closeWriteConnection(self)

    def _closeNotify(self) -> None:
        """
        Send our close_notify, once, as far as the socket takes it.
        """
        if self._closeNotifySent or self._tls is None or self._reason is not None:
            return
        self._closeNotifySent = True
        if self._state is _HANDSHAKING:
            return
        try:
            self._tls.shutdown()
        except (ssl.SSLError, OSError):
            # Sent; the peer's close_notify is not waited for (SSLWantRead),
            # or the connection is broken already.
            pass

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """
        See L{FileDescriptor.connectionLost}: the protocol is told why, the
        TLS layer's reason first; a connection whose TLS did not end with a
        close_notify from the peer, nor with one of ours, is truncated.
        """
        if self._reason is not None:
            reason, self._reason = self._reason, None
        elif (
            reason.check(ConnectionDone)
            and self._state is _HANDSHAKING
            and not self.disconnecting
        ):
            reason = _truncated()
        self._state = _CLOSED
        self._early = []
        self._retryOnWrite = None
        tcp.Server.connectionLost(self, reason)

    def startTLS(self, ctx: Any, normal: bool = True) -> None:
        """
        See L{ITLSTransport.startTLS}: not on a connection already in TLS.
        """
        raise RuntimeError("this connection is in TLS already")

    # -- TLS details --------------------------------------------------------

    @property
    def context(self) -> ssl.SSLContext:
        """
        The connection's L{ssl.SSLContext}; SNI callbacks switch it during
        the handshake (OpenSSL hands them this transport).
        """
        context: ssl.SSLContext = self._tls.context
        return context

    @context.setter
    def context(self, context: ssl.SSLContext) -> None:
        self._tls.context = context

    def getPeerCertificate(self) -> x509.Certificate | None:
        """
        See L{ISSLTransport.getPeerCertificate}: the peer's certificate,
        verified, or L{None} (no handshake yet, or none presented).
        """
        certificate = self._peerCertificate
        if certificate is _UNREAD:
            if self._state is _HANDSHAKING or self._tls is None:
                return None
            try:
                der = self._tls.getpeercert(True)
            except ValueError:
                # (the socket is closed)
                return None
            certificate = None if der is None else x509.load_der_x509_certificate(der)
            self._peerCertificate = certificate
        return certificate

    @property
    def negotiatedProtocol(self) -> bytes | None:
        """
        See L{INegotiated.negotiatedProtocol}: the ALPN protocol, or L{None}.
        """
        if self._state is _HANDSHAKING or self._tls is None:
            return None
        protocol = self._tls.selected_alpn_protocol()
        return None if protocol is None else protocol.encode("ascii")


#: A peer certificate not read yet.
_UNREAD = object()


def _readAhead(tls: Any) -> None:
    """
    Turn on OpenSSL's read-ahead for one connection: a record is then read
    with one C{read} (or several records with one), rather than its header
    and its body apart. The C{ssl} module has no call for it: this one goes
    through C{ctypes}, reading the C{SSL *} out of CPython 3.11's
    C{PySSLSocket} (after the object header and the weak reference to the
    socket), which makes it an experiment, not something to ship.

    With read-ahead, records read ahead wait in OpenSSL's buffer, where
    C{pending()} (decrypted bytes only) does not see them, and the socket
    no longer reports them: a correct reader must read on until
    C{SSLWantReadError}, a C{read} more per request (or ask
    C{SSL_has_pending}, through C{ctypes} again). The loop's clients send
    one record at a time, so the prototype does neither: the figure is an
    upper bound.
    """
    import ctypes

    libssl = ctypes.CDLL("libssl.so.3")
    libssl.SSL_set_read_ahead.argtypes = [ctypes.c_void_p, ctypes.c_int]
    libssl.SSL_set_read_ahead.restype = None
    # ob_refcnt, ob_type, Socket: then SSL *ssl.
    ssl_ = ctypes.c_void_p.from_address(id(tls) + 3 * ctypes.sizeof(ctypes.c_void_p)).value
    libssl.SSL_set_read_ahead(ssl_, 1)


@implementer(IProtocol, IHalfCloseableProtocol, ILoggingContext)
class _Accepted:
    """
    What the port connects first: it moves the connection to a
    L{TLSServerConnection}, or (when it cannot) puts a
    L{TLSProtocol<meshproxy.transport.tls.TLSProtocol>} in its path and
    passes it every event.

    @ivar wrappedProtocol: the protocol carried (read by the preamble, for
        what it learns of the connection).
    """

    __slots__ = ("wrappedProtocol", "_factory", "_tls")

    def __init__(self, wrappedProtocol: IProtocol, factory: TLSSocketServerFactory) -> None:
        self.wrappedProtocol = wrappedProtocol
        self._factory = factory
        self._tls: TLSProtocol | None = None

    def makeConnection(self, transport: Any) -> None:
        """
        See L{IProtocol.makeConnection}.
        """
        wrapped = self.wrappedProtocol
        if (
            type(transport) is tcp.Server
            and transport.protocol is self
            and not IHalfCloseableProtocol.providedBy(wrapped)
        ):
            TLSServerConnection.adopt(
                transport, wrapped, self._factory.contexts, self._factory.readAhead
            )
            return
        tls = self._tls = self._factory.memoryTLS(wrapped)
        if getattr(transport, "protocol", None) is self:
            transport.protocol = tls
        tls.makeConnection(transport)

    def connectionMade(self) -> None:
        """
        See L{IProtocol.connectionMade}.
        """

    def dataReceived(self, data: bytes) -> None:
        """
        See L{IProtocol.dataReceived}.
        """
        if self._tls is not None:
            self._tls.dataReceived(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """
        See L{IProtocol.connectionLost}.
        """
        if self._tls is not None:
            self._tls.connectionLost(reason)

    def readConnectionLost(self) -> None:
        """
        See L{IHalfCloseableProtocol.readConnectionLost}.
        """
        if self._tls is not None:
            self._tls.readConnectionLost()

    def writeConnectionLost(self) -> None:
        """
        See L{IHalfCloseableProtocol.writeConnectionLost}.
        """
        if self._tls is not None:
            self._tls.writeConnectionLost()

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


class TLSSocketServerFactory(TLSServerFactory):
    """
    Wraps the connections of a listening factory in TLS, done on their
    sockets where it can be (see the module docstring).

    @ivar readAhead: whether OpenSSL reads ahead on the sockets.
    """

    contexts: ServerTLS

    def __init__(
        self, wrappedFactory: IProtocolFactory, contexts: ServerTLS, *, readAhead: bool = False
    ) -> None:
        """
        @param wrappedFactory: builds the protocols to wrap.
        @param contexts: makes each connection's TLS.
        @param readAhead: whether OpenSSL reads ahead (see L{_readAhead}).
        """
        TLSServerFactory.__init__(self, wrappedFactory, contexts)
        self.readAhead = readAhead

    def buildProtocol(self, addr: IAddress) -> Any:  # type: ignore[override]
        """
        The wrapped factory's protocol, to be carried in TLS; L{None} when it
        refuses the connection.
        """
        wrapped = self.wrappedFactory.buildProtocol(addr)
        if wrapped is None:
            return None
        return _Accepted(wrapped, self)

    def memoryTLS(self, wrapped: IProtocol) -> TLSProtocol:
        """
        A L{TLSProtocol} carrying C{wrapped}, for a connection that cannot
        move to its socket.
        """
        return self._wrap(wrapped)
