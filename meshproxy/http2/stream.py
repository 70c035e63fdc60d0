"""
One HTTP/2 stream, as its exchange sees its client connection.

An L{H2Stream} is an L{IClientConnection} for one request: the exchange
(L{meshproxy.http.exchange.Exchange}, unchanged) writes its response through
the stream's L{H2ResponseWriter}, whose head, body and end become HEADERS,
DATA and trailers frames, sent as the client's flow-control windows allow.

Flow control is the back-pressure both ways:

  - request body: a DATA frame's bytes are given back to the client (a
    WINDOW_UPDATE, by the h2 library once enough is acknowledged) only once
    the exchange took them while its upstream was not full; while the
    stream's gate is paused (the upstream's transport is full, or bytes are
    held before a connection), they are held, and the client can send no
    more than the stream's window. One slow stream holds its own window,
    never the others' (the connection's window is as large as all of
    them).
  - response body: what the client's windows do not let out waits in the
    stream, and the upstream connection the response streams from is
    paused while anything waits (or while the client's transport is full).

A stream's life, one state at a time (L{H2Stream.state}):

  - C{PENDING}: its head arrived; the exchange starts at the end of the read
    (a stream reset in the same read never starts), with the body that
    came with the head (whose length is then known);
  - C{ACTIVE}: its exchange runs;
  - C{ANSWERED}: the exchange is over, or the request was refused before
    one was made; what waits for the window is still sent;
  - C{CLOSED}: ended both ways, or reset: the connection forgets it.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

from h2.errors import ErrorCodes
from h2.exceptions import H2Error
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from zope.interface import implementer

from meshproxy import grpc
from meshproxy.http.exchange import Exchange
from meshproxy.http.interfaces import IClientConnection, IResponseWriter
from meshproxy.http.message import ProxyError, errorBody, forbiddenTrailer
from meshproxy.http2.fastpath import acknowledge, endStream, sendHeaders, sendQueuedData
from meshproxy.http2.headers import errorFields, interimFields, trailerFields, trailersFrom
from meshproxy.transport.gate import PauseGate

if TYPE_CHECKING:
    from meshproxy.http.interfaces import IExchange
    from meshproxy.http.message import Headers, Request
    from meshproxy.http2.connection import H2ServerConnection
    from meshproxy.transport.interfaces import IStreamTransport

__all__ = ["ACTIVE", "ANSWERED", "CLOSED", "PENDING", "H2ResponseWriter", "H2Stream"]

_log = Logger()

PENDING = "PENDING"
ACTIVE = "ACTIVE"
ANSWERED = "ANSWERED"
CLOSED = "CLOSED"


@implementer(IClientConnection, IPushProducer)
class H2Stream:
    """
    One stream of an HTTP/2 client connection.

    As an L{IPushProducer} it is what its L{gate} pauses: while paused,
    the request body bytes it received are not given back to the client.

    @ivar connection: the L{H2ServerConnection}.
    @ivar streamId: the stream's id.
    @ivar state: C{PENDING}, C{ACTIVE}, C{ANSWERED} or C{CLOSED}.
    @ivar request: its L{Request}, or L{None} when it was refused before one
        was made.
    @ivar exchange: its L{Exchange} once started, until the stream closes.
    @ivar remoteEnded: whether the client ended its side (the whole request
        arrived).
    @ivar localEnded: whether the end of the response was sent.
    @ivar lastData: when the request body last made progress (for the body
        timeout).
    @ivar blockedSince: since when response bytes wait for the client's
        window, without progress; or L{None}.
    """

    __slots__ = (
        "connection",
        "streamId",
        "state",
        "request",
        "exchange",
        "trusted",
        "forwardedFor",
        "scheme",
        "clientCert",
        "transport",
        "_gate",
        "remoteEnded",
        "localEnded",
        "lastData",
        "blockedSince",
        "_early",
        "_trailers",
        "_unacked",
        "_holding",
        "_bodySize",
        "_head",
        "_headBlock",
        "_out",
        "_outSize",
        "_ending",
        "_endTrailers",
        "_producer",
        "_producerPaused",
    )

    def __init__(self, connection: H2ServerConnection, streamId: int, now: float) -> None:
        """
        @param connection: the client connection.
        @param streamId: the stream's id.
        @param now: when its head arrived.
        """
        server = connection.server
        self.connection = connection
        self.streamId = streamId
        self.state = PENDING
        self.request: Request | None = None
        self.exchange: Exchange | None = None
        self.trusted = server.trusted
        self.forwardedFor = server.forwardedFor
        self.scheme = server.scheme
        self.clientCert = server.clientCert
        self.transport: IStreamTransport = connection.transport
        # (made when a request body needs it: most requests have none)
        self._gate: PauseGate | None = None
        self.remoteEnded = False
        self.localEnded = False
        self.lastData = now
        self.blockedSince: float | None = None
        # The body that came before the exchange started.
        self._early: list[bytes] | None = []
        self._trailers: Headers | None = None
        # Flow-controlled bytes received and not given back yet, and
        # whether they are held (the gate is paused).
        self._unacked = 0
        self._holding = False
        self._bodySize = 0
        # The response waiting to be sent: its head, its body pieces, and
        # its end (with trailers).
        self._head: Headers | None = None
        self._headBlock: bytes | None = None
        self._out: deque[bytes | memoryview] = deque()
        self._outSize = 0
        self._ending = False
        self._endTrailers: Headers | None = None
        self._producer: IPushProducer | None = None
        self._producerPaused = False

    @property
    def gate(self) -> PauseGate:
        """
        The L{PauseGate} of the stream's request body (made when first
        asked for).
        """
        gate = self._gate
        if gate is None:
            gate = self._gate = PauseGate(self, producerReason="upstream")
        return gate

    # -- from the client ----------------------------------------------------

    def start(self) -> None:
        """
        Make the exchange and start it, with the body that came so far (its
        whole body when the client ended the stream: its length is then
        known, and goes upstream as a C{Content-Length}).
        """
        request: Request = self.request  # type: ignore[assignment]  # PENDING has one
        early: list[bytes] = self._early  # type: ignore[assignment]  # a list while PENDING
        self._early = None
        if self.remoteEnded and request.chunked and self._trailers is None:
            request.chunked = False
            request.contentLength = sum([len(piece) for piece in early])
        exchange = self.exchange = Exchange(self, request, self.connection.server.router)
        self.state = ACTIVE
        if request.hasBody:
            for piece in early:
                exchange.bodyReceived(piece)
            if self.remoteEnded:
                exchange.bodyComplete(self._trailers)
        if not self._holding:
            self._giveBack()
        try:
            exchange.start()
        except Exception:
            _log.failure("unexpected error starting an HTTP/2 request")
            if not exchange.done:
                exchange.clientLost()
            if self.state is ACTIVE and self._head is None:
                self.refuse(
                    ProxyError(500, "internal-error", "meshproxy failed handling this request."),
                    counted=False,
                )

    def dataReceived(self, data: bytes, flowLength: int, now: float) -> None:
        """
        A DATA frame's bytes.

        @param flowLength: the bytes it counts for flow control (with its
            padding).
        @param now: when it arrived.
        """
        self.lastData = now
        state = self.state
        if state is PENDING or state is ACTIVE:
            self._unacked += flowLength
            limit = self.connection.settings.maxBodyBytes
            if limit is not None:
                self._bodySize += len(data)
                if self._bodySize > limit:
                    self._bodyRefused(ProxyError(413, "body-too-large", "Request body too large."))
                    return
            if state is PENDING:
                self._early.append(data)  # type: ignore[union-attr]  # a list while PENDING
                return
            if data and self.request.hasBody:  # type: ignore[union-attr]
                self.exchange.bodyReceived(data)  # type: ignore[union-attr]
            if not self._holding:
                self._giveBack()
        else:
            # Answered: the rest of the body is dropped (the stream is reset
            # once the answer is out).
            self._acknowledge(flowLength)

    def trailersReceived(self, headers: Headers) -> None:
        """
        The request's trailer fields (the client ends the stream with
        them).
        """
        if self.state is not PENDING and self.state is not ACTIVE:
            # (answered already: the rest of the request is dropped)
            return
        try:
            trailersFrom(headers)
        except ProxyError as e:
            self._bodyRefused(e)
            return
        kept: Headers = []
        for pair in headers:
            if forbiddenTrailer(pair[0]):
                # Never taken from a trailer.
                self.connection.countError("trailer-dropped")
            else:
                kept.append(pair)
        self._trailers = kept or None

    def remoteEnd(self) -> None:
        """
        The client ended its side: the request is complete.
        """
        self.remoteEnded = True
        state = self.state
        if state is ACTIVE:
            request = self.request
            if request is not None and request.hasBody:
                self.exchange.bodyComplete(self._trailers)  # type: ignore[union-attr]
        elif state is ANSWERED:
            self._maybeClose()

    def resetByPeer(self) -> bool:
        """
        The client reset the stream.

        @return: whether it did so before the response was complete (what
            rapid reset is made of).
        """
        state = self.state
        if state is CLOSED:
            return False
        early = state is PENDING or state is ACTIVE or not self.localEnded
        exchange = self.exchange
        self._closed()
        if exchange is not None and not exchange.done:
            exchange.clientLost()
        return early

    def connectionLost(self) -> None:
        """
        The client connection is gone.
        """
        exchange = self.exchange
        self._closed()
        if exchange is not None and not exchange.done:
            exchange.clientLost()

    def refuse(self, error: ProxyError, counted: bool = True) -> None:
        """
        Answer C{error} without an exchange (the request was refused before
        one was made, or abandoned), then reset the stream once the answer
        is out if the client is still sending.

        @param counted: whether to count and summarise it here (not when an
            exchange already did).
        """
        connection = self.connection
        if counted:
            connection.countError(error.reason)
            connection.refused(error)
        self.state = ANSWERED
        self._early = None
        self.sendError(error)
        self._giveBack()
        self._push()
        self._maybeClose()

    def _bodyRefused(self, error: ProxyError) -> None:
        """
        The request body broke a limit: the exchange is abandoned (its
        upstream dropped), and the client answered, or reset if its
        response started.
        """
        exchange = self.exchange
        if exchange is not None and exchange.responseStarted:
            self.connection.countError(error.reason)
            self.abort()
            if not exchange.done:
                exchange.clientLost()
            return
        if exchange is not None:
            exchange.clientLost()
        self.refuse(error)

    def timedOut(self) -> None:
        """
        The request body stalled (C{server.bodyTimeout}), or the response
        waited for the client's window too long (C{server.idleTimeout}):
        answer 408 if nothing of the response went out, else reset.
        """
        self.connection.countError("client-timeout")
        exchange = self.exchange
        answerable = (
            self.state is ACTIVE
            and exchange is not None
            and not exchange.responseStarted
            and self.blockedSince is None
        )
        if exchange is not None and not exchange.done:
            exchange.clientLost()
        if answerable:
            error = ProxyError(408, "client-timeout", "Timed out reading the request body.")
            self.connection.refused(error)
            self.refuse(error, counted=False)
        else:
            self._reset(ErrorCodes.CANCEL)

    def deadline(self, bodyTimeout: float, stallTimeout: float) -> float | None:
        """
        When this stream times out, if nothing happens before: its request
        body stalls for C{bodyTimeout} (unless meshproxy itself holds it),
        or its response waits without progress for C{stallTimeout}.
        """
        when = None
        if self.state is ACTIVE and not self.remoteEnded and not self._holding:
            when = self.lastData + bodyTimeout
        if self.blockedSince is not None:
            stalled = self.blockedSince + stallTimeout
            if when is None or stalled < when:
                when = stalled
        return when

    # -- the stream as its gate's producer ---------------------------------

    def pauseProducing(self) -> None:
        """
        The gate is paused: hold the request body bytes received (no
        window given back).
        """
        self._holding = True

    def resumeProducing(self) -> None:
        """
        The gate resumed: give back the bytes held.
        """
        self._holding = False
        connection = self.connection
        if self.state is ACTIVE and not self.remoteEnded:
            # The time it was held is not the client's.
            self.lastData = connection.now()
            connection.watch(connection.settings.bodyTimeout)
        if self._unacked and self.state is ACTIVE:
            self._giveBack()
            self.connection.flush()

    def stopProducing(self) -> None:
        """
        Nothing to stop: the gate resumes itself.
        """

    def _giveBack(self) -> None:
        """
        Give the client back the window of the bytes taken.
        """
        unacked = self._unacked
        if unacked:
            self._unacked = 0
            self._acknowledge(unacked)

    def _acknowledge(self, size: int) -> None:
        if size:
            acknowledge(self.connection.h2, size, self.streamId)

    # -- IClientConnection --------------------------------------------------

    def write(self, data: bytes) -> None:
        """
        See L{IClientConnection.write}: never used on a stream (the
        response goes through L{responseWriter}).
        """
        raise RuntimeError("raw bytes written to an HTTP/2 stream")

    def flush(self) -> None:
        """
        See L{IClientConnection.flush}: send what the windows let out (with
        what other streams of the connection send in the same poll).
        """
        self._push()
        self.connection.flushSoon()

    def responseWriter(self, bodyless: bool) -> H2ResponseWriter:
        """
        See L{IClientConnection.responseWriter}.
        """
        return H2ResponseWriter(self, bodyless)

    def interim(self, status: int, reason: bytes, headers: Headers) -> None:
        """
        See L{IClientConnection.interim}: a HEADERS frame of its own.
        """
        if self.state is not ACTIVE or self._head is not None:
            return
        try:
            self.connection.h2.send_headers(self.streamId, interimFields(status, headers))
        except H2Error:
            self._failed()

    def sendError(self, error: ProxyError, close: bool = False) -> None:
        """
        See L{IClientConnection.sendError}: to a gRPC call, a gRPC answer
        (trailers-only: one HEADERS frame ending the stream,
        L{grpc.errorFields}).
        """
        request = self.request
        if request is not None and grpc.isGrpcRequest(request):
            self.queueHead(grpc.errorFields(error.status, error.reason, error.detail))
            self.queueEnd(None)
            return
        body = errorBody(error.reason, error.detail)
        self.queueHead(errorFields(error, len(body)))
        if request is None or request.method != b"HEAD":
            self.queueData(body)
        self.queueEnd(None)

    def exchangeDone(self, exchange: IExchange, keepAlive: bool) -> None:
        """
        See L{IClientConnection.exchangeDone}: the stream ends once its
        answer is out (and is reset then if the client still sends).
        """
        if self.state is not ACTIVE:
            return
        self.state = ANSWERED
        self._holding = False
        self._giveBack()
        self._maybeClose()

    def streamFrom(self, producer: IPushProducer) -> None:
        """
        See L{IClientConnection.streamFrom}: C{producer} is paused while
        response bytes wait for the client's window, or while the client's
        transport is full.
        """
        self._producer = producer
        self._producerPaused = False
        self.updateProducer()

    def stopStreaming(self) -> None:
        """
        See L{IClientConnection.stopStreaming}.
        """
        self._producer = None
        self._producerPaused = False

    def readingPaused(self) -> bool:
        """
        See L{IClientConnection.readingPaused}: the client holds the
        response back (its window is closed, or its transport full).
        """
        return bool(self._outSize) or self.connection.writePaused

    def abort(self) -> None:
        """
        See L{IClientConnection.abort}: the response cannot be completed;
        the stream is reset (the other streams go on).
        """
        self._reset(ErrorCodes.INTERNAL_ERROR)

    def startTunnel(self, upstreamTransport: IStreamTransport, rest: bytes) -> None:
        """
        See L{IClientConnection.startTunnel}: HTTP/2 has no upgrades (an
        exchange never asks for one on a stream).
        """
        upstreamTransport.abortConnection()
        self._reset(ErrorCodes.INTERNAL_ERROR)

    # -- the response -----------------------------------------------------

    def queueHead(self, fields: Headers, block: bytes | None = None) -> None:
        """
        The response head, sent at the next L{flush} (with the end of the
        stream if nothing follows by then).

        @param block: its header block, when known (L{ResponseMemo}).
        """
        self._head = fields
        self._headBlock = block

    def queueData(self, data: bytes) -> None:
        """
        A piece of the response body.
        """
        if data:
            self._out.append(data)
            self._outSize += len(data)

    def queueEnd(self, trailers: Headers | None) -> None:
        """
        The end of the response, with its trailer fields (or L{None}).
        """
        self._ending = True
        self._endTrailers = trailers

    def push(self) -> None:
        """
        The client's window grew: send what waits.
        """
        self._push()

    def _push(self) -> None:
        """
        Send the queued response as far as the client's windows allow.
        """
        if self.localEnded or self.state is CLOSED:
            return
        connection = self.connection
        h2 = connection.h2
        sid = self.streamId
        try:
            head = self._head
            if head is not None:
                self._head = None
                block, self._headBlock = self._headBlock, None
                if self._ending and not self._outSize and self._endTrailers is None:
                    sendHeaders(h2, sid, head, True, block)
                    self._localEnd()
                    return
                sendHeaders(h2, sid, head, False, block)
            out = self._out
            sent, ended = sendQueuedData(
                h2, sid, out, self._ending and self._endTrailers is None
            )
            self._outSize -= sent
            if ended:
                self._localEnd()
                return
            if out:
                if sent or self.blockedSince is None:
                    self.blockedSince = connection.now()
                connection.blocked(self)
            elif self._ending:
                trailers = self._endTrailers
                if trailers is not None:
                    sendHeaders(h2, sid, trailers, True)
                else:
                    endStream(h2, sid)
                self._localEnd()
                return
            elif self.blockedSince is not None:
                self.blockedSince = None
                connection.unblocked(self)
        except H2Error:
            self._failed()
            return
        self.updateProducer()

    def _localEnd(self) -> None:
        """
        The end of the response was sent.
        """
        self.localEnded = True
        self.blockedSince = None
        self.connection.unblocked(self)
        self._producer = None
        self._maybeClose()

    def _maybeClose(self) -> None:
        """
        Close the stream once it is answered and the answer is out: a
        client still sending is told to stop (a reset, C{NO_ERROR}: RFC
        9113 8.1).
        """
        if self.state is not ANSWERED or not self.localEnded:
            # (what waits for the window ends it, in _push)
            return
        if self.remoteEnded:
            self._closed()
        else:
            self._reset(ErrorCodes.NO_ERROR)

    def updateProducer(self) -> None:
        """
        Pause the upstream the response streams from while response bytes
        wait or the client's transport is full; resume it otherwise.
        """
        producer = self._producer
        if producer is None:
            return
        pause = bool(self._outSize) or self.connection.writePaused
        if pause is not self._producerPaused:
            self._producerPaused = pause
            if pause:
                producer.pauseProducing()
            else:
                producer.resumeProducing()

    # -- ends -------------------------------------------------------------

    def _reset(self, code: ErrorCodes) -> None:
        """
        Reset the stream (RST_STREAM with C{code}) and forget it.
        """
        if self.state is CLOSED:
            return
        try:
            self.connection.h2.reset_stream(self.streamId, code)
        except H2Error:
            pass
        self._closed()

    def _failed(self) -> None:
        """
        The h2 library refused to send on this stream (it is closed there):
        forget it.
        """
        _log.warn("HTTP/2 stream {id} could not be written", id=self.streamId)
        exchange = self.exchange
        self._closed()
        if exchange is not None and not exchange.done:
            exchange.clientLost()

    def _closed(self) -> None:
        """
        The stream is over on both sides: the connection's window of what
        it held is given back, and the connection forgets it.
        """
        if self.state is CLOSED:
            return
        self.state = CLOSED
        # (the exchange refers to the stream: without this, both, their
        # request, response writer and trace would wait for the garbage
        # collector, which would then run more often)
        self.exchange = None
        unacked = self._unacked
        self._unacked = 0
        self._early = None
        self._out.clear()
        self._outSize = 0
        self._producer = None
        self.blockedSince = None
        connection = self.connection
        if unacked and not connection.closed:
            # (the stream is closed: only the connection's window grows)
            acknowledge(connection.h2, unacked, self.streamId)
        connection.streamClosed(self)


@implementer(IResponseWriter)
class H2ResponseWriter:
    """
    Writes one response to an HTTP/2 stream: its head as a HEADERS frame
    (connection-specific fields dropped, names lowercased, C{via} added),
    its body as DATA frames, and its end (trailers, or the end of the
    stream).
    """

    __slots__ = ("stream", "bodyless")

    def __init__(self, stream: H2Stream, bodyless: bool) -> None:
        """
        @param stream: the stream.
        @param bodyless: whether no body may follow the head.
        """
        self.stream = stream
        self.bodyless = bodyless

    def head(
        self,
        status: int,
        reason: bytes,
        headers: Headers,
        *,
        contentLength: bytes | None,
        chunked: bool,
        version: str,
        keepAlive: bool,
    ) -> bool:
        """
        See L{IResponseWriter.head}: the reason phrase has no place in
        HTTP/2.
        """
        stream = self.stream
        stream.queueHead(*stream.connection.responses.head(status, headers, contentLength, chunked))
        return keepAlive

    def body(self, data: bytes) -> None:
        """
        See L{IResponseWriter.body}.
        """
        if not self.bodyless:
            self.stream.queueData(data)

    def end(self, trailers: Headers | None) -> None:
        """
        See L{IResponseWriter.end}.
        """
        self.stream.queueEnd(trailerFields(trailers) if trailers else None)
