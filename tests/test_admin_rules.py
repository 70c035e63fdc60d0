"""
Tests for L{meshproxy.admin.rules}: versions, optimistic concurrency,
validation, dry runs, history, rollback, persistence and the audit log.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

from twisted.internet.task import Clock
from twisted.logger import Logger, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from meshproxy.admin import versioned
from meshproxy.admin.rules import (
    InvalidRules,
    PersistError,
    RulesStore,
    StaleVersion,
    UnknownVersion,
    rulesVersion,
)
from meshproxy.routing.delegate import DelegationError, delegate, showBound
from meshproxy.routing.dtab import Dtab
from meshproxy.routing.nametree import leaves
from meshproxy.routing.path import Path

CONFIG_RULES = "/svc => /#/fs;\n"
USERS_V2 = "/svc => /#/fs;\n/svc/users => /#/fs/users-v2;\n"
START = 1700000000.0  # 2023-11-14T22:13:20Z


class FakeRulesError(ValueError):
    """
    Like C{meshproxy.http.router.RulesError}: a ValueError with a message
    and a position that may be unknown.
    """

    def __init__(self, message: str, line: int | None, column: int | None) -> None:
        super().__init__(message, line, column)
        self.message = message
        self.line = line
        self.column = column


class FakeRulesRouter:
    """
    A router with exactly the interface the admin API and the rules store
    program against, over the real dtab parser and delegation.

    @ivar setCalls: the texts given to C{setRules}, in order.
    @ivar drained: the C{(boundName, address)} pairs drained.
    @ivar explained: the keyword arguments of each C{explain} call.
    """

    namers = (Path.read("/#/fs"), Path.read("/#/static"))

    def __init__(self, name: str = "web", rulesText: str = CONFIG_RULES) -> None:
        self.name = name
        self.rulesText = rulesText
        self.dtab = Dtab.read(rulesText)
        self.names = ["/svc/users", "/svc/search"]
        self.setCalls: list[str] = []
        self.endpoints = {"/#/fs/users": {"127.0.0.1:8081", "127.0.0.1:8082"}}
        self.drained: set[tuple[str, str]] = set()
        self.explained: list[dict[str, Any]] = []
        self.explanation: dict[str, Any] = {"name": "/svc/users"}
        # The admin API edits a router's rule table: this fake is both.
        self.rules = self
        # Its access policy (a Policy, or None to let every caller in).
        self.policy: Any = None

    def state(self) -> dict[str, Any]:
        return {"protocol": "http", "boundNames": {}}

    def validateRules(self, text: str) -> Dtab:
        dtab = Dtab.read(text)
        for dentry in dtab.dentries:
            for path in leaves(dentry.dst):
                if not path.startswith(Path.read("/#")):
                    continue
                if not any(path.startswith(prefix) for prefix in self.namers):
                    raise FakeRulesError(f"unknown namer prefix in {path}", None, None)
        return dtab

    def setRules(self, dtab: Dtab, text: str) -> None:
        self.dtab = dtab
        self.rulesText = text
        self.setCalls.append(text)

    def recentNames(self) -> list[str]:
        return list(self.names)

    def describe(self, dtab: Dtab, name: str) -> str:
        try:
            return showBound(delegate(dtab, Path.read(name), self.namers))
        except DelegationError as e:
            return f"error: {e}"

    def explain(self, *, name: str | None = None, host: str | None = None,
                path: str | None = None, **caller: str) -> dict[str, Any]:
        # caller, peer and method only when the API was given them.
        self.explained.append({"name": name, "host": host, "path": path, **caller})
        if name is not None and not name.startswith("/"):
            raise ValueError(f"a name starts with /, got {name!r}")
        return self.explanation

    def drain(self, boundName: str, address: str) -> None:
        if address not in self.endpoints.get(boundName, ()):
            raise KeyError(f"no endpoint {address} in {boundName}")
        self.drained.add((boundName, address))

    def undrain(self, boundName: str, address: str) -> None:
        if address not in self.endpoints.get(boundName, ()):
            raise KeyError(f"no endpoint {address} in {boundName}")
        self.drained.discard((boundName, address))


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
    L{rulesVersion}.
    """

    def test_first16HexOfSha256(self) -> None:
        text = "/svc => /#/fs;\n# é\n"
        self.assertEqual(
            rulesVersion(text), hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
        )

    def test_anyChangeChangesTheVersion(self) -> None:
        self.assertNotEqual(rulesVersion("/svc => /#/fs;"), rulesVersion("/svc => /#/fs; "))


class _StoreMixin:
    stateDir: str | None = None

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(START)
        self.router = FakeRulesRouter()
        self.store = self.makeStore(self.router)

    def makeStore(self, router: FakeRulesRouter, **kwargs: Any) -> RulesStore:
        return RulesStore(router, stateDir=self.stateDir, clock=self.clock, **kwargs)


class ReplaceTests(_StoreMixin, SynchronousTestCase):
    """
    L{RulesStore.current} and L{RulesStore.replace}.
    """

    def test_currentIsTheRoutersRules(self) -> None:
        self.assertEqual(self.store.current(), (CONFIG_RULES, rulesVersion(CONFIG_RULES)))

    def test_replaceSwapsAndReturnsBothVersions(self) -> None:
        old = rulesVersion(CONFIG_RULES)
        result = self.store.replace(USERS_V2, old, "token")
        self.assertEqual(result, (old, rulesVersion(USERS_V2)))
        self.assertEqual(self.router.setCalls, [USERS_V2])
        self.assertEqual(self.router.dtab, Dtab.read(USERS_V2))
        self.assertEqual(self.store.current(), (USERS_V2, rulesVersion(USERS_V2)))

    def test_staleVersionRefusedWithTheCurrentOne(self) -> None:
        e = self.assertRaises(
            StaleVersion, self.store.replace, USERS_V2, "0123456789abcdef", "token"
        )
        self.assertEqual(e.current, rulesVersion(CONFIG_RULES))
        self.assertEqual(self.router.setCalls, [])

    def test_twoChangesFromTheSameVersionOneWins(self) -> None:
        base = rulesVersion(CONFIG_RULES)
        self.store.replace(USERS_V2, base, "a")
        e = self.assertRaises(
            StaleVersion, self.store.replace, "/svc => /#/static;\n", base, "b"
        )
        self.assertEqual(e.current, rulesVersion(USERS_V2))
        self.assertEqual(self.router.rulesText, USERS_V2)

    def test_starAndSetsOfVersions(self) -> None:
        self.store.replace(USERS_V2, "*", "a")
        self.store.replace(CONFIG_RULES, {"nope", rulesVersion(USERS_V2)}, "a")
        self.assertRaises(StaleVersion, self.store.replace, USERS_V2, frozenset(), "a")
        self.assertEqual(self.router.setCalls, [USERS_V2, CONFIG_RULES])

    def test_syntaxErrorHasLineAndColumn(self) -> None:
        e = self.assertRaises(
            InvalidRules, self.store.replace,
            "/svc => /#/fs;\n/svc/x =>> /#/fs/x;\n", rulesVersion(CONFIG_RULES), "a",
        )
        self.assertEqual((e.line, e.column), (2, 10))
        self.assertTrue(e.message)
        self.assertNotIn("line", e.message)
        self.assertEqual(self.router.setCalls, [])

    def test_unknownNamerRefusedWithoutPosition(self) -> None:
        e = self.assertRaises(
            InvalidRules, self.store.replace,
            "/svc => /#/nope;\n", rulesVersion(CONFIG_RULES), "a",
        )
        self.assertIn("unknown namer prefix", e.message)
        self.assertEqual((e.line, e.column), (None, None))
        self.assertEqual(str(e), e.message)
        self.assertEqual(self.router.setCalls, [])

    def test_staleIsCheckedBeforeValidity(self) -> None:
        self.assertRaises(StaleVersion, self.store.replace, "=>", "stale", "a")

    def test_sameTextChangesNothing(self) -> None:
        audit = capture(self, "_audit")
        v = rulesVersion(CONFIG_RULES)
        self.assertEqual(self.store.replace(CONFIG_RULES, v, "a"), (v, v))
        self.assertEqual(self.router.setCalls, [])
        self.assertEqual(len(self.store.history()), 1)
        self.assertEqual(audit, [])


class HistoryTests(_StoreMixin, SynchronousTestCase):
    """
    L{RulesStore.history} and L{RulesStore.rollback}.
    """

    def test_historyStartsWithTheConfigRules(self) -> None:
        self.assertEqual(self.store.history(), [{
            "version": rulesVersion(CONFIG_RULES),
            "time": "2023-11-14T22:13:20.000Z",
            "who": "config",
            "text": CONFIG_RULES,
        }])

    def test_newestFirstWithWhoAndTime(self) -> None:
        self.clock.advance(1.5)
        self.store.replace(USERS_V2, "*", "127.0.0.1")
        self.clock.advance(60)
        self.store.replace("/svc => /#/static;\n", "*", "token")
        history = self.store.history()
        self.assertEqual(
            [(h["who"], h["time"], h["text"]) for h in history],
            [
                ("token", "2023-11-14T22:14:21.500Z", "/svc => /#/static;\n"),
                ("127.0.0.1", "2023-11-14T22:13:21.500Z", USERS_V2),
                ("config", "2023-11-14T22:13:20.000Z", CONFIG_RULES),
            ],
        )
        self.assertEqual(
            [h["version"] for h in history], [rulesVersion(h["text"]) for h in history]
        )

    def test_historyIsBounded(self) -> None:
        store = self.makeStore(self.router, historySize=3)
        for i in range(5):
            store.replace(f"/svc => /#/fs; # {i}\n", "*", "a")
        texts = [h["text"] for h in store.history()]
        self.assertEqual(texts, [f"/svc => /#/fs; # {i}\n" for i in (4, 3, 2)])

    def test_historyIsACopy(self) -> None:
        self.store.history()[0]["text"] = "mangled"
        self.assertEqual(self.store.history()[0]["text"], CONFIG_RULES)

    def test_badHistorySizeRefused(self) -> None:
        self.assertRaises(ValueError, self.makeStore, self.router, historySize=0)

    def test_rulesSetOutsideTheStoreJoinTheHistory(self) -> None:
        self.router.rulesText = USERS_V2
        self.assertEqual(
            [(h["who"], h["text"]) for h in self.store.history()],
            [("config", USERS_V2), ("config", CONFIG_RULES)],
        )

    def test_rollbackAppliesAnOldVersionAsANewChange(self) -> None:
        configVersion = rulesVersion(CONFIG_RULES)
        self.store.replace(USERS_V2, "*", "a")
        self.clock.advance(10)
        result = self.store.rollback(configVersion, rulesVersion(USERS_V2), "b")
        self.assertEqual(result, (rulesVersion(USERS_V2), configVersion))
        self.assertEqual(self.router.rulesText, CONFIG_RULES)
        self.assertEqual(
            [(h["who"], h["version"]) for h in self.store.history()],
            [("b", configVersion), ("a", rulesVersion(USERS_V2)), ("config", configVersion)],
        )

    def test_rollbackToAnUnknownVersion(self) -> None:
        e = self.assertRaises(UnknownVersion, self.store.rollback, "feedfeedfeedfeed", "*", "a")
        self.assertIn("feedfeedfeedfeed", str(e))
        self.assertEqual(self.router.setCalls, [])

    def test_rollbackNeedsTheCurrentVersion(self) -> None:
        self.store.replace(USERS_V2, "*", "a")
        self.assertRaises(
            StaleVersion, self.store.rollback, rulesVersion(CONFIG_RULES),
            rulesVersion(CONFIG_RULES), "b",
        )
        self.assertEqual(self.router.rulesText, USERS_V2)


class DryRunTests(_StoreMixin, SynchronousTestCase):
    """
    L{RulesStore.dryRun}.
    """

    def test_showsOnlyTheNamesThatMove(self) -> None:
        result = self.store.dryRun(USERS_V2)
        self.assertEqual(result, {
            "valid": True,
            "checked": 2,
            "changes": [{
                "name": "/svc/users",
                "old": "/#/fs/users",
                "new": "/#/fs/users-v2 | /#/fs/users",
            }],
        })
        self.assertEqual(self.router.setCalls, [])
        self.assertEqual(self.router.rulesText, CONFIG_RULES)

    def test_noRecentTraffic(self) -> None:
        self.router.names = []
        self.assertEqual(
            self.store.dryRun(USERS_V2), {"valid": True, "checked": 0, "changes": []}
        )

    def test_invalidRulesRefused(self) -> None:
        e = self.assertRaises(InvalidRules, self.store.dryRun, "/svc => ;")
        self.assertEqual(e.line, 1)

    def test_aFailingDescriptionDoesNotHideTheOthers(self) -> None:
        def describe(dtab: Dtab, name: str) -> str:
            if name == "/svc/search":
                raise RuntimeError("boom")
            return FakeRulesRouter.describe(self.router, dtab, name)

        self.router.describe = describe
        changes = self.store.dryRun(USERS_V2)["changes"]
        self.assertEqual([c["name"] for c in changes], ["/svc/users"])

    def test_loopingRulesShowTheError(self) -> None:
        changes = self.store.dryRun("/svc => /svc/a;\n")["changes"]
        self.assertEqual(len(changes), 2)
        self.assertTrue(all(c["new"].startswith("error:") for c in changes))


class AuditTests(_StoreMixin, SynchronousTestCase):
    """
    Each accepted change is logged with who, when, both versions and a diff.
    """

    def test_auditLineHasKeywordFields(self) -> None:
        audit = capture(self, "_audit")
        self.store.replace(USERS_V2, "*", "127.0.0.1")
        [event] = audit
        self.assertEqual(event["log_namespace"], "meshproxy.admin.audit")
        self.assertEqual(event["router"], "web")
        self.assertEqual(event["who"], "127.0.0.1")
        self.assertEqual(event["when"], "2023-11-14T22:13:20.000Z")
        self.assertEqual(event["old"], rulesVersion(CONFIG_RULES))
        self.assertEqual(event["new"], rulesVersion(USERS_V2))
        diff = event["diff"].splitlines()
        self.assertEqual(diff[0], "--- web@" + rulesVersion(CONFIG_RULES))
        self.assertEqual(diff[1], "+++ web@" + rulesVersion(USERS_V2))
        self.assertIn("+/svc/users => /#/fs/users-v2;", diff)
        self.assertNotIn("-/svc => /#/fs;", diff)

    def test_refusedChangesAreNotAudited(self) -> None:
        audit = capture(self, "_audit")
        self.assertRaises(StaleVersion, self.store.replace, USERS_V2, "x", "a")
        self.assertRaises(InvalidRules, self.store.replace, "=>", "*", "a")
        self.assertEqual(audit, [])


class PersistenceTests(_StoreMixin, SynchronousTestCase):
    """
    Accepted changes are written to the state directory and restored by
    L{RulesStore.load}.
    """

    def setUp(self) -> None:
        self.stateDir = self.mktemp()
        os.mkdir(self.stateDir)
        super().setUp()

    @property
    def statePath(self) -> str:
        return os.path.join(self.stateDir, "rules-web.json")

    def restart(self, configRules: str = CONFIG_RULES) -> tuple[FakeRulesRouter, RulesStore, bool]:
        router = FakeRulesRouter(rulesText=configRules)
        store = self.makeStore(router)
        return router, store, store.load()

    def test_nothingWrittenUntilAChange(self) -> None:
        self.assertEqual(os.listdir(self.stateDir), [])

    def test_changeIsWrittenAndRestored(self) -> None:
        self.store.replace(USERS_V2, "*", "token")
        self.assertEqual(os.listdir(self.stateDir), ["rules-web.json"])
        router, store, restored = self.restart()
        self.assertTrue(restored)
        self.assertEqual(router.rulesText, USERS_V2)
        self.assertEqual(router.setCalls, [USERS_V2])
        self.assertEqual(store.history(), self.store.history())

    def test_stateFileContents(self) -> None:
        self.store.replace(USERS_V2, "*", "token")
        with open(self.statePath) as f:
            state = json.load(f)
        self.assertEqual(state["format"], 1)
        self.assertEqual(state["router"], "web")
        self.assertEqual(state["text"], USERS_V2)
        self.assertEqual(state["version"], rulesVersion(USERS_V2))
        self.assertEqual(state["configVersion"], rulesVersion(CONFIG_RULES))
        self.assertEqual(state["history"], self.store.history())

    def test_writeIsSyncedAndRenamed(self) -> None:
        synced: list[int] = []
        renamed: list[tuple[str, str]] = []
        realFsync, realReplace = os.fsync, os.replace

        def fsync(fd: int) -> None:
            synced.append(fd)
            realFsync(fd)

        def replace(src: str, dst: str) -> None:
            renamed.append((src, dst))
            # The data was synced before the rename.
            self.assertEqual(len(synced), 1)
            realReplace(src, dst)

        self.patch(versioned.os, "fsync", fsync)
        self.patch(versioned.os, "replace", replace)
        self.store.replace(USERS_V2, "*", "token")
        [(src, dst)] = renamed
        self.assertEqual(os.path.dirname(src), os.path.abspath(self.stateDir))
        self.assertTrue(os.path.basename(src).startswith("."))
        self.assertEqual(os.path.abspath(dst), os.path.abspath(self.statePath))
        # The file, then the directory.
        self.assertEqual(len(synced), 2)

    def test_failedWriteChangesNothing(self) -> None:
        self.store.replace(USERS_V2, "*", "token")

        def replace(src: str, dst: str) -> None:
            raise OSError(28, "No space left on device")

        self.patch(versioned.os, "replace", replace)
        e = self.assertRaises(PersistError, self.store.replace, CONFIG_RULES, "*", "token")
        self.assertIn("No space left on device", str(e))
        self.assertEqual(self.router.rulesText, USERS_V2)
        self.assertEqual(len(self.store.history()), 2)
        self.assertEqual(os.listdir(self.stateDir), ["rules-web.json"])
        _, _, restored = self.restart()
        self.assertTrue(restored)

    def test_missingStateDirIsCreated(self) -> None:
        nested = os.path.join(self.stateDir, "a", "b")
        store = RulesStore(self.router, stateDir=nested, clock=self.clock)
        store.replace(USERS_V2, "*", "token")
        self.assertEqual(os.listdir(nested), ["rules-web.json"])

    def test_noStateDirWritesNothing(self) -> None:
        store = RulesStore(self.router, stateDir=None, clock=self.clock)
        self.assertIsNone(store.path)
        store.replace(USERS_V2, "*", "token")
        self.assertFalse(store.load())
        self.assertEqual(os.listdir(self.stateDir), [])

    def test_eachRouterHasItsOwnFile(self) -> None:
        other = FakeRulesRouter(name="api")
        RulesStore(other, stateDir=self.stateDir, clock=self.clock).replace(USERS_V2, "*", "a")
        self.assertEqual(os.listdir(self.stateDir), ["rules-api.json"])
        _, _, restored = self.restart()
        self.assertFalse(restored)

    def test_noSavedRulesKeepsTheConfig(self) -> None:
        log = capture(self, "_log")
        router, store, restored = self.restart()
        self.assertFalse(restored)
        self.assertEqual(router.setCalls, [])
        self.assertEqual(router.rulesText, CONFIG_RULES)
        self.assertIn("no saved rules", formatEvent(log[-1]))

    def assertKeepsConfig(self, reason: str) -> tuple[FakeRulesRouter, RulesStore]:
        log = capture(self, "_log")
        router, store, restored = self.restart()
        self.assertFalse(restored)
        self.assertEqual(router.setCalls, [])
        self.assertEqual(router.rulesText, CONFIG_RULES)
        self.assertEqual(store.history()[0]["text"], CONFIG_RULES)
        self.assertIn(reason, formatEvent(log[-1]))
        return router, store

    def test_corruptFileKeepsTheConfig(self) -> None:
        with open(self.statePath, "wb") as f:
            f.write(b'{"format": 1, "router": "web", "text": "/svc => /#/st')
        self.assertKeepsConfig("unreadable")

    def test_unreadableFileKeepsTheConfig(self) -> None:
        os.mkdir(self.statePath)
        self.assertKeepsConfig("cannot read")

    def test_otherRoutersFileKeepsTheConfig(self) -> None:
        RulesStore(FakeRulesRouter(name="api"), stateDir=self.stateDir, clock=self.clock
                   ).replace(USERS_V2, "*", "a")
        os.rename(os.path.join(self.stateDir, "rules-api.json"), self.statePath)
        self.assertKeepsConfig("unreadable")

    def test_tamperedTextKeepsTheConfig(self) -> None:
        self.store.replace(USERS_V2, "*", "token")
        with open(self.statePath) as f:
            state = json.load(f)
        state["text"] = "/svc => /#/static;\n"
        with open(self.statePath, "w") as f:
            json.dump(state, f)
        self.assertKeepsConfig("unreadable")

    def test_savedRulesNoLongerValidKeepTheConfigAndTheHistory(self) -> None:
        self.store.replace("/svc => /#/static;\n", "*", "token")
        self.patch(FakeRulesRouter, "namers", (Path.read("/#/fs"),))
        router, store = self.assertKeepsConfig("no longer valid")
        self.assertEqual(
            [h["text"] for h in store.history()],
            [CONFIG_RULES, "/svc => /#/static;\n", CONFIG_RULES],
        )

    def test_badHistoryEntriesAreDropped(self) -> None:
        self.store.replace(USERS_V2, "*", "token")
        with open(self.statePath) as f:
            state = json.load(f)
        state["history"].append({"version": "x", "time": "t", "who": "w", "text": "t"})
        state["history"].append("nonsense")
        with open(self.statePath, "w") as f:
            json.dump(state, f)
        _, store, restored = self.restart()
        self.assertTrue(restored)
        self.assertEqual(store.history(), self.store.history())

    def test_changedConfigIsReportedButTheSavedRulesWin(self) -> None:
        self.store.replace(USERS_V2, "*", "token")
        log = capture(self, "_log")
        router, _, restored = self.restart(configRules="/svc => /#/static;\n")
        self.assertTrue(restored)
        self.assertEqual(router.rulesText, USERS_V2)
        self.assertTrue(any("config's rules" in formatEvent(e) and "changed" in formatEvent(e)
                            for e in log))

    def test_restoredStoreKeepsRecording(self) -> None:
        self.store.replace(USERS_V2, "*", "a")
        router, store, _ = self.restart()
        store.rollback(rulesVersion(CONFIG_RULES), rulesVersion(USERS_V2), "b")
        _, again, restored = self.restart()
        self.assertTrue(restored)
        self.assertEqual(
            [h["who"] for h in again.history()], ["b", "a", "config"]
        )
