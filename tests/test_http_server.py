"""
The HTTP router's protocols with fake transports and a fake clock: the
client-side timeouts, upstream framing, pooling and back-pressure, without
sockets.
"""

import sys

from prometheus_client import CollectorRegistry
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase

from meshproxy.config import parseConfig
from meshproxy.discovery.endpoints import Endpoint
from meshproxy.discovery.static import StaticNamer
from meshproxy.http.router import HttpRouter
from meshproxy.http.server import ServerProtocol
from meshproxy.routing.path import Path
from meshproxy.runtime import balancerFactory
from meshproxy.telemetry.metrics import MeshMetrics

CONFIG = """\
namers:
  - {kind: static, prefix: /#/static, services: {hello: ["127.0.0.1:9001"]}}
routers:
  - name: web
    listen: "tcp:4140"
    rules: "/svc => /#/static;"
    timeouts: {total: 60s}
    server: {headerTimeout: 5s, idleTimeout: 30s, bodyTimeout: 7s}
"""


class Harness:
    """
    A router on a memory reactor, with helpers to play client and upstream.
    """

    def __init__(self, config=CONFIG, ports=(9001,)):
        self.reactor = MemoryReactorClock()
        mesh = parseConfig(config)
        routerConfig = mesh.routers[0]
        namers = {
            Path.read("/#/static"): StaticNamer(
                Path.read("/#/static"), {"hello": [Endpoint("127.0.0.1", p) for p in ports]}
            )
        }
        self.metrics = MeshMetrics(CollectorRegistry())
        self.router = HttpRouter(
            routerConfig,
            namers,
            reactor=self.reactor,
            metrics=self.metrics,
            balancerFactory=balancerFactory(routerConfig.loadBalancer, self.reactor),
        )
        self.settings = routerConfig.server

    def pooledClockReadings(self, keyOf):
        """
        A client whose first request was proxied (its upstream connection is
        pooled), then the reactor's clock replaced by one counting who reads
        it, and one second passed.

        @param keyOf: called with the frame that read the clock; the key
            to count the reading under, or L{None} not to count it.
        @return: the client protocol, its transport (cleared), the upstream
            protocol and the counts (key to readings).
        """
        proto, transport = self.client()
        proto.dataReceived(b"GET / HTTP/1.1\r\nHost: hello\r\n\r\n")
        up, _ = self.upstream()
        up.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        counts = {}
        seconds = self.reactor.seconds

        def counting():
            key = keyOf(sys._getframe(1))
            if key is not None:
                counts[key] = counts.get(key, 0) + 1
            return seconds()

        self.reactor.seconds = counting
        transport.clear()
        self.reactor.advance(1)
        return proto, transport, up, counts

    def client(self):
        """
        A server protocol with a client transport attached.
        """
        proto = ServerProtocol(self.router, self.settings, self.reactor)
        transport = StringTransport(peerAddress=IPv4Address("TCP", "10.0.0.7", 5555))
        proto.makeConnection(transport)
        return proto, transport

    def upstream(self, index=-1):
        """
        Complete the pending upstream connection attempt number C{index}.

        @return: the upstream protocol and its transport.
        """
        host, port, factory, timeout, bindAddress = self.reactor.tcpClients[index]
        proto = factory.buildProtocol(None)
        transport = StringTransport()
        proto.makeConnection(transport)
        return proto, transport


class MemoryTests(SynchronousTestCase):
    def test_ownAttributesInSlots(self):
        """
        A client connection keeps its own attributes in slots (an idle
        keep-alive connection costs about 2 KiB less than with an instance
        dictionary): after a request and its answer, its dictionary holds
        only what Twisted's bases set. An attribute added without its slot
        fails this test.
        """
        h = Harness()
        proto, transport = h.client()
        proto.dataReceived(b"GET / HTTP/1.1\r\nHost: hello\r\n\r\n")
        up, upTransport = h.upstream()
        up.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 200 OK\r\n"))
        self.assertEqual(set(vars(proto)), {"connected", "transport"})


class ClientTimeoutTests(SynchronousTestCase):
    def test_slowHeaderGets408(self):
        """
        A client that sends part of a request head and stalls gets 408 once
        the header timeout passes (slowloris).
        """
        h = Harness()
        proto, transport = h.client()
        proto.dataReceived(b"GET / HTTP/1.1\r\nHost: hel")
        h.reactor.advance(4.9)
        self.assertFalse(transport.disconnecting)
        h.reactor.advance(0.2)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 408 "))
        self.assertIn(b"mesh-err: client-timeout", transport.value())
        self.assertTrue(transport.disconnecting)

    def test_tricklingHeaderStillTimesOut(self):
        """
        Bytes arriving one at a time do not extend the header deadline.
        """
        h = Harness()
        proto, transport = h.client()
        for i in range(10):
            proto.dataReceived(b"GET /"[i % 5 : i % 5 + 1] if i < 5 else b"a")
            h.reactor.advance(0.6)
        self.assertTrue(transport.disconnecting)

    def test_idleKeepAliveClosed(self):
        """
        A connection idle for the idle timeout is closed without an answer.
        """
        h = Harness()
        proto, transport = h.client()
        h.reactor.advance(29)
        self.assertFalse(transport.disconnecting)
        h.reactor.advance(2)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(transport.value(), b"")

    def test_stalledBodyGets408(self):
        """
        A request body that stops making progress for the body timeout is
        answered 408 and the upstream connection dropped.
        """
        h = Harness()
        proto, transport = h.client()
        proto.dataReceived(b"POST / HTTP/1.1\r\nHost: hello\r\nContent-Length: 10\r\n\r\nabc")
        up, upTransport = h.upstream()
        self.assertIn(b"Content-Length: 10\r\n\r\nabc", upTransport.value())
        h.reactor.advance(6)
        proto.dataReceived(b"de")
        h.reactor.advance(6)
        self.assertFalse(transport.disconnecting)
        h.reactor.advance(2)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 408 "))
        self.assertTrue(upTransport.disconnecting or upTransport.disconnected)


class UpstreamTests(SynchronousTestCase):
    def test_headResponseFramedByProxy(self):
        """
        A HEAD response with a Content-Length ends at its header block; the
        next response on the same connection is read whole.
        """
        h = Harness()
        proto, transport = h.client()
        proto.dataReceived(b"HEAD / HTTP/1.1\r\nHost: hello\r\n\r\n")
        up, upTransport = h.upstream()
        up.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
        self.assertIn(b"Content-Length: 1000\r\n", transport.value())
        self.assertTrue(transport.value().endswith(b"\r\n\r\n"))
        transport.clear()
        upTransport.clear()
        proto.dataReceived(b"GET /next HTTP/1.1\r\nHost: hello\r\n\r\n")
        # Same pooled connection: no new connection attempt.
        self.assertEqual(len(h.reactor.tcpClients), 1)
        self.assertTrue(upTransport.value().startswith(b"GET /next HTTP/1.1\r\n"))
        up.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        self.assertTrue(transport.value().endswith(b"\r\n\r\nok"))

    def test_unsolicitedResponseNeverAnswersNextRequest(self):
        """
        Bytes after the end of a response, in the same read, are not taken
        as the answer to the next (pipelined) request: the connection is
        dropped and the next request goes out on a fresh one.
        """
        h = Harness()
        proto, transport = h.client()
        proto.dataReceived(
            b"GET /1 HTTP/1.1\r\nHost: hello\r\n\r\nGET /2 HTTP/1.1\r\nHost: hello\r\n\r\n"
        )
        up, upTransport = h.upstream()
        up.dataReceived(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
            b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nEVIL"
        )
        self.assertTrue(upTransport.disconnecting or upTransport.disconnected)
        self.assertNotIn(b"EVIL", transport.value())
        self.assertEqual(len(h.reactor.tcpClients), 2)
        up2, upTransport2 = h.upstream(1)
        self.assertTrue(upTransport2.value().startswith(b"GET /2 "))
        up2.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\ngood")
        self.assertTrue(transport.value().endswith(b"good"))
        self.assertNotIn(b"EVIL", transport.value())

    def test_bodyAfterHeadResponseDropsConnection(self):
        """
        An upstream that sends a body after a HEAD response is not reused.
        """
        h = Harness()
        proto, transport = h.client()
        proto.dataReceived(b"HEAD / HTTP/1.1\r\nHost: hello\r\n\r\n")
        up, upTransport = h.upstream()
        up.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nbody")
        self.assertTrue(upTransport.disconnecting or upTransport.disconnected)

    def test_slowClientPausesUpstream(self):
        """
        When the client's transport is full, the upstream transport is
        paused, and resumed when the client drains.
        """
        h = Harness()
        proto, transport = h.client()
        proto.dataReceived(b"GET / HTTP/1.1\r\nHost: hello\r\n\r\n")
        up, upTransport = h.upstream()
        up.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")
        # The upstream is registered as producer of the client transport.
        self.assertIs(transport.producer, upTransport)
        transport.producer.pauseProducing()
        self.assertEqual(upTransport.producerState, "paused")
        transport.producer.resumeProducing()
        self.assertEqual(upTransport.producerState, "producing")
        up.dataReceived(b"x" * 90)
        self.assertIsNone(transport.producer)

    def test_slowUpstreamPausesClient(self):
        """
        A request body streams under back-pressure: when the upstream
        transport is full, the client transport stops being read.
        """
        h = Harness()
        proto, transport = h.client()
        proto.dataReceived(b"PUT / HTTP/1.1\r\nHost: hello\r\nContent-Length: 100\r\n\r\nab")
        up, upTransport = h.upstream()
        producer = upTransport.producer
        self.assertIsNotNone(producer)
        producer.pauseProducing()
        self.assertEqual(transport.producerState, "paused")
        producer.resumeProducing()
        self.assertEqual(transport.producerState, "producing")

    def test_staleKeepAliveRetriedOnFreshConnection(self):
        """
        A pooled connection closed by the upstream before answering is
        replaced by a fresh one, transparently.
        """
        h = Harness()
        proto, transport = h.client()
        proto.dataReceived(b"GET /1 HTTP/1.1\r\nHost: hello\r\n\r\n")
        up, upTransport = h.upstream()
        up.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na")
        proto.dataReceived(b"GET /2 HTTP/1.1\r\nHost: hello\r\n\r\n")
        from twisted.internet.error import ConnectionDone
        from twisted.python.failure import Failure

        up.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(len(h.reactor.tcpClients), 2)
        up2, upTransport2 = h.upstream()
        self.assertTrue(upTransport2.value().startswith(b"GET /2 "))
        up2.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nb")
        self.assertTrue(transport.value().endswith(b"\r\n\r\nb"))

    def test_resetMidResponseAbortsClient(self):
        """
        An upstream lost in the middle of a response body cuts the client
        connection (the response cannot be completed honestly).
        """
        h = Harness()
        proto, transport = h.client()
        proto.dataReceived(b"GET / HTTP/1.1\r\nHost: hello\r\n\r\n")
        up, upTransport = h.upstream()
        up.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        from twisted.internet.error import ConnectionLost
        from twisted.python.failure import Failure

        up.connectionLost(Failure(ConnectionLost()))
        self.assertTrue(transport.disconnecting or transport.disconnected)


RETRY_CONFIG = CONFIG.replace(
    "    timeouts: {total: 60s}\n",
    "    timeouts: {total: 60s, perTry: 1s}\n    classifier: {kind: retryableRead5XX}\n",
)


class RetryTests(SynchronousTestCase):
    def test_retryableStatusRetriedOnOtherEndpoint(self):
        """
        A GET answered 503 under retryableRead5XX is sent again, to the
        other endpoint, and the client sees only the second answer.
        """
        h = Harness(RETRY_CONFIG, ports=(9001, 9002))
        proto, transport = h.client()
        proto.dataReceived(b"GET / HTTP/1.1\r\nHost: hello\r\n\r\n")
        first, firstTransport = h.upstream(0)
        first.dataReceived(b"HTTP/1.1 503 Busy\r\nContent-Length: 4\r\n\r\nbusy")
        self.assertEqual(transport.value(), b"")
        self.assertEqual(len(h.reactor.tcpClients), 2)
        ports = [c[1] for c in h.reactor.tcpClients]
        self.assertEqual(sorted(ports), [9001, 9002])
        second, secondTransport = h.upstream(1)
        second.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 200 OK"))
        self.assertTrue(transport.value().endswith(b"\r\n\r\nok"))

    def test_postNotRetried(self):
        """
        A POST answered 503 is not retried: the 503 is the answer.
        """
        h = Harness(RETRY_CONFIG, ports=(9001, 9002))
        proto, transport = h.client()
        proto.dataReceived(b"POST / HTTP/1.1\r\nHost: hello\r\nContent-Length: 1\r\n\r\nx")
        first, firstTransport = h.upstream(0)
        first.dataReceived(b"HTTP/1.1 503 Busy\r\nContent-Length: 4\r\n\r\nbusy")
        self.assertEqual(len(h.reactor.tcpClients), 1)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 503 Busy"))

    def test_perTryTimeoutRetriesIdempotent(self):
        """
        A GET whose first try does not answer within perTry is sent to the
        other endpoint; the slow connection is dropped.
        """
        h = Harness(RETRY_CONFIG, ports=(9001, 9002))
        proto, transport = h.client()
        proto.dataReceived(b"GET / HTTP/1.1\r\nHost: hello\r\n\r\n")
        first, firstTransport = h.upstream(0)
        h.reactor.advance(1.1)
        self.assertTrue(firstTransport.disconnecting or firstTransport.disconnected)
        self.assertEqual(len(h.reactor.tcpClients), 2)
        second, secondTransport = h.upstream(1)
        second.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        self.assertTrue(transport.value().endswith(b"\r\n\r\nok"))

    def test_totalTimeoutIs504WithoutRetry(self):
        """
        When the total timeout passes, the answer is 504 and nothing more
        is tried.
        """
        h = Harness(
            CONFIG.replace("timeouts: {total: 60s}", "timeouts: {total: 2s}"), ports=(9001, 9002)
        )
        proto, transport = h.client()
        proto.dataReceived(b"GET / HTTP/1.1\r\nHost: hello\r\n\r\n")
        h.upstream(0)
        h.reactor.advance(2.01)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 504 "))
        self.assertIn(b"mesh-err: timeout", transport.value())
        self.assertEqual(len(h.reactor.tcpClients), 1)


class StreamingTimeoutTests(SynchronousTestCase):
    CONFIG = CONFIG.replace("timeouts: {total: 60s}", "timeouts: {total: 2s}")

    def test_longBodyWithProgressIsNotCut(self):
        """
        A response that streams for longer than the total timeout, with
        bytes arriving regularly, completes.
        """
        h = Harness(self.CONFIG)
        proto, transport = h.client()
        proto.dataReceived(b"GET / HTTP/1.1\r\nHost: hello\r\n\r\n")
        up, upTransport = h.upstream()
        up.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n")
        for _i in range(10):
            h.reactor.advance(1.5)
            up.dataReceived(b"x")
        self.assertFalse(transport.disconnecting)
        self.assertTrue(transport.value().endswith(b"\r\n\r\n" + b"x" * 10))

    def test_stalledBodyIsCut(self):
        """
        A response body with no byte for a whole total timeout is cut: the
        client connection is aborted (the message cannot be completed).
        """
        h = Harness(self.CONFIG)
        proto, transport = h.client()
        proto.dataReceived(b"GET / HTTP/1.1\r\nHost: hello\r\n\r\n")
        up, upTransport = h.upstream()
        up.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        h.reactor.advance(1.9)
        self.assertFalse(transport.disconnecting or transport.disconnected)
        h.reactor.advance(2.2)
        self.assertTrue(transport.disconnecting or transport.disconnected)
        self.assertTrue(upTransport.disconnecting or upTransport.disconnected)
