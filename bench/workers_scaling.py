"""
meshproxy with 1 worker process and with more, in the same run: requests
per second through the proxy (C{wrk}, keep-alive) to a trivial upstream in
a process of its own, and the CPU time per request of the whole process
group (supervisor, zygote, workers), from C{/proc}.

    python bench/workers_scaling.py [--workers 1,2] [--connections 50] [--duration 5] [--runs 3]

The upstream and C{wrk} run on the same machine: pin them away from the
proxy's cores (C{taskset}) on a machine with enough of them.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

UPSTREAM = r"""
import sys
from twisted.internet import reactor
from twisted.internet.protocol import Factory, Protocol
R = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
class A(Protocol):
    b = b""
    def dataReceived(self, d):
        self.b += d
        n = self.b.count(b"\r\n\r\n")
        if n:
            self.b = self.b[self.b.rfind(b"\r\n\r\n") + 4:]
            self.transport.write(R * n)
reactor.listenTCP(int(sys.argv[1]), Factory.forProtocol(A), interface="127.0.0.1", backlog=1024)
reactor.run()
"""

CONFIG = """\
workers: %(workers)d
admin: {listen: "tcp:%(admin)d:interface=127.0.0.1"}
namers:
  - {kind: static, prefix: /#/static, services: {up: ["127.0.0.1:%(upstream)d"]}}
routers:
  - name: web
    listen: "tcp:%(proxy)d:interface=127.0.0.1"
    identifier: {kind: host}
    rules: "/svc/bench => /#/static/up;"
"""


def ticks(pid: int) -> int:
    with open("/proc/%d/stat" % (pid,)) as f:
        fields = f.read().split()
    return int(fields[13]) + int(fields[14])


def tree(pid: int) -> list[int]:
    """
    C{pid} and its descendants.
    """
    try:
        with open("/proc/%d/task/%d/children" % (pid, pid)) as f:
            children = [int(c) for c in f.read().split()]
    except OSError:
        children = []
    found = [pid]
    for child in children:
        found += tree(child)
    return found


def waitReady(admin: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen("http://127.0.0.1:%d/ready" % (admin,), timeout=1) as r:
                if json.load(r)["ready"]:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit("the proxy was not ready within 30 s")


def measure(workers: int, args: argparse.Namespace) -> list[tuple[float, float]]:
    """
    C{args.runs} runs of C{wrk} through a proxy with C{workers} workers.

    @return: C{(requests per second, CPU microseconds per request)} per run.
    """
    directory = tempfile.mkdtemp()
    path = os.path.join(directory, "mesh.yaml")
    with open(path, "w") as f:
        f.write(CONFIG % {"workers": workers, "admin": args.port + 1, "proxy": args.port,
                          "upstream": args.port + 2})
    proxy = subprocess.Popen(
        [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n",
         "--pidfile=", "meshproxy", "--config", path],
        cwd=directory, env={**os.environ, "PYTHONPATH": HERE},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    results = []
    try:
        waitReady(args.port + 1)
        for _ in range(args.runs):
            pids = tree(proxy.pid)
            before = {pid: ticks(pid) for pid in pids}
            out = subprocess.run(
                ["wrk", "-t", "2", "-c", str(args.connections), "-d", str(args.duration),
                 "-H", "Host: bench", "http://127.0.0.1:%d/" % (args.port,)],
                capture_output=True, text=True, check=True,
            ).stdout
            requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
            rate = float(re.search(r"Requests/sec:\s+(\S+)", out).group(1))  # type: ignore[union-attr]
            cpu = sum(ticks(pid) - before[pid] for pid in pids) / os.sysconf("SC_CLK_TCK")
            results.append((rate, cpu * 1e6 / max(1, requests)))
    finally:
        proxy.terminate()
        proxy.wait()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--port", type=int, default=14140)
    args = parser.parse_args()
    upstream = subprocess.Popen([sys.executable, "-c", UPSTREAM, str(args.port + 2)])
    try:
        baseline = None
        for workers in [int(n) for n in args.workers.split(",")]:
            results = measure(workers, args)
            rate = statistics.median(r for r, _ in results)
            cpu = statistics.median(c for _, c in results)
            baseline = baseline or rate
            print("workers=%d: %s req/s (median %.0f, %.2fx), CPU per request %s us (median %.1f)"
                  % (workers, ", ".join("%.0f" % r for r, _ in results), rate, rate / baseline,
                     ", ".join("%.1f" % c for _, c in results), cpu))
            sys.stdout.flush()
    finally:
        upstream.terminate()
        upstream.wait()


if __name__ == "__main__":
    main()
