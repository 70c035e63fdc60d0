"""
The C{mesh-ctx-deadline} header: the time by which the whole request must be
answered, passed from hop to hop so that every proxy on the way enforces the
caller's timeout instead of starting its own from zero.

On the wire it is the deadline as milliseconds since the Unix epoch, in
ASCII digits (C{1700000000123}).
"""

from __future__ import annotations

from math import isfinite

__all__ = ["DeadlineHeader", "parseDeadline", "formatDeadline"]

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
    return b"%d" % int(seconds * 1000.0)
