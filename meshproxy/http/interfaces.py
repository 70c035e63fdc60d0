"""
The seams of the HTTP request path, as interfaces.

A request travels through three objects, each seeing the next only through
the interface it needs::

    client
      ──► IClientConnection    (server.ServerProtocol)
      ──► IRouter.route        (router.HttpRouter)
      ──► IExchange            (exchange.Exchange)
      ──► IUpstreamConnection  (client.UpstreamProtocol)
      ──► upstream

  - the client connection (L{IClientConnection}) parses requests, hands each
    head to a new exchange, feeds it the body, and writes what the exchange
    gives it back;
  - the router (L{IRouter}) turns a request head into a destination (an
    L{IDestination}: the endpoints, balancer and policies of one bound
    name);
  - the exchange (L{IExchange}) runs one request through the filter stack
    (limits, deadline, retries and budget, classification, balancer),
    makes tries on upstream connections, and streams the answer back;
  - an upstream connection (L{IUpstreamConnection}) sends what the exchange
    writes and reports what the upstream answers to the exchange, never to
    the client.

Back-pressure goes both ways through the same objects: the upstream
transport pauses the client's reading (the client connection's gate is
the producer of the request body), and the client transport pauses the
upstream's reading (the upstream transport is the producer of the response
body, registered through the exchange).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from zope.interface import Attribute, Interface

if TYPE_CHECKING:
    from collections.abc import Callable

    from twisted.internet.interfaces import IPushProducer

    from meshproxy.balancing.node import Node
    from meshproxy.http.message import Headers, ProxyError, Request
    from meshproxy.transport.interfaces import IStreamTransport

__all__ = [
    "IClientConnection",
    "IDestination",
    "IExchange",
    "IRequestWriter",
    "IResponseWriter",
    "IRouter",
    "IUpstreamConnection",
]


class IRouter(Interface):
    """
    The HTTP router, as a client connection and its exchanges see it.
    """

    clock = Attribute("The reactor's clock (IReactorTime).")
    retries = Attribute("The router's RetryPolicy.")
    deadlines = Attribute("The router's DeadlinePolicy.")
    perTryTimeout = Attribute("Seconds a try may wait for its response head, or None.")
    timeouts = Attribute(
        "The TimeoutQueue (meshproxy.http.timeouts) of total timeouts as long as the"
        " deadline policy's total."
    )
    tryTimeouts = Attribute("The TimeoutQueue of per-try timeouts (perTryTimeout), or None.")
    bufferBytes = Attribute("Request body bytes kept for a retry.")
    tlsName = Attribute(
        "The identity of the listener's own certificate when it terminates TLS, or None."
    )
    forwarded = Attribute("Whether X-Forwarded-* and Forwarded are added.")
    tracer = Attribute(
        "The Tracer that starts or continues each request's trace (meshproxy.telemetry.observe)."
    )
    observer = Attribute(
        "The RequestObserver each finished exchange is given to (spans, access log, tap)."
    )

    def route(request: Request, trusted: bool) -> tuple[IDestination, bytes | None]:
        """
        Choose the destination of a request.

        @param request: the L{Request<meshproxy.http.message.Request>}.
        @param trusted: whether the caller may override the rules.
        @return: C{(destination, override)}: the L{IDestination}, and the
            per-request rules to pass on as C{mesh-ctx-dtab} (bytes) or
            L{None}.
        @raise ProxyError: when there is no destination.
        """

    def isTrusted(host: str | None) -> bool:
        """
        Whether a caller at C{host} (an IP address as text, or L{None}) may
        send rules overrides and deadlines.
        """

    def countError(reason: str) -> None:
        """
        Count an error answered (or a connection refused) by meshproxy.
        """

    def record(
        destination: IDestination,
        status: int,
        seconds: float,
        method: bytes,
        ttfb: float | None,
        bytesIn: int,
        bytesOut: int,
        traceId: str | None,
    ) -> None:
        """
        Count one finished request of C{destination}: its status, duration,
        method, time to the response head (L{None} when none came), body
        bytes both ways, and the trace id of a recorded trace (an exemplar).
        """

    def recordGrpc(destination: IDestination, path: bytes, code: int | None) -> None:
        """
        Count one finished gRPC call of C{destination} (after L{record}):
        its path (the service and method, C{/pkg.Service/Method}) and its
        status code (L{None}: unknown).
        """


class IDestination(Interface):
    """
    One bound name, as an exchange uses it: endpoints, balancer, policies.
    """

    name = Attribute("The bound name, as text.")
    balancer = Attribute("The IBalancer over the name's endpoints.")
    classifier = Attribute("The IClassifier of the name's responses.")
    limiter = Attribute("The Limiter of requests in flight, or None.")
    unresolved = Attribute(
        "Whether the name's namer has not answered yet (a request waits: whenResolved)."
    )

    def whenResolved(fn: Callable[[], object]) -> Callable[[], None] | None:
        """
        Call C{fn} once when the namer first answers for the name.

        @return: a callable cancelling the wait, or L{None} when too many
            wait already (C{fn} will not be called).
        """

    def classify(request: Request, status: int, headers: Headers) -> tuple[int, bool]:
        """
        Judge a response head to C{request}.

        @return: C{(classification, anyMethod)}: C{SUCCESS}, C{RETRYABLE}
            or C{FAILURE}, and whether the upstream said the request may be
            retried whatever its method (C{mesh-retryable: true}).
        """

    def isIdempotent(request: Request) -> bool:
        """
        Whether C{request} may be sent twice (by its method, or a POST with
        an C{Idempotency-Key} where the classifier allows it).
        """

    def beginTry(node: Node) -> float:
        """
        A try starts on C{node}: count it (pending, accrual).

        @return: its start time.
        """

    def endTry(node: Node, started: float | None, success: bool) -> None:
        """
        A try on C{node} ended with a verdict: balancer statistics and
        failure accrual.

        @param started: what L{beginTry} returned, or L{None} when the
            try's latency was taken already (L{IBalancer.measured}).
        """

    def abandonTry(node: Node) -> None:
        """
        A try on C{node} ended without a verdict on the endpoint.
        """


class IClientConnection(Interface):
    """
    A client connection, as its exchanges see it.
    """

    trusted = Attribute("Whether the peer may override rules and deadlines.")
    forwardedFor = Attribute("The peer address for X-Forwarded-For (bytes).")
    scheme = Attribute("b'http' or b'https'.")
    gate = Attribute("The PauseGate of the client's reading.")
    clientCert = Attribute(
        "The x-forwarded-client-cert value for a caller with a verified certificate, or None."
    )
    transport = Attribute("The client's IStreamTransport (a tunnel's other end).")

    def write(data: bytes) -> None:
        """
        Queue response bytes; they go out at the next L{flush}.
        """

    def flush() -> None:
        """
        Send what L{write} queued, in one write.
        """

    def responseWriter(bodyless: bool) -> IResponseWriter:
        """
        The writer of the response to the active request, in this
        connection's protocol (HTTP/1.1 bytes, or HTTP/2 frames).

        @param bodyless: whether no body may follow the head (HEAD, 1xx,
            204, 304).
        """

    def interim(status: int, reason: bytes, headers: Headers) -> None:
        """
        Queue an interim (1xx) response for the active request: C{100
        Continue} (made by meshproxy), or one passed on from the upstream
        (C{103 Early Hints}).
        """

    def sendError(error: ProxyError, close: bool) -> None:
        """
        Queue an error answer made by meshproxy for the active request.
        """

    def exchangeDone(exchange: IExchange, keepAlive: bool) -> None:
        """
        The response to C{exchange} is complete: read the next request, or
        close when C{keepAlive} is false.
        """

    def streamFrom(producer: IPushProducer) -> None:
        """
        Let C{producer} (an upstream transport) be paused while the
        client's transport is full.
        """

    def stopStreaming() -> None:
        """
        Undo L{streamFrom}.
        """

    def readingPaused() -> bool:
        """
        Whether the client is holding the response back (its transport
        paused its producer): a stalled body is then not the upstream's
        fault.
        """

    def abort() -> None:
        """
        Cut the connection (a response that cannot be completed).
        """

    def startTunnel(upstreamTransport: IStreamTransport, rest: bytes) -> None:
        """
        After a 101 answer: relay raw bytes to C{upstreamTransport}.
        """


class IResponseWriter(Interface):
    """
    Writes one response to the client, in the client connection's protocol:
    the head rewritten (hop-by-hop fields dropped, C{Via} added, the framing
    the connection's own), then the body, then its end and trailers.
    """

    def head(
        status: int,
        reason: bytes,
        headers: Headers,
        *,
        contentLength: bytes | None,
        chunked: bool,
        version: str,
        keepAlive: bool,
    ) -> bool:
        """
        Write the response head.

        @param status: the upstream's status.
        @param reason: its reason phrase, as received.
        @param headers: its C{(name, value)} fields, as received.
        @param contentLength: the declared length (bytes, as received) or
            L{None}.
        @param chunked: whether the upstream body is chunked.
        @param version: the client's HTTP version.
        @param keepAlive: whether the client connection may stay open.
        @return: whether it may still stay open after this response.
        """

    def body(data: bytes) -> None:
        """
        Write a piece of the body.
        """

    def end(trailers: Headers | None) -> None:
        """
        Write the end of the response, with its trailer fields (or L{None}).
        """


class IExchange(Interface):
    """
    One request and its response, as the client connection and the
    upstream connection see it.

    From the client connection: L{start}, then the request body
    (L{bodyReceived}, L{bodyComplete}); L{clientLost} if the client goes.
    From the upstream connection: L{connected}, then the response
    (L{interimResponse}, L{responseHead}, L{responseBody},
    L{responseComplete}), or why there is none (L{connectFailed},
    L{upstreamLost}, L{upstreamError}).
    """

    request = Attribute("The Request.")
    router = Attribute("The IRouter (its counters).")
    connecting = Attribute("The pool's connection attempt for the current try, or None.")
    keepAlive = Attribute("Whether the client connection may carry another request.")
    responseStarted = Attribute("Whether any response byte went to the client.")
    done = Attribute("Whether the exchange is over.")
    endTime = Attribute(
        "When the response ended (the clock's seconds), for the connections to reuse."
    )
    eventTime = Attribute(
        "The clock's seconds of the upstream read being handled, or None outside one:"
        " the exchange reads the clock once per read."
    )

    def start() -> None:
        """
        Route the request and make the first try.
        """

    def bodyReceived(data: bytes) -> None:
        """
        A piece of the request body arrived.
        """

    def bodyComplete(trailers: Headers | None) -> None:
        """
        The request body ended (with its trailer fields, or L{None}).
        """

    def clientLost() -> None:
        """
        The client went away: drop the upstream side too.
        """

    def connected(upstream: IUpstreamConnection) -> None:
        """
        A connection is ready for this exchange's try: send the request.
        """

    def connectFailed(reason: str, retryable: bool, tls: bool = False) -> None:
        """
        No connection could be made for the try (C{tls}: its TLS handshake
        did not verify the upstream).
        """

    def notProcessed(reason: str) -> None:
        """
        The upstream said it did not process the request (an HTTP/2 GOAWAY
        below its stream, or C{REFUSED_STREAM}): send it again on a fresh
        connection to the same endpoint, whatever its method, a few times
        at most; not a failure of the endpoint, nor a retry of the budget.
        """

    def interimResponse(status: int, reason: bytes, headers: Headers) -> None:
        """
        An interim (1xx) response arrived.
        """

    def responseHead(
        status: int, reason: bytes, headers: Headers, contentLength: bytes | None, chunked: bool
    ) -> bool:
        """
        The response head arrived.

        @return: C{False} when the response is dropped for a retry (the
            upstream connection is then being aborted).
        """

    def responseBody(data: bytes) -> None:
        """
        A piece of the response body arrived.
        """

    def responseComplete(trailers: Headers | None, reusable: bool) -> None:
        """
        The response ended.

        @param reusable: whether the upstream connection can serve another
            request.
        """

    def responseStreaming(upstream: IUpstreamConnection) -> None:
        """
        The response body continues past the read being parsed: from now on
        a slow client pauses the upstream.
        """

    def upgraded(upstream: IUpstreamConnection, rest: bytes) -> None:
        """
        The upstream switched protocols (101).
        """

    def upstreamLost(reason: str, stale: bool) -> None:
        """
        The upstream connection failed during the try.
        """

    def upstreamError(reason: str) -> None:
        """
        The upstream sent something that is not an acceptable response.
        """

    def fail(error: ProxyError) -> None:
        """
        Answer the client with an error made by meshproxy (the try ends
        without a verdict on its endpoint).
        """

    def flush() -> None:
        """
        The upstream connection finished parsing a read: send what was
        queued for the client.
        """


class IRequestWriter(Interface):
    """
    Writes one request upstream, in the upstream connection's protocol: the
    head rewritten for the upstream (hop-by-hop fields dropped, this hop's
    forwarding, mesh and trace context added, the framing the connection's
    own), then the body, then its end and trailers.

    HTTP/1.1 (L{UpstreamProtocol<meshproxy.http.client.UpstreamProtocol>})
    writes the bytes L{requestHead<meshproxy.http.rewrite.requestHead>}
    makes and chunks when the request is chunked; an HTTP/2 stream
    (L{meshproxy.http2.client}) writes HEADERS, DATA and trailers frames.
    """

    def writeHead(
        request: Request,
        peer: bytes,
        scheme: bytes,
        forwarded: bool,
        deadline: bytes,
        override: bytes | None,
        clientCert: bytes | None,
        trace: bytes,
        body: list[bytes] | None,
    ) -> None:
        """
        Send the request head, and the body pieces held so far. (The
        exchange gives the arguments by position: this runs for every
        request.)

        @param request: the request as received.
        @param peer: the client's address (C{X-Forwarded-For}, C{Forwarded}).
        @param scheme: the client connection's scheme, C{b"http"} or
            C{b"https"}.
        @param forwarded: whether to add the forwarding fields.
        @param deadline: the C{mesh-ctx-deadline} value.
        @param override: the C{mesh-ctx-dtab} value, or L{None}.
        @param clientCert: the C{x-forwarded-client-cert} value, or L{None}.
        @param trace: this hop's trace context and C{mesh-reqid}, as
            HTTP/1 header lines.
        @param body: body pieces to send right after the head, or L{None}.
            A request without a body (L{Request.hasBody}) ends with its
            head; one with a body ends at L{writeEnd}.
        """

    def writeBody(data: bytes) -> None:
        """
        Send a piece of the request body.
        """

    def writeEnd(trailers: Headers | None) -> None:
        """
        Send the end of the request body, with its trailer fields (or
        L{None}).
        """


class IUpstreamConnection(IRequestWriter):
    """
    A connection to an upstream endpoint, as the exchange sees it: it
    writes the request (L{IRequestWriter}) and reports the response to
    the exchange.
    """

    reused = Attribute("Whether the connection already served a response.")
    transport = Attribute("The upstream's IStreamTransport (tunnelled to).")
    producer = Attribute(
        "The IPushProducer a slow client pauses while the response streams: the"
        " transport, or an HTTP/2 stream's flow control."
    )

    def sendBodyFrom(producer: IPushProducer) -> None:
        """
        Let the request body's producer be paused while the upstream's
        transport is full.
        """

    def bodySent() -> None:
        """
        The whole request body was written: undo L{sendBodyFrom}.
        """

    def responseDone(reusable: bool) -> None:
        """
        The exchange has what it needs: back to the pool, or closed.
        """

    def stopStreaming() -> None:
        """
        The response is over: read again at full speed.
        """

    def abort() -> None:
        """
        Drop the connection (the try is over and its answer is not wanted).
        """

    def startTunnel(peer: IStreamTransport) -> None:
        """
        After a 101: relay raw bytes to the client's transport C{peer}.
        """
