"""
The admin API's guard, applied to every route by L{_AdmittingKlein} (before
a 404 or 405 too), in this order:

 - C{Host} (DNS rebinding): absent, or an IP literal (C{127.0.0.1},
   C{[::1]:9990}), C{localhost} or a name of C{admin.allowedHosts}, each
   with or without a port and a trailing dot; else 421. A C{Host} sent
   twice is a 400.
 - For every method but GET, HEAD and OPTIONS: C{Sec-Fetch-Site} absent,
   C{same-origin} or C{none}, and C{Origin} absent or the API's own
   (scheme and C{Host}); else 403. Scripts and curl send neither header.
 - For those methods: a C{Content-Type} of the route's type, C{JSON_TYPE}
   unless the route declares another with L{_takes} (C{TEXT_TYPE} for the
   rules), parameters allowed; else 415. It may be left out only when the
   request has no body (no C{Transfer-Encoding}, and no C{Content-Length}
   or 0), as curl sends a body-less C{POST}.
 - Then the bearer token, on the routes that take L{_requireToken}.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from klein import Klein
from twisted.web.iweb import IRequest

from meshproxy.admin.requests import JSON_TYPE, _json, _Refusal, _show

if TYPE_CHECKING:
    from meshproxy.admin.api import AdminAPI

# Methods that only read. With a token configured, everything else needs it;
# these need it only when protectReads is set. Everything else is also
# origin-checked and type-checked (AdminAPI._admit).
_READ_METHODS = frozenset({b"GET", b"HEAD", b"OPTIONS"})

# What a browser says of a request's initiator that still lets a mutating
# call through: the API's own page, or the user typing or bookmarking.
_SAME_ORIGIN_FETCHES = frozenset({b"same-origin", b"none"})


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
