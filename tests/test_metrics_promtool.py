"""
C{/metrics} of a real proxy under traffic, checked by Prometheus's own
tools (Debian's C{prometheus} package: C{promtool}).

A proxy runs in this process from a config text, in front of real
upstreams on loopback: an HTTP router (with retries, a failing endpoint, a
refused one) and a TCP router. A bounded set of requests goes through it,
then C{/metrics} is fetched in both formats:

 - the Prometheus text format must pass C{promtool check metrics} (its
   parser and its linter) without a word;
 - the OpenMetrics format must be read by Prometheus's OpenMetrics parser,
   the one it scrapes with: C{promtool check metrics} only reads the text
   format (it stops at C{# TYPE ... info} and at exemplars), so the
   exposition goes through C{promtool tsdb create-blocks-from openmetrics},
   which parses it strictly (C{# EOF}, exemplars, types) into a block. A
   backfill needs a timestamp on every sample: one is added to each line.

Each test is bounded by trial's timeout and waits on events, never on the
clock.
"""

from __future__ import annotations

import os
import shutil
import socket
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import defer, protocol
from twisted.python.failure import Failure
from twisted.trial.unittest import SkipTest, TestCase

from meshproxy.telemetry.metrics import METHODS, MeshMetrics, exposition
from tests.admin_support import AdminClient, runProxy
from tests.support import BackendFactory, connectClient, listenBackend, okHandler

_PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"

# A path that must never show in a label: label values come from bounded
# sets, never from what clients send.
_SECRET_PATH = b"/secret-path-4242"

CONFIG = """\
admin: {listen: "tcp:port=0:interface=127.0.0.1"}
namers:
  - kind: static
    prefix: /#/static
    services:
      hello: ["127.0.0.1:%(ok)d"]
      flaky: ["127.0.0.1:%(ok)d", "127.0.0.1:%(failing)d"]
      failing: ["127.0.0.1:%(failing)d"]
      down: ["127.0.0.1:%(refused)d"]
routers:
  - name: web
    listen: "tcp:0:interface=127.0.0.1"
    identifier: {kind: host}
    rules: "/svc => /#/static;"
    classifier: {kind: retryableRead5XX}
    timeouts: {total: 5s}
    grpc: {methods: [/pkg.Greeter/Hello]}
  - name: db
    protocol: tcp
    listen: "tcp:0:interface=127.0.0.1"
    destination: /#/static/hello
"""


def deadPort() -> int:
    """
    A loopback port nothing listens on (connections are refused).
    """
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port: int = s.getsockname()[1]
    s.close()
    return port


def _failing(proto: Any, request: Any) -> None:
    proto.transport.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\nbusy")


class _Collect(protocol.ProcessProtocol):
    """
    Writes C{data} to a process's standard input, then collects its output
    and exit code.
    """

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.out = b""
        self.err = b""
        self.done: defer.Deferred[tuple[bytes, bytes, int]] = defer.Deferred()

    def connectionMade(self) -> None:
        self.transport.write(self.data)
        self.transport.closeStdin()

    def outReceived(self, data: bytes) -> None:
        self.out += data

    def errReceived(self, data: bytes) -> None:
        self.err += data

    def processEnded(self, reason: Failure) -> None:
        code = getattr(reason.value, "exitCode", None)
        self.done.callback((self.out, self.err, -1 if code is None else code))


def promtool(*args: str, data: bytes = b"") -> defer.Deferred[tuple[bytes, bytes, int]]:
    """
    Run C{promtool} with C{args}, C{data} on its standard input.

    @return: a Deferred firing with C{(stdout, stderr, exitCode)}.
    """
    from twisted.internet import reactor

    collect = _Collect(data)
    reactor.spawnProcess(collect, _PROMTOOL, [_PROMTOOL, *args], env=dict(os.environ))
    return collect.done


def stamped(openMetrics: bytes, timestamp: int = 1_800_000_000) -> bytes:
    """
    An OpenMetrics exposition with C{timestamp} on every sample (before
    its exemplar, if any), as a backfill wants.
    """
    lines = []
    for line in openMetrics.decode("utf-8").splitlines():
        if not line.startswith("#"):
            head, exemplar, rest = line.partition(" # {")
            line = "%s %d%s%s" % (head, timestamp, exemplar, rest)
        lines.append(line)
    return ("\n".join(lines) + "\n").encode("utf-8")


class PromtoolTestCase(TestCase):
    """
    Skips without C{promtool} (C{.ci/run} installs Debian's C{prometheus}).
    """

    timeout = 30

    def setUp(self) -> None:
        if not os.access(_PROMTOOL, os.X_OK):
            raise SkipTest(
                "promtool is not installed (Debian: apt-get install prometheus; .ci/run does)"
            )

    @defer.inlineCallbacks
    def checkText(self, body: bytes) -> Any:
        """
        Assert that C{promtool check metrics} finds nothing to say.
        """
        out, err, code = yield promtool("check", "metrics", data=body)
        self.assertEqual((code, out + err), (0, b""), body.decode("utf-8"))

    @defer.inlineCallbacks
    def checkOpenMetrics(self, body: bytes) -> Any:
        """
        Assert that Prometheus's OpenMetrics parser reads C{body} whole.
        """
        self.assertTrue(body.endswith(b"# EOF\n"))
        path = self.mktemp()
        os.makedirs(path)
        source = os.path.join(path, "metrics.om")
        with open(source, "wb") as f:
            f.write(stamped(body))
        blocks = os.path.join(path, "blocks")
        out, err, code = yield promtool(
            "tsdb", "create-blocks-from", "openmetrics", source, blocks
        )
        self.assertEqual(code, 0, (out + err).decode("utf-8", "replace"))
        samples = sum(1 for line in body.splitlines() if not line.startswith(b"#"))
        # The block summary names how many samples it holds: all of them.
        self.assertIn(b" %d " % (samples,), out)


class UnderTrafficTests(PromtoolTestCase):
    """
    A proxy's C{/metrics} after a bounded mix of traffic.
    """

    @defer.inlineCallbacks
    def startProxy(self) -> Any:
        ok = yield listenBackend(self, BackendFactory(okHandler(b"ok")))
        failing = yield listenBackend(self, BackendFactory(_failing))
        refused = deadPort()
        proxy = yield runProxy(
            self, CONFIG % {"ok": ok, "failing": failing, "refused": refused}
        )
        ports = []
        for service in proxy.services:
            if hasattr(service, "whenBound"):
                port = yield service.whenBound()
                ports.append(port.getHost().port)
        web, db, admin = ports
        return web, db, admin

    @defer.inlineCallbacks
    def send(self, port: int, requests: list[bytes], heads: tuple[bytes, ...] = ()) -> Any:
        """
        Send C{requests} one after the other on one connection.

        @return: the statuses received.
        """
        client = yield connectClient(self, port, heads)
        for i, request in enumerate(requests):
            client.transport.write(request)
            yield client.waitFor(i + 1)
        return [response.status for response in client.responses]

    @defer.inlineCallbacks
    def traffic(self, web: int, db: int) -> Any:
        """
        Every method, answers from 2xx to 5xx, retries, an extension method
        and one the proxy cannot parse; a TCP connection left open.
        """

        def request(method: bytes, host: bytes, body: bytes = b"") -> bytes:
            length = b"Content-Length: %d\r\n" % (len(body),) if body else b""
            return b"%s %s HTTP/1.1\r\nHost: %s\r\n%s\r\n%s" % (
                method, _SECRET_PATH, host, length, body,
            )

        statuses = yield self.send(
            web,
            [request(b"GET", b"hello") for _ in range(3)]
            + [request(b"HEAD", b"hello")]
            + [request(method, b"hello", b"payload")
               for method in (b"POST", b"PUT", b"PATCH")]
            + [request(method, b"hello") for method in (b"DELETE", b"OPTIONS", b"PROPFIND")],
            heads=(b"GET",) * 3 + (b"HEAD",),
        )
        self.assertEqual(statuses, [200] * 10)
        # The failing endpoint's 503s are retried on the other (until
        # failure accrual ejects it).
        statuses = yield self.send(web, [request(b"GET", b"flaky") for _ in range(8)])
        self.assertEqual(statuses, [200] * 8)
        statuses = yield self.send(web, [request(b"GET", b"failing"), request(b"POST", b"failing")])
        self.assertEqual(statuses, [503, 503])
        statuses = yield self.send(web, [request(b"GET", b"down")])
        self.assertEqual(statuses, [502])
        # gRPC calls (over HTTP/1) answered by meshproxy: UNAVAILABLE, as
        # a 200; a method the config names, and one it does not.
        grpcCall = (
            b"POST %s HTTP/1.1\r\nHost: down\r\ncontent-type: application/grpc\r\n"
            b"Content-Length: 5\r\n\r\n\x00\x00\x00\x00\x00"
        )
        statuses = yield self.send(
            web, [grpcCall % (b"/pkg.Greeter/Hello",), grpcCall % (_SECRET_PATH,)]
        )
        self.assertEqual(statuses, [200, 200])
        statuses = yield self.send(web, [request(b"GET", b"nobody")])
        self.assertEqual(len(statuses), 1)
        self.assertGreaterEqual(statuses[0], 400)
        # A method the parser does not know: answered 400, never routed.
        client = yield connectClient(self, web)
        client.transport.write(request(b"BREW", b"hello"))
        yield client.waitFor(1)
        self.assertEqual([r.status for r in client.responses], [400])
        # A TCP connection through the db router, left open for the scrape.
        statuses = yield self.send(db, [request(b"GET", b"hello")])
        self.assertEqual(statuses, [200])

    @defer.inlineCallbacks
    def test_bothFormatsPassPromtool(self) -> Any:
        web, db, admin = yield self.startProxy()
        yield self.traffic(web, db)
        client = AdminClient(self, admin)

        text = yield client.get("/metrics")
        self.assertEqual(text.code, 200)
        self.assertTrue(text.header("content-type").startswith("text/plain"))
        self.assertEqual(text.header("vary"), "Accept")
        yield self.checkText(text.body)

        openMetrics = yield client.get(
            "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}
        )
        self.assertEqual(openMetrics.code, 200)
        self.assertTrue(
            openMetrics.header("content-type").startswith("application/openmetrics-text;")
        )
        yield self.checkOpenMetrics(openMetrics.body)

        self.assertBounded(text.body)
        self.assertTrafficShows(text.body)

    def assertBounded(self, body: bytes) -> None:
        """
        No label holds a path, a client's address or a status code.
        """
        self.assertNotIn(_SECRET_PATH, body)
        self.assertNotIn(b"nobody", body)
        labels: dict[str, set[str]] = {}
        for family in text_string_to_metric_families(body.decode("utf-8")):
            for sample in family.samples:
                for name, value in sample.labels.items():
                    labels.setdefault(name, set()).add(value)
        self.assertLessEqual(labels["method"], set(METHODS) | {"Hello", "other"})
        self.assertEqual(labels["service"], {"pkg.Greeter", "other"})
        self.assertLessEqual(labels["code_class"], {"1xx", "2xx", "3xx", "4xx", "5xx"})
        self.assertEqual(labels["router"], {"web", "db"})
        self.assertLessEqual(
            labels["name"],
            {"/#/static/hello", "/#/static/flaky", "/#/static/failing", "/#/static/down"},
        )
        # Endpoints are the namers' addresses only: no client's port.
        self.assertEqual(len(labels["endpoint"]), 3)

    def assertTrafficShows(self, body: bytes) -> None:
        """
        What the traffic did shows in the families it should.
        """
        samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
        for family in text_string_to_metric_families(body.decode("utf-8")):
            for sample in family.samples:
                samples[(sample.name, frozenset(sample.labels.items()))] = sample.value

        def value(family: str, /, **labels: str) -> float:
            return samples[(family, frozenset(labels.items()))]

        def total(family: str, /, **labels: str) -> float:
            return sum(
                v for (n, ls), v in samples.items()
                if n == family and set(labels.items()) <= ls
            )

        hello = dict(router="web", name="/#/static/hello")
        # (Summed over methods: which method each answer counts under is
        # what the request path tells RouteStats.record.)
        self.assertEqual(total("meshproxy_responses_total", code_class="2xx", **hello), 10)
        self.assertEqual(total("meshproxy_responses_total", name="/#/static/failing",
                               code_class="5xx"), 2)
        self.assertGreater(total("meshproxy_retries_total", router="web"), 0)
        self.assertGreater(value("meshproxy_errors_total", router="web",
                                 reason="upstream-connect"), 0)
        self.assertEqual(value("meshproxy_request_duration_seconds_count", **hello), 10)
        down = dict(router="web", name="/#/static/down", code="UNAVAILABLE")
        self.assertEqual(value("meshproxy_grpc_responses_total", service="pkg.Greeter",
                               method="Hello", **down), 1)
        self.assertEqual(value("meshproxy_grpc_responses_total", service="other",
                               method="other", **down), 1)
        self.assertGreaterEqual(value("meshproxy_server_connections_open", router="db"), 1)
        self.assertGreaterEqual(
            total("meshproxy_upstream_connections_open", router="web", name="/#/static/hello"), 1
        )
        self.assertEqual(total("meshproxy_upstream_connections_open", router="db"), 1)
        self.assertEqual(total("meshproxy_build_info"), 1)
        if os.path.exists("/proc/self/stat"):
            self.assertGreater(total("process_open_fds"), 0)
            self.assertGreater(total("process_start_time_seconds"), 0)


class ExemplarTests(PromtoolTestCase):
    """
    Exemplars and every family with samples, read by Prometheus's
    OpenMetrics parser.
    """

    @defer.inlineCallbacks
    def test_exemplarsPassPrometheusParser(self) -> Any:
        registry = CollectorRegistry()
        metrics = MeshMetrics(registry)
        stats = metrics.route("web", "/#/fs/users")
        for i, seconds in enumerate((0.0004, 0.003, 0.07, 0.9, 30.0)):
            stats.record(200, seconds, b"GET", seconds / 2, 10, 20, "%032x" % (i + 1,))
        stats.record(503, 0.2, b"BREW", None)
        stats.recordGrpc("pkg.Greeter", "Hello", 0)
        stats.recordGrpc("other", "other", 14)
        stats.recordGrpc("other", "other", 99)
        metrics.connections("web").opened += 1
        metrics.error("web", "no-endpoint")
        metrics.retry("web", "status")
        metrics.denied("web", None, None)
        metrics.event("web", "ejected")
        metrics.telemetry.exported("zipkin", 2)
        metrics.telemetry.dropped("otlp", "queue-full")
        body, _ = exposition(registry, "application/openmetrics-text")
        self.assertEqual(body.count(b"# {trace_id="), 5)
        yield self.checkOpenMetrics(body)
        text, _ = exposition(registry, None)
        yield self.checkText(text)
