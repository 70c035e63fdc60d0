"""
Helpers for the loopback integration tests: scriptable upstream servers, a
raw HTTP client that shows exactly what came back, and a proxy built from a
config text.
"""

import httptools
from twisted.internet import defer, protocol
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, connectProtocol


class _Headers:
    """
    Header lookups shared by L{Received} and L{Response}.
    """

    def header(self, name):
        name = name.lower()
        for n, v in self.headers:
            if n.lower() == name:
                return v
        return None

    def headerNames(self):
        return [n.lower() for n, v in self.headers]


class Received(_Headers):
    """
    One request as an upstream saw it.
    """

    def __init__(self):
        self.method = None
        self.url = b""
        self.version = None
        self.headers = []
        self.body = b""
        self.trailers = []
        self.complete = False


class _BackendProtocol(protocol.Protocol):
    def connectionMade(self):
        self.factory.connections.append(self)
        self.parser = httptools.HttpRequestParser(self)
        self.current = None
        self._inBody = False

    def dataReceived(self, data):
        if self.factory.rawHandler is not None:
            self.factory.rawHandler(self, data)
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self.factory.handler(self, self.current)
        except httptools.HttpParserError:
            self.transport.abortConnection()

    def on_message_begin(self):
        self.current = Received()
        self._inBody = False

    def on_url(self, url):
        self.current.url += url

    def on_header(self, name, value):
        if self._inBody:
            self.current.trailers.append((name, value))
        else:
            self.current.headers.append((name, value))

    def on_headers_complete(self):
        self._inBody = True
        self.current.method = self.parser.get_method()
        self.current.version = self.parser.get_http_version()
        if self.factory.onHeaders is not None:
            self.factory.onHeaders(self, self.current)

    def on_body(self, data):
        self.current.body += data
        if self.factory.onBody is not None:
            self.factory.onBody(self, data)

    def on_message_complete(self):
        self.current.complete = True
        self.factory.requests.append(self.current)
        if self.factory.handler is not None and self.current.method is not None:
            self.factory.handler(self, self.current)

    def connectionLost(self, reason):
        self.factory.connections.remove(self)


def okHandler(label=b"ok"):
    """
    A handler answering 200 with C{label} and the path.
    """

    def handle(proto, request):
        body = label + b" " + request.url
        if request.method == b"HEAD":
            proto.transport.write(
                b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (len(body),)
            )
        else:
            proto.transport.write(
                b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nX-Upstream: %s\r\n\r\n%s"
                % (len(body), label, body)
            )

    return handle


class BackendFactory(protocol.Factory):
    """
    An upstream HTTP server whose answers the test scripts.

    @ivar requests: every complete request received.
    """

    protocol = _BackendProtocol
    noisy = False

    def __init__(self, handler=None, onHeaders=None, onBody=None, rawHandler=None):
        self.handler = handler if handler is not None else okHandler()
        self.onHeaders = onHeaders
        self.onBody = onBody
        self.rawHandler = rawHandler
        self.requests = []
        self.connections = []


@defer.inlineCallbacks
def listenBackend(testCase, factory, backlog=50):
    """
    Listen on a free loopback port, closed at the end of the test.

    @param backlog: the listen backlog (Twisted's default is 50).
    @return: a Deferred firing with the port number.
    """
    from twisted.internet import reactor

    port = yield TCP4ServerEndpoint(
        reactor, 0, backlog=backlog, interface="127.0.0.1"
    ).listen(factory)

    def cleanup():
        for c in list(factory.connections):
            c.transport.abortConnection()
        return port.stopListening()

    testCase.addCleanup(cleanup)
    return port.getHost().port


class Response(_Headers):
    """
    One response as the client saw it.
    """

    def __init__(self):
        self.status = None
        self.reason = b""
        self.headers = []
        self.body = b""
        self.trailers = []
        self.complete = False


class RawClient(protocol.Protocol):
    """
    Sends raw bytes and parses what comes back, response by response.

    C{heads} lists the methods of the requests sent, so that responses to
    HEAD are framed without a body.
    """

    def __init__(self, heads=()):
        self.heads = list(heads)
        self.responses = []
        self.raw = b""
        self.closed = defer.Deferred()
        self._waiters = []
        self._parser = httptools.HttpResponseParser(self)
        self._current = None
        self._inBody = False
        self.error = None

    def dataReceived(self, data):
        self.raw += data
        try:
            self._feed(data)
        except httptools.HttpParserError as e:
            self.error = e

    def _feed(self, data):
        self._parser.feed_data(data)

    def on_message_begin(self):
        self._current = Response()
        self._inBody = False

    def on_status(self, reason):
        self._current.reason += reason

    def on_header(self, name, value):
        if self._inBody:
            self._current.trailers.append((name, value))
        else:
            self._current.headers.append((name, value))

    def on_headers_complete(self):
        self._inBody = True
        self._current.status = self._parser.get_status_code()
        if self._current.status >= 200 and self.heads and self.heads[0] == b"HEAD":
            self.heads.pop(0)
            self._finish()
            self._parser = httptools.HttpResponseParser(self)
            raise _Stop()

    def on_body(self, data):
        self._current.body += data

    def on_message_complete(self):
        if self._current.status is not None and self._current.status >= 200:
            if self.heads:
                self.heads.pop(0)
            self._finish()

    def _finish(self):
        self._current.complete = True
        self.responses.append(self._current)
        waiters, self._waiters = self._waiters, []
        for n, d in waiters:
            if len(self.responses) >= n:
                d.callback(self.responses)
            else:
                self._waiters.append((n, d))

    def waitFor(self, n):
        """
        A Deferred firing when C{n} responses have arrived (or the
        connection closed).
        """
        if len(self.responses) >= n:
            return defer.succeed(self.responses)
        d = defer.Deferred()
        self._waiters.append((n, d))
        return d

    def connectionLost(self, reason):
        if self._current is not None and not self._current.complete and self._inBody:
            # close-delimited body
            self._current.complete = True
            self.responses.append(self._current)
        waiters, self._waiters = self._waiters, []
        for _n, d in waiters:
            d.callback(self.responses)
        self.closed.callback(None)


class _Stop(Exception):
    pass


def _feedStoppable(self, data):
    if getattr(self, "upgraded", False):
        return
    try:
        self._parser.feed_data(data)
    except httptools.HttpParserUpgrade:
        self.upgraded = True
    except httptools.HttpParserCallbackError as e:
        if not isinstance(e.__context__, _Stop):
            raise


RawClient._feed = _feedStoppable


@defer.inlineCallbacks
def connectClient(testCase, port, heads=()):
    """
    Connect a L{RawClient} to C{port} on loopback; closed at the end of the
    test.
    """
    from twisted.internet import reactor

    client = RawClient(heads)
    yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), client)

    def cleanup():
        if client.transport.connected:
            client.transport.abortConnection()
            return client.closed

    testCase.addCleanup(cleanup)
    return client


@defer.inlineCallbacks
def exchange(testCase, port, data, count=1, heads=()):
    """
    Send raw C{data} on a new connection and wait for C{count} responses
    (or the close).

    @return: the L{RawClient}.
    """
    client = yield connectClient(testCase, port, heads)
    client.transport.write(data)
    yield client.waitFor(count)
    return client


PROXY_CONFIG = """\
admin: {listen: "tcp:port=0:interface=127.0.0.1"}
namers:
  - {kind: static, prefix: /#/static, services: {%(services)s}}
routers:
  - name: web
    listen: "tcp:0:interface=127.0.0.1"
    identifier: {kind: host}
    rules: "/svc => /#/static;"
    timeouts: {total: %(total)s}
    server: {%(server)s}
"""


def proxyConfig(services, total="5s", server=""):
    """
    The config text of L{PROXY_CONFIG}.

    @param services: service name → list of ports on 127.0.0.1.
    @param total: the router's total timeout.
    @param server: the keys of its C{server} section, as YAML flow text.
    """
    svc = ", ".join(
        "%s: [%s]" % (name, ", ".join('"127.0.0.1:%d"' % p for p in ports))
        for name, ports in services.items()
    )
    return PROXY_CONFIG % {"services": svc, "total": total, "server": server}


@defer.inlineCallbacks
def startProxy(testCase, services, total="5s", server="", config=None):
    """
    Run a proxy in this process from a config text, on free loopback ports.

    @param services: service name → list of ports on 127.0.0.1.
    @return: a Deferred firing with C{(proxyPort, adminPort, runtime)}.
    """
    from twisted.internet import reactor

    from meshproxy.config import parseConfig
    from meshproxy.runtime import buildServices

    if config is None:
        config = proxyConfig(services, total, server)
    runtime, services = buildServices(parseConfig(config), reactor=reactor)
    for s in services:
        s.privilegedStartService() if hasattr(s, "privilegedStartService") else None
    for s in services:
        s.startService()

    @defer.inlineCallbacks
    def stop():
        for _router in runtime.routers.values():
            factory = None
            for listener in runtime.listeners:
                factory = listener.factory
                for conn in list(getattr(factory, "connections", ())):
                    conn.transport.abortConnection()
        for s in reversed(services):
            yield s.stopService()

    testCase.addCleanup(stop)
    ports = []
    for s in services:
        if hasattr(s, "whenBound"):
            port = yield s.whenBound()
            ports.append(port.getHost().port)
    return ports[0], ports[-1], runtime
