"""
How the routers make upstream connections: through Twisted client endpoints
(L{IStreamClientEndpoint}), one per upstream address, so that TLS, UNIX
sockets or proxied upstreams plug in here without touching the HTTP
exchange or the TCP splice.

An IP address on a POSIX reactor is reached by L{DialEndpoint}: one
non-blocking C{connect} (L{meshproxy.transport.dial}), and the protocol
becomes the transport's own once connected, where Twisted's endpoints keep
a C{_WrappingProtocol} between the two (a Python call more for every read
of the connection's life). A host name, or another reactor (the tests'
memory reactors), goes through Twisted's TCP endpoints as before.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import error
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.interfaces import (
    IAddress,
    IConnector as ITwistedConnector,
    IProtocol,
    IProtocolFactory,
    IReactorTCP,
    IStreamClientEndpoint,
    ITransport,
)
from twisted.internet.posixbase import PosixReactorBase
from twisted.internet.protocol import ClientFactory
from twisted.python.failure import Failure
from zope.interface import Attribute, Interface, implementer

from meshproxy.discovery.endpoints import Endpoint
from meshproxy.transport.dial import dial

__all__ = [
    "DialEndpoint",
    "IConnector",
    "TCPConnector",
    "describeConnectFailure",
    "describeHandshakeFailure",
]


class IConnector(Interface):
    """
    Makes connections to upstream endpoints.
    """

    timeout = Attribute("Seconds a connection attempt may take (for error messages), or None.")

    def endpointFor(endpoint: Endpoint) -> IStreamClientEndpoint:
        """
        The client endpoint that connects to C{endpoint}.
        """

    def connect(endpoint: Endpoint, factory: IProtocolFactory) -> Deferred[Any]:
        """
        Connect to C{endpoint}.

        @param factory: builds the connection's protocol.
        @return: a Deferred firing with the protocol C{factory} built once
            connected (after its C{connectionMade}), or failing (refused, timed out, or
            L{error.ConnectingCancelledError} when cancelled).
        """


@implementer(IConnector)
class TCPConnector:
    """
    Plain TCP connections, with a connect timeout.

    @ivar timeout: seconds a connection attempt may take.
    """

    #: Client endpoints kept per address: endpoints change with discovery,
    #: so the cache is bounded and simply cleared when full.
    MAX_CACHED = 4096

    def __init__(self, reactor: IReactorTCP, timeout: float) -> None:
        """
        @param reactor: provides L{IReactorTCP}.
        @param timeout: the connect timeout, in seconds.
        """
        self._reactor = reactor
        self.timeout = timeout
        self._endpoints: dict[tuple[str, int], IStreamClientEndpoint] = {}

    def endpointFor(self, endpoint: Endpoint) -> IStreamClientEndpoint:
        """
        See L{IConnector.endpointFor}.
        """
        key = (endpoint.host, endpoint.port)
        client = self._endpoints.get(key)
        if client is None:
            host = endpoint.host
            if isinstance(self._reactor, PosixReactorBase) and (
                isIPAddress(host) or isIPv6Address(host)
            ):
                client = DialEndpoint(self._reactor, host, endpoint.port, self.timeout)
            else:
                kind = TCP6ClientEndpoint if isIPv6Address(host) else TCP4ClientEndpoint
                client = kind(self._reactor, host, endpoint.port, timeout=self.timeout)
            if len(self._endpoints) >= self.MAX_CACHED:
                self._endpoints.clear()
            self._endpoints[key] = client
        return client

    def connect(self, endpoint: Endpoint, factory: IProtocolFactory) -> Deferred[Any]:
        """
        See L{IConnector.connect}.
        """
        return self.endpointFor(endpoint).connect(factory)


@implementer(IStreamClientEndpoint)
class DialEndpoint:
    """
    Connections to one IP address made by L{dial}: the protocol the factory
    builds is the transport's own from the start of its connection (no
    wrapper reads for it).

    As with Twisted's TCP endpoints, the L{Deferred} of L{connect} fires
    with the protocol after its C{connectionMade} (on loopback, usually
    before L{connect} returns), or fails (refused, L{error.TimeoutError}
    after the timeout, L{error.ConnectingCancelledError} when cancelled,
    the factory's exception, or L{error.NoProtocol}); a failure to connect
    is reported on a later turn of the reactor, never from within
    L{connect}.
    """

    def __init__(self, reactor: PosixReactorBase, host: str, port: int, timeout: float) -> None:
        """
        @param reactor: a POSIX reactor.
        @param host: an IPv4 or IPv6 address.
        @param port: the port.
        @param timeout: the seconds a connection may take.
        """
        self._reactor = reactor
        self._host = host
        self._port = port
        self._timeout = timeout

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        """
        See L{IStreamClientEndpoint.connect}.
        """
        connecting = _Connecting(protocolFactory)
        d = connecting.deferred = Deferred(connecting.cancel)
        connecting.attempt = dial(self._reactor, self._host, self._port, connecting, self._timeout)
        return d


class _Connecting(ClientFactory):
    """
    What L{dial} reports one connection attempt of a L{DialEndpoint} to:
    the protocol built by the endpoint's factory, handed the transport by a
    L{_Handover}, or the failure.
    """

    noisy = False

    def __init__(self, factory: IProtocolFactory) -> None:
        self.wrappedFactory = factory
        self.deferred: Deferred[IProtocol] | None = None
        self.attempt: ITwistedConnector | None = None

    def buildProtocol(self, addr: IAddress) -> IProtocol | None:  # type: ignore[override]
        d: Deferred[IProtocol] = self.deferred  # type: ignore[assignment]  # set by connect
        try:
            protocol = self.wrappedFactory.buildProtocol(addr)
            if protocol is None:
                raise error.NoProtocol()
        except BaseException:
            # (as Twisted's endpoints: the connection is then dropped)
            d.errback()
            return None
        return _Handover(protocol, d)  # type: ignore[return-value]  # steps aside at once

    def clientConnectionFailed(self, connector: ITwistedConnector, reason: Failure) -> None:
        d = self.deferred
        if d is not None and not d.called:
            d.errback(reason)

    def clientConnectionLost(self, connector: ITwistedConnector, reason: Failure) -> None:
        # The protocol, once connected, hears of the end itself.
        pass

    def cancel(self, d: Deferred[IProtocol]) -> None:
        """
        The L{Deferred}'s canceller: the attempt is called off.
        """
        attempt: ITwistedConnector = self.attempt  # type: ignore[assignment]  # set by connect
        d.errback(error.ConnectingCancelledError(attempt.getDestination()))
        attempt.stopConnecting()


class _Handover:
    """
    The protocol a L{DialedClient<meshproxy.transport.dial.DialedClient>}
    is given until it connects it: makes the endpoint's protocol the
    transport's own, connects that one, and fires the L{Deferred}. Nothing
    else of it is ever called (the transport reads nothing before
    C{makeConnection}).
    """

    __slots__ = ("_protocol", "_deferred")

    def __init__(self, protocol: IProtocol, deferred: Deferred[IProtocol]) -> None:
        self._protocol = protocol
        self._deferred = deferred

    def makeConnection(self, transport: ITransport) -> None:
        protocol = self._protocol
        # A tcp.Client reads self.protocol for every event.
        transport.protocol = protocol  # type: ignore[attr-defined]
        transport.logstr = "%s,client" % (protocol.__class__.__name__,)  # type: ignore[attr-defined]
        protocol.makeConnection(transport)
        self._deferred.callback(protocol)


def describeConnectFailure(failure: Failure, timeout: float | None = None) -> str:
    """
    Why a connection could not be made, in the proxy's words (for error
    answers and logs), without Twisted's exception text.

    @param failure: the failure of a connection attempt.
    @param timeout: the connect timeout, to name it.
    @return: e.g. C{"refused the connection"}.
    """
    if failure.check(error.ConnectionRefusedError):
        return "refused the connection"
    if failure.check(error.TimeoutError):
        if timeout is not None:
            return "did not accept the connection within %gs" % (timeout,)
        return "did not accept the connection in time"
    if failure.check(error.DNSLookupError):
        return "could not be resolved"
    if failure.check(error.NoRouteError):
        return "is unreachable (no route)"
    if failure.check(error.ConnectingCancelledError):
        return "connection attempt cancelled"
    message = failure.getErrorMessage()
    return "could not be connected to (%s)" % (message,)


def describeHandshakeFailure(failure: Failure) -> str:
    """
    Why a TLS handshake with an upstream failed, in the proxy's words.

    @param failure: why the connection was lost during the handshake.
    """
    from service_identity import VerificationError

    if failure.check(VerificationError):
        return "presented a certificate for another identity"
    text = failure.getErrorMessage()
    if "certificate verify failed" in text:
        return "presented a certificate not signed by the trusted CA"
    if failure.check(error.ConnectionDone, error.ConnectionLost):
        return "closed the connection during the TLS handshake"
    return "failed the TLS handshake (%s)" % (text,)
