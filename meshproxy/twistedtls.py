"""
Twisted's TLS (pyOpenSSL, with cryptography and service_identity), imported
only by a process that uses it.

Importing Twisted's reactor imports pyOpenSSL: C{twisted.internet.posixbase}
(the reactor's base) and C{twisted.internet.tcp} try to import Twisted's TLS
when they are imported, and so does C{twisted.internet.endpoints}, which
meshproxy's listeners and connectors use. That is about 12 MiB of a
process's memory, which a config without TLS never uses: meshproxy's own
TLS (C{tls} sections, C{upstreamTls}, C{ssl:} listen strings with a
certificate and a key) is the standard library's C{ssl}
(L{meshproxy.transport.tls}), with cryptography imported only to read
certificates (L{meshproxy.tls}).

L{installReactor}, called by C{twistd meshproxy} before anything imports the
reactor, imports those three Twisted modules with pyOpenSSL hidden, so that
they take the branch Twisted has for a Python without pyOpenSSL, then
installs meshproxy's reactor (L{meshproxy.reactor.MeshReactor}).
L{attachTLS} later gives them what that branch left out, at the first use
of Twisted's TLS:

  - a listen string Twisted terminates TLS for (C{ssl:} with arguments
    meshproxy leaves to Twisted, the admin API's C{ssl:}/C{tls:}):
    L{meshproxy.listeners} calls it before building the endpoint;
  - Twisted's HTTP client (treq: the etcd client, the tracing exporters),
    whose HTTPS wraps its connections with C{endpoints.wrapClientTLS}:
    L{attachTLS} runs when C{twisted.web.client} is first imported.

It also imports Twisted's web server module (C{twisted.web.http}, which the
admin API's C{Site} uses) with the C{h2} package hidden, for good: Twisted
serves HTTP/2 only to a TLS client whose ALPN chose it, and Twisted's TLS
listeners offer no ALPN protocols unless asked to (meshproxy's do not), so
that server never uses the 1.2 MiB of C{h2}, C{hpack}, C{hyperframe} and
C{priority} it would import. meshproxy's own HTTP/2 (L{meshproxy.http2})
imports C{h2} at the first HTTP/2 connection or C{h2} upstream.

L{withoutPyOpenSSL} imports other modules the same way, for good: those
that import pyOpenSSL only for a feature meshproxy does not use (AMP, the
workers' control channel, for its STARTTLS).

What a reactor installed this way does not have, even once TLS is attached:
C{startTLS} on its TCP connections (C{ITLSTransport}; the classes are made
when C{twisted.internet.tcp} is imported), which meshproxy does not use.
A reactor installed before (C{twistd --reactor}, trial) is left as it is,
with Twisted's TLS in full.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from importlib.machinery import ModuleSpec
from types import ModuleType
from typing import Any

__all__ = ["attachTLS", "installReactor", "tlsAttached", "withoutPyOpenSSL"]

#: The package hidden while the reactor is imported: each of Twisted's
#: modules that tries to import its TLS imports this first.
_HIDDEN = "OpenSSL"

#: The HTTP/2 package hidden while Twisted's web server is imported.
_HTTP2 = "h2"

#: Importing this module attaches Twisted's TLS first (HTTPS needs it).
_HTTPS_CLIENT = "twisted.web.client"


class _HidePackage:
    """
    An import finder that makes C{import NAME} (and its submodules) fail, as
    on a Python without that package.

    @ivar name: the package hidden.
    """

    def __init__(self, name: str) -> None:
        self.name = name

    def find_spec(
        self, name: str, path: Sequence[str] | None = None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if name == self.name or name.startswith(self.name + "."):
            raise ImportError("%s is imported only when used" % (self.name,), name=name)
        return None


class _AttachBeforeHTTPSClient:
    """
    An import finder that attaches Twisted's TLS when C{twisted.web.client}
    is first imported, then removes itself.
    """

    def find_spec(
        self, name: str, path: Sequence[str] | None = None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if name == _HTTPS_CLIENT:
            _removeFinder(self)
            attachTLS()
        return None


def _removeFinder(finder: object) -> None:
    if finder in sys.meta_path:
        sys.meta_path.remove(finder)


@contextmanager
def withoutPyOpenSSL() -> Iterator[None]:
    """
    Import, within it, modules that import pyOpenSSL only for a feature
    meshproxy does not use, as on a Python without pyOpenSSL (unless it is
    imported already, when there is nothing to save).

    The modules keep that for the life of the process; those whose TLS
    meshproxy uses get it back from L{attachTLS}.
    """
    with _without(_HIDDEN):
        yield


@contextmanager
def _without(package: str) -> Iterator[None]:
    """
    Within it, C{import package} fails, unless it is imported already.
    """
    if package in sys.modules:
        yield
        return
    hide = _HidePackage(package)
    sys.meta_path.insert(0, hide)
    try:
        yield
    finally:
        _removeFinder(hide)


def installReactor() -> Any:
    """
    Install meshproxy's reactor (L{meshproxy.reactor.MeshReactor}) without
    Twisted's TLS, unless a reactor is installed already (then it is left
    as it is); with Twisted's TLS if pyOpenSSL was imported already (then
    there is nothing to save). Twisted's web server is imported then too,
    without its HTTP/2. Return the global reactor.

    @return: C{twisted.internet.reactor}.
    """
    if "twisted.internet.reactor" not in sys.modules and _HIDDEN not in sys.modules:
        with withoutPyOpenSSL():
            # (meshproxy's reactor module imports Twisted's epoll reactor,
            # and with it posixbase and tcp)
            from meshproxy.reactor import install

            install()
            # meshproxy imports it for every listener and connection; it
            # decides at its import whether TLS exists, as posixbase does.
            import twisted.internet.endpoints  # noqa: F401
        with _without(_HTTP2):
            # Twisted's web server (the admin API's) serves HTTP/2 only
            # when a TLS listener's ALPN offers it, which meshproxy's do
            # not: without h2, hpack, hyperframe and priority a process
            # is 1.2 MiB smaller (meshproxy's HTTP/2 imports h2 at its
            # first HTTP/2 connection).
            import twisted.web.http  # noqa: F401
        if not tlsAttached() and _HTTPS_CLIENT not in sys.modules:
            sys.meta_path.insert(0, _AttachBeforeHTTPSClient())
    from meshproxy.reactor import install

    return install()


def tlsAttached() -> bool:
    """
    Whether Twisted's reactor and endpoints have their TLS: always, unless
    L{installReactor} installed them without it and L{attachTLS} has not
    run since.
    """
    posixbase = sys.modules.get("twisted.internet.posixbase")
    endpoints = sys.modules.get("twisted.internet.endpoints")
    return not (
        (posixbase is not None and posixbase.tls is None)
        or (endpoints is not None and endpoints.TLSMemoryBIOFactory is None)
    )


def attachTLS() -> None:
    """
    Import Twisted's TLS (pyOpenSSL) and give the reactor
    (C{IReactorSSL}: C{listenSSL}, C{connectSSL}) and
    C{twisted.internet.endpoints} (C{ssl:} and C{tls:} strings,
    C{wrapClientTLS}) what they have when imported with pyOpenSSL: the
    names their C{try: import ... except ImportError} left out. Does
    nothing when they have it already; cheap after the first call.
    """
    if tlsAttached():
        return
    from OpenSSL.SSL import Error as SSLError
    from twisted.internet import interfaces, posixbase, ssl as twistedSSL
    from twisted.protocols import _sni, tls as twistedTLS
    from zope.interface import classImplements

    if posixbase.tls is None:
        # posixbase.py: "try: from twisted.protocols import tls as _tls ...",
        # then "if tls is not None or ssl is not None: classImplements(...)".
        posixbase.tls = posixbase._tls = twistedTLS
        posixbase.ssl = posixbase._ssl = twistedSSL
        classImplements(posixbase.PosixReactorBase, interfaces.IReactorSSL)
    endpoints = sys.modules.get("twisted.internet.endpoints")
    if endpoints is not None and endpoints.TLSMemoryBIOFactory is None:
        # endpoints.py: "try: from OpenSSL.SSL import Error as SSLError ...".
        names: dict[str, Any] = {
            "SSLError": SSLError,
            "Certificate": twistedSSL.Certificate,
            "CertificateOptions": twistedSSL.CertificateOptions,
            "KeyPair": twistedSSL.KeyPair,
            "PrivateCertificate": twistedSSL.PrivateCertificate,
            "optionsForClientTLS": twistedSSL.optionsForClientTLS,
            "trustRootFromCertificates": twistedSSL.trustRootFromCertificates,
            "SNIConnectionCreator": _sni.SNIConnectionCreator,
            "_TLSServerEndpoint": _sni.TLSServerEndpoint,
            "autoReloadingDirectoryOfPEMs": _sni.autoReloadingDirectoryOfPEMs,
            "_TLSMemoryBIOFactory": twistedTLS.TLSMemoryBIOFactory,
            "TLSMemoryBIOFactory": twistedTLS.TLSMemoryBIOFactory,
        }
        for name, value in names.items():
            setattr(endpoints, name, value)
