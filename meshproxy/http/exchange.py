"""
One request/response exchange through the HTTP router: it joins the client
connection (L{ServerProtocol<meshproxy.http.server.ServerProtocol>}) to one
upstream connection (L{UpstreamProtocol<meshproxy.http.client.UpstreamProtocol>})
and carries the body both ways with back-pressure.
"""

from twisted.logger import Logger

from meshproxy.http.message import (
    HOP_BY_HOP,
    LAST_CHUNK,
    ProxyError,
    encodeChunk,
)

_log = Logger()

#: Request body bytes kept while no upstream connection is ready yet; past
#: this the client is paused.
PRECONNECT_BUFFER = 64 * 1024

#: How many times a request is sent again after a failure that proves the
#: upstream never saw it (connection refused, stale pooled connection).
MAX_CONNECT_TRIES = 3

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
        "chunkedOut",
        "closeDelimited",
        "keepAlive",
        "timer",
        "upgradeRest",
        "bodyless",
        "triedNodes",
        "sentBody",
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
        self.chunkedOut = False
        self.closeDelimited = False
        self.keepAlive = request.keepAlive
        self.timer = None
        self.upgradeRest = b""
        self.bodyless = request.method == b"HEAD"
        self.triedNodes = None
        self.sentBody = False

    # -- start and routing -----------------------------------------------

    def start(self):
        """
        Route the request and send it to the chosen endpoint.
        """
        router = self.router
        self.startTime = router.clock.seconds()
        try:
            self.client = router.route(self.request)
        except ProxyError as e:
            self.fail(e)
            return
        timeout = router.totalTimeout
        if timeout:
            self.timer = router.clock.callLater(timeout, self._timedOut)
        self._attempt()

    def _attempt(self):
        client = self.client
        node = client.balancer.pick()
        if node is not None and self.triedNodes is not None and node in self.triedNodes:
            # Prefer an endpoint that has not failed this request already.
            other = client.balancer.pick()
            if other is not None:
                node = other
        if node is None:
            self.fail(ProxyError(503, "no-endpoint", "No live endpoint for %s." % (client.name,)))
            return
        self.node = node
        self.tries += 1
        self.tryStart = client.balancer.start(node)
        node.payload.acquire(self)

    # -- request body from the client --------------------------------------

    def bodyReceived(self, data):
        """
        A piece of the request body arrived from the client.
        """
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
            if self.trailers:
                upstream.write(
                    b"0\r\n"
                    + b"".join(b"%s: %s\r\n" % (n, v) for n, v in self.trailers)
                    + b"\r\n"
                )
            else:
                upstream.write(LAST_CHUNK)
        if self.request.hasBody:
            upstream.transport.unregisterProducer()

    # -- upstream connection ---------------------------------------------

    def connected(self, upstream):
        """
        The pool has a connection for this exchange: send the request.
        """
        if self.done:
            upstream.pool.release(upstream)
            return
        self.upstream = upstream
        upstream.exchange = self
        request = self.request
        head = self.router.requestHead(request, self.server)
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
            if request.expectContinue and not self.bodyDone and not pending:
                self.server.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                self.server.flush()
            if self.bodyDone:
                self._finishRequestBody(upstream)
        else:
            upstream.write(head)

    def connectFailed(self, reason, retryable):
        """
        The try failed before the upstream could have seen the request.

        @param reason: a short description for logs and the answer.
        @param retryable: whether sending it again is safe (no byte of it
            was processed).
        """
        node = self.node
        self.upstream = None
        self.client.balancer.finish(node, self.tryStart, False)
        if self.done:
            return
        if retryable and self.tries < MAX_CONNECT_TRIES and self._replayable():
            if self.triedNodes is None:
                self.triedNodes = set()
            self.triedNodes.add(node)
            self._attempt()
            return
        self.fail(ProxyError(502, "upstream-connect", "Upstream %s: %s." % (node.endpoint.host + ":" + str(node.endpoint.port), reason)))

    def _replayable(self):
        # Once body bytes went to an upstream they are gone: only requests
        # whose body is still whole in the pre-connect buffer can be resent.
        return not self.request.hasBody or not self.sentBody

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
        """
        if self.done:
            return
        self.status = status
        self.responseStarted = True
        server = self.server
        request = self.request
        if status == 101:
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
            upgrade = _find(headers, b"upgrade")
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

    def responseBody(self, data):
        """
        A piece of the response body arrived from upstream.
        """
        if self.done or self.bodyless:
            return
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
            if trailers:
                server.write(
                    b"0\r\n"
                    + b"".join(b"%s: %s\r\n" % (n, v) for n, v in trailers)
                    + b"\r\n"
                )
            else:
                server.write(LAST_CHUNK)
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
        self._finish(self.status < 500)
        server.flush()
        server.exchangeDone(self, self.keepAlive)

    def upgraded(self, upstream, rest):
        """
        The upstream switched protocols (101): splice the two connections.
        """
        self.done = True
        self._cancelTimer()
        self.router.record(self.client, self.status, self.router.clock.seconds() - self.startTime)
        self.client.balancer.finish(self.node, self.tryStart, True)
        self.upstream = None
        upstream.exchange = None
        upstream.startTunnel(self.server)
        if rest:
            self.server.write(rest)
        self.server.startTunnel(upstream.transport, self.upgradeRest)

    def upstreamLost(self, reason, retryable):
        """
        The upstream connection failed while this exchange used it.

        @param retryable: whether the request can be sent again (no
            response byte arrived and the connection was reused, so it was
            likely closed by the upstream while idle).
        """
        if self.done:
            return
        self.upstream = None
        if not self.responseStarted:
            if retryable:
                self.connectFailed(reason, True)
                return
            self.client.balancer.finish(self.node, self.tryStart, False)
            self.fail(ProxyError(502, "upstream-reset", "Upstream failed: %s." % (reason,)))
            return
        # Mid-response: the client cannot be told anything more than that
        # the message is cut short.
        self.client.balancer.finish(self.node, self.tryStart, False)
        self._finishStats(False)
        self.done = True
        self._cancelTimer()
        self.server.flush()
        self.server.closing = True
        self.server.transport.abortConnection()

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
            self.client.balancer.finish(self.node, self.tryStart, False)
            self.fail(ProxyError(502, "upstream-protocol", "Upstream sent an invalid response: %s." % (reason,)))
        else:
            self.upstreamLost(reason, False)

    # -- ends --------------------------------------------------------------

    def _timedOut(self):
        self.timer = None
        if self.done:
            return
        upstream, self.upstream = self.upstream, None
        if upstream is not None:
            upstream.exchange = None
            upstream.transport.abortConnection()
        if self.node is not None:
            self.client.balancer.finish(self.node, self.tryStart, False)
        if self.responseStarted:
            self.done = True
            self._finishStats(False)
            self.server.closing = True
            self.server.flush()
            self.server.transport.abortConnection()
            return
        self.fail(ProxyError(504, "timeout", "Timed out after %gs." % (self.router.totalTimeout,)))

    def fail(self, error):
        """
        Answer the client with an error made by meshproxy.
        """
        if self.done:
            return
        self.done = True
        self._cancelTimer()
        self.status = error.status
        router = self.router
        router.countError(error.reason)
        if self.client is not None:
            router.record(self.client, error.status, router.clock.seconds() - self.startTime)
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
        self.done = True
        self._cancelTimer()
        upstream, self.upstream = self.upstream, None
        if upstream is not None:
            upstream.exchange = None
            upstream.transport.abortConnection()
        if self.node is not None:
            self.client.balancer.finish(self.node, self.tryStart, False)
        if self.client is not None:
            self.router.countError("client-gone")

    def _finish(self, success):
        self.done = True
        self._cancelTimer()
        self.client.balancer.finish(self.node, self.tryStart, success)
        self._finishStats(success)

    def _finishStats(self, success):
        router = self.router
        router.record(self.client, self.status or 502, router.clock.seconds() - self.startTime)

    def _cancelTimer(self):
        timer = self.timer
        if timer is not None:
            self.timer = None
            timer.cancel()


def _find(headers, lname):
    for n, v in headers:
        if n.lower() == lname:
            return v
    return None


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
