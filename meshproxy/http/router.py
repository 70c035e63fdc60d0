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
from typing import Any, Callable, Iterator

from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from zope.interface import implementer

from meshproxy.balancing.node import Node
from meshproxy.http.bound import BoundClient, BoundClients, NamePolicies
from meshproxy.http.client import Pool
from meshproxy.http.interfaces import IRouter
from meshproxy.http.message import ProxyError, Request
from meshproxy.http.trust import TrustPolicy
from meshproxy.http.views import explainRoute, routerState
from meshproxy.resilience.accrual import accrualFromConfig
from meshproxy.resilience.backoff import Backoff
from meshproxy.resilience.budget import RetryBudget
from meshproxy.resilience.deadline import DeadlinePolicy
from meshproxy.resilience.retries import RetryPolicy
from meshproxy.routing.delegate import BoundName, DelegationError
from meshproxy.routing.identifiers import IdentificationError, makeIdentifier
from meshproxy.routing.nametree import Leaf, NameTree, RoutingFailure, evaluate
from meshproxy.routing.path import Path
from meshproxy.routing.table import InetNotAllowed, RuleTable, RulesError, checkRules
from meshproxy.transport.connector import TCPConnector

__all__ = ["HttpRouter", "InetNotAllowed", "RulesError", "checkRules"]

_log = Logger()


@implementer(IRouter)
class HttpRouter:
    """
    One HTTP router of the config.

    @ivar name: the router's name.
    @ivar rules: its L{RuleTable} (what the admin API's rules store edits).
    @ivar clients: its L{BoundClients}.
    """

    def __init__(
        self,
        config: Any,
        namers: dict[Path, Any],
        *,
        reactor: Any,
        metrics: Any,
        balancerFactory: Callable[..., Any],
        random: Callable[[], float] | None = None,
        rng: _random.Random | None = None,
        wallClock: Callable[[], float] = time.time,
        rulesAllowInet: bool = True,
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
        """
        self.config = config
        self.name = config.name
        self.reactor = self.clock = reactor
        self.metrics = metrics
        self.namers = dict(namers)
        prefixes = tuple(self.namers)
        self._rng = _random.Random() if rng is None else rng
        self.random = self._rng.random if random is None else random
        self.identifier = makeIdentifier(config.identifier)
        self.rules = RuleTable(self.name, prefixes, config.rules, allowInet=rulesAllowInet)
        self.trust = TrustPolicy(config.trust, prefixes, countError=self.countError)
        self.clientSettings = config.client
        self.forwarded = config.forwarded
        self.connStats = metrics.connections(self.name)
        self.connector = TCPConnector(reactor, config.timeouts.connect)
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
        self.bufferBytes = retries.bufferBytes
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

    # -- routing (IRouter) ------------------------------------------------

    def route(self, request: Request, trusted: bool) -> tuple[BoundClient, bytes | None]:
        """
        See L{IRouter.route}.
        """
        try:
            path = self.identifier.identify(request)
        except IdentificationError as e:
            raise ProxyError(400, "no-identity", "Cannot identify the request: %s." % (e,))
        override = None
        try:
            if request.meshHeaders:
                override = self.trust.override(request, trusted)
            if override is None:
                tree = self.rules.resolve(path)
            else:
                tree = self.rules.resolveWith(override[0], path)
        except DelegationError as e:
            raise ProxyError(502, "delegation-failed", str(e))
        return self._choose(tree, path), (None if override is None else override[1])

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
                raise ProxyError(503, "route-failed", "Route for %s failed: %s" % (path, e))
        if bound is None:
            raise ProxyError(503, "no-route", "No route for %s." % (path,))
        client = self.clients.get(bound)
        if client.addr.kind == "neg":
            raise ProxyError(
                503, "no-route", "No route for %s: %s is unknown to its namer." % (path, client.name)
            )
        return client

    def _isEmpty(self, bound: BoundName) -> bool:
        return self.clients.get(bound).isEmpty()

    # -- what the bound names are made of ----------------------------------

    def _makePool(self, endpoint: Any) -> Pool:
        settings = self.clientSettings
        return Pool(
            endpoint,
            clock=self.reactor,
            connector=self.connector,
            maxIdle=settings.maxIdlePerEndpoint,
            idleTimeout=settings.idleTimeout,
            limits=settings,
        )

    def _makeAccrual(self, balancer: Any) -> Any:
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

    def record(self, client: BoundClient, status: int, seconds: float) -> None:
        """
        See L{IRouter.record}.
        """
        stats = client.stats
        if stats is None:
            if client.addr.kind != "bound":
                return
            stats = client.stats = self.metrics.route(self.name, client.name)
        stats.record(status, seconds)

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
        self, *, name: str | None = None, host: str | None = None, path: str | None = None
    ) -> dict[str, Any]:
        """
        See L{explainRoute}.
        """
        return explainRoute(self, name=name, host=host, path=path)

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
