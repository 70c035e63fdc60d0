"""
Reloads and the drain of a real C{twistd meshproxy} child process, on
loopback, under steady traffic; and systemd socket activation, emulated.

The traffic is a bounded client loop in this process (L{Load}): workers
on kept-alive connections (one request at a time, the next as soon as the
answer is in) and workers opening a new connection per request. Each
request has its own path, so that the upstreams (also in this process)
tell which ones reached them. Every request ends in one of:

  - B{ok}: a complete 200;
  - B{failed}: anything else that the proxy sent back (an error status, a
    response cut short);
  - B{unanswered}: its connection closed (or was reset) before any byte of
    a response;
  - B{refused}: the connection could not be made.

"Zero failed" means: no request that the proxy accepted failed. A request
counts as accepted when an answer of the proxy began, or when an upstream
received it; so the failures are the B{failed} requests and the
B{unanswered} ones an upstream received. During a reload nothing may be
unanswered or refused either: the listeners stay, and no connection is
closed. During the C{SIGTERM} drain, connections refused once the
listeners are closed are expected, and so are requests on a kept-alive
connection that the proxy closed while idle before it read them (a client
retries those, as RFC 9112 9.3.1 allows): the upstreams never saw them.

Each test is bounded: the workers stop when told (or after
L{Load.maxPerWorker} requests each), waits have timeouts, and the child is
killed at the end if it still runs.
"""

import os
import re
import signal
import socket
import sys

import httptools
from twisted.internet import defer, error
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import ProcessProtocol, Protocol
from twisted.trial.unittest import TestCase

from tests.support import BackendFactory, listenBackend, okHandler

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: Seconds any one wait may take.
WAIT = 30

CONFIG = """\
admin:
  listen: "tcp:0:interface=127.0.0.1"
  shutdownGrace: 10s
namers:
  - {kind: static, prefix: /#/static, services: {a: ["127.0.0.1:%(a)d"], b: ["127.0.0.1:%(b)d"]}}
routers:
  - name: web
    listen: "%(listen)s"
    identifier: {kind: host}
    rules: "/svc/hello => /#/static/%(target)s;"
    loadBalancer: {kind: %(balancer)s}
%(more)s
"""

WEB2 = """\
  - name: web2
    listen: "tcp:0:interface=127.0.0.1"
    identifier: {kind: host}
    rules: "/svc/hello => /#/static/%s;"
"""


def delayed(label, delay, pending):
    """
    A handler answering like L{okHandler} after C{delay} seconds (on the
    reactor): requests are in flight when a reload or a drain comes.

    @param pending: a set the delayed calls are kept in until they run.
    """
    from twisted.internet import reactor

    answer = okHandler(label)

    def handle(proto, request):
        if not delay:
            answer(proto, request)
            return

        def later():
            pending.discard(call)
            if proto.transport.connected:
                answer(proto, request)

        call = reactor.callLater(delay, later)
        pending.add(call)

    return handle


# -- the child process ----------------------------------------------------------------------------


class ProxyProcess(ProcessProtocol):
    """
    C{twistd --nodaemon meshproxy --config FILE}, its log (standard output
    and error) read line by line.

    @ivar lines: the lines so far.
    @ivar ended: fires with C{(exit status, signal)}: after a C{SIGTERM},
        twistd ends itself with that signal once stopped (C{(None,
        SIGTERM)}, what systemd takes as a clean stop).
    """

    def __init__(self):
        self.lines = []
        self._partial = b""
        self._waiters = []
        self.ended = defer.Deferred()
        self.exitCode = None

    def outReceived(self, data):
        self._received(data)

    def errReceived(self, data):
        self._received(data)

    def _received(self, data):
        data = self._partial + data
        *complete, self._partial = data.split(b"\n")
        for raw in complete:
            line = raw.decode("utf-8", "replace")
            self.lines.append(line)
            for waiter in list(self._waiters):
                pattern, d = waiter
                match = pattern.search(line)
                if match is not None:
                    self._waiters.remove(waiter)
                    d.callback(match)

    def processEnded(self, reason):
        self.exitCode = reason.value.exitCode
        self.exitSignal = reason.value.signal
        waiters, self._waiters = self._waiters, []
        for pattern, d in waiters:
            d.errback(AssertionError(
                "the proxy exited (%s) before logging %r:\n%s"
                % (self.exitCode, pattern.pattern, "\n".join(self.lines))
            ))
        self.ended.callback((self.exitCode, self.exitSignal))

    def waitFor(self, pattern, since=0):
        """
        The first log line from line C{since} on that matches C{pattern}.

        @return: a Deferred firing with the match.
        """
        from twisted.internet import reactor

        regex = re.compile(pattern)
        for line in self.lines[since:]:
            match = regex.search(line)
            if match is not None:
                return defer.succeed(match)
        d = defer.Deferred()
        self._waiters.append((regex, d))

        def timedOut(failure):
            failure.trap(defer.TimeoutError)
            raise AssertionError(
                "no log line matching %r within %d s:\n%s"
                % (pattern, WAIT, "\n".join(self.lines))
            )

        return d.addTimeout(WAIT, reactor).addErrback(timedOut)

    def signal(self, name):
        self.transport.signalProcess(name)


class ProcessTestCase(TestCase):
    """
    Runs the proxy as a child and upstreams C{a} and C{b} here.
    """

    timeout = 120

    @defer.inlineCallbacks
    def upstreams(self, delay=0.005):
        self.factories = {}
        self.ports = {}
        pending = set()

        def cancel():
            for call in list(pending):
                if call.active():
                    call.cancel()

        self.addCleanup(cancel)
        for label in ("a", "b"):
            factory = BackendFactory(delayed(label.encode("ascii"), delay, pending))
            self.factories[label] = factory
            self.ports[label] = yield listenBackend(self, factory)

    def config(self, target="a", more="", balancer="ewma", listen="tcp:0:interface=127.0.0.1"):
        return CONFIG % {
            "a": self.ports["a"],
            "b": self.ports["b"],
            "target": target,
            "more": more,
            "balancer": balancer,
            "listen": listen,
        }

    def write(self, text):
        with open(self.path, "w") as f:
            f.write(text)

    @defer.inlineCallbacks
    def startProxy(self, text, childFDs=None, env=None, systemdNames=None):
        """
        Write C{text} as the config and run the proxy on it.

        @param systemdNames: the names of the sockets passed (as fds 3,
            4, ...) as systemd would, in C{LISTEN_FDNAMES}.
        @return: a Deferred firing with the L{ProxyProcess} once it is
            ready, its ports by owner in C{proxy.ports}.
        """
        from twisted.internet import reactor

        directory = os.path.abspath(self.mktemp())
        os.mkdir(directory)
        self.path = os.path.join(directory, "mesh.yaml")
        self.write(text)
        proxy = ProxyProcess()
        argv = [
            sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
            "--nodaemon", "--pidfile=", "--logfile=-", "meshproxy", "--config", self.path,
        ]
        environment = {**os.environ, "PYTHONPATH": HERE, **(env or {})}
        fds = {0: "w", 1: "r", 2: "r", **(childFDs or {})}
        if systemdNames:
            # LISTEN_PID must be the pid of the process that reads it: a
            # shell sets it to its own, then becomes Python.
            environment["LISTEN_FDS"] = str(len(systemdNames))
            environment["LISTEN_FDNAMES"] = ":".join(systemdNames)
            argv = ["/bin/sh", "-c", 'LISTEN_PID=$$ exec "$@"', "sh"] + argv
        reactor.spawnProcess(
            proxy, argv[0], argv, env=environment, path=directory, childFDs=fds
        )
        self.addCleanup(self.kill, proxy)
        yield proxy.waitFor(r"\bready: ")
        proxy.ports = {}
        for line in proxy.lines:
            match = re.search(r"(router \S+|admin) listening on \S+ \(port (\d+)\)", line)
            if match is not None:
                proxy.ports[match.group(1)] = int(match.group(2))
        return proxy

    def kill(self, proxy):
        if not proxy.ended.called:
            try:
                proxy.signal("KILL")
            except error.ProcessExitedAlready:
                pass
            return proxy.ended
        return None

    @defer.inlineCallbacks
    def reload(self, proxy, text, loads=(), phase=None):
        """
        Rewrite the config and send C{SIGHUP}.

        @param loads: L{Load}s whose requests sent from the signal on are
            recorded in phase C{("during", phase)}, then, once the reload is
            logged, in C{phase}.
        @return: a Deferred firing once the proxy logged the reload.
        """
        since = len(proxy.lines)
        self.write(text)
        for load in loads:
            load.phase = ("during", phase)
        proxy.signal("HUP")
        match = yield proxy.waitFor(r"reloaded .*|reload of \S+ refused: nothing changed.*", since)
        for load in loads:
            load.phase = phase
        return match, since


# -- the load ------------------------------------------------------------------------------------


class _Connection(Protocol):
    """
    One client connection of the load: one request at a time.
    """

    def __init__(self):
        self.closed = defer.Deferred()
        self.open = True
        self._waiting = None
        self._parser = None

    def connectionMade(self):
        self.transport.setTcpNoDelay(True)

    def send(self, path, host, close):
        """
        Send one GET.

        @return: a Deferred firing with C{(outcome, upstream, keepAlive)}.
        """
        self._parser = httptools.HttpResponseParser(self)
        self._received = 0
        self._status = None
        self._upstream = None
        self._waiting = d = defer.Deferred()
        self.transport.write(
            b"GET %s HTTP/1.1\r\nHost: %s\r\n%s\r\n"
            % (path, host, b"Connection: close\r\n" if close else b"")
        )
        return d

    def dataReceived(self, data):
        self._received += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            self._finish(("failed", None, False))
            self.transport.abortConnection()

    def on_header(self, name, value):
        if name.lower() == b"x-upstream":
            self._upstream = value

    def on_headers_complete(self):
        self._status = self._parser.get_status_code()

    def on_message_complete(self):
        outcome = "ok" if self._status == 200 else "failed"
        self._finish((outcome, self._upstream, self._parser.should_keep_alive()))

    def _finish(self, result):
        d, self._waiting = self._waiting, None
        if d is not None:
            d.callback(result)

    def connectionLost(self, reason):
        self.open = False
        self._finish(("failed" if self._received else "unanswered", None, False))
        self.closed.callback(None)


class Load:
    """
    Steady traffic to one port: C{keepAlive} workers on kept-alive
    connections and C{fresh} workers opening a connection per request.

    @ivar results: C{(worker, path, outcome, upstream, phase)} per request,
        in the order they ended, C{phase} the one it was sent in.
    @ivar ended: the phase each request of C{results} ended in.
    @ivar connections: how many connections each worker opened.
    @ivar phase: a label each request is recorded with (what the test was
        doing when it was sent).
    """

    maxPerWorker = 20000

    def __init__(self, port, name, keepAlive=4, fresh=2, host=b"hello", stopOnRefused=False):
        self.port = port
        self.name = name
        self.host = host
        self.stopOnRefused = stopOnRefused
        self.kinds = ["keep"] * keepAlive + ["fresh"] * fresh
        self.results = []
        self.ended = []
        self.connections = [0] * len(self.kinds)
        self.phase = 0
        self.stopping = False
        self._workers = []

    def start(self):
        for i, kind in enumerate(self.kinds):
            self._workers.append(defer.ensureDeferred(self._work(i, kind)))

    def stop(self):
        self.stopping = True
        return defer.gatherResults(self._workers)

    async def _connect(self, i):
        from twisted.internet import reactor

        conn = _Connection()
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.port, timeout=WAIT)
        await connectProtocol(endpoint, conn)
        self.connections[i] += 1
        return conn

    async def _work(self, i, kind):
        conn = None
        for n in range(self.maxPerWorker):
            if self.stopping:
                break
            path = b"/%s/%d/%d" % (self.name.encode("ascii"), i, n)
            if conn is None or not conn.open:
                try:
                    conn = await self._connect(i)
                except (error.ConnectionRefusedError, error.ConnectError):
                    self.results.append((i, path, "refused", None, self.phase))
                    self.ended.append(self.phase)
                    if self.stopOnRefused:
                        break
                    continue
            # The phase the request is sent in.
            phase = self.phase
            outcome, upstream, keepAlive = await conn.send(path, self.host, kind == "fresh")
            self.results.append((i, path, outcome, upstream, phase))
            self.ended.append(self.phase)
            if not keepAlive or kind == "fresh":
                if conn.open:
                    conn.transport.loseConnection()
                    await conn.closed
                conn = None
        if conn is not None and conn.open:
            conn.transport.loseConnection()
            await conn.closed

    def count(self, outcome=None, phase=None, worker=None):
        return sum(
            1
            for w, _, o, _, p in self.results
            if (outcome is None or o == outcome)
            and (phase is None or p == phase)
            and (worker is None or w == worker)
        )

    async def until(self, predicate, what):
        """
        Wait (on the reactor) until C{predicate()}.
        """
        from twisted.internet import reactor
        from twisted.internet.task import deferLater

        for _ in range(WAIT * 100):
            if predicate():
                return
            await deferLater(reactor, 0.01, lambda: None)
        raise AssertionError("the load did not reach %s within %d s" % (what, WAIT))

    def failures(self, received):
        """
        The requests the proxy accepted that did not end in a complete 200
        (see the module docstring).

        @param received: the paths the upstreams received.
        """
        return [
            (path, outcome)
            for _, path, outcome, _, _ in self.results
            if outcome == "failed" or (outcome == "unanswered" and path in received)
        ]


def received(factories):
    """
    The paths of every request the upstreams received.
    """
    return {request.url for factory in factories.values() for request in factory.requests}


def _report(testCase, what, *loads):
    """
    With C{MESHPROXY_LOAD_REPORT} set, print the counts of C{loads} (the
    numbers docs/install.md quotes).
    """
    if not os.environ.get("MESHPROXY_LOAD_REPORT"):
        return
    outcomes = ("ok", "failed", "unanswered", "refused")
    counts = {o: sum(load.count(o) for load in loads) for o in outcomes}
    sys.stderr.write("\n%s (%s): %s\n" % (testCase.id(), what, counts))


# -- the tests ------------------------------------------------------------------------------------


class ReloadUnderLoadTests(ProcessTestCase):
    """
    C{SIGHUP} under steady traffic: zero failed requests, no connection
    closed or refused.
    """

    @defer.inlineCallbacks
    def test_reloadsChangingRulesAddingAListenerAndRebuilding(self):
        """
        A reload that changes the rules (swapped in place) and adds a
        listener, then one that rebuilds the router (another balancer and
        the rules back): every request is answered 200, every kept-alive
        connection carries on (one connection per worker), and each request
        sent after a reload is logged goes where the new rules say.
        """
        yield self.upstreams()
        proxy = yield self.startProxy(self.config())
        load = Load(proxy.ports["router web"], "web")
        load.start()
        try:
            yield defer.ensureDeferred(load.until(lambda: load.count("ok") >= 500, "500 ok"))
            # 1: the rules change (in place) and web2 is added.
            match, since = yield self.reload(
                proxy, self.config(target="b", more=WEB2 % ("a",)), [load], 1
            )
            self.assertIn("reloaded", match.group(0))
            portMatch = yield proxy.waitFor(r"router web2 listening on \S+ \(port (\d+)\)", since)
            load2 = Load(int(portMatch.group(1)), "web2", keepAlive=2, fresh=1)
            load2.start()
            try:
                yield defer.ensureDeferred(load.until(
                    lambda: all(load.count("ok", 1, w) >= 60 for w in range(6))
                    and load2.count("ok") >= 200,
                    "60 ok per worker after the first reload",
                ))
                # 2: another balancer (the router is rebuilt), rules back to a.
                match, since = yield self.reload(
                    proxy,
                    self.config(target="a", balancer="roundRobin", more=WEB2 % ("a",)),
                    [load],
                    2,
                )
                self.assertIn("reloaded", match.group(0))
                self.assertIn("rebuilt web", match.group(0))
                yield defer.ensureDeferred(load.until(
                    lambda: all(load.count("ok", 2, w) >= 60 for w in range(6)),
                    "60 ok per worker after the second reload",
                ))
            finally:
                yield load2.stop()
        finally:
            yield load.stop()
        seen = received(self.factories)
        for each in (load, load2):
            self.assertEqual(each.failures(seen), [])
            self.assertEqual(each.count("unanswered"), 0)
            self.assertEqual(each.count("refused"), 0)
        # The kept-alive connections were never closed.
        self.assertEqual(load.connections[:4], [1, 1, 1, 1])
        self.assertEqual(load2.connections[:2], [1, 1])
        # A request sent after a reload was logged and answered before the
        # next one was asked for went where that reload's rules say.
        # (One sent before a reload may be read by the proxy after it.)
        upstreams = {
            phase: {
                u
                for (_, _, _, u, sent), ended in zip(load.results, load.ended, strict=True)
                if sent == ended == phase
            }
            for phase in (0, 1, 2)
        }
        self.assertEqual(upstreams, {0: {b"a"}, 1: {b"b"}, 2: {b"a"}})
        self.assertLessEqual({u for _, _, _, u, _ in load.results}, {b"a", b"b"})
        self.assertEqual({u for _, _, _, u, _ in load2.results}, {b"a"})
        self.assertGreater(len(load.results) + len(load2.results), 1400)
        _report(self, "reloads", load, load2)

    @defer.inlineCallbacks
    def test_badFileChangesNothing(self):
        """
        A bad file on C{SIGHUP} is refused with every problem logged, and
        the proxy goes on as it was; C{POST /admin/reload} answers 400 with
        the problems, and 200 once the file is fixed.
        """
        from tests.admin_support import AdminClient

        yield self.upstreams(delay=0)
        proxy = yield self.startProxy(self.config())
        bad = self.config(target="b").replace("identifier:", "identifyer:")
        bad = bad.replace("kind: ewma", "kind: fastest")
        match, since = yield self.reload(proxy, bad)
        self.assertIn("refused: nothing changed (2 problems)", match.group(0))
        problems = [line for line in proxy.lines[since:] if "refused: routers[0]" in line]
        self.assertEqual(len(problems), 2, "\n".join(proxy.lines[since:]))
        load = Load(proxy.ports["router web"], "web", keepAlive=1, fresh=1)
        load.start()
        yield defer.ensureDeferred(load.until(lambda: load.count("ok") >= 20, "20 ok"))
        yield load.stop()
        self.assertEqual({u for _, _, _, u, _ in load.results}, {b"a"})
        admin = AdminClient(self, proxy.ports["admin"])
        response = yield admin.post("/admin/reload")
        self.assertEqual(response.code, 400)
        self.assertEqual(len(response.json()["errors"]), 2)
        self.write(self.config(target="b"))
        response = yield admin.post("/admin/reload")
        self.assertEqual(response.code, 200)
        self.assertEqual(response.json()["routers"]["updated"], ["web"])

    @defer.inlineCallbacks
    def test_removedListenerClosesAfterDraining(self):
        """
        A router removed by a reload stops listening at once (a new
        connection is refused), while the request in flight on it gets its
        whole answer; then its connection is closed.
        """
        yield self.upstreams(delay=1.0)
        proxy = yield self.startProxy(self.config(more=WEB2 % ("b",)))
        port = proxy.ports["router web2"]
        from twisted.internet import reactor

        conn = yield connectProtocol(
            TCP4ClientEndpoint(reactor, "127.0.0.1", port), _Connection()
        )
        answer = conn.send(b"/in-flight", b"hello", False)
        # The request reached the upstream: it is in flight.
        yield defer.ensureDeferred(Load(0, "x").until(
            lambda: self.factories["b"].requests, "the request upstream"
        ))
        match, _ = yield self.reload(proxy, self.config())
        self.assertIn("routers removed web2", match.group(0))
        self.assertNoResult(answer)
        load = Load(port, "gone", keepAlive=0, fresh=1, stopOnRefused=True)
        load.start()
        yield load.stop()
        self.assertEqual([o for _, _, o, _, _ in load.results], ["refused"])
        outcome, upstream, keepAlive = yield answer
        self.assertEqual((outcome, upstream, keepAlive), ("ok", b"b", False))
        yield conn.closed


class DrainUnderLoadTests(ProcessTestCase):
    """
    C{SIGTERM} under steady traffic: zero failed requests among those the
    proxy accepted, and the process exits 0.
    """

    @defer.inlineCallbacks
    def test_sigtermDrain(self):
        yield self.upstreams(delay=0.02)
        proxy = yield self.startProxy(self.config())
        load = Load(proxy.ports["router web"], "web", keepAlive=4, fresh=2, stopOnRefused=True)
        load.start()
        try:
            yield defer.ensureDeferred(load.until(lambda: load.count("ok") >= 300, "300 ok"))
            # Requests are in flight (each takes 20 ms upstream).
            load.phase = 1
            proxy.signal("TERM")
            ended = yield proxy.ended
        finally:
            yield load.stop()
        self.assertEqual(ended, (None, signal.SIGTERM), "\n".join(proxy.lines))
        self.assertIn("Server Shut Down.", proxy.lines[-1])
        seen = received(self.factories)
        self.assertEqual(load.failures(seen), [])
        # The workers met the closed listener.
        self.assertLessEqual(
            {o for _, _, o, _, _ in load.results}, {"ok", "unanswered", "refused"}
        )
        self.assertGreater(load.count("refused"), 0)
        # Requests in flight at the SIGTERM were answered after it.
        inFlight = [
            r for r, end in zip(load.results, load.ended, strict=True) if r[4] == 0 and end == 1
        ]
        self.assertTrue(inFlight)
        self.assertEqual({r[2] for r in inFlight} - {"ok", "unanswered"}, set())
        self.assertGreater(len([r for r in inFlight if r[2] == "ok"]), 0)
        _report(self, "drain", load)


class SocketActivationTests(ProcessTestCase):
    """
    A listener on a socket passed as systemd does (C{LISTEN_FDS},
    C{LISTEN_FDNAMES}, C{LISTEN_PID}), by its name.
    """

    @defer.inlineCallbacks
    def test_servesOnThePassedSocketAndKeepsItOnReload(self):
        yield self.upstreams(delay=0)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.addCleanup(sock.close)
        sock.bind(("127.0.0.1", 0))
        sock.listen(128)
        port = sock.getsockname()[1]
        proxy = yield self.startProxy(
            self.config(listen="systemd:domain=INET:name=web"),
            childFDs={3: sock.fileno()},
            systemdNames=["web"],
        )
        self.assertIn(
            "router web listening on systemd:domain=INET:name=web", "\n".join(proxy.lines)
        )
        # This process's copy closed: only the proxy listens on it now.
        sock.close()
        load = Load(port, "web", keepAlive=1, fresh=1)
        load.start()
        yield defer.ensureDeferred(load.until(lambda: load.count("ok") >= 20, "20 ok"))
        match, _ = yield self.reload(
            proxy, self.config(target="b", listen="systemd:domain=INET:name=web"), [load], 1
        )
        self.assertIn("reloaded", match.group(0))
        yield defer.ensureDeferred(load.until(lambda: load.count("ok", 1) >= 20, "20 ok after"))
        yield load.stop()
        self.assertEqual(load.failures(received(self.factories)), [])
        self.assertEqual(load.count("refused") + load.count("unanswered"), 0)
        self.assertEqual(
            {u for (_, _, _, u, p), e in zip(load.results, load.ended, strict=True) if p == e == 1},
            {b"b"},
        )
        proxy.signal("TERM")
        ended = yield proxy.ended
        self.assertEqual(ended, (None, signal.SIGTERM))


# Not on this platform: no SIGHUP.
if not hasattr(signal, "SIGHUP"):
    for _case in (ReloadUnderLoadTests, DrainUnderLoadTests, SocketActivationTests):
        _case.skip = "no SIGHUP here"
