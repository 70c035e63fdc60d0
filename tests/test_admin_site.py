"""
The admin site refuses request bodies over its limit before reading them,
and leaves form bodies unparsed.
"""

from twisted.internet import defer
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource

from meshproxy.admin.site import MAX_BODY, AdminSite
from tests.support import connectClient


class _Echo(Resource):
    isLeaf = True

    def render_POST(self, request):
        args = b",".join(sorted(request.args))
        return b"%d %s" % (len(request.content.read()), args)


class LimitTests(TestCase):
    timeout = 10

    def listen(self):
        from twisted.internet import reactor

        site = AdminSite(_Echo())
        port = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return port.getHost().port

    @defer.inlineCallbacks
    def test_announcedTooLargeIs413(self):
        """
        A Content-Length over the limit is answered 413 at once and the
        connection closed, without waiting for the body.
        """
        port = self.listen()
        client = yield connectClient(self, port)
        client.transport.write(
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % (MAX_BODY + 1,)
        )
        yield client.closed
        self.assertTrue(client.raw.startswith(b"HTTP/1.1 413 "))

    @defer.inlineCallbacks
    def test_chunkedGrowingTooLargeIs413(self):
        """
        A chunked body that grows past the limit is cut off with 413.
        """
        port = self.listen()
        client = yield connectClient(self, port)
        client.transport.write(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
        chunk = b"x" * 65536
        for _ in range(MAX_BODY // len(chunk) + 2):
            client.transport.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        yield client.closed
        self.assertTrue(client.raw.startswith(b"HTTP/1.1 413 "))

    @defer.inlineCallbacks
    def test_smallBodyServed(self):
        """
        A body within the limit reaches the resource.
        """
        port = self.listen()
        client = yield connectClient(self, port)
        client.transport.write(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello")
        yield client.waitFor(1)
        self.assertEqual(client.responses[0].body, b"5 ")

    @defer.inlineCallbacks
    def test_formBodiesNotParsed(self):
        """
        A form body stays a body: its fields are not mixed into the query
        arguments, and a malformed multipart body reaches the resource
        (which answers for it) instead of getting twisted.web's 400.
        """
        port = self.listen()
        client = yield connectClient(self, port)
        client.transport.write(
            b"POST /?q=1 HTTP/1.1\r\nHost: a\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\n"
            b"Content-Length: 8\r\n\r\ndryRun=1"
            b"POST / HTTP/1.1\r\nHost: a\r\n"
            b"Content-Type: multipart/form-data; boundary=x\r\n"
            b"Content-Length: 5\r\n\r\nhello"
        )
        yield client.waitFor(2)
        self.assertEqual(
            [(r.status, r.body) for r in client.responses], [(200, b"8 q"), (200, b"5 ")]
        )
