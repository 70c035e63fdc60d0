"""
One request/response exchange through the HTTP router.

An exchange joins the client connection (L{IClientConnection}) to one
upstream connection at a time (L{IUpstreamConnection}), carries the body
both ways with back-pressure, and runs the request through the router's
filter stack, in this order:

  1. limits: the destination's L{Limiter} admits the request or answers
     503 C{overloaded};
  2. deadline: the L{DeadlinePolicy} gives the time the request may take
     (shortened by a trusted caller's deadline, 504 if already passed);
  3. retries and budget: the L{RetryPolicy} is credited, and decides after
     each failed try whether and when to try again;
  4. classification: the destination's L{IClassifier} judges each
     response head (success, retryable failure, failure);
  5. balancer: the destination picks an endpoint for each try, avoiding
     those that failed this request, and learns how each try ended.

Its life is one explicit state (see L{meshproxy.http.states}). How each way
a try can end is retried or answered is told in docs/architecture.md, "When
a try fails".
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from zope.interface import implementer

from meshproxy import grpc
from meshproxy.discovery.endpoints import formatAddress
from meshproxy.http.body import RequestBody
from meshproxy.http.interfaces import IExchange
from meshproxy.http.message import ProxyError, errorBody
from meshproxy.http.states import AWAITING, DONE, NEW, SENDING, STREAMING, WAITING
from meshproxy.http.tries import TryAccounting
from meshproxy.resilience.classifiers import FAILURE, RETRYABLE, SUCCESS
from meshproxy.resilience.deadline import DeadlineExpired
from meshproxy.resilience.retries import CONNECT, RESET, STATUS, TIMEOUT

if TYPE_CHECKING:
    from collections.abc import Callable

    from twisted.internet.interfaces import IDelayedCall

    from meshproxy.balancing.node import Node
    from meshproxy.http.client import _Attempt
    from meshproxy.http.interfaces import (
        IClientConnection,
        IDestination,
        IResponseWriter,
        IRouter,
        IUpstreamConnection,
    )
    from meshproxy.http.message import Headers, Request
    from meshproxy.http.timeouts import Timeout
    from meshproxy.resilience.limits import Limiter
    from meshproxy.telemetry.observe import RequestTrace

__all__ = ["Exchange", "MAX_STALE_TRIES"]

#: Tries on pooled connections that turn out to be closed (a keep-alive
#: race, not a failure of the endpoint) before giving up.
MAX_STALE_TRIES = 3

_BODYLESS_STATUS = frozenset([204, 304])

@implementer(IExchange)
class Exchange(TryAccounting):
    """
    The life of one request.

    @ivar server: the client connection (L{IClientConnection}).
    @ivar request: the L{Request<meshproxy.http.message.Request>}.
    @ivar router: the L{IRouter}.
    @ivar client: the destination (L{IDestination}) once routed.
    @ivar state: one of C{new}, C{waiting}, C{sending}, C{awaiting},
        C{streaming}, C{done}.

    Some attributes are L{None} until the state that sets them: C{client}
    until L{start} routes the request, C{node} while no try is under way,
    C{writer} until the response head (L{STREAMING}), and C{body} for a
    request without one. The steps after rely on it, which mypy cannot
    see: their lines say C{type: ignore[union-attr]}.
    """

    __slots__ = (
        "server",
        "request",
        "router",
        "body",
        "startTime",
        "status",
        "tries",
        "retries",
        "stale",
        "writer",
        "keepAlive",
        "timer",
        "deadline",
        "upgradeRest",
        "classification",
        "limiter",
        "override",
        "progress",
        "continued",
        "headTime",
        "bytesIn",
        "bytesOut",
        "meshErr",
        "resolution",
        "grpc",
        "grpcStatus",
        "grpcResponse",
        "grpcTimeout",
        "acquiring",
        "endTime",
        "eventTime",
        "credit",
    )

    def __init__(self, server: IClientConnection, request: Request, router: IRouter) -> None:
        self.state = NEW
        self.server = server
        self.request = request
        self.router = router
        self.client: IDestination | None = None
        # (request.hasBody, without the call)
        self.body = (
            RequestBody(request.chunked, router.bufferBytes)
            if request.chunked or request.contentLength
            else None
        )
        self.node: Node | None = None
        self.startTime = 0.0
        # When it ended (_end), on the router's clock: the client
        # connection's idle deadline and the upstream connection's idle
        # time count from it.
        self.endTime = 0.0
        # Set while a pool is asked for a connection (_attempt): one given
        # then comes in the same event as the try's start.
        self.acquiring = False
        # The time of the upstream read being parsed, set by an HTTP/1.1
        # upstream connection around its parsing (None otherwise): what that
        # read makes happen here takes its time from it.
        self.eventTime: float | None = None
        self.tryStart = 0.0
        # Whether the current try's latency sample (from tryStart to
        # headTime) is still to be given to the balancer: taken after the
        # response head is sent (_sample).
        self.unmeasured = False
        # The time the retry budget is still to be credited with for this
        # request (after its first try was sent), or None.
        self.credit: float | None = None
        self.upstream: IUpstreamConnection | None = None
        self.connecting: _Attempt | None = None
        self.status = 0
        self.tries = 0
        self.retries = 0
        self.stale = 0
        self.writer: IResponseWriter | None = None
        self.keepAlive = request.keepAlive
        self.timer: IDelayedCall | Timeout | None = None
        # The per-try timeout, or the wait before a retry.
        self.tryTimer: IDelayedCall | Timeout | None = None
        self.deadline = 0.0
        self.upgradeRest = b""
        self.triedNodes: set[Node] | None = None
        self.classification = SUCCESS
        # The limiter holding a place for this request, once admitted.
        self.limiter: Limiter | None = None
        # Whether it holds a place among the requests waiting for a
        # connection (limits.maxPending).
        self.waiting = False
        self.override: bytes | None = None
        self.progress = 0.0
        self.continued = False
        # What telemetry reads at the end: the trace, when the response
        # head came, the body bytes both ways, the reason of an answer made
        # here, the last try's endpoint, and the current try's outcome.
        self.trace: RequestTrace | None = None
        self.headTime = 0.0
        self.bytesIn = 0
        self.bytesOut = 0
        self.meshErr: str | None = None
        # Cancels the wait for the namer's first answer, while it lasts.
        self.resolution: Callable[[], None] | None = None
        self.lastNode: Node | None = None
        self.tryStatus = 0
        self.tryError: str | None = None
        # A gRPC call (meshproxy.grpc): its status code once known, and
        # whether the response is gRPC (its code then comes at the end).
        self.grpc = request.method == b"POST" and grpc.isGrpcRequest(request)
        self.grpcStatus: int | None = None
        self.grpcResponse = False
        # The index of its grpc-timeout field in the request's headers,
        # rewritten for each try.
        self.grpcTimeout: int | None = None

    # -- the filter stack -----------------------------------------------------

    def start(self) -> None:
        """
        Run the request through limits, deadline and retry budget, then
        make the first try. A destination whose namer has not answered yet
        is waited for first (L{_awaitResolution}), within the deadline.
        """
        router = self.router
        now = self.startTime = router.clock.seconds()
        request = self.request
        server = self.server
        self.trace = router.tracer.begin(request, server.trusted, router.countError)
        try:
            client, self.override = router.route(request, server.trusted)
        except ProxyError as e:
            self.fail(e)
            return
        self.client = client
        unresolved = client.unresolved
        # (no call without a limiter: most destinations have none)
        if not unresolved and client.limiter is not None and not self._admit(client):
            return
        deadlines = router.deadlines
        if request.meshHeaders:
            try:
                total = deadlines.budget(request.header(b"mesh-ctx-deadline"), server.trusted)
            except DeadlineExpired:
                self.fail(ProxyError(504, "deadline-expired", "The caller's deadline has passed."))
                return
        else:
            total = deadlines.total
        if self.grpc:
            total = self._grpcDeadline(total)
            if total <= 0.0:
                self.fail(ProxyError(504, "deadline-expired", "The caller's deadline has passed."))
                return
        self.deadline = now + total
        timeouts = router.timeouts
        # The router's total timeout (nearly every request) is armed once
        # the first try is sent: it shapes no byte of it, and its deadline
        # is counted from now whenever it is added. Any other is armed here.
        queued = total == timeouts.duration and not unresolved
        if not queued:
            if total == timeouts.duration:
                self.timer = timeouts.add(self._timedOut, now)
            else:
                # A caller's shorter deadline, or a gRPC timeout.
                self.timer = router.clock.callLater(total, self._timedOut)
        self._enter(WAITING)
        if unresolved:
            self._awaitResolution(client)
            return
        # The retry budget is credited after the send too, and before any
        # retry of this request asks it (_retry).
        self.credit = now
        self._attempt()
        # What follows shapes no byte sent.
        if queued and self.state is not DONE:
            self.timer = timeouts.add(self._timedOut, now)
        if self.credit is not None:
            # (_credit, inline)
            self.credit = None
            router.retries.admit(now)

    def _credit(self) -> None:
        """
        Credit the retry budget with this request, at its start time.
        """
        now: float = self.credit  # type: ignore[assignment]  # (set: the callers check)
        self.credit = None
        self.router.retries.admit(now)

    def _grpcDeadline(self, total: float) -> float:
        """
        A gRPC call's C{grpc-timeout}: the time it may take, when shorter
        than C{total}, from any caller (it can only shorten it). Its field
        is kept to be rewritten for each try (L{connected}); a malformed
        one is dropped (treated as absent, as grpc/grpc's C core does) and
        counted as C{bad-grpc-timeout}; repeats are dropped.

        @return: the seconds the call may take (0 or less: its deadline has
            passed).
        """
        headers = self.request.headers
        found = []
        for index, (name, _) in enumerate(headers):
            if len(name) == 12 and name.lower() == b"grpc-timeout":
                found.append(index)
        if not found:
            return total
        seconds = grpc.parseTimeout(headers[found[0]][1])
        drop = found if seconds is None else found[1:]
        for index in reversed(drop):
            del headers[index]
        if seconds is None:
            self.router.countError("bad-grpc-timeout")
            return total
        self.grpcTimeout = found[0]
        return seconds if seconds < total else total

    def _admit(self, client: IDestination) -> bool:
        """
        Take a place in the destination's limiter, or answer 503
        C{overloaded}.

        @return: whether the request goes on.
        """
        limiter = client.limiter
        if limiter is not None:
            if not limiter.tryAcquire():
                self.fail(
                    ProxyError(
                        503,
                        "overloaded",
                        "Too many requests in flight to %s." % (client.name,),
                    )
                )
                return False
            self.limiter = limiter
        return True

    def _awaitResolution(self, client: IDestination) -> None:
        """
        Wait (in L{WAITING}, under the deadline's timer) for the namer's
        first answer for C{client}'s name, then route again
        (L{_resolved}); 503 C{overloaded} when too many wait already.
        """
        cancel = client.whenResolved(self._resolved)
        if cancel is None:
            self.fail(
                ProxyError(
                    503,
                    "overloaded",
                    "Too many requests waiting for %s to resolve." % (client.name,),
                )
            )
            return
        self.resolution = cancel

    def _resolved(self) -> None:
        """
        The namer answered for the name waited for: route again (the
        answer may make another branch of the rules the destination, or
        none), then go on as L{start} does.
        """
        self.resolution = None
        if self.state is DONE:
            return
        router = self.router
        try:
            client, self.override = router.route(self.request, self.server.trusted)
        except ProxyError as e:
            self.fail(e)
            return
        self.client = client
        if client.unresolved:
            self._awaitResolution(client)
            return
        if not self._admit(client):
            return
        router.retries.admit(router.clock.seconds())
        self._attempt()

    def _attempt(self) -> None:
        """
        One try: pick an endpoint, and ask its pool for a connection.
        """
        self.tryTimer = None
        if self.state is DONE:
            return
        client: IDestination = self.client  # type: ignore[assignment]
        # Prefer an endpoint that has not failed this request already (a
        # first try has none to avoid: pick, one call fewer).
        avoid = self.triedNodes
        balancer = client.balancer
        node = balancer.pick() if avoid is None else balancer.pickAvoiding(avoid)
        if node is None:
            self.fail(ProxyError(503, "no-endpoint", "No live endpoint for %s." % (client.name,)))
            return
        self.node = node
        self.tries += 1
        self.tryStart = client.beginTry(node)
        self.trace.startTry(self.tryStart)  # type: ignore[union-attr]  # set by start()
        router = self.router
        perTry = router.perTryTimeout
        if perTry and perTry < self.deadline - router.clock.seconds():
            tryTimeouts = router.tryTimeouts
            if tryTimeouts is not None and tryTimeouts.duration == perTry:
                self.tryTimer = tryTimeouts.add(self._tryTimedOut)
            else:
                self.tryTimer = router.clock.callLater(perTry, self._tryTimedOut)
        pool = node.payload
        limiter = client.limiter
        if limiter is not None and limiter.maxPending is not None and not pool.idle:
            # This request will wait for a new connection.
            if not limiter.pendingAcquire():
                self._abandonTry()
                self.fail(
                    ProxyError(
                        503, "overloaded", "Too many requests waiting for %s." % (client.name,)
                    )
                )
                return
            self.waiting = True
        self.acquiring = True
        pool.acquire(self)
        self.acquiring = False

    def _retry(self, reason: str, anyMethod: bool) -> bool:
        """
        The current try failed before any response byte reached the client:
        ask the retry policy whether to try again.

        @param reason: why (L{CONNECT}, L{RESET}, L{STATUS}, L{TIMEOUT}).
        @param anyMethod: whether the failure proves the upstream never
            processed the request (so any method may be retried).
        @return: whether a retry was scheduled.
        """
        state = self.state
        if state is DONE or state is STREAMING:
            return False
        if self.credit is not None:
            self._credit()
        body = self.body
        delay = self.router.retries.retryDelay(
            reason,
            allowed=anyMethod or self.client.isIdempotent(self.request),  # type: ignore[union-attr]
            retries=self.retries,
            replayable=body is None or body.replayable(),
            deadline=self.deadline,
        )
        if delay is None:
            return False
        self.retries += 1
        self._rewind()
        if delay > 0:
            self.tryTimer = self.router.clock.callLater(delay, self._attempt)
        else:
            self._attempt()
        return True

    def _rewind(self) -> None:
        """
        Back to waiting for a connection, with the kept body to send again.
        """
        if self.body is not None:
            self.body.rewind()
        self.upstream = None
        if self.state is not WAITING:
            self._enter(WAITING)

    # -- request body from the client --------------------------------------

    def bodyReceived(self, data: bytes) -> None:
        """
        See L{IExchange.bodyReceived}.
        """
        self.bytesIn += len(data)
        if self.state is DONE:
            # Answered already: the rest of the body is read and dropped.
            return
        if self.body.receive(data, self.upstream):  # type: ignore[union-attr]
            self.server.gate.pause("preconnect")

    def bodyComplete(self, trailers: Headers | None) -> None:
        """
        See L{IExchange.bodyComplete}.
        """
        body = self.body
        if body is None:
            return
        body.done = True
        body.trailers = trailers
        self._finishRequestBody()

    def _finishRequestBody(self) -> None:
        if self.body.finish(self.upstream) and self.state is SENDING:  # type: ignore[union-attr]
            self._enter(AWAITING)

    # -- upstream connection ---------------------------------------------

    def connected(self, upstream: IUpstreamConnection) -> None:
        """
        See L{IExchange.connected}: send the request.
        """
        if self.waiting:
            self._stopWaiting()
        if self.state is not WAITING:
            upstream.responseDone(True)
            return
        self.upstream = upstream
        router = self.router
        # Latency is measured from here: the time to open a connection is
        # not the endpoint's answer time, and must not make a fresh endpoint
        # look slow to the balancer. A connection given within _attempt
        # (idle, or made at once) comes in the event the try started in:
        # that reading of the clock stands.
        if self.acquiring:
            now = self.tryStart
        else:
            now = self.tryStart = router.clock.seconds()
        request = self.request
        server = self.server
        index = self.grpcTimeout
        if index is not None:
            # The time left, so that each hop sees less.
            headers = request.headers
            headers[index] = (headers[index][0], grpc.formatTimeout(self.deadline - now))
        body = self.body
        if body is None:
            self._enter(AWAITING)
            held = None
            resume = False
        else:
            self._enter(SENDING)
            upstream.sendBodyFrom(server.gate)
            wasHeld = bool(body.pending)
            held, resume = body.start()
        # (by position: peer, scheme, forwarded, deadline, override,
        # clientCert, trace, body)
        upstream.writeHead(
            request,
            server.forwardedFor,
            server.scheme,
            router.forwarded,
            router.deadlines.header(self.deadline, now),
            self.override,
            server.clientCert,
            self.trace.headers(),  # type: ignore[union-attr]  # set by start()
            held,
        )
        if body is None:
            return
        if resume:
            server.gate.resume("preconnect")
        if request.expectContinue and not body.done and not wasHeld and not self.continued:
            # Once, on the first connection actually made (a refused first
            # try must not leave the client waiting).
            self.continued = True
            server.interim(100, b"Continue", [])
            server.flush()
        self._finishRequestBody()

    def connectFailed(self, reason: str, retryable: bool, tls: bool = False) -> None:
        """
        See L{IExchange.connectFailed}.

        @param reason: why, in words (C{"refused the connection"}).
        @param retryable: whether sending it again is safe (no byte of it
            was processed).
        @param tls: whether the TLS handshake failed (the upstream's
            certificate was not verified): answered C{upstream-tls}.
        """
        self.upstream = None
        self._stopWaiting()
        if self.state is DONE:
            self._abandonTry()
            return
        address = _address(self.node)
        self.tryError = "upstream-tls" if tls else "upstream-connect"
        self._endTry(False)
        if tls:
            # Every failed verification, retried or not (the answer, when
            # there is one, is counted as upstream-tls too).
            self.router.countError("tls-handshake-failed")
        if retryable and self._retry(CONNECT, True):
            return
        self.fail(
            ProxyError(
                502,
                "upstream-tls" if tls else "upstream-connect",
                "Upstream %s %s." % (address, reason),
            )
        )

    def staleConnection(self, reason: str, anyMethod: bool = False) -> None:
        """
        A pooled connection was closed by the upstream before it answered:
        a keep-alive race, not a failure of the endpoint. Send again on a
        fresh connection.

        @param anyMethod: whether the upstream said it did not process the
            request (so that any method may be sent again).
        """
        self.upstream = None
        node = self.node
        if self.state is DONE:
            self._abandonTry()
            return
        body = self.body
        if (
            self.stale < MAX_STALE_TRIES
            and (body is None or body.replayable())
            and (anyMethod or self.client.isIdempotent(self.request))  # type: ignore[union-attr]
        ):
            # Only idempotent requests (unless the upstream said it did not
            # process it): the upstream may have read this one before it
            # closed.
            self.stale += 1
            self._rewind()
            if self.tryTimer is None or self.tryTimer.active():
                node.payload.acquire(self)  # type: ignore[union-attr]
                return
        address = _address(node)
        self.tryError = "upstream-reset"
        self._abandonTry()
        self.fail(
            ProxyError(
                502,
                "upstream-reset",
                "Upstream %s closed the connection before answering." % (address,),
            )
        )

    def notProcessed(self, reason: str) -> None:
        """
        See L{IExchange.notProcessed}.
        """
        self.staleConnection(reason, True)

    # -- response from upstream -------------------------------------------

    def interimResponse(self, status: int, reason: bytes, headers: Headers) -> None:
        """
        See L{IExchange.interimResponse}: 100 was answered by meshproxy
        itself; others (103) go on to HTTP/1.1 and HTTP/2 clients.
        """
        if status != 100 and self.request.version != "1.0" and self.state is not DONE:
            self.server.interim(status, reason, headers)

    def responseHead(
        self,
        status: int,
        reason: bytes,
        headers: Headers,
        contentLength: bytes | None,
        chunked: bool,
    ) -> bool:
        """
        See L{IExchange.responseHead}.

        @param contentLength: the declared length (bytes, as received) or
            L{None}.
        """
        state = self.state
        if state is not SENDING and state is not AWAITING:
            if state is DONE:
                return True
            raise RuntimeError("a response head while %s" % (state,))
        timer = self.tryTimer
        if timer is not None:
            # The per-try timeout bounds the wait for the head, not the
            # streaming of the body.
            self.tryTimer = None
            timer.cancel()
        request = self.request
        if status == 101 and not request.upgrade:
            # A switch nobody asked for (RFC 9110 15.2.2): never a tunnel.
            self.upstreamError("101 to a request that asked for no upgrade")
            return False
        self.tryStatus = status
        client: IDestination = self.client  # type: ignore[assignment]  # routed
        if self.grpc:
            classification, anyMethod = self._grpcHead(client, status, headers)
        else:
            classification, anyMethod = client.classify(request, status, headers)
        self.classification = classification
        # (the time of the read the head came in)
        now = self.eventTime
        if now is None:
            now = self.router.clock.seconds()
        if classification == RETRYABLE and status != 101:
            upstream = self.upstream
            self._endTry(False)
            if self._retry(STATUS, anyMethod):
                # The rest of this response is not wanted: drop the
                # connection rather than read a body nobody will see.
                if upstream is not None:
                    upstream.abort()
                return False
            # Not retried: the failure itself is the answer.
        elif self.node is not None:
            # The endpoint's latency is the time to its answer's head: a
            # body the client reads slowly must not make it look slow.
            if self.eventTime is None:
                client.balancer.measured(self.node, self.tryStart, now)
            else:
                # An HTTP/1.1 upstream's read, which ends with this
                # exchange's flush (or its end): the sample is taken there,
                # after the send (_sample), at the same time.
                self.unmeasured = True
        self._enter(STREAMING)
        self.status = status
        self.progress = self.headTime = now
        body = self.body
        if status == 101 or (body is not None and not body.done) or request.upgrade:
            # After a 101 the connection is a tunnel; an answer that comes
            # before the whole request body leaves the connection out of
            # step; after an upgrade request the parser stopped at its head
            # (what follows may be the other protocol): in every case no
            # further request is read on it.
            self.keepAlive = False
        writer = self.writer = self.server.responseWriter(
            request.method == b"HEAD" or status in _BODYLESS_STATUS or status < 200,
        )
        self.keepAlive = writer.head(
            status,
            reason,
            headers,
            contentLength=contentLength,
            chunked=chunked,
            version=request.version,
            keepAlive=self.keepAlive,
        )
        return True

    def responseBody(self, data: bytes) -> None:
        """
        See L{IExchange.responseBody}.
        """
        if self.state is STREAMING:
            now = self.eventTime
            self.progress = self.router.clock.seconds() if now is None else now
            self.bytesOut += len(data)
            self.writer.body(data)  # type: ignore[union-attr]

    def responseStreaming(self, upstream: IUpstreamConnection) -> None:
        """
        See L{IExchange.responseStreaming}.
        """
        self.server.streamFrom(upstream.producer)

    def responseComplete(self, trailers: Headers | None, reusable: bool) -> None:
        """
        See L{IExchange.responseComplete}.

        @param trailers: trailer fields of a chunked response, or L{None}.
        """
        if self.state is not STREAMING:
            return
        if self.grpcResponse and self.grpcStatus is None:
            self._grpcEnd(trailers)
        server = self.server
        self.writer.end(trailers)  # type: ignore[union-attr]
        # The response is out first: what follows (the connection back to
        # its pool, the balancer, accrual, metrics, telemetry) shapes none
        # of its bytes. The exchange is done from here: what the flush may
        # set off at once (a TLS or HTTP/2 client connection failing
        # there) finds it done, as when the flush came after _end.
        self.state = DONE
        server.flush()
        upstream, self.upstream = self.upstream, None
        if upstream is not None:
            server.stopStreaming()
            upstream.stopStreaming()
            body = self.body
            if body is not None and not body.sentAll:
                # The upstream answered before reading the whole body: the
                # connection is out of step, never reuse it.
                reusable = False
                upstream.bodySent()
            upstream.responseDone(reusable)
        # (positional: a call with keywords is not specialised by CPython)
        self._endTry(self.classification == SUCCESS, self.classification != RETRYABLE)
        self._end()
        server.exchangeDone(self, self.keepAlive)

    def _grpcHead(self, client: IDestination, status: int, headers: Headers) -> tuple[int, bool]:
        """
        Judge the head of a response to a gRPC call: by its C{grpc-status}
        when it has one (a trailers-only response) and the classifier is
        C{grpc}, any method being retryable then; otherwise as any response
        (a gRPC response's verdict then waits for its trailers:
        L{_grpcEnd}).
        """
        code, self.grpcResponse = grpc.responseStatus(status, headers)
        self.grpcStatus = code
        classifier = client.classifier
        if classifier.grpc and self.grpcResponse and code is not None and status == 200:
            return classifier.classifyGrpc(code), True
        return client.classify(self.request, status, headers)

    def _grpcEnd(self, trailers: Headers | None) -> None:
        """
        A gRPC response ended: its code is in its trailers (UNKNOWN when
        they have none). Too late for a retry, a failing code still counts
        against the endpoint.
        """
        code = self.grpcStatus = grpc.trailerStatus(trailers)
        classifier = self.client.classifier  # type: ignore[union-attr]  # routed
        if classifier.grpc and self.classification == SUCCESS:
            if classifier.classifyGrpc(code) != SUCCESS:
                self.classification = FAILURE

    def upgraded(self, upstream: IUpstreamConnection, rest: bytes) -> None:
        """
        See L{IExchange.upgraded}: splice the two connections.
        """
        self._endTry(True, measured=True)
        self._end()
        self.upstream = None
        server = self.server
        upstream.startTunnel(server.transport)
        if rest:
            server.write(rest)
        server.startTunnel(upstream.transport, self.upgradeRest)

    def upstreamLost(self, reason: str, stale: bool) -> None:
        """
        See L{IExchange.upstreamLost}.

        @param stale: whether it was a pooled connection that closed before
            sending any byte (likely closed by the upstream while idle).
        """
        state = self.state
        if state is DONE:
            return
        self.upstream = None
        if state is not STREAMING:
            if stale:
                self.staleConnection(reason)
                return
            address = _address(self.node)
            self.tryError = "upstream-reset"
            self._endTry(False)
            # The request was written: the upstream may have acted on it, so
            # only an idempotent one is sent again.
            if self._retry(RESET, False):
                return
            self.fail(
                ProxyError(
                    502,
                    "upstream-reset",
                    "Upstream %s closed the connection before answering." % (address,),
                )
            )
            return
        # Mid-response: the client cannot be told anything more than that
        # the message is cut short.
        self.tryError = self.meshErr = "upstream-reset"
        self._endTry(False, measured=True)
        self._abortClient()

    def upstreamError(self, reason: str) -> None:
        """
        See L{IExchange.upstreamError}.
        """
        state = self.state
        if state is DONE:
            return
        upstream, self.upstream = self.upstream, None
        if upstream is not None:
            upstream.abort()
        self.tryError = "upstream-protocol"
        if state is not STREAMING:
            address = _address(self.node)
            self._endTry(False)
            self.fail(
                ProxyError(
                    502,
                    "upstream-protocol",
                    "Upstream %s sent an invalid response: %s." % (address, reason),
                )
            )
        else:
            self.meshErr = "upstream-protocol"
            self._endTry(False, measured=True)
            self._abortClient()

    def flush(self) -> None:
        """
        See L{IExchange.flush}: then the latency sample of a response head
        just sent.
        """
        self.server.flush()
        if self.unmeasured:
            self._sample()

    # -- ends --------------------------------------------------------------

    def _tryTimedOut(self) -> None:
        self.tryTimer = None
        state = self.state
        if state is DONE or state is STREAMING:
            return
        self._dropUpstream()
        self.router.countError("try-timeout")
        self.tryError = "try-timeout"
        self._endTry(False)
        if self._retry(TIMEOUT, False):
            return
        self.fail(ProxyError(504, "timeout", "Timed out after %gs." % (self.router.perTryTimeout,)))

    def _timedOut(self) -> None:
        self.timer = None
        state = self.state
        if state is DONE:
            return
        clock = self.router.clock
        if state is STREAMING:
            # The total timeout bounds the wait for the response head; a
            # body then streams as long as it makes progress (a slow client
            # pausing it counts as progress: that is back-pressure).
            now = clock.seconds()
            idle = now - self.progress
            limit = self.router.deadlines.total
            if idle < limit:
                self.timer = clock.callLater(max(limit - idle, 0.001), self._timedOut)
                return
            if self.server.readingPaused():
                self.timer = clock.callLater(limit, self._timedOut)
                return
            self.router.countError("body-stalled")
            self.tryError = self.meshErr = "body-stalled"
            self._dropUpstream()
            self._endTry(False, measured=True)
            self._abortClient()
            return
        self._dropUpstream()
        self.tryError = "timeout"
        self._endTry(False)
        waited = ""
        if self.resolution is not None:
            waited = " waiting for %s to resolve" % (self.client.name,)  # type: ignore[union-attr]
        self.fail(
            ProxyError(
                504,
                "timeout",
                "Timed out after %gs%s." % (self.deadline - self.startTime, waited),
            )
        )

    def _abortClient(self) -> None:
        if self.grpc:
            # The stream is reset (INTERNAL_ERROR): INTERNAL to its caller.
            self.grpcStatus = grpc.INTERNAL
        self._end()
        self.server.abort()

    def fail(self, error: ProxyError) -> None:
        """
        Answer the client with an error made by meshproxy.
        """
        if self.state is DONE:
            return
        self._dropUpstream()
        self._abandonTry()
        self.meshErr = error.reason
        if self.grpc:
            # A gRPC answer (the client connection makes it): 200, the
            # code in grpc-status.
            self.status = 200
            self.grpcStatus = grpc.errorCode(error.status, error.reason)
        else:
            self.status = error.status
        request = self.request
        if request.method != b"HEAD" and not grpc.isGrpcRequest(request):
            # The answer's body (see sendError), counted before the
            # statistics are taken (by _end) as a forwarded one is.
            self.bytesOut += len(errorBody(error.reason, error.detail))
        self.router.countError(error.reason)
        self._end()
        server = self.server
        body = self.body
        if body is not None and body.drop():
            server.gate.resume("preconnect")
        keepAlive = self.keepAlive and (body is None or body.done)
        server.sendError(error, close=not keepAlive)
        server.flush()
        server.exchangeDone(self, keepAlive)

    def clientLost(self) -> None:
        """
        See L{IExchange.clientLost}.
        """
        if self.state is DONE:
            return
        self._dropUpstream()
        self.tryError = "client-gone"
        self._abandonTry()
        self.meshErr = "client-gone"
        if self.grpc:
            self.grpcStatus = grpc.CANCELLED
        if self.client is not None:
            self.router.countError("client-gone")
        self._end()

    def _end(self) -> None:
        """
        The exchange is over: timers, limits and statistics.
        """
        self.state = DONE
        timer = self.timer
        if timer is not None:
            self.timer = None
            if timer.active():
                timer.cancel()
        timer = self.tryTimer
        if timer is not None:
            self.tryTimer = None
            if timer.active():
                timer.cancel()
        resolution, self.resolution = self.resolution, None
        if resolution is not None:
            resolution()
        limiter, self.limiter = self.limiter, None
        if limiter is not None:
            limiter.release()
        if self.waiting:
            self._stopWaiting()
        router = self.router
        now = self.eventTime
        if now is None:
            now = router.clock.seconds()
        self.endTime = now
        client = self.client
        if client is not None:
            start = self.startTime
            head = self.headTime
            trace = self.trace
            router.record(
                client,
                self.status or 502,
                now - start,
                self.request.method,
                head - start if head else None,
                self.bytesIn,
                self.bytesOut,
                trace.traceId if trace is not None and trace.recording else None,
            )
            if self.grpc:
                router.recordGrpc(client, self.request.target, self.grpcStatus)
        router.observer.finished(self, now)


def _address(node: Node | None) -> str:
    return "?" if node is None else formatAddress(node.endpoint)
