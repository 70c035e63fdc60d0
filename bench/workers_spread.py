"""
How evenly the kernel spreads keep-alive connections, and their requests,
over worker processes: one listening socket shared by every worker (passed
descriptors, what meshproxy's workers adopt), against one C{SO_REUSEPORT}
socket per worker.

Each worker is a forked Twisted process answering every request with a
small fixed response; C{wrk} runs against them; each worker then reports
how many connections and requests it served. No proxying: only the spread
is measured.

    python bench/workers_spread.py [--workers 2] [--connections 50] [--duration 5] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time

RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def serve(sock: socket.socket, report: int, oneAccept: bool = False) -> None:
    """
    Run one worker on C{sock} until SIGTERM, then write its counts to the
    pipe C{report}; with C{oneAccept}, it accepts one connection per wake
    (as meshproxy's workers do).
    """
    from twisted.internet import reactor
    from twisted.internet.protocol import Factory, Protocol

    counts = {"connections": 0, "requests": 0}

    class Answer(Protocol):
        buffer = b""

        def connectionMade(self) -> None:
            counts["connections"] += 1

        def dataReceived(self, data: bytes) -> None:
            self.buffer += data
            n = self.buffer.count(b"\r\n\r\n")
            if n:
                self.buffer = self.buffer[self.buffer.rfind(b"\r\n\r\n") + 4 :]
                counts["requests"] += n
                self.transport.write(RESPONSE * n)

    def stop(*_: object) -> None:
        os.write(report, json.dumps(counts).encode("ascii") + b"\n")
        reactor.callFromThread(reactor.stop)

    signal.signal(signal.SIGTERM, stop)
    sock.setblocking(False)
    port = reactor.adoptStreamPort(sock.fileno(), socket.AF_INET, Factory.forProtocol(Answer))
    sock.close()
    if oneAccept:
        from meshproxy.workers.worker import acceptOneAtATime

        acceptOneAtATime(port)
    reactor.run(installSignalHandlers=False)


def listening(port: int, reusePort: bool) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reusePort:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(1024)
    return sock


def run(mode: str, workers: int, connections: int, duration: int) -> list[dict[str, int]]:
    """
    One measurement: C{mode} is C{"shared"} (Twisted's default: up to 100
    accepts per wake), C{"shared1"} (one accept per wake) or C{"reuseport"}.

    @return: each worker's counts.
    """
    first = listening(0, mode == "reuseport")
    port = first.getsockname()[1]
    sockets = [first] + [listening(port, True) for _ in range(workers - 1)] if (
        mode == "reuseport"
    ) else [first] * workers
    readEnd, writeEnd = os.pipe()
    pids = []
    for sock in sockets:
        pid = os.fork()
        if pid == 0:
            os.close(readEnd)
            try:
                serve(sock, writeEnd, mode == "shared1")
            finally:
                os._exit(0)
        pids.append(pid)
    for sock in set(sockets):
        sock.close()
    os.close(writeEnd)
    time.sleep(0.5)  # (a benchmark: the workers start their reactors)
    subprocess.run(
        ["wrk", "-t", "2", "-c", str(connections), "-d", str(duration),
         "http://127.0.0.1:%d/" % (port,)],
        check=True, capture_output=True,
    )
    for pid in pids:
        os.kill(pid, signal.SIGTERM)
    for pid in pids:
        os.waitpid(pid, 0)
    with os.fdopen(readEnd) as f:
        return [json.loads(line) for line in f]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    for mode in ("shared", "shared1", "reuseport"):
        shares, connShares = [], []
        for _ in range(args.runs):
            counts = run(mode, args.workers, args.connections, args.duration)
            requests = [c["requests"] for c in counts]
            conns = [c["connections"] for c in counts]
            shares.append(max(requests) / max(1, sum(requests)))
            connShares.append(max(conns) / max(1, sum(conns)))
            print("%-9s requests per worker %s, connections per worker %s"
                  % (mode, sorted(requests), sorted(conns)))
        print("%-9s busiest worker's share of requests: median %.2f (even: %.2f)"
              % (mode, statistics.median(shares), 1 / args.workers))
        sys.stdout.flush()


if __name__ == "__main__":
    main()
