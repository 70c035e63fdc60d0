"""
The hot path's shortcuts give what the long way gives: response fields
passed on without a lowered copy of their names, one response writer per
client connection, the settings read per request, the TCP connection
attributes the fast writer reads, a bound name's C{unresolved} and the
dialed connections' log prefix.
"""

from __future__ import annotations

import random
import socket

from twisted.internet import tcp
from twisted.internet.epollreactor import EPollReactor
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from meshproxy import reactor as meshreactor
from meshproxy.balancing.bound import BoundEndpoints
from meshproxy.balancing.roundrobin import RoundRobin
from meshproxy.config.policies import ServerConfig
from meshproxy.discovery.endpoints import Addr, Endpoint, Observable
from meshproxy.http import checks, rewrite
from meshproxy.http.checks import checkHead
from meshproxy.http.message import HOP_BY_HOP, Request
from meshproxy.http.rewrite import ResponseWriter, requestHead
from meshproxy.http.server import ServerProtocol
from meshproxy.routing.delegate import BoundName
from meshproxy.routing.path import Path
from meshproxy.transport.dial import DialedClient
from meshproxy.transport.fastwrite import ownDefaults, writerFor

from .test_http_server import Harness


class PassedNamesTests(SynchronousTestCase):
    def test_noneIsHopByHop(self) -> None:
        """
        No spelling of the names passed on as they are is a hop-by-hop (or
        framing) field's.
        """
        for name in rewrite._PASSED:
            self.assertNotIn(name.lower(), HOP_BY_HOP, name)

    def test_sameHeadAsAnyOtherSpelling(self) -> None:
        """
        A head whose names are spelled as passed on as they are is written
        as the same head spelled otherwise (the long way), but for the
        names' own spelling.
        """
        fields = [
            (b"Date", b"Tue, 01 Dec 2026 21:00:00 GMT"),
            (b"Server", b"nginx"),
            (b"Content-Type", b"text/plain"),
            (b"Content-Length", b"6"),
            (b"Connection", b"keep-alive"),
            (b"ETag", b'"x"'),
            (b"set-cookie", b"a=b"),
        ]
        other = [(name.upper(), value) for name, value in fields]
        self.assertFalse({name for name, _ in other} & rewrite._PASSED)
        heads = []
        for headers in (fields, other):
            out: list[bytes] = []
            writer = ResponseWriter(out, False)
            writer.head(200, b"OK", headers, contentLength=b"6", chunked=False,
                        version="1.1", keepAlive=True)
            heads.append(b"".join(out))
        self.assertEqual(heads[0].lower(), heads[1].lower())
        self.assertIn(b"\r\nDate: Tue, 01 Dec 2026 21:00:00 GMT\r\n", heads[0])
        self.assertIn(b"\r\nETag: \"x\"\r\n", heads[0])
        self.assertNotIn(b"onnection: keep-alive", heads[0])
        self.assertEqual(heads[0].count(b"Content-Length"), 1)


class OneWriterPerConnectionTests(SynchronousTestCase):
    def test_secondResponseFramedByItsOwnHead(self) -> None:
        """
        The writer of a connection's second response starts afresh: a
        first response re-framed as chunks (no length) does not make the
        second chunked, nor does a first answer to HEAD make the second
        bodyless.
        """
        h = Harness()
        proto, transport = h.client()
        proto.dataReceived(b"HEAD / HTTP/1.1\r\nHost: hello\r\n\r\n")
        up, _ = h.upstream()
        up.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n")
        first = proto.responseWriter(False)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 200 OK\r\n"))
        transport.clear()
        proto.dataReceived(b"GET / HTTP/1.1\r\nHost: hello\r\n\r\n")
        up.dataReceived(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"
        )
        self.assertEqual(
            transport.value(),
            b"HTTP/1.1 200 OK\r\nVia: 1.1 meshproxy\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"2\r\nok\r\n0\r\n\r\n",
        )
        transport.clear()
        proto.dataReceived(b"GET / HTTP/1.1\r\nHost: hello\r\n\r\n")
        up.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        self.assertEqual(
            transport.value(),
            b"HTTP/1.1 200 OK\r\nVia: 1.1 meshproxy\r\nContent-Length: 2\r\n\r\nok",
        )
        self.assertIs(proto.responseWriter(True), first)
        self.assertTrue(first.bodyless)


class SettingsReadPerRequestTests(SynchronousTestCase):
    def test_limitsOfTheConnectionsSettings(self) -> None:
        """
        A client connection's limits are those of the settings it was made
        with (read once, at its start).
        """
        h = Harness()
        settings = h.settings.model_copy(update={"maxHeaders": 2, "maxUriLength": 10})
        proto = ServerProtocol(h.router, settings, h.reactor)
        self.assertEqual(
            (proto._maxHeaders, proto._maxHeaderBytes, proto._maxUriLength, proto._idleTimeout),
            (2, settings.maxHeaderBytes, 10, settings.idleTimeout),
        )


class FastWriterAttributesTests(SynchronousTestCase):
    def test_sameValuesOnTheInstance(self) -> None:
        """
        L{ownDefaults} gives a plain TCP connection, as its own attributes,
        the values of the class attributes the fast paths read; writing
        goes on as before.
        """
        a, b = socket.socketpair()
        self.addCleanup(a.close)
        self.addCleanup(b.close)
        conn = tcp.Connection(a, None)
        conn.connected = 1
        names = ("offset", "dataBuffer", "disconnecting", "_writeDisconnected", "bufferSize")
        before = [getattr(conn, name) for name in names]
        self.patch(conn, "__class__", tcp.Server)
        ownDefaults(conn)
        write = writerFor(conn)
        self.assertEqual([vars(conn)[name] for name in names], before)
        write(b"hello")
        self.assertEqual(b.recv(5), b"hello")


class _Maker:
    """
    What a L{BoundEndpoints} asks its router for: a balancer, no accrual.
    """

    def __init__(self) -> None:
        self.clock = Clock()

    def makeBalancer(self, **kwargs: object) -> RoundRobin:
        return RoundRobin(clock=self.clock, random=random.Random(1), **kwargs)

    def makeAccrual(self, balancer: object) -> None:
        return None


class UnresolvedTests(SynchronousTestCase):
    def test_followsTheNamersAnswers(self) -> None:
        """
        A bound name is unresolved until its namer's first answer, and
        stays resolved after a failure that keeps the last good set.
        """
        observable = Observable()
        name = BoundName(Path.read("/#/x/y"), Path.read("/#/x"), "y", Path.read("/"))
        bound = BoundEndpoints(_Maker(), name, observable)
        self.assertTrue(bound.unresolved)
        observable.set(Addr.bound(frozenset([Endpoint("127.0.0.1", 1)])))
        self.assertFalse(bound.unresolved)
        observable.set(Addr.failed("down"))
        self.assertFalse(bound.unresolved)

    def test_failedFirstAnswer(self) -> None:
        """
        A failed first answer resolves the name (as a negative one does).
        """
        for answer in (Addr.failed("down"), Addr.neg()):
            observable = Observable()
            name = BoundName(Path.read("/#/x/y"), Path.read("/#/x"), "y", Path.read("/"))
            bound = BoundEndpoints(_Maker(), name, observable)
            observable.set(answer)
            self.assertFalse(bound.unresolved)


class DialedLogPrefixTests(SynchronousTestCase):
    def test_madeWhenAskedOrGiven(self) -> None:
        """
        A dialed connection's log prefix is made from its protocol when
        asked for; one given is kept.
        """
        client = object.__new__(DialedClient)
        self.assertEqual(client.logstr, "Uninitialized")
        client.protocol = ServerProtocol.__new__(ServerProtocol)  # type: ignore[assignment]
        self.assertEqual(client.logPrefix(), "ServerProtocol,client")
        client.logstr = "Given,client"
        self.assertEqual(client.logPrefix(), "Given,client")


class ReactorMasksTests(SynchronousTestCase):
    def test_sameAsTwisteds(self) -> None:
        """
        The event masks L{MeshReactor<meshproxy.reactor.MeshReactor>}
        dispatches by are its base's.
        """
        self.assertEqual(
            (meshreactor._POLL_DISCONNECTED, meshreactor._POLL_IN, meshreactor._POLL_OUT),
            (EPollReactor._POLL_DISCONNECTED, EPollReactor._POLL_IN, EPollReactor._POLL_OUT),
        )


class RequestVersionTests(SynchronousTestCase):
    def versions(self, *reads: bytes) -> list[str]:
        """
        The versions of the requests a client connection made of C{reads}.
        """
        h = Harness()
        proto, _ = h.client()
        for data in reads:
            proto.dataReceived(data)
        exchanges = [proto.active, *proto.queue]
        return [e.request.version for e in exchanges if e is not None]

    def test_lineOfTheRead(self) -> None:
        """
        Each request of a read has its own version: the first's read off
        its line, the others' asked of the parser.
        """
        self.assertEqual(
            self.versions(
                b"GET / HTTP/1.1\r\nHost: hello\r\n\r\n"
                b"GET / HTTP/1.0\r\nHost: hello\r\nConnection: keep-alive\r\n\r\n"
                b"GET / HTTP/1.1\r\nHost: hello\r\n\r\n"
            ),
            ["1.1", "1.0", "1.1"],
        )
        self.assertEqual(self.versions(b"GET / HTTP/1.0\r\nHost: hello\r\n\r\n"), ["1.0"])

    def test_headAcrossReads(self) -> None:
        """
        A head split between reads has the version of its line.
        """
        for version in (b"1.0", b"1.1"):
            self.assertEqual(
                self.versions(b"GET / HTTP/" + version + b"\r\nHo", b"st: hello\r\n\r\n"),
                [version.decode()],
            )

    def test_readStartingInABody(self) -> None:
        """
        A read that starts with the end of a request body: the request
        after it has its own version, whatever the body looks like.
        """
        self.assertEqual(
            self.versions(
                b"POST / HTTP/1.1\r\nHost: hello\r\nContent-Length: 20\r\n\r\n",
                b"GET / HTTP/1.1\r\nX: yGET / HTTP/1.0\r\nHost: hello\r\n\r\n",
            ),
            ["1.1", "1.0"],
        )

    def test_emptyLinesFirst(self) -> None:
        """
        A request after an empty line has its own version.
        """
        self.assertEqual(self.versions(b"\r\nGET / HTTP/1.0\r\nHost: hello\r\n\r\n"), ["1.0"])


def _request(headers: list[tuple[bytes, bytes]]) -> Request:
    return Request(b"GET", b"/a", "1.1", headers)


class SpelledNamesTests(SynchronousTestCase):
    """
    Request fields found by their name as received (spelled as usual) are
    checked and forwarded as those found by a lowered copy of it.
    """

    cases = [
        [(b"Host", b"hello"), (b"User-Agent", b"ua"), (b"Accept", b"*/*")],
        [(b"host", b"hello"), (b"accept-encoding", b"gzip"), (b"Content-Length", b"3")],
        [(b"Host", b"hello"), (b"Transfer-Encoding", b"chunked"), (b"Expect", b"100-continue")],
        [(b"Host", b"hello"), (b"Connection", b"keep-alive, User-Agent"), (b"User-Agent", b"ua"),
         (b"Cookie", b"c=1")],
        [(b"Host", b"hello"), (b"Traceparent", b"00-" + b"1" * 32 + b"-" + b"2" * 16 + b"-01"),
         (b"mesh-ctx-deadline", b"1"), (b"Mesh-Reqid", b"x"), (b"Via", b"1.1 other")],
        [(b"Host", b"hello"), (b"X-Forwarded-For", b"10.0.0.1"), (b"Forwarded", b"for=x"),
         (b"Connection", b"Upgrade"), (b"Upgrade", b"websocket"), (b"Authorization", b"a")],
    ]

    def outcome(self, headers: list[tuple[bytes, bytes]]) -> tuple[object, ...]:
        request = _request(headers)
        checkHead(request, ServerConfig())
        head = requestHead(request, b"10.0.0.7", b"http", True, b"5", None, None, b"")
        return (
            request.host, request.chunked, request.contentLength, request.expectContinue,
            request.upgrade, request.connectionTokens, request.meshHeaders,
            request.traceHeaders, head.lower(),
        )

    def test_sameAsAnyOtherSpelling(self) -> None:
        for headers in self.cases:
            upper = [(name.upper(), value) for name, value in headers]
            self.assertEqual(self.outcome(headers), self.outcome(upper), headers)

    def test_knownSpellingsMeanNothingElse(self) -> None:
        """
        The names forwarded as they are mean nothing to the rewriting, and
        those checkHead takes as plain nothing to the checks.
        """
        for name in rewrite._FORWARDED_AS_IS:
            lowered = name.lower()
            self.assertNotIn(lowered, rewrite._REQUEST_FIELDS)
            self.assertNotEqual(lowered[:5], b"mesh-")
        for name, kind in checks._SPELLED.items():
            self.assertEqual(checks._FIELDS.get(name.lower(), checks._PLAIN), kind, name)


class ReactorTurnTests(SynchronousTestCase):
    def test_timedCalls(self) -> None:
        """
        A turn with nothing due returns at once and leaves the timed calls
        as they are; a due one runs; C{timeout} is the wait until the next
        one (L{None} without any), as Twisted's.
        """
        reactor = meshreactor.MeshReactor()
        self.addCleanup(reactor._poller.close)
        now = [1000.0]
        reactor.seconds = lambda: now[0]  # type: ignore[method-assign]
        self.assertIsNone(reactor.timeout())
        fired: list[str] = []
        later = reactor.callLater(5, fired.append, "later")
        reactor.callLater(1, fired.append, "soon")
        self.assertEqual(reactor.timeout(), 1)
        reactor.runUntilCurrent()
        self.assertEqual(fired, [])
        now[0] += 1
        reactor.runUntilCurrent()
        self.assertEqual(fired, ["soon"])
        self.assertEqual(reactor.timeout(), 4)
        later.cancel()
        now[0] += 10
        reactor.runUntilCurrent()
        self.assertEqual(fired, ["soon"])
        self.assertIsNone(reactor.timeout())
        now[0] -= 20
        reactor.callLater(1, fired.append, "past")
        self.assertEqual(reactor.timeout(), 1)
        now[0] += 30
        self.assertEqual(reactor.timeout(), 0)
