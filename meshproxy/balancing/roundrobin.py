"""
Round robin over the eligible nodes.
"""

from __future__ import annotations

from meshproxy.balancing.base import Balancer
from meshproxy.balancing.node import Node

__all__ = ["RoundRobin"]


class RoundRobin(Balancer):
    """
    Send to each eligible node in turn. Weights are not taken into account.

    The rotation starts at a random node, so that many proxies started at
    once do not all send their first request to the same instance.
    """

    def refresh(self) -> None:
        """
        See L{meshproxy.balancing.interfaces.IBalancer.refresh}.
        """
        super().refresh()
        n = len(self._eligible)
        self._next = self._random.randrange(n) if n else 0

    def pick(self) -> Node | None:
        """
        See L{meshproxy.balancing.interfaces.IBalancer.pick}.
        """
        nodes = self._eligible
        n = len(nodes)
        if not n:
            return None
        i = self._next
        if i >= n:
            i = 0
        self._next = i + 1
        return nodes[i]
