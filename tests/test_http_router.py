"""
Tests for the HTTP router's routing decisions, without connections.
"""

from prometheus_client import CollectorRegistry
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from meshproxy.balancing.interfaces import IBalancer
from meshproxy.config import parseConfig
from meshproxy.discovery.endpoints import Endpoint
from meshproxy.discovery.static import StaticNamer
from meshproxy.http.message import Request
from meshproxy.http.router import HttpRouter
from meshproxy.routing.path import Path
from meshproxy.runtime import balancerFactory
from meshproxy.telemetry.metrics import MeshMetrics

ALTERNATION = """\
routers:
  - name: web
    listen: "tcp:4140"
    rules: "/svc => /#/static | /#/other;"
    loadBalancer: {kind: roundRobin}
"""


def makeRouter(config):
    reactor = MemoryReactorClock()
    routerConfig = parseConfig(config).routers[0]
    namers = {
        Path.read("/#/static"): StaticNamer(
            Path.read("/#/static"),
            {"hello": [Endpoint("127.0.0.1", 9001), Endpoint("127.0.0.1", 9002)]},
        ),
        Path.read("/#/other"): StaticNamer(Path.read("/#/other"), {}),
    }
    return HttpRouter(
        routerConfig,
        namers,
        reactor=reactor,
        metrics=MeshMetrics(CollectorRegistry()),
        balancerFactory=balancerFactory(routerConfig.loadBalancer, reactor),
    )


def request(host):
    r = Request(b"GET", b"/", "1.1", [(b"Host", host)])
    r.host = host
    return r


class AlternationTests(SynchronousTestCase):
    def test_roundRobinThroughAlternationSplitsEvenly(self):
        """
        Asking whether the first alternative has endpoints does not move
        the round-robin cursor: two endpoints share requests 50/50.
        """
        router = makeRouter(ALTERNATION)
        ports = []
        for _ in range(10):
            client, override = router.route(request(b"hello"), False)
            node = client.balancer.pickAvoiding(None)
            ports.append(node.endpoint.port)
        self.assertEqual(sorted(ports), [9001] * 5 + [9002] * 5)

    def test_balancersProvideTheInterface(self):
        for kind in ("roundRobin", "leastLoaded", "ewma"):
            router = makeRouter(ALTERNATION.replace("roundRobin", kind))
            client, override = router.route(request(b"hello"), False)
            self.assertTrue(verifyObject(IBalancer, client.balancer))
            self.assertTrue(client.balancer.hasEligible())


class LatencyTests(SynchronousTestCase):
    def test_latencyIsTakenAtTheResponseHead(self):
        """
        The balancer's latency sample is the time to the response head: a
        body that takes 5 s to stream (a slow client) does not make the
        endpoint look slow.
        """
        from tests.test_http_server import Harness

        h = Harness()
        proto, transport = h.client()
        proto.dataReceived(b"GET / HTTP/1.1\r\nHost: hello\r\n\r\n")
        up, upTransport = h.upstream()
        h.reactor.advance(0.01)
        up.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n01234")
        h.reactor.advance(5)
        up.dataReceived(b"56789")
        self.assertTrue(transport.value().endswith(b"0123456789"))
        [(name, node)] = list(h.router.nodes())
        self.assertAlmostEqual(node.cost, 10.0, delta=0.5)
        self.assertEqual((node.pending, node.successes), (0, 1))

    def test_failedTryLatencyIsItsWholeTime(self):
        """
        A try that fails before any answer (a per-try timeout) is sampled
        over its whole time.
        """
        from tests.test_http_server import CONFIG, Harness

        h = Harness(CONFIG.replace("timeouts: {total: 60s}", "timeouts: {total: 60s, perTry: 2s}"))
        proto, transport = h.client()
        proto.dataReceived(b"GET / HTTP/1.1\r\nHost: hello\r\n\r\n")
        up, upTransport = h.upstream()
        h.reactor.advance(2)
        [(name, node)] = list(h.router.nodes())
        self.assertAlmostEqual(node.cost, 2000.0, delta=1)
        # The timed-out try is a failure; its retry is in flight.
        self.assertEqual((node.failures, node.pending), (1, 1))
