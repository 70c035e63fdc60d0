"""
The interface between the router and the namers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from twisted.application.service import IService
from twisted.internet.defer import Deferred, succeed
from zope.interface import Attribute

if TYPE_CHECKING:
    from meshproxy.discovery.endpoints import Observable

__all__ = ["INamer", "FirstLoad"]


class INamer(IService):
    """
    A namer owns every bound name under its prefix and turns the service part
    of such a name into a live, changing set of endpoints.

    Namers are services: they start and stop with the process (a namer that
    watches something, like a directory or etcd, does so between
    C{startService} and C{stopService}).

    A namer says when it has finished its first load (L{loaded},
    L{whenLoaded}): the process is ready (C{GET /ready} answers 200) once
    every namer has, or at most 10 seconds after the start. The first load
    is what the namer does at start, before any request: a file namer
    scans its directory once, a static namer has nothing to load, an etcd
    or DNS namer waits for its first answer. Names only looked up on a
    request are never waited for.
    """

    loaded = Attribute(
        """
        C{True} once the namer has finished its first load (whatever it
        found: a missing directory, an empty set or a negative answer are
        answers), C{False} before. Never goes back to C{False}.
        """
    )

    def whenLoaded() -> Deferred:
        """
        Wait for the first load.

        @return: a L{Deferred} that fires with L{None} once L{loaded} is
            C{True} (at once if it is already). It never fails: a namer that
            cannot load (etcd unreachable) simply keeps it waiting, and
            readiness names the namer as still loading. Each call returns a
            new L{Deferred}; cancelling one affects no other.
        """

    prefix = Attribute(
        """
        The path this namer owns, a L{meshproxy.routing.path.Path} such as
        C{/#/fs}: the delegator hands it every bound name that starts with
        this prefix, the next segment being the service.
        """
    )

    def bind(service: str) -> Observable:
        """
        Look up one service.

        Called when the router first meets a bound name (the router caches
        the result): not on every request, but a namer must not block either.

        @param service: the service name, one path segment (e.g.
            C{"users"}), or several joined by C{/} for a namer whose prefix
            is a L{meshproxy.routing.delegate.NamerPrefix}
            (C{"a/users.example/8080"}).
        @return: an L{meshproxy.discovery.endpoints.Observable} of
            L{meshproxy.discovery.endpoints.Addr}; the same object for the
            same service each time. A service the namer does not know is
            C{Addr.neg()}, not an exception.
        """


def _asPrefix(prefix: object) -> object:
    """
    Turn a namer prefix given as text into a
    L{meshproxy.routing.path.Path}, if that module is available; anything
    else is returned unchanged.
    """
    if isinstance(prefix, str):
        try:
            from meshproxy.routing.path import Path
        except ImportError:
            return prefix
        return Path.read(prefix)
    return prefix


class FirstLoad:
    """
    The bookkeeping of L{INamer.loaded} and L{INamer.whenLoaded} for a
    namer: hold one, call L{finish} when the first load is done.

    @ivar done: whether L{finish} was called.
    """

    def __init__(self) -> None:
        self.done = False
        self._waiters: list[Deferred] = []

    def wait(self) -> Deferred:
        """
        @return: a L{Deferred} firing with L{None} once L{finish} is called
            (already fired if it was).
        """
        if self.done:
            return succeed(None)

        def cancel(d: Deferred) -> None:
            if d in self._waiters:
                self._waiters.remove(d)

        d: Deferred = Deferred(cancel)
        self._waiters.append(d)
        return d

    def finish(self) -> None:
        """
        The first load is done: fire every waiting L{Deferred}. Calling it
        again does nothing.
        """
        if self.done:
            return
        self.done = True
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(None)
