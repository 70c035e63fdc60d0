"""
The tries of an exchange: what one try holds on its endpoint (a C{pending}
place in the balancer, the failure accrual's attention, a place among the
requests waiting for a connection, a per-try timer, a connection or a
connection attempt), and how it is given back with a verdict, or without.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from meshproxy.http.states import ExchangeState

if TYPE_CHECKING:
    from twisted.internet.interfaces import IDelayedCall

    from meshproxy.balancing.node import Node
    from meshproxy.http.client import _Attempt
    from meshproxy.http.interfaces import IDestination, IRouter, IUpstreamConnection
    from meshproxy.http.timeouts import Timeout
    from meshproxy.telemetry.observe import RequestTrace

__all__ = ["TryAccounting"]


class TryAccounting(ExchangeState):
    """
    The accounting of an exchange's current try (the exchange sets these
    attributes; see L{Exchange<meshproxy.http.exchange.Exchange>}).

    @ivar client: the destination (L{IDestination}), once routed.
    @ivar node: the endpoint of the current try, or L{None} between tries.
    @ivar tryStart: when the current try started (its latency sample's
        start).
    @ivar tryTimer: the per-try timeout, or the wait before a retry.
    @ivar waiting: whether the try holds a place among the requests waiting
        for a connection (C{limits.maxPending}).
    @ivar triedNodes: the endpoints that failed this request, avoided by
        retries.
    @ivar unmeasured: whether the latency sample of the try's response
        head (from C{tryStart} to C{headTime}) is still to be given to the
        balancer (L{_sample}).
    @ivar upstream: the try's connection, or L{None}.
    @ivar connecting: the try's connection attempt, or L{None}.
    @ivar lastNode: the endpoint of the last try that ended.
    @ivar trace: the exchange's L{RequestTrace}, which keeps each try of a
        recorded trace for its client span, with C{tryStatus} (the status of
        the try's response head, 0 before one) and C{tryError} (why it
        failed, or L{None}).
    """

    __slots__ = (
        "client",
        "node",
        "tryStart",
        "tryTimer",
        "waiting",
        "triedNodes",
        "upstream",
        "connecting",
        "lastNode",
        "trace",
        "tryStatus",
        "tryError",
        "unmeasured",
    )

    client: IDestination | None
    node: Node | None
    lastNode: Node | None
    router: IRouter
    trace: RequestTrace | None
    tryStatus: int
    tryError: str | None
    tryStart: float
    headTime: float
    unmeasured: bool
    tryTimer: IDelayedCall | Timeout | None
    waiting: bool
    triedNodes: set[Node] | None
    upstream: IUpstreamConnection | None
    connecting: _Attempt | None

    def _closeTry(self) -> Node | None:
        """
        Stop the current try's timer and waiting; return its node (or
        L{None} when no try is under way), which is no longer current.
        """
        node = self.node
        if node is None:
            return None
        if self.unmeasured:
            self._sample()
        self.node = None
        self.lastNode = node
        trace = self.trace
        if trace is not None and trace.tries is not None:
            trace.endTry(self.router.clock.seconds(), node, self.tryStatus, self.tryError)
        self.tryStatus = 0
        self.tryError = None
        if self.waiting:
            self._stopWaiting()
        timer = self.tryTimer
        if timer is not None:
            self.tryTimer = None
            if timer.active():
                timer.cancel()
        return node

    def _sample(self) -> None:
        """
        Give the balancer the latency sample of the current try's response
        head, taken after its bytes were sent.
        """
        self.unmeasured = False
        self.client.balancer.measured(self.node, self.tryStart, self.headTime)  # type: ignore[union-attr]

    def _endTry(self, success: bool, measured: bool = False) -> None:
        """
        The current try ended with a verdict on its endpoint.

        @param measured: whether its latency was taken already (at the
            response head).
        """
        node = self._closeTry()
        if node is None:
            return
        self.client.endTry(node, None if measured else self.tryStart, success)  # type: ignore[union-attr]
        if not success:
            # A retry goes elsewhere when it can.
            if self.triedNodes is None:
                self.triedNodes = set()
            self.triedNodes.add(node)

    def _abandonTry(self) -> None:
        """
        The current try ends without a verdict on its endpoint.
        """
        node = self._closeTry()
        if node is not None:
            self.client.abandonTry(node)  # type: ignore[union-attr]

    def _stopWaiting(self) -> None:
        if self.waiting:
            self.waiting = False
            self.client.limiter.pendingRelease()  # type: ignore[union-attr]

    def _dropUpstream(self) -> None:
        """
        Let go of the current try's connection, or of its connection
        attempt.
        """
        self._stopWaiting()
        connecting, self.connecting = self.connecting, None
        if connecting is not None:
            connecting.abandon()
        upstream, self.upstream = self.upstream, None
        if upstream is not None:
            upstream.abort()
