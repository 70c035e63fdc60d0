"""
Whether a failed try is sent again, and after how long: the retry filter of
the request path, on its own so that it can be tested on a fake clock.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.interfaces import IReactorTime

from meshproxy.resilience.backoff import Backoff
from meshproxy.resilience.budget import RetryBudget

__all__ = ["RetryPolicy", "CONNECT", "RESET", "STATUS", "TIMEOUT"]

#: Why a try failed, as counted in C{meshproxy_retries_total{reason}}.
CONNECT = "connect"
RESET = "reset"
STATUS = "status"
TIMEOUT = "timeout"

#: Failures that say nothing of the application: they draw on the
#: connection budget, so that they do not eat the budget of status
#: retries.
_CONNECTION_FAILURES = frozenset([CONNECT, RESET])


class RetryPolicy:
    """
    Decides, try by try, whether a failed request is retried.

    A retry needs all of: a failure that allows it (any method when the
    upstream never saw the request, else an idempotent one), fewer than
    C{maxRetries} retries so far, a request that can be sent again (its
    body kept), time left before the deadline after the backoff, and a
    retry budget that allows it. Every request deposits into both budgets
    (L{admit}); a retry withdraws from the connection budget for
    connection failures and resets, from the request budget otherwise.

    @ivar maxRetries: the most retries one request gets.
    """

    def __init__(
        self,
        *,
        budget: RetryBudget,
        connectBudget: RetryBudget,
        backoff: Backoff,
        maxRetries: int,
        clock: IReactorTime,
        count: Callable[[str], None],
    ) -> None:
        """
        @param budget: the budget of retries after a response or timeout.
        @param connectBudget: the budget of retries after connection
            failures and resets.
        @param backoff: the waits before retries.
        @param maxRetries: see L{maxRetries}.
        @param clock: the reactor's clock.
        @param count: called with the reason of each retry, or
            C{"budget-exhausted"} for one the budget refused.
        """
        self._budget = budget
        self._connectBudget = connectBudget
        self._backoff = backoff
        self.maxRetries = maxRetries
        self._clock = clock
        self._count = count
        self._budgetCounts = budget.counts
        self._connectCounts = connectBudget.counts

    def admit(self, now: float) -> None:
        """
        A request starts: credit both budgets.

        @param now: the clock's time, as the caller read it for the event
            the request starts in.
        """
        # SlidingCounts.addA(now) of each budget's counts, inline: this runs
        # for every request, and a call costs more than what it does (a
        # compare with the current slot's end and two increments).
        counts = self._budgetCounts
        if now >= counts._end:
            counts.advance(now)
        counts._as[counts._index] += 1
        counts.a += 1
        counts = self._connectCounts
        if now >= counts._end:
            counts.advance(now)
        counts._as[counts._index] += 1
        counts.a += 1

    def retryDelay(
        self, reason: str, *, allowed: bool, retries: int, replayable: bool, deadline: float
    ) -> float | None:
        """
        Whether to retry after a failed try, and when.

        @param reason: why the try failed: L{CONNECT}, L{RESET}, L{STATUS}
            or L{TIMEOUT}.
        @param allowed: whether the failure and the method allow a retry
            (the request never reached the upstream, or it is idempotent).
        @param retries: the retries this request already had.
        @param replayable: whether the request can be sent again.
        @param deadline: the request's deadline, on the clock.
        @return: the seconds to wait before the retry, or L{None} for no
            retry. A retry is counted; a refusal by the budget is counted
            as C{"budget-exhausted"}.
        """
        if not allowed or retries >= self.maxRetries or not replayable:
            return None
        delay = self._backoff.delay(retries + 1)
        if self._clock.seconds() + delay >= deadline:
            return None
        budget = self._connectBudget if reason in _CONNECTION_FAILURES else self._budget
        if not budget.tryWithdraw():
            self._count("budget-exhausted")
            return None
        self._count(reason)
        return delay
