"""
Idle memory of one meshproxy process, in fresh processes started the way
C{bench/run.py} starts them (twistd, the bench's plain config: one HTTP
router, a static namer, the admin API, no TLS, no exporter).

Each run starts a fresh C{twistd -n meshproxy}, waits for the admin API's
C{/ready}, sends one request through the router (to a small upstream this
script serves), then reads C{/proc/PID/status} (VmRSS) and
C{/proc/PID/smaps_rollup}, and stops the process. It prints the median of
each figure over the runs, in MiB (and the RSS in MB).

C{--probe FILE} runs the Python code of FILE inside the process (from a
C{SIGUSR2} handler, between two bytecodes of the reactor's thread) after the
first reading, then reads again: an experiment on a running process, e.g.
C{gc.collect()} and glibc's C{malloc_trim(0)} (C{--trim} is that probe).
C{--requests N} then sends N requests on one keep-alive connection and reads
again (does what the probe freed come back?). C{--reload} sends C{SIGHUP}
(a reload of the same config) before the probe's reading, and reads again
after the reload.

    python bench/idlemem.py --runs 5
    python bench/idlemem.py --runs 3 --trim
    python bench/idlemem.py --config my.yaml   # $port, $adminport, $upstream

Standard library only; Linux (C{/proc}).
"""

from __future__ import annotations

import argparse
import http.client
import http.server
import os
import pathlib
import signal
import socket
import statistics
import string
import subprocess
import sys
import tempfile
import threading
import time

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent

PLAIN = """\
admin: {listen: "tcp:$adminport:interface=127.0.0.1"}
namers:
  - {kind: static, prefix: /#/static, services: {hello: ["$upstream"]}}
routers:
  - name: bench
    protocol: http
    listen: "tcp:$port:interface=127.0.0.1:backlog=1024"
    identifier: {kind: host}
    rules: "/svc => /#/static;"
    client: {maxIdlePerEndpoint: 1024}
"""

# twistd, with a SIGUSR2 handler that runs the probe file (if any) and then
# writes the done file.
BOOT = """\
import os, signal, sys
probe, done = os.environ.get("IDLEMEM_PROBE"), os.environ["IDLEMEM_DONE"]
def _probe(signum, frame):
    if probe:
        with open(probe) as f:
            exec(compile(f.read(), probe, "exec"), {"__name__": "__probe__"})
    with open(done, "a") as f:
        f.write("done\\n")
signal.signal(signal.SIGUSR2, _probe)
sys.argv[0] = "twistd"
from twisted.scripts.twistd import run
run()
"""

TRIM = """\
import ctypes, gc
gc.collect()
ctypes.CDLL("libc.so.6").malloc_trim(0)
"""

FIELDS = ("VmRSS", "Rss", "Anonymous", "Private_Clean", "Private_Dirty", "Pss")


class _Hello(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "6")
        self.end_headers()
        self.wfile.write(b"hello\n")

    def log_message(self, *args: object) -> None:
        pass


def freePort() -> int:
    """A free TCP port of 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def readMemory(pid: int) -> dict[str, int]:
    """
    The figures of L{FIELDS} (KiB) of C{pid}, and C{USS} (Private_Clean +
    Private_Dirty).
    """
    figures: dict[str, int] = {}
    for name in ("status", "smaps_rollup"):
        with open("/proc/%d/%s" % (pid, name)) as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in FIELDS:
                    figures[key] = int(value.split()[0])
    figures["USS"] = figures["Private_Clean"] + figures["Private_Dirty"]
    return figures


def get(port: int, path: str, host: str = "hello") -> int:
    """The status of C{GET path} on 127.0.0.1:C{port}, or 0 on error."""
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        c.request("GET", path, headers={"Host": host})
        r = c.getresponse()
        r.read()
        c.close()
        return r.status
    except OSError:
        return 0


def waitFor(predicate: object, timeout: float, what: str) -> None:
    """Poll C{predicate()} until true, or raise after C{timeout} seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise SystemExit("timed out waiting for " + what)
        time.sleep(0.05)


def oneRun(
    args: argparse.Namespace, upstream: int, tmp: pathlib.Path, n: int
) -> list[dict[str, int]]:
    """
    Start one process, read its memory (and again after the reload and
    the probe, when asked), stop it.

    @return: the readings, in order.
    """
    port, admin = freePort(), freePort()
    template = pathlib.Path(args.config).read_text() if args.config else PLAIN
    conf = tmp / ("mesh%d.yaml" % (n,))
    conf.write_text(string.Template(template).substitute(
        port=port, adminport=admin, upstream="127.0.0.1:%d" % (upstream,)))
    done = tmp / ("done%d" % (n,))
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), IDLEMEM_DONE=str(done))
    if args.probe:
        env["IDLEMEM_PROBE"] = str(args.probe)
    log = tmp / ("mesh%d.log" % (n,))
    proc = subprocess.Popen(
        [args.python, "-c", BOOT, "-n", "--pidfile=", "--logfile=%s" % (log,),
         "meshproxy", "--config", str(conf)],
        cwd=REPO_ROOT, env=env)
    readings = []
    try:
        waitFor(lambda: get(admin, "/ready", "127.0.0.1:%d" % (admin,)) == 200, 30, "/ready")
        if get(port, "/") != 200:
            raise SystemExit("the request through the proxy failed; see " + str(log))
        time.sleep(args.settle)
        readings.append(readMemory(proc.pid))
        if args.reload:
            before = log.read_text().count("reload")
            proc.send_signal(signal.SIGHUP)
            waitFor(lambda: log.read_text().count("reload") > before + 1, 30, "the reload")
            time.sleep(args.settle)
            readings.append(readMemory(proc.pid))
        if args.probe:
            proc.send_signal(signal.SIGUSR2)
            waitFor(done.exists, 30, "the probe")
            readings.append(readMemory(proc.pid))
        if args.requests:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            for _ in range(args.requests):
                c.request("GET", "/", headers={"Host": "hello"})
                c.getresponse().read()
            c.close()
            time.sleep(args.settle)
            readings.append(readMemory(proc.pid))
    finally:
        proc.terminate()
        proc.wait(30)
    return readings


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="fresh processes (3)")
    parser.add_argument("--python", default=sys.executable, help="interpreter of meshproxy")
    parser.add_argument("--config", help="config template ($port, $adminport, $upstream)")
    parser.add_argument("--probe", help="Python file to run in the process after the first reading")
    parser.add_argument("--trim", action="store_true",
                        help="probe: gc.collect() and malloc_trim(0)")
    parser.add_argument("--reload", action="store_true", help="SIGHUP (reload) before the probe")
    parser.add_argument("--requests", type=int, default=0,
                        help="then N requests on one connection, and read again")
    parser.add_argument("--settle", type=float, default=0.5, help="seconds before each reading")
    args = parser.parse_args(argv)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hello)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    with tempfile.TemporaryDirectory() as directory:
        tmp = pathlib.Path(directory)
        if args.trim:
            args.probe = tmp / "trim.py"
            args.probe.write_text(TRIM)
        runs = [oneRun(args, server.server_address[1], tmp, n) for n in range(args.runs)]
    server.shutdown()
    labels = ["idle"] + (["after a reload"] if args.reload else []) + (
        ["after the probe"] if args.probe else []) + (
        ["after %d requests" % (args.requests,)] if args.requests else [])
    print("median of %d fresh processes, MiB (VmRSS also in MB):" % (len(runs),))
    print("%-16s" % ("",) + "".join("%15s" % (f,) for f in ("VmRSS", "VmRSS MB", "Anonymous",
                                                           "Private_Clean", "USS", "Pss")))
    for i, label in enumerate(labels):
        m = {k: statistics.median(r[i][k] for r in runs) for k in runs[0][i]}
        print("%-16s" % (label,) + "".join("%15.2f" % (v,) for v in (
            m["VmRSS"] / 1024, m["VmRSS"] * 1024 / 1e6, m["Anonymous"] / 1024,
            m["Private_Clean"] / 1024, m["USS"] / 1024, m["Pss"] / 1024)))
    print("each run's VmRSS:", "; ".join(
        " / ".join("%.2f" % (r[i]["VmRSS"] / 1024,) for i in range(len(labels))) for r in runs))


if __name__ == "__main__":
    main()
