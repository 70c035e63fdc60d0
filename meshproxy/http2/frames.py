"""
The frames an HTTP/2 client sends, seen before the C{h2} library parses
them: their 9-byte headers only, to bound what the library would accept.

The library answers each PING and SETTINGS, keeps every empty DATA frame,
and buffers a header block across any number of CONTINUATION frames (64,
each up to the frame size); a client sending those without end costs CPU
and memory while never opening a stream (the floods of CVE-2019-9512,
CVE-2019-9515, CVE-2019-9518 and the CONTINUATION flood of 2024). The
L{FrameScanner} counts them against L{FloodLimits} and names the flood
once one is over its limit; the connection then ends with a GOAWAY
(C{ENHANCE_YOUR_CALM}). Streams reset by the client (CVE-2023-44487, rapid
reset) and streams refused are counted by the connection, against the same
limits (L{FloodGuard}).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import attrs

# (Not the h2 library, nor meshproxy.http2.fastpath, which imports it: the
# HTTP/1 server imports this module, and a process without HTTP/2 never
# needs h2.)

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime

__all__ = [
    "FLOOD_CONTINUATION",
    "FLOOD_EMPTY",
    "FLOOD_PING",
    "FLOOD_REFUSED",
    "FLOOD_RESET",
    "FLOOD_SETTINGS",
    "PREFACE",
    "FloodGuard",
    "FloodLimits",
    "FrameScanner",
    "TokenBucket",
]

#: What an HTTP/2 client sends first, before its SETTINGS frame (RFC 9113
#: 3.4).
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# Frame types (RFC 9113 6) and flags.
_DATA = 0x0
_HEADERS = 0x1
_SETTINGS = 0x4
_PING = 0x6
_CONTINUATION = 0x9
_END_STREAM = 0x1
_ACK = 0x1
_END_HEADERS = 0x4

#: The reasons a connection is closed for a flood (C{meshproxy_errors_total}).
FLOOD_PING = "h2-flood-ping"
FLOOD_SETTINGS = "h2-flood-settings"
FLOOD_EMPTY = "h2-flood-empty-frames"
FLOOD_CONTINUATION = "h2-flood-continuation"
FLOOD_RESET = "h2-flood-rapid-reset"
FLOOD_REFUSED = "h2-flood-refused-streams"


@attrs.frozen
class FloodLimits:
    """
    How much of each costly kind of frame or stream one connection may
    send: a burst, then a rate per second (a token bucket each).

    @ivar pings: PING frames (not acknowledgements).
    @ivar settings: SETTINGS frames (not acknowledgements).
    @ivar emptyFrames: DATA frames without data nor the end of their stream.
    @ivar resets: streams the client resets before their response is
        complete (rapid reset), or L{None} for a burst of twice the
        concurrent streams allowed and that many per second.
    @ivar refusals: streams refused (over the concurrent streams allowed,
        or opened after a GOAWAY).
    @ivar continuations: CONTINUATION frames in one header block.
    """

    pings: tuple[int, float] = (50, 10.0)
    settings: tuple[int, float] = (20, 2.0)
    emptyFrames: tuple[int, float] = (100, 10.0)
    resets: tuple[int, float] | None = None
    refusals: tuple[int, float] = (100, 10.0)
    continuations: int = 32


class TokenBucket:
    """
    A burst of events allowed at once, refilled at a steady rate.

    @ivar burst: the most events allowed at once.
    @ivar rate: events allowed per second, on average.
    """

    __slots__ = ("burst", "rate", "_tokens", "_last")

    def __init__(self, burst: int, rate: float, now: float) -> None:
        self.burst = burst
        self.rate = rate
        self._tokens = float(burst)
        self._last = now

    def take(self, now: float) -> bool:
        """
        One event, at C{now}.

        @return: whether it is within the limits.
        """
        tokens = self._tokens + (now - self._last) * self.rate
        if tokens > self.burst:
            tokens = self.burst
        self._last = now
        if tokens < 1.0:
            self._tokens = tokens
            return False
        self._tokens = tokens - 1.0
        return True


class FloodGuard:
    """
    The token buckets of one connection.
    """

    __slots__ = ("_clock", "limits", "pings", "settings", "empty", "resets", "refusals")

    def __init__(self, limits: FloodLimits, maxConcurrentStreams: int, clock: IReactorTime) -> None:
        """
        @param limits: the limits.
        @param maxConcurrentStreams: the concurrent streams allowed (the
            default limit on resets).
        @param clock: gives the time of each event.
        """
        now = clock.seconds()
        self._clock = clock
        self.limits = limits
        self.pings = TokenBucket(*limits.pings, now)
        self.settings = TokenBucket(*limits.settings, now)
        self.empty = TokenBucket(*limits.emptyFrames, now)
        resets = limits.resets
        if resets is None:
            resets = (max(2 * maxConcurrentStreams, 100), float(max(maxConcurrentStreams, 10)))
        self.resets = TokenBucket(*resets, now)
        self.refusals = TokenBucket(*limits.refusals, now)

    def allows(self, bucket: TokenBucket) -> bool:
        """
        Count one event of C{bucket} now.

        @return: whether it is within the limits.
        """
        return bucket.take(self._clock.seconds())


class FrameScanner:
    """
    Reads the frame headers of what a client sends (after the connection
    preface), counting the costly frames, and tells whether a header block
    is incomplete (for the header timeout).

    @ivar guard: the connection's L{FloodGuard}.
    @ivar maxHeaderBlock: the most bytes one header block (a HEADERS frame
        and its CONTINUATION frames) may take: a block larger than the
        decoded header list allowed cannot be a valid one.
    """

    __slots__ = (
        "guard",
        "maxHeaderBlock",
        "_preface",
        "_skip",
        "_partial",
        "_type",
        "_inBlock",
        "_block",
        "_blockFrames",
    )

    def __init__(self, guard: FloodGuard, maxHeaderBlock: int) -> None:
        self.guard = guard
        self.maxHeaderBlock = maxHeaderBlock
        # Preface bytes still to come (the h2 library checks them).
        self._preface = len(PREFACE)
        # Payload bytes of the current frame still to come, and its type.
        self._skip = 0
        self._type = -1
        # A frame header split between two reads.
        self._partial = b""
        # A header block without its END_HEADERS yet: its size and
        # CONTINUATION frames so far.
        self._inBlock = False
        self._block = 0
        self._blockFrames = 0

    @property
    def headerPending(self) -> bool:
        """
        Whether a header block started and is not complete.
        """
        return self._inBlock or (
            (self._skip > 0 or bool(self._partial))
            and self._type in (_HEADERS, _CONTINUATION)
        )

    def scan(self, data: bytes) -> str | None:
        """
        Read the frame headers in C{data}, the next bytes from the client.

        @return: the flood reason when a limit is passed, else L{None}.
        """
        i = 0
        n = len(data)
        if self._preface:
            i = min(self._preface, n)
            self._preface -= i
        while i < n:
            skip = self._skip
            if skip:
                k = n - i
                if k > skip:
                    k = skip
                i += k
                self._skip = skip - k
                continue
            partial = self._partial
            if partial or n - i < 9:
                header = partial + data[i : i + 9 - len(partial)]
                i += len(header) - len(partial)
                if len(header) < 9:
                    self._partial = header
                    return None
                self._partial = b""
                length = (header[0] << 16) | (header[1] << 8) | header[2]
                kind = header[3]
                flags = header[4]
            else:
                length = (data[i] << 16) | (data[i + 1] << 8) | data[i + 2]
                kind = data[i + 3]
                flags = data[i + 4]
                i += 9
            self._type = kind
            self._skip = length
            if kind > _HEADERS or length == 0:
                reason = self._frame(kind, flags, length)
                if reason is not None:
                    return reason
            elif kind == _HEADERS:
                self._inBlock = not flags & _END_HEADERS
                self._block = length
                self._blockFrames = 0
        return None

    def _frame(self, kind: int, flags: int, length: int) -> str | None:
        """
        A frame other than a non-empty DATA or HEADERS frame.
        """
        guard = self.guard
        if kind == _DATA:
            if not flags & _END_STREAM and not guard.allows(guard.empty):
                return FLOOD_EMPTY
        elif kind == _CONTINUATION:
            self._block += length
            self._blockFrames += 1
            if (
                self._block > self.maxHeaderBlock
                or self._blockFrames > guard.limits.continuations
            ):
                return FLOOD_CONTINUATION
            if flags & _END_HEADERS:
                self._inBlock = False
        elif kind == _PING:
            if not flags & _ACK and not guard.allows(guard.pings):
                return FLOOD_PING
        elif kind == _SETTINGS:
            if not flags & _ACK and not guard.allows(guard.settings):
                return FLOOD_SETTINGS
        elif kind == _HEADERS:
            # An empty header block (length 0).
            self._inBlock = not flags & _END_HEADERS
            self._block = 0
            self._blockFrames = 0
        return None
