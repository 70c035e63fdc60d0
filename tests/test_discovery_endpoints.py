"""
Tests for L{meshproxy.discovery.endpoints}.
"""

import attrs
from twisted.trial.unittest import SynchronousTestCase

from meshproxy.discovery.endpoints import Addr, Endpoint, Observable


class EndpointTests(SynchronousTestCase):
    """
    Tests for L{Endpoint}.
    """

    def test_defaultWeightIsOne(self):
        """
        An endpoint built without a weight has weight 1.0, a float.
        """
        endpoint = Endpoint("10.0.0.1", 80)
        self.assertEqual(endpoint.weight, 1.0)
        self.assertIsInstance(endpoint.weight, float)

    def test_frozen(self):
        """
        Endpoints are immutable, hashable values.
        """
        endpoint = Endpoint("10.0.0.1", 80)
        self.assertRaises(attrs.exceptions.FrozenInstanceError, setattr, endpoint, "port", 81)
        self.assertEqual({Endpoint("10.0.0.1", 80), endpoint}, {endpoint})

    def test_weightIsPartOfTheValue(self):
        """
        The same address with another weight is another value, but the same
        C{address}.
        """
        a, b = Endpoint("h", 80), Endpoint("h", 80, 2)
        self.assertNotEqual(a, b)
        self.assertEqual(a.address, b.address)

    def test_rejectsBadValues(self):
        """
        Ports out of range, non-integers, empty hosts and non-positive or
        non-finite weights are refused.
        """
        for args in [
            ("h", 0),
            ("h", 65536),
            ("h", "80"),
            ("h", True),
            ("", 80),
            ("h", 80, 0),
            ("h", 80, -1),
            ("h", 80, float("nan")),
            ("h", 80, float("inf")),
        ]:
            self.assertRaises((ValueError, TypeError), Endpoint, *args)

    def test_str(self):
        """
        C{str} gives the text L{Endpoint.parse} reads back, with brackets
        around IPv6 addresses and the weight only when it is not 1.
        """
        self.assertEqual(str(Endpoint("10.0.0.1", 80)), "10.0.0.1:80")
        self.assertEqual(str(Endpoint("::1", 8080, 2.5)), "[::1]:8080 2.5")
        for endpoint in [Endpoint("10.0.0.1", 80), Endpoint("::1", 8080, 2.5)]:
            self.assertEqual(Endpoint.parse(str(endpoint)), endpoint)

    def test_parseHostPort(self):
        """
        C{host:port} parses to a weight-1 endpoint, for names and IPv4.
        """
        self.assertEqual(Endpoint.parse("10.0.0.1:8080"), Endpoint("10.0.0.1", 8080))
        self.assertEqual(
            Endpoint.parse("  users-1.internal.:80  "), Endpoint("users-1.internal.", 80)
        )
        self.assertEqual(Endpoint.parse("_svc.local:1"), Endpoint("_svc.local", 1))

    def test_parseWeight(self):
        """
        A number after the address is the weight.
        """
        self.assertEqual(Endpoint.parse("h:80 2.5"), Endpoint("h", 80, 2.5))
        self.assertEqual(Endpoint.parse("h:80\t3"), Endpoint("h", 80, 3.0))

    def test_parseIPv6(self):
        """
        IPv6 addresses are written in brackets and stored without.
        """
        self.assertEqual(Endpoint.parse("[::1]:8080"), Endpoint("::1", 8080))
        self.assertEqual(Endpoint.parse("[fd00::3]:80 0.5"), Endpoint("fd00::3", 80, 0.5))

    def test_parseRejects(self):
        """
        Bad text raises L{ValueError} with a message saying what is wrong.
        """
        cases = {
            "": "nothing",
            "host": "host:port",
            ":80": "host:port",
            "h:": "port",
            "h:http": "port",
            "h:0": "1 to 65535",
            "h:70000": "1 to 65535",
            "h:80 x": "weight",
            "h:80 0": "positive",
            "h:80 -1": "positive",
            "h:80 nan": "positive",
            "h:80 1 2": "host:port [weight]",
            "::1:80": "brackets",
            "[::1:80": "]",
            "[::1]80": "[address]:port",
            "[nothost]:80": "IPv6",
            "bad_host!:80": "host name",
            "-bad:80": "host name",
            "a..b:80": "host name",
            "h:８０": "port",
        }
        for text, expected in cases.items():
            with self.assertRaises(ValueError, msg=text) as raised:
                Endpoint.parse(text)
            self.assertIn(expected, str(raised.exception), text)


class AddrTests(SynchronousTestCase):
    """
    Tests for L{Addr}.
    """

    def test_kinds(self):
        """
        Each constructor gives its kind; only C{bound} carries endpoints and
        only C{failed} a reason.
        """
        endpoints = frozenset({Endpoint("h", 80)})
        self.assertEqual(Addr.pending().kind, "pending")
        self.assertEqual(Addr.neg().kind, "neg")
        self.assertEqual(Addr.bound(endpoints), Addr("bound", endpoints))
        self.assertEqual(Addr.failed("boom").reason, "boom")
        self.assertEqual(Addr.failed("boom").endpoints, frozenset())
        self.assertEqual(Addr.failed(OSError("boom")).reason, "boom")

    def test_boundEmptyIsNotNeg(self):
        """
        A service with no instance is bound to the empty set, which differs
        from a service that does not exist.
        """
        self.assertEqual(Addr.bound(frozenset()).kind, "bound")
        self.assertNotEqual(Addr.bound(frozenset()), Addr.neg())

    def test_valueEquality(self):
        """
        Addresses compare by value.
        """
        self.assertEqual(
            Addr.bound(frozenset({Endpoint("h", 80)})),
            Addr.bound({Endpoint("h", 80)}),
        )
        self.assertEqual(Addr.failed("x"), Addr.failed("x"))
        self.assertNotEqual(Addr.failed("x"), Addr.failed("y"))


class ObservableTests(SynchronousTestCase):
    """
    Tests for L{Observable}.
    """

    def test_initialPending(self):
        """
        An observable starts pending unless told otherwise.
        """
        self.assertEqual(Observable().current, Addr.pending())
        self.assertEqual(Observable(Addr.neg()).current, Addr.neg())

    def test_subscribeGetsChangesNotCurrent(self):
        """
        A subscriber is called with each new value, not with the current one.
        """
        observable = Observable()
        seen = []
        observable.subscribe(seen.append)
        self.assertEqual(seen, [])
        observable.set(Addr.neg())
        observable.set(Addr.bound(frozenset()))
        self.assertEqual(seen, [Addr.neg(), Addr.bound(frozenset())])
        self.assertEqual(observable.current, Addr.bound(frozenset()))

    def test_equalValueNotifiesNobody(self):
        """
        Setting a value equal to the current one changes nothing.
        """
        observable = Observable(Addr.bound({Endpoint("h", 80)}))
        seen = []
        observable.subscribe(seen.append)
        observable.set(Addr.bound({Endpoint("h", 80)}))
        self.assertEqual(seen, [])

    def test_cancel(self):
        """
        A cancelled subscriber is not called again; cancelling twice is
        harmless and leaves the other subscribers alone.
        """
        observable = Observable()
        a, b = [], []
        cancelA = observable.subscribe(a.append)
        observable.subscribe(b.append)
        cancelA()
        cancelA()
        observable.set(Addr.neg())
        self.assertEqual((a, b), ([], [Addr.neg()]))

    def test_sameFunctionTwice(self):
        """
        Subscribing one function twice gives two subscriptions, cancelled
        separately.
        """
        observable = Observable()
        seen = []
        cancel = observable.subscribe(seen.append)
        observable.subscribe(seen.append)
        cancel()
        observable.set(Addr.neg())
        self.assertEqual(seen, [Addr.neg()])

    def test_failingSubscriberLoggedOthersNotified(self):
        """
        A subscriber that raises is logged, and the others still hear of the
        change.
        """
        observable = Observable()
        seen = []

        def broken(addr):
            raise RuntimeError("broken subscriber")

        observable.subscribe(broken)
        observable.subscribe(seen.append)
        observable.set(Addr.neg())
        self.assertEqual(seen, [Addr.neg()])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_reentrantSetDoesNotDeliverStaleValue(self):
        """
        When a subscriber sets a newer value, later subscribers see only the
        newer one, so everyone ends on the current value.
        """
        observable = Observable()
        first, second = [], []

        def bump(addr):
            first.append(addr)
            if addr == Addr.neg():
                observable.set(Addr.bound(frozenset()))

        observable.subscribe(bump)
        observable.subscribe(second.append)
        observable.set(Addr.neg())
        self.assertEqual(first, [Addr.neg(), Addr.bound(frozenset())])
        self.assertEqual(second, [Addr.bound(frozenset())])
        self.assertEqual(observable.current, Addr.bound(frozenset()))

    def test_subscribeDuringNotification(self):
        """
        A subscriber added while a change is delivered hears of the next
        change, not of the one being delivered.
        """
        observable = Observable()
        late = []
        observable.subscribe(lambda addr: observable.subscribe(late.append))
        observable.set(Addr.neg())
        self.assertEqual(late, [])
        observable.set(Addr.bound(frozenset()))
        self.assertEqual(late, [Addr.bound(frozenset())])
