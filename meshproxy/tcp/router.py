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

import random as _random

from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from zope.interface import implementer

from meshproxy.balancing.bound import BoundEndpoints
from meshproxy.discovery.endpoints import inetObservable
from meshproxy.lifecycle import DrainingFactoryMixin
from meshproxy.resilience.accrual import accrualFromConfig
from meshproxy.routing.delegate import INET_PREFIX, delegate
from meshproxy.routing.dtab import Dtab
from meshproxy.routing.nametree import Leaf
from meshproxy.routing.path import Path
from meshproxy.transport.connector import TCPConnector
from meshproxy.transport.fastwrite import writerFor
from meshproxy.transport.gate import PauseGate

__all__ = ["TcpRouter", "TcpServerFactory"]

_log = Logger()


class _Connections:
    """
    What a destination keeps per endpoint (in its node's C{payload}).

    @ivar connecting: connection attempts in progress.
    @ivar open: spliced pairs open.
    """

    __slots__ = ("connecting", "open")

    def __init__(self):
        self.connecting = 0
        self.open = 0


class _Destination(BoundEndpoints):
    """
    The router's destination: its endpoints (see L{BoundEndpoints}), each
    carrying the counts of its connections.
    """

    def newPayload(self, node):
        return _Connections()

    # Connections open to a removed endpoint are left to finish: no
    # closePayload.

    def connectionCounts(self, conns):
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

    def __init__(self, config, namers, *, reactor, metrics, balancerFactory, rng=None):
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
        tree = delegate(Dtab(()), Path.read(config.destination), tuple(self.namers))
        if type(tree) is not Leaf:
            raise ValueError(
                "router %s: no namer binds the destination %s" % (self.name, config.destination)
            )
        self.boundName = tree.value
        self._client = None

    # -- lifecycle ----------------------------------------------------------

    def start(self):
        """
        Bind the destination, so that its endpoints show from the start.
        """
        self.destinationClient()

    def stop(self):
        """
        Stop following the namer. Connections still open are not touched
        (the server factory's L{drain<TcpServerFactory.drain>} ends them).
        """
        client, self._client = self._client, None
        if client is not None:
            client.close()

    def destinationClient(self):
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

    def makeAccrual(self, balancer):
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

    def countError(self, reason):
        """
        Count a connection meshproxy closed itself, by reason.
        """
        self.metrics.error(self.name, reason)

    def countRetry(self, reason):
        """
        Count a connection attempt made again on another endpoint.
        """
        self.metrics.retry(self.name, reason)

    # -- admin ----------------------------------------------------------------

    def nodes(self):
        """
        Every (bound name, node) pair, for metrics at scrape time.
        """
        client = self._client
        if client is None:
            return
        for node in client.balancer.nodes():
            yield client.name, node

    def state(self):
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

    def drain(self, boundName, address):
        """
        Send no new connections to one endpoint; open ones carry on.

        @raise KeyError: for an unknown bound name or address.
        """
        self._bound(boundName).drain(address)

    def undrain(self, boundName, address):
        """
        Send new connections to a drained endpoint again (see
        L{BoundEndpoints.undrain}).

        @raise KeyError: for an unknown bound name or address.
        """
        self._bound(boundName).undrain(address)

    def _bound(self, boundName):
        try:
            key = Path.read(boundName)
        except ValueError:
            raise KeyError("bad bound name %r" % (boundName,))
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

    def __init__(self, splice):
        self.splice = splice
        self.gate = None
        self.forward = None
        self.ended = False
        self.lost = False

    def dataReceived(self, data):
        splice = self.splice
        splice.lastActivity = splice.seconds()
        self.forward(data)

    def readConnectionLost(self):
        self.splice.ended(self)

    def writeConnectionLost(self):
        pass

    def connectionLost(self, reason):
        self.lost = True
        self.splice.lost(self, reason)


class _Downstream(_End):
    """
    The accepted client connection.
    """

    def drain(self):
        """
        At shutdown a spliced connection ends by itself (or is aborted when
        the grace period is over): nothing to do now.
        """

    def __init__(self, factory):
        _End.__init__(self, None)
        self.factory = factory

    def connectionMade(self):
        factory = self.factory
        factory.connections.add(self)
        factory.router.connStats.opened += 1
        self.splice = _Splice(factory.router, self)
        self.splice.begin()

    def connectionLost(self, reason):
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

    def connectionMade(self):
        self.splice.connected(self)


class _UpstreamFactory(Factory):
    """
    Builds the upstream side of one splice's connection attempt.
    """

    noisy = False

    def __init__(self, splice):
        self.splice = splice

    def buildProtocol(self, addr):
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
    )

    def __init__(self, router, client):
        self.router = router
        self.client = client
        self.upstream = None
        self.destination = router.destinationClient()
        self.node = None
        self.started = 0.0
        self.connectSeconds = 0.0
        self.tried = None
        self.tries = 0
        self.attempt = None
        self.early = []
        self.closing = False
        self.finished = False
        self.timer = None
        self.idleClosed = False
        self.seconds = router.reactor.seconds
        self.lastActivity = 0.0

    # -- connecting -------------------------------------------------------

    def begin(self):
        """
        Stop reading the client until the upstream connection is made, and
        make the first attempt.
        """
        client = self.client
        client.gate = PauseGate(client.transport)
        client.gate.pause("connect")
        # Reading is paused, so at most what was already read (such as what
        # a TLS layer decrypted with its handshake) is kept here.
        client.forward = self.early.append
        self._attempt()

    def _attempt(self):
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

    def connectFailed(self, reason):
        """
        The attempt on C{self.node} failed (refused, timed out, or stopped
        because the client went away).
        """
        if self.closing:
            # Called off (and accounted for) when the client went away.
            return
        node, self.node = self.node, None
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

    def _giveUp(self):
        self.closing = True
        self.early = None
        self.client.transport.loseConnection()

    def connected(self, upstream):
        """
        The upstream connection is made: splice it to the client.
        """
        if self.closing:
            upstream.transport.abortConnection()
            return
        self.attempt = None
        node = self.node
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
        up.registerProducer(client.gate, True)
        early, self.early = self.early, None
        for data in early:
            up.write(data)
        client.forward = writerFor(up)
        self.lastActivity = now
        idle = self.router.idleTimeout
        if idle is not None:
            self.timer = self.router.reactor.callLater(idle, self._checkIdle)
        if client.ended:
            _halfClose(up)
        else:
            client.gate.resume("connect")

    # -- splicing -------------------------------------------------------------

    def ended(self, end):
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

    def lost(self, end, reason):
        """
        C{end}'s connection is lost: close the other side, cleanly after a
        clean close, at once (with a reset) otherwise.
        """
        client = self.client
        upstream = self.upstream
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

    def _callOff(self, attempt):
        """
        Stop the connection attempt in progress; it says nothing of the
        endpoint.
        """
        self.closing = True
        node, self.node = self.node, None
        node.payload.connecting -= 1
        node.pending -= 1
        accrual = self.destination.accrual
        if accrual is not None:
            accrual.abandon(node)
        # What the cancelled attempt reports is ignored (closing is set).
        attempt.cancel()

    def _finishIfClosed(self):
        upstream = self.upstream
        if self.client.lost and self.attempt is None and (upstream is None or upstream.lost):
            self._finish()

    def _finish(self):
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

    def _checkIdle(self):
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


def _halfClose(transport):
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

    def __init__(self, router):
        self.router = router
        self.connections = set()
        self.draining = False
        self._drained = None

    def buildProtocol(self, addr):
        if self.draining:
            return None
        limit = self.router.maxConnections
        if limit is not None and len(self.connections) >= limit:
            self.router.countError("overloaded")
            return None
        return _Downstream(self)

    def drain(self, grace):
        """
        Refuse new connections, let the open ones end by themselves, and
        abort whatever is left (both sides) after C{grace} seconds.

        @return: a Deferred that fires when no connection is left.
        """
        return DrainingFactoryMixin.drain(self, grace, self.router.reactor)
