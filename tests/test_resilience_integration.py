"""
The resilience features of the HTTP router on loopback where only real
sockets show the behaviour: an upstream that resets its connection (a TCP
RST, which the kernel reports as a lost connection) in the middle of a
response, against the control of a clean close (a FIN). A real proxy, a
real upstream and a raw client that sees every byte.

Everything else about resilience (retries, budget, timeouts, accrual,
deadlines, limits, overrides) is logic, tested on a memory network and a
fake clock in L{tests.test_resilience_router}.
"""

from twisted.internet import defer
from twisted.trial.unittest import TestCase

from tests.resilience_support import backends, resilienceConfig, tick, waitUntil
from tests.support import connectClient, startProxy

#: No failure accrual: a broken instance stays in the set for every request.
NO_ACCRUAL = "{kind: none}"


class ResilienceTestCase(TestCase):
    """
    Starts a proxy from the resilience config with the router sections a
    test gives.
    """

    timeout = 20

    @defer.inlineCallbacks
    def proxy(self, services, **sections):
        """
        @param services: service name → list of upstream ports.
        @param sections: router sections as YAML flow text (see
            L{resilienceConfig}).
        @return: a Deferred firing with the proxy's port.
        """
        config = resilienceConfig(services, **sections)
        port, adminPort, runtime = yield startProxy(self, None, config=config)
        return port


# -- Resets in the middle of a response -----------------------------------------------------------


class ResetTests(ResilienceTestCase):
    @defer.inlineCallbacks
    def _truncated(self, head, part, reset=True):
        """
        The upstream sends C{head} and C{part}, then (once the client has
        the part) resets its connection.

        @return: the client.
        """
        held = []

        def handler(proto, request):
            held.append(proto)
            proto.transport.write(head + part)

        (backend, pb), = yield backends(self, handler)
        port = yield self.proxy({"hello": [pb]}, failureAccrual=NO_ACCRUAL)
        client = yield connectClient(self, port)
        client.transport.write(b"GET / HTTP/1.1\r\nHost: hello\r\n\r\n")
        yield waitUntil(lambda: b"partial" in client.raw, "the first part of the body")
        if reset:
            held[0].transport.abortConnection()
        else:
            held[0].transport.loseConnection()
        # Either the proxy cuts the connection, or it ends the response;
        # then let connectionLost, which fired the wait, finish.
        yield client.waitFor(1)
        yield tick(0)
        return client

    @defer.inlineCallbacks
    def test_resetMidResponseWithLengthCutsClient(self):
        """
        A reset after part of a Content-Length body: the client connection
        is cut with fewer bytes than announced.
        """
        client = yield self._truncated(
            b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n", b"partial"
        )
        self.assertTrue(client.closed.called)
        self.assertEqual(client.raw.count(b"HTTP/1.1 "), 1)
        self.assertTrue(client.raw.endswith(b"\r\n\r\npartial"), client.raw)
        self.assertEqual(client.responses[0].header(b"content-length"), b"100")

    @defer.inlineCallbacks
    def test_resetMidChunkedResponseCutsClient(self):
        """
        A reset in the middle of a chunked body: the client never gets the
        last chunk that would make the cut response look complete.
        """
        client = yield self._truncated(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", b"7\r\npartial\r\n"
        )
        self.assertTrue(client.closed.called)
        self.assertFalse(client.raw.endswith(b"0\r\n\r\n"), client.raw)
        self.assertIsNone(client.error)

    @defer.inlineCallbacks
    def test_resetMidCloseDelimitedResponseCutsClient(self):
        """
        A reset in the middle of a close-delimited body (no length): the
        end of the body is only known from a clean close, so a reset is a
        cut, and the client must not get a well-framed complete response.
        """
        client = yield self._truncated(b"HTTP/1.1 200 OK\r\n\r\n", b"partial")
        self.assertFalse(client.raw.endswith(b"0\r\n\r\n"), client.raw)
        self.assertTrue(client.closed.called)


    @defer.inlineCallbacks
    def test_cleanCloseEndsCloseDelimitedResponse(self):
        """
        The control: a clean close ends a close-delimited body, which the
        client gets whole (re-framed as chunked).
        """
        client = yield self._truncated(b"HTTP/1.1 200 OK\r\n\r\n", b"partial", reset=False)
        self.assertEqual(client.responses[0].body, b"partial")
        self.assertTrue(client.raw.endswith(b"0\r\n\r\n"), client.raw)
