"""
TLS both ways: the standard library's C{ssl} on listeners, pyOpenSSL and
service_identity to upstreams.

  - L{ServerTLS} terminates TLS on a listener (its connections carried by
    L{meshproxy.transport.tls}): the certificate chosen by SNI
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
from typing import Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_pem_private_key,
)
from cryptography.x509.oid import NameOID
from OpenSSL import SSL, crypto
from service_identity import VerificationError
from service_identity.hazmat import DNS_ID, verify_service_identity
from service_identity.pyopenssl import extract_patterns
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import wrapClientTLS
from twisted.internet.interfaces import (
    IOpenSSLClientConnectionCreator,
    IProtocolFactory,
    IStreamClientEndpoint,
)
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from meshproxy.discovery.endpoints import Endpoint
from meshproxy.transport.connector import IConnector
from meshproxy.transport.tls import ITLSServerContexts

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

_VERSIONS = {"TLSv1.2": SSL.TLS1_2_VERSION, "TLSv1.3": SSL.TLS1_3_VERSION}

_OPTIONS = SSL.OP_NO_COMPRESSION | SSL.OP_CIPHER_SERVER_PREFERENCE | SSL.OP_NO_RENEGOTIATION

_SSL_VERSIONS = {"TLSv1.2": ssl.TLSVersion.TLSv1_2, "TLSv1.3": ssl.TLSVersion.TLSv1_3}

_SSL_OPTIONS = ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_NO_RENEGOTIATION


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
    """
    cert = certificate.to_cryptography() if isinstance(certificate, crypto.X509) else certificate
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
    data = _readFile(path, "certificate file")
    try:
        return data, x509.load_pem_x509_certificates(data)
    except ValueError as e:
        raise TLSFileError(f"{path} holds no PEM certificate: {e}") from None


def _loadCertificates(path: str) -> list[crypto.X509]:
    return [crypto.X509.from_cryptography(c) for c in _readCertificates(path)[1]]


def _loadKey(path: str) -> crypto.PKey:
    data = _readFile(path, "key file")
    try:
        return crypto.load_privatekey(crypto.FILETYPE_PEM, data)
    except crypto.Error:
        raise TLSFileError(f"{path} holds no PEM private key (or it is encrypted)") from None


def _checkKey(path: str, certificate: x509.Certificate, certPath: str) -> None:
    """
    Check that a key file holds the (unencrypted) PEM private key of
    C{certificate}.

    @raise TLSFileError: if it does not.
    """
    data = _readFile(path, "key file")
    try:
        key = load_pem_private_key(data, None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise TLSFileError(f"{path} holds no PEM private key (or it is encrypted)") from None
    if _publicBytes(key.public_key()) != _publicBytes(certificate.public_key()):
        raise TLSFileError(f"the key {path} does not belong to the certificate {certPath}")


def _publicBytes(key: Any) -> bytes:
    return bytes(key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo))


def _noPassword() -> bytes:
    # A key that became encrypted since it was checked fails to load,
    # rather than OpenSSL asking for its password on the terminal.
    return b""


def expiryOf(certificate: crypto.X509 | x509.Certificate) -> float:
    """
    When a certificate expires, as a Unix time.
    """
    if isinstance(certificate, crypto.X509):
        certificate = certificate.to_cryptography()
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
        if minVersion not in _SSL_VERSIONS:
            raise ValueError(
                f"minVersion must be one of {sorted(_SSL_VERSIONS)}, got {minVersion!r}"
            )
        self._files = tuple(certificates)
        self._protocols = [p.decode("ascii") for p in protocols]
        self._clientCA = clientCA
        self._verify = verify
        self._minVersion = _SSL_VERSIONS[minVersion]
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
        identity = None
        for c in self._files:
            _, chain = _readCertificates(c.cert)
            _checkKey(c.key, chain[0], c.cert)
            ctx = self._context(c, clientCAs)
            contexts.append((c, ctx))
            expiries[c.cert] = expiryOf(chain[0])
            if identity is None:
                identity = identityOf(chain[0])
        default = contexts[0][1]
        byName = [(pattern.lower(), ctx) for c, ctx in contexts for pattern in c.sni]
        if byName:
            default.sni_callback = self._chooseBySNI
        # Only once every file was read: a failed reload keeps the old ones.
        self.expiries = expiries
        self.identity = identity
        return default, byName

    def _context(self, files: CertificateFile, clientCAs: str | None) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = self._minVersion
        ctx.options |= _SSL_OPTIONS
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

    @ivar context: the current C{SSL.Context}.
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
        self._protocols = list(protocols)
        self.expiries: dict[str, float] = {}
        self.reloadFailures = 0
        self.context = self._build()

    def files(self) -> list[str]:
        """
        Every file this reads (for watching).
        """
        return [p for p in (self._ca, self._cert, self._key) if p is not None]

    def _build(self) -> SSL.Context:
        ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
        ctx.set_min_proto_version(self._minVersion)
        ctx.set_options(SSL.OP_NO_COMPRESSION | SSL.OP_NO_RENEGOTIATION)
        ctx.set_cipher_list(CIPHERS)
        store = ctx.get_cert_store()
        assert store is not None
        for certificate in _loadCertificates(self._ca):
            store.add_cert(certificate)
        cert, key = self._cert, self._key
        expiries = {}
        if cert is not None:
            chain = _loadCertificates(cert)
            try:
                ctx.use_certificate(chain[0])
                for extra in chain[1:]:
                    ctx.add_extra_chain_cert(extra)
                ctx.use_privatekey(_loadKey(key or cert))
                ctx.check_privatekey()
            except SSL.Error:
                raise TLSFileError(
                    f"the key {key} does not belong to the certificate {cert}"
                ) from None
            expiries[cert] = expiryOf(chain[0])
        ctx.set_alpn_protos(self._protocols)
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
            self.context = self._build()
        except (TLSFileError, SSL.Error, crypto.Error) as e:
            self.reloadFailures += 1
            _log.error(
                "upstream TLS files not reloaded, keeping the previous ones: {why}", why=str(e)
            )
            return False
        return True


@implementer(IOpenSSLClientConnectionCreator)
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
    ) -> None:
        """
        @param expected: the identity the upstream's certificate must name.
        @param settings: the shared L{ClientContext}; or, to make one,
        @param ca: the CA bundle upstream certificates are checked against,
        @param cert: a client certificate to present (mTLS), or L{None},
        @param key: its key,
        @param minVersion: C{"TLSv1.2"} or C{"TLSv1.3"},
        @param protocols: the ALPN protocols offered.
        @raise TLSFileError: when a file cannot be used.
        @raise ValueError: when C{expected} cannot be a DNS name or URI.
        """
        self.expected = expected
        if "://" in expected:
            # A URI (a SPIFFE ID) names a workload by its whole text:
            # service_identity's URI-IDs compare only scheme and host.
            self._serverName = None
        else:
            DNS_ID(expected)  # refuses a name that cannot be a DNS-ID
            self._serverName = expected.encode("idna")
        if settings is None:
            if ca is None:
                raise ValueError("give settings, or a ca")
            settings = ClientContext(
                ca=ca, cert=cert, key=key, minVersion=minVersion, protocols=protocols
            )
        self.settings = settings

    def clientConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        """
        See L{IOpenSSLClientConnectionCreator}: a connection that fails its
        handshake unless the upstream's certificate chains to the CA and
        names the expected identity.
        """
        connection = SSL.Connection(self.settings.context, None)
        if self._serverName is not None:
            connection.set_tlsext_host_name(self._serverName)
        connection.set_verify(
            SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT,
            _identityCheck(tlsProtocol, self.expected),
        )
        connection.set_connect_state()
        return connection


def _identityCheck(tlsProtocol: Any, expected: str) -> Callable[..., bool]:
    """
    An OpenSSL verify callback that also checks that the leaf certificate
    names C{expected} (a URI SAN equal to it, or a DNS name matching it by
    RFC 6125 with service_identity), failing the connection (through
    C{tlsProtocol.failVerification}) when it does not.
    """
    protocol = [tlsProtocol]

    def verify(conn: SSL.Connection, cert: crypto.X509, err: int, depth: int, ok: int) -> bool:
        if not ok or depth != 0:
            return bool(ok)
        try:
            if "://" in expected:
                if expected not in identityOf(cert).uris:
                    # (caught just below: the errors' type does not matter)
                    raise VerificationError(errors=[f"no URI SAN {expected}"])  # type: ignore[list-item]
            else:
                verify_service_identity(extract_patterns(cert), [DNS_ID(expected)], [])
        except VerificationError:
            if protocol:
                protocol.pop().failVerification(Failure())
            return False
        except Exception:
            # An exception raised inside an OpenSSL callback is lost: log it
            # and refuse.
            _log.failure("while checking an upstream certificate")
            return False
        return True

    return verify


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
        return wrapClientTLS(self.creator, self._inner.endpointFor(endpoint))

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
