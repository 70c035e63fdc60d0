"""
A loopback network in memory, on a fake clock, for tests of the routers'
logic: a L{MemoryNetwork} is a L{MemoryReactorClock} whose TCP connections
are made of L{MemoryTransport} pairs that a test moves forward with
L{MemoryNetwork.flush} (everything that can happen without time passing)
and L{MemoryNetwork.advance} (time passing, with the network settling
after each timer that fires, as on a real loopback where bytes cross in
microseconds).

What it models, as Twisted's TCP transports and a kernel do:

  - connection attempts (C{connectTCP}, so Twisted's client endpoints work
    unchanged) to a listening port complete, to a closed port are refused
    (C{ConnectionRefusedError}), to a L{blackhole} hang until their connect
    timeout (C{TimeoutError}); an attempt called off (C{stopConnecting})
    fails with C{UserError}, as the reactor's connector does;
  - bytes are delivered in reads of at most 64 KiB, only while the reader
    reads (a transport paused with C{pauseProducing} reads nothing, nor sees
    the end of the connection, until resumed); a writer whose unread bytes
    pass 64 KiB has its streaming producer paused, and resumed once they
    are read;
  - C{loseConnection} ends the connection after the bytes already written
    (C{ConnectionDone} both sides; a half-closeable peer gets
    C{readConnectionLost} instead and may still write); C{abortConnection}
    drops what is unsent and resets the peer (C{ConnectionLost}, like a
    RST); C{loseWriteConnection} half-closes;
  - a protocol's registered producer is stopped before its C{connectionLost}.

What it does not model: partial writes of the kernel, latency, TLS, and
anything a real socket does that a test should see on one (those tests stay
in the integration modules).

On top of it, L{MemoryProxy} runs meshproxy's services from a config text
(L{buildServices<meshproxy.runtime.buildServices>}, the same wiring as
C{twistd meshproxy}), with scripted upstreams (L{tests.support.BackendFactory}
and its handlers), raw clients (L{tests.support.RawClient}) and an admin
client (treq) that all live on the same network. At the end of a test the
proxy is stopped, and no connection may be left open
(L{MemoryNetwork.assertNothingOpen}).
"""

from __future__ import annotations

import json
import random
from itertools import count

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import error
from twisted.internet.address import IPv4Address
from twisted.internet.defer import fail, succeed
from twisted.internet.interfaces import (
    IConnector,
    IConsumer,
    IHalfCloseableProtocol,
    IListeningPort,
    IPushProducer,
    IStreamClientEndpoint,
    ITCPTransport,
)
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.web.iweb import IBodyProducer
from zope.interface import implementer

from tests.resilience_support import requestBytes
from tests.support import BackendFactory, RawClient, okHandler

__all__ = [
    "EPOCH",
    "MemoryNetwork",
    "MemoryTransport",
    "MemoryProxy",
    "MemoryAdminClient",
    "Instance",
    "backends",
    "delayedHandler",
    "resultOf",
    "sample",
    "seedRandomness",
]

#: The wall clock of a L{MemoryProxy} at fake time 0, in seconds since the
#: epoch (deadlines on the wire are wall-clock times).
EPOCH = 1_700_000_000.0

#: How many bytes one read takes, and how many unread bytes a writer may
#: have before its producer is paused (Twisted's C{bufferSize}).
READ_SIZE = 65536
WRITE_BUFFER = 65536

_LOOPBACK = "127.0.0.1"


# -- transports ---------------------------------------------------------------------------------


@implementer(ITCPTransport, IConsumer, IPushProducer)
class MemoryTransport:
    """
    One end of a connection of a L{MemoryNetwork}.

    @ivar protocol: the protocol this end delivers to.
    @ivar other: the transport of the other end.
    @ivar connected: whether the connection is open (until C{connectionLost}).
    @ivar disconnecting: whether L{loseConnection} or L{abortConnection} was
        called.
    @ivar disconnected: whether C{connectionLost} was delivered.
    @ivar aborted: whether L{abortConnection} was called.
    @ivar reading: whether this end reads (not paused, not closing).
    @ivar producerPaused: whether the registered producer was paused for
        this end's unread output.
    @ivar lostReason: the exception given to C{connectionLost}.
    """

    def __init__(self, network, protocol, host, peer):
        self.network = network
        self.protocol = protocol
        self.hostAddress = host
        self.peerAddress = peer
        self.other = None
        self.connected = True
        self.disconnecting = False
        self.disconnected = False
        self.aborted = False
        self.reading = True
        self.producer = None
        self.streamingProducer = False
        self.producerPaused = False
        self.lostReason = None
        self.noDelay = False
        self.keepAlive = False
        # Half-close: asked, then done once the bytes before it are read.
        self.writeClosing = False
        self.writeClosed = False
        # The peer's end of writing (or its close) reached us: to be seen
        # at our next read; readEnded once seen.
        self._eofPending = False
        self.readEnded = False
        # A reset by the peer, seen at our next read or write.
        self._resetPending = False
        self._out = []
        self._outSize = 0
        self._written = []

    def __repr__(self):
        return "<MemoryTransport %s:%s -> %s:%s %s>" % (
            self.hostAddress.host,
            self.hostAddress.port,
            self.peerAddress.host,
            self.peerAddress.port,
            type(self.protocol).__name__,
        )

    # -- for tests ------------------------------------------------------------------------------

    def value(self):
        """
        Every byte written on this end so far (read or not).
        """
        return b"".join(self._written)

    def unread(self):
        """
        The bytes written on this end that the other end has not read yet.
        """
        return b"".join(self._out)

    # -- ITransport -----------------------------------------------------------------------------

    def write(self, data):
        if not isinstance(data, bytes):
            raise TypeError("Data must be bytes, not %r" % (type(data).__name__,))
        if not self.connected or self.aborted or self.writeClosed or not data:
            return
        self._written.append(data)
        self._out.append(data)
        self._outSize += len(data)
        if (
            self.producer is not None
            and self.streamingProducer
            and not self.producerPaused
            and self._outSize > WRITE_BUFFER
        ):
            self.producerPaused = True
            self.producer.pauseProducing()

    def writeSequence(self, data):
        self.write(b"".join(data))

    def loseConnection(self):
        if not self.connected or self.disconnecting:
            return
        self.disconnecting = True
        self.reading = False

    def abortConnection(self):
        if not self.connected or self.aborted:
            return
        self.aborted = True
        self.disconnecting = True
        self.reading = False
        self._out = []
        self._outSize = 0

    def loseWriteConnection(self):
        if self.connected:
            self.writeClosing = True

    def getPeer(self):
        return self.peerAddress

    def getHost(self):
        return self.hostAddress

    def logPrefix(self):
        return "memory"

    # -- ITCPTransport --------------------------------------------------------------------------

    def getTcpNoDelay(self):
        return self.noDelay

    def setTcpNoDelay(self, enabled):
        self.noDelay = bool(enabled)

    def getTcpKeepAlive(self):
        return self.keepAlive

    def setTcpKeepAlive(self, enabled):
        self.keepAlive = bool(enabled)

    # -- IPushProducer: this end's reading ------------------------------------------------------

    def pauseProducing(self):
        self.reading = False

    def resumeProducing(self):
        if self.connected and not self.disconnecting and not self.readEnded:
            self.reading = True

    def stopProducing(self):
        self.loseConnection()

    # -- IConsumer: this end's writing ----------------------------------------------------------

    def registerProducer(self, producer, streaming):
        if self.producer is not None:
            raise RuntimeError(
                "Cannot register producer %s, because producer %s was never unregistered."
                % (producer, self.producer)
            )
        if self.disconnected:
            producer.stopProducing()
            return
        self.producer = producer
        self.streamingProducer = streaming
        if not streaming:
            producer.resumeProducing()

    def unregisterProducer(self):
        self.producer = None

    # -- the network's side ---------------------------------------------------------------------

    def _lost(self, reason):
        """
        Deliver C{connectionLost}, once, after stopping the registered
        producer (as Twisted's transports do).
        """
        if self.disconnected:
            return
        self.disconnected = True
        self.connected = False
        self.disconnecting = True
        self.reading = False
        self._out = []
        self._outSize = 0
        self.lostReason = reason
        producer, self.producer = self.producer, None
        if producer is not None:
            producer.stopProducing()
        self.protocol.connectionLost(Failure(reason))

    def _step(self):
        """
        Move this end one step: a reset to see, one read by the other end,
        the end of our writing, or our close.

        @return: whether anything happened.
        """
        if self.disconnected:
            return False
        other = self.other
        if self.aborted:
            self._lost(error.ConnectionAborted())
            if not other.disconnected:
                other._resetPending = True
            return True
        if self._resetPending and (self.reading or self._out):
            self._lost(error.ConnectionLost())
            return True
        if self._eofPending and self.reading:
            self._eofPending = False
            self.readEnded = True
            self.reading = False
            halfCloseable = IHalfCloseableProtocol(self.protocol, None)
            if halfCloseable is None:
                # Twisted closes the connection of a protocol that cannot
                # be half-closed: the peer sees its end too.
                self._lost(error.ConnectionDone())
                if not other.disconnected:
                    other._eofPending = True
            else:
                halfCloseable.readConnectionLost()
            return True
        if self._out:
            if other.disconnected:
                # Writing to a connection the peer closed: reset.
                self._lost(error.ConnectionLost())
                return True
            if not other.reading:
                return False
            data = b"".join(self._out)
            chunk, rest = data[:READ_SIZE], data[READ_SIZE:]
            self._out = [rest] if rest else []
            self._outSize = len(rest)
            if self.producerPaused and self._outSize <= WRITE_BUFFER:
                self.producerPaused = False
                if self.producer is not None:
                    self.producer.resumeProducing()
            other.protocol.dataReceived(chunk)
            return True
        if self.disconnecting:
            self._lost(error.ConnectionDone())
            if not other.disconnected:
                other._eofPending = True
            return True
        if self.writeClosing and not self.writeClosed:
            self.writeClosed = True
            if not other.disconnected:
                other._eofPending = True
            halfCloseable = IHalfCloseableProtocol(self.protocol, None)
            if halfCloseable is not None:
                halfCloseable.writeConnectionLost()
            return True
        return False


class _Closing(Protocol):
    """
    The server side of a connection its listener refused to build a
    protocol for: closed at once, as Twisted's port closes the socket.
    """

    def connectionMade(self):
        self.transport.loseConnection()


# -- listening ports and connection attempts ----------------------------------------------------


@implementer(IListeningPort)
class _MemoryPort:
    """
    A listening port of a L{MemoryNetwork}.
    """

    def __init__(self, network, factory, address):
        self.network = network
        self.factory = factory
        self.address = address
        self.listening = False

    def startListening(self):
        if not self.listening:
            self.listening = True
            self.network._listeners[self.address.port] = self
            self.factory.doStart()

    def stopListening(self):
        if self.listening:
            self.listening = False
            if self.network._listeners.get(self.address.port) is self:
                del self.network._listeners[self.address.port]
            self.factory.doStop()
        return succeed(None)

    loseConnection = stopListening

    def getHost(self):
        return self.address


@implementer(IConnector)
class _Attempt:
    """
    One C{connectTCP} call: its connector, and what became of it.

    @ivar host: the destination host.
    @ivar port: the destination port.
    @ivar factory: the client factory (for Twisted's client endpoints, the
        endpoint's wrapping factory).
    @ivar timeout: the connect timeout given, in seconds.
    @ivar state: C{"connecting"}, C{"connected"}, C{"refused"},
        C{"timed out"}, C{"failed"} or C{"cancelled"}.
    @ivar stoppedConnecting: whether the attempt was called off.
    @ivar startedAt: the fake time of the attempt.
    @ivar transport: the client end, once connected.
    """

    def __init__(self, network, host, port, factory, timeout):
        self.network = network
        self.host = host
        self.port = port
        self.factory = factory
        self.timeout = timeout
        self.state = "connecting"
        self.stoppedConnecting = False
        self.startedAt = network.seconds()
        self.transport = None
        self._timer = None
        if timeout:
            self._timer = network.callLater(timeout, self._timedOut)

    def __repr__(self):
        return "<attempt %s:%d %s>" % (self.host, self.port, self.state)

    def _settle(self, state):
        self.state = state
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _timedOut(self):
        self._timer = None
        if self.state == "connecting":
            self.fail(error.TimeoutError(), "timed out")

    def fail(self, reason=None, state="failed"):
        """
        Fail this attempt (refused by default).

        @param reason: the exception, C{ConnectionRefusedError()} by default.
        """
        if self.state != "connecting":
            raise RuntimeError("%r is not connecting" % (self,))
        if reason is None:
            reason, state = error.ConnectionRefusedError(), "refused"
        self._settle(state)
        self.factory.clientConnectionFailed(self, Failure(reason))

    def complete(self, serverFactory):
        """
        Connect this attempt to C{serverFactory}.

        @return: the client end's transport.
        """
        if self.state != "connecting":
            raise RuntimeError("%r is not connecting" % (self,))
        self._settle("connected")
        self.transport = self.network._link(
            self.factory.buildProtocol(IPv4Address("TCP", self.host, self.port)),
            serverFactory,
            self.host,
            self.port,
        )
        return self.transport

    # -- IConnector ---------------------------------------------------------------------------

    def stopConnecting(self):
        if self.state != "connecting":
            raise error.NotConnectingError("we're not trying to connect")
        self.stoppedConnecting = True
        self._settle("cancelled")
        self.factory.clientConnectionFailed(self, Failure(error.UserError()))

    def disconnect(self):
        if self.state == "connecting":
            self.stopConnecting()
        elif self.transport is not None:
            self.transport.loseConnection()

    def connect(self):
        raise NotImplementedError("a memory connection attempt is not restarted")

    def getDestination(self):
        return IPv4Address("TCP", self.host, self.port)


# -- the network --------------------------------------------------------------------------------


class NetworkDidNotSettle(Exception):
    """
    L{MemoryNetwork.flush} went round too many times: something loops.
    """


class MemoryNetwork(MemoryReactorClock):
    """
    A memory reactor whose TCP connections work, in memory (see the module
    docstring).

    @ivar attempts: every C{connectTCP} call, as L{_Attempt}s (which are
        also the connectors in C{connectors}; C{tcpClients} is kept too).
    """

    def __init__(self):
        MemoryReactorClock.__init__(self)
        self._listeners = {}
        self._blackholes = set()
        self._transports = []
        self._connecting = []
        self.watched = False
        self._ports = count(40000)
        self._ephemeral = count(50000)
        self.attempts = []

    # -- IReactorTCP --------------------------------------------------------------------------

    def listenTCP(self, port, factory, backlog=50, interface=""):
        if port == 0:
            port = next(self._ports)
        if port in self._listeners:
            raise error.CannotListenError(interface, port, OSError("address in use"))
        self.tcpServers.append((port, factory, backlog, interface))
        listening = _MemoryPort(self, factory, IPv4Address("TCP", interface or "0.0.0.0", port))
        listening.startListening()
        return listening

    def connectTCP(self, host, port, factory, timeout=30, bindAddress=None):
        attempt = _Attempt(self, host, port, factory, timeout)
        self.tcpClients.append((host, port, factory, timeout, bindAddress))
        self.connectors.append(attempt)
        self.attempts.append(attempt)
        if port not in self._blackholes:
            # Settled at the next flush; to a blackhole, it times out (or
            # the test settles it).
            self._connecting.append(attempt)
        factory.startedConnecting(attempt)
        return attempt

    # -- what tests set up --------------------------------------------------------------------

    def blackhole(self, port):
        """
        Make connection attempts to C{port} hang (no answer to the SYN)
        until their connect timeout.
        """
        self._blackholes.add(port)

    def unusedPort(self):
        """
        A port number nothing listens on (connecting to it is refused,
        unless it is made a L{blackhole}).
        """
        return next(self._ports)

    def isListening(self, port):
        """
        Whether something listens on C{port}.
        """
        return port in self._listeners

    def connectClient(self, port, protocol, peerHost=_LOOPBACK):
        """
        Connect C{protocol} (a test's client) to whatever listens on
        C{port}, at once, and settle the network.

        @param peerHost: the client's address, as the server sees it.
        @return: C{protocol}.
        @raise ConnectionRefusedError: nothing listens there.
        """
        listening = self._listeners.get(port)
        if listening is None:
            raise error.ConnectionRefusedError("nothing listens on port %d" % (port,))
        self._link(protocol, listening.factory, _LOOPBACK, port, clientHost=peerHost)
        self.flush()
        return protocol

    def _link(self, clientProtocol, serverFactory, host, port, clientHost=_LOOPBACK):
        """
        Make a connection from C{clientProtocol} to a protocol of
        C{serverFactory} listening on C{host:port}.

        @return: the client end's transport.
        """
        clientAddress = IPv4Address("TCP", clientHost, next(self._ephemeral))
        serverAddress = IPv4Address("TCP", host, port)
        serverProtocol = serverFactory.buildProtocol(clientAddress)
        if serverProtocol is None:
            serverProtocol = _Closing()
        if clientProtocol is None:
            clientProtocol = _Closing()
        clientEnd = MemoryTransport(self, clientProtocol, clientAddress, serverAddress)
        serverEnd = MemoryTransport(self, serverProtocol, serverAddress, clientAddress)
        clientEnd.other, serverEnd.other = serverEnd, clientEnd
        self._transports.extend([serverEnd, clientEnd])
        serverProtocol.makeConnection(serverEnd)
        clientProtocol.makeConnection(clientEnd)
        return clientEnd

    # -- moving forward -----------------------------------------------------------------------

    def flush(self):
        """
        Let everything happen that can without time passing: calls due
        now, connection attempts, reads, closes; until nothing moves.
        """
        for _ in range(1000000):
            moved = False
            due = self._nextCall()
            if due is not None and due <= self.seconds():
                Clock.advance(self, 0)
                moved = True
            connecting, self._connecting = self._connecting, []
            for attempt in connecting:
                if attempt.state != "connecting":
                    continue
                listening = self._listeners.get(attempt.port)
                if listening is None:
                    attempt.fail()
                else:
                    attempt.complete(listening.factory)
                moved = True
            for transport in list(self._transports):
                if transport._step():
                    moved = True
            self._transports = [t for t in self._transports if not t.disconnected]
            if not moved:
                return
        raise NetworkDidNotSettle()

    def advance(self, amount):
        """
        Let C{amount} seconds pass, firing each timer at its time, with the
        network settled before and after each.
        """
        end = self.seconds() + amount
        self.flush()
        due = self._nextCall()
        while due is not None and due <= end:
            self.rightNow = max(self.rightNow, due)
            self.flush()
            due = self._nextCall()
        self.rightNow = max(self.rightNow, end)
        self.flush()

    def runUntil(self, predicate, limit, what="the condition"):
        """
        Let time pass, timer by timer, until C{predicate()} is true.

        @param limit: the most fake seconds to let pass.
        @param what: what is awaited, for the failure message.
        @return: the fake seconds that passed.
        @raise AssertionError: C{limit} passed first.
        """
        start = self.seconds()
        end = start + limit
        self.flush()
        while not predicate():
            due = self._nextCall()
            if due is None or due > end:
                raise AssertionError(
                    "still waiting for %s after %g fake seconds" % (what, limit)
                )
            self.rightNow = max(self.rightNow, due)
            self.flush()
        return self.seconds() - start

    def _nextCall(self):
        """
        When the next delayed call is due, or L{None}.
        """
        self._sortCalls()
        return self.calls[0].getTime() if self.calls else None

    def transports(self):
        """
        The ends of the connections still open.
        """
        return [t for t in self._transports if not t.disconnected]

    def assertNothingOpen(self):
        """
        Settle the network and check that no connection is left open.

        @raise AssertionError: naming the ends still open.
        """
        self.flush()
        left = self.transports()
        if left:
            raise AssertionError("connections left open: %r" % (left,))


# -- upstreams ----------------------------------------------------------------------------------


class Instance:
    """
    One upstream that a test can kill (stop listening and reset its
    connections) and bring back on the same port.

    @ivar factory: its L{BackendFactory}.
    @ivar port: its port.
    """

    def __init__(self, network, handler=None, factory=None):
        self.network = network
        self.factory = factory if factory is not None else BackendFactory(handler)
        self.port = None
        self._listening = None

    @property
    def requests(self):
        return self.factory.requests

    @property
    def connections(self):
        return self.factory.connections

    def start(self):
        """
        Listen: on a free port the first time, then on the same port.

        @return: the port.
        """
        self._listening = self.network.listenTCP(self.port or 0, self.factory, interface=_LOOPBACK)
        self.port = self._listening.getHost().port
        return self.port

    def kill(self):
        """
        Stop listening and reset every open connection.
        """
        for c in list(self.factory.connections):
            c.transport.abortConnection()
        listening, self._listening = self._listening, None
        if listening is not None:
            listening.stopListening()
        self.network.flush()


def backends(network, *handlers):
    """
    Start one L{BackendFactory} per handler on C{network}, each on a free
    port.

    @return: a list of C{(factory, port)}.
    """
    result = []
    for handler in handlers:
        instance = Instance(network, handler)
        result.append((instance.factory, instance.start()))
    return result


def delayedHandler(clock, delay, label=b"slow"):
    """
    A handler answering 200 (like L{tests.support.okHandler}) C{delay}
    seconds after each request, on C{clock}.
    """
    answer = okHandler(label)

    def handle(proto, request):
        clock.callLater(delay, answer, proto, request)

    return handle


# -- clients ------------------------------------------------------------------------------------


def sample(samples, name, **labels):
    """
    One value of a scrape (see L{MemoryProxy.scrape}), 0 when the series is
    absent.
    """
    return samples.get((name, frozenset(labels.items())), 0.0)


def resultOf(d, what="a Deferred"):
    """
    The result C{d} already has (its failure raised).

    @raise AssertionError: C{d} has no result yet.
    """
    results = []
    d.addBoth(results.append)
    if not results:
        raise AssertionError("no result yet for %s" % (what,))
    result = results[0]
    if isinstance(result, Failure):
        result.raiseException()
    return result


@implementer(IStreamClientEndpoint)
class _ClientEndpoint:
    """
    A client endpoint connecting straight to a port of a L{MemoryNetwork}
    (without a C{connectTCP} attempt: the tests' own clients stay out of
    the proxy's attempts).
    """

    def __init__(self, network, port):
        self.network = network
        self.port = port

    def connect(self, factory):
        if not self.network.isListening(self.port):
            return fail(error.ConnectionRefusedError())
        proto = factory.buildProtocol(IPv4Address("TCP", _LOOPBACK, self.port))
        self.network._link(proto, self.network._listeners[self.port].factory, _LOOPBACK, self.port)
        return succeed(proto)


@implementer(IBodyProducer)
class _BytesProducer:
    """
    A request body for treq that is written at once (treq's own producer
    writes through the global cooperator, on the global reactor).
    """

    def __init__(self, body):
        self.body = body
        self.length = len(body)

    def startProducing(self, consumer):
        consumer.write(self.body)
        return succeed(None)

    def pauseProducing(self):
        pass

    def resumeProducing(self):
        pass

    def stopProducing(self):
        pass


class _EndpointFactory:
    def __init__(self, network):
        self.network = network

    def endpointForURI(self, uri):
        return _ClientEndpoint(self.network, uri.port)


class MemoryAdminClient:
    """
    treq against the admin API of a L{MemoryProxy}, over the memory network:
    each call sends, settles the network and returns the whole answer.

    @param token: sent as C{Authorization: Bearer <token>} unless a call
        says otherwise.
    """

    def __init__(self, network, port, token=None):
        from treq.client import HTTPClient
        from twisted.web.client import Agent, HTTPConnectionPool

        self.network = network
        self.base = "http://127.0.0.1:%d" % (port,)
        self.token = token
        self.pool = HTTPConnectionPool(network, persistent=True)
        self.pool.retryAutomatically = False
        self._http = HTTPClient(
            Agent.usingEndpointFactory(network, _EndpointFactory(network), pool=self.pool),
            data_to_body_producer=_BytesProducer,
        )

    def send(self, method, path, body=None, headers=None, token=Ellipsis):
        """
        Start one request.

        @return: a Deferred firing with an
            L{AdminResponse<tests.admin_support.AdminResponse>} once the
            network has carried it.
        """
        import treq

        from tests.admin_support import AdminResponse, requestParts

        if token is Ellipsis:
            token = self.token
        h, body = requestParts(body, headers, token)
        d = self._http.request(method, self.base + path, headers=h, data=body)

        def read(response):
            return treq.content(response).addCallback(
                lambda content: AdminResponse(response.code, response.headers, content)
            )

        return d.addCallback(read)

    def request(self, method, path, body=None, headers=None, token=Ellipsis):
        """
        Send one request and read the whole answer.

        @return: an L{AdminResponse<tests.admin_support.AdminResponse>}.
        """
        d = self.send(method, path, body=body, headers=headers, token=token)
        self.network.flush()
        return resultOf(d, "%s %s" % (method, path))

    def get(self, path, **kwargs):
        return self.request("GET", path, **kwargs)

    def put(self, path, body=None, **kwargs):
        return self.request("PUT", path, body=body, **kwargs)

    def post(self, path, body=None, **kwargs):
        return self.request("POST", path, body=body, **kwargs)

    def close(self):
        self.pool.closeCachedConnections()
        self.network.flush()


# -- the proxy ----------------------------------------------------------------------------------


_Random = random.Random


class _SeededRandom(_Random):
    """
    C{random.Random()} made deterministic: each new generator created
    without a seed gets the next of a fixed sequence of seeds.
    """

    seeds = count()

    def __init__(self, x=None):
        _Random.__init__(self, next(self.seeds) if x is None else x)


def seedRandomness(testCase, seed=0):
    """
    For the rest of the test, make every C{random.Random()} created without
    a seed (balancers, jitter) take the next of the seeds C{seed},
    C{seed + 1}, ...: the same test then makes the same random choices
    every time (given the same C{PYTHONHASHSEED}: endpoint sets are
    frozensets, whose order follows the hashes of their hosts).
    """
    testCase.patch(_SeededRandom, "seeds", count(seed))
    testCase.patch(random, "Random", _SeededRandom)


class MemoryProxy:
    """
    meshproxy's services built from a config text by C{buildServices} on a
    L{MemoryNetwork}, and started; stopped at the end of the test.

    Randomness (balancers, jitter) comes from seeded generators, and the
    HTTP routers' wall clock (for C{mesh-ctx-deadline}) is L{EPOCH} plus the
    fake time, so that a test runs the same way every time.

    @ivar network: the L{MemoryNetwork}.
    @ivar runtime: the L{Runtime<meshproxy.runtime.Runtime>}.
    @ivar services: the services, in start order.
    @ivar proxyPort: the port of the first router.
    @ivar adminPort: the port of the admin API.
    @ivar admin: a L{MemoryAdminClient} on the admin API.
    """

    def __init__(self, testCase, config, *, network=None, seed=0, configPath=None):
        """
        @param config: the config text (its listeners on port 0).
        @param seed: the first seed of the generators the proxy creates.
        @param configPath: passed to C{buildServices}.
        """
        from meshproxy.admin.site import AdminSite
        from meshproxy.config import parseConfig
        from meshproxy.runtime import buildServices

        self.testCase = testCase
        self.network = network if network is not None else MemoryNetwork()
        seedRandomness(testCase, seed)
        self.runtime, self.services = buildServices(
            parseConfig(config),
            reactor=self.network,
            configPath=configPath,
            wallClock=self.wallClock,
        )
        [self.site] = [
            s.factory for s in self.services if isinstance(getattr(s, "factory", None), AdminSite)
        ]
        for service in self.services:
            if hasattr(service, "privilegedStartService"):
                service.privilegedStartService()
        for service in self.services:
            service.startService()
        ports = [s.port.getHost().port for s in self.services if hasattr(s, "whenBound")]
        self.proxyPort = ports[0]
        self.adminPort = ports[-1]
        self.admin = MemoryAdminClient(self.network, self.adminPort)
        self._stopped = None
        if not self.network.watched:
            # Registered first, so checked last: once every proxy on the
            # network has stopped and every admin client has closed.
            self.network.watched = True
            testCase.addCleanup(self.network.assertNothingOpen)
        testCase.addCleanup(self._cleanUp)
        self.network.flush()

    def _cleanUp(self):
        """
        At the end of the test: stop, and check that every service stopped
        without an error (within the drain grace period, in fake time).
        """
        self.admin.close()
        d = self.stop()
        self.network.advance(self.runtime.shutdownGrace + 1)
        resultOf(d, "the services to stop")

    def wallClock(self):
        """
        The proxy's wall clock: L{EPOCH} plus the fake time.
        """
        return EPOCH + self.network.seconds()

    def wallMs(self):
        """
        The wall clock in epoch milliseconds, as C{mesh-ctx-deadline} has it.
        """
        return int(round(self.wallClock() * 1000))

    def router(self, name="web"):
        """
        The router C{name}.
        """
        return self.runtime.routers[name]

    def stop(self, graceful=False):
        """
        Stop every service as twistd would (last started first), aborting
        the client connections first unless C{graceful}.

        @return: a Deferred firing once every service has stopped (which,
            for a graceful stop, may need time to pass).
        """
        from twisted.internet.defer import gatherResults, maybeDeferred

        if self._stopped is not None:
            return self._stopped
        if not graceful:
            for listener in self.runtime.listeners:
                for conn in list(getattr(listener.factory, "connections", ())):
                    conn.transport.abortConnection()
            self.network.flush()
        self.serviceStops = {
            service: maybeDeferred(service.stopService) for service in reversed(self.services)
        }
        self._stopped = gatherResults(list(self.serviceStops.values()), consumeErrors=True)
        self.network.flush()
        return self._stopped

    # -- clients --------------------------------------------------------------------------------

    def connect(self, port=None, heads=(), peerHost=_LOOPBACK):
        """
        Connect a L{RawClient} to the proxy (or to C{port}).

        @param heads: the methods of the requests to be sent, for the
            framing of responses to HEAD.
        """
        client = RawClient(heads)
        self.network.connectClient(self.proxyPort if port is None else port, client, peerHost)
        return client

    def exchange(self, data, heads=(), port=None):
        """
        Send raw C{data} on a new connection and settle the network.

        @return: the L{RawClient}.
        """
        client = self.connect(port, heads)
        client.transport.write(data)
        self.network.flush()
        return client

    def send(self, method=b"GET", path=b"/", host=b"hello", headers=(), body=None, port=None):
        """
        Send one request (with C{Connection: close}) on a new connection and
        settle the network; what was answered so far is in the client.

        @return: the L{RawClient}.
        """
        heads = [method] if method == b"HEAD" else []
        request = requestBytes(method, path, host, headers, body)
        return self.exchange(request, heads=heads, port=port)

    # -- the admin API --------------------------------------------------------------------------

    def adminGet(self, path):
        """
        C{GET path} on the admin API, asserted to be a 200.

        @return: the body.
        """
        response = self.admin.get(path)
        self.testCase.assertEqual(response.code, 200, response)
        return response.body

    def scrape(self):
        """
        Scrape C{/metrics}.

        @return: a dict of C{(sample name, frozenset of label items)} →
            value.
        """
        body = self.adminGet("/metrics")
        samples = {}
        for family in text_string_to_metric_families(body.decode("utf-8")):
            for s in family.samples:
                samples[(s.name, frozenset(s.labels.items()))] = s.value
        return samples

    def retries(self, router="web"):
        """
        The router's C{meshproxy_retries_total} by reason, from C{/metrics}.
        """
        samples = self.scrape()
        return {
            reason: sample(samples, "meshproxy_retries_total", router=router, reason=reason)
            for reason in ("connect", "reset", "status", "timeout", "budget-exhausted")
        }

    def adminState(self):
        """
        C{GET /admin/state}, parsed.
        """
        return json.loads(self.adminGet("/admin/state"))

    def endpointState(self, name, port, router="web"):
        """
        The C{router.state()} entry of the endpoint at C{127.0.0.1:port} of
        bound name C{name}, or L{None}.
        """
        bound = self.router(router).state()["boundNames"].get(name)
        if bound is None:
            return None
        for entry in bound["endpoints"]:
            if entry["address"] == "127.0.0.1:%d" % (port,):
                return entry
        return None

    def limits(self, name, router="web"):
        """
        The limits of bound name C{name} in the router's state.
        """
        return self.router(router).state()["boundNames"][name]["limits"]
