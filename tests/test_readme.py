"""
The README's commands hold: the sample config (C{etc/meshproxy.yaml}) runs
as it stands beside the demo, and every router in it answers the curl the
README shows for it; the demo's tour answers as the README says; the mutual
TLS tour (C{etc/mtls-inbound.yaml}, C{etc/mtls-outbound.yaml}, certificates
from C{meshproxy certs}) answers as the README says.

The proxies run in this process on free loopback ports, with demo upstreams
on free ports too: the configs are the shipped ones, with only their ports
changed. The README's command lines run as they are written, in bash, with
only the ports changed.
"""

import os
import re
import shutil
import sys

from twisted.internet import defer, reactor
from twisted.internet.utils import getProcessOutputAndValue
from twisted.logger import formatEvent, globalLogPublisher
from twisted.protocols.policies import WrappingFactory
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from meshproxy.demo import DEMO_UPSTREAMS, demoConfigText, demoUpstreamSite, endpointsRoot

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(HERE, "README.md")
SAMPLE = os.path.join(HERE, "etc", "meshproxy.yaml")
MTLS_INBOUND = os.path.join(HERE, "etc", "mtls-inbound.yaml")
MTLS_OUTBOUND = os.path.join(HERE, "etc", "mtls-outbound.yaml")

#: The sample's ports, as the README shows them: router or "admin" by port.
SAMPLE_PORTS = {4150: "web", 4151: "tcp", 9991: "admin"}
#: The demo's ports.
DEMO_PORTS = {4140: "web", 9990: "admin"}
#: The mutual TLS tour's ports: each proxy's.
INBOUND_PORTS = {4161: "inbound", 9993: "admin"}
OUTBOUND_PORTS = {4160: "outbound", 9992: "admin"}

_LISTEN = re.compile(r'"tcp:(\d+):interface=127\.0\.0\.1"')
_LOCAL = re.compile(r"127\.0\.0\.1:(\d+)")


def readmeCommands():
    """
    The command lines of the README's C{sh} blocks, continuation lines
    joined, in order.
    """
    with open(README, encoding="utf-8") as f:
        text = f.read()
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", text, re.S):
        line = ""
        for raw in block.splitlines():
            if raw.startswith(" ") and not line and commands and raw.strip().startswith("#"):
                continue  # a comment continued on its own line
            if raw.rstrip().endswith("\\"):
                line += raw.rstrip()[:-1] + " "
                continue
            line += raw
            if line.strip():
                commands.append(line.strip())
            line = ""
    return commands


def _listenPorts(text):
    return {int(port) for port in _LISTEN.findall(text)}


class SampleBesideTheDemoTests(SynchronousTestCase):
    """
    The sample and the demo run at the same time: the sample's upstreams
    are the demo's, and no port is used twice.
    """

    def test_portsDoNotClash(self):
        with open(SAMPLE) as f:
            sample = _listenPorts(f.read())
        demo = _listenPorts(demoConfigText())
        upstreams = {port for ports in DEMO_UPSTREAMS.values() for port in ports}
        self.assertEqual(sample, set(SAMPLE_PORTS))
        self.assertEqual(demo, set(DEMO_PORTS))
        self.assertEqual(sample & (demo | upstreams), set())

    def test_mtlsPortsDoNotClash(self):
        """
        The mutual TLS tour's two proxies run beside the demo and the
        sample: no port of theirs is one of those, or the other's.
        """
        with open(MTLS_INBOUND) as f:
            inbound = _listenPorts(f.read())
        with open(MTLS_OUTBOUND) as f:
            outbound = _listenPorts(f.read())
        self.assertEqual(inbound, set(INBOUND_PORTS))
        self.assertEqual(outbound, set(OUTBOUND_PORTS))
        taken = set(SAMPLE_PORTS) | set(DEMO_PORTS) | {4141}
        taken |= {port for ports in DEMO_UPSTREAMS.values() for port in ports}
        self.assertEqual((inbound | outbound) & taken, set())
        self.assertEqual(inbound & outbound, set())

    def test_mtlsInboundServesTheDemosHello(self):
        """
        The inbound proxy of the mutual TLS tour routes to the demo's hello
        upstreams; the outbound one, to the inbound proxy.
        """
        from meshproxy.demo import DEMO_UPSTREAMS

        with open(MTLS_INBOUND) as f:
            inbound = {int(port) for port in _LOCAL.findall(f.read())}
        with open(MTLS_OUTBOUND) as f:
            outbound = {int(port) for port in _LOCAL.findall(f.read())}
        self.assertEqual(inbound - set(INBOUND_PORTS), set(DEMO_UPSTREAMS["hello"]))
        self.assertEqual(outbound - set(OUTBOUND_PORTS), {4161})

    def test_upstreamsAreTheDemos(self):
        """
        Every address the sample routes to (its endpoint files and its
        static namer) is one of the demo's upstreams.
        """
        from meshproxy.config import loadConfig

        upstreams = {port for ports in DEMO_UPSTREAMS.values() for port in ports}
        config = loadConfig(SAMPLE)
        addresses = set()
        for namer in config.namers:
            if namer.kind == "file":
                for name in os.listdir(namer.root):
                    with open(os.path.join(namer.root, name)) as f:
                        addresses.update(_LOCAL.findall(f.read()))
            else:
                for _, endpoints in namer.services:
                    addresses.update(str(port) for host, port, _ in endpoints)
        self.assertTrue(addresses)
        self.assertLessEqual({int(port) for port in addresses}, upstreams)

    def test_readmeHasACurlForEveryRouter(self):
        """
        The README shows a curl for each router of the sample and for its
        admin API.
        """
        from meshproxy.config import loadConfig

        shown = set()
        for command in readmeCommands():
            if command.startswith("curl "):
                for port in _LOCAL.findall(command):
                    shown.add(SAMPLE_PORTS.get(int(port)))
        routers = {router.name for router in loadConfig(SAMPLE).routers}
        self.assertLessEqual(routers | {"admin"}, shown)

    def test_noMacOnlyCommands(self):
        """
        The README works on Linux: no C{open URL}.
        """
        for command in readmeCommands():
            self.assertFalse(command.startswith("open "), command)


class _Tracked(WrappingFactory):
    """
    An upstream site whose connections can all be closed and waited for, so
    that a test leaves a clean reactor.
    """

    def __init__(self, wrapped):
        WrappingFactory.__init__(self, wrapped)
        self._waiting = []

    def unregisterProtocol(self, p):
        WrappingFactory.unregisterProtocol(self, p)
        if not self.protocols:
            waiting, self._waiting = self._waiting, []
            for d in waiting:
                d.callback(None)

    def closeAll(self):
        if not self.protocols:
            return defer.succeed(None)
        d = defer.Deferred()
        self._waiting.append(d)
        for p in list(self.protocols):
            p.transport.loseConnection()
        return d


class ReadmeCommandsTests(TestCase):
    """
    The README's curls (and C{meshproxy explain}) against the sample and
    the demo, on free ports.
    """

    timeout = 60

    def setUp(self):
        self.curl = shutil.which("curl")
        self.bash = shutil.which("bash")
        if self.curl is None or self.bash is None:
            raise SkipTest("curl and bash are needed to run the README's commands")
        self.directory = os.path.abspath(self.mktemp())
        os.mkdir(self.directory)
        self.portMap = {}
        for name, ports in sorted(DEMO_UPSTREAMS.items()):
            for i, port in enumerate(ports, 1):
                factory = _Tracked(demoUpstreamSite("%s-%d" % (name, i)))
                listening = reactor.listenTCP(0, factory, interface="127.0.0.1")
                self.addCleanup(listening.stopListening)
                self.addCleanup(factory.closeAll)
                self.portMap[port] = listening.getHost().port

    def upstreamsMoved(self, text):
        """
        C{text} with the demo upstreams' addresses moved to this test's.
        """
        return _LOCAL.sub(
            lambda m: "127.0.0.1:%d" % (self.portMap.get(int(m.group(1)), int(m.group(1))),),
            text,
        )

    def endpointsCopy(self, source, name):
        """
        A copy of an endpoints directory pointing at this test's upstreams.
        """
        target = os.path.join(self.directory, name, "endpoints")
        os.makedirs(target)
        for entry in os.listdir(source):
            with open(os.path.join(source, entry)) as f:
                text = f.read()
            with open(os.path.join(target, entry), "w") as f:
                f.write(self.upstreamsMoved(text))
        return os.path.dirname(target)

    @defer.inlineCallbacks
    def start(self, text, base, expectedListeners):
        """
        Run a config, every listener moved to a free port.

        @return: a mapping of the config's port to the port listened on.
        """
        from meshproxy.config import parseConfig
        from meshproxy.runtime import buildServices
        from tests.admin_support import RunningProxy

        original = [int(port) for port in _LISTEN.findall(text)]
        self.assertEqual(sorted(original), sorted(expectedListeners))
        # The config refuses two listeners of the same text: port 0 is
        # written a different way for each.
        forms = iter([
            '"tcp:0:interface=127.0.0.1"',
            '"tcp:port=0:interface=127.0.0.1"',
            '"tcp:interface=127.0.0.1:port=0"',
        ])
        text = _LISTEN.sub(lambda m: next(forms), self.upstreamsMoved(text))
        config = parseConfig(text, source=os.path.join(base, "meshproxy.yaml"), baseDirectory=base)
        runtime, services = buildServices(
            config, reactor=reactor, configPath=os.path.join(base, "meshproxy.yaml")
        )
        proxy = RunningProxy(runtime, services)
        self.addCleanup(proxy.stop)
        for service in services:
            service.privilegedStartService()
        for service in services:
            service.startService()
        ports = {}
        listeners = [s for s in services if hasattr(s, "whenBound")]
        for listener in listeners:
            port = yield listener.whenBound()
            name = "admin" if listener.owner == "admin" else listener.owner.split(" ", 1)[1]
            [configured] = [p for p, n in expectedListeners.items() if n == name]
            ports[configured] = port.getHost().port
        self.assertTrue(runtime.isReady(), runtime.waitingFor())
        return ports

    @defer.inlineCallbacks
    def shell(self, command, ports, cwd=HERE):
        """
        Run a README command line in bash, its ports moved.

        @param cwd: the directory it runs in.
        @return: its standard output as text.
        """
        moved = _LOCAL.sub(
            lambda m: "127.0.0.1:%d" % (ports.get(int(m.group(1)), int(m.group(1))),), command
        )
        if moved.startswith("meshproxy "):
            moved = "%s -m meshproxy.cli %s" % (sys.executable, moved[len("meshproxy "):])
            if " explain " in moved:
                # explain asks the demo's admin API, moved too.
                moved = moved.replace(
                    " explain ", " explain --admin http://127.0.0.1:%d " % (ports[9990],), 1
                )
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "PYTHONPATH": HERE,
            "LANG": "C.UTF-8",
        }
        out, err, code = yield getProcessOutputAndValue(
            self.bash, ["-c", "set -o pipefail; " + moved], env=env, path=cwd
        )
        self.assertEqual(code, 0, (command, out, err))
        return out.decode("utf-8")

    @defer.inlineCallbacks
    def test_sampleAnswersEveryReadmeCurl(self):
        """
        The sample, as it stands (only its ports moved), answers each
        README curl aimed at it: each router, and the admin API.
        """
        with open(SAMPLE) as f:
            text = f.read()
        base = self.endpointsCopy(os.path.join(HERE, "etc", "endpoints"), "sample")
        ports = yield self.start(text, base, SAMPLE_PORTS)
        expected = {
            "curl -H 'Host: hello' http://127.0.0.1:4150/": r"hello-[12]: GET /\n",
            "curl -H 'Host: users' http://127.0.0.1:4150/": r"hello-[12]: GET /\n",
            "curl http://127.0.0.1:4151/": r"world-1: GET /\n",
            "curl http://127.0.0.1:9991/ready": r'\{"ready": true\}\n',
        }
        ran = set()
        for command in readmeCommands():
            used = {int(p) for p in _LOCAL.findall(command)}
            if not used & set(SAMPLE_PORTS):
                continue
            key = command.split("#", 1)[0].strip()
            self.assertIn(key, expected, "a README command this test does not know")
            out = yield self.shell(key, ports)
            self.assertRegex(out, "^" + expected[key] + "$")
            ran.add(key)
        self.assertEqual(ran, set(expected))

    @defer.inlineCallbacks
    def test_demoTour(self):
        """
        The demo (its config, only its ports moved) answers the tour's
        commands as the README says, in order: the rules change included.
        """
        base = self.endpointsCopy(endpointsRoot(), "demo")
        text = demoConfigText().replace(
            '"%s"' % (endpointsRoot().replace("\\", "/"),),
            '"%s"' % (os.path.join(base, "endpoints"),),
        )
        ports = yield self.start(text, base, DEMO_PORTS)
        hello = r"hello-[12]: GET /\n"
        expected = [
            ("curl -H 'Host: hello' http://127.0.0.1:4140/", hello),
            (
                "seq 200 | xargs -P 20 -I{} curl -s -H 'Host: hello'",
                r"(\s*\d+ hello-[12]: GET /\n){1,2}",
            ),
            ("curl -H 'Host: world' http://127.0.0.1:4140/x", r"world-1: GET /x\n"),
            ("curl --http2-prior-knowledge -H 'Host: hello'", hello),
            ("curl -i -H 'Host: nope'", r"HTTP/1.1 503 .*mesh-err: no-route\r\n.*"),
            ("curl http://127.0.0.1:9990/admin/state", r'\{"routers": .*\n'),
            ("curl http://127.0.0.1:9990/metrics", r"# HELP .*"),
            ("curl http://127.0.0.1:9990/ready", r'\{"ready": true\}\n'),
            ("curl -i http://127.0.0.1:9990/admin/routers/web/rules",
             r'HTTP/1.1 200 .*ETag: "23bff2d69586afef"\r\n.*/svc => /#/fs;\n'),
            ("curl -X PUT -H 'If-Match: \"23bff2d69586afef\"'", r'\{.*"version": .*\}\n'),
            ("curl -H 'Host: greet' http://127.0.0.1:4140/", hello),
            ("meshproxy explain web --host greet", r"router web: /svc/greet\n.*/#/fs/hello.*"),
        ]
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        commands = [c for c in readmeCommands() if c.startswith(("curl ", "seq ", "meshproxy "))]
        tour = [
            c for c in commands
            if {int(p) for p in _LOCAL.findall(c)} & set(DEMO_PORTS)
            or c.startswith("meshproxy explain ")
        ]
        self.assertEqual(len(tour), len(expected), tour)
        for command, (start, pattern) in zip(tour, expected, strict=True):
            self.assertTrue(command.startswith(start), (command, start))
            out = yield self.shell(command, ports)
            self.assertRegex(out, re.compile("^" + pattern + "$", re.S), command)
        # Some 215 requests over pooled connections, and not a line per
        # connection at the default level.
        noise = [
            formatEvent(event) for event in events
            if re.search(r"(Starting|Stopping) factory|Timing out client|is gone",
                         formatEvent(event) or "")
        ]
        self.assertEqual(noise, [])

    @defer.inlineCallbacks
    def cliHasCerts(self):
        """
        Whether this checkout's C{meshproxy} command has C{certs}.
        """
        out, err, code = yield getProcessOutputAndValue(
            sys.executable, ["-m", "meshproxy.cli", "certs", "--help"],
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": HERE},
            path=HERE,
        )
        return code == 0

    @defer.inlineCallbacks
    def test_mtlsTour(self):
        """
        The mutual TLS tour, in a copy of etc/: the README's three certs
        commands make the CA and the two certificates (with C{meshproxy
        certs}, or with L{meshproxy.certs} and the same arguments where the
        command has no C{certs} yet); the two configs as they stand (only
        their ports moved) run; the README's curls get the allowed answer,
        the 403, and the TLS metrics.
        """
        base = os.path.join(self.directory, "mtls")
        etc = os.path.join(base, "etc")
        os.makedirs(etc)
        for path in (MTLS_INBOUND, MTLS_OUTBOUND):
            shutil.copy(path, etc)
        commands = readmeCommands()
        certsCommands = [c for c in commands if c.startswith("meshproxy certs ")]
        self.assertEqual([c.split()[2] for c in certsCommands], ["init", "issue", "issue"])
        useCommand = yield self.cliHasCerts()
        for command in certsCommands:
            if useCommand:
                yield self.shell(command, {}, cwd=base)
            else:
                _certsWithoutTheCommand(command, base)
        for name in ("ca", "hello", "web"):
            self.assertTrue(os.path.exists(os.path.join(etc, "certs", name + ".pem")), name)
        twistd = [c for c in commands if c.startswith("twistd ") and "mtls-" in c]
        self.assertEqual(
            [c.split("#", 1)[0].split()[-1] for c in twistd],
            ["etc/mtls-inbound.yaml", "etc/mtls-outbound.yaml"],
        )

        with open(MTLS_INBOUND) as f:
            inboundPorts = yield self.start(f.read(), etc, INBOUND_PORTS)
        with open(MTLS_OUTBOUND) as f:
            # The outbound proxy reaches the inbound one where it listens.
            text = f.read().replace("127.0.0.1:4161", "127.0.0.1:%d" % (inboundPorts[4161],))
        outboundPorts = yield self.start(text, etc, OUTBOUND_PORTS)
        ports = {**inboundPorts, **outboundPorts}

        certificate = re.escape(os.path.join(etc, "certs", "hello.pem"))
        expected = {
            "curl -H 'Host: hello' http://127.0.0.1:4160/": r"hello-[12]: GET /\n",
            "curl -i -X DELETE -H 'Host: hello' http://127.0.0.1:4160/": (
                r"HTTP/1.1 403 .*\r\nmesh-err: forbidden\r\n.*"
                r"spiffe://mesh\.local/web may not call /svc/hello .*"
            ),
            "curl -s http://127.0.0.1:9993/metrics | grep '^meshproxy_tls_'": (
                r"meshproxy_tls_certificate_expiry_timestamp_seconds\{certificate=\""
                + certificate
                + r"\",router=\"inbound\"\} \d\.\d+e\+09\n"
                r"meshproxy_tls_reload_failures_total\{router=\"inbound\"\} 0\.0\n"
            ),
        }
        tour = [
            c.split("#", 1)[0].strip() for c in commands
            if {int(p) for p in _LOCAL.findall(c)} & (set(INBOUND_PORTS) | set(OUTBOUND_PORTS))
        ]
        self.assertEqual(tour, list(expected))
        for command in tour:
            out = yield self.shell(command, ports)
            self.assertRegex(out, re.compile("^" + expected[command] + "$", re.S), command)


def _certsWithoutTheCommand(command, cwd):
    """
    Do what a README line C{meshproxy certs init DIR} or C{meshproxy certs
    issue DIR NAME [--uri URI]... [--dns NAME]... [--ip ADDR]...} does, with
    L{meshproxy.certs}: for a checkout whose C{meshproxy} command has no
    C{certs} yet.

    @param cwd: the directory the command runs in.
    """
    import argparse
    import shlex

    from meshproxy import certs

    parser = argparse.ArgumentParser(prog="meshproxy certs")
    actions = parser.add_subparsers(dest="action", required=True)
    init = actions.add_parser("init")
    init.add_argument("directory")
    issue = actions.add_parser("issue")
    issue.add_argument("directory")
    issue.add_argument("name")
    for option in ("--uri", "--dns", "--ip"):
        issue.add_argument(option, action="append", default=[])
    words = shlex.split(command, comments=True)
    args = parser.parse_args(words[2:])
    directory = os.path.join(cwd, args.directory)
    if args.action == "init":
        certs.initAuthority(directory)
    else:
        certs.issue(
            directory,
            args.name,
            uris=tuple(args.uri),
            dnsNames=tuple(args.dns),
            ips=tuple(args.ip),
        )
