"""
Tests for meshproxy.telemetry.export: batching, bounds and failures on a
fake clock with a fake HTTP client; the Zipkin bodies against Zipkin's own
API schema; the OTLP bodies through the opentelemetry-proto messages; one
post over real loopback sockets.
"""

import base64
import copy
import gzip
import json
import os

import yaml
from google.protobuf import json_format
from jsonschema import Draft4Validator, ValidationError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span as OTLPSpan, Status
from twisted.application.service import IService
from twisted.internet import defer, error, reactor
from twisted.internet.task import Clock
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import ResponseDone
from twisted.web.iweb import UNKNOWN_LENGTH
from zope.interface.verify import verifyObject

from meshproxy.config.telemetry import BatchConfig, ExporterConfig, TracingConfig
from meshproxy.telemetry import export
from meshproxy.telemetry.export import (
    LOG_INTERVAL,
    SpanExporter,
    SpanFanOut,
    exportersFor,
    otlpJSON,
    zipkinJSON,
)
from meshproxy.telemetry.spans import (
    CLIENT,
    SERVER,
    SPAN_COUNT,
    ISpanSink,
    RequestSpans,
    Span,
    TelemetryStats,
    make,
)
from tests.telemetry_support import OTLP_PATH, ZIPKIN_PATH, ReceiverSite, SpanReceiver, receiverURL

DATA = os.path.join(os.path.dirname(__file__), "data")

TRACE = "0af7651916cd43dd8448eb211c80319c"


def makeSpan(**kw):
    """
    A finished span; keywords override the defaults.
    """
    values = dict(
        traceId=TRACE,
        spanId="b7ad6b7169203331",
        parentId=None,
        kind=SERVER,
        name="GET /svc/users",
        start=1700000000.123456,
        duration=0.0025,
        local=("meshproxy", "10.0.0.1", 4140),
        remote=("users", "10.0.0.2", 8080),
        tags={"http.method": "GET"},
        error=False,
    )
    values.update(kw)
    return Span(**values)


def names(spans):
    """
    The test encoder: span names, comma-separated.
    """
    return ",".join(s.name for s in spans).encode("ascii")


# -- a fake treq client ----------------------------------------------------------


class FakeBodyTransport:
    """
    The transport a response body protocol gets.
    """

    def __init__(self):
        self.stopped = False

    def stopProducing(self):
        self.stopped = True


class FakeResponse:
    """
    The parts of an IResponse the exporter reads.
    """

    def __init__(self, code, length=0):
        self.code = code
        self.length = length
        self.protocol = None
        self.transport = FakeBodyTransport()

    def deliverBody(self, protocol):
        self.protocol = protocol
        protocol.makeConnection(self.transport)


class FakePost:
    """
    One call of C{post}, answered by the test.
    """

    def __init__(self, url, data, headers, kwargs):
        self.url = url
        self.data = data
        self.headers = headers
        self.kwargs = kwargs
        self.cancelled = False
        self.deferred = defer.Deferred(self._cancel)

    def _cancel(self, d):
        self.cancelled = True

    def respond(self, code=202):
        self.deferred.callback(FakeResponse(code))

    def fail(self, exception):
        self.deferred.errback(Failure(exception))


class FakeClient:
    """
    Records posts; each is answered by the test.
    """

    def __init__(self):
        self.posts = []

    def post(self, url, data=None, headers=None, **kwargs):
        post = FakePost(url, data, headers, kwargs)
        self.posts.append(post)
        return post.deferred


class Fixture:
    """
    An exporter on a fake clock and a fake client.
    """

    def __init__(self, size=3, interval=1.0, queue=10, maxInFlight=2, gzip=False, timeout=5.0):
        self.clock = Clock()
        self.client = FakeClient()
        self.stats = TelemetryStats()
        self.exporter = SpanExporter(
            "zipkin",
            "http://127.0.0.1:9411/api/v2/spans",
            names,
            batch=BatchConfig(size=size, interval=interval, queue=queue),
            gzip=gzip,
            timeout=timeout,
            stats=self.stats,
            reactor=self.clock,
            httpClient=self.client,
            maxInFlight=maxInFlight,
        )

    def submit(self, *spanNames):
        for name in spanNames:
            self.exporter.submit(makeSpan(name=name))

    def bodies(self):
        return [p.data for p in self.client.posts]

    def batchTimers(self):
        """
        The exporter's batch timers now scheduled (not the posts' timeouts).
        """
        return [c for c in self.clock.getDelayedCalls() if c.func == self.exporter._tick]


# -- the exporter's logic --------------------------------------------------------


class ExporterTests(SynchronousTestCase):
    def setUp(self):
        self.f = Fixture()
        self.f.exporter.startService()

    def test_interfaces(self):
        """
        An exporter is a span sink and a service.
        """
        self.assertTrue(verifyObject(ISpanSink, self.f.exporter))
        self.assertTrue(verifyObject(IService, self.f.exporter))

    def test_fullBatchPostedAtOnce(self):
        """
        The span that fills a batch has the batch posted at once, with the
        JSON content type and nothing else about the body.
        """
        self.f.submit("a", "b")
        self.assertEqual(self.f.client.posts, [])
        self.f.submit("c")
        self.assertEqual(self.f.bodies(), [b"a,b,c"])
        post = self.f.client.posts[0]
        self.assertEqual(post.url, "http://127.0.0.1:9411/api/v2/spans")
        self.assertEqual(post.headers, {b"Content-Type": [b"application/json"]})
        self.assertIs(post.kwargs["allow_redirects"], False)
        self.assertEqual(self.f.batchTimers(), [])

    def test_partialBatchPostedAfterInterval(self):
        """
        Fewer spans than a batch are posted one interval after the first of
        them was queued.
        """
        self.f.submit("a")
        self.f.clock.advance(0.5)
        self.f.submit("b")
        self.f.clock.advance(0.49)
        self.assertEqual(self.f.client.posts, [])
        self.f.clock.advance(0.01)
        self.assertEqual(self.f.bodies(), [b"a,b"])

    def test_noTimerWhileQueueEmpty(self):
        """
        No timer runs while nothing is queued: not before the first span,
        not after the queue was posted by the timer or by a full batch.
        """
        self.assertEqual(self.f.batchTimers(), [])
        self.f.submit("a")
        self.assertEqual(len(self.f.batchTimers()), 1)
        self.f.clock.advance(1.0)
        self.assertEqual(self.f.batchTimers(), [])
        self.f.client.posts[0].respond()
        self.f.submit("b")
        self.f.submit("c", "d")
        self.assertEqual(self.f.bodies(), [b"a", b"b,c,d"])
        self.assertEqual(self.f.batchTimers(), [])

    def test_leftoverAfterFullBatchPostedByTimer(self):
        """
        Spans queued beyond a full batch are posted by the timer.
        """
        self.f.submit("a", "b", "c", "d")
        self.assertEqual(self.f.bodies(), [b"a,b,c"])
        self.f.clock.advance(1.0)
        self.assertEqual(self.f.bodies(), [b"a,b,c", b"d"])

    def test_inFlightCap(self):
        """
        At most C{maxInFlight} posts are in flight; full batches beyond wait
        in the queue and go as soon as a post ends.
        """
        self.f.submit(*"abcdefghi")
        self.assertEqual(self.f.bodies(), [b"a,b,c", b"d,e,f"])
        self.f.clock.advance(1.0)
        self.assertEqual(len(self.f.client.posts), 2)
        self.f.client.posts[0].respond()
        self.assertEqual(self.f.bodies(), [b"a,b,c", b"d,e,f", b"g,h,i"])

    def test_dueBatchWaitsForAPostToEnd(self):
        """
        A partial batch whose interval passed while the cap was reached is
        posted as soon as a post ends, without waiting another interval.
        """
        f = Fixture(maxInFlight=1)
        f.exporter.startService()
        f.submit("a", "b", "c", "d")
        f.clock.advance(1.0)
        self.assertEqual(f.bodies(), [b"a,b,c"])
        self.assertEqual(f.batchTimers(), [])
        f.client.posts[0].respond()
        self.assertEqual(f.bodies(), [b"a,b,c", b"d"])

    def test_queueBound(self):
        """
        Past the queue bound, spans are dropped and counted as
        C{queue-full}; spans in flight do not count against it.
        """
        f = Fixture(size=2, queue=4, maxInFlight=1)
        f.exporter.startService()
        f.submit("a", "b")
        f.submit("c", "d", "e", "f")
        f.submit("g", "h")
        self.assertEqual(f.stats.spansDropped, {("zipkin", "queue-full"): 2})
        f.client.posts[0].respond()
        f.client.posts[1].respond()
        f.client.posts[2].respond()
        self.assertEqual(f.bodies(), [b"a,b", b"c,d", b"e,f"])
        self.assertEqual(f.stats.spansExported, {"zipkin": 6})

    def test_queuesBeforeStart(self):
        """
        Spans submitted before the service starts wait (within the bound)
        and are posted once it starts.
        """
        f = Fixture(size=2, queue=3)
        f.submit("a", "b", "c", "d")
        self.assertEqual(f.client.posts, [])
        self.assertEqual(f.batchTimers(), [])
        self.assertEqual(f.stats.spansDropped, {("zipkin", "queue-full"): 1})
        f.exporter.startService()
        self.assertEqual(f.bodies(), [b"a,b"])
        f.clock.advance(1.0)
        self.assertEqual(f.bodies(), [b"a,b", b"c"])

    def test_successCounted(self):
        """
        Spans of a post answered 2xx are counted as exported.
        """
        self.f.submit("a", "b", "c")
        self.assertEqual(self.f.stats.spansExported, {})
        self.f.client.posts[0].respond(200)
        self.assertEqual(self.f.stats.spansExported, {"zipkin": 3})
        self.assertEqual(self.f.stats.spansDropped, {})

    def test_badStatusDropsBatch(self):
        """
        A post answered with a status that is not 2xx drops its spans
        (C{export-failed}); they are not posted again.
        """
        self.f.submit("a", "b", "c")
        self.f.client.posts[0].respond(503)
        self.assertEqual(self.f.stats.spansDropped, {("zipkin", "export-failed"): 3})
        self.assertEqual(self.f.stats.spansExported, {})
        self.f.clock.advance(60)
        self.assertEqual(len(self.f.client.posts), 1)

    def test_connectionRefusedDropsBatch(self):
        """
        A post that cannot connect drops its spans.
        """
        self.f.submit("a", "b", "c")
        self.f.client.posts[0].fail(error.ConnectionRefusedError())
        self.assertEqual(self.f.stats.spansDropped, {("zipkin", "export-failed"): 3})

    def test_timeoutCancelsAndDrops(self):
        """
        A post not answered within the timeout is cancelled and its spans
        dropped; the slot it held is free again.
        """
        self.f.submit(*"abcdef")
        self.f.submit(*"ghi")
        self.f.clock.advance(4.9)
        self.assertFalse(self.f.client.posts[0].cancelled)
        self.f.clock.advance(0.1)
        self.assertTrue(self.f.client.posts[0].cancelled)
        self.assertTrue(self.f.client.posts[1].cancelled)
        self.assertEqual(self.f.stats.spansDropped, {("zipkin", "export-failed"): 6})
        self.assertEqual(self.f.bodies(), [b"a,b,c", b"d,e,f", b"g,h,i"])

    def test_timeoutWhileReadingAnswerClosesConnection(self):
        """
        The timeout also covers reading the answer's body: past it, the
        connection is closed and the spans are dropped.
        """
        self.f.submit("a", "b", "c")
        response = FakeResponse(200, length=UNKNOWN_LENGTH)
        self.f.client.posts[0].deferred.callback(response)
        self.assertEqual(self.f.stats.spansExported, {})
        self.f.clock.advance(5.0)
        self.assertTrue(response.transport.stopped)
        self.assertEqual(self.f.stats.spansDropped, {("zipkin", "export-failed"): 3})

    def test_answerBodyReadToTheEnd(self):
        """
        A 2xx answer with a body counts as exported once its body ended (so
        that the connection can go back to the pool).
        """
        self.f.submit("a", "b", "c")
        response = FakeResponse(200, length=2)
        self.f.client.posts[0].deferred.callback(response)
        response.protocol.dataReceived(b"{}")
        self.assertEqual(self.f.stats.spansExported, {})
        response.protocol.connectionLost(Failure(ResponseDone()))
        self.assertEqual(self.f.stats.spansExported, {"zipkin": 3})
        self.assertFalse(response.transport.stopped)

    def test_encodeErrorDropsBatch(self):
        """
        A batch that cannot be encoded is dropped and counted, and the
        exporter goes on with the next one.
        """
        f = Fixture(size=1)
        f.exporter._encode = lambda spans: 1 / 0
        events = []
        self.patch(export, "_log", Logger(observer=events.append))
        f.exporter.startService()
        f.submit("a")
        self.assertEqual(f.stats.spansDropped, {("zipkin", "export-failed"): 1})
        self.assertIn("ZeroDivisionError", events[0]["reason"])
        f.exporter._encode = names
        f.submit("b")
        self.assertEqual(f.bodies(), [b"b"])

    def test_gzip(self):
        """
        With gzip, bodies are compressed and say so.
        """
        f = Fixture(gzip=True)
        f.exporter.startService()
        f.submit("a", "b", "c")
        post = f.client.posts[0]
        self.assertEqual(gzip.decompress(post.data), b"a,b,c")
        self.assertEqual(
            post.headers,
            {b"Content-Type": [b"application/json"], b"Content-Encoding": [b"gzip"]},
        )

    def test_stopFlushes(self):
        """
        Stopping posts what is queued, and fires once the post ended.
        """
        self.f.submit("a", "b")
        d = self.f.exporter.stopService()
        self.assertEqual(self.f.bodies(), [b"a,b"])
        self.assertNoResult(d)
        self.f.client.posts[0].respond()
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(self.f.stats.spansExported, {"zipkin": 2})
        self.assertEqual(self.f.clock.getDelayedCalls(), [])

    def test_stopWithNothingQueued(self):
        """
        Stopping an idle exporter is done at once.
        """
        self.assertIsNone(self.successResultOf(self.f.exporter.stopService()))
        self.assertEqual(self.f.clock.getDelayedCalls(), [])

    def test_stopWaitsForPostsInFlight(self):
        """
        Stopping waits for the posts already in flight.
        """
        self.f.submit("a", "b", "c")
        d = self.f.exporter.stopService()
        self.assertEqual(len(self.f.client.posts), 1)
        self.assertNoResult(d)
        self.f.client.posts[0].respond()
        self.successResultOf(d)

    def test_stopFlushesInBatchesWithinCap(self):
        """
        A long queue is flushed in batches of the batch size, within the
        in-flight cap.
        """
        f = Fixture(size=2, maxInFlight=1)
        f.submit("a", "b", "c", "d", "e")
        d = f.exporter.stopService()
        self.assertEqual(f.bodies(), [b"a,b"])
        f.client.posts[0].respond()
        f.client.posts[1].respond()
        self.assertNoResult(d)
        f.client.posts[2].respond()
        self.successResultOf(d)
        self.assertEqual(f.bodies(), [b"a,b", b"c,d", b"e"])

    def test_stopBoundedByTimeout(self):
        """
        What the flush could not post within the timeout is dropped
        (C{shutdown}); posts still in flight are cancelled
        (C{export-failed}).
        """
        f = Fixture(size=2, maxInFlight=1, timeout=3.0)
        f.exporter.startService()
        f.submit("a", "b", "c", "d", "e")
        d = f.exporter.stopService()
        f.clock.advance(2.9)
        self.assertNoResult(d)
        f.clock.advance(0.1)
        self.successResultOf(d)
        self.assertTrue(f.client.posts[0].cancelled)
        self.assertEqual(
            f.stats.spansDropped,
            {("zipkin", "export-failed"): 2, ("zipkin", "shutdown"): 3},
        )
        self.assertEqual(f.clock.getDelayedCalls(), [])

    def test_submitAfterStopDropped(self):
        """
        Spans submitted once stopping began are dropped (C{shutdown}).
        """
        self.f.submit("a")
        self.f.exporter.stopService()
        self.f.submit("b")
        self.f.client.posts[0].respond()
        self.f.submit("c")
        self.assertEqual(self.f.bodies(), [b"a"])
        self.assertEqual(self.f.stats.spansDropped, {("zipkin", "shutdown"): 2})


class FailureLogTests(SynchronousTestCase):
    def setUp(self):
        self.events = []
        self.patch(export, "_log", Logger(observer=self.events.append))
        self.f = Fixture(size=1, maxInFlight=5)
        self.f.exporter.startService()

    def fail(self, name):
        self.f.submit(name)
        self.f.client.posts[-1].fail(error.ConnectionRefusedError("nobody there"))

    def test_oneLinePerInterval(self):
        """
        Failed posts are logged one line per L{LOG_INTERVAL} at most, the
        line counting the failures since the previous one; no traceback.
        """
        self.fail("a")
        self.assertEqual(len(self.events), 1)
        first = self.events[0]
        self.assertEqual((first["posts"], first["spans"]), (1, 1))
        self.assertEqual(first["exporter"], "zipkin")
        self.assertIn("Connection was refused", first["reason"])
        self.assertNotIn("log_failure", first)
        for name in "bcd":
            self.f.clock.advance(10)
            self.fail(name)
        self.assertEqual(len(self.events), 1)
        self.f.clock.advance(LOG_INTERVAL - 30)
        self.fail("e")
        self.assertEqual(len(self.events), 2)
        self.assertEqual((self.events[1]["posts"], self.events[1]["spans"]), (4, 4))
        self.assertEqual(self.f.stats.spansDropped, {("zipkin", "export-failed"): 5})

    def test_badStatusLogged(self):
        """
        A refused post's line names the status.
        """
        self.f.submit("a")
        self.f.client.posts[0].respond(503)
        self.assertIn("503", self.events[0]["reason"])

    def test_successLogsNothing(self):
        """
        Exported batches are not logged.
        """
        self.f.submit("a")
        self.f.client.posts[0].respond()
        self.assertEqual(self.events, [])


class FanOutTests(SynchronousTestCase):
    def test_everySinkGetsEverySpan(self):
        """
        L{SpanFanOut} hands each span to each sink.
        """
        first, second = [], []

        class Sink:
            def __init__(self, into):
                self.submit = into.append

        fan = SpanFanOut([Sink(first), Sink(second)])
        self.assertTrue(verifyObject(ISpanSink, fan))
        span = makeSpan()
        fan.submit(span)
        self.assertEqual((first, second), ([span], [span]))


class ExportersForTests(SynchronousTestCase):
    def test_none(self):
        """
        Without an exporter configured, there is none.
        """
        self.assertEqual(exportersFor(TracingConfig(), TelemetryStats(), Clock()), [])

    def test_both(self):
        """
        Zipkin then OTLP, each with its URL, gzip, timeout and the batch
        settings, encoding with the configured service name.
        """
        tracing = TracingConfig(
            zipkin=ExporterConfig(url="http://127.0.0.1:9411/api/v2/spans", gzip=True),
            otlp=ExporterConfig(url="http://127.0.0.1:4318/v1/traces", timeout=2.0),
            batch=BatchConfig(size=1, interval=0.5, queue=4),
            serviceName="edge",
        )
        client = FakeClient()
        clock = Clock()
        exporters = exportersFor(tracing, TelemetryStats(), clock, httpClient=client)
        self.assertEqual([e.exporter for e in exporters], ["zipkin", "otlp"])
        self.assertEqual(
            [e.url for e in exporters],
            ["http://127.0.0.1:9411/api/v2/spans", "http://127.0.0.1:4318/v1/traces"],
        )
        for e in exporters:
            e.startService()
            e.submit(makeSpan())
        zipkinPost, otlpPost = client.posts
        self.assertEqual(zipkinPost.headers[b"Content-Encoding"], [b"gzip"])
        zipkin = json.loads(gzip.decompress(zipkinPost.data))
        self.assertEqual(zipkin[0]["localEndpoint"]["serviceName"], "edge")
        self.assertNotIn(b"Content-Encoding", otlpPost.headers)
        otlp = json.loads(otlpPost.data)
        self.assertEqual(
            otlp["resourceSpans"][0]["resource"]["attributes"][0]["value"],
            {"stringValue": "edge"},
        )
        clock.advance(1.9)
        self.assertFalse(otlpPost.cancelled)
        clock.advance(0.1)
        self.assertTrue(otlpPost.cancelled)
        self.assertFalse(zipkinPost.cancelled)

    def test_defaultClient(self):
        """
        Without a client given, each exporter makes its own.
        """
        tracing = TracingConfig(
            zipkin=ExporterConfig(url="http://127.0.0.1:9411/api/v2/spans"),
            otlp=ExporterConfig(url="http://127.0.0.1:4318/v1/traces"),
        )
        zipkin, otlp = exportersFor(tracing, TelemetryStats(), Clock())
        self.assertIsNot(zipkin._client, otlp._client)
        self.assertIsNot(zipkin._pool, None)


# -- Zipkin v2 -------------------------------------------------------------------


def zipkinValidator():
    """
    A validator of Zipkin's C{ListOfSpans}, from the Swagger 2
    C{definitions} of the vendored C{zipkin2-api.yaml} (JSON Schema draft 4
    with a few keywords validators ignore, such as C{example}). It is made
    stricter in one way: a C{Span} or an C{Endpoint} with a field the API
    does not define is refused (a misspelled key would otherwise pass).
    """
    with open(os.path.join(DATA, "zipkin2-api.yaml")) as f:
        api = yaml.safe_load(f)
    definitions = copy.deepcopy(api["definitions"])
    for name in ("Span", "Endpoint"):
        definitions[name]["additionalProperties"] = False
    schema = {
        "$schema": "http://json-schema.org/draft-04/schema#",
        "definitions": definitions,
        "allOf": [{"$ref": "#/definitions/ListOfSpans"}],
    }
    Draft4Validator.check_schema(schema)
    return Draft4Validator(schema, format_checker=Draft4Validator.FORMAT_CHECKER)


class ZipkinTests(SynchronousTestCase):
    def setUp(self):
        self.validator = zipkinValidator()

    def encode(self, *spans, serviceName=None):
        body = zipkinJSON(list(spans), serviceName=serviceName)
        self.assertIsInstance(body, bytes)
        document = json.loads(body)
        self.validator.validate(document)
        return document

    def test_validatorHasTeeth(self):
        """
        The schema the bodies are checked against refuses what Zipkin
        refuses.
        """
        good = {"traceId": TRACE, "id": "b7ad6b7169203331", "duration": 1}
        self.validator.validate([good])
        bad = [
            {"id": "b7ad6b7169203331"},
            dict(good, duration=0),
            dict(good, parentId="abc"),
            dict(good, kind="INTERNAL"),
            dict(good, localEndpoint={"ipv4": "::1"}),
            dict(good, localEndpoint={"serviceName": "a", "ip": "10.0.0.1"}),
            dict(good, tags={"n": 1}),
            dict(good, parentid="b7ad6b7169203331"),
        ]
        for span in bad:
            self.assertRaises(ValidationError, self.validator.validate, [span])

    def test_serverRoot(self):
        """
        A root server span: every field, no C{parentId}, whole microseconds.
        """
        [span] = self.encode(makeSpan())
        self.assertEqual(
            span,
            {
                "traceId": TRACE,
                "id": "b7ad6b7169203331",
                "kind": "SERVER",
                "name": "GET /svc/users",
                "timestamp": 1700000000123456,
                "duration": 2500,
                "localEndpoint": {"serviceName": "meshproxy", "ipv4": "10.0.0.1", "port": 4140},
                "remoteEndpoint": {"serviceName": "users", "ipv4": "10.0.0.2", "port": 8080},
                "tags": {"http.method": "GET"},
            },
        )

    def test_clientChild(self):
        """
        A child span carries its parent's id and its kind.
        """
        [span] = self.encode(makeSpan(kind=CLIENT, parentId="00f067aa0ba902b7"))
        self.assertEqual((span["kind"], span["parentId"]), ("CLIENT", "00f067aa0ba902b7"))

    def test_durationAtLeastOne(self):
        """
        A zero or sub-microsecond duration is written as 1 µs, as the API
        requires.
        """
        spans = self.encode(makeSpan(duration=0.0), makeSpan(duration=0.0000004))
        self.assertEqual([s["duration"] for s in spans], [1, 1])

    def test_errorTag(self):
        """
        A span in error gets C{error: "true"} unless it has an C{error} tag.
        """
        plain, failed, described = self.encode(
            makeSpan(),
            makeSpan(error=True),
            makeSpan(error=True, tags={"error": "upstream-connect"}),
        )
        self.assertNotIn("error", plain["tags"])
        self.assertEqual(failed["tags"], {"http.method": "GET", "error": "true"})
        self.assertEqual(described["tags"], {"error": "upstream-connect"})

    def test_errorTagDoesNotChangeSpan(self):
        """
        Adding the C{error} tag leaves the span's own tags alone.
        """
        span = makeSpan(error=True)
        self.encode(span)
        self.assertEqual(span.tags, {"http.method": "GET"})

    def test_endpoints(self):
        """
        Unknown endpoint fields are left out (no port 0, no empty name); an
        IPv6 address is C{ipv6} (without a zone); an IPv4-mapped one is
        C{ipv4}; a host name, which the schema has no field for, is left
        out; an endpoint with nothing known is left out.
        """
        spans = self.encode(
            makeSpan(local=("meshproxy", None, 0), remote=(None, "2001:db8::1", 443)),
            makeSpan(remote=("users", "::ffff:10.0.0.9", 0)),
            makeSpan(remote=(None, "fe80::1%eth0", 80)),
            makeSpan(remote=None),
            makeSpan(remote=(None, None, 0)),
            makeSpan(remote=(None, "users.internal", 8080)),
            makeSpan(remote=(None, "::ffff:a00:9", 0)),
        )
        self.assertEqual(spans[0]["localEndpoint"], {"serviceName": "meshproxy"})
        self.assertEqual(spans[0]["remoteEndpoint"], {"ipv6": "2001:db8::1", "port": 443})
        self.assertEqual(spans[1]["remoteEndpoint"], {"serviceName": "users", "ipv4": "10.0.0.9"})
        self.assertEqual(spans[2]["remoteEndpoint"], {"ipv6": "fe80::1", "port": 80})
        self.assertNotIn("remoteEndpoint", spans[3])
        self.assertNotIn("remoteEndpoint", spans[4])
        self.assertEqual(spans[5]["remoteEndpoint"], {"port": 8080})
        self.assertEqual(spans[6]["remoteEndpoint"], {"ipv4": "10.0.0.9"})

    def test_serviceNameOverride(self):
        """
        A service name given to the encoder names every local endpoint.
        """
        [span] = self.encode(makeSpan(), serviceName="edge")
        self.assertEqual(span["localEndpoint"]["serviceName"], "edge")

    def test_noTags(self):
        """
        A span without tags has no C{tags} object.
        """
        [span] = self.encode(makeSpan(tags={}))
        self.assertNotIn("tags", span)

    def test_nonASCII(self):
        """
        Non-ASCII names and tags are written as UTF-8; quotes, backslashes
        and control characters are escaped.
        """
        body = zipkinJSON([makeSpan(name="GET /svc/café", tags={"k": "✓", 'q"\\': "a\nb"})])
        body.decode("utf-8")
        [span] = json.loads(body)
        self.assertEqual((span["name"], span["tags"]["k"]), ("GET /svc/café", "✓"))
        self.assertEqual(span["tags"]['q"\\'], "a\nb")

    def test_batch(self):
        """
        A full batch of varied spans validates.
        """
        spans = [
            makeSpan(
                spanId="%016x" % (i + 1),
                parentId=None if i % 3 == 0 else "%016x" % i,
                kind=SERVER if i % 2 else CLIENT,
                duration=i / 1000,
                error=i % 5 == 0,
            )
            for i in range(256)
        ]
        self.assertEqual(len(self.encode(*spans)), 256)


# -- OTLP/JSON -------------------------------------------------------------------


def otlpParse(body):
    """
    Parse an OTLP/JSON body with the protobuf JSON mapping: OTLP/JSON
    writes ids as hex where the protobuf mapping of C{bytes} is base64, so
    ids are converted first.
    """
    document = json.loads(body)
    for resource in document["resourceSpans"]:
        for scope in resource["scopeSpans"]:
            for span in scope["spans"]:
                for key in ("traceId", "spanId", "parentSpanId"):
                    if key in span:
                        span[key] = base64.b64encode(bytes.fromhex(span[key])).decode("ascii")
    return json_format.Parse(json.dumps(document), ExportTraceServiceRequest())


def attributes(keyValues):
    """
    OTLP attributes → C{{key: python value}}.
    """
    out = {}
    for kv in keyValues:
        out[kv.key] = getattr(kv.value, kv.value.WhichOneof("value"))
    return out


class OTLPTests(SynchronousTestCase):
    def test_roundTrip(self):
        """
        Every field survives a parse into C{ExportTraceServiceRequest}.
        """
        request = otlpParse(
            otlpJSON(
                [makeSpan(), makeSpan(kind=CLIENT, parentId="00f067aa0ba902b7", error=True)],
                "edge",
            )
        )
        [resource] = request.resource_spans
        self.assertEqual(attributes(resource.resource.attributes), {"service.name": "edge"})
        [scope] = resource.scope_spans
        self.assertEqual(scope.scope.name, "meshproxy")
        server, client = scope.spans
        self.assertEqual(server.trace_id, bytes.fromhex(TRACE))
        self.assertEqual(server.span_id, bytes.fromhex("b7ad6b7169203331"))
        self.assertEqual(server.parent_span_id, b"")
        self.assertEqual(server.name, "GET /svc/users")
        self.assertEqual(server.kind, OTLPSpan.SPAN_KIND_SERVER)
        self.assertEqual(server.start_time_unix_nano, 1700000000123456000)
        self.assertEqual(server.end_time_unix_nano, 1700000000123456000 + 2500000)
        self.assertEqual(
            attributes(server.attributes),
            {
                "http.method": "GET",
                "network.local.address": "10.0.0.1",
                "network.local.port": 4140,
                "peer.service": "users",
                "network.peer.address": "10.0.0.2",
                "network.peer.port": 8080,
            },
        )
        self.assertEqual(server.status.code, Status.STATUS_CODE_UNSET)
        self.assertEqual(client.kind, OTLPSpan.SPAN_KIND_CLIENT)
        self.assertEqual(client.parent_span_id, bytes.fromhex("00f067aa0ba902b7"))
        self.assertEqual(client.status.code, Status.STATUS_CODE_ERROR)

    def test_wireForm(self):
        """
        The OTLP/JSON particulars: hex ids, integer enums, 64-bit integers
        as decimal strings, no parent for a root, no status unless error.
        """
        document = json.loads(otlpJSON([makeSpan(error=True), makeSpan()], "edge"))
        failed, ok = document["resourceSpans"][0]["scopeSpans"][0]["spans"]
        self.assertEqual(failed["traceId"], TRACE)
        self.assertEqual(failed["spanId"], "b7ad6b7169203331")
        self.assertNotIn("parentSpanId", failed)
        self.assertEqual(failed["kind"], 2)
        self.assertEqual(failed["startTimeUnixNano"], "1700000000123456000")
        self.assertEqual(failed["endTimeUnixNano"], "1700000000125956000")
        self.assertEqual(failed["status"], {"code": 2})
        self.assertNotIn("status", ok)
        self.assertIn({"key": "http.method", "value": {"stringValue": "GET"}}, ok["attributes"])
        self.assertIn({"key": "network.peer.port", "value": {"intValue": "8080"}}, ok["attributes"])

    def test_tagsWinOverAddresses(self):
        """
        A tag with the key of an address attribute is kept, and the key
        appears once.
        """
        span = makeSpan(tags={"network.peer.address": "users.internal", "peer.service": "u"})
        [parsed] = otlpParse(otlpJSON([span], "edge")).resource_spans[0].scope_spans[0].spans
        keys = [kv.key for kv in parsed.attributes]
        self.assertEqual(len(keys), len(set(keys)))
        values = attributes(parsed.attributes)
        self.assertEqual(values["network.peer.address"], "users.internal")
        self.assertEqual(values["peer.service"], "u")

    def test_unknownAddresses(self):
        """
        Unknown addresses and ports add no attribute.
        """
        span = makeSpan(local=("meshproxy", None, 0), remote=(None, None, 0), tags={})
        [parsed] = otlpParse(otlpJSON([span], "edge")).resource_spans[0].scope_spans[0].spans
        self.assertEqual(list(parsed.attributes), [])

    def test_batch(self):
        """
        A full batch parses, span for span.
        """
        spans = [makeSpan(spanId="%016x" % (i + 1), duration=i / 1000) for i in range(256)]
        request = otlpParse(otlpJSON(spans, "edge"))
        parsed = request.resource_spans[0].scope_spans[0].spans
        self.assertEqual([s.span_id.hex() for s in parsed], [s.spanId for s in spans])


# -- over loopback ---------------------------------------------------------------


class LoopbackTests(TestCase):
    """
    Posts through treq and twisted.web's Agent to a collector on 127.0.0.1.
    """

    timeout = 30

    def setUp(self):
        self.receiver = SpanReceiver()
        self.site = ReceiverSite(self.receiver)
        self.port = reactor.listenTCP(0, self.site, interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)
        self.stats = TelemetryStats()

    def exporter(self, name, path, encode, gzip=False, size=256):
        exporter = SpanExporter(
            name,
            receiverURL(self.port, path),
            encode,
            batch=BatchConfig(size=size),
            gzip=gzip,
            timeout=5.0,
            stats=self.stats,
            reactor=reactor,
        )
        exporter.startService()
        return exporter

    @defer.inlineCallbacks
    def stop(self, exporter):
        yield exporter.stopService()
        yield self.site.drained()

    @defer.inlineCallbacks
    def test_zipkinPost(self):
        """
        A Zipkin batch arrives as JSON with a Content-Length.
        """
        exporter = self.exporter("zipkin", ZIPKIN_PATH, zipkinJSON)
        for i in range(3):
            exporter.submit(makeSpan(spanId="%016x" % (i + 1)))
        yield self.stop(exporter)
        [posted] = self.receiver.received
        self.assertEqual(posted.contentType, b"application/json")
        self.assertEqual(posted.contentLength, b"%d" % len(posted.raw))
        self.assertIsNone(posted.contentEncoding)
        self.assertEqual(posted.spans, 3)
        self.assertEqual(self.stats.spansExported, {"zipkin": 3})

    @defer.inlineCallbacks
    def test_otlpGzipKeepAlive(self):
        """
        With gzip, an OTLP batch arrives compressed; the collector's answer
        (a body) is read, so the next batch goes over the same connection.
        """
        exporter = self.exporter(
            "otlp", OTLP_PATH, lambda spans: otlpJSON(spans, "edge"), gzip=True, size=2
        )
        for i in range(2):
            exporter.submit(makeSpan(spanId="%016x" % (i + 1)))
        yield defer.gatherResults(list(exporter._inFlight))
        for i in range(2):
            exporter.submit(makeSpan(spanId="%016x" % (i + 3)))
        yield self.stop(exporter)
        first, second = self.receiver.received
        self.assertEqual(first.contentEncoding, b"gzip")
        self.assertEqual(first.contentType, b"application/json")
        self.assertEqual(first.contentLength, b"%d" % len(first.raw))
        self.assertEqual(gzip.decompress(first.raw)[:1], b"{")
        self.assertEqual((first.spans, second.spans), (2, 2))
        self.assertEqual(self.site.connections, 1)
        self.assertEqual(self.stats.spansExported, {"otlp": 4})

    @defer.inlineCallbacks
    def test_collectorRefuses(self):
        """
        A collector answering 500 gets its spans counted as dropped.
        """
        self.receiver.status = 500
        exporter = self.exporter("zipkin", ZIPKIN_PATH, zipkinJSON)
        exporter.submit(makeSpan())
        yield self.stop(exporter)
        self.assertEqual(self.receiver.spans["zipkin"], 1)
        self.assertEqual(self.stats.spansDropped, {("zipkin", "export-failed"): 1})

    @defer.inlineCallbacks
    def test_connectionRefused(self):
        """
        A collector that is not there gets the spans counted as dropped.
        """
        events = []
        self.patch(export, "_log", Logger(observer=events.append))
        closed = reactor.listenTCP(0, self.site, interface="127.0.0.1")
        url = receiverURL(closed, ZIPKIN_PATH)
        yield closed.stopListening()
        exporter = SpanExporter(
            "zipkin",
            url,
            zipkinJSON,
            batch=BatchConfig(),
            gzip=False,
            timeout=5.0,
            stats=self.stats,
            reactor=reactor,
        )
        exporter.startService()
        exporter.submit(makeSpan())
        yield exporter.stopService()
        self.assertEqual(self.stats.spansDropped, {("zipkin", "export-failed"): 1})
        self.assertIn("ConnectionRefusedError", events[0]["reason"])


class ZipkinEncoderTests(SynchronousTestCase):
    def test_localAndRemoteKeptApart(self):
        """
        A remote address equal to the local one's key is still written as a
        remote endpoint (the endpoints of each side are cached apart).
        """
        from meshproxy.telemetry.export import ZipkinEncoder

        encoder = ZipkinEncoder()
        same = ("users", "127.0.0.1", 8080)
        span = makeSpan(local=same, remote=same)
        expected = {"serviceName": "users", "ipv4": "127.0.0.1", "port": 8080}
        for _ in range(2):
            [decoded] = json.loads(encoder.wrap([encoder.span(span)]))
            self.assertEqual(decoded["localEndpoint"], expected)
            self.assertEqual(decoded["remoteEndpoint"], expected)


def makeRequest(**kw):
    """
    A finished request's spans (L{RequestSpans}); keywords override the
    defaults: a routed GET answered 200 at its first try.
    """
    values = dict(
        traceId=TRACE,
        spanId="b7ad6b7169203331",
        parentId=None,
        start=1700000000.123456,
        end=1700000000.126,
        method=b"GET",
        target=b"/users/1?secret=1",
        host=b"users",
        status=200,
        meshErr=None,
        router="web",
        name="/#/fs/users",
        peer="10.0.0.7",
        identity=None,
        tries=1,
        tryRecords=[
            ("00f067aa0ba902b7", 1700000000.1236, 1700000000.1259, "10.0.0.2:8080", 200, None)
        ],
        serviceName="meshproxy",
    )
    values.update(kw)
    return RequestSpans(**values)


#: Requests whose spans differ in every way the request path can make them.
VARIED_REQUESTS = [
    makeRequest(),
    makeRequest(parentId="00f067aa0ba902b7", peer=None, host=None),
    makeRequest(
        tries=3,
        status=200,
        tryRecords=[
            ("1000000000000001", 1700000000.2, 1700000000.21, "10.0.0.2:8080", 503, None),
            ("1000000000000002", 1700000000.22, 1700000000.23, "10.0.0.3:8080", 0,
             "upstream-connect"),
            ("1000000000000003", 1700000000.24, 1700000000.25, "[2001:db8::2]:8443", 200, None),
        ],
    ),
    makeRequest(status=502, meshErr="upstream-reset", identity="spiffe://mesh/caller",
                tryRecords=[("2000000000000001", 1.0, 0.5, "10.0.0.2:8080", 0, "upstream-reset")]),
    makeRequest(status=0, end=1700000000.0, tryRecords=[]),
    makeRequest(name=None, status=503, meshErr="no-route", tryRecords=[]),
    makeRequest(target=b'/caf\xc3\xa9/"q"\\/\xff%d?x', method=b"P%sT", router="r%s",
                name="/#/fs/50%", host=b"h\xe9%s", peer="fe80::1%eth0"),
    makeRequest(tryRecords=[("3000000000000001", 1.0, 2.0, "::ffff:10.0.0.9:0", 504, None)],
                status=504),
    # gRPC calls: a failing code on a 200, a success, a path naming no method.
    makeRequest(method=b"POST", target=b"/pkg.Greeter/Hello", tries=2,
                grpc=(14, "pkg.Greeter", "Hello", True)),
    makeRequest(method=b"POST", target=b"/pkg.Greeter/Hello",
                grpc=(0, "pkg.Greeter", "Hello", False)),
    makeRequest(method=b"POST", target=b"/odd", status=503, grpc=(2, None, None, True)),
]


class RequestSpansTests(SynchronousTestCase):
    def setUp(self):
        self.validator = zipkinValidator()

    def test_fieldsAndTuple(self):
        """
        A request's spans is a tuple of its fields in their order, the
        span count last; C{make} of that tuple (the request path's way)
        gives an equal record; each field is also an attribute.
        """
        record = makeRequest()
        fields = (TRACE, "b7ad6b7169203331", None, 1700000000.123456, 1700000000.126, b"GET",
                  b"/users/1?secret=1", b"users", 200, None, "web", "/#/fs/users", "10.0.0.7",
                  None, 1, record.tryRecords, "meshproxy", None, 2)
        self.assertEqual(tuple(record), fields)
        made = make(RequestSpans, fields)
        self.assertIs(type(made), RequestSpans)
        self.assertEqual(made, record)
        self.assertEqual(made.spans()[1].tags, record.spans()[1].tags)
        self.assertEqual(
            [record.traceId, record.spanId, record.parentId, record.start, record.end,
             record.method, record.target, record.host, record.status, record.meshErr,
             record.router, record.name, record.peer, record.identity, record.tries,
             record.tryRecords, record.serviceName, record.grpc, record.spanCount],
            list(fields),
        )
        self.assertEqual(record[SPAN_COUNT], 2)
        self.assertEqual(makeRequest(tryRecords=[]).spanCount, 1)
        self.assertEqual(VARIED_REQUESTS[2].spanCount, 4)

    def test_zipkinAsTheirSpans(self):
        """
        A request's spans are written as the JSON of the spans
        L{RequestSpans.spans} makes, byte for byte, by a new encoder and by
        one that kept its templates from the requests before; the body
        validates.
        """
        from meshproxy.telemetry.export import ZipkinEncoder

        kept = ZipkinEncoder("edge")
        for _ in range(2):
            for record in VARIED_REQUESTS:
                expected = zipkinJSON(record.spans(), serviceName="edge")
                self.assertEqual(zipkinJSON([record], serviceName="edge"), expected)
                self.assertEqual(kept.encode([record]), expected)
                self.validator.validate(json.loads(expected))
        mixed = [makeSpan(), VARIED_REQUESTS[2], makeSpan(name="x")]
        self.assertEqual(
            zipkinJSON(mixed),
            zipkinJSON([mixed[0], *VARIED_REQUESTS[2].spans(), mixed[2]]),
        )

    def test_spans(self):
        """
        The server span has the request's tags, the client spans those of
        their tries, the retry reason of the try before, and the bound
        name's last segment as their remote service.
        """
        server, first, second, third = VARIED_REQUESTS[2].spans()
        self.assertEqual(
            (server.kind, server.parentId, server.name, server.remote),
            (SERVER, None, "GET /#/fs/users", (None, "10.0.0.7", 0)),
        )
        self.assertEqual(
            server.tags,
            {
                "http.method": "GET",
                "http.path": "/users/1",
                "http.status_code": "200",
                "mesh.router": "web",
                "http.host": "users",
                "mesh.name": "/#/fs/users",
                "mesh.tries": "3",
            },
        )
        self.assertEqual([s.parentId for s in (first, second, third)], [server.spanId] * 3)
        self.assertEqual(first.tags, {"mesh.endpoint": "10.0.0.2:8080", "http.status_code": "503"})
        self.assertTrue(first.error)
        self.assertEqual(
            second.tags,
            {"mesh.endpoint": "10.0.0.3:8080", "error": "upstream-connect",
             "mesh.retry_reason": "status 503"},
        )
        self.assertEqual(third.remote, ("users", "2001:db8::2", 8443))
        self.assertEqual(third.tags["mesh.retry_reason"], "upstream-connect")
        self.assertFalse(third.error)
        [unrouted] = VARIED_REQUESTS[5].spans()
        self.assertEqual((unrouted.name, unrouted.error), ("GET web", True))

    def test_otlpAsTheirSpans(self):
        """
        OTLP writes a request's spans as those L{RequestSpans.spans} makes.
        """
        for record in VARIED_REQUESTS:
            self.assertEqual(otlpJSON([record], "edge"), otlpJSON(record.spans(), "edge"))


class RequestSpansExportTests(SynchronousTestCase):
    def capturing(self, queue):
        """
        A started exporter of batches of 4 spans, one post in flight at a
        time, and the list of the batches it encodes (each posted as
        C{b"x"}).
        """
        encoded = []

        def encode(batch):
            encoded.append(batch)
            return b"x"

        f = Fixture(size=4, queue=queue, maxInFlight=1)
        f.exporter._encode = encode
        f.exporter.startService()
        return f, encoded

    def record(self, tries):
        return makeRequest(
            tryRecords=[("%016x" % (i + 1), 1.0, 2.0, "10.0.0.2:8080", 200, None)
                        for i in range(tries)]
        )

    def test_countedAsTheirSpans(self):
        """
        A request's spans count as that many spans in the batch size, the
        queue bound and the counters; a request whose spans do not fit in
        the queue is dropped whole.
        """
        f, encoded = self.capturing(queue=5)
        f.exporter.submitRequest(self.record(1))
        f.exporter.submitRequest(self.record(1))
        self.assertEqual(len(f.client.posts), 1)
        self.assertEqual([len(b) for b in encoded], [2])
        f.exporter.submitRequest(self.record(2))
        f.exporter.submitRequest(self.record(2))
        self.assertEqual(f.stats.spansDropped, {("zipkin", "queue-full"): 3})
        f.client.posts[0].respond()
        self.assertEqual(f.stats.spansExported, {"zipkin": 4})
        f.clock.advance(1.0)
        self.assertEqual([len(b) for b in encoded], [2, 1])
        f.client.posts[1].respond()
        self.assertEqual(f.stats.spansExported, {"zipkin": 7})

    def test_batchesInOrderWhileQueued(self):
        """
        While posts are in flight, records wait in the queue; each batch is
        then the oldest records up to the batch size (the whole queue when
        it fits, else part of it), in the order they came.
        """
        f, encoded = self.capturing(queue=20)
        records = [self.record(1) for _ in range(5)] + [self.record(2)]
        for record in records[:2]:
            f.exporter.submitRequest(record)
        for record in records[2:]:
            f.exporter.submitRequest(record)
        # 4 spans made a batch (posted); 9 wait behind it.
        self.assertEqual(len(f.client.posts), 1)
        f.client.posts[0].respond()
        self.assertEqual(len(f.client.posts), 2)
        f.client.posts[1].respond()
        # The last request's 3 spans would not fit beside the one before.
        self.assertEqual(len(f.client.posts), 3)
        f.client.posts[2].respond()
        self.assertEqual(len(f.client.posts), 3)
        f.clock.advance(1.0)
        f.client.posts[3].respond()
        self.assertEqual(encoded, [records[0:2], records[2:4], records[4:5], records[5:6]])
        self.assertEqual(f.stats.spansExported, {"zipkin": 13})
        self.assertEqual(f.exporter._queued, 0)

    def test_largerThanABatchSplit(self):
        """
        A request with more spans than a batch holds is posted as its spans,
        a batch at a time.
        """
        f = Fixture(size=2, queue=10, maxInFlight=5)
        f.exporter._encode = lambda batch: ",".join(
            "%s/%s" % (s.kind, s.spanId) for s in batch
        ).encode("ascii")
        f.exporter.startService()
        f.exporter.submitRequest(self.record(3))
        f.clock.advance(1.0)
        self.assertEqual(
            f.bodies(),
            [
                b"SERVER/b7ad6b7169203331,CLIENT/0000000000000001",
                b"CLIENT/0000000000000002,CLIENT/0000000000000003",
            ],
        )
        for post in f.client.posts:
            post.respond()
        self.assertEqual(f.stats.spansExported, {"zipkin": 4})

    def test_fanOut(self):
        """
        L{SpanFanOut} hands a request's spans to every sink.
        """
        a, b = Fixture(), Fixture()
        record = self.record(1)
        SpanFanOut([a.exporter, b.exporter]).submitRequest(record)
        self.assertEqual([list(a.exporter._queue), list(b.exporter._queue)], [[record], [record]])
