"""
The sections of a router's configuration: how it identifies requests,
balances, ejects, retries, times out, limits and trusts; each a frozen
L{Section} whose attributes carry the YAML keys' names.
"""

import re
from collections.abc import Iterable
from typing import Any, Literal

from meshproxy import grpc
from meshproxy.config.checks import Invalid, show, showSeconds, suggest
from meshproxy.config.fields import (
    Bool,
    Checked,
    Choice,
    Defaulted,
    Duration,
    HeaderName,
    Integer,
    ListOf,
    NamePath,
    Network,
    Number,
)
from meshproxy.config.problems import Problem
from meshproxy.config.section import Field, Section, View
from meshproxy.config.security import UpstreamTLSConfig

__all__ = [
    "BoundNameConfig",
    "BudgetConfig",
    "ClassifierConfig",
    "ClientConfig",
    "FailureAccrualConfig",
    "GrpcConfig",
    "IdentifierConfig",
    "LatencyEjectionConfig",
    "LimitsConfig",
    "LoadBalancerConfig",
    "ProxyProtocolConfig",
    "ProxyProtocolSendConfig",
    "RetriesConfig",
    "ServerConfig",
    "TimeoutsConfig",
    "TrustConfig",
]


class IdentifierConfig(Section):
    """
    How a router turns a request (HTTP) or a connection (TCP) into a
    logical name.

    @ivar kind: (HTTP) C{"host"} (the Host header), C{"path"} (the first
        C{segments} path segments), C{"header"} (the value of header
        C{name}) or C{"clientIdentity"} (the caller's verified certificate
        identity: C{spiffe://td/a/b} is C{/id/spiffe/td/a/b}, a DNS name
        C{web.example} is C{/id/dns/web.example}; it takes no C{prefix});
        (TCP) C{"sni"}: the server name of the client's TLS ClientHello,
        read without terminating TLS (C{a.example} is C{/svc/a.example}).
    @ivar prefix: the path the identified name is put under, such as C{/svc}.
    @ivar segments: for C{"path"}: how many path segments name the service.
    @ivar name: for C{"header"}: the header name, lowercased; else L{None}.
    @ivar default: for C{"sni"}: the logical name (a path such as
        C{/svc/default}) of a client that sends no server name, or L{None}
        to close such connections.
    @ivar maxClientHelloBytes: for C{"sni"}: the bytes read at most before
        the ClientHello is complete (a longer one closes the connection).
    @ivar clientHelloTimeout: for C{"sni"}: seconds a client has to send
        its whole ClientHello.
    """

    _selector = "kind"
    _kinds = {
        "host": ("prefix",),
        "path": ("prefix", "segments"),
        "header": ("prefix", "name"),
        # Its names are always under /id.
        "clientIdentity": (),
        "sni": ("prefix", "default", "maxClientHelloBytes", "clientHelloTimeout"),
    }
    _requiredFor = {"header": ("name",)}

    kind: Literal["host", "path", "header", "clientIdentity", "sni"] = "host"
    prefix: NamePath = "/svc"
    segments: Integer(1) = 1
    name: HeaderName | None = None
    default: NamePath | None = None
    maxClientHelloBytes: Integer(512, 65536) = 16384
    clientHelloTimeout: Duration() = "5s"


class LoadBalancerConfig(Section):
    """
    How a router picks one endpoint of a service.

    @ivar kind: C{"ewma"} (power of two choices over peak EWMA latency),
        C{"roundRobin"} or C{"leastLoaded"}.
    @ivar decay: for C{"ewma"}: the EWMA decay time in seconds.
    """

    _selector = "kind"
    _kinds = {"ewma": ("decay",), "roundRobin": (), "leastLoaded": ()}

    kind: Literal["ewma", "roundRobin", "leastLoaded"] = "ewma"
    decay: Duration() = "10s"


class LatencyEjectionConfig(Section):
    """
    Ejection of an endpoint that is much slower than its peers.

    @ivar factor: an endpoint whose latency is above this many times the
        median latency of its service's endpoints is slow; more than 1.
    @ivar duration: seconds an endpoint must stay slow before it is ejected.
        The YAML key is C{for}, a Python keyword, hence the attribute's
        other name.
    """

    factor: Number(1, exclusiveMinimum=True) = 5.0
    duration: Duration() = Field("30s", alias="for")


def _order(view: View, low: str, high: str) -> Iterable[Problem]:
    """
    Report C{<low>} being more than C{<high>}, against the key that was
    written (a default is not the user's mistake).
    """
    values = view.values(low, high)
    if values is None or values[0] <= values[1]:
        return
    if view.given(high):
        yield Problem((high,), f"must not be shorter than {low} ({showSeconds(values[0])})")
    else:
        yield Problem(
            (low,), f"must not be longer than {high} ({showSeconds(values[1])}, the default)"
        )


_EJECTING = ("backoffMin", "backoffMax", "panicShare", "latency")


class FailureAccrualConfig(Section):
    """
    When an endpoint is ejected from balancing.

    @ivar kind: C{"consecutiveFailures"}, C{"successRate"} or C{"none"}.
    @ivar failures: for C{"consecutiveFailures"}: consecutive failures that
        eject an endpoint.
    @ivar backoffMin: seconds of the first ejection.
    @ivar backoffMax: ceiling, in seconds, of the doubling ejection time.
    @ivar successRate: for C{"successRate"}: an endpoint whose success rate
        falls below this fraction (more than 0, at most 1) is ejected.
    @ivar window: for C{"successRate"}: the success rate is measured over
        this many seconds, or L{None} when it is measured over C{requests}.
    @ivar requests: for C{"successRate"}: the success rate is measured over
        the last this many requests, or L{None} when it is measured over
        C{window}. Never both; when neither is given, 100 (the effective
        value is stored). L{None} for the other kinds.
    @ivar minRequests: for C{"successRate"} with a C{window}: requests the
        window must hold before the rate is judged.
    @ivar panicShare: the panic floor, a share (0 to 1) of a service's
        endpoints: when fewer than that would be eligible, the balancer uses
        them all, so that ejection never leaves a service too few instances;
        0 turns panic off.
    @ivar latency: the L{LatencyEjectionConfig}, or L{None} for no ejection
        on latency.
    """

    _selector = "kind"
    _kinds = {
        "consecutiveFailures": ("failures", *_EJECTING),
        "successRate": ("successRate", "requests", "window", "minRequests", *_EJECTING),
        "none": (),
    }

    kind: Literal["consecutiveFailures", "successRate", "none"] = "consecutiveFailures"
    failures: Integer(1) = 5
    backoffMin: Duration(positive=False) = "5s"
    backoffMax: Duration(positive=False) = "300s"
    successRate: Number(0, 1, exclusiveMinimum=True) = 0.8
    window: Duration() | None = None
    requests: Integer(1) | None = None
    minRequests: Integer(1) = 10
    panicShare: Number(0, 1) = 0.5
    latency: LatencyEjectionConfig | None = None

    @classmethod
    def _prepare(cls, data: dict, kind: str | None, context: Any) -> list[Problem]:
        # A success rate needs some window: without a time window, the last
        # 100 requests. A null requests is as good as an absent one.
        if kind == "successRate" and data.get("window") is None and data.get("requests") is None:
            data["requests"] = 100
        return []

    @classmethod
    def _crossCheck(cls, view: View) -> Iterable[Problem]:
        given = {key for key in ("requests", "window") if view.raw(key) is not None}
        if given == {"requests", "window"}:
            yield Problem(("window",), "give either requests or window, not both")
        if view.given("minRequests") and "window" not in given:
            yield Problem(("minRequests",), "only with window")
        yield from _order(view, "backoffMin", "backoffMax")


class BudgetConfig(Section):
    """
    The retry budget: retries allowed on top of ordinary requests.

    @ivar percent: retries allowed as a percentage of requests (0 to 1000).
    @ivar minPerSecond: retries always allowed per second, whatever the rate.
    @ivar ttl: seconds over which requests are counted.
    """

    percent: Number(0, 1000) = 20.0
    minPerSecond: Number(0) = 10.0
    ttl: Duration() = "10s"


class RetriesConfig(Section):
    """
    Retry policy of a router (of a TCP router: its connection attempts,
    whose number C{connectRetries} gives).

    @ivar budget: the L{BudgetConfig}.
    @ivar backoffMin: seconds of the smallest (jittered) wait before a retry.
    @ivar backoffMax: seconds of the largest wait before a retry.
    @ivar bufferBytes: (HTTP) request bodies up to this many bytes are kept
        so that the request can be replayed; a larger body is not retried
        once sent.
    @ivar maxRetries: (HTTP) retries of one request at most, whatever the
        budget allows.
    """

    budget: Defaulted(BudgetConfig)
    backoffMin: Duration(positive=False) = "0s"
    backoffMax: Duration(positive=False) = "0s"
    bufferBytes: Integer(0) = 65536
    maxRetries: Integer(0) = 3

    @classmethod
    def _crossCheck(cls, view: View) -> Iterable[Problem]:
        return _order(view, "backoffMin", "backoffMax")


class TimeoutsConfig(Section):
    """
    Timeouts of an HTTP router, in seconds.

    @ivar total: for the whole request, all tries included.
    @ivar perTry: for one try, or L{None} for no limit but C{total}; never
        more than C{total}.
    @ivar connect: to connect to an upstream endpoint.
    """

    total: Duration() = "10s"
    perTry: Duration() | None = None
    connect: Duration() = "2s"

    @classmethod
    def _crossCheck(cls, view: View) -> Iterable[Problem]:
        values = view.values("perTry", "total")
        if values is not None and values[0] is not None and values[0] > values[1]:
            yield Problem(
                ("perTry",),
                f"must not be longer than total ({showSeconds(values[1])}),"
                f" got {show(view.raw('perTry'))}",
            )


class ServerConfig(Section):
    """
    Limits on the client side of an HTTP router.

    @ivar maxHeaderBytes: size of the request line and headers together.
    @ivar maxHeaders: number of header fields.
    @ivar maxUriLength: length of the request target.
    @ivar maxBodyBytes: request body size, or L{None} for no limit.
    @ivar headerTimeout: seconds to receive the request head.
    @ivar idleTimeout: seconds a kept-alive connection may sit idle.
    @ivar bodyTimeout: seconds without progress while receiving a body.
    @ivar maxConnections: open client connections, or L{None} for no limit.
    """

    maxHeaderBytes: Integer(1) = 65536
    maxHeaders: Integer(1) = 100
    maxUriLength: Integer(1) = 8192
    maxBodyBytes: Integer(0) | None = None
    headerTimeout: Duration() = "10s"
    idleTimeout: Duration() = "60s"
    bodyTimeout: Duration() = "30s"
    maxConnections: Integer(1) | None = None


class Http2Config(Section):
    """
    HTTP/2 on the client side of an HTTP router (h2c with prior knowledge on
    a plain listener, h2 by ALPN under TLS): the settings meshproxy
    announces, and enforces.

    @ivar maxConcurrentStreams: streams a client may have open at once
        (C{SETTINGS_MAX_CONCURRENT_STREAMS}); more are refused with
        C{REFUSED_STREAM}.
    @ivar initialWindowSize: each stream's flow-control window
        (C{SETTINGS_INITIAL_WINDOW_SIZE}): the request body bytes a client
        may send ahead of the upstream reading them.
    @ivar maxFrameSize: the largest frame accepted (C{SETTINGS_MAX_FRAME_SIZE}).
    @ivar maxHeaderListSize: the decoded size of a request's header list
        (C{SETTINGS_MAX_HEADER_LIST_SIZE}), or L{None} for
        C{server.maxHeaderBytes}.
    """

    maxConcurrentStreams: Integer(1, 2**31 - 1) = 100
    initialWindowSize: Integer(1, 2**31 - 1) = 65535
    maxFrameSize: Integer(16384, 2**24 - 1) = 16384
    maxHeaderListSize: Integer(1) | None = None


class ClientConfig(Section):
    """
    The upstream connection pool of an HTTP router.

    @ivar maxIdlePerEndpoint: idle kept-alive connections kept per endpoint.
    @ivar idleTimeout: seconds before an idle upstream connection is closed.
    @ivar maxHeaderBytes: size of an upstream response's status line and
        headers together (and of its trailers).
    @ivar maxHeaders: number of header fields of an upstream response (and,
        separately, of its trailer fields).
    @ivar maxInformational: interim (1xx) responses accepted per request.
    @ivar upstreamProtocol: how requests go to upstreams, unless a bound
        name says otherwise: C{"http/1.1"}; C{"h2"} (HTTP/2: cleartext with
        prior knowledge, or by ALPN over C{upstreamTls}); or C{"auto"}
        (over C{upstreamTls}, what the upstream chooses by ALPN among
        C{h2} and C{http/1.1}; plain upstreams get HTTP/1.1).
    """

    maxIdlePerEndpoint: Integer(0) = 64
    idleTimeout: Duration() = "60s"
    maxHeaderBytes: Integer(256) = 65536
    maxHeaders: Integer(1) = 100
    maxInformational: Integer(0) = 10
    upstreamProtocol: Choice("http/1.1", "h2", "auto") = "http/1.1"


def _grpcCode(value: Any) -> str:
    """
    A gRPC status code: its name, spelt as the spec does (C{UNAVAILABLE}),
    or its number (0 to 16); kept as its name.
    """
    if isinstance(value, int) and not isinstance(value, bool):
        name = grpc.CODE_NAMES.get(value)
        if name is None:
            raise Invalid(f"gRPC status codes are 0 to 16, got {show(value)}")
        return name
    if not isinstance(value, str) or value not in grpc.CODES:
        hint = suggest(value, grpc.CODES) if isinstance(value, str) else ""
        if isinstance(value, str) and value.upper() in grpc.CODES:
            hint = f' (did you mean "{value.upper()}"? names are case-sensitive)'
        raise Invalid(f"expected a gRPC status code name or number, got {show(value)}{hint}")
    return value


GrpcCode = Checked(
    _grpcCode,
    {
        "oneOf": [
            {"type": "string", "enum": list(grpc.CODES)},
            {"type": "integer", "minimum": 0, "maximum": 16},
        ],
        "description": "a gRPC status code: its name (UNAVAILABLE) or its number",
    },
)


class ClassifierConfig(Section):
    """
    How an HTTP router judges each attempt: success, retryable failure or
    non-retryable failure.

    @ivar kind: C{"nonRetryable5XX"} (5XX responses are failures, never
        retried), C{"retryableRead5XX"} (5XX responses are failures,
        retryable for GET, HEAD, OPTIONS and TRACE),
        C{"retryableIdempotent5XX"} (the same for every idempotent method:
        those and PUT and DELETE), C{"allSuccessful"} (every response is a
        success) or C{"grpc"} (gRPC responses by their C{grpc-status}, see
        L{meshproxy.resilience.classifiers}; others as
        C{"nonRetryable5XX"}).
    @ivar retryableStatusCodes: response statuses (100 to 599, each once),
        in the order written, that are failures whatever C{kind} says,
        retryable when the request is idempotent.
    @ivar idempotencyKey: whether a POST with an C{Idempotency-Key} header
        counts as idempotent.
    @ivar retryableCodes: for C{"grpc"}: the gRPC status codes (names as the
        spec spells them, each once; a number written is kept as its name)
        that are retryable failures whatever the method; C{("UNAVAILABLE",)}
        by default.
    """

    _selector = "kind"
    _kinds = {
        "nonRetryable5XX": (),
        "retryableRead5XX": (),
        "retryableIdempotent5XX": (),
        "allSuccessful": (),
        "grpc": ("retryableCodes",),
    }
    _common = ("retryableStatusCodes", "idempotencyKey")

    kind: Literal[
        "nonRetryable5XX", "retryableRead5XX", "retryableIdempotent5XX", "allSuccessful", "grpc"
    ] = "nonRetryable5XX"
    retryableStatusCodes: ListOf(Integer(100, 599), unique=True) = ()
    idempotencyKey: Bool = False
    retryableCodes: ListOf(GrpcCode, unique=True) = ("UNAVAILABLE",)


_SERVICE = r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*"
_METHOD_PATTERN = re.compile(rf"^/{_SERVICE}/([A-Za-z_][A-Za-z0-9_]*|\*)$")


def _grpcMethod(value: Any) -> str:
    """
    A gRPC method named in the metrics: C{/pkg.Service/Method}, or a whole
    service as C{/pkg.Service/*}.
    """
    if not isinstance(value, str) or _METHOD_PATTERN.match(value) is None:
        raise Invalid(
            f'expected "/package.Service/Method" or "/package.Service/*", got {show(value)}'
        )
    return value


GrpcMethod = Checked(
    _grpcMethod,
    {
        "type": "string",
        "pattern": _METHOD_PATTERN.pattern,
        "description": 'a gRPC method, "/package.Service/Method", or "/package.Service/*"',
    },
)


class GrpcConfig(Section):
    """
    What an HTTP router tells apart of gRPC calls in its metrics.

    @ivar methods: the methods (C{/pkg.Service/Method}) and services
        (C{/pkg.Service/*}) whose calls the gRPC metrics count under their
        own C{service} and C{method} labels, each once, in the order
        written; the calls of a service named whole have the method
        C{other}, every other call the service and method C{other}.
    """

    methods: ListOf(GrpcMethod, unique=True) = ()


class LimitsConfig(Section):
    """
    Limits on the requests an HTTP router sends to one bound name; each
    bound name has its own count.

    @ivar maxConcurrent: requests in flight at once, or L{None} for no
        limit.
    @ivar maxPending: requests waiting for one of the C{maxConcurrent}
        places, or L{None} for no limit; beyond it requests are refused.
    """

    maxConcurrent: Integer(1) | None = None
    maxPending: Integer(0) | None = None


class TrustConfig(Section):
    """
    What an HTTP router takes from its callers.

    @ivar callers: the networks whose requests may override the rules with
        a C{mesh-dtab} header, as normalised strings (C{"127.0.0.0/8"}, a
        single address as C{"10.0.0.1/32"}), in the order written; empty
        trusts nobody.
    @ivar dtabPrefixes: the paths (C{/svc}) a trusted override may rewrite;
        empty allows any.
    @ivar deadline: whether the remaining deadline a caller sends in
        C{mesh-ctx-deadline} is honoured.
    @ivar allowInet: whether an override may lead to C{/$/inet} addresses
        (or any other C{/$/} name) rather than only to names owned by
        configured namers.
    """

    callers: ListOf(Network) = ()
    dtabPrefixes: ListOf(NamePath) = ()
    deadline: Bool = True
    allowInet: Bool = False


class ProxyProtocolConfig(Section):
    """
    The PROXY protocol (versions 1 and 2) on a router's connections.

    @ivar accept: whether a PROXY header is read from the peers in
        C{from} (load balancers in front), so that the client address seen
        by the metrics, the access log, C{trust}, the policy and
        C{X-Forwarded-For} is the real client's. A header from any other
        peer is refused.
    @ivar from_: (YAML C{from}) the networks of the peers whose headers are
        read, normalised as in C{trust.callers}; needed with C{accept}.
    @ivar required: whether those peers must send a header (else a
        connection from them without one is the peer's own).
    @ivar timeout: seconds a peer in C{from} has to send its header.
    @ivar send: (TCP) C{"v1"}, C{"v2"} or C{"none"}: the header sent first
        on each upstream connection, with the client's address.
    """

    accept: Bool = False
    from_: ListOf(Network) = Field((), alias="from")
    required: Bool = False
    timeout: Duration() = "5s"
    send: Choice("none", "v1", "v2") = "none"

    @classmethod
    def _crossCheck(cls, view: View) -> Iterable[Problem]:
        values = view.values("accept")
        if values is None:
            return
        if values[0]:
            if view.ok("from") and not view.raw("from"):
                yield Problem(
                    ("from",),
                    "required with accept: the networks of the load balancers that send"
                    " PROXY headers",
                )
            return
        for key in ("from", "required", "timeout"):
            if view.given(key):
                yield Problem((key,), "only with accept: true")


class ProxyProtocolSendConfig(Section):
    """
    The PROXY protocol header a TCP router sends to one bound name's
    upstreams.

    @ivar send: C{"v1"}, C{"v2"} or C{"none"}.
    """

    send: Choice("none", "v1", "v2") = "none"


class BoundNameConfig(Section):
    """
    Settings of a router for one bound name, overriding the router's.

    @ivar classifier: (HTTP) the L{ClassifierConfig}, or L{None} for the
        router's.
    @ivar limits: (HTTP) the L{LimitsConfig}, or L{None} for the router's.
    @ivar upstreamTls: (HTTP) the L{UpstreamTLSConfig<meshproxy.config.security.UpstreamTLSConfig>}
        of this name's connections, or L{None} for the router's.
    @ivar proxyProtocol: (TCP) the L{ProxyProtocolSendConfig} of this
        name's upstream connections, or L{None} for the router's
        C{proxyProtocol.send}.
    @ivar upstreamProtocol: (HTTP) C{"http/1.1"}, C{"h2"} or C{"auto"}: how requests
        go to this name's upstreams, or L{None} for the router's
        C{client.upstreamProtocol}.
    """

    classifier: ClassifierConfig | None = None
    limits: LimitsConfig | None = None
    upstreamTls: UpstreamTLSConfig | None = None
    proxyProtocol: ProxyProtocolSendConfig | None = None
    upstreamProtocol: Choice("http/1.1", "h2", "auto") | None = None
