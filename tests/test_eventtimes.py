"""
Times read once per event and handed on: a timeout added at a time the
caller read, and a latency sample taken at the time of the read its
response head came in; and no time read where none is needed (failure
accrual's success with consecutive failures).
"""

from __future__ import annotations

import random
from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from meshproxy.balancing.roundrobin import RoundRobin
from meshproxy.discovery.endpoints import Endpoint
from meshproxy.http.timeouts import TimeoutQueue
from meshproxy.resilience.accrual import ConsecutiveFailures, FailureAccrual, SuccessRateWindow

from .test_http_server import Harness


class TimeoutAtGivenTimeTests(SynchronousTestCase):
    def test_deadlineFromTheGivenTime(self) -> None:
        """
        A timeout added with C{now} fires C{duration} after it, not after
        the clock's time.
        """
        clock = Clock()
        clock.advance(5.0)
        fired: list[float] = []
        queue = TimeoutQueue(clock, 10.0)
        timeout = queue.add(lambda: fired.append(clock.seconds()), 4.0)
        self.assertEqual(timeout.getTime(), 14.0)
        clock.advance(8.999)
        self.assertEqual(fired, [])
        clock.advance(0.001)
        self.assertEqual(fired, [14.0])


class MeasuredAtGivenTimeTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.balancer = RoundRobin(clock=self.clock, random=random.Random(1))
        self.balancer.update(frozenset([Endpoint("10.0.0.1", 80)]))
        [self.node] = self.balancer.nodes()

    def test_latencyUntilTheGivenTime(self) -> None:
        """
        C{measured} with C{now} takes the latency from the start until
        C{now}, whatever the clock says, and stamps the node with it.
        """
        start = self.balancer.start(self.node)
        self.clock.advance(0.5)
        self.balancer.measured(self.node, start, start + 0.02)
        self.assertAlmostEqual(self.node.cost, 20.0)
        self.assertEqual(self.node.stamp, start + 0.02)

    def test_latencyUntilTheClock(self) -> None:
        """
        Without C{now}, the clock is read.
        """
        start = self.balancer.start(self.node)
        self.clock.advance(0.03)
        self.balancer.measured(self.node, start)
        self.assertAlmostEqual(self.node.cost, 30.0)


class ReadingsPerRequestTests(SynchronousTestCase):
    def test_noReadingInTheFilters(self) -> None:
        """
        A request proxied on a pooled connection, its response in one read:
        the retry budget's deposit, the total timeout and the balancer's
        latency sample read no clock of their own (they take the exchange's
        and the upstream read's times), nor does failure accrual's success
        (consecutive failures need no time); what is left is the exchange's
        start, the upstream read and the balancer's start of the try. The
        timeout queue's timer, armed for the first request, is still armed
        when the last one ended: it is not armed again.
        """
        def functionOf(frame: Any) -> str | None:
            name = frame.f_globals["__name__"]
            if name.startswith("twisted."):
                frame = frame.f_back
                name = frame.f_globals["__name__"]
            if name.startswith("meshproxy."):
                return "%s.%s" % (name, frame.f_code.co_name)
            return None

        proto, transport, up, counts = Harness().pooledClockReadings(functionOf)
        proto.dataReceived(b"GET / HTTP/1.1\r\nHost: hello\r\n\r\n")
        up.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        self.assertTrue(transport.value().endswith(b"ok"))
        self.assertEqual(
            counts,
            {
                "meshproxy.http.exchange.start": 1,
                "meshproxy.http.client.dataReceived": 1,
                "meshproxy.balancing.base.start": 1,
            },
        )


class AccrualSuccessTimeTests(SynchronousTestCase):
    def accrual(self, policy, latency=None):  # type: ignore[no-untyped-def]
        clock = Clock()
        balancer = RoundRobin(clock=clock, random=random.Random(1))
        balancer.update(frozenset([Endpoint("10.0.0.1", 80)]))
        reads: list[float] = []
        seconds = clock.seconds

        def counting() -> float:
            reads.append(seconds())
            return reads[-1]

        accrual = FailureAccrual(
            policy, balancer, clock=clock, random=random.Random(2), latency=latency
        )
        clock.seconds = counting  # type: ignore[method-assign]
        [node] = balancer.nodes()
        return accrual, node, reads

    def test_consecutiveFailuresUntimed(self) -> None:
        """
        With consecutive failures and no latency ejection, a success reads
        no clock, and still starts the count of failures again.
        """
        accrual, node, reads = self.accrual(ConsecutiveFailures(2))
        accrual.failure(node)
        accrual.success(node)
        accrual.failure(node)
        self.assertEqual(node.state, "live")
        accrual.success(node)
        self.assertEqual(len(reads), 2)

    def test_othersTimed(self) -> None:
        """
        A policy that keeps time, or latency ejection, reads the clock at
        each success.
        """
        accrual, node, reads = self.accrual(SuccessRateWindow(0.5, 10.0, 5))
        accrual.success(node)
        self.assertEqual(len(reads), 1)
        accrual, node, reads = self.accrual(ConsecutiveFailures(2), latency=(2.0, 5.0))
        accrual.success(node)
        self.assertEqual(len(reads), 1)
