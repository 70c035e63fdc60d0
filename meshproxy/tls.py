"""
TLS both ways, with the standard library's C{ssl} (the connections carried
by L{meshproxy.transport.tls}) and service_identity.

  - L{ServerTLS} terminates TLS on a listener: the certificate chosen by SNI
    (exact and wildcard names, the first certificate being the default),
    ALPN answered, TLS 1.2 or later, optional or required client
    certificates verified against a CA bundle. L{ServerTLS.reload} reads
    the files again: new connections get the new certificates, open ones
    keep theirs, and a broken file keeps the old ones.
  - L{ClientTLS} originates TLS to an upstream: the server certificate is
    verified against a CA bundle and the expected identity (a DNS name or a
    URI such as C{spiffe://mesh.local/users}), with an optional client
    certificate (mTLS).
  - L{identityOf} reads a peer certificate's identity: its URI SAN, else
    its DNS SAN, else its subject common name.
"""

from __future__ import annotations

import hashlib
import os
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IProtocolFactory, IStreamClientEndpoint
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from zope.interface import implementer

from meshproxy.discovery.endpoints import Endpoint
from meshproxy.transport.connector import IConnector
from meshproxy.transport.interfaces import ITLSClientContexts, ITLSServerContexts

# cryptography, service_identity and meshproxy.transport.tls are imported by
# the functions that use them, not here: the HTTP router imports this module
# for its upstream TLS, and a process whose config has no TLS section does
# not import them (tests/test_imports.py).
if TYPE_CHECKING:
    from cryptography import x509
    from OpenSSL import crypto
    from service_identity.hazmat import DNS_ID

__all__ = [
    "CertificateFile",
    "ClientContext",
    "ClientTLS",
    "FileWatcher",
    "TLSConnector",
    "expectedIdentity",
    "forwardedClientCert",
    "serverTLS",
    "PeerIdentity",
    "ServerTLS",
    "TLSFileError",
    "identityOf",
]

_log = Logger()

#: Mozilla's "intermediate" cipher list for TLS 1.2 (TLS 1.3 suites are
#: always on): forward secrecy and AEAD only.
CIPHERS = (
    b"ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    b"ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    b"ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:"
    b"DHE-RSA-AES128-GCM-SHA256:DHE-RSA-AES256-GCM-SHA384"
)

_VERSIONS = {"TLSv1.2": ssl.TLSVersion.TLSv1_2, "TLSv1.3": ssl.TLSVersion.TLSv1_3}

_OPTIONS = ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_NO_RENEGOTIATION


class TLSFileError(Exception):
    """
    A certificate, key or CA file cannot be used; the message says which
    and why.
    """


@dataclass(frozen=True)
class PeerIdentity:
    """
    Who a peer certificate names.

    @ivar uris: its URI SANs (C{spiffe://…}).
    @ivar dnsNames: its DNS SANs.
    @ivar commonName: its subject CN, or L{None}.
    @ivar sha256: the hex SHA-256 of the certificate (DER).
    """

    uris: tuple[str, ...] = ()
    dnsNames: tuple[str, ...] = ()
    commonName: str | None = None
    sha256: str = ""

    @property
    def name(self) -> str | None:
        """
        The identity that counts: the first URI SAN, else the first DNS SAN,
        else the common name.
        """
        if self.uris:
            return self.uris[0]
        if self.dnsNames:
            return self.dnsNames[0]
        return self.commonName


def identityOf(certificate: crypto.X509 | x509.Certificate) -> PeerIdentity:
    """
    The identity a certificate names.

    @param certificate: as meshproxy's TLS gives it, or as pyOpenSSL does
        (Twisted's TLS, on C{ssl:} listen strings meshproxy leaves to it).
    """
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding
    from cryptography.x509.oid import NameOID

    # (duck-typed: pyOpenSSL is not imported for it)
    cert = certificate.to_cryptography() if hasattr(certificate, "to_cryptography") else certificate
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = tuple(san.get_values_for_type(x509.UniformResourceIdentifier))
        dnsNames = tuple(san.get_values_for_type(x509.DNSName))
    except x509.ExtensionNotFound:
        uris = dnsNames = ()
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    commonName = str(names[0].value) if names else None
    digest = hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest()
    return PeerIdentity(uris, dnsNames, commonName, digest)


@dataclass(frozen=True)
class CertificateFile:
    """
    One certificate a listener serves.

    @ivar cert: the PEM file of the certificate (and its chain).
    @ivar key: the PEM file of its private key.
    @ivar sni: the server names it is chosen for (C{api.example},
        C{*.api.example}); empty for the default.
    """

    cert: str
    key: str
    sni: tuple[str, ...] = ()


def _readFile(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise TLSFileError(f"cannot read {what} {path}: {e.strerror or e}") from None


def _readCertificates(path: str) -> tuple[bytes, list[x509.Certificate]]:
    """
    The PEM certificates in a file.

    @return: the file's bytes, and its certificates.
    """
    from cryptography import x509

    data = _readFile(path, "certificate file")
    try:
        return data, x509.load_pem_x509_certificates(data)
    except ValueError as e:
        raise TLSFileError(f"{path} holds no PEM certificate: {e}") from None


def _checkKey(path: str, certificate: x509.Certificate, certPath: str) -> None:
    """
    Check that a key file holds the (unencrypted) PEM private key of
    C{certificate}.

    @raise TLSFileError: if it does not.
    """
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    data = _readFile(path, "key file")
    try:
        key = load_pem_private_key(data, None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise TLSFileError(f"{path} holds no PEM private key (or it is encrypted)") from None
    if _publicBytes(key.public_key()) != _publicBytes(certificate.public_key()):
        raise TLSFileError(f"the key {path} does not belong to the certificate {certPath}")


def _publicBytes(key: Any) -> bytes:
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    return bytes(key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo))


def _noPassword() -> bytes:
    # A key that became encrypted since it was checked fails to load,
    # rather than OpenSSL asking for its password on the terminal.
    return b""


def expiryOf(certificate: x509.Certificate) -> float:
    """
    When a certificate expires, as a Unix time.
    """
    return certificate.not_valid_after_utc.timestamp()


def _matches(pattern: str, name: str) -> bool:
    """
    Whether a server name matches an SNI pattern: exactly, or one leftmost
    label for a C{*.} wildcard.
    """
    if pattern.startswith("*."):
        suffix = pattern[1:]
        return name.endswith(suffix) and "." not in name[: -len(suffix)] and len(name) > len(suffix)
    return name == pattern


@implementer(ITLSServerContexts)
class ServerTLS:
    """
    The TLS side of one listener, with the standard library's C{ssl} (each
    connection's L{ssl.SSLObject} made by L{serverObject}, carried by
    L{TLSProtocol<meshproxy.transport.tls.TLSProtocol>}).

    Sessions are resumed (TLS 1.3 tickets, TLS 1.2 session IDs) from the
    session cache and ticket keys of the listener's own default context:
    one listener's sessions are never resumed on another's, nor after its
    files are reloaded.

    @ivar expiries: each loaded certificate's expiry (Unix time), by its
        file, for the metrics.
    @ivar reloadFailures: how many reloads failed (and kept the old files).
    @ivar identity: the L{PeerIdentity} of the default certificate.
    """

    def __init__(
        self,
        certificates: Sequence[CertificateFile],
        *,
        protocols: Sequence[bytes] = (b"http/1.1",),
        clientCA: str | None = None,
        verify: str | None = None,
        minVersion: str = "TLSv1.2",
    ) -> None:
        """
        @param certificates: the certificates; the first is the default.
        @param protocols: the ALPN protocols offered, in preference order;
            a client offering none of them gets no ALPN answer (never an
            aborted handshake).
        @param clientCA: the CA bundle client certificates are checked
            against, or L{None} for no client certificates.
        @param verify: C{"required"} or C{"optional"} with C{clientCA}.
        @param minVersion: C{"TLSv1.2"} or C{"TLSv1.3"}.
        @raise TLSFileError: when a file cannot be used.
        """
        if not certificates:
            raise ValueError("a TLS listener needs at least one certificate")
        if minVersion not in _VERSIONS:
            raise ValueError(f"minVersion must be one of {sorted(_VERSIONS)}, got {minVersion!r}")
        self._files = tuple(certificates)
        self._protocols = [p.decode("ascii") for p in protocols]
        self._clientCA = clientCA
        self._verify = verify
        self._minVersion = _VERSIONS[minVersion]
        self.expiries: dict[str, float] = {}
        self.reloadFailures = 0
        self._default, self._byName = self._build()

    def files(self) -> list[str]:
        """
        Every file this listener reads (for watching).
        """
        paths = []
        for c in self._files:
            paths += [c.cert, c.key]
        if self._clientCA is not None:
            paths.append(self._clientCA)
        return paths

    def _build(self) -> tuple[ssl.SSLContext, list[tuple[str, ssl.SSLContext]]]:
        clientCAs = None
        if self._clientCA is not None:
            data, _ = _readCertificates(self._clientCA)
            clientCAs = data.decode("ascii", "replace")
        expiries = {}
        contexts = []
        leaves = []
        for c in self._files:
            _, chain = _readCertificates(c.cert)
            _checkKey(c.key, chain[0], c.cert)
            ctx = self._context(c, clientCAs)
            contexts.append((c, ctx))
            leaves.append(chain[0])
            expiries[c.cert] = expiryOf(chain[0])
        default = contexts[0][1]
        byName = [(pattern.lower(), ctx) for c, ctx in contexts for pattern in c.sni]
        if byName:
            default.sni_callback = self._chooseBySNI
        # Only once every file was read: a failed reload keeps the old ones.
        self.expiries = expiries
        self.identity = identityOf(leaves[0])
        return default, byName

    def _context(self, files: CertificateFile, clientCAs: str | None) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = self._minVersion
        ctx.options |= _OPTIONS
        ctx.set_ciphers(CIPHERS.decode("ascii"))
        try:
            ctx.load_cert_chain(files.cert, files.key, password=_noPassword)
        except OSError as e:
            # (the files were read a moment ago: changed since)
            raise TLSFileError(
                f"cannot load the certificate {files.cert} with the key {files.key}: {e}"
            ) from None
        if clientCAs is not None:
            try:
                ctx.load_verify_locations(cadata=clientCAs)
            except ssl.SSLError as e:
                raise TLSFileError(f"cannot use the CA file {self._clientCA}: {e}") from None
            ctx.verify_mode = ssl.CERT_REQUIRED if self._verify == "required" else ssl.CERT_OPTIONAL
        if self._protocols:
            # The first of ours the client offers; none answered (and the
            # handshake goes on) when it offers none of them.
            ctx.set_alpn_protocols(self._protocols)
        return ctx

    def _chooseBySNI(
        self, connection: ssl.SSLObject, name: str | None, context: ssl.SSLContext
    ) -> None:
        if not name:
            return
        host = name.lower().rstrip(".")
        for pattern, ctx in self._byName:
            if _matches(pattern, host):
                connection.context = ctx
                return

    def serverObject(self, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO) -> ssl.SSLObject:
        """
        See L{ITLSServerContexts.serverObject}: a connection with the default
        certificate, switched by SNI during the handshake.
        """
        return self._default.wrap_bio(incoming, outgoing, server_side=True)

    def reload(self) -> bool:
        """
        Read every file again. New connections get what was read; if a file
        is broken, everything stays as it was.

        @return: whether the new files are in use.
        """
        try:
            built = self._build()
        except (TLSFileError, ssl.SSLError) as e:
            self.reloadFailures += 1
            _log.error("TLS files not reloaded, keeping the previous ones: {why}", why=str(e))
            return False
        self._default, self._byName = built
        _log.info(
            "TLS certificates reloaded: {files}", files=", ".join(c.cert for c in self._files)
        )
        return True


class ClientContext:
    """
    The TLS settings of connections to upstreams, from one C{upstreamTls}
    section: the CA bundle they are checked against, a client certificate
    (mTLS), the minimum version. The files are read when it is made and by
    L{reload}, never per connection; connections to every service the
    section covers share it.

    @ivar context: the current L{ssl.SSLContext}. It verifies the chain;
        the name is L{ClientTLS}'s to check.
    @ivar h2Context: the same, offering only C{h2} by ALPN (for upstreams
        reached over HTTP/2).
    @ivar autoContext: the same, offering C{h2} then C{http/1.1} (for
        upstreams whose protocol is learnt by ALPN).
    @ivar expiries: the client certificate's expiry (Unix time), by its
        file, for the metrics; empty without a client certificate.
    @ivar reloadFailures: how many reloads failed (and kept the old files).
    """

    def __init__(
        self,
        *,
        ca: str,
        cert: str | None = None,
        key: str | None = None,
        minVersion: str = "TLSv1.2",
        protocols: Sequence[bytes] = (b"http/1.1",),
    ) -> None:
        """
        @param ca: the CA bundle upstream certificates are checked against.
        @param cert: a client certificate to present (mTLS), or L{None}.
        @param key: its key.
        @param minVersion: C{"TLSv1.2"} or C{"TLSv1.3"}.
        @param protocols: the ALPN protocols offered.
        @raise TLSFileError: when a file cannot be used.
        """
        self._ca = ca
        self._cert = cert
        self._key = key
        self._minVersion = _VERSIONS[minVersion]
        self._protocols = [p.decode("ascii") for p in protocols]
        self.expiries: dict[str, float] = {}
        self.reloadFailures = 0
        self.context, self.h2Context, self.autoContext = self._buildAll()

    def files(self) -> list[str]:
        """
        Every file this reads (for watching).
        """
        return [p for p in (self._ca, self._cert, self._key) if p is not None]

    def _buildAll(self) -> tuple[ssl.SSLContext, ssl.SSLContext, ssl.SSLContext]:
        """
        The context offering the configured ALPN protocols, the one
        offering C{h2}, and the one offering both, from the same files.
        """
        context = self._build(self._protocols)
        return context, self._build(["h2"]), self._build(["h2", "http/1.1"])

    def _build(self, protocols: list[str]) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        # The chain is verified by OpenSSL; the name, by ClientTLS.verify
        # (a DNS name by RFC 6125, or a URI SAN exactly).
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.minimum_version = self._minVersion
        ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
        ctx.set_ciphers(CIPHERS.decode("ascii"))
        data, _ = _readCertificates(self._ca)
        try:
            ctx.load_verify_locations(cadata=data.decode("ascii", "replace"))
        except ssl.SSLError as e:
            raise TLSFileError(f"cannot use the CA file {self._ca}: {e}") from None
        cert = self._cert
        expiries = {}
        if cert is not None:
            key = self._key or cert
            _, chain = _readCertificates(cert)
            _checkKey(key, chain[0], cert)
            try:
                ctx.load_cert_chain(cert, key, password=_noPassword)
            except OSError as e:
                # (the files were read a moment ago: changed since)
                raise TLSFileError(
                    f"cannot load the certificate {cert} with the key {key}: {e}"
                ) from None
            expiries[cert] = expiryOf(chain[0])
        if protocols:
            ctx.set_alpn_protocols(protocols)
        # Only once every file was read: a failed reload keeps the old ones.
        self.expiries = expiries
        return ctx

    def reload(self) -> bool:
        """
        Read the files again; new connections use them. A broken file keeps
        the previous ones.

        @return: whether the new files are in use.
        """
        try:
            self.context, self.h2Context, self.autoContext = self._buildAll()
        except (TLSFileError, ssl.SSLError) as e:
            self.reloadFailures += 1
            _log.error(
                "upstream TLS files not reloaded, keeping the previous ones: {why}", why=str(e)
            )
            return False
        return True


@implementer(ITLSClientContexts)
class ClientTLS:
    """
    TLS to upstreams whose certificates must name one identity.

    @ivar expected: the identity (a DNS name, or a URI with C{://}).
    @ivar settings: the L{ClientContext} (CA, client certificate).
    """

    def __init__(
        self,
        expected: str,
        *,
        settings: ClientContext | None = None,
        ca: str | None = None,
        cert: str | None = None,
        key: str | None = None,
        minVersion: str = "TLSv1.2",
        protocols: Sequence[bytes] = (b"http/1.1",),
        upstreamProtocol: str = "http/1.1",
    ) -> None:
        """
        @param expected: the identity the upstream's certificate must name.
        @param upstreamProtocol: C{"http/1.1"} (the settings' protocols
            offered by ALPN); C{"h2"}: only C{h2} is offered, and an upstream
            that does not choose it fails the handshake; C{"auto"}: C{h2}
            and C{http/1.1} are offered, the upstream chooses.
        @param settings: the shared L{ClientContext}; or, to make one,
        @param ca: the CA bundle upstream certificates are checked against,
        @param cert: a client certificate to present (mTLS), or L{None},
        @param key: its key,
        @param minVersion: C{"TLSv1.2"} or C{"TLSv1.3"},
        @param protocols: the ALPN protocols offered.
        @raise TLSFileError: when a file cannot be used.
        @raise ValueError: when C{expected} cannot be a DNS name or URI.
        """
        from service_identity.hazmat import DNS_ID

        self.expected = expected
        self._dnsID: DNS_ID | None
        if "://" in expected:
            # A URI (a SPIFFE ID) names a workload by its whole text:
            # service_identity's URI-IDs compare only scheme and host.
            self._serverName = None
            self._dnsID = None
        else:
            # (refuses a name that cannot be a DNS-ID)
            self._dnsID = DNS_ID(expected)
            self._serverName = expected
        if settings is None:
            if ca is None:
                raise ValueError("give settings, or a ca")
            settings = ClientContext(
                ca=ca, cert=cert, key=key, minVersion=minVersion, protocols=protocols
            )
        self.settings = settings
        self.h2 = upstreamProtocol == "h2"
        self.auto = upstreamProtocol == "auto"

    def clientObject(self, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO) -> ssl.SSLObject:
        """
        See L{ITLSClientContexts.clientObject}: the settings' current
        context (offering C{h2} for an HTTP/2 upstream, C{h2} and
        C{http/1.1} for one learnt by ALPN), sending the
        expected DNS name by SNI.
        """
        settings = self.settings
        if self.h2:
            context = settings.h2Context
        elif self.auto:
            context = settings.autoContext
        else:
            context = settings.context
        return context.wrap_bio(
            incoming, outgoing, server_side=False, server_hostname=self._serverName
        )

    def verify(self, tls: ssl.SSLObject) -> None:
        """
        See L{ITLSClientContexts.verify}: the upstream's certificate (its
        chain verified against the CA) must have a URI SAN equal to the
        expected URI, or name the expected DNS name (RFC 6125, by
        service_identity).

        @raise VerificationError: when it does not.
        @raise ssl.SSLError: when an HTTP/2 upstream did not choose C{h2}
            by ALPN.
        """
        from cryptography import x509
        from service_identity import VerificationError
        from service_identity.cryptography import extract_patterns
        from service_identity.hazmat import verify_service_identity

        if self.h2 and tls.selected_alpn_protocol() != "h2":
            raise ssl.SSLError("the upstream did not choose h2 by ALPN")
        der = tls.getpeercert(binary_form=True)
        if der is None:
            # (not with CERT_REQUIRED; the errors' type does not matter)
            raise VerificationError(errors=["no certificate"])  # type: ignore[list-item]
        certificate = x509.load_der_x509_certificate(der)
        if self._dnsID is None:
            if self.expected not in identityOf(certificate).uris:
                raise VerificationError(errors=[f"no URI SAN {self.expected}"])  # type: ignore[list-item]
        else:
            verify_service_identity(extract_patterns(certificate), [self._dnsID], [])


@implementer(IConnector)
class TLSConnector:
    """
    Upstream connections over TLS: the connections of an inner connector
    (TCP), each wrapped in TLS verified by a L{ClientTLS}.

    The protocol a connection gets is told about the end of the handshake
    (Twisted's L{IHandshakeListener}); until then nothing it sends is
    known to reach a verified upstream.
    """

    #: Whether connections are TLS (the HTTP pool waits for the handshake).
    secure = True

    def __init__(self, inner: IConnector, creator: ClientTLS) -> None:
        """
        @param inner: makes the plain connections.
        @param creator: the TLS settings and expected identity.
        """
        self._inner = inner
        self.creator = creator
        self.timeout = inner.timeout

    def endpointFor(self, endpoint: Endpoint) -> IStreamClientEndpoint:
        """
        See L{IConnector.endpointFor}.
        """
        from meshproxy.transport.tls import TLSClientEndpoint

        return TLSClientEndpoint(self._inner.endpointFor(endpoint), self.creator)

    def connect(self, endpoint: Endpoint, factory: IProtocolFactory) -> Deferred[Any]:
        """
        See L{IConnector.connect}: fires once the TCP connection is made
        (the handshake then runs).
        """
        return self.endpointFor(endpoint).connect(factory)


def serverTLS(config: Any, *, protocols: Sequence[bytes]) -> ServerTLS:
    """
    The L{ServerTLS} a router's C{tls} config section describes.

    @param protocols: the ALPN protocols to answer.
    @raise TLSFileError: when a file cannot be used.
    """
    client = config.clientCertificates
    return ServerTLS(
        [CertificateFile(c.cert, c.key, tuple(c.sni)) for c in config.certificates],
        protocols=protocols,
        clientCA=None if client is None else client.ca,
        verify=None if client is None else client.verify,
        minVersion=config.minVersion,
    )


def expectedIdentity(template: str, service: str) -> str:
    """
    The identity an upstream's certificate must name, from a C{serverName}
    template: C{{service}} is the service (for an address C{host:port},
    the host).
    """
    host = service.rsplit(":", 1)[0] if service.count(":") == 1 else service
    return template.replace("{service}", host.strip("[]"))


def forwardedClientCert(by: str | None, identity: PeerIdentity) -> bytes:
    """
    The C{x-forwarded-client-cert} value for a verified caller (Envoy's
    format: C{By=…;Hash=…;URI=…} or C{DNS=…}).

    @param by: this listener's own identity, or L{None}.
    """
    parts = []
    if by:
        parts.append("By=" + _xfccValue(by))
    parts.append("Hash=" + identity.sha256)
    if identity.commonName:
        parts.append('Subject="CN=%s"' % (identity.commonName.replace('"', "'"),))
    for uri in identity.uris:
        parts.append("URI=" + _xfccValue(uri))
    for name in identity.dnsNames:
        parts.append("DNS=" + _xfccValue(name))
    return ";".join(parts).encode("utf-8", "replace")


def _xfccValue(text: str) -> str:
    if any(c in text for c in ',;="'):
        return '"%s"' % (text.replace('"', "'"),)
    return text


class FileWatcher:
    """
    Calls C{onChange} when any of some files changes (its size, time or
    inode): polling once a C{interval}, off the request path.
    """

    def __init__(
        self,
        paths: Sequence[str],
        onChange: Callable[[], object],
        *,
        clock: Any,
        interval: float = 1.0,
    ) -> None:
        self._paths = tuple(paths)
        self._onChange = onChange
        self._clock = clock
        self._interval = interval
        self._seen = self._stat()
        self._loop: LoopingCall | None = None

    def _stat(self) -> tuple:
        seen: list[tuple[int, int, int] | None] = []
        for path in self._paths:
            try:
                st = os.stat(path)
            except OSError:
                seen.append(None)
            else:
                seen.append((st.st_ino, st.st_size, st.st_mtime_ns))
        return tuple(seen)

    def check(self) -> bool:
        """
        Look at the files now.

        @return: whether they changed (and C{onChange} was called).
        """
        seen = self._stat()
        if seen == self._seen:
            return False
        self._seen = seen
        self._onChange()
        return True

    def start(self) -> None:
        """
        Check every C{interval} seconds.
        """
        self._loop = LoopingCall(self.check)
        self._loop.clock = self._clock
        self._loop.start(self._interval, now=False)

    def stop(self) -> None:
        """
        Stop checking.
        """
        if self._loop is not None and self._loop.running:
            self._loop.stop()
