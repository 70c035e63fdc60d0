"""
The admin API end to end on loopback: a proxy run in this process from a
config text, real upstream servers, treq against the real admin port and
raw clients through the proxy.

Each test is bounded by trial's timeout and waits on events, never on the
clock.
"""

import itertools
import json
import os
import shutil

from twisted.internet import defer
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SkipTest, TestCase

from meshproxy.admin.rules import rulesVersion
from tests.admin_support import AdminClient, runProxy
from tests.support import BackendFactory, connectClient, listenBackend, okHandler

RULES = "/admin/routers/web/rules"
HELLO_A = "/svc/hello => /#/static/a;\n"
HELLO_B = "/svc/hello => /#/static/b;\n"
HELLO_A_WORLD_B = "/svc/hello => /#/static/a;\n/svc/world => /#/static/b;\n"
TOKEN = "s3cret-integration-t0ken"

CONFIG = """\
admin:
  listen: "tcp:port=0:interface=127.0.0.1"
%(admin)s
namers:
  - kind: static
    prefix: /#/static
    services: {%(services)s}
routers:
  - name: web
    listen: "tcp:0:interface=127.0.0.1"
    identifier: {kind: host}
    loadBalancer: {kind: %(balancer)s}
    rules: %(rules)s
"""


def makeConfig(services, rules=HELLO_A, admin=None, balancer="ewma"):
    """
    A config with one static namer at C{/#/static}, one HTTP router C{web}
    identifying by host, and the admin API, all on free loopback ports.

    @param services: service name to a list of ports on 127.0.0.1.
    @param rules: the router's rules.
    @param admin: extra keys of the C{admin} section, as a dict.
    @param balancer: the load balancer kind.
    """
    svc = ", ".join(
        "%s: [%s]" % (name, ", ".join('"127.0.0.1:%d"' % p for p in ports))
        for name, ports in sorted(services.items())
    )
    extra = "".join(
        "  %s: %s\n" % (key, json.dumps(value)) for key, value in (admin or {}).items()
    )
    return CONFIG % {
        "admin": extra.rstrip("\n"),
        "services": svc,
        "rules": json.dumps(rules),
        "balancer": balancer,
    }


def etagOf(text):
    """
    The C{ETag} the admin API gives rules C{text}.
    """
    return '"%s"' % (rulesVersion(text),)


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

    @defer.inlineCallbacks
    def assertRules(self, admin, text):
        """
        Assert that the rules in force are C{text}, with its ETag.
        """
        response = yield admin.get(RULES)
        self.assertEqual(response.code, 200)
        self.assertEqual(response.text, text)
        self.assertEqual(response.header("etag"), etagOf(text))
        self.assertEqual(response.header("content-type"), "text/plain; charset=utf-8")


class LiveChangeTests(AdminIntegrationTestCase):
    """
    A rule change under traffic switches routing whole, at one point.
    """

    @defer.inlineCallbacks
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
        backends = yield self.backends("A", "B")
        proxy, admin = yield self.start(
            makeConfig({"a": [backends["A"][1]], "b": [backends["B"][1]]})
        )
        before = yield admin.get(RULES)
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
            response = yield admin.put(
                RULES, HELLO_B, headers={"If-Match": before.header("etag")}
            )
            put["answeredAt"] = next(ticks)
            put["response"] = response
            putDone.callback(None)

        @defer.inlineCallbacks
        def worker(n):
            client = yield connectClient(self, proxy.proxyPort)
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

        yield defer.gatherResults([worker(n) for n in range(10)], consumeErrors=True)
        yield putDone

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

        yield self.assertRules(admin, HELLO_B)
        state = yield admin.get("/admin/state")
        self.assertEqual(state.json()["routers"]["web"]["rules"], "/svc/hello=>/#/static/b")


    @defer.inlineCallbacks
    def test_exactSwitchOnOneConnection(self):
        """
        300 GETs one after the other on one keep-alive connection, the
        rules replaced between the 150th answer and the 151st request: the
        first 150 went to A, the last 150 to B.
        """
        backends = yield self.backends("A", "B")
        proxy, admin = yield self.start(
            makeConfig({"a": [backends["A"][1]], "b": [backends["B"][1]]})
        )
        client = yield connectClient(self, proxy.proxyPort)
        for i in range(300):
            if i == 150:
                response = yield admin.put(
                    RULES, HELLO_B, headers={"If-Match": etagOf(HELLO_A)}
                )
                self.assertEqual(response.code, 200)
            client.transport.write(b"GET /%d HTTP/1.1\r\nHost: hello\r\n\r\n" % (i,))
            yield client.waitFor(i + 1)
        self.assertEqual([r.status for r in client.responses], [200] * 300)
        self.assertEqual(
            [r.header(b"x-upstream") for r in client.responses], [b"A"] * 150 + [b"B"] * 150
        )
        self.assertEqual(len(backends["A"][0].connections), 1, "A kept one pooled connection")


class ConcurrencyTests(AdminIntegrationTestCase):
    """
    Optimistic concurrency on the rules: If-Match decides.
    """

    @defer.inlineCallbacks
    def test_concurrentPutsWithTheSameIfMatchOneWins(self):
        """
        Two PUTs sent at once with the same If-Match: one gets 200, the
        other 412 with the winner's version in its ETag and body, and the
        winner's rules are in force.
        """
        backends = yield self.backends("A", "B")
        proxy, admin = yield self.start(
            makeConfig({"a": [backends["A"][1]], "b": [backends["B"][1]]})
        )
        texts = [HELLO_B, HELLO_A_WORLD_B]
        first, second = yield defer.gatherResults(
            [admin.put(RULES, text, headers={"If-Match": etagOf(HELLO_A)}) for text in texts],
            consumeErrors=True,
        )
        self.assertEqual(sorted([first.code, second.code]), [200, 412])
        winner, loser = (0, 1) if first.code == 200 else (1, 0)
        won, lost = (first, second)[winner], (first, second)[loser]
        self.assertEqual(won.header("etag"), etagOf(texts[winner]))
        self.assertEqual(lost.header("etag"), etagOf(texts[winner]))
        self.assertEqual(lost.json()["current"], rulesVersion(texts[winner]))
        self.assertEqual(lost.header("content-type"), "application/json")
        yield self.assertRules(admin, texts[winner])
        history = yield admin.get(RULES + "/history")
        self.assertEqual(
            [entry["version"] for entry in history.json()],
            [rulesVersion(texts[winner]), rulesVersion(HELLO_A)],
        )

    @defer.inlineCallbacks
    def test_manyConcurrentPutsExactlyOneWins(self):
        """
        Ten PUTs of ten different texts, all based on the same version:
        exactly one is accepted.
        """
        backends = yield self.backends("A")
        proxy, admin = yield self.start(makeConfig({"a": [backends["A"][1]]}))
        texts = [HELLO_A + "/svc/x%d => /#/static/a;\n" % (i,) for i in range(10)]
        responses = yield defer.gatherResults(
            [admin.put(RULES, text, headers={"If-Match": etagOf(HELLO_A)}) for text in texts],
            consumeErrors=True,
        )
        codes = [r.code for r in responses]
        self.assertEqual(sorted(codes), [200] + [412] * 9)
        winner = texts[codes.index(200)]
        for response in responses:
            self.assertEqual(response.header("etag"), etagOf(winner))
        yield self.assertRules(admin, winner)

    @defer.inlineCallbacks
    def test_staleIfMatchRefusedAndNothingChanges(self):
        """
        A PUT based on a version that is not in force gets 412 with the
        current ETag; a weak tag never matches; C{*} matches anything.
        """
        backends = yield self.backends("A", "B")
        proxy, admin = yield self.start(
            makeConfig({"a": [backends["A"][1]], "b": [backends["B"][1]]})
        )
        for ifMatch in ['"0123456789abcdef"', "W/" + etagOf(HELLO_A)]:
            response = yield admin.put(RULES, HELLO_B, headers={"If-Match": ifMatch})
            self.assertEqual(response.code, 412, ifMatch)
            self.assertEqual(response.header("etag"), etagOf(HELLO_A))
        yield self.assertRules(admin, HELLO_A)
        response = yield admin.put(RULES, HELLO_B, headers={"If-Match": "*"})
        self.assertEqual(response.code, 200)
        ups = yield self.upstreamsOf(proxy.proxyPort, b"hello", 3)
        self.assertEqual(ups, ["B"] * 3)
        # A list of tags matches when any of them is in force.
        response = yield admin.put(
            RULES,
            HELLO_A,
            headers={"If-Match": '"0123456789abcdef", %s' % (etagOf(HELLO_B),)},
        )
        self.assertEqual(response.code, 200)
        yield self.assertRules(admin, HELLO_A)


class RefusedChangeTests(AdminIntegrationTestCase):
    """
    Refused changes leave the rules, the routing and the state file alone.
    """

    @defer.inlineCallbacks
    def setUp(self):
        self.stateDir = os.path.abspath(self.mktemp())
        backends = yield self.backends("A", "B")
        self.proxy, self.admin = yield self.start(
            makeConfig(
                {"a": [backends["A"][1]], "b": [backends["B"][1]]},
                admin={"stateDir": self.stateDir},
            )
        )

    @defer.inlineCallbacks
    def assertUnchanged(self):
        yield self.assertRules(self.admin, HELLO_A)
        ups = yield self.upstreamsOf(self.proxy.proxyPort, b"hello", 2)
        self.assertEqual(ups, ["A", "A"])
        history = yield self.admin.get(RULES + "/history")
        self.assertEqual(
            [entry["version"] for entry in history.json()], [rulesVersion(HELLO_A)]
        )
        self.assertFalse(os.path.exists(os.path.join(self.stateDir, "rules-web.json")))

    @defer.inlineCallbacks
    def test_putWithoutIfMatchIs428(self):
        """
        A PUT without If-Match is refused with 428 and a JSON reason.
        """
        response = yield self.admin.put(RULES, HELLO_B)
        self.assertEqual(response.code, 428)
        self.assertEqual(response.header("content-type"), "application/json")
        self.assertIn("If-Match", response.json()["error"])
        self.assertTrue(response.body.endswith(b"\n"))
        yield self.assertUnchanged()

    @defer.inlineCallbacks
    def test_syntaxErrorIs400WithLineAndColumn(self):
        """
        Rules that do not parse are refused with 400, the line and column
        of the problem.
        """
        response = yield self.admin.put(
            RULES,
            "/svc/hello => /#/static/b;\n/svc/world =>> /#/static/b;\n",
            headers={"If-Match": etagOf(HELLO_A)},
        )
        self.assertEqual(response.code, 400)
        body = response.json()
        self.assertEqual((body["line"], body["column"]), (2, 14))
        self.assertIn(">", body["error"])
        yield self.assertUnchanged()

    @defer.inlineCallbacks
    def test_unknownNamerPrefixIs400(self):
        """
        Rules leading to a C{/#/} prefix no namer owns are refused with 400
        naming the prefix and where it is.
        """
        response = yield self.admin.put(
            RULES,
            "/svc/hello => /#/nope/b;\n",
            headers={"If-Match": etagOf(HELLO_A)},
        )
        self.assertEqual(response.code, 400)
        body = response.json()
        self.assertIn("/#/nope", body["error"])
        self.assertEqual((body["line"], body["column"]), (1, 15))
        yield self.assertUnchanged()

    @defer.inlineCallbacks
    def test_emptyBodyIs400(self):
        """
        A PUT with an empty body (a forgotten body, most likely) is refused.
        """
        response = yield self.admin.put(RULES, b"", headers={"If-Match": etagOf(HELLO_A)})
        self.assertEqual(response.code, 400)
        yield self.assertUnchanged()

    @defer.inlineCallbacks
    def test_sameTextChangesNothing(self):
        """
        A PUT of the rules in force is a 200 naming the same version as
        both old and new, and records and writes nothing.
        """
        response = yield self.admin.put(RULES, HELLO_A, headers={"If-Match": etagOf(HELLO_A)})
        self.assertEqual(response.code, 200)
        self.assertEqual(
            response.json(),
            {"version": rulesVersion(HELLO_A), "previous": rulesVersion(HELLO_A)},
        )
        yield self.assertUnchanged()

    @defer.inlineCallbacks
    def test_tooLargeBodyIs413(self):
        """
        Rules over 256 KiB are refused with 413, before any check.
        """
        text = HELLO_B + "# " + "x" * (256 * 1024) + "\n"
        response = yield self.admin.put(RULES, text, headers={"If-Match": etagOf(HELLO_A)})
        self.assertEqual(response.code, 413)
        yield self.assertUnchanged()

    @defer.inlineCallbacks
    def test_headAnswersWithTheETag(self):
        """
        HEAD on the rules answers like GET, without the body.
        """
        response = yield self.admin.request("HEAD", RULES)
        self.assertEqual(response.code, 200)
        self.assertEqual(response.header("etag"), etagOf(HELLO_A))
        self.assertEqual(response.body, b"")

    @defer.inlineCallbacks
    def test_unknownRouterIs404(self):
        """
        The rules of a router that does not exist are a 404, read or write.
        """
        response = yield self.admin.get("/admin/routers/nope/rules")
        self.assertEqual(response.code, 404)
        response = yield self.admin.put(
            "/admin/routers/nope/rules", HELLO_B, headers={"If-Match": "*"}
        )
        self.assertEqual(response.code, 404)
        yield self.assertUnchanged()


class PersistenceTests(AdminIntegrationTestCase):
    """
    Rules changed through the admin API survive a restart.
    """

    @defer.inlineCallbacks
    def test_rulesSurviveRestartAndRollBack(self):
        """
        With C{admin.stateDir} set, a changed rule set is in force after the
        proxy is stopped and a new one is built from the same config; the
        history lists both versions, and rolling back to the config's
        version routes by it again.
        """
        stateDir = os.path.abspath(self.mktemp())
        backends = yield self.backends("A", "B")
        config = makeConfig(
            {"a": [backends["A"][1]], "b": [backends["B"][1]]}, admin={"stateDir": stateDir}
        )
        first, admin = yield self.start(config)
        ups = yield self.upstreamsOf(first.proxyPort, b"hello", 2)
        self.assertEqual(ups, ["A", "A"])
        response = yield admin.put(RULES, HELLO_B, headers={"If-Match": etagOf(HELLO_A)})
        self.assertEqual(response.code, 200)
        self.assertTrue(os.path.isfile(os.path.join(stateDir, "rules-web.json")))
        yield first.stop()

        second, admin = yield self.start(config)
        yield self.assertRules(admin, HELLO_B)
        ups = yield self.upstreamsOf(second.proxyPort, b"hello", 3)
        self.assertEqual(ups, ["B"] * 3)

        history = yield admin.get(RULES + "/history")
        self.assertEqual(history.code, 200)
        entries = history.json()
        self.assertEqual(
            [(e["version"], e["text"]) for e in entries],
            [(rulesVersion(HELLO_B), HELLO_B), (rulesVersion(HELLO_A), HELLO_A)],
        )
        self.assertEqual(entries[0]["who"], "127.0.0.1")
        self.assertEqual(entries[1]["who"], "config")

        response = yield admin.post(
            RULES + "/rollback",
            {"version": rulesVersion(HELLO_A)},
            headers={"If-Match": etagOf(HELLO_B)},
        )
        self.assertEqual(response.code, 200, response)
        self.assertEqual(
            response.json(),
            {"version": rulesVersion(HELLO_A), "previous": rulesVersion(HELLO_B)},
        )
        yield self.assertRules(admin, HELLO_A)
        ups = yield self.upstreamsOf(second.proxyPort, b"hello", 3)
        self.assertEqual(ups, ["A"] * 3)
        yield second.stop()

        # The rollback is itself persisted.
        third, admin = yield self.start(config)
        yield self.assertRules(admin, HELLO_A)
        history = yield admin.get(RULES + "/history")
        self.assertEqual(
            [e["version"] for e in history.json()],
            [rulesVersion(HELLO_A), rulesVersion(HELLO_B), rulesVersion(HELLO_A)],
        )

    @defer.inlineCallbacks
    def test_unwritableStateDirIs500AndChangesNothing(self):
        """
        When the state file cannot be written (here C{stateDir} is under a
        regular file), the PUT is a 500 and the rules stay as they were: a
        change that could not survive a restart is not made.
        """
        blocker = os.path.abspath(self.mktemp())
        with open(blocker, "w") as f:
            f.write("not a directory\n")
        backends = yield self.backends("A", "B")
        proxy, admin = yield self.start(
            makeConfig(
                {"a": [backends["A"][1]], "b": [backends["B"][1]]},
                admin={"stateDir": os.path.join(blocker, "state")},
            )
        )
        response = yield admin.put(RULES, HELLO_B, headers={"If-Match": etagOf(HELLO_A)})
        self.assertEqual(response.code, 500)
        self.assertIn("cannot save the rules", response.json()["error"])
        yield self.assertRules(admin, HELLO_A)
        ups = yield self.upstreamsOf(proxy.proxyPort, b"hello", 2)
        self.assertEqual(ups, ["A", "A"])
        history = yield admin.get(RULES + "/history")
        self.assertEqual(len(history.json()), 1)

    @defer.inlineCallbacks
    def test_rollbackToAnUnknownVersionIs404(self):
        """
        Rolling back to a version that is not in the history is a 404 and
        changes nothing; a rollback without If-Match is a 428.
        """
        backends = yield self.backends("A", "B")
        proxy, admin = yield self.start(
            makeConfig({"a": [backends["A"][1]], "b": [backends["B"][1]]})
        )
        response = yield admin.post(
            RULES + "/rollback", {"version": "0123456789abcdef"}, headers={"If-Match": "*"}
        )
        self.assertEqual(response.code, 404)
        response = yield admin.post(RULES + "/rollback", {"version": rulesVersion(HELLO_A)})
        self.assertEqual(response.code, 428)
        yield self.assertRules(admin, HELLO_A)

    @defer.inlineCallbacks
    def test_configDirectoryKeepsTheRulesWithoutStateDir(self):
        """
        Without C{admin.stateDir}, the rules are kept next to the config
        file given to C{buildServices}, and restored from there.
        """
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        configPath = os.path.join(directory, "meshproxy.yaml")
        backends = yield self.backends("A", "B")
        config = makeConfig({"a": [backends["A"][1]], "b": [backends["B"][1]]})
        with open(configPath, "w") as f:
            f.write(config)
        first, admin = yield self.start(config, configPath=configPath)
        response = yield admin.put(RULES, HELLO_B, headers={"If-Match": etagOf(HELLO_A)})
        self.assertEqual(response.code, 200)
        self.assertTrue(os.path.isfile(os.path.join(directory, "rules-web.json")))
        yield first.stop()
        second, admin = yield self.start(config, configPath=configPath)
        yield self.assertRules(admin, HELLO_B)
        ups = yield self.upstreamsOf(second.proxyPort, b"hello", 2)
        self.assertEqual(ups, ["B", "B"])


class DryRunTests(AdminIntegrationTestCase):
    """
    A dry run shows where recently seen names would go, and changes nothing.
    """

    @defer.inlineCallbacks
    def test_dryRunShowsTheMovesOfRecentNames(self):
        """
        After traffic for C{hello} and C{world}, a dry run of rules moving
        C{hello} from A to B lists only C{hello}, with its old and new
        destinations, and leaves the rules and the routing as they were.
        """
        backends = yield self.backends("A", "B")
        proxy, admin = yield self.start(
            makeConfig(
                {"a": [backends["A"][1]], "b": [backends["B"][1]]}, rules=HELLO_A_WORLD_B
            )
        )
        ups = yield self.upstreamsOf(proxy.proxyPort, b"hello", 2)
        self.assertEqual(ups, ["A", "A"])
        ups = yield self.upstreamsOf(proxy.proxyPort, b"world", 2)
        self.assertEqual(ups, ["B", "B"])
        proposed = "/svc/hello => /#/static/b;\n/svc/world => /#/static/b;\n"
        response = yield admin.post(RULES + "?dryRun=1", proposed)
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
        yield self.assertRules(admin, HELLO_A_WORLD_B)
        ups = yield self.upstreamsOf(proxy.proxyPort, b"hello", 2)
        self.assertEqual(ups, ["A", "A"])
        history = yield admin.get(RULES + "/history")
        self.assertEqual(len(history.json()), 1)

    @defer.inlineCallbacks
    def test_dryRunSeesNamesRoutedBeforeTheLastChange(self):
        """
        Names routed under earlier rules still count as recent after a
        change: a dry run right after a PUT (before any new traffic) checks
        them against the rules now in force.
        """
        backends = yield self.backends("A", "B")
        proxy, admin = yield self.start(
            makeConfig(
                {"a": [backends["A"][1]], "b": [backends["B"][1]]}, rules=HELLO_A_WORLD_B
            )
        )
        yield self.upstreamsOf(proxy.proxyPort, b"hello")
        yield self.upstreamsOf(proxy.proxyPort, b"world")
        changed = "/svc/hello => /#/static/a;\n/svc/world => /#/static/a;\n"
        response = yield admin.put(RULES, changed, headers={"If-Match": etagOf(HELLO_A_WORLD_B)})
        self.assertEqual(response.code, 200)
        response = yield admin.post(RULES + "?dryRun=1", HELLO_A_WORLD_B)
        self.assertEqual(response.code, 200)
        body = response.json()
        self.assertEqual(body["checked"], 2)
        self.assertEqual(
            body["changes"],
            [{"name": "/svc/world", "old": "/#/static/a", "new": "/#/static/b"}],
        )

    @defer.inlineCallbacks
    def test_dryRunChecksTheMostRecentlySeenName(self):
        """
        A dry run checks the names seen most recently. C{hello} is routed,
        then 100 other names, then C{hello} again: it is the most recent
        name and must be among those checked.
        """
        backends = yield self.backends("A", "B")
        proxy, admin = yield self.start(
            makeConfig(
                {"hello": [backends["A"][1]], "b": [backends["B"][1]]},
                rules="/svc => /#/static;\n",
            )
        )
        yield self.upstreamsOf(proxy.proxyPort, b"hello")
        client = yield connectClient(self, proxy.proxyPort)
        for i in range(100):
            client.transport.write(b"GET / HTTP/1.1\r\nHost: other%d\r\n\r\n" % (i,))
            yield client.waitFor(i + 1)
        # Unknown to the namer, but routed (and so seen) all the same.
        self.assertEqual({r.status for r in client.responses}, {503})
        yield self.upstreamsOf(proxy.proxyPort, b"hello")
        response = yield admin.post(
            RULES + "?dryRun=1", "/svc => /#/static;\n/svc/hello => /#/static/b;\n"
        )
        self.assertEqual(response.code, 200)
        self.assertEqual(
            response.json()["changes"],
            [{"name": "/svc/hello", "old": "/#/static/hello",
              "new": "/#/static/b | /#/static/hello"}],
        )


    @defer.inlineCallbacks
    def test_badDryRuns(self):
        """
        A dry run of rules that do not parse, or use an unknown namer, is a
        400 with C{"valid": false} and the position; a POST without
        C{dryRun=1} is refused rather than taken as a change.
        """
        backends = yield self.backends("A", "B")
        proxy, admin = yield self.start(
            makeConfig({"a": [backends["A"][1]], "b": [backends["B"][1]]})
        )
        response = yield admin.post(RULES + "?dryRun=1", "/svc/hello => ;\n")
        self.assertEqual(response.code, 400)
        body = response.json()
        self.assertEqual((body["valid"], body["line"], body["column"]), (False, 1, 15))
        response = yield admin.post(RULES + "?dryRun=true", "/svc/hello => /#/nope/x;\n")
        self.assertEqual(response.code, 400)
        self.assertFalse(response.json()["valid"])
        for query in ("", "?dryRun=0", "?dryRun=1&dryRun=1"):
            response = yield admin.post(RULES + query, HELLO_B)
            self.assertEqual(response.code, 400, query)
        yield self.assertRules(admin, HELLO_A)


class StatsTests(AdminIntegrationTestCase):
    """
    C{/admin/stats} reads the counters the real routers record.
    """

    @defer.inlineCallbacks
    def test_countersOfHttpAndTcpRouters(self):
        """
        After three GETs for C{hello} and one for an unknown name, the HTTP
        router's stats count three 2xx answers for the bound name (the
        unknown one makes no record) and the connections; the TCP router is
        listed with its connections and no bound names.
        """
        backends = yield self.backends("A")
        port = backends["A"][1]
        config = makeConfig({"a": [port]}, rules="/svc => /#/static;\n") + (
            "  - name: db\n"
            "    protocol: tcp\n"
            # Listen strings are compared as text: this one differs from web's.
            '    listen: "tcp:0:interface=127.0.0.1:backlog=50"\n'
            "    destination: /#/static/a\n"
        )
        proxy, admin = yield self.start(config)
        yield self.upstreamsOf(proxy.proxyPort, b"a", 3)
        [missing] = yield self.fetch(proxy.proxyPort, b"nope")
        self.assertEqual(missing.status, 503)
        response = yield admin.get("/admin/stats")
        self.assertEqual(response.code, 200, response)
        self.assertEqual(response.header("content-type"), "application/json")
        body = response.json()
        self.assertIsInstance(body["time"], float)
        self.assertEqual(sorted(body["routers"]), ["db", "web"])
        web = body["routers"]["web"]
        self.assertEqual(web["connections"]["opened"], 2)
        # The proxy may not have seen the last close yet.
        self.assertIn(web["connections"]["closed"], (1, 2))
        self.assertEqual(list(web["boundNames"]), ["/#/static/a"])
        a = web["boundNames"]["/#/static/a"]
        self.assertEqual(a["requests"], 3)
        self.assertEqual(a["responses"]["2xx"], 3)
        self.assertEqual(a["duration"]["buckets"][-1], 3)
        self.assertEqual(len(a["duration"]["buckets"]), len(a["duration"]["bounds"]) + 1)
        self.assertGreater(a["duration"]["sum"], 0)
        self.assertEqual(
            body["routers"]["db"], {"connections": {"opened": 0, "closed": 0}, "boundNames": {}}
        )


class ExplainTests(AdminIntegrationTestCase):
    """
    Explain shows the delegation and the endpoints with their scores.
    """

    @defer.inlineCallbacks
    def setUp(self):
        backends = yield self.backends("A1", "A2", "B")
        self.ports = {label: port for label, (_, port) in backends.items()}
        self.proxy, self.admin = yield self.start(
            makeConfig(
                {"a": [self.ports["A1"], self.ports["A2"]], "b": [self.ports["B"]]},
                rules="/svc => /#/static;\n/svc/hello => /#/static/a;\n",
            )
        )
        # Traffic, so that the endpoints have measured latencies.
        yield self.upstreamsOf(self.proxy.proxyPort, b"hello", 4)

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

    @defer.inlineCallbacks
    def test_explainByHost(self):
        """
        C{host=hello} runs the identifier and explains C{/svc/hello}.
        """
        response = yield self.admin.get("/admin/routers/web/explain?host=hello")
        self.assertEqual(response.code, 200, response)
        self.assertEqual(response.header("content-type"), "application/json")
        self.assertExplainsHello(response.json())

    @defer.inlineCallbacks
    def test_explainByName(self):
        """
        C{name=/svc/hello} explains the same delegation.
        """
        response = yield self.admin.get("/admin/routers/web/explain?name=/svc/hello")
        self.assertEqual(response.code, 200, response)
        self.assertExplainsHello(response.json())

    @defer.inlineCallbacks
    def test_explainFollowsARuleChange(self):
        """
        After a PUT, explain shows the new delegation.
        """
        response = yield self.admin.put(
            RULES, "/svc => /#/static;\n", headers={"If-Match": "*"}
        )
        self.assertEqual(response.code, 200)
        response = yield self.admin.get("/admin/routers/web/explain?name=/svc/b")
        body = response.json()
        self.assertEqual(body["destination"], "/#/static/b")
        self.assertEqual(
            [ep["address"] for ep in body["endpoints"]["/#/static/b"]],
            ["127.0.0.1:%d" % (self.ports["B"],)],
        )

    @defer.inlineCallbacks
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
            response = yield self.admin.get(base + query)
            self.assertEqual(response.code, 400, query)
            self.assertIsInstance(response.json()["error"], str)
        response = yield self.admin.get("/admin/routers/nope/explain?name=/svc/hello")
        self.assertEqual(response.code, 404)


class DrainTests(AdminIntegrationTestCase):
    """
    Draining an endpoint takes it out of new traffic, and back.
    """

    @defer.inlineCallbacks
    def setUpDrain(self, balancer, handler=None):
        backends = yield self.backends("A", "B", handler=handler)
        self.factories = {label: factory for label, (factory, _) in backends.items()}
        self.addresses = {
            label: "127.0.0.1:%d" % (port,) for label, (_, port) in backends.items()
        }
        self.proxy, self.admin = yield self.start(
            makeConfig(
                {"hello": [backends["A"][1], backends["B"][1]]},
                rules="/svc => /#/static;\n",
                balancer=balancer,
            )
        )

    def drainBody(self, label):
        return {"router": "web", "name": "/#/static/hello", "address": self.addresses[label]}

    @defer.inlineCallbacks
    def endpointStates(self):
        response = yield self.admin.get("/admin/state")
        self.assertEqual(response.code, 200)
        endpoints = response.json()["routers"]["web"]["boundNames"]["/#/static/hello"][
            "endpoints"
        ]
        return {ep["address"]: ep for ep in endpoints}

    @defer.inlineCallbacks
    def drainAndUndrain(self, balancer):
        yield self.setUpDrain(balancer)
        port = self.proxy.proxyPort
        # The bound name must have been used before it can be drained.
        yield self.upstreamsOf(port, b"hello", 4)
        response = yield self.admin.post("/admin/endpoints/drain", self.drainBody("B"))
        self.assertEqual(response.code, 200, response)
        self.assertEqual(response.json(), {"draining": True})
        states = yield self.endpointStates()
        self.assertEqual(states[self.addresses["B"]]["state"], "draining")
        self.assertEqual(states[self.addresses["A"]]["state"], "live")

        metrics = yield self.admin.get("/metrics")
        up = {
            line.split('endpoint="')[1].split('"')[0]: line.rsplit(" ", 1)[1]
            for line in metrics.text.splitlines()
            if line.startswith("meshproxy_endpoint_up{")
        }
        self.assertEqual(up, {self.addresses["A"]: "1.0", self.addresses["B"]: "0.0"})

        before = len(self.factories["B"].requests)
        ups = yield self.upstreamsOf(port, b"hello", 50)
        self.assertEqual(ups, ["A"] * 50)
        self.assertEqual(len(self.factories["B"].requests), before)

        response = yield self.admin.post("/admin/endpoints/undrain", self.drainBody("B"))
        self.assertEqual(response.code, 200, response)
        self.assertEqual(response.json(), {"draining": False})
        states = yield self.endpointStates()
        self.assertEqual(
            {address: ep["state"] for address, ep in states.items()},
            {self.addresses["A"]: "live", self.addresses["B"]: "live"},
        )

    @defer.inlineCallbacks
    def test_drainAndUndrainRoundRobin(self):
        """
        With round robin, a drained endpoint gets none of 50 new requests;
        once undrained, both share the next 50 evenly.
        """
        yield self.drainAndUndrain("roundRobin")
        ups = yield self.upstreamsOf(self.proxy.proxyPort, b"hello", 50)
        self.assertEqual((ups.count("A"), ups.count("B")), (25, 25))

    @defer.inlineCallbacks
    def test_drainWithTheDefaultBalancer(self):
        """
        The default balancer (P2C over peak EWMA) skips a drained endpoint
        too. Which endpoint it prefers once both are live again depends on
        the latencies it measured, so only the drain is pinned here.
        """
        yield self.drainAndUndrain("ewma")

    @defer.inlineCallbacks
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

        yield self.setUpDrain("roundRobin", handler=handler)
        port = self.proxy.proxyPort
        slow = yield connectClient(self, port)
        slow.transport.write(b"GET /slow HTTP/1.1\r\nHost: hello\r\n\r\n")
        factory = yield arrived
        busy = "A" if factory is self.factories["A"] else "B"
        other = "B" if busy == "A" else "A"

        response = yield self.admin.post("/admin/endpoints/drain", self.drainBody(busy))
        self.assertEqual(response.code, 200)
        states = yield self.endpointStates()
        self.assertEqual(states[self.addresses[busy]]["state"], "draining")
        self.assertEqual(states[self.addresses[busy]]["pending"], 1)

        ups = yield self.upstreamsOf(port, b"hello", 10)
        self.assertEqual(ups, [other] * 10)

        proto, request = held[0]
        answer(proto, request)
        [response] = yield slow.waitFor(1)
        self.assertEqual(response.status, 200)
        self.assertEqual(response.body, b"? /slow")
        states = yield self.endpointStates()
        self.assertEqual(states[self.addresses[busy]]["pending"], 0)
        self.assertEqual(states[self.addresses[busy]]["state"], "draining")

    @defer.inlineCallbacks
    def test_drainSurvivesARuleChange(self):
        """
        A rule change that keeps routing to the same bound name keeps the
        endpoint drained.
        """
        yield self.setUpDrain("roundRobin")
        port = self.proxy.proxyPort
        yield self.upstreamsOf(port, b"hello", 2)
        response = yield self.admin.post("/admin/endpoints/drain", self.drainBody("B"))
        self.assertEqual(response.code, 200)
        response = yield self.admin.put(
            RULES, "/svc => /#/static;\n/svc/hi => /#/static/hello;\n", headers={"If-Match": "*"}
        )
        self.assertEqual(response.code, 200)
        ups = yield self.upstreamsOf(port, b"hi", 10)
        self.assertEqual(ups, ["A"] * 10)
        states = yield self.endpointStates()
        self.assertEqual(states[self.addresses["B"]]["state"], "draining")

    @defer.inlineCallbacks
    def test_undrainKeepsAnEjectedEndpointEjected(self):
        """
        Draining then undraining an endpoint that failure accrual had
        ejected gives it back to accrual still ejected: it gets no request
        before its ejection is over and a probe succeeds.
        """
        good = BackendFactory(okHandler(b"A"))
        goodPort = yield listenBackend(self, good)
        bad = BackendFactory(rawHandler=lambda proto, data: proto.transport.abortConnection())
        badPort = yield listenBackend(self, bad)
        self.addresses = {"A": "127.0.0.1:%d" % (goodPort,), "B": "127.0.0.1:%d" % (badPort,)}
        self.proxy, self.admin = yield self.start(
            makeConfig(
                {"hello": [goodPort, badPort]}, rules="/svc => /#/static;\n",
                balancer="roundRobin",
            )
        )
        # B fails every try (retried on A): five in a row eject it.
        ups = yield self.upstreamsOf(self.proxy.proxyPort, b"hello", 12)
        self.assertEqual(set(ups), {"A"})
        states = yield self.endpointStates()
        self.assertEqual(states[self.addresses["B"]]["state"], "ejected")
        failures = states[self.addresses["B"]]["failures"]

        response = yield self.admin.post("/admin/endpoints/drain", self.drainBody("B"))
        self.assertEqual(response.code, 200)
        response = yield self.admin.post("/admin/endpoints/undrain", self.drainBody("B"))
        self.assertEqual(response.code, 200)
        states = yield self.endpointStates()
        self.assertEqual(states[self.addresses["B"]]["state"], "ejected")
        yield self.upstreamsOf(self.proxy.proxyPort, b"hello", 6)
        states = yield self.endpointStates()
        self.assertEqual(states[self.addresses["B"]]["failures"], failures)


    @defer.inlineCallbacks
    def test_badDrainRequests(self):
        """
        An unknown router, bound name or address is a 404; a body that is
        not JSON or misses a field is a 400. Nothing is drained.
        """
        yield self.setUpDrain("roundRobin")
        yield self.upstreamsOf(self.proxy.proxyPort, b"hello", 2)
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
            response = yield self.admin.post("/admin/endpoints/drain", body)
            self.assertEqual(response.code, code, change)
            self.assertIsInstance(response.json()["error"], str)
        for raw in (b"", b"not json", b"[]", json.dumps({"router": "web"}).encode()):
            response = yield self.admin.post(
                "/admin/endpoints/drain", raw, headers={"Content-Type": "application/json"}
            )
            self.assertEqual(response.code, 400, raw)
        states = yield self.endpointStates()
        self.assertEqual({ep["state"] for ep in states.values()}, {"live"})


class AuthTests(AdminIntegrationTestCase):
    """
    With a token, changes need it; with protectReads, reads need it too.
    """

    @defer.inlineCallbacks
    def startWithToken(self, protectReads=False):
        backends = yield self.backends("A", "B")
        admin = {"token": TOKEN}
        if protectReads:
            admin["protectReads"] = True
        self.proxy, self.admin = yield self.start(
            makeConfig({"a": [backends["A"][1]], "b": [backends["B"][1]]}, admin=admin)
        )
        yield self.upstreamsOf(self.proxy.proxyPort, b"hello")
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

    @defer.inlineCallbacks
    def assertRefused(self, method, path, body, headers, token):
        response = yield self.admin.request(method, path, body=body, headers=headers, token=token)
        self.assertEqual(response.code, 401, (method, path, token))
        self.assertEqual(response.json(), {"error": "unauthorized"})
        self.assertEqual(response.header("www-authenticate"), "Bearer")

    @defer.inlineCallbacks
    def test_mutationsNeedTheToken(self):
        """
        Every PUT and POST without the token, with a wrong one, or with
        another scheme is a 401 and changes nothing; with the token, a PUT
        is accepted and recorded as made by the token holder.
        """
        yield self.startWithToken()
        for method, path, body, headers in self.mutations():
            for token in (None, "wrong", TOKEN + "x", TOKEN[:-1]):
                yield self.assertRefused(method, path, body, headers, token)
            response = yield self.admin.request(
                method, path, body=body,
                headers=dict(headers, Authorization="Basic " + TOKEN), token=None,
            )
            self.assertEqual(response.code, 401)
        self.assertEqual(self.shutdowns, [])
        yield self.assertRules(self.admin, HELLO_A)
        ups = yield self.upstreamsOf(self.proxy.proxyPort, b"hello")
        self.assertEqual(ups, ["A"])

        response = yield self.admin.put(RULES, HELLO_B, headers={"If-Match": "*"}, token=TOKEN)
        self.assertEqual(response.code, 200)
        response = yield self.admin.put(
            RULES, HELLO_A, headers={"If-Match": "*", "Authorization": "bearer " + TOKEN},
            token=None,
        )
        self.assertEqual(response.code, 200, "the scheme is case-insensitive")
        history = yield self.admin.get(RULES + "/history")
        self.assertEqual([e["who"] for e in history.json()], ["token", "token", "config"])

    @defer.inlineCallbacks
    def test_readsStayOpenWithoutProtectReads(self):
        """
        With a token but not protectReads, reads need no token.
        """
        yield self.startWithToken()
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
            response = yield self.admin.get(path)
            self.assertEqual(response.code, 200, path)

    @defer.inlineCallbacks
    def test_protectReadsGuardsReads(self):
        """
        With protectReads, reads of data need the token (a wrong one is a
        401); the probes and the dashboard page stay open.
        """
        yield self.startWithToken(protectReads=True)
        for path in (
            RULES,
            RULES + "/history",
            "/admin/routers/web/explain?host=hello",
            "/admin/state",
            "/metrics",
        ):
            for token in (None, "wrong"):
                yield self.assertRefused("GET", path, None, {}, token)
            response = yield self.admin.get(path, token=TOKEN)
            self.assertEqual(response.code, 200, path)
        for path in ("/live", "/ready", "/"):
            response = yield self.admin.get(path)
            self.assertEqual(response.code, 200, path)
        for method, path, body, headers in self.mutations():
            yield self.assertRefused(method, path, body, headers, None)
        self.assertEqual(self.shutdowns, [])


class ShutdownTests(AdminIntegrationTestCase):
    """
    POST /admin/shutdown answers first, then asks the runtime to stop.
    """

    @defer.inlineCallbacks
    def test_shutdownAnswers202ThenCallsTheRuntimeOnce(self):
        """
        The answer is 202 with the grace period; C{runtime.shutdown} is
        called once after it, however many times it is asked; the proxy
        still answers in the meantime (stopping is the runtime's job).
        """
        backends = yield self.backends("A")
        proxy, admin = yield self.start(
            makeConfig({"a": [backends["A"][1]]}, admin={"shutdownGrace": "3s"})
        )
        calls = []
        called = defer.Deferred()

        def shutdown():
            calls.append(True)
            called.callback(None)
            return defer.succeed(None)

        proxy.runtime.shutdown = shutdown
        response = yield admin.post("/admin/shutdown")
        self.assertEqual(response.code, 202)
        self.assertEqual(response.json(), {"shuttingDown": True, "grace": 3.0})
        yield called
        self.assertEqual(len(calls), 1)
        response = yield admin.post("/admin/shutdown")
        self.assertEqual(response.code, 202)
        ups = yield self.upstreamsOf(proxy.proxyPort, b"hello")
        self.assertEqual(ups, ["A"])
        self.assertEqual(len(calls), 1)

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

    @defer.inlineCallbacks
    def test_getIsNotAShutdown(self):
        """
        Only POST shuts down: GET is a 405 and the runtime is left alone.
        """
        backends = yield self.backends("A")
        proxy, admin = yield self.start(makeConfig({"a": [backends["A"][1]]}))
        calls = []
        proxy.runtime.shutdown = lambda: calls.append(True)
        response = yield admin.get("/admin/shutdown")
        self.assertEqual(response.code, 405)
        self.assertEqual(response.header("allow"), "POST")
        response = yield admin.get("/live")
        self.assertEqual(response.code, 200)
        self.assertEqual(calls, [])


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
