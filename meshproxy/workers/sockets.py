"""
The listening sockets the workers accept on.

The supervisor binds each router's listener as one process does (so that
C{cannot listen} errors, privileged ports and systemd socket activation
stay as they are). Then, for every TCP listener it bound itself, it makes
one C{SO_REUSEPORT} socket per worker slot on the same address and takes
its own socket out of the kernel's lookup (C{shutdown}: it stays bound):
the kernel hashes each new connection to one slot's socket, which spreads
keep-alive connections over the workers far more evenly than one socket
they all accept on (see C{bench/workers_spread.py}).

A slot's socket outlives its worker: while the slot has no running worker
(a restart's backoff), the supervisor accepts on it with its own routers,
so that the connections the kernel gives that slot are not left waiting.

Listeners passed by systemd, UNIX sockets, and any whose group cannot be
made (a privileged port a reload adds, after the privileges were dropped)
stay one socket shared by every worker.
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING, Any

from twisted.logger import Logger

if TYPE_CHECKING:
    from meshproxy.runtime import Runtime

__all__ = ["ListenerGroups"]

_log = Logger()


class _Group:
    """
    The C{SO_REUSEPORT} sockets of one listener, one per slot, each
    adopted by the supervisor's reactor (not reading unless its slot is
    down).
    """

    def __init__(self, listenerPort: Any, ports: list[Any]) -> None:
        self.listenerPort = listenerPort
        self.ports = ports


class ListenerGroups:
    """
    Which socket each worker slot accepts on, for each router.

    @ivar groups: the C{SO_REUSEPORT} groups by the supervisor's listening
        port they stand beside (a reload that hands a listener to a renamed
        router keeps its group).
    """

    def __init__(self, runtime: Runtime, count: int, *, reactor: Any) -> None:
        """
        @param runtime: the supervisor's runtime (its routers' listeners).
        @param count: the number of worker slots.
        @param reactor: an C{IReactorSocket}, to adopt the slots' sockets.
        """
        self.runtime = runtime
        self.count = count
        self.reactor = reactor
        self.groups: dict[Any, _Group] = {}

    def prepare(self) -> None:
        """
        Make the groups of the listeners bound now that have none: at the
        start (after the listeners' bind, while the process may still bind
        privileged ports), and after a reload (before the reactor's next
        turn, so that no connection waits on the listener's own socket).
        """
        for name, parts in self.runtime.parts.items():
            port = parts.listener.port
            if port is None or port in self.groups:
                continue
            if str(parts.config.listen).startswith("systemd:"):
                continue
            sock = getattr(port, "socket", None)
            if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
                continue
            try:
                sockets = _reusePortGroup(sock, self.count, getattr(port, "backlog", 50))
            except OSError as e:
                _log.warn(
                    "router {router}: its workers share one listening socket"
                    " (SO_REUSEPORT sockets could not be made: {error})",
                    router=name, error=e.strerror or str(e),
                )
                continue
            ports = []
            for slotSocket in sockets:
                adopted = self.reactor.adoptStreamPort(
                    slotSocket.fileno(), slotSocket.family, parts.listener.factory
                )
                slotSocket.close()
                adopted.stopReading()
                ports.append(adopted)
            self.groups[port] = _Group(port, ports)
            # The process's own socket stays bound but takes no connection
            # any more: the group's do.
            try:
                sock.shutdown(socket.SHUT_RD)
            except OSError:
                pass

    def sockets(self, workerId: int) -> list[tuple[str, socket.socket]]:
        """
        The listening socket of each router for the worker in slot
        C{workerId}.
        """
        found = []
        self._forgetGone()
        for name, parts in self.runtime.parts.items():
            group = self.groups.get(parts.listener.port)
            if group is not None:
                found.append((name, group.ports[workerId].socket))
                continue
            sock = getattr(parts.listener.port, "socket", None)
            if sock is not None:
                found.append((name, sock))
        return found

    def _forgetGone(self) -> None:
        """
        Close the groups of listeners a reload closed or replaced.
        """
        current = {id(parts.listener.port) for parts in self.runtime.parts.values()}
        for listenerPort, group in list(self.groups.items()):
            if id(listenerPort) not in current:
                del self.groups[listenerPort]
                for port in group.ports:
                    port.stopListening()

    def slotDown(self, workerId: int) -> None:
        """
        The slot has no running worker: the supervisor accepts on its
        sockets meanwhile.
        """
        for group in self.groups.values():
            group.ports[workerId].startReading()

    def slotUp(self, workerId: int) -> None:
        """
        The slot's worker runs: the supervisor stops accepting on its
        sockets.
        """
        for group in self.groups.values():
            group.ports[workerId].stopReading()

    def close(self) -> None:
        """
        Stop accepting on every slot's socket (the stop).
        """
        for group in self.groups.values():
            for port in group.ports:
                port.stopReading()


def _reusePortGroup(bound: socket.socket, count: int, backlog: int) -> list[socket.socket]:
    """
    C{count} listening sockets with C{SO_REUSEPORT} on the address of
    C{bound} (which gets the option too, so that they may share its port).

    @raise OSError: when one cannot be made; none is left open.
    """
    address = bound.getsockname()
    made: list[socket.socket] = []
    try:
        bound.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        for _ in range(count):
            sock = socket.socket(bound.family, socket.SOCK_STREAM)
            made.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if bound.family == socket.AF_INET6:
                sock.setsockopt(
                    socket.IPPROTO_IPV6,
                    socket.IPV6_V6ONLY,
                    bound.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY),
                )
            sock.bind(address)
            sock.listen(backlog)
            sock.setblocking(False)
    except OSError:
        for sock in made:
            sock.close()
        raise
    return made
