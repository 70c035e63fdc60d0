"""
The live tap: request summaries streamed to subscribers as server-sent
events, as C{GET /admin/tap} serves them.

The request path hands every summary (the access log's JSON object, already
serialised) to the L{TapHub}, an L{ISummarySink}; it builds a summary for a
router only while L{TapHub.wants} says a subscriber would take it. The hub
gives each event to every subscriber whose L{TapFilter} matches, framed
once as C{data: <line>\\n\\n}.

A subscriber never slows the proxy down: each one is a push producer
(L{Subscription}) registered on its consumer (the admin API's request).
While its transport is paused (the reader is slower than the events), its
events wait in a queue of at most C{maxEvents} events and C{maxBytes}
bytes; past that they are dropped and counted (L{TelemetryStats.tapDropped},
and the subscription's own count), and the reader is told how many at the
place they were dropped, when it catches up::

    event: dropped
    data: {"dropped":12}

A comment (C{: heartbeat}) goes to every subscriber every
L{HEARTBEAT_INTERVAL} seconds, so that a quiet stream still shows it is
alive (and intermediaries do not close it). L{TapHub.close}, called when
the proxy drains, ends every stream cleanly: what was queued, then::

    event: end
    data: {"reason":"shutdown"}

then the response ends.
"""

from __future__ import annotations

import json
import re
from collections import deque
from collections.abc import Mapping
from typing import Any

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IConsumer, IDelayedCall, IPushProducer, IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from meshproxy.telemetry.spans import ISummarySink, TelemetryStats

__all__ = [
    "HEARTBEAT_INTERVAL",
    "MAX_BYTES",
    "MAX_EVENTS",
    "MAX_SUBSCRIBERS",
    "TAP_PARAMETERS",
    "Subscription",
    "TapFilter",
    "TapHub",
    "TapUnavailable",
]

_log = Logger()

MAX_EVENTS = 1000
"""The events a subscriber's queue holds while its reader is slow."""

MAX_BYTES = 1024 * 1024
"""The bytes a subscriber's queue holds while its reader is slow."""

MAX_SUBSCRIBERS = 64
"""The subscribers a hub takes at once."""

HEARTBEAT_INTERVAL = 15.0
"""Seconds between two heartbeat comments."""

TAP_PARAMETERS = ("router", "name", "path", "method", "status", "minDurationMs")
"""The query parameters of C{GET /admin/tap}, all optional."""

#: The first bytes of a stream: they send the response's head at once.
OPENING = b": meshproxy tap\n\n"
HEARTBEAT = b": heartbeat\n\n"

_METHOD = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_STATUS_CLASS = re.compile(r"([1-5])[xX][xX]")
_STATUS_CODE = re.compile(r"[1-5][0-9][0-9]|0")
_MILLISECONDS = re.compile(r"[0-9]+(\.[0-9]+)?")


def _event(kind: str, data: dict[str, Any]) -> bytes:
    """
    A named server-sent event with a JSON object as its data.
    """
    return b"event: %s\ndata: %s\n\n" % (
        kind.encode("ascii"),
        json.dumps(data, separators=(",", ":")).encode("utf-8"),
    )


@attrs.frozen
class TapFilter:
    """
    Which request summaries a subscriber wants: those matching every field
    given (L{None}: any).

    @ivar router: the router's name.
    @ivar name: the bound name, exactly (C{/#/fs/users}).
    @ivar path: a prefix of the request's path (plain text: C{/api} also
        matches C{/apix}; C{/api/} does not).
    @ivar method: the method, in upper case.
    @ivar status: the inclusive range of statuses: C{(500, 599)} for
        C{5xx}, C{(404, 404)} for one code; C{(0, 0)} for requests the
        client left before any answer.
    @ivar minDurationMs: the least duration, in milliseconds.
    """

    router: str | None = None
    name: str | None = None
    path: str | None = None
    method: str | None = None
    status: tuple[int, int] | None = None
    minDurationMs: float | None = None

    @classmethod
    def fromQuery(cls, values: Mapping[str, str]) -> TapFilter:
        """
        A filter from the query parameters of C{GET /admin/tap}.

        @param values: parameter name to its one value (see
            L{TAP_PARAMETERS}).
        @raise ValueError: with a message in the user's terms, for an
            unknown parameter or a bad value.
        """
        for key in values:
            if key not in TAP_PARAMETERS:
                raise ValueError(
                    "unknown parameter %r (the tap takes %s)"
                    % (key, ", ".join(p + "=" for p in TAP_PARAMETERS))
                )
        for key, value in values.items():
            if not value:
                raise ValueError(f"{key}= is empty")
        name = values.get("name")
        if name is not None and not name.startswith("/"):
            raise ValueError(f"name= is a bound name starting with / (/#/fs/users), got {name!r}")
        path = values.get("path")
        if path is not None and not path.startswith("/"):
            raise ValueError(f"path= is a path prefix starting with / (/api), got {path!r}")
        method = values.get("method")
        if method is not None:
            if _METHOD.fullmatch(method) is None:
                raise ValueError(f"method= is an HTTP method (GET), got {method!r}")
            method = method.upper()
        status = values.get("status")
        statusRange = None
        if status is not None:
            statusRange = _statusRange(status)
        minimum = values.get("minDurationMs")
        minDurationMs = None
        if minimum is not None:
            if _MILLISECONDS.fullmatch(minimum) is None:
                raise ValueError(
                    f"minDurationMs= is a number of milliseconds (100, 2.5), got {minimum!r}"
                )
            minDurationMs = float(minimum)
        return cls(
            router=values.get("router"),
            name=name,
            path=path,
            method=method,
            status=statusRange,
            minDurationMs=minDurationMs,
        )

    def matches(self, summary: Mapping[str, Any]) -> bool:
        """
        Whether a request summary passes this filter.

        @param summary: the fields of
            L{SUMMARY_FIELDS<meshproxy.telemetry.spans.SUMMARY_FIELDS>}.
        """
        if self.router is not None and summary.get("router") != self.router:
            return False
        if self.name is not None and summary.get("name") != self.name:
            return False
        if self.method is not None and summary.get("method") != self.method:
            return False
        if self.status is not None:
            status = summary.get("status")
            if not isinstance(status, int) or not self.status[0] <= status <= self.status[1]:
                return False
        if self.minDurationMs is not None:
            duration = summary.get("durationMs")
            if duration is None or duration < self.minDurationMs:
                return False
        if self.path is not None:
            path = summary.get("path")
            if not isinstance(path, str) or not path.startswith(self.path):
                return False
        return True


def _statusRange(text: str) -> tuple[int, int]:
    """
    The statuses a C{status=} value names: C{5xx}, C{404} or C{0}.

    @raise ValueError: for anything else.
    """
    match = _STATUS_CLASS.fullmatch(text)
    if match is not None:
        low = int(match.group(1)) * 100
        return (low, low + 99)
    if _STATUS_CODE.fullmatch(text) is not None:
        return (int(text), int(text))
    raise ValueError(
        f"status= is a class (1xx to 5xx), a code (100 to 599) or 0 (no answer), got {text!r}"
    )


class TapUnavailable(Exception):
    """
    The hub takes no subscriber now: it is closed (the proxy is shutting
    down), or it has L{MAX_SUBSCRIBERS} already. The message says which.
    """


@implementer(IPushProducer)
class Subscription:
    """
    One subscriber of a L{TapHub}: its filter, its queue, and the push
    producer its consumer pauses and resumes.

    Its queue holds, in order, the events (bytes) and, where events were
    dropped, the number dropped there (an int), announced to the reader
    when it gets there.

    @ivar filter: the L{TapFilter}.
    @ivar consumer: what the events are written to (an L{IConsumer}).
    @ivar sent: events written or queued for the consumer.
    @ivar dropped: events dropped because the queue was full.
    @ivar active: whether the hub still sends it events.
    @ivar ended: a Deferred firing with L{None} when the hub ended the
        stream (L{TapHub.close}): the end event is written and the producer
        unregistered; the owner finishes the response. Cancelling it
        unsubscribes. It does not fire when the subscriber went away.
    """

    def __init__(
        self,
        hub: TapHub,
        tapFilter: TapFilter,
        consumer: IConsumer,
        maxEvents: int,
        maxBytes: int,
    ) -> None:
        self.filter = tapFilter
        self.consumer = consumer
        self.sent = 0
        self.dropped = 0
        self.active = True
        self.ended: Deferred[None] = Deferred(lambda _: hub.unsubscribe(self))
        self._hub = hub
        self._stats = hub.stats
        self._maxEvents = maxEvents
        self._maxBytes = maxBytes
        self._queue: deque[bytes | int] = deque()
        self._queuedBytes = 0
        # Dropped since the last place an announcement was queued.
        self._unannounced = 0
        self._paused = False

    def __repr__(self) -> str:
        return "<Subscription %r sent=%d dropped=%d queued=%d%s>" % (
            self.filter, self.sent, self.dropped, self.queued,
            " paused" if self._paused else "",
        )

    @property
    def queued(self) -> int:
        """
        The events waiting in the queue.
        """
        return sum(1 for item in self._queue if not isinstance(item, int))

    @property
    def queuedBytes(self) -> int:
        """
        The bytes of the events waiting in the queue.
        """
        return self._queuedBytes

    @property
    def paused(self) -> bool:
        """
        Whether the consumer paused this producer.
        """
        return self._paused

    def send(self, event: bytes) -> None:
        """
        Write one event, or queue it while paused, or drop it when the queue
        is full. Never blocks.
        """
        if not self.active:
            return
        if not self._paused:
            # Not paused: the queue is empty and every drop announced.
            self.consumer.write(event)
            self.sent += 1
            self._stats.tapEvents += 1
            return
        queue = self._queue
        room = self._maxEvents - (1 if self._unannounced else 0)
        if len(queue) >= room or self._queuedBytes + len(event) > self._maxBytes:
            self.dropped += 1
            self._unannounced += 1
            self._stats.tapDropped += 1
            return
        if self._unannounced:
            queue.append(self._unannounced)
            self._unannounced = 0
        queue.append(event)
        self._queuedBytes += len(event)
        self.sent += 1
        self._stats.tapEvents += 1

    def heartbeat(self) -> None:
        """
        Write a heartbeat comment, unless paused (the reader then has
        events waiting, and a comment would wait too).
        """
        if not self._paused:
            self.consumer.write(HEARTBEAT)

    def _flush(self, force: bool) -> None:
        """
        Write what the queue holds, until the consumer pauses again (or all
        of it when C{force}), then the drops since the last event.
        """
        queue = self._queue
        write = self.consumer.write
        while queue and (force or not self._paused):
            item = queue.popleft()
            if isinstance(item, int):
                write(_event("dropped", {"dropped": item}))
            else:
                self._queuedBytes -= len(item)
                write(item)
        if not queue and self._unannounced and (force or not self._paused):
            write(_event("dropped", {"dropped": self._unannounced}))
            self._unannounced = 0

    def end(self, reason: str) -> None:
        """
        End the stream: write the queue (paused or not: it is bounded) and
        the end event, unregister from the consumer, fire L{ended}. Called
        by L{TapHub.close}, after the hub let go of this subscription.
        """
        self.active = False
        self._flush(force=True)
        self.consumer.write(_event("end", {"reason": reason}))
        self.consumer.unregisterProducer()
        self.ended.callback(None)

    def drop(self) -> None:
        """
        Forget the queue: the subscriber is gone.
        """
        self.active = False
        self._queue.clear()
        self._queuedBytes = 0

    # IPushProducer, called by the consumer (the request's channel).

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        if self.active:
            self._flush(force=False)

    def stopProducing(self) -> None:
        """
        The consumer's connection is gone: unsubscribe.
        """
        self._hub.unsubscribe(self)


@implementer(ISummarySink)
class TapHub:
    """
    The live tap's subscribers, and the sink the request path hands request
    summaries to.

    @ivar stats: the L{TelemetryStats} counting events sent
        (C{tapEvents}) and dropped (C{tapDropped}).
    @ivar closed: whether L{close} was called: no subscriber is taken any
        more.

    @param clock: the C{IReactorTime} of the heartbeat; the global reactor
        when L{None}.
    @param maxEvents: the events a slow subscriber's queue holds.
    @param maxBytes: the bytes a slow subscriber's queue holds.
    @param maxSubscribers: the subscribers taken at once.
    @param heartbeat: seconds between heartbeat comments.
    """

    def __init__(
        self,
        stats: TelemetryStats,
        *,
        clock: IReactorTime | None = None,
        maxEvents: int = MAX_EVENTS,
        maxBytes: int = MAX_BYTES,
        maxSubscribers: int = MAX_SUBSCRIBERS,
        heartbeat: float = HEARTBEAT_INTERVAL,
    ) -> None:
        if clock is None:
            from twisted.internet import reactor

            clock = reactor
        self.stats = stats
        self.closed = False
        self._clock: IReactorTime = clock
        self._maxEvents = maxEvents
        self._maxBytes = maxBytes
        self._maxSubscribers = maxSubscribers
        self._interval = heartbeat
        self._subscriptions: list[Subscription] = []
        # Copied on change, never mutated: summarize iterates them as they
        # were, whoever unsubscribes meanwhile.
        self._byRouter: dict[str, tuple[Subscription, ...]] = {}
        self._anyRouter: tuple[Subscription, ...] = ()
        self._beat: IDelayedCall | None = None

    @property
    def subscriptions(self) -> tuple[Subscription, ...]:
        """
        The subscriptions in force, oldest first.
        """
        return tuple(self._subscriptions)

    def wants(self, router: str) -> bool:
        """
        Whether a subscriber may take summaries of C{router}'s requests: one
        filters on that router, or on none.
        """
        return bool(self._anyRouter) or router in self._byRouter

    def summarize(self, summary: Mapping[str, Any], line: bytes) -> None:
        """
        Send one request's summary to every subscriber whose filter matches
        it. Never blocks: a slow subscriber's event is queued or dropped.

        @param summary: the fields of
            L{SUMMARY_FIELDS<meshproxy.telemetry.spans.SUMMARY_FIELDS>}.
        @param line: the same as compact JSON (no newline).
        """
        subscriptions = self._byRouter.get(summary["router"], ())
        if self._anyRouter:
            subscriptions += self._anyRouter
        event = None
        for subscription in subscriptions:
            try:
                if subscription.filter.matches(summary):
                    if event is None:
                        event = b"data: " + line + b"\n\n"
                    subscription.send(event)
            except Exception:
                _log.failure("tap subscriber {subscription} failed: unsubscribed",
                             subscription=subscription)
                self.unsubscribe(subscription)

    def subscribe(self, tapFilter: TapFilter, consumer: IConsumer) -> Subscription:
        """
        Add a subscriber: register its L{Subscription} on C{consumer} as a
        push producer and write the stream's opening comment.

        @param tapFilter: what it wants.
        @param consumer: where its events are written; typically the admin
            API's request, with the stream's headers set.
        @return: the L{Subscription}; its C{ended} fires if the hub closes.
        @raise TapUnavailable: when closed, or full.
        """
        if self.closed:
            raise TapUnavailable("the tap is closed: the proxy is shutting down")
        if len(self._subscriptions) >= self._maxSubscribers:
            raise TapUnavailable(
                "too many tap subscribers (at most %d at once)" % (self._maxSubscribers,)
            )
        subscription = Subscription(self, tapFilter, consumer, self._maxEvents, self._maxBytes)
        consumer.registerProducer(subscription, True)
        consumer.write(OPENING)
        self._subscriptions.append(subscription)
        router = tapFilter.router
        if router is None:
            self._anyRouter += (subscription,)
        else:
            self._byRouter[router] = self._byRouter.get(router, ()) + (subscription,)
        if self._beat is None:
            self._beat = self._clock.callLater(self._interval, self._heartbeat)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        """
        Remove a subscriber that went away: nothing more is written to its
        consumer. Removing one already removed does nothing.
        """
        if self._remove(subscription):
            subscription.drop()

    def _remove(self, subscription: Subscription) -> bool:
        """
        Take C{subscription} out of the hub's indexes.

        @return: whether it was there.
        """
        if subscription not in self._subscriptions:
            return False
        self._subscriptions.remove(subscription)
        router = subscription.filter.router
        if router is None:
            self._anyRouter = tuple(s for s in self._anyRouter if s is not subscription)
        else:
            left = tuple(s for s in self._byRouter.get(router, ()) if s is not subscription)
            if left:
                self._byRouter[router] = left
            else:
                self._byRouter.pop(router, None)
        if not self._subscriptions and self._beat is not None:
            if self._beat.active():
                self._beat.cancel()
            self._beat = None
        return True

    def _heartbeat(self) -> None:
        self._beat = None
        for subscription in list(self._subscriptions):
            try:
                subscription.heartbeat()
            except Exception:
                _log.failure("tap subscriber {subscription} failed: unsubscribed",
                             subscription=subscription)
                self.unsubscribe(subscription)
        if self._subscriptions:
            self._beat = self._clock.callLater(self._interval, self._heartbeat)

    def close(self, reason: str = "shutdown") -> None:
        """
        End every stream cleanly (what was queued, then an C{end} event) and
        take no subscriber any more. For the proxy's drain; calling it again
        does nothing.

        @param reason: what the end event says.
        """
        if self.closed:
            return
        self.closed = True
        for subscription in list(self._subscriptions):
            self._remove(subscription)
            try:
                subscription.end(reason)
            except Exception:
                _log.failure("ending tap subscriber {subscription} failed",
                             subscription=subscription)
