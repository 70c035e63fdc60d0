"""
The TCP router: on a memory network and a fake clock
(L{tests.memory_support}) for splicing, connect retries, balancing, failure
accrual, idle timeout, drain and limits; with a fake reactor and string
transports for timers and connection attempts alone; and on real loopback
sockets for what only sockets show: back-pressure from a reader that stops
reading, a half-close, a reset, and a connection refused by the kernel.
"""

import hashlib
import socket

from prometheus_client import CollectorRegistry
from twisted.internet import defer, protocol
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IHalfCloseableProtocol, IPushProducer
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer

from meshproxy.config import parseConfig
from meshproxy.routing.path import Path
from meshproxy.runtime import balancerFactory, makeNamer
from meshproxy.tcp.router import TcpRouter, TcpServerFactory
from meshproxy.telemetry.metrics import MeshMetrics
from meshproxy.transport.stream import SplicePort, spliceEndpoint
from tests.memory_support import MemoryNetwork, seedRandomness

MiB = 1024 * 1024


def routerConfig(services, extra="", destination="/#/static/svc"):
    """
    A parsed config with one static namer and one TCP router C{db} to
    C{/#/static/svc}.

    @param services: the YAML list of C{svc}'s addresses, e.g.
        C{'["127.0.0.1:5432"]'}.
    @param extra: more router keys, as YAML lines indented by four spaces.
    """
    text = (
        'admin: {listen: "tcp:port=0:interface=127.0.0.1"}\n'
        "namers:\n"
        "  - {kind: static, prefix: /#/static, services: {svc: %s}}\n"
        "routers:\n"
        "  - name: db\n"
        "    protocol: tcp\n"
        '    listen: "tcp:0:interface=127.0.0.1"\n'
        "    destination: %s\n" % (services, destination)
    ) + extra
    return parseConfig(text)


def buildRouter(config, reactor):
    """
    The router C{db} of C{config}, with its own registry and metrics.

    @return: C{(router, registry)}.
    """
    namers = {Path.read(n.prefix): makeNamer(n, reactor=reactor) for n in config.namers}
    [rc] = config.routers
    registry = CollectorRegistry()
    holder = []

    def nodes():
        for router in holder:
            for name, node in router.nodes():
                yield router.name, name, node

    metrics = MeshMetrics(registry, nodes, costScale=0.001)
    router = TcpRouter(
        rc,
        namers,
        reactor=reactor,
        metrics=metrics,
        balancerFactory=balancerFactory(rc.loadBalancer, reactor),
    )
    holder.append(router)
    return router, registry


def deadPort():
    """
    A loopback port nothing listens on (connections are refused).
    """
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Echo(protocol.Protocol):
    def connectionMade(self):
        self.factory.connections.append(self)

    def dataReceived(self, data):
        self.transport.write(data)


@implementer(IHalfCloseableProtocol)
class Answerer(protocol.Protocol):
    """
    Reads until the client ends its writing, then answers with the number
    of bytes read and closes.
    """

    def connectionMade(self):
        self.factory.connections.append(self)
        self.received = b""

    def dataReceived(self, data):
        self.received += data

    def readConnectionLost(self):
        self.transport.write(b"got %d bytes" % (len(self.received),))
        self.transport.loseConnection()

    def writeConnectionLost(self):
        pass


@implementer(IPushProducer)
class Source(protocol.Protocol):
    """
    Sends C{factory.total} bytes of a known pattern as fast as the
    connection takes them, as a streaming producer, then closes.
    """

    chunk = bytes(range(256)) * 256  # 64 KiB

    def connectionMade(self):
        self.factory.connections.append(self)
        self.sent = 0
        self.paused = False
        self.transport.registerProducer(self, True)
        self.factory.reactor.callLater(0, self.pump)

    def pump(self):
        total = self.factory.total
        while not self.paused and self.sent < total:
            self.transport.write(self.chunk)
            self.sent += len(self.chunk)
        if self.sent >= total and self.transport.producer is not None:
            self.transport.unregisterProducer()
            self.transport.loseConnection()

    def pauseProducing(self):
        self.paused = True

    def resumeProducing(self):
        self.paused = False
        self.pump()

    def stopProducing(self):
        self.paused = True


@implementer(IHalfCloseableProtocol)
class Client(protocol.Protocol):
    """
    A raw client: keeps what it receives, hashes it when asked, and tells
    when the connection is lost.
    """

    def __init__(self, keep=True):
        self.keep = keep
        self.received = b""
        self.count = 0
        self.digest = hashlib.sha256()
        self.lost = defer.Deferred()
        self.reason = None
        self.eof = False
        self._waiters = []

    def dataReceived(self, data):
        self.count += len(data)
        self.digest.update(data)
        if self.keep:
            self.received += data
        waiters, self._waiters = self._waiters, []
        for n, d in waiters:
            if self.count >= n:
                d.callback(self)
            else:
                self._waiters.append((n, d))

    def waitFor(self, n):
        """
        A Deferred firing once C{n} bytes in all were received.
        """
        d = defer.Deferred()
        if self.count >= n:
            d.callback(self)
        else:
            self._waiters.append((n, d))
        return d

    def readConnectionLost(self):
        self.eof = True
        # Both directions are over once the proxy ends its writing.
        self.transport.loseConnection()

    def writeConnectionLost(self):
        pass

    def connectionLost(self, reason):
        self.reason = reason
        # The exception, not the Failure: a Deferred would errback.
        self.lost.callback(reason.value)


def waitUntil(reactor, condition, interval=0.005):
    """
    A Deferred firing once C{condition()} is true (checked every
    C{interval} seconds; the test's timeout bounds the wait).
    """
    d = defer.Deferred()

    def check():
        if condition():
            d.callback(None)
        else:
            reactor.callLater(interval, check)

    check()
    return d


class MemoryTestCase(SynchronousTestCase):
    """
    A TCP router listening on a memory network, with backends built by the
    test.
    """

    def setUp(self):
        self.network = MemoryNetwork()
        seedRandomness(self)

    def backend(self, protocolClass, **attributes):
        """
        Listen on a free port of the network with a factory of
        C{protocolClass}.

        @return: C{(port number, factory)}; the factory keeps its
            C{connections}.
        """
        factory = protocol.Factory.forProtocol(protocolClass)
        factory.noisy = False
        factory.connections = []
        factory.reactor = self.network
        for key, value in attributes.items():
            setattr(factory, key, value)
        port = self.network.listenTCP(0, factory, interface="127.0.0.1")
        return port.getHost().port, factory

    def router(self, ports, extra="", destination="/#/static/svc"):
        """
        Run the router C{db} to the given backend ports.

        @return: C{(listening port number, router, factory, registry)}.
        """
        services = "[%s]" % ", ".join('"127.0.0.1:%d"' % p for p in ports)
        router, registry = buildRouter(
            routerConfig(services, extra, destination=destination), self.network
        )
        router.start()
        factory = TcpServerFactory(router)
        port = self.network.listenTCP(0, factory, interface="127.0.0.1")

        def cleanup():
            port.stopListening()
            drained = factory.drain(0)
            self.network.flush()
            self.successResultOf(drained)
            router.stop()
            self.network.assertNothingOpen()

        self.addCleanup(cleanup)
        return port.getHost().port, router, factory, registry

    def connect(self, port, client=None):
        """
        Connect a L{Client} (or C{client}) to the proxy.
        """
        return self.network.connectClient(port, client or Client())

    def send(self, client, data):
        """
        Write C{data} on C{client}'s connection and settle the network.
        """
        client.transport.write(data)
        self.network.flush()

    def errors(self, registry, reason):
        return registry.get_sample_value(
            "meshproxy_errors_total", {"router": "db", "reason": reason}
        )

    def endpoints(self, router):
        """
        The endpoints of C{/#/static/svc} in the router's state, by address.
        """
        return {
            e["address"]: e for e in router.state()["boundNames"]["/#/static/svc"]["endpoints"]
        }


class SpliceTests(MemoryTestCase):
    def test_inetDestination(self):
        """
        A destination C{/$/inet/<host>/<port>} splices to that address
        without a namer.
        """
        backendPort, backend = self.backend(Echo)
        port, router, factory, registry = self.router(
            [], destination="/$/inet/127.0.0.1/%d" % (backendPort,)
        )
        client = self.connect(port)
        self.send(client, b"ping")
        self.assertEqual(client.received, b"ping")
        self.assertEqual(
            [(a.host, a.port) for a in self.network.attempts], [("127.0.0.1", backendPort)]
        )

    def test_bytesFlowBothWays(self):
        """
        What the client sends reaches the backend and the backend's answer
        comes back, on one upstream connection per client connection; the
        connection and endpoint counters follow.
        """
        backendPort, backend = self.backend(Echo)
        port, router, factory, registry = self.router([backendPort])
        client = self.connect(port)
        self.send(client, b"hello")
        self.assertEqual(client.received, b"hello")
        self.send(client, b", world")
        self.assertEqual(client.received, b"hello, world")
        self.assertEqual(len(backend.connections), 1)
        state = router.state()
        self.assertEqual(state["protocol"], "tcp")
        self.assertEqual(state["destination"], "/#/static/svc")
        [endpoint] = state["boundNames"]["/#/static/svc"]["endpoints"]
        self.assertEqual(endpoint["address"], "127.0.0.1:%d" % (backendPort,))
        self.assertEqual(endpoint["pending"], 1)
        self.assertEqual(
            endpoint["connections"], {"open": 1, "connecting": 0, "opened": 1, "closed": 0}
        )
        client.transport.loseConnection()
        self.network.flush()
        self.assertIsInstance(self.successResultOf(client.lost), ConnectionDone)
        self.assertEqual(factory.connections, set())
        state = router.state()
        self.assertEqual(state["connections"], {"opened": 1, "closed": 1})
        [endpoint] = state["boundNames"]["/#/static/svc"]["endpoints"]
        self.assertEqual(
            (endpoint["pending"], endpoint["requests"], endpoint["successes"]), (0, 1, 1)
        )
        self.assertEqual(
            endpoint["connections"], {"open": 0, "connecting": 0, "opened": 1, "closed": 1}
        )
        self.assertEqual(
            registry.get_sample_value(
                "meshproxy_server_connections_opened_total", {"router": "db"}
            ),
            1,
        )


class ConnectTests(MemoryTestCase):
    def test_connectFailureRetriedOnAnotherEndpoint(self):
        """
        A refused connection is retried on the other endpoint: every client
        connection is served, the dead endpoint's failures and the retries
        are counted.
        """
        backendPort, backend = self.backend(Echo)
        dead = self.network.unusedPort()
        port, router, factory, registry = self.router(
            [dead, backendPort],
            "    loadBalancer: {kind: roundRobin}\n    failureAccrual: {kind: none}\n",
        )
        # Round robin: of two connections in a row, at least one starts on
        # the dead endpoint.
        for i in range(2):
            client = self.connect(port)
            self.send(client, b"n%d" % (i,))
            self.assertEqual(client.received, b"n%d" % (i,))
        self.assertEqual(len(backend.connections), 2)
        endpoints = self.endpoints(router)
        failures = endpoints["127.0.0.1:%d" % (dead,)]["failures"]
        self.assertIn(failures, (1, 2))
        refused = [a for a in self.network.attempts if a.port == dead]
        self.assertEqual([a.state for a in refused], ["refused"] * failures)
        self.assertEqual(endpoints["127.0.0.1:%d" % (dead,)]["pending"], 0)
        self.assertEqual(endpoints["127.0.0.1:%d" % (backendPort,)]["failures"], 0)
        self.assertEqual(
            registry.get_sample_value(
                "meshproxy_retries_total", {"router": "db", "reason": "connect"}
            ),
            failures,
        )
        self.assertIsNone(self.errors(registry, "upstream-connect"))

    def test_allEndpointsDownClosesTheClient(self):
        """
        When every attempt fails (the first and C{connectRetries} more), the
        client connection is closed without a byte and counted as
        C{upstream-connect}.
        """
        dead = [self.network.unusedPort(), self.network.unusedPort()]
        port, router, factory, registry = self.router(
            dead, "    connectRetries: 2\n    failureAccrual: {kind: none}\n"
        )
        client = self.connect(port)
        self.successResultOf(client.lost)
        self.assertEqual(client.received, b"")
        self.assertEqual(self.errors(registry, "upstream-connect"), 1)
        endpoints = list(self.endpoints(router).values())
        self.assertEqual(sum(e["failures"] for e in endpoints), 3)
        # Both endpoints were tried before one was tried again.
        self.assertEqual(sorted(e["failures"] for e in endpoints), [1, 2])
        self.assertEqual(sum(e["pending"] for e in endpoints), 0)
        self.assertEqual(
            registry.get_sample_value(
                "meshproxy_retries_total", {"router": "db", "reason": "connect"}
            ),
            2,
        )
        self.assertEqual(len(self.network.attempts), 3)

    def test_emptySetClosesTheClient(self):
        """
        A destination without endpoints closes each client at once, counted
        as C{no-endpoint}.
        """
        port, router, factory, registry = self.router([])
        client = self.connect(port)
        self.successResultOf(client.lost)
        self.assertEqual(client.received, b"")
        self.assertEqual(self.errors(registry, "no-endpoint"), 1)
        self.assertEqual(router.state()["connections"], {"opened": 1, "closed": 1})
        self.assertEqual(self.network.attempts, [])

    def test_failuresEjectAnEndpoint(self):
        """
        Connect failures count into failure accrual: after the configured
        number, the endpoint is ejected and not tried any more.
        """
        backendPort, backend = self.backend(Echo)
        dead = self.network.unusedPort()
        port, router, factory, registry = self.router(
            [dead, backendPort],
            "    loadBalancer: {kind: roundRobin}\n"
            "    failureAccrual: {kind: consecutiveFailures, failures: 1, panicShare: 0}\n",
        )
        for _i in range(4):
            client = self.connect(port)
            self.send(client, b"x")
            self.assertEqual(client.received, b"x")
        deadState = self.endpoints(router)["127.0.0.1:%d" % (dead,)]
        self.assertEqual(deadState["state"], "ejected")
        self.assertEqual(deadState["failures"], 1)
        self.assertEqual(len([a for a in self.network.attempts if a.port == dead]), 1)
        self.assertEqual(
            registry.get_sample_value(
                "meshproxy_endpoint_events_total", {"router": "db", "event": "ejected"}
            ),
            1,
        )


class BalancingTests(MemoryTestCase):
    def test_connectionsSpreadOverEndpoints(self):
        """
        With the default balancer, connections held open spread evenly over
        two endpoints (the pending count is the open connections).
        """
        portA, backendA = self.backend(Echo)
        portB, backendB = self.backend(Echo)
        port, router, factory, registry = self.router([portA, portB])
        for _i in range(10):
            client = self.connect(port)
            self.send(client, b"x")
            self.assertEqual(client.received, b"x")
        self.assertEqual((len(backendA.connections), len(backendB.connections)), (5, 5))
        endpoints = router.state()["boundNames"]["/#/static/svc"]["endpoints"]
        self.assertEqual([e["pending"] for e in endpoints], [5, 5])
        self.assertEqual(
            sorted(
                registry.get_sample_value(
                    "meshproxy_endpoint_pending",
                    {"router": "db", "name": "/#/static/svc", "endpoint": "127.0.0.1:%d" % p},
                )
                for p in (portA, portB)
            ),
            [5, 5],
        )

    def test_drainedEndpointGetsNoNewConnections(self):
        """
        A drained endpoint keeps its open connections and gets no new ones;
        undrained, it gets them again.
        """
        portA, backendA = self.backend(Echo)
        portB, backendB = self.backend(Echo)
        port, router, factory, registry = self.router(
            [portA, portB], "    loadBalancer: {kind: roundRobin}\n"
        )
        first = self.connect(port)
        self.send(first, b"1")
        self.assertEqual(first.received, b"1")
        [(used, backend)] = [
            (p, b) for p, b in ((portA, backendA), (portB, backendB)) if b.connections
        ]
        router.drain("/#/static/svc", "127.0.0.1:%d" % (used,))
        for _i in range(3):
            client = self.connect(port)
            self.send(client, b"x")
            self.assertEqual(client.received, b"x")
        self.assertEqual(len(backend.connections), 1)
        self.send(first, b"2")
        self.assertEqual(first.received, b"12")
        router.undrain("/#/static/svc", "127.0.0.1:%d" % (used,))
        for _i in range(2):
            client = self.connect(port)
            self.send(client, b"x")
            self.assertEqual(client.received, b"x")
        self.assertEqual(len(backend.connections), 2)

    def test_drainUnknown(self):
        """
        Draining an unknown bound name or address is a KeyError.
        """
        port, router, factory, registry = self.router([1234])
        self.assertRaises(KeyError, router.drain, "/#/static/other", "127.0.0.1:1234")
        self.assertRaises(KeyError, router.drain, "/#/static/svc", "127.0.0.1:1")
        self.assertRaises(KeyError, router.undrain, "not a path", "127.0.0.1:1234")


class IdleAndDrainTests(MemoryTestCase):
    def test_idleTimeoutClosesAQuietPair(self):
        """
        With C{idleTimeout}, a pair with no bytes either way for that long
        is closed on both sides, not before, and counted as
        C{idle-timeout}.
        """
        backendPort, backend = self.backend(Echo)
        port, router, factory, registry = self.router([backendPort], "    idleTimeout: 200ms\n")
        client = self.connect(port)
        self.send(client, b"x")
        self.assertEqual(client.received, b"x")
        [echo] = backend.connections
        lost = []
        echo.connectionLost = lambda reason: lost.append(reason.value)
        self.network.advance(0.199)
        self.assertNoResult(client.lost)
        self.assertEqual(lost, [])
        self.network.advance(0.001)
        self.assertIsInstance(self.successResultOf(client.lost), ConnectionDone)
        self.assertEqual(len(lost), 1)
        self.assertEqual(self.errors(registry, "idle-timeout"), 1)

    def test_drainLetsPairsFinish(self):
        """
        The factory's drain refuses new connections and fires once the open
        pairs have ended by themselves.
        """
        backendPort, backend = self.backend(Echo)
        port, router, factory, registry = self.router([backendPort])
        client = self.connect(port)
        self.send(client, b"a")
        self.assertEqual(client.received, b"a")
        drained = factory.drain(60)
        self.assertNoResult(drained)
        # New connections are refused...
        late = self.connect(port)
        self.successResultOf(late.lost)
        self.assertEqual(late.received, b"")
        # ...while the open pair still works.
        self.send(client, b"b")
        self.assertNoResult(drained)
        client.transport.loseConnection()
        self.network.flush()
        self.successResultOf(drained)
        self.assertEqual(client.received, b"ab")

    def test_drainAbortsAfterGrace(self):
        """
        Pairs still open when the grace period is over are aborted, both
        sides.
        """
        backendPort, backend = self.backend(Echo)
        port, router, factory, registry = self.router([backendPort])
        client = self.connect(port)
        self.send(client, b"a")
        self.assertEqual(client.received, b"a")
        [echo] = backend.connections
        lost = []
        echo.connectionLost = lambda reason: lost.append(reason.value)
        drained = factory.drain(0.05)
        self.network.advance(0.049)
        self.assertNoResult(drained)
        self.assertNoResult(client.lost)
        self.network.advance(0.001)
        self.successResultOf(drained)
        reason = self.successResultOf(client.lost)
        self.assertNotIsInstance(reason, ConnectionDone)
        self.assertEqual(len(lost), 1)
        self.assertNotIsInstance(lost[0], ConnectionDone)

    def test_maxConnections(self):
        """
        Beyond C{maxConnections}, connections are closed at once and
        counted as C{overloaded}.
        """
        backendPort, backend = self.backend(Echo)
        port, router, factory, registry = self.router([backendPort], "    maxConnections: 1\n")
        client = self.connect(port)
        self.send(client, b"a")
        self.assertEqual(client.received, b"a")
        extra = self.connect(port)
        self.successResultOf(extra.lost)
        self.assertEqual(extra.received, b"")
        self.assertEqual(self.errors(registry, "overloaded"), 1)
        self.send(client, b"b")
        self.assertEqual(client.received, b"ab")


class LoopbackTestCase(TestCase):
    """
    A TCP router listening on loopback, with backends built by the test.
    """

    timeout = 30

    def setUp(self):
        from twisted.internet import reactor

        self.reactor = reactor

    def backend(self, protocolClass, **attributes):
        """
        Listen on a free loopback port with a factory of C{protocolClass}.

        @return: C{(port number, factory)}; the factory keeps its
            C{connections}.
        """
        factory = protocol.Factory.forProtocol(protocolClass)
        factory.noisy = False
        factory.connections = []
        factory.reactor = self.reactor
        for key, value in attributes.items():
            setattr(factory, key, value)
        port = self.reactor.listenTCP(0, factory, interface="127.0.0.1")

        def cleanup():
            for conn in factory.connections:
                conn.transport.abortConnection()
            return port.stopListening()

        self.addCleanup(cleanup)
        return port.getHost().port, factory

    def router(self, ports, extra=""):
        """
        Run the router C{db} to the given backend ports.

        @return: C{(listening port number, router, factory, registry)}.
        """
        services = "[%s]" % ", ".join('"127.0.0.1:%d"' % p for p in ports)
        router, registry = buildRouter(routerConfig(services, extra), self.reactor)
        router.start()
        factory = TcpServerFactory(router)
        # As the process listens (meshproxy.listeners): on a SplicePort.
        port = self.successResultOf(
            spliceEndpoint(TCP4ServerEndpoint(self.reactor, 0, interface="127.0.0.1")).listen(
                factory
            )
        )
        self.assertIsInstance(port, SplicePort)

        @defer.inlineCallbacks
        def cleanup():
            yield port.stopListening()
            yield factory.drain(0)
            router.stop()

        self.addCleanup(cleanup)
        return port.getHost().port, router, factory, registry

    @defer.inlineCallbacks
    def connect(self, port, client=None):
        """
        Connect a L{Client} (or C{client}) to the proxy.
        """
        client = client or Client()
        endpoint = protocol.ClientCreator(self.reactor, lambda: client)
        yield endpoint.connectTCP("127.0.0.1", port)

        def cleanup():
            if client.reason is None:
                client.transport.abortConnection()
                return client.lost

        self.addCleanup(cleanup)
        return client

    def errors(self, registry, reason):
        return registry.get_sample_value(
            "meshproxy_errors_total", {"router": "db", "reason": reason}
        )


class LoopbackSpliceTests(LoopbackTestCase):
    @defer.inlineCallbacks
    def test_largeTransferToAPausedReaderPausesTheUpstream(self):
        """
        A client that stops reading makes the proxy stop reading the
        upstream (its own buffer stays small) and the backend stop sending;
        once it reads again, all 32 MiB arrive in order.
        """
        total = 32 * MiB
        backendPort, backend = self.backend(Source, total=total)
        port, router, factory, registry = self.router([backendPort])
        client = yield self.connect(port, Client(keep=False))
        yield client.waitFor(1)
        client.transport.pauseProducing()
        [down] = factory.connections
        upstream = down.splice.upstream
        [source] = backend.connections
        # The proxy paused its upstream reading for its client's sake...
        yield waitUntil(self.reactor, lambda: upstream.gate.pausedFor("peer"))
        # ...and the backend, its socket buffers full, stopped for good.
        progress = []

        def stalled():
            progress.append(source.sent)
            return len(progress) > 20 and source.paused and progress[-20] == source.sent

        yield waitUntil(self.reactor, stalled)
        self.assertLess(source.sent, total)
        buffered = sum(
            len(t.dataBuffer) - t.offset + sum(map(len, t._tempDataBuffer))
            for t in (down.transport, upstream.transport)
        )
        self.assertLess(buffered, 1 * MiB)
        client.transport.resumeProducing()
        yield client.lost
        self.assertEqual(client.count, total)
        expected = hashlib.sha256()
        for _ in range(total // len(Source.chunk)):
            expected.update(Source.chunk)
        self.assertEqual(client.digest.hexdigest(), expected.hexdigest())
        self.assertTrue(client.eof)

    @defer.inlineCallbacks
    def test_halfClose(self):
        """
        A client that ends its writing still gets the backend's answer,
        sent after the backend saw the end of the request; then both
        connections close cleanly.
        """
        backendPort, backend = self.backend(Answerer)
        port, router, factory, registry = self.router([backendPort])
        client = yield self.connect(port)
        client.transport.write(b"x" * 100000)
        client.transport.loseWriteConnection()
        reason = yield client.lost
        self.assertIsInstance(reason, ConnectionDone)
        self.assertTrue(client.eof)
        self.assertEqual(client.received, b"got 100000 bytes")
        yield waitUntil(self.reactor, lambda: not factory.connections)
        [endpoint] = router.state()["boundNames"]["/#/static/svc"]["endpoints"]
        self.assertEqual(endpoint["pending"], 0)

    @defer.inlineCallbacks
    def test_pairFreedWithoutTheCollector(self):
        """
        Once both connections of a pair are closed, the splice, its ends and
        its upstream attempt hold no reference cycle: the last reference
        gone, they are freed at once, not by the garbage collector.
        """
        import gc
        import weakref

        backendPort, backend = self.backend(Answerer)
        port, router, factory, registry = self.router([backendPort])
        client = yield self.connect(port)
        [down] = factory.connections
        upstream = down.splice.upstream
        refs = [weakref.ref(o) for o in (down, upstream, upstream.transport)]
        del down, upstream
        gc.disable()
        self.addCleanup(gc.enable)
        client.transport.loseWriteConnection()
        yield client.lost
        yield waitUntil(self.reactor, lambda: not factory.connections)
        # (the reactor's current call may hold the last transport a moment)
        yield waitUntil(self.reactor, lambda: all(ref() is None for ref in refs))
        self.assertEqual([ref() for ref in refs], [None, None, None])

    @defer.inlineCallbacks
    def test_largerReadsOnceSpliced(self):
        """
        Both TCP connections of a spliced pair read (and buffer before
        pausing the other side) L{SPLICE_BUFFER} bytes at a time.
        """
        from meshproxy.tcp.splice import SPLICE_BUFFER

        backendPort, backend = self.backend(Echo)
        port, router, factory, registry = self.router([backendPort])
        client = yield self.connect(port)
        client.transport.write(b"ping")
        yield client.waitFor(4)
        [down] = factory.connections
        self.assertEqual(down.transport.bufferSize, SPLICE_BUFFER)
        self.assertEqual(down.splice.upstream.transport.bufferSize, SPLICE_BUFFER)
        self.assertEqual(client.transport.bufferSize, 65536)

    @defer.inlineCallbacks
    def test_resetAbortsTheOtherSide(self):
        """
        A client that resets its connection gets the upstream connection
        aborted too.
        """
        backendPort, backend = self.backend(Echo)
        port, router, factory, registry = self.router([backendPort])
        client = yield self.connect(port)
        client.transport.write(b"ping")
        yield client.waitFor(4)
        [echo] = backend.connections
        lost = defer.Deferred()
        echo.connectionLost = lambda reason: lost.callback(reason.value)
        client.transport.abortConnection()
        reason = yield lost
        self.assertNotIsInstance(reason, ConnectionDone)


class LoopbackConnectTests(LoopbackTestCase):
    @defer.inlineCallbacks
    def test_noRetries(self):
        """
        With C{connectRetries: 0}, one attempt refused by the kernel closes
        the client.
        """
        port, router, factory, registry = self.router(
            [deadPort()], "    connectRetries: 0\n"
        )
        client = yield self.connect(port)
        yield client.lost
        [endpoint] = router.state()["boundNames"]["/#/static/svc"]["endpoints"]
        self.assertEqual(endpoint["failures"], 1)
        self.assertEqual(self.errors(registry, "upstream-connect"), 1)

class FakeTransport(StringTransport):
    """
    A L{StringTransport} that reports its loss to its protocol.
    """

    def __init__(self, proto):
        StringTransport.__init__(self)
        self.proto = proto

    def loseConnection(self):
        if not self.disconnecting:
            self.disconnecting = True
            self.proto.connectionLost(_done())

    def abortConnection(self):
        self.loseConnection()

    def loseWriteConnection(self):
        self.writeClosed = True


def _done():
    from twisted.python.failure import Failure

    return Failure(ConnectionDone())


class TimingTests(SynchronousTestCase):
    """
    Timers and connection attempts, with a fake reactor.
    """

    def setUp(self):
        self.reactor = MemoryReactorClock()

    def router(self, extra="", services='["10.0.0.1:5432", "10.0.0.2:5432"]'):
        router, registry = buildRouter(routerConfig(services, extra), self.reactor)
        router.start()
        self.addCleanup(router.stop)
        return router, TcpServerFactory(router)

    def accept(self, factory):
        proto = factory.buildProtocol(None)
        transport = FakeTransport(proto)
        proto.makeConnection(transport)
        return proto, transport

    def connectLast(self):
        """
        Complete the last connection attempt.
        """
        host, port, connectFactory, timeout, bindAddress = self.reactor.tcpClients[-1]
        upstream = connectFactory.buildProtocol(None)
        transport = FakeTransport(upstream)
        upstream.makeConnection(transport)
        return upstream, transport

    def test_clientReadUpToABoundUntilConnected(self):
        """
        While the upstream connection is made (with the configured connect
        timeout), the client is read up to L{EARLY_BYTES}, then paused
        until connected; what it sent goes first, in order.
        """
        from meshproxy.tcp.splice import EARLY_BYTES

        router, factory = self.router("    timeouts: {connect: 250ms}\n")
        down, downT = self.accept(factory)
        self.assertEqual(downT.producerState, "producing")
        [(host, port, _, timeout, _)] = self.reactor.tcpClients
        self.assertEqual(timeout, 0.25)
        down.dataReceived(b"a" * EARLY_BYTES)
        self.assertEqual(downT.producerState, "producing")
        down.dataReceived(b"b")
        self.assertEqual(downT.producerState, "paused")
        up, upT = self.connectLast()
        self.assertEqual(downT.producerState, "producing")
        self.assertEqual(upT.value(), b"a" * EARLY_BYTES + b"b")
        self.assertIs(downT.producer, up.gate)
        self.assertIs(upT.producer, down.gate)

    def test_bytesBeforeConnectAreSentFirst(self):
        """
        Bytes read before the upstream connection are sent first, in order.
        """
        router, factory = self.router()
        down, downT = self.accept(factory)
        down.dataReceived(b"early")
        up, upT = self.connectLast()
        down.dataReceived(b" late")
        self.assertEqual(upT.value(), b"early late")

    def test_activityKeepsThePairOpen(self):
        """
        The idle timeout counts from the last bytes in either direction.
        """
        router, factory = self.router("    idleTimeout: 10s\n")
        down, downT = self.accept(factory)
        up, upT = self.connectLast()
        for _ in range(5):
            self.reactor.advance(6)
            up.dataReceived(b"x")
        self.assertFalse(downT.disconnecting)
        self.reactor.advance(9.9)
        self.assertFalse(downT.disconnecting)
        self.reactor.advance(0.1)
        self.assertTrue(downT.disconnecting)
        self.assertTrue(upT.disconnecting)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_halfClosePassedOn(self):
        """
        The end of the client's writing ends ours to the upstream; once the
        upstream ends too, both are closed.
        """
        router, factory = self.router()
        down, downT = self.accept(factory)
        up, upT = self.connectLast()
        down.readConnectionLost()
        self.assertTrue(upT.writeClosed)
        self.assertFalse(upT.disconnecting)
        up.dataReceived(b"answer")
        self.assertEqual(downT.value(), b"answer")
        up.readConnectionLost()
        self.assertTrue(downT.disconnecting)
        self.assertTrue(upT.disconnecting)

    def test_connectTimeoutRetriesAnotherEndpoint(self):
        """
        A connect failure tries the endpoint not tried yet.
        """
        from twisted.internet.error import TimeoutError
        from twisted.python.failure import Failure

        router, factory = self.router("    connectRetries: 1\n")
        down, downT = self.accept(factory)
        first = self.reactor.tcpClients[0]
        first[2].clientConnectionFailed(None, Failure(TimeoutError()))
        second = self.reactor.tcpClients[1]
        self.assertNotEqual(first[0], second[0])
        second[2].clientConnectionFailed(None, Failure(TimeoutError()))
        self.assertEqual(len(self.reactor.tcpClients), 2)
        self.assertTrue(downT.disconnecting)

    def test_clientGoneWhileConnecting(self):
        """
        A client lost while its upstream connection is being made stops the
        attempt without judging the endpoint.
        """
        router, factory = self.router()
        down, downT = self.accept(factory)
        [connector] = self.reactor.connectors
        downT.abortConnection()
        self.assertTrue(connector.stoppedConnecting)
        nodes = [node for name, node in router.nodes()]
        self.assertEqual([n.pending for n in nodes], [0, 0])
        self.assertEqual([n.failures for n in nodes], [0, 0])
        self.assertEqual(len(self.reactor.tcpClients), 1)
        self.assertEqual(factory.connections, set())

    def test_stateBeforeStart(self):
        """
        The state of a router shows its destination and no bound name until
        it starts.
        """
        router, registry = buildRouter(
            routerConfig('["10.0.0.1:5432"]'), self.reactor
        )
        self.assertEqual(
            router.state(),
            {
                "protocol": "tcp",
                "listen": "tcp:0:interface=127.0.0.1",
                "destination": "/#/static/svc",
                "identifier": None,
                "rules": "",
                "connections": {"opened": 0, "closed": 0},
                "boundNames": {},
            },
        )
        router.start()
        self.assertEqual(list(router.state()["boundNames"]), ["/#/static/svc"])
        bound = router.state()["boundNames"]["/#/static/svc"]
        # "namer" is the former name of "resolution", kept for one release.
        self.assertEqual((bound["resolution"], bound["namer"]), ("bound", "bound"))
        self.assertEqual(bound["panicking"], False)
        router.stop()
        self.assertEqual(router.state()["boundNames"], {})
