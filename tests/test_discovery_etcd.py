"""
Tests for L{meshproxy.discovery.etcd}: the value format, the namer on a
fake clock with a scripted etcd client, then the namer against a real etcd
on loopback (L{tests.etcd_support}), reached directly or through a TCP
relay the tests can cut: updates, lease expiry, stale state while etcd is
unreachable, recovery after a compaction, and the config and runtime
wiring.
"""

from __future__ import annotations

import random

from twisted.application.service import IService
from twisted.internet import defer, reactor
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.task import Clock
from twisted.logger import formatEvent, globalLogPublisher
from twisted.protocols.portforward import ProxyFactory
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from meshproxy.discovery.endpoints import Addr, Endpoint
from meshproxy.discovery.etcd import EtcdNamer, formatValue, parseValue, serviceKey
from meshproxy.discovery.interfaces import INamer
from meshproxy.etcd import EtcdClient, EtcdUnavailable, KeyValue, WatchEvent
from meshproxy.resilience.backoff import Backoff
from tests.etcd_support import EtcdServer, freePorts, requireEtcd, waitUntil

PREFIX = "/meshproxy/services/"


def bound(*texts):
    return Addr.bound(frozenset(Endpoint.parse(text) for text in texts))


def kv(key, value, revision):
    return KeyValue(PREFIX + key, value.encode() if isinstance(value, str) else value, revision)


class ValueTests(SynchronousTestCase):
    """
    Tests for L{parseValue}, L{formatValue} and L{serviceKey}.
    """

    def test_text(self):
        """
        A value is C{host:port [weight]}, as in endpoint files.
        """
        self.assertEqual(parseValue(b"10.0.0.5:8080"), Endpoint("10.0.0.5", 8080))
        self.assertEqual(parseValue(b" [::1]:80 2\n"), Endpoint("::1", 80, 2))

    def test_json(self):
        """
        Or a JSON object with an address, an optional weight, and meta that
        the proxy does not read.
        """
        self.assertEqual(
            parseValue(b'{"address": "h.example:80", "weight": 0.5, "meta": {"zone": "a"}}'),
            Endpoint("h.example", 80, 0.5),
        )
        self.assertEqual(parseValue(b'{"address": "h:80"}'), Endpoint("h", 80))

    def test_bad(self):
        """
        Bad values are refused with a reason.
        """
        for value, reason in [
            (b"", "nothing"),
            (b"h", "host:port"),
            (b"h:80 x", "weight"),
            (b"\xff", "UTF-8"),
            (b"{", "JSON"),
            (b'{"a": ' + b"[" * 100000, "JSON"),
            (b'{"weight": 1}', "address"),
            (b'{"address": "h:80 2"}', "weight"),
            (b'{"address": "h:80", "weight": 0}', "positive"),
            (b'{"address": "h:80", "weight": true}', "positive"),
            (b'{"address": "h:80", "weight": "2"}', "positive"),
        ]:
            with self.assertRaises(ValueError) as caught:
                parseValue(value)
            self.assertIn(reason, str(caught.exception), value)

    def test_keyAndValue(self):
        """
        An instance registers under C{<keyPrefix><service>/<host:port>},
        its value the endpoint as text.
        """
        endpoint = Endpoint("::1", 8080, 2)
        self.assertEqual(serviceKey(PREFIX, "users", endpoint), PREFIX + "users/[::1]:8080")
        self.assertEqual(serviceKey("/p", "users", endpoint), "/p/users/[::1]:8080")
        self.assertEqual(formatValue(endpoint), b"[::1]:8080 2")
        self.assertEqual(parseValue(formatValue(endpoint)), endpoint)
        self.assertRaises(ValueError, serviceKey, PREFIX, "a/b", endpoint)


class FakeWatch:
    def __init__(self, key, start, onEvents, onCompacted, onStatus):
        self.key = key
        self.start = start
        self.onEvents = onEvents
        self.onCompacted = onCompacted
        self.onStatus = onStatus
        self.stopped = False
        self.connected = False
        self.reconnected = []

    def stop(self):
        self.stopped = True

    def reconnect(self, reason):
        self.reconnected.append(reason)


class FakeEtcd:
    """
    What the namer uses of L{EtcdClient}: each read a Deferred the test
    fires, each watch a L{FakeWatch}.
    """

    endpoint = "http://etcd:2379"

    def __init__(self):
        self.reads = []
        self.counts = []
        self.watches = []
        self.closed = False

    def backoff(self):
        return Backoff(0.1, 1.0, random=random.Random(0))

    def range(self, key):
        d = Deferred()
        self.reads.append((key, d))
        return d

    def count(self, key):
        d = Deferred()
        self.counts.append((key, d))
        return d

    def watch(self, key, start, onEvents, onCompacted, *, onStatus):
        watch = FakeWatch(key, start, onEvents, onCompacted, onStatus)
        self.watches.append(watch)
        return watch

    def close(self):
        self.closed = True
        return succeed(None)


class NamerTests(SynchronousTestCase):
    """
    Tests for L{EtcdNamer} with a scripted client.
    """

    def setUp(self):
        self.clock = Clock()
        self.etcd = FakeEtcd()
        self.namer = EtcdNamer("/#/etcd", self.etcd, PREFIX, reactor=self.clock)
        self.logged = []
        globalLogPublisher.addObserver(self.logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.logged.append)

    def messages(self):
        return [formatEvent(event) for event in self.logged]

    def start(self, *kvs, revision=10):
        self.namer.startService()
        self.answer(*kvs, revision=revision)

    def answer(self, *kvs, revision=10):
        key, d = self.etcd.reads[-1]
        self.assertEqual(key, PREFIX)
        d.callback((revision, list(kvs)))

    def event(self, kind, key, value, revision):
        watch = self.etcd.watches[-1]
        watch.onEvents([WatchEvent(kind, kv(key, value, revision))], revision)

    def test_interface(self):
        """
        L{EtcdNamer} provides L{INamer}.
        """
        self.assertTrue(verifyObject(INamer, self.namer))
        self.assertTrue(verifyObject(IService, self.namer))
        self.assertEqual(str(self.namer.prefix), "/#/etcd")

    def test_firstLoad(self):
        """
        The namer is loaded once the first read answered; services found
        are bound, others unknown; the watch starts at the next revision
        over the whole key prefix.
        """
        early = self.namer.bind("users")
        self.assertEqual(early.current, Addr.pending())
        self.namer.startService()
        waiting = self.namer.whenLoaded()
        self.assertNoResult(waiting)
        # Whoever waits for the first load finds the sets in place, and the
        # watch started.
        atLoad = []
        waiting.addCallback(lambda _: atLoad.append((early.current, len(self.etcd.watches))))
        self.assertFalse(self.namer.loaded)
        self.answer(
            kv("users/a", "10.0.0.1:80", 5), kv("users/b", "10.0.0.2:80 2", 7),
            kv("orders/a", "10.0.0.3:80", 8), revision=10,
        )
        self.successResultOf(waiting)
        self.assertEqual(atLoad, [(bound("10.0.0.1:80", "10.0.0.2:80 2"), 1)])
        self.assertTrue(self.namer.loaded)
        self.assertEqual(early.current, bound("10.0.0.1:80", "10.0.0.2:80 2"))
        self.assertIs(self.namer.bind("users"), early)
        self.assertEqual(self.namer.bind("orders").current, bound("10.0.0.3:80"))
        self.assertEqual(self.namer.bind("nope").current, Addr.neg())
        [watch] = self.etcd.watches
        self.assertEqual((watch.key, watch.start), (PREFIX, 11))
        self.assertEqual(self.namer.revision, 10)
        self.assertIn(
            "namer /#/etcd: 2 services in etcd under /meshproxy/services/ (revision 10)",
            self.messages(),
        )

    def test_events(self):
        """
        Puts add and change instances, deletes remove them; a service's
        last key deleted makes it unknown; unrelated services do not
        change.
        """
        self.start(kv("users/a", "10.0.0.1:80", 5))
        users = self.namer.bind("users")
        orders = self.namer.bind("orders")
        seen = []
        users.subscribe(seen.append)
        self.event("put", "users/b", "10.0.0.2:80", 11)
        self.assertEqual(users.current, bound("10.0.0.1:80", "10.0.0.2:80"))
        self.event("put", "users/a", "10.0.0.1:80 3", 12)
        self.assertEqual(users.current, bound("10.0.0.1:80 3", "10.0.0.2:80"))
        self.event("put", "orders/x", "10.0.0.9:80", 13)
        self.assertEqual(orders.current, bound("10.0.0.9:80"))
        self.event("delete", "users/a", "", 14)
        self.event("delete", "users/b", "", 15)
        self.assertEqual(users.current, Addr.neg())
        self.assertEqual(len(seen), 4)
        self.assertEqual(self.namer.revision, 15)
        self.event("put", "users/c", "10.0.0.4:80", 16)
        self.assertEqual(users.current, bound("10.0.0.4:80"))

    def test_badValueIgnoredOnce(self):
        """
        A bad value is logged once and ignored; a service whose keys are
        all bad is bound to no endpoint; it is counted.
        """
        self.start(kv("users/a", "10.0.0.1:80", 5), kv("users/b", "garbage", 6))
        users = self.namer.bind("users")
        self.assertEqual(users.current, bound("10.0.0.1:80"))
        self.event("delete", "users/a", "", 11)
        self.assertEqual(users.current, Addr.bound(frozenset()))
        self.assertEqual(self.namer.badValues, 1)
        bad = [m for m in self.messages() if "ignoring the value" in m]
        self.assertEqual(len(bad), 1)
        self.assertIn("'/meshproxy/services/users/b' (revision 6)", bad[0])
        # Read again (after a compaction): the same bad value is not logged
        # again.
        self.etcd.watches[-1].onCompacted(12)
        self.answer(kv("users/b", "garbage", 6), revision=12)
        self.assertEqual(len([m for m in self.messages() if "ignoring the value" in m]), 1)

    def test_keysOutsideLayoutIgnored(self):
        """
        Keys that are not C{<service>/<instance>} under the prefix are
        ignored (and said once).
        """
        self.start(kv("users", "10.0.0.1:80", 5), kv("users/", "10.0.0.1:80", 6),
                   kv("bad name/a", "10.0.0.1:80", 7))
        self.assertEqual(self.namer.state()["services"], 0)
        self.event("put", "users", "10.0.0.1:81", 11)
        ignored = [m for m in self.messages() if "ignoring etcd key" in m]
        self.assertEqual(len(ignored), 3)

    def test_sameAddressTwice(self):
        """
        Two keys with the same address give one endpoint, the one written
        last.
        """
        self.start(kv("users/a", "10.0.0.1:80 2", 5), kv("users/b", "10.0.0.1:80 3", 6))
        self.assertEqual(self.namer.bind("users").current, bound("10.0.0.1:80 3"))

    def test_unreachableAtStart(self):
        """
        While etcd cannot be read at the start, the namer is not loaded and
        its services fail; it retries with a backoff under a second, and
        binds them once etcd answers.
        """
        users = self.namer.bind("users")
        self.namer.startService()
        self.etcd.reads[-1][1].errback(EtcdUnavailable("etcd unreachable (refused)"))
        self.assertFalse(self.namer.loaded)
        self.assertEqual(users.current.kind, "failed")
        self.assertIn("refused", users.current.reason)
        state = self.namer.state()
        self.assertEqual((state["stale"], state["errors"], state["loaded"]), (True, 1, False))
        self.clock.advance(1.0)
        self.assertEqual(len(self.etcd.reads), 2)
        self.etcd.reads[-1][1].errback(EtcdUnavailable("etcd unreachable (refused)"))
        self.clock.advance(1.0)
        self.answer(kv("users/a", "10.0.0.1:80", 5))
        self.assertTrue(self.namer.loaded)
        self.assertEqual(users.current, bound("10.0.0.1:80"))
        self.assertFalse(self.namer.state()["stale"])
        warned = [m for m in self.messages() if "cannot read" in m]
        self.assertEqual(len(warned), 1)

    def test_staleWhileDisconnected(self):
        """
        When the watch is lost, every service keeps its set; the namer says
        it is stale, for how long, and counts the loss; once the watch is
        back, it is not stale any more.
        """
        self.start(kv("users/a", "10.0.0.1:80", 5))
        users = self.namer.bind("users")
        watch = self.etcd.watches[-1]
        watch.onStatus(True, None)
        self.assertFalse(self.namer.stale)
        self.clock.advance(5)
        watch.onStatus(False, "http://etcd-a:2379: connection refused")
        watch.onStatus(False, "http://etcd-b:2379: connection refused")
        watch.onStatus(False, "http://etcd-a:2379: connection refused")
        self.clock.advance(2.5)
        state = self.namer.state()
        self.assertEqual(
            (state["stale"], state["staleSeconds"], state["disconnects"], state["problem"]),
            (True, 2.5, 1, "http://etcd-a:2379: connection refused"),
        )
        self.assertEqual(users.current, bound("10.0.0.1:80"))
        watch.onStatus(True, None)
        state = self.namer.state()
        self.assertEqual((state["stale"], state["staleSeconds"]), (False, None))
        messages = self.messages()
        self.assertEqual(len([m for m in messages if "lost etcd" in m]), 1)
        self.assertIn(
            "namer /#/etcd: following etcd again after 2.5 s (revision 10)", messages
        )

    def test_compactionReadsAgainAndDiffs(self):
        """
        When the watch's revision was compacted, the namer reads the prefix
        again: what changed meanwhile is applied (a service gone is
        unknown, one new is bound, one the same does not change), and a
        new watch starts after the new read.
        """
        self.start(kv("users/a", "10.0.0.1:80", 5), kv("orders/a", "10.0.0.2:80", 6))
        users, orders, carts = (self.namer.bind(n) for n in ("users", "orders", "carts"))
        changes = []
        users.subscribe(lambda addr: changes.append("users"))
        old = self.etcd.watches[-1]
        old.onCompacted(30)
        self.assertEqual(len(self.etcd.reads), 2)
        self.answer(kv("users/a", "10.0.0.1:80", 5), kv("carts/a", "10.0.0.3:80", 25),
                    revision=40)
        self.assertEqual(users.current, bound("10.0.0.1:80"))
        self.assertEqual(orders.current, Addr.neg())
        self.assertEqual(carts.current, bound("10.0.0.3:80"))
        self.assertEqual(changes, [])
        self.assertEqual(self.etcd.watches[-1].start, 41)
        self.assertEqual(self.namer.state()["resyncs"], 1)

    def test_compactionWhileUnreachable(self):
        """
        A read again that fails keeps every set, and is retried.
        """
        self.start(kv("users/a", "10.0.0.1:80", 5))
        users = self.namer.bind("users")
        self.etcd.watches[-1].onCompacted(30)
        self.etcd.reads[-1][1].errback(EtcdUnavailable("etcd unreachable"))
        self.assertEqual(users.current, bound("10.0.0.1:80"))
        self.assertTrue(self.namer.stale)
        self.clock.advance(1.0)
        self.answer(kv("users/a", "10.0.0.1:81", 31), revision=31)
        self.assertEqual(users.current, bound("10.0.0.1:81"))
        self.assertFalse(self.namer.stale)

    def test_checksEtcdWhileWatchLooksFine(self):
        """
        Every check interval, while the watch looks established, the namer
        asks etcd for a count of its keys; when etcd does not answer, the
        watch's stream is dropped (it may be dead without a reset), so that
        the namer gets stale and the watch tries again.
        """
        self.start(kv("users/a", "10.0.0.1:80", 5))
        watch = self.etcd.watches[-1]
        self.clock.advance(10)
        self.assertEqual(self.etcd.counts, [])
        watch.connected = True
        self.clock.advance(10)
        [(key, d)] = self.etcd.counts
        self.assertEqual(key, PREFIX)
        d.callback((11, 1))
        self.assertEqual(watch.reconnected, [])
        self.clock.advance(10)
        self.etcd.counts[-1][1].errback(EtcdUnavailable("etcd unreachable (no answer in time)"))
        self.assertEqual(len(watch.reconnected), 1)
        self.assertIn("no answer in time", watch.reconnected[0])

    def test_oneCheckAtATime(self):
        """
        A check still waiting for its answer is not doubled.
        """
        self.start()
        self.etcd.watches[-1].connected = True
        self.clock.advance(10)
        self.clock.advance(10)
        self.assertEqual(len(self.etcd.counts), 1)

    def test_invalidNames(self):
        """
        A name that cannot be a service is unknown, and not remembered.
        """
        self.start()
        self.assertEqual(self.namer.bind("a/b").current, Addr.neg())
        self.assertEqual(self.namer.bind("").current, Addr.neg())
        self.assertNotIn("a/b", self.namer._observables)

    def test_unknownNamesForgotten(self):
        """
        Unknown names nobody follows are forgotten once too many pile up;
        followed ones and known services are kept.
        """
        self.start(kv("users/a", "10.0.0.1:80", 5))
        users = self.namer.bind("users")
        followed = self.namer.bind("followed")
        followed.subscribe(lambda addr: None)
        for i in range(3000):
            self.namer.bind("name-%d" % (i,))
        self.assertLess(len(self.namer._observables), 1100)
        self.assertIs(self.namer.bind("users"), users)
        self.assertIs(self.namer.bind("followed"), followed)
        self.event("put", "followed/a", "10.0.0.5:80", 11)
        self.assertEqual(followed.current, bound("10.0.0.5:80"))

    def test_stop(self):
        """
        Stopping stops the watch, any retry, and closes the client; the
        observables keep their values.
        """
        self.start(kv("users/a", "10.0.0.1:80", 5))
        users = self.namer.bind("users")
        watch = self.etcd.watches[-1]
        self.successResultOf(self.namer.stopService())
        self.assertTrue(watch.stopped)
        self.assertTrue(self.etcd.closed)
        self.assertEqual(users.current, bound("10.0.0.1:80"))

    def test_stopWhileRetrying(self):
        """
        A retry pending at the stop does not run.
        """
        self.namer.startService()
        self.etcd.reads[-1][1].errback(EtcdUnavailable("etcd unreachable"))
        self.namer.stopService()
        self.clock.advance(10)
        self.assertEqual(len(self.etcd.reads), 1)


# -- against a real etcd --------------------------------------------------------


class Relay:
    """
    A TCP relay on loopback to etcd that the test can cut (as a network
    failure would) and restore, on the same port.
    """

    def __init__(self, testCase, port):
        self.targetPort = port
        self.port = freePorts(1)[0]
        self.url = "http://127.0.0.1:%d" % (self.port,)
        self.listening = None
        self.factory = None
        testCase.addCleanup(self.cut)

    @defer.inlineCallbacks
    def open(self):
        factory = self.factory = ProxyFactory("127.0.0.1", self.targetPort)
        factory.noisy = False
        factory.connections = []
        original = factory.buildProtocol

        def buildProtocol(addr):
            p = original(addr)
            factory.connections.append(p)
            return p

        factory.buildProtocol = buildProtocol
        self.listening = yield TCP4ServerEndpoint(
            reactor, self.port, interface="127.0.0.1"
        ).listen(factory)

    @defer.inlineCallbacks
    def freeze(self):
        """
        A partition: new connections fail, and those open stay open but
        carry nothing more, either way.
        """
        if self.listening is not None:
            listening, self.listening = self.listening, None
            yield listening.stopListening()
        for p in self.factory.connections:
            for side in (p, getattr(p, "peer", None)):
                if side is not None and side.transport is not None:
                    side.transport.pauseProducing()

    @defer.inlineCallbacks
    def cut(self):
        if self.listening is not None:
            listening, self.listening = self.listening, None
            yield listening.stopListening()
        if self.factory is not None:
            for p in self.factory.connections:
                if p.transport is not None:
                    p.transport.abortConnection()
                if getattr(p, "peer", None) is not None and p.peer.transport is not None:
                    p.peer.transport.abortConnection()
            self.factory.connections = []


class NamerIntegrationTests(TestCase):
    """
    The namer against a real etcd.
    """

    timeout = 60

    @defer.inlineCallbacks
    def setUp(self):
        requireEtcd()
        self.etcd = EtcdServer(self)
        yield self.etcd.start()
        self.writer = self.etcd.client(self)

    def makeNamer(self, url=None, checkInterval=10.0):
        client = EtcdClient([url or self.etcd.url], reactor=reactor, timeout=2)
        namer = EtcdNamer(
            "/#/etcd", client, PREFIX, reactor=reactor, checkInterval=checkInterval
        )
        namer.startService()
        self.addCleanup(namer.stopService)
        return namer

    def connected(self, namer):
        return namer._follower.watch is not None and namer._follower.watch.connected

    @defer.inlineCallbacks
    def test_followsPutsAndDeletes(self):
        """
        The first read gives the registered instances; later puts and
        deletes are followed.
        """
        yield self.writer.put(PREFIX + "users/10.0.0.1:80", b"10.0.0.1:80")
        namer = self.makeNamer()
        yield namer.whenLoaded()
        users = namer.bind("users")
        self.assertEqual(users.current, bound("10.0.0.1:80"))
        yield waitUntil(lambda: self.connected(namer), what="the watch")
        yield self.writer.put(PREFIX + "users/b", b'{"address": "10.0.0.2:80", "weight": 2}')
        yield waitUntil(
            lambda: users.current == bound("10.0.0.1:80", "10.0.0.2:80 2"), what="the put"
        )
        yield self.writer.delete(PREFIX + "users/", prefix=True)
        yield waitUntil(lambda: users.current == Addr.neg(), what="the delete")

    @defer.inlineCallbacks
    def test_leaseExpiryRemovesEndpoint(self):
        """
        An instance registered with a lease that is not kept alive goes
        away when the lease expires.
        """
        namer = self.makeNamer()
        yield namer.whenLoaded()
        users = namer.bind("users")
        lease, _ = yield self.writer.leaseGrant(1)
        yield self.writer.put(PREFIX + "users/a", b"10.0.0.1:80", lease=lease)
        yield self.writer.put(PREFIX + "users/b", b"10.0.0.2:80")
        yield waitUntil(lambda: users.current == bound("10.0.0.1:80", "10.0.0.2:80"),
                        what="both instances")
        yield waitUntil(lambda: users.current == bound("10.0.0.2:80"), timeout=15,
                        what="the lease's expiry")

    @defer.inlineCallbacks
    def test_staleWhileEtcdDownThenFollowedAgain(self):
        """
        While etcd is down the last set stays, the namer is stale with its
        age; after etcd restarts (same data) the namer follows it again
        within about a second, and a change made then is seen.
        """
        yield self.writer.put(PREFIX + "users/a", b"10.0.0.1:80")
        namer = self.makeNamer()
        yield namer.whenLoaded()
        users = namer.bind("users")
        yield waitUntil(lambda: self.connected(namer), what="the watch")
        yield self.etcd.stop()
        yield waitUntil(lambda: namer.stale, what="the namer to be stale")
        self.assertEqual(users.current, bound("10.0.0.1:80"))
        state = namer.state()
        self.assertEqual((state["stale"], state["disconnects"]), (True, 1))
        self.assertIsInstance(state["staleSeconds"], float)
        yield self.etcd.start()
        restarted = reactor.seconds()
        yield waitUntil(lambda: not namer.stale, what="the namer following etcd again")
        self.assertLess(reactor.seconds() - restarted, 2.0)
        yield self.writer.put(PREFIX + "users/b", b"10.0.0.2:80")
        yield waitUntil(lambda: users.current == bound("10.0.0.1:80", "10.0.0.2:80"),
                        what="the change after the restart")

    @defer.inlineCallbacks
    def test_compactionWhileCutOff(self):
        """
        Cut off from etcd (which goes on), the namer keeps its sets; the
        changes made meanwhile, whose history etcd then compacts, are
        applied by a read again once etcd is reachable.
        """
        yield self.writer.put(PREFIX + "users/a", b"10.0.0.1:80")
        yield self.writer.put(PREFIX + "orders/a", b"10.0.0.2:80")
        relay = Relay(self, self.etcd.clientPort)
        yield relay.open()
        namer = self.makeNamer(relay.url)
        yield namer.whenLoaded()
        users, orders, carts = (namer.bind(n) for n in ("users", "orders", "carts"))
        yield waitUntil(lambda: self.connected(namer), what="the watch")
        yield relay.cut()
        yield waitUntil(lambda: namer.stale, what="the namer to be stale")
        yield self.writer.put(PREFIX + "users/b", b"10.0.0.3:80")
        yield self.writer.delete(PREFIX + "orders/a")
        latest = yield self.writer.put(PREFIX + "carts/a", b"10.0.0.4:80")
        yield self.writer.compact(latest)
        self.assertEqual(users.current, bound("10.0.0.1:80"))
        self.assertEqual(orders.current, bound("10.0.0.2:80"))
        yield relay.open()
        yield waitUntil(lambda: namer.resyncs == 1 and namer.revision >= latest,
                        what="the read again")
        self.assertFalse(namer.stale)
        self.assertEqual(users.current, bound("10.0.0.1:80", "10.0.0.3:80"))
        self.assertEqual(orders.current, Addr.neg())
        self.assertEqual(carts.current, bound("10.0.0.4:80"))
        yield self.writer.put(PREFIX + "carts/b", b"10.0.0.5:80")
        yield waitUntil(lambda: carts.current == bound("10.0.0.4:80", "10.0.0.5:80"),
                        what="a change after the read again")

    @defer.inlineCallbacks
    def test_silentPartition(self):
        """
        A watch whose connection stays open but carries nothing (a
        partition) is noticed by the periodic check: the namer gets stale,
        keeps its sets, and follows etcd again once the partition is over.
        """
        yield self.writer.put(PREFIX + "users/a", b"10.0.0.1:80")
        relay = Relay(self, self.etcd.clientPort)
        yield relay.open()
        namer = self.makeNamer(relay.url, checkInterval=0.2)
        yield namer.whenLoaded()
        users = namer.bind("users")
        yield waitUntil(lambda: self.connected(namer), what="the watch")
        yield relay.freeze()
        yield waitUntil(lambda: namer.stale, timeout=15, what="the partition to be noticed")
        self.assertIn("does not answer", namer.state()["problem"])
        self.assertEqual(users.current, bound("10.0.0.1:80"))
        yield relay.cut()
        yield self.writer.put(PREFIX + "users/b", b"10.0.0.2:80")
        yield relay.open()
        yield waitUntil(lambda: users.current == bound("10.0.0.1:80", "10.0.0.2:80"),
                        what="the change made during the partition")
        yield waitUntil(lambda: not namer.stale, what="the namer following etcd again")

    @defer.inlineCallbacks
    def test_unreachableAtStart(self):
        """
        With etcd unreachable at the start, the namer is not loaded (the
        readiness fallback lets the process go on); it loads once etcd is
        there.
        """
        yield self.writer.put(PREFIX + "users/a", b"10.0.0.1:80")
        relay = Relay(self, self.etcd.clientPort)
        namer = self.makeNamer(relay.url)
        users = namer.bind("users")
        yield waitUntil(lambda: namer.errors >= 1, what="a failed read")
        self.assertFalse(namer.loaded)
        self.assertEqual(users.current.kind, "failed")
        yield relay.open()
        yield namer.whenLoaded()
        self.assertEqual(users.current, bound("10.0.0.1:80"))


class RuntimeTests(TestCase):
    """
    The namer built from a config, routing real requests.
    """

    timeout = 60

    @defer.inlineCallbacks
    def test_routesThroughEtcd(self):
        """
        A router with C{/svc => /#/etcd} routes to the instances registered
        in etcd, follows a change, and answers 503 once none is left;
        C{/admin/state}'s namer is the etcd namer.
        """
        requireEtcd()
        from tests.support import BackendFactory, exchange, listenBackend, okHandler, startProxy

        etcd = EtcdServer(self)
        yield etcd.start()
        writer = etcd.client(self)
        one = yield listenBackend(self, BackendFactory(okHandler(b"one")))
        two = yield listenBackend(self, BackendFactory(okHandler(b"two")))
        yield writer.put(PREFIX + "users/a", b"127.0.0.1:%d" % (one,))
        config = """\
admin: {listen: "tcp:port=0:interface=127.0.0.1"}
namers:
  - {kind: etcd, prefix: /#/etcd, endpoints: ["%s"], keyPrefix: %s}
routers:
  - name: web
    listen: "tcp:0:interface=127.0.0.1"
    identifier: {kind: host}
    rules: "/svc => /#/etcd;"
""" % (etcd.url, PREFIX)
        port, _, runtime = yield startProxy(self, None, config=config)
        [namer] = runtime.namers
        self.assertIsInstance(namer, EtcdNamer)
        yield namer.whenLoaded()
        client = yield exchange(self, port, b"GET /x HTTP/1.1\r\nHost: users\r\n\r\n")
        self.assertEqual(client.responses[0].status, 200)
        self.assertEqual(client.responses[0].header(b"x-upstream"), b"one")
        users = namer.bind("users")
        yield writer.put(PREFIX + "users/a", b"127.0.0.1:%d" % (two,))
        yield waitUntil(lambda: users.current == bound("127.0.0.1:%d" % (two,)), what="the change")
        client = yield exchange(self, port, b"GET /x HTTP/1.1\r\nHost: users\r\n\r\n")
        self.assertEqual(client.responses[0].header(b"x-upstream"), b"two")
        yield writer.delete(PREFIX + "users/a")
        yield waitUntil(lambda: users.current == Addr.neg(), what="the delete")
        client = yield exchange(self, port, b"GET /x HTTP/1.1\r\nHost: users\r\n\r\n")
        self.assertEqual(client.responses[0].status, 503)


class AdminStateTests(TestCase):
    """
    C{GET /admin/state} shows the etcd namer, stale or not.
    """

    timeout = 60

    @defer.inlineCallbacks
    def test_staleShown(self):
        """
        The namer's state is under C{namers}: following etcd, then stale
        with its age while etcd is down, the last sets still routed.
        """
        import json

        requireEtcd()
        from tests.support import BackendFactory, exchange, listenBackend, okHandler, startProxy

        etcd = EtcdServer(self)
        yield etcd.start()
        writer = etcd.client(self)
        backend = yield listenBackend(self, BackendFactory(okHandler(b"one")))
        yield writer.put(PREFIX + "users/a", b"127.0.0.1:%d" % (backend,))
        config = """\
admin: {listen: "tcp:port=0:interface=127.0.0.1"}
namers:
  - {kind: etcd, prefix: /#/etcd, endpoints: ["%s"], keyPrefix: %s}
  - {kind: static, prefix: /#/static, services: {}}
routers:
  - name: web
    listen: "tcp:0:interface=127.0.0.1"
    identifier: {kind: host}
    rules: "/svc => /#/etcd;"
""" % (etcd.url, PREFIX)
        port, adminPort, runtime = yield startProxy(self, None, config=config)
        namer = runtime.namers[0]
        yield namer.whenLoaded()
        follower = namer._follower
        yield waitUntil(lambda: follower.watch is not None and follower.watch.connected,
                        what="the watch")

        @defer.inlineCallbacks
        def state():
            client = yield exchange(
                self, adminPort, b"GET /admin/state HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
            )
            return json.loads(client.responses[0].body)["namers"]

        namers = yield state()
        self.assertEqual(list(namers), ["/#/etcd"])
        self.assertEqual(
            {key: namers["/#/etcd"][key] for key in ("kind", "stale", "staleSeconds", "services")},
            {"kind": "etcd", "stale": False, "staleSeconds": None, "services": 1},
        )
        yield etcd.stop()
        yield waitUntil(lambda: namer.stale, what="the namer to be stale")
        namers = yield state()
        shown = namers["/#/etcd"]
        self.assertTrue(shown["stale"])
        self.assertGreaterEqual(shown["staleSeconds"], 0)
        self.assertEqual(shown["disconnects"], 1)
        self.assertIn(etcd.url, shown["problem"])
        client = yield exchange(self, port, b"GET /x HTTP/1.1\r\nHost: users\r\n\r\n")
        self.assertEqual(client.responses[0].status, 200)


class ConfigTests(SynchronousTestCase):
    """
    The C{etcd} namer's config.
    """

    def parse(self, namer):
        from meshproxy.config import parseConfig

        return parseConfig(
            "namers: [%s]\nrouters: [{name: web, listen: 'tcp:0', rules: '/svc => /#/etcd;'}]"
            % (namer,)
        )

    def errors(self, namer):
        from meshproxy.config import ConfigError

        try:
            self.parse(namer)
        except ConfigError as e:
            return [line.split(": ", 1)[1] if line.startswith("<") else line
                    for line in str(e).splitlines()]
        self.fail("no error")

    def test_defaults(self):
        """
        The contract's keys, with their defaults.
        """
        [namer] = self.parse("{kind: etcd}").namers
        self.assertEqual(
            (namer.prefix, namer.endpoints, namer.keyPrefix, namer.username, namer.tls,
             namer.timeout),
            ("/#/etcd", ("http://127.0.0.1:2379",), "/meshproxy/services/", None, None, 5.0),
        )

    def test_contract(self):
        """
        The form of the contract; a key prefix without a final C{/} gets
        one.
        """
        [namer] = self.parse(
            '{kind: etcd, prefix: /#/etcd, endpoints: ["http://10.0.0.1:2379",'
            ' "http://10.0.0.2:2379/"], keyPrefix: /mesh/svc, username: mesh,'
            " password: pw, timeout: 2s}"
        ).namers
        self.assertEqual(namer.endpoints, ("http://10.0.0.1:2379", "http://10.0.0.2:2379"))
        self.assertEqual((namer.keyPrefix, namer.username, namer.password, namer.timeout),
                         ("/mesh/svc/", "mesh", "pw", 2.0))

    def test_errors(self):
        """
        Bad values are named by their key path.
        """
        cases = [
            ("{kind: etcd, endpoints: []}", "namers[0].endpoints: at least one etcd endpoint"),
            ('{kind: etcd, endpoints: ["127.0.0.1:2379"]}', "namers[0].endpoints[0]: expected"),
            ('{kind: etcd, endpoints: ["http://u:p@h:1"]}', "no user name or password"),
            ('{kind: etcd, endpoints: ["http://h:1/v3"]}', "a scheme, a host and a port only"),
            ("{kind: etcd, keyPrefix: svc/}", 'namers[0].keyPrefix: must start with "/"'),
            ("{kind: etcd, username: u}", "namers[0].password: required with username"),
            ("{kind: etcd, password: p}", "namers[0].username: required with password"),
            ("{kind: etcd, tls: {ca: ca.pem}}", "namers[0].tls: is for https:// endpoints"),
            ('{kind: etcd, endpoints: ["https://h:1"], tls: {cert: c.pem}}',
             "namers[0].tls.key: required with cert"),
            ("{kind: etcd, root: x}", 'namers[0].root: only for kind "file"'),
            ("{kind: file, root: x, endpoints: []}", 'namers[0].endpoints: only for kind "etcd"'),
        ]
        for namer, expected in cases:
            errors = self.errors(namer)
            self.assertTrue(any(expected in e for e in errors), (namer, errors))

    def test_tlsFilesRelativeToConfig(self):
        """
        The TLS files are absolute paths, and the namer's client reads them.
        """
        [namer] = self.parse(
            '{kind: etcd, endpoints: ["https://h:1"], tls: {ca: /etc/x/ca.pem}}'
        ).namers
        self.assertEqual(namer.tls.ca, "/etc/x/ca.pem")
        from meshproxy.runtime import makeNamer

        self.assertRaises(ValueError, makeNamer, namer, reactor=Clock())
