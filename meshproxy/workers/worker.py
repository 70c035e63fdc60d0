"""
A worker process: the routers of the config on the listening sockets the
supervisor bound, with its own reactor, metrics, balancer statistics and
failure accrual, fed by the supervisor over AMP
(L{meshproxy.workers.protocol}).

L{workerMain} is what the zygote runs in each forked worker: it builds a
fresh reactor (the forked one is the supervisor's), connects the control
socket and waits for its first L{Configure<meshproxy.workers.protocol.Configure>},
which builds the routers (L{WorkerProcess}).
"""

from __future__ import annotations

import os
import socket
import sys
from typing import TYPE_CHECKING, Any, NoReturn

from twisted.application.service import MultiService, Service
from twisted.internet import tcp
from twisted.internet.posixbase import PosixReactorBase
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.protocols import amp

from meshproxy.listeners import servesTcpRouter
from meshproxy.workers.namer import PushedNamer
from meshproxy.workers.protocol import (
    Bind,
    Configure,
    Drain,
    Endpoints,
    QuietAMP,
    ReopenLogs,
    Shutdown,
    Snapshot,
)

if TYPE_CHECKING:
    from twisted.internet.interfaces import IListeningPort
    from twisted.internet.protocol import Factory
    from twisted.python.failure import Failure

    from meshproxy.runtime import Runtime, Telemetry
    from meshproxy.telemetry.metrics import MeshMetrics

__all__ = ["AdoptedListener", "WorkerLocator", "WorkerProcess", "installFreshReactor", "workerMain"]

_log = Logger()


def installFreshReactor() -> Any:
    """
    Replace the global reactor, inherited from the supervisor by C{fork},
    with a new one of the same kind: the inherited one's epoll and waker
    are the supervisor's kernel objects (the zygote replaced its
    descriptors with C{/dev/null}), and it must never run here.

    Modules that look the reactor up when they need it
    (C{from twisted.internet import reactor} inside a function) get the new
    one; meshproxy passes its reactor explicitly everywhere.

    @return: the new reactor, installed as C{twisted.internet.reactor}.
    """
    import twisted.internet
    from twisted.internet.main import installReactor

    old = sys.modules.pop("twisted.internet.reactor", None)
    if hasattr(twisted.internet, "reactor"):
        del twisted.internet.reactor
    kind: Any
    if old is None:
        from meshproxy.reactor import MeshReactor

        kind = MeshReactor
    else:
        kind = type(old)
    reactor = kind()
    installReactor(reactor)
    return reactor


def acceptOneAtATime(port: Any) -> None:
    """
    Make an adopted TCP port accept one connection each time the reactor
    finds it readable, instead of Twisted's up to 100 (then more): every
    worker waits on the same listening socket, and one that took the whole
    backlog at each wake would get every connection of a burst (measured:
    all 50 of C{wrk -c 50}, with 2 workers; see C{bench/workers_spread.py}).

    @param port: a L{twisted.internet.tcp.Port} (others are left as they
        are).
    """
    if type(port) is tcp.Port:
        port.__class__ = _OneAcceptPort


class _OneAcceptPort(tcp.Port):
    """
    A TCP port that accepts one connection per wake (see
    L{acceptOneAtATime}).
    """

    @property
    def numberAccepts(self) -> int:
        return 1

    @numberAccepts.setter
    def numberAccepts(self, value: int) -> None:
        # (tcp.Port adapts it after each wake: it stays 1)
        pass


class AdoptedListener(Service):
    """
    A listening socket bound by the supervisor, accepted on by this worker.

    @ivar port: the L{IListeningPort} while running, else L{None}.
    """

    def __init__(self, sock: socket.socket, factory: Factory[Any], *, reactor: Any) -> None:
        """
        @param sock: the listening socket (this worker's descriptor, which
            the listener owns: it is closed once adopted).
        @param factory: what accepted connections are built with.
        @param reactor: an C{IReactorSocket}.
        """
        self._sock: socket.socket | None = sock
        self.factory = factory
        self.reactor = reactor
        self.port: IListeningPort | None = None

    def startService(self) -> None:
        Service.startService(self)
        sock = self._sock
        if sock is None:
            return
        self._sock = None
        sock.setblocking(False)
        # The reactor uses its own copy of the descriptor.
        if servesTcpRouter(self.factory) and isinstance(self.reactor, PosixReactorBase):
            # A TCP router's connections are spliced on meshproxy's leaner
            # port and transports, as in a single process; one accepted
            # per wake-up, as below.
            from meshproxy.transport.stream import adoptSplicePort

            self.port = adoptSplicePort(
                self.reactor, sock.fileno(), sock.family, self.factory, maxAccepts=1
            )
        else:
            self.port = self.reactor.adoptStreamPort(sock.fileno(), sock.family, self.factory)
            acceptOneAtATime(self.port)
        sock.close()

    def stopService(self) -> Any:
        Service.stopService(self)
        port, self.port = self.port, None
        if port is not None:
            # An adopted port is closed, never shut down: the socket stays
            # open in the supervisor and the other workers.
            return port.stopListening()
        return None


class WorkerProcess:
    """
    What one worker runs: built from the first snapshot pushed to it, then
    told of new rules and policies.

    @ivar workerId: the worker's slot.
    @ivar version: the version of the snapshot it runs (0 before the first).
    @ivar runtime: the worker's L{Runtime<meshproxy.runtime.Runtime>} (its
        routers), once built.
    @ivar registry: its C{CollectorRegistry}, once built.
    @ivar metrics: its L{MeshMetrics<meshproxy.telemetry.metrics.MeshMetrics>}.
    @ivar telemetry: its L{Telemetry<meshproxy.runtime.Telemetry>} (tracing,
        access log, tap hub).
    @ivar service: the L{MultiService} of its routers and listeners.
    """

    runtime: Runtime | None = None
    registry: Any = None
    metrics: MeshMetrics | None = None
    telemetry: Telemetry | None = None

    def __init__(
        self,
        workerId: int,
        listeners: dict[str, socket.socket],
        *,
        reactor: Any,
        ask: Any = None,
    ) -> None:
        """
        @param workerId: the worker's slot.
        @param listeners: the listening socket of each router, by name.
        @param reactor: the worker's reactor.
        @param ask: C{ask(prefix, service)}: asks the supervisor for a
            service's endpoints (set later, once connected, when L{None}).
        """
        self.workerId = workerId
        self.listeners = listeners
        self.reactor = reactor
        self.ask = ask
        self.version = 0
        self.configGeneration = 0
        self.service = MultiService()
        self.namers: dict[str, PushedNamer] = {}
        # Drains of names this worker's routers have not bound yet.
        self.pendingDrains: set[tuple[str, str, str]] = set()

    def configure(self, version: int, snapshot: Snapshot) -> dict[str, int]:
        """
        Run C{snapshot}: build the routers the first time, then set rules
        and policies that changed.

        @return: the AMP answer, C{{"version", "pid"}}.
        @raise ValueError: for a snapshot of another config than the one
            this worker was built from (the supervisor replaces workers for
            a new config).
        """
        if self.runtime is None:
            self._build(snapshot)
        elif snapshot.configGeneration != self.configGeneration:
            raise ValueError(
                "worker %d runs config %d, not %d"
                % (self.workerId, self.configGeneration, snapshot.configGeneration)
            )
        self._apply(snapshot)
        if version > self.version:
            self.version = version
        return {"version": self.version, "pid": os.getpid()}

    def _build(self, snapshot: Snapshot) -> None:
        from prometheus_client import CollectorRegistry

        from meshproxy.listeners import _sslListen, _terminateTLS, _WatchService
        from meshproxy.reactor import setBusyPoll
        from meshproxy.runtime import Runtime, Telemetry, _RouterService, _TapService, buildRouter
        from meshproxy.telemetry.metrics import MeshMetrics
        from meshproxy.transport.preamble import PreambleFactory

        config = snapshot.config
        reactor = self.reactor
        setBusyPoll(reactor, config.busyPoll)
        self.configGeneration = snapshot.configGeneration
        runtime = self.runtime = Runtime(
            reactor=reactor, shutdownGrace=getattr(config.admin, "shutdownGrace", 10.0)
        )
        registry = self.registry = CollectorRegistry()
        metrics = self.metrics = MeshMetrics(
            registry, runtime.nodes, costScale=0.001, tls=runtime.tlsContexts
        )
        telemetry = self.telemetry = runtime.telemetry = Telemetry(
            config.telemetry, metrics.telemetry, reactor=reactor
        )
        services: list[Any] = list(telemetry.services)
        namers: dict[Any, PushedNamer] = {}
        for prefix in snapshot.namerPrefixes:
            namer = PushedNamer(prefix, self._ask)
            namers[prefix] = self.namers[str(prefix)] = namer
        routerArgs = {
            "tracer": telemetry.tracer,
            "summaries": telemetry.summaries,
            "logQuery": telemetry.logQuery,
        }
        for routerConfig in config.routers:
            router, factory, protocols = buildRouter(
                routerConfig,
                namers,  # type: ignore[arg-type]
                reactor=reactor,
                metrics=metrics,
                rulesAllowInet=config.admin.rulesAllowInet,
                **routerArgs,
            )
            runtime.routers[router.name] = router
            services.append(_RouterService(router, factory, runtime.shutdownGrace))
            upstreamFiles = router.tlsFiles()
            if upstreamFiles:
                from meshproxy.tls import FileWatcher

                services.append(
                    _WatchService(FileWatcher(upstreamFiles, router.reloadTLS, clock=reactor))
                )
                runtime.upstreamTLS.add(router.name)
            listening: Any = factory
            tlsConfig = routerConfig.tls
            if tlsConfig is None:
                _, tlsConfig = _sslListen(routerConfig.listen)
            if tlsConfig is not None:
                listening, server = _terminateTLS(
                    router, tlsConfig, factory, protocols, reactor, services
                )
                runtime.serverTLS[router.name] = server
            sock = self.listeners.get(router.name)
            if sock is None:
                _log.warn("worker {worker}: no listening socket for router {router}",
                          worker=self.workerId, router=router.name)
                continue
            preamble = PreambleFactory(factory, listening, clock=reactor)
            preamble.noisy = False
            owner = "router %s" % (router.name,)
            preamble.logPrefix = _prefix(owner)  # type: ignore[method-assign]
            services.append(AdoptedListener(sock, preamble, reactor=reactor))
        services.append(_TapService(telemetry.tap))
        for service in services:
            service.setServiceParent(self.service)
        self.service.startService()

    def _apply(self, snapshot: Snapshot) -> None:
        runtime = self.runtime
        assert runtime is not None
        for name, router in runtime.routers.items():
            text = snapshot.rules.get(name)
            table = getattr(router, "rules", None)
            if text is not None and table is not None and text != table.rulesText:
                table.setRules(table.validateRules(text), text)
            if name in snapshot.policies:
                router.policy = snapshot.policies[name]
        for drain in snapshot.drains:
            if drain not in self.pendingDrains and not self.drain(*drain, True):
                self.pendingDrains.add(drain)

    def _ask(self, prefix: str, service: str) -> None:
        if self.ask is not None:
            self.ask(prefix, service)

    def endpoints(self, prefix: str, service: str, addr: Any) -> None:
        """
        A service's endpoints, pushed by the supervisor.
        """
        namer = self.namers.get(prefix)
        if namer is not None:
            namer.update(service, addr)
        for drain in list(self.pendingDrains):
            # A name bound since: its endpoints are there now.
            if self.drain(*drain, True):
                self.pendingDrains.discard(drain)

    def drain(self, router: str, name: str, address: str, draining: bool) -> bool:
        """
        Drain or undrain an endpoint of a bound name.

        @return: whether this worker knew that endpoint.
        """
        if not draining:
            self.pendingDrains.discard((router, name, address))
        if self.runtime is None or router not in self.runtime.routers:
            return False
        target = self.runtime.routers[router]
        try:
            if draining:
                target.drain(name, address)
            else:
                target.undrain(name, address)
        except KeyError:
            return False
        return True


class WorkerLocator(amp.CommandLocator):
    """
    The worker's AMP responders; commands it does not know go to an extra
    locator (the aggregation's, L{meshproxy.workers.collect}), when given.
    """

    def __init__(
        self, worker: WorkerProcess, stop: Any, extra: Any = None, makeExtra: Any = None
    ) -> None:
        """
        @param worker: the worker.
        @param stop: called (no argument) to stop the worker's reactor.
        @param extra: an C{IResponderLocator} for the other commands, or
            L{None}.
        @param makeExtra: makes C{extra} from the worker once it is built
            (its first snapshot), when C{extra} is L{None}: L{aggregationLocator}
            in a real worker.
        """
        self.worker = worker
        self.stop = stop
        self.extra = extra
        self.makeExtra = makeExtra

    def locateResponder(self, name: bytes) -> Any:
        responder = amp.CommandLocator.locateResponder(self, name)
        if responder is None and self.extra is not None:
            responder = self.extra.locateResponder(name)
        return responder

    @Configure.responder
    def configure(self, version: int, snapshot: Snapshot) -> dict[str, int]:
        answer = self.worker.configure(version, snapshot)
        if self.extra is None and self.makeExtra is not None:
            self.extra = self.makeExtra(self.worker)
        return answer

    @Endpoints.responder
    def endpoints(self, prefix: str, service: str, addr: Any) -> dict[str, Any]:
        self.worker.endpoints(prefix, service, addr)
        return {}

    @Drain.responder
    def drain(self, router: str, name: str, address: str, draining: bool) -> dict[str, bool]:
        return {"known": self.worker.drain(router, name, address, draining)}

    @ReopenLogs.responder
    def reopenLogs(self) -> dict[str, Any]:
        telemetry = getattr(self.worker, "telemetry", None)
        if telemetry is not None:
            telemetry.reopenLogs()
        return {}

    @Shutdown.responder
    def shutdown(self) -> dict[str, Any]:
        self.worker.reactor.callLater(0, self.stop)
        return {}


def aggregationLocator(worker: WorkerProcess) -> Any:
    """
    The aggregation's responders on this worker (C{CollectMetrics},
    C{CollectState}, the tap).

    @param worker: the built worker (its metrics, runtime and tap hub).
    """
    from meshproxy.workers.collect import WorkerResponder

    telemetry = worker.telemetry
    return WorkerResponder(
        worker.registry,
        worker.runtime,
        None if telemetry is None else telemetry.tap,
        clock=worker.reactor,
    )


class _WorkerAMP(QuietAMP):
    """
    The worker's end of its control socket: when the supervisor goes away,
    the worker drains and exits.
    """

    def __init__(self, locator: WorkerLocator, onLost: Any) -> None:
        QuietAMP.__init__(self, locator=locator)
        self._onLost = onLost

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        QuietAMP.connectionLost(self, reason)
        self._onLost()


def workerMain(request: dict[str, Any], sockets: list[socket.socket]) -> NoReturn:
    """
    Run one worker (in the process the zygote forked for it) until it is
    told to stop, its supervisor goes away, or C{SIGTERM}; then exit.

    @param request: the spawn request: C{worker} (its slot) and C{routers}
        (the router name of each listening socket, in order).
    @param sockets: the control socket, then the listening sockets.
    """
    from twisted.internet.error import ReactorNotRunning
    from twisted.internet.protocol import Factory

    reactor = installFreshReactor()
    workerId = int(request["worker"])
    _tagLogs("worker %d" % (workerId,))
    control, listening = sockets[0], sockets[1:]
    listeners = dict(zip(request["routers"], listening, strict=True))
    worker = WorkerProcess(workerId, listeners, reactor=reactor)

    stopping: list[bool] = []

    def stop() -> None:
        # SIGTERM, the supervisor's Shutdown and the end of the control
        # socket may all come: the first one stops.
        if not stopping:
            stopping.append(True)
            try:
                reactor.stop()
            except ReactorNotRunning:
                pass  # (stopping already, after a SIGTERM)

    locator = WorkerLocator(worker, stop, makeExtra=aggregationLocator)
    protocol = _WorkerAMP(locator, lambda: reactor.callLater(0, stop))

    def ask(prefix: str, service: str) -> None:
        d = protocol.callRemote(Bind, prefix=prefix, service=service)
        d.addErrback(lambda f: _log.failure("asking for {prefix}/{service}", f,
                                            prefix=prefix, service=service))

    worker.ask = ask
    reactor.addSystemEventTrigger("before", "shutdown", worker.service.stopService)
    factory = Factory.forProtocol(lambda: protocol)
    factory.noisy = False
    control.setblocking(False)
    reactor.adoptStreamConnection(control.fileno(), socket.AF_UNIX, factory)
    control.close()
    reactor.run()
    os._exit(0)


def _prefix(owner: str) -> Any:
    return lambda: owner


def _tagLogs(system: str) -> None:
    """
    Mark every log event of this process with C{system} (shown in brackets
    by twistd's log formats), so that a worker's lines say whose they are.
    """
    from twisted.logger import globalLogPublisher

    # (the observers twistd installed, inherited through fork)
    observers = list(getattr(globalLogPublisher, "_observers", ()))
    if not observers:
        return
    for observer in observers:
        globalLogPublisher.removeObserver(observer)

    def tagged(event: dict[str, Any]) -> None:
        if event.get("log_system") in (None, "-"):
            event["log_system"] = system
        for observer in observers:
            observer(event)

    globalLogPublisher.addObserver(tagged)  # type: ignore[arg-type]
