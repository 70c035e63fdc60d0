"""
Tests for L{meshproxy.http2.fastpath}: the commonest frames read and
written without the h2 library's objects, leaving the library's state as
the library leaves it, and every other frame to the library.

Most tests are differential: the same bytes go to two identical server
connections, one read by the library alone (C{receive_data}), the other
by a L{FastReader}; the events (in order), the errors, what each has to
send and the whole state of the library (streams, their states and
windows, the connection's windows, the HPACK table) must be the same.
Each rule also checks which of the two paths took the frame.
"""

from __future__ import annotations

from collections import deque

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import DataReceived, RequestReceived, StreamEnded, TrailersReceived, WindowUpdated
from h2.exceptions import ProtocolError
from h2.settings import SettingCodes
from hpack import Encoder
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
)
from twisted.trial.unittest import SynchronousTestCase

from meshproxy.config import Http2Config
from meshproxy.http2 import fastpath
from meshproxy.http2.connection import _connection
from meshproxy.http2.fastpath import (
    FastData,
    FastEnded,
    FastReader,
    FastRequest,
    FastWindow,
    acknowledge,
    endStream,
    sendHeaders,
    sendQueuedData,
)
from meshproxy.http2.frames import PREFACE

REQUEST = [
    (b":method", b"GET"),
    (b":path", b"/"),
    (b":scheme", b"http"),
    (b":authority", b"hello"),
]
POST = [
    (b":method", b"POST"),
    (b":path", b"/up"),
    (b":scheme", b"http"),
    (b":authority", b"hello"),
]


def _raw(frame, flags=None):
    """
    A frame's bytes, its flags replaced by C{flags} (an int) if given.
    """
    data = bytearray(frame.serialize())
    if flags is not None:
        data[4] = flags
    return bytes(data)


def headers(sid, block, flags=0x5):
    """
    A HEADERS frame (END_STREAM | END_HEADERS by default).
    """
    return _raw(HeadersFrame(sid, data=block), flags)


def data(sid, payload, flags=0x0):
    """
    A DATA frame.
    """
    return _raw(DataFrame(sid, data=payload), flags)


def windowUpdate(sid, increment):
    """
    A WINDOW_UPDATE frame (any increment, even one the library refuses).
    """
    return b"\x00\x00\x04\x08\x00" + sid.to_bytes(4, "big") + increment.to_bytes(4, "big")


def _event(event):
    """
    An event as a comparable tuple (the fast path's and the library's
    alike).
    """
    if isinstance(event, (FastRequest, RequestReceived)):
        ended = event.ended if isinstance(event, FastRequest) else event.stream_ended is not None
        return ("request", event.stream_id, [tuple(h) for h in event.headers], ended)
    if isinstance(event, (FastData, DataReceived)):
        return ("data", event.stream_id, bytes(event.data), event.flow_controlled_length)
    if isinstance(event, (FastEnded, StreamEnded)):
        return ("ended", event.stream_id)
    if isinstance(event, (FastWindow, WindowUpdated)):
        return ("window", event.stream_id)
    return (type(event).__name__, repr(event))


def _state(h2):
    """
    Everything of the library's connection the fast path could change.
    """
    streams = []
    for sid, s in sorted(h2.streams.items()):
        m = s.state_machine
        w = s._inbound_window_manager
        streams.append((
            sid, m.state, m.client, m.headers_sent, m.trailers_sent, m.headers_received,
            m.trailers_received, m.stream_closed_by, s.outbound_flow_control_window,
            w.current_window_size, w.max_window_size, w._bytes_processed,
            s._expected_content_length, s._actual_content_length, s.max_outbound_frame_size,
            s.request_method,
        ))
    w = h2._inbound_flow_control_window_manager
    return (
        h2.state_machine.state, h2.highest_inbound_stream_id, h2.outbound_flow_control_window,
        w.current_window_size, w.max_window_size, w._bytes_processed, streams,
        dict(h2._closed_streams), list(h2.decoder.header_table.dynamic_entries),
        bytes(h2._data_to_send),
    )


class Pair:
    """
    Two identical server connections: one the library reads alone, one a
    L{FastReader} reads.
    """

    def __init__(self, config=None, maxHeaderList=16384, opened=True):
        config = config or Http2Config()
        self.library = _connection(config, maxHeaderList)
        self.fast = _connection(config, maxHeaderList)
        self.reader = FastReader(self.fast)
        self.encoder = Encoder()
        self.opened = opened
        self.lastEvents = []
        first = PREFACE + _raw(SettingsFrame(0)) + _raw(SettingsFrame(0), 0x1)
        if opened:
            # (the library opens the connection on its first stream)
            first += self.request(1, REQUEST)
        self.feed(first)

    def sent(self):
        """
        What both connections have to send (the same).
        """
        out = self.library.data_to_send()
        assert out == self.fast.data_to_send()
        return out

    def request(self, sid, fields, flags=0x5):
        return headers(sid, self.encoder.encode(fields), flags)

    def feed(self, *chunks):
        """
        Give each connection C{chunks}, one read each, until an error;
        check that both gave the same events and errors and are in the
        same state.

        @return: the fast reader's events (the last read's), or the error
            both raised.
        """
        error = None
        for chunk in chunks:
            try:
                expected = [_event(e) for e in self.library.receive_data(chunk)]
            except ProtocolError as e:
                expected = e
            try:
                events = self.reader.receive(chunk)
                got = [_event(e) for e in events]
            except ProtocolError as e:
                got = e
                events = e
            if isinstance(expected, Exception) or isinstance(got, Exception):
                assert type(expected) is type(got), (expected, got)
                assert expected.error_code == got.error_code, (expected, got)
                error = got
                # (meshproxy closes a connection after its error: nothing
                # more is read)
                break
            else:
                assert expected == got, (expected, got)
            assert _state(self.library) == _state(self.fast), (
                _state(self.library),
                _state(self.fast),
            )
            self.lastEvents = events
        return error if error is not None else self.lastEvents


def _kinds(events):
    return [type(e) for e in events]


class ReaderTests(SynchronousTestCase):
    """
    L{FastReader} takes the commonest frames itself, leaving the library's
    state as the library leaves it; everything else goes to the library.
    """

    def test_newStreamFast(self):
        """
        A HEADERS frame with END_HEADERS opening a new stream is taken by
        the fast path: the request and its end.
        """
        pair = Pair()
        events = pair.feed(pair.request(3, REQUEST) + pair.request(5, REQUEST))
        self.assertEqual(_kinds(events), [FastRequest, FastEnded, FastRequest, FastEnded])
        self.assertEqual(
            pair.fast.streams[5].state_machine.state, fastpath.StreamState.HALF_CLOSED_REMOTE
        )

    def test_firstStreamByTheLibrary(self):
        """
        Until the library opened the connection (its first stream), every
        frame is the library's.
        """
        pair = Pair(opened=False)
        events = pair.feed(pair.request(1, REQUEST))
        self.assertEqual(_kinds(events), [RequestReceived, StreamEnded])
        events = pair.feed(pair.request(3, REQUEST))
        self.assertEqual(_kinds(events), [FastRequest, FastEnded])

    def test_requestBodyFast(self):
        """
        DATA frames on a stream the client may send on are taken by the
        fast path, the windows consumed as the library does; a body
        declared by C{content-length} is checked as the library checks it.
        """
        pair = Pair()
        fields = POST + [(b"content-length", b"5")]
        events = pair.feed(
            pair.request(3, fields, 0x4) + data(3, b"ab") + data(3, b"") + data(3, b"cde", 0x1)
        )
        self.assertEqual(
            _kinds(events), [FastRequest, FastData, FastData, FastData, FastEnded]
        )
        self.assertEqual(pair.fast.streams[3]._inbound_window_manager.current_window_size,
                         65535 - 5)

    def test_bodyEndsAfterTheAnswer(self):
        """
        DATA ending a stream meshproxy already answered (half closed on
        its side) closes it, as ended by the client.
        """
        pair = Pair()
        pair.feed(pair.request(3, POST, 0x4))
        for h2 in (pair.library, pair.fast):
            h2.send_headers(3, [(b":status", b"200")], end_stream=True)
        pair.sent()
        events = pair.feed(data(3, b"rest", 0x1))
        self.assertEqual(_kinds(events), [FastData, FastEnded])
        machine = pair.fast.streams[3].state_machine
        self.assertEqual(machine.state, fastpath.StreamState.CLOSED)
        self.assertEqual(machine.stream_closed_by, fastpath.StreamClosedBy.RECV_END_STREAM)

    def test_bodyLongerThanDeclared(self):
        """
        A body longer than its C{content-length} is the library's error.
        """
        pair = Pair()
        pair.feed(pair.request(3, POST + [(b"content-length", b"2")], 0x4))
        error = pair.feed(data(3, b"abc"))
        self.assertEqual(error.error_code, ErrorCodes.PROTOCOL_ERROR)

    def test_bodyShorterThanDeclared(self):
        """
        A body that ends shorter than its C{content-length} is the
        library's error.
        """
        pair = Pair()
        pair.feed(pair.request(3, POST + [(b"content-length", b"4")], 0x4))
        error = pair.feed(data(3, b"abc", 0x1))
        self.assertEqual(error.error_code, ErrorCodes.PROTOCOL_ERROR)

    def test_dataBeyondTheStreamWindow(self):
        """
        DATA past the stream's window is the library's flow-control error.
        """
        pair = Pair(Http2Config(initialWindowSize=10))
        pair.feed(pair.request(3, POST, 0x4))
        error = pair.feed(data(3, b"x" * 11))
        self.assertEqual(error.error_code, ErrorCodes.FLOW_CONTROL_ERROR)

    def test_dataBeyondTheConnectionWindow(self):
        """
        DATA past the connection's window is the library's flow-control
        error, even within the stream's.
        """
        pair = Pair(Http2Config(maxConcurrentStreams=1))
        pair.feed(pair.request(3, POST, 0x4) + pair.request(5, POST, 0x4))
        chunk = data(3, b"x" * 16000)
        pair.feed(chunk + chunk + chunk)
        error = pair.feed(data(5, b"x" * 16000) + data(5, b"x" * 16000))
        self.assertEqual(error.error_code, ErrorCodes.FLOW_CONTROL_ERROR)

    def test_paddedDataToTheLibrary(self):
        """
        A PADDED DATA frame is the library's (its flow-controlled length
        counts the padding).
        """
        pair = Pair()
        pair.feed(pair.request(3, POST, 0x4))
        frame = DataFrame(3, data=b"abc")
        frame.flags.add("PADDED")
        frame.pad_length = 4
        events = pair.feed(frame.serialize() + data(3, b"de", 0x1))
        self.assertEqual(_kinds(events), [DataReceived, DataReceived, StreamEnded])
        self.assertEqual(events[0].flow_controlled_length, 8)

    def test_paddedHeadersToTheLibrary(self):
        """
        A PADDED HEADERS frame is the library's.
        """
        pair = Pair()
        frame = HeadersFrame(3, data=pair.encoder.encode(REQUEST))
        for flag in ("END_STREAM", "END_HEADERS", "PADDED"):
            frame.flags.add(flag)
        frame.pad_length = 3
        events = pair.feed(frame.serialize())
        self.assertEqual(_kinds(events), [RequestReceived, StreamEnded])

    def test_priorityHeadersToTheLibrary(self):
        """
        A HEADERS frame with PRIORITY is the library's.
        """
        pair = Pair()
        frame = HeadersFrame(3, data=pair.encoder.encode(REQUEST))
        for flag in ("END_STREAM", "END_HEADERS", "PRIORITY"):
            frame.flags.add(flag)
        frame.depends_on = 1
        frame.stream_weight = 10
        events = pair.feed(frame.serialize())
        self.assertIsInstance(events[0], RequestReceived)

    def test_headerBlockWithContinuation(self):
        """
        A header block in several frames is the library's, and so is
        everything while it holds the block.
        """
        pair = Pair()
        block = pair.encoder.encode(REQUEST)
        first = headers(3, block[:3], 0x1)
        rest = _raw(ContinuationFrame(3, data=block[3:]), 0x4)
        self.assertEqual(pair.feed(first), [])
        events = pair.feed(rest + pair.request(5, REQUEST))
        self.assertEqual(
            _kinds(events), [RequestReceived, StreamEnded, RequestReceived, StreamEnded]
        )
        events = pair.feed(pair.request(7, REQUEST))
        self.assertEqual(_kinds(events), [FastRequest, FastEnded])

    def test_headersOnAClosedStream(self):
        """
        A HEADERS frame on a stream already closed (its id not above the
        highest) is the library's: a connection error.
        """
        pair = Pair()
        pair.feed(pair.request(5, REQUEST))
        error = pair.feed(pair.request(3, REQUEST))
        self.assertIsInstance(error, ProtocolError)

    def test_headersOnAnEvenStream(self):
        """
        A client may not open an even stream: the library's error.
        """
        pair = Pair()
        error = pair.feed(pair.request(4, REQUEST))
        self.assertEqual(error.error_code, ErrorCodes.PROTOCOL_ERROR)

    def test_trailersToTheLibrary(self):
        """
        A HEADERS frame on an open stream (trailers) is the library's.
        """
        pair = Pair()
        pair.feed(pair.request(3, POST, 0x4) + data(3, b"abc"))
        events = pair.feed(pair.request(3, [(b"x-sum", b"1")]))
        self.assertEqual(_kinds(events), [TrailersReceived, StreamEnded])

    def test_dataOnAHalfClosedStream(self):
        """
        DATA after the client ended its stream is the library's: a stream
        error (RST_STREAM STREAM_CLOSED), the connection's window counted.
        """
        pair = Pair()
        pair.feed(pair.request(3, REQUEST))
        pair.feed(data(3, b"late"))
        self.assertIn(_raw(RstStreamFrame(3, error_code=ErrorCodes.STREAM_CLOSED)), pair.sent())

    def test_dataOnAStreamMeshproxyReset(self):
        """
        DATA on a stream reset by meshproxy is the library's (a stream
        error, not a connection error).
        """
        pair = Pair()
        pair.feed(pair.request(3, POST, 0x4))
        for h2 in (pair.library, pair.fast):
            h2.reset_stream(3, ErrorCodes.CANCEL)
        events = pair.feed(data(3, b"late") + pair.request(5, REQUEST))
        self.assertEqual(_kinds(events), [RequestReceived, StreamEnded])

    def test_dataOnAnIdleStream(self):
        """
        DATA on a stream never opened is the library's connection error.
        """
        pair = Pair()
        error = pair.feed(data(9, b"x"))
        self.assertEqual(error.error_code, ErrorCodes.PROTOCOL_ERROR)

    def test_windowUpdatesFast(self):
        """
        WINDOW_UPDATE frames on the connection and on an open stream are
        taken by the fast path, the windows grown as the library does.
        """
        pair = Pair()
        pair.feed(pair.request(3, POST, 0x4))
        events = pair.feed(windowUpdate(0, 1000) + windowUpdate(3, 7))
        self.assertEqual(_kinds(events), [FastWindow, FastWindow])
        self.assertEqual([e.stream_id for e in events], [0, 3])
        self.assertEqual(pair.fast.outbound_flow_control_window, 65535 + 1000)

    def test_windowUpdateOfZero(self):
        """
        An increment of 0 is the library's connection error.
        """
        pair = Pair()
        error = pair.feed(windowUpdate(0, 0))
        self.assertEqual(error.error_code, ErrorCodes.PROTOCOL_ERROR)

    def test_windowPastTheLargest(self):
        """
        A stream's window past 2^31-1 is the library's stream error (a
        reset); the connection's, its connection error.
        """
        pair = Pair()
        pair.feed(pair.request(3, POST, 0x4))
        pair.feed(windowUpdate(3, 2**31 - 1))
        self.assertIn(
            _raw(RstStreamFrame(3, error_code=ErrorCodes.FLOW_CONTROL_ERROR)), pair.sent()
        )
        error = pair.feed(windowUpdate(0, 2**31 - 1))
        self.assertEqual(error.error_code, ErrorCodes.FLOW_CONTROL_ERROR)

    def test_windowUpdateWrongLength(self):
        """
        A WINDOW_UPDATE frame that is not 4 bytes long is the library's.
        """
        pair = Pair()
        error = pair.feed(b"\x00\x00\x05\x08\x00\x00\x00\x00\x00" + b"\x00\x00\x00\x01\x00")
        self.assertIsInstance(error, ProtocolError)

    def test_windowUpdateOnAClosedStream(self):
        """
        A WINDOW_UPDATE on a closed stream is the library's (ignored).
        """
        pair = Pair()
        for h2 in (pair.library, pair.fast):
            h2.reset_stream(1, ErrorCodes.CANCEL)
        self.assertEqual(pair.feed(windowUpdate(1, 5)), [])

    def test_otherFramesToTheLibraryInOrder(self):
        """
        The frames before one the fast path does not take are its own; that
        frame and the rest of the read are the library's, and the events
        come in the order of the frames.
        """
        pair = Pair()
        events = pair.feed(
            pair.request(3, REQUEST)
            + _raw(PingFrame(0, opaque_data=b"12345678"))
            + pair.request(5, REQUEST)
        )
        self.assertEqual(
            [_event(e)[0] for e in events],
            ["request", "ended", "PingReceived", "request", "ended"],
        )
        self.assertIsInstance(events[0], FastRequest)
        self.assertIsInstance(events[3], RequestReceived)

    def test_unknownFrameToTheLibrary(self):
        """
        A frame of an unknown type is the library's (ignored).
        """
        pair = Pair()
        # (hyperframe writes an ExtensionFrame's length as 0)
        frame = b"\x00\x00\x03\xee\x00\x00\x00\x00\x00abc"
        events = pair.feed(frame + pair.request(3, REQUEST))
        self.assertIsInstance(events[-2], RequestReceived)

    def test_framesSplitAcrossReads(self):
        """
        Frames split across reads, down to single bytes, give the same
        events once complete (the fast path keeps the start of a frame).
        """
        pair = Pair()
        stream = (
            pair.request(3, POST, 0x4)
            + data(3, b"hello")
            + windowUpdate(0, 10)
            + data(3, b"!", 0x1)
            + pair.request(5, REQUEST)
        )
        got = []
        for i in range(len(stream)):
            events = pair.feed(stream[i : i + 1])
            got.extend(type(e) for e in events)
        self.assertEqual(
            got,
            [FastRequest, FastData, FastWindow, FastData, FastEnded, FastRequest, FastEnded],
        )
        self.assertEqual(pair.reader._tail, b"")

    def test_tooLargeFrame(self):
        """
        A frame past the maximum size is the library's error (once all of
        it came, as the library waits for it).
        """
        pair = Pair()
        pair.feed(pair.request(3, POST, 0x4))
        self.assertEqual(pair.feed(b"\x00\x40\x01\x00\x00\x00\x00\x00\x03" + b"x" * 100), [])
        error = pair.feed(b"x" * 16285)
        self.assertEqual(error.error_code, ErrorCodes.FRAME_SIZE_ERROR)

    def test_tooLargeFrameInTheTail(self):
        """
        A frame past the maximum size whose header came split goes to the
        library as soon as its header is complete (not kept by the fast
        path), and is refused as the library refuses it.
        """
        pair = Pair()
        pair.feed(pair.request(3, POST, 0x4))
        self.assertEqual(pair.feed(b"\x00\x40"), [])
        self.assertEqual(pair.feed(b"\x01\x00\x00\x00\x00\x00\x03" + b"x" * 10), [])
        self.assertEqual(pair.reader._tail, b"")
        error = pair.feed(b"x" * 16375)
        self.assertEqual(error.error_code, ErrorCodes.FRAME_SIZE_ERROR)

    def test_badHeaderBlock(self):
        """
        A header block that does not decode is the library's connection
        error (COMPRESSION_ERROR), its GOAWAY queued alike.
        """
        pair = Pair()
        error = pair.feed(headers(3, b"\xff\xff\xff\xff\x0f"))
        self.assertEqual(error.error_code, ErrorCodes.PROTOCOL_ERROR)
        # (a GOAWAY, the last frame queued)
        self.assertEqual(pair.sent()[-17:][3:4], b"\x07")

    def test_headerListTooLarge(self):
        """
        A header list past SETTINGS_MAX_HEADER_LIST_SIZE is the library's
        error.
        """
        pair = Pair(maxHeaderList=200)
        error = pair.feed(pair.request(3, REQUEST + [(b"x-big", b"y" * 300)]))
        self.assertIsInstance(error, ProtocolError)

    def test_informationalStatusInARequest(self):
        """
        A request whose first fields make it an informational response is
        the library's connection error.
        """
        pair = Pair()
        error = pair.feed(pair.request(3, [(b":status", b"100")] + REQUEST))
        self.assertEqual(error.error_code, ErrorCodes.PROTOCOL_ERROR)

    def test_badContentLength(self):
        """
        A C{content-length} that is not a number is the library's error.
        """
        pair = Pair()
        error = pair.feed(pair.request(3, POST + [(b"content-length", b"x")], 0x4))
        self.assertEqual(error.error_code, ErrorCodes.PROTOCOL_ERROR)

    def test_libraryStreamLimit(self):
        """
        Past the library's limit of concurrent streams, its count is taken
        and the stream refused as the library refuses it.
        """
        pair = Pair(Http2Config(maxConcurrentStreams=1))
        # (the library's limit is 2 * 1 + 100)
        error = None
        for sid in range(3, 3 + 2 * 103, 2):
            result = pair.feed(pair.request(sid, POST, 0x4))
            if isinstance(result, Exception):
                error = result
                break
        self.assertIsInstance(error, ProtocolError)
        self.assertEqual(len([s for s in pair.fast.streams.values() if s.open]), 102)

    def test_afterGoAway(self):
        """
        Once the library closed the connection (a GOAWAY of its own), every
        frame is the library's.
        """
        pair = Pair()
        for h2 in (pair.library, pair.fast):
            h2.close_connection()
        error = pair.feed(pair.request(3, REQUEST))
        self.assertIsInstance(error, ProtocolError)

    def test_peerGoAway(self):
        """
        The client's GOAWAY is the library's; what it sends after is too.
        """
        pair = Pair()
        events = pair.feed(_raw(GoAwayFrame(0, last_stream_id=0)))
        self.assertEqual(_event(events[0])[0], "ConnectionTerminated")


def _server(config=None):
    """
    A server connection with streams 1 (open) and 3 (ended by the client),
    and a copy made the same way.
    """
    pairs = []
    for _ in range(2):
        h2 = _connection(config or Http2Config(), 16384)
        encoder = Encoder()
        h2.receive_data(
            PREFACE
            + _raw(SettingsFrame(0))
            + headers(1, encoder.encode(POST), 0x4)
            + headers(3, encoder.encode(REQUEST))
        )
        h2.data_to_send()
        pairs.append(h2)
    return pairs


class SendTests(SynchronousTestCase):
    """
    L{sendHeaders}, L{sendQueuedData} and L{endStream} write what the
    library writes and leave its state as it does; what they do not take
    raises what the library raises.
    """

    def assertSame(self, library, fast):
        self.assertEqual(_state(library), _state(fast))

    def test_responseHeaders(self):
        """
        A response head, ending the stream or not, on a stream open or
        half closed.
        """
        library, fast = _server()
        fields = [(b":status", b"200"), (b"content-type", b"text/plain")]
        for sid, end in ((1, False), (3, True)):
            library.send_headers(sid, fields, end_stream=end)
            sendHeaders(fast, sid, fields, end)
            self.assertSame(library, fast)
        self.assertEqual(fast.streams[3].state_machine.state, fastpath.StreamState.CLOSED)

    def test_headersInContinuationFrames(self):
        """
        A header block larger than the peer's frame size is sent in
        CONTINUATION frames.
        """
        library, fast = _server()
        fields = [(b":status", b"200"), (b"x-big", b"y" * 40000)]
        library.send_headers(3, fields, end_stream=True)
        sendHeaders(fast, 3, fields, True)
        self.assertSame(library, fast)

    def test_trailers(self):
        """
        Trailers after the head and body end the stream.
        """
        library, fast = _server()
        for h2, send in ((library, library.send_headers), (fast, None)):
            if send is not None:
                send(3, [(b":status", b"200")])
                h2.send_data(3, b"abc")
                send(3, [(b"grpc-status", b"0")], end_stream=True)
            else:
                sendHeaders(h2, 3, [(b":status", b"200")])
                sendQueuedData(h2, 3, deque([b"abc"]), False)
                sendHeaders(h2, 3, [(b"grpc-status", b"0")], True)
        self.assertSame(library, fast)

    def test_trailersWithoutEndRefused(self):
        """
        A second header block that does not end the stream is refused, as
        the library refuses it.
        """
        library, fast = _server()
        library.send_headers(3, [(b":status", b"200")])
        sendHeaders(fast, 3, [(b":status", b"200")])
        self.assertRaises(ProtocolError, library.send_headers, 3, [(b"x", b"1")])
        self.assertRaises(ProtocolError, sendHeaders, fast, 3, [(b"x", b"1")])
        self.assertSame(library, fast)

    def test_interimByTheLibrary(self):
        """
        An interim (1xx) response is the library's.
        """
        library, fast = _server()
        library.send_headers(3, [(b":status", b"103"), (b"link", b"</a>")])
        sendHeaders(fast, 3, [(b":status", b"103"), (b"link", b"</a>")])
        self.assertSame(library, fast)
        self.assertFalse(fast.streams[3].state_machine.headers_sent)

    def test_headersOnAClosedStream(self):
        """
        Headers on a stream closed (or forgotten) raise what the library
        raises.
        """
        library, fast = _server()
        for h2 in (library, fast):
            h2.reset_stream(3, ErrorCodes.CANCEL)
        fields = [(b":status", b"200")]
        self.assertRaises(ProtocolError, library.send_headers, 3, fields)
        self.assertRaises(ProtocolError, sendHeaders, fast, 3, fields)
        self.assertRaises(ProtocolError, sendHeaders, fast, 99, fields)

    def test_dataWithinTheWindows(self):
        """
        A body larger than the stream's window is sent up to it, in frames
        of the peer's frame size, its rest kept.
        """
        config = Http2Config()
        library, fast = _server(config)
        for h2 in (library, fast):
            h2.receive_data(_raw(SettingsFrame(0, settings={
                SettingCodes.INITIAL_WINDOW_SIZE: 40000,
            })))
        outs = [deque([b"a" * 30000, b"b" * 20000]) for _ in range(2)]
        sent = [
            fastpath._sendByLibrary(library, 3, outs[0], True),
            sendQueuedData(fast, 3, outs[1], True),
        ]
        self.assertEqual(sent[0], sent[1])
        self.assertEqual(sent[1], (40000, False))
        self.assertEqual([bytes(p) for p in outs[0]], [bytes(p) for p in outs[1]])
        self.assertSame(library, fast)
        for h2 in (library, fast):
            h2.receive_data(windowUpdate(3, 20000) + windowUpdate(0, 20000))
        sent = [
            fastpath._sendByLibrary(library, 3, outs[0], True),
            sendQueuedData(fast, 3, outs[1], True),
        ]
        self.assertEqual(sent[0], sent[1])
        self.assertEqual(sent[1], (10000, True))
        self.assertSame(library, fast)

    def test_dataOnAClosedStream(self):
        """
        DATA on a closed stream raises what the library raises.
        """
        library, fast = _server()
        for h2 in (library, fast):
            h2.reset_stream(3, ErrorCodes.CANCEL)
        self.assertRaises(
            ProtocolError, fastpath._sendByLibrary, library, 3, deque([b"x"]), False
        )
        self.assertRaises(ProtocolError, sendQueuedData, fast, 3, deque([b"x"]), False)

    def test_endStream(self):
        """
        An empty DATA frame ends the stream, as the library's.
        """
        library, fast = _server()
        for h2 in (library, fast):
            h2.send_headers(1, [(b":status", b"200")])
        library.end_stream(1)
        endStream(fast, 1)
        self.assertSame(library, fast)
        self.assertRaises(ProtocolError, endStream, fast, 1)

    def test_clientSideData(self):
        """
        A request body sent upstream (a client connection) is sent by the
        fast path as the library sends it.
        """
        conns = []
        for _ in range(2):
            h2 = H2Connection(H2Configuration(client_side=True, header_encoding=None))
            h2.initiate_connection()
            h2.send_headers(1, POST)
            h2.data_to_send()
            conns.append(h2)
        library, fast = conns
        out = [deque([b"abc", b"de"]) for _ in range(2)]
        self.assertEqual(
            fastpath._sendByLibrary(library, 1, out[0], True),
            sendQueuedData(fast, 1, out[1], True),
        )
        self.assertEqual(library.data_to_send(), fast.data_to_send())
        self.assertEqual(
            library.streams[1].state_machine.state, fast.streams[1].state_machine.state
        )


class AcknowledgeTests(SynchronousTestCase):
    """
    L{acknowledge} gives back the window as C{acknowledge_received_data}
    does: the same WINDOW_UPDATE frames at the same points.
    """

    def _both(self, config, body, steps):
        pair = Pair(config)
        pair.feed(pair.request(3, POST, 0x4))
        pair.feed(*[data(3, piece) for piece in body])
        for size, sid in steps:
            pair.library.acknowledge_received_data(size, sid)
            acknowledge(pair.fast, size, sid)
            self.assertEqual(_state(pair.library), _state(pair.fast))
        return pair.sent()

    def test_windowUpdatesWhenDue(self):
        """
        Small acknowledgements add up; a WINDOW_UPDATE for the stream (and
        the connection) goes once half the window was taken.
        """
        config = Http2Config(maxConcurrentStreams=1, initialWindowSize=1000)
        out = self._both(config, [b"x" * 300, b"x" * 300], [(300, 3), (300, 3)])
        self.assertIn(windowUpdate(3, 600), out)

    def test_closedStreamOnlyTheConnection(self):
        """
        Bytes of a stream closed since count for the connection's window
        only.
        """
        config = Http2Config(maxConcurrentStreams=1, initialWindowSize=1000)
        pair = Pair(config)
        pair.feed(pair.request(3, POST, 0x4), data(3, b"x" * 600))
        for h2 in (pair.library, pair.fast):
            h2.reset_stream(3, ErrorCodes.CANCEL)
        pair.sent()
        pair.library.acknowledge_received_data(600, 3)
        acknowledge(pair.fast, 600, 3)
        self.assertEqual(_state(pair.library), _state(pair.fast))
        self.assertEqual(pair.sent(), b"")
        self.assertEqual(pair.fast._inbound_flow_control_window_manager._bytes_processed, 600)

    def test_unknownStreamByTheLibrary(self):
        """
        A stream the library never knew is the library's (its error).
        """
        pair = Pair()
        self.assertRaises(ProtocolError, pair.library.acknowledge_received_data, 5, 99)
        self.assertRaises(ProtocolError, acknowledge, pair.fast, 5, 99)


class InformationalTests(SynchronousTestCase):
    """
    L{fastpath._informational} tells what the library's
    C{is_informational_response} tells.
    """

    def test_sameAsTheLibrary(self):
        from h2.utilities import is_informational_response

        cases = [
            [],
            [(b":status", b"100")],
            [(b":status", b"200")],
            [(b":status", b"103"), (b"link", b"</a>")],
            REQUEST,
            [(b":method", b"GET"), (b":status", b"101")],
            [(b":method", b"GET"), (b":status", b"204")],
            [(b"grpc-status", b"0")],
            [(b"x", b"1"), (b":status", b"100")],
        ]
        for fields in cases:
            self.assertEqual(
                fastpath._informational(fields), is_informational_response(fields), fields
            )


class ClientPair(Pair):
    """
    Two identical client connections (to an upstream) with streams 1 and
    3 open (3 still sending its body), one read by the library alone, one
    by a L{FastReader}.
    """

    def __init__(self):
        from meshproxy.config import ClientConfig
        from meshproxy.http2.client import _connection as clientConnection

        self.library = clientConnection(ClientConfig())
        self.fast = clientConnection(ClientConfig())
        for h2 in (self.library, self.fast):
            h2.send_headers(1, REQUEST, end_stream=True)
            h2.send_headers(3, POST)
            h2.data_to_send()
        self.reader = FastReader(self.fast)
        self.encoder = Encoder()
        self.lastEvents = []
        self.feed(_raw(SettingsFrame(0)) + _raw(SettingsFrame(0), 0x1))


class ClientReaderTests(SynchronousTestCase):
    """
    On a client connection, L{FastReader} takes the response HEADERS (to
    the library's stream), DATA and WINDOW_UPDATE frames, as the library
    would; the rest is the library's.
    """

    def test_responseFast(self):
        """
        A response head and body on a stream meshproxy opened.
        """
        pair = ClientPair()
        response = [(b":status", b"200"), (b"content-length", b"5")]
        events = pair.feed(
            pair.request(1, response, 0x4) + data(1, b"hel") + data(1, b"lo", 0x1)
            + windowUpdate(0, 10) + windowUpdate(3, 10)
        )
        self.assertEqual(
            [type(e).__name__ for e in events],
            ["ResponseReceived", "FastData", "FastData", "FastEnded", "FastWindow", "FastWindow"],
        )
        self.assertEqual(pair.fast.streams[1].state_machine.state, fastpath.StreamState.CLOSED)

    def test_interimAndTrailers(self):
        """
        Interim responses and trailers go to the library's stream as the
        library gives them.
        """
        pair = ClientPair()
        events = pair.feed(
            pair.request(3, [(b":status", b"103"), (b"link", b"</a>")], 0x4)
            + pair.request(3, [(b":status", b"200")], 0x4)
            + data(3, b"x")
            + pair.request(3, [(b"grpc-status", b"0")], 0x5)
        )
        self.assertEqual(
            [type(e).__name__ for e in events],
            ["InformationalResponseReceived", "ResponseReceived", "FastData",
             "TrailersReceived", "StreamEnded"],
        )

    def test_trailersWithoutEnd(self):
        """
        Trailers that do not end the stream are the library's connection
        error.
        """
        pair = ClientPair()
        pair.feed(pair.request(1, [(b":status", b"200")], 0x4))
        error = pair.feed(pair.request(1, [(b"x", b"1")], 0x4))
        self.assertEqual(error.error_code, ErrorCodes.PROTOCOL_ERROR)

    def test_headersOnAnUnknownStream(self):
        """
        HEADERS on a stream meshproxy never opened are the library's.
        """
        pair = ClientPair()
        error = pair.feed(pair.request(5, [(b":status", b"200")]))
        self.assertIsInstance(error, ProtocolError)

    def test_headersOnAClosedStream(self):
        """
        HEADERS on a stream ended both ways are the library's error.
        """
        pair = ClientPair()
        pair.feed(pair.request(1, [(b":status", b"200")], 0x5))
        events = pair.feed(pair.request(1, [(b":status", b"200")], 0x5))
        self.assertIsInstance(events, ProtocolError)

    def test_headResponseLength(self):
        """
        A C{content-length} on the response to HEAD declares no body, as
        the library reads it.
        """
        pair = ClientPair()
        for h2 in (pair.library, pair.fast):
            h2.send_headers(5, [(b":method", b"HEAD")] + REQUEST[1:], end_stream=True)
            h2.data_to_send()
        events = pair.feed(
            pair.request(5, [(b":status", b"200"), (b"content-length", b"9")], 0x5)
        )
        self.assertEqual(_kinds(events)[0].__name__, "ResponseReceived")

    def test_upstreamConnectionReadsThroughIt(self):
        """
        An upstream connection reads through a L{FastReader} on its own
        library connection.
        """
        from meshproxy.config import ClientConfig
        from meshproxy.http2.client import H2UpstreamConnection

        class Pool:
            limits = ClientConfig()

        connection = H2UpstreamConnection(Pool())
        self.assertIsInstance(connection.reader, FastReader)
        self.assertIs(connection.reader.h2, connection.h2)
        self.assertIs(connection._handlers[FastData].__func__,
                      H2UpstreamConnection._dataReceived)

    def test_refusesValidatingConnections(self):
        """
        A library connection that validates or decodes header fields is
        not one the fast path can read.
        """
        h2 = H2Connection(H2Configuration(client_side=True))
        self.assertRaises(ValueError, FastReader, h2)


class ServerConnectionTests(SynchronousTestCase):
    """
    An HTTP/2 client connection reads through its L{FastReader}: streams
    after the first are opened by the fast path, and handled as the
    library's events would be, in the order of the frames.
    """

    def _opened(self):
        from tests.test_http2_server import H2Harness, get

        h = H2Harness()
        c = h.h2()
        sid = c.request(get(b"/first"))
        up, upTransport = h.upstream()
        up.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        c.pump()
        self.assertEqual(c.response(sid)[1], b"ok")
        upTransport.clear()
        return h, c, up, upTransport, get

    def test_secondStreamByTheFastPath(self):
        """
        A second stream's request (HEADERS and DATA) is read by the fast
        path and goes upstream with its body.
        """
        h, c, up, upTransport, get = self._opened()
        events = []

        class Recording(FastReader):
            __slots__ = ()

            def receive(self, data):
                result = FastReader.receive(self, data)
                events.extend(type(e) for e in result)
                return result

        connection = c.proto._h2
        connection.reader = Recording(connection.h2)
        sid = c.request(get(b"/second", method=b"POST"), body=b"abc")
        self.assertEqual(events, [FastRequest, FastData, FastEnded])
        self.assertIn(b"POST /second HTTP/1.1", upTransport.value())
        self.assertTrue(upTransport.value().endswith(b"abc"))
        up.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nyes")
        c.pump()
        self.assertEqual(c.response(sid)[1], b"yes")

    def test_resetInTheSameReadNeverStarts(self):
        """
        A stream opened by the fast path and reset (by the library) in the
        same read never reaches an upstream.
        """
        h, c, up, upTransport, get = self._opened()
        sid = c.conn.get_next_available_stream_id()
        c.conn.send_headers(sid, get(), end_stream=True)
        c.conn.reset_stream(sid, ErrorCodes.CANCEL)
        c.pump()
        self.assertEqual(upTransport.value(), b"")
        self.assertNotIn(sid, c.proto._h2.streams)


def _clients(limit=100):
    """
    Two identical client connections (to an upstream), their first stream
    sent by the library and the upstream's SETTINGS (C{limit} streams)
    received.
    """
    from meshproxy.config import ClientConfig
    from meshproxy.http2.client import _connection as clientConnection

    conns = []
    for _ in range(2):
        h2 = clientConnection(ClientConfig())
        h2.send_headers(1, REQUEST, end_stream=True)
        h2.receive_data(_raw(SettingsFrame(0, settings={
            SettingCodes.MAX_CONCURRENT_STREAMS: limit,
        })))
        h2.data_to_send()
        conns.append(h2)
    return conns


class RequestHeadersTests(SynchronousTestCase):
    """
    L{sendHeaders} opens a stream to an upstream as the library's
    C{send_headers} does, or lets the library refuse it.
    """

    def assertSame(self, library, fast):
        self.assertEqual(_state(library), _state(fast))
        self.assertEqual(
            [(s.request_method, s._authority) for s in library.streams.values()],
            [(s.request_method, s._authority) for s in fast.streams.values()],
        )

    def test_requestOpensAStream(self):
        """
        A request with or without a body, its fields never indexed where
        marked, in CONTINUATION frames when large.
        """
        from hpack import NeverIndexedHeaderTuple

        library, fast = _clients()
        requests = [
            (3, POST, False),
            (5, REQUEST + [NeverIndexedHeaderTuple(b"authorization", b"secret")], True),
            (7, REQUEST + [(b"x-big", b"y" * 40000)], True),
        ]
        for sid, fields, end in requests:
            library.send_headers(sid, fields, end_stream=end)
            sendHeaders(fast, sid, fields, end)
            self.assertSame(library, fast)
        self.assertEqual(fast.streams[3].state_machine.state, fastpath.StreamState.OPEN)
        self.assertEqual(fast.streams[3].request_method, b"POST")

    def test_firstStreamByTheLibrary(self):
        """
        Until the library opened the connection, requests are its own.
        """
        from meshproxy.config import ClientConfig
        from meshproxy.http2.client import _connection as clientConnection

        library, fast = clientConnection(ClientConfig()), clientConnection(ClientConfig())
        library.send_headers(1, REQUEST, end_stream=True)
        sendHeaders(fast, 1, REQUEST, True)
        self.assertSame(library, fast)

    def test_refusedAsTheLibraryRefuses(self):
        """
        A stream id not above the last, an even one, or one past the
        upstream's limit raise what the library raises.
        """
        from h2.exceptions import TooManyStreamsError

        library, fast = _clients(limit=2)
        # (stream 1 is still open: its response did not come)
        library.send_headers(3, POST)
        sendHeaders(fast, 3, POST)
        self.assertSame(library, fast)
        self.assertRaises(TooManyStreamsError, library.send_headers, 5, POST)
        self.assertRaises(TooManyStreamsError, sendHeaders, fast, 5, POST)
        self.assertSame(library, fast)
        for sid in (1, 4):
            self.assertRaises(ProtocolError, library.send_headers, sid, REQUEST)
            self.assertRaises(ProtocolError, sendHeaders, fast, sid, REQUEST)
            self.assertSame(library, fast)


class MixedFramesTests(SynchronousTestCase):
    """
    Seeded random mixes of frames, the fast path's and the library's, split
    at random points: both connections stay the same at every read.
    """

    def _frames(self, rng, pair, nextId):
        """
        One frame (or two) of a random kind, and the next stream id.
        """
        from hyperframe.frame import PriorityFrame

        open_ = sorted(pair.library.streams)
        sid = rng.choice(open_) if open_ else 1
        kind = rng.randrange(16)
        if kind < 4:
            fields = rng.choice([REQUEST, POST, POST, POST, POST + [(b"content-length", b"4")]])
            flags = rng.choice([0x4, 0x5])
            return pair.request(nextId, fields, flags), nextId + 2
        if kind < 10:
            return data(sid, b"x" * rng.randrange(0, 6), rng.choice([0x0, 0x0, 0x1])), nextId
        if kind == 10:
            return windowUpdate(rng.choice([0, sid]), rng.choice([0, 1, 100, 2**31 - 1])), nextId
        if kind == 11:
            return _raw(RstStreamFrame(sid, error_code=ErrorCodes.CANCEL)), nextId
        if kind == 12:
            return _raw(PingFrame(0, opaque_data=b"abcdefgh")), nextId
        if kind == 13:
            frame = DataFrame(sid, data=b"yy")
            frame.flags.add("PADDED")
            frame.pad_length = 2
            return frame.serialize(), nextId
        if kind == 14:
            return _raw(PriorityFrame(sid, depends_on=0, stream_weight=5)), nextId
        return pair.request(sid, [(b"x-trailer", b"1")], 0x5), nextId

    def test_mixes(self):
        import random

        for seed in range(150):
            rng = random.Random(seed)
            pair = Pair(Http2Config(maxConcurrentStreams=4, initialWindowSize=40))
            nextId = 3
            stream = b""
            for _ in range(40):
                frame, nextId = self._frames(rng, pair, nextId)
                stream += frame
                if rng.random() < 0.3:
                    cut = rng.randrange(len(stream) + 1)
                    result = pair.feed(stream[:cut], stream[cut:])
                    stream = b""
                    if isinstance(result, Exception):
                        break
                    pair.sent()
                    # (what meshproxy does with streams the client ended)
                    for sid, s in list(pair.library.streams.items()):
                        if s.state_machine.state is fastpath.StreamState.HALF_CLOSED_REMOTE:
                            for h2 in (pair.library, pair.fast):
                                h2.send_headers(sid, [(b":status", b"200")], end_stream=True)
                    pair.sent()
