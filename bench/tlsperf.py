#!/usr/bin/env python3
"""
Where the live CPU time of TLS keep-alive requests goes: C{meshproxy} and
C{meshproxy-tls} (C{bench/run.py}'s configs and servers, both on the proxy
CPU) loaded **at the same time** by two wrk processes on the load CPU, so
that whatever else the machine does hits both alike, and per request of
each:

  - its user and system CPU time (C{/proc/PID/stat});
  - with C{--syscalls}, its system calls (C{perf stat} on the
    C{raw_syscalls:sys_enter} and C{syscalls:sys_enter_*} tracepoints:
    C{recvfrom}, C{sendto}, C{epoll_wait}, ...), in a run of their own (the
    tracepoints cost time);
  - with C{--objects}, the CPU time in each shared object (C{perf record -e
    cpu-clock}, both processes at once): libpython, libcrypto, libssl, libc,
    httptools' parser, the kernel, ...

Both proxies share the proxy CPU, so each runs at about half of it and the
absolute figures are larger than in C{bench/run.py} (the two processes
evict each other's caches); the ratios are the point. No hardware counters
are needed (this VM has none: C{perf stat -e cycles} says "not supported").

    python bench/tlsperf.py                              # 5 rounds of 5 s
    python bench/tlsperf.py --syscalls --objects 12 --rounds 3
    python bench/tlsperf.py --pair haproxy,haproxy-tls    # HAProxy's own TLS cost

Standard library only (it imports C{bench/run.py}); needs wrk, nginx,
openssl's libraries and, for C{--syscalls} and C{--objects}, perf (as root).
"""

import argparse
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import run  # noqa: E402  (bench/run.py)

#: The system calls counted by --syscalls, besides all of them.
SYSCALLS = ("recvfrom", "sendto", "read", "write", "epoll_wait", "epoll_ctl", "getsockopt")


def cpuTicks(pid):
    """
    The user and system CPU time of C{pid} so far, in clock ticks.
    """
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]), int(fields[12])


def url(bench, target):
    """
    What wrk loads for C{target}.
    """
    spec = run.SPECS[target]
    return f"{spec.scheme}://{run.LOOPBACK}:{bench.ports[spec.server]}{spec.path}"


def wrk(bench, target, connections, duration):
    """
    Start one wrk (one thread) on the load CPU against C{target}.
    """
    argv = [bench.tools["wrk"], "-t1", f"-c{connections}", f"-d{duration}s",
            "-H", f"Host: {run.HOST_HEADER}", url(bench, target)]
    return subprocess.Popen(bench.pinned("load", argv), stdout=subprocess.PIPE, text=True)


def requestsOf(output):
    """
    The requests wrk reports, or fail on its errors.
    """
    found = re.search(r"(\d+) requests in", output)
    if found is None or "Non-2xx" in output or "Socket errors" in output:
        raise run.HarnessError("wrk failed or got errors:\n" + output)
    return int(found.group(1))


def perfObjects(data, pids, requests):
    """
    Microseconds of CPU per request in each shared object, per pid, from
    a C{perf record -F 1999 -e cpu-clock} file.
    """
    report = subprocess.run(
        ["perf", "report", "-i", data, "-n", "--sort", "pid,dso", "--stdio"],
        capture_output=True, text=True).stdout
    out = {pid: {} for pid in pids}
    for line in report.splitlines():
        found = re.match(r"\s*[\d.]+%\s+(\d+)\s+(\d+):\S*\s+(\S.*)$", line)
        if found is None or int(found.group(2)) not in out:
            continue
        pid = int(found.group(2))
        name = os.path.basename(found.group(3).strip())
        name = "kernel" if "kernel" in name else name.split(".cpython")[0].split(".so")[0]
        out[pid][name] = out[pid].get(name, 0.0) + int(found.group(1)) / 1999 * 1e6 / requests[pid]
    return out


def perfSyscalls(proc, requests):
    """
    System calls per request from a finished C{perf stat -x,}.
    """
    out = {}
    for line in proc.communicate()[1].splitlines():
        fields = line.split(",")
        if len(fields) > 2 and fields[0][:1].isdigit():
            name = fields[2].replace("syscalls:sys_enter_", "").replace("raw_syscalls:sys_enter",
                                                                         "all syscalls")
            out[name] = float(fields[0]) / requests
    return out


def round_(bench, pair, args, tmp, syscalls=False, objects=False):
    """
    One concurrent run of both targets; the figures per request of each.
    """
    pids = [bench.pids[run.SPECS[t].server] for t in pair]
    for t in pair:
        # Warm up both (new connections, the pool to nginx).
        wrk(bench, t, args.connections, 1).communicate()
    before = [cpuTicks(p) for p in pids]
    probes = []
    if syscalls:
        events = ["raw_syscalls:sys_enter"] + [f"syscalls:sys_enter_{s}" for s in SYSCALLS]
        probes = [subprocess.Popen(["perf", "stat", "-x", ",", "-e", ",".join(events),
                                    "-p", str(p)], stderr=subprocess.PIPE, text=True)
                  for p in pids]
    recorder = None
    data = str(tmp / "perf.data")
    if objects:
        recorder = subprocess.Popen(
            ["perf", "record", "-F", "1999", "-e", "cpu-clock", "-o", data,
             "-p", ",".join(map(str, pids))],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if probes or recorder:
        time.sleep(0.3)
    loads = [wrk(bench, t, args.connections, args.duration) for t in pair]
    outputs = [p.communicate()[0] for p in loads]
    after = [cpuTicks(p) for p in pids]
    for proc in [*probes, *([recorder] if recorder else [])]:
        proc.send_signal(signal.SIGINT)
    if recorder:
        recorder.wait()
    requests = [requestsOf(o) for o in outputs]
    tick = 1e6 / run.CLOCK_TICKS
    figures = []
    for i in range(2):
        user = (after[i][0] - before[i][0]) * tick / requests[i]
        system = (after[i][1] - before[i][1]) * tick / requests[i]
        figures.append({"rps": requests[i] / args.duration, "cpu": user + system,
                        "user": user, "sys": system})
    for i, probe in enumerate(probes):
        figures[i].update(perfSyscalls(probe, requests[i]))
    if recorder:
        perObject = perfObjects(data, pids, dict(zip(pids, requests, strict=True)))
        for i, pid in enumerate(pids):
            figures[i].update({"µs " + k: v for k, v in perObject[pid].items()})
    return figures


def report(pair, rounds, what):
    """
    Print the medians of each figure for both targets, and their ratio.
    """
    a, b = pair
    keys = []
    for r in rounds:
        for fig in r:
            keys += [k for k in fig if k not in keys]
    print(f"{what}: medians of {len(rounds)} round(s), per request")
    print(f"  {'':28s} {a:>16s} {b:>16s} {'ratio':>7s} {'delta':>8s}")
    for k in keys:
        va = statistics.median(r[0].get(k, 0.0) for r in rounds)
        vb = statistics.median(r[1].get(k, 0.0) for r in rounds)
        if max(va, vb) < 0.005:
            continue
        ratio = f"{vb / va:7.3f}" if va else " " * 7
        print(f"  {k[:28]:28s} {va:16.3f} {vb:16.3f} {ratio} {vb - va:+8.2f}")
    if "cpu" in keys:
        pairs = [round(r[1]["cpu"] / r[0]["cpu"], 3) for r in rounds]
        print(f"  CPU/request {b}/{a} per round: {pairs}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pair", default="meshproxy,meshproxy-tls",
                        help="the two targets loaded together (default meshproxy,meshproxy-tls)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=int, default=5, help="seconds per round")
    parser.add_argument("--connections", type=int, default=25,
                        help="wrk -c of each of the two loads (default 25: 50 in all)")
    parser.add_argument("--syscalls", action="store_true",
                        help="a further --rounds of rounds counting system calls (perf stat)")
    parser.add_argument("--objects", action="store_true",
                        help="CPU per shared object (perf record), in the timed rounds")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir")
    parser.add_argument("--trace-batch", type=int, default=256, metavar="SPANS",
                        help="bench/run.py's --trace-batch: the tracing targets' batch size")
    args = parser.parse_args(argv)
    pair = args.pair.split(",")
    if len(pair) != 2 or pair[0] == pair[1] or any(t not in run.SPECS for t in pair):
        parser.error("--pair: two different targets of bench/run.py")
    if (args.syscalls or args.objects) and shutil.which("perf") is None:
        parser.error("--syscalls and --objects need perf")

    def measure(bench, tmp):
        subprocess.run(["uptime"])
        timed = [round_(bench, pair, args, tmp, objects=args.objects)
                 for _ in range(args.rounds)]
        report(pair, timed, "CPU" + (" and perf record" if args.objects else ""))
        if args.syscalls:
            counted = [round_(bench, pair, args, tmp, syscalls=True)
                       for _ in range(max(1, args.rounds // 2))]
            report(pair, counted, "system calls (perf stat tracepoints; their CPU is inflated)")
        subprocess.run(["uptime"])

    return withServers(pair, "tlsperf-", measure, keep=args.keep,
                       runOptions=["--trace-batch", str(args.trace_batch)])


def withServers(targets, prefix, measure, keep=False, runOptions=()):
    """
    Start the servers of C{bench/run.py}'s C{targets} (pinned as it pins
    them), check that each answers, call C{measure(bench, tmp)}, and stop
    them.

    @param prefix: of the temp dir the servers run in.
    @param keep: keep that dir (and say where it is).
    @param runOptions: more of C{bench/run.py}'s options (C{--trace-batch}).
    @return: the exit status: 0, 1 on a harness error (said, with the
        servers' log tails), 2 when the machine lacks a tool, 130 on ^C.
    """
    runArgs = run.parse_args(["--only", ",".join(dict.fromkeys(targets)), *runOptions])
    if not run.decide_pinning(runArgs):
        return 2
    tools = run.find_tools(runArgs)
    if tools is None:
        return 2
    signal.signal(signal.SIGTERM, run._raise_interrupt)
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    bench = run.Bench(runArgs, tools, tmp)
    try:
        bench.start_servers()
        for t in dict.fromkeys(targets):
            bench.sanity_check(t)
        measure(bench, tmp)
    except run.HarnessError as e:
        print(e, file=sys.stderr)
        for proc in e.procs:
            print(proc.log_tails(), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        bench.stop()
        if keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0

if __name__ == "__main__":
    sys.exit(main())
