"""
Tests for L{meshproxy.resilience.backoff}.
"""

import random

from twisted.trial.unittest import SynchronousTestCase

from meshproxy.resilience.backoff import Backoff, EjectionBackoff


class FixedRandom:
    """
    A source of randomness that always gives the same number.
    """

    def __init__(self, value):
        self.value = value

    def random(self):
        return self.value


class BackoffTests(SynchronousTestCase):
    """
    Tests for L{Backoff}.
    """

    def test_constant(self):
        """
        With C{minDelay == maxDelay}, every wait is that delay.
        """
        backoff = Backoff(0.5, 0.5, random=random.Random(1))
        self.assertEqual({backoff.delay(n) for n in range(1, 50)}, {0.5})

    def test_zero(self):
        """
        With 0 and 0, there is no wait, and no randomness is used.
        """
        backoff = Backoff(0.0, 0.0, random=None)
        self.assertEqual(backoff.delay(1), 0.0)
        self.assertEqual(backoff.delay(10), 0.0)

    def test_jitteredExponentialRange(self):
        """
        Retry C{n} waits between C{minDelay} and
        C{min(maxDelay, minDelay * 2 ** (n - 1))}.
        """
        backoff = Backoff(0.1, 2.0, random=random.Random(7))
        for attempt in range(1, 12):
            ceiling = min(2.0, 0.1 * 2 ** (attempt - 1))
            for _ in range(200):
                d = backoff.delay(attempt)
                self.assertTrue(0.1 <= d <= ceiling + 1e-12, (attempt, d))

    def test_fullJitter(self):
        """
        The wait spans its whole range: the ends are reached with the
        extremes of the randomness, and real randomness spreads it out.
        """
        self.assertEqual(Backoff(0.1, 2.0, random=FixedRandom(0.0)).delay(4), 0.1)
        self.assertAlmostEqual(Backoff(0.1, 2.0, random=FixedRandom(1.0)).delay(4), 0.8)
        self.assertAlmostEqual(Backoff(0.1, 2.0, random=FixedRandom(1.0)).delay(10), 2.0)
        backoff = Backoff(0.1, 2.0, random=random.Random(3))
        delays = [backoff.delay(10) for _ in range(500)]
        self.assertLess(min(delays), 0.3)
        self.assertGreater(max(delays), 1.8)

    def test_firstRetryAtMinimum(self):
        """
        The first retry waits C{minDelay}: its range is C{[min, min]}.
        """
        backoff = Backoff(0.2, 5.0, random=random.Random(1))
        self.assertEqual({backoff.delay(1) for _ in range(20)}, {0.2})

    def test_zeroMinimum(self):
        """
        With a minimum of 0, every wait is uniform between 0 and the
        maximum.
        """
        backoff = Backoff(0.0, 1.0, random=random.Random(5))
        delays = [backoff.delay(1) for _ in range(500)]
        self.assertTrue(all(0.0 <= d <= 1.0 for d in delays))
        self.assertGreater(max(delays), 0.9)

    def test_hugeAndOddAttempts(self):
        """
        A huge attempt number does not overflow; 0 or negative is taken as
        the first retry.
        """
        backoff = Backoff(0.1, 2.0, random=FixedRandom(1.0))
        self.assertAlmostEqual(backoff.delay(10**6), 2.0)
        self.assertAlmostEqual(backoff.delay(0), 0.1)
        self.assertAlmostEqual(backoff.delay(-3), 0.1)

    def test_badRange(self):
        """
        A negative minimum or a maximum below the minimum is refused.
        """
        self.assertRaises(ValueError, Backoff, -1.0, 1.0, random=None)
        self.assertRaises(ValueError, Backoff, 2.0, 1.0, random=None)
        self.assertRaises(ValueError, Backoff, float("nan"), 1.0, random=None)


class EjectionBackoffTests(SynchronousTestCase):
    """
    Tests for L{EjectionBackoff}.
    """

    def test_defaults(self):
        """
        Ejections last 5 s to 300 s by default.
        """
        backoff = EjectionBackoff(random=random.Random(1))
        self.assertEqual((backoff.minDelay, backoff.maxDelay), (5.0, 300.0))

    def test_doublingWithJitter(self):
        """
        Step C{n} lasts C{minDelay * 2 ** n} times 0.8 to 1.2, clamped to the
        range.
        """
        backoff = EjectionBackoff(5.0, 300.0, random=random.Random(2))
        for step in range(12):
            nominal = 5.0 * 2**step
            low = min(300.0, max(5.0, nominal * 0.8))
            high = min(300.0, max(5.0, nominal * 1.2))
            for _ in range(200):
                d = backoff.delay(step)
                self.assertTrue(low - 1e-9 <= d <= high + 1e-9, (step, d))

    def test_jitterEnds(self):
        """
        The extremes of the randomness give 0.8 and 1.2 times the nominal
        delay, but never below the minimum.
        """
        self.assertAlmostEqual(EjectionBackoff(5.0, 300.0, random=FixedRandom(0.0)).delay(2), 16.0)
        self.assertAlmostEqual(EjectionBackoff(5.0, 300.0, random=FixedRandom(1.0)).delay(2), 24.0)
        self.assertEqual(EjectionBackoff(5.0, 300.0, random=FixedRandom(0.0)).delay(0), 5.0)

    def test_growsToMaximum(self):
        """
        Successive steps grow until they reach the maximum, and stay there.
        """
        backoff = EjectionBackoff(5.0, 300.0, random=random.Random(3))
        delays = [backoff.delay(step) for step in range(12)]
        for before, after in zip(delays[:6], delays[1:7], strict=True):
            self.assertLess(before, after)
        self.assertEqual(delays[7:], [300.0] * 5)
        self.assertEqual(backoff.delay(10**6), 300.0)

    def test_badRange(self):
        """
        A negative minimum or a maximum below the minimum is refused.
        """
        self.assertRaises(ValueError, EjectionBackoff, -1.0, 1.0, random=None)
        self.assertRaises(ValueError, EjectionBackoff, 10.0, 5.0, random=None)
