"""
Times read once per event and handed on: a timeout added at a time the
caller read, and a latency sample taken at the time of the read its
response head came in.
"""

from __future__ import annotations

import random

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from meshproxy.balancing.roundrobin import RoundRobin
from meshproxy.discovery.endpoints import Endpoint
from meshproxy.http.timeouts import TimeoutQueue


class TimeoutAtGivenTimeTests(SynchronousTestCase):
    def test_deadlineFromTheGivenTime(self) -> None:
        """
        A timeout added with C{now} fires C{duration} after it, not after
        the clock's time.
        """
        clock = Clock()
        clock.advance(5.0)
        fired: list[float] = []
        queue = TimeoutQueue(clock, 10.0)
        timeout = queue.add(lambda: fired.append(clock.seconds()), 4.0)
        self.assertEqual(timeout.getTime(), 14.0)
        clock.advance(8.999)
        self.assertEqual(fired, [])
        clock.advance(0.001)
        self.assertEqual(fired, [14.0])


class MeasuredAtGivenTimeTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.balancer = RoundRobin(clock=self.clock, random=random.Random(1))
        self.balancer.update(frozenset([Endpoint("10.0.0.1", 80)]))
        [self.node] = self.balancer.nodes()

    def test_latencyUntilTheGivenTime(self) -> None:
        """
        C{measured} with C{now} takes the latency from the start until
        C{now}, whatever the clock says, and stamps the node with it.
        """
        start = self.balancer.start(self.node)
        self.clock.advance(0.5)
        self.balancer.measured(self.node, start, start + 0.02)
        self.assertAlmostEqual(self.node.cost, 20.0)
        self.assertEqual(self.node.stamp, start + 0.02)

    def test_latencyUntilTheClock(self) -> None:
        """
        Without C{now}, the clock is read.
        """
        start = self.balancer.start(self.node)
        self.clock.advance(0.03)
        self.balancer.measured(self.node, start)
        self.assertAlmostEqual(self.node.cost, 30.0)
