"""
Tests for L{meshproxy.telemetry.accesslog}: the line format, sampling, the
bounded buffer, the non-blocking standard-output writer (on real pipes and
sockets), the file writer's thread, reopening on SIGUSR1, and how failures
are reported.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import socket
import threading
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from meshproxy.config.telemetry import AccessLogConfig
from meshproxy.telemetry import accesslog
from meshproxy.telemetry.accesslog import (
    AccessLog,
    decodeTarget,
    formatLine,
    formatTime,
    installReopenSignal,
    stripQuery,
)
from meshproxy.telemetry.spans import SUMMARY_FIELDS, ISummarySink, TelemetryStats

F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)

# Seconds a test waits at most for the writer thread or a signal.
WAIT = 10.0


def summary(**fields: Any) -> dict[str, Any]:
    """
    A complete request summary, C{fields} overriding the defaults.
    """
    values: dict[str, Any] = {
        "time": "2026-12-01T09:00:00.123Z",
        "router": "web",
        "name": "/#/fs/users",
        "method": "GET",
        "authority": "users",
        "path": "/users/1",
        "status": 200,
        "meshErr": None,
        "durationMs": 1.234,
        "ttfbMs": 1.0,
        "bytesIn": 0,
        "bytesOut": 12,
        "endpoint": "127.0.0.1:8080",
        "tries": 1,
        "traceId": "0af7651916cd43dd8448eb211c80319c",
        "reqId": "r1",
        "client": "127.0.0.1",
        "identity": None,
    }
    values.update(fields)
    return values


def numbered(n: int, size: int = 0) -> bytes:
    """
    The line of request number C{n}, padded (in C{path}) to about C{size}
    bytes.
    """
    line = formatLine(summary(tries=n))
    if len(line) < size:
        line = formatLine(summary(tries=n, path="/" + "p" * (size - len(line))))
    return line


def parseLines(data: bytes) -> list[int]:
    """
    Check that C{data} is whole lines, each one JSON object with all the
    fields, and return their numbers (C{tries}).
    """
    assert data.endswith(b"\n") or not data, data[-200:]
    numbers = []
    for line in data.split(b"\n")[:-1]:
        record = json.loads(line)
        assert list(record) == list(SUMMARY_FIELDS), line[:200]
        numbers.append(record["tries"])
    return numbers


def config(**values: Any) -> AccessLogConfig:
    return AccessLogConfig.model_validate(values)


def capturedWarnings(case: SynchronousTestCase) -> list[dict[str, Any]]:
    """
    Collect the events the access log module logs during C{case}.
    """
    events: list[dict[str, Any]] = []

    def observer(event: dict[str, Any]) -> None:
        if event.get("log_namespace") == accesslog.__name__:
            events.append(event)

    globalLogPublisher.addObserver(observer)
    case.addCleanup(globalLogPublisher.removeObserver, observer)
    return events


def nonBlockingPipe(case: SynchronousTestCase) -> tuple[int, int]:
    """
    A pipe whose read end does not block (the write end is left as it is,
    blocking), closed at the end of C{case}.
    """
    r, w = os.pipe()
    os.set_blocking(r, False)
    for fd in (r, w):
        case.addCleanup(_closeQuietly, fd)
    return r, w


def _closeQuietly(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass


def readAvailable(fd: int) -> bytes:
    """
    Everything that can be read from the non-blocking C{fd} now.
    """
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


class FormatTests(SynchronousTestCase):
    """
    L{formatLine}, L{formatTime}, L{stripQuery}, L{decodeTarget}.
    """

    def test_fieldsInSummaryOrder(self) -> None:
        """
        The object's keys are L{SUMMARY_FIELDS} in that order, whatever the
        order of the dict.
        """
        backwards = dict(reversed(list(summary().items())))
        line = formatLine(backwards)
        pairs = json.loads(line, object_pairs_hook=lambda pairs: pairs)
        self.assertEqual([key for key, _ in pairs], list(SUMMARY_FIELDS))
        self.assertEqual(dict(pairs), summary())

    def test_compact(self) -> None:
        """
        No space after separators, exactly what C{json.dumps} writes with
        compact separators.
        """
        line = formatLine(summary())
        self.assertEqual(
            line,
            json.dumps(summary(), separators=(",", ":"), ensure_ascii=False).encode(),
        )
        self.assertNotIn(b": ", line)
        self.assertNotIn(b", ", line)
        self.assertTrue(line.startswith(b'{"time":"2026-12-01T09:00:00.123Z","router":"web",'))

    def test_missingFieldsNullOthersLeftOut(self) -> None:
        """
        A field missing from the summary is written as null; a key that is
        not a field is not written.
        """
        record = json.loads(formatLine({"router": "web", "extra": 1}))
        self.assertEqual(list(record), list(SUMMARY_FIELDS))
        self.assertEqual(record["router"], "web")
        self.assertIsNone(record["status"])
        self.assertNotIn("extra", record)

    def test_nonASCIIAsUTF8(self) -> None:
        """
        Non-ASCII text is written as UTF-8, not as C{\\u} escapes.
        """
        line = formatLine(summary(path="/café/日本", identity="spiffe://é"))
        self.assertIn("/café/日本".encode(), line)
        self.assertNotIn(b"\\u", line)
        self.assertEqual(json.loads(line)["path"], "/café/日本")

    def test_noLineBreakInside(self) -> None:
        """
        Whatever the values hold, a line holds no newline, nor any character
        a line reader may split on, and reads back to the same values.
        """
        nasty = "a\nb\rc\u2028d\u2029e\x85f\x0bg\x1ch"
        line = formatLine(summary(path=nasty, authority="x\r\ny"))
        self.assertNotIn(b"\n", line)
        self.assertNotIn(b"\r", line)
        self.assertEqual(len(line.decode("utf-8").splitlines()), 1)
        record = json.loads(line)
        self.assertEqual(record["path"], nasty)
        self.assertEqual(record["authority"], "x\r\ny")

    def test_loneSurrogate(self) -> None:
        """
        A string that is not valid Unicode (a lone surrogate, as
        C{surrogateescape} makes) is written as its JSON escape: the line is
        valid UTF-8 and reads back to the same string.
        """
        line = formatLine(summary(path="/caf\udce9", identity="é"))
        text = line.decode("utf-8")
        self.assertEqual(json.loads(text)["path"], "/caf\udce9")
        self.assertEqual(json.loads(text)["identity"], "é")

    def test_valuesJSONCannotHoldDoNotRaise(self) -> None:
        """
        Bytes are decoded, other objects written as their C{str}: logging
        never fails the request.
        """
        record = json.loads(formatLine(summary(path=b"/\xff", endpoint=object())))
        self.assertEqual(record["path"], "/\ufffd")
        self.assertTrue(record["endpoint"].startswith("<object object"))

    def test_formatTime(self) -> None:
        """
        RFC 3339, UTC, milliseconds rounded down.
        """
        self.assertEqual(formatTime(0.0), "1970-01-01T00:00:00.000Z")
        self.assertEqual(formatTime(1796115600.1239), "2026-12-01T09:00:00.123Z")
        self.assertEqual(formatTime(1796115600.9999), "2026-12-01T09:00:00.999Z")

    def test_stripQuery(self) -> None:
        """
        The target up to its first C{?}, decoded as UTF-8 with replacement.
        """
        self.assertEqual(stripQuery(b"/users/1?token=secret&a=b"), "/users/1")
        self.assertEqual(stripQuery(b"/users/1"), "/users/1")
        self.assertEqual(stripQuery(b"/a?b?c"), "/a")
        self.assertEqual(stripQuery(b"?only"), "")
        self.assertEqual(stripQuery(b""), "")
        self.assertEqual(stripQuery(b"/caf\xc3\xa9?x"), "/café")
        self.assertEqual(stripQuery(b"/\xff\xfe?\xff"), "/\ufffd\ufffd")
        self.assertEqual(stripQuery(b"http://h/p?q"), "http://h/p")

    def test_decodeTarget(self) -> None:
        """
        The whole target, query included, decoded with replacement.
        """
        self.assertEqual(decodeTarget(b"/a?b=c"), "/a?b=c")
        self.assertEqual(decodeTarget(b"/\xff?\xc3\xa9"), "/\ufffd?é")

    def test_pathOfDropsQueryUnlessConfigured(self) -> None:
        """
        L{AccessLog.pathOf} keeps the query only with C{query: true}.
        """
        reactor = MemoryReactorClock()
        dropping = AccessLog(config(), TelemetryStats(), reactor=reactor)
        keeping = AccessLog(config(query=True), TelemetryStats(), reactor=reactor)
        self.assertEqual(dropping.pathOf(b"/a?secret=1"), "/a")
        self.assertEqual(keeping.pathOf(b"/a?secret=1"), "/a?secret=1")


class DocsTests(SynchronousTestCase):
    """
    docs/observability.md's access log section says what the code does.
    """

    def section(self) -> str:
        here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        with open(os.path.join(here, "docs", "observability.md"), encoding="utf-8") as f:
            text = f.read()
        start = text.index("## Access log\n")
        end = text.find("\n## ", start + 1)
        return text[start : end if end >= 0 else len(text)]

    def block(self, language: str) -> str:
        section = self.section()
        start = section.index("```%s\n" % (language,)) + len(language) + 4
        return section[start : section.index("```", start)]

    def test_exampleLineIsWhatFormatLineWrites(self) -> None:
        example = self.block("json").strip()
        record = json.loads(example)
        self.assertEqual(list(record), list(SUMMARY_FIELDS))
        self.assertEqual(formatLine(record).decode("utf-8"), example)

    def test_exampleConfigIsValid(self) -> None:
        import yaml

        loaded = yaml.safe_load(self.block("yaml"))
        section = AccessLogConfig.model_validate(loaded["telemetry"]["accessLog"])
        self.assertEqual(section, AccessLogConfig())

    def test_everyFieldDescribed(self) -> None:
        section = self.section()
        for field in SUMMARY_FIELDS:
            self.assertIn("`%s`" % (field,), section)


class StreamCase(SynchronousTestCase):
    """
    Helpers for an L{AccessLog} on standard output, made a pipe or a
    socket, on a L{MemoryReactorClock}.
    """

    def startLog(self, fd: int, **values: Any) -> tuple[AccessLog, TelemetryStats]:
        self.reactor = MemoryReactorClock()
        stats = TelemetryStats()
        log = AccessLog(
            config(**values), stats, reactor=self.reactor, stdout=fd, **self.extra()
        )
        log.startService()
        self.addCleanup(self.stopLog, log)
        return log, stats

    def extra(self) -> dict[str, Any]:
        return {}

    def stopLog(self, log: AccessLog) -> None:
        if log.running:
            d = log.stopService()
            self.reactor.advance(accesslog.STOP_TIMEOUT)
            self.successResultOf(d)

    def writers(self) -> list[Any]:
        return list(self.reactor.getWriters())

    def pump(self, rounds: int = 1) -> None:
        """
        Run the reactor's pending calls and report every watched writer
        writable, C{rounds} times.
        """
        for _ in range(rounds):
            self.reactor.advance(accesslog.WRITE_INTERVAL)
            for writer in self.writers():
                writer.doWrite()


class SamplingTests(StreamCase):
    """
    L{AccessLog.wants}: the sampling decision.
    """

    def setUp(self) -> None:
        self.r, self.w = nonBlockingPipe(self)

    def test_providesISummarySink(self) -> None:
        log, _ = self.startLog(self.w)
        self.assertTrue(verifyObject(ISummarySink, log))

    def test_fullRateAlwaysWithoutDrawing(self) -> None:
        """
        At a sample rate of 1 every request is logged, without drawing a
        random number.
        """
        self.draw = self.neverDraw
        log, _ = self.startLog(self.w, sampleRate=1.0)
        self.assertEqual([log.wants("web") for _ in range(100)], [True] * 100)

    def test_zeroRateNeverWithoutDrawing(self) -> None:
        self.draw = self.neverDraw
        log, _ = self.startLog(self.w, sampleRate=0)
        self.assertEqual([log.wants("web") for _ in range(100)], [False] * 100)

    def test_partialRateDraws(self) -> None:
        """
        At a rate of 0.25, a request is logged when the draw is under 0.25.
        """
        draws = iter([0.1, 0.3, 0.2499, 0.25, 0.0, 0.99])
        self.draw = lambda: next(draws)
        log, _ = self.startLog(self.w, sampleRate=0.25)
        self.assertEqual(
            [log.wants("web") for _ in range(6)], [True, False, True, False, True, False]
        )

    def test_notWhileStopped(self) -> None:
        """
        Nothing is wanted before the service starts or after it stopped.
        """
        self.draw = self.neverDraw
        log = AccessLog(config(), TelemetryStats(), reactor=MemoryReactorClock(), stdout=self.w)
        self.assertFalse(log.wants("web"))
        log, _ = self.startLog(self.w)
        self.assertTrue(log.wants("web"))
        self.stopLog(log)
        self.assertFalse(log.wants("web"))

    def neverDraw(self) -> float:
        raise AssertionError("no random number should be drawn")

    def draw(self) -> float:
        raise NotImplementedError()

    def extra(self) -> dict[str, Any]:
        return {"random": lambda: self.draw()}


class BufferTests(StreamCase):
    """
    The bound: lines past C{buffer} are dropped and counted.
    """

    def test_fullBufferDrops(self) -> None:
        """
        With a reader that never reads, lines are held up to C{buffer}, then
        dropped and counted; the lines held never exceed the bound.
        """
        r, w = nonBlockingPipe(self)
        log, stats = self.startLog(w, buffer=50)
        line = numbered(0, 1000)
        held = []
        for _ in range(2000):
            log.summarize({}, line)
            held.append(log._writer.held)  # type: ignore[union-attr]
            self.pump()
        self.assertLessEqual(max(held), 50)
        self.assertGreater(stats.accessLogDropped, 0)
        self.assertEqual(stats.accessLogLines + stats.accessLogDropped + held[-1], 2000)
        # The pipe took what it could, in whole lines.
        self.assertEqual(len(parseLines(readAvailable(r))), stats.accessLogLines)

    def test_longLinesBoundedInBytes(self) -> None:
        """
        Long lines (a client's 60 kB Host) are bounded in bytes as well as
        in count: with a reader that never reads, the bytes waiting stay
        under the writer's byte bound (C{MIN_BYTES}, or a kibibyte per line
        of C{buffer}) while far fewer lines than C{buffer} are held; the
        rest are dropped and counted.
        """
        self.patch(accesslog._Writer, "MIN_BYTES", 1024 * 1024)
        r, w = nonBlockingPipe(self)
        log, stats = self.startLog(w, buffer=1000)
        writer = log._writer
        assert writer is not None
        line = numbered(0, 60000)
        waiting = []
        for _ in range(200):
            log.summarize({}, line)
            waiting.append(writer._pendingBytes)  # type: ignore[attr-defined]
            self.pump()
        self.assertLessEqual(max(waiting), 1024 * 1024)
        self.assertLess(writer.held, 1000 // 2)
        self.assertGreater(stats.accessLogDropped, 0)
        self.assertEqual(stats.accessLogLines + stats.accessLogDropped + writer.held, 200)
        # The pipe took the lines counted written, and maybe the start of
        # the next (the rest of it goes first when the pipe has room).
        self.assertEqual(readAvailable(r).count(b"\n"), stats.accessLogLines)

    def test_droppedWhenNotRunning(self) -> None:
        """
        A line summarized while the service is not running is counted as
        dropped.
        """
        stats = TelemetryStats()
        log = AccessLog(config(), stats, reactor=MemoryReactorClock())
        log.summarize({}, b"{}")
        self.assertEqual((stats.accessLogLines, stats.accessLogDropped), (0, 1))


class PipeTests(StreamCase):
    """
    Standard output as a pipe: writes never block, lines arrive whole and
    in order.
    """

    def test_descriptorLeftBlocking(self) -> None:
        """
        The file description behind standard output is not made
        non-blocking (twistd's own log writes there with blocking writes).
        """
        r, w = nonBlockingPipe(self)
        self.startLog(w)
        self.assertTrue(os.get_blocking(w))

    def test_oneIntervalOneWrite(self) -> None:
        """
        Lines summarized within one interval are written together at its
        end; none before.
        """
        r, w = nonBlockingPipe(self)
        log, stats = self.startLog(w)
        for n in range(3):
            log.summarize({}, numbered(n))
            self.reactor.advance(accesslog.WRITE_INTERVAL / 4)
        self.assertEqual(readAvailable(r), b"")
        self.reactor.advance(accesslog.WRITE_INTERVAL / 4)
        self.assertEqual(parseLines(readAvailable(r)), [0, 1, 2])
        self.assertEqual(stats.accessLogLines, 3)
        self.assertEqual(self.writers(), [])

    def test_fullPipeNeverBlocksThenDrains(self) -> None:
        """
        With a pipe nobody reads, summarize and the writer never block: the
        writer waits to be told the pipe is writable, lines past the buffer
        are dropped and counted. Once the pipe is read, every line held
        arrives, whole, in order, nothing twice.
        """
        r, w = nonBlockingPipe(self)
        log, stats = self.startLog(w, buffer=500)
        total = 3000
        for n in range(total):
            log.summarize({}, numbered(n, 300))
            if n % 100 == 99:
                self.pump()
        self.assertGreater(stats.accessLogDropped, 0)
        self.assertEqual(len(self.writers()), 1)
        self.assertEqual(log._writer.held, 500)  # type: ignore[union-attr]
        received = bytearray()
        for _ in range(1000):
            received += readAvailable(r)
            if not self.writers():
                break
            self.pump()
        received += readAvailable(r)
        numbers = parseLines(bytes(received))
        # What was accepted arrived; what came once the buffer was full
        # was dropped.
        self.assertEqual(numbers, list(range(stats.accessLogLines)))
        self.assertEqual(stats.accessLogLines + stats.accessLogDropped, total)

    def test_longLinesPartlyWritten(self) -> None:
        """
        Lines longer than the pipe takes at once are written in parts, the
        rest of a line always before any other line.
        """
        r, w = nonBlockingPipe(self)
        log, stats = self.startLog(w)
        for n in range(10):
            log.summarize({}, numbered(n, 50000))
        received = bytearray()
        for _ in range(1000):
            self.pump()
            received += readAvailable(r)
            if stats.accessLogLines == 10:
                break
        self.assertEqual(parseLines(bytes(received)), list(range(10)))
        self.assertEqual(stats.accessLogDropped, 0)

    def test_readerGoneDropsAndComplainsOncePerMinute(self) -> None:
        """
        When the pipe's reader went away, lines are dropped and counted; the
        failure is logged once, then at most once a minute with the lines
        lost since, without a traceback; writing resumes when it can.
        """
        events = capturedWarnings(self)
        r, w = nonBlockingPipe(self)
        log, stats = self.startLog(w)
        os.close(r)
        for n in range(3):
            log.summarize({}, numbered(n))
        self.pump()
        self.assertEqual((stats.accessLogLines, stats.accessLogDropped), (0, 3))
        self.assertEqual(len(events), 1)
        for n in range(4):
            log.summarize({}, numbered(n))
            self.pump()
        self.assertEqual(stats.accessLogDropped, 7)
        self.assertEqual(len(events), 1)
        self.reactor.advance(accesslog.COMPLAINT_INTERVAL)
        log.summarize({}, numbered(9))
        self.pump()
        self.assertEqual(len(events), 2)
        self.assertEqual(events[0]["lines"], 3)
        self.assertEqual(events[1]["lines"], 5)
        self.assertIn("Broken pipe", events[1]["error"])
        self.assertTrue(log.wants("web"))
        self.assertFalse(any("log_failure" in event for event in events))

    def test_stopWritesWhatIsHeld(self) -> None:
        """
        Stopping waits for the lines held to be written, then closes.
        """
        r, w = nonBlockingPipe(self)
        log, stats = self.startLog(w)
        for n in range(1000):
            log.summarize({}, numbered(n, 300))
        self.reactor.advance(accesslog.WRITE_INTERVAL)
        self.assertEqual(len(self.writers()), 1)
        # While it waits for the pipe, the writer does not try again each
        # iteration.
        log.summarize({}, numbered(1000, 300))
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        d = log.stopService()
        self.assertNoResult(d)
        received = bytearray()
        for _ in range(1000):
            received += readAvailable(r)
            if not self.writers():
                break
            self.pump()
        self.successResultOf(d)
        self.assertEqual(parseLines(bytes(received)), list(range(1001)))
        self.assertEqual((stats.accessLogLines, stats.accessLogDropped), (1001, 0))
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_stopGivesUpAfterTimeout(self) -> None:
        """
        When the reader does not read, stopping gives up after
        L{STOP_TIMEOUT} seconds, counting the lines held as dropped, and
        stops watching the pipe.
        """
        events = capturedWarnings(self)
        r, w = nonBlockingPipe(self)
        log, stats = self.startLog(w)
        for n in range(1000):
            log.summarize({}, numbered(n, 300))
        self.reactor.advance(accesslog.WRITE_INTERVAL)
        d = log.stopService()
        self.reactor.advance(accesslog.STOP_TIMEOUT - 0.1)
        self.assertNoResult(d)
        self.reactor.advance(0.1)
        self.successResultOf(d)
        self.assertEqual(stats.accessLogLines + stats.accessLogDropped, 1000)
        self.assertGreater(stats.accessLogDropped, 0)
        self.assertEqual(self.writers(), [])
        self.assertEqual([e["lines"] for e in events], [stats.accessLogDropped])

    def test_reopenIsANoOp(self) -> None:
        """
        Reopening standard output does nothing: lines keep coming.
        """
        r, w = nonBlockingPipe(self)
        log, stats = self.startLog(w)
        log.summarize({}, numbered(1))
        log.reopen()
        log.summarize({}, numbered(2))
        self.reactor.advance(accesslog.WRITE_INTERVAL)
        self.assertEqual(parseLines(readAvailable(r)), [1, 2])


class SocketTests(StreamCase):
    """
    Standard output as a stream socket (as systemd connects it to journald).
    """

    def test_fullSocketNeverBlocksThenDrains(self) -> None:
        """
        A socket whose peer does not read fills up without blocking the
        writer or changing the socket's blocking mode; once read, the lines
        held arrive whole and in order.
        """
        ours, theirs = socket.socketpair()
        self.addCleanup(ours.close)
        self.addCleanup(theirs.close)
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        theirs.setblocking(False)
        log, stats = self.startLog(ours.fileno(), buffer=200)
        total = 3000
        for n in range(total):
            log.summarize({}, numbered(n, 300))
            if n % 100 == 99:
                self.pump()
        self.assertTrue(os.get_blocking(ours.fileno()))
        self.assertGreater(stats.accessLogDropped, 0)
        self.assertEqual(len(self.writers()), 1)
        received = bytearray()
        for _ in range(1000):
            try:
                while True:
                    received += theirs.recv(65536)
            except BlockingIOError:
                pass
            if not self.writers():
                break
            self.pump()
        numbers = parseLines(bytes(received))
        self.assertEqual(numbers, list(range(stats.accessLogLines)))
        self.assertEqual(stats.accessLogLines + stats.accessLogDropped, total)


class ComplaintsTests(SynchronousTestCase):
    """
    L{accesslog._Complaints}: failures logged at most once a minute, with a
    count.
    """

    def test_oncePerIntervalWithCount(self) -> None:
        events = capturedWarnings(self)
        clock = Clock()
        complaints = accesslog._Complaints(clock.seconds, "/var/log/x")
        complaints.failed(2, "Permission denied")
        clock.advance(30)
        complaints.failed(3, "Permission denied")
        clock.advance(29.9)
        complaints.failed(4, "No space left on device")
        self.assertEqual([e["lines"] for e in events], [2])
        clock.advance(0.1)
        complaints.failed(1, "No space left on device")
        self.assertEqual((events[1]["lines"], events[1]["error"]), (8, "No space left on device"))
        complaints.failed(5, "No space left on device")
        complaints.flush()
        self.assertEqual([e["lines"] for e in events], [2, 8, 5])
        complaints.flush()
        self.assertEqual(len(events), 3)
        self.assertEqual(events[0]["where"], "/var/log/x")


class ThreadedClock(Clock):
    """
    A L{Clock} for time (timeouts, the complaint interval) whose
    C{callFromThread} hands calls to the real reactor, where the writer
    thread reports.
    """

    def __init__(self, reactor: Any) -> None:
        super().__init__()
        self._reactor = reactor

    def callFromThread(self, f: Callable[..., object], *args: object, **kw: object) -> None:
        self._reactor.callFromThread(f, *args, **kw)


def withTimeout(d: Deferred[Any], reactor: Any) -> Deferred[Any]:
    return d.addTimeout(WAIT, reactor)


class FileTests(TestCase):
    """
    The file writer: its thread, reopening, failures, stopping.
    """

    def setUp(self) -> None:
        from twisted.internet import reactor

        self.real = reactor
        self.clock = ThreadedClock(reactor)
        self.dir = self.mktemp()
        os.mkdir(self.dir)
        self.path = os.path.join(self.dir, "access.log")

    def startLog(self, path: str, **values: Any) -> tuple[AccessLog, TelemetryStats]:
        stats = TelemetryStats()
        log = AccessLog(
            config(path=path, **values), stats, reactor=self.clock, stopTimeout=WAIT
        )
        log.startService()
        self.addCleanup(self.stopLog, log)
        return log, stats

    def stopLog(self, log: AccessLog) -> Deferred[None]:
        if not log.running:
            return succeed(None)
        return withTimeout(log.stopService(), self.real)

    def flush(self, log: AccessLog) -> Deferred[None]:
        return withTimeout(log.flush(), self.real)

    def umask(self) -> int:
        mask = os.umask(0)
        os.umask(mask)
        return mask

    def read(self, path: str) -> list[int]:
        with open(path, "rb") as f:
            return parseLines(f.read())

    async def test_linesWritten(self) -> None:
        """
        Lines are appended to the file, whole, and counted.
        """
        with open(self.path, "wb") as f:
            f.write(numbered(99) + b"\n")
        log, stats = self.startLog(self.path)
        for n in range(3):
            log.summarize({}, numbered(n))
        await self.flush(log)
        self.assertEqual(self.read(self.path), [99, 0, 1, 2])
        self.assertEqual((stats.accessLogLines, stats.accessLogDropped), (3, 0))

    async def test_linesMeanwhileWaitAnInterval(self) -> None:
        """
        Lines summarized while the thread writes a batch are handed to it
        one interval after that batch is done, not at once (at once, under
        load, the thread took the GIL from the reactor every few requests).
        """
        log, stats = self.startLog(self.path)
        writer = log._writer
        assert writer is not None
        done: Deferred[None] = Deferred()
        batchDone = writer._batchDone

        def reported(outcomes: list[Any]) -> None:
            batchDone(outcomes)
            if not done.called:
                done.callback(None)

        writer._batchDone = reported  # type: ignore[method-assign]
        log.summarize({}, numbered(0))
        self.clock.advance(accesslog.WRITE_INTERVAL)
        log.summarize({}, numbered(1))
        await withTimeout(done, self.real)
        self.assertEqual((writer._inFlight, list(writer._pending)), (0, [numbered(1)]))
        self.assertEqual(self.read(self.path), [0])
        self.clock.advance(accesslog.WRITE_INTERVAL)
        await self.flush(log)
        self.assertEqual(self.read(self.path), [0, 1])
        self.assertEqual((stats.accessLogLines, stats.accessLogDropped), (2, 0))

    async def test_reopenAfterRename(self) -> None:
        """
        After logrotate renamed the file, lines go on to the renamed file
        until L{AccessLog.reopen}; from then on they go to a new file of the
        old name, created at once.
        """
        log, stats = self.startLog(self.path)
        log.summarize({}, numbered(0))
        await self.flush(log)
        rotated = self.path + ".1"
        os.rename(self.path, rotated)
        log.summarize({}, numbered(1))
        log.reopen()
        await self.flush(log)
        self.assertEqual(self.read(self.path), [])
        # Not readable by others: the lines name callers and paths.
        self.assertEqual(os.stat(self.path).st_mode & 0o777, 0o640 & ~self.umask())
        log.summarize({}, numbered(2))
        log.summarize({}, numbered(3))
        await self.flush(log)
        self.assertEqual(self.read(rotated), [0, 1])
        self.assertEqual(self.read(self.path), [2, 3])
        self.assertEqual(stats.accessLogLines, 4)

    async def test_missingDirectoryLogsAndCounts(self) -> None:
        """
        A file that cannot be opened (its directory does not exist) is
        reported at start and when stopping, with the lines lost, without a
        traceback; the lines are counted as dropped and the log keeps
        accepting lines. Once the directory exists, a reopen picks it up.
        """
        events = capturedWarnings(self)
        missing = os.path.join(self.dir, "missing")
        path = os.path.join(missing, "access.log")
        log, stats = self.startLog(path)
        for n in range(3):
            log.summarize({}, numbered(n))
        await self.flush(log)
        for n in range(2):
            log.summarize({}, numbered(n))
        await self.flush(log)
        self.assertEqual((stats.accessLogLines, stats.accessLogDropped), (0, 5))
        self.assertTrue(log.wants("web"))
        self.assertEqual(len(events), 1)
        self.assertIn("No such file or directory", events[0]["error"])
        self.assertEqual(events[0]["where"], log.config.path)
        self.clock.advance(accesslog.COMPLAINT_INTERVAL)
        log.summarize({}, numbered(5))
        await self.flush(log)
        self.assertEqual([e["lines"] for e in events], [0, 6])
        os.mkdir(missing)
        log.reopen()
        log.summarize({}, numbered(6))
        await self.flush(log)
        self.assertEqual(self.read(path), [6])
        log.summarize({}, numbered(7))
        await self.stopLog(log)
        self.assertEqual(self.read(path), [6, 7])
        self.assertFalse(any("log_failure" in event for event in events))

    async def test_stopWritesWhatIsBuffered(self) -> None:
        """
        Stopping writes the lines not yet handed to the thread, then
        closes the file and ends the thread.
        """
        log, stats = self.startLog(self.path)
        for n in range(500):
            log.summarize({}, numbered(n))
        thread = log._writer._thread  # type: ignore[union-attr]
        await self.stopLog(log)
        self.assertEqual(self.read(self.path), list(range(500)))
        self.assertEqual(stats.accessLogLines, 500)
        thread.join(WAIT)
        self.assertFalse(thread.is_alive())
        self.assertFalse(log.wants("web"))

    async def test_stuckDiskDropsAndStopGivesUp(self) -> None:
        """
        While the thread is stuck (a disk that does not answer), lines
        beyond C{buffer} are dropped and counted, and stopping gives up
        after its timeout, counting the lines held as dropped.
        """
        entered, release = threading.Event(), threading.Event()
        self.addCleanup(release.set)

        def stuck() -> int:
            entered.set()
            release.wait(WAIT)
            raise OSError(5, "Input/output error")

        stats = TelemetryStats()
        log = AccessLog(config(path=self.path, buffer=10), stats, reactor=self.clock)
        self.patch(accesslog, "_pathOpener", lambda path: stuck)
        log.startService()
        self.assertTrue(entered.wait(WAIT))
        for n in range(25):
            log.summarize({}, numbered(n))
            self.clock.advance(0)
        self.assertEqual(stats.accessLogDropped, 15)
        self.assertEqual(log._writer.held, 10)  # type: ignore[union-attr]
        thread = log._writer._thread  # type: ignore[union-attr]
        d = log.stopService()
        self.assertNoResult(d)
        self.clock.advance(accesslog.STOP_TIMEOUT)
        self.successResultOf(d)
        self.assertEqual((stats.accessLogLines, stats.accessLogDropped), (0, 25))
        release.set()
        thread.join(WAIT)
        self.assertFalse(thread.is_alive())

    async def test_writeFailingMidLineLeavesTornLineAlone(self) -> None:
        """
        When a write fails in the middle of a line (a full disk), the lines
        before it count as written, the others as dropped, and the next
        write starts on a new line, so that the torn line never runs into a
        whole one.
        """
        r, w = nonBlockingPipe(self)
        fcntl.fcntl(w, F_SETPIPE_SZ, 4096)
        os.set_blocking(w, False)
        self.patch(accesslog, "_pathOpener", lambda path: lambda: os.dup(w))
        log, stats = self.startLog(self.path)
        for n in range(3):
            log.summarize({}, numbered(n, 3000))
        await self.flush(log)
        self.assertEqual((stats.accessLogLines, stats.accessLogDropped), (1, 2))
        first = readAvailable(r)
        self.assertEqual(len(first), 4096)
        log.summarize({}, numbered(3, 100))
        await self.flush(log)
        self.assertEqual((stats.accessLogLines, stats.accessLogDropped), (2, 2))
        lines = (first + readAvailable(r)).split(b"\n")
        self.assertEqual(len(lines), 4)
        self.assertEqual(json.loads(lines[0])["tries"], 0)
        self.assertRaises(ValueError, json.loads, lines[1])
        self.assertEqual(json.loads(lines[2])["tries"], 3)
        self.assertEqual(lines[3], b"")

    async def test_threadBugLogged(self) -> None:
        """
        An unexpected error in the writer thread is logged with its
        traceback, on the reactor thread.
        """

        def broken() -> int:
            raise ZeroDivisionError()

        self.patch(accesslog, "_pathOpener", lambda path: broken)
        stats = TelemetryStats()
        log = AccessLog(config(path=self.path), stats, reactor=self.clock)
        log.startService()
        self.addCleanup(lambda: log.stopService() and None)
        log._writer._thread.join(WAIT)  # type: ignore[union-attr]
        await deferLater(self.real, 0, lambda: None)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    async def test_stdoutRegularFile(self) -> None:
        """
        Standard output redirected to a regular file is written by the
        thread; reopening it does nothing.
        """
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        self.addCleanup(os.close, fd)
        stats = TelemetryStats()
        log = AccessLog(config(), stats, reactor=self.clock, stdout=fd)
        log.startService()
        self.addCleanup(self.stopLog, log)
        self.assertIsInstance(log._writer, accesslog._ThreadWriter)
        log.summarize({}, numbered(1))
        log.reopen()
        log.summarize({}, numbered(2))
        await self.flush(log)
        self.assertEqual(self.read(self.path), [1, 2])


class RealReactorPipeTests(TestCase):
    """
    The standard-output writer on the real reactor: it writes when the
    reactor says the pipe is writable, with no help.
    """

    async def test_backlogDrainsAsReaderReads(self) -> None:
        from twisted.internet import reactor

        r, w = nonBlockingPipe(self)
        received = bytearray()
        done: Deferred[None] = Deferred()
        total = 2000

        class Reader:
            def fileno(self) -> int:
                return r

            def doRead(self) -> None:
                received.extend(readAvailable(r))
                if received.count(b"\n") == total and not done.called:
                    done.callback(None)

            def connectionLost(self, reason: object) -> None:
                pass

            def logPrefix(self) -> str:
                return "Reader"

        reader = Reader()
        stats = TelemetryStats()
        log = AccessLog(config(), stats, reactor=reactor, stdout=w)
        log.startService()
        self.addCleanup(log.stopService)
        for n in range(total):
            log.summarize({}, numbered(n, 300))
        reactor.addReader(reader)
        self.addCleanup(reactor.removeReader, reader)
        await withTimeout(done, reactor)
        self.assertEqual(parseLines(bytes(received)), list(range(total)))
        self.assertEqual((stats.accessLogLines, stats.accessLogDropped), (total, 0))


class ReopenSignalTests(TestCase):
    """
    L{installReopenSignal}.
    """

    def setUp(self) -> None:
        original = signal.getsignal(signal.SIGUSR1)
        self.addCleanup(signal.signal, signal.SIGUSR1, original)

    async def test_signalSchedulesCallback(self) -> None:
        """
        SIGUSR1 calls the callback on the reactor thread; a handler
        installed before still runs; uninstalling puts it back.
        """
        from twisted.internet import reactor

        before: list[int] = []

        def previous(number: int, frame: object) -> None:
            before.append(number)

        signal.signal(signal.SIGUSR1, previous)
        called: Deferred[str] = Deferred()
        uninstall = installReopenSignal(
            reactor, lambda: called.callback(threading.current_thread().name)
        )
        os.kill(os.getpid(), signal.SIGUSR1)
        thread = await withTimeout(called, reactor)
        self.assertEqual(thread, threading.main_thread().name)
        self.assertEqual(before, [signal.SIGUSR1])
        uninstall()
        self.assertIs(signal.getsignal(signal.SIGUSR1), previous)

    async def test_reopensTheLog(self) -> None:
        """
        Wired to L{AccessLog.reopen}, the signal makes the log reopen its
        file.
        """
        from twisted.internet import reactor

        directory = self.mktemp()
        os.mkdir(directory)
        path = os.path.join(directory, "access.log")
        log = AccessLog(config(path=path), TelemetryStats(), reactor=reactor)
        log.startService()
        self.addCleanup(log.stopService)
        reopened: Deferred[None] = Deferred()

        def reopen() -> None:
            log.reopen()
            reopened.callback(None)

        uninstall = installReopenSignal(reactor, reopen)
        self.addCleanup(uninstall)
        await withTimeout(log.flush(), reactor)
        os.rename(path, path + ".1")
        os.kill(os.getpid(), signal.SIGUSR1)
        await withTimeout(reopened, reactor)
        log.summarize({}, numbered(1))
        await withTimeout(log.flush(), reactor)
        with open(path, "rb") as f:
            self.assertEqual(parseLines(f.read()), [1])
