"""
Service discovery through etcd: a namer following every key under a prefix,
and the registration that keeps one instance's key alive.

The layout: one key per instance, under the key prefix and the service's
name::

    /meshproxy/services/users/10.0.0.5:8080  ->  "10.0.0.5:8080"
    /meshproxy/services/users/10.0.0.6:8080  ->  "10.0.0.6:8080 2"
    /meshproxy/services/users/canary         ->  {"address": "10.0.0.7:8080",
                                                  "weight": 0.5, "meta": {...}}

The service is the first path segment under the key prefix; what follows
names the instance (any text: the address is the usual choice). A value is
C{host:port [weight]} as in endpoint files, or a JSON object with
C{address}, an optional C{weight} and an optional C{meta} (ignored by the
proxy). Instances register with a lease (L{EtcdRegistration}, or the
C{meshproxy register} command), so that the key of an instance that dies
expires with its lease.

How the namer's answers follow etcd:

  - a service with at least one key is bound to the endpoints of its valid
    values (an empty set if none is valid);
  - a service without any key is unknown (L{Addr.neg}): deleting its last
    key (or its lease expiring) empties it;
  - a value that is not valid is logged once and ignored;
  - while etcd cannot be reached, every service keeps its last set (the
    namer is then I{stale}, see L{EtcdNamer.state}); a service never read
    is L{Addr.failed} until etcd answers.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from zope.interface import implementer

from meshproxy.discovery.endpoints import Addr, Endpoint, Observable, formatAddress
from meshproxy.discovery.interfaces import FirstLoad, INamer, _asPrefix
from meshproxy.etcd import (
    EtcdClient,
    EtcdError,
    FollowsPrefix,
    IPrefixListener,
    KeyValue,
    PrefixFollower,
    WatchEvent,
)

__all__ = [
    "EtcdNamer",
    "EtcdRegistration",
    "formatValue",
    "parseValue",
    "serviceKey",
]

_log = Logger()

_SERVICE = re.compile(r"[A-Za-z0-9_.:-]+\Z")

# Unknown names come from requests: past this many followed by nobody,
# those that are unknown are forgotten.
_maxIdleNames = 1024


def parseValue(value: bytes) -> Endpoint:
    """
    Parse the value of an instance's key.

    @param value: C{b"host:port [weight]"}, or a JSON object
        C{{"address": "host:port", "weight": 2, "meta": {...}}} (C{weight}
        and C{meta} optional; C{meta} is not read).
    @return: the endpoint.
    @raise ValueError: saying what is wrong.
    """
    try:
        text = value.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise ValueError("not UTF-8 text") from None
    if not text.startswith("{"):
        return Endpoint.parse(text)
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as e:
        raise ValueError("not valid JSON: %s" % (e,)) from None
    if not isinstance(data, dict):
        raise ValueError("expected a JSON object")
    address = data.get("address")
    if not isinstance(address, str):
        raise ValueError('expected "address": "host:port" in the JSON object')
    endpoint = Endpoint.parse(address)
    if len(address.split()) != 1:
        raise ValueError('"address" is host:port only (give "weight" apart)')
    weight = data.get("weight", 1)
    if (
        isinstance(weight, bool)
        or not isinstance(weight, (int, float))
        or not math.isfinite(weight)
        or weight <= 0
    ):
        raise ValueError('"weight" must be a positive number, got %r' % (weight,))
    return Endpoint(endpoint.host, endpoint.port, weight)


def formatValue(endpoint: Endpoint) -> bytes:
    """
    The value registering C{endpoint}: C{b"host:port"}, with the weight
    when it is not 1.
    """
    return str(endpoint).encode("utf-8")


def serviceKey(keyPrefix: str, service: str, endpoint: Endpoint) -> str:
    """
    The key of one instance: C{<keyPrefix><service>/<host:port>}.

    @param keyPrefix: ending with C{/}.
    @param service: the service's name (C{[A-Za-z0-9_.:-]+}).
    @raise ValueError: on a bad service name.
    """
    if not _SERVICE.match(service):
        raise ValueError("a service name is made of A-Z a-z 0-9 _ . : -, got %r" % (service,))
    if not keyPrefix.endswith("/"):
        keyPrefix += "/"
    return "%s%s/%s" % (keyPrefix, service, formatAddress(endpoint))


class _Instance:
    """
    One key of a service: its revision, and its endpoint (L{None} when its
    value is not valid).
    """

    __slots__ = ("modRevision", "endpoint")

    def __init__(self, modRevision: int, endpoint: Endpoint | None) -> None:
        self.modRevision = modRevision
        self.endpoint = endpoint


@implementer(INamer, IPrefixListener)
class EtcdNamer(FollowsPrefix, Service):
    """
    A namer over the keys under one prefix of etcd: one read of the whole
    prefix, then one watch from the revision after it, by a
    L{PrefixFollower} (see the module docstring for the layout and the
    rules).

    When the watch is lost, the client resumes it from the last revision it
    saw (jittered backoff from 100 ms to 1 s), so no change is missed; when
    etcd compacted that revision away, the namer reads the prefix again and
    applies the difference. Meanwhile the last known sets stay in use.

    @ivar keyPrefix: the key prefix, ending with C{/}.
    @ivar badValues: how many values were ignored as not valid.
    """

    def __init__(
        self,
        prefix: object,
        client: EtcdClient,
        keyPrefix: str,
        *,
        reactor: Any,
        checkInterval: float = 10.0,
    ) -> None:
        """
        @param prefix: the prefix this namer owns, a
            L{meshproxy.routing.path.Path} or its text (C{"/#/etcd"}).
        @param client: the L{EtcdClient} to read and watch with; the namer
            closes it when it stops.
        @param keyPrefix: the etcd key prefix (C{"/meshproxy/services/"});
            a C{/} is added if it does not end with one.
        @param reactor: the clock of retries and of the stale age.
        @param checkInterval: seconds between checks that etcd still
            answers while the watch looks established (a watch on a
            connection cut without a reset would otherwise wait for ever).
        """
        self.prefix = _asPrefix(prefix)
        self.badValues = 0
        self._client = client
        self._follower = PrefixFollower(
            client,
            keyPrefix,
            self,
            reactor=reactor,
            label="namer %s" % (self.prefix,),
            log=_log,
            checkInterval=checkInterval,
        )
        self.keyPrefix = self._follower.keyPrefix
        self._services: dict[str, dict[str, _Instance]] = {}
        self._observables: dict[str, Observable] = {}
        self._unknown = Observable(Addr.neg())
        self._firstLoad = FirstLoad()
        self._ignoredKeys: set[str] = set()

    def __repr__(self) -> str:
        return "<EtcdNamer %s %s%s services=%d>" % (
            self.prefix, self._client.endpoint, self.keyPrefix, len(self._services),
        )

    # -- INamer -----------------------------------------------------------

    @property
    def loaded(self) -> bool:
        """
        See L{INamer.loaded}: whether the prefix was read once.
        """
        return self._firstLoad.done

    def whenLoaded(self) -> Deferred[None]:
        """
        See L{INamer.whenLoaded}: fires after the first successful read of
        the prefix (never while etcd cannot be reached: readiness then
        stops waiting after its fallback).
        """
        return self._firstLoad.wait()

    def bind(self, service: str) -> Observable:
        """
        See L{INamer.bind}.
        """
        observable = self._observables.get(service)
        if observable is not None:
            return observable
        if not _SERVICE.match(service):
            return self._unknown
        if len(self._observables) > _maxIdleNames + len(self._services):
            self._forgetUnknown()
        observable = self._observables[service] = Observable(self._addrOf(service))
        return observable

    def _forgetUnknown(self) -> None:
        for name, observable in list(self._observables.items()):
            if name not in self._services and not observable.subscribed:
                del self._observables[name]

    def _addrOf(self, service: str) -> Addr:
        instances = self._services.get(service)
        if instances is not None:
            return _bound(instances)
        if self._follower.readOnce:
            return Addr.neg()
        if self._follower.problem is not None:
            return Addr.failed("etcd: %s" % (self._follower.problem,))
        return Addr.pending()

    # -- the service ------------------------------------------------------

    def startService(self) -> None:
        """
        Read the prefix, then watch it.
        """
        super().startService()
        self._follower.start()

    def stopService(self) -> Deferred[None]:
        """
        Stop watching and close the client's connections; the bound
        observables keep their last values.
        """
        super().stopService()
        self._follower.stop()
        return self._client.close()

    # -- what the follower tells (IPrefixListener) -------------------------

    def prefixRead(self, revision: int, kvs: list[KeyValue], first: bool) -> None:
        """
        A whole read of the prefix: replace what is known by it, and tell
        every followed service its set (the same set is no change).
        """
        services: dict[str, dict[str, _Instance]] = {}
        for kv in kvs:
            self._put(services, kv)
        self._services = services
        for name in list(self._observables):
            self._publish(name)
        if first:
            _log.info(
                "namer {prefix}: {count} in etcd under {keyPrefix} (revision {revision})",
                prefix=str(self.prefix),
                count=_count(len(services), "service"),
                keyPrefix=self.keyPrefix,
                revision=revision,
            )

    def prefixLoaded(self) -> None:
        """
        The first read was taken: whoever waits for the first load sees the
        sets (and may stop the namer at once).
        """
        self._firstLoad.finish()

    def _put(self, services: dict[str, dict[str, _Instance]], kv: KeyValue) -> str | None:
        """
        Record one key in C{services}.

        @return: the service's name, or L{None} for a key that names none.
        """
        rest = kv.key[len(self.keyPrefix):]
        service, slash, instance = rest.partition("/")
        if not slash or not instance or not _SERVICE.match(service):
            if kv.key not in self._ignoredKeys and len(self._ignoredKeys) < _maxIdleNames:
                self._ignoredKeys.add(kv.key)
                _log.warn(
                    "namer {prefix}: ignoring etcd key {key!r}: expected"
                    " {keyPrefix}<service>/<instance>",
                    prefix=str(self.prefix), key=kv.key, keyPrefix=self.keyPrefix,
                )
            return None
        instances = services.setdefault(service, {})
        known = self._services.get(service, {}).get(kv.key)
        if known is not None and known.modRevision == kv.modRevision:
            instances[kv.key] = known
            return service
        try:
            endpoint: Endpoint | None = parseValue(kv.value)
        except ValueError as e:
            endpoint = None
            self.badValues += 1
            _log.warn(
                "namer {prefix}: ignoring the value of {key!r} (revision {revision}): {reason}",
                prefix=str(self.prefix), key=kv.key, revision=kv.modRevision, reason=e,
            )
        instances[kv.key] = _Instance(kv.modRevision, endpoint)
        return service

    def prefixEvents(self, events: list[WatchEvent], revision: int) -> None:
        """
        Changes the watch saw: tell the services they change.
        """
        changed = set()
        for event in events:
            kv = event.kv
            if event.kind == "put":
                service = self._put(self._services, kv)
                if service is not None:
                    changed.add(service)
                continue
            self._ignoredKeys.discard(kv.key)
            name = kv.key[len(self.keyPrefix):].partition("/")[0]
            instances = self._services.get(name)
            if instances is not None and instances.pop(kv.key, None) is not None:
                if not instances:
                    del self._services[name]
                changed.add(name)
        for name in changed:
            self._publish(name)

    def _publish(self, service: str) -> None:
        observable = self._observables.get(service)
        if observable is not None:
            observable.set(self._addrOf(service))

    def prefixLost(self, reason: str) -> None:
        """
        etcd cannot be followed now: keep every set, and say so (once per
        outage); a service never read is then failed.
        """
        if not self._follower.readOnce:
            _log.warn(
                "namer {prefix}: cannot read {keyPrefix} from etcd: {reason}; retrying",
                prefix=str(self.prefix), keyPrefix=self.keyPrefix, reason=reason,
            )
            for name in list(self._observables):
                self._publish(name)
            return
        _log.warn(
            "namer {prefix}: lost etcd ({reason}); keeping the last known endpoints"
            " (revision {revision}) and retrying",
            prefix=str(self.prefix), reason=reason, revision=self.revision,
        )

    # -- what the admin API shows -----------------------------------------

    def state(self) -> dict[str, Any]:
        """
        A JSON-ready view for C{GET /admin/state}::

            {"kind": "etcd", "endpoint": "http://127.0.0.1:2379",
             "keyPrefix": "/meshproxy/services/", "loaded": true,
             "stale": false, "staleSeconds": null, "problem": null,
             "revision": 42, "services": 3, "keys": 7,
             "disconnects": 0, "errors": 0, "resyncs": 0, "badValues": 0}

        C{staleSeconds} is how long etcd has not been followed (L{None}
        while it is), C{problem} why.
        """
        return {
            "kind": "etcd",
            "loaded": self.loaded,
            **self._follower.state(),
            "services": len(self._services),
            "keys": sum(len(instances) for instances in self._services.values()),
            "badValues": self.badValues,
        }


def _bound(instances: dict[str, _Instance]) -> Addr:
    """
    The address of a service's instances: the valid ones, one per address
    (the most recently written wins).
    """
    byAddress: dict[tuple[str, int], tuple[int, Endpoint]] = {}
    for instance in instances.values():
        endpoint = instance.endpoint
        if endpoint is None:
            continue
        known = byAddress.get(endpoint.address)
        if known is None or known[0] < instance.modRevision:
            byAddress[endpoint.address] = (instance.modRevision, endpoint)
    return Addr.bound(frozenset(endpoint for _, endpoint in byAddress.values()))


def _count(n: int, word: str) -> str:
    return "1 %s" % (word,) if n == 1 else "%d %ss" % (n, word)


class EtcdRegistration:
    """
    Keep one instance registered in etcd: its key (L{serviceKey}) attached
    to a lease kept alive every third of its time to live.

    When etcd cannot be reached, the keep-alive is tried again (jittered
    backoff from 100 ms to 1 s); when the lease is gone (it expired while
    etcd was unreachable, or etcd lost it), the instance registers again
    with a new lease. L{stop} deletes the key and revokes the lease.

    @ivar key: the instance's key.
    @ivar value: its value.
    @ivar lease: the current lease's ID, or 0 when not registered.
    @ivar registrations: how many times the key was written (1 after the
        start, more after re-registrations).
    """

    def __init__(
        self,
        client: EtcdClient,
        keyPrefix: str,
        service: str,
        endpoint: Endpoint,
        *,
        ttl: int,
        reactor: Any,
        report: Callable[[str], object] | None = None,
    ) -> None:
        """
        @param client: the L{EtcdClient}.
        @param keyPrefix: the namers' key prefix.
        @param service: the service's name.
        @param endpoint: the instance.
        @param ttl: the lease's time to live, whole seconds, at least 1.
        @param reactor: the clock of the keep-alives.
        @param report: called with a line of text on each change (lost,
            back, registered again), besides the log.
        @raise ValueError: on a bad service name or TTL.
        """
        if ttl < 1:
            raise ValueError("the TTL must be at least 1 s, got %r" % (ttl,))
        self.key = serviceKey(keyPrefix, service, endpoint)
        self.value = formatValue(endpoint)
        self.ttl = ttl
        self.lease = 0
        self.registrations = 0
        self._client = client
        self._reactor = reactor
        self._report = report
        self._backoff = client.backoff()
        self._attempt = 0
        self._call: Any = None
        self._pending: Deferred[Any] | None = None
        self._stopped = False
        self._down: str | None = None

    def _say(self, text: str) -> None:
        _log.info("{text}", text=text)
        if self._report is not None:
            self._report(text)

    def start(self) -> Deferred[None]:
        """
        Register: a lease, then the key attached to it.

        @return: a L{Deferred} firing once registered, or failing with the
            L{EtcdError} that prevented it (nothing is retried then).
        """

        async def start() -> None:
            await self._register()
            self._schedule(self.ttl / 3.0)

        return Deferred.fromCoroutine(start())

    async def _register(self) -> None:
        lease, granted = await self._client.leaseGrant(self.ttl)
        try:
            await self._client.put(self.key, self.value, lease=lease)
        except Exception:
            # Do not leave a lease behind (it would expire anyway).
            self._client.leaseRevoke(lease).addErrback(lambda _: None)
            raise
        self.lease = lease
        self.registrations += 1
        self._say(
            "registered %s = %s (lease %x, ttl %d s)"
            % (self.key, self.value.decode("utf-8"), lease, granted or self.ttl)
        )

    def _schedule(self, delay: float) -> None:
        if not self._stopped:
            self._call = self._reactor.callLater(delay, self._keepAlive)

    def _keepAlive(self) -> None:
        self._call = None

        async def keepAlive() -> None:
            if self.lease:
                ttl = await self._client.leaseKeepAlive(self.lease)
                if ttl > 0:
                    return
                self._say(
                    "lease %x is gone (expired or revoked): registering again" % (self.lease,)
                )
                self.lease = 0
            await self._register()

        pending = self._pending = Deferred.fromCoroutine(keepAlive())

        def done(_: object) -> None:
            self._pending = None
            self._attempt = 0
            if self._down is not None:
                self._say("etcd is back (%s was unreachable)" % (self._down,))
                self._down = None
            self._schedule(self.ttl / 3.0)

        def failed(failure: Any) -> None:
            self._pending = None
            if self._stopped:
                return
            reason = str(failure.value) if failure.check(EtcdError) else repr(failure.value)
            if self._down is None:
                self._down = self._client.endpoint
                self._say("cannot keep the registration alive: %s; retrying" % (reason,))
            self._attempt += 1
            self._schedule(self._backoff.delay(self._attempt))

        pending.addCallbacks(done, failed)

    def stop(self) -> Deferred[bool]:
        """
        Deregister: delete the key and revoke the lease (each within the
        client's timeout; a failure is reported, not raised).

        @return: a L{Deferred} firing once done, with whether the key was
            deleted (if not, it goes when its lease expires).
        """
        self._stopped = True
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.cancel()

        async def stop() -> bool:
            lease, self.lease = self.lease, 0
            try:
                await self._client.delete(self.key)
                if lease:
                    await self._client.leaseRevoke(lease)
            except Exception as e:
                self._say(
                    "could not deregister %s: %s (it expires with its lease)" % (self.key, e)
                )
                return False
            self._say("deregistered %s" % (self.key,))
            return True

        return Deferred.fromCoroutine(stop())
