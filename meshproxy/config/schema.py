"""
The configuration classes: frozen L{Section}s, one per YAML mapping,
whose attributes carry the YAML keys' names. This module holds the top of
the tree (L{MeshConfig}, the admin API, the namers, the routers) and the
checks across sections; a router's own sections are in
L{meshproxy.config.policies}.

Each attribute's type says how its value is checked (see
L{meshproxy.config.fields}); each class's C{_crossCheck} holds the checks
across several of its values. Durations are stored as float seconds and
lists as tuples; their defaults are written as in YAML.
"""

import ipaddress
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from meshproxy.config import checks
from meshproxy.config.checks import Invalid, show
from meshproxy.config.etcd import EtcdEndpoints, EtcdKeyPrefix, EtcdTLSConfig, etcdProblems
from meshproxy.config.fields import (
    Address,
    AllowedHost,
    Bool,
    Checked,
    Defaulted,
    Directory,
    Duration,
    EmptyIsDefaults,
    Endpoint,
    Integer,
    KindOf,
    ListOf,
    NamerPrefix,
    NonEmptyText,
    PairsOf,
    RouterName,
    Rules,
)
from meshproxy.config.policies import (
    BoundNameConfig,
    ClassifierConfig,
    ClientConfig,
    FailureAccrualConfig,
    GrpcConfig,
    Http2Config,
    IdentifierConfig,
    LimitsConfig,
    LoadBalancerConfig,
    ProxyProtocolConfig,
    RetriesConfig,
    ServerConfig,
    TimeoutsConfig,
    TrustConfig,
    _order,
)
from meshproxy.config.problems import Problem
from meshproxy.config.rulesstore import RulesStoreConfig
from meshproxy.config.section import Section, View, jsonSchemaOf
from meshproxy.config.security import DefaultPolicy, TLSConfig, UpstreamTLSConfig
from meshproxy.config.telemetry import TelemetryConfig

_PATH_PATTERN = f"(/{checks.SEGMENT_PATTERN})+"


class AdminConfig(Section):
    """
    The admin API listener.

    @ivar listen: a Twisted server endpoint description.
    @ivar token: when set, mutating calls need C{Authorization: Bearer <token>}.
    @ivar protectReads: when true, reads need the token too (needs a token).
    @ivar shutdownGrace: seconds a graceful shutdown lets in-flight requests
        finish before the process exits.
    @ivar stateDir: the absolute path of the directory where state changed
        at run time (rules replaced through the admin API) is persisted, or
        L{None} for the directory of the config file (the embedded demo,
        which has none, keeps such changes in memory only). A relative path
        in the YAML is relative to the directory of the config file; the
        directory is not checked or created here.
    @ivar allowedHosts: the host names (lowercase, without port) the admin
        API answers to besides IP literals and C{localhost}; C{("*",)} turns
        the C{Host} check off. Other names get 421 (DNS rebinding).
    @ivar rulesAllowInet: whether rules changed through the admin API may
        lead to C{/$/inet} addresses (the operator writes them).
    """

    listen: Endpoint = "tcp:9990:interface=127.0.0.1"
    token: NonEmptyText | None = None
    protectReads: Bool = False
    shutdownGrace: Duration(positive=False) = "10s"
    stateDir: Directory() | None = None
    allowedHosts: ListOf(AllowedHost, unique=True) = ()
    rulesAllowInet: Bool = True

    @classmethod
    def _crossCheck(cls, view: View) -> Iterable[Problem]:
        values = view.values("protectReads", "token")
        if values is not None and values[0] and values[1] is None:
            yield Problem(("protectReads",), "needs a token")


class _Namer(Section):
    """
    What namers have in common: each owns a prefix, and its C{kind} says
    which other keys it has.
    """

    _selector = "kind"
    _selectorRequired = True
    _kinds = {
        "file": ("root", "interval"),
        "static": ("services",),
        "dns": ("nameservers", "refresh", "staleFor", "timeout"),
        "etcd": ("endpoints", "keyPrefix", "username", "password", "tls", "timeout"),
    }
    _common = ("prefix",)


class FileNamerConfig(_Namer):
    """
    A namer reading one file per service from a directory, re-read every
    C{interval} seconds. Each file holds C{host:port [weight]} lines.

    @ivar kind: always C{"file"}.
    @ivar prefix: the bound-name prefix this namer owns, such as C{/#/fs}.
    @ivar root: the absolute path of the directory (a relative path in the
        YAML is relative to the directory of the config file).
    @ivar interval: seconds between scans.
    """

    kind: Literal["file"] = "file"
    prefix: NamerPrefix = "/#/fs"
    root: Directory()
    interval: Duration() = "1s"


if TYPE_CHECKING:
    # (as BoundNames below: mypy cannot read a call as a type) Each service
    # name with its (host, port, weight) addresses.
    Services = tuple[tuple[str, tuple[tuple[str, int, float], ...]], ...]
else:
    Services = PairsOf(
        checks.serviceName,
        ListOf(Address),
        keyPattern=f"^{checks.SEGMENT_PATTERN}$",
        notMapping="expected a mapping of service name to addresses",
        keyProblemsAtKey=False,
    )


class StaticNamerConfig(_Namer):
    """
    A namer whose services are listed in the configuration itself.

    @ivar kind: always C{"static"}.
    @ivar prefix: the bound-name prefix this namer owns, such as C{/#/static}.
    @ivar services: C{(serviceName, endpoints)} pairs in the order written,
        where C{endpoints} is a tuple of C{(host, port, weight)}; C{host} is
        an IPv6 address without brackets, an IPv4 address or a host name.
        C{dict(services)} gives a mapping. In YAML, a mapping of service
        name to a list of C{"host:port"} or C{"host:port weight"}.
    """

    kind: Literal["static"] = "static"
    prefix: NamerPrefix = "/#/static"
    services: Services = ()


def _nameserver(value: Any) -> tuple[str, int]:
    """
    A DNS server: an IP address (the resolver does not look names up to
    find its servers), with a port or not (53): C{"10.0.0.2"},
    C{"127.0.0.1:5353"}, C{"[::1]:53"}. The stored C{(address, port)} is
    checked in its text form.
    """
    if isinstance(value, tuple) and len(value) == 2:
        value = f"[{value[0]}]:{value[1]}" if ":" in str(value[0]) else f"{value[0]}:{value[1]}"
    text = checks.string(value)
    form = 'expected an IP address with an optional port, like "127.0.0.1:5353" or "[::1]:53"'
    if text.startswith("["):
        host, close, rest = text[1:].partition("]")
        if not close or (rest and not rest.startswith(":")):
            raise Invalid(f"{form}, got {show(text)}")
        portText = rest[1:] if rest else "53"
        family: Any = ipaddress.IPv6Address
    elif text.count(":") == 1:
        host, _, portText = text.partition(":")
        family = ipaddress.IPv4Address
    elif ":" in text:
        raise Invalid(f'an IPv6 address goes in brackets, like "[::1]:53", got {show(text)}')
    else:
        host, portText, family = text, "53", ipaddress.IPv4Address
    try:
        family(host)
    except ValueError:
        raise Invalid(f"{form}, got {show(text)}") from None
    if not (portText.isascii() and portText.isdigit() and 0 < int(portText) < 65536):
        raise Invalid(f"port must be between 1 and 65535, got {show(portText)}")
    return host, int(portText)


if TYPE_CHECKING:
    Nameserver = tuple[str, int]
else:
    Nameserver = Checked(
        _nameserver,
        {"type": "string", "description": '"address" or "address:port" (IPv6 in brackets)'},
    )


class DnsRefreshConfig(Section):
    """
    How often a DNS namer looks a name up again: after the answer's TTL,
    clamped between C{min} and C{max}.

    @ivar min: seconds, the shortest wait (also the first wait after a
        failed lookup).
    @ivar max: seconds, the longest wait.
    """

    min: Duration() = "5s"
    max: Duration() = "5m"

    @classmethod
    def _crossCheck(cls, view: View) -> Iterable[Problem]:
        return _order(view, "min", "max")


class DnsNamerConfig(_Namer):
    """
    A namer looking names up in DNS: C{<prefix>/srv/<name>} (SRV records)
    and C{<prefix>/a/<name>/<port>} (A and AAAA records, with that port).

    @ivar kind: always C{"dns"}.
    @ivar prefix: the bound-name prefix this namer owns, such as C{/#/dns}.
    @ivar nameservers: C{(address, port)} pairs of the servers to ask, in
        order; empty for the system's (C{/etc/resolv.conf}).
    @ivar refresh: the L{DnsRefreshConfig}.
    @ivar staleFor: seconds a name whose lookups fail keeps its last good
        set; then the set empties.
    @ivar timeout: seconds one lookup may take, retries to the next server
        included.
    @cvar nameLengths: how many segments below the prefix a name takes,
        by its first segment (as L{meshproxy.discovery.dns.NAME_LENGTHS}).
    """

    nameLengths: ClassVar[Mapping[str, int]] = {"srv": 2, "a": 3}

    kind: Literal["dns"] = "dns"
    prefix: NamerPrefix = "/#/dns"
    nameservers: ListOf(Nameserver) = ()
    refresh: Defaulted(DnsRefreshConfig)
    staleFor: Duration() = "5m"
    timeout: Duration() = "5s"



class EtcdNamerConfig(_Namer):
    """
    A namer following keys in etcd: C{<keyPrefix><service>/<instance>},
    each value C{"host:port [weight]"} or
    C{{"address": "host:port", "weight": 1, "meta": {...}}}.

    @ivar kind: always C{"etcd"}.
    @ivar prefix: the bound-name prefix this namer owns, such as C{/#/etcd}.
    @ivar endpoints: the etcd members' URLs, tried in turn.
    @ivar keyPrefix: the prefix of the service keys, kept ending with C{/}.
    @ivar username: the etcd user, or L{None} without authentication.
    @ivar password: its password (needed with C{username}).
    @ivar tls: the L{EtcdTLSConfig} for C{https://} endpoints, or L{None}.
    @ivar timeout: seconds one request to etcd may take.
    """

    kind: Literal["etcd"] = "etcd"
    prefix: NamerPrefix = "/#/etcd"
    endpoints: EtcdEndpoints = ("http://127.0.0.1:2379",)
    keyPrefix: EtcdKeyPrefix = "/meshproxy/services/"
    username: NonEmptyText | None = None
    password: NonEmptyText | None = None
    tls: EtcdTLSConfig | None = None
    timeout: Duration() = "5s"

    @classmethod
    def _crossCheck(cls, view: View) -> Iterable[Problem]:
        yield from etcdProblems(view)


NamerConfig = FileNamerConfig | StaticNamerConfig | DnsNamerConfig | EtcdNamerConfig


if TYPE_CHECKING:
    # What the value types built by calls are, for mypy (which cannot
    # read a call as a type).
    BoundNames = tuple[tuple[str, BoundNameConfig], ...]
else:
    BoundNames = PairsOf(
        checks.boundName,
        EmptyIsDefaults(BoundNameConfig),
        keyPattern="^/[#$]/",
        notMapping="expected a mapping of bound name to settings",
        keyProblemsAtKey=True,
    )

def _destination(value: Any) -> str:
    """
    A TCP router's destination: a bound name (C{/#/fs/pg},
    C{/$/inet/<host>/<port>}) or a logical name the rules rewrite
    (C{/svc/pg}).
    """
    text = checks.string(value)
    if text.startswith(("/#/", "/$/")):
        return checks.boundName(text)
    return checks.path(text, allowRoot=False)


Destination = Checked(
    _destination,
    {
        "type": "string",
        "pattern": f"^(/#{_PATH_PATTERN}|/\\$/inet/{checks.SEGMENT_PATTERN}/[0-9]+"
        f"|{_PATH_PATTERN})$",
        "description": "a bound name, or a logical name the rules rewrite",
    },
)

_HTTP_KEYS = (
    "server", "client", "forwarded", "classifier", "limits", "trust", "upstreamTls", "http2",
    "grpc",
)
_TCP_KEYS = ("destination", "connectRetries", "idleTimeout", "maxConnections")
#: The timeouts about requests, which a TCP router does not see.
_REQUEST_TIMEOUTS = ("total", "perTry")
#: The retry keys about requests, which a TCP router does not see.
_REQUEST_RETRIES = ("bufferBytes", "maxRetries")
#: The keys of a bound name's settings each protocol reads.
_BOUND_NAME_KEYS = {
    "http": ("classifier", "limits", "upstreamTls", "upstreamProtocol"),
    "tcp": ("proxyProtocol",),
}


class RouterConfig(Section):
    """
    One listener and how it routes.

    The HTTP-only attributes keep their defaults on a TCP router, and the
    TCP-only ones (C{destination}, C{connectRetries}, C{idleTimeout},
    C{maxConnections}) keep theirs on an HTTP router.

    @ivar name: unique among routers, C{[A-Za-z0-9_-]+}.
    @ivar protocol: C{"http"} or C{"tcp"}.
    @ivar listen: a Twisted server endpoint description.
    @ivar identifier: the L{IdentifierConfig} (TCP: C{kind: sni} only,
        instead of a C{destination}).
    @ivar rules: the dtab text (TCP: rewriting the destination or the SNI
        name).
    @ivar loadBalancer: the L{LoadBalancerConfig}.
    @ivar failureAccrual: the L{FailureAccrualConfig}.
    @ivar retries: the L{RetriesConfig} (TCP: its C{budget}, C{backoffMin}
        and C{backoffMax}, for connection attempts).
    @ivar timeouts: the L{TimeoutsConfig} (TCP: C{connect} only).
    @ivar server: (HTTP) the L{ServerConfig}.
    @ivar http2: (HTTP) the L{Http2Config}: HTTP/2 from clients.
    @ivar client: (HTTP) the L{ClientConfig}.
    @ivar forwarded: (HTTP) whether to add C{X-Forwarded-For},
        C{X-Forwarded-Proto}, C{Forwarded} and C{Via} to requests.
    @ivar classifier: (HTTP) the L{ClassifierConfig}.
    @ivar grpc: (HTTP) the L{GrpcConfig}: the gRPC methods its metrics name.
    @ivar limits: (HTTP) the L{LimitsConfig}, applied to each bound name.
    @ivar trust: (HTTP) the L{TrustConfig}.
    @ivar boundNames: C{(boundName, BoundNameConfig)} pairs in the order
        written, where C{boundName} is a namer prefix and one service name
        (C{/#/fs/users}) or C{/$/inet/<host>/<port>}.
        C{dict(boundNames)} gives a mapping.
    @ivar destination: (TCP) the logical name connections go to, such as
        C{/#/fs/postgres} (a bound name, without rules) or C{/svc/postgres}
        (rewritten by the rules); not with an C{identifier}.
    @ivar connectRetries: (TCP) after a failed connection attempt, how many
        more attempts (on other endpoints when there are any) a client
        connection gets before it is closed, within the retry budget.
    @ivar idleTimeout: (TCP) seconds without a byte in either direction
        after which both sides of a spliced connection are closed, or
        L{None} for no limit.
    @ivar maxConnections: (TCP) open client connections, or L{None} for no
        limit; extra connections are closed at once.
    @ivar tls: the L{TLSConfig} of TLS terminated on the listener (a
        C{tcp:} one), or L{None}.
    @ivar upstreamTls: (HTTP) the L{UpstreamTLSConfig} of TLS to the
        upstreams, or L{None} for plain connections.
    @ivar policy: the L{PolicyConfig}: who may call what.
    @ivar proxyProtocol: the L{ProxyProtocolConfig} (PROXY headers
        accepted from load balancers; TCP: sent to upstreams), or L{None}.

    C{loadBalancer}, C{failureAccrual} and C{timeouts.connect} apply to TCP
    routers too (their C{timeouts.total} and C{timeouts.perTry} keep their
    defaults, unused).
    """

    _selector = "protocol"
    _kinds = {"http": _HTTP_KEYS, "tcp": _TCP_KEYS}
    _common = (
        "name", "listen", "identifier", "rules", "loadBalancer", "failureAccrual", "retries",
        "timeouts", "boundNames", "tls", "policy", "proxyProtocol",
    )

    name: RouterName
    protocol: Literal["http", "tcp"] = "http"
    listen: Endpoint
    identifier: Defaulted(IdentifierConfig)
    rules: Rules = ""
    loadBalancer: Defaulted(LoadBalancerConfig)
    failureAccrual: Defaulted(FailureAccrualConfig)
    retries: Defaulted(RetriesConfig)
    timeouts: Defaulted(TimeoutsConfig)
    server: Defaulted(ServerConfig)
    http2: Defaulted(Http2Config)
    client: Defaulted(ClientConfig)
    forwarded: Bool = True
    classifier: Defaulted(ClassifierConfig)
    grpc: Defaulted(GrpcConfig)
    limits: Defaulted(LimitsConfig)
    trust: Defaulted(TrustConfig)
    boundNames: BoundNames = ()
    destination: Destination | None = None
    connectRetries: Integer(0) = 2
    idleTimeout: Duration() | None = None
    maxConnections: Integer(1) | None = None
    tls: TLSConfig | None = None
    upstreamTls: UpstreamTLSConfig | None = None
    policy: DefaultPolicy
    proxyProtocol: ProxyProtocolConfig | None = None

    @classmethod
    def _prepare(cls, data: dict, kind: str | None, context: Any) -> list[Problem]:
        if kind != "tcp":
            return []
        problems = []
        for section, keys in (("timeouts", _REQUEST_TIMEOUTS), ("retries", _REQUEST_RETRIES)):
            values = data.get(section)
            if not isinstance(values, Mapping):
                continue
            data[section] = values = dict(values)
            for key in keys:
                if key in values:
                    del values[key]
                    problems.append(Problem((section, key), 'only for protocol "http"'))
        return problems

    @classmethod
    def _crossCheck(cls, view: View) -> Iterable[Problem]:
        listen = view.raw("listen")
        if (
            view.raw("tls") is not None
            and isinstance(listen, str)
            and listen.startswith(("ssl:", "tls:"))
        ):
            yield Problem(
                ("tls",),
                "cannot be used with an ssl: or tls: listen string (give one or the other: "
                "tls with a tcp: listener)",
            )
        protocol = view.values("protocol")
        if protocol is not None:
            yield from _protocolProblems(view, protocol[0])

    @classmethod
    def _kindSchema(cls, kind: str) -> dict | None:
        schema = super()._kindSchema(kind)
        if kind == "tcp" and schema is not None:
            then = schema["then"]
            for section, keys in (("timeouts", _REQUEST_TIMEOUTS), ("retries", _REQUEST_RETRIES)):
                then["properties"][section] = {"properties": {key: False for key in keys}}
            # A destination, or an identifier (SNI), not both.
            then["oneOf"] = [{"required": ["destination"]}, {"required": ["identifier"]}]
            then["properties"]["identifier"] = {"properties": {"kind": {"const": "sni"}}}
        elif kind == "http" and schema is not None:
            then = schema["then"]
            then["properties"]["identifier"] = {"properties": {"kind": {"not": {"const": "sni"}}}}
        return schema


def _protocolProblems(view: View, protocol: str) -> Iterable[Problem]:
    """
    What a router of C{protocol} may not hold in the sections both
    protocols have: an identifier of the other protocol's kind, the keys of
    the other protocol's bound-name settings, PROXY headers sent by an
    HTTP router; and a TCP router's destination or identifier (one of the
    two).
    """
    identifier = view.raw("identifier")
    kind = identifier.get("kind") if isinstance(identifier, Mapping) else None
    if protocol == "tcp":
        if kind is not None and kind != "sni" and view.ok("identifier"):
            yield Problem(("identifier", "kind"), 'a tcp router identifies by "sni" only')
        hasIdentifier = isinstance(identifier, Mapping)
        if hasIdentifier and view.raw("destination") is not None:
            yield Problem(
                ("destination",), "give either a destination or an identifier, not both"
            )
        elif not hasIdentifier and view.raw("destination") is None and view.ok("destination"):
            yield Problem(("destination",), "required")
    elif kind == "sni":
        yield Problem(("identifier", "kind"), '"sni" is only for protocol "tcp"')
    proxy = view.raw("proxyProtocol")
    if protocol == "http" and isinstance(proxy, Mapping) and proxy.get("send", "none") != "none":
        yield Problem(("proxyProtocol", "send"), 'only for protocol "tcp"')
    names = view.raw("boundNames")
    if isinstance(names, Mapping):
        other = "http" if protocol == "tcp" else "tcp"
        for name, settings in names.items():
            if not isinstance(settings, Mapping):
                continue
            for key in _BOUND_NAME_KEYS[other]:
                if key in settings:
                    yield Problem(("boundNames", name, key), f'only for protocol "{other}"')


def _routerName(raw: Any, router: RouterConfig | None) -> str | None:
    # A router's name counts among the names in use even when something
    # else in the router is wrong.
    if router is not None:
        return router.name
    try:
        return checks.routerName(raw.get("name") if isinstance(raw, Mapping) else None)
    except Invalid:
        return None


def _namerPrefix(raw: Any, namer: NamerConfig | None) -> str | None:
    return None if namer is None else namer.prefix


if TYPE_CHECKING:
    Namers = tuple[NamerConfig, ...]
    Routers = tuple[RouterConfig, ...]
else:
    Namers = ListOf(
        KindOf(FileNamerConfig, StaticNamerConfig, DnsNamerConfig, EtcdNamerConfig),
        uniqueBy=_namerPrefix,
        uniqueAt=("prefix",),
        duplicate="{shown} is already used by {ref}",
    )
    Routers = ListOf(
        RouterConfig,
        uniqueBy=_routerName,
        uniqueAt=("name",),
        duplicate="{shown} is already used by {ref}",
        nonEmpty="at least one router is required",
    )


#: The most worker processes C{workers} may ask for.
MAX_WORKERS = 64


def workersValue(value: Any) -> int | str:
    """
    Check a C{workers} value: a whole number from 1 to L{MAX_WORKERS}, or
    C{"auto"}.

    @raise Invalid: for anything else.
    """
    if value == "auto" and isinstance(value, str):
        return value
    if isinstance(value, bool) or not isinstance(value, int):
        raise Invalid(
            f'expected a number of worker processes (1 to {MAX_WORKERS}) or "auto",'
            f" got {show(value)}"
        )
    checks.checkRange(value, 1, MAX_WORKERS)
    return value


Workers = Checked(
    workersValue,
    {"oneOf": [
        {"type": "integer", "minimum": 1, "maximum": MAX_WORKERS},
        {"const": "auto"},
    ]},
)


class MeshConfig(Section):
    """
    The whole configuration of one meshproxy process.

    @ivar admin: the L{AdminConfig}.
    @ivar namers: L{FileNamerConfig}, L{StaticNamerConfig} and
        KindOf(FileNamerConfig, StaticNamerConfig, DnsNamerConfig, EtcdNamerConfig),
    @ivar routers: the L{RouterConfig} values, in the order written; at least
        one.
    @ivar telemetry: the L{TelemetryConfig} (tracing, access log).
    @ivar rulesStore: the L{RulesStoreConfig} of a store shared by every
        proxy (etcd) that keeps the rules and policies, or L{None} to keep
        them in the config and the local state directory.
    @ivar workers: how many worker processes run the data path: C{1} (the
        default: one process, as without the key), a number up to
        L{MAX_WORKERS}, or C{"auto"} (the CPUs available to the process; see
        L{meshproxy.workers.count}). C{twistd meshproxy --workers} wins.
    @ivar busyPoll: how long the process (each worker) polls for events
        without sleeping before it waits for them: C{0s} (the default)
        never, else at most C{1ms}. For the latency of one request at a time
        (a woken process answers later than one awake), at the cost of CPU
        time when idle (L{MeshReactor.busyPoll<meshproxy.reactor.MeshReactor.busyPoll>});
        as HAProxy's C{busy-polling}. Applied at start (a reload says a
        restart is needed).
    @ivar source: the file (or label) the configuration was read from.
    """

    _notInDocument = ("source",)

    admin: Defaulted(AdminConfig)
    namers: Namers = ()
    routers: Routers
    telemetry: Defaulted(TelemetryConfig)
    rulesStore: RulesStoreConfig | None = None
    workers: Workers = 1
    busyPoll: Duration(positive=False, maximum="1ms") = "0s"
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

    @classmethod
    def _prepare(cls, data: dict, kind: str | None, context: Any) -> list[Problem]:
        if context and "source" in context:
            data["source"] = context["source"]
        return []

    @classmethod
    def _crossCheck(cls, view: View) -> Iterable[Problem]:
        admin = view.values("admin")
        routers = view.items("routers", RouterConfig)
        yield from _checkListeners(None if admin is None else admin[0].listen, routers)
        namers = view.values("namers") if view.ok("namers") else None
        if namers is not None:
            prefixes = [namer.prefix for namer in namers[0]]
            lengths = {
                namer.prefix: namer.nameLengths
                for namer in namers[0]
                if isinstance(namer, DnsNamerConfig)
            }
            yield from _checkDestinations(prefixes, routers)
            yield from _checkBoundNames(prefixes, routers, lengths)


def _checkListeners(
    adminListen: str | None, routers: list[tuple[int, RouterConfig]]
) -> Iterable[Problem]:
    """
    Report routers listening where another router or the admin API does.

    @param adminListen: the admin listener, or L{None} if it was invalid.
    """
    users: dict[str, tuple] = {} if adminListen is None else {adminListen: ("admin", "listen")}
    for i, router in routers:
        where = ("routers", i, "listen")
        if _anyPort(router.listen):
            # Port 0: the kernel picks a free port for each listener.
            continue
        if router.listen in users:
            yield Problem(
                where, f"{show(router.listen)} is already used by {{ref}}",
                (len(where), users[router.listen]),
            )
        users.setdefault(router.listen, where)


def _anyPort(listen: str) -> bool:
    """
    Whether a listen string asks for any free port (C{tcp:0…}).
    """
    kind, _, rest = listen.partition(":")
    if kind not in ("tcp", "tcp6", "ssl", "tls"):
        return False
    port = rest.split(":", 1)[0]
    return port == "0" or port == "port=0"


def _unowned(where: tuple, name: str, prefixes: list[str]) -> Problem:
    if name in prefixes:
        return Problem(where, f"names no service under namer {show(name)}")
    known = ", ".join(show(p) for p in prefixes) or "none"
    return Problem(where, f"no namer owns {show(name)} (namer prefixes: {known})")


def _checkDestinations(
    prefixes: list[str], routers: list[tuple[int, RouterConfig]]
) -> Iterable[Problem]:
    """
    Report TCP routers whose routing leads nowhere: rules naming an unknown
    namer, or a destination that no namer binds (directly, without rules;
    through the rules, with them).
    """
    from meshproxy.routing.dtab import Dtab, DtabSyntaxError
    from meshproxy.routing.path import Path
    from meshproxy.routing.table import RulesError, checkRules

    paths = [Path.read(prefix) for prefix in prefixes]
    for i, router in routers:
        if router.protocol != "tcp":
            continue
        if router.rules:
            try:
                checkRules(router.rules, paths)
            except RulesError as e:
                where = "" if e.line is None else f"line {e.line}, column {e.column}: "
                yield Problem(("routers", i, "rules"), where + e.message)
                continue
            except DtabSyntaxError:
                continue
        destination = router.destination
        if destination is None or destination.startswith("/$/"):
            if destination is not None and not router.rules:
                try:
                    checks.boundName(destination)
                except Invalid as e:
                    yield Problem(("routers", i, "destination"), str(e))
            continue
        if not router.rules:
            if not destination.startswith("/#/"):
                yield Problem(
                    ("routers", i, "destination"),
                    f'expected a bound name like "/#/fs/users" or "/$/inet/<host>/<port>",'
                    f" got {show(destination)} (or give rules that rewrite it)",
                )
            elif not any(destination.startswith(prefix + "/") for prefix in prefixes):
                yield _unowned(("routers", i, "destination"), destination, prefixes)
            continue
        problem = _delegationProblem(Dtab.read(router.rules), Path.read(destination), paths)
        if problem is not None:
            yield Problem(("routers", i, "destination"), problem)


def _delegationProblem(dtab: Any, path: Any, prefixes: list[Any]) -> str | None:
    """
    Why C{path} reaches no namer's name under C{dtab}, or L{None}.
    """
    from meshproxy.routing.delegate import DelegationError, delegate, showBound
    from meshproxy.routing.nametree import leaves

    try:
        tree = delegate(dtab, path, prefixes)
    except DelegationError as e:
        return f"the rules cannot route {show(str(path))}: {e}"
    if not list(leaves(tree)):
        return f"the rules route {show(str(path))} nowhere ({showBound(tree)})"
    return None


def _checkBoundNames(
    prefixes: list[str],
    routers: list[tuple[int, RouterConfig]],
    lengths: Mapping[str, Mapping[str, int]] | None = None,
) -> Iterable[Problem]:
    """
    Report bound names in C{boundNames} that delegation can never produce,
    so that their settings would silently apply to nothing: names no namer
    owns, and paths below a bound name. As in
    L{meshproxy.routing.delegate}, the longest matching namer prefix owns a
    name, and the bound name is that prefix and one more segment, or as
    many as C{lengths[prefix]} gives for the first one (DNS names).
    """
    lengths = lengths or {}
    bySegments = sorted(
        ((prefix.split("/")[1:], prefix) for prefix in prefixes),
        key=lambda item: len(item[0]),
        reverse=True,
    )
    for i, router in routers:
        for name, _ in router.boundNames:
            if name.startswith("/$/"):
                continue
            where = ("routers", i, "boundNames", name)
            segments = name.split("/")[1:]
            for prefixSegments, prefix in bySegments:
                n = len(prefixSegments)
                if len(segments) > n and segments[:n] == prefixSegments:
                    length = lengths.get(prefix, {}).get(segments[n], 1)
                    if len(segments) > n + length:
                        bound = "/" + "/".join(segments[: n + length])
                        yield Problem(
                            where,
                            f"names a path below the bound name {show(bound)}"
                            f" (namer {show(prefix)} and one service name)",
                        )
                    break
            else:
                yield _unowned(where, name, prefixes)


def jsonSchema() -> dict[str, Any]:
    """
    The JSON Schema of a configuration file, for editors and other tools.

    It is written for draft-07, which YAML editors support (the YAML
    language server of VS Code and others does not support later drafts):
    the classes' schemas are under C{definitions}, each with
    C{additionalProperties: false}, the descriptions of its docstring, its
    defaults and a rule per kind.
    """
    return jsonSchemaOf(MeshConfig, "meshproxy configuration")
