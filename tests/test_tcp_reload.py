"""
Reloading the config of a TCP router (L{meshproxy.reload}), on the memory
network: its rules swapped in place like an HTTP router's, the rules
changed through the admin API kept, and a rebuild that turns PROXY headers
on for the new connections of a kept listener.
"""

from twisted.internet.address import IPv4Address

from meshproxy.transport.proxyprotocol import formatHeader
from tests.test_reload import ReloadTestCase, upstream

TCP = """\
  - name: db
    protocol: tcp
    listen: "tcp:0:interface=127.0.0.1"
    destination: /svc/pg
    rules: "%(rules)s"
%(extra)s
"""


def tcp(rules="/svc/pg => /#/static/a;", extra=""):
    return TCP % {"rules": rules, "extra": extra}


class TcpReloadTests(ReloadTestCase):
    def test_rulesSwappedInPlace(self):
        """
        A reload changing only a TCP router's rules keeps the router (its
        endpoints' state, its spliced connections) and routes the next
        connections with the new rules.
        """
        proxy = self.proxy(routers=tcp())
        router = proxy.router("db")
        spliced = proxy.connect("db")
        self.assertEqual(upstream(proxy.get(spliced)), b"a")
        summary = proxy.reload(self.config(routers=tcp("/svc/pg => /#/static/b;")))
        self.assertIn("db", summary["routers"]["updated"])
        self.assertIs(proxy.router("db"), router)
        self.assertEqual(upstream(proxy.get(spliced)), b"a")
        self.assertEqual(upstream(proxy.get(proxy.connect("db"))), b"b")

    def test_adminRulesKept(self):
        """
        Rules changed through the admin API stay in force across a reload
        that leaves the file's rules as they were.
        """
        proxy = self.proxy(routers=tcp())
        store = proxy.runtime.rulesStores["db"]
        store.replace("/svc/pg => /#/static/b;", "*", "test")
        proxy.reload(self.config(routers=tcp(), total="6s"))
        self.assertEqual(proxy.router("db").rules.rulesText, "/svc/pg => /#/static/b;")
        self.assertEqual(upstream(proxy.get(proxy.connect("db"))), b"b")

    def test_proxyProtocolTurnedOnForNewConnections(self):
        """
        A rebuild that accepts PROXY headers on a kept listener reads them
        on the connections that come after it.
        """
        proxy = self.proxy(routers=tcp())
        before = proxy.connect("db")
        accepting = tcp(extra="    proxyProtocol: {accept: true, from: [127.0.0.1/32],"
                              " required: true}")
        summary = proxy.reload(self.config(routers=accepting))
        self.assertIn("db", summary["routers"]["rebuilt"])
        # A connection opened before the reload went on without a header.
        self.assertEqual(upstream(proxy.get(before)), b"a")
        client = proxy.connect("db")
        source = IPv4Address("TCP", "203.0.113.1", 1)
        client.transport.write(formatHeader(1, source, source))
        self.assertEqual(upstream(proxy.get(client)), b"a")
        bare = proxy.connect("db")
        self.assertIsNone(proxy.get(bare))
        self.assertEqual(
            proxy.runtime.routers["db"].metrics._errors[("db", "proxy-protocol-missing")], 1
        )
