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

import functools
import hmac
import importlib.resources
import ipaddress
import itertools
import json
import posixpath
from collections.abc import Callable, Iterable
from typing import Any, cast

from klein import Klein
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import CollectorRegistry
from twisted.internet.defer import maybeDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from werkzeug.exceptions import MethodNotAllowed, NotFound

from meshproxy.admin.policy import PolicyStore
from meshproxy.admin.rules import InvalidRules, RulesStore
from meshproxy.admin.versioned import (
    InvalidValue,
    PersistError,
    StaleVersion,
    UnknownVersion,
    VersionedStore,
)
from meshproxy.telemetry.metrics import BUCKETS

_log = Logger()
_audit = Logger(namespace="meshproxy.admin.audit")

RULES_LIMIT = 256 * 1024
"""The largest rules text C{PUT} or a dry run accepts, in bytes."""

JSON_LIMIT = 64 * 1024
"""The largest JSON request body the API accepts, in bytes."""

_TRUE = frozenset({b"1", b"true", b"yes"})

# Methods that only read. With a token configured, everything else needs it;
# these need it only when protectReads is set. Everything else is also
# origin-checked and type-checked (AdminAPI._admit).
_READ_METHODS = frozenset({b"GET", b"HEAD", b"OPTIONS"})

JSON_TYPE = "application/json"
"""The body type of every mutating route unless it declares another."""

TEXT_TYPE = "text/plain"
"""The body type of the routes that take rules text."""

# What a browser says of a request's initiator that still lets a mutating
# call through: the API's own page, or the user typing or bookmarking.
_SAME_ORIGIN_FETCHES = frozenset({b"same-origin", b"none"})


def _json(request: IRequest, body: Any, code: int = 200) -> bytes:
    """
    Set up C{request} for a JSON answer and return the encoded body.

    @param request: the request being answered.
    @param body: a JSON-serialisable value.
    @param code: the HTTP status.
    @return: the UTF-8 JSON text followed by a newline.
    """
    request.setResponseCode(code, _PHRASES.get(code))
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"cache-control", b"no-store")
    return json.dumps(body).encode("utf-8") + b"\n"


class _Refusal(Exception):
    """
    Raised inside a handler to answer with a JSON error right away.

    @ivar code: the HTTP status.
    @ivar body: the JSON-serialisable answer.
    @ivar headers: extra C{(name, value)} byte-string headers.
    """

    def __init__(
        self, code: int, body: dict[str, Any], headers: tuple[tuple[bytes, bytes], ...] = ()
    ) -> None:
        super().__init__(code, body)
        self.code = code
        self.body = body
        self.headers = headers


def _etag(version: str) -> bytes:
    """
    The C{ETag} header value of a rules version: the version in quotes.
    """
    return b'"' + version.encode("ascii") + b'"'


def _readBody(request: IRequest, limit: int) -> bytes:
    """
    The request body, refused with 413 if longer than C{limit} bytes.
    """
    length = request.getHeader(b"content-length")
    if length is not None and length.strip().isdigit() and int(length) > limit:
        raise _Refusal(413, {"error": f"body too large (at most {limit} bytes)"})
    content = request.content
    body = b"" if content is None else content.read(limit + 1)
    if len(body) > limit:
        raise _Refusal(413, {"error": f"body too large (at most {limit} bytes)"})
    return body


def _readText(request: IRequest) -> str:
    """
    A rules text from the request body: UTF-8, at most L{RULES_LIMIT} bytes.
    """
    try:
        return _readBody(request, RULES_LIMIT).decode("utf-8")
    except UnicodeDecodeError:
        raise _Refusal(400, {"error": "the rules must be UTF-8 text"}) from None


def _readJSON(request: IRequest, *fields: str) -> dict[str, str]:
    """
    A JSON object from the request body (at most L{JSON_LIMIT} bytes) whose
    C{fields} are all non-empty strings.

    @return: the object.
    @raise _Refusal: 413 when too large, 400 when not such an object.
    """
    body = _readBody(request, JSON_LIMIT)
    try:
        value = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise _Refusal(400, {"error": f"the body is not JSON: {e}"}) from None
    if not isinstance(value, dict):
        raise _Refusal(400, {"error": "the body must be a JSON object"})
    for field in fields:
        if field not in value:
            raise _Refusal(400, {"error": f"missing field {field!r}"})
        if not isinstance(value[field], str) or not value[field]:
            raise _Refusal(400, {"error": f"field {field!r} must be a non-empty string"})
    return value


def _rejectDuplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """
    A JSON object's members as a dict, refusing a key given twice (which
    C{json} would otherwise resolve silently, keeping the last).
    """
    value = {}
    for key, item in pairs:
        if key in value:
            raise ValueError(f"duplicate key {json.dumps(key)}")
        value[key] = item
    return value


def _readPolicy(request: IRequest) -> Any:
    """
    A policy from the request body: JSON (at most L{JSON_LIMIT} bytes),
    without a key given twice. Its shape is checked by the policy store.

    @raise _Refusal: 413 when too large, 400 C{{"error", "problems"}} when
        not JSON.
    """
    body = _readBody(request, JSON_LIMIT)
    try:
        return json.loads(body.decode("utf-8"), object_pairs_hook=_rejectDuplicates)
    except (UnicodeDecodeError, ValueError) as e:
        message = f"the body is not JSON: {e}"
        raise _Refusal(400, {"error": message, "problems": [message]}) from None


def _ifMatch(request: IRequest, kind: str) -> str | frozenset[str]:
    """
    The versions an C{If-Match} header accepts: C{"*"} or a set of versions.

    Weak tags (C{W/"..."}) never match (RFC 9110, section 13.1.1); an
    unquoted version is taken as if it were quoted, for hand-made calls.

    @param kind: what the change is of (C{"rules"}, C{"policy"}), for the
        message.
    @raise _Refusal: 428 without the header.
    """
    raw = request.getHeader(b"if-match")
    if raw is None or not raw.strip():
        raise _Refusal(428, {
            "error": f"If-Match required: send the ETag of the {kind} your change "
                     f"is based on (GET the {kind} to read it)",
        })
    try:
        value = raw.decode("ascii").strip()
    except UnicodeDecodeError:
        raise _Refusal(400, {"error": "If-Match must be ASCII"}) from None
    if value == "*":
        return "*"
    versions = set()
    for tag in value.split(","):
        tag = tag.strip()
        if not tag or tag.startswith("W/"):
            continue
        if len(tag) >= 2 and tag[0] == tag[-1] == '"':
            tag = tag[1:-1]
        versions.add(tag)
    return frozenset(versions)


def _queryValue(request: IRequest, key: str) -> str | None:
    """
    A query parameter given at most once, as text.

    @raise _Refusal: 400 if repeated or not UTF-8.
    """
    values = request.args.get(key.encode("ascii"))
    if not values:
        return None
    if len(values) > 1:
        raise _Refusal(400, {"error": f"give {key}= only once"})
    try:
        return values[0].decode("utf-8")
    except UnicodeDecodeError:
        raise _Refusal(400, {"error": f"{key}= must be UTF-8"}) from None


def _reason(error: BaseException) -> str:
    """
    The message of an exception, without the quotes C{str(KeyError)} adds.
    """
    if error.args and isinstance(error.args[0], str):
        return error.args[0]
    return str(error)


def _answer(request: IRequest, refusal: _Refusal) -> bytes:
    """
    Answer C{request} with C{refusal}: its status, headers and JSON body.
    """
    for header, value in refusal.headers:
        request.setHeader(header, value)
    return _json(request, refusal.body, refusal.code)


def _show(value: bytes, limit: int = 100) -> str:
    """
    A header value as text for an error message, cut at C{limit} characters.
    """
    text = value.decode("latin-1")
    return text if len(text) <= limit else text[:limit] + "\u2026"


def _oneHeader(request: IRequest, name: str) -> bytes | None:
    """
    The value of the request header C{name}, or L{None} without one.

    @raise _Refusal: 400 when the header is sent more than once: a request
        that says two things about where it comes from is not believed.
    """
    values = request.requestHeaders.getRawHeaders(name.lower().encode("ascii"))
    if not values:
        return None
    if len(values) > 1:
        raise _Refusal(400, {"error": f"more than one {name} header"})
    return values[0]


def _isPort(text: str) -> bool:
    """
    Whether C{text} is the port of a C{Host} value: ASCII digits, maybe none
    (C{localhost:} is valid, RFC 3986 section 3.2.3).
    """
    return all("0" <= c <= "9" for c in text)


def _hostAnswered(host: bytes, allowedHosts: frozenset[str]) -> bool:
    """
    Whether a C{Host} header value names this admin API.

    It does when it is an IP literal (C{127.0.0.1}, C{[::1]}), C{localhost}
    or one of C{allowedHosts}, each with or without a port; the name is
    compared without case and without one trailing dot. An IP literal is
    always safe: a page whose origin is an address cannot have reached this
    one by a DNS answer it controls. Names are what DNS rebinding forges.

    @param host: the raw header value.
    @param allowedHosts: the other names answered, lowercase, without port
        or trailing dot.
    """
    try:
        text = host.decode("ascii").lower()
    except UnicodeDecodeError:
        return False
    if text.startswith("["):
        literal, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not (rest[0] == ":" and _isPort(rest[1:]))):
            return False
        try:
            ipaddress.IPv6Address(literal)
        except ValueError:
            return False
        return True
    name, _, port = text.partition(":")
    if not _isPort(port):
        return False
    if name.endswith("."):
        name = name[:-1]
    if not name:
        return False
    if name == "localhost" or name in allowedHosts:
        return True
    try:
        ipaddress.IPv4Address(name)
    except ValueError:
        return False
    return True


def _checkOrigin(request: IRequest, host: bytes | None) -> None:
    """
    Refuse a mutating request a web page made on another site.

    C{Sec-Fetch-Site} must be absent, C{same-origin} or C{none}; C{Origin}
    must be absent or the API's own origin: the request's scheme and
    C{host}, compared without case. C{Origin: null} (sandboxed pages,
    C{file:} pages, some redirects) is never the API's own.

    @param host: the request's C{Host} value, if any.
    @raise _Refusal: 403 naming the header that gave the request away.
    """
    site = _oneHeader(request, "Sec-Fetch-Site")
    if site is not None and site.lower() not in _SAME_ORIGIN_FETCHES:
        raise _Refusal(403, {
            "error": f"cross-origin request refused: Sec-Fetch-Site is {_show(site)!r}, "
                     "the call was made by a page of another site",
        })
    origin = _oneHeader(request, "Origin")
    if origin is None:
        return
    if origin.lower() == b"null":
        raise _Refusal(403, {
            "error": "cross-origin request refused: Origin is null (an opaque origin "
                     "is never this admin API's own)",
        })
    if host is None:
        raise _Refusal(403, {
            "error": "cross-origin request refused: an Origin without a Host header "
                     "cannot be this admin API's own",
        })
    own = (b"https://" if request.isSecure() else b"http://") + host
    if origin.lower() != own.lower():
        raise _Refusal(403, {
            "error": f"cross-origin request refused: Origin {_show(origin)!r} is not "
                     f"this admin API's own origin {_show(own)!r}",
        })


def _hasBody(request: IRequest) -> bool:
    """
    Whether a request comes with a body, as its head declares it: a
    C{Transfer-Encoding} header (whatever its value, even if the chunked
    body turns out empty) or a C{Content-Length} other than 0. Without
    either, twisted.web reads no body.
    """
    headers = request.requestHeaders
    if headers.hasHeader(b"transfer-encoding"):
        return True
    for value in headers.getRawHeaders(b"content-length", []):
        if not value.strip().isdigit() or int(value) > 0:
            return True
    return False


def _checkBodyType(request: IRequest, expected: str) -> None:
    """
    Refuse a request body that is not of the type C{expected}.

    A request with a body (L{_hasBody}) needs a C{Content-Type}; one
    without needs none, but a type it declares must still be C{expected}:
    an HTML form with no fields posts an empty body typed as a form.
    Parameters (C{; charset=utf-8}) are allowed and ignored: bodies are read
    as UTF-8 whatever they say.

    @raise _Refusal: 415 with C{{"error", "expected"}}.
    """
    value = _oneHeader(request, "Content-Type")
    if value is None:
        if not _hasBody(request):
            return
        raise _Refusal(415, {
            "error": f"a request body needs Content-Type: {expected}",
            "expected": expected,
        })
    mediaType = value.split(b";", 1)[0].strip().lower()
    if mediaType != expected.encode("ascii"):
        raise _Refusal(415, {
            "error": f"unsupported Content-Type {_show(mediaType)!r}: this call takes {expected}",
            "expected": expected,
        })


def _takes(mediaType: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """
    Declare the type of the body an L{AdminAPI} route takes, when it is not
    L{JSON_TYPE}. Put it under C{@app.route}; L{AdminAPI._admit} refuses
    bodies of any other type with 415 before the handler runs::

        @app.route("/admin/routers/<name>/rules", methods=["PUT"])
        @_takes(TEXT_TYPE)
        def putRules(self, request, name): ...

    @param mediaType: a lowercase media type without parameters.
    @return: a decorator returning the handler, marked.
    """

    def declare(handler: Callable[..., Any]) -> Callable[..., Any]:
        handler.bodyType = mediaType  # type: ignore[attr-defined]
        return handler

    return declare


class _AdmittingKlein(Klein):
    """
    A Klein app that runs its instance's C{_admit(request, bodyType)} before
    the handler of every route it matches, so that no route can be added
    without the checks. A refusal is raised as L{_Refusal} and answered by
    the app's error handlers.
    """

    def execute_endpoint(
        self, endpoint: str, request: IRequest, *args: Any, **kwargs: Any
    ) -> Any:
        handler = self.endpoints[endpoint]
        # Klein's route wrapper copies the attributes of the handler it
        # wraps, _takes' included.
        bodyType = getattr(handler, "bodyType", JSON_TYPE)
        # Klein types _instance as Klein | None; it is the object the app
        # was read from, and this app is only used as AdminAPI.app.
        cast("AdminAPI", self._instance)._admit(request, bodyType)
        return super().execute_endpoint(endpoint, request, *args, **kwargs)


def _requireToken(handler: Callable[..., Any]) -> Callable[..., Any]:
    """
    Guard an L{AdminAPI} route handler with the bearer token.

    When the API has a token, a request whose method is not a read (GET,
    HEAD, OPTIONS) must carry C{Authorization: Bearer <token>}; reads must
    too when the API was built with C{protectReads=True}. Without a token,
    every request passes. A refused request gets 401
    C{{"error": "unauthorized"}} with C{WWW-Authenticate: Bearer}, and the
    handler is not called.

    Put it under C{@app.route}::

        @app.route("/admin/shutdown", methods=["POST"])
        @_requireToken
        def shutdown(self, request): ...

    @param handler: a method taking C{(self, request, **routeArguments)}.
    @return: the guarded method.
    """

    @functools.wraps(handler)
    def guarded(self: AdminAPI, request: IRequest, *args: Any, **kwargs: Any) -> Any:
        if not self._authorized(request):
            request.setHeader(b"www-authenticate", b"Bearer")
            return _json(request, {"error": "unauthorized"}, 401)
        return handler(self, request, *args, **kwargs)

    return guarded


STATIC_TYPES = {
    ".html": b"text/html; charset=utf-8",
    ".js": b"text/javascript; charset=utf-8",
    ".css": b"text/css; charset=utf-8",
    ".svg": b"image/svg+xml",
}
"""The content type of each kind of file the dashboard is made of."""

PAGE_POLICY = (
    b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    b"connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)
"""
The C{Content-Security-Policy} of the dashboard's files: its script and
styles come from its own files only (nothing inline, nothing from
elsewhere), it may only call back home, and no page may frame it.
"""


def loadStatic(package: str = "meshproxy.admin") -> dict[str, tuple[bytes, bytes]]:
    """
    Read the dashboard's files: those directly in the C{static} folder of
    C{package} (package data, so this works from a wheel or a zip) whose
    extension is one of L{STATIC_TYPES}. Nothing else can be served:
    subfolders, hidden files and other extensions are left out.

    @param package: the package holding the C{static} folder.
    @return: file name to C{(content type, bytes)}.
    """
    files = {}
    for entry in importlib.resources.files(package).joinpath("static").iterdir():
        name = entry.name
        contentType = STATIC_TYPES.get(posixpath.splitext(name)[1])
        if contentType is None or name.startswith(".") or not entry.is_file():
            continue
        files[name] = (contentType, entry.read_bytes())
    return files


def _routeStats(stats: Any) -> dict[str, Any]:
    """
    The counters of one L{RouteStats<meshproxy.telemetry.metrics.RouteStats>}
    as JSON-ready values: the bucket counts made cumulative, as
    Prometheus' C{le} buckets are (the last one, past C{bounds}, counts
    every request: C{+Inf}).
    """
    return {
        "requests": stats.requests,
        "responses": {
            f"{cls}xx": stats.responses[cls] for cls in range(1, 6)
        },
        "duration": {
            "bounds": list(BUCKETS),
            "buckets": list(itertools.accumulate(stats.buckets)),
            "sum": stats.seconds,
        },
    }


def _routerStats(name: str, router: Any) -> dict[str, Any]:
    """
    One router's part of C{GET /admin/stats}: its client connections
    (C{router.connStats}) and the counters of each bound name it recorded
    in C{router.metrics}. A router without them (a TCP router counts no
    requests) has C{null} connections or no bound names.
    """
    conns = getattr(router, "connStats", None)
    metrics = getattr(router, "metrics", None)
    records = metrics.routes(name) if metrics is not None else []
    return {
        "connections": None if conns is None else {
            "opened": conns.opened, "closed": conns.closed,
        },
        "boundNames": {stats.name: _routeStats(stats) for stats in records},
    }


# Phrases twisted.web does not know (it would say "Unknown Status").
_PHRASES = {421: b"Misdirected Request", 428: b"Precondition Required"}


class AdminAPI:
    """
    The admin API as a class-bound Klein app.

    Health probes (C{/live}, C{/ready}), the dashboard page (C{/}) and its
    files (C{/static/<name>}) are never guarded by the token: probes from
    kubelet or systemd carry none, and the page holds no data (its script
    asks for the token when the API answers 401). C{/metrics}, C{/admin/state},
    C{/admin/stats} and the other reads (rules, policy, history, explain) are
    guarded when C{protectReads}
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
        loaded by the caller, with persistence); a router without one gets
        a store without persistence on first use.
    @param policyStores: the L{PolicyStore} of each router by name, the
        same way.
    @param clock: the C{IReactorTime} for the rules history and for
        scheduling the shutdown; the global reactor when L{None}.
    @raise ValueError: C{token} is empty, C{protectReads} is set without
        a token, or a name in C{allowedHosts} has a port or a scheme.

    Before its handler runs (and before a 404 or 405), every request passes
    L{_admit}, whatever the token settings:

     - C{Host} (DNS rebinding): absent, or an IP literal (C{127.0.0.1},
       C{[::1]:9990}), C{localhost} or a name of C{allowedHosts}, each with
       or without a port and a trailing dot; else 421 Misdirected Request.
       A C{Host} sent twice is a 400.
     - Then for every method but GET, HEAD and OPTIONS: C{Sec-Fetch-Site}
       absent, C{same-origin} or C{none}, and C{Origin} absent or the API's
       own (scheme and C{Host}); else 403 C{{"error": "cross-origin request
       refused: ..."}}. Scripts and curl send neither header.
     - Then for those methods: a C{Content-Type} of the route's type,
       L{JSON_TYPE} unless the route declares another with L{_takes}
       (L{TEXT_TYPE} for the rules), parameters allowed; else 415
       C{{"error", "expected"}}. It may be left out only when the request
       has no body (no C{Transfer-Encoding}, and no C{Content-Length} or
       0), as curl sends a body-less C{POST}.

    The token (L{_requireToken}) is checked after these.

    Routes added for routing rules and operations (JSON unless said):

     - C{GET /admin/stats}: C{{"time", "routers": {name: {"connections",
       "boundNames": {boundName: {"requests", "responses", "duration"}}}}}},
       the cumulative counters the dashboard turns into rates and
       percentiles (see L{stats}).
     - C{GET /admin/routers/{name}/rules}: the rules as C{text/plain}, with
       their version as a quoted C{ETag}.
     - C{PUT /admin/routers/{name}/rules}: replace them (body: the rules,
       at most L{RULES_LIMIT} bytes, else 413). Needs C{If-Match} (428
       without, 412 C{{"error", "current"}} with the current C{ETag} when
       stale); 400 C{{"error", "line", "column"}} on rules the router
       refuses. Then 200 C{{"version", "previous"}}.
     - C{POST /admin/routers/{name}/rules?dryRun=1}: validate and show
       C{{"valid": true, "checked", "changes": [{"name", "old", "new"}]}}
       for recently seen names; nothing is applied.
     - C{GET /admin/routers/{name}/rules/history}: a list of C{{"version",
       "time", "who", "text"}}, newest first.
     - C{POST /admin/routers/{name}/rules/rollback} C{{"version"}}: apply a
       version of the history again, as a new change (C{If-Match} as for
       PUT; 404 for a version not in the history).
     - C{GET /admin/routers/{name}/policy}: the access policy as JSON in
       the config's C{policy} shape, with its version as a quoted C{ETag}.
     - C{PUT /admin/routers/{name}/policy}: replace it (body: JSON, at most
       L{JSON_LIMIT} bytes). C{If-Match} as for the rules; 400
       C{{"error", "problems"}} on a body that is not JSON or a policy the
       config's checks refuse. Then 200 C{{"version", "previous"}}.
     - C{GET /admin/routers/{name}/policy/history} and C{POST
       .../policy/rollback}: as for the rules, entries carrying C{"policy"}
       instead of C{"text"}.
     - C{GET /admin/routers/{name}/explain?name=} (or C{host=}, C{path=}),
       with C{caller=}, C{peer=} and C{method=} optional: the router's
       explanation, with the policy's decision for that caller; 400 with
       the reason on a bad parameter.
     - C{POST /admin/endpoints/drain} and C{/undrain} C{{"router", "name",
       "address"}}: 200 C{{"draining": bool}}; 404 for an unknown router,
       bound name or address.
     - C{POST /admin/shutdown}: 202 C{{"shuttingDown": true, "grace"}},
       then C{runtime.shutdown()} once the answer is out.

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
        self._stores: dict[str, RulesStore] = dict(rulesStores or {})
        self._policyStores: dict[str, PolicyStore] = dict(policyStores or {})
        self._shuttingDown = False
        # Read once: they are part of the installed package.
        self._files = loadStatic()

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
    def metrics(self, request: IRequest) -> bytes:
        """
        The registry in the Prometheus text exposition format.
        """
        body = generate_latest(self._registry)
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode("ascii"))
        request.setHeader(b"cache-control", b"no-store")
        return body

    @app.route("/admin/state", methods=["GET"])
    @_requireToken
    def state(self, request: IRequest) -> bytes:
        """
        Every router's C{state()}: C{{"routers": {name: state}}}.
        """
        routers = {
            name: router.state() for name, router in self._runtime.routers.items()
        }
        return _json(request, {"routers": routers})

    @app.route("/admin/stats", methods=["GET"])
    @_requireToken
    def stats(self, request: IRequest) -> bytes:
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
        counters were read: the rates are deltas over it.
        """
        routers = {
            name: _routerStats(name, router)
            for name, router in sorted(self._runtime.routers.items())
        }
        return _json(request, {"time": self._clock.seconds(), "routers": routers})

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
    def putRules(self, request: IRequest, name: str) -> bytes:
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
    def dryRunRules(self, request: IRequest, name: str) -> bytes:
        """
        Validate rules and show what they would change, without applying.
        """
        store = self._store(name)
        flag = request.args.get(b"dryRun", [])
        if len(flag) != 1 or flag[0].lower() not in _TRUE:
            raise _Refusal(400, {
                "error": "POST on the rules is a dry run: add ?dryRun=1 "
                         "(PUT replaces the rules)",
            })
        text = _readText(request)
        try:
            result = store.dryRun(text)
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
    def rollbackRules(self, request: IRequest, name: str) -> bytes:
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
    def putPolicy(self, request: IRequest, name: str) -> bytes:
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
    def rollbackPolicy(self, request: IRequest, name: str) -> bytes:
        """
        Apply a version of the policy from the history again, as a new
        change.
        """
        return self._rollback(request, name, self._policyStore(name))

    def _rollback(self, request: IRequest, name: str, store: VersionedStore) -> bytes:
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
    ) -> bytes:
        """
        Run a change of a versioned value (C{store.replace} or
        C{store.rollback}) and answer with its outcome: 200 C{{"version",
        "previous"}} with the new C{ETag}, 412 when stale (with the current
        C{ETag}), 400 with the value's own details when invalid, 500 when
        the state file could not be written.
        """
        try:
            previous, version = change(*args)
        except StaleVersion as e:
            request.setHeader(b"etag", _etag(e.current))
            return _json(request, {
                "error": f"stale version: the {store.kind} changed after the version you named",
                "current": e.current,
            }, 412)
        except InvalidValue as e:
            return _json(request, e.details(), 400)
        except PersistError as e:
            _log.error(
                "{kind} of router {router} not changed: {error}",
                kind=store.kind, router=name, error=str(e),
            )
            return _json(request, {"error": str(e)}, 500)
        request.setHeader(b"etag", _etag(version))
        return _json(request, {"version": version, "previous": previous})

    @app.route("/admin/routers/<name>/explain", methods=["GET"])
    @_requireToken
    def explain(self, request: IRequest, name: str) -> bytes:
        """
        How the router routes a logical name, a host or a path, and what its
        access policy says of a request from C{caller=} (an identity),
        C{peer=} (an IP address) with C{method=} (C{GET} unless given).
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
        return _json(request, result)

    @app.route("/admin/endpoints/drain", methods=["POST"])
    @_requireToken
    def drain(self, request: IRequest) -> bytes:
        """
        Stop sending new requests to one endpoint; those in flight finish.
        """
        return self._drain(request, True)

    @app.route("/admin/endpoints/undrain", methods=["POST"])
    @_requireToken
    def undrain(self, request: IRequest) -> bytes:
        """
        Send requests to a drained endpoint again.
        """
        return self._drain(request, False)

    def _drain(self, request: IRequest, draining: bool) -> bytes:
        body = _readJSON(request, "router", "name", "address")
        routerName, boundName, address = body["router"], body["name"], body["address"]
        capability = "drain" if draining else "undrain"
        router = self._router(routerName, capability)
        try:
            getattr(router, capability)(boundName, address)
        except KeyError as e:
            raise _Refusal(404, {"error": _reason(e)}) from None
        _audit.info(
            "endpoint {address} of {name} on router {router} {action} by {who}",
            address=address, name=boundName, router=routerName,
            action="drained" if draining else "undrained", who=self._who(request),
        )
        return _json(request, {"draining": draining})

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
        name. The name is looked up among the files found at startup,
        never joined to a path, so no request can reach another file.
        """
        return self._static(request, name)

    def _static(self, request: IRequest, name: str) -> bytes:
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
