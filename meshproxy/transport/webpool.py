"""
The connection pool of meshproxy's own HTTP clients on the control plane
(the etcd client, the span exporters), over Twisted's L{Agent}.

Not for the data path: imported only by what posts or watches, so that a
process that does neither never loads L{twisted.web.client}.
"""

from __future__ import annotations

from typing import Any

from twisted.web.client import HTTPConnectionPool, _HTTP11ClientFactory

__all__ = ["quietPool"]


class _QuietFactory(_HTTP11ClientFactory):
    """
    A pool's connection factory without the two log lines Twisted writes
    for each connection ("Starting factory", "Stopping factory"): ten a
    second while an etcd cluster or a collector is away, one per post to a
    collector that closes its connections.
    """

    noisy = False


def quietPool(reactor: Any, maxPersistentPerHost: int) -> HTTPConnectionPool:
    """
    A persistent connection pool that logs nothing per connection and never
    resends a request on its own (the callers decide what to retry).

    @param reactor: the reactor to connect with.
    @param maxPersistentPerHost: idle connections kept per host.
    """
    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = maxPersistentPerHost
    pool.retryAutomatically = False
    pool._factory = _QuietFactory
    return pool
