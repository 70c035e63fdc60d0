"""
Header fields across HTTP/2: a stream's request made from its header list,
and the fields of a response (and its trailers) an HTTP/2 client may be
sent.

The h2 library has checked what RFC 9113 asks of a request's header list
(8.2, 8.3: lowercase names, no connection-specific fields, C{te} only as
C{trailers}, the pseudo-header fields present, once, first, and known, and
C{:authority} matching any C{Host}); L{requestFrom} adds the checks an
HTTP/1 request head gets (L{checkHead<meshproxy.http.checks.checkHead>}:
method, target, C{Host}, C{Expect}, values, body size) and the router's
limits on the number of fields and the target's length.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from meshproxy.http.checks import checkHead
from meshproxy.http.message import HOP_BY_HOP, ProxyError, Request

if TYPE_CHECKING:
    from meshproxy.config import ServerConfig
    from meshproxy.http.message import Headers

__all__ = [
    "VERSION",
    "errorFields",
    "interimFields",
    "requestFrom",
    "responseFields",
    "trailerFields",
]

#: The version of a stream's request (L{Request.version}).
VERSION = "2.0"

_VIA = (b"via", b"1.1 meshproxy")

#: Connection tokens that name no field that could be sent.
_NOT_NAMED = HOP_BY_HOP | frozenset([b"close"])


def requestFrom(headers: Headers, ended: bool, settings: ServerConfig) -> Request:
    """
    The request of a stream, from its header list.

    @param headers: the C{(name, value)} pairs the h2 library decoded and
        checked, pseudo-header fields first.
    @param ended: whether the header block ended the stream (no body).
    @param settings: the router's C{server} settings.
    @return: a L{Request} as an HTTP/1 client's would be, its C{Host} the
        C{:authority}, its version L{VERSION}. A body of unknown length goes
        upstream chunked.
    @raise ProxyError: for a request refused as an HTTP/1 one would be.
    """
    method = b""
    path = b""
    authority = None
    fields: Headers = []
    for pair in headers:
        name = pair[0]
        if name[:1] == b":":
            if name == b":method":
                method = pair[1]
            elif name == b":path":
                path = pair[1]
            elif name == b":authority":
                authority = pair[1]
            # (:scheme is the client's; :protocol only comes with CONNECT,
            # refused below.)
        elif name != b"host" or authority is None:
            fields.append(pair)
    if len(fields) > settings.maxHeaders:
        raise ProxyError(431, "too-many-headers", "Too many request headers.")
    if len(path) > settings.maxUriLength:
        raise ProxyError(414, "uri-too-long", "Request-target too long.")
    if authority is not None:
        # (a Host field, if any, had the same value: h2 checked it)
        fields.insert(0, (b"host", authority))
    request = Request(method, path, VERSION, fields)
    if path[:1] not in (b"/", b"*") and method != b"CONNECT":
        raise ProxyError(400, "bad-request", "Invalid :path.")
    checkHead(request, settings)
    if not ended and request.contentLength is None:
        request.chunked = True
    return request


def responseFields(
    status: int, headers: Headers, contentLength: bytes | None, chunked: bool
) -> Headers:
    """
    The header list of a response to an HTTP/2 client.

    @param status: the status.
    @param headers: the upstream's fields, as received.
    @param contentLength: the length the upstream declared, or L{None}.
    @param chunked: whether the upstream's body was chunked.
    @return: C{:status} first, then the fields with lowercase names, but
        the connection-specific ones (RFC 9113 8.2.2: every hop-by-hop
        field, and those named in C{Connection}), then C{via} and the
        C{content-length}.
    """
    fields: Headers = [(b":status", b"%d" % (status,))]
    append = fields.append
    named = None
    for name, value in headers:
        n = name.lower()
        if n in HOP_BY_HOP:
            if n == b"connection":
                named = value
            continue
        append((n, value))
    if named is not None:
        tokens = {t.strip().lower() for t in named.split(b",") if t.strip()}
        if not tokens <= _NOT_NAMED:
            fields = [f for f in fields if f[0] not in tokens]
    fields.append(_VIA)
    if contentLength is not None and not chunked:
        fields.append((b"content-length", contentLength))
    return fields


def interimFields(status: int, headers: Headers) -> Headers:
    """
    The header list of an interim (1xx) response to an HTTP/2 client.
    """
    fields: Headers = [(b":status", b"%d" % (status,))]
    for name, value in headers:
        n = name.lower()
        if n not in HOP_BY_HOP:
            fields.append((n, value))
    return fields


def trailerFields(trailers: Headers) -> Headers:
    """
    The trailer fields of a response to an HTTP/2 client (the upstream side
    dropped those that may not be trailers), with lowercase names.
    """
    return [(name.lower(), value) for name, value in trailers]


def errorFields(error: ProxyError, length: int) -> Headers:
    """
    The header list of an answer made by meshproxy (as
    L{errorResponse<meshproxy.http.message.errorResponse>} makes it for
    HTTP/1).

    @param length: the length of its body.
    """
    return [
        (b":status", b"%d" % (error.status,)),
        (b"mesh-err", error.reason.encode("ascii")),
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", b"%d" % (length,)),
    ]
