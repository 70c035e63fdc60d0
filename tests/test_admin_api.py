"""
Tests for L{meshproxy.admin.api}, through L{treq.testing.StubTreq}: real
HTTP semantics in memory, no sockets.
"""

from __future__ import annotations

import json
import re
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from treq.testing import StubTreq
from twisted.internet.defer import Deferred, fail
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from meshproxy.admin import api as apiModule
from meshproxy.admin.api import AdminAPI
from meshproxy.admin.guard import _requireToken
from meshproxy.admin.requests import JSON_LIMIT, RULES_LIMIT
from meshproxy.admin.rules import RulesStore, rulesVersion
from meshproxy.telemetry.metrics import MeshMetrics
from tests.test_admin_rules import CONFIG_RULES, USERS_V2, FakeRulesRouter

TOKEN = "s3cret-t0ken"
# As a client of the default listener sees it: the Host is an IP literal.
BASE = "http://127.0.0.1:9990"


class FakeRouter:
    """
    A router as the admin API sees it: something with C{state()}, and
    without rules (as a TCP router).
    """

    rules = None

    def __init__(self, state: dict[str, Any]) -> None:
        self._state = state

    def state(self) -> dict[str, Any]:
        return self._state


class FakeRuntime:
    """
    The runtime as the admin API sees it.
    """

    def __init__(self) -> None:
        self.ready = True
        self.waiting: list[str] = []
        self.routers: dict[str, Any] = {}
        self.shutdownGrace = 30.0
        self.shutdowns: list[Deferred] = []

    def shutdown(self) -> Deferred:
        d: Deferred = Deferred()
        self.shutdowns.append(d)
        return d

    def isReady(self) -> bool:
        return self.ready

    def waitingFor(self) -> list[str]:
        return list(self.waiting)


class _APITestMixin:
    """
    Builds an L{AdminAPI} over a fake runtime and a fresh registry, and a
    L{StubTreq} client on it.
    """

    token: str | None = None
    protectReads = False
    allowedHosts: tuple[str, ...] = ()

    def setUp(self) -> None:
        self.runtime = FakeRuntime()
        self.registry = CollectorRegistry()
        self.metrics = MeshMetrics(self.registry)
        self.clock = Clock()
        self.api = AdminAPI(
            self.runtime, self.registry, token=self.token, protectReads=self.protectReads,
            allowedHosts=self.allowedHosts, rulesStores=self.makeStores(), clock=self.clock,
        )
        self.client = StubTreq(self.api.app.resource())

    def makeStores(self) -> dict[str, RulesStore] | None:
        """
        The rules stores given to the API; none by default.
        """
        return None

    def request(self, method: str, path: str, **kwargs: Any) -> tuple[Any, bytes]:
        """
        Make a request, returning the response and its whole body.
        """
        response = self.successResultOf(
            self.client.request(method, BASE + path, **kwargs)
        )
        body = self.successResultOf(self.client.content(response))
        return response, body

    def header(self, response: Any, name: str) -> str | None:
        values = response.headers.getRawHeaders(name)
        if values is None:
            return None
        self.assertEqual(len(values), 1, f"{name} sent {len(values)} times")
        return values[0]

    def assertJSON(self, response: Any, body: bytes, code: int, expected: Any) -> None:
        """
        The answer has status C{code}, is JSON, ends in a newline and
        decodes to C{expected}.
        """
        self.assertEqual(response.code, code, body)
        self.assertEqual(self.header(response, "content-type"), "application/json")
        self.assertTrue(body.endswith(b"\n"), body)
        self.assertEqual(json.loads(body), expected)


class HealthTests(_APITestMixin, SynchronousTestCase):
    """
    C{/live} and C{/ready}.
    """

    def test_live(self) -> None:
        response, body = self.request("GET", "/live")
        self.assertJSON(response, body, 200, {"live": True})

    def test_liveAnswersEvenWhenNotReady(self) -> None:
        self.runtime.ready = False
        response, body = self.request("GET", "/live")
        self.assertJSON(response, body, 200, {"live": True})

    def test_ready(self) -> None:
        response, body = self.request("GET", "/ready")
        self.assertJSON(response, body, 200, {"ready": True})

    def test_readyNamingNamersStillLoading(self) -> None:
        """
        Ready after the wait for slow namers ran out: 200, naming them.
        """
        self.runtime.waiting = ["namer /#/x (still loading after 10 s)"]
        response, body = self.request("GET", "/ready")
        self.assertJSON(
            response, body, 200,
            {"ready": True, "waiting": ["namer /#/x (still loading after 10 s)"]},
        )

    def test_notReadyIs503WithWhatItWaitsFor(self) -> None:
        self.runtime.ready = False
        self.runtime.waiting = ["listener web", "namer /#/fs"]
        response, body = self.request("GET", "/ready")
        self.assertJSON(
            response, body, 503,
            {"ready": False, "waiting": ["listener web", "namer /#/fs"]},
        )

    def test_readinessIsReadAtEachRequest(self) -> None:
        self.runtime.ready = False
        self.assertEqual(self.request("GET", "/ready")[0].code, 503)
        self.runtime.ready = True
        self.assertEqual(self.request("GET", "/ready")[0].code, 200)

    def test_headOnLive(self) -> None:
        response, body = self.request("HEAD", "/live")
        self.assertEqual(response.code, 200)
        self.assertEqual(body, b"")


class MetricsRouteTests(_APITestMixin, SynchronousTestCase):
    """
    C{/metrics}.
    """

    def test_metricsExportsTheRegistry(self) -> None:
        self.metrics.route("web", "/#/fs/users").record(200, 0.004)
        self.metrics.error("web", "no-endpoint")
        response, body = self.request("GET", "/metrics")
        self.assertEqual(response.code, 200)
        self.assertEqual(self.header(response, "content-type"), CONTENT_TYPE_LATEST)
        samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(body.decode("utf-8"))
            for s in f.samples
        }
        self.assertEqual(
            samples[("meshproxy_requests_total", (("name", "/#/fs/users"), ("router", "web")))],
            1,
        )
        self.assertEqual(
            samples[("meshproxy_errors_total", (("reason", "no-endpoint"), ("router", "web")))],
            1,
        )

    def test_metricsIsFreshAtEachScrape(self) -> None:
        stats = self.metrics.route("web", "/#/fs/users")
        stats.record(200, 0.004)
        _, first = self.request("GET", "/metrics")
        stats.record(200, 0.004)
        _, second = self.request("GET", "/metrics")
        line = re.compile(rb'^meshproxy_requests_total\{.*\} (\S+)$', re.M)
        self.assertEqual(float(line.search(first).group(1)), 1)
        self.assertEqual(float(line.search(second).group(1)), 2)


class StateTests(_APITestMixin, SynchronousTestCase):
    """
    C{/admin/state}.
    """

    def test_noRouters(self) -> None:
        response, body = self.request("GET", "/admin/state")
        self.assertJSON(response, body, 200, {"routers": {}})

    def test_everyRoutersState(self) -> None:
        web = {
            "protocol": "http",
            "names": {"/#/fs/users": {"endpoints": [
                {"address": "127.0.0.1:8081", "state": "live", "ewmaMs": 1.5,
                 "pending": 0, "requests": 10, "successRate": 1.0,
                 "consecutiveFailures": 0},
            ]}},
        }
        db = {"protocol": "tcp", "names": {}}
        self.runtime.routers = {"web": FakeRouter(web), "db": FakeRouter(db)}
        response, body = self.request("GET", "/admin/state")
        self.assertJSON(response, body, 200, {"routers": {"web": web, "db": db}})

    def test_stateIsNotCached(self) -> None:
        response, _ = self.request("GET", "/admin/state")
        self.assertEqual(self.header(response, "cache-control"), "no-store")

    def test_brokenRouterIs500JSON(self) -> None:
        """
        An exception in a router's C{state()} is logged and answered with a
        JSON 500, not a traceback page.
        """

        class Broken:
            def state(self) -> dict:
                raise RuntimeError("boom")

        self.runtime.routers = {"web": Broken()}
        response, body = self.request("GET", "/admin/state")
        self.assertJSON(response, body, 500, {"error": "internal error"})
        self.assertNotIn(b"boom", body)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


class StatsRouter(FakeRouter):
    """
    A router as C{/admin/stats} reads it: its name, the L{MeshMetrics} it
    records in (C{metrics}) and its connection counters (C{connStats}).
    """

    def __init__(self, name: str, metrics: MeshMetrics) -> None:
        super().__init__({})
        self.name = name
        self.metrics = metrics
        self.connStats = metrics.connections(name)


class StatsTests(_APITestMixin, SynchronousTestCase):
    """
    C{/admin/stats}: the cumulative counters the dashboard turns into rates.
    """

    def setUp(self) -> None:
        super().setUp()
        self.clock.advance(1733040000.25)

    def test_noRouters(self) -> None:
        response, body = self.request("GET", "/admin/stats")
        self.assertJSON(response, body, 200, {"time": 1733040000.25, "routers": {}})
        self.assertEqual(self.header(response, "cache-control"), "no-store")

    def test_countersPerRouterAndBoundName(self) -> None:
        """
        Each bound name has its requests, its responses per status class,
        and its latency histogram as cumulative buckets with their bounds
        (one more bucket than bounds: C{+Inf}) and the sum of seconds.
        """
        web = StatsRouter("web", self.metrics)
        users = self.metrics.route("web", "/#/fs/users")
        for status, seconds in ((200, 0.0005), (200, 0.003), (503, 0.2), (404, 30.0)):
            users.record(status, seconds)
        self.metrics.route("other", "/#/fs/users").record(200, 0.1)
        web.connStats.opened, web.connStats.closed = 3, 2
        self.runtime.routers = {"web": web}
        response, body = self.request("GET", "/admin/stats")
        self.assertEqual(response.code, 200, body)
        answer = json.loads(body)
        self.assertEqual(answer["time"], 1733040000.25)
        bounds = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]
        self.assertEqual(answer["routers"], {"web": {
            "connections": {"opened": 3, "closed": 2},
            "boundNames": {"/#/fs/users": {
                "requests": 4,
                "responses": {"1xx": 0, "2xx": 2, "3xx": 0, "4xx": 1, "5xx": 1},
                "duration": {
                    "bounds": bounds,
                    "buckets": [1, 1, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 4],
                    "sum": 0.0005 + 0.003 + 0.2 + 30.0,
                },
            }},
        }})

    def test_boundNamesSortedAndEveryRouter(self) -> None:
        """
        Every router is listed, a TCP router too: it records no requests,
        so it has no bound names, only its connections.
        """
        self.metrics.route("web", "/#/fs/users").record(200, 0.01)
        self.metrics.route("web", "/#/fs/orders").record(200, 0.01)
        self.runtime.routers = {
            "web": StatsRouter("web", self.metrics),
            "db": StatsRouter("db", self.metrics),
        }
        _, body = self.request("GET", "/admin/stats")
        routers = json.loads(body)["routers"]
        self.assertEqual(sorted(routers), ["db", "web"])
        self.assertEqual(list(routers["web"]["boundNames"]), ["/#/fs/orders", "/#/fs/users"])
        self.assertEqual(routers["db"], {
            "connections": {"opened": 0, "closed": 0}, "boundNames": {},
        })

    def test_routerWithoutCountersIsListedEmpty(self) -> None:
        self.runtime.routers = {"web": FakeRouter({})}
        _, body = self.request("GET", "/admin/stats")
        self.assertEqual(
            json.loads(body)["routers"], {"web": {"connections": None, "boundNames": {}}}
        )

    def test_readsTheCurrentCountersAndTime(self) -> None:
        users = self.metrics.route("web", "/#/fs/users")
        self.runtime.routers = {"web": StatsRouter("web", self.metrics)}
        _, body = self.request("GET", "/admin/stats")
        first = json.loads(body)
        users.record(200, 0.002)
        self.clock.advance(2)
        _, body = self.request("GET", "/admin/stats")
        second = json.loads(body)
        self.assertEqual(second["time"] - first["time"], 2)
        self.assertEqual(first["routers"]["web"]["boundNames"]["/#/fs/users"]["requests"], 0)
        self.assertEqual(second["routers"]["web"]["boundNames"]["/#/fs/users"]["requests"], 1)

    def test_headAndWrongMethod(self) -> None:
        response, body = self.request("HEAD", "/admin/stats")
        self.assertEqual((response.code, body), (200, b""))
        response, body = self.request("POST", "/admin/stats")
        self.assertEqual(response.code, 405)
        self.assertEqual(json.loads(body)["allowed"], ["GET", "HEAD"])

    def test_foreignHostRefused(self) -> None:
        response, body = self.request(
            "GET", "/admin/stats", headers={"Host": "evil.example"}
        )
        self.assertEqual(response.code, 421, body)


class ErrorTests(_APITestMixin, SynchronousTestCase):
    """
    Unknown paths and wrong methods get JSON errors.
    """

    def test_unknownPathIs404JSON(self) -> None:
        for path in ("/nope", "/admin", "/admin/state/extra", "/live/", "/metrics.txt"):
            response, body = self.request("GET", path)
            self.assertJSON(response, body, 404, {"error": "not found"})

    def test_wrongMethodIs405JSONWithAllow(self) -> None:
        for path in ("/live", "/ready", "/metrics", "/admin/state", "/"):
            response, body = self.request("POST", path, data=b"x")
            self.assertEqual(response.code, 405, path)
            self.assertEqual(self.header(response, "content-type"), "application/json")
            self.assertTrue(body.endswith(b"\n"))
            answer = json.loads(body)
            self.assertEqual(answer["error"], "method not allowed")
            self.assertIn("GET", answer["allowed"])
            self.assertIn("GET", self.header(response, "allow"))

    def test_deleteIs405(self) -> None:
        response, _ = self.request("DELETE", "/admin/state")
        self.assertEqual(response.code, 405)


class TokenConfigurationTests(SynchronousTestCase):
    """
    Bad token settings fail at construction, not at the first request.
    """

    def test_emptyTokenRefused(self) -> None:
        self.assertRaises(
            ValueError, AdminAPI, FakeRuntime(), CollectorRegistry(), token=""
        )

    def test_protectReadsNeedsAToken(self) -> None:
        self.assertRaises(
            ValueError, AdminAPI, FakeRuntime(), CollectorRegistry(), protectReads=True
        )


class TokenWithOpenReadsTests(_APITestMixin, SynchronousTestCase):
    """
    With a token but without C{protectReads}, reads need no token.
    """

    token = TOKEN

    def test_readsNeedNoToken(self) -> None:
        for path in ("/metrics", "/admin/state", "/admin/stats", "/live", "/ready", "/"):
            response, _ = self.request("GET", path)
            self.assertEqual(response.code, 200, path)


class ProtectedReadsTests(_APITestMixin, SynchronousTestCase):
    """
    With a token and C{protectReads}, data reads need the bearer token.
    """

    token = TOKEN
    protectReads = True

    def assertUnauthorized(self, response: Any, body: bytes) -> None:
        self.assertJSON(response, body, 401, {"error": "unauthorized"})
        self.assertEqual(self.header(response, "www-authenticate"), "Bearer")

    def test_missingTokenIs401(self) -> None:
        for path in ("/metrics", "/admin/state", "/admin/stats"):
            response, body = self.request("GET", path)
            self.assertUnauthorized(response, body)

    def test_wrongTokenIs401(self) -> None:
        for value in (
            "Bearer wrong",
            "Bearer " + TOKEN + "x",
            "Bearer " + TOKEN[:-1],
            "Bearer",
            "Bearer ",
            TOKEN,
            "Basic " + TOKEN,
        ):
            response, body = self.request(
                "GET", "/admin/state", headers={"Authorization": value}
            )
            self.assertUnauthorized(response, body)

    def test_rightTokenPasses(self) -> None:
        self.runtime.routers = {"web": FakeRouter({"names": {}})}
        for value in ("Bearer " + TOKEN, "bearer " + TOKEN, "Bearer  " + TOKEN + " "):
            response, body = self.request(
                "GET", "/admin/state", headers={"Authorization": value}
            )
            self.assertJSON(response, body, 200, {"routers": {"web": {"names": {}}}})
        for path in ("/metrics", "/admin/stats"):
            response, _ = self.request(
                "GET", path, headers={"Authorization": "Bearer " + TOKEN}
            )
            self.assertEqual(response.code, 200, path)

    def test_refusedRequestDoesNotRunTheHandler(self) -> None:
        calls = []

        class Spy(FakeRouter):
            def state(self) -> dict:
                calls.append(None)
                return {}

        self.runtime.routers = {"web": Spy({})}
        self.request("GET", "/admin/state")
        self.assertEqual(calls, [])

    def test_probesAndPageStayOpen(self) -> None:
        """
        Health probes carry no token, and the page holds no data: they are
        never guarded.
        """
        for path in ("/live", "/ready", "/"):
            response, _ = self.request("GET", path)
            self.assertEqual(response.code, 200, path)

    def test_unknownPathIs404EvenWithoutToken(self) -> None:
        response, body = self.request("GET", "/nope")
        self.assertJSON(response, body, 404, {"error": "not found"})


class RequireTokenTests(SynchronousTestCase):
    """
    L{_requireToken} on a mutating method, checked directly on the
    decorated function with a minimal request double.
    """

    def makeRequest(self, method: bytes, authorization: bytes | None = None) -> Any:
        from twisted.web.test.requesthelper import DummyRequest

        request = DummyRequest([b""])
        request.method = method
        if authorization is not None:
            request.requestHeaders.setRawHeaders(b"authorization", [authorization])
        return request

    def makeHandler(self) -> tuple[Any, list]:
        calls: list = []

        @_requireToken
        def handler(self: AdminAPI, request: Any) -> bytes:
            """
            A mutating call.
            """
            calls.append(request)
            return b"done"

        self.assertEqual(handler.__doc__.strip(), "A mutating call.")
        return handler, calls

    def test_mutationNeedsTokenWhenSet(self) -> None:
        api = AdminAPI(FakeRuntime(), CollectorRegistry(), token=TOKEN)
        handler, calls = self.makeHandler()
        request = self.makeRequest(b"POST")
        body = handler(api, request)
        self.assertEqual(request.responseCode, 401)
        self.assertEqual(json.loads(body), {"error": "unauthorized"})
        self.assertEqual(
            request.responseHeaders.getRawHeaders(b"www-authenticate"), [b"Bearer"]
        )
        self.assertEqual(calls, [])

        for method in (b"PUT", b"DELETE", b"PATCH"):
            request = self.makeRequest(method, b"Bearer nope")
            handler(api, request)
            self.assertEqual(request.responseCode, 401, method)
        self.assertEqual(calls, [])

        request = self.makeRequest(b"POST", b"Bearer " + TOKEN.encode())
        self.assertEqual(handler(api, request), b"done")
        self.assertEqual(calls, [request])

    def test_mutationOpenWithoutToken(self) -> None:
        api = AdminAPI(FakeRuntime(), CollectorRegistry())
        handler, calls = self.makeHandler()
        request = self.makeRequest(b"POST")
        self.assertEqual(handler(api, request), b"done")
        self.assertEqual(len(calls), 1)

    def test_readOpenUnlessProtectReads(self) -> None:
        handler, calls = self.makeHandler()
        api = AdminAPI(FakeRuntime(), CollectorRegistry(), token=TOKEN)
        self.assertEqual(handler(api, self.makeRequest(b"GET")), b"done")
        guarded = AdminAPI(FakeRuntime(), CollectorRegistry(), token=TOKEN, protectReads=True)
        request = self.makeRequest(b"GET")
        handler(guarded, request)
        self.assertEqual(request.responseCode, 401)
        self.assertEqual(len(calls), 1)

    def test_nonASCIITokenHeaderRefused(self) -> None:
        api = AdminAPI(FakeRuntime(), CollectorRegistry(), token="jeton-é")
        handler, calls = self.makeHandler()
        request = self.makeRequest(b"POST", b"Bearer \xff\xfe")
        handler(api, request)
        self.assertEqual(request.responseCode, 401)
        request = self.makeRequest(b"POST", b"Bearer " + "jeton-é".encode())
        self.assertEqual(handler(api, request), b"done")


AUTH = {"Authorization": "Bearer " + TOKEN}
CONFIG_VERSION = rulesVersion(CONFIG_RULES)
V2_VERSION = rulesVersion(USERS_V2)


def quoted(version: str) -> str:
    return '"' + version + '"'


class _RulesMixin(_APITestMixin):
    """
    An API over one rules-capable router, C{web}, and one plain one, C{db}.
    """

    def setUp(self) -> None:
        self.web = FakeRulesRouter()
        super().setUp()
        self.runtime.routers = {"web": self.web, "db": FakeRouter({"protocol": "tcp"})}

    def put(self, text: str | bytes, ifMatch: str | None = quoted(CONFIG_VERSION),
            headers: dict[str, str] | None = None, router: str = "web") -> tuple[Any, bytes]:
        headers = {"Content-Type": "text/plain; charset=utf-8", **(headers or {})}
        if ifMatch is not None:
            headers["If-Match"] = ifMatch
        data = text.encode("utf-8") if isinstance(text, str) else text
        return self.request(
            "PUT", f"/admin/routers/{router}/rules", data=data, headers=headers
        )

    def postJSON(self, path: str, body: Any, headers: dict[str, str] | None = None
                 ) -> tuple[Any, bytes]:
        data = body if isinstance(body, bytes) else json.dumps(body).encode("utf-8")
        headers = {"Content-Type": "application/json", **(headers or {})}
        return self.request("POST", path, data=data, headers=headers)


class GetRulesTests(_RulesMixin, SynchronousTestCase):
    """
    C{GET /admin/routers/{name}/rules}.
    """

    def test_rulesAsTextWithQuotedETag(self) -> None:
        response, body = self.request("GET", "/admin/routers/web/rules")
        self.assertEqual(response.code, 200)
        self.assertEqual(body, CONFIG_RULES.encode("utf-8"))
        self.assertEqual(self.header(response, "content-type"), "text/plain; charset=utf-8")
        self.assertEqual(self.header(response, "etag"), quoted(CONFIG_VERSION))
        self.assertEqual(self.header(response, "cache-control"), "no-store")

    def test_unknownRouterIs404JSON(self) -> None:
        for path in ("/admin/routers/nope/rules", "/admin/routers/nope/rules/history",
                     "/admin/routers/nope/explain?name=/svc/x"):
            response, body = self.request("GET", path)
            self.assertJSON(response, body, 404, {"error": "unknown router 'nope'"})

    def test_routerWithoutRulesIs404(self) -> None:
        response, body = self.request("GET", "/admin/routers/db/rules")
        self.assertEqual(response.code, 404)
        self.assertIn("db", json.loads(body)["error"])

    def test_getChangesNothing(self) -> None:
        self.request("GET", "/admin/routers/web/rules")
        self.request("HEAD", "/admin/routers/web/rules")
        self.assertEqual(self.web.setCalls, [])

    def test_deleteIs405(self) -> None:
        response, _ = self.request("DELETE", "/admin/routers/web/rules")
        self.assertEqual(response.code, 405)
        self.assertEqual(self.header(response, "allow"), "GET, HEAD, POST, PUT")


class PutRulesTests(_RulesMixin, SynchronousTestCase):
    """
    C{PUT /admin/routers/{name}/rules}.
    """

    def test_replaceWithTheCurrentVersion(self) -> None:
        response, body = self.put(USERS_V2)
        self.assertJSON(response, body, 200, {"version": V2_VERSION, "previous": CONFIG_VERSION})
        self.assertEqual(self.header(response, "etag"), quoted(V2_VERSION))
        self.assertEqual(self.web.setCalls, [USERS_V2])
        response, body = self.request("GET", "/admin/routers/web/rules")
        self.assertEqual(body, USERS_V2.encode("utf-8"))
        self.assertEqual(self.header(response, "etag"), quoted(V2_VERSION))

    def test_withoutIfMatchIs428(self) -> None:
        for ifMatch in (None, "", "  "):
            response, body = self.put(USERS_V2, ifMatch=ifMatch)
            self.assertEqual(response.code, 428, ifMatch)
            self.assertIn("If-Match", json.loads(body)["error"])
        self.assertEqual(self.web.setCalls, [])

    def test_staleVersionIs412WithTheCurrentETag(self) -> None:
        response, body = self.put(USERS_V2, ifMatch=quoted("0123456789abcdef"))
        self.assertEqual(response.code, 412)
        self.assertEqual(json.loads(body)["current"], CONFIG_VERSION)
        self.assertEqual(self.header(response, "etag"), quoted(CONFIG_VERSION))
        self.assertEqual(self.web.setCalls, [])

    def test_twoPutsWithTheSameIfMatchOneWins(self) -> None:
        first, _ = self.put(USERS_V2)
        second, body = self.put("/svc => /#/static;\n")
        self.assertEqual((first.code, second.code), (200, 412))
        self.assertEqual(json.loads(body)["current"], V2_VERSION)
        self.assertEqual(self.web.rulesText, USERS_V2)

    def test_ifMatchForms(self) -> None:
        """
        Weak tags never match; C{*}, lists and unquoted versions do.
        """
        response, _ = self.put(USERS_V2, ifMatch="W/" + quoted(CONFIG_VERSION))
        self.assertEqual(response.code, 412)
        response, _ = self.put(USERS_V2, ifMatch=CONFIG_VERSION)
        self.assertEqual(response.code, 200)
        response, _ = self.put(CONFIG_RULES, ifMatch='"aaaa", ' + quoted(V2_VERSION))
        self.assertEqual(response.code, 200)
        response, _ = self.put(USERS_V2, ifMatch="*")
        self.assertEqual(response.code, 200)
        self.assertEqual(self.web.setCalls, [USERS_V2, CONFIG_RULES, USERS_V2])

    def test_syntaxErrorIs400WithLineAndColumn(self) -> None:
        response, body = self.put("/svc => /#/fs;\n/svc/x =>> /#/fs/x;\n")
        self.assertEqual(response.code, 400)
        answer = json.loads(body)
        self.assertEqual(sorted(answer), ["column", "error", "line"])
        self.assertEqual((answer["line"], answer["column"]), (2, 10))
        self.assertEqual(self.web.setCalls, [])

    def test_unknownNamerIs400(self) -> None:
        response, body = self.put("/svc => /#/nope;\n")
        self.assertJSON(response, body, 400, {
            "error": "unknown namer prefix in /#/nope", "line": None, "column": None,
        })
        self.assertEqual(self.web.setCalls, [])

    def test_emptyBodyRefused(self) -> None:
        for text in ("", " \n\t"):
            response, body = self.put(text)
            self.assertEqual(response.code, 400)
            self.assertIn("empty", json.loads(body)["error"])
        self.assertEqual(self.web.setCalls, [])

    def test_commentOnlyRulesAccepted(self) -> None:
        response, _ = self.put("# nothing routed during the migration\n")
        self.assertEqual(response.code, 200)

    def test_tooLargeIs413(self) -> None:
        text = "# " + "x" * RULES_LIMIT + "\n/svc => /#/fs;\n"
        response, body = self.put(text)
        self.assertEqual(response.code, 413)
        self.assertEqual(self.header(response, "content-type"), "application/json")
        self.assertEqual(self.web.setCalls, [])

    def test_largestAccepted(self) -> None:
        text = "/svc => /#/fs;\n#"
        text += "x" * (RULES_LIMIT - len(text))
        response, _ = self.put(text)
        self.assertEqual(response.code, 200)

    def test_notUTF8Is400(self) -> None:
        response, body = self.put(b"/svc => /#/fs; # \xff\n")
        self.assertEqual(response.code, 400)
        self.assertIn("UTF-8", json.loads(body)["error"])

    def test_whoIsThePeerWithoutToken(self) -> None:
        self.put(USERS_V2)
        _, body = self.request("GET", "/admin/routers/web/rules/history")
        self.assertEqual(json.loads(body)[0]["who"], "127.0.0.1")

    def test_failedWriteIs500AndChangesNothing(self) -> None:
        def replace(text: str, ifMatch: Any, who: str) -> None:
            from meshproxy.admin.rules import PersistError
            raise PersistError("cannot save the rules to /x: disk full")

        self.api._store("web").replace = replace
        response, body = self.put(USERS_V2)
        self.assertJSON(response, body, 500, {"error": "cannot save the rules to /x: disk full"})
        self.assertEqual(self.web.setCalls, [])


class PersistedStoresTests(_RulesMixin, SynchronousTestCase):
    """
    The stores given to the API are the ones it uses: changes made through
    it are saved and come back after a restart.
    """

    def makeStores(self) -> dict[str, RulesStore]:
        self.stateDir = self.mktemp()
        return {"web": RulesStore(self.web, stateDir=self.stateDir, clock=self.clock)}

    def test_changeSurvivesARestart(self) -> None:
        self.put(USERS_V2)
        router = FakeRulesRouter()
        store = RulesStore(router, stateDir=self.stateDir, clock=self.clock)
        self.assertTrue(store.load())
        self.assertEqual(router.rulesText, USERS_V2)


class TokenRulesTests(_RulesMixin, SynchronousTestCase):
    """
    With a token, every change needs it; reads do not.
    """

    token = TOKEN

    def test_mutationsNeedTheToken(self) -> None:
        calls = [
            lambda h: self.put(USERS_V2, headers=h),
            lambda h: self.request("POST", "/admin/routers/web/rules?dryRun=1",
                                   data=USERS_V2.encode(),
                                   headers={**h, "Content-Type": "text/plain"}),
            lambda h: self.postJSON("/admin/routers/web/rules/rollback",
                                    {"version": CONFIG_VERSION},
                                    {**h, "If-Match": quoted(CONFIG_VERSION)}),
            lambda h: self.postJSON("/admin/endpoints/drain", {
                "router": "web", "name": "/#/fs/users", "address": "127.0.0.1:8081"}, h),
            lambda h: self.postJSON("/admin/endpoints/undrain", {
                "router": "web", "name": "/#/fs/users", "address": "127.0.0.1:8081"}, h),
            lambda h: self.request("POST", "/admin/shutdown", headers=h),
        ]
        for call in calls:
            for headers in ({}, {"Authorization": "Bearer wrong"}):
                response, body = call(headers)
                self.assertJSON(response, body, 401, {"error": "unauthorized"})
        self.assertEqual(self.web.setCalls, [])
        self.assertEqual(self.web.drained, set())
        self.clock.advance(1)
        self.assertEqual(self.runtime.shutdowns, [])

    def test_withTheTokenWhoIsToken(self) -> None:
        response, _ = self.put(USERS_V2, headers=AUTH)
        self.assertEqual(response.code, 200)
        _, body = self.request("GET", "/admin/routers/web/rules/history")
        self.assertEqual(json.loads(body)[0]["who"], "token")

    def test_readsNeedNoToken(self) -> None:
        for path in ("/admin/routers/web/rules", "/admin/routers/web/rules/history",
                     "/admin/routers/web/explain?name=/svc/users"):
            response, _ = self.request("GET", path)
            self.assertEqual(response.code, 200, path)


class ProtectedRulesReadsTests(_RulesMixin, SynchronousTestCase):
    """
    With C{protectReads}, the rules, their history and explain need the
    token too.
    """

    token = TOKEN
    protectReads = True

    def test_readsNeedTheToken(self) -> None:
        for path in ("/admin/routers/web/rules", "/admin/routers/web/rules/history",
                     "/admin/routers/web/explain?name=/svc/users"):
            response, body = self.request("GET", path)
            self.assertJSON(response, body, 401, {"error": "unauthorized"})
            response, _ = self.request("GET", path, headers=AUTH)
            self.assertEqual(response.code, 200, path)

    def test_unknownRouterNotRevealedWithoutToken(self) -> None:
        response, _ = self.request("GET", "/admin/routers/nope/rules")
        self.assertEqual(response.code, 401)


class DryRunTests(_RulesMixin, SynchronousTestCase):
    """
    C{POST /admin/routers/{name}/rules?dryRun=1}.
    """

    def dryRun(self, text: str | bytes, query: str = "?dryRun=1") -> tuple[Any, bytes]:
        data = text.encode("utf-8") if isinstance(text, str) else text
        return self.request("POST", "/admin/routers/web/rules" + query, data=data,
                            headers={"Content-Type": "text/plain"})

    def test_showsChangesForRecentNamesWithoutApplying(self) -> None:
        response, body = self.dryRun(USERS_V2)
        self.assertJSON(response, body, 200, {
            "valid": True,
            "checked": 2,
            "changes": [{
                "name": "/svc/users",
                "old": "/#/fs/users",
                "new": "/#/fs/users-v2 | /#/fs/users",
            }],
        })
        self.assertEqual(self.web.setCalls, [])
        _, history = self.request("GET", "/admin/routers/web/rules/history")
        self.assertEqual(len(json.loads(history)), 1)

    def test_needsNoIfMatch(self) -> None:
        response, _ = self.dryRun(USERS_V2, "?dryRun=true")
        self.assertEqual(response.code, 200)

    def test_invalidRulesAre400(self) -> None:
        response, body = self.dryRun("/svc =>\n  /#/fs/x |;")
        self.assertEqual(response.code, 400)
        answer = json.loads(body)
        self.assertIs(answer["valid"], False)
        self.assertEqual(answer["line"], 2)
        self.assertIsInstance(answer["column"], int)
        self.assertIn("error", answer)

    def test_postWithoutDryRunIs400(self) -> None:
        for query in ("", "?dryRun=0", "?dryRun=no", "?dryRun=1&dryRun=1"):
            response, body = self.dryRun(USERS_V2, query)
            self.assertEqual(response.code, 400, query)
            self.assertIn("PUT", json.loads(body)["error"])
        self.assertEqual(self.web.setCalls, [])

    def test_tooLargeIs413(self) -> None:
        response, _ = self.dryRun("#" * (RULES_LIMIT + 1))
        self.assertEqual(response.code, 413)


class HistoryAndRollbackTests(_RulesMixin, SynchronousTestCase):
    """
    C{GET .../rules/history} and C{POST .../rules/rollback}.
    """

    def rollback(self, body: Any, ifMatch: str | None) -> tuple[Any, bytes]:
        headers = {} if ifMatch is None else {"If-Match": ifMatch}
        return self.postJSON("/admin/routers/web/rules/rollback", body, headers)

    def test_historyNewestFirst(self) -> None:
        # A store the API makes itself dates the rules in force from its
        # first use.
        self.request("GET", "/admin/routers/web/rules")
        self.clock.advance(90)
        self.put(USERS_V2)
        response, body = self.request("GET", "/admin/routers/web/rules/history")
        self.assertJSON(response, body, 200, [
            {"version": V2_VERSION, "time": "1970-01-01T00:01:30.000Z",
             "who": "127.0.0.1", "text": USERS_V2},
            {"version": CONFIG_VERSION, "time": "1970-01-01T00:00:00.000Z",
             "who": "config", "text": CONFIG_RULES},
        ])

    def test_rollbackReappliesAsANewChange(self) -> None:
        self.put(USERS_V2)
        response, body = self.rollback({"version": CONFIG_VERSION}, quoted(V2_VERSION))
        self.assertJSON(response, body, 200, {"version": CONFIG_VERSION, "previous": V2_VERSION})
        self.assertEqual(self.header(response, "etag"), quoted(CONFIG_VERSION))
        self.assertEqual(self.web.rulesText, CONFIG_RULES)
        _, history = self.request("GET", "/admin/routers/web/rules/history")
        self.assertEqual(len(json.loads(history)), 3)

    def test_rollbackNeedsIfMatch(self) -> None:
        self.put(USERS_V2)
        response, _ = self.rollback({"version": CONFIG_VERSION}, None)
        self.assertEqual(response.code, 428)
        response, body = self.rollback({"version": CONFIG_VERSION}, quoted(CONFIG_VERSION))
        self.assertEqual(response.code, 412)
        self.assertEqual(json.loads(body)["current"], V2_VERSION)
        self.assertEqual(self.web.rulesText, USERS_V2)

    def test_unknownVersionIs404(self) -> None:
        response, body = self.rollback({"version": "feedfeedfeedfeed"}, "*")
        self.assertEqual(response.code, 404)
        self.assertIn("feedfeedfeedfeed", json.loads(body)["error"])

    def test_badBodiesAre400(self) -> None:
        for body in (b"{", b"[]", b"\xff", {}, {"version": 3}, {"version": ""}):
            response, answer = self.rollback(body, "*")
            self.assertEqual(response.code, 400, body)
            self.assertIn("error", json.loads(answer))
        self.assertEqual(self.web.setCalls, [])


class ExplainTests(_RulesMixin, SynchronousTestCase):
    """
    C{GET /admin/routers/{name}/explain}.
    """

    def test_eachKindIsPassedOn(self) -> None:
        self.web.explanation = {"name": "/svc/users", "delegation": {"path": "/svc/users"}}
        for query, expected in (
            ("name=/svc/users", {"name": "/svc/users", "host": None, "path": None}),
            ("host=users.example", {"name": None, "host": "users.example", "path": None}),
            ("path=/users/42%3Fx", {"name": None, "host": None, "path": "/users/42?x"}),
        ):
            response, body = self.request("GET", "/admin/routers/web/explain?" + query)
            self.assertJSON(response, body, 200, self.web.explanation)
            self.assertEqual(self.web.explained[-1], expected)

    def test_badParametersAre400WithAReason(self) -> None:
        for query in ("", "?name=/a&host=b", "?name=", "?name=/a&name=/b",
                      "?other=1", "?name=%ff"):
            response, body = self.request("GET", "/admin/routers/web/explain" + query)
            self.assertEqual(response.code, 400, query)
            self.assertTrue(json.loads(body)["error"], query)
        self.assertEqual(self.web.explained, [])

    def test_routersRefusalIs400WithItsReason(self) -> None:
        response, body = self.request("GET", "/admin/routers/web/explain?name=svc")
        self.assertJSON(response, body, 400, {"error": "a name starts with /, got 'svc'"})

    def test_routerWithoutExplainIs404(self) -> None:
        response, _ = self.request("GET", "/admin/routers/db/explain?name=/svc/x")
        self.assertEqual(response.code, 404)


class DrainTests(_RulesMixin, SynchronousTestCase):
    """
    C{POST /admin/endpoints/drain} and C{/undrain}.
    """

    ENDPOINT = {"router": "web", "name": "/#/fs/users", "address": "127.0.0.1:8081"}

    def test_drainThenUndrain(self) -> None:
        response, body = self.postJSON("/admin/endpoints/drain", self.ENDPOINT)
        self.assertJSON(response, body, 200, {"draining": True})
        self.assertEqual(self.web.drained, {("/#/fs/users", "127.0.0.1:8081")})
        response, body = self.postJSON("/admin/endpoints/undrain", self.ENDPOINT)
        self.assertJSON(response, body, 200, {"draining": False})
        self.assertEqual(self.web.drained, set())

    def test_drainIsAudited(self) -> None:
        events: list[dict] = []
        from twisted.logger import Logger

        self.patch(apiModule, "_audit", Logger(namespace="meshproxy.admin.audit",
                                               observer=events.append))
        self.postJSON("/admin/endpoints/drain", self.ENDPOINT)
        [event] = events
        self.assertEqual(
            (event["router"], event["name"], event["address"], event["action"], event["who"]),
            ("web", "/#/fs/users", "127.0.0.1:8081", "drained", "127.0.0.1"),
        )

    def test_unknownRouterNameOrAddressIs404(self) -> None:
        for path in ("/admin/endpoints/drain", "/admin/endpoints/undrain"):
            for change, message in (
                ({"router": "nope"}, "unknown router 'nope'"),
                ({"name": "/#/fs/other"}, "no endpoint 127.0.0.1:8081 in /#/fs/other"),
                ({"address": "127.0.0.1:9"}, "no endpoint 127.0.0.1:9 in /#/fs/users"),
            ):
                response, body = self.postJSON(path, {**self.ENDPOINT, **change})
                self.assertJSON(response, body, 404, {"error": message})
        self.assertEqual(self.web.drained, set())

    def test_badBodiesAre400(self) -> None:
        for body in (
            b"", b"not json", b'"a string"', b"\xff\xfe",
            {"router": "web", "name": "/#/fs/users"},
            {**self.ENDPOINT, "address": 8081},
            {**self.ENDPOINT, "router": ""},
        ):
            response, answer = self.postJSON("/admin/endpoints/drain", body)
            self.assertEqual(response.code, 400, body)
            self.assertEqual(self.header(response, "content-type"), "application/json")
            self.assertIn("error", json.loads(answer))
        self.assertEqual(self.web.drained, set())

    def test_tooLargeIs413(self) -> None:
        body = json.dumps({**self.ENDPOINT, "padding": "x" * JSON_LIMIT}).encode()
        response, _ = self.postJSON("/admin/endpoints/drain", body)
        self.assertEqual(response.code, 413)
        self.assertEqual(self.web.drained, set())

    def test_getIs405(self) -> None:
        response, _ = self.request("GET", "/admin/endpoints/drain")
        self.assertEqual(response.code, 405)


class ShutdownTests(_RulesMixin, SynchronousTestCase):
    """
    C{POST /admin/shutdown}.
    """

    def test_answers202ThenShutsDown(self) -> None:
        response, body = self.request("POST", "/admin/shutdown")
        self.assertJSON(response, body, 202, {"shuttingDown": True, "grace": 30.0})
        # Not before the answer is written.
        self.assertEqual(self.runtime.shutdowns, [])
        self.clock.advance(0)
        self.assertEqual(len(self.runtime.shutdowns), 1)

    def test_askingTwiceShutsDownOnce(self) -> None:
        self.request("POST", "/admin/shutdown")
        response, _ = self.request("POST", "/admin/shutdown")
        self.assertEqual(response.code, 202)
        self.clock.advance(0)
        self.assertEqual(len(self.runtime.shutdowns), 1)

    def test_failedShutdownIsLogged(self) -> None:
        self.runtime.shutdown = lambda: fail(RuntimeError("stuck"))
        self.request("POST", "/admin/shutdown")
        self.clock.advance(0)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_getIs405(self) -> None:
        response, _ = self.request("GET", "/admin/shutdown")
        self.assertEqual(response.code, 405)
        self.clock.advance(0)
        self.assertEqual(self.runtime.shutdowns, [])
