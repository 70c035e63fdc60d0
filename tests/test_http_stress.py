"""
The HTTP router under load on loopback: real upstreams, real clients,
bodies of tens and hundreds of MiB, slow readers on either side, thousands of
connections, upstreams that drop kept-alive connections.

The proxy runs in the test process, so this process's RSS (from
C{/proc/self/status}) stands for the proxy's memory: a proxy that buffered
a body instead of applying back-pressure grows by about the body's size.
Every wait is for a concrete event (a byte count reached, a producer
paused, a socket no longer read); trial's C{timeout} bounds each test.
Memory figures go to the test log (C{test.log} in trial's temp directory).
"""

import gc
import os

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.internet.utils import getProcessOutputAndValue
from twisted.logger import Logger
from twisted.trial.unittest import SkipTest, TestCase

from meshproxy.http.client import UpstreamProtocol
from meshproxy.http.exchange import Exchange
from meshproxy.http.server import ServerProtocol
from tests.stress_support import (
    CountingBackend,
    CountingClient,
    MemoryProbe,
    MiB,
    Progress,
    ShortConnections,
    StreamProducer,
    connectTo,
    isReading,
    listenBackendWide,
    liveInstances,
    pools,
    rssBytes,
    serverConnections,
    serverFactories,
    streamAnswer,
    stressConfig,
    upstreamConnections,
    waitUntil,
)
from tests.support import (
    BackendFactory,
    connectClient,
    exchange,
    listenBackend,
    okHandler,
    startProxy,
)

_log = Logger()

#: The large streamed bodies.
LARGE = 100 * MiB

#: The bodies behind a slow reader.
SLOW = 64 * MiB

#: RSS growth allowed while 100 MiB streams through: the body would not fit.
LARGE_GROWTH_LIMIT = 64 * MiB

#: RSS growth allowed while a 64 MiB body is held up by a slow reader.
SLOW_GROWTH_LIMIT = 32 * MiB

#: Body bytes allowed between the stalled producer and the paused reader:
#: socket buffers and the proxy's bounded transport buffers, not the body.
IN_FLIGHT_LIMIT = 16 * MiB


def _figure(testCase, text):
    _log.info("{test}: {text}", test=testCase.id(), text=text)


class StressTestCase(TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def proxyTo(self, backend, wide=False, clock=None, **config):
        """
        Listen with C{backend} and start a proxy routing host C{hello} to it.

        @param wide: whether the backend needs a deep listen backlog.
        @param clock: if not L{None}, the clock of the proxy's client-side
            timers (header, idle and body timeouts) instead of the reactor.
        @param config: keyword arguments for L{stressConfig}.
        @return: a Deferred firing with the proxy's port.
        """
        if wide:
            bport = yield listenBackendWide(self, backend)
        else:
            bport = yield listenBackend(self, backend)
        port, _, runtime = yield startProxy(self, None, config=stressConfig(bport, **config))
        self.runtime = runtime
        if clock is not None:
            for factory in serverFactories(runtime):
                factory.clock = clock
        return port


class LargeBodyTests(StressTestCase):
    """
    100 MiB bodies stream through the proxy both ways in bounded memory.
    """

    @defer.inlineCallbacks
    def _upload(self, chunked):
        backend = CountingBackend()
        port = yield self.proxyTo(backend)
        client = yield connectClient(self, port)
        probe = MemoryProbe()
        backend.received.probe = probe
        framing = (
            b"Transfer-Encoding: chunked\r\n"
            if chunked
            else b"Content-Length: %d\r\n" % (LARGE,)
        )
        client.transport.write(b"POST /upload HTTP/1.1\r\nHost: hello\r\n" + framing + b"\r\n")
        producer = StreamProducer(
            client.transport, LARGE, chunked=chunked, progress=Progress(probe)
        )
        producer.start()
        yield producer.done
        [response] = yield client.waitFor(1)
        growth = probe.growth
        _figure(self, probe.describe())
        self.assertEqual(response.status, 200, client.raw[:500])
        self.assertEqual(response.body, b"%d" % (LARGE,))
        self.assertEqual(backend.bodyCounts, [LARGE])
        self.assertEqual(backend.errors, [])
        self.assertLess(growth, LARGE_GROWTH_LIMIT, probe.describe())

    def test_contentLengthRequestBodyStreamsInBoundedMemory(self):
        """
        A 100 MiB request body with a Content-Length reaches the upstream
        whole while the process's RSS grows by less than 64 MiB.
        """
        return self._upload(chunked=False)

    def test_chunkedRequestBodyStreamsInBoundedMemory(self):
        """
        A 100 MiB chunked request body reaches the upstream whole (decoded
        to the same byte count) while RSS grows by less than 64 MiB.
        """
        return self._upload(chunked=True)

    @defer.inlineCallbacks
    def _download(self, chunked):
        backend = CountingBackend(handler=streamAnswer(LARGE, chunked=chunked))
        port = yield self.proxyTo(backend)
        probe = MemoryProbe()
        backend.sent.probe = probe
        client = yield connectTo(self, port, CountingClient(probe=probe))
        client.transport.write(b"GET /big HTTP/1.1\r\nHost: hello\r\n\r\n")
        [response] = yield client.waitFor(1)
        growth = probe.growth
        _figure(self, probe.describe())
        self.assertIsNone(client.error)
        self.assertEqual(response.status, 200)
        self.assertEqual(response.length, LARGE)
        self.assertEqual(response.prefix[:4], b"xxxx")
        if chunked:
            self.assertEqual(response.header(b"transfer-encoding"), b"chunked")
        else:
            self.assertEqual(response.header(b"content-length"), b"%d" % (LARGE,))
        [producer] = backend.producers
        self.assertTrue(producer.finished)
        self.assertLess(growth, LARGE_GROWTH_LIMIT, probe.describe())

    def test_contentLengthResponseBodyStreamsInBoundedMemory(self):
        """
        A 100 MiB response body with a Content-Length reaches the client
        whole while RSS grows by less than 64 MiB.
        """
        return self._download(chunked=False)

    def test_chunkedResponseBodyStreamsInBoundedMemory(self):
        """
        A 100 MiB chunked response body reaches the client whole (re-framed
        by the proxy) while RSS grows by less than 64 MiB.
        """
        return self._download(chunked=True)


class BackPressureTests(StressTestCase):
    """
    A slow reader on one side stops the proxy reading from the other side.
    """

    @defer.inlineCallbacks
    def _slowClient(self, chunked):
        backend = CountingBackend(handler=streamAnswer(SLOW, chunked=chunked))
        port = yield self.proxyTo(backend)
        probe = MemoryProbe()
        backend.sent.probe = probe
        client = yield connectTo(self, port, CountingClient(probe=probe, pauseAfter=1))
        client.transport.write(b"GET /slow HTTP/1.1\r\nHost: hello\r\n\r\n")
        yield client.readPaused
        [producer] = backend.producers
        runtime = self.runtime

        def stalled():
            # The upstream's producer is paused and the proxy no longer
            # reads the upstream connection: nothing moves until the client
            # reads. A proxy without back-pressure lets the whole body
            # through instead.
            if producer.finished:
                return "finished"
            if producer.paused and not any(
                isReading(c.transport) for c in upstreamConnections(runtime)
            ):
                return "stalled"
            return None

        how = yield waitUntil(stalled)
        produced = producer.produced
        delivered = client.progress.count
        growth = probe.growth
        _figure(
            self,
            "produced %.1f MiB, delivered %.2f MiB before the stall; %s"
            % (produced / MiB, delivered / MiB, probe.describe()),
        )
        self.assertEqual(how, "stalled", "the upstream produced the whole body")
        self.assertLess(produced - delivered, IN_FLIGHT_LIMIT)
        self.assertLess(growth, SLOW_GROWTH_LIMIT, probe.describe())

        client.transport.resumeProducing()
        [response] = yield client.waitFor(1)
        self.assertIsNone(client.error)
        self.assertEqual(response.status, 200)
        self.assertEqual(response.length, SLOW)
        self.assertTrue(producer.finished)
        self.assertGreater(producer.pauses, 1)

    def test_slowClientPausesUpstream(self):
        """
        While a client is not reading a 64 MiB response, the proxy stops
        reading the upstream: the upstream's producer stays paused with
        only socket-buffer amounts of the body produced, and memory stays
        flat. Once the client reads again the whole body arrives.
        """
        return self._slowClient(chunked=False)

    def test_slowClientPausesChunkedUpstream(self):
        """
        The same with a chunked response, which the proxy re-frames.
        """
        return self._slowClient(chunked=True)

    @defer.inlineCallbacks
    def _stallUpload(self, total, chunked, clock=None):
        """
        Start uploading C{total} bytes to an upstream that stops reading
        after the first bytes, and wait until the upload is stalled: the
        client's producer paused and the proxy no longer reading the client.

        @return: a Deferred firing with C{(client, producer, upstream,
            backend, probe)}, C{upstream} being the backend's protocol (resume
            it with C{upstream.transport.resumeProducing()}).

        @param clock: passed to L{proxyTo}.
        """
        backend = CountingBackend(pauseAfter=1)
        port = yield self.proxyTo(backend, clock=clock)
        probe = MemoryProbe()
        backend.received.probe = probe
        client = yield connectClient(self, port)
        framing = (
            b"Transfer-Encoding: chunked\r\n"
            if chunked
            else b"Content-Length: %d\r\n" % (total,)
        )
        client.transport.write(b"PUT /slow HTTP/1.1\r\nHost: hello\r\n" + framing + b"\r\n")
        producer = StreamProducer(
            client.transport, total, chunked=chunked, progress=Progress(probe)
        )
        producer.start()
        upstream = yield backend.readPaused
        runtime = self.runtime

        def stalled():
            if producer.finished:
                return "finished"
            if producer.paused and not any(
                isReading(c.transport) for c in serverConnections(runtime)
            ):
                return "stalled"
            return None

        how = yield waitUntil(stalled)
        self.assertEqual(how, "stalled", "the client sent the whole body")
        return client, producer, upstream, backend, probe

    @defer.inlineCallbacks
    def _slowUpstream(self, chunked):
        client, producer, upstream, backend, probe = yield self._stallUpload(SLOW, chunked)
        sent = producer.produced
        arrived = backend.received.count
        growth = probe.growth
        _figure(
            self,
            "sent %.1f MiB, arrived %.2f MiB before the stall; %s"
            % (sent / MiB, arrived / MiB, probe.describe()),
        )
        self.assertLess(sent - arrived, IN_FLIGHT_LIMIT)
        self.assertLess(growth, SLOW_GROWTH_LIMIT, probe.describe())

        upstream.transport.resumeProducing()
        yield producer.done
        [response] = yield client.waitFor(1)
        self.assertEqual(response.status, 200, client.raw[:500])
        self.assertEqual(response.body, b"%d" % (SLOW,))
        self.assertEqual(backend.bodyCounts, [SLOW])

    def test_slowUpstreamPausesClient(self):
        """
        While an upstream is not reading a 64 MiB request body, the proxy
        stops reading the client: the client's producer stays paused with
        only socket-buffer amounts sent, and memory stays flat. Once the
        upstream reads again the whole body arrives and is answered.
        """
        return self._slowUpstream(chunked=False)

    def test_slowUpstreamPausesChunkedClient(self):
        """
        The same with a chunked request body.
        """
        return self._slowUpstream(chunked=True)

    @defer.inlineCallbacks
    def test_upstreamBackPressureIsNotAClientTimeout(self):
        """
        A client whose upload is held back by the proxy itself (the
        upstream is not reading) is not timed out by C{server.bodyTimeout},
        which bounds a client that sends slowly: after more than that time
        without progress, the upstream reads again and the request is
        answered by the upstream, not with 408 C{client-timeout}.

        The proxy's client-side timers run on a fake clock here, so the
        30 s default passes without waiting.
        """
        clock = Clock()
        total = 16 * MiB
        client, producer, upstream, backend, probe = yield self._stallUpload(
            total, False, clock=clock
        )
        # Past server.bodyTimeout (30 s) with no byte read from the client.
        clock.advance(31)
        upstream.transport.resumeProducing()
        [response] = yield client.waitFor(1)
        self.assertEqual(response.status, 200, client.raw[:300])
        self.assertEqual(response.body, b"%d" % (total,))
        self.assertEqual(backend.bodyCounts, [total])


class ManyConnectionsTests(StressTestCase):
    #: The pool's maxIdlePerEndpoint in this test.
    MAX_IDLE = 8

    #: Connections open at once.
    BATCH = 100

    @defer.inlineCallbacks
    def _batches(self, connections, first, count):
        for start in range(first, first + count, self.BATCH):
            results = yield defer.gatherResults(
                [
                    connections.get(b"/%d" % (i,), clientCloses=bool(i % 2))
                    for i in range(start, start + self.BATCH)
                ],
                consumeErrors=True,
            )
            for i, (status, body, complete) in enumerate(results, start):
                self.assertEqual((status, complete), (200, True), "request %d" % (i,))
                self.assertEqual(body, b"0")

    @defer.inlineCallbacks
    def test_thousandsOfShortConnectionsLeaveNothingBehind(self):
        """
        2,000 connections, 100 at a time, each carrying one GET and closed
        by either side: afterwards the proxy tracks no client connection,
        keeps at most maxIdlePerEndpoint upstream connections, holds no
        exchange, and its RSS is within 20% (or 10 MiB) of what it was after
        a warm-up of 200 connections.
        """
        backend = CountingBackend()
        port = yield self.proxyTo(backend, wide=True, maxIdle=self.MAX_IDLE)
        connections = ShortConnections(self, port)
        [factory] = serverFactories(self.runtime)

        yield self._batches(connections, 0, 200)
        yield waitUntil(lambda: not factory.connections)
        gc.collect()
        warm = rssBytes()

        yield self._batches(connections, 200, 2000)
        yield waitUntil(lambda: not factory.connections)
        gc.collect()
        after = rssBytes()
        _figure(
            self,
            "RSS after warm-up %.1f MiB, after 2000 more connections %.1f MiB"
            % (warm / MiB, after / MiB),
        )

        self.assertEqual(backend.requests, 2200)
        self.assertEqual(connections.open, set())
        self.assertEqual(serverConnections(self.runtime), set())
        routers = list(self.runtime.routers.values())

        def ours(o):
            return o.router in routers

        self.assertEqual(liveInstances(ServerProtocol, ours), 0)
        self.assertEqual(liveInstances(Exchange, ours), 0)
        upstreamPools = pools(self.runtime)
        for pool in upstreamPools:
            self.assertLessEqual(len(pool.all), self.MAX_IDLE)
            self.assertLessEqual(len(pool.idle), self.MAX_IDLE)
            self.assertEqual(pool.connecting, 0)
        self.assertLessEqual(
            liveInstances(UpstreamProtocol, lambda o: o.pool in upstreamPools),
            self.MAX_IDLE,
        )
        self.assertLessEqual(after, max(warm * 1.2, warm + 10 * MiB))


class StaleUpstreamConnectionTests(StressTestCase):
    """
    Upstreams that close kept-alive connections do not fail requests.
    """

    @defer.inlineCallbacks
    def _sequential(self, handler, n=50):
        backend = BackendFactory(handler)
        bport = yield listenBackend(self, backend)
        port, _, runtime = yield startProxy(self, {"hello": [bport]})
        self.runtime = runtime
        client = yield connectClient(self, port)
        for i in range(n):
            client.transport.write(b"GET /%d HTTP/1.1\r\nHost: hello\r\n\r\n" % (i,))
            yield client.waitFor(i + 1)
        self.assertIsNone(client.error)
        self.assertEqual(
            [(r.status, r.body) for r in client.responses],
            [(200, b"ok /%d" % (i,)) for i in range(n)],
        )
        self.assertTrue(client.transport.connected)
        return backend

    @defer.inlineCallbacks
    def test_upstreamClosingAfterEachResponse(self):
        """
        An upstream that closes every connection right after its response
        (without announcing it with C{Connection: close}) still answers 50
        sequential requests on one client connection: the proxy never sends
        a request on the closed connection, or retries it on a new one.
        """

        def handler(proto, request):
            okHandler()(proto, request)
            proto.transport.loseConnection()

        backend = yield self._sequential(handler)
        self.assertEqual(len(backend.requests), 50)

    @defer.inlineCallbacks
    def test_staleKeptAliveConnectionIsRetried(self):
        """
        An upstream that answers one request per connection and closes the
        connection when the next request arrives on it (an idle timeout
        racing the proxy's reuse) still answers 50 sequential requests: each
        request that meets a stale pooled connection is sent again on a new
        one, and the client never sees the failure.
        """
        seen = []

        def handler(proto, request):
            if proto in seen:
                proto.transport.loseConnection()
            else:
                seen.append(proto)
                okHandler()(proto, request)

        backend = yield self._sequential(handler)
        self.assertEqual(len(seen), 50)
        # Every request after the first met a stale connection first.
        self.assertEqual(len(backend.requests), 99)


    @defer.inlineCallbacks
    def test_bodyOnStaleConnectionIsNotReplayedAndAnsweredAsReset(self):
        """
        A POST whose body already went out on a stale kept-alive connection
        is not sent again (the body is gone) and is answered 502 with
        C{mesh-err: upstream-reset} (docs/configuration.md: "the upstream
        closed or reset before a response, and the request could not be
        retried"), not C{upstream-connect} (no connection could be made).
        The client connection stays usable.
        """
        seen = []

        def handler(proto, request):
            if proto in seen:
                proto.transport.loseConnection()
            else:
                seen.append(proto)
                okHandler()(proto, request)

        backend = BackendFactory(handler)
        bport = yield listenBackend(self, backend)
        port, _, _ = yield startProxy(self, {"hello": [bport]})
        client = yield connectClient(self, port)
        client.transport.write(b"GET /warm HTTP/1.1\r\nHost: hello\r\n\r\n")
        yield client.waitFor(1)
        client.transport.write(
            b"POST /p HTTP/1.1\r\nHost: hello\r\nContent-Length: 4\r\n\r\nbody"
        )
        yield client.waitFor(2)
        client.transport.write(b"GET /after HTTP/1.1\r\nHost: hello\r\n\r\n")
        yield client.waitFor(3)
        warm, post, after = client.responses
        self.assertEqual((warm.status, after.status), (200, 200))
        self.assertEqual(after.body, b"ok /after")
        self.assertEqual(post.status, 502)
        # The POST reached the upstream once only.
        self.assertEqual([r.url for r in backend.requests], [b"/warm", b"/p", b"/after"])
        self.assertEqual(post.header(b"mesh-err"), b"upstream-reset")



def _echo(proto, request):
    proto.transport.write(
        b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nX-Path: %s\r\n\r\n%s"
        % (len(request.body), request.url, request.body)
    )


class PipelinedBodiesTests(StressTestCase):
    @defer.inlineCallbacks
    def _pipeline(self, data, expected):
        backend = BackendFactory(_echo)
        bport = yield listenBackend(self, backend)
        port, _, _ = yield startProxy(self, {"hello": [bport]})
        client = yield exchange(self, port, data, count=len(expected))
        self.assertIsNone(client.error)
        self.assertEqual(
            [(r.status, r.header(b"x-path"), r.body) for r in client.responses],
            [(200, path, body) for path, body in expected],
        )
        self.assertEqual([(r.url, r.body) for r in backend.requests], expected)

    def test_pipelinedPostsWithBodiesAnsweredInOrder(self):
        """
        Three POSTs with bodies, sent in one write, are each forwarded with
        their own body and answered in order.
        """
        bodies = [b"first body", b"the second one, longer", b"3"]
        data = b"".join(
            b"POST /%d HTTP/1.1\r\nHost: hello\r\nContent-Length: %d\r\n\r\n%s"
            % (i, len(body), body)
            for i, body in enumerate(bodies)
        )
        return self._pipeline(data, [(b"/%d" % (i,), b) for i, b in enumerate(bodies)])

    def test_pipelinedLargeAndChunkedBodiesAnsweredInOrder(self):
        """
        A pipelined request whose body (512 KiB) is larger than the
        pre-connect buffer and a chunked one behind it are answered in order
        with their own bodies.
        """
        large = bytes(range(256)) * 2048
        data = (
            b"POST /0 HTTP/1.1\r\nHost: hello\r\nContent-Length: 5\r\n\r\nsmall"
            + b"POST /1 HTTP/1.1\r\nHost: hello\r\nContent-Length: %d\r\n\r\n" % (len(large),)
            + large
            + b"POST /2 HTTP/1.1\r\nHost: hello\r\nTransfer-Encoding: chunked\r\n\r\n"
            + b"4\r\nchun\r\n3\r\nked\r\n0\r\n\r\n"
        )
        return self._pipeline(
            data, [(b"/0", b"small"), (b"/1", large), (b"/2", b"chunked")]
        )


class CurlTests(StressTestCase):
    CURL = "/usr/bin/curl"

    @defer.inlineCallbacks
    def test_curlUploadsThroughProxy(self):
        """
        curl, a real client, uploads a 3 MiB file through the proxy (with
        its C{Expect: 100-continue}); the upstream sees the body byte-exact
        and curl gets the upstream's answer.
        """
        if not os.access(self.CURL, os.X_OK):
            raise SkipTest("%s is not available" % (self.CURL,))
        backend = BackendFactory(okHandler())
        bport = yield listenBackend(self, backend)
        port, _, _ = yield startProxy(self, {"hello": [bport]}, total="30s")
        body = bytes(range(256)) * (12 * 1024)
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(body)
        out, err, code = yield getProcessOutputAndValue(
            self.CURL,
            [
                "-sS",
                "--noproxy",
                "*",
                "--max-time",
                "30",
                "-H",
                "Host: hello",
                "--data-binary",
                "@" + path,
                "http://127.0.0.1:%d/upload" % (port,),
            ],
            env={},
        )
        self.assertEqual((code, err), (0, b""))
        self.assertEqual(out, b"ok /upload")
        [seen] = backend.requests
        self.assertEqual(seen.method, b"POST")
        self.assertEqual(len(seen.body), len(body))
        self.assertEqual(seen.body, body)
