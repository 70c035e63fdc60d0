"""
What every balancer shares: the nodes, the eligible list, and the per-request
bookkeeping (pending count, counters, peak EWMA latency).
"""

from __future__ import annotations

import random as _random
from collections.abc import Callable
from math import ceil, exp

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from meshproxy.balancing.interfaces import IBalancer
from meshproxy.balancing.node import EligibleStates, Node
from meshproxy.discovery.endpoints import Endpoint

__all__ = ["Balancer"]

_log = Logger()


@implementer(IBalancer)
class Balancer:
    """
    The base of the balancers: everything but L{pick}.

    Every balancer keeps the peak EWMA latency of its nodes (the admin API
    shows it), whether or not it balances on it. The cost follows Finagle's
    PeakEwma: a latency above the current cost replaces it at once (peak);
    otherwise it is averaged in with a weight that depends on the time since
    the last update, so that the cost forgets in about C{decay} seconds.

    The eligible nodes are those C{"live"}, and those C{"probing"} whose one
    probe is not in flight yet (L{Node.probeInFlight}). With a panic floor
    (C{panicShare} above 0), when fewer than C{ceil(panicShare * n)} of the
    C{n} nodes that are not draining would be eligible, the balancer
    "panics" and uses all C{n}: ejection must not leave a service with too
    few instances to take its traffic (Finagle and Envoy do the same).

    @ivar panicShare: the panic floor, a share of the non-draining nodes
        between 0 and 1; 0.0 turns panic off. Whoever changes it calls
        L{refresh}.
    @ivar panicking: whether the last L{refresh} found the balancer in
        panic.
    @ivar panics: how many times the balancer entered panic.
    """

    def __init__(
        self,
        *,
        clock: IReactorTime,
        random: _random.Random | None = None,
        onAdd: Callable[[Node], object] | None = None,
        onRemove: Callable[[Node], object] | None = None,
        decay: float = 10.0,
        panicShare: float = 0.0,
    ) -> None:
        """
        @param clock: gives the time (C{seconds()}), usually the reactor.
        @param random: the source of randomness (C{random()} and
            C{randrange()}); a new C{random.Random()} if not given.
        @param onAdd: called with each new node, after the balancer is
            updated (so that the owner can attach a connection pool).
        @param onRemove: called with each dropped node, after the balancer is
            updated.
        @param decay: the time, in seconds, over which the latency cost
            forgets a peak.
        @param panicShare: the panic floor (see L{Balancer}); 0.0, the
            default, for none.
        @raise ValueError: if C{decay} is not positive or C{panicShare} is
            not between 0 and 1.
        """
        if not decay > 0:
            raise ValueError(f"decay must be positive, got {decay!r}")
        if not 0.0 <= panicShare <= 1.0:
            raise ValueError(f"panicShare must be between 0 and 1, got {panicShare!r}")
        self._clock = clock
        self._random = _random.Random() if random is None else random
        self._onAdd = onAdd
        self._onRemove = onRemove
        self.decay = decay
        self._byAddress: dict[tuple[str, int], Node] = {}
        self._nodes: tuple[Node, ...] = ()
        self._eligible: tuple[Node, ...] = ()
        self.panicShare = panicShare
        self.panicking = False
        self.panics = 0

    def update(self, endpoints: frozenset[Endpoint]) -> None:
        """
        See L{IBalancer.update}. When the set holds one address twice (with
        two weights), one of them is used.
        """
        now = self._clock.seconds()
        old = self._byAddress
        new: dict[tuple[str, int], Node] = {}
        added = []
        # In address order: the nodes' order (round robin's turn, the
        # admin API's lists) must not depend on set iteration.
        for endpoint in sorted(endpoints, key=_byAddress):
            address = endpoint.address
            node = old.get(address)
            if node is None:
                node = new.get(address)
            if node is None:
                node = Node(endpoint, now)
                added.append(node)
            else:
                node.endpoint = endpoint
                node.weight = endpoint.weight
            new[address] = node
        removed = [node for address, node in old.items() if address not in new]
        self._byAddress = new
        self._nodes = tuple(new.values())
        self.refresh()
        for callback, nodes in ((self._onRemove, removed), (self._onAdd, added)):
            if callback is None:
                continue
            for node in nodes:
                try:
                    callback(node)
                except Exception:
                    _log.failure(
                        "balancer callback {callback!r} failed on {node!r}",
                        callback=callback,
                        node=node,
                    )

    def nodes(self) -> tuple[Node, ...]:
        """
        See L{IBalancer.nodes}.
        """
        return self._nodes

    def pickAvoiding(self, avoid: set[Node] | None) -> Node | None:
        """
        L{pick}, but for a node not in C{avoid} when one is eligible (a
        retry after failures on those nodes), chosen at random.

        @param avoid: the nodes to keep away from, or L{None}.
        @return: a node, or L{None} when none is eligible.
        """
        node = self.pick()
        if node is not None and avoid and node in avoid:
            others = [n for n in self._eligible if n not in avoid]
            if others:
                node = others[int(self._random.random() * len(others))]
        return node

    def hasEligible(self) -> bool:
        """
        See L{IBalancer.hasEligible}.
        """
        return bool(self._eligible)

    def load(self, node: Node, now: float) -> float:
        """
        See L{IBalancer.load}: requests in flight per unit of weight, for
        the balancers that do not score by latency.
        """
        return node.pending / node.weight

    def refresh(self) -> None:
        """
        See L{IBalancer.refresh}; also enters or leaves panic (see
        L{Balancer}).
        """
        nodes = self._nodes
        eligible = tuple(
            node for node in nodes if node.state in EligibleStates and not node.probeInFlight
        )
        share = self.panicShare
        if share > 0.0:
            candidates = tuple(node for node in nodes if node.state != "draining")
            floor = ceil(share * len(candidates))
            if len(eligible) < floor:
                if not self.panicking:
                    self.panicking = True
                    self.panics += 1
                    _log.warn(
                        "balancer panics: {eligible} of {total} endpoints eligible, "
                        "below the floor of {floor}; using all {total}",
                        eligible=len(eligible),
                        total=len(candidates),
                        floor=floor,
                    )
                self._eligible = candidates
                return
        if self.panicking:
            self.panicking = False
            _log.info(
                "balancer leaves panic: {eligible} of {total} endpoints eligible",
                eligible=len(eligible),
                total=len(nodes),
            )
        self._eligible = eligible

    def pick(self) -> Node | None:
        """
        See L{IBalancer.pick}; subclasses implement it.
        """
        raise NotImplementedError()

    def start(self, node: Node) -> float:
        """
        See L{IBalancer.start}.
        """
        node.pending += 1
        node.requests += 1
        return self._clock.seconds()

    def finish(self, node: Node, startTime: float | None, success: bool) -> None:
        """
        See L{IBalancer.finish}.
        """
        node.pending -= 1
        if success:
            node.successes += 1
            node.consecutiveFailures = 0
        else:
            node.failures += 1
            node.consecutiveFailures += 1
        if startTime is not None:
            self.measured(node, startTime)

    def measured(self, node: Node, startTime: float, now: float | None = None) -> None:
        """
        See L{IBalancer.measured}.
        """
        if now is None:
            now = self._clock.seconds()
        rtt = (now - startTime) * 1000.0
        cost = node.cost
        if rtt > cost:
            node.cost = rtt
        else:
            elapsed = now - node.stamp
            # A clock that went backwards must not amplify the cost.
            w = exp(-elapsed / self.decay) if elapsed > 0.0 else 1.0
            node.cost = cost * w + rtt * (1.0 - w)
        node.stamp = now

    def __repr__(self) -> str:
        return f"<{type(self).__name__} nodes={len(self._nodes)} eligible={len(self._eligible)}>"


def _byAddress(endpoint: Endpoint) -> tuple[str, int]:
    return endpoint.address
