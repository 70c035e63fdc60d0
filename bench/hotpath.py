"""
The CPU cost of meshproxy's HTTP/1.1 request path, in process, and of each
feature on it, as a delta with that feature off.

Each variant is a whole HTTP router (L{HttpRouter} and a L{ServerProtocol})
built from a config in this process, on a fake reactor, driven with
C{StringTransport}s: a keep-alive client sends C{GET /users/1} with C{Host:
hello}, the pooled upstream connection answers C{200} with a 6-byte body.
What is measured is meshproxy's own Python per request: parsing, the
checks, routing, the filter stack, rewriting both heads, metrics; not the
socket calls nor the reactor's loop (C{bench/run.py} measures those, under
wrk, and its figures are the ones to quote against HAProxy).

Variants (each the default feature set with one thing changed):

  - C{all-on}: the defaults (metrics, peak-EWMA power-of-two-choices,
    consecutive-failures accrual, the retry budget, classification);
  - C{metrics-off}: the router's per-request L{record} made a no-op (no
    config key turns metrics off: this is for measurement only);
  - C{balancer-rr}: C{loadBalancer: {kind: roundRobin}} in place of EWMA;
  - C{accrual-off}: C{failureAccrual: {kind: none}};
  - C{budget-off}: the retry policy's per-request deposit (C{admit}) made a
    no-op (no config key turns the budget off);
  - C{classification-off}: the destination's C{classify} answering
    "success" without looking;
  - C{trace1}, C{trace100}: tracing sampled at 1% and 100%, spans handed to
    a Zipkin exporter whose posts never complete;
  - C{none}: every feature above off at once;
  - C{endpoints-8}, C{endpoints-8-rr}: the service has 8 endpoints (each
    with its own pooled upstream connection once the warm-up has reached
    it) instead of 1, balanced by peak-EWMA power of two choices (the
    default) or round robin. The harness then finds which upstream
    connection a request went to (an attribute set per write), a few
    hundred instructions counted with the request.

Rounds are interleaved (every variant once per round, in a shuffled order)
so that the noise of a shared machine falls on all of them; the figures are
medians over the rounds. CPU time is C{time.process_time}.

    PYTHONPATH=. python bench/hotpath.py                  # all variants
    PYTHONPATH=. python bench/hotpath.py --rounds 15 --requests 5000

Instruction counts, which a busy machine does not disturb (one process
under callgrind, a few minutes):

    PYTHONPATH=. python bench/hotpath.py --instructions --requests 1000

(each variant's requests are counted apart: callgrind dumps its counters
each time the process calls C{os.getppid}, which it does between them).
"""

from __future__ import annotations

import argparse
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.testing import MemoryReactorClock, StringTransport

from meshproxy.config import parseConfig
from meshproxy.config.telemetry import BatchConfig
from meshproxy.discovery.endpoints import Endpoint
from meshproxy.discovery.static import StaticNamer
from meshproxy.http.router import HttpRouter
from meshproxy.http.server import ServerProtocol
from meshproxy.resilience.classifiers import SUCCESS
from meshproxy.routing.path import Path
from meshproxy.runtime import balancerFactory
from meshproxy.telemetry.export import SpanExporter, zipkinJSON
from meshproxy.telemetry.metrics import MeshMetrics
from meshproxy.telemetry.observe import Tracer
from meshproxy.telemetry.spans import TelemetryStats

CONFIG = """\
namers:
  - {kind: static, prefix: /#/static, services: {hello: ["127.0.0.1:9001"]}}
routers:
  - name: web
    listen: "tcp:4140"
    rules: "/svc => /#/static;"
"""

REQUEST = b"GET /users/1 HTTP/1.1\r\nHost: hello\r\nUser-Agent: bench\r\nAccept: */*\r\n\r\n"
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\nContent-Type: text/plain\r\n\r\nhello\n"

VARIANTS = (
    "all-on",
    "metrics-off",
    "balancer-rr",
    "accrual-off",
    "budget-off",
    "classification-off",
    "trace1",
    "trace100",
    "none",
    "endpoints-8",
    "endpoints-8-rr",
)

#: The feature each "-off" variant measures (its delta with all-on).
FEATURES = {
    "metrics-off": "metrics (RouteStats.record)",
    "balancer-rr": "balancer: peak EWMA p2c over round robin",
    "accrual-off": "failure accrual (consecutiveFailures)",
    "budget-off": "retry budget deposit",
    "classification-off": "response classification",
    "none": "all of the above",
}


class _NullPoster:
    """
    An HTTP client for the span exporter whose posts never complete.
    """

    def post(self, *args: object, **kwargs: object) -> Deferred[object]:
        return Deferred()


class _UpstreamTransport(StringTransport):
    """
    An upstream connection's transport that names itself, at each write, as
    the one the last request went to (C{sent[0]}).
    """

    def __init__(self, sent: list) -> None:
        super().__init__()
        self._sent = sent

    def write(self, data: bytes) -> None:
        self._sent[0] = self
        super().write(data)


class Stack:
    """
    One router built for a variant, with a client connection and a pooled
    upstream connection, ready to run requests.
    """

    def __init__(self, variant: str) -> None:
        config = CONFIG
        endpoints = 8 if variant.startswith("endpoints-8") else 1
        if endpoints > 1:
            addresses = ", ".join(f'"127.0.0.1:{9001 + i}"' for i in range(endpoints))
            config = config.replace('["127.0.0.1:9001"]', f"[{addresses}]")
        if variant in ("balancer-rr", "none", "endpoints-8-rr"):
            config += "    loadBalancer: {kind: roundRobin}\n"
        if variant in ("accrual-off", "none"):
            config += "    failureAccrual: {kind: none}\n"
        reactor = MemoryReactorClock()
        mesh = parseConfig(config)
        rc = mesh.routers[0]
        prefix = Path.read("/#/static")
        addresses = [Endpoint("127.0.0.1", 9001 + i) for i in range(endpoints)]
        namers = {prefix: StaticNamer(prefix, {"hello": addresses})}
        kw = {}
        if variant in ("trace1", "trace100"):
            exporter = SpanExporter(
                "zipkin", "http://127.0.0.1:1/", zipkinJSON, batch=BatchConfig(), gzip=False,
                timeout=5, stats=TelemetryStats(), reactor=reactor, httpClient=_NullPoster())
            kw["tracer"] = Tracer(
                sampleRate=0.01 if variant == "trace1" else 1.0, sinks=[exporter])
        router = HttpRouter(rc, namers, reactor=reactor, metrics=MeshMetrics(CollectorRegistry()),
                            balancerFactory=balancerFactory(rc.loadBalancer, reactor), **kw)
        if variant in ("metrics-off", "none"):
            router.record = lambda *args: None  # type: ignore[method-assign]
        if variant in ("budget-off", "none"):
            router.retries.admit = lambda now: None  # type: ignore[method-assign]
        self.client = StringTransport(peerAddress=IPv4Address("TCP", "10.0.0.7", 5555))
        self.server = ServerProtocol(router, rc.server, reactor)
        self.server.makeConnection(self.client)
        self.reactor = reactor
        self.endpoints = endpoints
        self.sent: list = [None]
        self.upstreams: dict[StringTransport, object] = {}
        self.server.dataReceived(REQUEST)
        self.connectNew()
        self.upstreamTransport = self.sent[0]
        self.upstream = self.upstreams[self.upstreamTransport]
        self.upstream.dataReceived(RESPONSE)
        if variant in ("classification-off", "none"):
            for destination in router.clients:
                destination.classify = lambda request, status, headers: (SUCCESS, False)
        self.check()

    def connectNew(self) -> None:
        """
        Connect the upstream connections the router has asked for since the
        last call.
        """
        for _, _, factory, *_ in self.reactor.tcpClients[len(self.upstreams):]:
            transport = _UpstreamTransport(self.sent)
            protocol = factory.buildProtocol(None)
            self.upstreams[transport] = protocol
            protocol.makeConnection(transport)

    def check(self) -> None:
        """
        Fail unless the last request was answered 200 through the upstream.
        """
        answer = self.client.value()
        if not answer.startswith(b"HTTP/1.1 200 OK\r\n") or not answer.endswith(b"hello\n"):
            raise SystemExit("unexpected answer: %r" % (answer[:200],))

    def run(self, n: int) -> float:
        """
        Run C{n} requests; return the CPU microseconds per request.
        """
        client, upstreamTransport = self.client, self.upstreamTransport
        receive, answer = self.server.dataReceived, self.upstream.dataReceived
        if self.endpoints > 1:
            return self._runMany(n)
        start = time.process_time()
        for _ in range(n):
            client.clear()
            upstreamTransport.clear()
            receive(REQUEST)
            answer(RESPONSE)
        spent = time.process_time() - start
        self.check()
        return spent * 1e6 / n

    def _runMany(self, n: int) -> float:
        """
        L{run} for a service with several endpoints: each request is
        answered on the upstream connection it went to.
        """
        client, sent, upstreams, tcpClients = (
            self.client, self.sent, self.upstreams, self.reactor.tcpClients)
        receive = self.server.dataReceived
        start = time.process_time()
        for _ in range(n):
            client.clear()
            receive(REQUEST)
            if len(tcpClients) != len(upstreams):
                self.connectNew()
            transport = sent[0]
            transport.clear()
            upstreams[transport].dataReceived(RESPONSE)
        spent = time.process_time() - start
        self.check()
        return spent * 1e6 / n


def phases(variants: list[str], n: int) -> None:
    """
    Build every variant's stack and warm it up, then run C{n} requests of
    each, calling C{os.getppid} before each and after the last: under
    callgrind with C{--dump-before=os_getppid}, each run of requests gets
    its own dump of the instructions it took.
    """
    stacks = [Stack(v) for v in variants]
    for stack in stacks:
        stack.run(50)
    for stack in stacks:
        os.getppid()
        stack.run(n)
    os.getppid()


def callgrindPerRequest(
    script: str, variants: list[str], n: int, valgrind: str, dumpOf: Callable[[int], int]
) -> dict[str, float]:
    """
    Run C{script --phases --only VARIANTS --requests N} under callgrind in
    one process, dumping before each C{os.getppid} call, and read each
    variant's instructions per request from its dump.

    @param dumpOf: the number of the dump holding variant C{i}'s requests.
    """
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "callgrind.out")
        argv = [valgrind, "--tool=callgrind", "--dump-before=os_getppid",
                "--callgrind-out-file=" + out, sys.executable, script, "--phases",
                "--only", ",".join(variants), "--requests", str(n)]
        # A fixed hash seed: the same dictionary layouts in every run.
        env = dict(os.environ, PYTHONHASHSEED="0")
        done = subprocess.run(argv, capture_output=True, text=True, env=env)
        if done.returncode != 0:
            raise SystemExit("callgrind run failed:\n" + done.stderr[-2000:])
        counts = []
        for i in range(len(variants)):
            with open("%s.%d" % (out, dumpOf(i))) as f:
                found = re.search(r"^summary: (\d+)", f.read(), re.M)
            if found is None:
                raise SystemExit("no summary in callgrind dump %d" % (dumpOf(i),))
            counts.append(int(found.group(1)) / n)
    return dict(zip(variants, counts, strict=True))


def countInstructions(variants: list[str], n: int, valgrind: str) -> int:
    """
    Print each variant's instructions per request, counted by callgrind in
    one process (see L{phases}), and the deltas against C{all-on}.
    """
    # Dump k (k >= 1) is what ran before the k-th os.getppid: dump 1 is
    # the start-up, dump 1 + i the requests of variant i.
    perRequest = callgrindPerRequest(__file__, variants, n, valgrind, lambda i: i + 2)
    print("instructions/request (callgrind, %d requests each):" % (n,))
    base = perRequest.get("all-on")
    for v in variants:
        line = "  %-20s %9.0f" % (v, perRequest[v])
        if base is not None and v != "all-on":
            delta = perRequest[v] - base
            if v in FEATURES:
                line += "   feature cost %+7.0f (%+.1f%%): %s" % (
                    -delta, -100.0 * delta / base, FEATURES[v])
            else:
                line += "   %+7.0f (%+.1f%%) over all-on" % (delta, 100.0 * delta / base)
        print(line)
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default=",".join(VARIANTS),
                        help="comma-separated variants (default: all)")
    parser.add_argument("--requests", type=int, default=3000, help="requests per round")
    parser.add_argument("--rounds", type=int, default=9, help="interleaved rounds")
    parser.add_argument("--warmup", type=int, default=500, help="requests before measuring")
    parser.add_argument("--instructions", action="store_true",
                        help="count instructions under callgrind instead of timing "
                        "(one run of --requests requests per variant)")
    parser.add_argument("--phases", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--valgrind", default="valgrind")
    args = parser.parse_args(argv)
    variants = args.only.split(",")
    for v in variants:
        if v not in VARIANTS:
            parser.error("unknown variant %r (known: %s)" % (v, ", ".join(VARIANTS)))
    if args.phases:
        phases(variants, args.requests)
        return 0
    if args.instructions:
        return countInstructions(variants, args.requests, args.valgrind)
    stacks = {v: Stack(v) for v in variants}
    for stack in stacks.values():
        if args.warmup:
            stack.run(args.warmup)
    samples: dict[str, list[float]] = {v: [] for v in variants}
    order = list(variants)
    for _ in range(args.rounds):
        random.shuffle(order)
        for v in order:
            samples[v].append(stacks[v].run(args.requests))
    medians = {v: statistics.median(s) for v, s in samples.items()}
    print("%d rounds x %d requests, CPU us/request (median, min-max):"
          % (args.rounds, args.requests))
    base = medians.get("all-on")
    for v in variants:
        line = "  %-20s %7.2f  (%.2f-%.2f)" % (v, medians[v], min(samples[v]), max(samples[v]))
        if base is not None and v != "all-on":
            delta = medians[v] - base
            if v in FEATURES:
                line += "   feature cost %+.2f us: %s" % (-delta, FEATURES[v])
            else:
                line += "   %+.2f us over all-on" % (delta,)
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
