"""
Tests for L{meshproxy.balancing.p2c}.
"""

import math
import random
from collections import Counter

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from meshproxy.balancing.p2c import P2CPeakEwma, Penalty
from meshproxy.discovery.endpoints import Endpoint

A = Endpoint("10.0.0.1", 80)
B = Endpoint("10.0.0.2", 80)
C = Endpoint("10.0.0.3", 80)


class P2CPeakEwmaTests(SynchronousTestCase):
    """
    Tests for L{P2CPeakEwma}.
    """

    def setUp(self):
        self.clock = Clock()
        self.balancer = P2CPeakEwma(clock=self.clock, random=random.Random(7), decay=10.0)

    def nodes(self, *endpoints):
        """
        Give the balancer these endpoints.

        @return: their nodes, in the same order.
        """
        self.balancer.update(frozenset(endpoints))
        byEndpoint = {node.endpoint: node for node in self.balancer.nodes()}
        return [byEndpoint[endpoint] for endpoint in endpoints]

    def observe(self, node, seconds, success=True):
        """
        Run one request of the given latency on C{node}.
        """
        started = self.balancer.start(node)
        self.clock.advance(seconds)
        self.balancer.finish(node, started, success)

    def test_avoidsSlowNodeSequential(self):
        """
        With one node at 100ms and two at 1ms, one request at a time, the slow
        node gets under 10% of the picks once latencies are known.
        """
        slow, fast1, fast2 = self.nodes(A, B, C)
        latency = {slow: 0.1, fast1: 0.001, fast2: 0.001}
        for _ in range(50):
            node = self.balancer.pick()
            self.observe(node, latency[node])
        picks = Counter()
        for _ in range(1000):
            node = self.balancer.pick()
            picks[node] += 1
            self.observe(node, latency[node])
        self.assertLess(picks[slow], 100, picks)
        self.assertGreater(min(picks[fast1], picks[fast2]), 300, picks)

    def test_avoidsSlowNodeConcurrent(self):
        """
        With requests overlapping (five started every millisecond), the slow
        node still gets under 10% of the picks, while its requests in flight
        count against it.
        """
        slow, fast1, fast2 = self.nodes(A, B, C)
        latency = {slow: 0.1, fast1: 0.001, fast2: 0.001}
        picks = Counter()

        def send(count):
            node = self.balancer.pick()
            if count:
                picks[node] += 1
            started = self.balancer.start(node)
            self.clock.callLater(latency[node], self.balancer.finish, node, started, True)

        for tick in range(400):
            for _ in range(5):
                send(count=tick >= 200)
            self.clock.advance(0.001)
        self.assertEqual(sum(picks.values()), 1000)
        self.assertLess(picks[slow], 100, picks)

    def test_spreadsEvenLoadEvenly(self):
        """
        Equal nodes get about equal shares (ties go either way).
        """
        nodes = self.nodes(A, B, C)
        picks = Counter()
        for _ in range(3000):
            node = self.balancer.pick()
            picks[node] += 1
            self.observe(node, 0.001)
        for node in nodes:
            self.assertTrue(800 < picks[node] < 1200, picks)

    def test_twoDistinctChoices(self):
        """
        The two candidates are distinct: of two nodes, the better one always
        wins.
        """
        good, bad = self.nodes(A, B)
        self.observe(good, 0.001)
        self.observe(bad, 0.5)
        self.assertEqual({self.balancer.pick() for _ in range(200)}, {good})

    def test_peakRaisesAtOnce(self):
        """
        A latency above the cost replaces it at once.
        """
        (node,) = self.nodes(A)
        for _ in range(20):
            self.observe(node, 0.001)
        self.assertAlmostEqual(node.cost, 1.0)
        self.observe(node, 0.1)
        self.assertAlmostEqual(node.cost, 100.0)

    def test_peakDecaysOverDecay(self):
        """
        After a spike, fast responses bring the cost down by about a factor of
        M{e} per C{decay} seconds.
        """
        (node,) = self.nodes(A)
        self.observe(node, 0.1)
        for _ in range(100):
            self.clock.advance(0.099)
            self.observe(node, 0.001)
        # 10 seconds later: 1 + 99/e.
        self.assertTrue(35 < node.cost < 40, node.cost)
        for _ in range(400):
            self.clock.advance(0.099)
            self.observe(node, 0.001)
        self.assertTrue(node.cost < 2.0, node.cost)

    def test_ewmaWeighsByElapsedTime(self):
        """
        A lower latency is averaged in with weight C{1 - exp(-elapsed / decay)},
        elapsed being the time since the cost was last updated.
        """
        (node,) = self.nodes(A)
        self.observe(node, 0.1)
        self.clock.advance(4.0)
        self.observe(node, 0.02)
        w = math.exp(-4.02 / 10.0)
        self.assertAlmostEqual(node.cost, 100 * w + 20 * (1 - w))

    def test_loadDecaysWhileIdle(self):
        """
        The load a node is compared with decays with the time since its cost
        was updated, so that a node avoided for being slow is tried again
        eventually; the recorded cost itself is unchanged.
        """
        slow, fast = self.nodes(A, B)
        self.observe(slow, 0.1)
        self.assertAlmostEqual(self.balancer.load(slow, self.clock.seconds()), 100.0)
        self.assertAlmostEqual(
            self.balancer.load(slow, self.clock.seconds() + 10.0), 100.0 / math.e
        )
        self.assertAlmostEqual(slow.cost, 100.0)
        for _ in range(600):
            self.clock.advance(0.1)
            self.observe(fast, 0.002)
        self.assertIs(self.balancer.pick(), slow)

    def test_pendingMultipliesLoad(self):
        """
        The load is the cost times requests in flight plus one.
        """
        a, b = self.nodes(A, B)
        self.observe(a, 0.01)
        self.observe(b, 0.01)
        now = self.clock.seconds()
        base = self.balancer.load(a, now)
        self.balancer.start(a)
        self.balancer.start(a)
        self.assertAlmostEqual(self.balancer.load(a, now), 3 * base)
        self.assertIs(self.balancer.pick(), b)

    def test_newNodeIdleIsPreferred(self):
        """
        A node with no measurement and nothing in flight has no load.
        """
        known, new = self.nodes(A, B)
        self.observe(known, 0.005)
        self.assertEqual(self.balancer.load(new, self.clock.seconds()), 0.0)
        self.assertIs(self.balancer.pick(), new)

    def test_pendingPenaltyOnUnmeasuredNode(self):
        """
        A node with requests in flight and no latency measured yet carries
        the penalty, so a new instance is not flooded before it answers once.
        """
        known, new = self.nodes(A, B)
        self.observe(known, 0.05)
        for _ in range(3):
            self.balancer.start(known)
        self.balancer.start(new)
        self.assertEqual(self.balancer.load(new, self.clock.seconds()), Penalty + 1)
        self.assertEqual({self.balancer.pick() for _ in range(100)}, {known})

    def test_penaltyDividedByWeight(self):
        """
        The penalty, like any load, is divided by the weight.
        """
        (node,) = self.nodes(Endpoint("h", 80, 4))
        self.balancer.start(node)
        self.assertEqual(self.balancer.load(node, 0.0), (Penalty + 1) / 4)

    def test_weightDividesLoad(self):
        """
        A node of weight 2 wins against one of weight 1 unless its cost is
        more than twice as high.
        """
        light, heavy = self.nodes(A, Endpoint("10.0.0.2", 80, 2))
        self.observe(light, 0.010)
        self.observe(heavy, 0.015)
        now = self.clock.seconds()
        self.assertAlmostEqual(
            self.balancer.load(heavy, now), 7.5 * math.exp(-(now - heavy.stamp) / 10.0)
        )
        self.assertEqual({self.balancer.pick() for _ in range(50)}, {heavy})

    def test_failuresMeasuredToo(self):
        """
        A failed request's latency counts like a successful one's.
        """
        (node,) = self.nodes(A)
        self.observe(node, 0.03, success=False)
        self.assertAlmostEqual(node.cost, 30.0)

    def test_clockGoingBackwards(self):
        """
        A clock that goes backwards does not inflate the cost.
        """
        (node,) = self.nodes(A)
        self.observe(node, 0.1)
        node.stamp += 100.0
        started = self.balancer.start(node)
        self.balancer.finish(node, started, True)
        self.assertLessEqual(node.cost, 100.0)
        self.assertLessEqual(self.balancer.load(node, 0.0), 100.0)
