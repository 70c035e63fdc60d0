"""
The AMP commands between the supervisor and its workers, over the
socketpair the supervisor made for each worker.

The supervisor pushes whole immutable values with a version
(L{Configure}: a L{Snapshot}); the worker answers with the version it now
runs. A worker asks for the endpoints of a bound name its routers met
(L{Bind}); the supervisor's namer answers then and at each change
(L{Endpoints}). Both ends are the same program, started by the same
process: values that are not plain strings travel pickled.
"""

from __future__ import annotations

import pickle
from typing import Any

import attrs
from twisted.protocols import amp

__all__ = [
    "QuietAMP",
    "Bind",
    "Configure",
    "Drain",
    "Endpoints",
    "Pickled",
    "ReopenLogs",
    "Shutdown",
    "Snapshot",
]


class QuietAMP(amp.AMP):
    """
    AMP without its two log lines per connection (C{connection established
    (HOST:UNIXAddress('') ...)}): the supervisor and the workers say in
    their own words when a worker comes and goes.
    """

    def makeConnection(self, transport: Any) -> None:
        self._transportPeer = transport.getPeer()
        self._transportHost = transport.getHost()
        amp.BinaryBoxProtocol.makeConnection(self, transport)

    def connectionLost(self, reason: Any = None) -> None:
        amp.BinaryBoxProtocol.connectionLost(self, reason)


class Pickled(amp.Argument):
    """
    Any picklable value, split over as many AMP values as it needs (one AMP
    value holds at most 65,535 bytes): C{name} holds the number of pieces,
    C{name.0}, C{name.1}, ... the pieces.
    """

    #: The bytes of one piece.
    PIECE = amp.MAX_VALUE_LENGTH

    def toBox(
        self, name: bytes, strings: dict[bytes, bytes], objects: dict[str, Any], proto: Any
    ) -> None:
        data = pickle.dumps(objects[name.decode("ascii")], pickle.HIGHEST_PROTOCOL)
        pieces = [data[i : i + self.PIECE] for i in range(0, len(data), self.PIECE)]
        strings[name] = b"%d" % (len(pieces),)
        for i, piece in enumerate(pieces):
            strings[b"%s.%d" % (name, i)] = piece

    def fromBox(
        self, name: bytes, strings: dict[bytes, bytes], objects: dict[str, Any], proto: Any
    ) -> None:
        count = int(strings[name])
        data = b"".join(strings[b"%s.%d" % (name, i)] for i in range(count))
        objects[name.decode("ascii")] = pickle.loads(data)


@attrs.frozen
class Snapshot:
    """
    Everything a worker runs from, pushed whole by the supervisor.

    @ivar configGeneration: counts the configs the supervisor ran (1 for
        the first); a worker runs one config all its life, and a reload
        that changes it replaces the workers.
    @ivar config: the L{MeshConfig<meshproxy.config.MeshConfig>} in force
        (files named in it, TLS ones included, were checked by the
        supervisor).
    @ivar namerPrefixes: the prefixes of the supervisor's namers (a
        L{Path<meshproxy.routing.path.Path>}, or a
        L{NamerPrefix<meshproxy.routing.delegate.NamerPrefix>} for names of
        several segments).
    @ivar rules: the rules text in force of each router that has rules.
    @ivar policies: the access policy of each router (L{None}: allow all).
    @ivar drains: the endpoints drained through the admin API, as
        C{(router, bound name, address)}: a worker started after the drain
        drains them too, once its router has bound the name.
    """

    configGeneration: int
    config: Any
    namerPrefixes: tuple[Any, ...]
    rules: dict[str, str]
    policies: dict[str, Any]
    drains: frozenset[tuple[str, str, str]] = frozenset()


class Configure(amp.Command):
    """
    Supervisor to worker: run this snapshot, as version C{version}. The
    first one builds the worker's routers; later ones change rules and
    policies in place.
    """

    arguments = [(b"version", amp.Integer()), (b"snapshot", Pickled())]
    response = [(b"version", amp.Integer()), (b"pid", amp.Integer())]


class Bind(amp.Command):
    """
    Worker to supervisor: follow the endpoints of C{service} under the namer
    of C{prefix} for me (answered at once; the endpoints come as
    L{Endpoints}).
    """

    arguments = [(b"prefix", amp.Unicode()), (b"service", amp.Unicode())]
    response = []


class Endpoints(amp.Command):
    """
    Supervisor to worker: the endpoints (an
    L{Addr<meshproxy.discovery.endpoints.Addr>}) of a service it asked for
    with L{Bind}, now and at each change.
    """

    arguments = [(b"prefix", amp.Unicode()), (b"service", amp.Unicode()), (b"addr", Pickled())]
    requiresAnswer = False


class Drain(amp.Command):
    """
    Supervisor to worker: drain (or undrain) one endpoint of one bound name
    of a router; C{known} says whether the worker has that endpoint.
    """

    arguments = [
        (b"router", amp.Unicode()),
        (b"name", amp.Unicode()),
        (b"address", amp.Unicode()),
        (b"draining", amp.Boolean()),
    ]
    response = [(b"known", amp.Boolean())]


class Shutdown(amp.Command):
    """
    Supervisor to worker: stop accepting, let requests in flight finish
    within the worker's grace period, then exit.
    """

    arguments = []
    response = []


class ReopenLogs(amp.Command):
    """
    Supervisor to worker: reopen the access log file (the supervisor got
    C{SIGUSR1}, after logrotate moved the file).
    """

    arguments = []
    response = []
