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
from twisted.trial.unittest import SynchronousTestCase

from meshproxy.admin.api import AdminAPI, _requireToken
from meshproxy.telemetry.metrics import MeshMetrics

TOKEN = "s3cret-t0ken"
BASE = "http://admin.invalid"


class FakeRouter:
    """
    A router as the admin API sees it: something with C{state()}.
    """

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
        self.routers: dict[str, FakeRouter] = {}

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

    def setUp(self) -> None:
        self.runtime = FakeRuntime()
        self.registry = CollectorRegistry()
        self.metrics = MeshMetrics(self.registry)
        self.api = AdminAPI(
            self.runtime, self.registry, token=self.token, protectReads=self.protectReads
        )
        self.client = StubTreq(self.api.app.resource())

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


class DashboardTests(_APITestMixin, SynchronousTestCase):
    """
    C{/}: the dashboard page.
    """

    def test_dashboardIsHTMLWithTableAndScript(self) -> None:
        response, body = self.request("GET", "/")
        self.assertEqual(response.code, 200)
        self.assertEqual(
            self.header(response, "content-type"), "text/html; charset=utf-8"
        )
        page = body.decode("utf-8")
        self.assertTrue(page.startswith("<!doctype html>"))
        self.assertIn("<script>", page)
        self.assertIn('el("table")', page)
        self.assertIn("admin/state", page)
        self.assertIn("setInterval(refresh, 2000)", page)
        for column in ("bound name", "endpoint", "state", "EWMA ms", "pending",
                       "requests", "success rate"):
            self.assertIn(f'"{column}"', page)

    def test_dashboardLoadsNothingExternal(self) -> None:
        """
        No external URL, no src= or href= attribute at all, and a CSP that
        forbids loading anything but calls back to the admin API.
        """
        response, body = self.request("GET", "/")
        page = body.decode("utf-8")
        self.assertIsNone(re.search(r"https?:|//[a-z0-9]", page, re.I), page)
        self.assertNotIn("src=", page)
        self.assertNotIn("href=", page)
        self.assertNotIn("@import", page)
        csp = self.header(response, "content-security-policy")
        self.assertIn("default-src 'none'", csp)
        self.assertIn("connect-src 'self'", csp)

    def test_dashboardNeverUsesInnerHTML(self) -> None:
        """
        Names and addresses come from namers; the page must insert them as
        text, never as markup.
        """
        _, body = self.request("GET", "/")
        self.assertNotIn(b"innerHTML", body)
        self.assertNotIn(b"insertAdjacentHTML", body)
        self.assertIn(b"textContent", body)


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
        for path in ("/metrics", "/admin/state", "/live", "/ready", "/"):
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
        for path in ("/metrics", "/admin/state"):
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
        response, _ = self.request(
            "GET", "/metrics", headers={"Authorization": "Bearer " + TOKEN}
        )
        self.assertEqual(response.code, 200)

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
        request = self.makeRequest(b"POST", b"Bearer " + "jeton-é".encode("utf-8"))
        self.assertEqual(handler(api, request), b"done")
