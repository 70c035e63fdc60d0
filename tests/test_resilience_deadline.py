"""
Tests for L{meshproxy.resilience.deadline}.
"""

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from meshproxy.resilience.deadline import (
    DeadlineHeader,
    DeadlinePolicy,
    formatDeadline,
    parseDeadline,
)


class ParseDeadlineTests(SynchronousTestCase):
    """
    Tests for L{parseDeadline}.
    """

    def test_epochMilliseconds(self):
        """
        ASCII digits are milliseconds since the epoch, returned as seconds.
        """
        self.assertEqual(parseDeadline(b"1700000000500"), 1700000000.5)
        self.assertEqual(parseDeadline(b"0"), 0.0)
        self.assertEqual(parseDeadline(b"1"), 0.001)

    def test_surroundingWhitespace(self):
        """
        Spaces and tabs around the value are ignored.
        """
        self.assertEqual(parseDeadline(b" \t1700000000500 "), 1700000000.5)

    def test_garbage(self):
        """
        Anything but 1 to 15 ASCII digits gives C{None} and raises nothing.
        """
        for bad in [
            b"",
            b"  ",
            b"-1",
            b"+1",
            b"1.5",
            b"1_000",
            b"1e3",
            b"0x10",
            b"abc",
            b"12 34",
            b"\xd9\xa1\xd9\xa2",
            "\u0661\u0662".encode(),
            b"1" * 16,
            b"9" * 5000,
            b"123\x00",
            "123",
            None,
            123,
        ]:
            self.assertIsNone(parseDeadline(bad), bad)

    def test_headerName(self):
        """
        The header is C{mesh-ctx-deadline}, lowercase.
        """
        self.assertEqual(DeadlineHeader, b"mesh-ctx-deadline")


class FormatDeadlineTests(SynchronousTestCase):
    """
    Tests for L{formatDeadline}.
    """

    def test_milliseconds(self):
        """
        The deadline is written in whole milliseconds, rounded down.
        """
        self.assertEqual(formatDeadline(1700000000.5), b"1700000000500")
        self.assertEqual(formatDeadline(1.0019), b"1001")

    def test_roundTrip(self):
        """
        What is written reads back within a millisecond, never later.
        """
        for seconds in (1700000000.123456, 0.001, 12.3456789, 4102444800.999):
            back = parseDeadline(formatDeadline(seconds))
            self.assertTrue(seconds - 0.001 <= back <= seconds, (seconds, back))

    def test_pastDeadline(self):
        """
        A negative deadline is written as 0.
        """
        self.assertEqual(formatDeadline(-5.0), b"0")
        self.assertEqual(formatDeadline(0.0), b"0")

    def test_notFinite(self):
        """
        An infinite or NaN deadline is refused.
        """
        for bad in (float("inf"), float("-inf"), float("nan")):
            self.assertRaises(ValueError, formatDeadline, bad)


class DeadlinePolicyHeaderTests(SynchronousTestCase):
    """
    Tests for L{DeadlinePolicy.header}: the value sent upstream is the wall
    time plus what is left of the deadline on the reactor's clock.
    """

    def setUp(self):
        self.clock = Clock()
        self.clock.advance(100.0)
        self.policy = DeadlinePolicy(10.0, clock=self.clock, wallClock=lambda: 1_700_000_000.0)

    def test_remainingFromTheClock(self):
        """
        Without C{now}, what is left is measured from the clock's time.
        """
        self.assertEqual(self.policy.header(103.5), b"1700000003500")

    def test_remainingFromNow(self):
        """
        A C{now} given by a caller that has just read the clock is used in
        its place (the clock is not read again).
        """
        self.clock.advance(50.0)
        self.assertEqual(self.policy.header(103.5, 101.0), b"1700000002500")

    def test_passed(self):
        """
        A deadline already passed is sent as the wall time itself.
        """
        self.assertEqual(self.policy.header(90.0, 101.0), b"1700000000000")
