"""
Tests for C{meshproxy register} and L{EtcdRegistration}: the keep-alive
logic on a fake clock, the command's argument checks, then the command as
a child process against a real etcd (L{tests.etcd_support}): registered
with a lease, kept alive, registered again when its lease is lost,
deregistered on SIGTERM; and end to end, a router routing real HTTP to a
loopback backend while the command keeps it registered, and no longer
once it is stopped.
"""

from __future__ import annotations

import io
import os
import random
import sys

from twisted.internet import defer, protocol, reactor
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from meshproxy import cli
from meshproxy.discovery.endpoints import Addr, Endpoint
from meshproxy.discovery.etcd import EtcdRegistration
from meshproxy.etcd import EtcdUnavailable
from meshproxy.resilience.backoff import Backoff
from tests.etcd_support import EtcdServer, enableAuth, freePorts, requireEtcd, waitUntil

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PREFIX = "/meshproxy/services/"


class FakeEtcd:
    """
    What a registration uses of the client; each call is recorded and
    answered by a Deferred the test fires (or at once, from C{answers}).
    """

    endpoint = "http://etcd:2379"

    def __init__(self):
        self.calls = []
        self.answers = {}

    def backoff(self):
        return Backoff(0.1, 1.0, random=random.Random(0))

    def _call(self, name, *args, **kwargs):
        self.calls.append((name, args, kwargs))
        answer = self.answers.get(name)
        if answer is None:
            d = Deferred()
            self.calls[-1] = (name, args, kwargs, d)
            return d
        if isinstance(answer, Exception):
            return defer.fail(answer)
        return succeed(answer)

    def leaseGrant(self, ttl):
        return self._call("leaseGrant", ttl)

    def put(self, key, value, lease=None):
        return self._call("put", key, value, lease=lease)

    def leaseKeepAlive(self, lease):
        return self._call("leaseKeepAlive", lease)

    def delete(self, key):
        return self._call("delete", key)

    def leaseRevoke(self, lease):
        return self._call("leaseRevoke", lease)

    def names(self):
        return [call[0] for call in self.calls]


class RegistrationTests(SynchronousTestCase):
    """
    Tests for L{EtcdRegistration} on a fake clock.
    """

    def setUp(self):
        self.clock = Clock()
        self.etcd = FakeEtcd()
        self.etcd.answers = {"leaseGrant": (7, 9), "put": 3, "leaseKeepAlive": 9,
                             "delete": (4, 1), "leaseRevoke": True}
        self.said = []
        self.registration = EtcdRegistration(
            self.etcd, PREFIX, "users", Endpoint("10.0.0.5", 8080, 2), ttl=9,
            reactor=self.clock, report=self.said.append,
        )

    def test_registers(self):
        """
        The start grants a lease and puts the key with it.
        """
        self.successResultOf(self.registration.start())
        self.assertEqual(
            self.etcd.calls,
            [("leaseGrant", (9,), {}),
             ("put", (PREFIX + "users/10.0.0.5:8080", b"10.0.0.5:8080 2"), {"lease": 7})],
        )
        self.assertEqual((self.registration.lease, self.registration.registrations), (7, 1))
        self.assertIn("registered", self.said[0])

    def test_keepsAliveEveryThirdOfTTL(self):
        """
        The lease is renewed every third of its TTL.
        """
        self.successResultOf(self.registration.start())
        self.clock.advance(2.9)
        self.assertEqual(self.etcd.names().count("leaseKeepAlive"), 0)
        self.clock.advance(0.1)
        self.assertEqual(self.etcd.names().count("leaseKeepAlive"), 1)
        self.clock.advance(3)
        self.assertEqual(self.etcd.names().count("leaseKeepAlive"), 2)

    def test_lostLeaseRegistersAgain(self):
        """
        A lease etcd no longer knows (it expired) means registering again,
        with a new lease.
        """
        self.successResultOf(self.registration.start())
        self.etcd.answers["leaseKeepAlive"] = 0
        self.etcd.answers["leaseGrant"] = (8, 9)
        self.clock.advance(3)
        self.assertEqual(self.etcd.names()[-2:], ["leaseGrant", "put"])
        self.assertEqual((self.registration.lease, self.registration.registrations), (8, 2))
        self.assertTrue(any("registering again" in line for line in self.said))

    def test_unreachableRetriedWithinASecond(self):
        """
        While etcd cannot be reached, the keep-alive is retried within a
        second (said once); once it answers, the normal pace is back.
        """
        self.successResultOf(self.registration.start())
        self.etcd.answers["leaseKeepAlive"] = EtcdUnavailable("etcd unreachable")
        self.clock.advance(3)
        for _ in range(10):
            count = self.etcd.names().count("leaseKeepAlive")
            self.clock.advance(1.0)
            self.assertEqual(self.etcd.names().count("leaseKeepAlive"), count + 1)
        self.assertEqual(len([line for line in self.said if "cannot keep" in line]), 1)
        self.etcd.answers["leaseKeepAlive"] = 9
        self.clock.advance(1.0)
        self.assertTrue(any("etcd is back" in line for line in self.said))
        count = self.etcd.names().count("leaseKeepAlive")
        self.clock.advance(2.9)
        self.assertEqual(self.etcd.names().count("leaseKeepAlive"), count)

    def test_startFails(self):
        """
        A start etcd does not answer fails, and schedules nothing.
        """
        self.etcd.answers["leaseGrant"] = EtcdUnavailable("etcd unreachable")
        self.failureResultOf(self.registration.start(), EtcdUnavailable)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_putFailsRevokesLease(self):
        """
        A lease granted for a put that then fails is revoked.
        """
        self.etcd.answers["put"] = EtcdUnavailable("etcd unreachable")
        self.failureResultOf(self.registration.start(), EtcdUnavailable)
        self.assertEqual(self.etcd.names(), ["leaseGrant", "put", "leaseRevoke"])

    def test_stopDeregisters(self):
        """
        The stop deletes the key and revokes the lease, and nothing runs
        after it.
        """
        self.successResultOf(self.registration.start())
        self.assertTrue(self.successResultOf(self.registration.stop()))
        self.assertEqual(self.etcd.names()[-2:], ["delete", "leaseRevoke"])
        self.assertEqual(self.etcd.calls[-1][1], (7,))
        self.clock.advance(100)
        self.assertNotIn("leaseKeepAlive", self.etcd.names())

    def test_stopFailsSaysSo(self):
        """
        A stop etcd does not answer says the key expires with its lease.
        """
        self.successResultOf(self.registration.start())
        self.etcd.answers["delete"] = EtcdUnavailable("etcd unreachable")
        self.assertFalse(self.successResultOf(self.registration.stop()))
        self.assertIn("expires with its lease", self.said[-1])

    def test_badArguments(self):
        """
        A service name that is not one, or a TTL under a second, is refused.
        """
        self.assertRaises(ValueError, EtcdRegistration, self.etcd, PREFIX, "a/b",
                          Endpoint("h", 1), ttl=10, reactor=self.clock)
        self.assertRaises(ValueError, EtcdRegistration, self.etcd, PREFIX, "a",
                          Endpoint("h", 1), ttl=0, reactor=self.clock)


class ArgumentTests(SynchronousTestCase):
    """
    The command's checks of its arguments, before anything runs.
    """

    def command(self, *args):
        out, err = io.StringIO(), io.StringIO()
        self.patch(sys, "stdout", out)
        self.patch(sys, "stderr", err)
        return cli.main(["register", *args]), out.getvalue(), err.getvalue()

    def test_badArguments(self):
        """
        Bad arguments exit 2 with the reason, without connecting anywhere.
        """
        base = ["--etcd", "http://127.0.0.1:1", "--service", "users"]
        for args, reason in [
            (base + ["--address", "10.0.0.5"], "--address/--weight: expected host:port"),
            (base + ["--address", "h:1", "--weight", "0"], "weight"),
            (base + ["--address", "h:1", "--ttl", "10"], "--ttl:"),
            (base + ["--address", "h:1", "--ttl", "500ms"], "at least 1s"),
            (base + ["--address", "h:1", "--username", "u"], "needs --password"),
            (base + ["--address", "h:1", "--key", "k.pem"], "--key needs --cert"),
            (["--etcd", "127.0.0.1:2379", "--service", "users", "--address", "h:1"],
             "http:// or https://"),
            (["--etcd", "http://h:1", "--service", "a/b", "--address", "h:1"], "service name"),
        ]:
            code, out, err = self.command(*args)
            self.assertEqual(code, 2, args)
            self.assertIn(reason, err, args)

    def test_required(self):
        """
        The etcd URL, the service and the address are required.
        """
        code, _, err = self.command("--service", "users")
        self.assertEqual(code, 2)
        self.assertIn("required", err)


# -- as a child process, against a real etcd ------------------------------------


class _Command(protocol.ProcessProtocol):
    def __init__(self):
        self.out = b""
        self.err = b""
        self.ended = Deferred()
        self.status = None

    def outReceived(self, data):
        self.out += data

    def errReceived(self, data):
        self.err += data

    def processEnded(self, reason):
        self.status = reason.value.exitCode
        self.ended.callback(self.status)


def runCommand(testCase, *args, env=None):
    """
    Start C{meshproxy register ARGS} as a child process, killed at the end
    of the test if it still runs.

    @return: its L{_Command}.
    """
    command = _Command()
    environment = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": HERE}
    environment.update(env or {})
    transport = reactor.spawnProcess(
        command, sys.executable, [sys.executable, "-m", "meshproxy.cli", "register", *args],
        env=environment, path=HERE,
    )

    def cleanup():
        if not command.ended.called:
            transport.signalProcess("KILL")
            return command.ended

    testCase.addCleanup(cleanup)
    command.transport = transport
    return command


class CommandTests(TestCase):
    """
    C{meshproxy register} against a real etcd.
    """

    timeout = 90

    @defer.inlineCallbacks
    def setUp(self):
        requireEtcd()
        self.etcd = EtcdServer(self)
        yield self.etcd.start()
        self.client = self.etcd.client(self)

    def registered(self, key, lease=None):
        """
        Wait until C{key} exists with a lease (another than C{lease}).

        @return: a Deferred firing with its L{KeyValue}.
        """

        async def poll():
            deadline = reactor.seconds() + 20
            while True:
                kv = await self.client.get(key)
                if kv is not None and kv.lease and kv.lease != lease:
                    return kv
                if reactor.seconds() > deadline:
                    self.fail("%s was not registered within 20 s" % (key,))
                await _pause(0.02)

        return defer.Deferred.fromCoroutine(poll())

    def elapse(self, seconds):
        """
        Let C{seconds} pass (what a lease's expiry is about).
        """
        return defer.Deferred.fromCoroutine(_pause(seconds))

    @defer.inlineCallbacks
    def test_registerKeepAliveDeregister(self):
        """
        The command registers the key with a lease, keeps the lease alive
        past its TTL, and on SIGTERM deletes the key, revokes the lease and
        exits 0.
        """
        command = runCommand(
            self, "--etcd", self.etcd.url, "--service", "users", "--address", "127.0.0.1:8080",
            "--weight", "2", "--ttl", "1s",
        )
        kv = yield self.registered(PREFIX + "users/127.0.0.1:8080")
        self.assertEqual(kv.value, b"127.0.0.1:8080 2")
        ttl = yield self.client.leaseKeepAlive(kv.lease)
        self.assertGreater(ttl, 0)
        # Three TTLs later, the key and its lease are still there: the
        # command renews it.
        revision, _ = yield self.client.range(PREFIX)
        deleted = []
        watch = self.client.watch(
            PREFIX, revision + 1, lambda events, _: deleted.extend(
                e for e in events if e.kind == "delete"), lambda _: None)
        self.addCleanup(watch.stop)
        yield self.elapse(3.0)
        self.assertEqual(deleted, [])
        self.assertEqual((yield self.client.get(kv.key)).lease, kv.lease)
        command.transport.signalProcess("TERM")
        status = yield command.ended
        self.assertEqual(status, 0, command.err)
        self.assertIsNone((yield self.client.get(kv.key)))
        self.assertEqual((yield self.client.leaseKeepAlive(kv.lease)), 0)
        self.assertIn(b"registered /meshproxy/services/users/127.0.0.1:8080", command.out)
        self.assertIn(b"deregistered", command.out)

    @defer.inlineCallbacks
    def test_registersAgainWhenLeaseLost(self):
        """
        When its lease is gone (revoked here, as if expired), the command
        registers again with a new lease.
        """
        command = runCommand(
            self, "--etcd", self.etcd.url, "--service", "users", "--address", "127.0.0.1:8080",
            "--ttl", "1s",
        )
        key = PREFIX + "users/127.0.0.1:8080"
        kv = yield self.registered(key)
        yield self.client.leaseRevoke(kv.lease)
        again = yield self.registered(key, lease=kv.lease)
        self.assertNotEqual(again.lease, kv.lease)
        command.transport.signalProcess("INT")
        self.assertEqual((yield command.ended), 0)
        self.assertIn(b"registering again", command.out)

    @defer.inlineCallbacks
    def test_survivesEtcdRestart(self):
        """
        Across an etcd restart, the registration stays (the lease is kept
        alive again once etcd is back).
        """
        command = runCommand(
            self, "--etcd", self.etcd.url, "--service", "users", "--address", "127.0.0.1:8080",
            "--ttl", "1s",
        )
        key = PREFIX + "users/127.0.0.1:8080"
        kv = yield self.registered(key)
        yield self.etcd.restart()
        # etcd gives leases a whole TTL again when it starts: past two, the
        # key is there only if the command renews its lease.
        yield self.elapse(2.5)
        current = yield self.client.get(key)
        self.assertIsNotNone(current)
        self.assertEqual(current.lease, kv.lease)
        command.transport.signalProcess("TERM")
        self.assertEqual((yield command.ended), 0)
        self.assertIsNone((yield self.client.get(key)))

    @defer.inlineCallbacks
    def test_unreachableAtStart(self):
        """
        With etcd unreachable at the start, the command exits 1 at once,
        saying so.
        """
        [port] = freePorts(1)
        command = runCommand(
            self, "--etcd", "http://127.0.0.1:%d" % (port,), "--service", "users",
            "--address", "127.0.0.1:8080",
        )
        status = yield command.ended
        self.assertEqual(status, 1)
        self.assertIn(b"cannot register /meshproxy/services/users/127.0.0.1:8080", command.err)
        self.assertIn(b"connection refused", command.err)

    @defer.inlineCallbacks
    def test_authentication(self):
        """
        With authentication on, the command takes a user and the password
        from the environment.
        """
        yield enableAuth(self.etcd, "r00t", {"mesh": ("meshpw", "/meshproxy/")})
        command = runCommand(
            self, "--etcd", self.etcd.url, "--service", "users", "--address", "127.0.0.1:8080",
            "--username", "mesh", env={"MESHPROXY_ETCD_PASSWORD": "meshpw"},
        )
        self.client = self.etcd.client(self, username="mesh", password="meshpw")
        yield self.registered(PREFIX + "users/127.0.0.1:8080")
        command.transport.signalProcess("TERM")
        self.assertEqual((yield command.ended), 0)


async def _pause(seconds):
    from twisted.internet.task import deferLater

    await deferLater(reactor, seconds, lambda: None)


class EndToEndTests(TestCase):
    """
    A router C{/svc => /#/etcd}, an instance kept registered by the command.
    """

    timeout = 90

    @defer.inlineCallbacks
    def test_routesWhileRegistered(self):
        """
        Requests reach the backend while the command keeps it registered;
        once the command is stopped (SIGTERM), the name is unknown and the
        router answers 503.
        """
        requireEtcd()
        from tests.support import BackendFactory, exchange, listenBackend, okHandler, startProxy

        etcd = EtcdServer(self)
        yield etcd.start()
        backend = yield listenBackend(self, BackendFactory(okHandler(b"users-1")))
        config = """\
admin: {listen: "tcp:port=0:interface=127.0.0.1"}
namers:
  - {kind: etcd, prefix: /#/etcd, endpoints: ["%s"], keyPrefix: %s}
routers:
  - name: web
    listen: "tcp:0:interface=127.0.0.1"
    identifier: {kind: host}
    rules: "/svc => /#/etcd;"
""" % (etcd.url, PREFIX)
        port, _, runtime = yield startProxy(self, None, config=config)
        [namer] = runtime.namers
        yield namer.whenLoaded()
        users = namer.bind("users")
        command = runCommand(
            self, "--etcd", etcd.url, "--service", "users",
            "--address", "127.0.0.1:%d" % (backend,), "--ttl", "5s",
        )
        expected = Addr.bound(frozenset([Endpoint("127.0.0.1", backend)]))
        yield waitUntil(lambda: users.current == expected, timeout=20, what="the registration")
        client = yield exchange(self, port, b"GET /hello HTTP/1.1\r\nHost: users\r\n\r\n")
        self.assertEqual(client.responses[0].status, 200)
        self.assertEqual(client.responses[0].body, b"users-1 /hello")
        command.transport.signalProcess("TERM")
        self.assertEqual((yield command.ended), 0)
        yield waitUntil(lambda: users.current == Addr.neg(), what="the deregistration")
        client = yield exchange(self, port, b"GET /hello HTTP/1.1\r\nHost: users\r\n\r\n")
        self.assertEqual(client.responses[0].status, 503)


def documentedScript():
    """
    The registration script of docs/many-hosts.md, as written there.
    """
    import re

    with open(os.path.join(HERE, "docs", "many-hosts.md"), encoding="utf-8") as f:
        text = f.read()
    [script] = [
        block for block in re.findall(r"```sh\n(.*?)```", text, re.S)
        if block.startswith("#!/bin/sh\n# register-instance")
    ]
    return script


class DocumentedRecipeTests(TestCase):
    """
    The curl recipe of docs/many-hosts.md does what the page says.
    """

    timeout = 90

    @defer.inlineCallbacks
    def test_recipe(self):
        """
        Run with sh: it registers the key with a lease, keeps the lease
        alive past its TTL, and on SIGTERM deletes the key, revokes the
        lease and exits 0.
        """
        requireEtcd()
        import shutil

        if shutil.which("curl") is None:
            self.skipTest("curl is not installed")
        etcd = EtcdServer(self)
        yield etcd.start()
        client = etcd.client(self)
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            f.write(documentedScript())
        command = _Command()
        key = PREFIX + "users/127.0.0.1:8080"
        transport = reactor.spawnProcess(
            command, "/bin/sh", ["sh", path],
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "ETCD": etcd.url,
                 "KEY": key, "VALUE": "127.0.0.1:8080 2", "TTL": "2"},
        )

        def kill():
            if not command.ended.called:
                transport.signalProcess("KILL")
                return command.ended

        self.addCleanup(kill)
        found = {}

        async def poll():
            deadline = reactor.seconds() + 20
            while "kv" not in found:
                kv = await client.get(key)
                if kv is not None:
                    found["kv"] = kv
                    return
                self.assertFalse(command.ended.called, command.err)
                self.assertLess(reactor.seconds(), deadline)
                await _pause(0.02)

        yield defer.Deferred.fromCoroutine(poll())
        kv = found["kv"]
        self.assertEqual(kv.value, b"127.0.0.1:8080 2")
        self.assertNotEqual(kv.lease, 0)
        yield defer.Deferred.fromCoroutine(_pause(3.0))
        self.assertEqual((yield client.get(key)).lease, kv.lease)
        transport.signalProcess("TERM")
        self.assertEqual((yield command.ended), 0, command.err)
        self.assertIsNone((yield client.get(key)))
        self.assertEqual((yield client.leaseKeepAlive(kv.lease)), 0)
        self.assertIn(b"registered " + key.encode(), command.out)
        self.assertIn(b"deregistered " + key.encode(), command.out)
