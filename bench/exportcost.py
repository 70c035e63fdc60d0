"""
What one span export costs the proxy process: the exporter's own code
(L{SpanExporter}: the batch encoded by L{ZipkinEncoder}, posted through its
treq client and persistent pool, the answer read) posting batches of
recorded one-try requests to C{bench/run.py}'s span receiver on loopback, one
post at a time, on a real reactor. It prints the CPU time of the process
per batch, per post without the encoding, and both per request of the
batch; the receiver runs in a process of its own, not counted.

Usage (from the repository root):

    PYTHONPATH=. python bench/exportcost.py                      # 2000 posts of 128 requests
    PYTHONPATH=. python bench/exportcost.py --posts 500 --requests 8

For instructions rather than time (repeatable on a shared machine), run it
under callgrind at two post counts and divide the difference (the receiver
is a child process, which callgrind does not follow):

    valgrind --tool=callgrind --callgrind-out-file=/dev/null \\
        python bench/exportcost.py --posts 300 --quiet     # and --posts 1300
    (instructions per batch, encoded and posted = (I1300 - I300) / 1000)

The batch size of a live exporter is C{telemetry.tracing.batch.size}
spans (256 by default: 128 one-try requests), so a post's cost is spread
over that many requests; C{bench/run.py --trace-batch} and C{bench/tlsperf.py
--trace-batch} measure the proxy live at other sizes.
"""

import argparse
import os
import resource
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import run  # noqa: E402
from liveir import inTempDir, startReceiver  # noqa: E402
from telemetry_inprocess import Encoding  # noqa: E402
from twisted.internet import defer, reactor  # noqa: E402

from meshproxy.config.telemetry import BatchConfig  # noqa: E402
from meshproxy.telemetry.export import SpanExporter, ZipkinEncoder  # noqa: E402
from meshproxy.telemetry.spans import TelemetryStats  # noqa: E402


@defer.inlineCallbacks
def measure(args, url, stats):
    batch = Encoding("encode", None).batch[: args.requests]
    exporter = SpanExporter(
        "zipkin",
        url,
        ZipkinEncoder("meshproxy").encode,
        batch=BatchConfig(),
        gzip=False,
        timeout=10,
        stats=stats,
        reactor=reactor,
        maxInFlight=1,
    )
    exporter.startService()
    count = sum(record.spanCount for record in batch)

    def onePost():
        # The exporter's own post of a batch (_post: encode, post, read
        # the answer, count), awaited through the deferred it keeps.
        exporter._post(batch, count)
        [d] = exporter._inFlight
        waited = defer.Deferred()
        d.addBoth(lambda result: (reactor.callLater(0, waited.callback, None), result)[1])
        return waited

    for _ in range(20):
        yield onePost()
    started = time.process_time()
    before = resource.getrusage(resource.RUSAGE_SELF)
    for _ in range(args.posts):
        yield onePost()
    posting = time.process_time() - started
    after = resource.getrusage(resource.RUSAGE_SELF)
    system = (after.ru_stime - before.ru_stime) / args.posts
    encoder = ZipkinEncoder("meshproxy")
    encoder.encode(batch)
    started = time.process_time()
    # (Not under --quiet: callgrind's count is then of the posts alone.)
    for _ in range(0 if args.quiet else args.posts):
        encoder.encode(batch)
    encoding = time.process_time() - started
    yield exporter.stopService()
    # Every post accepted: a post that failed costs less than one that did
    # not, and is no figure of the export's cost.
    expected = (20 + args.posts) * count
    if stats.spansDropped or stats.spansExported.get("zipkin") != expected:
        raise RuntimeError(
            "spans not all exported: %r exported of %d, dropped %r"
            % (stats.spansExported, expected, stats.spansDropped)
        )
    return posting / args.posts, system, encoding / args.posts, len(encoder.encode(batch))


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--posts", type=int, default=2000, help="timed posts (default 2000)")
    parser.add_argument("--requests", type=int, default=128,
                        help="one-try requests a batch (default 128: 256 spans, the default"
                             " batch size; at most 128)")
    parser.add_argument("--quiet", action="store_true", help="no output (for callgrind)")
    args = parser.parse_args(argv)
    if not 1 <= args.requests <= 128:
        parser.error("--requests is from 1 to 128")
    [port] = run.free_ports(1)

    def measureIn(tmp):
        procs = []
        result = {}
        try:
            startReceiver(args, tmp, port, procs)
            d = measure(args, "http://127.0.0.1:%d/api/v2/spans" % (port,), TelemetryStats())

            def done(outcome):
                result["outcome"] = outcome
                reactor.stop()

            d.addBoth(done)
            reactor.run()
        finally:
            for proc in procs:
                proc.stop()
        return result.get("outcome")

    outcome = inTempDir("exportcost-", False, measureIn)
    if not isinstance(outcome, tuple):
        raise SystemExit("failed: %s" % (outcome,))
    perBatch, system, encoding, size = outcome
    if args.quiet:
        return
    n = args.requests
    print("batch: %d requests, %d spans, %d bytes of JSON" % (n, 2 * n, size))
    print("per batch (encode and post): %8.1f us CPU, %6.2f us per request"
          % (perBatch * 1e6, perBatch * 1e6 / n))
    print("  encoding alone:            %8.1f us CPU, %6.2f us per request"
          % (encoding * 1e6, encoding * 1e6 / n))
    post = perBatch - encoding
    print("  the post without encoding: %8.1f us CPU, %6.2f us per request"
          % (post * 1e6, post * 1e6 / n))
    print("  of which in the kernel:    %8.1f us CPU, %6.2f us per request"
          % (system * 1e6, system * 1e6 / n))


if __name__ == "__main__":
    main(sys.argv[1:])
