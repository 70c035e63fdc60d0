"""
What a router keeps for one bound name, whatever its protocol: the namer's
live endpoint set, a balancer over it, the failure accrual of its
endpoints, and a per-endpoint payload the protocol owns (HTTP: a connection
pool; TCP: counts of its spliced connections).
"""

from collections.abc import Callable, Iterable
from typing import Any

from twisted.logger import Logger

from meshproxy.discovery.endpoints import Addr, formatAddress

__all__ = ["BoundEndpoints", "MAX_WAITERS", "explainBoundNames"]

#: Bound on the requests (or connections) waiting for one bound name's
#: first answer from its namer; more are refused.
MAX_WAITERS = 1000

_log = Logger()


class BoundEndpoints:
    """
    The endpoints of one bound name, followed from its namer.

    A subclass says what each endpoint carries (L{newPayload},
    L{closePayload}) and how its connections are shown
    (L{connectionCounts}).

    @ivar name: the bound name as text, e.g. C{"/#/fs/users"}.
    @ivar balancer: the L{IBalancer<meshproxy.balancing.interfaces.IBalancer>}
        over the endpoints.
    @ivar accrual: the L{FailureAccrual<meshproxy.resilience.accrual.FailureAccrual>},
        or L{None}.
    @ivar unresolved: whether the namer has not answered for the name yet
        (its L{addr} is C{pending}).
    @ivar addr: the namer's latest usable answer: a namer that fails after
        a good answer keeps the last good set.
    @ivar waiters: how many wait for the namer's first answer
        (L{whenResolved}).
    """

    def __init__(self, router, boundName, observable):
        """
        @param router: gives C{makeBalancer(onAdd=, onRemove=)} and
            C{makeAccrual(balancer)}.
        @param boundName: the L{BoundName<meshproxy.routing.delegate.BoundName>}.
        @param observable: the namer's L{Observable} for it.
        """
        self.boundName = boundName
        self.name = str(boundName.id)
        self.balancer = router.makeBalancer(onAdd=self._nodeAdded, onRemove=self._nodeRemoved)
        self.accrual = router.makeAccrual(self.balancer)
        self.addr = Addr.pending()
        # Whether the namer has not answered for the name yet (its addr is
        # pending): read for every request, so kept as a plain attribute
        # (a property costs a Python call per read).
        self.unresolved = True
        self._waiters = {}
        self._cancel = observable.subscribe(self._update)
        self._update(observable.current)

    def newPayload(self, node):
        """
        What a new endpoint carries (its C{payload}).
        """
        return None

    def closePayload(self, payload):
        """
        An endpoint left the set: release what it carries.
        """

    def connectionCounts(self, payload):
        """
        The C{connections} field of an endpoint in L{endpointStates}.
        """
        return {}

    def _nodeAdded(self, node):
        node.payload = self.newPayload(node)

    def _nodeRemoved(self, node):
        if self.accrual is not None:
            self.accrual.forget(node)
        if node.payload is not None:
            self.closePayload(node.payload)

    def _update(self, addr):
        if addr.kind == "bound":
            self.addr = addr
            self.balancer.update(addr.endpoints)
        elif addr.kind == "neg":
            self.addr = addr
            self.balancer.update(frozenset())
        elif addr.kind == "failed" and self.addr.kind == "pending":
            self.addr = addr
        # "pending", or "failed" after a good answer: keep the last good set.
        self.unresolved = self.addr.kind == "pending"
        if self._waiters and self.addr.kind != "pending":
            waiters, self._waiters = self._waiters, {}
            for fn in waiters.values():
                try:
                    fn()
                except Exception:
                    _log.failure("waiter {waiter!r} of {name} failed", waiter=fn, name=self.name)

    @property
    def waiters(self):
        """
        How many wait for the namer's first answer.
        """
        return len(self._waiters)

    def whenResolved(self, fn):
        """
        Call C{fn} once, with no argument, when the namer first answers for
        the name (bound, negative or failed), unless cancelled before.

        @param fn: a no-argument callable.
        @return: a no-argument callable that cancels the wait (calling it
            more than once, or after C{fn} ran, is harmless), or L{None}
            when L{MAX_WAITERS} wait already (C{fn} will not be called).
        """
        if len(self._waiters) >= MAX_WAITERS:
            return None
        token = object()
        self._waiters[token] = fn

        def cancel():
            self._waiters.pop(token, None)

        return cancel

    def close(self):
        """
        Stop following the namer, drop every endpoint and cancel the
        accrual's timers. Who waits for the first answer (L{whenResolved})
        is forgotten: it is bounded by its own deadline.
        """
        self._cancel()
        self._waiters.clear()
        self.balancer.update(frozenset())
        if self.accrual is not None:
            self.accrual.cancel()

    def endpoint(self, address):
        """
        The node of one endpoint.

        @param address: C{host:port} as L{endpointStates} shows it.
        @raise KeyError: when no endpoint has that address.
        """
        for node in self.balancer.nodes():
            if formatAddress(node.endpoint) == address:
                return node
        raise KeyError("no endpoint %s in %s" % (address, self.name))

    def drain(self, address):
        """
        Send nothing new to one endpoint; what it carries now finishes.

        @raise KeyError: for an unknown address.
        """
        self.endpoint(address).state = "draining"
        self.balancer.refresh()

    def undrain(self, address):
        """
        Give a drained endpoint traffic again. One that was ejected when
        drained stays ejected until its ejection is over, then comes back
        through one probe.

        @raise KeyError: for an unknown address.
        """
        node = self.endpoint(address)
        if node.state == "draining":
            if self.accrual is not None:
                self.accrual.restore(node)
            else:
                node.state = "live"
        self.balancer.refresh()

    def state(self):
        """
        A JSON-ready view for C{GET /admin/state}: what the namer says of
        the name (C{resolution}: C{pending}, C{bound}, C{neg} or C{failed};
        also as C{namer}, its former name, for one release), why (C{reason}:
        a failure, or a set kept while the namer cannot refresh it; else
        C{None}), whether the balancer panics, and every endpoint
        (L{endpointStates}).
        """
        resolution = self.addr.kind
        return {
            "resolution": resolution,
            "namer": resolution,
            "reason": self.addr.reason,
            "panicking": self.balancer.panicking,
            "endpoints": self.endpointStates(),
        }

    def endpointStates(self):
        """
        A JSON-ready view of each endpoint, for C{GET /admin/state}.
        """
        endpoints = []
        for node in self.balancer.nodes():
            total = node.successes + node.failures
            endpoints.append(
                {
                    "address": formatAddress(node.endpoint),
                    "weight": node.endpoint.weight,
                    "state": node.state,
                    "ewmaMs": round(node.cost, 3),
                    "pending": node.pending,
                    "requests": node.requests,
                    "successes": node.successes,
                    "failures": node.failures,
                    "successRate": (node.successes / total) if total else None,
                    "consecutiveFailures": node.consecutiveFailures,
                    "ejectedUntil": node.ejectedUntil,
                    "backoffStep": node.backoffStep,
                    "connections": self.connectionCounts(node.payload),
                }
            )
        return endpoints


def explainBoundNames(
    leaves: Iterable[Any], destinationFor: Callable[[Any], Any], now: float
) -> tuple[list[dict[str, Any]], list[Any]]:
    """
    What an explain shows of the bound names a name tree reaches (HTTP and
    TCP routers alike): each one's state once, with its endpoints' balancer
    scores.

    @param leaves: the tree's leaves (L{BoundName}s), maybe repeated.
    @param destinationFor: a leaf's destination (its C{name}, C{state()}
        and C{balancer}).
    @param now: the time the scores are taken at.
    @return: C{(entries, reached)}: the JSON-ready entries, and the bound
        names' ids, in order, each once.
    """
    bound = []
    reached = []
    seen = set()
    for leaf in leaves:
        if leaf.id in seen:
            continue
        seen.add(leaf.id)
        reached.append(leaf.id)
        destination = destinationFor(leaf)
        entry = destination.state()
        entry["name"] = destination.name
        load = destination.balancer.load
        for node, ep in zip(destination.balancer.nodes(), entry["endpoints"], strict=False):
            ep["score"] = round(load(node, now), 3)
        bound.append(entry)
    return bound, reached
