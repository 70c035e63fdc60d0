"""
The interface between the router and the namers.
"""

from __future__ import annotations

from twisted.application.service import IService
from zope.interface import Attribute

__all__ = ["INamer"]


class INamer(IService):
    """
    A namer owns every bound name under its prefix and turns the service part
    of such a name into a live, changing set of endpoints.

    Namers are services: they start and stop with the process (a namer that
    watches something, like a directory or etcd, does so between
    C{startService} and C{stopService}).
    """

    prefix = Attribute(
        """
        The path this namer owns, a L{meshproxy.routing.path.Path} such as
        C{/#/fs}: the delegator hands it every bound name that starts with
        this prefix, the next segment being the service.
        """
    )

    def bind(service: str) -> "meshproxy.discovery.endpoints.Observable":  # noqa: F821
        """
        Look up one service.

        Called when the router first meets a bound name (the router caches
        the result): not on every request, but a namer must not block either.

        @param service: the service name, one path segment (e.g. C{"users"}).
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
