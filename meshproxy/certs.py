"""
A development certificate authority, for trying TLS and mTLS between
meshproxies: C{meshproxy certs init DIR} makes a CA, C{meshproxy certs issue
DIR NAME --uri spiffe://…} a certificate for one service.

Not for production: the CA key sits unencrypted in a file next to the
certificates it signs. Use your organisation's CA (or SPIRE, cert-manager,
…) for real deployments; meshproxy only reads PEM files.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["CertsError", "Issued", "initAuthority", "issue"]

CA_CERT = "ca.pem"
CA_KEY = "ca.key"

#: How long a development CA lasts.
CA_DAYS = 3650

#: How long an issued certificate lasts.
LEAF_DAYS = 365

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}\Z")

# A DNS name as certificates hold it (ASCII letters, digits and hyphens per
# label), its first label possibly a wildcard.
_LABEL = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\Z")


class CertsError(Exception):
    """
    A certificate could not be made; the message says why.
    """


@dataclass(frozen=True)
class Issued:
    """
    The files of one certificate.
    """

    cert: str
    key: str


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _newKey() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _writeKey(path: str, key: ec.EllipticCurvePrivateKey) -> None:
    data = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _writeCert(path: str, cert: x509.Certificate) -> None:
    with open(path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))


def initAuthority(directory: str, name: str = "meshproxy development CA") -> Issued:
    """
    Make a development CA in C{directory} (created if missing).

    @return: the CA's certificate and key files.
    @raise CertsError: when a CA already exists there (it is never
        overwritten: certificates signed by it would stop being trusted).
    """
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise CertsError(f"{directory} is not a directory")
    os.makedirs(directory, exist_ok=True)
    certPath = os.path.join(directory, CA_CERT)
    keyPath = os.path.join(directory, CA_KEY)
    if os.path.exists(certPath) or os.path.exists(keyPath):
        raise CertsError(f"{directory} already holds a CA ({CA_CERT}, {CA_KEY}): not overwritten")
    key = _newKey()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _writeKey(keyPath, key)
    _writeCert(certPath, cert)
    return Issued(certPath, keyPath)


def _loadAuthority(directory: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    certPath = os.path.join(directory, CA_CERT)
    keyPath = os.path.join(directory, CA_KEY)
    try:
        with open(certPath, "rb") as f:
            cert = x509.load_pem_x509_certificate(f.read())
        with open(keyPath, "rb") as f:
            key = serialization.load_pem_private_key(f.read(), password=None)
    except FileNotFoundError:
        raise CertsError(
            f"no CA in {directory}: run `meshproxy certs init {directory}` first"
        ) from None
    except ValueError as e:
        raise CertsError(f"the CA in {directory} cannot be read: {e}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CertsError(f"the CA key in {directory} is not one this tool made")
    return cert, key


def issue(
    directory: str,
    name: str,
    *,
    uris: tuple[str, ...] = (),
    dnsNames: tuple[str, ...] = (),
    ips: tuple[str, ...] = (),
) -> Issued:
    """
    Issue a certificate for C{name}, signed by the CA in C{directory}, good
    for both sides of TLS (server and client authentication).

    @param name: the files' name (C{NAME.pem}, C{NAME.key}) and the
        certificate's common name; also a DNS name of it unless C{dnsNames}
        are given.
    @param uris: URI names (C{spiffe://mesh.local/web}).
    @param dnsNames: DNS names; C{(name,)} when empty and C{name} can be
        one.
    @param ips: IP addresses (C{127.0.0.1}).
    @return: the certificate (followed by nothing: the chain is one level)
        and key files.
    @raise CertsError: for a bad name, URI or address, or without a CA.
    """
    if not _NAME.match(name) or name in (CA_CERT[:-4], "ca"):
        raise CertsError(
            f'"{name}" cannot name a certificate: use letters, digits, ".", "_" and "-" (not "ca")'
        )
    for uri in uris:
        if "://" not in uri or any(c.isspace() for c in uri) or not uri.isascii():
            raise CertsError(f'"{uri}" is not a URI such as spiffe://mesh.local/web')
    for dnsName in dnsNames:
        labels = dnsName.removeprefix("*.").split(".")
        if not all(_LABEL.match(label) for label in labels):
            raise CertsError(
                f'"{dnsName}" is not a DNS name such as web.mesh.local (ASCII letters,'
                " digits and hyphens; a name with other letters in its A-label form,"
                ' xn--…)'
            )
    try:
        addresses = [ipaddress.ip_address(ip) for ip in ips]
    except ValueError as e:
        raise CertsError(str(e)) from None
    caCert, caKey = _loadAuthority(directory)
    key = _newKey()
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(u) for u in uris]
    if not dnsNames and all(_LABEL.match(label) for label in name.split(".")):
        # The name is a DNS name too, unless it cannot be one ("my_svc").
        dnsNames = (name,)
    names += [x509.DNSName(d) for d in dnsNames]
    names += [x509.IPAddress(a) for a in addresses]
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(caCert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(min(now + datetime.timedelta(days=LEAF_DAYS), caCert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(caKey.public_key()), critical=False
        )
        .sign(caKey, hashes.SHA256())
    )
    certPath = os.path.join(directory, name + ".pem")
    keyPath = os.path.join(directory, name + ".key")
    _writeKey(keyPath, key)
    _writeCert(certPath, cert)
    return Issued(certPath, keyPath)
