"""
One request/response exchange through the HTTP router: it joins the client
connection (L{ServerProtocol<meshproxy.http.server.ServerProtocol>}) to one
upstream connection at a time
(L{UpstreamProtocol<meshproxy.http.client.UpstreamProtocol>}), carries the
body both ways with back-pressure, and decides, try by try, whether a
failure is answered or retried on another endpoint.

A try ends in one of these ways:
  - a response head arrives: it is classified (success, retryable failure,
    failure); a retryable one is dropped and retried if the request can be
    replayed, the retry budget allows it and time remains; anything else
    streams to the client, after which nothing is retried;
  - the connection cannot be made (refused, connect timeout): retried for
    any method, under the connection budget, since the request never left;
  - the connection fails after the request was written but before any
    response byte (reset, or a pooled connection the upstream had closed):
    retried only for idempotent requests, since the upstream may have acted
    on it;
  - the per-try timeout passes before the response head: retried when the
    method is idempotent;
  - the total timeout passes before the response head: answered 504, never
    retried. Once the head is sent on, the body streams for as long as it
    makes progress: it is cut only when no byte came for a whole C{total}
    (and the client was not the one holding it back).
"""

import time

from twisted.logger import Logger

from meshproxy.http.message import (
    HOP_BY_HOP,
    ProxyError,
    encodeChunk,
    findHeader,
    lastChunk,
)
from meshproxy.resilience.classifiers import RETRYABLE, SUCCESS

_log = Logger()

#: Request body bytes kept while no upstream connection is ready yet; past
#: this the client is paused.
PRECONNECT_BUFFER = 64 * 1024

#: Tries on pooled connections that turn out to be closed (a keep-alive
#: race, not a failure of the endpoint) before giving up.
MAX_STALE_TRIES = 3

_BODYLESS_STATUS = frozenset([204, 304])


class Exchange:
    """
    The life of one request.

    @ivar server: the client connection.
    @ivar request: the L{Request<meshproxy.http.message.Request>}.
    @ivar router: the router that chose the destination.
    @ivar responseStarted: whether any response byte went to the client (no
        retry and no error answer is possible after that).
    """

    __slots__ = (
        "server",
        "request",
        "router",
        "client",
        "node",
        "startTime",
        "tryStart",
        "upstream",
        "pending",
        "pendingSize",
        "bodyDone",
        "bodySentAll",
        "trailers",
        "responseStarted",
        "status",
        "done",
        "tries",
        "retries",
        "stale",
        "chunkedOut",
        "closeDelimited",
        "keepAlive",
        "timer",
        "tryTimer",
        "retryTimer",
        "deadline",
        "upgradeRest",
        "bodyless",
        "triedNodes",
        "sentBody",
        "replay",
        "replaySize",
        "classification",
        "limited",
        "waiting",
        "connecting",
        "override",
        "progress",
        "continued",
    )

    def __init__(self, server, request, router):
        self.server = server
        self.request = request
        self.router = router
        self.client = None
        self.node = None
        self.startTime = 0.0
        self.tryStart = 0.0
        self.upstream = None
        self.pending = None
        self.pendingSize = 0
        self.bodyDone = not request.hasBody
        self.bodySentAll = False
        self.trailers = None
        self.responseStarted = False
        self.status = 0
        self.done = False
        self.tries = 0
        self.retries = 0
        self.stale = 0
        self.chunkedOut = False
        self.closeDelimited = False
        self.keepAlive = request.keepAlive
        self.timer = None
        self.tryTimer = None
        self.retryTimer = None
        self.deadline = 0.0
        self.upgradeRest = b""
        self.bodyless = request.method == b"HEAD"
        self.triedNodes = None
        self.sentBody = False
        # The request body kept for a replay, while it fits.
        self.replay = [] if request.hasBody and router.bufferBytes else None
        self.replaySize = 0
        self.classification = SUCCESS
        self.limited = False
        self.waiting = False
        self.connecting = None
        self.override = None
        self.progress = 0.0
        self.continued = False

    # -- start and routing -----------------------------------------------

    def start(self):
        """
        Route the request and send it to the chosen endpoint.
        """
        router = self.router
        now = self.startTime = router.clock.seconds()
        try:
            self.client = router.route(self.request, self)
        except ProxyError as e:
            self.fail(e)
            return
        limiter = self.client.limiter
        if limiter is not None:
            if not limiter.tryAcquire():
                self.fail(
                    ProxyError(503, "overloaded", "Too many requests in flight to %s." % (self.client.name,))
                )
                return
            self.limited = True
        total = router.totalTimeout
        if self.server.trusted and router.trustDeadline:
            remaining = router.incomingDeadline(self.request)
            if remaining is not None:
                if remaining <= 0:
                    self.fail(ProxyError(504, "deadline-expired", "The caller's deadline has passed."))
                    return
                total = min(total, remaining)
        self.deadline = now + total
        self.timer = router.clock.callLater(total, self._timedOut)
        router.budget.deposit()
        router.connectBudget.deposit()
        self._attempt()

    def _attempt(self):
        self.retryTimer = None
        if self.done:
            return
        client = self.client
        balancer = client.balancer
        # Prefer an endpoint that has not failed this request already.
        node = balancer.pickAvoiding(self.triedNodes)
        if node is None:
            self.fail(ProxyError(503, "no-endpoint", "No live endpoint for %s." % (client.name,)))
            return
        self.node = node
        self.tries += 1
        accrual = client.accrual
        if accrual is not None:
            accrual.picked(node)
        self.tryStart = balancer.start(node)
        perTry = self.router.perTryTimeout
        if perTry:
            remaining = self.deadline - self.router.clock.seconds()
            if perTry < remaining:
                self.tryTimer = self.router.clock.callLater(perTry, self._tryTimedOut)
        pool = node.payload
        limiter = client.limiter
        if limiter is not None and limiter.maxPending is not None and not pool.idle:
            # This request will wait for a new connection.
            if not limiter.pendingAcquire():
                self._abandonTry()
                self.fail(
                    ProxyError(503, "overloaded", "Too many requests waiting for %s." % (client.name,))
                )
                return
            self.waiting = True
        pool.acquire(self)

    def _stopWaiting(self):
        if self.waiting:
            self.waiting = False
            self.client.limiter.pendingRelease()

    # -- request body from the client --------------------------------------

    def bodyReceived(self, data):
        """
        A piece of the request body arrived from the client.
        """
        replay = self.replay
        if replay is not None:
            self.replaySize += len(data)
            if self.replaySize > self.router.bufferBytes:
                self.replay = None
            else:
                replay.append(data)
        upstream = self.upstream
        if upstream is not None and self.pending is None:
            if self.request.chunked:
                upstream.write(encodeChunk(data))
            else:
                upstream.write(data)
            return
        if self.done:
            return
        if self.pending is None:
            self.pending = []
        self.pending.append(data)
        self.pendingSize += len(data)
        if self.pendingSize > PRECONNECT_BUFFER:
            self.server.gate.pause("preconnect")

    def bodyComplete(self, trailers):
        """
        The request body (and its trailers, for chunked bodies) is complete.
        """
        self.bodyDone = True
        self.trailers = trailers
        upstream = self.upstream
        if upstream is not None and self.pending is None:
            self._finishRequestBody(upstream)

    def _finishRequestBody(self, upstream):
        if self.bodySentAll:
            return
        self.bodySentAll = True
        if self.request.chunked:
            upstream.write(lastChunk(self.trailers))
        if self.request.hasBody:
            upstream.transport.unregisterProducer()

    # -- upstream connection ---------------------------------------------

    def connected(self, upstream):
        """
        The pool has a connection for this exchange: send the request.
        """
        self._stopWaiting()
        if self.done:
            upstream.exchange = None
            upstream.pool.release(upstream)
            return
        self.upstream = upstream
        upstream.exchange = self
        # Latency is measured from here: the time to open a connection is
        # not the endpoint's answer time, and must not make a fresh endpoint
        # look slow to the balancer.
        self.tryStart = self.router.clock.seconds()
        request = self.request
        head = self.router.requestHead(request, self)
        pending, self.pending = self.pending, None
        if request.hasBody:
            self.sentBody = True
            upstream.transport.registerProducer(self.server.gate, True)
            if pending:
                if request.chunked:
                    body = b"".join(encodeChunk(p) for p in pending)
                else:
                    body = b"".join(pending)
                upstream.write(head + body)
                if self.pendingSize > PRECONNECT_BUFFER:
                    self.server.gate.resume("preconnect")
            else:
                upstream.write(head)
            if request.expectContinue and not self.bodyDone and not pending and not self.continued:
                # Once, on the first connection actually made (a refused
                # first try must not leave the client waiting).
                self.continued = True
                self.server.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                self.server.flush()
            if self.bodyDone:
                self._finishRequestBody(upstream)
        else:
            upstream.write(head)

    def _replayable(self):
        """
        Whether the request can be sent again: it has no body, or none of it
        went upstream yet, or all of it is kept.
        """
        if not self.request.hasBody or not self.sentBody:
            return True
        return self.replay is not None and self.bodyDone

    def _rewind(self):
        """
        Prepare the kept body to be sent again from the start.
        """
        if self.request.hasBody and self.sentBody:
            self.pending = list(self.replay)
            self.pendingSize = self.replaySize
            self.sentBody = False
            self.bodySentAll = False
        self.upstream = None

    def _tryFailed(self, reason, anyMethod, budgetKind):
        """
        The current try failed before any response byte reached the client:
        retry it or answer.

        @param reason: the retry reason for metrics (C{"connect"},
            C{"status"}, C{"timeout"}, C{"reset"}).
        @param anyMethod: whether the failure proves the upstream never
            processed the request (so any method may be retried).
        @param budgetKind: C{"connect"} or C{"request"}: which budget pays.
        @return: whether a retry was scheduled.
        """
        router = self.router
        if self.done or self.responseStarted:
            return False
        if not anyMethod and not self.client.classifier.isIdempotent(
            self.request.method, self._hasIdempotencyKey()
        ):
            return False
        if self.retries >= router.maxRetries or not self._replayable():
            return False
        now = router.clock.seconds()
        delay = router.backoff.delay(self.retries + 1)
        if now + delay >= self.deadline:
            return False
        budget = router.connectBudget if budgetKind == "connect" else router.budget
        if not budget.tryWithdraw():
            router.countRetry("budget-exhausted")
            return False
        self.retries += 1
        router.countRetry(reason)
        self._rewind()
        if delay > 0:
            self.retryTimer = router.clock.callLater(delay, self._attempt)
        else:
            self._attempt()
        return True

    def _hasIdempotencyKey(self):
        return self.request.header(b"idempotency-key") is not None

    def _closeTry(self):
        """
        Stop the current try's timer and waiting; return its node (or
        L{None} when no try is under way), which is no longer current.
        """
        node = self.node
        if node is None:
            return None
        self.node = None
        self._stopWaiting()
        timer = self.tryTimer
        if timer is not None:
            self.tryTimer = None
            timer.cancel()
        return node

    def _endTry(self, success):
        """
        Account the end of the current try on its node.
        """
        node = self._closeTry()
        if node is None:
            return
        client = self.client
        client.balancer.finish(node, self.tryStart, success)
        accrual = client.accrual
        if accrual is not None:
            if success:
                accrual.success(node)
            else:
                accrual.failure(node)
        if not success:
            # A retry goes elsewhere when it can.
            if self.triedNodes is None:
                self.triedNodes = set()
            self.triedNodes.add(node)

    def _abandonTry(self):
        """
        The current try ends without a verdict on its node.
        """
        node = self._closeTry()
        if node is None:
            return
        # No verdict: neither a success nor a failure of the endpoint.
        node.pending -= 1
        if self.client.accrual is not None:
            self.client.accrual.abandon(node)

    def connectFailed(self, reason, retryable):
        """
        The try failed before the upstream could have seen the request.

        @param reason: a short description for logs and the answer.
        @param retryable: whether sending it again is safe (no byte of it
            was processed).
        """
        self.upstream = None
        self._stopWaiting()
        if self.done:
            self._abandonTry()
            return
        address = _address(self.node)
        self._endTry(False)
        if retryable and self._tryFailed("connect", True, "connect"):
            return
        self.fail(ProxyError(502, "upstream-connect", "Upstream %s: %s." % (address, reason)))

    def staleConnection(self, reason):
        """
        A pooled connection was closed by the upstream before it answered:
        a keep-alive race, not a failure of the endpoint. Send again on a
        fresh connection.
        """
        self.upstream = None
        node = self.node
        if self.done:
            self._abandonTry()
            return
        if (
            self.stale < MAX_STALE_TRIES
            and self._replayable()
            and self.client.classifier.isIdempotent(self.request.method, self._hasIdempotencyKey())
        ):
            # Only idempotent requests: the upstream may have read this one
            # before it closed.
            self.stale += 1
            self._rewind()
            if self.tryTimer is None or self.tryTimer.active():
                node.payload.acquire(self)
                return
        address = _address(node)
        self._abandonTry()
        self.fail(ProxyError(502, "upstream-reset", "Upstream %s closed the connection: %s." % (address, reason)))

    # -- response from upstream -------------------------------------------

    def responseHead(self, status, reason, headers, contentLength, chunked):
        """
        The upstream's response head arrived.

        @param status: the status code.
        @param reason: the reason phrase, as received.
        @param headers: C{(name, value)} pairs as received.
        @param contentLength: the declared length (bytes, as received) or
            L{None}.
        @param chunked: whether the upstream body is chunked.
        @return: C{False} when the response is dropped for a retry (the
            upstream connection is then closed), C{True} otherwise.
        """
        if self.done:
            return True
        timer = self.tryTimer
        if timer is not None:
            # The per-try timeout bounds the wait for the head, not the
            # streaming of the body.
            self.tryTimer = None
            timer.cancel()
        request = self.request
        retryableHeader = False
        if status >= 400:
            value = findHeader(headers, b"mesh-retryable")
            retryableHeader = value is not None and value.strip().lower() == b"true"
        classification = self.client.classifier.classify(
            request.method,
            status,
            retryableHeader,
            status >= 400 and self._hasIdempotencyKey(),
        )
        self.classification = classification
        if classification == RETRYABLE and status != 101:
            upstream = self.upstream
            self._endTry(False)
            if self._tryFailed("status", retryableHeader, "request"):
                # The rest of this response is not wanted: drop the
                # connection rather than read a body nobody will see.
                if upstream is not None:
                    upstream.exchange = None
                    upstream.transport.abortConnection()
                return False
            # Not retried: the failure itself is the answer.
        self.status = status
        self.responseStarted = True
        self.progress = self.router.clock.seconds()
        server = self.server
        if status == 101 or not self.bodyDone or request.upgrade:
            # After a 101 the connection is a tunnel; an answer that comes
            # before the whole request body leaves the connection out of
            # step; after an upgrade request the parser stopped at its head
            # (what follows may be the other protocol): in every case no
            # further request is read on it.
            self.keepAlive = False
        bodyless = self.bodyless or status in _BODYLESS_STATUS or status < 200
        self.bodyless = bodyless
        lines = [b"HTTP/1.1 %d %s\r\n" % (status, reason)]
        append = lines.append
        tokens = None
        for name, value in headers:
            n = name.lower()
            if n in HOP_BY_HOP:
                if n == b"connection":
                    tokens = value
                    continue
                if n == b"content-length" and bodyless:
                    append(b"%s: %s\r\n" % (name, value))
                continue
            append(b"%s: %s\r\n" % (name, value))
        if tokens is not None:
            lines = _dropNamed(lines, tokens)
            append = lines.append
        append(b"Via: 1.1 meshproxy\r\n")
        if status == 101:
            upgrade = findHeader(headers, b"upgrade")
            append(b"Connection: Upgrade\r\n")
            if upgrade is not None:
                append(b"Upgrade: %s\r\n" % (upgrade,))
        elif not bodyless:
            if contentLength is not None and not chunked:
                append(b"Content-Length: %s\r\n" % (contentLength,))
            elif request.version == "1.1":
                append(b"Transfer-Encoding: chunked\r\n")
                self.chunkedOut = True
            else:
                self.closeDelimited = True
                self.keepAlive = False
        if not self.keepAlive and status != 101:
            append(b"Connection: close\r\n")
        elif request.version == "1.0":
            append(b"Connection: keep-alive\r\n")
        append(b"\r\n")
        server.write(b"".join(lines))
        return True

    def responseBody(self, data):
        """
        A piece of the response body arrived from upstream.
        """
        if self.done or self.bodyless:
            return
        self.progress = self.router.clock.seconds()
        if self.chunkedOut:
            self.server.write(encodeChunk(data))
        else:
            self.server.write(data)

    def responseComplete(self, trailers, reusable):
        """
        The upstream response ended.

        @param trailers: trailer fields of a chunked response, or L{None}.
        @param reusable: whether the upstream connection can serve another
            request.
        """
        if self.done:
            return
        server = self.server
        if self.chunkedOut:
            server.write(lastChunk(trailers))
        upstream = self.upstream
        self.upstream = None
        if upstream is not None:
            upstream.exchange = None
            upstream.stopStreaming(server)
            if not self.bodySentAll and self.request.hasBody:
                # The upstream answered before reading the whole body: the
                # connection is out of step, never reuse it.
                reusable = False
                upstream.transport.unregisterProducer()
            upstream.responseDone(reusable)
        self._endTry(self.classification == SUCCESS)
        self._end()
        server.flush()
        server.exchangeDone(self, self.keepAlive)

    def upgraded(self, upstream, rest):
        """
        The upstream switched protocols (101): splice the two connections.
        """
        self._endTry(True)
        self._end()
        self.upstream = None
        upstream.exchange = None
        upstream.startTunnel(self.server)
        if rest:
            self.server.write(rest)
        self.server.startTunnel(upstream.transport, self.upgradeRest)

    def upstreamLost(self, reason, stale):
        """
        The upstream connection failed while this exchange used it.

        @param stale: whether it was a pooled connection that closed before
            sending any byte (likely closed by the upstream while idle).
        """
        if self.done:
            return
        self.upstream = None
        if not self.responseStarted:
            if stale:
                self.staleConnection(reason)
                return
            address = _address(self.node)
            self._endTry(False)
            # The request was written: the upstream may have acted on it, so
            # only an idempotent one is sent again.
            if self._tryFailed("reset", False, "connect"):
                return
            self.fail(ProxyError(502, "upstream-reset", "Upstream %s failed: %s." % (address, reason)))
            return
        # Mid-response: the client cannot be told anything more than that
        # the message is cut short.
        self._endTry(False)
        self._abortClient()

    def upstreamError(self, reason):
        """
        The upstream sent something that is not HTTP.
        """
        if self.done:
            return
        upstream, self.upstream = self.upstream, None
        if upstream is not None:
            upstream.exchange = None
            upstream.transport.abortConnection()
        if not self.responseStarted:
            self._endTry(False)
            self.fail(ProxyError(502, "upstream-protocol", "Upstream sent an invalid response: %s." % (reason,)))
        else:
            self._endTry(False)
            self._abortClient()

    # -- ends --------------------------------------------------------------

    def _dropUpstream(self):
        """
        Let go of the current try's connection, or of its connection
        attempt.
        """
        self._stopWaiting()
        connecting, self.connecting = self.connecting, None
        if connecting is not None:
            connecting.abandon()
        upstream, self.upstream = self.upstream, None
        if upstream is not None:
            upstream.exchange = None
            upstream.transport.abortConnection()

    def _tryTimedOut(self):
        self.tryTimer = None
        if self.done or self.responseStarted:
            return
        self._dropUpstream()
        self.router.countError("try-timeout")
        self._endTry(False)
        if self._tryFailed("timeout", False, "request"):
            return
        self.fail(ProxyError(504, "timeout", "Timed out after %gs." % (self.router.perTryTimeout,)))

    def _timedOut(self):
        self.timer = None
        if self.done:
            return
        if self.responseStarted:
            # The total timeout bounds the wait for the response head; a
            # body then streams as long as it makes progress (a slow client
            # pausing it counts as progress: that is back-pressure).
            clock = self.router.clock
            now = clock.seconds()
            idle = now - self.progress
            limit = self.router.totalTimeout
            if idle < limit or getattr(self.server.transport, "producerPaused", False):
                self.timer = clock.callLater(max(limit - idle, 0.001) if idle < limit else limit, self._timedOut)
                return
            self.router.countError("body-stalled")
        self._dropUpstream()
        if self.node is not None:
            self._endTry(False)
        if self.responseStarted:
            self._abortClient()
            return
        self.fail(ProxyError(504, "timeout", "Timed out after %gs." % (self.deadline - self.startTime,)))

    def _abortClient(self):
        self._end()
        server = self.server
        server.closing = True
        server.flush()
        server.transport.abortConnection()

    def fail(self, error):
        """
        Answer the client with an error made by meshproxy.
        """
        if self.done:
            return
        self._dropUpstream()
        self._abandonTry()
        self.status = error.status
        router = self.router
        router.countError(error.reason)
        self._end()
        server = self.server
        if self.pending is not None and self.pendingSize > PRECONNECT_BUFFER:
            server.gate.resume("preconnect")
        self.pending = None
        keepAlive = self.keepAlive and self.bodyDone
        server.sendError(error, close=not keepAlive)
        server.flush()
        server.exchangeDone(self, keepAlive)

    def clientLost(self):
        """
        The client went away: drop the upstream side too.
        """
        if self.done:
            return
        self._dropUpstream()
        self._abandonTry()
        if self.client is not None:
            self.router.countError("client-gone")
        self._end()

    def _end(self):
        """
        The exchange is over: timers, limits and statistics.
        """
        self.done = True
        for name in ("timer", "tryTimer", "retryTimer"):
            timer = getattr(self, name)
            if timer is not None:
                setattr(self, name, None)
                if timer.active():
                    timer.cancel()
        if self.limited:
            self.limited = False
            self.client.limiter.release()
        self._stopWaiting()
        client = self.client
        if client is not None:
            router = self.router
            router.record(client, self.status or 502, router.clock.seconds() - self.startTime)

    def deadlineHeader(self):
        """
        The remaining deadline as C{mesh-ctx-deadline} (epoch milliseconds).
        """
        remaining = self.deadline - self.router.clock.seconds()
        return b"%d" % (int((time.time() + max(0.0, remaining)) * 1000),)


def _address(node):
    if node is None:
        return "?"
    endpoint = node.endpoint
    if ":" in endpoint.host:
        return "[%s]:%d" % (endpoint.host, endpoint.port)
    return "%s:%d" % (endpoint.host, endpoint.port)


def _dropNamed(lines, connectionValue):
    """
    Remove header lines named in a C{Connection} header value (RFC 9110
    7.6.1): they too are hop-by-hop.
    """
    names = {t.strip().lower() for t in connectionValue.split(b",") if t.strip()}
    if not names:
        return lines
    kept = [lines[0]]
    for line in lines[1:]:
        name = line.split(b":", 1)[0].lower()
        if name not in names:
            kept.append(line)
    return kept
