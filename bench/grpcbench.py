"""
gRPC unary calls per second through meshproxy against direct, with grpcio
on both sides (the test dependencies of tox.ini).

A grpcio server (asyncio, one generic method C{/bench.Echo/Unary} echoing
its request) and a grpcio client (asyncio, C{--concurrency} calls in
flight on one channel, that is one HTTP/2 connection, for C{--duration}
seconds) run on CPU 0; meshproxy runs alone on CPU 1 (when pinning), with
the server as a static service reached over h2c (C{upstreamProtocol: h2})
and the C{grpc} classifier. Each run measures direct (client to server)
then meshproxy, and reports the medians, the ratio of calls per second,
and meshproxy's CPU time per call.

    python bench/grpcbench.py --runs 3 --duration 5

Like C{bench/run.py}, it never fails on a figure: it prints them. (Not named
C{grpc.py}: run as a script, it would shadow the C{grpc} package.)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import string
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import run as harness  # noqa: E402  (bench/run.py: processes, /proc, ports)

METHOD = "/bench.Echo/Unary"
PAYLOAD = b"x" * 32

MESHPROXY_GRPC_CONF = """\
admin: {listen: "tcp:$adminport:interface=$loopback"}
namers:
  - {kind: static, prefix: /#/static, services: {greeter: ["$loopback:$grpcport"]}}
routers:
  - name: bench
    protocol: http
    listen: "tcp:$port:interface=$loopback:backlog=1024"
    identifier: {kind: host}
    rules: "/svc => /#/static;"
    classifier: {kind: grpc}
    client: {upstreamProtocol: h2}
"""


# -- the peers, run as child processes of this script ---------------------------------------


async def serve(port):
    """
    The grpcio server: C{METHOD} answers its request.
    """
    import grpc

    async def unary(request, context):
        return request

    handler = grpc.method_handlers_generic_handler(
        "bench.Echo", {"Unary": grpc.unary_unary_rpc_method_handler(unary)}
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port("127.0.0.1:%d" % (port,))
    await server.start()
    print("ready", flush=True)
    await server.wait_for_termination()


async def load(port, authority, duration, concurrency, warmup):
    """
    The grpcio client: C{concurrency} unary calls in flight on one
    channel; prints the calls completed and failed in C{duration} seconds
    (after C{warmup}) as JSON.
    """
    import grpc

    options = [("grpc.default_authority", authority)] if authority else []
    async with grpc.aio.insecure_channel("127.0.0.1:%d" % (port,), options=options) as channel:
        call = channel.unary_unary(METHOD)
        counts = {"calls": 0, "errors": 0}
        state = {"counting": False, "stop": False}

        async def worker():
            while not state["stop"]:
                try:
                    await call(PAYLOAD, timeout=10)
                    if state["counting"]:
                        counts["calls"] += 1
                except grpc.RpcError:
                    if state["counting"]:
                        counts["errors"] += 1

        tasks = [asyncio.ensure_future(worker()) for _ in range(concurrency)]
        await asyncio.sleep(warmup)
        print("start", flush=True)
        state["counting"] = True
        start = time.monotonic()
        await asyncio.sleep(duration)
        state["counting"] = False
        elapsed = time.monotonic() - start
        print("stop", flush=True)
        state["stop"] = True
        await asyncio.gather(*tasks, return_exceptions=True)
    counts["seconds"] = elapsed
    print(json.dumps(counts), flush=True)


# -- the harness ----------------------------------------------------------------------------


class GrpcBench:
    """
    The server, meshproxy, and the client runs.
    """

    def __init__(self, args, tmp):
        self.args = args
        self.tmp = tmp
        self.procs = []
        self.taskset = shutil.which("taskset") if args.pin else None

    def pinned(self, cpu, argv):
        return [self.taskset, "-c", cpu, *argv] if self.taskset else list(argv)

    def spawn(self, name, argv, **kwargs):
        proc = harness.Proc(name, argv, self.tmp, **kwargs)
        self.procs.append(proc)
        return proc

    def stop(self):
        for proc in reversed(self.procs):
            proc.stop()

    def start(self):
        args = self.args
        self.grpcPort, self.port, self.adminPort = harness.free_ports(3)
        server = self.spawn("grpc-server", self.pinned(harness.LOAD_CPU, [
            args.python, __file__, "--serve", str(self.grpcPort)]))
        deadline = time.monotonic() + args.ready_timeout
        while "ready" not in harness.tail(self.tmp / "grpc-server.stdout"):
            if not server.alive() or time.monotonic() > deadline:
                raise harness.HarnessError("the grpcio server did not start:\n"
                                           + server.log_tails())
            time.sleep(0.05)
        text = string.Template(MESHPROXY_GRPC_CONF).substitute(
            port=self.port, adminport=self.adminPort, loopback=harness.LOOPBACK,
            grpcport=self.grpcPort)
        conf = self.tmp / "meshproxy.yaml"
        conf.write_text(text)
        log = self.tmp / "meshproxy.log"
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(harness.REPO_ROOT), env.get("PYTHONPATH")) if p)
        argv = [args.python, "-c", harness.TWISTD_BOOT, "-n", "--pidfile=",
                f"--logfile={log}", "meshproxy", "--config", str(conf)]
        self.meshproxy = self.spawn("meshproxy", self.pinned(harness.PROXY_CPU, argv),
                                    cwd=harness.REPO_ROOT, env=env, extra_logs=[log])
        harness.wait_ready(self.meshproxy, self.adminPort, "/ready", args.ready_timeout,
                           "meshproxy (admin /ready)",
                           host=f"{harness.LOOPBACK}:{self.adminPort}")

    def drive(self, target):
        """
        One client run against C{target} (C{direct} or C{meshproxy}).

        @return: calls/s, errors, and meshproxy's CPU µs per call (or
            L{None} for direct).
        """
        args = self.args
        if target == "direct":
            port, authority = self.grpcPort, ""
        else:
            port, authority = self.port, "greeter"
        argv = self.pinned(harness.LOAD_CPU, [
            args.python, __file__, "--load", str(port), "--authority", authority,
            "--duration", str(args.duration), "--concurrency", str(args.concurrency),
            "--warmup", str(args.warmup)])
        # The client says when it starts and stops counting: meshproxy's CPU
        # time is read then.
        client = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True)
        cpu = {}
        lines = []
        for line in client.stdout:
            word = line.strip()
            if word in ("start", "stop"):
                cpu[word] = harness.cpu_seconds(self.meshproxy.pid)
            else:
                lines.append(word)
        err = client.stderr.read()
        if client.wait(timeout=60) != 0 or len(cpu) != 2 or not lines:
            raise harness.HarnessError(f"the grpcio client failed:\n{err}")
        counts = json.loads(lines[-1])
        rate = counts["calls"] / counts["seconds"]
        us = None
        if target != "direct" and counts["calls"]:
            us = (cpu["stop"] - cpu["start"]) * 1e6 / counts["calls"]
        return {"rps": rate, "errors": counts["errors"], "cpu_us": us}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--concurrency", type=int, default=32,
                        help="calls in flight on the client's one channel (default 32)")
    parser.add_argument("--pin", action=argparse.BooleanOptionalAction,
                        default=len(os.sched_getaffinity(0)) >= 2)
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--ready-timeout", type=float, default=15.0)
    parser.add_argument("--json", metavar="FILE")
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--load", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--authority", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        asyncio.run(serve(args.serve))
        return 0
    if args.load:
        asyncio.run(load(args.load, args.authority, args.duration, args.concurrency,
                         args.warmup))
        return 0
    results = {"direct": [], "meshproxy": []}
    with tempfile.TemporaryDirectory(prefix="meshproxy-grpc-bench-") as tmp:
        bench = GrpcBench(args, Path(tmp))
        try:
            bench.start()
            print(f"load average {os.getloadavg()[0]:.2f}, pinned: {bool(bench.taskset)}, "
                  f"{args.runs} runs of {args.duration:g}s, {args.concurrency} calls in flight")
            for i in range(args.runs):
                for target in results:
                    r = bench.drive(target)
                    results[target].append(r)
                    cpu = "" if r["cpu_us"] is None else f"  {r['cpu_us']:.1f} CPU us/call"
                    print(f"  [{i + 1}] {target:<10} {r['rps']:>9,.0f} calls/s  "
                          f"errors {r['errors']}{cpu}")
        except harness.HarnessError as e:
            print(f"error: {e}", file=sys.stderr)
            for proc in bench.procs:
                print(proc.log_tails(), file=sys.stderr)
            return 1
        finally:
            bench.stop()
    summary = {
        target: {
            "rps": harness.median([r["rps"] for r in runs]),
            "errors": sum(r["errors"] for r in runs),
        }
        for target, runs in results.items()
    }
    summary["meshproxy"]["cpu_us"] = harness.median(
        [r["cpu_us"] for r in results["meshproxy"] if r["cpu_us"] is not None])
    ratio = summary["meshproxy"]["rps"] / summary["direct"]["rps"]
    print()
    print(f"{'target':<12}{'median calls/s':>16}{'CPU us/call':>14}{'errors':>8}")
    for target, s in summary.items():
        cpu = s.get("cpu_us")
        print(f"{target:<12}{s['rps']:>16,.0f}{'–' if cpu is None else f'{cpu:.1f}':>14}"
              f"{s['errors']:>8}")
    print(f"\nmeshproxy/direct calls/s: {ratio:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"args": vars(args), "runs": results, "summary": summary, "ratio": ratio},
            indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
