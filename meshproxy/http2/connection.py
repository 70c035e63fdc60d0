"""
An HTTP/2 client connection of an HTTP router: the C{h2} library's state
machine driven by the connection's bytes, each stream an exchange.

L{ServerProtocol<meshproxy.http.server.ServerProtocol>} reads a
connection's first bytes; when they are the HTTP/2 preface (h2c with prior
knowledge on a plain listener, or after ALPN chose C{h2} under TLS), it
hands the connection to an L{H2ServerConnection} and passes it every byte
from then on.

What the connection does, and why:

  - Settings: it announces C{http2.maxConcurrentStreams},
    C{initialWindowSize}, C{maxFrameSize} and C{maxHeaderListSize} (the h2
    library then enforces the frame size and the decoded header list), and
    opens the connection's own window to the sum of the streams' windows,
    so that streams holding their window never stall the others.
  - Streams over the concurrent limit (or opened after a GOAWAY) are
    refused with C{REFUSED_STREAM}: the h2 library would close the whole
    connection instead, so its own limit is set past meshproxy's.
  - A stream's exchange starts at the end of the read that brought its
    head: a stream reset in the same read never starts one.
  - Errors: a frame the h2 library refuses ends the connection with the
    GOAWAY it made (C{PROTOCOL_ERROR}, C{FLOW_CONTROL_ERROR}, ...); a
    request refused by meshproxy's own checks is answered on its stream
    as an HTTP/1 request would be (400, 413, 414, 431, ...), and the other
    streams go on.
  - Floods (see L{meshproxy.http2.frames}) end the connection with a
    GOAWAY (C{ENHANCE_YOUR_CALM}), counted under their reason.
  - Drain (shutdown, a reload removing the router): a GOAWAY with the last
    stream id, so that clients retry later streams elsewhere; the streams
    under way finish, then the connection closes. The h2 library allows
    nothing after a GOAWAY of its own (python-hyper/h2#1181), so this one
    is written directly.
  - Timeouts: C{server.idleTimeout} with no stream open (a GOAWAY, then
    close); C{server.headerTimeout} for a header block that does not
    complete; C{server.bodyTimeout} for a stream's request body that
    stalls while meshproxy reads it (408 on the stream, or a reset); and a
    response that waits for the client's window without progress for
    C{server.idleTimeout} (a reset).
  - Back-pressure: the connection is the producer of its client's
    transport; while that transport is full, it reads no more of the
    client (whose PINGs and SETTINGS would add more to write) and pauses
    every upstream a response streams from.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    RemoteSettingsChanged,
    RequestReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
    WindowUpdated,
)
from h2.exceptions import DenialOfServiceError, FlowControlError, FrameTooLargeError, ProtocolError
from h2.settings import SettingCodes, Settings
from hyperframe.frame import GoAwayFrame
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from zope.interface import implementer

from meshproxy.http.message import ProxyError
from meshproxy.http2.fast import CountedStreams, FastDecoder, PlainEncoder
from meshproxy.http2.fastpath import (
    FastData,
    FastEnded,
    FastReader,
    FastRequest,
    FastWindow,
    acknowledge,
)
from meshproxy.http2.frames import FLOOD_REFUSED, FLOOD_RESET, FloodGuard, FloodLimits, FrameScanner
from meshproxy.http2.headers import RequestMemo, ResponseMemo
from meshproxy.http2.stream import PENDING, H2Stream

if TYPE_CHECKING:
    from collections.abc import Callable

    from twisted.internet.interfaces import IDelayedCall
    from twisted.python.failure import Failure

    from meshproxy.config import Http2Config
    from meshproxy.http.server import ServerProtocol

__all__ = ["H2ServerConnection"]

_log = Logger()

#: The largest flow-control window (RFC 9113 6.9.1).
_MAX_WINDOW = 2**31 - 1
#: The connection window every HTTP/2 connection starts with.
_DEFAULT_WINDOW = 65535


class _H2Connection(CountedStreams, H2Connection):
    """
    The h2 library's server connection, remembering fewer closed streams,
    counting its open streams only when it matters, with meshproxy's HPACK
    coding (L{meshproxy.http2.fast}).
    """

    #: Closed streams remembered (a late frame on a stream meshproxy reset
    #: is then a stream error, not a connection error): the library's 65536
    #: would keep megabytes per long-lived connection.
    MAX_CLOSED_STREAMS = 1024


def _connection(config: Http2Config, maxHeaderList: int) -> _H2Connection:
    """
    A server-side h2 connection announcing C{config}'s settings, its
    connection window opened to the sum of its streams' windows.
    """
    h2 = _H2Connection(
        H2Configuration(
            client_side=False,
            header_encoding=None,
            # meshproxy checks request fields itself, in the pass that
            # makes the request, and writes response fields lowercase and
            # without connection-specific ones (meshproxy.http2.headers).
            validate_inbound_headers=False,
            normalize_inbound_headers=False,
            validate_outbound_headers=False,
            normalize_outbound_headers=False,
        )
    )
    values = {
        SettingCodes.MAX_CONCURRENT_STREAMS: config.maxConcurrentStreams,
        SettingCodes.INITIAL_WINDOW_SIZE: config.initialWindowSize,
        SettingCodes.MAX_FRAME_SIZE: config.maxFrameSize,
        SettingCodes.MAX_HEADER_LIST_SIZE: maxHeaderList,
    }
    h2.encoder = PlainEncoder()
    h2.decoder = FastDecoder()
    h2.local_settings = Settings(client=False, initial_values=values)
    h2.max_inbound_frame_size = config.maxFrameSize
    h2.decoder.max_header_list_size = maxHeaderList
    h2.initiate_connection()
    # The h2 library answers a stream over its limit by closing the whole
    # connection; meshproxy refuses such streams itself (REFUSED_STREAM)
    # and keeps the library's limit out of the way, past its own. (The
    # settings sent above stand: these are the library's view only.)
    values[SettingCodes.MAX_CONCURRENT_STREAMS] = min(
        2 * config.maxConcurrentStreams + 100, _MAX_WINDOW
    )
    h2.local_settings = Settings(client=False, initial_values=values)
    window = min(config.maxConcurrentStreams * config.initialWindowSize, _MAX_WINDOW)
    if window > _DEFAULT_WINDOW:
        h2.increment_flow_control_window(window - _DEFAULT_WINDOW)
    return h2


def _protocolReason(error: ProtocolError) -> str:
    """
    The reason counted for a connection the h2 library refused.
    """
    if isinstance(error, DenialOfServiceError):
        # (a header list past SETTINGS_MAX_HEADER_LIST_SIZE)
        return "header-too-large"
    if isinstance(error, FlowControlError):
        return "h2-flow-control-error"
    if isinstance(error, FrameTooLargeError):
        return "h2-frame-too-large"
    return "h2-protocol-error"


@implementer(IPushProducer)
class H2ServerConnection:
    """
    One HTTP/2 client connection.

    @ivar server: the L{ServerProtocol} that read the preface: its router
        (swapped by a reload for new streams), its settings, the peer.
    @ivar transport: the client's transport.
    @ivar settings: the router's C{server} settings.
    @ivar h2: the h2 library's connection.
    @ivar reader: reads the client's frames, the commonest by the fast path
        (L{meshproxy.http2.fastpath}).
    @ivar requests: makes the streams' requests from their header lists.
    @ivar responses: makes the header lists (and blocks) of their responses.
    @ivar streams: the open streams, by id.
    @ivar writePaused: whether the client's transport is full.
    @ivar draining: whether a GOAWAY was sent for a drain.
    @ivar closed: whether the connection is closing or closed.
    """

    def __init__(
        self,
        server: ServerProtocol,
        config: Http2Config,
        *,
        limits: FloodLimits | None = None,
    ) -> None:
        """
        @param server: the connection's L{ServerProtocol}.
        @param config: the router's C{http2} settings.
        @param limits: the flood limits (their defaults when L{None}).
        """
        self.server = server
        self.transport = server.transport
        self.clock = server.clock
        self.settings = settings = server.settings
        self.maxStreams = config.maxConcurrentStreams
        maxHeaderList = config.maxHeaderListSize or settings.maxHeaderBytes
        self.h2 = _connection(config, maxHeaderList)
        self.reader = FastReader(self.h2)
        self.guard = FloodGuard(limits or FloodLimits(), config.maxConcurrentStreams, self.clock)
        self.scanner = FrameScanner(self.guard, maxHeaderList)
        self.requests = RequestMemo(settings)
        self.responses = ResponseMemo(self.h2.encoder)
        self.streams: dict[int, H2Stream] = {}
        # Streams whose response waits for the client's window (a dict as
        # an ordered set: the oldest are sent first).
        self._blocked: dict[H2Stream, None] = {}
        # Streams whose head came in the read being handled.
        self._toStart: list[H2Stream] = []
        self.writePaused = False
        self.draining = False
        self.closed = False
        # The last stream id of the GOAWAY sent for a drain.
        self._lastStreamId: int | None = None
        now = self._readTime = self.clock.seconds()
        self._idleSince: float | None = now
        self._headerSince: float | None = None
        self._timer: IDelayedCall | None = None
        self._send: Callable[[bytes], None] = server._send
        # The reactor's hook for work after the events of a poll (see
        # flushSoon), if it has one; whether a flush is queued there.
        self._afterEvents: Callable[[Callable[[], object]], bool] | None = getattr(
            self.clock, "callAfterEvents", None)
        self._flushQueued = False
        self._handlers: dict[type, Callable[[Any], None]] = {
            FastRequest: self._fastRequest,
            FastData: self._dataReceived,
            FastEnded: self._streamEnded,
            FastWindow: self._windowUpdated,
            RequestReceived: self._requestReceived,
            DataReceived: self._dataReceived,
            TrailersReceived: self._trailersReceived,
            StreamEnded: self._streamEnded,
            StreamReset: self._streamReset,
            WindowUpdated: self._windowUpdated,
            RemoteSettingsChanged: self._settingsChanged,
            ConnectionTerminated: self._terminated,
        }
        self.transport.registerProducer(self, True)
        self._setDeadline(now + settings.idleTimeout)
        self.flush()

    # -- what the streams use ---------------------------------------------

    def now(self) -> float:
        """
        The time on the connection's clock.
        """
        return self.clock.seconds()

    def flush(self) -> None:
        """
        Send what the h2 library has to send.
        """
        data = self.h2.data_to_send()
        if data and not self.closed:
            self._send(data)

    def flushSoon(self) -> None:
        """
        Send what the h2 library has to send once the reactor has handled
        the events of this poll (L{MeshReactor.callAfterEvents
        <meshproxy.reactor.MeshReactor.callAfterEvents>}): the responses
        that several upstream reads finish for this client go out in one
        write. At once on other reactors, or outside an event.
        """
        if self._flushQueued:
            return
        after = self._afterEvents
        if after is not None and after(self._queuedFlush):
            self._flushQueued = True
        else:
            self.flush()

    def _queuedFlush(self) -> None:
        self._flushQueued = False
        self.flush()

    def countError(self, reason: str) -> None:
        """
        Count an error made or seen by meshproxy on this connection.
        """
        self.server.router.countError(reason)

    def refused(self, error: ProxyError) -> None:
        """
        Summarise a request answered before it became an exchange.
        """
        server = self.server
        server.router.observer.refused(
            error.status, error.reason, server.peerHost, self.clock.seconds()
        )

    def watch(self, delay: float) -> None:
        """
        A stream has a deadline C{delay} seconds from now.
        """
        self._setDeadline(self.clock.seconds() + delay)

    def blocked(self, stream: H2Stream) -> None:
        """
        C{stream}'s response waits for the client's window.
        """
        if stream not in self._blocked:
            self._blocked[stream] = None
            self._setDeadline(self.clock.seconds() + self.settings.idleTimeout)

    def unblocked(self, stream: H2Stream) -> None:
        """
        C{stream}'s response no longer waits.
        """
        self._blocked.pop(stream, None)

    def streamClosed(self, stream: H2Stream) -> None:
        """
        C{stream} is over: forget it; close a draining connection after its
        last stream, and count idle time from the last one.
        """
        self._blocked.pop(stream, None)
        sid = stream.streamId
        if self.streams.pop(sid, None) is None:
            return
        self.h2.forgetClosed(sid)
        if self.streams:
            return
        if self.draining and not self.closed:
            self._close()
            return
        # (what the h2 library remembers of the streams, while idle)
        self.h2.pruneClosed()
        now = self.clock.seconds()
        self._idleSince = now
        self._setDeadline(now + self.settings.idleTimeout)

    # -- from the client ----------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        """
        Bytes from the client (the preface first).
        """
        if self.closed:
            return
        now = self._readTime = self.clock.seconds()
        flood = self.scanner.scan(data)
        if flood is not None:
            self._flooded(flood)
            return
        try:
            events = self.reader.receive(data)
        except ProtocolError as e:
            # The h2 library queued its GOAWAY with the error's code.
            self.countError(_protocolReason(e))
            self._abandon()
            return
        except Exception:
            _log.failure("unexpected error reading an HTTP/2 connection")
            self.countError("h2-protocol-error")
            self._abandon()
            return
        handlers = self._handlers
        for event in events:
            handler = handlers.get(type(event))
            if handler is not None:
                handler(event)
                if self.closed:
                    return
        toStart = self._toStart
        if toStart:
            self._toStart = []
            for stream in toStart:
                if stream.state is PENDING:
                    stream.start()
        if self.scanner.headerPending:
            if self._headerSince is None:
                self._headerSince = now
                self._setDeadline(now + self.settings.headerTimeout)
        else:
            self._headerSince = None
        self.flush()

    def _fastRequest(self, event: FastRequest) -> None:
        self._request(event.stream_id, event.headers, event.ended)

    def _requestReceived(self, event: RequestReceived) -> None:
        self._request(event.stream_id, event.headers, event.stream_ended is not None)

    def _request(self, sid: int, headers: Any, ended: bool) -> None:
        """
        A client opened stream C{sid} with a request's C{headers} (and
        ended it: C{ended}).
        """
        if self._lastStreamId is not None and sid > self._lastStreamId:
            # After the GOAWAY: the client retries it elsewhere.
            self._refuseStream(sid)
            return
        if len(self.streams) >= self.maxStreams:
            self._refuseStream(sid)
            return
        server = self.server
        stream = H2Stream(self, sid, self._readTime)
        self.streams[sid] = stream
        self._idleSince = None
        try:
            request = self.requests.request(headers, ended)
        except ProxyError as e:
            stream.refuse(e)
            return
        request.peer = server.peerHost
        request.identity = server.identity
        stream.request = request
        self._toStart.append(stream)
        if not ended:
            self._setDeadline(self._readTime + self.settings.bodyTimeout)

    def _refuseStream(self, sid: int) -> None:
        """
        Refuse a new stream (REFUSED_STREAM: the client may send it again).
        """
        self.countError("h2-stream-refused")
        self.h2.reset_stream(sid, ErrorCodes.REFUSED_STREAM)
        if not self.guard.allows(self.guard.refusals):
            self._flooded(FLOOD_REFUSED)

    def _dataReceived(self, event: DataReceived | FastData) -> None:
        sid: int = event.stream_id
        length: int = event.flow_controlled_length
        stream = self.streams.get(sid)
        if stream is None:
            # (a stream meshproxy already forgot: the connection's window
            # only)
            acknowledge(self.h2, length, sid)
            return
        stream.dataReceived(event.data, length, self._readTime)

    def _trailersReceived(self, event: TrailersReceived) -> None:
        stream = self.streams.get(event.stream_id)
        if stream is not None:
            stream.trailersReceived(event.headers)

    def _streamEnded(self, event: StreamEnded | FastEnded) -> None:
        stream = self.streams.get(event.stream_id)
        if stream is not None:
            stream.remoteEnd()

    def _streamReset(self, event: StreamReset) -> None:
        stream = self.streams.get(event.stream_id)
        if stream is not None and stream.resetByPeer():
            if not self.guard.allows(self.guard.resets):
                self._flooded(FLOOD_RESET)

    def _windowUpdated(self, event: WindowUpdated | FastWindow) -> None:
        if event.stream_id:
            stream = self.streams.get(event.stream_id)
            if stream is not None and stream in self._blocked:
                stream.push()
        else:
            self._pushBlocked()

    def _settingsChanged(self, event: RemoteSettingsChanged) -> None:
        if SettingCodes.INITIAL_WINDOW_SIZE in event.changed_settings:
            self._pushBlocked()

    def _terminated(self, event: ConnectionTerminated) -> None:
        # The client's GOAWAY: the h2 library sends nothing more after it
        # (python-hyper/h2#1181), so the streams under way cannot finish.
        self._abandon()

    def _pushBlocked(self) -> None:
        for stream in list(self._blocked):
            stream.push()

    # -- the client's transport as a consumer -------------------------------

    def pauseProducing(self) -> None:
        """
        The client's transport is full: read no more from the client, and
        pause the upstreams responses stream from.
        """
        self.writePaused = True
        self.transport.pauseProducing()
        for stream in list(self.streams.values()):
            stream.updateProducer()

    def resumeProducing(self) -> None:
        """
        The client's transport has room again.
        """
        self.writePaused = False
        if not self.closed:
            self.transport.resumeProducing()
        for stream in list(self.streams.values()):
            stream.updateProducer()

    def stopProducing(self) -> None:
        """
        The transport is gone: L{connectionLost} follows.
        """

    # -- ends ---------------------------------------------------------------

    def drain(self) -> None:
        """
        Stop taking new streams (a GOAWAY with the last stream id); close
        once the streams under way are over.
        """
        if self.draining or self.closed:
            return
        self.draining = True
        self._goAway(ErrorCodes.NO_ERROR)
        if not self.streams:
            self._close()

    def _goAway(self, code: ErrorCodes) -> None:
        """
        Send a GOAWAY naming the last stream meshproxy took, after what the
        h2 library has queued.
        """
        if self.closed:
            return
        last = self.h2.highest_inbound_stream_id
        self._lastStreamId = last
        frame = GoAwayFrame(0)
        frame.last_stream_id = last
        frame.error_code = code
        self.flush()
        self._send(frame.serialize())

    def _flooded(self, reason: str) -> None:
        """
        The client passed a flood limit: GOAWAY (ENHANCE_YOUR_CALM), every
        stream abandoned, and the connection closed.
        """
        self.countError(reason)
        self._goAway(ErrorCodes.ENHANCE_YOUR_CALM)
        self._abandon()

    def _abandon(self) -> None:
        """
        End the connection now: the streams under way are abandoned (their
        upstreams dropped) after sending what is queued (a GOAWAY).
        """
        if self.closed:
            return
        self.flush()
        streams = list(self.streams.values())
        self.closed = True
        for stream in streams:
            stream.connectionLost()
        self._close(abort=self.writePaused)

    def _close(self, abort: bool = False) -> None:
        """
        Close the connection once what was written is sent (or at once:
        C{abort}, for a client that does not read).
        """
        self.flush()
        self.closed = True
        self._cancelTimer()
        self.transport.unregisterProducer()
        if abort:
            self.transport.abortConnection()
        else:
            self.transport.loseConnection()

    def connectionLost(self, reason: Failure) -> None:
        """
        The connection is gone: every stream under way is abandoned.
        """
        self.closed = True
        self._cancelTimer()
        streams = list(self.streams.values())
        for stream in streams:
            stream.connectionLost()
        self.streams.clear()
        self._blocked.clear()

    # -- timeouts -----------------------------------------------------------

    def _setDeadline(self, when: float) -> None:
        """
        Check the timeouts at C{when} at the latest.
        """
        if self.closed:
            return
        timer = self._timer
        delay = max(0.0, when - self.clock.seconds())
        if timer is None:
            self._timer = self.clock.callLater(delay, self._checkDeadline)
        elif timer.getTime() > when:
            timer.reset(delay)

    def _cancelTimer(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def _checkDeadline(self) -> None:
        """
        Act on the timeouts that passed, and wait for the next one.
        """
        self._timer = None
        if self.closed:
            return
        now = self.clock.seconds()
        settings = self.settings
        nextCheck: float | None = None
        since = self._headerSince
        if since is not None:
            when = since + settings.headerTimeout
            if now >= when:
                self.countError("client-timeout")
                self._goAway(ErrorCodes.ENHANCE_YOUR_CALM)
                self._abandon()
                return
            nextCheck = when
        if not self.streams:
            idle = self._idleSince
            if idle is not None:
                when = idle + settings.idleTimeout
                if now >= when:
                    self._goAway(ErrorCodes.NO_ERROR)
                    self._close()
                    return
                nextCheck = when if nextCheck is None else min(nextCheck, when)
        else:
            bodyTimeout = settings.bodyTimeout
            stallTimeout = settings.idleTimeout
            for stream in list(self.streams.values()):
                when = stream.deadline(bodyTimeout, stallTimeout)
                if when is None:
                    continue
                if now >= when:
                    stream.timedOut()
                elif nextCheck is None or when < nextCheck:
                    nextCheck = when
        if nextCheck is not None:
            self._setDeadline(nextCheck)
        self.flush()
