"""
A process imports only what its config uses: the services of a plain config
(an HTTP router, a static namer, no exporter, one process) are built without
treq, the HTTP/2 code, the etcd client, the workers package or TLS (Twisted's:
pyOpenSSL; meshproxy's certificate reading: cryptography and
service_identity), each of which comes in only with the config that needs it.

Each check runs in a fresh interpreter (a child process), since this one has
imported everything already; it looks at C{sys.modules}, not at memory
figures, which are too noisy to test.

Once the reactor runs, the objects made at start are frozen out of the
garbage collector's sight (L{meshproxy.tap.freezeStartupObjects}).
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import tempfile

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from meshproxy.tap import Options, freezeStartupObjects, makeService

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: What a plain config must not import.
LAZY = (
    "treq",
    "twisted.web.client",
    "meshproxy.etcd",
    "meshproxy.http2.client",
    "meshproxy.http2.connection",
    # The h2 library (with hpack, hyperframe): meshproxy's HTTP/2 imports it
    # at its first HTTP/2 connection; Twisted's web server (the admin API)
    # is imported without its HTTP/2 (meshproxy.twistedtls.installReactor).
    "meshproxy.http2.fastpath",
    "h2",
    "hpack",
    "twisted.web._http2",
    "meshproxy.workers",
    # Twisted's TLS (meshproxy.twistedtls), and what reads certificates.
    "OpenSSL",
    "cryptography",
    "service_identity",
)

#: What no process imports: the config's validation is the project's own.
NEVER = ("pydantic", "pydantic_core")

PLAIN = """\
admin: {listen: "tcp:0:interface=127.0.0.1"}
namers:
  - {kind: static, prefix: /#/static, services: {hello: ["127.0.0.1:1"]}}
routers:
  - name: web
    protocol: http
    listen: "tcp:0:interface=127.0.0.1"
    identifier: {kind: host}
    rules: "/svc => /#/static;"
"""

ZIPKIN = PLAIN + """\
telemetry:
  tracing: {zipkin: {url: "http://127.0.0.1:1/api/v2/spans"}}
"""

# Builds the services of the config file argv[1] (with the command-line
# arguments after it) on a memory reactor, starts them unless told not to,
# and prints which of the modules named in argv[2] are imported. The global
# reactor is installed as twistd meshproxy installs it (makeService without
# a reactor), after the options are parsed.
_CHILD = """\
import json, sys
from twisted.internet.testing import MemoryReactorClock
from meshproxy.tap import Options, makeService
from meshproxy.twistedtls import installReactor
path, names, start = sys.argv[1], sys.argv[2].split(","), sys.argv[3] == "start"
options = Options()
options.parseOptions(["--config", path] + sys.argv[4:])
installReactor()
service = makeService(options, reactor=MemoryReactorClock())
if start:
    service.privilegedStartService()
    service.startService()
print(json.dumps(sorted(n for n in names if n in sys.modules)))
"""


def importedBy(
    config: str, *extra: str, start: bool = True, names: tuple[str, ...] = LAZY
) -> list[str]:
    """
    The modules of C{names} that a fresh process imports to build (and
    start, on a memory reactor) the services of C{config}.

    @param config: the config's YAML text.
    @param extra: more command-line arguments of C{twistd meshproxy}.
    @param names: the modules looked for; L{LAZY} by default.
    """
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "mesh.yaml")
        with open(path, "w") as f:
            f.write(config)
        env = dict(os.environ, PYTHONPATH=_ROOT)
        done = subprocess.run(
            [sys.executable, "-c", _CHILD, path, ",".join(names),
             "start" if start else "build", *extra],
            capture_output=True, text=True, env=env, cwd=directory, timeout=120,
        )
    if done.returncode != 0:
        raise AssertionError("the child failed:\n%s%s" % (done.stdout, done.stderr))
    result: list[str] = json.loads(done.stdout.splitlines()[-1])
    return result


class LazyImportsTests(SynchronousTestCase):
    """
    Features a config does not use are not imported.
    """

    def test_plainConfigImportsNoneOfThem(self) -> None:
        """
        A plain config, built and started, imports neither treq, nor
        Twisted's HTTP client, nor the etcd client, the HTTP/2 client and
        server connections or the workers package, nor pyOpenSSL,
        cryptography or service_identity.
        """
        self.assertEqual(importedBy(PLAIN), [])

    def test_noConfigImportsPydantic(self) -> None:
        """
        Neither pydantic nor pydantic_core is imported, by a plain config or
        one with an exporter, in one process or with workers: the config is
        validated by meshproxy's own engine (whose import and models cost a
        fraction of pydantic's memory).
        """
        self.assertEqual(importedBy(PLAIN, names=NEVER), [])
        self.assertEqual(importedBy(ZIPKIN, names=NEVER), [])
        self.assertEqual(importedBy(PLAIN, "--workers", "2", start=False, names=NEVER), [])

    def test_exporterImportsTreq(self) -> None:
        """
        A Zipkin exporter brings treq and Twisted's HTTP client in (so the
        check above would see them if they were imported eagerly).
        """
        imported = importedBy(ZIPKIN)
        self.assertIn("treq", imported)
        self.assertIn("twisted.web.client", imported)
        self.assertNotIn("meshproxy.workers", imported)
        # Twisted's HTTPS, attached with its HTTP client.
        self.assertIn("OpenSSL", imported)

    def certificate(self) -> tuple[str, str, str]:
        """
        A CA and a certificate for 127.0.0.1 it signed.

        @return: the paths of the certificate, its key and the CA's
            certificate.
        """
        from meshproxy.certs import initAuthority, issue

        directory = os.path.abspath(self.mktemp())
        authority = initAuthority(directory)
        issued = issue(directory, "local", ips=("127.0.0.1",))
        return issued.cert, issued.key, authority.cert

    def test_tlsSectionsImportCryptography(self) -> None:
        """
        A C{tls} section (meshproxy's TLS, the standard library's) and an
        C{upstreamTls} one import cryptography and service_identity, to read
        and verify certificates (service_identity imports pyOpenSSL, for
        its docstrings).
        """
        cert, key, ca = self.certificate()
        config = PLAIN + (
            "    tls: {certificates: [{cert: %s, key: %s}]}\n"
            "    upstreamTls: {ca: %s, serverName: local}\n"
        ) % (cert, key, ca)
        imported = importedBy(config)
        self.assertIn("cryptography", imported)
        self.assertIn("service_identity", imported)

    def test_twistedsTLSListenerImportsPyOpenSSL(self) -> None:
        """
        An C{ssl:} listen string meshproxy leaves to Twisted (one with an
        argument meshproxy's TLS does not take) brings Twisted's TLS in.
        """
        cert, key, ca = self.certificate()
        listen = "ssl:0:interface=127.0.0.1:privateKey=%s:certKey=%s:extraCertChain=%s" % (
            key, cert, ca)
        config = PLAIN.replace('listen: "tcp:0:interface=127.0.0.1"\n    identifier',
                               'listen: "%s"\n    identifier' % (listen,))
        self.assertNotEqual(config, PLAIN)
        self.assertIn("OpenSSL", importedBy(config))

    def test_workersImportTheirPackageAndHTTP2(self) -> None:
        """
        With more than one worker, the workers package is imported, and so
        is the HTTP/2 code the routers would import lazily, before the
        zygote forks, so that the workers share it.
        """
        imported = importedBy(PLAIN, "--workers", "2", start=False)
        self.assertIn("meshproxy.workers", imported)
        self.assertIn("meshproxy.http2.client", imported)
        self.assertIn("meshproxy.http2.connection", imported)
        self.assertIn("h2", imported)
        # AMP, the workers' control channel, is imported without its TLS.
        self.assertNotIn("OpenSSL", imported)

    def test_oneWorkerByNumber(self) -> None:
        """
        C{--workers 1} is one process, without the workers package.
        """
        self.assertNotIn("meshproxy.workers", importedBy(PLAIN, "--workers", "1", start=False))


class FreezeTests(SynchronousTestCase):
    """
    The objects made at start are frozen once the reactor runs.
    """

    def test_freezesOnceTheReactorRuns(self) -> None:
        """
        The process's service freezes the start's objects when the reactor
        starts running, not before.
        """
        directory = self.mktemp()
        os.makedirs(directory)
        path = os.path.join(directory, "mesh.yaml")
        with open(path, "w") as f:
            f.write(PLAIN)
        options = Options()
        options.parseOptions(["--config", path])
        reactor = MemoryReactorClock()
        top = makeService(options, reactor=reactor)
        calls: list[bool] = []
        top.freeze = lambda: calls.append(True)  # type: ignore[attr-defined]
        top.privilegedStartService()
        top.startService()
        self.addCleanup(top.stopService)
        self.assertEqual(calls, [])
        reactor.run()
        self.assertEqual(calls, [True])

    def test_freezeStartupObjects(self) -> None:
        """
        L{freezeStartupObjects} moves the objects there are to the
        collector's permanent generation.
        """
        self.addCleanup(gc.unfreeze)
        gc.unfreeze()
        freezeStartupObjects()
        self.assertGreater(gc.get_freeze_count(), 0)
