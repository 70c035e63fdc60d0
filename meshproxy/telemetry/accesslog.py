"""
The access log: one bare JSON object per line per request.

The request path asks L{AccessLog.wants} whether a request is to be logged
(the sampling decision), and when it is, builds the summary (the fields of
L{SUMMARY_FIELDS}) and its line once (L{formatLine}) and hands both to
L{AccessLog.summarize}. That call only appends the line to a bounded buffer:
nothing on the reactor thread ever waits for the log's reader or its disk.
A line that does not fit is dropped and counted
(L{TelemetryStats.accessLogDropped}); a line written is counted too
(L{TelemetryStats.accessLogLines}).

Where the lines go:

  - C{path: "-"}, standard output (journald, a pipe, a terminal). The lines
    are written by the reactor without ever blocking: to a socket (journald's
    stream) with C{MSG_DONTWAIT} sends, to a pipe or terminal through a file
    description of its own opened non-blocking; file descriptor 1 itself is
    never made non-blocking, since twistd's own log (C{--logfile=-}) writes
    to it with blocking writes. When the reader is slow, lines wait in the
    buffer; when the buffer is full, they are dropped. Standard output
    redirected to a regular file is written like a file (below), without
    reopening.
  - a file: one thread of the access log's own does the disk writes (a disk
    may block); the reactor hands it the lines of each iteration as one
    batch. L{AccessLog.reopen} (on SIGUSR1, see L{installReopenSignal})
    closes and reopens the file by name, so that after logrotate renamed it
    the next lines go to a new file of the old name.

A failed open or write (permission, a missing directory, a full disk) drops
the lines concerned (counted) and is logged at most once a minute, with the
number of lines lost since the last such message; it never stops the proxy.
"""

from __future__ import annotations

import json
import math
import os
import queue
import random as _random
import select
import signal
import socket
import stat
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, TimeoutError, succeed
from twisted.internet.interfaces import IDelayedCall, IWriteDescriptor
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from meshproxy.config.telemetry import AccessLogConfig
from meshproxy.telemetry.spans import SUMMARY_FIELDS, ISummarySink, TelemetryStats

__all__ = [
    "GRPC_FIELDS",
    "AccessLog",
    "decodeTarget",
    "formatLine",
    "formatTime",
    "installReopenSignal",
    "stripQuery",
]

_log = Logger()

#: Seconds at least between two messages about failed writes.
COMPLAINT_INTERVAL = 60.0

#: Seconds L{AccessLog.stopService} waits for the buffered lines to be
#: written before dropping the rest.
STOP_TIMEOUT = 5.0

# Bytes written to a stream at most in one call: whole lines, so that a
# write the kernel takes whole never ends inside a line. A pipe takes a
# write of up to PIPE_BUF bytes whole or not at all, even when another
# process writes to the same pipe (twistd's log on standard output).
_PIPE_CHUNK = getattr(select, "PIPE_BUF", 512)
_SOCKET_CHUNK = 65536

# Characters JSON leaves raw but some line readers take as line ends
# (str.splitlines, JavaScript before ES2019).
_LINE_BREAKS = (("\u2028", "\\u2028"), ("\u2029", "\\u2029"), ("\x85", "\\u0085"))


def _fallback(value: object) -> str:
    """
    Make a value the JSON encoder does not know into a string, rather than
    fail the request that is being logged.
    """
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, default=_fallback).encode


#: Seconds lines wait to be handed on together: one write (or one batch to
#: the writer thread, with its hand-offs of the GIL and the reactor's
#: wake-up) per interval rather than per reactor iteration, which under load
#: cost more than the lines themselves (measured: 35-40 us per request at
#: 9,000 requests/s, against 13 for making and queueing the line).
WRITE_INTERVAL = 0.05


#: The fields a gRPC call's summary has after those of L{SUMMARY_FIELDS}:
#: C{grpcStatus}, its status code (a number; L{None} when not known);
#: C{grpcService} and C{grpcMethod}, what its path names
#: (C{/pkg.Service/Method}), or L{None} for a path not of that form.
GRPC_FIELDS = ("grpcStatus", "grpcService", "grpcMethod")
_GRPC_SUMMARY_FIELDS = SUMMARY_FIELDS + GRPC_FIELDS


def formatLine(summary: dict[str, Any]) -> bytes:
    """
    A request summary as one access-log line.

    @param summary: the fields of L{SUMMARY_FIELDS}, and those of
        L{GRPC_FIELDS} for a gRPC call (one with C{grpcStatus}); a missing
        one is written as C{null}, other keys are left out; JSON-ready.
        Built in that order, it is serialised as it is (the fast way);
        otherwise a copy in that order is.
    @return: a compact JSON object in UTF-8 with the fields in the order of
        L{SUMMARY_FIELDS}, without a newline (none can occur inside: JSON
        escapes control characters, and U+2028, U+2029 and U+0085 are
        escaped too). A string that is not valid Unicode (a lone surrogate)
        is written as its C{\\u} escape. Never raises for a value JSON
        cannot represent: bytes are decoded (UTF-8, with replacement),
        anything else is written as C{str(value)}.
    """
    fields = _GRPC_SUMMARY_FIELDS if "grpcStatus" in summary else SUMMARY_FIELDS
    if tuple(summary) != fields:
        summary = {field: summary.get(field) for field in fields}
    text = _encode(summary)
    if not text.isascii():
        for raw, escaped in _LINE_BREAKS:
            if raw in text:
                text = text.replace(raw, escaped)
        try:
            return text.encode("utf-8")
        except UnicodeEncodeError:
            return text.encode("utf-8", "backslashreplace")
    return text.encode("ascii")


def formatTime(when: float) -> str:
    """
    The C{time} field: RFC 3339 in UTC with milliseconds.

    @param when: seconds since the epoch.
    @return: e.g. C{"2026-12-01T09:00:00.123Z"}.
    """
    seconds, millis = divmod(math.floor(when * 1000), 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + ".%03dZ" % millis


def decodeTarget(target: bytes) -> str:
    """
    A request target as text, query included.

    @param target: the request target as received.
    @return: the target decoded as UTF-8; bytes that are not UTF-8 become
        U+FFFD. Never raises.
    """
    return target.decode("utf-8", "replace")


def stripQuery(target: bytes) -> str:
    """
    The C{path} field when the query is not logged: the request target up
    to its first C{?}, as text.

    @param target: the request target as received.
    @return: see L{decodeTarget}. Never raises.
    """
    end = target.find(b"?")
    if end >= 0:
        target = target[:end]
    return target.decode("utf-8", "replace")


def installReopenSignal(
    reactor: Any, callback: Callable[[], object], signum: int = signal.SIGUSR1
) -> Callable[[], None]:
    """
    Call C{callback} on the reactor thread whenever the process gets
    C{signum} (SIGUSR1: what logrotate's C{postrotate} sends).

    The handler only schedules the call. A Python handler installed before
    (twistd installs one on SIGUSR1 to rotate its own log file when
    C{--logfile} names a file, once its logger starts) is still called
    after it; install this one after twistd's logger has started (from a
    service's C{startService}) so that both run.

    @param reactor: provides L{IReactorFromThreads}.
    @param callback: called with no arguments, on the reactor thread.
    @param signum: the signal.
    @return: a function that puts the previous handler back.
    @raise ValueError: when called from another thread than the main one.
    """
    previous = signal.getsignal(signum)

    def handler(number: int, frame: Any) -> None:
        reactor.callFromThread(callback)
        if callable(previous):
            previous(number, frame)

    signal.signal(signum, handler)

    def uninstall() -> None:
        signal.signal(signum, previous if previous is not None else signal.SIG_DFL)

    return uninstall


class _Complaints:
    """
    Reports failed writes at most once per L{COMPLAINT_INTERVAL}, with the
    number of lines lost since the last report.
    """

    def __init__(self, seconds: Callable[[], float], where: str) -> None:
        """
        @param seconds: the clock.
        @param where: what the log writes to, for the messages.
        """
        self._seconds = seconds
        self._where = where
        self._lastReport: float | None = None
        self._unreported = 0
        self._error = ""

    def failed(self, lines: int, error: str) -> None:
        """
        Something failed; C{lines} lines were lost with it (0 when nothing
        was being written, e.g. a failed open at start).
        """
        self._unreported += lines
        self._error = error
        now = self._seconds()
        if self._lastReport is None or now - self._lastReport >= COMPLAINT_INTERVAL:
            self._report(now)

    def flush(self) -> None:
        """
        Report what was not reported yet, if anything failed since the last
        report.
        """
        if self._unreported:
            self._report(self._seconds())

    def _report(self, now: float) -> None:
        self._lastReport = now
        _log.warn(
            "access log {where}: {error}; {lines} lines dropped",
            where=self._where,
            error=self._error,
            lines=self._unreported,
        )
        self._unreported = 0


def _describe(error: OSError) -> str:
    """
    A short text for an I/O error (no traceback).
    """
    return error.strerror or str(error)


class _Writer:
    """
    The bounded buffer of lines both kinds of writer share: how many lines
    are held, the drop when full, and one push per reactor iteration.

    @ivar held: lines accepted and not yet written or dropped.
    """

    #: Bytes of lines waiting to be handed on (to the thread, to a chunk)
    #: at most, whatever the line limit: at least this, or a kibibyte per
    #: line of the limit when that is more. Lines are as long as a client
    #: makes them (a Host of 60 kB), so the count alone does not bound the
    #: memory; what is handed on is at most as much again.
    MIN_BYTES = 16 * 1024 * 1024

    # Set while the writer waits (for its stream to become writable, for its
    # thread to finish a batch): it writes what is pending then, no need to
    # try before.
    _waiting = False

    def __init__(
        self, reactor: Any, stats: TelemetryStats, limit: int, complaints: _Complaints
    ) -> None:
        self._reactor = reactor
        self._stats = stats
        self._limit = limit
        self._byteLimit = max(self.MIN_BYTES, limit * 1024)
        self._complaints = complaints
        # Lines (bytes) in the order they came; the thread writer puts its
        # markers (reopen, flush, stop) among them.
        self._pending: deque[Any] = deque()
        # The bytes of the lines in _pending.
        self._pendingBytes = 0
        self._scheduled: IDelayedCall | None = None
        self.held = 0

    def add(self, line: bytes) -> None:
        """
        Queue one line (without its newline), or drop it when the buffer is
        full.
        """
        size = len(line) + 1
        if self.held >= self._limit or self._pendingBytes + size > self._byteLimit:
            self._stats.accessLogDropped += 1
            return
        self._pending.append(line)
        self._pendingBytes += size
        self.held += 1
        if self._scheduled is None and not self._waiting:
            self._scheduled = self._reactor.callLater(WRITE_INTERVAL, self._push)

    def _push(self) -> None:
        self._scheduled = None
        self._write()

    def _unschedule(self) -> None:
        if self._scheduled is not None:
            self._scheduled.cancel()
            self._scheduled = None

    def _write(self) -> None:
        """
        Hand on what is pending.
        """
        raise NotImplementedError()

    def _settled(self, written: int, failed: int, error: str | None) -> None:
        """
        Account for lines written or lost.
        """
        self.held -= written + failed
        self._stats.accessLogLines += written
        if failed:
            self._stats.accessLogDropped += failed
        if error is not None:
            self._complaints.failed(failed, error)

    def whenWritten(self) -> Deferred[None]:
        """
        A L{Deferred} that fires once every line held now was written or
        dropped (maybe later ones too).
        """
        raise NotImplementedError()

    def reopen(self) -> None:
        """
        Reopen the file by name, if there is one.
        """

    def stop(self, timeout: float) -> Deferred[None]:
        """
        Write what is held, then let go of the file.

        @param timeout: seconds to wait for the writes; after that, what is
            not written yet is dropped (counted).
        @return: a L{Deferred} that fires when done (never fails).
        """
        raise NotImplementedError()


_NOT_IN_TIME = "not written before the shutdown timeout"


@implementer(IWriteDescriptor)
class _StreamWriter(_Writer):
    """
    Writes lines from the reactor thread to a stream that never blocks it:
    a pipe or terminal opened non-blocking, or a socket sent to with
    C{MSG_DONTWAIT}. When the stream is full, the writer waits for the
    reactor to report it writable.
    """

    def __init__(
        self,
        reactor: Any,
        stats: TelemetryStats,
        limit: int,
        complaints: _Complaints,
        fd: int,
        send: Callable[[bytes], int],
        chunk: int,
        closer: Callable[[], None],
    ) -> None:
        """
        @param fd: what the reactor watches for writability.
        @param send: writes some bytes without blocking, returns how many;
            raises L{BlockingIOError} when none could be.
        @param chunk: bytes written at most per call (whole lines, except
            for a longer line alone).
        @param closer: releases C{fd}.
        """
        super().__init__(reactor, stats, limit, complaints)
        self._fd = fd
        self._send = send
        self._chunkSize = chunk
        self._closer = closer
        # What is left of a chunk the stream took only in part: it goes out
        # before anything else, so that our lines are never cut.
        self._chunk = b""
        self._chunkLines = 0
        self._idle: list[Deferred[None]] = []

    def fileno(self) -> int:
        return self._fd

    def logPrefix(self) -> str:
        return "AccessLog"

    def doWrite(self) -> None:
        self._write()

    def connectionLost(self, reason: Failure) -> None:
        # Called by the reactor when it stops with the writer registered.
        self._waiting = False

    def _nextChunk(self) -> None:
        pending = self._pending
        lines = [pending.popleft()]
        size = len(lines[0]) + 1
        limit = self._chunkSize
        while pending and size + len(pending[0]) + 1 <= limit:
            line = pending.popleft()
            lines.append(line)
            size += len(line) + 1
        lines.append(b"")
        self._chunk = b"\n".join(lines)
        self._chunkLines = len(lines) - 1
        self._pendingBytes -= len(self._chunk)

    def _write(self) -> None:
        self._writeSome()
        # Only now, once the writer's state is whole again: what waits may
        # well add lines.
        if self.held == 0 and self._idle:
            idle, self._idle = self._idle, []
            for d in idle:
                d.callback(None)

    def _writeSome(self) -> None:
        while True:
            if not self._chunk:
                if not self._pending:
                    break
                self._nextChunk()
            chunk = self._chunk
            try:
                sent = self._send(chunk)
            except BlockingIOError:
                sent = 0
            except OSError as e:
                self._fail(_describe(e))
                break
            if sent < len(chunk):
                done = chunk.count(b"\n", 0, sent)
                self._chunk = chunk[sent:]
                self._chunkLines -= done
                self._settled(done, 0, None)
                if not self._waiting:
                    self._waiting = True
                    self._reactor.addWriter(self)
                return
            lines = self._chunkLines
            self._chunk, self._chunkLines = b"", 0
            self._settled(lines, 0, None)
        if self._waiting:
            self._waiting = False
            self._reactor.removeWriter(self)

    def _fail(self, error: str) -> None:
        """
        The stream failed (its reader went away): drop what is held; the
        next line tries again.
        """
        lost = self._chunkLines + len(self._pending)
        self._chunk, self._chunkLines = b"", 0
        self._pending.clear()
        self._pendingBytes = 0
        self._settled(0, lost, error)

    def whenWritten(self) -> Deferred[None]:
        if self._scheduled is not None:
            self._unschedule()
            self._write()
        if self.held == 0:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._idle.append(d)
        return d

    def stop(self, timeout: float) -> Deferred[None]:
        d = self.whenWritten()
        d.addTimeout(timeout, self._reactor)
        d.addErrback(_timedOut)
        d.addCallback(lambda _: self._close())
        return d

    def _close(self) -> None:
        """
        Drop what is still held (counted) and let go of the stream.
        """
        if self._waiting:
            self._waiting = False
            self._reactor.removeWriter(self)
        lost = self._chunkLines + len(self._pending)
        self._chunk, self._chunkLines = b"", 0
        self._pending.clear()
        self._pendingBytes = 0
        if lost:
            self._settled(0, lost, _NOT_IN_TIME)
        self._closer()
        idle, self._idle = self._idle, []
        for d in idle:
            d.callback(None)


def _timedOut(failure: Failure) -> None:
    """
    Let a timeout through as a result (the writes were given up on).
    """
    failure.trap(TimeoutError)


class _Marker:
    """
    What the reactor puts among the lines for the writer thread.
    """

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return "<%s>" % (self.name,)


_REOPEN = _Marker("reopen")
_STOP = _Marker("stop")


class _ThreadWriter(_Writer):
    """
    Writes lines to a file from a thread of its own.

    The reactor hands the thread everything pending (lines, and markers:
    reopen, flush, stop, in order) as one batch, and hands it the next one
    only once the thread is done with it, and then L{WRITE_INTERVAL} later
    (a marker goes at once): under load, batches grow instead of
    multiplying, and the thread, which needs the GIL a few times per batch,
    takes it from the reactor a few times per interval rather than per
    request.
    The thread reports what it did, once per batch, through
    C{callFromThread}.
    """

    def __init__(
        self,
        reactor: Any,
        stats: TelemetryStats,
        limit: int,
        complaints: _Complaints,
        opener: Callable[[], int],
        reopenable: bool,
    ) -> None:
        """
        @param opener: opens the file, returns its descriptor; runs in the
            writer thread; may raise L{OSError}.
        @param reopenable: whether L{reopen} opens the file again.
        """
        super().__init__(reactor, stats, limit, complaints)
        self._opener = opener
        self._reopenable = reopenable
        self._queue: queue.SimpleQueue[list[Any]] = queue.SimpleQueue()
        # Set (on the reactor thread) when stopping gave up waiting: the
        # thread then drops what it still gets instead of writing it.
        self._abandoned = False
        # Batches handed to the thread and not done yet.
        self._inFlight = 0
        # The thread's own: the file, what it did since its last report,
        # whether a write failed in the middle of a line (the next write
        # then starts on a new line, so that the torn one stays alone).
        self._fd: int | None = None
        self._outcomes: list[Any] = []
        self._torn = False
        self._stopped: Deferred[None] = Deferred()
        self._thread = threading.Thread(target=self._run, name="meshproxy-accesslog", daemon=True)
        self._thread.start()

    def _write(self, now: bool = False) -> None:
        """
        Hand on what is pending, if the thread is done with the last batch
        (or C{now}).
        """
        if self._pending and (now or not self._inFlight):
            self._inFlight += 1
            self._waiting = True
            batch = list(self._pending)
            self._pending.clear()
            self._pendingBytes = 0
            self._queue.put(batch)

    def _mark(self, marker: object) -> None:
        """
        Put C{marker} after the lines pending, and hand them on now.
        """
        self._unschedule()
        self._pending.append(marker)
        self._write(now=True)

    def whenWritten(self) -> Deferred[None]:
        """
        A L{Deferred} that fires once the thread has dealt with everything
        given to the writer so far (lines, a reopen).
        """
        d: Deferred[None] = Deferred()
        self._mark(d)
        return d

    def reopen(self) -> None:
        if self._reopenable:
            self._mark(_REOPEN)

    def stop(self, timeout: float) -> Deferred[None]:
        """
        Write what is held, close the file and end the thread. A thread
        stuck in a write past C{timeout} is left to finish on its own (it is
        a daemon thread: it does not keep the process alive).
        """
        self._mark(_STOP)
        d: Deferred[None] = Deferred()

        def done(result: object) -> None:
            if not d.called:
                d.callback(None)

        def expire() -> None:
            if d.called:
                return
            self._abandoned = True
            lost = self.held
            if lost:
                self._settled(0, lost, _NOT_IN_TIME)
            d.callback(None)

        call = self._reactor.callLater(timeout, expire)
        self._stopped.addCallback(done)
        d.addCallback(lambda _: call.cancel() if call.active() else None)
        return d

    def _apply(self, outcomes: list[Any]) -> None:
        """
        Account for what the thread did, in order: C{(written, failed,
        error)} for lines, a L{Deferred} for a flush.
        """
        for outcome in outcomes:
            if isinstance(outcome, Deferred):
                outcome.callback(None)
            elif not self._abandoned:
                self._settled(*outcome)

    def _batchDone(self, outcomes: list[Any]) -> None:
        self._apply(outcomes)
        self._inFlight -= 1
        self._waiting = self._inFlight > 0
        # What came meanwhile goes one interval later, not at once: handed
        # on at once, under load the thread took a batch of a few lines
        # every few requests, and took the GIL from the reactor for each
        # (on one CPU, a switch of threads each time).
        if self._pending and self._scheduled is None and not self._waiting:
            self._scheduled = self._reactor.callLater(WRITE_INTERVAL, self._push)

    def _finished(self, outcomes: list[Any]) -> None:
        self._apply(outcomes)
        self._stopped.callback(None)

    # In the writer thread. What it did is reported once per batch (one
    # callFromThread: the thread needs the GIL as few times as it can).

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException:
            # A bug: say so, on the reactor thread. The lines then stay held
            # until the buffer is full, and are dropped and counted.
            self._reactor.callFromThread(
                _log.failure, "access log writer thread failed", Failure()
            )

    def _loop(self) -> None:
        self._fd = self._open(0)
        if self._outcomes:
            self._reactor.callFromThread(self._apply, self._outcomes)
            self._outcomes = []
        while True:
            batch = self._queue.get()
            lines: list[bytes] = []
            for item in batch:
                if isinstance(item, bytes):
                    lines.append(item)
                    continue
                if lines:
                    self._writeLines(lines)
                    lines = []
                if item is _STOP:
                    _closeQuietly(self._fd)
                    self._reactor.callFromThread(self._finished, self._outcomes)
                    return
                if item is _REOPEN:
                    _closeQuietly(self._fd)
                    self._fd = self._open(0)
                    self._torn = False
                else:
                    self._outcomes.append(item)
            if lines:
                self._writeLines(lines)
            outcomes, self._outcomes = self._outcomes, []
            self._reactor.callFromThread(self._batchDone, outcomes)

    def _open(self, lines: int) -> int | None:
        """
        Open the file; on failure, report it, with the C{lines} lost.
        """
        try:
            return self._opener()
        except OSError as e:
            self._outcomes.append((0, lines, _describe(e)))
            return None

    def _writeLines(self, lines: list[bytes]) -> None:
        count = len(lines)
        if self._abandoned:
            return
        if self._fd is None:
            self._fd = self._open(count)
            if self._fd is None:
                return
        fd = self._fd
        lines.append(b"")
        data = b"\n".join(lines)
        # One write() of whole lines: on a regular file opened O_APPEND the
        # kernel appends it whole, after whatever another process (another
        # worker) appended, never inside it. A short write (a full disk, a
        # file size limit) tears one line: the rest of that line is dropped,
        # not written later, where it would follow another process's lines
        # as a headless fragment; the next write starts on a new line.
        sent = 0
        lost = 0
        try:
            view = memoryview(data)
            while sent < len(data):
                if self._torn:
                    os.write(fd, b"\n")
                    self._torn = False
                sent += os.write(fd, view[sent:])
                if sent < len(data) and data[sent - 1] != 0x0A:
                    self._torn = True
                    sent = data.index(b"\n", sent) + 1
                    lost += 1
        except OSError as e:
            written = data.count(b"\n", 0, sent) - lost
            self._outcomes.append((written, count - written, _describe(e)))
            return
        self._outcomes.append(
            (count - lost, lost, "a short write tore a line" if lost else None)
        )


def _closeQuietly(fd: int | None) -> None:
    """
    Close C{fd} if there is one; an error on close (a file system reporting
    a late write error) loses nothing more than the write it reports.
    """
    if fd is not None:
        try:
            os.close(fd)
        except OSError:
            pass


def _pathOpener(path: str) -> Callable[[], int]:
    def opener() -> int:
        return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)

    return opener


@implementer(ISummarySink)
class AccessLog(Service):
    """
    The access log, as a service: writing starts with the service and
    stops with it (what is buffered then is written, for a bounded time).

    @ivar config: the L{AccessLogConfig}.
    """

    name = "accessLog"

    def __init__(
        self,
        config: AccessLogConfig,
        stats: TelemetryStats,
        *,
        reactor: Any,
        random: Callable[[], float] = _random.random,
        stdout: int = 1,
        stopTimeout: float = STOP_TIMEOUT,
    ) -> None:
        """
        @param config: where to write, how much to sample, the buffer's
            size.
        @param stats: where lines written and dropped are counted.
        @param reactor: provides L{IReactorTime}, L{IReactorFDSet} and
            L{IReactorFromThreads}.
        @param random: returns a float in [0, 1), for sampling.
        @param stdout: the file descriptor C{path: "-"} writes to.
        @param stopTimeout: seconds L{stopService} waits for the buffered
            lines to be written.
        """
        self.config = config
        self._stats = stats
        self._reactor = reactor
        self._random = random
        self._rate = float(config.sampleRate)
        self._stdout = stdout
        self._stopTimeout = stopTimeout
        where = "standard output" if config.path == "-" else config.path
        self._complaints = _Complaints(reactor.seconds, where)
        self._writer: _Writer | None = None

    # ISummarySink

    def wants(self, router: str) -> bool:
        """
        Whether a request of C{router} is to be logged: always at a sample
        rate of 1, never at 0 or while the service is not running,
        otherwise at random at the sample rate.
        """
        if self._writer is None:
            return False
        rate = self._rate
        return rate >= 1.0 or (rate > 0.0 and self._random() < rate)

    def summarize(self, summary: Mapping[str, Any], line: bytes) -> None:
        """
        Queue C{line} to be written; when the buffer is full (or the service
        is not running), drop it and count it.
        """
        writer = self._writer
        if writer is None:
            self._stats.accessLogDropped += 1
            return
        writer.add(line)

    # The rest

    def pathOf(self, target: bytes) -> str:
        """
        The C{path} field for a request target, with or without its query as
        configured (L{stripQuery}, L{decodeTarget}).
        """
        if self.config.query:
            return decodeTarget(target)
        return stripQuery(target)

    def reopen(self) -> None:
        """
        Close and reopen the log file by name (after logrotate moved it); a
        no-op for standard output or when the service is not running.
        """
        if self._writer is not None:
            self._writer.reopen()

    def flush(self) -> Deferred[None]:
        """
        @return: a L{Deferred} that fires once every line queued so far was
            written or dropped.
        """
        if self._writer is None:
            return succeed(None)
        return self._writer.whenWritten()

    def startService(self) -> None:
        Service.startService(self)
        self._writer = self._makeWriter()

    def stopService(self) -> Deferred[None]:
        """
        Write what is buffered, for L{STOP_TIMEOUT} seconds at most, then
        close.
        """
        Service.stopService(self)
        writer, self._writer = self._writer, None
        if writer is None:
            return succeed(None)
        d = writer.stop(self._stopTimeout)
        d.addCallback(lambda _: self._complaints.flush())
        return d

    def _makeWriter(self) -> _Writer:
        """
        The writer for the configured path.
        """
        args = (self._reactor, self._stats, self.config.buffer, self._complaints)
        if self.config.path != "-":
            return _ThreadWriter(*args, _pathOpener(self.config.path), True)
        fd = self._stdout
        try:
            mode = os.fstat(fd).st_mode
        except OSError:
            # Not open: the thread's open (a dup) fails and says so.
            mode = 0
        if stat.S_ISSOCK(mode) and socket.getdefaulttimeout() is None:
            # (With a default timeout, socket.socket would make the shared
            # file description non-blocking.)
            sock = socket.socket(fileno=os.dup(fd))
            flags = socket.MSG_DONTWAIT

            def send(data: bytes) -> int:
                return sock.send(data, flags)

            return _StreamWriter(*args, sock.fileno(), send, _SOCKET_CHUNK, sock.close)
        if mode and not stat.S_ISREG(mode):
            # A file description of our own, so that O_NONBLOCK does not
            # reach the one twistd's log writes to.
            try:
                openFlags = os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
                own = os.open("/proc/self/fd/%d" % (fd,), openFlags)
            except OSError:
                pass
            else:
                write = partial(os.write, own)
                return _StreamWriter(*args, own, write, _PIPE_CHUNK, partial(os.close, own))
        # A regular file, or a stream that cannot be reopened: blocking
        # writes, in a thread.
        return _ThreadWriter(*args, partial(os.dup, fd), False)
