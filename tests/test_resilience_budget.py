"""
Tests for L{meshproxy.resilience.budget} and L{meshproxy.resilience.window}.
"""

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from meshproxy.resilience.budget import RetryBudget
from meshproxy.resilience.window import SlidingCounts


def withdrawAll(budget, limit=100000):
    """
    Withdraw until refused.

    @return: how many withdrawals succeeded.
    """
    n = 0
    while n < limit and budget.tryWithdraw():
        n += 1
    return n


class RetryBudgetTests(SynchronousTestCase):
    """
    Tests for L{RetryBudget}.
    """

    def setUp(self):
        self.clock = Clock()

    def test_reserveWithoutTraffic(self):
        """
        With no request at all, C{minPerSecond * ttl} retries are allowed,
        and no more.
        """
        budget = RetryBudget(20.0, 10.0, 10.0, clock=self.clock)
        self.assertEqual(budget.balance, 100)
        self.assertEqual(withdrawAll(budget), 100)
        self.assertFalse(budget.tryWithdraw())
        self.assertEqual(budget.balance, 0)

    def test_defaults(self):
        """
        The defaults are 20%, 10 per second, over 10 seconds.
        """
        budget = RetryBudget(clock=self.clock)
        self.assertEqual((budget.percent, budget.minPerSecond, budget.ttl), (20.0, 10.0, 10.0))
        self.assertEqual(budget.balance, 100)

    def test_percentOfDeposits(self):
        """
        1000 requests at 20% earn exactly 200 retries on top of the reserve.
        """
        budget = RetryBudget(20.0, 0.0, 10.0, clock=self.clock)
        for _ in range(1000):
            budget.deposit()
        self.assertEqual(budget.balance, 200)
        self.assertEqual(withdrawAll(budget), 200)

        withReserve = RetryBudget(20.0, 10.0, 10.0, clock=self.clock)
        for _ in range(1000):
            withReserve.deposit()
        self.assertEqual(withdrawAll(withReserve), 300)

    def test_fractionalEarnings(self):
        """
        Each request earns a fraction of a retry: 4 requests at 20% do not
        make a retry, the fifth does; and 10 requests at 10% make exactly
        one despite float rounding.
        """
        budget = RetryBudget(20.0, 0.0, 10.0, clock=self.clock)
        for _ in range(4):
            budget.deposit()
        self.assertFalse(budget.tryWithdraw())
        budget.deposit()
        self.assertTrue(budget.tryWithdraw())
        self.assertFalse(budget.tryWithdraw())

        tenth = RetryBudget(10.0, 0.0, 10.0, clock=self.clock)
        for _ in range(10):
            tenth.deposit()
        self.assertEqual(withdrawAll(tenth), 1)

    def test_depositAtAGivenTime(self):
        """
        A deposit made at a time the caller gives counts from that time,
        not from the clock's: it expires C{ttl} seconds after it.
        """
        budget = RetryBudget(20.0, 0.0, 10.0, clock=self.clock)
        self.clock.advance(5.0)
        for _ in range(100):
            budget.deposit(1.0)
        self.clock.advance(5.5)
        self.assertEqual(budget.balance, 20)
        # 10 s after the given time (deposits made at the clock's time, 5,
        # would still count until 15).
        self.clock.advance(0.5)
        self.assertEqual(budget.balance, 0)

    def test_depositsExpire(self):
        """
        Requests stop earning retries once C{ttl} seconds old.
        """
        budget = RetryBudget(20.0, 0.0, 10.0, clock=self.clock)
        for _ in range(100):
            budget.deposit()
        self.clock.advance(9.5)
        self.assertEqual(budget.balance, 20)
        self.clock.advance(0.5)
        self.assertEqual(budget.balance, 0)
        self.assertFalse(budget.tryWithdraw())

    def test_withdrawalsExpire(self):
        """
        Retries stop counting against the budget once C{ttl} seconds old: a
        spent reserve is available again.
        """
        budget = RetryBudget(0.0, 1.0, 10.0, clock=self.clock)
        self.assertEqual(withdrawAll(budget), 10)
        self.clock.advance(5)
        self.assertFalse(budget.tryWithdraw())
        self.clock.advance(5)
        self.assertEqual(withdrawAll(budget), 10)

    def test_slidingWindow(self):
        """
        The window slides: requests of the first half expire before those of
        the second.
        """
        budget = RetryBudget(50.0, 0.0, 10.0, clock=self.clock)
        for _ in range(10):
            budget.deposit()
        self.clock.advance(5)
        for _ in range(20):
            budget.deposit()
        self.assertEqual(budget.balance, 15)
        self.clock.advance(5)
        self.assertEqual(budget.balance, 10)
        self.clock.advance(5)
        self.assertEqual(budget.balance, 0)

    def test_longIdle(self):
        """
        After an idle time much longer than the window, nothing of the past
        counts.
        """
        budget = RetryBudget(20.0, 1.0, 10.0, clock=self.clock)
        for _ in range(1000):
            budget.deposit()
        withdrawAll(budget)
        self.clock.advance(1e6)
        self.assertEqual(budget.balance, 10)

    def test_balanceNeverNegative(self):
        """
        When the requests that paid for retries expire before the retries,
        the balance is 0, not negative, and nothing can be withdrawn.
        """
        budget = RetryBudget(20.0, 0.0, 10.0, clock=self.clock)
        for _ in range(100):
            budget.deposit()
        self.clock.advance(5)
        self.assertEqual(withdrawAll(budget), 20)
        self.clock.advance(5)
        self.assertEqual(budget.balance, 0)
        self.assertFalse(budget.tryWithdraw())

    def test_nothingAllowed(self):
        """
        At 0% and 0 per second, no retry is ever allowed.
        """
        budget = RetryBudget(0.0, 0.0, 10.0, clock=self.clock)
        for _ in range(1000):
            budget.deposit()
        self.assertEqual(budget.balance, 0)
        self.assertFalse(budget.tryWithdraw())

    def test_clockBackwards(self):
        """
        A clock that goes backwards expires nothing and breaks nothing.
        """
        self.clock.advance(100)
        budget = RetryBudget(20.0, 0.0, 10.0, clock=self.clock)
        for _ in range(10):
            budget.deposit()
        self.clock.rightNow = 50.0
        self.assertEqual(budget.balance, 2)
        self.assertTrue(budget.tryWithdraw())

    def test_badValues(self):
        """
        Out-of-range settings are refused.
        """
        for args in (
            (-1.0, 10.0, 10.0),
            (1001.0, 10.0, 10.0),
            (20.0, -1.0, 10.0),
            (20.0, 10.0, 0.0),
        ):
            self.assertRaises(ValueError, RetryBudget, *args, clock=self.clock)

    def test_repr(self):
        """
        The repr shows the settings and the balance.
        """
        self.assertEqual(
            repr(RetryBudget(clock=self.clock)),
            "<RetryBudget 20.0% + 10.0/s over 10.0s, balance=100>",
        )


class SlidingCountsTests(SynchronousTestCase):
    """
    Tests for L{SlidingCounts}.
    """

    def test_counts(self):
        """
        C{addA} and C{addB} count apart, and count C{n} at once.
        """
        counts = SlidingCounts(10.0, 10, 0.0)
        counts.addA(0.0)
        counts.addA(1.0, 3)
        counts.addB(2.0)
        self.assertEqual((counts.a, counts.b), (4, 1))

    def test_expiryBySlot(self):
        """
        An event stops counting when the ring has turned a full window past
        its slot: between C{window - window / slots} and C{window} after it.
        """
        counts = SlidingCounts(10.0, 10, 0.0)
        counts.addA(0.5)
        counts.addB(1.5)
        counts.advance(9.99)
        self.assertEqual((counts.a, counts.b), (1, 1))
        counts.advance(10.0)
        self.assertEqual((counts.a, counts.b), (0, 1))
        counts.advance(11.0)
        self.assertEqual((counts.a, counts.b), (0, 0))

    def test_jumpClearsAll(self):
        """
        A jump of more than a window clears everything, and the ring still
        counts afterwards.
        """
        counts = SlidingCounts(1.0, 4, 0.0)
        for t in (0.0, 0.3, 0.6, 0.9):
            counts.addA(t)
        counts.addA(1000.0)
        self.assertEqual(counts.a, 1)
        counts.advance(1000.99)
        self.assertEqual(counts.a, 1)
        counts.advance(1001.0)
        self.assertEqual(counts.a, 0)

    def test_backwards(self):
        """
        Time going backwards counts in the current slot.
        """
        counts = SlidingCounts(10.0, 10, 50.0)
        counts.addA(50.0)
        counts.addA(10.0)
        self.assertEqual(counts.a, 2)
        counts.advance(60.0)
        self.assertEqual(counts.a, 0)

    def test_badArguments(self):
        """
        A window that is not positive, or no slot, is refused.
        """
        self.assertRaises(ValueError, SlidingCounts, 0.0)
        self.assertRaises(ValueError, SlidingCounts, 1.0, 0)
