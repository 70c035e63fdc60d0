"""
Tests for L{meshproxy.resilience.limits}.
"""

from twisted.trial.unittest import SynchronousTestCase

from meshproxy.resilience.limits import Limiter


class LimiterTests(SynchronousTestCase):
    """
    Tests for L{Limiter}.
    """

    def test_unlimited(self):
        """
        Without limits, everything is admitted and nothing rejected.
        """
        limiter = Limiter()
        for _ in range(10000):
            self.assertTrue(limiter.tryAcquire())
            self.assertTrue(limiter.pendingAcquire())
        self.assertEqual((limiter.active, limiter.pending, limiter.rejected), (10000, 10000, 0))

    def test_maxConcurrent(self):
        """
        Past C{maxConcurrent} requests in flight, C{tryAcquire} refuses and
        counts the rejection; a release makes room again.
        """
        limiter = Limiter(maxConcurrent=2)
        self.assertTrue(limiter.tryAcquire())
        self.assertTrue(limiter.tryAcquire())
        self.assertFalse(limiter.tryAcquire())
        self.assertFalse(limiter.tryAcquire())
        self.assertEqual((limiter.active, limiter.rejected), (2, 2))
        limiter.release()
        self.assertEqual(limiter.active, 1)
        self.assertTrue(limiter.tryAcquire())
        self.assertEqual((limiter.active, limiter.rejected, limiter.rejectedPending), (2, 2, 0))

    def test_maxPending(self):
        """
        Past C{maxPending} requests waiting for a connection,
        C{pendingAcquire} (also called C{tryPending}) refuses and counts
        the rejection in both counters; the concurrency ceiling is apart.
        """
        limiter = Limiter(maxConcurrent=10, maxPending=1)
        self.assertTrue(limiter.pendingAcquire())
        self.assertFalse(limiter.pendingAcquire())
        self.assertFalse(limiter.tryPending())
        self.assertEqual((limiter.pending, limiter.rejected, limiter.rejectedPending), (1, 2, 2))
        self.assertTrue(limiter.tryAcquire())
        limiter.pendingRelease()
        self.assertEqual(limiter.pending, 0)
        self.assertTrue(limiter.tryPending())

    def test_zeroLimit(self):
        """
        A limit of 0 refuses everything.
        """
        limiter = Limiter(maxConcurrent=0, maxPending=0)
        self.assertFalse(limiter.tryAcquire())
        self.assertFalse(limiter.pendingAcquire())
        self.assertEqual((limiter.active, limiter.pending, limiter.rejected), (0, 0, 2))

    def test_releaseTooMany(self):
        """
        Releasing more than was acquired is an error, and leaves the counters
        as they were.
        """
        limiter = Limiter(maxConcurrent=1)
        self.assertRaises(RuntimeError, limiter.release)
        self.assertRaises(RuntimeError, limiter.pendingRelease)
        self.assertEqual((limiter.active, limiter.pending), (0, 0))
        self.assertTrue(limiter.tryAcquire())
        self.assertFalse(limiter.tryAcquire())

    def test_badLimits(self):
        """
        A negative limit is refused.
        """
        self.assertRaises(ValueError, Limiter, maxConcurrent=-1)
        self.assertRaises(ValueError, Limiter, maxPending=-1)

    def test_repr(self):
        """
        The repr shows the counters and the limits.
        """
        self.assertEqual(
            repr(Limiter(maxConcurrent=3)), "<Limiter active=0/3 pending=0/None rejected=0>"
        )
