"""
The cost of one short connection through a TCP router, on loopback.

Two processes: this one runs a meshproxy TCP router (built from a config as
C{twistd meshproxy} builds it: the listener's preamble, rules, a static
namer); a child process runs a backend answering one HTTP response per
connection and closing, and C{--concurrency} clients, each connecting,
sending a request, reading until the close and starting over, until
C{--warmup} + C{--connections} connections are done: accept, route,
connect, splice and close, C{N} times.

It prints the router process's CPU time per measured connection, and how
much of it was the kernel's (and the load process's, for comparison with
C{--direct}, where the clients talk to the backend without the router). The
router runs on the reactor C{twistd meshproxy} installs
(L{MeshReactor<meshproxy.reactor.MeshReactor>}); C{--twisted-reactor} runs
it on Twisted's epoll reactor instead. For figures that do not depend on
what else runs on the machine, count the router's instructions with
callgrind (the child is not traced) and take the difference of two sizes,
which removes the start-up (C{--concurrency 1} makes the figure steadier:
with more clients, how many connections each accept and each event serve
depends on timing)::

    valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.out \\
        python bench/l4loop.py --connections 2000
    valgrind --tool=callgrind ... python bench/l4loop.py --connections 4000
    # instructions per connection: (I(4000) - I(2000)) / 2000

C{--profile FILE} writes a cProfile of the router during the measured
connections.

Usage::

    PYTHONPATH=. python bench/l4loop.py [--connections N] [--concurrency C]
        [--direct] [--sni] [--profile FILE] [--gc-freeze] [--gc-threshold N]
        [--twisted-reactor]
"""

from __future__ import annotations

import argparse
import gc
import os
import socket
import subprocess
import sys
import time

RESPONSE = (
    b"HTTP/1.1 200 OK\r\nServer: l4loop\r\nContent-Type: text/plain\r\n"
    b"Content-Length: 6\r\nConnection: close\r\n\r\nhello\n"
)
REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"

CONFIG = """\
admin: {listen: "tcp:%(admin)d:interface=127.0.0.1"}
namers:
  - {kind: static, prefix: /#/static, services: {hello: ["127.0.0.1:%(backend)d"]}}
routers:
  - name: bench
    protocol: tcp
    listen: "tcp:%(port)d:interface=127.0.0.1:backlog=1024"
%(routing)s
"""

FIXED = """\
    destination: /svc/hello
    rules: "/svc => /#/static;"
"""

SNI = """\
    identifier: {kind: sni, prefix: /svc}
    rules: "/svc => /#/static;"
"""


def clientHello(serverName: str) -> bytes:
    """
    The first flight of a TLS client asking for C{serverName}: what the
    clients send with C{--sni} (the backend answers it with its HTTP
    response all the same).
    """
    import ssl

    context = ssl.create_default_context()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname=serverName)
    try:
        tls.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


def freePort() -> int:
    """
    A port free on 127.0.0.1 now.
    """
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def waitListening(port: int, seconds: float = 600.0) -> None:
    """
    Block until something accepts connections on C{port}.
    """
    deadline = time.monotonic() + seconds
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def load(args: argparse.Namespace, backendPort: int, target: int, report: int) -> None:
    """
    The child: the backend and the clients. Writes C{"start cpu\\n"} and
    C{"end cpu failed\\n"} lines to the file descriptor C{report}.
    """
    from twisted.internet import epollreactor

    epollreactor.install()
    from twisted.internet import reactor
    from twisted.internet.protocol import ClientFactory, Factory, Protocol

    request = clientHello("hello") if args.sni else REQUEST

    class Backend(Protocol):
        buffer = b""

        def dataReceived(self, data: bytes) -> None:
            self.buffer += data
            if len(self.buffer) >= len(request):
                self.transport.write(RESPONSE)
                self.transport.loseConnection()

    backendFactory = Factory.forProtocol(Backend)
    backendFactory.noisy = False
    reactor.listenTCP(backendPort, backendFactory, backlog=1024, interface="127.0.0.1")
    if target != backendPort:
        waitListening(target)
    state = {"started": 0, "done": 0, "failed": 0, "bytes": 0}
    total = args.warmup + args.connections
    marks: dict[str, float] = {}

    class Client(Protocol):
        def connectionMade(self) -> None:
            self.transport.write(request)

        def dataReceived(self, data: bytes) -> None:
            state["bytes"] += len(data)

        def connectionLost(self, reason: object = None) -> None:
            state["done"] += 1
            next_()

    class Clients(ClientFactory):
        noisy = False
        protocol = Client

        def clientConnectionFailed(self, connector: object, reason: object) -> None:
            state["failed"] += 1
            state["done"] += 1
            next_()

    clients = Clients()

    def next_() -> None:
        done = state["done"]
        if done == args.warmup and "start" not in marks:
            marks["start"] = time.perf_counter()
            marks["cpu"] = time.process_time()
            os.write(report, b"start\n")
        if done >= total:
            if "end" not in marks:
                marks["end"] = time.perf_counter()
                marks["cpuEnd"] = time.process_time()
                ok = state["bytes"] == len(RESPONSE) * (total - state["failed"])
                os.write(report, b"end %r %r %d %d\n" % (
                    marks["end"] - marks["start"], marks["cpuEnd"] - marks["cpu"],
                    state["failed"], ok))
                reactor.stop()
            return
        if state["started"] < total:
            state["started"] += 1
            reactor.connectTCP("127.0.0.1", target, clients)

    def go() -> None:
        for _ in range(min(args.concurrency, total)):
            state["started"] += 1
            reactor.connectTCP("127.0.0.1", target, clients)

    reactor.callWhenRunning(go)
    reactor.run()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=3000)
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--direct", action="store_true", help="no router")
    parser.add_argument("--sni", action="store_true",
                        help="route by SNI (identifier kind sni): the clients send a TLS"
                             " ClientHello for the name hello, which the backend answers")
    parser.add_argument("--profile", metavar="FILE")
    parser.add_argument("--twisted-reactor", action="store_true",
                        help="run the router on Twisted's epoll reactor rather than"
                             " meshproxy's (what twistd meshproxy installs)")
    parser.add_argument("--gc-freeze", action="store_true")
    parser.add_argument("--gc-threshold", type=int, default=0)
    parser.add_argument("--load", nargs=3, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    backendPort = freePort()
    target = backendPort if args.direct else freePort()
    if args.load is not None:
        # The child: the backend and the clients.
        backendPort, target, report = args.load
        load(args, backendPort, target, report)
        return 0
    readEnd, writeEnd = os.pipe()
    # A new interpreter rather than a fork: valgrind does not follow it.
    argv = [sys.executable, os.path.abspath(__file__),
            "--load", str(backendPort), str(target), str(writeEnd),
            "--connections", str(args.connections), "--warmup", str(args.warmup),
            "--concurrency", str(args.concurrency)] + (["--sni"] if args.sni else [])
    child = subprocess.Popen(argv, pass_fds=(writeEnd,))
    os.close(writeEnd)
    if args.direct:
        lines = os.fdopen(readEnd).read().split("\n")
        child.wait()
        return _print(args, lines, None)

    if args.twisted_reactor:
        from twisted.internet import epollreactor

        epollreactor.install()
    else:
        # The reactor C{twistd meshproxy} runs on (meshproxy.tap's).
        from meshproxy.twistedtls import installReactor

        installReactor()
    from twisted.application.service import MultiService
    from twisted.internet import reactor
    from twisted.internet.abstract import FileDescriptor

    from meshproxy.config import parseConfig
    from meshproxy.runtime import buildServices

    text = CONFIG % {
        "admin": freePort(),
        "backend": backendPort,
        "port": target,
        "routing": SNI if args.sni else FIXED,
    }
    runtime, services = buildServices(parseConfig(text), reactor=reactor)
    top = MultiService()
    for service in services:
        service.setServiceParent(top)
    top.privilegedStartService()
    top.startService()
    if args.gc_threshold:
        gc.set_threshold(args.gc_threshold)
    if args.gc_freeze:
        gc.collect()
        gc.freeze()

    profiler = None
    if args.profile:
        import cProfile

        profiler = cProfile.Profile()
    lines: list[str] = []
    cpu: list[float] = []
    # The kernel's share (system time) of the router's CPU time.
    system: list[float] = []

    class Reports(FileDescriptor):
        buffer = b""

        def fileno(self) -> int:
            return readEnd

        def doRead(self) -> None:
            data = os.read(readEnd, 4096)
            if not data:
                self.stopReading()
                reactor.stop()
                return
            self.buffer += data
            while b"\n" in self.buffer:
                line, self.buffer = self.buffer.split(b"\n", 1)
                lines.append(line.decode())
                cpu.append(time.process_time())
                system.append(os.times().system)
                if line == b"start" and profiler is not None:
                    profiler.enable()
                elif line.startswith(b"end"):
                    if profiler is not None:
                        profiler.disable()
                    self.stopReading()
                    reactor.stop()
                    return

        def connectionLost(self, reason: object) -> None:
            pass

    Reports(reactor).startReading()
    reactor.run()
    child.wait()
    if profiler is not None:
        profiler.dump_stats(args.profile)
    if len(cpu) < 2:
        return _print(args, lines, None)
    return _print(args, lines, cpu[1] - cpu[0], system[1] - system[0])


def _print(
    args: argparse.Namespace,
    lines: list[str],
    routerCPU: float | None,
    routerSystem: float = 0.0,
) -> int:
    end = [line for line in lines if line.startswith("end")]
    if not end:
        print("the load process did not finish: %r" % (lines,))
        return 1
    _, wall, loadCPU, failed, ok = end[0].split()
    n = args.connections
    wall = float(wall)
    print("%s%s: %d connections (c=%d) in %.2f s: %.0f/s; CPU per connection: %s"
          "load %.1f µs%s%s" % (
              "direct" if args.direct else "router",
              " sni" if args.sni else "",
              n, args.concurrency, wall, n / wall,
              "" if routerCPU is None else "router %.1f µs (%.1f in the kernel), " % (
                  routerCPU / n * 1e6, routerSystem / n * 1e6),
              float(loadCPU) / n * 1e6,
              "" if ok == "1" else " (BYTES MISSING)",
              " (%s FAILED)" % (failed,) if failed != "0" else "",
          ))
    sys.stdout.flush()
    return 0 if ok == "1" and failed == "0" else 1


if __name__ == "__main__":
    # os._exit: the admin API's thread pool would keep the process alive.
    status = main()
    sys.stdout.flush()
    os._exit(status)
