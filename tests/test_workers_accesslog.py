"""
Several workers append to one access-log file: each batch of lines is one
write() of whole lines on a descriptor opened C{O_APPEND}, so that the
lines of two writers never interleave; a short write tears at most one
line, whose rest is dropped rather than written after another writer's
lines.
"""

from __future__ import annotations

import json
import os
from typing import Any

from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.trial.unittest import TestCase

from meshproxy.telemetry import accesslog
from meshproxy.telemetry.accesslog import AccessLog
from meshproxy.telemetry.spans import TelemetryStats
from tests.test_telemetry_accesslog import WAIT, ThreadedClock, config, numbered


class _ShortFirstWrite:
    """
    Stands for the C{os} module in L{meshproxy.telemetry.accesslog}: its
    first C{write} of more than C{cut} bytes takes only C{cut} of them, and
    another writer (another worker) then appends C{other} to the file.
    """

    def __init__(self, cut: int, path: str, other: bytes) -> None:
        self._cut = cut
        self._path = path
        self._other = other
        self.cuts = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)

    def write(self, fd: int, data: Any) -> int:
        if self.cuts == 0 and len(data) > self._cut:
            self.cuts += 1
            written = os.write(fd, bytes(data[: self._cut]))
            other = os.open(self._path, os.O_WRONLY | os.O_APPEND)
            try:
                os.write(other, self._other)
            finally:
                os.close(other)
            return written
        return os.write(fd, data)


class SharedFileTests(TestCase):
    """
    Two access logs (two workers) appending to one file.
    """

    def setUp(self) -> None:
        from twisted.internet import reactor

        self.real = reactor
        self.clock = ThreadedClock(reactor)
        self.dir = self.mktemp()
        os.mkdir(self.dir)
        self.path = os.path.join(self.dir, "access.log")

    def startLog(self) -> tuple[AccessLog, TelemetryStats]:
        stats = TelemetryStats()
        log = AccessLog(
            config(path=self.path, buffer=100000), stats, reactor=self.clock, stopTimeout=WAIT
        )
        log.startService()
        self.addCleanup(self.stopLog, log)
        return log, stats

    def stopLog(self, log: AccessLog) -> Deferred[None]:
        if not log.running:
            return succeed(None)
        return log.stopService().addTimeout(WAIT, self.real)

    def records(self) -> list[dict[str, Any]]:
        with open(self.path, "rb") as f:
            data = f.read()
        self.assertTrue(data.endswith(b"\n"), data[-100:])
        return [json.loads(line) for line in data.split(b"\n")[:-1]]

    async def test_twoWritersNeverInterleave(self) -> None:
        """
        Two writers, each with batches of large lines (about 600 KB a
        write), append to one file at the same time: every line is whole
        JSON, and every line of each is there once.
        """
        logs = [self.startLog(), self.startLog()]
        for n in range(200):
            for index, (log, _) in enumerate(logs):
                log.summarize({}, numbered(index * 1000 + n, 3000))
        await gatherResults([log.flush().addTimeout(WAIT, self.real) for log, _ in logs])
        for _, stats in logs:
            self.assertEqual((stats.accessLogLines, stats.accessLogDropped), (200, 0))
        tries = sorted(record["tries"] for record in self.records())
        self.assertEqual(tries, list(range(200)) + list(range(1000, 1200)))

    async def test_shortWriteDropsTheRestOfTheTornLine(self) -> None:
        """
        A write the kernel takes only in part, ending inside a line, while
        another writer appends: the rest of the torn line is not written
        after the other writer's line; the lines after it are whole, and
        the torn line counts as dropped.
        """
        first, second, third = numbered(1, 200), numbered(2, 200), numbered(3, 200)
        other = numbered(9, 100) + b"\n"
        fake = _ShortFirstWrite(len(first) + 1 + 50, self.path, other)
        self.patch(accesslog, "os", fake)
        log, stats = self.startLog()
        for line in (first, second, third):
            log.summarize({}, line)
        await log.flush().addTimeout(WAIT, self.real)
        self.assertEqual(fake.cuts, 1)
        self.assertEqual((stats.accessLogLines, stats.accessLogDropped), (2, 1))
        with open(self.path, "rb") as f:
            lines = f.read().split(b"\n")
        self.assertEqual(lines[0], first)
        # The torn line: its first 50 bytes, then the other writer's line.
        self.assertEqual(lines[1], second[:50] + other[:-1])
        # No headless rest of line 2 anywhere: only whole lines follow.
        self.assertEqual([line for line in lines[2:] if line], [third])
        self.assertNotIn(second[50:], b"\n".join(lines))
