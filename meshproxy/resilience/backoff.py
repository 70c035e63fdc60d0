"""
Jittered backoffs: the wait before a retry, and the length of an ejection.
"""

from __future__ import annotations

__all__ = ["Backoff", "EjectionBackoff"]

# 2 ** 60 times any sane delay is beyond any ceiling; a higher exponent would
# only risk an OverflowError.
_MAX_EXPONENT = 60


def _checkRange(minDelay: float, maxDelay: float) -> None:
    if not minDelay >= 0.0:
        raise ValueError(f"minimum delay must be 0 or more, got {minDelay!r}")
    if not maxDelay >= minDelay:
        raise ValueError(f"maximum delay {maxDelay!r} is below the minimum {minDelay!r}")


class Backoff:
    """
    The wait before a retry: exponential with "full jitter".

    The wait before retry number C{attempt} is uniform between C{minDelay}
    and C{min(maxDelay, base * 2 ** (attempt - 1))}, where C{base} is
    C{minDelay}, or C{maxDelay} when C{minDelay} is 0 (0 doubled stays 0).
    So C{minDelay == maxDelay} gives a constant wait and 0 and 0 no wait.
    Jitter keeps the retries of many clients failing at once from arriving
    together.
    """

    __slots__ = ("minDelay", "maxDelay", "_random", "_base")

    def __init__(self, minDelay: float, maxDelay: float, *, random) -> None:
        """
        @param minDelay: the shortest wait, in seconds, 0 or more.
        @param maxDelay: the longest wait, in seconds, at least C{minDelay}.
        @param random: the source of randomness (C{random()}).
        @raise ValueError: on a negative or inverted range.
        """
        _checkRange(minDelay, maxDelay)
        self.minDelay = minDelay
        self.maxDelay = maxDelay
        self._random = random
        self._base = minDelay if minDelay > 0.0 else maxDelay

    def delay(self, attempt: int) -> float:
        """
        @param attempt: the retry number, 1 for the first retry (a lower
            number is taken as 1).
        @return: the wait, in seconds, before that retry.
        """
        low = self.minDelay
        high = self.maxDelay
        if low == high:
            return low
        exponent = attempt - 1
        if exponent > _MAX_EXPONENT:
            exponent = _MAX_EXPONENT
        elif exponent < 0:
            exponent = 0
        ceiling = self._base * (1 << exponent)
        if ceiling > high:
            ceiling = high
        return low + (ceiling - low) * self._random.random()

    def __repr__(self) -> str:
        return f"Backoff({self.minDelay!r}, {self.maxDelay!r})"


class EjectionBackoff:
    """
    The length of an ejection: C{minDelay} for the first one, doubling with
    each ejection that follows without a revival, times a random factor
    between 0.8 and 1.2 (so that endpoints ejected together are not probed
    together), always between C{minDelay} and C{maxDelay}.
    """

    __slots__ = ("minDelay", "maxDelay", "_random")

    #: The jitter: the delay is multiplied by a factor uniform in
    #: C{[1 - Jitter, 1 + Jitter]}.
    Jitter = 0.2

    def __init__(self, minDelay: float = 5.0, maxDelay: float = 300.0, *, random) -> None:
        """
        @param minDelay: the shortest ejection, in seconds, 0 or more.
        @param maxDelay: the longest ejection, in seconds, at least
            C{minDelay}.
        @param random: the source of randomness (C{random()}).
        @raise ValueError: on a negative or inverted range.
        """
        _checkRange(minDelay, maxDelay)
        self.minDelay = minDelay
        self.maxDelay = maxDelay
        self._random = random

    def delay(self, step: int) -> float:
        """
        @param step: the ejections since the last revival (0 for the first).
        @return: the length of this ejection, in seconds.
        """
        if step > _MAX_EXPONENT:
            step = _MAX_EXPONENT
        elif step < 0:
            step = 0
        jitter = self.Jitter
        delay = self.minDelay * (1 << step) * (1.0 - jitter + 2.0 * jitter * self._random.random())
        if delay < self.minDelay:
            return self.minDelay
        if delay > self.maxDelay:
            return self.maxDelay
        return delay

    def __repr__(self) -> str:
        return f"EjectionBackoff({self.minDelay!r}, {self.maxDelay!r})"
