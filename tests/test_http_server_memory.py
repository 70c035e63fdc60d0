"""
What an idle client connection of the HTTP router holds: no request
parser until its first bytes (none at all over HTTP/2), and small
containers.
"""

import sys
from typing import Any

import httptools
from twisted.trial.unittest import SynchronousTestCase

from meshproxy.http.client import UpstreamProtocol
from meshproxy.http.server import ServerProtocol
from meshproxy.http2.frames import PREFACE
from tests.test_http_server import Harness

REQUEST = b"GET / HTTP/1.1\r\nHost: hello\r\n\r\n"


class LazyParserTests(SynchronousTestCase):
    """
    The HTTP/1 parser (about 1 KiB with the callbacks it binds) is made
    with the first bytes that are not HTTP/2's preface.
    """

    def test_noParserUntilTheFirstBytes(self) -> None:
        """
        A connection that has sent nothing has no parser; its first request
        makes one, and is forwarded upstream.
        """
        h = Harness()
        proto, transport = h.client()
        self.assertIsNone(proto.parser)
        proto.dataReceived(REQUEST)
        self.assertIsInstance(proto.parser, httptools.HttpRequestParser)
        up, upTransport = h.upstream()
        self.assertTrue(upTransport.value().startswith(b"GET / HTTP/1.1\r\n"))
        up.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 200 OK\r\n"))
        self.assertTrue(transport.value().endswith(b"ok"))

    def test_oneParserForTheConnection(self) -> None:
        """
        The parser made by the first request parses the next ones on the
        connection.
        """
        h = Harness()
        proto, transport = h.client()
        proto.dataReceived(REQUEST)
        parser = proto.parser
        up, upTransport = h.upstream()
        up.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        proto.dataReceived(REQUEST)
        self.assertIs(proto.parser, parser)
        self.assertEqual(upTransport.value().count(b"GET / HTTP/1.1\r\n"), 2)

    def test_startSharedWithThePreface(self) -> None:
        """
        Bytes that could start HTTP/2's preface (C{P}, as in C{POST}) wait,
        without a parser, for the rest; a request line then gets one.
        """
        h = Harness()
        proto, transport = h.client()
        proto.dataReceived(b"P")
        self.assertIsNone(proto.parser)
        proto.dataReceived(b"OST / HTTP/1.1\r\nHost: hello\r\nContent-Length: 0\r\n\r\n")
        self.assertIsInstance(proto.parser, httptools.HttpRequestParser)
        up, upTransport = h.upstream()
        self.assertTrue(upTransport.value().startswith(b"POST / HTTP/1.1\r\n"))

    def test_noParserOverHTTP2(self) -> None:
        """
        A connection that starts with HTTP/2's preface (h2c with prior
        knowledge) never makes an HTTP/1 parser.
        """
        h = Harness()
        proto, transport = h.client()
        # The preface, then an empty SETTINGS frame.
        proto.dataReceived(PREFACE + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        self.assertIsNotNone(proto._h2)
        self.assertIsNone(proto.parser)
        self.assertGreater(len(transport.value()), 0)

    def test_pipelineQueueCostsAnEmptyList(self) -> None:
        """
        The queue of pipelined requests of a connection costs no more than
        an empty list (an empty deque costs 760 bytes) and keeps them in
        order.
        """
        h = Harness()
        proto, transport = h.client()
        self.assertLessEqual(sys.getsizeof(proto.queue), sys.getsizeof([]))
        proto.dataReceived(REQUEST + REQUEST.replace(b"GET / ", b"GET /2 "))
        self.assertEqual(len(proto.queue), 1)
        up, upTransport = h.upstream()
        up.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        self.assertEqual(proto.queue, [])
        # (on the same upstream connection, or on a new one)
        sent = upTransport.value()
        if len(h.reactor.tcpClients) > 1:
            sent = h.upstream()[1].value()
        self.assertIn(b"GET /2 HTTP/1.1\r\n", sent)


class ParserCallbackTests(SynchronousTestCase):
    """
    The parser binds only the callbacks the connection uses.
    """

    def test_noChunkCallbacks(self) -> None:
        """
        A connection has no chunk callbacks (the parser would bind each, a
        bound method per connection, and call it for every chunk), and a
        chunked request body, with its trailers, still reaches the upstream.
        """
        self.assertFalse(hasattr(ServerProtocol, "on_chunk_header"))
        self.assertFalse(hasattr(ServerProtocol, "on_chunk_complete"))
        h = Harness()
        proto, transport = h.client()
        proto.dataReceived(
            b"POST / HTTP/1.1\r\nHost: hello\r\nTransfer-Encoding: chunked\r\n"
            b"TE: trailers\r\n\r\n"
            b"5\r\nhello\r\n6\r\n world\r\n0\r\nx-sum: 11\r\n\r\n"
        )
        up, upTransport = h.upstream()
        sent = upTransport.value()
        self.assertTrue(sent.startswith(b"POST / HTTP/1.1\r\n"))
        self.assertIn(b"hello", sent)
        self.assertIn(b" world", sent)
        self.assertIn(b"x-sum: 11", sent)

    def test_upstreamNoChunkCallbacks(self) -> None:
        """
        An upstream connection has no chunk callbacks either, and a chunked
        response, with its trailers, still reaches the client whole.
        """
        self.assertFalse(hasattr(UpstreamProtocol, "on_chunk_header"))
        self.assertFalse(hasattr(UpstreamProtocol, "on_chunk_complete"))
        h = Harness()
        proto, transport = h.client()
        proto.dataReceived(b"GET / HTTP/1.1\r\nHost: hello\r\nTE: trailers\r\n\r\n")
        up, upTransport = h.upstream()
        up.dataReceived(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n6\r\n world\r\n0\r\nx-sum: 11\r\n\r\n"
        )
        sent = transport.value()
        self.assertTrue(sent.startswith(b"HTTP/1.1 200 OK\r\n"))
        self.assertIn(b"5\r\nhello\r\n", sent)
        self.assertIn(b"6\r\n world\r\n", sent)
        self.assertTrue(sent.endswith(b"0\r\nx-sum: 11\r\n\r\n"))


class ClockReadTests(SynchronousTestCase):
    """
    The request path's own modules read the clock once per event.
    """

    def readsPerRequest(self, response: bytes, pieces: int = 1) -> dict[str, int]:
        """
        Proxy one request on a pooled connection, its response read in
        C{pieces} reads, counting the clock readings of the exchange, the
        client connection and the upstream connection by module.
        """
        def moduleOf(frame: Any) -> str | None:
            name = frame.f_globals["__name__"]
            if name in ("meshproxy.http.exchange", "meshproxy.http.server",
                        "meshproxy.http.client"):
                return name
            return None

        h = Harness()
        proto, transport, up, counts = h.pooledClockReadings(moduleOf)
        seconds = h.reactor.seconds
        proto.dataReceived(b"GET / HTTP/1.1\r\nHost: hello\r\n\r\n")
        size = len(response) // pieces + 1
        for i in range(0, len(response), size):
            h.reactor.advance(1)
            up.dataReceived(response[i:i + size])
        self.assertTrue(transport.value().endswith(b"hello world"), transport.value())
        # The end's time is the last read's: the upstream connection is idle
        # since then, the client connection's idle deadline counts from it.
        now = seconds()
        self.assertEqual(up._wrappedProtocol.idleSince, now)
        self.assertEqual(proto._deadline, now + h.settings.idleTimeout)
        return counts

    def test_oneReadingPerEvent(self) -> None:
        """
        A request and its response read at once: one reading as the request
        starts (its pooled connection is given in the same event), one for
        the upstream's read (the head's time, the body's progress, the end,
        the client connection's idle deadline, the connection's idle time).
        """
        counts = self.readsPerRequest(
            b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\nhello world"
        )
        self.assertEqual(
            counts, {"meshproxy.http.exchange": 1, "meshproxy.http.client": 1}
        )

    def test_eachReadItsTime(self) -> None:
        """
        A response in three reads: each read is one reading, and the end's
        time is the last read's.
        """
        counts = self.readsPerRequest(
            b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\nhello world", pieces=3
        )
        self.assertEqual(
            counts, {"meshproxy.http.exchange": 1, "meshproxy.http.client": 3}
        )


class ResponseFramingTests(SynchronousTestCase):
    """
    An upstream response's framing fields are found whatever their case.
    """

    def test_anyCase(self) -> None:
        for length, encoding in [
            (b"CONTENT-length", b"Transfer-Encoding"),
            (b"content-length", b"TRANSFER-encoding"),
        ]:
            h = Harness()
            proto, transport = h.client()
            proto.dataReceived(b"GET / HTTP/1.1\r\nHost: hello\r\n\r\n")
            up, upTransport = h.upstream()
            up.dataReceived(b"HTTP/1.1 200 OK\r\n" + length + b": 2\r\nX-Long-Name: 1\r\n\r\nok")
            self.assertTrue(
                transport.value().endswith(b"Content-Length: 2\r\n\r\nok"), transport.value()
            )
            transport.clear()
            proto.dataReceived(b"GET / HTTP/1.1\r\nHost: hello\r\n\r\n")
            up.dataReceived(b"HTTP/1.1 200 OK\r\n" + encoding + b": chunked\r\n\r\n")
            # Chunked: not a body that ends with the connection.
            self.assertFalse(up._wrappedProtocol._untilClose)
            up.dataReceived(b"2\r\nok\r\n0\r\n\r\n")
            self.assertTrue(
                transport.value().endswith(b"chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"),
                transport.value(),
            )
