"""
Tests for L{meshproxy.http.timeouts}: a L{TimeoutQueue} fires each timeout
when a C{callLater} of the same delay would have, with one reactor timer
for all of them; and the exchanges' total and per-try timeouts use the
router's queues.
"""

from __future__ import annotations

import random

from twisted.internet.error import AlreadyCalled, AlreadyCancelled
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from meshproxy.http.exchange import Exchange
from meshproxy.http.timeouts import Timeout, TimeoutQueue

from .test_http_server import CONFIG, Harness


class TimeoutQueueTests(SynchronousTestCase):
    """
    L{TimeoutQueue} on a fake clock.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.fired: list[tuple[str, float]] = []

    def _callback(self, name: str):  # type: ignore[no-untyped-def]
        return lambda: self.fired.append((name, self.clock.seconds()))

    def test_firesExactlyAfterDuration(self) -> None:
        """
        A timeout fires once its duration has passed, not a moment before.
        """
        queue = TimeoutQueue(self.clock, 10.0)
        timeout = queue.add(self._callback("a"))
        self.clock.advance(9.999)
        self.assertEqual(self.fired, [])
        self.assertTrue(timeout.active())
        self.clock.advance(0.001)
        self.assertEqual(self.fired, [("a", 10.0)])
        self.assertFalse(timeout.active())
        self.assertEqual(len(queue), 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_eachAtItsOwnDeadline(self) -> None:
        """
        Timeouts added at different times fire each at its own deadline,
        also after the oldest was cancelled (the reactor timer, due early,
        re-arms for the next one).
        """
        queue = TimeoutQueue(self.clock, 10.0)
        first = queue.add(self._callback("a"))
        self.clock.advance(0.3)
        queue.add(self._callback("b"))
        self.clock.advance(0.4)
        queue.add(self._callback("c"))
        first.cancel()
        self.clock.advance(10.3 - 0.7 - 1e-9)
        self.assertEqual(self.fired, [])
        self.clock.rightNow = 0.3 + 10.0
        self.clock.advance(0)
        self.assertEqual(self.fired, [("b", 0.3 + 10.0)])
        self.clock.rightNow = 0.3 + 0.4 + 10.0 - 1e-9
        self.clock.advance(0)
        self.assertEqual(len(self.fired), 1)
        self.clock.rightNow = 0.3 + 0.4 + 10.0
        self.clock.advance(0)
        self.assertEqual(self.fired[1], ("c", 0.3 + 0.4 + 10.0))

    def test_oneReactorTimerForAll(self) -> None:
        """
        However many timeouts are pending, the queue keeps one reactor
        timer; once every timeout is cancelled it stays armed until its
        time, then none is left.
        """
        queue = TimeoutQueue(self.clock, 5.0)
        timeouts = []
        for _ in range(100):
            timeouts.append(queue.add(self._callback("x")))
            self.clock.advance(0.01)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.assertEqual(len(queue), 100)
        for timeout in timeouts:
            timeout.cancel()
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.assertEqual(len(queue), 0)
        self.clock.advance(10)
        self.assertEqual(self.fired, [])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_emptiedQueueKeepsItsTimer(self) -> None:
        """
        One timeout at a time, each cancelled before the next is added (one
        request at a time): the reactor timer armed for the first serves
        them all, and still fires each at its own deadline.
        """
        queue = TimeoutQueue(self.clock, 5.0)
        queue.add(self._callback("a")).cancel()
        [timer] = self.clock.getDelayedCalls()
        for _ in range(10):
            self.clock.advance(0.2)
            queue.add(self._callback("b")).cancel()
        self.assertEqual(self.clock.getDelayedCalls(), [timer])
        self.clock.advance(0.2)
        queue.add(self._callback("c"))
        self.assertEqual(self.clock.getDelayedCalls(), [timer])
        self.clock.advance(5.0 - 0.2 * 11)
        self.assertEqual(self.fired, [])
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(0.2 * 11 - 1e-9)
        self.assertEqual(self.fired, [])
        self.clock.advance(1e-9)
        self.assertEqual(self.fired, [("c", self.clock.seconds())])
        self.assertAlmostEqual(self.clock.seconds(), 0.2 * 11 + 5.0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_closeCancelsTheKeptTimer(self) -> None:
        """
        L{TimeoutQueue.close} cancels the timer kept while the queue is
        empty; with a timeout pending it changes nothing; a timeout added
        after it arms a timer again.
        """
        queue = TimeoutQueue(self.clock, 5.0)
        pending = queue.add(self._callback("a"))
        queue.close()
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        pending.cancel()
        queue.close()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        queue.close()
        queue.add(self._callback("b"))
        self.clock.advance(5.0)
        self.assertEqual(self.fired, [("b", 5.0)])

    def test_sameDeadlineInOrderAdded(self) -> None:
        """
        Timeouts with the same deadline fire in the order they were added.
        """
        queue = TimeoutQueue(self.clock, 1.0)
        for name in "abc":
            queue.add(self._callback(name))
        self.clock.advance(1.0)
        self.assertEqual([name for name, _ in self.fired], ["a", "b", "c"])

    def test_cancelTwiceOrAfterFiring(self) -> None:
        """
        Like a L{DelayedCall}, a timeout cannot be cancelled twice, nor
        after it fired.
        """
        queue = TimeoutQueue(self.clock, 1.0)
        cancelled = queue.add(self._callback("a"))
        cancelled.cancel()
        self.assertRaises(AlreadyCancelled, cancelled.cancel)
        called = queue.add(self._callback("b"))
        self.clock.advance(1.0)
        self.assertRaises(AlreadyCalled, called.cancel)
        self.assertEqual(self.fired, [("b", 1.0)])
        self.assertEqual(called.getTime(), 1.0)

    def test_callbacksAddingAndCancelling(self) -> None:
        """
        A callback may add a timeout (it gets its full duration, under the
        one reactor timer) and cancel another that was due at the same time.
        """
        queue = TimeoutQueue(self.clock, 2.0)
        later: list[Timeout] = []

        def first() -> None:
            self.fired.append(("a", self.clock.seconds()))
            second.cancel()
            later.append(queue.add(self._callback("c")))

        queue.add(first)
        second = queue.add(self._callback("b"))
        self.clock.advance(2.0)
        self.assertEqual(self.fired, [("a", 2.0)])
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(2.0)
        self.assertEqual(self.fired, [("a", 2.0), ("c", 4.0)])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_failingCallbackLoggedOthersFire(self) -> None:
        """
        A callback that raises is logged; the timeouts after it still
        fire, and later ones still get a reactor timer.
        """
        queue = TimeoutQueue(self.clock, 1.0)

        def boom() -> None:
            raise ZeroDivisionError()

        queue.add(boom)
        queue.add(self._callback("b"))
        self.clock.advance(0.5)
        queue.add(self._callback("c"))
        self.clock.advance(0.5)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.assertEqual(self.fired, [("b", 1.0)])
        self.clock.advance(0.5)
        self.assertEqual(self.fired, [("b", 1.0), ("c", 1.5)])

    def test_negativeDurationRejected(self) -> None:
        """
        A negative duration is a L{ValueError}.
        """
        self.assertRaises(ValueError, TimeoutQueue, self.clock, -1.0)

    def test_sameTimesAsCallLater(self) -> None:
        """
        Under random adds, cancels and clock steps, every timeout fires (or
        not) at the very time a C{callLater} with the same delay on a twin
        clock does.
        """
        rng = random.Random(4)
        duration = 2.7
        twin = Clock()
        queue = TimeoutQueue(self.clock, duration)
        mine: list[Timeout] = []
        theirs = []
        expected: list[tuple[str, float]] = []
        for step in range(3000):
            action = rng.random()
            if action < 0.4:
                name = str(step)
                mine.append(queue.add(self._callback(name)))
                theirs.append(twin.callLater(
                    duration, lambda n=name: expected.append((n, twin.seconds()))))
            elif action < 0.7 and mine:
                i = rng.randrange(len(mine))
                if mine[i].active():
                    self.assertTrue(theirs[i].active())
                    mine[i].cancel()
                    theirs[i].cancel()
            else:
                amount = rng.choice([0.0, 0.001, 0.1, 0.37, 1.3, 3.1])
                self.clock.advance(amount)
                twin.advance(amount)
                self.assertEqual(self.fired, expected)
        self.clock.advance(duration)
        twin.advance(duration)
        self.assertEqual(self.fired, expected)
        self.assertGreater(len(expected), 100)
        self.assertEqual(self.clock.getDelayedCalls(), [])


class ExchangeTimeoutTests(SynchronousTestCase):
    """
    The exchanges' total and per-try timeouts use the router's queues.
    """

    def _timers(self, h: Harness) -> list[object]:
        return [call.func for call in h.reactor.getDelayedCalls()]

    def test_inFlightRequestsShareOneTimer(self) -> None:
        """
        Requests in flight on several connections hold no reactor timer of
        their own for their total timeout: the router's queue holds one,
        kept once they are answered, and none is left once the router
        stops.
        """
        h = Harness()
        clients = []
        for _ in range(3):
            proto, transport = h.client()
            proto.dataReceived(b"GET / HTTP/1.1\r\nHost: hello\r\n\r\n")
            clients.append(transport)
        self.assertEqual(len(h.router.timeouts), 3)
        timers = self._timers(h)
        self.assertEqual(timers.count(h.router.timeouts._expire), 1)
        self.assertFalse(any(getattr(f, "__func__", None) is Exchange._timedOut for f in timers))
        for index in range(3):
            upstream, _ = h.upstream(index)
            upstream.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        for transport in clients:
            self.assertTrue(transport.value().endswith(b"\r\n\r\nok"))
        self.assertEqual(len(h.router.timeouts), 0)
        # Kept for the next requests, until the router stops.
        self.assertEqual(self._timers(h).count(h.router.timeouts._expire), 1)
        h.router.stop()
        self.assertNotIn(h.router.timeouts._expire, self._timers(h))

    def test_totalTimeoutFiresFromQueueAtDeadline(self) -> None:
        """
        A request without an answer gets its 504 at its total timeout
        exactly, from the queue.
        """
        h = Harness(CONFIG.replace("timeouts: {total: 60s}", "timeouts: {total: 2s}"))
        proto, transport = h.client()
        h.reactor.advance(0.5)
        proto.dataReceived(b"GET / HTTP/1.1\r\nHost: hello\r\n\r\n")
        h.upstream(0)
        self.assertEqual(len(h.router.timeouts), 1)
        h.reactor.advance(1.999)
        self.assertEqual(transport.value(), b"")
        h.reactor.advance(0.001)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 504 "))
        self.assertEqual(len(h.router.timeouts), 0)

    def test_perTryTimeoutFromQueue(self) -> None:
        """
        With C{perTry}, each try's timeout is in the router's per-try
        queue, and fires at C{perTry}.
        """
        h = Harness(CONFIG.replace("timeouts: {total: 60s}", "timeouts: {total: 60s, perTry: 1s}"))
        proto, transport = h.client()
        proto.dataReceived(b"GET / HTTP/1.1\r\nHost: hello\r\n\r\n")
        _, upstreamTransport = h.upstream(0)
        tries = h.router.tryTimeouts
        assert tries is not None
        self.assertEqual(len(tries), 1)
        h.reactor.advance(0.999)
        self.assertFalse(upstreamTransport.disconnecting)
        h.reactor.advance(0.001)
        # The try timed out: its connection dropped, a retry (with a
        # per-try timeout of its own) on a new connection.
        self.assertTrue(upstreamTransport.disconnecting or upstreamTransport.disconnected)
        self.assertEqual(len(h.reactor.tcpClients), 2)
        self.assertEqual(len(tries), 1)
