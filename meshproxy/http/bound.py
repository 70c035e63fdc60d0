"""
What the HTTP router keeps per bound name: its endpoints with a connection
pool each, and the policies of that name (classifier and limiter, its own
under C{boundNames} or the router's).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from zope.interface import implementer

from meshproxy.balancing.bound import BoundEndpoints
from meshproxy.balancing.node import Node
from meshproxy.discovery.endpoints import inetObservable
from meshproxy.http.client import Pool
from meshproxy.http.interfaces import IDestination
from meshproxy.http.message import findHeader
from meshproxy.resilience.classifiers import Classifier
from meshproxy.resilience.limits import Limiter
from meshproxy.routing.delegate import INET_PREFIX, BoundName
from meshproxy.routing.path import Path

if TYPE_CHECKING:
    from meshproxy.balancing.interfaces import IBalancer
    from meshproxy.config import ClassifierConfig, RouterConfig
    from meshproxy.discovery.endpoints import Endpoint, Observable
    from meshproxy.discovery.interfaces import INamer
    from meshproxy.http.message import Headers, Request
    from meshproxy.resilience.accrual import FailureAccrual
    from meshproxy.telemetry.metrics import RouteStats

__all__ = ["BoundClient", "BoundClients", "NamePolicies", "MAX_BOUND_NAMES"]

#: Bound on the bound names a router keeps clients for. Names come from
#: requests, so unknown ones (negative, without endpoints) are dropped first
#: when the bound is reached.
MAX_BOUND_NAMES = 1000


class NamePolicies:
    """
    The classifier and limiter of each bound name: its own settings under
    C{boundNames}, else the router's.
    """

    def __init__(self, config: RouterConfig) -> None:
        """
        @param config: the router's L{RouterConfig<meshproxy.config.RouterConfig>}.
        """
        self._classifier = makeClassifier(config.classifier)
        self._limits = config.limits
        self._perName = dict(config.boundNames)

    def policyFor(self, name: str) -> tuple[Classifier, Limiter | None]:
        """
        The classifier and a new limiter (or L{None}) for bound name C{name}.
        """
        classifier = self._classifier
        limits = self._limits
        own = self._perName.get(name)
        if own is not None:
            if own.classifier is not None:
                classifier = makeClassifier(own.classifier)
            if own.limits is not None:
                limits = own.limits
        limiter = None
        if limits.maxConcurrent is not None or limits.maxPending is not None:
            limiter = Limiter(limits.maxConcurrent, limits.maxPending)
        return classifier, limiter


def makeClassifier(config: ClassifierConfig) -> Classifier:
    """
    The classifier a C{classifier} config section describes.
    """
    return Classifier(
        config.kind,
        retryableStatusCodes=config.retryableStatusCodes,
        idempotencyKey=config.idempotencyKey,
        retryableCodes=config.retryableCodes if config.kind == "grpc" else None,
    )


@implementer(IDestination)
class BoundClient(BoundEndpoints):
    """
    One bound name of an HTTP router: its endpoints (see
    L{BoundEndpoints}), each with a connection pool, its classifier,
    limiter and statistics.

    @ivar stats: the name's L{RouteStats<meshproxy.telemetry.metrics.RouteStats>},
        made on the first request answered while the namer knows the name
        (unknown names, from arbitrary Host headers, make no series).
    """

    def __init__(self, owner: BoundClients, boundName: BoundName, observable: Observable) -> None:
        """
        @param owner: the L{BoundClients} (gives the pool settings, the
            balancer and the accrual).
        """
        self._owner = owner
        self.stats: RouteStats | None = None
        self.classifier, self.limiter = owner.policies.policyFor(str(boundName.id))
        BoundEndpoints.__init__(self, owner, boundName, observable)

    def newPayload(self, node: Node) -> Pool:
        return self._owner.makePool(node.endpoint, self.boundName)

    def closePayload(self, pool: Pool) -> None:
        pool.close()

    def connectionCounts(self, pool: Pool | None) -> dict[str, int]:
        if pool is None:
            return {"open": 0, "idle": 0}
        return {"open": len(pool.all), "idle": len(pool.idle)}

    def classify(self, request: Request, status: int, headers: Headers) -> tuple[int, bool]:
        """
        See L{IDestination.classify}.
        """
        retryableHeader = False
        if status >= 400:
            value = findHeader(headers, b"mesh-retryable")
            retryableHeader = value is not None and value.strip().lower() == b"true"
        classification = self.classifier.classify(
            request.method,
            status,
            retryableHeader,
            status >= 400 and request.header(b"idempotency-key") is not None,
        )
        return classification, retryableHeader

    def isIdempotent(self, request: Request) -> bool:
        """
        See L{IDestination.isIdempotent}.
        """
        return self.classifier.isIdempotent(
            request.method, request.header(b"idempotency-key") is not None
        )

    def isEmpty(self) -> bool:
        """
        Whether no endpoint can take a request (for C{|} fall-through).
        """
        return not self.balancer.hasEligible()

    # IDestination: the try accounting of the balancer and the accrual.

    def beginTry(self, node: Node) -> float:
        accrual = self.accrual
        if accrual is not None:
            accrual.picked(node)
        return self.balancer.start(node)

    def endTry(self, node: Node, started: float | None, success: bool) -> None:
        self.balancer.finish(node, started, success)
        accrual = self.accrual
        if accrual is not None:
            if success:
                accrual.success(node)
            else:
                accrual.failure(node)

    def abandonTry(self, node: Node) -> None:
        # No verdict: neither a success nor a failure of the endpoint.
        node.pending -= 1
        if self.accrual is not None:
            self.accrual.abandon(node)

    def state(self) -> dict[str, Any]:
        """
        A JSON-ready view for C{GET /admin/state}.
        """
        limiter = self.limiter
        state = BoundEndpoints.state(self)
        state["limits"] = (
            None
            if limiter is None
            else {
                "active": limiter.active,
                "pending": limiter.pending,
                "rejected": limiter.rejected,
            }
        )
        state["requests"] = self.stats.requests if self.stats is not None else 0
        return state


class BoundClients:
    """
    The bound names an HTTP router has used, each a L{BoundClient}.
    """

    def __init__(
        self,
        namers: dict[Path, INamer],
        policies: NamePolicies,
        *,
        makeBalancer: Callable[..., IBalancer],
        makeAccrual: Callable[[IBalancer], FailureAccrual | None],
        makePool: Callable[[Endpoint, BoundName], Pool],
        onEvict: Callable[[], None],
    ) -> None:
        """
        @param namers: the namers by prefix.
        @param policies: the per-name policies.
        @param makeBalancer: makes a balancer (C{onAdd=}, C{onRemove=}).
        @param makeAccrual: makes the failure accrual of a balancer.
        @param makePool: makes the connection pool of an endpoint of a bound
            name.
        @param onEvict: called after unknown names were dropped (cached
            routes may name them).
        """
        self._namers = namers
        self.policies = policies
        self.makeBalancer = makeBalancer
        self.makeAccrual = makeAccrual
        self.makePool = makePool
        self._onEvict = onEvict
        self._clients: dict[Path, BoundClient] = {}

    def __iter__(self) -> Iterator[BoundClient]:
        return iter(list(self._clients.values()))

    def get(self, bound: BoundName) -> BoundClient:
        """
        The client of C{bound}, bound to its namer on first use.
        """
        client = self._clients.get(bound.id)
        if client is None:
            if bound.prefix == INET_PREFIX:
                observable = inetObservable(bound.service)
            else:
                observable = self._namers[bound.prefix].bind(bound.service)
            if len(self._clients) >= MAX_BOUND_NAMES:
                self._evictUnknown()
            client = self._clients[bound.id] = BoundClient(self, bound, observable)
        return client

    def find(self, name: str) -> BoundClient:
        """
        The client of the bound name C{name} (text), for the admin API.

        @raise KeyError: for a bad or unknown name.
        """
        try:
            key = Path.read(name)
        except ValueError:
            raise KeyError("bad bound name %r" % (name,)) from None
        client = self._clients.get(key)
        if client is None:
            raise KeyError("no bound name %s" % (name,))
        return client

    def _evictUnknown(self) -> None:
        """
        Drop the clients of names their namer does not know, which have no
        endpoints and so nothing in flight (nor requests waiting for the
        namer's first answer).
        """
        for key, client in list(self._clients.items()):
            if (
                client.addr.kind in ("neg", "pending", "failed")
                and not client.balancer.nodes()
                and not client.waiters
            ):
                client.close()
                del self._clients[key]
        self._onEvict()

    def expireIdle(self, now: float) -> None:
        """
        Close idle upstream connections unused for their idle timeout.
        """
        for client in self._clients.values():
            for node in client.balancer.nodes():
                if node.payload is not None:
                    node.payload.expire(now)

    def close(self) -> None:
        """
        Close every client and its connections.
        """
        for client in self._clients.values():
            client.close()
        self._clients.clear()
