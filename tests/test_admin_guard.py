"""
Tests for the checks every admin API request passes before its handler runs
(L{meshproxy.admin.api.AdminAPI._admit}): the C{Host} it names (DNS
rebinding), the origin of mutating calls (cross-site pages) and the type of
their bodies (HTML forms). Through L{treq.testing.StubTreq}, and through a
real L{Site} on a L{StringTransport} for what an HTTP client library will
not send (no C{Host}, a header twice, a chunked body).

StubTreq serves through a plain L{twisted.web.server.Site}, which parses
form bodies of POSTs before any resource sees them and answers 400 to a
malformed multipart body: the form bodies sent here are well formed.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry
from treq.testing import StubTreq
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from meshproxy.admin.api import AdminAPI
from meshproxy.admin.policy import policyVersion
from meshproxy.admin.site import AdminSite
from tests.test_admin_api import AUTH, BASE, CONFIG_VERSION, TOKEN, FakeRuntime, _RulesMixin
from tests.test_admin_rules import USERS_V2

JSON = "application/json"
# The version of the policy of a router without one: every caller allowed.
OPEN_POLICY_VERSION = policyVersion({"default": "allow", "rules": []})
TEXT = "text/plain; charset=utf-8"
ENDPOINT = {"router": "web", "name": "/#/fs/users", "address": "127.0.0.1:8081"}
OWN_ORIGIN = BASE
REFUSED = "cross-origin request refused: "

# HTML form types, each with a well-formed body.
FORMS = {
    "application/x-www-form-urlencoded": b"router=web&name=%2F%23%2Ffs%2Fusers",
    "multipart/form-data; boundary=x":
        b'--x\r\nContent-Disposition: form-data; name="router"\r\n\r\nweb\r\n--x--\r\n',
}

# Every Host that names the API under test (allowedHosts = ("mesh.example",)).
ANSWERED_HOSTS = (
    "127.0.0.1", "127.0.0.1:9990", "10.1.2.3:80", "[::1]", "[::1]:9990",
    "[2001:db8::1]:9990", "localhost", "localhost:9990", "LOCALHOST:9990",
    "localhost.", "localhost.:9990", "localhost:", "mesh.example", "mesh.example:9990",
    "Mesh.Example.:9990",
)

# And some that do not: other names, names that merely contain an answered
# one, and what does not parse as a host and port.
FOREIGN_HOSTS = (
    "evil.example", "evil.example:9990", "evil.example.", "sub.mesh.example",
    "mesh.example.evil.example", "localhost.evil.example", "127.0.0.1.evil.example",
    "evil-localhost", "::1", "[::1", "[::1]9990", "[::1]:x", "[evil.example]:9990",
    "localhost:99x", "localhost:9990:1", "127.0.0.1:abc", "", ":9990",
    "\u00e9.example".encode("utf-8"),
)


class _GuardMixin(_RulesMixin):
    """
    An API over the rules-capable router C{web} whose changes are all
    recorded, so a test can tell that no handler ran.
    """

    allowedHosts = ("mesh.example",)

    def setUp(self) -> None:
        super().setUp()
        self.calls: list[str] = []
        for method in ("validateRules", "drain", "undrain"):
            setattr(self.web, method, self.spy(method, getattr(self.web, method)))

    def spy(self, name: str, original: Callable[..., Any]) -> Callable[..., Any]:
        def spied(*args: Any, **kwargs: Any) -> Any:
            self.calls.append(name)
            return original(*args, **kwargs)

        return spied

    def mutations(self) -> list[tuple[str, str, bytes | None, dict[str, str]]]:
        """
        One valid call of each mutating route: C{(method, path, body,
        headers)}.
        """
        endpoint = json.dumps(ENDPOINT).encode("utf-8")
        return [
            ("PUT", "/admin/routers/web/rules", USERS_V2.encode("utf-8"),
             {"Content-Type": TEXT, "If-Match": "*"}),
            ("POST", "/admin/routers/web/rules?dryRun=1", USERS_V2.encode("utf-8"),
             {"Content-Type": TEXT}),
            ("POST", "/admin/routers/web/rules/rollback",
             json.dumps({"version": CONFIG_VERSION}).encode("utf-8"),
             {"Content-Type": JSON, "If-Match": "*"}),
            ("PUT", "/admin/routers/web/policy",
             json.dumps({"default": "deny", "rules": [{"callers": ["10.0.0.0/8"]}]}).encode(),
             {"Content-Type": JSON, "If-Match": "*"}),
            ("POST", "/admin/routers/web/policy/rollback",
             json.dumps({"version": OPEN_POLICY_VERSION}).encode("utf-8"),
             {"Content-Type": JSON, "If-Match": "*"}),
            ("POST", "/admin/endpoints/drain", endpoint, {"Content-Type": JSON}),
            ("POST", "/admin/endpoints/undrain", endpoint, {"Content-Type": JSON}),
            ("POST", "/admin/shutdown", None, {}),
        ]

    def call(self, method: str, path: str, body: bytes | None, headers: dict[str, Any],
             **extra: Any) -> tuple[Any, bytes]:
        """
        Make one of L{mutations} with C{extra} headers added (or replacing).
        """
        kwargs: dict[str, Any] = {"headers": {**headers, **extra}}
        if body is not None:
            kwargs["data"] = body
        return self.request(method, path, **kwargs)

    def assertRefused(self, response: Any, body: bytes, code: int, start: str) -> None:
        """
        A JSON error with status C{code} whose message starts with C{start}.
        """
        self.assertEqual(response.code, code, body)
        self.assertEqual(self.header(response, "content-type"), "application/json")
        self.assertTrue(body.endswith(b"\n"), body)
        error = json.loads(body)["error"]
        self.assertTrue(error.startswith(start), error)

    def assertUntouched(self) -> None:
        """
        No handler changed or validated anything, and no shutdown is coming.
        """
        self.assertEqual(self.calls, [])
        self.assertEqual(self.web.setCalls, [])
        self.assertIsNone(self.web.policy)
        self.assertEqual(self.web.drained, set())
        self.clock.advance(1)
        self.assertEqual(self.runtime.shutdowns, [])

    def raw(self, data: bytes) -> bytes:
        """
        Send C{data} to the API through its L{AdminSite} on a
        L{StringTransport} and return all it wrote.
        """
        site = AdminSite(self.api.app.resource())
        # No idle timeout: nothing may be left on the global reactor.
        site.timeOut = None
        peer = IPv4Address("TCP", "127.0.0.1", 31337)
        channel = site.buildProtocol(peer)
        transport = StringTransport(
            hostAddress=IPv4Address("TCP", "127.0.0.1", 9990), peerAddress=peer
        )
        channel.makeConnection(transport)
        channel.dataReceived(data)
        channel.connectionLost(Failure(ConnectionDone()))
        return transport.value()

    def rawStatus(self, data: bytes) -> tuple[int, dict[str, Any]]:
        """
        L{raw}, for one answer: its status and its JSON body.
        """
        answer = self.raw(data)
        head, _, body = answer.partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        self.assertIn(b"\r\ncontent-type: application/json", head.lower())
        if b"\r\ntransfer-encoding: chunked" in head.lower():
            chunks = []
            while True:
                size, _, body = body.partition(b"\r\n")
                if int(size, 16) == 0:
                    break
                chunks.append(body[:int(size, 16)])
                body = body[int(size, 16) + 2:]
            body = b"".join(chunks)
        return status, json.loads(body)


class MutationsSanityTests(_GuardMixin, SynchronousTestCase):
    """
    The calls the other tests refuse are accepted as sent by a script.
    """

    def test_everyMutationPassesWithoutBrowserHeaders(self) -> None:
        for method, path, body, headers in self.mutations():
            response, answer = self.call(method, path, body, headers)
            self.assertIn(response.code, (200, 202), (path, answer))
        self.assertIn("drain", self.calls)
        # The policy was replaced, then rolled back to the router's own.
        self.assertEqual(len(self.api._policyStore("web").history()), 3)
        self.clock.advance(0)
        self.assertEqual(len(self.runtime.shutdowns), 1)


class HostTests(_GuardMixin, SynchronousTestCase):
    """
    Every request must name the API in C{Host}: an IP literal, C{localhost}
    or an C{allowedHosts} name, with or without a port. Else 421.
    """

    READS = ("/live", "/ready", "/metrics", "/admin/state", "/",
             "/admin/routers/web/rules", "/admin/routers/web/rules/history",
             "/admin/routers/web/explain?name=/svc/users")

    def test_answeredHosts(self) -> None:
        for host in ANSWERED_HOSTS:
            for path in self.READS:
                response, body = self.request("GET", path, headers={"Host": host})
                self.assertEqual(response.code, 200, (host, path, body))
        for host in ANSWERED_HOSTS:
            response, _ = self.request("POST", "/admin/shutdown", headers={"Host": host})
            self.assertEqual(response.code, 202, host)

    def test_foreignHostsAre421(self) -> None:
        for host in FOREIGN_HOSTS:
            for path in self.READS:
                response, body = self.request("GET", path, headers={"Host": host})
                self.assertRefused(response, body, 421, "misdirected request: ")
        self.assertEqual(self.calls, [])

    def test_foreignHostNamedInTheAnswer(self) -> None:
        response, body = self.request("GET", "/live", headers={"Host": "evil.example:9990"})
        self.assertEqual(response.code, 421)
        self.assertEqual(response.phrase, b"Misdirected Request")
        self.assertEqual(json.loads(body), {
            "error": "misdirected request: this admin API does not answer as host "
                     "'evil.example:9990' (use an IP address or localhost, or add the "
                     "name to admin.allowedHosts)",
        })

    def test_foreignHostRefusedOnEveryMutationBeforeAnythingElse(self) -> None:
        """
        A mutating call to a foreign C{Host} is a 421 even with its own
        origin, the right type and a body: no handler runs.
        """
        for host in ("evil.example", "evil.example:9990"):
            for method, path, body, headers in self.mutations():
                response, answer = self.call(
                    method, path, body, headers, Host=host,
                    Origin="http://" + host, **{"Sec-Fetch-Site": "same-origin"},
                )
                self.assertRefused(response, answer, 421, "misdirected request: ")
        self.assertUntouched()

    def test_unroutedRequestsAreHostChecked(self) -> None:
        """
        A path no route takes, or a method a route does not, is a 421 too
        for a foreign C{Host}, and a 404 or 405 otherwise.
        """
        for method, path, code in (("GET", "/nope", 404), ("DELETE", "/admin/state", 405)):
            response, body = self.request(method, path, headers={"Host": "evil.example"})
            self.assertRefused(response, body, 421, "misdirected request: ")
            response, _ = self.request(method, path, headers={"Host": "localhost"})
            self.assertEqual(response.code, code)

    def test_missingHostIsAnswered(self) -> None:
        """
        An HTTP/1.0 request may have no C{Host}; without one, no name was
        rebound.
        """
        status, body = self.rawStatus(b"GET /live HTTP/1.0\r\n\r\n")
        self.assertEqual((status, body), (200, {"live": True}))
        status, body = self.rawStatus(b"POST /admin/shutdown HTTP/1.0\r\n\r\n")
        self.assertEqual(status, 202)

    def test_hostSentTwiceIs400(self) -> None:
        for hosts in ((b"127.0.0.1", b"evil.example"), (b"localhost", b"localhost")):
            status, body = self.rawStatus(
                b"GET /live HTTP/1.1\r\nHost: %s\r\nHost: %s\r\nConnection: close\r\n\r\n"
                % hosts
            )
            self.assertEqual((status, body), (400, {"error": "more than one Host header"}))

    def test_withTheTokenStill421(self) -> None:
        """
        The token does not stand in for a right C{Host}: a browser sends no
        token, but a rebinding page is not where a token holder would be.
        """
        api = AdminAPI(FakeRuntime(), CollectorRegistry(), token=TOKEN, protectReads=True)
        client = StubTreq(api.app.resource())
        response = self.successResultOf(client.get(
            "http://evil.example:9990/admin/state", headers=AUTH
        ))
        self.assertEqual(response.code, 421)


class AnyHostTests(_GuardMixin, SynchronousTestCase):
    """
    C{allowedHosts: ["*"]} turns the C{Host} check off, and only that.
    """

    allowedHosts = ("*",)

    def test_anyHostIsAnswered(self) -> None:
        for host in FOREIGN_HOSTS:
            response, body = self.request("GET", "/admin/state", headers={"Host": host})
            self.assertEqual(response.code, 200, (host, body))

    def test_originStillChecked(self) -> None:
        response, body = self.request("POST", "/admin/shutdown", headers={
            "Host": "evil.example:9990", "Origin": "http://other.example",
        })
        self.assertRefused(response, body, 403, REFUSED)
        response, _ = self.request("POST", "/admin/shutdown", headers={
            "Host": "evil.example:9990", "Origin": "http://evil.example:9990",
        })
        self.assertEqual(response.code, 202)


class AllowedHostsConfigurationTests(SynchronousTestCase):
    """
    C{allowedHosts} names are host names; they are compared without case or
    trailing dot.
    """

    def test_portsAndSchemesRefused(self) -> None:
        for name in ("mesh.example:9990", "http://mesh.example", "", ".", "[::1]",
                     "user@mesh.example"):
            self.assertRaises(
                ValueError, AdminAPI, FakeRuntime(), CollectorRegistry(), allowedHosts=[name]
            )

    def test_namesNormalised(self) -> None:
        api = AdminAPI(FakeRuntime(), CollectorRegistry(), allowedHosts=["Mesh.Example."])
        client = StubTreq(api.app.resource())
        for host in ("mesh.example", "MESH.example:1"):
            response = self.successResultOf(
                client.get(BASE + "/live", headers={"Host": host})
            )
            self.assertEqual(response.code, 200, host)

    def test_noAllowedHostsByDefault(self) -> None:
        api = AdminAPI(FakeRuntime(), CollectorRegistry())
        client = StubTreq(api.app.resource())
        response = self.successResultOf(client.get("http://mesh.example/live"))
        self.assertEqual(response.code, 421)


class OriginTests(_GuardMixin, SynchronousTestCase):
    """
    A mutating call made by a web page of another origin is a 403, on every
    route, before anything is read or changed.
    """

    FOREIGN_ORIGINS = (
        "http://evil.example",
        "http://evil.example:9990",
        "https://127.0.0.1:9990",  # another scheme
        "http://127.0.0.1:9991",  # another port
        "http://127.0.0.1",  # no port
        "http://localhost:9990",  # the same address by another name
        "http://127.0.0.1:9990/",  # not an origin
        "http://127.0.0.1:9990.evil.example",
        "null",
        "NULL",
    )

    def test_foreignOriginRefusedOnEveryMutation(self) -> None:
        for origin in self.FOREIGN_ORIGINS:
            for method, path, body, headers in self.mutations():
                response, answer = self.call(method, path, body, headers, Origin=origin)
                self.assertRefused(response, answer, 403, REFUSED)
        self.assertUntouched()

    def test_foreignOriginAnswer(self) -> None:
        response, body = self.request("POST", "/admin/shutdown",
                                      headers={"Origin": "http://evil.example"})
        self.assertJSON(response, body, 403, {
            "error": "cross-origin request refused: Origin 'http://evil.example' is not "
                     "this admin API's own origin 'http://127.0.0.1:9990'",
        })

    def test_nullOriginRefused(self) -> None:
        response, body = self.request("POST", "/admin/shutdown", headers={"Origin": "null"})
        self.assertJSON(response, body, 403, {
            "error": "cross-origin request refused: Origin is null (an opaque origin is "
                     "never this admin API's own)",
        })
        self.assertUntouched()

    def test_crossAndSameSiteFetchesRefused(self) -> None:
        """
        C{Sec-Fetch-Site: cross-site} or C{same-site} (another port or
        subdomain of the same site) gives a browser's call away, whatever
        the C{Origin}; so does a value no browser sends.
        """
        for site in ("cross-site", "same-site", "Cross-Site", "same-origin, cross-site",
                     "bogus", ""):
            for method, path, body, headers in self.mutations():
                response, answer = self.call(
                    method, path, body, headers, Origin=OWN_ORIGIN,
                    **{"Sec-Fetch-Site": site},
                )
                self.assertRefused(response, answer, 403, REFUSED + "Sec-Fetch-Site is ")
        self.assertUntouched()

    def test_sameOriginCallsPass(self) -> None:
        """
        The API's own page (C{same-origin}), a typed or bookmarked request
        (C{none}), and its own origin pass, the host compared without case.
        """
        for extra in (
            {"Sec-Fetch-Site": "same-origin"},
            {"Sec-Fetch-Site": "none"},
            {"Sec-Fetch-Site": "Same-Origin", "Origin": OWN_ORIGIN},
            {"Origin": OWN_ORIGIN},
            {"Origin": "HTTP://127.0.0.1:9990"},
            {"Host": "LocalHost:9990", "Origin": "http://localhost:9990"},
            {"Host": "[::1]:9990", "Origin": "http://[::1]:9990"},
            {"Host": "mesh.example", "Origin": "http://Mesh.Example"},
        ):
            for method, path, body, headers in self.mutations():
                response, answer = self.call(method, path, body, headers, **extra)
                self.assertIn(response.code, (200, 202), (extra, path, answer))

    def test_httpsOriginOnATLSListener(self) -> None:
        response, _ = self.request("POST", "/admin/shutdown", headers={
            "Origin": "https://127.0.0.1:9990",
        })
        self.assertEqual(response.code, 403)
        response = self.successResultOf(self.client.post(
            "https://127.0.0.1:9990/admin/shutdown", headers={"Origin": "https://127.0.0.1:9990"}
        ))
        self.assertEqual(response.code, 202)
        response = self.successResultOf(self.client.post(
            "https://127.0.0.1:9990/admin/shutdown", headers={"Origin": "http://127.0.0.1:9990"}
        ))
        self.assertEqual(response.code, 403)

    def test_originWithoutHostRefused(self) -> None:
        status, body = self.rawStatus(
            b"POST /admin/shutdown HTTP/1.0\r\nOrigin: http://127.0.0.1:9990\r\n\r\n"
        )
        self.assertEqual(status, 403)
        self.assertTrue(body["error"].startswith(REFUSED), body)
        self.assertUntouched()

    def test_originOrFetchSiteSentTwiceIs400(self) -> None:
        for name, values in (("Origin", [OWN_ORIGIN, "http://evil.example"]),
                             ("Sec-Fetch-Site", ["same-origin", "cross-site"])):
            response, body = self.request("POST", "/admin/shutdown", headers={name: values})
            self.assertJSON(response, body, 400, {"error": f"more than one {name} header"})
        self.assertUntouched()

    def test_unroutedMutationsAreOriginChecked(self) -> None:
        for method, path in (("POST", "/nope"), ("POST", "/live"), ("DELETE", "/admin/state")):
            response, body = self.request(method, path, headers={"Origin": "null"})
            self.assertRefused(response, body, 403, REFUSED)

    def test_readsAreNotOriginChecked(self) -> None:
        """
        A page of another site cannot read the answers (no CORS), and the
        dashboard's own reads must work: reads are not refused.
        """
        for method in ("GET", "HEAD"):
            response, _ = self.request(method, "/admin/state", headers={
                "Origin": "http://evil.example", "Sec-Fetch-Site": "cross-site",
            })
            self.assertEqual(response.code, 200)


class TokenAndOriginTests(_GuardMixin, SynchronousTestCase):
    """
    With a token, the origin is checked first: a cross-site call is a 403
    with or without the token.
    """

    token = TOKEN

    def test_originCheckedBeforeTheToken(self) -> None:
        for auth in ({}, AUTH, {"Authorization": "Bearer wrong"}):
            for method, path, body, headers in self.mutations():
                response, answer = self.call(
                    method, path, body, {**headers, **auth}, Origin="http://evil.example"
                )
                self.assertRefused(response, answer, 403, REFUSED)
                response, answer = self.call(
                    method, path, body, {**headers, **auth},
                    **{"Sec-Fetch-Site": "cross-site"},
                )
                self.assertRefused(response, answer, 403, REFUSED)
        self.assertUntouched()

    def test_ownOriginStillNeedsTheToken(self) -> None:
        for method, path, body, headers in self.mutations():
            response, _ = self.call(method, path, body, headers, Origin=OWN_ORIGIN)
            self.assertEqual(response.code, 401, path)
            response, _ = self.call(method, path, body, {**headers, **AUTH}, Origin=OWN_ORIGIN)
            self.assertIn(response.code, (200, 202), path)


class ContentTypeTests(_GuardMixin, SynchronousTestCase):
    """
    A mutating call's body must be of its route's type: JSON, or text for
    the rules. Else 415, before anything is read or changed.
    """

    def jsonCalls(self) -> list[tuple[str, str, bytes | None, dict[str, str]]]:
        """
        The mutations on JSON routes, each with a JSON body (shutdown's
        empty).
        """
        calls = []
        for method, path, body, headers in self.mutations():
            if headers.get("Content-Type") == TEXT:
                continue
            calls.append((method, path, body if body is not None else b"{}",
                          {**headers, "Content-Type": JSON}))
        return calls

    def textCalls(self) -> list[tuple[str, str, bytes | None, dict[str, str]]]:
        return [call for call in self.mutations() if call[3].get("Content-Type") == TEXT]

    def assert415(self, response: Any, body: bytes, expected: str) -> None:
        self.assertRefused(response, body, 415, "")
        self.assertEqual(json.loads(body)["expected"], expected)

    def test_jsonRoutesRefuseOtherTypes(self) -> None:
        for kind in (*FORMS, "text/plain", "text/plain; charset=utf-8", "text/json",
                     "application/jsonx", "application/json-patch+json", "*/*", ""):
            for method, path, body, headers in self.jsonCalls():
                response, answer = self.call(
                    method, path, FORMS.get(kind, body), headers, **{"Content-Type": kind}
                )
                self.assert415(response, answer, JSON)
        self.assertUntouched()

    def test_formAnswer(self) -> None:
        response, body = self.call(
            "POST", "/admin/endpoints/drain", b"router=web&name=%2F%23%2Ffs%2Fusers",
            {"Content-Type": "application/x-www-form-urlencoded"},
        )
        self.assertJSON(response, body, 415, {
            "error": "unsupported Content-Type 'application/x-www-form-urlencoded': "
                     "this call takes application/json",
            "expected": "application/json",
        })
        self.assertEqual(response.phrase, b"Unsupported Media Type")

    def test_bodyWithoutTypeRefused(self) -> None:
        for method, path, body, headers in self.jsonCalls():
            headers = {k: v for k, v in headers.items() if k != "Content-Type"}
            response, answer = self.call(method, path, body, headers)
            self.assertJSON(response, answer, 415, {
                "error": "a request body needs Content-Type: application/json",
                "expected": "application/json",
            })
        for method, path, body, headers in self.textCalls():
            headers = {k: v for k, v in headers.items() if k != "Content-Type"}
            response, answer = self.call(method, path, body, headers)
            self.assert415(response, answer, "text/plain")
        self.assertUntouched()

    def test_jsonWithParametersAccepted(self) -> None:
        for kind in ("application/json; charset=utf-8", "Application/JSON",
                     "application/json ; charset=UTF-8"):
            response, body = self.call(
                "POST", "/admin/endpoints/drain", json.dumps(ENDPOINT).encode("utf-8"),
                {"Content-Type": kind},
            )
            self.assertJSON(response, body, 200, {"draining": True})

    def test_rulesRoutesRefuseJSONAndForms(self) -> None:
        """
        The rules are text: a PUT or dry run of another type is a 415, JSON
        included (it used to be accepted as the rules text).
        """
        for kind in (JSON, "application/json; charset=utf-8", *FORMS,
                     "text/html", "text/plain-x"):
            for method, path, body, headers in self.textCalls():
                response, answer = self.call(
                    method, path, FORMS.get(kind, body), headers, **{"Content-Type": kind}
                )
                self.assert415(response, answer, "text/plain")
        self.assertUntouched()

    def test_rulesTextAccepted(self) -> None:
        for kind in ("text/plain", "text/plain; charset=utf-8", "TEXT/PLAIN;charset=UTF-8"):
            response, body = self.call(
                "POST", "/admin/routers/web/rules?dryRun=1", USERS_V2.encode("utf-8"),
                {"Content-Type": kind},
            )
            self.assertEqual(response.code, 200, (kind, body))
            response, body = self.call(
                "PUT", "/admin/routers/web/rules", USERS_V2.encode("utf-8"),
                {"Content-Type": kind, "If-Match": "*"},
            )
            self.assertEqual(response.code, 200, (kind, body))

    def test_bodylessPostNeedsNoType(self) -> None:
        """
        A POST without a body (C{Content-Length: 0}, as curl -X POST or
        treq send it) needs no C{Content-Type}; one with a declared type of
        another kind (an empty HTML form) is still refused.
        """
        response, _ = self.request("POST", "/admin/shutdown")
        self.assertEqual(response.code, 202)
        status, _ = self.rawStatus(
            b"POST /admin/shutdown HTTP/1.1\r\nHost: 127.0.0.1:9990\r\n"
            b"Content-Length: 0\r\nConnection: close\r\n\r\n"
        )
        self.assertEqual(status, 202)
        for kind in FORMS:
            response, body = self.request("POST", "/admin/shutdown",
                                          headers={"Content-Type": kind})
            self.assert415(response, body, JSON)

    def test_chunkedBodyNeedsAType(self) -> None:
        """
        Any C{Transfer-Encoding} announces a body, even one that turns out
        empty.
        """
        status, body = self.rawStatus(
            b"POST /admin/shutdown HTTP/1.1\r\nHost: 127.0.0.1:9990\r\n"
            b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n0\r\n\r\n"
        )
        self.assertEqual((status, body["expected"]), (415, JSON))
        status, _ = self.rawStatus(
            b"POST /admin/endpoints/drain HTTP/1.1\r\nHost: 127.0.0.1:9990\r\n"
            b"Transfer-Encoding: chunked\r\nContent-Type: application/json\r\n"
            b"Connection: close\r\n\r\n"
            + b"%x\r\n%s\r\n0\r\n\r\n" % (len(json.dumps(ENDPOINT)), json.dumps(ENDPOINT).encode())
        )
        self.assertEqual(status, 200)
        self.assertEqual(self.web.drained, {("/#/fs/users", "127.0.0.1:8081")})

    def test_typeSentTwiceIs400(self) -> None:
        response, body = self.call(
            "POST", "/admin/endpoints/drain", json.dumps(ENDPOINT).encode("utf-8"),
            {"Content-Type": [JSON, JSON]},
        )
        self.assertJSON(response, body, 400, {"error": "more than one Content-Type header"})
        self.assertUntouched()

    def test_typeCheckedWithATokenToo(self) -> None:
        api = AdminAPI(self.runtime, CollectorRegistry(), token=TOKEN, clock=self.clock)
        client = StubTreq(api.app.resource())
        response = self.successResultOf(client.post(
            BASE + "/admin/shutdown", data=b"a=b",
            headers={**AUTH, "Content-Type": "application/x-www-form-urlencoded"},
        ))
        self.assertEqual(response.code, 415)
        self.assertUntouched()

    def test_readsAreNotTypeChecked(self) -> None:
        response, _ = self.request("GET", "/admin/state", headers={"Content-Type": "text/html"})
        self.assertEqual(response.code, 200)


class DashboardRequestsTests(_GuardMixin, SynchronousTestCase):
    """
    The dashboard page works under these checks: it only reads, relative
    to its own origin.
    """

    def test_pageOnlyReadsItsOwnOrigin(self) -> None:
        """
        Its script calls C{fetch} in one place, naming no method (so every
        call is a GET), and every path it asks for is relative to the page.
        A page that starts to POST or PUT must send C{Content-Type} (JSON,
        or C{text/plain} for rules): update this test with it.
        """
        _, body = self.request("GET", "/static/dashboard.js", headers={"Host": "localhost:9990"})
        script = body.decode("utf-8")
        self.assertIsNone(re.search(r"method\s*:", script), "the script names a method")
        self.assertEqual(script.count("fetch("), 1)
        self.assertIn("fetch(path, {headers: headers, cache: \"no-store\"})", script)
        calls = re.findall(r"(?<![.\w])get(?:JSON)?\(([^)]*)\)", script)
        paths = [path for path in calls if path != "path"]
        # The state, the stats, the rules and explain.
        self.assertEqual(len(paths), 4, calls)
        for path in paths:
            self.assertTrue(path.startswith('"admin/'), path)

    def test_pageReadsPassAsABrowserSendsThem(self) -> None:
        browser = {"Host": "localhost:9990", "Sec-Fetch-Site": "same-origin"}
        for path in ("/", "/static/dashboard.js", "/static/dashboard.css", "/admin/state",
                     "/admin/stats", "/admin/routers/web/rules",
                     "/admin/routers/web/explain?name=/svc/users"):
            response, _ = self.request("GET", path, headers=browser)
            self.assertEqual(response.code, 200, path)
