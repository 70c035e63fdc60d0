"""
The C{mesh-ctx-deadline} header: the time by which the whole request must be
answered, passed from hop to hop so that every proxy on the way enforces the
caller's timeout instead of starting its own from zero.

On the wire it is the deadline as milliseconds since the Unix epoch, in
ASCII digits (C{1700000000123}).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from math import floor, inf, isfinite

from twisted.internet.interfaces import IReactorTime

__all__ = ["DeadlineExpired", "DeadlineHeader", "DeadlinePolicy", "parseDeadline", "formatDeadline"]

#: The header's name, lowercase.
DeadlineHeader = b"mesh-ctx-deadline"

# Epoch milliseconds have 13 digits until the year 2286; more than 15 is
# not a deadline but an attempt to make int() work hard.
_MAX_DIGITS = 15


def parseDeadline(value: bytes) -> float | None:
    """
    Read a deadline header value.

    @param value: the header value; spaces and tabs around it are ignored.
    @return: the deadline, in seconds since the epoch, or C{None} if
        C{value} is not 1 to 15 ASCII digits (a sign, a decimal point, an
        underscore, anything else). Never raises.
    """
    try:
        value = value.strip(b" \t")
        if not 0 < len(value) <= _MAX_DIGITS or not value.isdigit():
            return None
        return int(value) / 1000.0
    except Exception:
        return None


def formatDeadline(seconds: float) -> bytes:
    """
    Write a deadline header value.

    @param seconds: the deadline, in seconds since the epoch; a negative
        one is written as 0 (long past).
    @return: the whole milliseconds, rounded down, in ASCII digits.
    @raise ValueError: if C{seconds} is not finite.
    """
    if not isfinite(seconds):
        raise ValueError(f"a deadline must be finite, got {seconds!r}")
    if seconds <= 0.0:
        return b"0"
    # (floor: the same as int() for a positive value, at half the cost)
    return b"%d" % floor(seconds * 1000.0)


class DeadlineExpired(Exception):
    """
    A trusted caller's deadline has already passed: the request is not
    sent anywhere.
    """


class DeadlinePolicy:
    """
    How long one request may take, and the deadline passed on to the next
    hop.

    A request gets the router's total timeout, shortened by a trusted
    caller's C{mesh-ctx-deadline} when that is sooner. Deadlines on the
    wire are wall-clock times (the hops share no reactor); inside, the
    deadline is a time of the reactor's clock.

    @ivar total: the router's total timeout, in seconds.
    @ivar honourCallers: whether a trusted caller's deadline counts
        (C{trust.deadline}).
    """

    def __init__(
        self,
        total: float,
        *,
        clock: IReactorTime,
        wallClock: Callable[[], float] = time.time,
        honourCallers: bool = True,
    ) -> None:
        """
        @param total: the router's total timeout, in seconds.
        @param clock: the reactor's clock, which the request's timers use.
        @param wallClock: the time since the Unix epoch, for the header.
        @param honourCallers: see L{honourCallers}.
        """
        self.total = total
        self.honourCallers = honourCallers
        self._clock = clock
        self._wall = wallClock
        # The last header value written, and its milliseconds: requests
        # within the same millisecond (most of them, under load) share it
        # instead of formatting it again.
        self._lastMs = -1
        self._lastValue = b"0"

    def budget(self, callerDeadline: bytes | None, trusted: bool) -> float:
        """
        The seconds one request may take.

        @param callerDeadline: the request's C{mesh-ctx-deadline} value, or
            L{None}; ignored unless C{trusted} and L{honourCallers}, or when
            it does not parse.
        @param trusted: whether the caller is trusted.
        @raise DeadlineExpired: the caller's deadline has passed.
        """
        total = self.total
        if callerDeadline is None or not trusted or not self.honourCallers:
            return total
        deadline = parseDeadline(callerDeadline)
        if deadline is None:
            return total
        remaining = deadline - self._wall()
        if remaining <= 0:
            raise DeadlineExpired()
        return remaining if remaining < total else total

    def header(self, deadline: float, now: float | None = None) -> bytes:
        """
        The C{mesh-ctx-deadline} value for a request whose deadline is
        C{deadline} on the reactor's clock.

        @param now: the reactor's time, when the caller has just read it.
        """
        if now is None:
            now = self._clock.seconds()
        remaining = deadline - now
        seconds = self._wall() + (remaining if remaining > 0.0 else 0.0)
        if not 0.0 < seconds < inf:
            # (0 or less, infinite, not a number: as formatDeadline says)
            return formatDeadline(seconds)
        ms = floor(seconds * 1000.0)
        if ms != self._lastMs:
            self._lastMs = ms
            self._lastValue = b"%d" % ms
        return self._lastValue
