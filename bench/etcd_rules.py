#!/usr/bin/env python3
"""
How long a write in etcd takes to route requests, through two meshproxy
processes following it, on loopback.

Starts an etcd (the C{etcd} binary, one member, a temp data dir, free
ports), two upstreams C{one} and C{two} in this process, and two
C{twistd -n meshproxy} processes, each with a C{rulesStore} and an C{etcd}
namer on that etcd, routing C{Host: x}. A client keeps one request at a
time in flight through each proxy, on a kept-alive connection. Then, N
times, it writes to etcd what sends C{x} to the other upstream, and
measures the time from the start of the write to the first answer from
that upstream through each proxy:

  - C{--change rules} (the default): the router's rules key,
    C{/svc/x => /#/static/one;} or C{.../two;}, as C{etcdctl put} would
    (applied by each proxy's rules store from its watch);
  - C{--change register}: the instance key of service C{x} under the
    namers' prefix, its value the address of one upstream or the other
    (followed by each proxy's etcd namer);
  - C{--change put}: the rules again, changed through proxy A's admin API
    (C{PUT} with C{If-Match}: a compare-and-swap in etcd, applied by A at
    once and by B from its watch); the baseline is then the C{PUT}'s round
    trip.

The baseline, measured in the same run, is the write's own round trip
(from its start to etcd's answer). A benchmark, not a test: it never fails
on a figure. Usage::

    python bench/etcd_rules.py                     # 100 rules changes
    python bench/etcd_rules.py --change register --changes 200
"""

import argparse
import json
import os
import re
import shutil
import socket
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, HERE)

RULES = "/bench/rules/"
SERVICES = "/bench/services/"

CONFIG = """\
admin:
  listen: "tcp:0:interface=127.0.0.1"
  shutdownGrace: 1s
namers:
  - kind: static
    prefix: /#/static
    services: {one: ["127.0.0.1:%(one)d"], two: ["127.0.0.1:%(two)d"]}
  - {kind: etcd, prefix: /#/etcd, endpoints: ["%(etcd)s"], keyPrefix: %(services)s}
rulesStore: {kind: etcd, endpoints: ["%(etcd)s"], keyPrefix: %(rules)s}
routers:
  - name: web
    listen: "tcp:0:interface=127.0.0.1"
    identifier: {kind: host}
    rules: %(rules_text)s
"""


def freePorts(n):
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def percentile(values, fraction):
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * len(ordered) + 0.5) - 1))
    return ordered[index]


def protocols():
    """
    The upstream and client protocols (defined once Twisted is imported).
    """
    from twisted.internet import defer, protocol

    class Upstream(protocol.Protocol):
        """
        Answers every request (a GET without body) with its label.
        """

        def connectionMade(self):
            self.buffer = b""
            self.transport.setTcpNoDelay(True)

        def dataReceived(self, data):
            self.buffer += data
            label = self.factory.label
            while b"\r\n\r\n" in self.buffer:
                _, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
                self.transport.write(
                    b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nX-Upstream: %s\r\n\r\n%s"
                    % (len(label), label, label)
                )

    class Prober(protocol.Protocol):
        """
        One request at a time, on and on, through one proxy: records the
        upstream that answered each, and when.
        """

        def __init__(self, name):
            self.name = name
            self.answered = 0
            self.last = None
            self.waiting = []
            self.running = True
            self.buffer = b""

        def connectionMade(self):
            self.transport.setTcpNoDelay(True)
            self.send()

        def send(self):
            if self.running:
                self.transport.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")

        def dataReceived(self, data):
            self.buffer += data
            while b"\r\n\r\n" in self.buffer:
                head, rest = self.buffer.split(b"\r\n\r\n", 1)
                length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))
                if len(rest) < length:
                    return
                upstream = re.search(rb"(?i)x-upstream: *(\S+)", head)
                self.buffer = rest[length:]
                self.answered += 1
                self.last = upstream.group(1) if upstream else head.split(b"\r\n")[0]
                now = time.perf_counter()
                for waiter in list(self.waiting):
                    label, d = waiter
                    if self.last == label:
                        self.waiting.remove(waiter)
                        d.callback(now)
                self.send()

        def until(self, label):
            """
            A Deferred firing with the time of the next answer from C{label}.
            """
            d = defer.Deferred()
            self.waiting.append((label, d))
            return d

    return Upstream, Prober


class Child:
    """
    A C{twistd -n meshproxy} child and its log.
    """

    def __init__(self, reactor, directory, text):
        from twisted.internet import defer, protocol

        self.lines = []
        self.ready = defer.Deferred()
        self.ended = defer.Deferred()
        path = os.path.join(directory, "mesh.yaml")
        with open(path, "w") as f:
            f.write(text)
        child = self

        class Output(protocol.ProcessProtocol):
            partial = b""

            def outReceived(self, data):
                data = self.partial + data
                *lines, self.partial = data.split(b"\n")
                for raw in lines:
                    line = raw.decode("utf-8", "replace")
                    child.lines.append(line)
                    if " ready: " in line and not child.ready.called:
                        child.ready.callback(None)

            errReceived = outReceived

            def processEnded(self, reason):
                if not child.ready.called:
                    child.ready.errback(RuntimeError(
                        "meshproxy exited at start:\n" + "\n".join(child.lines[-20:])
                    ))
                child.ended.callback(None)

        argv = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
                "--nodaemon", "--pidfile=", "--logfile=-", "meshproxy", "--config", path]
        env = {**os.environ, "PYTHONPATH": HERE}
        self.process = reactor.spawnProcess(Output(), argv[0], argv, env=env, path=directory)

    def port(self, owner):
        for line in self.lines:
            match = re.search(r"%s listening on \S+ \(port (\d+)\)" % (owner,), line)
            if match:
                return int(match.group(1))
        raise RuntimeError("no port for %s in the log" % (owner,))

    def stop(self):
        if not self.ended.called:
            self.process.signalProcess("TERM")
        return self.ended


async def startEtcd(reactor, base):
    from twisted.internet import defer, protocol
    from twisted.internet.task import deferLater

    from meshproxy.etcd import EtcdClient, EtcdUnavailable

    etcd = shutil.which("etcd")
    if etcd is None:
        raise SystemExit("etcd is not installed (Debian: apt-get install etcd-server)")
    clientPort, peerPort = freePorts(2)
    url, peer = "http://127.0.0.1:%d" % clientPort, "http://127.0.0.1:%d" % peerPort
    ended = defer.Deferred()

    class Process(protocol.ProcessProtocol):
        def processEnded(self, reason):
            ended.callback(None)

    process = reactor.spawnProcess(
        Process(), etcd,
        [etcd, "--name", "bench", "--data-dir", os.path.join(base, "data"),
         "--listen-client-urls", url, "--advertise-client-urls", url,
         "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
         "--initial-cluster", "bench=" + peer, "--logger", "zap", "--log-outputs",
         os.path.join(base, "etcd.log")],
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
    )
    writer = EtcdClient([url], reactor=reactor)
    deadline = time.monotonic() + 30
    while True:
        try:
            await writer.range("/")
            break
        except EtcdUnavailable:
            if time.monotonic() > deadline:
                raise
            await deferLater(reactor, 0.05, lambda: None)
    return url, writer, process, ended


async def measure(reactor, changes, change):
    from twisted.internet import defer, protocol
    from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

    from meshproxy.admin.etcdstore import encodeValue

    Upstream, Prober = protocols()
    base = tempfile.mkdtemp(prefix="etcd-rules-bench-")
    url, writer, etcdProcess, etcdEnded = await startEtcd(reactor, base)
    listening, children, probers = [], [], []
    pool = None
    try:
        ports = {}
        for label in (b"one", b"two"):
            factory = protocol.Factory.forProtocol(Upstream)
            factory.label = label
            factory.noisy = False
            port = reactor.listenTCP(0, factory, interface="127.0.0.1")
            listening.append(port)
            ports[label] = port.getHost().port
        rulesText = "/svc/x => /#/etcd/x;" if change == "register" else "/svc/x => /#/static/one;"
        instanceKey = SERVICES + "x/instance"
        if change == "register":
            await writer.put(instanceKey, b"127.0.0.1:%d" % (ports[b"one"],))
        text = CONFIG % {
            "one": ports[b"one"], "two": ports[b"two"], "etcd": url, "rules": RULES,
            "services": SERVICES, "rules_text": json.dumps(rulesText),
        }
        for name in ("A", "B"):
            directory = os.path.join(base, name)
            os.mkdir(directory)
            children.append(Child(reactor, directory, text))
        await defer.gatherResults([child.ready for child in children])
        for name, child in zip("AB", children, strict=True):
            prober = Prober(name)
            endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", child.port("router web"))
            await connectProtocol(endpoint, prober)
            probers.append(prober)
        for prober in probers:
            await prober.until(b"one")
        if change == "put":
            import treq
            from twisted.web.client import Agent, HTTPConnectionPool

            pool = HTTPConnectionPool(reactor, persistent=True)
            http = treq.client.HTTPClient(Agent(reactor, pool=pool))
            admin = "http://127.0.0.1:%d/admin/routers/web/rules" % (children[0].port("admin"),)
            response = await http.get(admin)
            await response.content()
            etag = response.headers.getRawHeaders("etag")[0]

        roundTrips, perProxy, both = [], {p.name: [] for p in probers}, []
        for i in range(changes + 10):
            target = b"two" if i % 2 == 0 else b"one"
            seen = [prober.until(target) for prober in probers]
            rules = "/svc/x => /#/static/%s;" % (target.decode(),)
            if change == "rules":
                key, value = RULES + "web", encodeValue("rules", rules, "bench", "-")
            else:
                key, value = instanceKey, b"127.0.0.1:%d" % (ports[target],)
            started = time.perf_counter()
            if change == "put":
                response = await http.put(
                    admin, data=rules.encode(),
                    headers={"Content-Type": ["text/plain"], "If-Match": [etag]},
                )
                await response.content()
                if response.code != 200:
                    raise RuntimeError("PUT answered %d" % (response.code,))
                etag = response.headers.getRawHeaders("etag")[0]
            else:
                await writer.put(key, value)
            answered = time.perf_counter()
            times = await defer.gatherResults(seen)
            if i >= 10:  # the first ones warm the connections up
                roundTrips.append((answered - started) * 1000)
                for prober, at in zip(probers, times, strict=True):
                    perProxy[prober.name].append((at - started) * 1000)
                both.append((max(times) - started) * 1000)
        requests = sum(p.answered for p in probers)
        print("%d %s changes in etcd (%s on loopback), 2 proxies following; %d requests"
              % (changes, change, url, requests))
        print("%-40s %8s %8s %8s" % ("", "median", "p99", "max"))
        rows = [("%s round trip (baseline)" % ("PUT" if change == "put" else "write"), roundTrips)]
        rows += [("write -> first request routed, proxy %s" % n, v) for n, v in perProxy.items()]
        rows.append(("write -> routed by both", both))
        for name, values in rows:
            print("%-40s %7.2fms %7.2fms %7.2fms" % (
                name, statistics.median(values), percentile(values, 0.99), max(values)))
        print("routed by both / write round trip (medians): %.2f" % (
            statistics.median(both) / statistics.median(roundTrips)))
        print("goal: p99 under 200 ms: %s" % (
            "met" if percentile(both, 0.99) < 200 else "NOT met"))
        return 0
    finally:
        if pool is not None:
            await pool.closeCachedConnections()
        for prober in probers:
            prober.running = False
            prober.transport.loseConnection()
        await defer.gatherResults([child.stop() for child in children])
        for port in listening:
            await port.stopListening()
        await writer.close()
        etcdProcess.signalProcess("TERM")
        await etcdEnded
        shutil.rmtree(base, ignore_errors=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--changes", type=int, default=100,
                        help="changes measured (default 100)")
    parser.add_argument("--change", choices=("rules", "register", "put"), default="rules",
                        help="what is written: the rules, an instance's address, or the"
                             " rules through proxy A's admin API")
    options = parser.parse_args()
    from twisted.internet import defer, task

    status = []

    def run(reactor):
        d = defer.Deferred.fromCoroutine(measure(reactor, options.changes, options.change))
        d.addCallback(status.append)
        return d

    try:
        task.react(run)
    except SystemExit as e:
        if e.code:
            raise
    return status[0] if status else 1


if __name__ == "__main__":
    sys.exit(main())
