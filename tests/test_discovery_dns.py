"""
Tests for L{meshproxy.discovery.dns}: the names, the lookups and the lookup
loop on a fake resolver and a L{Clock}; then against a C{twisted.names}
server on loopback whose records change during the tests, and a router
sending real HTTP through a DNS name.
"""

from __future__ import annotations

from twisted.application.service import IService
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.names import client, common, dns, error, server
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from meshproxy.config import ConfigError, parseConfig
from meshproxy.config.schema import DnsNamerConfig, DnsRefreshConfig, jsonSchema
from meshproxy.discovery import dns as dnsModule
from meshproxy.discovery.dns import NAME_LENGTHS, DnsName, DnsNamer, LookupTimeout, describe
from meshproxy.discovery.endpoints import Addr, Endpoint
from meshproxy.discovery.interfaces import INamer
from meshproxy.routing.delegate import BoundName, NamerPrefix, delegate
from meshproxy.routing.dtab import Dtab
from meshproxy.routing.nametree import Leaf
from meshproxy.routing.path import Path
from meshproxy.routing.table import checkRules
from tests.support import BackendFactory, exchange, listenBackend, startProxy

# -- records ------------------------------------------------------------------


def srv(name, priority, weight, port, target, ttl=60):
    return dns.RRHeader(
        name, dns.SRV, ttl=ttl, payload=dns.Record_SRV(priority, weight, port, target, ttl=ttl)
    )


def a(name, address, ttl=60):
    return dns.RRHeader(name, dns.A, ttl=ttl, payload=dns.Record_A(address, ttl=ttl))


def aaaa(name, address, ttl=60):
    return dns.RRHeader(name, dns.AAAA, ttl=ttl, payload=dns.Record_AAAA(address, ttl=ttl))


def soa(name, ttl=60, minimum=30):
    return dns.RRHeader(
        name,
        dns.SOA,
        ttl=ttl,
        payload=dns.Record_SOA(b"ns." + name, b"root." + name, minimum=minimum, ttl=ttl),
    )


def endpoints(*texts):
    return frozenset(Endpoint.parse(text) for text in texts)


def nxdomain(authority=()):
    """
    The error a C{twisted.names} client gives for NXDOMAIN.
    """
    message = dns.Message(rCode=dns.ENAME)
    message.authority = list(authority)
    return error.DNSNameError(message)


def servfail():
    return error.DNSServerError(dns.Message(rCode=dns.ESERVER))


# -- a resolver the tests answer for -------------------------------------------


class FakeResolver:
    """
    An L{IResolver} (the part the namer uses) whose queries wait for the
    test to answer them.

    @ivar queries: C{[kind, name, timeout, Deferred]} of every query, in
        order; C{kind} is C{"SRV"}, C{"A"} or C{"AAAA"}.
    """

    def __init__(self):
        self.queries = []

    def _query(self, kind, name, timeout):
        d = Deferred()
        self.queries.append([kind, name, timeout, d])
        return d

    def lookupService(self, name, timeout=None):
        return self._query("SRV", name, timeout)

    def lookupAddress(self, name, timeout=None):
        return self._query("A", name, timeout)

    def lookupIPV6Address(self, name, timeout=None):
        return self._query("AAAA", name, timeout)

    def waiting(self):
        """
        The queries not answered yet, as C{(kind, name)}.
        """
        return [(kind, name) for kind, name, _, d in self.queries if not d.called]

    def _take(self, kind, name):
        for query in self.queries:
            if query[0] == kind and query[1] == name and not query[3].called:
                return query[3]
        raise AssertionError(f"no {kind} query for {name} waiting: {self.waiting()}")

    def answer(self, kind, name, answers=(), authority=(), additional=()):
        self._take(kind, name).callback((list(answers), list(authority), list(additional)))

    def fail(self, kind, name, exception):
        self._take(kind, name).errback(Failure(exception))


class Namer:
    """
    A namer on a fake resolver and a clock, started, with what it logs.
    """

    def __init__(self, testCase, start=True, **kwargs):
        self.clock = Clock()
        self.resolver = FakeResolver()
        kwargs.setdefault("random", lambda: 0.0)
        self.namer = DnsNamer("/#/dns", reactor=self.clock, resolver=self.resolver, **kwargs)
        self.logged = []
        globalLogPublisher.addObserver(self.logged.append)
        testCase.addCleanup(globalLogPublisher.removeObserver, self.logged.append)
        if start:
            self.namer.startService()
            self.clock.advance(0)
        testCase.addCleanup(self.stop)

    def stop(self):
        if self.namer.running:
            self.namer.stopService()

    def follow(self, service):
        """
        Bind C{service} and follow it as a router does.

        @return: C{(observable, values)}, C{values} being every value seen.
        """
        observable = self.namer.bind(service)
        values = []
        observable.subscribe(values.append)
        return observable, values

    def warnings(self, text):
        return [
            e for e in self.logged
            if e.get("log_namespace") == "meshproxy.discovery.dns"
            and text in e.get("log_format", "")
        ]


# -- names ---------------------------------------------------------------------


class DnsNameTests(SynchronousTestCase):
    """
    L{DnsName.parse} reads the names below the prefix.
    """

    def test_srv(self):
        self.assertEqual(
            DnsName.parse("srv/_http._tcp.Users.Example."),
            DnsName("srv", "_http._tcp.users.example"),
        )

    def test_a(self):
        self.assertEqual(
            DnsName.parse("a/users.example/8080"), DnsName("a", "users.example", 8080)
        )
        self.assertEqual(str(DnsName.parse("a/users.example/8080")), "a/users.example/8080")
        self.assertEqual(DnsName.parse("a/10.0.0.1/80"), DnsName("a", "10.0.0.1", 80))
        self.assertEqual(DnsName.parse("a/::1/80"), DnsName("a", "::1", 80))

    def test_notNames(self):
        """
        Wrong shapes, invalid DNS names and ports are not names.
        """
        for service in [
            "srv", "a", "mx/users.example", "srv/a/b", "a/users.example",
            "a/users.example/8080/x", "a/users.example/0", "a/users.example/65536",
            "a/users.example/http", "a/users.example/+80", "a/users.example/123456",
            "srv/-users.example", "srv/users-.example", "srv/a..b", "srv/.",
            "srv/" + "x" * 64 + ".example", "srv/" + ".".join(["x" * 60] * 5),
            "srv/users:example", "srv/10.0.0.1x*", "a/fe80::1%eth0/80", "SRV/x.example",
        ]:
            self.assertIsNone(DnsName.parse(service), service)

    def test_nameLengthsMatchTheConfig(self):
        """
        The config checks bound names with the namer's name lengths.
        """
        self.assertEqual(NAME_LENGTHS, dict(DnsNamerConfig.nameLengths))


class DescribeTests(SynchronousTestCase):
    """
    L{describe} names a failed lookup in a few words.
    """

    def test_words(self):
        self.assertEqual(describe(defer.TimeoutError()), "timeout")
        self.assertEqual(describe(error.DNSQueryTimeoutError(1)), "timeout")
        self.assertEqual(describe(Failure(LookupTimeout())), "timeout")
        self.assertEqual(describe(servfail()), "SERVFAIL")
        self.assertEqual(describe(error.DNSQueryRefusedError()), "REFUSED")
        self.assertEqual(describe(error.DNSFormatError()), "FORMERR")
        self.assertEqual(describe(error.DNSNotImplementedError()), "NOTIMP")
        self.assertEqual(describe(OSError("no route")), "OSError: no route")
        self.assertEqual(len(describe(ValueError("x" * 500))), 200)


# -- delegation ----------------------------------------------------------------


class DelegationTests(SynchronousTestCase):
    """
    A L{NamerPrefix} makes delegation bind DNS names whole.
    """

    prefix = NamerPrefix(("#", "dns"), NAME_LENGTHS)

    def bound(self, name):
        tree = delegate(Dtab.read("/svc => /#/dns/a/users.example/8080"), Path.read(name),
                        [self.prefix, Path.read("/#/fs")])
        self.assertIsInstance(tree, Leaf)
        return tree.value

    def test_aNameAndResidual(self):
        """
        C{a/<name>/<port>} is the service; what follows is the residual.
        """
        self.assertEqual(
            self.bound("/svc/hello"),
            BoundName(
                id=Path.read("/#/dns/a/users.example/8080"),
                prefix=self.prefix,
                service="a/users.example/8080",
                residual=Path.read("/hello"),
            ),
        )

    def test_srvName(self):
        bound = self.bound("/#/dns/srv/_http._tcp.users.example/v2")
        self.assertEqual(bound.service, "srv/_http._tcp.users.example")
        self.assertEqual(bound.id, Path.read("/#/dns/srv/_http._tcp.users.example"))
        self.assertEqual(bound.residual, Path.read("/v2"))

    def test_otherAndIncompleteNames(self):
        """
        An unknown first segment takes one segment; an incomplete name keeps
        what there is (the namer does not know either).
        """
        self.assertEqual(self.bound("/#/dns/mx/x").service, "mx")
        self.assertEqual(self.bound("/#/dns/a/users.example").service, "a/users.example")
        self.assertEqual(self.bound("/#/fs/users/x").service, "users")

    def test_equalsThePlainPath(self):
        """
        A L{NamerPrefix} equals, and hashes as, the L{Path} of its segments,
        so that namers found by either are the same.
        """
        plain = Path.read("/#/dns")
        self.assertEqual(self.prefix, plain)
        self.assertEqual(plain, self.prefix)
        self.assertFalse(self.prefix != plain)
        self.assertFalse(plain != self.prefix)
        self.assertNotEqual(self.prefix, Path.read("/#/fs"))
        self.assertEqual({plain: 1}[self.prefix], 1)
        self.assertEqual({self.prefix: 1}[plain], 1)
        self.assertEqual(self.prefix, NamerPrefix(("#", "dns"), {}))
        self.assertEqual(str(self.prefix), "/#/dns")

    def test_badLengths(self):
        self.assertRaises(ValueError, NamerPrefix, ("#", "dns"), {"a": 0})
        self.assertRaises(ValueError, NamerPrefix, ("#", "dns"), {"a": True})

    def test_rulesMayNameDnsNames(self):
        checkRules("/svc => /#/dns/a/users.example/8080", [self.prefix])


# -- the namer on a fake resolver ----------------------------------------------


class BindTests(SynchronousTestCase):
    """
    What L{DnsNamer.bind} gives, and the lookups it starts.
    """

    def test_interface(self):
        namer = Namer(self).namer
        self.assertTrue(verifyObject(INamer, namer))
        self.assertTrue(verifyObject(IService, namer))
        self.assertIsInstance(namer.prefix, NamerPrefix)
        self.assertEqual(namer.prefix, Path.read("/#/dns"))

    def test_badArguments(self):
        clock = Clock()
        for kwargs in [
            {"refreshMin": 0}, {"refreshMax": -1}, {"staleFor": 0}, {"timeout": 0},
            {"refreshMin": 10, "refreshMax": 5},
        ]:
            self.assertRaises(ValueError, DnsNamer, "/#/dns", reactor=clock, **kwargs)

    def test_unknownNamesAreNeg(self):
        """
        A name that is not one is negative at once, and looked up never.
        """
        n = Namer(self)
        for service in ["users", "mx/x", "a/users.example", "a/bad name/80", "srv/a..b"]:
            self.assertEqual(n.namer.bind(service).current, Addr.neg())
        self.assertEqual(n.resolver.queries, [])

    def test_sameObservable(self):
        n = Namer(self)
        self.assertIs(n.namer.bind("a/users.example/80"), n.namer.bind("a/users.example/80"))
        self.assertEqual(n.namer.bind("a/users.example/80").current, Addr.pending())

    def test_aAndAaaaWithPort(self):
        """
        C{a/<name>/<port>} asks for A and AAAA records at once; the set is
        both answers' addresses with the port.
        """
        n = Namer(self)
        observable, values = n.follow("a/users.example/8080")
        self.assertEqual(
            n.resolver.waiting(), [("A", "users.example"), ("AAAA", "users.example")]
        )
        n.resolver.answer(
            "A", "users.example",
            [a(b"users.example", "10.0.0.1"), a(b"users.example", "10.0.0.2")],
        )
        self.assertEqual(values, [])
        n.resolver.answer("AAAA", "users.example", [aaaa(b"users.example", "fd00::1")])
        self.assertEqual(
            values,
            [Addr.bound(endpoints("10.0.0.1:8080", "10.0.0.2:8080", "[fd00::1]:8080"))],
        )

    def test_eitherAnswerIsTheSet(self):
        """
        Records of one type make the set even when the other lookup failed.
        """
        n = Namer(self)
        observable, _ = n.follow("a/users.example/80")
        n.resolver.fail("A", "users.example", servfail())
        n.resolver.answer("AAAA", "users.example", [aaaa(b"users.example", "::1")])
        self.assertEqual(observable.current, Addr.bound(endpoints("[::1]:80")))

    def test_followsCnames(self):
        """
        A CNAME in the answer is passed over: the addresses count.
        """
        n = Namer(self)
        observable, _ = n.follow("a/users.example/80")
        cname = dns.RRHeader(b"users.example", dns.CNAME, payload=dns.Record_CNAME(b"u.cdn"))
        n.resolver.answer("A", "users.example", [cname, a(b"u.cdn", "10.0.0.9")])
        n.resolver.answer("AAAA", "users.example", [cname])
        self.assertEqual(observable.current, Addr.bound(endpoints("10.0.0.9:80")))

    def test_ipAddressIsNotLookedUp(self):
        n = Namer(self)
        observable, _ = n.follow("a/10.1.2.3/80")
        self.assertEqual(n.resolver.queries, [])
        self.assertEqual(observable.current, Addr.bound(endpoints("10.1.2.3:80")))
        # No TTL: looked at again after refresh.max.
        self.assertEqual([c.getTime() for c in n.clock.getDelayedCalls()], [300.0])

    def test_nxdomainEmpties(self):
        n = Namer(self)
        observable, _ = n.follow("a/users.example/80")
        n.resolver.fail("A", "users.example", nxdomain())
        n.resolver.fail("AAAA", "users.example", nxdomain())
        self.assertEqual(observable.current, Addr.bound(frozenset()))

    def test_emptyAnswerEmpties(self):
        """
        No record of either type (NOERROR, no data) is authoritative.
        """
        n = Namer(self)
        observable, _ = n.follow("a/users.example/80")
        n.resolver.answer("A", "users.example", authority=[soa(b"example")])
        n.resolver.answer("AAAA", "users.example")
        self.assertEqual(observable.current, Addr.bound(frozenset()))

    def test_firstLookupFailedIsFailed(self):
        """
        With no answer ever, a failed lookup fails the name.
        """
        n = Namer(self)
        observable, _ = n.follow("a/users.example/80")
        n.resolver.fail("A", "users.example", servfail())
        n.resolver.fail("AAAA", "users.example", defer.TimeoutError())
        self.assertEqual(observable.current, Addr.failed("DNS lookup failed: SERVFAIL"))

    def test_recordsAreBounded(self):
        n = Namer(self)
        observable, _ = n.follow("a/users.example/80")
        records = [a(b"users.example", f"10.0.{i // 250}.{i % 250}") for i in range(300)]
        n.resolver.answer("A", "users.example", records)
        n.resolver.answer("AAAA", "users.example")
        self.assertEqual(len(observable.current.endpoints), dnsModule.MaxRecords)

    def test_timeoutsGiven(self):
        """
        Each query gets the namer's timeout, split in two tries.
        """
        n = Namer(self, timeout=2.0)
        n.follow("a/users.example/80")
        self.assertEqual(n.resolver.queries[0][2], (0.5, 1.5))


class SrvTests(SynchronousTestCase):
    """
    SRV answers: priorities, weights, targets.
    """

    def test_lowestPriorityWeightsAndTargets(self):
        """
        Only the lowest priority's records count; their weights are the
        endpoints' (shared by a target's addresses; weight 0 gets a
        hundredth of the smallest weight); targets come from the additional
        section, or are looked up; the port is the record's.
        """
        n = Namer(self)
        observable, _ = n.follow("srv/_http._tcp.users.example")
        self.assertEqual(n.resolver.waiting(), [("SRV", "_http._tcp.users.example")])
        name = b"_http._tcp.users.example"
        n.resolver.answer(
            "SRV", "_http._tcp.users.example",
            [
                srv(name, 10, 60, 8080, b"one.example"),
                srv(name, 10, 20, 8081, b"two.example"),
                srv(name, 10, 0, 8082, b"three.example"),
                srv(name, 20, 100, 9000, b"backup.example"),
            ],
            additional=[
                a(b"one.example", "10.0.0.1"),
                aaaa(b"one.example", "fd00::1"),
                a(b"two.example", "10.0.0.2"),
                a(b"backup.example", "10.0.0.9"),
            ],
        )
        self.assertEqual(
            n.resolver.waiting(), [("A", "three.example"), ("AAAA", "three.example")]
        )
        n.resolver.answer("A", "three.example", [a(b"three.example", "10.0.0.3")])
        n.resolver.answer("AAAA", "three.example")
        self.assertEqual(
            observable.current,
            Addr.bound(
                frozenset(
                    {
                        Endpoint("10.0.0.1", 8080, 30),
                        Endpoint("fd00::1", 8080, 30),
                        Endpoint("10.0.0.2", 8081, 20),
                        Endpoint("10.0.0.3", 8082, 0.2),
                    }
                )
            ),
        )

    def test_allWeightsZero(self):
        """
        With every weight 0, the endpoints share equally; a target of C{.}
        is no endpoint; two records to one address add up.
        """
        n = Namer(self)
        observable, _ = n.follow("srv/_x._tcp.example")
        name = b"_x._tcp.example"
        n.resolver.answer(
            "SRV", "_x._tcp.example",
            [
                srv(name, 0, 0, 80, b"h.example"),
                srv(name, 0, 0, 81, b"h.example"),
                srv(name, 0, 0, 80, b"h.example"),
                srv(name, 0, 0, 80, b"."),
            ],
            additional=[a(b"h.example", "10.0.0.1")],
        )
        self.assertEqual(
            observable.current,
            Addr.bound(frozenset({Endpoint("10.0.0.1", 80, 2), Endpoint("10.0.0.1", 81, 1)})),
        )

    def test_noRecordsEmpties(self):
        n = Namer(self)
        observable, _ = n.follow("srv/_x._tcp.example")
        n.resolver.answer("SRV", "_x._tcp.example", authority=[soa(b"example")])
        self.assertEqual(observable.current, Addr.bound(frozenset()))

    def test_nxdomainEmpties(self):
        n = Namer(self)
        observable, _ = n.follow("srv/_x._tcp.example")
        n.resolver.fail("SRV", "_x._tcp.example", nxdomain())
        self.assertEqual(observable.current, Addr.bound(frozenset()))

    def test_targetWithoutAddressIsLeftOut(self):
        n = Namer(self)
        observable, _ = n.follow("srv/_x._tcp.example")
        name = b"_x._tcp.example"
        n.resolver.answer(
            "SRV", "_x._tcp.example",
            [srv(name, 0, 1, 80, b"gone.example"), srv(name, 0, 1, 81, b"h.example")],
            additional=[a(b"h.example", "10.0.0.1")],
        )
        n.resolver.fail("A", "gone.example", nxdomain())
        n.resolver.fail("AAAA", "gone.example", nxdomain())
        self.assertEqual(observable.current, Addr.bound(endpoints("10.0.0.1:81")))

    def test_failedTargetLookupFailsTheLookup(self):
        """
        A target that cannot be looked up fails the whole lookup: the last
        set is kept, rather than one without that target.
        """
        n = Namer(self)
        observable, _ = n.follow("srv/_x._tcp.example")
        name = b"_x._tcp.example"
        records = [srv(name, 0, 1, 80, b"t1.example"), srv(name, 0, 1, 80, b"t2.example")]
        n.resolver.answer(
            "SRV", "_x._tcp.example", records,
            additional=[a(b"t1.example", "10.0.0.1"), a(b"t2.example", "10.0.0.2")],
        )
        good = observable.current
        self.assertEqual(good, Addr.bound(endpoints("10.0.0.1:80", "10.0.0.2:80")))
        n.clock.advance(60)
        n.resolver.answer(
            "SRV", "_x._tcp.example", records, additional=[a(b"t1.example", "10.0.0.1")]
        )
        n.resolver.answer("A", "t2.example")
        n.resolver.fail("AAAA", "t2.example", servfail())
        self.assertEqual(observable.current.endpoints, good.endpoints)
        self.assertIn("SERVFAIL", observable.current.reason)

    def test_targetLookupsAreBounded(self):
        n = Namer(self)
        n.follow("srv/_x._tcp.example")
        name = b"_x._tcp.example"
        n.resolver.answer(
            "SRV", "_x._tcp.example",
            [srv(name, 0, 1, 80, f"t{i}.example".encode()) for i in range(100)],
        )
        self.assertEqual(len(n.resolver.waiting()), 2 * dnsModule.MaxTargetLookups)
        self.assertEqual(len(n.warnings("targets without addresses")), 1)


class RefreshTests(SynchronousTestCase):
    """
    Lookups are done again after the TTL, clamped and jittered.
    """

    def answerA(self, n, ttl, *addresses):
        n.resolver.answer(
            "A", "users.example", [a(b"users.example", address, ttl) for address in addresses]
        )
        n.resolver.answer("AAAA", "users.example")

    def assertNextLookupAt(self, n, seconds):
        before = len(n.resolver.queries)
        n.clock.advance(seconds - n.clock.seconds() - 0.001)
        self.assertEqual(len(n.resolver.queries), before)
        n.clock.advance(0.001)
        self.assertEqual(len(n.resolver.queries), before + 2)

    def test_ttl(self):
        n = Namer(self)
        n.follow("a/users.example/80")
        self.answerA(n, 60, "10.0.0.1")
        self.assertNextLookupAt(n, 60)

    def test_ttlClampedToMin(self):
        n = Namer(self, refreshMin=5.0)
        n.follow("a/users.example/80")
        self.answerA(n, 1, "10.0.0.1")
        self.assertNextLookupAt(n, 5)

    def test_ttlClampedToMax(self):
        n = Namer(self, refreshMax=120.0)
        n.follow("a/users.example/80")
        self.answerA(n, 86400, "10.0.0.1")
        self.assertNextLookupAt(n, 120)

    def test_shortestTtlCounts(self):
        n = Namer(self)
        n.follow("a/users.example/80")
        n.resolver.answer("A", "users.example", [a(b"users.example", "10.0.0.1", 90)])
        n.resolver.answer("AAAA", "users.example", [aaaa(b"users.example", "::1", 30)])
        self.assertNextLookupAt(n, 30)

    def test_negativeTtlFromSoa(self):
        """
        An empty answer is asked again after its SOA's minimum, clamped.
        """
        n = Namer(self)
        n.follow("a/users.example/80")
        n.resolver.answer("A", "users.example", authority=[soa(b"example", 600, 45)])
        n.resolver.answer("AAAA", "users.example", authority=[soa(b"example", 600, 45)])
        self.assertNextLookupAt(n, 45)

    def test_nxdomainWithoutTtl(self):
        n = Namer(self)
        n.follow("a/users.example/80")
        n.resolver.fail("A", "users.example", nxdomain())
        n.resolver.fail("AAAA", "users.example", nxdomain())
        self.assertNextLookupAt(n, 5)

    def test_jitter(self):
        """
        The wait is shortened by up to a tenth, at random.
        """
        n = Namer(self, random=lambda: 0.5)
        n.follow("a/users.example/80")
        self.answerA(n, 100, "10.0.0.1")
        self.assertNextLookupAt(n, 95)

    def test_changePickedUp(self):
        n = Namer(self)
        observable, values = n.follow("a/users.example/80")
        self.answerA(n, 60, "10.0.0.1")
        n.clock.advance(60)
        self.answerA(n, 60, "10.0.0.1", "10.0.0.2")
        n.clock.advance(60)
        self.answerA(n, 60, "10.0.0.1", "10.0.0.2")
        self.assertEqual(
            values,
            [
                Addr.bound(endpoints("10.0.0.1:80")),
                Addr.bound(endpoints("10.0.0.1:80", "10.0.0.2:80")),
            ],
        )


class FailureTests(SynchronousTestCase):
    """
    A failed lookup keeps the last set for C{staleFor}, shown as stale.
    """

    def setUp(self):
        self.n = Namer(self, refreshMin=5.0, refreshMax=60.0, staleFor=100.0)
        self.observable, self.values = self.n.follow("a/users.example/80")
        self.good = endpoints("10.0.0.1:80")
        self.answer()

    def answer(self):
        self.n.resolver.answer("A", "users.example", [a(b"users.example", "10.0.0.1", 30)])
        self.n.resolver.answer("AAAA", "users.example")

    def fail(self, exception=None):
        exception = exception or servfail()
        self.n.resolver.fail("A", "users.example", exception)
        self.n.resolver.fail("AAAA", "users.example", exception)

    def test_servfailKeepsTheSetAndIsStale(self):
        self.n.clock.advance(30)
        self.fail()
        current = self.observable.current
        self.assertEqual((current.kind, current.endpoints), ("bound", self.good))
        self.assertEqual(
            current.reason,
            "stale: no DNS answer for 0.0s (SERVFAIL); keeping the 1 endpoints answered"
            " 30s ago",
        )

    def test_state(self):
        """
        L{DnsNamer.state} counts answers and failures, and names a failing
        name as stale until it answers again.
        """
        self.assertEqual(
            self.n.namer.state(),
            {"kind": "dns", "loaded": True, "names": 1, "failing": 0, "stale": False,
             "answers": 1, "failures": 0},
        )
        self.n.clock.advance(30)
        self.fail()
        state = self.n.namer.state()
        self.assertEqual(
            (state["failing"], state["stale"], state["answers"], state["failures"]),
            (1, True, 1, 1),
        )
        self.n.clock.advance(5)
        self.answer()
        state = self.n.namer.state()
        self.assertEqual(
            (state["failing"], state["stale"], state["answers"], state["failures"]),
            (0, False, 2, 1),
        )

    def test_timeoutKeepsTheSet(self):
        self.n.clock.advance(30)
        self.fail(defer.TimeoutError())
        self.assertEqual(self.observable.current.endpoints, self.good)
        self.assertIn("(timeout)", self.observable.current.reason)

    def test_resolverThatNeverAnswers(self):
        """
        A lookup not over after twice the timeout and a second failed; its
        late answer is ignored.
        """
        self.n.clock.advance(30)
        self.n.clock.advance(self.n.namer.timeout * 2 + 1)
        self.assertIn("(timeout)", self.observable.current.reason)
        self.answer()
        self.assertIn("(timeout)", self.observable.current.reason)

    def test_retriesWithBackoffUntilStaleForThenEmpties(self):
        """
        Failed lookups are tried again after refresh.min, doubling up to
        refresh.max, and once more when C{staleFor} is over; the set then
        empties, still stale. The age in the state grows.
        """
        self.n.clock.advance(30)
        times = []
        for _ in range(6):
            times.append(self.n.clock.seconds())
            self.fail()
            [call] = self.n.clock.getDelayedCalls()
            self.n.clock.advance(call.getTime() - self.n.clock.seconds())
        # 30 + 5, + 10, + 20, + 40, + 25 (to reach staleFor), + 60.
        self.assertEqual(times, [30, 35, 45, 65, 105, 130])
        self.assertEqual(
            [v.endpoints for v in self.values],
            [self.good] * 6 + [frozenset()] * 2,
        )
        self.assertIn("no DNS answer for 75s", self.values[-3].reason)
        self.assertEqual(
            self.values[-2].reason,
            "stale: no DNS answer for 100s (SERVFAIL); the endpoints were dropped after 100s",
        )

    def test_recovers(self):
        self.n.clock.advance(30)
        self.fail()
        self.n.clock.advance(5)
        self.answer()
        self.assertEqual(self.observable.current, Addr.bound(self.good))
        # Counting from the new failure.
        self.n.clock.advance(30)
        self.fail()
        self.assertIn("no DNS answer for 0.0s", self.observable.current.reason)

    def test_loggedOncePerChange(self):
        """
        Failures are logged when the name starts failing and when its set
        is dropped; the answer after them once.
        """
        self.n.clock.advance(30)
        for _ in range(3):
            self.fail()
            self.n.clock.advance(60)
        self.assertEqual(len(self.n.warnings("failed: {why}; keeping")), 1)
        self.answer()
        self.n.clock.advance(30)
        self.answer()
        self.assertEqual(len(self.n.warnings("answers again")), 1)
        self.n.clock.advance(30)
        self.fail()
        self.assertEqual(len(self.n.warnings("failed: {why}; keeping")), 2)

    def test_emptyAfterAnswersLoggedOnce(self):
        self.n.clock.advance(30)
        for _ in range(2):
            self.n.resolver.fail("A", "users.example", nxdomain())
            self.n.resolver.fail("AAAA", "users.example", nxdomain())
            self.n.clock.advance(5)
        self.assertEqual(len(self.n.warnings("no endpoints")), 1)


class LifecycleTests(SynchronousTestCase):
    """
    The lookup loops follow the names, the service and the first load.
    """

    def test_unfollowedNameStopsAtItsRefresh(self):
        n = Namer(self)
        observable = n.namer.bind("a/users.example/80")
        cancel = observable.subscribe(lambda addr: None)
        n.resolver.answer("A", "users.example", [a(b"users.example", "10.0.0.1", 60)])
        n.resolver.answer("AAAA", "users.example")
        cancel()
        n.clock.advance(60)
        self.assertEqual(n.resolver.waiting(), [])
        self.assertEqual(n.clock.getDelayedCalls(), [])
        again = n.namer.bind("a/users.example/80")
        self.assertIsNot(again, observable)
        self.assertEqual(n.resolver.waiting(), [("A", "users.example"), ("AAAA", "users.example")])

    def test_boundBeforeStartLookedUpAtStart(self):
        n = Namer(self, start=False)
        n.namer.bind("a/users.example/80")
        self.assertEqual(n.resolver.queries, [])
        n.namer.startService()
        self.assertEqual(len(n.resolver.waiting()), 2)

    def test_firstLoad(self):
        """
        The first load waits for the names bound before the start and in
        its reactor turn, not for later ones.
        """
        n = Namer(self, start=False)
        n.namer.bind("a/one.example/80")
        loaded = n.namer.whenLoaded()
        n.namer.startService()
        n.namer.bind("srv/two.example")
        n.clock.advance(0)
        n.namer.bind("a/three.example/80")
        self.assertNoResult(loaded)
        n.resolver.fail("A", "one.example", servfail())
        n.resolver.fail("AAAA", "one.example", servfail())
        self.assertNoResult(loaded)
        self.assertFalse(n.namer.loaded)
        n.resolver.answer("SRV", "two.example")
        self.assertIsNone(self.successResultOf(loaded))
        self.assertTrue(n.namer.loaded)

    def test_loadedWithoutNames(self):
        n = Namer(self, start=False)
        loaded = n.namer.whenLoaded()
        n.namer.startService()
        self.assertNoResult(loaded)
        n.clock.advance(0)
        self.successResultOf(loaded)

    def test_stopCancelsEverything(self):
        n = Namer(self)
        observable, _ = n.follow("a/users.example/80")
        n.follow("a/other.example/80")
        n.resolver.answer("A", "users.example", [a(b"users.example", "10.0.0.1")])
        n.resolver.answer("AAAA", "users.example")
        n.namer.stopService()
        self.assertEqual(n.clock.getDelayedCalls(), [])
        n.resolver.answer("A", "other.example", [a(b"other.example", "10.0.0.2")])
        n.resolver.answer("AAAA", "other.example")
        self.assertEqual(n.namer.bind("a/other.example/80").current, Addr.pending())
        self.assertEqual(observable.current, Addr.bound(endpoints("10.0.0.1:80")))

    def test_namesAreBounded(self):
        """
        Past C{maxNames}, names nobody follows are forgotten; if all are
        followed, a new name fails.
        """
        n = Namer(self, maxNames=2)
        n.namer.bind("a/one.example/80")
        n.follow("a/two.example/80")
        n.follow("a/three.example/80")
        self.assertEqual(
            n.namer.bind("a/four.example/80").current,
            Addr.failed("the DNS namer follows 2 names already"),
        )


class ConfigTests(SynchronousTestCase):
    """
    The C{kind: dns} namer in the configuration.
    """

    base = "routers:\n  - {name: web, listen: 'tcp:4140'}\n"

    def errors(self, text):
        with self.assertRaises(ConfigError) as caught:
            parseConfig(text)
        return caught.exception.errors

    def test_values(self):
        config = parseConfig(
            self.base
            + "namers:\n"
            "  - {kind: dns, prefix: /#/dns, nameservers: ['127.0.0.1:5353', '10.0.0.2',"
            " '[::1]:53', '[fd00::2]'], refresh: {min: 1s, max: 1m}, staleFor: 2m,"
            " timeout: 3s}\n"
        )
        self.assertEqual(
            config.namers[0],
            DnsNamerConfig(
                nameservers=(
                    ("127.0.0.1", 5353), ("10.0.0.2", 53), ("::1", 53), ("fd00::2", 53)
                ),
                refresh=DnsRefreshConfig(min=1.0, max=60.0),
                staleFor=120.0,
                timeout=3.0,
            ),
        )

    def test_defaults(self):
        namer = parseConfig(self.base + "namers: [{kind: dns}]\n").namers[0]
        self.assertEqual(
            (namer.prefix, namer.nameservers, namer.refresh.min, namer.refresh.max,
             namer.staleFor, namer.timeout),
            ("/#/dns", (), 5.0, 300.0, 300.0, 5.0),
        )

    def test_badValues(self):
        self.assertEqual(
            self.errors(
                self.base
                + "namers:\n"
                "  - {kind: dns, prefix: /dns, nameservers: ['127.0.0.1:0', dns.example, '::1',"
                " '[::1', 53, '1.2.3.4:x'], refresh: {min: 10m, max: 5m}, staleFor: 0s,"
                " root: /x}\n"
                "  - {kind: dns, prefix: /#/d2, refresh: {min: 10m}}\n"
            ),
            [
                'namers[0].root: only for kind "file"',
                'namers[0].prefix: must start with "/#/", got "/dns"',
                'namers[0].nameservers[0]: port must be between 1 and 65535, got "0"',
                "namers[0].nameservers[1]: expected an IP address with an optional port,"
                ' like "127.0.0.1:5353" or "[::1]:53", got "dns.example"',
                'namers[0].nameservers[2]: an IPv6 address goes in brackets, like "[::1]:53",'
                ' got "::1"',
                "namers[0].nameservers[3]: expected an IP address with an optional port,"
                ' like "127.0.0.1:5353" or "[::1]:53", got "[::1"',
                "namers[0].nameservers[4]: expected a string, got 53",
                'namers[0].nameservers[5]: port must be between 1 and 65535, got "x"',
                "namers[0].refresh.max: must not be shorter than min (600s)",
                'namers[0].staleFor: must be longer than 0s, got "0s"',
                "namers[1].refresh.min: must not be longer than max (300s, the default)",
            ],
        )

    def test_boundNames(self):
        """
        A DNS name is a bound name whole; a path below it is reported.
        """
        namers = "namers: [{kind: dns}]\n"
        router = "routers:\n  - name: web\n    listen: 'tcp:4140'\n    boundNames: {%s}\n"
        parseConfig(
            namers
            + router % "/#/dns/a/users.example/8080: {}, /#/dns/srv/_x._tcp.example: {}"
        )
        self.assertEqual(
            self.errors(namers + router % "/#/dns/a/users.example/8080/x: {}"),
            [
                'routers[0].boundNames["/#/dns/a/users.example/8080/x"]: names a path below'
                ' the bound name "/#/dns/a/users.example/8080" (namer "/#/dns" and one'
                " service name)"
            ],
        )

    def test_destination(self):
        config = parseConfig(
            "namers: [{kind: dns}]\n"
            "routers:\n  - {name: db, protocol: tcp, listen: 'tcp:5432',"
            " destination: /#/dns/srv/_pg._tcp.example}\n"
        )
        self.assertEqual(config.routers[0].destination, "/#/dns/srv/_pg._tcp.example")

    def test_schema(self):
        schema = jsonSchema()
        self.assertIn("DnsNamerConfig", schema["definitions"])

    def test_makeNamer(self):
        from meshproxy.runtime import makeNamer

        config = parseConfig(
            self.base
            + "namers: [{kind: dns, prefix: /#/d, nameservers: ['127.0.0.1:5353'],"
            " refresh: {min: 2s, max: 1m}, staleFor: 3m, timeout: 4s}]\n"
        )
        namer = makeNamer(config.namers[0], reactor=Clock())
        self.assertIsInstance(namer, DnsNamer)
        self.assertEqual(namer.prefix, Path.read("/#/d"))
        self.assertEqual(
            (namer.refreshMin, namer.refreshMax, namer.staleFor, namer.timeout),
            (2.0, 60.0, 180.0, 4.0),
        )
        self.assertEqual(namer._nameservers, (("127.0.0.1", 5353),))


# -- against a DNS server on loopback ------------------------------------------


class Broken(Exception):
    """
    What the test server's zone fails with to answer SERVFAIL.
    """


class Zone(common.ResolverBase):
    """
    The records the test server answers with, changed by the tests.

    @ivar records: C{{(name, type): [RRHeader]}}; a name present with
        other types only gives an empty answer (with an SOA); a name absent
        gives NXDOMAIN.
    @ivar additional: C{{name: [RRHeader]}} sent in the additional section
        of the answers for C{name}.
    @ivar broken: C{{name: "servfail" or "drop"}}.
    @ivar asked: the C{(name, type)} of every query.
    """

    def __init__(self):
        common.ResolverBase.__init__(self)
        self.records = {}
        self.additional = {}
        self.broken = {}
        self.asked = []

    def set(self, name, *records):
        """
        Replace the records of C{name} (all types).
        """
        for key in [key for key in self.records if key[0] == name]:
            del self.records[key]
        for rr in records:
            self.records.setdefault((name, rr.type), []).append(rr)
        if not records:
            self.records[(name, dns.TXT)] = []

    def _lookup(self, name, cls, type, timeout):
        name = name.decode() if isinstance(name, bytes) else name
        name = name.lower()
        self.asked.append((name, type))
        broken = self.broken.get(name)
        if broken == "servfail":
            # The server answers SERVFAIL to an error that is not a
            # DomainError (which would be NXDOMAIN), and logs it.
            return defer.fail(Broken())
        if broken == "drop":
            return Deferred()
        if not any(key[0] == name for key in self.records):
            return defer.fail(error.DomainError(name))
        answers = self.records.get((name, type), [])
        authority = [] if answers else [soa(b"example", 5, 5)]
        return defer.succeed((answers, authority, self.additional.get(name, [])))


class DnsServer:
    """
    A C{twisted.names} server on 127.0.0.1, UDP and TCP on one port.
    """

    def __init__(self, testCase):
        from twisted.internet import reactor

        self.zone = Zone()
        factory = server.DNSServerFactory(authorities=[self.zone])
        for _ in range(20):
            udp = reactor.listenUDP(
                0, dns.DNSDatagramProtocol(factory), interface="127.0.0.1"
            )
            self.port = udp.getHost().port
            try:
                tcp = reactor.listenTCP(self.port, factory, interface="127.0.0.1")
            except Exception:
                udp.stopListening()
                continue
            break
        else:
            raise AssertionError("no free port for UDP and TCP")
        testCase.addCleanup(udp.stopListening)
        testCase.addCleanup(tcp.stopListening)
        self.factory = factory

        def closeConnections():
            for protocol in list(factory.connections):
                protocol.transport.loseConnection()

        testCase.addCleanup(closeConnections)


def waitFor(observable, predicate, seconds=5.0):
    """
    Wait until C{predicate(observable.current)} holds, for at most
    C{seconds} of the real reactor.
    """
    from twisted.internet import reactor

    d = Deferred()
    if predicate(observable.current):
        d.callback(observable.current)
        return d

    def changed(addr):
        if predicate(addr) and not d.called:
            d.callback(addr)

    cancel = observable.subscribe(changed)
    d.addTimeout(seconds, reactor)
    d.addBoth(lambda result: (cancel(), result)[1])
    return d


class ServerTests(TestCase):
    """
    The namer's timers on a L{Clock}, its lookups over real UDP (and TCP)
    to a C{twisted.names} server on loopback.
    """

    timeout = 30

    def setUp(self):
        from twisted.internet import reactor

        self.server = DnsServer(self)
        self.zone = self.server.zone
        self.resolver = client.Resolver(servers=[("127.0.0.1", self.server.port)], reactor=reactor)
        self.addCleanup(dnsModule._closeResolver, self.resolver)
        self.clock = Clock()
        self.namer = DnsNamer(
            "/#/dns", reactor=self.clock, resolver=self.resolver, refreshMin=5.0,
            refreshMax=60.0, staleFor=120.0, timeout=1.0, random=lambda: 0.0,
        )
        self.namer.startService()
        self.addCleanup(self.namer.stopService)

    def follow(self, service):
        observable = self.namer.bind(service)
        observable.subscribe(lambda addr: None)
        return observable

    @defer.inlineCallbacks
    def test_aRecordsChangeOnRefresh(self):
        self.zone.set(
            "users.example", a(b"users.example", "10.0.0.1", 10),
            aaaa(b"users.example", "fd00::1", 10),
        )
        observable = self.follow("a/users.example/8080")
        addr = yield waitFor(observable, lambda addr: addr.kind == "bound")
        self.assertEqual(addr, Addr.bound(endpoints("10.0.0.1:8080", "[fd00::1]:8080")))
        self.zone.set("users.example", a(b"users.example", "10.0.0.2", 10))
        self.clock.advance(9.9)
        self.assertEqual(observable.current, addr)
        self.clock.advance(0.1)
        addr = yield waitFor(observable, lambda addr: addr != Addr.bound(
            endpoints("10.0.0.1:8080", "[fd00::1]:8080")))
        self.assertEqual(addr, Addr.bound(endpoints("10.0.0.2:8080")))

    @defer.inlineCallbacks
    def test_srvWithAdditionalAndLookedUpTargets(self):
        name = b"_http._tcp.users.example"
        self.zone.set(
            "_http._tcp.users.example",
            srv(name, 1, 3, 8080, b"one.example"),
            srv(name, 1, 1, 8081, b"two.example"),
            srv(name, 2, 1, 9000, b"backup.example"),
        )
        self.zone.additional["_http._tcp.users.example"] = [a(b"one.example", "10.0.0.1")]
        self.zone.set("two.example", aaaa(b"two.example", "fd00::2"))
        observable = self.follow("srv/_http._tcp.users.example")
        addr = yield waitFor(observable, lambda addr: addr.kind == "bound")
        self.assertEqual(
            addr,
            Addr.bound(
                frozenset({Endpoint("10.0.0.1", 8080, 3), Endpoint("fd00::2", 8081, 1)})
            ),
        )
        self.assertNotIn(("one.example", dns.A), self.zone.asked)
        self.assertIn(("two.example", dns.AAAA), self.zone.asked)

    @defer.inlineCallbacks
    def test_nxdomainAndEmptyAnswersEmpty(self):
        self.zone.set("users.example", a(b"users.example", "10.0.0.1", 10))
        observable = self.follow("a/users.example/80")
        yield waitFor(observable, lambda addr: addr.endpoints)
        self.zone.set("users.example")
        self.clock.advance(10)
        addr = yield waitFor(observable, lambda addr: not addr.endpoints)
        self.assertEqual(addr, Addr.bound(frozenset()))
        self.zone.set("users.example", a(b"users.example", "10.0.0.1", 10))
        self.clock.advance(5)
        yield waitFor(observable, lambda addr: addr.endpoints)
        del self.zone.records[("users.example", dns.A)]
        self.clock.advance(10)
        addr = yield waitFor(observable, lambda addr: not addr.endpoints)
        self.assertEqual(addr, Addr.bound(frozenset()))

    @defer.inlineCallbacks
    def test_servfailKeepsTheSet(self):
        self.zone.set("users.example", a(b"users.example", "10.0.0.1", 10))
        observable = self.follow("a/users.example/80")
        good = yield waitFor(observable, lambda addr: addr.endpoints)
        self.zone.broken["users.example"] = "servfail"
        self.clock.advance(10)
        addr = yield waitFor(observable, lambda addr: addr.reason is not None)
        self.assertEqual(addr.endpoints, good.endpoints)
        self.assertIn("SERVFAIL", addr.reason)
        self.assertTrue(self.flushLoggedErrors(Broken))
        del self.zone.broken["users.example"]
        self.clock.advance(5)
        addr = yield waitFor(observable, lambda addr: addr.reason is None)
        self.assertEqual(addr, good)

    @defer.inlineCallbacks
    def test_timeoutKeepsTheSet(self):
        """
        A server that does not answer: the resolver's own timeouts (on the
        real reactor, the namer's 1 s) fail the lookup.
        """
        self.zone.set("users.example", a(b"users.example", "10.0.0.1", 10))
        observable = self.follow("a/users.example/80")
        good = yield waitFor(observable, lambda addr: addr.endpoints)
        self.zone.broken["users.example"] = "drop"
        self.clock.advance(10)
        addr = yield waitFor(observable, lambda addr: addr.reason is not None)
        self.assertEqual(addr.endpoints, good.endpoints)
        self.assertIn("(timeout)", addr.reason)

    @defer.inlineCallbacks
    def test_bigAnswerIsBounded(self):
        records = [a(b"big.example", f"10.0.{i // 200}.{i % 200 + 1}") for i in range(400)]
        self.zone.set("big.example", *records)
        observable = self.follow("a/big.example/80")
        addr = yield waitFor(observable, lambda addr: addr.kind != "pending")
        self.assertEqual(len(addr.endpoints), dnsModule.MaxRecords)


class RouterTests(TestCase):
    """
    A router sends real HTTP to the endpoints of a DNS name.
    """

    timeout = 30

    @defer.inlineCallbacks
    def test_routesThroughADnsName(self):
        dnsServer = DnsServer(self)
        zone = dnsServer.zone
        zone.set("users.example", a(b"users.example", "127.0.0.1", 1))
        backend = BackendFactory()
        port = yield listenBackend(self, backend)
        config = f"""\
admin: {{listen: "tcp:port=0:interface=127.0.0.1"}}
namers:
  - {{kind: dns, nameservers: ["127.0.0.1:{dnsServer.port}"],
      refresh: {{min: 50ms, max: 50ms}}, timeout: 1s}}
routers:
  - name: web
    listen: "tcp:0:interface=127.0.0.1"
    identifier: {{kind: host}}
    rules: "/svc => /#/dns/a/users.example/{port};"
"""
        proxyPort, _, runtime = yield startProxy(self, None, config=config)
        [namer] = runtime.namers
        observable = namer.bind(f"a/users.example/{port}")
        yield waitFor(observable, lambda addr: addr.endpoints)

        response = yield exchange(self, proxyPort, b"GET /x HTTP/1.1\r\nHost: hello\r\n\r\n")
        [answer] = response.responses
        self.assertEqual((answer.status, answer.body), (200, b"ok /x"))
        state = runtime.routers["web"].state()["boundNames"][f"/#/dns/a/users.example/{port}"]
        self.assertEqual((state["resolution"], state["reason"]), ("bound", None))

        zone.broken["users.example"] = "servfail"
        yield waitFor(observable, lambda addr: addr.reason is not None)
        self.assertTrue(self.flushLoggedErrors(Broken))
        response = yield exchange(self, proxyPort, b"GET /y HTTP/1.1\r\nHost: hello\r\n\r\n")
        self.assertEqual(response.responses[0].status, 200)
        state = runtime.routers["web"].state()["boundNames"][f"/#/dns/a/users.example/{port}"]
        self.assertEqual(state["resolution"], "bound")
        self.assertIn("stale: no DNS answer", state["reason"])

        del zone.broken["users.example"]
        zone.set("users.example")
        yield waitFor(observable, lambda addr: addr == Addr.bound(frozenset()))
        response = yield exchange(self, proxyPort, b"GET /z HTTP/1.1\r\nHost: hello\r\n\r\n")
        [answer] = response.responses
        self.assertEqual((answer.status, answer.header(b"mesh-err")), (503, b"no-endpoint"))

    @defer.inlineCallbacks
    def test_firstRequestWaitsForTheFirstLookup(self):
        """
        The first request for a DNS name nobody looked up yet waits for the
        namer's first answer, then goes to its endpoints (not 503).
        """
        dnsServer = DnsServer(self)
        dnsServer.zone.set("users.example", a(b"users.example", "127.0.0.1", 1))
        backend = BackendFactory()
        port = yield listenBackend(self, backend)
        config = f"""\
admin: {{listen: "tcp:port=0:interface=127.0.0.1"}}
namers:
  - {{kind: dns, nameservers: ["127.0.0.1:{dnsServer.port}"],
      refresh: {{min: 50ms, max: 50ms}}, timeout: 1s}}
routers:
  - name: web
    listen: "tcp:0:interface=127.0.0.1"
    identifier: {{kind: host}}
    rules: "/svc => /#/dns/a/users.example/{port};"
    timeouts: {{total: 10s}}
"""
        proxyPort, _, runtime = yield startProxy(self, None, config=config)
        name = f"/#/dns/a/users.example/{port}"
        self.assertNotIn(name, runtime.routers["web"].state()["boundNames"])

        response = yield exchange(self, proxyPort, b"GET /x HTTP/1.1\r\nHost: hello\r\n\r\n")
        [answer] = response.responses
        self.assertEqual((answer.status, answer.body), (200, b"ok /x"))
        state = runtime.routers["web"].state()["boundNames"][name]
        self.assertEqual(state["resolution"], "bound")
