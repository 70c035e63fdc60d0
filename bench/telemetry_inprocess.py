"""
What telemetry costs per request in-process: one HTTP router on memory
transports and a fake clock, driven request after request, with tracing at
1% and 100% (a Zipkin exporter whose collector answers at once, so every
batch is encoded and "posted") or the access log on, each against the plain
router.

Usage (from the repository root):

    PYTHONPATH=. python bench/telemetry_inprocess.py            # all modes, ratios
    PYTHONPATH=. python bench/telemetry_inprocess.py trace100 --requests 2500 --once

CPU time on a shared machine is noisy; instruction counts are not. For those,
run one mode under callgrind at two request counts and divide the difference:

    valgrind --tool=callgrind --callgrind-out-file=/dev/null \\
        python bench/telemetry_inprocess.py trace100 --requests 500 --once
    (again with 2500; instructions per request = (I2500 - I500) / 2000)

Modes: plain (no telemetry section: trace context still propagated), trace1,
trace100, log; and encode: the Zipkin encoder alone, writing batches of 128
recorded one-try requests (as this router's, at 1,000 a second) with one
encoder kept across batches, as an exporter's is (--requests counts the
requests encoded):

    valgrind --tool=callgrind --callgrind-out-file=/dev/null \\
        python bench/telemetry_inprocess.py encode --requests 6400 --once
    (again with 19200; instructions per request = (I19200 - I6400) / 12800)
"""

import argparse
import os
import queue
import random
import sys
import tempfile
import time

# The same router, request and answer as bench/hotpath.py's (beside this
# file).
from hotpath import CONFIG, REQUEST, RESPONSE  # noqa: E402
from prometheus_client import CollectorRegistry
from twisted.internet.address import IPv4Address
from twisted.internet.defer import succeed
from twisted.internet.testing import MemoryReactorClock, StringTransport

from meshproxy.balancing.node import Node
from meshproxy.config import parseConfig
from meshproxy.config.telemetry import AccessLogConfig, BatchConfig
from meshproxy.discovery.endpoints import Endpoint
from meshproxy.discovery.static import StaticNamer
from meshproxy.http.router import HttpRouter
from meshproxy.http.server import ServerProtocol
from meshproxy.routing.path import Path
from meshproxy.runtime import balancerFactory
from meshproxy.telemetry.accesslog import AccessLog
from meshproxy.telemetry.export import SpanExporter, ZipkinEncoder
from meshproxy.telemetry.metrics import MeshMetrics
from meshproxy.telemetry.observe import Tracer
from meshproxy.telemetry.spans import RequestSpans, TelemetryStats

MODES = ("plain", "trace1", "trace100", "log", "encode")

#: When the fake clock starts (2026-12-01T09:00:00Z).
EPOCH = 1796115600.0



class _Reactor(MemoryReactorClock):
    """
    A fake reactor that takes calls from threads (the access log's writer
    thread reports what it wrote), run by L{runFromThreads}.
    """

    def __init__(self):
        super().__init__()
        self._fromThreads = queue.SimpleQueue()

    def callFromThread(self, f, *args, **kwargs):
        self._fromThreads.put((f, args, kwargs))

    def runFromThreads(self):
        while True:
            try:
                f, args, kwargs = self._fromThreads.get_nowait()
            except queue.Empty:
                return
            f(*args, **kwargs)


class _Answered:
    code = 202
    length = 0


class _Collector:
    """
    A treq client stand-in whose collector accepts every post at once.
    """

    def post(self, *args, **kwargs):
        return succeed(_Answered())


class Harness:
    """
    One router in a mode, a client connection and its upstream connection.
    """

    def __init__(self, mode, logDirectory):
        reactor = _Reactor()
        # The fake clock starts at a time of today, as the real one reads:
        # a span's timestamp has its 16 digits (at 0 it had a few, cheaper
        # to write).
        reactor.advance(EPOCH)
        routerConfig = parseConfig(CONFIG).routers[0]
        prefix = Path.read("/#/static")
        namers = {prefix: StaticNamer(prefix, {"hello": [Endpoint("127.0.0.1", 9001)]})}
        extra = {}
        if mode in ("trace1", "trace100"):
            exporter = SpanExporter(
                "zipkin",
                "http://127.0.0.1:9411/api/v2/spans",
                ZipkinEncoder("meshproxy").encode,
                batch=BatchConfig(),
                gzip=False,
                timeout=5,
                stats=TelemetryStats(),
                reactor=reactor,
                httpClient=_Collector(),
            )
            exporter.startService()
            extra["tracer"] = Tracer(
                sampleRate=0.01 if mode == "trace1" else 1.0, sinks=[exporter]
            )
        elif mode == "log":
            log = AccessLog(
                AccessLogConfig(path=os.path.join(logDirectory, "access.log")),
                TelemetryStats(),
                reactor=reactor,
            )
            log.startService()
            extra["summaries"] = [log]
        router = HttpRouter(
            routerConfig,
            namers,
            reactor=reactor,
            metrics=MeshMetrics(CollectorRegistry()),
            balancerFactory=balancerFactory(routerConfig.loadBalancer, reactor),
            **extra,
        )
        self.reactor = reactor
        self.server = ServerProtocol(router, routerConfig.server, reactor)
        self.client = StringTransport(peerAddress=IPv4Address("TCP", "10.0.0.7", 5555))
        self.server.makeConnection(self.client)
        self.server.dataReceived(REQUEST)
        factory = reactor.tcpClients[0][2]
        self.upstream = factory.buildProtocol(None)
        self.upstreamTransport = StringTransport()
        self.upstream.makeConnection(self.upstreamTransport)
        self.upstream.dataReceived(RESPONSE)

    def run(self, requests):
        """
        Proxy C{requests} requests; return the CPU seconds they took. The
        fake clock moves 50 ms every 50 requests (1,000 requests a second),
        so that the access log hands its lines to its writer thread and
        partial span batches are posted, as they are live.
        """
        client, upstreamTransport = self.client, self.upstreamTransport
        server, upstream = self.server, self.upstream
        advance = self.reactor.advance
        fromThreads = self.reactor.runFromThreads
        start = time.process_time()
        for n in range(requests):
            if n % 50 == 0:
                fromThreads()
                advance(0.05)
            client.clear()
            upstreamTransport.clear()
            server.dataReceived(REQUEST)
            upstream.dataReceived(RESPONSE)
        elapsed = time.process_time() - start
        if not client.value().startswith(b"HTTP/1.1 200"):
            raise SystemExit("not proxied: %r" % (client.value()[:100],))
        return elapsed


class Encoding:
    """
    The Zipkin encoder alone: batches of 128 recorded requests, each
    answered 200 at its only try, written by one encoder kept across
    batches.
    """

    def __init__(self, mode, logDirectory):
        rng = random.Random(1)
        node = Node(Endpoint("127.0.0.1", 9001))
        self.batch = []
        for i in range(128):
            ids = "%064x" % (rng.getrandbits(256),)
            start = EPOCH + i / 1000 + rng.random() / 1000
            tryStart = start + 0.0001
            self.batch.append(RequestSpans(
                ids[:32], ids[32:48], None, start, start + 0.0007 + rng.random() / 10000,
                b"GET", b"/", b"hello", 200, None, "web", "/#/static/hello", "10.0.0.7",
                None, 1, [(ids[48:], tryStart, tryStart + 0.0005, node, 200, None)],
                "meshproxy",
            ))
        self.encoder = ZipkinEncoder("meshproxy")
        self.encoder.encode(self.batch)

    def run(self, requests):
        encode, batch = self.encoder.encode, self.batch
        start = time.process_time()
        for _ in range(max(1, requests // len(batch))):
            encode(batch)
        return time.process_time() - start


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", nargs="?", choices=MODES, help="one mode (default: all)")
    parser.add_argument("--requests", type=int, default=20000, help="per pass (default 20000)")
    parser.add_argument("--once", action="store_true",
                        help="one pass, no output (for instruction counts)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as logDirectory:
        if args.once:
            make = Encoding if args.mode == "encode" else Harness
            make(args.mode or "plain", logDirectory).run(args.requests)
            return
        modes = [args.mode] if args.mode else [mode for mode in MODES if mode != "encode"]
        harnesses = {
            mode: (Encoding if mode == "encode" else Harness)(mode, logDirectory)
            for mode in modes
        }
        best = {}
        # Interleaved, best of 5: the least disturbed pass of each mode.
        for _ in range(5):
            for mode, harness in harnesses.items():
                seconds = harness.run(args.requests) / args.requests
                best[mode] = min(best.get(mode, seconds), seconds)
        for mode in modes:
            line = "%-9s %6.2f us/request" % (mode, best[mode] * 1e6)
            if "plain" in best and mode != "plain":
                line += "  %.2fx plain" % (best[mode] / best["plain"],)
            print(line)


if __name__ == "__main__":
    main(sys.argv[1:])
