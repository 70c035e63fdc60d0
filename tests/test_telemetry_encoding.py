"""
Tests for the Zipkin encoder's templates (meshproxy.telemetry.export.
ZipkinEncoder) against a plain reference: each span made into a dict and
written by C{json.dumps}, compared as parsed JSON over many varied requests
(text that needs escaping, non-ASCII, control characters, missing optional
fields, retries, gRPC); and for the exporter's own treq client, the URL and
endpoints it makes once.
"""

import email.message
import http.cookiejar
import json
import random
import urllib.request

from hyperlink import EncodedURL
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import URI

from meshproxy.balancing.node import Node
from meshproxy.config.telemetry import BatchConfig
from meshproxy.discovery.endpoints import Endpoint, formatAddress
from meshproxy.telemetry.export import (
    SpanExporter,
    ZipkinEncoder,
    _KeptEndpoints,
    _noCookies,
    _sentURL,
    zipkinJSON,
)
from meshproxy.telemetry.spans import RequestSpans, Span, TelemetryStats
from tests.test_telemetry_export import VARIED_REQUESTS, makeRequest, makeSpan, zipkinValidator


def referenceEndpoint(serviceName, ip, port):
    """
    A Zipkin C{Endpoint} as the API defines it: only what is known, an
    IPv4-mapped IPv6 address as C{ipv4}, an IPv6 zone dropped, a host name
    (no field of the schema) left out.
    """
    endpoint = {}
    if serviceName:
        endpoint["serviceName"] = serviceName
    if ip:
        if ip.startswith("::ffff:") and "." in ip:
            endpoint["ipv4"] = ip[len("::ffff:"):]
        elif ":" in ip:
            endpoint["ipv6"] = ip.split("%")[0]
        elif ip.replace(".", "").isdigit():
            endpoint["ipv4"] = ip
    if port:
        endpoint["port"] = port
    return endpoint


def referenceSpan(span, serviceName=None):
    """
    One L{Span} as a Zipkin v2 span, built as a dict (what the encoder
    did before it wrote templates).
    """
    local = span.local
    written = {
        "traceId": span.traceId,
        "id": span.spanId,
        "kind": span.kind,
        "name": span.name,
        "timestamp": round(span.start * 1e6),
        "duration": max(1, round(span.duration * 1e6)),
        "localEndpoint": referenceEndpoint(serviceName or local[0], local[1], local[2]),
    }
    if span.parentId is not None:
        written["parentId"] = span.parentId
    if span.remote is not None:
        remote = referenceEndpoint(*span.remote)
        if remote:
            written["remoteEndpoint"] = remote
    tags = dict(span.tags)
    if span.error and "error" not in tags:
        tags["error"] = "true"
    if tags:
        written["tags"] = tags
    return written


def reference(items, serviceName=None):
    """
    The Zipkin C{ListOfSpans} of spans and requests' spans, through
    C{json.dumps} of dicts, parsed back.
    """
    spans = []
    for item in items:
        if isinstance(item, RequestSpans):
            spans.extend(referenceSpan(span, serviceName) for span in item.spans())
        else:
            spans.append(referenceSpan(item, serviceName))
    return json.loads(json.dumps(spans))


#: Text that JSON must escape or that is not ASCII.
AWKWARD = [
    'say "hi"',
    "back\\slash",
    "tab\there",
    "line\nbreak",
    "nul\x00",
    "bell\x07",
    "del\x7f",
    "caf\u00e9",
    "\u2028separator",
    "\U0001f600",
    "%s%d%%",
    "{}",
    "",
]


def randomRequest(rng, n):
    """
    A request's spans that differ from the others in every way the request
    path can make them (seeded: the same requests every run).
    """

    def text():
        return rng.choice(AWKWARD + ["plain", "web", "/#/fs/users"])

    def rawPath():
        path = rng.choice([b"/users/1", b"/", b"/a?b=c", b"/x%20y"])
        if rng.random() < 0.4:
            path += rng.choice(AWKWARD).encode("utf-8")
        if rng.random() < 0.1:
            path += b"\xff\xfe?q=\xff"
        return path

    tries = []
    for t in range(rng.choice([0, 1, 1, 1, 2, 3])):
        start = 1700000000.0 + rng.random()
        status = rng.choice([200, 204, 404, 499, 500, 503, 0])
        error = None
        if status == 0 or rng.random() < 0.1:
            error = rng.choice(["upstream-connect", "upstream-reset", 'odd "reason"'])
        address = rng.choice(
            ["10.0.0.2:8080", "10.0.0.3:80", "[2001:db8::2]:8443", "::ffff:10.0.0.9:0",
             "[fe80::1%eth0]:81", "users.internal:8080"]
        )
        end = start + rng.choice([0.0, 1e-7, 0.0004, 0.25, -0.001])
        tries.append(("%016x" % (n * 10 + t + 1), start, end, address, status, error))
    start = 1700000000.0 + rng.random() * 100
    grpc = None
    if rng.random() < 0.15:
        grpc = (rng.choice([0, 2, 14, 99]), rng.choice([None, "pkg.Svc", text()]),
                rng.choice([None, "Call", text()]), rng.random() < 0.5)
    host = rng.choice([None, b"users", b"h\xe9", b"a:80", b'"q"'])
    return makeRequest(
        traceId="%032x" % (n + 1),
        spanId="%016x" % (n + 1),
        parentId=rng.choice([None, "%016x" % (n + 7)]),
        start=start,
        end=start + rng.choice([0.0, 0.003, 1.5, -0.5]),
        method=rng.choice([b"GET", b"POST", b"DELETE", b"P\xe9"]),
        target=rawPath(),
        host=host,
        status=rng.choice([200, 200, 201, 404, 500, 502, 503, 0]),
        meshErr=rng.choice([None, None, "no-route", text()]),
        router=rng.choice(["web", "edge", text()]),
        name=rng.choice([None, "/#/fs/users", "/#/fs/users/", "/svc/" + text()]),
        peer=rng.choice([None, "10.0.0.7", "::1", "fe80::1%eth0", "::ffff:10.1.2.3"]),
        identity=rng.choice([None, None, "spiffe://mesh/caller", text()]),
        tries=max(len(tries), rng.choice([0, 1, 2])),
        tryRecords=tries,
        serviceName=rng.choice(["meshproxy", "edge proxy"]),
        grpc=grpc,
    )


class ReferenceTests(SynchronousTestCase):
    """
    The encoder writes what the reference writes, as JSON.
    """

    def setUp(self):
        self.validator = zipkinValidator()
        rng = random.Random(11)
        self.requests = [randomRequest(rng, n) for n in range(600)]

    def test_variedRequests(self):
        """
        Each of the varied requests of the export tests, alone, by a fresh
        encoder and by one that kept its templates.
        """
        kept = ZipkinEncoder()
        for record in VARIED_REQUESTS:
            expected = reference([record])
            self.assertEqual(json.loads(zipkinJSON([record])), expected)
            self.assertEqual(json.loads(kept.encode([record])), expected)

    def test_randomRequests(self):
        """
        Random requests, one batch at a time through one encoder (templates
        kept from batch to batch), and all in one batch through another;
        every body is valid Zipkin.
        """
        kept = ZipkinEncoder()
        for record in self.requests:
            body = kept.encode([record])
            self.assertEqual(json.loads(body), reference([record]), record)
            self.validator.validate(json.loads(body))
        self.assertEqual(json.loads(ZipkinEncoder().encode(self.requests)),
                         reference(self.requests))

    def test_serviceNameOverride(self):
        """
        With a service name of its own, the encoder writes it as every
        span's local service, whatever the requests say.
        """
        body = ZipkinEncoder("edge").encode(self.requests[:100])
        self.assertEqual(json.loads(body), reference(self.requests[:100], "edge"))

    def test_spansAndRequestsMixed(self):
        """
        Spans and requests' spans in one batch come out in their order.
        """
        items = [makeSpan(), self.requests[0], makeSpan(name="caf\u00e9 \"x\"", tags={}),
                 self.requests[1], makeSpan(parentId="00f067aa0ba902b7", remote=None)]
        self.assertEqual(json.loads(ZipkinEncoder().encode(items)), reference(items))

    def test_boundedTemplates(self):
        """
        Past its bounds, the encoder forgets its routes, endpoints, peers
        and the statuses it kept the JSON of, and writes the same JSON.
        """
        encoder = ZipkinEncoder()
        encoder.MAX_ROUTES = 3
        encoder.MAX_ENDPOINTS = 2
        encoder.MAX_STATUSES = 2
        encoder.MAX_PATHS = 2
        for record in self.requests[:200]:
            self.assertEqual(json.loads(encoder.encode([record])), reference([record]))
        self.assertLessEqual(len(encoder._routes), 3)
        self.assertLessEqual(len(encoder._paths), 2)
        self.assertLessEqual(encoder._upstreamCount, 2)
        self.assertLessEqual(len(encoder._peers), 2)
        self.assertLessEqual(len(encoder._tryStatuses), 2)
        for route in encoder._routes.values():
            self.assertLessEqual(len(route[4]), 2)

    def test_routesOneAfterAnother(self):
        """
        Requests of different routes one after the other (each compared
        with the route of the request before it: the method and Host by
        their bytes, which are new for each request, the names by identity)
        are each written with their own route, whether the route before
        matched or not.
        """
        encoder = ZipkinEncoder()
        for method, host, name, router in [
            (b"GET", b"a", "/#/fs/a", "web"),
            (b"GET", b"a", "/#/fs/a", "web"),
            (b"GET", b"b", "/#/fs/a", "web"),
            (b"POST", b"b", "/#/fs/a", "web"),
            (b"POST", b"b", "/#/fs/b", "web"),
            (b"POST", b"b", "".join(["/#/fs/", "b"]), "web"),
            (b"POST", b"b", "/#/fs/b", "edge"),
            (b"POST", None, "/#/fs/b", "edge"),
            (b"POST", None, None, "edge"),
            (b"GET", b"a", "/#/fs/a", "web"),
        ]:
            record = makeRequest(method=bytes(bytearray(method)),
                                 host=None if host is None else bytes(bytearray(host)),
                                 name=name, router=router)
            self.assertEqual(json.loads(encoder.encode([record])), reference([record]))
        self.assertEqual(len(encoder._routes), 7)

    def test_tryEndpointAsNode(self):
        """
        A try's endpoint given as its balancer node (as the request path
        records it) is written as its address would be, by the encoder
        (which keeps what it wrote by node) and as spans.
        """
        encoder = ZipkinEncoder()
        for host, port in [("10.0.0.2", 8080), ("2001:db8::2", 8443), ("users.internal", 80)]:
            node = Node(Endpoint(host, port))
            address = formatAddress(node.endpoint)
            for _ in range(2):
                for status in [200, 503]:
                    byNode, byAddress = [
                        makeRequest(status=status, tryRecords=[
                            ("00f067aa0ba902b7", 1700000000.1236, 1700000000.1259, endpoint,
                             status, None)])
                        for endpoint in (node, address)
                    ]
                    self.assertEqual(json.loads(encoder.encode([byNode])),
                                     reference([byAddress]))
                    self.assertEqual(json.loads(ZipkinEncoder().encode([byNode])),
                                     reference([byAddress]))
                    self.assertEqual([span.tags for span in byNode.spans()],
                                     [span.tags for span in byAddress.spans()])
                    self.assertEqual(byNode.spans()[1].remote, byAddress.spans()[1].remote)
            self.assertIn(node, encoder._upstreams[(encoder._routes[
                (b"GET", b"users", "/#/fs/users", "web", "meshproxy")][2], "/#/fs/users")])

    def test_pathsKept(self):
        """
        A target's path is written once and kept by its bytes (the query
        dropped), also for a path that needs escaping or is not UTF-8.
        """
        encoder = ZipkinEncoder()
        for target in [b"/a?x=1", b"/a?x=2", b'/q"\\\xff?y', b'/q"\\\xff?y', b"/a?x=1"]:
            record = makeRequest(target=target)
            self.assertEqual(json.loads(encoder.encode([record])), reference([record]))
        self.assertEqual(encoder._paths[b"/a?x=1"], "/a")
        self.assertEqual(encoder._paths[b'/q"\\\xff?y'], '/q\\"\\\\\ufffd')

    def test_longTargetsNotKept(self):
        """
        A target longer than MAX_KEPT_TARGET is written each time and not
        kept: a client choosing long targets does not grow what is kept.
        """
        from meshproxy.telemetry.spans import MAX_KEPT_TARGET

        encoder = ZipkinEncoder()
        for n in range(3):
            target = b"/" + b"x" * MAX_KEPT_TARGET + b"%d?q" % (n,)
            record = makeRequest(target=target)
            self.assertEqual(json.loads(encoder.encode([record])), reference([record]))
        self.assertEqual(encoder._paths, {})
        short = b"/" + b"y" * (MAX_KEPT_TARGET - 1)
        encoder.encode([makeRequest(target=short)])
        self.assertEqual(list(encoder._paths), [short])

    def test_longHostsAndMethodsNotKept(self):
        """
        A route whose method and Host are longer than MAX_KEPT_TARGET
        together is written each time and not kept.
        """
        from meshproxy.telemetry.spans import MAX_KEPT_TARGET

        encoder = ZipkinEncoder()
        long = b"h" * MAX_KEPT_TARGET
        for record in [
            makeRequest(host=long),
            makeRequest(host=long + b"2"),
            makeRequest(method=b"M" * MAX_KEPT_TARGET),
        ]:
            self.assertEqual(json.loads(encoder.encode([record])), reference([record]))
        self.assertEqual(encoder._routes, {})
        record = makeRequest(host=b"h" * (MAX_KEPT_TARGET - 3), method=b"GET")
        self.assertEqual(json.loads(encoder.encode([record])), reference([record]))
        self.assertEqual(len(encoder._routes), 1)

    def test_statusesOfOneRoute(self):
        """
        Requests of one route answered with different statuses (each part
        kept by status) are each written with their own status, by one
        encoder; so are their tries.
        """
        encoder = ZipkinEncoder()
        for status in [200, 404, 200, 302, 404, 499, 204, 200]:
            for tryStatus in [status, 201]:
                record = makeRequest(
                    status=status,
                    tryRecords=[("00f067aa0ba902b7", 1700000000.1236, 1700000000.1259,
                                 "10.0.0.2:8080", tryStatus, None)],
                )
                self.assertEqual(json.loads(encoder.encode([record])), reference([record]))
        self.assertEqual(len(encoder._routes), 1)

    def test_noPeerKept(self):
        """
        A request without a peer address is written without a remote
        endpoint, also once that is kept.
        """
        encoder = ZipkinEncoder()
        for _ in range(2):
            record = makeRequest(peer=None)
            written = json.loads(encoder.encode([record]))
            self.assertEqual(written, reference([record]))
            self.assertNotIn("remoteEndpoint", written[0])
        self.assertEqual(encoder._peers, {None: ""})

    def test_microsecondsRoundedHalfToEven(self):
        """
        Times are rounded to whole microseconds as C{round} does, a half to
        the even neighbour (C{int(x + 0.5)} would write 1 more for half of
        these).
        """
        for start, written in [(1700000000.0000005, 1700000000000000),
                               (1700000000.0000014, 1700000000000002),
                               (1700000000.0000024, 1700000000000002)]:
            record = makeRequest(
                start=start, end=start + 0.001,
                tryRecords=[("00f067aa0ba902b7", start, start + 0.001, "10.0.0.2:8080", 200,
                             None)],
            )
            spans = json.loads(ZipkinEncoder().encode([record]))
            self.assertEqual([span["timestamp"] for span in spans], [written, written])
            self.assertEqual(spans, reference([record]))

    def test_referenceHasTeeth(self):
        """
        The reference tells a wrong span from a right one.
        """
        record = makeRequest()
        wrong = json.loads(zipkinJSON([record]))
        wrong[1]["tags"]["mesh.endpoint"] = "10.0.0.9:1"
        self.assertNotEqual(wrong, reference([record]))
        self.assertEqual(json.loads(zipkinJSON([record])), reference([record]))


class SentURLTests(SynchronousTestCase):
    """
    L{_sentURL}: the URL treq is given, its URI form made once.
    """

    def test_sameText(self):
        """
        treq writes a request's URL as C{to_uri().to_text()}: the same text
        as for the URL given as text, IDNA and percent-encoding included.
        """
        for url in [
            "http://127.0.0.1:9411/api/v2/spans",
            "https://collector.example/v1/traces",
            "http://b\u00fccher.example:4318/v1/tr\u00e4ces?x=\u00e9",
        ]:
            sent = _sentURL(url)
            expected = EncodedURL.from_text(url).to_uri().to_text()
            self.assertEqual(sent.to_uri().to_text(), expected)
            self.assertIs(sent.to_uri(), sent)
            self.assertIs(sent.to_text(), sent.to_text())

    def test_noURIForm(self):
        """
        A URL that has no URI form for hyperlink (an IPv6 literal) is given
        to treq as it is: each post fails, not the exporter's making.
        """
        url = "http://[::1]:9411/api/v2/spans"
        self.assertRaises(ValueError, lambda: EncodedURL.from_text(url).to_uri())
        self.assertEqual(_sentURL(url), url)

    def test_withPassword(self):
        """
        Asked for its text with the password, it still gives it.
        """
        sent = _sentURL("http://user:secret@127.0.0.1:9411/api/v2/spans")
        self.assertEqual(sent.to_text(with_password=True),
                         "http://user:secret@127.0.0.1:9411/api/v2/spans")
        self.assertEqual(sent.to_text(), "http://user:@127.0.0.1:9411/api/v2/spans")


class KeptEndpointsTests(SynchronousTestCase):
    """
    L{_KeptEndpoints}: an agent's endpoints, made once per collector.
    """

    def test_oneEndpointPerCollector(self):
        """
        Requests to one collector share one endpoint; another host, port or
        scheme has its own.
        """
        endpoints = _KeptEndpoints(Clock(), 5.0)
        first = endpoints.endpointForURI(URI.fromBytes(b"http://127.0.0.1:9411/api/v2/spans"))
        self.assertIsInstance(first, HostnameEndpoint)
        self.assertIs(
            endpoints.endpointForURI(URI.fromBytes(b"http://127.0.0.1:9411/other")), first)
        self.assertIsNot(
            endpoints.endpointForURI(URI.fromBytes(b"http://127.0.0.1:9412/api/v2/spans")),
            first)
        tls = endpoints.endpointForURI(URI.fromBytes(b"https://127.0.0.1:9411/api/v2/spans"))
        self.assertIsNot(tls, first)
        self.assertNotIsInstance(tls, HostnameEndpoint)

    def test_connectTimeout(self):
        """
        The endpoints connect within the exporter's timeout.
        """
        endpoint = _KeptEndpoints(Clock(), 2.5).endpointForURI(
            URI.fromBytes(b"http://127.0.0.1:9411/"))
        self.assertEqual(endpoint._timeout, 2.5)

    def test_bounded(self):
        """
        Past L{_KeptEndpoints.MAX_KEPT} collectors, the endpoints are made
        again.
        """
        endpoints = _KeptEndpoints(Clock(), 5.0)
        first = endpoints.endpointForURI(URI.fromBytes(b"http://127.0.0.1:1/"))
        for port in range(2, 2 + _KeptEndpoints.MAX_KEPT):
            endpoints.endpointForURI(URI.fromBytes(b"http://127.0.0.1:%d/" % (port,)))
        self.assertLessEqual(len(endpoints._endpoints), _KeptEndpoints.MAX_KEPT)
        self.assertIsNot(endpoints.endpointForURI(URI.fromBytes(b"http://127.0.0.1:1/")), first)


# Span is imported for the reference's isinstance dispatch to read plainly.
__all__ = ["Span", "reference", "referenceSpan"]


class _SetCookieAnswer:
    """
    What C{http.cookiejar} reads of an answer: its headers, with a cookie.
    """

    def info(self):
        message = email.message.Message()
        message["Set-Cookie"] = "session=1; Path=/"
        return message


class NoCookiesTests(SynchronousTestCase):
    """
    L{_noCookies}: the exporter's own client keeps no cookie and sends none.
    """

    def assertKeepsNone(self, jar):
        request = urllib.request.Request("http://127.0.0.1:9411/api/v2/spans")
        jar.extract_cookies(_SetCookieAnswer(), request)
        self.assertEqual(len(jar), 0)
        jar.add_cookie_header(request)
        self.assertFalse(request.has_header("Cookie"))

    def test_keepsNone(self):
        """
        A cookie the collector sets is not kept, or sent back (a standard
        jar keeps it: the test's answer does set one).
        """
        self.assertKeepsNone(_noCookies())
        standard = http.cookiejar.CookieJar()
        standard.extract_cookies(
            _SetCookieAnswer(), urllib.request.Request("http://127.0.0.1:9411/api/v2/spans"))
        self.assertEqual(len(standard), 1)

    def test_exportersOwnClient(self):
        """
        An exporter that makes its own treq client gives it such a jar, and
        gives each post one empty jar made once; with a client given, no
        cookies argument is added.
        """
        exporter = SpanExporter(
            "zipkin", "http://127.0.0.1:9411/api/v2/spans", ZipkinEncoder().encode,
            batch=BatchConfig(), gzip=False, timeout=5, stats=TelemetryStats(),
            reactor=MemoryReactorClock(),
        )
        self.assertKeepsNone(exporter._client._cookiejar)
        self.assertKeepsNone(exporter._cookies["cookies"])
        given = SpanExporter(
            "zipkin", "http://127.0.0.1:9411/api/v2/spans", ZipkinEncoder().encode,
            batch=BatchConfig(), gzip=False, timeout=5, stats=TelemetryStats(),
            reactor=MemoryReactorClock(), httpClient=object(),
        )
        self.assertEqual(given._cookies, {})
