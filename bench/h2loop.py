"""
The CPU cost of one HTTP/2 request through meshproxy, in process, on the
memory network of the tests (no sockets, no scheduler noise): a
repeatable figure to iterate with while the machine is shared.

A client written by hand (the frames h2load sends: HEADERS of a GET,
indexed after the first, with the windows opened wide) drives meshproxy's
own services (C{buildServices}, the config of C{bench/run.py}) with C{-m}
concurrent streams on each of C{-c} connections, to an upstream also
written by hand: HTTP/1.1 (answering C{hello}) or, with C{--h2up}, h2c
(one HEADERS and one DATA frame per stream). Neither peer decodes or
encodes anything per request, so nearly all the CPU is meshproxy's.

    python bench/h2loop.py -n 20000 -m 100          # CPU us per request
    python bench/h2loop.py -n 20000 -m 1 --h2up
    python bench/h2loop.py -n 5000 --profile 30     # cProfile, top 30
    valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.out \\
        python bench/h2loop.py -n 2000 -m 100 --warmup 200

Under callgrind, the instructions of the measured requests alone are
C{Ir(-n N) - Ir(-n 0)} (or use the C{--ir} option, which runs both and
prints the difference per request).
"""

from __future__ import annotations

import argparse
import os
import struct
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from hpack import Encoder  # noqa: E402
from twisted.internet.protocol import Factory, Protocol  # noqa: E402

from tests.memory_support import MemoryNetwork  # noqa: E402

CONFIG = """\
admin: {listen: "tcp:0:interface=127.0.0.1"}
namers:
  - {kind: static, prefix: /#/static, services: {hello: ["127.0.0.1:%(up)d"]}}
routers:
  - name: bench
    protocol: http
    listen: "tcp:0:interface=127.0.0.1"
    identifier: {kind: host}
    rules: "/svc => /#/static;"
    client: {%(client)s}
"""

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_HEAD = struct.Struct(">HBBBL")

DATA, HEADERS, RST, SETTINGS, PING, GOAWAY = 0, 1, 3, 4, 6, 7
END_STREAM, ACK, END_HEADERS = 0x1, 0x1, 0x4


def frame(kind, flags, sid, payload=b""):
    """
    One frame's bytes.
    """
    n = len(payload)
    return _HEAD.pack(n >> 8, n & 0xFF, kind, flags, sid) + payload


class FrameReader:
    """
    Splits bytes into frames: C{(kind, flags, sid, payload)}.
    """

    def __init__(self):
        self.buffer = b""

    def feed(self, data):
        buf = self.buffer + data
        frames = []
        at = 0
        end = len(buf)
        while end - at >= 9:
            hi, lo, kind, flags, sid = _HEAD.unpack_from(buf, at)
            n = (hi << 8) | lo
            if end - at - 9 < n:
                break
            frames.append((kind, flags, sid & 0x7FFFFFFF, buf[at + 9 : at + 9 + n]))
            at += 9 + n
        self.buffer = buf[at:]
        return frames


class Network(MemoryNetwork):
    """
    The memory network with cheaper timers: the tests' clock sorts its
    calls on every C{callLater}, which would weigh on the figures here
    (meshproxy's timers never fire in a loop where no time passes).
    """

    def _sortCalls(self):
        pass

    def _nextCall(self):
        calls = self.calls
        if not calls:
            return None
        due = min([call.getTime() for call in calls])
        if due <= self.seconds():
            calls.sort(key=lambda call: call.getTime())
        return due


class Client(Protocol):
    """
    h2load's part: C{streams} requests in flight until C{total} are done.
    """

    def __init__(self, loop, streams):
        self.loop = loop
        self.streams = streams
        self.reader = FrameReader()
        self.nextId = 1
        self.done = 0
        self.inFlight = 0
        encoder = Encoder()
        fields = [
            (b":method", b"GET"),
            (b":path", b"/"),
            (b":scheme", b"http"),
            (b":authority", b"hello"),
            (b"user-agent", b"h2load nghttp2/1.52.0"),
        ]
        self.firstBlock = encoder.encode(fields)
        self.block = encoder.encode(fields)

    def connectionMade(self):
        settings = struct.pack(">HL", 2, 0) + struct.pack(">HL", 3, 100)
        settings += struct.pack(">HL", 4, 2**30 - 1)
        self.transport.write(
            PREFACE
            + frame(SETTINGS, 0, 0, settings)
            + frame(8, 0, 0, struct.pack(">L", 2**30 - 1 - 65535))
        )
        self.send(self.streams)

    def send(self, n):
        n = min(n, self.loop.left)
        if n <= 0:
            return
        self.loop.left -= n
        self.inFlight += n
        out = []
        for _ in range(n):
            sid = self.nextId
            self.nextId += 2
            block = self.firstBlock if sid == 1 else self.block
            out.append(frame(HEADERS, END_STREAM | END_HEADERS, sid, block))
        self.transport.write(b"".join(out))

    def dataReceived(self, data):
        ended = 0
        out = []
        for kind, flags, _sid, payload in self.reader.feed(data):
            if kind == SETTINGS and not flags & ACK:
                out.append(frame(SETTINGS, ACK, 0))
            elif kind in (HEADERS, DATA) and flags & END_STREAM:
                ended += 1
            elif kind in (RST, GOAWAY):
                raise RuntimeError("client got frame %d: %r" % (kind, payload))
        if out:
            self.transport.write(b"".join(out))
        if ended:
            self.done += ended
            self.inFlight -= ended
            self.loop.done += ended
            self.send(ended)


class H1Upstream(Protocol):
    """
    nginx's part over HTTP/1.1: C{hello} to every request.
    """

    ANSWER = (
        b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\n"
        b"Date: Tue, 01 Dec 2026 12:00:00 GMT\r\nContent-Type: text/plain\r\n"
        b"Content-Length: 6\r\nConnection: keep-alive\r\n\r\nhello\n"
    )

    def __init__(self):
        self.buffer = b""

    def dataReceived(self, data):
        buf = self.buffer + data
        n = buf.count(b"\r\n\r\n")
        self.buffer = buf[buf.rfind(b"\r\n\r\n") + 4 :] if n else buf
        if n:
            self.transport.write(self.ANSWER * n)


class H2Upstream(Protocol):
    """
    nginx's part over h2c: one HEADERS (static-table HPACK, no dynamic
    table) and one DATA frame per stream ended by the proxy.
    """

    # :status 200 (static 8), content-type and content-length and server
    # as literals without indexing, no Huffman.
    BLOCK = (
        b"\x88"
        + b"\x0f\x10" + bytes([10]) + b"text/plain"
        + b"\x0f\x0d" + bytes([1]) + b"6"
        + b"\x0f\x27" + bytes([12]) + b"nginx/1.22.1"
    )

    def __init__(self):
        self.reader = FrameReader()
        self.preface = True

    def connectionMade(self):
        self.transport.write(frame(SETTINGS, 0, 0, struct.pack(">HL", 3, 128)))

    def dataReceived(self, data):
        if self.preface:
            data = data[len(PREFACE) :]
            self.preface = False
        out = []
        for kind, flags, sid, _ in self.reader.feed(data):
            if kind == SETTINGS and not flags & ACK:
                out.append(frame(SETTINGS, ACK, 0))
            elif kind in (HEADERS, DATA) and flags & END_STREAM:
                out.append(frame(HEADERS, END_HEADERS, sid, self.BLOCK))
                out.append(frame(DATA, END_STREAM, sid, b"hello\n"))
            elif kind in (RST, GOAWAY):
                raise RuntimeError("upstream got frame %d" % (kind,))
        if out:
            self.transport.write(b"".join(out))


class Loop:
    """
    meshproxy on a memory network, with its peers.
    """

    def __init__(self, h2up):
        from meshproxy.config import parseConfig
        from meshproxy.runtime import buildServices

        self.network = network = Network()
        upstream = H2Upstream if h2up else H1Upstream
        port = network.listenTCP(0, Factory.forProtocol(upstream)).getHost().port
        client = "upstreamProtocol: h2" if h2up else "maxIdlePerEndpoint: 1024"
        runtime, self.services = buildServices(
            parseConfig(CONFIG % {"up": port, "client": client}), reactor=network
        )
        for service in self.services:
            if hasattr(service, "privilegedStartService"):
                service.privilegedStartService()
        for service in self.services:
            service.startService()
        self.proxyPort = [
            s.port.getHost().port for s in self.services if hasattr(s, "whenBound")
        ][0]
        self.left = 0
        self.done = 0

    def run(self, requests, connections, streams):
        """
        C{requests} requests over C{connections} new connections.
        """
        self.left = requests
        self.done = 0
        clients = [Client(self, streams) for _ in range(connections)]
        for client in clients:
            self.network.connectClient(self.proxyPort, client)
        self.network.flush()
        if self.done != requests:
            raise RuntimeError("%d of %d requests done" % (self.done, requests))
        for client in clients:
            client.transport.loseConnection()
        self.network.flush()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=20000, help="requests measured")
    parser.add_argument("-c", type=int, default=4, help="connections")
    parser.add_argument("-m", type=int, default=100, help="streams per connection")
    parser.add_argument("--h2up", action="store_true", help="h2c to the upstream")
    parser.add_argument("--repeat", type=int, default=1, help="batches of -n (min, median)")
    parser.add_argument("--warmup", type=int, default=2000, help="requests before measuring")
    parser.add_argument("--profile", type=int, metavar="N", help="cProfile, top N by tottime")
    parser.add_argument(
        "--ir", action="store_true",
        help="run under callgrind with -n N and -n 0, print instructions per request",
    )
    args = parser.parse_args(argv)
    if args.ir:
        return instructions(args)
    loop = Loop(args.h2up)
    loop.run(args.warmup, args.c, args.m)
    if args.profile:
        import cProfile
        import pstats

        profile = cProfile.Profile()
        profile.enable()
        loop.run(args.n, args.c, args.m)
        profile.disable()
        pstats.Stats(profile).sort_stats("tottime").print_stats(args.profile)
        return 0
    costs = []
    for _ in range(args.repeat):
        start = time.process_time()
        loop.run(args.n, args.c, args.m)
        costs.append((time.process_time() - start) * 1e6 / max(args.n, 1))
    if args.n:
        costs.sort()
        print("%.1f us CPU/request, min of %d (median %.1f; %d requests, -c %d -m %d%s)" % (
            costs[0], len(costs), costs[len(costs) // 2], args.n, args.c, args.m,
            ", h2up" if args.h2up else ""))
    return 0


def instructions(args):
    """
    Instructions per request under callgrind: a run of C{-n} requests
    minus one of none.
    """
    counts = []
    for n in (args.n, 0):
        out = "/tmp/h2loop.%d.cg" % (os.getpid(),)
        cmd = [
            "valgrind", "--tool=callgrind", "--callgrind-out-file=" + out,
            sys.executable, __file__, "-n", str(n), "-c", str(args.c), "-m", str(args.m),
            "--warmup", str(args.warmup),
        ] + (["--h2up"] if args.h2up else [])
        result = subprocess.run(cmd, capture_output=True, text=True, check=True)
        line = [x for x in result.stderr.splitlines() if "Collected" in x][-1]
        counts.append(int(line.split()[-1]))
        os.unlink(out)
    print("%.0f instructions/request (%d requests, -c %d -m %d%s)" % (
        (counts[0] - counts[1]) / args.n, args.n, args.c, args.m,
        ", h2up" if args.h2up else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
