"""
The admin API on a real admin port, for what only real sockets show: what a
web page can make a browser send to the admin listener is refused, what
curl and scripts send works, and a shutdown closes the listeners (a new
client is refused by the kernel) while a request in flight finishes. A
proxy run in this process from a config text, real upstream servers, treq
and raw clients.

The admin API's behaviour against a running proxy (rule changes under
traffic, concurrency, persistence, dry runs, explain, drain, the token) is
tested on a memory network in L{tests.test_admin_proxy}.

Each test is bounded by trial's timeout and waits on events, never on the
clock.
"""

import json
import shutil

from twisted.internet import defer
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SkipTest, TestCase

from tests.admin_support import AdminClient, makeConfig, runProxy
from tests.support import BackendFactory, connectClient, listenBackend, okHandler


class AdminIntegrationTestCase(TestCase):
    """
    Starts labelled upstreams and a proxy in front of them.
    """

    timeout = 30

    @defer.inlineCallbacks
    def backends(self, *labels, handler=None):
        """
        Start one upstream per label; each answers 200 with
        C{X-Upstream: <label>} (unless C{handler} is given).

        @return: a Deferred firing with C{{label: (factory, port)}}.
        """
        result = {}
        for label in labels:
            factory = BackendFactory(handler or okHandler(label.encode("ascii")))
            port = yield listenBackend(self, factory)
            result[label] = (factory, port)
        return result

    @defer.inlineCallbacks
    def start(self, configText, token=None, configPath=None):
        """
        Run a proxy from C{configText} and connect an admin client to it.

        @return: a Deferred firing with C{(proxy, admin)}.
        """
        proxy = yield runProxy(self, configText, configPath=configPath)
        admin = AdminClient(self, proxy.adminPort, token=token)
        return proxy, admin

    @defer.inlineCallbacks
    def fetch(self, port, host, count=1):
        """
        Send C{count} sequential GETs with C{Host: host} on one keep-alive
        connection through the proxy.

        @return: a Deferred firing with the responses.
        """
        client = yield connectClient(self, port)
        for i in range(count):
            client.transport.write(b"GET /%d HTTP/1.1\r\nHost: %s\r\n\r\n" % (i, host))
            yield client.waitFor(i + 1)
        self.assertEqual(len(client.responses), count, "connection closed early")
        client.transport.loseConnection()
        yield client.closed
        return client.responses

    @defer.inlineCallbacks
    def upstreamsOf(self, port, host, count=1):
        """
        The C{X-Upstream} of C{count} GETs, all asserted to be 200.
        """
        responses = yield self.fetch(port, host, count)
        self.assertEqual([r.status for r in responses], [200] * count)
        return [r.header(b"x-upstream").decode("ascii") for r in responses]


class ShutdownTests(AdminIntegrationTestCase):
    """
    POST /admin/shutdown answers first, then asks the runtime to stop.
    """

    @defer.inlineCallbacks
    def test_runtimeShutdownStopsGracefully(self):
        """
        With the runtime's own C{shutdown} (its reactor faked so that
        C{stop} stops the services as twistd would), a shutdown closes the
        listener to new connections while a request in flight still gets
        its answer.
        """
        from twisted.internet import reactor as realReactor

        held = []
        arrived = defer.Deferred()

        def handler(proto, request):
            held.append((proto, request))
            arrived.callback(None)

        backends = yield self.backends("A", handler=handler)
        proxy, admin = yield self.start(
            makeConfig({"a": [backends["A"][1]]}, admin={"shutdownGrace": "20s"})
        )
        stopping = defer.Deferred()

        class Reactor:
            def callLater(self, delay, f, *args, **kwargs):
                return realReactor.callLater(delay, f, *args, **kwargs)

            def stop(self):
                stopping.callback([proxy.stop(graceful=True)])

        proxy.runtime.reactor = Reactor()
        slow = yield connectClient(self, proxy.proxyPort)
        slow.transport.write(b"GET /slow HTTP/1.1\r\nHost: hello\r\n\r\n")
        yield arrived

        response = yield admin.post("/admin/shutdown")
        self.assertEqual(response.code, 202)
        self.assertEqual(response.json(), {"shuttingDown": True, "grace": 20.0})
        [stopped] = yield stopping
        yield proxy.serviceStops[proxy.runtime.listeners[0]]
        # The listener is closed: a new client is refused.
        from twisted.internet.error import ConnectionRefusedError

        yield self.assertFailure(connectClient(self, proxy.proxyPort), ConnectionRefusedError)
        self.assertNoResult(stopped)
        proto, request = held[0]
        okHandler(b"A")(proto, request)
        [response] = yield slow.waitFor(1)
        self.assertEqual((response.status, response.body), (200, b"A /slow"))
        yield stopped


class BrowserRefusalTests(AdminIntegrationTestCase):
    """
    On a real admin port, what a web page can make a browser send is
    refused and changes nothing; what a script or curl sends still works.
    """

    @defer.inlineCallbacks
    def startDrainable(self):
        """
        Two endpoints behind C{/#/static/hello}, the name bound, and
        C{runtime.shutdown} recorded instead of run.
        """
        backends = yield self.backends("A", "B")
        self.addresses = {
            label: "127.0.0.1:%d" % (port,) for label, (_, port) in backends.items()
        }
        self.proxy, self.admin = yield self.start(
            makeConfig(
                {"hello": [backends["A"][1], backends["B"][1]]},
                rules="/svc => /#/static;\n",
                balancer="roundRobin",
            )
        )
        yield self.upstreamsOf(self.proxy.proxyPort, b"hello", 2)
        self.shutdowns = []
        self.proxy.runtime.shutdown = lambda: self.shutdowns.append(True)
        self.adminHost = b"127.0.0.1:%d" % (self.proxy.adminPort,)

    @defer.inlineCallbacks
    def send(self, head, body=b""):
        """
        Send one raw request to the admin port, its head given without the
        blank line; a C{Content-Length} is added when C{body} is not empty.

        @return: a Deferred firing with the response.
        """
        client = yield connectClient(self, self.proxy.adminPort)
        if body:
            head += b"\r\nContent-Length: %d" % (len(body),)
        client.transport.write(head + b"\r\nConnection: close\r\n\r\n" + body)
        [response] = yield client.waitFor(1)
        yield client.closed
        return response

    @defer.inlineCallbacks
    def assertNothingChanged(self):
        """
        Both endpoints are live and no shutdown was asked, even after the
        reactor turned (a shutdown is scheduled after its answer is out).
        """
        response = yield self.admin.get("/live")
        self.assertEqual(response.code, 200)
        states = yield self.admin.get("/admin/state")
        endpoints = states.json()["routers"]["web"]["boundNames"]["/#/static/hello"][
            "endpoints"
        ]
        self.assertEqual({ep["state"] for ep in endpoints}, {"live"})
        self.assertEqual(self.shutdowns, [])
        ups = yield self.upstreamsOf(self.proxy.proxyPort, b"hello", 4)
        self.assertEqual(sorted(ups), ["A", "A", "B", "B"])

    def assertError(self, response, status, start):
        self.assertEqual(response.status, status, response.body)
        self.assertEqual(response.header(b"content-type"), b"application/json")
        self.assertTrue(response.body.endswith(b"\n"))
        error = json.loads(response.body)["error"]
        self.assertTrue(error.startswith(start), error)

    @defer.inlineCallbacks
    def test_browserRequestsRefusedAndChangeNothing(self):
        """
        A cross-site POST to C{/admin/shutdown} (as a browser sends an
        empty form's) is a 403, a form POST to C{/admin/endpoints/drain} a
        415, and a request naming a foreign C{Host} (a rebound name) a 421,
        reads and changes alike. The proxy neither stops nor drains.
        """
        yield self.startDrainable()
        response = yield self.send(
            b"POST /admin/shutdown HTTP/1.1\r\nHost: %s\r\n"
            b"Origin: http://evil.example\r\nSec-Fetch-Site: cross-site\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 0"
            % (self.adminHost,)
        )
        self.assertError(response, 403, "cross-origin request refused: ")
        response = yield self.send(
            b"POST /admin/shutdown HTTP/1.1\r\nHost: %s\r\nOrigin: null" % (self.adminHost,)
        )
        self.assertError(response, 403, "cross-origin request refused: ")

        form = b"router=web&name=%%2F%%23%%2Fstatic%%2Fhello&address=127.0.0.1%%3A%d" % (
            int(self.addresses["B"].split(":")[1]),
        )
        response = yield self.send(
            b"POST /admin/endpoints/drain HTTP/1.1\r\nHost: %s\r\n"
            b"Content-Type: application/x-www-form-urlencoded" % (self.adminHost,),
            form,
        )
        self.assertError(response, 415, "unsupported Content-Type ")
        self.assertEqual(json.loads(response.body)["expected"], "application/json")

        evil = b"evil.example:%d" % (self.proxy.adminPort,)
        response = yield self.send(b"GET /admin/state HTTP/1.1\r\nHost: %s" % (evil,))
        self.assertError(response, 421, "misdirected request: ")
        self.assertEqual(response.reason, b"Misdirected Request")
        response = yield self.send(
            b"POST /admin/endpoints/drain HTTP/1.1\r\nHost: %s\r\n"
            b"Origin: http://%s\r\nSec-Fetch-Site: same-origin\r\n"
            b"Content-Type: application/json" % (evil, evil),
            json.dumps(
                {"router": "web", "name": "/#/static/hello", "address": self.addresses["B"]}
            ).encode("utf-8"),
        )
        self.assertError(response, 421, "misdirected request: ")
        yield self.assertNothingChanged()

    @defer.inlineCallbacks
    def test_scriptRequestsStillWork(self):
        """
        A POST as curl sends it (IP literal C{Host}, no C{Origin}, a JSON
        body with its type) drains; a body-less one shuts down.
        """
        yield self.startDrainable()
        response = yield self.send(
            b"POST /admin/endpoints/drain HTTP/1.1\r\nHost: %s\r\n"
            b"User-Agent: curl/8.5.0\r\nAccept: */*\r\nContent-Type: application/json"
            % (self.adminHost,),
            json.dumps(
                {"router": "web", "name": "/#/static/hello", "address": self.addresses["B"]}
            ).encode("utf-8"),
        )
        self.assertEqual((response.status, json.loads(response.body)), (200, {"draining": True}))
        ups = yield self.upstreamsOf(self.proxy.proxyPort, b"hello", 4)
        self.assertEqual(ups, ["A"] * 4)

        called = defer.Deferred()
        self.proxy.runtime.shutdown = lambda: called.callback(None)
        response = yield self.send(
            b"POST /admin/shutdown HTTP/1.1\r\nHost: %s\r\n"
            b"User-Agent: curl/8.5.0\r\nAccept: */*" % (self.adminHost,)
        )
        self.assertEqual(response.status, 202, response.body)
        yield called

    @defer.inlineCallbacks
    def test_curl(self):
        """
        curl itself: C{-X POST} with no body and a JSON body with its type
        pass; C{-d} alone sends a form type and is a 415.
        """
        curl = shutil.which("curl")
        if curl is None:
            raise SkipTest("curl is not installed")
        yield self.startDrainable()
        base = "http://127.0.0.1:%d" % (self.proxy.adminPort,)
        body = json.dumps(
            {"router": "web", "name": "/#/static/hello", "address": self.addresses["B"]}
        )

        @defer.inlineCallbacks
        def run(*args):
            out, err, code = yield getProcessOutputAndValue(
                curl,
                ["-sS", "--noproxy", "*", "--max-time", "10", "-o", "/dev/null",
                 "-w", "%{http_code}", *args],
                env={},
            )
            self.assertEqual((code, err), (0, b""))
            return int(out)

        status = yield run("-d", body, base + "/admin/endpoints/drain")
        self.assertEqual(status, 415)
        yield self.assertNothingChanged()
        status = yield run(
            "-H", "Content-Type: application/json", "--data-binary", body,
            base + "/admin/endpoints/drain",
        )
        self.assertEqual(status, 200)
        status = yield run("-X", "POST", base + "/admin/shutdown")
        self.assertEqual(status, 202)
        response = yield self.admin.get("/live")
        self.assertEqual(response.code, 200)
        self.assertEqual(self.shutdowns, [True])
