"""
A request body on its way upstream: the bytes that arrive before a
connection is ready, the copy kept for a retry while it fits, and when its
pieces and its end go to the upstream connection's L{IRequestWriter}
(which frames them: chunks and trailers over HTTP/1.1, DATA frames over
HTTP/2).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from meshproxy.http.interfaces import IUpstreamConnection
    from meshproxy.http.message import Headers

__all__ = ["PRECONNECT_BUFFER", "RequestBody"]

#: Request body bytes kept while no upstream connection is ready yet; past
#: this the client is paused.
PRECONNECT_BUFFER = 64 * 1024


class RequestBody:
    """
    The body of one request, as the exchange sends it.

    @ivar pending: body pieces not sent yet (before a connection is ready,
        or to send again on a retry), or L{None} while the body streams.
    @ivar done: whether the client sent the whole body.
    @ivar sent: whether any of it went upstream on the current try.
    @ivar sentAll: whether all of it (and its end) went upstream.
    @ivar trailers: the trailer fields of a chunked body.
    """

    __slots__ = (
        "chunked",
        "pending",
        "pendingSize",
        "done",
        "sent",
        "sentAll",
        "trailers",
        "replay",
        "replaySize",
        "limit",
    )

    def __init__(self, chunked: bool, limit: int) -> None:
        """
        @param chunked: whether the body's length is unknown (it goes
            upstream as chunks over HTTP/1.1).
        @param limit: the bytes kept for a retry (C{retries.bufferBytes}).
        """
        self.chunked = chunked
        self.pending: list[bytes] | None = None
        self.pendingSize = 0
        self.done = False
        self.sent = False
        self.sentAll = False
        self.trailers: Headers | None = None
        self.replay: list[bytes] | None = [] if limit else None
        self.replaySize = 0
        self.limit = limit

    def receive(self, data: bytes, upstream: IUpstreamConnection | None) -> bool:
        """
        A piece of body arrived: keep a copy while it fits, and send it on
        C{upstream} if the body streams there, else hold it.

        @param upstream: the try's connection, or L{None}.
        @return: whether held bytes went past L{PRECONNECT_BUFFER} (the
            client should be paused).
        """
        replay = self.replay
        if replay is not None:
            self.replaySize += len(data)
            if self.replaySize > self.limit:
                self.replay = None
            else:
                replay.append(data)
        if upstream is not None and self.pending is None:
            upstream.writeBody(data)
            return False
        if self.pending is None:
            self.pending = []
        self.pending.append(data)
        self.pendingSize += len(data)
        return self.pendingSize > PRECONNECT_BUFFER

    def start(self) -> tuple[list[bytes] | None, bool]:
        """
        A new try's connection is ready: from now on the body streams there.

        @return: C{(held, resume)}: the body pieces held so far, to send
            with the request head (or L{None}), and whether the client was
            paused for them and can be resumed.
        """
        self.sent = True
        pending, self.pending = self.pending, None
        held = self.pendingSize
        self.pendingSize = 0
        return pending, held > PRECONNECT_BUFFER

    def finish(self, upstream: IUpstreamConnection | None) -> bool:
        """
        Send the end of the body (the last chunk and trailers) once it is
        all there and streaming to C{upstream}.

        @return: whether the end was sent now.
        """
        if self.sentAll or not self.done or self.pending is not None or upstream is None:
            return False
        self.sentAll = True
        upstream.writeEnd(self.trailers)
        upstream.bodySent()
        return True

    def drop(self) -> bool:
        """
        The exchange ends without sending the held bytes.

        @return: whether the client was paused for them and can be resumed.
        """
        paused = self.pending is not None and self.pendingSize > PRECONNECT_BUFFER
        self.pending = None
        return paused

    def replayable(self) -> bool:
        """
        Whether the body can be sent again: none of it went upstream yet,
        or all of it is kept.
        """
        return not self.sent or (self.replay is not None and self.done)

    def rewind(self) -> None:
        """
        Make the kept copy the bytes to send on the next try.
        """
        if self.sent:
            self.pending = list(self.replay or ())
            self.pendingSize = self.replaySize
            self.sent = False
            self.sentAll = False
