"""
What meshproxy sends: a request head rewritten for the upstream, and a
response rewritten for the client (L{ResponseWriter}).

Both drop hop-by-hop fields (and those named in C{Connection}), add C{Via},
and write the framing themselves. Requests also get the forwarding fields,
this hop's mesh context (C{mesh-ctx-deadline}, C{mesh-ctx-dtab},
C{mesh-reqid}) and trace context (C{traceparent}, C{b3}, ...) in place of
whatever the client sent.
"""

from __future__ import annotations

from zope.interface import implementer

from meshproxy.http.interfaces import IResponseWriter
from meshproxy.http.message import (
    HOP_BY_HOP,
    PLAIN_REQUEST_FIELDS,
    Headers,
    Request,
    encodeChunk,
    findHeader,
    lastChunk,
    spellings,
)
from meshproxy.telemetry.tracecontext import TRACE_HEADERS

__all__ = ["MESH_CONTEXT", "ResponseWriter", "interimHead", "requestHead"]

#: Context headers a hop replaces with its own (never forwarded as received).
MESH_CONTEXT = frozenset([b"mesh-ctx-deadline", b"mesh-ctx-dtab", b"mesh-dtab", b"mesh-reqid"])

_VIA = b"1.1 meshproxy"
_VIA_PIECE = b"\r\nVia: " + _VIA

#: Request fields never forwarded as received: hop-by-hop ones, the client
#: certificate header (only meshproxy says who a caller is), and the trace
#: context (this hop sends its own, continuing the caller's).
_NEVER_FORWARDED = HOP_BY_HOP | TRACE_HEADERS | frozenset([b"x-forwarded-client-cert"])

# What requestHead does with a field, by lowercased name (a name not here is
# forwarded as it is): one dictionary lookup per field.
_DROP, _MESH, _XFF, _FORWARDED, _PROTO, _VIA_FIELD, _EXPECT = range(7)
_REQUEST_FIELDS: dict[bytes, int] = {
    b"x-forwarded-for": _XFF,
    b"forwarded": _FORWARDED,
    b"x-forwarded-proto": _PROTO,
    b"via": _VIA_FIELD,
    b"expect": _EXPECT,
}
_REQUEST_FIELDS.update(dict.fromkeys(MESH_CONTEXT, _MESH))
# (Never forwarded wins over any other meaning.)
_REQUEST_FIELDS.update(dict.fromkeys(_NEVER_FORWARDED, _DROP))

#: Request field names, as clients commonly spell them, that are forwarded
#: as they are (unless Connection names them): found without a lowered copy
#: of the name.
_FORWARDED_AS_IS = frozenset(
    spelling
    for spelling in spellings([b"host", *PLAIN_REQUEST_FIELDS])
    if spelling.lower() not in _REQUEST_FIELDS and spelling[:5].lower() != b"mesh-"
)

#: Connection tokens that name no field meshproxy would forward.
_NOT_NAMED = HOP_BY_HOP | frozenset([b"close"])

#: Response field names, as servers commonly spell them, that are never
#: hop-by-hop: passed on as they are without a lowered copy of the name
#: (which costs a new bytes object and its hash per field). Any other
#: spelling goes the long way, with the same result.
_PASSED = spellings(
    [
        b"date",
        b"server",
        b"content-type",
        b"cache-control",
        b"etag",
        b"last-modified",
        b"expires",
        b"vary",
        b"accept-ranges",
        b"content-encoding",
        b"set-cookie",
        b"location",
        b"x-content-type-options",
        b"grpc-status",
        b"grpc-message",
    ]
) | frozenset([b"ETag"])

# Both heads are built as one list of pieces, each line's CRLF in front of
# it, joined once at the end: a field costs a list extension (about 600
# instructions less than a join of its own, and a third less again than
# bytes % formatting); the status lines are formatted once.
_STATUS_LINES = {status: b"HTTP/1.1 %d " % (status,) for status in range(100, 600)}


def requestHead(
    request: Request,
    peer: bytes,
    scheme: bytes,
    forwarded: bool,
    deadline: bytes,
    override: bytes | None,
    clientCert: bytes | None = None,
    trace: bytes = b"",
) -> bytes:
    """
    The request line and header block sent upstream. (Its arguments may be
    given by position: this runs for every request.)

    @param request: the request as received (origin-form target).
    @param peer: the client's address, for C{X-Forwarded-For} and
        C{Forwarded}.
    @param scheme: C{b"http"} or C{b"https"}.
    @param forwarded: whether to add the forwarding fields.
    @param deadline: the C{mesh-ctx-deadline} value.
    @param override: the C{mesh-ctx-dtab} value, or L{None}.
    @param clientCert: the C{x-forwarded-client-cert} value for a caller
        with a verified certificate, or L{None}. Whatever a client sends in
        that header is never forwarded.
    @param trace: this hop's trace context and C{mesh-reqid} header lines
        (L{RequestTrace.headers<meshproxy.telemetry.observe.RequestTrace.headers>}),
        each ending in CRLF.
    """
    # (pieces: see _STATUS_LINES)
    pieces = [request.method, b" ", request.target, b" HTTP/1.1"]
    tokens = request.connectionTokens
    mesh = request.meshHeaders
    seenXff = seenFwd = seenVia = seenProto = False
    for name, value in request.headers:
        if not tokens and name in _FORWARDED_AS_IS:
            pieces += (b"\r\n", name, b": ", value)
            continue
        n = name.lower()
        # (called in place: see checks.checkHead)
        kind = _REQUEST_FIELDS.get(n)
        if kind is None:
            # Most fields: forwarded as they are (unless Connection names
            # them).
            if not (tokens and n in tokens):
                pieces += (b"\r\n", name, b": ", value)
            continue
        if kind == _DROP or (tokens and n in tokens):
            continue
        if kind == _MESH:
            if mesh:
                # Replaced below by this hop's own context.
                continue
        elif kind == _VIA_FIELD:
            pieces += (b"\r\n", name, b": ", value, b", " + _VIA)
            seenVia = True
            continue
        elif kind == _EXPECT:
            # meshproxy answers 100-continue itself.
            continue
        elif forwarded:
            if kind == _XFF:
                pieces += (b"\r\n", name, b": ", value, b", ", peer)
                seenXff = True
                continue
            if kind == _FORWARDED:
                pieces += (b"\r\n", name, b": ", value, b", ", _forwardedElement(peer, scheme))
                seenFwd = True
                continue
            seenProto = True
        pieces += (b"\r\n", name, b": ", value)
    if forwarded:
        if not seenXff:
            pieces += (b"\r\nX-Forwarded-For: ", peer)
        if not seenProto:
            pieces += (b"\r\nX-Forwarded-Proto: ", scheme)
        if not seenFwd:
            pieces += (b"\r\nForwarded: for=", _quotedPeer(peer), b";proto=", scheme)
    if not seenVia:
        pieces.append(_VIA_PIECE)
    # (the trace lines each end in CRLF; so do the lines after them)
    pieces += (b"\r\nmesh-ctx-deadline: ", deadline, b"\r\n", trace)
    if override is not None:
        pieces += (b"mesh-ctx-dtab: ", override, b"\r\n")
    if clientCert is not None:
        pieces += (b"x-forwarded-client-cert: ", clientCert, b"\r\n")
    if request.upgrade:
        pieces.append(b"Connection: Upgrade\r\n")
        upgrade = findHeader(request.headers, b"upgrade")
        if upgrade is not None:
            pieces += (b"Upgrade: ", upgrade, b"\r\n")
    if request.chunked:
        pieces.append(b"Transfer-Encoding: chunked\r\n")
    elif request.contentLength is not None:
        pieces.append(b"Content-Length: %d\r\n" % (request.contentLength,))
    pieces.append(b"\r\n")
    return b"".join(pieces)


@implementer(IResponseWriter)
class ResponseWriter:
    """
    Writes one response to an HTTP/1 client: its head rewritten (hop-by-hop
    fields dropped, C{Via} added, framing written by meshproxy), then its
    body framed as the head said.

    @ivar bodyless: no body follows (HEAD, 1xx, 204, 304).
    @ivar chunked: the body is re-framed as chunks.
    @ivar closeDelimited: the body ends when the connection closes (an
        HTTP/1.0 client and a response without a length).
    """

    __slots__ = ("_out", "bodyless", "chunked", "closeDelimited")

    def __init__(self, out: list[bytes], bodyless: bool) -> None:
        """
        @param out: the client connection's queue of bytes to send: the
            response's bytes are appended to it (the list rather than its
            C{append}, which would be a new bound method per response, and
            a call CPython does not specialise).
        @param bodyless: whether no body may follow the head.
        """
        self._out = out
        self.bodyless = bodyless
        self.chunked = False
        self.closeDelimited = False

    def head(
        self,
        status: int,
        reason: bytes,
        headers: Headers,
        *,
        contentLength: bytes | None,
        chunked: bool,
        version: str,
        keepAlive: bool,
    ) -> bool:
        """
        Write the status line and header block.

        @param status: the upstream's status.
        @param reason: its reason phrase, as received.
        @param headers: its C{(name, value)} fields, as received.
        @param contentLength: the declared length (bytes, as received) or
            L{None}.
        @param chunked: whether the upstream body is chunked.
        @param version: the client's HTTP version, C{"1.0"} or C{"1.1"}.
        @param keepAlive: whether the client connection may stay open.
        @return: whether it may still stay open: an HTTP/1.0 client and a
            body without a length end with the connection.
        """
        bodyless = self.bodyless
        line = _STATUS_LINES.get(status)
        if line is None:
            line = b"HTTP/1.1 %d " % (status,)
        # (pieces as in requestHead: each field's CRLF in front of it)
        pieces = [line, reason]
        tokens = None
        for name, value in headers:
            if name in _PASSED:
                pieces += (b"\r\n", name, b": ", value)
                continue
            n = name.lower()
            if n in HOP_BY_HOP:
                if n == b"connection":
                    tokens = value
                    continue
                if n == b"content-length" and bodyless:
                    pieces += (b"\r\n", name, b": ", value)
                continue
            pieces += (b"\r\n", name, b": ", value)
        if tokens is not None:
            pieces = _dropNamed(pieces, tokens)
        pieces.append(_VIA_PIECE)
        if status == 101:
            upgrade = findHeader(headers, b"upgrade")
            pieces.append(b"\r\nConnection: Upgrade")
            if upgrade is not None:
                pieces += (b"\r\nUpgrade: ", upgrade)
        elif not bodyless:
            if contentLength is not None and not chunked:
                pieces += (b"\r\nContent-Length: ", contentLength)
            elif version == "1.1":
                pieces.append(b"\r\nTransfer-Encoding: chunked")
                self.chunked = True
            else:
                self.closeDelimited = True
                keepAlive = False
        if not keepAlive and status != 101:
            pieces.append(b"\r\nConnection: close")
        elif version == "1.0":
            pieces.append(b"\r\nConnection: keep-alive")
        pieces.append(b"\r\n\r\n")
        self._out.append(b"".join(pieces))
        return keepAlive

    def body(self, data: bytes) -> None:
        """
        Write a piece of the body.
        """
        if not self.bodyless:
            self._out.append(encodeChunk(data) if self.chunked else data)

    def end(self, trailers: Headers | None) -> None:
        """
        Write the end of the body (the last chunk and the trailers).
        """
        if self.chunked:
            self._out.append(lastChunk(trailers))


def interimHead(status: int, reason: bytes, headers: Headers) -> bytes:
    """
    An interim (1xx) response passed on to an HTTP/1.1 client, as
    received but for hop-by-hop fields.
    """
    kept = [(n, v) for n, v in headers if n.lower() not in HOP_BY_HOP]
    return b"HTTP/1.1 %d %s\r\n%s\r\n" % (
        status,
        reason,
        b"".join(b"%s: %s\r\n" % h for h in kept),
    )


def _quotedPeer(peer: bytes) -> bytes:
    """
    A peer address as C{Forwarded}'s C{for=} gives it: an IPv6 address (it
    has colons) bracketed and quoted (RFC 7239 6), others as they are.
    """
    # (find: "in" would format and discard a TypeError first.)
    if peer.find(b":") >= 0:
        return b'"[' + peer + b']"'
    return peer


def _forwardedElement(peer: bytes, scheme: bytes) -> bytes:
    return b"".join((b"for=", _quotedPeer(peer), b";proto=", scheme))


def _dropNamed(pieces: list[bytes], connectionValue: bytes) -> list[bytes]:
    """
    Remove the fields named in a C{Connection} header value (RFC 9110
    7.6.1): they too are hop-by-hop.

    @param pieces: a response head's pieces so far: the status line's two,
        then four per field (CRLF, name, C{": "}, value).
    """
    names = {t.strip().lower() for t in connectionValue.split(b",") if t.strip()}
    if names <= _NOT_NAMED:
        # "keep-alive", "close": nothing else to drop (the usual case).
        return pieces
    kept = pieces[:2]
    for i in range(2, len(pieces), 4):
        if pieces[i + 1].lower() not in names:
            kept += pieces[i:i + 4]
    return kept
