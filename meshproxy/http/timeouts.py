"""
Timeouts of one duration, served by one reactor timer.

Every proxied request has a total timeout, nearly always the router's
C{timeouts.total}, and nearly always cancelled: the response comes first. A
C{callLater} per request is a L{DelayedCall<twisted.internet.base.DelayedCall>}
built in Python, pushed on the reactor's heap (its comparisons are Python
calls too) and filtered out of it again once cancelled. Timeouts of one
duration, added as time goes on, expire in the order they were added: a
L{TimeoutQueue} keeps them in that order (adding and cancelling are a
dictionary insertion and deletion) and keeps one reactor timer, for the
oldest.

Each timeout fires at the time a C{callLater} of the same delay would have
fired it (its deadline is C{clock.seconds() + duration}, and the reactor
timer is always due at or before the oldest deadline); those due at the same
time fire in the order they were added.

The reactor timer stays armed when the last pending timeout is cancelled:
one request at a time (concurrency 1) would otherwise make and cancel a
reactor timer per request. It fires at the deadline it was armed for, finds
nothing due, and arms again only for what is pending then;
L{TimeoutQueue.close} cancels it (its owner stops, or a test ends).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from twisted.internet.error import AlreadyCalled, AlreadyCancelled
from twisted.logger import Logger

if TYPE_CHECKING:
    from collections.abc import Callable

    from twisted.internet.interfaces import IDelayedCall, IReactorTime

__all__ = ["Timeout", "TimeoutQueue"]

_log = Logger()


class Timeout:
    """
    One timeout in a L{TimeoutQueue}: the part of L{IDelayedCall} the
    request path uses (C{getTime}, C{active}, C{cancel}).

    @ivar time: when it fires, in the clock's seconds.
    """

    __slots__ = ("queue", "time", "callback", "state")

    def __init__(self, queue: TimeoutQueue, time: float, callback: Callable[[], object]) -> None:
        self.queue = queue
        self.time = time
        self.callback = callback
        #: 0 pending, 1 called, 2 cancelled.
        self.state = 0

    def getTime(self) -> float:
        """
        @return: when it fires (or would have), in the clock's seconds.
        """
        return self.time

    def active(self) -> bool:
        """
        @return: whether it has neither fired nor been cancelled.
        """
        return self.state == 0

    def cancel(self) -> None:
        """
        Forget it: its callback will not be called.

        @raise AlreadyCalled: if it fired already.
        @raise AlreadyCancelled: if it was cancelled already.
        """
        state = self.state
        if state:
            raise AlreadyCalled() if state == 1 else AlreadyCancelled()
        self.state = 2
        # The reactor timer stays, due early (see the module's docstring).
        del self.queue._pending[self]


class TimeoutQueue:
    """
    Timeouts of one duration on one clock, each calling its callback once
    its deadline comes unless cancelled first.

    @ivar clock: the L{IReactorTime} it runs on.
    @ivar duration: the delay of every timeout, in seconds.
    """

    def __init__(self, clock: IReactorTime, duration: float) -> None:
        """
        @param clock: an L{IReactorTime}.
        @param duration: the delay of every timeout, in seconds (C{>= 0}).
        @raise ValueError: for a negative duration.
        """
        if duration < 0:
            raise ValueError("a timeout queue's duration must be >= 0, not %r" % (duration,))
        self.clock = clock
        self.duration = duration
        # Insertion-ordered, so deadline-ordered: a Python dict keeps the
        # order keys were added in, and deleting any of them is O(1).
        self._pending: dict[Timeout, None] = {}
        # The reactor timer, due at or before the oldest deadline (or at
        # the deadline of a timeout cancelled since); None once it fired
        # with nothing left pending, after close, or while _expire runs
        # (which arms the next one itself).
        self._timer: IDelayedCall | None = None
        self._expiring = False

    def __len__(self) -> int:
        """
        @return: how many timeouts are pending.
        """
        return len(self._pending)

    def add(self, callback: Callable[[], object], now: float | None = None) -> Timeout:
        """
        Call C{callback()} after C{duration} seconds, unless cancelled.

        @param now: the clock's time, when the caller has just read it (in
            the same event); else the clock is read.
        @return: the L{Timeout}, to cancel it.
        """
        clock = self.clock
        if now is None:
            now = clock.seconds()
            given = False
        else:
            given = True
        timeout = Timeout(self, now + self.duration, callback)
        self._pending[timeout] = None
        if self._timer is None and not self._expiring:
            delay = self.duration
            if given:
                # Due at the deadline, from the clock's time now (which may
                # be later than the caller's).
                delay = timeout.time - clock.seconds()
                if delay < 0.0:
                    delay = 0.0
            self._timer = clock.callLater(delay, self._expire)
        return timeout

    def close(self) -> None:
        """
        Cancel the reactor timer, when no timeout is pending (it was kept
        for the next one); with timeouts pending, nothing changes. A
        timeout added later arms a timer again.
        """
        if self._pending or self._expiring:
            return
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def _expire(self) -> None:
        """
        The reactor timer fired: fire what is due, then re-arm for the
        oldest deadline left.
        """
        self._timer = None
        clock = self.clock
        pending = self._pending
        now = clock.seconds()
        # Callbacks may add and cancel timeouts meanwhile.
        self._expiring = True
        try:
            while pending:
                timeout = next(iter(pending))
                if timeout.time > now:
                    break
                del pending[timeout]
                timeout.state = 1
                try:
                    timeout.callback()
                except Exception:
                    _log.failure("a timeout's callback failed")
        finally:
            self._expiring = False
        if pending:
            # Due exactly at the oldest deadline: timeout.time - now is
            # exact, since now >= duration puts the deadline within twice
            # now (Sterbenz), so now + (timeout.time - now) == timeout.time.
            self._timer = clock.callLater(next(iter(pending)).time - now, self._expire)
