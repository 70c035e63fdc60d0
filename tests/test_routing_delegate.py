"""
Tests for L{meshproxy.routing.delegate}: binding, rewriting, loops and
work bounds, L{explain}, and evaluation of delegated trees.
"""

import json
import sys

from twisted.trial.unittest import SynchronousTestCase

from meshproxy.routing.delegate import (
    INET_PREFIX,
    BoundName,
    DelegationError,
    RoutingFailure,
    delegate,
    evaluate,
    explain,
    showBound,
)
from meshproxy.routing.dtab import Dtab
from meshproxy.routing.nametree import Alt, Empty, Fail, Leaf, Neg, Union, Weighted
from meshproxy.routing.path import Path

FS = Path.read("/#/fs")
K8S = Path.read("/#/k8s")
NAMERS = (FS, K8S)


def run(rules, name, namers=NAMERS, **kw):
    return delegate(Dtab.read(rules), Path.read(name), namers, **kw)


def shown(rules, name, namers=NAMERS, **kw):
    return showBound(run(rules, name, namers, **kw))


def bound(prefix, service, residual="/"):
    prefix = Path.read(prefix)
    return BoundName(
        id=prefix + Path((service,)),
        prefix=prefix,
        service=service,
        residual=Path.read(residual),
    )


class BoundNameTests(SynchronousTestCase):
    """
    L{BoundName} is a hashable value that knows its whole path.
    """

    def test_pathAndShow(self):
        name = bound("/#/fs", "users", "/v2/x")
        self.assertEqual(name.path, Path.read("/#/fs/users/v2/x"))
        self.assertEqual(name.show(), "/#/fs/users/v2/x")

    def test_hashable(self):
        self.assertEqual({bound("/#/fs", "a"): 1}[bound("/#/fs", "a")], 1)
        self.assertNotEqual(bound("/#/fs", "a"), bound("/#/fs", "a", "/x"))


class BindingTests(SynchronousTestCase):
    """
    Paths under a namer prefix, and C{/$/inet} paths, are bound.
    """

    def test_namerPathIsBound(self):
        self.assertEqual(run("", "/#/fs/users"), Leaf(bound("/#/fs", "users")))

    def test_residual(self):
        self.assertEqual(
            run("", "/#/fs/users/v2/extra"), Leaf(bound("/#/fs", "users", "/v2/extra"))
        )

    def test_longestNamerPrefixWins(self):
        deep = Path.read("/#/fs/special")
        self.assertEqual(
            run("", "/#/fs/special/x", (FS, deep)), Leaf(bound("/#/fs/special", "x"))
        )
        self.assertEqual(
            run("", "/#/fs/special/x", (deep, FS)), Leaf(bound("/#/fs/special", "x"))
        )

    def test_namerPrefixWithoutServiceIsNeg(self):
        self.assertIs(run("", "/#/fs"), Neg)

    def test_unknownNamerIsNeg(self):
        self.assertIs(run("", "/#/consul/users"), Neg)
        self.assertIs(run("", "/#"), Neg)

    def test_namerPathsAreNotRewritten(self):
        rules = "/# => /#/k8s; /#/fs => /#/k8s; /#/consul => /#/fs"
        self.assertEqual(run(rules, "/#/fs/users"), Leaf(bound("/#/fs", "users")))
        self.assertIs(run(rules, "/#/consul/users"), Neg)

    def test_namerPrefixesCanBeAnyIterable(self):
        self.assertEqual(
            run("", "/#/fs/a", iter([FS])), Leaf(bound("/#/fs", "a"))
        )
        self.assertIs(run("", "/#/fs/a", []), Neg)

    def test_badNamerPrefixes(self):
        self.assertRaises(ValueError, run, "", "/a", ["/#/fs"])
        self.assertRaises(ValueError, run, "", "/a", [Path.empty])

    def test_badArguments(self):
        self.assertRaises(TypeError, delegate, "/a=>/b", Path.read("/a"), NAMERS)
        self.assertRaises(TypeError, delegate, Dtab.empty, "/a", NAMERS)
        self.assertRaises(ValueError, delegate, Dtab.empty, Path.read("/a"), NAMERS, -1)
        self.assertRaises(ValueError, delegate, Dtab.empty, Path.read("/a"), NAMERS, 1.5)

    def test_zeroMaxDepthStillBinds(self):
        self.assertEqual(run("", "/#/fs/a", maxDepth=0), Leaf(bound("/#/fs", "a")))
        self.assertRaises(DelegationError, run, "/a => /#/fs/a", "/a", maxDepth=0)

    def test_inet(self):
        self.assertEqual(
            run("/svc/db => /$/inet/127.0.0.1/5432", "/svc/db"),
            Leaf(BoundName(
                id=Path.read("/$/inet/127.0.0.1/5432"),
                prefix=INET_PREFIX,
                service="127.0.0.1:5432",
                residual=Path.empty,
            )),
        )

    def test_inetResidualAndHostName(self):
        tree = run("/svc => /$/inet/db.local/80", "/svc/x/y")
        self.assertEqual(tree.value.service, "db.local:80")
        self.assertEqual(tree.value.residual, Path.read("/x/y"))
        self.assertEqual(tree.value.id, Path.read("/$/inet/db.local/80"))

    def test_inetIPv6(self):
        self.assertEqual(run("", "/$/inet/::1/8080").value.service, "::1:8080")

    def test_inetNormalisesPort(self):
        self.assertEqual(run("", "/$/inet/h/0080").value.service, "h:80")

    def test_badInetIsNeg(self):
        for name in ["/$/inet", "/$/inet/host", "/$/inet/host/http", "/$/inet/host/0",
                     "/$/inet/host/65536", "/$/inet/host/-1", "/$/nil", "/$/other/a/1", "/$"]:
            self.assertIs(run("/$ => /#/fs/x", name), Neg, name)


class RewriteTests(SynchronousTestCase):
    """
    Dentries rewrite names; later dentries win and negative results fall
    through to earlier ones.
    """

    def test_simpleRewrite(self):
        self.assertEqual(run("/svc => /#/fs", "/svc/users"), Leaf(bound("/#/fs", "users")))

    def test_residualIsCarriedThrough(self):
        self.assertEqual(
            run("/svc => /s; /s => /#/fs", "/svc/users/v2"),
            Leaf(bound("/#/fs", "users", "/v2")),
        )

    def test_noMatchIsNeg(self):
        self.assertIs(run("/svc => /#/fs", "/other/users"), Neg)
        self.assertIs(run("", "/svc/users"), Neg)

    def test_emptyNameMatchesNothing(self):
        self.assertIs(run("/svc => /#/fs", "/"), Neg)

    def test_rewriteToUnboundPathIsNeg(self):
        self.assertIs(run("/svc => /nowhere", "/svc/users"), Neg)

    def test_laterRulesWin(self):
        rules = "/svc => /#/fs; /svc/users => /#/k8s/users"
        self.assertEqual(
            run(rules, "/svc/users"),
            Alt((Leaf(bound("/#/k8s", "users")), Leaf(bound("/#/fs", "users")))),
        )

    def test_laterRuleThatIsNegFallsThrough(self):
        rules = "/svc => /#/fs; /svc => /nowhere; /svc/users => ~"
        self.assertEqual(run(rules, "/svc/users"), Leaf(bound("/#/fs", "users")))

    def test_laterFailStopsEarlierRules(self):
        rules = "/svc => /#/fs; /svc/users => !"
        self.assertIs(run(rules, "/svc/users"), Fail)
        self.assertEqual(run(rules, "/svc/other"), Leaf(bound("/#/fs", "other")))

    def test_failAfterAlternatives(self):
        rules = "/svc => /#/fs; /svc/users => /#/k8s/users | !"
        self.assertEqual(
            run(rules, "/svc/users"), Alt((Leaf(bound("/#/k8s", "users")), Fail))
        )

    def test_branchesAfterFailAreNotDelegated(self):
        # /loop would loop forever if it were delegated.
        rules = "/loop => /loop/x; /svc => ! | /loop"
        self.assertIs(run(rules, "/svc"), Fail)

    def test_altKeepsEveryBoundOption(self):
        rules = "/svc => /#/k8s | /#/fs"
        self.assertEqual(
            shown(rules, "/svc/users"), "/#/k8s/users | /#/fs/users"
        )

    def test_unionKeepsWeights(self):
        rules = "/svc => 0.9*/#/fs & 0.1*/#/k8s"
        self.assertEqual(
            run(rules, "/svc/users"),
            Union((
                Weighted(0.9, Leaf(bound("/#/fs", "users"))),
                Weighted(0.1, Leaf(bound("/#/k8s", "users"))),
            )),
        )

    def test_unionDropsNegBranches(self):
        rules = "/svc => 0.9*/#/fs & 0.1*/nowhere"
        self.assertEqual(run(rules, "/svc/users"), Leaf(bound("/#/fs", "users")))

    def test_unionOfNegIsNegAndFallsThrough(self):
        rules = "/svc => /#/fs; /svc => /x & /y"
        self.assertEqual(run(rules, "/svc/users"), Leaf(bound("/#/fs", "users")))

    def test_unionWithFailFails(self):
        self.assertIs(run("/svc => /#/fs & !", "/svc/users"), Fail)

    def test_emptyIsKept(self):
        self.assertIs(run("/svc => $", "/svc/users"), Empty)
        self.assertEqual(
            run("/svc => $ | /#/fs", "/svc/users"),
            Alt((Empty, Leaf(bound("/#/fs", "users")))),
        )

    def test_negLiteral(self):
        self.assertIs(run("/svc => ~", "/svc/users"), Neg)

    def test_wildcards(self):
        rules = "/svc => /#/fs; /svc/*/canary => /#/k8s"
        self.assertEqual(
            shown(rules, "/svc/users/canary/x"),
            "/#/k8s/x | /#/fs/users/canary/x",
        )

    def test_wildcardDoesNotMatchShorterPath(self):
        self.assertIs(run("/svc/* => /#/fs", "/svc"), Neg)

    def test_multiStepChain(self):
        rules = """
            /host => /#/fs;
            /srv  => /host;
            /svc  => /srv/prod | /srv/dev;
            /srv/prod => ~;
        """
        # "/srv/prod => ~" is negative, so /srv/prod/users falls through
        # to "/srv => /host".
        self.assertEqual(shown(rules, "/svc/users"), "/#/fs/prod/users | /#/fs/dev/users")
        self.assertEqual(shown(rules + "/srv/prod => !;", "/svc/users"), "!")

    def test_duplicatesAreCollapsed(self):
        rules = "/svc => /#/fs | /#/fs; /svc/users => /#/fs/users"
        self.assertEqual(run(rules, "/svc/users"), Leaf(bound("/#/fs", "users")))

    def test_dtabConcatenationOverrides(self):
        base = Dtab.read("/svc => /#/fs")
        override = Dtab.read("/svc/users => /#/k8s/users")
        self.assertEqual(
            showBound(delegate(base + override, Path.read("/svc/users"), NAMERS)),
            "/#/k8s/users | /#/fs/users",
        )
        self.assertEqual(
            showBound(delegate(override + base, Path.read("/svc/users"), NAMERS)),
            "/#/fs/users | /#/k8s/users",
        )


class LoopTests(SynchronousTestCase):
    """
    Delegation terminates with L{DelegationError} on loops and bounds its
    work on rules that fan out.
    """

    def test_twoRuleLoop(self):
        error = self.assertRaises(DelegationError, run, "/a => /b; /b => /a", "/a")
        self.assertTrue(
            error.message.startswith("delegation exceeded 100 rewrites: loop?"), error.message
        )
        self.assertIn("/a -> /b -> /a", error.message)
        self.assertEqual(error.path, Path.read("/a"))
        self.assertEqual(len(error.chain), 101)
        self.assertEqual(str(error), error.message)

    def test_selfLoop(self):
        self.assertRaises(DelegationError, run, "/a => /a", "/a")

    def test_growingPath(self):
        error = self.assertRaises(DelegationError, run, "/a => /a/x", "/a")
        # Long paths in the message are cut short.
        self.assertLess(len(error.message), 600)

    def test_loopBehindAnAlternativeStillFails(self):
        self.assertRaises(DelegationError, run, "/svc => /#/fs | /a; /a => /a", "/svc/x")

    def test_maxDepthCountsRewrites(self):
        rules = "/a0=>/a1;/a1=>/a2;/a2=>/a3;/a3=>/a4;/a4=>/#/fs/x"
        self.assertEqual(shown(rules, "/a0", maxDepth=5), "/#/fs/x")
        error = self.assertRaises(DelegationError, run, rules, "/a0", maxDepth=4)
        self.assertIn("exceeded 4 rewrites", error.message)

    def test_everyMatchingRuleCountsAsARewrite(self):
        rules = "/a => /#/fs/x; /a => /#/fs/y; /a => /#/fs/z"
        self.assertEqual(shown(rules, "/a", maxDepth=3), "/#/fs/z | /#/fs/y | /#/fs/x")
        self.assertRaises(DelegationError, run, rules, "/a", maxDepth=2)

    def test_altFanOutIsLinear(self):
        # Without memoisation this is 2**60 delegations.
        rules = ";".join(f"/a{i} => /a{i + 1} | /a{i + 1}" for i in range(60))
        rules += "; /a60 => /#/fs/x"
        self.assertEqual(run(rules, "/a0"), Leaf(bound("/#/fs", "x")))

    def test_unionFanOutIsLinear(self):
        rules = ";".join(f"/a{i} => /a{i + 1} & 2*/a{i + 1}" for i in range(60))
        rules += "; /a60 => /#/fs/x"
        self.assertEqual(run(rules, "/a0"), Leaf(bound("/#/fs", "x")))

    def test_diamondsAreDelegatedOnce(self):
        rules = ";".join(f"/a{i} => /b{i} | /c{i}; /b{i} => /a{i + 1}; /c{i} => /a{i + 1}"
                         for i in range(30))
        rules += "; /a30 => /#/fs/x"
        self.assertEqual(run(rules, "/a0", maxDepth=100), Leaf(bound("/#/fs", "x")))

    def test_distinctFanOutIsCutOffByTheRewriteLimit(self):
        # Each step doubles the number of distinct paths: only the total
        # rewrite limit keeps this bounded.
        rules = ";".join(f"/a{i} => /a{i + 1}/l | /a{i + 1}/r" for i in range(60))
        rules += "; /a60 => /#/fs/x"
        self.assertRaises(DelegationError, run, rules, "/a0")

    def test_hugeMaxDepthDoesNotCrash(self):
        # Python's own recursion limit is hit before the rewrite limit: still
        # a DelegationError, not a RecursionError.
        limit = sys.getrecursionlimit()
        error = self.assertRaises(
            DelegationError, run, "/a => /b; /b => /a", "/a", maxDepth=limit * 10
        )
        self.assertIn("/a", error.message)
        self.assertEqual(error.path, Path.read("/a"))

    def test_deepTreesInALoop(self):
        rules = "/a => " + "(" * 32 + "/a | /b" + ")" * 32
        self.assertRaises(DelegationError, run, rules, "/a", maxDepth=100000)


class ExplainTests(SynchronousTestCase):
    """
    L{explain} records each step of a delegation as JSON-ready dicts.
    """

    def explain(self, rules, name, namers=NAMERS, **kw):
        result = explain(Dtab.read(rules), Path.read(name), namers, **kw)
        # Everything must be JSON-ready.
        self.assertEqual(json.loads(json.dumps(result)), result)
        return result

    def test_boundNameAtTheRoot(self):
        self.assertEqual(
            self.explain("", "/#/fs/users/v2"),
            {
                "path": "/#/fs/users/v2",
                "dentry": None,
                "result": "/#/fs/users/v2",
                "children": [],
                "bound": {
                    "id": "/#/fs/users",
                    "prefix": "/#/fs",
                    "service": "users",
                    "residual": "/v2",
                },
            },
        )

    def test_oneStep(self):
        self.assertEqual(
            self.explain("/svc => /#/fs", "/svc/users"),
            {
                "path": "/svc/users",
                "dentry": None,
                "result": "/#/fs/users",
                "children": [
                    {
                        "path": "/#/fs/users",
                        "dentry": "/svc=>/#/fs",
                        "result": "/#/fs/users",
                        "children": [],
                        "bound": {
                            "id": "/#/fs/users",
                            "prefix": "/#/fs",
                            "service": "users",
                            "residual": "/",
                        },
                    }
                ],
            },
        )

    def test_noRuleMatches(self):
        self.assertEqual(
            self.explain("/svc => /#/fs", "/other"),
            {"path": "/other", "dentry": None, "result": "~", "children": [],
             "neg": "no rule matches"},
        )

    def test_unknownNamerAndSystemPath(self):
        self.assertEqual(self.explain("", "/#/consul/x")["neg"], "no namer for this path")
        self.assertIn("/$/inet", self.explain("", "/$/nil")["neg"])

    def test_laterRulesFirstWithTheirDentries(self):
        rules = "/svc => /#/fs; /svc/users => /#/k8s/users | /nowhere"
        root = self.explain(rules, "/svc/users")
        self.assertEqual(root["result"], "/#/k8s/users | /#/fs/users")
        self.assertEqual(
            [(c["path"], c["dentry"], c["result"]) for c in root["children"]],
            [
                ("/#/k8s/users", "/svc/users=>/#/k8s/users | /nowhere", "/#/k8s/users"),
                ("/nowhere", "/svc/users=>/#/k8s/users | /nowhere", "~"),
                ("/#/fs/users", "/svc=>/#/fs", "/#/fs/users"),
            ],
        )
        self.assertEqual(root["children"][1]["neg"], "no rule matches")

    def test_multiStepChain(self):
        rules = "/host => /#/fs; /svc => /host"
        root = self.explain(rules, "/svc/users")
        (child,) = root["children"]
        self.assertEqual((child["path"], child["dentry"]), ("/host/users", "/svc=>/host"))
        (grandchild,) = child["children"]
        self.assertEqual(grandchild["path"], "/#/fs/users")
        self.assertEqual(grandchild["dentry"], "/host=>/#/fs")
        self.assertEqual(grandchild["bound"]["service"], "users")

    def test_specialsAreChildren(self):
        root = self.explain("/svc => /#/fs; /svc => $ | ~", "/svc/users")
        self.assertEqual(
            root["children"][:2],
            [
                {"path": None, "dentry": "/svc=>$ | ~", "result": "$", "children": [],
                 "empty": "the rule says $ (empty)"},
                {"path": None, "dentry": "/svc=>$ | ~", "result": "~", "children": [],
                 "neg": "the rule says ~ (negative)"},
            ],
        )
        self.assertEqual(root["result"], "$ | /#/fs/users")

    def test_failStopsTheTrace(self):
        root = self.explain("/svc => /#/fs; /svc => !", "/svc/users")
        self.assertEqual(root["result"], "!")
        self.assertEqual(
            root["children"],
            [{"path": None, "dentry": "/svc=>!", "result": "!", "children": [],
              "fail": "the rule says ! (fail)"}],
        )

    def test_repeatedPathsAreMarked(self):
        rules = "/a => /b | /c; /b => /d; /c => /d; /d => /#/fs/x"
        root = self.explain(rules, "/a")
        b, c = root["children"]
        self.assertNotIn("repeated", b["children"][0])
        self.assertEqual(b["children"][0]["children"][0]["path"], "/#/fs/x")
        self.assertEqual(
            c["children"][0],
            {"path": "/d", "dentry": "/c=>/d", "result": "/#/fs/x", "children": [],
             "repeated": True},
        )

    def test_resultMatchesDelegate(self):
        rules = """
            /svc => /#/fs;
            /svc => 0.9*/#/k8s & 0.1*/#/fs/canary | /nowhere;
            /svc/*/v2 => /svc/v2;
            /svc/v2 => ~;
        """
        for name in ["/svc/a", "/svc/a/v2", "/svc/v2/v2", "/x", "/#/fs/a"]:
            self.assertEqual(
                self.explain(rules, name)["result"], shown(rules, name), name
            )

    def test_loopIsReportedNotRaised(self):
        root = self.explain("/a => /b; /b => /a", "/a", maxDepth=4)
        self.assertTrue(root["error"].startswith("delegation exceeded 4 rewrites"))
        self.assertIsNone(root["result"])
        # The explored chain is there to see the loop.
        self.assertEqual(root["children"][0]["path"], "/b")
        self.assertEqual(root["children"][0]["children"][0]["path"], "/a")


class EvaluateDelegatedTests(SynchronousTestCase):
    """
    L{evaluate} (re-exported here) picks a bound name from a delegated tree.
    """

    def test_fallsBackWhenPreferredNamerIsEmpty(self):
        tree = run("/svc => /#/fs; /svc => /#/k8s", "/svc/users")
        k8s, fs = bound("/#/k8s", "users"), bound("/#/fs", "users")
        self.assertEqual(evaluate(tree, lambda b: False, lambda: 0.0), k8s)
        self.assertEqual(evaluate(tree, lambda b: b == k8s, lambda: 0.0), fs)
        self.assertIsNone(evaluate(tree, lambda b: True, lambda: 0.0))

    def test_failRaisesRoutingFailure(self):
        tree = run("/svc => /#/fs; /svc/users => !", "/svc/users")
        self.assertRaises(RoutingFailure, evaluate, tree, lambda b: False, lambda: 0.0)

    def test_weightedSplit(self):
        tree = run("/svc => 0.75*/#/fs & 0.25*/#/k8s", "/svc/users")
        self.assertEqual(
            evaluate(tree, lambda b: False, lambda: 0.74).prefix, FS
        )
        self.assertEqual(
            evaluate(tree, lambda b: False, lambda: 0.76).prefix, K8S
        )
