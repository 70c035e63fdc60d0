"""
The per-endpoint record a balancer keeps.
"""

from __future__ import annotations

from typing import Any

from meshproxy.discovery.endpoints import Endpoint

__all__ = ["Node", "EligibleStates"]

# States in which a node may be picked. "ejected" (failure accrual took it
# out) and "draining" (an operator asked it to finish in-flight requests
# and take no more) are not; "probing" is, unless its one probe request is
# already in flight (Node.probeInFlight): the ejection logic
# (meshproxy.resilience.accrual) sets that flag when the probe is picked.
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
    @ivar ejectedUntil: while C{"ejected"}, the clock time at which the node
        is to be probed; otherwise C{None}.
    @ivar backoffStep: ejections since the node was last revived; the next
        ejection lasts about C{backoffMin * 2 ** backoffStep} seconds.
    @ivar probeInFlight: whether the one probe request of a C{"probing"}
        node was sent and has not been judged yet; such a node is not
        eligible (unless the balancer panics).
    @ivar accrual: the failure accrual policy's own data for this node (a
        counter, a ring of outcomes...), C{None} until it records something.
    @ivar latencySince: for latency ejection, the clock time since which the
        node's cost has been seen above the threshold, or C{None}.
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
        "ejectedUntil",
        "backoffStep",
        "probeInFlight",
        "accrual",
        "latencySince",
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
        self.ejectedUntil: float | None = None
        self.backoffStep = 0
        self.probeInFlight = False
        self.accrual: Any = None
        self.latencySince: float | None = None

    def __repr__(self) -> str:
        return (
            f"<Node {self.endpoint} {self.state} pending={self.pending} "
            f"cost={self.cost:.3f}ms requests={self.requests}>"
        )
