"""
What the admin API shows of an HTTP router: its state, and how it would
route a name (explain).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from meshproxy.balancing.bound import explainBoundNames
from meshproxy.http.message import Request
from meshproxy.policy import Decision, checkCaller
from meshproxy.routing.delegate import DelegationError, delegate, showBound
from meshproxy.routing.identifiers import IdentificationError
from meshproxy.routing.nametree import leaves
from meshproxy.routing.path import Path

if TYPE_CHECKING:
    from meshproxy.http.router import HttpRouter

__all__ = ["explainRoute", "routerState"]

# An HTTP method is a token (RFC 9110, section 9.1).
_METHOD = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")


def routerState(router: HttpRouter) -> dict[str, Any]:
    """
    A JSON-ready view of the router for C{GET /admin/state}.
    """
    return {
        "protocol": "http",
        "listen": router.config.listen,
        "rules": router.rules.dtab.show(),
        "connections": {
            "opened": router.connStats.opened,
            "closed": router.connStats.closed,
        },
        "boundNames": {
            client.name: client.state()
            for client in sorted(router.clients, key=lambda c: c.name)
        },
    }


def explainRoute(
    router: HttpRouter,
    *,
    name: str | None = None,
    host: str | None = None,
    path: str | None = None,
    caller: str | None = None,
    peer: str | None = None,
    method: str = "GET",
) -> dict[str, Any]:
    """
    How a request would be routed, step by step, with the endpoints it ends
    at and their scores, and what the access policy says of it (the
    documented shape is in docs/admin.md).

    @param name: a logical name (C{/svc/x}); or
    @param host: a Host header to run the identifier on; or
    @param path: a request path to run the identifier on.
    @param caller: the caller's verified identity
        (C{spiffe://mesh.local/web}), or L{None} for an unauthenticated one.
    @param peer: the caller's IP address, or L{None} for none known.
    @param method: the request's method, as sent.
    @return: a JSON-ready dict.
    @raise ValueError: on missing or bad input.
    """
    given = [x for x in (name, host, path) if x is not None]
    if len(given) != 1:
        raise ValueError("give exactly one of name, host or path")
    _checkCaller(caller, peer, method)
    if name is not None:
        try:
            logical = Path.read(name)
        except ValueError as e:
            raise ValueError("bad name %r: %s" % (name, e)) from None
    else:
        logical = _identify(router, host, path)
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
        result["error"] = str(e)
        result["destination"] = None
        result["boundNames"] = []
        result["endpoints"] = {}
        result["policy"] = _decide(router, logical, [], caller, peer, method)
        return result
    result["destination"] = showBound(tree)
    bound, reached = explainBoundNames(leaves(tree), router.clients.get, router.clock.seconds())
    result["boundNames"] = bound
    result["endpoints"] = {entry["name"]: entry["endpoints"] for entry in bound}
    result["policy"] = _decide(router, logical, reached, caller, peer, method)
    return result


def _checkCaller(caller: str | None, peer: str | None, method: str) -> None:
    """
    Refuse a caller, peer or method no request could have.

    @raise ValueError: saying which.
    """
    checkCaller(caller, peer)
    if not _METHOD.match(method):
        raise ValueError("method must be an HTTP method such as GET, got %r" % (method,))


def _decide(
    router: HttpRouter,
    logical: Path,
    bound: list[Path],
    caller: str | None,
    peer: str | None,
    method: str,
) -> dict[str, Any] | None:
    """
    What the router's policy says of a request from C{caller} to
    C{logical}, as the router asks it: with the logical name and the bound
    name the request goes to.

    When the name reaches several bound names (an alternation, a weighted
    union) and they are not all decided alike, the request may be allowed or
    not depending on the bound name picked: the answer is the first denial,
    its reason naming that bound name. Without a bound name (the rules
    loop, or lead to none), the decision on the logical name alone.

    @return: C{{"allowed", "rule", "reason"}}, or L{None} without a policy.
    """
    policy = router.policy
    if policy is None:
        return None
    if not bound:
        return _decision(policy.decide(caller, peer, (logical.segments,), method))
    decisions = [
        (name, policy.decide(caller, peer, (logical.segments, name.segments), method))
        for name in bound
    ]
    if len({d.allowed for _, d in decisions}) == 1:
        return _decision(decisions[0][1])
    name, denied = next((n, d) for n, d in decisions if not d.allowed)
    answer = _decision(denied)
    answer["reason"] += " (when it goes to %s; the destination's other bound names allow it)" % (
        name,
    )
    return answer


def _decision(decision: Decision) -> dict[str, Any]:
    return {"allowed": decision.allowed, "rule": decision.rule, "reason": decision.reason}


def _identify(router: HttpRouter, host: str | None, path: str | None) -> Path:
    """
    The logical name the router's identifier gives a GET of C{path} with
    C{Host: host}.
    """
    target = (path if path is not None else "/").encode("utf-8", "replace")
    headers = []
    hostHeader = None
    if host is not None:
        hostHeader = host.encode("utf-8", "replace")
        headers.append((b"Host", hostHeader))
    request = Request(b"GET", target, "1.1", headers)
    request.host = hostHeader
    try:
        return router.identifier.identify(request)
    except IdentificationError as e:
        raise ValueError("cannot identify: %s" % (e,)) from None
