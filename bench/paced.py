#!/usr/bin/env python3
"""
The CPU a proxy takes, and the latency it adds, at a light steady rate: one
keep-alive connection from the load CPU sending one request every 1/RATE
seconds (the next one at its own time, whatever the last one took), to each
target of C{bench/run.py} in turn, interleaved over rounds.

What C{wrk} cannot show: at full load a proxy never sleeps, at concurrency 1
it never waits between requests; a sidecar mostly sees neither, but a
trickle, where each request finds the proxy asleep. The default compares
meshproxy with and without C{busyPoll: 0.1ms} (C{meshproxy-busypoll}),
and HAProxy, at 100 and 1,000 requests per second.

For each target and rate it prints the median over the rounds of the
proxy's CPU time (user + system, C{/proc/PID/stat}) as a share of one core
and per request, and of the p50 and p99 of the client's round trips (which
include the client's own Python, the same for every target; compare the
targets, not the absolute values).

    python bench/paced.py                                  # 3 rounds of 8 s
    python bench/paced.py --rates 1000 --rounds 5 --targets meshproxy,meshproxy-busypoll

Standard library only (it imports C{bench/run.py}); needs nginx and, for the
HAProxy target, haproxy.
"""

import argparse
import os
import socket
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import run  # noqa: E402  (bench/run.py)
from tlsperf import cpuTicks, withServers  # noqa: E402

REQUEST = f"GET / HTTP/1.1\r\nHost: {run.HOST_HEADER}\r\n\r\n".encode()


def exchange(sock, buffer):
    """
    Send one request on C{sock} and read its whole answer (nginx's small
    page, with a C{Content-Length}).

    @param buffer: the bytes already read past the last answer; returns
        what is left past this one.
    """
    sock.sendall(REQUEST)
    data = buffer
    while True:
        head, sep, rest = data.partition(b"\r\n\r\n")
        if sep:
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if len(rest) >= length:
                if not head.startswith(b"HTTP/1.1 200 "):
                    raise run.HarnessError("unexpected answer: %r" % (head[:100],))
                return rest[length:]
        chunk = sock.recv(65536)
        if not chunk:
            raise run.HarnessError("the proxy closed the connection")
        data += chunk


def paced(bench, target, rate, duration):
    """
    One paced run against C{target}: the proxy's CPU and the round trips.
    """
    spec = run.SPECS[target]
    pid = bench.pids[spec.server]
    sock = socket.create_connection((run.LOOPBACK, bench.ports[spec.server]))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        left = b""
        for _ in range(200):
            # The connection to nginx made, the code warm.
            left = exchange(sock, left)
        interval = 1.0 / rate
        trips = []
        before, start = sum(cpuTicks(pid)), time.monotonic()
        due = start
        while due - start < duration:
            wait = due - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            sent = time.perf_counter()
            left = exchange(sock, left)
            trips.append(time.perf_counter() - sent)
            due += interval
        wall = time.monotonic() - start
        cpu = (sum(cpuTicks(pid)) - before) / run.CLOCK_TICKS
    finally:
        sock.close()
    trips.sort()
    return {
        "requests": len(trips),
        "core": cpu / wall,
        "cpu_us": cpu * 1e6 / len(trips),
        "p50_us": trips[len(trips) // 2] * 1e6,
        "p99_us": trips[int(len(trips) * 0.99)] * 1e6,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--targets", default="meshproxy,meshproxy-busypoll,haproxy",
                        help="targets of bench/run.py (default meshproxy,meshproxy-busypoll,"
                             "haproxy)")
    parser.add_argument("--rates", default="100,1000", help="requests per second, comma-separated")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per run")
    args = parser.parse_args(argv)
    targets = args.targets.split(",")
    if any(t not in run.SPECS or not run.SPECS[t].servers for t in targets):
        parser.error("--targets: proxies of bench/run.py (%s)" % ", ".join(run.SPECS))
    rates = [float(r) for r in args.rates.split(",")]
    if any(r <= 0 or r > 5000 for r in rates):
        parser.error("--rates: each above 0 and at most 5000 per second")

    def measure(bench, tmp):
        affinity = os.sched_getaffinity(0)
        if bench.args.pin:
            # The client on the load CPU, beside nginx (as wrk).
            os.sched_setaffinity(0, run.cpu_list(bench.args.cpus["load"]))
        try:
            results = {(t, r): [] for t in targets for r in rates}
            for n in range(args.rounds):
                for rate in rates:
                    for t in targets:
                        results[t, rate].append(paced(bench, t, rate, args.duration))
                run.say(f"round {n + 1}/{args.rounds} done")
        finally:
            os.sched_setaffinity(0, affinity)
        report(results, targets, rates, args)

    return withServers(targets, "paced-", measure)


def report(results, targets, rates, args):
    """
    Print the medians over the rounds, and each run's share of a core.
    """
    print(f"\nmedians of {args.rounds} rounds of {args.duration:g} s, one keep-alive"
          " connection:")
    print(f"{'target':<22}{'rate/s':>8}{'core %':>9}{'CPU µs/req':>12}"
          f"{'p50 µs':>9}{'p99 µs':>9}")
    for rate in rates:
        for t in targets:
            runs = results[t, rate]

            def med(key, runs=runs):
                return statistics.median(r[key] for r in runs)

            print(f"{t:<22}{rate:>8g}{100 * med('core'):>9.1f}{med('cpu_us'):>12.0f}"
                  f"{med('p50_us'):>9.0f}{med('p99_us'):>9.0f}")
    print("each run's core %:")
    for (t, rate), runs in results.items():
        print(f"  {t} at {rate:g}/s: " + ", ".join(f"{100 * r['core']:.1f}" for r in runs))

if __name__ == "__main__":
    sys.exit(main())
