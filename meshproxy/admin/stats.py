"""
The counters C{GET /admin/stats} answers per router and bound name, for
the dashboard's rates and percentiles.
"""

from __future__ import annotations

import itertools
from typing import Any

from meshproxy.telemetry.metrics import BUCKETS


def _routeStats(stats: Any) -> dict[str, Any]:
    """
    The counters of one L{RouteStats<meshproxy.telemetry.metrics.RouteStats>}
    as JSON-ready values: the bucket counts made cumulative, as
    Prometheus' C{le} buckets are (the last one, past C{bounds}, counts
    every request: C{+Inf}).
    """
    return {
        "requests": stats.requests,
        "responses": {
            f"{cls}xx": stats.responses[cls] for cls in range(1, 6)
        },
        "duration": {
            "bounds": list(BUCKETS),
            "buckets": list(itertools.accumulate(stats.buckets)),
            "sum": stats.seconds,
        },
    }


def _routerStats(name: str, router: Any) -> dict[str, Any]:
    """
    One router's part of C{GET /admin/stats}: its client connections
    (C{router.connStats}) and the counters of each bound name it recorded
    in C{router.metrics}. A router without them (a TCP router counts no
    requests) has C{null} connections or no bound names.
    """
    conns = getattr(router, "connStats", None)
    metrics = getattr(router, "metrics", None)
    records = metrics.routes(name) if metrics is not None else []
    return {
        "connections": None if conns is None else {
            "opened": conns.opened, "closed": conns.closed,
        },
        "boundNames": {stats.name: _routeStats(stats) for stats in records},
    }


# Phrases twisted.web does not know (it would say "Unknown Status").
