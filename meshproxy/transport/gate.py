"""
A transport's reading, paused for several independent reasons at once.
"""

from __future__ import annotations

from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer

__all__ = ["PauseGate"]


@implementer(IPushProducer)
class PauseGate:
    """
    Pauses a transport's reading for several independent reasons at once
    (pipelining, back-pressure from the other side, a full buffer before a
    connection exists) and resumes it only when none is left; never again
    once L{ended} is set (Twisted would read the end of a half-closed
    transport again, and report it again).

    It is also the L{IPushProducer} registered on the other side's
    transport: that transport pausing it is the reason C{producerReason}.

    @ivar transport: the transport whose reading is gated.
    @ivar ended: whether the transport's peer ended its writing.
    """

    __slots__ = ("transport", "_reasons", "_producerReason", "ended")

    def __init__(self, transport: IPushProducer, producerReason: str = "peer") -> None:
        """
        @param transport: the transport whose reading is gated.
        @param producerReason: the reason used when the gate is paused as a
            producer.
        """
        self.transport = transport
        # A tuple, not a set: empty, as on every idle connection, it is the
        # one shared empty tuple, where an empty set costs each connection
        # 216 bytes; it rarely holds more than one reason.
        self._reasons: tuple[str, ...] = ()
        self._producerReason = producerReason
        self.ended = False

    @property
    def paused(self) -> bool:
        """
        Whether reading is paused, for any reason.
        """
        return bool(self._reasons)

    def pausedFor(self, reason: str) -> bool:
        """
        Whether C{reason} is one of the reasons reading is paused.
        """
        return reason in self._reasons

    def pause(self, reason: str) -> None:
        """
        Stop reading for C{reason}.
        """
        reasons = self._reasons
        if not reasons:
            self.transport.pauseProducing()
            self._reasons = (reason,)
        elif reason not in reasons:
            self._reasons = reasons + (reason,)

    def resume(self, reason: str) -> None:
        """
        Withdraw C{reason}; read again if no other reason remains.
        """
        reasons = self._reasons
        if reason in reasons:
            self._reasons = reasons = tuple(r for r in reasons if r != reason)
            if not reasons and not self.ended:
                self.transport.resumeProducing()

    def pauseProducing(self) -> None:
        self.pause(self._producerReason)

    def resumeProducing(self) -> None:
        self.resume(self._producerReason)

    def stopProducing(self) -> None:
        # The transport this gate produced for is gone: it holds nothing
        # back any more (the connection's owner closes what it must).
        self.resume(self._producerReason)
