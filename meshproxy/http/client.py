"""
The upstream side of the HTTP router: keep-alive connections to one endpoint
(L{Pool}) and the protocol that reads responses with httptools
(L{UpstreamProtocol}).

httptools cannot be told that a response answers a HEAD request, so
meshproxy frames those itself: the response ends with its header block, and
the connection gets a fresh parser for the next response.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import httptools
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IHandshakeListener, ISSLTransport
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from zope.interface import implementer

from meshproxy.http.interfaces import IUpstreamConnection
from meshproxy.http.message import encodeChunk, forbiddenTrailer, lastChunk
from meshproxy.http.rewrite import requestHead
from meshproxy.transport.connector import describeConnectFailure, describeHandshakeFailure
from meshproxy.transport.fastwrite import ownDefaults, writerFor

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred
    from twisted.internet.interfaces import IAddress, IPushProducer, IReactorTime
    from twisted.python.failure import Failure

    from meshproxy.config import ClientConfig
    from meshproxy.discovery.endpoints import Endpoint
    from meshproxy.http.interfaces import IExchange
    from meshproxy.http.message import Headers, Request
    from meshproxy.transport.connector import IConnector
    from meshproxy.transport.interfaces import IStreamTransport

_log = Logger()


class _ResponseRefused(Exception):
    """
    A response that breaks the client limits (head size, header count,
    interim responses): the try fails as C{upstream-protocol}.
    """


@implementer(IUpstreamConnection, IHandshakeListener)
class UpstreamProtocol(Protocol):
    """
    One connection to an upstream endpoint, carrying one exchange at a time.
    It reports what the upstream sends to its exchange only (never to the
    client connection).

    @ivar pool: the L{Pool} that owns this connection.
    @ivar exchange: the exchange being served, or L{None} while idle.
    @ivar reused: whether this connection already served a response (a
        failure before any response byte is then probably a keep-alive race,
        safe to retry).
    """

    transport: IStreamTransport
    #: (IUpstreamConnection.producer: the transport, once connected)
    producer: IStreamTransport

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.exchange: IExchange | None = None
        limits = pool.limits
        self._maxHeaders = limits.maxHeaders
        self._maxHeaderBytes = limits.maxHeaderBytes
        self.parser = httptools.HttpResponseParser(self)
        self.reused = False
        self.idleSince = 0.0
        self.connected = False
        self._gotBytes = False
        self._headers: Headers | None = None
        self._trailers: Headers | None = None
        self._reason = b""
        self._inBody = False
        # The bounds of the response head (then trailers) being read, raw
        # bytes of an unfinished head, bytes since the last body piece
        # (chunk framing and trailers) and interim responses so far.
        self._fieldCount = 0
        self._fieldBytes = 0
        self._inHead = False
        self._headRaw = 0
        self._sinceBody = 0
        self._bodyProgress = False
        self._interim = 0
        self._complete = False
        self._headDone = False
        self._tunnel: IStreamTransport | None = None
        self._informational = False
        self._producing = False
        self._untilClose = False
        # Set while httptools parses a read: a connection whose response
        # ended in this read returns to the pool only once the whole read
        # is parsed and found to hold nothing more.
        self._feeding = False
        self._releaseAfterFeed = False
        self._unsolicited = False
        # Over TLS: the attempt waiting for the handshake to end, which
        # hears of a failed one.
        self.handshaking = False
        self.attempt: _Attempt | None = None
        # Whether the request being written is chunked.
        self._chunked = False
        # Sends request bytes: the fast writer once connected. (An instance
        # attribute no method of the class shares the name of: read, then
        # called, it is specialised by CPython 3.11; a method's name
        # shadowed by an instance attribute, or a callable attribute
        # called as a method, is looked up in full every time.)
        self._send: Callable[[bytes], None] = self._transportWrite

    def connectionMade(self) -> None:
        self.connected = True
        self.producer = self.transport
        self.handshaking = ISSLTransport.providedBy(self.transport)
        # Not every transport is TCP (a UNIX socket has no Nagle to turn off).
        setNoDelay = getattr(self.transport, "setTcpNoDelay", None)
        if setNoDelay is not None:
            setNoDelay(True)
        ownDefaults(self.transport)
        self._send = writerFor(self.transport)

    def _transportWrite(self, data: bytes) -> None:
        """
        Send request bytes through the transport (until connected).
        """
        self.transport.write(data)

    def write(self, data: bytes) -> None:
        """
        Send request bytes.
        """
        send = self._send
        send(data)

    # -- the request (IRequestWriter) ---------------------------------------

    def writeHead(
        self,
        request: Request,
        peer: bytes,
        scheme: bytes,
        forwarded: bool,
        deadline: bytes,
        override: bytes | None,
        clientCert: bytes | None,
        trace: bytes,
        body: list[bytes] | None,
    ) -> None:
        """
        See L{IRequestWriter.writeHead}: the bytes of
        L{requestHead<meshproxy.http.rewrite.requestHead>}, with the held
        body pieces in the same write.
        """
        head = requestHead(
            request, peer, scheme, forwarded, deadline, override, clientCert, trace
        )
        chunked = self._chunked = request.chunked
        if body:
            if chunked:
                head += b"".join([encodeChunk(p) for p in body])
            else:
                head += b"".join(body)
        send = self._send
        send(head)

    def writeBody(self, data: bytes) -> None:
        """
        See L{IRequestWriter.writeBody}: a chunk of a chunked request.
        """
        send = self._send
        send(encodeChunk(data) if self._chunked else data)

    def writeEnd(self, trailers: Headers | None) -> None:
        """
        See L{IRequestWriter.writeEnd}: the last chunk and the trailers of
        a chunked request (a body with a declared length ends by itself,
        and has no way to carry trailers: those of an HTTP/2 client's
        request are dropped, and counted).
        """
        if self._chunked:
            send = self._send
            send(lastChunk(trailers))
        elif trailers:
            exchange = self.exchange
            if exchange is not None:
                for _ in trailers:
                    exchange.router.countError("trailer-dropped")

    # -- input ------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self._tunnel is not None:
            self._tunnel.write(data)
            return
        exchange = self.exchange
        if exchange is None:
            # Nothing was asked: an idle connection that talks is broken.
            self.transport.abortConnection()
            return
        self._gotBytes = True
        self._feeding = True
        self._bodyProgress = False
        # One reading of the clock for all that this read makes the
        # exchange do (the head's time, the body's progress, the end).
        exchange.eventTime = self.pool.clock.seconds()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as e:
            self._switch(data[e.args[0]:])
        except httptools.HttpParserCallbackError as e:
            if isinstance(e.__context__, _ResponseRefused):
                self._refuse(str(e.__context__))
            else:
                _log.failure("error while relaying a response", failure=None)
                self._refuse("internal error")
        except httptools.HttpParserError as e:
            self._refuse(str(e) or e.__class__.__name__)
        else:
            if self._inHead or self._inBody:
                self._bound(data)
        exchange.eventTime = None
        self._feeding = False
        if self._headDone:
            self._headDone = False
            self.parser = httptools.HttpResponseParser(self)
        if self._releaseAfterFeed:
            self._releaseAfterFeed = False
            if self._unsolicited:
                # Bytes after the end of the response that nobody asked
                # for: never let them answer the next request.
                self._unsolicited = False
                self.pool.discard(self)
                self.transport.abortConnection()
            else:
                # The response ended in this read, and its exchange with it:
                # the time it ended is this event's.
                self.pool.release(self, exchange.endTime)
            # (The exchange flushed its client's output as it ended.)
            return
        if self.exchange is not None and self._inBody and not self._producing:
            # The response continues past this read: from now on a client
            # that reads slowly pauses this upstream connection.
            self._producing = True
            exchange.responseStreaming(self)
        exchange.flush()

    def _refuse(self, reason: str) -> None:
        """
        The upstream sent something that is not an acceptable response: the
        try fails (or, with nobody waiting, the connection is dropped).
        """
        current = self.exchange
        if current is not None:
            current.upstreamError(reason)
        else:
            self.transport.abortConnection()

    def _bound(self, data: bytes) -> None:
        """
        After a read: bound what the parser holds unfinished, an incomplete
        head or the chunk framing and trailers since the last body piece.
        """
        limit = self.pool.limits.maxHeaderBytes
        if self._inHead:
            self._headRaw += len(data)
            if self._headRaw > limit:
                self._refuse("response head larger than %d bytes" % (limit,))
        elif self._inBody:
            if self._bodyProgress:
                self._sinceBody = 0
            else:
                self._sinceBody += len(data)
                if self._sinceBody > limit:
                    self._refuse("response trailers larger than %d bytes" % (limit,))

    def on_message_begin(self) -> None:
        if self.exchange is None:
            self._unsolicited = True
        self._headers = []
        self._trailers = None
        self._reason = b""
        self._inBody = False
        self._inHead = True
        self._headRaw = 0
        self._sinceBody = 0
        self._fieldCount = 0
        self._fieldBytes = 0

    def on_status(self, reason: bytes) -> None:
        self._reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        # The head's fields, then (separately) the trailers', bounded as
        # they arrive. (Called for every field: the head's are counted by
        # their list, which a new message starts empty.)
        size = self._fieldBytes = self._fieldBytes + len(name) + len(value) + 4
        if self._inBody:
            self._trailer(name, value, size)
            return
        headers: Headers = self._headers  # type: ignore[assignment]  # a list since on_message_begin
        if len(headers) >= self._maxHeaders:
            raise _ResponseRefused("more than %d header fields" % (self._maxHeaders,))
        if size > self._maxHeaderBytes:
            raise _ResponseRefused("response head larger than %d bytes" % (self._maxHeaderBytes,))
        headers.append((name, value))

    def _trailer(self, name: bytes, value: bytes, size: int) -> None:
        """
        A trailer field, bounded as the head's fields are.

        @param size: the bytes of the trailers so far, this one included.
        """
        count = self._fieldCount = self._fieldCount + 1
        if count > self._maxHeaders:
            raise _ResponseRefused("more than %d header fields" % (self._maxHeaders,))
        if size > self._maxHeaderBytes:
            raise _ResponseRefused("response head larger than %d bytes" % (self._maxHeaderBytes,))
        if forbiddenTrailer(name):
            # Never forwarded from a trailer (see forbiddenTrailer).
            if self.exchange is not None:
                self.exchange.router.countError("trailer-dropped")
        elif self._trailers is None:
            self._trailers = [(name, value)]
        else:
            self._trailers.append((name, value))

    def on_headers_complete(self) -> None:
        exchange = self.exchange
        status = self.parser.get_status_code()
        self._inHead = False
        self._fieldCount = 0
        self._fieldBytes = 0
        if status < 200 and status != 101:
            # Interim responses: 100 was already answered by meshproxy
            # itself; others (103) are passed on to HTTP/1.1 clients.
            self._interim += 1
            limit = self.pool.limits.maxInformational
            if self._interim > limit:
                raise _ResponseRefused("more than %d interim (1xx) responses" % (limit,))
            self._informational = True
            if exchange is not None:
                # (_headers: a list since on_message_begin, here and below)
                exchange.interimResponse(status, self._reason, self._headers)  # type: ignore[arg-type]
            return
        self._informational = False
        self._inBody = True
        contentLength = None
        chunked = False
        # (lengths first: a lowered copy of every name costs more)
        for name, value in self._headers:  # type: ignore[union-attr]
            size = len(name)
            if size == 14:
                if name.lower() == b"content-length":
                    contentLength = value
            elif size == 17 and name.lower() == b"transfer-encoding":
                chunked = True
        self._untilClose = contentLength is None and not chunked
        if exchange is None:
            return
        if not exchange.responseHead(
            status, self._reason, self._headers, contentLength, chunked  # type: ignore[arg-type]
        ):
            # Dropped for a retry; this connection is being aborted.
            return
        if exchange.request.method == b"HEAD" and status != 101:
            # httptools would wait for Content-Length bytes that never come.
            self._headDone = True
            self._inBody = False
            self._complete = True
            self.reused = True
            exchange.responseComplete(None, self.parser.should_keep_alive())

    def on_body(self, data: bytes) -> None:
        self._bodyProgress = True
        if self._headDone:
            # Body bytes after a HEAD response: the upstream is broken.
            self._unsolicited = True
            return
        exchange = self.exchange
        if exchange is not None and data:
            exchange.responseBody(data)

    def on_message_complete(self) -> None:
        if self._informational:
            self._informational = False
            return
        if self._headDone:
            return
        if self.parser.get_status_code() == 101:
            # httptools raises HttpParserUpgrade next; the tunnel starts there.
            return
        self._inBody = False
        exchange = self.exchange
        self.reused = True
        if exchange is not None:
            exchange.responseComplete(self._trailers, self.parser.should_keep_alive())

    # No on_chunk_header / on_chunk_complete: httptools binds each callback
    # the protocol has, per connection, and calls it for every chunk.

    # -- hand-back and teardown -------------------------------------------

    def attach(self, exchange: IExchange) -> None:
        """
        Serve C{exchange} next (a pooled connection being reused).
        """
        self.exchange = exchange
        self._gotBytes = False
        self._unsolicited = False
        self._interim = 0

    def stopStreaming(self) -> None:
        """
        The response is over: if a slow client paused this connection, read
        again.
        """
        if self._producing:
            self._producing = False
            self.transport.resumeProducing()

    def sendBodyFrom(self, producer: IPushProducer) -> None:
        """
        Let C{producer} (the client's reading) be paused while this
        connection's transport is full.
        """
        self.transport.registerProducer(producer, True)

    def bodySent(self) -> None:
        """
        The request body is written: undo L{sendBodyFrom}.
        """
        self.transport.unregisterProducer()

    def abort(self) -> None:
        """
        The exchange drops this connection: forget it, and reset it.
        """
        self.exchange = None
        self.transport.abortConnection()

    def responseDone(self, reusable: bool) -> None:
        """
        The exchange has what it needs: return to the pool or close.
        """
        self.exchange = None
        if reusable:
            if self._feeding:
                self._releaseAfterFeed = True
            else:
                self.pool.release(self)
        else:
            self.pool.discard(self)
            self.transport.loseConnection()

    def _switch(self, rest: bytes) -> None:
        exchange = self.exchange
        if exchange is None or self.parser.get_status_code() != 101:
            self.transport.abortConnection()
            return
        exchange.upgraded(self, rest)

    def startTunnel(self, peer: IStreamTransport) -> None:
        """
        After a 101, relay raw bytes to the client's transport C{peer}.
        """
        self.exchange = None
        self._tunnel = peer
        self.pool.discard(self)

    def handshakeCompleted(self) -> None:
        """
        See L{IHandshakeListener}: the upstream's certificate was verified;
        the connection can carry requests.
        """
        self.handshaking = False
        attempt, self.attempt = self.attempt, None
        if attempt is not None:
            attempt.ready(self)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.connected = False
        self.pool.discard(self)
        attempt, self.attempt = self.attempt, None
        if attempt is not None:
            # The TLS handshake failed (or the upstream closed during it).
            attempt.handshakeFailed(reason)
            return
        if self._tunnel is not None:
            tunnel, self._tunnel = self._tunnel, None
            tunnel.loseConnection()
            return
        exchange = self.exchange
        if exchange is None:
            return
        if self._inBody and self._untilClose and reason.check(ConnectionDone):
            # A response without a length ends when the connection does.
            self._inBody = False
            exchange.responseComplete(None, False)
        else:
            self.exchange = None
            why = reason.getErrorMessage()
            exchange.upstreamLost(why, not self._gotBytes and self.reused)
        exchange.flush()


class _UpstreamFactory(Factory):
    """
    Builds the L{UpstreamProtocol} of one connection attempt.
    """

    noisy = False

    def __init__(self, pool: Pool) -> None:
        self.pool = pool

    def buildProtocol(self, addr: IAddress | None) -> UpstreamProtocol:
        p = UpstreamProtocol(self.pool)
        p.factory = self
        return p


class _Attempt:
    """
    One connection attempt of a pool, made for one exchange: the exchange
    gets the connection, or hears why there is none; an exchange that gave
    up (L{abandon}) hears nothing and the attempt is called off.
    """

    __slots__ = ("pool", "exchange", "_deferred")

    def __init__(self, pool: Pool, exchange: IExchange) -> None:
        self.pool = pool
        self.exchange: IExchange | None = exchange
        self._deferred: Deferred[Any] | None = None

    def start(self) -> None:
        d = self._deferred = self.pool.connector.connect(
            self.pool.endpoint, _UpstreamFactory(self.pool)
        )
        d.addCallbacks(self._connected, self._failed)

    def abandon(self) -> None:
        """
        The exchange gave up on this attempt (its try timed out, or it
        ended): stop connecting, and never call it back. (A connection in
        its TLS handshake finishes it, and goes to the pool.)
        """
        self.exchange = None
        d, self._deferred = self._deferred, None
        if d is not None:
            d.cancel()

    def _connected(self, conn: UpstreamProtocol) -> None:
        self._deferred = None
        if conn.handshaking:
            # Over TLS, a connection is made when its handshake verified
            # the upstream (or it fails: handshakeFailed).
            conn.attempt = self
            return
        self.ready(conn)

    def ready(self, conn: UpstreamProtocol) -> None:
        """
        The connection can carry requests: to the exchange, or to the pool
        when the exchange gave up.
        """
        pool = self.pool
        pool.opened(conn)
        exchange, self.exchange = self.exchange, None
        if exchange is None:
            pool.release(conn)
            return
        exchange.connecting = None
        conn.attach(exchange)
        exchange.connected(conn)
        exchange.flush()

    def _failed(self, failure: Failure) -> None:
        self._deferred = None
        self._fail(describeConnectFailure(failure, self.pool.connector.timeout), False)

    def handshakeFailed(self, reason: Failure) -> None:
        """
        The TLS handshake did not verify the upstream.
        """
        self._fail(describeHandshakeFailure(reason), True)

    def _fail(self, why: str, tls: bool) -> None:
        self.pool.connecting -= 1
        exchange, self.exchange = self.exchange, None
        if exchange is not None:
            exchange.connecting = None
            exchange.connectFailed(why, True, tls)
            exchange.flush()


class Pool:
    """
    Keep-alive connections to one endpoint.

    @ivar endpoint: the L{Endpoint<meshproxy.discovery.endpoints.Endpoint>}.
    @ivar idle: idle connections, most recently used last.
    """

    def __init__(
        self,
        endpoint: Endpoint,
        *,
        clock: IReactorTime,
        connector: IConnector,
        limits: ClientConfig,
        maxIdle: int = 64,
        idleTimeout: float = 60.0,
    ) -> None:
        """
        @param clock: gives the time, for idle expiry.
        @param connector: the L{IConnector<meshproxy.transport.connector.IConnector>}
            making new connections.
        @param limits: the bounds on responses: C{maxHeaderBytes},
            C{maxHeaders} and C{maxInformational}, as in the router's
            L{ClientConfig<meshproxy.config.ClientConfig>}.
        """
        self.endpoint = endpoint
        self.limits = limits
        self.clock = clock
        self.connector = connector
        self.maxIdle = maxIdle
        self.idleTimeout = idleTimeout
        self.idle: list[UpstreamProtocol] = []
        self.all: set[UpstreamProtocol] = set()
        self.connecting = 0
        self.closed = False

    def acquire(self, exchange: IExchange) -> None:
        """
        Give C{exchange} a connection: an idle one, or a new one.
        """
        idle = self.idle
        while idle:
            conn = idle.pop()
            if conn.connected:
                conn.attach(exchange)
                exchange.connected(conn)
                return
        self.connecting += 1
        attempt = exchange.connecting = _Attempt(self, exchange)
        attempt.start()

    def opened(self, conn: UpstreamProtocol) -> None:
        """
        A new connection was made.
        """
        self.connecting -= 1
        self.all.add(conn)

    def release(self, conn: UpstreamProtocol, now: float | None = None) -> None:
        """
        C{conn} finished a response and can serve another.

        @param now: the time, when the caller has it (else the clock is
            asked).
        """
        if self.closed or len(self.idle) >= self.maxIdle or not conn.connected:
            self.discard(conn)
            conn.transport.loseConnection()
            return
        conn.idleSince = self.clock.seconds() if now is None else now
        self.idle.append(conn)

    def discard(self, conn: UpstreamProtocol) -> None:
        """
        Forget C{conn} (it is closing).
        """
        self.all.discard(conn)
        try:
            self.idle.remove(conn)
        except ValueError:
            pass

    def expire(self, now: float) -> None:
        """
        Close idle connections unused for longer than the idle timeout.
        """
        limit = now - self.idleTimeout
        stale = [c for c in self.idle if c.idleSince <= limit]
        for conn in stale:
            self.discard(conn)
            conn.transport.loseConnection()

    def close(self) -> None:
        """
        The endpoint left the set: close idle connections now, busy ones
        when their exchange ends.
        """
        self.closed = True
        for conn in list(self.idle):
            self.discard(conn)
            conn.transport.loseConnection()
