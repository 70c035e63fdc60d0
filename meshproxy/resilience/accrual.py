"""
Failure accrual: eject the endpoints that fail, probe them back in.

A node (see L{meshproxy.balancing.node.Node}) moves between four states::

    live ──(policy says eject, or too slow)──► ejected ──(backoff over)──► probing
     ▲                                            ▲                          │
     └────────────(probe succeeds)────────────────┼──────────────────────────┤
                                                  └─────(probe fails)────────┘

An ejection lasts a jittered backoff that doubles with each ejection since
the last revival (5 s to 300 s by default, L{EjectionBackoff}). A probing
node gets exactly one real request, the probe, whose outcome revives or
re-ejects it. A C{"draining"} node belongs to the operator: accrual never
changes it. Beneath it all, the balancer's panic floor
(L{meshproxy.balancing.base.Balancer}) sends traffic to every node anyway
when too few are left.

The policies decide when a live node is ejected: L{ConsecutiveFailures},
L{SuccessRateRequests} and L{SuccessRateWindow}. They keep what they need
in the node's C{accrual} slot and are judged on failures only (a success
never makes a success rate worse).
"""

from __future__ import annotations

import random as _random
from collections.abc import Callable
from math import inf

import attrs
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from meshproxy.balancing.base import Balancer
from meshproxy.balancing.node import Node
from meshproxy.resilience.backoff import EjectionBackoff
from meshproxy.resilience.interfaces import IAccrualPolicy
from meshproxy.resilience.window import SlidingCounts

__all__ = [
    "accrualFromConfig",
    "ConsecutiveFailures",
    "SuccessRateRequests",
    "SuccessRateWindow",
    "FailureAccrual",
    "EventKinds",
]

_log = Logger()

#: The kinds of event L{FailureAccrual} reports to its C{onEvent}.
EventKinds = ("ejected", "revived", "probe-failed", "panic")


def _positiveInt(instance, attribute, value) -> None:
    if type(value) is not int or value < 1:
        raise ValueError(f"{attribute.name} must be a positive integer, got {value!r}")


def _rate(instance, attribute, value) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{attribute.name} must be between 0 and 1, got {value!r}")


def _positive(instance, attribute, value) -> None:
    if not value > 0.0:
        raise ValueError(f"{attribute.name} must be positive, got {value!r}")


@implementer(IAccrualPolicy)
@attrs.frozen
class ConsecutiveFailures:
    """
    Eject a node after C{n} failures in a row; a success starts the count
    again. The node's C{accrual} slot holds the count.

    @ivar n: the failures in a row that eject, 1 or more.
    """

    n: int = attrs.field(default=5, validator=_positiveInt)

    @property
    def description(self) -> str:
        """
        See L{IAccrualPolicy.description}.
        """
        return f"{self.n} consecutive failures"

    def recordSuccess(self, node: Node, now: float) -> None:
        """
        See L{IAccrualPolicy.recordSuccess}.
        """
        node.accrual = 0

    def recordFailure(self, node: Node, now: float) -> bool:
        """
        See L{IAccrualPolicy.recordFailure}.
        """
        count = node.accrual
        count = 1 if count is None else count + 1
        node.accrual = count
        return count >= self.n

    def reset(self, node: Node) -> None:
        """
        See L{IAccrualPolicy.reset}.
        """
        node.accrual = None


class _Outcomes:
    """
    The last outcomes of one node's requests, 1 for a failure, in a ring.
    """

    __slots__ = ("outcomes", "index", "seen", "failures")

    def __init__(self, size: int) -> None:
        self.outcomes = bytearray(size)
        self.index = 0
        self.seen = 0
        self.failures = 0

    def push(self, failed: int) -> None:
        outcomes = self.outcomes
        index = self.index
        size = len(outcomes)
        if self.seen >= size:
            self.failures -= outcomes[index]
        else:
            self.seen += 1
        outcomes[index] = failed
        self.failures += failed
        index += 1
        self.index = 0 if index == size else index


@implementer(IAccrualPolicy)
@attrs.frozen
class SuccessRateRequests:
    """
    Eject a node whose success rate over its last C{requests} requests is
    below C{rate}; judged once C{requests} outcomes were seen. The node's
    C{accrual} slot holds a ring of its last outcomes.

    @ivar rate: the lowest acceptable success rate, 0 to 1.
    @ivar requests: how many of the last requests count, 1 or more.
    """

    rate: float = attrs.field(validator=_rate)
    requests: int = attrs.field(validator=_positiveInt)

    @property
    def description(self) -> str:
        """
        See L{IAccrualPolicy.description}.
        """
        return f"success rate under {self.rate:.0%} over the last {self.requests} requests"

    def recordSuccess(self, node: Node, now: float) -> None:
        """
        See L{IAccrualPolicy.recordSuccess}.
        """
        ring = node.accrual
        if ring is None:
            ring = node.accrual = _Outcomes(self.requests)
        ring.push(0)

    def recordFailure(self, node: Node, now: float) -> bool:
        """
        See L{IAccrualPolicy.recordFailure}.
        """
        ring = node.accrual
        if ring is None:
            ring = node.accrual = _Outcomes(self.requests)
        ring.push(1)
        n = ring.seen
        return n >= self.requests and (n - ring.failures) < self.rate * n

    def reset(self, node: Node) -> None:
        """
        See L{IAccrualPolicy.reset}.
        """
        node.accrual = None


@implementer(IAccrualPolicy)
@attrs.frozen
class SuccessRateWindow:
    """
    Eject a node whose success rate over the last C{window} seconds is below
    C{rate}; judged once C{minRequests} outcomes are in the window. The
    node's C{accrual} slot holds a L{SlidingCounts} of successes and
    failures (ten slots: an outcome stops counting between 0.9 and 1
    C{window} after it).

    @ivar rate: the lowest acceptable success rate, 0 to 1.
    @ivar window: the window, in seconds, positive.
    @ivar minRequests: the fewest outcomes in the window to judge on, 1 or
        more.
    """

    rate: float = attrs.field(validator=_rate)
    window: float = attrs.field(validator=_positive)
    minRequests: int = attrs.field(default=10, validator=_positiveInt)

    @property
    def description(self) -> str:
        """
        See L{IAccrualPolicy.description}.
        """
        return f"success rate under {self.rate:.0%} over the last {self.window:g}s"

    def recordSuccess(self, node: Node, now: float) -> None:
        """
        See L{IAccrualPolicy.recordSuccess}.
        """
        counts = node.accrual
        if counts is None:
            counts = node.accrual = SlidingCounts(self.window, 10, now)
        counts.addA(now)

    def recordFailure(self, node: Node, now: float) -> bool:
        """
        See L{IAccrualPolicy.recordFailure}.
        """
        counts = node.accrual
        if counts is None:
            counts = node.accrual = SlidingCounts(self.window, 10, now)
        counts.addB(now)
        total = counts.a + counts.b
        return total >= self.minRequests and counts.a < self.rate * total

    def reset(self, node: Node) -> None:
        """
        See L{IAccrualPolicy.reset}.
        """
        node.accrual = None


class FailureAccrual:
    """
    Ejects the failing (and, optionally, the slow) nodes of one balancer,
    and probes them back in.

    The exchange calls, for every try sent to a node::

        node = balancer.pick()
        accrual.picked(node)                # marks a probe as in flight
        started = balancer.start(node)
        ...
        balancer.finish(node, started, ok)  # first: it updates node.cost
        accrual.success(node)               # or accrual.failure(node), or
                                            # accrual.abandon(node) when the
                                            # try ended without a verdict

    Exactly one of L{success}, L{failure} or L{abandon} follows each
    L{picked}. A failure is whatever the classifier says is not a success,
    plus connection errors and per-try timeouts.

    Outcomes on an ejected node (sent before its ejection, or while the
    balancer panics) are ignored: they neither extend nor end the
    ejection. Outcomes on a probing node whose probe is not in flight
    (requests sent before the ejection) are ignored too.

    To replace the accrual of a balancer (new policy), L{cancel} the old one
    first, then build the new one: it adopts the nodes as they are,
    scheduling the probe of the ejected ones.

    @ivar policy: the L{IAccrualPolicy}.
    @ivar balancer: the L{Balancer} whose nodes are judged.
    @ivar backoff: the L{EjectionBackoff}.
    @ivar latency: C{(factor, duration)} or C{None}.
    """

    #: Latency ejection needs at least this many measured live nodes: with
    #: fewer, "slower than the others" means little.
    latencyMinNodes = 3

    def __init__(
        self,
        policy: IAccrualPolicy,
        balancer: Balancer,
        *,
        clock: IReactorTime,
        random: _random.Random | None = None,
        backoffMin: float = 5.0,
        backoffMax: float = 300.0,
        panicShare: float = 0.5,
        latency: tuple[float, float] | None = None,
        onEvent: Callable[[str, Node], object] | None = None,
    ) -> None:
        """
        @param policy: when to eject a live node on failures.
        @param balancer: the balancer whose nodes are judged; its
            C{panicShare} is set to C{panicShare}.
        @param clock: gives the time and schedules the probes
            (C{seconds()}, C{callLater()}).
        @param random: the source of the backoff jitter (C{random()}); a new
            C{random.Random()} if not given.
        @param backoffMin: the first ejection, in seconds.
        @param backoffMax: the longest ejection, in seconds.
        @param panicShare: the balancer's panic floor, 0 to 1 (0 for none).
        @param latency: C{(factor, duration)} to also eject a node whose
            latency cost stays above C{factor} times the median cost of the
            live nodes for C{duration} seconds; C{None} (the default) for
            no latency ejection.
        @param onEvent: called with C{(kind, node)} for each of the
            L{EventKinds}, for metrics; an exception it raises is logged.
        @raise ValueError: on a bad backoff range, panic share or latency.
        """
        if not 0.0 <= panicShare <= 1.0:
            raise ValueError(f"panicShare must be between 0 and 1, got {panicShare!r}")
        self._medianInterval = 1.0
        if latency is not None:
            factor, duration = latency
            if not factor >= 1.0:
                raise ValueError(f"latency factor must be 1 or more, got {factor!r}")
            if not duration >= 0.0:
                raise ValueError(f"latency duration must be 0 or more, got {duration!r}")
            self._medianInterval = min(1.0, duration / 10.0)
        self.policy = policy
        self.balancer = balancer
        self.latency = latency
        # Whether a success needs the time: not for consecutive failures
        # (a success only starts the count again) without latency ejection,
        # the default, where a clock reading per request would be wasted.
        self._timedSuccess = type(policy) is not ConsecutiveFailures or latency is not None
        self.backoff = EjectionBackoff(
            backoffMin, backoffMax, random=_random.Random() if random is None else random
        )
        self._clock = clock
        self._onEvent = onEvent
        self._timers: dict[Node, IDelayedCall] = {}
        self._stopped = False
        self._median = 0.0
        self._medianStamp = -inf
        self._adopt()
        balancer.panicShare = panicShare
        balancer.refresh()

    def _adopt(self) -> None:
        """
        Take over the balancer's nodes as they are: forget what another
        policy recorded, schedule the probe of the ejected nodes, and let
        a probing node whose probe went to a former accrual be probed again.
        """
        now = self._clock.seconds()
        for node in self.balancer.nodes():
            self.policy.reset(node)
            node.latencySince = None
            if node.state == "ejected":
                until = node.ejectedUntil
                if until is None:
                    until = node.ejectedUntil = now
                self._timers[node] = self._clock.callLater(max(0.0, until - now), self._probe, node)
            elif node.state == "probing":
                node.probeInFlight = False

    # The hot path.

    def picked(self, node: Node) -> None:
        """
        The balancer picked C{node} for a try: if it is a probing node
        without its probe in flight, this try is the probe, and the node is
        not picked again until its outcome is known.

        @param node: what the balancer's C{pick()} gave.
        """
        if node.state == "probing" and not node.probeInFlight and not self._stopped:
            node.probeInFlight = True
            if self._refresh():
                self._event("panic", node)

    def success(self, node: Node) -> None:
        """
        A try on C{node} succeeded. On a live node, the policy records it;
        on a probing node with its probe in flight, the node is revived.

        @param node: the node the try went to.
        """
        if self._stopped:
            return
        state = node.state
        if state == "live":
            if self._timedSuccess:
                now = self._clock.seconds()
                self.policy.recordSuccess(node, now)
                if self.latency is not None:
                    self._checkLatency(node, now)
            else:
                # (ConsecutiveFailures does not read the time)
                self.policy.recordSuccess(node, 0.0)
        elif state == "probing" and node.probeInFlight:
            self._revive(node)

    def failure(self, node: Node) -> None:
        """
        A try on C{node} failed. On a live node, the policy records it and
        may eject the node; on a probing node with its probe in flight, the
        node is ejected again, for longer.

        @param node: the node the try went to.
        """
        if self._stopped:
            return
        state = node.state
        if state == "live":
            now = self._clock.seconds()
            if self.policy.recordFailure(node, now):
                self._eject(node, now, "ejected", self.policy.description)
            elif self.latency is not None:
                self._checkLatency(node, now)
        elif state == "probing" and node.probeInFlight:
            self._eject(node, self._clock.seconds(), "probe-failed", "probe failed")

    def abandon(self, node: Node) -> None:
        """
        A try on C{node} ended without saying anything of the node (the
        client went away, the total timeout struck while waiting for a
        connection): if it was the probe, another try may be the probe.

        @param node: the node the try went to.
        """
        if node.state == "probing" and node.probeInFlight and not self._stopped:
            node.probeInFlight = False
            if self._refresh():
                self._event("panic", node)

    # Lifetime.

    def forget(self, node: Node) -> None:
        """
        Cancel the scheduled probe of C{node}, if any: call it when the
        node is removed from the balancer (its C{onRemove}).
        """
        timer = self._timers.pop(node, None)
        if timer is not None and timer.active():
            timer.cancel()

    def cancel(self) -> None:
        """
        Cancel every scheduled probe and stop judging: from now on every
        method but this one does nothing. Call it on shutdown, or before
        replacing this accrual with another.
        """
        self._stopped = True
        timers = self._timers
        self._timers = {}
        for timer in timers.values():
            if timer.active():
                timer.cancel()

    # Transitions.

    def restore(self, node: Node) -> None:
        """
        Take back a node the operator had drained: one that was ejected
        stays ejected until its ejection is over (then is probed), any other
        is live again.

        @param node: a node of this accrual's balancer.
        """
        if node.ejectedUntil is not None:
            now = self._clock.seconds()
            node.state = "ejected"
            node.probeInFlight = False
            old = self._timers.pop(node, None)
            if old is not None and old.active():
                old.cancel()
            self._timers[node] = self._clock.callLater(
                max(0.0, node.ejectedUntil - now), self._probe, node
            )
        else:
            node.state = "live"
        self._refresh()

    def _eject(self, node: Node, now: float, kind: str, reason: str) -> None:
        step = node.backoffStep
        delay = self.backoff.delay(step)
        node.backoffStep = step + 1
        node.state = "ejected"
        node.ejectedUntil = now + delay
        node.probeInFlight = False
        node.latencySince = None
        self.forget(node)
        self._timers[node] = self._clock.callLater(delay, self._probe, node)
        _log.info(
            "ejected {endpoint} for {delay:.1f}s (ejection {step}): {reason}",
            endpoint=node.endpoint,
            delay=delay,
            step=step + 1,
            reason=reason,
        )
        panicked = self._refresh()
        self._event(kind, node)
        if panicked:
            self._event("panic", node)

    def _probe(self, node: Node) -> None:
        self._timers.pop(node, None)
        if node.state != "ejected":
            return
        node.state = "probing"
        node.ejectedUntil = None
        node.probeInFlight = False
        _log.info("probing {endpoint}", endpoint=node.endpoint)
        if self._refresh():
            self._event("panic", node)

    def _revive(self, node: Node) -> None:
        node.state = "live"
        node.backoffStep = 0
        node.probeInFlight = False
        node.ejectedUntil = None
        node.latencySince = None
        self.policy.reset(node)
        _log.info("revived {endpoint}", endpoint=node.endpoint)
        panicked = self._refresh()
        self._event("revived", node)
        if panicked:
            self._event("panic", node)

    def _refresh(self) -> bool:
        """
        Refresh the balancer.

        @return: whether it entered panic.
        """
        balancer = self.balancer
        panics = balancer.panics
        balancer.refresh()
        return balancer.panics != panics

    def _event(self, kind: str, node: Node) -> None:
        onEvent = self._onEvent
        if onEvent is None:
            return
        try:
            onEvent(kind, node)
        except Exception:
            _log.failure("failure accrual event callback {callback!r} failed", callback=onEvent)

    # Latency ejection.

    def _checkLatency(self, node: Node, now: float) -> None:
        # Called only with latency ejection configured.
        factor, duration = self.latency  # type: ignore[misc]
        if now - self._medianStamp >= self._medianInterval:
            self._median = self._liveMedian()
            self._medianStamp = now
        median = self._median
        if median > 0.0 and node.cost > factor * median:
            since = node.latencySince
            if since is None:
                since = node.latencySince = now
            if now - since >= duration:
                self._eject(
                    node,
                    now,
                    "ejected",
                    f"latency {node.cost:.1f}ms above {factor:g} times the median "
                    f"{median:.1f}ms for {now - since:.1f}s",
                )
        else:
            node.latencySince = None

    def _liveMedian(self) -> float:
        """
        @return: the median latency cost of the live nodes that have one, or
            0.0 (no judgement) when fewer than L{latencyMinNodes} have.
        """
        costs = sorted(n.cost for n in self.balancer.nodes() if n.state == "live" and n.cost > 0.0)
        count = len(costs)
        if count < self.latencyMinNodes:
            return 0.0
        middle = count // 2
        if count % 2:
            return costs[middle]
        return (costs[middle - 1] + costs[middle]) / 2.0

    def __repr__(self) -> str:
        return f"<FailureAccrual {self.policy.description} on {self.balancer!r}>"


def accrualFromConfig(config, balancer, *, clock, random, onEvent=None):
    """
    The failure accrual a router's C{failureAccrual} config asks for.

    @param config: a L{FailureAccrualConfig<meshproxy.config.FailureAccrualConfig>}.
    @param balancer: the balancer whose nodes it judges.
    @param clock: the reactor's time.
    @param random: the source of jitter.
    @param onEvent: called with C{(kind, node)} for each event.
    @return: a L{FailureAccrual}, or L{None} for C{kind: none}.
    """
    if config.kind == "none":
        return None
    policy: IAccrualPolicy
    if config.kind == "consecutiveFailures":
        policy = ConsecutiveFailures(config.failures)
    elif config.window is not None:
        policy = SuccessRateWindow(config.successRate, config.window, config.minRequests)
    else:
        policy = SuccessRateRequests(config.successRate, config.requests)
    latency = None
    if config.latency is not None:
        latency = (config.latency.factor, config.latency.duration)
    return FailureAccrual(
        policy,
        balancer,
        clock=clock,
        random=random,
        backoffMin=config.backoffMin,
        backoffMax=config.backoffMax,
        panicShare=config.panicShare,
        latency=latency,
        onEvent=onEvent,
    )
