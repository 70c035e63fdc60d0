#!/usr/bin/env python3
"""
Instructions per proxied request of the whole meshproxy process, reactor
included: meshproxy under C{twistd -n meshproxy} (the plain config of
C{bench/run.py}) runs under C{valgrind --tool=callgrind}, in front of nginx,
and a client in this process sends keep-alive requests through it.

What C{bench/hotpath.py} counts is the request path's own Python on a fake
reactor; this counts everything the process runs per request: the epoll
reactor's loop and per-event dispatch, real timers, the socket calls' Python
side, the request path. Not the kernel (callgrind sees user space only).

The client keeps C{--connections} keep-alive connections; in each round it
sends one C{GET / (Host: hello)} on every connection, then reads every
response (no pipelining: one request in flight per connection, like wrk).
After C{--warmup} requests the counters are dumped (C{callgrind_control
-d PID}, which also zeroes them); then C{N} requests, a dump (I(N)); then
C{2N} requests, a dump (I(2N)). Instructions per request are
C{(I(2N) - I(N)) / N}: what a phase costs regardless of its length (the
dump itself, the idle wait between phases) cancels out.

    python bench/liveir.py                        # N=2000, 50 connections, ~3 min
    python bench/liveir.py --requests 1000 --connections 8 --annotate 25
    python bench/liveir.py --tracing 1.0          # tracing at 100% to a span receiver

Standard library only (it imports C{bench/run.py} for the configs and
process handling); needs valgrind and nginx. Runs of one checkout agree to
within about 1%; compare checkouts by running it in each.
"""

import argparse
import os
import re
import shutil
import signal
import socket
import string
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import run  # noqa: E402  (bench/run.py)

REQUEST = b"GET / HTTP/1.1\r\nHost: hello\r\n\r\n"

NGINX_CONF = string.Template(
    """\
worker_processes 1;
daemon off;
error_log $tmp/nginx-error.log warn;
pid $tmp/nginx.pid;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 1000000;
$temp_paths
    server {
        listen $listen;
        location / { return 200 "hello\\n"; }
    }
}
"""
)


def startNginx(nginx, tmp, port, procs):
    """
    Start nginx answering C{200 "hello\\n"} on C{127.0.0.1:port}.

    @param procs: the caller's list of processes to stop, which it joins
        as soon as it is started (before waiting for it to answer).
    @return: its L{run.Proc}, once it answers.
    """
    built = subprocess.run([nginx, "-V"], capture_output=True, text=True).stderr
    paths = ["client_body", "proxy"] + [
        m for m in ("fastcgi", "uwsgi", "scgi") if f"--without-http_{m}_module" not in built]
    temp = "\n".join(f"    {m}_temp_path {tmp}/nginx-{m};" for m in paths)
    conf = tmp / "nginx.conf"
    conf.write_text(NGINX_CONF.substitute(
        tmp=tmp, listen=f"{run.LOOPBACK}:{port}", temp_paths=temp))
    proc = run.Proc("nginx", [nginx, "-p", str(tmp), "-e", str(tmp / "nginx-error.log"),
                              "-c", str(conf)], tmp, extra_logs=[tmp / "nginx-error.log"])
    procs.append(proc)
    run.wait_ready(proc, port, "/", 10, "nginx")
    return proc


def startReceiver(args, tmp, port, procs):
    """
    Start C{bench/run.py}'s span receiver (not under callgrind) on
    C{127.0.0.1:port}, for C{--tracing}.

    @param procs: the caller's list of processes to stop, which it joins
        as soon as it is started (before waiting for it to answer).
    @return: its L{run.Proc}, once it answers.
    """
    proc = run.Proc("receiver", [sys.executable, "-c", run.SPAN_RECEIVER, str(port)], tmp)
    procs.append(proc)
    run.wait_ready(proc, port, "/", 10, "span receiver")
    return proc


def receivedSpans(port):
    """
    How many spans the receiver has counted.
    """
    status, body = run.http_get(port, "/")
    return int(body)


def startMeshproxy(args, tmp, port, adminPort, nginxPort, procs, receiverPort=None):
    """
    Start meshproxy under callgrind with the plain config of C{bench/run.py}
    (or C{--meshproxy-config}, or with C{--tracing} C{bench/run.py}'s
    tracing config, its spans to C{receiverPort}) and wait for its
    C{/ready}.

    @param procs: the caller's list of processes to stop, which it joins
        as soon as it is started (before waiting for it to answer).
    @return: its L{run.Proc} and the callgrind output file's path.
    """
    template = run.MESHPROXY_CONF
    if args.meshproxy_config:
        template = Path(args.meshproxy_config).read_text()
    elif args.tracing is not None:
        template = run.TRACING_CONF
    conf = tmp / "meshproxy.yaml"
    conf.write_text(string.Template(template).substitute(
        port=port, adminport=adminPort, loopback=run.LOOPBACK, nginxport=nginxPort,
        rate=args.tracing, receiverport=receiverPort, batchsize=256))
    return startUnderCallgrind(args, tmp, conf, adminPort, procs)


def meshproxyEnv():
    """
    The environment of a process running this checkout's meshproxy.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(run.REPO_ROOT), env.get("PYTHONPATH")) if p)
    return env


def startUnderCallgrind(args, tmp, conf, adminPort, procs, options=()):
    """
    Start C{twistd -n meshproxy --config conf} under callgrind (with
    C{options} for valgrind besides the tool and output file) and wait for
    its C{/ready}.

    @param procs: the caller's list of processes to stop, which it joins
        as soon as it is started (before waiting for it to answer).
    @return: its L{run.Proc} and the callgrind output file's path.
    """
    out = tmp / "callgrind.out"
    env = meshproxyEnv()
    # The same dictionary layouts in every run.
    env["PYTHONHASHSEED"] = "0"
    argv = [args.valgrind, "--tool=callgrind", f"--callgrind-out-file={out}", *options,
            args.python, "-c", run.TWISTD_BOOT, "-n", "--pidfile=",
            f"--logfile={tmp / 'meshproxy.log'}", "meshproxy", "--config", str(conf)]
    proc = run.Proc("meshproxy", argv, tmp, cwd=run.REPO_ROOT, env=env,
                    extra_logs=[tmp / "meshproxy.log"])
    # Registered before the wait (minutes under callgrind): stopped by the
    # caller's cleanup if the wait fails or the harness is stopped meanwhile.
    procs.append(proc)
    run.wait_ready(proc, adminPort, "/ready", args.ready_timeout, "meshproxy (admin /ready)",
                   host=f"{run.LOOPBACK}:{adminPort}")
    return proc, out


def readResponse(sock, buffered):
    """
    Read one response with a C{Content-Length} body from C{sock}.

    @param buffered: bytes already read past the previous response.
    @return: the bytes read past this response.
    @raise RuntimeError: if the connection closes or the status is not 200.
    """
    data = buffered
    while True:
        end = data.find(b"\r\n\r\n")
        if end >= 0:
            head = data[:end]
            found = re.search(rb"(?im)^content-length:\s*(\d+)", head)
            if found is None:
                raise RuntimeError(f"no Content-Length in {head!r}")
            total = end + 4 + int(found.group(1))
            if len(data) >= total:
                if not head.startswith(b"HTTP/1.1 200 "):
                    raise RuntimeError(f"unexpected response {head!r}")
                return data[total:]
        chunk = sock.recv(65536)
        if not chunk:
            raise RuntimeError("meshproxy closed a connection")
        data += chunk


def drive(socks, buffers, n, request=REQUEST):
    """
    Send C{n} requests (rounded up to whole rounds) over C{socks}: in each
    round one request on every connection, then every response.
    """
    for _ in range(-(-n // len(socks))):
        for sock in socks:
            sock.sendall(request)
        for i, sock in enumerate(socks):
            buffers[i] = readResponse(sock, buffers[i])


def dump(pid, out, index):
    """
    Have callgrind dump (and zero) its counters now; return the
    instructions of dump number C{index}.
    """
    done = subprocess.run(["callgrind_control", "-d", str(pid)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError("callgrind_control failed: " + done.stdout + done.stderr)
    path = Path(f"{out}.{index}")
    deadline = time.monotonic() + 60
    while True:
        text = path.read_text() if path.exists() else ""
        found = re.search(r"^totals: (\d+)", text, re.M)
        if found is not None:
            return int(found.group(1))
        if time.monotonic() > deadline:
            raise RuntimeError(f"no totals in {path}")
        time.sleep(0.2)


def measure(args, tmp):
    """
    Run the whole measurement once; return instructions per request.
    """
    nginxPort, port, adminPort, receiverPort = run.free_ports(4)
    procs = []
    try:
        startNginx(args.nginx, tmp, nginxPort, procs)
        if args.tracing is not None:
            startReceiver(args, tmp, receiverPort, procs)
        proxy, out = startMeshproxy(args, tmp, port, adminPort, nginxPort, procs, receiverPort)
        # Port numbers are counted and socket addresses stay the same length
        # in every run; the connections are all made before the warm-up.
        socks = [socket.create_connection((run.LOOPBACK, port)) for _ in range(args.connections)]
        for sock in socks:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buffers = [b""] * len(socks)
        n = args.requests - args.requests % len(socks)
        request = REQUEST
        if args.hotpath_request:
            # bench/hotpath.py's request (it imports meshproxy).
            sys.path.insert(0, str(run.REPO_ROOT))
            from hotpath import REQUEST as request
        drive(socks, buffers, args.warmup, request)
        dump(proxy.pid, out, 1)
        drive(socks, buffers, n, request)
        once = dump(proxy.pid, out, 2)
        drive(socks, buffers, 2 * n, request)
        twice = dump(proxy.pid, out, 3)
        for sock in socks:
            sock.close()
        perRequest = (twice - once) / n
        print(f"I(N)={once:,}  I(2N)={twice:,}  N={n}  connections={len(socks)}"
              f"  instructions/request={perRequest:,.0f}", flush=True)
        if args.tracing is not None:
            # Not a figure for a tracer that silently dropped its spans.
            print(f"spans received so far: {receivedSpans(receiverPort):,}"
                  f" (of at most {2 * (args.warmup + 3 * n):,})", flush=True)
        if args.annotate:
            done = subprocess.run(
                ["callgrind_annotate", "--threshold=100", f"{out}.3"],
                capture_output=True, text=True)
            # The functions on the stack when the dump was taken show the
            # whole count: not what they cost themselves.
            lines = [ln for ln in done.stdout.splitlines()
                     if re.match(r"^\s*[\d,]+ \(", ln) and "(100.0%)" not in ln]
            print("\n".join(lines[: args.annotate]))
        return perRequest
    finally:
        for proc in reversed(procs):
            proc.stop(grace=30)


def inTempDir(prefix, keep, measureIn):
    """
    Call C{measureIn} with a new temporary directory, removed after unless
    C{keep}.

    @return: what it returns, or L{None} if the harness failed (said on
        standard error, with the tails of the logs of the processes
        concerned).
    """
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        return measureIn(tmp)
    except run.HarnessError as e:
        print(e, file=sys.stderr)
        for proc in e.procs:
            print(proc.log_tails(), file=sys.stderr)
        return None
    finally:
        if keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000, metavar="N",
                        help="N: requests of the first measured phase (the second has 2N)")
    parser.add_argument("--warmup", type=int, default=500, help="requests before counting")
    parser.add_argument("--connections", type=int, default=50,
                        help="keep-alive connections (one request in flight on each)")
    parser.add_argument("--hotpath-request", action="store_true",
                        help="send bench/hotpath.py's request (GET /users/1 with Host,"
                             " User-Agent and Accept) instead of wrk's (GET / with Host)")
    parser.add_argument("--runs", type=int, default=1, help="whole measurements (median)")
    parser.add_argument("--annotate", type=int, default=0, metavar="K",
                        help="print the K functions taking the most instructions (self)")
    parser.add_argument("--python", default=sys.executable, help="interpreter of meshproxy")
    parser.add_argument("--valgrind", default="valgrind")
    parser.add_argument("--nginx", default=shutil.which("nginx") or "/usr/sbin/nginx")
    parser.add_argument("--meshproxy-config", metavar="FILE",
                        help="config template, as bench/run.py's --meshproxy-config")
    parser.add_argument("--tracing", metavar="RATE",
                        help="bench/run.py's tracing config at this sampleRate (0.01, 1.0),"
                             " its spans posted to bench/run.py's span receiver, started here")
    parser.add_argument("--ready-timeout", type=float, default=300.0,
                        help="seconds meshproxy may take to start under callgrind")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir")
    args = parser.parse_args(argv)
    if args.requests < args.connections or args.connections < 1:
        parser.error("need --requests >= --connections >= 1")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(130))
    results = []
    for _ in range(args.runs):
        result = inTempDir("liveir-", args.keep, lambda tmp: measure(args, tmp))
        if result is None:
            return 1
        results.append(result)
    results.sort()
    print(f"median instructions/request over {len(results)} run(s):"
          f" {results[len(results) // 2]:,.0f}  (all: {', '.join(f'{r:,.0f}' for r in results)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
