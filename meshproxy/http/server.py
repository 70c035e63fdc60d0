"""
The client-facing side of the HTTP router: one L{ServerProtocol} per
accepted connection.

It parses requests with httptools (llhttp), adds the checks RFC 9112 asks of
a proxy that llhttp leaves out, answers pipelined requests in order, enforces
the header, idle and body-progress timeouts, and hands each request to an
L{Exchange<meshproxy.http.exchange.Exchange>} that forwards it upstream.

A connection that starts with the HTTP/2 preface (h2c with prior knowledge,
or h2 chosen by ALPN under TLS) is handed to an
L{H2ServerConnection<meshproxy.http2.connection.H2ServerConnection>}, each of
its streams an exchange.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import httptools
from twisted.internet.interfaces import ISSLTransport
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from zope.interface import implementer

from meshproxy import grpc
from meshproxy.config.policies import Http2Config
from meshproxy.http.checks import checkRequest, parserError
from meshproxy.http.exchange import Exchange
from meshproxy.http.interfaces import IClientConnection
from meshproxy.http.message import ProxyError, Request, errorResponse, forbiddenTrailer
from meshproxy.http.rewrite import ResponseWriter, interimHead
from meshproxy.http.states import DONE
from meshproxy.http2.frames import PREFACE, FloodLimits
from meshproxy.transport.fastwrite import ownDefaults, writerFor
from meshproxy.transport.gate import PauseGate
from meshproxy.transport.tlsfailure import isTLSFailure

if TYPE_CHECKING:
    from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
    from twisted.python.failure import Failure

    from meshproxy.config import ServerConfig
    from meshproxy.http.interfaces import IExchange, IRouter
    from meshproxy.http.message import Headers
    from meshproxy.http2.connection import H2ServerConnection
    from meshproxy.telemetry.metrics import ConnectionStats
    from meshproxy.transport.interfaces import IStreamTransport

_log = Logger()

_HEAD, _BODY, _IDLE = range(3)


@implementer(IClientConnection)
class ServerProtocol(Protocol):
    """
    One client connection to an HTTP router.

    @ivar router: the L{HttpRouter<meshproxy.http.router.HttpRouter>}.
    @ivar settings: the router's C{server} settings (limits, timeouts).
    """

    # Its own attributes in slots: a connection kept open costs about 2 KiB
    # less than with them in an instance dictionary (what Twisted's bases
    # set, such as transport and factory, still goes in one).
    __slots__ = (
        "_began", "_h2", "http2", "_bodyProgress", "_bodySize", "_broken", "_current", "_deadline",
        "_fieldBytes", "_fieldCount", "_fresh", "_headRaw", "_headSince", "_headers",
        "_idleTimeout", "_lineRead", "_maxHeaderBytes", "_maxHeaders", "_maxUriLength", "_out",
        "_preamble", "_preambleSince", "_prefix", "_send", "_sinceBody", "_state",
        "_streamingFrom", "_timer", "_tls", "_toStart", "_trailers", "_tunnel", "_url", "_writer",
        "active", "clientCert", "clock", "closing", "connStats", "draining", "error",
        "forwardedFor", "gate", "identity", "parser", "peerHost", "queue", "router", "scheme",
        "server", "settings", "trusted",
    )

    transport: IStreamTransport
    #: The flood limits of the HTTP/2 connections (L{None}: the defaults).
    h2Limits: FloodLimits | None = None

    def __init__(
        self,
        router: IRouter,
        settings: ServerConfig,
        clock: IReactorTime,
        connStats: ConnectionStats | None = None,
        scheme: bytes = b"http",
        http2: Http2Config | None = None,
    ) -> None:
        self.router = router
        self.settings = settings
        # The limits read per request, as the connection's own attributes:
        # one lookup each rather than two.
        self._maxHeaders = settings.maxHeaders
        self._maxHeaderBytes = settings.maxHeaderBytes
        self._maxUriLength = settings.maxUriLength
        self._idleTimeout = settings.idleTimeout
        self.clock = clock
        self.connStats = connStats
        self.scheme = scheme
        self.http2 = http2 if http2 is not None else Http2Config()
        # Until the first bytes are known not to be the HTTP/2 preface, and
        # the start of a preface split between reads.
        self._fresh = True
        self._prefix = b""
        # The HTTP/2 connection it became, or None.
        self._h2: H2ServerConnection | None = None
        self.active: Exchange | None = None
        # The requests parsed behind the active one (reading pauses once
        # there is one): a list, as short as it stays, costs 56 bytes per
        # connection where an empty deque costs 760.
        self.queue: list[Exchange | _ErrorAnswer] = []
        self.closing = False
        self._out: list[bytes] = []
        self._state = _IDLE
        self._headRaw = 0
        self._url = b""
        self._headers: Headers | None = None
        self._trailers: Headers | None = None
        # The bounds of the header (then trailer) section being read.
        self._fieldCount = 0
        self._fieldBytes = 0
        # Bytes read since the last piece of request body: chunk framing and
        # trailers, bounded like a head (they are buffered by the parser).
        self._sinceBody = 0
        self._bodyProgress = False
        # When the first byte of the request head (or of a preamble of empty
        # lines before it) arrived, for the header timeout.
        self._headSince: float | None = None
        self._preamble = 0
        self._preambleSince = 0.0
        # Whether a request began in the read being parsed (its bytes are
        # not a preamble).
        self._began = False
        # An exchange whose head was parsed in the read being parsed: it
        # starts once the whole read is known to be well-formed.
        self._toStart: Exchange | None = None
        self._current: Exchange | None = None  # the Exchange whose request bytes are arriving
        self._deadline: float | None = None
        self._timer: IDelayedCall | None = None
        self._tunnel: IStreamTransport | None = None
        self._broken = False
        self.trusted = False
        self._tls = False
        self.identity: Any = None
        # The x-forwarded-client-cert value sent upstream for it, or None.
        self.clientCert: bytes | None = None
        self._bodySize = 0
        self.draining = False
        self.forwardedFor = b""
        # Made in connectionMade, before any other event.
        self.gate: PauseGate = None  # type: ignore[assignment]
        # Made with the first bytes that are not HTTP/2's preface (about
        # 1 KiB: a connection that sends nothing, or speaks HTTP/2, never
        # has one).
        self.parser: httptools.HttpRequestParser = None  # type: ignore[assignment]
        self._streamingFrom: IPushProducer | None = None
        # The response writer, once a response was written (responseWriter).
        self._writer: ResponseWriter | None = None
        # The read being parsed when it started between requests (its
        # first request's line starts it), or None: on_headers_complete.
        self._lineRead: bytes | None = None

    # -- connection lifecycle -------------------------------------------

    def connectionMade(self) -> None:
        transport = self.transport
        # Not every transport is TCP (a UNIX socket has no Nagle to turn off).
        setNoDelay = getattr(transport, "setTcpNoDelay", None)
        if setNoDelay is not None:
            setNoDelay(True)
        peer = transport.getPeer()
        host: str | None = getattr(peer, "host", None)
        self.peerHost = host
        if host is None:
            self.forwardedFor = b"unknown"
        else:
            self.forwardedFor = host.encode("ascii")
        self.trusted = self.router.isTrusted(host)
        # Over TLS, the caller's identity is read from its certificate at
        # the first request (the handshake is over by then).
        self._tls = ISSLTransport.providedBy(transport)
        ownDefaults(transport)
        self._send = writerFor(transport)
        self.gate = PauseGate(transport, producerReason="upstream")
        if self.connStats is not None:
            self.connStats.opened += 1
        self._setDeadline(self.clock.seconds() + self.settings.idleTimeout)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.closing = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self.connStats is not None:
            self.connStats.closed += 1
        if isTLSFailure(reason.value):
            self.router.countError("client-tls-failed")
        if self._tunnel is not None:
            tunnel, self._tunnel = self._tunnel, None
            tunnel.loseConnection()
        if self._h2 is not None:
            self._h2.connectionLost(reason)
        active, self.active = self.active, None
        if active is not None:
            active.clientLost()
        for queued in self.queue:
            if isinstance(queued, Exchange):
                queued.clientLost()
        self.queue.clear()

    # -- input ----------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self._tunnel is not None:
            self._tunnel.write(data)
            return
        if self._h2 is not None:
            self._h2.dataReceived(data)
            return
        if self._fresh:
            data = self._readPreface(data)  # type: ignore[assignment]
            if data is None:
                return
        if self.closing or self._broken:
            return
        self._bodyProgress = False
        self._began = False
        # A read that starts between requests starts with its first
        # request's line (see on_headers_complete).
        self._lineRead = data if self._state == _IDLE else None
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as e:
            self._upgraded(data[e.args[0]:])
        except httptools.HttpParserCallbackError as e:
            error = e.__context__
            if isinstance(error, ProxyError):
                self._framingError(error)
            else:
                _log.failure(
                    "unexpected error handling a request",
                    failure=None,
                )
                self._framingError(
                    ProxyError(500, "internal-error", "meshproxy failed handling this request.")
                )
        except httptools.HttpParserError as e:
            self._framingError(parserError(e))
        else:
            if self._state != _IDLE or not self._began:
                # Something is left unfinished (a head, a body, a preamble):
                # bound it.
                self._bound(data)
        self._lineRead = None
        toStart, self._toStart = self._toStart, None
        # (its state read, not its done property: a Python call per read)
        if toStart is not None and toStart is self.active and toStart.state is not DONE:
            # Started only now: a request whose framing fails later in the
            # same read never has its head sent upstream.
            toStart.start()
        if self._out:
            self.flush()

    def _readPreface(self, data: bytes) -> bytes | None:
        """
        The connection's first bytes: the HTTP/2 preface switches it to
        HTTP/2 (the bytes are the new connection's); the start of one waits
        for the rest.

        @return: the bytes to parse as HTTP/1, or L{None}.
        """
        seen = self._prefix + data if self._prefix else data
        n = min(len(seen), len(PREFACE))
        if seen[:n] != PREFACE[:n]:
            self._fresh = False
            self._prefix = b""
            self.parser = httptools.HttpRequestParser(self)
            return seen
        if n < len(PREFACE):
            # The start of a preface (or of a request line starting "P"):
            # bounded like a head that came in pieces.
            self._prefix = seen
            if self._headSince is None:
                self._startHeadTimer()
            return None
        self._fresh = False
        self._prefix = b""
        self._clearDeadline()
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self._tls:
            self._readIdentity()
        from meshproxy.http2.connection import H2ServerConnection

        self._h2 = H2ServerConnection(self, self.http2, limits=self.h2Limits)
        self._h2.dataReceived(seen)
        return None

    def _bound(self, data: bytes) -> None:
        """
        Apply the size limits and timeouts to what the last read left
        unfinished: a head, a preamble of empty lines, or chunk framing and
        trailers (which the parser buffers, like a head).
        """
        state = self._state
        settings = self.settings
        if state == _HEAD:
            self._headRaw += len(data)
            if self._headRaw > settings.maxHeaderBytes:
                self._framingError(
                    ProxyError(431, "header-too-large", "Request header too large.")
                )
            elif self._headSince is None:
                # The head arrived in pieces: bound the wait for the rest.
                self._startHeadTimer()
        elif state == _BODY:
            if self._current is None:
                return
            if self._bodyProgress:
                self._sinceBody = 0
            else:
                self._sinceBody += len(data)
                if self._sinceBody > settings.maxHeaderBytes:
                    self._framingError(
                        ProxyError(431, "header-too-large", "Request trailers too large.")
                    )
                    return
            self._setDeadline(self.clock.seconds() + settings.bodyTimeout)
        elif self._headSince is None and not self._began and data:
            # Bytes before a request line: one empty line is tolerated
            # (RFC 9112 2.2); more start the header timeout, counted from
            # the first of them.
            if not self._preamble:
                self._preambleSince = self.clock.seconds()
            self._preamble += len(data)
            if self._preamble > 2:
                self._startHeadTimer(self._preambleSince)

    def _startHeadTimer(self, since: float | None = None) -> None:
        if since is None:
            since = self.clock.seconds()
        self._headSince = since
        self._setDeadline(since + self.settings.headerTimeout)

    # httptools callbacks --------------------------------------------------

    # (No on_chunk_header or on_chunk_complete: httptools calls neither
    # when they are missing, and each would cost a bound method per
    # connection and a call per chunk.)

    def on_message_begin(self) -> None:
        self._began = True
        self._state = _HEAD
        self._bodySize = 0
        self._headRaw = 0
        self._url = b""
        self._headers = []
        self._trailers = None
        self._fieldCount = 0
        self._fieldBytes = 0
        self._sinceBody = 0

    def _readIdentity(self) -> None:
        """
        Read the identity of the client's verified certificate, once.
        """
        # Imported here, on TLS connections only: meshproxy.tls brings
        # cryptography and service_identity, which a plain process does not
        # import.
        from meshproxy.tls import forwardedClientCert, identityOf

        self._tls = False
        certificate = self.transport.getPeerCertificate()  # type: ignore[attr-defined]
        if certificate is not None:
            identity = self.identity = identityOf(certificate)
            self.clientCert = forwardedClientCert(self.router.tlsName, identity)

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > self._maxUriLength:
            raise ProxyError(414, "uri-too-long", "Request-target too long.")

    def on_header(self, name: bytes, value: bytes) -> None:
        # The head's fields, then (separately) the trailers', bounded as
        # they arrive. (Called for every field: the head's are counted by
        # their list, which a new message starts empty.)
        size = self._fieldBytes = self._fieldBytes + len(name) + len(value) + 4
        if self._state != _HEAD:
            self._trailer(name, value, size)
            return
        headers: Headers = self._headers  # type: ignore[assignment]  # a list since on_message_begin
        if len(headers) >= self._maxHeaders:
            raise ProxyError(431, "too-many-headers", "Too many request headers.")
        if size > self._maxHeaderBytes:
            raise ProxyError(431, "header-too-large", "Request header too large.")
        headers.append((name, value))

    def _trailer(self, name: bytes, value: bytes, size: int) -> None:
        """
        A trailer field, bounded as the head's fields are.

        @param size: the bytes of the trailers so far, this one included.
        """
        count = self._fieldCount = self._fieldCount + 1
        settings = self.settings
        if count > settings.maxHeaders:
            raise ProxyError(431, "too-many-headers", "Too many trailer fields.")
        if size > settings.maxHeaderBytes:
            raise ProxyError(431, "header-too-large", "Request trailers too large.")
        if forbiddenTrailer(name):
            # Framing, routing, authentication and mesh context are never
            # taken from a trailer (RFC 9110 6.5.1): dropped, not forwarded.
            self.router.countError("trailer-dropped")
        elif self._trailers is None:
            self._trailers = [(name, value)]
        else:
            self._trailers.append((name, value))

    def on_headers_complete(self) -> None:
        parser = self.parser
        method = parser.get_method()
        url = self._url
        version = None
        read = self._lineRead
        if read is not None:
            # The first request of a read that started between requests:
            # its line is the read's first, "METHOD SP target SP version
            # CRLF" (after empty lines, if any, which shift it: then the
            # version's place below holds no space and no CR, and nothing
            # is found). A version read off the line saves httptools'
            # get_http_version, which formats a string per call (about
            # 2,000 instructions); any other is asked of it.
            self._lineRead = None
            at = len(method) + len(url) + 1
            if read[at:at + 11] == b" HTTP/1.1\r\n":
                version = "1.1"
        if version is None:
            version = parser.get_http_version()
        request = Request(
            method,
            url,
            version,
            self._headers,  # type: ignore[arg-type]  # a list since on_message_begin
        )
        self._headers = None
        self._fieldCount = 0
        self._fieldBytes = 0
        request.keepAlive = parser.should_keep_alive()
        request.peer = self.peerHost
        if self._tls:
            self._readIdentity()
        request.identity = self.identity
        checkRequest(request, self.settings)
        exchange = Exchange(self, request, self.router)
        self._current = exchange
        self._state = _BODY
        self._headSince = None
        self._preamble = 0
        if self.draining:
            exchange.keepAlive = False
        if self.active is None:
            self.active = exchange
            self._toStart = exchange
        else:
            self.queue.append(exchange)
            self.gate.pause("pipeline")

    def on_body(self, data: bytes) -> None:
        self._bodyProgress = True
        current = self._current
        if current is not None:
            limit = self.settings.maxBodyBytes
            if limit is not None:
                self._bodySize += len(data)
                if self._bodySize > limit:
                    raise ProxyError(413, "body-too-large", "Request body too large.")
            current.bodyReceived(data)

    def on_message_complete(self) -> None:
        current, self._current = self._current, None
        self._state = _IDLE
        if current is not None:
            trailers, self._trailers = self._trailers, None
            current.bodyComplete(trailers)
        if not self.closing and self.active is None and self._deadline is None:
            self._setDeadline(self.clock.seconds() + self._idleTimeout)

    # -- upgrade (WebSocket and friends) --------------------------------

    def _upgraded(self, rest: bytes) -> None:
        """
        The parser saw a complete upgrade request; bytes after it belong to
        the new protocol and wait until the upstream agrees to switch.
        """
        exchange = self.active
        self.gate.pause("upgrade")
        if exchange is not None and exchange.request.upgrade:
            exchange.upgradeRest = rest
        else:
            self._framingError(ProxyError(400, "bad-request", "Unexpected upgrade."))

    def startTunnel(self, upstreamTransport: IStreamTransport, rest: bytes) -> None:
        """
        Turn this connection into a byte tunnel to C{upstreamTransport}.

        @param rest: client bytes already read past the upgrade request.
        """
        self._tunnel = upstreamTransport
        self.active = None
        self.flush()
        self.transport.registerProducer(upstreamTransport, True)
        upstreamTransport.registerProducer(self.transport, True)
        if rest:
            upstreamTransport.write(rest)
        self.gate.resume("upgrade")
        self._clearDeadline()

    def tunnelClosed(self) -> None:
        """
        The upstream side of a tunnel went away.
        """
        self._tunnel = None
        self.transport.loseConnection()

    # -- output ---------------------------------------------------------

    def write(self, data: bytes) -> None:
        """
        Queue bytes for the client; L{flush} sends them in one write.
        """
        self._out.append(data)

    def flush(self) -> None:
        """
        Send everything queued by L{write}.
        """
        out = self._out
        if out:
            if len(out) == 1:
                data = out[0]
            else:
                data = b"".join(out)
            out.clear()
            # (read, then called: a callable in a slot called as a method
            # is looked up in full each time by CPython 3.11)
            send = self._send
            send(data)

    def streamFrom(self, producer: IPushProducer) -> None:
        """
        See L{IClientConnection.streamFrom}.
        """
        self._streamingFrom = producer
        self.transport.registerProducer(producer, True)

    def stopStreaming(self) -> None:
        """
        See L{IClientConnection.stopStreaming}.
        """
        if self._streamingFrom is not None:
            self._streamingFrom = None
            self.transport.unregisterProducer()

    def readingPaused(self) -> bool:
        """
        See L{IClientConnection.readingPaused}: the transport paused the
        upstream it streams from (its write buffer is full).
        """
        # FileDescriptor transports say so; others (TLS, test transports)
        # are taken as never paused.
        return getattr(self.transport, "producerPaused", False)

    def abort(self) -> None:
        """
        See L{IClientConnection.abort}.
        """
        self.closing = True
        self.flush()
        self.transport.abortConnection()

    def exchangeDone(self, exchange: IExchange, keepAlive: bool) -> None:
        """
        The response to the active request has been written.

        @param keepAlive: whether the connection can carry another request.
        """
        if exchange is not self.active:
            return
        self.active = None
        if self.closing:
            return
        if not keepAlive or (exchange is self._current and exchange.request.hasBody):
            # A request whose body we have not read to the end cannot be
            # followed by another on this connection.
            self.closing = True
            self.flush()
            self.transport.loseConnection()
            return
        if self.queue:
            nxt = self.queue.pop(0)
            # An _ErrorAnswer is active only within its start(), which ends
            # the connection.
            self.active = nxt  # type: ignore[assignment]
            if not self.queue:
                self.gate.resume("pipeline")
            nxt.start()
        else:
            if self._state == _IDLE:
                # The time the exchange ended, in this event (only an
                # Exchange, after its _end, calls this).
                endTime = exchange.endTime
                self._setDeadline(endTime + self._idleTimeout)

    def drain(self) -> None:
        """
        The process is shutting down: close now if idle, otherwise after
        the response being written.
        """
        self.draining = True
        if self._h2 is not None:
            self._h2.drain()
            return
        if self.active is None and not self.queue and self._state == _IDLE:
            self.closing = True
            self.transport.loseConnection()
        elif self.active is not None and not self.active.responseStarted:
            self.active.keepAlive = False

    def responseWriter(self, bodyless: bool) -> ResponseWriter:
        """
        See L{IClientConnection.responseWriter}: HTTP/1.1 bytes, queued by
        L{write}.
        """
        # One writer per connection, made for its first response: an
        # HTTP/1.1 connection streams one response at a time, and an
        # exchange writes only while it streams (never once done).
        writer = self._writer
        if writer is None:
            # (The queue itself: what write appends to, one call fewer.)
            writer = self._writer = ResponseWriter(self._out, bodyless)
        else:
            writer.bodyless = bodyless
            writer.chunked = False
            writer.closeDelimited = False
        return writer

    def interim(self, status: int, reason: bytes, headers: Headers) -> None:
        """
        See L{IClientConnection.interim}.
        """
        if status == 100:
            self.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        else:
            self.write(interimHead(status, reason, headers))

    def sendError(self, error: ProxyError, close: bool = False) -> None:
        """
        Answer with an error made by meshproxy (for the active request): a
        gRPC answer to a gRPC call (L{grpc.errorHead}).
        """
        request = None if self.active is None else self.active.request
        if request is not None and grpc.isGrpcRequest(request):
            self.write(grpc.errorHead(error.status, error.reason, error.detail, close=close))
            return
        head = request is not None and request.method == b"HEAD"
        self.write(
            errorResponse(error.status, error.reason, error.detail, close=close, head=head)
        )

    def _framingError(self, error: ProxyError) -> None:
        """
        The request stream is broken: answer (after any request still being
        answered) and close the connection.
        """
        broken, self._current = self._current, None
        self._state = _IDLE
        self.router.countError(error.reason)
        if self.closing or self._broken:
            return
        if broken is None:
            # No exchange was made of it: summarised here (an exchange is
            # when it ends).
            self.router.observer.refused(
                error.status, error.reason, self.peerHost, self.clock.seconds()
            )
        self._broken = True
        self.gate.pause("broken")
        if broken is not None:
            # The error is in the body of a request already under way: that
            # request is abandoned (its upstream connection is dropped).
            if broken is self.active:
                if broken.responseStarted:
                    broken.clientLost()
                    self.active = None
                    self.closing = True
                    self.flush()
                    self.transport.abortConnection()
                    return
                broken.clientLost()
                self.active = None
            else:
                try:
                    self.queue.remove(broken)
                except ValueError:
                    pass
                broken.clientLost()
        if self.active is None:
            self.closing = True
            self.write(
                errorResponse(error.status, error.reason, error.detail, close=True)
            )
            self.flush()
            self.transport.loseConnection()
        else:
            # Answered in turn, once the active exchange finishes.
            self.queue.append(_ErrorAnswer(self, error))

    # -- timeouts -------------------------------------------------------

    def _setDeadline(self, when: float) -> None:
        self._deadline = when
        timer = self._timer
        if timer is None:
            self._timer = self.clock.callLater(
                max(0, when - self.clock.seconds()), self._checkDeadline
            )
        elif timer.getTime() > when:
            timer.reset(max(0, when - self.clock.seconds()))

    def _clearDeadline(self) -> None:
        self._deadline = None

    def _checkDeadline(self) -> None:
        self._timer = None
        deadline = self._deadline
        if deadline is None or self.closing:
            return
        now = self.clock.seconds()
        if now < deadline:
            self._timer = self.clock.callLater(deadline - now, self._checkDeadline)
            return
        if self._state == _HEAD:
            self._timedOut("Timed out reading the request header.")
        elif self._state == _BODY and self._current is not None and self.gate.paused:
            # Reading is paused by meshproxy itself (upstream back-pressure,
            # pipelining): no progress is not the client's fault. The
            # exchange's total timeout still bounds a stuck upstream.
            self._timer = self.clock.callLater(self.settings.bodyTimeout, self._checkDeadline)
            self._deadline = now + self.settings.bodyTimeout
        elif self._state == _BODY and self._current is not None:
            if self._current is self.active and self._current.responseStarted:
                self.closing = True
                self.transport.abortConnection()
            else:
                self._timedOut("Timed out reading the request body.")
        elif self.active is None and not self.queue:
            if self._headSince is not None:
                # Empty lines dribbled before a request line that never came.
                self._timedOut("Timed out reading the request header.")
                return
            # Idle keep-alive connection.
            self.closing = True
            self.transport.loseConnection()
        else:
            self._deadline = None

    def _timedOut(self, detail: str) -> None:
        self.router.countError("client-timeout")
        self.closing = True
        active, self.active = self.active, None
        if active is not None:
            active.clientLost()
        else:
            self.router.observer.refused(408, "client-timeout", self.peerHost, self.clock.seconds())
        self.write(errorResponse(408, "client-timeout", detail, close=True))
        self.flush()
        self.transport.loseConnection()


class _ErrorAnswer:
    """
    A queued answer to a broken pipelined request: sent in turn, then the
    connection closes.
    """

    def __init__(self, server: ServerProtocol, error: ProxyError) -> None:
        self.server = server
        self.error = error

    def start(self) -> None:
        server = self.server
        server.write(
            errorResponse(
                self.error.status, self.error.reason, self.error.detail, close=True
            )
        )
        server.flush()
        server.active = None
        server.closing = True
        server.transport.loseConnection()

    def clientLost(self) -> None:
        pass
