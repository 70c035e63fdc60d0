"""
The dashboard in a real browser: a proxy run in this process on loopback,
traffic through it to test backends, and the page loaded in headless
Chromium (the system's, driven through the DevTools protocol; see
L{tests.browser_support}). Skipped when Chromium or the websocket client is
not installed; CI installs both.

The test leaves a screenshot of the page in trial's temporary directory
(its path is in the test log, C{_trial_temp/test.log}).
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import re

from twisted.internet import defer, protocol, task
from twisted.logger import Logger
from twisted.trial.unittest import SkipTest, TestCase

from meshproxy.admin.rules import rulesVersion
from tests.admin_support import AdminClient, runProxy
from tests.browser_support import Chromium, findChromium, haveWebsocketClient
from tests.support import BackendFactory, connectClient, listenBackend

_log = Logger()

TOKEN = "browser-t0ken"
RULES = "/svc => /#/static;\n/svc/greet => /#/static/hello;\n"

CONFIG = """\
admin:
  listen: "tcp:port=0:interface=127.0.0.1"
  token: "%(token)s"
  protectReads: true
namers:
  - kind: static
    prefix: /#/static
    services: {%(services)s}
routers:
  - name: web
    listen: "tcp:0:interface=127.0.0.1"
    identifier: {kind: host}
    rules: %(rules)s
  - name: db
    protocol: tcp
    listen: "tcp:0:interface=127.0.0.1:backlog=64"
    destination: /#/static/world
"""

# Seen by a page's script before the dashboard's own: every refusal by the
# Content-Security-Policy, as the browser reports it to the page.
WATCH_POLICY = """
window.__violations = [];
document.addEventListener("securitypolicyviolation", e => {
  window.__violations.push(e.violatedDirective + " " + e.blockedURI);
});
"""

# The traffic row of a bound name, as the page shows it.
ROW = """
(() => {
  for (const tr of document.querySelectorAll("table.traffic tbody tr")) {
    if (tr.dataset.router !== %(router)s || tr.dataset.name !== %(name)s) continue;
    const cell = cls => {
      const c = tr.querySelector("td." + cls);
      return c ? (c.querySelector(".val") || c).textContent : null;
    };
    return {resolution: cell("resolution"), total: cell("total"), rate: cell("rate"),
            success: cell("success"), p50: cell("p50"), p99: cell("p99"),
            unresolved: tr.classList.contains("unresolved"),
            spark: (tr.querySelector("td.rate path.line") || {getAttribute: () => ""})
                     .getAttribute("d")};
  }
  return null;
})()
"""

NUMBER = re.compile(r"^\d+(\.\d+)?")


def row(router, name):
    return ROW % {"router": json.dumps(router), "name": json.dumps(name)}


def delayedHandler(reactor, label, delays):
    """
    An upstream handler answering 200 after a delay taken in turn from
    C{delays} (seconds), so that the latencies spread over a few buckets.
    """
    turn = itertools.count()

    def handle(proto, request):
        body = label + b" " + request.url
        answer = (b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))

        def write():
            if proto.transport is not None and proto.transport.connected:
                proto.transport.write(answer)

        reactor.callLater(delays[next(turn) % len(delays)], write)

    return handle


class _Closed(protocol.Protocol):
    pass


class DashboardInBrowserTests(TestCase):
    """
    The page polls the admin API and shows live numbers, with no error.
    """

    timeout = 90

    def setUp(self):
        self.executable = findChromium()
        missing = None
        if self.executable is None:
            missing = "chromium is not installed (apt-get install chromium; .ci/run installs it)"
        elif not haveWebsocketClient():
            missing = "autobahn is not installed (a test dependency in tox.ini)"
        if missing is not None:
            # CI installs both: there, a missing one is a broken setup,
            # not a reason to skip.
            if os.environ.get("CI"):
                self.fail(missing)
            raise SkipTest(missing)
        from twisted.internet import reactor

        self.reactor = reactor

    @defer.inlineCallbacks
    def backend(self, label, delays):
        factory = BackendFactory(delayedHandler(self.reactor, label, delays))
        port = yield listenBackend(self, factory)
        return port

    @defer.inlineCallbacks
    def deadPort(self):
        """
        A loopback port nothing listens on (connections are refused).
        """
        from twisted.internet.endpoints import TCP4ServerEndpoint

        factory = protocol.Factory.forProtocol(_Closed)
        port = yield TCP4ServerEndpoint(self.reactor, 0, interface="127.0.0.1").listen(factory)
        number = port.getHost().port
        yield port.stopListening()
        return number

    def traffic(self, port, hosts):
        """
        GETs for each of C{hosts}, one after the other on a keep-alive
        connection per host, 20 ms apart, for at most 60 s.

        @return: a function that stops the traffic, returning a Deferred
            that fires once every connection is done (those still waiting
            for an answer after 5 s are cut).
        """
        state = {"stop": False}
        clients = []

        @defer.inlineCallbacks
        def run(host):
            client = yield connectClient(self, port)
            clients.append(client)
            deadline = self.reactor.seconds() + 60
            count = 0
            # A closed connection answers nothing more: checked before each
            # request (its cleanup may have cut it while this one waited).
            while (not state["stop"] and client.transport.connected
                   and self.reactor.seconds() < deadline):
                client.transport.write(b"GET /%d HTTP/1.1\r\nHost: %s\r\n\r\n" % (count, host))
                yield client.waitFor(count + 1)
                count += 1
                yield task.deferLater(self.reactor, 0.02, lambda: None)
            return count

        loops = defer.gatherResults([run(host) for host in hosts], consumeErrors=True)

        @defer.inlineCallbacks
        def stop():
            state["stop"] = True
            cut = self.reactor.callLater(5, lambda: [
                c.transport.abortConnection() for c in clients if c.transport.connected
            ])
            try:
                counts = yield loops
            finally:
                if cut.active():
                    cut.cancel()
            _log.info("traffic sent: {counts}", counts=dict(zip(hosts, counts, strict=True)))

        return stop

    @defer.inlineCallbacks
    def test_liveNumbersWithoutErrors(self):
        """
        With a token required for reads, the page asks for it; given it,
        it shows the live request rate, success rate and latencies of the
        bound names that get traffic, the rules with their version, the
        unresolved name as such, the drained endpoint as such, the TCP
        router; the explain form defaults to the HTTP router; nothing was
        logged as an error and the policy refused nothing. Then it takes a
        screenshot.
        """
        reactor = self.reactor
        started = reactor.seconds()
        hello = [
            (yield self.backend(b"hello-1", [0.0, 0.002, 0.004, 0.006, 0.012])),
            (yield self.backend(b"hello-2", [0.001, 0.003, 0.008, 0.03])),
            (yield self.backend(b"hello-3", [0.0])),
        ]
        world = [(yield self.backend(b"world", [0.0, 0.001, 0.05])), (yield self.deadPort())]
        services = ", ".join(
            "%s: [%s]" % (name, ", ".join('"127.0.0.1:%d"' % p for p in ports))
            for name, ports in (("hello", hello), ("world", world))
        )
        proxy = yield runProxy(self, CONFIG % {
            "token": TOKEN, "services": services, "rules": json.dumps(RULES),
        })
        admin = AdminClient(self, proxy.adminPort, token=TOKEN)
        webPort = proxy.proxyPort
        dbPort = [
            listener.port.getHost().port for listener in proxy.runtime.listeners
            if listener.description.startswith("db ")
        ][0]

        # A name no namer knows, a drained endpoint, and a connection
        # through the TCP router.
        nope = yield connectClient(self, webPort)
        nope.transport.write(b"GET / HTTP/1.1\r\nHost: nope\r\n\r\n")
        [answer] = yield nope.waitFor(1)
        self.assertEqual(answer.status, 503)
        # (A name is bound, and its endpoints can be drained, from its first
        # request on.)
        first = yield connectClient(self, webPort)
        first.transport.write(b"GET / HTTP/1.1\r\nHost: hello\r\n\r\n")
        yield first.waitFor(1)
        drained = yield admin.post("/admin/endpoints/drain", {
            "router": "web", "name": "/#/static/hello", "address": "127.0.0.1:%d" % hello[2],
        })
        self.assertEqual(drained.code, 200, drained)
        tcp = yield connectClient(self, dbPort)
        tcp.transport.write(b"GET /through-tcp HTTP/1.1\r\nHost: world\r\n\r\n")
        yield tcp.waitFor(1)

        stopTraffic = self.traffic(webPort, [b"hello", b"world", b"greet"])
        self.addCleanup(stopTraffic)

        browser = yield Chromium.launch(self, self.executable, reactor=reactor, height=900)
        page = yield browser.newPage()
        for domain in ("Page", "Runtime", "Log"):
            yield page.send(domain + ".enable")
        yield page.send("Page.addScriptToEvaluateOnNewDocument", {"source": WATCH_POLICY})
        yield page.navigate(reactor, "http://127.0.0.1:%d/" % (proxy.adminPort,), 15)
        status = 'document.getElementById("status").textContent'

        def seen():
            return page.evaluate(status)

        # The reads need the token: the page asks for it.
        yield page.waitFor(reactor, '!document.getElementById("auth").hidden', 15, seen)
        self.assertEqual((yield page.evaluate(status)), "this admin API needs a token")
        yield page.evaluate(
            'document.getElementById("token").value = %s;'
            'document.getElementById("save").click(); true' % (json.dumps(TOKEN),)
        )

        # Live numbers: a rate and latencies for the bound name.
        hello = yield page.waitFor(
            reactor,
            "(r => r && /^\\d/.test(r.rate) && /\\d/.test(r.p50) && /\\d/.test(r.p99) && r)(%s)"
            % (row("web", "/#/static/hello"),),
            20, seen,
        )
        self.assertRegex(hello["rate"], r"^\d+(\.\d+)?/s$")
        self.assertRegex(hello["p50"], r"^\d+(\.\d+)? m?s$")
        self.assertRegex(hello["p99"], r"^\d+(\.\d+)? m?s$")
        self.assertEqual(hello["success"], "100 %")
        self.assertEqual(hello["resolution"], "bound")
        self.assertGreater(float(NUMBER.match(hello["rate"]).group()), 0)
        # One more poll, so that the sparklines have a line to draw.
        hello = yield page.waitFor(
            reactor, "(r => r && r.spark.includes(' L') && r)(%s)" % (
                row("web", "/#/static/hello"),), 10, seen)
        _log.info("dashboard row for /#/static/hello: {row}", row=hello)

        nope = yield page.evaluate(row("web", "/#/static/nope"))
        self.assertEqual(nope["resolution"], "neg")
        self.assertTrue(nope["unresolved"])
        states = yield page.evaluate(
            "Array.from(document.querySelectorAll('section[data-router=\"web\"] "
            "table.endpoints td.state')).map(td => td.textContent)"
        )
        self.assertIn("draining", states)
        self.assertIn("live", states)
        web = yield page.evaluate(
            "(() => { const s = document.querySelector('section[data-router=\"web\"]');"
            " return {rules: s.querySelector('pre.rules-text').textContent,"
            " version: s.querySelector('.version').textContent,"
            " pill: s.querySelector('.pill').textContent}; })()"
        )
        self.assertEqual(web, {
            "rules": RULES, "version": "version " + rulesVersion(RULES), "pill": "http",
        })
        db = yield page.evaluate(
            "(() => { const s = document.querySelector('section[data-router=\"db\"]');"
            " const boxes = s.querySelectorAll('div.rules');"
            " return {pill: s.querySelector('.pill').textContent,"
            " rulesShown: !boxes[0].hidden, destination: boxes[1].textContent,"
            " rows: s.querySelectorAll('table.traffic tbody tr').length}; })()"
        )
        self.assertEqual(db, {
            "pill": "tcp", "rulesShown": True, "destination": "Destination/#/static/world",
            "rows": 1,
        })
        # Every table has the same column widths.
        widths = yield page.evaluate(
            "Array.from(document.querySelectorAll('table.grid')).map(t =>"
            " JSON.stringify(Array.from(t.rows[0].cells).map(c => c.offsetWidth)))"
        )
        self.assertGreaterEqual(len(widths), 4)
        self.assertEqual(len(set(widths)), 1, widths)

        # Explain defaults to the HTTP router, though "db" sorts first; the
        # TCP router explains too.
        choices = yield page.evaluate(
            "(() => { const s = document.getElementById('explain-router');"
            " return {value: s.value, options: Array.from(s.options).map(o => o.value)}; })()"
        )
        self.assertEqual(choices, {"value": "web", "options": ["web", "db"]})
        yield page.evaluate(
            'document.getElementById("explain-name").value = "/svc/greet";'
            'document.getElementById("explain-go").click(); true'
        )
        explained = yield page.waitFor(
            reactor, "document.querySelectorAll('#explain-tree li').length", 10, seen
        )
        self.assertGreaterEqual(explained, 2)
        self.assertEqual(
            (yield page.evaluate('document.getElementById("explain-status").textContent')),
            "web: /svc/greet \u2192 /#/static/hello | /#/static/greet",
        )

        # The token is kept for the session only.
        kept = yield page.evaluate(
            "[sessionStorage.getItem('meshproxy-token'), localStorage.length]"
        )
        self.assertEqual(kept, [TOKEN, 0])

        # The percentiles as Prometheus' histogram_quantile computes them.
        quantiles = yield page.evaluate(
            "[quantile(0.5, [1, 2, 4], [0, 10, 10, 10]),"
            " quantile(0.9, [1, 2, 4], [0, 0, 10, 10]),"
            " quantile(0.99, [1, 2, 4], [5, 5, 5, 10]),"
            " quantile(0.5, [0.001, 0.0025], [4, 8, 8]),"
            " quantile(0.5, [1, 2], [0, 0, 0])]"
        )
        self.assertEqual(quantiles, [1.5, 3.8, 4, 0.001, None])

        # Every resolution and endpoint state is marked as such.
        kinds = yield page.evaluate(
            "[['bound', 'pending', 'neg', 'failed'].map(r =>"
            "   resolutionCell({resolution: r}).firstChild.className),"
            " ['live', 'probing', 'draining', 'ejected'].map(state =>"
            "   endpointRows('/#/x', {endpoints: [{address: 'a', state: state}]})[0]"
            "     .querySelector('td.state .badge').className)]"
        )
        self.assertEqual(kinds, [
            ["badge ok", "badge warn", "badge bad", "badge bad"],
            ["badge ok", "badge warn", "badge warn", "badge bad"],
        ])
        # Names are shown as text, never parsed as HTML.
        hostile = "<img src=x onerror=\"window.__xss=1\">"
        shown = yield page.evaluate(
            "(name => { const rows = [trafficRow('web', name, {resolution: 'neg'}, 'http', [], 0),"
            " ...endpointRows(name, {resolution: 'bound', endpoints: [{address: name}]})];"
            " return [rows.some(r => r.querySelector('img')),"
            " rows.map(r => r.querySelector('td.name').textContent)]; })(%s)"
            % (json.dumps(hostile),)
        )
        self.assertEqual(shown, [False, [hostile, hostile]])

        # Nothing went wrong: no exception, no error logged, no refusal by
        # the policy. The only errors allowed are the 401s of the reads
        # made before the token was given.
        exceptions = page.events("Runtime.exceptionThrown")
        self.assertEqual(exceptions, [])
        console = [
            e for e in page.events("Runtime.consoleAPICalled")
            if e["type"] in ("error", "assert", "warning")
        ]
        self.assertEqual(console, [])
        logged = [e["entry"] for e in page.events("Log.entryAdded")
                  if e["entry"]["level"] in ("error", "warning")]
        unexpected = [
            entry for entry in logged
            if not (entry.get("source") == "network" and "status of 401" in entry["text"]
                    and "/admin/" in entry.get("url", ""))
        ]
        self.assertEqual(unexpected, [])
        self.assertEqual((yield page.evaluate("window.__violations")), [])

        # A screenshot of the whole page, as the test's artifact.
        metrics = yield page.send("Page.getLayoutMetrics")
        size = metrics["cssContentSize"]
        shot = yield page.send("Page.captureScreenshot", {
            "format": "png", "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": size["width"], "height": size["height"],
                     "scale": 1},
        })
        png = base64.b64decode(shot["data"])
        self.assertTrue(png.startswith(b"\x89PNG\r\n\x1a\n"))
        path = os.path.abspath(self.mktemp() + ".png")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(png)
        _log.info("dashboard screenshot: {path}", path=path)

        # And the policy is in force: an inline script is refused.
        yield page.evaluate(
            "(() => { const s = document.createElement('script');"
            " s.textContent = 'window.__inlineRan = true'; document.body.appendChild(s);"
            " return true; })()"
        )
        yield page.waitFor(reactor, "window.__violations.length", 5)
        self.assertIsNone((yield page.evaluate("window.__inlineRan")))
        self.assertIn("script-src", (yield page.evaluate("window.__violations[0]")))

        _log.info("browser test took {seconds:.1f} s", seconds=reactor.seconds() - started)
