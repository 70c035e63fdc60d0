"""
L{meshproxy.http.rewrite.ResponseWriter.head} branch by branch: the exact
bytes of response heads, and what the writer decides from them.
"""

from twisted.trial.unittest import SynchronousTestCase

from meshproxy.http.rewrite import ResponseWriter


class ResponseHeadBranchTests(SynchronousTestCase):
    def head(self, status, bodyless, headers, **options):
        written: list[bytes] = []
        writer = ResponseWriter(written, bodyless)
        keepAlive = writer.head(status, b"Reason", headers, **options)
        [head] = written
        return head, keepAlive, writer.chunked, writer.closeDelimited

    def test_namedByConnectionDropped(self) -> None:
        """
        Fields a C{Connection} value names are dropped wherever they are, in any
        case; hop-by-hop ones always; the others keep their order.
        """
        result = self.head(
            200,
            False,
            [
                (b"X-A", b"1"),
                (b"Connection", b"keep-alive, x-secret, X-Other"),
                (b"X-Secret", b"s"),
                (b"Keep-Alive", b"t=5"),
                (b"x-other", b"o"),
                (b"Content-Type", b"text/plain"),
                (b"Content-Length", b"3"),
            ],
            contentLength=b"3",
            chunked=False,
            version="1.1",
            keepAlive=True,
        )
        self.assertEqual(
            result,
            (
                b"HTTP/1.1 200 Reason\r\n"
                b"X-A: 1\r\n"
                b"Content-Type: text/plain\r\n"
                b"Via: 1.1 meshproxy\r\n"
                b"Content-Length: 3\r\n"
                b"\r\n",
                True,
                False,
                False,
            ),
        )

    def test_connectionCloseOnlyKeepsAll(self) -> None:
        """
        A C{Connection: close} names nothing to drop; the client connection
        stays as asked.
        """
        result = self.head(
            200,
            False,
            [
                (b"Connection", b"close"),
                (b"X-A", b"1"),
                (b"Content-Length", b"3"),
            ],
            contentLength=b"3",
            chunked=False,
            version="1.1",
            keepAlive=True,
        )
        self.assertEqual(
            result,
            (
                b"HTTP/1.1 200 Reason\r\n"
                b"X-A: 1\r\n"
                b"Via: 1.1 meshproxy\r\n"
                b"Content-Length: 3\r\n"
                b"\r\n",
                True,
                False,
                False,
            ),
        )

    def test_switchingProtocols(self) -> None:
        """
        A 101 gets C{Connection: Upgrade} and its C{Upgrade}, no framing.
        """
        result = self.head(
            101,
            True,
            [
                (b"Upgrade", b"websocket"),
                (b"Connection", b"Upgrade"),
                (b"Sec-WebSocket-Accept", b"a"),
            ],
            contentLength=None,
            chunked=False,
            version="1.1",
            keepAlive=True,
        )
        self.assertEqual(
            result,
            (
                b"HTTP/1.1 101 Reason\r\n"
                b"Sec-WebSocket-Accept: a\r\n"
                b"Via: 1.1 meshproxy\r\n"
                b"Connection: Upgrade\r\n"
                b"Upgrade: websocket\r\n"
                b"\r\n",
                True,
                False,
                False,
            ),
        )

    def test_bodylessKeepsContentLength(self) -> None:
        """
        A response without a body (to HEAD, 204, 304) keeps its C{Content-
        Length} as received.
        """
        result = self.head(
            200,
            True,
            [
                (b"Content-Length", b"42"),
                (b"ETag", b'"x"'),
            ],
            contentLength=b"42",
            chunked=False,
            version="1.1",
            keepAlive=True,
        )
        self.assertEqual(
            result,
            (
                b"HTTP/1.1 200 Reason\r\n"
                b"Content-Length: 42\r\n"
                b'ETag: "x"\r\n'
                b"Via: 1.1 meshproxy\r\n"
                b"\r\n",
                True,
                False,
                False,
            ),
        )

    def test_http10CloseDelimited(self) -> None:
        """
        An HTTP/1.0 client and a body without a length: the connection closes at
        its end.
        """
        result = self.head(
            200,
            False,
            [
                (b"Transfer-Encoding", b"chunked"),
                (b"X-A", b"1"),
            ],
            contentLength=None,
            chunked=True,
            version="1.0",
            keepAlive=True,
        )
        self.assertEqual(
            result,
            (
                b"HTTP/1.1 200 Reason\r\n"
                b"X-A: 1\r\n"
                b"Via: 1.1 meshproxy\r\n"
                b"Connection: close\r\n"
                b"\r\n",
                False,
                False,
                True,
            ),
        )

    def test_http10KeepAlive(self) -> None:
        """
        An HTTP/1.0 client kept alive is told so.
        """
        result = self.head(
            404,
            False,
            [
                (b"Content-Length", b"0"),
            ],
            contentLength=b"0",
            chunked=False,
            version="1.0",
            keepAlive=True,
        )
        self.assertEqual(
            result,
            (
                b"HTTP/1.1 404 Reason\r\n"
                b"Via: 1.1 meshproxy\r\n"
                b"Content-Length: 0\r\n"
                b"Connection: keep-alive\r\n"
                b"\r\n",
                True,
                False,
                False,
            ),
        )

    def test_chunkedForHttp11WithoutLength(self) -> None:
        """
        An HTTP/1.1 client gets a body without a length in chunks, and a close
        when asked.
        """
        result = self.head(
            503,
            False,
            [
                (b"Retry-After", b"1"),
            ],
            contentLength=None,
            chunked=False,
            version="1.1",
            keepAlive=False,
        )
        self.assertEqual(
            result,
            (
                b"HTTP/1.1 503 Reason\r\n"
                b"Retry-After: 1\r\n"
                b"Via: 1.1 meshproxy\r\n"
                b"Transfer-Encoding: chunked\r\n"
                b"Connection: close\r\n"
                b"\r\n",
                False,
                True,
                False,
            ),
        )

    def test_statusOutsideTheTable(self) -> None:
        """
        A status outside 100-599 is written as received.
        """
        result = self.head(
            999,
            False,
            [
            ],
            contentLength=b"0",
            chunked=False,
            version="1.1",
            keepAlive=True,
        )
        self.assertEqual(
            result,
            (
                b"HTTP/1.1 999 Reason\r\n"
                b"Via: 1.1 meshproxy\r\n"
                b"Content-Length: 0\r\n"
                b"\r\n",
                True,
                False,
                False,
            ),
        )
