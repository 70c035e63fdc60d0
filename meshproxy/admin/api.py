"""
The admin HTTP API: health, Prometheus metrics, live state and the dashboard.

The dashboard is package data: C{static/index.html}, its script and its
stylesheet, served as files (L{loadStatic}) under a strict
C{Content-Security-Policy} (L{PAGE_POLICY}).

Served by C{makeService} as C{Site(AdminAPI(runtime, registry).app.resource())}
on the C{admin.listen} endpoint. Importing this module imports klein, which
installs the global reactor: only C{makeService} (or what it loads) may
import it.

What the API needs from its collaborators:

 - C{runtime.isReady() -> bool}: every listener bound and every namer has
   answered once.
 - C{runtime.waitingFor() -> list[str]}: what readiness still waits for,
   in words (C{["listener web", "namer /#/fs"]}).
 - C{runtime.routers}: a mapping of router name to router.
 - C{runtime.namers} (optional): the namers; those with a C{state() -> dict}
   are shown by C{GET /admin/state} under their prefix.
 - C{router.state() -> dict}: a JSON-ready description of the router. The
   dashboard reads this shape (missing keys show as blanks)::

       {"protocol": "http",
        "boundNames": {"/#/fs/users": {"endpoints": [
            {"address": "127.0.0.1:8081", "state": "live", "ewmaMs": 1.8,
             "pending": 0, "requests": 1200, "successRate": 0.998,
             "consecutiveFailures": 0}]}}}

For C{GET /admin/stats}, a router may have C{metrics} (the
L{MeshMetrics<meshproxy.telemetry.metrics.MeshMetrics>} it records in,
read with C{metrics.routes(name)}) and C{connStats} (its
L{ConnectionStats<meshproxy.telemetry.metrics.ConnectionStats>}); both
routers keep them under these names.

For the rules, explain, drain and shutdown routes (see L{AdminAPI}), a
router also offers C{router.rules}: its
L{IRuleTable<meshproxy.routing.table.IRuleTable>} (what the rules store
edits), or L{None} for a router without rules; and::

    router.explain(*, name=None, host=None, path=None) -> dict  # ValueError(reason)
    router.drain(boundName, address) -> None      # KeyError(reason) if unknown
    router.undrain(boundName, address) -> None    # KeyError(reason) if unknown

and the runtime C{shutdown() -> Deferred} and C{shutdownGrace} (seconds).
For the policy routes, a router has C{router.policy}: its
L{Policy<meshproxy.policy.Policy>} or L{None}, which the policy store
replaces by assignment (HTTP and TCP routers alike).

Every JSON answer has C{Content-Type: application/json} and ends in a
newline, errors included (C{{"error": "not found"}}).

No web page may drive the API: every request passes L{AdminAPI._admit}
before its handler runs (see L{AdminAPI} for the rules): its C{Host} must be
one the API answers as (against DNS rebinding), and a mutating call must
come from no browser or from the API's own page, with a body of the type
its route takes (a cross-site HTML form can send neither JSON nor an
C{Origin} that passes).
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Iterable
from typing import Any, cast

from prometheus_client.registry import CollectorRegistry
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from werkzeug.exceptions import MethodNotAllowed, NotFound

from meshproxy.admin.guard import (
    _READ_METHODS,
    _AdmittingKlein,
    _checkBodyType,
    _checkOrigin,
    _hostAnswered,
    _oneHeader,
    _requireToken,
    _takes,
)
from meshproxy.admin.policy import PolicyStore
from meshproxy.admin.requests import (
    _TRUE,
    TEXT_TYPE,
    _answer,
    _etag,
    _ifMatch,
    _json,
    _queryValue,
    _readJSON,
    _readPolicy,
    _readText,
    _reason,
    _Refusal,
    _show,
)
from meshproxy.admin.rules import InvalidRules, RulesStore
from meshproxy.admin.static import PAGE_POLICY, loadStatic
from meshproxy.admin.stats import _routerStats
from meshproxy.admin.versioned import (
    InvalidValue,
    PersistError,
    StaleVersion,
    UnknownVersion,
    VersionedStore,
)
from meshproxy.telemetry.metrics import exposition
from meshproxy.telemetry.tap import TAP_PARAMETERS, TapFilter, TapHub, TapUnavailable

_log = Logger()
_audit = Logger(namespace="meshproxy.admin.audit")

class AdminAPI:
    """
    The admin API as a class-bound Klein app.

    Health probes (C{/live}, C{/ready}), the dashboard page (C{/}) and its
    files (C{/static/<name>}) are never guarded by the token: probes from
    kubelet or systemd carry none, and the page holds no data (its script
    asks for the token when the API answers 401). C{/metrics}, C{/admin/state},
    C{/admin/stats} and the other reads (rules, policy, history, explain,
    the tap) are guarded when C{protectReads}
    is set; every mutating route (PUT, POST) uses L{_requireToken} and is
    guarded whenever a token is set, dry runs included.

    @param runtime: the running proxy; see the module docstring for what it
        must provide.
    @param registry: the C{CollectorRegistry} that C{/metrics} exports.
    @param token: the bearer token mutating calls need, or L{None} for no
        check. Must not be empty.
    @param protectReads: also require the token on reads of data.
    @param allowedHosts: the host names, besides IP literals and
        C{localhost}, that requests may name in C{Host}; C{"*"} among them
        turns the C{Host} check off.
    @param rulesStores: the L{RulesStore} of each router by name (built and
        loaded by the caller, with persistence), kept as given (not copied):
        the caller may add and remove stores later; a router without one
        gets a store without persistence on first use.
    @param policyStores: the L{PolicyStore} of each router by name, the
        same way.
    @param clock: the C{IReactorTime} for the rules history and for
        scheduling the shutdown; the global reactor when L{None}.
    @param tap: the L{TapHub<meshproxy.telemetry.tap.TapHub>} that
        C{GET /admin/tap} subscribes to, or L{None} (that route then
        answers 503).
    @raise ValueError: C{token} is empty, C{protectReads} is set without
        a token, or a name in C{allowedHosts} has a port or a scheme.

    Before its handler runs (and before a 404 or 405), every request passes
    L{_admit}, whatever the token settings: the checks of
    L{meshproxy.admin.guard} (C{Host} against DNS rebinding, then, for every
    method but GET, HEAD and OPTIONS, the origin and the body's type); the
    token (L{_requireToken}) is checked after them. Every route, with its
    answers and errors, is described in docs/admin.md and in its handler's
    docstring.

    An unknown router is a 404. JSON bodies are limited to L{JSON_LIMIT}
    bytes (413).
    """

    app = _AdmittingKlein()

    def __init__(
        self,
        runtime: Any,
        registry: CollectorRegistry,
        *,
        token: str | None = None,
        protectReads: bool = False,
        allowedHosts: Iterable[str] = (),
        rulesStores: dict[str, RulesStore] | None = None,
        policyStores: dict[str, PolicyStore] | None = None,
        clock: Any = None,
        tap: TapHub | None = None,
    ) -> None:
        if token is not None and not token:
            raise ValueError("admin token must not be empty (use None for no token)")
        if protectReads and token is None:
            raise ValueError("protectReads needs an admin token")
        self._runtime = runtime
        self._registry = registry
        self._token = None if token is None else token.encode("utf-8")
        self._protectReads = protectReads
        hosts = frozenset(host.lower().rstrip(".") for host in allowedHosts)
        for host in hosts:
            if not host or any(c in host for c in ":/[]@ "):
                raise ValueError(
                    f"allowedHosts: {host!r} is not a host name (no port, no scheme)"
                )
        # None: any Host is answered.
        self._allowedHosts = None if "*" in hosts else hosts
        if clock is None:
            from twisted.internet import reactor as clock
        self._clock = clock
        # The caller's mappings themselves, not copies: a reload adds (and
        # removes) the stores of the routers it adds (and removes).
        self._stores: dict[str, RulesStore] = {} if rulesStores is None else rulesStores
        self._policyStores: dict[str, PolicyStore] = (
            {} if policyStores is None else policyStores
        )
        self._shuttingDown = False
        self._tap = tap
        # Read once, at the first request for one of them: they are part of
        # the installed package, and a proxy whose dashboard is never opened
        # does not keep them.
        self._files: dict[str, tuple[bytes, bytes]] | None = None

    def _router(self, name: str, capability: str | None = None) -> Any:
        """
        The router called C{name}.

        @param capability: a method the router must have for this call.
        @raise _Refusal: 404 if there is no such router (or it lacks
            C{capability}).
        """
        router = self._runtime.routers.get(name)
        if router is None:
            raise _Refusal(404, {"error": f"unknown router {name!r}"})
        if capability is not None and not callable(getattr(router, capability, None)):
            raise _Refusal(404, {"error": f"router {name!r} does not support {capability}"})
        return router

    def _store(self, name: str) -> RulesStore:
        """
        The rules store of router C{name}, made on first use if the caller
        gave none.
        """
        router = self._router(name)
        if router.rules is None:
            raise _Refusal(404, {"error": f"router {name!r} does not support rules"})
        store = self._stores.get(name)
        if store is None:
            store = self._stores[name] = RulesStore(router.rules, stateDir=None, clock=self._clock)
        return store

    def _policyStore(self, name: str) -> PolicyStore:
        """
        The policy store of router C{name}, made on first use if the caller
        gave none.
        """
        router = self._router(name)
        if not hasattr(router, "policy"):
            raise _Refusal(404, {"error": f"router {name!r} does not support policy"})
        store = self._policyStores.get(name)
        if store is None:
            store = self._policyStores[name] = PolicyStore(
                router, stateDir=None, clock=self._clock
            )
        return store

    def _who(self, request: IRequest) -> str:
        """
        Who makes a change, for the history and the audit log: C{"token"}
        when the API has a token (the guard let the request through, so it
        carried it), else the peer's address.
        """
        if self._token is not None:
            return "token"
        address = request.getClientAddress()
        host = getattr(address, "host", None)
        if host is not None:
            return str(host)
        name = getattr(address, "name", None)
        if name is not None:
            if isinstance(name, bytes):
                name = name.decode("utf-8", "replace")
            return "unix:" + str(name)
        return "unknown"

    def _admit(self, request: IRequest, bodyType: str | None) -> None:
        """
        The checks every request passes before its route's handler runs (see
        the class docstring): C{Host}, then for mutating methods the origin,
        then the body type.

        @param bodyType: the media type the matched route takes its body
            in, or L{None} when no route matched (the answer is a 404 or a
            405 anyway, and the body is not looked at).
        @raise _Refusal: 400 for a repeated header, 421 for a foreign
            C{Host}, 403 for a cross-origin call, 415 for a body of the
            wrong type.
        """
        host = _oneHeader(request, "Host")
        if host is not None and self._allowedHosts is not None and not _hostAnswered(
            host, self._allowedHosts
        ):
            raise _Refusal(421, {
                "error": f"misdirected request: this admin API does not answer as host "
                         f"{_show(host)!r} (use an IP address or localhost, or add the "
                         "name to admin.allowedHosts)",
            })
        if request.method in _READ_METHODS:
            return
        _checkOrigin(request, host)
        if bodyType is not None:
            _checkBodyType(request, bodyType)

    def _authorized(self, request: IRequest) -> bool:
        """
        Whether C{request} may go through L{_requireToken}.
        """
        if self._token is None:
            return True
        if request.method in _READ_METHODS and not self._protectReads:
            return True
        header = request.getHeader(b"authorization")
        if header is None:
            return False
        scheme, _, credentials = header.strip().partition(b" ")
        if scheme.lower() != b"bearer":
            return False
        # Constant-time, so response timing does not leak the token.
        return hmac.compare_digest(credentials.strip(), self._token)

    @app.route("/live", methods=["GET"])
    def live(self, request: IRequest) -> bytes:
        """
        Liveness: the process answers. Always 200 C{{"live": true}}.
        """
        return _json(request, {"live": True})

    @app.route("/ready", methods=["GET"])
    def ready(self, request: IRequest) -> bytes:
        """
        Readiness: 200 C{{"ready": true}} once C{runtime.isReady()}, else
        503 C{{"ready": false, "waiting": [...]}} listing what it waits for.
        Ready with namers still loading (after the runtime stopped waiting
        for them), the 200 lists them too: C{{"ready": true, "waiting":
        ["namer /#/x (still loading after 10 s)"]}}.
        """
        waiting = [str(what) for what in self._runtime.waitingFor()]
        if self._runtime.isReady():
            body: dict[str, Any] = {"ready": True}
            if waiting:
                body["waiting"] = waiting
            return _json(request, body)
        return _json(request, {"ready": False, "waiting": waiting}, 503)

    @app.route("/metrics", methods=["GET"])
    @_requireToken
    def metrics(self, request: IRequest) -> bytes | Deferred[bytes]:
        """
        The registry in the Prometheus text exposition format, or in the
        OpenMetrics format (with the latency histogram's exemplars) when
        the C{Accept} header prefers C{application/openmetrics-text}.
        """
        workers = getattr(self._runtime, "workers", None)
        if workers is not None:
            # The whole process group's series, merged by the aggregation.
            d = workers.aggregator.exposition(request.getHeader(b"accept"))
            return d.addCallback(lambda found: self._metricsBody(request, *found))
        body, contentType = exposition(self._registry, request.getHeader(b"accept"))
        return self._metricsBody(request, body, contentType)

    def _metricsBody(self, request: IRequest, body: bytes, contentType: str) -> bytes:
        request.setHeader(b"content-type", contentType.encode("ascii"))
        request.setHeader(b"vary", b"Accept")
        request.setHeader(b"cache-control", b"no-store")
        return body

    @app.route("/admin/state", methods=["GET"])
    @_requireToken
    def state(self, request: IRequest) -> bytes | Deferred[bytes]:
        """
        Every router's C{state()}: C{{"routers": {name: state}}}; and, when
        some namers have a C{state()} (the etcd namer: whether it is stale,
        since when), C{"namers": {prefix: state}}; with a rules store kept
        in etcd (C{runtime.rulesStore}), C{"rulesStore"}: its C{state()};
        with worker processes (C{runtime.workers}), C{"workers"}: the
        version pushed last and each worker (C{id}, C{pid}, C{state},
        C{version}, C{generation}, C{started}, C{restarts}), and what the
        aggregation merges over them (per worker with C{?perWorker=1}).
        """
        routers = {
            name: router.state() for name, router in self._runtime.routers.items()
        }
        answer: dict[str, Any] = {"routers": routers}
        namers = {
            str(namer.prefix): namer.state()
            for namer in getattr(self._runtime, "namers", ())
            if callable(getattr(namer, "state", None))
        }
        if namers:
            answer["namers"] = namers
        rulesStore = getattr(self._runtime, "rulesStore", None)
        if rulesStore is not None:
            answer["rulesStore"] = rulesStore.state()
        workers = getattr(self._runtime, "workers", None)
        if workers is None:
            return _json(request, answer)
        # With worker processes: each worker, and the routers' state merged
        # over them by the aggregation (per worker with ?perWorker=1).
        flag = request.args.get(b"perWorker", [])
        perWorker = bool(flag) and flag[0].lower() in _TRUE

        def merged(state: dict[str, Any]) -> bytes:
            answer.update(state)
            # (the supervisor's own list of its workers, whatever the
            # aggregation says)
            answer["workers"] = {"version": workers.version, "workers": workers.state()}
            return _json(request, answer)

        return workers.aggregator.state(perWorker).addCallback(merged)

    @app.route("/admin/stats", methods=["GET"])
    @_requireToken
    def stats(self, request: IRequest) -> bytes | Deferred[bytes]:
        """
        The cumulative traffic counters of every router, for the dashboard
        to turn into rates and percentiles (see L{_routerStats})::

            {"time": 1733040000.25, "routers": {"web": {
                "connections": {"opened": 8, "closed": 7},
                "boundNames": {"/#/fs/users": {
                    "requests": 6,
                    "responses": {"1xx": 0, "2xx": 6, "3xx": 0, "4xx": 0, "5xx": 0},
                    "duration": {"bounds": [0.001, ..., 10.0],
                                 "buckets": [5, 6, ..., 6], "sum": 0.0042}}}}}}

        C{time} is the API's clock (seconds since the epoch) when the
        counters were read: the rates are deltas over it. With worker
        processes the counters are summed over them (see
        L{meshproxy.workers.merge}), and C{missing} lists the workers that
        did not answer in time (counted with their last answer).
        """
        routers = {
            name: _routerStats(name, router)
            for name, router in sorted(self._runtime.routers.items())
        }
        workers = getattr(self._runtime, "workers", None)
        if workers is None:
            return _json(request, {"time": self._clock.seconds(), "routers": routers})
        # With worker processes: summed over them (and the supervisor's own,
        # which serves while a worker restarts); "missing" names the late.
        now = self._clock.seconds()
        d = workers.aggregator.stats({"routers": routers})
        return d.addCallback(lambda merged: _json(request, {"time": now, **merged}))

    @app.route("/admin/routers/<name>/rules", methods=["GET"])
    @_requireToken
    def getRules(self, request: IRequest, name: str) -> bytes:
        """
        The rules in force, as text, with their version in C{ETag}.
        """
        text, version = self._store(name).current()
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"x-content-type-options", b"nosniff")
        request.setHeader(b"etag", _etag(version))
        return text.encode("utf-8")

    @app.route("/admin/routers/<name>/rules", methods=["PUT"])
    @_takes(TEXT_TYPE)
    @_requireToken
    def putRules(self, request: IRequest, name: str) -> bytes | Deferred[bytes]:
        """
        Replace the rules (see the class docstring).
        """
        store = self._store(name)
        ifMatch = _ifMatch(request, store.kind)
        text = _readText(request)
        if not text.strip():
            # Most likely a forgotten body, and it would route nothing.
            raise _Refusal(400, {
                "error": "empty rules: send the rules as the body (to route "
                         "nothing on purpose, send a comment)",
                "line": None, "column": None,
            })
        return self._change(
            request, name, store, store.replace, text, ifMatch, self._who(request)
        )

    @app.route("/admin/routers/<name>/rules", methods=["POST"])
    @_takes(TEXT_TYPE)
    @_requireToken
    def dryRunRules(self, request: IRequest, name: str) -> bytes | Deferred[bytes]:
        """
        Validate rules and show what they would change, without applying:
        for the names routed recently (with worker processes, by any of
        them).
        """
        store = self._store(name)
        flag = request.args.get(b"dryRun", [])
        if len(flag) != 1 or flag[0].lower() not in _TRUE:
            raise _Refusal(400, {
                "error": "POST on the rules is a dry run: add ?dryRun=1 "
                         "(PUT replaces the rules)",
            })
        text = _readText(request)
        workers = getattr(self._runtime, "workers", None)
        if workers is None:
            return self._dryRun(request, store, text, None)
        # With worker processes the traffic is theirs: check the names they
        # routed recently (the supervisor's own first: it serves while a
        # worker restarts).
        own = list(self._router(name).rules.recentNames())

        def run(recent: dict[str, Any]) -> bytes:
            names = list(dict.fromkeys(own + list(recent["names"])))
            answer = self._dryRun(request, store, text, names)
            if recent["missing"]:
                _log.warn("rules dry run of router {router}: workers missing: {missing}",
                          router=name, missing=recent["missing"])
            return answer

        return workers.aggregator.recentNames(name).addCallback(run)

    def _dryRun(
        self, request: IRequest, store: Any, text: str, names: list[str] | None
    ) -> bytes:
        """
        The answer to a dry run of C{text} on C{store}, checking C{names}
        (L{None}: the router's own recent names).
        """
        try:
            result = store.dryRun(text) if names is None else store.dryRun(text, names=names)
        except InvalidRules as e:
            return _json(request, {
                "valid": False, "error": e.message, "line": e.line, "column": e.column,
            }, 400)
        return _json(request, result)

    @app.route("/admin/routers/<name>/rules/history", methods=["GET"])
    @_requireToken
    def rulesHistory(self, request: IRequest, name: str) -> bytes:
        """
        The accepted versions of the rules, newest first.
        """
        return _json(request, self._store(name).history())

    @app.route("/admin/routers/<name>/rules/rollback", methods=["POST"])
    @_requireToken
    def rollbackRules(self, request: IRequest, name: str) -> bytes | Deferred[bytes]:
        """
        Apply a version from the history again, as a new change.
        """
        return self._rollback(request, name, self._store(name))

    @app.route("/admin/routers/<name>/policy", methods=["GET"])
    @_requireToken
    def getPolicy(self, request: IRequest, name: str) -> bytes:
        """
        The access policy in force, as JSON in the config's shape, with its
        version in C{ETag}.
        """
        policy, version = self._policyStore(name).current()
        request.setHeader(b"etag", _etag(version))
        return _json(request, policy)

    @app.route("/admin/routers/<name>/policy", methods=["PUT"])
    @_requireToken
    def putPolicy(self, request: IRequest, name: str) -> bytes | Deferred[bytes]:
        """
        Replace the access policy (see the class docstring).
        """
        store = self._policyStore(name)
        ifMatch = _ifMatch(request, store.kind)
        policy = _readPolicy(request)
        return self._change(
            request, name, store, store.replace, policy, ifMatch, self._who(request)
        )

    @app.route("/admin/routers/<name>/policy/history", methods=["GET"])
    @_requireToken
    def policyHistory(self, request: IRequest, name: str) -> bytes:
        """
        The accepted versions of the policy, newest first.
        """
        return _json(request, self._policyStore(name).history())

    @app.route("/admin/routers/<name>/policy/rollback", methods=["POST"])
    @_requireToken
    def rollbackPolicy(self, request: IRequest, name: str) -> bytes | Deferred[bytes]:
        """
        Apply a version of the policy from the history again, as a new
        change.
        """
        return self._rollback(request, name, self._policyStore(name))

    def _rollback(
        self, request: IRequest, name: str, store: VersionedStore
    ) -> bytes | Deferred[bytes]:
        """
        Apply the version a C{{"version"}} body names again, from
        C{store}'s history.
        """
        ifMatch = _ifMatch(request, store.kind)
        version = _readJSON(request, "version")["version"]
        try:
            return self._change(
                request, name, store, store.rollback, version, ifMatch, self._who(request)
            )
        except UnknownVersion as e:
            raise _Refusal(404, {"error": str(e)}) from None

    def _change(
        self,
        request: IRequest,
        name: str,
        store: VersionedStore,
        change: Callable[..., Any],
        *args: Any,
    ) -> bytes | Deferred[bytes]:
        """
        Run a change of a versioned value (C{store.replace} or
        C{store.rollback}) and answer with its outcome: 200 C{{"version",
        "previous"}} with the new C{ETag}, 412 when stale (with the current
        C{ETag}), 400 with the value's own details when invalid, 500 when
        the state file could not be written (or the status the error
        names: 503 when a shared store cannot be reached). A store kept
        elsewhere (L{meshproxy.admin.etcdstore}) answers with a Deferred,
        and so does this.
        """
        try:
            result = change(*args)
        except (StaleVersion, InvalidValue, PersistError) as e:
            return self._refusedChange(request, name, store, e)
        if isinstance(result, Deferred):

            def refused(failure: Failure) -> bytes:
                failure.trap(StaleVersion, InvalidValue, PersistError)
                return self._refusedChange(request, name, store, cast(Exception, failure.value))

            return result.addCallbacks(lambda done: self._changed(request, done), refused)
        return self._changed(request, result)

    def _changed(self, request: IRequest, result: tuple[str, str]) -> bytes | Deferred[bytes]:
        previous, version = result
        request.setHeader(b"etag", _etag(version))
        if getattr(self._runtime, "workers", None) is None:
            return _json(request, {"version": version, "previous": previous})
        # With worker processes, answered once every one of them runs it.
        from meshproxy.workers.supervisor import WorkersBehind

        def late(failure: Failure) -> bytes:
            failure.trap(WorkersBehind)
            error = cast(WorkersBehind, failure.value)
            _log.error("version {version} accepted, but not running in every worker: {behind}",
                       version=version, behind=str(error))
            return _json(request, {
                "error": "version %s was accepted but is not running in every worker: %s"
                         % (version, error),
                "version": version, "previous": previous, "behind": error.behind,
            }, 503)

        d = self._runtime.whenApplied()
        return d.addCallbacks(
            lambda _: _json(request, {"version": version, "previous": previous}), late
        )

    def _refusedChange(
        self, request: IRequest, name: str, store: VersionedStore, error: BaseException
    ) -> bytes:
        if isinstance(error, StaleVersion):
            request.setHeader(b"etag", _etag(error.current))
            return _json(request, {
                "error": f"stale version: the {store.kind} changed after the version you named",
                "current": error.current,
            }, 412)
        if isinstance(error, InvalidValue):
            return _json(request, error.details(), 400)
        _log.error(
            "{kind} of router {router} not changed: {error}",
            kind=store.kind, router=name, error=str(error),
        )
        return _json(request, {"error": str(error)}, getattr(error, "status", 500))

    @app.route("/admin/routers/<name>/explain", methods=["GET"])
    @_requireToken
    def explain(self, request: IRequest, name: str) -> bytes | Deferred[bytes]:
        """
        How the router routes a logical name, a host or a path, and what its
        access policy says of a request from C{caller=} (an identity),
        C{peer=} (an IP address) with C{method=} (C{GET} unless given).
        With worker processes, the endpoints' figures are merged over them
        (and C{missing} names the workers that did not answer in time).
        """
        router = self._router(name, "explain")
        given = {}
        for key in ("name", "host", "path"):
            value = _queryValue(request, key)
            if value is not None:
                given[key] = value
        if len(given) != 1:
            raise _Refusal(400, {"error": "give exactly one of name=, host= or path="})
        [(key, value)] = given.items()
        if not value:
            raise _Refusal(400, {"error": f"{key}= is empty"})
        # Who asks, for the policy's decision: passed on only when given, so
        # that the router's defaults (an unauthenticated GET) apply.
        for key in ("caller", "peer", "method"):
            value = _queryValue(request, key)
            if value is not None:
                if not value:
                    raise _Refusal(400, {"error": f"{key}= is empty"})
                given[key] = value
        try:
            result = router.explain(**given)
        except ValueError as e:
            raise _Refusal(400, {"error": _reason(e)}) from None
        workers = getattr(self._runtime, "workers", None)
        if workers is None:
            return _json(request, result)
        # With worker processes the rules and the policy are the same here,
        # but the endpoints' live figures (EWMA, pending, state, score) are
        # the workers': merged over them.
        return workers.aggregator.explain(name, result).addCallback(
            lambda merged: _json(request, merged)
        )

    @app.route("/admin/endpoints/drain", methods=["POST"])
    @_requireToken
    def drain(self, request: IRequest) -> bytes | Deferred[bytes]:
        """
        Stop sending new requests to one endpoint; those in flight finish.
        """
        return self._drain(request, True)

    @app.route("/admin/endpoints/undrain", methods=["POST"])
    @_requireToken
    def undrain(self, request: IRequest) -> bytes | Deferred[bytes]:
        """
        Send requests to a drained endpoint again.
        """
        return self._drain(request, False)

    def _drain(self, request: IRequest, draining: bool) -> bytes | Deferred[bytes]:
        body = _readJSON(request, "router", "name", "address")
        routerName, boundName, address = body["router"], body["name"], body["address"]
        capability = "drain" if draining else "undrain"
        router = self._router(routerName, capability)
        workers = getattr(self._runtime, "workers", None)
        if workers is not None:
            # The endpoints are the workers' (each binds names as requests
            # come): drained in every worker that has it.
            def known(found: bool) -> bytes:
                if not found:
                    return _json(request, {
                        "error": "no endpoint %s in %s in any worker" % (address, boundName),
                    }, 404)
                return self._drained(request, routerName, boundName, address, draining)

            d = workers.drain(routerName, boundName, address, draining)
            return d.addCallback(known)
        try:
            getattr(router, capability)(boundName, address)
        except KeyError as e:
            raise _Refusal(404, {"error": _reason(e)}) from None
        return self._drained(request, routerName, boundName, address, draining)

    def _drained(
        self, request: IRequest, routerName: str, boundName: str, address: str, draining: bool
    ) -> bytes:
        _audit.info(
            "endpoint {address} of {name} on router {router} {action} by {who}",
            address=address, name=boundName, router=routerName,
            action="drained" if draining else "undrained", who=self._who(request),
        )
        return _json(request, {"draining": draining})

    @app.route("/admin/tap", methods=["GET"])
    @_requireToken
    def tap(self, request: IRequest) -> bytes | Deferred[bytes]:
        """
        The live tap: request summaries as server-sent events, one C{data:}
        line of JSON per request, filtered by the query (C{router=},
        C{name=}, C{path=}, C{method=}, C{status=}, C{minDurationMs=}; see
        L{TapFilter.fromQuery}); 400 for a bad filter, 404 for an unknown
        router, 503 without a hub, once it closed or when it is full. The
        stream lasts until the client leaves or the hub closes; a C{HEAD}
        gets the stream's head and no stream.
        """
        hub = self._tap
        workers = getattr(self._runtime, "workers", None)
        if workers is not None:
            # The workers' requests, merged by the aggregation's hub.
            hub = getattr(workers.aggregator, "tap", hub)
        if hub is None:
            raise _Refusal(503, {"error": "the live tap is not available on this proxy"})
        values = {}
        for raw in request.args:
            key = raw.decode("latin-1")
            # fromQuery refuses an unknown key before looking at values.
            values[key] = (_queryValue(request, key) or "") if key in TAP_PARAMETERS else ""
        try:
            tapFilter = TapFilter.fromQuery(values)
        except ValueError as e:
            raise _Refusal(400, {"error": _reason(e)}) from None
        if tapFilter.router is not None:
            self._router(tapFilter.router)
        request.setHeader(b"content-type", b"text/event-stream")
        request.setHeader(b"cache-control", b"no-cache")
        # nginx buffers responses unless told not to.
        request.setHeader(b"x-accel-buffering", b"no")
        request.setHeader(b"x-content-type-options", b"nosniff")
        if request.method == b"HEAD":
            return b""
        # A twisted.web Request: a consumer, with notifyFinish (which
        # IRequest does not say).
        stream = cast(Any, request)
        try:
            subscription = hub.subscribe(tapFilter, stream)
        except TapUnavailable as e:
            request.responseHeaders.removeHeader(b"x-accel-buffering")
            raise _Refusal(503, {"error": str(e)}) from None
        stream.notifyFinish().addErrback(lambda _: hub.unsubscribe(subscription))
        # Klein finishes the response once the hub ended the stream, and
        # cancels this (unsubscribing) if the client goes away first.
        return subscription.ended.addCallback(lambda _: b"")

    @app.route("/admin/shutdown", methods=["POST"])
    @_requireToken
    def shutdown(self, request: IRequest) -> bytes:
        """
        Drain gracefully and exit: 202 now, C{runtime.shutdown()} once the
        answer is written. Asking again while shutting down changes nothing.
        """
        grace = self._runtime.shutdownGrace
        if not self._shuttingDown:
            self._shuttingDown = True
            _audit.info("shutdown asked by {who}", who=self._who(request))
            # Later, so that this answer goes out before listeners close.
            self._clock.callLater(0, self._shutdown)
        return _json(request, {"shuttingDown": True, "grace": grace}, 202)

    def _shutdown(self) -> None:
        d = maybeDeferred(self._runtime.shutdown)
        d.addErrback(lambda f: _log.failure("shutdown failed", f))

    @app.route("/admin/reload", methods=["POST"])
    @_requireToken
    def reloadConfig(self, request: IRequest) -> Any:
        """
        Read the config file again and apply what changed, as C{SIGHUP}
        does (C{runtime.reload()}, see L{meshproxy.reload}): 200 with the
        summary of what changed (C{"changed": false} when the file says
        what is in force already); 400 for a bad file, 409 when there is
        nothing to reload (no config file, or the process is stopping), 500
        when applying it failed (a new listener that cannot be bound), each
        with C{{"error", "errors"}} and nothing changed.
        """
        from meshproxy.reload import ReloadError

        reload = getattr(self._runtime, "reload", None)
        if reload is None:
            raise _Refusal(404, {"error": "this process cannot reload its config"})
        _audit.info("reload asked by {who}", who=self._who(request))

        def failed(failure: Failure) -> bytes:
            failure.trap(ReloadError)
            error = cast(ReloadError, failure.value)
            return _json(
                request,
                {"error": "reload refused: nothing changed", "errors": error.errors},
                error.status,
            )

        d = maybeDeferred(reload)
        return d.addCallbacks(lambda summary: _json(request, summary), failed)

    @app.route("/", methods=["GET"])
    def dashboard(self, request: IRequest) -> bytes:
        """
        The dashboard page, C{static/index.html}: it loads its script and
        stylesheet from C{/static/} and polls the reads of this API.
        """
        return self._static(request, "index.html")

    @app.route("/static/<name>", methods=["GET"])
    def staticFile(self, request: IRequest, name: str) -> bytes:
        """
        One of the dashboard's files (see L{loadStatic}); 404 for any other
        name. The name is looked up among the files found at the first
        such request, never joined to a path, so no request can reach another file.
        """
        return self._static(request, name)

    def _static(self, request: IRequest, name: str) -> bytes:
        if self._files is None:
            self._files = loadStatic()
        found = self._files.get(name)
        if found is None:
            raise _Refusal(404, {"error": "not found"})
        contentType, body = found
        request.setHeader(b"content-type", contentType)
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"x-content-type-options", b"nosniff")
        request.setHeader(b"content-security-policy", PAGE_POLICY)
        return body

    def _admitUnrouted(self, request: IRequest) -> bytes | None:
        """
        Run L{_admit} for a request no route took.

        @return: the refusal's answer, or L{None} when admitted.
        """
        try:
            self._admit(request, None)
        except _Refusal as refusal:
            return _answer(request, refusal)
        return None

    @app.handle_errors(NotFound)
    def _notFound(self, request: IRequest, failure: Failure) -> bytes:
        refused = self._admitUnrouted(request)
        if refused is not None:
            return refused
        return _json(request, {"error": "not found"}, 404)

    @app.handle_errors(MethodNotAllowed)
    def _methodNotAllowed(self, request: IRequest, failure: Failure) -> bytes:
        refused = self._admitUnrouted(request)
        if refused is not None:
            return refused
        # handle_errors(X) hands a handler only failures of X.
        error = cast(MethodNotAllowed, failure.value)
        allowed = sorted(error.valid_methods or ())
        request.setHeader(b"allow", ", ".join(allowed).encode("ascii"))
        return _json(request, {"error": "method not allowed", "allowed": allowed}, 405)

    @app.handle_errors(_Refusal)
    def _refused(self, request: IRequest, failure: Failure) -> bytes:
        return _answer(request, cast(_Refusal, failure.value))

    @app.handle_errors(Exception)
    def _internalError(self, request: IRequest, failure: Failure) -> bytes:
        _log.failure("admin API request {method} {uri} failed", failure,
                     method=request.method, uri=request.uri)
        return _json(request, {"error": "internal error"}, 500)
