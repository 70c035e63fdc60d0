"""
Power of two choices over the number of requests in flight.
"""

from __future__ import annotations

from meshproxy.balancing.base import Balancer
from meshproxy.balancing.node import Node

__all__ = ["LeastLoaded"]


class LeastLoaded(Balancer):
    """
    Pick two distinct eligible nodes at random and send to the one with fewer
    requests in flight relative to its weight (C{pending / weight}); on a
    tie, either.
    """

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
        # Inline Balancer.load: pick runs on every request.
        return a if a.pending / a.weight <= b.pending / b.weight else b
