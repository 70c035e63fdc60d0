"""
L{meshproxy.http.rewrite}: the exact bytes of the heads meshproxy sends.
"""

from twisted.trial.unittest import SynchronousTestCase

from meshproxy.http.message import Request
from meshproxy.http.rewrite import ResponseWriter, requestHead


class RequestHeadTests(SynchronousTestCase):
    def test_bytes(self) -> None:
        """
        The request line, the fields kept (in order), the forwarding
        fields, C{Via}, the mesh context, the trace lines as given, and the
        framing, each line ended by CRLF, then a blank line.
        """
        request = Request(
            b"POST",
            b"/a?b",
            "1.1",
            [(b"Host", b"hello"), (b"X-Forwarded-For", b"1.2.3.4"), (b"Accept", b"*/*")],
        )
        request.contentLength = 12
        head = requestHead(
            request,
            b"10.0.0.7",
            b"http",
            True,
            b"1500",
            b"/svc=>/x",
            None,
            b"traceparent: 00-a-b-01\r\nmesh-reqid: b\r\n",
        )
        self.assertEqual(
            head,
            b"POST /a?b HTTP/1.1\r\n"
            b"Host: hello\r\n"
            b"X-Forwarded-For: 1.2.3.4, 10.0.0.7\r\n"
            b"Accept: */*\r\n"
            b"X-Forwarded-Proto: http\r\n"
            b"Forwarded: for=10.0.0.7;proto=http\r\n"
            b"Via: 1.1 meshproxy\r\n"
            b"mesh-ctx-deadline: 1500\r\n"
            b"traceparent: 00-a-b-01\r\n"
            b"mesh-reqid: b\r\n"
            b"mesh-ctx-dtab: /svc=>/x\r\n"
            b"Content-Length: 12\r\n"
            b"\r\n",
        )

    def test_noTraceNoForwarding(self) -> None:
        request = Request(b"GET", b"/", "1.1", [(b"Host", b"h")])
        self.assertEqual(
            requestHead(request, b"::1", b"https", False, b"7", None, b"By=x", b""),
            b"GET / HTTP/1.1\r\nHost: h\r\nVia: 1.1 meshproxy\r\nmesh-ctx-deadline: 7\r\n"
            b"x-forwarded-client-cert: By=x\r\n\r\n",
        )


class ResponseHeadTests(SynchronousTestCase):
    def head(self, status: int, headers: list, **kw: object) -> bytes:
        written: list[bytes] = []
        writer = ResponseWriter(written, False)
        options: dict = {"contentLength": None, "chunked": False, "version": "1.1"}
        options.update(kw)
        options.setdefault("keepAlive", True)
        writer.head(status, b"Whatever", headers, **options)
        [head] = written
        return head

    def test_bytes(self) -> None:
        """
        The status line (the reason as received), the fields kept, C{Via},
        and the framing, each line ended by CRLF, then a blank line.
        """
        self.assertEqual(
            self.head(
                200,
                [(b"Server", b"nginx"), (b"Content-Length", b"6"), (b"Connection", b"x-a"),
                 (b"x-a", b"1"), (b"ETag", b'"e"')],
                contentLength=b"6",
            ),
            b"HTTP/1.1 200 Whatever\r\nServer: nginx\r\nETag: \"e\"\r\nVia: 1.1 meshproxy\r\n"
            b"Content-Length: 6\r\n\r\n",
        )

    def test_anyStatus(self) -> None:
        """
        Statuses outside 100-599 are written as they came.
        """
        self.assertTrue(self.head(999, []).startswith(b"HTTP/1.1 999 Whatever\r\n"))
        self.assertTrue(self.head(599, []).startswith(b"HTTP/1.1 599 Whatever\r\n"))

    def test_closeAndChunked(self) -> None:
        self.assertEqual(
            self.head(404, [(b"x", b"y")], keepAlive=False),
            b"HTTP/1.1 404 Whatever\r\nx: y\r\nVia: 1.1 meshproxy\r\n"
            b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        )

    def test_hopByHopDroppedWhateverTheirCase(self) -> None:
        """
        Hop-by-hop fields are dropped whatever their case; others, of the
        same lengths or not, are kept; a bodyless answer keeps its
        C{Content-Length}.
        """
        fields = [
            (b"KEEP-ALIVE", b"timeout=5"),
            (b"x-abcdefgh", b"same length as connection"),
            (b"Proxy-Connection", b"close"),
            (b"tE", b"trailers"),
            (b"UPGRADE", b"h2c"),
            (b"proxy-AUTHENTICATE", b"Basic"),
            (b"Proxy-Authorization", b"Basic x"),
            (b"Server", b"nginx"),
            (b"content-LENGTH", b"6"),
        ]
        self.assertEqual(
            self.head(200, fields, contentLength=b"6"),
            b"HTTP/1.1 200 Whatever\r\nx-abcdefgh: same length as connection\r\n"
            b"Server: nginx\r\nVia: 1.1 meshproxy\r\nContent-Length: 6\r\n\r\n",
        )
        written: list[bytes] = []
        writer = ResponseWriter(written, True)
        writer.head(
            304, b"Not Modified", fields, contentLength=b"6", chunked=False, version="1.1",
            keepAlive=True,
        )
        self.assertEqual(
            written,
            [
                b"HTTP/1.1 304 Not Modified\r\nx-abcdefgh: same length as connection\r\n"
                b"Server: nginx\r\ncontent-LENGTH: 6\r\nVia: 1.1 meshproxy\r\n\r\n"
            ],
        )
