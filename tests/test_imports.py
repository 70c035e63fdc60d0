"""
A process imports only what its config uses: the services of a plain config
(an HTTP router, a static namer, no exporter, one process) are built without
treq, the HTTP/2 code, the etcd client or the workers package, each of which
comes in only with the config that needs it.

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
    "meshproxy.workers",
)

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
# and prints which of the modules named in argv[2] are imported.
_CHILD = """\
import json, sys
from twisted.internet.testing import MemoryReactorClock
from meshproxy.tap import Options, makeService
path, names, start = sys.argv[1], sys.argv[2].split(","), sys.argv[3] == "start"
options = Options()
options.parseOptions(["--config", path] + sys.argv[4:])
service = makeService(options, reactor=MemoryReactorClock())
if start:
    service.privilegedStartService()
    service.startService()
print(json.dumps(sorted(n for n in names if n in sys.modules)))
"""


def importedBy(config: str, *extra: str, start: bool = True) -> list[str]:
    """
    The modules of L{LAZY} that a fresh process imports to build (and
    start, on a memory reactor) the services of C{config}.

    @param config: the config's YAML text.
    @param extra: more command-line arguments of C{twistd meshproxy}.
    """
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "mesh.yaml")
        with open(path, "w") as f:
            f.write(config)
        env = dict(os.environ, PYTHONPATH=_ROOT)
        done = subprocess.run(
            [sys.executable, "-c", _CHILD, path, ",".join(LAZY),
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
        server connections or the workers package.
        """
        self.assertEqual(importedBy(PLAIN), [])

    def test_exporterImportsTreq(self) -> None:
        """
        A Zipkin exporter brings treq and Twisted's HTTP client in (so the
        check above would see them if they were imported eagerly).
        """
        imported = importedBy(ZIPKIN)
        self.assertIn("treq", imported)
        self.assertIn("twisted.web.client", imported)
        self.assertNotIn("meshproxy.workers", imported)

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
