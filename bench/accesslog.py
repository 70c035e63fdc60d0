#!/usr/bin/env python3
"""
Cost of the access log on the reactor thread, and what its writers sustain.

  - per call, on the reactor thread: C{formatLine} of a typical summary,
    C{formatTime}, C{stripQuery}, C{wants} (sampled and not) and
    C{summarize} (the append to the buffer; the hand-off to the writer once
    per reactor iteration is measured in the next part);
  - drain: the writer alone, the reactor idle: the buffer (10000 lines)
    filled at once, then written, again and again for C{--seconds};
  - sustained: a producer summarizes C{--batch} lines per reactor iteration
    for C{--seconds}, as fast as it can (a saturated reactor), each line
    after C{--work} microseconds of busy work (a request); reported are
    the lines written per second, the lines dropped (buffer full), and the
    reactor time per line (summarize plus the hand-off);

for a file (the writer thread) and for standard output made a pipe read by
C{cat > /dev/null} (the non-blocking writer). Lines are about 440 bytes.

This is a benchmark, not a test: it prints figures and never fails on them.

  PYTHONPATH=. python bench/accesslog.py [--seconds 3] [--batch 10 1000] [--work 20] [--dir /tmp]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import timeit
from typing import Any

from twisted.internet import defer, task

from meshproxy.config.telemetry import AccessLogConfig
from meshproxy.telemetry.accesslog import (
    AccessLog,
    _Complaints,
    _Writer,
    formatLine,
    formatTime,
    stripQuery,
)
from meshproxy.telemetry.spans import TelemetryStats

SUMMARY: dict[str, Any] = {
    "time": "2026-12-01T09:00:00.123Z",
    "router": "web",
    "name": "/#/fs/users",
    "method": "GET",
    "authority": "users.example.internal",
    "path": "/api/v1/users/12345/profile",
    "status": 200,
    "meshErr": None,
    "durationMs": 12.345,
    "ttfbMs": 11.002,
    "bytesIn": 0,
    "bytesOut": 1834,
    "endpoint": "10.1.2.3:8080",
    "tries": 1,
    "traceId": "0af7651916cd43dd8448eb211c80319c",
    "reqId": "0af7651916cd43dd-1",
    "client": "10.9.8.7",
    "identity": "spiffe://mesh.local/ns/default/sa/frontend",
}


def perCall(stmt: Any, number: int = 200000) -> float:
    """
    Microseconds per call of C{stmt}, best of 5.
    """
    return min(timeit.repeat(stmt, number=number, repeat=5)) / number * 1e6


class NoReactor:
    """
    Just enough of a reactor for L{micro}: calls scheduled are never run.
    """

    def seconds(self) -> float:
        return 0.0

    def callLater(self, delay: float, f: Any) -> Any:
        return self

    def cancel(self) -> None:
        pass


def inert(limit: int) -> _Writer:
    """
    A writer that only buffers (its hand-off is never run).
    """
    return _Writer(NoReactor(), TelemetryStats(), limit, _Complaints(time.time, "-"))


def wantsCost(rate: float) -> float:
    log = AccessLog(
        AccessLogConfig.model_validate({"sampleRate": rate}), TelemetryStats(), reactor=NoReactor()
    )
    log._writer = inert(1)
    return perCall(lambda: log.wants("web"))


def micro() -> None:
    line = formatLine(SUMMARY)
    print("line: %d bytes" % (len(line),))
    print("formatLine           %6.2f us" % perCall(lambda: formatLine(SUMMARY)))
    now = time.time()
    print("formatTime           %6.2f us" % perCall(lambda: formatTime(now)))
    target = b"/api/v1/users/12345/profile?token=abc&x=1"
    print("stripQuery           %6.2f us" % perCall(lambda: stripQuery(target)))
    for rate in (1.0, 0.1):
        print("wants (rate %.1f)     %6.2f us" % (rate, wantsCost(rate)))
    # summarize alone: the append to the buffer (the writer's hand-off, once
    # per reactor iteration, is in the sustained figures).
    log = AccessLog(AccessLogConfig(), TelemetryStats(), reactor=NoReactor())
    log._writer = inert(10**7)
    print("summarize            %6.2f us" % perCall(lambda: log.summarize(SUMMARY, line)))


def startLog(reactor: Any, path: str, fd: int) -> tuple[AccessLog, TelemetryStats]:
    stats = TelemetryStats()
    config = AccessLogConfig.model_validate({"path": path})
    log = AccessLog(config, stats, reactor=reactor, stdout=fd)
    log.startService()
    return log, stats


async def drain(reactor: Any, path: str, seconds: float, fd: int) -> None:
    """
    The writer alone: fill the buffer at once, wait until it is written,
    again for C{seconds}; report the lines written per second.
    """
    log, stats = startLog(reactor, path, fd)
    line = formatLine(SUMMARY)
    start = time.perf_counter()
    while time.perf_counter() < start + seconds:
        for _ in range(log.config.buffer):
            log.summarize(SUMMARY, line)
        await log.flush()
    elapsed = time.perf_counter() - start
    await log.stopService()
    print(
        "%-11s drain:      written %8.0f lines/s (%.0f MB/s), dropped %d"
        % (
            "file" if path != "-" else "stdout pipe",
            stats.accessLogLines / elapsed,
            stats.accessLogLines * (len(line) + 1) / elapsed / 1e6,
            stats.accessLogDropped,
        )
    )


async def sustained(
    reactor: Any, path: str, seconds: float, batch: int, fd: int, work: float
) -> None:
    """
    Summarize C{batch} lines per reactor iteration for C{seconds}, each after
    C{work} microseconds of busy work (a request's processing, holding the
    GIL), then report what was written and dropped, and the reactor's time
    per line spent on the log (the summarize calls and the writer's
    hand-off, which the reactor runs once per iteration).
    """
    log, stats = startLog(reactor, path, fd)
    writer: Any = log._writer
    busy = 0.0
    push = writer._push

    def timedPush() -> None:
        nonlocal busy
        t0 = time.perf_counter()
        push()
        busy += time.perf_counter() - t0

    writer._push = timedPush
    line = formatLine(SUMMARY)
    summarize = log.summarize
    offered = 0
    start = time.perf_counter()
    while time.perf_counter() < start + seconds:
        if work:
            for _ in range(batch):
                until = time.perf_counter() + work / 1e6
                while time.perf_counter() < until:
                    pass
                t0 = time.perf_counter()
                summarize(SUMMARY, line)
                busy += time.perf_counter() - t0
        else:
            t0 = time.perf_counter()
            for _ in range(batch):
                summarize(SUMMARY, line)
            busy += time.perf_counter() - t0
        offered += batch
        await task.deferLater(reactor, 0, lambda: None)
    await log.flush()
    elapsed = time.perf_counter() - start
    await log.stopService()
    print(
        "%-11s batch %4d, work %3.0f us: written %8.0f lines/s of %8.0f offered, dropped %4.1f%%, "
        "reactor %.2f us/line"
        % (
            "file" if path != "-" else "stdout pipe",
            batch,
            work,
            stats.accessLogLines / elapsed,
            offered / elapsed,
            100.0 * stats.accessLogDropped / max(offered, 1),
            busy / offered * 1e6,
        )
    )


async def main(reactor: Any, options: argparse.Namespace) -> None:
    micro()
    with tempfile.TemporaryDirectory(dir=options.dir) as directory:
        path = os.path.join(directory, "access.log")
        await drain(reactor, path, options.seconds, 1)
        for batch in options.batch:
            await sustained(reactor, path, options.seconds, batch, 1, options.work)
    cat = subprocess.Popen("cat > /dev/null", shell=True, stdin=subprocess.PIPE)
    assert cat.stdin is not None
    try:
        await drain(reactor, "-", options.seconds, cat.stdin.fileno())
        for batch in options.batch:
            await sustained(
                reactor, "-", options.seconds, batch, cat.stdin.fileno(), options.work
            )
    finally:
        cat.stdin.close()
        cat.wait()


def run() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument(
        "--batch",
        type=int,
        nargs="+",
        default=[10, 1000],
        help="lines summarized per reactor iteration (one run each)",
    )
    parser.add_argument(
        "--work",
        type=float,
        default=0.0,
        help="microseconds of busy work on the reactor thread before each line",
    )
    parser.add_argument("--dir", default=None, help="where the log file is written")
    options = parser.parse_args()
    task.react(lambda reactor: defer.ensureDeferred(main(reactor, options)))


if __name__ == "__main__":
    sys.exit(run())
