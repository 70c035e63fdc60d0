"""
Tests for L{meshproxy.cli}: C{check}, the formatting of C{explain} on a
recorded answer, and C{explain} against a real admin API on a loopback
port (the command's blocking urllib call runs in a thread).
"""

from __future__ import annotations

import io
import json
import os
import sys
from typing import Any

from prometheus_client import CollectorRegistry
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks, succeed
from twisted.internet.threads import deferToThread
from twisted.protocols.policies import WrappingFactory
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.server import Site

from meshproxy import cli
from meshproxy.cli import explainMain, formatExplain, main
from tests.test_admin_rules import FakeRulesRouter

SAMPLE_CONFIG = os.path.join(os.path.dirname(os.path.dirname(__file__)), "etc", "meshproxy.yaml")
TOKEN = "cli-t0ken"

# What GET /admin/routers/web/explain?name=/svc/users answered, the
# delegation tree being meshproxy.routing.delegate.explain's.
RECORDED = json.loads("""
{
 "router": "web",
 "name": "/svc/users",
 "dtab": "/svc => /#/fs;\\n/svc/users => /#/fs/users-v2 | /#/fs/users;\\n",
 "delegation": {
  "path": "/svc/users", "dentry": null, "result": "/#/fs/users-v2 | /#/fs/users",
  "children": [
   {"path": "/#/fs/users-v2", "dentry": "/svc/users=>/#/fs/users-v2 | /#/fs/users",
    "result": "/#/fs/users-v2", "children": [],
    "bound": {"id": "/#/fs/users-v2", "prefix": "/#/fs", "service": "users-v2",
              "residual": "/"}},
   {"path": "/#/fs/users", "dentry": "/svc/users=>/#/fs/users-v2 | /#/fs/users",
    "result": "/#/fs/users", "children": [],
    "bound": {"id": "/#/fs/users", "prefix": "/#/fs", "service": "users", "residual": "/"}},
   {"path": "/#/fs/users", "dentry": "/svc=>/#/fs", "result": "/#/fs/users",
    "children": [], "repeated": true}
  ]
 },
 "endpoints": {
  "/#/fs/users": [
   {"address": "127.0.0.1:8081", "state": "live", "ewmaMs": 1.25, "pending": 0,
    "score": 1.25},
   {"address": "127.0.0.1:8082", "state": "draining", "ewmaMs": 0.0, "pending": 2}
  ],
  "/#/fs/users-v2": {"endpoints": []}
 }
}
""")

RECORDED_TEXT = """\
router web: /svc/users
dtab:
  /svc => /#/fs;
  /svc/users => /#/fs/users-v2 | /#/fs/users;
delegation:
  /svc/users  -> /#/fs/users-v2 | /#/fs/users
    /#/fs/users-v2  (by /svc/users=>/#/fs/users-v2 | /#/fs/users)  [bound: /#/fs/users-v2]
    /#/fs/users  (by /svc/users=>/#/fs/users-v2 | /#/fs/users)  [bound: /#/fs/users]
    /#/fs/users  (by /svc=>/#/fs)  (repeated, see above)
endpoints:
  /#/fs/users
    127.0.0.1:8081  live  ewma 1.25 ms  pending 0  score 1.25
    127.0.0.1:8082  draining  ewma 0 ms  pending 2
  /#/fs/users-v2
    (none)
"""


class FormatExplainTests(SynchronousTestCase):
    """
    L{formatExplain}.
    """

    def test_recordedAnswer(self) -> None:
        self.assertEqual(formatExplain("web", RECORDED), RECORDED_TEXT)

    def test_treeAtTheTopLevel(self) -> None:
        answer = {"path": "/svc/x", "result": "~", "children": [], "neg": "no rule matches",
                  "name": "/svc/x"}
        self.assertEqual(
            formatExplain("web", answer),
            "router web: /svc/x\ndelegation:\n  /svc/x  -> ~  [neg: no rule matches]\n",
        )

    def test_endpointsAsAListAndBoundNames(self) -> None:
        answer = {
            "name": "/svc/a",
            "identified": True,
            "endpoints": [{"address": "10.0.0.1:80", "weight": 2}],
            "bound": [{"id": "/#/fs/a", "endpoints": [{"address": "10.0.0.2:80"}]}],
        }
        self.assertEqual(formatExplain("web", answer), (
            "router web: /svc/a\n"
            "identified: yes\n"
            "endpoints:\n"
            "    10.0.0.1:80  weight 2\n"
            "  /#/fs/a\n"
            "    10.0.0.2:80\n"
        ))

    def test_unknownShapeIsShownAsJSON(self) -> None:
        text = formatExplain("web", {"surprise": [1, 2]})
        self.assertEqual(text.splitlines()[0], "router web")
        self.assertEqual(json.loads(text.split("\n", 1)[1]), {"surprise": [1, 2]})

    def test_delegationErrorIsShown(self) -> None:
        answer = {"name": "/svc/loop", "delegation": {
            "path": "/svc/loop", "dentry": None, "result": None,
            "error": "too many rewrites", "children": []}}
        self.assertIn("/svc/loop  [error: too many rewrites]", formatExplain("web", answer))


class ArgumentTests(SynchronousTestCase):
    """
    Bad command lines exit 2 with a usage message and ask nothing.
    """

    def setUp(self) -> None:
        self.stderr = io.StringIO()
        self.patch(sys, "stderr", self.stderr)
        self.fetched: list[Any] = []
        self.patch(cli, "fetchExplain", lambda *a, **k: self.fetched.append((a, k)) or {})

    def test_badCommandLines(self) -> None:
        for argv in (
            [],
            ["nope"],
            ["check"],
            ["explain"],
            ["explain", "web"],
            ["explain", "web", "--name", "/a", "--host", "b"],
            ["explain", "--name", "/a"],
            ["explain", "web", "--name"],
        ):
            self.assertEqual(main(argv), 2, argv)
        self.assertIn("usage", self.stderr.getvalue())
        self.assertEqual(self.fetched, [])

    def test_queryKindsAndDefaults(self) -> None:
        out = io.StringIO()
        for flag, kind in (("--name", "name"), ("--host", "host"), ("--path", "path")):
            self.assertEqual(explainMain(["web", flag, "v"], out=out, environ={}), 0)
            self.assertEqual(
                self.fetched[-1], (("http://127.0.0.1:9990", "web", (kind, "v")), {"token": None})
            )

    def test_tokenFromTheEnvironmentUnlessGiven(self) -> None:
        out = io.StringIO()
        environ = {"MESHPROXY_ADMIN_TOKEN": "from-env"}
        explainMain(["web", "--name", "/a"], out=out, environ=environ)
        self.assertEqual(self.fetched[-1][1], {"token": "from-env"})
        explainMain(["--token", "given", "web", "--name", "/a"], out=out, environ=environ)
        self.assertEqual(self.fetched[-1][1], {"token": "given"})



class BadAdminURLTests(SynchronousTestCase):
    """
    C{--admin} must be an HTTP(S) URL; nothing is asked otherwise.
    """

    def test_badAdminURL(self) -> None:
        err = io.StringIO()
        for url in ("127.0.0.1:9990", "ftp://127.0.0.1/", "http://"):
            self.assertEqual(
                explainMain(["--admin", url, "web", "--name", "/a"], err=err, environ={}), 1
            )
        self.assertIn("--admin must be an http:// or https:// URL", err.getvalue())


class CheckTests(SynchronousTestCase):
    """
    C{meshproxy check CONFIG} is unchanged.
    """

    def setUp(self) -> None:
        self.stdout, self.stderr = io.StringIO(), io.StringIO()
        self.patch(sys, "stdout", self.stdout)
        self.patch(sys, "stderr", self.stderr)

    def test_validConfig(self) -> None:
        self.assertEqual(main(["check", SAMPLE_CONFIG]), 0)
        self.assertEqual(self.stdout.getvalue(), SAMPLE_CONFIG + ": ok\n")

    def test_invalidConfig(self) -> None:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("routers: 3\n")
        self.assertEqual(main(["check", path]), 1)
        self.assertIn(path + ": invalid", self.stderr.getvalue())


class _Tracking(WrappingFactory):
    """
    A factory wrapper that can wait for all of its connections to close, so
    a test leaves a clean reactor.
    """

    def __init__(self, wrapped: Any) -> None:
        super().__init__(wrapped)
        self._waiting: list[Deferred] = []

    def unregisterProtocol(self, p: Any) -> None:
        super().unregisterProtocol(p)
        if not self.protocols:
            waiting, self._waiting = self._waiting, []
            for d in waiting:
                d.callback(None)

    def closeAll(self) -> Deferred:
        if not self.protocols:
            return succeed(None)
        d: Deferred = Deferred()
        self._waiting.append(d)
        for p in list(self.protocols):
            p.transport.loseConnection()
        return d


class FakeRuntime:
    def __init__(self, routers: dict[str, Any]) -> None:
        self.routers = routers


class ExplainAgainstAdminAPITests(TestCase):
    """
    C{meshproxy explain} against a real admin API on a loopback port.
    """

    timeout = 30

    def setUp(self) -> None:
        from meshproxy.admin.api import AdminAPI

        self.router = FakeRulesRouter()
        self.router.explanation = RECORDED
        self.api = AdminAPI(
            FakeRuntime({"web": self.router}), CollectorRegistry(),
            token=TOKEN, protectReads=True, clock=reactor,
        )
        site = Site(self.api.app.resource())
        site.log = lambda request: None
        self.factory = _Tracking(site)
        self.port = reactor.listenTCP(0, self.factory, interface="127.0.0.1")
        self.admin = "http://127.0.0.1:%d" % (self.port.getHost().port,)
        self.addCleanup(self.factory.closeAll)
        self.addCleanup(self.port.stopListening)

    def explain(self, *argv: str) -> Deferred:
        out, err = io.StringIO(), io.StringIO()
        d = deferToThread(
            explainMain, ["--admin", self.admin, *argv], out=out, err=err, environ={}
        )
        d.addCallback(lambda status: (status, out.getvalue(), err.getvalue()))
        return d

    @inlineCallbacks
    def test_printsTheExplanation(self) -> Any:
        status, out, err = yield self.explain("--token", TOKEN, "web", "--name", "/svc/users")
        self.assertEqual((status, err), (0, ""))
        self.assertEqual(out, RECORDED_TEXT)
        self.assertEqual(
            self.router.explained, [{"name": "/svc/users", "host": None, "path": None}]
        )

    @inlineCallbacks
    def test_hostAndPathAreQuoted(self) -> Any:
        yield self.explain("--token", TOKEN, "web", "--host", "users.example:8080")
        yield self.explain("--token", TOKEN, "web", "--path", "/a b/c?d=e&f")
        self.assertEqual(self.router.explained, [
            {"name": None, "host": "users.example:8080", "path": None},
            {"name": None, "host": None, "path": "/a b/c?d=e&f"},
        ])

    @inlineCallbacks
    def test_errorsExit1WithTheReason(self) -> Any:
        status, out, err = yield self.explain("--token", TOKEN, "nope", "--name", "/svc/x")
        self.assertEqual((status, out), (1, ""))
        self.assertEqual(
            err, "meshproxy explain: admin API answered 404: unknown router 'nope'\n"
        )
        status, _, err = yield self.explain("--token", TOKEN, "web", "--name", "svc")
        self.assertEqual(status, 1)
        self.assertIn("answered 400: a name starts with /", err)

    @inlineCallbacks
    def test_missingTokenSaysHowToGiveIt(self) -> Any:
        status, out, err = yield self.explain("web", "--name", "/svc/users")
        self.assertEqual((status, out), (1, ""))
        self.assertIn("answered 401: unauthorized (give --token", err)
        self.assertEqual(self.router.explained, [])

    @inlineCallbacks
    def test_unreachableAdminAPI(self) -> Any:
        port = reactor.listenTCP(0, Site(self.api.app.resource()), interface="127.0.0.1")
        closed = "http://127.0.0.1:%d" % (port.getHost().port,)
        yield port.stopListening()
        out, err = io.StringIO(), io.StringIO()
        status = yield deferToThread(
            explainMain, ["--admin", closed, "web", "--name", "/a"], out=out, err=err,
            environ={},
        )
        self.assertEqual(status, 1)
        self.assertIn("cannot reach the admin API at " + closed, err.getvalue())
