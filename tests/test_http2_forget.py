"""
Tests for L{CountedStreams.forgetClosed} and the closed streams the h2
library remembers: a stream forgotten at once is answered as one the
library's own walk forgot.
"""

from __future__ import annotations

from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.stream import StreamClosedBy
from hyperframe.frame import DataFrame, RstStreamFrame
from twisted.trial.unittest import SynchronousTestCase

from meshproxy.http2.fast import CountedStreams
from tests.test_http2_fast import REQUEST, _Counted, _pair
from tests.test_http2_server import H2Harness, get


class _Small(CountedStreams, H2Connection):
    MAX_CLOSED_STREAMS = 4


def _answer(client, server, end=True):
    """
    One request, answered (the stream closed both ways when C{end}).
    """
    sid = client.get_next_available_stream_id()
    client.send_headers(sid, REQUEST, end_stream=True)
    server.receive_data(client.data_to_send())
    server.send_headers(sid, [(b":status", b"200")], end_stream=end)
    client.receive_data(server.data_to_send())
    return sid


class ForgetClosedTests(SynchronousTestCase):
    """
    L{CountedStreams.forgetClosed} forgets a closed stream as the count's
    walk does.
    """

    def test_closedForgotten(self):
        """
        A closed stream is forgotten, with how it was closed.
        """
        client, server = _pair()
        sid = _answer(client, server)
        server.forgetClosed(sid)
        self.assertEqual(server.streams, {})
        self.assertEqual(server._closed_streams, {sid: StreamClosedBy.SEND_END_STREAM})

    def test_openKept(self):
        """
        A stream still open, or one the library does not know, is left.
        """
        client, server = _pair()
        sid = _answer(client, server, end=False)
        server.forgetClosed(sid)
        server.forgetClosed(99)
        self.assertEqual(list(server.streams), [sid])
        self.assertEqual(server._closed_streams, {})

    def test_lateFrameAsAfterTheWalk(self):
        """
        A frame on a stream forgotten at once gets what it gets after the
        library's walk forgot it (a stream error, the connection going on).
        """
        results = []
        for forget in (True, False):
            client, server = _pair()
            sid = _answer(client, server)
            if forget:
                server.forgetClosed(sid)
            else:
                server.pruneClosed()
            events = server.receive_data(DataFrame(sid, b"late").serialize())
            results.append((
                [(type(e), e.stream_id, e.error_code) for e in events],
                server.data_to_send(),
                dict(server._closed_streams),
                dict(server.streams),
            ))
        self.assertEqual(results[0], results[1])
        # (no event; RST_STREAM, STREAM_CLOSED)
        self.assertEqual(results[0][0], [])
        reset = RstStreamFrame(sid, error_code=ErrorCodes.STREAM_CLOSED).serialize()
        self.assertIn(reset, results[0][1])

    def test_bounded(self):
        """
        The closed streams remembered stay bounded, the oldest forgotten
        first, whether forgotten one by one or by the walk.
        """
        client = _Counted(_pair()[0].config)
        server = _Small(_pair()[1].config)
        client.initiate_connection()
        server.initiate_connection()
        server.receive_data(client.data_to_send())
        client.receive_data(server.data_to_send())
        ids = []
        for _ in range(6):
            sid = _answer(client, server)
            server.forgetClosed(sid)
            ids.append(sid)
        self.assertEqual(list(server._closed_streams), ids[-4:])
        for _ in range(6):
            ids.append(_answer(client, server))
        server.pruneClosed()
        self.assertEqual(list(server._closed_streams), ids[-4:])
        self.assertEqual(server.streams, {})


class ConnectionForgetsTests(SynchronousTestCase):
    """
    A client connection has the library forget each stream it closed, at
    once, while other streams go on.
    """

    def test_answeredStreamForgotten(self):
        h = H2Harness()
        c = h.h2()
        first = c.request(get(b"/1"))
        up1, _ = h.upstream()
        second = c.request(get(b"/2"))
        h.upstream()
        up1.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        c.pump()
        self.assertEqual(c.response(first)[1], b"ok")
        h2 = c.proto._h2.h2
        self.assertEqual(list(h2.streams), [second])
        self.assertIn(first, h2._closed_streams)
