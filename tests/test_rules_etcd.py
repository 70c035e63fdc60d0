"""
Tests for L{meshproxy.admin.etcdstore} (rules and policies kept in etcd):
the C{rulesStore} config section; the stores on a fake clock over an etcd
kept in memory (revisions, transactions, watches, outages); the admin API
over them; then two proxies in this process sharing a real etcd on
loopback (L{tests.etcd_support}): changes through one applied by the
other, 412 across proxies, 503 while etcd is away, readiness, and reloads.
"""

from __future__ import annotations

import base64
import json
import os
import random

from twisted.internet import defer, reactor
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.logger import Logger, formatEvent
from twisted.trial.unittest import SynchronousTestCase, TestCase

from meshproxy.admin import etcdstore
from meshproxy.admin.etcdstore import (
    EtcdRulesStore,
    EtcdStores,
    EtcdVersionedStore,
    StoreUnavailable,
    encodeValue,
    parseValue,
)
from meshproxy.admin.rules import InvalidRules, RulesStore
from meshproxy.admin.versioned import PersistError, StaleVersion, UnknownVersion
from meshproxy.config import ConfigError, parseConfig
from meshproxy.etcd import EtcdError, EtcdUnavailable, KeyValue, WatchEvent
from meshproxy.resilience.backoff import Backoff
from tests.test_admin_rules import FakeRulesRouter

PREFIX = "/meshproxy/rules/"
CONFIG_RULES = "/svc => /#/fs;\n"
USERS_V2 = "/svc => /#/fs;\n/svc/users => /#/fs/users-v2;\n"
USERS_V3 = "/svc => /#/fs;\n/svc/users => /#/fs/users-v3;\n"
START = 1700000000.0


def b64(data):
    if isinstance(data, str):
        data = data.encode("utf-8")
    return base64.b64encode(data).decode("ascii")


def unb64(text):
    return base64.b64decode(text)


# -- an etcd in memory ----------------------------------------------------------------------------


class MemoryWatch:
    def __init__(self, etcd, key, start, onEvents, onCompacted, onStatus):
        self.etcd = etcd
        self.key = key
        self.start = start
        self.onEvents = onEvents
        self.onCompacted = onCompacted
        self.onStatus = onStatus
        self.stopped = False
        self.connected = True
        self.reconnected = []

    def stop(self):
        self.stopped = True
        self.connected = False

    def reconnect(self, reason):
        self.reconnected.append(reason)


class MemoryEtcd:
    """
    What the stores use of L{EtcdClient<meshproxy.etcd.EtcdClient>}, over
    keys kept in memory with etcd's revisions: ranges, transactions (their
    compares and operations in the gateway's JSON), watches whose events
    are delivered when the test says (L{deliver}), or at once with
    C{autoDeliver}.

    @ivar down: when set, every call fails with L{EtcdUnavailable} saying it.
    @ivar txnErrors: errors the next transactions fail with, in order
        (after applying, for an error of code L{None}: sent, no answer).
    """

    endpoint = "http://etcd:2379"

    def __init__(self):
        self.kvs = {}
        self.revision = 1
        self.watches = []
        self.queue = []
        self.autoDeliver = False
        self.down = None
        self.txnErrors = []
        self.txns = []
        self.closed = False

    def backoff(self):
        return Backoff(0.1, 1.0, random=random.Random(0))

    def _unavailable(self):
        return fail(EtcdUnavailable("etcd unreachable (%s)" % (self.down,)))

    # -- reads

    def range(self, key, prefix=True, revision=None):
        if self.down:
            return self._unavailable()
        found = [
            kv for k, kv in sorted(self.kvs.items()) if (k.startswith(key) if prefix else k == key)
        ]
        return succeed((self.revision, found))

    def get(self, key):
        if self.down:
            return self._unavailable()
        return succeed(self.kvs.get(key))

    def count(self, key):
        if self.down:
            return self._unavailable()
        return succeed((self.revision, len([k for k in self.kvs if k.startswith(key)])))

    # -- writes (from the tests, as another proxy or etcdctl would)

    def put(self, key, value):
        if isinstance(value, str):
            value = value.encode("utf-8")
        self.revision += 1
        old = self.kvs.get(key)
        kv = KeyValue(
            key, value, self.revision,
            createRevision=old.createRevision if old else self.revision,
            version=(old.version + 1) if old else 1,
        )
        self.kvs[key] = kv
        self._notify([WatchEvent("put", kv)])
        return self.revision

    def delete(self, key):
        if key not in self.kvs:
            return self.revision
        self.revision += 1
        del self.kvs[key]
        self._notify([WatchEvent("delete", KeyValue(key, b"", self.revision))])
        return self.revision

    def txn(self, compares, success, failure=()):
        if self.down:
            return self._unavailable()
        self.txns.append((list(compares), list(success), list(failure)))
        error = self.txnErrors.pop(0) if self.txnErrors else None
        if error is not None and (isinstance(error, EtcdUnavailable) or error.code is not None):
            return fail(error)
        ok = all(self._holds(c) for c in compares)
        responses = self._run(success if ok else failure)
        if error is not None:
            return fail(error)
        return succeed((ok, self.revision, responses))

    def _holds(self, c):
        kv = self.kvs.get(unb64(c["key"]).decode())
        if c["target"] == "CREATE":
            actual, wanted = (kv.createRevision if kv else 0), int(c["create_revision"])
        else:
            actual, wanted = (kv.modRevision if kv else 0), int(c["mod_revision"])
        assert c["result"] == "EQUAL"
        return actual == wanted

    def _run(self, ops):
        responses, events = [], []
        writes = [op for op in ops if "request_put" in op or (
            "request_delete_range" in op
            and unb64(op["request_delete_range"]["key"]).decode() in self.kvs)]
        if writes:
            self.revision += 1
        for op in ops:
            if "request_put" in op:
                key = unb64(op["request_put"]["key"]).decode()
                old = self.kvs.get(key)
                kv = KeyValue(
                    key, unb64(op["request_put"]["value"]), self.revision,
                    createRevision=old.createRevision if old else self.revision,
                    version=(old.version + 1) if old else 1,
                )
                self.kvs[key] = kv
                events.append(WatchEvent("put", kv))
                responses.append({"response_put": {}})
            elif "request_delete_range" in op:
                key = unb64(op["request_delete_range"]["key"]).decode()
                if self.kvs.pop(key, None) is not None:
                    events.append(WatchEvent("delete", KeyValue(key, b"", self.revision)))
                responses.append({"response_delete_range": {}})
            else:
                key = unb64(op["request_range"]["key"]).decode()
                kv = self.kvs.get(key)
                kvs = [] if kv is None else [{
                    "key": b64(kv.key), "value": b64(kv.value),
                    "mod_revision": str(kv.modRevision),
                    "create_revision": str(kv.createRevision), "version": str(kv.version),
                }]
                responses.append({"response_range": {"kvs": kvs}})
        if events:
            self._notify(events)
        return responses

    # -- watches

    def watch(self, key, start, onEvents, onCompacted, *, onStatus):
        watch = MemoryWatch(self, key, start, onEvents, onCompacted, onStatus)
        self.watches.append(watch)
        return watch

    def _notify(self, events):
        self.queue.append((events, self.revision))
        if self.autoDeliver:
            self.deliver()

    def deliver(self):
        queue, self.queue = self.queue, []
        for events, revision in queue:
            for watch in list(self.watches):
                if watch.stopped:
                    continue
                mine = [e for e in events if e.kv.key.startswith(watch.key)
                        and e.kv.modRevision >= watch.start]
                if mine:
                    watch.onEvents(mine, revision)

    def close(self):
        self.closed = True
        return succeed(None)

    # -- what the tests read

    def value(self, key):
        return json.loads(self.kvs[key].value)

    def under(self, prefix):
        return sorted(k for k in self.kvs if k.startswith(prefix))


class FakeRuntime:
    def __init__(self, *routers):
        self.routers = {router.name: router for router in routers}
        self.rulesStores = {}
        self.policyStores = {}


class FakePolicyRouter:
    """
    A TCP router, as the policy store sees it: a name, a policy, no rules.
    """

    def __init__(self, name):
        self.name = name
        self.policy = None
        self.rules = None


def capture(testCase, name):
    """
    The events of the etcd store's C{_log} or C{_audit} during a test.
    """
    events = []
    original = getattr(etcdstore, name)
    testCase.patch(etcdstore, name, Logger(namespace=original.namespace, observer=events.append))
    return events


def texts(events):
    return [formatEvent(event) for event in events]


# -- the config -----------------------------------------------------------------------------------


class ConfigTests(SynchronousTestCase):
    """
    The C{rulesStore} section.
    """

    ROUTERS = "routers:\n  - {name: web, listen: 'tcp:0'}\n"

    def parse(self, section):
        return parseConfig("rulesStore: %s\n%s" % (section, self.ROUTERS))

    def test_absentByDefault(self):
        self.assertIsNone(parseConfig(self.ROUTERS).rulesStore)

    def test_defaults(self):
        store = self.parse("{kind: etcd}").rulesStore
        self.assertEqual(
            (store.kind, store.endpoints, store.keyPrefix, store.username, store.timeout),
            ("etcd", ("http://127.0.0.1:2379",), "/meshproxy/rules/", None, 5.0),
        )
        self.assertIsNone(store.tls)

    def test_keys(self):
        store = self.parse(
            '{kind: etcd, endpoints: ["https://10.0.0.1:2379", "https://10.0.0.2:2379"],'
            " keyPrefix: /mesh/rules, username: mesh, password: pw, timeout: 2s}"
        ).rulesStore
        self.assertEqual(store.endpoints, ("https://10.0.0.1:2379", "https://10.0.0.2:2379"))
        self.assertEqual(store.keyPrefix, "/mesh/rules/")
        self.assertEqual((store.username, store.password, store.timeout), ("mesh", "pw", 2.0))

    def test_badKeys(self):
        """
        Every problem is named by its key path.
        """
        for section, message in [
            ("{kind: consul}", 'rulesStore.kind: expected one of "etcd", got "consul"'),
            ("{endpoints: [x]}", "rulesStore.endpoints[0]: expected an http:// or https:// URL"),
            ("{endpoints: []}", "rulesStore.endpoints: at least one etcd endpoint is required"),
            ("{keyPrefix: rules}", 'rulesStore.keyPrefix: must start with "/"'),
            ("{username: a}", "rulesStore.password: required with username"),
            ("{tls: {ca: ca.pem}}", "rulesStore.tls: is for https:// endpoints"),
            ("{prefix: /x}", "rulesStore.prefix: unknown key"),
            ("{timeout: fast}", "rulesStore.timeout: expected a duration"),
        ]:
            with self.assertRaises(ConfigError) as caught:
                self.parse(section)
            self.assertTrue(
                any(error.startswith(message) for error in caught.exception.errors),
                (section, caught.exception.errors),
            )

    def test_reloadNeedsARestart(self):
        """
        A reload lists a changed C{rulesStore} as needing a restart.
        """
        from meshproxy.reload import planReload

        old = parseConfig(self.ROUTERS)
        new = self.parse("{kind: etcd}")
        self.assertEqual(planReload(old, new).restart, ("rulesStore",))

    def test_inTheSchema(self):
        from meshproxy.config import jsonSchema

        schema = jsonSchema()
        self.assertIn("rulesStore", schema["properties"])


# -- values ---------------------------------------------------------------------------------------


class ValueTests(SynchronousTestCase):
    """
    L{encodeValue} and L{parseValue}.
    """

    def test_roundTrip(self):
        raw = encodeValue("rules", CONFIG_RULES, "token", "2023-11-14T22:13:20.000Z")
        self.assertEqual(
            json.loads(raw),
            {"rules": CONFIG_RULES, "author": "token", "time": "2023-11-14T22:13:20.000Z"},
        )
        self.assertEqual(
            parseValue("rules", raw), (CONFIG_RULES, "token", "2023-11-14T22:13:20.000Z")
        )
        policy = {"default": "deny", "rules": []}
        self.assertEqual(
            parseValue("policy", encodeValue("policy", policy, "config", "t")),
            (policy, "config", "t"),
        )

    def test_writtenByHand(self):
        """
        Rules written by hand may be the text alone; a policy, its JSON
        alone.
        """
        self.assertEqual(parseValue("rules", b"/svc => /#/fs;"), ("/svc => /#/fs;", None, None))
        self.assertEqual(
            parseValue("policy", b'{"default": "deny"}'), ({"default": "deny"}, None, None)
        )

    def test_bad(self):
        for kind, raw, reason in [
            ("rules", b"\xff", "UTF-8"),
            ("rules", b"{", "JSON"),
            ("policy", b'{"a": ' + b"[" * 100000, "JSON"),
            ("rules", b'{"text": "x", "author": "a"}', "'rules'"),
            ("policy", b"allow", "JSON object"),
            ("policy", b"[1]", "JSON"),
            ("policy", b'{"author": "a"}', "'policy'"),
        ]:
            with self.assertRaises(ValueError) as caught:
                parseValue(kind, raw)
            self.assertIn(reason, str(caught.exception), raw)


# -- the stores over an etcd in memory ------------------------------------------------------------


class StoreTests(SynchronousTestCase):
    """
    L{EtcdStores} and its stores on a fake clock, over L{MemoryEtcd}.
    """

    def setUp(self):
        self.clock = Clock()
        self.clock.advance(START)
        self.etcd = MemoryEtcd()
        self.web = FakeRulesRouter("web", CONFIG_RULES)
        self.tcp = FakePolicyRouter("db")
        self.runtime = FakeRuntime(self.web, self.tcp)
        self.log = capture(self, "_log")
        self.audit = capture(self, "_audit")

    def start(self, historySize=etcdstore.HISTORY_SIZE, deliver=True):
        stores = self.stores = EtcdStores(
            self.etcd, PREFIX, reactor=self.clock, historySize=historySize
        )
        for name in self.runtime.routers:
            stores.addRouter(self.runtime, name, clock=self.clock)
        stores.startService()
        self.addCleanup(stores.stopService)
        if deliver:
            self.etcd.deliver()
        return stores

    @property
    def rules(self):
        return self.runtime.rulesStores["web"]

    @property
    def watch(self):
        return self.etcd.watches[-1]

    def replace(self, store, value, ifMatch, who="10.0.0.9"):
        return self.successResultOf(store.replace(value, ifMatch, who))

    def refused(self, store, value, ifMatch, *errors):
        return self.failureResultOf(store.replace(value, ifMatch, "10.0.0.9"), *errors).value

    def test_storesForEveryRouter(self):
        """
        Every router gets a policy store; an HTTP router, a rules store;
        both kept by the runtime as the local ones are.
        """
        self.start()
        self.assertIsInstance(self.rules, EtcdRulesStore)
        self.assertIsInstance(self.runtime.policyStores["web"], EtcdVersionedStore)
        self.assertIsInstance(self.runtime.policyStores["db"], EtcdVersionedStore)
        self.assertNotIn("db", self.runtime.rulesStores)
        self.assertEqual(self.rules.key, PREFIX + "web")
        self.assertEqual(self.runtime.policyStores["db"].key, PREFIX + "policy/db")
        self.assertIsNone(self.rules.path)

    def test_sameMethodsAsTheLocalStore(self):
        """
        What the admin API calls on a local rules store, the etcd one has.
        """
        self.start()
        for name in ("kind", "current", "validate", "replace", "rollback", "history", "dryRun"):
            self.assertTrue(hasattr(RulesStore, name), name)
            self.assertTrue(hasattr(self.rules, name), name)

    def test_absentKeyWritesTheConfigsCreateOnly(self):
        """
        At start, a router whose key is absent writes its config's rules
        (and policy) with a create-only transaction, and a history entry
        in the same one.
        """
        self.start()
        self.assertTrue(self.stores.loaded)
        self.assertEqual(self.etcd.value(PREFIX + "web")["rules"], CONFIG_RULES)
        self.assertEqual(self.etcd.value(PREFIX + "web")["author"], "config")
        self.assertEqual(
            self.etcd.value(PREFIX + "policy/web")["policy"], {"default": "allow", "rules": []}
        )
        compares = [txn[0][0] for txn in self.etcd.txns]
        self.assertEqual({(c["target"], c["create_revision"]) for c in compares}, {("CREATE", "0")})
        revision = self.etcd.kvs[PREFIX + "web"].modRevision
        self.assertEqual(self.rules.current(), (CONFIG_RULES, str(revision)))
        self.assertEqual(self.rules.applied, revision)
        [history] = self.etcd.under(PREFIX + "history/rules/web/")
        self.assertEqual(self.etcd.kvs[history].modRevision, revision)
        self.assertEqual(self.web.setCalls, [])
        self.assertIn("no rules in the rules store yet", " ".join(texts(self.log)))

    def test_presentKeyWinsWithAWarning(self):
        """
        A key present at start wins over the config, with a warning when
        they differ; nothing is written.
        """
        revision = self.etcd.put(PREFIX + "web", encodeValue("rules", USERS_V2, "token", "t"))
        self.start()
        self.assertEqual(self.web.setCalls, [USERS_V2])
        self.assertEqual(self.rules.current(), (USERS_V2, str(revision)))
        warnings = [t for t in texts(self.log) if "is not the config's rules" in t]
        self.assertEqual(len(warnings), 1, texts(self.log))
        self.assertNotIn(PREFIX + "history/rules/web/", " ".join(self.etcd.under(PREFIX)))

    def test_presentKeyEqualToConfigNoWarning(self):
        self.etcd.put(PREFIX + "web", encodeValue("rules", CONFIG_RULES, "config", "t"))
        self.start()
        self.assertEqual(self.web.setCalls, [])
        self.assertFalse([t for t in texts(self.log) if "is not the config" in t])

    def test_valueThisProxyCannotUseIsRejected(self):
        """
        Rules naming a namer this proxy lacks are logged, shown as
        rejected, and the rules in force stay; the version is still the
        key's, so that a change can replace them.
        """
        revision = self.etcd.put(PREFIX + "web", "/svc => /#/nope;")
        self.start()
        self.assertEqual(self.web.setCalls, [])
        self.assertEqual(self.rules.current(), (CONFIG_RULES, str(revision)))
        state = self.stores.state()["routers"]["web"]["rules"]
        self.assertEqual(state["revision"], revision)
        self.assertEqual(state["applied"], 0)
        self.assertIn("unknown namer prefix", state["rejected"]["error"])
        self.assertTrue([t for t in texts(self.log) if "cannot use the rules of revision" in t])
        self.replace(self.rules, USERS_V2, str(revision))
        self.assertEqual(self.web.rulesText, USERS_V2)
        self.assertIsNone(self.stores.state()["routers"]["web"]["rules"]["rejected"])

    def test_watchApplies(self):
        """
        A change another proxy (or etcdctl) makes is applied from the
        watch, the text alone as well as the JSON.
        """
        self.start()
        revision = self.etcd.put(PREFIX + "web", encodeValue("rules", USERS_V2, "1.2.3.4", "t"))
        self.assertEqual(self.web.setCalls, [])
        self.etcd.deliver()
        self.assertEqual(self.web.setCalls, [USERS_V2])
        self.assertEqual(self.rules.current(), (USERS_V2, str(revision)))
        self.etcd.put(PREFIX + "web", USERS_V3)
        self.etcd.deliver()
        self.assertEqual(self.web.rulesText, USERS_V3)
        self.assertIn("by 1.2.3.4", " ".join(texts(self.log)))

    def test_replaceIsACompareAndSwap(self):
        """
        A change compares the key's revision with If-Match, writes the
        value and a history key in one transaction, and is applied here at
        once; the watch bringing the same revision changes nothing.
        """
        self.start()
        _, version = self.rules.current()
        previous, new = self.replace(self.rules, USERS_V2, version, who="token")
        self.assertEqual(previous, version)
        self.assertEqual(new, str(self.etcd.kvs[PREFIX + "web"].modRevision))
        self.assertEqual(self.web.setCalls, [USERS_V2])
        value = self.etcd.value(PREFIX + "web")
        self.assertEqual((value["rules"], value["author"]), (USERS_V2, "token"))
        compare = self.etcd.txns[-1][0][0]
        self.assertEqual((compare["target"], compare["mod_revision"]), ("MOD", version))
        self.etcd.deliver()
        self.assertEqual(self.web.setCalls, [USERS_V2])
        [line] = texts(self.audit)
        self.assertIn("changed by token", line)
        self.assertIn("+/svc/users => /#/fs/users-v2;", line)
        # The three creations at start, and this change.
        self.assertEqual(self.stores.writes, 4)

    def test_staleIfMatch(self):
        """
        A change based on a revision that is no longer the key's is refused
        (412, with the key's revision now), also when this proxy's watch
        has not brought the newer one yet; that one is then applied.
        """
        self.start()
        _, version = self.rules.current()
        newer = self.etcd.put(PREFIX + "web", encodeValue("rules", USERS_V3, "other", "t"))
        error = self.refused(self.rules, USERS_V2, version, StaleVersion)
        self.assertEqual(error.current, str(newer))
        self.assertEqual(self.web.rulesText, USERS_V3)
        self.assertEqual(self.etcd.value(PREFIX + "web")["rules"], USERS_V3)
        error = self.refused(self.rules, USERS_V2, "1", StaleVersion)
        self.assertEqual(error.current, str(newer))
        error = self.refused(self.rules, USERS_V2, "23bff2d69586afef", StaleVersion)
        self.assertEqual(self.stores.conflicts, 3)

    def test_ifMatchNewerThanSeen(self):
        """
        A change based on a revision the caller saw through another proxy,
        before this proxy's watch brought it, reads the key and goes on.
        """
        self.start()
        newer = self.etcd.put(PREFIX + "web", encodeValue("rules", USERS_V3, "other", "t"))
        previous, version = self.replace(self.rules, USERS_V2, str(newer))
        self.assertEqual(previous, str(newer))
        self.assertEqual(self.web.setCalls, [USERS_V3, USERS_V2])
        self.assertEqual(self.etcd.value(PREFIX + "web")["rules"], USERS_V2)

    def test_ifMatchAnything(self):
        """
        C{*} replaces whatever the store holds, even when this proxy's view
        is behind.
        """
        self.start()
        self.etcd.put(PREFIX + "web", encodeValue("rules", USERS_V3, "other", "t"))
        self.replace(self.rules, USERS_V2, "*")
        self.assertEqual(self.etcd.value(PREFIX + "web")["rules"], USERS_V2)
        self.assertEqual(self.web.rulesText, USERS_V2)

    def test_sameValueWritesNothing(self):
        self.start()
        _, version = self.rules.current()
        before = list(self.etcd.txns)
        self.assertEqual(self.replace(self.rules, CONFIG_RULES, version), (version, version))
        self.assertEqual(self.etcd.txns, before)

    def test_invalidRefusedWithoutWriting(self):
        self.start()
        before = list(self.etcd.txns)
        error = self.refused(self.rules, "/svc => ;", "*", InvalidRules)
        self.assertEqual(error.line, 1)
        self.refused(self.rules, "/svc => /#/nope;", "*", InvalidRules)
        self.assertEqual(self.etcd.txns, before)

    def test_unreachableRefused(self):
        """
        While etcd cannot be reached, a change is refused (503) and nothing
        changes here.
        """
        self.start()
        _, version = self.rules.current()
        self.etcd.down = "connection refused"
        error = self.refused(self.rules, USERS_V2, version, StoreUnavailable)
        self.assertEqual(error.status, 503)
        self.assertIn("cannot be reached", str(error))
        self.assertEqual(self.web.setCalls, [])
        self.assertEqual(self.stores.refused, 1)

    def test_noAnswerRefusedThenFollowed(self):
        """
        A transaction sent without an answer may have been applied: the
        change is refused (503, saying so) and not applied here, until the
        watch brings it.
        """
        self.start()
        _, version = self.rules.current()
        self.etcd.txnErrors.append(EtcdError("http://etcd:2379: no answer in time"))
        error = self.refused(self.rules, USERS_V2, version, StoreUnavailable)
        self.assertIn("may or may not have been taken", str(error))
        self.assertEqual(self.web.setCalls, [])
        self.etcd.deliver()
        self.assertEqual(self.web.setCalls, [USERS_V2])

    def test_etcdRefusesTheWrite(self):
        """
        etcd's own refusal (a user who may only read) is a 500.
        """
        self.start()
        self.etcd.txnErrors.append(EtcdError("etcd: permission denied", 7))
        error = self.refused(self.rules, USERS_V2, "*", PersistError)
        self.assertNotIsInstance(error, StoreUnavailable)
        self.assertIn("refused the change: etcd: permission denied", str(error))

    def test_notReadYet(self):
        """
        Before the first read of the prefix, a change is refused (503): the
        store's version is not known.
        """
        self.etcd.down = "connection refused"
        self.start()
        self.assertFalse(self.stores.loaded)
        self.assertEqual(self.rules.current(), (CONFIG_RULES, "0"))
        error = self.refused(self.rules, USERS_V2, "*", StoreUnavailable)
        self.assertIn("has not been read yet (etcd unreachable (connection refused))", str(error))

    def test_unreachableAtStartThenCreates(self):
        """
        The read is tried again (100 ms to 1 s) until etcd answers; then
        the config's rules are written.
        """
        self.etcd.down = "connection refused"
        self.start()
        state = self.stores.state()
        self.assertEqual((state["loaded"], state["stale"], state["errors"]), (False, True, 1))
        self.clock.advance(1.0)
        self.assertEqual(self.stores.errors, 2)
        self.etcd.down = None
        self.clock.advance(1.0)
        self.assertTrue(self.stores.loaded)
        self.assertFalse(self.stores.stale)
        self.assertEqual(self.etcd.value(PREFIX + "web")["rules"], CONFIG_RULES)

    def test_createRetried(self):
        """
        A create-only write that fails is tried again until etcd takes it.
        """
        # The first store made is web's policy.
        self.etcd.txnErrors.append(EtcdUnavailable("etcd unreachable (refused)"))
        self.start()
        self.assertNotIn(PREFIX + "policy/web", self.etcd.kvs)
        self.assertEqual(self.runtime.policyStores["web"].revision, 0)
        self.clock.advance(1.0)
        self.assertIn(PREFIX + "policy/web", self.etcd.kvs)
        self.assertEqual(
            self.runtime.policyStores["web"].revision,
            self.etcd.kvs[PREFIX + "policy/web"].modRevision,
        )
        self.assertEqual(len([t for t in texts(self.log) if "cannot write" in t]), 1)

    def test_raceForTheCreate(self):
        """
        When another proxy created the key between the read and the
        create-only write, its value is taken.
        """
        stores = EtcdStores(self.etcd, PREFIX, reactor=self.clock)
        stores.addRouter(self.runtime, "web", clock=self.clock)
        original = self.etcd.txn

        def txn(compares, success, failure=()):
            self.etcd.txn = original
            self.etcd.put(PREFIX + "web", encodeValue("rules", USERS_V2, "config", "t"))
            return original(compares, success, failure)

        self.etcd.txn = txn
        stores.startService()
        self.addCleanup(stores.stopService)
        self.assertEqual(self.web.rulesText, USERS_V2)

    def test_staleWhileWatchLost(self):
        """
        While the watch is lost, the rules in force stay and the store is
        stale with its age and reason; it is followed again after.
        """
        self.start()
        self.watch.onStatus(False, "http://etcd:2379: connection refused")
        self.clock.advance(2.5)
        state = self.stores.state()
        self.assertEqual((state["stale"], state["staleSeconds"]), (True, 2.5))
        self.assertEqual(state["problem"], "http://etcd:2379: connection refused")
        self.assertEqual(state["disconnects"], 1)
        self.assertEqual(self.web.rulesText, CONFIG_RULES)
        self.watch.onStatus(True, None)
        self.assertFalse(self.stores.state()["stale"])

    def test_silentWatchChecked(self):
        """
        A watch that looks established is checked every 10 s: when etcd
        does not answer, it is dropped (and tried again).
        """
        self.start()
        self.etcd.down = "no answer"
        self.clock.advance(10)
        self.assertEqual(len(self.watch.reconnected), 1)

    def test_compactionReadsAgain(self):
        """
        When the watch's revision was compacted, the prefix is read again:
        a changed key is applied, a deleted one written back.
        """
        self.start()
        self.etcd.put(PREFIX + "web", encodeValue("rules", USERS_V2, "other", "t"))
        self.etcd.delete(PREFIX + "policy/web")
        self.etcd.queue = []
        self.watch.onCompacted(self.etcd.revision)
        self.assertEqual(self.stores.resyncs, 1)
        self.assertEqual(self.web.rulesText, USERS_V2)
        self.assertIn(PREFIX + "policy/web", self.etcd.kvs)
        self.assertEqual(self.watch.start, self.etcd.revision)

    def test_deletedKeyWrittenBack(self):
        """
        A deleted key is written again from the config (create-only): the
        rules go back to the config's.
        """
        self.etcd.put(PREFIX + "web", encodeValue("rules", USERS_V2, "other", "t"))
        self.start()
        self.assertEqual(self.web.rulesText, USERS_V2)
        self.etcd.delete(PREFIX + "web")
        self.etcd.deliver()
        self.assertEqual(self.etcd.value(PREFIX + "web")["rules"], CONFIG_RULES)
        self.assertEqual(self.web.rulesText, CONFIG_RULES)
        self.assertIn("was deleted from the rules store", " ".join(texts(self.log)))

    def test_historyAndRollback(self):
        """
        The history is the history keys, newest first, each with the
        revision of its change as its version; a rollback writes an older
        value again as a new change.
        """
        self.start()
        first = self.rules.current()[1]
        _, second = self.replace(self.rules, USERS_V2, first, who="token")
        _, third = self.replace(self.rules, USERS_V3, second, who="10.1.1.1")
        history = self.rules.history()
        self.assertEqual(
            [(e["version"], e["who"], e["text"]) for e in history],
            [(third, "10.1.1.1", USERS_V3), (second, "token", USERS_V2),
             (first, "config", CONFIG_RULES)],
        )
        self.assertEqual(history[0]["time"], "2023-11-14T22:13:20.000Z")
        _, fourth = self.successResultOf(self.rules.rollback(second, third, "token"))
        self.assertEqual(self.web.rulesText, USERS_V2)
        self.assertEqual(self.rules.history()[0]["version"], fourth)
        self.assertRaises(UnknownVersion, self.rules.rollback, "999", fourth, "token")

    def test_historyBounded(self):
        """
        At most C{historySize} history keys per router: each change
        deletes the oldest in its transaction.
        """
        self.start(historySize=3)
        for i in range(6):
            _, version = self.rules.current()
            self.replace(self.rules, "/svc => /#/fs;\n/svc/x%d => /#/fs/x;\n" % (i,), version)
        self.assertEqual(len(self.etcd.under(PREFIX + "history/rules/web/")), 3)
        history = self.rules.history()
        self.assertEqual(len(history), 3)
        self.assertIn("/svc/x5", history[0]["text"])

    def test_historyOfAValueWrittenByHand(self):
        """
        A value written without a history key heads the history, by
        C{etcd}, at the time this proxy saw it.
        """
        self.start()
        self.clock.advance(60)
        revision = self.etcd.put(PREFIX + "web", USERS_V2)
        self.etcd.deliver()
        head = self.rules.history()[0]
        self.assertEqual(
            head, {"version": str(revision), "time": "2023-11-14T22:14:20.000Z", "who": "etcd",
                   "text": USERS_V2},
        )

    def test_dryRun(self):
        self.start()
        result = self.rules.dryRun(USERS_V2)
        self.assertEqual(result["changes"][0]["name"], "/svc/users")
        self.assertRaises(InvalidRules, self.rules.dryRun, "/svc => ;")

    def test_policyTheSameWay(self):
        """
        A policy is kept, changed and followed as the rules are, TCP
        routers' included.
        """
        self.start()
        store = self.runtime.policyStores["db"]
        policy, version = store.current()
        self.assertEqual(policy, {"default": "allow", "rules": []})
        deny = {"default": "deny", "rules": []}
        previous, new = self.replace(store, deny, version)
        self.assertEqual(self.tcp.policy.describe(), deny)
        self.assertEqual(self.etcd.value(PREFIX + "policy/db")["policy"], deny)
        self.refused(store, {"default": "allow"}, previous, StaleVersion)
        self.etcd.put(PREFIX + "policy/db", json.dumps({"default": "allow", "rules": []}))
        self.etcd.deliver()
        self.assertIsNone(self.tcp.policy)
        self.assertEqual([e["version"] for e in store.history()][1], new)

    def test_removedRouterIgnored(self):
        """
        Once its router is gone (a reload removed it), a store applies
        nothing, writes nothing back and is not shown.
        """
        self.start()
        store = self.runtime.rulesStores.pop("web")
        self.etcd.put(PREFIX + "web", USERS_V2)
        self.etcd.deliver()
        self.assertEqual(self.web.setCalls, [])
        self.etcd.delete(PREFIX + "web")
        self.etcd.deliver()
        self.assertNotIn(PREFIX + "web", self.etcd.kvs)
        self.assertNotIn("rules", self.stores.state()["routers"]["web"])
        self.assertEqual(store.revision, 0)

    def test_routerAddedLater(self):
        """
        A router a reload adds gets its stores at once from what was read.
        """
        self.start()
        self.etcd.put(PREFIX + "api", USERS_V2)
        self.etcd.deliver()
        api = FakeRulesRouter("api", CONFIG_RULES)
        self.runtime.routers["api"] = api
        self.stores.addRouter(self.runtime, "api", clock=self.clock)
        self.assertEqual(api.rulesText, USERS_V2)
        self.assertIn(PREFIX + "policy/api", self.etcd.kvs)

    def test_otherKeysIgnoredOnce(self):
        self.etcd.put(PREFIX + "web/extra", "x")
        self.start()
        self.etcd.put(PREFIX + "web/extra", "y")
        self.etcd.deliver()
        ignored = [t for t in texts(self.log) if "ignoring etcd key" in t]
        self.assertEqual(len(ignored), 1)

    def test_stopClosesTheClient(self):
        self.start()
        watch = self.watch
        self.successResultOf(self.stores.stopService())
        self.assertTrue(self.etcd.closed)
        self.assertTrue(watch.stopped)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_stopWhileCreating(self):
        """
        Stopped while a create-only write is pending: it is cancelled, and
        no retry is left scheduled.
        """
        pending = []

        def txn(compares, success, failure=()):
            d = Deferred()
            pending.append(d)
            return d

        self.etcd.txn = txn
        stores = self.start()
        self.assertEqual(len(pending), 3)
        self.assertFalse(stores.loaded)
        self.successResultOf(stores.stopService())
        # Cancelled (their failures handled by the stores).
        self.assertEqual([d.called for d in pending], [True] * 3)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_stopWhileReading(self):
        """
        Stopped while the read is pending: no retry is left scheduled.
        """
        pending = Deferred()
        self.etcd.range = lambda key: pending
        stores = self.start(deliver=False)
        self.successResultOf(stores.stopService())
        self.assertEqual(self.clock.getDelayedCalls(), [])


# -- the admin API --------------------------------------------------------------------------------


class AdminAPITests(SynchronousTestCase):
    """
    The admin API over the etcd stores: the same routes and answers, 503
    when the store cannot be reached, the store's state.
    """

    def setUp(self):
        from treq.testing import StubTreq

        from meshproxy.admin.api import AdminAPI

        self.clock = Clock()
        self.clock.advance(START)
        self.etcd = MemoryEtcd()
        self.web = FakeRulesRouter("web", CONFIG_RULES)
        runtime = self.runtime = FakeRuntime(self.web)
        stores = self.stores = EtcdStores(self.etcd, PREFIX, reactor=self.clock)
        runtime.rulesStore = stores
        runtime.namers = ()
        stores.addRouter(runtime, "web", clock=self.clock)
        stores.startService()
        self.addCleanup(stores.stopService)
        self.etcd.deliver()
        from prometheus_client import CollectorRegistry

        api = AdminAPI(
            runtime, CollectorRegistry(), rulesStores=runtime.rulesStores,
            policyStores=runtime.policyStores, clock=self.clock,
        )
        self.treq = StubTreq(api.app.resource())

    def request(self, method, path, body=b"", headers=None, contentType=b"text/plain"):
        allHeaders = {b"Content-Type": [contentType]}
        for name, value in (headers or {}).items():
            allHeaders[name.encode()] = [value.encode()]
        response = self.successResultOf(self.treq.request(
            method, "http://127.0.0.1" + path, data=body, headers=allHeaders
        ))
        content = self.successResultOf(response.content())
        return response, content

    def test_getAndPut(self):
        revision = self.etcd.kvs[PREFIX + "web"].modRevision
        response, body = self.request("GET", "/admin/routers/web/rules")
        self.assertEqual(response.code, 200)
        self.assertEqual(body, CONFIG_RULES.encode())
        self.assertEqual(response.headers.getRawHeaders("etag"), ['"%d"' % (revision,)])
        response, body = self.request(
            "PUT", "/admin/routers/web/rules", USERS_V2.encode(), {"If-Match": '"%d"' % revision}
        )
        self.assertEqual(response.code, 200, body)
        new = self.etcd.kvs[PREFIX + "web"].modRevision
        self.assertEqual(json.loads(body), {"version": str(new), "previous": str(revision)})
        self.assertEqual(response.headers.getRawHeaders("etag"), ['"%d"' % (new,)])
        self.assertEqual(self.web.rulesText, USERS_V2)

    def test_stale412(self):
        response, _ = self.request("GET", "/admin/routers/web/rules")
        [etag] = response.headers.getRawHeaders("etag")
        newer = self.etcd.put(PREFIX + "web", USERS_V2)
        response, body = self.request(
            "PUT", "/admin/routers/web/rules", USERS_V3.encode(), {"If-Match": etag}
        )
        self.assertEqual(response.code, 412)
        self.assertEqual(json.loads(body)["current"], str(newer))
        self.assertEqual(response.headers.getRawHeaders("etag"), ['"%d"' % (newer,)])

    def test_invalid400(self):
        response, body = self.request(
            "PUT", "/admin/routers/web/rules", b"/svc => ;", {"If-Match": "*"}
        )
        self.assertEqual(response.code, 400)
        self.assertEqual(json.loads(body)["line"], 1)

    def test_unreachable503(self):
        self.etcd.down = "connection refused"
        response, body = self.request(
            "PUT", "/admin/routers/web/rules", USERS_V2.encode(), {"If-Match": "*"}
        )
        self.assertEqual(response.code, 503)
        self.assertIn("cannot be reached", json.loads(body)["error"])
        self.assertEqual(self.web.rulesText, CONFIG_RULES)

    def test_refusedByEtcd500(self):
        self.etcd.txnErrors.append(EtcdError("etcd: permission denied", 7))
        response, body = self.request(
            "PUT", "/admin/routers/web/rules", USERS_V2.encode(), {"If-Match": "*"}
        )
        self.assertEqual(response.code, 500)

    def test_historyRollbackAndDryRun(self):
        first = str(self.etcd.kvs[PREFIX + "web"].modRevision)
        self.request("PUT", "/admin/routers/web/rules", USERS_V2.encode(), {"If-Match": "*"})
        response, body = self.request("GET", "/admin/routers/web/rules/history")
        history = json.loads(body)
        self.assertEqual([e["text"] for e in history], [USERS_V2, CONFIG_RULES])
        response, body = self.request(
            "POST", "/admin/routers/web/rules/rollback", json.dumps({"version": first}).encode(),
            {"If-Match": "*"}, contentType=b"application/json",
        )
        self.assertEqual(response.code, 200, body)
        self.assertEqual(self.web.rulesText, CONFIG_RULES)
        response, body = self.request(
            "POST", "/admin/routers/web/rules/rollback", json.dumps({"version": "77"}).encode(),
            {"If-Match": "*"}, contentType=b"application/json",
        )
        self.assertEqual(response.code, 404)
        response, body = self.request(
            "POST", "/admin/routers/web/rules?dryRun=1", USERS_V2.encode()
        )
        self.assertEqual(json.loads(body)["valid"], True)

    def test_policy(self):
        response, body = self.request("GET", "/admin/routers/web/policy")
        version = response.headers.getRawHeaders("etag")[0]
        response, body = self.request(
            "PUT", "/admin/routers/web/policy", b'{"default": "deny"}', {"If-Match": version},
            contentType=b"application/json",
        )
        self.assertEqual(response.code, 200, body)
        self.assertEqual(self.web.policy.describe()["default"], "deny")

    def test_stateShowsTheStore(self):
        self.etcd.watches[-1].onStatus(False, "connection refused")
        response, body = self.request("GET", "/admin/state")
        state = json.loads(body)["rulesStore"]
        self.assertEqual((state["kind"], state["stale"]), ("etcd", True))
        self.assertEqual(set(state["routers"]["web"]), {"rules", "policy"})


# -- two proxies, one real etcd -------------------------------------------------------------------


CONFIG = """\
admin:
  listen: "tcp:port=0:interface=127.0.0.1"
namers:
  - kind: static
    prefix: /#/static
    services: {a: ["127.0.0.1:%(a)d"], b: ["127.0.0.1:%(b)d"]}
rulesStore: {kind: etcd, endpoints: ["%(etcd)s"], keyPrefix: /test/rules/, timeout: 2s}
routers:
  - name: web
    listen: "tcp:0:interface=127.0.0.1"
    identifier: {kind: host}
    rules: %(rules)s
"""


class SharedEtcdTests(TestCase):
    """
    Two proxies built in this process (as twistd would) on one real etcd.
    """

    timeout = 60

    @defer.inlineCallbacks
    def setUp(self):
        from tests.etcd_support import EtcdServer, requireEtcd
        from tests.support import BackendFactory, listenBackend, okHandler

        requireEtcd()
        self.etcd = EtcdServer(self)
        yield self.etcd.start()
        self.writer = self.etcd.client(self)
        self.ports = {}
        for label in ("a", "b"):
            factory = BackendFactory(okHandler(label.encode()))
            self.ports[label] = yield listenBackend(self, factory)

    def config(self, rules="/svc/hello => /#/static/a;\n"):
        return CONFIG % {
            "a": self.ports["a"], "b": self.ports["b"], "etcd": self.etcd.url,
            "rules": json.dumps(rules),
        }

    @defer.inlineCallbacks
    def proxy(self, text=None):
        """
        Write a config file and run a proxy on it, as twistd would: its
        services under one parent, stopped at the end of the test.

        @return: a Deferred firing with C{(runtime, admin client)} once it
            is listening and has read the store, with C{path} and
            C{directory} set on the runtime.
        """
        from twisted.application.service import MultiService

        from meshproxy.config import loadConfig
        from meshproxy.runtime import buildServices
        from tests.admin_support import AdminClient

        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        path = os.path.join(directory, "mesh.yaml")
        with open(path, "w") as f:
            f.write(text or self.config())
        runtime, services = buildServices(loadConfig(path), reactor=reactor, configPath=path)
        parent = MultiService()
        for service in services:
            service.setServiceParent(parent)
        parent.privilegedStartService()
        parent.startService()
        self.addCleanup(parent.stopService)
        admin = None
        for service in services:
            if hasattr(service, "whenBound"):
                port = yield service.whenBound()
                if service.owner == "admin":
                    admin = AdminClient(self, port.getHost().port)
        yield runtime.rulesStore.whenLoaded()
        runtime.path, runtime.directory, runtime.admin = path, directory, admin
        return runtime

    @defer.inlineCallbacks
    def rules(self, proxy):
        response = yield proxy.admin.get("/admin/routers/web/rules")
        return response.text, response.header("etag")

    @defer.inlineCallbacks
    def test_changeThroughOneAppliedByTheOther(self):
        """
        The first proxy writes the config's rules; a change through A is
        applied by B from its watch; a stale If-Match through B gets 412.
        """
        from tests.etcd_support import waitUntil

        a = yield self.proxy()
        b = yield self.proxy(self.config(rules="/svc/hello => /#/static/b;\n"))
        self.assertIsInstance(a.rulesStores["web"], EtcdRulesStore)
        self.assertIsInstance(b.policyStores["web"], EtcdVersionedStore)
        text, etagA = yield self.rules(a)
        self.assertEqual(text, "/svc/hello => /#/static/a;\n")
        # B's config differs: the store's (A's) won.
        yield waitUntil(lambda: b.routers["web"].rules.rulesText == text, what="B")
        _, etagB = yield self.rules(b)
        self.assertEqual(etagA, etagB)
        response = yield a.admin.put(
            "/admin/routers/web/rules", "/svc/hello => /#/static/b;\n", headers={"If-Match": etagA}
        )
        self.assertEqual(response.code, 200, response.text)
        yield waitUntil(
            lambda: b.routers["web"].rules.rulesText == "/svc/hello => /#/static/b;\n",
            timeout=1.0, what="B applying the change within a second",
        )
        response = yield b.admin.put(
            "/admin/routers/web/rules", "/svc/hello => /#/static/a;\n", headers={"If-Match": etagA}
        )
        self.assertEqual(response.code, 412, response.text)
        self.assertEqual('"%s"' % (response.json()["current"],), response.header("etag"))
        state = yield b.admin.get("/admin/state")
        self.assertEqual(state.json()["rulesStore"]["stale"], False)
        # Nothing was saved next to the config files.
        self.assertEqual(
            [n for n in os.listdir(a.directory) + os.listdir(b.directory) if n.endswith(".json")],
            [],
        )

    @defer.inlineCallbacks
    def test_unavailableThenBack(self):
        """
        While etcd is stopped, the store is stale, the rules stay, and a
        change is refused with 503; after a restart, changes go through.
        """
        from tests.etcd_support import waitUntil

        a = yield self.proxy()
        _, etag = yield self.rules(a)
        yield self.etcd.stop()
        yield waitUntil(lambda: a.rulesStore.stale, what="stale")
        response = yield a.admin.put("/admin/routers/web/rules", "/svc => /#/static;\n",
                                     headers={"If-Match": etag})
        self.assertEqual(response.code, 503, response.text)
        text, _ = yield self.rules(a)
        self.assertEqual(text, "/svc/hello => /#/static/a;\n")
        yield self.etcd.start()
        yield waitUntil(lambda: not a.rulesStore.stale, what="following again")
        response = yield a.admin.put("/admin/routers/web/rules", "/svc => /#/static;\n",
                                     headers={"If-Match": etag})
        self.assertEqual(response.code, 200, response.text)

    @defer.inlineCallbacks
    def test_reloadKeepsTheStoresRulesAndWritesNothing(self):
        """
        A reload whose file changes the rules keeps the store's rules (and
        says so); one that rebuilds the router carries them over. Neither
        writes to etcd.
        """
        a = yield self.proxy()
        _, etag = yield self.rules(a)
        response = yield a.admin.put(
            "/admin/routers/web/rules", "/svc/hello => /#/static/b;\n", headers={"If-Match": etag}
        )
        self.assertEqual(response.code, 200)
        before, _ = yield self.writer.range("/test/rules/")
        with open(a.path, "w") as f:
            f.write(self.config(rules="/svc/hello => /#/static/a;\n/svc/x => /#/static/a;\n"))
        summary = yield a.reload()
        self.assertEqual(summary["routers"]["updated"], ["web"])
        self.assertIn("from the rules store", summary["rules"]["web"])
        router = a.routers["web"]
        self.assertEqual(router.rules.rulesText, "/svc/hello => /#/static/b;\n")
        with open(a.path, "w") as f:
            f.write(self.config().replace("identifier: {kind: host}",
                                          "identifier: {kind: path, segments: 1}"))
        summary = yield a.reload()
        self.assertEqual(summary["routers"]["rebuilt"], ["web"])
        self.assertIsNot(a.routers["web"], router)
        self.assertEqual(a.routers["web"].rules.rulesText, "/svc/hello => /#/static/b;\n")
        after, _ = yield self.writer.range("/test/rules/")
        self.assertEqual(after, before)

    @defer.inlineCallbacks
    def test_reloadRefusedWhenTheStoresRulesDoNotFit(self):
        """
        A reload whose namers no longer fit the rules in force (the
        store's) is refused, and changes nothing; a policy changed in the
        file is not applied either.
        """
        from meshproxy.reload import ReloadError

        a = yield self.proxy()
        text = self.config().replace(
            "  - kind: static\n    prefix: /#/static\n",
            "  - kind: static\n    prefix: /#/other\n",
        ).replace("/#/static/a", "/#/other/a")
        with open(a.path, "w") as f:
            f.write(text)
        error = yield self.assertFailure(a.reload(), ReloadError)
        self.assertIn("the rules in force, from the rules store, are not valid", str(error))
        self.assertEqual(a.routers["web"].rules.rulesText, "/svc/hello => /#/static/a;\n")
        with open(a.path, "w") as f:
            f.write(self.config() + "    policy: {default: deny}\n")
        summary = yield a.reload()
        self.assertIn("not applied", summary["policies"]["web"])
        self.assertIsNone(a.routers["web"].policy)

    @defer.inlineCallbacks
    def test_readinessWaitsForTheStore(self):
        """
        Until the store was read, the process is not ready and says why.
        """
        from tests.test_discovery_etcd import Relay

        relay = Relay(self, self.etcd.clientPort)
        text = self.config().replace(self.etcd.url, relay.url)
        from meshproxy.config import parseConfig
        from meshproxy.runtime import buildServices

        runtime, services = buildServices(parseConfig(text), reactor=reactor)
        from tests.admin_support import RunningProxy

        proxy = RunningProxy(runtime, services)
        self.addCleanup(proxy.stop)
        for service in services:
            service.privilegedStartService()
        for service in services:
            service.startService()
        for listener in runtime.listeners:
            yield listener.whenBound()
        self.assertFalse(runtime.isReady())
        self.assertEqual(runtime.waitingFor(), ["rules store etcd /test/rules/"])
        yield relay.open()
        yield runtime.rulesStore.whenLoaded()
        self.assertTrue(runtime.isReady())
