"""
The resilience features of the HTTP router, through the same wiring as a
running proxy (C{buildServices}) but on a memory network and a fake clock
(L{tests.memory_support}): retries and what may be retried, the retry
budget, per-try, total and connect timeouts, failure accrual with ejection
and probing, deadlines, admission limits and per-request rules overrides.
Upstreams fail in scripted ways; a raw client sees every byte; time passes
only when a test says so, so timeouts are pinned to the instant.

Most tests balance with C{roundRobin} and turn failure accrual off, so that
which instance a request and its retry go to is decided, and the count of
tries each instance saw is exact; the tests of the default balancer say so.

What only sockets show (a reset in the middle of a response) stays in
L{tests.test_resilience_integration}.
"""

from twisted.trial.unittest import SynchronousTestCase

from tests.memory_support import (
    Instance,
    MemoryNetwork,
    MemoryProxy,
    backends,
    delayedHandler,
    sample,
)
from tests.resilience_support import holdHandler, resetHandler, resilienceConfig, statusHandler
from tests.support import okHandler

#: Round robin: a retry goes to the next instance, deterministically.
ROUND_ROBIN = "{kind: roundRobin}"
#: No failure accrual: a broken instance stays in the set for every request.
NO_ACCRUAL = "{kind: none}"
#: The bound name of the service "hello".
HELLO = "/#/static/hello"


class ResilienceTestCase(SynchronousTestCase):
    """
    Upstreams on a memory network, and a proxy in front of them from the
    resilience config with the router sections a test gives.
    """

    def setUp(self):
        self.network = MemoryNetwork()

    def backends(self, *handlers):
        """
        One upstream per handler.

        @return: a list of C{(factory, port)}.
        """
        return backends(self.network, *handlers)

    def proxy(self, services, **sections):
        """
        @param services: service name → list of upstream ports.
        @param sections: router sections as YAML flow text (see
            L{resilienceConfig}).
        @return: the L{MemoryProxy}; its router "web" is kept on the test.
        """
        proxy = MemoryProxy(self, resilienceConfig(services, **sections), network=self.network)
        self.router = proxy.router("web")
        return proxy

    def answered(self, client, limit=30.0):
        """
        Let time pass until C{client} has a response or lost its
        connection.

        @return: the fake seconds that passed.
        """
        return self.network.runUntil(
            lambda: client.responses or client.closed.called, limit, "an answer"
        )

    def assertAllOk(self, clients, label=None):
        """
        Every client got one whole 200 (from C{label}'s instances when
        given: okHandler bodies start with the label).
        """
        statuses = [c.responses[0].status if c.responses else None for c in clients]
        wrong = [c.raw[:200] for c in clients if not c.responses or c.responses[0].status != 200]
        self.assertEqual(statuses, [200] * len(clients), wrong[:3])
        for c in clients:
            self.assertTrue(c.responses[0].complete)
            if label is not None:
                self.assertTrue(c.responses[0].body.startswith(label))


# -- 1. GETs through a set with one broken instance -----------------------------------------------


class BrokenInstanceGetTests(ResilienceTestCase):
    """
    A set with one broken instance: GETs never see its failures.
    """

    def _getsSucceed(self, brokenHandler, count, reason, classifier="{kind: retryableRead5XX}"):
        (good1, p1), (good2, p2), (broken, pb) = self.backends(
            okHandler(b"good"), okHandler(b"good"), brokenHandler
        )
        proxy = self.proxy(
            {"hello": [p1, p2, pb]},
            classifier=classifier,
            loadBalancer=ROUND_ROBIN,
            failureAccrual=NO_ACCRUAL,
        )
        clients = [proxy.send(path=b"/%d" % (i,)) for i in range(count)]
        self.assertAllOk(clients, b"good")
        # Every GET answered once by a good instance; the broken one was
        # tried (round robin reaches it at least every third request) and
        # each of its failures cost exactly one retry.
        self.assertEqual(len(good1.requests) + len(good2.requests), count)
        self.assertGreaterEqual(len(broken.requests), count // 3)
        retries = proxy.retries()
        self.assertEqual(retries[reason], len(broken.requests))
        self.assertEqual(retries["budget-exhausted"], 0)
        # No time passed: nothing waited for a timer.
        self.assertEqual(self.network.seconds(), 0)

    def test_getsThroughSetWithOne503InstanceAllSucceed(self):
        """
        100 sequential GETs through three instances, one always answering
        503, with classifier retryableRead5XX: all 200.
        """
        self._getsSucceed(statusHandler(503), 100, "status")

    def test_getsThroughSetWithOne500InstanceAllSucceed(self):
        """
        The same with an instance answering 500.
        """
        self._getsSucceed(statusHandler(500, b"Internal Server Error"), 30, "status")

    def test_getsThroughSetWithOneResettingInstanceAllSucceed(self):
        """
        The same with an instance resetting every connection before
        answering: GETs are retried whatever the classifier.
        """
        self._getsSucceed(resetHandler, 100, "reset", classifier="{kind: nonRetryable5XX}")

    def test_getsThroughSetWithOne503InstanceDefaultBalancer(self):
        """
        The same set with only the classifier configured (default balancer,
        peak EWMA, and default failure accrual): 100 GETs all 200.
        """
        (good1, p1), (good2, p2), (broken, pb) = self.backends(
            okHandler(b"good"), okHandler(b"good"), statusHandler(503)
        )
        proxy = self.proxy({"hello": [p1, p2, pb]}, classifier="{kind: retryableRead5XX}")
        clients = [proxy.send(path=b"/%d" % (i,)) for i in range(100)]
        self.assertAllOk(clients, b"good")
        self.assertEqual(len(good1.requests) + len(good2.requests), 100)

    def test_retryGoesToAnotherInstance(self):
        """
        With the default balancer (peak EWMA) and no accrual to take the
        broken instance out, a retry never goes back to the instance that
        failed the request while another is eligible: each GET reaches the
        broken instance at most once.
        """
        (good1, p1), (good2, p2), (broken, pb) = self.backends(
            okHandler(b"good"), okHandler(b"good"), statusHandler(503)
        )
        proxy = self.proxy(
            {"hello": [p1, p2, pb]},
            classifier="{kind: retryableRead5XX}",
            failureAccrual=NO_ACCRUAL,
        )
        clients = [proxy.send(path=b"/%d" % (i,)) for i in range(50)]
        self.assertAllOk(clients, b"good")
        urls = [r.url for r in broken.requests]
        self.assertEqual(len(urls), len(set(urls)))
        self.assertGreater(len(urls), 0)
        self.assertEqual(len(good1.requests) + len(good2.requests), 50)


# -- 2. POSTs are not retried ---------------------------------------------------------------------


class PostTests(ResilienceTestCase):
    def test_postsAreNotRetried(self):
        """
        POSTs through the same set: those that hit the broken instance get
        its 503; it saw each of them once, and every POST arrived exactly
        once somewhere.
        """
        (good1, p1), (good2, p2), (broken, pb) = self.backends(
            okHandler(b"good"), okHandler(b"good"), statusHandler(503)
        )
        proxy = self.proxy(
            {"hello": [p1, p2, pb]},
            classifier="{kind: retryableRead5XX}",
            loadBalancer=ROUND_ROBIN,
            failureAccrual=NO_ACCRUAL,
        )
        count = 30
        statuses = []
        for i in range(count):
            c = proxy.send(method=b"POST", body=b"payload %d" % (i,))
            statuses.append(c.responses[0].status)
            if c.responses[0].status == 503:
                self.assertEqual(c.responses[0].body, b"broken")
                self.assertIsNone(c.responses[0].header(b"mesh-err"))
        self.assertEqual(set(statuses), {200, 503})
        self.assertEqual(statuses.count(503), len(broken.requests))
        self.assertEqual(statuses.count(503), count // 3)
        arrivals = good1.requests + good2.requests + broken.requests
        self.assertEqual(len(arrivals), count)
        self.assertEqual(
            sorted(r.body for r in arrivals), sorted(b"payload %d" % (i,) for i in range(count))
        )
        self.assertEqual(sum(proxy.retries().values()), 0)


# -- 3. Idempotency-Key ---------------------------------------------------------------------------


class IdempotencyKeyTests(ResilienceTestCase):
    def _posts(self, idempotencyKey, headers, count=10):
        (good, pg), (broken, pb) = self.backends(okHandler(b"good"), statusHandler(503))
        self.mesh = self.proxy(
            {"hello": [pg, pb]},
            classifier="{kind: retryableIdempotent5XX, idempotencyKey: %s}"
            % ("true" if idempotencyKey else "false",),
            loadBalancer=ROUND_ROBIN,
            failureAccrual=NO_ACCRUAL,
        )
        statuses = []
        for i in range(count):
            hs = [(n, v % (i,) if b"%d" in v else v) for n, v in headers]
            c = self.mesh.send(method=b"POST", headers=hs, body=b"order %d" % (i,))
            statuses.append(c.responses[0].status)
        return good, broken, statuses

    def test_postWithIdempotencyKeyRetriedWhenEnabled(self):
        """
        With classifier.idempotencyKey true (retryableIdempotent5XX), a POST
        carrying an Idempotency-Key is retried like a PUT: all succeed, and
        the good instance saw each body exactly once, key included.
        """
        good, broken, statuses = self._posts(True, [(b"Idempotency-Key", b"key-%d")])
        self.assertEqual(statuses, [200] * 10)
        self.assertEqual(
            sorted(r.body for r in good.requests), sorted(b"order %d" % i for i in range(10))
        )
        self.assertEqual(
            sorted(r.header(b"idempotency-key") for r in good.requests),
            sorted(b"key-%d" % i for i in range(10)),
        )
        self.assertGreaterEqual(len(broken.requests), 5)
        self.assertEqual(self.mesh.retries()["status"], len(broken.requests))

    def test_postWithoutIdempotencyKeyNotRetried(self):
        """
        With the same classifier, a POST without the key is not retried.
        """
        good, broken, statuses = self._posts(True, [])
        self.assertEqual(statuses.count(503), len(broken.requests))
        self.assertGreaterEqual(len(broken.requests), 5)
        self.assertEqual(len(good.requests) + len(broken.requests), 10)

    def test_postWithIdempotencyKeyNotRetriedWhenDisabled(self):
        """
        With classifier.idempotencyKey false, the key changes nothing: the
        POSTs that hit the broken instance get its 503.
        """
        good, broken, statuses = self._posts(False, [(b"Idempotency-Key", b"key-%d")])
        self.assertEqual(statuses.count(503), len(broken.requests))
        self.assertGreaterEqual(len(broken.requests), 5)
        self.assertEqual(len(good.requests) + len(broken.requests), 10)
        self.assertEqual(self.mesh.retries()["status"], 0)


# -- 4. mesh-retryable ----------------------------------------------------------------------------


class MeshRetryableTests(ResilienceTestCase):
    def test_meshRetryableMakesPost5xxRetryable(self):
        """
        An upstream answering 503 with C{mesh-retryable: true} says it did
        nothing: the POST is retried (with its whole body) even under the
        default classifier, nonRetryable5XX.
        """
        (good, pg), (broken, pb) = self.backends(
            okHandler(b"good"), statusHandler(503, extra=b"mesh-retryable: true\r\n")
        )
        proxy = self.proxy({"hello": [pg, pb]}, loadBalancer=ROUND_ROBIN, failureAccrual=NO_ACCRUAL)
        clients = [proxy.send(method=b"POST", body=b"body %d" % (i,) * 50) for i in range(10)]
        self.assertAllOk(clients, b"good")
        self.assertEqual(
            sorted(r.body for r in good.requests), sorted(b"body %d" % (i,) * 50 for i in range(10))
        )
        self.assertGreaterEqual(len(broken.requests), 5)
        self.assertEqual(proxy.retries()["status"], len(broken.requests))

    def test_bodyOverBufferBytesNotReplayed(self):
        """
        A body larger than retries.bufferBytes is not kept, so a POST that
        sent it is not replayed even when the upstream says it may be; a
        body within the limit is (here on the only instance, up to
        maxRetries).
        """
        [(broken, pb)] = self.backends(statusHandler(503, extra=b"mesh-retryable: true\r\n"))
        proxy = self.proxy({"hello": [pb]}, retries="{bufferBytes: 100}", failureAccrual=NO_ACCRUAL)
        c = proxy.send(method=b"POST", body=b"x" * 101)
        self.assertEqual(c.responses[0].status, 503)
        self.assertEqual([len(r.body) for r in broken.requests], [101])
        c = proxy.send(method=b"POST", body=b"y" * 100)
        self.assertEqual(c.responses[0].status, 503)
        self.assertEqual([len(r.body) for r in broken.requests], [101, 100, 100, 100, 100])

    def test_meshRetryableFalseChangesNothing(self):
        """
        C{mesh-retryable: false} (or any other value) leaves the POST's 503
        as the answer.
        """
        [(broken, pb)] = self.backends(statusHandler(503, extra=b"mesh-retryable: false\r\n"))
        proxy = self.proxy({"hello": [pb]}, failureAccrual=NO_ACCRUAL)
        c = proxy.send(method=b"POST", body=b"x")
        self.assertEqual(c.responses[0].status, 503)
        self.assertEqual(len(broken.requests), 1)


# -- 5. Connection refused ------------------------------------------------------------------------


class RefusedTests(ResilienceTestCase):
    def test_refusedConnectionRetriedForPost(self):
        """
        An instance on a closed port refuses the connection: the POST never
        left, so it is retried on the live instance, which sees each POST
        exactly once.
        """
        dead = self.network.unusedPort()
        [(live, pl)] = self.backends(okHandler(b"live"))
        proxy = self.proxy(
            {"hello": [dead, pl]}, loadBalancer=ROUND_ROBIN, failureAccrual=NO_ACCRUAL
        )
        clients = [proxy.send(method=b"POST", body=b"post %d" % (i,)) for i in range(20)]
        self.assertAllOk(clients, b"live")
        self.assertEqual(
            sorted(r.body for r in live.requests), sorted(b"post %d" % i for i in range(20))
        )
        deadState = proxy.endpointState(HELLO, dead)
        self.assertGreaterEqual(deadState["failures"], 10)
        self.assertEqual(proxy.retries()["connect"], deadState["failures"])
        refused = [a for a in self.network.attempts if a.port == dead]
        self.assertEqual({a.state for a in refused}, {"refused"})
        self.assertEqual(len(refused), deadState["failures"])

    def test_refusedConnectionRetriedForPostDefaultBalancer(self):
        """
        The same with the default balancer and failure accrual: a refused
        connection is answered fast, so the dead instance looks cheap, but
        the POSTs still all succeed via the live instance.
        """
        dead = self.network.unusedPort()
        [(live, pl)] = self.backends(okHandler(b"live"))
        proxy = self.proxy({"hello": [dead, pl]})
        clients = [proxy.send(method=b"POST", body=b"post %d" % (i,)) for i in range(20)]
        self.assertAllOk(clients, b"live")
        self.assertEqual(len(live.requests), 20)


# -- 6. Hung instances and timeouts ---------------------------------------------------------------


class TimeoutTests(ResilienceTestCase):
    def test_hungOnlyInstanceIs504WithinTotal(self):
        """
        The only instance never answers: 504 mesh-err timeout when the
        total timeout passes, not before.
        """
        held = []
        [(hung, ph)] = self.backends(holdHandler(held))
        proxy = self.proxy({"hello": [ph]}, timeouts="{total: 500ms}")
        c = proxy.send()
        self.network.advance(0.499)
        self.assertEqual(c.responses, [])
        self.assertEqual(len(held), 1)
        self.network.advance(0.001)
        self.assertEqual(c.responses[0].status, 504)
        self.assertEqual(c.responses[0].header(b"mesh-err"), b"timeout")
        self.assertEqual(len(held), 1)
        # The upstream connection of the abandoned try is closed.
        self.assertEqual(hung.connections, [])

    def test_perTryTimeoutRetriesGetOnOtherInstance(self):
        """
        With perTry set and two instances, one hung: GETs sent to the hung
        one are retried on the good one once the per-try timeout passes,
        well within the total.
        """
        held = []
        (hung, ph), (good, pg) = self.backends(holdHandler(held), okHandler(b"good"))
        proxy = self.proxy(
            {"hello": [ph, pg]},
            timeouts="{total: 1s, perTry: 100ms}",
            loadBalancer=ROUND_ROBIN,
            failureAccrual=NO_ACCRUAL,
        )
        clients = []
        for i in range(6):
            before = len(held)
            c = proxy.send(path=b"/%d" % (i,))
            seconds = self.answered(c)
            # Exactly the per-try timeout when the hung instance was tried
            # first, no time at all otherwise.
            self.assertAlmostEqual(seconds, 0.1 if len(held) > before else 0.0, places=9)
            clients.append(c)
        self.assertAllOk(clients, b"good")
        self.assertGreaterEqual(len(held), 3)
        self.assertEqual(proxy.retries()["timeout"], len(held))

    def test_perTryTimeoutOnOnlyInstanceEndsWithin504(self):
        """
        With perTry set and only a hung instance, a GET is tried again
        after each per-try timeout (maxRetries 3) and answered 504 before
        the total timeout: at the end of the fourth try.
        """
        held = []
        [(hung, ph)] = self.backends(holdHandler(held))
        proxy = self.proxy(
            {"hello": [ph]}, timeouts="{total: 1s, perTry: 100ms}", failureAccrual=NO_ACCRUAL
        )
        c = proxy.send()
        seconds = self.answered(c)
        self.assertEqual(c.responses[0].status, 504)
        self.assertEqual(len(held), 4)
        self.assertAlmostEqual(seconds, 0.4, places=9)

    def test_perTryTimeoutDoesNotRetryPost(self):
        """
        A POST whose try times out is not retried (the upstream may be
        acting on it): 504 at the per-try timeout, one arrival.
        """
        held = []
        [(hung, ph)] = self.backends(holdHandler(held))
        proxy = self.proxy(
            {"hello": [ph]}, timeouts="{total: 1s, perTry: 100ms}", failureAccrual=NO_ACCRUAL
        )
        c = proxy.send(method=b"POST", body=b"once")
        seconds = self.answered(c)
        self.assertEqual(c.responses[0].status, 504)
        self.assertEqual(len(hung.requests), 1)
        self.assertAlmostEqual(seconds, 0.1, places=9)


# -- 7. Retry budget ------------------------------------------------------------------------------


class BudgetTests(ResilienceTestCase):
    def test_emptyBudgetMeansNoRetries(self):
        """
        With budget percent 0 and minPerSecond 0, a retryable 503 is the
        answer, and each refused retry is counted as budget-exhausted.
        """
        (good, pg), (broken, pb) = self.backends(okHandler(b"good"), statusHandler(503))
        proxy = self.proxy(
            {"hello": [pg, pb]},
            classifier="{kind: retryableRead5XX}",
            retries="{budget: {percent: 0, minPerSecond: 0}}",
            loadBalancer=ROUND_ROBIN,
            failureAccrual=NO_ACCRUAL,
        )
        statuses = [proxy.send().responses[0].status for i in range(10)]
        self.assertEqual(statuses.count(503), 5)
        self.assertEqual(len(broken.requests), 5)
        self.assertEqual(len(good.requests), 5)
        retries = proxy.retries()
        self.assertEqual(retries["budget-exhausted"], 5)
        self.assertEqual(retries["status"], 0)

    def test_budgetReserveAllowsRetries(self):
        """
        The control: the default budget lets the same GETs be retried.
        """
        (good, pg), (broken, pb) = self.backends(okHandler(b"good"), statusHandler(503))
        proxy = self.proxy(
            {"hello": [pg, pb]},
            classifier="{kind: retryableRead5XX}",
            loadBalancer=ROUND_ROBIN,
            failureAccrual=NO_ACCRUAL,
        )
        for _ in range(10):
            self.assertEqual(proxy.send().responses[0].status, 200)
        retries = proxy.retries()
        self.assertEqual(retries["budget-exhausted"], 0)
        self.assertEqual(retries["status"], len(broken.requests))
        self.assertGreater(len(broken.requests), 0)


# -- 8. Failure accrual ---------------------------------------------------------------------------


class AccrualTests(ResilienceTestCase):
    def test_killedInstanceEjectedThenRevived(self):
        """
        An instance whose port closes is ejected after the configured
        consecutive failures, gets no traffic while ejected, and once it
        listens again it is probed back to live after the backoff (200ms,
        jittered by up to 20%).
        """
        instances = [Instance(self.network, okHandler(b"i%d" % (i,))) for i in range(3)]
        ports = [instance.start() for instance in instances]
        # Round robin, so that the dead instance keeps being picked.
        proxy = self.proxy(
            {"hello": ports},
            failureAccrual="{kind: consecutiveFailures, failures: 3,"
            " backoffMin: 200ms, backoffMax: 400ms}",
            loadBalancer=ROUND_ROBIN,
        )
        for _ in range(10):
            self.assertEqual(proxy.send().responses[0].status, 200)
        victim = instances[2]
        before = proxy.endpointState(HELLO, victim.port)
        victim.kill()

        def state():
            return proxy.endpointState(HELLO, victim.port)

        # The pooled connections to the killed instance are closed.
        self.assertEqual(state()["connections"]["open"], 0)

        # Requests go on succeeding (a refused connection is retried) until
        # the accrual ejects the dead instance.
        sent = 0
        while state()["state"] == "live":
            self.assertEqual(proxy.send().responses[0].status, 200)
            sent += 1
            self.assertLess(sent, 20, ("never ejected", self.router.state()))
        ejectedAt = self.network.seconds()
        ejected = state()
        self.assertEqual(ejected["state"], "ejected")
        self.assertEqual(ejected["failures"], before["failures"] + 3)
        self.assertEqual(ejected["consecutiveFailures"], 3)
        # The first ejection lasts backoffMin, jittered by up to 20%.
        self.assertGreaterEqual(ejected["ejectedUntil"] - ejectedAt, 0.2)
        self.assertLessEqual(ejected["ejectedUntil"] - ejectedAt, 0.24)

        # While the ejection lasts, the instance is not tried at all.
        for _ in range(10):
            s1 = state()
            self.assertEqual(proxy.send().responses[0].status, 200)
            s2 = state()
            self.assertEqual((s1["state"], s2["state"]), ("ejected", "ejected"))
            self.assertEqual(s2["ejectedUntil"], s1["ejectedUntil"])
            self.assertEqual(s2["requests"], s1["requests"])

        samples = proxy.scrape()
        self.assertEqual(
            sample(samples, "meshproxy_endpoint_events_total", router="web", event="ejected"), 1
        )

        # Back on the same port: the probe after the backoff revives it.
        victim.start()
        arrived = len(victim.requests)
        for _ in range(400):
            self.assertEqual(proxy.send().responses[0].status, 200)
            if state()["state"] == "live":
                break
            self.network.advance(0.01)
        self.assertEqual(state()["state"], "live")
        self.assertGreater(len(victim.requests), arrived)
        # Not before the ejection is over; then within a round of round
        # robin (three requests, 10ms apart) of its end.
        self.assertGreaterEqual(self.network.seconds(), ejected["ejectedUntil"])
        self.assertLessEqual(self.network.seconds(), ejected["ejectedUntil"] + 0.03 + 1e-9)
        admin = proxy.adminState()
        bound = admin["routers"]["web"]["boundNames"][HELLO]
        self.assertEqual(bound["resolution"], "bound")
        self.assertEqual([e["state"] for e in bound["endpoints"]], ["live"] * 3)
        samples = proxy.scrape()
        self.assertEqual(
            sample(samples, "meshproxy_endpoint_events_total", router="web", event="revived"), 1
        )


# -- 9. Deadlines ---------------------------------------------------------------------------------


class DeadlineTests(ResilienceTestCase):
    def assertDeadline(self, seen, expected):
        """
        The request C{seen} upstream carried one C{mesh-ctx-deadline}, of
        C{expected} epoch milliseconds (to the millisecond below, as
        fractions are cut).
        """
        values = [v for n, v in seen.headers if n.lower() == b"mesh-ctx-deadline"]
        self.assertEqual(len(values), 1, values)
        self.assertIn(int(values[0]), (expected - 1, expected))

    def test_upstreamSeesDeadlineWithinTotal(self):
        """
        The upstream receives mesh-ctx-deadline, epoch milliseconds, the
        total timeout from now.
        """
        [(backend, pb)] = self.backends(okHandler())
        proxy = self.proxy({"hello": [pb]}, timeouts="{total: 2s}")
        self.network.advance(1.5)
        c = proxy.send()
        self.assertEqual(c.responses[0].status, 200)
        [seen] = backend.requests
        self.assertDeadline(seen, proxy.wallMs() + 2000)

    def test_trustedExpiredDeadlineIs504(self):
        """
        A trusted caller whose deadline has passed gets 504 deadline-expired
        at once; the upstream sees nothing, not even a connection.
        """
        [(backend, pb)] = self.backends(okHandler())
        proxy = self.proxy({"hello": [pb]}, trust='{callers: ["127.0.0.0/8"]}')
        c = proxy.send(headers=[(b"mesh-ctx-deadline", b"%d" % (proxy.wallMs() - 1000,))])
        self.assertEqual(c.responses[0].status, 504)
        self.assertEqual(c.responses[0].header(b"mesh-err"), b"deadline-expired")
        self.network.advance(0.05)
        self.assertEqual(backend.requests, [])
        self.assertEqual(backend.connections, [])
        self.assertEqual([a for a in self.network.attempts if a.port == pb], [])

    def test_trustedDeadlineShortensTotal(self):
        """
        A trusted caller's deadline shorter than the total timeout bounds
        the request, and is what the upstream is told.
        """
        held = []
        [(hung, ph)] = self.backends(holdHandler(held))
        proxy = self.proxy(
            {"hello": [ph]}, trust='{callers: ["127.0.0.0/8"]}', timeouts="{total: 5s}"
        )
        deadline = proxy.wallMs() + 300
        c = proxy.send(headers=[(b"mesh-ctx-deadline", b"%d" % (deadline,))])
        seconds = self.answered(c)
        self.assertEqual(c.responses[0].status, 504)
        self.assertAlmostEqual(seconds, 0.3, places=6)
        [seen] = hung.requests
        self.assertDeadline(seen, deadline)

    def test_untrustedDeadlineIgnoredAndReplaced(self):
        """
        An untrusted caller's expired deadline is ignored: the request is
        answered, and the upstream sees the proxy's own deadline instead.
        """
        [(backend, pb)] = self.backends(okHandler())
        proxy = self.proxy({"hello": [pb]}, timeouts="{total: 2s}")
        old = b"%d" % (proxy.wallMs() - 1000,)
        c = proxy.send(headers=[(b"mesh-ctx-deadline", old)])
        self.assertEqual(c.responses[0].status, 200)
        [seen] = backend.requests
        self.assertDeadline(seen, proxy.wallMs() + 2000)

    def test_deadlineIgnoredWhenTrustDeadlineOff(self):
        """
        With trust.deadline false, even a trusted caller's deadline is
        ignored and replaced (by the default total, 10s).
        """
        [(backend, pb)] = self.backends(okHandler())
        proxy = self.proxy({"hello": [pb]}, trust='{callers: ["127.0.0.0/8"], deadline: false}')
        c = proxy.send(headers=[(b"mesh-ctx-deadline", b"%d" % (proxy.wallMs() - 1000,))])
        self.assertEqual(c.responses[0].status, 200)
        [seen] = backend.requests
        self.assertDeadline(seen, proxy.wallMs() + 10000)

    def test_malformedTrustedDeadlineIgnored(self):
        """
        A trusted caller's deadline that is not epoch milliseconds is
        ignored (not an error) and replaced.
        """
        [(backend, pb)] = self.backends(okHandler())
        proxy = self.proxy({"hello": [pb]}, trust='{callers: ["127.0.0.0/8"]}')
        for bad in (b"-5", b"soon", b"1e12", b"9" * 40):
            c = proxy.send(headers=[(b"mesh-ctx-deadline", bad)])
            self.assertEqual(c.responses[0].status, 200, bad)
        self.assertEqual(len(backend.requests), 4)
        for seen in backend.requests:
            self.assertDeadline(seen, proxy.wallMs() + 10000)


# -- 10. Limits -----------------------------------------------------------------------------------


class LimitsTests(ResilienceTestCase):
    def _heldProxy(self, **sections):
        held = []

        def handler(proto, request):
            if request.url.startswith(b"/hold"):
                held.append(proto)
            else:
                okHandler()(proto, request)

        [(backend, pb)] = self.backends(handler)
        [(other, po)] = self.backends(okHandler(b"other"))
        proxy = self.proxy({"hello": [pb], "other": [po]}, limits="{maxConcurrent: 1}", **sections)
        return proxy, held

    def test_secondConcurrentRequestOverloaded(self):
        """
        With maxConcurrent 1 and one request held upstream, a second
        request gets 503 overloaded at once; after the first is answered
        the next is admitted.
        """
        proxy, held = self._heldProxy()
        first = proxy.connect()
        first.transport.write(b"GET /hold HTTP/1.1\r\nHost: hello\r\n\r\n")
        self.network.flush()
        self.assertEqual(len(held), 1)
        second = proxy.send()
        self.assertEqual(second.responses[0].status, 503)
        self.assertEqual(second.responses[0].header(b"mesh-err"), b"overloaded")
        self.assertEqual(first.responses, [])
        # Limits are per bound name: another service is not affected.
        other = proxy.send(host=b"other")
        self.assertEqual(other.responses[0].status, 200)
        held[0].transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\ndone")
        self.network.flush()
        self.assertEqual(first.responses[0].body, b"done")
        third = proxy.send()
        self.assertEqual(third.responses[0].status, 200)
        limits = proxy.limits(HELLO)
        self.assertEqual((limits["active"], limits["rejected"]), (0, 1))

    def test_limitReleasedWhenClientGoesAway(self):
        """
        A held request whose client disconnects gives its place back.
        """
        proxy, held = self._heldProxy()
        first = proxy.connect()
        first.transport.write(b"GET /hold HTTP/1.1\r\nHost: hello\r\n\r\n")
        self.network.flush()
        self.assertEqual(len(held), 1)
        self.assertEqual(proxy.limits(HELLO)["active"], 1)
        first.transport.abortConnection()
        self.network.flush()
        self.assertTrue(first.closed.called)
        self.assertEqual(proxy.limits(HELLO)["active"], 0)
        second = proxy.send()
        self.assertEqual(second.responses[0].status, 200)

    def test_limitReleasedAfterTimeout(self):
        """
        A held request answered 504 by the total timeout gives its place
        back.
        """
        proxy, held = self._heldProxy(timeouts="{total: 200ms}")
        first = proxy.send(path=b"/hold")
        seconds = self.answered(first)
        self.assertEqual(first.responses[0].status, 504)
        self.assertAlmostEqual(seconds, 0.2, places=9)
        second = proxy.send()
        self.assertEqual(second.responses[0].status, 200)


# -- 11. Per-request rules overrides --------------------------------------------------------------


class OverrideTests(ResilienceTestCase):
    def _proxy(self, trust):
        (hello, ph), (other, po) = self.backends(okHandler(b"hello"), okHandler(b"other"))
        self.hello, self.other = hello, other
        return self.proxy({"hello": [ph], "other": [po]}, trust=trust)

    def test_trustedOverrideReroutesOneRequest(self):
        """
        A trusted caller's mesh-dtab reroutes that request only; the
        upstream sees the override as mesh-ctx-dtab and not the mesh-dtab
        header itself.
        """
        proxy = self._proxy('{callers: ["127.0.0.0/8"]}')
        c = proxy.send(headers=[(b"mesh-dtab", b"/svc/hello => /#/static/other")])
        self.assertEqual(c.responses[0].body, b"other /")
        [seen] = self.other.requests
        self.assertEqual(seen.header(b"mesh-ctx-dtab"), b"/svc/hello=>/#/static/other")
        self.assertIsNone(seen.header(b"mesh-dtab"))
        c = proxy.send()
        self.assertEqual(c.responses[0].body, b"hello /")
        [seen] = self.hello.requests
        self.assertIsNone(seen.header(b"mesh-ctx-dtab"))

    def test_trustedContextDtabHonoured(self):
        """
        The context a previous hop passes on (mesh-ctx-dtab) is honoured
        from a trusted caller too, and passed on.
        """
        proxy = self._proxy('{callers: ["127.0.0.0/8"]}')
        c = proxy.send(headers=[(b"mesh-ctx-dtab", b"/svc/hello=>/#/static/other")])
        self.assertEqual(c.responses[0].body, b"other /")
        [seen] = self.other.requests
        self.assertEqual(seen.header(b"mesh-ctx-dtab"), b"/svc/hello=>/#/static/other")

    def test_untrustedOverrideIgnoredAndStripped(self):
        """
        With trust.callers empty, mesh-dtab and mesh-ctx-dtab are ignored
        and not forwarded.
        """
        proxy = self._proxy("{callers: []}")
        c = proxy.send(
            headers=[
                (b"mesh-dtab", b"/svc/hello => /#/static/other"),
                (b"mesh-ctx-dtab", b"/svc/hello => /#/static/other"),
            ],
        )
        self.assertEqual(c.responses[0].body, b"hello /")
        self.assertEqual(self.other.requests, [])
        [seen] = self.hello.requests
        self.assertIsNone(seen.header(b"mesh-dtab"))
        self.assertIsNone(seen.header(b"mesh-ctx-dtab"))
        self.assertEqual(
            sample(
                proxy.scrape(),
                "meshproxy_errors_total",
                router="web",
                reason="dtab-override-untrusted",
            ),
            1,
        )

    def test_untrustedPeerAddressIgnored(self):
        """
        With trust.callers set, a caller from another address is not
        trusted: its mesh-dtab is ignored and not forwarded.
        """
        proxy = self._proxy('{callers: ["127.0.0.0/8"]}')
        client = proxy.connect(peerHost="10.1.2.3")
        client.transport.write(
            b"GET / HTTP/1.1\r\nHost: hello\r\nmesh-dtab: /svc/hello => /#/static/other\r\n\r\n"
        )
        self.network.flush()
        self.assertEqual(client.responses[0].body, b"hello /")
        self.assertEqual(self.other.requests, [])
        [seen] = self.hello.requests
        self.assertIsNone(seen.header(b"mesh-dtab"))
        self.assertEqual(seen.header(b"x-forwarded-for"), b"10.1.2.3")

    def test_malformedTrustedOverrideIs400(self):
        """
        A trusted caller's override that does not parse, or names a namer
        the router does not have, gets 400 bad-dtab; nothing is forwarded.
        """
        proxy = self._proxy('{callers: ["127.0.0.0/8"]}')
        for bad in (b"/svc/hello =>", b"not a dtab", b"/svc/hello => /#/nosuch/x"):
            c = proxy.send(headers=[(b"mesh-dtab", bad)])
            self.assertEqual(c.responses[0].status, 400, bad)
            self.assertEqual(c.responses[0].header(b"mesh-err"), b"bad-dtab", bad)
        self.assertEqual(self.hello.requests + self.other.requests, [])

    def test_dtabPrefixesRestrictOverrides(self):
        """
        With trust.dtabPrefixes, a trusted override may only rewrite names
        under those prefixes: a broader or other prefix gets 400 bad-dtab.
        """
        proxy = self._proxy('{callers: ["127.0.0.0/8"], dtabPrefixes: [/svc/hello]}')
        c = proxy.send(headers=[(b"mesh-dtab", b"/svc/hello => /#/static/other")])
        self.assertEqual(c.responses[0].body, b"other /")
        for bad in (b"/svc => /#/static", b"/svc/other => /#/static/hello", b"/ => /#/static"):
            c = proxy.send(headers=[(b"mesh-dtab", bad)])
            self.assertEqual(c.responses[0].status, 400, bad)
            self.assertEqual(c.responses[0].header(b"mesh-err"), b"bad-dtab", bad)
        self.assertEqual(len(self.other.requests), 1)
        self.assertEqual(self.hello.requests, [])


# -- Connections that neither succeed nor fail ----------------------------------------------------


def _closingHandler(proto, request):
    """
    Answer 200 and close: every request needs a new upstream connection.
    """
    proto.transport.write(
        b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nConnection: close\r\n\r\ngood"
    )
    proto.transport.loseConnection()


class ConnectTimeoutTests(ResilienceTestCase):
    """
    An instance whose connections hang in the connect (a
    L{blackhole<tests.memory_support.MemoryNetwork.blackhole>}).
    """

    def setUp(self):
        ResilienceTestCase.setUp(self)
        self.hole = self.network.unusedPort()
        self.network.blackhole(self.hole)

    def pool(self, port):
        """
        The proxy's connection pool to 127.0.0.1:C{port} of "hello".
        """
        client = [c for c in self.router.clients if c.name == HELLO][0]
        [node] = [n for n in client.balancer.nodes() if n.endpoint.port == port]
        return node.payload

    def holeAttempts(self):
        return [a for a in self.network.attempts if a.port == self.hole]

    def test_connectTimeoutRetriedForPost(self):
        """
        A connection that cannot be made within timeouts.connect never
        carried the request: a POST is retried on the other instance, after
        exactly the connect timeout.
        """
        [(good, pg)] = self.backends(okHandler(b"good"))
        proxy = self.proxy(
            {"hello": [self.hole, pg]},
            timeouts="{total: 2s, connect: 100ms}",
            loadBalancer=ROUND_ROBIN,
            failureAccrual=NO_ACCRUAL,
        )
        clients, slow = [], 0
        for i in range(4):
            c = proxy.send(method=b"POST", body=b"post %d" % (i,))
            seconds = self.answered(c)
            self.assertIn(round(seconds, 9), (0.0, 0.1))
            if seconds:
                slow += 1
            clients.append(c)
        self.assertAllOk(clients, b"good")
        self.assertEqual(sorted(r.body for r in good.requests), [b"post %d" % i for i in range(4)])
        failures = proxy.endpointState(HELLO, self.hole)["failures"]
        self.assertGreaterEqual(failures, 2)
        self.assertEqual(slow, failures)
        self.assertEqual(proxy.retries()["connect"], failures)
        attempts = self.holeAttempts()
        self.assertEqual([a.state for a in attempts], ["timed out"] * failures)
        self.assertEqual({a.timeout for a in attempts}, {0.1})

    def test_maxPendingRefusesWhileConnecting(self):
        """
        With limits.maxPending 1, a request waiting for a new connection
        takes the one place: another gets 503 overloaded at once; the place
        comes back when the wait ends (here in a connect timeout, 502).
        """
        proxy = self.proxy(
            {"hello": [self.hole]},
            timeouts="{total: 2s, connect: 300ms}",
            limits="{maxPending: 1}",
            failureAccrual=NO_ACCRUAL,
        )
        first = proxy.connect()
        first.transport.write(b"GET / HTTP/1.1\r\nHost: hello\r\n\r\n")
        self.network.flush()
        self.assertEqual(proxy.limits(HELLO)["pending"], 1)
        second = proxy.send()
        self.assertEqual(second.responses[0].status, 503)
        self.assertEqual(second.responses[0].header(b"mesh-err"), b"overloaded")
        self.assertEqual(first.responses, [])
        self.answered(first)
        self.assertEqual(first.responses[0].status, 502)
        self.assertEqual(first.responses[0].header(b"mesh-err"), b"upstream-connect")
        self.assertEqual(proxy.limits(HELLO)["pending"], 0)
        self.assertEqual({a.state for a in self.holeAttempts()}, {"timed out"})

    def test_perTryTimeoutWhileConnectingReleasesPendingPlace(self):
        """
        A try whose per-try timeout passes while it waits for a connection
        gives back its maxPending place: retries elsewhere are admitted,
        and once every request is answered none is counted as waiting.
        """
        [(good, pg)] = self.backends(_closingHandler)
        proxy = self.proxy(
            {"hello": [self.hole, pg]},
            timeouts="{total: 2s, perTry: 100ms, connect: 300ms}",
            limits="{maxPending: 2}",
            loadBalancer=ROUND_ROBIN,
            failureAccrual=NO_ACCRUAL,
        )
        clients = []
        for i in range(6):
            c = proxy.send(path=b"/%d" % (i,))
            self.answered(c)
            clients.append(c)
        self.assertAllOk(clients, b"good")
        pool = self.pool(self.hole)
        self.assertEqual(pool.connecting, 0)
        self.assertEqual(proxy.limits(HELLO)["pending"], 0)
        # Each abandoned try called its connect off.
        attempts = self.holeAttempts()
        self.assertGreater(len(attempts), 0)
        self.assertEqual({a.state for a in attempts}, {"cancelled"})

    def test_abandonedConnectDoesNotDisturbRetry(self):
        """
        The connect of a try abandoned at its per-try timeout ends after
        the retry started on another instance: that end belongs to the
        abandoned try, not to the retry, which is answered normally and is
        not charged a failure.
        """
        slow = delayedHandler(self.network, 0.15, b"good")
        [(good, pg)] = self.backends(slow)
        proxy = self.proxy(
            {"hello": [self.hole, pg]},
            timeouts="{total: 3s, perTry: 200ms, connect: 300ms}",
            loadBalancer=ROUND_ROBIN,
            failureAccrual=NO_ACCRUAL,
        )
        clients = []
        for i in range(2):
            c = proxy.send(path=b"/%d" % (i,))
            self.answered(c)
            clients.append(c)
        self.assertAllOk(clients, b"good")
        self.assertEqual(self.pool(self.hole).connecting, 0)
        self.assertEqual(proxy.endpointState(HELLO, pg)["failures"], 0)
        self.assertEqual(sorted(r.url for r in good.requests), [b"/0", b"/1"])
        retries = proxy.retries()
        # Each request that met the hole first was retried once for its
        # per-try timeout; the abandoned connects count for nothing.
        holeTries = len(self.holeAttempts())
        self.assertIn(holeTries, (1, 2))
        self.assertEqual(retries["timeout"], holeTries)
        self.assertEqual(retries["connect"], 0)
        # The hole is charged its timed-out tries, not the connects called
        # off after them.
        self.assertEqual(proxy.endpointState(HELLO, self.hole)["failures"], holeTries)
        self.assertEqual({a.state for a in self.holeAttempts()}, {"cancelled"})


# -- 12. Resets before a response -----------------------------------------------------------------


class ResetTests(ResilienceTestCase):
    def test_getResetBeforeResponseRetriedOnOtherInstance(self):
        """
        A GET whose upstream resets a fresh connection before any response
        byte is retried on another instance.
        """
        (resetting, pr), (good, pg) = self.backends(resetHandler, okHandler(b"good"))
        proxy = self.proxy({"hello": [pr, pg]}, loadBalancer=ROUND_ROBIN, failureAccrual=NO_ACCRUAL)
        clients = [proxy.send(path=b"/%d" % (i,)) for i in range(10)]
        self.assertAllOk(clients, b"good")
        self.assertGreaterEqual(len(resetting.requests), 5)
        self.assertEqual(len(good.requests), 10)
        self.assertEqual(proxy.retries()["reset"], len(resetting.requests))

    def test_postResetBeforeResponseNotRetried(self):
        """
        A POST whose upstream resets after reading it may have been acted
        on: 502 upstream-reset, sent once.
        """
        [(resetting, pr)] = self.backends(resetHandler)
        proxy = self.proxy({"hello": [pr]}, failureAccrual=NO_ACCRUAL)
        c = proxy.send(method=b"POST", body=b"once")
        self.assertEqual(c.responses[0].status, 502)
        self.assertEqual(c.responses[0].header(b"mesh-err"), b"upstream-reset")
        self.assertEqual(len(resetting.requests), 1)
