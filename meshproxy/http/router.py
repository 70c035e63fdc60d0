"""
The HTTP router: from a parsed request to the client of one bound name.

A router owns its rules (an immutable L{Dtab} swapped whole), a cache of
delegation results for the current rules, and one L{BoundClient} per bound
name it has used: the live endpoint set from the namer, a balancer over it,
and a connection pool per endpoint.
"""

import ipaddress
import random as _random
import time

from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from meshproxy.balancing.bound import BoundEndpoints
from meshproxy.discovery.endpoints import inetObservable
from meshproxy.http.client import Pool
from meshproxy.transport.connector import TCPConnector
from meshproxy.http.message import HOP_BY_HOP, ProxyError, findHeader
from meshproxy.routing.delegate import DelegationError, delegate, explain, showBound
from meshproxy.routing.dtab import Dtab
from meshproxy.routing.identifiers import IdentificationError
from meshproxy.routing.nametree import Leaf, evaluate, leaves
from meshproxy.routing.path import Path
from meshproxy.resilience.accrual import accrualFromConfig
from meshproxy.resilience.backoff import Backoff
from meshproxy.resilience.budget import RetryBudget
from meshproxy.resilience.classifiers import Classifier
from meshproxy.resilience.deadline import parseDeadline
from meshproxy.resilience.limits import Limiter

_log = Logger()

_INET = Path.read("/$/inet")

#: Bound on the per-router cache of delegation results.
MAX_CACHED_NAMES = 10000

#: Bound on the bound names a router keeps clients for. Names come from
#: requests, so unknown ones (negative, without endpoints) are dropped first
#: when the bound is reached.
MAX_BOUND_NAMES = 1000


class RulesError(ValueError):
    """
    Rules that parse but cannot be used by this router (for example a
    namer prefix no namer owns).

    @ivar line: the 1-based line of the problem, or L{None}.
    @ivar column: the 1-based column, or L{None}.
    """

    def __init__(self, message, line=None, column=None):
        ValueError.__init__(self, message)
        self.message = message
        self.line = line
        self.column = column

    def __str__(self):
        if self.line is None:
            return self.message
        return "%s at line %d, column %d" % (self.message, self.line, self.column)


class InetNotAllowed(RulesError):
    """
    Rules that lead to a C{/$/} name (an address) where only names owned
    by the configured namers are allowed.
    """


class _FakeRequest:
    """
    Just enough of a request for an identifier (used by explain).
    """

    def __init__(self, target, host):
        self.method = b"GET"
        self.target = target
        self.host = host

    def header(self, name):
        if name == b"host":
            return self.host
        return None


class BoundClient(BoundEndpoints):
    """
    Everything the HTTP router keeps for one bound name: its endpoints (see
    L{BoundEndpoints}), each with a connection pool, and its own
    classifier, limiter and statistics.

    @ivar stats: the name's L{RouteStats<meshproxy.telemetry.metrics.RouteStats>}.
    """

    def __init__(self, router, boundName, observable):
        self.router = router
        # Created on the first request answered while the namer knows the
        # name: unknown names (from arbitrary Host headers) make no series.
        self.stats = None
        self.classifier, self.limiter = router.policyFor(str(boundName.id))
        BoundEndpoints.__init__(self, router, boundName, observable)

    def newPayload(self, node):
        router = self.router
        return Pool(
            node.endpoint,
            clock=router.reactor,
            connector=router.connector,
            maxIdle=router.clientSettings.maxIdlePerEndpoint,
            idleTimeout=router.clientSettings.idleTimeout,
            limits=router.clientSettings,
        )

    def closePayload(self, pool):
        pool.close()

    def connectionCounts(self, pool):
        if pool is None:
            return {"open": 0, "idle": 0}
        return {"open": len(pool.all), "idle": len(pool.idle)}

    def isEmpty(self):
        """
        Whether no endpoint can take a request (for C{|} fall-through).
        """
        return not self.balancer.hasEligible()

    def state(self):
        """
        A JSON-ready view for C{GET /admin/state}.
        """
        limiter = self.limiter
        state = BoundEndpoints.state(self)
        state["limits"] = (
            None
            if limiter is None
            else {"active": limiter.active, "pending": limiter.pending, "rejected": limiter.rejected}
        )
        state["requests"] = self.stats.requests if self.stats is not None else 0
        return state


class HttpRouter:
    """
    One HTTP router of the config: rules, bound names, balancers, pools.

    @ivar name: the router's name.
    @ivar dtab: the current rules, an immutable L{Dtab}.
    """

    def __init__(
        self,
        config,
        namers,
        *,
        reactor,
        metrics,
        balancerFactory,
        random=None,
        rulesAllowInet=True,
    ):
        """
        @param config: the router's L{RouterConfig<meshproxy.config.RouterConfig>}.
        @param namers: the namers by prefix (L{Path} → L{INamer}).
        @param reactor: provides L{IReactorTCP} and L{IReactorTime}.
        @param metrics: the process's L{MeshMetrics}.
        @param balancerFactory: makes a balancer, given C{onAdd} and
            C{onRemove} keyword arguments.
        @param random: a callable returning floats in [0, 1), for weighted
            routes.
        @param rulesAllowInet: whether rules replaced at run time (through
            L{validateRules}) may lead to C{/$/inet} addresses
            (C{admin.rulesAllowInet}).
        """
        self.config = config
        self.name = config.name
        self.reactor = reactor
        self.clock = reactor
        self.metrics = metrics
        self.makeBalancer = balancerFactory
        self.random = random or _random.random
        self.namers = dict(namers)
        # /$/inet/<host>/<port> is bound by delegation itself.
        self._prefixes = tuple(self.namers)
        self.serverSettings = config.server
        self.clientSettings = config.client
        self.totalTimeout = config.timeouts.total
        self.connectTimeout = config.timeouts.connect
        self.connector = TCPConnector(reactor, self.connectTimeout)
        self.forwarded = config.forwarded
        self.identifier = _makeIdentifier(config.identifier)
        self.dtab = checkRules(config.rules, self._prefixes)
        self.rulesText = config.rules
        self._trees = {}
        self._recent = {}
        self._clients = {}
        self._errors = {}
        self.connStats = metrics.connections(self.name)
        self._expiry = None
        # Resilience: retries, timeouts, classification, accrual, limits.
        retries = config.retries
        budget = retries.budget
        self.budget = RetryBudget(budget.percent, budget.minPerSecond, budget.ttl, clock=reactor)
        # Connection failures never reached the application: their own
        # budget, so that they do not eat the budget of status retries.
        self.connectBudget = RetryBudget(
            budget.percent, budget.minPerSecond, budget.ttl, clock=reactor
        )
        self._rng = _random.Random()
        self.backoff = Backoff(retries.backoffMin, retries.backoffMax, random=self._rng)
        self.maxRetries = retries.maxRetries
        self.bufferBytes = retries.bufferBytes
        self.perTryTimeout = config.timeouts.perTry
        self._classifier = _makeClassifier(config.classifier)
        self._limits = config.limits
        self._perName = dict(config.boundNames)
        trust = config.trust
        self._trusted = tuple(ipaddress.ip_network(c, strict=False) for c in trust.callers)
        self.trustDeadline = trust.deadline
        self._dtabPrefixes = tuple(Path.read(p) for p in trust.dtabPrefixes)
        self._overrideInet = trust.allowInet
        self._rulesInet = rulesAllowInet
        self._overrides = {}

    # -- lifecycle --------------------------------------------------------

    def start(self):
        """
        Start the periodic expiry of idle upstream connections.
        """
        interval = max(1.0, min(30.0, self.clientSettings.idleTimeout / 2.0))
        self._expiry = LoopingCall(self._expireIdle)
        self._expiry.clock = self.reactor
        self._expiry.start(interval, now=False)

    def stop(self):
        """
        Stop timers and close upstream connections.
        """
        if self._expiry is not None and self._expiry.running:
            self._expiry.stop()
        for client in self._clients.values():
            client.close()
        self._clients.clear()

    def _expireIdle(self):
        now = self.reactor.seconds()
        for client in self._clients.values():
            for node in client.balancer.nodes():
                if node.payload is not None:
                    node.payload.expire(now)

    # -- rules --------------------------------------------------------------

    def setDtab(self, dtab):
        """
        Replace the rules whole; requests already routed keep their
        destination, new ones see only the new table.
        """
        self.setRules(dtab, dtab.show())

    def setRules(self, dtab, text):
        """
        Replace the rules whole, remembering the text they came from.

        The swap is one assignment of an immutable value (and of a fresh
        cache): a request routes with either the old table or the new one.

        @param dtab: the parsed rules (see L{validateRules}).
        @param text: the rules as written.
        """
        recent = dict(self._recent)
        recent.update(dict.fromkeys(self._trees))
        while len(recent) > 200:
            del recent[next(iter(recent))]
        self._recent = recent
        self.dtab = dtab
        self.rulesText = text
        self._trees = {}

    def validateRules(self, text):
        """
        Parse rules and check that this router can use them.

        @param text: dtab text.
        @return: the parsed L{Dtab}.
        @raise DtabSyntaxError: on a syntax error (with line and column).
        @raise RulesError: when a rule names a C{/#/} prefix no namer owns,
            or leads to an address while C{rulesAllowInet} is false.
        """
        return checkRules(text, self._prefixes, allowInet=self._rulesInet)

    def recentNames(self):
        """
        The logical names routed under the current rules and just before
        the last change (at most L{MAX_CACHED_NAMES} plus 200), those first
        routed most recently first. Every one is listed, so a dry run sees
        all the traffic the cache has seen, not a sample.
        """
        names = list(dict.fromkeys(list(self._recent) + list(self._trees)))
        names.reverse()
        return [str(p) for p in names]

    def describe(self, dtab, name):
        """
        Where a logical name goes under C{dtab}, as text.

        @param dtab: rules (not necessarily this router's current ones).
        @param name: a logical name such as C{"/svc/users"}.
        @return: e.g. C{"/#/fs/users"}, C{"~"} (nowhere), or C{"error: ..."}.
        """
        try:
            return showBound(delegate(dtab, Path.read(name), self._prefixes))
        except (DelegationError, ValueError) as e:
            return "error: %s" % (e,)

    def explain(self, *, name=None, host=None, path=None):
        """
        How a request would be routed, step by step, with the endpoints it
        ends at and their scores.

        @param name: a logical name (C{/svc/x}); or
        @param host: a Host header to run the identifier on; or
        @param path: a request path to run the identifier on.
        @return: a JSON-ready dict.
        @raise ValueError: on missing or bad input.
        """
        given = [x for x in (name, host, path) if x is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of name, host or path")
        if name is not None:
            try:
                logical = Path.read(name)
            except ValueError as e:
                raise ValueError("bad name %r: %s" % (name, e))
        else:
            target = (path if path is not None else "/").encode("utf-8", "replace")
            hostHeader = host.encode("utf-8", "replace") if host is not None else None
            try:
                logical = self.identifier.identify(_FakeRequest(target, hostHeader))
            except IdentificationError as e:
                raise ValueError("cannot identify: %s" % (e,))
        steps = explain(self.dtab, logical, self._prefixes)
        result = {
            "router": self.name,
            "name": str(logical),
            "rules": self.rulesText,
            "delegation": steps,
        }
        try:
            tree = delegate(self.dtab, logical, self._prefixes)
        except DelegationError as e:
            result["error"] = str(e)
            result["destination"] = None
            result["boundNames"] = []
            return result
        result["destination"] = showBound(tree)
        bound = []
        now = self.reactor.seconds()
        seen = set()
        for leaf in leaves(tree):
            if leaf.id in seen:
                continue
            seen.add(leaf.id)
            client = self._clients.get(leaf.id)
            if client is None:
                client = self._bind(leaf)
            entry = client.state()
            entry["name"] = client.name
            load = client.balancer.load
            for node, ep in zip(client.balancer.nodes(), entry["endpoints"]):
                ep["score"] = round(load(node, now), 3)
            bound.append(entry)
        result["boundNames"] = bound
        result["endpoints"] = {entry["name"]: entry["endpoints"] for entry in bound}
        return result

    def drain(self, boundName, address):
        """
        Stop new requests to one endpoint; those in flight finish.

        @raise KeyError: for an unknown bound name or address.
        """
        self._bound(boundName).drain(address)

    def undrain(self, boundName, address):
        """
        Give a drained endpoint traffic again (see L{BoundEndpoints.undrain}).

        @raise KeyError: for an unknown bound name or address.
        """
        self._bound(boundName).undrain(address)

    def _bound(self, boundName):
        try:
            key = Path.read(boundName)
        except ValueError:
            raise KeyError("bad bound name %r" % (boundName,))
        client = self._clients.get(key)
        if client is None:
            raise KeyError("no bound name %s in router %s" % (boundName, self.name))
        return client

    # -- routing ------------------------------------------------------------

    def route(self, request, exchange=None):
        """
        Choose the bound name for C{request}.

        @param exchange: the exchange, which learns the effective per-request
            rules override (if any) to pass on to the next hop.
        @return: the L{BoundClient} to send it to.
        @raise ProxyError: when no destination can be found.
        """
        try:
            path = self.identifier.identify(request)
        except IdentificationError as e:
            raise ProxyError(400, "no-identity", "Cannot identify the request: %s." % (e,))
        if request.meshHeaders:
            override = self._override(request, exchange)
            if override is not None:
                try:
                    tree = delegate(self.dtab + override, path, self._prefixes)
                except DelegationError as e:
                    raise ProxyError(502, "delegation-failed", str(e))
                return self._choose(tree, path)
        tree = self._trees.get(path)
        if tree is None:
            try:
                tree = delegate(self.dtab, path, self._prefixes)
            except DelegationError as e:
                raise ProxyError(502, "delegation-failed", str(e))
            if len(self._trees) >= MAX_CACHED_NAMES:
                self._trees.clear()
            self._trees[path] = tree
        return self._choose(tree, path)

    def _choose(self, tree, path):
        if type(tree) is Leaf:
            bound = tree.value
        else:
            try:
                bound = evaluate(tree, self._isEmpty, self.random)
            except Exception as e:
                raise ProxyError(503, "route-failed", "Route for %s failed: %s" % (path, e))
        if bound is None:
            raise ProxyError(503, "no-route", "No route for %s." % (path,))
        client = self._clients.get(bound.id)
        if client is None:
            client = self._bind(bound)
        if client.addr.kind == "neg":
            raise ProxyError(
                503, "no-route", "No route for %s: %s is unknown to its namer." % (path, client.name)
            )
        return client

    def _override(self, request, exchange):
        """
        The per-request rules (C{mesh-ctx-dtab} then C{mesh-dtab}) of a
        trusted caller, or L{None}. Overrides from callers the router does
        not trust are ignored (and stripped before forwarding).

        @raise ProxyError: a trusted caller sent rules that do not parse or
            touch prefixes the router does not allow.
        """
        context = []
        own = []
        for n, v in request.headers:
            n = n.lower()
            if n == b"mesh-ctx-dtab":
                context.append(v.decode("latin-1"))
            elif n == b"mesh-dtab":
                own.append(v.decode("latin-1"))
        # The context from earlier hops first: the caller's own rules win.
        texts = context + own
        if not texts:
            return None
        if exchange is None or not exchange.server.trusted:
            self.countError("dtab-override-untrusted")
            return None
        text = ";".join(t for t in texts if t.strip())
        dtab = self._overrides.get(text)
        if dtab is None:
            try:
                dtab = checkRules(text, self._prefixes, allowInet=self._overrideInet)
            except InetNotAllowed as e:
                # Else a trusted caller could reach any address the host
                # can (server-side request forgery).
                self.countError("dtab-override-inet")
                raise ProxyError(400, "bad-dtab", "Bad mesh-dtab override: %s." % (e,))
            except ValueError as e:
                raise ProxyError(400, "bad-dtab", "Bad mesh-dtab override: %s." % (e,))
            if self._dtabPrefixes:
                for dentry in dtab.dentries:
                    if not any(dentry.prefix.startswith(p) for p in self._dtabPrefixes):
                        self.countError("dtab-override-prefix")
                        raise ProxyError(
                            400,
                            "bad-dtab",
                            "Override of %s is not allowed (allowed: %s)."
                            % (dentry.prefix, ", ".join(str(p) for p in self._dtabPrefixes)),
                        )
            if len(self._overrides) > 1000:
                self._overrides.clear()
            self._overrides[text] = dtab
        exchange.override = dtab.show().encode("latin-1")
        return dtab

    def isTrusted(self, host):
        """
        Whether a caller at C{host} may send rules overrides and deadlines.
        """
        if not self._trusted or host is None:
            return False
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(address in network for network in self._trusted)

    def incomingDeadline(self, request):
        """
        Seconds left before the caller's C{mesh-ctx-deadline}, or L{None}.
        """
        if not request.meshHeaders:
            return None
        value = request.header(b"mesh-ctx-deadline")
        if value is None:
            return None
        deadline = parseDeadline(value)
        if deadline is None:
            return None
        return deadline - time.time()

    def policyFor(self, name):
        """
        The classifier and limiter of one bound name (its own settings
        under C{boundNames}, else the router's).
        """
        classifier = self._classifier
        limits = self._limits
        own = self._perName.get(name)
        if own is not None:
            if own.classifier is not None:
                classifier = _makeClassifier(own.classifier)
            if own.limits is not None:
                limits = own.limits
        limiter = None
        if limits.maxConcurrent is not None or limits.maxPending is not None:
            limiter = Limiter(limits.maxConcurrent, limits.maxPending)
        return classifier, limiter

    def makeAccrual(self, balancer):
        """
        The failure accrual for one bound name's balancer, or L{None}.
        """
        name = self.name
        metrics = self.metrics
        return accrualFromConfig(
            self.config.failureAccrual,
            balancer,
            clock=self.reactor,
            random=self._rng,
            onEvent=lambda kind, node: metrics.event(name, kind),
        )

    def countRetry(self, reason):
        """
        Count a retry (or a retry the budget refused).
        """
        self.metrics.retry(self.name, reason)

    def _isEmpty(self, bound):
        client = self._clients.get(bound.id)
        if client is None:
            client = self._bind(bound)
        return client.isEmpty()

    def _bind(self, bound):
        if bound.prefix == _INET:
            observable = inetObservable(bound.service)
        else:
            observable = self.namers[bound.prefix].bind(bound.service)
        if len(self._clients) >= MAX_BOUND_NAMES:
            self._evictUnknown()
        client = BoundClient(self, bound, observable)
        self._clients[bound.id] = client
        return client

    def _evictUnknown(self):
        """
        Drop the clients of names their namer does not know, which have no
        endpoints and so nothing in flight.
        """
        for key, client in list(self._clients.items()):
            if client.addr.kind in ("neg", "pending", "failed") and not client.balancer.nodes():
                client.close()
                del self._clients[key]
        if self._trees:
            self._trees = {}

    # -- the request sent upstream ------------------------------------------

    def requestHead(self, request, exchange):
        """
        The request line and header block sent upstream for C{request}.

        Hop-by-hop headers (and those the client named in C{Connection}) are
        dropped; the C{X-Forwarded-*}, C{Forwarded} and C{Via} headers are
        added to or appended to; framing is written by meshproxy.
        """
        server = exchange.server
        # The server side made an absolute-form target origin-form.
        lines = [b"%s %s HTTP/1.1\r\n" % (request.method, request.target)]
        append = lines.append
        tokens = request.connectionTokens
        mesh = request.meshHeaders
        forwarded = self.forwarded
        peer = server.forwardedFor
        seenXff = seenFwd = seenVia = seenProto = False
        for name, value in request.headers:
            n = name.lower()
            if n in HOP_BY_HOP or (tokens and n in tokens):
                continue
            if mesh and n in _MESH_CONTEXT:
                # Replaced below by this hop's own context.
                continue
            if forwarded:
                if n == b"x-forwarded-for":
                    value = value + b", " + peer
                    seenXff = True
                elif n == b"forwarded":
                    value = value + b", " + _forwardedElement(peer, server.scheme)
                    seenFwd = True
                elif n == b"x-forwarded-proto":
                    seenProto = True
            if n == b"via":
                value = value + b", 1.1 meshproxy"
                seenVia = True
            elif n == b"expect":
                # meshproxy answers 100-continue itself.
                continue
            append(b"%s: %s\r\n" % (name, value))
        if forwarded:
            if not seenXff:
                append(b"X-Forwarded-For: %s\r\n" % (peer,))
            if not seenProto:
                append(b"X-Forwarded-Proto: %s\r\n" % (server.scheme,))
            if not seenFwd:
                append(b"Forwarded: %s\r\n" % (_forwardedElement(peer, server.scheme),))
        if not seenVia:
            append(b"Via: 1.1 meshproxy\r\n")
        append(b"mesh-ctx-deadline: %s\r\n" % (exchange.deadlineHeader(),))
        if exchange.override is not None:
            append(b"mesh-ctx-dtab: %s\r\n" % (exchange.override,))
        if request.upgrade:
            append(b"Connection: Upgrade\r\n")
            upgrade = findHeader(request.headers, b"upgrade")
            if upgrade is not None:
                append(b"Upgrade: %s\r\n" % (upgrade,))
        if request.chunked:
            append(b"Transfer-Encoding: chunked\r\n")
        elif request.contentLength is not None:
            append(b"Content-Length: %d\r\n" % (request.contentLength,))
        append(b"\r\n")
        return b"".join(lines)

    # -- accounting -----------------------------------------------------------

    def record(self, client, status, seconds):
        """
        Count one finished request of C{client}.
        """
        stats = client.stats
        if stats is None:
            if client.addr.kind != "bound":
                return
            stats = client.stats = self.metrics.route(self.name, client.name)
        stats.record(status, seconds)

    def countError(self, reason):
        """
        Count an error answered (or a connection refused) by meshproxy.
        """
        self.metrics.error(self.name, reason)

    def nodes(self):
        """
        Every (bound name, node) pair, for metrics at scrape time.
        """
        for client in list(self._clients.values()):
            for node in client.balancer.nodes():
                yield client.name, node

    def state(self):
        """
        A JSON-ready view of the router for C{GET /admin/state}.
        """
        return {
            "protocol": "http",
            "listen": self.config.listen,
            "rules": self.dtab.show(),
            "connections": {
                "opened": self.connStats.opened,
                "closed": self.connStats.closed,
            },
            "boundNames": {
                name: client.state()
                for name, client in sorted(
                    ((c.name, c) for c in self._clients.values())
                )
            },
        }


def checkRules(text, prefixes, allowInet=True):
    """
    Parse rules and check that every C{/#/} name they lead to belongs to
    one of C{prefixes}.

    @param text: dtab text.
    @param prefixes: the namer prefixes (L{Path}s) the rules may use.
    @param allowInet: whether the rules may lead to C{/$/} names
        (C{/$/inet/host/port}: any address). Rules from the config and, by
        default, the admin API may; overrides sent by callers may not,
        unless C{trust.allowInet} says so.
    @return: the parsed L{Dtab}.
    @raise DtabSyntaxError: on a syntax error.
    @raise RulesError: on an unknown namer prefix.
    @raise InetNotAllowed: on a C{/$/} name when C{allowInet} is false.
    """
    dtab = Dtab.read(text)
    known = tuple(prefixes)
    for dentry in dtab.dentries:
        for path in leaves(dentry.dst):
            if not allowInet and len(path) >= 1 and path.segments[0] == "$":
                line, column = _locate(text, str(path))
                raise InetNotAllowed(
                    "%s leads to an address, not to a namer's name (allowed: %s)"
                    % (path, ", ".join(sorted(str(p) for p in known)) or "none"),
                    line,
                    column,
                )
            if len(path) >= 2 and path.segments[0] == "#":
                if not any(path.startswith(p) for p in known):
                    line, column = _locate(text, str(path))
                    raise RulesError(
                        "unknown namer prefix %s (namers: %s)"
                        % (
                            str(path.take(2)),
                            ", ".join(sorted(str(p) for p in known if str(p).startswith("/#")))
                            or "none",
                        ),
                        line,
                        column,
                    )
    return dtab


def _locate(text, needle):
    """
    The 1-based line and column of C{needle} in C{text}, or (None, None).
    """
    index = text.find(needle)
    if index < 0:
        return None, None
    line = text.count("\n", 0, index) + 1
    column = index - (text.rfind("\n", 0, index) + 1) + 1
    return line, column


#: Context headers a hop replaces with its own (never forwarded as received).
_MESH_CONTEXT = frozenset([b"mesh-ctx-deadline", b"mesh-ctx-dtab", b"mesh-dtab"])


def _makeClassifier(config):
    return Classifier(
        config.kind,
        retryableStatusCodes=config.retryableStatusCodes,
        idempotencyKey=config.idempotencyKey,
    )


def _forwardedElement(peer, scheme):
    if b":" in peer:
        peer = b'"[' + peer + b']"'
    return b"for=%s;proto=%s" % (peer, scheme)


def _makeIdentifier(config):
    from meshproxy.routing import identifiers

    prefix = Path.read(config.prefix)
    if config.kind == "host":
        return identifiers.HostIdentifier(prefix)
    if config.kind == "path":
        return identifiers.PathIdentifier(prefix, config.segments)
    return identifiers.HeaderIdentifier(prefix, config.name.encode("ascii"))
