"""
The seam between the worker supervisor and the aggregation of what the
workers report (metrics, state, tap streams).

The supervisor tells an L{IWorkerAggregator} when a worker's AMP channel
comes up and when it goes away; the admin API asks the aggregator for the
merged C{/metrics} exposition, the merged C{/admin/state} and
C{/admin/stats}, the workers' part of an explain and of a rules dry run.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from zope.interface import Interface

__all__ = ["IWorkerAggregator", "CallRemote"]

#: The bound C{callRemote} of a worker's L{twisted.protocols.amp.AMP}
#: connection: C{callRemote(commandType, **arguments) -> Deferred}.
CallRemote = Callable[..., Deferred]


class IWorkerAggregator(Interface):
    """
    Merges what the workers of one supervisor report into one view.

    Called on the supervisor's reactor thread only. L{workerStarted} and
    L{workerStopped} come in pairs for one worker id: a restarted worker is
    stopped, then started again with a higher generation.
    """

    def workerStarted(workerId: int, generation: int, callRemote: CallRemote) -> None:
        """
        A worker's AMP channel is up: the aggregator may call it from now on.

        @param workerId: the worker's slot, C{0} to C{workers - 1}; a
            restarted worker keeps its slot.
        @param generation: how many times this slot was started before, C{0}
            for the first process in the slot; a new generation is a new
            process whose counters start from zero.
        @param callRemote: the channel's C{callRemote}; it fails once the
            worker is gone.
        """

    def workerStopped(workerId: int) -> None:
        """
        The worker in this slot is gone (exited, killed, or stopped): its
        C{callRemote} must not be used any more.

        @param workerId: the slot given to L{workerStarted}.
        """

    def exposition(accept: bytes | str | None) -> Deferred[tuple[bytes, str]]:
        """
        The C{/metrics} page for the whole process group.

        @param accept: the scrape's C{Accept} header, or L{None}; as for
            L{meshproxy.telemetry.metrics.exposition}.
        @return: a L{Deferred} firing with C{(body, contentType)}.
        """

    def state(perWorker: bool) -> Deferred[dict[str, Any]]:
        """
        The routers' state merged over the workers (the body of
        C{GET /admin/state}, without the C{workers} list the supervisor adds).

        @param perWorker: also give each worker's own state.
        @return: a L{Deferred} firing with a JSON-ready C{dict}.
        """

    def stats(own: dict[str, Any]) -> Deferred[dict[str, Any]]:
        """
        The traffic counters of C{GET /admin/stats} summed over the
        workers and the supervisor.

        @param own: the supervisor's own counters, C{{"routers": {name:
            counters}}} (it serves connections while a worker restarts).
        @return: a L{Deferred} firing with C{{"routers": {name: counters},
            "missing": [{"worker", "error"}]}}.
        """

    def explain(router: str, explained: dict[str, Any]) -> Deferred[dict[str, Any]]:
        """
        Complete an explain the supervisor made of router C{router} with
        the live figures of the workers.

        @param explained: the supervisor's explain (its C{boundNames}
            entries, each with a C{name} and C{endpoints}).
        @return: a L{Deferred} firing with the explain, its C{boundNames}
            and C{endpoints} merged over the workers that bound them, and
            C{missing}.
        """

    def recentNames(router: str) -> Deferred[dict[str, Any]]:
        """
        The logical names router C{router} routed recently in any worker.

        @return: a L{Deferred} firing with C{{"names": [...], "missing":
            [...]}}.
        """
