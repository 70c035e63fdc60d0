"""
Tests for L{meshproxy.etcd.PrefixFollower} on a fake clock with a scripted
etcd client: the read and its retries, the watch from the next revision,
the read again after a compaction, the liveness check, and the stale
state with its counters. (The etcd namer and the rules store, its two
users, are tested through it in their own modules.)
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.logger import Logger, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from meshproxy.etcd import (
    EtcdError,
    EtcdUnavailable,
    IPrefixListener,
    KeyValue,
    PrefixFollower,
    WatchEvent,
)
from tests.test_discovery_etcd import FakeEtcd

PREFIX = "/p/"


@implementer(IPrefixListener)
class Recorder:
    """
    A listener writing down what it is told, with the follower's state
    when it was told.
    """

    def __init__(self):
        self.told = []
        self.follower = None
        self.onRead = None

    def prefixRead(self, revision, kvs, first):
        self.told.append(("read", revision, [kv.key for kv in kvs], first))
        if self.onRead is not None:
            self.onRead()

    def prefixLoaded(self):
        self.told.append(("loaded",))

    def prefixEvents(self, events, revision):
        # The follower's revision moves after the listener took them.
        self.told.append(("events", [e.kv.key for e in events], revision,
                          self.follower.revision))

    def prefixLost(self, reason):
        self.told.append(("lost", reason, self.follower.readOnce))


def kv(key, revision):
    return KeyValue(PREFIX + key, b"v", revision)


class PrefixFollowerTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.etcd = FakeEtcd()
        self.listener = Recorder()
        self.follower = PrefixFollower(
            self.etcd, "/p", self.listener, reactor=self.clock, label="thing",
            log=Logger(namespace="tests.follower"),
        )
        self.listener.follower = self.follower
        self.logged = []
        globalLogPublisher.addObserver(self.logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.logged.append)

    def messages(self):
        return [formatEvent(event) for event in self.logged]

    def answer(self, *kvs, revision=10):
        key, d = self.etcd.reads[-1]
        self.assertEqual(key, PREFIX)
        d.callback((revision, list(kvs)))

    def test_interface(self):
        """
        The recording listener provides L{IPrefixListener}; the key prefix
        is given a trailing C{/}.
        """
        self.assertTrue(verifyObject(IPrefixListener, self.listener))
        self.assertEqual(self.follower.keyPrefix, PREFIX)

    def test_readThenWatch(self):
        """
        The follower reads the prefix, hands the whole read to the
        listener, watches from the next revision, then says it is loaded
        (once); the watch's events reach the listener and move the
        revision.
        """
        self.follower.start()
        self.assertEqual(self.listener.told, [])
        self.answer(kv("a", 3), kv("b", 7), revision=10)
        self.assertEqual(
            self.listener.told, [("read", 10, [PREFIX + "a", PREFIX + "b"], True), ("loaded",)]
        )
        self.assertTrue(self.follower.readOnce)
        [watch] = self.etcd.watches
        self.assertEqual((watch.key, watch.start), (PREFIX, 11))
        watch.onEvents([WatchEvent("put", kv("c", 12))], 12)
        self.assertEqual(self.listener.told[-1], ("events", [PREFIX + "c"], 12, 10))
        self.assertEqual(self.follower.revision, 12)
        self.assertEqual(self.follower.state(), {
            "endpoint": "http://etcd:2379", "keyPrefix": PREFIX, "stale": False,
            "staleSeconds": None, "problem": None, "revision": 12,
            "disconnects": 0, "errors": 0, "resyncs": 0,
        })

    def test_readFailsRetriesAndTellsOncePerOutage(self):
        """
        A failed read makes the follower stale (told once, with the
        reason) and is tried again after the backoff; further failures
        only count and update the reason; the read that works ends the
        outage, logged with its length.
        """
        self.follower.start()
        self.etcd.reads[-1][1].errback(EtcdUnavailable("etcd unreachable"))
        self.assertEqual(self.listener.told, [("lost", "etcd unreachable", False)])
        self.assertTrue(self.follower.stale)
        self.assertEqual((self.follower.errors, self.follower.disconnects), (1, 1))
        self.clock.advance(1.0)
        self.assertEqual(len(self.etcd.reads), 2)
        self.etcd.reads[-1][1].errback(ValueError("odd"))
        self.assertEqual(self.follower.problem, "ValueError('odd')")
        self.assertEqual((self.follower.errors, self.follower.disconnects), (2, 1))
        self.assertEqual(len(self.listener.told), 1)
        self.clock.advance(0.5)
        self.assertEqual(self.follower.staleSeconds, 1.5)
        self.clock.advance(0.5)
        self.answer(revision=4)
        self.assertFalse(self.follower.stale)
        self.assertIsNone(self.follower.problem)
        self.assertIsNone(self.follower.staleSeconds)
        self.assertIn("thing: following etcd again after 2.0 s (revision 4)", self.messages())
        self.assertEqual(self.listener.told[-1], ("loaded",))

    def test_watchLostAndBack(self):
        """
        The watch's status makes the follower stale (told once) and
        following again.
        """
        self.follower.start()
        self.answer()
        [watch] = self.etcd.watches
        watch.onStatus(False, "reset")
        watch.onStatus(False, None)
        self.assertEqual(self.listener.told[-1], ("lost", "reset", True))
        self.assertEqual(self.follower.problem, "watch lost")
        self.assertEqual(self.follower.disconnects, 1)
        watch.onStatus(True, None)
        self.assertFalse(self.follower.stale)
        self.assertEqual(self.follower.errors, 0)

    def test_compactionReadsAgain(self):
        """
        When the watch's revision was compacted away, or the store went
        back, the prefix is read again (not a first read: nothing more is
        loaded) and watched from after that read.
        """
        self.follower.start()
        self.answer(revision=10)
        self.etcd.watches[-1].onCompacted(15)
        self.assertIsNone(self.follower.watch)
        self.assertEqual(self.follower.resyncs, 1)
        self.answer(kv("a", 20), revision=20)
        self.assertEqual(self.listener.told[-1], ("read", 20, [PREFIX + "a"], False))
        self.assertEqual(self.etcd.watches[-1].start, 21)
        self.etcd.watches[-1].onCompacted(0)
        self.answer(revision=2)
        self.assertEqual(self.follower.revision, 2)
        self.assertEqual(self.follower.resyncs, 2)
        self.assertEqual(self.listener.told.count(("loaded",)), 1)
        messages = self.messages()
        self.assertIn(
            "thing: etcd compacted its history up to revision 15, past revision 10:"
            " reading /p/ again", messages,
        )
        self.assertIn(
            "thing: etcd is behind revision 20 (another cluster, or restored from a"
            " backup?): reading /p/ again", messages,
        )

    def test_checkReconnectsSilentWatch(self):
        """
        Every check interval, while the watch looks connected, etcd is
        asked for a count (one at a time); when it cannot be reached, the
        watch is made to reconnect. Another error does not.
        """
        self.follower.start()
        self.answer()
        watch = self.etcd.watches[-1]
        self.clock.advance(10)
        self.assertEqual(self.etcd.counts, [])
        watch.connected = True
        self.clock.advance(10)
        self.clock.advance(10)
        self.assertEqual(len(self.etcd.counts), 1)
        self.etcd.counts[-1][1].callback((10, 0))
        self.clock.advance(10)
        self.etcd.counts[-1][1].errback(EtcdError("permission denied", 7))
        self.assertEqual(watch.reconnected, [])
        self.clock.advance(10)
        self.etcd.counts[-1][1].errback(EtcdUnavailable("no answer in time"))
        self.assertEqual(watch.reconnected, ["etcd does not answer (no answer in time)"])

    def test_stop(self):
        """
        Stopping cancels the read and the retry, stops the watch and the
        checks; nothing is told after.
        """
        self.follower.start()
        reading = self.etcd.reads[-1][1]
        self.follower.stop()
        self.assertTrue(reading.called)  # cancelled
        self.assertEqual(self.listener.told, [])
        self.clock.advance(100)
        self.assertEqual(len(self.etcd.reads), 1)

        follower = PrefixFollower(
            self.etcd, PREFIX, self.listener, reactor=self.clock, label="thing",
            log=Logger(), checkInterval=1,
        )
        self.listener.follower = follower
        follower.start()
        self.etcd.reads[-1][1].errback(EtcdUnavailable("down"))
        follower.stop()
        self.clock.advance(100)
        self.assertEqual(len(self.etcd.reads), 2)

        follower.start()
        self.answer()
        watch = self.etcd.watches[-1]
        watch.connected = True
        follower.stop()
        self.assertTrue(watch.stopped)
        self.assertIsNone(follower.watch)
        self.clock.advance(100)
        self.assertEqual(self.etcd.counts, [])

    def test_stoppedWhileTakingTheRead(self):
        """
        A listener that stops the follower while it takes the read gets
        no watch, and no first load.
        """
        self.listener.onRead = self.follower.stop
        self.follower.start()
        self.answer()
        self.assertEqual(self.etcd.watches, [])
        self.assertEqual([t[0] for t in self.listener.told], ["read"])


class UsersTests(SynchronousTestCase):
    """
    The namer and the rules store are listeners of their follower.
    """

    def test_usersAreListeners(self):
        from meshproxy.admin.etcdstore import EtcdStores
        from meshproxy.discovery.etcd import EtcdNamer

        clock = Clock()
        etcd = FakeEtcd()
        namer = EtcdNamer("/#/etcd", etcd, PREFIX, reactor=clock)
        stores = EtcdStores(etcd, PREFIX, reactor=clock)
        for user in (namer, stores):
            self.assertTrue(verifyObject(IPrefixListener, user))
            self.assertEqual((user.revision, user.stale, user.problem), (0, False, None))
