"""
L{meshproxy.http.rewrite.requestHead} field by field: the exact bytes of
request heads whose forwarding fields, C{Via}, hop-by-hop fields, mesh
context and framing take each branch of the rewrite.
"""

from twisted.trial.unittest import SynchronousTestCase

from meshproxy.config import parseConfig
from meshproxy.http.checks import checkHead
from meshproxy.http.message import Request
from meshproxy.http.rewrite import requestHead

from .test_http_server import CONFIG

TRACE = b"traceparent: 00-t-s-01\r\nmesh-reqid: s\r\n"


class RequestHeadBranchTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.settings = parseConfig(CONFIG).routers[0].server

    def head(self, method, target, headers, peer, scheme, forwarded, override, cert):
        request = Request(method, target, "1.1", headers)
        checkHead(request, self.settings)
        return requestHead(request, peer, scheme, forwarded, b"99", override, cert, TRACE)

    def test_viaXffForwardedProtoSeen(self) -> None:
        """
        A client's C{Via}, C{X-Forwarded-For} and C{Forwarded} are extended in
        place, its C{X-Forwarded-Proto} kept; none is added again.
        """
        head = self.head(
            b"GET",
            b"/v",
            [
                (b"Host", b"h"),
                (b"Via", b"1.0 front"),
                (b"x-forwarded-for", b"1.1.1.1"),
                (b"Forwarded", b"for=1.1.1.1"),
                (b"X-Forwarded-Proto", b"https"),
            ],
            b"10.0.0.7", b"http", True, None, None,
        )
        self.assertEqual(
            head,
            b"GET /v HTTP/1.1\r\n"
            b"Host: h\r\n"
            b"Via: 1.0 front, 1.1 meshproxy\r\n"
            b"x-forwarded-for: 1.1.1.1, 10.0.0.7\r\n"
            b"Forwarded: for=1.1.1.1, for=10.0.0.7;proto=http\r\n"
            b"X-Forwarded-Proto: https\r\n"
            b"mesh-ctx-deadline: 99\r\n"
            b"traceparent: 00-t-s-01\r\n"
            b"mesh-reqid: s\r\n"
            b"\r\n",
        )

    def test_ipv6PeerQuoted(self) -> None:
        """
        An IPv6 peer is bracketed and quoted in the C{Forwarded} this hop adds,
        bare in C{X-Forwarded-For}.
        """
        head = self.head(
            b"GET",
            b"/",
            [
                (b"Host", b"h"),
                (b"Accept", b"*/*"),
            ],
            b"::1", b"https", True, None, None,
        )
        self.assertEqual(
            head,
            b"GET / HTTP/1.1\r\n"
            b"Host: h\r\n"
            b"Accept: */*\r\n"
            b"X-Forwarded-For: ::1\r\n"
            b"X-Forwarded-Proto: https\r\n"
            b'Forwarded: for="[::1]";proto=https\r\n'
            b"Via: 1.1 meshproxy\r\n"
            b"mesh-ctx-deadline: 99\r\n"
            b"traceparent: 00-t-s-01\r\n"
            b"mesh-reqid: s\r\n"
            b"\r\n",
        )

    def test_ipv6PeerAppendedToForwarded(self) -> None:
        """
        An IPv6 peer appended to a client's C{Forwarded} is quoted too; the
        other two forwarding fields are added after the client's fields.
        """
        head = self.head(
            b"GET",
            b"/",
            [
                (b"Host", b"h"),
                (b"Forwarded", b"for=x"),
            ],
            b"fe80::1", b"http", True, None, None,
        )
        self.assertEqual(
            head,
            b"GET / HTTP/1.1\r\n"
            b"Host: h\r\n"
            b'Forwarded: for=x, for="[fe80::1]";proto=http\r\n'
            b"X-Forwarded-For: fe80::1\r\n"
            b"X-Forwarded-Proto: http\r\n"
            b"Via: 1.1 meshproxy\r\n"
            b"mesh-ctx-deadline: 99\r\n"
            b"traceparent: 00-t-s-01\r\n"
            b"mesh-reqid: s\r\n"
            b"\r\n",
        )

    def test_hopByHopMeshExpectAndNamedDropped(self) -> None:
        """
        Hop-by-hop fields, those C{Connection} names, the client's mesh context,
        C{Expect}, its trace context and client certificate header are dropped;
        this hop's own context, override, certificate header and framing follow
        the trace lines.
        """
        head = self.head(
            b"POST",
            b"/p",
            [
                (b"Host", b"h"),
                (b"Connection", b"close, X-Secret"),
                (b"X-Secret", b"s"),
                (b"Keep-Alive", b"5"),
                (b"mesh-ctx-deadline", b"1"),
                (b"Mesh-Reqid", b"r"),
                (b"Expect", b"100-continue"),
                (b"traceparent", b"00-x"),
                (b"x-forwarded-client-cert", b"By=evil"),
                (b"Transfer-Encoding", b"chunked"),
            ],
            b"10.0.0.7", b"http", True, b"/a=>/b", b"By=me",
        )
        self.assertEqual(
            head,
            b"POST /p HTTP/1.1\r\n"
            b"Host: h\r\n"
            b"X-Forwarded-For: 10.0.0.7\r\n"
            b"X-Forwarded-Proto: http\r\n"
            b"Forwarded: for=10.0.0.7;proto=http\r\n"
            b"Via: 1.1 meshproxy\r\n"
            b"mesh-ctx-deadline: 99\r\n"
            b"traceparent: 00-t-s-01\r\n"
            b"mesh-reqid: s\r\n"
            b"mesh-ctx-dtab: /a=>/b\r\n"
            b"x-forwarded-client-cert: By=me\r\n"
            b"Transfer-Encoding: chunked\r\n"
            b"\r\n",
        )

    def test_upgrade(self) -> None:
        """
        An upgrade request gets C{Connection: Upgrade} and its C{Upgrade} after
        the trace lines; without forwarding, no forwarding field is added.
        """
        head = self.head(
            b"GET",
            b"/ws",
            [
                (b"Host", b"h"),
                (b"Connection", b"Upgrade"),
                (b"Upgrade", b"websocket"),
                (b"Sec-WebSocket-Key", b"k"),
            ],
            b"10.0.0.7", b"http", False, None, None,
        )
        self.assertEqual(
            head,
            b"GET /ws HTTP/1.1\r\n"
            b"Host: h\r\n"
            b"Sec-WebSocket-Key: k\r\n"
            b"Via: 1.1 meshproxy\r\n"
            b"mesh-ctx-deadline: 99\r\n"
            b"traceparent: 00-t-s-01\r\n"
            b"mesh-reqid: s\r\n"
            b"Connection: Upgrade\r\n"
            b"Upgrade: websocket\r\n"
            b"\r\n",
        )

    def test_proxyForwardingOffKeepsOwnFields(self) -> None:
        """
        With forwarding off, a client's forwarding fields pass as they came.
        """
        head = self.head(
            b"GET",
            b"/",
            [
                (b"Host", b"h"),
                (b"X-Forwarded-For", b"9.9.9.9"),
                (b"Forwarded", b"for=9.9.9.9"),
                (b"X-Forwarded-Proto", b"http"),
            ],
            b"10.0.0.7", b"https", False, None, None,
        )
        self.assertEqual(
            head,
            b"GET / HTTP/1.1\r\n"
            b"Host: h\r\n"
            b"X-Forwarded-For: 9.9.9.9\r\n"
            b"Forwarded: for=9.9.9.9\r\n"
            b"X-Forwarded-Proto: http\r\n"
            b"Via: 1.1 meshproxy\r\n"
            b"mesh-ctx-deadline: 99\r\n"
            b"traceparent: 00-t-s-01\r\n"
            b"mesh-reqid: s\r\n"
            b"\r\n",
        )
