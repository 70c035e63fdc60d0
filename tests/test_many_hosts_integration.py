"""
Many hosts, one mesh: a real etcd on loopback (L{tests.etcd_support}) and
two C{twistd -n meshproxy} child processes following it, each with an
C{etcd} namer and a C{rulesStore} on it, as two hosts would run them.

What docs/many-hosts.md promises, end to end:

  - an instance that registers is routed to by both proxies within a
    second; once it deregisters, or its lease expires, by neither;
  - a rules change through proxy A is applied by proxy B within a second,
    and a stale C{If-Match} through B gets 412;
  - etcd stopped and started again under steady traffic (a bounded client
    loop through both proxies, counted): no request fails, none is lost,
    a change is refused (503) meanwhile, and both follow etcd again;
  - etcd compacting past the revision the proxies' watches need (while
    they are cut off from it by a relay): both read again and apply what
    changed;
  - the README's tour of two proxies sharing rules (C{etc/shared-a.yaml},
    C{etc/shared-b.yaml}) runs as written, only its ports moved.

The upstreams, the relay and the clients run in this process; every wait
is bounded, and the children are killed at the end if still running.
"""

import json
import os
import re
import sys

import treq
from twisted.internet import defer, error, reactor
from twisted.internet.task import deferLater
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool

from meshproxy.discovery.endpoints import Endpoint
from meshproxy.discovery.etcd import EtcdRegistration
from tests.admin_support import AdminClient
from tests.etcd_support import EtcdServer, requireEtcd
from tests.support import BackendFactory, listenBackend, okHandler
from tests.test_discovery_etcd import Relay
from tests.test_reload_integration import HERE, Load, ProxyProcess, _report, received

SERVICES = "/meshproxy/services/"
RULES = "/meshproxy/rules/"

CONFIG = """\
admin:
  listen: "tcp:0:interface=127.0.0.1"
  shutdownGrace: 2s
namers:
  - {kind: etcd, prefix: /#/etcd, endpoints: ["%(etcd)s"], keyPrefix: %(services)s, timeout: 1s}
  - kind: static
    prefix: /#/static
    services: {a: ["127.0.0.1:%(a)d"], b: ["127.0.0.1:%(b)d"]}
rulesStore: {kind: etcd, endpoints: ["%(etcd)s"], keyPrefix: %(rules)s, timeout: 1s}
routers:
  - name: web
    listen: "tcp:0:interface=127.0.0.1"
    identifier: {kind: host}
    rules: |
      /svc => /#/etcd;
      /svc/hello => /#/static/a;
"""

HELLO_B = "/svc => /#/etcd;\n/svc/hello => /#/static/b;\n"

#: Seconds within which both proxies follow a change in etcd.
FOLLOW = 1.0


class _Mesh(TestCase):
    """
    What the tests share: one etcd, upstreams, twistd children.
    """

    timeout = 180

    @defer.inlineCallbacks
    def setUp(self):
        requireEtcd()
        self.etcd = EtcdServer(self)
        yield self.etcd.start()
        self.writer = self.etcd.client(self)
        self.factories = {}
        self.ports = {}
        for label in ("a", "b", "users1", "users2"):
            factory = self.factories[label] = BackendFactory(okHandler(label.encode()))
            self.ports[label] = yield listenBackend(self, factory)
        pool = HTTPConnectionPool(reactor, persistent=False)
        self.http = treq.client.HTTPClient(Agent(reactor, pool=pool, connectTimeout=5))

    def config(self, etcdURL=None):
        return CONFIG % {
            "etcd": etcdURL or self.etcd.url,
            "services": SERVICES,
            "rules": RULES,
            "a": self.ports["a"],
            "b": self.ports["b"],
        }

    @defer.inlineCallbacks
    def startProxy(self, name, text, files=None):
        """
        Run C{twistd -n meshproxy} on C{text} in a directory of its own.

        @param files: more files to write in that directory first, by
            relative path.

        @return: a Deferred firing with the L{ProxyProcess} once it is
            ready, with C{ports} (by owner: C{"router web"}, C{"admin"}) and
            C{admin} (an L{AdminClient}).
        """
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        path = os.path.join(directory, "mesh.yaml")
        with open(path, "w") as f:
            f.write(text)
        for relative, content in (files or {}).items():
            target = os.path.join(directory, relative)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with open(target, "w") as f:
                f.write(content)
        proxy = ProxyProcess()
        proxy.name = name
        argv = [
            sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
            "--nodaemon", "--pidfile=", "--logfile=-", "meshproxy", "--config", path,
        ]
        env = {**os.environ, "PYTHONPATH": HERE}
        reactor.spawnProcess(proxy, argv[0], argv, env=env, path=directory)
        self.addCleanup(self.kill, proxy)
        yield proxy.waitFor(r"\bready: ")
        proxy.ports = {}
        for line in proxy.lines:
            match = re.search(r"(router \S+|admin) listening on \S+ \(port (\d+)\)", line)
            if match is not None:
                proxy.ports[match.group(1)] = int(match.group(2))
        proxy.port = proxy.ports["router web"]
        proxy.path = path
        proxy.admin = AdminClient(self, proxy.ports["admin"])
        return proxy

    def kill(self, proxy):
        if proxy.ended.called:
            return None
        try:
            proxy.signal("KILL")
        except error.ProcessExitedAlready:
            return None
        return proxy.ended

    @defer.inlineCallbacks
    def startBoth(self, etcdURL=None):
        a, b = yield defer.gatherResults([
            self.startProxy("A", self.config(etcdURL)),
            self.startProxy("B", self.config(etcdURL)),
        ])
        return a, b

    @defer.inlineCallbacks
    def fetch(self, proxy, host):
        """
        One GET through C{proxy} with C{Host: host}.

        @return: a Deferred firing with C{(status, upstream label or None)}.
        """
        response = yield self.http.get(
            "http://127.0.0.1:%d/" % (proxy.port,), headers={"Host": [host]}
        )
        yield response.content()
        upstream = response.headers.getRawHeaders(b"x-upstream")
        return response.code, upstream[0] if upstream else None

    @defer.inlineCallbacks
    def until(self, proxy, host, wanted, timeout, what):
        """
        Ask C{proxy} for C{host} until the answer is C{wanted} (a
        C{(status, upstream)} pair), within C{timeout} seconds.

        @return: a Deferred firing with the seconds it took.
        """
        start = reactor.seconds()
        while True:
            answer = yield self.fetch(proxy, host)
            if answer == wanted:
                return reactor.seconds() - start
            if reactor.seconds() - start > timeout:
                raise AssertionError(
                    "%s: proxy %s answered %r for %s, not %r, after %g s"
                    % (what, proxy.name, answer, host, wanted, timeout)
                )
            yield deferLater(reactor, 0.005, lambda: None)

    @defer.inlineCallbacks
    def both(self, proxies, host, wanted, timeout, what):
        took = yield defer.gatherResults(
            [self.until(p, host, wanted, timeout, what) for p in proxies]
        )
        return took

    @defer.inlineCallbacks
    def state(self, proxy):
        response = yield proxy.admin.get("/admin/state")
        return response.json()

    @defer.inlineCallbacks
    def register(self, service, label, ttl=10):
        registration = EtcdRegistration(
            self.writer, SERVICES, service, Endpoint("127.0.0.1", self.ports[label]),
            ttl=ttl, reactor=reactor,
        )
        yield registration.start()
        self.addCleanup(lambda: registration.stop() if registration.lease else None)
        return registration



class ManyHostsTests(_Mesh):
    """
    Two proxies and one etcd.
    """

    @defer.inlineCallbacks
    def test_registrationFollowedByBoth(self):
        """
        An instance that registers is routed to by both proxies within a
        second; once it deregisters, by neither (a service without any key
        is unknown: 503 no-route); an instance whose lease expires goes
        away from both too.
        """
        proxies = yield self.startBoth()
        answer = yield self.fetch(proxies[0], "users")
        self.assertEqual(answer, (503, None))
        registration = yield self.register("users", "users1")
        took = yield self.both(proxies, "users", (200, b"users1"), FOLLOW, "the registration")
        self.assertLess(max(took), FOLLOW)
        yield registration.stop()
        took = yield self.both(proxies, "users", (503, None), FOLLOW, "the deregistration")
        self.assertLess(max(took), FOLLOW)
        # A lease that is not kept alive (the instance died).
        lease, granted = yield self.writer.leaseGrant(1)
        key = SERVICES + "users/127.0.0.1:%d" % (self.ports["users2"],)
        yield self.writer.put(key, b"127.0.0.1:%d" % (self.ports["users2"],), lease=lease)
        yield self.both(proxies, "users", (200, b"users2"), FOLLOW, "the second instance")
        yield self.both(
            proxies, "users", (503, None), max(granted, 1) + 10, "the lease's expiry"
        )

    @defer.inlineCallbacks
    def test_rulesChangeThroughAFollowedByB(self):
        """
        The first proxy wrote its config's rules to the store; a change
        through A's admin API is applied by B within a second (and both
        give the same version); a stale If-Match through B gets 412 with
        the version in force, and a change with it through B goes through.
        """
        a, b = yield self.startBoth()
        yield self.both((a, b), "hello", (200, b"a"), FOLLOW, "the config's rules")
        first = yield a.admin.get("/admin/routers/web/rules")
        same = yield b.admin.get("/admin/routers/web/rules")
        self.assertEqual(first.header("etag"), same.header("etag"))
        response = yield a.admin.put(
            "/admin/routers/web/rules", HELLO_B, headers={"If-Match": first.header("etag")}
        )
        self.assertEqual(response.code, 200, response.text)
        version = response.header("etag")
        took = yield self.both((a, b), "hello", (200, b"b"), FOLLOW, "the change")
        self.assertLess(max(took), FOLLOW)
        seen = yield b.admin.get("/admin/routers/web/rules")
        self.assertEqual((seen.text, seen.header("etag")), (HELLO_B, version))
        stale = yield b.admin.put(
            "/admin/routers/web/rules", CONFIG_RULES, headers={"If-Match": first.header("etag")}
        )
        self.assertEqual(stale.code, 412, stale.text)
        self.assertEqual(stale.header("etag"), version)
        history = yield b.admin.get("/admin/routers/web/rules/history")
        self.assertEqual([e["text"] for e in history.json()][:2], [HELLO_B, CONFIG_RULES])
        back = yield b.admin.put(
            "/admin/routers/web/rules", CONFIG_RULES, headers={"If-Match": version}
        )
        self.assertEqual(back.code, 200, back.text)
        yield self.both((a, b), "hello", (200, b"a"), FOLLOW, "the change through B")

    @defer.inlineCallbacks
    def test_etcdRestartUnderTraffic(self):
        """
        etcd stopped and started again while both proxies carry steady
        traffic (to an instance found through etcd, and by the rules from
        the store): no request fails or is lost, a change is refused with
        503 meanwhile, and both follow etcd again after.
        """
        proxies = yield self.startBoth()
        yield self.register("users", "users1", ttl=30)
        yield self.both(proxies, "users", (200, b"users1"), FOLLOW, "the registration")
        loads = [
            Load(p.port, "%s-%s" % (p.name, host.decode()), keepAlive=2, fresh=1, host=host)
            for p in proxies for host in (b"users", b"hello")
        ]
        for load in loads:
            load.start()
        try:
            for load in loads:
                yield defer.ensureDeferred(
                    load.until(lambda load=load: load.count("ok") >= 50, "50 ok")
                )
                load.phase = 1
            yield self.etcd.stop()
            states = yield self.waitStale(proxies, True)
            for state in states:
                self.assertTrue(state["rulesStore"]["stale"])
                self.assertTrue(state["namers"]["/#/etcd"]["stale"])
            marks = [load.count("ok") for load in loads]
            for load, mark in zip(loads, marks, strict=True):
                yield defer.ensureDeferred(
                    load.until(
                        lambda load=load, mark=mark: load.count("ok") >= mark + 50,
                        "50 ok while etcd is away",
                    )
                )
            _, version = yield self.rulesOf(proxies[0])
            refused = yield proxies[0].admin.put(
                "/admin/routers/web/rules", HELLO_B, headers={"If-Match": version}
            )
            self.assertEqual(refused.code, 503, refused.text)
            for load in loads:
                load.phase = 2
            yield self.etcd.start()
            yield self.waitStale(proxies, False)
            marks = [load.count("ok") for load in loads]
            for load, mark in zip(loads, marks, strict=True):
                yield defer.ensureDeferred(
                    load.until(
                        lambda load=load, mark=mark: load.count("ok") >= mark + 50,
                        "50 ok after the restart",
                    )
                )
        finally:
            yield defer.gatherResults([load.stop() for load in loads])
        seen = received(self.factories)
        for load in loads:
            self.assertEqual(load.failures(seen), [], load.name)
            self.assertEqual(load.count("unanswered") + load.count("refused"), 0, load.name)
            self.assertGreater(load.count("ok", phase=1), 0, load.name)
            upstreams = {u for _, _, _, u, _ in load.results}
            self.assertEqual(upstreams, {b"users1" if "users" in load.name else b"a"})
        _report(self, "etcd restart", *loads)
        # Every request the loads sent was answered (none lost).
        self.assertEqual(
            sum(len(load.results) for load in loads),
            sum(load.count("ok") for load in loads),
        )
        # Both follow etcd again: a change through A reaches B.
        _, version = yield self.rulesOf(proxies[0])
        response = yield proxies[0].admin.put(
            "/admin/routers/web/rules", HELLO_B, headers={"If-Match": version}
        )
        self.assertEqual(response.code, 200, response.text)
        yield self.both(proxies, "hello", (200, b"b"), FOLLOW, "a change after the restart")

    @defer.inlineCallbacks
    def test_compactionWhileCutOff(self):
        """
        Cut off from etcd (by a relay) while etcd goes on: the rules change,
        an instance registers, and etcd compacts its history past what the
        proxies' watches need. Once they reach etcd again, both read the
        prefixes again and apply what changed.
        """
        relay = Relay(self, self.etcd.clientPort)
        yield relay.open()
        proxies = yield self.startBoth(relay.url)
        yield self.both(proxies, "hello", (200, b"a"), FOLLOW, "the config's rules")
        yield relay.cut()
        yield self.waitStale(proxies, True)
        current = yield self.writer.get(RULES + "web")
        yield self.writer.put(
            RULES + "web",
            json.dumps({"rules": HELLO_B, "author": "etcdctl", "time": "now"}).encode(),
        )
        yield self.register("users", "users2")
        latest = yield self.writer.put("/other/key", b"x")
        yield self.writer.compact(latest)
        self.assertGreater(latest, current.modRevision)
        for proxy in proxies:
            answer = yield self.fetch(proxy, "hello")
            self.assertEqual(answer, (200, b"a"))
        yield relay.open()
        yield self.both(proxies, "hello", (200, b"b"), 10, "the rules after the compaction")
        yield self.both(proxies, "users", (200, b"users2"), 10, "the instance after it")
        states = yield self.waitStale(proxies, False)
        for state in states:
            self.assertGreaterEqual(state["rulesStore"]["resyncs"], 1)
            self.assertGreaterEqual(state["namers"]["/#/etcd"]["resyncs"], 1)

    # -- helpers -------------------------------------------------------------------------------

    @defer.inlineCallbacks
    def rulesOf(self, proxy):
        response = yield proxy.admin.get("/admin/routers/web/rules")
        return response.text, response.header("etag")

    @defer.inlineCallbacks
    def waitStale(self, proxies, stale, timeout=15):
        """
        Wait until both the rules store and the etcd namer of every proxy
        are (or are no longer) stale.

        @return: a Deferred firing with their last states.
        """
        deadline = reactor.seconds() + timeout
        while True:
            states = yield defer.gatherResults([self.state(p) for p in proxies])
            if all(
                s["rulesStore"]["stale"] is stale and s["namers"]["/#/etcd"]["stale"] is stale
                for s in states
            ):
                return states
            if reactor.seconds() > deadline:
                raise AssertionError(
                    "the proxies are not %s after %g s: %r"
                    % ("stale" if stale else "following etcd", timeout, states)
                )
            yield deferLater(reactor, 0.05, lambda: None)


CONFIG_RULES = "/svc => /#/etcd;\n/svc/hello => /#/static/a;\n"

#: The tour's ports (the proxies' and their admin APIs') and etcd's.
TOUR_PORTS = {4170, 4171, 9994, 9995}
TOUR_ETCD = "http://127.0.0.1:2379"
_LISTEN = re.compile(r'"tcp:(\d+):interface=127\.0\.0\.1"')
_LOCAL = re.compile(r"127\.0\.0\.1:(\d+)")


class ReadmeTourTests(_Mesh):
    """
    The README's tour "Two proxies sharing rules through etcd": its two
    configs, as they stand but for their ports and etcd's URL, run by
    twistd beside the demo's hello upstreams; its commands, run in one bash
    as written but for the ports, answer as the README says.
    """

    def tourCommands(self):
        from tests.test_readme import readmeCommands

        commands = readmeCommands()
        twistd = [c.split("#", 1)[0].split()[-1] for c in commands
                  if c.startswith("twistd ") and "shared-" in c]
        self.assertEqual(twistd, ["etc/shared-a.yaml", "etc/shared-b.yaml"])
        shown = [c.split("#")[0].strip() for c in commands]
        self.assertIn("sudo apt-get install etcd-server", shown)
        return [
            c for c in commands
            if c.startswith("etag=") or {int(p) for p in _LOCAL.findall(c)} & TOUR_PORTS
        ]

    @defer.inlineCallbacks
    def startTourProxy(self, name, hello):
        """
        Run C{etc/<name>} with its listeners on free ports, its etcd this
        test's, and its endpoint file C{hello} listing C{hello}'s ports.

        @return: a Deferred firing with a mapping of the config's ports to
            those listened on.
        """
        with open(os.path.join(HERE, "etc", name)) as f:
            text = f.read()
        configured = sorted(int(p) for p in _LISTEN.findall(text))
        self.assertEqual(len(configured), 2)
        self.assertLessEqual(set(configured), TOUR_PORTS)
        self.assertIn('endpoints: ["%s"]' % (TOUR_ETCD,), text)
        text = _LISTEN.sub('"tcp:0:interface=127.0.0.1"', text).replace(TOUR_ETCD, self.etcd.url)
        files = {"endpoints/hello": "".join("127.0.0.1:%d\n" % (port,) for port in hello)}
        proxy = yield self.startProxy(name, text, files)
        # The router's port is the lower one (41xx), the admin API's 99xx.
        router, admin = configured
        return {router: proxy.ports["router web"], admin: proxy.ports["admin"]}

    @defer.inlineCallbacks
    def test_tour(self):
        from meshproxy.demo import demoUpstreamSite
        from tests.test_readme import _Tracked

        hello = []
        for label in ("hello-1", "hello-2"):
            site = _Tracked(demoUpstreamSite(label))
            listening = reactor.listenTCP(0, site, interface="127.0.0.1")
            self.addCleanup(listening.stopListening)
            self.addCleanup(site.closeAll)
            hello.append(listening.getHost().port)
        commands = self.tourCommands()
        portsA = yield self.startTourProxy("shared-a.yaml", hello)
        portsB = yield self.startTourProxy("shared-b.yaml", hello)
        ports = {**portsA, **portsB}
        self.assertEqual(set(ports), TOUR_PORTS)
        script = "\n".join(
            _LOCAL.sub(lambda m: "127.0.0.1:%d" % (ports.get(int(m.group(1)), int(m.group(1))),), c)
            for c in commands
        )
        out, err, code = yield getProcessOutputAndValue(
            "/bin/bash", ["-c", "set -e -o pipefail\n" + script],
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"},
        )
        self.assertEqual(code, 0, (script, out, err))
        self.assertRegex(
            out.decode("utf-8"),
            re.compile(
                r'^\{"version": "\d+", "previous": "\d+"\}\n'
                r"hello-[12]: GET /\n"
                r"HTTP/1.1 412 Precondition Failed\r\n.*stale version.*\n"
                r"\{'key': '/meshproxy/rules/web', 'revision': \d+, 'applied': \d+,"
                r" 'rejected': None\}\n$",
                re.S,
            ),
        )
