"""
The running process: L{buildServices} makes the namers, the routers, their
listeners and the admin API from a validated config; L{Runtime} is what the
admin API sees of them, and tells it when the process is ready (every
listener bound and every namer loaded once, or 10 seconds after the start
with the namers still loading named).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, overload

from twisted.application.service import Service
from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.logger import Logger

from meshproxy.listeners import (
    _endpointString,
    _ListenerService,
    _scheme,
    _sslListen,
    _terminateTLS,
    _WatchService,
)

if TYPE_CHECKING:
    from twisted.application.service import IService
    from twisted.internet.interfaces import IDelayedCall, IReactorTime
    from twisted.internet.protocol import Factory

    from meshproxy.admin.etcdstore import EtcdStores
    from meshproxy.admin.policy import PolicyStore
    from meshproxy.admin.rules import RulesStore
    from meshproxy.balancing.base import Balancer
    from meshproxy.balancing.node import Node
    from meshproxy.config import (
        LoadBalancerConfig,
        MeshConfig,
        NamerConfig,
        RouterConfig,
        TelemetryConfig,
    )
    from meshproxy.discovery.interfaces import INamer
    from meshproxy.http.listener import ServerFactory
    from meshproxy.http.router import HttpRouter
    from meshproxy.reload import Reloader
    from meshproxy.routing.path import Path
    from meshproxy.tcp.router import TcpRouter, TcpServerFactory
    from meshproxy.telemetry.accesslog import AccessLog
    from meshproxy.telemetry.metrics import MeshMetrics
    from meshproxy.telemetry.spans import ISummarySink, TelemetryStats
    from meshproxy.telemetry.tap import TapHub
    from meshproxy.tls import ClientContext, ServerTLS
    from meshproxy.workers.supervisor import WorkerPool

    #: A router of the config, of either protocol.
    Router = HttpRouter | TcpRouter

_log = Logger()


class _RouterService(Service):
    """
    Starts and stops one router's timers and upstream connections (for a
    TCP router: its destination, and the spliced connections).
    """

    def __init__(
        self, router: Router, factory: ServerFactory | TcpServerFactory, grace: float
    ) -> None:
        self.router = router
        self.factory = factory
        self.grace = grace

    def startService(self) -> None:
        Service.startService(self)
        self.router.start()

    def stopService(self) -> Deferred[None]:
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
    @ivar rulesStores: the L{RulesStore<meshproxy.admin.rules.RulesStore>}
        of each HTTP router, by name (set by L{buildServices}).
    @ivar policyStores: the L{PolicyStore<meshproxy.admin.policy.PolicyStore>}
        of each router, by name (set by L{buildServices}).
    @ivar parts: the L{RouterParts} of each router, by name (set by
        L{buildServices}, changed by a reload).
    @ivar reloader: the L{Reloader<meshproxy.reload.Reloader>} of the
        config file (set by L{buildServices}), or L{None}.
    @ivar telemetry: the process's L{Telemetry} (set by L{buildServices}).
    @ivar rulesStore: the L{EtcdStores<meshproxy.admin.etcdstore.EtcdStores>}
        keeping every router's rules and policy when the config has a
        C{rulesStore}, else L{None}; readiness waits for its first read.
    @ivar workers: the L{WorkerPool<meshproxy.workers.supervisor.WorkerPool>}
        running the data path when the process has worker processes, else
        L{None} (the routers here serve the listeners).
    @ivar registry: the process's C{CollectorRegistry} (set by
        L{buildServices}).
    @ivar metrics: the process's L{MeshMetrics<meshproxy.telemetry.metrics.MeshMetrics>}
        (set by L{buildServices}).
    """

    rulesStores: dict[str, RulesStore]
    policyStores: dict[str, PolicyStore]
    reloader: Reloader | None = None
    telemetry: Telemetry
    rulesStore: EtcdStores | None = None
    workers: WorkerPool | None = None
    registry: Any = None
    metrics: MeshMetrics | None = None

    def __init__(
        self,
        *,
        # IReactorTime and IReactorCore, which no one type says.
        reactor: Any = None,
        shutdownGrace: float = 10.0,
        readyFallback: float = READY_FALLBACK,
    ) -> None:
        self.routers: dict[str, Router] = {}
        self.listeners: list[_ListenerService] = []
        self.namers: list[INamer] = []
        self.serverTLS: dict[str, ServerTLS] = {}
        self.upstreamTLS: set[str] = set()
        self.reactor = reactor
        self.shutdownGrace = shutdownGrace
        self.readyFallback = readyFallback
        self.startedAt: float | None = None
        self._fallbackCall: IDelayedCall | None = None
        self.parts: dict[str, RouterParts] = {}

    def startService(self) -> None:
        """
        Start the readiness clock; log once the process is ready, or at the
        fallback what it still waits for.
        """
        Service.startService(self)
        self.startedAt = self.reactor.seconds()
        self._fallbackCall = self.reactor.callLater(self.readyFallback, self._fallback)
        waits: list[Deferred[Any]] = [listener.whenBound() for listener in self.listeners]
        waits += [namer.whenLoaded() for namer in self.namers]
        if self.rulesStore is not None:
            waits.append(self.rulesStore.whenLoaded())
        gatherResults(waits).addCallback(self._allReady)

    def stopService(self) -> None:
        if self._fallbackCall is not None and self._fallbackCall.active():
            self._fallbackCall.cancel()
        self._fallbackCall = None
        return Service.stopService(self)

    def _allReady(self, _: object) -> None:
        if not self.running:
            return
        if self._fallbackCall is not None and self._fallbackCall.active():
            self._fallbackCall.cancel()
        _log.info(
            "ready: {listeners} bound, {namers} loaded",
            listeners=_count(len(self.listeners), "listener"),
            namers=_count(len(self.namers), "namer"),
        )

    def _fallback(self) -> None:
        self._fallbackCall = None
        loading = self._loading()
        if not loading and not self._storeLoading():
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
            namers=", ".join(
                ["namer %s" % (namer.prefix,) for namer in loading]
                + (["rules store"] if self._storeLoading() else [])
            ),
        )

    def shutdown(self) -> Deferred[None]:
        """
        Stop the process gracefully: listeners close, requests in flight
        finish within the grace period, then the process exits 0.

        @return: a Deferred that fires once the stop is under way.
        """

        self.reactor.callLater(0, self.reactor.stop)
        return succeed(None)

    def reload(self) -> Deferred[dict[str, Any]]:
        """
        Read the config file again and apply what changed (see
        L{meshproxy.reload}): C{SIGHUP} and C{POST /admin/reload}.

        @return: a Deferred firing with the summary of what changed, or
            failing with L{ReloadError<meshproxy.reload.ReloadError>}
            (nothing changed).
        """
        from twisted.internet.defer import fail

        from meshproxy.reload import ReloadError

        if self.reloader is None:
            return fail(ReloadError(["this process has nothing to reload from"], 409))
        d = self.reloader.reload()
        workers = self.workers
        if workers is not None:
            from meshproxy.workers.supervisor import quietListeners

            # The listeners the reload bound are the workers' to accept on
            # (through SO_REUSEPORT sockets where they can be made), made
            # before the reactor's next turn.
            quietListeners(self)
            if workers.listeners is not None:
                workers.listeners.prepare()

            def replaced(summary: dict[str, Any]) -> dict[str, Any]:
                quietListeners(self)
                if summary.get("changed"):
                    workers.configChanged()
                return summary

            d.addCallback(replaced)
        return d

    def valuesChanged(self) -> None:
        """
        A router's rules or access policy changed (the stores' slots say
        so): the workers, if any, get them as a new version.
        """
        if self.workers is not None:
            self.workers.publish()

    def whenApplied(self) -> Deferred[None]:
        """
        Wait until every worker runs the rules and policies in force (at
        once without workers).

        @return: a Deferred firing with L{None}, or failing with
            L{WorkersBehind<meshproxy.workers.supervisor.WorkersBehind>}
            naming the workers that did not within their time.
        """
        if self.workers is None:
            return succeed(None)
        return self.workers.whenApplied()

    def isReady(self) -> bool:
        """
        Whether the process is ready: every listener bound, and every namer
        loaded or L{readyFallback} seconds passed since the start.
        """
        if self._unbound():
            return False
        if self.workers is not None and not self.workers.isCurrent():
            return False
        return not (self._loading() or self._storeLoading()) or self._pastFallback()

    def waitingFor(self) -> list[str]:
        """
        What readiness waits for (or, past the fallback, went on without),
        in words: C{["listener web (tcp:4140)", "namer /#/etcd"]}; empty
        once everything is bound and loaded.
        """
        waiting = ["listener %s" % (listener.description,) for listener in self._unbound()]
        late = " (still loading after %g s)" % (self.readyFallback,) if self._pastFallback() else ""
        waiting.extend("namer %s%s" % (namer.prefix, late) for namer in self._loading())
        if self.rulesStore is not None and self._storeLoading():
            waiting.append("rules store %s%s" % (self.rulesStore.description, late))
        if self.workers is not None:
            waiting.extend(self.workers.behind())
        return waiting

    def _unbound(self) -> list[_ListenerService]:
        return [listener for listener in self.listeners if not listener.bound]

    def _loading(self) -> list[INamer]:
        return [namer for namer in self.namers if not namer.loaded]

    def _storeLoading(self) -> bool:
        return self.rulesStore is not None and not self.rulesStore.loaded

    def _pastFallback(self) -> bool:
        return (
            self.startedAt is not None
            and self.reactor.seconds() - self.startedAt >= self.readyFallback
        )

    def nodes(self) -> Iterator[tuple[str, str, Node]]:
        """
        Every (router, bound name, node), for metrics at scrape time.
        """
        for name, router in list(self.routers.items()):
            for boundName, node in router.nodes():
                yield name, boundName, node

    def tlsContexts(self) -> Iterator[tuple[str, list[ServerTLS | ClientContext]]]:
        """
        Every router with TLS and its TLS contexts (its listener's, then
        one per upstream connector made so far), for metrics at scrape
        time.
        """
        for name, router in list(self.routers.items()):
            server = self.serverTLS.get(name)
            if server is None and name not in self.upstreamTLS:
                continue
            contexts: list[ServerTLS | ClientContext] = [] if server is None else [server]
            contexts.extend(router.upstreamTLS())
            yield name, contexts


def _count(n: int, word: str) -> str:
    return "1 %s" % (word,) if n == 1 else "%d %ss" % (n, word)


def buildServices(
    config: MeshConfig,
    *,
    # IReactorTCP, IReactorTime and IReactorCore, which no one type says.
    reactor: Any,
    configPath: str | None = None,
    wallClock: Callable[[], float] | None = None,
) -> tuple[Runtime, list[IService]]:
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
    from meshproxy.telemetry.metrics import MeshMetrics

    runtime = Runtime(
        reactor=reactor, shutdownGrace=getattr(config.admin, "shutdownGrace", 10.0)
    )
    registry = runtime.registry = CollectorRegistry()
    metrics = runtime.metrics = MeshMetrics(
        registry, runtime.nodes, costScale=0.001, tls=runtime.tlsContexts
    )
    from meshproxy.telemetry.namers import NamerCollector

    registry.register(NamerCollector(lambda: runtime.namers))
    # The runtime first: the readiness clock starts before the namers load.
    services: list[IService] = [runtime]
    # Then telemetry's exporters and access log: stopped after the routers
    # (in reverse order), so that the last requests' spans and lines go out.
    telemetry = Telemetry(config.telemetry, metrics.telemetry, reactor=reactor)
    services += telemetry.services
    runtime.telemetry = telemetry

    namers: dict[Path, INamer] = {}
    for namerConfig in config.namers:
        namer = makeNamer(namerConfig, reactor=reactor)
        # The namer's own prefix: a DNS namer's says how long its names are.
        namers[namer.prefix] = namer
        runtime.namers.append(namer)
        services.append(namer)
    if config.rulesStore is not None:
        # Started before the routers, stopped after them.
        from meshproxy.admin.etcdstore import storesFor

        runtime.rulesStore = storesFor(config.rulesStore, reactor=reactor)
        services.append(runtime.rulesStore)

    # What every router of this process is built with (a reload builds its
    # new routers with the same).
    routerArgs: dict[str, Any] = {} if wallClock is None else {"wallClock": wallClock}
    routerArgs.update(
        tracer=telemetry.tracer, summaries=telemetry.summaries, logQuery=telemetry.logQuery
    )
    for routerConfig in config.routers:
        router, factory, protocols = buildRouter(
            routerConfig,
            namers,
            reactor=reactor,
            metrics=metrics,
            rulesAllowInet=config.admin.rulesAllowInet,
            **routerArgs,
        )
        parts = routerParts(
            routerConfig, router, factory, protocols, runtime.shutdownGrace, reactor
        )
        runtime.routers[router.name] = router
        runtime.parts[router.name] = parts
        runtime.listeners.append(parts.listener)
        if parts.serverTLS is not None:
            runtime.serverTLS[router.name] = parts.serverTLS
        if parts.upstreamWatch is not None:
            runtime.upstreamTLS.add(router.name)
        services.extend(parts.services())

    stateDir = stateDirectory(config, configPath)
    runtime.rulesStores = {}
    runtime.policyStores = {}
    for name in runtime.routers:
        addStores(runtime, name, stateDir=stateDir, configPath=configPath, clock=reactor)
    admin = AdminAPI(
        runtime,
        registry,
        token=config.admin.token,
        protectReads=config.admin.protectReads,
        allowedHosts=config.admin.allowedHosts,
        rulesStores=runtime.rulesStores,
        policyStores=runtime.policyStores,
        clock=reactor,
        tap=telemetry.tap,
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
    from meshproxy.reload import Reloader

    runtime.reloader = Reloader(
        runtime,
        config,
        configPath=configPath,
        reactor=reactor,
        metrics=metrics,
        routerArgs=routerArgs,
    )
    # Last, so that it stops first: a drain ends the tap's streams at once.
    services.append(_TapService(telemetry.tap))
    return runtime, services


class Telemetry:
    """
    The process's tracing, access log and tap, made from the C{telemetry}
    section and shared by every HTTP router.

    @ivar tracer: the L{Tracer<meshproxy.telemetry.observe.Tracer>}.
    @ivar tap: the L{TapHub<meshproxy.telemetry.tap.TapHub>}.
    @ivar accessLog: the L{AccessLog<meshproxy.telemetry.accesslog.AccessLog>},
        or L{None} when off.
    @ivar summaries: what takes each request's summary (the access log and
        the tap).
    @ivar logQuery: whether summaries keep the query string.
    @ivar services: the exporters and the access log, to start and stop.
    """

    def __init__(
        self,
        config: TelemetryConfig,
        stats: TelemetryStats,
        *,
        # IReactorTCP and IReactorTime, which no one type says.
        reactor: Any,
    ) -> None:
        from meshproxy.telemetry.accesslog import AccessLog
        from meshproxy.telemetry.export import exportersFor
        from meshproxy.telemetry.observe import Tracer
        from meshproxy.telemetry.tap import TapHub

        tracing = config.tracing
        exporters = exportersFor(tracing, stats, reactor)
        self.tracer = Tracer(
            sampleRate=tracing.sampleRate,
            sinks=exporters,
            serviceName=tracing.serviceName,
        )
        self.tap = TapHub(stats, clock=reactor)
        self.services: list[IService] = list(exporters)
        summaries: list[ISummarySink] = [self.tap]
        self.accessLog: AccessLog | None = None
        self.logQuery = False
        if config.accessLog is not None:
            self.accessLog = AccessLog(config.accessLog, stats, reactor=reactor)
            self.logQuery = config.accessLog.query
            summaries.insert(0, self.accessLog)
            self.services.append(self.accessLog)
        self.summaries = tuple(summaries)

    def reopenLogs(self) -> None:
        """
        Reopen the access log file (SIGUSR1, after logrotate moved it).
        """
        if self.accessLog is not None:
            self.accessLog.reopen()


class _TapService(Service):
    """
    Ends the tap's streams when the process stops (before the drain).
    """

    def __init__(self, tap: TapHub) -> None:
        self.tap = tap

    def stopService(self) -> None:
        Service.stopService(self)
        self.tap.close()




def buildRouter(
    routerConfig: RouterConfig,
    namers: dict[Path, INamer],
    *,
    # IReactorTCP and IReactorTime, which no one type says.
    reactor: Any,
    metrics: MeshMetrics,
    rulesAllowInet: bool = True,
    **extra: Any,
) -> tuple[Router, ServerFactory | TcpServerFactory, tuple[bytes, ...]]:
    """
    Build one router of the config and the factory its listener accepts
    connections with: at startup (L{buildServices}) and for a reload
    (L{meshproxy.reload}), the same way.

    @param routerConfig: the router's L{RouterConfig<meshproxy.config.RouterConfig>}.
    @param namers: the namers by prefix.
    @param reactor: the reactor to connect with.
    @param metrics: the process's L{MeshMetrics<meshproxy.telemetry.metrics.MeshMetrics>}.
    @param rulesAllowInet: C{admin.rulesAllowInet}.
    @param extra: more keyword arguments of L{HttpRouter<meshproxy.http.router.HttpRouter>}
        (C{wallClock=}, the telemetry's); a TCP router takes none of them.
    @return: C{(router, factory, protocols)}, C{protocols} being the ALPN
        protocols a TLS listener in front of it offers.
    """
    from meshproxy.http.listener import ServerFactory
    from meshproxy.http.router import HttpRouter

    if routerConfig.protocol == "tcp":
        from meshproxy.tcp.router import TcpRouter, TcpServerFactory

        tcp = TcpRouter(
            routerConfig,
            namers,
            reactor=reactor,
            metrics=metrics,
            balancerFactory=balancerFactory(routerConfig.loadBalancer, reactor),
            rulesAllowInet=rulesAllowInet,
        )
        return tcp, TcpServerFactory(tcp), ()
    router = HttpRouter(
        routerConfig,
        namers,
        reactor=reactor,
        metrics=metrics,
        balancerFactory=balancerFactory(routerConfig.loadBalancer, reactor),
        rulesAllowInet=rulesAllowInet,
        **extra,
    )
    factory = ServerFactory(
        router,
        routerConfig.server,
        reactor,
        router.connStats,
        scheme=b"https" if routerConfig.tls is not None else _scheme(routerConfig.listen),
        http2=routerConfig.http2,
    )
    return router, factory, (b"h2", b"http/1.1")


class RouterParts:
    """
    What one router of the config runs as: the router, the factory of its
    listener, the services that start and stop them, and its TLS. A reload
    (L{meshproxy.reload}) replaces the parts it changes.

    @ivar config: the router's L{RouterConfig<meshproxy.config.RouterConfig>}.
    @ivar router: the router.
    @ivar factory: the factory making its client connections.
    @ivar protocols: the ALPN protocols its TLS offers.
    @ivar service: the L{_RouterService} starting and stopping the router.
    @ivar listener: the L{_ListenerService} of its listen string.
    @ivar listening: what the listener listens with: C{factory}, or a
        L{TLSServerFactory<meshproxy.transport.tls.TLSServerFactory>} in
        front of it.
    @ivar serverTLS: the listener's L{ServerTLS<meshproxy.tls.ServerTLS>},
        or L{None}.
    @ivar tlsWatch: the watcher of the listener's TLS files, or L{None}.
    @ivar upstreamWatch: the watcher of the router's upstream TLS files, or
        L{None}.
    """

    def __init__(
        self,
        config: RouterConfig,
        router: Router,
        factory: ServerFactory | TcpServerFactory,
        protocols: tuple[bytes, ...],
        service: _RouterService,
        listener: _ListenerService,
        listening: Factory[Any],
        serverTLS: ServerTLS | None = None,
        tlsWatch: _WatchService | None = None,
        upstreamWatch: _WatchService | None = None,
    ) -> None:
        self.config = config
        self.router = router
        self.factory = factory
        self.protocols = protocols
        self.service = service
        self.listener = listener
        self.listening = listening
        self.serverTLS = serverTLS
        self.tlsWatch = tlsWatch
        self.upstreamWatch = upstreamWatch

    def services(self) -> list[IService]:
        """
        The services of these parts, in the order they start.
        """
        services: list[IService] = [self.service]
        services += [w for w in (self.upstreamWatch, self.tlsWatch) if w is not None]
        services.append(self.listener)
        return services


def routerParts(
    routerConfig: RouterConfig,
    router: Router,
    factory: ServerFactory | TcpServerFactory,
    protocols: tuple[bytes, ...],
    grace: float,
    # IReactorTCP and IReactorTime, which no one type says.
    reactor: Any,
) -> RouterParts:
    """
    The services of a router made by L{buildRouter}: its L{_RouterService},
    the watchers of its TLS files, and its listener (not bound yet).

    @param grace: the seconds its connections get to end at shutdown.

    @raise TLSFileError: when a file of the listener's TLS cannot be used.
    @raise ValueError: when the listen string is not one Twisted can use (a
        C{systemd:} name the process did not inherit, say).
    """
    from twisted.internet.endpoints import serverFromString

    service = _RouterService(router, factory, grace)
    upstreamWatch = None
    upstreamFiles = router.tlsFiles()
    if upstreamFiles:
        from meshproxy.tls import FileWatcher

        upstreamWatch = _WatchService(FileWatcher(upstreamFiles, router.reloadTLS, clock=reactor))
    listening: Factory[Any] = factory
    listen = routerConfig.listen
    tlsConfig = routerConfig.tls
    if tlsConfig is None:
        listen, tlsConfig = _sslListen(listen)
    server = tlsWatch = None
    if tlsConfig is not None:
        watches: list[Any] = []
        listening, server = _terminateTLS(router, tlsConfig, factory, protocols, reactor, watches)
        # (_terminateTLS adds the _WatchService of the listener's files)
        [tlsWatch] = watches
    from meshproxy.transport.preamble import PreambleFactory

    listener = _ListenerService(
        serverFromString(reactor, _endpointString(listen)),
        # What its router reads first (a PROXY header, a ClientHello), in
        # front of its TLS; asked of the router in force at each connection.
        PreambleFactory(factory, listening, clock=reactor),
        owner="router %s" % (router.name,),
        listen=routerConfig.listen,
        name=router.name,
        reactor=reactor,
    )
    return RouterParts(
        routerConfig,
        router,
        factory,
        protocols,
        service,
        listener,
        listening,
        serverTLS=server,
        tlsWatch=tlsWatch,
        upstreamWatch=upstreamWatch,
    )


def addStores(
    runtime: Runtime,
    name: str,
    *,
    stateDir: str | None,
    configPath: str | None,
    clock: IReactorTime,
) -> None:
    """
    Give router C{name} its versioned access policy and (an HTTP router)
    rules, restored from the state files when some were saved through the
    admin API: at startup, and for a router a reload adds.

    The stores follow the router of that name in C{runtime.routers}
    (L{RulesSlot<meshproxy.reload.RulesSlot>},
    L{PolicySlot<meshproxy.reload.PolicySlot>}): a reload that rebuilds the
    router keeps them, their versions and history. With a C{rulesStore}
    (C{runtime.rulesStore}), they are kept in etcd instead, and the state
    directory is not used.
    """
    if runtime.rulesStore is not None:
        runtime.rulesStore.addRouter(runtime, name, clock=clock)
        return
    from meshproxy.admin.policy import PolicyStore
    from meshproxy.admin.rules import RulesStore
    from meshproxy.reload import PolicySlot, RulesSlot

    router = runtime.routers[name]
    # Every router, TCP ones too, has an access policy; one accepted
    # through the admin API survives a restart and wins over the config's.
    policyStore = runtime.policyStores[name] = PolicyStore(
        PolicySlot(runtime, name), stateDir=stateDir, clock=clock
    )
    if policyStore.load():
        _log.warn(
            "router {router}: using the access policy saved through the admin API in"
            " {path}, not the config's; to go back to the config's policy, delete that"
            " file and restart",
            router=name, path=policyStore.path,
        )
    if router.rules is None:
        # A router without rules: the admin API answers 404 for them.
        return
    store = runtime.rulesStores[name] = RulesStore(
        RulesSlot(runtime, name), stateDir=stateDir, clock=clock
    )
    # Rules accepted through the admin API survive a restart.
    _logSavedRules(name, store.path, store.load(), configPath)


@overload
def stateDirectory(config: MeshConfig, configPath: str) -> str: ...


@overload
def stateDirectory(config: MeshConfig, configPath: None) -> str | None: ...


def stateDirectory(config: MeshConfig, configPath: str | None) -> str | None:
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


def _logSavedRules(
    router: str, path: str | None, restored: bool, configPath: str | None
) -> None:
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


def makeNamer(config: NamerConfig, *, reactor: IReactorTime) -> INamer:
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
    if config.kind == "dns":
        from meshproxy.discovery.dns import DnsNamer

        return DnsNamer(
            Path.read(config.prefix),
            reactor=reactor,
            nameservers=config.nameservers,
            refreshMin=config.refresh.min,
            refreshMax=config.refresh.max,
            staleFor=config.staleFor,
            timeout=config.timeout,
        )
    if config.kind == "etcd":
        from meshproxy.discovery.etcd import EtcdNamer
        from meshproxy.etcd import clientFor

        return EtcdNamer(
            Path.read(config.prefix),
            clientFor(config, reactor=reactor),
            config.keyPrefix,
            reactor=reactor,
        )
    from meshproxy.discovery.static import StaticNamer

    services = {
        name: [Endpoint(host, port, weight) for host, port, weight in endpoints]
        for name, endpoints in config.services
    }
    return StaticNamer(Path.read(config.prefix), services)


def balancerFactory(config: LoadBalancerConfig, reactor: IReactorTime) -> Callable[..., Balancer]:
    """
    A function making balancers of the configured kind.
    """
    cls: type[Balancer]
    # (keyword arguments of the balancer's class, which mypy cannot match
    # to its parameters)
    kwargs: dict[str, Any]
    if config.kind == "roundRobin":
        from meshproxy.balancing.roundrobin import RoundRobin as cls

        kwargs = {}
    elif config.kind == "leastLoaded":
        from meshproxy.balancing.leastloaded import LeastLoaded as cls

        kwargs = {}
    else:
        from meshproxy.balancing.p2c import P2CPeakEwma as cls

        kwargs = {"decay": config.decay}

    def make(
        onAdd: Callable[[Node], object] | None = None,
        onRemove: Callable[[Node], object] | None = None,
    ) -> Balancer:
        return cls(clock=reactor, onAdd=onAdd, onRemove=onRemove, **kwargs)

    return make
