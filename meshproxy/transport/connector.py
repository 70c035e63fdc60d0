"""
How the routers make upstream connections: through Twisted client endpoints
(L{IStreamClientEndpoint}), one per upstream address, so that TLS, UNIX
sockets or proxied upstreams plug in here without touching the HTTP
exchange or the TCP splice.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import error
from twisted.internet.abstract import isIPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.interfaces import IProtocolFactory, IReactorTCP, IStreamClientEndpoint
from twisted.python.failure import Failure
from zope.interface import Attribute, Interface, implementer

from meshproxy.discovery.endpoints import Endpoint

__all__ = ["IConnector", "TCPConnector", "describeConnectFailure", "describeHandshakeFailure"]


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
            kind = TCP6ClientEndpoint if isIPv6Address(endpoint.host) else TCP4ClientEndpoint
            client = kind(self._reactor, endpoint.host, endpoint.port, timeout=self.timeout)
            if len(self._endpoints) >= self.MAX_CACHED:
                self._endpoints.clear()
            self._endpoints[key] = client
        return client

    def connect(self, endpoint: Endpoint, factory: IProtocolFactory) -> Deferred[Any]:
        """
        See L{IConnector.connect}.
        """
        return self.endpointFor(endpoint).connect(factory)


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
