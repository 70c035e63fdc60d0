"""
A call through two meshproxy processes (outbound, then inbound) to a
backend, both exporting spans to one Zipkin receiver on loopback: one trace,
with every parent link right, and the backend sees the inbound try's span as
its parent.
"""

import os
import re
import signal
import sys

from twisted.internet import defer, protocol, reactor
from twisted.trial.unittest import TestCase

from tests.support import BackendFactory, connectClient, listenBackend
from tests.telemetry_support import ZIPKIN_PATH, ReceiverSite, SpanReceiver, receiverURL

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"

_LISTENING = re.compile(r"router (\S+) listening on \S+ \(port (\d+)\)")


class _Twistd(protocol.ProcessProtocol):
    """
    A C{twistd -n meshproxy} child: tells when its router listens, and when
    it ended.
    """

    def __init__(self, router):
        self.router = router
        self.output = b""
        self.listening = defer.Deferred()
        self.ended = defer.Deferred()

    def outReceived(self, data):
        self.output += data
        if not self.listening.called:
            for name, port in _LISTENING.findall(self.output.decode("utf-8", "replace")):
                if name == self.router:
                    self.listening.callback(int(port))
                    break

    errReceived = outReceived

    def processEnded(self, reason):
        if not self.listening.called:
            self.listening.errback(
                AssertionError(
                    "meshproxy ended before listening:\n" + self.output.decode("utf-8", "replace")
                )
            )
        self.ended.callback(None)


class _CountingReceiver(SpanReceiver):
    """
    A receiver that says when it has received C{n} spans.
    """

    def __init__(self):
        super().__init__()
        self._waiting = []

    def render_POST(self, request):
        result = super().render_POST(request)
        total = self.spans["zipkin"]
        still = []
        for n, d in self._waiting:
            if total >= n:
                d.callback(None)
            else:
                still.append((n, d))
        self._waiting = still
        return result

    def waitFor(self, n):
        if self.spans["zipkin"] >= n:
            return defer.succeed(None)
        d = defer.Deferred()
        self._waiting.append((n, d))
        return d

    def allSpans(self):
        return [span for posted in self.received for span in posted.payload]


class TwoProcessTraceTests(TestCase):
    timeout = 60

    def setUp(self):
        self.receiver = _CountingReceiver()
        site = ReceiverSite(self.receiver)
        self.receiverPort = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.addCleanup(self.receiverPort.stopListening)
        self.directory = os.path.abspath(self.mktemp())
        os.mkdir(self.directory)

    def proxy(self, name, upstreamPort):
        """
        Start a meshproxy process with one router C{name} in front of
        C{upstreamPort}, exporting its spans to the receiver.

        @return: a Deferred firing with its router's port.
        """
        config = os.path.join(self.directory, name + ".yaml")
        url = receiverURL(self.receiverPort, ZIPKIN_PATH)
        with open(config, "w") as f:
            f.write(
                f"""\
admin: {{listen: "tcp:0:interface=127.0.0.1"}}
namers:
  - {{kind: static, prefix: /#/s, services: {{users: ["127.0.0.1:{upstreamPort}"]}}}}
routers:
  - name: {name}
    listen: "tcp:0:interface=127.0.0.1"
    rules: "/svc => /#/s;"
telemetry:
  tracing:
    serviceName: {name}
    zipkin: {{url: "{url}"}}
    batch: {{interval: 50ms}}
"""
            )
        child = _Twistd(name)
        process = reactor.spawnProcess(
            child,
            sys.executable,
            [
                sys.executable,
                "-c",
                "from twisted.scripts.twistd import run; run()",
                "-n",
                "--pidfile=",
                "meshproxy",
                "--config",
                config,
            ],
            env={**os.environ, "PYTHONPATH": HERE},
            path=self.directory,
        )

        def stop():
            if not child.ended.called:
                process.signalProcess(signal.SIGTERM)
            return child.ended

        self.addCleanup(stop)
        return child.listening

    @defer.inlineCallbacks
    def test_oneTraceAcrossTwoProxies(self):
        backend = BackendFactory()
        backendPort = yield listenBackend(self, backend)
        inbound = yield self.proxy("inbound", backendPort)
        outbound = yield self.proxy("outbound", inbound)
        client = yield connectClient(self, outbound)
        client.transport.write(
            b"GET /x HTTP/1.1\r\nHost: users\r\n"
            b"traceparent: 00-%s-%s-01\r\ntracestate: vendor=opaque\r\n\r\n"
            % (CALLER_TRACE.encode(), CALLER_SPAN.encode())
        )
        [response] = yield client.waitFor(1)
        self.assertEqual(response.status, 200)
        yield self.receiver.waitFor(4)
        spans = self.receiver.allSpans()
        self.assertEqual(len(spans), 4, spans)
        self.assertEqual({span["traceId"] for span in spans}, {CALLER_TRACE})
        byKey = {(span["localEndpoint"]["serviceName"], span["kind"]): span for span in spans}
        outServer = byKey["outbound", "SERVER"]
        outClient = byKey["outbound", "CLIENT"]
        inServer = byKey["inbound", "SERVER"]
        inClient = byKey["inbound", "CLIENT"]
        self.assertEqual(outServer["parentId"], CALLER_SPAN)
        self.assertEqual(outClient["parentId"], outServer["id"])
        self.assertEqual(inServer["parentId"], outClient["id"])
        self.assertEqual(inClient["parentId"], inServer["id"])
        # What the backend was sent: the same trace, the inbound try as
        # parent, the caller's tracestate passed on, one request id.
        [request] = backend.requests
        self.assertEqual(
            request.header(b"traceparent"),
            b"00-%s-%s-01" % (CALLER_TRACE.encode(), inClient["id"].encode()),
        )
        self.assertEqual(request.header(b"tracestate"), b"vendor=opaque")
        self.assertEqual(len([n for n in request.headerNames() if n == b"mesh-reqid"]), 1)
        # Durations nest: the outbound server span holds the inbound one.
        self.assertGreaterEqual(outServer["duration"], inServer["duration"])
        self.assertEqual(outClient["tags"]["mesh.endpoint"], "127.0.0.1:%d" % (inbound,))
