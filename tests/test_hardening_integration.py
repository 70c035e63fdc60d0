"""
Attacks on the HTTP router over loopback, as an attacker would send them:
each test asserts the answer, that nothing (or nothing past a limit)
reached an upstream, that the process's memory stays flat after 20
attackers, and that a normal request on another connection still gets
through.

The proxy runs in the test process, so this process's RSS stands for the
proxy's memory; the attackers write with back-pressure (a push producer),
so their own unsent bytes never pile up in this process either.
"""

import time

from twisted.internet import defer
from twisted.internet.utils import getProcessOutputAndValue
from twisted.logger import Logger
from twisted.trial.unittest import SkipTest, TestCase

from tests.stress_support import MemoryProbe, MiB, StreamProducer, connectTo
from tests.support import (
    BackendFactory,
    RawClient,
    connectClient,
    exchange,
    listenBackend,
    startProxy,
)

_log = Logger()

#: Attackers sent at once.
ATTACKERS = 20

#: What each attacker tries to push (the proxy stops reading long before).
ATTACK_BYTES = 16 * MiB

#: RSS growth allowed after the attack: a few MiB of allocator noise, where
#: unbounded buffering would take 20 x 16 MiB.
GROWTH_LIMIT = 8 * MiB

CONFIG = """\
admin: {listen: "tcp:port=0:interface=127.0.0.1"}
namers:
  - {kind: static, prefix: /#/static, services: {hello: ["127.0.0.1:%(good)d"],
                                                  evil: ["127.0.0.1:%(evil)d"]}}
routers:
  - name: web
    listen: "tcp:0:interface=127.0.0.1"
    rules: "/svc => /#/static;"
    timeouts: {total: 20s}
    trust: {callers: [127.0.0.0/8]}
"""


class _Attacker(RawClient):
    """
    A raw client whose connection's end can be awaited.
    """


class AttackTestCase(TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def proxy(self, evilHandler=None):
        """
        Start a good backend (C{hello}), an evil one (C{evil}) and the proxy.

        @return: the proxy's port.
        """
        self.good = BackendFactory()
        self.evil = BackendFactory(rawHandler=evilHandler)
        good = yield listenBackend(self, self.good)
        evil = yield listenBackend(self, self.evil)
        port, _, self.runtime = yield startProxy(
            self, None, config=CONFIG % {"good": good, "evil": evil}
        )
        return port

    @defer.inlineCallbacks
    def normalRequestGetsThrough(self, port):
        """
        A plain GET on a new connection is answered 200 by the good backend,
        in well under a second.
        """
        started = time.monotonic()
        client = yield exchange(self, port, b"GET /ok HTTP/1.1\r\nHost: hello\r\n\r\n")
        elapsed = time.monotonic() - started
        self.assertEqual(client.responses[0].status, 200)
        self.assertLess(elapsed, 1.0)

    def errors(self, reason):
        metrics = self.runtime.routers["web"].metrics
        return metrics._errors.get(("web", reason), 0)


class TrailerAttackTests(AttackTestCase):
    @defer.inlineCallbacks
    def test_hugeTrailersFromTwentyClients(self):
        """
        Twenty clients each stream a 16 MiB trailer after a chunked body:
        each gets 431 once past the head limit, the upstream sees no byte
        of any trailer, and memory stays flat.
        """
        port = yield self.proxy()
        probe = MemoryProbe()
        attackers = []
        for _i in range(ATTACKERS):
            client = yield connectTo(self, port, _Attacker())
            client.transport.write(
                b"POST /up HTTP/1.1\r\nHost: hello\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"3\r\nabc\r\n0\r\nX-Big: "
            )
            producer = StreamProducer(client.transport, ATTACK_BYTES)
            producer.start()
            attackers.append((client, producer))
        yield defer.DeferredList([client.closed for client, _ in attackers])
        growth = probe.growth
        _log.info("{test}: {memory}", test=self.id(), memory=probe.describe())
        for client, producer in attackers:
            self.assertEqual(client.responses[0].status, 431, client.raw[:200])
            self.assertEqual(client.responses[0].header(b"mesh-err"), b"header-too-large")
            self.assertLess(producer.produced, ATTACK_BYTES)
        for request in self.good.requests:
            self.assertEqual(request.trailers, [])
        self.assertLess(growth, GROWTH_LIMIT, probe.describe())
        yield self.normalRequestGetsThrough(port)

    @defer.inlineCallbacks
    def test_forbiddenTrailersNotForwarded(self):
        port = yield self.proxy()
        client = yield exchange(
            self,
            port,
            b"POST /up HTTP/1.1\r\nHost: hello\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3\r\nabc\r\n0\r\nHost: evil\r\nmesh-dtab: /svc => /$/inet/127.0.0.1/1\r\n"
            b"Authorization: x\r\nX-Checksum: 42\r\n\r\n",
        )
        self.assertEqual(client.responses[0].status, 200)
        [request] = self.good.requests
        self.assertEqual(request.trailers, [(b"X-Checksum", b"42")])


class UpstreamHeadAttackTests(AttackTestCase):
    @defer.inlineCallbacks
    def test_hugeResponseHeadsFromEvilUpstream(self):
        """
        An upstream answering twenty requests each with a 16 MiB head: each
        request gets 502 upstream-protocol (not retried), the clients see no
        byte of those heads, and memory stays flat.
        """
        producers = []

        def answer(proto, data):
            if getattr(proto, "answering", False):
                return
            proto.answering = True
            proto.transport.write(b"HTTP/1.1 200 OK\r\nX-Big: ")
            producer = StreamProducer(proto.transport, ATTACK_BYTES)
            producers.append(producer)
            producer.start()

        port = yield self.proxy(answer)
        probe = MemoryProbe()
        clients = []
        for _i in range(ATTACKERS):
            client = yield connectClient(self, port)
            client.transport.write(b"GET /x HTTP/1.1\r\nHost: evil\r\n\r\n")
            clients.append(client)
        yield defer.DeferredList([c.waitFor(1) for c in clients])
        growth = probe.growth
        _log.info("{test}: {memory}", test=self.id(), memory=probe.describe())
        for client in clients:
            [response] = client.responses
            self.assertEqual(response.status, 502, client.raw[:200])
            self.assertEqual(response.header(b"mesh-err"), b"upstream-protocol")
            self.assertNotIn(b"X-Big", client.raw)
        self.assertEqual(len(producers), ATTACKERS)
        for producer in producers:
            self.assertLess(producer.produced, ATTACK_BYTES)
        self.assertLess(growth, GROWTH_LIMIT, probe.describe())
        yield self.normalRequestGetsThrough(port)

    @defer.inlineCallbacks
    def test_endlessInterimResponses(self):
        def answer(proto, data):
            proto.transport.write(b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" * 50)

        port = yield self.proxy(answer)
        client = yield exchange(self, port, b"GET /x HTTP/1.1\r\nHost: evil\r\n\r\n")
        response = client.responses[-1]
        self.assertEqual(response.status, 502)
        self.assertEqual(response.header(b"mesh-err"), b"upstream-protocol")
        yield self.normalRequestGetsThrough(port)


class DestinationTests(AttackTestCase):
    @defer.inlineCallbacks
    def secretListener(self):
        """
        A listener no route leads to: what an SSRF would reach.
        """
        self.secret = BackendFactory()
        port = yield listenBackend(self, self.secret)
        return port

    @defer.inlineCallbacks
    def test_trustedOverrideCannotReachAnAddress(self):
        port = yield self.proxy()
        secret = yield self.secretListener()
        client = yield exchange(
            self,
            port,
            b"GET / HTTP/1.1\r\nHost: hello\r\n"
            b"mesh-dtab: /svc/hello => /$/inet/127.0.0.1/%d\r\n\r\n" % (secret,),
        )
        self.assertEqual(client.responses[0].status, 400)
        self.assertEqual(client.responses[0].header(b"mesh-err"), b"bad-dtab")
        self.assertEqual(self.secret.connections, [])
        self.assertEqual(self.secret.requests, [])
        self.assertEqual(self.good.requests, [])
        self.assertEqual(self.errors("dtab-override-inet"), 1)

    @defer.inlineCallbacks
    def test_absoluteFormRoutesAndForwardsTheAuthority(self):
        port = yield self.proxy()
        client = yield exchange(
            self, port, b"GET http://hello/x HTTP/1.1\r\nHost: internal.example\r\n\r\n"
        )
        self.assertEqual(client.responses[0].status, 200)
        [request] = self.good.requests
        self.assertEqual(request.url, b"/x")
        self.assertEqual(request.header(b"host"), b"hello")

    @defer.inlineCallbacks
    def test_userinfoRefused(self):
        port = yield self.proxy()
        client = yield exchange(
            self, port, b"GET http://hello@evil/ HTTP/1.1\r\nHost: hello\r\n\r\n"
        )
        self.assertEqual(client.responses[0].status, 400)
        self.assertEqual(self.good.requests, [])
        self.assertEqual(self.evil.connections, [])

    @defer.inlineCallbacks
    def test_http2RequestLine(self):
        """
        An HTTP/2.0 request line in HTTP/1 syntax gets 505 (the HTTP/2
        preface starts HTTP/2: tests/test_http2_integration.py).
        """
        port = yield self.proxy()
        client = yield exchange(self, port, b"GET / HTTP/2.0\r\nHost: hello\r\n\r\n")
        self.assertEqual(client.responses[0].status, 505)
        self.assertEqual(self.good.requests, [])


class BacklogTests(AttackTestCase):
    @defer.inlineCallbacks
    def test_listenersHaveADeepBacklog(self):
        """
        The router's listener is bound with a backlog of 1024 (as the kernel
        reports it for the listening socket), not Twisted's 50.
        """
        port = yield self.proxy()
        out, err, code = yield getProcessOutputAndValue(
            "/bin/sh", ("-c", "ss -ltnH 'sport = :%d' 2>&1 || true" % (port,))
        )
        fields = out.split()
        if len(fields) < 3 or not fields[2].isdigit():
            raise SkipTest("ss cannot show listening sockets here: %r" % (out[:200],))
        self.assertEqual(int(fields[2]), 1024)
