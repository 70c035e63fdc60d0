"""
Helpers for the loopback resilience tests: a config text with the
resilience sections filled in, scripted upstream behaviours (failing, hung,
resetting, truncating), one-request clients, waits on concrete events and a
reader of the admin API's metrics.
"""

import json
import time

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import defer
from twisted.internet.endpoints import TCP4ServerEndpoint

from tests.support import BackendFactory, connectClient, listenBackend

#: The config of the resilience tests: one static namer and one router,
#: "web", identifying requests by Host. The router's resilience sections
#: come from the test, as YAML flow text.
RESILIENCE_CONFIG = """\
admin: {listen: "tcp:port=0:interface=127.0.0.1"}
namers:
  - {kind: static, prefix: /#/static, services: {%(services)s}}
routers:
  - name: web
    listen: "tcp:0:interface=127.0.0.1"
    identifier: {kind: host}
    rules: "/svc => /#/static;"
%(sections)s"""


def resilienceConfig(services, **sections):
    """
    A config text for L{tests.support.startProxy}.

    @param services: service name → list of ports on 127.0.0.1.
    @param sections: router keys (C{classifier}, C{retries}, C{timeouts},
        C{failureAccrual}, C{limits}, C{trust}, C{loadBalancer}, ...) →
        their value as YAML flow text, e.g.
        C{classifier="{kind: retryableRead5XX}"}.
    @return: the YAML text.
    """
    svc = ", ".join(
        "%s: [%s]" % (name, ", ".join('"127.0.0.1:%d"' % p for p in ports))
        for name, ports in services.items()
    )
    lines = "".join("    %s: %s\n" % (key, value) for key, value in sections.items())
    return RESILIENCE_CONFIG % {"services": svc, "sections": lines}


# -- upstream behaviours ---------------------------------------------------------


def statusHandler(status=503, reason=b"Service Unavailable", extra=b""):
    """
    A handler answering every request with C{status} and a short body.

    @param extra: header lines (each ending in CRLF) added to the answer.
    """

    def handle(proto, request):
        body = b"broken"
        proto.transport.write(
            b"HTTP/1.1 %d %s\r\nContent-Length: %d\r\n%s\r\n%s"
            % (status, reason, len(body), extra, body)
        )

    return handle


def resetHandler(proto, request):
    """
    A handler that resets the connection once a whole request arrived,
    before any response byte.
    """
    proto.transport.abortConnection()


def holdHandler(held):
    """
    A handler that never answers, keeping each connection in C{held}.
    """

    def handle(proto, request):
        held.append(proto)

    return handle


@defer.inlineCallbacks
def backends(testCase, *handlers):
    """
    Start one L{BackendFactory} per handler.

    @return: a Deferred firing with a list of C{(factory, port)}.
    """
    result = []
    for handler in handlers:
        factory = BackendFactory(handler)
        port = yield listenBackend(testCase, factory)
        result.append((factory, port))
    return result


@defer.inlineCallbacks
def closedPort(testCase):
    """
    A loopback port nothing listens on (listened on, then closed), so that
    connecting to it is refused at once.
    """
    from twisted.internet import reactor

    factory = BackendFactory()
    listening = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
    port = listening.getHost().port
    yield listening.stopListening()
    return port


# -- clients ---------------------------------------------------------------------


def requestBytes(method=b"GET", path=b"/", host=b"hello", headers=(), body=None, close=True):
    """
    The bytes of one request.

    @param headers: C{(name, value)} pairs.
    @param body: bytes sent with a Content-Length, or L{None} for none.
    """
    lines = [b"%s %s HTTP/1.1\r\n" % (method, path), b"Host: %s\r\n" % (host,)]
    for name, value in headers:
        lines.append(b"%s: %s\r\n" % (name, value))
    if body is not None:
        lines.append(b"Content-Length: %d\r\n" % (len(body),))
    if close:
        lines.append(b"Connection: close\r\n")
    lines.append(b"\r\n")
    if body is not None:
        lines.append(body)
    return b"".join(lines)


@defer.inlineCallbacks
def send(testCase, port, method=b"GET", path=b"/", host=b"hello", headers=(), body=None):
    """
    Send one request on a new connection and wait for its response (or the
    close of the connection).

    @return: a Deferred firing with the L{RawClient<tests.support.RawClient>}.
    """
    heads = [method] if method == b"HEAD" else []
    client = yield connectClient(testCase, port, heads)
    client.transport.write(requestBytes(method, path, host, headers, body))
    yield client.waitFor(1)
    return client


def tick(seconds=0.005):
    """
    Let the reactor run for a moment.
    """
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    return deferLater(reactor, seconds, lambda: None)


@defer.inlineCallbacks
def waitUntil(predicate, what, limit=5.0, interval=0.005):
    """
    Poll C{predicate} every C{interval} seconds until it is true.

    @param what: says what was awaited, for the failure message.
    @param limit: seconds after which the wait fails (well inside the
        test's own timeout, so that the message says what was missing).
    @raise AssertionError: when C{limit} passes first.
    """
    from twisted.internet import reactor

    end = reactor.seconds() + limit
    while not predicate():
        if reactor.seconds() > end:
            raise AssertionError("gave up after %gs waiting for %s" % (limit, what))
        yield tick(interval)


# -- the admin API -------------------------------------------------------------


@defer.inlineCallbacks
def adminGet(testCase, adminPort, path):
    """
    GET C{path} from the admin API with a raw client.

    @return: a Deferred firing with the body.
    """
    client = yield connectClient(testCase, adminPort)
    client.transport.write(
        b"GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n" % (path,)
    )
    yield client.closed
    [response] = client.responses
    testCase.assertEqual(response.status, 200, client.raw[:300])
    return response.body


@defer.inlineCallbacks
def scrape(testCase, adminPort):
    """
    Scrape C{/metrics}.

    @return: a Deferred firing with a dict of C{(sample name, frozenset of
        label items)} → value.
    """
    body = yield adminGet(testCase, adminPort, b"/metrics")
    samples = {}
    for family in text_string_to_metric_families(body.decode("utf-8")):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def sample(samples, name, **labels):
    """
    One value of a scrape, 0 when the series is absent.
    """
    return samples.get((name, frozenset(labels.items())), 0.0)


@defer.inlineCallbacks
def adminState(testCase, adminPort):
    """
    C{GET /admin/state}, parsed.
    """
    body = yield adminGet(testCase, adminPort, b"/admin/state")
    return json.loads(body)


def endpointState(router, name, port):
    """
    The C{router.state()} entry of the endpoint at C{127.0.0.1:port} of
    bound name C{name}, or L{None}.
    """
    bound = router.state()["boundNames"].get(name)
    if bound is None:
        return None
    for entry in bound["endpoints"]:
        if entry["address"] == "127.0.0.1:%d" % (port,):
            return entry
    return None


def epochMs():
    """
    Now, in milliseconds since the epoch.
    """
    return int(time.time() * 1000)


class Instance:
    """
    One upstream instance that a test can kill (stop listening and reset
    its connections) and bring back on the same port.

    @ivar factory: its L{BackendFactory}.
    @ivar port: its loopback port number.
    """

    def __init__(self, testCase, handler=None):
        self.testCase = testCase
        self.factory = BackendFactory(handler)
        self.port = None
        self._listening = None
        testCase.addCleanup(self.kill)

    @defer.inlineCallbacks
    def start(self):
        """
        Listen: on a free port the first time, then on the same port.

        @return: a Deferred firing with the port number.
        """
        from twisted.internet import reactor

        listening = yield TCP4ServerEndpoint(
            reactor, self.port or 0, interface="127.0.0.1"
        ).listen(self.factory)
        self._listening = listening
        self.port = listening.getHost().port
        return self.port

    def kill(self):
        """
        Stop listening and reset every open connection.

        @return: a Deferred firing once the port is closed.
        """
        for c in list(self.factory.connections):
            c.transport.abortConnection()
        listening, self._listening = self._listening, None
        if listening is None:
            return defer.succeed(None)
        return defer.maybeDeferred(listening.stopListening)


def blackhole(testCase):
    """
    A loopback port where connecting hangs: a socket listening with a
    backlog of 0 that never accepts, its one queue place taken by a
    connection of our own, so that the kernel drops further SYNs (Linux)
    and a connect neither succeeds nor fails until its timeout.

    @return: the port number.
    """
    import socket

    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    filler = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    filler.settimeout(2.0)
    filler.connect(("127.0.0.1", port))

    def cleanup():
        filler.close()
        listener.close()

    testCase.addCleanup(cleanup)
    return port


def delayedHandler(delay, label=b"slow"):
    """
    A handler answering 200 (like L{tests.support.okHandler}) after
    C{delay} seconds; the answers still due are cancelled at the end of
    the test by L{cancelDelayed}.
    """
    from twisted.internet import reactor

    from tests.support import okHandler

    answer = okHandler(label)
    calls = []

    def handle(proto, request):
        calls.append(reactor.callLater(delay, answer, proto, request))

    handle.calls = calls
    return handle


def cancelDelayed(handler):
    """
    Cancel the answers of a L{delayedHandler} still due.
    """
    for call in handler.calls:
        if call.active():
            call.cancel()
