"""
Tests for the panic floor of L{meshproxy.balancing.base.Balancer} and the
eligibility of probing nodes, run against each balancer.
"""

import random

from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from meshproxy.balancing.leastloaded import LeastLoaded
from meshproxy.balancing.p2c import P2CPeakEwma
from meshproxy.balancing.roundrobin import RoundRobin
from meshproxy.discovery.endpoints import Endpoint

A = Endpoint("10.0.0.1", 80)
B = Endpoint("10.0.0.2", 80)
C = Endpoint("10.0.0.3", 80)
D = Endpoint("10.0.0.4", 80)


class PanicTestsMixin:
    """
    Tests every balancer must pass; mixed into a test case with a
    C{balancerClass}.
    """

    balancerClass = None

    def setUp(self):
        self.clock = Clock()
        self.balancer = self.balancerClass(clock=self.clock, random=random.Random(1))
        self.balancer.update(frozenset({A, B, C}))
        self.nodes = {node.endpoint: node for node in self.balancer.nodes()}
        self.logged = []
        globalLogPublisher.addObserver(self.logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.logged.append)

    def picks(self, n=200):
        return {self.balancer.pick() for _ in range(n)}

    def setStates(self, **states):
        for name, state in states.items():
            self.nodes[globals()[name]].state = state
        self.balancer.refresh()

    def panicLogs(self):
        return [e for e in self.logged if "panic" in e.get("log_format", "")]

    def test_offByDefault(self):
        """
        Without a panic share, ejected nodes are never picked, even when
        none is left.
        """
        self.assertEqual(self.balancer.panicShare, 0.0)
        self.setStates(A="ejected", B="ejected", C="ejected")
        self.assertIsNone(self.balancer.pick())
        self.assertFalse(self.balancer.panicking)
        self.assertEqual(self.balancer.panics, 0)

    def test_constructorArgument(self):
        """
        The panic share may be given to the constructor; out of 0 to 1 it
        is refused.
        """
        balancer = self.balancerClass(clock=self.clock, panicShare=0.5)
        self.assertEqual(balancer.panicShare, 0.5)
        self.assertRaises(ValueError, self.balancerClass, clock=self.clock, panicShare=1.1)
        self.assertRaises(ValueError, self.balancerClass, clock=self.clock, panicShare=-0.1)

    def test_aboveFloor(self):
        """
        With a share of 0.5 and 1 of 3 nodes ejected, 2 are eligible, the
        floor (ceil(1.5) = 2) is met: no panic.
        """
        self.balancer.panicShare = 0.5
        self.setStates(A="ejected")
        self.assertEqual(self.picks(), {self.nodes[B], self.nodes[C]})
        self.assertFalse(self.balancer.panicking)

    def test_belowFloorUsesAll(self):
        """
        With a share of 0.5 and 2 of 3 nodes ejected, every node is used,
        the balancer says it panics, counts it and logs it once.
        """
        self.balancer.panicShare = 0.5
        self.setStates(A="ejected", B="ejected")
        self.assertEqual(self.picks(), set(self.nodes.values()))
        self.assertTrue(self.balancer.panicking)
        self.assertEqual(self.balancer.panics, 1)
        self.balancer.refresh()
        self.balancer.refresh()
        self.assertEqual(self.balancer.panics, 1)
        (event,) = [e for e in self.panicLogs() if e["log_level"].name == "warn"]
        self.assertEqual((event["eligible"], event["total"], event["floor"]), (1, 3, 2))

    def test_leaveAndReenter(self):
        """
        Leaving panic is logged; entering it again counts a second panic.
        """
        self.balancer.panicShare = 0.5
        self.setStates(A="ejected", B="ejected")
        self.setStates(A="live")
        self.assertFalse(self.balancer.panicking)
        self.assertNotIn(self.nodes[B], self.picks())
        self.setStates(C="ejected")
        self.assertTrue(self.balancer.panicking)
        self.assertEqual(self.balancer.panics, 2)
        self.assertEqual(len(self.panicLogs()), 3)

    def test_drainingNeverUsed(self):
        """
        Draining nodes neither count towards the floor nor are used in
        panic.
        """
        self.balancer.update(frozenset({A, B, C, D}))
        self.nodes = {node.endpoint: node for node in self.balancer.nodes()}
        self.balancer.panicShare = 0.5
        # 2 draining: the floor is ceil(0.5 * 2) = 1, and C is live.
        self.setStates(A="draining", B="draining", D="ejected")
        self.assertFalse(self.balancer.panicking)
        self.assertEqual(self.picks(), {self.nodes[C]})
        self.setStates(C="ejected")
        self.assertTrue(self.balancer.panicking)
        self.assertEqual(self.picks(), {self.nodes[C], self.nodes[D]})

    def test_allDraining(self):
        """
        With every node draining there is nothing to panic over: no node is
        picked.
        """
        self.balancer.panicShare = 1.0
        self.setStates(A="draining", B="draining", C="draining")
        self.assertIsNone(self.balancer.pick())
        self.assertFalse(self.balancer.panicking)

    def test_emptyBalancer(self):
        """
        A balancer without nodes does not panic.
        """
        balancer = self.balancerClass(clock=self.clock, panicShare=1.0)
        balancer.refresh()
        self.assertIsNone(balancer.pick())
        self.assertFalse(balancer.panicking)

    def test_panicOnUpdate(self):
        """
        Panic is also decided when the set of endpoints changes.
        """
        self.balancer.panicShare = 0.5
        self.setStates(A="ejected")
        self.assertFalse(self.balancer.panicking)
        self.balancer.update(frozenset({A}))
        self.assertTrue(self.balancer.panicking)
        self.assertEqual(self.picks(), {self.nodes[A]})

    def test_probeInFlightNotEligible(self):
        """
        A probing node is eligible until its probe is in flight; a probing
        node counts as eligible towards the floor.
        """
        self.balancer.panicShare = 0.5
        self.setStates(A="probing", B="ejected")
        self.assertFalse(self.balancer.panicking)
        self.assertIn(self.nodes[A], self.picks())
        self.nodes[A].probeInFlight = True
        self.balancer.refresh()
        self.assertTrue(self.balancer.panicking)
        self.balancer.panicShare = 0.0
        self.balancer.refresh()
        self.assertEqual(self.picks(), {self.nodes[C]})


class P2CPeakEwmaPanicTests(PanicTestsMixin, SynchronousTestCase):
    """
    The panic tests, for L{P2CPeakEwma}.
    """

    balancerClass = P2CPeakEwma


class RoundRobinPanicTests(PanicTestsMixin, SynchronousTestCase):
    """
    The panic tests, for L{RoundRobin}.
    """

    balancerClass = RoundRobin


class LeastLoadedPanicTests(PanicTestsMixin, SynchronousTestCase):
    """
    The panic tests, for L{LeastLoaded}.
    """

    balancerClass = LeastLoaded
