"""
The field limits at their edges, on both sides (the head's fields counted
by their list, the trailers' by their own count): exactly C{maxHeaders}
fields pass and one more is refused, in a request head, its trailers, a
response head and its trailers; a head and trailers count apart, and each
message of a connection counts from zero.
"""

from twisted.trial.unittest import SynchronousTestCase

from tests.test_http_hardening import CHUNKED_HEAD, closed
from tests.test_http_server import CONFIG, Harness

SERVER = CONFIG.replace(
    "server: {headerTimeout: 5s,",
    "server: {maxHeaderBytes: 4096, maxHeaders: 4, headerTimeout: 5s,",
)
CLIENT = CONFIG.replace(
    "    timeouts: {total: 60s}\n",
    "    timeouts: {total: 60s}\n    client: {maxHeaderBytes: 4096, maxHeaders: 4}\n",
)


def fields(n: int, prefix: bytes = b"X-F") -> bytes:
    return b"".join(b"%s%d: v\r\n" % (prefix, i) for i in range(n))


class RequestFieldLimitTests(SynchronousTestCase):
    def request(self, head: bytes) -> bytes:
        h = Harness(SERVER)
        proto, transport = h.client()
        proto.dataReceived(head)
        if h.reactor.tcpClients:
            up, upTransport = h.upstream()
            up.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        return transport.value()

    def test_headAtTheLimit(self) -> None:
        """
        Host and three more fields (four) pass; a fifth is a 431.
        """
        answer = self.request(b"GET / HTTP/1.1\r\nHost: hello\r\n" + fields(3) + b"\r\n")
        self.assertTrue(answer.startswith(b"HTTP/1.1 200 "), answer[:60])
        answer = self.request(b"GET / HTTP/1.1\r\nHost: hello\r\n" + fields(4) + b"\r\n")
        self.assertTrue(answer.startswith(b"HTTP/1.1 431 "), answer[:60])
        self.assertIn(b"Too many request headers.", answer)

    def test_trailersCountApart(self) -> None:
        """
        Trailers count from zero after a full head: four pass, a fifth is
        a 431 about trailers.
        """
        head = CHUNKED_HEAD.replace(b"\r\n\r\n", b"\r\n" + fields(2, b"X-H") + b"\r\n")
        answer = self.request(head + b"3\r\nabc\r\n0\r\n" + fields(4) + b"\r\n")
        self.assertTrue(answer.startswith(b"HTTP/1.1 200 "), answer[:60])
        answer = self.request(head + b"3\r\nabc\r\n0\r\n" + fields(5) + b"\r\n")
        self.assertTrue(answer.startswith(b"HTTP/1.1 431 "), answer[:60])
        self.assertIn(b"Too many trailer fields.", answer)

    def test_eachRequestCountsFromZero(self) -> None:
        """
        A second request on the connection with four fields passes too.
        """
        h = Harness(SERVER)
        proto, transport = h.client()
        head = b"GET / HTTP/1.1\r\nHost: hello\r\n" + fields(3) + b"\r\n"
        proto.dataReceived(head)
        up, upTransport = h.upstream()
        up.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        proto.dataReceived(head)
        up.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        self.assertEqual(transport.value().count(b"HTTP/1.1 200 "), 2)
        self.assertFalse(closed(transport))


class ResponseFieldLimitTests(SynchronousTestCase):
    def response(self, *reads: bytes) -> bytes:
        h = Harness(CLIENT)
        proto, transport = h.client()
        proto.dataReceived(b"GET / HTTP/1.1\r\nHost: hello\r\n\r\n")
        up, upTransport = h.upstream()
        for data in reads:
            up.dataReceived(data)
        return transport.value()

    def test_headAtTheLimit(self) -> None:
        """
        Four response fields pass; a fifth makes the try fail (502).
        """
        answer = self.response(
            b"HTTP/1.1 200 OK\r\n" + fields(3) + b"Content-Length: 2\r\n\r\nok"
        )
        self.assertTrue(answer.startswith(b"HTTP/1.1 200 "), answer[:60])
        answer = self.response(
            b"HTTP/1.1 200 OK\r\n" + fields(4) + b"Content-Length: 2\r\n\r\nok"
        )
        self.assertTrue(answer.startswith(b"HTTP/1.1 502 "), answer[:60])
        self.assertIn(b"more than 4 header fields", answer)

    def test_trailersCountApart(self) -> None:
        """
        Response trailers count from zero after a full head: four pass (and
        are forwarded), a fifth cuts the response.
        """
        head = b"HTTP/1.1 200 OK\r\n" + fields(3, b"X-H") + b"Transfer-Encoding: chunked\r\n\r\n"
        answer = self.response(head, b"2\r\nok\r\n0\r\n" + fields(4) + b"\r\n")
        self.assertTrue(answer.startswith(b"HTTP/1.1 200 "), answer[:60])
        self.assertIn(b"X-F3: v\r\n", answer)
        self.assertTrue(answer.endswith(b"\r\n\r\n"))
        answer = self.response(head, b"2\r\nok\r\n0\r\n" + fields(5) + b"\r\n")
        self.assertNotIn(b"X-F4", answer)
        self.assertFalse(answer.endswith(b"0\r\n\r\n"))

    def test_eachResponseCountsFromZero(self) -> None:
        """
        An interim response's fields and the final response's count apart.
        """
        answer = self.response(
            b"HTTP/1.1 103 Early Hints\r\n" + fields(4, b"Link-") + b"\r\n"
            b"HTTP/1.1 200 OK\r\n" + fields(3) + b"Content-Length: 2\r\n\r\nok"
        )
        self.assertIn(b"HTTP/1.1 200 ", answer)
        self.assertTrue(answer.endswith(b"ok"))
