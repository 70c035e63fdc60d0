"""
A namer whose services are fixed when it is built (inline in the config).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from zope.interface import implementer

from meshproxy.discovery.endpoints import Addr, Endpoint, Observable
from meshproxy.discovery.interfaces import INamer, _asPrefix

__all__ = ["StaticNamer"]


def _endpoint(service: str, value: object) -> Endpoint:
    try:
        if isinstance(value, Endpoint):
            return value
        if isinstance(value, str):
            return Endpoint.parse(value)
        if isinstance(value, tuple) and len(value) in (2, 3):
            return Endpoint(*value)
    except (TypeError, ValueError) as e:
        raise ValueError(f"service {service!r}: {e}") from None
    raise ValueError(f"service {service!r}: not an endpoint: {value!r}")


@implementer(INamer)
class StaticNamer(Service):
    """
    A namer over a fixed mapping of service names to endpoints.

    Every service in the mapping is bound (an empty list binds to an empty set
    of endpoints); any other service is L{Addr.neg}. It has nothing to load:
    it is L{loaded<INamer.loaded>} from the start.
    """

    loaded = True

    def __init__(
        self,
        prefix: object,
        services: Mapping[str, Iterable[Endpoint | str | tuple[str, int, float]]],
    ) -> None:
        """
        @param prefix: the prefix this namer owns, a
            L{meshproxy.routing.path.Path} or its text (C{"/#/static"}).
        @param services: service name to its endpoints, each an L{Endpoint},
            text that L{Endpoint.parse} accepts (C{"127.0.0.1:8081 2"}), or
            a C{(host, port)} or C{(host, port, weight)} tuple (as
            L{meshproxy.config.StaticNamerConfig} gives them; so
            C{StaticNamer(c.prefix, dict(c.services))}).
        @raise ValueError: if an endpoint is not valid; the message names the
            service.
        """
        self.prefix = _asPrefix(prefix)
        self._observables: dict[str, Observable] = {}
        for name, endpoints in services.items():
            parsed = set()
            for endpoint in endpoints:
                parsed.add(_endpoint(name, endpoint))
            self._observables[name] = Observable(Addr.bound(frozenset(parsed)))
        # One shared answer for every unknown name, so that looking up
        # arbitrary names (they may come from request headers) costs nothing.
        self._unknown = Observable(Addr.neg())

    def bind(self, service: str) -> Observable:
        """
        See L{INamer.bind}.
        """
        return self._observables.get(service, self._unknown)

    def whenLoaded(self) -> Deferred:
        """
        See L{INamer.whenLoaded}: already fired.
        """
        return succeed(None)

    def __repr__(self) -> str:
        return f"<StaticNamer {self.prefix} services={sorted(self._observables)}>"
