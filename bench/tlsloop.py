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

The C{tls-ops} variant is the TLS layer's record work alone, in a tight
loop: decrypting the request's record and encrypting the answer, as the
server's C{SSLObject} does in C{tls}, without the HTTP path between them
(L{OpsStack}): the same instructions as TLS adds to C{tls}, but warm in
the caches; C{tls} - C{plain} over C{tls-ops} is what running them between
two HTTP paths costs.

The C{sock-*} variants run the same router on a real loopback socket and
its own epoll reactor, driven one iteration per request, with
C{--connections} clients taking turns (L{SocketStack}): C{sock-plain},
C{sock-tls} (L{TLSProtocol}, as meshproxy runs), and C{sock-tlsfd} /
C{sock-tlsfd-ra}, the prototype of C{bench/tlssocket.py} (TLS done by
OpenSSL on the socket; with read-ahead). Their figures include the
clients' own work (the same in every TLS variant): compare them with each
other. See C{bench/README.md}, "TLS on the socket".

    PYTHONPATH=. python bench/tlsloop.py                   # CPU time, interleaved rounds
    PYTHONPATH=. python bench/tlsloop.py --instructions    # callgrind, a minute or two
    PYTHONPATH=. python bench/tlsloop.py --profile         # cProfile of the TLS variant
    PYTHONPATH=. python bench/tlsloop.py --only plain,tls,tls-ops --rounds 21
    PYTHONPATH=. python bench/tlsloop.py --only sock-plain,sock-tls,sock-tlsfd --connections 50
"""

from __future__ import annotations

import argparse
import os
import random
import socket
import ssl
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

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

VARIANTS = ("plain", "tls", "tls-ops", "sock-plain", "sock-tls", "sock-tlsfd", "sock-tlsfd-ra")

#: The environment variable handing --connections to the process under
#: callgrind.
_CONNECTIONS = "TLSLOOP_CONNECTIONS"

#: The ratios printed, of the first variant's figure to the second's.
PAIRS = (("tls", "plain"), ("sock-tls", "sock-plain"), ("sock-tlsfd", "sock-tls"),
         ("sock-tlsfd-ra", "sock-tls"))


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
    if os.path.exists(os.path.join(directory, "ca.pem")):
        # (another variant's, in the same run)
        return os.path.join(directory, "ca.pem"), CertificateFile(
            os.path.join(directory, "server.pem"), os.path.join(directory, "server.key"), ())
    ca = certs.initAuthority(directory, "tlsloop CA")
    server = certs.issue(directory, "server", dnsNames=("localhost",))
    return ca.cert, CertificateFile(server.cert, server.key, ())


def _decrypted(tls: ssl.SSLObject) -> bytes:
    """
    All the plaintext a client's TLS can read from what its incoming BIO
    holds.
    """
    chunks = []
    while True:
        try:
            chunk = tls.read(65536)
        except ssl.SSLWantReadError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def countRecords(data: bytes) -> int:
    """
    The TLS records in C{data}, whole records sent by one side (each a
    5-byte header whose last two bytes are the length of what follows).
    """
    records = offset = 0
    while offset < len(data):
        offset += 5 + int.from_bytes(data[offset + 3:offset + 5], "big")
        records += 1
    if offset != len(data):
        raise SystemExit("TLS records cut short")
    return records


def timedLoop(stack: Any, n: int) -> float:
    """
    The CPU microseconds per request of C{stack}'s loop over C{n} requests'
    records (made before the clock starts).
    """
    records = stack.records([REQUEST] * n)
    start = time.process_time()
    stack.loop(records)
    return (time.process_time() - start) * 1e6 / n


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
            records = countRecords(data)
            if records != n:
                raise SystemExit("%d answers in %d TLS records, not one each" % (n, records))
            self.fromServer.write(data)
            data = _decrypted(self.tls)
        if data.count(b"HTTP/1.1 200 OK\r\n") != n or data.count(b"hello\n") != n:
            raise SystemExit("unexpected answers: %r" % (data[:300],))

    def loop(self, records: list[bytes]) -> None:
        """
        Hand each record to the server, and answer it upstream.
        """
        upstreamTransport = self.upstreamTransport
        receive, answer = self.proto.dataReceived, self.upstream.dataReceived
        for record in records:
            upstreamTransport.clear()
            receive(record)
            answer(RESPONSE)

    def run(self, n: int) -> float:
        """
        Run C{n} requests; return the CPU microseconds per request.
        """
        perRequest = timedLoop(self, n)
        self.check(n)
        return perRequest


class OpsStack:
    """
    The TLS layer's own work per request and nothing else, in a tight loop:
    the server's C{SSLObject} decrypts a request record (written to its
    incoming BIO, read back as plaintext) and encrypts an answer (the bytes
    the C{tls} variant's server writes, read out of its outgoing BIO), as
    L{TLSProtocol} does, without the HTTP path between them. Its
    instructions are what TLS adds to each request; its time is what they
    take while their code and data stay in the caches, which the C{tls}
    variant's HTTP path between two records does not let them.
    """

    def __init__(self, directory: str) -> None:
        self.stack = stack = Stack("tls", directory)
        proto = stack.proto
        self._write = proto._incoming.write
        self._readOut = proto._outgoing.read
        self._read = proto._sslRead
        self._encrypt = proto._sslWrite
        # What the server writes for one answer, in plaintext: checked.
        stack.upstreamTransport.clear()
        stack.proto.dataReceived(stack.records([REQUEST])[0])
        stack.upstream.dataReceived(RESPONSE)
        assert stack.tls is not None
        stack.fromServer.write(stack.client.value())
        stack.client.clear()
        if _decrypted(stack.tls) != ANSWER:
            raise SystemExit("the tls variant's answer is not tlsloop.ANSWER any more")
        self.answer = ANSWER

    def records(self, requests: list[bytes]) -> list[bytes]:
        return self.stack.records(requests)

    def loop(self, records: list[bytes]) -> None:
        write, read, encrypt, readOut = self._write, self._read, self._encrypt, self._readOut
        answer = self.answer
        for record in records:
            write(record)
            read(len(record))
            encrypt(answer)
            readOut()

    def run(self, n: int) -> float:
        """
        Run C{n} requests; return the CPU microseconds per request.
        """
        return timedLoop(self, n)


#: The plaintext of the C{tls} variant's answer to L{REQUEST}: what the
#: server writes to its client through L{TLSProtocol} (checked at start).
ANSWER = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nVia: 1.1 meshproxy\r\n"
          b"Content-Length: 6\r\n\r\nhello\n")


class _Client:
    """
    One client connection of a L{SocketStack}: a blocking socket, and its
    TLS (an C{ssl.SSLObject} between memory BIOs), or none.
    """

    def __init__(self, port: int, context: ssl.SSLContext | None) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, True)
        self.tls: ssl.SSLObject | None = None
        self.toServer, self.fromServer = ssl.MemoryBIO(), ssl.MemoryBIO()
        if context is not None:
            self.tls = context.wrap_bio(self.fromServer, self.toServer,
                                        server_hostname="localhost")

    def handshake(self, iterate: Callable[[float], object]) -> None:
        tls = self.tls
        assert tls is not None
        for _ in range(20):
            try:
                tls.do_handshake()
            except ssl.SSLWantReadError:
                pass
            else:
                break
            finally:
                out = self.toServer.read()
                if out:
                    self.sock.sendall(out)
            iterate(0.1)
            self.fromServer.write(self.received())
        else:
            raise SystemExit("no handshake")
        # The server's tickets, sent after its handshake.
        iterate(0)
        self.fromServer.write(self.received())
        try:
            tls.read(0)
        except ssl.SSLWantReadError:
            pass

    def record(self, request: bytes) -> bytes:
        if self.tls is None:
            return request
        self.tls.write(request)
        return self.toServer.read()

    def received(self) -> bytes:
        """
        What the socket holds now.
        """
        self.sock.setblocking(False)
        chunks = []
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
        except BlockingIOError:
            pass
        self.sock.setblocking(True)
        return b"".join(chunks)

    def answers(self) -> bytes:
        """
        What the server sent (all of it is in the socket when asked: the
        server writes on loopback before this is called), decrypted.
        """
        data = self.received()
        if self.tls is None:
            return data
        self.fromServer.write(data)
        return _decrypted(self.tls)


class SocketStack:
    """
    One router listening on a real loopback socket of its own epoll reactor
    (driven here, one iteration per request), C{connections} client
    connections to it, taking turns (plain, or TLS: an C{ssl.SSLObject}
    between memory BIOs over a blocking socket), and a pooled upstream
    connection on a fake reactor.

    The clients' work is measured too (their C{send}, C{recv}, encryption
    and decryption): the same for every TLS variant, so that their
    difference is the server's.
    """

    def __init__(self, variant: str, directory: str, connections: int = 1) -> None:
        from tlssocket import TLSSocketServerFactory
        from twisted.internet.epollreactor import EPollReactor
        from twisted.internet.protocol import Factory

        from meshproxy.transport.tls import TLSServerFactory

        self.reactor = EPollReactor()
        clock = MemoryReactorClock()
        rc = parseConfig(CONFIG).routers[0]
        prefix = Path.read("/#/static")
        namers = {prefix: StaticNamer(prefix, {"hello": [Endpoint("127.0.0.1", 9001)]})}
        router = HttpRouter(rc, namers, reactor=clock, metrics=MeshMetrics(CollectorRegistry()),
                            balancerFactory=balancerFactory(rc.loadBalancer, clock))
        self.servers: list[ServerProtocol] = []

        def build() -> ServerProtocol:
            server = ServerProtocol(router, rc.server, clock)
            self.servers.append(server)
            return server

        factory: Factory = Factory.forProtocol(build)
        context = None
        if variant != "sock-plain":
            caFile, files = makeCertificates(directory)
            contexts = ServerTLS([files])
            if variant == "sock-tls":
                factory = TLSServerFactory(factory, contexts)
            else:
                factory = TLSSocketServerFactory(factory, contexts,
                                                 readAhead=variant == "sock-tlsfd-ra")
            context = ssl.create_default_context(cafile=caFile)
            context.set_alpn_protocols(["http/1.1"])
        port = self.reactor.listenTCP(0, factory, interface="127.0.0.1").getHost().port
        iterate = self.reactor.doIteration
        self.clients = []
        for i in range(connections):
            client = _Client(port, context)
            self.clients.append(client)
            while len(self.servers) <= i:
                iterate(0.1)
            if client.tls is not None:
                client.handshake(iterate)
        first = self.clients[0]
        first.sock.sendall(first.record(REQUEST))
        while not clock.tcpClients:
            iterate(0.1)
        upstreamFactory = clock.tcpClients[0][2]
        self.upstreamTransport = StringTransport()
        self.upstream = upstreamFactory.buildProtocol(None)
        self.upstream.makeConnection(self.upstreamTransport)
        self.upstream.dataReceived(RESPONSE)
        data = first.answers()
        if not data.endswith(b"hello\n"):
            raise SystemExit("unexpected answer: %r" % (data[:300],))

    def records(self, requests: list[bytes]) -> list[tuple[_Client, bytes]]:
        """
        What the clients send, taking turns, for each of C{requests}.
        """
        clients = self.clients
        out = []
        for i, request in enumerate(requests):
            client = clients[i % len(clients)]
            out.append((client, client.record(request)))
        return out

    def loop(self, records: list[tuple[_Client, bytes]]) -> None:
        """
        Send each record, let the server read it, answer it upstream, and
        read the answer.
        """
        iterate = self.reactor.doIteration
        upstreamTransport = self.upstreamTransport
        answer = self.upstream.dataReceived
        for client, record in records:
            upstreamTransport.clear()
            client.sock.send(record)
            iterate(0)
            answer(RESPONSE)
            data = client.sock.recv(65536)
            tls = client.tls
            if tls is not None:
                client.fromServer.write(data)
                data = tls.read(65536)
            if not data.endswith(b"hello\n"):
                raise SystemExit("unexpected answer: %r" % (data[:300],))

    def run(self, n: int) -> float:
        """
        Run C{n} requests; return the CPU microseconds per request.
        """
        return timedLoop(self, n)


def makeStack(
    variant: str, directory: str, connections: int = 1
) -> Stack | SocketStack | OpsStack:
    """
    The stack of a variant.

    @param connections: the client connections of a socket variant.
    """
    if variant.startswith("sock-"):
        return SocketStack(variant, directory, connections)
    if variant == "tls-ops":
        return OpsStack(directory)
    return Stack(variant, directory)


def phases(variants: list[str], n: int, directory: str, connections: int = 1) -> None:
    """
    Run C{n} requests of each variant, calling C{os.getppid} before each
    and after the last (callgrind dumps its counters there: see
    C{bench/hotpath.py}). The client's records are made before the call.
    """
    stacks = [makeStack(v, directory, connections) for v in variants]
    for stack in stacks:
        stack.run(50)
    for stack in stacks:
        records = stack.records([REQUEST] * n)
        os.getppid()
        stack.loop(records)
        os.getppid()
        if isinstance(stack, Stack):
            stack.check(n)


def countInstructions(variants: list[str], n: int, valgrind: str, connections: int = 1) -> int:
    """
    Print each variant's instructions per request, counted by callgrind in
    one process, and the ratios of the TLS variants to the plain ones.
    """
    # (the process under callgrind reads it as its --connections default)
    os.environ[_CONNECTIONS] = str(connections)
    # Dump 1 is the start-up; variant i's requests are dump 2 + 2i
    # (between the os.getppid before and after them).
    perRequest = callgrindPerRequest(__file__, variants, n, valgrind, lambda i: 2 + 2 * i)
    print("instructions/request (callgrind, %d requests each):" % (n,))
    for v in variants:
        print("  %-10s %9.0f" % (v, perRequest[v]))
    for tls, plain in PAIRS:
        if plain in perRequest and tls in perRequest:
            print("  %s/%s %.3f (%+.0f)" % (tls, plain, perRequest[tls] / perRequest[plain],
                                            perRequest[tls] - perRequest[plain]))
    _printOps(perRequest, "%.0f", "")
    return 0


def _printOps(figures: dict[str, float], number: str, unit: str) -> None:
    """
    Print what TLS adds to a request in context (C{tls} - C{plain}) beside
    its records' own work alone (C{tls-ops}), when all three were run.

    @param number: the format of a figure; C{unit} follows it.
    """
    if not {"plain", "tls", "tls-ops"} <= set(figures):
        return
    added = figures["tls"] - figures["plain"]
    ops = figures["tls-ops"]
    print(("  TLS adds %s%s in context; its records alone take %s%s (%%.2fx in context)"
           % (number, unit, number, unit)) % (added, ops, added / ops))


def profile(variant: str, n: int, directory: str, connections: int = 1) -> int:
    """
    Print a cProfile of C{n} requests of the C{tls} variant.
    """
    import cProfile
    import pstats

    stack = makeStack(variant, directory, connections)
    stack.run(50)
    records = stack.records([REQUEST] * n)
    profiler = cProfile.Profile()
    profiler.enable()
    stack.loop(records)
    profiler.disable()
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
    parser.add_argument("--profile", action="store_true",
                        help="cProfile the last variant of --only")
    parser.add_argument("--phases", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--connections", type=int, default=int(os.environ.get(_CONNECTIONS, "1")),
                        help="client connections of the sock-* variants, taking turns")
    parser.add_argument("--valgrind", default="valgrind")
    args = parser.parse_args(argv)
    variants = args.only.split(",")
    for v in variants:
        if v not in VARIANTS:
            parser.error("unknown variant %r (known: %s)" % (v, ", ".join(VARIANTS)))
    if args.instructions:
        return countInstructions(variants, args.requests, args.valgrind, args.connections)
    with tempfile.TemporaryDirectory() as directory:
        if args.phases:
            phases(variants, args.requests, directory, args.connections)
            return 0
        if args.profile:
            return profile(variants[-1], args.requests, directory, args.connections)
        stacks = {v: makeStack(v, directory, args.connections) for v in variants}
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
        print("  %-10s %7.2f  (%.2f-%.2f)" % (v, medians[v], min(samples[v]), max(samples[v])))
    for tls, plain in PAIRS:
        if plain in medians and tls in medians:
            print("  %s/%s %.3f (%+.2f us)" % (tls, plain, medians[tls] / medians[plain],
                                               medians[tls] - medians[plain]))
    _printOps(medians, "%.2f", " us")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
