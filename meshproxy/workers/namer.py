"""
The namers of a worker: each stands for one namer of the supervisor, which
alone watches files, DNS or etcd. A bound name a worker's router meets is
asked of the supervisor once (L{Bind<meshproxy.workers.protocol.Bind>});
its endpoints come back, and again at each change, as pushes
(L{Endpoints<meshproxy.workers.protocol.Endpoints>}).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from zope.interface import implementer

from meshproxy.discovery.endpoints import Addr, Observable
from meshproxy.discovery.interfaces import INamer

__all__ = ["PushedNamer"]


@implementer(INamer)
class PushedNamer(Service):
    """
    A namer whose answers are pushed by the supervisor.

    It is L{loaded<INamer.loaded>} from the start: the supervisor's
    readiness waits for its own namers, and a name stays pending (requests
    wait for it, as for any namer's first answer) until its first push.

    @ivar prefix: the supervisor's namer's prefix.
    """

    loaded = True

    def __init__(self, prefix: Any, ask: Callable[[str, str], object]) -> None:
        """
        @param prefix: the prefix of the supervisor's namer, as its namer
            has it (a L{NamerPrefix<meshproxy.routing.delegate.NamerPrefix>}
            for names of several segments).
        @param ask: called with C{(prefix text, service)} the first time a
            service is bound: asks the supervisor to push its endpoints.
        """
        self.prefix = prefix
        self._text = str(prefix)
        self._ask = ask
        self._observables: dict[str, Observable] = {}

    def bind(self, service: str) -> Observable:
        """
        See L{INamer.bind}: pending until the supervisor's first push.
        """
        observable = self._observables.get(service)
        if observable is None:
            observable = self._observables[service] = Observable(Addr.pending())
            self._ask(self._text, service)
        return observable

    def update(self, service: str, addr: Addr) -> None:
        """
        The supervisor's namer's answer for a service (pushed).

        @param service: as given to L{bind}.
        @param addr: the service's L{Addr}.
        """
        observable = self._observables.get(service)
        if observable is None:
            observable = self._observables[service] = Observable(addr)
        else:
            observable.set(addr)

    def whenLoaded(self) -> Deferred[None]:
        """
        See L{INamer.whenLoaded}: already fired.
        """
        return succeed(None)
