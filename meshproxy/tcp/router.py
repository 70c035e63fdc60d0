"""
The TCP router: layer 4 proxying to one fixed destination.

For each accepted connection the router stops reading the client, picks an
endpoint of its destination (a bound name such as C{/#/fs/postgres}, whose
endpoints a namer keeps up to date), connects to it, trying other endpoints
after a connect failure, and then splices the two connections: bytes go
both ways, each side is the other's streaming producer (so a slow reader
slows the writer down instead of filling memory), and a half-close on one
side is passed on to the other.

    client ──► TcpServerFactory ──► _Splice ──► balancer.pick() ──► connector
                                       │         (retry another endpoint on
                                       │          a connect failure)
               _Downstream ◄── bytes, back-pressure, half-close ──► _Upstream

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

from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IHalfCloseableProtocol, IHandshakeListener, ISSLTransport
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from zope.interface import implementer

from meshproxy.balancing.bound import BoundEndpoints
from meshproxy.discovery.endpoints import inetObservable
from meshproxy.lifecycle import DrainingFactoryMixin
from meshproxy.policy import Policy
from meshproxy.resilience.accrual import accrualFromConfig
from meshproxy.routing.delegate import INET_PREFIX, delegate
from meshproxy.routing.dtab import Dtab
from meshproxy.routing.nametree import Leaf
from meshproxy.routing.path import Path
from meshproxy.transport.connector import TCPConnector
from meshproxy.transport.fastwrite import writerFor
from meshproxy.transport.gate import PauseGate

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred
    from twisted.internet.interfaces import IAddress, IDelayedCall
    from twisted.python.failure import Failure

    from meshproxy.balancing.interfaces import IBalancer
    from meshproxy.balancing.node import Node
    from meshproxy.config import RouterConfig
    from meshproxy.discovery.interfaces import INamer
    from meshproxy.resilience.accrual import FailureAccrual
    from meshproxy.telemetry.metrics import MeshMetrics
    from meshproxy.transport.interfaces import IStreamTransport

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


# -- the connections ------------------------------------------------------------


@implementer(IHalfCloseableProtocol)
class _End(Protocol):
    """
    One side of a spliced pair.

    @ivar splice: the L{_Splice}.
    @ivar gate: the L{PauseGate} of this side's transport.
    @ivar forward: writes the bytes this side receives to the other side.
    @ivar ended: whether this side's peer ended its writing.
    @ivar lost: whether this side's connection is lost.
    """

    transport: IStreamTransport

    def __init__(self, splice: _Splice | None) -> None:
        # A client connection's splice is made in its connectionMade.
        self.splice: _Splice = splice  # type: ignore[assignment]
        self.gate: PauseGate | None = None
        # Set by the splice before any byte is read.
        self.forward: Callable[[bytes], None] = None  # type: ignore[assignment]
        self.ended = False
        self.lost = False

    def dataReceived(self, data: bytes) -> None:
        splice = self.splice
        splice.lastActivity = splice.seconds()
        self.forward(data)

    def readConnectionLost(self) -> None:
        self.splice.ended(self)

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.lost = True
        self.splice.lost(self, reason)


@implementer(IHandshakeListener)
class _Downstream(_End):
    """
    The accepted client connection.
    """

    def drain(self) -> None:
        """
        At shutdown a spliced connection ends by itself (or is aborted when
        the grace period is over): nothing to do now.
        """

    def __init__(self, factory: TcpServerFactory) -> None:
        _End.__init__(self, None)
        self.factory = factory

    def connectionMade(self) -> None:
        factory = self.factory
        factory.connections.add(self)
        factory.router.connStats.opened += 1
        self.splice = _Splice(factory.router, self)
        self.splice.begin()

    def handshakeCompleted(self) -> None:
        """
        See L{IHandshakeListener}: over TLS, the client's certificate (if
        any) is verified now.
        """
        if self.splice is not None:
            self.splice.handshaken()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        factory = self.factory
        factory.router.connStats.closed += 1
        try:
            _End.connectionLost(self, reason)
        finally:
            factory._lost(self)


class _Upstream(_End):
    """
    The connection to the endpoint.
    """

    def connectionMade(self) -> None:
        self.splice.connected(self)


class _UpstreamFactory(Factory):
    """
    Builds the upstream side of one splice's connection attempt.
    """

    noisy = False

    def __init__(self, splice: _Splice) -> None:
        self.splice = splice

    def buildProtocol(self, addr: IAddress | None) -> _Upstream:
        return _Upstream(self.splice)


class _Splice:
    """
    One client connection and its upstream connection: endpoint choice,
    connection attempts, then splicing until both sides are closed.

    @ivar client: the L{_Downstream}.
    @ivar upstream: the L{_Upstream} once connected, else L{None}.
    @ivar node: the balancer node this splice holds a C{pending} place on
        (connecting or connected), else L{None}.
    @ivar lastActivity: the clock time of the last bytes received from
        either side.
    """

    __slots__ = (
        "router",
        "client",
        "upstream",
        "destination",
        "node",
        "started",
        "connectSeconds",
        "tried",
        "tries",
        "attempt",
        "early",
        "closing",
        "finished",
        "timer",
        "idleClosed",
        "lastActivity",
        "seconds",
        "awaitingHandshake",
    )

    def __init__(self, router: TcpRouter, client: _Downstream) -> None:
        self.router = router
        self.client = client
        self.upstream: _Upstream | None = None
        self.destination = router.destinationClient()
        self.node: Node | None = None
        self.started = 0.0
        self.connectSeconds = 0.0
        self.tried: set[Node] | None = None
        self.tries = 0
        self.attempt: Deferred[Any] | None = None
        self.early: list[bytes] | None = []
        self.closing = False
        self.finished = False
        self.timer: IDelayedCall | None = None
        self.idleClosed = False
        self.seconds = router.reactor.seconds
        self.lastActivity = 0.0
        self.awaitingHandshake = False

    # -- connecting -------------------------------------------------------

    def begin(self) -> None:
        """
        Stop reading the client until the upstream connection is made, and
        make the first attempt.
        """
        client = self.client
        client.gate = PauseGate(client.transport)
        # At most what was already read (such as what a TLS layer decrypted
        # with its handshake) is kept here: reading is paused.
        client.forward = self.early.append  # type: ignore[union-attr]  # a list until connected
        policy = self.router.policy
        if policy is not None and ISSLTransport.providedBy(client.transport):
            # The policy needs the caller's certificate: the handshake must
            # finish first (pausing now would stall it).
            self.awaitingHandshake = True
            return
        client.gate.pause("connect")
        if policy is not None and not self._authorized():
            return
        self._attempt()

    def handshaken(self) -> None:
        """
        The client's TLS handshake is over: decide, then connect.
        """
        if not self.awaitingHandshake or self.closing:
            return
        self.awaitingHandshake = False
        self.client.gate.pause("connect")  # type: ignore[union-attr]
        if self._authorized():
            self._attempt()

    def _authorized(self) -> bool:
        """
        Apply the router's access policy to this connection; a denied one is
        counted and closed. The policy is read now: the admin API may have
        replaced it (or removed it) while the handshake went on.
        """
        router = self.router
        policy = router.policy
        if policy is None:
            return True
        client = self.client
        identity = None
        if ISSLTransport.providedBy(client.transport):
            from meshproxy.tls import identityOf

            certificate: Any = client.transport.getPeerCertificate()
            if certificate is not None:
                identity = identityOf(certificate).name
        peer = getattr(client.transport.getPeer(), "host", None)
        decision = policy.decide(identity, peer, (router.boundName.id.segments,), "CONNECT")
        if decision.allowed:
            return True
        router.metrics.denied(router.name, decision.rule, identity)
        router.countError("forbidden")
        self._giveUp()
        return False

    def _attempt(self) -> None:
        destination = self.destination
        balancer = destination.balancer
        # Prefer an endpoint this connection has not failed on already.
        node = balancer.pickAvoiding(self.tried)
        if node is None:
            self.router.countError("upstream-connect" if self.tries else "no-endpoint")
            self._giveUp()
            return
        self.tries += 1
        self.node = node
        if destination.accrual is not None:
            destination.accrual.picked(node)
        self.started = balancer.start(node)
        node.payload.connecting += 1
        attempt = self.attempt = self.router.connector.connect(
            node.endpoint, _UpstreamFactory(self)
        )
        attempt.addErrback(self.connectFailed)

    def connectFailed(self, reason: Failure) -> None:
        """
        The attempt on C{self.node} failed (refused, timed out, or stopped
        because the client went away).
        """
        if self.closing:
            # Called off (and accounted for) when the client went away.
            return
        node: Node
        node, self.node = self.node, None  # type: ignore[assignment]  # the attempt's node
        self.attempt = None
        node.payload.connecting -= 1
        destination = self.destination
        accrual = destination.accrual
        destination.balancer.finish(node, self.started, False)
        if accrual is not None:
            accrual.failure(node)
        if self.tried is None:
            self.tried = set()
        self.tried.add(node)
        if self.tries <= self.router.connectRetries:
            self.router.countRetry("connect")
            self._attempt()
        else:
            self.router.countError("upstream-connect")
            self._giveUp()

    def _giveUp(self) -> None:
        self.closing = True
        self.early = None
        self.client.transport.loseConnection()

    def connected(self, upstream: _Upstream) -> None:
        """
        The upstream connection is made: splice it to the client.
        """
        if self.closing:
            upstream.transport.abortConnection()
            return
        self.attempt = None
        node: Node = self.node  # type: ignore[assignment]  # the attempt's node
        conns = node.payload
        conns.connecting -= 1
        conns.open += 1
        now = self.seconds()
        self.connectSeconds = now - self.started
        accrual = self.destination.accrual
        if accrual is not None:
            accrual.success(node)
        self.upstream = upstream
        client = self.client
        up = upstream.transport
        down = client.transport
        upstream.gate = PauseGate(up)
        upstream.forward = writerFor(down)
        # Each side's transport pauses the other side's reading when its
        # write buffer is full, and resumes it when the buffer drains.
        down.registerProducer(upstream.gate, True)
        up.registerProducer(client.gate, True)  # type: ignore[arg-type]  # made in begin()
        early, self.early = self.early, None
        for data in early:  # type: ignore[union-attr]  # a list until now
            up.write(data)
        client.forward = writerFor(up)
        self.lastActivity = now
        idle = self.router.idleTimeout
        if idle is not None:
            self.timer = self.router.reactor.callLater(idle, self._checkIdle)
        if client.ended:
            _halfClose(up)
        else:
            client.gate.resume("connect")  # type: ignore[union-attr]  # made in begin()

    # -- splicing -------------------------------------------------------------

    def ended(self, end: _End) -> None:
        """
        C{end}'s peer ended its writing: end ours on the other side, and
        close both once both directions are over.
        """
        end.ended = True
        if end.gate is not None:
            end.gate.ended = True
        other = self.upstream if end is self.client else self.client
        if other is None:
            # Before the upstream connection: passed on once connected.
            return
        if other.lost:
            return
        if other.ended:
            # Both directions are over. loseConnection sends what is still
            # buffered first.
            end.transport.loseConnection()
            other.transport.loseConnection()
        else:
            _halfClose(other.transport)

    def lost(self, end: _End, reason: Failure) -> None:
        """
        C{end}'s connection is lost: close the other side, cleanly after a
        clean close, at once (with a reset) otherwise.
        """
        client = self.client
        upstream = self.upstream
        other: _End | None
        if end is client:
            attempt, self.attempt = self.attempt, None
            if attempt is not None:
                self._callOff(attempt)
            other = upstream
        else:
            other = client
        if other is not None and not other.lost:
            if reason.check(ConnectionDone):
                other.transport.loseConnection()
            else:
                other.transport.abortConnection()
        self._finishIfClosed()

    def _callOff(self, attempt: Deferred[Any]) -> None:
        """
        Stop the connection attempt in progress; it says nothing of the
        endpoint.
        """
        self.closing = True
        node: Node
        node, self.node = self.node, None  # type: ignore[assignment]  # the attempt's node
        node.payload.connecting -= 1
        node.pending -= 1
        accrual = self.destination.accrual
        if accrual is not None:
            accrual.abandon(node)
        # What the cancelled attempt reports is ignored (closing is set).
        attempt.cancel()

    def _finishIfClosed(self) -> None:
        upstream = self.upstream
        if self.client.lost and self.attempt is None and (upstream is None or upstream.lost):
            self._finish()

    def _finish(self) -> None:
        if self.finished:
            return
        self.finished = True
        timer, self.timer = self.timer, None
        if timer is not None and timer.active():
            timer.cancel()
        node, self.node = self.node, None
        if node is not None:
            node.payload.open -= 1
            # The latency the balancer learns is the time it took to
            # connect, not how long the client kept the connection.
            self.destination.balancer.finish(node, self.seconds() - self.connectSeconds, True)

    def _checkIdle(self) -> None:
        self.timer = None
        if self.finished:
            return
        idle = self.router.idleTimeout
        now = self.seconds()
        quiet = now - self.lastActivity
        if quiet < idle:
            self.timer = self.router.reactor.callLater(idle - quiet, self._checkIdle)
            return
        ends = [end for end in (self.client, self.upstream) if end is not None and not end.lost]
        if not self.idleClosed:
            # Close cleanly; if what is buffered cannot be sent within
            # another idle period either, abort.
            self.idleClosed = True
            self.router.countError("idle-timeout")
            self.lastActivity = now
            self.timer = self.router.reactor.callLater(idle, self._checkIdle)
            for end in ends:
                end.transport.loseConnection()
        else:
            for end in ends:
                end.transport.abortConnection()


def _halfClose(transport: IStreamTransport) -> None:
    """
    End our writing on C{transport} once what is buffered is sent; close it
    whole if it cannot be half-closed (TLS).
    """
    # Looked up on the class: a TLS transport passes unknown attributes on
    # to the TCP connection beneath it, whose half-close would skip TLS.
    if getattr(type(transport), "loseWriteConnection", None) is not None:
        transport.loseWriteConnection()
    else:
        transport.loseConnection()


class TcpServerFactory(DrainingFactoryMixin, Factory):
    """
    Accepts the client connections of one TCP router.

    @ivar router: the L{TcpRouter}.
    @ivar connections: the client connections open (L{_Downstream}s).
    @ivar draining: whether new connections are refused (at shutdown).
    """

    noisy = False

    def __init__(self, router: TcpRouter) -> None:
        self.router = router
        self.connections: set[_Downstream] = set()
        self.draining = False
        self._drained = None

    def buildProtocol(self, addr: IAddress | None) -> _Downstream | None:
        if self.draining:
            return None
        limit = self.router.maxConnections
        if limit is not None and len(self.connections) >= limit:
            self.router.countError("overloaded")
            return None
        return _Downstream(self)

    # The factory gives the mixin its clock.
    def drain(self, grace: float) -> Deferred[None]:  # type: ignore[override]
        """
        Refuse new connections, let the open ones end by themselves, and
        abort whatever is left (both sides) after C{grace} seconds.

        @return: a Deferred that fires when no connection is left.
        """
        return DrainingFactoryMixin.drain(self, grace, self.router.reactor)
