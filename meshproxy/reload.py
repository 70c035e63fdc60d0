"""
Reloading the config file while the process runs: C{SIGHUP} (what the
systemd unit's C{ExecReload=} sends) and C{POST /admin/reload}.

A reload reads the file and validates it first, with the checks of a start
(L{meshproxy.tap}) and its own (L{planReload}): a file with any problem
changes nothing, and every problem is logged. Then it applies the
difference with the config in force, without dropping a request or a
connection:

  - B{namers}, by prefix: an unchanged one is kept, with its state and its
    watches; a new or changed one is built and started; a removed or
    replaced one is stopped once no router in use reads it any more.
  - B{routers}, by name:
      - unchanged: left alone;
      - only C{rules} or C{policy} changed: swapped in place, one
        assignment each (a request routes with the old rules or the new,
        never a mix);
      - anything else changed (timeouts, retries, balancer, accrual,
        classifier, limits, identifier, server and client settings,
        upstream TLS), or the namers changed: a new router is built beside
        the old one from the new section. The listener's factory, and every
        connection open on it, take the new router for their next request
        (a kept-alive connection included); the requests in flight finish
        on the old router, which is stopped once none is left (at the
        latest its C{timeouts.total} later, past which its requests make no
        more tries);
      - added: built, and its listener bound;
      - removed: its listener closes, and its connections drain as at
        shutdown (each ends after its current response, within
        C{admin.shutdownGrace}), then it stops.
  - B{listeners}: a router whose listen string is unchanged keeps its
    socket and its open connections (a C{tls} section changed on it applies
    to new connections); a listen string passed from one router to another
    (a renamed router) hands the socket over. New listen strings are bound
    before anything else changes: if one cannot be, nothing changes.
  - B{rules and access policies} changed through the admin API since the
    last load stay, whatever the file says (the log says so); the others
    follow the file. With a C{rulesStore}, the store is their source of
    truth: a reload keeps the rules and policies in force, ignores the
    file's (the log says so), and never writes the store.
  - B{settings that need a restart} are logged and listed, not applied:
    the admin API's (C{listen}, C{token}, C{protectReads}, C{allowedHosts},
    C{stateDir}) and C{telemetry}. C{admin.shutdownGrace} and
    C{admin.rulesAllowInet} apply.

Reloads are serialized: one starts once the previous one is done (its
removed ports closed).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import attrs
from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredLock, fail, gatherResults, succeed
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from zope.interface import implementer

from meshproxy.routing.table import IRuleTable

if TYPE_CHECKING:
    from twisted.application.service import IServiceCollection
    from twisted.internet.interfaces import IReactorTime

    from meshproxy.config import MeshConfig, RouterConfig
    from meshproxy.discovery.interfaces import INamer
    from meshproxy.policy import Policy
    from meshproxy.routing.dtab import Dtab
    from meshproxy.runtime import Router, RouterParts, Runtime
    from meshproxy.telemetry.metrics import MeshMetrics

__all__ = [
    "Plan",
    "PolicySlot",
    "ReloadError",
    "Reloader",
    "RulesSlot",
    "planReload",
]

_log = Logger()

# What becomes of a namer (by prefix) or a router (by name) in a reload.
KEPT = "kept"
ADDED = "added"
REPLACED = "replaced"
REMOVED = "removed"
UPDATED = "updated"
REBUILT = "rebuilt"

#: The keys of C{admin} a reload applies; a change of any other needs a
#: restart.
_ADMIN_APPLIED = frozenset(["shutdownGrace", "rulesAllowInet"])

#: The sections of the config a reload compares one by one.
_COMPARED = frozenset(["admin", "namers", "routers", "source"])


class ReloadError(Exception):
    """
    A reload that changed nothing.

    @ivar errors: what stopped it, one message per problem (config problems
        start with the key path, as at startup).
    @ivar status: the HTTP status C{POST /admin/reload} answers: 400 for a
        bad config, 409 when there is nothing to reload (no config file, or
        the process is stopping), 500 when applying it failed (a new
        listener that cannot be bound, say).
    """

    def __init__(self, errors: Iterable[str], status: int = 400) -> None:
        self.errors = list(errors)
        self.status = status
        Exception.__init__(self, *self.errors)

    def __str__(self) -> str:
        return "; ".join(self.errors)


# -- the plan -------------------------------------------------------------------------------------


@attrs.frozen
class Plan:
    """
    What a reload changes, from the two configs alone (L{planReload}).

    @ivar namers: each namer prefix of either config → L{KEPT}, L{ADDED},
        L{REPLACED} (its section changed) or L{REMOVED}.
    @ivar routers: each router name of the new config → L{KEPT}, L{UPDATED}
        (only its rules or policy changed: swapped in place), L{REBUILT} (a
        new router on the listener it keeps) or L{ADDED} (a new router on
        a new listener; also a router whose listen string changed).
    @ivar takeovers: each router of the new config that keeps a listener →
        the name of the old router whose listener it is (its own name,
        unless it was renamed).
    @ivar closed: the old routers whose listener closes (removed routers,
        routers whose listen string changed).
    @ivar restart: the keys whose change needs a restart (C{admin.listen},
        C{telemetry}, ...).
    @ivar problems: why the reload cannot be made (then nothing changes).
    """

    namers: dict[str, str]
    routers: dict[str, str]
    takeovers: dict[str, str]
    closed: tuple[str, ...]
    restart: tuple[str, ...]
    problems: tuple[str, ...]
    grace: float | None

    @property
    def changed(self) -> bool:
        """
        Whether applying the plan changes anything in the process.
        """
        return (
            any(action != KEPT for action in self.namers.values())
            or any(action != KEPT for action in self.routers.values())
            or bool(self.closed)
            or self.grace is not None
        )


def _anyPort(listen: str) -> bool:
    """
    Whether a listen string asks for any free port (C{tcp:0…}): two routers
    may have the same such string, each with its own port.
    """
    from meshproxy.config.schema import _anyPort as anyPort

    return anyPort(listen)


def _onlyInPlace(old: RouterConfig, new: RouterConfig) -> bool:
    """
    Whether two sections of one router differ in their rules and policy
    only (which a reload swaps in place).
    """
    return old.model_copy(update={"rules": new.rules, "policy": new.policy}) == new


def planReload(old: MeshConfig, new: MeshConfig) -> Plan:
    """
    Compare the config in force with a new one.

    @param old: the L{MeshConfig<meshproxy.config.MeshConfig>} in force.
    @param new: the new one, validated.
    @return: the L{Plan}.
    """
    oldNamers = {n.prefix: n for n in old.namers}
    newNamers = {n.prefix: n for n in new.namers}
    namers: dict[str, str] = {}
    for prefix, section in newNamers.items():
        before = oldNamers.get(prefix)
        if before is None:
            namers[prefix] = ADDED
        else:
            namers[prefix] = KEPT if before == section else REPLACED
    for prefix in oldNamers:
        if prefix not in newNamers:
            namers[prefix] = REMOVED
    namersChanged = any(action != KEPT for action in namers.values())
    inetChanged = old.admin.rulesAllowInet != new.admin.rulesAllowInet

    # Who keeps which listener: a router whose listen string is unchanged
    # keeps its own; then a listen string (with a fixed port) that an old
    # router leaves goes to the new router that has it.
    oldRouters = {r.name: r for r in old.routers}
    takeovers: dict[str, str] = {}
    for router in new.routers:
        previous = oldRouters.get(router.name)
        if previous is not None and not _differ(previous.listen, router.listen):
            takeovers[router.name] = router.name
    taken = set(takeovers.values())
    left: dict[str, str] = {}
    for previous in old.routers:
        if previous.name not in taken and not _anyPort(previous.listen):
            left.setdefault(previous.listen, previous.name)
    for router in new.routers:
        if router.name not in takeovers and router.listen in left:
            takeovers[router.name] = left.pop(router.listen)
    taken = set(takeovers.values())
    closed = tuple(r.name for r in old.routers if r.name not in taken)

    problems: list[str] = []
    routers: dict[str, str] = {}
    for i, router in enumerate(new.routers):
        owner = takeovers.get(router.name)
        if owner is None:
            routers[router.name] = ADDED
            continue
        previous = oldRouters[owner]
        where = "routers[%d]" % (i,)
        if previous.protocol != router.protocol:
            problems.append(
                "%s.protocol: the listener %s stays, and its protocol (%s) cannot change"
                " without a restart: restart, or give the router another listen string"
                % (where, router.listen, previous.protocol)
            )
        elif (previous.tls is None) != (router.tls is None):
            problems.append(
                "%s.tls: TLS cannot be turned %s on the listener %s without a restart:"
                " restart, or give the router another listen string"
                % (where, "on" if router.tls is not None else "off", router.listen)
            )
        rebuild = namersChanged or (inetChanged and router.protocol == "http")
        if owner != router.name or rebuild or not _onlyInPlace(previous, router):
            routers[router.name] = REBUILT
        elif previous == router:
            routers[router.name] = KEPT
        else:
            routers[router.name] = UPDATED

    restart = [
        "admin.%s" % (key,)
        for key in type(new.admin).model_fields
        if key not in _ADMIN_APPLIED and getattr(old.admin, key) != getattr(new.admin, key)
    ]
    restart += [
        key
        for key in type(new).model_fields
        if key not in _COMPARED and getattr(old, key) != getattr(new, key)
    ]
    grace = new.admin.shutdownGrace
    return Plan(
        namers=namers,
        routers=routers,
        takeovers=takeovers,
        closed=closed,
        restart=tuple(restart),
        problems=tuple(problems),
        grace=None if grace == old.admin.shutdownGrace else grace,
    )


# -- the stores' view of a router -----------------------------------------------------------------


@implementer(IRuleTable)
class RulesSlot:
    """
    The rule table of the router called C{name}, whichever router object
    has that name now: what a L{RulesStore<meshproxy.admin.rules.RulesStore>}
    edits, so that the store (its versions, history and state file) stays
    when a reload replaces the router.
    """

    def __init__(self, runtime: Runtime, name: str) -> None:
        """
        @param runtime: gives the routers by name (C{runtime.routers}).
        @param name: the router's name.
        """
        self._runtime = runtime
        self.name = name

    @property
    def table(self) -> Any:
        """
        The L{RuleTable<meshproxy.routing.table.RuleTable>} in force.
        """
        return self._runtime.routers[self.name].rules

    @property
    def rulesText(self) -> str:
        return str(self.table.rulesText)

    def validateRules(self, text: str) -> Dtab:
        """
        See L{IRuleTable.validateRules}.
        """
        return self.table.validateRules(text)

    def setRules(self, dtab: Dtab, text: str) -> None:
        """
        See L{IRuleTable.setRules}.
        """
        self.table.setRules(dtab, text)
        _changed(self._runtime)

    def recentNames(self) -> list[str]:
        """
        See L{IRuleTable.recentNames}.
        """
        return list(self.table.recentNames())

    def describe(self, dtab: Dtab, name: str) -> str:
        """
        See L{IRuleTable.describe}.
        """
        return str(self.table.describe(dtab, name))


class PolicySlot:
    """
    The access policy of the router called C{name}, whichever router object
    has that name now: what a L{PolicyStore<meshproxy.admin.policy.PolicyStore>}
    reads and assigns.
    """

    def __init__(self, runtime: Runtime, name: str) -> None:
        """
        @param runtime: gives the routers by name (C{runtime.routers}).
        @param name: the router's name.
        """
        self._runtime = runtime
        self.name = name

    @property
    def policy(self) -> Policy | None:
        """
        The router's policy (L{None}: everything allowed); assigned whole.
        """
        return self._runtime.routers[self.name].policy

    @policy.setter
    def policy(self, policy: Policy | None) -> None:
        self._runtime.routers[self.name].policy = policy
        _changed(self._runtime)


def _changed(runtime: Any) -> None:
    """
    Tell the runtime a router's rules or policy changed (its workers, if
    any, get them: L{Runtime.valuesChanged<meshproxy.runtime.Runtime.valuesChanged>}).
    """
    changed = getattr(runtime, "valuesChanged", None)
    if changed is not None:
        changed()


def _policyShape(policy: Policy | None) -> dict[str, Any]:
    """
    A policy as the policy store shows it (L{None}: allow everything).
    """
    if policy is None:
        return {"default": "allow", "rules": []}
    return policy.describe()


# -- routers being retired ------------------------------------------------------------------------


def _httpBusy(factory: Any, router: Router) -> int:
    """
    How many requests of the connections of C{factory} run on C{router}
    (started, or waiting behind another one on their connection).
    """
    busy = 0
    for conn in factory.connections:
        active = conn.active
        if active is not None and getattr(active, "router", None) is router:
            busy += 1
        busy += sum(1 for queued in conn.queue if getattr(queued, "router", None) is router)
    return busy


def _tcpBusy(factory: Any, router: Router) -> int:
    """
    How many connections of C{factory} are still being connected by
    C{router} (once spliced, a connection needs nothing of its router).
    """
    busy = 0
    for conn in factory.connections:
        splice = getattr(conn, "splice", None)
        if (
            splice is not None
            and splice.router is router
            and splice.upstream is None
            and not splice.closing
        ):
            busy += 1
    return busy


class _Retiring(Service):
    """
    The routers a reload replaced, while what they started finishes: each
    is stopped once nothing of it is left on its listener's connections, or
    once its time is up. At shutdown, L{stopService} waits for them.

    @ivar interval: seconds between two looks at a router's connections.
    """

    interval = 0.1

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self._pending: dict[Deferred[None], LoopingCall] = {}

    def retire(self, router: Router, factory: Any, limit: float) -> Deferred[None]:
        """
        Stop C{router} once none of the requests (HTTP) or connection
        attempts (TCP) it started on C{factory}'s connections is left, or
        after C{limit} seconds at the latest.

        @return: a Deferred firing once the router is stopped.
        """
        busy = _tcpBusy if router.config.protocol == "tcp" else _httpBusy
        deadline = self._clock.seconds() + limit
        done: Deferred[None] = Deferred()

        def look() -> None:
            left = busy(factory, router)
            if left and self._clock.seconds() < deadline:
                return
            if left:
                _log.warn(
                    "router {router}: stopping the router a reload replaced with {n} of its"
                    " requests or connections still in progress after {limit:g} s",
                    router=router.name, n=left, limit=limit,
                )
            loop = self._pending.pop(done)
            loop.stop()
            router.stop()
            done.callback(None)

        loop = LoopingCall(look)
        loop.clock = self._clock
        self._pending[done] = loop
        loop.start(self.interval, now=True)
        return done

    def stopService(self) -> Deferred[None]:
        """
        At shutdown: wait for the routers still being retired (the drain of
        their listeners ends their requests).
        """
        Service.stopService(self)
        waits = list(self._pending)
        if not waits:
            return succeed(None)
        d: Deferred[Any] = gatherResults([_follow(w) for w in waits])
        return d.addCallback(lambda _: None)


def _follow(d: Deferred[Any]) -> Deferred[Any]:
    """
    A Deferred firing when C{d} does, leaving C{d}'s result alone.
    """
    follower: Deferred[Any] = Deferred()

    def fire(result: Any) -> Any:
        follower.callback(None)
        return result

    d.addBoth(fire)
    return follower


def _retireLimit(router: Router) -> float:
    """
    The longest a replaced router may still be needed by what it started:
    an HTTP router's requests make no try after their total timeout; a TCP
    router's connection attempts end within their connect timeouts.
    """
    deadlines = getattr(router, "deadlines", None)
    if deadlines is not None:
        return float(deadlines.total) + 1.0
    tries = getattr(router, "connectRetries", 0) + 1
    return float(getattr(router, "connectTimeout", 10.0)) * tries + 1.0


def _systemdKey(listen: str) -> str | None:
    """
    Which socket passed by systemd a C{systemd:} listen string adopts
    (C{"name=web"}, C{"index=0"}), or L{None} for other strings.
    """
    if not listen.startswith("systemd:"):
        return None
    from twisted.internet.endpoints import _parse

    _, kwargs = _parse(listen)
    if "name" in kwargs:
        return "name=%s" % (kwargs["name"],)
    return "index=%s" % (kwargs.get("index"),)


# -- the reload -----------------------------------------------------------------------------------


class _Staged:
    """
    What a reload built before changing anything: thrown away if a later
    step fails.
    """

    def __init__(self) -> None:
        self.namers: dict[str, INamer] = {}
        self.parts: dict[str, RouterParts] = {}
        # Rebuilt routers on kept listeners: name → (router, new TLS, its watch).
        self.rebuilt: dict[str, tuple[Router, Any, Any]] = {}
        # In-place changes: name → (rules (dtab, text) or None, policy or ...).
        self.inPlace: dict[str, tuple[tuple[Any, str] | None, Any]] = {}
        self.bound: list[Any] = []
        self.notes: dict[str, dict[str, str]] = {"rules": {}, "policies": {}}


_UNCHANGED = object()


class Reloader:
    """
    Reloads the config file of a running process (see the module
    docstring).

    @ivar config: the L{MeshConfig<meshproxy.config.MeshConfig>} in force.
    @ivar configPath: the config file, or L{None} (the embedded demo: no
        reload).
    """

    def __init__(
        self,
        runtime: Runtime,
        config: MeshConfig,
        *,
        configPath: str | None,
        # IReactorTCP, IReactorTime and IReactorCore, which no one type says.
        reactor: Any,
        metrics: MeshMetrics,
        routerArgs: dict[str, Any] | None = None,
        parent: IServiceCollection | None = None,
    ) -> None:
        """
        @param runtime: the process's L{Runtime<meshproxy.runtime.Runtime>}.
        @param config: the config the process was built from.
        @param configPath: its file.
        @param reactor: what the routers and listeners use.
        @param metrics: the process's metrics.
        @param routerArgs: the keyword arguments every HTTP router is built
            with (L{buildRouter<meshproxy.runtime.buildRouter>}).
        @param parent: the service the process's services run under; the
            runtime's parent when L{None}.
        """
        from meshproxy.runtime import stateDirectory

        self.runtime = runtime
        self.config = config
        self.configPath = None if configPath is None else os.path.abspath(configPath)
        self.reactor = reactor
        self.metrics = metrics
        self.routerArgs = dict(routerArgs or {})
        self._parent = parent
        # Where new routers' stores keep their state: stateDir changes need
        # a restart.
        self._stateDir = stateDirectory(config, configPath)
        self._lock = DeferredLock()
        self._retiring: _Retiring | None = None
        # The sockets passed by systemd this process adopted: Twisted closes
        # the inherited descriptor once adopted, so each can be used once.
        self._adopted = {
            key for key in (_systemdKey(r.listen) for r in config.routers) if key is not None
        }

    @property
    def parent(self) -> IServiceCollection:
        """
        The service the process's services run under.
        """
        parent = self._parent if self._parent is not None else self.runtime.parent
        if parent is None:
            raise ReloadError(["the process's services have no parent to reload into"], 409)
        return parent

    def reload(self) -> Deferred[dict[str, Any]]:
        """
        Read the config file again and apply what changed, after any reload
        in progress.

        @return: a Deferred firing with a JSON-ready summary (C{"changed"}
            false when the file says what is in force already), or failing
            with L{ReloadError} when nothing changed because of a problem
            (each one logged).
        """
        return self._lock.run(self._reload)

    def _reload(self) -> Deferred[dict[str, Any]]:
        path = self.configPath or "<embedded demo>"
        try:
            summary, closing = self._apply()
        except ReloadError as e:
            for error in e.errors:
                _log.error("reload of {path} refused: {error}", path=path, error=error)
            _log.error(
                "reload of {path} refused: nothing changed ({n} problem{s})",
                path=path, n=len(e.errors), s="" if len(e.errors) == 1 else "s",
            )
            return fail(e)
        except Exception as e:
            _log.failure("reload of {path} failed: nothing changed", path=path)
            return fail(ReloadError(["internal error: %s" % (e,)], 500))
        # Done once the removed listeners' ports are closed: the next
        # reload may bind what this one closed.
        d: Deferred[Any] = gatherResults(closing, consumeErrors=True)
        d.addErrback(lambda f: _log.failure("closing a listener failed", f))
        return d.addCallback(lambda _: self._done(summary))

    def _done(self, summary: dict[str, Any]) -> dict[str, Any]:
        if summary["changed"]:
            _log.info(
                "reloaded {path}: routers {routers}; namers {namers}; listeners"
                " {listeners}{restart}",
                path=self.configPath,
                routers=_describe(summary["routers"]),
                namers=_describe(summary["namers"]),
                listeners=_describe(summary["listeners"]),
                restart=(
                    "; needs a restart: " + ", ".join(summary["restartNeeded"])
                    if summary["restartNeeded"]
                    else ""
                ),
            )
        return summary

    # -- the steps ----------------------------------------------------------------------------

    def _load(self) -> MeshConfig:
        """
        Read and validate the file as a start does.

        @raise ReloadError: listing every problem.
        """
        from meshproxy.config import ConfigError, configWarnings, loadConfig
        from meshproxy.tap import _checkSupported

        if self.configPath is None:
            raise ReloadError(
                ["no config file: the embedded demo has nothing to reload"], 409
            )
        if not self.runtime.running:
            raise ReloadError(["the process is stopping"], 409)
        try:
            config = loadConfig(self.configPath)
            _checkSupported(config)
        except ConfigError as e:
            raise ReloadError(e.errors, 400) from None
        for warning in configWarnings(config):
            _log.warn("reload of {path}: warning: {warning}", path=self.configPath, warning=warning)
        return config

    def _apply(self) -> tuple[dict[str, Any], list[Deferred[Any]]]:
        new = self._load()
        old = self.config
        plan = planReload(old, new)
        problems = list(plan.problems) + self._adoptionProblems(plan, new)
        if problems:
            raise ReloadError(problems, 400)
        parent = self.parent
        for key in plan.restart:
            _log.warn(
                "reload of {path}: {key} changed, which takes effect at the next restart only",
                path=self.configPath, key=key,
            )
        if not plan.changed:
            summary = _summary(plan, old, new, _Staged(), self.configPath)
            summary["message"] = (
                "nothing applied: what changed needs a restart"
                if plan.restart
                else "nothing changed"
            )
            _log.info(
                "reload of {path}: {message}", path=self.configPath, message=summary["message"]
            )
            self.config = _inForce(old, new)
            return summary, []
        staged = self._stage(plan, new)
        self._bind(staged, parent)
        closing = self._commit(plan, new, staged, parent)
        summary = _summary(plan, old, new, staged, self.configPath)
        return summary, closing

    def _adoptionProblems(self, plan: Plan, new: MeshConfig) -> list[str]:
        """
        New C{systemd:} listeners naming a socket this process adopted
        already: Twisted closed that descriptor, so a restart is needed.
        """
        problems = []
        for i, router in enumerate(new.routers):
            key = _systemdKey(router.listen)
            if key is not None and router.name not in plan.takeovers and key in self._adopted:
                problems.append(
                    "routers[%d].listen: the socket systemd passed as %s was adopted by this"
                    " process already and cannot be again: restart to listen on it with a new"
                    " listen string" % (i, key)
                )
        return problems

    def _stage(self, plan: Plan, new: MeshConfig) -> _Staged:
        """
        Build what the new config needs and the process has not, changing
        nothing that runs.

        @raise ReloadError: when something cannot be built (a C{systemd:}
            socket the process did not inherit, a TLS file).
        """
        from meshproxy.routing.table import checkRules
        from meshproxy.runtime import buildRouter, makeNamer, routerParts

        runtime = self.runtime
        staged = _Staged()
        current = dict(zip([n.prefix for n in self.config.namers], runtime.namers, strict=True))
        namers: dict[Any, INamer] = {}
        for namerSection in new.namers:
            prefix = namerSection.prefix
            if plan.namers[prefix] == KEPT:
                namer = current[prefix]
            else:
                namer = staged.namers[prefix] = makeNamer(namerSection, reactor=self.reactor)
            namers[namer.prefix] = namer
        oldSections = {r.name: r for r in self.config.routers}
        grace = new.admin.shutdownGrace
        for i, section in enumerate(new.routers):
            name = section.name
            action = plan.routers[name]
            if action == KEPT:
                continue
            if action == UPDATED:
                staged.inPlace[name] = self._inPlace(
                    runtime.routers[name], oldSections[name], section, staged, checkRules
                )
                continue
            try:
                router, factory, protocols = buildRouter(
                    section,
                    namers,
                    reactor=self.reactor,
                    metrics=self.metrics,
                    rulesAllowInet=new.admin.rulesAllowInet,
                    **self.routerArgs,
                )
                self._carryOver(router, name, oldSections.get(name), section, staged)
                if action == ADDED:
                    staged.parts[name] = routerParts(
                        section, router, factory, protocols, grace, self.reactor
                    )
                else:
                    kept = runtime.parts[plan.takeovers[name]]
                    staged.rebuilt[name] = (router,) + self._listenerTLS(kept, section, router)
            except ReloadError:
                raise
            except Exception as e:
                raise ReloadError(
                    ["routers[%d] (%s): cannot be built: %s" % (i, name, e)], 500
                ) from e
        return staged

    def _inPlace(
        self,
        router: Router,
        old: RouterConfig,
        new: RouterConfig,
        staged: _Staged,
        checkRules: Any,
    ) -> tuple[tuple[Any, str] | None, Any]:
        """
        The rules and policy a router changed in place takes: the file's,
        unless changed through the admin API since the last load.

        @return: C{(rules, policy)}: C{(dtab, text)} or L{None} to leave the
            rules, and a policy or L{_UNCHANGED}.
        """
        from meshproxy.policy import Policy

        rules = None
        table = router.rules
        if self.runtime.rulesStore is not None:
            self._noteStore(router.name, old, new, staged)
            return None, _UNCHANGED
        if table is not None and _differ(new.rules, old.rules):
            if table.rulesText != old.rules:
                self._noteKeptRules(router.name, table.rulesText, staged)
            else:
                rules = (checkRules(new.rules, table.prefixes), new.rules)
                staged.notes["rules"][router.name] = "from the file"
        policy: Any = _UNCHANGED
        if _differ(new.policy, old.policy):
            if _policyShape(router.policy) != _policyShape(Policy.active(old.policy)):
                self._noteKeptPolicy(router.name, router.policy, staged)
            else:
                policy = Policy.active(new.policy)
                staged.notes["policies"][router.name] = "from the file"
        return rules, policy

    def _carryOver(
        self,
        router: Router,
        name: str,
        old: RouterConfig | None,
        new: RouterConfig,
        staged: _Staged,
    ) -> None:
        """
        Give a new router the rules and policy changed through the admin API
        on the router of the same name since the last load.
        """
        from meshproxy.policy import Policy

        previous = self.runtime.routers.get(name)
        if previous is None or old is None:
            return
        if self.runtime.rulesStore is not None:
            self._carryFromStore(router, previous, old, new, staged)
            return
        table, oldTable = router.rules, previous.rules
        if table is not None and oldTable is not None and old.protocol == "http":
            text = oldTable.rulesText
            if text != old.rules:
                try:
                    dtab = table.validateRules(text)
                except ValueError as e:
                    _log.warn(
                        "reload: router {router}: the rules changed through the admin API are"
                        " not valid with the new config ({error}): using the file's",
                        router=name, error=str(e),
                    )
                    staged.notes["rules"][name] = (
                        "from the file: the rules changed through the admin API are not"
                        " valid with it (%s)" % (e,)
                    )
                else:
                    table.setRules(dtab, text)
                    self._noteKeptRules(name, text, staged)
            elif _differ(new.rules, old.rules):
                staged.notes["rules"][name] = "from the file"
        if _policyShape(previous.policy) != _policyShape(Policy.active(old.policy)):
            router.policy = previous.policy
            self._noteKeptPolicy(name, previous.policy, staged)
        elif _differ(new.policy, old.policy):
            staged.notes["policies"][name] = "from the file"

    def _noteStore(
        self, name: str, old: RouterConfig, new: RouterConfig, staged: _Staged
    ) -> None:
        """
        With a rules store: say that the file's rules and policy, where
        they changed, are not applied.
        """
        for key, notes in (("rules", "rules"), ("policy", "policies")):
            if key == "rules" and new.protocol != "http":
                continue
            if _differ(getattr(new, key), getattr(old, key)):
                _log.warn(
                    "reload: router {router}: not applying the file's {what}: with a"
                    " rulesStore, the store is the source of truth (change the {what}"
                    " through the admin API)",
                    router=name, what=key,
                )
                staged.notes[notes][name] = (
                    "kept: from the rules store (the file's %s is not applied)" % (key,)
                )

    def _carryFromStore(
        self,
        router: Router,
        previous: Router,
        old: RouterConfig,
        new: RouterConfig,
        staged: _Staged,
    ) -> None:
        """
        With a rules store: a rebuilt router keeps the rules and policy in
        force (the store's), whatever the file says.

        @raise ReloadError: when the rules in force are not valid with the
            new config (it removes a namer they name, say): the store's
            rules must change first.
        """
        from meshproxy.routing.table import checkRules

        table, oldTable = router.rules, previous.rules
        text = None if oldTable is None else oldTable.rulesText
        if table is not None and text is not None and text != new.rules:
            try:
                # The config's own rules may lead to addresses whatever
                # admin.rulesAllowInet says (the operator wrote them).
                if text == old.rules:
                    dtab = checkRules(text, table.prefixes)
                else:
                    dtab = table.validateRules(text)
            except ValueError as e:
                raise ReloadError([
                    "routers (%s): the rules in force, from the rules store, are not valid with"
                    " the new config (%s): change them through the admin API first" % (
                        router.name, e,
                    )
                ], 400) from None
            table.setRules(dtab, text)
        router.policy = previous.policy
        self._noteStore(router.name, old, new, staged)

    def _noteKeptRules(self, name: str, text: str, staged: _Staged) -> None:
        from meshproxy.admin.rules import rulesVersion

        version = rulesVersion(text)
        _log.warn(
            "reload: router {router}: keeping the rules changed through the admin API since"
            " the last load (version {version}), not the file's; to follow the file again,"
            " PUT its rules through the admin API",
            router=name, version=version,
        )
        staged.notes["rules"][name] = (
            "kept: changed through the admin API since the last load (version %s)" % (version,)
        )

    def _noteKeptPolicy(self, name: str, policy: Policy | None, staged: _Staged) -> None:
        from meshproxy.admin.policy import policyVersion

        version = policyVersion(_policyShape(policy))
        _log.warn(
            "reload: router {router}: keeping the access policy changed through the admin API"
            " since the last load (version {version}), not the file's; to follow the file"
            " again, PUT its policy through the admin API",
            router=name, version=version,
        )
        staged.notes["policies"][name] = (
            "kept: changed through the admin API since the last load (version %s)" % (version,)
        )

    def _listenerTLS(
        self, kept: RouterParts, section: RouterConfig, router: Router
    ) -> tuple[Any, Any]:
        """
        The TLS of a kept listener for its new router: the same, or (its
        C{tls} section changed) a new one for new connections.

        @return: C{(serverTLS, watch)} when the TLS changes, else
            C{(None, None)}.
        """
        if kept.serverTLS is None or kept.config.tls == section.tls or section.tls is None:
            router.tlsName = kept.router.tlsName
            return None, None
        from meshproxy.listeners import _WatchService
        from meshproxy.tls import FileWatcher, serverTLS

        server = serverTLS(section.tls, protocols=kept.protocols)
        router.tlsName = server.identity.name
        return server, _WatchService(FileWatcher(server.files(), server.reload, clock=self.reactor))

    def _bind(self, staged: _Staged, parent: IServiceCollection) -> None:
        """
        Bind the new listeners (as children of C{parent}); if one cannot
        be, unbind those bound and raise.

        @raise ReloadError: 500, naming the listener.
        """
        from meshproxy.listeners import CannotListen

        for parts in staged.parts.values():
            listener = parts.listener
            try:
                listener.setServiceParent(parent)
            except CannotListen as e:
                listener.disownServiceParent()
                for bound in staged.bound:
                    bound.disownServiceParent()
                staged.bound = []
                raise ReloadError([str(e)], 500) from None
            staged.bound.append(listener)

    def _commit(
        self, plan: Plan, new: MeshConfig, staged: _Staged, parent: IServiceCollection
    ) -> list[Deferred[Any]]:
        """
        Put the new config in force: nothing here may fail.

        @return: Deferreds firing once the removed listeners are closed.
        """
        from meshproxy.runtime import addStores

        runtime = self.runtime
        oldParts = dict(runtime.parts)
        oldSections = {r.name: r for r in self.config.routers}
        oldNamers = dict(
            zip([n.prefix for n in self.config.namers], runtime.namers, strict=True)
        )
        grace = new.admin.shutdownGrace
        # Namers first: new routers bind names from them.
        for namer in staged.namers.values():
            namer.setServiceParent(parent)
        newParts: dict[str, RouterParts] = {}
        retiring: list[Deferred[Any]] = []
        for section in new.routers:
            name = section.name
            action = plan.routers[name]
            if action == ADDED:
                parts = newParts[name] = staged.parts[name]
                for service in parts.services():
                    if service is not parts.listener:
                        service.setServiceParent(parent)
                continue
            parts = newParts[name] = oldParts[plan.takeovers[name]]
            if action == UPDATED:
                rules, policy = staged.inPlace[name]
                if rules is not None:
                    parts.router.rules.setRules(*rules)
                if policy is not _UNCHANGED:
                    parts.router.policy = policy
            elif action == REBUILT:
                router, server, watch = staged.rebuilt[name]
                retiring.append(self._switch(parts, section, router, server, watch, parent))
            parts.config = section
            parts.service.grace = grace
        closing: list[Deferred[Any]] = []
        draining: list[Deferred[Any]] = []
        for name in plan.closed:
            parts = oldParts[name]
            closing.append(_maybe(parts.listener.disownServiceParent()))
            for watch in (parts.tlsWatch, parts.upstreamWatch):
                if watch is not None:
                    watch.disownServiceParent()
            draining.append(_maybe(parts.service.disownServiceParent()))
        # What the runtime (and through it the admin API and the metrics)
        # sees.
        runtime.shutdownGrace = grace
        runtime.parts.clear()
        runtime.parts.update(newParts)
        runtime.routers.clear()
        runtime.routers.update((name, parts.router) for name, parts in newParts.items())
        runtime.listeners[:] = [parts.listener for parts in newParts.values()]
        runtime.serverTLS.clear()
        runtime.serverTLS.update(
            (name, parts.serverTLS) for name, parts in newParts.items() if parts.serverTLS
        )
        runtime.upstreamTLS.clear()
        runtime.upstreamTLS.update(
            name for name, parts in newParts.items() if parts.upstreamWatch is not None
        )
        byPrefix = dict(oldNamers)
        byPrefix.update(staged.namers)
        runtime.namers[:] = [byPrefix[section.prefix] for section in new.namers]
        # The stores follow the routers by name.
        for name in list(runtime.rulesStores):
            if name not in newParts or newParts[name].router.rules is None:
                del runtime.rulesStores[name]
        for name in list(runtime.policyStores):
            if name not in newParts:
                del runtime.policyStores[name]
        for name, parts in newParts.items():
            old = oldSections.get(name)
            if old is None or old.protocol != parts.config.protocol:
                runtime.policyStores.pop(name, None)
                addStores(
                    runtime, name, stateDir=self._stateDir, configPath=self.configPath,
                    clock=self.reactor,
                )
        for parts in newParts.values():
            key = _systemdKey(parts.config.listen)
            if key is not None:
                self._adopted.add(key)
        # The namers replaced or removed stop once no router reads them.
        gone = [
            namer
            for prefix, namer in oldNamers.items()
            if plan.namers.get(prefix) in (REPLACED, REMOVED)
        ]
        if gone:
            waits = gatherResults(retiring + draining, consumeErrors=True)
            waits.addBoth(lambda _: _stopNamers(gone))
        self.config = _inForce(self.config, new)
        return closing

    def _switch(
        self,
        parts: RouterParts,
        section: RouterConfig,
        router: Router,
        server: Any,
        watch: Any,
        parent: IServiceCollection,
    ) -> Deferred[None]:
        """
        Put a new router on a kept listener: its factory and every
        connection open on it take the new router for their next request;
        the old one is stopped once what it started is done.

        @return: a Deferred firing once the old router is stopped.
        """
        from meshproxy.http.listener import ServerFactory
        from meshproxy.http.states import NEW
        from meshproxy.listeners import _WatchService
        from meshproxy.tls import FileWatcher

        old = parts.router
        # (Any: the factory's router is typed by the interface its
        # connections see, and each router fits the factory it serves.)
        factory: Any = parts.factory
        new: Any = router
        router.start()
        if isinstance(factory, ServerFactory):
            # New connections get the new server settings; open ones keep
            # theirs (their timers run on them).
            factory.router = new
            factory.settings = section.server
            factory.http2 = section.http2
            factory.connStats = router.connStats
            for conn in list(factory.connections):
                conn.router = new
                conn.trusted = new.isTrusted(conn.peerHost)
                for queued in conn.queue:
                    # A request waiting behind another on its connection has
                    # not started: it routes with the new router.
                    if getattr(queued, "state", None) is NEW:
                        queued.router = new  # type: ignore[union-attr]
        else:
            factory.router = new
        parts.service.router = router
        parts.router = router
        if _differ(old.name, router.name):
            owner = "router %s" % (router.name,)
            listener = parts.listener
            listener.owner = owner
            listener.description = "%s (%s)" % (router.name, listener.listen)
            parts.listening.logPrefix = lambda: owner  # type: ignore[method-assign]
        if server is not None:
            parts.listening.contexts = server  # type: ignore[attr-defined]
            parts.serverTLS = server
            if parts.tlsWatch is not None:
                parts.tlsWatch.disownServiceParent()
            parts.tlsWatch = watch
            watch.setServiceParent(parent)
        if parts.upstreamWatch is not None:
            parts.upstreamWatch.disownServiceParent()
            parts.upstreamWatch = None
        files = router.tlsFiles()
        if files:
            parts.upstreamWatch = _WatchService(
                FileWatcher(files, router.reloadTLS, clock=self.reactor)
            )
            parts.upstreamWatch.setServiceParent(parent)
        return self._retire(old, factory)

    def _retire(self, router: Router, factory: Any) -> Deferred[None]:
        retiring = self._retiring
        if retiring is None or retiring.parent is None:
            retiring = self._retiring = _Retiring(self.reactor)
            retiring.setServiceParent(self.parent)
        return retiring.retire(router, factory, _retireLimit(router))



def _inForce(old: MeshConfig, new: MeshConfig) -> MeshConfig:
    """
    The config in force after a reload of C{new}: C{new}, but for the keys
    that need a restart, still C{old}'s (the next reload lists them again).
    """
    admin = old.admin.model_copy(
        update={key: getattr(new.admin, key) for key in _ADMIN_APPLIED}
    )
    kept = {key: getattr(old, key) for key in type(new).model_fields if key not in _COMPARED}
    return new.model_copy(update={"admin": admin, **kept})


def _summary(
    plan: Plan, old: MeshConfig, new: MeshConfig, staged: _Staged, path: str | None
) -> dict[str, Any]:
    """
    What a reload changed, JSON-ready (the answer of C{POST /admin/reload}).
    """
    namers: dict[str, list[str]] = {ADDED: [], REPLACED: [], REMOVED: [], KEPT: []}
    for prefix, action in plan.namers.items():
        namers[action].append(prefix)
    oldRouters = {r.name: r for r in old.routers}
    newNames = [r.name for r in new.routers]
    routers: dict[str, list[str]] = {
        ADDED: [name for name in newNames if name not in oldRouters],
        REBUILT: [
            name
            for name in newNames
            if name in oldRouters and plan.routers[name] in (REBUILT, ADDED)
        ],
        UPDATED: [name for name in newNames if plan.routers[name] == UPDATED],
        REMOVED: [name for name in oldRouters if name not in newNames],
        KEPT: [name for name in newNames if plan.routers[name] == KEPT],
    }
    listeners: dict[str, list[str]] = {
        ADDED: [
            "%s (%s)" % (r.name, r.listen) for r in new.routers if plan.routers[r.name] == ADDED
        ],
        REMOVED: ["%s (%s)" % (name, oldRouters[name].listen) for name in plan.closed],
        KEPT: ["%s (%s)" % (r.name, r.listen) for r in new.routers if r.name in plan.takeovers],
    }
    return {
        "changed": plan.changed,
        "source": path,
        "namers": namers,
        "routers": routers,
        "listeners": listeners,
        "rules": dict(staged.notes["rules"]),
        "policies": dict(staged.notes["policies"]),
        "restartNeeded": list(plan.restart),
    }


def _differ(a: Any, b: Any) -> bool:
    """
    Whether two config values differ (typed C{Any}: mypy sees the fields'
    annotations, not their values).
    """
    return bool(a != b)


def _maybe(result: Any) -> Deferred[Any]:
    """
    C{result} as a Deferred.
    """
    if isinstance(result, Deferred):
        return result
    return succeed(result)


def _stopNamers(namers: list[INamer]) -> None:
    for namer in namers:
        if namer.parent is not None:
            namer.disownServiceParent()


def _describe(changes: dict[str, list[str]]) -> str:
    """
    C{{"added": ["a"], "kept": ["b"]}} as C{"added a, kept b"}; C{"none"}
    when empty.
    """
    words = ["%s %s" % (what, ", ".join(names)) for what, names in changes.items() if names]
    return "; ".join(words) or "none"
