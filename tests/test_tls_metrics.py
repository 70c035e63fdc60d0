"""
The TLS metrics of a process built from a config: a scrape of the admin
API's C{/metrics} shows when each certificate a router presents expires
(its listener's, and its client certificate to upstreams once it is used)
and how many reloads of rotated files failed, following the file watchers.

Everything runs on a L{MemoryReactorClock}: the watchers' one-second checks
are clock advances, the scrape a L{StubTreq} request.
"""

import os
import shutil

from cryptography import x509
from prometheus_client.parser import text_string_to_metric_families
from treq.testing import StubTreq
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from meshproxy import certs
from meshproxy.config import parseConfig
from meshproxy.routing.path import Path
from meshproxy.runtime import buildServices

EXPIRY = "meshproxy_tls_certificate_expiry_timestamp_seconds"
FAILURES = "meshproxy_tls_reload_failures_total"

CONFIG = """\
admin: {{listen: "tcp:9991:interface=127.0.0.1"}}
namers:
  - kind: static
    prefix: /#/s
    services: {{users: ["127.0.0.1:8080"], orders: ["127.0.0.1:8081"]}}
routers:
  - name: web
    listen: "tcp:4140:interface=127.0.0.1"
    rules: "/svc => /#/s;"
    tls:
      certificates:
        - {{cert: {d}/web.pem, key: {d}/web.key}}
        - {{cert: {d}/api.pem, key: {d}/api.key, sni: [api.example]}}
    upstreamTls:
      ca: {d}/ca.pem
      serverName: "spiffe://mesh.local/{{service}}"
      cert: {d}/caller.pem
      key: {d}/caller.key
  - name: plain
    listen: "tcp:4141:interface=127.0.0.1"
    rules: "/svc => /#/s;"
  - name: tcp
    protocol: tcp
    listen: "tcp:5433:interface=127.0.0.1"
    destination: /#/s/users
    tls:
      certificates: [{{cert: {d}/db.pem, key: {d}/db.key}}]
"""


def expiryOf(path):
    """
    The Unix time the certificate in C{path} expires.
    """
    with open(path, "rb") as f:
        return x509.load_pem_x509_certificate(f.read()).not_valid_after_utc.timestamp()


class TLSMetricsTests(SynchronousTestCase):
    def setUp(self):
        ca = self.mktemp()
        certs.initAuthority(ca)
        self.issued = {
            "web": certs.issue(ca, "web", uris=("spiffe://mesh.local/web",)),
            "api": certs.issue(ca, "api", dnsNames=("api.example",)),
            "db": certs.issue(ca, "db"),
            "caller": certs.issue(ca, "caller", uris=("spiffe://mesh.local/caller",)),
        }
        self.ca = ca
        # The files the proxy reads: copies, so that a test can break them.
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)
        shutil.copy(os.path.join(ca, "ca.pem"), self.directory)
        for name in self.issued:
            self.install(name, self.issued[name])
        self.client = self.build(CONFIG.format(d=self.directory))

    def build(self, text):
        """
        Build and start the services of a config on a memory reactor.

        @return: a client of its admin API.
        """
        self.reactor = MemoryReactorClock()
        self.runtime, services = buildServices(parseConfig(text), reactor=self.reactor)
        for service in services:
            service.privilegedStartService()
        for service in services:
            service.startService()
        for service in reversed(services):
            self.addCleanup(service.stopService)
        [admin] = [s for s in services if getattr(s, "description", "").startswith("admin")]
        self.adminURL = "http://127.0.0.1:%d" % (admin.port.getHost().port,)
        return StubTreq(admin.factory.resource)

    def install(self, name, issued):
        """
        Put a certificate and its key where the config says C{name}'s are.
        """
        shutil.copy(issued.cert, self.path(name + ".pem"))
        shutil.copy(issued.key, self.path(name + ".key"))

    def path(self, name):
        return os.path.join(self.directory, name)

    def scrape(self):
        """
        GET /metrics from the admin API.

        @return: the TLS samples, by (name, frozenset of label pairs).
        """
        response = self.successResultOf(self.client.get(self.adminURL + "/metrics"))
        self.assertEqual(response.code, 200)
        text = self.successResultOf(self.client.text_content(response))
        samples = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name.startswith("meshproxy_tls_"):
                    key = (sample.name, frozenset(sample.labels.items()))
                    self.assertNotIn(key, samples, "a series twice")
                    samples[key] = sample.value
        return samples

    def expiries(self):
        """
        The expiry series of a scrape: C{{(router, file): time}}.
        """
        found = {}
        for (name, labels), value in self.scrape().items():
            if name == EXPIRY:
                labels = dict(labels)
                found[(labels["router"], labels["certificate"])] = value
        return found

    def failures(self):
        """
        The reload failure series of a scrape: C{{router: count}}.
        """
        return {
            dict(labels)["router"]: value
            for (name, labels), value in self.scrape().items()
            if name == FAILURES
        }

    def useUpstreamTLS(self, service):
        """
        Make the router C{web}'s upstream connector for C{service}, as the
        first request to it does.
        """
        router = self.runtime.routers["web"]
        bound = router.rules.resolve(Path.read("/svc/" + service)).value
        return router.connectorFor(bound)

    def test_expiryOfEveryPresentedCertificate(self):
        """
        Each certificate a TLS listener serves has its expiry, by router
        and file; a router without TLS has none, and no reload failures.
        """
        self.assertEqual(
            self.expiries(),
            {
                ("web", self.path("web.pem")): expiryOf(self.path("web.pem")),
                ("web", self.path("api.pem")): expiryOf(self.path("api.pem")),
                # The client certificate web presents to its upstreams.
                ("web", self.path("caller.pem")): expiryOf(self.path("caller.pem")),
                ("tcp", self.path("db.pem")): expiryOf(self.path("db.pem")),
            },
        )
        self.assertEqual(self.failures(), {"web": 0, "tcp": 0})

    def test_upstreamClientCertificateFromTheStart(self):
        """
        The client certificate a router presents to upstreams counts from
        the start (its files are read once, at start): one series for the
        file, however many upstream identities it is presented to.
        """
        expected = {("web", self.path("caller.pem")): expiryOf(self.path("caller.pem"))}
        self.assertEqual(
            {k: v for k, v in self.expiries().items() if k[1].endswith("caller.pem")}, expected
        )
        self.useUpstreamTLS("users")
        self.useUpstreamTLS("orders")
        self.assertEqual(
            {k: v for k, v in self.expiries().items() if k[1].endswith("caller.pem")}, expected
        )

    def test_brokenListenerFileCountedAndOldKept(self):
        """
        A listener's certificate file broken on disk is seen at the next
        check (a second): the reload fails and is counted, the old
        certificate's expiry stays. A good file then replaces it.
        """
        before = expiryOf(self.path("web.pem"))
        with open(self.path("web.pem"), "wb") as f:
            f.write(b"not a certificate")
        self.reactor.advance(1.0)
        self.assertEqual(self.failures(), {"web": 1, "tcp": 0})
        self.assertEqual(self.expiries()[("web", self.path("web.pem"))], before)
        self.patch(certs, "LEAF_DAYS", 30)
        self.install("web", certs.issue(self.ca, "web2", uris=("spiffe://mesh.local/web",)))
        self.reactor.advance(1.0)
        self.assertEqual(self.failures(), {"web": 1, "tcp": 0})
        rotated = self.expiries()[("web", self.path("web.pem"))]
        self.assertEqual(rotated, expiryOf(self.path("web.pem")))
        self.assertLess(rotated, before)

    def test_brokenUpstreamFileCounted(self):
        """
        A client certificate broken on disk fails the reload of the
        router's upstream connector, counted with the listener's failures
        of the same router.
        """
        self.useUpstreamTLS("users")
        before = expiryOf(self.path("caller.pem"))
        with open(self.path("caller.key"), "wb") as f:
            f.write(b"not a key")
        self.reactor.advance(1.0)
        self.assertEqual(self.failures(), {"web": 1, "tcp": 0})
        self.assertEqual(self.expiries()[("web", self.path("caller.pem"))], before)
        with open(self.path("web.key"), "wb") as f:
            f.write(b"not a key either")
        self.reactor.advance(1.0)
        self.assertEqual(self.failures(), {"web": 2, "tcp": 0})

    def test_newServiceReadsNoFile(self):
        """
        The first request to a service makes its connector from the
        settings read at start: a file broken (or half rotated) on disk at
        that moment changes nothing.
        """
        with open(self.path("caller.key"), "wb") as f:
            f.write(b"not a key")
        connector = self.useUpstreamTLS("users")
        self.assertEqual(connector.creator.expected, "spiffe://mesh.local/users")
        self.assertEqual(self.failures(), {"web": 0, "tcp": 0})

    def test_sslListenString(self):
        """
        A router listening with an C{ssl:} string (meshproxy's TLS with that
        one certificate) has its certificate's expiry and reload failures
        too.
        """
        self.client = self.build(
            'admin: {listen: "tcp:9992:interface=127.0.0.1"}\n'
            'namers: [{kind: static, prefix: /#/s, services: {users: ["127.0.0.1:8080"]}}]\n'
            "routers:\n"
            "  - name: legacy\n"
            f'    listen: "ssl:4443:interface=127.0.0.1:privateKey={self.path("db.key")}'
            f':certKey={self.path("db.pem")}"\n'
            '    rules: "/svc => /#/s;"\n'
        )
        self.assertEqual(
            self.expiries(), {("legacy", self.path("db.pem")): expiryOf(self.path("db.pem"))}
        )
        self.assertEqual(self.failures(), {"legacy": 0})
