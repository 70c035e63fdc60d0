"""
Two counts over a sliding window of time, in O(1) amortised per event: what
the retry budget and the windowed success rate are built on.
"""

from __future__ import annotations

__all__ = ["SlidingCounts"]


class SlidingCounts:
    """
    Two event counts, C{a} and C{b}, over the last C{window} seconds.

    The window is a ring of C{slots} time slots of C{window / slots} seconds
    each; an event counts in the slot of its time, and a slot is emptied as
    the ring turns past it. So an event stops counting between
    C{window - window / slots} and C{window} seconds after it happened: the
    window slides by steps of one slot. Time that goes backwards is taken as
    no time passing.

    @ivar a: the events of the first kind in the window.
    @ivar b: the events of the second kind in the window.
    """

    __slots__ = ("a", "b", "_as", "_bs", "_width", "_size", "_slot", "_index", "_end")

    def __init__(self, window: float, slots: int = 10, now: float = 0.0) -> None:
        """
        @param window: the length of the window, in seconds.
        @param slots: the number of slots the window is cut into.
        @param now: the clock time at creation.
        @raise ValueError: if C{window} is not positive or C{slots} is below
            1.
        """
        if not window > 0:
            raise ValueError(f"window must be positive, got {window!r}")
        if slots < 1:
            raise ValueError(f"slots must be at least 1, got {slots!r}")
        self._width = window / slots
        self._size = slots
        self._as = [0] * slots
        self._bs = [0] * slots
        # The current slot: its number since time 0, its place in the ring,
        # and the time it ends. An event before that end counts in it: a
        # compare instead of a float division and an int() per event
        # (about 1,300 instructions on CPython 3.11).
        self._slot = slot = int(now // self._width)
        self._index = slot % slots
        self._end = (slot + 1) * self._width
        self.a = 0
        self.b = 0

    def advance(self, now: float) -> None:
        """
        Expire the slots that fell out of the window by time C{now}.

        @param now: the clock time.
        """
        if now < self._end:
            return
        width = self._width
        slot = int(now // width)
        last = self._slot
        if slot <= last:
            # (Exactly at the end, as floats go.)
            return
        size = self._size
        As = self._as
        Bs = self._bs
        if slot - last >= size:
            for i in range(size):
                As[i] = 0
                Bs[i] = 0
            self.a = 0
            self.b = 0
        else:
            for k in range(last + 1, slot + 1):
                i = k % size
                self.a -= As[i]
                self.b -= Bs[i]
                As[i] = 0
                Bs[i] = 0
        self._slot = slot
        self._index = slot % size
        self._end = (slot + 1) * width

    def addA(self, now: float, n: int = 1) -> None:
        """
        Count C{n} events of the first kind at time C{now}.
        """
        if now >= self._end:
            # (Only then can a slot expire: one call fewer per request.)
            self.advance(now)
        self._as[self._index] += n
        self.a += n

    def addB(self, now: float, n: int = 1) -> None:
        """
        Count C{n} events of the second kind at time C{now}.
        """
        if now >= self._end:
            self.advance(now)
        self._bs[self._index] += n
        self.b += n

    def __repr__(self) -> str:
        return f"<SlidingCounts a={self.a} b={self.b} window={self._width * self._size}s>"
