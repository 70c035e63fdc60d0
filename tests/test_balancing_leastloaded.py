"""
Tests for L{meshproxy.balancing.leastloaded}.
"""

import random
from collections import Counter

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from meshproxy.balancing.leastloaded import LeastLoaded
from meshproxy.discovery.endpoints import Endpoint

A = Endpoint("10.0.0.1", 80)
B = Endpoint("10.0.0.2", 80)
C = Endpoint("10.0.0.3", 80)


class LeastLoadedTests(SynchronousTestCase):
    """
    Tests for L{LeastLoaded}.
    """

    def setUp(self):
        self.balancer = LeastLoaded(clock=Clock(), random=random.Random(5))

    def nodes(self, *endpoints):
        """
        Give the balancer these endpoints.

        @return: their nodes, in the same order.
        """
        self.balancer.update(frozenset(endpoints))
        byEndpoint = {node.endpoint: node for node in self.balancer.nodes()}
        return [byEndpoint[endpoint] for endpoint in endpoints]

    def test_prefersIdle(self):
        """
        Of two nodes, the one with fewer requests in flight is picked.
        """
        busy, idle = self.nodes(A, B)
        for _ in range(3):
            self.balancer.start(busy)
        self.assertEqual({self.balancer.pick() for _ in range(50)}, {idle})

    def test_busiestNeverPicked(self):
        """
        With distinct candidates, the single busiest of three nodes is never
        picked.
        """
        busy, a, b = self.nodes(A, B, C)
        self.balancer.start(busy)
        picks = Counter(self.balancer.pick() for _ in range(300))
        self.assertEqual(picks[busy], 0)
        self.assertGreater(min(picks[a], picks[b]), 100)

    def test_ignoresLatency(self):
        """
        Latency does not matter, only requests in flight.
        """
        slow, fast = self.nodes(A, B)
        started = self.balancer.start(slow)
        self.balancer._clock.advance(5)
        self.balancer.finish(slow, started, True)
        self.balancer.start(fast)
        self.assertIs(self.balancer.pick(), slow)

    def test_weightDividesPending(self):
        """
        Requests in flight are divided by the weight.
        """
        light, heavy = self.nodes(A, Endpoint("10.0.0.2", 80, 4))
        self.balancer.start(light)
        for _ in range(3):
            self.balancer.start(heavy)
        self.assertEqual({self.balancer.pick() for _ in range(50)}, {heavy})

    def test_keepsLoadBalanced(self):
        """
        Picking and starting without finishing spreads requests evenly.
        """
        nodes = self.nodes(A, B, C)
        for _ in range(300):
            self.balancer.start(self.balancer.pick())
        pendings = sorted(node.pending for node in nodes)
        self.assertLessEqual(pendings[-1] - pendings[0], 2)
