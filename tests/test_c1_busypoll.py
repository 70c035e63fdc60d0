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


class BusyPollConfigTests(SynchronousTestCase):
    """
    The config's C{busyPoll}: a duration from C{0s} (the default) to
    C{1ms}, given to the process's L{MeshReactor} when it serves the data
    path itself.
    """

    BASE = (
        "namers: [{kind: static, prefix: /#/x, services: {a: [\"127.0.0.1:1\"]}}]\n"
        'routers: [{name: web, listen: "tcp:0", rules: "/svc => /#/x;"}]\n'
    )

    def test_defaultOff(self) -> None:
        from meshproxy.config import parseConfig

        self.assertEqual(parseConfig(self.BASE, "t").busyPoll, 0.0)

    def test_values(self) -> None:
        from meshproxy.config import parseConfig

        for text, seconds in [("0s", 0.0), ("0.1ms", 0.0001), ("1ms", 0.001)]:
            config = parseConfig(self.BASE + "busyPoll: %s\n" % (text,), "t")
            self.assertEqual(config.busyPoll, seconds)

    def test_badValues(self) -> None:
        from meshproxy.config import ConfigError, parseConfig

        for text, message in [
            ("2ms", 'busyPoll: expected a duration of at most 1ms, got "2ms"'),
            ("100", "busyPoll: expected a duration like"),
            ("-1ms", "busyPoll: "),
        ]:
            with self.assertRaises(ConfigError) as raised:
                parseConfig(self.BASE + "busyPoll: %s\n" % (text,), "t")
            self.assertIn(message, str(raised.exception))

    def test_givenToTheReactor(self) -> None:
        """
        C{makeService} gives the config's busy poll to a L{MeshReactor};
        another reactor is left as it is.
        """
        from twisted.internet.testing import MemoryReactorClock

        from meshproxy.config import parseConfig
        from meshproxy.tap import Options, makeService

        options = Options()
        options.parseOptions([])
        options.meshConfig = parseConfig(
            'admin: {listen: "tcp:0:interface=127.0.0.1"}\n' + self.BASE + "busyPoll: 0.2ms\n",
            "t",
        )
        reactor = MeshReactor()
        self.addCleanup(reactor._poller.close)
        makeService(options, reactor=reactor)
        self.assertEqual(reactor.busyPoll, 0.0002)
        other = MemoryReactorClock()
        makeService(options, reactor=other)
        self.assertFalse(hasattr(other, "busyPoll"))
