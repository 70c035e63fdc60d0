"""
Tests for L{meshproxy.discovery.static}.
"""

from twisted.application.service import IService
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from meshproxy.discovery.endpoints import Addr, Endpoint
from meshproxy.discovery.interfaces import INamer
from meshproxy.discovery.static import StaticNamer


class StaticNamerTests(SynchronousTestCase):
    """
    Tests for L{StaticNamer}.
    """

    def test_providesINamer(self):
        """
        A static namer is an L{INamer} and an L{IService}.
        """
        namer = StaticNamer("/#/static", {})
        self.assertTrue(verifyObject(INamer, namer))
        self.assertTrue(IService.providedBy(namer))
        self.assertEqual(str(namer.prefix), "/#/static")

    def test_loadedFromTheStart(self):
        """
        A static namer has nothing to load: it is loaded before it starts.
        """
        namer = StaticNamer("/#/static", {"users": ["127.0.0.1:8081"]})
        self.assertTrue(namer.loaded)
        self.assertIsNone(self.successResultOf(namer.whenLoaded()))

    def test_bindKnownService(self):
        """
        A service in the mapping is bound to its endpoints, given as
        L{Endpoint}s, as text or as C{(host, port[, weight])} tuples.
        """
        namer = StaticNamer(
            "/#/static",
            {
                "users": [
                    Endpoint("127.0.0.1", 8081),
                    "127.0.0.1:8082 2",
                    "[::1]:8083",
                    ("users-4.internal", 8084, 0.5),
                    ("users-5.internal", 8085),
                ]
            },
        )
        self.assertEqual(
            namer.bind("users").current,
            Addr.bound(
                frozenset(
                    {
                        Endpoint("127.0.0.1", 8081),
                        Endpoint("127.0.0.1", 8082, 2),
                        Endpoint("::1", 8083),
                        Endpoint("users-4.internal", 8084, 0.5),
                        Endpoint("users-5.internal", 8085),
                    }
                )
            ),
        )

    def test_sameObservableEachTime(self):
        """
        Binding a service twice gives the same observable.
        """
        namer = StaticNamer("/#/static", {"users": ["127.0.0.1:8081"]})
        self.assertIs(namer.bind("users"), namer.bind("users"))

    def test_emptyServiceIsBoundToNothing(self):
        """
        A service listed with no endpoint exists, with no instance.
        """
        namer = StaticNamer("/#/static", {"users": []})
        self.assertEqual(namer.bind("users").current, Addr.bound(frozenset()))

    def test_unknownServiceIsNeg(self):
        """
        A service not in the mapping is L{Addr.neg}.
        """
        namer = StaticNamer("/#/static", {"users": ["127.0.0.1:8081"]})
        self.assertEqual(namer.bind("orders").current, Addr.neg())

    def test_badEndpointNamesTheService(self):
        """
        An endpoint text that does not parse raises L{ValueError} naming the
        service.
        """
        with self.assertRaises(ValueError) as raised:
            StaticNamer("/#/static", {"users": ["127.0.0.1"]})
        self.assertIn("users", str(raised.exception))
        for bad in [("h",), ("h", 0), ("h", 80, -1), ["h", 80], 80, None]:
            with self.assertRaises(ValueError, msg=repr(bad)) as raised:
                StaticNamer("/#/static", {"users": [bad]})
            self.assertIn("users", str(raised.exception))

    def test_mappingCopied(self):
        """
        Changing the mapping after building the namer changes nothing.
        """
        services = {"users": ["127.0.0.1:8081"]}
        namer = StaticNamer("/#/static", services)
        services["users"].append("127.0.0.1:8082")
        services["orders"] = []
        self.assertEqual(len(namer.bind("users").current.endpoints), 1)
        self.assertEqual(namer.bind("orders").current, Addr.neg())
