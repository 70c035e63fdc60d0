"""
Admission limits: how many requests may be in flight, and how many may wait
for an upstream connection, before new ones are refused (503) instead of
queued without end.
"""

from __future__ import annotations

__all__ = ["Limiter"]


class Limiter:
    """
    Two counters with ceilings: requests in flight (C{active}) and requests
    waiting for an upstream connection (C{pending}).

    Each successful L{tryAcquire} is matched by exactly one L{release}, and
    each successful L{pendingAcquire} by exactly one L{pendingRelease}.

    @ivar maxConcurrent: the ceiling on C{active}, or C{None} for none.
    @ivar maxPending: the ceiling on C{pending}, or C{None} for none.
    @ivar active: requests admitted and not released.
    @ivar pending: requests waiting for a connection.
    @ivar rejected: requests refused, by either ceiling.
    @ivar rejectedPending: of those, the ones refused by C{maxPending}.
    """

    __slots__ = ("maxConcurrent", "maxPending", "active", "pending", "rejected", "rejectedPending")

    def __init__(self, maxConcurrent: int | None = None, maxPending: int | None = None) -> None:
        """
        @param maxConcurrent: the most requests in flight, or C{None} for no
            limit.
        @param maxPending: the most requests waiting for an upstream
            connection, or C{None} for no limit.
        @raise ValueError: if a limit is negative.
        """
        for name, value in (("maxConcurrent", maxConcurrent), ("maxPending", maxPending)):
            if value is not None and not value >= 0:
                raise ValueError(f"{name} must be 0 or more, or None, got {value!r}")
        self.maxConcurrent = maxConcurrent
        self.maxPending = maxPending
        self.active = 0
        self.pending = 0
        self.rejected = 0
        self.rejectedPending = 0

    def tryAcquire(self) -> bool:
        """
        Admit one request, if under C{maxConcurrent}.

        @return: C{True} if admitted (count it off with L{release}), C{False}
            if refused (and counted in C{rejected}).
        """
        limit = self.maxConcurrent
        if limit is not None and self.active >= limit:
            self.rejected += 1
            return False
        self.active += 1
        return True

    def release(self) -> None:
        """
        End a request admitted by L{tryAcquire}.

        @raise RuntimeError: if no request is active (a release too many
            would silently raise the limit).
        """
        if self.active <= 0:
            raise RuntimeError("Limiter.release() without a matching tryAcquire()")
        self.active -= 1

    def pendingAcquire(self) -> bool:
        """
        Let one request wait for an upstream connection, if under
        C{maxPending}.

        @return: C{True} if it may wait (count it off with
            L{pendingRelease} once it has a connection or gives up),
            C{False} if refused (and counted in C{rejected} and
            C{rejectedPending}).
        """
        limit = self.maxPending
        if limit is not None and self.pending >= limit:
            self.rejected += 1
            self.rejectedPending += 1
            return False
        self.pending += 1
        return True

    #: Another name for L{pendingAcquire}.
    tryPending = pendingAcquire

    def pendingRelease(self) -> None:
        """
        End a wait admitted by L{pendingAcquire}.

        @raise RuntimeError: if no request is waiting.
        """
        if self.pending <= 0:
            raise RuntimeError("Limiter.pendingRelease() without a matching pendingAcquire()")
        self.pending -= 1

    def __repr__(self) -> str:
        return (
            f"<Limiter active={self.active}/{self.maxConcurrent} "
            f"pending={self.pending}/{self.maxPending} rejected={self.rejected}>"
        )
