"""
The twistd plugin's options and service: C{twistd -n meshproxy --config FILE}.

L{Options} validates the config before anything binds (a bad config exits
non-zero with every error named by its key path); L{makeService} builds a
L{MultiService} of namers, routers and the admin API
(L{meshproxy.runtime.buildServices}), each listener a
L{StreamServerEndpointService} built from a Twisted endpoint string
(L{meshproxy.listeners}), so privileged ports bind before privileges drop
and systemd socket activation works.

A listener that cannot be bound ends the process with one line naming its
owner and its endpoint (C{router web: cannot listen on tcp:4140: address
already in use}) and exit status 1.

C{SIGHUP} reloads the config file (L{meshproxy.reload}); C{SIGTERM} drains.
"""

from __future__ import annotations

import gc
import signal
import sys
from typing import TYPE_CHECKING, Any, NoReturn

from twisted.application.service import MultiService, Service
from twisted.logger import Logger
from twisted.python import usage

from meshproxy.config import ConfigError, loadConfig, parseConfig
from meshproxy.listeners import CannotListen
from meshproxy.runtime import buildServices

if TYPE_CHECKING:
    from collections.abc import Callable
    from types import TracebackType

    from twisted.internet.defer import Deferred

    from meshproxy.config import MeshConfig
    from meshproxy.runtime import Runtime

_log = Logger()


class Options(usage.Options):
    """
    Command-line options of C{twistd meshproxy}.
    """

    synopsis = "[--config FILE] [--workers N|auto] [--check]"
    longdesc = (
        "Run the meshproxy service-mesh proxy. Without --config, runs the "
        "embedded demo: the sample config, the file namer over the demo's "
        "endpoint files, and demo upstreams on 127.0.0.1:8081-8083, with the "
        "proxy on 127.0.0.1:4140 (try: curl -H 'Host: hello' "
        "http://127.0.0.1:4140/) and the admin API on 127.0.0.1:9990."
    )
    optParameters = [
        ["config", "c", None, "The YAML config file (default: the embedded demo)."],
        [
            "workers",
            "w",
            None,
            "Worker processes running the data path: a number (1 to 64) or auto (the"
            " CPUs available); wins over the config's workers key.",
        ],
    ]
    optFlags = [
        ["check", None, "Validate the config, print the result and exit (0 when valid)."],
    ]

    def opt_version(self) -> NoReturn:
        """
        Print the meshproxy version and exit.
        """
        from meshproxy import __version__

        sys.stdout.write("meshproxy %s\n" % (__version__,))
        sys.stdout.flush()
        raise SystemExit(0)

    def opt_workers(self, value: str) -> None:
        """
        Check C{--workers} at once: a number from 1 to 64, or C{auto}.
        """
        from meshproxy.config.checks import Invalid
        from meshproxy.config.schema import workersValue

        try:
            self["workers"] = workersValue(value if value == "auto" else int(value))
        except (ValueError, Invalid):
            raise usage.UsageError(
                "--workers: expected a number of worker processes (1 to 64) or auto,"
                " got %r" % (value,)
            ) from None

    opt_w = opt_workers

    def workerCount(self) -> int:
        """
        How many worker processes to run: C{--workers}, else the config's
        C{workers}; C{auto} resolved to the CPUs available.
        """
        value = self["workers"]
        if value is None:
            value = getattr(self.meshConfig, "workers", 1)
        if value != "auto":
            # A number: the workers package is imported only when used.
            return int(value)
        from meshproxy.workers.count import resolveWorkers

        return resolveWorkers(value)

    def postOptions(self) -> None:
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
            raise SystemExit(1) from None
        for warning in configWarnings(self.meshConfig):
            sys.stderr.write("%s: warning: %s\n" % (label, warning))
        sys.stderr.flush()
        if self["check"]:
            sys.stdout.write("%s: ok\n" % (label,))
            sys.stdout.flush()
            raise SystemExit(0)


def _checkSupported(config: MeshConfig) -> None:
    """
    Refuse what this version or this host cannot run, without binding
    anything: HTTP rules that name a namer prefix no namer owns, and
    listeners on an C{interface=} address that is not one of this host's.

    @raise ConfigError: naming each problem by its key path.
    """
    from meshproxy.config import hostProblems
    from meshproxy.routing.dtab import DtabSyntaxError
    from meshproxy.routing.path import Path
    from meshproxy.routing.table import RulesError, checkRules

    errors: list[str] = []
    prefixes = [Path.read(n.prefix) for n in config.namers]
    for i, router in enumerate(config.routers):
        if router.protocol != "http":
            # The loader checked a TCP router's rules and destination
            # against the namers.
            continue
        try:
            checkRules(router.rules, prefixes)
        except RulesError as e:
            # A position is a line and a column, given together.
            where = "" if e.line is None else "line %d, column %d: " % (e.line, e.column)  # type: ignore[str-format]
            errors.append("routers[%d].rules: %s%s" % (i, where, e.message))
        except DtabSyntaxError:
            pass  # reported by the config loader already
    errors.extend(hostProblems(config))
    errors.extend(tlsProblems(config))
    if errors:
        raise ConfigError(errors, config.source)


def tlsProblems(config: MeshConfig) -> list[str]:
    """
    The certificate, key and CA files of the C{tls} and C{upstreamTls}
    sections, and of the etcd namers' and rules store's C{tls}, that cannot
    be used (read and checked, without binding).

    @return: messages naming the key path.
    """
    problems: list[str] = []
    etcdSections: list[tuple[str, object]] = [
        ("namers[%d].tls" % (i,), namer) for i, namer in enumerate(config.namers)
        if namer.kind == "etcd"
    ]
    if config.rulesStore is not None:
        etcdSections.append(("rulesStore.tls", config.rulesStore))
    for place, etcd in etcdSections:
        from meshproxy.etcd import tlsProblem

        problem = tlsProblem(etcd)
        if problem is not None:
            problems.append("%s: %s" % (place, problem))
    for i, router in enumerate(config.routers):
        # meshproxy.tls (with cryptography and service_identity) is imported
        # only for a config that has a TLS section.
        if router.tls is not None:
            from meshproxy.tls import TLSFileError, serverTLS

            try:
                serverTLS(router.tls, protocols=())
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
            from meshproxy.tls import ClientContext, TLSFileError

            try:
                ClientContext(ca=section.ca, cert=section.cert, key=section.key)
            except TLSFileError as e:
                problems.append("%s: %s" % (where, e))
    return problems


def freezeStartupObjects() -> None:
    """
    Collect once, then move every object made so far (the modules, the
    config, the routers) out of the garbage collector's sight: most live as
    long as the process, and every full collection would walk them again.
    With 10,000 client connections open, a full collection (a pause of the
    reactor) walks about 400,000 objects, 90,000 of them made at start: it
    takes a third less time without them.

    The cost: what was made at start and later becomes cyclic garbage (the
    routers a reload replaces) is not collected; that is at most one copy of
    the start's objects, since only those are frozen.

    Then the C allocator's free memory goes back to the system
    (L{releaseFreedMemory}): what importing, validating the config and
    building the services freed sits in the heap's holes, about 1.2 MiB.
    """
    gc.collect()
    gc.freeze()
    releaseFreedMemory()


def releaseFreedMemory() -> bool:
    """
    Give the C allocator's free pages back to the system: glibc's
    C{malloc_trim(0)}, which also returns the free pages between the used
    ones (memory Python freed but glibc kept for later allocations; a
    process that needs it again faults pages back in, one at a time).

    @return: whether it could (not on a C library without C{malloc_trim},
        such as musl's).
    """
    # (ctypes is imported already: twistd imports it, through
    # twisted.python.filepath)
    import ctypes

    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return False
    trim(0)
    return True


class _ProcessService(MultiService):
    """
    The top service under twistd: a listener that cannot be bound ends the
    process with its one line and exit status 1, without a traceback.

    @ivar runtime: the process's L{Runtime<meshproxy.runtime.Runtime>} (set
        by L{makeService}).
    """

    runtime: Runtime
    # IReactorCore, which installReopenSignal needs.
    reactor: Any = None
    _uninstallReopen: Callable[[], None] | None = None
    #: Called once the reactor runs (L{freezeStartupObjects}).
    freeze: Callable[[], None] = staticmethod(freezeStartupObjects)

    def startService(self) -> None:
        MultiService.startService(self)
        if self.reactor is not None:
            self.reactor.callWhenRunning(self.freeze)
        telemetry = getattr(self.runtime, "telemetry", None)
        if telemetry is not None and telemetry.accessLog is not None:
            from meshproxy.telemetry.accesslog import installReopenSignal

            # After twistd's logger started, so that its own SIGUSR1 handler
            # (rotating a --logfile) is chained.
            self._uninstallReopen = installReopenSignal(self.reactor, telemetry.reopenLogs)

    def stopService(self) -> Any:
        uninstall, self._uninstallReopen = self._uninstallReopen, None
        if uninstall is not None:
            uninstall()
        return MultiService.stopService(self)

    def privilegedStartService(self) -> None:
        try:
            MultiService.privilegedStartService(self)
        except CannotListen as e:
            _log.critical("{problem}", problem=str(e))
            _quietExit(e)
            # twistd removes its pid file, tells the parent of a daemon
            # (which prints the line) and lets the exception end the process.
            raise
        workers = getattr(getattr(self, "runtime", None), "workers", None)
        if workers is not None and workers.listeners is not None:
            # The workers' sockets, bound while privileged ports may be.
            workers.listeners.prepare()


def _quietExit(error: BaseException) -> None:
    """
    Let C{error}, once it ends the process, print nothing more: it was
    logged already. Python exits with status 1 after C{sys.excepthook}.
    """
    previous = sys.excepthook

    def hook(
        kind: type[BaseException], value: BaseException, tb: TracebackType | None
    ) -> None:
        if value is not error:
            previous(kind, value, tb)

    sys.excepthook = hook


class _ReloadOnHangup(Service):
    """
    Reloads the config file on C{SIGHUP} while the process runs (what the
    systemd unit's C{ExecReload=} sends): twistd leaves the signal alone,
    and its default action would end the process.

    The handler only hands the reload to the reactor's thread
    (C{callFromThread}); the reload logs its outcome (see
    L{meshproxy.reload}).
    """

    def __init__(
        self,
        runtime: Runtime,
        # IReactorThreads, which callFromThread is part of.
        reactor: Any,
    ) -> None:
        self.runtime = runtime
        self.reactor = reactor
        self._previous: Any = None
        self._installed = False

    def privilegedStartService(self) -> None:
        """
        Install the handler, before any service starts (the process logs
        that it is ready as they start); the previous one is restored at
        the stop.
        """
        Service.privilegedStartService(self)
        self._install()

    def startService(self) -> None:
        Service.startService(self)
        self._install()

    def _install(self) -> None:
        if not self._installed:
            self._previous = signal.signal(signal.SIGHUP, self._hangup)
            self._installed = True

    def stopService(self) -> None:
        """
        Give C{SIGHUP} back to the handler it had before; a default
        disposition (which ends the process) becomes "ignore", so that a
        C{SIGHUP} during the drain cannot cut it short.
        """
        Service.stopService(self)
        if self._installed:
            self._installed = False
            previous = self._previous
            if previous is None or previous == signal.SIG_DFL:
                previous = signal.SIG_IGN
            signal.signal(signal.SIGHUP, previous)

    def _hangup(self, signum: int, frame: Any) -> None:
        # A signal handler runs between two bytecodes of the main thread:
        # only hand the work to the reactor.
        self.reactor.callFromThread(self.reload)

    def reload(self) -> Deferred[Any]:
        """
        Reload the config file, as C{SIGHUP} asks. Its outcome is logged by
        the reload itself (a refused one, every problem).
        """
        from meshproxy.reload import ReloadError

        _log.info("SIGHUP: reloading the config file")
        d = self.runtime.reload()
        d.addErrback(lambda f: f.trap(ReloadError) and None)
        d.addErrback(lambda f: _log.failure("reload on SIGHUP failed", f))
        return d


def makeService(
    options: Options,
    # IReactorTCP, IReactorTime and IReactorCore, which no one type says.
    reactor: Any = None,
) -> MultiService:
    """
    Build the process's services from validated options.

    @param options: parsed L{Options} (their C{meshConfig}).
    @param reactor: the reactor; when L{None}, the global one: a
        L{MeshReactor<meshproxy.reactor.MeshReactor>} installed without
        Twisted's TLS (L{meshproxy.twistedtls}), unless a reactor is
        installed already.
    @rtype: L{MultiService}
    """
    if reactor is None:
        from meshproxy.twistedtls import installReactor

        reactor = installReactor()
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
    top.reactor = reactor
    _ReloadOnHangup(runtime, reactor).setServiceParent(top)
    count = options.workerCount() if hasattr(options, "workerCount") else 1
    if count > 1:
        # (the workers poll as the config says; this process serves the
        # admin API only)
        _addWorkers(top, runtime, count, reactor)
    else:
        # (imported once the reactor is installed: see meshproxy.twistedtls)
        from meshproxy.reactor import setBusyPoll

        setBusyPoll(reactor, config.busyPoll)
    return top


def _aggregator(runtime: Runtime, reactor: Any) -> Any:
    """
    The aggregation of the workers' metrics, state and tap
    (L{meshproxy.workers.merge.Aggregator}).
    """
    from meshproxy.workers.merge import Aggregator

    metrics = getattr(runtime, "metrics", None)
    return Aggregator(
        runtime.registry,
        clock=reactor,
        tapStats=None if metrics is None else metrics.telemetry,
    )


def _addWorkers(top: _ProcessService, runtime: Runtime, count: int, reactor: Any) -> None:
    """
    Run the data path in C{count} worker processes: the pool starts first,
    so that its zygote is forked before any namer or store connects.
    """
    # The routers import the HTTP/2 code at their first HTTP/2 connection or
    # h2 upstream: imported here, before the zygote forks, the workers share
    # its pages instead of each importing it.
    import meshproxy.http2.client  # noqa: F401
    import meshproxy.http2.connection  # noqa: F401
    from meshproxy.twistedtls import withoutPyOpenSSL

    with withoutPyOpenSSL():
        # The workers' control channel: AMP imports Twisted's TLS for its
        # STARTTLS, which it does not use over a socketpair.
        import twisted.protocols.amp  # noqa: F401
    from meshproxy.workers.sockets import ListenerGroups
    from meshproxy.workers.supervisor import WorkerPool, ZygoteSpawner, quietListeners
    from meshproxy.workers.worker import workerMain
    from meshproxy.workers.zygote import Zygote

    groups = ListenerGroups(runtime, count, reactor=reactor)

    def spawner() -> ZygoteSpawner:
        # After the listeners were bound (privilegedStartService), before
        # the reactor runs; the supervisor stops accepting on them.
        quietListeners(runtime)
        # Frozen before the fork: the zygote and the workers inherit them
        # frozen, and no process's collector writes to (and so copies) the
        # pages they share; a collection after the fork would.
        top.freeze()
        return ZygoteSpawner(Zygote.fork(workerMain), groups.sockets, reactor=reactor)

    pool = WorkerPool(
        runtime,
        count,
        spawner,
        clock=reactor,
        aggregator=_aggregator(runtime, reactor),
        listeners=groups,
    )
    runtime.workers = pool
    telemetry = getattr(runtime, "telemetry", None)
    if telemetry is not None:
        reopenHere = telemetry.reopenLogs

        def reopenLogs() -> None:
            # SIGUSR1 (after logrotate): the workers write the access log.
            reopenHere()
            pool.reopenLogs()

        telemetry.reopenLogs = reopenLogs
    # First among the services: started first, stopped last.
    pool.setServiceParent(top)
    top.services.remove(pool)
    top.services.insert(0, pool)
