"""
The embedded demo: what C{twistd -n meshproxy} runs when no C{--config} is
given.

It is the sample config with the file namer pointed at the endpoint files
shipped in this package, plus small upstream HTTP servers on loopback that
answer with their own name, so that a newcomer can C{curl} through the proxy
and watch requests spread over instances.
"""

import os

#: The demo upstreams: service name → ports on 127.0.0.1 (must match the
#: files in C{endpoints/}).
DEMO_UPSTREAMS = {"hello": (8081, 8082), "world": (8083,)}

DEMO_CONFIG = """\
# The embedded demo config (twistd -n meshproxy, without --config).
admin:
  listen: "tcp:9990:interface=127.0.0.1"
namers:
  - {kind: file, prefix: /#/fs, root: "%(root)s"}
routers:
  - name: web
    protocol: http
    listen: "tcp:4140:interface=127.0.0.1"
    identifier: {kind: host}
    rules: |
      /svc => /#/fs;
    loadBalancer: {kind: ewma}
    timeouts: {total: 10s}
"""


def endpointsRoot():
    """
    The directory of the demo's endpoint files.
    """
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "endpoints")


def demoConfigText():
    """
    The demo config as YAML text, with the endpoints directory filled in.
    """
    return DEMO_CONFIG % {"root": endpointsRoot().replace("\\", "/")}


def demoUpstreamSite(label):
    """
    The site of one demo upstream: it answers every request with
    C{"<label>: <method> <path>"}, so that balancing is visible.

    @param label: how the upstream names itself, C{"hello-1 (127.0.0.1:8081)"}.
    @return: a quiet L{twisted.web.server.Site} (no access log).
    """
    from twisted.web.resource import Resource
    from twisted.web.server import Site

    class Hello(Resource):
        isLeaf = True

        def render(self, request):
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return (
                "%s: %s %s\n"
                % (label, request.method.decode("ascii"), request.uri.decode("ascii", "replace"))
            ).encode("utf-8")

    site = Site(Hello())
    site.noisy = False
    site.log = lambda request: None
    # Twisted's "... starting on 8081" then names the upstream.
    site.logPrefix = lambda: "demo upstream " + label.split(" ", 1)[0]
    return site


def demoUpstreamServices(reactor):
    """
    The demo upstream servers, as services to add to the process.

    Each answers every request with C{"<service>-<n> (127.0.0.1:<port>)"}
    and echoes the method and path (see L{demoUpstreamSite}).

    @param reactor: the reactor to listen with.
    @return: a list of L{IService}.
    """
    from twisted.application.internet import StreamServerEndpointService
    from twisted.internet.endpoints import TCP4ServerEndpoint

    services = []
    for name, ports in sorted(DEMO_UPSTREAMS.items()):
        for i, port in enumerate(ports, 1):
            site = demoUpstreamSite("%s-%d (127.0.0.1:%d)" % (name, i, port))
            endpoint = TCP4ServerEndpoint(reactor, port, interface="127.0.0.1")
            services.append(StreamServerEndpointService(endpoint, site))
    return services
