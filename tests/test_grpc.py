"""
gRPC semantics on memory transports: an h2 client (the h2 library) calls
through the router to HTTP/1.1 upstreams that answer as a gRPC server
would over HTTP/1 (the status in chunked trailers, or in the head of a
trailers-only answer): classification by C{grpc-status} and its retries,
the answers meshproxy makes to gRPC callers, C{grpc-timeout}, and what the
metrics and the access log say of gRPC calls.
"""

import json
import os

from h2.events import DataReceived, ResponseReceived, TrailersReceived
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from meshproxy import grpc
from meshproxy.config import parseConfig
from meshproxy.resilience.classifiers import FAILURE, RETRYABLE, SUCCESS, Classifier
from meshproxy.resilience.interfaces import IClassifier
from meshproxy.telemetry.accesslog import GRPC_FIELDS, formatLine
from meshproxy.telemetry.metrics import RouteStats, exposition
from meshproxy.telemetry.observe import Tracer
from meshproxy.telemetry.spans import SUMMARY_FIELDS
from tests.test_http2_server import H2Harness

CONFIG = """\
namers:
  - {kind: static, prefix: /#/static, services: {hello: ["127.0.0.1:9001", "127.0.0.1:9002"]}}
routers:
  - name: web
    listen: "tcp:4140"
    rules: "/svc => /#/static;"
    timeouts: {total: 10s}
    loadBalancer: {kind: roundRobin}
    failureAccrual: {kind: none}
    classifier: %(classifier)s
%(extra)s"""

GRPC = "{kind: grpc}"


def config(classifier=GRPC, extra=""):
    return CONFIG % {"classifier": classifier, "extra": extra}


def call(path=b"/pkg.Greeter/Hello", extra=(), contentType=b"application/grpc"):
    """
    The header list of a gRPC call.
    """
    return [
        (b":method", b"POST"),
        (b":scheme", b"http"),
        (b":authority", b"hello"),
        (b":path", path),
        (b"content-type", contentType),
        (b"te", b"trailers"),
        *extra,
    ]


# A unary call's request body: one message of 3 bytes.
MESSAGE = b"\x00\x00\x00\x00\x03abc"

# What an upstream sends: a trailers-only answer (the status in the head),
# and a whole answer with its status in the trailers.
def trailersOnly(code, message=b""):
    extra = b"grpc-message: %s\r\n" % (message,) if message else b""
    return (
        b"HTTP/1.1 200 OK\r\ncontent-type: application/grpc\r\ngrpc-status: %d\r\n%s"
        b"Content-Length: 0\r\n\r\n" % (code, extra)
    )


def answer(code, body=MESSAGE):
    return (
        b"HTTP/1.1 200 OK\r\ncontent-type: application/grpc\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\ngrpc-status: %d\r\n\r\n"
        % (len(body), body, code)
    )


class Proxy:
    """
    An h2 client and the router, with the upstream connections the router
    made, in order.
    """

    def __init__(self, text):
        self.harness = H2Harness(text, ports=(9001, 9002))
        self.client = self.harness.h2()
        self.made = 0
        self.connections = []

    def upstream(self):
        """
        The next upstream connection the router asked for, connected: its
        protocol, transport and port.
        """
        clients = self.harness.reactor.tcpClients
        assert len(clients) > self.made, "no new upstream connection"
        port = clients[self.made][1]
        proto, transport = self.harness.upstream(self.made)
        self.made += 1
        self.connections.append((proto, transport))
        return proto, transport, port

    def answer(self, data):
        """
        Answer the request waiting on an upstream connection, new or
        pooled, with C{data}.
        """
        while len(self.harness.reactor.tcpClients) > self.made:
            self.upstream()
        for proto, transport in self.connections:
            if transport.value():
                transport.clear()
                proto.dataReceived(data)
                return
        raise AssertionError("no request waits upstream")

    def call(self, headers=None, body=MESSAGE):
        return self.client.request(call() if headers is None else headers, body=body)

    def node(self, port):
        [client] = [c for c in self.harness.router.clients if c.name == "/#/static/hello"]
        [node] = [n for n in client.balancer.nodes() if n.endpoint.port == port]
        return node

    def retries(self):
        return {
            reason: count
            for (router, reason), count in self.harness.metrics._retries.items()
            if router == "web"
        }

    def response(self, sid):
        self.client.pump()
        return self.client.response(sid)


class ClassifierTests(SynchronousTestCase):
    """
    The C{grpc} kind of L{Classifier}.
    """

    def test_interface(self):
        for kind in ("grpc", "nonRetryable5XX"):
            self.assertTrue(verifyObject(IClassifier, Classifier(kind)))
        self.assertTrue(Classifier("grpc").grpc)
        self.assertFalse(Classifier("allSuccessful").grpc)

    def test_verdicts(self):
        """
        OK is a success, UNAVAILABLE (by default) retryable, the codes that
        say the endpoint failed failures, the application's answers
        successes.
        """
        c = Classifier("grpc")
        self.assertEqual(c.retryableCodes, frozenset([grpc.UNAVAILABLE]))
        self.assertEqual(c.classifyGrpc(0), SUCCESS)
        self.assertEqual(c.classifyGrpc(14), RETRYABLE)
        for code in (2, 4, 13, 15, 99):
            self.assertEqual(c.classifyGrpc(code), FAILURE, code)
        for code in (1, 3, 5, 6, 7, 8, 9, 10, 11, 12, 16):
            self.assertEqual(c.classifyGrpc(code), SUCCESS, code)

    def test_retryableCodesByNameOrNumber(self):
        c = Classifier("grpc", retryableCodes=["RESOURCE_EXHAUSTED", 13])
        self.assertEqual(c.retryableCodes, frozenset([8, 13]))
        self.assertEqual(c.classifyGrpc(8), RETRYABLE)
        self.assertEqual(c.classifyGrpc(13), RETRYABLE)
        self.assertEqual(c.classifyGrpc(14), FAILURE)
        self.assertEqual(Classifier("grpc", retryableCodes=[]).classifyGrpc(14), FAILURE)

    def test_badCodes(self):
        for bad in (["unavailable"], [17], [True], ["14"]):
            self.assertRaises(ValueError, Classifier, "grpc", retryableCodes=bad)
        self.assertRaises(ValueError, Classifier, "nonRetryable5XX", retryableCodes=[14])

    def test_httpStatusAsNonRetryable5XX(self):
        c = Classifier("grpc", retryableStatusCodes=[503])
        self.assertEqual(c.classify(b"POST", 500, False, False), FAILURE)
        self.assertEqual(c.classify(b"POST", 503, False, False), FAILURE)
        self.assertEqual(c.classify(b"GET", 503, False, False), RETRYABLE)
        self.assertEqual(c.classify(b"GET", 502, False, False), FAILURE)
        self.assertEqual(c.classify(b"POST", 404, False, False), SUCCESS)


class GrpcHelperTests(SynchronousTestCase):
    def test_contentTypes(self):
        for value in (b"application/grpc", b"application/grpc+proto", b"Application/GRPC+json",
                      b"application/grpc;charset=utf-8"):
            self.assertTrue(grpc.isGrpc(value), value)
        for value in (None, b"", b"application/grpc-web", b"application/grpc-web+proto",
                      b"application/grpcx", b"text/plain", b"application/json"):
            self.assertFalse(grpc.isGrpc(value), value)

    def test_status(self):
        self.assertEqual(grpc.parseStatus(b"14"), 14)
        self.assertEqual(grpc.parseStatus(b" 0 "), 0)
        for bad in (b"", b"x", b"-1", b"1234", b"\xd9\xa1"):
            self.assertEqual(grpc.parseStatus(bad), grpc.UNKNOWN, bad)
        self.assertEqual(grpc.trailerStatus([(b"Grpc-Status", b"5")]), 5)
        self.assertEqual(grpc.trailerStatus(None), grpc.UNKNOWN)
        self.assertEqual(grpc.trailerStatus([(b"x", b"1")]), grpc.UNKNOWN)

    def test_responseStatus(self):
        g = [(b"content-type", b"application/grpc")]
        self.assertEqual(grpc.responseStatus(200, g), (None, True))
        self.assertEqual(grpc.responseStatus(200, [*g, (b"grpc-status", b"7")]), (7, True))
        self.assertEqual(grpc.responseStatus(503, g), (14, True))
        self.assertEqual(grpc.responseStatus(503, [(b"content-type", b"text/plain")]), (14, False))
        self.assertEqual(grpc.responseStatus(404, []), (12, False))
        self.assertEqual(grpc.responseStatus(200, []), (grpc.UNKNOWN, False))


class ClassificationTests(SynchronousTestCase):
    """
    Responses to gRPC calls judged by their C{grpc-status}.
    """

    def test_trailersOnlyUnavailableRetriedElsewhere(self):
        """
        A trailers-only UNAVAILABLE is retried on the other endpoint,
        although every gRPC call is a POST; the endpoint that answered it
        failed; the client sees only the second answer.
        """
        p = Proxy(config())
        sid = p.call()
        up1, t1, port1 = p.upstream()
        self.assertTrue(t1.value().startswith(b"POST /pkg.Greeter/Hello HTTP/1.1\r\n"))
        self.assertTrue(t1.value().endswith(MESSAGE))
        up1.dataReceived(trailersOnly(14, b"draining"))
        up2, t2, port2 = p.upstream()
        self.assertNotEqual(port1, port2)
        self.assertTrue(t2.value().endswith(MESSAGE))
        up2.dataReceived(answer(0))
        headers, body, trailers, ended = p.response(sid)
        self.assertEqual(headers[b":status"], b"200")
        self.assertEqual(body, MESSAGE)
        self.assertEqual(trailers, [(b"grpc-status", b"0")])
        self.assertTrue(ended)
        self.assertEqual(p.retries(), {"status": 1})
        self.assertEqual(p.node(port1).failures, 1)
        self.assertEqual(p.node(port2).successes, 1)

    def test_retryableCodesConfigured(self):
        """
        Only the codes configured are retried: RESOURCE_EXHAUSTED here, not
        UNAVAILABLE.
        """
        p = Proxy(config("{kind: grpc, retryableCodes: [RESOURCE_EXHAUSTED]}"))
        sid = p.call()
        up1, _, _ = p.upstream()
        up1.dataReceived(trailersOnly(8))
        up2, _, _ = p.upstream()
        up2.dataReceived(trailersOnly(14))
        headers, body, trailers, ended = p.response(sid)
        self.assertEqual(headers[b"grpc-status"], b"14")
        self.assertTrue(ended)
        self.assertEqual(p.retries(), {"status": 1})

    def test_notRetriedPastTheBudget(self):
        """
        The retry budget bounds gRPC retries as any other: with none left,
        the UNAVAILABLE answer itself goes to the client.
        """
        p = Proxy(config(extra="    retries: {budget: {percent: 0, minPerSecond: 0}}\n"))
        sid = p.call()
        up, _, port = p.upstream()
        up.dataReceived(trailersOnly(14, b"try%20later"))
        headers, _, trailers, ended = p.response(sid)
        self.assertEqual(headers[b"grpc-status"], b"14")
        self.assertEqual(headers[b"grpc-message"], b"try%20later")
        self.assertTrue(ended)
        self.assertEqual(p.retries(), {"budget-exhausted": 1})
        self.assertEqual(p.node(port).failures, 1)

    def test_statusInTrailersIsCountedNotRetried(self):
        """
        A status in the trailers comes after a body the client has: a
        failing code counts against the endpoint, nothing is retried.
        """
        p = Proxy(config())
        sid = p.call()
        up, _, port = p.upstream()
        up.dataReceived(answer(14))
        headers, body, trailers, ended = p.response(sid)
        self.assertEqual(body, MESSAGE)
        self.assertEqual(trailers, [(b"grpc-status", b"14")])
        self.assertEqual(p.retries(), {})
        self.assertEqual(p.node(port).failures, 1)
        self.assertEqual(len(p.harness.reactor.tcpClients), 1)

    def test_applicationCodesAreSuccesses(self):
        """
        NOT_FOUND, in the head or the trailers, is the application's answer:
        the endpoint worked.
        """
        p = Proxy(config())
        sid = p.call()
        up, _, port = p.upstream()
        up.dataReceived(trailersOnly(5))
        self.assertEqual(p.response(sid)[0][b"grpc-status"], b"5")
        sid = p.call()
        up2, _, port2 = p.upstream()
        up2.dataReceived(answer(5))
        self.assertEqual(p.response(sid)[2], [(b"grpc-status", b"5")])
        for each in (port, port2):
            self.assertEqual((p.node(each).successes, p.node(each).failures), (1, 0))
        self.assertEqual(p.retries(), {})

    def test_missingStatusIsAFailure(self):
        """
        A gRPC response that ends without a status is UNKNOWN: a failure.
        """
        p = Proxy(config())
        sid = p.call()
        up, _, port = p.upstream()
        up.dataReceived(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/grpc\r\nContent-Length: 8\r\n\r\n"
            + MESSAGE
        )
        self.assertTrue(p.response(sid)[3])
        self.assertEqual(p.node(port).failures, 1)

    def test_notGrpcResponseByHttpStatus(self):
        """
        An answer that is not gRPC (a 503 from something in between) is
        judged by its status: a failure, not retried (a POST).
        """
        p = Proxy(config())
        sid = p.call()
        up, _, port = p.upstream()
        up.dataReceived(
            b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\n"
            b"Content-Length: 4\r\n\r\nbusy"
        )
        headers, body, _, _ = p.response(sid)
        self.assertEqual(headers[b":status"], b"503")
        self.assertEqual(body, b"busy")
        self.assertEqual(p.retries(), {})
        self.assertEqual(p.node(port).failures, 1)

    def test_otherClassifiersSeeHttpStatus(self):
        """
        Without the grpc classifier, a gRPC call's answer is judged by its
        HTTP status: a trailers-only UNAVAILABLE is a 200, a success, and
        never retried.
        """
        p = Proxy(config("{kind: retryableIdempotent5XX}"))
        sid = p.call()
        up, _, port = p.upstream()
        up.dataReceived(trailersOnly(14))
        self.assertEqual(p.response(sid)[0][b"grpc-status"], b"14")
        self.assertEqual(p.retries(), {})
        self.assertEqual(p.node(port).successes, 1)

    def test_perBoundName(self):
        """
        A bound name's own classifier may be the grpc one.
        """
        p = Proxy(config(
            "{kind: nonRetryable5XX}",
            "    boundNames: {/#/static/hello: {classifier: {kind: grpc}}}\n",
        ))
        sid = p.call()
        first, _, _ = p.upstream()
        first.dataReceived(trailersOnly(14))
        second, _, _ = p.upstream()
        second.dataReceived(answer(0))
        self.assertEqual(p.response(sid)[2], [(b"grpc-status", b"0")])
        self.assertEqual(p.retries(), {"status": 1})

    def test_notGrpcRequestIgnoresGrpcStatus(self):
        """
        A POST that is not a gRPC call is not retried on a grpc-status.
        """
        p = Proxy(config())
        sid = p.call(call(contentType=b"application/json"))
        up, _, _ = p.upstream()
        up.dataReceived(trailersOnly(14))
        self.assertEqual(p.response(sid)[0][b"grpc-status"], b"14")
        self.assertEqual(p.retries(), {})


class ErrorAnswerTests(SynchronousTestCase):
    """
    Answers meshproxy makes itself are gRPC answers to gRPC callers:
    HTTP 200, trailers-only, the code in C{grpc-status}, the detail in
    C{grpc-message}, the C{mesh-err} reason kept.
    """

    def assertTrailersOnly(self, p, sid, code, reason):
        c = p.client
        c.pump()
        [head] = c.of(sid, ResponseReceived)
        headers = dict(head.headers)
        self.assertEqual(headers[b":status"], b"200")
        self.assertEqual(headers[b"content-type"], b"application/grpc")
        self.assertEqual(headers[b"grpc-status"], b"%d" % (code,))
        self.assertEqual(headers[b"mesh-err"], reason.encode("ascii"))
        # One HEADERS frame that ends the stream: no DATA, no trailers.
        self.assertEqual(c.of(sid, DataReceived), [])
        self.assertEqual(c.of(sid, TrailersReceived), [])
        self.assertIsNotNone(head.stream_ended)
        return headers

    def test_noRouteIsUnavailable(self):
        p = Proxy(config())
        headers = call()
        headers[2] = (b":authority", b"nowhere")
        sid = p.call(headers)
        headers = self.assertTrailersOnly(p, sid, grpc.UNAVAILABLE, "no-route")
        self.assertEqual(
            headers[b"grpc-message"],
            b"No route for /svc/nowhere: /#/static/nowhere is unknown to its namer.",
        )
        self.assertEqual(p.harness.metrics._errors[("web", "no-route")], 1)

    def test_timeoutIsDeadlineExceeded(self):
        p = Proxy(config())
        sid = p.call()
        p.upstream()
        p.harness.reactor.advance(11)
        headers = self.assertTrailersOnly(p, sid, grpc.DEADLINE_EXCEEDED, "timeout")
        self.assertEqual(headers[b"grpc-message"], b"Timed out after 10s.")

    def test_refusedConnectionIsUnavailable(self):
        """
        Every connection is refused: retried (the call never left), then
        UNAVAILABLE.
        """
        p = Proxy(config())
        sid = p.call()
        clients = p.harness.reactor.tcpClients
        index = 0
        while index < len(clients):
            clients[index][2].clientConnectionFailed(None, Failure(ConnectionRefusedError()))
            index += 1
        self.assertEqual(index, 4)
        self.assertEqual(p.retries(), {"connect": 3})
        self.assertTrailersOnly(p, sid, grpc.UNAVAILABLE, "upstream-connect")

    def test_forbiddenIsPermissionDenied(self):
        p = Proxy(config(extra="    policy: {default: deny}\n"))
        sid = p.call()
        self.assertTrailersOnly(p, sid, grpc.PERMISSION_DENIED, "forbidden")

    def test_tooLargeIsResourceExhausted(self):
        p = Proxy(config(extra="    server: {maxBodyBytes: 4}\n"))
        sid = p.call()
        self.assertTrailersOnly(p, sid, grpc.RESOURCE_EXHAUSTED, "body-too-large")

    def test_notGrpcCallsGetHttpAnswers(self):
        p = Proxy(config())
        sid = p.call(
            [(b":method", b"POST"), (b":scheme", b"http"), (b":authority", b"nowhere"),
             (b":path", b"/x"), (b"content-type", b"application/grpc-web")]
        )
        headers, body, _, _ = p.response(sid)
        self.assertEqual(headers[b":status"], b"503")
        self.assertNotIn(b"grpc-status", headers)
        self.assertTrue(body.startswith(b"No route for /svc/nowhere: "), body)

    def test_http1GrpcCall(self):
        """
        Over HTTP/1 the answer is a 200 with the gRPC fields in its head and
        no body.
        """
        h = H2Harness(config(), ports=(9001, 9002))
        proto, transport = h.client()
        proto.dataReceived(
            b"POST /pkg.Greeter/Hello HTTP/1.1\r\nHost: nowhere\r\n"
            b"Content-Type: application/grpc+proto\r\nContent-Length: 8\r\n\r\n" + MESSAGE
        )
        answer = transport.value()
        self.assertTrue(answer.startswith(b"HTTP/1.1 200 OK\r\n"), answer)
        self.assertIn(b"\r\nmesh-err: no-route\r\n", answer)
        self.assertIn(b"\r\ncontent-type: application/grpc\r\n", answer)
        self.assertIn(b"\r\ngrpc-status: 14\r\n", answer)
        self.assertIn(b"\r\ngrpc-message: No route for /svc/nowhere: ", answer)
        self.assertTrue(answer.endswith(b"\r\nContent-Length: 0\r\n\r\n"), answer)
        self.assertFalse(transport.disconnecting)

    def test_codes(self):
        """
        The code of each reason meshproxy answers with.
        """
        cases = {
            (503, "no-route"): 14, (503, "route-failed"): 14, (503, "no-endpoint"): 14,
            (503, "overloaded"): 14, (502, "upstream-connect"): 14,
            (502, "upstream-reset"): 14, (502, "upstream-protocol"): 14,
            (502, "upstream-tls"): 14, (502, "delegation-failed"): 14,
            (504, "timeout"): 4, (504, "deadline-expired"): 4,
            (403, "forbidden"): 7, (413, "body-too-large"): 8, (431, "header-too-large"): 8,
            (400, "bad-request"): 13, (400, "bad-dtab"): 13, (500, "internal-error"): 13,
            (408, "client-timeout"): 13, (503, "something-new"): 14,
        }
        for (status, reason), code in cases.items():
            self.assertEqual(grpc.errorCode(status, reason), code, reason)

    def test_percentEncoding(self):
        """
        grpc-message is UTF-8, percent-encoded but for space and printable
        ASCII other than %.
        """
        self.assertEqual(grpc.percentEncode("a b~"), b"a b~")
        self.assertEqual(grpc.percentEncode("100%\r\n\u00e9\u2603"),
                         b"100%25%0D%0A%C3%A9%E2%98%83")


def sentTimeout(transport):
    """
    The grpc-timeout values of the request head an upstream got.
    """
    head = transport.value().split(b"\r\n\r\n", 1)[0]
    return [
        line.split(b": ", 1)[1]
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"grpc-timeout:")
    ]


class TimeoutTests(SynchronousTestCase):
    """
    C{grpc-timeout}: the call's deadline, rewritten for each try as the
    time left.
    """

    def test_parse(self):
        cases = {
            b"1H": 3600.0, b"2M": 120.0, b"3S": 3.0, b"250m": 0.25, b"7u": 7e-6,
            b"9n": 9e-9, b"99999999S": 99999999.0, b"0m": 0.0,
        }
        for value, seconds in cases.items():
            self.assertAlmostEqual(grpc.parseTimeout(value), seconds, msg=value)
        for bad in (b"", b"S", b"1", b"123456789S", b"1s", b"1x", b"-1S", b"1.5S", b" 1S",
                    b"\xd9\xa1S"):
            self.assertIsNone(grpc.parseTimeout(bad), bad)

    def test_format(self):
        """
        The finest unit that fits 8 digits, rounded down.
        """
        cases = {
            0.05: b"50000000n", 0.1: b"100000u", 2.0: b"2000000u", 99.9999999: b"99999999u",
            100.0: b"100000m", 5000.0: b"5000000m", 100000.0: b"100000S",
            1e9: b"16666666M", 1e10: b"2777777H", 1e13: b"99999999H", 0.0: b"0n",
            -1.0: b"0n",
        }
        for seconds, value in cases.items():
            self.assertEqual(grpc.formatTimeout(seconds), value, seconds)
        for seconds in (0.0012345, 3.3, 777.7, 123456.7):
            self.assertLessEqual(grpc.parseTimeout(grpc.formatTimeout(seconds)), seconds + 1e-12)

    def call(self, p, timeout):
        return p.call(call(extra=[(b"grpc-timeout", timeout)]))

    def test_rewrittenAsTimeLeft(self):
        """
        A call with 2 s left gets an upstream 1.5 s later with 0.5 s left,
        and DEADLINE_EXCEEDED once they are gone (not the router's 10 s).
        """
        p = Proxy(config())
        sid = self.call(p, b"2S")
        p.harness.reactor.advance(1.5)
        _, transport, _ = p.upstream()
        self.assertEqual(sentTimeout(transport), [b"500000u"])
        p.harness.reactor.advance(0.5)
        self.assertEqual(p.response(sid)[0][b"grpc-status"], b"4")
        self.assertEqual(p.response(sid)[0][b"mesh-err"], b"timeout")

    def test_eachTryGetsLess(self):
        p = Proxy(config())
        self.call(p, b"3000m")
        first, transport, _ = p.upstream()
        self.assertEqual(sentTimeout(transport), [b"3000000u"])
        p.harness.reactor.advance(1)
        first.dataReceived(trailersOnly(14))
        _, transport, _ = p.upstream()
        self.assertEqual(sentTimeout(transport), [b"2000000u"])

    def test_routerTimeoutWhenShorter(self):
        """
        A caller's longer timeout: the router's total is the call's, and
        what goes upstream.
        """
        p = Proxy(config())
        self.call(p, b"1H")
        _, transport, _ = p.upstream()
        self.assertEqual(sentTimeout(transport), [b"10000000u"])

    def test_expired(self):
        """
        A call with no time left is answered at once.
        """
        p = Proxy(config())
        sid = self.call(p, b"0n")
        headers = p.response(sid)[0]
        self.assertEqual(headers[b"grpc-status"], b"4")
        self.assertEqual(headers[b"mesh-err"], b"deadline-expired")
        self.assertEqual(p.harness.reactor.tcpClients, [])

    def test_malformedIsIgnored(self):
        """
        A malformed grpc-timeout is treated as absent: not sent on, the
        router's timeout applies, counted.
        """
        for bad in (b"123456789S", b"1s", b"soon"):
            p = Proxy(config())
            sid = self.call(p, bad)
            _, transport, _ = p.upstream()
            self.assertEqual(sentTimeout(transport), [])
            self.assertEqual(p.harness.metrics._errors[("web", "bad-grpc-timeout")], 1)
            p.harness.reactor.advance(9.9)
            self.assertIsNone(p.response(sid)[0])
            p.harness.reactor.advance(0.2)
            self.assertEqual(p.response(sid)[0][b"grpc-status"], b"4")

    def test_repeatsDropped(self):
        p = Proxy(config())
        p.call(call(extra=[(b"grpc-timeout", b"2S"), (b"x", b"1"), (b"grpc-timeout", b"1H")]))
        _, transport, _ = p.upstream()
        self.assertEqual(sentTimeout(transport), [b"2000000u"])

    def test_notGrpcCallsUntouched(self):
        p = Proxy(config())
        p.call(call(extra=[(b"grpc-timeout", b"1S")], contentType=b"application/json"))
        p.harness.reactor.advance(2)
        _, transport, _ = p.upstream()
        self.assertEqual(sentTimeout(transport), [b"1S"])


class _Sink:
    """
    Takes every summary and span.
    """

    def __init__(self):
        self.summaries = []
        self.spans = []

    def wants(self, router):
        return True

    def summarize(self, summary, line):
        self.summaries.append((summary, line))

    def submit(self, span):
        self.spans.append(span)

    def submitRequest(self, request):
        self.spans.extend(request.spans())


METHODS = "    grpc: {methods: [/pkg.Greeter/Hello, /pkg.Other/*]}\n"


class TelemetryTests(SynchronousTestCase):
    """
    The gRPC status and the service and method of each call, in the
    metrics (bounded labels), the access log and the spans.
    """

    def proxy(self, extra=METHODS):
        p = Proxy(config(extra=extra))
        sink = p.sink = _Sink()
        router = p.harness.router
        router.observer.sinks = (sink,)
        router.tracer = router.observer.tracer = Tracer(sinks=[sink])
        return p

    def grpcSamples(self, p):
        body, _ = exposition(p.harness.metrics._registry, None)
        samples = {}
        for family in text_string_to_metric_families(body.decode("utf-8")):
            for sample in family.samples:
                if sample.name == "meshproxy_grpc_responses_total":
                    labels = sample.labels
                    self.assertEqual(
                        (labels["router"], labels["name"]), ("web", "/#/static/hello")
                    )
                    key = (labels["service"], labels["method"], labels["code"])
                    samples[key] = sample.value
        return samples

    def test_metricsLabelsBounded(self):
        """
        Methods named in grpc.methods have their own labels; a service
        named whole has its methods as other; any other call is
        other/other, whatever its path.
        """
        p = self.proxy()
        for path, code in [
            (b"/pkg.Greeter/Hello", 0), (b"/pkg.Greeter/Hello", 0), (b"/pkg.Greeter/Bye", 5),
            (b"/pkg.Other/Anything", 14), (b"/secret.Svc/Xyz", 13), (b"/not-grpc", 0),
        ]:
            sid = p.call(call(path=path))
            p.answer(answer(code))
            self.assertTrue(p.response(sid)[3])
        self.assertEqual(
            self.grpcSamples(p),
            {
                ("pkg.Greeter", "Hello", "OK"): 2.0,
                ("other", "other", "NOT_FOUND"): 1.0,
                ("pkg.Other", "other", "UNAVAILABLE"): 1.0,
                ("other", "other", "INTERNAL"): 1.0,
                ("other", "other", "OK"): 1.0,
            },
        )

    def test_metricsOfAnswersMadeHere(self):
        """
        An answer meshproxy made (a timeout) counts under its gRPC code,
        and as the 200 it was on the wire; a call the client cancels as
        CANCELLED; one cut mid-answer as INTERNAL.
        """
        p = self.proxy()
        sid = p.call(call(extra=[(b"grpc-timeout", b"1S")]))
        p.upstream()
        p.harness.reactor.advance(1)
        self.assertEqual(p.response(sid)[0][b"grpc-status"], b"4")
        sid = p.call()
        p.upstream()
        p.client.conn.reset_stream(sid)
        p.client.pump()
        sid = p.call()
        up, transport, _ = p.upstream()
        up.dataReceived(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/grpc\r\nContent-Length: 100\r\n\r\nab"
        )
        up.connectionLost(Failure(ConnectionDone()))
        p.client.pump()
        self.assertEqual(
            self.grpcSamples(p),
            {
                ("pkg.Greeter", "Hello", "DEADLINE_EXCEEDED"): 1.0,
                ("pkg.Greeter", "Hello", "CANCELLED"): 1.0,
                ("pkg.Greeter", "Hello", "INTERNAL"): 1.0,
            },
        )
        stats = p.harness.metrics.route("web", "/#/static/hello")
        self.assertEqual(stats.responses[2], 2)  # the timeout's 200, and the cut one's

    def test_httpCallsNotCounted(self):
        p = self.proxy()
        sid = p.call(call(contentType=b"application/json"))
        up, _, _ = p.upstream()
        up.dataReceived(answer(0))
        self.assertTrue(p.response(sid)[3])
        self.assertEqual(self.grpcSamples(p), {})
        [(summary, line)] = p.sink.summaries
        self.assertNotIn("grpcStatus", summary)
        self.assertNotIn(b"grpc", line)

    def test_accessLog(self):
        """
        A gRPC call's summary and line have its status, service and method
        (from its path: the log is not bounded as the labels are).
        """
        p = self.proxy()
        sid = p.call(call(path=b"/pkg.v1.Shop/Buy"))
        up, _, _ = p.upstream()
        up.dataReceived(answer(9))
        self.assertTrue(p.response(sid)[3])
        [(summary, line)] = p.sink.summaries
        record = json.loads(line)
        self.assertEqual(list(record)[-3:], ["grpcStatus", "grpcService", "grpcMethod"])
        self.assertEqual(
            (record["grpcStatus"], record["grpcService"], record["grpcMethod"]),
            (9, "pkg.v1.Shop", "Buy"),
        )
        self.assertEqual(record, summary)
        self.assertEqual(formatLine(summary), line)
        self.assertEqual(record["status"], 200)

    def test_accessLogOfAnswerMadeHere(self):
        p = self.proxy()
        headers = call(path=b"/odd")
        headers[2] = (b":authority", b"nowhere")
        p.call(headers)
        [(summary, line)] = p.sink.summaries
        record = json.loads(line)
        self.assertEqual(
            (record["status"], record["meshErr"], record["grpcStatus"]), (200, "no-route", 14)
        )
        self.assertIsNone(record["grpcService"])
        self.assertEqual(record, summary)

    def test_spans(self):
        """
        The server span carries the gRPC verdict: a 200 with a failing
        code is an error.
        """
        p = self.proxy()
        for code in (0, 14, 5):
            sid = p.call(call(path=b"/pkg.Greeter/Hello"))
            p.answer(answer(code))
            self.assertTrue(p.response(sid)[3])
        servers = [span for span in p.sink.spans if span.kind == "SERVER"]
        self.assertEqual(
            [(s.tags["rpc.grpc.status_code"], s.error) for s in servers],
            [("0", False), ("14", True), ("5", False)],
        )
        self.assertEqual(servers[0].tags["rpc.service"], "pkg.Greeter")
        self.assertEqual(servers[0].tags["rpc.method"], "Hello")
        self.assertEqual(servers[0].tags["rpc.system"], "grpc")

    def test_codeLabels(self):
        stats = RouteStats("web", "/#/static/hello")
        self.assertIsNone(stats.grpc)
        for code in (0, 0, 16, 99, None):
            stats.recordGrpc("s", "m", code)
        self.assertEqual(
            stats.grpc,
            {("s", "m", "OK"): 2, ("s", "m", "UNAUTHENTICATED"): 1, ("s", "m", "other"): 1,
             ("s", "m", "UNKNOWN"): 1},
        )

    def test_methodLabels(self):
        methods = grpc.GrpcMethods(["/a.B/C", "/a.D/*"])
        self.assertEqual(methods.labels(b"/a.B/C"), ("a.B", "C"))
        self.assertEqual(methods.labels(b"/a.B/X"), ("other", "other"))
        self.assertEqual(methods.labels(b"/a.D/X"), ("a.D", "other"))
        self.assertEqual(methods.labels(b"/a.D"), ("other", "other"))
        self.assertEqual(methods.labels(b"/a.DD/X"), ("other", "other"))
        self.assertEqual(methods.labels(b"*"), ("other", "other"))
        self.assertEqual(grpc.callName(b"/a.B/C"), ("a.B", "C"))
        for path in (b"/a.B", b"/a.B/C/D", b"//C", b"/a.B/", b"x/y"):
            self.assertEqual(grpc.callName(path), (None, None), path)


class DocsTests(SynchronousTestCase):
    """
    The gRPC sections of docs/observability.md and docs/configuration.md
    say what the code does.
    """

    def section(self, page, title):
        here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        with open(os.path.join(here, "docs", page), encoding="utf-8") as f:
            text = f.read()
        start = text.index(title + "\n")
        end = text.find("\n## ", start + 1)
        return text[start : end if end >= 0 else len(text)]

    def block(self, section, language):
        start = section.index("```%s\n" % (language,)) + len(language) + 4
        return section[start : section.index("```", start)]

    def test_exampleLine(self):
        section = self.section("observability.md", "## gRPC")
        example = self.block(section, "json").strip()
        record = json.loads(example)
        self.assertEqual(tuple(record), SUMMARY_FIELDS + GRPC_FIELDS)
        self.assertEqual(formatLine(record).decode("utf-8"), example)
        for field in GRPC_FIELDS:
            self.assertIn("`%s`" % (field,), section)

    def test_exampleConfig(self):
        section = self.section("configuration.md", "### gRPC")
        router = self.block(section, "yaml")
        config = parseConfig("routers:\n" + router)
        self.assertEqual(config.routers[0].classifier.kind, "grpc")
        self.assertEqual(len(config.routers[0].grpc.methods), 2)
