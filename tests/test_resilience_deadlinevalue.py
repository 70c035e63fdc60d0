"""
L{DeadlinePolicy.header} formats a millisecond once: requests whose
deadlines fall in the same millisecond share the value, others get their
own, and the value is always what L{formatDeadline} writes.
"""

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from meshproxy.resilience.deadline import DeadlinePolicy, formatDeadline


class HeaderValueTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.wall = 1_700_000_000.0
        self.policy = DeadlinePolicy(10.0, clock=Clock(), wallClock=lambda: self.wall)

    def test_sameMillisecondShared(self) -> None:
        """
        Two deadlines within one millisecond get the same value, the very
        object formatted for the first.
        """
        first = self.policy.header(10.0, 0.0)
        self.wall += 0.0004
        second = self.policy.header(10.0, 0.0)
        self.assertEqual(first, b"1700000010000")
        self.assertIs(second, first)

    def test_eachMillisecondItsOwn(self) -> None:
        """
        Later, and earlier (a wall clock stepped back), milliseconds get
        their own value.
        """
        values = []
        for wall in (1_700_000_000.0, 1_700_000_000.0015, 1_699_999_999.5, 1_700_000_000.0):
            self.wall = wall
            values.append(self.policy.header(10.0, 0.0))
        self.assertEqual(
            values, [b"1700000010000", b"1700000010001", b"1700000009500", b"1700000010000"]
        )

    def test_asFormatDeadline(self) -> None:
        """
        Over many wall times and deadlines, the value is what
        L{formatDeadline} writes for the wall time plus what is left.
        """
        for i in range(2000):
            self.wall = 1_700_000_000.0 + i * 0.000377
            remaining = (i % 17) * 0.0131
            self.assertEqual(
                self.policy.header(5.0 + remaining, 5.0),
                formatDeadline(self.wall + remaining),
            )

    def test_notPositiveOrNotFinite(self) -> None:
        """
        A wall clock at or before the epoch writes 0; one that is not finite
        is refused, as by L{formatDeadline}.
        """
        self.wall = -3.0
        self.assertEqual(self.policy.header(1.0, 0.0), b"0")
        for bad in (float("inf"), float("nan")):
            self.wall = bad
            self.assertRaises(ValueError, self.policy.header, 1.0, 0.0)
