"""
HTTP/2 to upstreams: a pool of a few connections per endpoint
(L{H2Pool}), each multiplexing many streams (L{H2UpstreamConnection}), each
stream one try of an exchange (L{H2UpstreamStream}: the exchange's
L{IUpstreamConnection} and L{IRequestWriter}).

The exchange runs unchanged: it writes the request through the stream
(HEADERS, DATA and trailers frames, the header list made by
L{requestFields<meshproxy.http2.headers.requestFields>}) and hears the
response from it as from an HTTP/1.1 connection (C{responseHead},
C{responseBody}, C{responseComplete}, or C{connectFailed},
C{upstreamLost}, C{upstreamError}), so that retries, budgets, accrual and
timeouts apply per stream.

What the pool and its connections do, and why:

  - Streams: a connection carries as many streams as the upstream's
    C{SETTINGS_MAX_CONCURRENT_STREAMS} allows (at most
    L{MAX_STREAMS_PER_CONNECTION}); past that the pool opens another
    connection (at most L{H2Pool.maxConnections}), and past those the
    request waits (at most L{H2Pool.maxWaiting} waiting, then the try
    fails as a connection failure, retried elsewhere). The balancer's
    C{pending} counts tries, so streams.
  - Flow control is the back-pressure both ways: a response's DATA is
    given back to the upstream (WINDOW_UPDATE) only once the client side
    took it while not paused (a slow client closes the stream's window:
    meshproxy holds at most one window per stream), and the connection's
    own window is opened to the sum of its streams' so that one held
    stream never stalls the others; a request body the upstream's window
    does not let out waits in the stream, and pauses the client's reading
    (its L{PauseGate}) until the window opens.
  - GOAWAY: no new stream goes on that connection; streams above its last
    stream id were not processed and fail as a connection failure
    (retried whatever the method); those below finish when the GOAWAY is
    graceful (C{NO_ERROR}). A stream reset with C{REFUSED_STREAM} is
    retried the same way. Other resets and connection errors are
    C{upstreamLost} (502 C{upstream-reset}, idempotent requests retried)
    or C{upstreamError} (502 C{upstream-protocol}).
  - Responses are checked strictly
    (L{responseFrom<meshproxy.http2.headers.responseFrom>}): pseudo-header
    fields, connection-specific fields, values; the header list's size is
    bounded by C{SETTINGS_MAX_HEADER_LIST_SIZE} (C{client.maxHeaderBytes}),
    enforced by the h2 library while decoding. Server push is refused
    (C{SETTINGS_ENABLE_PUSH} 0).
  - Idle connections (no stream) expire after C{client.idleTimeout}; a
    pool closed (its endpoint left, or the router stops) closes its idle
    connections now and the others when their last stream ends.
  - CONNECT and protocol upgrades cannot go over HTTP/2 here: answered 501
    C{upstream-h2-upgrade}.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any

from h2.config import H2Configuration
from h2.connection import ConnectionState, H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    InformationalResponseReceived,
    RemoteSettingsChanged,
    ResponseReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
    WindowUpdated,
)
from h2.exceptions import H2Error, NoAvailableStreamIDError, ProtocolError
from h2.settings import SettingCodes
from twisted.internet.interfaces import IHandshakeListener, IPushProducer, ISSLTransport
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from zope.interface import implementer

from meshproxy.http.interfaces import IUpstreamConnection
from meshproxy.http.message import ProxyError, reasonPhrase
from meshproxy.http2.fast import CountedStreams, FastDecoder, PlainEncoder
from meshproxy.http2.fastpath import (
    FastData,
    FastEnded,
    FastReader,
    FastWindow,
    sendHeaders,
    sendQueuedData,
)
from meshproxy.http2.headers import (
    UpstreamResponseError,
    requestFields,
    responseFrom,
    upstreamTrailers,
)
from meshproxy.transport.connector import describeConnectFailure, describeHandshakeFailure

if TYPE_CHECKING:
    from collections.abc import Callable

    from twisted.internet.defer import Deferred
    from twisted.internet.interfaces import IAddress, IReactorTime
    from twisted.python.failure import Failure

    from meshproxy.config import ClientConfig
    from meshproxy.discovery.endpoints import Endpoint
    from meshproxy.http.interfaces import IExchange
    from meshproxy.http.message import Headers, Request
    from meshproxy.transport.connector import IConnector
    from meshproxy.transport.interfaces import IStreamTransport

__all__ = ["H2Pool", "H2UpstreamConnection", "H2UpstreamStream", "MAX_STREAMS_PER_CONNECTION"]

_log = Logger()

#: Streams meshproxy opens at most on one upstream connection, whatever the
#: upstream allows.
MAX_STREAMS_PER_CONNECTION = 256
#: Streams assumed allowed before the upstream's SETTINGS arrive (RFC 9113
#: 6.5.2 recommends at least 100).
_ASSUMED_STREAMS = 100
#: The window of each stream meshproxy reads a response on.
STREAM_WINDOW = 65535
_MAX_WINDOW = 2**31 - 1
_DEFAULT_WINDOW = 65535


class _ClientH2(CountedStreams, H2Connection):
    """
    The h2 library's client connection, which goes on carrying the streams
    a graceful GOAWAY lets finish (the library closes the whole connection
    on any GOAWAY), remembers fewer closed streams, and counts its open
    streams only when it matters (L{meshproxy.http2.fast}).
    """

    MAX_CLOSED_STREAMS = 1024

    def _receive_goaway_frame(self, frame: Any) -> Any:
        state = self.state_machine.state
        result = H2Connection._receive_goaway_frame(self, frame)
        if frame.error_code == 0 and state is not ConnectionState.CLOSED:
            # Streams up to its last stream id are processed and finish;
            # meshproxy itself opens no new stream on this connection.
            self.state_machine.state = state
        return result


def _connection(limits: ClientConfig) -> _ClientH2:
    h2 = _ClientH2(
        H2Configuration(
            client_side=True,
            header_encoding=None,
            # Responses are checked by responseFrom (a stream error, where
            # the library would fail the whole connection); requests are
            # written lowercase and clean by requestFields.
            validate_inbound_headers=False,
            normalize_inbound_headers=False,
            validate_outbound_headers=False,
            normalize_outbound_headers=False,
        )
    )
    h2.encoder = PlainEncoder()
    h2.decoder = FastDecoder()
    h2.local_settings.update(
        {
            SettingCodes.ENABLE_PUSH: 0,
            SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
            SettingCodes.MAX_HEADER_LIST_SIZE: limits.maxHeaderBytes,
            SettingCodes.MAX_CONCURRENT_STREAMS: 0,
        }
    )
    h2.decoder.max_header_list_size = limits.maxHeaderBytes
    h2.initiate_connection()
    window = min(MAX_STREAMS_PER_CONNECTION * STREAM_WINDOW, _MAX_WINDOW)
    h2.increment_flow_control_window(window - _DEFAULT_WINDOW)
    return h2


class _Waiter:
    """
    An exchange waiting for a stream of its pool (a connection being made,
    or every connection full); L{abandon} takes it out of the queue.
    """

    __slots__ = ("pool", "exchange")

    def __init__(self, pool: H2Pool, exchange: IExchange) -> None:
        self.pool = pool
        self.exchange: IExchange | None = exchange

    def abandon(self) -> None:
        """
        The exchange gave up (its try timed out, or it ended).
        """
        self.exchange = None
        try:
            self.pool.waiting.remove(self)
        except ValueError:
            pass


class H2Pool:
    """
    HTTP/2 connections to one endpoint, each carrying many streams. It has
    the face of L{Pool<meshproxy.http.client.Pool>} that the exchange, the
    bound name and the metrics use.

    @ivar endpoint: the L{Endpoint}.
    @ivar all: the open connections.
    @ivar waiting: the exchanges waiting for a stream.
    @ivar connecting: connection attempts under way.
    @ivar scheme: the C{:scheme} of requests (C{b"https"} over TLS).
    """

    def __init__(
        self,
        endpoint: Endpoint,
        *,
        clock: IReactorTime,
        connector: IConnector,
        limits: ClientConfig,
        idleTimeout: float = 60.0,
        maxConnections: int = 4,
        maxWaiting: int = 1000,
    ) -> None:
        """
        @param clock: gives the time, for idle expiry.
        @param connector: makes new connections (TCP, or TLS).
        @param limits: the router's L{ClientConfig<meshproxy.config.ClientConfig>}:
            bounds on responses.
        @param idleTimeout: seconds a connection without a stream is kept.
        @param maxConnections: connections kept at most to the endpoint.
        @param maxWaiting: exchanges waiting for a stream at most.
        """
        self.endpoint = endpoint
        self.limits = limits
        self.clock = clock
        self.connector = connector
        self.idleTimeout = idleTimeout
        self.maxConnections = maxConnections
        self.maxWaiting = maxWaiting
        self.scheme = b"https" if getattr(connector, "secure", False) else b"http"
        self.all: list[H2UpstreamConnection] = []
        self.waiting: deque[_Waiter] = deque()
        self.connecting = 0
        self.closed = False

    @property
    def idle(self) -> list[H2UpstreamConnection]:
        """
        The connections that can take a stream now (a request given to the
        pool then waits for no connection).
        """
        return [c for c in self.all if c.available()]

    def acquire(self, exchange: IExchange) -> None:
        """
        Give C{exchange} a stream: on a connection with room, or once one
        is made or has room.
        """
        request = exchange.request
        if request.upgrade or request.method == b"CONNECT":
            exchange.fail(
                ProxyError(
                    501,
                    "upstream-h2-upgrade",
                    "CONNECT and protocol upgrades are not carried to HTTP/2 upstreams.",
                )
            )
            return
        for conn in self.all:
            if conn.available():
                conn.openStream(exchange)
                return
        if len(self.waiting) >= self.maxWaiting:
            exchange.connectFailed("has too many requests waiting for a stream", True)
            return
        waiter = _Waiter(self, exchange)
        exchange.connecting = waiter
        self.waiting.append(waiter)
        self._grow()

    def _grow(self) -> None:
        """
        Open another connection if requests wait for more than the
        connections being made will carry.
        """
        if self.closed or not self.waiting:
            return
        unsettled = self.connecting + sum([1 for c in self.all if not c.settled])
        if unsettled * _ASSUMED_STREAMS >= len(self.waiting):
            return
        if len(self.all) + self.connecting >= self.maxConnections:
            return
        self.connecting += 1
        d: Deferred[Any] = self.connector.connect(self.endpoint, _H2Factory(self))
        d.addCallbacks(self._connected, self._failed)

    def _connected(self, conn: H2UpstreamConnection) -> None:
        if not conn.handshaking:
            self.ready(conn)
        # (else ready, or handshakeFailed, once the TLS handshake ends)

    def _failed(self, failure: Failure) -> None:
        self.connecting -= 1
        self._failWaiting(describeConnectFailure(failure, self.connector.timeout), False)

    def ready(self, conn: H2UpstreamConnection) -> None:
        """
        A new connection can carry streams: to the requests waiting.
        """
        self.connecting -= 1
        self.all.append(conn)
        conn.idleSince = self.clock.seconds()
        if self.closed:
            conn.close()
            return
        self.serve()

    def handshakeFailed(self, reason: Failure) -> None:
        """
        A new connection's TLS handshake did not verify the upstream.
        """
        self.connecting -= 1
        self._failWaiting(describeHandshakeFailure(reason), True)

    def _failWaiting(self, why: str, tls: bool) -> None:
        """
        A connection could not be made: the requests waiting that no other
        connection will carry fail (a connection failure, retried). While a
        connection is open, they wait for its streams (within their
        timeouts).
        """
        for conn in self.all:
            if not conn.goingAway and not conn.closed:
                return
        capacity = self.connecting * _ASSUMED_STREAMS
        waiting = self.waiting
        while len(waiting) > capacity:
            waiter = waiting.pop()
            exchange, waiter.exchange = waiter.exchange, None
            if exchange is not None:
                exchange.connecting = None
                exchange.connectFailed(why, True, tls)
                exchange.flush()

    def serve(self) -> None:
        """
        Give the waiting requests the streams the connections have room for,
        and open another connection if more are needed.
        """
        waiting = self.waiting
        while waiting:
            conn = None
            for c in self.all:
                if c.available():
                    conn = c
                    break
            if conn is None:
                break
            waiter = waiting.popleft()
            exchange, waiter.exchange = waiter.exchange, None
            if exchange is None:
                continue
            exchange.connecting = None
            conn.openStream(exchange)
            exchange.flush()
        self._grow()

    def discard(self, conn: H2UpstreamConnection) -> None:
        """
        Forget C{conn} (it is closing); requests waiting may need another.
        """
        try:
            self.all.remove(conn)
        except ValueError:
            return
        self._grow()

    def expire(self, now: float) -> None:
        """
        Close connections without a stream for longer than the idle
        timeout.
        """
        limit = now - self.idleTimeout
        for conn in list(self.all):
            if not conn.streams and conn.idleSince <= limit:
                conn.close()

    def close(self) -> None:
        """
        The endpoint left the set (or the router stops): close idle
        connections now, busy ones when their last stream ends.
        """
        self.closed = True
        for conn in list(self.all):
            conn.goingAway = True
            if not conn.streams:
                conn.close()
        while self.waiting:
            waiter = self.waiting.popleft()
            exchange, waiter.exchange = waiter.exchange, None
            if exchange is not None:
                exchange.connecting = None
                exchange.connectFailed("left the endpoint set", True)
                exchange.flush()


class _H2Factory(Factory):
    noisy = False

    def __init__(self, pool: H2Pool) -> None:
        self.pool = pool

    def buildProtocol(self, addr: IAddress | None) -> H2UpstreamConnection:
        p = H2UpstreamConnection(self.pool)
        p.factory = self
        return p


@implementer(IHandshakeListener, IPushProducer)
class H2UpstreamConnection(Protocol):
    """
    One HTTP/2 connection to an upstream endpoint, carrying many streams.

    As an L{IPushProducer} it is registered on its transport: while the
    transport is full, the request bodies of its streams are paused.

    @ivar pool: the L{H2Pool}.
    @ivar h2: the h2 library's connection.
    @ivar reader: reads the upstream's frames, the commonest by the fast
        path (L{meshproxy.http2.fastpath}).
    @ivar streams: the streams under way, by id.
    @ivar goingAway: whether it takes no new stream (a GOAWAY came, the
        pool closes, or it failed).
    @ivar reused: whether it already carried a whole response.
    """

    transport: IStreamTransport

    def __init__(self, pool: H2Pool) -> None:
        self.pool = pool
        self.h2 = _connection(pool.limits)
        self.reader = FastReader(self.h2)
        self.streams: dict[int, H2UpstreamStream] = {}
        self.goingAway = False
        self.closed = False
        self.reused = False
        self.writePaused = False
        self.idleSince = 0.0
        self.handshaking = False
        # Whether the upstream's first SETTINGS came: until then one stream
        # at most (its limit may be lower than a burst of requests).
        self.settled = False
        self._gotBytes = False
        self._touched: dict[H2UpstreamStream, None] | None = None
        self._handlers: dict[type, Callable[[Any], None]] = {
            FastData: self._dataReceived,
            FastEnded: self._streamEnded,
            FastWindow: self._windowUpdated,
            ResponseReceived: self._responseReceived,
            InformationalResponseReceived: self._informational,
            DataReceived: self._dataReceived,
            TrailersReceived: self._trailersReceived,
            StreamEnded: self._streamEnded,
            StreamReset: self._streamReset,
            WindowUpdated: self._windowUpdated,
            RemoteSettingsChanged: self._settingsChanged,
            ConnectionTerminated: self._terminated,
        }

    def connectionMade(self) -> None:
        self.handshaking = ISSLTransport.providedBy(self.transport)
        setNoDelay = getattr(self.transport, "setTcpNoDelay", None)
        if setNoDelay is not None:
            setNoDelay(True)
        self.transport.registerProducer(self, True)
        self.flush()

    def handshakeCompleted(self) -> None:
        """
        See L{IHandshakeListener}: the upstream's certificate was verified.
        """
        if self.handshaking:
            self.handshaking = False
            self.pool.ready(self)

    # -- streams ------------------------------------------------------------

    def available(self) -> bool:
        """
        Whether this connection can take another stream now.
        """
        if self.goingAway or self.closed or self.handshaking:
            return False
        if not self.settled:
            return not self.streams
        limit = self.h2.remote_settings.max_concurrent_streams
        if limit > MAX_STREAMS_PER_CONNECTION:
            limit = MAX_STREAMS_PER_CONNECTION
        return len(self.streams) < limit

    def openStream(self, exchange: IExchange) -> None:
        """
        Carry C{exchange}'s try on a new stream: the exchange writes its
        request there.
        """
        try:
            sid = self.h2.get_next_available_stream_id()
        except NoAvailableStreamIDError:
            # Every stream id was used (2**31 streams): the connection takes
            # no more, and closes once its streams are over.
            self.goingAway = True
            pool = self.pool
            pool.discard(self)
            if not self.streams:
                self.close()
            pool.acquire(exchange)
            return
        stream = H2UpstreamStream(self, sid, exchange)
        self.streams[sid] = stream
        exchange.connected(stream)
        self.flush()

    def streamDone(self, stream: H2UpstreamStream) -> None:
        """
        C{stream} is over for meshproxy: forget it; the pool may give its
        place to a waiting request, or close this connection.
        """
        sid = stream.streamId
        if self.streams.pop(sid, None) is None:
            return
        self.h2.forgetClosed(sid)
        if not self.streams:
            # (what the h2 library remembers of the streams, while idle)
            self.h2.pruneClosed()
            self.idleSince = self.pool.clock.seconds()
            if self.goingAway:
                self.close()
                return
        if not self.closed:
            self.pool.serve()

    def flush(self) -> None:
        """
        Send what the h2 library queued.
        """
        if self.closed:
            return
        data = self.h2.data_to_send()
        if data:
            self.transport.write(data)

    # -- from the upstream --------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self.closed:
            return
        self._gotBytes = True
        try:
            events = self.reader.receive(data)
        except ProtocolError as e:
            self._failed("sent an invalid HTTP/2 frame (%s)" % (type(e).__name__,))
            return
        except Exception:
            _log.failure("unexpected error reading an HTTP/2 upstream")
            self._failed("sent something meshproxy could not read")
            return
        touched = self._touched = {}
        handlers = self._handlers
        for event in events:
            handler = handlers.get(type(event))
            if handler is not None:
                handler(event)
                if self.closed:
                    break
        self._touched = None
        self.flush()
        for stream in touched:
            exchange = stream.exchange
            if exchange is not None:
                exchange.flush()

    def _touch(self, stream: H2UpstreamStream) -> None:
        touched = self._touched
        if touched is not None:
            touched[stream] = None

    def _responseReceived(self, event: ResponseReceived) -> None:
        stream = self.streams.get(event.stream_id)
        if stream is not None:
            self._touch(stream)
            stream.headReceived(event.headers, event.stream_ended is not None)

    def _informational(self, event: InformationalResponseReceived) -> None:
        stream = self.streams.get(event.stream_id)
        if stream is not None:
            self._touch(stream)
            stream.interimReceived(event.headers)

    def _dataReceived(self, event: DataReceived | FastData) -> None:
        length: int = event.flow_controlled_length
        stream = self.streams.get(event.stream_id)
        if stream is None:
            # (a stream meshproxy forgot: the connection's window only)
            self.h2.acknowledge_received_data(length, event.stream_id)
            return
        self._touch(stream)
        stream.dataReceived(event.data, length)

    def _trailersReceived(self, event: TrailersReceived) -> None:
        stream = self.streams.get(event.stream_id)
        if stream is not None:
            self._touch(stream)
            stream.trailersReceived(event.headers)

    def _streamEnded(self, event: StreamEnded | FastEnded) -> None:
        stream = self.streams.get(event.stream_id)
        if stream is not None:
            self._touch(stream)
            stream.remoteEnd()

    def _streamReset(self, event: StreamReset) -> None:
        stream = self.streams.get(event.stream_id)
        if stream is not None:
            self._touch(stream)
            stream.resetByPeer(event.error_code)

    def _windowUpdated(self, event: WindowUpdated | FastWindow) -> None:
        if event.stream_id:
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream.push()
        else:
            self._pushAll()

    def _settingsChanged(self, event: RemoteSettingsChanged) -> None:
        changed = event.changed_settings
        if SettingCodes.INITIAL_WINDOW_SIZE in changed:
            self._pushAll()
        if not self.settled or SettingCodes.MAX_CONCURRENT_STREAMS in changed:
            self.settled = True
            if not self.closed:
                self.pool.serve()

    def _terminated(self, event: ConnectionTerminated) -> None:
        """
        The upstream's GOAWAY: streams above its last stream id were not
        processed (retried, whatever their method); the others finish when
        it is graceful, and are lost otherwise.
        """
        self.goingAway = True
        last = event.last_stream_id
        graceful = event.error_code == ErrorCodes.NO_ERROR
        for sid, stream in sorted(self.streams.items()):
            if last is None or sid > last:
                stream.notProcessed("sent GOAWAY before processing the request")
            elif not graceful:
                stream.lost("closed the connection (GOAWAY %s)" % (_codeName(event.error_code),))
        if not graceful or not self.streams:
            self.close()
        else:
            self.pool.discard(self)
            self.pool.serve()

    def _pushAll(self) -> None:
        for stream in list(self.streams.values()):
            stream.push()

    # -- the transport as a consumer -------------------------------------------

    def pauseProducing(self) -> None:
        """
        The transport is full: pause the request bodies.
        """
        self.writePaused = True
        for stream in list(self.streams.values()):
            stream.updateBodyProducer()

    def resumeProducing(self) -> None:
        """
        The transport has room again.
        """
        self.writePaused = False
        for stream in list(self.streams.values()):
            stream.updateBodyProducer()

    def stopProducing(self) -> None:
        """
        The transport is gone: L{connectionLost} follows.
        """

    # -- ends ---------------------------------------------------------------

    def _failed(self, why: str) -> None:
        """
        The upstream broke the protocol: every stream fails
        (C{upstream-protocol}), and the connection closes with the GOAWAY
        the h2 library made.
        """
        self.goingAway = True
        for stream in list(self.streams.values()):
            stream.broken(why)
        self.close()

    def close(self) -> None:
        """
        Close the connection (a GOAWAY first when possible).
        """
        if self.closed:
            return
        self.goingAway = True
        try:
            self.h2.close_connection()
        except H2Error:
            pass
        self.flush()
        self.closed = True
        self.pool.discard(self)
        self.transport.loseConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.closed = True
        self.goingAway = True
        pool = self.pool
        if self.handshaking:
            self.handshaking = False
            pool.handshakeFailed(reason)
            return
        pool.discard(self)
        why = reason.getErrorMessage()
        for stream in list(self.streams.values()):
            stream.lost(why, stale=self.reused and not stream.gotBytes)
        self.streams.clear()


def _codeName(code: Any) -> str:
    return getattr(code, "name", str(code))


@implementer(IUpstreamConnection, IPushProducer)
class H2UpstreamStream:
    """
    One stream of an L{H2UpstreamConnection}: one try of an exchange, as
    the exchange sees its upstream connection.

    As an L{IPushProducer} it is what a slow client pauses: while paused,
    the response's DATA is not given back to the upstream (its window
    closes).

    @ivar connection: the L{H2UpstreamConnection}.
    @ivar streamId: the stream's id.
    @ivar exchange: the exchange, or L{None} once it let go.
    @ivar gotBytes: whether any of the response came.
    """

    __slots__ = (
        "connection",
        "streamId",
        "exchange",
        "gotBytes",
        "producer",
        "_out",
        "_outSize",
        "_ending",
        "_endTrailers",
        "_localEnded",
        "_remoteEnded",
        "_headSeen",
        "_interim",
        "_trailers",
        "_unacked",
        "_paused",
        "_bodyProducer",
        "_bodyPaused",
        "_done",
    )

    def __init__(self, connection: H2UpstreamConnection, streamId: int, exchange: IExchange):
        self.connection = connection
        self.streamId = streamId
        self.exchange: IExchange | None = exchange
        self.gotBytes = False
        self.producer = self
        self._out: deque[bytes | memoryview] = deque()
        self._outSize = 0
        self._ending = False
        self._endTrailers: Headers | None = None
        self._localEnded = False
        self._remoteEnded = False
        self._headSeen = False
        self._interim = 0
        self._trailers: Headers | None = None
        self._unacked = 0
        self._paused = False
        self._bodyProducer: IPushProducer | None = None
        self._bodyPaused = False
        self._done = False

    @property
    def reused(self) -> bool:
        """
        See L{IUpstreamConnection.reused}.
        """
        return self.connection.reused

    @property
    def transport(self) -> IStreamTransport:
        """
        See L{IUpstreamConnection.transport} (a stream is never a tunnel).
        """
        return self.connection.transport

    # -- the request (IRequestWriter) -------------------------------------------

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
        See L{IRequestWriter.writeHead}: a HEADERS frame (ending the stream
        for a request without a body), then the held body as DATA.
        """
        fields = requestFields(
            request,
            scheme=self.connection.pool.scheme,
            peer=peer,
            clientScheme=scheme,
            forwarded=forwarded,
            deadline=deadline,
            override=override,
            clientCert=clientCert,
            trace=trace,
        )
        ended = not request.hasBody
        try:
            sendHeaders(self.connection.h2, self.streamId, fields, ended)
        except H2Error:
            self._sendFailed()
            return
        if ended:
            self._localEnded = True
        elif body:
            for piece in body:
                if piece:
                    self._out.append(piece)
                    self._outSize += len(piece)
            self.push()
        self.connection.flush()

    def writeBody(self, data: bytes) -> None:
        """
        See L{IRequestWriter.writeBody}: DATA as the upstream's windows
        allow; what waits pauses the client.
        """
        if self._localEnded or not data:
            return
        self._out.append(data)
        self._outSize += len(data)
        self.push()
        self.connection.flush()

    def writeEnd(self, trailers: Headers | None) -> None:
        """
        See L{IRequestWriter.writeEnd}: the end of the stream, with a
        trailers HEADERS frame when there are trailers.
        """
        if self._localEnded:
            return
        self._ending = True
        if trailers:
            self._endTrailers = [(n.lower(), v) for n, v in trailers]
        self.push()
        self.connection.flush()

    def push(self) -> None:
        """
        Send the waiting request body as far as the windows allow.
        """
        if self._localEnded or self._done:
            return
        h2 = self.connection.h2
        sid = self.streamId
        out = self._out
        try:
            sent, ended = sendQueuedData(
                h2, sid, out, self._ending and self._endTrailers is None
            )
            self._outSize -= sent
            if ended:
                self._localEnded = True
            elif not out and self._ending:
                trailers = self._endTrailers
                if trailers is not None:
                    h2.send_headers(sid, trailers, end_stream=True)
                else:
                    h2.end_stream(sid)
                self._localEnded = True
        except H2Error:
            self._sendFailed()
            return
        self.updateBodyProducer()

    def updateBodyProducer(self) -> None:
        """
        Pause the client's reading while request body bytes wait for the
        upstream's window or the connection's transport is full.
        """
        producer = self._bodyProducer
        if producer is None:
            return
        pause = bool(self._outSize) or self.connection.writePaused
        if pause is not self._bodyPaused:
            self._bodyPaused = pause
            if pause:
                producer.pauseProducing()
            else:
                producer.resumeProducing()

    def sendBodyFrom(self, producer: IPushProducer) -> None:
        """
        See L{IUpstreamConnection.sendBodyFrom}.
        """
        self._bodyProducer = producer
        self._bodyPaused = False
        self.updateBodyProducer()

    def bodySent(self) -> None:
        """
        See L{IUpstreamConnection.bodySent}.
        """
        producer, self._bodyProducer = self._bodyProducer, None
        if producer is not None and self._bodyPaused:
            self._bodyPaused = False
            producer.resumeProducing()

    # -- the response ------------------------------------------------------

    def interimReceived(self, headers: Headers) -> None:
        """
        An interim (1xx) response.
        """
        exchange = self.exchange
        if exchange is None:
            return
        self.gotBytes = True
        self._interim += 1
        limits = self.connection.pool.limits
        if self._interim > limits.maxInformational:
            self.broken("sent more than %d interim (1xx) responses" % (limits.maxInformational,))
            return
        try:
            status, fields, _ = responseFrom(headers, limits.maxHeaders)
        except UpstreamResponseError as e:
            self.broken(str(e))
            return
        exchange.interimResponse(status, reasonPhrase(status), fields)

    def headReceived(self, headers: Headers, ended: bool) -> None:
        """
        The response head (ending the stream when C{ended}).
        """
        exchange = self.exchange
        if exchange is None:
            return
        self.gotBytes = True
        self._headSeen = True
        try:
            status, fields, contentLength = responseFrom(
                headers, self.connection.pool.limits.maxHeaders
            )
        except UpstreamResponseError as e:
            self.broken(str(e))
            return
        if not exchange.responseHead(status, reasonPhrase(status), fields, contentLength, False):
            # Dropped for a retry: the exchange reset this stream.
            return
        if self.exchange is None:
            return
        if ended:
            self.remoteEnd()
        else:
            exchange.responseStreaming(self)

    def dataReceived(self, data: bytes, flowLength: int) -> None:
        """
        A DATA frame's bytes: to the exchange, then given back to the
        upstream unless the client is slow (paused).
        """
        exchange = self.exchange
        self._unacked += flowLength
        if exchange is not None:
            self.gotBytes = True
            if data:
                exchange.responseBody(data)
        if not self._paused or self.exchange is None:
            self._giveBack()

    def trailersReceived(self, headers: Headers) -> None:
        """
        The response's trailer fields (the upstream ends the stream with
        them).
        """
        exchange = self.exchange
        if exchange is None:
            return
        dropped: list[bytes] = []
        try:
            trailers = upstreamTrailers(headers, self.connection.pool.limits.maxHeaders, dropped)
        except UpstreamResponseError as e:
            self.broken(str(e))
            return
        for _ in dropped:
            exchange.router.countError("trailer-dropped")
        self._trailers = trailers or None

    def remoteEnd(self) -> None:
        """
        The upstream ended the stream: the response is complete.
        """
        self._remoteEnded = True
        exchange = self.exchange
        if exchange is None:
            return
        if not self._headSeen:
            self.broken("ended the stream without a response")
            return
        self.connection.reused = True
        exchange.responseComplete(self._trailers, True)

    def resetByPeer(self, code: Any) -> None:
        """
        The upstream reset the stream.
        """
        self._remoteEnded = self._localEnded = True
        exchange = self.exchange
        if exchange is None:
            self._forget()
            return
        if code == ErrorCodes.REFUSED_STREAM and not self._headSeen:
            self.notProcessed("refused the stream (REFUSED_STREAM)")
            return
        self.lost("reset the stream (%s)" % (_codeName(code),))

    # -- as the exchange's upstream connection ------------------------------

    def responseDone(self, reusable: bool) -> None:
        """
        See L{IUpstreamConnection.responseDone}: the stream is over for
        the exchange (reset if the request is still being sent).
        """
        self.exchange = None
        self._reset(ErrorCodes.CANCEL)

    def stopStreaming(self) -> None:
        """
        See L{IUpstreamConnection.stopStreaming}.
        """
        if self._paused:
            self.resumeProducing()

    def abort(self) -> None:
        """
        See L{IUpstreamConnection.abort}: reset the stream; the other
        streams of the connection go on.
        """
        self.exchange = None
        self._reset(ErrorCodes.CANCEL)

    def startTunnel(self, peer: IStreamTransport) -> None:
        """
        See L{IUpstreamConnection.startTunnel}: never over HTTP/2 (the
        pool refuses upgrades).
        """
        self.abort()
        peer.loseConnection()

    # -- the stream as the producer a slow client pauses ----------------------

    def pauseProducing(self) -> None:
        """
        The client is slow: hold the window of what the upstream sends.
        """
        self._paused = True

    def resumeProducing(self) -> None:
        """
        The client takes more: give the held window back.
        """
        self._paused = False
        if self._unacked:
            self._giveBack()
            self.connection.flush()

    def stopProducing(self) -> None:
        """
        Nothing to stop (the exchange aborts the stream if needed).
        """

    def _giveBack(self) -> None:
        unacked = self._unacked
        if unacked:
            self._unacked = 0
            try:
                self.connection.h2.acknowledge_received_data(unacked, self.streamId)
            except H2Error:
                pass

    # -- ends -------------------------------------------------------------

    def notProcessed(self, why: str) -> None:
        """
        The upstream did not process the request (a GOAWAY below it, or
        REFUSED_STREAM): sent again on a fresh stream, whatever the method
        (L{IExchange.notProcessed}).
        """
        exchange = self.exchange
        self._dropped()
        if exchange is not None:
            exchange.notProcessed(why)

    def lost(self, why: str, stale: bool = False) -> None:
        """
        The stream or its connection failed: C{upstreamLost}.
        """
        exchange = self.exchange
        self._dropped()
        if exchange is not None:
            exchange.upstreamLost(why, stale)

    def broken(self, why: str) -> None:
        """
        The upstream's answer is not acceptable: reset the stream
        (C{PROTOCOL_ERROR}) and fail the try as C{upstream-protocol}.
        """
        exchange = self.exchange
        self.exchange = None
        self._reset(ErrorCodes.PROTOCOL_ERROR)
        if exchange is not None:
            exchange.upstreamError(why)

    def _sendFailed(self) -> None:
        """
        The h2 library refused to send on this stream (the connection is
        closing): the request was not processed, and goes again
        (L{IExchange.notProcessed}).
        """
        exchange = self.exchange
        self.exchange = None
        self._reset(ErrorCodes.CANCEL)
        if exchange is not None:
            # (later: the exchange is in the middle of writing)
            exchange.router.clock.callLater(0, self._notSent, exchange)

    def _notSent(self, exchange: IExchange) -> None:
        if exchange.upstream is self:  # type: ignore[attr-defined]  # (still this try)
            exchange.notProcessed("closed the connection before the request")
            exchange.flush()

    def _dropped(self) -> None:
        self.exchange = None
        self._forget()

    def _reset(self, code: ErrorCodes) -> None:
        if self._done:
            return
        connection = self.connection
        if not connection.closed and not (self._localEnded and self._remoteEnded):
            try:
                connection.h2.reset_stream(self.streamId, code)
            except H2Error:
                pass
            connection.flush()
        self._forget()

    def _forget(self) -> None:
        if self._done:
            return
        self._done = True
        self._out.clear()
        self._outSize = 0
        producer, self._bodyProducer = self._bodyProducer, None
        if producer is not None and self._bodyPaused:
            self._bodyPaused = False
            producer.resumeProducing()
        unacked, self._unacked = self._unacked, 0
        connection = self.connection
        if unacked and not connection.closed:
            try:
                connection.h2.acknowledge_received_data(unacked, self.streamId)
            except H2Error:
                pass
        connection.streamDone(self)


class AutoPool:
    """
    Connections to one TLS endpoint whose protocol is learnt by ALPN
    (C{upstreamProtocol: auto}): the first connection offers C{h2} and
    C{http/1.1}, and what the upstream chooses is used for the endpoint
    from then on, through an L{H2Pool} or an HTTP/1.1
    L{Pool<meshproxy.http.client.Pool>} (which then offers both too, and
    is answered the same). It has the same face as those pools.

    @ivar learnt: C{"h2"}, C{"http/1.1"}, or L{None} before the first
        handshake.
    """

    def __init__(self, h1: Any, h2: H2Pool) -> None:
        """
        @param h1: the endpoint's HTTP/1.1 L{Pool<meshproxy.http.client.Pool>}.
        @param h2: its L{H2Pool}, with the same connector.
        """
        self.h1 = h1
        self.h2 = h2
        self.endpoint = h2.endpoint
        self.learnt: str | None = None
        self.waiting: deque[_Waiter] = deque()
        self._probing = False

    @property
    def all(self) -> list[Any]:
        """
        The open connections, of either protocol.
        """
        return [*self.h1.all, *self.h2.all]

    @property
    def idle(self) -> list[Any]:
        """
        The connections that can take a request now.
        """
        return [*self.h1.idle, *self.h2.idle]

    @property
    def closed(self) -> bool:
        return bool(self.h2.closed)

    def acquire(self, exchange: IExchange) -> None:
        """
        Give C{exchange} a connection of the learnt protocol; before it is
        known, wait for the first handshake.
        """
        learnt = self.learnt
        if learnt == "h2":
            self.h2.acquire(exchange)
            return
        if learnt is not None:
            self.h1.acquire(exchange)
            return
        if len(self.waiting) >= self.h2.maxWaiting:
            exchange.connectFailed("has too many requests waiting for a stream", True)
            return
        waiter = _Waiter(self, exchange)  # type: ignore[arg-type]  # (its waiting queue)
        exchange.connecting = waiter
        self.waiting.append(waiter)
        if not self._probing:
            self._probing = True
            d: Deferred[Any] = self.h2.connector.connect(self.endpoint, _AutoFactory(self))
            d.addErrback(self._probeFailed)

    def _probeFailed(self, failure: Failure) -> None:
        self._probing = False
        self._failWaiting(describeConnectFailure(failure, self.h2.connector.timeout), False)

    def handshakeFailed(self, reason: Failure) -> None:
        """
        The first connection's TLS handshake failed.
        """
        self._probing = False
        self._failWaiting(describeHandshakeFailure(reason), True)

    def _failWaiting(self, why: str, tls: bool) -> None:
        while self.waiting:
            waiter = self.waiting.popleft()
            exchange, waiter.exchange = waiter.exchange, None
            if exchange is not None:
                exchange.connecting = None
                exchange.connectFailed(why, True, tls)
                exchange.flush()

    def chosen(self, probe: _AutoProtocol, protocol: bytes | None) -> Protocol:
        """
        The first handshake is over: learn the protocol, and make the
        connection's protocol of it.

        @return: the protocol that now carries the connection.
        """
        self._probing = False
        waiting, self.waiting = self.waiting, deque()
        transport = probe.transport
        if protocol == b"h2":
            self.learnt = "h2"
            h2pool = self.h2
            conn: Any = H2UpstreamConnection(h2pool)
            conn.makeConnection(transport)
            h2pool.connecting += 1
            conn.handshaking = False
            h2pool.ready(conn)
        else:
            from meshproxy.http.client import UpstreamProtocol

            self.learnt = "http/1.1"
            h1pool = self.h1
            conn = UpstreamProtocol(h1pool)
            conn.makeConnection(transport)
            conn.handshaking = False
            h1pool.connecting += 1
            h1pool.opened(conn)
            h1pool.release(conn)
        for waiter in waiting:
            exchange, waiter.exchange = waiter.exchange, None
            if exchange is not None:
                exchange.connecting = None
                self.acquire(exchange)
                exchange.flush()
        return conn

    def discard(self, conn: Any) -> None:
        self.h1.discard(conn)
        self.h2.discard(conn)

    def expire(self, now: float) -> None:
        """
        Close idle connections of either protocol.
        """
        self.h1.expire(now)
        self.h2.expire(now)

    def close(self) -> None:
        """
        The endpoint left the set: close both pools.
        """
        self.h1.close()
        self.h2.close()
        self._failWaiting("left the endpoint set", False)


class _AutoFactory(Factory):
    noisy = False

    def __init__(self, pool: AutoPool) -> None:
        self.pool = pool

    def buildProtocol(self, addr: IAddress | None) -> _AutoProtocol:
        p = _AutoProtocol(self.pool)
        p.factory = self
        return p


@implementer(IHandshakeListener)
class _AutoProtocol(Protocol):
    """
    The first TLS connection of an L{AutoPool}: once its handshake tells
    which protocol the upstream chose, it carries the bytes of that
    protocol's connection.
    """

    transport: IStreamTransport

    def __init__(self, pool: AutoPool) -> None:
        self.pool = pool
        self.real: Protocol | None = None

    def handshakeCompleted(self) -> None:
        negotiated = getattr(self.transport, "negotiatedProtocol", None)
        self.real = self.pool.chosen(self, negotiated)

    def dataReceived(self, data: bytes) -> None:
        real = self.real
        if real is not None:
            real.dataReceived(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        real = self.real
        if real is not None:
            real.connectionLost(reason)
        else:
            self.pool.handshakeFailed(reason)
