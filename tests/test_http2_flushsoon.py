"""
Tests for the HTTP/2 server connection's flush after the events of a poll
(L{meshproxy.http2.connection.H2ServerConnection.flushSoon}): responses that
several upstream reads finish for one client go out in one write.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from tests.test_http2_server import H2Harness, get

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


class _AfterEvents:
    """
    A stand-in for L{MeshReactor.callAfterEvents
    <meshproxy.reactor.MeshReactor.callAfterEvents>}: queues while
    C{inEvents}, refuses otherwise.
    """

    def __init__(self) -> None:
        self.inEvents = False
        self.queued: list = []

    def __call__(self, f) -> bool:
        if not self.inEvents:
            return False
        self.queued.append(f)
        return True

    def endOfPoll(self) -> None:
        self.inEvents = False
        queued, self.queued = self.queued, []
        for f in queued:
            f()


class FlushSoonTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.harness = H2Harness()
        self.after = _AfterEvents()
        self.harness.reactor.callAfterEvents = self.after
        self.client = self.harness.h2()
        self.first = self.client.request(get(b"/1"))
        self.up1, _ = self.harness.upstream()
        self.second = self.client.request(get(b"/2"))
        self.up2, _ = self.harness.upstream()

    def test_responsesOfOnePollInOneWrite(self) -> None:
        """
        Two responses finished by two upstream reads of the same poll are
        sent once the poll's events are handled, in one write.
        """
        c = self.client
        writes = []
        send = c.proto._h2._send
        c.proto._h2._send = lambda data: (writes.append(data), send(data))
        self.after.inEvents = True
        self.up1.dataReceived(OK)
        self.up2.dataReceived(OK)
        self.assertEqual((writes, len(self.after.queued)), ([], 1))
        self.after.endOfPoll()
        self.assertEqual(len(writes), 1)
        c.pump()
        self.assertEqual(c.response(self.first)[1:], (b"ok", None, True))
        self.assertEqual(c.response(self.second)[1:], (b"ok", None, True))

    def test_outsideEventsAtOnce(self) -> None:
        """
        Outside the events of a poll (a timer, or a reactor without the
        hook), a finished response is sent at once.
        """
        c = self.client
        self.up1.dataReceived(OK)
        self.assertEqual(self.after.queued, [])
        c.pump()
        self.assertEqual(c.response(self.first)[1:], (b"ok", None, True))

    def test_queuedFlushAfterCloseSendsNothing(self) -> None:
        """
        A connection closed before its queued flush runs sends nothing then.
        """
        c = self.client
        self.after.inEvents = True
        self.up1.dataReceived(OK)
        c.proto._h2.closed = True
        writes = []
        c.proto._h2._send = writes.append
        self.after.endOfPoll()
        self.assertEqual(writes, [])
