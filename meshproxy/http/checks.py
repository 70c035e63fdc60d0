"""
The checks RFC 9112 asks of a proxy that llhttp (httptools) leaves out, run
on each request head before anything of it goes upstream, and the answers
to the parser's own refusals.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import httptools

from meshproxy.http.message import PLAIN_REQUEST_FIELDS, ProxyError, Request, spellings
from meshproxy.routing.identifiers import splitAbsoluteForm
from meshproxy.telemetry.tracecontext import TRACE_HEADERS

if TYPE_CHECKING:
    from meshproxy.config import ServerConfig

__all__ = ["checkHead", "checkRequest", "parserError"]

_VERSIONS = frozenset(["1.0", "1.1"])

# Characters allowed in a request-target (RFC 3986 plus '%' escapes); llhttp
# lets some others through.
_TARGET_OK = (
    b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    b"-._~:/?#[]@!$&'()*+,;=%"
)
_HOST_OK = (
    b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~:[]"
    b"!$&'()*+,;=%"
)


def _keeping(allowed: bytes) -> bytes:
    """
    A C{bytes.translate} table that maps each byte of C{allowed} to itself
    and every other byte to another one.

    C{value.translate(table)} is C{value} itself when no byte changed (in
    CPython, for C{bytes}), so C{value.translate(table) is value} says at
    once that every byte of C{value} is allowed, and only a value failing
    that is compared (L{_allowed}): one pass in C over a ready table
    (translating with C{delete} builds its table on every call, about 1,000
    instructions more; a regular expression's character class costs about
    as much).
    """
    return bytes(c if c in allowed else (c + 1) % 256 for c in range(256))


def _allowed(value: bytes, table: bytes) -> bool:
    """
    Whether every byte of C{value} is kept by C{table} (see L{_keeping}):
    the slow way, for a value whose translation was not C{value} itself.
    """
    return value.translate(table) == value


#: The longest Host (or absolute-form authority) taken: a host name has at
#: most 253 bytes, with a port or as an IPv6 literal a few more; a client's
#: longer one (up to the 64 KiB head) would be copied into names, logs and
#: spans.
MAX_HOST_LENGTH = 1024

_TARGET_TABLE = _keeping(_TARGET_OK)
_HOST_TABLE = _keeping(_HOST_OK)
# No field value may hold CR, LF or NUL.
_VALUE_TABLE = _keeping(bytes(c for c in range(256) if c not in b"\r\n\x00"))


# The fields checkHead reads, by lowercased name: one dictionary lookup per
# field (a C{mesh-*} name is not here: it is known by its prefix).
_HOST, _CONTENT_LENGTH, _TRANSFER_ENCODING, _CONNECTION, _UPGRADE, _EXPECT, _TRACE = range(7)
_FIELDS: dict[bytes, int] = dict.fromkeys(
    [n for n in TRACE_HEADERS if n[:5] != b"mesh-"], _TRACE
)
_FIELDS.update(
    {
        b"host": _HOST,
        b"content-length": _CONTENT_LENGTH,
        b"transfer-encoding": _TRANSFER_ENCODING,
        b"connection": _CONNECTION,
        b"upgrade": _UPGRADE,
        b"expect": _EXPECT,
    }
)

# The same by the name as received, for names spelled as usual (no lowered
# copy of the name), with the fields checkHead does not read but knows to
# be neither mesh context nor any of these (_PLAIN).
_PLAIN = -1
_SPELLED: dict[bytes, int] = dict.fromkeys(spellings(PLAIN_REQUEST_FIELDS), _PLAIN)
_SPELLED.update(
    {spelling: kind for name, kind in _FIELDS.items() for spelling in spellings([name])}
)


def parserError(e: httptools.HttpParserError) -> ProxyError:
    """
    Map an httptools parse error to the answer meshproxy gives.
    """
    message = str(e) or e.__class__.__name__
    if message.startswith("Pause on PRI"):
        # The HTTP/2 connection preface after the start of a connection (at
        # the start, it switches the connection to HTTP/2: ServerProtocol).
        return ProxyError(
            505, "version-not-supported", "Only HTTP/1.0 and HTTP/1.1 are supported here."
        )
    if isinstance(e, httptools.HttpParserInvalidMethodError):
        return ProxyError(400, "bad-request", "Invalid method.")
    if isinstance(e, httptools.HttpParserInvalidURLError):
        return ProxyError(400, "bad-request", "Invalid request-target.")
    return ProxyError(400, "bad-request", "Malformed request: %s." % (message,))


def _absoluteForm(request: Request) -> bytes:
    """
    Turn an absolute-form request (C{GET http://users/x HTTP/1.1}) into
    origin-form: the target's authority replaces the C{Host} header, and
    is what the router identifies the request by (RFC 9112 3.2.2).

    @return: the authority, the request's host from now on.
    @raise ProxyError: for a target with userinfo (C{http://a@b/}, which
        reads as one host and routes to another) or without a host.
    """
    # checkRequest saw an "http://" or "https://" target: never None.
    authority, path = splitAbsoluteForm(request.target)  # type: ignore[misc]
    if b"@" in authority:
        raise ProxyError(400, "bad-request", "Userinfo is not allowed in a request-target.")
    if not authority:
        raise ProxyError(400, "bad-request", "No host in an absolute request-target.")
    if not path.startswith(b"/"):
        path = b"/" + path
    request.target = path
    headers = request.headers
    for i in range(len(headers) - 1, -1, -1):
        if headers[i][0].lower() == b"host":
            del headers[i]
    headers.insert(0, (b"Host", authority))
    return authority


def checkRequest(request: Request, settings: ServerConfig) -> None:
    """
    The checks RFC 9112 asks of a proxy that llhttp does not make.

    Sets the framing fields of C{request}; raises L{ProxyError} for a
    request that must be refused.
    """
    if request.version not in _VERSIONS:
        raise ProxyError(
            505, "version-not-supported", "Only HTTP/1.0 and HTTP/1.1 are supported here."
        )
    checkHead(request, settings)


def checkHead(request: Request, settings: ServerConfig) -> None:
    """
    The checks of L{checkRequest} but the version's: the method, the
    target, the fields and the framing they declare. An HTTP/2 stream's
    request (whose pseudo-header fields the h2 library checked, with its
    C{:authority} as its C{Host}) goes through these too.

    Sets the framing fields of C{request}; raises L{ProxyError} for a
    request that must be refused.
    """
    method = request.method
    if method == b"CONNECT":
        raise ProxyError(405, "method-not-allowed", "CONNECT is not supported.")
    target = request.target
    if not target:
        raise ProxyError(400, "bad-request", "Empty request-target.")
    authority = None
    first = target[0]
    if first == 0x2F:  # "/"
        pass
    elif target == b"*":
        if method != b"OPTIONS":
            raise ProxyError(400, "bad-request", "Asterisk-form is only for OPTIONS.")
    elif target[:7].lower() == b"http://" or target[:8].lower() == b"https://":
        authority = target
    else:
        raise ProxyError(400, "bad-request", "Invalid request-target.")
    if target.translate(_TARGET_TABLE) is not target and not _allowed(target, _TARGET_TABLE):
        raise ProxyError(400, "bad-request", "Invalid character in request-target.")

    host = None
    hostCount = 0
    contentLength = None
    transferEncoding = None
    connection = None
    upgrade = None
    for name, value in request.headers:
        # (the dictionaries' method called in place: CPython specialises
        # that; taking it as a bound method first costs more for the few
        # fields of a request)
        kind = _SPELLED.get(name)
        if kind is None:
            n = name.lower()
            kind = _FIELDS.get(n)
            if kind is None:
                kind = _PLAIN
                if n[:5] == b"mesh-":
                    request.meshHeaders = True
        if kind == _PLAIN:
            pass
        elif kind == _HOST:
            hostCount += 1
            host = value
        elif kind == _CONTENT_LENGTH:
            if contentLength is not None and contentLength != value:
                raise ProxyError(400, "bad-framing", "Conflicting Content-Length.")
            contentLength = value
        elif kind == _TRANSFER_ENCODING:
            if transferEncoding is not None:
                transferEncoding += b"," + value
            else:
                transferEncoding = value
        elif kind == _CONNECTION:
            connection = value if connection is None else connection + b"," + value
        elif kind == _UPGRADE:
            upgrade = value
        elif kind == _EXPECT:
            if value.strip().lower() == b"100-continue":
                request.expectContinue = True
            else:
                raise ProxyError(417, "expectation-failed", "Unsupported expectation.")
        else:
            request.traceHeaders = True
        if value.translate(_VALUE_TABLE) is not value and not _allowed(value, _VALUE_TABLE):
            raise ProxyError(400, "bad-header", "Invalid character in a header value.")

    if request.version == "1.1":
        if hostCount != 1:
            raise ProxyError(
                400, "bad-host", "HTTP/1.1 needs exactly one Host header."
            )
    elif hostCount > 1:
        raise ProxyError(400, "bad-host", "More than one Host header.")
    if authority is not None:
        host = _absoluteForm(request)
    if host is not None:
        if not host:
            raise ProxyError(400, "bad-host", "Empty Host header.")
        if host.translate(_HOST_TABLE) is not host and not _allowed(host, _HOST_TABLE):
            raise ProxyError(400, "bad-host", "Invalid Host header.")
        if len(host) > MAX_HOST_LENGTH:
            raise ProxyError(
                400, "bad-host", "Host header longer than %d bytes." % (MAX_HOST_LENGTH,)
            )
    request.host = host

    if transferEncoding is not None:
        if contentLength is not None:
            raise ProxyError(
                400, "bad-framing", "Both Content-Length and Transfer-Encoding."
            )
        if request.version != "1.1":
            raise ProxyError(
                400, "bad-framing", "Transfer-Encoding in an HTTP/1.0 request."
            )
        codings = [c.strip().lower() for c in transferEncoding.split(b",")]
        if codings != [b"chunked"]:
            if codings[-1] != b"chunked":
                raise ProxyError(400, "bad-framing", "Body length cannot be determined.")
            raise ProxyError(
                501, "unsupported-transfer-coding", "Only chunked transfer coding is supported."
            )
        request.chunked = True
    elif contentLength is not None:
        # llhttp has checked the digits; this only turns them into a number.
        length = int(contentLength)
        request.contentLength = length
        if settings.maxBodyBytes is not None and length > settings.maxBodyBytes:
            raise ProxyError(413, "body-too-large", "Request body too large.")

    if connection is not None:
        tokens = tuple(
            t.strip().lower() for t in connection.split(b",") if t.strip()
        )
        request.connectionTokens = tokens
        if upgrade is not None and b"upgrade" in tokens:
            request.upgrade = True
    elif upgrade is not None:
        # Upgrade without "Connection: upgrade" is not an upgrade request.
        request.upgrade = False
