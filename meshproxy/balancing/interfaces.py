"""
The interface between the router and a load balancer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from zope.interface import Attribute, Interface

if TYPE_CHECKING:
    from meshproxy.balancing.node import Node

__all__ = ["IBalancer"]


class IBalancer(Interface):
    """
    Chooses, request by request, which endpoint of one service gets the
    request, and keeps the statistics the choice is based on.

    The router calls, around each request::

        node = balancer.pick()          # None: no eligible endpoint (503)
        started = balancer.start(node)
        ...                             # send, receive, classify
        balancer.finish(node, started, success)

    L{pick}, L{start} and L{finish} run on every request: implementations
    keep them to a few attribute updates.
    """

    def update(endpoints: frozenset) -> None:
        """
        Replace the set of endpoints (the namer's latest
        L{meshproxy.discovery.endpoints.Addr}).

        Endpoints whose address remains keep their
        L{meshproxy.balancing.node.Node} and its statistics (a new weight is
        applied to it); new addresses get a new node, passed to the
        constructor's C{onAdd} callback; nodes of vanished addresses are
        dropped and passed to C{onRemove}. Requests in flight on a removed
        node may still be finished.

        @param endpoints: a frozenset of
            L{meshproxy.discovery.endpoints.Endpoint}.
        """

    def pick() -> Node | None:
        """
        Choose the node for one request among the eligible ones (state
        C{"live"} or C{"probing"}).

        @return: the node, or C{None} if no node is eligible.
        """

    panicking = Attribute(
        "Whether the balancer is in panic: too few endpoints are eligible, so"
        " it uses every endpoint that is not draining (see the panic floor)."
    )

    def pickAvoiding(avoid: set | None) -> Node | None:
        """
        L{pick}, but a node not in C{avoid} when one is eligible: for a
        retry after failures on the nodes in C{avoid}.

        @return: the node, or C{None} if no node is eligible.
        """

    def hasEligible() -> bool:
        """
        Whether L{pick} would find a node. A query: it changes nothing (a
        round-robin cursor does not move).
        """

    def load(node: Node, now: float) -> float:
        """
        The score the balancer compares when it picks, smaller being
        better, as of C{now} (for the admin API's explain).
        """

    def nodes() -> tuple:
        """
        @return: every node, eligible or not, as a tuple.
        """

    def refresh() -> None:
        """
        Recompute which nodes are eligible: the owner calls it after changing
        the C{state} of a node.
        """

    def start(node: Node) -> float:
        """
        Record that a request was sent to C{node}.

        @return: the start time, from the balancer's clock, to give back to
            L{finish}.
        """

    def finish(node: Node, startTime: float | None, success: bool) -> None:
        """
        Record that a request started with L{start} ended, and how long it
        took.

        @param startTime: what L{start} returned, to take the time until
            now as a latency sample; or L{None} when the latency was
            already taken with L{measured}.
        @param success: whether the request succeeded, as the classifier
            says; it updates the success and failure counters.
        """

    def measured(node: Node, startTime: float, now: float | None = None) -> None:
        """
        Take the time from C{startTime} until now as a latency sample of
        C{node}, before the request is finished: an HTTP response's latency
        is taken when its head arrives, not after a body whose pace the
        client sets.

        @param now: the balancer's clock's time, when the caller has just
            read it (for the event the head came in); else it is read.
        """
