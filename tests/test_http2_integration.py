"""
HTTP/2 from real clients on loopback: curl with prior knowledge (h2c) on the
plain listener, curl choosing h2 by ALPN on a TLS listener, and a bounded
h2load run with many streams per connection, each through meshproxy to an
HTTP/1.1 backend.
"""

import os
import re
import shutil

from twisted.internet import defer
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SkipTest, TestCase

from meshproxy import certs
from tests.support import BackendFactory, exchange, listenBackend, startProxy


def _need(program):
    if shutil.which(program) is None:
        raise SkipTest(f"{program} is not installed")


class PriorKnowledgeTests(TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def proxy(self):
        self.backend = BackendFactory()
        backendPort = yield listenBackend(self, self.backend)
        port, _, self.runtime = yield startProxy(self, {"hello": [backendPort]})
        return port

    @defer.inlineCallbacks
    def curl(self, *args):
        _need("curl")
        out, err, code = yield getProcessOutputAndValue(
            "curl",
            ("-sS", "--max-time", "10", "-w", "\n%{http_code} %{http_version}", *args),
        )
        return code, out.decode("utf-8", "replace"), err.decode("utf-8", "replace")

    @defer.inlineCallbacks
    def test_curlPriorKnowledge(self):
        """
        curl speaking HTTP/2 from the first byte (h2c) on the listener that
        serves HTTP/1.1 gets its answer over HTTP/2; the backend sees
        HTTP/1.1.
        """
        port = yield self.proxy()
        code, out, err = yield self.curl(
            "--http2-prior-knowledge", "-H", "Host: hello", f"http://127.0.0.1:{port}/x?y"
        )
        self.assertEqual(code, 0, err)
        self.assertEqual(out, "ok /x?y\n200 2")
        [request] = self.backend.requests
        self.assertEqual(request.header(b"host"), b"hello")
        self.assertEqual(request.header(b"x-forwarded-proto"), b"http")

    @defer.inlineCallbacks
    def test_curlPostsABody(self):
        port = yield self.proxy()
        code, out, err = yield self.curl(
            "--http2-prior-knowledge", "-H", "Host: hello", "--data-binary", "x" * 100000,
            f"http://127.0.0.1:{port}/up",
        )
        self.assertEqual(code, 0, err)
        self.assertTrue(out.endswith("\n200 2"), out)
        [request] = self.backend.requests
        self.assertEqual(request.method, b"POST")
        self.assertEqual(request.body, b"x" * 100000)

    @defer.inlineCallbacks
    def test_severalStreamsOnOneConnection(self):
        """
        nghttp sends its requests as concurrent streams of one connection.
        (curl 7.88 cannot reuse a prior-knowledge connection, against any
        server.)
        """
        _need("nghttp")
        port = yield self.proxy()
        urls = [f"http://127.0.0.1:{port}/{i}" for i in range(3)]
        out, err, code = yield getProcessOutputAndValue(
            "nghttp", ("-nv", "-t", "10", "-H", ":authority: hello", *urls)
        )
        text = out.decode("utf-8", "replace")
        self.assertEqual(code, 0, text)
        self.assertEqual(text.count("] Connected"), 1, text)
        self.assertEqual(len(re.findall(r"recv \(stream_id=\d+\) :status: 200", text)), 3, text)
        self.assertEqual(sorted(r.url for r in self.backend.requests), [b"/0", b"/1", b"/2"])

    @defer.inlineCallbacks
    def test_http11StillServed(self):
        """
        The same listener still answers HTTP/1.1, and an HTTP/2.0 request
        line in HTTP/1 syntax with 505.
        """
        port = yield self.proxy()
        code, out, err = yield self.curl("-H", "Host: hello", f"http://127.0.0.1:{port}/a")
        self.assertEqual(out, "ok /a\n200 1.1")
        client = yield exchange(self, port, b"GET / HTTP/2.0\r\nHost: hello\r\n\r\n")
        self.assertEqual(client.responses[0].status, 505)

    @defer.inlineCallbacks
    def test_h2load(self):
        """
        A bounded h2load run, 4 connections of 20 concurrent streams, ends
        with every request answered 2xx and no error.
        """
        _need("h2load")
        port = yield self.proxy()
        out, err, code = yield getProcessOutputAndValue(
            "h2load",
            (
                "-n", "2000", "-c", "4", "-m", "20", "-T", "20",
                "-H", ":authority: hello",
                f"http://127.0.0.1:{port}/load",
            ),
        )
        text = out.decode("utf-8", "replace")
        self.assertEqual(code, 0, text + err.decode("utf-8", "replace"))
        match = re.search(
            r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
            r"(\d+) failed, (\d+) errored, (\d+) timeout",
            text,
        )
        self.assertIsNotNone(match, text)
        self.assertEqual(match.groups(), ("2000", "2000", "2000", "2000", "0", "0", "0"), text)
        self.assertIn("status codes: 2000 2xx", text)
        self.assertEqual(len(self.backend.requests), 2000)


class TLSTests(TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def test_curlChoosesH2ByALPN(self):
        """
        Over TLS, curl --http2 is answered over HTTP/2 (chosen by ALPN), and
        the backend hears of the https scheme.
        """
        _need("curl")
        ca = self.mktemp()
        certs.initAuthority(ca)
        web = certs.issue(ca, "web", dnsNames=("web.mesh.local",))
        backend = BackendFactory()
        backendPort = yield listenBackend(self, backend)
        port, _, _ = yield startProxy(
            self,
            None,
            config=f"""
admin: {{listen: "tcp:port=0:interface=127.0.0.1"}}
namers:
  - {{kind: static, prefix: /#/s, services: {{web.mesh.local: ["127.0.0.1:{backendPort}"]}}}}
routers:
  - name: web
    listen: "tcp:0:interface=127.0.0.1"
    rules: "/svc => /#/s;"
    tls:
      certificates:
        - {{cert: {web.cert}, key: {web.key}}}
""",
        )
        out, err, code = yield getProcessOutputAndValue(
            "curl",
            (
                "-sS", "--max-time", "10", "--http2",
                "--cacert", os.path.join(ca, "ca.pem"),
                "--resolve", f"web.mesh.local:{port}:127.0.0.1",
                "-w", "\n%{http_code} %{http_version}",
                f"https://web.mesh.local:{port}/secure",
            ),
        )
        self.assertEqual(code, 0, err)
        self.assertEqual(out.decode(), "ok /secure\n200 2")
        [request] = backend.requests
        self.assertEqual(request.header(b"x-forwarded-proto"), b"https")
        self.assertEqual(request.header(b"host"), b"web.mesh.local:%d" % (port,))
