"""
The critical path of a proxied HTTP/1.1 request at concurrency 1, in
process, on meshproxy's own reactor and real loopback sockets.

At concurrency 1 the latency meshproxy adds is what it does between reading
bytes and sending the bytes they cause: the work done there is waited for
by the client; work done after the send overlaps with the upstream (or the
client) doing its part. Per request this measures four segments:

  - C{a}: from the reactor's poll that finds the client's request readable
    to the request's bytes handed to the upstream socket's C{send};
  - C{a-tail}: from that send to the end of the reactor's iteration (the
    rest of the event, what L{MeshReactor.callAfterEvents} queued, then
    the timers: C{runUntilCurrent} and C{timeout}, as C{mainLoop} runs
    them before its next poll);
  - C{b}: from the poll that finds the upstream's response readable to the
    response's bytes handed to the client socket's C{send};
  - C{b-tail}: from that send to the end of that iteration.

C{a + b} is meshproxy's share of the added latency (plus the kernel's
wake-ups, which no proxy avoids); a tail longer than the time the peer
takes to answer delays the next read.

One process: a L{MeshReactor} (not the global reactor, never run: its
C{doIteration} and C{runUntilCurrent} are called in turn as C{mainLoop}
would), an L{HttpRouter} with the default feature set (metrics, peak-EWMA
power-of-two-choices, consecutive-failures accrual, the retry budget,
classification) listening on a loopback port, a blocking client socket
sending C{GET /users/1} with C{Host: hello} on one keep-alive connection,
and a blocking "upstream" socket the router's pool connected to, answering
C{200} with a 6-byte body. The time of each send is taken by wrapping the
connection's writer (what L{writerFor} returns) with a call to
C{time.perf_counter_ns}.

    PYTHONPATH=. python bench/c1path.py                     # medians over 20,000 requests
    PYTHONPATH=. python bench/c1path.py --requests 50000 --rounds 5
    PYTHONPATH=. python bench/c1path.py --cpu     # CPU time: on a busy machine

Instruction counts, which a busy machine does not disturb (one process
under callgrind; C{os.getppid} marks the ends of the segments, and
callgrind dumps its counters before each):

    PYTHONPATH=. python bench/c1path.py --instructions --requests 200
"""

from __future__ import annotations

import argparse
import gc
import os
import re
import select
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry

import meshproxy.http.client
import meshproxy.http.server
from meshproxy.config import parseConfig
from meshproxy.discovery.endpoints import Endpoint
from meshproxy.discovery.static import StaticNamer
from meshproxy.http.listener import ServerFactory
from meshproxy.http.router import HttpRouter
from meshproxy.reactor import MeshReactor
from meshproxy.routing.path import Path
from meshproxy.runtime import balancerFactory
from meshproxy.telemetry.metrics import MeshMetrics

CONFIG = """\
namers:
  - {kind: static, prefix: /#/static, services: {hello: ["127.0.0.1:1"]}}
routers:
  - name: web
    listen: "tcp:0"
    rules: "/svc => /#/static;"
"""

REQUEST = b"GET /users/1 HTTP/1.1\r\nHost: hello\r\nUser-Agent: bench\r\nAccept: */*\r\n\r\n"
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\nContent-Type: text/plain\r\n\r\nhello\n"

SEGMENTS = ("a", "a-tail", "b", "b-tail")


def readable(sock: socket.socket) -> bool:
    return bool(select.select([sock], [], [], 0)[0])


class Marks:
    """
    Where the segments end: C{mark} is called at each send, and by the loop
    around the reactor's iterations.

    @ivar clock: the function called at each mark, its value kept in
        C{last} (C{time.perf_counter_ns}, or C{os.getppid} under callgrind).
    """

    def __init__(self, clock: Callable[[], int]) -> None:
        self.clock = clock
        self.last = 0
        self.sends = 0

    def mark(self) -> int:
        self.last = value = self.clock()
        return value


def _timedWriters(marks: Marks) -> None:
    """
    Make every connection's writer mark the time of its sends.
    """
    for module in (meshproxy.http.server, meshproxy.http.client):
        original = module.writerFor

        def writerFor(transport: Any, original: Any = original) -> Callable[[bytes], None]:
            write = original(transport)

            def timed(data: bytes) -> None:
                marks.sends += 1
                marks.mark()
                write(data)

            return timed

        module.writerFor = writerFor  # type: ignore[attr-defined]


class Loop:
    """
    The router, its reactor, and the two blocking peers, connected.
    """

    def __init__(self, marks: Marks) -> None:
        self.marks = marks
        _timedWriters(marks)
        upstream = socket.socket()
        upstream.bind(("127.0.0.1", 0))
        upstream.listen(1)
        port = upstream.getsockname()[1]
        reactor = self.reactor = MeshReactor()
        mesh = parseConfig(CONFIG)
        rc = mesh.routers[0]
        prefix = Path.read("/#/static")
        namers = {prefix: StaticNamer(prefix, {"hello": [Endpoint("127.0.0.1", port)]})}
        self.router = HttpRouter(
            rc, namers, reactor=reactor, metrics=MeshMetrics(CollectorRegistry()),
            balancerFactory=balancerFactory(rc.loadBalancer, reactor))
        factory = ServerFactory(self.router, rc.server, reactor)
        listening = reactor.listenTCP(0, factory, interface="127.0.0.1")
        client = self.client = socket.create_connection(
            ("127.0.0.1", listening.getHost().port))
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.iterateUntil(lambda: bool(factory.connections))
        client.sendall(REQUEST)
        upstream.setblocking(False)

        def accepted() -> bool:
            try:
                self.up, _ = upstream.accept()
            except BlockingIOError:
                return False
            return True

        self.iterateUntil(accepted)
        upstream.close()
        self.up.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.iterateUntil(lambda: readable(self.up))
        self.up.setblocking(True)
        self.readExactly(self.up, b"\r\n\r\n", "request")
        self.up.sendall(RESPONSE)
        self.iterateUntil(lambda: readable(client))
        self.readResponse()

    def iterateUntil(self, done: Callable[[], bool], limit: int = 1000) -> None:
        reactor = self.reactor
        for _ in range(limit):
            reactor.runUntilCurrent()
            reactor.doIteration(0.01)
            if done():
                return
        raise SystemExit("the router did not get there")

    @staticmethod
    def readExactly(sock: socket.socket, end: bytes, what: str) -> bytes:
        data = b""
        while not data.endswith(end):
            more = sock.recv(65536)
            if not more:
                raise SystemExit("the %s's connection closed" % (what,))
            data += more
        return data

    def readResponse(self) -> None:
        answer = self.readExactly(self.client, b"hello\n", "client")
        if not answer.startswith(b"HTTP/1.1 200 OK\r\n"):
            raise SystemExit("unexpected answer: %r" % (answer[:200],))

    def iteration(self) -> None:
        """
        One turn of C{mainLoop} once the bytes are there: the poll and its
        events, then the timers.
        """
        reactor = self.reactor
        sends = self.marks.sends
        reactor.doIteration(0.1)
        reactor.runUntilCurrent()
        reactor.timeout()
        if self.marks.sends != sends + 1:
            raise SystemExit("expected one send in the iteration, got %d"
                             % (self.marks.sends - sends,))

    def run(self, n: int, out: dict[str, list[int]] | None) -> None:
        """
        Run C{n} requests; append each segment's duration to C{out}.
        """
        client, up, mark, iteration = self.client, self.up, self.marks.mark, self.iteration
        marks = self.marks
        readExactly = self.readExactly
        for _ in range(n):
            client.sendall(REQUEST)
            t0 = mark()
            iteration()
            tA = marks.last
            t1 = mark()
            readExactly(up, b"\r\n\r\n", "upstream")
            up.sendall(RESPONSE)
            t2 = mark()
            iteration()
            tB = marks.last
            t3 = mark()
            readExactly(client, b"hello\n", "client")
            if out is not None:
                out["a"].append(tA - t0)
                out["a-tail"].append(t1 - tA)
                out["b"].append(tB - t2)
                out["b-tail"].append(t3 - tB)


def timing(args: argparse.Namespace) -> int:
    marks = Marks(time.thread_time_ns if args.cpu else time.perf_counter_ns)
    loop = Loop(marks)
    loop.run(args.warmup, None)
    gc.collect()
    gc.freeze()
    medians: dict[str, list[float]] = {s: [] for s in SEGMENTS}
    for _ in range(args.rounds):
        out: dict[str, list[int]] = {s: [] for s in SEGMENTS}
        loop.run(args.requests, out)
        for s in SEGMENTS:
            medians[s].append(statistics.median(out[s]) / 1000.0)
    print("c1 critical path, %d rounds x %d requests, %s us per request (median of the"
          " rounds' medians, min-max):"
          % (args.rounds, args.requests, "CPU" if args.cpu else "wall-clock"))
    for s in SEGMENTS:
        m = medians[s]
        print("  %-8s %7.2f  (%.2f-%.2f)" % (s, statistics.median(m), min(m), max(m)))
    total = statistics.median(medians["a"]) + statistics.median(medians["b"])
    print("  a + b    %7.2f" % (total,))
    return 0


def phases(args: argparse.Namespace) -> int:
    """
    Under callgrind: warm up unmarked, then mark the ends of the segments
    with C{os.getppid} (the peers' own work between them gets its dumps
    too, which L{instructions} skips).
    """
    marks = Marks(lambda: 0)
    loop = Loop(marks)
    loop.run(args.warmup, None)
    gc.collect()
    gc.freeze()
    marks.clock = os.getppid  # type: ignore[assignment]
    marks.mark()
    loop.run(args.requests, None)
    return 0


def instructions(args: argparse.Namespace) -> int:
    """
    Run L{phases} under callgrind, dumping before each C{os.getppid}, and
    print each segment's instructions (median over the requests).
    """
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "callgrind.out")
        argv = [args.valgrind, "--tool=callgrind", "--dump-before=os_getppid",
                "--callgrind-out-file=" + out, sys.executable, __file__, "--phases",
                "--requests", str(args.requests), "--warmup", str(args.warmup)]
        env = dict(os.environ, PYTHONHASHSEED="0")
        done = subprocess.run(argv, capture_output=True, text=True, env=env)
        if done.returncode != 0:
            raise SystemExit("callgrind run failed:\n" + done.stderr[-2000:])
        counts = []
        k = 2
        while os.path.exists("%s.%d" % (out, k)):
            with open("%s.%d" % (out, k)) as f:
                found = re.search(r"^summary: (\d+)", f.read(), re.M)
            counts.append(int(found.group(1)) if found else 0)
            k += 1
    # Per request, the dumps end: t0 (the peers), the send (a), t1
    # (a-tail), t2 (the peers), the send (b), t3 (b-tail).
    perRequest = 6
    n = len(counts) // perRequest
    if n < args.requests:
        raise SystemExit("expected %d dumps, got %d" % (args.requests * perRequest, len(counts)))
    bySegment: dict[str, list[int]] = {s: [] for s in SEGMENTS}
    for i in range(n):
        row = counts[i * perRequest:(i + 1) * perRequest]
        bySegment["a"].append(row[1])
        bySegment["a-tail"].append(row[2])
        bySegment["b"].append(row[4])
        bySegment["b-tail"].append(row[5])
    print("c1 critical path, instructions per request (callgrind, median of %d requests):" % (n,))
    for s in SEGMENTS:
        print("  %-8s %9.0f" % (s, statistics.median(bySegment[s])))
    total = statistics.median(bySegment["a"]) + statistics.median(bySegment["b"])
    print("  a + b    %9.0f" % (total,))
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20000, help="requests per round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (their medians' median)")
    parser.add_argument("--warmup", type=int, default=2000, help="requests before measuring")
    parser.add_argument("--cpu", action="store_true",
                        help="the thread's CPU time (a system call per mark, the same in"
                        " every run) instead of the wall clock: a busy machine's other"
                        " processes do not count")
    parser.add_argument("--instructions", action="store_true",
                        help="count instructions under callgrind instead of timing")
    parser.add_argument("--phases", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--valgrind", default="valgrind")
    args = parser.parse_args(argv)
    if args.phases:
        return phases(args)
    if args.instructions:
        return instructions(args)
    return timing(args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
