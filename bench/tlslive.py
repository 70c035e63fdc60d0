#!/usr/bin/env python3
"""
What terminating TLS adds per keep-alive request to the whole meshproxy
process, counted under callgrind: C{bench/liveir.py}'s measurement (the
same client, phases and dumps: instructions per request are
C{(I(2N) - I(N)) / N}), run once with C{bench/run.py}'s plain config and
once with its C{meshproxy-tls} config (the same certificate, ECDSA P-256),
the client's connections then TLS 1.3 with the standard library's defaults,
as wrk's are (C{TLS_AES_256_GCM_SHA384}).

With C{--cache-sim} callgrind also simulates the caches (32 KiB L1
instruction and data caches and a 1 MiB second level, this machine's per
core): instructions count the same for a warm and a cold record, cache
misses do not. With C{--objects K} it prints, per shared object (libpython,
libcrypto, libssl, libc, ...), what each variant spends per request, the K
objects that differ most first.

    python bench/tlslive.py                        # plain and tls, N=2000, 50 connections
    python bench/tlslive.py --cache-sim --objects 12
    python bench/tlslive.py --only tls --runs 3

Callgrind sees user space only (not the kernel, not AVX-512: valgrind runs
OpenSSL's AVX2 code); C{bench/tlsperf.py} measures the live processes.
Standard library only; imports C{bench/run.py} and C{bench/liveir.py}.
"""

import argparse
import collections
import os
import shutil
import signal
import socket
import ssl
import string
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import liveir  # noqa: E402  (bench/liveir.py)
import run  # noqa: E402  (bench/run.py)

VARIANTS = ("plain", "tls")

#: The caches simulated by --cache-sim: size, associativity, line size.
CACHES = ["--I1=32768,8,64", "--D1=32768,8,64", "--LL=1048576,8,64"]


def makeCerts(args, tmp):
    """
    Make bench/run.py's CA and server certificate in C{tmp/certs} (with the
    interpreter that runs meshproxy).

    @return: the directory.
    """
    directory = tmp / "certs"
    env = liveir.meshproxyEnv()
    done = subprocess.run([args.python, "-c", run.MAKE_CERTS, str(directory)],
                          capture_output=True, text=True, env=env, cwd=run.REPO_ROOT)
    if done.returncode != 0:
        raise run.HarnessError("meshproxy.certs failed:\n" + done.stdout + done.stderr)
    return directory


def startMeshproxy(args, tmp, variant, port, adminPort, nginxPort, procs):
    """
    Start meshproxy under callgrind with the variant's config.

    @param procs: the caller's list of processes to stop, which it joins
        as soon as it is started (before waiting for it to answer).
    @return: its L{run.Proc} and the callgrind output file's path.
    """
    template = run.MESHPROXY_CONF
    if variant == "tls":
        certs = makeCerts(args, tmp)
        template = string.Template(run.MESHPROXY_TLS_CONF).safe_substitute(certs=certs)
    conf = tmp / "meshproxy.yaml"
    conf.write_text(string.Template(template).substitute(
        port=port, adminport=adminPort, loopback=run.LOOPBACK, nginxport=nginxPort))
    options = ["--compress-strings=no"]
    if args.cache_sim:
        options += ["--cache-sim=yes", *CACHES]
    return liveir.startUnderCallgrind(args, tmp, conf, adminPort, procs, options)


def connect(variant, port, connections, ca):
    """
    The client's keep-alive connections, over TLS for C{tls} (the server's
    certificate verified against C{ca}).
    """
    context = None
    if variant == "tls":
        context = ssl.create_default_context(cafile=str(ca))
    socks = []
    for _ in range(connections):
        sock = socket.create_connection((run.LOOPBACK, port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if context is not None:
            sock = context.wrap_socket(sock, server_hostname=run.LOOPBACK)
        socks.append(sock)
    return socks


def readCosts(path, functions=False):
    """
    The self cost of each shared object (or each function, named
    C{object:function}) in a callgrind dump written with compressed strings
    off: the event names, and a dictionary of name to a dictionary of event
    to count.
    """
    costs = collections.defaultdict(collections.Counter)
    events = []
    obj = fn = "???"
    call = False
    with open(path) as f:
        for line in f:
            if line.startswith("events:"):
                events = line.split()[1:]
            elif line.startswith("ob="):
                obj = os.path.basename(line[3:].strip())
            elif line.startswith("fn="):
                fn = line[3:].strip()
            elif line.startswith("calls="):
                # The next cost line is what the call cost, inclusive.
                call = True
            elif line[:1].isdigit() or line[:1] in "+-*":
                if call:
                    call = False
                    continue
                # (callgrind leaves out the trailing zeros of a line)
                counts = line.split()[1:]
                key = f"{obj}:{fn}" if functions else obj
                costs[key].update(dict(zip(events, map(int, counts), strict=False)))
    return events, costs


def measure(args, tmp, variant):
    """
    Count one variant once; return the totals per request (by event), and
    per object when asked.
    """
    nginxPort, port, adminPort = run.free_ports(3)
    procs = []
    try:
        liveir.startNginx(args.nginx, tmp, nginxPort, procs)
        proxy, out = startMeshproxy(args, tmp, variant, port, adminPort, nginxPort, procs)
        socks = connect(variant, port, args.connections, tmp / "certs" / "ca.pem")
        buffers = [b""] * len(socks)
        n = args.requests - args.requests % len(socks)
        liveir.drive(socks, buffers, args.warmup)
        liveir.dump(proxy.pid, out, 1)
        liveir.drive(socks, buffers, n)
        liveir.dump(proxy.pid, out, 2)
        liveir.drive(socks, buffers, 2 * n)
        liveir.dump(proxy.pid, out, 3)
        for sock in socks:
            sock.close()
        events, once = readCosts(f"{out}.2", args.functions)
        _, twice = readCosts(f"{out}.3", args.functions)
        perObject = {}
        for obj in set(once) | set(twice):
            perObject[obj] = {e: (twice[obj][e] - once[obj][e]) / n for e in events}
        totals = {e: sum(o[e] for o in perObject.values()) for e in events}
        print(f"{variant}: N={n} connections={len(socks)} "
              + "  ".join(f"{e}={v:,.0f}" for e, v in totals.items()), flush=True)
        return totals, perObject
    finally:
        for proc in reversed(procs):
            proc.stop(grace=30)


def median(values):
    values = sorted(values)
    return values[len(values) // 2]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default=",".join(VARIANTS), help="plain, tls, or both")
    parser.add_argument("--requests", type=int, default=2000, metavar="N",
                        help="N: requests of the first measured phase (the second has 2N)")
    parser.add_argument("--warmup", type=int, default=500, help="requests before counting")
    parser.add_argument("--connections", type=int, default=50,
                        help="keep-alive connections (one request in flight on each)")
    parser.add_argument("--runs", type=int, default=1, help="whole measurements (median)")
    parser.add_argument("--cache-sim", action="store_true",
                        help="simulate the caches too (32 KiB L1 I and D, 1 MiB L2)")
    parser.add_argument("--objects", type=int, default=0, metavar="K",
                        help="print the K shared objects whose cost differs most")
    parser.add_argument("--functions", action="store_true",
                        help="with --objects: functions (object:function) instead of objects")
    parser.add_argument("--python", default=sys.executable, help="interpreter of meshproxy")
    parser.add_argument("--valgrind", default="valgrind")
    parser.add_argument("--nginx", default=shutil.which("nginx") or "/usr/sbin/nginx")
    parser.add_argument("--ready-timeout", type=float, default=300.0,
                        help="seconds meshproxy may take to start under callgrind")
    args = parser.parse_args(argv)
    variants = args.only.split(",")
    if any(v not in VARIANTS for v in variants):
        parser.error(f"--only: known variants are {', '.join(VARIANTS)}")
    if args.requests < args.connections or args.connections < 1:
        parser.error("need --requests >= --connections >= 1")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(130))
    totals = {v: [] for v in variants}
    objects = {}
    for _ in range(args.runs):
        for variant in variants:
            result = liveir.inTempDir(
                "tlslive-", False, lambda tmp, variant=variant: measure(args, tmp, variant))
            if result is None:
                return 1
            total, perObject = result
            totals[variant].append(total)
            objects[variant] = perObject
    events = list(totals[variants[0]][0])
    print(f"per request, medians of {args.runs} run(s):")
    med = {v: {e: median([t[e] for t in totals[v]]) for e in events} for v in variants}
    for v in variants:
        print(f"  {v:6s} " + "  ".join(f"{e} {med[v][e]:>9,.0f}" for e in events))
    if len(variants) == 2:
        a, b = variants
        print(f"  {b}/{a} " + "  ".join(
            f"{e} {med[b][e] / med[a][e]:.3f} ({med[b][e] - med[a][e]:+,.0f})"
            for e in events if med[a][e]))
    if args.objects and len(variants) == 2:
        a, b = (objects[v] for v in variants)
        names = set(a) | set(b)
        zero = dict.fromkeys(events, 0.0)
        first = events[0]
        ranked = sorted(names, key=lambda o: -abs(b.get(o, zero)[first] - a.get(o, zero)[first]))
        print(f"per object, the last run ({variants[0]} -> {variants[1]}):")
        for o in ranked[:args.objects]:
            pa, pb = a.get(o, zero), b.get(o, zero)
            print(f"  {o[-60:]:60s} " + "  ".join(
                f"{e} {pa[e]:>8,.0f} -> {pb[e]:>8,.0f}" for e in events
                if e in ("Ir", "I1mr", "D1mr", "D1mw", "DLmr")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
