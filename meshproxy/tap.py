"""
The twistd plugin's options and service: C{twistd -n meshproxy --config FILE}.

L{Options} validates the config before anything binds (a bad config exits
non-zero with every error named by its key path); L{makeService} builds a
L{MultiService} of namers, routers and the admin API, each listener a
L{StreamServerEndpointService} built from a Twisted endpoint string, so
privileged ports bind before privileges drop and systemd socket activation
works.

A listener that cannot be bound ends the process with one line naming its
owner and its endpoint (C{router web: cannot listen on tcp:4140: address
already in use}) and exit status 1. L{Runtime} tells the admin API when the
process is ready: every listener bound and every namer loaded once, or 10
seconds after the start with the namers still loading named.
"""

import errno
import os
import socket
import sys

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService, Service
from twisted.internet.defer import CancelledError, Deferred, gatherResults, succeed
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
    errors.extend(tlsProblems(config))
    if errors:
        raise ConfigError(errors, config.source)


def tlsProblems(config):
    """
    The certificate, key and CA files of the C{tls} and C{upstreamTls}
    sections that cannot be used (read and checked, without binding).

    @return: messages naming the key path.
    """
    from meshproxy.tls import ClientContext, TLSFileError, serverTLS

    problems = []
    for i, router in enumerate(config.routers):
        if router.tls is not None:
            try:
                serverTLS(router.tls, protocols=(), session=router.name)
            except TLSFileError as e:
                problems.append("routers[%d].tls: %s" % (i, e))
        sections = [("routers[%d].upstreamTls" % (i,), router.upstreamTls)]
        sections += [
            ("routers[%d].boundNames[%s].upstreamTls" % (i, name), settings.upstreamTls)
            for name, settings in router.boundNames
        ]
        for where, section in sections:
            if section is None:
                continue
            try:
                ClientContext(ca=section.ca, cert=section.cert, key=section.key)
            except TLSFileError as e:
                problems.append("%s: %s" % (where, e))
    return problems


class CannotListen(Exception):
    """
    A listener could not be bound.

    @ivar owner: what listens, C{"router web"} or C{"admin"}.
    @ivar listen: the endpoint as the config gives it.
    @ivar reason: why, in the proxy's words (L{listenProblem}).
    """

    def __init__(self, owner, listen, reason):
        Exception.__init__(self, owner, listen, reason)
        self.owner = owner
        self.listen = listen
        self.reason = reason

    def __str__(self):
        return "%s: cannot listen on %s: %s" % (self.owner, self.listen, self.reason)


#: What the errors of C{bind} and C{listen} mean, in the proxy's words.
_LISTEN_ERRORS = {
    errno.EADDRINUSE: "address already in use",
    errno.EADDRNOTAVAIL: "no such address on this host",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.ENOENT: "no such file or directory",
}


def listenProblem(error):
    """
    Say why a listener could not be bound, without Python's exception text.

    @param error: what C{listen} raised or failed with: a
        L{CannotListenError<twisted.internet.error.CannotListenError>}
        (whose C{socketError} says why), an L{OSError}, or anything else.
    @return: a short lowercase phrase, such as C{"address already in use"}.
    """
    cause = getattr(error, "socketError", error)
    if isinstance(cause, socket.gaierror):
        return "unknown interface address"
    if isinstance(cause, OSError) and cause.errno is not None:
        known = _LISTEN_ERRORS.get(cause.errno)
        if known is not None:
            if cause.errno in (errno.EACCES, errno.EPERM):
                known += " (a port below 1024 needs root or CAP_NET_BIND_SERVICE)"
            return known
        return (cause.strerror or errno.errorcode.get(cause.errno, str(cause.errno))).lower()
    text = str(cause).strip()
    return text or type(cause).__name__


class _ListenerService(StreamServerEndpointService):
    """
    A listener that fails the start of the process with L{CannotListen}
    when it cannot bind, says so in the log when it is bound, and tells
    L{Runtime} (for C{/ready}).

    @ivar owner: what listens, C{"router web"} or C{"admin"}.
    @ivar listen: the endpoint as the config gives it.
    @ivar description: C{"web (tcp:4140)"}, as C{/ready} names a listener
        it waits for.
    @ivar bound: whether the port is bound.
    @ivar port: the L{IListeningPort} once bound, else L{None}.
    """

    def __init__(self, endpoint, factory, *, owner, listen, name, reactor):
        StreamServerEndpointService.__init__(self, endpoint, factory)
        self._reactor = reactor
        self.owner = owner
        self.listen = listen
        self.description = "%s (%s)" % (name, listen)
        self.bound = False
        self.port = None
        self._boundWaiters = []
        # One line per listener, ours, rather than Twisted's "Starting
        # factory <...ServerFactory object at 0x...>"; and Twisted's own
        # "... starting on 4140" says whose port it is.
        factory.noisy = False
        factory.logPrefix = lambda: owner

    def privilegedStartService(self):
        """
        Bind now (as root, if the process starts as root).

        @raise CannotListen: if the endpoint cannot be bound.
        """
        Service.privilegedStartService(self)
        failed = []
        self._synchronous = True
        self._waitingForPort = self.endpoint.listen(self.factory)
        self._waitingForPort.addCallbacks(self._bound, self._cannotListen, errbackArgs=(failed,))
        self._synchronous = False
        if failed:
            raise failed[0]

    def _cannotListen(self, failure, failed):
        if failure.check(CancelledError):
            # stopService before the port was bound.
            return None
        error = CannotListen(self.owner, self.listen, listenProblem(failure.value))
        if self._synchronous:
            failed.append(error)
        else:
            # No endpoint Twisted ships binds later than listen() returns;
            # one that does cannot stop twistd's start any more: say why
            # and stop.
            _log.critical("{problem}", problem=str(error))
            self._reactor.callLater(0, self._reactor.stop)
        return None

    def _bound(self, port):
        self.bound = True
        self.port = port
        _log.info("{owner} listening on {listen}{actual}", owner=self.owner,
                  listen=self.listen, actual=_actualPort(self.listen, port))
        waiters, self._boundWaiters = self._boundWaiters, []
        for d in waiters:
            d.callback(port)
        return port

    def whenBound(self):
        """
        A Deferred firing with the listening port once it is bound.
        """
        if self.port is not None:
            return succeed(self.port)
        d = Deferred()
        self._boundWaiters.append(d)
        return d


def _actualPort(listen, port):
    """
    C{" (port N)"} when the endpoint let the system choose the port
    (C{tcp:0}), else nothing.
    """
    from twisted.internet.endpoints import _parse

    try:
        args, _ = _parse(listen)
        if len(args) >= 2 and args[0] in ("tcp", "tcp6", "ssl", "tls") and int(args[1]) == 0:
            return " (port %d)" % (port.getHost().port,)
    except (ValueError, AttributeError, TypeError):
        pass
    return ""


class _ProcessService(MultiService):
    """
    The top service under twistd: a listener that cannot be bound ends the
    process with its one line and exit status 1, without a traceback.
    """

    def privilegedStartService(self):
        try:
            MultiService.privilegedStartService(self)
        except CannotListen as e:
            _log.critical("{problem}", problem=str(e))
            _quietExit(e)
            # twistd removes its pid file, tells the parent of a daemon
            # (which prints the line) and lets the exception end the process.
            raise


def _quietExit(error):
    """
    Let C{error}, once it ends the process, print nothing more: it was
    logged already. Python exits with status 1 after C{sys.excepthook}.
    """
    previous = sys.excepthook

    def hook(kind, value, tb):
        if value is not error:
            previous(kind, value, tb)

    sys.excepthook = hook


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


#: Seconds after the start past which the process is ready even with namers
#: still loading (C{/ready} names them).
READY_FALLBACK = 10.0


class Runtime(Service):
    """
    What the admin API sees of the running process, and its readiness: a
    service that starts first, so that the readiness clock starts with the
    process.

    @ivar routers: the routers by name, in config order.
    @ivar listeners: the routers' listeners (the admin API's own is not
        waited for: it answers C{/ready}).
    @ivar namers: the namers (L{INamer<meshproxy.discovery.interfaces.INamer>}),
        in config order.
    @ivar readyFallback: seconds after the start past which namers still
        loading no longer hold readiness back.
    @ivar startedAt: the reactor's time at the start, or L{None} before.
    @ivar serverTLS: the L{ServerTLS<meshproxy.tls.ServerTLS>} of each
        router that terminates TLS, by name.
    @ivar upstreamTLS: the names of the routers with TLS to upstreams.
    """

    def __init__(self, *, reactor=None, shutdownGrace=10.0, readyFallback=READY_FALLBACK):
        self.routers = {}
        self.listeners = []
        self.namers = []
        self.serverTLS = {}
        self.upstreamTLS = set()
        self.reactor = reactor
        self.shutdownGrace = shutdownGrace
        self.readyFallback = readyFallback
        self.startedAt = None
        self._fallbackCall = None

    def startService(self):
        """
        Start the readiness clock; log once the process is ready, or at the
        fallback what it still waits for.
        """
        Service.startService(self)
        self.startedAt = self.reactor.seconds()
        self._fallbackCall = self.reactor.callLater(self.readyFallback, self._fallback)
        waits = [listener.whenBound() for listener in self.listeners]
        waits += [namer.whenLoaded() for namer in self.namers]
        gatherResults(waits).addCallback(self._allReady)

    def stopService(self):
        if self._fallbackCall is not None and self._fallbackCall.active():
            self._fallbackCall.cancel()
        self._fallbackCall = None
        return Service.stopService(self)

    def _allReady(self, _):
        if not self.running:
            return
        if self._fallbackCall is not None and self._fallbackCall.active():
            self._fallbackCall.cancel()
        _log.info(
            "ready: {listeners} bound, {namers} loaded",
            listeners=_count(len(self.listeners), "listener"),
            namers=_count(len(self.namers), "namer"),
        )

    def _fallback(self):
        self._fallbackCall = None
        loading = self._loading()
        if not loading:
            return
        if self._unbound():
            # A listener that cannot bind ends the process: this is one
            # bound later than its start, which should not happen.
            _log.warn("not ready after {seconds:g} s: waiting for {what}",
                      seconds=self.readyFallback, what=", ".join(self.waitingFor()))
            return
        _log.warn(
            "ready after {seconds:g} s without waiting any longer for {namers}",
            seconds=self.readyFallback,
            namers=", ".join("namer %s" % (namer.prefix,) for namer in loading),
        )

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
        Whether the process is ready: every listener bound, and every namer
        loaded or L{readyFallback} seconds passed since the start.
        """
        if self._unbound():
            return False
        return not self._loading() or self._pastFallback()

    def waitingFor(self):
        """
        What readiness waits for (or, past the fallback, went on without),
        in words: C{["listener web (tcp:4140)", "namer /#/etcd"]}; empty
        once everything is bound and loaded.
        """
        waiting = ["listener %s" % (listener.description,) for listener in self._unbound()]
        late = " (still loading after %g s)" % (self.readyFallback,) if self._pastFallback() else ""
        waiting.extend("namer %s%s" % (namer.prefix, late) for namer in self._loading())
        return waiting

    def _unbound(self):
        return [listener for listener in self.listeners if not listener.bound]

    def _loading(self):
        return [namer for namer in self.namers if not namer.loaded]

    def _pastFallback(self):
        return (
            self.startedAt is not None
            and self.reactor.seconds() - self.startedAt >= self.readyFallback
        )

    def nodes(self):
        """
        Every (router, bound name, node), for metrics at scrape time.
        """
        for name, router in list(self.routers.items()):
            for boundName, node in router.nodes():
                yield name, boundName, node

    def tlsContexts(self):
        """
        Every router with TLS and its TLS contexts (its listener's, then
        one per upstream connector made so far), for metrics at scrape
        time.
        """
        for name, router in list(self.routers.items()):
            server = self.serverTLS.get(name)
            if server is None and name not in self.upstreamTLS:
                continue
            contexts = [] if server is None else [server]
            contexts.extend(router.upstreamTLS())
            yield name, contexts


def _count(n, word):
    return "1 %s" % (word,) if n == 1 else "%d %ss" % (n, word)


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
    top = _ProcessService()
    runtime, services = buildServices(config, reactor=reactor, configPath=options["config"])
    for service in services:
        service.setServiceParent(top)
    if getattr(options, "demo", False):
        from meshproxy.demo import demoUpstreamServices

        for service in demoUpstreamServices(reactor):
            service.setServiceParent(top)
    top.runtime = runtime
    return top


def buildServices(config, *, reactor, configPath=None, wallClock=None):
    """
    Build the runtime and the services of a validated config.

    @param config: a L{MeshConfig<meshproxy.config.MeshConfig>}.
    @param reactor: the reactor to listen and connect with.
    @param configPath: the config file, whose directory keeps the rules
        changed through the admin API when C{admin.stateDir} is not set;
        L{None} (the embedded demo) keeps them in memory only.
    @param wallClock: the time since the epoch, for deadlines passed
        between hops (tests give a fake one); C{time.time} when L{None}.
    @return: C{(runtime, services)}.
    """
    # Imported here: klein installs the global reactor when imported.
    from prometheus_client import CollectorRegistry
    from twisted.internet.endpoints import serverFromString

    from meshproxy.admin.api import AdminAPI
    from meshproxy.http.router import HttpRouter
    from meshproxy.http.listener import ServerFactory
    from meshproxy.routing.path import Path
    from meshproxy.telemetry.metrics import MeshMetrics

    runtime = Runtime(
        reactor=reactor, shutdownGrace=getattr(config.admin, "shutdownGrace", 10.0)
    )
    registry = CollectorRegistry()
    metrics = MeshMetrics(registry, runtime.nodes, costScale=0.001, tls=runtime.tlsContexts)
    # The runtime first: the readiness clock starts before the namers load.
    services = [runtime]

    namers = {}
    for namerConfig in config.namers:
        namer = makeNamer(namerConfig, reactor=reactor)
        namers[Path.read(namerConfig.prefix)] = namer
        runtime.namers.append(namer)
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
            protocols = ()
        else:
            router = HttpRouter(
                routerConfig,
                namers,
                reactor=reactor,
                metrics=metrics,
                balancerFactory=balancerFactory(routerConfig.loadBalancer, reactor),
                rulesAllowInet=config.admin.rulesAllowInet,
                **({} if wallClock is None else {"wallClock": wallClock}),
            )
            factory = ServerFactory(
                router,
                routerConfig.server,
                reactor,
                router.connStats,
                scheme=b"https" if routerConfig.tls is not None else _scheme(routerConfig.listen),
            )
            protocols = (b"http/1.1",)
        runtime.routers[router.name] = router
        services.append(_RouterService(router, factory, runtime.shutdownGrace))
        upstreamFiles = router.tlsFiles()
        if upstreamFiles:
            from meshproxy.tls import FileWatcher

            runtime.upstreamTLS.add(router.name)
            services.append(
                _WatchService(FileWatcher(upstreamFiles, router.reloadTLS, clock=reactor))
            )
        listening = factory
        listen = routerConfig.listen
        tlsConfig = routerConfig.tls
        if tlsConfig is None:
            listen, tlsConfig = _sslListen(listen)
        if tlsConfig is not None:
            listening, runtime.serverTLS[router.name] = _terminateTLS(
                router, tlsConfig, factory, protocols, reactor, services
            )
        listener = _ListenerService(
            serverFromString(reactor, _endpointString(listen)),
            listening,
            owner="router %s" % (router.name,),
            listen=routerConfig.listen,
            name=router.name,
            reactor=reactor,
        )
        runtime.listeners.append(listener)
        services.append(listener)

    from meshproxy.admin.policy import PolicyStore
    from meshproxy.admin.rules import RulesStore

    stateDir = stateDirectory(config, configPath)
    stores = {}
    policyStores = {}
    for name, router in runtime.routers.items():
        # Every router, TCP ones too, has an access policy; one accepted
        # through the admin API survives a restart and wins over the config's.
        policyStore = policyStores[name] = PolicyStore(router, stateDir=stateDir, clock=reactor)
        if policyStore.load():
            _log.warn(
                "router {router}: using the access policy saved through the admin API in"
                " {path}, not the config's; to go back to the config's policy, delete that"
                " file and restart",
                router=name, path=policyStore.path,
            )
        if router.rules is None:
            # A TCP router has no rules: the admin API answers 404 for them.
            continue
        store = stores[name] = RulesStore(router.rules, stateDir=stateDir, clock=reactor)
        # Rules accepted through the admin API survive a restart.
        _logSavedRules(name, store.path, store.load(), configPath)
    runtime.rulesStores = stores
    runtime.policyStores = policyStores
    admin = AdminAPI(
        runtime,
        registry,
        token=config.admin.token,
        protectReads=config.admin.protectReads,
        allowedHosts=config.admin.allowedHosts,
        rulesStores=stores,
        policyStores=policyStores,
        clock=reactor,
    )
    from meshproxy.admin.site import AdminSite

    site = AdminSite(admin.app.resource(), reactor=reactor)
    services.append(
        _ListenerService(
            serverFromString(reactor, _endpointString(config.admin.listen)),
            site,
            owner="admin",
            listen=config.admin.listen,
            name="admin",
            reactor=reactor,
        )
    )
    return runtime, services


def _sslListen(listen):
    """
    An C{ssl:}/C{tls:} listen string with a certificate and a key, as a
    C{tcp:} one and the C{tls} section it means: such listeners get
    meshproxy's TLS (ALPN answered or left unanswered, never an aborted
    handshake; TLS 1.2+; rotation) rather than Twisted's defaults. Strings
    with other TLS arguments (C{extraCertChain}, C{dhParameters}, ...) are
    left to Twisted.

    @return: C{(listen, tlsConfig)}, C{tlsConfig} being L{None} when the
        string is left as it is.
    """
    from twisted.internet.endpoints import _parse

    from meshproxy.config import CertificateConfig, TLSConfig

    if not listen.startswith(("ssl:", "tls:")):
        return listen, None
    args, kwargs = _parse(listen)
    if set(kwargs) - {"port", "privateKey", "certKey", "interface", "backlog"} or len(args) > 2:
        return listen, None
    port = args[1] if len(args) == 2 else kwargs.get("port", "443")
    key = kwargs.get("privateKey", "server.pem")
    cert = kwargs.get("certKey", key)
    tcp = "tcp:%s" % (port,)
    for name in ("interface", "backlog"):
        if name in kwargs:
            tcp += ":%s=%s" % (name, kwargs[name].replace(":", "\\:"))
    certificate = CertificateConfig(cert=os.path.abspath(cert), key=os.path.abspath(key))
    return tcp, TLSConfig(certificates=(certificate,))


def _terminateTLS(router, tlsConfig, factory, protocols, reactor, services):
    """
    Put TLS in front of a router's listening factory, its files watched for
    rotation.

    @return: the factory to listen with, and the
        L{ServerTLS<meshproxy.tls.ServerTLS>} (for the metrics).
    """
    from twisted.protocols.tls import TLSMemoryBIOFactory

    from meshproxy.tls import FileWatcher, serverTLS

    server = serverTLS(tlsConfig, protocols=protocols, session=router.name)
    router.tlsName = server.identity.name
    services.append(_WatchService(FileWatcher(server.files(), server.reload, clock=reactor)))
    return TLSMemoryBIOFactory(server, False, factory, clock=reactor), server


class _WatchService(Service):
    """
    Runs a L{FileWatcher<meshproxy.tls.FileWatcher>} while the process
    runs.
    """

    def __init__(self, watcher):
        self.watcher = watcher

    def startService(self):
        Service.startService(self)
        self.watcher.start()

    def stopService(self):
        Service.stopService(self)
        self.watcher.stop()


def stateDirectory(config, configPath):
    """
    Where the rules and access policies changed through the admin API are saved.

    @param config: a L{MeshConfig<meshproxy.config.MeshConfig>}.
    @param configPath: its file, or L{None} (the embedded demo).
    @return: C{admin.stateDir} when set, else the config file's directory;
        L{None} (memory only) for a config without a file or C{stateDir}.
    """
    if config.admin.stateDir is not None:
        return config.admin.stateDir
    if configPath is not None:
        return os.path.dirname(os.path.abspath(configPath))
    return None


def _logSavedRules(router, path, restored, configPath):
    """
    Say at start where the rules changed through the admin API are kept, and
    how to go back to the config's rules.

    @param router: the router's name.
    @param path: its state file, or L{None} when kept in memory only.
    @param restored: whether the rules in force came from that file.
    @param configPath: the config file, for the command to show.
    """
    import shlex

    if path is None:
        _log.info(
            "router {router}: rules changed through the admin API are kept in memory"
            " only (lost when meshproxy stops)",
            router=router,
        )
        return
    command = "meshproxy rules reset %s --config %s" % (
        shlex.quote(router),
        shlex.quote(os.path.abspath(configPath)) if configPath else "CONFIG",
    )
    if restored:
        _log.warn(
            "router {router}: using the rules saved through the admin API in {path},"
            " not the config's; to go back to the config's rules, run \"{command}\""
            " (or delete that file) and restart",
            router=router, path=path, command=command,
        )
    else:
        _log.info(
            "router {router}: rules changed through the admin API will be saved in"
            " {path} and win over the config's at the next start (undo: \"{command}\","
            " or delete that file, then restart)",
            router=router, path=path, command=command,
        )


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
