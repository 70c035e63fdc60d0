"""
Tests for L{meshproxy.resilience.window.SlidingCounts}'s current slot (kept
as its end time, so that an event is a compare) and for
L{meshproxy.resilience.retries.RetryPolicy.admit} at a given time.
"""

import random

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from meshproxy.resilience.backoff import Backoff
from meshproxy.resilience.budget import RetryBudget
from meshproxy.resilience.retries import RetryPolicy
from meshproxy.resilience.window import SlidingCounts


class _DividingCounts:
    """
    The ring as it was written before: each event's slot by C{int(now //
    width)}. The reference the end-time ring is compared with.
    """

    def __init__(self, window, slots, now):
        self.width = window / slots
        self.size = slots
        self.As = [0] * slots
        self.Bs = [0] * slots
        self.slot = int(now // self.width)
        self.a = self.b = 0

    def advance(self, now):
        slot = int(now // self.width)
        if slot <= self.slot:
            return
        if slot - self.slot >= self.size:
            self.As = [0] * self.size
            self.Bs = [0] * self.size
            self.a = self.b = 0
        else:
            for k in range(self.slot + 1, slot + 1):
                i = k % self.size
                self.a -= self.As[i]
                self.b -= self.Bs[i]
                self.As[i] = self.Bs[i] = 0
        self.slot = slot

    def addA(self, now):
        self.advance(now)
        self.As[self.slot % self.size] += 1
        self.a += 1

    def addB(self, now):
        self.advance(now)
        self.Bs[self.slot % self.size] += 1
        self.b += 1


class SlotEndTests(SynchronousTestCase):
    """
    L{SlidingCounts} knows its slot by the time it ends.
    """

    def test_eventAtTheEndStartsTheNextSlot(self):
        """
        An event exactly at a slot's end counts in the next slot: it expires
        a slot later than one just before the end.
        """
        counts = SlidingCounts(1.0, 4, 0.0)
        counts.addA(0.2499)
        counts.addA(0.25)
        self.assertEqual(counts.a, 2)
        counts.advance(1.0)
        self.assertEqual(counts.a, 1)
        counts.advance(1.25)
        self.assertEqual(counts.a, 0)

    def test_addBAdvances(self):
        """
        C{addB} past the slot's end expires what fell out of the window, as
        C{addA} does.
        """
        counts = SlidingCounts(1.0, 4, 0.0)
        counts.addA(0.0)
        counts.addB(0.0)
        counts.addB(1.0)
        self.assertEqual((counts.a, counts.b), (0, 1))

    def test_backwardsStaysInTheSlot(self):
        """
        After time went backwards, events count in the current slot until
        the clock passes its end again.
        """
        counts = SlidingCounts(1.0, 4, 10.0)
        counts.addA(10.1)
        counts.addA(3.0)
        counts.advance(10.9)
        self.assertEqual(counts.a, 2)
        counts.advance(11.0)
        self.assertEqual(counts.a, 0)

    def test_sameCountsAsDividing(self):
        """
        Over a long run of events at irregular times (steps within a slot,
        across slots, over whole windows, exactly on slot ends, and
        backwards), with slot widths that are not exact in binary, both
        counts are those of a ring that divides each event's time by the
        slot width.
        """
        rng = random.Random(14)
        for window, slots in [(10.0, 10), (1.0, 10), (0.3, 7), (2.5, 3)]:
            width = window / slots
            now = 1000.0 * rng.random()
            counts = SlidingCounts(window, slots, now)
            reference = _DividingCounts(window, slots, now)
            for _ in range(5000):
                roll = rng.random()
                if roll < 0.6:
                    now += width * rng.random() / 20
                elif roll < 0.8:
                    now += width * rng.random() * 3
                elif roll < 0.85:
                    now += window * 2 * rng.random()
                elif roll < 0.95:
                    now = (int(now // width) + 1) * width
                else:
                    now -= width * rng.random()
                if rng.random() < 0.7:
                    counts.addA(now)
                    reference.addA(now)
                else:
                    counts.addB(now)
                    reference.addB(now)
                self.assertEqual((counts.a, counts.b), (reference.a, reference.b))


def _policy(clock: Clock, budget: RetryBudget, connectBudget: RetryBudget) -> RetryPolicy:
    """
    A retry policy over two budgets, with no backoff.
    """
    return RetryPolicy(
        budget=budget,
        connectBudget=connectBudget,
        backoff=Backoff(0.0, 0.0, random=random.Random(0).random),
        maxRetries=5,
        clock=clock,
        count=lambda reason: None,
    )


class AdmitTests(SynchronousTestCase):
    """
    L{RetryPolicy.admit} credits both budgets at the time it is given.
    """

    def test_admitAtTheGivenTime(self):
        """
        The deposits count at the time passed, not at the clock's: they
        expire a window after it.
        """
        clock = Clock()
        budget = RetryBudget(100.0, 0.0, 10.0, clock=clock)
        connectBudget = RetryBudget(100.0, 0.0, 10.0, clock=clock)
        policy = _policy(clock, budget, connectBudget)
        clock.advance(3.0)
        policy.admit(7.5)
        # Counted at 3.0, they would have expired by 13.0.
        clock.advance(10.0)
        self.assertEqual((budget.balance, connectBudget.balance), (1, 1))
        clock.advance(4.0)
        self.assertEqual((budget.balance, connectBudget.balance), (0, 0))

    def test_admitsExpireAsDeposits(self) -> None:
        """
        Requests admitted over more than a window, across slot ends, count
        in both budgets exactly as deposits at the same times do.
        """
        clock = Clock()
        budget = RetryBudget(100.0, 0.0, 1.0, clock=clock)
        connectBudget = RetryBudget(100.0, 0.0, 1.0, clock=clock)
        reference = RetryBudget(100.0, 0.0, 1.0, clock=clock)
        policy = _policy(clock, budget, connectBudget)
        rng = random.Random(3)
        for _ in range(3000):
            clock.advance(rng.random() * 0.01)
            if rng.random() < 0.05:
                clock.advance(0.1)
            now = clock.seconds()
            policy.admit(now)
            reference.deposit(now)
            self.assertEqual(budget.counts.a, reference.counts.a)
            self.assertEqual(connectBudget.counts.a, reference.counts.a)
        self.assertEqual(budget.balance, reference.balance)
