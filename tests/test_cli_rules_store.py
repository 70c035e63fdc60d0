"""
Tests for C{meshproxy rules reset ROUTER --config CONFIG} with a
C{rulesStore}: the command deletes the router's key in a real etcd
(L{tests.etcd_support}), which is what resets every proxy following the
store; it says when there was nothing to delete, and fails clearly when
etcd cannot be reached.
"""

from __future__ import annotations

import os
import sys

from twisted.internet import defer, protocol, reactor
from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase

from tests.etcd_support import EtcdServer, freePorts, requireEtcd

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CONFIG = """\
namers:
  - {kind: static, prefix: /#/static, services: {hello: ["127.0.0.1:9"]}}
rulesStore: {kind: etcd, endpoints: ["%(url)s"], keyPrefix: /test/rules/, timeout: 2s}
routers:
  - {name: web, listen: "tcp:0:interface=127.0.0.1", rules: "/svc => /#/static;"}
"""


class _Command(protocol.ProcessProtocol):
    def __init__(self):
        self.out = b""
        self.err = b""
        self.ended = Deferred()

    def outReceived(self, data):
        self.out += data

    def errReceived(self, data):
        self.err += data

    def processEnded(self, reason):
        self.ended.callback(reason.value.exitCode)


class RulesResetInStoreTests(TestCase):
    timeout = 60

    def setUp(self):
        requireEtcd()
        self.directory = os.path.abspath(self.mktemp())
        os.mkdir(self.directory)

    def config(self, url):
        path = os.path.join(self.directory, "mesh.yaml")
        with open(path, "w") as f:
            f.write(CONFIG % {"url": url})
        return path

    def reset(self, path):
        """
        Run C{meshproxy rules reset web --config PATH} as a child process.

        @return: a Deferred firing with C{(status, out, err)}.
        """
        command = _Command()
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": HERE}
        transport = reactor.spawnProcess(
            command, sys.executable,
            [sys.executable, "-m", "meshproxy.cli", "rules", "reset", "web", "--config", path],
            env=env, path=HERE,
        )

        def cleanup():
            if not command.ended.called:
                transport.signalProcess("KILL")
                return command.ended

        self.addCleanup(cleanup)
        return command.ended.addCallback(
            lambda status: (status, command.out.decode(), command.err.decode())
        )

    @defer.inlineCallbacks
    def test_deletesTheKey(self):
        """
        The router's key is deleted (its policy's is not); a second reset
        has nothing to delete and says so, both exiting 0.
        """
        etcd = EtcdServer(self)
        yield etcd.start()
        client = etcd.client(self)
        yield client.put("/test/rules/web", b"/svc => /#/other;\n")
        yield client.put("/test/rules/policy/web", b'{"default": "deny", "rules": []}')
        path = self.config(etcd.url)
        status, out, err = yield self.reset(path)
        self.assertEqual((status, err), (0, ""))
        self.assertEqual(
            out,
            "deleted etcd key /test/rules/web: every meshproxy following this rules store"
            " applies router web's config rules now (the first to see the delete writes"
            " them back)\n",
        )
        self.assertIsNone((yield client.get("/test/rules/web")))
        self.assertIsNotNone((yield client.get("/test/rules/policy/web")))
        status, out, err = yield self.reset(path)
        self.assertEqual((status, err), (0, ""))
        self.assertIn("router web has no rules in the store (etcd key /test/rules/web", out)

    @defer.inlineCallbacks
    def test_etcdUnreachable(self):
        """
        With no etcd at the store's endpoint, the command says why and exits
        1.
        """
        (port,) = freePorts(1)
        status, out, err = yield self.reset(self.config("http://127.0.0.1:%d" % (port,)))
        self.assertEqual((status, out), (1, ""))
        self.assertTrue(
            err.startswith("meshproxy rules reset: cannot delete etcd key /test/rules/web: "),
            err,
        )
