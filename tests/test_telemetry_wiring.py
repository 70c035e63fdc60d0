"""
Telemetry as the process builds it from the C{telemetry} section, on
loopback: the access log file gets one JSON line per request, the tap
streams them, and the route metrics carry the method.
"""

import json
import os

from twisted.internet import defer, protocol, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.trial.unittest import TestCase

from meshproxy.telemetry.spans import SUMMARY_FIELDS
from tests.support import BackendFactory, connectClient, listenBackend, startProxy


def _config(backend, body=""):
    return f"""\
admin: {{listen: "tcp:0:interface=127.0.0.1"}}
namers:
  - {{kind: static, prefix: /#/s, services: {{users: ["127.0.0.1:{backend}"]}}}}
routers:
  - name: web
    listen: "tcp:0:interface=127.0.0.1"
    rules: "/svc => /#/s;"
{body}"""


class _SSE(protocol.Protocol):
    """
    Reads a server-sent event stream; fires C{events} waiters with the data
    of each C{data:} line.
    """

    def __init__(self, path):
        self.path = path
        self.buffer = b""
        self.raw = b""
        self.events = []
        self.waiting = []
        self.closed = defer.Deferred()

    def connectionMade(self):
        self.transport.write(
            b"GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" % (self.path.encode("ascii"),)
        )

    def dataReceived(self, data):
        self.raw += data
        self.buffer += data
        while b"\n" in self.buffer:
            line, self.buffer = self.buffer.split(b"\n", 1)
            if line.startswith(b"data: {\"time\""):
                self.events.append(json.loads(line[6:]))
        still = []
        for n, d in self.waiting:
            if len(self.events) >= n:
                d.callback(self.events)
            else:
                still.append((n, d))
        self.waiting = still

    def waitFor(self, n):
        if len(self.events) >= n:
            return defer.succeed(self.events)
        d = defer.Deferred()
        self.waiting.append((n, d))
        return d

    def connectionLost(self, reason):
        self.closed.callback(None)


class WiringTests(TestCase):
    timeout = 30

    @defer.inlineCallbacks
    def test_accessLogFile(self):
        """
        With C{accessLog.path} a file, each request is one JSON line there,
        the query dropped, the fields in order.
        """
        backendPort = yield listenBackend(self, BackendFactory())
        path = os.path.abspath(self.mktemp())
        port, admin, runtime = yield startProxy(
            self,
            None,
            config=_config(backendPort, f'telemetry:\n  accessLog: {{path: "{path}"}}\n'),
        )
        client = yield connectClient(self, port)
        client.transport.write(
            b"GET /a?secret=1 HTTP/1.1\r\nHost: users\r\n\r\n"
            b"GET /b HTTP/1.1\r\nHost: nowhere\r\n\r\n"
        )
        responses = yield client.waitFor(2)
        self.assertEqual([r.status for r in responses], [200, 503])
        yield runtime.telemetry.accessLog.flush()
        with open(path, "rb") as f:
            lines = [json.loads(line) for line in f]
        self.assertEqual([list(line) for line in lines], [list(SUMMARY_FIELDS)] * 2)
        first, second = lines
        self.assertEqual(
            (first["path"], first["status"], first["name"], first["endpoint"]),
            ("/a", 200, "/#/s/users", "127.0.0.1:%d" % (backendPort,)),
        )
        self.assertEqual((second["status"], second["meshErr"]), (503, "no-route"))
        self.assertEqual(first["client"], "127.0.0.1")

    @defer.inlineCallbacks
    def test_tapStreamsRequests(self):
        """
        A tap subscriber gets the summaries of the router's requests that
        match its filter.
        """
        backendPort = yield listenBackend(self, BackendFactory())
        port, admin, runtime = yield startProxy(self, None, config=_config(backendPort))
        reader = _SSE("/admin/tap?router=web&status=5xx")
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", admin), reader)
        self.addCleanup(lambda: reader.transport.abortConnection() or reader.closed)
        # The subscription exists once the stream's head came back.
        while b"meshproxy tap" not in reader.raw and not reader.closed.called:
            yield _readMore(reader)
        client = yield connectClient(self, port)
        client.transport.write(
            b"GET /ok HTTP/1.1\r\nHost: users\r\n\r\nGET /no HTTP/1.1\r\nHost: nowhere\r\n\r\n"
        )
        yield client.waitFor(2)
        [event] = yield reader.waitFor(1)
        self.assertEqual((event["path"], event["status"]), ("/no", 503))

    @defer.inlineCallbacks
    def test_metricsByMethod(self):
        """
        The route's responses are counted by method.
        """
        backendPort = yield listenBackend(self, BackendFactory())
        port, admin, runtime = yield startProxy(self, None, config=_config(backendPort))
        client = yield connectClient(self, port)
        client.transport.write(
            b"GET / HTTP/1.1\r\nHost: users\r\n\r\n"
            b"DELETE / HTTP/1.1\r\nHost: users\r\n\r\n"
        )
        yield client.waitFor(2)
        scraper = yield connectClient(self, admin)
        scraper.transport.write(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        [scrape] = yield scraper.waitFor(1)
        text = scrape.body.decode()
        for method in ("GET", "DELETE"):
            self.assertIn(
                'meshproxy_responses_total{code_class="2xx",method="%s",name="/#/s/users",'
                'router="web"} 1.0' % (method,),
                text,
            )


def _readMore(reader):
    """
    A Deferred firing at the reader's next bytes (or its close).
    """
    d = defer.Deferred()
    original = reader.dataReceived

    def dataReceived(data):
        reader.dataReceived = original
        original(data)
        d.callback(None)

    reader.dataReceived = dataReceived
    reader.closed.addCallback(lambda _: None if d.called else d.callback(None))
    return d
