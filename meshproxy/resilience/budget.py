"""
The retry budget: how many retries a router may add on top of its requests.
"""

from __future__ import annotations

from twisted.internet.interfaces import IReactorTime

from meshproxy.resilience.window import SlidingCounts

__all__ = ["RetryBudget"]

# Float arithmetic must not refuse the 200th retry of 1000 deposits at 20%.
_EPSILON = 1e-9


class RetryBudget:
    """
    A retry budget like Finagle's: over any C{ttl} seconds, the retries
    allowed are a reserve of C{minPerSecond * ttl}, plus C{percent}% of the
    requests made, minus the retries already made.

    The reserve lets a quiet service retry at all; the percentage keeps a
    busy one from multiplying its load when its upstream fails (with 20%,
    at most 1.2 tries per request on average, instead of the 3 or 4 of a
    fixed retry count). Requests and retries are counted in a ring of ten
    time slots (see L{SlidingCounts}), so both methods are O(1) amortised.

    Call L{deposit} once per request (not per try), and L{tryWithdraw}
    before each retry, retrying only if it says so.
    """

    __slots__ = (
        "percent",
        "minPerSecond",
        "ttl",
        "counts",
        "_clock",
        "_rate",
        "_reserve",
    )

    def __init__(
        self,
        percent: float = 20.0,
        minPerSecond: float = 10.0,
        ttl: float = 10.0,
        *,
        clock: IReactorTime,
    ) -> None:
        """
        @param percent: retries earned per 100 requests, 0 to 1000.
        @param minPerSecond: retries allowed per second whatever the
            traffic, 0 or more.
        @param ttl: the window, in seconds, over which requests and retries
            count; positive.
        @param clock: gives the time (C{seconds()}).
        @raise ValueError: on a value out of range.
        """
        if not 0.0 <= percent <= 1000.0:
            raise ValueError(f"percent must be between 0 and 1000, got {percent!r}")
        if not minPerSecond >= 0.0:
            raise ValueError(f"minPerSecond must be 0 or more, got {minPerSecond!r}")
        if not ttl > 0.0:
            raise ValueError(f"ttl must be positive, got {ttl!r}")
        self.percent = percent
        self.minPerSecond = minPerSecond
        self.ttl = ttl
        self._clock = clock
        self._rate = percent / 100.0
        self._reserve = minPerSecond * ttl
        #: Its requests (C{a}) and retries (C{b}) in the window: what
        #: L{RetryPolicy<meshproxy.resilience.retries.RetryPolicy>} deposits
        #: into once per request.
        self.counts = SlidingCounts(ttl, 10, clock.seconds())

    def deposit(self, now: float | None = None) -> None:
        """
        Count one request (an original one, not a retry).

        @param now: the clock's time, when the caller has just read it.
        """
        self.counts.addA(self._clock.seconds() if now is None else now)

    def tryWithdraw(self) -> bool:
        """
        Take one retry from the budget, if there is one.

        @return: C{True} if the retry may be made (and was counted),
            C{False} if the budget is spent.
        """
        counts = self.counts
        now = self._clock.seconds()
        counts.advance(now)
        if counts.b + 1 > self._reserve + self._rate * counts.a + _EPSILON:
            return False
        counts.addB(now)
        return True

    @property
    def balance(self) -> int:
        """
        The retries allowed now: 0 or more.
        """
        counts = self.counts
        counts.advance(self._clock.seconds())
        available = int(self._reserve + self._rate * counts.a - counts.b + _EPSILON)
        return available if available > 0 else 0

    def __repr__(self) -> str:
        return (
            f"<RetryBudget {self.percent}% + {self.minPerSecond}/s over {self.ttl}s, "
            f"balance={self.balance}>"
        )
