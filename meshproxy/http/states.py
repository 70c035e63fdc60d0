"""
The states of an exchange and the moves between them, in one place.

Its life is one explicit state (L{ExchangeState.state})::

    NEW ──start──► WAITING ──connected──► SENDING ──body sent──► AWAITING
                     ▲                      │                      │
                     └──── retry ◄──────────┴──── try failed ◄─────┤
                                            │                      │
                                            └──── response head ───┴──► STREAMING ──► DONE

(any state goes to DONE when the exchange is answered with an error, or the
client goes away). How each way a try can end is retried or answered is
told in docs/architecture.md, "When a try fails".
"""

from __future__ import annotations

__all__ = ["AWAITING", "DONE", "NEW", "SENDING", "STREAMING", "WAITING", "ExchangeState"]

# The states of an exchange.
NEW = "new"
WAITING = "waiting"  # for a connection: connecting, pooled, or backing off
SENDING = "sending"  # the request head is out, its body is streaming
AWAITING = "awaiting"  # the whole request is out, waiting for the head
STREAMING = "streaming"  # the response is streaming to the client
DONE = "done"

_TRANSITIONS = {
    NEW: frozenset([WAITING, DONE]),
    WAITING: frozenset([SENDING, AWAITING, DONE]),
    SENDING: frozenset([AWAITING, STREAMING, WAITING, DONE]),
    AWAITING: frozenset([STREAMING, WAITING, DONE]),
    STREAMING: frozenset([DONE]),
    DONE: frozenset(),
}


class ExchangeState:
    """
    The state of an exchange: one of L{NEW}, L{WAITING}, L{SENDING},
    L{AWAITING}, L{STREAMING}, L{DONE}; moves are made with L{_enter}, and
    a move the diagram does not have raises.

    @ivar state: the current state.
    """

    __slots__ = ("state",)

    def __init__(self) -> None:
        self.state = NEW

    def _enter(self, state: str) -> None:
        """
        Move to C{state}; a move the diagram does not have is a bug.
        """
        if state not in _TRANSITIONS[self.state]:
            raise RuntimeError("exchange cannot go from %s to %s" % (self.state, state))
        self.state = state

    @property
    def done(self) -> bool:
        """
        Whether the exchange is over.
        """
        return self.state is DONE

    @property
    def responseStarted(self) -> bool:
        """
        Whether any response byte went to the client (no retry and no error
        answer is possible after that).
        """
        return self.state is STREAMING or self.state is DONE
