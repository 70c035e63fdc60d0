"""
Twisted's TLS imported only by a process that uses it
(L{meshproxy.twistedtls}): the reactor C{twistd meshproxy} installs runs
without pyOpenSSL, and gets Twisted's TLS at its first C{ssl:} listen string
or HTTPS client, the same as Twisted's own import would have given it.

Each check that installs a reactor runs in a fresh interpreter (a child
process): this one has the reactor of trial, with Twisted's TLS.
"""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
from collections.abc import Generator
from typing import Any
from urllib.request import urlopen

from twisted.internet.defer import inlineCallbacks
from twisted.internet.error import ConnectionDone
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from meshproxy.transport.tlsfailure import isTLSFailure
from tests.test_reload_integration import ProcessTestCase

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: What a process without Twisted's TLS does not import.
TLS_MODULES = ("OpenSSL", "cryptography", "service_identity")


def runChild(script: str, *args: str) -> Any:
    """
    Run C{script} in a fresh interpreter, in this checkout, and return the
    JSON value its last line of output prints.
    """
    env = dict(os.environ, PYTHONPATH=_ROOT)
    done = subprocess.run(
        [sys.executable, "-c", script, *args],
        capture_output=True, text=True, env=env, cwd=_ROOT, timeout=60,
    )
    if done.returncode != 0:
        raise AssertionError("the child failed:\n%s%s" % (done.stdout, done.stderr))
    return json.loads(done.stdout.splitlines()[-1])


# What a process has of Twisted's TLS: its modules, whether the reactor and
# endpoints have TLS, and the reactor's class.
_STATE = """
def state(reactor):
    import sys
    from twisted.internet.interfaces import IReactorSSL
    from meshproxy.twistedtls import tlsAttached
    return {
        "imported": sorted(m for m in %r if m in sys.modules),
        "attached": tlsAttached(),
        "reactorSSL": IReactorSSL.providedBy(reactor),
        "reactor": type(reactor).__name__,
    }
""" % (TLS_MODULES,)


class InstallTests(SynchronousTestCase):
    """
    L{installReactor} installs meshproxy's reactor without Twisted's TLS,
    unless there is nothing to save.
    """

    def test_installedWithoutPyOpenSSL(self) -> None:
        """
        The reactor (and C{twisted.internet.endpoints}) is imported without
        pyOpenSSL, cryptography or service_identity; the reactor is
        meshproxy's (epoll), without C{IReactorSSL} until TLS is attached.
        """
        result = runChild(_STATE + """
import json
from meshproxy.twistedtls import installReactor
reactor = installReactor()
import twisted.internet.endpoints, twisted.internet.reactor
print(json.dumps([state(reactor), reactor is twisted.internet.reactor]))
""")
        self.assertEqual(result, [
            {"imported": [], "attached": False, "reactorSSL": False, "reactor": "MeshReactor"},
            True,
        ])

    def test_installedReactorKept(self) -> None:
        """
        A reactor installed before (C{twistd --reactor}, trial) is kept,
        with Twisted's TLS.
        """
        result = runChild(_STATE + """
import json
from twisted.internet import reactor as before
from meshproxy.twistedtls import installReactor
print(json.dumps([state(installReactor()), installReactor() is before]))
""")
        self.assertEqual(result[1], True)
        self.assertEqual(result[0]["attached"], True)
        self.assertEqual(result[0]["reactorSSL"], True)

    def test_pyOpenSSLImportedAlready(self) -> None:
        """
        When pyOpenSSL is imported already, there is nothing to save: the
        reactor (meshproxy's still) is imported with Twisted's TLS.
        """
        result = runChild(_STATE + """
import json
import OpenSSL
from meshproxy.twistedtls import installReactor
print(json.dumps(state(installReactor())))
""")
        self.assertEqual(result["attached"], True)
        self.assertEqual(result["reactorSSL"], True)
        self.assertEqual(result["reactor"], "MeshReactor")


class WithoutPyOpenSSLTests(SynchronousTestCase):
    """
    L{withoutPyOpenSSL} imports modules as on a Python without pyOpenSSL.
    """

    def test_hiddenWithinOnly(self) -> None:
        """
        Within it, importing pyOpenSSL fails (so AMP imports without its
        STARTTLS); after it, pyOpenSSL imports again.
        """
        result = runChild("""
import json
from meshproxy.twistedtls import withoutPyOpenSSL
with withoutPyOpenSSL():
    try:
        import OpenSSL
    except ImportError:
        hidden = True
    else:
        hidden = False
    from twisted.protocols import amp
import OpenSSL.SSL
print(json.dumps([hidden, amp.ssl is None, OpenSSL.SSL.__name__]))
""")
        self.assertEqual(result, [True, True, "OpenSSL.SSL"])

    def test_nothingHiddenOnceImported(self) -> None:
        """
        Once pyOpenSSL is imported, there is nothing to save: modules
        imported within it get their TLS.
        """
        result = runChild("""
import json
import OpenSSL
from meshproxy.twistedtls import withoutPyOpenSSL
with withoutPyOpenSSL():
    from twisted.protocols import amp
print(json.dumps(amp.ssl is not None))
""")
        self.assertEqual(result, True)


# The names of posixbase and endpoints (what each is: its module and
# qualified name), after the reactor's installation, lean (and TLS attached)
# or as Twisted's own import makes it.
_NAMES = """
import json, sys
if sys.argv[1] == "lean":
    from meshproxy.twistedtls import attachTLS, installReactor
    reactor = installReactor()
    attachTLS()
    attachTLS()
else:
    from twisted.internet import reactor
    import twisted.internet.endpoints
from twisted.internet import endpoints, posixbase
from twisted.internet.interfaces import IReactorSSL

def names(module):
    return {
        k: "%s.%s" % (getattr(v, "__module__", None) or getattr(v, "__name__", "?"),
                      getattr(v, "__qualname__", type(v).__name__))
        for k, v in vars(module).items() if not k.startswith("__")
    }

print(json.dumps({"posixbase": names(posixbase), "endpoints": names(endpoints),
                  "reactorSSL": IReactorSSL.providedBy(reactor)}))
"""


class AttachTests(SynchronousTestCase):
    """
    L{attachTLS} gives the reactor and the endpoints what Twisted's own
    import gives them, at the first use of Twisted's TLS.
    """

    def test_sameAsTwistedsImport(self) -> None:
        """
        Once TLS is attached (twice: the second does nothing), the names of
        C{twisted.internet.posixbase} and C{twisted.internet.endpoints} are
        those Twisted's import with pyOpenSSL gives them, and the reactor
        provides C{IReactorSSL}. (A new name in a new Twisted fails this
        test, rather than being left out.)
        """
        lean = runChild(_NAMES, "lean")
        full = runChild(_NAMES, "full")
        self.assertEqual(lean, full)
        self.assertEqual(lean["reactorSSL"], True)
        self.assertEqual(
            lean["endpoints"]["TLSMemoryBIOFactory"],
            "twisted.protocols.tls.TLSMemoryBIOFactory",
        )

    def certificate(self) -> tuple[str, str]:
        """
        A CA and a certificate for 127.0.0.1 it signed.

        @return: the certificate's and its key's paths.
        """
        from meshproxy.certs import initAuthority, issue

        directory = os.path.abspath(self.mktemp())
        initAuthority(directory)
        issued = issue(directory, "local", ips=("127.0.0.1",))
        return issued.cert, issued.key

    def test_sslListenStringAttaches(self) -> None:
        """
        An C{ssl:} listen string (Twisted's TLS) attaches TLS before its
        endpoint is built: a client gets a TLS connection to it, in a
        process that did not import Twisted's HTTP client.
        """
        cert, key = self.certificate()
        result = runChild(_STATE + """
import json, socket, ssl, sys
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.threads import deferToThread
from meshproxy.twistedtls import installReactor
reactor = installReactor()
before = state(reactor)

from twisted.internet.endpoints import serverFromString
from meshproxy.listeners import _endpointString

class Hello(Protocol):
    def connectionMade(self):
        self.transport.write(b"hello")
        self.transport.loseConnection()

def fetch(port):
    context = ssl.create_default_context(cafile=sys.argv[3])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            return tls.recv(100).decode()

out = {}
def done(result):
    out["read"] = result
    reactor.stop()
def failed(f):
    out["error"] = str(f.value)
    reactor.stop()

listen = "ssl:0:interface=127.0.0.1:privateKey=%s:certKey=%s" % tuple(sys.argv[1:3])
listen = _endpointString(listen)
d = serverFromString(reactor, listen).listen(Factory.forProtocol(Hello))
d.addCallback(lambda port: deferToThread(fetch, port.getHost().port))
d.addCallbacks(done, failed)
reactor.callLater(30, reactor.stop)
reactor.run()
print(json.dumps([before, state(reactor), out, "twisted.web.client" in sys.modules]))
""", key, cert, os.path.join(os.path.dirname(cert), "ca.pem"))
        before, after, out, webClient = result
        self.assertEqual(before["imported"], [])
        self.assertEqual(before["attached"], False)
        self.assertEqual(out, {"read": "hello"})
        self.assertEqual(after["attached"], True)
        self.assertEqual(after["reactorSSL"], True)
        self.assertFalse(webClient)

    def test_httpsClientAttaches(self) -> None:
        """
        Importing Twisted's HTTP client (treq does) attaches TLS first: an
        HTTPS request through treq (C{endpoints.wrapClientTLS}) gets its
        answer.
        """
        cert, key = self.certificate()
        result = runChild(_STATE + """
import json, ssl, sys, threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from meshproxy.twistedtls import installReactor
reactor = installReactor()
before = state(reactor)

class Hello(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "5")
        self.end_headers()
        self.wfile.write(b"hello")
    def log_message(self, *args):
        pass

server = HTTPServer(("127.0.0.1", 0), Hello)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(sys.argv[2], sys.argv[1])
server.socket = context.wrap_socket(server.socket, server_side=True)
threading.Thread(target=server.serve_forever, daemon=True).start()

import treq
from treq.client import HTTPClient
from twisted.internet.ssl import Certificate
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS
imported = state(reactor)
with open(sys.argv[3], "rb") as f:
    policy = BrowserLikePolicyForHTTPS(trustRoot=Certificate.loadPEM(f.read()))
client = HTTPClient(Agent(reactor, contextFactory=policy))
out = {}
def done(body):
    out["body"] = body.decode()
    reactor.stop()
def failed(f):
    out["error"] = str(f.value)
    reactor.stop()
url = "https://127.0.0.1:%d/" % (server.server_address[1],)
client.get(url).addCallback(treq.content).addCallbacks(done, failed)
reactor.callLater(30, reactor.stop)
reactor.run()
server.shutdown()
print(json.dumps([before, imported, out]))
""", key, cert, os.path.join(os.path.dirname(cert), "ca.pem"))
        before, imported, out = result
        self.assertEqual(before["attached"], False)
        self.assertEqual(imported["attached"], True)
        self.assertEqual(imported["reactorSSL"], True)
        self.assertEqual(out, {"body": "hello"})


_PLAIN = """\
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


class TwistdTests(ProcessTestCase):
    """
    The real C{twistd meshproxy} with a plain config runs without Twisted's
    TLS.
    """

    @inlineCallbacks
    def test_plainProcessMapsNoCryptography(self) -> Generator[Any, Any, None]:
        """
        A running C{twistd -n meshproxy} on a plain config, once ready, has
        not loaded cryptography's compiled library (which pyOpenSSL,
        service_identity and meshproxy's certificate reading need).
        """
        if not os.path.exists("/proc/self/maps"):
            raise SkipTest("needs /proc")
        proxy = yield self.startProxy(_PLAIN)
        with urlopen("http://127.0.0.1:%d/ready" % (proxy.ports["admin"],), timeout=10) as response:
            self.assertEqual(response.status, 200)
        with open("/proc/%d/maps" % (proxy.transport.pid,)) as f:
            maps = f.read()
        # (the maps read are the running proxy's: its Python extensions)
        self.assertIn("httptools", maps)
        self.assertNotIn("cryptography", maps)
        self.assertNotIn("_cffi_backend", maps)


class TLSFailureTests(SynchronousTestCase):
    """
    L{isTLSFailure} tells a TLS failure from another end of a connection,
    without importing pyOpenSSL.
    """

    def test_standardLibrarySSLError(self) -> None:
        """
        An error of the standard library's C{ssl} (meshproxy's TLS) is one.
        """
        self.assertTrue(isTLSFailure(ssl.SSLError(1, "handshake failure")))

    def test_pyOpenSSLError(self) -> None:
        """
        An error of pyOpenSSL (Twisted's TLS, on C{ssl:} listen strings left
        to it) is one.
        """
        from OpenSSL import SSL

        self.assertTrue(isTLSFailure(SSL.Error([("SSL routines", "", "bad")])))

    def test_otherErrors(self) -> None:
        """
        The end of a connection for another reason is not one.
        """
        self.assertFalse(isTLSFailure(ConnectionDone()))
        self.assertFalse(isTLSFailure(ValueError("no")))

    def test_withoutPyOpenSSL(self) -> None:
        """
        In a process without pyOpenSSL, telling does not import it.
        """
        result = runChild("""
import json, sys
from twisted.internet.error import ConnectionLost
from meshproxy.transport.tlsfailure import isTLSFailure
print(json.dumps([isTLSFailure(ConnectionLost()), "OpenSSL" in sys.modules]))
""")
        self.assertEqual(result, [False, False])
