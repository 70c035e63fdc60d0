"""
Tests for L{meshproxy.balancing.roundrobin}.
"""

import random

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from meshproxy.balancing.roundrobin import RoundRobin
from meshproxy.discovery.endpoints import Endpoint

ENDPOINTS = frozenset(Endpoint("10.0.0.%d" % (i,), 80) for i in range(1, 5))


class RoundRobinTests(SynchronousTestCase):
    """
    Tests for L{RoundRobin}.
    """

    def setUp(self):
        self.balancer = RoundRobin(clock=Clock(), random=random.Random(3))
        self.balancer.update(ENDPOINTS)

    def test_rotates(self):
        """
        Each run of as many picks as nodes gives every node once, in the same
        order each time.
        """
        picks = [self.balancer.pick() for _ in range(12)]
        self.assertEqual(set(picks[:4]), set(self.balancer.nodes()))
        self.assertEqual(picks[:4], picks[4:8])
        self.assertEqual(picks[:4], picks[8:])

    def test_ignoresLoad(self):
        """
        Requests in flight and latency do not change the order.
        """
        first = [self.balancer.pick() for _ in range(4)]
        for node in first:
            self.balancer.start(node)
        self.assertEqual([self.balancer.pick() for _ in range(4)], first)

    def test_skipsIneligible(self):
        """
        After C{refresh}, the rotation covers only the eligible nodes.
        """
        nodes = self.balancer.nodes()
        nodes[0].state = "ejected"
        nodes[1].state = "draining"
        self.balancer.refresh()
        picks = [self.balancer.pick() for _ in range(6)]
        self.assertEqual(set(picks), set(nodes[2:]))
        self.assertEqual(picks[0::2], [picks[0]] * 3)

    def test_startsAtRandomNode(self):
        """
        Balancers with different random sources start at different nodes.
        """
        firsts = set()
        for seed in range(20):
            balancer = RoundRobin(clock=Clock(), random=random.Random(seed))
            balancer.update(ENDPOINTS)
            firsts.add(balancer.pick().endpoint)
        self.assertGreater(len(firsts), 1)

    def test_shrinkingSet(self):
        """
        When the set shrinks below the position reached, the rotation goes on
        over the remaining nodes.
        """
        for _ in range(3):
            self.balancer.pick()
        remaining = frozenset(sorted(ENDPOINTS)[:2])
        self.balancer.update(remaining)
        self.assertEqual({self.balancer.pick().endpoint for _ in range(4)}, remaining)
