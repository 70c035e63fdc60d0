"""
L{MeshReactor.busyPoll}: off by default (one poll, as Twisted's), and when
set, polls without waiting for that long before the poll that would wait.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from meshproxy.reactor import MeshReactor


class _Poller:
    """
    An epoll stand-in: records each C{poll}'s timeout, answers nothing
    until C{readyAfter} polls were made, then one event on a descriptor
    nobody holds (the reactor skips it).
    """

    def __init__(self, readyAfter: int | None = None) -> None:
        self.timeouts: list[float] = []
        self.readyAfter = readyAfter

    def poll(self, timeout: float, maxevents: int) -> list[tuple[int, int]]:
        self.timeouts.append(timeout)
        if self.readyAfter is not None and len(self.timeouts) > self.readyAfter:
            return [(10_000, 1)]
        return []


class _Clock:
    """
    A monotonic clock that moves C{step} seconds each time it is read.
    """

    def __init__(self, step: float) -> None:
        self.now = 100.0
        self.step = step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


class BusyPollTests(SynchronousTestCase):
    def reactor(self, busyPoll: float, poller: _Poller, step: float = 10e-6) -> MeshReactor:
        reactor = MeshReactor(busyPoll)
        real = reactor._poller
        self.addCleanup(real.close)
        reactor._poller = poller  # type: ignore[assignment]
        reactor._monotonic = _Clock(step)  # type: ignore[method-assign]
        return reactor

    def test_offByDefault(self) -> None:
        """
        Without a busy poll, one poll waits for the whole timeout, as
        Twisted's does.
        """
        poller = _Poller()
        reactor = self.reactor(0.0, poller)
        self.assertEqual(MeshReactor().busyPoll, 0.0)
        reactor.doPoll(2.5)
        reactor.doPoll(None)
        self.assertEqual(poller.timeouts, [2.5, -1])

    def test_eventDuringTheSpinIsNotWaitedFor(self) -> None:
        """
        Something ready while the reactor spins is found by a poll that
        does not wait: no poll waits.
        """
        poller = _Poller(readyAfter=3)
        reactor = self.reactor(100e-6, poller)
        reactor.doPoll(5.0)
        self.assertEqual(poller.timeouts, [0, 0, 0, 0])

    def test_nothingReadyThenWaitsForTheRest(self) -> None:
        """
        Nothing ready within the busy poll: then a poll waits for what is
        left of the timeout (forever when there was no timeout).
        """
        poller = _Poller()
        reactor = self.reactor(100e-6, poller, step=30e-6)
        reactor.doPoll(1.0)
        spins = poller.timeouts[:-1]
        self.assertEqual(spins, [0] * len(spins))
        self.assertEqual(len(spins), 4)
        self.assertAlmostEqual(poller.timeouts[-1], 1.0 - 120e-6)
        poller.timeouts.clear()
        reactor.doPoll(None)
        self.assertEqual(poller.timeouts[-1], -1)
        self.assertEqual(poller.timeouts[:-1], [0] * 4)

    def test_shortTimeoutNotSpun(self) -> None:
        """
        A timeout no longer than the busy poll (a timer due soon), or none
        (work is due now), is one poll, as without a busy poll.
        """
        poller = _Poller()
        reactor = self.reactor(100e-6, poller)
        reactor.doPoll(50e-6)
        reactor.doPoll(0)
        self.assertEqual(poller.timeouts, [50e-6, 0])

    def test_negativeRefused(self) -> None:
        """
        A negative busy poll is a L{ValueError}.
        """
        self.assertRaises(ValueError, MeshReactor, -1e-6)
