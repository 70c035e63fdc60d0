"""
The HTTP router: from a request head to the destination it goes to, and
the policies every request of the router passes.

The router is a composition of one object per concern:

  - the identifier (L{meshproxy.routing.identifiers}): request → logical
    name;
  - the rules (L{RuleTable}): logical name → bound names, cached;
  - trust (L{TrustPolicy}): which callers may add per-request rules;
  - the bound names in use (L{BoundClients}): endpoints, balancer, pools,
    and per-name classifier and limiter (L{NamePolicies});
  - the retry and deadline policies (L{RetryPolicy}, L{DeadlinePolicy})
    the exchanges run;
  - statistics, and the views the admin API shows (L{meshproxy.http.views}).
"""

from __future__ import annotations

import random as _random
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from zope.interface import implementer

from meshproxy.balancing.node import Node
from meshproxy.grpc import GrpcMethods
from meshproxy.http.bound import BoundClient, BoundClients, NamePolicies
from meshproxy.http.client import Pool
from meshproxy.http.interfaces import IRouter
from meshproxy.http.message import ProxyError, Request
from meshproxy.http.timeouts import TimeoutQueue
from meshproxy.http.trust import TrustPolicy
from meshproxy.http.views import explainRoute, routerState
from meshproxy.policy import Policy
from meshproxy.resilience.accrual import accrualFromConfig
from meshproxy.resilience.backoff import Backoff
from meshproxy.resilience.budget import RetryBudget
from meshproxy.resilience.deadline import DeadlinePolicy
from meshproxy.resilience.retries import RetryPolicy
from meshproxy.routing.delegate import BoundName, DelegationError
from meshproxy.routing.identifiers import HostIdentifier, IdentificationError, makeIdentifier
from meshproxy.routing.nametree import Leaf, NameTree, RoutingFailure, evaluate
from meshproxy.routing.path import Path
from meshproxy.routing.table import InetNotAllowed, RulesError, RuleTable, checkRules
from meshproxy.telemetry.observe import RequestObserver, Tracer
from meshproxy.tls import ClientContext, ClientTLS, TLSConnector, expectedIdentity
from meshproxy.transport.connector import TCPConnector

if TYPE_CHECKING:
    from meshproxy.balancing.interfaces import IBalancer
    from meshproxy.config import RouterConfig
    from meshproxy.discovery.endpoints import Endpoint
    from meshproxy.discovery.interfaces import INamer
    from meshproxy.resilience.accrual import FailureAccrual
    from meshproxy.telemetry.metrics import MeshMetrics
    from meshproxy.telemetry.spans import ISummarySink
    from meshproxy.transport.connector import IConnector

__all__ = ["HttpRouter", "InetNotAllowed", "RulesError", "checkRules"]

_log = Logger()

#: Host values whose names an HTTP router keeps (see HttpRouter.route).
_HOSTS_KEPT = 1024

#: The longest name (its text, L{Path.show}) an identifier
#: may give a request: the client chose it, and a name is kept, with what
#: it resolves to, in caches of thousands (a host name has at most 253).
MAX_NAME_LENGTH = 1024


@implementer(IRouter)
class HttpRouter:
    """
    One HTTP router of the config.

    @ivar name: the router's name.
    @ivar rules: its L{RuleTable} (what the admin API's rules store edits).
    @ivar policy: the access L{Policy} every routed request is checked
        against, or L{None} to let every caller in. Read once per request
        and replaced whole by assignment (what the admin API's policy store
        does).
    @ivar clients: its L{BoundClients}.
    """

    def __init__(
        self,
        config: RouterConfig,
        namers: dict[Path, INamer],
        *,
        # IReactorTCP and IReactorTime, which no one type says.
        reactor: Any,
        metrics: MeshMetrics,
        balancerFactory: Callable[..., IBalancer],
        random: Callable[[], float] | None = None,
        rng: _random.Random | None = None,
        wallClock: Callable[[], float] = time.time,
        rulesAllowInet: bool = True,
        tracer: Tracer | None = None,
        summaries: Sequence[ISummarySink] = (),
        logQuery: bool = False,
    ) -> None:
        """
        @param config: the router's L{RouterConfig<meshproxy.config.RouterConfig>}.
        @param namers: the namers by prefix (L{Path} → L{INamer}).
        @param reactor: provides L{IReactorTCP} and L{IReactorTime}.
        @param metrics: the process's L{MeshMetrics}.
        @param balancerFactory: makes a balancer, given C{onAdd} and
            C{onRemove} keyword arguments.
        @param random: a callable returning floats in [0, 1), for weighted
            routes; C{rng.random} when not given.
        @param rng: the source of randomness of retry backoff and ejection
            jitter (and weighted routes); a new C{random.Random()} when not
            given.
        @param wallClock: the time since the epoch, for deadlines passed
            between hops.
        @param rulesAllowInet: whether rules replaced at run time may lead
            to C{/$/inet} addresses (C{admin.rulesAllowInet}).
        @param tracer: the process's L{Tracer}; one that propagates traces
            and records no span when not given.
        @param summaries: what takes each request's summary (the access
            log, the tap).
        @param logQuery: whether summaries keep the query string.
        """
        self.config = config
        self.name = config.name
        self.reactor = self.clock = reactor
        # Bound once: every exchange hands it to the tracer, and a method
        # read as a value is a new bound method each time.
        self.countError = self.countError  # type: ignore[method-assign]
        self.metrics = metrics
        self.namers = dict(namers)
        prefixes = tuple(self.namers)
        self._rng = _random.Random() if rng is None else rng
        self.random = self._rng.random if random is None else random
        self.identifier = makeIdentifier(config.identifier)
        # Names of origin-form requests by Host value, when the identifier
        # names requests by their host alone (what it does is then a pure
        # function of the value): bounded, emptied when full.
        self._byHost: dict[bytes, Path] | None = (
            {} if type(self.identifier) is HostIdentifier else None
        )
        self.rules = RuleTable(self.name, prefixes, config.rules, allowInet=rulesAllowInet)
        self.trust = TrustPolicy(config.trust, prefixes, countError=self.countError)
        self.clientSettings = config.client
        self.forwarded = config.forwarded
        self.connStats = metrics.connections(self.name)
        self.connector = TCPConnector(reactor, config.timeouts.connect)
        # TLS to upstreams: the settings of each upstreamTls section, their
        # files read here once (then on rotation: reloadTLS), and the
        # connector of each expected identity, made on first use.
        self._upstreamTls = {
            name: settings.upstreamTls
            for name, settings in config.boundNames
            if settings.upstreamTls is not None
        }
        self._tlsSettings: dict[Any, ClientContext] = {}
        for section in (config.upstreamTls, *self._upstreamTls.values()):
            if section is not None and section not in self._tlsSettings:
                self._tlsSettings[section] = ClientContext(
                    ca=section.ca,
                    cert=section.cert,
                    key=section.key,
                    minVersion=section.minVersion,
                )
        self._tlsConnectors: dict[tuple[Any, str, str], TLSConnector] = {}
        self._upstreamProtocols = {
            name: settings.upstreamProtocol
            for name, settings in config.boundNames
            if settings.upstreamProtocol is not None
        }
        # The listener's own identity when it terminates TLS (tap sets it),
        # named in x-forwarded-client-cert.
        self.tlsName: str | None = None
        self.policy: Policy | None = Policy.active(config.policy)
        self.clients = BoundClients(
            self.namers,
            NamePolicies(config),
            makeBalancer=balancerFactory,
            makeAccrual=self._makeAccrual,
            makePool=self._makePool,
            onEvict=self.rules.forget,
        )
        # The filter stack every request passes (see Exchange).
        retries = config.retries
        budget = retries.budget
        self.retries = RetryPolicy(
            budget=RetryBudget(budget.percent, budget.minPerSecond, budget.ttl, clock=reactor),
            connectBudget=RetryBudget(
                budget.percent, budget.minPerSecond, budget.ttl, clock=reactor
            ),
            backoff=Backoff(retries.backoffMin, retries.backoffMax, random=self._rng),
            maxRetries=retries.maxRetries,
            clock=reactor,
            count=self.countRetry,
        )
        self.deadlines = DeadlinePolicy(
            config.timeouts.total,
            clock=reactor,
            wallClock=wallClock,
            honourCallers=config.trust.deadline,
        )
        self.perTryTimeout = config.timeouts.perTry
        # One reactor timer for all the requests' total (and per-try)
        # timeouts of the configured lengths.
        self.timeouts = TimeoutQueue(reactor, config.timeouts.total)
        self.tryTimeouts = (
            None if self.perTryTimeout is None else TimeoutQueue(reactor, self.perTryTimeout)
        )
        self.bufferBytes = retries.bufferBytes
        # Telemetry besides metrics: traces, and the summaries of requests.
        self.tracer = Tracer() if tracer is None else tracer
        self.observer = RequestObserver(self.name, self.tracer, summaries, query=logQuery)
        self.grpcMethods = GrpcMethods(config.grpc.methods)
        self._expiry: LoopingCall | None = None

    # -- lifecycle --------------------------------------------------------

    def start(self) -> None:
        """
        Start the periodic expiry of idle upstream connections.
        """
        interval = max(1.0, min(30.0, self.clientSettings.idleTimeout / 2.0))
        self._expiry = LoopingCall(lambda: self.clients.expireIdle(self.clock.seconds()))
        self._expiry.clock = self.reactor
        self._expiry.start(interval, now=False)

    def stop(self) -> None:
        """
        Stop timers and close upstream connections.
        """
        if self._expiry is not None and self._expiry.running:
            self._expiry.stop()
        self.clients.close()
        # The timers the queues keep while empty (closing the connections
        # ended the requests that were pending).
        self.timeouts.close()
        if self.tryTimeouts is not None:
            self.tryTimeouts.close()

    # -- routing (IRouter) ------------------------------------------------

    def route(self, request: Request, trusted: bool) -> tuple[BoundClient, bytes | None]:
        """
        See L{IRouter.route}.
        """
        byHost = self._byHost
        host = request.host
        path = None
        if byHost is not None and host is not None and request.target[:1] == b"/":
            path = byHost.get(host)
        if path is None:
            try:
                path = self.identifier.identify(request)
            except IdentificationError as e:
                raise ProxyError(
                    400, "no-identity", "Cannot identify the request: %s." % (e,)
                ) from e
            if len(path.show()) > MAX_NAME_LENGTH:
                raise ProxyError(
                    400,
                    "no-identity",
                    "Cannot identify the request: its name is longer than %d characters."
                    % (MAX_NAME_LENGTH,),
                )
            if byHost is not None and host is not None and request.target[:1] == b"/":
                if len(byHost) >= _HOSTS_KEPT:
                    byHost.clear()
                byHost[host] = path
        override = None
        try:
            if request.meshHeaders:
                override = self.trust.override(request, trusted)
            if override is None:
                tree = self.rules.resolve(path)
            else:
                tree = self.rules.resolveWith(override[0], path)
        except DelegationError as e:
            raise ProxyError(502, "delegation-failed", str(e)) from e
        client = self._choose(tree, path)
        policy = self.policy
        if policy is not None:
            self._authorize(policy, request, path, client)
        return client, (None if override is None else override[1])

    def _authorize(self, policy: Policy, request: Request, path: Path, client: BoundClient) -> None:
        """
        Apply the access policy to a routed request.

        @raise ProxyError: 403 C{forbidden} when it is denied.
        """
        identity = request.identity
        name = identity.name if identity is not None else None
        decision = policy.decide(
            name,
            request.peer,
            (path.segments, client.boundName.id.segments),
            request.method.decode("latin-1"),
        )
        if not decision.allowed:
            self.metrics.denied(self.name, decision.rule, name)
            raise ProxyError(
                403,
                "forbidden",
                "%s may not call %s (%s)."
                % (name or "an unauthenticated caller", path, decision.reason),
            )

    def isTrusted(self, host: str | None) -> bool:
        """
        See L{IRouter.isTrusted}.
        """
        return self.trust.isTrusted(host)

    def _choose(self, tree: NameTree, path: Path) -> BoundClient:
        if type(tree) is Leaf:
            bound = tree.value
        else:
            try:
                bound = evaluate(tree, self._isEmpty, self.random)
            except RoutingFailure as e:
                raise ProxyError(503, "route-failed", "Route for %s failed: %s" % (path, e)) from e
        if bound is None:
            raise ProxyError(503, "no-route", "No route for %s." % (path,))
        client = self.clients.get(bound)
        if client.addr.kind == "neg":
            raise ProxyError(
                503,
                "no-route",
                "No route for %s: %s is unknown to its namer." % (path, client.name),
            )
        return client

    def _isEmpty(self, bound: BoundName) -> bool:
        # A name its namer has not answered for yet is not empty: it is
        # chosen, and the exchange waits for the answer, then routes again
        # (where an empty name falls through its alternative).
        client = self.clients.get(bound)
        return not client.unresolved and client.isEmpty()

    # -- what the bound names are made of ----------------------------------

    def upstreamProtocol(self, bound: BoundName) -> str:
        """
        How requests go to a bound name's endpoints: C{"http/1.1"}, C{"h2"},
        or C{"auto"} (learnt by ALPN, over TLS only: a plain upstream is
        never guessed at, C{"http/1.1"}); its C{boundNames} entry, else
        C{client.upstreamProtocol}.
        """
        own = self._upstreamProtocols.get(str(bound.id))
        protocol = self.clientSettings.upstreamProtocol if own is None else own
        if protocol == "auto":
            if self._upstreamTls.get(str(bound.id), self.config.upstreamTls) is None:
                return "http/1.1"
        return protocol

    def _makePool(self, endpoint: Endpoint, bound: BoundName) -> Pool:
        settings = self.clientSettings
        protocol = self.upstreamProtocol(bound)
        if protocol != "http/1.1":
            from meshproxy.http2.client import AutoPool, H2Pool

            h2 = H2Pool(
                endpoint,
                clock=self.reactor,
                connector=self.connectorFor(bound),
                idleTimeout=settings.idleTimeout,
                limits=settings,
            )
            if protocol == "h2":
                return h2  # type: ignore[return-value]  # (the same face)
            return AutoPool(self._makeH1Pool(endpoint, bound), h2)  # type: ignore[return-value]
        return self._makeH1Pool(endpoint, bound)

    def _makeH1Pool(self, endpoint: Endpoint, bound: BoundName) -> Pool:
        settings = self.clientSettings
        return Pool(
            endpoint,
            clock=self.reactor,
            connector=self.connectorFor(bound),
            maxIdle=settings.maxIdlePerEndpoint,
            idleTimeout=settings.idleTimeout,
            limits=settings,
        )

    def connectorFor(self, bound: BoundName) -> IConnector:
        """
        How connections to a bound name's endpoints are made: plain TCP, or
        TLS verified against the identity its C{upstreamTls} names.
        """
        section = self._upstreamTls.get(str(bound.id), self.config.upstreamTls)
        if section is None:
            return self.connector
        expected = expectedIdentity(section.serverName, bound.service)
        protocol = self.upstreamProtocol(bound)
        key = (section, expected, protocol)
        connector = self._tlsConnectors.get(key)
        if connector is None:
            # No file is read here: the section's settings were loaded once.
            creator = ClientTLS(
                expected, settings=self._tlsSettings[section], upstreamProtocol=protocol
            )
            connector = self._tlsConnectors[key] = TLSConnector(self.connector, creator)
        return connector

    def upstreamTLS(self) -> list[ClientContext]:
        """
        The settings of TLS to this router's upstreams, one per
        C{upstreamTls} section (for the metrics).
        """
        return list(self._tlsSettings.values())

    def reloadTLS(self) -> None:
        """
        Read the upstream TLS files again (they changed on disk).
        """
        for settings in self._tlsSettings.values():
            settings.reload()

    def tlsFiles(self) -> list[str]:
        """
        The upstream TLS files the router reads, to watch for rotation.
        """
        files = []
        for settings in self._tlsSettings.values():
            files += settings.files()
        return sorted(set(files))

    def _makeAccrual(self, balancer: IBalancer) -> FailureAccrual | None:
        name = self.name
        metrics = self.metrics
        return accrualFromConfig(
            self.config.failureAccrual,
            balancer,
            clock=self.reactor,
            random=self._rng,
            onEvent=lambda kind, node: metrics.event(name, kind),
        )

    # -- statistics ------------------------------------------------------

    # Given back the destination its route() returned.
    def record(  # type: ignore[override]
        self,
        client: BoundClient,
        status: int,
        seconds: float,
        method: bytes = b"",
        ttfb: float | None = None,
        bytesIn: int = 0,
        bytesOut: int = 0,
        traceId: str | None = None,
    ) -> None:
        """
        See L{IRouter.record}.
        """
        stats = client.stats
        if stats is None:
            if client.addr.kind != "bound":
                return
            stats = client.stats = self.metrics.route(self.name, client.name)
        stats.record(status, seconds, method, ttfb, bytesIn, bytesOut, traceId)

    # Given back the destination its route() returned.
    def recordGrpc(  # type: ignore[override]
        self, client: BoundClient, path: bytes, code: int | None
    ) -> None:
        """
        See L{IRouter.recordGrpc}: counted under the labels of C{grpc.methods}
        (L{GrpcMethods}), for a name its namer knows (as L{record}).
        """
        stats = client.stats
        if stats is not None:
            service, method = self.grpcMethods.labels(path)
            stats.recordGrpc(service, method, code)

    def countError(self, reason: str) -> None:
        """
        See L{IRouter.countError}.
        """
        self.metrics.error(self.name, reason)

    def countRetry(self, reason: str) -> None:
        """
        Count a retry (or a retry the budget refused).
        """
        self.metrics.retry(self.name, reason)

    def nodes(self) -> Iterator[tuple[str, Node]]:
        """
        Every (bound name, node) pair, for metrics at scrape time.
        """
        for client in self.clients:
            for node in client.balancer.nodes():
                yield client.name, node

    # -- the admin API's views and operations ----------------------------

    def state(self) -> dict[str, Any]:
        """
        A JSON-ready view of the router for C{GET /admin/state}.
        """
        return routerState(self)

    def explain(
        self,
        *,
        name: str | None = None,
        host: str | None = None,
        path: str | None = None,
        caller: str | None = None,
        peer: str | None = None,
        method: str = "GET",
    ) -> dict[str, Any]:
        """
        See L{explainRoute}.
        """
        return explainRoute(
            self, name=name, host=host, path=path, caller=caller, peer=peer, method=method
        )

    def drain(self, boundName: str, address: str) -> None:
        """
        Stop new requests to one endpoint; those in flight finish.

        @raise KeyError: for an unknown bound name or address.
        """
        self._find(boundName).drain(address)

    def undrain(self, boundName: str, address: str) -> None:
        """
        Give a drained endpoint traffic again (see L{BoundEndpoints.undrain}).

        @raise KeyError: for an unknown bound name or address.
        """
        self._find(boundName).undrain(address)

    def _find(self, boundName: str) -> BoundClient:
        try:
            return self.clients.find(boundName)
        except KeyError as e:
            raise KeyError("%s in router %s" % (e.args[0], self.name)) from None
