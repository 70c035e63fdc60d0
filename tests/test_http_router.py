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
from meshproxy.http.message import ProxyError, Request
from meshproxy.http.router import _HOSTS_KEPT, HttpRouter
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


class HostNameTests(SynchronousTestCase):
    """
    A router whose identifier names requests by host keeps the name of
    each Host value it has seen (bounded), with the same answers as the
    identifier gives.
    """

    def test_sameNameAsTheIdentifier(self):
        """
        A Host value seen before routes as the identifier names it; a
        different spelling of the same host gets the same name.
        """
        router = makeRouter(ALTERNATION)
        for host in (b"hello", b"hello", b"Hello:80", b"Hello:80"):
            client, override = router.route(request(host), False)
            self.assertEqual(str(client.boundName.id), "/#/static/hello")
        self.assertEqual(
            router._byHost,
            {b"hello": Path.read("/svc/hello"), b"Hello:80": Path.read("/svc/hello")},
        )

    def test_badHostNotKept(self):
        """
        A Host value the identifier refuses is refused every time, and not
        kept.
        """
        router = makeRouter(ALTERNATION)
        for _ in range(2):
            with self.assertRaises(ProxyError) as caught:
                router.route(request(b"bad host"), False)
            self.assertEqual(caught.exception.reason, "no-identity")
        self.assertEqual(router._byHost, {})

    def test_longNameRefused(self):
        """
        A name longer than MAX_NAME_LENGTH (a Host of thousands of valid
        characters) is refused with no-identity, and nothing of it is
        kept: not its Host, its delegation or a bound name.
        """
        from meshproxy.http.router import MAX_NAME_LENGTH

        router = makeRouter(ALTERNATION)
        # "/svc/" and the Host: one character over.
        host = b"h" * (MAX_NAME_LENGTH - len("/svc/") + 1)
        with self.assertRaises(ProxyError) as caught:
            router.route(request(host), False)
        self.assertEqual((caught.exception.status, caught.exception.reason), (400, "no-identity"))
        self.assertIn("longer than %d" % (MAX_NAME_LENGTH,), caught.exception.detail)
        self.assertEqual(router._byHost, {})
        self.assertEqual(list(router.clients), [])
        # At the bound, the name is routed (no service of that name: 503).
        with self.assertRaises(ProxyError) as caught:
            router.route(request(host[:-1]), False)
        self.assertEqual(caught.exception.reason, "no-route")

    def test_absoluteFormNotKept(self):
        """
        An absolute-form request is named by its target's authority, not
        by the names kept for Host values.
        """
        router = makeRouter(ALTERNATION)
        router.route(request(b"hello"), False)
        r = Request(b"GET", b"http://other/x", "1.1", [(b"Host", b"hello")])
        r.host = b"hello"
        with self.assertRaises(ProxyError) as caught:
            router.route(r, False)
        # (No namer knows "other": the name tried was the target's.)
        self.assertEqual(caught.exception.detail, "No route for /svc/other.")

    def test_bounded(self):
        """
        At most C{_HOSTS_KEPT} Host values are kept: when full, the kept
        names are forgotten.
        """
        router = makeRouter(ALTERNATION)
        for i in range(_HOSTS_KEPT + 1):
            try:
                router.route(request(b"h%d" % (i,)), False)
            except ProxyError:
                pass
        self.assertLessEqual(len(router._byHost), _HOSTS_KEPT)
        self.assertIn(b"h%d" % (_HOSTS_KEPT,), router._byHost)

    def test_otherIdentifiersNotKept(self):
        """
        With an identifier that reads more than the Host value (here the
        path), nothing is kept.
        """
        config = ALTERNATION.replace(
            "    loadBalancer", "    identifier: {kind: path}\n    loadBalancer"
        )
        router = makeRouter(config)
        self.assertIsNone(router._byHost)
