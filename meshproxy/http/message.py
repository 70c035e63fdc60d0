"""
HTTP/1.1 message pieces shared by the server and upstream sides: the request
record, header hygiene, framing helpers and the answers meshproxy makes itself.

Everything here runs per request, so it favours plain loops over bytes and
small allocations over abstraction.
"""

from __future__ import annotations

from collections.abc import Iterable
from http import HTTPStatus
from typing import Any

__all__ = [
    "Headers",
    "Request",
    "HOP_BY_HOP",
    "ProxyError",
    "errorResponse",
    "encodeChunk",
    "findHeader",
    "lastChunk",
    "LAST_CHUNK",
    "reasonPhrase",
    "forbiddenTrailer",
]

#: Headers that describe one connection and never cross the proxy
#: (RFC 9110 7.6.1), plus the framing headers meshproxy writes itself.
HOP_BY_HOP = frozenset(
    [
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"content-length",
    ]
)

LAST_CHUNK = b"0\r\n\r\n"


def spellings(names: list[bytes]) -> frozenset[bytes]:
    """
    The usual spellings of lowercase field names: as they are, and each
    word capitalized (C{b"user-agent"}, C{b"User-Agent"}).

    The request path looks a field up by its name as received when it is
    spelled as usual, rather than by a lowered copy of it (a new bytes
    object per field, and its hash): these are the spellings it knows.
    """
    return frozenset(
        spelling
        for name in names
        for spelling in (name, b"-".join(word.capitalize() for word in name.split(b"-")))
    )


#: Request fields that clients commonly send and that mean nothing to
#: meshproxy's checks and rewriting (neither framing nor hop-by-hop, nor
#: trace or mesh context, nor forwarding), lowercase.
PLAIN_REQUEST_FIELDS = [
    b"user-agent",
    b"accept",
    b"accept-encoding",
    b"accept-language",
    b"accept-charset",
    b"authorization",
    b"cache-control",
    b"content-type",
    b"cookie",
    b"origin",
    b"pragma",
    b"referer",
    b"if-none-match",
    b"if-modified-since",
    b"x-request-id",
    b"x-requested-with",
    b"grpc-accept-encoding",
    b"grpc-encoding",
]

Headers = list[tuple[bytes, bytes]]
"""Header (or trailer) fields as received: C{(name, value)} pairs, in order."""

_REASONS = {s.value: s.phrase.encode("ascii") for s in HTTPStatus}


def reasonPhrase(code: int) -> bytes:
    """
    The standard reason phrase for a status code.

    @param code: an HTTP status code.
    @type code: L{int}
    @return: the phrase, or C{b"Unknown"}.
    @rtype: L{bytes}
    """
    return _REASONS.get(code, b"Unknown")


def findHeader(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    """
    The value of the first header called C{name} in C{headers}.

    @param headers: C{(name, value)} pairs, as received.
    @param name: a lowercase header name.
    @return: the value, or L{None} when absent.
    """
    for n, v in headers:
        if n.lower() == name:
            return v
    return None


#: Fields that must never come from a trailer (RFC 9110 6.5.1): framing,
#: routing, request modifiers, authentication, connection control and how
#: the content is to be processed. Together with every C{mesh-*} field
#: (the mesh's own context), they are dropped from trailers both ways.
TRAILER_FORBIDDEN = HOP_BY_HOP | frozenset(
    [
        b"trailer",
        b"host",
        b"authorization",
        b"cookie",
        b"set-cookie",
        b"www-authenticate",
        b"expect",
        b"max-forwards",
        b"range",
        b"if-match",
        b"if-none-match",
        b"if-modified-since",
        b"if-unmodified-since",
        b"if-range",
        b"cache-control",
        b"content-encoding",
        b"content-type",
        b"content-range",
        b"location",
        b"retry-after",
        b"vary",
        b"age",
        b"expires",
        b"date",
        b"forwarded",
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"via",
    ]
)


def forbiddenTrailer(name: bytes) -> bool:
    """
    Whether a field called C{name} must be dropped when it comes as a
    trailer.

    @param name: the field name as received.
    @rtype: L{bool}
    """
    n = name.lower()
    return n in TRAILER_FORBIDDEN or n[:5] == b"mesh-"


def lastChunk(trailers: Headers | None) -> bytes:
    """
    The end of a chunked body: the last chunk and the trailer fields.

    @param trailers: C{(name, value)} pairs, or L{None}.
    @rtype: L{bytes}
    """
    if not trailers:
        return LAST_CHUNK
    return b"0\r\n" + b"".join(b"%s: %s\r\n" % (n, v) for n, v in trailers) + b"\r\n"


def encodeChunk(data: bytes) -> bytes:
    """
    Frame C{data} as one chunk of a chunked body.

    @param data: non-empty body bytes.
    @type data: L{bytes}
    @rtype: L{bytes}
    """
    return b"%x\r\n%s\r\n" % (len(data), data)


class Request:
    """
    One parsed request head, as received from a client.

    @ivar method: the method token, e.g. C{b"GET"}.
    @ivar target: the request-target exactly as received.
    @ivar version: C{"1.1"} or C{"1.0"}.
    @ivar headers: a list of C{[name, value]} pairs, byte-exact, in order.
    @ivar keepAlive: whether the client's connection may be kept after this
        exchange.
    @ivar chunked: whether the body uses chunked framing.
    @ivar contentLength: the declared body length, or L{None}.
    @ivar upgrade: whether the client asked to switch protocols.
    @ivar expectContinue: whether the client sent C{Expect: 100-continue}.
    @ivar identity: the caller's verified certificate identity
        (L{PeerIdentity<meshproxy.tls.PeerIdentity>}), or L{None}.
    @ivar peer: the caller's IP address as text, or L{None}.
    @ivar meshHeaders: whether any C{mesh-*} field came.
    @ivar traceHeaders: whether any trace context field came (C{traceparent},
        C{tracestate}, C{b3}, C{x-b3-*}).
    """

    __slots__ = (
        "method",
        "target",
        "version",
        "headers",
        "keepAlive",
        "chunked",
        "contentLength",
        "upgrade",
        "expectContinue",
        "connectionTokens",
        "host",
        "meshHeaders",
        "traceHeaders",
        "identity",
        "peer",
    )

    def __init__(self, method: bytes, target: bytes, version: str, headers: Headers) -> None:
        self.method = method
        self.target = target
        self.version = version
        self.headers = headers
        self.keepAlive = True
        self.chunked = False
        self.contentLength: int | None = None
        self.upgrade = False
        self.expectContinue = False
        self.connectionTokens: tuple[bytes, ...] = ()
        self.host: bytes | None = None
        self.meshHeaders = False
        # Whether any trace context field (traceparent, b3, ...) came.
        self.traceHeaders = False
        # The caller: its verified certificate's identity (a PeerIdentity,
        # over TLS with client certificates) and its address.
        self.identity: Any = None
        self.peer: str | None = None

    @property
    def hasBody(self) -> bool:
        """
        Whether a body follows the head.
        """
        return self.chunked or bool(self.contentLength)

    def header(self, name: bytes) -> bytes | None:
        """
        The value of the first header called C{name}.

        @param name: a lowercase header name.
        @type name: L{bytes}
        @return: the value, or L{None} when absent.
        """
        if name == b"host":
            return self.host
        return findHeader(self.headers, name)


class ProxyError(Exception):
    """
    A failure meshproxy answers itself, with a C{mesh-err} header naming the
    reason.

    @ivar status: the HTTP status code to answer with.
    @ivar reason: the short machine-readable reason, sent as C{mesh-err}.
    @ivar detail: a human-readable sentence for the body.
    """

    def __init__(self, status: int, reason: str, detail: str = "") -> None:
        Exception.__init__(self, status, reason, detail)
        self.status = status
        self.reason = reason
        self.detail = detail


def errorBody(reason: str, detail: str) -> bytes:
    """
    The body of an answer made by meshproxy (not to a gRPC call, nor to a
    HEAD request): the detail, or the reason, as a line of text.
    """
    return ("%s\n" % (detail or reason,)).encode("utf-8", "replace")


def errorResponse(
    status: int, reason: str, detail: str, close: bool = False, head: bool = False
) -> bytes:
    """
    Render an answer made by meshproxy itself.

    @param status: the status code.
    @param reason: the C{mesh-err} value, a short token.
    @param detail: a sentence for humans, sent as the text body.
    @param close: whether to announce C{Connection: close}.
    @param head: whether the request was HEAD (headers only).
    @rtype: L{bytes}
    """
    body = errorBody(reason, detail)
    lines = [
        b"HTTP/1.1 %d %s\r\n" % (status, reasonPhrase(status)),
        b"mesh-err: %s\r\n" % (reason.encode("ascii"),),
        b"Content-Type: text/plain; charset=utf-8\r\n",
        b"Content-Length: %d\r\n" % (len(body),),
    ]
    if close:
        lines.append(b"Connection: close\r\n")
    lines.append(b"\r\n")
    if not head:
        lines.append(body)
    return b"".join(lines)
