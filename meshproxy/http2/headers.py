"""
Header fields across HTTP/2: a stream's request made from its header list,
and the fields of a response (and its trailers) an HTTP/2 client may be
sent; on the upstream side, the header list of a request sent to an HTTP/2
upstream (L{requestFields}) and the response read from one
(L{responseFrom}, L{upstreamTrailers}).

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
from typing import TYPE_CHECKING, Any

from hpack import NeverIndexedHeaderTuple

from meshproxy.http.checks import checkHead
from meshproxy.http.message import HOP_BY_HOP, ProxyError, Request, forbiddenTrailer
from meshproxy.http.rewrite import MESH_CONTEXT
from meshproxy.http2.fast import PlainEncoder
from meshproxy.telemetry.tracecontext import TRACE_HEADERS

if TYPE_CHECKING:
    from meshproxy.config import ServerConfig
    from meshproxy.http.message import Headers

__all__ = [
    "VERSION",
    "errorFields",
    "interimFields",
    "UpstreamResponseError",
    "RequestMemo",
    "ResponseMemo",
    "copyRequest",
    "requestFields",
    "requestFrom",
    "responseFields",
    "responseFrom",
    "upstreamTrailers",
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


class RequestMemo:
    """
    The requests of a connection's streams, made once per header list: a
    client that sends the same header block again (h2load, gRPC clients,
    browsers: every field indexed) gets from the HPACK decoder the very
    same list (L{FastDecoder<meshproxy.http2.fast.FastDecoder>}), whose
    request is then a copy of the one L{requestFrom} made of it (its
    checks passed on those same fields).

    A list is known by its identity, the memo holding it (so that no
    other list takes its id): it is taken apart the second time it comes,
    not the first (a list that never comes again costs no copy). A list
    refused by L{requestFrom} is taken apart again each time (and refused
    again).

    @ivar settings: the router's C{server} settings (those of the
        connection: they do not change under it).
    """

    __slots__ = ("settings", "_seen")

    #: The header lists remembered (it starts over past it).
    SIZE = 32

    def __init__(self, settings: ServerConfig) -> None:
        self.settings = settings
        # id(headers), ended -> (headers, the request made of them, or None
        # when they were seen once)
        self._seen: dict[tuple[int, bool], tuple[Headers, Request | None]] = {}

    def request(self, headers: Headers, ended: bool) -> Request:
        """
        The request of a stream: see L{requestFrom}.

        @param headers: the header list, as the decoder gave it (not to be
            changed).
        @param ended: whether the header block ended the stream.
        @raise ProxyError: as L{requestFrom}.
        """
        key = (id(headers), ended)
        seen = self._seen
        entry = seen.get(key)
        if entry is not None and entry[0] is headers:
            template = entry[1]
            if template is not None:
                return copyRequest(template)
            request = requestFrom(headers, ended, self.settings)
            seen[key] = (headers, copyRequest(request))
            return request
        request = requestFrom(headers, ended, self.settings)
        if len(seen) >= self.SIZE:
            seen.clear()
        seen[key] = (headers, None)
        return request


def copyRequest(request: Request) -> Request:
    """
    A copy of a request as L{requestFrom} made it (before its exchange):
    its fields a list of their own.
    """
    copy = Request(request.method, request.target, request.version, list(request.headers))
    copy.keepAlive = request.keepAlive
    copy.chunked = request.chunked
    copy.contentLength = request.contentLength
    copy.upgrade = request.upgrade
    copy.expectContinue = request.expectContinue
    copy.connectionTokens = request.connectionTokens
    copy.host = request.host
    copy.meshHeaders = request.meshHeaders
    copy.traceHeaders = request.traceHeaders
    copy.identity = request.identity
    copy.peer = request.peer
    return copy


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


class ResponseMemo:
    """
    The response heads of a connection's streams, made once per upstream
    head: the same status, fields and framing as a response before (an
    upstream answers alike until its C{Date} changes) give the same header
    list (L{responseFields}), and its header block as the connection's
    encoder writes it.

    @ivar encoder: the connection's HPACK encoder: a block is kept only
        when it is a L{PlainEncoder<meshproxy.http2.fast.PlainEncoder>}
        (whose blocks depend on the fields alone).
    """

    __slots__ = ("encoder", "_heads")

    #: The heads remembered (it starts over past it).
    SIZE = 32

    def __init__(self, encoder: Any) -> None:
        self.encoder = encoder
        self._heads: dict[tuple[Any, ...], tuple[Headers, bytes | None]] = {}

    def head(
        self, status: int, headers: Headers, contentLength: bytes | None, chunked: bool
    ) -> tuple[Headers, bytes | None]:
        """
        The header list of a response: see L{responseFields}.

        @return: the list (shared: not to be changed), and its header block
            (without a table size update), or L{None}.
        """
        try:
            key = (status, contentLength, chunked, *headers)
            heads = self._heads
            head = heads.get(key)
        except TypeError:
            # (fields as lists: not kept)
            return responseFields(status, headers, contentLength, chunked), None
        if head is not None:
            return head
        fields = responseFields(status, headers, contentLength, chunked)
        block = None
        encoder = self.encoder
        if isinstance(encoder, PlainEncoder) and not encoder.header_table.resized:
            block = encoder.encode(fields)
        if len(heads) >= self.SIZE:
            heads.clear()
        head = heads[key] = (fields, block)
        return head


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


# -- the upstream side ------------------------------------------------------

#: Request fields never sent to an HTTP/2 upstream as received: the
#: connection-specific ones (RFC 9113 8.2.2; C{te} is sent again as
#: C{trailers} when the client asked for it), C{host} (the C{:authority}),
#: C{expect} (meshproxy answers 100-continue itself), the client
#: certificate and trace context (this hop sends its own).
_NOT_SENT_UPSTREAM = (
    HOP_BY_HOP
    | TRACE_HEADERS
    | frozenset([b"host", b"expect", b"x-forwarded-client-cert", b"http2-settings"])
)
_VIA_VALUE = b"1.1 meshproxy"


class UpstreamResponseError(Exception):
    """
    A response (or trailers) from an HTTP/2 upstream that breaks RFC 9113
    8.3.2 or the client limits: the try fails as C{upstream-protocol}.
    """


def requestFields(
    request: Request,
    *,
    scheme: bytes,
    peer: bytes,
    clientScheme: bytes,
    forwarded: bool,
    deadline: bytes,
    override: bytes | None,
    clientCert: bytes | None,
    trace: bytes,
) -> Headers:
    """
    The header list of a request sent to an HTTP/2 upstream: what
    L{requestHead<meshproxy.http.rewrite.requestHead>} sends an HTTP/1.1
    upstream, as HTTP/2 fields.

    @param request: the request as received (HTTP/1 or HTTP/2).
    @param scheme: the C{:scheme}: the upstream connection's (C{b"https"}
        over TLS).
    @param peer: the client's address, for the forwarding fields.
    @param clientScheme: the client connection's scheme, for the
        forwarding fields.
    @param forwarded: whether to add the forwarding fields.
    @param deadline: the C{mesh-ctx-deadline} value.
    @param override: the C{mesh-ctx-dtab} value, or L{None}.
    @param clientCert: the C{x-forwarded-client-cert} value, or L{None}.
    @param trace: this hop's trace context lines (HTTP/1 syntax).
    @return: the pseudo-header fields (C{:method}, C{:scheme},
        C{:authority} from C{Host}, C{:path}), then the fields with
        lowercase names, hop-by-hop ones and those named in C{Connection}
        dropped, C{te: trailers} kept, the forwarding, C{via}, mesh and
        trace fields added, and the C{content-length} of a body of known
        length.
    """
    target = request.target
    authority = request.host
    if authority is None:
        for name, value in request.headers:
            if name.lower() == b"host":
                authority = value
                break
    if target[:1] != b"/" and target != b"*":
        # absolute-form (a request to a proxy): its path, and its authority
        # when there was no Host.
        rest = target.split(b"://", 1)[-1]
        slash = rest.find(b"/")
        if authority is None:
            authority = rest if slash < 0 else rest[:slash]
        target = b"/" if slash < 0 else rest[slash:]
    fields: Headers = [
        (b":method", request.method),
        (b":scheme", scheme),
        (b":authority", authority or b""),
        (b":path", target),
    ]
    append = fields.append
    tokens = request.connectionTokens
    mesh = request.meshHeaders
    trailersAsked = False
    seenXff = seenFwd = seenVia = seenProto = False
    for name, value in request.headers:
        n = name.lower()
        if n in _NOT_SENT_UPSTREAM or (tokens and n in tokens):
            if n == b"te" and b"trailers" in value.lower():
                trailersAsked = True
            continue
        if mesh and n in MESH_CONTEXT:
            continue
        if forwarded:
            if n == b"x-forwarded-for":
                value = value + b", " + peer
                seenXff = True
            elif n == b"forwarded":
                value = value + b", " + _forwardedElement(peer, clientScheme)
                seenFwd = True
            elif n == b"x-forwarded-proto":
                seenProto = True
        if n == b"via":
            value = value + b", " + _VIA_VALUE
            seenVia = True
        append((n, value))
    if trailersAsked:
        append((b"te", b"trailers"))
    if forwarded:
        if not seenXff:
            append((b"x-forwarded-for", peer))
        if not seenProto:
            append((b"x-forwarded-proto", clientScheme))
        if not seenFwd:
            append((b"forwarded", _forwardedElement(peer, clientScheme)))
    if not seenVia:
        append(_VIA)
    # Values new on every request are not added to the HPACK table (they
    # would push out the ones that repeat, and make every lookup longer).
    append(NeverIndexedHeaderTuple(b"mesh-ctx-deadline", deadline))
    if trace:
        for line in trace.split(b"\r\n"):
            name, sep, value = line.partition(b":")
            if sep:
                append(NeverIndexedHeaderTuple(name.strip().lower(), value.strip()))
    if override is not None:
        append((b"mesh-ctx-dtab", override))
    if clientCert is not None:
        append((b"x-forwarded-client-cert", clientCert))
    if not request.chunked and request.contentLength is not None:
        append((b"content-length", b"%d" % (request.contentLength,)))
    return fields


def _forwardedElement(peer: bytes, scheme: bytes) -> bytes:
    if b":" in peer:
        peer = b'"[' + peer + b']"'
    return b"for=%s;proto=%s" % (peer, scheme)


#: A character a field value may not have (RFC 9113 8.2.1).
_BAD_VALUE = re.compile(rb"[\x00\r\n]")


def _checkField(name: bytes, value: bytes) -> None:
    if not name or _BAD_NAME.search(name) is not None:
        raise UpstreamResponseError("invalid field name %r" % (name[:64],))
    if _BAD_VALUE.search(value) is not None or (
        value and (value[0] in _SPACE or value[-1] in _SPACE)
    ):
        raise UpstreamResponseError("invalid value of field %r" % (name[:64],))
    if name in _CONNECTION_SPECIFIC or name == b"te":
        raise UpstreamResponseError("connection-specific field %r" % (name[:64],))


def responseFrom(headers: Headers, maxHeaders: int) -> tuple[int, Headers, bytes | None]:
    """
    A response head from an HTTP/2 upstream, checked strictly (RFC 9113
    8.3.2: one C{:status} and no other pseudo-header field, first; names
    lowercase and valid; values without CR, LF, NUL or surrounding
    whitespace; no connection-specific field; one C{content-length} value).

    @param headers: the C{(name, value)} pairs the h2 library decoded
        (its size bounded by the announced maximum header list size).
    @param maxHeaders: the number of fields allowed (C{client.maxHeaders}).
    @return: C{(status, fields, contentLength)}: the fields without the
        pseudo-header one (as an HTTP/1.1 upstream's would be), the declared
        length or L{None}.
    @raise UpstreamResponseError: for a malformed response.
    """
    status = None
    fields: Headers = []
    contentLength = None
    for pair in headers:
        name, value = pair
        if name[:1] == b":":
            if name != b":status" or status is not None or fields:
                raise UpstreamResponseError("unexpected pseudo-header field %r" % (name[:64],))
            if len(value) != 3 or not value.isdigit():
                raise UpstreamResponseError("invalid :status")
            status = int(value)
            continue
        _checkField(name, value)
        if name == b"content-length":
            if not value.isdigit() or (contentLength is not None and contentLength != value):
                raise UpstreamResponseError("invalid content-length")
            contentLength = value
        fields.append(pair)
        if len(fields) > maxHeaders:
            raise UpstreamResponseError("more than %d header fields" % (maxHeaders,))
    if status is None or status < 100 or status == 101:
        raise UpstreamResponseError("no valid :status")
    return status, fields, contentLength


def upstreamTrailers(
    headers: Headers, maxHeaders: int, dropped: list[bytes] | None = None
) -> Headers:
    """
    The trailer fields of a response from an HTTP/2 upstream, checked as
    its head is (no pseudo-header field), those that may not be trailers
    dropped (L{forbiddenTrailer<meshproxy.http.message.forbiddenTrailer>}).

    @param dropped: collects the names dropped, when given.
    @raise UpstreamResponseError: for malformed trailers.
    """
    kept: Headers = []
    for pair in headers:
        name, value = pair
        if name[:1] == b":":
            raise UpstreamResponseError("a pseudo-header field in trailers")
        _checkField(name, value)
        if forbiddenTrailer(name):
            if dropped is not None:
                dropped.append(name)
            continue
        kept.append(pair)
        if len(kept) > maxHeaders:
            raise UpstreamResponseError("more than %d trailer fields" % (maxHeaders,))
    return kept
