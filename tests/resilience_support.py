"""
Helpers for the resilience tests: a config text with the resilience
sections filled in, scripted upstream behaviours (failing, hung,
resetting), the bytes of one request, and (for the loopback tests) upstreams
on real ports and waits on concrete events.
"""

from twisted.internet import defer

from tests.support import BackendFactory, listenBackend

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
    A config text for L{tests.support.startProxy} or
    L{tests.memory_support.MemoryProxy}.

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
