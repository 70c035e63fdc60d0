"""
gRPC through meshproxy with real clients and servers (the C{grpcio}
package) on loopback: a grpcio client speaks HTTP/2 with prior knowledge
(h2c) to meshproxy.

Today meshproxy reaches its upstreams over HTTP/1.1, so the calls that need
a gRPC server go to a backend answering as a gRPC server would over HTTP/1
(its status in chunked trailers, or in the head of a trailers-only answer);
the answers meshproxy makes itself need no upstream at all. The tests with
a real grpcio server behind meshproxy need HTTP/2 to upstreams
(C{boundNames: {name: {upstreamProtocol: h2}}}): they are skipped, with
that reason, while the config does not accept it, and run unchanged once it
does.

Every blocking grpcio call runs in a thread (the proxy runs on the
reactor's thread, in this process), with its own deadline.
"""

import struct
import threading
from concurrent import futures

from twisted.internet import defer, threads
from twisted.internet.protocol import Factory
from twisted.trial.unittest import SkipTest, TestCase

from meshproxy.config import ConfigError, parseConfig
from meshproxy.grpc import parseTimeout
from tests.support import BackendFactory, listenBackend, startProxy

try:
    import grpc as grpcio
except ImportError:  # pragma: no cover - grpcio is in the test dependencies
    grpcio = None

#: How much later than the C{grpc-timeout} it was sent a real grpc server's
#: C{time_remaining} may end (its C core's clock conversion).
_CLOCK_SLACK = 0.1

CONFIG = """\
admin: {listen: "tcp:port=0:interface=127.0.0.1"}
namers:
  - {kind: static, prefix: /#/static, services: {%(services)s}}
routers:
  - name: web
    listen: "tcp:0:interface=127.0.0.1"
    identifier: {kind: host}
    rules: "/svc => /#/static;"
    timeouts: {total: %(total)s}
    loadBalancer: {kind: roundRobin}
    classifier: {kind: grpc}
%(extra)s"""


def proxyConfig(services, total="10s", extra=""):
    svc = ", ".join(
        "%s: [%s]" % (name, ", ".join('"127.0.0.1:%d"' % p for p in ports))
        for name, ports in services.items()
    )
    return CONFIG % {"services": svc, "total": total, "extra": extra}


def _h2UpstreamsMissing():
    """
    Why the tests with a real gRPC server are skipped: the config does not
    take C{upstreamProtocol: h2} yet; or L{None} when it does.
    """
    extra = "    boundNames: {/#/static/greeter: {upstreamProtocol: h2}}\n"
    try:
        parseConfig(proxyConfig({"greeter": [1]}, extra=extra))
    except ConfigError:
        return (
            "needs HTTP/2 to upstreams: boundNames {upstreamProtocol: h2} is not accepted"
            " by this meshproxy's config"
        )
    return None


H2_UPSTREAMS_MISSING = _h2UpstreamsMissing()


def frame(message):
    """
    One gRPC message on the wire: not compressed, its length, its bytes.
    """
    return b"\x00" + struct.pack(">I", len(message)) + message


def grpcAnswer(code=0, reply=b"pong", message=b"", trailersOnly=False):
    """
    A backend handler answering as a gRPC server over HTTP/1: C{reply} then
    C{code} in the trailers, or a trailers-only answer.
    """

    def handle(proto, request):
        extra = b"grpc-message: %s\r\n" % (message,) if message else b""
        if trailersOnly:
            proto.transport.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/grpc\r\ngrpc-status: %d\r\n"
                b"%sContent-Length: 0\r\n\r\n" % (code, extra)
            )
            return
        body = frame(reply)
        proto.transport.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/grpc\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\ngrpc-status: %d\r\n%s\r\n"
            % (len(body), body, code, extra)
        )

    return handle


class GrpcTestCase(TestCase):
    timeout = 60

    def setUp(self):
        if grpcio is None:
            raise SkipTest("grpcio is not installed")

    @defer.inlineCallbacks
    def proxy(self, services, total="10s", extra=""):
        port, _, self.runtime = yield startProxy(
            self, services, config=proxyConfig(services, total, extra)
        )
        return port

    def channel(self, port, authority):
        channel = grpcio.insecure_channel(
            "127.0.0.1:%d" % (port,), options=[("grpc.default_authority", authority)]
        )
        self.addCleanup(channel.close)
        return channel

    def inThread(self, fn, *args, **kwargs):
        """
        Run a blocking grpcio call in a thread: its result, or the
        C{grpc.RpcError} it raised.
        """

        def run():
            try:
                return fn(*args, **kwargs)
            except grpcio.RpcError as e:
                return e

        return threads.deferToThread(run)

    def errors(self, reason):
        return self.runtime.routers["web"].metrics._errors.get(("web", reason), 0)


class ProxyAnswersTests(GrpcTestCase):
    """
    What a grpcio client sees of the answers meshproxy makes itself.
    """

    @defer.inlineCallbacks
    def test_noRouteIsUnavailable(self):
        port = yield self.proxy({"hello": [1]})
        unary = self.channel(port, "nowhere").unary_unary("/pkg.Greeter/Hello")
        error = yield self.inThread(unary, b"ping", timeout=10)
        self.assertIsInstance(error, grpcio.RpcError)
        self.assertEqual(error.code(), grpcio.StatusCode.UNAVAILABLE)
        self.assertIn("No route for /svc/nowhere", error.details())
        self.assertIn(("mesh-err", "no-route"), tuple(error.trailing_metadata()))
        self.assertEqual(self.errors("no-route"), 1)

    @defer.inlineCallbacks
    def test_refusedEverywhereIsUnavailable(self):
        """
        An endpoint that refuses every connection: UNAVAILABLE (the call
        never left: a grpcio client may retry it elsewhere).
        """
        from twisted.internet import reactor

        listening = reactor.listenTCP(0, Factory(), interface="127.0.0.1")
        closedPort = listening.getHost().port
        yield listening.stopListening()
        port = yield self.proxy({"hello": [closedPort]})
        unary = self.channel(port, "hello").unary_unary("/pkg.Greeter/Hello")
        error = yield self.inThread(unary, b"ping", timeout=10)
        self.assertEqual(error.code(), grpcio.StatusCode.UNAVAILABLE)
        self.assertIn(("mesh-err", "upstream-connect"), tuple(error.trailing_metadata()))


class Http1BackendTests(GrpcTestCase):
    """
    A grpcio client through meshproxy to backends that answer as gRPC
    servers would over HTTP/1.
    """

    @defer.inlineCallbacks
    def backend(self, handler):
        factory = BackendFactory(handler)
        port = yield listenBackend(self, factory)
        return factory, port

    @defer.inlineCallbacks
    def test_unaryCall(self):
        factory, backendPort = yield self.backend(grpcAnswer(reply=b"pong"))
        port = yield self.proxy({"hello": [backendPort]})
        unary = self.channel(port, "hello").unary_unary("/pkg.Greeter/Hello")
        reply = yield self.inThread(unary, b"ping", timeout=10)
        self.assertEqual(reply, b"pong")
        [request] = factory.requests
        self.assertEqual(request.method, b"POST")
        self.assertEqual(request.url, b"/pkg.Greeter/Hello")
        self.assertEqual(request.header(b"content-type"), b"application/grpc")
        self.assertEqual(request.body, frame(b"ping"))

    @defer.inlineCallbacks
    def test_unavailableRetriedOnAnotherInstance(self):
        """
        One instance answers UNAVAILABLE (trailers-only): the call goes to
        the other, and the client sees only its answer.
        """
        down, downPort = yield self.backend(grpcAnswer(14, trailersOnly=True))
        up, upPort = yield self.backend(grpcAnswer(reply=b"pong"))
        port = yield self.proxy({"hello": [downPort, upPort]})
        unary = self.channel(port, "hello").unary_unary("/pkg.Greeter/Hello")
        for _ in range(4):
            reply = yield self.inThread(unary, b"ping", timeout=10)
            self.assertEqual(reply, b"pong")
        self.assertEqual(len(up.requests), 4)
        self.assertGreaterEqual(len(down.requests), 1)
        retries = self.runtime.routers["web"].metrics._retries.get(("web", "status"), 0)
        self.assertEqual(retries, len(down.requests))

    @defer.inlineCallbacks
    def test_deadlinePassedOnAsTimeLeft(self):
        """
        grpcio's deadline (5 s) shortened by the router's total (3 s): the
        backend is told the time left, no more than 3 s.
        """
        factory, backendPort = yield self.backend(grpcAnswer())
        port = yield self.proxy({"hello": [backendPort]}, total="3s")
        unary = self.channel(port, "hello").unary_unary("/pkg.Greeter/Hello")
        reply = yield self.inThread(unary, b"ping", timeout=5)
        self.assertEqual(reply, b"pong")
        [request] = factory.requests
        left = parseTimeout(request.header(b"grpc-timeout"))
        self.assertLessEqual(left, 3.0)
        self.assertGreater(left, 1.0)

    @defer.inlineCallbacks
    def test_applicationErrorPassesThrough(self):
        _, backendPort = yield self.backend(grpcAnswer(5, reply=b"", message=b"no%20such"))
        port = yield self.proxy({"hello": [backendPort]})
        unary = self.channel(port, "hello").unary_unary("/pkg.Greeter/Hello")
        error = yield self.inThread(unary, b"ping", timeout=10)
        self.assertEqual(error.code(), grpcio.StatusCode.NOT_FOUND)
        self.assertEqual(error.details(), "no such")


# -- a real gRPC server behind meshproxy (HTTP/2 to upstreams) --------------


class _Echo:
    """
    The methods of the test service C{test.Echo}, on a grpcio server.
    """

    def __init__(self, failing=False):
        self.failing = failing
        self.calls = 0
        self.started = threading.Event()
        self.cancelled = threading.Event()
        self.timeouts = []

    def unary(self, request, context):
        self.calls += 1
        self.timeouts.append(context.time_remaining())
        if self.failing:
            context.abort(grpcio.StatusCode.UNAVAILABLE, "draining")
        return b"echo:" + request

    def serverStream(self, request, context):
        for i in range(3):
            yield b"%s-%d" % (request, i)

    def clientStream(self, requests, context):
        return b"+".join(requests)

    def bidi(self, requests, context):
        for request in requests:
            yield request.upper()

    def slow(self, request, context):
        context.add_callback(self.cancelled.set)
        self.started.set()
        self.cancelled.wait(20)
        return b"late"

    def handler(self):
        return grpcio.method_handlers_generic_handler(
            "test.Echo",
            {
                "Unary": grpcio.unary_unary_rpc_method_handler(self.unary),
                "ServerStream": grpcio.unary_stream_rpc_method_handler(self.serverStream),
                "ClientStream": grpcio.stream_unary_rpc_method_handler(self.clientStream),
                "Bidi": grpcio.stream_stream_rpc_method_handler(self.bidi),
                "Slow": grpcio.unary_unary_rpc_method_handler(self.slow),
            },
        )


class RealServerTests(GrpcTestCase):
    """
    grpcio client → meshproxy → grpcio server.
    """

    def setUp(self):
        GrpcTestCase.setUp(self)
        if H2_UPSTREAMS_MISSING is not None:
            raise SkipTest(H2_UPSTREAMS_MISSING)

    def server(self, echo):
        server = grpcio.server(futures.ThreadPoolExecutor(max_workers=4))
        server.add_generic_rpc_handlers((echo.handler(),))
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        self.addCleanup(lambda: threads.deferToThread(lambda: server.stop(0).wait(10)))
        return port

    @defer.inlineCallbacks
    def greeter(self, *echoes, total="10s"):
        ports = [self.server(echo) for echo in echoes]
        extra = "    boundNames: {/#/static/greeter: {upstreamProtocol: h2}}\n"
        port = yield self.proxy({"greeter": ports}, total=total, extra=extra)
        return self.channel(port, "greeter")

    @defer.inlineCallbacks
    def test_unary(self):
        channel = yield self.greeter(_Echo())
        reply = yield self.inThread(channel.unary_unary("/test.Echo/Unary"), b"a", timeout=10)
        self.assertEqual(reply, b"echo:a")

    @defer.inlineCallbacks
    def test_serverStreaming(self):
        channel = yield self.greeter(_Echo())
        call = channel.unary_stream("/test.Echo/ServerStream")
        replies = yield self.inThread(lambda: list(call(b"s", timeout=10)))
        self.assertEqual(replies, [b"s-0", b"s-1", b"s-2"])

    @defer.inlineCallbacks
    def test_clientStreaming(self):
        channel = yield self.greeter(_Echo())
        call = channel.stream_unary("/test.Echo/ClientStream")
        reply = yield self.inThread(call, iter([b"a", b"b", b"c"]), timeout=10)
        self.assertEqual(reply, b"a+b+c")

    @defer.inlineCallbacks
    def test_bidirectionalStreaming(self):
        channel = yield self.greeter(_Echo())
        call = channel.stream_stream("/test.Echo/Bidi")
        replies = yield self.inThread(lambda: list(call(iter([b"x", b"y"]), timeout=10)))
        self.assertEqual(replies, [b"X", b"Y"])

    @defer.inlineCallbacks
    def test_deadlineExceeded(self):
        """
        The caller's deadline is the call's: a server slower than it gives
        DEADLINE_EXCEEDED, and the server saw a deadline no longer than the
        caller's.
        """
        echo = _Echo()
        channel = yield self.greeter(echo)
        error = yield self.inThread(channel.unary_unary("/test.Echo/Slow"), b"z", timeout=1)
        self.assertEqual(error.code(), grpcio.StatusCode.DEADLINE_EXCEEDED)

    @defer.inlineCallbacks
    def test_deadlinePassedOnShorter(self):
        """
        The caller's 5 s deadline, shorter than the mesh's 10 s, is the one
        a real server sees. grpc's C core turns the C{grpc-timeout} it reads
        into a wall-clock deadline through its own cached monotonic clock,
        so the server's C{time_remaining} can exceed the value sent by a few
        milliseconds (5.009 s was seen in CI): the bound allows
        L{_CLOCK_SLACK}. That the value sent is never longer than the time
        left is tested exactly, with a fake clock, in L{tests.test_grpc}.
        """
        echo = _Echo()
        channel = yield self.greeter(echo)
        yield self.inThread(channel.unary_unary("/test.Echo/Unary"), b"a", timeout=5)
        [remaining] = echo.timeouts
        self.assertLess(remaining, 5.0 + _CLOCK_SLACK)
        self.assertGreater(remaining, 3.0)

    @defer.inlineCallbacks
    def test_meshDeadlinePassedOnShorter(self):
        """
        When the mesh's own deadline (3 s) is shorter than the caller's
        (10 s), the server sees the mesh's.
        """
        echo = _Echo()
        channel = yield self.greeter(echo, total="3s")
        yield self.inThread(channel.unary_unary("/test.Echo/Unary"), b"a", timeout=10)
        [remaining] = echo.timeouts
        self.assertLess(remaining, 3.0 + _CLOCK_SLACK)
        self.assertGreater(remaining, 1.0)

    @defer.inlineCallbacks
    def test_unavailableRetriedOnAnotherInstance(self):
        failing, working = _Echo(failing=True), _Echo()
        channel = yield self.greeter(failing, working)
        unary = channel.unary_unary("/test.Echo/Unary")
        for _ in range(4):
            reply = yield self.inThread(unary, b"r", timeout=10)
            self.assertEqual(reply, b"echo:r")
        self.assertEqual(working.calls, 4)
        self.assertGreaterEqual(failing.calls, 1)

    @defer.inlineCallbacks
    def test_cancellationPropagated(self):
        """
        A call the client cancels is cancelled on the server.
        """
        echo = _Echo()
        channel = yield self.greeter(echo)
        future = channel.unary_unary("/test.Echo/Slow").future(b"c", timeout=20)
        started = yield threads.deferToThread(echo.started.wait, 10)
        self.assertTrue(started)
        future.cancel()
        cancelled = yield threads.deferToThread(echo.cancelled.wait, 10)
        self.assertTrue(cancelled)
