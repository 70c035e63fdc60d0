"""
The TCP router with the real clients and servers people use, on loopback,
the proxy running in this process (as C{buildServices} wires it):

  - C{redis-cli} against two C{redis-server}s, one of them killed (the next
    connections avoid it);
  - C{psql} against PostgreSQL (Debian's C{/usr/lib/postgresql/15/bin},
    run as C{nobody} when the tests run as root: C{initdb} and
    C{postgres} refuse root),
    one of two instances killed;
  - SNI pass-through to two C{openssl s_server}s, each with its own
    certificate, checked with C{openssl s_client -servername}: the
    certificate the client sees is its backend's own; and a TCP router
    terminating TLS that routes by the SNI name;
  - the PROXY protocol both ways against HAProxy: HAProxy sending a version
    2 header to the router, and the router sending one to an HAProxy
    accepting it (which tells an HTTP router, accepting it too, who the
    client was); and curl's own header (C{--haproxy-protocol}) read
    before the TLS handshake of an HTTPS router.

Each test is skipped, saying why, when its programs are not installed;
C{.ci/run} installs them. Every process started is stopped at the end of
its test.
"""

import os
import shutil
import socket
import tempfile

from twisted.internet import defer, protocol, task
from twisted.internet.address import IPv4Address
from twisted.internet.error import ProcessDone
from twisted.trial.unittest import SkipTest, TestCase

from meshproxy.transport.proxyprotocol import formatHeader, parseHeader
from tests.support import BackendFactory, listenBackend, startProxy

POSTGRES_BIN = "/usr/lib/postgresql/15/bin"


def need(*programs):
    """
    The paths of C{programs}, or a skip naming the missing ones.
    """
    found = {p: shutil.which(p) or shutil.which(p, path="/usr/sbin:/usr/bin") for p in programs}
    missing = [p for p, path in found.items() if path is None]
    if missing:
        raise SkipTest(
            "%s not installed (Debian: redis-server redis-tools postgresql haproxy openssl)"
            % (", ".join(missing),)
        )
    return found


def freePort():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class _Child(protocol.ProcessProtocol):
    """
    A server process: its output kept (for a failure's message), its end
    awaited.
    """

    def __init__(self, name):
        self.name = name
        self.output = b""
        self.ended = defer.Deferred()
        self.status = None

    def outReceived(self, data):
        self.output = (self.output + data)[-8192:]

    errReceived = outReceived

    def processEnded(self, reason):
        self.status = reason.value
        self.ended.callback(None)


class RealTestCase(TestCase):
    timeout = 90

    def setUp(self):
        from twisted.internet import reactor

        self.reactor = reactor

    @defer.inlineCallbacks
    def spawn(self, name, argv, port, *, uid=None, gid=None, env=None, cwd=None):
        """
        Start a server and wait until it accepts connections on C{port}
        (at most 20 seconds); stopped (SIGTERM, then SIGKILL) at the end of
        the test.

        @return: the L{_Child}.
        """
        child = _Child(name)
        transport = self.reactor.spawnProcess(
            child, argv[0], argv, env=env if env is not None else {"PATH": os.environ["PATH"]},
            path=cwd, uid=uid, gid=gid,
        )
        child.transport = transport

        def stop():
            if child.status is None:
                try:
                    transport.signalProcess("TERM")
                except Exception:
                    pass
                killer = self.reactor.callLater(10, _kill, transport)
                return child.ended.addBoth(lambda _: killer.active() and killer.cancel())

        self.addCleanup(stop)
        yield self.waitForPort(port, child)
        return child

    @defer.inlineCallbacks
    def waitForPort(self, port, child=None, limit=20.0):
        started = self.reactor.seconds()
        while True:
            if child is not None and child.status is not None:
                self.fail("%s ended: %s\n%s" % (child.name, child.status, child.output.decode(
                    "utf-8", "replace")))
            try:
                s = socket.create_connection(("127.0.0.1", port), timeout=0.2)
            except OSError:
                if self.reactor.seconds() - started > limit:
                    self.fail("nothing listens on %d after %gs" % (port, limit))
                yield task.deferLater(self.reactor, 0.05, lambda: None)
            else:
                s.close()
                return

    @defer.inlineCallbacks
    def kill(self, child):
        """
        Kill a server at once (SIGKILL) and wait for its end.
        """
        child.transport.signalProcess("KILL")
        yield child.ended

    def runClient(self, argv, stdin=b"", env=None, limit=30):
        """
        Run a client to its end.

        @return: a Deferred firing with C{(out, err, code)}.
        """
        d = _runWithInput(self.reactor, argv, stdin, env or {"PATH": os.environ["PATH"]})
        return d.addTimeout(limit, self.reactor)

    @defer.inlineCallbacks
    def proxy(self, routers, services):
        """
        Run the proxy with C{routers} (YAML lines) and a static namer of
        C{services} (name → ports).

        @return: the ports of the routers, in order.
        """
        svc = ", ".join(
            '"%s": [%s]' % (name, ", ".join('"127.0.0.1:%d"' % p for p in ports))
            for name, ports in services.items()
        )
        config = (
            'admin: {listen: "tcp:port=0:interface=127.0.0.1"}\n'
            "namers:\n"
            "  - {kind: static, prefix: /#/static, services: {%s}}\n"
            "routers:\n" % (svc,)
        ) + routers
        first, admin, runtime = yield startProxy(self, None, config=config)
        self.runtime = runtime
        ports = [listener.port.getHost().port for listener in runtime.listeners]
        return ports


class _WithInput(protocol.ProcessProtocol):
    def __init__(self, stdin):
        self.stdin = stdin
        self.out = b""
        self.err = b""
        self.done = defer.Deferred()

    def connectionMade(self):
        if self.stdin:
            self.transport.write(self.stdin)
        self.transport.closeStdin()

    def outReceived(self, data):
        self.out += data

    def errReceived(self, data):
        self.err += data

    def processEnded(self, reason):
        code = 0 if reason.check(ProcessDone) else getattr(reason.value, "exitCode", -1)
        self.done.callback((self.out, self.err, code))


def _runWithInput(reactor, argv, stdin, env, uid=None, gid=None):
    proto = _WithInput(stdin)
    transport = reactor.spawnProcess(proto, argv[0], argv, env=env, uid=uid, gid=gid)

    def cancelled(d):
        transport.signalProcess("KILL")

    proto.done.addErrback(lambda f: f)
    result = defer.Deferred(cancelled)
    proto.done.chainDeferred(result)
    return result


def _kill(transport):
    try:
        transport.signalProcess("KILL")
    except Exception:
        pass


def _unprivileged():
    """
    The uid and gid PostgreSQL runs as: this process's own when it is not
    root, else C{nobody}'s.

    @raise SkipTest: as root without a C{nobody} user.
    """
    if os.geteuid() != 0:
        return None, None
    import pwd

    try:
        entry = pwd.getpwnam("nobody")
    except KeyError:
        raise SkipTest(
            "PostgreSQL refuses root, and there is no nobody user to run it as"
        ) from None
    return entry.pw_uid, entry.pw_gid


class RedisTests(RealTestCase):
    @defer.inlineCallbacks
    def redis(self, server):
        port = freePort()
        directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, directory, True)
        child = yield self.spawn(
            "redis-server",
            [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--protected-mode", "no", "--dir", directory],
            port,
        )
        return port, child

    @defer.inlineCallbacks
    def test_redisCliThroughTheRouter(self):
        """
        redis-cli's commands and a large value go through; once one of the
        two instances is killed, every new connection reaches the other.
        """
        tools = need("redis-server", "redis-cli")
        a, childA = yield self.redis(tools["redis-server"])
        b, childB = yield self.redis(tools["redis-server"])
        [listen] = yield self.proxy(
            "  - name: cache\n"
            "    protocol: tcp\n"
            '    listen: "tcp:0:interface=127.0.0.1"\n'
            "    destination: /svc/redis\n"
            "    rules: /svc => /#/static;\n",
            {"redis": [a, b]},
        )
        cli = [tools["redis-cli"], "-h", "127.0.0.1", "-p", str(listen)]
        # One connection: the commands read from stdin.
        out, err, code = yield self.runClient(cli, b"SET greeting hello\nGET greeting\nPING\n")
        self.assertEqual((code, out.split()), (0, [b"OK", b"hello", b"PONG"]), err)
        big = os.urandom(512 * 1024).hex().encode()
        out, err, code = yield self.runClient(
            cli, b"SET big " + big + b"\nSTRLEN big\n"
        )
        self.assertEqual(out.split(), [b"OK", str(len(big)).encode()], err)
        yield self.kill(childA)
        ports = []
        for _ in range(6):
            out, err, code = yield self.runClient(cli + ["CONFIG", "GET", "port"])
            self.assertEqual(code, 0, err)
            ports.append(int(out.split()[-1]))
        self.assertEqual(set(ports), {b})


class PostgresTests(RealTestCase):
    @defer.inlineCallbacks
    def test_psqlThroughTheRouter(self):
        """
        psql's queries (a large result included) go through the router;
        with one of two instances killed, the next connections reach the
        other.
        """
        initdb = os.path.join(POSTGRES_BIN, "initdb")
        postgres = os.path.join(POSTGRES_BIN, "postgres")
        if not os.path.exists(initdb):
            raise SkipTest("PostgreSQL 15 is not installed (Debian: postgresql)")
        tools = need("psql")
        uid, gid = _unprivileged()
        root = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, root, True)
        os.chmod(root, 0o755)
        data = os.path.join(root, "a")
        os.mkdir(data, 0o700)
        if uid is not None:
            os.chown(root, uid, gid)
            os.chown(data, uid, gid)
        env = {"PATH": os.environ["PATH"], "LC_ALL": "C", "HOME": root}
        out, err, code = yield _asUser(
            self.reactor, [initdb, "-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8",
                           "--no-sync"], env, uid, gid
        ).addTimeout(120, self.reactor)
        self.assertEqual(code, 0, err)
        copy = os.path.join(root, "b")
        shutil.copytree(data, copy, symlinks=True)
        if uid is not None:
            for base, dirs, files in os.walk(copy):
                for name in dirs + files:
                    os.lchown(os.path.join(base, name), uid, gid)
            os.chown(copy, uid, gid)
        instances = []
        for directory in (data, copy):
            port = freePort()
            child = yield self.spawn(
                "postgres",
                [postgres, "-D", directory, "-p", str(port), "-h", "127.0.0.1",
                 "-k", root, "-c", "fsync=off", "-c", "shared_buffers=16MB"],
                port, uid=uid, gid=gid, env=env,
            )
            instances.append((port, child))
        [(a, childA), (b, childB)] = instances
        [listen] = yield self.proxy(
            "  - name: db\n"
            "    protocol: tcp\n"
            '    listen: "tcp:0:interface=127.0.0.1"\n'
            "    destination: /#/static/pg\n"
            "    loadBalancer: {kind: roundRobin}\n",
            {"pg": [a, b]},
        )
        psql = [tools["psql"], "-X", "-A", "-t", "-h", "127.0.0.1", "-p", str(listen),
                "-U", "postgres", "-d", "postgres"]
        out, err, code = yield self.runClient(psql + ["-c", "select 40 + 2"], env=env)
        self.assertEqual((code, out.strip()), (0, b"42"), err)
        out, err, code = yield self.runClient(
            psql + ["-c", "select sum(length(repeat('x', i))) from generate_series(1, 2000) i;"
                          " select count(*) from generate_series(1, 200000)"], env=env,
        )
        self.assertEqual((code, out.split()), (0, [b"2001000", b"200000"]), err)
        yield self.kill(childA)
        seen = []
        for _ in range(4):
            out, err, code = yield self.runClient(
                psql + ["-c", "select current_setting('port')"], env=env
            )
            self.assertEqual(code, 0, err)
            seen.append(int(out.strip()))
        self.assertEqual(set(seen), {b})


def _asUser(reactor, argv, env, uid, gid):
    """
    Run C{argv} to its end as C{uid}/C{gid} (L{None}: as this process).
    """
    return _runWithInput(reactor, argv, b"", env, uid=uid, gid=gid)


class _Greeter(protocol.Protocol):
    def connectionMade(self):
        self.transport.write(self.factory.greeting)
        self.factory.peers.append(self)

    def dataReceived(self, data):
        self.factory.received.append(data)
        if data.endswith(b"\n"):
            self.transport.loseConnection()


class SNITests(RealTestCase):
    def certificates(self, *names):
        from meshproxy.certs import initAuthority, issue

        directory = self.mktemp()
        os.makedirs(directory)
        initAuthority(directory)
        return directory, {name: issue(directory, name) for name in names}

    @defer.inlineCallbacks
    def sClient(self, port, name, stdin=b"", extra=()):
        tools = need("openssl")
        argv = [tools["openssl"], "s_client", "-connect", "127.0.0.1:%d" % (port,)]
        argv += ["-noservername"] if name is None else ["-servername", name]
        argv += list(extra)
        out, err, code = yield self.runClient(argv, stdin)
        return out, err, code

    @defer.inlineCallbacks
    def test_passThroughToTwoBackends(self):
        """
        Two s_servers behind one router, chosen by the server name: the
        certificate s_client sees is its backend's own (the proxy does not
        terminate TLS); an unknown name or none is closed.
        """
        tools = need("openssl")
        directory, issued = self.certificates("a.example", "b.example")
        ports = {}
        for name, files in issued.items():
            port = freePort()
            yield self.spawn(
                "s_server " + name,
                [tools["openssl"], "s_server", "-accept", "127.0.0.1:%d" % (port,),
                 "-cert", files.cert, "-key", files.key, "-www", "-quiet"],
                port,
            )
            ports[name] = [port]
        [listen] = yield self.proxy(
            "  - name: tls\n"
            "    protocol: tcp\n"
            '    listen: "tcp:0:interface=127.0.0.1"\n'
            "    identifier: {kind: sni, prefix: /tls}\n"
            "    rules: /tls => /#/static;\n",
            ports,
        )
        for name in ("a.example", "b.example"):
            out, err, code = yield self.sClient(
                listen, name, b"GET / HTTP/1.0\r\n\r\n", ["-ign_eof", "-CAfile",
                                                          os.path.join(directory, "ca.pem")]
            )
            text = out.decode("utf-8", "replace")
            self.assertIn("subject=CN = %s" % (name,), text, err)
            self.assertIn("Verify return code: 0 (ok)", text)
            # The answer of s_server -www: its own page, through the proxy.
            self.assertIn("HTTP/1.0 200 ok", text)
        for name in ("c.example", None):
            out, err, code = yield self.sClient(listen, name)
            self.assertNotEqual(code, 0)
            self.assertNotIn(b"subject=", out)
        errors = {
            key[1]: value for key, value in self.runtime.routers["tls"].metrics._errors.items()
        }
        self.assertEqual((errors.get("no-route"), errors.get("no-sni")), (1, 1))

    @defer.inlineCallbacks
    def test_terminatedAndRoutedByName(self):
        """
        A TCP router terminating TLS routes by the name the client asked
        for: the certificate chosen for it, and the backend of that name.
        """
        directory, issued = self.certificates("a.example", "b.example")
        greeters = {}
        ports = {}
        for name in issued:
            factory = protocol.Factory.forProtocol(_Greeter)
            factory.greeting = ("hello from %s\n" % (name,)).encode()
            factory.peers, factory.received = [], []
            port = self.reactor.listenTCP(0, factory, interface="127.0.0.1")
            self.addCleanup(port.stopListening)
            self.addCleanup(lambda f=factory: [p.transport.abortConnection() for p in f.peers])
            greeters[name] = factory
            ports[name] = [port.getHost().port]
        certs = "".join(
            "        - {cert: %s, key: %s, sni: [%s]}\n" % (files.cert, files.key, name)
            for name, files in issued.items()
        )
        [listen] = yield self.proxy(
            "  - name: tls\n"
            "    protocol: tcp\n"
            '    listen: "tcp:0:interface=127.0.0.1"\n'
            "    identifier: {kind: sni}\n"
            "    rules: /svc => /#/static;\n"
            "    tls:\n"
            "      certificates:\n" + certs,
            ports,
        )
        for name in issued:
            out, err, code = yield self.sClient(
                listen, name, b"ping\n", ["-quiet", "-CAfile", os.path.join(directory, "ca.pem"),
                                         "-verify_return_error", "-verify_hostname", name]
            )
            self.assertIn(("hello from %s" % (name,)).encode(), out, err)
            self.assertEqual(greeters[name].received, [b"ping\n"])


HAPROXY_TCP = """\
global
    maxconn 100
defaults
    mode tcp
    timeout connect 2s
    timeout client 20s
    timeout server 20s
frontend front
    bind 127.0.0.1:%(port)d %(bind)s
    default_backend back
backend back
    server s1 127.0.0.1:%(upstream)d %(server)s
"""

HAPROXY_HTTP = """\
global
    maxconn 100
defaults
    mode http
    timeout connect 2s
    timeout client 20s
    timeout server 20s
frontend front
    bind 127.0.0.1:%(port)d accept-proxy
    option forwardfor
    default_backend back
backend back
    server s1 127.0.0.1:%(upstream)d send-proxy
"""


class _Recorder(protocol.Protocol):
    def connectionMade(self):
        self.factory.conns.append(self)
        self.received = b""

    def dataReceived(self, data):
        self.received += data
        if self.factory.waiting is not None and self.received.endswith(b"haproxy\r\n"):
            d, self.factory.waiting = self.factory.waiting, None
            d.callback(self)


class HAProxyTests(RealTestCase):
    @defer.inlineCallbacks
    def haproxy(self, template, **values):
        tools = need("haproxy")
        port = freePort()
        directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, directory, True)
        path = os.path.join(directory, "haproxy.cfg")
        with open(path, "w") as f:
            f.write(template % dict(values, port=port))
        yield self.spawn("haproxy", [tools["haproxy"], "-db", "-f", path], port)
        return port

    @defer.inlineCallbacks
    def test_haproxySendsToTheRouter(self):
        """
        HAProxy in front (C{send-proxy-v2}): the router takes the client's
        address from its header and passes it on in its own (version 1)
        header to the upstream.
        """
        factory = protocol.Factory.forProtocol(_Recorder)
        factory.conns, factory.waiting = [], defer.Deferred()
        backend = self.reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(backend.stopListening)
        self.addCleanup(lambda: [c.transport.abortConnection() for c in factory.conns])
        [listen] = yield self.proxy(
            "  - name: db\n"
            "    protocol: tcp\n"
            '    listen: "tcp:0:interface=127.0.0.1"\n'
            "    destination: /#/static/pg\n"
            "    proxyProtocol: {accept: true, from: [127.0.0.1/32], required: true, send: v1}\n",
            {"pg": [backend.getHost().port]},
        )
        front = yield self.haproxy(
            HAPROXY_TCP, upstream=listen, bind="", server="send-proxy-v2"
        )
        client = yield protocol.ClientCreator(self.reactor, protocol.Protocol).connectTCP(
            "127.0.0.1", front
        )
        self.addCleanup(client.transport.abortConnection)
        client.transport.write(b"hello through haproxy\r\n")
        conn = yield factory.waiting.addTimeout(20, self.reactor)
        header = parseHeader(conn.received)
        self.assertEqual(header.version, 1)
        self.assertEqual(header.source.port, client.transport.getHost().port)
        self.assertEqual(header.destination.port, front)
        self.assertEqual(conn.received[header.length :], b"hello through haproxy\r\n")

    @defer.inlineCallbacks
    def test_routerSendsToHAProxy(self):
        """
        The router sends a version 2 header to an HAProxy accepting it,
        which forwards the client's address (C{X-Forwarded-For}) and sends
        its own header to an HTTP router accepting it: the upstream learns
        of the client the first router was told of.
        """
        backend = BackendFactory()
        bport = yield listenBackend(self, backend)
        web = freePort()
        front = yield self.haproxy(HAPROXY_HTTP, upstream=web)
        edge, web = yield self.proxy(
            "  - name: edge\n"
            "    protocol: tcp\n"
            '    listen: "tcp:0:interface=127.0.0.1"\n'
            "    destination: /#/static/haproxy\n"
            "    proxyProtocol: {accept: true, from: [127.0.0.1/32], send: v2}\n"
            "  - name: web\n"
            '    listen: "tcp:%d:interface=127.0.0.1"\n'
            "    rules: /svc => /#/static;\n"
            "    proxyProtocol: {accept: true, from: [127.0.0.1/32], required: true}\n" % (web,),
            {"haproxy": [front], "hello": [bport]},
        )
        client = yield protocol.ClientCreator(self.reactor, _Collect).connectTCP(
            "127.0.0.1", edge
        )
        self.addCleanup(client.transport.abortConnection)
        source = IPv4Address("TCP", "203.0.113.7", 4242)
        client.transport.write(
            formatHeader(1, source, IPv4Address("TCP", "127.0.0.1", edge))
            + b"GET /who HTTP/1.1\r\nHost: hello\r\nConnection: close\r\n\r\n"
        )
        yield client.done.addTimeout(20, self.reactor)
        self.assertIn(b"200", client.data.split(b"\r\n")[0])
        [request] = backend.requests
        forwarded = request.header(b"x-forwarded-for")
        self.assertEqual(forwarded.split(b",")[0].strip(), b"203.0.113.7", request.headers)
        self.assertNotIn(b"127.0.0.1", forwarded)


class CurlTests(RealTestCase):
    @defer.inlineCallbacks
    def test_headerBeforeTLS(self):
        """
        curl's PROXY header (C{--haproxy-protocol}) comes before its TLS
        handshake: an HTTPS router requiring one reads it first and
        answers; without it, the connection is closed, counted.
        """
        from meshproxy.certs import initAuthority, issue

        tools = need("curl")
        directory = self.mktemp()
        os.makedirs(directory)
        initAuthority(directory)
        server = issue(directory, "localhost", ips=("127.0.0.1",))
        backend = BackendFactory()
        bport = yield listenBackend(self, backend)
        [listen] = yield self.proxy(
            "  - name: web\n"
            '    listen: "tcp:0:interface=127.0.0.1"\n'
            "    rules: /svc => /#/static;\n"
            "    tls: {certificates: [{cert: %s, key: %s}]}\n"
            "    proxyProtocol: {accept: true, from: [127.0.0.1/32], required: true}\n"
            % (server.cert, server.key),
            {"hello": [bport]},
        )
        curl = [tools["curl"], "-sS", "--noproxy", "*", "--cacert",
                os.path.join(directory, "ca.pem"), "-H", "Host: hello",
                "https://127.0.0.1:%d/through" % (listen,)]
        out, err, code = yield self.runClient(curl[:1] + ["--haproxy-protocol"] + curl[1:])
        self.assertEqual((code, out), (0, b"ok /through"), err)
        [request] = backend.requests
        self.assertEqual(request.header(b"x-forwarded-for"), b"127.0.0.1")
        out, err, code = yield self.runClient(curl)
        self.assertNotEqual(code, 0)
        self.assertEqual(len(backend.requests), 1)
        errors = self.runtime.routers["web"].metrics._errors
        self.assertEqual(errors[("web", "proxy-protocol-missing")], 1)


class _Collect(protocol.Protocol):
    def __init__(self):
        self.data = b""
        self.done = defer.Deferred()

    def dataReceived(self, data):
        self.data += data

    def connectionLost(self, reason):
        self.done.callback(None)

