"""
The twistd plugin's options and service: C{twistd -n meshproxy --config FILE}.

L{Options} validates the config before anything binds (a bad config exits
non-zero with every error named by its key path); L{makeService} builds a
L{MultiService} of namers, routers and the admin API, each listener a
L{StreamServerEndpointService} built from a Twisted endpoint string, so
privileged ports bind before privileges drop and systemd socket activation
works.
"""

import sys

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService, Service
from twisted.logger import Logger
from twisted.python import usage

from meshproxy.config import ConfigError, loadConfig, parseConfig

_log = Logger()


class Options(usage.Options):
    """
    Command-line options of C{twistd meshproxy}.
    """

    synopsis = "[--config FILE] [--check]"
    longdesc = (
        "Run the meshproxy service-mesh proxy. Without --config, runs the "
        "embedded demo: the sample config, the file namer over the demo's "
        "endpoint files, and demo upstreams on 127.0.0.1:8081-8083, with the "
        "proxy on 127.0.0.1:4140 (try: curl -H 'Host: hello' "
        "http://127.0.0.1:4140/) and the admin API on 127.0.0.1:9990."
    )
    optParameters = [
        ["config", "c", None, "The YAML config file (default: the embedded demo)."],
    ]
    optFlags = [
        ["check", None, "Validate the config, print the result and exit (0 when valid)."],
    ]

    def opt_version(self):
        """
        Print the meshproxy version and exit.
        """
        from meshproxy import __version__

        sys.stdout.write("meshproxy %s\n" % (__version__,))
        sys.stdout.flush()
        raise SystemExit(0)

    def postOptions(self):
        """
        Load and validate the config now, before twistd binds anything.

        A bad config is not a usage error: twistd would print its whole
        usage text before the errors. The errors are printed alone on
        standard error, one per line, and the process exits 1. Warnings
        (a file namer directory that does not exist yet) go to standard
        error too; with C{--check}, C{CONFIG: ok} goes to standard output
        and the process exits 0.

        @raise SystemExit: with 1 for a bad config, with 0 after C{--check}.
        """
        from meshproxy.config import configWarnings

        path = self["config"]
        label = path or "<embedded demo>"
        try:
            if path is None:
                from meshproxy.demo import demoConfigText

                self.demo = True
                self.meshConfig = parseConfig(demoConfigText(), label)
            else:
                self.demo = False
                self.meshConfig = loadConfig(path)
            _checkSupported(self.meshConfig)
        except ConfigError as e:
            sys.stderr.write("%s: invalid\n%s\n" % (label, e))
            sys.stderr.flush()
            raise SystemExit(1)
        for warning in configWarnings(self.meshConfig):
            sys.stderr.write("%s: warning: %s\n" % (label, warning))
        sys.stderr.flush()
        if self["check"]:
            sys.stdout.write("%s: ok\n" % (label,))
            sys.stdout.flush()
            raise SystemExit(0)


def _checkSupported(config):
    """
    Refuse what this version or this host cannot run, without binding
    anything: HTTP rules that name a namer prefix no namer owns, and
    listeners on an C{interface=} address that is not one of this host's.

    @raise ConfigError: naming each problem by its key path.
    """
    from meshproxy.config import hostProblems
    from meshproxy.routing.table import RulesError, checkRules
    from meshproxy.routing.dtab import DtabSyntaxError
    from meshproxy.routing.path import Path

    errors = []
    prefixes = [Path.read(n.prefix) for n in config.namers]
    for i, router in enumerate(config.routers):
        if router.protocol != "http":
            # A TCP router has no rules; the loader checked its destination
            # against the namers.
            continue
        try:
            checkRules(router.rules, prefixes)
        except RulesError as e:
            where = "" if e.line is None else "line %d, column %d: " % (e.line, e.column)
            errors.append("routers[%d].rules: %s%s" % (i, where, e.message))
        except DtabSyntaxError:
            pass  # reported by the config loader already
    errors.extend(hostProblems(config))
    if errors:
        raise ConfigError(errors, config.source)


class _ListenerService(StreamServerEndpointService):
    """
    A listener that fails the start of the process when it cannot bind, and
    says when it is bound (for C{/ready}).
    """

    _raiseSynchronously = True

    def __init__(self, endpoint, factory, description):
        StreamServerEndpointService.__init__(self, endpoint, factory)
        self.description = description
        self.bound = False
        self.port = None
        self._boundWaiters = []

    def privilegedStartService(self):
        StreamServerEndpointService.privilegedStartService(self)
        self._waitingForPort.addCallback(self._bound)

    def _bound(self, port):
        self.bound = True
        self.port = port
        waiters, self._boundWaiters = self._boundWaiters, []
        for d in waiters:
            d.callback(port)
        return port

    def whenBound(self):
        """
        A Deferred firing with the listening port once it is bound.
        """
        from twisted.internet.defer import Deferred, succeed

        if self.port is not None:
            return succeed(self.port)
        d = Deferred()
        self._boundWaiters.append(d)
        return d


class _RouterService(Service):
    """
    Starts and stops one router's timers and upstream connections (for a
    TCP router: its destination, and the spliced connections).
    """

    def __init__(self, router, factory, grace):
        self.router = router
        self.factory = factory
        self.grace = grace

    def startService(self):
        Service.startService(self)
        self.router.start()

    def stopService(self):
        """
        Let requests in flight finish (up to the grace period), then close
        upstream connections.
        """
        Service.stopService(self)
        d = self.factory.drain(self.grace)
        d.addBoth(lambda _: self.router.stop())
        return d


class Runtime:
    """
    What the admin API sees of the running process.

    @ivar routers: the routers by name, in config order.
    """

    def __init__(self, *, reactor=None, shutdownGrace=10.0):
        self.routers = {}
        self.listeners = []
        self.reactor = reactor
        self.shutdownGrace = shutdownGrace

    def shutdown(self):
        """
        Stop the process gracefully: listeners close, requests in flight
        finish within the grace period, then the process exits 0.

        @return: a Deferred that fires once the stop is under way.
        """
        from twisted.internet.defer import succeed

        self.reactor.callLater(0, self.reactor.stop)
        return succeed(None)

    def isReady(self):
        """
        Whether every listener is bound.
        """
        return not self.waitingFor()

    def waitingFor(self):
        """
        What readiness still waits for, as human-readable strings.
        """
        return [
            "listener %s" % (listener.description,)
            for listener in self.listeners
            if not listener.bound
        ]

    def nodes(self):
        """
        Every (router, bound name, node), for metrics at scrape time.
        """
        for name, router in list(self.routers.items()):
            for boundName, node in router.nodes():
                yield name, boundName, node


def makeService(options, reactor=None):
    """
    Build the process's services from validated options.

    @param options: parsed L{Options} (their C{meshConfig}).
    @param reactor: the reactor; the global one when L{None}.
    @rtype: L{MultiService}
    """
    if reactor is None:
        from twisted.internet import reactor
    config = options.meshConfig
    top = MultiService()
    runtime, services = buildServices(config, reactor=reactor, configPath=options["config"])
    for service in services:
        service.setServiceParent(top)
    if getattr(options, "demo", False):
        from meshproxy.demo import demoUpstreamServices

        for service in demoUpstreamServices(reactor):
            service.setServiceParent(top)
    top.runtime = runtime
    return top


def buildServices(config, *, reactor, configPath=None):
    """
    Build the runtime and the services of a validated config.

    @param config: a L{MeshConfig<meshproxy.config.MeshConfig>}.
    @param reactor: the reactor to listen and connect with.
    @param configPath: the config file, whose directory keeps the rules
        changed through the admin API when C{admin.stateDir} is not set;
        L{None} (the embedded demo) keeps them in memory only.
    @return: C{(runtime, services)}.
    """
    import os
    # Imported here: klein installs the global reactor when imported.
    from prometheus_client import CollectorRegistry
    from twisted.internet.endpoints import serverFromString

    from meshproxy.admin.api import AdminAPI
    from meshproxy.http.router import HttpRouter
    from meshproxy.http.server import ServerFactory
    from meshproxy.routing.path import Path
    from meshproxy.telemetry.metrics import MeshMetrics

    runtime = Runtime(
        reactor=reactor, shutdownGrace=getattr(config.admin, "shutdownGrace", 10.0)
    )
    registry = CollectorRegistry()
    metrics = MeshMetrics(registry, runtime.nodes, costScale=0.001)
    services = []

    namers = {}
    for namerConfig in config.namers:
        namer = makeNamer(namerConfig, reactor=reactor)
        namers[Path.read(namerConfig.prefix)] = namer
        services.append(namer)

    for routerConfig in config.routers:
        if routerConfig.protocol == "tcp":
            from meshproxy.tcp.router import TcpRouter, TcpServerFactory

            router = TcpRouter(
                routerConfig,
                namers,
                reactor=reactor,
                metrics=metrics,
                balancerFactory=balancerFactory(routerConfig.loadBalancer, reactor),
            )
            factory = TcpServerFactory(router)
        else:
            router = HttpRouter(
                routerConfig,
                namers,
                reactor=reactor,
                metrics=metrics,
                balancerFactory=balancerFactory(routerConfig.loadBalancer, reactor),
                rulesAllowInet=config.admin.rulesAllowInet,
            )
            factory = ServerFactory(
                router, routerConfig.server, reactor, router.connStats, scheme=_scheme(routerConfig.listen)
            )
        runtime.routers[router.name] = router
        services.append(_RouterService(router, factory, runtime.shutdownGrace))
        listener = _ListenerService(
            serverFromString(reactor, _endpointString(routerConfig.listen)),
            factory,
            "%s (%s)" % (router.name, routerConfig.listen),
        )
        runtime.listeners.append(listener)
        services.append(listener)

    from meshproxy.admin.rules import RulesStore

    stateDir = config.admin.stateDir
    if stateDir is None and configPath is not None:
        stateDir = os.path.dirname(os.path.abspath(configPath))
    stores = {}
    for name, router in runtime.routers.items():
        if router.rules is None:
            # A TCP router has no rules: the admin API answers 404 for them.
            continue
        store = stores[name] = RulesStore(router.rules, stateDir=stateDir, clock=reactor)
        # Rules accepted through the admin API survive a restart.
        store.load()
    runtime.rulesStores = stores
    admin = AdminAPI(
        runtime,
        registry,
        token=config.admin.token,
        protectReads=config.admin.protectReads,
        allowedHosts=config.admin.allowedHosts,
        rulesStores=stores,
        clock=reactor,
    )
    from meshproxy.admin.site import AdminSite

    site = AdminSite(admin.app.resource())
    services.append(
        _ListenerService(
            serverFromString(reactor, _endpointString(config.admin.listen)),
            site,
            "admin (%s)" % (config.admin.listen,),
        )
    )
    return runtime, services


#: The listen backlog of meshproxy's listeners unless their endpoint string
#: sets one: Twisted's default of 50 drops bursts of new connections (they
#: wait for SYN retries, a second or more).
DEFAULT_BACKLOG = 1024

#: The endpoint kinds whose Twisted parser takes a C{backlog} argument.
_BACKLOG_KINDS = frozenset(["tcp", "tcp6", "ssl", "unix"])


def _endpointString(description):
    """
    The Twisted server endpoint string for a C{listen} value: C{tls:} is the
    name users expect for a TLS listener (Twisted's parser says C{ssl:}),
    and the backlog defaults to L{DEFAULT_BACKLOG}.
    """
    from twisted.internet.endpoints import _parse

    if description.startswith("tls:"):
        description = "ssl:" + description[4:]
    args, kwargs = _parse(description)
    if args and args[0] in _BACKLOG_KINDS and "backlog" not in kwargs:
        description += ":backlog=%d" % (DEFAULT_BACKLOG,)
    return description


def _scheme(description):
    return b"https" if description.startswith(("ssl:", "tls:")) else b"http"


def makeNamer(config, *, reactor):
    """
    Build the namer a namer config describes.
    """
    from meshproxy.discovery.endpoints import Endpoint
    from meshproxy.routing.path import Path

    if config.kind == "file":
        from meshproxy.discovery.file import FileNamer

        return FileNamer(
            Path.read(config.prefix), config.root, reactor=reactor, interval=config.interval
        )
    from meshproxy.discovery.static import StaticNamer

    services = {
        name: [Endpoint(host, port, weight) for host, port, weight in endpoints]
        for name, endpoints in config.services
    }
    return StaticNamer(Path.read(config.prefix), services)


def balancerFactory(config, reactor):
    """
    A function making balancers of the configured kind.
    """
    if config.kind == "roundRobin":
        from meshproxy.balancing.roundrobin import RoundRobin as cls

        kwargs = {}
    elif config.kind == "leastLoaded":
        from meshproxy.balancing.leastloaded import LeastLoaded as cls

        kwargs = {}
    else:
        from meshproxy.balancing.p2c import P2CPeakEwma as cls

        kwargs = {"decay": config.decay}

    def make(onAdd=None, onRemove=None):
        return cls(clock=reactor, onAdd=onAdd, onRemove=onRemove, **kwargs)

    return make
