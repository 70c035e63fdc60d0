"""
The twistd plugin: options, config checking before anything binds, and the
service tree.
"""

import io
import sys

from twisted.application.service import IServiceMaker, Service
from twisted.internet.testing import MemoryReactorClock
from twisted.plugin import getPlugins
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from meshproxy import cli
from meshproxy.runtime import buildServices
from meshproxy.tap import Options, makeService

GOOD = """\
admin: {listen: "tcp:9991:interface=127.0.0.1"}
namers:
  - {kind: static, prefix: /#/static, services: {hello: ["127.0.0.1:9001"]}}
routers:
  - name: web
    listen: "tcp:4141:interface=127.0.0.1"
    rules: "/svc => /#/static;"
"""

BAD = """\
routers:
  - name: web
    listen: "tcp:4141"
    timeouts: {total: fast}
    timeots: {}
"""


class PluginTests(SynchronousTestCase):
    def test_pluginFound(self):
        """
        twistd finds the meshproxy service maker, pointing at this module.
        """
        makers = {p.tapname: p for p in getPlugins(IServiceMaker)}
        self.assertIn("meshproxy", makers)
        self.assertEqual(makers["meshproxy"].module, "meshproxy.tap")
        self.assertIs(makers["meshproxy"].options, __import__("meshproxy.tap").tap.Options)


class OptionsTests(SynchronousTestCase):
    def write(self, text):
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(text)
        return path

    def capture(self):
        """
        Capture standard output and standard error.
        """
        out, err = io.StringIO(), io.StringIO()
        self.patch(sys, "stdout", out)
        self.patch(sys, "stderr", err)
        return out, err

    def test_badConfigExitsOneWithTheErrorsAlone(self):
        """
        A bad config stops twistd before any service exists: every bad key
        is named on standard error, with nothing else (twistd prints its
        whole usage text before a UsageError), and the process exits 1.
        """
        out, err = self.capture()
        path = self.write(BAD)
        e = self.assertRaises(SystemExit, Options().parseOptions, ["--config", path])
        self.assertEqual(e.code, 1)
        self.assertEqual(
            err.getvalue(),
            path + ": invalid\n"
            'routers[0].timeots: unknown key (did you mean "timeouts"?)\n'
            'routers[0].timeouts.total: expected a duration like "2s", got "fast"\n',
        )
        self.assertEqual(out.getvalue(), "")

    def test_badOptionIsStillAUsageError(self):
        self.assertRaises(usage.UsageError, Options().parseOptions, ["--conifg", "x"])

    def test_version(self):
        """
        --version prints meshproxy's version (not Twisted's) and exits 0.
        """
        import meshproxy

        out, err = self.capture()
        e = self.assertRaises(SystemExit, Options().parseOptions, ["--version"])
        self.assertEqual((e.code, out.getvalue(), err.getvalue()),
                         (0, "meshproxy %s\n" % (meshproxy.__version__,), ""))

    def test_help(self):
        out, err = self.capture()
        e = self.assertRaises(SystemExit, Options().parseOptions, ["--help"])
        self.assertIn(e.code, (None, 0))
        self.assertIn("--config", out.getvalue())
        self.assertEqual(err.getvalue(), "")

    def test_interfaceNotOnThisHost(self):
        """
        A listener on an address this host does not have is refused before
        anything binds; loopback and the unspecified addresses always pass.
        """
        out, err = self.capture()
        text = GOOD.replace("interface=127.0.0.1", "interface=192.0.2.123", 1)
        e = self.assertRaises(
            SystemExit, Options().parseOptions, ["--config", self.write(text), "--check"]
        )
        self.assertEqual(e.code, 1)
        self.assertIn(
            'admin.listen: interface "192.0.2.123" is not an address of this host\n',
            err.getvalue(),
        )
        for interface in ("0.0.0.0", "127.0.0.2", "\\\\:\\\\:", "\\\\:\\\\:1"):
            text = GOOD.replace("interface=127.0.0.1", "interface=" + interface, 1)
            e = self.assertRaises(
                SystemExit, Options().parseOptions, ["--config", self.write(text), "--check"]
            )
            self.assertEqual(e.code, 0, interface)

    def test_unusableEtcdTLSFiles(self):
        """
        The TLS files of an etcd namer and of the rules store are read by
        C{--check}, before anything starts: a missing file or one that is
        not PEM is named by its key path (it was a traceback at the start).
        """
        import os

        directory = self.mktemp()
        os.mkdir(directory)
        with open(os.path.join(directory, "garbage.pem"), "w") as f:
            f.write("not a certificate\n")
        config = os.path.join(directory, "mesh.yaml")
        with open(config, "w") as f:
            f.write(
                "namers:\n"
                "  - {kind: etcd, prefix: /#/etcd, endpoints: ['https://127.0.0.1:2379'],\n"
                "     tls: {ca: missing.pem}}\n"
                "rulesStore: {kind: etcd, endpoints: ['https://127.0.0.1:2379'],\n"
                "             tls: {ca: garbage.pem}}\n"
                "routers:\n"
                "  - {name: web, listen: 'tcp:0:interface=127.0.0.1', rules: '/svc => /#/etcd;'}\n"
            )
        out, err = self.capture()
        e = self.assertRaises(SystemExit, Options().parseOptions, ["--config", config, "--check"])
        self.assertEqual(e.code, 1)
        self.assertEqual(
            err.getvalue().splitlines()[1:],
            [
                "namers[0].tls: cannot read %s: No such file or directory"
                % (os.path.abspath(os.path.join(directory, "missing.pem")),),
                "rulesStore.tls: %s: no PEM certificate in it"
                % (os.path.abspath(os.path.join(directory, "garbage.pem")),),
            ],
        )
        self.assertEqual(out.getvalue(), "")

    def test_checkWarnsOfAMissingNamerDirectory(self):
        """
        A file namer whose directory does not exist yet is valid (it may be
        created later), but --check says so, on standard error.
        """
        import os

        out, err = self.capture()
        directory = os.path.abspath(self.mktemp())
        os.mkdir(directory)
        path = os.path.join(directory, "mesh.yaml")
        with open(path, "w") as f:
            f.write(GOOD.replace("namers:\n", "namers:\n  - {kind: file, root: endpoints}\n"))
        e = self.assertRaises(SystemExit, Options().parseOptions, ["--config", path, "--check"])
        self.assertEqual(e.code, 0)
        self.assertEqual(out.getvalue(), path + ": ok\n")
        self.assertEqual(
            err.getvalue(),
            '%s: warning: namers[0].root: "%s" does not exist: this namer knows no service'
            " until it is created\n" % (path, os.path.join(directory, "endpoints")),
        )
        os.mkdir(os.path.join(directory, "endpoints"))
        out, err = self.capture()
        e = self.assertRaises(SystemExit, Options().parseOptions, ["--config", path, "--check"])
        self.assertEqual((e.code, err.getvalue()), (0, ""))

    def test_checkGoodConfigExitsZero(self):
        """
        --check on a valid config prints "ok" and exits 0.
        """
        out = io.StringIO()
        self.patch(sys, "stdout", out)
        e = self.assertRaises(
            SystemExit, Options().parseOptions, ["--config", self.write(GOOD), "--check"]
        )
        self.assertEqual(e.code, 0)
        self.assertIn(": ok", out.getvalue())

    def test_checkBadConfigExitsNonZero(self):
        """
        --check on a bad config prints the errors and exits 1.
        """
        err = io.StringIO()
        self.patch(sys, "stderr", err)
        e = self.assertRaises(
            SystemExit, Options().parseOptions, ["--config", self.write(BAD), "--check"]
        )
        self.assertEqual(e.code, 1)
        self.assertIn("routers[0].timeouts.total", err.getvalue())

    def test_missingFile(self):
        """
        A config file that does not exist is named on standard error, and
        the process exits 1.
        """
        out, err = self.capture()
        e = self.assertRaises(
            SystemExit, Options().parseOptions, ["--config", "/nonexistent/mesh.yaml"]
        )
        self.assertEqual(e.code, 1)
        self.assertEqual(
            err.getvalue(),
            "/nonexistent/mesh.yaml: invalid\n"
            "/nonexistent/mesh.yaml: cannot read the file: No such file or directory\n",
        )

    def test_defaultIsEmbeddedDemo(self):
        """
        Without --config the embedded demo config is used, with its upstreams.
        """
        options = Options()
        options.parseOptions([])
        self.assertTrue(options.demo)
        self.assertEqual([r.name for r in options.meshConfig.routers], ["web"])
        service = makeService(options, reactor=MemoryReactorClock())
        names = [type(s).__name__ for s in service]
        # The admin listener, the router listener and the demo upstreams.
        self.assertGreaterEqual(names.count("StreamServerEndpointService"), 3)

    def test_sampleConfigValid(self):
        """
        etc/meshproxy.yaml, the documented sample, is valid.
        """
        import os

        out, err = self.capture()
        here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        path = os.path.join(here, "etc", "meshproxy.yaml")
        self.assertEqual(cli.main(["check", path]), 0)
        self.assertEqual((out.getvalue(), err.getvalue()), (path + ": ok\n", ""))


class ServiceTests(SynchronousTestCase):
    def test_adminAllowedHostsFromConfig(self):
        """
        The admin API answers as the C{admin.allowedHosts} names, and as no
        other name.
        """
        from treq.testing import StubTreq

        from meshproxy.config import parseConfig

        for allowed, answered in (
            ("[mesh.example]", {"mesh.example:9991": 200, "evil.example": 421}),
            ("[]", {"mesh.example:9991": 421, "127.0.0.1:9991": 200}),
            ('["*"]', {"evil.example": 200}),
        ):
            config = GOOD.replace(
                'admin: {listen: "tcp:9991:interface=127.0.0.1"}',
                'admin: {listen: "tcp:9991:interface=127.0.0.1", allowedHosts: %s}' % allowed,
            )
            _, services = buildServices(parseConfig(config), reactor=MemoryReactorClock())
            [admin] = [s for s in services if getattr(s, "description", "").startswith("admin")]
            client = StubTreq(admin.factory.resource)
            for host, code in answered.items():
                response = self.successResultOf(client.get(
                    "http://127.0.0.1:9991/live", headers={"Host": host}
                ))
                self.assertEqual(response.code, code, (allowed, host))

    def test_listenersBindOnStartAndReadiness(self):
        """
        Every router and the admin API get a listener; the runtime is ready
        only when they are bound.
        """
        from meshproxy.config import parseConfig

        reactor = MemoryReactorClock()
        runtime, services = buildServices(parseConfig(GOOD), reactor=reactor)
        self.assertFalse(runtime.isReady())
        self.assertEqual(len(runtime.waitingFor()), 1)
        for s in services:
            s.privilegedStartService()
        for s in services:
            s.startService()
        ports = sorted(port for port, factory, backlog, interface in reactor.tcpServers)
        self.assertEqual(ports, [4141, 9991])
        # Twisted's default backlog of 50 drops bursts: meshproxy's is 1024.
        self.assertEqual({backlog for _, _, backlog, _ in reactor.tcpServers}, {1024})
        self.assertTrue(runtime.isReady())
        for s in services:
            s.stopService()


TCP = """\
admin: {listen: "tcp:9991:interface=127.0.0.1"}
namers:
  - {kind: static, prefix: /#/static, services: {hello: ["127.0.0.1:9001"], pg: ["127.0.0.1:5432"]}}
routers:
  - name: web
    listen: "tcp:4141:interface=127.0.0.1"
    rules: "/svc => /#/static;"
  - name: db
    protocol: tcp
    listen: "tcp:5433:interface=127.0.0.1"
    destination: /#/static/pg
    loadBalancer: {kind: roundRobin}
    timeouts: {connect: 1s}
    connectRetries: 1
    idleTimeout: 10m
"""


class EndpointStringTests(SynchronousTestCase):
    """
    The listen values become Twisted endpoint strings with meshproxy's
    defaults.
    """

    def test_backlogDefault(self):
        from meshproxy.listeners import _endpointString

        self.assertEqual(
            _endpointString("tcp:4140:interface=127.0.0.1"),
            "tcp:4140:interface=127.0.0.1:backlog=1024",
        )
        self.assertEqual(_endpointString("tcp6:4140"), "tcp6:4140:backlog=1024")
        self.assertEqual(_endpointString("unix:/run/m.sock"), "unix:/run/m.sock:backlog=1024")
        self.assertEqual(
            _endpointString("tls:4143:privateKey=a\\:b.pem"),
            "ssl:4143:privateKey=a\\:b.pem:backlog=1024",
        )

    def test_backlogKept(self):
        from meshproxy.listeners import _endpointString

        self.assertEqual(
            _endpointString("tcp:4140:backlog=7:interface=127.0.0.1"),
            "tcp:4140:backlog=7:interface=127.0.0.1",
        )
        # systemd sockets are bound by systemd: no backlog argument there.
        self.assertEqual(
            _endpointString("systemd:domain=INET:index=0"), "systemd:domain=INET:index=0"
        )


class TcpRouterServiceTests(SynchronousTestCase):
    """
    TCP routers from config text: accepted by the checks, built with their
    listener, shown by the admin API, drained at stop.
    """

    def write(self, text):
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(text)
        return path

    def build(self):
        from meshproxy.config import parseConfig

        reactor = MemoryReactorClock()
        runtime, services = buildServices(parseConfig(TCP), reactor=reactor)
        for s in services:
            s.privilegedStartService()
        for s in services:
            s.startService()
        return reactor, runtime, services

    def test_checkAcceptsTcpRouters(self):
        out = io.StringIO()
        self.patch(sys, "stdout", out)
        e = self.assertRaises(
            SystemExit, Options().parseOptions, ["--config", self.write(TCP), "--check"]
        )
        self.assertEqual(e.code, 0)

    def test_builtWithListener(self):
        """
        The TCP router listens on its own port (behind what reads a
        connection's preamble), is in the runtime's routers, and gets a
        rules store as an HTTP router does.
        """
        from meshproxy.tcp.router import TcpRouter, TcpServerFactory
        from meshproxy.transport.preamble import PreambleFactory

        reactor, runtime, services = self.build()
        ports = sorted(port for port, factory, backlog, interface in reactor.tcpServers)
        self.assertEqual(ports, [4141, 5433, 9991])
        [front] = [f for port, f, _, _ in reactor.tcpServers if port == 5433]
        self.assertIsInstance(front, PreambleFactory)
        factory = front.routerFactory
        self.assertIsInstance(factory, TcpServerFactory)
        router = runtime.routers["db"]
        self.assertIsInstance(router, TcpRouter)
        self.assertIs(factory.router, router)
        self.assertEqual(
            (router.connectTimeout, router.connectRetries, router.idleTimeout), (1.0, 1, 600.0)
        )
        self.assertEqual(sorted(runtime.rulesStores), ["db", "web"])
        self.assertTrue(runtime.isReady())
        state = router.state()
        self.assertEqual(state["protocol"], "tcp")
        [endpoint] = state["boundNames"]["/#/static/pg"]["endpoints"]
        self.assertEqual(endpoint["address"], "127.0.0.1:5432")
        self.assertEqual(
            [(r, n, node.endpoint.port) for r, n, node in runtime.nodes()],
            [("db", "/#/static/pg", 5432)],
        )

    def test_adminApi(self):
        """
        The admin API shows the TCP router's state and rules, and drains
        its endpoints.
        """
        import json

        from treq.testing import StubTreq

        reactor, runtime, services = self.build()
        [admin] = [s for s in services if getattr(s, "description", "").startswith("admin")]
        client = StubTreq(admin.factory.resource)
        base = "http://127.0.0.1:9991"

        def request(method, path, **kwargs):
            response = self.successResultOf(client.request(method, base + path, **kwargs))
            return response.code, json.loads(self.successResultOf(client.content(response)))

        code, body = request("GET", "/admin/state")
        self.assertEqual(code, 200)
        self.assertEqual(body["routers"]["db"]["destination"], "/#/static/pg")
        response = self.successResultOf(client.get(base + "/admin/routers/db/rules"))
        self.assertEqual(response.code, 200)
        self.assertEqual(self.successResultOf(client.content(response)), b"")
        code, body = request(
            "POST",
            "/admin/endpoints/drain",
            data=json.dumps(
                {"router": "db", "name": "/#/static/pg", "address": "127.0.0.1:5432"}
            ).encode(),
            headers={"Content-Type": "application/json"},
        )
        self.assertEqual((code, body), (200, {"draining": True}))
        [endpoint] = runtime.routers["db"].state()["boundNames"]["/#/static/pg"]["endpoints"]
        self.assertEqual(endpoint["state"], "draining")

    def test_stopDrainsThenUnbinds(self):
        """
        Stopping the service stops accepting, waits for open connections up
        to the grace period (then aborts them) and stops the router.
        """
        from twisted.internet.error import ConnectionAborted
        from twisted.internet.testing import StringTransport
        from twisted.python.failure import Failure

        reactor, runtime, services = self.build()
        [front] = [f for port, f, _, _ in reactor.tcpServers if port == 5433]
        factory = front.routerFactory
        conn = factory.buildProtocol(None)
        transport = StringTransport()
        aborted = []
        transport.abortConnection = lambda: (
            aborted.append(True),
            conn.connectionLost(Failure(ConnectionAborted())),
        )
        conn.makeConnection(transport)
        self.assertEqual(len(factory.connections), 1)
        [routerService] = [
            s for s in services if getattr(s, "factory", None) is factory and hasattr(s, "grace")
        ]
        d = routerService.stopService()
        self.assertNoResult(d)
        self.assertIsNone(factory.buildProtocol(None))
        reactor.advance(routerService.grace)
        self.successResultOf(d)
        self.assertEqual(aborted, [True])
        self.assertEqual(runtime.routers["db"].state()["boundNames"], {})


class TwistdProcessTests(SynchronousTestCase):
    """
    The real C{twistd meshproxy} command in a child process, run from this
    source tree: what a user sees on the terminal. None of these gets as
    far as binding a port.
    """

    def twistd(self, *args, cwd=None):
        import os
        import subprocess

        here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        result = subprocess.run(
            [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", *args],
            cwd=cwd or here,
            env={**os.environ, "PYTHONPATH": here},
            capture_output=True,
            text=True,
            timeout=60,
        )
        return result.returncode, result.stdout, result.stderr

    def test_badConfigErrorsFirstAndAlone(self):
        """
        twistd does not print its usage text before the errors of a bad
        config: they are all there is, and the exit status is 1.
        """
        import os

        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            f.write(BAD)
        self.assertEqual(
            self.twistd("--nodaemon", "meshproxy", "--config", path),
            (
                1,
                "",
                path + ": invalid\n"
                'routers[0].timeots: unknown key (did you mean "timeouts"?)\n'
                'routers[0].timeouts.total: expected a duration like "2s", got "fast"\n',
            ),
        )

    def portInUse(self):
        """
        A port bound and listened on by this test on 127.0.0.1.
        """
        import socket

        sock = socket.socket()
        self.addCleanup(sock.close)
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        return sock.getsockname()[1]

    def assertEndsWithTheLine(self, config, line):
        """
        twistd with C{config}, run in a directory of its own (where twistd
        writes its pid file), exits 1 with C{line} once, and no traceback.
        """
        import os

        directory = os.path.abspath(self.mktemp())
        os.mkdir(directory)
        path = os.path.join(directory, "mesh.yaml")
        with open(path, "w") as f:
            f.write(config)
        code, out, err = self.twistd("--nodaemon", "meshproxy", "--config", path, cwd=directory)
        both = out + err
        self.assertEqual(code, 1, both)
        self.assertNotIn("Traceback", both)
        self.assertEqual(
            [text.split("] ", 1)[-1] for text in both.splitlines() if "cannot listen" in text],
            [line],
            both,
        )
        # twistd removed its pid file, as after a clean stop.
        self.assertNotIn("twistd.pid", os.listdir(directory))

    def test_routerPortInUse(self):
        """
        A router port in use ends the process with one line naming the
        router and the endpoint, exit status 1 and no traceback.
        """
        port = self.portInUse()
        config = GOOD.replace("tcp:9991:", "tcp:0:").replace("tcp:4141:", "tcp:%d:" % port)
        self.assertEndsWithTheLine(
            config,
            "router web: cannot listen on tcp:%d:interface=127.0.0.1: address already in use"
            % (port,),
        )

    def test_adminPortInUse(self):
        port = self.portInUse()
        config = GOOD.replace("tcp:9991:", "tcp:%d:" % port).replace("tcp:4141:", "tcp:0:")
        self.assertEndsWithTheLine(
            config,
            "admin: cannot listen on tcp:%d:interface=127.0.0.1: address already in use"
            % (port,),
        )

    def test_versionAndHelp(self):
        import meshproxy

        self.assertEqual(
            self.twistd("meshproxy", "--version"),
            (0, "meshproxy %s\n" % (meshproxy.__version__,), ""),
        )
        code, out, err = self.twistd("meshproxy", "--help")
        self.assertEqual((code, err), (0, ""))
        self.assertIn("--config=", out)


class _SlowNamer:
    """
    A namer whose first load ends when the test says so.
    """

    def __init__(self, prefix):
        from meshproxy.discovery.interfaces import FirstLoad

        self.prefix = prefix
        self._load = FirstLoad()

    @property
    def loaded(self):
        return self._load.done

    def whenLoaded(self):
        return self._load.wait()

    def finish(self):
        self._load.finish()


class _FakeListener:
    """
    A listener bound when the test says so.
    """

    def __init__(self, description):
        self.description = description
        self.bound = False
        self._waiting = []

    def whenBound(self):
        from twisted.internet.defer import Deferred, succeed

        if self.bound:
            return succeed(self)
        d = Deferred()
        self._waiting.append(d)
        return d

    def bind(self):
        self.bound = True
        for d in self._waiting:
            d.callback(self)


#: The modules of the process's own lines (options, runtime, listeners).
PROCESS_LOGS = frozenset(["meshproxy.tap", "meshproxy.runtime", "meshproxy.listeners"])


def _capture(testCase, namespaces=PROCESS_LOGS):
    """
    Collect the text of the events logged in C{namespaces} from now on.
    """
    from twisted.logger import formatEvent, globalLogPublisher

    events = []

    def observer(event):
        if event.get("log_namespace") in namespaces:
            events.append(event)

    globalLogPublisher.addObserver(observer)
    testCase.addCleanup(globalLogPublisher.removeObserver, observer)

    def texts():
        found = [formatEvent(event) for event in events]
        del events[:]
        return found

    return texts


class ReadinessTests(SynchronousTestCase):
    """
    L{Runtime.isReady} and L{Runtime.waitingFor}: every listener bound and
    every namer loaded once, or 10 s after the start with the namers still
    loading named. On a fake clock.
    """

    def setUp(self):
        from twisted.internet.task import Clock

        from meshproxy.runtime import Runtime

        self.clock = Clock()
        self.runtime = Runtime(reactor=self.clock)
        self.listener = _FakeListener("web (tcp:4140)")
        self.namer = _SlowNamer("/#/slow")
        self.runtime.listeners.append(self.listener)
        self.runtime.namers.append(self.namer)
        self.logged = _capture(self)

    def start(self):
        self.runtime.startService()
        self.addCleanup(lambda: self.runtime.running and self.runtime.stopService())

    def test_readyOnceBoundAndLoaded(self):
        """
        Ready once the listener is bound and the namer loaded, whatever the
        order; then the one "ready" line is logged and no timer is left.
        """
        self.start()
        self.assertFalse(self.runtime.isReady())
        self.assertEqual(self.runtime.waitingFor(), ["listener web (tcp:4140)", "namer /#/slow"])
        self.namer.finish()
        self.assertFalse(self.runtime.isReady())
        self.assertEqual(self.runtime.waitingFor(), ["listener web (tcp:4140)"])
        self.listener.bind()
        self.assertTrue(self.runtime.isReady())
        self.assertEqual(self.runtime.waitingFor(), [])
        self.assertEqual(self.logged(), ["ready: 1 listener bound, 1 namer loaded"])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_readyAfterTenSecondsNamingTheLaggards(self):
        """
        A namer still loading 10 s after the start no longer holds readiness
        back: the process is ready, and both C{waitingFor} and the log name
        the namer.
        """
        self.start()
        self.listener.bind()
        self.clock.advance(9.9)
        self.assertFalse(self.runtime.isReady())
        self.assertEqual(self.runtime.waitingFor(), ["namer /#/slow"])
        self.assertEqual(self.logged(), [])
        self.clock.advance(0.1)
        self.assertTrue(self.runtime.isReady())
        self.assertEqual(
            self.runtime.waitingFor(), ["namer /#/slow (still loading after 10 s)"]
        )
        self.assertEqual(
            self.logged(), ["ready after 10 s without waiting any longer for namer /#/slow"]
        )
        self.namer.finish()
        self.assertEqual(self.runtime.waitingFor(), [])
        self.assertTrue(self.runtime.isReady())

    def test_listenersAreNeverWaived(self):
        """
        The fallback is for namers only: an unbound listener keeps the
        process unready after 10 s.
        """
        self.start()
        self.namer.finish()
        self.clock.advance(60)
        self.assertFalse(self.runtime.isReady())
        self.assertEqual(self.runtime.waitingFor(), ["listener web (tcp:4140)"])

    def test_notReadyBeforeTheStart(self):
        """
        Before the start the clock does not run: however late it is, loading
        namers hold readiness back.
        """
        self.listener.bind()
        self.clock.advance(100)
        self.assertFalse(self.runtime.isReady())

    def test_stopCancelsTheTimer(self):
        self.start()
        self.runtime.stopService()
        self.assertEqual(self.clock.getDelayedCalls(), [])


SLOW = """\
admin: {listen: "tcp:9991:interface=127.0.0.1"}
namers:
  - {kind: static, prefix: /#/static, services: {hello: ["127.0.0.1:9001"]}}
  - {kind: file, prefix: /#/fs, root: %(root)s}
routers:
  - name: web
    listen: "tcp:4141:interface=127.0.0.1"
    rules: "/svc => /#/static;"
"""


class ReadyRouteTests(SynchronousTestCase):
    """
    C{GET /ready} of a process built from a config, on a memory reactor.
    """

    def build(self, slowPrefix=None):
        import os

        from twisted.internet.testing import MemoryReactorClock

        from meshproxy import runtime as tap
        from meshproxy.config import parseConfig

        root = os.path.abspath(self.mktemp())
        os.mkdir(root)
        with open(os.path.join(root, "users"), "w") as f:
            f.write("127.0.0.1:9002\n")
        slow = []
        if slowPrefix is not None:
            original = tap.makeNamer

            def makeNamer(config, *, reactor):
                namer = original(config, reactor=reactor)
                if config.prefix == slowPrefix:
                    # The file namer, with a first load that does not end.
                    from meshproxy.discovery.interfaces import FirstLoad

                    namer._firstLoad = FirstLoad()
                    namer.scan = lambda: None
                    slow.append(namer)
                return namer

            self.patch(tap, "makeNamer", makeNamer)
        self.reactor = MemoryReactorClock()
        runtime, services = buildServices(
            parseConfig(SLOW % {"root": root}), reactor=self.reactor
        )
        [admin] = [s for s in services if getattr(s, "description", "").startswith("admin")]
        return runtime, services, admin, slow

    def ready(self, admin):
        import json

        from treq.testing import StubTreq

        client = StubTreq(admin.factory.resource)
        response = self.successResultOf(client.get("http://127.0.0.1:9991/ready"))
        return response.code, json.loads(self.successResultOf(client.content(response)))

    def start(self, services):
        for s in services:
            s.privilegedStartService()
        for s in services:
            s.startService()
        self.addCleanup(lambda: [s.stopService() for s in reversed(services)])

    def test_readyWhenStartedWithAFileNamer(self):
        """
        A file namer's first load is the scan of its directory at start: the
        process is ready as soon as it has started.
        """
        runtime, services, admin, _ = self.build()
        self.assertEqual(
            self.ready(admin),
            (503, {"ready": False, "waiting": [
                "listener web (tcp:4141:interface=127.0.0.1)", "namer /#/fs"]}),
        )
        self.start(services)
        self.assertEqual(self.ready(admin), (200, {"ready": True}))

    def test_slowNamerNamedThenWaived(self):
        """
        A namer whose first load does not end is named by C{/ready} (503)
        until 10 s after the start, then the process is ready.
        """
        runtime, services, admin, [slow] = self.build(slowPrefix="/#/fs")
        self.start(services)
        self.assertEqual(
            self.ready(admin), (503, {"ready": False, "waiting": ["namer /#/fs"]})
        )
        self.reactor.advance(10)
        code, body = self.ready(admin)
        self.assertEqual((code, body["ready"]), (200, True))
        self.assertEqual(runtime.waitingFor(), ["namer /#/fs (still loading after 10 s)"])


class _RefusingReactor(MemoryReactorClock):
    """
    A memory reactor on which some ports cannot be bound.
    """

    def __init__(self, refused):
        MemoryReactorClock.__init__(self)
        self.refused = refused

    def listenTCP(self, port, factory, backlog=50, interface=""):
        from twisted.internet.error import CannotListenError

        if port in self.refused:
            raise CannotListenError(interface, port, self.refused[port])
        return MemoryReactorClock.listenTCP(self, port, factory, backlog, interface)


class ListenerTests(SynchronousTestCase):
    """
    Listeners: bind errors in the proxy's words, naming the router and the
    endpoint; one log line per listener naming the same.
    """

    def test_listenProblemWords(self):
        import errno
        import socket

        from twisted.internet.error import CannotListenError

        from meshproxy.listeners import listenProblem

        def refused(code, text):
            return CannotListenError("127.0.0.1", 4140, OSError(code, text))

        for error, words in (
            (refused(errno.EADDRINUSE, "Address already in use"), "address already in use"),
            (refused(errno.EADDRNOTAVAIL, "Cannot assign requested address"),
             "no such address on this host"),
            (refused(errno.EACCES, "Permission denied"),
             "permission denied (a port below 1024 needs root or CAP_NET_BIND_SERVICE)"),
            (CannotListenError("nowhere", 4140, socket.gaierror(-2, "Name or service not known")),
             "unknown interface address"),
            (OSError(errno.ENOENT, "No such file or directory"), "no such file or directory"),
            (OSError(errno.EMFILE, "Too many open files"), "too many open files"),
            (ValueError("bad endpoint"), "bad endpoint"),
            (RuntimeError(), "RuntimeError"),
        ):
            self.assertEqual(listenProblem(error), words)

    def test_bindErrorNamesRouterAndEndpoint(self):
        """
        A router's or the admin API's listener that cannot be bound raises
        L{CannotListen}, whose text names the owner, the endpoint as the
        config gives it, and the reason.
        """
        import errno

        from meshproxy.config import parseConfig
        from meshproxy.listeners import CannotListen

        busy = OSError(errno.EADDRINUSE, "Address already in use")
        for port, line in (
            (4141, "router web: cannot listen on tcp:4141:interface=127.0.0.1:"
                   " address already in use"),
            (9991, "admin: cannot listen on tcp:9991:interface=127.0.0.1:"
                   " address already in use"),
        ):
            reactor = _RefusingReactor({port: busy})
            _, services = buildServices(parseConfig(GOOD), reactor=reactor)
            listener = [
                s for s in services if getattr(s, "listen", "").startswith("tcp:%d" % port)
            ][0]
            e = self.assertRaises(CannotListen, listener.privilegedStartService)
            self.assertEqual(str(e), line)
            self.assertFalse(listener.bound)
            self.successResultOf(listener.stopService())

    def test_lateBindErrorStopsTheProcess(self):
        """
        An endpoint that fails after C{listen} returned (none that Twisted
        ships does) cannot stop the start any more: the line is logged and
        the reactor stopped.
        """
        import errno

        from twisted.internet.defer import Deferred
        from twisted.internet.error import CannotListenError
        from twisted.internet.protocol import Factory

        from meshproxy.listeners import _ListenerService

        class LateEndpoint:
            def listen(self, factory):
                self.waiting = Deferred()
                return self.waiting

        endpoint = LateEndpoint()
        reactor = MemoryReactorClock()
        listener = _ListenerService(
            endpoint, Factory(), owner="router web", listen="systemd:domain=INET:index=0",
            name="web", reactor=reactor,
        )
        logged = _capture(self)
        listener.privilegedStartService()
        endpoint.waiting.errback(
            CannotListenError("", 0, OSError(errno.EBADF, "Bad file descriptor"))
        )
        self.assertEqual(logged(), [
            "router web: cannot listen on systemd:domain=INET:index=0: bad file descriptor"
        ])
        self.assertFalse(listener.bound)
        reactor.advance(0)
        self.assertTrue(reactor.hasStopped)

    def test_processEndsWithTheLineAlone(self):
        """
        Under twistd, the top service logs the line, and the exception then
        ends the process (status 1) without a traceback: the hook Python
        calls prints nothing for it, and still prints other errors.
        """
        from meshproxy.listeners import CannotListen
        from meshproxy.tap import _ProcessService

        class Failing(Service):
            def privilegedStartService(self):
                raise CannotListen("router web", "tcp:4140", "address already in use")

        printed = []
        self.patch(sys, "excepthook", lambda *args: printed.append(args))
        top = _ProcessService()
        Failing().setServiceParent(top)
        logged = _capture(self)
        e = self.assertRaises(CannotListen, top.privilegedStartService)
        self.assertEqual(
            logged(), ["router web: cannot listen on tcp:4140: address already in use"]
        )
        sys.excepthook(CannotListen, e, None)
        self.assertEqual(printed, [])
        other = ValueError("unexpected")
        sys.excepthook(ValueError, other, None)
        self.assertEqual(printed, [(ValueError, other, None)])

    def test_listeningLines(self):
        """
        Each bound listener says so in one line naming its owner and its
        endpoint; the factories say nothing more (not "Starting factory").
        """
        from meshproxy.config import parseConfig

        reactor = MemoryReactorClock()
        runtime, services = buildServices(parseConfig(TCP), reactor=reactor)
        logged = _capture(self)
        for s in services:
            s.privilegedStartService()
        # A real port starts its factory as it listens, and stops it after:
        # neither the factory listened with nor the router's behind it says
        # so, whatever its logger's namespace.
        from twisted.logger import formatEvent, globalLogPublisher

        said: list[str] = []

        def sayings(event):
            said.append(formatEvent(event))

        globalLogPublisher.addObserver(sayings)
        try:
            for _, factory, _, _ in reactor.tcpServers:
                factory.doStart()
                factory.doStop()
        finally:
            globalLogPublisher.removeObserver(sayings)
        self.assertEqual([line for line in said if "factory" in line], [])
        self.assertEqual(logged(), [
            "router web listening on tcp:4141:interface=127.0.0.1",
            "router db listening on tcp:5433:interface=127.0.0.1",
            "admin listening on tcp:9991:interface=127.0.0.1",
        ])
        for _, factory, _, _ in reactor.tcpServers:
            self.assertFalse(factory.noisy)
        self.assertEqual(
            sorted(factory.logPrefix() for _, factory, _, _ in reactor.tcpServers),
            ["admin", "router db", "router web"],
        )

    def test_chosenPortShown(self):
        """
        For C{tcp:0} the line adds the port the system chose.
        """
        from meshproxy.listeners import _actualPort

        class Port:
            def getHost(self):
                from twisted.internet.address import IPv4Address

                return IPv4Address("TCP", "127.0.0.1", 43210)

        self.assertEqual(_actualPort("tcp:0:interface=127.0.0.1", Port()), " (port 43210)")
        self.assertEqual(_actualPort("tcp:4140", Port()), "")
        self.assertEqual(_actualPort("unix:/run/m.sock", Port()), "")


class SavedRulesLineTests(SynchronousTestCase):
    """
    At start, each router (HTTP and TCP) says where rules changed through
    the admin API are kept and how to go back to the config's.
    """

    def test_whereAndHowBack(self):
        import os

        from meshproxy.config import loadConfig

        directory = os.path.abspath(self.mktemp())
        os.mkdir(directory)
        path = os.path.join(directory, "mesh.yaml")
        with open(path, "w") as f:
            f.write(TCP)
        state = os.path.join(directory, "rules-web.json")
        command = "meshproxy rules reset web --config " + path
        logged = _capture(self)
        _, services = buildServices(loadConfig(path), reactor=MemoryReactorClock(), configPath=path)
        self.assertEqual(logged(), [
            "router %s: rules changed through the admin API will be saved in %s and win"
            " over the config's at the next start (undo: \"%s\", or delete that file,"
            " then restart)" % (name, os.path.join(directory, "rules-%s.json" % (name,)),
                                "meshproxy rules reset %s --config %s" % (name, path))
            for name in ("web", "db")
        ])
        runtime = services[0]
        runtime.rulesStores["web"].replace("/svc => /#/static;\n/x => /#/static;\n", "*", "test")
        buildServices(loadConfig(path), reactor=MemoryReactorClock(), configPath=path)
        self.assertEqual(logged()[0], (
            "router web: using the rules saved through the admin API in %s, not the"
            " config's; to go back to the config's rules, run \"%s\" (or delete that"
            " file) and restart" % (state, command)
        ))

    def test_demoKeepsThemInMemory(self):
        logged = _capture(self)
        options = Options()
        options.parseOptions([])
        makeService(options, reactor=MemoryReactorClock())
        self.assertEqual(logged(), [
            "router web: rules changed through the admin API are kept in memory only"
            " (lost when meshproxy stops)",
        ])
