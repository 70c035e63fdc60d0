"""
A real C{twistd meshproxy --workers 2} as a child process, on loopback:
the admin reads that depend on traffic (C{/admin/stats}, explain, the rules
dry run) show the workers' traffic, not the supervisor's idle routers; the
dashboard, in headless Chromium, shows live numbers; and both workers
append whole lines to the one access-log file.
"""

from __future__ import annotations

import json
import os
from typing import Any

from twisted.internet import defer, task
from twisted.trial.unittest import SkipTest

from tests import test_workers_integration as integration
from tests.admin_support import AdminClient
from tests.test_reload_integration import ProcessTestCase

#: Seconds the access log may take to reach the file (its writer hands
#: lines on every few milliseconds; the bound is generous for a loaded box).
LOG_WAIT = 20.0


class WorkersAdminTests(ProcessTestCase):
    """
    The admin API of a supervisor whose two workers serve the traffic.
    """

    timeout = 120

    @defer.inlineCallbacks
    def startWorkers(self, more: str = "") -> Any:
        yield self.upstreams(0.005)
        proxy = yield self.startProxy("workers: 2\n" + more + self.config(target="a"))
        pids = []
        for worker in (0, 1):
            match = yield proxy.waitFor(r"worker %d \(pid (\d+)\) running version 1" % (worker,))
            pids.append(int(match.group(1)))
        proxy.workerPids = pids
        self.admin = AdminClient(self, proxy.ports["admin"])
        return proxy

    @defer.inlineCallbacks
    def trafficOnBothWorkers(self, proxy: Any, start: int = 0) -> Any:
        """
        Rounds of 10 requests (each on its own connection, for
        C{/<start>}, C{/<start + 1>}, ...) until both workers have served
        some.

        @return: how many requests were answered.
        """
        count = 0
        for round in range(20):
            yield integration.WorkersProcessTests.requests(self, proxy, 10, start + round * 10)
            count += 10
            served = {
                pid for pid in proxy.workerPids
                if integration.connectionsTo(pid, self.ports["a"]) > 0
            }
            if len(served) == 2:
                return count
        self.fail("the requests never reached both workers")

    @defer.inlineCallbacks
    def test_statsExplainAndDryRunSeeTheWorkersTraffic(self) -> Any:
        """
        After requests served by both workers, C{/admin/stats} counts every
        one of them, explain shows the endpoint's requests summed over the
        workers, and the rules dry run checks the name they routed.
        """
        proxy = yield self.startWorkers()
        count = yield self.trafficOnBothWorkers(proxy)

        response = yield self.admin.get("/admin/stats")
        self.assertEqual(response.code, 200, response.body)
        stats = json.loads(response.body)
        self.assertEqual(stats["missing"], [])
        bound = stats["routers"]["web"]["boundNames"]["/#/static/a"]
        self.assertEqual(bound["requests"], count)
        self.assertEqual(bound["responses"]["2xx"], count)
        self.assertEqual(bound["duration"]["buckets"][-1], count)
        self.assertEqual(stats["routers"]["web"]["connections"]["opened"], count)

        response = yield self.admin.get("/admin/routers/web/explain?name=/svc/hello")
        self.assertEqual(response.code, 200, response.body)
        explained = json.loads(response.body)
        self.assertEqual(explained["destination"], "/#/static/a")
        self.assertEqual(explained["missing"], [])
        [endpoint] = explained["endpoints"]["/#/static/a"]
        self.assertEqual(endpoint["address"], "127.0.0.1:%d" % (self.ports["a"],))
        self.assertEqual(endpoint["requests"], count)
        self.assertEqual(endpoint["state"], "live")
        self.assertEqual(endpoint["stateDetail"], "live on 2/2")
        self.assertGreater(endpoint["ewmaMs"], 0)
        self.assertIn("score", endpoint)

        response = yield self.admin.post(
            "/admin/routers/web/rules?dryRun=1", "/svc/hello => /#/static/b;\n"
        )
        self.assertEqual(response.code, 200, response.body)
        self.assertEqual(
            json.loads(response.body),
            {"valid": True, "checked": 1, "changes": [
                {"name": "/svc/hello", "old": "/#/static/a", "new": "/#/static/b"},
            ]},
        )

    @defer.inlineCallbacks
    def test_workersAppendWholeLinesToOneAccessLog(self) -> Any:
        """
        Both workers write the access log to the same file: every request
        is one line of JSON, none torn or interleaved with another.
        """
        from twisted.internet import reactor

        path = os.path.join(self.mktemp() + "-access.log")
        more = "telemetry:\n  accessLog: {path: %s}\n" % (json.dumps(os.path.abspath(path)),)
        proxy = yield self.startWorkers(more)
        count = 0
        for _ in range(3):
            count += yield self.trafficOnBothWorkers(proxy, count)

        def lines() -> list[bytes]:
            try:
                with open(path, "rb") as f:
                    return f.read().split(b"\n")
            except FileNotFoundError:
                return []

        waited = 0.0
        while len(lines()) < count + 1 and waited < LOG_WAIT:
            yield task.deferLater(reactor, 0.05, lambda: None)
            waited += 0.05
        written = lines()
        self.assertEqual(written[-1], b"", "the file ends inside a line")
        records = [json.loads(line) for line in written[:-1]]
        self.assertEqual(len(records), count)
        self.assertEqual(
            sorted(record["path"] for record in records),
            sorted("/%d" % (i,) for i in range(count)),
        )


class WorkersDashboardTests(ProcessTestCase):
    """
    The dashboard of a supervisor whose two workers serve the traffic, in
    a real browser (skipped without Chromium, as
    L{tests.test_dashboard_browser}).
    """

    timeout = 120

    def setUp(self) -> None:
        from tests.browser_support import findChromium, haveWebsocketClient

        self.executable = findChromium()
        missing = None
        if self.executable is None:
            missing = "chromium is not installed (apt-get install chromium; .ci/run installs it)"
        elif not haveWebsocketClient():
            missing = "autobahn is not installed (a test dependency in tox.ini)"
        if missing is not None:
            if os.environ.get("CI"):
                self.fail(missing)
            raise SkipTest(missing)
        from twisted.internet import reactor

        self.reactor = reactor

    @defer.inlineCallbacks
    def test_liveNumbersFromTheWorkers(self) -> Any:
        """
        With traffic served by the workers only, the page shows a request
        rate, latencies and the success rate of the bound name, and the
        endpoint's requests.
        """
        from tests.browser_support import Chromium
        from tests.test_dashboard_browser import NUMBER, DashboardInBrowserTests, row

        proxy = yield WorkersAdminTests.startWorkers(self)  # type: ignore[arg-type]
        stopTraffic = DashboardInBrowserTests.traffic(
            self, proxy.ports["router web"], [b"hello"] * 4  # type: ignore[arg-type]
        )
        self.addCleanup(stopTraffic)
        browser = yield Chromium.launch(self, self.executable, reactor=self.reactor, height=900)
        page = yield browser.newPage()
        for domain in ("Page", "Runtime", "Log"):
            yield page.send(domain + ".enable")
        yield page.navigate(self.reactor, "http://127.0.0.1:%d/" % (proxy.ports["admin"],), 15)

        def seen() -> Any:
            return page.evaluate('document.getElementById("status").textContent')

        found = yield page.waitFor(
            self.reactor,
            "(r => r && /^\\d/.test(r.rate) && /\\d/.test(r.p50) && r)(%s)"
            % (row("web", "/#/static/a"),),
            30, seen,
        )
        self.assertGreater(float(NUMBER.match(found["rate"]).group()), 0)
        self.assertEqual(found["success"], "100 %")
        requests = yield page.evaluate(
            "Array.from(document.querySelectorAll('section[data-router=\"web\"] "
            "table.endpoints td')).map(td => td.textContent)"
        )
        self.assertIn("live", requests)
