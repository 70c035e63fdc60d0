"""
Power of two choices over peak EWMA latency: the default balancer.
"""

from __future__ import annotations

from math import exp

from meshproxy.balancing.base import Balancer
from meshproxy.balancing.node import Node

__all__ = ["P2CPeakEwma", "Penalty"]

# The load, in milliseconds, of a node with requests in flight and no
# latency measured yet: far above any real cost, so that a new instance gets
# one request at a time until the first one answers, instead of the flood a
# cost of 0 would attract (Finagle's PeakEwma does the same).
Penalty = 1e6


class P2CPeakEwma(Balancer):
    """
    Pick two distinct eligible nodes at random and send to the one with the
    lower load, C{cost * (pending + 1) / weight}, where C{cost} is the peak
    EWMA latency (see L{Balancer}).

    As in Finagle, the cost a node is compared with has also decayed for the
    time since its last update, as if idle time were observed as zero
    latency: a node that stopped getting traffic because it was slow is
    tried again after a while (its cost has decayed by a factor of M{e} every
    C{decay} seconds), instead of being starved forever.
    """

    def load(self, node: Node, now: float) -> float:
        """
        The number C{pick} compares, smaller being better.

        @param node: a node of this balancer.
        @param now: the current time from the balancer's clock.
        @return: C{cost * (pending + 1) / weight} with the cost decayed to
            C{now}; a node without any latency measured yet is 0 when idle,
            and C{(Penalty + pending) / weight} when busy.
        """
        cost = node.cost
        if cost == 0.0:
            pending = node.pending
            return (Penalty + pending) / node.weight if pending else 0.0
        elapsed = now - node.stamp
        if elapsed > 0.0:
            cost *= exp(-elapsed / self.decay)
        return cost * (node.pending + 1) / node.weight

    def pick(self) -> Node | None:
        """
        See L{meshproxy.balancing.interfaces.IBalancer.pick}.
        """
        nodes = self._eligible
        n = len(nodes)
        if n < 2:
            return nodes[0] if n else None
        rand = self._random.random
        i = int(rand() * n)
        j = int(rand() * (n - 1))
        if j >= i:
            j += 1
        a = nodes[i]
        b = nodes[j]
        now = self._clock.seconds()
        return a if self.load(a, now) <= self.load(b, now) else b
