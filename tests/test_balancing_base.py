"""
Tests for what every balancer shares (L{meshproxy.balancing.base}) and for
L{meshproxy.balancing.node}, run against each balancer.
"""

import random

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from meshproxy.balancing.interfaces import IBalancer
from meshproxy.balancing.leastloaded import LeastLoaded
from meshproxy.balancing.node import Node
from meshproxy.balancing.p2c import P2CPeakEwma
from meshproxy.balancing.roundrobin import RoundRobin
from meshproxy.discovery.endpoints import Endpoint

A = Endpoint("10.0.0.1", 80)
B = Endpoint("10.0.0.2", 80)
C = Endpoint("10.0.0.3", 80)


class NodeTests(SynchronousTestCase):
    """
    Tests for L{Node}.
    """

    def test_initial(self):
        """
        A new node is live, idle, unmeasured, with its endpoint's weight.
        """
        node = Node(Endpoint("h", 80, 2), 5.0)
        self.assertEqual(
            (node.weight, node.pending, node.cost, node.stamp, node.state, node.payload),
            (2.0, 0, 0.0, 5.0, "live", None),
        )
        self.assertEqual(
            (node.requests, node.successes, node.failures, node.consecutiveFailures), (0, 0, 0, 0)
        )

    def test_slots(self):
        """
        A node has no C{__dict__}: a misspelt attribute is an error, not a
        silent new field.
        """
        node = Node(A)
        self.assertRaises(AttributeError, setattr, node, "pendng", 1)


class BalancerTestsMixin:
    """
    Tests every balancer must pass; mixed into a test case with a
    C{balancerClass}.
    """

    balancerClass = None

    def setUp(self):
        self.clock = Clock()
        self.added = []
        self.removed = []
        self.balancer = self.balancerClass(
            clock=self.clock,
            random=random.Random(1),
            onAdd=self.added.append,
            onRemove=self.removed.append,
        )

    def test_providesIBalancer(self):
        """
        The balancer provides L{IBalancer}.
        """
        self.assertTrue(verifyObject(IBalancer, self.balancer))

    def test_defaults(self):
        """
        The balancer can be built with a clock only.
        """
        balancer = self.balancerClass(clock=self.clock)
        balancer.update(frozenset({A}))
        self.assertEqual(balancer.pick().endpoint, A)

    def test_emptyPicksNone(self):
        """
        With no node, or after every node went away, C{pick} gives C{None}.
        """
        self.assertIsNone(self.balancer.pick())
        self.balancer.update(frozenset({A}))
        self.balancer.update(frozenset())
        self.assertIsNone(self.balancer.pick())
        self.assertEqual(self.balancer.nodes(), ())

    def test_singleNode(self):
        """
        With one node, C{pick} gives it.
        """
        self.balancer.update(frozenset({A}))
        self.assertEqual({self.balancer.pick().endpoint for _ in range(10)}, {A})

    def test_updateCreatesNodes(self):
        """
        C{update} creates one live node per endpoint and calls C{onAdd} with
        each.
        """
        self.balancer.update(frozenset({A, B}))
        nodes = self.balancer.nodes()
        self.assertIsInstance(nodes, tuple)
        self.assertEqual({node.endpoint for node in nodes}, {A, B})
        self.assertEqual(sorted(self.added, key=id), sorted(nodes, key=id))
        self.assertEqual(self.removed, [])

    def test_updateKeepsSurvivingNodes(self):
        """
        Nodes of endpoints that remain are kept, with their statistics and
        payload; vanished ones are passed to C{onRemove}, new ones to
        C{onAdd}.
        """
        self.balancer.update(frozenset({A, B}))
        nodeA = next(n for n in self.balancer.nodes() if n.endpoint == A)
        nodeB = next(n for n in self.balancer.nodes() if n.endpoint == B)
        nodeA.payload = "pool"
        started = self.balancer.start(nodeA)
        self.clock.advance(0.01)
        self.balancer.finish(nodeA, started, True)
        del self.added[:]
        self.balancer.update(frozenset({A, C}))
        self.assertIn(nodeA, self.balancer.nodes())
        self.assertEqual((nodeA.requests, nodeA.successes, nodeA.payload), (1, 1, "pool"))
        self.assertAlmostEqual(nodeA.cost, 10.0)
        self.assertEqual(self.removed, [nodeB])
        self.assertEqual([n.endpoint for n in self.added], [C])
        self.assertEqual({n.endpoint for n in self.balancer.nodes()}, {A, C})
        for _ in range(20):
            self.assertIsNot(self.balancer.pick(), nodeB)

    def test_updateSameSetChangesNothing(self):
        """
        Updating with the same set keeps every node and calls no callback.
        """
        self.balancer.update(frozenset({A, B}))
        nodes = set(self.balancer.nodes())
        del self.added[:]
        self.balancer.update(frozenset({A, B}))
        self.assertEqual(set(self.balancer.nodes()), nodes)
        self.assertEqual((self.added, self.removed), ([], []))

    def test_weightChangeKeepsNode(self):
        """
        An endpoint whose weight changed keeps its node, with the new
        endpoint and weight.
        """
        self.balancer.update(frozenset({A}))
        (node,) = self.balancer.nodes()
        node.requests = 7
        heavier = Endpoint(A.host, A.port, 3)
        self.balancer.update(frozenset({heavier}))
        self.assertEqual(self.balancer.nodes(), (node,))
        self.assertEqual((node.endpoint, node.weight, node.requests), (heavier, 3.0, 7))
        self.assertEqual((len(self.added), self.removed), (1, []))

    def test_failingCallbackLogged(self):
        """
        A callback that raises is logged; the update still happens and the
        other callbacks are still called.
        """
        calls = []

        def onAdd(node):
            calls.append(node)
            raise RuntimeError("callback")

        balancer = self.balancerClass(clock=self.clock, onAdd=onAdd)
        balancer.update(frozenset({A, B}))
        self.assertEqual(len(calls), 2)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 2)
        self.assertEqual(len(balancer.nodes()), 2)

    def test_ineligibleStatesSkipped(self):
        """
        Ejected and draining nodes are never picked once C{refresh} is
        called; probing nodes are; with no eligible node, C{pick} gives
        C{None}.
        """
        self.balancer.update(frozenset({A, B, C}))
        byEndpoint = {n.endpoint: n for n in self.balancer.nodes()}
        byEndpoint[A].state = "ejected"
        byEndpoint[B].state = "draining"
        byEndpoint[C].state = "probing"
        self.balancer.refresh()
        self.assertEqual({self.balancer.pick() for _ in range(30)}, {byEndpoint[C]})
        byEndpoint[C].state = "ejected"
        self.balancer.refresh()
        self.assertIsNone(self.balancer.pick())
        self.assertEqual(len(self.balancer.nodes()), 3)
        byEndpoint[A].state = "live"
        self.balancer.refresh()
        self.assertIs(self.balancer.pick(), byEndpoint[A])

    def test_ineligibleStaysOutAcrossUpdates(self):
        """
        A node's state survives an update, and so does its exclusion.
        """
        self.balancer.update(frozenset({A, B}))
        nodeA = next(n for n in self.balancer.nodes() if n.endpoint == A)
        nodeA.state = "ejected"
        self.balancer.refresh()
        self.balancer.update(frozenset({A, B, C}))
        self.assertNotIn(nodeA, {self.balancer.pick() for _ in range(50)})

    def test_startFinishCounters(self):
        """
        C{start} counts a request in flight and gives the clock's time;
        C{finish} ends it and counts successes, failures and consecutive
        failures.
        """
        self.balancer.update(frozenset({A}))
        (node,) = self.balancer.nodes()
        self.clock.advance(3)
        started = self.balancer.start(node)
        self.assertEqual(started, 3.0)
        self.assertEqual((node.pending, node.requests), (1, 1))
        self.balancer.finish(node, started, False)
        for success in [False, True, False]:
            self.balancer.finish(node, self.balancer.start(node), success)
        self.assertEqual(
            (node.pending, node.requests, node.successes, node.failures, node.consecutiveFailures),
            (0, 4, 1, 3, 1),
        )

    def test_finishOnRemovedNode(self):
        """
        A request in flight on a node that was removed can still finish.
        """
        self.balancer.update(frozenset({A}))
        node = self.balancer.pick()
        started = self.balancer.start(node)
        self.balancer.update(frozenset())
        self.balancer.finish(node, started, True)
        self.assertEqual((node.pending, node.successes), (0, 1))

    def test_costMeasuredInMilliseconds(self):
        """
        The latency cost is kept in milliseconds, and stamped with the time of
        its update.
        """
        self.balancer.update(frozenset({A}))
        (node,) = self.balancer.nodes()
        started = self.balancer.start(node)
        self.clock.advance(0.25)
        self.balancer.finish(node, started, True)
        self.assertAlmostEqual(node.cost, 250.0)
        self.assertEqual(node.stamp, 0.25)

    def test_badDecay(self):
        """
        A non-positive decay is refused.
        """
        self.assertRaises(ValueError, self.balancerClass, clock=self.clock, decay=0)


class P2CPeakEwmaCommonTests(BalancerTestsMixin, SynchronousTestCase):
    """
    The common tests, for L{P2CPeakEwma}.
    """

    balancerClass = P2CPeakEwma


class RoundRobinCommonTests(BalancerTestsMixin, SynchronousTestCase):
    """
    The common tests, for L{RoundRobin}.
    """

    balancerClass = RoundRobin


class LeastLoadedCommonTests(BalancerTestsMixin, SynchronousTestCase):
    """
    The common tests, for L{LeastLoaded}.
    """

    balancerClass = LeastLoaded
