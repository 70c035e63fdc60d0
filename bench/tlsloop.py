"""
What terminating TLS costs meshproxy's HTTP/1.1 path per keep-alive
request, in process: the same router and L{ServerProtocol} as
C{bench/hotpath.py}, driven plain and behind a
L{TLSProtocol<meshproxy.transport.tls.TLSProtocol>} (the listener's
L{ServerTLS<meshproxy.tls.ServerTLS>}, an ECDSA P-256 certificate made by
L{meshproxy.certs}, TLS 1.3 as wrk negotiates it).

The client's side (an C{ssl.SSLObject} between memory BIOs) runs outside
the measured loop: its request records are encrypted before it, the
responses decrypted and checked after it. What is measured is the
server's side: decrypting each request, the HTTP path, encrypting each
response; not the socket calls nor the reactor's loop (C{bench/run.py}
measures those, under wrk: its C{meshproxy-tls/meshproxy} ratio is the
figure to quote).

    PYTHONPATH=. python bench/tlsloop.py                   # CPU time, interleaved rounds
    PYTHONPATH=. python bench/tlsloop.py --instructions    # callgrind, a minute or two
    PYTHONPATH=. python bench/tlsloop.py --profile         # cProfile of the TLS variant
"""

from __future__ import annotations

import argparse
import os
import random
import ssl
import statistics
import sys
import tempfile
import time

# The same router, request and answer as bench/hotpath.py's (beside this
# file), and its callgrind driver.
from hotpath import CONFIG, REQUEST, RESPONSE, callgrindPerRequest  # noqa: E402
from prometheus_client import CollectorRegistry
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport

from meshproxy import certs
from meshproxy.config import parseConfig
from meshproxy.discovery.endpoints import Endpoint
from meshproxy.discovery.static import StaticNamer
from meshproxy.http.router import HttpRouter
from meshproxy.http.server import ServerProtocol
from meshproxy.routing.path import Path
from meshproxy.runtime import balancerFactory
from meshproxy.telemetry.metrics import MeshMetrics
from meshproxy.tls import CertificateFile, ServerTLS
from meshproxy.transport.tls import TLSProtocol

VARIANTS = ("plain", "tls")


class _TCPTransport(StringTransport):
    """
    A memory transport with the TCP options the server connection sets.
    """

    def setTcpNoDelay(self, enabled: bool) -> None:
        pass

    def getTcpNoDelay(self) -> bool:
        return True


def makeCertificates(directory: str) -> tuple[str, CertificateFile]:
    """
    Make a CA and a server certificate for C{localhost} in C{directory}.

    @return: the CA file, and the server's certificate and key.
    """
    ca = certs.initAuthority(directory, "tlsloop CA")
    server = certs.issue(directory, "server", dnsNames=("localhost",))
    return ca.cert, CertificateFile(server.cert, server.key, ())


class Stack:
    """
    One router with a client connection (plain or TLS) and a pooled
    upstream connection, ready to run requests.
    """

    def __init__(self, variant: str, directory: str) -> None:
        reactor = MemoryReactorClock()
        rc = parseConfig(CONFIG).routers[0]
        prefix = Path.read("/#/static")
        namers = {prefix: StaticNamer(prefix, {"hello": [Endpoint("127.0.0.1", 9001)]})}
        router = HttpRouter(rc, namers, reactor=reactor, metrics=MeshMetrics(CollectorRegistry()),
                            balancerFactory=balancerFactory(rc.loadBalancer, reactor))
        self.client = _TCPTransport(peerAddress=IPv4Address("TCP", "10.0.0.7", 5555))
        self.server = ServerProtocol(router, rc.server, reactor)
        self.tls: ssl.SSLObject | None = None
        if variant == "tls":
            caFile, files = makeCertificates(directory)
            incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
            serverTLS = ServerTLS([files])
            self.proto = TLSProtocol(self.server, serverTLS.serverObject(incoming, outgoing),
                                     incoming, outgoing)
            context = ssl.create_default_context(cafile=caFile)
            context.set_alpn_protocols(["http/1.1"])
            self.toServer, self.fromServer = ssl.MemoryBIO(), ssl.MemoryBIO()
            self.tls = context.wrap_bio(self.fromServer, self.toServer,
                                        server_hostname="localhost")
            self.proto.makeConnection(self.client)
            self._handshake()
        else:
            self.proto = self.server  # type: ignore[assignment]
            self.proto.makeConnection(self.client)
        self.proto.dataReceived(self.records([REQUEST])[0])
        factory = reactor.tcpClients[0][2]
        self.upstreamTransport = StringTransport()
        self.upstream = factory.buildProtocol(None)
        self.upstream.makeConnection(self.upstreamTransport)
        self.upstream.dataReceived(RESPONSE)
        self.check(1)

    def _handshake(self) -> None:
        assert self.tls is not None
        for _ in range(10):
            try:
                self.tls.do_handshake()
            except ssl.SSLWantReadError:
                pass
            else:
                break
            finally:
                self.proto.dataReceived(self.toServer.read())
                self.fromServer.write(self.client.value())
                self.client.clear()
        else:
            raise SystemExit("no handshake")

    def records(self, requests: list[bytes]) -> list[bytes]:
        """
        What the client sends for each of C{requests}.
        """
        if self.tls is None:
            return requests
        out = []
        for request in requests:
            self.tls.write(request)
            out.append(self.toServer.read())
        return out

    def check(self, n: int) -> None:
        """
        Fail unless the client received exactly C{n} 200 answers.
        """
        data = self.client.value()
        self.client.clear()
        if self.tls is not None:
            self.fromServer.write(data)
            chunks = []
            while True:
                try:
                    chunk = self.tls.read(65536)
                except ssl.SSLWantReadError:
                    break
                if not chunk:
                    break
                chunks.append(chunk)
            data = b"".join(chunks)
        if data.count(b"HTTP/1.1 200 OK\r\n") != n or data.count(b"hello\n") != n:
            raise SystemExit("unexpected answers: %r" % (data[:300],))

    def run(self, n: int) -> float:
        """
        Run C{n} requests; return the CPU microseconds per request.
        """
        records = self.records([REQUEST] * n)
        upstreamTransport = self.upstreamTransport
        receive, answer = self.proto.dataReceived, self.upstream.dataReceived
        start = time.process_time()
        for record in records:
            upstreamTransport.clear()
            receive(record)
            answer(RESPONSE)
        spent = time.process_time() - start
        self.check(n)
        return spent * 1e6 / n


def phases(variants: list[str], n: int, directory: str) -> None:
    """
    Run C{n} requests of each variant, calling C{os.getppid} before each
    and after the last (callgrind dumps its counters there: see
    C{bench/hotpath.py}). The client's records are made before the call.
    """
    stacks = [Stack(v, directory) for v in variants]
    for stack in stacks:
        stack.run(50)
    for stack in stacks:
        records = stack.records([REQUEST] * n)
        receive, answer = stack.proto.dataReceived, stack.upstream.dataReceived
        upstreamTransport = stack.upstreamTransport
        os.getppid()
        for record in records:
            upstreamTransport.clear()
            receive(record)
            answer(RESPONSE)
        os.getppid()
        stack.check(n)


def countInstructions(variants: list[str], n: int, valgrind: str) -> int:
    """
    Print each variant's instructions per request, counted by callgrind in
    one process, and the ratio of C{tls} to C{plain}.
    """
    # Dump 1 is the start-up; variant i's requests are dump 2 + 2i
    # (between the os.getppid before and after them).
    perRequest = callgrindPerRequest(__file__, variants, n, valgrind, lambda i: 2 + 2 * i)
    print("instructions/request (callgrind, %d requests each):" % (n,))
    for v in variants:
        print("  %-8s %9.0f" % (v, perRequest[v]))
    if "plain" in perRequest and "tls" in perRequest:
        print("  tls/plain %.3f (TLS adds %.0f)" % (
            perRequest["tls"] / perRequest["plain"], perRequest["tls"] - perRequest["plain"]))
    return 0


def profile(n: int, directory: str) -> int:
    """
    Print a cProfile of C{n} requests of the C{tls} variant.
    """
    import cProfile
    import pstats

    stack = Stack("tls", directory)
    stack.run(50)
    records = stack.records([REQUEST] * n)
    receive, answer = stack.proto.dataReceived, stack.upstream.dataReceived
    upstreamTransport = stack.upstreamTransport
    profiler = cProfile.Profile()
    profiler.enable()
    for record in records:
        upstreamTransport.clear()
        receive(record)
        answer(RESPONSE)
    profiler.disable()
    stack.check(n)
    pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default=",".join(VARIANTS),
                        help="comma-separated variants (default: plain,tls)")
    parser.add_argument("--requests", type=int, default=3000, help="requests per round")
    parser.add_argument("--rounds", type=int, default=9, help="interleaved rounds")
    parser.add_argument("--instructions", action="store_true",
                        help="count instructions under callgrind instead of timing")
    parser.add_argument("--profile", action="store_true", help="cProfile the tls variant")
    parser.add_argument("--phases", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--valgrind", default="valgrind")
    args = parser.parse_args(argv)
    variants = args.only.split(",")
    for v in variants:
        if v not in VARIANTS:
            parser.error("unknown variant %r (known: %s)" % (v, ", ".join(VARIANTS)))
    if args.instructions:
        return countInstructions(variants, args.requests, args.valgrind)
    with tempfile.TemporaryDirectory() as directory:
        if args.phases:
            phases(variants, args.requests, directory)
            return 0
        if args.profile:
            return profile(args.requests, directory)
        stacks = {v: Stack(v, directory) for v in variants}
        for stack in stacks.values():
            stack.run(500)
        samples: dict[str, list[float]] = {v: [] for v in variants}
        order = list(variants)
        for _ in range(args.rounds):
            random.shuffle(order)
            for v in order:
                samples[v].append(stacks[v].run(args.requests))
    medians = {v: statistics.median(s) for v, s in samples.items()}
    print("%d rounds x %d requests, CPU us/request (median, min-max):"
          % (args.rounds, args.requests))
    for v in variants:
        print("  %-8s %7.2f  (%.2f-%.2f)" % (v, medians[v], min(samples[v]), max(samples[v])))
    if "plain" in medians and "tls" in medians:
        print("  tls/plain %.3f" % (medians["tls"] / medians["plain"],))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
