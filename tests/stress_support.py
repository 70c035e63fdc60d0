"""
Helpers for the loopback stress tests (L{tests.test_http_stress}): upstreams
and clients that count body bytes instead of keeping them, a push producer
that writes whenever its transport lets it, a probe of this process's
memory, and read-only views of the proxy's connection state.

The proxy runs in the test process, so the memory figures include it: a
proxy that buffered a body instead of applying back-pressure shows up as RSS
growth of the order of the body size.
"""

import gc

import httptools
from twisted.internet import defer, protocol
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer

from tests.support import listenBackend

KiB = 1024
MiB = 1024 * KiB

#: Size of the writes a L{StreamProducer} makes.
CHUNK = 64 * KiB


# -- memory -------------------------------------------------------------------


def _statusField(name):
    """
    A C{kB} field of C{/proc/self/status}, in bytes.

    @param name: the field name with its colon, e.g. C{b"VmRSS:"}.
    """
    with open("/proc/self/status", "rb") as f:
        for line in f:
            if line.startswith(name):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no %r in /proc/self/status" % (name,))


def rssBytes():
    """
    This process's resident set size, in bytes.
    """
    return _statusField(b"VmRSS:")


def _resetPeak():
    """
    Reset this process's peak RSS (C{VmHWM}) to its current RSS.

    @return: whether the kernel allowed it (Linux 4.0 and later).
    """
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


class MemoryProbe:
    """
    The peak RSS of this process over a stretch of a test, against the RSS
    at its start.

    The peak is the larger of the samples taken with L{sample} (the tests
    take one per MiB moved) and, where the kernel lets the peak be reset,
    C{VmHWM}, which catches a spike between two samples.

    @ivar baseline: RSS at the start, after a full garbage collection.
    @ivar peak: the highest RSS seen so far.
    @ivar samples: how many samples were taken.
    """

    def __init__(self):
        gc.collect()
        self.baseline = rssBytes()
        self.peak = self.baseline
        self.samples = 0
        self._hwm = _resetPeak()

    def sample(self):
        """
        Read RSS now.
        """
        rss = rssBytes()
        self.samples += 1
        if rss > self.peak:
            self.peak = rss

    @property
    def growth(self):
        """
        Peak RSS minus the baseline, in bytes (including the kernel's peak
        figure when it could be reset at the start).
        """
        self.sample()
        if self._hwm:
            self.peak = max(self.peak, _statusField(b"VmHWM:"))
        return self.peak - self.baseline

    def describe(self):
        """
        A line for test output: baseline, peak, growth in MiB.
        """
        growth = self.growth
        return "RSS baseline %.1f MiB, peak %.1f MiB, growth %.1f MiB (%d samples%s)" % (
            self.baseline / MiB,
            self.peak / MiB,
            growth / MiB,
            self.samples,
            ", VmHWM" if self._hwm else "",
        )


# -- counting -----------------------------------------------------------------


class Progress:
    """
    A byte counter that fires Deferreds when thresholds are crossed and,
    given a L{MemoryProbe}, samples memory once per C{every} bytes.

    @ivar count: bytes counted so far.
    """

    def __init__(self, probe=None, every=MiB):
        self.count = 0
        self.probe = probe
        self._every = every
        self._nextSample = every
        self._waiters = []

    def add(self, n):
        """
        Count C{n} more bytes.
        """
        self.count += n
        count = self.count
        if self.probe is not None and count >= self._nextSample:
            self._nextSample = count + self._every
            self.probe.sample()
        if self._waiters:
            ready = [d for (k, d) in self._waiters if k <= count]
            if ready:
                self._waiters = [(k, d) for (k, d) in self._waiters if k > count]
                for d in ready:
                    d.callback(count)

    def when(self, n):
        """
        A Deferred firing with the count once at least C{n} bytes were
        counted.
        """
        if self.count >= n:
            return defer.succeed(self.count)
        d = defer.Deferred()
        self._waiters.append((n, d))
        return d


@implementer(IPushProducer)
class StreamProducer:
    """
    Writes C{total} bytes of body to a transport as fast as the transport
    accepts them: a push producer that writes in a loop until its transport
    pauses it, and again whenever it is resumed. It never holds more than one
    chunk of body (the same bytes object is written again and again).

    @ivar progress: the L{Progress} of bytes handed to the transport (body
        bytes only, not chunk framing).
    @ivar paused: whether the transport has paused it.
    @ivar pauses: how many times it was paused.
    @ivar done: a Deferred firing with the byte count once everything was
        written (and the producer unregistered).
    """

    def __init__(self, transport, total, chunked=False, progress=None, chunkSize=CHUNK):
        """
        @param transport: where to write.
        @param total: body bytes to write.
        @param chunked: whether to frame the body as chunks (and end it with
            the last chunk).
        @param progress: a L{Progress} to count with, or L{None} for a new one.
        """
        self.transport = transport
        self.total = total
        self.chunked = chunked
        self.progress = progress if progress is not None else Progress()
        self.paused = False
        self.pauses = 0
        self.stopped = False
        self.finished = False
        self.done = defer.Deferred()
        self._chunk = b"x" * chunkSize

    @property
    def produced(self):
        """
        Body bytes written so far.
        """
        return self.progress.count

    def start(self):
        """
        Register with the transport and start writing.
        """
        self.transport.registerProducer(self, True)
        self._produce()

    def _produce(self):
        write = self.transport.write
        chunk = self._chunk
        size = len(chunk)
        total = self.total
        progress = self.progress
        while not self.paused and not self.stopped and progress.count < total:
            n = min(size, total - progress.count)
            data = chunk if n == size else chunk[:n]
            if self.chunked:
                write(b"%x\r\n" % (n,))
                write(data)
                write(b"\r\n")
            else:
                write(data)
            progress.add(n)
        if progress.count >= total and not self.finished and not self.stopped:
            self.finished = True
            if self.chunked:
                write(b"0\r\n\r\n")
            self.transport.unregisterProducer()
            self.done.callback(progress.count)

    def pauseProducing(self):
        if not self.paused:
            self.paused = True
            self.pauses += 1

    def resumeProducing(self):
        self.paused = False
        if not self.finished:
            self._produce()

    def stopProducing(self):
        self.stopped = True


# -- upstream -----------------------------------------------------------------


def countAnswer(proto, request):
    """
    Answer 200 with the number of body bytes received as the body (and in
    C{X-Body-Bytes}).
    """
    body = b"%d" % (request.bodyCount,)
    proto.transport.write(
        b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nX-Body-Bytes: %s\r\n\r\n%s"
        % (len(body), body, body)
    )


def streamAnswer(total, chunked=False):
    """
    A handler answering 200 with C{total} body bytes written by a
    L{StreamProducer} (appended to the factory's C{producers}), counted by
    the factory's C{sent} progress.
    """

    def handle(proto, request):
        if chunked:
            head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        else:
            head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (total,)
        proto.transport.write(head)
        producer = StreamProducer(
            proto.transport, total, chunked=chunked, progress=proto.factory.sent
        )
        proto.factory.producers.append(producer)
        producer.start()

    return handle


class CountedRequest:
    """
    What a L{CountingBackend} keeps of one request: no body, only its size.
    """

    __slots__ = ("method", "url", "headers", "bodyCount")

    def __init__(self):
        self.method = None
        self.url = b""
        self.headers = []
        self.bodyCount = 0

    def header(self, name):
        name = name.lower()
        for n, v in self.headers:
            if n.lower() == name:
                return v
        return None


class _CountingBackendProtocol(protocol.Protocol):
    def connectionMade(self):
        self.factory.connections.append(self)
        self.factory.accepted += 1
        self.parser = httptools.HttpRequestParser(self)
        self.current = None
        self._inBody = False

    def dataReceived(self, data):
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as e:
            self.factory.errors.append(e)
            self.transport.abortConnection()

    def on_message_begin(self):
        self.current = CountedRequest()
        self._inBody = False

    def on_url(self, url):
        self.current.url += url

    def on_header(self, name, value):
        if not self._inBody:
            self.current.headers.append((name, value))

    def on_headers_complete(self):
        self._inBody = True
        self.current.method = self.parser.get_method()

    def on_body(self, data):
        n = len(data)
        self.current.bodyCount += n
        factory = self.factory
        factory.received.add(n)
        if (
            factory.pauseAfter is not None
            and not factory.readPaused.called
            and factory.received.count >= factory.pauseAfter
        ):
            self.transport.pauseProducing()
            factory.readPaused.callback(self)

    def on_message_complete(self):
        factory = self.factory
        request, self.current = self.current, None
        factory.requests += 1
        factory.bodyCounts.append(request.bodyCount)
        factory.last = request
        factory.handler(self, request)

    def connectionLost(self, reason):
        self.factory.connections.remove(self)


class CountingBackend(protocol.Factory):
    """
    An upstream HTTP server that counts request body bytes and keeps no
    body. Usable with L{tests.support.listenBackend}.

    @ivar received: L{Progress} of request body bytes, all connections.
    @ivar sent: L{Progress} of response body bytes written by
        L{streamAnswer} producers.
    @ivar producers: the L{StreamProducer}s of streamed answers.
    @ivar requests: how many complete requests arrived.
    @ivar bodyCounts: the body size of each request, in order.
    @ivar accepted: how many connections were accepted.
    @ivar readPaused: a Deferred firing with the connection's protocol once
        the backend stopped reading (see C{pauseAfter}).
    """

    protocol = _CountingBackendProtocol
    noisy = False

    def __init__(self, handler=countAnswer, pauseAfter=None, probe=None):
        """
        @param handler: called with C{(protocol, CountedRequest)} for each
            complete request; it writes the answer.
        @param pauseAfter: stop reading (C{transport.pauseProducing()}) once
            this many body bytes arrived, or L{None} never to stop.
        @param probe: a L{MemoryProbe} to sample once per MiB moved.
        """
        self.handler = handler
        self.pauseAfter = pauseAfter
        self.received = Progress(probe)
        self.sent = Progress(probe)
        self.producers = []
        self.requests = 0
        self.bodyCounts = []
        self.last = None
        self.accepted = 0
        self.errors = []
        self.connections = []
        self.readPaused = defer.Deferred()


def listenBackendWide(testCase, factory, backlog=1024):
    """
    L{tests.support.listenBackend} with a deep listen backlog, for an
    upstream that a proxy connects to 100 times at once: with Twisted's
    default of 50 the connections past it wait for SYN retransmits.

    @return: a Deferred firing with the port number.
    """
    return listenBackend(testCase, factory, backlog=backlog)


# -- clients ------------------------------------------------------------------


class CountedResponse:
    """
    One response as a L{CountingClient} saw it: the head, the first bytes of
    the body and the body's size.
    """

    def __init__(self):
        self.status = None
        self.headers = []
        self.prefix = b""
        self.length = 0
        self.complete = False

    def header(self, name):
        name = name.lower()
        for n, v in self.headers:
            if n.lower() == name:
                return v
        return None


class CountingClient(protocol.Protocol):
    """
    Reads responses and counts their body bytes, keeping only the first
    C{keep} bytes of each body.

    @ivar progress: L{Progress} of response body bytes, all responses.
    @ivar responses: the complete L{CountedResponse}s.
    @ivar readPaused: a Deferred firing with the count once this client
        stopped reading (see C{pauseAfter}).
    """

    def __init__(self, probe=None, pauseAfter=None, keep=4096):
        """
        @param probe: a L{MemoryProbe} to sample once per MiB received.
        @param pauseAfter: stop reading (C{transport.pauseProducing()}) once
            this many body bytes arrived, or L{None} never to stop.
        """
        self.progress = Progress(probe)
        self.pauseAfter = pauseAfter
        self.keep = keep
        self.responses = []
        self.readPaused = defer.Deferred()
        self.closed = defer.Deferred()
        self.error = None
        self._parser = httptools.HttpResponseParser(self)
        self._current = None
        self._waiters = []

    def dataReceived(self, data):
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as e:
            self.error = e
            self.transport.abortConnection()

    def on_message_begin(self):
        self._current = CountedResponse()

    def on_header(self, name, value):
        if self._current.status is None:
            self._current.headers.append((name, value))

    def on_headers_complete(self):
        self._current.status = self._parser.get_status_code()

    def on_body(self, data):
        current = self._current
        n = len(data)
        if len(current.prefix) < self.keep:
            current.prefix += data[: self.keep - len(current.prefix)]
        current.length += n
        self.progress.add(n)
        if (
            self.pauseAfter is not None
            and not self.readPaused.called
            and self.progress.count >= self.pauseAfter
        ):
            self.transport.pauseProducing()
            self.readPaused.callback(self.progress.count)

    def on_message_complete(self):
        current, self._current = self._current, None
        current.complete = True
        self.responses.append(current)
        n = len(self.responses)
        ready = [d for (k, d) in self._waiters if k <= n]
        self._waiters = [(k, d) for (k, d) in self._waiters if k > n]
        for d in ready:
            d.callback(self.responses)

    def waitFor(self, n):
        """
        A Deferred firing with the responses once C{n} are complete (or
        with those there are when the connection closes).
        """
        if len(self.responses) >= n:
            return defer.succeed(self.responses)
        d = defer.Deferred()
        self._waiters.append((n, d))
        return d

    def connectionLost(self, reason):
        waiters, self._waiters = self._waiters, []
        for _, d in waiters:
            d.callback(self.responses)
        self.closed.callback(None)


@defer.inlineCallbacks
def connectTo(testCase, port, proto):
    """
    Connect C{proto} (which must fire C{proto.closed} when its connection is
    lost) to C{port} on loopback; aborted at the end of the test.

    @return: a Deferred firing with C{proto} once connected.
    """
    from twisted.internet import reactor

    yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), proto)

    def cleanup():
        if proto.transport.connected:
            proto.transport.abortConnection()
            return proto.closed

    testCase.addCleanup(cleanup)
    return proto


class _OneGet(protocol.Protocol):
    """
    One GET on its own connection; the connection is closed by the server
    (C{Connection: close}) or by this client after the response.
    """

    def __init__(self, request, clientCloses, openSet):
        self.request = request
        self.clientCloses = clientCloses
        self.openSet = openSet
        self.status = None
        self.body = b""
        self.complete = False
        self.done = defer.Deferred()
        self._parser = httptools.HttpResponseParser(self)

    def connectionMade(self):
        self.openSet.add(self)
        self.transport.write(self.request)

    def dataReceived(self, data):
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            self.transport.abortConnection()

    def on_headers_complete(self):
        self.status = self._parser.get_status_code()

    def on_body(self, data):
        self.body += data

    def on_message_complete(self):
        self.complete = True
        if self.clientCloses:
            self.transport.loseConnection()

    def connectionLost(self, reason):
        self.openSet.discard(self)
        self.done.callback((self.status, self.body, self.complete))


class ShortConnections:
    """
    Opens connections that each carry one GET and close, keeping nothing
    once they are closed (so that memory measured across thousands of them
    shows the proxy's, not the client's).
    """

    def __init__(self, testCase, port, host=b"hello"):
        self.port = port
        self.host = host
        self.open = set()
        testCase.addCleanup(self._abortAll)

    def _abortAll(self):
        for p in list(self.open):
            p.transport.abortConnection()

    def get(self, path, clientCloses):
        """
        Connect, send one GET for C{path} and wait for the connection to
        close: by the proxy (the request says C{Connection: close}) or by
        this client after the response (C{clientCloses}).

        @return: a Deferred firing with C{(status, body, complete)}.
        """
        from twisted.internet import reactor

        request = b"GET %s HTTP/1.1\r\nHost: %s\r\n%s\r\n" % (
            path,
            self.host,
            b"" if clientCloses else b"Connection: close\r\n",
        )
        proto = _OneGet(request, clientCloses, self.open)
        d = connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", self.port), proto)
        d.addCallback(lambda p: p.done)
        return d


# -- the proxy, seen from outside -----------------------------------------------


STRESS_CONFIG = """\
admin: {listen: "tcp:port=0:interface=127.0.0.1"}
namers:
  - {kind: static, prefix: /#/static, services: {hello: ["127.0.0.1:%(port)d"]}}
routers:
  - name: web
    listen: "tcp:0:interface=127.0.0.1:backlog=%(backlog)d"
    identifier: {kind: host}
    rules: "/svc => /#/static;"
    timeouts: {total: %(total)s}
    client: {maxIdlePerEndpoint: %(maxIdle)d}
"""


def stressConfig(port, total="120s", maxIdle=64, backlog=1024):
    """
    A proxy config text (for L{tests.support.startProxy}'s C{config}) that
    routes host C{hello} to C{port} on loopback.

    @param total: the router's total timeout, long enough for the biggest
        transfer.
    @param maxIdle: the pool's C{maxIdlePerEndpoint}.
    @param backlog: the listen backlog: Twisted's default of 50 makes a
        burst of 100 connections wait for SYN retransmits (a second each).
    """
    return STRESS_CONFIG % {
        "port": port,
        "total": total,
        "maxIdle": maxIdle,
        "backlog": backlog,
    }


def serverConnections(runtime):
    """
    The proxy's client-side connection protocols (its server factory's
    tracked set).
    """
    conns = set()
    for listener in runtime.listeners:
        conns.update(getattr(listener.factory, "connections", ()))
    return conns


def serverFactories(runtime):
    """
    The proxy's HTTP server factories.
    """
    return [
        listener.factory
        for listener in runtime.listeners
        if hasattr(listener.factory, "connections")
    ]


def pools(runtime):
    """
    Every upstream connection pool of every router.
    """
    result = []
    for router in runtime.routers.values():
        for _, node in router.nodes():
            if node.payload is not None:
                result.append(node.payload)
    return result


def upstreamConnections(runtime):
    """
    The proxy's open upstream connection protocols.
    """
    conns = []
    for pool in pools(runtime):
        conns.extend(pool.all)
    return conns


def isReading(transport):
    """
    Whether the reactor is reading from C{transport} (it is not paused).
    """
    from twisted.internet import reactor

    return transport in reactor.getReaders()


def waitUntil(predicate, interval=0.005):
    """
    A Deferred firing with the first true value of C{predicate()}, checked
    now and then every C{interval} seconds: for states that no callback
    announces (such as the proxy having stopped reading a socket). Bounded
    by the test's timeout, which cancels it.
    """
    from twisted.internet import reactor

    pending = []

    def cancel(d):
        if pending and pending[0].active():
            pending[0].cancel()

    d = defer.Deferred(cancel)

    def check():
        del pending[:]
        try:
            value = predicate()
        except BaseException:
            d.errback()
            return
        if value:
            d.callback(value)
        else:
            pending.append(reactor.callLater(interval, check))

    check()
    return d


def liveInstances(cls, belongs=lambda o: True):
    """
    How many instances of C{cls} (or subclasses) for which C{belongs} is
    true the garbage collector knows of, after a full collection.

    @param belongs: tells this test's objects from those other tests in
        the same process may still hold.
    """
    gc.collect()
    return sum(1 for o in gc.get_objects() if isinstance(o, cls) and belongs(o))
