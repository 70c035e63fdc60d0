"""
What a request's reads do before the send they cause, and what waits until
after it (the critical path at concurrency 1): the bytes go out first, and
the work that shapes none of them (the total timeout, the retry budget's
credit, the balancer's latency sample and counts, failure accrual, the pool,
metrics) follows in the same event, with the values it had before.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from meshproxy.http.client import Pool

from .test_http_server import CONFIG, Harness

REQUEST = b"GET / HTTP/1.1\r\nHost: hello\r\n\r\n"
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def _onWrite(
    obj: Any, attribute: str, snapshot: Callable[[], dict[str, Any]]
) -> list[dict[str, Any]]:
    """
    Wrap the write function C{obj.attribute} to take a snapshot before
    each write.

    @return: the list the snapshots go to.
    """
    taken: list[dict[str, Any]] = []
    original = getattr(obj, attribute)

    def write(data: bytes) -> None:
        taken.append(snapshot())
        original(data)

    setattr(obj, attribute, write)
    return taken


class Pooled:
    """
    A router with one client connection and one pooled upstream connection
    that already carried a request.
    """

    def __init__(self, config: str = CONFIG) -> None:
        h = self.h = Harness(config)
        self.proto, self.transport = h.client()
        self.proto.dataReceived(REQUEST)
        self.up, self.upTransport = h.upstream()
        self.up.dataReceived(RESPONSE)
        assert self.transport.value().endswith(b"ok")
        self.transport.clear()
        self.upTransport.clear()
        [self.client] = list(h.router.clients)
        [self.node] = self.client.balancer.nodes()
        self.pool: Pool = self.node.payload

    def state(self) -> dict[str, Any]:
        """
        What the work after a send changes.
        """
        router = self.h.router
        stats = self.client.stats
        return {
            "timeouts": len(router.timeouts),
            "credited": router.retries._budgetCounts.a,
            "pending": self.node.pending,
            "successes": self.node.successes,
            "cost": self.node.cost,
            "idle": len(self.pool.idle),
            "recorded": sum(stats.buckets) if stats is not None else 0,
        }


class RequestSendFirstTests(SynchronousTestCase):
    def test_requestSentBeforeTimeoutAndCredit(self) -> None:
        """
        A request on a pooled connection is written upstream before its
        total timeout is added and before the retry budget is credited;
        both are done by the end of the read, the timeout due at the
        exchange's start plus the total, the credit at its start time.
        """
        p = Pooled()
        before = p.state()
        [conn] = p.pool.idle
        seen = _onWrite(conn, "_send", p.state)
        p.h.reactor.advance(1.5)
        p.proto.dataReceived(REQUEST)
        self.assertEqual(len(seen), 1)
        self.assertEqual(seen[0]["timeouts"], 0)
        self.assertEqual(seen[0]["credited"], before["credited"])
        after = p.state()
        self.assertEqual(after["timeouts"], 1)
        self.assertEqual(after["credited"], before["credited"] + 1)
        exchange = p.proto.active
        self.assertEqual(exchange.timer.getTime(), exchange.startTime + 60.0)
        self.assertEqual(exchange.startTime, 1.5)

    def test_synchronousRetryCreditedFirst(self) -> None:
        """
        A try that fails within the read that started it (its pool fails at
        once) is retried with the request's own credit in the budget: the
        credit is paid before the budget is asked. (Half a retry per
        request, none in reserve: the first request's half is not enough.)
        """
        p = Pooled(CONFIG + "    retries: {budget: {percent: 50, minPerSecond: 0}}\n")
        original = p.pool.acquire
        calls: list[object] = []

        def failOnce(exchange: Any) -> None:
            calls.append(exchange)
            if len(calls) == 1:
                exchange.connectFailed("refused the connection", True)
                return
            original(exchange)

        p.pool.acquire = failOnce  # type: ignore[method-assign]
        p.h.reactor.advance(1.0)
        p.proto.dataReceived(REQUEST)
        # (the retry waits for its backoff)
        p.h.reactor.advance(1.0)
        self.assertEqual(len(calls), 2)
        self.assertEqual(p.upTransport.value()[:4], b"GET ")
        p.up.dataReceived(RESPONSE)
        self.assertTrue(p.transport.value().startswith(b"HTTP/1.1 200 OK\r\n"))

    def test_noNewReactorTimerPerRequest(self) -> None:
        """
        One request at a time arms no reactor timer of its own: the timeout
        queue's timer, armed for the first, stays armed for the next.
        """
        p = Pooled()
        timers = [c for c in p.h.reactor.getDelayedCalls()
                  if c.func == p.h.router.timeouts._expire]
        self.assertEqual(len(timers), 1)
        for _ in range(3):
            p.h.reactor.advance(0.1)
            p.proto.dataReceived(REQUEST)
            p.up.dataReceived(RESPONSE)
        self.assertEqual(
            [c for c in p.h.reactor.getDelayedCalls() if c.func == p.h.router.timeouts._expire],
            timers,
        )


class ResponseSendFirstTests(SynchronousTestCase):
    def test_responseSentBeforeBookkeeping(self) -> None:
        """
        A response in one read is written to the client before its
        connection goes back to the pool, the balancer and accrual hear of
        the try, its latency sample is taken, the total timeout is
        cancelled and the metrics are recorded; all are done by the end of
        the read.
        """
        p = Pooled()
        p.proto.dataReceived(REQUEST)
        before = p.state()
        seen = _onWrite(p.proto, "_send", p.state)
        p.h.reactor.advance(0.25)
        p.up.dataReceived(RESPONSE)
        self.assertEqual(len(seen), 1)
        self.assertEqual(seen[0], before)
        after = p.state()
        self.assertEqual(after["timeouts"], 0)
        self.assertEqual(after["pending"], 0)
        self.assertEqual(after["successes"], before["successes"] + 1)
        self.assertEqual(after["idle"], 1)
        self.assertEqual(after["recorded"], before["recorded"] + 1)
        # The sample: from the try's start to the read of the head.
        self.assertAlmostEqual(after["cost"], 250.0)

    def test_streamedHeadSampledAfterItsSend(self) -> None:
        """
        A response whose body continues past the read of its head: the
        head is written first, then the balancer gets the latency sample to
        that read, once; the rest of the body changes it no more.
        """
        p = Pooled()
        p.proto.dataReceived(REQUEST)
        seen = _onWrite(p.proto, "_send", p.state)
        p.h.reactor.advance(0.25)
        p.up.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nok")
        self.assertEqual(len(seen), 1)
        self.assertEqual(seen[0]["cost"], 0.0)
        self.assertAlmostEqual(p.node.cost, 250.0)
        p.h.reactor.advance(5.0)
        p.up.dataReceived(b"ok")
        self.assertTrue(p.transport.value().endswith(b"okok"))
        self.assertAlmostEqual(p.node.cost, 250.0)
        self.assertEqual(p.node.pending, 0)
        self.assertEqual(p.node.successes, 2)

    def test_sampleTakenWhenTryEndsInItsHeadRead(self) -> None:
        """
        A try that ends in the read of its head before any flush (the
        upstream sends more than the head allows: a protocol error after a
        valid head) still gives the balancer its sample, before its
        verdict.
        """
        p = Pooled(CONFIG + "    client: {maxHeaderBytes: 256}\n")
        p.proto.dataReceived(REQUEST)
        p.h.reactor.advance(0.25)
        p.up.dataReceived(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n"
            + b"0\r\nx-long: " + b"a" * 400 + b"\r\n\r\n"
        )
        self.assertAlmostEqual(p.node.cost, 250.0)
        self.assertEqual(p.node.pending, 0)
        self.assertEqual(p.node.failures, 1)

    def test_clientLostWhileSendingFindsItDone(self) -> None:
        """
        A client connection that fails within the write of the response
        (as a TLS connection can) finds the exchange done, as it did when
        the write came after the bookkeeping: the try still counts as a
        success, the upstream connection goes back to the pool, and the
        request is recorded once, with its status.
        """
        p = Pooled()
        p.proto.dataReceived(REQUEST)
        send = p.proto._send

        def failing(data: bytes) -> None:
            send(data)
            p.proto.connectionLost()

        p.proto._send = failing
        p.up.dataReceived(RESPONSE)
        after = p.state()
        self.assertEqual(after["successes"], 2)
        self.assertEqual(after["pending"], 0)
        self.assertEqual(after["idle"], 1)
        self.assertEqual(after["recorded"], 2)
        self.assertEqual(sum(p.client.stats.methods), 2)
        self.assertEqual(p.h.metrics._errors, {})
