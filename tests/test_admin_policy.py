"""
Tests for L{meshproxy.admin.policy}: a router's access policy versioned like
its rules (the store, HTTP and TCP routers), the admin API's policy routes
through L{treq.testing.StubTreq}, the stores C{buildServices} makes, and a
policy replaced under traffic on a memory network.
"""

from __future__ import annotations

import json
import os
from typing import Any

from prometheus_client import CollectorRegistry
from treq.testing import StubTreq
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import Logger, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from meshproxy.admin import versioned
from meshproxy.admin.api import AdminAPI
from meshproxy.admin.policy import InvalidPolicy, PolicyStore, _Policy, policyVersion
from meshproxy.admin.requests import JSON_LIMIT
from meshproxy.admin.rules import _Rules
from meshproxy.admin.versioned import (
    IVersioned,
    PersistError,
    StaleVersion,
    UnknownVersion,
    textVersion,
)
from meshproxy.config import PolicyConfig, parseConfig
from meshproxy.config.loading import parseSection
from meshproxy.policy import Policy
from tests.admin_support import HELLO_A, makeConfig
from tests.test_admin_api import BASE, TOKEN, FakeRouter, FakeRuntime
from tests.test_admin_proxy import AdminTestCase
from tests.test_admin_rules import FakeRulesRouter

START = 1700000000.0  # 2023-11-14T22:13:20Z
WEB = "spiffe://mesh.local/web"
OPEN = {"default": "allow", "rules": []}

# What the config gives: only web may call /svc/users, and never DELETE.
CONFIG_POLICY = {
    "default": "allow",
    "rules": [
        {"callers": [WEB], "names": ["/svc/users"], "methods": ["DELETE"], "action": "deny"},
        {"callers": [WEB], "names": ["/svc/users"], "methods": [], "action": "allow"},
    ],
}

# Everything closed but GETs from the 10/8 network.
LOCKED = {
    "default": "deny",
    "rules": [{"callers": ["10.0.0.0/8"], "names": [], "methods": ["GET"], "action": "allow"}],
}

USERS = ("svc", "users")


def policyOf(value: Any) -> Policy | None:
    """
    The policy a router gets from a C{policy} config section given as data.
    """
    return Policy.active(parseSection(PolicyConfig, value, "policy"))


class FakePolicyRouter:
    """
    A router as the policy store sees it: a name and a C{policy}.
    """

    def __init__(self, name: str = "web", policy: Any = CONFIG_POLICY) -> None:
        self.name = name
        self.policy = policyOf(policy)


def capture(testCase: SynchronousTestCase, name: str) -> list[dict[str, Any]]:
    """
    Collect the events of one of the versioned store's loggers (C{"_log"}
    or C{"_audit"}) during a test.
    """
    events: list[dict[str, Any]] = []
    original = getattr(versioned, name)
    testCase.patch(versioned, name, Logger(namespace=original.namespace, observer=events.append))
    return events


class VersionTests(SynchronousTestCase):
    """
    L{policyVersion}, and the adapters the versioned store is made of.
    """

    def test_sha256OfSortedCompactJSON(self) -> None:
        self.assertEqual(
            policyVersion(CONFIG_POLICY),
            textVersion(json.dumps(CONFIG_POLICY, sort_keys=True, separators=(",", ":"))),
        )

    def test_keyOrderDoesNotMatter(self) -> None:
        self.assertEqual(
            policyVersion({"rules": [], "default": "deny"}),
            policyVersion({"default": "deny", "rules": []}),
        )
        self.assertNotEqual(policyVersion(OPEN), policyVersion(LOCKED))

    def test_adaptersProvideIVersioned(self) -> None:
        self.assertTrue(verifyObject(IVersioned, _Policy(FakePolicyRouter())))
        self.assertTrue(verifyObject(IVersioned, _Rules(FakeRulesRouter())))


class _StoreMixin:
    stateDir: str | None = None

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(START)
        self.router = FakePolicyRouter()
        self.store = self.makeStore(self.router)

    def makeStore(self, router: Any, **kwargs: Any) -> PolicyStore:
        return PolicyStore(router, stateDir=self.stateDir, clock=self.clock, **kwargs)


class ReplaceTests(_StoreMixin, SynchronousTestCase):
    """
    L{PolicyStore.current} and L{PolicyStore.replace}.
    """

    def test_currentIsTheRoutersPolicy(self) -> None:
        self.assertEqual(self.store.current(), (CONFIG_POLICY, policyVersion(CONFIG_POLICY)))

    def test_noPolicyIsTheOpenOne(self) -> None:
        router = FakePolicyRouter(policy=OPEN)
        self.assertIsNone(router.policy)
        self.assertEqual(self.makeStore(router).current(), (OPEN, policyVersion(OPEN)))

    def test_replaceSwapsThePolicyWhole(self) -> None:
        before = self.router.policy
        result = self.store.replace(LOCKED, policyVersion(CONFIG_POLICY), "token")
        self.assertEqual(result, (policyVersion(CONFIG_POLICY), policyVersion(LOCKED)))
        self.assertIsNot(self.router.policy, before)
        policy = self.router.policy
        self.assertTrue(policy.decide(None, "10.1.2.3", [USERS], "GET").allowed)
        self.assertFalse(policy.decide(None, "10.1.2.3", [USERS], "POST").allowed)
        self.assertFalse(policy.decide(WEB, "192.0.2.1", [USERS], "GET").allowed)
        self.assertEqual(self.store.current(), (LOCKED, policyVersion(LOCKED)))

    def test_theOpenPolicyChecksNothing(self) -> None:
        self.store.replace({"default": "allow"}, "*", "token")
        self.assertIsNone(self.router.policy)
        self.assertEqual(self.store.current()[0], OPEN)

    def test_keptInCanonicalForm(self) -> None:
        """
        Keys left out get their defaults and methods are upper case, as in
        the config; the version is that of the canonical form.
        """
        given = {"rules": [{"callers": [WEB], "methods": ["delete"], "action": "deny"}]}
        canonical = {
            "default": "allow",
            "rules": [{"callers": [WEB], "names": [], "methods": ["DELETE"], "action": "deny"}],
        }
        _, version = self.store.replace(given, "*", "token")
        self.assertEqual(version, policyVersion(canonical))
        self.assertEqual(self.store.current(), (canonical, version))
        self.assertEqual(self.store.history()[0]["policy"], canonical)

    def test_samePolicySpelledOtherwiseChangesNothing(self) -> None:
        audit = capture(self, "_audit")
        before = self.router.policy
        spelled = {
            "rules": [
                {"action": "deny", "methods": ["delete"], "names": ["/svc/users"],
                 "callers": [WEB]},
                {"callers": [WEB], "names": ["/svc/users"]},
            ]
        }
        version = policyVersion(CONFIG_POLICY)
        self.assertEqual(self.store.replace(spelled, version, "a"), (version, version))
        self.assertIs(self.router.policy, before)
        self.assertEqual(len(self.store.history()), 1)
        self.assertEqual(audit, [])

    def test_staleVersionRefusedWithTheCurrentOne(self) -> None:
        e = self.assertRaises(StaleVersion, self.store.replace, LOCKED, "0123456789abcdef", "a")
        self.assertEqual(e.current, policyVersion(CONFIG_POLICY))
        self.assertIn("the policy in force", str(e))
        self.assertEqual(self.store.current()[0], CONFIG_POLICY)

    def test_twoChangesFromTheSameVersionOneWins(self) -> None:
        base = policyVersion(CONFIG_POLICY)
        self.store.replace(LOCKED, base, "a")
        self.assertRaises(StaleVersion, self.store.replace, OPEN, base, "b")
        self.assertEqual(self.store.current()[0], LOCKED)

    def test_staleIsCheckedBeforeValidity(self) -> None:
        self.assertRaises(StaleVersion, self.store.replace, {"default": "block"}, "x", "a")

    def test_invalidPoliciesRefusedWithEveryProblem(self) -> None:
        audit = capture(self, "_audit")
        before = self.router.policy
        for value, problems in (
            ({"default": "block"}, ['default: expected one of "allow", "deny", got "block"']),
            (
                {"rules": [{"action": "block"}]},
                ['rules[0].action: expected one of "allow", "deny", got "block"'],
            ),
            (
                {"extra": 1, "default": None},
                ["extra: unknown key", 'default: expected one of "allow", "deny", got null'],
            ),
            (
                {"rules": [{"who": ["x"], "callers": "x"}]},
                ["rules[0].who: unknown key", 'rules[0].callers: expected a list, got "x"'],
            ),
            ({"rules": {"a": 1}}, ["rules: expected a list, got a mapping"]),
            ({"rules": [None]}, ["rules[0]: expected a mapping, got null"]),
            (
                {"rules": [{"callers": ["", 3], "names": ["svc"], "methods": ["G T"]}]},
                [
                    "rules[0].callers[0]: must not be empty",
                    "rules[0].callers[1]: expected a string, got 3",
                    'rules[0].names[0]: expected a path starting with "/", got "svc"',
                    'rules[0].methods[0]: expected an HTTP method such as GET, got "G T"',
                ],
            ),
            ([], ["policy: expected a mapping, got a list"]),
            ("deny", ['policy: expected a mapping, got "deny"']),
        ):
            e = self.assertRaises(InvalidPolicy, self.store.replace, value, "*", "a")
            self.assertEqual(e.problems, problems, value)
            self.assertEqual(
                e.details(), {"error": "invalid policy: " + "; ".join(problems),
                              "problems": problems},
            )
        self.assertIs(self.router.policy, before)
        self.assertEqual(len(self.store.history()), 1)
        self.assertEqual(audit, [])

    def test_boundNamesAndPrefixesAreNames(self) -> None:
        self.store.replace(
            {"rules": [{"names": ["/#/fs/users"], "action": "deny"}]}, "*", "a"
        )
        decision = self.router.policy.decide(WEB, None, [USERS, ("#", "fs", "users")], "GET")
        self.assertEqual((decision.allowed, decision.rule), (False, 0))


class HistoryTests(_StoreMixin, SynchronousTestCase):
    """
    L{PolicyStore.history} and L{PolicyStore.rollback}.
    """

    def test_historyStartsWithTheConfigsPolicy(self) -> None:
        self.assertEqual(self.store.history(), [{
            "version": policyVersion(CONFIG_POLICY),
            "time": "2023-11-14T22:13:20.000Z",
            "who": "config",
            "policy": CONFIG_POLICY,
        }])

    def test_newestFirstWithWho(self) -> None:
        self.clock.advance(1.5)
        self.store.replace(LOCKED, "*", "127.0.0.1")
        self.store.replace(OPEN, "*", "token")
        self.assertEqual(
            [(h["who"], h["policy"]) for h in self.store.history()],
            [("token", OPEN), ("127.0.0.1", LOCKED), ("config", CONFIG_POLICY)],
        )

    def test_rollbackAppliesAnOldVersionAsANewChange(self) -> None:
        self.store.replace(LOCKED, "*", "a")
        result = self.store.rollback(
            policyVersion(CONFIG_POLICY), policyVersion(LOCKED), "b"
        )
        self.assertEqual(result, (policyVersion(LOCKED), policyVersion(CONFIG_POLICY)))
        self.assertEqual(self.router.policy.describe(), CONFIG_POLICY)
        self.assertEqual([h["who"] for h in self.store.history()], ["b", "a", "config"])

    def test_rollbackToAnUnknownVersion(self) -> None:
        self.assertRaises(UnknownVersion, self.store.rollback, "feedfeedfeedfeed", "*", "a")

    def test_policySetOutsideTheStoreJoinsTheHistory(self) -> None:
        self.router.policy = policyOf(LOCKED)
        self.assertEqual(
            [(h["who"], h["policy"]) for h in self.store.history()],
            [("config", LOCKED), ("config", CONFIG_POLICY)],
        )


class AuditTests(_StoreMixin, SynchronousTestCase):
    """
    Each accepted change is logged with who, both versions and a diff of
    the policies' JSON.
    """

    def test_auditLine(self) -> None:
        audit = capture(self, "_audit")
        self.store.replace(LOCKED, "*", "127.0.0.1")
        [event] = audit
        self.assertEqual(event["log_namespace"], "meshproxy.admin.audit")
        self.assertEqual(
            (event["kind"], event["router"], event["who"], event["old"], event["new"]),
            ("policy", "web", "127.0.0.1", policyVersion(CONFIG_POLICY), policyVersion(LOCKED)),
        )
        text = formatEvent(event)
        self.assertTrue(
            text.startswith(
                "policy of router web changed by 127.0.0.1 at 2023-11-14T22:13:20.000Z: %s -> %s\n"
                % (policyVersion(CONFIG_POLICY), policyVersion(LOCKED))
            ),
            text,
        )
        diff = event["diff"].splitlines()
        self.assertEqual(diff[:2], [
            "--- web@" + policyVersion(CONFIG_POLICY), "+++ web@" + policyVersion(LOCKED),
        ])
        self.assertIn('-  "default": "allow",', diff)
        self.assertIn('+  "default": "deny",', diff)


class PersistenceTests(_StoreMixin, SynchronousTestCase):
    """
    Accepted policies are written to C{policy-<router>.json} and restored
    by L{PolicyStore.load}, winning over the config's.
    """

    def setUp(self) -> None:
        self.stateDir = self.mktemp()
        os.mkdir(self.stateDir)
        super().setUp()

    @property
    def statePath(self) -> str:
        return os.path.join(self.stateDir, "policy-web.json")

    def restart(self, configPolicy: Any = CONFIG_POLICY) -> tuple[FakePolicyRouter, PolicyStore,
                                                                  bool]:
        router = FakePolicyRouter(policy=configPolicy)
        store = self.makeStore(router)
        return router, store, store.load()

    def test_changeIsWrittenAndRestored(self) -> None:
        self.assertEqual(os.listdir(self.stateDir), [])
        self.store.replace(LOCKED, "*", "token")
        self.assertEqual(os.listdir(self.stateDir), ["policy-web.json"])
        with open(self.statePath) as f:
            state = json.load(f)
        self.assertEqual(state["format"], 1)
        self.assertEqual(state["router"], "web")
        self.assertEqual(state["policy"], LOCKED)
        self.assertEqual(state["version"], policyVersion(LOCKED))
        self.assertEqual(state["configVersion"], policyVersion(CONFIG_POLICY))
        self.assertEqual(state["history"], self.store.history())
        router, store, restored = self.restart()
        self.assertTrue(restored)
        self.assertEqual(router.policy.describe(), LOCKED)
        self.assertEqual(store.history(), self.store.history())

    def test_theOpenPolicyIsRestoredToo(self) -> None:
        self.store.replace(OPEN, "*", "token")
        router, _, restored = self.restart()
        self.assertTrue(restored)
        self.assertIsNone(router.policy)

    def test_changedConfigIsReportedButTheSavedPolicyWins(self) -> None:
        self.store.replace(LOCKED, "*", "token")
        log = capture(self, "_log")
        router, _, restored = self.restart(configPolicy=OPEN)
        self.assertTrue(restored)
        self.assertEqual(router.policy.describe(), LOCKED)
        self.assertTrue(
            any("config's policy of router web changed" in formatEvent(e) for e in log), log
        )

    def test_policyAndRulesOfOneRouterHaveTheirOwnFiles(self) -> None:
        from meshproxy.admin.rules import RulesStore

        self.store.replace(LOCKED, "*", "a")
        rules = RulesStore(FakeRulesRouter(), stateDir=self.stateDir, clock=self.clock)
        rules.replace("/svc => /#/static;\n", "*", "a")
        self.assertEqual(sorted(os.listdir(self.stateDir)), ["policy-web.json", "rules-web.json"])
        self.assertEqual(self.restart()[0].policy.describe(), LOCKED)

    def assertKeepsConfig(self, reason: str) -> None:
        log = capture(self, "_log")
        router, store, restored = self.restart()
        self.assertFalse(restored)
        self.assertEqual(router.policy.describe(), CONFIG_POLICY)
        self.assertEqual(store.current()[0], CONFIG_POLICY)
        self.assertIn(reason, formatEvent(log[-1]))

    def rewrite(self, change: Any) -> None:
        with open(self.statePath) as f:
            state = json.load(f)
        change(state)
        with open(self.statePath, "w") as f:
            json.dump(state, f)

    def test_noSavedPolicy(self) -> None:
        self.assertKeepsConfig("no saved policy for router web")

    def test_tamperedPolicyKeepsTheConfig(self) -> None:
        self.store.replace(LOCKED, "*", "token")
        self.rewrite(lambda state: state["policy"].update(default="allow"))
        self.assertKeepsConfig("is unreadable")

    def test_notAPolicyKeepsTheConfig(self) -> None:
        self.store.replace(LOCKED, "*", "token")

        def text(state: dict[str, Any]) -> None:
            state["policy"] = "deny"
            state["version"] = textVersion("deny")

        self.rewrite(text)
        self.assertKeepsConfig("is unreadable (the policy is not a JSON object)")

    def test_aRulesFileIsNotAPolicy(self) -> None:
        from meshproxy.admin.rules import RulesStore

        rules = RulesStore(FakeRulesRouter(), stateDir=self.stateDir, clock=self.clock)
        rules.replace("/svc => /#/static;\n", "*", "a")
        os.rename(os.path.join(self.stateDir, "rules-web.json"), self.statePath)
        self.assertKeepsConfig("is unreadable (no 'policy')")

    def test_invalidSavedPolicyKeepsTheConfigAndTheHistory(self) -> None:
        self.store.replace(LOCKED, "*", "token")
        invalid = {"default": "block", "rules": []}

        def block(state: dict[str, Any]) -> None:
            state["policy"] = invalid
            state["version"] = policyVersion(invalid)

        self.rewrite(block)
        log = capture(self, "_log")
        router, store, restored = self.restart()
        self.assertFalse(restored)
        self.assertIn("is no longer valid", formatEvent(log[-1]))
        self.assertIn('default: expected one of "allow", "deny", got "block"',
                      formatEvent(log[-1]))
        self.assertEqual(
            [h["policy"] for h in store.history()], [CONFIG_POLICY, LOCKED, CONFIG_POLICY]
        )

    def test_failedWriteChangesNothing(self) -> None:
        def replace(src: str, dst: str) -> None:
            raise OSError(28, "No space left on device")

        self.patch(versioned.os, "replace", replace)
        e = self.assertRaises(PersistError, self.store.replace, LOCKED, "*", "token")
        self.assertEqual(
            str(e), "cannot save the policy to %s: No space left on device" % (self.statePath,)
        )
        self.assertEqual(self.router.policy.describe(), CONFIG_POLICY)
        self.assertEqual(len(self.store.history()), 1)
        self.assertEqual(os.listdir(self.stateDir), [])


def tcpRouter(policy: str = "") -> Any:
    """
    A real TCP router C{db} to C{/#/static/pg}, on a memory reactor.
    """
    from meshproxy.routing.path import Path
    from meshproxy.runtime import balancerFactory, makeNamer
    from meshproxy.tcp.router import TcpRouter
    from meshproxy.telemetry.metrics import MeshMetrics

    config = parseConfig(
        "namers:\n"
        "  - {kind: static, prefix: /#/static, services: {pg: ['127.0.0.1:5432']}}\n"
        "routers:\n"
        "  - name: db\n"
        "    protocol: tcp\n"
        '    listen: "tcp:0:interface=127.0.0.1"\n'
        "    destination: /#/static/pg\n" + policy
    )
    reactor = MemoryReactorClock()
    namers = {Path.read(n.prefix): makeNamer(n, reactor=reactor) for n in config.namers}
    [rc] = config.routers
    router = TcpRouter(
        rc, namers, reactor=reactor, metrics=MeshMetrics(CollectorRegistry()),
        balancerFactory=balancerFactory(rc.loadBalancer, reactor),
    )
    router.start()
    return router


class TcpRouterPolicyTests(SynchronousTestCase):
    """
    A TCP router's policy is versioned the same way, and a new policy
    decides the connections accepted after it.
    """

    def connect(self, router: Any, host: str) -> StringTransport:
        """
        Accept one client connection from C{host}.
        """
        from meshproxy.tcp.router import TcpServerFactory

        factory = TcpServerFactory(router)
        protocol = factory.buildProtocol(IPv4Address("TCP", host, 40000))
        transport = StringTransport(peerAddress=IPv4Address("TCP", host, 40000))
        protocol.makeConnection(transport)
        return transport

    def test_newConnectionsFollowTheNewPolicy(self) -> None:
        router = tcpRouter()
        self.assertIsNone(router.policy)
        store = PolicyStore(router, stateDir=None, clock=Clock())
        self.assertEqual(store.current(), (OPEN, policyVersion(OPEN)))
        self.assertFalse(self.connect(router, "192.0.2.1").disconnecting)
        self.assertEqual(len(router.reactor.tcpClients), 1)

        locked = {"default": "deny", "rules": [{"callers": ["10.0.0.0/8"]}]}
        store.replace(locked, policyVersion(OPEN), "token")
        self.assertTrue(self.connect(router, "192.0.2.1").disconnecting)
        self.assertEqual(len(router.reactor.tcpClients), 1)
        self.assertFalse(self.connect(router, "10.1.2.3").disconnecting)
        self.assertEqual(len(router.reactor.tcpClients), 2)
        self.assertEqual(router.metrics._denied, {("db", "default", "unauthenticated"): 1})

        store.replace(OPEN, "*", "token")
        self.assertIsNone(router.policy)
        self.assertFalse(self.connect(router, "192.0.2.1").disconnecting)

    def test_methodIsConnect(self) -> None:
        router = tcpRouter(
            "    policy: {default: allow, rules: [{methods: [CONNECT], action: deny}]}\n"
        )
        store = PolicyStore(router, stateDir=None, clock=Clock())
        self.assertEqual(store.current()[0]["rules"][0]["methods"], ["CONNECT"])
        self.assertTrue(self.connect(router, "127.0.0.1").disconnecting)
        store.replace({"rules": [{"methods": ["GET"], "action": "deny"}]}, "*", "token")
        self.assertFalse(self.connect(router, "127.0.0.1").disconnecting)


class _PolicyAPIMixin:
    """
    An L{AdminAPI} over a fake runtime with an HTTP-like router C{web}, a
    TCP router C{db} and a router without a policy C{old}, and a
    L{StubTreq} client on it.
    """

    token: str | None = None
    protectReads = False
    stateDir: str | None = None

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(START)
        self.runtime = FakeRuntime()
        self.web = FakePolicyRouter()
        self.db = tcpRouter()
        self.runtime.routers.update(web=self.web, db=self.db, old=FakeRouter({}))
        stores = None
        if self.stateDir is not None:
            stores = {"web": PolicyStore(self.web, stateDir=self.stateDir, clock=self.clock)}
        self.api = AdminAPI(
            self.runtime, CollectorRegistry(), token=self.token,
            protectReads=self.protectReads, policyStores=stores, clock=self.clock,
        )
        self.client = StubTreq(self.api.app.resource())

    def request(self, method: str, path: str, **kwargs: Any) -> tuple[Any, bytes]:
        response = self.successResultOf(self.client.request(method, BASE + path, **kwargs))
        return response, self.successResultOf(self.client.content(response))

    def put(self, body: Any, ifMatch: str | None = None, router: str = "web",
            headers: dict[str, str] | None = None) -> tuple[Any, bytes]:
        data = body if isinstance(body, bytes) else json.dumps(body).encode("utf-8")
        sent = {"Content-Type": "application/json"}
        if ifMatch is not None:
            sent["If-Match"] = ifMatch
        sent.update(headers or {})
        return self.request(
            "PUT", "/admin/routers/%s/policy" % (router,), data=data, headers=sent
        )

    def header(self, response: Any, name: str) -> str | None:
        values = response.headers.getRawHeaders(name)
        return None if values is None else values[0]

    def assertJSON(self, response: Any, body: bytes, code: int, expected: Any) -> None:
        self.assertEqual(response.code, code, body)
        self.assertEqual(self.header(response, "content-type"), "application/json")
        self.assertEqual(json.loads(body), expected)


def quoted(version: str) -> str:
    return '"%s"' % (version,)


class PolicyRoutesTests(_PolicyAPIMixin, SynchronousTestCase):
    """
    C{GET} and C{PUT /admin/routers/{name}/policy}, their history and
    rollback.
    """

    def test_getAnswersThePolicyWithItsVersion(self) -> None:
        response, body = self.request("GET", "/admin/routers/web/policy")
        self.assertJSON(response, body, 200, CONFIG_POLICY)
        self.assertEqual(self.header(response, "etag"), quoted(policyVersion(CONFIG_POLICY)))
        self.assertEqual(self.header(response, "cache-control"), "no-store")
        self.assertTrue(body.endswith(b"\n"))
        response, body = self.request("HEAD", "/admin/routers/web/policy")
        self.assertEqual((response.code, body), (200, b""))

    def test_putReplacesIt(self) -> None:
        response, body = self.put(LOCKED, quoted(policyVersion(CONFIG_POLICY)))
        self.assertJSON(response, body, 200, {
            "version": policyVersion(LOCKED), "previous": policyVersion(CONFIG_POLICY),
        })
        self.assertEqual(self.header(response, "etag"), quoted(policyVersion(LOCKED)))
        self.assertEqual(self.web.policy.describe(), LOCKED)
        response, body = self.request("GET", "/admin/routers/web/policy")
        self.assertJSON(response, body, 200, LOCKED)
        self.assertEqual(self.header(response, "etag"), quoted(policyVersion(LOCKED)))

    def test_ifMatchForms(self) -> None:
        """
        C{*}, an unquoted version and a list of versions all match; weak
        tags never do.
        """
        self.assertEqual(self.put(OPEN, "*")[0].code, 200)
        self.assertEqual(self.put(LOCKED, policyVersion(OPEN))[0].code, 200)
        self.assertEqual(
            self.put(OPEN, '"nope", ' + quoted(policyVersion(LOCKED)))[0].code, 200
        )
        self.assertEqual(self.put(LOCKED, "W/" + quoted(policyVersion(OPEN)))[0].code, 412)

    def test_withoutIfMatchIs428(self) -> None:
        response, body = self.put(LOCKED)
        self.assertJSON(response, body, 428, {
            "error": "If-Match required: send the ETag of the policy your change is based on"
                     " (GET the policy to read it)",
        })
        self.assertEqual(self.web.policy.describe(), CONFIG_POLICY)

    def test_staleIs412WithTheCurrentVersion(self) -> None:
        self.put(OPEN, "*")
        response, body = self.put(LOCKED, quoted(policyVersion(CONFIG_POLICY)))
        self.assertJSON(response, body, 412, {
            "error": "stale version: the policy changed after the version you named",
            "current": policyVersion(OPEN),
        })
        self.assertEqual(self.header(response, "etag"), quoted(policyVersion(OPEN)))
        self.assertIsNone(self.web.policy)

    def test_staleBeforeInvalid(self) -> None:
        response, _ = self.put({"default": "block"}, quoted("0" * 16))
        self.assertEqual(response.code, 412)

    def test_invalidPolicyIs400WithTheProblems(self) -> None:
        response, body = self.put(
            {"default": "deny", "rules": [{"action": "block", "who": 1}]}, "*"
        )
        problems = [
            "rules[0].who: unknown key",
            'rules[0].action: expected one of "allow", "deny", got "block"',
        ]
        self.assertJSON(response, body, 400, {
            "error": "invalid policy: " + "; ".join(problems), "problems": problems,
        })
        self.assertEqual(self.web.policy.describe(), CONFIG_POLICY)

    def test_bodiesThatAreNotJSON(self) -> None:
        for data, reason in (
            (b"{", "Expecting property name enclosed in double quotes"),
            (b"", "Expecting value"),
            (b"\xff", "codec can't decode"),
            (b'{"default": "deny", "default": "allow"}', 'duplicate key "default"'),
            # Nested past the JSON decoder's recursion limit (in 60 KB).
            (b"[" * 60000, "maximum recursion depth exceeded"),
        ):
            response, body = self.put(data, "*")
            answer = json.loads(body)
            self.assertEqual(response.code, 400, data)
            self.assertTrue(answer["error"].startswith("the body is not JSON: "), answer)
            self.assertIn(reason, answer["error"])
            self.assertEqual(answer["problems"], [answer["error"]])
        self.assertEqual(self.web.policy.describe(), CONFIG_POLICY)

    def test_wrongBodyTypesAre415(self) -> None:
        for contentType in ("text/plain", "application/x-www-form-urlencoded"):
            response, body = self.put(LOCKED, "*", headers={"Content-Type": contentType})
            self.assertEqual(response.code, 415, contentType)
            self.assertEqual(json.loads(body)["expected"], "application/json")
        self.assertEqual(self.web.policy.describe(), CONFIG_POLICY)

    def test_bodyTooLargeIs413(self) -> None:
        huge = {"rules": [{"callers": ["spiffe://mesh.local/%d" % i for i in range(5000)]}]}
        self.assertGreater(len(json.dumps(huge)), JSON_LIMIT)
        response, _ = self.put(huge, "*")
        self.assertEqual(response.code, 413)

    def test_unknownRouterAndRouterWithoutPolicy(self) -> None:
        response, body = self.request("GET", "/admin/routers/nope/policy")
        self.assertJSON(response, body, 404, {"error": "unknown router 'nope'"})
        response, body = self.put(LOCKED, "*", router="old")
        self.assertJSON(response, body, 404, {"error": "router 'old' does not support policy"})

    def test_tcpRouter(self) -> None:
        response, body = self.request("GET", "/admin/routers/db/policy")
        self.assertJSON(response, body, 200, OPEN)
        response, body = self.put(
            {"default": "deny", "rules": [{"callers": ["10.0.0.0/8"], "methods": ["CONNECT"]}]},
            quoted(policyVersion(OPEN)), router="db",
        )
        self.assertEqual(response.code, 200, body)
        policy = self.db.policy
        pg = [("#", "static", "pg")]
        self.assertTrue(policy.decide(None, "10.0.0.1", pg, "CONNECT").allowed)
        self.assertFalse(policy.decide(None, "192.0.2.1", pg, "CONNECT").allowed)

    def test_historyAndRollback(self) -> None:
        self.put(LOCKED, "*")
        response, body = self.request("GET", "/admin/routers/web/policy/history")
        self.assertEqual(response.code, 200)
        self.assertEqual(
            [(h["who"], h["version"], h["policy"]) for h in json.loads(body)],
            [("127.0.0.1", policyVersion(LOCKED), LOCKED),
             ("config", policyVersion(CONFIG_POLICY), CONFIG_POLICY)],
        )
        rollback = "/admin/routers/web/policy/rollback"
        response, body = self.request(
            "POST", rollback, json={"version": policyVersion(CONFIG_POLICY)},
            headers={"If-Match": quoted(policyVersion(LOCKED))},
        )
        self.assertJSON(response, body, 200, {
            "version": policyVersion(CONFIG_POLICY), "previous": policyVersion(LOCKED),
        })
        self.assertEqual(self.web.policy.describe(), CONFIG_POLICY)
        response, body = self.request(
            "POST", rollback, json={"version": "feedfeedfeedfeed"}, headers={"If-Match": "*"},
        )
        self.assertEqual(response.code, 404)
        response, _ = self.request("POST", rollback, json={"version": policyVersion(LOCKED)})
        self.assertEqual(response.code, 428)

    def test_failedWriteIs500(self) -> None:
        store = self.api._policyStore("web")

        def replace(value: Any, ifMatch: Any, who: str) -> None:
            raise PersistError("cannot save the policy to /x: disk full")

        store.replace = replace  # type: ignore[method-assign]
        response, body = self.put(LOCKED, "*")
        self.assertJSON(response, body, 500, {"error": "cannot save the policy to /x: disk full"})


class PersistedPolicyStoresTests(_PolicyAPIMixin, SynchronousTestCase):
    """
    The policy stores given to the API are the ones it uses.
    """

    def setUp(self) -> None:
        self.stateDir = self.mktemp()
        super().setUp()

    def test_changeSurvivesARestart(self) -> None:
        self.assertEqual(self.put(LOCKED, "*")[0].code, 200)
        router = FakePolicyRouter()
        self.assertTrue(PolicyStore(router, stateDir=self.stateDir, clock=self.clock).load())
        self.assertEqual(router.policy.describe(), LOCKED)


class TokenPolicyTests(_PolicyAPIMixin, SynchronousTestCase):
    """
    Changing the policy needs the token; reading it too with protectReads.
    """

    token = TOKEN
    protectReads = True

    def test_everyCallNeedsTheToken(self) -> None:
        for method, path, kwargs in (
            ("GET", "/admin/routers/web/policy", {}),
            ("GET", "/admin/routers/web/policy/history", {}),
            ("PUT", "/admin/routers/web/policy",
             {"json": LOCKED, "headers": {"If-Match": "*"}}),
            ("POST", "/admin/routers/web/policy/rollback",
             {"json": {"version": policyVersion(CONFIG_POLICY)}, "headers": {"If-Match": "*"}}),
        ):
            response, body = self.request(method, path, **kwargs)
            self.assertJSON(response, body, 401, {"error": "unauthorized"})
        self.assertEqual(self.web.policy.describe(), CONFIG_POLICY)
        response, _ = self.put(LOCKED, "*", headers={"Authorization": "Bearer " + TOKEN})
        self.assertEqual(response.code, 200)
        self.assertEqual(self.api._policyStore("web").history()[0]["who"], "token")


def _captureTap(testCase: SynchronousTestCase) -> list[str]:
    """
    The text of what the process's own modules log from now on.
    """
    events: list[str] = []

    def observer(event: dict[str, Any]) -> None:
        if event.get("log_namespace") in ("meshproxy.tap", "meshproxy.runtime"):
            events.append(formatEvent(event))

    globalLogPublisher.addObserver(observer)
    testCase.addCleanup(globalLogPublisher.removeObserver, observer)
    return events


class BuildServicesTests(SynchronousTestCase):
    """
    C{buildServices} gives every router, TCP ones too, a policy store with
    the rules' state directory, restores saved policies and says so.
    """

    CONFIG = """\
admin: {listen: "tcp:9991:interface=127.0.0.1"}
namers:
  - {kind: static, prefix: /#/static, services: {hello: ["127.0.0.1:9001"], pg: ["127.0.0.1:5432"]}}
routers:
  - name: web
    listen: "tcp:4141:interface=127.0.0.1"
    rules: "/svc => /#/static;"
    policy: {default: deny, rules: [{callers: [authenticated]}]}
  - name: db
    protocol: tcp
    listen: "tcp:5433:interface=127.0.0.1"
    destination: /#/static/pg
"""

    def build(self, path: str) -> Any:
        from meshproxy.config import loadConfig
        from meshproxy.runtime import buildServices

        runtime, _ = buildServices(
            loadConfig(path), reactor=MemoryReactorClock(), configPath=path
        )
        return runtime

    def test_savedPoliciesWinAtTheNextStart(self) -> None:
        directory = os.path.abspath(self.mktemp())
        os.mkdir(directory)
        path = os.path.join(directory, "mesh.yaml")
        with open(path, "w") as f:
            f.write(self.CONFIG)
        runtime = self.build(path)
        self.assertEqual(sorted(runtime.policyStores), ["db", "web"])
        self.assertEqual(sorted(runtime.rulesStores), ["db", "web"])
        self.assertEqual(
            runtime.policyStores["web"].current()[0],
            {"default": "deny", "rules": [{"callers": ["authenticated"], "names": [],
                                           "methods": [], "action": "allow"}]},
        )
        self.assertIsNone(runtime.routers["db"].policy)
        runtime.policyStores["db"].replace(LOCKED, "*", "test")
        runtime.policyStores["web"].replace(OPEN, "*", "test")
        self.assertEqual(
            sorted(os.listdir(directory)), ["mesh.yaml", "policy-db.json", "policy-web.json"]
        )

        logged = _captureTap(self)
        again = self.build(path)
        self.assertEqual(again.routers["db"].policy.describe(), LOCKED)
        self.assertIsNone(again.routers["web"].policy)
        self.assertEqual(
            [line for line in logged if "access policy" in line],
            [
                "router %s: using the access policy saved through the admin API in %s, not the"
                " config's; to go back to the config's policy, delete that file and restart"
                % (name, os.path.join(directory, "policy-%s.json" % (name,)))
                for name in ("web", "db")
            ],
        )


class LivePolicyTests(AdminTestCase):
    """
    A policy replaced through the admin API of a running proxy decides the
    next request, and comes back after a restart.
    """

    def test_replacedUnderTrafficAndRestored(self) -> None:
        stateDir = os.path.abspath(self.mktemp())
        backends = self.backends("A")
        config = makeConfig({"a": [backends["A"][1]]}, rules=HELLO_A, admin={"stateDir": stateDir})
        proxy, admin = self.start(config)
        self.assertEqual(self.upstreamsOf(proxy.proxyPort, b"hello"), ["A"])

        response = admin.get("/admin/routers/web/policy")
        self.assertEqual((response.code, response.json()), (200, OPEN))
        closed = {"default": "deny", "rules": [{"callers": ["10.0.0.0/8"]}]}
        response = admin.put(
            "/admin/routers/web/policy", closed, headers={"If-Match": response.header("etag")}
        )
        self.assertEqual(response.code, 200, response)
        [refused] = self.fetch(proxy.proxyPort, b"hello")
        self.assertEqual(refused.status, 403)
        self.assertEqual(refused.header(b"mesh-err"), b"forbidden")

        explained = admin.get("/admin/routers/web/explain?name=/svc/hello&peer=10.9.8.7")
        self.assertEqual(
            explained.json()["policy"], {"allowed": True, "rule": 0, "reason": "rule 0 allows"}
        )
        proxy.stop()

        second, admin = self.start(config)
        self.assertEqual(admin.get("/admin/routers/web/policy").json()["default"], "deny")
        [refused] = self.fetch(second.proxyPort, b"hello")
        self.assertEqual(refused.status, 403)
        response = admin.put(
            "/admin/routers/web/policy", OPEN, headers={"If-Match": "*"}
        )
        self.assertEqual(response.code, 200)
        self.assertEqual(self.upstreamsOf(second.proxyPort, b"hello"), ["A"])


POLICED = """\
routers:
  - name: web
    listen: "tcp:4140"
    rules: "/svc => /#/static | /#/other; /svc/loop => /svc/loop;"
    loadBalancer: {kind: roundRobin}
    policy:
      default: deny
      rules:
        - {callers: ["spiffe://mesh.local/web"], names: [/svc/hello], methods: [GET]}
        - {callers: ["10.0.0.0/8"], names: ["/#/static"]}
        - {callers: [unauthenticated], names: [/svc/open]}
"""


class ExplainPolicyTests(SynchronousTestCase):
    """
    The C{policy} of an explanation: what the router's policy says of a
    caller, for the logical name and the bound names it reaches.
    """

    def setUp(self) -> None:
        from tests.test_http_router import makeRouter

        self.router = makeRouter(POLICED)

    def decide(self, **kwargs: Any) -> Any:
        kwargs.setdefault("name", "/svc/hello")
        return self.router.explain(**kwargs)["policy"]

    def test_noPolicyIsNull(self) -> None:
        from tests.test_http_router import ALTERNATION, makeRouter

        self.assertIsNone(makeRouter(ALTERNATION).explain(name="/svc/hello")["policy"])

    def test_byCallerAndMethod(self) -> None:
        self.assertEqual(
            self.decide(caller=WEB), {"allowed": True, "rule": 0, "reason": "rule 0 allows"}
        )
        closed = {"allowed": False, "rule": None,
                  "reason": "no rule allows this caller for this name"}
        self.assertEqual(self.decide(caller=WEB, method="POST"), closed)
        self.assertEqual(self.decide(), closed)
        self.assertEqual(
            self.decide(name="/svc/open"), {"allowed": True, "rule": 2, "reason": "rule 2 allows"}
        )
        self.assertEqual(
            self.decide(name="/svc/open", caller=WEB),
            {"allowed": False, "rule": None, "reason": "no rule allows this caller for this name"},
        )

    def test_hostAndPathAreDecidedAlike(self) -> None:
        self.assertEqual(self.decide(name=None, host="hello", caller=WEB)["rule"], 0)

    def test_boundNamesDecidedOneByOne(self) -> None:
        """
        Rule 1 names only the first alternative's bound name: the decision
        depends on the bound name the request goes to, and says so.
        """
        self.assertEqual(self.decide(name="/svc/other", peer="10.1.2.3"), {
            "allowed": False, "rule": None,
            "reason": "default deny (when it goes to /#/other/other; the destination's other"
                      " bound names allow it)",
        })
        self.router.policy = policyOf({"default": "deny", "rules": [
            {"callers": ["10.0.0.0/8"], "names": ["/#"]},
        ]})
        self.assertEqual(
            self.decide(name="/svc/other", peer="10.1.2.3"),
            {"allowed": True, "rule": 0, "reason": "rule 0 allows"},
        )

    def test_aRulesLoopDecidesOnTheLogicalName(self) -> None:
        answer = self.router.explain(name="/svc/loop", peer="10.1.2.3")
        self.assertIsNone(answer["destination"])
        self.assertEqual(answer["policy"], {"allowed": False, "rule": None,
                                            "reason": "default deny"})

    def test_theNewPolicyIsTheOneExplained(self) -> None:
        store = PolicyStore(self.router, stateDir=None, clock=Clock())
        store.replace(OPEN, "*", "a")
        self.assertIsNone(self.decide())

    def test_badCallers(self) -> None:
        for kwargs, reason in (
            ({"peer": "mesh.local"}, "peer must be an IP address, got 'mesh.local'"),
            ({"peer": "10.0.0.0/8"}, "peer must be an IP address"),
            ({"method": "G T"}, "method must be an HTTP method such as GET, got 'G T'"),
            ({"caller": ""}, "an empty caller identity"),
        ):
            e = self.assertRaises(ValueError, self.decide, **kwargs)
            self.assertIn(reason, str(e))


class ExplainPolicyAPITests(_PolicyAPIMixin, SynchronousTestCase):
    """
    C{caller=}, C{peer=} and C{method=} of C{GET …/explain}: passed on
    when given, refused when empty or repeated.
    """

    def setUp(self) -> None:
        super().setUp()
        from tests.test_http_router import makeRouter

        self.rules = FakeRulesRouter()
        self.runtime.routers.update(rules=self.rules, real=makeRouter(POLICED))

    def explain(self, router: str, query: str) -> tuple[Any, bytes]:
        return self.request("GET", "/admin/routers/%s/explain?%s" % (router, query))

    def test_passedOnOnlyWhenGiven(self) -> None:
        self.explain("rules", "name=/svc/users")
        self.explain("rules", "name=/svc/users&caller=spiffe%3A//mesh.local/web&peer=10.0.0.1"
                              "&method=DELETE")
        self.assertEqual(self.rules.explained, [
            {"name": "/svc/users", "host": None, "path": None},
            {"name": "/svc/users", "host": None, "path": None, "caller": WEB,
             "peer": "10.0.0.1", "method": "DELETE"},
        ])

    def test_emptyOrRepeatedIs400(self) -> None:
        for query in ("caller=", "peer=", "method=", "caller=a&caller=b"):
            response, body = self.explain("rules", "name=/svc/users&" + query)
            self.assertEqual(response.code, 400, query)
            self.assertTrue(json.loads(body)["error"], query)
        self.assertEqual(self.rules.explained, [])

    def test_theRoutersDecision(self) -> None:
        response, body = self.explain("real", "host=hello&caller=spiffe%3A//mesh.local/web")
        self.assertEqual(response.code, 200)
        self.assertEqual(json.loads(body)["policy"],
                         {"allowed": True, "rule": 0, "reason": "rule 0 allows"})
        response, body = self.explain("real", "host=hello&peer=nope")
        self.assertJSON(response, body, 400, {"error": "peer must be an IP address, got 'nope'"})
