"""
What the admin API shows of an HTTP router: its state, and how it would
route a name (explain).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from meshproxy.http.message import Request
from meshproxy.routing.delegate import DelegationError, delegate, showBound
from meshproxy.routing.identifiers import IdentificationError
from meshproxy.routing.nametree import leaves
from meshproxy.routing.path import Path

if TYPE_CHECKING:
    from meshproxy.http.router import HttpRouter

__all__ = ["explainRoute", "routerState"]


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
    router: HttpRouter, *, name: str | None = None, host: str | None = None, path: str | None = None
) -> dict[str, Any]:
    """
    How a request would be routed, step by step, with the endpoints it ends
    at and their scores (the documented shape is in docs/admin.md).

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
        return result
    result["destination"] = showBound(tree)
    bound = []
    now = router.clock.seconds()
    seen = set()
    for leaf in leaves(tree):
        if leaf.id in seen:
            continue
        seen.add(leaf.id)
        client = router.clients.get(leaf)
        entry = client.state()
        entry["name"] = client.name
        load = client.balancer.load
        for node, ep in zip(client.balancer.nodes(), entry["endpoints"], strict=False):
            ep["score"] = round(load(node, now), 3)
        bound.append(entry)
    result["boundNames"] = bound
    result["endpoints"] = {entry["name"]: entry["endpoints"] for entry in bound}
    return result


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
