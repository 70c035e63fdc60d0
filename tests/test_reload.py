"""
Reloading the config file (L{meshproxy.reload}): the plan a reload makes
from two configs, and its application to a running proxy on a memory
network (L{tests.memory_support}) on a fake clock: what is kept, swapped in
place, rebuilt beside the old, added and drained; a bad file, or a listener
that cannot be bound, changing nothing; the rules and policies changed
through the admin API; C{POST /admin/reload}; and the C{SIGHUP} handler.

Real processes, sockets and steady traffic are in
L{tests.test_reload_integration}.
"""

import json
import os
import signal

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from meshproxy.config import loadConfig, parseConfig
from meshproxy.reload import (
    ADDED,
    KEPT,
    REBUILT,
    REMOVED,
    REPLACED,
    UPDATED,
    PolicySlot,
    ReloadError,
    RulesSlot,
    planReload,
)
from meshproxy.routing.table import IRuleTable
from meshproxy.runtime import buildServices
from tests.memory_support import (
    EPOCH,
    MemoryAdminClient,
    MemoryNetwork,
    backends,
    delayedHandler,
    resultOf,
    seedRandomness,
)
from tests.resilience_support import requestBytes
from tests.support import RawClient, okHandler

# -- configs ---------------------------------------------------------------------------------------

BASE = """\
admin:
  listen: "tcp:0:interface=127.0.0.1"
%(admin)s
namers:
  - {kind: static, prefix: /#/static, services: {a: ["127.0.0.1:%(a)d"], b: ["127.0.0.1:%(b)d"]}}
%(namers)s
routers:
  - name: web
    listen: "%(listen)s"
    identifier: {kind: host}
    rules: "%(rules)s"
    timeouts: {total: %(total)s}
%(web)s
%(routers)s
"""


def config(a=9001, b=9002, rules="/svc/hello => /#/static/a;", total="5s", listen=None,
           admin="", namers="", web="", routers=""):
    """
    A config with a static namer (C{a}, C{b} at the given ports), a router
    C{web} identifying by host, and more as given (YAML text, indented).
    """
    return BASE % {
        "a": a,
        "b": b,
        "rules": rules,
        "total": total,
        "listen": listen or "tcp:0:interface=127.0.0.1",
        "admin": admin,
        "namers": namers,
        "web": web,
        "routers": routers,
    }


def parse(text):
    return parseConfig(text)


WEB2 = """\
  - name: web2
    listen: "tcp:0:interface=127.0.0.1"
    identifier: {kind: host}
    rules: "/svc/hello => /#/static/b;"
"""


# -- the plan ------------------------------------------------------------------------------------


class PlanTests(SynchronousTestCase):
    """
    L{planReload} compares two configs: by namer prefix, by router name, and
    by listen string for the listeners.
    """

    def test_sameConfigChangesNothing(self):
        plan = planReload(parse(config()), parse(config()))
        self.assertFalse(plan.changed)
        self.assertEqual(plan.namers, {"/#/static": KEPT})
        self.assertEqual(plan.routers, {"web": KEPT})
        self.assertEqual(plan.takeovers, {"web": "web"})
        self.assertEqual((plan.closed, plan.restart, plan.problems), ((), (), ()))

    def test_rulesAndPolicyOnlyAreSwappedInPlace(self):
        """
        A router whose rules (or policy) alone changed is updated in place.
        """
        plan = planReload(parse(config()), parse(config(rules="/svc/hello => /#/static/b;")))
        self.assertTrue(plan.changed)
        self.assertEqual(plan.routers, {"web": UPDATED})
        plan = planReload(
            parse(config()), parse(config(web="    policy: {default: deny}"))
        )
        self.assertEqual(plan.routers, {"web": UPDATED})

    def test_otherSettingsRebuildOnTheKeptListener(self):
        plan = planReload(parse(config()), parse(config(total="7s")))
        self.assertEqual(plan.routers, {"web": REBUILT})
        self.assertEqual(plan.takeovers, {"web": "web"})
        self.assertEqual(plan.closed, ())

    def test_namersChangedRebuildEveryRouter(self):
        """
        A changed namer is replaced, and every router (whose rules and
        bound names may read it) is rebuilt.
        """
        plan = planReload(parse(config()), parse(config(b=9003)))
        self.assertEqual(plan.namers, {"/#/static": REPLACED})
        self.assertEqual(plan.routers, {"web": REBUILT})
        extra = "  - {kind: static, prefix: /#/more, services: {}}"
        plan = planReload(parse(config()), parse(config(namers=extra)))
        self.assertEqual(plan.namers, {"/#/static": KEPT, "/#/more": ADDED})
        self.assertEqual(plan.routers, {"web": REBUILT})
        plan = planReload(parse(config(namers=extra)), parse(config()))
        self.assertEqual(plan.namers, {"/#/static": KEPT, "/#/more": REMOVED})

    def test_listenChangedClosesTheOldListener(self):
        plan = planReload(
            parse(config(listen="tcp:4150:interface=127.0.0.1")),
            parse(config(listen="tcp:4151:interface=127.0.0.1")),
        )
        self.assertEqual(plan.routers, {"web": ADDED})
        self.assertEqual(plan.takeovers, {})
        self.assertEqual(plan.closed, ("web",))

    def test_addedAndRemovedRouters(self):
        plan = planReload(parse(config()), parse(config(routers=WEB2)))
        self.assertEqual(plan.routers, {"web": KEPT, "web2": ADDED})
        plan = planReload(parse(config(routers=WEB2)), parse(config()))
        self.assertEqual(plan.routers, {"web": KEPT})
        self.assertEqual(plan.closed, ("web2",))

    def test_renamedRouterTakesItsListenerOver(self):
        """
        A fixed listen string left by one router and taken by another (a
        renamed router) hands the listener over.
        """
        old = parse(config(listen="tcp:4150:interface=127.0.0.1"))
        new = parse(
            config(listen="tcp:4150:interface=127.0.0.1").replace("name: web", "name: www")
        )
        plan = planReload(old, new)
        self.assertEqual(plan.routers, {"www": REBUILT})
        self.assertEqual(plan.takeovers, {"www": "web"})
        self.assertEqual(plan.closed, ())

    def test_anyPortIsNotHandedOver(self):
        """
        C{tcp:0} strings are each a port of their own: a renamed router on
        one gets a new listener.
        """
        plan = planReload(parse(config()), parse(config().replace("name: web", "name: www")))
        self.assertEqual(plan.routers, {"www": ADDED})
        self.assertEqual(plan.closed, ("web",))

    def test_protocolOfAKeptListenerCannotChange(self):
        old = parse(config(routers="""\
  - name: db
    protocol: tcp
    listen: "tcp:5433:interface=127.0.0.1"
    destination: /#/static/a
"""))
        new = parse(config(routers="""\
  - name: db
    protocol: http
    listen: "tcp:5433:interface=127.0.0.1"
"""))
        plan = planReload(old, new)
        self.assertEqual(
            plan.problems,
            (
                "routers[1].protocol: the listener tcp:5433:interface=127.0.0.1 stays, and its"
                " protocol (tcp) cannot change without a restart: restart, or give the router"
                " another listen string",
            ),
        )

    def test_restartKeysListed(self):
        """
        The admin API's settings and telemetry need a restart; the drain
        grace applies.
        """
        old = parse(config())
        new = parse(config(admin='  token: "t0ken"\n  shutdownGrace: 3s'))
        plan = planReload(old, new)
        self.assertEqual(plan.restart, ("admin.token",))
        self.assertEqual(plan.grace, 3.0)
        self.assertTrue(plan.changed)
        new = parse(config() + "telemetry: {accessLog: {path: '-'}}\n")
        plan = planReload(old, new)
        self.assertEqual(plan.restart, ("telemetry",))
        self.assertFalse(plan.changed)

    def test_rulesAllowInetRebuildsHttpRoutersOnly(self):
        tcp = """\
  - name: db
    protocol: tcp
    listen: "tcp:0:interface=127.0.0.1"
    destination: /#/static/a
"""
        plan = planReload(
            parse(config(routers=tcp)),
            parse(config(routers=tcp, admin="  rulesAllowInet: false")),
        )
        self.assertEqual(plan.routers, {"web": REBUILT, "db": KEPT})


# -- a running proxy on a memory network ----------------------------------------------------------


class Proxy:
    """
    meshproxy's services built by C{buildServices} from a config file, under
    one C{MultiService} as under twistd, on a L{MemoryNetwork}; the file
    can be rewritten and reloaded. Stopped at the end of the test.
    """

    def __init__(self, testCase, text, network=None):
        self.testCase = testCase
        self.network = network if network is not None else MemoryNetwork()
        seedRandomness(testCase)
        directory = os.path.abspath(testCase.mktemp())
        os.mkdir(directory)
        self.path = os.path.join(directory, "mesh.yaml")
        self.write(text)
        self.runtime, services = buildServices(
            loadConfig(self.path),
            reactor=self.network,
            configPath=self.path,
            wallClock=lambda: EPOCH + self.network.seconds(),
        )
        self.top = MultiService()
        for service in services:
            service.setServiceParent(self.top)
        self.top.privilegedStartService()
        self.top.startService()
        self.network.flush()
        self.admin = MemoryAdminClient(self.network, self.port("admin"))
        self._stopped = None
        testCase.addCleanup(self._cleanUp)

    def _cleanUp(self):
        self.admin.close()
        d = self.stop()
        self.network.advance(self.runtime.shutdownGrace + 1)
        resultOf(d, "the services to stop")
        self.network.assertNothingOpen()

    def stop(self):
        if self._stopped is None:
            self._stopped = self.top.stopService()
            self.network.flush()
        return self._stopped

    def write(self, text):
        with open(self.path, "w") as f:
            f.write(text)

    def reload(self, text=None):
        """
        Rewrite the file (if C{text} is given) and reload it.

        @return: the summary.
        @raise ReloadError: when refused.
        """
        if text is not None:
            self.write(text)
        d = self.runtime.reload()
        self.network.flush()
        return resultOf(d, "the reload")

    def refused(self, text=None):
        """
        Rewrite the file, reload, and return the L{ReloadError}.
        """
        if text is not None:
            self.write(text)
        d = self.runtime.reload()
        self.network.flush()
        return self.testCase.failureResultOf(d, ReloadError).value

    def port(self, name="web"):
        """
        The port a router (or C{"admin"}) listens on.
        """
        if name == "admin":
            [listener] = [s for s in self.top if getattr(s, "owner", None) == "admin"]
        else:
            listener = self.runtime.parts[name].listener
        return listener.port.getHost().port

    def router(self, name="web"):
        return self.runtime.routers[name]

    def connect(self, name="web"):
        client = RawClient()
        self.network.connectClient(self.port(name), client)
        return client

    def get(self, client, path=b"/", host=b"hello"):
        """
        Send one keep-alive GET on C{client} and settle the network.

        @return: its response, or L{None} if none came (yet).
        """
        before = len(client.responses)
        client.transport.write(requestBytes(b"GET", path, host, (), None, close=False))
        self.network.flush()
        return client.responses[-1] if len(client.responses) > before else None


def upstream(response):
    return response.header(b"x-upstream")


class ReloadTestCase(SynchronousTestCase):
    """
    Two upstreams, C{a} and C{b}, on the memory network.
    """

    def setUp(self):
        self.network = MemoryNetwork()
        [(self.a, self.portA), (self.b, self.portB)] = backends(
            self.network, okHandler(b"a"), okHandler(b"b")
        )

    def proxy(self, **kwargs):
        self.config = lambda **more: config(a=self.portA, b=self.portB, **{**kwargs, **more})
        return Proxy(self, self.config(), network=self.network)


class InPlaceTests(ReloadTestCase):
    """
    Rules and policies are swapped in place: the same router, the same
    connections, the next request routes with the new value.
    """

    def test_rulesChangeTheNextRequestOfAKeptAliveConnection(self):
        proxy = self.proxy()
        router = proxy.router()
        client = proxy.connect()
        self.assertEqual(upstream(proxy.get(client)), b"a")
        summary = proxy.reload(self.config(rules="/svc/hello => /#/static/b;"))
        self.assertEqual(summary["routers"]["updated"], ["web"])
        self.assertEqual(summary["rules"], {"web": "from the file"})
        self.assertIs(proxy.router(), router)
        response = proxy.get(client)
        self.assertEqual((response.status, upstream(response)), (200, b"b"))
        self.assertEqual(len(client.responses), 2)
        self.assertFalse(client.transport.disconnected)

    def test_policyChange(self):
        proxy = self.proxy()
        client = proxy.connect()
        self.assertEqual(proxy.get(client).status, 200)
        proxy.reload(self.config(web="    policy: {default: deny}"))
        self.assertEqual(proxy.get(client).status, 403)

    def test_sameFileNothingChanged(self):
        proxy = self.proxy()
        router = proxy.router()
        summary = proxy.reload()
        self.assertEqual(summary["changed"], False)
        self.assertEqual(summary["message"], "nothing changed")
        self.assertIs(proxy.router(), router)


def streamingHandler(clock, pieces, interval=1.0):
    """
    A handler answering 200 with a body of C{pieces} bytes, the head and
    the first byte at once, then one byte every C{interval} seconds.
    """

    def handle(proto, request):
        proto.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\nx" % (pieces,))
        sent = [1]

        def more():
            proto.transport.write(b"x")
            sent[0] += 1
            if sent[0] < pieces:
                clock.callLater(interval, more)

        clock.callLater(interval, more)

    return handle


class RebuildTests(ReloadTestCase):
    """
    A router whose other settings changed is rebuilt beside the old one:
    its listener, and the connections open on it, take the new router for
    their next request; requests in flight finish on the old one, which
    stops once they are done.
    """

    def test_newRouterOnTheSameSocket(self):
        proxy = self.proxy()
        old = proxy.router()
        parts = proxy.runtime.parts["web"]
        listener, port = parts.listener, proxy.port()
        client = proxy.connect()
        self.assertEqual(upstream(proxy.get(client)), b"a")
        summary = proxy.reload(self.config(total="7s", rules="/svc/hello => /#/static/b;"))
        self.assertEqual(summary["routers"]["rebuilt"], ["web"])
        self.assertEqual(summary["listeners"]["kept"], ["web (tcp:0:interface=127.0.0.1)"])
        new = proxy.router()
        self.assertIsNot(new, old)
        self.assertEqual(new.deadlines.total, 7.0)
        self.assertIs(proxy.runtime.parts["web"].listener, listener)
        self.assertEqual(proxy.port(), port)
        self.assertIs(listener.factory.router, new)
        self.assertIs(parts.service.router, new)
        # The kept-alive connection's next request, and a new connection.
        self.assertEqual(upstream(proxy.get(client)), b"b")
        self.assertEqual(upstream(proxy.get(proxy.connect())), b"b")
        # Nothing was in flight on the old router: it is stopped.
        self.assertFalse(old._expiry.running)
        self.assertTrue(new._expiry.running)

    def test_http2SettingsApplyToNewConnections(self):
        """
        Changed C{http2} settings rebuild the router; new connections get
        them.
        """
        proxy = self.proxy()
        parts = proxy.runtime.parts["web"]
        self.assertEqual(parts.factory.http2.maxConcurrentStreams, 100)
        summary = proxy.reload(self.config(web="    http2: {maxConcurrentStreams: 7}\n"))
        self.assertEqual(summary["routers"]["rebuilt"], ["web"])
        self.assertEqual(parts.factory.http2.maxConcurrentStreams, 7)
        self.assertEqual(parts.factory.buildProtocol(None).http2.maxConcurrentStreams, 7)

    def test_inFlightRequestFinishesOnTheOldRouter(self):
        self.a.handler = delayedHandler(self.network, 1.0, b"a")
        proxy = self.proxy()
        old = proxy.router()
        slow = proxy.connect()
        self.assertIsNone(proxy.get(slow))
        proxy.reload(self.config(total="7s", rules="/svc/hello => /#/static/b;"))
        self.assertEqual(upstream(proxy.get(proxy.connect())), b"b")
        self.assertTrue(old._expiry.running, "stopped with a request in flight")
        self.network.advance(1.0)
        [response] = slow.responses
        self.assertEqual((response.status, upstream(response)), (200, b"a"))
        self.network.advance(0.1)
        self.assertFalse(old._expiry.running)
        # Its connection carries on, with the new router.
        self.assertEqual(upstream(proxy.get(slow)), b"b")

    def test_pipelinedRequestNotStartedTakesTheNewRouter(self):
        """
        A request waiting behind another on its connection has not started
        at the reload: it routes with the new router.
        """
        self.a.handler = delayedHandler(self.network, 1.0, b"a")
        proxy = self.proxy()
        client = proxy.connect()
        request = requestBytes(b"GET", b"/", b"hello", (), None, close=False)
        client.transport.write(request + request)
        self.network.flush()
        proxy.reload(self.config(total="7s", rules="/svc/hello => /#/static/b;"))
        self.network.advance(1.0)
        self.assertEqual([upstream(r) for r in client.responses], [b"a", b"b"])

    def test_oldRouterStoppedAfterItsTotalTimeout(self):
        """
        A response still streaming after the old router's total timeout
        (plus a second) no longer needs the router: it is stopped, and the
        response ends whole.
        """
        self.a.handler = streamingHandler(self.network, 10)
        proxy = self.proxy()
        old = proxy.router()
        client = proxy.connect()
        proxy.get(client)
        self.network.advance(0.5)
        proxy.reload(self.config(total="7s"))
        self.network.advance(6.1)
        self.assertFalse(old._expiry.running)
        self.assertEqual(client.responses, [])
        self.network.advance(4)
        [response] = client.responses
        self.assertEqual((response.status, response.body), (200, b"x" * 10))

    def test_tcpRouterRebuilt(self):
        tcp = """\
  - name: db
    protocol: tcp
    listen: "tcp:0:interface=127.0.0.1"
    destination: /#/static/a
"""
        proxy = self.proxy(routers=tcp)
        old = proxy.router("db")
        spliced = proxy.connect("db")
        self.assertEqual(upstream(proxy.get(spliced)), b"a")
        proxy.reload(self.config(routers=tcp.replace("/#/static/a", "/#/static/b")))
        new = proxy.router("db")
        self.assertIsNot(new, old)
        # The spliced connection stays with its upstream; a new one goes to
        # the new destination.
        self.assertEqual(upstream(proxy.get(spliced)), b"a")
        self.assertEqual(upstream(proxy.get(proxy.connect("db"))), b"b")
        self.assertEqual(old.destinations(), [])

    def test_replacedNamerStoppedOnceTheOldRouterIs(self):
        self.a.handler = delayedHandler(self.network, 1.0, b"a")
        proxy = self.proxy()
        [namer] = proxy.runtime.namers
        slow = proxy.connect()
        proxy.get(slow)
        # a now lives where b does.
        proxy.reload(config(a=self.portB, b=self.portB))
        [new] = proxy.runtime.namers
        self.assertIsNot(new, namer)
        self.assertTrue(new.running)
        self.assertTrue(namer.running)
        self.assertEqual(upstream(proxy.get(proxy.connect())), b"b")
        self.network.advance(1.1)
        self.assertEqual(upstream(slow.responses[0]), b"a")
        self.assertFalse(namer.running)
        self.assertIsNone(namer.parent)

    def test_unchangedNamerKept(self):
        proxy = self.proxy()
        [namer] = proxy.runtime.namers
        summary = proxy.reload(
            self.config(namers="  - {kind: static, prefix: /#/more, services: {}}")
        )
        self.assertEqual(summary["namers"]["kept"], ["/#/static"])
        self.assertEqual(summary["namers"]["added"], ["/#/more"])
        self.assertIs(proxy.runtime.namers[0], namer)
        self.assertTrue(proxy.runtime.namers[1].running)

    def test_shutdownWaitsForTheOldRoutersRequests(self):
        self.a.handler = delayedHandler(self.network, 2.0, b"a")
        proxy = self.proxy()
        old = proxy.router()
        slow = proxy.connect()
        proxy.get(slow)
        proxy.reload(self.config(total="7s"))
        d = proxy.stop()
        self.network.advance(1.0)
        self.assertNoResult(d)
        self.network.advance(1.1)
        self.assertEqual(slow.responses[0].status, 200)
        self.successResultOf(d)
        self.assertFalse(old._expiry.running)


class ListenerTests(ReloadTestCase):
    """
    Routers added and removed, listen strings changed and handed over.
    """

    def test_addedRouterListensAndServes(self):
        proxy = self.proxy()
        summary = proxy.reload(self.config(routers=WEB2))
        self.assertEqual(summary["routers"]["added"], ["web2"])
        self.assertEqual(summary["listeners"]["added"], ["web2 (tcp:0:interface=127.0.0.1)"])
        self.assertEqual(upstream(proxy.get(proxy.connect("web2"))), b"b")
        self.assertEqual(len(proxy.runtime.listeners), 2)
        self.assertTrue(proxy.runtime.isReady())
        response = proxy.admin.get("/admin/routers/web2/rules")
        self.assertEqual(response.code, 200)
        self.assertEqual(response.text, "/svc/hello => /#/static/b;")

    def test_removedRouterDrains(self):
        """
        A removed router's listener closes at once; its idle connections
        close, the others after their response; then it stops.
        """
        self.b.handler = delayedHandler(self.network, 1.0, b"b")
        proxy = self.proxy(routers=WEB2)
        port = proxy.port("web2")
        old = proxy.router("web2")
        idle, busy = proxy.connect("web2"), proxy.connect("web2")
        proxy.get(busy)
        summary = proxy.reload(self.config(routers=""))
        self.assertEqual(summary["routers"]["removed"], ["web2"])
        self.assertEqual(summary["listeners"]["removed"], ["web2 (tcp:0:interface=127.0.0.1)"])
        self.assertFalse(self.network.isListening(port))
        self.assertTrue(idle.transport.disconnected)
        self.assertFalse(busy.transport.disconnected)
        self.assertTrue(old._expiry.running)
        self.network.advance(1.0)
        [response] = busy.responses
        self.assertEqual((response.status, upstream(response)), (200, b"b"))
        self.assertTrue(busy.transport.disconnected)
        self.assertFalse(old._expiry.running)
        self.assertNotIn("web2", proxy.runtime.routers)
        self.assertNotIn("web2", proxy.runtime.rulesStores)
        self.assertEqual(proxy.admin.get("/admin/routers/web2/rules").code, 404)

    def test_listenChangedMovesTheRouter(self):
        proxy = self.proxy(listen="tcp:4150:interface=127.0.0.1")
        client = proxy.connect()
        proxy.get(client)
        proxy.reload(self.config(listen="tcp:4151:interface=127.0.0.1"))
        self.assertFalse(self.network.isListening(4150))
        self.assertTrue(client.transport.disconnected)
        self.assertEqual(proxy.port(), 4151)
        self.assertEqual(upstream(proxy.get(proxy.connect())), b"a")

    def test_renamedRouterTakesTheSocketOver(self):
        proxy = self.proxy(listen="tcp:4150:interface=127.0.0.1")
        listener = proxy.runtime.parts["web"].listener
        client = proxy.connect()
        proxy.get(client)
        summary = proxy.reload(
            self.config(listen="tcp:4150:interface=127.0.0.1").replace("name: web", "name: www")
        )
        self.assertEqual(summary["routers"]["added"], ["www"])
        self.assertEqual(summary["routers"]["removed"], ["web"])
        self.assertEqual(list(proxy.runtime.routers), ["www"])
        self.assertIs(proxy.runtime.parts["www"].listener, listener)
        self.assertEqual(listener.owner, "router www")
        self.assertEqual(upstream(proxy.get(client)), b"a")
        self.assertEqual(proxy.admin.get("/admin/routers/www/rules").code, 200)

    def test_tlsSectionChangedOnAKeptListener(self):
        """
        A changed C{tls} section on a kept listener gives new connections
        the new certificates: a new TLS context and watcher, the same
        socket.
        """
        from meshproxy import certs

        ca = os.path.abspath(self.mktemp())
        certs.initAuthority(ca)
        one = certs.issue(ca, "one", uris=("spiffe://mesh.local/one",))
        two = certs.issue(ca, "two", uris=("spiffe://mesh.local/two",))
        section = "    tls: {certificates: [{cert: %s, key: %s}]}"
        proxy = self.proxy(web=section % (one.cert, one.key))
        parts = proxy.runtime.parts["web"]
        listener, oldTLS, oldWatch = parts.listener, parts.serverTLS, parts.tlsWatch
        self.assertEqual(proxy.router().tlsName, "spiffe://mesh.local/one")
        summary = proxy.reload(self.config(web=section % (two.cert, two.key)))
        self.assertEqual(summary["routers"]["rebuilt"], ["web"])
        parts = proxy.runtime.parts["web"]
        self.assertIs(parts.listener, listener)
        self.assertIsNot(parts.serverTLS, oldTLS)
        self.assertIs(parts.listening.contexts, parts.serverTLS)
        self.assertIs(proxy.runtime.serverTLS["web"], parts.serverTLS)
        self.assertEqual(proxy.router().tlsName, "spiffe://mesh.local/two")
        self.assertIsNone(oldWatch.parent)
        self.assertTrue(parts.tlsWatch.running)
        # Another change leaves the TLS alone.
        proxy.reload(self.config(web=section % (two.cert, two.key), total="9s"))
        self.assertEqual(proxy.router().tlsName, "spiffe://mesh.local/two")

    def test_shutdownGraceApplies(self):
        proxy = self.proxy()
        proxy.reload(self.config(admin="  shutdownGrace: 3s"))
        self.assertEqual(proxy.runtime.shutdownGrace, 3.0)
        self.assertEqual(proxy.runtime.parts["web"].service.grace, 3.0)


class RefusalTests(ReloadTestCase):
    """
    A reload that cannot be made changes nothing and says why.
    """

    def setUp(self):
        ReloadTestCase.setUp(self)
        self.events = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def errors(self):
        from twisted.logger import LogLevel, formatEvent

        return [formatEvent(e) for e in self.events if e.get("log_level") == LogLevel.error]

    def assertUnchanged(self, proxy, router):
        self.assertIs(proxy.router(), router)
        self.assertEqual(router.rules.rulesText, "/svc/hello => /#/static/a;")
        self.assertEqual(list(proxy.runtime.routers), ["web"])
        self.assertEqual(upstream(proxy.get(proxy.connect())), b"a")

    def test_badFileChangesNothingAndLogsEveryError(self):
        proxy = self.proxy()
        router = proxy.router()
        bad = self.config(total="fast", rules="/svc/hello => /#/static/b;").replace(
            "identifier:", "identifyer:"
        )
        error = proxy.refused(bad)
        self.assertEqual(error.status, 400)
        self.assertEqual(
            error.errors,
            [
                'routers[0].identifyer: unknown key (did you mean "identifier"?)',
                'routers[0].timeouts.total: expected a duration like "2s", got "fast"',
            ],
        )
        logged = self.errors()
        for message in error.errors:
            self.assertIn("reload of %s refused: %s" % (proxy.path, message), logged)
        self.assertIn(
            "reload of %s refused: nothing changed (2 problems)" % (proxy.path,), logged
        )
        self.assertUnchanged(proxy, router)

    def test_unknownNamerInRules(self):
        proxy = self.proxy()
        error = proxy.refused(self.config(rules="/svc => /#/nowhere;"))
        self.assertEqual(error.status, 400)
        self.assertEqual(
            error.errors,
            ["routers[0].rules: line 1, column 9: unknown namer prefix /#/nowhere"
             " (namers: /#/static)"],
        )
        self.assertUnchanged(proxy, proxy.router())

    def test_missingFile(self):
        proxy = self.proxy()
        os.remove(proxy.path)
        error = proxy.refused()
        self.assertEqual(error.status, 400)
        self.assertIn("cannot read the file", error.errors[0])

    def test_listenerThatCannotBindChangesNothing(self):
        """
        New listeners are bound first: when one cannot be, those bound are
        closed again and nothing else changes.
        """
        proxy = self.proxy()
        router = proxy.router()
        listening = set(self.network._listeners)
        web3 = WEB2.replace("web2", "web3").replace(
            "tcp:0:", "tcp:%d:" % (self.portA,)
        )
        error = proxy.refused(
            self.config(rules="/svc/hello => /#/static/b;", total="7s", routers=WEB2 + web3)
        )
        self.assertEqual(error.status, 500)
        self.assertEqual(
            error.errors,
            # (the memory network's words)
            ["router web3: cannot listen on tcp:%d:interface=127.0.0.1: address in use"
             % (self.portA,)],
        )
        self.assertEqual(set(self.network._listeners), listening)
        self.assertUnchanged(proxy, router)
        # The file fixed, the next reload works.
        proxy.reload(self.config(routers=WEB2))
        self.assertEqual(upstream(proxy.get(proxy.connect("web2"))), b"b")

    def test_protocolChangeOnAKeptListener(self):
        tcp = """\
  - name: db
    protocol: tcp
    listen: "tcp:5433:interface=127.0.0.1"
    destination: /#/static/a
"""
        proxy = self.proxy(routers=tcp)
        error = proxy.refused(
            self.config(
                routers=tcp.replace("tcp\n", "http\n").replace("    destination: /#/static/a\n", "")
            )
        )
        self.assertEqual(error.status, 400)
        self.assertIn("cannot change without a restart", error.errors[0])

    def test_restartNeeded(self):
        proxy = self.proxy()
        router = proxy.router()
        summary = proxy.reload(self.config(admin='  token: "t0ken"'))
        self.assertEqual(summary["changed"], False)
        self.assertEqual(summary["restartNeeded"], ["admin.token"])
        self.assertEqual(summary["message"], "nothing applied: what changed needs a restart")
        self.assertIs(proxy.router(), router)
        # Still no token: the admin API is as it was; and the change still
        # needs a restart.
        response = proxy.admin.post("/admin/reload")
        self.assertEqual(response.code, 200)
        self.assertEqual(response.json()["restartNeeded"], ["admin.token"])
        # What applies still does.
        summary = proxy.reload(self.config(admin='  token: "t0ken"\n  shutdownGrace: 4s'))
        self.assertEqual((summary["changed"], summary["restartNeeded"]), (True, ["admin.token"]))
        self.assertEqual(proxy.runtime.shutdownGrace, 4.0)

    def test_stopping(self):
        proxy = self.proxy()
        proxy.stop()
        error = proxy.refused()
        self.assertEqual((error.status, error.errors), (409, ["the process is stopping"]))

    def test_noConfigFile(self):
        runtime, _ = buildServices(parse(config()), reactor=self.network)
        error = self.failureResultOf(runtime.reload(), ReloadError).value
        self.assertEqual(error.status, 409)

    def test_reloadsAreSerialized(self):
        proxy = self.proxy()
        reloader = proxy.runtime.reloader
        reloader._lock.acquire()
        proxy.write(self.config(routers=WEB2))
        d = proxy.runtime.reload()
        self.assertNoResult(d)
        self.assertNotIn("web2", proxy.runtime.routers)
        reloader._lock.release()
        self.assertEqual(self.successResultOf(d)["routers"]["added"], ["web2"])

    def test_systemdSocketAdoptedOnlyOnce(self):
        """
        Twisted closes a descriptor passed by systemd once adopted: a new
        listen string naming one this process adopted is refused.
        """
        from meshproxy.reload import Reloader, planReload
        from meshproxy.runtime import Runtime

        old = parse(config(listen="systemd:domain=INET:name=web"))
        reloader = Reloader(
            Runtime(), old, configPath=None, reactor=self.network, metrics=None
        )
        # The same socket under another listen string: a new listener.
        new = parse(config(listen="systemd:domain=INET6:name=web"))
        plan = planReload(old, new)
        self.assertEqual(plan.routers, {"web": ADDED})
        self.assertEqual(
            reloader._adoptionProblems(plan, new),
            ["routers[0].listen: the socket systemd passed as name=web was adopted by this"
             " process already and cannot be again: restart to listen on it with a new"
             " listen string"],
        )


class AdminChangesTests(ReloadTestCase):
    """
    Rules and policies changed through the admin API since the last load
    stay, whatever the file says; the others follow the file. The stores
    (versions, history) stay across a rebuild.
    """

    def putRules(self, proxy, text, name="web"):
        path = "/admin/routers/%s/rules" % (name,)
        etag = proxy.admin.get(path).header("etag")
        response = proxy.admin.put(path, text, headers={"If-Match": etag})
        self.assertEqual(response.code, 200, response)
        return response.header("etag")

    def test_rulesChangedThroughTheAdminAPIStayOnRebuild(self):
        proxy = self.proxy()
        etag = self.putRules(proxy, "/svc/hello => /#/static/b;\n")
        summary = proxy.reload(
            self.config(total="7s", rules="/svc/hello => /#/static/a;/svc/x => /#/static/a;")
        )
        self.assertEqual(summary["routers"]["rebuilt"], ["web"])
        self.assertTrue(summary["rules"]["web"].startswith("kept: changed through the admin API"))
        self.assertEqual(upstream(proxy.get(proxy.connect())), b"b")
        response = proxy.admin.get("/admin/routers/web/rules")
        self.assertEqual((response.text, response.header("etag")),
                         ("/svc/hello => /#/static/b;\n", etag))
        history = json.loads(proxy.admin.get("/admin/routers/web/rules/history").body)
        self.assertEqual([entry["who"] for entry in history], ["127.0.0.1", "config"])

    def test_rulesChangedThroughTheAdminAPIStayInPlace(self):
        proxy = self.proxy()
        self.putRules(proxy, "/svc/hello => /#/static/b;\n")
        summary = proxy.reload(self.config(rules="/svc/x => /#/static/a;"))
        self.assertEqual(summary["routers"]["updated"], ["web"])
        self.assertTrue(summary["rules"]["web"].startswith("kept"))
        self.assertEqual(upstream(proxy.get(proxy.connect())), b"b")

    def test_theFilesRulesPutBackFollowTheFileAgain(self):
        proxy = self.proxy()
        self.putRules(proxy, "/svc/hello => /#/static/b;\n")
        self.putRules(proxy, "/svc/hello => /#/static/a;")
        summary = proxy.reload(self.config(rules="/svc/hello => /#/static/b;"))
        self.assertEqual(summary["rules"], {"web": "from the file"})
        self.assertEqual(upstream(proxy.get(proxy.connect())), b"b")

    def test_adminRulesInvalidUnderTheNewConfigGiveWayToTheFiles(self):
        more = "  - {kind: static, prefix: /#/more, services: {}}"
        proxy = self.proxy(namers=more)
        self.putRules(proxy, "/svc/hello => /#/more/a;\n")
        summary = proxy.reload(self.config(namers=""))
        self.assertTrue(summary["rules"]["web"].startswith(
            "from the file: the rules changed through the admin API are not valid with it"
        ), summary["rules"])
        self.assertEqual(upstream(proxy.get(proxy.connect())), b"a")

    def test_policyChangedThroughTheAdminAPIStays(self):
        proxy = self.proxy()
        path = "/admin/routers/web/policy"
        etag = proxy.admin.get(path).header("etag")
        response = proxy.admin.put(
            path, {"default": "deny", "rules": []}, headers={"If-Match": etag}
        )
        self.assertEqual(response.code, 200, response)
        summary = proxy.reload(self.config(total="7s", web="    policy: {default: allow}"))
        self.assertTrue(summary["policies"]["web"].startswith("kept"))
        self.assertEqual(proxy.get(proxy.connect()).status, 403)

    def test_storesOfAnAddedRouterRestoreItsSavedRules(self):
        """
        A router added by a reload gets its stores as at a start: rules
        saved through the admin API under its name are restored.
        """
        proxy = self.proxy(routers=WEB2)
        self.putRules(proxy, "/svc/hello => /#/static/a;\n", name="web2")
        proxy.reload(self.config(routers=""))
        proxy.reload(self.config(routers=WEB2))
        self.assertEqual(upstream(proxy.get(proxy.connect("web2"))), b"a")


class SlotTests(SynchronousTestCase):
    """
    The stores see the router of a name, whichever object it is.
    """

    def test_rulesSlot(self):
        from meshproxy.routing.path import Path
        from meshproxy.routing.table import RuleTable

        class Router:
            def __init__(self, text):
                self.rules = RuleTable("web", [Path.read("/#/s")], text)

        class Runtime:
            routers = {"web": Router("/a => /#/s/a;")}

        runtime = Runtime()
        slot = RulesSlot(runtime, "web")
        verifyObject(IRuleTable, slot)
        self.assertEqual(slot.rulesText, "/a => /#/s/a;")
        runtime.routers["web"] = Router("/b => /#/s/b;")
        self.assertEqual(slot.rulesText, "/b => /#/s/b;")
        slot.setRules(slot.validateRules("/c => /#/s/c;"), "/c => /#/s/c;")
        self.assertEqual(runtime.routers["web"].rules.rulesText, "/c => /#/s/c;")
        self.assertEqual(slot.describe(slot.validateRules("/c => /#/s/c;"), "/c"), "/#/s/c")
        self.assertEqual(slot.recentNames(), [])

    def test_policySlot(self):
        class Router:
            policy = None

        class Runtime:
            routers = {"web": Router()}

        runtime = Runtime()
        slot = PolicySlot(runtime, "web")
        self.assertIsNone(slot.policy)
        marker = object()
        slot.policy = marker
        self.assertIs(runtime.routers["web"].policy, marker)


class ReloadRouteTests(ReloadTestCase):
    """
    C{POST /admin/reload}.
    """

    def test_answersTheSummary(self):
        proxy = self.proxy()
        proxy.write(self.config(routers=WEB2))
        response = proxy.admin.post("/admin/reload")
        self.assertEqual(response.code, 200)
        body = response.json()
        self.assertEqual((body["changed"], body["routers"]["added"]), (True, ["web2"]))
        response = proxy.admin.post("/admin/reload")
        self.assertEqual((response.code, response.json()["message"]), (200, "nothing changed"))

    def test_badFile(self):
        proxy = self.proxy()
        proxy.write(self.config(total="fast"))
        response = proxy.admin.post("/admin/reload")
        self.assertEqual(response.code, 400)
        self.assertEqual(
            response.json(),
            {
                "error": "reload refused: nothing changed",
                "errors": ['routers[0].timeouts.total: expected a duration like "2s", got "fast"'],
            },
        )

    def test_needsTheToken(self):
        proxy = self.proxy(admin='  token: "t0ken"')
        response = proxy.admin.post("/admin/reload")
        self.assertEqual(response.code, 401)
        response = proxy.admin.post("/admin/reload", token="t0ken")
        self.assertEqual(response.code, 200)

    def test_cannotBind(self):
        proxy = self.proxy()
        proxy.write(self.config(routers=WEB2.replace("tcp:0:", "tcp:%d:" % (self.portA,))))
        response = proxy.admin.post("/admin/reload")
        self.assertEqual(response.code, 500)
        self.assertEqual(len(response.json()["errors"]), 1)

    def test_noReloadInTheRuntime(self):
        from prometheus_client import CollectorRegistry

        from meshproxy.admin.api import AdminAPI

        class Runtime:
            routers = {}

        api = AdminAPI(Runtime(), CollectorRegistry(), clock=self.network)
        from treq.testing import StubTreq

        treq = StubTreq(api.app.resource())
        response = self.successResultOf(treq.post("http://127.0.0.1/admin/reload"))
        self.assertEqual(response.code, 404)


class HangupTests(SynchronousTestCase):
    """
    C{SIGHUP} reloads, through the reactor's thread; the previous handler
    is restored at the stop.
    """

    def setUp(self):
        previous = signal.getsignal(signal.SIGHUP)
        self.addCleanup(signal.signal, signal.SIGHUP, previous)
        self.reloads = []

        class Runtime:
            def reload(runtime):
                d = Deferred()
                self.reloads.append(d)
                return d

        class Reactor:
            def __init__(reactor):
                reactor.calls = []

            def callFromThread(reactor, f, *args):
                reactor.calls.append((f, args))

        from meshproxy.tap import _ReloadOnHangup

        self.reactor = Reactor()
        self.service = _ReloadOnHangup(Runtime(), self.reactor)

    def test_hangupReloadsInTheReactor(self):
        self.service.startService()
        self.addCleanup(self.service.stopService)
        os.kill(os.getpid(), signal.SIGHUP)
        [(f, args)] = self.reactor.calls
        self.assertEqual(self.reloads, [])
        f(*args)
        [d] = self.reloads
        d.errback(ReloadError(["bad"]))
        # A refused reload is logged by the reloader: nothing left unhandled.

    def test_previousHandlerRestored(self):
        def mine(signum, frame):
            pass

        signal.signal(signal.SIGHUP, mine)
        self.service.startService()
        self.assertNotEqual(signal.getsignal(signal.SIGHUP), mine)
        self.service.stopService()
        self.assertIs(signal.getsignal(signal.SIGHUP), mine)

    def test_defaultBecomesIgnoredAtTheStop(self):
        """
        C{SIGHUP}'s default action ends the process: during the drain, it
        is ignored instead.
        """
        signal.signal(signal.SIGHUP, signal.SIG_DFL)
        self.service.startService()
        self.service.stopService()
        self.assertEqual(signal.getsignal(signal.SIGHUP), signal.SIG_IGN)

    def test_makeServiceAddsIt(self):
        from twisted.internet.testing import MemoryReactorClock

        from meshproxy.tap import Options, _ReloadOnHangup, makeService

        path = self.mktemp()
        with open(path, "w") as f:
            f.write(config())
        options = Options()
        options.parseOptions(["--config", path])
        top = makeService(options, reactor=MemoryReactorClock())
        [service] = [s for s in top if isinstance(s, _ReloadOnHangup)]
        self.assertIs(service.runtime, top.runtime)
