"""
The transports the routers' connections run on, as one interface.
"""

from __future__ import annotations

from twisted.internet.interfaces import IConsumer, IPushProducer, ITCPTransport

__all__ = ["IStreamTransport"]


class IStreamTransport(ITCPTransport, IConsumer, IPushProducer):
    """
    A connected stream transport, as the routers use it: written to and
    closed (also abortively, or only its writing), the consumer of the
    other side's reading, and the producer whose reading is paused.

    Twisted's TCP connections, and TLS connections over them, are all of
    these; it names what the connections' code relies on.
    """
