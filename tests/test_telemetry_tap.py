"""
Tests for L{meshproxy.telemetry.tap}: the filters, the hub with fake
consumers on a fake clock (matching, bounds and drop counting, flow control,
heartbeat, close), and C{GET /admin/tap} over a real loopback admin site.
"""

from __future__ import annotations

import json
from typing import Any

import httptools
from prometheus_client import CollectorRegistry
from twisted.internet.defer import CancelledError, Deferred, inlineCallbacks, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.protocols.policies import WrappingFactory
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from meshproxy.telemetry.spans import SUMMARY_FIELDS, ISummarySink, TelemetryStats
from meshproxy.telemetry.tap import (
    HEARTBEAT,
    OPENING,
    TAP_PARAMETERS,
    TapFilter,
    TapHub,
    TapUnavailable,
)

TOKEN = "t4p-t0ken"


def makeSummary(**fields: Any) -> dict[str, Any]:
    """
    A request summary with every field of L{SUMMARY_FIELDS}: a GET of
    C{/api/users} on router C{web} answered 200 in 12.5 ms, unless
    C{fields} say otherwise.
    """
    summary: dict[str, Any] = {
        "time": "2026-12-01T09:00:00.123Z",
        "router": "web",
        "name": "/#/static/users",
        "method": "GET",
        "authority": "users.example",
        "path": "/api/users",
        "status": 200,
        "meshErr": None,
        "durationMs": 12.5,
        "ttfbMs": 10.0,
        "bytesIn": 0,
        "bytesOut": 42,
        "endpoint": "127.0.0.1:8081",
        "tries": 1,
        "traceId": "0af7651916cd43dd8448eb211c80319c",
        "reqId": "r-1",
        "client": "127.0.0.1",
        "identity": None,
    }
    unknown = set(fields) - set(SUMMARY_FIELDS)
    assert not unknown, unknown
    summary.update(fields)
    return summary


def lineOf(summary: dict[str, Any]) -> bytes:
    """
    The summary serialised as the request path does: compact JSON.
    """
    return json.dumps(summary, separators=(",", ":")).encode("utf-8")


def dataEvent(summary: dict[str, Any]) -> bytes:
    return b"data: " + lineOf(summary) + b"\n\n"


def droppedEvent(n: int) -> bytes:
    return b'event: dropped\ndata: {"dropped":%d}\n\n' % (n,)


END = b'event: end\ndata: {"reason":"shutdown"}\n\n'


class FilterTests(SynchronousTestCase):
    """
    L{TapFilter.fromQuery} reads the query, refusing bad values with a
    message naming them; L{TapFilter.matches} checks each field given.
    """

    def test_empty(self) -> None:
        tapFilter = TapFilter.fromQuery({})
        self.assertEqual(tapFilter, TapFilter())
        self.assertTrue(tapFilter.matches(makeSummary()))
        self.assertTrue(tapFilter.matches(makeSummary(router="db", status=0)))

    def test_everyParameter(self) -> None:
        tapFilter = TapFilter.fromQuery({
            "router": "web", "name": "/#/static/users", "path": "/api",
            "method": "get", "status": "5XX", "minDurationMs": "2.5",
        })
        self.assertEqual(tapFilter, TapFilter(
            router="web", name="/#/static/users", path="/api", method="GET",
            status=(500, 599), minDurationMs=2.5,
        ))
        self.assertEqual(
            set(TAP_PARAMETERS), {"router", "name", "path", "method", "status", "minDurationMs"}
        )

    def test_statusForms(self) -> None:
        self.assertEqual(TapFilter.fromQuery({"status": "1xx"}).status, (100, 199))
        self.assertEqual(TapFilter.fromQuery({"status": "404"}).status, (404, 404))
        self.assertEqual(TapFilter.fromQuery({"status": "0"}).status, (0, 0))
        self.assertEqual(TapFilter.fromQuery({"minDurationMs": "100"}).minDurationMs, 100.0)

    def assertRefused(self, values: dict[str, str], message: str) -> None:
        with self.assertRaises(ValueError) as caught:
            TapFilter.fromQuery(values)
        self.assertEqual(str(caught.exception), message)

    def test_badValues(self) -> None:
        self.assertRefused(
            {"staus": "5xx"},
            "unknown parameter 'staus' (the tap takes router=, name=, path=, method=,"
            " status=, minDurationMs=)",
        )
        self.assertRefused({"router": ""}, "router= is empty")
        self.assertRefused(
            {"name": "users"}, "name= is a bound name starting with / (/#/fs/users), got 'users'"
        )
        self.assertRefused(
            {"path": "api"}, "path= is a path prefix starting with / (/api), got 'api'"
        )
        self.assertRefused({"method": "G T"}, "method= is an HTTP method (GET), got 'G T'")
        for status in ("6xx", "5x", "600", "99", "abc", "5xx,4xx", "00"):
            self.assertRefused(
                {"status": status},
                "status= is a class (1xx to 5xx), a code (100 to 599) or 0 (no answer),"
                " got %r" % (status,),
            )
        for duration in ("-1", "1e3", "nan", "inf", "100ms", " 1", "1."):
            self.assertRefused(
                {"minDurationMs": duration},
                "minDurationMs= is a number of milliseconds (100, 2.5), got %r" % (duration,),
            )

    def test_matchesEachField(self) -> None:
        summary = makeSummary(status=503, durationMs=80.0)
        cases = [
            ({"router": "web"}, {"router": "db"}),
            ({"name": "/#/static/users"}, {"name": "/#/static/user"}),
            ({"path": "/api/"}, {"path": "/apix"}),
            ({"path": "/api/users"}, {"path": "/api/users/1"}),
            ({"method": "GET"}, {"method": "POST"}),
            ({"status": "5xx"}, {"status": "4xx"}),
            ({"status": "503"}, {"status": "502"}),
            ({"minDurationMs": "80"}, {"minDurationMs": "80.001"}),
        ]
        for matching, other in cases:
            self.assertTrue(TapFilter.fromQuery(matching).matches(summary), matching)
            self.assertFalse(TapFilter.fromQuery(other).matches(summary), other)

    def test_clientGoneAndUnrouted(self) -> None:
        """
        Status 0 (no answer) is only matched by C{status=0}; a request not
        routed (no bound name) by no C{name=}.
        """
        gone = makeSummary(status=0, name=None, ttfbMs=None)
        self.assertTrue(TapFilter.fromQuery({"status": "0"}).matches(gone))
        self.assertFalse(TapFilter.fromQuery({"status": "1xx"}).matches(gone))
        self.assertFalse(TapFilter.fromQuery({"name": "/#/static/users"}).matches(gone))
        self.assertFalse(TapFilter.fromQuery({"status": "0"}).matches(makeSummary()))

    def test_allFieldsMustMatch(self) -> None:
        tapFilter = TapFilter.fromQuery({"router": "web", "status": "2xx", "method": "POST"})
        self.assertFalse(tapFilter.matches(makeSummary()))
        self.assertTrue(tapFilter.matches(makeSummary(method="POST")))


class PausingConsumer(StringTransport):
    """
    A consumer that pauses its producer when it has taken C{room} more
    writes, as a transport whose buffer fills does.
    """

    room: int | None = None

    def write(self, data: bytes) -> None:
        super().write(data)
        if self.room is not None:
            self.room -= 1
            if self.room <= 0:
                self.room = None
                self.producer.pauseProducing()


class HubTests(SynchronousTestCase):
    """
    L{TapHub} with fake consumers on a fake clock.
    """

    def setUp(self) -> None:
        self.stats = TelemetryStats()
        self.clock = Clock()
        self.hub = TapHub(self.stats, clock=self.clock, maxEvents=3, maxBytes=4096)

    def subscribe(self, **query: str) -> tuple[Any, PausingConsumer]:
        consumer = PausingConsumer()
        subscription = self.hub.subscribe(TapFilter.fromQuery(query), consumer)
        return subscription, consumer

    def send(self, **fields: Any) -> dict[str, Any]:
        summary = makeSummary(**fields)
        self.hub.summarize(summary, lineOf(summary))
        return summary

    def test_interfaces(self) -> None:
        self.assertTrue(verifyObject(ISummarySink, self.hub))
        subscription, _ = self.subscribe()
        self.assertTrue(verifyObject(IPushProducer, subscription))

    def test_subscribeRegistersAndOpens(self) -> None:
        """
        The subscription is its consumer's streaming producer, and the
        stream starts with a comment (so that the response's head goes out).
        """
        subscription, consumer = self.subscribe(router="web")
        self.assertIs(consumer.producer, subscription)
        self.assertTrue(consumer.streaming)
        self.assertEqual(consumer.value(), OPENING)
        self.assertEqual(self.hub.subscriptions, (subscription,))

    def test_wantsOnlyWithAMatchingRouterSubscriber(self) -> None:
        self.assertFalse(self.hub.wants("web"))
        web, _ = self.subscribe(router="web")
        self.assertTrue(self.hub.wants("web"))
        self.assertFalse(self.hub.wants("db"))
        other, _ = self.subscribe(router="web", status="5xx")
        self.hub.unsubscribe(web)
        self.assertTrue(self.hub.wants("web"))
        self.hub.unsubscribe(other)
        self.assertFalse(self.hub.wants("web"))
        anyRouter, _ = self.subscribe(status="5xx")
        self.assertTrue(self.hub.wants("web"))
        self.assertTrue(self.hub.wants("db"))
        self.hub.unsubscribe(anyRouter)
        self.assertFalse(self.hub.wants("db"))

    def test_matchingSubscribersGetTheEvent(self) -> None:
        """
        Each summary goes, as one C{data:} event, to every subscriber whose
        filter it matches, and only to those.
        """
        _, errors = self.subscribe(router="web", status="5xx")
        _, posts = self.subscribe(router="web", method="POST")
        _, everything = self.subscribe()
        _, db = self.subscribe(router="db")
        for consumer in (errors, posts, everything, db):
            consumer.clear()
        failed = self.send(status=502)
        posted = self.send(method="POST")
        other = self.send(router="db", status=503)
        self.assertEqual(errors.value(), dataEvent(failed))
        self.assertEqual(posts.value(), dataEvent(posted))
        self.assertEqual(
            everything.value(), dataEvent(failed) + dataEvent(posted) + dataEvent(other)
        )
        self.assertEqual(db.value(), dataEvent(other))
        self.assertEqual(self.stats.tapEvents, 6)
        self.assertEqual(self.stats.tapDropped, 0)

    def test_pausedQueuesThenFlushesInOrder(self) -> None:
        subscription, consumer = self.subscribe()
        consumer.clear()
        subscription.pauseProducing()
        first, second = self.send(path="/1"), self.send(path="/2")
        self.assertEqual(consumer.value(), b"")
        self.assertEqual(subscription.queued, 2)
        subscription.resumeProducing()
        self.assertEqual(consumer.value(), dataEvent(first) + dataEvent(second))
        self.assertEqual(subscription.queued, 0)
        self.assertEqual(subscription.queuedBytes, 0)
        third = self.send(path="/3")
        self.assertEqual(consumer.value(), dataEvent(first) + dataEvent(second) + dataEvent(third))

    def test_fullQueueDropsCountsAndAnnounces(self) -> None:
        """
        Past C{maxEvents} queued, events are dropped and counted; when the
        reader catches up it is told how many, after the queued events.
        """
        subscription, consumer = self.subscribe()
        consumer.clear()
        subscription.pauseProducing()
        sent = [self.send(path="/%d" % (i,)) for i in range(5)]
        self.assertEqual(subscription.queued, 3)
        self.assertEqual((subscription.dropped, self.stats.tapDropped), (2, 2))
        self.assertEqual(self.stats.tapEvents, 3)
        subscription.resumeProducing()
        self.assertEqual(
            consumer.value(), b"".join(dataEvent(s) for s in sent[:3]) + droppedEvent(2)
        )
        later = self.send(path="/later")
        self.assertTrue(consumer.value().endswith(droppedEvent(2) + dataEvent(later)))

    def test_queueBoundedInBytes(self) -> None:
        subscription, consumer = self.subscribe()
        subscription.pauseProducing()
        big = makeSummary(path="/" + "x" * 1500)
        for _ in range(3):
            self.hub.summarize(big, lineOf(big))
        self.assertEqual((subscription.queued, subscription.dropped), (2, 1))
        self.assertLessEqual(subscription.queuedBytes, 4096)

    def test_dropsAnnouncedWhereTheyHappened(self) -> None:
        """
        Events accepted after a drop come after its announcement, even when
        the reader had not caught up in between.
        """
        subscription, consumer = self.subscribe()
        consumer.clear()
        subscription.pauseProducing()
        sent = [self.send(path="/%d" % (i,)) for i in range(5)]
        # The reader takes one event, then is slow again.
        consumer.room = 1
        subscription.resumeProducing()
        self.assertEqual(consumer.value(), dataEvent(sent[0]))
        # One slot is free, but the announcement of the 2 dropped needs a
        # slot too: the next event is dropped as well.
        late = self.send(path="/late")
        self.assertEqual(subscription.dropped, 3)
        consumer.room = 1
        subscription.resumeProducing()
        later = self.send(path="/later")
        subscription.resumeProducing()
        self.assertEqual(
            consumer.value(),
            dataEvent(sent[0]) + dataEvent(sent[1]) + dataEvent(sent[2]) + droppedEvent(3)
            + dataEvent(later),
        )
        self.assertNotIn(lineOf(late), consumer.value())

    def test_dropMarkerBeforeLaterQueuedEvents(self) -> None:
        subscription, consumer = self.subscribe()
        consumer.clear()
        subscription.pauseProducing()
        sent = [self.send(path="/%d" % (i,)) for i in range(4)]
        consumer.room = 2
        subscription.resumeProducing()
        after = self.send(path="/after")
        self.assertEqual(subscription.queued, 2)
        subscription.resumeProducing()
        self.assertEqual(
            consumer.value(),
            b"".join(dataEvent(s) for s in sent[:3]) + droppedEvent(1) + dataEvent(after),
        )

    def test_slowSubscriberDoesNotHoldOthers(self) -> None:
        slow, slowConsumer = self.subscribe()
        _, fast = self.subscribe()
        fast.clear()
        slow.pauseProducing()
        sent = [self.send(path="/%d" % (i,)) for i in range(50)]
        self.assertEqual(fast.value(), b"".join(dataEvent(s) for s in sent))
        self.assertEqual((slow.queued, slow.dropped), (3, 47))
        self.assertEqual(self.stats.tapDropped, 47)

    def test_unsubscribe(self) -> None:
        subscription, consumer = self.subscribe(router="web")
        subscription.pauseProducing()
        self.send()
        self.hub.unsubscribe(subscription)
        self.hub.unsubscribe(subscription)
        self.assertEqual(self.hub.subscriptions, ())
        self.assertFalse(self.hub.wants("web"))
        self.assertEqual(subscription.queued, 0)
        consumer.clear()
        self.send()
        subscription.resumeProducing()
        self.assertEqual(consumer.value(), b"")
        self.assertNoResult(subscription.ended)

    def test_stopProducingUnsubscribes(self) -> None:
        subscription, _ = self.subscribe()
        subscription.stopProducing()
        self.assertEqual(self.hub.subscriptions, ())

    def test_cancellingEndedUnsubscribes(self) -> None:
        subscription, _ = self.subscribe()
        subscription.ended.cancel()
        self.failureResultOf(subscription.ended, CancelledError)
        self.assertEqual(self.hub.subscriptions, ())

    def test_heartbeat(self) -> None:
        """
        Every 15 s each subscriber not paused gets a comment; the timer
        runs only while there are subscribers.
        """
        self.assertEqual(self.clock.getDelayedCalls(), [])
        idle, idleConsumer = self.subscribe()
        slow, slowConsumer = self.subscribe()
        idleConsumer.clear()
        slowConsumer.clear()
        slow.pauseProducing()
        self.clock.advance(14.9)
        self.assertEqual(idleConsumer.value(), b"")
        self.clock.advance(0.1)
        self.assertEqual(idleConsumer.value(), HEARTBEAT)
        self.clock.advance(15)
        self.assertEqual(idleConsumer.value(), HEARTBEAT * 2)
        self.assertEqual(slowConsumer.value(), b"")
        self.hub.unsubscribe(idle)
        self.hub.unsubscribe(slow)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_closeEndsEveryStream(self) -> None:
        """
        close() writes what was queued (paused or not), the drops, the end
        event, unregisters the producer and fires C{ended}; then the hub
        takes no subscriber and wants nothing.
        """
        paused, pausedConsumer = self.subscribe(router="web")
        idle, idleConsumer = self.subscribe()
        pausedConsumer.clear()
        idleConsumer.clear()
        paused.pauseProducing()
        sent = [self.send(path="/%d" % (i,)) for i in range(4)]
        idleConsumer.clear()
        self.hub.close()
        self.assertEqual(
            pausedConsumer.value(),
            b"".join(dataEvent(s) for s in sent[:3]) + droppedEvent(1) + END,
        )
        self.assertEqual(idleConsumer.value(), END)
        for subscription, consumer in ((paused, pausedConsumer), (idle, idleConsumer)):
            self.assertIsNone(consumer.producer)
            self.assertIsNone(self.successResultOf(subscription.ended))
        self.assertEqual(self.hub.subscriptions, ())
        self.assertFalse(self.hub.wants("web"))
        self.assertEqual(self.clock.getDelayedCalls(), [])
        with self.assertRaises(TapUnavailable) as caught:
            self.subscribe()
        self.assertEqual(str(caught.exception), "the tap is closed: the proxy is shutting down")
        self.hub.close()
        self.assertEqual(pausedConsumer.value().count(b"event: end"), 1)

    def test_subscribersBounded(self) -> None:
        hub = TapHub(self.stats, clock=self.clock, maxSubscribers=2)
        for _ in range(2):
            hub.subscribe(TapFilter(), StringTransport())
        with self.assertRaises(TapUnavailable) as caught:
            hub.subscribe(TapFilter(), StringTransport())
        self.assertEqual(str(caught.exception), "too many tap subscribers (at most 2 at once)")

    def test_failingConsumerUnsubscribed(self) -> None:
        """
        A consumer that raises is unsubscribed and logged; the others get
        the event and summarize() does not raise.
        """
        broken, brokenConsumer = self.subscribe()
        _, good = self.subscribe()
        good.clear()

        def fail(data: bytes) -> None:
            raise RuntimeError("boom")

        brokenConsumer.write = fail  # type: ignore[method-assign]
        summary = self.send()
        self.assertEqual(good.value(), dataEvent(summary))
        self.assertNotIn(broken, self.hub.subscriptions)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


# -- GET /admin/tap over a real loopback admin site ----------------------------


class _Tracking(WrappingFactory):
    """
    A factory wrapper that can close all of its connections and wait for
    them to be gone, so that a test leaves a clean reactor.
    """

    def __init__(self, wrapped: Any) -> None:
        super().__init__(wrapped)
        self._waiting: list[Deferred] = []

    def unregisterProtocol(self, p: Any) -> None:
        super().unregisterProtocol(p)
        if not self.protocols:
            waiting, self._waiting = self._waiting, []
            for d in waiting:
                d.callback(None)

    def closeAll(self) -> Deferred:
        if not self.protocols:
            return succeed(None)
        d: Deferred = Deferred()
        self._waiting.append(d)
        for p in list(self.protocols):
            p.transport.abortConnection()
        return d


class WatchedHub(TapHub):
    """
    A hub that tells when a subscriber comes and goes.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._onSubscribe: list[Deferred] = []
        self._onUnsubscribe: list[Deferred] = []

    def subscribe(self, *args: Any, **kwargs: Any) -> Any:
        subscription = super().subscribe(*args, **kwargs)
        waiting, self._onSubscribe = self._onSubscribe, []
        for d in waiting:
            d.callback(subscription)
        return subscription

    def unsubscribe(self, subscription: Any) -> None:
        known = subscription in self.subscriptions
        super().unsubscribe(subscription)
        if known:
            waiting, self._onUnsubscribe = self._onUnsubscribe, []
            for d in waiting:
                d.callback(subscription)

    def nextSubscribe(self) -> Deferred:
        d: Deferred = Deferred()
        self._onSubscribe.append(d)
        return d

    def nextUnsubscribe(self) -> Deferred:
        d: Deferred = Deferred()
        self._onUnsubscribe.append(d)
        return d


class SSEClient(Protocol):
    """
    Sends one raw request and reads the answer as it comes: the status and
    headers, then the body, split into server-sent events and comments.

    @ivar events: C{(event, data)} of each event, C{event} being
        C{"message"} for unnamed ones.
    @ivar comments: the comment lines, without the colon.
    """

    def __init__(self) -> None:
        self.status: int | None = None
        self.headers: dict[bytes, bytes] = {}
        self.body = b""
        self.events: list[tuple[str, str]] = []
        self.comments: list[str] = []
        self.complete = False
        self.closed: Deferred = Deferred()
        self._pending = b""
        self._kind = "message"
        self._data: list[str] = []
        self._waiters: list[tuple[Any, Deferred]] = []
        self._parser = httptools.HttpResponseParser(self)

    def dataReceived(self, data: bytes) -> None:
        self._parser.feed_data(data)
        self._check()

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.lower()] = value

    def on_headers_complete(self) -> None:
        self.status = self._parser.get_status_code()

    def on_body(self, data: bytes) -> None:
        self.body += data
        self._pending += data
        while b"\n" in self._pending:
            raw, self._pending = self._pending.split(b"\n", 1)
            line = raw.decode("utf-8")
            if not line:
                if self._data:
                    self.events.append((self._kind, "\n".join(self._data)))
                self._kind, self._data = "message", []
            elif line.startswith(":"):
                self.comments.append(line[1:].strip())
            else:
                field, _, value = line.partition(": ")
                if field == "event":
                    self._kind = value
                else:
                    self._data.append(value)

    def on_message_complete(self) -> None:
        self.complete = True

    def connectionLost(self, reason: Any) -> None:
        waiting, self._waiters = self._waiters, []
        for _, d in waiting:
            d.callback(self)
        self.closed.callback(None)

    def _check(self) -> None:
        waiting, self._waiters = self._waiters, []
        for predicate, d in waiting:
            if predicate(self):
                d.callback(self)
            else:
                self._waiters.append((predicate, d))

    def when(self, predicate: Any) -> Deferred:
        """
        A Deferred firing with this client once C{predicate(client)} is
        true, or when the connection closes (the test then asserts).
        """
        if predicate(self):
            return succeed(self)
        d: Deferred = Deferred()
        self._waiters.append((predicate, d))
        return d

    def subscribed(self) -> Deferred:
        """
        Once the stream's opening comment came: the hub has the subscriber.
        """
        return self.when(lambda c: "meshproxy tap" in c.comments)

    def answered(self) -> Deferred:
        return self.when(lambda c: c.complete)

    def header(self, name: str) -> str | None:
        value = self.headers.get(name.lower().encode("ascii"))
        return None if value is None else value.decode("latin-1")


class FakeRuntime:
    def __init__(self, routers: dict[str, Any]) -> None:
        self.routers = routers


class RouteTests(TestCase):
    """
    C{GET /admin/tap} through the admin site on a loopback port, read by a
    raw client.
    """

    timeout = 60

    def serve(
        self, *, hub: TapHub | None, token: str | None = None, protectReads: bool = False
    ) -> None:
        from twisted.internet import reactor

        from meshproxy.admin.api import AdminAPI
        from meshproxy.admin.site import AdminSite

        self.api = AdminAPI(
            FakeRuntime({"web": object(), "db": object()}), CollectorRegistry(),
            token=token, protectReads=protectReads, clock=reactor, tap=hub,
        )
        self.factory = _Tracking(AdminSite(self.api.app.resource()))
        port = reactor.listenTCP(0, self.factory, interface="127.0.0.1")
        self.port = port.getHost().port
        self.addCleanup(self.factory.closeAll)
        self.addCleanup(port.stopListening)

    def setUp(self) -> None:
        from twisted.internet import reactor

        self.stats = TelemetryStats()
        self.hub = WatchedHub(self.stats, clock=reactor)
        self.addCleanup(self.hub.close)

    @inlineCallbacks
    def connect(
        self, target: str = "/admin/tap?router=web", *, method: str = "GET",
        headers: dict[str, str] | None = None,
    ) -> Any:
        """
        Connect an L{SSEClient} and send C{method target}.
        """
        from twisted.internet import reactor

        client = SSEClient()
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", self.port), client)

        def close() -> Deferred | None:
            if client.transport.connected:
                client.transport.abortConnection()
                return client.closed
            return None

        self.addCleanup(close)
        head = {"Host": "127.0.0.1:%d" % (self.port,)}
        head.update(headers or {})
        client.transport.write(
            ("%s %s HTTP/1.1\r\n" % (method, target)).encode("ascii")
            + b"".join(
                ("%s: %s\r\n" % (name, value)).encode("latin-1") for name, value in head.items()
            )
            + b"\r\n"
        )
        return client

    def publish(self, **fields: Any) -> dict[str, Any]:
        summary = makeSummary(**fields)
        self.hub.summarize(summary, lineOf(summary))
        return summary

    @inlineCallbacks
    def test_streamsMatchingSummaries(self) -> Any:
        """
        A subscriber gets the summaries its query matches as C{data:}
        events, in the stream's headers, and the end event when the hub
        closes, after which the response is complete.
        """
        self.serve(hub=self.hub)
        client = yield self.connect("/admin/tap?router=web&status=5xx")
        yield client.subscribed()
        self.assertEqual(client.status, 200)
        self.assertEqual(client.header("content-type"), "text/event-stream")
        self.assertEqual(client.header("cache-control"), "no-cache")
        self.assertEqual(client.header("x-accel-buffering"), "no")
        [subscription] = self.hub.subscriptions
        self.assertEqual(subscription.filter, TapFilter(router="web", status=(500, 599)))
        self.publish(status=200)
        self.publish(router="db", status=503)
        failed = self.publish(status=502, meshErr="upstream-connect")
        yield client.when(lambda c: c.events)
        self.assertEqual(client.events, [("message", lineOf(failed).decode("utf-8"))])
        self.hub.close()
        yield client.answered()
        self.assertEqual(
            client.events,
            [("message", lineOf(failed).decode("utf-8")), ("end", '{"reason":"shutdown"}')],
        )
        self.assertEqual(self.stats.tapEvents, 1)

    @inlineCallbacks
    def test_nonMatchingSubscriberGetsNothing(self) -> Any:
        self.serve(hub=self.hub)
        users = yield self.connect("/admin/tap?router=web&name=/%23/static/users")
        posts = yield self.connect("/admin/tap?router=web&method=POST")
        yield users.subscribed()
        yield posts.subscribed()
        summary = self.publish()
        yield users.when(lambda c: c.events)
        self.hub.close()
        yield users.answered()
        yield posts.answered()
        self.assertEqual(users.events, [
            ("message", lineOf(summary).decode("utf-8")), ("end", '{"reason":"shutdown"}'),
        ])
        self.assertEqual(posts.events, [("end", '{"reason":"shutdown"}')])

    @inlineCallbacks
    def test_slowReaderDropsAndIsCounted(self) -> Any:
        """
        A reader that stops reading gets its events queued, then dropped and
        counted, while another subscriber gets every event; when it reads
        again it gets the queued events and how many were dropped.
        """
        from twisted.internet import reactor

        self.hub = WatchedHub(self.stats, clock=reactor, maxEvents=20, maxBytes=64 * 1024)
        self.addCleanup(self.hub.close)
        self.serve(hub=self.hub)
        slow = yield self.connect()
        fast = yield self.connect()
        yield slow.subscribed()
        yield fast.subscribed()
        slowSubscription = self.hub.subscriptions[0]
        slow.transport.pauseProducing()
        filler = "x" * 1000
        published = 0
        # The kernel's socket buffers take some megabytes before the slow
        # reader's transport stays paused: at most about 45 MB here. A batch
        # (about 45 KB) stays under the transport's 64 KiB, so that the
        # fast reader is never paused.
        for _ in range(1000):
            for _ in range(32):
                self.publish(path="/%d/%s" % (published, filler))
                published += 1
                self.assertLessEqual(slowSubscription.queued, 20)
                self.assertLessEqual(slowSubscription.queuedBytes, 64 * 1024)
            count = published
            yield fast.when(lambda c, count=count: len(c.events) >= count)
            self.assertEqual(len(fast.events), count)
            if slowSubscription.dropped:
                break
        dropped = slowSubscription.dropped
        self.assertGreater(dropped, 0)
        self.assertEqual(self.stats.tapDropped, dropped)
        self.assertEqual(self.stats.tapEvents, 2 * published - dropped)
        self.assertEqual(len(fast.events), published)
        slow.transport.resumeProducing()
        yield slow.when(lambda c: sum(
            json.loads(data)["dropped"] for kind, data in c.events if kind == "dropped"
        ) >= dropped)
        received = [data for kind, data in slow.events if kind == "message"]
        self.assertEqual(len(received), published - dropped)
        # What it got is in order, and the announcement follows the last
        # event before the gap.
        paths = [json.loads(data)["path"] for data in received]
        numbers = [int(path.split("/")[1]) for path in paths]
        self.assertEqual(numbers, sorted(numbers))
        kinds = [kind for kind, _ in slow.events]
        self.assertEqual(kinds[-1], "dropped")
        self.assertEqual(numbers[-1], published - dropped - 1)

    @inlineCallbacks
    def test_disconnectUnsubscribes(self) -> Any:
        self.serve(hub=self.hub)
        client = yield self.connect()
        yield client.subscribed()
        self.assertTrue(self.hub.wants("web"))
        gone = self.hub.nextUnsubscribe()
        client.transport.loseConnection()
        yield gone
        self.assertEqual(self.hub.subscriptions, ())
        self.assertFalse(self.hub.wants("web"))
        self.publish()
        self.assertEqual(self.stats.tapEvents, 0)

    @inlineCallbacks
    def test_closedHubAnswers503(self) -> Any:
        self.serve(hub=self.hub)
        self.hub.close()
        client = yield self.connect()
        yield client.answered()
        self.assertEqual(client.status, 503)
        self.assertEqual(client.header("content-type"), "application/json")
        self.assertIsNone(client.header("x-accel-buffering"))
        self.assertEqual(
            json.loads(client.body), {"error": "the tap is closed: the proxy is shutting down"}
        )

    @inlineCallbacks
    def test_withoutHub503(self) -> Any:
        self.serve(hub=None)
        client = yield self.connect()
        yield client.answered()
        self.assertEqual(client.status, 503)
        self.assertEqual(
            json.loads(client.body), {"error": "the live tap is not available on this proxy"}
        )

    @inlineCallbacks
    def assertRefused(self, target: str, code: int, body: dict[str, Any], **kwargs: Any) -> Any:
        client = yield self.connect(target, **kwargs)
        yield client.answered()
        self.assertEqual((client.status, json.loads(client.body)), (code, body))
        self.assertEqual(client.header("content-type"), "application/json")
        self.assertEqual(self.hub.subscriptions, ())
        return client

    @inlineCallbacks
    def test_badQueries(self) -> Any:
        self.serve(hub=self.hub)
        yield self.assertRefused(
            "/admin/tap?router=web&status=9xx", 400,
            {"error": "status= is a class (1xx to 5xx), a code (100 to 599) or 0 (no answer),"
                      " got '9xx'"},
        )
        yield self.assertRefused(
            "/admin/tap?router=web&minDurationMs=fast", 400,
            {"error": "minDurationMs= is a number of milliseconds (100, 2.5), got 'fast'"},
        )
        yield self.assertRefused(
            "/admin/tap?rooter=web", 400,
            {"error": "unknown parameter 'rooter' (the tap takes router=, name=, path=,"
                      " method=, status=, minDurationMs=)"},
        )
        yield self.assertRefused(
            "/admin/tap?router=web&status=5xx&status=4xx", 400,
            {"error": "give status= only once"},
        )
        yield self.assertRefused(
            "/admin/tap?router=nope", 404, {"error": "unknown router 'nope'"}
        )

    @inlineCallbacks
    def test_noRouterTapsEveryRouter(self) -> Any:
        self.serve(hub=self.hub)
        client = yield self.connect("/admin/tap?status=503")
        yield client.subscribed()
        self.assertTrue(self.hub.wants("db"))
        summary = self.publish(router="db", status=503)
        yield client.when(lambda c: c.events)
        self.assertEqual(client.events, [("message", lineOf(summary).decode("utf-8"))])

    @inlineCallbacks
    def test_head(self) -> Any:
        """
        HEAD gets the stream's head, and no stream.
        """
        self.serve(hub=self.hub)
        client = yield self.connect(method="HEAD")
        yield client.when(lambda c: c.status is not None)
        self.assertEqual(client.status, 200)
        self.assertEqual(client.header("content-type"), "text/event-stream")
        self.assertEqual(self.hub.subscriptions, ())

    @inlineCallbacks
    def test_hostGuard(self) -> Any:
        """
        The API's checks run first: a foreign C{Host} is refused (421).
        """
        self.serve(hub=self.hub)
        client = yield self.assertRefused(
            "/admin/tap?router=web", 421,
            {"error": "misdirected request: this admin API does not answer as host"
                      " 'evil.example' (use an IP address or localhost, or add the name to"
                      " admin.allowedHosts)"},
            headers={"Host": "evil.example"},
        )
        self.assertEqual(client.comments, [])

    @inlineCallbacks
    def test_tokenWhenReadsProtected(self) -> Any:
        self.serve(hub=self.hub, token=TOKEN, protectReads=True)
        client = yield self.assertRefused("/admin/tap?router=web", 401, {"error": "unauthorized"})
        self.assertEqual(client.header("www-authenticate"), "Bearer")
        client = yield self.assertRefused(
            "/admin/tap?router=web", 401, {"error": "unauthorized"},
            headers={"Authorization": "Bearer wrong"},
        )
        client = yield self.connect(headers={"Authorization": "Bearer " + TOKEN})
        yield client.subscribed()
        self.assertEqual(client.status, 200)

    @inlineCallbacks
    def test_tokenNotNeededForReadsByDefault(self) -> Any:
        self.serve(hub=self.hub, token=TOKEN)
        client = yield self.connect()
        yield client.subscribed()
        self.assertEqual(client.status, 200)

    @inlineCallbacks
    def test_heartbeatOnTheWire(self) -> Any:
        clock = Clock()
        self.hub = WatchedHub(self.stats, clock=clock)
        self.addCleanup(self.hub.close)
        self.serve(hub=self.hub)
        client = yield self.connect()
        yield client.subscribed()
        clock.advance(15)
        yield client.when(lambda c: "heartbeat" in c.comments)
        self.assertEqual(client.comments, ["meshproxy tap", "heartbeat"])
