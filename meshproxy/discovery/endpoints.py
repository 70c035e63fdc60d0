"""
The values namers produce: L{Endpoint}, L{Addr}, and the L{Observable} that
carries an L{Addr} as it changes over time.

Endpoints and addresses are immutable values, swapped whole: a namer builds a
new L{Addr} and hands it to L{Observable.set}; nothing downstream mutates one
in place.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Callable
from typing import ClassVar

import attrs
from twisted.logger import Logger

__all__ = ["Endpoint", "Addr", "Observable"]

_log = Logger()

# DNS names as RFC 1123 host names, plus "_" which service registries use.
_hostLabel = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)\Z")


def _checkHost(instance: object, attribute: attrs.Attribute, value: object) -> None:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{attribute.name} must be a non-empty string, got {value!r}")


def _checkPort(instance: object, attribute: attrs.Attribute, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 65536:
        raise ValueError(f"{attribute.name} must be an integer from 1 to 65535, got {value!r}")


def _checkWeight(instance: object, attribute: attrs.Attribute, value: float) -> None:
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{attribute.name} must be a positive number, got {value!r}")


def _validHostName(host: str) -> bool:
    if len(host) > 253:
        return False
    labels = host[:-1].split(".") if host.endswith(".") else host.split(".")
    return all(_hostLabel.match(label) for label in labels)


def _parseWeight(text: str) -> float:
    try:
        weight = float(text)
    except ValueError:
        raise ValueError(f"weight must be a number, got {text!r}") from None
    if not (math.isfinite(weight) and weight > 0):
        raise ValueError(f"weight must be a positive number, got {text!r}")
    return weight


@attrs.frozen(order=True)
class Endpoint:
    """
    One instance of a service: where to connect, and how much traffic it
    should get relative to the other instances of the same service.

    Two endpoints with the same address but different weights are different
    values (so a weight change is a change a namer reports); balancers key
    their per-instance state on L{Endpoint.address} so that such a change
    keeps the statistics.

    @ivar host: a host name, an IPv4 address or an IPv6 address (without
        brackets, e.g. C{"::1"}).
    @ivar port: the TCP port, 1 to 65535.
    @ivar weight: a positive relative weight, 1.0 by default.
    """

    host: str = attrs.field(validator=_checkHost)
    port: int = attrs.field(validator=_checkPort)
    weight: float = attrs.field(default=1.0, converter=float, validator=_checkWeight)

    @property
    def address(self) -> tuple[str, int]:
        """
        The C{(host, port)} pair that identifies the instance, whatever its
        weight.
        """
        return (self.host, self.port)

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        if self.weight == 1.0:
            return f"{host}:{self.port}"
        return f"{host}:{self.port} {self.weight:g}"

    @classmethod
    def parse(cls, text: str) -> Endpoint:
        """
        Parse C{"host:port"} optionally followed by whitespace and a weight,
        as found in endpoint files and in the static namer's configuration:
        C{"10.0.0.1:8080"}, C{"users-1.internal:80 2.5"}, C{"[::1]:8080"}.

        @param text: the text to parse; leading and trailing whitespace is
            ignored.
        @return: the endpoint.
        @raise ValueError: with a message saying what is wrong with C{text}.
        """
        fields = text.split()
        if not fields:
            raise ValueError("expected host:port, got nothing")
        if len(fields) > 2:
            raise ValueError(f"expected host:port [weight], got {text.strip()!r}")
        weight = _parseWeight(fields[1]) if len(fields) == 2 else 1.0
        hostport = fields[0]
        if hostport.startswith("["):
            close = hostport.find("]")
            if close == -1:
                raise ValueError(f"missing ']' after IPv6 address in {hostport!r}")
            host, rest = hostport[1:close], hostport[close + 1 :]
            if not rest.startswith(":"):
                raise ValueError(f"expected [address]:port, got {hostport!r}")
            portText = rest[1:]
            try:
                ipaddress.IPv6Address(host)
            except ValueError:
                raise ValueError(f"not an IPv6 address: {host!r}") from None
        else:
            host, colon, portText = hostport.rpartition(":")
            if not colon or not host:
                raise ValueError(f"expected host:port, got {hostport!r}")
            if ":" in host:
                raise ValueError(
                    f"IPv6 addresses need brackets, as in [::1]:8080; got {hostport!r}"
                )
            if not _validHostName(host):
                raise ValueError(f"not a valid host name or address: {host!r}")
        if not (portText.isascii() and portText.isdigit()):
            raise ValueError(f"port must be a number, got {portText!r}")
        port = int(portText)
        if not 0 < port < 65536:
            raise ValueError(f"port must be from 1 to 65535, got {port}")
        return cls(host, port, weight)


@attrs.frozen
class Addr:
    """
    What a namer knows of one service at one moment. Build one with the
    class methods, not the constructor.

    @ivar kind: C{"pending"} (not known yet), C{"bound"} (the set of
        instances is C{endpoints}, possibly empty), C{"neg"} (no such
        service) or C{"failed"} (the namer cannot tell; see C{reason}).
    @ivar endpoints: the instances; empty unless C{kind} is C{"bound"}.
    @ivar reason: why the namer failed, for C{"failed"}; for C{"bound"},
        C{None}, or why the set may be out of date (L{stale}).
    """

    kind: str
    endpoints: frozenset[Endpoint] = frozenset()
    reason: str | None = None

    _pending: ClassVar[Addr]
    _neg: ClassVar[Addr]

    @classmethod
    def pending(cls) -> Addr:
        """
        @return: the address of a service the namer has not resolved yet.
        """
        return cls._pending

    @classmethod
    def bound(cls, endpoints: frozenset[Endpoint]) -> Addr:
        """
        @param endpoints: the instances of the service (an empty set means
            the service exists and has no instance right now).
        @return: the address of a resolved service.
        """
        return cls("bound", frozenset(endpoints))

    @classmethod
    def stale(cls, endpoints: frozenset[Endpoint], reason: str) -> Addr:
        """
        @param endpoints: the instances last known (possibly none).
        @param reason: why they may be out of date, e.g. C{"stale: no
            answer for 40 s (timeout)"}.
        @return: the address of a resolved service whose namer cannot
            refresh it: routed as L{bound}, with C{reason} shown beside it.
        """
        return cls("bound", frozenset(endpoints), str(reason))

    @classmethod
    def neg(cls) -> Addr:
        """
        @return: the address of a service the namer says does not exist.
        """
        return cls._neg

    @classmethod
    def failed(cls, reason: str) -> Addr:
        """
        @param reason: a short human-readable explanation (an exception is
            turned into its string form).
        @return: the address of a service the namer could not resolve.
        """
        return cls("failed", frozenset(), str(reason))


Addr._pending = Addr("pending")
Addr._neg = Addr("neg")


class Observable:
    """
    A value that changes over time (here, the L{Addr} of one service), and the
    functions that want to hear of its changes.

    The namer that created it is its only writer (L{set}); any number of
    readers look at L{current} or L{subscribe}.
    """

    def __init__(self, initial: Addr | None = None) -> None:
        """
        @param initial: the first value; L{Addr.pending} if not given.
        """
        self.current: Addr = Addr.pending() if initial is None else initial
        self._subscribers: dict[object, Callable[[Addr], object]] = {}

    def subscribe(self, fn: Callable[[Addr], object]) -> Callable[[], None]:
        """
        Call C{fn} with each new value from now on (not with the current one:
        read L{current} for that).

        @param fn: a one-argument callable. An exception it raises is logged
            and does not stop other subscribers from being notified.
        @return: a no-argument callable that cancels this subscription; calling
            it more than once is harmless.
        """
        token = object()
        self._subscribers[token] = fn

        def cancel() -> None:
            self._subscribers.pop(token, None)

        return cancel

    @property
    def subscribed(self) -> bool:
        """
        Whether anyone follows this value (a namer may forget an observable
        nobody follows).
        """
        return bool(self._subscribers)

    def set(self, addr: Addr) -> None:
        """
        Replace the current value and notify the subscribers, unless C{addr}
        equals the current value, in which case nothing happens.

        @param addr: the new value.
        """
        if addr == self.current:
            return
        self.current = addr
        for fn in tuple(self._subscribers.values()):
            if self.current is not addr:
                # A subscriber set a newer value, and every subscriber has
                # been told of it already: do not follow it with a stale one.
                return
            try:
                fn(addr)
            except Exception:
                _log.failure(
                    "subscriber {subscriber!r} failed on {addr!r}", subscriber=fn, addr=addr
                )

    def __repr__(self) -> str:
        return f"<Observable {self.current!r} subscribers={len(self._subscribers)}>"


def formatAddress(endpoint: Endpoint) -> str:
    """
    An endpoint's address as C{host:port}, IPv6 in brackets (no weight).
    """
    if ":" in endpoint.host:
        return f"[{endpoint.host}]:{endpoint.port}"
    return f"{endpoint.host}:{endpoint.port}"


def inetObservable(service: str) -> Observable:
    """
    The fixed endpoint set of a C{/$/inet/<host>/<port>} name.

    @param service: C{"host:port"} as delegation gives it (an IPv6 host
        unbracketed: C{"::1:8080"}).
    @return: an L{Observable} bound to that one endpoint, or negative when
        the address is not valid.
    """
    host, _, port = service.rpartition(":")
    try:
        endpoint = Endpoint(host.strip("[]"), int(port))
    except (ValueError, TypeError):
        return Observable(Addr.neg())
    return Observable(Addr.bound(frozenset([endpoint])))
