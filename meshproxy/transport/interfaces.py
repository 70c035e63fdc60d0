"""
The transports the routers' connections run on, as one interface; and
what makes the TLS of meshproxy's own TLS transport
(L{meshproxy.transport.tls}).
"""

from __future__ import annotations

import ssl

from twisted.internet.interfaces import IConsumer, IPushProducer, ITCPTransport
from zope.interface import Interface

__all__ = ["IStreamTransport", "ITLSClientContexts", "ITLSServerContexts"]


class IStreamTransport(ITCPTransport, IConsumer, IPushProducer):
    """
    A connected stream transport, as the routers use it: written to and
    closed (also abortively, or only its writing), the consumer of the
    other side's reading, and the producer whose reading is paused.

    Twisted's TCP connections, and TLS connections over them, are all of
    these; it names what the connections' code relies on.
    """


class ITLSServerContexts(Interface):
    """
    Makes the TLS side of accepted connections (L{meshproxy.tls.ServerTLS}).
    """

    def serverObject(incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO) -> ssl.SSLObject:
        """
        The server side of a new connection's TLS.

        @param incoming: the BIO the peer's bytes are written to.
        @param outgoing: the BIO the bytes for the peer are read from.
        """


class ITLSClientContexts(Interface):
    """
    Makes the TLS side of connections to an upstream, and checks who the
    upstream is (L{meshproxy.tls.ClientTLS}).
    """

    def clientObject(incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO) -> ssl.SSLObject:
        """
        The client side of a new connection's TLS.

        @param incoming: the BIO the peer's bytes are written to.
        @param outgoing: the BIO the bytes for the peer are read from.
        """

    def verify(tls: ssl.SSLObject) -> None:
        """
        Check the identity of the server, once its certificate chain is
        verified (at the end of the handshake).

        @raise Exception: when it is not the expected server
            (L{VerificationError<service_identity.VerificationError>}).
        """
