"""
Graceful shutdown shared by the routers' listening factories.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, succeed

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime

__all__ = ["DrainingFactoryMixin"]


class DrainingFactoryMixin:
    """
    Tracks the open connections of a factory and drains them at shutdown.

    A class using it sets C{connections} (a set), C{draining} (False) and
    C{_drained} (None) in its constructor, calls L{_lost} from each
    connection's C{connectionLost}, refuses new connections while
    C{draining}, and gives its connections a C{drain()} method (asked to end
    gracefully) and a C{transport}.
    """

    connections: set[Any]
    draining: bool
    _drained: Deferred[None] | None

    def drain(self, grace: float, clock: IReactorTime) -> Deferred[None]:
        """
        Refuse new connections, ask each open one to end, and abort whatever
        is left after C{grace} seconds.

        @param grace: seconds the open connections get to end by themselves.
        @param clock: gives C{callLater}.
        @return: a Deferred that fires when no connection is left.
        """
        self.draining = True
        for conn in list(self.connections):
            conn.drain()
        if not self.connections:
            return succeed(None)
        if self._drained is None:
            self._drained = Deferred()
        timer = clock.callLater(grace, self._abortAll)

        def done(result: Any) -> Any:
            if timer.active():
                timer.cancel()
            return result

        return self._drained.addBoth(done)

    def _abortAll(self) -> None:
        for conn in list(self.connections):
            conn.transport.abortConnection()

    def _lost(self, conn: Any) -> None:
        """
        C{conn} closed.
        """
        self.connections.discard(conn)
        if self._drained is not None and not self.connections:
            d, self._drained = self._drained, None
            d.callback(None)
