"""
The listeners of the process: Twisted endpoint strings with meshproxy's
defaults (a deep backlog; C{ssl:}/C{tls:} strings with meshproxy's TLS;
TCP routers' C{tcp:} listeners on meshproxy's own port,
L{meshproxy.transport.stream}),
TLS in front of a router's factory with its files watched for rotation, and
a listener that cannot bind reported in one line (C{router web: cannot
listen on tcp:4140: address already in use}).
"""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.logger import Logger

if TYPE_CHECKING:
    from twisted.application.service import IService
    from twisted.internet.interfaces import IListeningPort, IReactorTime, IStreamServerEndpoint
    from twisted.internet.protocol import Factory
    from twisted.python.failure import Failure

    from meshproxy.config import TLSConfig
    from meshproxy.http.router import HttpRouter
    from meshproxy.tcp.router import TcpRouter
    from meshproxy.tls import FileWatcher, ServerTLS
    from meshproxy.transport.tls import TLSServerFactory

_log = Logger()


class CannotListen(Exception):
    """
    A listener could not be bound.

    @ivar owner: what listens, C{"router web"} or C{"admin"}.
    @ivar listen: the endpoint as the config gives it.
    @ivar reason: why, in the proxy's words (L{listenProblem}).
    """

    def __init__(self, owner: str, listen: str, reason: str) -> None:
        Exception.__init__(self, owner, listen, reason)
        self.owner = owner
        self.listen = listen
        self.reason = reason

    def __str__(self) -> str:
        return "%s: cannot listen on %s: %s" % (self.owner, self.listen, self.reason)


#: What the errors of C{bind} and C{listen} mean, in the proxy's words.
_LISTEN_ERRORS = {
    errno.EADDRINUSE: "address already in use",
    errno.EADDRNOTAVAIL: "no such address on this host",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.ENOENT: "no such file or directory",
}


def listenProblem(error: object) -> str:
    """
    Say why a listener could not be bound, without Python's exception text.

    @param error: what C{listen} raised or failed with: a
        L{CannotListenError<twisted.internet.error.CannotListenError>}
        (whose C{socketError} says why), an L{OSError}, or anything else.
    @return: a short lowercase phrase, such as C{"address already in use"}.
    """
    cause = getattr(error, "socketError", error)
    if isinstance(cause, socket.gaierror):
        return "unknown interface address"
    if isinstance(cause, OSError) and cause.errno is not None:
        known = _LISTEN_ERRORS.get(cause.errno)
        if known is not None:
            if cause.errno in (errno.EACCES, errno.EPERM):
                known += " (a port below 1024 needs root or CAP_NET_BIND_SERVICE)"
            return known
        return (cause.strerror or errno.errorcode.get(cause.errno, str(cause.errno))).lower()
    text = str(cause).strip()
    return text or type(cause).__name__


class _ListenerService(StreamServerEndpointService):
    """
    A listener that fails the start of the process with L{CannotListen}
    when it cannot bind, says so in the log when it is bound, and tells
    L{Runtime} (for C{/ready}).

    @ivar owner: what listens, C{"router web"} or C{"admin"}.
    @ivar listen: the endpoint as the config gives it.
    @ivar description: C{"web (tcp:4140)"}, as C{/ready} names a listener
        it waits for.
    @ivar bound: whether the port is bound.
    @ivar port: the L{IListeningPort} once bound, else L{None}.
    """

    def __init__(
        self,
        endpoint: IStreamServerEndpoint,
        factory: Factory[Any],
        *,
        owner: str,
        listen: str,
        name: str,
        # IReactorTime and IReactorCore, which no one type says.
        reactor: Any,
    ) -> None:
        if servesTcpRouter(factory):
            # A TCP router's connections are spliced: its port and
            # connections are meshproxy's leaner ones (L{meshproxy.transport.stream}).
            from meshproxy.transport.stream import spliceEndpoint

            endpoint = spliceEndpoint(endpoint)
        StreamServerEndpointService.__init__(self, endpoint, factory)
        self._reactor = reactor
        self.owner = owner
        self.listen = listen
        self.description = "%s (%s)" % (name, listen)
        self.bound = False
        self.port: IListeningPort | None = None
        self._boundWaiters: list[Deferred[IListeningPort]] = []
        # One line per listener, ours, rather than Twisted's "Starting
        # factory <...ServerFactory object at 0x...>"; and Twisted's own
        # "... starting on 4140" says whose port it is.
        factory.noisy = False
        factory.logPrefix = lambda: owner  # type: ignore[method-assign]

    def privilegedStartService(self) -> None:
        """
        Bind now (as root, if the process starts as root).

        @raise CannotListen: if the endpoint cannot be bound.
        """
        Service.privilegedStartService(self)
        failed: list[CannotListen] = []
        self._synchronous = True
        self._waitingForPort = self.endpoint.listen(self.factory)
        self._waitingForPort.addCallbacks(self._bound, self._cannotListen, errbackArgs=(failed,))
        self._synchronous = False
        if failed:
            raise failed[0]

    def _cannotListen(self, failure: Failure, failed: list[CannotListen]) -> None:
        if failure.check(CancelledError):
            # stopService before the port was bound.
            return None
        error = CannotListen(self.owner, self.listen, listenProblem(failure.value))
        if self._synchronous:
            failed.append(error)
        else:
            # No endpoint Twisted ships binds later than listen() returns;
            # one that does cannot stop twistd's start any more: say why
            # and stop.
            _log.critical("{problem}", problem=str(error))
            self._reactor.callLater(0, self._reactor.stop)
        return None

    def _bound(self, port: IListeningPort) -> IListeningPort:
        self.bound = True
        self.port = port
        _log.info("{owner} listening on {listen}{actual}", owner=self.owner,
                  listen=self.listen, actual=_actualPort(self.listen, port))
        waiters, self._boundWaiters = self._boundWaiters, []
        for d in waiters:
            d.callback(port)
        return port

    def whenBound(self) -> Deferred[IListeningPort]:
        """
        A Deferred firing with the listening port once it is bound.
        """
        if self.port is not None:
            return succeed(self.port)
        d: Deferred[IListeningPort] = Deferred()
        self._boundWaiters.append(d)
        return d


def servesTcpRouter(factory: object) -> bool:
    """
    Whether a listener's factory is a TCP router's: its own
    L{TcpServerFactory<meshproxy.tcp.router.TcpServerFactory>}, or the
    L{PreambleFactory<meshproxy.transport.preamble.PreambleFactory>} in
    front of it (and of its TLS, when it terminates TLS).
    """
    from meshproxy.tcp.router import TcpServerFactory

    return isinstance(getattr(factory, "routerFactory", factory), TcpServerFactory)


def _actualPort(listen: str, port: IListeningPort) -> str:
    """
    C{" (port N)"} when the endpoint let the system choose the port
    (C{tcp:0}), else nothing.
    """
    from twisted.internet.endpoints import _parse

    try:
        args, _ = _parse(listen)
        if len(args) >= 2 and args[0] in ("tcp", "tcp6", "ssl", "tls") and int(args[1]) == 0:
            # (an IPv4Address or IPv6Address for these kinds)
            return " (port %d)" % (port.getHost().port,)  # type: ignore[attr-defined]
    except (ValueError, AttributeError, TypeError):
        pass
    return ""


def _sslListen(listen: str) -> tuple[str, TLSConfig | None]:
    """
    An C{ssl:}/C{tls:} listen string with a certificate and a key, as a
    C{tcp:} one and the C{tls} section it means: such listeners get
    meshproxy's TLS (ALPN answered or left unanswered, never an aborted
    handshake; TLS 1.2+; rotation) rather than Twisted's defaults. Strings
    with other TLS arguments (C{extraCertChain}, C{dhParameters}, ...) are
    left to Twisted.

    @return: C{(listen, tlsConfig)}, C{tlsConfig} being L{None} when the
        string is left as it is.
    """
    from twisted.internet.endpoints import _parse

    from meshproxy.config import CertificateConfig, TLSConfig

    if not listen.startswith(("ssl:", "tls:")):
        return listen, None
    args, kwargs = _parse(listen)
    if set(kwargs) - {"port", "privateKey", "certKey", "interface", "backlog"} or len(args) > 2:
        return listen, None
    port = args[1] if len(args) == 2 else kwargs.get("port", "443")
    key = kwargs.get("privateKey", "server.pem")
    cert = kwargs.get("certKey", key)
    tcp = "tcp:%s" % (port,)
    for name in ("interface", "backlog"):
        if name in kwargs:
            tcp += ":%s=%s" % (name, kwargs[name].replace(":", "\\:"))
    certificate = CertificateConfig(cert=os.path.abspath(cert), key=os.path.abspath(key))
    return tcp, TLSConfig(certificates=(certificate,))


def _terminateTLS(
    router: HttpRouter | TcpRouter,
    tlsConfig: TLSConfig,
    factory: Factory[Any],
    protocols: Sequence[bytes],
    reactor: IReactorTime,
    services: list[IService],
) -> tuple[TLSServerFactory, ServerTLS]:
    """
    Put TLS in front of a router's listening factory, its files watched for
    rotation.

    @return: the factory to listen with, and the
        L{ServerTLS<meshproxy.tls.ServerTLS>} (for the metrics).
    """
    from meshproxy.tls import FileWatcher, serverTLS
    from meshproxy.transport.tls import TLSServerFactory

    server = serverTLS(tlsConfig, protocols=protocols)
    router.tlsName = server.identity.name
    services.append(_WatchService(FileWatcher(server.files(), server.reload, clock=reactor)))
    return TLSServerFactory(factory, server), server


class _WatchService(Service):
    """
    Runs a L{FileWatcher<meshproxy.tls.FileWatcher>} while the process
    runs.
    """

    def __init__(self, watcher: FileWatcher) -> None:
        self.watcher = watcher

    def startService(self) -> None:
        Service.startService(self)
        self.watcher.start()

    def stopService(self) -> None:
        Service.stopService(self)
        self.watcher.stop()


#: The listen backlog of meshproxy's listeners unless their endpoint string
#: sets one: Twisted's default of 50 drops bursts of new connections (they
#: wait for SYN retries, a second or more).
DEFAULT_BACKLOG = 1024


#: The endpoint kinds whose Twisted parser takes a C{backlog} argument.
_BACKLOG_KINDS = frozenset(["tcp", "tcp6", "ssl", "unix"])


def _endpointString(description: str) -> str:
    """
    The Twisted server endpoint string for a C{listen} value: C{tls:} is the
    name users expect for a TLS listener (Twisted's parser says C{ssl:}),
    and the backlog defaults to L{DEFAULT_BACKLOG}.

    An C{ssl:} string is Twisted's TLS, which is attached now if the process
    runs without it (L{meshproxy.twistedtls}).
    """
    from twisted.internet.endpoints import _parse

    if description.startswith("tls:"):
        description = "ssl:" + description[4:]
    if description.startswith("ssl:"):
        from meshproxy.twistedtls import attachTLS

        attachTLS()
    args, kwargs = _parse(description)
    if args and args[0] in _BACKLOG_KINDS and "backlog" not in kwargs:
        description += ":backlog=%d" % (DEFAULT_BACKLOG,)
    return description


def _scheme(description: str) -> bytes:
    return b"https" if description.startswith(("ssl:", "tls:")) else b"http"
