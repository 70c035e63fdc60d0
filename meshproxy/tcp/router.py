"""
The TCP router: layer 4 proxying, routed like HTTP.

Each accepted connection gets a logical name, either the router's fixed
C{destination} or, with C{identifier: {kind: sni}}, the server name of the
client's TLS ClientHello under a prefix (C{a.example} is
C{/svc/a.example}; read without terminating TLS, by the listener's
L{Preamble<meshproxy.transport.preamble.Preamble>}). The router's rules
(a dtab, replaced live through the admin API like an HTTP router's) turn
it into a bound name, whose endpoints a namer keeps up to date. The
connection then stops being read while the router picks an endpoint,
connects to it (trying other endpoints after a connect failure, after a
jittered backoff and within a retry budget), optionally sends a PROXY
header with the client's address, and splices the two connections: bytes
go both ways, each side is the other's streaming producer (so a slow
reader slows the writer down instead of filling memory), and a half-close
on one side is passed on to the other.

    client ──► Preamble ──► Downstream ──► Splice ──► route: name → rules → bound name
               (PROXY header,                 │         → balancer.pickAvoiding()
                ClientHello)                  │       ──► connector (retry another
                                              │           endpoint, budget, backoff)
               Downstream ◄── bytes, back-pressure, half-close ──► Upstream

(the connections are in L{meshproxy.tcp.splice}; upstream connections are
made by L{dial<meshproxy.transport.dial.dial>}, with the connect timeout of
C{timeouts.connect})

Per endpoint, the balancer's C{pending} counts the connections open (or
being opened) to it: L{start<meshproxy.balancing.interfaces.IBalancer.start>}
at the connection attempt, L{finish<meshproxy.balancing.interfaces.IBalancer.finish>}
when it fails or, once connected, when the spliced pair closes. The latency
a balancer measures is the time to connect: the lifetime of a connection
says more about its client than about the endpoint. Each endpoint also
counts its connections, bytes, durations and connect failures
(L{meshproxy.tcp.stats}).
"""

from __future__ import annotations

import random as _random
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from twisted.internet.protocol import Factory
from twisted.logger import Logger

from meshproxy.balancing.bound import BoundEndpoints
from meshproxy.discovery.endpoints import inetObservable
from meshproxy.lifecycle import DrainingFactoryMixin
from meshproxy.policy import Policy
from meshproxy.resilience.accrual import accrualFromConfig
from meshproxy.resilience.backoff import Backoff
from meshproxy.resilience.budget import RetryBudget
from meshproxy.routing.delegate import INET_PREFIX, BoundName, DelegationError
from meshproxy.routing.nametree import Leaf, RoutingFailure, evaluate
from meshproxy.routing.path import Path
from meshproxy.routing.table import RuleTable
from meshproxy.tcp.errors import RouteRefused
from meshproxy.tcp.splice import Downstream
from meshproxy.tcp.stats import EndpointConnections, TcpCollector
from meshproxy.transport.preamble import PreambleSettings

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred
    from twisted.internet.interfaces import IAddress

    from meshproxy.balancing.interfaces import IBalancer
    from meshproxy.balancing.node import Node
    from meshproxy.config import RouterConfig
    from meshproxy.discovery.endpoints import Observable
    from meshproxy.discovery.interfaces import INamer
    from meshproxy.resilience.accrual import FailureAccrual
    from meshproxy.telemetry.metrics import MeshMetrics

__all__ = ["MAX_DESTINATIONS", "RouteRefused", "TcpRouter", "TcpServerFactory"]

_log = Logger()

#: Bound on the bound names a router keeps: with routing by SNI, names come
#: from clients, so unknown ones (without endpoints) are dropped first.
MAX_DESTINATIONS = 1000

#: The PROXY protocol versions by their config word (0: none sent).
_SEND = {"none": 0, "v1": 1, "v2": 2}


class _Destination(BoundEndpoints):
    """
    One bound name of the router: its endpoints (see L{BoundEndpoints}),
    each carrying the counts of its connections (L{EndpointConnections}).

    @ivar proxySend: the PROXY protocol version sent first to its
        endpoints (0 for none).
    """

    def __init__(
        self, router: TcpRouter, boundName: BoundName, observable: Observable, proxySend: int
    ) -> None:
        self.proxySend = proxySend
        BoundEndpoints.__init__(self, router, boundName, observable)

    def newPayload(self, node: Node) -> EndpointConnections:
        return EndpointConnections()

    # Connections open to a removed endpoint are left to finish: no
    # closePayload.

    def connectionCounts(self, conns: EndpointConnections | None) -> dict[str, int]:
        if conns is None:
            return {"open": 0, "connecting": 0, "opened": 0, "closed": 0}
        return conns.counts()

    def isEmpty(self) -> bool:
        """
        Whether no endpoint can take a connection (for C{|} fall-through).
        """
        return not self.balancer.hasEligible()


class TcpRouter:
    """
    One TCP router of the config: how it names connections, its rules,
    its bound names (their endpoints, balancers and accrual), its retry
    policy, counters, and the admin API's views.

    @ivar name: the router's name.
    @ivar destination: the destination as configured, or L{None} (routing
        by SNI).
    @ivar rules: its L{RuleTable} (what the admin API's rules store edits).
    @ivar connStats: the router's L{ConnectionStats<meshproxy.telemetry.metrics.ConnectionStats>}.
    @ivar budget: the L{RetryBudget} of connection attempts.
    @ivar backoff: the L{Backoff} before another attempt.
    @ivar preambleSettings: what its listener reads before a connection
        starts (L{PreambleSettings}), or L{None}.
    """

    #: The listener's own identity when it terminates TLS (tap sets it).
    tlsName: str | None = None

    #: The access policy each new connection is checked against (with
    #: method C{CONNECT}), or L{None} to let every caller in. Replaced whole
    #: by assignment (the admin API's policy store does): connections
    #: already spliced are not checked again.
    policy: Policy | None

    def __init__(
        self,
        config: RouterConfig,
        namers: dict[Path, INamer],
        *,
        # IReactorTCP and IReactorTime, which no one type says.
        reactor: Any,
        metrics: MeshMetrics,
        balancerFactory: Callable[..., IBalancer],
        rng: _random.Random | None = None,
        rulesAllowInet: bool = True,
    ) -> None:
        """
        @param config: the router's L{RouterConfig<meshproxy.config.RouterConfig>}
            (C{protocol: tcp}).
        @param namers: the namers by prefix (L{Path} → L{INamer}).
        @param reactor: provides L{IReactorTCP} and L{IReactorTime}.
        @param metrics: the process's L{MeshMetrics}.
        @param balancerFactory: makes a balancer, given C{onAdd} and
            C{onRemove} keyword arguments.
        @param rng: the source of randomness of ejection and backoff jitter
            and weighted routes; a new C{random.Random()} when not given.
        @param rulesAllowInet: whether rules replaced at run time may lead
            to C{/$/inet} addresses (C{admin.rulesAllowInet}).
        @raise DtabSyntaxError: on bad rules (the config loader refuses
            them already).
        @raise RulesError: on rules naming an unknown namer (likewise).
        """
        self.config = config
        self.name = config.name
        self.reactor = reactor
        self.metrics = metrics
        self.makeBalancer = balancerFactory
        self._rng = _random.Random() if rng is None else rng
        self.random = self._rng.random
        self.namers = dict(namers)
        self.destination = config.destination
        self.connectTimeout = config.timeouts.connect
        self.connectRetries = config.connectRetries
        self.idleTimeout = config.idleTimeout
        self.maxConnections = config.maxConnections
        self.connStats = metrics.connections(self.name)
        metrics.extension("tcp", TcpCollector)
        self.policy = Policy.active(config.policy)
        self.rules = RuleTable(
            self.name, tuple(self.namers), config.rules, allowInet=rulesAllowInet
        )
        identifier = config.identifier
        self.bySNI = config.destination is None
        self._fixed = None if self.bySNI else Path.read(config.destination)  # type: ignore[arg-type]
        self._prefix = Path.read(identifier.prefix).segments
        self._default = None if identifier.default is None else Path.read(identifier.default)
        retries = config.retries
        budget = retries.budget
        self.budget = RetryBudget(budget.percent, budget.minPerSecond, budget.ttl, clock=reactor)
        self.backoff = Backoff(retries.backoffMin, retries.backoffMax, random=self._rng)
        proxy = config.proxyProtocol
        self._send = _SEND[proxy.send] if proxy is not None else 0
        self._sendByName = {
            name: _SEND[settings.proxyProtocol.send]
            for name, settings in config.boundNames
            if settings.proxyProtocol is not None
        }
        self.preambleSettings = PreambleSettings.fromConfig(config)
        self._destinations: dict[Path, _Destination] = {}

    # -- lifecycle ----------------------------------------------------------

    def start(self) -> None:
        """
        Route the fixed destination now, so that its endpoints show from
        the start.
        """
        if self._fixed is None:
            return
        try:
            self.route(None)
        except RouteRefused as e:
            _log.warn(
                "router {router}: the destination {destination} routes nowhere yet: {why}",
                router=self.name, destination=self.destination, why=e.detail,
            )

    def stop(self) -> None:
        """
        Stop following the namers. Connections still open are not touched
        (the server factory's L{drain<TcpServerFactory.drain>} ends them).
        """
        destinations, self._destinations = self._destinations, {}
        for destination in destinations.values():
            destination.close()
        self.rules.forget()

    # -- routing --------------------------------------------------------------

    def identify(self, serverName: str | None) -> Path:
        """
        The logical name of a connection.

        @param serverName: the ClientHello's server name, or L{None}.
        @raise RouteRefused: C{no-sni}, when the router routes by SNI, none
            came and the identifier has no C{default}.
        """
        fixed = self._fixed
        if fixed is not None:
            return fixed
        if serverName is not None:
            # A host name (the ClientHello reader checked it): a segment.
            return Path._unchecked(self._prefix + (serverName,))
        if self._default is not None:
            return self._default
        raise RouteRefused("no-sni", "the client sent no server name")

    def route(self, serverName: str | None) -> tuple[Path, _Destination]:
        """
        Where a connection goes: its logical name and the bound name the
        rules lead it to.

        @param serverName: the ClientHello's server name, or L{None}.
        @raise RouteRefused: when it goes nowhere.
        """
        path = self._fixed
        if path is None:
            path = self.identify(serverName)
        try:
            tree = self.rules.resolve(path)
        except DelegationError as e:
            raise RouteRefused("delegation-failed", str(e)) from None
        if type(tree) is Leaf:
            bound = tree.value
        else:
            try:
                bound = evaluate(tree, self._isEmpty, self.random)
            except RoutingFailure as e:
                raise RouteRefused("route-failed", "route for %s failed: %s" % (path, e)) from None
            if bound is None:
                raise RouteRefused("no-route", "no route for %s" % (path,))
        destination = self._destinations.get(bound.id)
        if destination is None:
            destination = self.destinationFor(bound)
        if destination.addr.kind == "neg":
            raise RouteRefused(
                "no-route", "%s is unknown to its namer" % (destination.name,)
            )
        return path, destination

    def _isEmpty(self, bound: BoundName) -> bool:
        return self.destinationFor(bound).isEmpty()

    def destinationFor(self, bound: BoundName) -> _Destination:
        """
        The L{_Destination} of a bound name, bound to its namer on first
        use.
        """
        destinations = self._destinations
        destination = destinations.get(bound.id)
        if destination is None:
            if bound.prefix == INET_PREFIX:
                observable = inetObservable(bound.service)
            else:
                observable = self.namers[bound.prefix].bind(bound.service)
            if len(destinations) >= MAX_DESTINATIONS:
                self._evictUnknown()
            name = str(bound.id)
            destination = _Destination(
                self, bound, observable, self._sendByName.get(name, self._send)
            )
            destinations[bound.id] = destination
        return destination

    def _evictUnknown(self) -> None:
        """
        Drop the bound names their namer does not know, which have no
        endpoints and so no connection.
        """
        for key, destination in list(self._destinations.items()):
            if destination.addr.kind in ("neg", "pending", "failed") and not (
                destination.balancer.nodes()
            ):
                destination.close()
                del self._destinations[key]
        # Cached routes may name the dropped ones.
        self.rules.forget()

    def destinations(self) -> list[_Destination]:
        """
        The bound names in use, sorted by name.
        """
        return sorted(self._destinations.values(), key=lambda d: d.name)

    # -- what the splices use -----------------------------------------------

    def makeAccrual(self, balancer: IBalancer) -> FailureAccrual | None:
        """
        The failure accrual for a bound name's balancer, or L{None}.
        """
        name = self.name
        metrics = self.metrics
        return accrualFromConfig(
            self.config.failureAccrual,
            balancer,
            clock=self.reactor,
            random=self._rng,
            onEvent=lambda kind, node: metrics.event(name, kind),
        )

    def tlsFiles(self) -> list[str]:
        """
        A TCP router originates no TLS: no files to watch.
        """
        return []

    def upstreamTLS(self) -> list[Any]:
        """
        A TCP router originates no TLS (see L{tlsFiles}).
        """
        return []

    def reloadTLS(self) -> None:
        """
        Nothing to reload (see L{tlsFiles}).
        """

    def countError(self, reason: str) -> None:
        """
        Count a connection meshproxy closed itself, by reason.
        """
        self.metrics.error(self.name, reason)

    def countRetry(self, reason: str) -> None:
        """
        Count a connection attempt made again (or refused by the budget:
        C{budget-exhausted}).
        """
        self.metrics.retry(self.name, reason)

    # -- admin ----------------------------------------------------------------

    def nodes(self) -> Iterator[tuple[str, Node]]:
        """
        Every (bound name, node) pair, for metrics at scrape time.
        """
        for destination in list(self._destinations.values()):
            for node in destination.balancer.nodes():
                yield destination.name, node

    def state(self) -> dict[str, Any]:
        """
        A JSON-ready view of the router for C{GET /admin/state}.
        """
        from meshproxy.tcp.views import routerState

        return routerState(self)

    def explain(
        self,
        *,
        name: str | None = None,
        host: str | None = None,
        path: str | None = None,
        caller: str | None = None,
        peer: str | None = None,
        method: str = "CONNECT",
    ) -> dict[str, Any]:
        """
        How a connection would be routed (see
        L{explainRoute<meshproxy.tcp.views.explainRoute>}): C{host} is the
        server name a client sends.
        """
        from meshproxy.tcp.views import explainRoute

        return explainRoute(
            self, name=name, host=host, path=path, caller=caller, peer=peer, method=method
        )

    def drain(self, boundName: str, address: str) -> None:
        """
        Send no new connections to one endpoint; open ones carry on.

        @raise KeyError: for an unknown bound name or address.
        """
        self._find(boundName).drain(address)

    def undrain(self, boundName: str, address: str) -> None:
        """
        Send new connections to a drained endpoint again (see
        L{BoundEndpoints.undrain}).

        @raise KeyError: for an unknown bound name or address.
        """
        self._find(boundName).undrain(address)

    def _find(self, boundName: str) -> _Destination:
        try:
            key = Path.read(boundName)
        except ValueError as e:
            raise KeyError("bad bound name %r" % (boundName,)) from e
        destination = self._destinations.get(key)
        if destination is None:
            raise KeyError("no bound name %s in router %s" % (boundName, self.name))
        return destination


class TcpServerFactory(DrainingFactoryMixin, Factory):
    """
    Accepts the client connections of one TCP router.

    @ivar router: the L{TcpRouter}.
    @ivar connections: the client connections open (L{Downstream}s).
    @ivar draining: whether new connections are refused (at shutdown).
    """

    noisy = False

    def __init__(self, router: TcpRouter) -> None:
        self.router = router
        self.connections: set[Downstream] = set()
        self.draining = False
        self._drained = None

    def buildProtocol(self, addr: IAddress | None) -> Downstream | None:
        if self.draining:
            return None
        limit = self.router.maxConnections
        if limit is not None and len(self.connections) >= limit:
            self.router.countError("overloaded")
            return None
        return Downstream(self)

    def preamble(self) -> PreambleSettings | None:
        """
        What the listener reads of a new connection before it starts (see
        L{PreambleFactory<meshproxy.transport.preamble.PreambleFactory>}):
        the router's in force.
        """
        return self.router.preambleSettings

    # The factory gives the mixin its clock.
    def drain(self, grace: float) -> Deferred[None]:  # type: ignore[override]
        """
        Refuse new connections, let the open ones end by themselves, and
        abort whatever is left (both sides) after C{grace} seconds.

        @return: a Deferred that fires when no connection is left.
        """
        return DrainingFactoryMixin.drain(self, grace, self.router.reactor)
