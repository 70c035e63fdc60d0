"""
What a worker reports to its supervisor over their AMP channel: the AMP
commands, and L{WorkerResponder}, the worker's side of them.

The supervisor (L{meshproxy.workers.merge.Aggregator}) calls, on each
worker's channel:

 - L{CollectMetrics}: the worker's metric families, read from its
   C{CollectorRegistry} when the command arrives (so an answer counts
   every request the worker answered before it), serialised by
   L{dumpFamilies}: JSON bytes of
   C{[[name, type, help, unit, [[sample, labels, value, exemplar], ...]], ...]},
   an exemplar being C{null} or C{[labels, value, timestamp]}.
 - L{CollectState}: the worker's routers as C{GET /admin/state} shows them
   (C{{"routers": {name: router.state()}}}), as JSON bytes.
 - L{CollectStats}: the traffic counters of C{GET /admin/stats} of the
   worker's routers (C{{"routers": {name: counters}}}), as JSON bytes.
 - L{CollectExplain} C{(router, names)}: for the bound names (JSON list
   of text) the worker's router has already bound, what an explain shows
   of each (its endpoints with their balancer scores); names it never
   bound are left out (asking does not bind them).
 - L{CollectRecentNames} C{(router)}: the logical names the worker's
   router routed recently (for the rules dry run), most recent first.
 - L{TapSubscribe} C{(key, filter)} / L{TapUnsubscribe} C{(key)}: start
   and stop a subscription to the worker's L{TapHub}, for one distinct
   L{TapFilter} of the supervisor's tap subscribers, under a key the
   supervisor chose.
 - L{TapEvents} C{(key)}: a long poll for that subscription's events. The
   worker answers as soon as it has events (those of one reactor turn
   together), with the server-sent-event frames its hub wrote
   (C{data: ...} and C{event: dropped} frames, concatenated), or with
   C{ended} when the subscription is over. The supervisor asks again once
   it has the answer, so at most one batch per subscription is in flight.
   While the supervisor has not asked, the worker buffers up to
   C{maxTapBytes} bytes, then pauses its hub's subscription, whose own
   bounded queue takes over, then drops (counted in the worker's
   C{meshproxy_tap_dropped_total}, and announced in the stream by an
   C{event: dropped} frame). The tap thus stays bounded across the pipe
   and never slows the worker's data path.

   (Events are pulled by the supervisor, not pushed by the worker: the
   supervisor's side of the seam only holds each worker's C{callRemote},
   and a pull bounds what is in flight without any window to tune.)

AMP limits a value to 64 KiB: L{BigBytes} spreads larger ones over several
keys of one box (C{name} holds the number of chunks, C{name.0},
C{name.1}, ... the chunks), so a C{/metrics} of thousands of endpoints is
one answer.

A worker builds one L{WorkerResponder} and answers with it on its
channel: C{amp.AMP(locator=responder)}, or from a locator of its own whose
C{locateResponder(name)} falls back to C{responder.locateResponder(name)}.
When the channel is lost, call L{WorkerResponder.stop}.
"""

from __future__ import annotations

import json
from typing import Any, cast

import attrs
from prometheus_client.registry import Collector, CollectorRegistry
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import (
    IConsumer,
    IDelayedCall,
    IProducer,
    IPushProducer,
    IReactorTime,
)
from twisted.logger import Logger
from twisted.protocols import amp
from zope.interface import implementer

from meshproxy.telemetry.tap import TapFilter, TapHub, TapUnavailable

__all__ = [
    "CHUNK",
    "MAX_CHUNKS",
    "MAX_TAP_BYTES",
    "BigBytes",
    "CollectExplain",
    "CollectMetrics",
    "CollectRecentNames",
    "CollectState",
    "CollectStats",
    "TapEvents",
    "TapSubscribe",
    "TapUnsubscribe",
    "WorkerResponder",
    "dumpFamilies",
    "dumpFilter",
    "familiesOf",
    "loadFamilies",
    "loadFilter",
]

_log = Logger()

CHUNK = 0xFFFF
"""The most bytes of a L{BigBytes} value in one AMP value (AMP's limit)."""

MAX_CHUNKS = 1024
"""The most chunks a L{BigBytes} value is read from (64 MiB): a bound on
what a peer can make the reader join."""

MAX_TAP_BYTES = 256 * 1024
"""The tap event bytes a worker buffers per subscription between two polls
of the supervisor, before it pauses its hub's subscription."""


class BigBytes(amp.Argument):
    """
    A bytes value of any length up to L{MAX_CHUNKS} times L{CHUNK}: spread
    over the keys C{name} (the number of chunks, in decimal) and
    C{name.0}, C{name.1}, ... (the chunks, in order).
    """

    def toBox(
        self, name: bytes, strings: dict[bytes, bytes], objects: dict[str, Any], proto: Any
    ) -> None:
        value = objects.pop(name.decode("ascii"))
        if not isinstance(value, bytes):
            raise TypeError(f"{name!r} must be bytes, not {type(value).__name__}")
        count = max(1, -(-len(value) // CHUNK))
        if count > MAX_CHUNKS:
            raise amp.TooLong(False, True, value[:64], name)
        strings[name] = b"%d" % (count,)
        for index in range(count):
            strings[name + b".%d" % (index,)] = value[index * CHUNK:(index + 1) * CHUNK]

    def fromBox(
        self, name: bytes, strings: dict[bytes, bytes], objects: dict[str, Any], proto: Any
    ) -> None:
        countText = strings.pop(name)
        if not countText.isdigit() or not 0 < int(countText) <= MAX_CHUNKS:
            raise ValueError(f"{name!r}: bad chunk count {countText[:20]!r}")
        objects[name.decode("ascii")] = b"".join(
            strings.pop(name + b".%d" % (index,)) for index in range(int(countText))
        )


class CollectMetrics(amp.Command):
    """
    Supervisor to worker: the worker's metric families now, as
    L{dumpFamilies} serialises them.
    """

    response = [(b"families", BigBytes())]


class CollectState(amp.Command):
    """
    Supervisor to worker: its routers' state, as JSON bytes of
    C{{"routers": {name: state}}}.
    """

    response = [(b"state", BigBytes())]


class CollectStats(amp.Command):
    """
    Supervisor to worker: its routers' traffic counters, as JSON bytes of
    C{{"routers": {name: counters}}} (the shape of C{GET /admin/stats}'s
    routers, see L{meshproxy.admin.stats}).
    """

    response = [(b"stats", BigBytes())]


class CollectExplain(amp.Command):
    """
    Supervisor to worker: what an explain shows of some bound names of one
    router (C{names}: JSON bytes of a list of text), as JSON bytes of
    C{{name: entry}}, each entry the bound name's state with its endpoints'
    C{score}; only the names the router has bound already (an unknown
    router answers C{{}}).
    """

    arguments = [(b"router", amp.Unicode()), (b"names", BigBytes())]
    response = [(b"entries", BigBytes())]


class CollectRecentNames(amp.Command):
    """
    Supervisor to worker: the logical names one router routed recently,
    most recent first, as JSON bytes of a list of text (C{[]} for an
    unknown router or one without rules).
    """

    arguments = [(b"router", amp.Unicode())]
    response = [(b"names", BigBytes())]


class TapSubscribe(amp.Command):
    """
    Supervisor to worker: subscribe to the worker's tap with a filter (JSON
    bytes of L{dumpFilter}), under C{key}. Subscribing a key again replaces
    its subscription.
    """

    arguments = [(b"key", amp.Integer()), (b"filter", amp.String())]
    errors = {TapUnavailable: b"TAP_UNAVAILABLE", ValueError: b"BAD_FILTER"}


class TapUnsubscribe(amp.Command):
    """
    Supervisor to worker: end the subscription under C{key} (a pending
    L{TapEvents} is answered with C{ended}). An unknown key is no error.
    """

    arguments = [(b"key", amp.Integer())]


class TapEvents(amp.Command):
    """
    Supervisor to worker, a long poll: the events of subscription C{key}
    since the last poll, answered once there are some (C{events}: the
    concatenated server-sent-event frames) or once the subscription ended
    (C{ended}: no more polls for this key). An unknown key is answered
    C{ended} at once.
    """

    arguments = [(b"key", amp.Integer())]
    response = [(b"events", BigBytes()), (b"ended", amp.Boolean())]


def familiesOf(collector: Collector | CollectorRegistry) -> list[list[Any]]:
    """
    What a registry (or any collector) collects now, as plain lists:
    C{[[name, type, help, unit, samples], ...]}, each sample
    C{[name, labels, value, exemplar]} and each exemplar L{None} or
    C{[labels, value, timestamp]}. Sample timestamps are not kept (no
    meshproxy family has any).
    """
    families: list[list[Any]] = []
    for metric in collector.collect():
        samples = []
        for sample in metric.samples:
            exemplar = sample.exemplar
            samples.append([
                sample.name,
                sample.labels,
                sample.value,
                None if exemplar is None else [
                    exemplar.labels,
                    exemplar.value,
                    None if exemplar.timestamp is None else float(exemplar.timestamp),
                ],
            ])
        families.append([metric.name, metric.type, metric.documentation, metric.unit, samples])
    return families


def dumpFamilies(collector: Collector | CollectorRegistry) -> bytes:
    """
    Serialise what a registry (or any collector) collects now.

    @return: JSON bytes of what L{familiesOf} returns.
    """
    return json.dumps(familiesOf(collector), separators=(",", ":")).encode("utf-8")


def loadFamilies(data: bytes) -> list[tuple[str, str, str, str, list[list[Any]]]]:
    """
    Read what L{dumpFamilies} wrote.

    @return: C{(name, type, help, unit, samples)} per family.
    @raise ValueError: when C{data} is not in that shape.
    """
    loaded = json.loads(data)
    if not isinstance(loaded, list):
        raise ValueError("metric families: expected a list")
    families = []
    for family in loaded:
        if not (isinstance(family, list) and len(family) == 5):
            raise ValueError(f"metric families: bad family {str(family)[:80]}")
        name, typ, doc, unit, samples = family
        if not (isinstance(name, str) and isinstance(typ, str) and isinstance(samples, list)):
            raise ValueError(f"metric families: bad family {str(family)[:80]}")
        for sample in samples:
            if not (
                isinstance(sample, list)
                and len(sample) == 4
                and isinstance(sample[0], str)
                and isinstance(sample[1], dict)
                and isinstance(sample[2], (int, float))
            ):
                raise ValueError(f"metric families: bad sample {str(sample)[:80]} of {name}")
        families.append((name, typ, str(doc), str(unit or ""), samples))
    return families


def dumpFilter(tapFilter: TapFilter) -> bytes:
    """
    A L{TapFilter} as JSON bytes, for L{TapSubscribe}.
    """
    return json.dumps(attrs.asdict(tapFilter), separators=(",", ":")).encode("utf-8")


def loadFilter(data: bytes) -> TapFilter:
    """
    Read what L{dumpFilter} wrote.

    @raise ValueError: when C{data} is not a filter.
    """
    fields = json.loads(data)
    if not isinstance(fields, dict) or not set(fields) <= {
        field.name for field in attrs.fields(TapFilter)
    }:
        raise ValueError(f"not a tap filter: {data[:80]!r}")
    status = fields.get("status")
    if status is not None:
        if not (isinstance(status, list) and len(status) == 2):
            raise ValueError(f"tap filter: bad status {status!r}")
        fields["status"] = (int(status[0]), int(status[1]))
    return TapFilter(**fields)


@implementer(IConsumer)
class _TapPipe:
    """
    The consumer a worker's L{TapHub} writes one subscription's events to:
    it keeps them for the supervisor's next L{TapEvents} poll.

    Comments (the opening, heartbeats) and the end event are not kept: the
    supervisor's own hub writes its own.
    """

    def __init__(self, key: int, clock: IReactorTime, maxBytes: int) -> None:
        self.key = key
        self.subscription: Any = None
        self.ended = False
        self._clock = clock
        self._maxBytes = maxBytes
        self._frames: list[bytes] = []
        self._bytes = 0
        self._producer: IPushProducer | None = None
        self._paused = False
        self._waiter: Deferred[dict[str, Any]] | None = None
        self._answer: IDelayedCall | None = None

    # IConsumer, called by the hub's Subscription.

    def registerProducer(self, producer: IProducer, streaming: bool) -> None:
        self._producer = cast(IPushProducer, producer)

    def unregisterProducer(self) -> None:
        # The hub ended the stream (it closes: the worker drains).
        self._producer = None
        self.end()

    def write(self, data: bytes) -> None:
        if data.startswith((b":", b"event: end")):
            return
        self._frames.append(data)
        self._bytes += len(data)
        if self._bytes >= self._maxBytes and not self._paused and self._producer is not None:
            self._paused = True
            self._producer.pauseProducing()
        if self._waiter is not None and self._answer is None:
            # Later in this turn's end, so that the events of one turn (one
            # burst of requests) go in one answer.
            self._answer = self._clock.callLater(0, self._answerWaiter)

    def poll(self) -> Deferred[dict[str, Any]]:
        """
        The answer to a L{TapEvents} poll: now if there are events (or the
        subscription ended), else when the first comes. A poll made while
        another waits answers that one empty.
        """
        if self._waiter is not None:
            waiter, self._waiter = self._waiter, None
            waiter.callback({"events": b"", "ended": False})
        if self._frames or self.ended:
            return succeed(self._take())
        self._waiter = Deferred()
        return self._waiter

    def end(self) -> None:
        """
        The subscription is over: a waiting poll (and the next one) is
        answered with C{ended}.
        """
        self.ended = True
        if self._waiter is not None and self._answer is None:
            self._answer = self._clock.callLater(0, self._answerWaiter)

    def stop(self) -> None:
        """
        Forget everything: the channel is gone.
        """
        self.ended = True
        self._frames = []
        self._bytes = 0
        self._waiter = None
        if self._answer is not None and self._answer.active():
            self._answer.cancel()
        self._answer = None

    def _answerWaiter(self) -> None:
        self._answer = None
        waiter, self._waiter = self._waiter, None
        if waiter is not None:
            waiter.callback(self._take())

    def _take(self) -> dict[str, Any]:
        events = b"".join(self._frames)
        self._frames = []
        self._bytes = 0
        if self._paused and self._producer is not None:
            # The hub's queue flows into the buffer again (and may pause it
            # again at once).
            self._paused = False
            self._producer.resumeProducing()
        return {"events": events, "ended": self.ended and not self._frames}


class WorkerResponder(amp.CommandLocator):
    """
    A worker's answers to the supervisor's L{CollectMetrics},
    L{CollectState}, L{TapSubscribe}, L{TapUnsubscribe} and L{TapEvents}.

    @param registry: the worker's C{CollectorRegistry}, where its
        L{MeshMetrics<meshproxy.telemetry.metrics.MeshMetrics>} is
        registered (with the process collectors).
    @param state: the worker's L{Runtime<meshproxy.runtime.Runtime>} (or
        anything with C{routers}, a mapping of name to router with a
        C{state()}), whose routers' states are answered as
        C{{"routers": {name: router.state()}}}; or a callable returning
        that JSON-ready C{dict} itself.
    @param tap: the worker's L{TapHub}, the sink its request path hands
        summaries to; L{None} when it has none (tap subscriptions are then
        refused with L{TapUnavailable}).
    @param clock: to batch tap events of one reactor turn; the global
        reactor when L{None}.
    @param maxTapBytes: see L{MAX_TAP_BYTES}.
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        state: Any,
        tap: TapHub | None = None,
        *,
        clock: IReactorTime | None = None,
        maxTapBytes: int = MAX_TAP_BYTES,
    ) -> None:
        if clock is None:
            from twisted.internet import reactor

            clock = cast(IReactorTime, reactor)
        self._registry = registry
        self._state = state
        self._tap = tap
        self._clock: IReactorTime = clock
        self._maxTapBytes = maxTapBytes
        self._pipes: dict[int, _TapPipe] = {}

    @property
    def tapKeys(self) -> tuple[int, ...]:
        """
        The keys of the tap subscriptions in force, in order.
        """
        return tuple(sorted(key for key, pipe in self._pipes.items() if not pipe.ended))

    @CollectMetrics.responder
    def collectMetrics(self) -> dict[str, bytes]:
        return {"families": dumpFamilies(self._registry)}

    @CollectState.responder
    def collectState(self) -> dict[str, bytes]:
        source = self._state
        if callable(source):
            state = source()
        else:
            state = {"routers": {name: router.state() for name, router in source.routers.items()}}
        return {"state": json.dumps(state, separators=(",", ":")).encode("utf-8")}

    def _routers(self) -> dict[str, Any]:
        """
        The worker's routers by name (none when it was given a callable
        C{state}).
        """
        routers = getattr(self._state, "routers", None)
        return {} if routers is None else dict(routers)

    @CollectStats.responder
    def collectStats(self) -> dict[str, bytes]:
        from meshproxy.admin.stats import _routerStats

        stats = {name: _routerStats(name, router) for name, router in self._routers().items()}
        return {"stats": json.dumps({"routers": stats}, separators=(",", ":")).encode("utf-8")}

    @CollectExplain.responder
    def collectExplain(self, router: str, names: bytes) -> dict[str, bytes]:
        wanted = json.loads(names)
        if not isinstance(wanted, list):
            raise ValueError("names: expected a list")
        found = self._routers().get(router)
        entries: dict[str, Any] = {}
        if found is not None:
            wantedNames = {str(name) for name in wanted}
            for destination in _destinations(found):
                name = str(destination.name)
                if name in wantedNames:
                    entries[name] = _explainEntry(destination, found)
        return {"entries": json.dumps(entries, separators=(",", ":")).encode("utf-8")}

    @CollectRecentNames.responder
    def collectRecentNames(self, router: str) -> dict[str, bytes]:
        found = self._routers().get(router)
        table = getattr(found, "rules", None)
        names = [] if table is None else [str(name) for name in table.recentNames()]
        return {"names": json.dumps(names, separators=(",", ":")).encode("utf-8")}

    @TapSubscribe.responder
    def tapSubscribe(self, key: int, filter: bytes) -> dict[str, Any]:
        if self._tap is None:
            raise TapUnavailable("this worker has no tap")
        tapFilter = loadFilter(filter)
        self._end(key)
        pipe = _TapPipe(key, self._clock, self._maxTapBytes)
        pipe.subscription = self._tap.subscribe(tapFilter, pipe)
        self._pipes[key] = pipe
        return {}

    @TapUnsubscribe.responder
    def tapUnsubscribe(self, key: int) -> dict[str, Any]:
        self._end(key)
        return {}

    @TapEvents.responder
    def tapEvents(self, key: int) -> Deferred[dict[str, Any]] | dict[str, Any]:
        pipe = self._pipes.get(key)
        if pipe is None:
            return {"events": b"", "ended": True}
        answer = pipe.poll()
        if pipe.ended:
            # That answer is the last one (the hub closed): forget the key.
            del self._pipes[key]
        return answer

    def _end(self, key: int) -> None:
        """
        End the subscription under C{key}, if any: its waiting poll is
        answered with C{ended}, and the key is forgotten.
        """
        pipe = self._pipes.pop(key, None)
        if pipe is None:
            return
        if self._tap is not None and pipe.subscription is not None:
            self._tap.unsubscribe(pipe.subscription)
        pipe.end()

    def stop(self) -> None:
        """
        The channel to the supervisor is gone: end every tap subscription.
        """
        for pipe in list(self._pipes.values()):
            if self._tap is not None and pipe.subscription is not None:
                self._tap.unsubscribe(pipe.subscription)
            pipe.stop()
        self._pipes.clear()


def _destinations(router: Any) -> list[Any]:
    """
    The bound names a router has bound (each with C{name}, C{state()} and
    C{balancer}), without binding any: an HTTP router's C{clients}, a TCP
    router's C{destinations()}.
    """
    clients = getattr(router, "clients", None)
    if clients is not None:
        return list(clients)
    destinations = getattr(router, "destinations", None)
    if callable(destinations):
        return list(destinations())
    return []


def _explainEntry(destination: Any, router: Any) -> dict[str, Any]:
    """
    What an explain shows of one bound name (as
    L{explainBoundNames<meshproxy.balancing.bound.explainBoundNames>}): its
    state, with each endpoint's balancer C{score} now.
    """
    clock = getattr(router, "clock", None) or getattr(router, "reactor", None)
    now = clock.seconds() if clock is not None else 0.0
    entry: dict[str, Any] = destination.state()
    entry["name"] = str(destination.name)
    load = destination.balancer.load
    for node, ep in zip(destination.balancer.nodes(), entry["endpoints"], strict=False):
        ep["score"] = round(load(node, now), 3)
    return entry
