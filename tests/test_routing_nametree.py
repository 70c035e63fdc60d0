"""
Tests for L{meshproxy.routing.nametree}: construction, L{show},
L{simplify}, L{mapTree}, L{leaves} and the request-time L{evaluate}.
"""

import copy
import pickle

from twisted.trial.unittest import SynchronousTestCase

from meshproxy.routing.nametree import (
    Alt,
    Empty,
    Fail,
    Leaf,
    Neg,
    RoutingFailure,
    Union,
    Weighted,
    evaluate,
    leaves,
    mapTree,
    show,
    simplify,
)
from meshproxy.routing.path import Path


def p(text):
    return Leaf(Path.read(text))


class FakeRandom:
    """
    Stands in for C{random.random}: returns the given values in order and
    counts the calls.
    """

    def __init__(self, *values):
        self.values = list(values)
        self.calls = 0

    def __call__(self):
        self.calls += 1
        return self.values.pop(0)


def noRandom():
    raise AssertionError("random must not be called")


def neverEmpty(value):
    return False


class ConstructionTests(SynchronousTestCase):
    """
    Trees validate what they hold.
    """

    def test_singletons(self):
        self.assertEqual(repr(Neg), "Neg")
        self.assertEqual(repr(Fail), "Fail")
        self.assertEqual(repr(Empty), "Empty")
        self.assertNotEqual(Neg, Fail)
        self.assertRaises(AttributeError, setattr, Neg, "symbol", "x")

    def test_singletonsSurvivePickleAndCopy(self):
        for special in (Neg, Fail, Empty):
            self.assertIs(pickle.loads(pickle.dumps(special)), special)
            self.assertIs(copy.deepcopy(special), special)
        tree = Alt((p("/a"), Neg, Fail))
        self.assertEqual(pickle.loads(pickle.dumps(tree)), tree)

    def test_altAcceptsIterables(self):
        self.assertEqual(Alt([p("/a"), Neg]).trees, (p("/a"), Neg))

    def test_altRejectsNonTrees(self):
        self.assertRaises(TypeError, Alt, [Path.read("/a")])
        self.assertRaises(TypeError, Alt, ["/a"])

    def test_unionRejectsUnweightedBranches(self):
        self.assertRaises(TypeError, Union, [p("/a")])

    def test_weightedValidatesWeight(self):
        self.assertEqual(Weighted(1, p("/a")).weight, 1.0)
        self.assertEqual(Weighted(0, p("/a")).weight, 0.0)
        self.assertRaises(ValueError, Weighted, -1, p("/a"))
        self.assertRaises(ValueError, Weighted, float("nan"), p("/a"))
        self.assertRaises(ValueError, Weighted, float("inf"), p("/a"))
        self.assertRaises(TypeError, Weighted, 1, Path.read("/a"))

    def test_treesAreHashableValues(self):
        one = Alt((p("/a"), Union((Weighted(0.5, p("/b")), Weighted(0.5, Empty)))))
        two = Alt((p("/a"), Union((Weighted(0.5, p("/b")), Weighted(0.5, Empty)))))
        self.assertEqual(one, two)
        self.assertEqual(hash(one), hash(two))
        self.assertNotEqual(one, Alt((p("/a"),)))


class ShowTests(SynchronousTestCase):
    """
    L{show} writes trees in dtab syntax with the fewest parentheses.
    """

    def test_leavesAndSpecials(self):
        self.assertEqual(show(p("/a/b")), "/a/b")
        self.assertEqual(show(Neg), "~")
        self.assertEqual(show(Fail), "!")
        self.assertEqual(show(Empty), "$")

    def test_alt(self):
        self.assertEqual(show(Alt((p("/a"), p("/b"), Neg))), "/a | /b | ~")

    def test_unionWeightsAndDefaultWeight(self):
        tree = Union((Weighted(0.9, p("/a")), Weighted(1.0, p("/b")), Weighted(2, p("/c"))))
        self.assertEqual(show(tree), "0.9*/a & /b & 2*/c")

    def test_smallWeightsUseExponents(self):
        tree = Union((Weighted(1e-05, p("/a")), Weighted(1, p("/b"))))
        self.assertEqual(show(tree), "1e-05*/a & /b")

    def test_unionInsideAltNeedsNoParentheses(self):
        tree = Alt((Union((Weighted(1, p("/a")), Weighted(1, p("/b")))), p("/c")))
        self.assertEqual(show(tree), "/a & /b | /c")

    def test_altInsideUnionIsParenthesised(self):
        tree = Union((Weighted(0.5, Alt((p("/a"), p("/b")))), Weighted(1, p("/c"))))
        self.assertEqual(show(tree), "0.5*(/a | /b) & /c")

    def test_nestedAltIsParenthesised(self):
        tree = Alt((Alt((p("/a"), p("/b"))), p("/c")))
        self.assertEqual(show(tree), "(/a | /b) | /c")

    def test_nestedUnionIsParenthesised(self):
        inner = Union((Weighted(1, p("/a")), Weighted(1, p("/b"))))
        tree = Union((Weighted(1, inner), Weighted(1, p("/c"))))
        self.assertEqual(show(tree), "(/a & /b) & /c")

    def test_degenerateTreesShowAsNeg(self):
        self.assertEqual(show(Alt(())), "~")
        self.assertEqual(show(Union(())), "~")

    def test_customLeafShow(self):
        tree = Alt((Leaf(1), Leaf(2)))
        self.assertEqual(show(tree, lambda v: f"<{v}>"), "<1> | <2>")


class SimplifyTests(SynchronousTestCase):
    """
    L{simplify} gives an equivalent smaller tree.
    """

    def test_altDropsNeg(self):
        self.assertEqual(simplify(Alt((Neg, p("/a"), Neg, p("/b")))), Alt((p("/a"), p("/b"))))

    def test_altOfOneIsTheBranch(self):
        self.assertEqual(simplify(Alt((Neg, p("/a")))), p("/a"))

    def test_altOfNothingIsNeg(self):
        self.assertIs(simplify(Alt((Neg, Neg))), Neg)
        self.assertIs(simplify(Alt(())), Neg)

    def test_altStopsAtFail(self):
        self.assertEqual(simplify(Alt((p("/a"), Fail, p("/b")))), Alt((p("/a"), Fail)))
        self.assertIs(simplify(Alt((Neg, Fail, p("/b")))), Fail)

    def test_altKeepsEmpty(self):
        self.assertEqual(simplify(Alt((Empty, p("/a")))), Alt((Empty, p("/a"))))

    def test_altFlattensAndDedupes(self):
        tree = Alt((Alt((p("/a"), p("/b"))), p("/a"), Alt((p("/c"), p("/b")))))
        self.assertEqual(simplify(tree), Alt((p("/a"), p("/b"), p("/c"))))

    def test_unionDropsNegAndEmpty(self):
        tree = Union(
            (Weighted(1, Neg), Weighted(2, p("/a")), Weighted(3, Empty), Weighted(4, p("/b")))
        )
        self.assertEqual(simplify(tree), Union((Weighted(2, p("/a")), Weighted(4, p("/b")))))

    def test_unionOfOneIsTheBranch(self):
        self.assertEqual(simplify(Union((Weighted(0.1, p("/a")), Weighted(1, Neg)))), p("/a"))

    def test_unionOfNothing(self):
        self.assertIs(simplify(Union((Weighted(1, Neg), Weighted(1, Neg)))), Neg)
        self.assertIs(simplify(Union((Weighted(1, Neg), Weighted(1, Empty)))), Empty)
        self.assertIs(simplify(Union(())), Neg)

    def test_unionWithFailFails(self):
        tree = Union((Weighted(1, p("/a")), Weighted(1, Fail)))
        self.assertIs(simplify(tree), Fail)

    def test_unionMergesDuplicates(self):
        tree = Union((Weighted(1, p("/a")), Weighted(2, p("/b")), Weighted(3, p("/a"))))
        self.assertEqual(simplify(tree), Union((Weighted(4, p("/a")), Weighted(2, p("/b")))))

    def test_nestedSimplification(self):
        tree = Alt((Union((Weighted(1, Neg), Weighted(1, Alt((Neg, p("/a")))))), Neg))
        self.assertEqual(simplify(tree), p("/a"))

    def test_fixpoint(self):
        tree = Alt(
            (p("/a"), Union((Weighted(1, p("/b")), Weighted(2, Alt((p("/c"), Empty))))), Fail)
        )
        once = simplify(tree)
        self.assertEqual(simplify(once), once)


class MapAndLeavesTests(SynchronousTestCase):
    """
    L{mapTree} and L{leaves} walk every leaf.
    """

    tree = Alt((p("/a"), Union((Weighted(2, p("/b")), Weighted(1, Neg))), Fail, p("/c")))

    def test_leavesInOrder(self):
        self.assertEqual([str(v) for v in leaves(self.tree)], ["/a", "/b", "/c"])

    def test_mapKeepsStructure(self):
        mapped = mapTree(self.tree, lambda path: path + Path.read("/x"))
        self.assertEqual(show(mapped), "/a/x | 2*/b/x & ~ | ! | /c/x")

    def test_mapOfSpecialIsItself(self):
        self.assertIs(mapTree(Neg, str), Neg)


class EvaluateTests(SynchronousTestCase):
    """
    L{evaluate} picks one leaf value for a request.
    """

    def test_leaf(self):
        self.assertEqual(evaluate(Leaf("a"), neverEmpty, noRandom), "a")

    def test_emptyLeafIsNothing(self):
        self.assertIsNone(evaluate(Leaf("a"), lambda v: v == "a", noRandom))

    def test_negAndEmptyAreNothing(self):
        self.assertIsNone(evaluate(Neg, neverEmpty, noRandom))
        self.assertIsNone(evaluate(Empty, neverEmpty, noRandom))

    def test_failRaises(self):
        self.assertRaises(RoutingFailure, evaluate, Fail, neverEmpty, noRandom)

    def test_altTakesFirstLive(self):
        tree = Alt((Leaf("a"), Leaf("b")))
        self.assertEqual(evaluate(tree, neverEmpty, noRandom), "a")

    def test_altFallsThroughNegAndEmpty(self):
        tree = Alt((Neg, Empty, Leaf("a"), Leaf("b"), Leaf("c")))
        self.assertEqual(evaluate(tree, lambda v: v in ("a", "b"), noRandom), "c")

    def test_altAllEmptyIsNothing(self):
        tree = Alt((Leaf("a"), Leaf("b")))
        self.assertIsNone(evaluate(tree, lambda v: True, noRandom))

    def test_altStopsAtFail(self):
        tree = Alt((Leaf("a"), Fail, Leaf("b")))
        self.assertEqual(evaluate(tree, neverEmpty, noRandom), "a")
        self.assertRaises(RoutingFailure, evaluate, tree, lambda v: v == "a", noRandom)

    def test_unionWeightedChoice(self):
        tree = Union((Weighted(0.9, Leaf("a")), Weighted(0.1, Leaf("b"))))
        self.assertEqual(evaluate(tree, neverEmpty, FakeRandom(0.0)), "a")
        self.assertEqual(evaluate(tree, neverEmpty, FakeRandom(0.89)), "a")
        self.assertEqual(evaluate(tree, neverEmpty, FakeRandom(0.9)), "b")
        self.assertEqual(evaluate(tree, neverEmpty, FakeRandom(0.999999)), "b")

    def test_unionCallsRandomOnce(self):
        tree = Union((Weighted(1, Leaf("a")), Weighted(1, Leaf("b")), Weighted(1, Leaf("c"))))
        random = FakeRandom(0.5)
        self.assertEqual(evaluate(tree, neverEmpty, random), "b")
        self.assertEqual(random.calls, 1)

    def test_unionRenormalisesOverLiveBranches(self):
        tree = Union((Weighted(1, Leaf("a")), Weighted(2, Leaf("b")), Weighted(1, Leaf("c"))))

        def isEmpty(v):
            return v == "b"

        self.assertEqual(evaluate(tree, isEmpty, FakeRandom(0.49)), "a")
        self.assertEqual(evaluate(tree, isEmpty, FakeRandom(0.5)), "c")

    def test_unionWithOneLiveBranchDoesNotDraw(self):
        tree = Union((Weighted(1, Leaf("a")), Weighted(1, Neg), Weighted(5, Leaf("b"))))
        self.assertEqual(evaluate(tree, lambda v: v == "b", noRandom), "a")

    def test_unionAllEmptyIsNothing(self):
        tree = Union((Weighted(1, Leaf("a")), Weighted(1, Empty)))
        self.assertIsNone(evaluate(tree, lambda v: True, noRandom))

    def test_zeroWeightIsNeverChosenWhenOthersWeigh(self):
        tree = Union((Weighted(0, Leaf("a")), Weighted(1, Leaf("b")), Weighted(0, Leaf("c"))))
        for point in (0.0, 0.5, 0.999999):
            self.assertEqual(evaluate(tree, neverEmpty, FakeRandom(point)), "b")

    def test_allZeroWeightsChooseUniformly(self):
        tree = Union((Weighted(0, Leaf("a")), Weighted(0, Leaf("b"))))
        self.assertEqual(evaluate(tree, neverEmpty, FakeRandom(0.2)), "a")
        self.assertEqual(evaluate(tree, neverEmpty, FakeRandom(0.7)), "b")

    def test_unionRoundingPicksLastWeightedBranch(self):
        # A random() a hair under 1 times a total whose float sum
        # overshoots must still land on a real branch.
        tree = Union((Weighted(0.1, Leaf("a")), Weighted(0.2, Leaf("b")), Weighted(0, Leaf("c"))))
        self.assertEqual(evaluate(tree, neverEmpty, FakeRandom(0.9999999999999999)), "b")

    def test_unionBranchFailureRaises(self):
        tree = Union((Weighted(1, Leaf("a")), Weighted(1, Fail)))
        self.assertRaises(RoutingFailure, evaluate, tree, neverEmpty, FakeRandom(0.0))

    def test_nested(self):
        tree = Alt((
            Union((Weighted(1, Leaf("a")), Weighted(1, Alt((Leaf("b"), Leaf("c")))))),
            Leaf("d"),
        ))

        def isEmpty(v):
            return v in ("a", "b")

        self.assertEqual(evaluate(tree, isEmpty, noRandom), "c")
        self.assertEqual(evaluate(tree, lambda v: v != "d", noRandom), "d")
        random = FakeRandom(0.75)
        self.assertEqual(evaluate(tree, neverEmpty, random), "b")
        self.assertEqual(random.calls, 1)

    def test_routingFailureMessage(self):
        error = self.assertRaises(RoutingFailure, evaluate, Fail, neverEmpty, noRandom)
        self.assertIn("!", str(error))
