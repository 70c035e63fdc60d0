"""
The listening side of an HTTP router: the factory that makes a
L{ServerProtocol} per accepted connection, refuses connections over the
limit, and drains them at shutdown.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from twisted.internet.interfaces import IProtocolNegotiationFactory
from twisted.internet.protocol import Factory, Protocol, connectionDone
from zope.interface import implementer

from meshproxy.http.message import errorResponse
from meshproxy.http.server import ServerProtocol
from meshproxy.lifecycle import DrainingFactoryMixin
from meshproxy.transport.preamble import IPreambleListener, PreambleSettings

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred
    from twisted.internet.interfaces import IAddress, IReactorTime, ITransport
    from twisted.python.failure import Failure

    from meshproxy.config import Http2Config, ServerConfig
    from meshproxy.http.interfaces import IRouter
    from meshproxy.telemetry.metrics import ConnectionStats
    from meshproxy.transport.proxyprotocol import ProxyHeader

__all__ = ["ServerFactory"]


class _Refuse(Protocol):
    """
    Answers one canned response and closes: for connections over the limit.
    """

    transport: ITransport

    def __init__(self, answer: bytes) -> None:
        self.answer = answer

    def connectionMade(self) -> None:
        self.transport.write(self.answer)
        self.transport.loseConnection()


@implementer(IProtocolNegotiationFactory)
class ServerFactory(DrainingFactoryMixin, Factory):
    """
    Builds a L{ServerProtocol} per accepted connection of one router.

    Behind a TLS listener it offers C{h2} and C{http/1.1} by ALPN: without
    an ALPN answer, pyOpenSSL aborts the handshake of every client that
    offers protocols (curl, browsers) with an "internal error" alert.
    """

    # Its listener says it is listening, once, in its own words (and the
    # factory is started behind a preamble's, which Twisted does not quiet).
    noisy = False

    def acceptableProtocols(self) -> list[bytes]:
        """
        The protocols offered by ALPN on TLS listeners.
        """
        return [b"h2", b"http/1.1"]

    def __init__(
        self,
        router: IRouter,
        settings: ServerConfig,
        clock: IReactorTime,
        connStats: ConnectionStats | None = None,
        scheme: bytes = b"http",
        http2: Http2Config | None = None,
    ) -> None:
        self.router = router
        self.settings = settings
        self.clock = clock
        self.connStats = connStats
        self.scheme = scheme
        self.http2 = http2
        self.connections: set[ServerProtocol] = set()
        self.draining = False
        self._drained = None
        self._preamble: tuple[object, PreambleSettings | None] = (None, None)

    def preamble(self) -> PreambleSettings | None:
        """
        What the listener reads of a new connection before it starts (a
        PROXY header from a load balancer: see
        L{PreambleFactory<meshproxy.transport.preamble.PreambleFactory>}),
        as the router in force says.
        """
        router = self.router
        made, settings = self._preamble
        if made is not router:
            config = getattr(router, "config", None)
            settings = None if config is None else PreambleSettings.fromConfig(config)
            self._preamble = (router, settings)
        return settings

    # The factory gives the mixin its clock.
    def drain(self, grace: float) -> Deferred[None]:  # type: ignore[override]
        """
        Close idle connections now, the others after their current
        response, and abort whatever is left after C{grace} seconds.

        @return: a Deferred that fires when no connection is left.
        """
        return DrainingFactoryMixin.drain(self, grace, self.clock)

    def buildProtocol(self, addr: IAddress | None) -> Protocol | None:
        if self.draining:
            return None
        limit = self.settings.maxConnections
        if limit is not None and len(self.connections) >= limit:
            self.router.countError("overloaded")
            return _Refuse(
                errorResponse(503, "overloaded", "Too many connections.", close=True)
            )
        p = _TrackedServerProtocol(
            self.router, self.settings, self.clock, self.connStats, self.scheme, self.http2
        )
        p.factory = self
        return p


@implementer(IPreambleListener)
class _TrackedServerProtocol(ServerProtocol):
    """
    A L{ServerProtocol} its factory can count and close at shutdown.

    @ivar proxied: the PROXY header its load balancer sent, or L{None}:
        its client's address is the caller's for trust, the policy,
        C{X-Forwarded-For} and the access log.
    """

    factory: ServerFactory
    proxied: ProxyHeader | None = None

    def preambleRead(self, proxied: ProxyHeader | None, serverName: str | None) -> None:
        """
        See L{IPreambleListener.preambleRead}.
        """
        self.proxied = proxied

    def connectionMade(self) -> None:
        self.factory.connections.add(self)
        ServerProtocol.connectionMade(self)
        proxied = self.proxied
        if proxied is not None and proxied.source is not None:
            host = proxied.source.host
            self.peerHost = host
            self.forwardedFor = host.encode("ascii")
            self.trusted = self.router.isTrusted(host)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        ServerProtocol.connectionLost(self, reason)
        self.factory._lost(self)
