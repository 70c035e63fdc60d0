"""
The commonest HTTP/2 frames read and written without the C{h2} library's
frame objects, events and state machine calls, on the library's own state.

The C{h2} library stays the one source of truth of a connection: its
streams (C{H2Connection.streams}), their states and flow-control windows,
the connection's windows, its HPACK coder, its output buffer. What is here
does, for the commonest frames, exactly the changes to that state the
library would make, with the same checks, and gives every other frame to
the library (and everything after it in the same read, so that the
frames are taken in order):

  - L{FastReader}: on a server connection, a HEADERS frame with
    END_HEADERS (neither PADDED nor PRIORITY) opening a new client stream;
    on a client connection (to an upstream), such a HEADERS frame on a
    stream meshproxy opened (its response head or trailers: the library's
    stream takes the decoded fields, C{H2Stream.receive_headers}); on both,
    a DATA frame (not PADDED) on a stream the peer may send on, and a
    WINDOW_UPDATE frame on the connection or an open stream. It reads the
    9-byte frame headers itself and gives back light events
    (L{FastRequest}, L{FastData}, L{FastEnded}, L{FastWindow}) in the
    order of the frames, the library's own events after them.
  - L{sendHeaders}: a response's HEADERS (and CONTINUATION) frames, or its
    trailers, on a stream a client opened; a request's, opening a stream
    to an upstream.
  - L{sendQueuedData}: a stream's queued body as DATA frames, as far as the
    windows allow (both sides of meshproxy); L{endStream}: an empty DATA
    frame ending a stream; L{acknowledge}: the window of the bytes taken
    given back (WINDOW_UPDATE frames when the library's window managers
    make one).

A frame the fast path does not take, because of its kind, its flags, its
stream's state, or a value the library would refuse (a window past
2^31-1, an increment of 0, a frame past the maximum size), goes to the
library, which answers it as it always did (a stream error, a connection
error and its GOAWAY). The errors the fast path finds itself after
decoding a header block (which changes the HPACK table and cannot be
undone) are the library's connection errors, raised as the library would
raise them (L{ProtocolError} and its subclasses, with the GOAWAY queued).
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Any

from h2.connection import ConnectionState, _decode_headers
from h2.exceptions import ProtocolError
from h2.stream import H2Stream as _LibraryStream, StreamClosedBy, StreamState
from h2.utilities import authority_from_headers, extract_method_header

if TYPE_CHECKING:
    from collections import deque

    from h2.connection import H2Connection

__all__ = [
    "FastData",
    "FastEnded",
    "FastReader",
    "FastRequest",
    "FastWindow",
    "acknowledge",
    "endStream",
    "sendHeaders",
    "sendQueuedData",
]

# Frame types (RFC 9113 6) and flags.
_DATA = 0x0
_HEADERS = 0x1
_WINDOW_UPDATE = 0x8
_CONTINUATION = 0x9
_END_STREAM = 0x1
_END_HEADERS = 0x4
_PADDED = 0x8
_PRIORITY = 0x20

#: The largest flow-control window (RFC 9113 6.9.1).
_MAX_WINDOW = 2**31 - 1

_HEAD = struct.Struct(">HBBBL")
_pack = _HEAD.pack
_unpackHead = _HEAD.unpack_from
_unpackIncrement = struct.Struct(">L").unpack_from
_pack32 = struct.Struct(">L").pack
_WINDOW_HEAD_0 = _pack(0, 4, _WINDOW_UPDATE, 0, 0)

_OPEN = StreamState.OPEN
_HALF_CLOSED_REMOTE = StreamState.HALF_CLOSED_REMOTE
_HALF_CLOSED_LOCAL = StreamState.HALF_CLOSED_LOCAL
_CLOSED = StreamState.CLOSED
_SERVER_OPEN = ConnectionState.SERVER_OPEN
_CLIENT_OPEN = ConnectionState.CLIENT_OPEN


class FastRequest:
    """
    A client opened a stream with a request's header list (what the
    library's C{RequestReceived} says).

    @ivar stream_id: the stream.
    @ivar headers: the decoded fields, as the library gives them.
    @ivar ended: whether the HEADERS frame ended the stream.
    """

    __slots__ = ("stream_id", "headers", "ended")

    def __init__(self, streamId: int, headers: Any, ended: bool) -> None:
        self.stream_id = streamId
        self.headers = headers
        self.ended = ended


class FastData:
    """
    A DATA frame's bytes (the library's C{DataReceived}).

    @ivar stream_id: the stream.
    @ivar data: the bytes.
    @ivar flow_controlled_length: what the frame counts for flow control.
    """

    __slots__ = ("stream_id", "data", "flow_controlled_length")

    def __init__(self, streamId: int, data: bytes, length: int) -> None:
        self.stream_id = streamId
        self.data = data
        self.flow_controlled_length = length


class FastEnded:
    """
    The client ended its side of a stream (the library's C{StreamEnded}).
    """

    __slots__ = ("stream_id",)

    def __init__(self, streamId: int) -> None:
        self.stream_id = streamId


class FastWindow:
    """
    The client opened a window (the library's C{WindowUpdated}): a
    stream's, or the connection's (C{stream_id} 0).
    """

    __slots__ = ("stream_id",)

    def __init__(self, streamId: int) -> None:
        self.stream_id = streamId


class FastReader:
    """
    Reads what the peer sends on a connection (a server's or a client's):
    the commonest frames by the fast path, the rest by the library (see the
    module docstring).

    A frame whose bytes are not all there yet waits here until they are,
    unless the library already holds bytes (a frame begun, a header block
    without its end), in which case everything goes to the library until
    it holds none.

    @ivar h2: the library's connection (its configuration neither
        validates nor normalises header fields, nor decodes them to text:
        meshproxy checks them itself, in the pass that reads them).
    """

    __slots__ = ("h2", "_open", "_client", "_tail")

    def __init__(self, h2: H2Connection) -> None:
        config = h2.config
        if (
            config.validate_inbound_headers
            or config.normalize_inbound_headers
            or config.header_encoding
        ):
            raise ValueError("the fast path reads header fields as they come")
        self.h2 = h2
        self._client = client = bool(config.client_side)
        # The library's state of a connection open both ways.
        self._open = _CLIENT_OPEN if client else _SERVER_OPEN
        # The bytes of a frame not complete yet (none of them given to the
        # library).
        self._tail = bytearray()

    def receive(self, data: bytes) -> list[Any]:
        """
        The next bytes from the client.

        @return: the events of the frames complete so far, in order: the
            fast path's and the library's.
        @raise ProtocolError: what the library raises for a connection
            error (its GOAWAY queued).
        """
        h2 = self.h2
        tail = self._tail
        if tail:
            tail += data
            if len(tail) < 9:
                return []
            length = (tail[0] << 16) | (tail[1] << 8) | tail[2]
            if len(tail) < 9 + length and length <= h2.max_inbound_frame_size:
                return []
            # (complete, or too large: the library refuses it at once)
            data = bytes(tail)
            tail.clear()
        buffer = h2.incoming_buffer
        if (
            buffer._data
            or buffer._headers_buffer
            or buffer._preamble_len
            or h2.state_machine.state is not self._open
        ):
            return h2.receive_data(data)
        events: list[Any] = []
        n = len(data)
        i = 0
        try:
            i = self._read(data, n, events)
        except ProtocolError as e:
            # (as the library does for the frames it reads)
            h2._terminate_connection(e.error_code)
            raise
        if i < 0:
            return events
        events.extend(h2.receive_data(data[i:] if i else data))
        return events

    def _read(self, data: bytes, n: int, events: list[Any]) -> int:
        """
        Read the frames of C{data} by the fast path while it can.

        @return: where the library is to go on from, or -1 when the fast
            path read it all (keeping the start of a frame).
        """
        h2 = self.h2
        streams = h2.streams
        maxFrame = h2.max_inbound_frame_size
        # The settings the library would read for each new stream (none
        # changes before the library takes a frame: the fast path stops
        # there), read at the first.
        settings: tuple[int, int, int] | None = None
        i = 0
        while i < n:
            if n - i < 9:
                self._tail += data[i:]
                return -1
            high, low, kind, flags, sid = _unpackHead(data, i)
            length = (high << 8) | low
            if length > maxFrame:
                return i
            end = i + 9 + length
            if end > n:
                self._tail += data[i:]
                return -1
            sid &= 0x7FFFFFFF
            if kind == _DATA:
                if flags & _PADDED:
                    return i
                stream = streams.get(sid)
                if stream is None:
                    return i
                machine = stream.state_machine
                state = machine.state
                if (state is not _OPEN and state is not _HALF_CLOSED_LOCAL) or not (
                    machine.headers_received
                ):
                    return i
                # The library's order: the connection's window, the
                # stream's, the length declared.
                h2._inbound_flow_control_window_manager.window_consumed(length)
                stream._inbound_window_manager.window_consumed(length)
                ended = bool(flags & _END_STREAM)
                stream._track_content_length(length, ended)
                events.append(FastData(sid, data[i + 9 : end], length))
                if ended:
                    if state is _OPEN:
                        machine.state = _HALF_CLOSED_REMOTE
                    else:
                        machine.state = _CLOSED
                        machine.stream_closed_by = StreamClosedBy.RECV_END_STREAM
                    events.append(FastEnded(sid))
            elif kind == _HEADERS:
                if flags & (_PADDED | _PRIORITY) or not flags & _END_HEADERS:
                    return i
                if self._client:
                    stream = streams.get(sid)
                    if stream is None:
                        return i
                    state = stream.state_machine.state
                    if state is not _OPEN and state is not _HALF_CLOSED_LOCAL:
                        return i
                    block = data[i + 9 : end]
                    headers = _decode_headers(h2.decoder, block)
                    # (the library's own stream, from here on as in
                    # _receive_headers_frame: it sends no frame)
                    events.extend(
                        stream.receive_headers(headers, bool(flags & _END_STREAM), None)[1]
                    )
                    i = end
                    continue
                if not sid & 1 or sid <= h2.highest_inbound_stream_id:
                    return i
                # The library's own count (cheap with CountedStreams) and
                # limit: past it, the library refuses the stream.
                if settings is None:
                    local = h2.local_settings
                    settings = (
                        local.max_concurrent_streams,
                        local.initial_window_size,
                        h2.remote_settings.initial_window_size,
                    )
                # The library's own count (or its bound, as CountedStreams
                # takes it) against its limit: past it, the library
                # refuses the stream.
                known = len(streams)
                if (known >= getattr(h2, "_pruneAt", 0) or known + 1 >= settings[0]) and (
                    h2.open_inbound_streams + 1 > settings[0]
                ):
                    return i
                self._request(sid, data[i + 9 : end], bool(flags & _END_STREAM), settings, events)
            elif kind == _WINDOW_UPDATE:
                if length != 4:
                    return i
                increment = _unpackIncrement(data, i + 9)[0]
                if not 1 <= increment <= _MAX_WINDOW:
                    return i
                if sid:
                    stream = streams.get(sid)
                    if stream is None:
                        return i
                    state = stream.state_machine.state
                    if state is not _OPEN and state is not _HALF_CLOSED_REMOTE and (
                        state is not _HALF_CLOSED_LOCAL
                    ):
                        return i
                    window = stream.outbound_flow_control_window + increment
                    if window > _MAX_WINDOW:
                        # (a stream error the library makes)
                        return i
                    stream.outbound_flow_control_window = window
                else:
                    window = h2.outbound_flow_control_window + increment
                    if window > _MAX_WINDOW:
                        return i
                    h2.outbound_flow_control_window = window
                events.append(FastWindow(sid))
            else:
                return i
            i = end
        return -1

    def _request(
        self,
        sid: int,
        block: bytes,
        ended: bool,
        settings: tuple[int, int, int],
        events: list[Any],
    ) -> None:
        """
        A HEADERS frame opening stream C{sid}: the library's stream made as
        its C{_begin_new_stream} and C{receive_headers} make it.
        """
        h2 = self.h2
        headers = _decode_headers(h2.decoder, block)
        stream = _LibraryStream(
            sid,
            config=h2.config,
            inbound_window_size=settings[1],
            outbound_window_size=settings[2],
        )
        stream.max_outbound_frame_size = h2.max_outbound_frame_size
        h2.streams[sid] = stream
        h2.highest_inbound_stream_id = sid
        machine = stream.state_machine
        if _informational(headers):
            # (no stream opens with an informational response)
            if ended:
                raise ProtocolError("Cannot set END_STREAM on informational responses")
            machine.state = _CLOSED
            raise ProtocolError("Invalid input RECV_INFORMATIONAL_HEADERS in state IDLE")
        machine.client = False
        machine.headers_received = True
        machine.state = _HALF_CLOSED_REMOTE if ended else _OPEN
        stream._initialize_content_length(headers)
        events.append(FastRequest(sid, headers, ended))
        if ended:
            events.append(FastEnded(sid))


def _informational(fields: Any) -> bool:
    """
    Whether C{fields} are an informational response's, as the library
    tells (C{is_informational_response}, for fields of bytes): its
    C{:status} among the pseudo-header fields (which come first) starts
    with 1.
    """
    for name, value in fields:
        if name[:1] != b":":
            return False
        if name == b":status":
            return value[:1] == b"1"
    return False


def _sending(h2: H2Connection, streamId: int) -> Any:
    """
    The library's stream C{streamId} when the fast path may send on it
    (the connection open, the stream open on this side), else L{None}.
    """
    connectionState = h2.state_machine.state
    if connectionState is not _SERVER_OPEN and connectionState is not _CLIENT_OPEN:
        return None
    stream = h2.streams.get(streamId)
    if stream is None:
        return None
    state = stream.state_machine.state
    if state is not _OPEN and state is not _HALF_CLOSED_REMOTE:
        return None
    return stream


def _sentEnd(stream: Any) -> None:
    """
    The library's stream sent its END_STREAM.
    """
    machine = stream.state_machine
    if machine.state is _OPEN:
        machine.state = _HALF_CLOSED_LOCAL
    else:
        machine.state = _CLOSED
        machine.stream_closed_by = StreamClosedBy.SEND_END_STREAM


def sendHeaders(
    h2: H2Connection,
    streamId: int,
    fields: Any,
    endStream: bool = False,
    block: bytes | None = None,
) -> None:
    """
    Send a header list as C{h2.send_headers} would: a response's (or its
    trailers, with C{endStream}) on a stream a client opened, or a
    request's opening a new stream to an upstream.

    @param fields: C{(name, value)} pairs of bytes.
    @param block: their header block as the connection's encoder writes it
        (without a table size update), when known.
    @raise H2Error: what the library raises (a closed stream, too many
        streams).
    """
    stream = _sending(h2, streamId)
    if stream is None:
        if streamId not in h2.streams and _openStream(h2, streamId, fields, endStream):
            return
        h2.send_headers(streamId, fields, end_stream=endStream)
        return
    machine = stream.state_machine
    if (
        machine.client is not False
        or _informational(fields)
        or (machine.headers_sent and (not endStream or machine.trailers_sent))
    ):
        # (a client's trailers; an interim response; or what the library
        # refuses)
        h2.send_headers(streamId, fields, end_stream=endStream)
        return
    if machine.headers_sent:
        machine.trailers_sent = True
    else:
        machine.headers_sent = True
    encoder = h2.encoder
    if block is None or encoder.header_table.resized:
        block = encoder.encode(fields)
    _writeHeaders(h2, streamId, block, endStream)
    if endStream:
        _sentEnd(stream)


def _openStream(h2: H2Connection, streamId: int, fields: Any, endStream: bool) -> bool:
    """
    Open stream C{streamId} to an upstream with a request's C{fields}, as
    the library's C{send_headers} (and C{_begin_new_stream}) would.

    @return: whether it was sent (else the library is to send it, or
        raise what it raises).
    """
    if (
        not h2.config.client_side
        or h2.state_machine.state is not _CLIENT_OPEN
        or not streamId & 1
        or streamId <= h2.highest_outbound_stream_id
        or _informational(fields)
    ):
        return False
    remote = h2.remote_settings
    limit = remote.max_concurrent_streams
    known = len(h2.streams)
    if (known >= getattr(h2, "_pruneAt", 0) or known + 1 >= limit) and (
        h2.open_outbound_streams + 1 > limit
    ):
        return False
    stream = _LibraryStream(
        streamId,
        config=h2.config,
        inbound_window_size=h2.local_settings.initial_window_size,
        outbound_window_size=remote.initial_window_size,
    )
    stream.max_outbound_frame_size = h2.max_outbound_frame_size
    h2.streams[streamId] = stream
    h2.highest_outbound_stream_id = streamId
    machine = stream.state_machine
    machine.client = True
    machine.headers_sent = True
    machine.state = _HALF_CLOSED_LOCAL if endStream else _OPEN
    _writeHeaders(h2, streamId, h2.encoder.encode(fields), endStream)
    stream._authority = authority_from_headers(fields)
    stream.request_method = extract_method_header(fields)
    return True


def _writeHeaders(h2: H2Connection, streamId: int, block: bytes, endStream: bool) -> None:
    """
    Write a header block as a HEADERS frame, and CONTINUATION frames past
    the peer's frame size.
    """
    size = len(block)
    out = h2._data_to_send
    ending = _END_STREAM if endStream else 0
    limit = h2.max_outbound_frame_size
    if size <= limit:
        out += _pack(size >> 8, size & 0xFF, _HEADERS, _END_HEADERS | ending, streamId)
        out += block
        return
    kind = _HEADERS
    flags = ending
    for start in range(0, size, limit):
        piece = block[start : start + limit]
        if start + limit >= size:
            flags |= _END_HEADERS
        n = len(piece)
        out += _pack(n >> 8, n & 0xFF, kind, flags, streamId)
        out += piece
        kind = _CONTINUATION
        flags = 0


def endStream(h2: H2Connection, streamId: int) -> None:
    """
    End a stream with an empty DATA frame, as C{h2.end_stream} would.

    @raise H2Error: what the library raises (a closed stream).
    """
    stream = _sending(h2, streamId)
    if stream is None:
        h2.end_stream(streamId)
        return
    h2._data_to_send += _pack(0, 0, _DATA, _END_STREAM, streamId)
    _sentEnd(stream)


def acknowledge(h2: H2Connection, size: int, streamId: int) -> None:
    """
    Give the peer back the window of C{size} flow-controlled bytes taken
    from stream C{streamId}, as C{h2.acknowledge_received_data} would: the
    connection's window manager and the stream's (if it is open) decide
    whether a WINDOW_UPDATE is due.
    """
    stream = h2.streams.get(streamId)
    if stream is None or size < 0:
        # (a stream forgotten, or never opened: the library knows which)
        h2.acknowledge_received_data(size, streamId)
        return
    out = h2._data_to_send
    increment = h2._inbound_flow_control_window_manager.process_bytes(size)
    if increment:
        out += _WINDOW_HEAD_0
        out += _pack32(increment)
    if stream.open:
        increment = stream._inbound_window_manager.process_bytes(size)
        if increment:
            out += _pack(0, 4, _WINDOW_UPDATE, 0, streamId)
            out += _pack32(increment)


def sendQueuedData(
    h2: H2Connection, streamId: int, out: deque[bytes | memoryview], endStream: bool
) -> tuple[int, bool]:
    """
    Send the pieces waiting in C{out} as DATA frames on a stream, as far as
    its and its connection's flow-control windows allow (each frame at most
    the peer's maximum frame size): the queue of a response's body to a
    client and of a request's body to an upstream alike.

    A piece larger than the window is sent in part: its rest stays first in
    C{out}, as a C{memoryview} (no copy).

    @param out: the pieces, none empty; what is sent is removed.
    @param endStream: whether the last piece ends the stream (the end is
        wanted and no trailers follow).
    @return: C{(size, ended)}: the bytes sent, and whether the last piece
        was sent with END_STREAM.
    @raise H2Error: what the library raises (a closed stream).
    """
    stream = _sending(h2, streamId)
    if stream is None:
        return _sendByLibrary(h2, streamId, out, endStream)
    sent = 0
    buffer = h2._data_to_send
    frame = h2.max_outbound_frame_size
    while out:
        window = h2.outbound_flow_control_window
        streamWindow = stream.outbound_flow_control_window
        if streamWindow < window:
            window = streamWindow
        if window <= 0:
            break
        if window > frame:
            window = frame
        piece = out[0]
        size = len(piece)
        flags = 0
        if size <= window:
            out.popleft()
            if endStream and not out:
                flags = _END_STREAM
        else:
            view = piece if isinstance(piece, memoryview) else memoryview(piece)
            out[0] = view[window:]
            piece = view[:window]
            size = window
        buffer += _pack(size >> 8, size & 0xFF, _DATA, flags, streamId)
        buffer += piece
        sent += size
        h2.outbound_flow_control_window -= size
        stream.outbound_flow_control_window -= size
        if flags:
            _sentEnd(stream)
            return sent, True
    return sent, False


def _sendByLibrary(
    h2: H2Connection, streamId: int, out: deque[bytes | memoryview], endStream: bool
) -> tuple[int, bool]:
    """
    L{sendQueuedData} by the library's calls (a stream the fast path does
    not send on: they raise what the library raises).
    """
    sent = 0
    while out:
        window = h2.local_flow_control_window(streamId)
        if window <= 0:
            break
        frame = h2.max_outbound_frame_size
        if window > frame:
            window = frame
        piece = out[0]
        size = len(piece)
        if size <= window:
            out.popleft()
            sent += size
            if endStream and not out:
                h2.send_data(streamId, piece, end_stream=True)
                return sent, True
            h2.send_data(streamId, piece)
        else:
            view = piece if isinstance(piece, memoryview) else memoryview(piece)
            out[0] = view[window:]
            sent += window
            h2.send_data(streamId, view[:window])
    return sent, False
