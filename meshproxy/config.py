"""
Load and validate the meshproxy YAML configuration.

L{loadConfig} and L{parseConfig} turn YAML into a tree of frozen attrs values
rooted at L{MeshConfig}. Validation finds every problem in one pass and
raises one L{ConfigError} listing them all, each message starting with the
path of the offending key (C{routers[0].timeouts.total: ...}), so that a
user fixes a config in one round trip and the process exits before binding
any port.

Keys are camelCase in YAML and attributes carry the same names. Durations are
strings with a unit (C{"250ms"}, C{"10s"}, C{"5m"}, C{"1h"}) and are stored as
float seconds.
"""

from __future__ import annotations

import difflib
import inspect
import ipaddress
import json
import math
import os
import re
from typing import Any, Callable, Collection, Iterable, Mapping, Optional

import yaml
from attrs import Factory, field, frozen

__all__ = [
    "AdminConfig",
    "BoundNameConfig",
    "BudgetConfig",
    "ClassifierConfig",
    "ClientConfig",
    "ConfigError",
    "FailureAccrualConfig",
    "FileNamerConfig",
    "IdentifierConfig",
    "LatencyEjectionConfig",
    "LimitsConfig",
    "LoadBalancerConfig",
    "MeshConfig",
    "NamerConfig",
    "RetriesConfig",
    "RouterConfig",
    "ServerConfig",
    "StaticNamerConfig",
    "TimeoutsConfig",
    "TrustConfig",
    "loadConfig",
    "parseConfig",
    "parseDuration",
]


class ConfigError(Exception):
    """
    The configuration could not be read or is not valid.

    @ivar errors: one message per problem found, in the order found. A
        validation message starts with the path of the bad key
        (C{routers[0].listen: required}); a message about the file as a whole
        (missing file, YAML syntax) starts with the file name.
    @ivar source: the file name (or other label) of the configuration.
    """

    def __init__(self, errors: Iterable[str], source: str = "<config>") -> None:
        """
        @param errors: the problems found; at least one.
        @param source: where the configuration came from.
        """
        self.errors = list(errors)
        self.source = source
        super().__init__(*self.errors)

    def __str__(self) -> str:
        return "\n".join(self.errors)


# -- the configuration values -------------------------------------------------


@frozen(kw_only=True)
class AdminConfig:
    """
    The admin API listener.

    @ivar listen: a Twisted server endpoint description.
    @ivar token: when set, mutating calls need C{Authorization: Bearer <token>}.
    @ivar protectReads: when true, reads need the token too (needs a token).
    @ivar shutdownGrace: seconds a graceful shutdown lets in-flight requests
        finish before the process exits.
    @ivar allowedHosts: the host names (lowercase, without port) the admin
        API answers to besides IP literals and C{localhost}; C{("*",)} turns
        the C{Host} check off. Other names get 421 (DNS rebinding).
    @ivar rulesAllowInet: whether rules changed through the admin API may
        lead to C{/$/inet} addresses (the operator writes them).
    @ivar stateDir: the absolute path of the directory where state changed
        at run time (rules replaced through the admin API) is persisted, or
        L{None} for the directory of the config file (the embedded demo,
        which has none, keeps such changes in memory only). A relative path in the
        YAML is resolved against the working directory at load time; the
        directory is not checked or created here.
    """

    listen: str = "tcp:9990:interface=127.0.0.1"
    token: Optional[str] = None
    protectReads: bool = False
    shutdownGrace: float = 10.0
    stateDir: Optional[str] = None
    allowedHosts: tuple[str, ...] = ()
    rulesAllowInet: bool = True


@frozen(kw_only=True)
class FileNamerConfig:
    """
    A namer reading one file per service from a directory, re-read every
    C{interval} seconds. Each file holds C{host:port [weight]} lines.

    @ivar kind: always C{"file"}.
    @ivar prefix: the bound-name prefix this namer owns, such as C{/#/fs}.
    @ivar root: the absolute path of the directory (a relative path in the
        YAML is resolved against the working directory at load time).
    @ivar interval: seconds between scans.
    """

    kind: str = field(default="file", init=False)
    prefix: str = "/#/fs"
    root: str
    interval: float = 1.0


@frozen(kw_only=True)
class StaticNamerConfig:
    """
    A namer whose services are listed in the configuration itself.

    @ivar kind: always C{"static"}.
    @ivar prefix: the bound-name prefix this namer owns, such as C{/#/static}.
    @ivar services: C{(serviceName, endpoints)} pairs in the order written,
        where C{endpoints} is a tuple of C{(host, port, weight)}; C{host} is
        an IPv6 address without brackets, an IPv4 address or a host name.
        C{dict(services)} gives a mapping.
    """

    kind: str = field(default="static", init=False)
    prefix: str = "/#/static"
    services: tuple[tuple[str, tuple[tuple[str, int, float], ...]], ...] = ()


NamerConfig = FileNamerConfig | StaticNamerConfig


@frozen(kw_only=True)
class IdentifierConfig:
    """
    How an HTTP router turns a request into a logical name.

    @ivar kind: C{"host"} (the Host header), C{"path"} (the first C{segments}
        path segments) or C{"header"} (the value of header C{name}).
    @ivar prefix: the path the identified name is put under, such as C{/svc}.
    @ivar segments: for C{"path"}: how many path segments name the service.
    @ivar name: for C{"header"}: the header name, lowercased; else L{None}.
    """

    kind: str = "host"
    prefix: str = "/svc"
    segments: int = 1
    name: Optional[str] = None


@frozen(kw_only=True)
class LoadBalancerConfig:
    """
    How a router picks one endpoint of a service.

    @ivar kind: C{"ewma"} (power of two choices over peak EWMA latency),
        C{"roundRobin"} or C{"leastLoaded"}.
    @ivar decay: for C{"ewma"}: the EWMA decay time in seconds.
    """

    kind: str = "ewma"
    decay: float = 10.0


@frozen(kw_only=True)
class LatencyEjectionConfig:
    """
    Ejection of an endpoint that is much slower than its peers.

    @ivar factor: an endpoint whose latency is above this many times the
        median latency of its service's endpoints is slow; more than 1.
    @ivar duration: seconds an endpoint must stay slow before it is ejected.
        The YAML key is C{for}, a Python keyword, hence the attribute's
        other name.
    """

    factor: float = 5.0
    duration: float = 30.0


def _defaultRequests(config: FailureAccrualConfig) -> Optional[int]:
    # A success rate needs some window: without a time window, the last 100
    # requests. Other kinds have no window at all.
    if config.kind == "successRate" and config.window is None:
        return 100
    return None


@frozen(kw_only=True)
class FailureAccrualConfig:
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
        Declared before C{requests}, whose default depends on it.
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

    kind: str = "consecutiveFailures"
    failures: int = 5
    backoffMin: float = 5.0
    backoffMax: float = 300.0
    successRate: float = 0.8
    window: Optional[float] = None
    requests: Optional[int] = field(default=Factory(_defaultRequests, takes_self=True))
    minRequests: int = 10
    panicShare: float = 0.5
    latency: Optional[LatencyEjectionConfig] = None


@frozen(kw_only=True)
class BudgetConfig:
    """
    The retry budget: retries allowed on top of ordinary requests.

    @ivar percent: retries allowed as a percentage of requests (0 to 1000).
    @ivar minPerSecond: retries always allowed per second, whatever the rate.
    @ivar ttl: seconds over which requests are counted.
    """

    percent: float = 20.0
    minPerSecond: float = 10.0
    ttl: float = 10.0


@frozen(kw_only=True)
class RetriesConfig:
    """
    Retry policy of an HTTP router.

    @ivar budget: the L{BudgetConfig}.
    @ivar backoffMin: seconds of the smallest (jittered) wait before a retry.
    @ivar backoffMax: seconds of the largest wait before a retry.
    @ivar bufferBytes: request bodies up to this many bytes are kept so that
        the request can be replayed; a larger body is not retried once sent.
    @ivar maxRetries: retries of one request at most, whatever the budget
        allows.
    """

    budget: BudgetConfig = BudgetConfig()
    backoffMin: float = 0.0
    backoffMax: float = 0.0
    bufferBytes: int = 65536
    maxRetries: int = 3


@frozen(kw_only=True)
class TimeoutsConfig:
    """
    Timeouts of an HTTP router, in seconds.

    @ivar total: for the whole request, all tries included.
    @ivar perTry: for one try, or L{None} for no limit but C{total}; never
        more than C{total}.
    @ivar connect: to connect to an upstream endpoint.
    """

    total: float = 10.0
    perTry: Optional[float] = None
    connect: float = 2.0


@frozen(kw_only=True)
class ServerConfig:
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

    maxHeaderBytes: int = 65536
    maxHeaders: int = 100
    maxUriLength: int = 8192
    maxBodyBytes: Optional[int] = None
    headerTimeout: float = 10.0
    idleTimeout: float = 60.0
    bodyTimeout: float = 30.0
    maxConnections: Optional[int] = None


@frozen(kw_only=True)
class ClientConfig:
    """
    The upstream connection pool of an HTTP router.

    @ivar maxIdlePerEndpoint: idle kept-alive connections kept per endpoint.
    @ivar idleTimeout: seconds before an idle upstream connection is closed.
    @ivar maxHeaderBytes: size of an upstream response's status line and
        headers together (and of its trailers).
    @ivar maxHeaders: number of header fields of an upstream response (and,
        separately, of its trailer fields).
    @ivar maxInformational: interim (1xx) responses accepted per request.
    """

    maxIdlePerEndpoint: int = 64
    idleTimeout: float = 60.0
    maxHeaderBytes: int = 65536
    maxHeaders: int = 100
    maxInformational: int = 10


@frozen(kw_only=True)
class ClassifierConfig:
    """
    How an HTTP router judges each attempt: success, retryable failure or
    non-retryable failure.

    @ivar kind: C{"nonRetryable5XX"} (5XX responses are failures, never
        retried), C{"retryableRead5XX"} (5XX responses are failures,
        retryable for GET, HEAD, OPTIONS and TRACE),
        C{"retryableIdempotent5XX"} (the same for every idempotent method:
        those and PUT and DELETE) or C{"allSuccessful"} (every response is a
        success).
    @ivar retryableStatusCodes: response statuses (100 to 599, each once),
        in the order written, that are failures whatever C{kind} says,
        retryable when the request is idempotent.
    @ivar idempotencyKey: whether a POST with an C{Idempotency-Key} header
        counts as idempotent.
    """

    kind: str = "nonRetryable5XX"
    retryableStatusCodes: tuple[int, ...] = ()
    idempotencyKey: bool = False


@frozen(kw_only=True)
class LimitsConfig:
    """
    Limits on the requests an HTTP router sends to one bound name; each
    bound name has its own count.

    @ivar maxConcurrent: requests in flight at once, or L{None} for no
        limit.
    @ivar maxPending: requests waiting for one of the C{maxConcurrent}
        places, or L{None} for no limit; beyond it requests are refused.
    """

    maxConcurrent: Optional[int] = None
    maxPending: Optional[int] = None


@frozen(kw_only=True)
class TrustConfig:
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

    callers: tuple[str, ...] = ()
    dtabPrefixes: tuple[str, ...] = ()
    deadline: bool = True
    allowInet: bool = False


@frozen(kw_only=True)
class BoundNameConfig:
    """
    Settings of an HTTP router for one bound name, overriding the router's.

    @ivar classifier: the L{ClassifierConfig}, or L{None} for the router's.
    @ivar limits: the L{LimitsConfig}, or L{None} for the router's.
    """

    classifier: Optional[ClassifierConfig] = None
    limits: Optional[LimitsConfig] = None


@frozen(kw_only=True)
class RouterConfig:
    """
    One listener and how it routes.

    The HTTP-only attributes keep their defaults on a TCP router, and the
    TCP-only ones (C{destination}, C{connectRetries}, C{idleTimeout},
    C{maxConnections}) keep theirs on an HTTP router.

    @ivar name: unique among routers, C{[A-Za-z0-9_-]+}.
    @ivar protocol: C{"http"} or C{"tcp"}.
    @ivar listen: a Twisted server endpoint description.
    @ivar identifier: (HTTP) the L{IdentifierConfig}.
    @ivar rules: (HTTP) the dtab text.
    @ivar loadBalancer: the L{LoadBalancerConfig}.
    @ivar failureAccrual: the L{FailureAccrualConfig}.
    @ivar retries: (HTTP) the L{RetriesConfig}.
    @ivar timeouts: the L{TimeoutsConfig} (TCP: C{connect} only).
    @ivar server: (HTTP) the L{ServerConfig}.
    @ivar client: (HTTP) the L{ClientConfig}.
    @ivar forwarded: (HTTP) whether to add C{X-Forwarded-For},
        C{X-Forwarded-Proto}, C{Forwarded} and C{Via} to requests.
    @ivar classifier: (HTTP) the L{ClassifierConfig}.
    @ivar limits: (HTTP) the L{LimitsConfig}, applied to each bound name.
    @ivar trust: (HTTP) the L{TrustConfig}.
    @ivar boundNames: (HTTP) C{(boundName, BoundNameConfig)} pairs in the
        order written, where C{boundName} is a namer prefix and one service
        name (C{/#/fs/users}) or C{/$/inet/<host>/<port>}.
        C{dict(boundNames)} gives a mapping.
    @ivar destination: (TCP) the bound name connections go to, such as
        C{/#/fs/postgres}.
    @ivar connectRetries: (TCP) after a failed connection attempt, how many
        more attempts (on other endpoints when there are any) a client
        connection gets before it is closed.
    @ivar idleTimeout: (TCP) seconds without a byte in either direction
        after which both sides of a spliced connection are closed, or
        L{None} for no limit.
    @ivar maxConnections: (TCP) open client connections, or L{None} for no
        limit; extra connections are closed at once.

    C{loadBalancer}, C{failureAccrual} and C{timeouts.connect} apply to TCP
    routers too (their C{timeouts.total} and C{timeouts.perTry} keep their
    defaults, unused).
    """

    name: str
    protocol: str = "http"
    listen: str
    identifier: IdentifierConfig = IdentifierConfig()
    rules: str = ""
    loadBalancer: LoadBalancerConfig = LoadBalancerConfig()
    failureAccrual: FailureAccrualConfig = FailureAccrualConfig()
    retries: RetriesConfig = RetriesConfig()
    timeouts: TimeoutsConfig = TimeoutsConfig()
    server: ServerConfig = ServerConfig()
    client: ClientConfig = ClientConfig()
    forwarded: bool = True
    classifier: ClassifierConfig = ClassifierConfig()
    limits: LimitsConfig = LimitsConfig()
    trust: TrustConfig = TrustConfig()
    boundNames: tuple[tuple[str, BoundNameConfig], ...] = ()
    destination: Optional[str] = None
    connectRetries: int = 2
    idleTimeout: Optional[float] = None
    maxConnections: Optional[int] = None


@frozen(kw_only=True)
class MeshConfig:
    """
    The whole configuration of one meshproxy process.

    @ivar admin: the L{AdminConfig}.
    @ivar namers: L{FileNamerConfig} and L{StaticNamerConfig} values, in the
        order written.
    @ivar routers: the L{RouterConfig} values, in the order written; at least
        one.
    @ivar source: the file (or label) the configuration was read from.
    """

    admin: AdminConfig = AdminConfig()
    namers: tuple[NamerConfig, ...] = ()
    routers: tuple[RouterConfig, ...]
    source: str = "<config>"

    def router(self, name: str) -> RouterConfig:
        """
        Find a router by name.

        @param name: the router's C{name}.
        @return: the L{RouterConfig} named C{name}.
        @raise KeyError: if no router has that name.
        """
        for router in self.routers:
            if router.name == name:
                return router
        raise KeyError(name)


# -- entry points -------------------------------------------------------------


def loadConfig(path: str) -> MeshConfig:
    """
    Read and validate a configuration file.

    @param path: the YAML file to read (UTF-8).
    @return: the validated L{MeshConfig}, whose C{source} is C{path}.
    @raise ConfigError: if the file cannot be read, is not UTF-8, is not
        valid YAML (the message names the line and column) or does not
        describe a valid configuration.
    """
    try:
        with open(path, encoding="utf-8") as f:
            data = f.read()
    except OSError as e:
        raise ConfigError([f"{path}: cannot read the file: {e.strerror}"], path)
    except UnicodeDecodeError as e:
        raise ConfigError(
            [f"{path}: not UTF-8 text ({e.reason} at byte {e.start})"], path
        )
    return parseConfig(data, source=path)


def parseConfig(data: str, source: str = "<config>") -> MeshConfig:
    """
    Validate a configuration given as YAML text.

    @param data: the YAML text.
    @param source: names the text in messages and in L{MeshConfig.source}.
    @return: the validated L{MeshConfig}.
    @raise ConfigError: listing every problem found, if any. YAML syntax
        errors and duplicate keys are reported with line and column.
    """
    try:
        document = yaml.load(data, Loader=_Loader)
    except yaml.YAMLError as e:
        raise ConfigError([f"{source}: {_describeYAMLError(e)}"], source)
    if document is None:
        raise ConfigError(
            [f'{source}: the config is empty (expected a mapping with a "routers" list)'],
            source,
        )
    if not isinstance(document, Mapping):
        raise ConfigError(
            [f"{source}: expected a mapping, got {_show(document)}"], source
        )
    errors: list[str] = []
    config = _parseMesh(_At(errors, "", source), document, source)
    if errors:
        raise ConfigError(errors, source)
    assert config is not None
    return config


_DURATION = re.compile(r"(?P<number>[0-9]+(?:\.[0-9]+)?)(?P<unit>ms|s|m|h)")
_BARE_NUMBER = re.compile(r"[0-9]+(?:\.[0-9]+)?")
_SECONDS_PER_UNIT = {"s": 1.0, "m": 60.0, "h": 3600.0}


def parseDuration(text: str) -> float:
    """
    Parse a duration written with a unit: C{"250ms"}, C{"10s"}, C{"1.5s"},
    C{"5m"}, C{"1h"}, C{"0s"}.

    @param text: the duration; a non-negative decimal number immediately
        followed by one of C{ms}, C{s}, C{m}, C{h}.
    @return: the duration in seconds.
    @raise ValueError: for anything else (bare numbers, negative numbers,
        unknown units, non-strings), with a message like
        C{expected a duration like "2s", got "fast"}.
    """
    match = _DURATION.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        message = f'expected a duration like "2s", got {_show(text)}'
        if _isBareNumber(text):
            message += f' (add a unit: "{text}s")'
        raise ValueError(message)
    number = float(match["number"])
    if match["unit"] == "ms":
        # Divide rather than multiply by 0.001, so "250ms" is exactly 0.25.
        return number / 1000.0
    return number * _SECONDS_PER_UNIT[match["unit"]]


def _isBareNumber(value: object) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, (int, float)):
        return math.isfinite(value) and value >= 0
    return isinstance(value, str) and _BARE_NUMBER.fullmatch(value) is not None


# -- YAML ---------------------------------------------------------------------


class _Loader(yaml.SafeLoader):
    """
    A safe YAML loader that rejects duplicate keys in a mapping, which
    PyYAML otherwise resolves silently by keeping the last one: a second
    C{routers:} block would hide the first.
    """

    def construct_mapping(self, node: yaml.Node, deep: bool = False) -> dict:
        if isinstance(node, yaml.MappingNode):
            seen: set[tuple[str, str]] = set()
            for keyNode, _ in node.value:
                # Keys brought in by a "<<" merge may be overridden: that is
                # what merging is for. Only keys written twice are an error.
                if not isinstance(keyNode, yaml.ScalarNode) or keyNode.tag == (
                    "tag:yaml.org,2002:merge"
                ):
                    continue
                identity = (keyNode.tag, keyNode.value)
                if identity in seen:
                    raise yaml.constructor.ConstructorError(
                        "while constructing a mapping",
                        node.start_mark,
                        f"duplicate key {json.dumps(keyNode.value)}",
                        keyNode.start_mark,
                    )
                seen.add(identity)
        return super().construct_mapping(node, deep=deep)


def _describeYAMLError(error: yaml.YAMLError) -> str:
    """
    Describe a YAML error with 1-based line and column of the problem.
    """
    if isinstance(error, yaml.MarkedYAMLError) and error.problem_mark is not None:
        mark = error.problem_mark
        text = f"line {mark.line + 1}, column {mark.column + 1}: {error.problem}"
        if error.context and error.context_mark is not None:
            context = error.context_mark
            text += (
                f" ({error.context} at line {context.line + 1},"
                f" column {context.column + 1})"
            )
        return text
    return str(error)


# -- validation machinery -----------------------------------------------------


_MISSING = object()


class _Invalid(Exception):
    """
    A value is not valid; the message is prefixed with its key path by
    whoever catches it.
    """


class _At:
    """
    A key path in the document, and the list every error is collected into.
    """

    __slots__ = ("errors", "path", "root")

    def __init__(self, errors: list[str], path: str, root: str) -> None:
        """
        @param errors: where errors are appended.
        @param path: the key path, such as C{routers[0].listen}.
        @param root: names the document itself in errors about it (the
            source), where the path is empty.
        """
        self.errors = errors
        self.path = path
        self.root = root

    def key(self, name: str) -> _At:
        if not re.fullmatch(r"[A-Za-z0-9_-]+", name):
            path = f"{self.path}[{json.dumps(name)}]"
        else:
            path = f"{self.path}.{name}" if self.path else name
        return _At(self.errors, path, self.root)

    def index(self, i: int) -> _At:
        return _At(self.errors, f"{self.path}[{i}]", self.root)

    def error(self, message: str) -> None:
        self.errors.append(f"{self.path or self.root}: {message}")


class _Nested:
    """
    Marks a converter that reads a whole sub-tree and reports its own errors:
    it is called with the L{_At} of the key and the raw value.
    """

    def __init__(self, parse: Callable[[_At, Any], Any]) -> None:
        self.parse = parse


_Converter = Callable[[Any], Any] | _Nested


class _Section:
    """
    A YAML mapping being read at one key path.

    Unknown keys are reported on construction, with a suggestion when one
    known key is close; keys that are valid only for another C{kind} or
    C{protocol} are reported with that reason instead.
    """

    def __init__(
        self,
        at: _At,
        value: Any,
        known: Collection[str],
        misplaced: Mapping[str, str] | None = None,
    ) -> None:
        """
        @param at: where the mapping is.
        @param value: the raw YAML value; L{None} (an empty YAML value) reads
            as an empty mapping.
        @param known: the keys allowed here.
        @param misplaced: keys valid elsewhere, mapped to why not here.
        """
        self.at = at
        self.data: dict[str, Any] = {}
        self.failed: set[str] = set()
        self.valid = True
        if value is None:
            return
        if not isinstance(value, Mapping):
            self.valid = False
            at.error(f"expected a mapping, got {_show(value)}")
            return
        misplaced = misplaced or {}
        for key, item in value.items():
            if not isinstance(key, str):
                at.error(f"keys must be strings, got {_show(key)}")
            elif key in known:
                self.data[key] = item
            elif key in misplaced:
                at.key(key).error(misplaced[key])
            else:
                at.key(key).error("unknown key" + _suggest(key, known))

    def read(
        self, converters: Mapping[str, _Converter], required: Collection[str] = ()
    ) -> dict[str, Any]:
        """
        Convert the keys present.

        @param converters: for each key to read, a function from the raw
            value to the converted one raising L{_Invalid}, or a L{_Nested}.
        @param required: keys whose absence is an error.
        @return: the converted values of the keys present and valid.
        """
        values = {}
        for key, convert in converters.items():
            if key not in self.data:
                if key in required and self.valid:
                    self.failed.add(key)
                    self.at.key(key).error("required")
                continue
            at = self.at.key(key)
            if isinstance(convert, _Nested):
                before = len(self.at.errors)
                values[key] = convert.parse(at, self.data[key])
                if len(self.at.errors) != before:
                    self.failed.add(key)
                continue
            try:
                values[key] = convert(self.data[key])
            except _Invalid as e:
                self.failed.add(key)
                at.error(str(e))
        return values

    def ok(self, *keys: str) -> bool:
        """
        @return: whether none of C{keys} had an error, so that a check across
            them will not repeat a problem already reported.
        """
        return self.failed.isdisjoint(keys)


def _openKinded(
    at: _At,
    value: Any,
    selector: str,
    kinds: Mapping[str, Collection[str]],
    common: Collection[str],
    default: str | None,
) -> tuple[_Section, str | None]:
    """
    Open a mapping whose C{selector} key (C{kind}, C{protocol}) decides which
    other keys it may have.

    @param kinds: for each value of the selector, the keys only it allows.
    @param common: the keys every kind allows (besides the selector).
    @param default: the selector's value when absent; L{None} makes it
        required.
    @return: the section (C{selector} already read) and the selected kind,
        L{None} if missing or invalid; then every kind's keys are allowed so
        that the kind error is not drowned in follow-on errors.
    """
    kind = default
    raw = value.get(selector, _MISSING) if isinstance(value, Mapping) else _MISSING
    if raw is not _MISSING:
        try:
            kind = _choice(*kinds)(raw)
        except _Invalid as e:
            at.key(selector).error(str(e))
            kind = None
    elif default is None and (value is None or isinstance(value, Mapping)):
        at.key(selector).error("required")
    allKeys = {key for keys in kinds.values() for key in keys}
    if kind is None:
        return _Section(at, value, {selector, *common, *allKeys}), None
    misplaced = {}
    for key in allKeys.difference(kinds[kind], common):
        owners = [name for name, keys in kinds.items() if key in keys]
        misplaced[key] = "only for " + " or ".join(
            f'{selector} "{owner}"' for owner in owners
        )
    section = _Section(at, value, {selector, *common, *kinds[kind]}, misplaced)
    return section, kind



def _suggest(word: str, candidates: Iterable[str]) -> str:
    """
    @return: C{' (did you mean "x"?)'} for the candidate closest to C{word},
        ignoring case (C{roundrobin}, C{maxuri}), or C{""} if none is close.
    """
    byLower = {candidate.lower(): candidate for candidate in candidates}
    matches = difflib.get_close_matches(word.lower(), sorted(byLower), n=1, cutoff=0.6)
    return f" (did you mean {json.dumps(byLower[matches[0]])}?)" if matches else ""


def _show(value: object) -> str:
    """
    Show a YAML value in a message: scalars as YAML would write them,
    containers by their kind.
    """
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        if len(value) > 60:
            value = value[:57] + "..."
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, (list, tuple)):
        return "a list"
    # Other YAML 1.1 types: timestamps, binary, sets.
    return f"a {type(value).__name__}"


def _showSeconds(seconds: float) -> str:
    return f"{seconds:g}s"


# -- leaf converters: raw value -> value, or raise _Invalid -------------------


def _string(value: Any) -> str:
    if not isinstance(value, str):
        raise _Invalid(f"expected a string, got {_show(value)}")
    return value


def _nonEmptyString(value: Any) -> str:
    if not _string(value):
        raise _Invalid("must not be empty")
    return value


def _boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise _Invalid(f"expected true or false, got {_show(value)}")
    return value


def _optional(convert: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def optional(value: Any) -> Any:
        return None if value is None else convert(value)

    return optional


def _checkRange(
    value: float,
    shown: str,
    minimum: float | None,
    maximum: float | None,
    exclusiveMinimum: bool = False,
) -> None:
    if exclusiveMinimum:
        assert minimum is not None
        if value <= minimum or (maximum is not None and value > maximum):
            upTo = "" if maximum is None else f" and at most {maximum:g}"
            raise _Invalid(f"must be more than {minimum:g}{upTo}, got {shown}")
    elif minimum is not None and maximum is not None:
        if not minimum <= value <= maximum:
            raise _Invalid(f"must be between {minimum:g} and {maximum:g}, got {shown}")
    elif minimum is not None and value < minimum:
        raise _Invalid(f"must be at least {minimum:g}, got {shown}")
    elif maximum is not None and value > maximum:
        raise _Invalid(f"must be at most {maximum:g}, got {shown}")


def _integer(
    minimum: int | None = None, maximum: int | None = None
) -> Callable[[Any], int]:
    def integer(value: Any) -> int:
        # YAML's true is a Python int; a boolean is never meant as a count.
        if isinstance(value, bool) or not isinstance(value, int):
            raise _Invalid(f"expected an integer, got {_show(value)}")
        _checkRange(value, _show(value), minimum, maximum)
        return value

    return integer


def _number(
    minimum: float | None = None,
    maximum: float | None = None,
    exclusiveMinimum: bool = False,
) -> Callable[[Any], float]:
    """
    @param exclusiveMinimum: whether C{minimum} itself is too small.
    """

    def number(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _Invalid(f"expected a number, got {_show(value)}")
        if not math.isfinite(value):
            raise _Invalid(f"expected a finite number, got {_show(value)}")
        _checkRange(value, _show(value), minimum, maximum, exclusiveMinimum)
        return float(value)

    return number


def _duration(positive: bool = True) -> Callable[[Any], float]:
    def duration(value: Any) -> float:
        try:
            seconds = parseDuration(value)
        except ValueError as e:
            raise _Invalid(str(e))
        if positive and seconds <= 0:
            raise _Invalid(f"must be longer than 0s, got {_show(value)}")
        return seconds

    return duration


def _choice(*options: str) -> Callable[[Any], str]:
    def choice(value: Any) -> str:
        if value not in options or not isinstance(value, str):
            listed = ", ".join(json.dumps(option) for option in options)
            hint = _suggest(value, options) if isinstance(value, str) else ""
            raise _Invalid(f"expected one of {listed}, got {_show(value)}{hint}")
        return value

    return choice


_SEGMENT = re.compile(r"[A-Za-z0-9_.:-]+")


def _path(allowRoot: bool) -> Callable[[Any], str]:
    """
    A name path such as C{/svc}: segments of C{[A-Za-z0-9_.:-]}, none empty.
    """

    def path(value: Any) -> str:
        text = _string(value)
        if allowRoot and text == "/":
            return text
        _checkSegments(text, text.split("/")[1:] if text.startswith("/") else None)
        return text

    return path


def _namerPrefix(value: Any) -> str:
    text = _string(value)
    if not text.startswith("/#/"):
        raise _Invalid(f'must start with "/#/", got {_show(text)}')
    _checkSegments(text, text.split("/")[2:])
    return text


_INET_FORM = '"/$/inet/<host>/<port>"'


def _configuredBoundName(value: str) -> str:
    """
    A bound name given settings of its own: under a namer (C{/#/fs/users};
    which namer is checked across sections) or a fixed address
    (C{/$/inet/127.0.0.1/8080}).
    """
    if value.startswith("/#/"):
        _checkSegments(value, value.split("/")[2:])
        return value
    if value.startswith("/$/"):
        segments = value.split("/")[2:]
        if len(segments) != 3 or segments[0] != "inet":
            raise _Invalid(f"expected {_INET_FORM}, got {_show(value)}")
        _checkSegments(value, segments)
        port = segments[2]
        if not re.fullmatch(r"[0-9]{1,5}", port) or not 1 <= int(port) <= 65535:
            raise _Invalid(f"port must be between 1 and 65535, got {_show(port)}")
        return value
    raise _Invalid(
        f'expected a bound name like "/#/fs/users" or {_INET_FORM}, got {_show(value)}'
    )


def _checkSegments(text: str, segments: list[str] | None) -> None:
    if segments is None:
        raise _Invalid(f'expected a path starting with "/", got {_show(text)}')
    for segment in segments:
        if not segment:
            raise _Invalid(f"empty path segment in {_show(text)}")
        if not _SEGMENT.fullmatch(segment):
            raise _Invalid(
                f"path segment {_show(segment)} in {_show(text)} may only hold"
                " letters, digits and _ . : -"
            )


_ROUTER_NAME = re.compile(r"[A-Za-z0-9_-]+")


def _routerName(value: Any) -> str:
    text = _string(value)
    if not _ROUTER_NAME.fullmatch(text):
        raise _Invalid(
            f"may only hold letters, digits, _ and -, got {_show(text)}"
        )
    return text


_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


def _headerName(value: Any) -> str:
    text = _string(value)
    if not _TOKEN.fullmatch(text):
        raise _Invalid(f"not a valid HTTP header name: {_show(text)}")
    return text.lower()


def _directory(value: Any) -> str:
    return os.path.abspath(_nonEmptyString(value))


_NETWORK_FORM = 'expected an IP address or a network like "10.0.0.0/8"'


def _network(value: Any) -> str:
    """
    An IP address or network (host bits may be set), normalised:
    C{"10.1.2.3/8"} is C{"10.0.0.0/8"}, C{"::1"} is C{"::1/128"}.
    """
    if not isinstance(value, str):
        raise _Invalid(f"{_NETWORK_FORM}, got {_show(value)}")
    address, _, length = value.partition("/")
    try:
        ipaddress.ip_address(address)
    except ValueError:
        raise _Invalid(f"{_NETWORK_FORM}, got {_show(value)}")
    if "%" in address:
        # A scope ("fe80::1%eth0") names an interface, not callers.
        raise _Invalid(f"an address with a scope cannot name callers, got {_show(value)}")
    try:
        network = ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise _Invalid(
            f"not a valid prefix length or netmask: {_show(length)} in {_show(value)}"
        )
    return str(network)


def _allowedHost(value: Any) -> str:
    """
    A host name the admin API answers to: C{"*"}, or a DNS name (no port,
    no scheme), lowercased.
    """
    if not isinstance(value, str):
        raise _Invalid(f"expected a host name, got {_show(value)}")
    if value == "*":
        return value
    name = value.lower().rstrip(".")
    labels = name.split(".")
    if not name or any(
        not label or len(label) > 63 or not all(c.isalnum() or c == "-" for c in label)
        or not label.isascii()
        for label in labels
    ):
        raise _Invalid(
            f'expected a host name such as "mesh.example" (no port, no scheme) or "*", '
            f"got {_show(value)}"
        )
    return name


def _token(value: Any) -> str | None:
    if value is None:
        return None
    return _nonEmptyString(value)


def _rules(value: Any) -> str:
    text = _string(value)
    try:
        from meshproxy.routing.dtab import Dtab, DtabSyntaxError
    except ImportError:
        # meshproxy.routing.dtab is written alongside this module; until it
        # lands the rules are checked when the router loads them.
        return text
    try:
        Dtab.read(text)
    except DtabSyntaxError as e:
        # str(e) repeats the position at its end; .message is the bare text.
        message = getattr(e, "message", None) or str(e)
        raise _Invalid(f"line {e.line}, column {e.column}: {message}")
    return text


# -- endpoint descriptions ----------------------------------------------------


def _endpoint(value: Any) -> str:
    """
    A Twisted server endpoint description, parsed (not listened on) to find
    mistakes. C{"tls:"} is checked as another spelling of C{"ssl:"}, which is
    how L{meshproxy.tap} builds it (Twisted's own C{tls:} parser, where it
    exists, takes other arguments).
    """
    text = _nonEmptyString(value)
    kind, _, rest = text.partition(":")
    try:
        if kind == "systemd":
            _checkSystemd(rest)
        else:
            _parseServerEndpoint("ssl:" + rest if kind == "tls" else text)
    except Exception as e:
        raise _Invalid(f"not a valid endpoint description ({_reason(e)})")
    return text


def _parseServerEndpoint(description: str) -> None:
    """
    Parse a server endpoint description without listening.

    @raise Exception: whatever the parser raises. The C{ssl:} parser loads
        its certificate and key files, so a missing file is reported here
        rather than after the other listeners are bound.
    """
    from twisted.internet.endpoints import serverFromString
    from twisted.internet.testing import MemoryReactor

    endpoint = serverFromString(MemoryReactor(), description)
    # The TCP parsers accept any integer as a port and fail only at bind
    # time; _port is private, so this check is best effort.
    port = getattr(endpoint, "_port", None)
    if isinstance(port, int) and not 0 <= port <= 65535:
        raise ValueError(f"port must be between 0 and 65535, got {port}")


def _systemdArguments(domain: str, index: str | None = None, name: str | None = None):
    """
    The signature of Twisted's systemd parser, to check arguments against.
    """


def _checkSystemd(rest: str) -> None:
    """
    Check the arguments of a C{systemd:} description. Twisted's parser looks
    the descriptor up in C{LISTEN_FDS} while parsing, which only a process
    started by systemd has, so the arguments are checked here instead.

    @raise ValueError: if they are not valid.
    """
    args, kwargs = [], {}
    for part in re.split(r"(?<!\\):", rest) if rest else []:
        key, eq, value = part.partition("=")
        if eq:
            kwargs[key] = value
        else:
            args.append(part)
    try:
        bound = inspect.signature(_systemdArguments).bind(*args, **kwargs)
    except TypeError as e:
        raise ValueError(f"systemd: {e}")
    domain = bound.arguments["domain"]
    index = bound.arguments.get("index")
    name = bound.arguments.get("name")
    if domain not in ("INET", "INET6", "UNIX"):
        raise ValueError(
            f'systemd: domain must be "INET", "INET6" or "UNIX", got {_show(domain)}'
        )
    if (index is None) == (name is None):
        raise ValueError("systemd: give exactly one of index= and name=")
    if index is not None and not re.fullmatch(r"[0-9]+", index):
        raise ValueError(
            f"systemd: index must be a non-negative integer, got {_show(index)}"
        )


def _reason(error: Exception) -> str:
    if isinstance(error, OSError) and error.strerror:
        if error.filename:
            return f"{error.strerror}: {error.filename}"
        return error.strerror
    return str(error) or type(error).__name__


# -- addresses ----------------------------------------------------------------


_HOST_LABEL = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_-]*[A-Za-z0-9_])?")
_WEIGHT = re.compile(r"[0-9]+(?:\.[0-9]*)?|\.[0-9]+")
_ADDRESS_FORM = 'expected "host:port" or "host:port weight"'


def _address(value: Any) -> tuple[str, int, float]:
    """
    Parse C{"host:port"} or C{"host:port weight"}; an IPv6 host goes in
    brackets (C{"[::1]:80"}) and is returned without them.
    """
    if not isinstance(value, str):
        raise _Invalid(f"{_ADDRESS_FORM}, got {_show(value)}")
    parts = value.split()
    if len(parts) not in (1, 2):
        raise _Invalid(f"{_ADDRESS_FORM}, got {_show(value)}")
    weight = 1.0
    if len(parts) == 2:
        if not _WEIGHT.fullmatch(parts[1]) or float(parts[1]) <= 0:
            raise _Invalid(f"weight must be a positive number, got {_show(parts[1])}")
        weight = float(parts[1])
    hostPort = parts[0]
    if hostPort.startswith("["):
        end = hostPort.find("]")
        if end < 0 or hostPort[end + 1 : end + 2] != ":":
            raise _Invalid(f'expected "[IPv6 address]:port", got {_show(hostPort)}')
        host, portText = hostPort[1:end], hostPort[end + 2 :]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise _Invalid(f"not an IPv6 address: {_show(host)}")
    else:
        host, colon, portText = hostPort.rpartition(":")
        if not colon:
            raise _Invalid(f"{_ADDRESS_FORM}, got {_show(value)} (no port)")
        if ":" in host:
            raise _Invalid(
                f'an IPv6 address goes in brackets, like "[::1]:80", got {_show(hostPort)}'
            )
        _checkHost(host)
    if not re.fullmatch(r"[0-9]{1,5}", portText) or not 1 <= int(portText) <= 65535:
        raise _Invalid(f"port must be between 1 and 65535, got {_show(portText)}")
    return host, int(portText), weight


def _checkHost(host: str) -> None:
    if re.fullmatch(r"[0-9.]+", host):
        # The resolver reads "10.1" as 10.0.0.1: demand four parts.
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise _Invalid(f"not an IPv4 address: {_show(host)}")
        return
    labels = host[:-1].split(".") if host.endswith(".") else host.split(".")
    if (
        not host
        or len(host) > 253
        or not all(_HOST_LABEL.fullmatch(label) and len(label) <= 63 for label in labels)
    ):
        raise _Invalid(f"not a valid host name: {_show(host)}")


# -- the sections, leaves first --------------------------------------------


def _parseAdmin(at: _At, value: Any) -> AdminConfig:
    converters = {
        "listen": _endpoint,
        "token": _token,
        "protectReads": _boolean,
        "shutdownGrace": _duration(positive=False),
        "stateDir": _optional(_directory),
        "allowedHosts": _listOf(_allowedHost, unique=True),
        "rulesAllowInet": _boolean,
    }
    section = _Section(at, value, converters)
    config = AdminConfig(**section.read(converters))
    if config.protectReads and config.token is None and section.ok("token"):
        at.key("protectReads").error("needs a token")
    return config


def _list(at: _At, value: Any) -> list:
    """
    Read a list; an empty YAML value reads as an empty list.
    """
    if value is None:
        return []
    if not isinstance(value, list):
        at.error(f"expected a list, got {_show(value)}")
        return []
    return value


def _listOf(convert: Callable[[Any], Any], unique: bool = False) -> _Nested:
    """
    A list whose items are each converted by C{convert}, read as a tuple of
    the valid items in the order written; each bad item is reported at its
    index.

    @param unique: whether an item equal to an earlier one is an error.
    """

    def parse(at: _At, value: Any) -> tuple:
        items: list = []
        seen: dict[Any, int] = {}
        for i, item in enumerate(_list(at, value)):
            try:
                converted = convert(item)
            except _Invalid as e:
                at.index(i).error(str(e))
                continue
            if unique and converted in seen:
                at.index(i).error(
                    f"{_show(converted)} is already listed at {at.index(seen[converted]).path}"
                )
                continue
            seen.setdefault(converted, i)
            items.append(converted)
        return tuple(items)

    return _Nested(parse)


def _orNone(parse: Callable[[_At, Any], Any]) -> _Nested:
    """
    A section whose C{null} (or empty YAML value) means L{None}; anything
    else is read by C{parse}, so C{{}} means the section's defaults.
    """
    return _Nested(lambda at, value: None if value is None else parse(at, value))


_NAMER_KINDS = {"file": ("root", "interval"), "static": ("services",)}


def _parseNamers(at: _At, value: Any) -> tuple[NamerConfig, ...]:
    namers = []
    seen: dict[str, int] = {}
    for i, item in enumerate(_list(at, value)):
        namer = _parseNamer(at.index(i), item)
        if namer is None:
            continue
        if namer.prefix in seen:
            at.index(i).key("prefix").error(
                f"{_show(namer.prefix)} is already used by namers[{seen[namer.prefix]}]"
            )
        seen.setdefault(namer.prefix, i)
        namers.append(namer)
    return tuple(namers)


def _parseNamer(at: _At, value: Any) -> NamerConfig | None:
    if not isinstance(value, Mapping):
        at.error(f"expected a mapping, got {_show(value)}")
        return None
    section, kind = _openKinded(at, value, "kind", _NAMER_KINDS, ("prefix",), None)
    namer: NamerConfig | None = None
    if kind == "file":
        values = section.read(
            {"prefix": _namerPrefix, "root": _directory, "interval": _duration()},
            required=("root",),
        )
        if "root" in values:
            namer = FileNamerConfig(**values)
    elif kind == "static":
        values = section.read(
            {"prefix": _namerPrefix, "services": _Nested(_parseServices)}
        )
        namer = StaticNamerConfig(**values)
    # With a bad prefix the default would stand in and clash with others.
    return namer if section.ok("prefix") else None


def _parseServices(
    at: _At, value: Any
) -> tuple[tuple[str, tuple[tuple[str, int, float], ...]], ...]:
    if value is None:
        return ()
    if not isinstance(value, Mapping):
        at.error(f"expected a mapping of service name to addresses, got {_show(value)}")
        return ()
    services = []
    for name, entries in value.items():
        if not isinstance(name, str) or not _SEGMENT.fullmatch(name):
            at.error(
                "a service name may only hold letters, digits and _ . : -,"
                f" got {_show(name)}"
            )
            continue
        serviceAt = at.key(name)
        addresses = []
        for i, entry in enumerate(_list(serviceAt, entries)):
            try:
                addresses.append(_address(entry))
            except _Invalid as e:
                serviceAt.index(i).error(str(e))
        services.append((name, tuple(addresses)))
    return tuple(services)


_IDENTIFIER_KINDS = {"host": (), "path": ("segments",), "header": ("name",)}


def _parseIdentifier(at: _At, value: Any) -> IdentifierConfig:
    section, kind = _openKinded(at, value, "kind", _IDENTIFIER_KINDS, ("prefix",), "host")
    if kind is None:
        return IdentifierConfig()
    values = section.read(
        {"prefix": _path(allowRoot=True), "segments": _integer(1), "name": _headerName},
        required=("name",) if kind == "header" else (),
    )
    return IdentifierConfig(kind=kind, **values)


_BALANCER_KINDS = {"ewma": ("decay",), "roundRobin": (), "leastLoaded": ()}


def _parseLoadBalancer(at: _At, value: Any) -> LoadBalancerConfig:
    section, kind = _openKinded(at, value, "kind", _BALANCER_KINDS, (), "ewma")
    if kind is None:
        return LoadBalancerConfig()
    return LoadBalancerConfig(kind=kind, **section.read({"decay": _duration()}))


def _parseLatencyEjection(at: _At, value: Any) -> LatencyEjectionConfig:
    converters = {"factor": _number(1, exclusiveMinimum=True), "for": _duration()}
    values = _Section(at, value, converters).read(converters)
    if "for" in values:
        # "for" is a Python keyword; the attribute is "duration".
        values["duration"] = values.pop("for")
    return LatencyEjectionConfig(**values)


_EJECTING = ("backoffMin", "backoffMax", "panicShare", "latency")
_ACCRUAL_KINDS = {
    "consecutiveFailures": ("failures", *_EJECTING),
    "successRate": ("successRate", "requests", "window", "minRequests", *_EJECTING),
    "none": (),
}


def _parseFailureAccrual(at: _At, value: Any) -> FailureAccrualConfig:
    section, kind = _openKinded(
        at, value, "kind", _ACCRUAL_KINDS, (), "consecutiveFailures"
    )
    if kind is None:
        return FailureAccrualConfig()
    values = section.read(
        {
            "failures": _integer(1),
            "backoffMin": _duration(positive=False),
            "backoffMax": _duration(positive=False),
            "successRate": _number(0, 1, exclusiveMinimum=True),
            "requests": _optional(_integer(1)),
            "window": _optional(_duration()),
            "minRequests": _integer(1),
            "panicShare": _number(0, 1),
            "latency": _orNone(_parseLatencyEjection),
        }
    )
    # A null requests or window is as good as an absent one: the attrs
    # default then stores the effective window (100 requests without a
    # time window).
    given = {key for key in ("requests", "window") if section.data.get(key) is not None}
    if values.get("requests") is None:
        values.pop("requests", None)
    if given == {"requests", "window"}:
        at.key("window").error("give either requests or window, not both")
    if "minRequests" in section.data and "window" not in given:
        at.key("minRequests").error("only with window")
    config = FailureAccrualConfig(kind=kind, **values)
    _checkOrder(at, section, config, "backoffMin", "backoffMax")
    return config


def _checkOrder(at: _At, section: _Section, config: Any, low: str, high: str) -> None:
    """
    Report C{config.<low>} being more than C{config.<high>}, against the key
    that was written (a default is not the user's mistake).
    """
    lowValue, highValue = getattr(config, low), getattr(config, high)
    if lowValue <= highValue or not section.ok(low, high):
        return
    if high in section.data:
        at.key(high).error(
            f"must not be shorter than {low} ({_showSeconds(lowValue)})"
        )
    else:
        at.key(low).error(
            f"must not be longer than {high} ({_showSeconds(highValue)}, the default)"
        )


def _parseBudget(at: _At, value: Any) -> BudgetConfig:
    converters = {
        "percent": _number(0, 1000),
        "minPerSecond": _number(0),
        "ttl": _duration(),
    }
    return BudgetConfig(**_Section(at, value, converters).read(converters))


def _parseRetries(at: _At, value: Any) -> RetriesConfig:
    converters = {
        "budget": _Nested(_parseBudget),
        "backoffMin": _duration(positive=False),
        "backoffMax": _duration(positive=False),
        "bufferBytes": _integer(0),
        "maxRetries": _integer(0),
    }
    section = _Section(at, value, converters)
    config = RetriesConfig(**section.read(converters))
    _checkOrder(at, section, config, "backoffMin", "backoffMax")
    return config


def _parseTimeouts(at: _At, value: Any) -> TimeoutsConfig:
    converters = {
        "total": _duration(),
        "perTry": _optional(_duration()),
        "connect": _duration(),
    }
    section = _Section(at, value, converters)
    config = TimeoutsConfig(**section.read(converters))
    if (
        config.perTry is not None
        and config.perTry > config.total
        and section.ok("perTry", "total")
    ):
        at.key("perTry").error(
            f"must not be longer than total ({_showSeconds(config.total)}),"
            f" got {_show(section.data['perTry'])}"
        )
    return config


def _parseTcpTimeouts(at: _At, value: Any) -> TimeoutsConfig:
    """
    The timeouts of a TCP router: only C{connect}; C{total} and C{perTry}
    are about requests, which a TCP router does not see.
    """
    converters = {"connect": _duration()}
    httpOnly = 'only for protocol "http"'
    section = _Section(at, value, converters, {"total": httpOnly, "perTry": httpOnly})
    return TimeoutsConfig(**section.read(converters))


def _parseServer(at: _At, value: Any) -> ServerConfig:
    converters = {
        "maxHeaderBytes": _integer(1),
        "maxHeaders": _integer(1),
        "maxUriLength": _integer(1),
        "maxBodyBytes": _optional(_integer(0)),
        "headerTimeout": _duration(),
        "idleTimeout": _duration(),
        "bodyTimeout": _duration(),
        "maxConnections": _optional(_integer(1)),
    }
    return ServerConfig(**_Section(at, value, converters).read(converters))


def _parseClient(at: _At, value: Any) -> ClientConfig:
    converters = {
        "maxIdlePerEndpoint": _integer(0),
        "idleTimeout": _duration(),
        "maxHeaderBytes": _integer(256),
        "maxHeaders": _integer(1),
        "maxInformational": _integer(0),
    }
    return ClientConfig(**_Section(at, value, converters).read(converters))


_CLASSIFIER_KINDS = {
    "nonRetryable5XX": (),
    "retryableRead5XX": (),
    "retryableIdempotent5XX": (),
    "allSuccessful": (),
}
_CLASSIFIER_COMMON = {
    "retryableStatusCodes": _listOf(_integer(100, 599), unique=True),
    "idempotencyKey": _boolean,
}


def _parseClassifier(at: _At, value: Any) -> ClassifierConfig:
    section, kind = _openKinded(
        at, value, "kind", _CLASSIFIER_KINDS, _CLASSIFIER_COMMON, "nonRetryable5XX"
    )
    if kind is None:
        return ClassifierConfig()
    return ClassifierConfig(kind=kind, **section.read(_CLASSIFIER_COMMON))


def _parseLimits(at: _At, value: Any) -> LimitsConfig:
    converters = {
        "maxConcurrent": _optional(_integer(1)),
        "maxPending": _optional(_integer(0)),
    }
    return LimitsConfig(**_Section(at, value, converters).read(converters))


def _parseTrust(at: _At, value: Any) -> TrustConfig:
    converters = {
        "callers": _listOf(_network),
        "dtabPrefixes": _listOf(_path(allowRoot=True)),
        "deadline": _boolean,
        "allowInet": _boolean,
    }
    return TrustConfig(**_Section(at, value, converters).read(converters))


def _parseBoundName(at: _At, value: Any) -> BoundNameConfig:
    converters = {
        "classifier": _orNone(_parseClassifier),
        "limits": _orNone(_parseLimits),
    }
    return BoundNameConfig(**_Section(at, value, converters).read(converters))


def _parseBoundNames(at: _At, value: Any) -> tuple[tuple[str, BoundNameConfig], ...]:
    """
    @return: the bound names whose names are valid (their settings may have
        had errors, reported), in the order written. Whether a namer owns
        each is checked once the namers are known, by L{_checkBoundNames}.
    """
    if value is None:
        return ()
    if not isinstance(value, Mapping):
        at.error(f"expected a mapping of bound name to settings, got {_show(value)}")
        return ()
    boundNames = []
    for name, settings in value.items():
        if not isinstance(name, str):
            at.error(f"keys must be strings, got {_show(name)}")
            continue
        try:
            _configuredBoundName(name)
        except _Invalid as e:
            at.key(name).error(str(e))
            continue
        boundNames.append((name, _parseBoundName(at.key(name), settings)))
    return tuple(boundNames)


_ROUTER_COMMON: dict[str, _Converter] = {"name": _routerName, "listen": _endpoint}
_ROUTER_PROTOCOLS: dict[str, dict[str, _Converter]] = {
    "http": {
        "identifier": _Nested(_parseIdentifier),
        "rules": _rules,
        "loadBalancer": _Nested(_parseLoadBalancer),
        "failureAccrual": _Nested(_parseFailureAccrual),
        "retries": _Nested(_parseRetries),
        "timeouts": _Nested(_parseTimeouts),
        "server": _Nested(_parseServer),
        "client": _Nested(_parseClient),
        "forwarded": _boolean,
        "classifier": _Nested(_parseClassifier),
        "limits": _Nested(_parseLimits),
        "trust": _Nested(_parseTrust),
        "boundNames": _Nested(_parseBoundNames),
    },
    "tcp": {
        "destination": lambda value: _configuredBoundName(_string(value)),
        "loadBalancer": _Nested(_parseLoadBalancer),
        "failureAccrual": _Nested(_parseFailureAccrual),
        "timeouts": _Nested(_parseTcpTimeouts),
        "connectRetries": _integer(0),
        "idleTimeout": _optional(_duration()),
        "maxConnections": _optional(_integer(1)),
    },
}
_ROUTER_REQUIRED = {"http": ("name", "listen"), "tcp": ("name", "listen", "destination")}


def _parseRouter(at: _At, value: Any) -> tuple[str | None, RouterConfig | None]:
    """
    @return: the router's name if valid, and the router if it has a valid
        name and listener (errors are reported either way). The name alone
        still takes part in the check for duplicate names.
    """
    if not isinstance(value, Mapping):
        at.error(f"expected a mapping, got {_show(value)}")
        return None, None
    section, protocol = _openKinded(
        at, value, "protocol", _ROUTER_PROTOCOLS, _ROUTER_COMMON, "http"
    )
    if protocol is None:
        values = section.read(_ROUTER_COMMON, required=("name", "listen"))
        return values.get("name"), None
    values = section.read(
        {**_ROUTER_COMMON, **_ROUTER_PROTOCOLS[protocol]},
        required=_ROUTER_REQUIRED[protocol],
    )
    if "name" not in values or "listen" not in values:
        return values.get("name"), None
    return values["name"], RouterConfig(protocol=protocol, **values)


def _parseRouters(at: _At, value: Any) -> tuple[tuple[int, RouterConfig], ...]:
    """
    @return: the valid routers, each with its index in the list so that
        checks across sections can name it.
    """
    items = _list(at, value)
    if not items and (value is None or isinstance(value, list)):
        at.error("at least one router is required")
    routers = []
    names: dict[str, int] = {}
    for i, item in enumerate(items):
        name, router = _parseRouter(at.index(i), item)
        if name in names:
            at.index(i).key("name").error(
                f"{_show(name)} is already used by routers[{names[name]}]"
            )
        elif name is not None:
            names[name] = i
        if router is not None:
            routers.append((i, router))
    return tuple(routers)


def _parseMesh(at: _At, document: Mapping, source: str) -> MeshConfig | None:
    section = _Section(at, document, ("admin", "namers", "routers"))
    values = section.read(
        {
            "admin": _Nested(_parseAdmin),
            "namers": _Nested(_parseNamers),
            "routers": _Nested(_parseRouters),
        },
        required=("routers",),
    )
    admin = values.get("admin", AdminConfig())
    namers = values.get("namers", ())
    indexed = values.get("routers", ())
    rawAdmin = section.data.get("admin")
    adminListenTrusted = not (
        isinstance(rawAdmin, Mapping)
        and "listen" in rawAdmin
        and rawAdmin["listen"] != admin.listen
    )
    _checkListeners(at, admin.listen if adminListenTrusted else None, indexed)
    if section.ok("namers"):
        _checkDestinations(at, namers, indexed)
        _checkBoundNames(at, namers, indexed)
    if "routers" not in values:
        return None
    return MeshConfig(
        admin=admin,
        namers=namers,
        routers=tuple(router for _, router in indexed),
        source=source,
    )


def _checkListeners(
    at: _At, adminListen: str | None, routers: Iterable[tuple[int, RouterConfig]]
) -> None:
    """
    Report routers listening where another router or the admin API does.

    @param adminListen: the admin listener, or L{None} if it was invalid.
    """
    users = {} if adminListen is None else {adminListen: "admin.listen"}
    for i, router in routers:
        if router.listen in users:
            at.key("routers").index(i).key("listen").error(
                f"{_show(router.listen)} is already used by {users[router.listen]}"
            )
        users.setdefault(router.listen, f"routers[{i}].listen")


def _checkDestinations(
    at: _At,
    namers: Iterable[NamerConfig],
    routers: Iterable[tuple[int, RouterConfig]],
) -> None:
    """
    Report TCP routers whose destination no namer owns: a TCP router has no
    rules, so a namer must bind its destination directly.
    """
    prefixes = [namer.prefix for namer in namers]
    for i, router in routers:
        destination = router.destination
        if destination is None or destination.startswith("/$/"):
            continue
        if any(destination.startswith(prefix + "/") for prefix in prefixes):
            continue
        where = at.key("routers").index(i).key("destination")
        _reportUnowned(where, destination, prefixes)


def _reportUnowned(where: _At, name: str, prefixes: list[str]) -> None:
    if name in prefixes:
        where.error(f"names no service under namer {_show(name)}")
    else:
        known = ", ".join(_show(p) for p in prefixes) or "none"
        where.error(f"no namer owns {_show(name)} (namer prefixes: {known})")


def _checkBoundNames(
    at: _At,
    namers: Iterable[NamerConfig],
    routers: Iterable[tuple[int, RouterConfig]],
) -> None:
    """
    Report bound names in C{boundNames} that delegation can never produce,
    so that their settings would silently apply to nothing: names no namer
    owns, and paths below a bound name. As in
    L{meshproxy.routing.delegate}, the longest matching namer prefix owns a
    name, and the bound name is that prefix and one more segment.
    """
    prefixes = [namer.prefix for namer in namers]
    bySegments = sorted(
        ((prefix.split("/")[1:], prefix) for prefix in prefixes),
        key=lambda item: len(item[0]),
        reverse=True,
    )
    for i, router in routers:
        for name, _ in router.boundNames:
            if name.startswith("/$/"):
                continue
            where = at.key("routers").index(i).key("boundNames").key(name)
            segments = name.split("/")[1:]
            for prefixSegments, prefix in bySegments:
                n = len(prefixSegments)
                if len(segments) > n and segments[:n] == prefixSegments:
                    if len(segments) > n + 1:
                        bound = "/" + "/".join(segments[: n + 1])
                        where.error(
                            f"names a path below the bound name {_show(bound)}"
                            f" (namer {_show(prefix)} and one service name)"
                        )
                    break
            else:
                _reportUnowned(where, name, prefixes)
