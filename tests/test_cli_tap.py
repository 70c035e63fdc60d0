"""
Tests for C{meshproxy tap}: the command follows a real admin API on a
loopback port, fed with summaries through its hub (the command's blocking
reads run in a thread), and the formatting of a summary.
"""

from __future__ import annotations

import io
import json
import sys
from typing import Any

from prometheus_client import CollectorRegistry
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase, TestCase

from meshproxy.cli import TapError, followTap, formatSummary, main, tapMain
from meshproxy.telemetry.spans import TelemetryStats
from meshproxy.telemetry.tap import TapFilter
from tests.test_telemetry_tap import FakeRuntime, WatchedHub, _Tracking, lineOf, makeSummary

TOKEN = "cli-t4p-t0ken"


class FormatTests(SynchronousTestCase):
    """
    L{formatSummary}: one line per request for a terminal.
    """

    def test_summary(self) -> None:
        summary = makeSummary(status=503, meshErr="overloaded", durationMs=1.25, endpoint=None)
        self.assertEqual(
            formatSummary(lineOf(summary).decode("utf-8")),
            "2026-12-01T09:00:00.123Z 503 GET users.example/api/users 1.2ms - mesh-err=overloaded",
        )

    def test_answered(self) -> None:
        self.assertEqual(
            formatSummary(lineOf(makeSummary()).decode("utf-8")),
            "2026-12-01T09:00:00.123Z 200 GET users.example/api/users 12.5ms 127.0.0.1:8081",
        )

    def test_clientGone(self) -> None:
        summary = makeSummary(status=0, ttfbMs=None, endpoint=None, authority=None)
        self.assertEqual(
            formatSummary(lineOf(summary).decode("utf-8")),
            "2026-12-01T09:00:00.123Z   0 GET /api/users 12.5ms -",
        )

    def test_notASummary(self) -> None:
        self.assertEqual(formatSummary("not json"), "not json")
        self.assertEqual(formatSummary("[1]"), "[1]")
        self.assertEqual(formatSummary("{}"), "-   - - - - -")


class TapAgainstAdminAPITests(TestCase):
    """
    C{meshproxy tap} against a real admin API on a loopback port.
    """

    timeout = 30

    def setUp(self) -> None:
        from meshproxy.admin.api import AdminAPI
        from meshproxy.admin.site import AdminSite

        self.stats = TelemetryStats()
        self.hub = WatchedHub(self.stats, clock=reactor, maxEvents=2)
        self.addCleanup(self.hub.close)
        self.api = AdminAPI(
            FakeRuntime({"web": object()}), CollectorRegistry(),
            token=TOKEN, protectReads=True, clock=reactor, tap=self.hub,
        )
        self.factory = _Tracking(AdminSite(self.api.app.resource()))
        self.port = reactor.listenTCP(0, self.factory, interface="127.0.0.1")
        self.admin = "http://127.0.0.1:%d" % (self.port.getHost().port,)
        self.addCleanup(self.factory.closeAll)
        self.addCleanup(self.port.stopListening)

    def tap(self, *argv: str, environ: dict[str, str] | None = None, out: Any = None) -> Deferred:
        """
        Run C{meshproxy tap --admin <the API> ARGV} in a thread.

        @return: a Deferred firing with C{(status, out, err)}.
        """
        out = io.StringIO() if out is None else out
        err = io.StringIO()
        d = deferToThread(
            tapMain, ["--admin", self.admin, *argv], out=out, err=err,
            environ={} if environ is None else environ,
        )
        d.addCallback(lambda status: (status, out.getvalue(), err.getvalue()))
        return d

    def publish(self, **fields: Any) -> dict[str, Any]:
        summary = makeSummary(**fields)
        self.hub.summarize(summary, lineOf(summary))
        return summary

    @inlineCallbacks
    def test_printsMatchingRequestsUntilTheEnd(self) -> Any:
        """
        One line per request the filters match, until the proxy ends the
        stream: then exit 0 saying so.
        """
        subscribed = self.hub.nextSubscribe()
        running = self.tap("--token", TOKEN, "web", "--status", "5xx")
        subscription = yield subscribed
        self.assertEqual(subscription.filter, TapFilter(router="web", status=(500, 599)))
        self.publish(status=200)
        self.publish(status=502, meshErr="upstream-connect", path="/a")
        self.publish(status=503, path="/b", durationMs=100.0)
        self.hub.close()
        status, out, err = yield running
        self.assertEqual(
            (status, err), (0, "meshproxy tap: the proxy ended the stream (shutdown)\n")
        )
        self.assertEqual(out, (
            "2026-12-01T09:00:00.123Z 502 GET users.example/a 12.5ms 127.0.0.1:8081"
            " mesh-err=upstream-connect\n"
            "2026-12-01T09:00:00.123Z 503 GET users.example/b 100.0ms 127.0.0.1:8081\n"
        ))

    @inlineCallbacks
    def test_jsonPrintsTheSummaries(self) -> Any:
        subscribed = self.hub.nextSubscribe()
        running = self.tap("web", "--json", environ={"MESHPROXY_ADMIN_TOKEN": TOKEN})
        yield subscribed
        first, second = self.publish(path="/1"), self.publish(path="/2", status=404)
        self.hub.close()
        status, out, _ = yield running
        self.assertEqual(status, 0)
        self.assertEqual(out, "%s\n%s\n" % (lineOf(first).decode(), lineOf(second).decode()))
        self.assertEqual([json.loads(line) for line in out.splitlines()], [first, second])

    @inlineCallbacks
    def test_filtersSent(self) -> Any:
        subscribed = self.hub.nextSubscribe()
        running = self.tap(
            "--token", TOKEN, "web", "--name", "/#/fs/users", "--path", "/api v1/",
            "--method", "get", "--status", "404", "--min-duration", "1.5s",
        )
        subscription = yield subscribed
        self.assertEqual(subscription.filter, TapFilter(
            router="web", name="/#/fs/users", path="/api v1/", method="GET",
            status=(404, 404), minDurationMs=1500.0,
        ))
        self.hub.close()
        status, _, _ = yield running
        self.assertEqual(status, 0)

    @inlineCallbacks
    def test_subMillisecondDuration(self) -> Any:
        subscribed = self.hub.nextSubscribe()
        running = self.tap("--token", TOKEN, "web", "--min-duration", "0.1ms")
        subscription = yield subscribed
        self.assertEqual(subscription.filter.minDurationMs, 0.1)
        self.hub.close()
        yield running

    @inlineCallbacks
    def test_droppedEventsAreSaid(self) -> Any:
        """
        When the proxy dropped events for this reader, it says how many, on
        standard error, and goes on.
        """
        subscribed = self.hub.nextSubscribe()
        running = self.tap("--token", TOKEN, "web", "--json")
        subscription = yield subscribed
        # As if the terminal's connection were full: two fit, three are
        # dropped.
        subscription.pauseProducing()
        sent = [self.publish(path="/%d" % (i,)) for i in range(5)]
        subscription.resumeProducing()
        after = self.publish(path="/after")
        self.hub.close()
        status, out, err = yield running
        self.assertEqual(status, 0)
        self.assertEqual(
            out.splitlines(), [lineOf(s).decode() for s in (sent[0], sent[1], after)]
        )
        self.assertEqual(err, (
            "meshproxy tap: 3 events dropped: this reader was slower than the requests"
            " (narrow the filters)\n"
            "meshproxy tap: the proxy ended the stream (shutdown)\n"
        ))

    @inlineCallbacks
    def test_errorsExit1WithTheReason(self) -> Any:
        status, out, err = yield self.tap("--token", TOKEN, "nope")
        self.assertEqual((status, out), (1, ""))
        self.assertEqual(err, "meshproxy tap: admin API answered 404: unknown router 'nope'\n")
        status, _, err = yield self.tap("--token", TOKEN, "web", "--status", "6xx")
        self.assertEqual(status, 1)
        self.assertIn("answered 400: status= is a class (1xx to 5xx)", err)

    @inlineCallbacks
    def test_missingTokenSaysHowToGiveIt(self) -> Any:
        status, out, err = yield self.tap("web")
        self.assertEqual((status, out), (1, ""))
        self.assertEqual(
            err,
            "meshproxy tap: admin API answered 401: unauthorized (give --token or set"
            " $MESHPROXY_ADMIN_TOKEN)\n",
        )
        self.assertEqual(self.hub.subscriptions, ())

    @inlineCallbacks
    def test_unreachableAdminAPI(self) -> Any:
        from twisted.web.server import Site

        port = reactor.listenTCP(0, Site(self.api.app.resource()), interface="127.0.0.1")
        closed = "http://127.0.0.1:%d" % (port.getHost().port,)
        yield port.stopListening()
        out, err = io.StringIO(), io.StringIO()
        status = yield deferToThread(
            tapMain, ["--admin", closed, "web"], out=out, err=err, environ={}
        )
        self.assertEqual(status, 1)
        self.assertEqual(
            err.getvalue(),
            "meshproxy tap: cannot reach the admin API at %s: connection refused"
            " (is meshproxy running, with its admin API there?)\n" % (closed,),
        )

    @inlineCallbacks
    def test_streamCutWithoutTheEnd(self) -> Any:
        """
        A stream that stops without the end event is an error.
        """
        subscribed = self.hub.nextSubscribe()
        running = self.tap("--token", TOKEN, "web")
        yield subscribed
        gone = self.hub.nextUnsubscribe()
        # The stream's head goes out, then the connection closes.
        for p in list(self.factory.protocols):
            p.transport.loseConnection()
        yield gone
        status, out, err = yield running
        self.assertEqual((status, out), (1, ""))
        self.assertEqual(
            err, "meshproxy tap: the admin API at %s closed the stream\n" % (self.admin,)
        )

    @inlineCallbacks
    def test_quietStreamTimesOut(self) -> Any:
        subscribed = self.hub.nextSubscribe()

        def follow() -> list[tuple[str, str]]:
            return list(followTap(self.admin, [("router", "web")], token=TOKEN, idle=0.2))

        running = deferToThread(follow)
        yield subscribed
        gone = self.hub.nextUnsubscribe()
        failure = yield self.assertFailure(running, TapError)
        self.assertEqual(
            str(failure),
            "nothing from the admin API at %s for 0.2 s (not even a heartbeat)" % (self.admin,),
        )
        # It hung up.
        yield gone

    @inlineCallbacks
    def test_interruptHangsUp(self) -> Any:
        """
        Ctrl-C (here: while printing) ends the command with 0, and the
        connection is closed.
        """

        class Interrupting(io.StringIO):
            def write(self, text: str) -> int:
                raise KeyboardInterrupt()

        subscribed = self.hub.nextSubscribe()
        running = self.tap("--token", TOKEN, "web", out=Interrupting())
        yield subscribed
        gone = self.hub.nextUnsubscribe()
        self.publish()
        status, _, err = yield running
        self.assertEqual((status, err), (0, ""))
        yield gone

    @inlineCallbacks
    def test_closedPipeEndsQuietly(self) -> Any:
        class Closed(io.StringIO):
            def write(self, text: str) -> int:
                raise BrokenPipeError()

        subscribed = self.hub.nextSubscribe()
        running = self.tap("--token", TOKEN, "web", out=Closed())
        yield subscribed
        gone = self.hub.nextUnsubscribe()
        self.publish()
        status, _, err = yield running
        self.assertEqual((status, err), (0, ""))
        yield gone

    @inlineCallbacks
    def test_mainRunsTap(self) -> Any:
        """
        C{meshproxy tap} is a subcommand of the C{meshproxy} command.
        """
        out, err = io.StringIO(), io.StringIO()
        self.patch(sys, "stdout", out)
        self.patch(sys, "stderr", err)
        subscribed = self.hub.nextSubscribe()
        running = deferToThread(main, ["tap", "--admin", self.admin, "--token", TOKEN, "web"])
        yield subscribed
        summary = self.publish()
        self.hub.close()
        status = yield running
        self.assertEqual(status, 0)
        self.assertEqual(out.getvalue(), formatSummary(lineOf(summary).decode()) + "\n")


class ArgumentTests(SynchronousTestCase):
    """
    Bad arguments, found before connecting.
    """

    def test_badDuration(self) -> None:
        err = io.StringIO()
        status = tapMain(
            ["--admin", "http://127.0.0.1:1", "web", "--min-duration", "fast"],
            out=io.StringIO(), err=err, environ={},
        )
        self.assertEqual(status, 2)
        self.assertEqual(
            err.getvalue(),
            'meshproxy tap: --min-duration: expected a duration like "2s", got "fast"\n',
        )

    def test_badAdminURL(self) -> None:
        for url in ("127.0.0.1:9990", "ftp://127.0.0.1", "http://127.0.0.1:x"):
            err = io.StringIO()
            status = tapMain(["--admin", url, "web"], out=io.StringIO(), err=err, environ={})
            self.assertEqual(status, 1)
            self.assertEqual(
                err.getvalue(),
                "meshproxy tap: --admin must be an http:// or https:// URL, got %r\n" % (url,),
            )

    def test_routerRequired(self) -> None:
        err = io.StringIO()
        self.patch(sys, "stderr", err)
        self.assertEqual(tapMain([], out=io.StringIO(), err=err, environ={}), 2)
        self.assertIn("the following arguments are required: ROUTER", err.getvalue())

    def test_helpListed(self) -> None:
        out = io.StringIO()
        self.patch(sys, "stdout", out)
        self.assertEqual(main(["--help"]), 0)
        self.assertIn("tap", out.getvalue())
        self.assertIn("follow a running proxy's requests, live", out.getvalue())
