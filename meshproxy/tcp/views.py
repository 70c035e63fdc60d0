"""
What the admin API shows of a TCP router: its state, and how it would
route a connection (explain), in the shapes the HTTP router's views have
(docs/admin.md).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from meshproxy.balancing.bound import explainBoundNames
from meshproxy.policy import checkCaller
from meshproxy.routing.delegate import DelegationError, delegate, showBound
from meshproxy.routing.nametree import leaves
from meshproxy.routing.path import Path
from meshproxy.transport.clienthello import ClientHelloError, checkServerName

if TYPE_CHECKING:
    from meshproxy.tcp.router import TcpRouter

__all__ = ["explainRoute", "routerState"]


def routerState(router: TcpRouter) -> dict[str, Any]:
    """
    A JSON-ready view of the router for C{GET /admin/state}.
    """
    config = router.config
    identifier = None
    if router.bySNI:
        identifier = {
            "kind": "sni",
            "prefix": config.identifier.prefix,
            "default": config.identifier.default,
        }
    return {
        "protocol": "tcp",
        "listen": config.listen,
        "destination": router.destination,
        "identifier": identifier,
        "rules": router.rules.dtab.show(),
        "connections": {
            "opened": router.connStats.opened,
            "closed": router.connStats.closed,
        },
        "boundNames": {d.name: d.state() for d in router.destinations()},
    }


def explainRoute(
    router: TcpRouter,
    *,
    name: str | None = None,
    host: str | None = None,
    path: str | None = None,
    caller: str | None = None,
    peer: str | None = None,
    method: str = "CONNECT",
) -> dict[str, Any]:
    """
    How a connection would be routed, step by step, with the endpoints it
    ends at and their scores, and what the access policy says of it: the
    shape of an HTTP router's explain.

    @param name: a logical name (C{/svc/x}); or
    @param host: the server name a client sends (routing by SNI), or
        nothing in particular for a router with a fixed destination.
    @param path: refused: a connection has no request path.
    @param caller: the caller's verified identity, or L{None}.
    @param peer: the caller's IP address, or L{None}.
    @param method: C{CONNECT}, what a TCP connection is to the policy.
    @raise ValueError: on missing or bad input.
    """
    if path is not None:
        raise ValueError("a tcp router routes connections, not paths: give name= or host=")
    if (name is None) == (host is None):
        raise ValueError("give exactly one of name or host")
    if method != "CONNECT":
        raise ValueError("a tcp connection is a CONNECT to the policy, got method %r" % (method,))
    checkCaller(caller, peer)
    if name is not None:
        try:
            logical = Path.read(name)
        except ValueError as e:
            raise ValueError("bad name %r: %s" % (name, e)) from None
    else:
        logical = router.identify(_serverName(router, host))
    table = router.rules
    result: dict[str, Any] = {
        "router": router.name,
        "name": str(logical),
        "rules": table.rulesText,
        "delegation": table.explainSteps(logical),
    }
    try:
        tree = delegate(table.dtab, logical, table.prefixes)
    except DelegationError as e:
        result.update(error=str(e), destination=None, boundNames=[], endpoints={})
        result["policy"] = _decide(router, logical, [], caller, peer)
        return result
    result["destination"] = showBound(tree)
    bound, reached = explainBoundNames(
        leaves(tree), router.destinationFor, router.reactor.seconds()
    )
    result["boundNames"] = bound
    result["endpoints"] = {entry["name"]: entry["endpoints"] for entry in bound}
    result["policy"] = _decide(router, logical, reached, caller, peer)
    return result


def _serverName(router: TcpRouter, host: str | None) -> str | None:
    """
    A server name as the ClientHello reader would pass it on.

    @raise ValueError: when no client could send it, or the router has no
        route for it.
    """
    if not router.bySNI:
        raise ValueError(
            "router %s routes every connection to %s: give name=" % (router.name,
                                                                      router.destination)
        )
    from meshproxy.tcp.router import RouteRefused

    try:
        name = checkServerName((host or "").encode("utf-8", "replace"))
    except ClientHelloError:
        raise ValueError("host must be a server name a client can send, got %r" % (host,)) from None
    try:
        router.identify(name)
    except RouteRefused as e:
        raise ValueError(e.detail) from None
    return name


def _decide(
    router: TcpRouter,
    logical: Path,
    bound: list[Path],
    caller: str | None,
    peer: str | None,
) -> dict[str, Any] | None:
    """
    What the router's policy says of a connection from C{caller} to
    C{logical}, as the splice asks it (see the HTTP router's explain: the
    first denial when the bound names are not all decided alike).
    """
    policy = router.policy
    if policy is None:
        return None
    if not bound:
        decision = policy.decide(caller, peer, (logical.segments,), "CONNECT")
        return {"allowed": decision.allowed, "rule": decision.rule, "reason": decision.reason}
    decisions = [
        (name, policy.decide(caller, peer, (logical.segments, name.segments), "CONNECT"))
        for name in bound
    ]
    chosen, decision = next(((n, d) for n, d in decisions if not d.allowed), decisions[0])
    reason = decision.reason
    if len({d.allowed for _, d in decisions}) > 1:
        reason += " (when it goes to %s; the destination's other bound names allow it)" % (chosen,)
    return {"allowed": decision.allowed, "rule": decision.rule, "reason": reason}

