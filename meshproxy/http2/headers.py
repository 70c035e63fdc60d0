"""
Header fields across HTTP/2: a stream's request made from its header list,
and the fields of a response (and its trailers) an HTTP/2 client may be
sent.

L{requestFrom} checks what RFC 9113 asks of a request's header list (8.2,
8.3: field names lowercase and valid, values without surrounding
whitespace, no connection-specific field, C{te} only as C{trailers}, the
pseudo-header fields known, once each, first, present, and C{:authority}
matching any C{Host}) in the one pass that makes the request (the h2
library's own checks, a chain of generators, cost more, and fail the whole
connection), then the checks an HTTP/1 request head gets
(L{checkHead<meshproxy.http.checks.checkHead>}: method, target, C{Host},
C{Expect}, values, body size) and the router's limits on the number of
fields and the target's length. A malformed request is answered 400 on its
stream; the connection goes on.
"""

from __future__ import annotations

import re
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
    "trailersFrom",
]

#: The version of a stream's request (L{Request.version}).
VERSION = "2.0"

_VIA = (b"via", b"1.1 meshproxy")

#: Connection tokens that name no field that could be sent.
_NOT_NAMED = HOP_BY_HOP | frozenset([b"close"])

#: Fields an HTTP/2 message never has (RFC 9113 8.2.2).
_CONNECTION_SPECIFIC = frozenset(
    [b"connection", b"proxy-connection", b"keep-alive", b"transfer-encoding", b"upgrade"]
)
#: A character a field name may not have (RFC 9113 8.2.1): controls,
#: space, uppercase, DEL and above, and a colon (but for pseudo-header
#: fields, read apart).
_BAD_NAME = re.compile(rb"[\x00-\x20A-Z:\x7f-\xff]")
#: A character a method (a token) may not have.
_BAD_METHOD = re.compile(rb"[^!#$%&'*+\-.^_`|~0-9A-Za-z]|^$")
_SPACE = b" \t"


def requestFrom(headers: Headers, ended: bool, settings: ServerConfig) -> Request:
    """
    The request of a stream, from its header list, checked as RFC 9113 asks
    (8.2, 8.3) and as an HTTP/1 request head is.

    @param headers: the C{(name, value)} pairs the h2 library decoded.
    @param ended: whether the header block ended the stream (no body).
    @param settings: the router's C{server} settings.
    @return: a L{Request} as an HTTP/1 client's would be, its C{Host} the
        C{:authority}, its cookies in one field (8.2.3), its version
        L{VERSION}. A body of unknown length goes upstream chunked.
    @raise ProxyError: for a malformed request (400), or one refused as an
        HTTP/1 one would be.
    """
    method = path = scheme = authority = host = None
    regular = False
    fields: Headers = []
    cookies = None
    for pair in headers:
        name, value = pair
        if name[:1] == b":":
            if regular:
                raise _malformed("A pseudo-header field after a regular one.")
            if name == b":method" and method is None:
                method = value
            elif name == b":path" and path is None:
                path = value
            elif name == b":authority" and authority is None:
                authority = value
            elif name == b":scheme" and scheme is None:
                scheme = value
            else:
                raise _malformed("Unknown or repeated pseudo-header field.")
            continue
        regular = True
        if not name or _BAD_NAME.search(name) is not None:
            raise ProxyError(400, "bad-header", "Invalid header name.")
        if value and (value[0] in _SPACE or value[-1] in _SPACE):
            raise ProxyError(400, "bad-header", "Whitespace around a header value.")
        if name in _CONNECTION_SPECIFIC:
            raise _malformed("Connection-specific header field.")
        if name == b"te":
            if value.lower() != b"trailers":
                raise _malformed("TE other than trailers.")
        elif name == b"host":
            if host is not None and host != value:
                raise ProxyError(400, "bad-host", "More than one Host header.")
            host = value
            continue
        elif name == b"cookie":
            cookies = value if cookies is None else cookies + b"; " + value
            continue
        fields.append(pair)
    if method is None or _BAD_METHOD.search(method) is not None:
        raise _malformed("No valid :method.")
    if method != b"CONNECT" and (path is None or not scheme):
        raise _malformed("No :scheme or :path.")
    if authority is None:
        if host is None:
            raise ProxyError(400, "bad-host", "No :authority nor Host.")
        authority = host
    elif host is not None and host != authority:
        raise ProxyError(400, "bad-host", ":authority and Host differ.")
    if cookies is not None:
        fields.append((b"cookie", cookies))
    if len(fields) + 1 > settings.maxHeaders:  # (and the host field)
        raise ProxyError(431, "too-many-headers", "Too many request headers.")
    path = path or b""
    if len(path) > settings.maxUriLength:
        raise ProxyError(414, "uri-too-long", "Request-target too long.")
    fields.insert(0, (b"host", authority))
    request = Request(method, path, VERSION, fields)
    if path[:1] not in (b"/", b"*") and method != b"CONNECT":
        raise _malformed("Invalid :path.")
    checkHead(request, settings)
    if not ended and request.contentLength is None:
        request.chunked = True
    return request


def trailersFrom(trailers: Headers) -> Headers:
    """
    A request's trailer fields, checked (RFC 9113 8.1: no pseudo-header
    field; names and values as in a header list).

    @raise ProxyError: for malformed trailers.
    """
    for name, value in trailers:
        if not name or _BAD_NAME.search(name) is not None:
            raise _malformed("Invalid trailer field.")
        if b"\r" in value or b"\n" in value or b"\x00" in value:
            raise _malformed("Invalid trailer value.")
    return trailers


def _malformed(detail: str) -> ProxyError:
    return ProxyError(400, "bad-request", "Malformed HTTP/2 request: " + detail)


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
