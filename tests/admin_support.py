"""
Helpers for the admin API tests against a running proxy: the config they
share, a proxy run in this process that can be stopped and started again
(for restarts), and an HTTP client for its admin port (treq over a
connection pool the test owns).
"""

import json

import treq
from treq.client import HTTPClient
from twisted.internet import defer
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.http_headers import Headers

from meshproxy.admin.rules import rulesVersion

RULES = "/admin/routers/web/rules"
HELLO_A = "/svc/hello => /#/static/a;\n"
HELLO_B = "/svc/hello => /#/static/b;\n"
HELLO_A_WORLD_B = "/svc/hello => /#/static/a;\n/svc/world => /#/static/b;\n"
TOKEN = "s3cret-integration-t0ken"

CONFIG = """\
admin:
  listen: "tcp:port=0:interface=127.0.0.1"
%(admin)s
namers:
  - kind: static
    prefix: /#/static
    services: {%(services)s}
routers:
  - name: web
    listen: "tcp:0:interface=127.0.0.1"
    identifier: {kind: host}
    loadBalancer: {kind: %(balancer)s}
    rules: %(rules)s
"""


def makeConfig(services, rules=HELLO_A, admin=None, balancer="ewma"):
    """
    A config with one static namer at C{/#/static}, one HTTP router C{web}
    identifying by host, and the admin API, all on free loopback ports.

    @param services: service name to a list of ports on 127.0.0.1.
    @param rules: the router's rules.
    @param admin: extra keys of the C{admin} section, as a dict.
    @param balancer: the load balancer kind.
    """
    svc = ", ".join(
        "%s: [%s]" % (name, ", ".join('"127.0.0.1:%d"' % p for p in ports))
        for name, ports in sorted(services.items())
    )
    extra = "".join(
        "  %s: %s\n" % (key, json.dumps(value)) for key, value in (admin or {}).items()
    )
    return CONFIG % {
        "admin": extra.rstrip("\n"),
        "services": svc,
        "rules": json.dumps(rules),
        "balancer": balancer,
    }


def etagOf(text):
    """
    The C{ETag} the admin API gives rules C{text}.
    """
    return '"%s"' % (rulesVersion(text),)


class RunningProxy:
    """
    A proxy built by C{buildServices} from a config text and started.

    @ivar runtime: the L{meshproxy.runtime.Runtime}.
    @ivar proxyPort: the port of the first router.
    @ivar adminPort: the port of the admin API.
    @ivar serviceStops: once stopping, each service's C{stopService} result.
    """

    def __init__(self, runtime, services):
        self.runtime = runtime
        self.services = services
        self.proxyPort = None
        self.adminPort = None
        self._stopped = None
        self.serviceStops = {}

    def stop(self, graceful=False):
        """
        Stop every service, once.

        @param graceful: stop the services as twistd does when the reactor
            stops, letting requests in flight finish within the grace
            period; otherwise client connections are aborted first.
        @return: a Deferred firing when every service has stopped.
        """
        if self._stopped is None:
            self._stopped = defer.ensureDeferred(self._stop(abort=not graceful))
            return self._stopped
        # Stopped already (or stopping): wait for it, without the result.
        d = defer.Deferred()
        self._stopped.addBoth(lambda result: (d.callback(None), result)[1])
        return d

    async def _stop(self, abort):
        if abort:
            for listener in self.runtime.listeners:
                for conn in list(getattr(listener.factory, "connections", ())):
                    conn.transport.abortConnection()
        # As MultiService does: every service is asked to stop at once, the
        # last started first.
        stops = {}
        for service in reversed(self.services):
            stops[service] = defer.maybeDeferred(service.stopService)
        self.serviceStops = stops
        await defer.gatherResults(list(stops.values()), consumeErrors=True)


@defer.inlineCallbacks
def runProxy(testCase, configText, *, configPath=None):
    """
    Build and start a proxy from C{configText} (whose listeners should use
    port 0 on loopback); stopped at the end of the test unless stopped
    before.

    @param configPath: passed to C{buildServices}: without C{admin.stateDir},
        its directory keeps the rules changed through the admin API.
    @return: a Deferred firing with a L{RunningProxy} once every listener is
        bound.
    """
    from twisted.internet import reactor

    from meshproxy.config import parseConfig
    from meshproxy.runtime import buildServices

    runtime, services = buildServices(
        parseConfig(configText), reactor=reactor, configPath=configPath
    )
    proxy = RunningProxy(runtime, services)
    testCase.addCleanup(proxy.stop)
    for service in services:
        if hasattr(service, "privilegedStartService"):
            service.privilegedStartService()
    for service in services:
        service.startService()
    ports = []
    for service in services:
        if hasattr(service, "whenBound"):
            port = yield service.whenBound()
            ports.append(port.getHost().port)
    proxy.proxyPort = ports[0]
    proxy.adminPort = ports[-1]
    return proxy


class AdminResponse:
    """
    One admin API answer, read whole.

    @ivar code: the status.
    @ivar headers: the L{Headers}.
    @ivar body: the body as bytes.
    """

    def __init__(self, code, headers, body):
        self.code = code
        self.headers = headers
        self.body = body

    def header(self, name):
        """
        The one value of header C{name} as text, or L{None}.
        """
        values = self.headers.getRawHeaders(name)
        if not values:
            return None
        return values[0] if isinstance(values[0], str) else values[0].decode("latin-1")

    def json(self):
        """
        The body parsed as JSON.
        """
        return json.loads(self.body.decode("utf-8"))

    @property
    def text(self):
        return self.body.decode("utf-8")

    def __repr__(self):
        return "<AdminResponse %d %r>" % (self.code, self.body[:200])


def requestParts(body, headers, token):
    """
    The headers and the bytes of an admin request, as L{AdminClient} and the
    memory harness's client send them.

    @param body: bytes, text, a JSON-ready dict, or L{None}. A dict is sent
        as C{application/json}, text (rules) as C{text/plain;
        charset=utf-8}, bytes with the type C{headers} give, if any.
    @param headers: a dict of extra headers, or L{None}.
    @param token: sent as C{Authorization: Bearer <token>}, unless L{None}.
    @return: C{(Headers, body bytes or None)}.
    """
    h = Headers()
    for name, value in (headers or {}).items():
        h.addRawHeader(name, value)
    if token is not None:
        h.addRawHeader("Authorization", "Bearer " + token)
    typed = h.hasHeader("Content-Type")
    if isinstance(body, dict):
        body = json.dumps(body).encode("utf-8")
        if not typed:
            h.addRawHeader("Content-Type", "application/json")
    elif isinstance(body, str):
        body = body.encode("utf-8")
        if not typed:
            h.addRawHeader("Content-Type", "text/plain; charset=utf-8")
    return h, body


class AdminClient:
    """
    treq against one admin port on 127.0.0.1. Its pooled connections are
    closed at the end of the test.

    @param token: sent as C{Authorization: Bearer <token>} unless a call
        says otherwise.
    """

    def __init__(self, testCase, port, token=None):
        from twisted.internet import reactor

        self.base = "http://127.0.0.1:%d" % (port,)
        self.token = token
        pool = HTTPConnectionPool(reactor, persistent=True)
        pool.retryAutomatically = False
        self._http = HTTPClient(Agent(reactor, pool=pool))
        testCase.addCleanup(pool.closeCachedConnections)

    @defer.inlineCallbacks
    def request(self, method, path, body=None, headers=None, token=Ellipsis):
        """
        Send one request and read the whole answer.

        @param path: the path and query, starting with C{/}.
        @param body: bytes, text, a JSON-ready dict, or L{None}. A dict is
            sent as C{application/json}, text (rules) as C{text/plain;
            charset=utf-8}, bytes with the type C{headers} give, if any.
        @param headers: a dict of extra headers.
        @param token: overrides the client's token (L{None} for none).
        @return: a Deferred firing with an L{AdminResponse}.
        """
        if token is Ellipsis:
            token = self.token
        h, body = requestParts(body, headers, token)
        response = yield self._http.request(
            method, self.base + path, headers=h, data=body
        )
        content = yield treq.content(response)
        return AdminResponse(response.code, response.headers, content)

    def get(self, path, **kwargs):
        return self.request("GET", path, **kwargs)

    def put(self, path, body=None, **kwargs):
        return self.request("PUT", path, body=body, **kwargs)

    def post(self, path, body=None, **kwargs):
        return self.request("POST", path, body=body, **kwargs)
