"""
A real C{twistd meshproxy} with C{workers: 2} as a child process, on
loopback: both workers serve, a killed worker is restarted while the other
answers, a rules PUT reaches every worker, C{SIGHUP} replaces the workers
with the new config, C{SIGTERM} drains them.

Which worker serves a request is read from C{/proc}: a worker keeps its
upstream connections (to the upstreams in this process) in its pool.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase

from tests.admin_support import AdminClient
from tests.support import exchange
from tests.test_reload_integration import WEB2, ProcessTestCase


def _socketInodes(pid: int) -> set[int]:
    inodes = set()
    directory = "/proc/%d/fd" % (pid,)
    for name in os.listdir(directory):
        try:
            target = os.readlink(os.path.join(directory, name))
        except OSError:
            continue
        match = re.match(r"socket:\[(\d+)\]$", target)
        if match:
            inodes.add(int(match.group(1)))
    return inodes


def connectionsTo(pid: int, port: int) -> int:
    """
    How many established TCP connections process C{pid} has to
    C{127.0.0.1:port}.
    """
    inodes = _socketInodes(pid)
    count = 0
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            fields = line.split()
            remote, state, inode = fields[2], fields[3], int(fields[9])
            if state == "01" and inode in inodes and int(remote.split(":")[1], 16) == port:
                count += 1
    return count


def children(pid: int) -> list[int]:
    try:
        with open("/proc/%d/task/%d/children" % (pid, pid)) as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


def alive(pid: int) -> bool:
    try:
        with open("/proc/%d/stat" % (pid,)) as f:
            return f.read().split()[2] != "Z"
    except OSError:
        return False


REQUEST = b"GET /%d HTTP/1.1\r\nHost: hello\r\n\r\n"


class WorkersProcessTests(ProcessTestCase):
    """
    C{twistd meshproxy} with two worker processes.
    """

    timeout = 120

    @defer.inlineCallbacks
    def startWorkers(self, target: str = "a", delay: float = 0.005) -> Any:
        yield self.upstreams(delay)
        proxy = yield self.startProxy("workers: 2\n" + self.config(target=target))
        pids = []
        for worker in (0, 1):
            match = yield proxy.waitFor(r"worker %d \(pid (\d+)\) running version 1" % (worker,))
            pids.append(int(match.group(1)))
        proxy.workerPids = pids
        self.admin = AdminClient(self, proxy.ports["admin"])
        return proxy

    @defer.inlineCallbacks
    def state(self) -> Any:
        response = yield self.admin.get("/admin/state")
        self.assertEqual(response.code, 200, response.body)
        return json.loads(response.body)["workers"]

    @defer.inlineCallbacks
    def requests(self, proxy: Any, count: int, start: int = 0) -> Any:
        """
        C{count} requests, each on its own connection, all at once.

        @return: the bodies of the answers.
        """
        port = proxy.ports["router web"]
        clients = yield defer.gatherResults([
            exchange(self, port, REQUEST % (start + i,)) for i in range(count)
        ])
        bodies = []
        for client in clients:
            self.assertEqual(len(client.responses), 1, client.raw)
            self.assertEqual(client.responses[0].status, 200, client.raw)
            bodies.append(client.responses[0].body)
        return bodies

    @defer.inlineCallbacks
    def test_bothWorkersServe(self) -> Any:
        """
        The workers are descendants of the twistd process; /ready and
        /admin/state show them running version 1; requests on many
        connections are answered, by both workers.
        """
        proxy = yield self.startWorkers()
        twistd = proxy.transport.pid
        [zygote] = children(twistd)
        self.assertEqual(sorted(children(zygote)), sorted(proxy.workerPids))
        ready = yield self.admin.get("/ready")
        self.assertEqual((ready.code, json.loads(ready.body)), (200, {"ready": True}))
        workers = yield self.state()
        self.assertEqual(
            [(w["id"], w["pid"], w["state"], w["version"], w["restarts"])
             for w in workers["workers"]],
            [(0, proxy.workerPids[0], "running", 1, 0), (1, proxy.workerPids[1], "running", 1, 0)],
        )
        served: set[int] = set()
        for round in range(20):
            bodies = yield self.requests(proxy, 10, round * 10)
            self.assertEqual(
                bodies, [b"a /%d" % (round * 10 + i,) for i in range(10)]
            )
            served = {
                pid for pid in proxy.workerPids if connectionsTo(pid, self.ports["a"]) > 0
            }
            if len(served) == 2:
                break
        self.assertEqual(served, set(proxy.workerPids))
        # The supervisor itself has no upstream connection: it serves nothing.
        self.assertEqual(connectionsTo(twistd, self.ports["a"]), 0)

    @defer.inlineCallbacks
    def test_killedWorkerIsRestarted(self) -> Any:
        """
        A worker killed with SIGKILL is logged and restarted in its slot;
        the other worker is not touched, and requests are answered all
        along.
        """
        import signal

        proxy = yield self.startWorkers()
        dead, other = proxy.workerPids
        since = len(proxy.lines)
        os.kill(dead, signal.SIGKILL)
        yield proxy.waitFor(r"worker 0 \(pid %d\) exited; restarting it in" % (dead,), since)
        bodies = yield self.requests(proxy, 5)
        self.assertEqual(bodies, [b"a /%d" % (i,) for i in range(5)])
        match = yield proxy.waitFor(r"worker 0 \(pid (\d+)\) running version 1", since)
        new = int(match.group(1))
        self.assertNotEqual(new, dead)
        workers = yield self.state()
        self.assertEqual(
            [(w["pid"], w["generation"], w["restarts"]) for w in workers["workers"]],
            [(new, 1, 1), (other, 0, 0)],
        )
        self.assertTrue(alive(other))
        bodies = yield self.requests(proxy, 10, 100)
        self.assertEqual(bodies, [b"a /%d" % (100 + i,) for i in range(10)])

    @defer.inlineCallbacks
    def test_rulesPutReachesEveryWorker(self) -> Any:
        """
        A rules PUT answers once both workers run the new version; from then
        on every request, whichever worker takes it, follows the new rules.
        """
        proxy = yield self.startWorkers()
        current = yield self.admin.get("/admin/routers/web/rules")
        response = yield self.admin.put(
            "/admin/routers/web/rules", "/svc/hello => /#/static/b;\n",
            headers={"If-Match": current.headers.getRawHeaders("etag")[0]},
        )
        self.assertEqual(response.code, 200, response.body)
        workers = yield self.state()
        self.assertEqual([w["version"] for w in workers["workers"]], [2, 2])
        self.assertEqual(workers["version"], 2)
        bodies = yield self.requests(proxy, 20)
        self.assertEqual(bodies, [b"b /%d" % (i,) for i in range(20)])

    @defer.inlineCallbacks
    def test_sighupReplacesTheWorkers(self) -> Any:
        """
        A reload that changes the config starts new workers from it (the
        next generation) and drains the old ones.
        """
        proxy = yield self.startWorkers()
        old = list(proxy.workerPids)
        since = len(proxy.lines)
        yield self.reload(proxy, "workers: 2\n" + self.config(target="b"))
        for worker in (0, 1):
            yield proxy.waitFor(r"worker %d \(pid \d+\) running version 2" % (worker,), since)
        workers = yield self.state()
        self.assertEqual([w["generation"] for w in workers["workers"]], [1, 1])
        self.assertFalse(set(w["pid"] for w in workers["workers"]) & set(old))
        bodies = yield self.requests(proxy, 10)
        self.assertEqual(bodies, [b"b /%d" % (i,) for i in range(10)])

    @defer.inlineCallbacks
    def test_routerAddedByAReloadServedByTheWorkers(self) -> Any:
        """
        A router a reload adds: the supervisor binds its listener, the new
        workers accept on it (through their own SO_REUSEPORT sockets).
        """
        proxy = yield self.startWorkers()
        since = len(proxy.lines)
        yield self.reload(proxy, "workers: 2\n" + self.config(more=WEB2 % ("b",)))
        match = yield proxy.waitFor(r"router web2 listening on \S+ \(port (\d+)\)", since)
        for worker in (0, 1):
            yield proxy.waitFor(r"worker %d \(pid \d+\) running version 2" % (worker,), since)
        clients = yield defer.gatherResults([
            exchange(self, int(match.group(1)), REQUEST % (i,)) for i in range(10)
        ])
        self.assertEqual(
            [client.responses[0].body for client in clients],
            [b"b /%d" % (i,) for i in range(10)],
        )
        self.assertFalse([line for line in proxy.lines if "SO_REUSEPORT" in line])

    @defer.inlineCallbacks
    def test_sigtermDrainsEveryWorker(self) -> Any:
        """
        C{SIGTERM}: a request in flight in a worker is answered, then every
        process exits.
        """
        proxy = yield self.startWorkers(delay=1.0)
        # (pidfds: the workers are not this process's children)
        pidfds = [os.pidfd_open(pid) for pid in proxy.workerPids]
        for fd in pidfds:
            self.addCleanup(os.close, fd)
        port = proxy.ports["router web"]
        reached: defer.Deferred[None] = defer.Deferred()
        self.factories["a"].onHeaders = lambda proto, request: (
            None if reached.called else reached.callback(None)
        )
        inFlight = exchange(self, port, REQUEST % (1,))
        # Once the request reached an upstream, it is in flight in a worker
        # (the upstream answers a second later).
        yield reached
        proxy.signal("TERM")
        client = yield inFlight
        self.assertEqual(client.responses[0].status, 200)
        self.assertEqual(client.responses[0].body, b"a /1")
        yield proxy.ended
        import select

        # Each worker exits (its pidfd becomes readable), within 10 s.
        for fd in pidfds:
            self.assertEqual(select.select([fd], [], [], 10)[0], [fd])


class FreshReactorTests(SynchronousTestCase):
    """
    What a worker does first, in a child Python (it replaces the global
    reactor, which this process's tests run on).
    """

    def test_noMeshproxyModuleKeepsTheForkedReactor(self) -> None:
        """
        After everything C{makeService} imports, L{installFreshReactor}
        makes a new global reactor of the same kind, and no meshproxy,
        treq or Twisted module holds the old one (only klein's app module
        does, for C{Klein.run}, which workers never call).
        """
        import subprocess
        import sys

        script = (
            "import sys\n"
            "from meshproxy.tap import Options, makeService\n"
            "o = Options(); o.parseOptions([])\n"
            "from twisted.internet import reactor as old\n"
            "makeService(o)\n"
            "from meshproxy.workers.worker import installFreshReactor\n"
            "new = installFreshReactor()\n"
            "from twisted.internet import reactor\n"
            "assert reactor is new and new is not old and type(new) is type(old)\n"
            "print(sorted(n for n, m in list(sys.modules.items())\n"
            "             if m is not None and getattr(m, 'reactor', None) is old))\n"
        )
        here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        result = subprocess.run(
            [sys.executable, "-c", script], cwd=here,
            env={**os.environ, "PYTHONPATH": here}, capture_output=True, text=True, timeout=60,
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(result.stdout.strip().splitlines()[-1], "['klein._app']")
