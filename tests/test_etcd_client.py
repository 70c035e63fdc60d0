"""
Tests for L{meshproxy.etcd}: the watch's stream handling on a fake clock
with scripted answers, then the client against a real etcd on loopback
(L{tests.etcd_support}): keys, transactions, leases, watches across an
etcd restart and a compaction, failover across endpoints, bounded answers,
authentication and TLS.
"""

from __future__ import annotations

import base64
import json
import os
import random

from twisted.internet import defer, protocol, reactor
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import ResponseDone

from meshproxy.etcd import (
    EtcdClient,
    EtcdError,
    EtcdUnavailable,
    TLSFiles,
    Watch,
    _tlsPolicy,
    compare,
    opPut,
    opRange,
    prefixEnd,
)
from meshproxy.resilience.backoff import Backoff
from tests.etcd_support import EtcdServer, enableAuth, freePorts, requireEtcd, waitUntil


def b64(text):
    return base64.b64encode(text.encode() if isinstance(text, str) else text).decode()


class PrefixEndTests(SynchronousTestCase):
    """
    Tests for L{prefixEnd}.
    """

    def test_incrementsLastByte(self):
        """
        The range end of a prefix is the prefix with its last byte plus one,
        so C{/a/} covers C{/a/x} but not C{/a0} or C{/a-x}.
        """
        self.assertEqual(prefixEnd("/meshproxy/services/"), b"/meshproxy/services0")
        self.assertEqual(prefixEnd(b"a\xff\xff"), b"b")

    def test_allFF(self):
        """
        A prefix of only 0xff bytes (or none) ranges over every key from it
        on: etcd's C{"\\0"}.
        """
        self.assertEqual(prefixEnd(b"\xff"), b"\0")
        self.assertEqual(prefixEnd(""), b"\0")

    def test_compareShapes(self):
        """
        Comparisons and operations are the gateway's JSON, keys and values
        in base64 and revisions as strings.
        """
        self.assertEqual(
            compare("/k", "MOD", 7),
            {"result": "EQUAL", "target": "MOD", "key": b64("/k"), "mod_revision": "7"},
        )
        self.assertEqual(
            opPut("/k", b"v", lease=5),
            {"request_put": {"key": b64("/k"), "value": b64("v"), "lease": "5"}},
        )
        self.assertEqual(opRange("/k"), {"request_range": {"key": b64("/k")}})


class CancelledTests(SynchronousTestCase):
    """
    A request its caller cancelled is told apart from a failure, however
    the HTTP client wrapped the cancellation.
    """

    def test_wrapped(self):
        from twisted.python.failure import Failure
        from twisted.web._newclient import ResponseFailed, ResponseNeverReceived
        from twisted.web.client import RequestTransmissionFailed

        from meshproxy.etcd import _wasCancelled

        cancelled = Failure(defer.CancelledError())
        lost = Failure(ConnectionError("lost"))
        self.assertTrue(_wasCancelled(cancelled))
        for wrapper in (ResponseFailed, ResponseNeverReceived, RequestTransmissionFailed):
            # While the request was still being sent (under load, the
            # cancellation can come then): RequestTransmissionFailed.
            self.assertTrue(_wasCancelled(Failure(wrapper([cancelled]))), wrapper)
            self.assertFalse(_wasCancelled(Failure(wrapper([lost]))), wrapper)
        self.assertFalse(_wasCancelled(lost))


class ClientArgumentTests(SynchronousTestCase):
    """
    Tests for L{EtcdClient}'s checks of its arguments.
    """

    def test_refusesBadEndpoints(self):
        """
        No endpoint, or one that is not an http:// or https:// URL, is
        refused at once.
        """
        self.assertRaises(ValueError, EtcdClient, [], reactor=Clock())
        self.assertRaises(ValueError, EtcdClient, ["127.0.0.1:2379"], reactor=Clock())
        self.assertRaises(ValueError, EtcdClient, ["unix:///x"], reactor=Clock())

    def test_userNeedsPassword(self):
        """
        A user without a password (or the reverse) is refused.
        """
        self.assertRaises(
            ValueError, EtcdClient, ["http://a:1"], reactor=Clock(), username="u"
        )

    def test_tlsFilesRead(self):
        """
        The TLS files are read when the client is made: a missing one is an
        L{OSError} at once, a file without a certificate a L{ValueError}.
        """
        self.assertRaises(OSError, _tlsPolicy, TLSFiles(ca="/nonexistent/ca.pem"))
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("not a certificate\n")
        self.assertRaises(ValueError, _tlsPolicy, TLSFiles(ca=path))


# -- the watch on a fake clock ------------------------------------------------


class FakeResponse:
    """
    A streamed answer whose body the test writes.
    """

    def __init__(self, code=200):
        self.code = code
        self.protocol = None
        self.transport = StringTransport()
        self.stopped = False

    def deliverBody(self, protocol):
        self.protocol = protocol
        transport = self.transport

        def stopProducing():
            self.stopped = True

        transport.stopProducing = stopProducing
        protocol.makeConnection(transport)

    def send(self, *messages):
        self.protocol.dataReceived(
            b"".join(json.dumps(m).encode() + b"\n" for m in messages)
        )

    def end(self, reason=None):
        self.protocol.connectionLost(Failure(reason or ResponseDone()))


class FakeClient:
    """
    What a L{Watch} uses of L{EtcdClient}, scripted: each stream opened is
    a Deferred the test fires with a L{FakeResponse}.
    """

    endpoint = "http://etcd-a:2379"
    maxWatchLineBytes = 1000

    def __init__(self):
        self._reactor = Clock()
        self._watches = set()
        self._token = "token-1"
        self.opened = []
        self.failed = []
        self.dropped = []

    def backoff(self):
        return Backoff(0.1, 1.0, random=random.Random(1))

    def _failed(self, url):
        self.failed.append(url)

    async def _ensureToken(self, url):
        return self._token

    def _dropToken(self, token):
        self.dropped.append(token)

    def _openStream(self, url, path, body, token):
        d = defer.Deferred()
        self.opened.append((path, body, token, d))
        return d


class WatchTests(SynchronousTestCase):
    """
    Tests for L{Watch} with scripted streams.
    """

    def setUp(self):
        self.client = FakeClient()
        self.events = []
        self.compacted = []
        self.status = []
        self.watch = Watch(
            self.client,
            b"/p/",
            prefixEnd(b"/p/"),
            10,
            lambda events, revision: self.events.append((events, revision)),
            self.compacted.append,
            lambda connected, reason: self.status.append((connected, reason)),
        )
        self.watch.start()

    def stream(self, revision=None):
        """
        Answer the last stream opened, checking it asked for C{revision}.
        """
        path, body, token, d = self.client.opened[-1]
        self.assertEqual(path, "/v3/watch")
        create = body["create_request"]
        if revision is not None:
            self.assertEqual(create["start_revision"], str(revision))
        self.assertEqual((create["key"], create["range_end"]), (b64("/p/"), b64("/p0")))
        self.assertTrue(create["fragment"])
        response = FakeResponse()
        d.callback(response)
        return response

    def put(self, key, value, revision):
        return {"kv": {"key": b64(key), "value": b64(value), "mod_revision": str(revision)}}

    def test_createdThenEvents(self):
        """
        Once etcd says the watch is created, the status is connected; each
        answer's events are handed over with the revision seen up to.
        """
        response = self.stream(revision=10)
        response.send({"result": {"header": {"revision": "12"}, "created": True}})
        self.assertEqual(self.status, [(True, None)])
        response.send(
            {"result": {"header": {"revision": "12"}, "events": [
                self.put("/p/a/1", "h:1", 11),
                {"type": "DELETE", "kv": {"key": b64("/p/a/0"), "mod_revision": "12"}},
            ]}}
        )
        [(events, revision)] = self.events
        self.assertEqual([(e.kind, e.kv.key, e.kv.value) for e in events],
                         [("put", "/p/a/1", b"h:1"), ("delete", "/p/a/0", b"")])
        self.assertEqual((revision, self.watch.revision), (12, 13))

    def test_resumesFromNextRevisionAfterLoss(self):
        """
        When the stream is lost, the watch connects again after a backoff
        between 100 ms and 1 s, from the revision after the last it saw,
        and reports the loss.
        """
        response = self.stream(revision=10)
        response.send({"result": {"created": True, "header": {"revision": "10"}}})
        response.send({"result": {"events": [self.put("/p/a/1", "h:1", 15)]}})
        response.end(Exception("connection reset"))
        self.assertFalse(self.watch.connected)
        self.assertEqual(self.status[-1][0], False)
        self.assertIn("connection reset", self.status[-1][1])
        self.assertEqual(self.client.failed, ["http://etcd-a:2379"])
        self.assertEqual(len(self.client.opened), 1)
        self.client._reactor.advance(0.099)
        self.assertEqual(len(self.client.opened), 1)
        self.client._reactor.advance(1.0)
        self.assertEqual(len(self.client.opened), 2)
        self.stream(revision=16)

    def test_backoffNeverPastOneSecond(self):
        """
        However many connections fail in a row, the next is tried within
        a second.
        """
        for _ in range(30):
            self.client.opened[-1][3].errback(EtcdUnavailable("refused"))
            count = len(self.client.opened)
            self.client._reactor.advance(1.0)
            self.assertEqual(len(self.client.opened), count + 1)

    def test_fragmentsDoNotAdvanceRevision(self):
        """
        A fragment of a big answer is applied, but the revision moves only
        when the answer is whole: a stream lost in the middle starts again
        from that revision (a repeated put or delete is harmless).
        """
        response = self.stream()
        response.send({"result": {"created": True}})
        response.send({"result": {"fragment": True, "events": [self.put("/p/a/1", "x:1", 20)]}})
        self.assertEqual(self.watch.revision, 10)
        self.assertEqual(len(self.events), 1)
        response.send({"result": {"events": [self.put("/p/a/2", "x:2", 20)]}})
        self.assertEqual(self.watch.revision, 21)

    def test_progressNoticeAdvances(self):
        """
        An answer without events (a progress notice) says every change up
        to its header's revision was sent.
        """
        response = self.stream()
        response.send({"result": {"created": True, "header": {"revision": "30"}}})
        self.assertEqual(self.watch.revision, 10)
        response.send({"result": {"header": {"revision": "30"}}})
        self.assertEqual(self.watch.revision, 31)
        self.assertEqual(self.events, [])

    def test_compactedStopsAndReports(self):
        """
        When etcd compacted the revision the watch wants, the watch stops
        (no reconnection) and reports the compaction revision.
        """
        response = self.stream()
        response.send({"result": {"created": True}})
        response.send({"result": {"canceled": True, "compact_revision": "42"}})
        self.assertEqual(self.compacted, [42])
        self.assertTrue(response.stopped)
        self.client._reactor.advance(10)
        self.assertEqual(len(self.client.opened), 1)

    def test_storeBehindIsLikeCompaction(self):
        """
        A store whose revision is behind what the watch saw (another
        cluster, a restored backup) is reported as a compaction to 0: only
        a new read is right.
        """
        response = self.stream()
        response.send({"result": {"created": True, "header": {"revision": "3"}}})
        self.assertEqual(self.compacted, [0])

    def test_invalidTokenRenewed(self):
        """
        A watch canceled for an invalid token drops the token (the next
        connection authenticates again) and connects again.
        """
        response = self.stream()
        response.send({"result": {
            "created": True, "canceled": True,
            "cancel_reason": "rpc error: code = Unauthenticated desc = etcdserver:"
                             " invalid auth token",
        }})
        self.assertEqual(self.client.dropped, ["token-1"])
        self.assertTrue(response.stopped)
        self.client._reactor.advance(1.0)
        self.assertEqual(len(self.client.opened), 2)

    def test_lineTooLong(self):
        """
        A message longer than the bound drops the stream (memory stays
        bounded) and the watch connects again from the same revision.
        """
        response = self.stream()
        response.send({"result": {"created": True}})
        response.protocol.dataReceived(b"x" * 1500)
        self.assertTrue(response.stopped)
        self.assertIn("larger than 1000 bytes", self.status[-1][1])
        self.client._reactor.advance(1.0)
        self.stream(revision=10)

    def test_garbageLine(self):
        """
        A line that is not JSON is an error of the stream, not of the
        process.
        """
        response = self.stream()
        response.protocol.dataReceived(b"{nope\n")
        self.assertTrue(response.stopped)
        self.assertIn("not JSON", self.status[-1][1])

    def test_lineNestedTooDeeply(self):
        """
        A line nested past the JSON decoder's recursion limit is a line that
        is not JSON, not an error escaping the stream.
        """
        response = self.stream()
        response.protocol.dataReceived(b"[" * 990 + b"\n")
        self.assertTrue(response.stopped)
        self.assertIn("not JSON", self.status[-1][1])

    def test_httpError(self):
        """
        An HTTP error answer is reported with etcd's message, and retried.
        """
        path, body, token, d = self.client.opened[-1]
        response = FakeResponse(code=400)

        def deliverBody(protocol):
            protocol.makeConnection(StringTransport())
            protocol.dataReceived(b'{"error": "bad", "message": "etcdserver: bad", "code": 3}')
            protocol.connectionLost(Failure(ResponseDone()))

        response.deliverBody = deliverBody
        d.callback(response)
        self.assertIn("etcdserver: bad", self.status[-1][1])
        self.client._reactor.advance(1.0)
        self.assertEqual(len(self.client.opened), 2)

    def test_stopCancelsEverything(self):
        """
        After L{Watch.stop} nothing is called and nothing reconnects.
        """
        response = self.stream()
        response.send({"result": {"created": True}})
        self.watch.stop()
        self.assertTrue(response.stopped)
        response.send({"result": {"events": [self.put("/p/a/1", "h:1", 11)]}})
        response.end(Exception("gone"))
        self.client._reactor.advance(10)
        self.assertEqual(self.events, [])
        self.assertEqual(len(self.client.opened), 1)
        self.assertEqual(self.status, [(True, None)])

    def test_reconnect(self):
        """
        L{Watch.reconnect} drops a stream that looks fine and connects
        again from the same revision.
        """
        response = self.stream(revision=10)
        response.send({"result": {"created": True}})
        self.watch.reconnect("etcd does not answer")
        self.assertTrue(response.stopped)
        self.assertEqual(self.status[-1], (False, "http://etcd-a:2379: etcd does not answer"))
        self.client._reactor.advance(1.0)
        self.stream(revision=10)

    def test_stopWhileConnecting(self):
        """
        Stopping while the stream opens cancels it.
        """
        d = self.client.opened[-1][3]
        self.watch.stop()
        self.assertTrue(d.called)
        self.client._reactor.advance(10)
        self.assertEqual(len(self.client.opened), 1)


# -- against a real etcd --------------------------------------------------------


class EtcdTestCase(TestCase):
    """
    A test with a real etcd started in L{setUp}.
    """

    timeout = 60

    def setUp(self):
        requireEtcd()
        self.etcd = EtcdServer(self)
        return self.etcd.start()


class KeysTests(EtcdTestCase):
    """
    Reads and writes.
    """

    @defer.inlineCallbacks
    def test_putRangeDelete(self):
        """
        A put is read back by a range of its prefix (and not by a range of
        a sibling prefix); a delete removes it; revisions grow.
        """
        client = self.etcd.client(self)
        r1 = yield client.put("/svc/users/a", b"10.0.0.1:80")
        r2 = yield client.put("/svc/users/b", b"10.0.0.2:80")
        yield client.put("/svc/users-old/c", b"10.0.0.3:80")
        self.assertGreater(r2, r1)
        revision, kvs = yield client.range("/svc/users/")
        self.assertEqual(revision, r2 + 1)
        self.assertEqual(
            [(kv.key, kv.value, kv.modRevision) for kv in kvs],
            [("/svc/users/a", b"10.0.0.1:80", r1), ("/svc/users/b", b"10.0.0.2:80", r2)],
        )
        kv = yield client.get("/svc/users/a")
        self.assertEqual(kv.value, b"10.0.0.1:80")
        self.assertEqual((yield client.count("/svc/users/")), (r2 + 1, 2))
        _, deleted = yield client.delete("/svc/users/", prefix=True)
        self.assertEqual(deleted, 2)
        self.assertIsNone((yield client.get("/svc/users/a")))
        self.assertEqual(len((yield client.range("/svc/"))[1]), 1)

    @defer.inlineCallbacks
    def test_createIfAbsent(self):
        """
        Create-only writes once; the second attempt says who is there.
        """
        client = self.etcd.client(self)
        created, revision = yield client.createIfAbsent("/rules/web", b"v1")
        self.assertTrue(created)
        again, current = yield client.createIfAbsent("/rules/web", b"v2")
        self.assertEqual((again, current), (False, revision))
        self.assertEqual((yield client.get("/rules/web")).value, b"v1")

    @defer.inlineCallbacks
    def test_compareAndSwap(self):
        """
        A write conditioned on the revision read succeeds once; a second
        writer with the same old revision fails and gets the current key.
        """
        client = self.etcd.client(self)
        _, first = yield client.createIfAbsent("/rules/web", b"v1")
        ok, second, current = yield client.compareAndSwap("/rules/web", b"v2", first)
        self.assertTrue(ok)
        self.assertEqual(current.value, b"v2")
        ok, now, current = yield client.compareAndSwap("/rules/web", b"v3", first)
        self.assertFalse(ok)
        self.assertEqual((now, current.value, current.modRevision), (second, b"v2", second))
        # 0 means "must not exist".
        ok, _, _ = yield client.compareAndSwap("/rules/new", b"n", 0)
        self.assertTrue(ok)
        ok, _, current = yield client.compareAndSwap("/rules/new", b"m", 0)
        self.assertFalse(ok)
        self.assertEqual(current.value, b"n")

    @defer.inlineCallbacks
    def test_txnBranches(self):
        """
        L{EtcdClient.txn} runs the branch its comparisons choose.
        """
        client = self.etcd.client(self)
        yield client.put("/k", b"1")
        ok, _, responses = yield client.txn(
            [compare("/k", "VALUE", b"2")], [opPut("/k", b"3")], [opRange("/k")]
        )
        self.assertFalse(ok)
        self.assertIn("response_range", responses[0])
        ok, _, _ = yield client.txn([compare("/k", "VALUE", b"1")], [opPut("/k", b"3")])
        self.assertTrue(ok)
        self.assertEqual((yield client.get("/k")).value, b"3")

    @defer.inlineCallbacks
    def test_errorFromEtcd(self):
        """
        etcd's own errors come as L{EtcdError} with their code.
        """
        client = self.etcd.client(self)
        yield client.put("/k", b"1")
        revision, _ = yield client.range("/k")
        yield client.put("/k", b"2")
        yield client.compact(revision + 1)
        error = yield self.assertFailure(client.range("/k", revision=revision), EtcdError)
        self.assertEqual(error.code, 11)
        self.assertIn("compacted", str(error))

    @defer.inlineCallbacks
    def test_answerBounded(self):
        """
        An answer larger than the client's bound is an error, not memory.
        """
        client = self.etcd.client(self, maxResponseBytes=4096)
        for i in range(10):
            yield client.put("/big/%d" % (i,), b"x" * 1000)
        error = yield self.assertFailure(client.range("/big/"), EtcdError)
        self.assertIn("larger than 4096 bytes", str(error))
        # The client goes on working.
        self.assertEqual((yield client.get("/big/1")).value, b"x" * 1000)


class LeaseTests(EtcdTestCase):
    """
    Leases.
    """

    @defer.inlineCallbacks
    def test_grantKeepAliveRevoke(self):
        """
        A granted lease is renewed to its TTL; revoking it deletes its keys,
        and renewing a revoked lease says 0.
        """
        client = self.etcd.client(self)
        lease, ttl = yield client.leaseGrant(30)
        self.assertEqual(ttl, 30)
        yield client.put("/svc/a/1", b"h:1", lease=lease)
        self.assertEqual((yield client.get("/svc/a/1")).lease, lease)
        self.assertEqual((yield client.leaseKeepAlive(lease)), 30)
        self.assertTrue((yield client.leaseRevoke(lease)))
        self.assertIsNone((yield client.get("/svc/a/1")))
        self.assertEqual((yield client.leaseKeepAlive(lease)), 0)
        self.assertFalse((yield client.leaseRevoke(lease)))

    @defer.inlineCallbacks
    def test_expiryDeletesKey(self):
        """
        A lease not kept alive expires, and its key with it (a watch sees
        the deletion).
        """
        client = self.etcd.client(self)
        lease, _ = yield client.leaseGrant(1)
        revision = yield client.put("/svc/a/1", b"h:1", lease=lease)
        seen = []
        watch = client.watch("/svc/", revision + 1, lambda events, _: seen.extend(events),
                             lambda _: None)
        self.addCleanup(watch.stop)
        yield waitUntil(lambda: seen, timeout=15, what="the expiry")
        self.assertEqual([(e.kind, e.kv.key) for e in seen], [("delete", "/svc/a/1")])
        self.assertIsNone((yield client.get("/svc/a/1")))


class WatchIntegrationTests(EtcdTestCase):
    """
    Watches on a real etcd.
    """

    def follow(self, client, prefix, start):
        seen = []
        compacted = []
        status = []
        watch = client.watch(
            prefix,
            start,
            lambda events, revision: seen.extend(events),
            compacted.append,
            onStatus=lambda connected, reason: status.append(connected),
        )
        self.addCleanup(watch.stop)
        return watch, seen, compacted, status

    @defer.inlineCallbacks
    def test_eventsInOrder(self):
        """
        Puts and deletes under the prefix arrive in order, with their
        revisions; keys outside it do not.
        """
        client = self.etcd.client(self)
        revision, _ = yield client.range("/w/")
        watch, seen, _, status = self.follow(client, "/w/", revision + 1)
        yield waitUntil(lambda: watch.connected, what="the watch")
        yield client.put("/w/a", b"1")
        yield client.put("/x/a", b"1")
        yield client.delete("/w/a")
        yield waitUntil(lambda: len(seen) == 2, what="two events")
        self.assertEqual([(e.kind, e.kv.key) for e in seen], [("put", "/w/a"), ("delete", "/w/a")])
        self.assertEqual(status, [True])

    @defer.inlineCallbacks
    def test_startRevisionReplays(self):
        """
        A watch from an old revision gets every change since.
        """
        client = self.etcd.client(self)
        first = yield client.put("/w/a", b"1")
        yield client.put("/w/b", b"2")
        _, seen, _, _ = self.follow(client, "/w/", first)
        yield waitUntil(lambda: len(seen) == 2, what="the replay")
        self.assertEqual([e.kv.key for e in seen], ["/w/a", "/w/b"])

    @defer.inlineCallbacks
    def test_resumesAcrossRestart(self):
        """
        A watch survives etcd stopping and starting again (same data, same
        port): the changes made before it reconnects arrive, none twice,
        and it is followed again within about a second.
        """
        client = self.etcd.client(self)
        writer = self.etcd.client(self)
        revision, _ = yield client.range("/w/")
        watch, seen, compacted, status = self.follow(client, "/w/", revision + 1)
        yield waitUntil(lambda: watch.connected, what="the watch")
        for i in range(5):
            yield writer.put("/w/before-%d" % (i,), b"x")
        yield waitUntil(lambda: len(seen) == 5, what="events before the restart")
        yield self.etcd.stop()
        yield waitUntil(lambda: not watch.connected, what="the loss")
        yield self.etcd.start()
        restarted = reactor.seconds()
        for i in range(5):
            yield writer.put("/w/after-%d" % (i,), b"y")
        yield waitUntil(lambda: len(seen) >= 10, what="events after the restart")
        yield waitUntil(lambda: watch.connected, what="the watch again")
        self.assertLess(reactor.seconds() - restarted, 3.0)
        keys = [e.kv.key for e in seen]
        self.assertEqual(
            keys, ["/w/before-%d" % i for i in range(5)] + ["/w/after-%d" % i for i in range(5)]
        )
        self.assertEqual(compacted, [])
        self.assertEqual(status[0], True)
        self.assertIn(False, status)
        self.assertEqual(status[-1], True)

    @defer.inlineCallbacks
    def test_compactedRevisionReported(self):
        """
        A watch from a compacted revision is told the compaction revision,
        and stops.
        """
        client = self.etcd.client(self)
        old = yield client.put("/w/a", b"1")
        latest = yield client.put("/w/a", b"2")
        yield client.compact(latest)
        watch, seen, compacted, _ = self.follow(client, "/w/", old)
        yield waitUntil(lambda: compacted, what="the compaction")
        self.assertEqual(compacted, [latest])
        self.assertEqual(seen, [])
        self.assertFalse(watch.connected)


class FailoverTests(TestCase):
    """
    Endpoints that cannot be reached.
    """

    timeout = 60

    @defer.inlineCallbacks
    def test_unreachable(self):
        """
        With no endpoint reachable, a request fails with
        L{EtcdUnavailable} naming why, and is counted.
        """
        [port] = freePorts(1)
        client = EtcdClient(["http://127.0.0.1:%d" % (port,)], reactor=reactor, timeout=2)
        self.addCleanup(client.close)
        logged = []
        globalLogPublisher.addObserver(logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, logged.append)
        error = yield self.assertFailure(client.put("/k", b"v"), EtcdUnavailable)
        self.assertIn("127.0.0.1:%d: connection refused" % (port,), str(error))
        self.assertEqual(client.errors, 1)
        # Each attempt is not logged by Twisted (many a second while etcd
        # is away).
        self.assertEqual([e for e in logged if "factory" in formatEvent(e)], [])

    @defer.inlineCallbacks
    def silentClient(self, timeout):
        """
        A client of two endpoints that accept connections and never answer.

        @return: C{(client, posts, connections)}: the requests it made, the
            connections the endpoints accepted.
        """
        from twisted.internet.endpoints import TCP4ServerEndpoint

        connections = []

        class Silent(protocol.Protocol):
            def connectionMade(self):
                connections.append(self)

        silent = protocol.Factory.forProtocol(Silent)
        port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(silent)

        def close():
            for connection in connections:
                connection.transport.abortConnection()
            return port.stopListening()

        self.addCleanup(close)
        url = "http://127.0.0.1:%d" % (port.getHost().port,)
        client = EtcdClient([url, url], reactor=reactor, timeout=timeout)
        self.addCleanup(client.close)
        posts = []
        post = client._post
        client._post = lambda *args: posts.append(args) or post(*args)
        return client, posts, connections

    @defer.inlineCallbacks
    def test_cancelStops(self):
        """
        A request its caller cancels is not tried again on another endpoint
        (or the same): it fails with L{CancelledError}.
        """
        client, posts, connections = yield self.silentClient(30)
        d = client.range("/")
        yield waitUntil(lambda: connections, what="the connection")
        d.cancel()
        yield self.assertFailure(d, defer.CancelledError)
        self.assertEqual(len(posts), 1)

    @defer.inlineCallbacks
    def test_timeout(self):
        """
        A request without an answer within the timeout is tried on the
        next endpoint (and once more), then fails as unavailable; a
        transaction, which may have been applied, is not tried again.
        """
        client, posts, _ = yield self.silentClient(0.2)
        error = yield self.assertFailure(client.range("/"), EtcdUnavailable)
        self.assertIn("no answer in time", str(error))
        self.assertEqual(len(posts), 3)
        del posts[:]
        error = yield self.assertFailure(client.createIfAbsent("/k", b"v"), EtcdError)
        self.assertNotIsInstance(error, EtcdUnavailable)
        self.assertEqual(len(posts), 1)

    @defer.inlineCallbacks
    def test_nextEndpoint(self):
        """
        A dead endpoint is skipped for the next one, which is kept for the
        following requests.
        """
        requireEtcd()
        etcd = EtcdServer(self)
        yield etcd.start()
        [port] = freePorts(1)
        dead = "http://127.0.0.1:%d" % (port,)
        client = EtcdClient([dead, etcd.url], reactor=reactor, timeout=2)
        self.addCleanup(client.close)
        yield client.put("/k", b"v")
        self.assertEqual(client.endpoint, etcd.url)
        self.assertEqual((yield client.get("/k")).value, b"v")

    @defer.inlineCallbacks
    def test_watchFollowsNextEndpoint(self):
        """
        A watch whose endpoint cannot be reached moves to the next one.
        """
        requireEtcd()
        etcd = EtcdServer(self)
        yield etcd.start()
        [port] = freePorts(1)
        client = EtcdClient(
            ["http://127.0.0.1:%d" % (port,), etcd.url], reactor=reactor, timeout=2
        )
        self.addCleanup(client.close)
        seen = []
        watch = client.watch("/w/", 1, lambda events, _: seen.extend(events), lambda _: None)
        self.addCleanup(watch.stop)
        yield waitUntil(lambda: watch.connected, what="the watch on the live endpoint")
        yield client.put("/w/a", b"1")
        yield waitUntil(lambda: seen, what="the event")


class AuthTests(TestCase):
    """
    etcd with authentication on.
    """

    timeout = 60

    @defer.inlineCallbacks
    def setUp(self):
        requireEtcd()
        self.etcd = EtcdServer(self)
        yield self.etcd.start()
        yield enableAuth(self.etcd, "r00t", {"mesh": ("meshpw", "/meshproxy/")})

    @defer.inlineCallbacks
    def test_userReadsAndWritesItsPrefix(self):
        """
        With a user name and password, the client gets a token and uses
        it; outside the user's prefix, etcd's refusal comes through.
        """
        client = self.etcd.client(self, username="mesh", password="meshpw")
        yield client.put("/meshproxy/services/a/1", b"h:1")
        _, kvs = yield client.range("/meshproxy/")
        self.assertEqual([kv.key for kv in kvs], ["/meshproxy/services/a/1"])
        error = yield self.assertFailure(client.put("/other", b"x"), EtcdError)
        self.assertEqual(error.code, 7)

    @defer.inlineCallbacks
    def test_withoutOrWrongCredentials(self):
        """
        Without credentials, or with a wrong password, requests fail with a
        clear error (not as unreachable).
        """
        anonymous = self.etcd.client(self)
        yield self.assertFailure(anonymous.range("/meshproxy/"), EtcdError)
        wrong = self.etcd.client(self, username="mesh", password="nope")
        error = yield self.assertFailure(wrong.range("/meshproxy/"), EtcdError)
        self.assertNotIsInstance(error, EtcdUnavailable)
        self.assertIn("authentication", str(error))

    @defer.inlineCallbacks
    def test_invalidTokenRenewed(self):
        """
        A token etcd no longer accepts (expired) is replaced: the request
        authenticates again and goes through.
        """
        client = self.etcd.client(self, username="mesh", password="meshpw")
        yield client.range("/meshproxy/")
        client._token = "expired.1"
        yield client.put("/meshproxy/services/a/1", b"h:1")
        self.assertNotIn(client._token, (None, "expired.1"))

    @defer.inlineCallbacks
    def test_watchRenewsTokenAcrossRestart(self):
        """
        A watch that connects again with a token etcd refuses gets a new
        one, and misses nothing.
        """
        client = self.etcd.client(self, username="mesh", password="meshpw")
        writer = self.etcd.client(self, username="mesh", password="meshpw")
        revision, _ = yield client.range("/meshproxy/")
        seen = []
        watch = client.watch(
            "/meshproxy/", revision + 1, lambda events, _: seen.extend(events), lambda _: None
        )
        self.addCleanup(watch.stop)
        yield waitUntil(lambda: watch.connected, what="the watch")
        yield self.etcd.stop()
        client._token = "expired.1"
        yield self.etcd.start()
        yield writer.put("/meshproxy/services/a/1", b"h:1")
        yield waitUntil(lambda: seen, what="the event after the restart")
        self.assertEqual([e.kv.key for e in seen], ["/meshproxy/services/a/1"])
        self.assertNotEqual(client._token, "expired.1")


class TLSTests(TestCase):
    """
    etcd serving HTTPS and asking for client certificates.
    """

    timeout = 60

    @defer.inlineCallbacks
    def setUp(self):
        requireEtcd()
        from meshproxy.certs import initAuthority, issue

        directory = os.path.abspath(self.mktemp())
        ca = initAuthority(directory)
        server = issue(directory, "etcd", ips=("127.0.0.1",))
        client = issue(directory, "meshproxy")
        self.directory = directory
        self.ca = ca.cert
        self.etcd = EtcdServer(
            self,
            tls={
                "cert": server.cert, "key": server.key, "ca": ca.cert, "clientCertAuth": True,
                "clientCert": client.cert, "clientKey": client.key,
            },
        )
        yield self.etcd.start()

    @defer.inlineCallbacks
    def test_clientCertificate(self):
        """
        With the CA and a client certificate, requests and watches work.
        """
        client = self.etcd.client(self)
        yield client.put("/k", b"v")
        self.assertEqual((yield client.get("/k")).value, b"v")
        seen = []
        watch = client.watch("/k", 1, lambda events, _: seen.extend(events), lambda _: None,
                             prefix=False)
        self.addCleanup(watch.stop)
        yield waitUntil(lambda: seen, what="the event")

    @defer.inlineCallbacks
    def test_untrustedServer(self):
        """
        A client that does not trust etcd's CA does not talk to it.
        """
        from meshproxy.certs import initAuthority

        other = initAuthority(self.mktemp())
        client = self.etcd.client(
            self, tls=TLSFiles(ca=other.cert, cert=self.etcd.tls.cert, key=self.etcd.tls.key)
        )
        yield self.assertFailure(client.get("/k"), EtcdError)

    @defer.inlineCallbacks
    def test_noClientCertificate(self):
        """
        Without a client certificate, etcd refuses the connection.
        """
        client = self.etcd.client(self, tls=TLSFiles(ca=self.ca))
        yield self.assertFailure(client.get("/k"), EtcdError)
