"""
The per-endpoint record a balancer keeps.
"""

from __future__ import annotations

from typing import Any

from meshproxy.discovery.endpoints import Endpoint

__all__ = ["Node", "EligibleStates"]

# States in which a node may be picked. "ejected" (failure accrual took it
# out) and "draining" (an operator asked it to finish in-flight requests
# and take no more) are not; "probing" is, the ejection logic deciding how
# much traffic a probing node gets.
EligibleStates = frozenset({"live", "probing"})


class Node:
    """
    One endpoint as a balancer sees it: its load and its statistics.

    A mutable record updated on every request with plain attribute
    arithmetic; the balancer owns it, the HTTP layer may read any field and
    keeps its connection pool in C{payload}. Whoever changes C{state} calls
    the balancer's C{refresh()}.

    @ivar endpoint: the L{Endpoint}; replaced (with C{weight}) when the namer
        reports a new weight for the same address.
    @ivar weight: the endpoint's weight, positive.
    @ivar pending: requests started and not finished.
    @ivar cost: peak EWMA of the latency, in milliseconds; 0.0 until the
        first request finishes.
    @ivar stamp: clock time (seconds) of the last update of C{cost}.
    @ivar requests: requests started.
    @ivar successes: requests finished successfully.
    @ivar failures: requests finished unsuccessfully.
    @ivar consecutiveFailures: failures since the last success.
    @ivar state: C{"live"}, C{"ejected"}, C{"probing"} or C{"draining"}.
    @ivar payload: free for the owner; C{None} until it sets it.
    """

    __slots__ = (
        "endpoint",
        "weight",
        "pending",
        "cost",
        "stamp",
        "requests",
        "successes",
        "failures",
        "consecutiveFailures",
        "state",
        "payload",
    )

    def __init__(self, endpoint: Endpoint, stamp: float = 0.0) -> None:
        """
        @param endpoint: the endpoint this node stands for.
        @param stamp: the clock time the node is created at.
        """
        self.endpoint = endpoint
        self.weight: float = endpoint.weight
        self.pending = 0
        self.cost = 0.0
        self.stamp = stamp
        self.requests = 0
        self.successes = 0
        self.failures = 0
        self.consecutiveFailures = 0
        self.state = "live"
        self.payload: Any = None

    def __repr__(self) -> str:
        return (
            f"<Node {self.endpoint} {self.state} pending={self.pending} "
            f"cost={self.cost:.3f}ms requests={self.requests}>"
        )
