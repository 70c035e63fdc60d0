#!/usr/bin/env python3
"""
How long a change in etcd takes to reach the etcd namer, on loopback.

Starts an etcd (the C{etcd} binary, one member, a temp data dir, free
ports), an L{EtcdNamer<meshproxy.discovery.etcd.EtcdNamer>} following
C{/meshproxy/services/}, and a writer; then, N times, puts a new value for
one instance and measures the time from the start of the put to the
namer's observable changing. The baseline, measured in the same run, is
the put's own round trip (from its start to etcd's answer): the namer's
delay is that plus the watch's notification.

A benchmark, not a test: it never fails on a figure. Usage::

    python bench/etcd_namer.py            # 100 puts
    python bench/etcd_namer.py --puts 1000
"""

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, HERE)

from etcd_rules import percentile, startEtcd  # noqa: E402  (bench/, beside this file)


async def measure(reactor, puts):
    from twisted.internet import defer

    from meshproxy.discovery.endpoints import Endpoint
    from meshproxy.discovery.etcd import EtcdNamer
    from meshproxy.etcd import EtcdClient

    if shutil.which("etcd") is None:
        print("etcd is not installed (Debian: apt-get install etcd-server)", file=sys.stderr)
        return 2
    base = tempfile.mkdtemp(prefix="etcd-bench-")
    # The same etcd as bench/etcd_rules.py's, on free loopback ports.
    url, writer, process, ended = await startEtcd(reactor, base)
    namer = None
    try:
        namer = EtcdNamer("/#/etcd", EtcdClient([url], reactor=reactor),
                          "/meshproxy/services/", reactor=reactor)
        namer.startService()
        await namer.whenLoaded()
        users = namer.bind("users")
        key = "/meshproxy/services/users/a"
        roundTrips, updates = [], []
        for i in range(puts + 10):
            changed = defer.Deferred()
            cancel = users.subscribe(
                lambda addr, changed=changed: changed.called or changed.callback(None)
            )
            started = time.perf_counter()
            await writer.put(key, str(Endpoint("10.0.0.1", 1000 + i % 50000)).encode())
            answered = time.perf_counter()
            await changed
            seen = time.perf_counter()
            cancel()
            if i >= 10:  # the first ones warm the connections up
                roundTrips.append((answered - started) * 1000)
                updates.append((seen - started) * 1000)
        print("%d puts, etcd %s on loopback" % (puts, url))
        print("%-28s %8s %8s %8s" % ("", "median", "p99", "max"))
        for name, values in (("put round trip (baseline)", roundTrips),
                             ("put -> namer update", updates)):
            print("%-28s %7.2fms %7.2fms %7.2fms" % (
                name, statistics.median(values), percentile(values, 0.99), max(values)))
        print("namer update / put round trip (medians): %.2f" % (
            statistics.median(updates) / statistics.median(roundTrips)))
        return 0
    finally:
        if namer is not None:
            await namer.stopService()
        await writer.close()
        process.signalProcess("TERM")
        await ended
        shutil.rmtree(base, ignore_errors=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--puts", type=int, default=100, help="puts measured (default 100)")
    options = parser.parse_args()
    from twisted.internet import defer, task

    status = []

    def run(reactor):
        d = defer.Deferred.fromCoroutine(measure(reactor, options.puts))
        d.addCallback(status.append)
        return d

    try:
        task.react(run)
    except SystemExit as e:
        if e.code:
            raise
    return status[0] if status else 1


if __name__ == "__main__":
    sys.exit(main())
