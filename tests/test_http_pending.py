"""
A request to a bound name whose namer has not answered yet waits, within
its total timeout, for the first answer; on a memory reactor with a namer
the tests answer for.
"""

from prometheus_client import CollectorRegistry
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from meshproxy.balancing import bound as boundModule
from meshproxy.config import parseConfig
from meshproxy.discovery.endpoints import Addr, Endpoint, Observable
from meshproxy.http.interfaces import IDestination
from meshproxy.http.router import HttpRouter
from meshproxy.http.server import ServerProtocol
from meshproxy.routing.path import Path
from meshproxy.runtime import balancerFactory
from meshproxy.telemetry.metrics import MeshMetrics

CONFIG = """\
namers:
  - {kind: static, prefix: /#/ctl, services: {}}
routers:
  - name: web
    listen: "tcp:4140"
    identifier: {kind: host}
    rules: "%s"
    timeouts: {total: 10s}
"""


class ControlledNamer:
    """
    A namer whose every name stays pending until the test sets it.

    @ivar observables: the L{Observable} of each service bound.
    """

    def __init__(self):
        self.prefix = Path.read("/#/ctl")
        self.observables = {}

    def bind(self, service):
        observable = self.observables.get(service)
        if observable is None:
            observable = self.observables[service] = Observable()
        return observable

    def set(self, service, addr):
        self.bind(service).set(addr)


def endpoints(*ports):
    return Addr.bound(frozenset(Endpoint("127.0.0.1", port) for port in ports))


class Harness:
    """
    A router on a memory reactor whose namer the test answers for.
    """

    def __init__(self, rules="/svc => /#/ctl;"):
        self.reactor = MemoryReactorClock()
        routerConfig = parseConfig(CONFIG % (rules,)).routers[0]
        self.namer = ControlledNamer()
        self.metrics = MeshMetrics(CollectorRegistry())
        self.router = HttpRouter(
            routerConfig,
            {self.namer.prefix: self.namer},
            reactor=self.reactor,
            metrics=self.metrics,
            balancerFactory=balancerFactory(routerConfig.loadBalancer, self.reactor),
        )
        self.settings = routerConfig.server

    def request(self, host=b"users"):
        """
        A client connection that sent one GET for C{host}.

        @return: the server protocol and the client's transport.
        """
        proto = ServerProtocol(self.router, self.settings, self.reactor)
        transport = StringTransport(peerAddress=IPv4Address("TCP", "10.0.0.7", 5555))
        proto.makeConnection(transport)
        proto.dataReceived(b"GET /x HTTP/1.1\r\nHost: " + host + b"\r\n\r\n")
        return proto, transport

    def upstream(self, index=-1):
        """
        Complete upstream connection attempt number C{index}.

        @return: the upstream's port, protocol and transport.
        """
        host, port, factory, timeout, bindAddress = self.reactor.tcpClients[index]
        proto = factory.buildProtocol(None)
        transport = StringTransport()
        proto.makeConnection(transport)
        return port, proto, transport

    def client(self, name="/#/ctl/users"):
        return self.router.clients.find(name)


def mesh(transport):
    """
    The status and C{mesh-err} of what the client received.
    """
    head = transport.value().split(b"\r\n\r\n", 1)[0]
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ")[1])
    err = None
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.lower() == b"mesh-err":
            err = value.strip()
    return status, err


class WaitTests(SynchronousTestCase):
    def test_waitsThenSucceeds(self):
        """
        A request to a name whose namer has not answered waits, with no
        answer and no connection attempt, and goes to the endpoints once
        they come.
        """
        h = Harness()
        proto, transport = h.request()
        h.reactor.advance(3)
        self.assertEqual(transport.value(), b"")
        self.assertEqual(h.reactor.tcpClients, [])
        self.assertEqual(h.client().waiters, 1)
        h.namer.set("users", endpoints(9001))
        self.assertEqual(h.client().waiters, 0)
        port, up, upTransport = h.upstream()
        self.assertEqual(port, 9001)
        self.assertTrue(upTransport.value().startswith(b"GET /x HTTP/1.1\r\n"))
        up.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        self.assertEqual(mesh(transport), (200, None))
        self.assertTrue(transport.value().endswith(b"ok"))

    def test_manyWaitersAllProceed(self):
        """
        Every request waiting for the name proceeds on its first answer.
        """
        h = Harness()
        transports = [h.request()[1] for _ in range(3)]
        self.assertEqual(h.client().waiters, 3)
        h.namer.set("users", endpoints(9001))
        self.assertEqual(len(h.reactor.tcpClients), 3)
        for index in range(3):
            up = h.upstream(index)[1]
            up.dataReceived(b"HTTP/1.1 204 No Content\r\n\r\n")
        self.assertEqual([mesh(t) for t in transports], [(204, None)] * 3)

    def test_resolvedEmptyIsNoEndpoint(self):
        """
        A name that resolves to no endpoint is answered 503 C{no-endpoint}
        once the answer comes.
        """
        h = Harness()
        proto, transport = h.request()
        self.assertEqual(transport.value(), b"")
        h.namer.set("users", Addr.bound(frozenset()))
        self.assertEqual(mesh(transport), (503, b"no-endpoint"))

    def test_resolvedNegIsNoRoute(self):
        """
        A name the namer says does not exist is answered 503 C{no-route}
        once the answer comes.
        """
        h = Harness()
        proto, transport = h.request()
        h.namer.set("users", Addr.neg())
        self.assertEqual(mesh(transport), (503, b"no-route"))

    def test_firstLookupFailedIsNoEndpoint(self):
        """
        A first answer that is a failure ends the wait: 503 C{no-endpoint}.
        """
        h = Harness()
        proto, transport = h.request()
        h.namer.set("users", Addr.failed("SERVFAIL"))
        self.assertEqual(mesh(transport), (503, b"no-endpoint"))

    def test_noAnswerBeforeTotalTimeout(self):
        """
        The wait is bounded by the total timeout: 504 C{timeout}, and the
        waiter is removed.
        """
        h = Harness()
        proto, transport = h.request()
        h.reactor.advance(9.9)
        self.assertEqual(transport.value(), b"")
        h.reactor.advance(0.2)
        self.assertEqual(mesh(transport), (504, b"timeout"))
        self.assertIn(b"waiting for /#/ctl/users to resolve", transport.value())
        self.assertEqual(h.client().waiters, 0)
        # A late answer finds nobody waiting.
        h.namer.set("users", endpoints(9001))
        self.assertEqual(h.reactor.tcpClients, [])

    def test_clientGoneReleasesWaiter(self):
        """
        A client that goes away while waiting leaves no waiter behind, and
        the name's answer then starts nothing.
        """
        h = Harness()
        proto, transport = h.request()
        self.assertEqual(h.client().waiters, 1)
        proto.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(h.client().waiters, 0)
        h.namer.set("users", endpoints(9001))
        self.assertEqual(h.reactor.tcpClients, [])

    def test_waitersAreCapped(self):
        """
        Beyond L{MAX_WAITERS} requests waiting for one name, more are
        answered 503 C{overloaded} at once; the others still proceed.
        """
        self.patch(boundModule, "MAX_WAITERS", 2)
        h = Harness()
        first = h.request()[1]
        second = h.request()[1]
        third = h.request()[1]
        self.assertEqual(mesh(third), (503, b"overloaded"))
        self.assertIn(b"waiting for /#/ctl/users to resolve", third.value())
        self.assertEqual((first.value(), second.value()), (b"", b""))
        h.namer.set("users", endpoints(9001))
        self.assertEqual(len(h.reactor.tcpClients), 2)

    def test_waitingNameIsNotEvicted(self):
        """
        A pending name with requests waiting is kept when unknown names are
        dropped (its waiters would otherwise never hear of the answer).
        """
        h = Harness()
        proto, transport = h.request()
        h.router.clients._evictUnknown()
        self.assertEqual(h.client().waiters, 1)
        h.namer.set("users", endpoints(9001))
        self.assertEqual(len(h.reactor.tcpClients), 1)

    def test_resolvedNameDoesNotWait(self):
        """
        A name already answered for is routed at once (no wait, no waiter).
        """
        h = Harness()
        h.namer.set("users", endpoints(9001))
        proto, transport = h.request()
        self.assertEqual(len(h.reactor.tcpClients), 1)
        self.assertEqual(h.client().waiters, 0)

    def test_destinationProvidesWhenResolved(self):
        h = Harness()
        h.request()
        self.assertTrue(verifyObject(IDestination, h.client()))
        self.assertTrue(h.client().unresolved)


class AlternativeTests(SynchronousTestCase):
    """
    A pending branch of a C{|} alternative is waited for, as Finagle does;
    once it answers, the rules are evaluated again.
    """

    RULES = "/svc => /#/ctl/primary | /#/ctl/fallback;"

    def test_pendingFirstBranchWaitedFor(self):
        """
        The first branch is chosen while pending, not skipped: once it has
        endpoints the request goes there.
        """
        h = Harness(self.RULES)
        h.namer.set("fallback", endpoints(9002))
        proto, transport = h.request()
        self.assertEqual(h.reactor.tcpClients, [])
        h.namer.set("primary", endpoints(9001))
        self.assertEqual(h.upstream()[0], 9001)

    def test_emptyFirstBranchFallsThroughAfterWait(self):
        """
        A first branch that resolves empty falls through to the next one.
        """
        h = Harness(self.RULES)
        h.namer.set("fallback", endpoints(9002))
        proto, transport = h.request()
        h.namer.set("primary", Addr.bound(frozenset()))
        self.assertEqual(h.upstream()[0], 9002)

    def test_negFirstBranchFallsThroughToPendingSecond(self):
        """
        After the first branch's answer, a second pending branch is waited
        for in turn.
        """
        h = Harness(self.RULES)
        proto, transport = h.request()
        h.namer.set("primary", Addr.neg())
        self.assertEqual(transport.value(), b"")
        self.assertEqual(h.client("/#/ctl/fallback").waiters, 1)
        h.namer.set("fallback", endpoints(9002))
        self.assertEqual(h.upstream()[0], 9002)
