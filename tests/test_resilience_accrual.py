"""
Tests for L{meshproxy.resilience.accrual}.
"""

import random

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from meshproxy.balancing.p2c import P2CPeakEwma
from meshproxy.balancing.roundrobin import RoundRobin
from meshproxy.discovery.endpoints import Endpoint
from meshproxy.resilience.accrual import (
    ConsecutiveFailures,
    FailureAccrual,
    SuccessRateRequests,
    SuccessRateWindow,
)
from meshproxy.resilience.interfaces import IAccrualPolicy

A = Endpoint("10.0.0.1", 80)
B = Endpoint("10.0.0.2", 80)
C = Endpoint("10.0.0.3", 80)
D = Endpoint("10.0.0.4", 80)


class PolicyTests(SynchronousTestCase):
    """
    Tests for the policies on their own.
    """

    def test_interface(self):
        """
        Every policy provides L{IAccrualPolicy}.
        """
        for policy in (
            ConsecutiveFailures(),
            SuccessRateRequests(0.9, 100),
            SuccessRateWindow(0.9, 30.0, 10),
        ):
            self.assertTrue(verifyObject(IAccrualPolicy, policy))
            self.assertIsInstance(policy.description, str)

    def test_defaults(self):
        """
        C{ConsecutiveFailures} ejects after 5 failures by default.
        """
        self.assertEqual(ConsecutiveFailures().n, 5)
        self.assertEqual(ConsecutiveFailures().description, "5 consecutive failures")

    def test_values(self):
        """
        Policies are values: equal when their settings are.
        """
        self.assertEqual(ConsecutiveFailures(3), ConsecutiveFailures(n=3))
        self.assertEqual(SuccessRateWindow(0.5, 10.0, 4), SuccessRateWindow(0.5, 10.0, 4))
        self.assertNotEqual(SuccessRateRequests(0.5, 10), SuccessRateRequests(0.5, 11))

    def test_badSettings(self):
        """
        Out-of-range settings are refused.
        """
        self.assertRaises(ValueError, ConsecutiveFailures, 0)
        self.assertRaises(ValueError, ConsecutiveFailures, 2.5)
        self.assertRaises(ValueError, SuccessRateRequests, 1.5, 10)
        self.assertRaises(ValueError, SuccessRateRequests, 0.5, 0)
        self.assertRaises(ValueError, SuccessRateWindow, -0.1, 10.0, 5)
        self.assertRaises(ValueError, SuccessRateWindow, 0.5, 0.0, 5)
        self.assertRaises(ValueError, SuccessRateWindow, 0.5, 10.0, 0)


class AccrualTestsMixin:
    """
    Shared set-up: three nodes behind a balancer, a clock, and a record of
    the accrual's events.
    """

    balancerClass = P2CPeakEwma
    endpoints = frozenset({A, B, C})

    def setUp(self):
        self.clock = Clock()
        self.balancer = self.balancerClass(clock=self.clock, random=random.Random(1))
        self.balancer.update(self.endpoints)
        self.byEndpoint = {node.endpoint: node for node in self.balancer.nodes()}
        self.events = []

    def accrual(self, policy=None, **kwargs):
        kwargs.setdefault("panicShare", 0.0)
        kwargs.setdefault("random", random.Random(2))
        return FailureAccrual(
            ConsecutiveFailures(3) if policy is None else policy,
            self.balancer,
            clock=self.clock,
            onEvent=lambda kind, node: self.events.append((kind, node.endpoint)),
            **kwargs,
        )

    def picks(self, n=100):
        return {self.balancer.pick() for _ in range(n)}

    def pickProbe(self, accrual, node):
        """
        Pick as the exchange does until C{node} is picked.
        """
        for _ in range(1000):
            picked = self.balancer.pick()
            accrual.picked(picked)
            if picked is node:
                return
        self.fail(f"{node!r} was never picked")

    def eject(self, accrual, node):
        while node.state == "live":
            accrual.failure(node)


class ConsecutiveFailuresTests(AccrualTestsMixin, SynchronousTestCase):
    """
    Ejection after consecutive failures, and the probe that follows.
    """

    def test_failuresEject(self):
        """
        N consecutive failures eject the node for the first backoff (5 to 6
        seconds), schedule its probe, report it, and the balancer stops
        picking it.
        """
        accrual = self.accrual()
        node = self.byEndpoint[A]
        self.clock.advance(100)
        accrual.failure(node)
        accrual.failure(node)
        self.assertEqual(node.state, "live")
        self.assertEqual(self.events, [])
        accrual.failure(node)
        self.assertEqual(node.state, "ejected")
        self.assertEqual(node.backoffStep, 1)
        self.assertTrue(105.0 <= node.ejectedUntil <= 106.0, node.ejectedUntil)
        (call,) = self.clock.getDelayedCalls()
        self.assertEqual(call.getTime(), node.ejectedUntil)
        self.assertEqual(self.events, [("ejected", A)])
        self.assertNotIn(node, self.picks())

    def test_successResetsCount(self):
        """
        A success starts the count of consecutive failures again.
        """
        accrual = self.accrual()
        node = self.byEndpoint[A]
        for _ in range(5):
            accrual.failure(node)
            accrual.failure(node)
            accrual.success(node)
        self.assertEqual(node.state, "live")
        accrual.failure(node)
        accrual.failure(node)
        accrual.failure(node)
        self.assertEqual(node.state, "ejected")

    def test_nodesCountApart(self):
        """
        Failures on other nodes do not count towards a node's ejection.
        """
        accrual = self.accrual()
        accrual.failure(self.byEndpoint[A])
        accrual.failure(self.byEndpoint[B])
        accrual.failure(self.byEndpoint[C])
        accrual.failure(self.byEndpoint[A])
        self.assertEqual({n.state for n in self.balancer.nodes()}, {"live"})

    def test_probingAfterBackoff(self):
        """
        When the backoff is over, the node is probing and may be picked.
        """
        accrual = self.accrual()
        node = self.byEndpoint[A]
        self.eject(accrual, node)
        self.clock.advance(node.ejectedUntil - 0.001)
        self.assertEqual(node.state, "ejected")
        self.clock.advance(0.001)
        self.assertEqual(node.state, "probing")
        self.assertIsNone(node.ejectedUntil)
        self.assertFalse(node.probeInFlight)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertIn(node, self.picks(200))

    def test_exactlyOneProbe(self):
        """
        Once the probe of a probing node is picked, the node is not picked
        again while the probe is in flight.
        """
        accrual = self.accrual()
        node = self.byEndpoint[A]
        self.eject(accrual, node)
        self.clock.advance(10)
        self.pickProbe(accrual, node)
        self.assertTrue(node.probeInFlight)
        for _ in range(200):
            picked = self.balancer.pick()
            accrual.picked(picked)
            self.assertIsNot(picked, node)

    def test_probeSuccessRevives(self):
        """
        The probe's success revives the node: live, backoff step and
        failure count reset, picked again, reported.
        """
        accrual = self.accrual()
        node = self.byEndpoint[A]
        self.eject(accrual, node)
        self.clock.advance(10)
        self.pickProbe(accrual, node)
        accrual.success(node)
        self.assertEqual(
            (node.state, node.backoffStep, node.probeInFlight, node.ejectedUntil, node.accrual),
            ("live", 0, False, None, None),
        )
        self.assertEqual(self.events, [("ejected", A), ("revived", A)])
        self.assertIn(node, self.picks(200))
        accrual.failure(node)
        accrual.failure(node)
        self.assertEqual(node.state, "live")
        accrual.failure(node)
        self.assertEqual(node.state, "ejected")
        now = self.clock.seconds()
        self.assertTrue(now + 5.0 <= node.ejectedUntil <= now + 6.0)

    def test_restoreAfterDrainKeepsEjection(self):
        """
        A node drained while ejected and then restored is ejected until its
        ejection ends (even if the probe time passed while it was drained),
        then probed; a node drained while live comes back live.
        """
        accrual = self.accrual()
        node = self.byEndpoint[A]
        self.eject(accrual, node)
        until = node.ejectedUntil
        node.state = "draining"
        self.balancer.refresh()
        accrual.restore(node)
        self.assertEqual(node.state, "ejected")
        self.assertNotIn(node, self.picks(50))
        self.clock.advance(until - self.clock.seconds() + 0.01)
        self.assertEqual(node.state, "probing")
        other = self.byEndpoint[B]
        other.state = "draining"
        self.balancer.refresh()
        accrual.restore(other)
        self.assertEqual(other.state, "live")

    def test_probeFailureReejectsLonger(self):
        """
        A failed probe ejects the node again for a longer backoff, doubling
        up to the maximum, and is reported as C{probe-failed}.
        """
        accrual = self.accrual()
        node = self.byEndpoint[A]
        self.eject(accrual, node)
        delays = [node.ejectedUntil - self.clock.seconds()]
        for step in range(1, 10):
            self.clock.advance(delays[-1])
            self.assertEqual(node.state, "probing")
            self.pickProbe(accrual, node)
            accrual.failure(node)
            self.assertEqual(node.state, "ejected")
            self.assertEqual(node.backoffStep, step + 1)
            delays.append(node.ejectedUntil - self.clock.seconds())
        for before, after in zip(delays[:6], delays[1:7], strict=True):
            self.assertLess(before, after)
        self.assertEqual(delays[7:], [300.0] * 3)
        self.assertEqual(self.events, [("ejected", A)] + [("probe-failed", A)] * 9)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)

    def test_backoffLimits(self):
        """
        C{backoffMin} and C{backoffMax} set the backoff range.
        """
        accrual = self.accrual(backoffMin=1.0, backoffMax=2.0)
        node = self.byEndpoint[A]
        self.eject(accrual, node)
        self.assertTrue(1.0 <= node.ejectedUntil <= 1.2)
        self.assertRaises(ValueError, self.accrual, backoffMin=3.0, backoffMax=2.0)

    def test_outcomesOnEjectedIgnored(self):
        """
        Outcomes of tries on an ejected node (sent before the ejection, or
        while the balancer panics) neither end nor extend the ejection.
        """
        accrual = self.accrual()
        node = self.byEndpoint[A]
        self.eject(accrual, node)
        until = node.ejectedUntil
        for _ in range(10):
            accrual.failure(node)
        accrual.success(node)
        accrual.picked(node)
        accrual.abandon(node)
        self.assertEqual((node.state, node.ejectedUntil, node.backoffStep), ("ejected", until, 1))
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.assertEqual(self.events, [("ejected", A)])

    def test_staleOutcomeOnProbingIgnored(self):
        """
        On a probing node whose probe was not sent, an outcome is from a try
        sent before the ejection: it decides nothing.
        """
        accrual = self.accrual()
        node = self.byEndpoint[A]
        self.eject(accrual, node)
        self.clock.advance(10)
        accrual.success(node)
        self.assertEqual(node.state, "probing")
        accrual.failure(node)
        self.assertEqual(node.state, "probing")
        self.assertEqual(node.backoffStep, 1)

    def test_abandonedProbe(self):
        """
        A probe that ended without a verdict frees the node for another
        probe.
        """
        accrual = self.accrual()
        node = self.byEndpoint[A]
        self.eject(accrual, node)
        self.clock.advance(10)
        self.pickProbe(accrual, node)
        accrual.abandon(node)
        self.assertEqual((node.state, node.probeInFlight), ("probing", False))
        self.assertIn(node, self.picks(200))
        self.pickProbe(accrual, node)
        accrual.success(node)
        self.assertEqual(node.state, "live")

    def test_pickedOnLiveNodeChangesNothing(self):
        """
        C{picked} on a live node does nothing.
        """
        accrual = self.accrual()
        node = self.byEndpoint[A]
        accrual.picked(node)
        self.assertEqual((node.state, node.probeInFlight), ("live", False))

    def test_drainingUntouched(self):
        """
        Accrual never changes a draining node: failures do not eject it, and
        a node drained while ejected stays draining when its backoff ends.
        """
        accrual = self.accrual()
        node = self.byEndpoint[A]
        node.state = "draining"
        self.balancer.refresh()
        for _ in range(10):
            accrual.failure(node)
        accrual.success(node)
        self.assertEqual(node.state, "draining")
        self.assertEqual(self.clock.getDelayedCalls(), [])

        other = self.byEndpoint[B]
        self.eject(accrual, other)
        other.state = "draining"
        self.balancer.refresh()
        self.clock.advance(10)
        self.assertEqual(other.state, "draining")
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.events, [("ejected", B)])

    def test_cancel(self):
        """
        C{cancel} leaves no pending delayed call, and the accrual then does
        nothing: ejected nodes stay ejected, failures eject no more.
        """
        accrual = self.accrual()
        self.eject(accrual, self.byEndpoint[A])
        self.eject(accrual, self.byEndpoint[B])
        self.assertEqual(len(self.clock.getDelayedCalls()), 2)
        accrual.cancel()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        for _ in range(5):
            accrual.failure(self.byEndpoint[C])
        self.assertEqual(self.byEndpoint[C].state, "live")
        self.clock.advance(1000)
        self.assertEqual(self.byEndpoint[A].state, "ejected")
        self.assertEqual(self.clock.getDelayedCalls(), [])
        accrual.cancel()

    def test_forget(self):
        """
        C{forget} cancels the probe of a node removed from the balancer.
        """
        accrual = self.accrual()
        node = self.byEndpoint[A]
        self.eject(accrual, node)
        self.balancer.update(frozenset({B, C}))
        accrual.forget(node)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        accrual.forget(node)

    def test_replacement(self):
        """
        A new accrual adopts the nodes of a cancelled one: the probe of an
        ejected node is scheduled at the same time, and a probe in flight
        that the old accrual would never judge is allowed again.
        """
        old = self.accrual()
        a, b = self.byEndpoint[A], self.byEndpoint[B]
        self.eject(old, a)
        self.eject(old, b)
        self.clock.advance(b.ejectedUntil - self.clock.seconds())
        self.assertEqual(b.state, "probing")
        self.pickProbe(old, b)
        old.cancel()
        until = a.ejectedUntil
        new = self.accrual(SuccessRateRequests(0.5, 4))
        (call,) = self.clock.getDelayedCalls()
        self.assertEqual(call.getTime(), until)
        self.assertFalse(b.probeInFlight)
        self.assertIn(b, self.picks(200))
        self.clock.advance(until - self.clock.seconds())
        self.assertEqual(a.state, "probing")
        self.pickProbe(new, a)
        new.success(a)
        self.assertEqual(a.state, "live")
        new.cancel()

    def test_adoptEjectedWithoutDeadline(self):
        """
        A node found ejected without a deadline is probed at once.
        """
        node = self.byEndpoint[A]
        node.state = "ejected"
        self.accrual()
        self.clock.advance(0)
        self.assertEqual(node.state, "probing")

    def test_failingEventCallbackLogged(self):
        """
        An C{onEvent} that raises is logged; the ejection still happens.
        """

        def onEvent(kind, node):
            raise RuntimeError("metrics")

        accrual = FailureAccrual(
            ConsecutiveFailures(1), self.balancer, clock=self.clock, onEvent=onEvent, panicShare=0.0
        )
        accrual.failure(self.byEndpoint[A])
        self.assertEqual(self.byEndpoint[A].state, "ejected")
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_badSettings(self):
        """
        A panic share outside 0 to 1, or a latency factor below 1 or a
        negative duration, is refused.
        """
        self.assertRaises(ValueError, self.accrual, panicShare=1.5)
        self.assertRaises(ValueError, self.accrual, latency=(0.5, 10.0))
        self.assertRaises(ValueError, self.accrual, latency=(2.0, -1.0))

    def test_repr(self):
        """
        The repr names the policy.
        """
        self.assertIn("3 consecutive failures", repr(self.accrual()))


class RoundRobinProbeTests(AccrualTestsMixin, SynchronousTestCase):
    """
    The single probe holds with a balancer that picks in turn.
    """

    balancerClass = RoundRobin

    def test_exactlyOneProbe(self):
        """
        Round robin picks a probing node once, then skips it while its probe
        is in flight.
        """
        accrual = self.accrual()
        node = self.byEndpoint[A]
        self.eject(accrual, node)
        self.clock.advance(10)
        picked = [self.balancer.pick() for _ in range(3)]
        for p in picked:
            accrual.picked(p)
        self.assertEqual(picked.count(node), 1)
        for _ in range(30):
            self.assertIsNot(self.balancer.pick(), node)


class SuccessRateTests(AccrualTestsMixin, SynchronousTestCase):
    """
    The success-rate policies.
    """

    def test_requestsJudgedOnceFull(self):
        """
        C{SuccessRateRequests} judges nothing before C{requests} outcomes:
        9 failures of 10 needed leave the node live, the 10th ejects it.
        """
        accrual = self.accrual(SuccessRateRequests(0.8, 10))
        node = self.byEndpoint[A]
        for _ in range(9):
            accrual.failure(node)
        self.assertEqual(node.state, "live")
        accrual.failure(node)
        self.assertEqual(node.state, "ejected")

    def test_requestsRateThreshold(self):
        """
        A success rate at the threshold is kept; one below ejects.
        """
        accrual = self.accrual(SuccessRateRequests(0.8, 10))
        node = self.byEndpoint[A]
        for _ in range(8):
            accrual.success(node)
        accrual.failure(node)
        accrual.failure(node)
        self.assertEqual(node.state, "live")
        accrual.failure(node)
        self.assertEqual(node.state, "ejected")

    def test_requestsOldOutcomesRollOut(self):
        """
        Only the last C{requests} outcomes count: old failures roll out.
        """
        accrual = self.accrual(SuccessRateRequests(0.8, 10))
        node = self.byEndpoint[A]
        accrual.failure(node)
        accrual.failure(node)
        for _ in range(8):
            accrual.success(node)
        for _ in range(20):
            accrual.success(node)
            accrual.success(node)
            accrual.success(node)
            accrual.success(node)
            accrual.failure(node)
            self.assertEqual(node.state, "live")

    def test_requestsResetOnRevival(self):
        """
        A revived node starts from an empty record.
        """
        accrual = self.accrual(SuccessRateRequests(0.5, 4))
        node = self.byEndpoint[A]
        self.eject(accrual, node)
        self.clock.advance(10)
        self.pickProbe(accrual, node)
        accrual.success(node)
        for _ in range(3):
            accrual.failure(node)
        self.assertEqual(node.state, "live")

    def test_windowMinRequests(self):
        """
        C{SuccessRateWindow} judges once C{minRequests} outcomes are in the
        window; outcomes older than the window do not count.
        """
        accrual = self.accrual(SuccessRateWindow(0.5, 10.0, 4))
        node = self.byEndpoint[A]
        for _ in range(3):
            accrual.failure(node)
        self.assertEqual(node.state, "live")
        self.clock.advance(10)
        for _ in range(3):
            accrual.failure(node)
        self.assertEqual(node.state, "live")
        self.clock.advance(5)
        accrual.failure(node)
        self.assertEqual(node.state, "ejected")

    def test_windowRate(self):
        """
        The success rate in the window decides: 4 of 7 is enough at 50%, 4
        of 9 is not.
        """
        accrual = self.accrual(SuccessRateWindow(0.5, 10.0, 4))
        node = self.byEndpoint[A]
        for _ in range(4):
            accrual.success(node)
            self.clock.advance(1)
        for _ in range(3):
            accrual.failure(node)
        self.assertEqual(node.state, "live")
        accrual.failure(node)
        self.assertEqual(node.state, "live")
        accrual.failure(node)
        self.assertEqual(node.state, "ejected")

    def test_windowSuccessesExpire(self):
        """
        Successes that left the window no longer hold the rate up.
        """
        accrual = self.accrual(SuccessRateWindow(0.5, 10.0, 2))
        node = self.byEndpoint[A]
        for _ in range(10):
            accrual.success(node)
        self.clock.advance(5)
        accrual.failure(node)
        self.assertEqual(node.state, "live")
        self.clock.advance(5)
        accrual.failure(node)
        self.assertEqual(node.state, "ejected")


class PanicTests(AccrualTestsMixin, SynchronousTestCase):
    """
    Accrual with the balancer's panic floor.
    """

    def test_defaultPanicShare(self):
        """
        The accrual sets the balancer's panic floor, 0.5 by default.
        """
        FailureAccrual(ConsecutiveFailures(), self.balancer, clock=self.clock)
        self.assertEqual(self.balancer.panicShare, 0.5)

    def test_panicFloor(self):
        """
        With a share of 0.5, ejecting 2 of 3 nodes sends the balancer into
        panic: every node is used again, the panic is counted and reported
        once; a node coming back to probing ends it.
        """
        accrual = self.accrual(ConsecutiveFailures(1), panicShare=0.5)
        a, b, c = self.byEndpoint[A], self.byEndpoint[B], self.byEndpoint[C]
        accrual.failure(a)
        self.assertFalse(self.balancer.panicking)
        self.assertEqual(self.picks(), {b, c})
        self.clock.advance(1)
        accrual.failure(b)
        self.assertTrue(self.balancer.panicking)
        self.assertEqual(self.balancer.panics, 1)
        self.assertEqual(self.picks(300), {a, b, c})
        self.assertEqual(self.events, [("ejected", A), ("ejected", B), ("panic", B)])
        # Ignored outcomes of panic traffic on ejected nodes.
        accrual.failure(a)
        accrual.success(b)
        self.assertEqual((a.state, b.state), ("ejected", "ejected"))
        self.clock.advance(a.ejectedUntil - self.clock.seconds())
        self.assertEqual(a.state, "probing")
        self.assertFalse(self.balancer.panicking)
        self.assertEqual(self.balancer.panics, 1)
        self.assertNotIn(b, self.picks(300))


class LatencyTests(AccrualTestsMixin, SynchronousTestCase):
    """
    Ejection of nodes much slower than the others.
    """

    endpoints = frozenset({A, B, C, D})

    def setCosts(self, **costs):
        for name, cost in costs.items():
            self.byEndpoint[globals()[name]].cost = cost

    def test_slowNodeEjected(self):
        """
        A node whose cost stays above C{factor} times the median for
        C{duration} seconds is ejected like a failing one.
        """
        accrual = self.accrual(latency=(2.0, 10.0))
        node = self.byEndpoint[A]
        self.setCosts(A=100.0, B=10.0, C=12.0, D=9.0)
        accrual.success(node)
        self.assertEqual((node.state, node.latencySince), ("live", 0.0))
        self.clock.advance(5)
        accrual.failure(node)
        self.assertEqual(node.state, "live")
        self.clock.advance(4.9)
        accrual.success(node)
        self.assertEqual(node.state, "live")
        self.clock.advance(0.1)
        accrual.success(node)
        self.assertEqual(node.state, "ejected")
        self.assertIsNone(node.latencySince)
        self.assertEqual(self.events, [("ejected", A)])

    def test_mustStaySlow(self):
        """
        A node that falls back under the threshold starts its time over.
        """
        accrual = self.accrual(latency=(2.0, 10.0))
        node = self.byEndpoint[A]
        self.setCosts(A=100.0, B=10.0, C=10.0, D=10.0)
        accrual.success(node)
        self.clock.advance(5)
        self.setCosts(A=15.0)
        accrual.success(node)
        self.assertIsNone(node.latencySince)
        self.clock.advance(1)
        self.setCosts(A=100.0)
        accrual.success(node)
        self.clock.advance(9)
        accrual.success(node)
        self.assertEqual(node.state, "live")
        self.clock.advance(1)
        accrual.success(node)
        self.assertEqual(node.state, "ejected")

    def test_medianNotMean(self):
        """
        The threshold is relative to the median: nodes slower than the mean
        but not than twice the median stay.
        """
        accrual = self.accrual(latency=(2.0, 0.0))
        self.setCosts(A=30.0, B=10.0, C=20.0, D=15.0)
        for _ in range(3):
            accrual.success(self.byEndpoint[A])
            self.clock.advance(5)
        self.assertEqual(self.byEndpoint[A].state, "live")

    def test_tooFewMeasured(self):
        """
        With fewer than three measured live nodes, latency ejects nothing.
        """
        accrual = self.accrual(latency=(2.0, 0.0))
        self.setCosts(A=1000.0, B=10.0)
        for _ in range(3):
            accrual.success(self.byEndpoint[A])
            self.clock.advance(5)
        self.assertEqual(self.byEndpoint[A].state, "live")

    def test_offByDefault(self):
        """
        Without C{latency}, a slow node is never ejected.
        """
        accrual = self.accrual()
        self.setCosts(A=1000.0, B=10.0, C=10.0, D=10.0)
        for _ in range(3):
            accrual.success(self.byEndpoint[A])
            self.clock.advance(100)
        self.assertEqual(self.byEndpoint[A].state, "live")

    def test_withRealCosts(self):
        """
        With costs measured by the balancer's C{start}/C{finish}, as the
        exchange produces them, a node answering ten times slower than the
        others is ejected after the duration.
        """
        accrual = self.accrual(latency=(3.0, 5.0))
        slow = self.byEndpoint[A]
        for _ in range(20):
            for node in self.balancer.nodes():
                started = self.balancer.start(node)
                self.clock.advance(0.5 if node is slow else 0.05)
                self.balancer.finish(node, started, True)
                accrual.success(node)
            if slow.state == "ejected":
                break
        self.assertEqual(slow.state, "ejected")
        self.assertEqual({self.byEndpoint[e].state for e in (B, C, D)}, {"live"})
        self.assertTrue(5.0 <= self.clock.seconds() <= 7.5, self.clock.seconds())
