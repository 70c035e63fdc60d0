"""
Writing to a plain TCP transport without a round trip through the reactor.

Twisted's L{FileDescriptor.write} always buffers and registers the socket for
writing (an C{epoll_ctl} call), then sends on the next reactor iteration and
unregisters it again (another C{epoll_ctl}). For a proxy that writes one
small message per event, that is most of the cost of a write. When nothing
is buffered, L{writerFor} sends at once with C{socket.send}, and hands only
what the kernel did not take to the transport, which then buffers it, applies
back-pressure to its producer, and reports errors as usual.

Transports that are not plain TCP connections (TLS, UNIX sockets in tests,
L{StringTransport}) get their ordinary C{write}.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet import tcp
from twisted.internet.interfaces import ITransport

from meshproxy.transport.dial import DialedClient
from meshproxy.transport.stream import SpliceServer

__all__ = ["PLAIN_TCP", "ownDefaults", "writerFor"]

#: The transports that are plain TCP connections, whose buffers the fast
#: paths read (their subclasses, UNIX and TLS ones, are not).
PLAIN_TCP: tuple[type[tcp.Connection], ...] = (tcp.Server, tcp.Client, DialedClient, SpliceServer)


def ownDefaults(transport: ITransport) -> None:
    """
    Give a plain TCP transport that will carry many messages (an HTTP
    keep-alive connection), as its own attributes, the class attributes its
    fast writes (L{writerFor}) and its reads (C{tcp.Connection.doRead},
    L{readConnection<meshproxy.transport.stream.readConnection>}) read on
    every event: C{offset}, C{dataBuffer}, C{disconnecting},
    C{_writeDisconnected} and C{bufferSize}, with the same values.

    Twisted keeps them as class attributes until a write or a close sets
    them; read through the instance, a class attribute is looked up in full
    on every read in CPython 3.11 (which never specialises it), an
    instance attribute is not. The stores cost more than they save on a
    connection that carries one message each way (a short connection of a
    TCP router): only long-lived ones are given them.

    @param transport: a connected transport; any other than a plain TCP
        one is left as it is.
    """
    if type(transport) not in PLAIN_TCP or getattr(transport, "TLS", False):
        return
    conn: tcp.Connection = transport  # type: ignore[assignment]
    conn.offset = conn.offset
    conn.dataBuffer = conn.dataBuffer
    conn.disconnecting = conn.disconnecting
    conn._writeDisconnected = conn._writeDisconnected
    conn.bufferSize = conn.bufferSize


def writerFor(transport: ITransport) -> Callable[[bytes], None]:
    """
    A function writing bytes to C{transport}, as fast as it safely can.

    @param transport: a connected transport.
    @return: a one-argument callable with the meaning of
        C{transport.write}.
    """
    if type(transport) not in PLAIN_TCP or getattr(transport, "TLS", False):
        return transport.write
    # A TCP connection, as just checked: its buffers are read directly.
    conn: tcp.Connection = transport  # type: ignore[assignment]
    send = conn.socket.send
    slowWrite = conn.write

    def write(data: bytes) -> None:
        if (
            conn._tempDataBuffer
            or conn.offset < len(conn.dataBuffer)
            or not conn.connected
            or conn.disconnecting
            or conn._writeDisconnected
        ):
            slowWrite(data)
            return
        try:
            sent = send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            # Let the transport meet the error itself and report it.
            slowWrite(data)
            return
        if sent < len(data):
            slowWrite(data[sent:])

    return write
