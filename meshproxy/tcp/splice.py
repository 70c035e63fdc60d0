"""
The connections of the TCP router: each accepted client connection
(L{Downstream}) and its upstream connection (L{Upstream}), joined by a
L{Splice} that routes the connection, applies the access policy, chooses
the endpoint, connects (trying other endpoints after a connect failure,
after a backoff and within the router's retry budget), sends a PROXY
header when the bound name wants one, and then splices bytes both ways
with back-pressure and half-close until both sides are closed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IHalfCloseableProtocol, IHandshakeListener, ISSLTransport
from twisted.internet.main import CONNECTION_LOST
from twisted.internet.protocol import ClientFactory, Protocol, connectionDone
from twisted.python.failure import Failure
from zope.interface import implementer

from meshproxy.tcp.errors import RouteRefused
from meshproxy.tcp.stats import connectFailureReason
from meshproxy.transport.dial import dial
from meshproxy.transport.fastwrite import PLAIN_TCP, writerFor
from meshproxy.transport.gate import PauseGate
from meshproxy.transport.preamble import IPreambleListener
from meshproxy.transport.proxyprotocol import formatHeader
from meshproxy.transport.tlsfailure import isTLSFailure

if TYPE_CHECKING:
    from twisted.internet.interfaces import IAddress, IConnector, IDelayedCall
    from twisted.internet.tcp import Connection

    from meshproxy.balancing.node import Node
    from meshproxy.routing.path import Path
    from meshproxy.tcp.router import TcpRouter, TcpServerFactory, _Destination
    from meshproxy.transport.interfaces import IStreamTransport
    from meshproxy.transport.proxyprotocol import ProxyHeader

__all__ = ["EARLY_BYTES", "Downstream", "Splice", "Upstream"]

#: What a client may send before its upstream connection is made: held,
#: then sent first; past it, the client is not read until connected.
EARLY_BYTES = 65536

#: The most a spliced TCP connection reads at once, and buffers before it
#: pauses the other side: four times Twisted's default, so that a large
#: transfer takes a quarter of the reads, sends and pauses.
SPLICE_BUFFER = 262144


class _CleanClose(Failure):
    """
    The reason a connection the splice closes itself is lost: a clean
    close, whose L{check} asks C{issubclass} where L{Failure.check} names
    every class asked of and looks the name up among its type's (twice per
    connection, in Twisted's C{connectionLost}).
    """

    def check(self, *errorTypes: Any) -> Any:
        """
        See L{Failure.check}.
        """
        kind = self.type
        for error in errorTypes:
            if isinstance(error, type) and issubclass(error, Exception):
                if issubclass(kind, error):  # type: ignore[arg-type]
                    return error
            elif Failure.check(self, error):
                return error
        return None


_CLEAN_CLOSE = _CleanClose(ConnectionDone())
_CLEAN_CLOSE.cleanFailure()


@implementer(IHalfCloseableProtocol)
class End(Protocol):
    """
    One side of a spliced pair.

    @ivar splice: the L{Splice}.
    @ivar gate: the L{PauseGate} of this side's transport.
    @ivar forward: writes the bytes this side receives to the other side.
    @ivar ended: whether this side's peer ended its writing.
    @ivar lost: whether this side's connection is lost.
    @ivar received: the bytes received on this side.
    """

    transport: IStreamTransport

    #: None: no adapter of its own. Twisted adapts a connection's protocol
    #: to L{IHalfCloseableProtocol} at every end of a direction, and an
    #: interface's adaptation first looks the object's C{__conform__} up:
    #: without the attribute, an AttributeError is made (and its message
    #: formatted) each time, most of the adaptation's cost.
    __conform__ = None

    def __init__(self, splice: Splice | None) -> None:
        # A client connection's splice is made in its connectionMade.
        self.splice: Splice = splice  # type: ignore[assignment]
        self.gate: PauseGate | None = None
        # Set by the splice before any byte is read.
        self.forward: Callable[[bytes], None] = None  # type: ignore[assignment]
        self.ended = False
        self.lost = False
        self.received = 0

    def dataReceived(self, data: bytes) -> None:
        splice = self.splice
        if splice.watchIdle:
            splice.lastActivity = splice.seconds()
        self.received += len(data)
        self.forward(data)

    def readConnectionLost(self) -> None:
        self.splice.ended(self)

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.lost = True
        self.splice.lost(self, reason)


@implementer(IHandshakeListener, IPreambleListener)
class Downstream(End):
    """
    The accepted client connection.

    @ivar proxied: the PROXY header its load balancer sent, or L{None}.
    @ivar serverName: the server name of its TLS ClientHello, or L{None}
        (not read, or none sent).
    """

    def drain(self) -> None:
        """
        At shutdown a spliced connection ends by itself (or is aborted when
        the grace period is over): nothing to do now.
        """

    def __init__(self, factory: TcpServerFactory) -> None:
        # (End.__init__, inline: one per connection)
        self.splice = None  # type: ignore[assignment]  # made in connectionMade
        self.gate = None
        self.forward = None  # type: ignore[assignment]
        self.ended = False
        self.lost = False
        self.received = 0
        self.factory = factory
        self.proxied: ProxyHeader | None = None
        self.serverName: str | None = None

    def preambleRead(self, proxied: ProxyHeader | None, serverName: str | None) -> None:
        """
        See L{IPreambleListener.preambleRead}.
        """
        self.proxied = proxied
        self.serverName = serverName

    def peerAddress(self) -> Any:
        """
        The client's address: the PROXY header's, or the connection's.
        """
        proxied = self.proxied
        if proxied is not None and proxied.source is not None:
            return proxied.source
        return self.transport.getPeer()

    def hostAddress(self) -> Any:
        """
        The address the client connected to: the PROXY header's, or the
        connection's.
        """
        proxied = self.proxied
        if proxied is not None and proxied.destination is not None:
            return proxied.destination
        return self.transport.getHost()

    def connectionMade(self) -> None:
        factory = self.factory
        factory.connections.add(self)
        factory.router.connStats.opened += 1
        self.splice = Splice(factory.router, self)
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
        # (isinstance, not Failure.check, which names every class of the
        # exception's hierarchy each time: this runs for every connection;
        # not at all for the splice's own clean close)
        if reason is not _CLEAN_CLOSE and isTLSFailure(reason.value):
            factory.router.countError("client-tls-failed")
        try:
            # (End.connectionLost, inline)
            self.lost = True
            self.splice.lost(self, reason)
        finally:
            factory._lost(self)


class Upstream(End):
    """
    The connection to the endpoint.
    """

    def makeConnection(self, transport: Any) -> None:
        """
        See L{Protocol.makeConnection}, with L{connectionMade} inline (one
        call fewer per connection).
        """
        self.connected = 1
        self.transport = transport
        self.splice.connected(self)

    def connectionMade(self) -> None:
        self.splice.connected(self)

    def dataReceived(self, data: bytes) -> None:
        # (End.dataReceived, inline)
        splice = self.splice
        if splice.watchIdle:
            splice.lastActivity = splice.seconds()
        self.received += len(data)
        self.forward(data)
        if self.received == len(data):
            # The first bytes of the answer: a short connection's upstream
            # (an HTTP response with "Connection: close") has often sent
            # its end with them, read now rather than on another turn of
            # the reactor. Only once per connection, so that a long stream
            # pays one empty read at most; not when the client's writing
            # paused this side.
            gate = self.gate
            if gate is None or not gate.paused:
                _readOnce(self, len(data))


class UpstreamFactory(ClientFactory):
    """
    Builds the upstream side of one splice's connection attempt, and tells
    the splice when it fails.

    The attempt is L{dial<meshproxy.transport.dial.dial>}'s (the reactor's
    own TCP connection, made with one C{connect}): no client endpoint, so
    that no wrapping protocol stands in the spliced bytes' path and no
    Deferred is made per connection.
    """

    noisy = False

    def __init__(self, splice: Splice) -> None:
        self.splice = splice

    def buildProtocol(self, addr: IAddress | None) -> Upstream:
        return Upstream(self.splice)

    def clientConnectionFailed(self, connector: IConnector, reason: Failure) -> None:
        self.splice.connectFailed(reason)


class Splice:
    """
    One client connection and its upstream connection: routing, endpoint
    choice, connection attempts, then splicing until both sides are closed.

    @ivar client: the L{Downstream}.
    @ivar upstream: the L{Upstream} once connected, else L{None}.
    @ivar name: the connection's logical name once routed, else L{None}.
    @ivar destination: the bound name's L{_Destination<meshproxy.tcp.router._Destination>}
        once routed, else L{None}.
    @ivar node: the balancer node this splice holds a C{pending} place on
        (connecting or connected), else L{None}.
    @ivar lastActivity: the clock time of the last bytes received from
        either side (kept only when the router has an idle timeout).
    @ivar watchIdle: whether the router has an idle timeout.
    """

    __slots__ = (
        "router",
        "client",
        "upstream",
        "name",
        "destination",
        "node",
        "accepted",
        "started",
        "connectSeconds",
        "tried",
        "tries",
        "attempt",
        "early",
        "earlyBytes",
        "closing",
        "finished",
        "timer",
        "retryTimer",
        "idleClosed",
        "lastActivity",
        "watchIdle",
        "dialing",
        "seconds",
        "awaitingHandshake",
    )

    def __init__(self, router: TcpRouter, client: Downstream) -> None:
        self.router = router
        self.client = client
        self.upstream: Upstream | None = None
        self.name: Path | None = None
        self.destination: _Destination | None = None
        self.node: Node | None = None
        self.seconds = router.reactor.seconds
        self.accepted = self.seconds()
        self.started = 0.0
        self.connectSeconds = 0.0
        self.tried: set[Node] | None = None
        self.tries = 0
        self.attempt: IConnector | None = None
        self.early: list[bytes] | None = []
        self.earlyBytes = 0
        self.closing = False
        self.finished = False
        self.timer: IDelayedCall | None = None
        self.retryTimer: IDelayedCall | None = None
        self.idleClosed = False
        self.lastActivity = 0.0
        self.watchIdle = router.idleTimeout is not None
        # Whether an attempt is within dial (a connection made there was
        # made at the attempt's start time).
        self.dialing = False
        self.awaitingHandshake = False

    # -- connecting -------------------------------------------------------

    def begin(self) -> None:
        """
        Route the connection and make the first attempt. The client is read
        on meanwhile: what it sends is held (up to L{EARLY_BYTES}; then its
        reading pauses until the upstream connection is made), so that a
        connection costs no pause and resume of its reading, and a client
        that goes away while its upstream is being connected is seen to.
        """
        client = self.client
        client.gate = PauseGate(client.transport)
        client.forward = self._hold
        policy = self.router.policy
        if policy is not None and ISSLTransport.providedBy(client.transport):
            # The policy needs the caller's certificate: the handshake must
            # finish first.
            self.awaitingHandshake = True
            return
        self._start(self.accepted)

    def _hold(self, data: bytes) -> None:
        """
        Keep what the client sent before its upstream connection is made.
        """
        early = self.early
        if early is None:
            # Closing: nothing will be sent.
            return
        early.append(data)
        self.earlyBytes += len(data)
        if self.earlyBytes > EARLY_BYTES:
            self.client.gate.pause("connect")  # type: ignore[union-attr]  # made in begin()

    def handshaken(self) -> None:
        """
        The client's TLS handshake is over: decide, then connect.
        """
        if not self.awaitingHandshake or self.closing:
            return
        self.awaitingHandshake = False
        self._start(None)

    def _start(self, now: float | None) -> None:
        """
        Route the connection, apply the access policy, and make the first
        attempt.

        @param now: the clock's time if just read (at accept), else L{None}.
        """
        router = self.router
        try:
            self.name, self.destination = router.route(self.client.serverName)
        except RouteRefused as e:
            router.countError(e.reason)
            self._giveUp()
            return
        if router.policy is not None and not self._authorized():
            return
        # One connection earns its share of retries (as a request does).
        router.budget.deposit(now)
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
        peer = getattr(client.peerAddress(), "host", None)
        names = (
            self.name.segments,  # type: ignore[union-attr]  # routed by now
            self.destination.boundName.id.segments,  # type: ignore[union-attr]
        )
        decision = policy.decide(identity, peer, names, "CONNECT")
        if decision.allowed:
            return True
        router.metrics.denied(router.name, decision.rule, identity)
        router.countError("forbidden")
        self._giveUp()
        return False

    def _attempt(self) -> None:
        self.retryTimer = None
        if self.closing:
            return
        destination: _Destination = self.destination  # type: ignore[assignment]  # routed
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
        endpoint = node.endpoint
        router = self.router
        self.dialing = True
        try:
            attempt = dial(
                router.reactor, endpoint.host, endpoint.port, UpstreamFactory(self),
                router.connectTimeout,
            )
        finally:
            self.dialing = False
        if self.upstream is None:
            # Not connected within dial (on loopback it mostly is): a
            # failure is always reported later.
            self.attempt = attempt

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
        node.payload.failed(connectFailureReason(reason))
        destination: _Destination = self.destination  # type: ignore[assignment]  # routed
        accrual = destination.accrual
        destination.balancer.finish(node, self.started, False)
        if accrual is not None:
            accrual.failure(node)
        if self.tried is None:
            self.tried = set()
        self.tried.add(node)
        router = self.router
        if self.tries > router.connectRetries:
            router.countError("upstream-connect")
            self._giveUp()
            return
        if not router.budget.tryWithdraw():
            router.countRetry("budget-exhausted")
            router.countError("upstream-connect")
            self._giveUp()
            return
        router.countRetry("connect")
        delay = router.backoff.delay(self.tries)
        if delay > 0.0:
            self.retryTimer = router.reactor.callLater(delay, self._attempt)
        else:
            self._attempt()

    def _giveUp(self) -> None:
        self.closing = True
        self.early = None
        self.client.transport.loseConnection()

    def connected(self, upstream: Upstream) -> None:
        """
        The upstream connection is made: splice it to the client.
        """
        if self.closing:
            upstream.transport.abortConnection()
            return
        self.attempt = None
        node: Node = self.node  # type: ignore[assignment]  # the attempt's node
        node.payload.spliced(self)
        # Made within dial (loopback), it took no time worth a clock
        # reading.
        now = self.started if self.dialing else self.seconds()
        self.connectSeconds = now - self.started
        destination: _Destination = self.destination  # type: ignore[assignment]  # routed
        accrual = destination.accrual
        if accrual is not None:
            accrual.success(node)
        self.upstream = upstream
        client = self.client
        up = upstream.transport
        down = client.transport
        upstream.gate = upGate = PauseGate(up)
        downGate: PauseGate = client.gate  # type: ignore[assignment]  # made in begin()
        # Each side's transport pauses the other side's reading when its
        # write buffer is full, and resumes it when the buffer drains. (For
        # a plain TCP connection, its registerProducer inline.)
        _pausedBy(up, downGate)
        _pausedBy(down, upGate)
        upstream.forward = writerFor(down)
        client.forward = forward = writerFor(up)
        early: list[bytes] = self.early  # type: ignore[assignment]  # a list until now
        self.early = None
        version = destination.proxySend
        if version:
            early.insert(0, formatHeader(version, client.peerAddress(), client.hostAddress()))
        if early:
            # Sent at once, in one piece, where the kernel takes it.
            forward(early[0] if len(early) == 1 else b"".join(early))
        self.lastActivity = now
        idle = self.router.idleTimeout
        if idle is not None:
            self.timer = self.router.reactor.callLater(idle, self._checkIdle)
        if client.ended:
            _halfClose(up)
        else:
            gate: PauseGate = client.gate  # type: ignore[assignment]  # made in begin()
            paused = gate.paused
            if paused:
                gate.resume("connect")
                paused = gate.paused
            if self.dialing and not client.received and not paused:
                # Connected as the client was accepted (on loopback): a
                # client that speaks first has mostly spoken by now, and its
                # bytes go on at once rather than after a turn of the
                # reactor (one recv that finds nothing otherwise).
                _readOnce(client, 0)

    # -- splicing -------------------------------------------------------------

    def ended(self, end: End) -> None:
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
            # Both directions are over. A close sends what is still
            # buffered first (the other side's too, unless the first close
            # closed it: a clean loss closes the other side).
            _close(end.transport, True)
            if not other.lost:
                _close(other.transport, True)
        else:
            _halfClose(other.transport)

    def lost(self, end: End, reason: Failure) -> None:
        """
        C{end}'s connection is lost: close the other side, cleanly after a
        clean close, at once (with a reset) otherwise.
        """
        client = self.client
        upstream = self.upstream
        other: End | None
        if end is client:
            attempt, self.attempt = self.attempt, None
            if attempt is not None:
                self._callOff(attempt)
            retry, self.retryTimer = self.retryTimer, None
            if retry is not None and retry.active():
                # Waiting to try again: nothing more to try for.
                self.closing = True
                retry.cancel()
            other = upstream
        else:
            other = client
        if other is not None and not other.lost:
            if isinstance(reason.value, ConnectionDone):
                _close(other.transport, other.ended)
            else:
                other.transport.abortConnection()
        if not self.finished:
            self._finishIfClosed()

    def _callOff(self, attempt: IConnector) -> None:
        """
        Stop the connection attempt in progress; it says nothing of the
        endpoint.
        """
        self.closing = True
        node: Node
        node, self.node = self.node, None  # type: ignore[assignment]  # the attempt's node
        node.payload.connecting -= 1
        node.pending -= 1
        accrual = self.destination.accrual  # type: ignore[union-attr]  # routed
        if accrual is not None:
            accrual.abandon(node)
        # What the stopped attempt reports is ignored (closing is set).
        attempt.stopConnecting()

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
            upstream = self.upstream
            now = self.seconds()
            node.payload.ended(
                self,
                now - self.accepted,
                self.client.received,
                0 if upstream is None else upstream.received,
            )
            # The latency the balancer learns is the time it took to
            # connect, not how long the client kept the connection.
            self.destination.balancer.finish(  # type: ignore[union-attr]  # routed
                node, now - self.connectSeconds, True
            )
        # Both connections are lost: nothing calls on the splice any more.
        # The ends let go of it, so that the pair is freed when the last
        # reference goes rather than by the garbage collector.
        self.client.splice = None  # type: ignore[assignment]
        if self.upstream is not None:
            self.upstream.splice = None  # type: ignore[assignment]

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
    kind = type(transport)
    if kind in PLAIN_TCP:
        # A plain TCP connection with nothing buffered ends its writing now,
        # as Twisted's would once its buffer is sent (the same steps as the
        # end of its doWrite), without a turn of the reactor to learn that
        # the socket is writable: two epoll changes, an event and an empty
        # send fewer per connection.
        conn: Connection = transport  # type: ignore[assignment]
        if (
            conn.connected
            and not conn.TLS
            and not conn.disconnecting
            and not conn._writeDisconnected
            and not conn._tempDataBuffer
            and conn.offset >= len(conn.dataBuffer)
        ):
            conn._writeDisconnecting = True
            conn._writeDisconnected = True
            if type(conn.protocol) in (Downstream, Upstream):
                # Twisted's _closeWriteConnection: the shutdown, then the
                # protocol's writeConnectionLost, which an end's ignores.
                try:
                    conn.socket.shutdown(1)
                except OSError:
                    pass
            else:
                conn._closeWriteConnection()
            return
    # Looked up on the class: a TLS transport passes unknown attributes on
    # to the TCP connection beneath it, whose half-close would skip TLS.
    if getattr(kind, "loseWriteConnection", None) is not None:
        transport.loseWriteConnection()
    else:
        transport.loseConnection()


def _readOnce(end: End, got: int) -> None:
    """
    After a read of C{got} bytes, read C{end}'s transport once more at once,
    as the reactor would on its next turn (see L{Upstream.dataReceived}):
    the bytes go to C{end}, and an end or an error is reported as the
    reactor reports it (a clean end: the socket is no longer read and
    C{end} hears of the half-close; an error: the connection is lost).
    Only a plain TCP connection with nothing to write whose protocol is
    C{end}, after a read that did not fill its buffer (a full one is read
    again on the next turn anyway).
    """
    transport = end.transport
    if type(transport) not in PLAIN_TCP:
        return
    conn: Connection = transport  # type: ignore[assignment]
    if (
        got >= conn.bufferSize
        or not conn.connected
        or conn.disconnecting
        or conn._tempDataBuffer
        or conn.offset < len(conn.dataBuffer)
        or conn.protocol is not end
    ):
        return
    try:
        data = conn.socket.recv(conn.bufferSize)
    except BlockingIOError:
        return
    except OSError:
        conn.reactor._disconnectSelectable(conn, CONNECTION_LOST, True)  # type: ignore[attr-defined]
        return
    if data:
        end.dataReceived(data)
    else:
        # What the reactor does with a clean end of a half-closeable
        # connection (Connection.readConnectionLost), without its
        # Failure, lookups and adaptation.
        conn.reactor.removeReader(conn)
        end.readConnectionLost()


def _close(transport: IStreamTransport, ended: bool = False) -> None:
    """
    Close C{transport} once what is buffered is sent (its
    C{loseConnection}); a plain TCP connection with nothing buffered is
    closed now, as Twisted's would be on the next turn of the reactor once
    it found nothing to send (the same steps as C{doWrite} then takes):
    two epoll changes and an event fewer per connection.

    @param ended: whether its peer ended its writing (its end was read):
        nothing is left unread, and the C{close} alone ends the
        connection as a C{shutdown(2)} first would (one system call fewer).
    """
    if type(transport) in PLAIN_TCP:
        conn: Connection = transport  # type: ignore[assignment]
        producer = conn.producer
        if (
            conn.connected
            and not conn.disconnecting
            and not conn.TLS
            and not conn._tempDataBuffer
            and conn.offset >= len(conn.dataBuffer)
            and (producer is None or (conn.streamingProducer and not conn.producerPaused))
        ):
            conn.disconnecting = True
            if ended or conn._writeDisconnected:
                # Our writing ended already (a half-close), and the close
                # sends nothing more: a shutdown(2) first would do nothing
                # on the wire (once the peer ended too, it fails, an
                # exception made and dropped). Or the peer's end was read:
                # nothing is left unread, and the close sends our end as
                # the shutdown would.
                conn._shouldShutdown = False
            # The producer registered on it is the other side's gate: the
            # pair is ending (this side closes after the other's loss, or
            # both directions are over), and it has nothing left to resume
            # (connectionLost would stop it: two calls).
            conn.producer = None
            # (connectionLost stops the reading and writing itself)
            conn.connectionLost(_CLEAN_CLOSE)
            return
    transport.loseConnection()


def _pausedBy(transport: Any, gate: Any) -> None:
    """
    Register C{gate} as the streaming producer of C{transport}: a plain TCP
    connection's C{registerProducer} inline (its read buffer made
    L{SPLICE_BUFFER} too), any other transport's own.
    """
    if type(transport) in PLAIN_TCP:
        conn: Connection = transport
        conn.bufferSize = SPLICE_BUFFER
        if conn.producer is None and not conn.disconnected:
            conn.producer = gate
            conn.streamingProducer = True
            return
    transport.registerProducer(gate, True)
