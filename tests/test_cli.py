"""
Tests for L{meshproxy.cli}: the command line (help, version, usage
errors), C{check}, C{schema}, the formatting of C{explain} on a recorded
answer, and C{explain} against a real admin API on a loopback port (the
command's blocking urllib call runs in a thread).
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
 "rules": "/svc => /#/fs;\\n/svc/users => /#/fs/users-v2 | /#/fs/users;\\n",
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
 "destination": "/#/fs/users-v2 | /#/fs/users",
 "boundNames": [],
 "policy": null,
 "endpoints": {
  "/#/fs/users": [
   {"address": "127.0.0.1:8081", "state": "live", "ewmaMs": 1.25, "pending": 0,
    "score": 1.25},
   {"address": "127.0.0.1:8082", "state": "draining", "ewmaMs": 0.0, "pending": 2}
  ],
  "/#/fs/users-v2": []
 }
}
""")

RECORDED_TEXT = """\
router web: /svc/users
destination: /#/fs/users-v2 | /#/fs/users
policy: none (every caller is allowed)
rules:
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
    L{formatExplain}, for the one shape of the explain route's answer.
    """

    def test_recordedAnswer(self) -> None:
        self.assertEqual(formatExplain("web", RECORDED), RECORDED_TEXT)

    def test_realAnswerShape(self) -> None:
        """
        What the router's explain gives is what the formatter reads.
        """
        from tests.test_http_router import ALTERNATION, makeRouter

        router = makeRouter(ALTERNATION)
        text = formatExplain("web", router.explain(name="/svc/hello"))
        self.assertIn("destination: /#/static/hello | /#/other/hello\n", text)
        endpoints = text.split("  /#/static/hello\n", 1)[1]
        self.assertIn(
            "    127.0.0.1:9001  live  ewma 0 ms  pending 0  score 0  weight 1\n", endpoints
        )
        self.assertIn("    127.0.0.1:9002  live", endpoints)

    def test_loop(self) -> None:
        answer = {
            "name": "/svc/loop", "rules": "/svc => /svc;", "destination": None,
            "error": "too many rewrites", "boundNames": [], "endpoints": {}, "policy": None,
            "delegation": {"path": "/svc/loop", "dentry": None, "result": None,
                           "error": "too many rewrites", "children": []},
        }
        text = formatExplain("web", answer)
        self.assertIn("destination: none\nerror: too many rewrites\n", text)
        self.assertIn("/svc/loop  [error: too many rewrites]", text)
        self.assertNotIn("endpoints:", text)

    def test_otherShapesRefused(self) -> None:
        from meshproxy.cli import ExplainError

        e = self.assertRaises(ExplainError, formatExplain, "web", {"surprise": [1, 2]})
        self.assertIn("not an explanation", str(e))
        self.assertRaises(ExplainError, formatExplain, "web", dict(RECORDED, endpoints=[]))
        self.assertRaises(ExplainError, formatExplain, "web", dict(RECORDED, policy=[]))
        withoutPolicy = {key: value for key, value in RECORDED.items() if key != "policy"}
        e = self.assertRaises(ExplainError, formatExplain, "web", withoutPolicy)
        self.assertIn("missing policy", str(e))

    def test_policyDecisions(self) -> None:
        """
        The policy's decision is one line under the destination, saying
        for whom it was asked.
        """
        allowed = {"allowed": True, "rule": 0, "reason": "rule 0 allows"}
        denied = {"allowed": False, "rule": None, "reason": "default deny"}
        for policy, kwargs, line in (
            (None, {}, "policy: none (every caller is allowed)"),
            (denied, {}, "policy: denied (default deny) for an unauthenticated caller, GET"),
            (allowed, {"caller": "spiffe://mesh.local/web", "peer": "10.0.0.1",
                       "method": "DELETE"},
             "policy: allowed (rule 0 allows) for spiffe://mesh.local/web from 10.0.0.1,"
             " DELETE"),
            (denied, {"peer": "::1"},
             "policy: denied (default deny) for an unauthenticated caller from ::1, GET"),
        ):
            text = formatExplain("web", dict(RECORDED, policy=policy), **kwargs)
            self.assertIn("\ndestination: /#/fs/users-v2 | /#/fs/users\n%s\nrules:\n" % (line,),
                          text)

    def test_realAnswerWithAPolicy(self) -> None:
        from tests.test_admin_policy import POLICED
        from tests.test_http_router import makeRouter

        router = makeRouter(POLICED)
        answer = router.explain(name="/svc/hello", caller="spiffe://mesh.local/web")
        text = formatExplain("web", answer, caller="spiffe://mesh.local/web")
        self.assertIn(
            "\npolicy: allowed (rule 0 allows) for spiffe://mesh.local/web, GET\n", text
        )


class ArgumentTests(SynchronousTestCase):
    """
    Bad command lines exit 2 with a usage message and ask nothing.
    """

    def setUp(self) -> None:
        self.stderr = io.StringIO()
        self.patch(sys, "stderr", self.stderr)
        self.fetched: list[Any] = []
        self.patch(cli, "fetchExplain", lambda *a, **k: self.fetched.append((a, k)) or RECORDED)

    def test_badCommandLines(self) -> None:
        """
        An unknown command, a missing argument or an unknown option gets a
        short usage and the mistake on standard error, and exit status 2.
        """
        for argv in (
            [],
            ["nope"],
            ["check"],
            ["check", "a.yaml", "b.yaml"],
            ["schema", "extra"],
            ["--frobnicate"],
            ["explain"],
            ["explain", "web"],
            ["explain", "web", "--name", "/a", "--host", "b"],
            ["explain", "--name", "/a"],
            ["explain", "web", "--name"],
            ["rules"],
            ["rules", "nope"],
            ["rules", "reset"],
            ["rules", "reset", "web", "--config"],
            ["explain", "web", "--name", "/a", "--peer"],
            ["certs"],
            ["certs", "init"],
            ["certs", "init", "a", "b"],
            ["certs", "issue", "dir"],
            ["certs", "issue", "dir", "web", "--uri"],
        ):
            self.stderr.seek(0)
            self.stderr.truncate()
            self.assertEqual(main(argv), 2, argv)
            lines = self.stderr.getvalue().splitlines()
            self.assertTrue(lines[0].startswith("usage: meshproxy"), lines)
            self.assertIn("error: ", lines[-1])
            self.assertLessEqual(len(lines), 5, lines)
        self.assertIn("invalid choice: 'nope'", self.errorOf(["nope"]))
        self.assertIn("required: CONFIG", self.errorOf(["check"]))
        self.assertEqual(self.fetched, [])

    def errorOf(self, argv: list[str]) -> str:
        self.stderr.seek(0)
        self.stderr.truncate()
        main(argv)
        return self.stderr.getvalue()

    def test_queryKindsAndDefaults(self) -> None:
        out = io.StringIO()
        for flag, kind in (("--name", "name"), ("--host", "host"), ("--path", "path")):
            self.assertEqual(explainMain(["web", flag, "v"], out=out, environ={}), 0)
            self.assertEqual(
                self.fetched[-1],
                (("http://127.0.0.1:9990", "web", (kind, "v")), {"token": None, "caller": {}}),
            )

    def test_callerPeerAndMethodArePassedOn(self) -> None:
        out = io.StringIO()
        argv = ["web", "--name", "/a", "--caller", "spiffe://mesh.local/web", "--peer",
                "10.0.0.1", "--method", "DELETE"]
        self.assertEqual(explainMain(argv, out=out, environ={}), 0)
        self.assertEqual(self.fetched[-1][1]["caller"], {
            "caller": "spiffe://mesh.local/web", "peer": "10.0.0.1", "method": "DELETE",
        })
        self.assertIn(
            "policy: none (every caller is allowed)\n", out.getvalue()
        )
        explainMain(["web", "--name", "/a", "--method", "POST"], out=out, environ={})
        self.assertEqual(self.fetched[-1][1]["caller"], {"method": "POST"})

    def test_tokenFromTheEnvironmentUnlessGiven(self) -> None:
        out = io.StringIO()
        environ = {"MESHPROXY_ADMIN_TOKEN": "from-env"}
        explainMain(["web", "--name", "/a"], out=out, environ=environ)
        self.assertEqual(self.fetched[-1][1]["token"], "from-env")
        explainMain(["--token", "given", "web", "--name", "/a"], out=out, environ=environ)
        self.assertEqual(self.fetched[-1][1]["token"], "given")



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


class ReachReasonTests(SynchronousTestCase):
    """
    Why the admin API could not be reached, in the proxy's words rather
    than Python's exception text.
    """

    def test_words(self) -> None:
        import errno
        import socket

        from meshproxy.cli import _reachReason

        for reason, words in (
            (ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"),
             "connection refused (is meshproxy running, with its admin API there?)"),
            (TimeoutError("timed out"), "no answer within 10 s"),
            (socket.gaierror(-2, "Name or service not known"), "unknown host"),
            (OSError(errno.ENETUNREACH, "Network is unreachable"), "network is unreachable"),
            ("something else", "something else"),
        ):
            self.assertEqual(_reachReason(reason, 10.0), words)
            self.assertNotIn("Errno", _reachReason(reason, 10.0))


class HelpAndVersionTests(SynchronousTestCase):
    """
    C{--help} and C{--version} answer on standard output and exit 0.
    """

    def setUp(self) -> None:
        self.stdout, self.stderr = io.StringIO(), io.StringIO()
        self.patch(sys, "stdout", self.stdout)
        self.patch(sys, "stderr", self.stderr)

    def test_help(self) -> None:
        for argv, usage in (
            (["--help"], "usage: meshproxy [-h] [--version] COMMAND ..."),
            (["-h"], "usage: meshproxy [-h] [--version] COMMAND ..."),
            (["check", "--help"], "usage: meshproxy check [-h] CONFIG"),
            (["explain", "--help"], "usage: meshproxy explain [-h] [--admin URL]"),
            (["schema", "--help"], "usage: meshproxy schema [-h]"),
            (["rules", "--help"], "usage: meshproxy rules [-h] COMMAND ..."),
            (["rules", "reset", "--help"],
             "usage: meshproxy rules reset [-h] [--config CONFIG] ROUTER"),
            (["certs", "--help"], "usage: meshproxy certs [-h] COMMAND ..."),
            (["certs", "init", "--help"], "usage: meshproxy certs init [-h] DIR"),
            (["certs", "issue", "--help"],
             "usage: meshproxy certs issue [-h] [--uri URI] [--dns NAME] [--ip ADDR]"),
        ):
            self.stdout.seek(0)
            self.stdout.truncate()
            self.assertEqual(main(argv), 0, argv)
            self.assertTrue(self.stdout.getvalue().startswith(usage), self.stdout.getvalue())
        self.assertIn("check     validate a config file", self.helpOf(["--help"]))
        self.assertIn("schema    print the JSON Schema", self.helpOf(["--help"]))
        self.assertIn("--name NAME", self.helpOf(["explain", "--help"]))
        self.assertIn("rules     manage the rules saved through the admin API",
                      self.helpOf(["--help"]))
        self.assertIn("reset     go back to the config's rules", self.helpOf(["rules", "--help"]))
        self.assertIn("--caller IDENTITY", self.helpOf(["explain", "--help"]))
        self.assertIn("certs     make a development CA and certificates (not for production)",
                      self.helpOf(["--help"]))
        self.assertIn("not for production", self.helpOf(["certs", "issue", "--help"]))
        self.assertEqual(self.stderr.getvalue(), "")

    def helpOf(self, argv: list[str]) -> str:
        self.stdout.seek(0)
        self.stdout.truncate()
        main(argv)
        return self.stdout.getvalue()

    def test_version(self) -> None:
        """
        The version is meshproxy.__version__, which setup.cfg reads too.
        """
        import meshproxy

        self.assertEqual(main(["--version"]), 0)
        self.assertEqual(self.stdout.getvalue(), "meshproxy %s\n" % (meshproxy.__version__,))
        self.assertEqual(self.stderr.getvalue(), "")
        setup = os.path.join(os.path.dirname(SAMPLE_CONFIG), os.pardir, "setup.cfg")
        with open(setup) as f:
            self.assertIn("\nversion = attr: meshproxy.__version__\n", f.read())


class SchemaTests(SynchronousTestCase):
    """
    C{meshproxy schema} prints the JSON Schema of config files.
    """

    def test_printsTheSchema(self) -> None:
        from meshproxy.config import jsonSchema

        out, err = io.StringIO(), io.StringIO()
        self.patch(sys, "stdout", out)
        self.patch(sys, "stderr", err)
        self.assertEqual(main(["schema"]), 0)
        printed = json.loads(out.getvalue())
        self.assertEqual(printed, jsonSchema())
        self.assertEqual(printed["$schema"], "http://json-schema.org/draft-07/schema#")
        self.assertEqual(err.getvalue(), "")


class CheckTests(SynchronousTestCase):
    """
    C{meshproxy check CONFIG}: C{CONFIG: ok} on standard output and exit 0,
    or the errors on standard error and exit 1; warnings on standard error.
    """

    def setUp(self) -> None:
        self.stdout, self.stderr = io.StringIO(), io.StringIO()
        self.patch(sys, "stdout", self.stdout)
        self.patch(sys, "stderr", self.stderr)

    def write(self, text: str, directory: str | None = None) -> str:
        if directory is None:
            path = self.mktemp()
        else:
            os.makedirs(directory, exist_ok=True)
            path = os.path.join(directory, "mesh.yaml")
        with open(path, "w") as f:
            f.write(text)
        return path

    def test_validConfig(self) -> None:
        self.assertEqual(main(["check", SAMPLE_CONFIG]), 0)
        self.assertEqual(self.stdout.getvalue(), SAMPLE_CONFIG + ": ok\n")
        self.assertEqual(self.stderr.getvalue(), "")

    def test_invalidConfig(self) -> None:
        path = self.write("routers: 3\n")
        self.assertEqual(main(["check", path]), 1)
        self.assertEqual(
            self.stderr.getvalue(), path + ": invalid\nrouters: expected a list, got 3\n"
        )
        self.assertEqual(self.stdout.getvalue(), "")

    def test_malformedEndpointInTheProxysWords(self) -> None:
        path = self.write(
            "admin: {listen: 'tcp:x'}\n"
            "routers: [{name: web, listen: 'tcp:1:interface=1.2.3.4.5'}]\n"
        )
        self.assertEqual(main(["check", path]), 1)
        self.assertEqual(
            self.stderr.getvalue(),
            path + ": invalid\n"
            'admin.listen: not a valid endpoint description: port "x" is not a number\n'
            "routers[0].listen: not a valid endpoint description:"
            ' interface "1.2.3.4.5" is not an IP address or a host name\n',
        )
        self.assertNotIn("literal", self.stderr.getvalue())

    def test_interfaceNotOnThisHost(self) -> None:
        """
        A listener on an address this host does not have is refused without
        binding anything (192.0.2.0/24 is reserved for documentation).
        """
        path = self.write(
            "routers:\n"
            "  - {name: web, listen: 'tcp:4140:interface=192.0.2.7'}\n"
            "  - {name: api, listen: 'tcp:4141:interface=0.0.0.0'}\n"
            "  - {name: db, listen: 'tcp:4142:interface=127.0.0.1'}\n"
        )
        self.assertEqual(main(["check", path]), 1)
        self.assertEqual(
            self.stderr.getvalue(),
            path + ": invalid\n"
            'routers[0].listen: interface "192.0.2.7" is not an address of this host\n',
        )

    def test_missingNamerDirectoryIsAWarning(self) -> None:
        path = self.write(
            "namers: [{kind: file, root: /nonexistent/endpoints}]\n"
            "routers: [{name: web, listen: 'tcp:4140:interface=127.0.0.1'}]\n"
        )
        self.assertEqual(main(["check", path]), 0)
        self.assertEqual(self.stdout.getvalue(), path + ": ok\n")
        self.assertEqual(
            self.stderr.getvalue(),
            path + ': warning: namers[0].root: "/nonexistent/endpoints" does not exist:'
            " this namer knows no service until it is created\n",
        )

    def test_rootRelativeToTheConfigFile(self) -> None:
        """
        C{root: endpoints} is the C{endpoints} directory next to the config
        file, wherever the command runs: it exists, so there is no warning.
        """
        directory = os.path.abspath(self.mktemp())
        os.makedirs(os.path.join(directory, "endpoints"))
        path = self.write(
            "namers: [{kind: file, root: endpoints}]\n"
            "routers: [{name: web, listen: 'tcp:4140:interface=127.0.0.1'}]\n",
            directory,
        )
        self.assertNotEqual(os.getcwd(), directory)
        self.assertEqual(main(["check", path]), 0)
        self.assertEqual((self.stdout.getvalue(), self.stderr.getvalue()), (path + ": ok\n", ""))


class CommandProcessTests(SynchronousTestCase):
    """
    The command in a child process: its exit statuses are real.
    """

    def command(self, *args: str) -> tuple[int, str, str]:
        import subprocess

        here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        result = subprocess.run(
            [sys.executable, "-m", "meshproxy.cli", *args],
            cwd=here, capture_output=True, text=True, timeout=60,
        )
        return result.returncode, result.stdout, result.stderr

    def test_exitStatuses(self) -> None:
        code, out, err = self.command()
        self.assertEqual((code, out), (2, ""))
        self.assertIn("error: the following arguments are required: COMMAND", err)
        code, out, err = self.command("check", "--help")
        self.assertEqual((code, err), (0, ""))
        self.assertTrue(out.startswith("usage: meshproxy check"))


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
    def test_callerIsSentAndTheDecisionPrinted(self) -> Any:
        self.router.explanation = dict(
            RECORDED, policy={"allowed": False, "rule": 1, "reason": "rule 1 denies"}
        )
        status, out, err = yield self.explain(
            "--token", TOKEN, "web", "--name", "/svc/users", "--caller",
            "spiffe://mesh.local/a b&c", "--peer", "10.0.0.1", "--method", "PUT",
        )
        self.assertEqual((status, err), (0, ""))
        self.assertEqual(self.router.explained, [{
            "name": "/svc/users", "host": None, "path": None,
            "caller": "spiffe://mesh.local/a b&c", "peer": "10.0.0.1", "method": "PUT",
        }])
        self.assertIn(
            "\npolicy: denied (rule 1 denies) for spiffe://mesh.local/a b&c from 10.0.0.1,"
            " PUT\n", out,
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
        self.assertEqual(
            err.getvalue(),
            "meshproxy explain: cannot reach the admin API at %s: connection refused"
            " (is meshproxy running, with its admin API there?)\n" % (closed,),
        )


RULES_CONFIG = """\
admin: {listen: "tcp:9991:interface=127.0.0.1"%(admin)s}
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
"""


class RulesResetTests(SynchronousTestCase):
    """
    C{meshproxy rules reset ROUTER --config CONFIG} deletes the rules the
    admin API saved for the router, found where the proxy keeps them.
    """

    def setUp(self) -> None:
        self.out, self.err = io.StringIO(), io.StringIO()
        self.patch(sys, "stdout", self.out)
        self.patch(sys, "stderr", self.err)
        self.directory = os.path.abspath(self.mktemp())
        os.mkdir(self.directory)

    def config(self, admin: str = "") -> str:
        path = os.path.join(self.directory, "mesh.yaml")
        with open(path, "w") as f:
            f.write(RULES_CONFIG % {"admin": admin})
        return path

    def saveRules(self, path: str, stateDir: str) -> str:
        """
        Save rules as the admin API does, through the proxy's own store.
        """
        from twisted.internet.testing import MemoryReactorClock

        from meshproxy.config import loadConfig
        from meshproxy.runtime import buildServices

        runtime, _ = buildServices(loadConfig(path), reactor=MemoryReactorClock(), configPath=path)
        store = runtime.rulesStores["web"]
        store.replace("/svc => /#/static;\n/x => /#/static;\n", "*", "test")
        self.assertTrue(os.path.isfile(store.path))
        self.assertEqual(os.path.dirname(store.path), stateDir)
        return store.path

    def test_deletesTheSavedRules(self) -> None:
        """
        The state file next to the config is deleted; at the next start the
        router has the config's rules; a second reset has nothing to do.
        """
        from twisted.internet.testing import MemoryReactorClock

        from meshproxy.config import loadConfig
        from meshproxy.runtime import buildServices

        path = self.config()
        state = self.saveRules(path, self.directory)
        self.assertEqual(main(["rules", "reset", "web", "--config", path]), 0)
        self.assertFalse(os.path.exists(state))
        self.assertEqual(
            self.out.getvalue(),
            "deleted %s: router web uses the config's rules from the next start of meshproxy"
            " (a running one keeps its rules until it restarts)\n" % (state,),
        )
        runtime, _ = buildServices(loadConfig(path), reactor=MemoryReactorClock(), configPath=path)
        self.assertEqual(runtime.routers["web"].rules.rulesText, "/svc => /#/static;")
        self.out.truncate(0)
        self.out.seek(0)
        self.assertEqual(main(["rules", "reset", "web", "--config", path]), 0)
        self.assertEqual(
            self.out.getvalue(),
            "router web has no saved rules (%s does not exist): it uses the config's\n"
            % (state,),
        )
        self.assertEqual(self.err.getvalue(), "")

    def test_stateDirFromTheConfig(self) -> None:
        """
        With C{admin.stateDir} (relative to the config file), the file is
        looked for there.
        """
        path = self.config(", stateDir: state")
        stateDir = os.path.join(self.directory, "state")
        state = self.saveRules(path, stateDir)
        self.assertEqual(main(["rules", "reset", "web", "--config", path]), 0)
        self.assertFalse(os.path.exists(state))

    def test_pathAsTheStoreNamesIt(self) -> None:
        """
        The command's file name is the rules store's, even for names that
        need quoting.
        """
        from meshproxy.admin.rules import RulesStore
        from meshproxy.cli import rulesStatePath

        class Router:
            name = "a b/c%"
            rulesText = ""

        class Clock:
            def seconds(self) -> float:
                return 0.0

        store = RulesStore(Router(), stateDir="/var/lib/meshproxy", clock=Clock())
        self.assertEqual(rulesStatePath("/var/lib/meshproxy", Router.name), store.path)

    def test_unknownRouterAndTcpRouter(self) -> None:
        """
        An unknown router is refused; a TCP router's rules are reset as an
        HTTP router's are (it has rules too).
        """
        path = self.config()
        self.assertEqual(main(["rules", "reset", "nope", "--config", path]), 1)
        self.assertEqual(main(["rules", "reset", "db", "--config", path]), 0)
        self.assertEqual(self.err.getvalue(), (
            "meshproxy rules reset: %s has no router nope (its routers: web, db)\n" % (path,)
        ))
        self.assertIn("router db has no saved rules", self.out.getvalue())

    def test_invalidConfig(self) -> None:
        path = os.path.join(self.directory, "bad.yaml")
        with open(path, "w") as f:
            f.write("routers: [{name: web, listen: 'tcp:4140', timeouts: {total: fast}}]\n")
        self.assertEqual(main(["rules", "reset", "web", "--config", path]), 1)
        self.assertTrue(self.err.getvalue().startswith(path + ": invalid\n"), self.err.getvalue())
        self.assertIn("routers[0].timeouts.total", self.err.getvalue())

    def test_cannotDelete(self) -> None:
        """
        A file that cannot be deleted is named with the reason in words.
        """
        import errno

        path = self.config()
        state = self.saveRules(path, self.directory)

        def refuse(name: str) -> None:
            raise PermissionError(errno.EACCES, "Permission denied", name)

        self.patch(os, "remove", refuse)
        self.assertEqual(main(["rules", "reset", "web", "--config", path]), 1)
        self.assertEqual(
            self.err.getvalue(),
            "meshproxy rules reset: cannot delete %s: permission denied\n" % (state,),
        )

    def test_embeddedDemoSavesNothing(self) -> None:
        self.assertEqual(main(["rules", "reset", "web"]), 0)
        self.assertIn("nothing to reset: the embedded demo", self.out.getvalue())


class CertsTests(SynchronousTestCase):
    """
    C{meshproxy certs init} and C{issue}: the files written, said on
    standard output with a line saying it is for development; errors in a
    line on standard error, exit status 1.
    """

    def setUp(self) -> None:
        self.out, self.err = io.StringIO(), io.StringIO()
        self.patch(sys, "stdout", self.out)
        self.patch(sys, "stderr", self.err)
        self.directory = os.path.abspath(self.mktemp())

    def certs(self, *argv: str) -> int:
        self.out.seek(0)
        self.out.truncate()
        self.err.seek(0)
        self.err.truncate()
        return main(["certs", *argv])

    def test_initThenIssue(self) -> None:
        from cryptography import x509

        d = self.directory
        self.assertEqual(self.certs("init", d), 0)
        self.assertEqual(self.out.getvalue(), (
            "wrote {d}/ca.pem (the CA certificate: give it as tls.clientCertificates.ca and"
            " upstreamTls.ca)\n"
            "wrote {d}/ca.key (the CA key, readable by you only: keep it for certs issue)\n"
            + cli.DEVELOPMENT_ONLY + "\n"
        ).format(d=d))
        self.assertEqual(self.err.getvalue(), "")
        self.assertEqual(os.stat(os.path.join(d, "ca.key")).st_mode & 0o777, 0o600)

        self.assertEqual(
            self.certs("issue", d, "web", "--uri", "spiffe://mesh.local/web", "--dns", "web.local",
                     "--dns", "*.web.local", "--ip", "127.0.0.1", "--ip", "::1"),
            0,
        )
        lines = self.out.getvalue().splitlines()
        self.assertEqual(lines, [
            "wrote %s/web.pem (the certificate of web: URI spiffe://mesh.local/web,"
            " DNS web.local, DNS *.web.local, IP 127.0.0.1, IP ::1)" % (d,),
            "wrote %s/web.key (its key, readable by you only)" % (d,),
            cli.DEVELOPMENT_ONLY,
        ])
        self.assertIn("development only, not for production", lines[-1])
        with open(os.path.join(d, "web.pem"), "rb") as f:
            cert = x509.load_pem_x509_certificate(f.read())
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        self.assertEqual(
            names.get_values_for_type(x509.UniformResourceIdentifier), ["spiffe://mesh.local/web"]
        )
        self.assertEqual(names.get_values_for_type(x509.DNSName), ["web.local", "*.web.local"])

        self.assertEqual(self.certs("issue", d, "api"), 0)
        self.assertIn("(the certificate of api: DNS api)", self.out.getvalue())

    def test_errorsInOneLineWithoutATraceback(self) -> None:
        d = self.directory
        missing = os.path.join(d, "none")
        self.assertEqual(self.certs("issue", missing, "web"), 1)
        self.assertEqual(
            self.err.getvalue(),
            "meshproxy certs issue: no CA in %s: run `meshproxy certs init %s` first\n"
            % (missing, missing),
        )
        self.assertEqual(self.certs("init", d), 0)
        for argv, error in (
            (["init", d], "meshproxy certs init: %s already holds a CA (ca.pem, ca.key):"
                          " not overwritten" % (d,)),
            (["init", os.path.join(d, "ca.pem")],
             "meshproxy certs init: %s/ca.pem is not a directory" % (d,)),
            (["issue", d, "../web"], 'meshproxy certs issue: "../web" cannot name a'
                                    ' certificate: use letters, digits, ".", "_" and "-"'
                                    ' (not "ca")'),
            (["issue", d, "ca"], 'meshproxy certs issue: "ca" cannot name a certificate'),
            (["issue", d, "web", "--uri", "web"],
             'meshproxy certs issue: "web" is not a URI such as spiffe://mesh.local/web'),
            (["issue", d, "web", "--dns", "a b"], 'meshproxy certs issue: "a b" is not a DNS'
                                                  " name such as web.mesh.local"),
            (["issue", d, "web", "--dns", "\u00e9.example"],
             'meshproxy certs issue: "\u00e9.example" is not a DNS name'),
            (["issue", d, "web", "--ip", "1.2.3"],
             "meshproxy certs issue: '1.2.3' does not appear to be an IPv4 or IPv6 address"),
        ):
            self.assertEqual(self.certs(*argv), 1, argv)
            self.assertTrue(self.err.getvalue().startswith(error), self.err.getvalue())
            self.assertEqual(len(self.err.getvalue().splitlines()), 1, self.err.getvalue())
            self.assertEqual(self.out.getvalue(), "")
        self.assertEqual(sorted(os.listdir(d)), ["ca.key", "ca.pem"])

    def test_cannotWrite(self) -> None:
        """
        An operating system error is one line naming the path and the
        reason in words.
        """
        import errno

        def refuse(path: str, *args: Any, **kwargs: Any) -> None:
            raise PermissionError(errno.EACCES, "Permission denied", path)

        self.patch(os, "makedirs", refuse)
        self.assertEqual(self.certs("init", self.directory), 1)
        self.assertEqual(
            self.err.getvalue(),
            "meshproxy certs init: cannot write %s: permission denied\n" % (self.directory,),
        )

    def test_certificatesServeTheMesh(self) -> None:
        """
        What C{issue} writes is what the TLS code reads: the identity of a
        certificate with a URI name is that URI.
        """
        from OpenSSL import crypto

        from meshproxy.tls import identityOf

        d = self.directory
        self.certs("init", d)
        self.certs("issue", d, "web", "--uri", "spiffe://mesh.local/web")
        with open(os.path.join(d, "web.pem"), "rb") as f:
            certificate = crypto.load_certificate(crypto.FILETYPE_PEM, f.read())
        self.assertEqual(identityOf(certificate).name, "spiffe://mesh.local/web")
