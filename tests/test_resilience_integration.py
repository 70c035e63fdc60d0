"""
The resilience features of the HTTP router end to end on loopback: retries
and what may be retried, the retry budget, per-try and total timeouts,
failure accrual with ejection and probing, deadlines, admission limits and
per-request rules overrides, with a real proxy, real upstream servers that
fail in scripted ways, and a raw client that sees every byte.

Most tests balance with C{roundRobin} and turn failure accrual off, so that
which instance a request and its retry go to is decided, and the count of
tries each instance saw is exact; the tests of the default balancer say so.
"""

from twisted.internet import defer
from twisted.trial.unittest import TestCase

from tests.resilience_support import (
    Instance,
    adminState,
    backends,
    blackhole,
    cancelDelayed,
    closedPort,
    delayedHandler,
    endpointState,
    epochMs,
    holdHandler,
    resetHandler,
    resilienceConfig,
    sample,
    scrape,
    send,
    statusHandler,
    tick,
    waitUntil,
)
from tests.support import connectClient, okHandler, startProxy

#: Round robin: a retry goes to the next instance, deterministically.
ROUND_ROBIN = "{kind: roundRobin}"
#: No failure accrual: a broken instance stays in the set for every request.
NO_ACCRUAL = "{kind: none}"
#: The bound name of the service "hello".
HELLO = "/#/static/hello"


class ResilienceTestCase(TestCase):
    """
    Starts a proxy from the resilience config with the router sections a
    test gives.
    """

    timeout = 20

    @defer.inlineCallbacks
    def proxy(self, services, **sections):
        """
        @param services: service name → list of upstream ports.
        @param sections: router sections as YAML flow text (see
            L{resilienceConfig}).
        @return: a Deferred firing with the proxy's port; the admin port,
            runtime and router "web" are kept on the test.
        """
        config = resilienceConfig(services, **sections)
        port, adminPort, runtime = yield startProxy(self, None, config=config)
        self.adminPort = adminPort
        self.runtime = runtime
        self.router = runtime.routers["web"]
        return port

    @defer.inlineCallbacks
    def retries(self):
        """
        The router's C{meshproxy_retries_total} by reason, from C{/metrics}.
        """
        samples = yield scrape(self, self.adminPort)
        return {
            reason: sample(samples, "meshproxy_retries_total", router="web", reason=reason)
            for reason in ("connect", "reset", "status", "timeout", "budget-exhausted")
        }

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

    @defer.inlineCallbacks
    def _getsSucceed(self, brokenHandler, count, reason, classifier="{kind: retryableRead5XX}"):
        (good1, p1), (good2, p2), (broken, pb) = yield backends(
            self, okHandler(b"good"), okHandler(b"good"), brokenHandler
        )
        port = yield self.proxy(
            {"hello": [p1, p2, pb]},
            classifier=classifier,
            loadBalancer=ROUND_ROBIN,
            failureAccrual=NO_ACCRUAL,
        )
        clients = []
        for i in range(count):
            c = yield send(self, port, path=b"/%d" % (i,))
            clients.append(c)
        self.assertAllOk(clients, b"good")
        # Every GET answered once by a good instance; the broken one was
        # tried (round robin reaches it at least every third request) and
        # each of its failures cost exactly one retry.
        self.assertEqual(len(good1.requests) + len(good2.requests), count)
        self.assertGreaterEqual(len(broken.requests), count // 3)
        retries = yield self.retries()
        self.assertEqual(retries[reason], len(broken.requests))
        self.assertEqual(retries["budget-exhausted"], 0)

    def test_getsThroughSetWithOne503InstanceAllSucceed(self):
        """
        100 sequential GETs through three instances, one always answering
        503, with classifier retryableRead5XX: all 200.
        """
        return self._getsSucceed(statusHandler(503), 100, "status")

    def test_getsThroughSetWithOne500InstanceAllSucceed(self):
        """
        The same with an instance answering 500.
        """
        return self._getsSucceed(statusHandler(500, b"Internal Server Error"), 30, "status")

    def test_getsThroughSetWithOneResettingInstanceAllSucceed(self):
        """
        The same with an instance resetting every connection before
        answering: GETs are retried whatever the classifier.
        """
        return self._getsSucceed(resetHandler, 100, "reset", classifier="{kind: nonRetryable5XX}")

    @defer.inlineCallbacks
    def test_getsThroughSetWithOne503InstanceDefaultBalancer(self):
        """
        The same set with only the classifier configured (default balancer,
        peak EWMA, and default failure accrual): 100 GETs all 200.
        """
        (good1, p1), (good2, p2), (broken, pb) = yield backends(
            self, okHandler(b"good"), okHandler(b"good"), statusHandler(503)
        )
        port = yield self.proxy({"hello": [p1, p2, pb]}, classifier="{kind: retryableRead5XX}")
        clients = []
        for i in range(100):
            c = yield send(self, port, path=b"/%d" % (i,))
            clients.append(c)
        self.assertAllOk(clients, b"good")

    @defer.inlineCallbacks
    def test_retryGoesToAnotherInstance(self):
        """
        With the default balancer (peak EWMA) and no accrual to take the
        broken instance out, a retry never goes back to the instance that
        failed the request while another is eligible: each GET reaches the
        broken instance at most once.
        """
        (good1, p1), (good2, p2), (broken, pb) = yield backends(
            self, okHandler(b"good"), okHandler(b"good"), statusHandler(503)
        )
        port = yield self.proxy(
            {"hello": [p1, p2, pb]},
            classifier="{kind: retryableRead5XX}",
            failureAccrual=NO_ACCRUAL,
        )
        clients = []
        for i in range(50):
            c = yield send(self, port, path=b"/%d" % (i,))
            clients.append(c)
        self.assertAllOk(clients, b"good")
        urls = [r.url for r in broken.requests]
        self.assertEqual(len(urls), len(set(urls)))
        self.assertGreater(len(urls), 0)
        self.assertEqual(len(good1.requests) + len(good2.requests), 50)


# -- 2. POSTs are not retried ---------------------------------------------------------------------


class PostTests(ResilienceTestCase):
    @defer.inlineCallbacks
    def test_postsAreNotRetried(self):
        """
        POSTs through the same set: those that hit the broken instance get
        its 503; it saw each of them once, and every POST arrived exactly
        once somewhere.
        """
        (good1, p1), (good2, p2), (broken, pb) = yield backends(
            self, okHandler(b"good"), okHandler(b"good"), statusHandler(503)
        )
        port = yield self.proxy(
            {"hello": [p1, p2, pb]},
            classifier="{kind: retryableRead5XX}",
            loadBalancer=ROUND_ROBIN,
            failureAccrual=NO_ACCRUAL,
        )
        count = 30
        statuses = []
        for i in range(count):
            c = yield send(self, port, method=b"POST", body=b"payload %d" % (i,))
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
        retries = yield self.retries()
        self.assertEqual(sum(retries.values()), 0)


# -- 3. Idempotency-Key ---------------------------------------------------------------------------


class IdempotencyKeyTests(ResilienceTestCase):
    @defer.inlineCallbacks
    def _posts(self, idempotencyKey, headers, count=10):
        (good, pg), (broken, pb) = yield backends(self, okHandler(b"good"), statusHandler(503))
        port = yield self.proxy(
            {"hello": [pg, pb]},
            classifier="{kind: retryableIdempotent5XX, idempotencyKey: %s}"
            % ("true" if idempotencyKey else "false",),
            loadBalancer=ROUND_ROBIN,
            failureAccrual=NO_ACCRUAL,
        )
        statuses = []
        for i in range(count):
            hs = [(n, v % (i,) if b"%d" in v else v) for n, v in headers]
            c = yield send(self, port, method=b"POST", headers=hs, body=b"order %d" % (i,))
            statuses.append(c.responses[0].status)
        return good, broken, statuses

    @defer.inlineCallbacks
    def test_postWithIdempotencyKeyRetriedWhenEnabled(self):
        """
        With classifier.idempotencyKey true (retryableIdempotent5XX), a POST
        carrying an Idempotency-Key is retried like a PUT: all succeed, and
        the good instance saw each body exactly once, key included.
        """
        good, broken, statuses = yield self._posts(True, [(b"Idempotency-Key", b"key-%d")])
        self.assertEqual(statuses, [200] * 10)
        self.assertEqual(
            sorted(r.body for r in good.requests), sorted(b"order %d" % i for i in range(10))
        )
        self.assertEqual(
            sorted(r.header(b"idempotency-key") for r in good.requests),
            sorted(b"key-%d" % i for i in range(10)),
        )
        self.assertGreaterEqual(len(broken.requests), 5)
        retries = yield self.retries()
        self.assertEqual(retries["status"], len(broken.requests))

    @defer.inlineCallbacks
    def test_postWithoutIdempotencyKeyNotRetried(self):
        """
        With the same classifier, a POST without the key is not retried.
        """
        good, broken, statuses = yield self._posts(True, [])
        self.assertEqual(statuses.count(503), len(broken.requests))
        self.assertGreaterEqual(len(broken.requests), 5)
        self.assertEqual(len(good.requests) + len(broken.requests), 10)

    @defer.inlineCallbacks
    def test_postWithIdempotencyKeyNotRetriedWhenDisabled(self):
        """
        With classifier.idempotencyKey false, the key changes nothing: the
        POSTs that hit the broken instance get its 503.
        """
        good, broken, statuses = yield self._posts(False, [(b"Idempotency-Key", b"key-%d")])
        self.assertEqual(statuses.count(503), len(broken.requests))
        self.assertGreaterEqual(len(broken.requests), 5)
        self.assertEqual(len(good.requests) + len(broken.requests), 10)
        retries = yield self.retries()
        self.assertEqual(retries["status"], 0)


# -- 4. mesh-retryable ----------------------------------------------------------------------------


class MeshRetryableTests(ResilienceTestCase):
    @defer.inlineCallbacks
    def test_meshRetryableMakesPost5xxRetryable(self):
        """
        An upstream answering 503 with C{mesh-retryable: true} says it did
        nothing: the POST is retried (with its whole body) even under the
        default classifier, nonRetryable5XX.
        """
        (good, pg), (broken, pb) = yield backends(
            self, okHandler(b"good"), statusHandler(503, extra=b"mesh-retryable: true\r\n")
        )
        port = yield self.proxy(
            {"hello": [pg, pb]}, loadBalancer=ROUND_ROBIN, failureAccrual=NO_ACCRUAL
        )
        clients = []
        for i in range(10):
            c = yield send(self, port, method=b"POST", body=b"body %d" % (i,) * 50)
            clients.append(c)
        self.assertAllOk(clients, b"good")
        self.assertEqual(
            sorted(r.body for r in good.requests), sorted(b"body %d" % (i,) * 50 for i in range(10))
        )
        self.assertGreaterEqual(len(broken.requests), 5)
        retries = yield self.retries()
        self.assertEqual(retries["status"], len(broken.requests))

    @defer.inlineCallbacks
    def test_bodyOverBufferBytesNotReplayed(self):
        """
        A body larger than retries.bufferBytes is not kept, so a POST that
        sent it is not replayed even when the upstream says it may be; a
        body within the limit is (here on the only instance, up to
        maxRetries).
        """
        (broken, pb), = yield backends(
            self, statusHandler(503, extra=b"mesh-retryable: true\r\n")
        )
        port = yield self.proxy(
            {"hello": [pb]}, retries="{bufferBytes: 100}", failureAccrual=NO_ACCRUAL
        )
        c = yield send(self, port, method=b"POST", body=b"x" * 101)
        self.assertEqual(c.responses[0].status, 503)
        self.assertEqual([len(r.body) for r in broken.requests], [101])
        c = yield send(self, port, method=b"POST", body=b"y" * 100)
        self.assertEqual(c.responses[0].status, 503)
        self.assertEqual([len(r.body) for r in broken.requests], [101, 100, 100, 100, 100])

    @defer.inlineCallbacks
    def test_meshRetryableFalseChangesNothing(self):
        """
        C{mesh-retryable: false} (or any other value) leaves the POST's 503
        as the answer.
        """
        (broken, pb), = yield backends(self, statusHandler(503, extra=b"mesh-retryable: false\r\n"))
        port = yield self.proxy({"hello": [pb]}, failureAccrual=NO_ACCRUAL)
        c = yield send(self, port, method=b"POST", body=b"x")
        self.assertEqual(c.responses[0].status, 503)
        self.assertEqual(len(broken.requests), 1)


# -- 5. Connection refused ------------------------------------------------------------------------


class RefusedTests(ResilienceTestCase):
    @defer.inlineCallbacks
    def test_refusedConnectionRetriedForPost(self):
        """
        An instance on a closed port refuses the connection: the POST never
        left, so it is retried on the live instance, which sees each POST
        exactly once.
        """
        dead = yield closedPort(self)
        (live, pl), = yield backends(self, okHandler(b"live"))
        port = yield self.proxy(
            {"hello": [dead, pl]}, loadBalancer=ROUND_ROBIN, failureAccrual=NO_ACCRUAL
        )
        clients = []
        for i in range(20):
            c = yield send(self, port, method=b"POST", body=b"post %d" % (i,))
            clients.append(c)
        self.assertAllOk(clients, b"live")
        self.assertEqual(
            sorted(r.body for r in live.requests), sorted(b"post %d" % i for i in range(20))
        )
        deadState = endpointState(self.router, HELLO, dead)
        self.assertGreaterEqual(deadState["failures"], 10)
        retries = yield self.retries()
        self.assertEqual(retries["connect"], deadState["failures"])

    @defer.inlineCallbacks
    def test_refusedConnectionRetriedForPostDefaultBalancer(self):
        """
        The same with the default balancer and failure accrual: a refused
        connection is answered fast, so the dead instance looks cheap, but
        the POSTs still all succeed via the live instance.
        """
        dead = yield closedPort(self)
        (live, pl), = yield backends(self, okHandler(b"live"))
        port = yield self.proxy({"hello": [dead, pl]})
        clients = []
        for i in range(20):
            c = yield send(self, port, method=b"POST", body=b"post %d" % (i,))
            clients.append(c)
        self.assertAllOk(clients, b"live")
        self.assertEqual(len(live.requests), 20)


# -- 6. Hung instances and timeouts ---------------------------------------------------------------


class TimeoutTests(ResilienceTestCase):
    @defer.inlineCallbacks
    def test_hungOnlyInstanceIs504WithinTotal(self):
        """
        The only instance never answers: 504 mesh-err timeout after the
        total timeout, and no later than 10% past it.
        """
        from twisted.internet import reactor

        held = []
        (hung, ph), = yield backends(self, holdHandler(held))
        port = yield self.proxy({"hello": [ph]}, timeouts="{total: 500ms}")
        started = reactor.seconds()
        c = yield send(self, port)
        elapsed = reactor.seconds() - started
        self.assertEqual(c.responses[0].status, 504)
        self.assertEqual(c.responses[0].header(b"mesh-err"), b"timeout")
        self.assertEqual(len(held), 1)
        self.assertGreaterEqual(elapsed, 0.5)
        self.assertLessEqual(elapsed, 0.55)
        # The upstream connection of the abandoned try is closed.
        yield waitUntil(lambda: not hung.connections, "the hung connection to close")

    @defer.inlineCallbacks
    def test_perTryTimeoutRetriesGetOnOtherInstance(self):
        """
        With perTry set and two instances, one hung: GETs sent to the hung
        one are retried on the good one once the per-try timeout passes,
        well within the total.
        """
        from twisted.internet import reactor

        held = []
        (hung, ph), (good, pg) = yield backends(self, holdHandler(held), okHandler(b"good"))
        port = yield self.proxy(
            {"hello": [ph, pg]},
            timeouts="{total: 1s, perTry: 100ms}",
            loadBalancer=ROUND_ROBIN,
            failureAccrual=NO_ACCRUAL,
        )
        clients, durations = [], []
        for i in range(6):
            before = len(held)
            started = reactor.seconds()
            c = yield send(self, port, path=b"/%d" % (i,))
            durations.append((len(held) > before, reactor.seconds() - started))
            clients.append(c)
        self.assertAllOk(clients, b"good")
        self.assertGreaterEqual(len(held), 3)
        for wentToHung, seconds in durations:
            if wentToHung:
                self.assertGreaterEqual(seconds, 0.1)
            self.assertLess(seconds, 0.5)
        retries = yield self.retries()
        self.assertEqual(retries["timeout"], len(held))

    @defer.inlineCallbacks
    def test_perTryTimeoutOnOnlyInstanceEndsWithin504(self):
        """
        With perTry set and only a hung instance, a GET is tried again
        after each per-try timeout (maxRetries 3) and answered 504 before
        the total timeout.
        """
        from twisted.internet import reactor

        held = []
        (hung, ph), = yield backends(self, holdHandler(held))
        port = yield self.proxy(
            {"hello": [ph]}, timeouts="{total: 1s, perTry: 100ms}", failureAccrual=NO_ACCRUAL
        )
        started = reactor.seconds()
        c = yield send(self, port)
        elapsed = reactor.seconds() - started
        self.assertEqual(c.responses[0].status, 504)
        self.assertEqual(len(held), 4)
        self.assertGreaterEqual(elapsed, 0.4)
        self.assertLess(elapsed, 1.0)

    @defer.inlineCallbacks
    def test_perTryTimeoutDoesNotRetryPost(self):
        """
        A POST whose try times out is not retried (the upstream may be
        acting on it): 504 at the per-try timeout, one arrival.
        """
        held = []
        (hung, ph), = yield backends(self, holdHandler(held))
        port = yield self.proxy(
            {"hello": [ph]}, timeouts="{total: 1s, perTry: 100ms}", failureAccrual=NO_ACCRUAL
        )
        c = yield send(self, port, method=b"POST", body=b"once")
        self.assertEqual(c.responses[0].status, 504)
        self.assertEqual(len(hung.requests), 1)


# -- 7. Retry budget ------------------------------------------------------------------------------


class BudgetTests(ResilienceTestCase):
    @defer.inlineCallbacks
    def test_emptyBudgetMeansNoRetries(self):
        """
        With budget percent 0 and minPerSecond 0, a retryable 503 is the
        answer, and each refused retry is counted as budget-exhausted.
        """
        (good, pg), (broken, pb) = yield backends(self, okHandler(b"good"), statusHandler(503))
        port = yield self.proxy(
            {"hello": [pg, pb]},
            classifier="{kind: retryableRead5XX}",
            retries="{budget: {percent: 0, minPerSecond: 0}}",
            loadBalancer=ROUND_ROBIN,
            failureAccrual=NO_ACCRUAL,
        )
        statuses = []
        for i in range(10):
            c = yield send(self, port)
            statuses.append(c.responses[0].status)
        self.assertEqual(statuses.count(503), 5)
        self.assertEqual(len(broken.requests), 5)
        self.assertEqual(len(good.requests), 5)
        retries = yield self.retries()
        self.assertEqual(retries["budget-exhausted"], 5)
        self.assertEqual(retries["status"], 0)

    @defer.inlineCallbacks
    def test_budgetReserveAllowsRetries(self):
        """
        The control: the default budget lets the same GETs be retried.
        """
        (good, pg), (broken, pb) = yield backends(self, okHandler(b"good"), statusHandler(503))
        port = yield self.proxy(
            {"hello": [pg, pb]},
            classifier="{kind: retryableRead5XX}",
            loadBalancer=ROUND_ROBIN,
            failureAccrual=NO_ACCRUAL,
        )
        for i in range(10):
            c = yield send(self, port)
            self.assertEqual(c.responses[0].status, 200)
        retries = yield self.retries()
        self.assertEqual(retries["budget-exhausted"], 0)
        self.assertEqual(retries["status"], len(broken.requests))


# -- 8. Failure accrual ---------------------------------------------------------------------------


class AccrualTests(ResilienceTestCase):
    @defer.inlineCallbacks
    def test_killedInstanceEjectedThenRevived(self):
        """
        An instance whose port closes is ejected after the configured
        consecutive failures, gets no traffic while ejected, and once it
        listens again it is probed back to live after the backoff.
        """
        instances = [Instance(self, okHandler(b"i%d" % (i,))) for i in range(3)]
        ports = []
        for instance in instances:
            p = yield instance.start()
            ports.append(p)
        # Round robin, so that the dead instance keeps being picked: peak
        # EWMA may leave an instance that was slow once unpicked for longer
        # than this test lasts.
        port = yield self.proxy(
            {"hello": ports},
            failureAccrual="{kind: consecutiveFailures, failures: 3,"
            " backoffMin: 200ms, backoffMax: 400ms}",
            loadBalancer=ROUND_ROBIN,
        )
        for i in range(10):
            c = yield send(self, port)
            self.assertEqual(c.responses[0].status, 200)
        victim = instances[2]
        before = endpointState(self.router, HELLO, victim.port)
        yield victim.kill()
        yield waitUntil(
            lambda: endpointState(self.router, HELLO, victim.port)["connections"]["open"] == 0,
            "the pooled connections to the killed instance to close",
        )

        def state():
            return endpointState(self.router, HELLO, victim.port)

        # Requests go on succeeding (a refused connection is retried) until
        # the accrual ejects the dead instance.
        sent = 0
        while state()["state"] == "live":
            c = yield send(self, port)
            self.assertEqual(c.responses[0].status, 200)
            sent += 1
            self.assertLess(sent, 20, ("never ejected", self.router.state()))
        ejected = state()
        self.assertEqual(ejected["state"], "ejected")
        self.assertEqual(ejected["failures"], before["failures"] + 3)
        self.assertEqual(ejected["consecutiveFailures"], 3)

        # While one ejection lasts, the instance is not tried at all.
        checked = 0
        for i in range(10):
            s1 = state()
            c = yield send(self, port)
            self.assertEqual(c.responses[0].status, 200)
            s2 = state()
            if s1["state"] == s2["state"] == "ejected" and s1["ejectedUntil"] == s2["ejectedUntil"]:
                self.assertEqual(s2["requests"], s1["requests"])
                checked += 1
        self.assertGreater(checked, 0)

        samples = yield scrape(self, self.adminPort)
        self.assertGreaterEqual(
            sample(samples, "meshproxy_endpoint_events_total", router="web", event="ejected"), 1
        )

        # Back on the same port: the probe after the backoff revives it.
        yield victim.start()
        arrived = len(victim.factory.requests)
        for i in range(400):
            if state()["state"] == "live":
                break
            c = yield send(self, port)
            self.assertEqual(c.responses[0].status, 200)
            yield tick(0.01)
        self.assertEqual(state()["state"], "live")
        self.assertGreater(len(victim.factory.requests), arrived)
        admin = yield adminState(self, self.adminPort)
        bound = admin["routers"]["web"]["boundNames"][HELLO]
        self.assertEqual(bound["resolution"], "bound")
        endpoints = bound["endpoints"]
        self.assertEqual([e["state"] for e in endpoints], ["live"] * 3)
        samples = yield scrape(self, self.adminPort)
        self.assertGreaterEqual(
            sample(samples, "meshproxy_endpoint_events_total", router="web", event="revived"), 1
        )


# -- 9. Deadlines ---------------------------------------------------------------------------------


class DeadlineTests(ResilienceTestCase):
    @defer.inlineCallbacks
    def test_upstreamSeesDeadlineWithinTotal(self):
        """
        The upstream receives mesh-ctx-deadline, epoch milliseconds, about
        the total timeout from now.
        """
        (backend, pb), = yield backends(self, okHandler())
        port = yield self.proxy({"hello": [pb]}, timeouts="{total: 2s}")
        before = epochMs()
        c = yield send(self, port)
        after = epochMs()
        self.assertEqual(c.responses[0].status, 200)
        [seen] = backend.requests
        deadline = int(seen.header(b"mesh-ctx-deadline"))
        self.assertGreaterEqual(deadline, before + 2000 - 200)
        self.assertLessEqual(deadline, after + 2000)

    @defer.inlineCallbacks
    def test_trustedExpiredDeadlineIs504(self):
        """
        A trusted caller whose deadline has passed gets 504 deadline-expired
        at once; the upstream sees nothing, not even a connection.
        """
        (backend, pb), = yield backends(self, okHandler())
        port = yield self.proxy({"hello": [pb]}, trust='{callers: ["127.0.0.0/8"]}')
        c = yield send(self, port, headers=[(b"mesh-ctx-deadline", b"%d" % (epochMs() - 1000,))])
        self.assertEqual(c.responses[0].status, 504)
        self.assertEqual(c.responses[0].header(b"mesh-err"), b"deadline-expired")
        yield tick(0.05)
        self.assertEqual(backend.requests, [])
        self.assertEqual(backend.connections, [])

    @defer.inlineCallbacks
    def test_trustedDeadlineShortensTotal(self):
        """
        A trusted caller's deadline shorter than the total timeout bounds
        the request, and is what the upstream is told.
        """
        from twisted.internet import reactor

        held = []
        (hung, ph), = yield backends(self, holdHandler(held))
        port = yield self.proxy(
            {"hello": [ph]}, trust='{callers: ["127.0.0.0/8"]}', timeouts="{total: 5s}"
        )
        deadline = epochMs() + 300
        started = reactor.seconds()
        c = yield send(self, port, headers=[(b"mesh-ctx-deadline", b"%d" % (deadline,))])
        elapsed = reactor.seconds() - started
        self.assertEqual(c.responses[0].status, 504)
        self.assertLess(elapsed, 1.0)
        [seen] = hung.requests
        self.assertEqual(seen.headerNames().count(b"mesh-ctx-deadline"), 1)
        self.assertLessEqual(int(seen.header(b"mesh-ctx-deadline")), deadline + 1)
        self.assertGreaterEqual(int(seen.header(b"mesh-ctx-deadline")), deadline - 50)

    @defer.inlineCallbacks
    def test_untrustedDeadlineIgnoredAndReplaced(self):
        """
        An untrusted caller's expired deadline is ignored: the request is
        answered, and the upstream sees the proxy's own deadline instead.
        """
        (backend, pb), = yield backends(self, okHandler())
        port = yield self.proxy({"hello": [pb]}, timeouts="{total: 2s}")
        old = b"%d" % (epochMs() - 1000,)
        before = epochMs()
        c = yield send(self, port, headers=[(b"mesh-ctx-deadline", old)])
        self.assertEqual(c.responses[0].status, 200)
        [seen] = backend.requests
        values = [v for n, v in seen.headers if n.lower() == b"mesh-ctx-deadline"]
        self.assertEqual(len(values), 1)
        self.assertGreaterEqual(int(values[0]), before + 2000 - 200)

    @defer.inlineCallbacks
    def test_deadlineIgnoredWhenTrustDeadlineOff(self):
        """
        With trust.deadline false, even a trusted caller's deadline is
        ignored and replaced.
        """
        (backend, pb), = yield backends(self, okHandler())
        port = yield self.proxy(
            {"hello": [pb]}, trust='{callers: ["127.0.0.0/8"], deadline: false}'
        )
        c = yield send(self, port, headers=[(b"mesh-ctx-deadline", b"%d" % (epochMs() - 1000,))])
        self.assertEqual(c.responses[0].status, 200)
        [seen] = backend.requests
        self.assertGreater(int(seen.header(b"mesh-ctx-deadline")), epochMs())

    @defer.inlineCallbacks
    def test_malformedTrustedDeadlineIgnored(self):
        """
        A trusted caller's deadline that is not epoch milliseconds is
        ignored (not an error) and replaced.
        """
        (backend, pb), = yield backends(self, okHandler())
        port = yield self.proxy({"hello": [pb]}, trust='{callers: ["127.0.0.0/8"]}')
        for bad in (b"-5", b"soon", b"1e12", b"9" * 40):
            c = yield send(self, port, headers=[(b"mesh-ctx-deadline", bad)])
            self.assertEqual(c.responses[0].status, 200, bad)
        for seen in backend.requests:
            self.assertGreater(int(seen.header(b"mesh-ctx-deadline")), epochMs())


# -- 10. Limits -----------------------------------------------------------------------------------


class LimitsTests(ResilienceTestCase):
    @defer.inlineCallbacks
    def _heldProxy(self, **sections):
        held = []

        def handler(proto, request):
            if request.url.startswith(b"/hold"):
                held.append(proto)
            else:
                okHandler()(proto, request)

        (backend, pb), = yield backends(self, handler)
        (other, po), = yield backends(self, okHandler(b"other"))
        port = yield self.proxy(
            {"hello": [pb], "other": [po]}, limits="{maxConcurrent: 1}", **sections
        )
        return port, held

    @defer.inlineCallbacks
    def test_secondConcurrentRequestOverloaded(self):
        """
        With maxConcurrent 1 and one request held upstream, a second
        request gets 503 overloaded at once; after the first is answered
        the next is admitted.
        """
        port, held = yield self._heldProxy()
        first = yield connectClient(self, port)
        first.transport.write(b"GET /hold HTTP/1.1\r\nHost: hello\r\n\r\n")
        yield waitUntil(lambda: held, "the first request to reach the upstream")
        second = yield send(self, port)
        self.assertEqual(second.responses[0].status, 503)
        self.assertEqual(second.responses[0].header(b"mesh-err"), b"overloaded")
        self.assertEqual(first.responses, [])
        # Limits are per bound name: another service is not affected.
        other = yield send(self, port, host=b"other")
        self.assertEqual(other.responses[0].status, 200)
        held[0].transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\ndone")
        yield first.waitFor(1)
        self.assertEqual(first.responses[0].body, b"done")
        third = yield send(self, port)
        self.assertEqual(third.responses[0].status, 200)
        limits = self.router.state()["boundNames"][HELLO]["limits"]
        self.assertEqual((limits["active"], limits["rejected"]), (0, 1))

    @defer.inlineCallbacks
    def test_limitReleasedWhenClientGoesAway(self):
        """
        A held request whose client disconnects gives its place back.
        """
        port, held = yield self._heldProxy()
        first = yield connectClient(self, port)
        first.transport.write(b"GET /hold HTTP/1.1\r\nHost: hello\r\n\r\n")
        yield waitUntil(lambda: held, "the first request to reach the upstream")
        first.transport.abortConnection()
        yield first.closed
        yield waitUntil(
            lambda: self.router.state()["boundNames"][HELLO]["limits"]["active"] == 0,
            "the place to be released",
        )
        second = yield send(self, port)
        self.assertEqual(second.responses[0].status, 200)

    @defer.inlineCallbacks
    def test_limitReleasedAfterTimeout(self):
        """
        A held request answered 504 by the total timeout gives its place
        back.
        """
        port, held = yield self._heldProxy(timeouts="{total: 200ms}")
        first = yield send(self, port, path=b"/hold")
        self.assertEqual(first.responses[0].status, 504)
        second = yield send(self, port)
        self.assertEqual(second.responses[0].status, 200)


# -- 11. Per-request rules overrides --------------------------------------------------------------


class OverrideTests(ResilienceTestCase):
    @defer.inlineCallbacks
    def _proxy(self, trust):
        (hello, ph), (other, po) = yield backends(self, okHandler(b"hello"), okHandler(b"other"))
        port = yield self.proxy({"hello": [ph], "other": [po]}, trust=trust)
        self.hello, self.other = hello, other
        return port

    @defer.inlineCallbacks
    def test_trustedOverrideReroutesOneRequest(self):
        """
        A trusted caller's mesh-dtab reroutes that request only; the
        upstream sees the override as mesh-ctx-dtab and not the mesh-dtab
        header itself.
        """
        port = yield self._proxy('{callers: ["127.0.0.0/8"]}')
        c = yield send(self, port, headers=[(b"mesh-dtab", b"/svc/hello => /#/static/other")])
        self.assertEqual(c.responses[0].body, b"other /")
        [seen] = self.other.requests
        self.assertEqual(seen.header(b"mesh-ctx-dtab"), b"/svc/hello=>/#/static/other")
        self.assertIsNone(seen.header(b"mesh-dtab"))
        c = yield send(self, port)
        self.assertEqual(c.responses[0].body, b"hello /")
        [seen] = self.hello.requests
        self.assertIsNone(seen.header(b"mesh-ctx-dtab"))

    @defer.inlineCallbacks
    def test_trustedContextDtabHonoured(self):
        """
        The context a previous hop passes on (mesh-ctx-dtab) is honoured
        from a trusted caller too, and passed on.
        """
        port = yield self._proxy('{callers: ["127.0.0.0/8"]}')
        c = yield send(self, port, headers=[(b"mesh-ctx-dtab", b"/svc/hello=>/#/static/other")])
        self.assertEqual(c.responses[0].body, b"other /")
        [seen] = self.other.requests
        self.assertEqual(seen.header(b"mesh-ctx-dtab"), b"/svc/hello=>/#/static/other")

    @defer.inlineCallbacks
    def test_untrustedOverrideIgnoredAndStripped(self):
        """
        With trust.callers empty, mesh-dtab and mesh-ctx-dtab are ignored
        and not forwarded.
        """
        port = yield self._proxy("{callers: []}")
        c = yield send(
            self,
            port,
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
        samples = yield scrape(self, self.adminPort)
        self.assertEqual(
            sample(
                samples, "meshproxy_errors_total", router="web", reason="dtab-override-untrusted"
            ),
            1,
        )

    @defer.inlineCallbacks
    def test_malformedTrustedOverrideIs400(self):
        """
        A trusted caller's override that does not parse, or names a namer
        the router does not have, gets 400 bad-dtab; nothing is forwarded.
        """
        port = yield self._proxy('{callers: ["127.0.0.0/8"]}')
        for bad in (b"/svc/hello =>", b"not a dtab", b"/svc/hello => /#/nosuch/x"):
            c = yield send(self, port, headers=[(b"mesh-dtab", bad)])
            self.assertEqual(c.responses[0].status, 400, bad)
            self.assertEqual(c.responses[0].header(b"mesh-err"), b"bad-dtab", bad)
        self.assertEqual(self.hello.requests + self.other.requests, [])

    @defer.inlineCallbacks
    def test_dtabPrefixesRestrictOverrides(self):
        """
        With trust.dtabPrefixes, a trusted override may only rewrite names
        under those prefixes: a broader or other prefix gets 400 bad-dtab.
        """
        port = yield self._proxy('{callers: ["127.0.0.0/8"], dtabPrefixes: [/svc/hello]}')
        c = yield send(self, port, headers=[(b"mesh-dtab", b"/svc/hello => /#/static/other")])
        self.assertEqual(c.responses[0].body, b"other /")
        for bad in (b"/svc => /#/static", b"/svc/other => /#/static/hello", b"/ => /#/static"):
            c = yield send(self, port, headers=[(b"mesh-dtab", bad)])
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
    An instance whose connections hang in the connect (see L{blackhole}).
    """

    def pool(self, port):
        """
        The proxy's connection pool to 127.0.0.1:C{port} of "hello".
        """
        client = [c for c in self.router.clients if c.name == HELLO][0]
        [node] = [n for n in client.balancer.nodes() if n.endpoint.port == port]
        return node.payload

    @defer.inlineCallbacks
    def proxy(self, services, **sections):
        """
        Start the proxy, and at the end of the test, before it stops, wait
        for its connects in flight to end (they are not cancelled).
        """
        port = yield ResilienceTestCase.proxy(self, services, **sections)

        def connecting():
            return sum(
                node.payload.connecting
                for client in self.router.clients
                for node in client.balancer.nodes()
                if node.payload is not None
            )

        self.addCleanup(waitUntil, lambda: connecting() == 0, "the connects in flight to end")
        return port

    @defer.inlineCallbacks
    def test_connectTimeoutRetriedForPost(self):
        """
        A connection that cannot be made within timeouts.connect never
        carried the request: a POST is retried on the other instance.
        """
        from twisted.internet import reactor

        hole = blackhole(self)
        (good, pg), = yield backends(self, okHandler(b"good"))
        port = yield self.proxy(
            {"hello": [hole, pg]},
            timeouts="{total: 2s, connect: 100ms}",
            loadBalancer=ROUND_ROBIN,
            failureAccrual=NO_ACCRUAL,
        )
        clients, slow = [], 0
        for i in range(4):
            started = reactor.seconds()
            c = yield send(self, port, method=b"POST", body=b"post %d" % (i,))
            if reactor.seconds() - started >= 0.1:
                slow += 1
            clients.append(c)
        self.assertAllOk(clients, b"good")
        self.assertEqual(sorted(r.body for r in good.requests), [b"post %d" % i for i in range(4)])
        failures = endpointState(self.router, HELLO, hole)["failures"]
        self.assertGreaterEqual(failures, 2)
        self.assertEqual(slow, failures)
        retries = yield self.retries()
        self.assertEqual(retries["connect"], failures)

    @defer.inlineCallbacks
    def test_maxPendingRefusesWhileConnecting(self):
        """
        With limits.maxPending 1, a request waiting for a new connection
        takes the one place: another gets 503 overloaded at once; the place
        comes back when the wait ends (here in a connect timeout, 502).
        """
        hole = blackhole(self)
        port = yield self.proxy(
            {"hello": [hole]},
            timeouts="{total: 2s, connect: 300ms}",
            limits="{maxPending: 1}",
            failureAccrual=NO_ACCRUAL,
        )

        def limits():
            return self.router.state()["boundNames"][HELLO]["limits"]

        first = yield connectClient(self, port)
        first.transport.write(b"GET / HTTP/1.1\r\nHost: hello\r\n\r\n")
        yield waitUntil(
            lambda: HELLO in self.router.state()["boundNames"] and limits()["pending"] == 1,
            "the first request to wait",
        )
        second = yield send(self, port)
        self.assertEqual(second.responses[0].status, 503)
        self.assertEqual(second.responses[0].header(b"mesh-err"), b"overloaded")
        self.assertEqual(first.responses, [])
        yield first.waitFor(1)
        self.assertEqual(first.responses[0].status, 502)
        self.assertEqual(first.responses[0].header(b"mesh-err"), b"upstream-connect")
        self.assertEqual(limits()["pending"], 0)

    @defer.inlineCallbacks
    def test_perTryTimeoutWhileConnectingReleasesPendingPlace(self):
        """
        A try whose per-try timeout passes while it waits for a connection
        gives back its maxPending place: retries elsewhere are admitted,
        and once every request is answered none is counted as waiting.
        """
        hole = blackhole(self)
        (good, pg), = yield backends(self, _closingHandler)
        port = yield self.proxy(
            {"hello": [hole, pg]},
            timeouts="{total: 2s, perTry: 100ms, connect: 300ms}",
            limits="{maxPending: 2}",
            loadBalancer=ROUND_ROBIN,
            failureAccrual=NO_ACCRUAL,
        )
        clients = []
        for i in range(6):
            c = yield send(self, port, path=b"/%d" % (i,))
            clients.append(c)
        self.assertAllOk(clients, b"good")
        pool = self.pool(hole)
        yield waitUntil(lambda: pool.connecting == 0, "the abandoned connects to time out")
        limits = self.router.state()["boundNames"][HELLO]["limits"]
        self.assertEqual(limits["pending"], 0)


    @defer.inlineCallbacks
    def test_abandonedConnectDoesNotDisturbRetry(self):
        """
        The connect of a try abandoned at its per-try timeout may fail
        later, while the retry waits for its answer on another instance:
        that failure belongs to the abandoned try, not to the retry, which
        is answered normally and is not charged a failure.
        """
        hole = blackhole(self)
        slow = delayedHandler(0.15, b"good")
        self.addCleanup(cancelDelayed, slow)
        (good, pg), = yield backends(self, slow)
        port = yield self.proxy(
            {"hello": [hole, pg]},
            timeouts="{total: 3s, perTry: 200ms, connect: 300ms}",
            loadBalancer=ROUND_ROBIN,
            failureAccrual=NO_ACCRUAL,
        )
        clients = []
        for i in range(2):
            c = yield send(self, port, path=b"/%d" % (i,))
            clients.append(c)
        self.assertAllOk(clients, b"good")
        pool = self.pool(hole)
        yield waitUntil(lambda: pool.connecting == 0, "the abandoned connect to time out")
        self.assertEqual(endpointState(self.router, HELLO, pg)["failures"], 0)
        self.assertEqual(sorted(r.url for r in good.requests), [b"/0", b"/1"])
        retries = yield self.retries()
        # Each request that met the hole first was retried once for its
        # per-try timeout; the late connect failures count for nothing.
        self.assertIn(retries["timeout"], (1, 2))
        self.assertEqual(retries["connect"], 0)

# -- 12. Resets -----------------------------------------------------------------------------------


class ResetTests(ResilienceTestCase):
    @defer.inlineCallbacks
    def _truncated(self, head, part, reset=True):
        """
        The upstream sends C{head} and C{part}, then (once the client has
        the part) resets its connection.

        @return: the client.
        """
        held = []

        def handler(proto, request):
            held.append(proto)
            proto.transport.write(head + part)

        (backend, pb), = yield backends(self, handler)
        port = yield self.proxy({"hello": [pb]}, failureAccrual=NO_ACCRUAL)
        client = yield connectClient(self, port)
        client.transport.write(b"GET / HTTP/1.1\r\nHost: hello\r\n\r\n")
        yield waitUntil(lambda: b"partial" in client.raw, "the first part of the body")
        if reset:
            held[0].transport.abortConnection()
        else:
            held[0].transport.loseConnection()
        # Either the proxy cuts the connection, or it ends the response;
        # then let connectionLost, which fired the wait, finish.
        yield client.waitFor(1)
        yield tick(0)
        return client

    @defer.inlineCallbacks
    def test_resetMidResponseWithLengthCutsClient(self):
        """
        A reset after part of a Content-Length body: the client connection
        is cut with fewer bytes than announced.
        """
        client = yield self._truncated(
            b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n", b"partial"
        )
        self.assertTrue(client.closed.called)
        self.assertEqual(client.raw.count(b"HTTP/1.1 "), 1)
        self.assertTrue(client.raw.endswith(b"\r\n\r\npartial"), client.raw)
        self.assertEqual(client.responses[0].header(b"content-length"), b"100")

    @defer.inlineCallbacks
    def test_resetMidChunkedResponseCutsClient(self):
        """
        A reset in the middle of a chunked body: the client never gets the
        last chunk that would make the cut response look complete.
        """
        client = yield self._truncated(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", b"7\r\npartial\r\n"
        )
        self.assertTrue(client.closed.called)
        self.assertFalse(client.raw.endswith(b"0\r\n\r\n"), client.raw)
        self.assertIsNone(client.error)

    @defer.inlineCallbacks
    def test_resetMidCloseDelimitedResponseCutsClient(self):
        """
        A reset in the middle of a close-delimited body (no length): the
        end of the body is only known from a clean close, so a reset is a
        cut, and the client must not get a well-framed complete response.
        """
        client = yield self._truncated(b"HTTP/1.1 200 OK\r\n\r\n", b"partial")
        self.assertFalse(client.raw.endswith(b"0\r\n\r\n"), client.raw)
        self.assertTrue(client.closed.called)


    @defer.inlineCallbacks
    def test_cleanCloseEndsCloseDelimitedResponse(self):
        """
        The control: a clean close ends a close-delimited body, which the
        client gets whole (re-framed as chunked).
        """
        client = yield self._truncated(b"HTTP/1.1 200 OK\r\n\r\n", b"partial", reset=False)
        self.assertEqual(client.responses[0].body, b"partial")
        self.assertTrue(client.raw.endswith(b"0\r\n\r\n"), client.raw)

    @defer.inlineCallbacks
    def test_getResetBeforeResponseRetriedOnOtherInstance(self):
        """
        A GET whose upstream resets a fresh connection before any response
        byte is retried on another instance.
        """
        (resetting, pr), (good, pg) = yield backends(self, resetHandler, okHandler(b"good"))
        port = yield self.proxy(
            {"hello": [pr, pg]}, loadBalancer=ROUND_ROBIN, failureAccrual=NO_ACCRUAL
        )
        clients = []
        for i in range(10):
            c = yield send(self, port, path=b"/%d" % (i,))
            clients.append(c)
        self.assertAllOk(clients, b"good")
        self.assertGreaterEqual(len(resetting.requests), 5)
        self.assertEqual(len(good.requests), 10)
        retries = yield self.retries()
        self.assertEqual(retries["reset"], len(resetting.requests))

    @defer.inlineCallbacks
    def test_postResetBeforeResponseNotRetried(self):
        """
        A POST whose upstream resets after reading it may have been acted
        on: 502 upstream-reset, sent once.
        """
        (resetting, pr), = yield backends(self, resetHandler)
        port = yield self.proxy({"hello": [pr]}, failureAccrual=NO_ACCRUAL)
        c = yield send(self, port, method=b"POST", body=b"once")
        self.assertEqual(c.responses[0].status, 502)
        self.assertEqual(c.responses[0].header(b"mesh-err"), b"upstream-reset")
        self.assertEqual(len(resetting.requests), 1)
