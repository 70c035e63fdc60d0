"""
The TCP router: layer 4 proxying to one fixed destination.

For each accepted connection the router stops reading the client, picks an
endpoint of its destination (a bound name such as C{/#/fs/postgres}, whose
endpoints a namer keeps up to date), connects to it, trying other endpoints
after a connect failure, and then splices the two connections: bytes go
both ways, each side is the other's streaming producer (so a slow reader
slows the writer down instead of filling memory), and a half-close on one
side is passed on to the other.

    client ──► TcpServerFactory ──► Splice ──► balancer.pick() ──► connector
                                       │         (retry another endpoint on
                                       │          a connect failure)
               Downstream ◄── bytes, back-pressure, half-close ──► Upstream

(the connections are in L{meshproxy.tcp.splice})

Per endpoint, the balancer's C{pending} counts the connections open (or
being opened) to it: L{start<meshproxy.balancing.interfaces.IBalancer.start>}
at the connection attempt, L{finish<meshproxy.balancing.interfaces.IBalancer.finish>}
when it fails or, once connected, when the spliced pair closes. The latency
a balancer measures is the time to connect: the lifetime of a connection
says more about its client than about the endpoint.
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
from meshproxy.routing.delegate import INET_PREFIX, delegate
from meshproxy.routing.dtab import Dtab
from meshproxy.routing.nametree import Leaf
from meshproxy.routing.path import Path
from meshproxy.tcp.splice import Downstream
from meshproxy.transport.connector import TCPConnector

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred
    from twisted.internet.interfaces import IAddress

    from meshproxy.balancing.interfaces import IBalancer
    from meshproxy.balancing.node import Node
    from meshproxy.config import RouterConfig
    from meshproxy.discovery.interfaces import INamer
    from meshproxy.resilience.accrual import FailureAccrual
    from meshproxy.telemetry.metrics import MeshMetrics

__all__ = ["TcpRouter", "TcpServerFactory"]

_log = Logger()


class _Connections:
    """
    What a destination keeps per endpoint (in its node's C{payload}).

    @ivar connecting: connection attempts in progress.
    @ivar open: spliced pairs open.
    """

    __slots__ = ("connecting", "open")

    def __init__(self) -> None:
        self.connecting = 0
        self.open = 0


class _Destination(BoundEndpoints):
    """
    The router's destination: its endpoints (see L{BoundEndpoints}), each
    carrying the counts of its connections.
    """

    def newPayload(self, node: Node) -> _Connections:
        return _Connections()

    # Connections open to a removed endpoint are left to finish: no
    # closePayload.

    def connectionCounts(self, conns: _Connections | None) -> dict[str, int]:
        if conns is None:
            return {"open": 0, "connecting": 0}
        return {"open": conns.open, "connecting": conns.connecting}


class TcpRouter:
    """
    One TCP router of the config: its destination, balancer and accrual,
    counters, and the connection attempts of its spliced pairs.

    @ivar name: the router's name.
    @ivar destination: the destination as configured.
    @ivar boundName: the L{BoundName<meshproxy.routing.delegate.BoundName>}
        the destination binds to.
    @ivar connStats: the router's L{ConnectionStats<meshproxy.telemetry.metrics.ConnectionStats>}.
    """

    #: A TCP router has no rules (the admin API answers 404 for them).
    rules = None

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
    ) -> None:
        """
        @param config: the router's L{RouterConfig<meshproxy.config.RouterConfig>}
            (C{protocol: tcp}).
        @param namers: the namers by prefix (L{Path} → L{INamer}).
        @param reactor: provides L{IReactorTCP} and L{IReactorTime}.
        @param metrics: the process's L{MeshMetrics}.
        @param balancerFactory: makes a balancer, given C{onAdd} and
            C{onRemove} keyword arguments.
        @param rng: the source of randomness of ejection jitter; a new
            C{random.Random()} when not given.
        @raise ValueError: if no namer owns the destination (the config
            loader refuses such a config already).
        """
        self.config = config
        self.name = config.name
        self.reactor = reactor
        self.metrics = metrics
        self.makeBalancer = balancerFactory
        self._rng = _random.Random() if rng is None else rng
        self.namers = dict(namers)
        self.destination = config.destination
        self.connectTimeout = config.timeouts.connect
        self.connectRetries = config.connectRetries
        self.idleTimeout = config.idleTimeout
        self.maxConnections = config.maxConnections
        self.connStats = metrics.connections(self.name)
        self.connector = TCPConnector(reactor, self.connectTimeout)
        self.policy = Policy.active(config.policy)
        # (a TCP router's destination is required by the config)
        tree = delegate(Dtab(()), Path.read(config.destination), tuple(self.namers))  # type: ignore[arg-type]
        if type(tree) is not Leaf:
            raise ValueError(
                "router %s: no namer binds the destination %s" % (self.name, config.destination)
            )
        self.boundName = tree.value
        self._client: _Destination | None = None

    # -- lifecycle ----------------------------------------------------------

    def start(self) -> None:
        """
        Bind the destination, so that its endpoints show from the start.
        """
        self.destinationClient()

    def stop(self) -> None:
        """
        Stop following the namer. Connections still open are not touched
        (the server factory's L{drain<TcpServerFactory.drain>} ends them).
        """
        client, self._client = self._client, None
        if client is not None:
            client.close()

    def destinationClient(self) -> _Destination:
        """
        The destination's L{_Destination}, bound on first use.
        """
        client = self._client
        if client is None:
            bound = self.boundName
            if bound.prefix == INET_PREFIX:
                observable = inetObservable(bound.service)
            else:
                observable = self.namers[bound.prefix].bind(bound.service)
            client = self._client = _Destination(self, bound, observable)
        return client

    # -- what the splices use -----------------------------------------------

    def makeAccrual(self, balancer: IBalancer) -> FailureAccrual | None:
        """
        The failure accrual for the destination's balancer, or L{None}.
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
        Count a connection attempt made again on another endpoint.
        """
        self.metrics.retry(self.name, reason)

    # -- admin ----------------------------------------------------------------

    def nodes(self) -> Iterator[tuple[str, Node]]:
        """
        Every (bound name, node) pair, for metrics at scrape time.
        """
        client = self._client
        if client is None:
            return
        for node in client.balancer.nodes():
            yield client.name, node

    def state(self) -> dict[str, Any]:
        """
        A JSON-ready view of the router for C{GET /admin/state}.
        """
        client = self._client
        return {
            "protocol": "tcp",
            "listen": self.config.listen,
            "destination": self.destination,
            "connections": {
                "opened": self.connStats.opened,
                "closed": self.connStats.closed,
            },
            "boundNames": {} if client is None else {client.name: client.state()},
        }

    def drain(self, boundName: str, address: str) -> None:
        """
        Send no new connections to one endpoint; open ones carry on.

        @raise KeyError: for an unknown bound name or address.
        """
        self._bound(boundName).drain(address)

    def undrain(self, boundName: str, address: str) -> None:
        """
        Send new connections to a drained endpoint again (see
        L{BoundEndpoints.undrain}).

        @raise KeyError: for an unknown bound name or address.
        """
        self._bound(boundName).undrain(address)

    def _bound(self, boundName: str) -> _Destination:
        try:
            key = Path.read(boundName)
        except ValueError as e:
            raise KeyError("bad bound name %r" % (boundName,)) from e
        client = self._client
        if client is None or key != client.boundName.id:
            raise KeyError("no bound name %s in router %s" % (boundName, self.name))
        return client


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

    # The factory gives the mixin its clock.
    def drain(self, grace: float) -> Deferred[None]:  # type: ignore[override]
        """
        Refuse new connections, let the open ones end by themselves, and
        abort whatever is left (both sides) after C{grace} seconds.

        @return: a Deferred that fires when no connection is left.
        """
        return DrainingFactoryMixin.drain(self, grace, self.router.reactor)
