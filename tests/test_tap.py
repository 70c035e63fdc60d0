"""
The twistd plugin: options, config checking before anything binds, and the
service tree.
"""

import io
import sys

from twisted.application.service import IServiceMaker
from twisted.internet.testing import MemoryReactorClock
from twisted.plugin import getPlugins
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from meshproxy import cli
from meshproxy.tap import Options, buildServices, makeService

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
        from meshproxy.tap import _endpointString

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
        from meshproxy.tap import _endpointString

        self.assertEqual(
            _endpointString("tcp:4140:backlog=7:interface=127.0.0.1"),
            "tcp:4140:backlog=7:interface=127.0.0.1",
        )
        # systemd sockets are bound by systemd: no backlog argument there.
        self.assertEqual(_endpointString("systemd:domain=INET:index=0"), "systemd:domain=INET:index=0")


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
        The TCP router listens on its own port, is in the runtime's routers,
        and gets no rules store.
        """
        from meshproxy.tcp.router import TcpRouter, TcpServerFactory

        reactor, runtime, services = self.build()
        ports = sorted(port for port, factory, backlog, interface in reactor.tcpServers)
        self.assertEqual(ports, [4141, 5433, 9991])
        [factory] = [f for port, f, _, _ in reactor.tcpServers if port == 5433]
        self.assertIsInstance(factory, TcpServerFactory)
        router = runtime.routers["db"]
        self.assertIsInstance(router, TcpRouter)
        self.assertIs(factory.router, router)
        self.assertEqual(
            (router.connectTimeout, router.connectRetries, router.idleTimeout), (1.0, 1, 600.0)
        )
        self.assertEqual(sorted(runtime.rulesStores), ["web"])
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
        The admin API shows the TCP router's state, drains its endpoints,
        and answers 404 for the rules it does not have.
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
        code, body = request("GET", "/admin/routers/db/rules")
        self.assertEqual(code, 404)
        self.assertIn("does not support", body["error"])
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
        [factory] = [f for port, f, _, _ in reactor.tcpServers if port == 5433]
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

    def twistd(self, *args):
        import os
        import subprocess

        here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        result = subprocess.run(
            [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", *args],
            cwd=here,
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

    def test_versionAndHelp(self):
        import meshproxy

        self.assertEqual(
            self.twistd("meshproxy", "--version"), (0, "meshproxy %s\n" % (meshproxy.__version__,), "")
        )
        code, out, err = self.twistd("meshproxy", "--help")
        self.assertEqual((code, err), (0, ""))
        self.assertIn("--config=", out)
