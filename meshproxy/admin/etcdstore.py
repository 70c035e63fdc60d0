"""
Rules and access policies kept in etcd (the C{rulesStore} section): one
source of truth that every proxy on the same key prefix follows.

L{EtcdStores} is one service per process. It reads the key prefix once,
then follows it with one watch (resumed from the last revision seen when
etcd comes back, read again when etcd compacted that revision away). For
each router it makes an L{EtcdVersionedStore} of its policy and, for an
HTTP router, an L{EtcdRulesStore} of its rules: what the admin API uses in
place of the local L{RulesStore<meshproxy.admin.rules.RulesStore>} and
L{PolicyStore<meshproxy.admin.policy.PolicyStore>}, with the same methods
and the same JSON shapes (C{current}, C{validate}, C{replace}, C{rollback},
C{history}, C{dryRun}), except that C{replace} and C{rollback} return a
L{Deferred}.

The keys, under the key prefix C{P} (router names are
C{[A-Za-z0-9_-]+}, so none of these can be taken for another)::

    P<router>                          the router's rules
    P policy/<router>                  its access policy
    P history/rules/<router>/<id>      the rules accepted, one key per change
    P history/policy/<router>/<id>     the policies accepted

A value is JSON: C{{"rules": "<dtab>", "author": "…", "time": "…"}} (or
C{"policy": {…}} for a policy); C{author} is who made the change (C{config}
for a value a proxy wrote from its config, else as the local history
says: C{token}, or the caller's address) and C{time} when, in ISO 8601 UTC.
A value written by hand may be the rules text alone (C{etcdctl put
/meshproxy/rules/web '/svc => /#/fs;'}), or a policy's JSON alone.

How the proxies follow the store:

  - B{the version} of a value, its C{ETag}, is the C{mod_revision} of its
    key (C{"0"} while the key does not exist);
  - B{at start}, a router whose key is absent writes its config's value
    with a create-only transaction; a key that is present wins over the
    config (with a warning when they differ). A key deleted later is
    written again the same way, so deleting it resets the router to the
    config's value (of the first proxy that sees the delete);
  - B{a change} through the admin API of any proxy is a transaction in etcd
    that compares the key's C{mod_revision} with the C{If-Match} version:
    a stale version gets 412 whichever proxy it goes through. The proxy
    that made it applies it at once; every other applies it from its watch;
  - B{the history} is kept in etcd, one key per accepted value written in
    the same transaction as the value, at most L{HISTORY_SIZE} per router
    and kind (each change deletes the oldest): every proxy shows the same
    history, and a rollback (to a version in it) is a new change;
  - B{while etcd cannot be reached}, the values in force stay, the store is
    shown C{stale} in C{/admin/state}, and a change is refused (503): no
    proxy ever applies a change the store did not take. The watch comes
    back after a jittered backoff from 100 ms to 1 s;
  - a value a proxy cannot use (its rules name a namer this proxy does not
    have) is logged and shown as C{rejected}; that proxy keeps the value it
    had.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Collection
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, gatherResults
from twisted.logger import Logger
from zope.interface import implementer

from meshproxy.admin.policy import _Policy
from meshproxy.admin.rules import RulesStore, _Rules
from meshproxy.admin.versioned import (
    InvalidValue,
    IVersioned,
    PersistError,
    StaleVersion,
    UnknownVersion,
    _diff,
    _isoTime,
)
from meshproxy.discovery.interfaces import FirstLoad
from meshproxy.etcd import (
    EtcdClient,
    EtcdError,
    EtcdUnavailable,
    FollowsPrefix,
    IPrefixListener,
    KeyValue,
    PrefixFollower,
    WatchEvent,
    _rangeResult,
    clientFor,
    compare,
    opDelete,
    opPut,
    opRange,
)

__all__ = [
    "HISTORY_SIZE",
    "EtcdRulesStore",
    "EtcdStores",
    "EtcdVersionedStore",
    "StoreUnavailable",
    "encodeValue",
    "parseValue",
    "storesFor",
]

_log = Logger()
_audit = Logger(namespace="meshproxy.admin.audit")

HISTORY_SIZE = 20
"""How many accepted values of one router's rules (or policy) etcd keeps."""

#: Keys under the prefix that are neither a router's value nor its
#: history are logged once each, up to this many.
_MAX_IGNORED = 1024


class StoreUnavailable(PersistError):
    """
    The store could not be reached, or did not say whether it took the
    change: nothing changed on this proxy. The admin API answers 503.
    """

    status = 503


def encodeValue(kind: str, value: Any, author: str, time: str) -> bytes:
    """
    The value of a router's key.

    @param kind: C{"rules"} or C{"policy"}: the JSON key of C{value}.
    @param value: the rules text, or the policy in canonical form.
    @param author: who made the change.
    @param time: when, ISO 8601 UTC.
    """
    return json.dumps({kind: value, "author": author, "time": time}).encode("utf-8")


def parseValue(kind: str, raw: bytes) -> tuple[Any, str | None, str | None]:
    """
    Read the value of a router's key (or of a history key).

    @param kind: C{"rules"} or C{"policy"}.
    @param raw: the value as etcd holds it: the JSON L{encodeValue} writes;
        or, written by hand, the rules text alone or the policy's JSON
        alone.
    @return: C{(value, author, time)}, the last two L{None} when not given.
    @raise ValueError: when it is neither.
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("not UTF-8 text") from None
    if not text.lstrip().startswith("{"):
        if kind == "rules":
            return text, None, None
        raise ValueError("a policy is a JSON object")
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as e:
        raise ValueError("not valid JSON: %s" % (e,)) from None
    if not isinstance(data, dict):
        raise ValueError("expected a JSON object")
    if kind not in data:
        if kind == "policy" and "author" not in data:
            # A policy's JSON written by hand.
            return data, None, None
        raise ValueError("expected %r in the JSON object" % (kind,))
    author, time = data.get("author"), data.get("time")
    return (
        data[kind],
        author if isinstance(author, str) else None,
        time if isinstance(time, str) else None,
    )


def _base(ifMatch: str | Collection[str], known: int) -> int | None:
    """
    The revision a change compares the key with.

    @param ifMatch: C{"*"} or the versions C{If-Match} names.
    @param known: the key's revision as this proxy last saw it.
    @return: C{known} when C{ifMatch} names it (or is C{"*"}); the newest
        version named when it is newer than C{known} (the caller saw it
        through another proxy, before this one's watch brought it); else
        L{None}: stale.
    """
    if isinstance(ifMatch, str):
        if ifMatch == "*":
            return known
        ifMatch = (ifMatch,)
    if "*" in ifMatch:
        return known
    named = {int(v) for v in ifMatch if v.isascii() and v.isdigit() and len(v) < 20}
    if known in named:
        return known
    newer = [v for v in named if v > known]
    return max(newer) if newer else None


class EtcdVersionedStore:
    """
    One router's value (its rules or its policy) kept in etcd: what the
    admin API uses for it (see the module docstring).

    Made by L{EtcdStores.addRouter}, which feeds it what its watch sees.

    @ivar key: the etcd key of the value.
    @ivar historyPrefix: the prefix of its history keys.
    @ivar revision: the key's C{mod_revision} as last seen (0 while it does
        not exist, or before the first read): the version in C{ETag}.
    @ivar applied: the revision of the value in force (0: the config's,
        not from the store yet).
    @ivar rejected: C{{"revision", "error"}} when the value at C{revision}
        could not be used here, else L{None}.
    """

    def __init__(
        self,
        stores: EtcdStores,
        subject: IVersioned,
        registry: dict[str, Any],
        *,
        clock: Any,
    ) -> None:
        """
        @param stores: the L{EtcdStores} that follows the keys.
        @param subject: the value, as the local store sees it.
        @param registry: the mapping of router name to store this store is
            kept in (the runtime's C{rulesStores} or C{policyStores}):
            while it is not there (its router was removed), nothing from
            etcd is applied.
        @param clock: an C{IReactorTime}, for the times of changes.
        """
        self._stores = stores
        self._subject = subject
        self._registry = registry
        self._clock = clock
        self.key = stores.keyOf(subject.kind, subject.router)
        self.historyPrefix = stores.historyPrefixOf(subject.kind, subject.router)
        self.revision = 0
        self.applied = 0
        self.rejected: dict[str, Any] | None = None
        self._configValue = subject.current()
        self._kv: KeyValue | None = None
        self._seenAt = clock.seconds()
        self._synced = False
        self._creating: Deferred[Any] | None = None
        self._retry: Any = None
        self._attempt = 0

    def __repr__(self) -> str:
        return "<%s %s at %d>" % (type(self).__name__, self.key, self.revision)

    # -- what the admin API uses ---------------------------------------------------------------

    @property
    def kind(self) -> str:
        """
        What this store keeps (C{"rules"}, C{"policy"}).
        """
        return str(self._subject.kind)

    @property
    def router(self) -> str:
        """
        The router's name.
        """
        return str(self._subject.router)

    @property
    def path(self) -> None:
        """
        No state file: the store is etcd.
        """
        return None

    def active(self) -> bool:
        """
        Whether this is the store of its router now (a removed router's is
        not).
        """
        return self._registry.get(self.router) is self

    def current(self) -> tuple[Any, str]:
        """
        The value in force and the version a change must name.

        @return: C{(value, version)}: C{version} is the key's revision as
            last seen, C{"0"} while it does not exist.
        """
        return self._subject.current(), str(self.revision)

    def validate(self, value: Any) -> Any:
        """
        Check a value without applying it.

        @raise InvalidValue: if the router refuses it.
        """
        return self._subject.validate(value)[0]

    def history(self) -> list[dict[str, Any]]:
        """
        The accepted values, newest first, the one in the store included:
        C{[{"version", "time", "who", field}]} as the local store gives
        them (C{field} is C{"text"} for the rules, C{"policy"} for a
        policy), at most L{HISTORY_SIZE}. A value written by hand has
        C{"who": "etcd"}, and the time this proxy first saw it.
        """
        kind, field = self.kind, self._subject.field
        entries = []
        for kv in self._historyKeys():
            try:
                value, author, time = parseValue(kind, kv.value)
            except ValueError:
                continue
            entries.append({
                "version": str(kv.modRevision),
                "time": time or "",
                "who": author or "etcd",
                field: value,
            })
        head: dict[str, Any] | None = None
        if self._kv is not None:
            if not entries or entries[0]["version"] != str(self.revision):
                try:
                    value, author, time = parseValue(kind, self._kv.value)
                except ValueError:
                    pass
                else:
                    head = {"version": str(self.revision), "time": time, "who": author or "etcd",
                            field: value}
        elif not entries:
            head = {"version": "0", "time": None, "who": "config", field: self._subject.current()}
        if head is not None:
            head["time"] = head["time"] or _isoTime(self._seenAt)
            entries.insert(0, head)
        return entries[: self._stores.historySize]

    def replace(
        self, value: Any, ifMatch: str | Collection[str], who: str
    ) -> Deferred[tuple[str, str]]:
        """
        Replace the value in etcd, if its key is at the version the caller
        names, and apply it here once etcd took it.

        @param value: the new value.
        @param ifMatch: C{"*"}, or the versions (revisions) the change may
            be based on.
        @param who: who asks, for the history and the audit log.
        @return: a L{Deferred} firing with C{(previousVersion, newVersion)}
            (equal when the value is the one in the store already: nothing
            is written), or failing with L{InvalidValue}, L{StaleVersion}
            (with the key's revision now), L{StoreUnavailable} (etcd could
            not be reached, or did not say whether it took the change) or
            L{PersistError} (etcd refused the write).
        """
        return Deferred.fromCoroutine(self._replace(value, ifMatch, who))

    def rollback(
        self, version: str, ifMatch: str | Collection[str], who: str
    ) -> Deferred[tuple[str, str]]:
        """
        Write again the value of a version of the history, as a new change
        (see L{replace}).

        @raise UnknownVersion: (at once) if C{version} is not in the
            history.
        """
        field = self._subject.field
        for entry in self.history():
            if entry["version"] == version:
                return self.replace(entry[field], ifMatch, who)
        raise UnknownVersion(version)

    def state(self) -> dict[str, Any]:
        """
        What C{/admin/state} shows of this store: C{{"key", "revision",
        "applied", "rejected"}}.
        """
        return {
            "key": self.key,
            "revision": self.revision,
            "applied": self.applied,
            "rejected": self.rejected,
        }

    # -- changes through the admin API ---------------------------------------------------------

    async def _replace(
        self, value: Any, ifMatch: str | Collection[str], who: str
    ) -> tuple[str, str]:
        subject, stores = self._subject, self._stores
        _, canonical = subject.validate(value)
        if not stores.loaded:
            stores.refused += 1
            raise StoreUnavailable(
                "the %s store in etcd has not been read yet (%s): nothing changed; try again"
                " once etcd answers" % (self.kind, stores.problem or "reading")
            )
        # "*" means whatever the store holds: tried again if this proxy's
        # view was behind.
        anything = ifMatch == "*" or (not isinstance(ifMatch, str) and "*" in ifMatch)
        for _ in range(3 if anything else 1):
            known = self.revision
            base = _base(ifMatch, known)
            if base is None:
                stores.conflicts += 1
                raise StaleVersion(str(known), self.kind)
            if base != known:
                # The caller names a newer revision than this proxy saw
                # (through another proxy): read the key.
                kv = await self._call(stores.client.get(self.key))
                if kv is None:
                    stores.conflicts += 1
                    raise StaleVersion("0", self.kind)
                stores._remember(self.key, kv)
                self._take(kv)
                if self.revision != base:
                    stores.conflicts += 1
                    raise StaleVersion(str(self.revision), self.kind)
                known = base
            if self._kv is not None and self._stored() == canonical:
                _log.info(
                    "{kind} of router {router} unchanged (etcd revision {version}), asked by {who}",
                    kind=self.kind, router=self.router, version=known, who=who,
                )
                return str(known), str(known)
            old = subject.current()
            ok, revision, current = await self._write(canonical, known, who)
            if ok:
                _audit.info(
                    "{kind} of router {router} changed by {who} at {when} in the rules store"
                    " ({key}): {old} -> {new}\n{diff}",
                    kind=self.kind, router=self.router, who=who, key=self.key,
                    when=_isoTime(self._clock.seconds()), old=known, new=revision,
                    diff=_diff(
                        self.router, str(known), subject.show(old), str(revision),
                        subject.show(canonical),
                    ),
                )
                return str(known), str(revision)
            if current is None:
                # Deleted meanwhile: the watch brings the delete.
                stores.conflicts += 1
                raise StaleVersion("0", self.kind)
            self._take(current)
        stores.conflicts += 1
        raise StaleVersion(str(self.revision), self.kind)

    async def _call(self, d: Deferred[Any]) -> Any:
        """
        Wait for a read from etcd, its failure told as the admin API tells
        it.
        """
        stores = self._stores
        try:
            return await d
        except EtcdUnavailable as e:
            stores.refused += 1
            raise StoreUnavailable(
                "the %s store in etcd cannot be reached (%s): nothing changed" % (self.kind, e)
            ) from None
        except EtcdError as e:
            stores.refused += 1
            raise PersistError("the %s store in etcd failed: %s" % (self.kind, e)) from None

    async def _write(
        self, value: Any, known: int, who: str
    ) -> tuple[bool, int, KeyValue | None]:
        """
        The transaction of a change: if the key is still at C{known}, write
        the value and its history key, and delete the history beyond the
        bound; then apply it here.

        @return: C{(written, revision, current)}: C{current} is the key as
            it is when not written (L{None} if it does not exist).
        """
        stores = self._stores
        data = encodeValue(self.kind, value, who, _isoTime(self._clock.seconds()))
        historyKey = self._historyKey(known)
        trimmed = [kv.key for kv in self._historyKeys()[stores.historySize - 1:]]
        target = "MOD" if known else "CREATE"
        try:
            ok, revision, responses = await stores.client.txn(
                [compare(self.key, target, known)],
                [opPut(self.key, data), opPut(historyKey, data)]
                + [opDelete(key) for key in trimmed],
                [opRange(self.key)],
            )
        except EtcdUnavailable as e:
            stores.refused += 1
            raise StoreUnavailable(
                "the %s store in etcd cannot be reached (%s): nothing changed" % (self.kind, e)
            ) from None
        except EtcdError as e:
            stores.refused += 1
            if e.code is None:
                # Sent, but no answer: etcd may have applied it. The watch
                # will tell; nothing is applied here until then.
                raise StoreUnavailable(
                    "the %s store in etcd did not answer (%s): the change may or may not"
                    " have been taken; read the %s to see" % (self.kind, e, self.kind)
                ) from None
            raise PersistError(
                "the %s store in etcd refused the change: %s" % (self.kind, e)
            ) from None
        if not ok:
            current = _rangeResult(responses)
            stores._remember(self.key, current)
            return False, 0, current
        stores.writes += 1
        kv = KeyValue(self.key, data, revision, createRevision=0 if known else revision)
        stores._remember(self.key, kv)
        stores._remember(historyKey, KeyValue(historyKey, data, revision, revision, 1))
        for key in trimmed:
            stores._forget(key, revision)
        self._take(kv)
        return True, revision, None

    def _historyKey(self, known: int) -> str:
        """
        The history key of the value replacing revision C{known} (unique:
        a revision is replaced once; a creation gets a random suffix).
        """
        if known:
            return "%s%020d" % (self.historyPrefix, known)
        return "%s%020d-%s" % (self.historyPrefix, 0, secrets.token_hex(4))

    def _historyKeys(self) -> list[KeyValue]:
        """
        This value's history keys as last seen, newest first.
        """
        return sorted(
            self._stores._under(self.historyPrefix), key=lambda kv: kv.modRevision, reverse=True
        )

    def _stored(self) -> Any:
        """
        The value of the key as last seen, in canonical form, or L{None}
        when it is absent or not usable.
        """
        if self._kv is None:
            return None
        try:
            value, _, _ = parseValue(self.kind, self._kv.value)
            return self._subject.validate(value)[1]
        except (ValueError, InvalidValue):
            return None

    # -- what the watch sees -------------------------------------------------------------------

    def _sync(self, kv: KeyValue | None, revision: int) -> None:
        """
        A whole read of the prefix (or this store was just made): the key
        as it is at C{revision}.
        """
        first = not self._synced
        self._synced = True
        if kv is None:
            if self._kv is not None and self._kv.modRevision > revision:
                # Written here after that read.
                return
            if self._kv is not None:
                self._follow(None, revision)
            else:
                self._create()
            return
        if first and self.active():
            try:
                value, _, _ = parseValue(self.kind, kv.value)
                differs = self._subject.validate(value)[1] != self._configValue
            except (ValueError, InvalidValue):
                differs = True
            if differs:
                _log.warn(
                    "router {router}: {key} (revision {revision}) in the rules store is not"
                    " the config's {kind}: using the store's; with a rulesStore, the config's"
                    " {kind} only fill an empty store",
                    router=self.router, kind=self.kind, key=self.key, revision=kv.modRevision,
                )
        self._take(kv)

    def _follow(self, kv: KeyValue | None, revision: int) -> None:
        """
        A change the watch saw: the key put (C{kv}) or deleted (L{None}) at
        C{revision}.
        """
        if kv is not None:
            self._take(kv)
            return
        if self._kv is None or revision <= self._kv.modRevision:
            return
        self._kv = None
        self.revision = 0
        self._seenAt = self._clock.seconds()
        if self.active():
            _log.warn(
                "router {router}: {key} was deleted from the rules store: writing the"
                " config's {kind} back (create-only); the {kind} in force stay until then",
                router=self.router, key=self.key, kind=self.kind,
            )
        self._create()

    def _take(self, kv: KeyValue) -> None:
        """
        The key at a revision: apply its value if it is newer than what was
        seen, and this router can use it.
        """
        if self._kv is not None and kv.modRevision <= self._kv.modRevision:
            return
        self._kv = kv
        self.revision = kv.modRevision
        self._seenAt = self._clock.seconds()
        if not self.active():
            return
        subject = self._subject
        try:
            value, author, _ = parseValue(self.kind, kv.value)
            if value == subject.current():
                # What is in force already (the config's own, say).
                self.rejected = None
                self.applied = kv.modRevision
                return
            prepared, canonical = subject.validate(value)
        except (ValueError, InvalidValue) as e:
            error = e.details().get("error", str(e)) if isinstance(e, InvalidValue) else str(e)
            self.rejected = {"revision": kv.modRevision, "error": str(error)}
            _log.error(
                "router {router}: cannot use the {kind} of revision {revision} in the rules"
                " store ({key}): {error}; keeping the {kind} in force (revision {applied})",
                router=self.router, kind=self.kind, revision=kv.modRevision, key=self.key,
                error=error, applied=self.applied,
            )
            return
        self.rejected = None
        self.applied = kv.modRevision
        if canonical == subject.current():
            return
        subject.apply(prepared, canonical)
        _log.info(
            "router {router}: applied the {kind} of revision {revision} from the rules store"
            " (by {author})",
            router=self.router, kind=self.kind, revision=kv.modRevision,
            author=author or "etcd",
        )

    def _create(self) -> None:
        """
        Write the config's value, if the key does not exist (create-only),
        and take whatever the key holds then. Tried again (100 ms to 1 s)
        until etcd answers.
        """
        if self._creating is not None or not self.active():
            return
        if self._retry is not None and self._retry.active():
            return
        stores = self._stores
        data = encodeValue(self.kind, self._configValue, "config", _isoTime(self._clock.seconds()))
        historyKey = self._historyKey(0)
        trimmed = [kv.key for kv in self._historyKeys()[stores.historySize - 1:]]
        creating = self._creating = stores.client.txn(
            [compare(self.key, "CREATE", 0)],
            [opPut(self.key, data), opPut(historyKey, data)] + [opDelete(k) for k in trimmed],
            [opRange(self.key)],
        )

        def created(result: tuple[bool, int, list[dict[str, Any]]]) -> None:
            self._creating = None
            self._attempt = 0
            ok, revision, responses = result
            if ok:
                stores.writes += 1
                kv = KeyValue(self.key, data, revision, revision, 1)
                stores._remember(self.key, kv)
                stores._remember(historyKey, KeyValue(historyKey, data, revision, revision, 1))
                for key in trimmed:
                    stores._forget(key, revision)
                _log.info(
                    "router {router}: no {kind} in the rules store yet: wrote the config's"
                    " to {key} (revision {revision})",
                    router=self.router, kind=self.kind, key=self.key, revision=revision,
                )
                self._take(kv)
                return
            current = _rangeResult(responses)
            stores._remember(self.key, current)
            if current is not None:
                self._take(current)

        def failed(failure: Any) -> None:
            self._creating = None
            if not stores.running:
                return
            self._attempt += 1
            if self._attempt == 1:
                _log.warn(
                    "router {router}: cannot write the config's {kind} to the rules store"
                    " ({key}): {error}; trying again",
                    router=self.router, kind=self.kind, key=self.key,
                    error=str(failure.value) if failure.check(EtcdError) else repr(failure.value),
                )
            self._retry = self._clock.callLater(
                stores.backoff.delay(self._attempt), self._retryCreate
            )

        creating.addCallbacks(created, failed)

    def _retryCreate(self) -> None:
        self._retry = None
        if self._kv is None and self._stores.running:
            self._create()

    def _stop(self) -> None:
        """
        The service stops: no more retries.
        """
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        if self._creating is not None:
            creating, self._creating = self._creating, None
            creating.cancel()


class EtcdRulesStore(EtcdVersionedStore):
    """
    The rules of one HTTP router kept in etcd, and their dry run.
    """

    def dryRun(self, text: str, names: list[str] | None = None) -> dict[str, Any]:
        """
        Validate rules and show where the names seen in recent traffic
        (or C{names}) would go under them, without applying them (as
        L{RulesStore.dryRun<meshproxy.admin.rules.RulesStore.dryRun>}).

        @raise InvalidRules: if the router refuses C{text}.
        """
        subject: Any = self._subject
        return RulesStore(subject.table, stateDir=None, clock=self._clock).dryRun(text, names)


@implementer(IPrefixListener)
class EtcdStores(FollowsPrefix, Service):
    """
    The rules and policies of every router of this process, kept in etcd
    under one key prefix (see the module docstring): one read of the
    prefix, then one watch, by a L{PrefixFollower}.

    @ivar client: the L{EtcdClient}.
    @ivar keyPrefix: the key prefix, ending with C{/}.
    @ivar historySize: how many accepted values of each kept in etcd.
    @ivar backoff: the L{Backoff} of retries (the follower's).
    @ivar writes: the changes (and creations) etcd took from this proxy.
    @ivar conflicts: the changes refused as stale (412).
    @ivar refused: the changes refused because etcd could not be reached
        or refused them (503, 500).
    """

    def __init__(
        self,
        client: EtcdClient,
        keyPrefix: str,
        *,
        reactor: Any,
        checkInterval: float = 10.0,
        historySize: int = HISTORY_SIZE,
    ) -> None:
        """
        @param client: the L{EtcdClient}; closed when the service stops.
        @param keyPrefix: the key prefix (C{/meshproxy/rules/}); a C{/} is
            added if it does not end with one.
        @param reactor: the clock of retries and of the stale age.
        @param checkInterval: seconds between checks that etcd still
            answers while the watch looks established.
        @param historySize: how many accepted values of each router's rules
            (and policy) to keep in etcd, at least 1.
        """
        if historySize < 1:
            raise ValueError("historySize must be at least 1")
        self.client = client
        self._follower = PrefixFollower(
            client,
            keyPrefix,
            self,
            reactor=reactor,
            label="rules store",
            log=_log,
            checkInterval=checkInterval,
        )
        self.keyPrefix = self._follower.keyPrefix
        self.historySize = historySize
        self.backoff = self._follower.backoff
        self.writes = 0
        self.conflicts = 0
        self.refused = 0
        self._kvs: dict[str, KeyValue] = {}
        self._stores: dict[str, EtcdVersionedStore] = {}
        self._firstLoad = FirstLoad()
        self._ignored: set[str] = set()

    def __repr__(self) -> str:
        return "<EtcdStores %s%s>" % (self.client.endpoint, self.keyPrefix)

    @property
    def description(self) -> str:
        """
        The store in words, for logs and readiness: C{etcd /meshproxy/rules/}.
        """
        return "etcd %s" % (self.keyPrefix,)

    # -- keys ------------------------------------------------------------------------------------

    def keyOf(self, kind: str, router: str) -> str:
        """
        The key of a router's rules (C{<prefix><router>}) or policy
        (C{<prefix>policy/<router>}).
        """
        if kind == "rules":
            return self.keyPrefix + router
        return "%s%s/%s" % (self.keyPrefix, kind, router)

    def historyPrefixOf(self, kind: str, router: str) -> str:
        """
        The prefix of the history keys of a router's rules or policy
        (C{<prefix>history/<kind>/<router>/}).
        """
        return "%shistory/%s/%s/" % (self.keyPrefix, kind, router)

    def _under(self, prefix: str) -> list[KeyValue]:
        return [kv for key, kv in self._kvs.items() if key.startswith(prefix)]

    def _remember(self, key: str, kv: KeyValue | None) -> None:
        """
        What a write or a read of one key said, unless something newer was
        seen.
        """
        known = self._kvs.get(key)
        if kv is None:
            return
        if known is None or known.modRevision < kv.modRevision:
            self._kvs[key] = kv

    def _forget(self, key: str, revision: int) -> None:
        """
        A key deleted at C{revision}, unless it was written after.
        """
        known = self._kvs.get(key)
        if known is not None and known.modRevision < revision:
            del self._kvs[key]

    # -- routers ---------------------------------------------------------------------------------

    def addRouter(self, runtime: Any, name: str, *, clock: Any) -> None:
        """
        Give router C{name} its policy store and (an HTTP router) rules
        store in etcd, put in C{runtime.policyStores} and
        C{runtime.rulesStores}: at startup, and for a router a reload
        adds. Once the prefix was read, each takes the store's value at
        once (or writes the config's if its key is absent).

        @param runtime: the L{Runtime<meshproxy.runtime.Runtime>}.
        @param clock: an C{IReactorTime}.
        """
        from meshproxy.reload import PolicySlot, RulesSlot

        router = runtime.routers[name]
        stores: list[EtcdVersionedStore] = []
        policy = runtime.policyStores[name] = EtcdVersionedStore(
            self, _Policy(PolicySlot(runtime, name)), runtime.policyStores, clock=clock
        )
        stores.append(policy)
        if router.rules is not None:
            rules = runtime.rulesStores[name] = EtcdRulesStore(
                self, _Rules(RulesSlot(runtime, name)), runtime.rulesStores, clock=clock
            )
            stores.append(rules)
        _log.info(
            "router {router}: {what} kept in the rules store ({keys})",
            router=name,
            what="rules and access policy" if len(stores) == 2 else "access policy",
            keys=", ".join(store.key for store in reversed(stores)),
        )
        for store in stores:
            previous = self._stores.get(store.key)
            if previous is not None:
                previous._stop()
            self._stores[store.key] = store
            if self._follower.readOnce:
                store._sync(self._kvs.get(store.key), self.revision)

    # -- readiness -------------------------------------------------------------------------------

    @property
    def loaded(self) -> bool:
        """
        Whether the prefix was read once.
        """
        return self._firstLoad.done

    def whenLoaded(self) -> Deferred[None]:
        """
        A L{Deferred} firing after the first read of the prefix.
        """
        return self._firstLoad.wait()

    # -- the service -----------------------------------------------------------------------------

    def startService(self) -> None:
        """
        Read the prefix, then watch it.
        """
        super().startService()
        self._follower.start()

    def stopService(self) -> Deferred[None]:
        """
        Stop watching and close the client's connections; the values in
        force stay.
        """
        super().stopService()
        self._follower.stop()
        for store in self._stores.values():
            store._stop()
        return self.client.close()

    # -- what the follower tells (IPrefixListener) -----------------------------------------------

    def prefixRead(self, revision: int, kvs: list[KeyValue], first: bool) -> None:
        """
        A whole read of the prefix: it replaces what was seen (but for keys
        written here after it), and every store takes its key.
        """
        seen = {kv.key: kv for kv in kvs}
        for key, kv in self._kvs.items():
            if kv.modRevision > revision and key not in seen:
                seen[key] = kv
        self._kvs = seen
        for kv in kvs:
            self._checkKey(kv.key)
        for key, store in list(self._stores.items()):
            store._sync(self._kvs.get(key), revision)
        if first:
            _log.info(
                "rules store: {count} keys in etcd under {keyPrefix} (revision {revision})",
                count=len(kvs), keyPrefix=self.keyPrefix, revision=revision,
            )

    def prefixLoaded(self) -> None:
        """
        Loaded once every store knows its key's revision: the config's
        values written where absent (or the attempt failed).
        """
        creating = [
            store._creating for store in self._stores.values() if store._creating is not None
        ]
        gatherResults([_follow(d) for d in creating]).addCallback(
            lambda _: self._firstLoad.finish()
        )

    def _checkKey(self, key: str) -> None:
        """
        Log once a key under the prefix that is no router's value or
        history.
        """
        rest = key[len(self.keyPrefix):]
        parts = rest.split("/")
        if len(parts) == 1 or (len(parts) == 2 and parts[0] == "policy"):
            return
        if len(parts) == 4 and parts[0] == "history" and parts[1] in ("rules", "policy"):
            return
        if key in self._ignored or len(self._ignored) >= _MAX_IGNORED:
            return
        self._ignored.add(key)
        _log.warn(
            "rules store: ignoring etcd key {key!r}: expected {keyPrefix}<router>,"
            " {keyPrefix}policy/<router> or their history",
            key=key, keyPrefix=self.keyPrefix,
        )

    def prefixEvents(self, events: list[WatchEvent], revision: int) -> None:
        """
        Changes the watch saw: each store of a key changed follows it.
        """
        for event in events:
            kv = event.kv
            store = self._stores.get(kv.key)
            if event.kind == "put":
                self._checkKey(kv.key)
                self._remember(kv.key, kv)
                if store is not None:
                    store._follow(kv, kv.modRevision)
            else:
                self._ignored.discard(kv.key)
                self._forget(kv.key, kv.modRevision)
                if store is not None:
                    store._follow(None, kv.modRevision)

    def prefixLost(self, reason: str) -> None:
        """
        etcd cannot be followed now: say what stays in force (once per
        outage).
        """
        if not self._follower.readOnce:
            _log.warn(
                "rules store: cannot read {keyPrefix} from etcd: {reason}; the config's rules"
                " and policies apply until it answers (retrying)",
                keyPrefix=self.keyPrefix, reason=reason,
            )
            return
        _log.warn(
            "rules store: lost etcd ({reason}); keeping the rules and policies in force"
            " (revision {revision}), refusing changes, and retrying",
            reason=reason, revision=self.revision,
        )

    # -- what the admin API shows ----------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """
        A JSON-ready view for C{GET /admin/state} (its C{rulesStore})::

            {"kind": "etcd", "endpoint": "http://127.0.0.1:2379",
             "keyPrefix": "/meshproxy/rules/", "loaded": true,
             "stale": false, "staleSeconds": null, "problem": null,
             "revision": 42, "disconnects": 0, "errors": 0, "resyncs": 0,
             "writes": 3, "conflicts": 1, "refused": 0,
             "routers": {"web": {
                "rules": {"key": "/meshproxy/rules/web", "revision": 40,
                          "applied": 40, "rejected": null},
                "policy": {"key": "/meshproxy/rules/policy/web", ...}}}}
        """
        routers: dict[str, dict[str, Any]] = {}
        for store in self._stores.values():
            if store.active():
                routers.setdefault(store.router, {})[store.kind] = store.state()
        return {
            "kind": "etcd",
            "loaded": self.loaded,
            **self._follower.state(),
            "writes": self.writes,
            "conflicts": self.conflicts,
            "refused": self.refused,
            "routers": dict(sorted(routers.items())),
        }


def _follow(d: Deferred[Any]) -> Deferred[None]:
    """
    A L{Deferred} firing (with L{None}) when C{d} does, whatever its
    result, which is left to C{d}'s other callbacks.
    """
    follower: Deferred[None] = Deferred()

    def fire(result: Any) -> Any:
        follower.callback(None)
        return result

    d.addBoth(fire)
    return follower


def storesFor(config: Any, *, reactor: Any) -> EtcdStores:
    """
    The L{EtcdStores} of a C{rulesStore} section
    (L{RulesStoreConfig<meshproxy.config.rulesstore.RulesStoreConfig>}).

    @raise ValueError: when the TLS files cannot be read.
    """
    return EtcdStores(clientFor(config, reactor=reactor), config.keyPrefix, reactor=reactor)
