"""
The admin API of a running proxy: C{buildServices} from a config text on a
memory network and a fake clock (L{tests.memory_support}), treq against the
admin site, raw clients through the proxy, and upstreams that say who they
are. Rule changes under traffic, optimistic concurrency, refused changes,
persistence across restarts, dry runs, explain, drain, the token, and the
shutdown call.

What only a real port shows (browser-made requests and curl against the
admin listener, a shutdown closing the listeners) stays in
L{tests.test_admin_integration}.
"""

import itertools
import json
import os

from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase

from meshproxy.admin.rules import rulesVersion
from tests.admin_support import HELLO_A, HELLO_A_WORLD_B, HELLO_B, RULES, TOKEN, etagOf, makeConfig
from tests.memory_support import (
    Instance,
    MemoryAdminClient,
    MemoryNetwork,
    MemoryProxy,
    delayedHandler,
    resultOf,
)
from tests.support import BackendFactory, RawClient, okHandler


class AdminTestCase(SynchronousTestCase):
    """
    Starts labelled upstreams and a proxy in front of them, on a memory
    network.
    """

    def setUp(self):
        self.network = MemoryNetwork()

    def backends(self, *labels, handler=None):
        """
        Start one upstream per label; each answers 200 with
        C{X-Upstream: <label>} (unless C{handler} is given).

        @return: C{{label: (factory, port)}}.
        """
        result = {}
        for label in labels:
            instance = Instance(self.network, handler or okHandler(label.encode("ascii")))
            port = instance.start()
            result[label] = (instance.factory, port)
        return result

    def start(self, configText, token=None, configPath=None):
        """
        Run a proxy from C{configText}, with an admin client on it.

        @return: C{(proxy, admin)}.
        """
        proxy = MemoryProxy(self, configText, network=self.network, configPath=configPath)
        admin = MemoryAdminClient(self.network, proxy.adminPort, token=token)
        self.addCleanup(admin.close)
        return proxy, admin

    def fetch(self, port, host, count=1):
        """
        Send C{count} sequential GETs with C{Host: host} on one keep-alive
        connection through the proxy.

        @return: the responses.
        """
        client = RawClient()
        self.network.connectClient(port, client)
        for i in range(count):
            client.transport.write(b"GET /%d HTTP/1.1\r\nHost: %s\r\n\r\n" % (i, host))
            self.network.runUntil(
                lambda i=i: len(client.responses) > i or client.closed.called, 30, "an answer"
            )
            self.assertEqual(len(client.responses), i + 1, "connection closed early")
        client.transport.loseConnection()
        self.network.flush()
        self.assertTrue(client.closed.called)
        return client.responses

    def upstreamsOf(self, port, host, count=1):
        """
        The C{X-Upstream} of C{count} GETs, all asserted to be 200.
        """
        responses = self.fetch(port, host, count)
        self.assertEqual([r.status for r in responses], [200] * count)
        return [r.header(b"x-upstream").decode("ascii") for r in responses]

    def assertRules(self, admin, text):
        """
        Assert that the rules in force are C{text}, with its ETag.
        """
        response = admin.get(RULES)
        self.assertEqual(response.code, 200)
        self.assertEqual(response.text, text)
        self.assertEqual(response.header("etag"), etagOf(text))
        self.assertEqual(response.header("content-type"), "text/plain; charset=utf-8")


class LiveChangeTests(AdminTestCase):
    """
    A rule change under traffic switches routing whole, at one point.
    """

    def test_cleanSwitchUnderConcurrentTraffic(self):
        """
        Ten keep-alive connections send GETs for C{hello} in a loop; after
        150 answers the rules are replaced to send C{hello} to B instead of
        A. Every request gets a 200; everything answered before the PUT was
        sent came from A, everything sent after its answer from B; on each
        connection the upstreams go A…A B…B; and no request sent after a B
        answer arrived went to A (so no request was routed by the old table
        once the new one had been used).
        """
        backends = self.backends("A", "B")
        proxy, admin = self.start(
            makeConfig({"a": [backends["A"][1]], "b": [backends["B"][1]]})
        )
        before = admin.get(RULES)
        self.assertEqual(before.header("etag"), etagOf(HELLO_A))

        ticks = itertools.count()
        records = []  # (connection, sentAt, answeredAt, status, upstream)
        state = {"answered": 0, "afterPut": 0, "sent": 0}
        put = {}
        putDone = defer.Deferred()
        switchAt, afterPutWanted, cap = 150, 100, 2000

        @defer.inlineCallbacks
        def change():
            put["sentAt"] = next(ticks)
            response = yield admin.send(
                "PUT", RULES, HELLO_B, headers={"If-Match": before.header("etag")}
            )
            put["answeredAt"] = next(ticks)
            put["response"] = response
            putDone.callback(None)

        @defer.inlineCallbacks
        def worker(n):
            client = proxy.connect()
            while state["afterPut"] < afterPutWanted and state["sent"] < cap:
                state["sent"] += 1
                sentAt = next(ticks)
                if "answeredAt" in put:
                    state["afterPut"] += 1
                client.transport.write(b"GET /%d HTTP/1.1\r\nHost: hello\r\n\r\n" % (sentAt,))
                count = len(client.responses) + 1
                yield client.waitFor(count)
                answeredAt = next(ticks)
                self.assertEqual(len(client.responses), count, "connection closed early")
                response = client.responses[-1]
                upstream = response.header(b"x-upstream")
                records.append((n, sentAt, answeredAt, response.status, upstream))
                state["answered"] += 1
                if state["answered"] == switchAt:
                    change()
            client.transport.loseConnection()
            yield client.closed

        # The ten connections and the PUT interleave as the network moves
        # their bytes, read by read.
        workers = defer.gatherResults([worker(n) for n in range(10)], consumeErrors=True)
        self.network.flush()
        resultOf(workers, "the workers")
        resultOf(putDone, "the PUT")

        self.assertLess(state["sent"], cap, "the PUT never finished under traffic")
        self.assertEqual(put["response"].code, 200, put["response"])
        self.assertEqual(
            put["response"].json(),
            {"version": rulesVersion(HELLO_B), "previous": rulesVersion(HELLO_A)},
        )
        self.assertEqual(put["response"].header("etag"), etagOf(HELLO_B))

        self.assertEqual({status for _, _, _, status, _ in records}, {200})
        self.assertEqual({up for _, _, _, _, up in records}, {b"A", b"B"})
        beforePut = [up for _, _, answered, _, up in records if answered < put["sentAt"]]
        afterPut = [up for _, sent, _, _, up in records if sent > put["answeredAt"]]
        self.assertGreaterEqual(len(beforePut), switchAt)
        self.assertGreaterEqual(len(afterPut), afterPutWanted)
        self.assertEqual(set(beforePut), {b"A"})
        self.assertEqual(set(afterPut), {b"B"})
        for n in range(10):
            ups = [up for conn, _, _, _, up in sorted(records, key=lambda r: r[1]) if conn == n]
            switched = ups.index(b"B") if b"B" in ups else len(ups)
            self.assertEqual(ups, [b"A"] * switched + [b"B"] * (len(ups) - switched))
        firstB = min(answered for _, _, answered, _, up in records if up == b"B")
        lastA = max(sent for _, sent, _, _, up in records if up == b"A")
        self.assertLess(lastA, firstB)
        # Every answer came from the upstream it names.
        self.assertEqual(
            len(backends["A"][0].requests), sum(1 for r in records if r[4] == b"A")
        )
        self.assertEqual(
            len(backends["B"][0].requests), sum(1 for r in records if r[4] == b"B")
        )

        self.assertRules(admin, HELLO_B)
        state = admin.get("/admin/state")
        self.assertEqual(state.json()["routers"]["web"]["rules"], "/svc/hello=>/#/static/b")


    def test_exactSwitchOnOneConnection(self):
        """
        300 GETs one after the other on one keep-alive connection, the
        rules replaced between the 150th answer and the 151st request: the
        first 150 went to A, the last 150 to B.
        """
        backends = self.backends("A", "B")
        proxy, admin = self.start(
            makeConfig({"a": [backends["A"][1]], "b": [backends["B"][1]]})
        )
        client = proxy.connect()
        for i in range(300):
            if i == 150:
                response = admin.put(
                    RULES, HELLO_B, headers={"If-Match": etagOf(HELLO_A)}
                )
                self.assertEqual(response.code, 200)
            client.transport.write(b"GET /%d HTTP/1.1\r\nHost: hello\r\n\r\n" % (i,))
            self.network.flush()
            self.assertEqual(len(client.responses), i + 1)
        self.assertEqual([r.status for r in client.responses], [200] * 300)
        self.assertEqual(
            [r.header(b"x-upstream") for r in client.responses], [b"A"] * 150 + [b"B"] * 150
        )
        self.assertEqual(len(backends["A"][0].connections), 1, "A kept one pooled connection")


class ConcurrencyTests(AdminTestCase):
    """
    Optimistic concurrency on the rules: If-Match decides.
    """

    def test_concurrentPutsWithTheSameIfMatchOneWins(self):
        """
        Two PUTs sent at once with the same If-Match: one gets 200, the
        other 412 with the winner's version in its ETag and body, and the
        winner's rules are in force.
        """
        backends = self.backends("A", "B")
        proxy, admin = self.start(
            makeConfig({"a": [backends["A"][1]], "b": [backends["B"][1]]})
        )
        texts = [HELLO_B, HELLO_A_WORLD_B]
        both = defer.gatherResults(
            [
                admin.send("PUT", RULES, text, headers={"If-Match": etagOf(HELLO_A)})
                for text in texts
            ],
            consumeErrors=True,
        )
        self.network.flush()
        first, second = resultOf(both, "both PUTs")
        self.assertEqual(sorted([first.code, second.code]), [200, 412])
        winner, loser = (0, 1) if first.code == 200 else (1, 0)
        won, lost = (first, second)[winner], (first, second)[loser]
        self.assertEqual(won.header("etag"), etagOf(texts[winner]))
        self.assertEqual(lost.header("etag"), etagOf(texts[winner]))
        self.assertEqual(lost.json()["current"], rulesVersion(texts[winner]))
        self.assertEqual(lost.header("content-type"), "application/json")
        self.assertRules(admin, texts[winner])
        history = admin.get(RULES + "/history")
        self.assertEqual(
            [entry["version"] for entry in history.json()],
            [rulesVersion(texts[winner]), rulesVersion(HELLO_A)],
        )

    def test_manyConcurrentPutsExactlyOneWins(self):
        """
        Ten PUTs of ten different texts, all based on the same version:
        exactly one is accepted.
        """
        backends = self.backends("A")
        proxy, admin = self.start(makeConfig({"a": [backends["A"][1]]}))
        texts = [HELLO_A + "/svc/x%d => /#/static/a;\n" % (i,) for i in range(10)]
        sent = defer.gatherResults(
            [
                admin.send("PUT", RULES, text, headers={"If-Match": etagOf(HELLO_A)})
                for text in texts
            ],
            consumeErrors=True,
        )
        self.network.flush()
        responses = resultOf(sent, "the ten PUTs")
        codes = [r.code for r in responses]
        self.assertEqual(sorted(codes), [200] + [412] * 9)
        winner = texts[codes.index(200)]
        for response in responses:
            self.assertEqual(response.header("etag"), etagOf(winner))
        self.assertRules(admin, winner)

    def test_staleIfMatchRefusedAndNothingChanges(self):
        """
        A PUT based on a version that is not in force gets 412 with the
        current ETag; a weak tag never matches; C{*} matches anything.
        """
        backends = self.backends("A", "B")
        proxy, admin = self.start(
            makeConfig({"a": [backends["A"][1]], "b": [backends["B"][1]]})
        )
        for ifMatch in ['"0123456789abcdef"', "W/" + etagOf(HELLO_A)]:
            response = admin.put(RULES, HELLO_B, headers={"If-Match": ifMatch})
            self.assertEqual(response.code, 412, ifMatch)
            self.assertEqual(response.header("etag"), etagOf(HELLO_A))
        self.assertRules(admin, HELLO_A)
        response = admin.put(RULES, HELLO_B, headers={"If-Match": "*"})
        self.assertEqual(response.code, 200)
        ups = self.upstreamsOf(proxy.proxyPort, b"hello", 3)
        self.assertEqual(ups, ["B"] * 3)
        # A list of tags matches when any of them is in force.
        response = admin.put(
            RULES,
            HELLO_A,
            headers={"If-Match": '"0123456789abcdef", %s' % (etagOf(HELLO_B),)},
        )
        self.assertEqual(response.code, 200)
        self.assertRules(admin, HELLO_A)


class RefusedChangeTests(AdminTestCase):
    """
    Refused changes leave the rules, the routing and the state file alone.
    """

    def setUp(self):
        AdminTestCase.setUp(self)
        self.stateDir = os.path.abspath(self.mktemp())
        backends = self.backends("A", "B")
        self.proxy, self.admin = self.start(
            makeConfig(
                {"a": [backends["A"][1]], "b": [backends["B"][1]]},
                admin={"stateDir": self.stateDir},
            )
        )

    def assertUnchanged(self):
        self.assertRules(self.admin, HELLO_A)
        ups = self.upstreamsOf(self.proxy.proxyPort, b"hello", 2)
        self.assertEqual(ups, ["A", "A"])
        history = self.admin.get(RULES + "/history")
        self.assertEqual(
            [entry["version"] for entry in history.json()], [rulesVersion(HELLO_A)]
        )
        self.assertFalse(os.path.exists(os.path.join(self.stateDir, "rules-web.json")))

    def test_putWithoutIfMatchIs428(self):
        """
        A PUT without If-Match is refused with 428 and a JSON reason.
        """
        response = self.admin.put(RULES, HELLO_B)
        self.assertEqual(response.code, 428)
        self.assertEqual(response.header("content-type"), "application/json")
        self.assertIn("If-Match", response.json()["error"])
        self.assertTrue(response.body.endswith(b"\n"))
        self.assertUnchanged()

    def test_syntaxErrorIs400WithLineAndColumn(self):
        """
        Rules that do not parse are refused with 400, the line and column
        of the problem.
        """
        response = self.admin.put(
            RULES,
            "/svc/hello => /#/static/b;\n/svc/world =>> /#/static/b;\n",
            headers={"If-Match": etagOf(HELLO_A)},
        )
        self.assertEqual(response.code, 400)
        body = response.json()
        self.assertEqual((body["line"], body["column"]), (2, 14))
        self.assertIn(">", body["error"])
        self.assertUnchanged()

    def test_unknownNamerPrefixIs400(self):
        """
        Rules leading to a C{/#/} prefix no namer owns are refused with 400
        naming the prefix and where it is.
        """
        response = self.admin.put(
            RULES,
            "/svc/hello => /#/nope/b;\n",
            headers={"If-Match": etagOf(HELLO_A)},
        )
        self.assertEqual(response.code, 400)
        body = response.json()
        self.assertIn("/#/nope", body["error"])
        self.assertEqual((body["line"], body["column"]), (1, 15))
        self.assertUnchanged()

    def test_emptyBodyIs400(self):
        """
        A PUT with an empty body (a forgotten body, most likely) is refused.
        """
        response = self.admin.put(RULES, b"", headers={"If-Match": etagOf(HELLO_A)})
        self.assertEqual(response.code, 400)
        self.assertUnchanged()

    def test_sameTextChangesNothing(self):
        """
        A PUT of the rules in force is a 200 naming the same version as
        both old and new, and records and writes nothing.
        """
        response = self.admin.put(RULES, HELLO_A, headers={"If-Match": etagOf(HELLO_A)})
        self.assertEqual(response.code, 200)
        self.assertEqual(
            response.json(),
            {"version": rulesVersion(HELLO_A), "previous": rulesVersion(HELLO_A)},
        )
        self.assertUnchanged()

    def test_tooLargeBodyIs413(self):
        """
        Rules over 256 KiB are refused with 413, before any check.
        """
        text = HELLO_B + "# " + "x" * (256 * 1024) + "\n"
        response = self.admin.put(RULES, text, headers={"If-Match": etagOf(HELLO_A)})
        self.assertEqual(response.code, 413)
        self.assertUnchanged()

    def test_headAnswersWithTheETag(self):
        """
        HEAD on the rules answers like GET, without the body.
        """
        response = self.admin.request("HEAD", RULES)
        self.assertEqual(response.code, 200)
        self.assertEqual(response.header("etag"), etagOf(HELLO_A))
        self.assertEqual(response.body, b"")

    def test_unknownRouterIs404(self):
        """
        The rules of a router that does not exist are a 404, read or write.
        """
        response = self.admin.get("/admin/routers/nope/rules")
        self.assertEqual(response.code, 404)
        response = self.admin.put(
            "/admin/routers/nope/rules", HELLO_B, headers={"If-Match": "*"}
        )
        self.assertEqual(response.code, 404)
        self.assertUnchanged()


class PersistenceTests(AdminTestCase):
    """
    Rules changed through the admin API survive a restart.
    """

    def test_rulesSurviveRestartAndRollBack(self):
        """
        With C{admin.stateDir} set, a changed rule set is in force after the
        proxy is stopped and a new one is built from the same config; the
        history lists both versions, and rolling back to the config's
        version routes by it again.
        """
        stateDir = os.path.abspath(self.mktemp())
        backends = self.backends("A", "B")
        config = makeConfig(
            {"a": [backends["A"][1]], "b": [backends["B"][1]]}, admin={"stateDir": stateDir}
        )
        first, admin = self.start(config)
        ups = self.upstreamsOf(first.proxyPort, b"hello", 2)
        self.assertEqual(ups, ["A", "A"])
        response = admin.put(RULES, HELLO_B, headers={"If-Match": etagOf(HELLO_A)})
        self.assertEqual(response.code, 200)
        self.assertTrue(os.path.isfile(os.path.join(stateDir, "rules-web.json")))
        first.stop()

        second, admin = self.start(config)
        self.assertRules(admin, HELLO_B)
        ups = self.upstreamsOf(second.proxyPort, b"hello", 3)
        self.assertEqual(ups, ["B"] * 3)

        history = admin.get(RULES + "/history")
        self.assertEqual(history.code, 200)
        entries = history.json()
        self.assertEqual(
            [(e["version"], e["text"]) for e in entries],
            [(rulesVersion(HELLO_B), HELLO_B), (rulesVersion(HELLO_A), HELLO_A)],
        )
        self.assertEqual(entries[0]["who"], "127.0.0.1")
        self.assertEqual(entries[1]["who"], "config")

        response = admin.post(
            RULES + "/rollback",
            {"version": rulesVersion(HELLO_A)},
            headers={"If-Match": etagOf(HELLO_B)},
        )
        self.assertEqual(response.code, 200, response)
        self.assertEqual(
            response.json(),
            {"version": rulesVersion(HELLO_A), "previous": rulesVersion(HELLO_B)},
        )
        self.assertRules(admin, HELLO_A)
        ups = self.upstreamsOf(second.proxyPort, b"hello", 3)
        self.assertEqual(ups, ["A"] * 3)
        second.stop()

        # The rollback is itself persisted.
        third, admin = self.start(config)
        self.assertRules(admin, HELLO_A)
        history = admin.get(RULES + "/history")
        self.assertEqual(
            [e["version"] for e in history.json()],
            [rulesVersion(HELLO_A), rulesVersion(HELLO_B), rulesVersion(HELLO_A)],
        )

    def test_unwritableStateDirIs500AndChangesNothing(self):
        """
        When the state file cannot be written (here C{stateDir} is under a
        regular file), the PUT is a 500 and the rules stay as they were: a
        change that could not survive a restart is not made.
        """
        blocker = os.path.abspath(self.mktemp())
        with open(blocker, "w") as f:
            f.write("not a directory\n")
        backends = self.backends("A", "B")
        proxy, admin = self.start(
            makeConfig(
                {"a": [backends["A"][1]], "b": [backends["B"][1]]},
                admin={"stateDir": os.path.join(blocker, "state")},
            )
        )
        response = admin.put(RULES, HELLO_B, headers={"If-Match": etagOf(HELLO_A)})
        self.assertEqual(response.code, 500)
        self.assertIn("cannot save the rules", response.json()["error"])
        self.assertRules(admin, HELLO_A)
        ups = self.upstreamsOf(proxy.proxyPort, b"hello", 2)
        self.assertEqual(ups, ["A", "A"])
        history = admin.get(RULES + "/history")
        self.assertEqual(len(history.json()), 1)

    def test_rollbackToAnUnknownVersionIs404(self):
        """
        Rolling back to a version that is not in the history is a 404 and
        changes nothing; a rollback without If-Match is a 428.
        """
        backends = self.backends("A", "B")
        proxy, admin = self.start(
            makeConfig({"a": [backends["A"][1]], "b": [backends["B"][1]]})
        )
        response = admin.post(
            RULES + "/rollback", {"version": "0123456789abcdef"}, headers={"If-Match": "*"}
        )
        self.assertEqual(response.code, 404)
        response = admin.post(RULES + "/rollback", {"version": rulesVersion(HELLO_A)})
        self.assertEqual(response.code, 428)
        self.assertRules(admin, HELLO_A)

    def test_configDirectoryKeepsTheRulesWithoutStateDir(self):
        """
        Without C{admin.stateDir}, the rules are kept next to the config
        file given to C{buildServices}, and restored from there.
        """
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        configPath = os.path.join(directory, "meshproxy.yaml")
        backends = self.backends("A", "B")
        config = makeConfig({"a": [backends["A"][1]], "b": [backends["B"][1]]})
        with open(configPath, "w") as f:
            f.write(config)
        first, admin = self.start(config, configPath=configPath)
        response = admin.put(RULES, HELLO_B, headers={"If-Match": etagOf(HELLO_A)})
        self.assertEqual(response.code, 200)
        self.assertTrue(os.path.isfile(os.path.join(directory, "rules-web.json")))
        first.stop()
        second, admin = self.start(config, configPath=configPath)
        self.assertRules(admin, HELLO_B)
        ups = self.upstreamsOf(second.proxyPort, b"hello", 2)
        self.assertEqual(ups, ["B", "B"])


class DryRunTests(AdminTestCase):
    """
    A dry run shows where recently seen names would go, and changes nothing.
    """

    def test_dryRunShowsTheMovesOfRecentNames(self):
        """
        After traffic for C{hello} and C{world}, a dry run of rules moving
        C{hello} from A to B lists only C{hello}, with its old and new
        destinations, and leaves the rules and the routing as they were.
        """
        backends = self.backends("A", "B")
        proxy, admin = self.start(
            makeConfig(
                {"a": [backends["A"][1]], "b": [backends["B"][1]]}, rules=HELLO_A_WORLD_B
            )
        )
        ups = self.upstreamsOf(proxy.proxyPort, b"hello", 2)
        self.assertEqual(ups, ["A", "A"])
        ups = self.upstreamsOf(proxy.proxyPort, b"world", 2)
        self.assertEqual(ups, ["B", "B"])
        proposed = "/svc/hello => /#/static/b;\n/svc/world => /#/static/b;\n"
        response = admin.post(RULES + "?dryRun=1", proposed)
        self.assertEqual(response.code, 200, response)
        self.assertEqual(
            response.json(),
            {
                "valid": True,
                "checked": 2,
                "changes": [
                    {"name": "/svc/hello", "old": "/#/static/a", "new": "/#/static/b"}
                ],
            },
        )
        self.assertRules(admin, HELLO_A_WORLD_B)
        ups = self.upstreamsOf(proxy.proxyPort, b"hello", 2)
        self.assertEqual(ups, ["A", "A"])
        history = admin.get(RULES + "/history")
        self.assertEqual(len(history.json()), 1)

    def test_dryRunSeesNamesRoutedBeforeTheLastChange(self):
        """
        Names routed under earlier rules still count as recent after a
        change: a dry run right after a PUT (before any new traffic) checks
        them against the rules now in force.
        """
        backends = self.backends("A", "B")
        proxy, admin = self.start(
            makeConfig(
                {"a": [backends["A"][1]], "b": [backends["B"][1]]}, rules=HELLO_A_WORLD_B
            )
        )
        self.upstreamsOf(proxy.proxyPort, b"hello")
        self.upstreamsOf(proxy.proxyPort, b"world")
        changed = "/svc/hello => /#/static/a;\n/svc/world => /#/static/a;\n"
        response = admin.put(RULES, changed, headers={"If-Match": etagOf(HELLO_A_WORLD_B)})
        self.assertEqual(response.code, 200)
        response = admin.post(RULES + "?dryRun=1", HELLO_A_WORLD_B)
        self.assertEqual(response.code, 200)
        body = response.json()
        self.assertEqual(body["checked"], 2)
        self.assertEqual(
            body["changes"],
            [{"name": "/svc/world", "old": "/#/static/a", "new": "/#/static/b"}],
        )

    def test_dryRunChecksTheMostRecentlySeenName(self):
        """
        A dry run checks the names seen most recently. C{hello} is routed,
        then 100 other names, then C{hello} again: it is the most recent
        name and must be among those checked.
        """
        backends = self.backends("A", "B")
        proxy, admin = self.start(
            makeConfig(
                {"hello": [backends["A"][1]], "b": [backends["B"][1]]},
                rules="/svc => /#/static;\n",
            )
        )
        self.upstreamsOf(proxy.proxyPort, b"hello")
        client = proxy.connect()
        for i in range(100):
            client.transport.write(b"GET / HTTP/1.1\r\nHost: other%d\r\n\r\n" % (i,))
            self.network.flush()
            self.assertEqual(len(client.responses), i + 1)
        # Unknown to the namer, but routed (and so seen) all the same.
        self.assertEqual({r.status for r in client.responses}, {503})
        self.upstreamsOf(proxy.proxyPort, b"hello")
        response = admin.post(
            RULES + "?dryRun=1", "/svc => /#/static;\n/svc/hello => /#/static/b;\n"
        )
        self.assertEqual(response.code, 200)
        self.assertEqual(
            response.json()["changes"],
            [{"name": "/svc/hello", "old": "/#/static/hello",
              "new": "/#/static/b | /#/static/hello"}],
        )


    def test_badDryRuns(self):
        """
        A dry run of rules that do not parse, or use an unknown namer, is a
        400 with C{"valid": false} and the position; a POST without
        C{dryRun=1} is refused rather than taken as a change.
        """
        backends = self.backends("A", "B")
        proxy, admin = self.start(
            makeConfig({"a": [backends["A"][1]], "b": [backends["B"][1]]})
        )
        response = admin.post(RULES + "?dryRun=1", "/svc/hello => ;\n")
        self.assertEqual(response.code, 400)
        body = response.json()
        self.assertEqual((body["valid"], body["line"], body["column"]), (False, 1, 15))
        response = admin.post(RULES + "?dryRun=true", "/svc/hello => /#/nope/x;\n")
        self.assertEqual(response.code, 400)
        self.assertFalse(response.json()["valid"])
        for query in ("", "?dryRun=0", "?dryRun=1&dryRun=1"):
            response = admin.post(RULES + query, HELLO_B)
            self.assertEqual(response.code, 400, query)
        self.assertRules(admin, HELLO_A)


class StatsTests(AdminTestCase):
    """
    C{/admin/stats} reads the counters the real routers record.
    """

    def test_countersOfHttpAndTcpRouters(self):
        """
        After three GETs for C{hello} (each answered 5ms after it arrived)
        and one for an unknown name, the HTTP router's stats count three
        2xx answers for the bound name and their 15ms (the unknown one
        makes no record) and the connections; the TCP router is listed
        with its connections and no bound names.
        """
        backends = self.backends("A", handler=delayedHandler(self.network, 0.005, b"A"))
        port = backends["A"][1]
        config = makeConfig({"a": [port]}, rules="/svc => /#/static;\n") + (
            "  - name: db\n"
            "    protocol: tcp\n"
            # Listen strings are compared as text: this one differs from web's.
            '    listen: "tcp:0:interface=127.0.0.1:backlog=50"\n'
            "    destination: /#/static/a\n"
        )
        proxy, admin = self.start(config)
        self.upstreamsOf(proxy.proxyPort, b"a", 3)
        [missing] = self.fetch(proxy.proxyPort, b"nope")
        self.assertEqual(missing.status, 503)
        response = admin.get("/admin/stats")
        self.assertEqual(response.code, 200, response)
        self.assertEqual(response.header("content-type"), "application/json")
        body = response.json()
        self.assertIsInstance(body["time"], float)
        self.assertEqual(body["time"], self.network.seconds())
        self.assertEqual(sorted(body["routers"]), ["db", "web"])
        web = body["routers"]["web"]
        self.assertEqual(web["connections"], {"opened": 2, "closed": 2})
        self.assertEqual(list(web["boundNames"]), ["/#/static/a"])
        a = web["boundNames"]["/#/static/a"]
        self.assertEqual(a["requests"], 3)
        self.assertEqual(a["responses"]["2xx"], 3)
        self.assertEqual(a["duration"]["buckets"][-1], 3)
        self.assertEqual(len(a["duration"]["buckets"]), len(a["duration"]["bounds"]) + 1)
        self.assertAlmostEqual(a["duration"]["sum"], 0.015, places=9)
        self.assertEqual(
            body["routers"]["db"], {"connections": {"opened": 0, "closed": 0}, "boundNames": {}}
        )


class ExplainTests(AdminTestCase):
    """
    Explain shows the delegation and the endpoints with their scores.
    """

    def setUp(self):
        AdminTestCase.setUp(self)
        backends = self.backends("A1", "A2", "B")
        self.ports = {label: port for label, (_, port) in backends.items()}
        self.proxy, self.admin = self.start(
            makeConfig(
                {"a": [self.ports["A1"], self.ports["A2"]], "b": [self.ports["B"]]},
                rules="/svc => /#/static;\n/svc/hello => /#/static/a;\n",
            )
        )
        # Traffic, so that the endpoints have measured latencies.
        self.upstreamsOf(self.proxy.proxyPort, b"hello", 4)

    def assertExplainsHello(self, body):
        self.assertEqual(body["router"], "web")
        self.assertEqual(body["name"], "/svc/hello")
        # The later rule first, then (should its name be unknown to the
        # namer) the earlier one.
        self.assertEqual(body["destination"], "/#/static/a | /#/static/hello")
        root = body["delegation"]
        self.assertEqual(root["path"], "/svc/hello")
        self.assertEqual(root["result"], "/#/static/a | /#/static/hello")
        self.assertEqual(
            [child["dentry"] for child in root["children"]],
            ["/svc/hello=>/#/static/a", "/svc=>/#/static"],
        )
        self.assertEqual(root["children"][1]["bound"]["id"], "/#/static/hello")
        # The later rule wins: its step comes first.
        self.assertEqual(root["children"][0]["dentry"], "/svc/hello=>/#/static/a")
        self.assertEqual(root["children"][0]["bound"]["id"], "/#/static/a")
        endpoints = body["endpoints"]["/#/static/a"]
        self.assertEqual(
            sorted(ep["address"] for ep in endpoints),
            sorted("127.0.0.1:%d" % (self.ports[k],) for k in ("A1", "A2")),
        )
        for ep in endpoints:
            self.assertIsInstance(ep["score"], (int, float))
            self.assertEqual(ep["state"], "live")
        self.assertEqual(sum(ep["requests"] for ep in endpoints), 4)

    def test_explainByHost(self):
        """
        C{host=hello} runs the identifier and explains C{/svc/hello}.
        """
        response = self.admin.get("/admin/routers/web/explain?host=hello")
        self.assertEqual(response.code, 200, response)
        self.assertEqual(response.header("content-type"), "application/json")
        self.assertExplainsHello(response.json())

    def test_explainByName(self):
        """
        C{name=/svc/hello} explains the same delegation.
        """
        response = self.admin.get("/admin/routers/web/explain?name=/svc/hello")
        self.assertEqual(response.code, 200, response)
        self.assertExplainsHello(response.json())

    def test_explainFollowsARuleChange(self):
        """
        After a PUT, explain shows the new delegation.
        """
        response = self.admin.put(
            RULES, "/svc => /#/static;\n", headers={"If-Match": "*"}
        )
        self.assertEqual(response.code, 200)
        response = self.admin.get("/admin/routers/web/explain?name=/svc/b")
        body = response.json()
        self.assertEqual(body["destination"], "/#/static/b")
        self.assertEqual(
            [ep["address"] for ep in body["endpoints"]["/#/static/b"]],
            ["127.0.0.1:%d" % (self.ports["B"],)],
        )

    def test_badParametersAre400(self):
        """
        No parameter, two of them, one repeated, an empty one, a name that
        is not a path, or a path (which a host identifier cannot use) is a
        400 with a reason; an unknown router is a 404.
        """
        base = "/admin/routers/web/explain"
        for query in (
            "",
            "?name=/svc/hello&host=hello",
            "?name=/svc/a&name=/svc/b",
            "?name=",
            "?host=",
            "?name=svc-without-slash",
            "?path=/hello",
        ):
            response = self.admin.get(base + query)
            self.assertEqual(response.code, 400, query)
            self.assertIsInstance(response.json()["error"], str)
        response = self.admin.get("/admin/routers/nope/explain?name=/svc/hello")
        self.assertEqual(response.code, 404)


class DrainTests(AdminTestCase):
    """
    Draining an endpoint takes it out of new traffic, and back.
    """

    def setUpDrain(self, balancer, handler=None):
        backends = self.backends("A", "B", handler=handler)
        self.factories = {label: factory for label, (factory, _) in backends.items()}
        self.addresses = {
            label: "127.0.0.1:%d" % (port,) for label, (_, port) in backends.items()
        }
        self.proxy, self.admin = self.start(
            makeConfig(
                {"hello": [backends["A"][1], backends["B"][1]]},
                rules="/svc => /#/static;\n",
                balancer=balancer,
            )
        )

    def drainBody(self, label):
        return {"router": "web", "name": "/#/static/hello", "address": self.addresses[label]}

    def endpointStates(self):
        response = self.admin.get("/admin/state")
        self.assertEqual(response.code, 200)
        endpoints = response.json()["routers"]["web"]["boundNames"]["/#/static/hello"][
            "endpoints"
        ]
        return {ep["address"]: ep for ep in endpoints}

    def drainAndUndrain(self, balancer):
        self.setUpDrain(balancer)
        port = self.proxy.proxyPort
        # The bound name must have been used before it can be drained.
        self.upstreamsOf(port, b"hello", 4)
        response = self.admin.post("/admin/endpoints/drain", self.drainBody("B"))
        self.assertEqual(response.code, 200, response)
        self.assertEqual(response.json(), {"draining": True})
        states = self.endpointStates()
        self.assertEqual(states[self.addresses["B"]]["state"], "draining")
        self.assertEqual(states[self.addresses["A"]]["state"], "live")

        metrics = self.admin.get("/metrics")
        up = {
            line.split('endpoint="')[1].split('"')[0]: line.rsplit(" ", 1)[1]
            for line in metrics.text.splitlines()
            if line.startswith("meshproxy_endpoint_up{")
        }
        self.assertEqual(up, {self.addresses["A"]: "1.0", self.addresses["B"]: "0.0"})

        before = len(self.factories["B"].requests)
        ups = self.upstreamsOf(port, b"hello", 50)
        self.assertEqual(ups, ["A"] * 50)
        self.assertEqual(len(self.factories["B"].requests), before)

        response = self.admin.post("/admin/endpoints/undrain", self.drainBody("B"))
        self.assertEqual(response.code, 200, response)
        self.assertEqual(response.json(), {"draining": False})
        states = self.endpointStates()
        self.assertEqual(
            {address: ep["state"] for address, ep in states.items()},
            {self.addresses["A"]: "live", self.addresses["B"]: "live"},
        )

    def test_drainAndUndrainRoundRobin(self):
        """
        With round robin, a drained endpoint gets none of 50 new requests;
        once undrained, both share the next 50 evenly.
        """
        self.drainAndUndrain("roundRobin")
        ups = self.upstreamsOf(self.proxy.proxyPort, b"hello", 50)
        self.assertEqual((ups.count("A"), ups.count("B")), (25, 25))

    def test_drainWithTheDefaultBalancer(self):
        """
        The default balancer (P2C over peak EWMA) skips a drained endpoint
        too. Which endpoint it prefers once both are live again depends on
        the latencies it measured, so only the drain is pinned here.
        """
        self.drainAndUndrain("ewma")

    def test_inFlightRequestFinishesOnADrainedEndpoint(self):
        """
        Draining the endpoint a request is waiting on lets that request
        finish with its answer, while new requests go to the other one;
        C{/admin/state} shows the drained endpoint C{draining} with one
        request pending.
        """
        held = []
        arrived = defer.Deferred()
        answer = okHandler(b"?")

        def handler(proto, request):
            if not held:
                held.append((proto, request))
                arrived.callback(proto.factory)
                return
            label = b"A" if proto.factory is self.factories["A"] else b"B"
            okHandler(label)(proto, request)

        self.setUpDrain("roundRobin", handler=handler)
        port = self.proxy.proxyPort
        slow = self.proxy.connect()
        slow.transport.write(b"GET /slow HTTP/1.1\r\nHost: hello\r\n\r\n")
        self.network.flush()
        factory = resultOf(arrived, "the slow request upstream")
        busy = "A" if factory is self.factories["A"] else "B"
        other = "B" if busy == "A" else "A"

        response = self.admin.post("/admin/endpoints/drain", self.drainBody(busy))
        self.assertEqual(response.code, 200)
        states = self.endpointStates()
        self.assertEqual(states[self.addresses[busy]]["state"], "draining")
        self.assertEqual(states[self.addresses[busy]]["pending"], 1)

        ups = self.upstreamsOf(port, b"hello", 10)
        self.assertEqual(ups, [other] * 10)

        proto, request = held[0]
        answer(proto, request)
        self.network.flush()
        [response] = slow.responses
        self.assertEqual(response.status, 200)
        self.assertEqual(response.body, b"? /slow")
        states = self.endpointStates()
        self.assertEqual(states[self.addresses[busy]]["pending"], 0)
        self.assertEqual(states[self.addresses[busy]]["state"], "draining")

    def test_drainSurvivesARuleChange(self):
        """
        A rule change that keeps routing to the same bound name keeps the
        endpoint drained.
        """
        self.setUpDrain("roundRobin")
        port = self.proxy.proxyPort
        self.upstreamsOf(port, b"hello", 2)
        response = self.admin.post("/admin/endpoints/drain", self.drainBody("B"))
        self.assertEqual(response.code, 200)
        response = self.admin.put(
            RULES, "/svc => /#/static;\n/svc/hi => /#/static/hello;\n", headers={"If-Match": "*"}
        )
        self.assertEqual(response.code, 200)
        ups = self.upstreamsOf(port, b"hi", 10)
        self.assertEqual(ups, ["A"] * 10)
        states = self.endpointStates()
        self.assertEqual(states[self.addresses["B"]]["state"], "draining")

    def test_undrainKeepsAnEjectedEndpointEjected(self):
        """
        Draining then undraining an endpoint that failure accrual had
        ejected gives it back to accrual still ejected: it gets no request
        before its ejection is over and a probe succeeds.
        """
        goodPort = Instance(self.network, okHandler(b"A")).start()
        bad = BackendFactory(rawHandler=lambda proto, data: proto.transport.abortConnection())
        badPort = Instance(self.network, factory=bad).start()
        self.addresses = {"A": "127.0.0.1:%d" % (goodPort,), "B": "127.0.0.1:%d" % (badPort,)}
        self.proxy, self.admin = self.start(
            makeConfig(
                {"hello": [goodPort, badPort]}, rules="/svc => /#/static;\n",
                balancer="roundRobin",
            )
        )
        # B fails every try (retried on A): five in a row eject it.
        ups = self.upstreamsOf(self.proxy.proxyPort, b"hello", 12)
        self.assertEqual(set(ups), {"A"})
        states = self.endpointStates()
        self.assertEqual(states[self.addresses["B"]]["state"], "ejected")
        failures = states[self.addresses["B"]]["failures"]

        response = self.admin.post("/admin/endpoints/drain", self.drainBody("B"))
        self.assertEqual(response.code, 200)
        response = self.admin.post("/admin/endpoints/undrain", self.drainBody("B"))
        self.assertEqual(response.code, 200)
        states = self.endpointStates()
        self.assertEqual(states[self.addresses["B"]]["state"], "ejected")
        self.upstreamsOf(self.proxy.proxyPort, b"hello", 6)
        states = self.endpointStates()
        self.assertEqual(states[self.addresses["B"]]["failures"], failures)


    def test_badDrainRequests(self):
        """
        An unknown router, bound name or address is a 404; a body that is
        not JSON or misses a field is a 400. Nothing is drained.
        """
        self.setUpDrain("roundRobin")
        self.upstreamsOf(self.proxy.proxyPort, b"hello", 2)
        good = self.drainBody("B")
        for change, code in (
            ({"router": "nope"}, 404),
            ({"name": "/#/static/nope"}, 404),
            ({"name": "not a path"}, 404),
            ({"address": "127.0.0.1:1"}, 404),
            ({"address": ""}, 400),
            ({"router": 7}, 400),
        ):
            body = dict(good, **change)
            response = self.admin.post("/admin/endpoints/drain", body)
            self.assertEqual(response.code, code, change)
            self.assertIsInstance(response.json()["error"], str)
        deep = b'{"router": ' + b"[" * 60000
        for raw in (b"", b"not json", b"[]", json.dumps({"router": "web"}).encode(), deep):
            response = self.admin.post(
                "/admin/endpoints/drain", raw, headers={"Content-Type": "application/json"}
            )
            self.assertEqual(response.code, 400, raw)
        states = self.endpointStates()
        self.assertEqual({ep["state"] for ep in states.values()}, {"live"})


class AuthTests(AdminTestCase):
    """
    With a token, changes need it; with protectReads, reads need it too.
    """

    def startWithToken(self, protectReads=False):
        backends = self.backends("A", "B")
        admin = {"token": TOKEN}
        if protectReads:
            admin["protectReads"] = True
        self.proxy, self.admin = self.start(
            makeConfig({"a": [backends["A"][1]], "b": [backends["B"][1]]}, admin=admin)
        )
        self.upstreamsOf(self.proxy.proxyPort, b"hello")
        self.shutdowns = []
        self.proxy.runtime.shutdown = lambda: self.shutdowns.append(True)

    def mutations(self):
        drain = {"router": "web", "name": "/#/static/a", "address": "127.0.0.1:1"}
        return [
            ("PUT", RULES, HELLO_B, {"If-Match": "*"}),
            ("POST", RULES + "?dryRun=1", HELLO_B, {}),
            ("POST", RULES + "/rollback", {"version": rulesVersion(HELLO_A)}, {"If-Match": "*"}),
            ("POST", "/admin/endpoints/drain", drain, {}),
            ("POST", "/admin/endpoints/undrain", drain, {}),
            ("POST", "/admin/shutdown", None, {}),
        ]

    def assertRefused(self, method, path, body, headers, token):
        response = self.admin.request(method, path, body=body, headers=headers, token=token)
        self.assertEqual(response.code, 401, (method, path, token))
        self.assertEqual(response.json(), {"error": "unauthorized"})
        self.assertEqual(response.header("www-authenticate"), "Bearer")

    def test_mutationsNeedTheToken(self):
        """
        Every PUT and POST without the token, with a wrong one, or with
        another scheme is a 401 and changes nothing; with the token, a PUT
        is accepted and recorded as made by the token holder.
        """
        self.startWithToken()
        for method, path, body, headers in self.mutations():
            for token in (None, "wrong", TOKEN + "x", TOKEN[:-1]):
                self.assertRefused(method, path, body, headers, token)
            response = self.admin.request(
                method, path, body=body,
                headers=dict(headers, Authorization="Basic " + TOKEN), token=None,
            )
            self.assertEqual(response.code, 401)
        self.assertEqual(self.shutdowns, [])
        self.assertRules(self.admin, HELLO_A)
        ups = self.upstreamsOf(self.proxy.proxyPort, b"hello")
        self.assertEqual(ups, ["A"])

        response = self.admin.put(RULES, HELLO_B, headers={"If-Match": "*"}, token=TOKEN)
        self.assertEqual(response.code, 200)
        response = self.admin.put(
            RULES, HELLO_A, headers={"If-Match": "*", "Authorization": "bearer " + TOKEN},
            token=None,
        )
        self.assertEqual(response.code, 200, "the scheme is case-insensitive")
        history = self.admin.get(RULES + "/history")
        self.assertEqual([e["who"] for e in history.json()], ["token", "token", "config"])

    def test_readsStayOpenWithoutProtectReads(self):
        """
        With a token but not protectReads, reads need no token.
        """
        self.startWithToken()
        for path in (
            RULES,
            RULES + "/history",
            "/admin/routers/web/explain?host=hello",
            "/admin/state",
            "/metrics",
            "/live",
            "/ready",
            "/",
        ):
            response = self.admin.get(path)
            self.assertEqual(response.code, 200, path)

    def test_protectReadsGuardsReads(self):
        """
        With protectReads, reads of data need the token (a wrong one is a
        401); the probes and the dashboard page stay open.
        """
        self.startWithToken(protectReads=True)
        for path in (
            RULES,
            RULES + "/history",
            "/admin/routers/web/explain?host=hello",
            "/admin/state",
            "/metrics",
        ):
            for token in (None, "wrong"):
                self.assertRefused("GET", path, None, {}, token)
            response = self.admin.get(path, token=TOKEN)
            self.assertEqual(response.code, 200, path)
        for path in ("/live", "/ready", "/"):
            response = self.admin.get(path)
            self.assertEqual(response.code, 200, path)
        for method, path, body, headers in self.mutations():
            self.assertRefused(method, path, body, headers, None)
        self.assertEqual(self.shutdowns, [])


class ShutdownTests(AdminTestCase):
    """
    POST /admin/shutdown answers first, then asks the runtime to stop.
    """

    def test_shutdownAnswers202ThenCallsTheRuntimeOnce(self):
        """
        The answer is 202 with the grace period; C{runtime.shutdown} is
        called once after it, however many times it is asked; the proxy
        still answers in the meantime (stopping is the runtime's job).
        """
        backends = self.backends("A")
        proxy, admin = self.start(
            makeConfig({"a": [backends["A"][1]]}, admin={"shutdownGrace": "3s"})
        )
        calls = []
        called = defer.Deferred()

        def shutdown():
            calls.append(True)
            called.callback(None)
            return defer.succeed(None)

        proxy.runtime.shutdown = shutdown
        response = admin.post("/admin/shutdown")
        self.assertEqual(response.code, 202)
        self.assertEqual(response.json(), {"shuttingDown": True, "grace": 3.0})
        self.network.flush()
        self.assertTrue(called.called)
        self.assertEqual(len(calls), 1)
        response = admin.post("/admin/shutdown")
        self.assertEqual(response.code, 202)
        ups = self.upstreamsOf(proxy.proxyPort, b"hello")
        self.assertEqual(ups, ["A"])
        self.assertEqual(len(calls), 1)

    def test_getIsNotAShutdown(self):
        """
        Only POST shuts down: GET is a 405 and the runtime is left alone.
        """
        backends = self.backends("A")
        proxy, admin = self.start(makeConfig({"a": [backends["A"][1]]}))
        calls = []
        proxy.runtime.shutdown = lambda: calls.append(True)
        response = admin.get("/admin/shutdown")
        self.assertEqual(response.code, 405)
        self.assertEqual(response.header("allow"), "POST")
        response = admin.get("/live")
        self.assertEqual(response.code, 200)
        self.assertEqual(calls, [])
