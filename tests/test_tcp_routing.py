"""
The TCP router routed like an HTTP router, on a memory network and a fake
clock (L{tests.memory_support}): names from a fixed destination or the
ClientHello's server name, rewritten by rules (changed live), explain and
state; PROXY headers read from load balancers and sent to upstreams; connect
retries after a backoff and within a budget; and the per-endpoint metrics.
The listener is built as the runtime builds it: the router's factory behind
a L{PreambleFactory}.
"""

import struct

from prometheus_client import CollectorRegistry
from twisted.internet import protocol
from twisted.trial.unittest import SynchronousTestCase

from meshproxy.config import parseConfig
from meshproxy.routing.path import Path
from meshproxy.runtime import balancerFactory, makeNamer
from meshproxy.tcp import router as tcpRouter
from meshproxy.tcp.router import TcpRouter, TcpServerFactory
from meshproxy.telemetry.metrics import MeshMetrics
from meshproxy.transport.preamble import PreambleFactory
from meshproxy.transport.proxyprotocol import formatHeader, parseHeader
from tests.memory_support import MemoryNetwork, seedRandomness
from tests.test_tcp_clienthello import realClientHello
from tests.test_tcp_router import Answerer, Client, Echo

LB = "10.9.8.7"


class Recorder(protocol.Protocol):
    """
    A backend keeping what it receives, answering nothing unless told.
    """

    def connectionMade(self):
        self.factory.connections.append(self)
        self.received = b""
        if getattr(self.factory, "greeting", None):
            self.transport.write(self.factory.greeting)

    def dataReceived(self, data):
        self.received += data


def config(body, services="{}"):
    """
    A config with a static namer and the TCP router C{db} (C{body}: its
    keys after C{name}, C{protocol} and C{listen}, indented by four spaces).
    """
    return parseConfig(
        'admin: {listen: "tcp:0:interface=127.0.0.1"}\n'
        "namers:\n"
        "  - {kind: static, prefix: /#/static, services: %s}\n"
        "routers:\n"
        "  - name: db\n"
        "    protocol: tcp\n"
        '    listen: "tcp:0:interface=127.0.0.1"\n' % (services,) + body
    )


class RouterTestCase(SynchronousTestCase):
    """
    A TCP router from a config text on a memory network, listening as the
    runtime makes it listen, with backends built by the test.
    """

    def setUp(self):
        self.network = MemoryNetwork()
        seedRandomness(self)
        self.addCleanup(self.network.assertNothingOpen)

    def backend(self, protocolClass=Echo, **attributes):
        factory = protocol.Factory.forProtocol(protocolClass)
        factory.noisy = False
        factory.connections = []
        for key, value in attributes.items():
            setattr(factory, key, value)
        port = self.network.listenTCP(0, factory, interface="127.0.0.1")

        def cleanup():
            for conn in factory.connections:
                conn.transport.abortConnection()
            port.stopListening()
            self.network.flush()

        self.addCleanup(cleanup)
        return port.getHost().port, factory

    def router(self, body, services=None):
        """
        Run the router C{db} of C{config(body, services)}.

        @param services: a dict of service name to backend ports.
        @return: the listening port number; the router is C{self.tcp}, the
            factory C{self.factory}, the registry C{self.registry}.
        """
        text = "{%s}" % ", ".join(
            '"%s": [%s]' % (name, ", ".join('"127.0.0.1:%d"' % p for p in ports))
            for name, ports in (services or {}).items()
        )
        parsed = config(body, text)
        namers = {Path.read(n.prefix): makeNamer(n, reactor=self.network) for n in parsed.namers}
        [rc] = parsed.routers
        self.registry = CollectorRegistry()
        holder = []

        def nodes():
            for router in holder:
                for name, node in router.nodes():
                    yield router.name, name, node

        metrics = MeshMetrics(self.registry, nodes, costScale=0.001, process=False)
        self.tcp = TcpRouter(
            rc,
            namers,
            reactor=self.network,
            metrics=metrics,
            balancerFactory=balancerFactory(rc.loadBalancer, self.network),
        )
        holder.append(self.tcp)
        self.tcp.start()
        self.factory = TcpServerFactory(self.tcp)
        front = PreambleFactory(self.factory, self.factory, clock=self.network)
        port = self.network.listenTCP(0, front, interface="127.0.0.1")

        def cleanup():
            port.stopListening()
            drained = self.factory.drain(0)
            self.network.flush()
            self.successResultOf(drained)
            self.tcp.stop()

        self.addCleanup(cleanup)
        return port.getHost().port

    def connect(self, port, client=None, peerHost="127.0.0.1"):
        client = client or Client()
        self.network.connectClient(port, client, peerHost)
        self.addCleanup(self.closeClient, client)
        return client

    def closeClient(self, client):
        if client.reason is None:
            client.transport.abortConnection()
            self.network.flush()

    def send(self, client, data):
        client.transport.write(data)
        self.network.flush()

    def errors(self, reason):
        return self.registry.get_sample_value(
            "meshproxy_errors_total", {"router": "db", "reason": reason}
        )

    def sample(self, metric, **labels):
        return self.registry.get_sample_value(metric, dict(router="db", **labels))


class RulesTests(RouterTestCase):
    def test_rulesRewriteTheDestination(self):
        """
        A destination that is a logical name goes where the rules send it.
        """
        port, backend = self.backend()
        listen = self.router(
            "    destination: /svc/pg\n    rules: /svc => /#/static;\n", {"pg": [port]}
        )
        client = self.connect(listen)
        self.send(client, b"ping")
        self.assertEqual(client.received, b"ping")
        self.assertEqual(list(self.tcp.state()["boundNames"]), ["/#/static/pg"])

    def test_rulesChangedLive(self):
        """
        Rules replaced (as the admin API's store does) route the next
        connections; a spliced one stays with its upstream.
        """
        a, backendA = self.backend(Recorder)
        b, backendB = self.backend(Recorder)
        listen = self.router(
            "    destination: /svc/pg\n    rules: /svc/pg => /#/static/a;\n",
            {"a": [a], "b": [b]},
        )
        first = self.connect(listen)
        self.send(first, b"1")
        table = self.tcp.rules
        text = "/svc/pg => /#/static/b;"
        table.setRules(table.validateRules(text), text)
        second = self.connect(listen)
        self.send(second, b"2")
        self.send(first, b"1")
        self.assertEqual([c.received for c in backendA.connections], [b"11"])
        self.assertEqual([c.received for c in backendB.connections], [b"2"])
        self.assertEqual(table.recentNames(), ["/svc/pg"])

    def test_alternationFallsThrough(self):
        """
        C{|} falls through to the next bound name when the first has no
        endpoint.
        """
        port, backend = self.backend()
        listen = self.router(
            "    destination: /svc/pg\n"
            "    rules: /svc/pg => /#/static/gone | /#/static/pg;\n",
            {"pg": [port], "gone": []},
        )
        client = self.connect(listen)
        self.send(client, b"x")
        self.assertEqual(client.received, b"x")

    def test_noRoute(self):
        """
        A name the rules send nowhere closes the connection, counted.
        """
        listen = self.router("    destination: /svc/pg\n    rules: /svc => /#/static;\n")
        client = self.connect(listen)
        self.assertIsNotNone(client.reason)
        self.assertEqual(self.errors("no-route"), 1)


class SNITests(RouterTestCase):
    SNI = (
        "    identifier: {kind: sni, prefix: /svc%s}\n"
        "    rules: /svc => /#/static;\n"
    )

    def sniRouter(self, default="", **services):
        extra = ", default: %s" % (default,) if default else ""
        ports = {}
        backends = {}
        for name, cls in services.items():
            port, factory = self.backend(cls)
            ports[name] = [port]
            backends[name] = factory
        return self.router(self.SNI % (extra,), ports), backends

    def test_routedByServerNameUntouched(self):
        """
        Each ClientHello goes to the backend of its server name, and every
        byte reaches it as the client sent it (the proxy terminates no TLS).
        """
        listen, backends = self.sniRouter(**{"a.example": Recorder, "b.example": Recorder})
        for name in ("a.example", "b.example", "A.Example"):
            hello = realClientHello(name)
            client = self.connect(listen)
            self.send(client, hello[:10])
            self.send(client, hello[10:] + b"after")
            conn = backends[name.lower()].connections[-1]
            self.assertEqual(conn.received, hello + b"after")
        self.assertEqual(len(backends["a.example"].connections), 2)
        state = self.tcp.state()
        self.assertEqual(state["identifier"], {"kind": "sni", "prefix": "/svc", "default": None})
        self.assertEqual(
            sorted(state["boundNames"]), ["/#/static/a.example", "/#/static/b.example"]
        )

    def test_answerFlowsBack(self):
        listen, backends = self.sniRouter(**{"a.example": Echo})
        client = self.connect(listen)
        hello = realClientHello("a.example")
        self.send(client, hello)
        self.assertEqual(client.received, hello)

    def test_noServerNameUsesTheDefault(self):
        listen, backends = self.sniRouter(default="/svc/b.example", **{"b.example": Recorder})
        client = self.connect(listen)
        hello = realClientHello(None)
        self.send(client, hello)
        self.assertEqual(backends["b.example"].connections[0].received, hello)

    def test_noServerNameRefused(self):
        """
        Without a default, a ClientHello without SNI closes the connection,
        counted as C{no-sni}.
        """
        listen, backends = self.sniRouter(**{"a.example": Recorder})
        client = self.connect(listen)
        self.send(client, realClientHello(None))
        self.assertIsNotNone(client.reason)
        self.assertEqual(self.errors("no-sni"), 1)
        self.assertEqual(backends["a.example"].connections, [])

    def test_unknownNameRefused(self):
        listen, backends = self.sniRouter(**{"a.example": Recorder})
        client = self.connect(listen)
        self.send(client, realClientHello("c.example"))
        self.assertIsNotNone(client.reason)
        self.assertEqual(self.errors("no-route"), 1)

    def test_notTLSRefused(self):
        """
        A client speaking another protocol is closed at its first byte,
        counted.
        """
        listen, backends = self.sniRouter(**{"a.example": Recorder})
        client = self.connect(listen)
        self.send(client, b"GET / HTTP/1.1\r\n")
        self.assertIsNotNone(client.reason)
        self.assertEqual(self.errors("client-hello-invalid"), 1)
        self.assertEqual(backends["a.example"].connections, [])

    def test_oversizedRefused(self):
        port, backend = self.backend(Recorder)
        listen = self.router(
            "    identifier: {kind: sni, maxClientHelloBytes: 512}\n"
            "    rules: /svc => /#/static;\n",
            {"a.example": [port]},
        )
        client = self.connect(listen)
        padding = b"\x00\x15" + struct.pack("!H", 600) + b"\x00" * 600
        hello = realClientHello("a.example")
        # The same ClientHello with a padding extension of 600 bytes.
        body = hello[9:]
        extensionsAt = _extensionsOffset(body)
        length = struct.unpack("!H", body[extensionsAt : extensionsAt + 2])[0]
        body = (
            body[:extensionsAt]
            + struct.pack("!H", length + len(padding))
            + body[extensionsAt + 2 :]
            + padding
        )
        message = b"\x01" + len(body).to_bytes(3, "big") + body
        self.send(client, b"\x16\x03\x01" + struct.pack("!H", len(message)) + message)
        self.assertIsNotNone(client.reason)
        self.assertEqual(self.errors("client-hello-oversized"), 1)

    def test_clientHelloTimeout(self):
        """
        A client that does not complete its ClientHello in time is closed.
        """
        listen, backends = self.sniRouter(**{"a.example": Recorder})
        client = self.connect(listen)
        self.send(client, realClientHello("a.example")[:20])
        self.network.advance(4.9)
        self.assertIsNone(client.reason)
        self.network.advance(0.2)
        self.assertIsNotNone(client.reason)
        self.assertEqual(self.errors("client-hello-timeout"), 1)

    def test_boundNamesBounded(self):
        """
        Names from clients do not grow the bound names without bound: the
        unknown ones go first.
        """
        self.patch(tcpRouter, "MAX_DESTINATIONS", 3)
        listen, backends = self.sniRouter(**{"a.example": Recorder})
        for i in range(6):
            client = self.connect(listen)
            self.send(client, realClientHello("n%d.example" % (i,)))
        client = self.connect(listen)
        self.send(client, realClientHello("a.example"))
        self.assertLessEqual(len(self.tcp.destinations()), 3)
        self.assertIn("/#/static/a.example", self.tcp.state()["boundNames"])

    def test_explain(self):
        """
        Explain takes a server name (C{host}) or a logical name, and says
        what the policy decides of a C{CONNECT}.
        """
        listen, backends = self.sniRouter(**{"a.example": Recorder})
        result = self.tcp.explain(host="A.example")
        self.assertEqual(result["name"], "/svc/a.example")
        self.assertEqual(result["destination"], "/#/static/a.example")
        [endpoint] = result["endpoints"]["/#/static/a.example"]
        self.assertIn("score", endpoint)
        self.assertIsNone(result["policy"])
        self.assertEqual(self.tcp.explain(name="/svc/b")["destination"], "/#/static/b")
        for bad in [dict(path="/x"), dict(host="a b"), dict(), dict(name="/a", host="a"),
                    dict(host="a.example", method="GET"), dict(host="a.example", peer="x")]:
            self.assertRaises(ValueError, self.tcp.explain, **bad)

    def test_policyDecidesOnTheLogicalName(self):
        """
        The access policy sees the SNI name and the bound name.
        """
        port, backend = self.backend(Recorder)
        listen = self.router(
            self.SNI % ("",)
            + "    policy: {default: allow, rules: [{names: [/svc/b.example], action: deny}]}\n",
            {"a.example": [port], "b.example": [port]},
        )
        allowed = self.connect(listen)
        self.send(allowed, realClientHello("a.example"))
        denied = self.connect(listen)
        self.send(denied, realClientHello("b.example"))
        self.assertIsNone(allowed.reason)
        self.assertIsNotNone(denied.reason)
        self.assertEqual(self.errors("forbidden"), 1)
        self.assertFalse(self.tcp.explain(host="b.example")["policy"]["allowed"])


def _extensionsOffset(body):
    pos = 34
    pos += 1 + body[pos]
    pos += 2 + struct.unpack("!H", body[pos : pos + 2])[0]
    pos += 1 + body[pos]
    return pos


class ProxySendTests(RouterTestCase):
    def test_v1BeforeTheClientsBytes(self):
        """
        With C{proxyProtocol.send: v1}, each upstream connection starts
        with a header naming the client and the address it connected to.
        """
        port, backend = self.backend(Recorder)
        listen = self.router(
            "    destination: /#/static/pg\n    proxyProtocol: {send: v1}\n", {"pg": [port]}
        )
        client = self.connect(listen)
        self.send(client, b"hello")
        [conn] = backend.connections
        header = parseHeader(conn.received)
        self.assertEqual(header.version, 1)
        self.assertEqual(header.source, client.transport.getHost())
        self.assertEqual(header.destination.port, listen)
        self.assertEqual(conn.received[header.length :], b"hello")

    def test_perBoundName(self):
        """
        A bound name's own C{proxyProtocol.send} wins over the router's.
        """
        a, backendA = self.backend(Recorder)
        b, backendB = self.backend(Recorder)
        listen = self.router(
            "    identifier: {kind: sni}\n"
            "    rules: /svc => /#/static;\n"
            "    proxyProtocol: {send: v1}\n"
            "    boundNames:\n"
            "      /#/static/b.example: {proxyProtocol: {send: v2}}\n"
            "      /#/static/c.example: {proxyProtocol: {send: none}}\n",
            {"a.example": [a], "b.example": [b], "c.example": [b]},
        )
        for name in ("a.example", "b.example", "c.example"):
            self.send(self.connect(listen), realClientHello(name))
        self.assertEqual(parseHeader(backendA.connections[0].received).version, 1)
        self.assertEqual(parseHeader(backendB.connections[0].received).version, 2)
        self.assertEqual(backendB.connections[1].received[:1], b"\x16")

    def test_sentBeforeAServerFirstGreeting(self):
        """
        The header is sent at once, even when the client says nothing
        before the server does.
        """
        port, backend = self.backend(Recorder, greeting=b"220 ready\r\n")
        listen = self.router(
            "    destination: /#/static/pg\n    proxyProtocol: {send: v2}\n", {"pg": [port]}
        )
        client = self.connect(listen)
        self.assertEqual(client.received, b"220 ready\r\n")
        self.assertEqual(parseHeader(backend.connections[0].received).version, 2)


class ProxyAcceptTests(RouterTestCase):
    ACCEPT = (
        "    destination: /#/static/pg\n"
        "    proxyProtocol: {accept: true, from: [%s/32]%s, send: v2}\n" % (LB, "%s")
    )

    def accepting(self, extra="", backendClass=Recorder, **attributes):
        port, backend = self.backend(backendClass, **attributes)
        listen = self.router(self.ACCEPT % (extra,), {"pg": [port]})
        return listen, backend

    def test_headerFromTheBalancer(self):
        """
        A trusted peer's header gives the client's address: the upstream's
        own header carries it, and the header's bytes do not reach the
        upstream.
        """
        listen, backend = self.accepting()
        lb = self.connect(listen, peerHost=LB)
        sent = formatHeader(1, _addr("203.0.113.5", 40000), _addr("198.51.100.1", 5432))
        self.send(lb, sent[:7])
        self.assertEqual(backend.connections, [])
        self.send(lb, sent[7:] + b"payload")
        [conn] = backend.connections
        header = parseHeader(conn.received)
        self.assertEqual(header.source, _addr("203.0.113.5", 40000))
        self.assertEqual(header.destination, _addr("198.51.100.1", 5432))
        self.assertEqual(conn.received[header.length :], b"payload")

    def test_policySeesTheClient(self):
        """
        The access policy judges the header's client, not the balancer.
        """
        listen, backend = self.accepting(
            "", Recorder
        )
        self.tcp.policy = _policy(["203.0.113.0/24"])
        allowed = self.connect(listen, peerHost=LB)
        self.send(allowed, formatHeader(2, _addr("203.0.113.5", 1), _addr("10.0.0.1", 2)))
        denied = self.connect(listen, peerHost=LB)
        self.send(denied, formatHeader(2, _addr("192.0.2.5", 1), _addr("10.0.0.1", 2)))
        self.assertIsNone(allowed.reason)
        self.assertIsNotNone(denied.reason)
        self.assertEqual(self.errors("forbidden"), 1)

    def test_headerFromAnotherPeerRefused(self):
        """
        A peer outside C{from} may not choose its address: its header
        closes the connection; its ordinary bytes pass.
        """
        listen, backend = self.accepting()
        spoofer = self.connect(listen, peerHost="192.0.2.1")
        self.send(spoofer, b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n")
        self.assertIsNotNone(spoofer.reason)
        self.assertEqual(self.errors("proxy-protocol-refused"), 1)
        plain = self.connect(listen, peerHost="192.0.2.1")
        self.send(plain, b"P")
        self.send(plain, b"ING")
        conn = backend.connections[-1]
        header = parseHeader(conn.received)
        self.assertEqual(header.source.host, "192.0.2.1")
        self.assertEqual(conn.received[header.length :], b"PING")

    def test_anotherPeerServerFirst(self):
        """
        A peer outside C{from} is spliced at once: a server that speaks
        first is heard without the client saying anything.
        """
        listen, backend = self.accepting(backendClass=Recorder, greeting=b"hi")
        client = self.connect(listen, peerHost="192.0.2.1")
        self.assertEqual(client.received, b"hi")

    def test_requiredHeaderMissing(self):
        listen, backend = self.accepting(", required: true")
        lb = self.connect(listen, peerHost=LB)
        self.send(lb, b"GET / HTTP/1.1\r\n")
        self.assertIsNotNone(lb.reason)
        self.assertEqual(self.errors("proxy-protocol-missing"), 1)
        self.assertEqual(backend.connections, [])

    def test_optionalHeaderMissing(self):
        """
        From a trusted peer without C{required}, a connection without a
        header is the peer's own.
        """
        listen, backend = self.accepting()
        lb = self.connect(listen, peerHost=LB)
        self.send(lb, b"hello")
        conn = backend.connections[0]
        header = parseHeader(conn.received)
        self.assertEqual(header.source.host, LB)
        self.assertEqual(conn.received[header.length :], b"hello")

    def test_optionalHeaderServerFirst(self):
        """
        From a trusted peer that sends nothing, the connection goes on
        without a header once the header timeout has passed.
        """
        listen, backend = self.accepting(", timeout: 2s", greeting=b"hi")
        lb = self.connect(listen, peerHost=LB)
        self.assertEqual(backend.connections, [])
        self.network.advance(2)
        self.assertEqual(lb.received, b"hi")

    def test_invalidHeader(self):
        listen, backend = self.accepting()
        lb = self.connect(listen, peerHost=LB)
        self.send(lb, b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n")
        self.assertIsNotNone(lb.reason)
        self.assertEqual(self.errors("proxy-protocol-invalid"), 1)

    def test_incompleteHeaderTimesOut(self):
        listen, backend = self.accepting(", timeout: 1s")
        lb = self.connect(listen, peerHost=LB)
        self.send(lb, b"PROXY TCP4 ")
        self.network.advance(1)
        self.assertIsNotNone(lb.reason)
        self.assertEqual(self.errors("proxy-protocol-timeout"), 1)

    def test_localHeaderKeepsThePeer(self):
        """
        A LOCAL header (the balancer's health check) leaves the peer's own
        address.
        """
        listen, backend = self.accepting()
        lb = self.connect(listen, peerHost=LB)
        self.send(lb, formatHeader(2, None, None) + b"x")
        conn = backend.connections[0]
        header = parseHeader(conn.received)
        self.assertEqual(header.source.host, LB)

    def test_headerThenClientHello(self):
        """
        Routing by SNI behind a balancer: the header first, then the
        ClientHello, which reaches the upstream untouched.
        """
        port, backend = self.backend(Recorder)
        listen = self.router(
            "    identifier: {kind: sni}\n"
            "    rules: /svc => /#/static;\n"
            "    proxyProtocol: {accept: true, from: [%s/32]}\n" % (LB,),
            {"a.example": [port]},
        )
        lb = self.connect(listen, peerHost=LB)
        hello = realClientHello("a.example")
        self.send(lb, formatHeader(2, _addr("203.0.113.5", 1), _addr("10.0.0.1", 2)) + hello)
        self.assertEqual(backend.connections[0].received, hello)


class RetryTests(RouterTestCase):
    def test_backoffBeforeAnotherAttempt(self):
        """
        After a refused connection, the next attempt waits the backoff.
        """
        dead = self.network.unusedPort()
        port, backend = self.backend(Recorder)
        listen = self.router(
            "    destination: /#/static/pg\n"
            "    loadBalancer: {kind: roundRobin}\n"
            "    retries: {backoffMin: 1s, backoffMax: 1s}\n",
            {"pg": [dead, port]},
        )
        clients = [self.connect(listen) for _ in range(2)]
        self.assertEqual(len(backend.connections), 1)
        self.network.advance(0.9)
        self.assertEqual(len(backend.connections), 1)
        self.network.advance(0.1)
        self.assertEqual(len(backend.connections), 2)
        self.assertTrue(all(c.reason is None for c in clients))
        self.assertEqual(self.registry.get_sample_value(
            "meshproxy_retries_total", {"router": "db", "reason": "connect"}), 1)

    def test_budgetSpent(self):
        """
        With no retry budget, a refused connection is not tried again.
        """
        dead = self.network.unusedPort()
        listen = self.router(
            "    destination: /#/static/pg\n"
            "    retries: {budget: {percent: 0, minPerSecond: 0}}\n",
            {"pg": [dead, self.network.unusedPort()]},
        )
        client = self.connect(listen)
        self.assertIsNotNone(client.reason)
        self.assertEqual(len(self.network.attempts), 1)
        self.assertEqual(self.registry.get_sample_value(
            "meshproxy_retries_total", {"router": "db", "reason": "budget-exhausted"}), 1)
        self.assertEqual(self.errors("upstream-connect"), 1)

    def test_clientGoneDuringTheBackoff(self):
        dead = self.network.unusedPort()
        listen = self.router(
            "    destination: /#/static/pg\n"
            "    retries: {backoffMin: 5s, backoffMax: 5s}\n",
            {"pg": [dead, self.network.unusedPort()]},
        )
        client = self.connect(listen)
        # (a client that only ends its writing may still want the answer:
        # a reset is what makes it go)
        client.transport.abortConnection()
        self.network.flush()
        self.assertIsNotNone(client.reason)
        self.assertEqual(self.network.getDelayedCalls(), [])
        self.assertEqual(self.factory.connections, set())
        self.assertEqual(len(self.network.attempts), 1)


class MetricsTests(RouterTestCase):
    def test_perEndpointFamilies(self):
        """
        Connections opened, closed and active, bytes both ways, durations
        and connect failures, per endpoint.
        """
        dead = self.network.unusedPort()
        port, backend = self.backend(Answerer)
        listen = self.router(
            "    destination: /#/static/pg\n    loadBalancer: {kind: roundRobin}\n",
            {"pg": [dead, port]},
        )
        labels = dict(name="/#/static/pg", endpoint="127.0.0.1:%d" % (port,))
        client = self.connect(listen)
        self.send(client, b"x" * 100)
        self.assertEqual(self.sample("meshproxy_tcp_connections_active", **labels), 1)
        self.assertEqual(self.sample("meshproxy_tcp_bytes_total", direction="in", **labels), 100)
        self.network.advance(2)
        client.transport.loseWriteConnection()
        self.network.flush()
        self.assertIsNotNone(client.reason)
        self.assertEqual(self.sample("meshproxy_tcp_connections_opened_total", **labels), 1)
        self.assertEqual(self.sample("meshproxy_tcp_connections_closed_total", **labels), 1)
        self.assertEqual(self.sample("meshproxy_tcp_connections_active", **labels), 0)
        self.assertEqual(self.sample("meshproxy_tcp_bytes_total", direction="in", **labels), 100)
        self.assertEqual(
            self.sample("meshproxy_tcp_bytes_total", direction="out", **labels),
            len(b"got 100 bytes"),
        )
        self.assertEqual(
            self.sample("meshproxy_tcp_connection_duration_seconds_bucket", le="1.0", **labels), 0
        )
        self.assertEqual(
            self.sample("meshproxy_tcp_connection_duration_seconds_bucket", le="5.0", **labels), 1
        )
        self.assertEqual(
            self.sample(
                "meshproxy_tcp_connect_failures_total",
                name="/#/static/pg",
                endpoint="127.0.0.1:%d" % (dead,),
                reason="refused",
            ),
            1,
        )


def _addr(host, port):
    from twisted.internet.address import IPv4Address

    return IPv4Address("TCP", host, port)


def _policy(callers):
    from meshproxy.config.security import PolicyConfig
    from meshproxy.policy import Policy

    return Policy.active(
        PolicyConfig.model_validate(
            {"default": "deny", "rules": [{"callers": callers, "action": "allow"}]}
        )
    )
