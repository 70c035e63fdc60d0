"""
HTTP/2 peers for tests of meshproxy's HTTP/2 upstream side, written on the
h2 library: an upstream server (L{H2Backend}) and a client (L{H2ClientProtocol})
that work over any transport (the memory network of
L{tests.memory_support}, or real loopback sockets).
"""

from __future__ import annotations

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    RequestReceived,
    ResponseReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
)
from h2.exceptions import H2Error
from h2.settings import Settings
from hyperframe.frame import GoAwayFrame
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory, Protocol

__all__ = ["H2Backend", "H2BackendFactory", "H2ClientProtocol", "H2Request", "okH2"]


class H2Request:
    """
    A request an L{H2Backend} received on one stream.
    """

    def __init__(self, proto, streamId, headers):
        self.proto = proto
        self.streamId = streamId
        self.headers = list(headers)
        self.body = b""
        self.trailers = None
        self.ended = False
        self.reset = None

    def header(self, name):
        for n, v in self.headers:
            if n == name:
                return v
        return None

    @property
    def path(self):
        return self.header(b":path")

    def respond(self, status=200, headers=(), body=b"", trailers=None, end=True):
        """
        Answer on this stream (what the window allows; the rest is sent as
        the window opens).
        """
        conn = self.proto.conn
        fields = [(b":status", b"%d" % (status,)), *headers]
        onlyHead = not body and trailers is None and end
        conn.send_headers(self.streamId, fields, end_stream=onlyHead)
        if not onlyHead:
            self.proto.queue(self.streamId, body, trailers, end)
        self.proto.flush()


def okH2(request):
    """
    Answer 200 with C{ok <path>} once the whole request came.
    """
    if request.ended:
        body = b"ok " + request.path
        request.respond(200, [(b"content-length", b"%d" % (len(body),))], body)


class H2Backend(Protocol):
    """
    A server connection on the h2 library: it records each stream's
    request (L{H2BackendFactory.requests}) and calls the factory's handler
    with it when its head and each time more of it arrives.
    """

    def __init__(self, factory):
        self.factory = factory
        self.conn = H2Connection(
            H2Configuration(
                client_side=False,
                header_encoding=None,
                # (to send malformed answers on purpose)
                validate_outbound_headers=False,
                normalize_outbound_headers=False,
            )
        )
        if factory.settings:
            self.conn.local_settings = Settings(client=False, initial_values=factory.settings)
        self.streams = {}
        self.pending = {}
        self.holdWindow = False
        self.events = []
        self.raw = b""

    def connectionMade(self):
        self.factory.connections.append(self)
        self.conn.initiate_connection()
        self.flush()

    def flush(self):
        data = self.conn.data_to_send()
        if data and self.transport is not None:
            self.transport.write(data)

    def goAway(self, lastStreamId, code=0):
        """
        Send a GOAWAY without telling the h2 library (which would then
        refuse to finish the streams below C{lastStreamId}).
        """
        frame = GoAwayFrame(0)
        frame.last_stream_id = lastStreamId
        frame.error_code = code
        self.flush()
        self.transport.write(frame.serialize())

    def queue(self, sid, body, trailers, end):
        self.pending[sid] = [body, trailers, end]
        self.push(sid)

    def push(self, sid):
        item = self.pending.get(sid)
        if item is None:
            return
        body, trailers, end = item
        conn = self.conn
        while body:
            window = min(conn.local_flow_control_window(sid), conn.max_outbound_frame_size)
            if window <= 0:
                item[0] = body
                self.flush()
                return
            piece, body = body[:window], body[window:]
            conn.send_data(sid, piece, end_stream=not body and trailers is None and end)
        del self.pending[sid]
        if trailers is not None:
            conn.send_headers(sid, trailers, end_stream=True)
        self.flush()

    def dataReceived(self, data):
        self.raw += data
        events = self.conn.receive_data(data)
        self.events += events
        for event in events:
            sid = getattr(event, "stream_id", None)
            if isinstance(event, RequestReceived):
                request = self.streams[sid] = H2Request(self, sid, event.headers)
                self.factory.requests.append(request)
                request.ended = event.stream_ended is not None
                self.factory.handler(request)
            elif isinstance(event, DataReceived):
                request = self.streams[sid]
                request.body += event.data
                if not self.holdWindow:
                    self.conn.acknowledge_received_data(event.flow_controlled_length, sid)
            elif isinstance(event, TrailersReceived):
                self.streams[sid].trailers = event.headers
            elif isinstance(event, StreamEnded):
                request = self.streams[sid]
                if not request.ended:
                    request.ended = True
                    self.factory.handler(request)
            elif isinstance(event, StreamReset):
                request = self.streams.get(sid)
                if request is not None:
                    request.reset = event.error_code
            elif event.__class__.__name__ == "WindowUpdated":
                for pending in list(self.pending):
                    self.push(pending)
        self.flush()

    def connectionLost(self, reason=None):
        self.factory.lost += 1


class H2BackendFactory(Factory):
    """
    Makes L{H2Backend}s; keeps their connections and requests.

    @ivar handler: called with each L{H2Request} (head, and end).
    @ivar settings: the SETTINGS the server announces.
    """

    def __init__(self, handler=okH2, settings=None):
        self.handler = handler
        self.settings = settings
        self.connections = []
        self.requests = []
        self.lost = 0

    def buildProtocol(self, addr):
        return H2Backend(self)


class H2ClientProtocol(Protocol):
    """
    An HTTP/2 client (prior knowledge) on the h2 library, keeping every
    event.
    """

    def __init__(self):
        self.conn = H2Connection(H2Configuration(client_side=True, header_encoding=None))
        self.events = []
        self._waiting = {}

    def whenEnded(self, sid):
        """
        A Deferred firing once stream C{sid} ends (or is reset).
        """
        d = Deferred()
        if self.of(sid, StreamEnded) or self.of(sid, StreamReset):
            d.callback(None)
        else:
            self._waiting.setdefault(sid, []).append(d)
        return d

    def connectionMade(self):
        self.conn.initiate_connection()
        self.flush()

    def flush(self):
        data = self.conn.data_to_send()
        if data:
            self.transport.write(data)

    def dataReceived(self, data):
        try:
            events = self.conn.receive_data(data)
        except H2Error as e:
            self.events.append(e)
            return
        self.events += events
        for event in events:
            if isinstance(event, DataReceived):
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        self.flush()
        for event in events:
            if isinstance(event, (StreamEnded, StreamReset)):
                for d in self._waiting.pop(event.stream_id, ()):
                    d.callback(None)

    def request(self, headers, body=None, trailers=None, end=True):
        sid = self.conn.get_next_available_stream_id()
        only = body is None and trailers is None and end
        self.conn.send_headers(sid, headers, end_stream=only)
        if body is not None:
            self.conn.send_data(sid, body, end_stream=trailers is None and end)
        if trailers is not None:
            self.conn.send_headers(sid, trailers, end_stream=True)
        self.flush()
        return sid

    def of(self, sid, kind):
        return [
            e for e in self.events if getattr(e, "stream_id", None) == sid and isinstance(e, kind)
        ]

    def response(self, sid):
        """
        C{(headers, body, trailers, ended)} of stream C{sid}.
        """
        head = self.of(sid, ResponseReceived)
        trailers = self.of(sid, TrailersReceived)
        return (
            dict(head[0].headers) if head else None,
            b"".join(e.data for e in self.of(sid, DataReceived)),
            trailers[0].headers if trailers else None,
            bool(self.of(sid, StreamEnded)),
        )

    def goaway(self):
        ended = [e for e in self.events if isinstance(e, ConnectionTerminated)]
        return ended[0] if ended else None
