"""
A namer over DNS, with C{twisted.names}: SRV records, and A and AAAA
records with a port given in the name.

The names below the namer's prefix (C{/#/dns}) are::

    /#/dns/srv/_http._tcp.users.example     the SRV records of that name
    /#/dns/a/users.example/8080             its A and AAAA records, port 8080

(the delegator binds them whole, see L{NAME_LENGTHS}; what follows the name
is the residual). Anything else below the prefix, or a name that is not a
valid DNS name or port, is unknown to the namer (L{Addr.neg}).

SRV: only the records of the lowest priority value present are used
(higher priorities are fallbacks the namer does not follow); each record's
weight becomes its endpoints' weight, shared between the target's addresses
(a record of weight 0 gets a hundredth of the smallest non-zero weight of
the group, or 1 when every weight is 0); a target of C{.} is no endpoint.
Targets are resolved to A and AAAA records, from the answer's additional
section when it has them, else by looking them up. The port is the record's.

A name's lookup is done again after the answer's TTL, clamped between
C{refreshMin} and C{refreshMax}, and shortened by up to 10% at random so
that names bound together do not stay in step. What an answer does to the
name's endpoint set:

  - records: the set is theirs (at most L{MaxRecords} of them);
  - NXDOMAIN, or no record of the type asked (for C{/a/}: neither A nor
    AAAA): the answer is authoritative, the set empties;
  - a failed lookup (timeout, SERVFAIL, REFUSED, a target that cannot be
    looked up): the last set is kept, shown as stale (L{Addr.stale}, with
    how long the lookups have failed and the age of the set), and the
    lookup is tried again after C{refreshMin}, doubling up to
    C{refreshMax}. After C{staleFor} of failures the set empties (still
    shown as stale) until an answer comes. A name whose first lookup fails
    is L{Addr.failed}.

For C{/a/}, an answer with records of either type is the set, even if
the other type's lookup failed.

Lookups are made on the reactor by a C{twisted.names} resolver: no thread,
no C{getaddrinfo}. Each bound name has one lookup loop, which stops when
nobody follows the name any more (checked before each refresh); the next
bind starts a new one.
"""

from __future__ import annotations

import ipaddress
import random as _random
import re
import socket
from collections.abc import Callable, Sequence
from typing import Any

import attrs
from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime, IResolver
from twisted.logger import Logger
from twisted.names import dns, error
from twisted.python.failure import Failure
from zope.interface import implementer

from meshproxy.discovery.endpoints import Addr, Endpoint, Observable
from meshproxy.discovery.interfaces import FirstLoad, INamer
from meshproxy.routing.delegate import NamerPrefix
from meshproxy.routing.path import Path

__all__ = ["DnsNamer", "DnsName", "Answer", "NAME_LENGTHS", "resolveName", "makeResolver"]

_log = Logger()

NAME_LENGTHS = {"srv": 2, "a": 3}
"""
How many path segments below the prefix a name takes, by its first one:
C{srv/<name>} and C{a/<name>/<port>}.
"""

MaxRecords = 256
"""The most records taken from one answer (and endpoints in one set)."""

MaxTargetLookups = 32
"""The most SRV targets looked up for one answer (beyond: left out)."""

MaxNames = 10000
"""The most names one namer follows."""

#: The share of the next lookup's delay taken off at random, at most.
Jitter = 0.1

#: A weight-0 SRV record's weight, relative to the smallest non-zero one.
ZeroWeightShare = 0.01

_label = re.compile(r"(?!-)[a-z0-9_-]{1,63}(?<!-)\Z")


def _dnsName(text: str) -> str | None:
    """
    @return: C{text} lowercased without its final dot, if it is a DNS name
        (letters, digits, C{-} and C{_}; labels of 1 to 63, 253 in all);
        else L{None}.
    """
    name = text[:-1] if text.endswith(".") else text
    name = name.lower()
    if not name or len(name) > 253 or not name.isascii():
        return None
    if all(_label.match(label) for label in name.split(".")):
        return name
    return None


def _ipLiteral(text: str) -> str | None:
    """
    @return: the address in its usual form if C{text} is an IPv4 or IPv6
        address (without a zone), else L{None}.
    """
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.scope_id:
        return None
    return str(address)


@attrs.frozen
class DnsName:
    """
    A name the DNS namer can look up.

    @ivar kind: C{"srv"} or C{"a"}.
    @ivar host: the DNS name, lowercase, without a final dot; for C{"a"},
        maybe an IP address (then it is not looked up).
    @ivar port: for C{"a"}, the port of the endpoints; else L{None}.
    """

    kind: str
    host: str
    port: int | None = None

    @classmethod
    def parse(cls, service: str) -> DnsName | None:
        """
        Read the service part of a bound name, as the delegator gives it.

        @param service: C{"srv/<name>"} or C{"a/<name>/<port>"}.
        @return: the name, or L{None} if C{service} is not one.
        """
        parts = service.split("/")
        if parts[0] == "srv" and len(parts) == 2:
            host = _dnsName(parts[1])
            return None if host is None else cls("srv", host)
        if parts[0] == "a" and len(parts) == 3:
            host = _ipLiteral(parts[1]) or _dnsName(parts[1])
            portText = parts[2]
            if host is None or not (portText.isascii() and portText.isdigit()):
                return None
            if len(portText) > 5 or not 0 < int(portText) < 65536:
                return None
            return cls("a", host, int(portText))
        return None

    def __str__(self) -> str:
        if self.kind == "srv":
            return f"srv/{self.host}"
        return f"a/{self.host}/{self.port}"


@attrs.frozen
class Answer:
    """
    What one lookup of a name gave.

    @ivar endpoints: the endpoints (empty for an authoritative empty answer).
    @ivar ttl: seconds the answer may be kept, or L{None} when the answer
        does not say (an IP address, an NXDOMAIN without SOA record).
    @ivar empty: for an empty set, why (C{"NXDOMAIN"}, C{"no SRV records"},
        ...); else L{None}.
    """

    endpoints: frozenset[Endpoint]
    ttl: float | None
    empty: str | None = None


class LookupTimeout(Exception):
    """
    A lookup did not finish in time.
    """

    def __str__(self) -> str:
        return "timeout"


def describe(reason: Failure | BaseException) -> str:
    """
    A failed lookup in a few words: C{"timeout"}, C{"SERVFAIL"}...
    """
    e = reason.value if isinstance(reason, Failure) else reason
    if isinstance(e, (defer.TimeoutError, error.DNSQueryTimeoutError, LookupTimeout)):
        return "timeout"
    for cls, text in (
        (error.DNSServerError, "SERVFAIL"),
        (error.DNSQueryRefusedError, "REFUSED"),
        (error.DNSFormatError, "FORMERR"),
        (error.DNSNotImplementedError, "NOTIMP"),
        (error.DNSUnknownError, "unknown DNS error"),
    ):
        if isinstance(e, cls):
            return text
    text = f"{type(e).__name__}: {e}"
    return text if len(text) <= 200 else text[:197] + "..."


def _negativeTtl(authority: Sequence[dns.RRHeader]) -> float | None:
    # RFC 2308: a negative answer is kept for the SOA's minimum, at most
    # the SOA record's own TTL.
    for rr in authority:
        if isinstance(rr.payload, dns.Record_SOA):
            return float(min(rr.ttl, rr.payload.minimum))
    return None


def _sections(e: BaseException) -> tuple[list, list, list] | None:
    message = e.args[0] if e.args else None
    if isinstance(message, dns.Message):
        return message.answers, message.authority, message.additional
    return None


def _address(rr: dns.RRHeader) -> str | None:
    payload = rr.payload
    if isinstance(payload, dns.Record_A):
        return str(payload.dottedQuad())
    if isinstance(payload, dns.Record_AAAA):
        return socket.inet_ntop(socket.AF_INET6, payload.address)
    return None


@attrs.frozen
class _Addresses:
    """
    A host's addresses: C{addresses} (maybe none) and their C{ttl}; C{empty}
    says why there are none.
    """

    addresses: tuple[str, ...]
    ttl: float | None
    empty: str | None = None


def _isNxdomain(e: BaseException) -> bool:
    # SERVFAIL, REFUSED... are DomainErrors too: only NXDOMAIN, or a plain
    # "no such name" from a local resolver (hosts file, authority), is one.
    return isinstance(e, error.DNSNameError) or type(e) in (
        error.DomainError, error.AuthoritativeDomainError
    )


async def _lookup(
    call: Callable[..., Deferred], name: str, timeout: Sequence[float]
) -> tuple[list, list, list] | _Addresses:
    """
    One query: its sections, or an authoritative C{_Addresses} with no
    address for NXDOMAIN. Other failures raise.
    """
    try:
        return await call(name, timeout=tuple(timeout))
    except (error.DomainError, error.AuthoritativeDomainError) as e:
        if not _isNxdomain(e):
            raise
        sections = _sections(e)
        return _Addresses((), None if sections is None else _negativeTtl(sections[1]), "NXDOMAIN")


def _minTtl(*ttls: float | None) -> float | None:
    known = [ttl for ttl in ttls if ttl is not None]
    return min(known) if known else None


async def _hostAddresses(resolver: IResolver, host: str, timeout: Sequence[float]) -> _Addresses:
    """
    The A and AAAA records of C{host}, asked at the same time.

    @raise Exception: when neither answered with a record and one failed.
    """
    literal = _ipLiteral(host)
    if literal is not None:
        return _Addresses((literal,), None)
    results = await defer.DeferredList(
        [
            Deferred.fromCoroutine(_lookup(resolver.lookupAddress, host, timeout)),
            Deferred.fromCoroutine(_lookup(resolver.lookupIPV6Address, host, timeout)),
        ],
        consumeErrors=True,
    )
    found: list[str] = []
    ttls: list[float | None] = []
    negative: list[_Addresses] = []
    failures: list[Failure] = []
    result: Any
    for ok, result in results:
        if not ok:
            failures.append(result)
        elif isinstance(result, _Addresses):
            negative.append(result)
        else:
            answers, authority, _ = result
            records = 0
            for rr in answers:
                address = _address(rr)
                if address is not None and len(found) < MaxRecords:
                    found.append(address)
                    ttls.append(float(rr.ttl))
                    records += 1
            if not records:
                negative.append(_Addresses((), _negativeTtl(authority), "no A or AAAA records"))
    if found:
        return _Addresses(tuple(dict.fromkeys(found)), _minTtl(*ttls))
    if failures:
        failures[0].raiseException()
    nxdomain = any(n.empty == "NXDOMAIN" for n in negative)
    return _Addresses(
        (), _minTtl(*(n.ttl for n in negative)), "NXDOMAIN" if nxdomain else "no A or AAAA records"
    )


async def _resolveA(resolver: IResolver, name: DnsName, timeout: Sequence[float]) -> Answer:
    found = await _hostAddresses(resolver, name.host, timeout)
    port = name.port
    assert port is not None
    endpoints = frozenset(Endpoint(address, port) for address in found.addresses)
    return Answer(endpoints, found.ttl, None if endpoints else found.empty)


async def _resolveSrv(resolver: IResolver, name: DnsName, timeout: Sequence[float]) -> Answer:
    result = await _lookup(resolver.lookupService, name.host, timeout)
    if isinstance(result, _Addresses):
        return Answer(frozenset(), result.ttl, "NXDOMAIN")
    answers, authority, additional = result
    records = [rr for rr in answers if rr.type == dns.SRV][:MaxRecords]
    if not records:
        return Answer(frozenset(), _negativeTtl(authority), "no SRV records")
    lowest = min(rr.payload.priority for rr in records)
    group = [rr for rr in records if rr.payload.priority == lowest]
    ttls: list[float | None] = [float(rr.ttl) for rr in group]

    known: dict[str, list[str]] = {}
    for rr in additional[:MaxRecords]:
        address = _address(rr)
        if address is not None:
            known.setdefault(str(rr.name).lower().rstrip("."), []).append(address)
            ttls.append(float(rr.ttl))
    targets = [(rr, str(rr.payload.target).lower().rstrip(".")) for rr in group]
    missing = list(dict.fromkeys(t for _, t in targets if t and t not in known))
    if len(missing) > MaxTargetLookups:
        _log.warn(
            "SRV {name}: {count} targets without addresses, looking up the first {most}",
            name=name.host, count=len(missing), most=MaxTargetLookups,
        )
        missing = missing[:MaxTargetLookups]
    if missing:
        try:
            looked = await defer.gatherResults(
                [
                    Deferred.fromCoroutine(_hostAddresses(resolver, target, timeout))
                    for target in missing
                ],
                consumeErrors=True,
            )
        except defer.FirstError as e:
            # A target that cannot be looked up fails the whole lookup: the
            # last set is kept rather than one without that target.
            e.subFailure.raiseException()
        for target, found in zip(missing, looked, strict=True):
            known[target] = list(found.addresses)
            ttls.append(found.ttl)

    positive = [rr.payload.weight for rr in group if rr.payload.weight > 0]
    zeroWeight = min(positive) * ZeroWeightShare if positive else 1.0
    weights: dict[tuple[str, int], float] = {}
    for rr, target in targets:
        addresses = list(dict.fromkeys(known.get(target, ())))
        if not target or not addresses:
            continue
        weight = (rr.payload.weight or zeroWeight) / len(addresses)
        for address in addresses:
            key = (address, rr.payload.port)
            if key in weights or len(weights) < MaxRecords:
                weights[key] = weights.get(key, 0.0) + weight
    endpoints = frozenset(
        Endpoint(address, port, weight)
        for (address, port), weight in weights.items()
        if port > 0
    )
    return Answer(endpoints, _minTtl(*ttls), None if endpoints else "no SRV target with an address")


def resolveName(resolver: IResolver, name: DnsName, timeout: Sequence[float]) -> Deferred:
    """
    Look a name up once.

    @param resolver: the L{IResolver} to ask.
    @param name: what to look up.
    @param timeout: the resolver's timeouts for each query (see
        L{IResolver.lookupAddress}).
    @return: a L{Deferred} firing with an L{Answer}, or failing when the
        lookup failed (timeout, SERVFAIL...); NXDOMAIN is an answer.
    """
    if name.kind == "srv":
        return Deferred.fromCoroutine(_resolveSrv(resolver, name, timeout))
    return Deferred.fromCoroutine(_resolveA(resolver, name, timeout))


def makeResolver(
    nameservers: Sequence[tuple[str, int]], *, reactor: Any, timeout: Sequence[float]
) -> Any:
    """
    A C{twisted.names} client resolver with no cache (the namer refreshes by
    TTL itself).

    @param nameservers: C{(address, port)} pairs; empty for the system's,
        read from C{/etc/resolv.conf} (and read again when it changes; the
        hosts file is not read).
    @param reactor: the reactor its queries and timeouts run on.
    @param timeout: its default timeouts.
    @return: a L{twisted.names.client.Resolver}.
    """
    from twisted.names import client

    if nameservers:
        return client.Resolver(servers=list(nameservers), reactor=reactor, timeout=timeout)
    return client.Resolver(resolv="/etc/resolv.conf", reactor=reactor, timeout=timeout)


def _closeResolver(resolver: Any) -> None:
    """
    Close what a resolver L{makeResolver} made keeps open: its TCP
    connections (after truncated answers) and its re-reading of
    C{resolv.conf}.
    """
    for protocol in list(getattr(resolver, "connections", ())):
        if protocol.transport is not None:
            protocol.transport.loseConnection()
    # Private to twisted.names.client.Resolver, which has no close().
    parse = getattr(resolver, "_parseCall", None)
    if parse is not None and parse.active():
        parse.cancel()


def _seconds(value: float) -> str:
    return f"{value:.0f}s" if value >= 10 else f"{value:.1f}s"


class _Watch:
    """
    What the namer keeps of one bound name.

    @ivar good: the endpoints of the last answer (L{None} before any).
    @ivar answeredAt: when that answer came.
    @ivar failingSince: when lookups started failing, or L{None}.
    @ivar failures: failed lookups in a row.
    @ivar state: C{"ok"}, C{"empty"}, C{"failing"} or C{"expired"} (for
        logging once per change); L{None} before the first result.
    @ivar token: the lookup in flight, or L{None}.
    @ivar call: the next lookup, scheduled.
    @ivar guard: the deadline of the lookup in flight.
    """

    __slots__ = (
        "service", "name", "label", "observable", "good", "answeredAt",
        "failingSince", "failures", "state", "token", "call", "guard",
    )

    def __init__(self, service: str, name: DnsName, label: str) -> None:
        self.service = service
        self.name = name
        self.label = label
        self.observable = Observable()
        self.good: frozenset[Endpoint] | None = None
        self.answeredAt: float | None = None
        self.failingSince: float | None = None
        self.failures = 0
        self.state: str | None = None
        self.token: object | None = None
        self.call: IDelayedCall | None = None
        self.guard: IDelayedCall | None = None

    def cancel(self) -> None:
        """
        Stop the loop: forget the lookup in flight, cancel the next one.
        """
        self.token = None
        for call in (self.call, self.guard):
            if call is not None and call.active():
                call.cancel()
        self.call = self.guard = None


@implementer(INamer)
class DnsNamer(Service):
    """
    A namer looking names up in DNS (see the module docstring for the names
    and the rules).

    Names are looked up from the first bind while the service runs (a name
    bound before the start is looked up at the start). Its first load
    (L{INamer.whenLoaded}) is the first answer, or failure, of every name
    bound before the start or in the same reactor turn as the start (a TCP
    router's destination); names bound later, on requests, are not waited
    for. With no such name it is loaded one reactor turn after the start.
    """

    def __init__(
        self,
        prefix: object,
        *,
        reactor: IReactorTime,
        nameservers: Sequence[tuple[str, int]] = (),
        resolver: IResolver | None = None,
        refreshMin: float = 5.0,
        refreshMax: float = 300.0,
        staleFor: float = 300.0,
        timeout: float = 5.0,
        random: Callable[[], float] = _random.random,
        maxNames: int = MaxNames,
    ) -> None:
        """
        @param prefix: the prefix this namer owns, a L{Path} or its text
            (C{"/#/dns"}); L{prefix} is it as a L{NamerPrefix}.
        @param reactor: the clock of the refreshes; without C{resolver}, also
            the reactor of the lookups (UDP and TCP).
        @param nameservers: C{(address, port)} of the servers to ask; empty
            for the system's (C{/etc/resolv.conf}). Ignored with C{resolver}.
        @param resolver: the L{IResolver} to ask, instead of one made from
            C{nameservers} at the start.
        @param refreshMin: the shortest wait before a name is looked up
            again, in seconds; also the first wait after a failure.
        @param refreshMax: the longest.
        @param staleFor: seconds of failed lookups after which a name's
            last set is dropped.
        @param timeout: seconds one query may take (sent again once within
            it, to the next server when there are several).
        @param random: a function returning a float in [0, 1), for the
            jitter.
        @param maxNames: the most names followed at once.
        @raise ValueError: for a bad duration or C{refreshMin > refreshMax}.
        """
        for label, value in (
            ("refreshMin", refreshMin), ("refreshMax", refreshMax),
            ("staleFor", staleFor), ("timeout", timeout),
        ):
            if not value > 0:
                raise ValueError(f"{label} must be positive, got {value!r}")
        if refreshMin > refreshMax:
            raise ValueError(f"refreshMin ({refreshMin}) is more than refreshMax ({refreshMax})")
        path = prefix if isinstance(prefix, Path) else Path.read(str(prefix))
        self.prefix = NamerPrefix(path.segments, NAME_LENGTHS)
        self.refreshMin = refreshMin
        self.refreshMax = refreshMax
        self.staleFor = staleFor
        self.timeout = timeout
        self._reactor = reactor
        self._nameservers = tuple(nameservers)
        self._givenResolver = resolver
        self._resolver: Any = resolver
        self._random = random
        self._maxNames = maxNames
        self._watches: dict[str, _Watch] = {}
        self._unknown = Observable(Addr.neg())
        self._tooMany = Observable(Addr.failed(f"the DNS namer follows {maxNames} names already"))
        self._firstLoad = FirstLoad()
        self._awaited: set[_Watch] = set()
        self._starting: IDelayedCall | None = None
        #: Lookups answered (an empty answer included) and failed, since the
        #: namer was made.
        self.answers = 0
        self.failures = 0

    # -- INamer ----------------------------------------------------------

    @property
    def loaded(self) -> bool:
        """
        See L{INamer.loaded}.
        """
        return self._firstLoad.done

    def whenLoaded(self) -> Deferred:
        """
        See L{INamer.whenLoaded}.
        """
        return self._firstLoad.wait()

    def bind(self, service: str) -> Observable:
        """
        See L{INamer.bind}: C{"srv/<name>"} or C{"a/<name>/<port>"}; anything
        else is L{Addr.neg}. The first bind of a name looks it up at once
        (at the start, if the service is not running).
        """
        watch = self._watches.get(service)
        if watch is not None:
            return watch.observable
        name = DnsName.parse(service)
        if name is None:
            return self._unknown
        if len(self._watches) >= self._maxNames:
            self._forgetUnfollowed()
            if len(self._watches) >= self._maxNames:
                return self._tooMany
        watch = _Watch(service, name, f"{self.prefix}/{service}")
        self._watches[service] = watch
        if not self._firstLoad.done and (not self.running or self._starting is not None):
            self._awaited.add(watch)
        if self.running:
            self._lookUp(watch)
        return watch.observable

    # -- IService --------------------------------------------------------

    def startService(self) -> None:
        """
        Make the resolver, and look up every name bound so far.
        """
        super().startService()
        if self._resolver is None:
            self._resolver = makeResolver(
                self._nameservers, reactor=self._reactor, timeout=self._timeouts()
            )
        for watch in list(self._watches.values()):
            self._lookUp(watch)
        # Wait for the names the routers bind as they start, too.
        self._starting = self._reactor.callLater(0, self._started)

    def _started(self) -> None:
        self._starting = None
        self._checkLoaded()

    def stopService(self) -> Deferred | None:
        """
        Stop every lookup loop; the names keep their last values. A resolver
        the namer made is closed.
        """
        for watch in self._watches.values():
            watch.cancel()
        if self._starting is not None and self._starting.active():
            self._starting.cancel()
        self._starting = None
        if self._givenResolver is None and self._resolver is not None:
            _closeResolver(self._resolver)
            self._resolver = None
        return super().stopService()

    # -- the lookup loop -------------------------------------------------

    def _timeouts(self) -> tuple[float, ...]:
        servers = max(1, len(self._nameservers))
        # Each server asked once with a quarter of the time, then again
        # with the rest: twisted.names tries every server at each step.
        return (self.timeout / 4 / servers, self.timeout * 3 / 4 / servers)

    def _lookUp(self, watch: _Watch) -> None:
        watch.cancel()
        token = watch.token = object()
        # The resolver keeps its own timeouts; this deadline is for one that
        # never answers, and for an SRV answer's targets looked up after it.
        watch.guard = self._reactor.callLater(
            self.timeout * 2 + 1, self._timedOut, watch, token
        )
        try:
            d = resolveName(self._resolver, watch.name, self._timeouts())
        except Exception:
            d = defer.fail()
        d.addCallbacks(
            self._answered, self._failed, callbackArgs=(watch, token), errbackArgs=(watch, token)
        )
        d.addErrback(
            lambda f: _log.failure("DNS namer: handling {name} failed", f, name=watch.label)
        )

    def _refresh(self, watch: _Watch) -> None:
        watch.call = None
        if not watch.observable.subscribed:
            # Nobody follows the name any more: stop its loop.
            watch.cancel()
            if self._watches.get(watch.service) is watch:
                del self._watches[watch.service]
            return
        self._lookUp(watch)

    def _timedOut(self, watch: _Watch, token: object) -> None:
        if watch.token is token:
            watch.guard = None
            self._failed(Failure(LookupTimeout()), watch, token)

    def _finish(self, watch: _Watch, token: object) -> bool:
        """
        The lookup C{token} ended: whether it is still the one wanted.
        """
        if watch.token is not token or not self.running:
            return False
        watch.token = None
        if watch.guard is not None and watch.guard.active():
            watch.guard.cancel()
        watch.guard = None
        return True

    def _schedule(self, watch: _Watch, delay: float) -> None:
        delay *= 1 - Jitter * self._random()
        watch.call = self._reactor.callLater(delay, self._refresh, watch)

    def _answered(self, answer: Answer, watch: _Watch, token: object) -> None:
        if not self._finish(watch, token):
            return
        self.answers += 1
        now = self._reactor.seconds()
        previous = watch.state
        watch.good = answer.endpoints
        watch.answeredAt = now
        watch.failingSince = None
        watch.failures = 0
        if answer.endpoints:
            watch.state = "ok"
            if previous in ("failing", "expired"):
                _log.info(
                    "DNS {name} answers again: {count} endpoints",
                    name=watch.label, count=len(answer.endpoints),
                )
        else:
            watch.state = "empty"
            if previous != "empty":
                _log.info("DNS {name}: {why}; no endpoints", name=watch.label, why=answer.empty)
        ttl = self.refreshMin if answer.ttl is None and not answer.endpoints else answer.ttl
        ttl = self.refreshMax if ttl is None else ttl
        self._schedule(watch, min(max(ttl, self.refreshMin), self.refreshMax))
        # Last: a subscriber sees the namer with its next lookup planned.
        watch.observable.set(Addr.bound(answer.endpoints))
        self._loadedOne(watch)

    def _failed(self, reason: Failure, watch: _Watch, token: object) -> None:
        if not self._finish(watch, token):
            return
        self.failures += 1
        now = self._reactor.seconds()
        why = describe(reason)
        if watch.failingSince is None:
            watch.failingSince = now
        watch.failures += 1
        failing = now - watch.failingSince
        previous = watch.state
        delay = min(self.refreshMin * 2 ** min(watch.failures - 1, 30), self.refreshMax)
        if watch.good is None:
            watch.state = "failing"
            if previous != "failing":
                _log.warn("DNS lookup of {name} failed: {why}", name=watch.label, why=why)
            addr = Addr.failed(f"DNS lookup failed: {why}")
        elif failing < self.staleFor:
            watch.state = "failing"
            if previous != "failing":
                _log.warn(
                    "DNS lookup of {name} failed: {why}; keeping its last {count} endpoints"
                    " for up to {staleFor}",
                    name=watch.label, why=why, count=len(watch.good),
                    staleFor=_seconds(self.staleFor),
                )
            assert watch.answeredAt is not None
            addr = Addr.stale(
                watch.good,
                f"stale: no DNS answer for {_seconds(failing)} ({why}); keeping the"
                f" {len(watch.good)} endpoints answered {_seconds(now - watch.answeredAt)}"
                " ago",
            )
            # Be there when the set is to be dropped.
            delay = min(delay, self.staleFor - failing)
        else:
            watch.state = "expired"
            if previous != "expired":
                _log.warn(
                    "DNS lookups of {name} have failed for {failing} ({why});"
                    " its endpoints are dropped",
                    name=watch.label, failing=_seconds(failing), why=why,
                )
            addr = Addr.stale(
                frozenset(),
                f"stale: no DNS answer for {_seconds(failing)} ({why}); the endpoints"
                f" were dropped after {_seconds(self.staleFor)}",
            )
        self._schedule(watch, delay)
        watch.observable.set(addr)
        self._loadedOne(watch)

    # -- what the admin API shows -----------------------------------------

    def state(self) -> dict[str, Any]:
        """
        A JSON-ready view for C{GET /admin/state} (and the namer metrics)::

            {"kind": "dns", "loaded": true, "names": 3, "failing": 1,
             "stale": true, "answers": 41, "failures": 2}

        C{names} is how many names are followed, C{failing} how many of them
        have no answer now (kept stale, dropped, or never answered), and
        C{stale} whether any has.
        """
        failing = sum(
            1 for watch in self._watches.values() if watch.state in ("failing", "expired")
        )
        return {
            "kind": "dns",
            "loaded": self.loaded,
            "names": len(self._watches),
            "failing": failing,
            "stale": failing > 0,
            "answers": self.answers,
            "failures": self.failures,
        }

    # -- bookkeeping -----------------------------------------------------

    def _loadedOne(self, watch: _Watch) -> None:
        if watch in self._awaited:
            self._awaited.discard(watch)
            self._checkLoaded()

    def _checkLoaded(self) -> None:
        if self.running and self._starting is None and not self._awaited:
            self._firstLoad.finish()
            self._awaited.clear()

    def _forgetUnfollowed(self) -> None:
        for service, watch in list(self._watches.items()):
            if not watch.observable.subscribed:
                watch.cancel()
                del self._watches[service]
                self._awaited.discard(watch)

    def __repr__(self) -> str:
        return f"<DnsNamer {self.prefix} names={len(self._watches)}>"
