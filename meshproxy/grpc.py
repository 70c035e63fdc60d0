"""
What meshproxy knows of gRPC (gRPC over HTTP/2, as grpc/grpc's
C{doc/PROTOCOL-HTTP2.md} describes it): its status codes, how a request and
a response say they are gRPC, the C{grpc-timeout} header, the answers
meshproxy makes to a gRPC caller, and the bounded names of the methods
counted apart in the metrics.

Nothing here touches the request path's objects: the exchange, the
classifier, the client connections and telemetry call these functions.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from meshproxy.http.message import Request

__all__ = [
    "CODES",
    "CODE_NAMES",
    "FAILURE_CODES",
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "DEADLINE_EXCEEDED",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "INTERNAL",
    "UNAVAILABLE",
    "GrpcMethods",
    "codeOf",
    "errorCode",
    "errorHead",
    "errorFields",
    "formatTimeout",
    "httpToGrpc",
    "isGrpc",
    "isGrpcRequest",
    "parseStatus",
    "parseTimeout",
    "percentEncode",
    "responseStatus",
    "trailerStatus",
]

#: The 17 status codes, by name, as the spec spells them (case-sensitive).
CODES: dict[str, int] = {
    "OK": 0,
    "CANCELLED": 1,
    "UNKNOWN": 2,
    "INVALID_ARGUMENT": 3,
    "DEADLINE_EXCEEDED": 4,
    "NOT_FOUND": 5,
    "ALREADY_EXISTS": 6,
    "PERMISSION_DENIED": 7,
    "RESOURCE_EXHAUSTED": 8,
    "FAILED_PRECONDITION": 9,
    "ABORTED": 10,
    "OUT_OF_RANGE": 11,
    "UNIMPLEMENTED": 12,
    "INTERNAL": 13,
    "UNAVAILABLE": 14,
    "DATA_LOSS": 15,
    "UNAUTHENTICATED": 16,
}

#: The name of each code, by number.
CODE_NAMES: dict[int, str] = {number: name for name, number in CODES.items()}

OK = 0
CANCELLED = 1
UNKNOWN = 2
DEADLINE_EXCEEDED = 4
PERMISSION_DENIED = 7
RESOURCE_EXHAUSTED = 8
INTERNAL = 13
UNAVAILABLE = 14

#: The codes that count as failures of the endpoint that answered them
#: (failure accrual, the balancer's success rate, an error span): those
#: Envoy's outlier detection sees as 5xx (it maps grpc-status to an HTTP
#: status, UNKNOWN INTERNAL DATA_LOSS to 500, UNAVAILABLE to 503,
#: DEADLINE_EXCEEDED to 504) but UNIMPLEMENTED (501 there), which a caller
#: naming a method no instance has would otherwise make every instance
#: fail. The other codes are the application's answers (NOT_FOUND,
#: INVALID_ARGUMENT, ...), as a 4xx is: the endpoint worked. A code outside
#: the 17 is a failure too (Envoy: 500).
FAILURE_CODES = frozenset([2, 4, 13, 14, 15])

#: The longest C{grpc-timeout} value: 8 digits.
_TIMEOUT_DIGITS = 8
_UNITS = {
    0x48: 3600.0,  # H
    0x4D: 60.0,  # M
    0x53: 1.0,  # S
    0x6D: 0.001,  # m
    0x75: 0.000001,  # u
    0x6E: 0.000000001,  # n
}
_LIMIT = 10**_TIMEOUT_DIGITS


def isGrpc(contentType: bytes | None) -> bool:
    """
    Whether a C{content-type} value is gRPC's: C{application/grpc}, alone or
    followed by C{+proto}, C{+json} (any C{+} suffix) or parameters. gRPC-Web
    (C{application/grpc-web}) is not: its status travels in the body.
    """
    if contentType is None or len(contentType) < 16:
        return False
    head = contentType[:16].lower()
    if head != b"application/grpc":
        return False
    rest = contentType[16:17]
    return rest in (b"", b"+", b";", b" ")


def isGrpcRequest(request: Request) -> bool:
    """
    Whether a request is a gRPC call: a POST with a gRPC C{content-type}.
    """
    if request.method != b"POST":
        return False
    for name, value in request.headers:
        if len(name) == 12 and name.lower() == b"content-type":
            return isGrpc(value)
    return False


def parseStatus(value: bytes) -> int:
    """
    A C{grpc-status} value: its code, or UNKNOWN when it is not 1 to 3
    ASCII digits (a client told nothing it can read sees UNKNOWN too).
    """
    value = value.strip(b" \t")
    if 0 < len(value) <= 3 and value.isdigit():
        return int(value)
    return UNKNOWN


def httpToGrpc(status: int) -> int:
    """
    The code a gRPC client makes of a response without C{grpc-status}, from
    its HTTP status (grpc/grpc's C{doc/http-grpc-status-mapping.md}).
    """
    if status == 400:
        return INTERNAL
    if status == 401:
        return 16
    if status == 403:
        return PERMISSION_DENIED
    if status == 404:
        return 12
    if status in (429, 502, 503, 504):
        return UNAVAILABLE
    return UNKNOWN


def responseStatus(status: int, headers: Iterable[tuple[bytes, bytes]]) -> tuple[int | None, bool]:
    """
    What a response head to a gRPC call says.

    @param status: its HTTP status.
    @param headers: its fields.
    @return: C{(code, grpcResponse)}: whether it is a gRPC response (its
        content type), and its code when the head tells it: a
        trailers-only response's C{grpc-status}, or the HTTP status mapped
        (L{httpToGrpc}) for an answer that is not gRPC or not 200; L{None}
        when the code is to come in the trailers.
    """
    contentType = grpcStatus = None
    for name, value in headers:
        n = name.lower()
        if n == b"content-type":
            contentType = value
        elif n == b"grpc-status":
            grpcStatus = value
    if not isGrpc(contentType):
        return httpToGrpc(status), False
    if grpcStatus is not None:
        return parseStatus(grpcStatus), True
    if status != 200:
        return httpToGrpc(status), True
    return None, True


def trailerStatus(trailers: Iterable[tuple[bytes, bytes]] | None) -> int:
    """
    The code in a gRPC response's trailers; UNKNOWN when they have none
    (the spec has the client make one up: what it can make up is UNKNOWN).
    """
    for name, value in trailers or ():
        if name.lower() == b"grpc-status":
            return parseStatus(value)
    return UNKNOWN


def codeOf(value: str | int) -> int:
    """
    A status code from its name (case-sensitive, as the spec spells it) or
    its number.

    @raise ValueError: for anything else.
    """
    if isinstance(value, bool):
        raise ValueError(f"expected a gRPC status code, got {value!r}")
    if isinstance(value, int):
        if value in CODE_NAMES:
            return value
        raise ValueError(f"gRPC status codes are 0 to 16, got {value!r}")
    code = CODES.get(value)
    if code is None:
        raise ValueError(
            f"unknown gRPC status code {value!r}: expected one of {', '.join(CODES)}"
        )
    return code


# -- grpc-timeout -----------------------------------------------------------


def parseTimeout(value: bytes) -> float | None:
    """
    A C{grpc-timeout} value (1 to 8 ASCII digits and a unit: C{H} C{M} C{S}
    C{m} C{u} C{n}).

    @return: the seconds, or L{None} when malformed. Never raises.
    """
    size = len(value)
    if not 2 <= size <= _TIMEOUT_DIGITS + 1:
        return None
    unit = _UNITS.get(value[-1])
    digits = value[:-1]
    if unit is None or not digits.isdigit() or not digits.isascii():
        return None
    return int(digits) * unit


def formatTimeout(seconds: float) -> bytes:
    """
    A C{grpc-timeout} value for C{seconds} (rounded down, never longer),
    in the finest unit whose count fits in 8 digits.
    """
    if seconds <= 0.0:
        return b"0n"
    for scale, unit in ((1e9, b"n"), (1e6, b"u"), (1e3, b"m")):
        count = int(seconds * scale)
        if count < _LIMIT:
            return b"%d%s" % (count, unit)
    for scale, unit in ((1.0, b"S"), (60.0, b"M"), (3600.0, b"H")):
        count = int(seconds / scale)
        if count < _LIMIT:
            return b"%d%s" % (count, unit)
    return b"99999999H"


# -- answers made by meshproxy --------------------------------------------

#: The code of each C{mesh-err} reason meshproxy answers with; any other is
#: told by its HTTP status (L{errorCode}).
_REASON_CODES = {
    "no-route": UNAVAILABLE,
    "route-failed": UNAVAILABLE,
    "no-endpoint": UNAVAILABLE,
    "overloaded": UNAVAILABLE,
    "delegation-failed": UNAVAILABLE,
    "upstream-connect": UNAVAILABLE,
    "upstream-reset": UNAVAILABLE,
    "upstream-tls": UNAVAILABLE,
    "upstream-protocol": UNAVAILABLE,
    "timeout": DEADLINE_EXCEEDED,
    "deadline-expired": DEADLINE_EXCEEDED,
    "forbidden": PERMISSION_DENIED,
    "rate-limited": RESOURCE_EXHAUSTED,
    "budget-exhausted": RESOURCE_EXHAUSTED,
    "body-too-large": RESOURCE_EXHAUSTED,
    "header-too-large": RESOURCE_EXHAUSTED,
    "too-many-headers": RESOURCE_EXHAUSTED,
}


def errorCode(status: int, reason: str) -> int:
    """
    The gRPC code of an answer meshproxy makes: no route, no endpoint,
    overloaded, an upstream that failed: UNAVAILABLE; a timeout or an
    expired deadline: DEADLINE_EXCEEDED; forbidden by the policy:
    PERMISSION_DENIED; too large, rate limited: RESOURCE_EXHAUSTED; any
    other 502 503 504: UNAVAILABLE; anything else (a malformed request):
    INTERNAL.

    @param status: the HTTP status it would have as an HTTP answer.
    @param reason: its C{mesh-err} reason.
    """
    code = _REASON_CODES.get(reason)
    if code is not None:
        return code
    if status in (502, 503, 504):
        return UNAVAILABLE
    return INTERNAL


# Bytes sent as they are in grpc-message: space and VCHAR but "%".
_UNENCODED = frozenset(range(0x20, 0x7F)) - {0x25}


def percentEncode(text: str) -> bytes:
    """
    A C{grpc-message} value: C{text} in UTF-8, percent-encoded as the spec
    asks (every byte but space and printable ASCII other than C{%}).
    """
    out = bytearray()
    for byte in text.encode("utf-8", "replace"):
        if byte in _UNENCODED:
            out.append(byte)
        else:
            out += b"%%%02X" % (byte,)
    return bytes(out)


def errorHead(status: int, reason: str, detail: str, close: bool = False) -> bytes:
    """
    An answer made by meshproxy to a gRPC caller over HTTP/1: 200, its code
    in C{grpc-status}, its detail in C{grpc-message}, no body (a
    trailers-only response), and the C{mesh-err} reason.

    @param status: the HTTP status it would have as an HTTP answer.
    @param close: whether to announce C{Connection: close}.
    """
    code = errorCode(status, reason)
    lines = [
        b"HTTP/1.1 200 OK\r\n",
        b"mesh-err: %s\r\n" % (reason.encode("ascii"),),
        b"content-type: application/grpc\r\n",
        b"grpc-status: %d\r\n" % (code,),
        b"grpc-message: %s\r\n" % (percentEncode(detail or reason),),
        b"Content-Length: 0\r\n",
    ]
    if close:
        lines.append(b"Connection: close\r\n")
    lines.append(b"\r\n")
    return b"".join(lines)


def errorFields(status: int, reason: str, detail: str) -> list[tuple[bytes, bytes]]:
    """
    The header list of an answer made by meshproxy to a gRPC caller over
    HTTP/2: a trailers-only response (one HEADERS frame, ending the
    stream), as L{errorHead}.
    """
    return [
        (b":status", b"200"),
        (b"content-type", b"application/grpc"),
        (b"grpc-status", b"%d" % (errorCode(status, reason),)),
        (b"grpc-message", percentEncode(detail or reason)),
        (b"mesh-err", reason.encode("ascii")),
    ]


# -- the methods named in the metrics -------------------------------------

#: The label of a service or method not named in the config.
OTHER = "other"


class GrpcMethods:
    """
    The service and method labels of the gRPC metrics: the methods the
    config names (C{grpc.methods}), each C{/pkg.Service/Method}, or a
    whole service as C{/pkg.Service/*} (its methods then C{other}); every
    other call is C{other}/C{other}. The label sets are as many as the
    config's entries, whatever the callers send.
    """

    __slots__ = ("_exact", "_services")

    def __init__(self, patterns: Iterable[str] = ()) -> None:
        """
        @param patterns: the C{grpc.methods} entries (checked by the config).
        """
        self._exact: dict[bytes, tuple[str, str]] = {}
        self._services: dict[bytes, str] = {}
        for pattern in patterns:
            service, _, method = pattern[1:].partition("/")
            if method == "*":
                self._services[service.encode("ascii")] = service
            else:
                self._exact[pattern.encode("ascii")] = (service, method)

    def labels(self, path: bytes) -> tuple[str, str]:
        """
        The C{(service, method)} labels of a call to C{path} (its C{:path}).
        """
        exact = self._exact.get(path)
        if exact is not None:
            return exact
        end = path.find(b"/", 1)
        if end > 0:
            service = self._services.get(path[1:end])
            if service is not None:
                return service, OTHER
        return OTHER, OTHER


def callName(path: bytes) -> tuple[str | None, str | None]:
    """
    The service and method a gRPC call's path names (C{/pkg.Service/Method}),
    for the access log; L{None} for a path not of that form.
    """
    if path[:1] != b"/":
        return None, None
    service, slash, method = path[1:].partition(b"/")
    if not slash or not service or not method or b"/" in method:
        return None, None
    return service.decode("latin-1"), method.decode("latin-1")
