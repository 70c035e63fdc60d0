"""
A real etcd for the tests: one member on loopback, in a temporary data
directory, on free ports, stopped and removed at the end of the test.

The tests that need it skip, saying why, when the C{etcd} binary is not
installed (Debian: C{apt-get install etcd-server}; C{.ci/run} installs it).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket

from twisted.internet import defer, protocol, reactor
from twisted.internet.task import deferLater
from twisted.trial.unittest import SkipTest

from meshproxy.etcd import EtcdClient, EtcdError, EtcdUnavailable, TLSFiles

ETCD = shutil.which("etcd")

#: Seconds etcd gets to answer after a start, and to exit after SIGTERM.
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0


def requireEtcd():
    """
    @raise SkipTest: when the etcd binary is not installed.
    """
    if ETCD is None:
        raise SkipTest(
            "etcd is not installed: these tests run a real etcd on loopback"
            " (Debian: apt-get install etcd-server; .ci/run installs it)"
        )


def freePorts(n):
    """
    C{n} distinct TCP ports free on 127.0.0.1 right now.
    """
    sockets = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def waitUntil(predicate, timeout=10.0, what="the condition", interval=0.005):
    """
    Wait, without blocking the reactor, until C{predicate()} is true.

    @return: a Deferred firing with C{predicate()}'s true value, or
        failing with L{AssertionError} naming C{what} after C{timeout}
        seconds.
    """

    async def wait():
        deadline = reactor.seconds() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if reactor.seconds() > deadline:
                raise AssertionError("timed out after %g s waiting for %s" % (timeout, what))
            await deferLater(reactor, interval, lambda: None)

    return defer.Deferred.fromCoroutine(wait())


class _EtcdProcess(protocol.ProcessProtocol):
    def __init__(self, log):
        self.log = log
        self.ended = defer.Deferred()
        self.status = None

    def outReceived(self, data):
        self.log.write(data)

    errReceived = outReceived

    def processEnded(self, reason):
        self.status = reason.value
        self.log.flush()
        self.ended.callback(None)


class EtcdServer:
    """
    One etcd member on 127.0.0.1.

    @ivar url: its client URL (C{http://127.0.0.1:PORT}, or C{https://}).
    @ivar dataDir: its data directory (kept across L{stop} and L{start},
        so that a restart finds its keys, leases and revisions).
    @ivar tls: the L{TLSFiles} a client needs, or L{None}.
    """

    def __init__(self, testCase, *, tls=None):
        """
        @param testCase: the test; its cleanup stops the process.
        @param tls: C{{"cert", "key", "ca", "clientCertAuth"}} to serve
            HTTPS with (C{ca} and C{clientCertAuth} optional), or L{None}.
        """
        requireEtcd()
        base = os.path.abspath(testCase.mktemp())
        os.makedirs(base)
        self.base = base
        self.dataDir = os.path.join(base, "data")
        self.logPath = os.path.join(base, "etcd.log")
        self.clientPort, self.peerPort = freePorts(2)
        self.serverTLS = tls
        scheme = "https" if tls else "http"
        self.url = "%s://127.0.0.1:%d" % (scheme, self.clientPort)
        self.tls = None
        if tls:
            self.tls = TLSFiles(ca=tls.get("ca"), cert=tls.get("clientCert"),
                                key=tls.get("clientKey"))
        self._process = None
        self._log = None
        testCase.addCleanup(self._cleanup)

    def args(self):
        peer = "http://127.0.0.1:%d" % (self.peerPort,)
        args = [
            ETCD,
            "--name", "test",
            "--data-dir", self.dataDir,
            "--listen-client-urls", self.url,
            "--advertise-client-urls", self.url,
            "--listen-peer-urls", peer,
            "--initial-advertise-peer-urls", peer,
            "--initial-cluster", "test=" + peer,
            "--initial-cluster-state", "new",
            "--logger", "zap",
            "--log-outputs", "stderr",
            # One member: elections are quick, and restarts too.
            "--heartbeat-interval", "10",
            "--election-timeout", "100",
        ]
        if self.serverTLS:
            args += ["--cert-file", self.serverTLS["cert"], "--key-file", self.serverTLS["key"]]
            if self.serverTLS.get("clientCertAuth"):
                args += ["--client-cert-auth", "--trusted-ca-file", self.serverTLS["ca"]]
        return args

    @property
    def running(self):
        return self._process is not None

    @defer.inlineCallbacks
    def start(self):
        """
        Start the process and wait until it answers requests.

        @return: a Deferred firing once etcd answers, or failing with its
            log when it exits or stays silent for L{START_TIMEOUT} s.
        """
        assert self._process is None, "etcd is running already"
        self._log = open(self.logPath, "ab")
        process = self._process = _EtcdProcess(self._log)
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        reactor.spawnProcess(process, ETCD, self.args(), env=env, path=self.base)
        probe = EtcdClient([self.url], reactor=reactor, tls=self.tls, timeout=1.0)
        try:
            deadline = reactor.seconds() + START_TIMEOUT
            while True:
                if process.ended.called:
                    self._process = None
                    raise AssertionError("etcd exited at start:\n" + self.logTail())
                try:
                    yield probe.range("/probe/", prefix=True)
                    break
                except EtcdUnavailable:
                    pass
                except EtcdError:
                    # It answered (authentication is on): it serves.
                    break
                if reactor.seconds() > deadline:
                    raise AssertionError(
                        "etcd did not answer within %g s:\n%s" % (START_TIMEOUT, self.logTail())
                    )
                yield deferLater(reactor, 0.02, lambda: None)
        finally:
            yield probe.close()

    @defer.inlineCallbacks
    def stop(self):
        """
        Stop the process (SIGTERM, then SIGKILL after L{STOP_TIMEOUT} s) and
        wait for its exit; the data directory stays.
        """
        process, self._process = self._process, None
        if process is None:
            return
        if not process.ended.called:
            try:
                process.transport.signalProcess("TERM")
            except Exception:
                pass
            timer = reactor.callLater(STOP_TIMEOUT, _kill, process)
            yield process.ended
            if timer.active():
                timer.cancel()
        if self._log is not None:
            self._log.close()
            self._log = None

    def restart(self):
        """
        Stop and start again, on the same data directory and ports.
        """
        d = self.stop()
        d.addCallback(lambda _: self.start())
        return d

    def logTail(self, lines=40):
        try:
            with open(self.logPath, "rb") as f:
                return b"".join(f.readlines()[-lines:]).decode("utf-8", "replace")
        except OSError:
            return "(no log)"

    @defer.inlineCallbacks
    def _cleanup(self):
        yield self.stop()
        shutil.rmtree(self.base, ignore_errors=True)

    def client(self, testCase, **kwargs):
        """
        A client of this etcd, closed at the end of the test.
        """
        kwargs.setdefault("timeout", 2.0)
        kwargs.setdefault("tls", self.tls)
        client = EtcdClient([self.url], reactor=reactor, **kwargs)
        testCase.addCleanup(client.close)
        return client


def _kill(process):
    if not process.ended.called:
        try:
            process.transport.signalProcess(signal.SIGKILL)
        except Exception:
            pass


@defer.inlineCallbacks
def gateway(url, path, body, token=None, tls=None):
    """
    One raw call to etcd's JSON gateway (what the documented curl recipes
    do), for setting etcd up in tests.

    @return: a Deferred firing with C{(status, decoded answer)}.
    """
    import treq
    from twisted.web.client import Agent, HTTPConnectionPool

    from meshproxy.etcd import _tlsPolicy

    pool = HTTPConnectionPool(reactor, persistent=False)
    args = {"pool": pool}
    if tls is not None:
        args["contextFactory"] = _tlsPolicy(tls)
    client = treq.client.HTTPClient(Agent(reactor, **args))
    headers = {b"Content-Type": [b"application/json"]}
    if token:
        headers[b"Authorization"] = [token.encode("ascii")]
    response = yield client.post(url + path, data=json.dumps(body).encode(), headers=headers)
    content = yield response.content()
    return response.code, json.loads(content)


@defer.inlineCallbacks
def enableAuth(server, rootPassword, users):
    """
    Turn authentication on, as an operator would through the gateway: a
    C{root} user, then one user and role per entry of C{users}, each with
    read and write access to its prefix.

    @param users: user name -> C{(password, keyPrefix)}.
    """
    import base64

    def b64(text):
        return base64.b64encode(text.encode()).decode()

    from meshproxy.etcd import prefixEnd

    calls = [
        ("/v3/auth/user/add", {"name": "root", "password": rootPassword}),
        ("/v3/auth/role/add", {"name": "root"}),
        ("/v3/auth/user/grant", {"user": "root", "role": "root"}),
    ]
    for name, (password, keyPrefix) in users.items():
        role = name + "-role"
        calls += [
            ("/v3/auth/user/add", {"name": name, "password": password}),
            ("/v3/auth/role/add", {"name": role}),
            (
                "/v3/auth/role/grant",
                {
                    "name": role,
                    "perm": {
                        "permType": "READWRITE",
                        "key": b64(keyPrefix),
                        "range_end": base64.b64encode(prefixEnd(keyPrefix)).decode(),
                    },
                },
            ),
            ("/v3/auth/user/grant", {"user": name, "role": role}),
        ]
    calls.append(("/v3/auth/enable", {}))
    for path, body in calls:
        status, answer = yield gateway(server.url, path, body, tls=server.tls)
        if status != 200 or "error" in answer:
            raise AssertionError("%s failed: %r" % (path, answer))
