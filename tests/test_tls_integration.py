"""
TLS termination on an C{ssl:} listener, with curl as a real client.
"""

import datetime
import os
import shutil

from twisted.internet import defer
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SkipTest, TestCase

from tests.support import BackendFactory, listenBackend, startProxy


def _selfSigned(directory):
    """
    Write a self-signed certificate for 127.0.0.1 and its key.

    @return: the paths of the key and the certificate.
    """
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    keyPath = os.path.join(directory, "key.pem")
    certPath = os.path.join(directory, "cert.pem")
    with open(keyPath, "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    with open(certPath, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    return keyPath, certPath


class TLSTerminationTests(TestCase):
    timeout = 20

    @defer.inlineCallbacks
    def test_curlThroughTLSListener(self):
        """
        curl (offering h2 and http/1.1 by ALPN) gets its answer through an
        ssl: listener; the upstream is told the original scheme was https.
        """
        curl = shutil.which("curl")
        if curl is None:
            raise SkipTest("curl is not installed")
        directory = self.mktemp()
        os.makedirs(directory)
        keyPath, certPath = _selfSigned(directory)
        backend = BackendFactory()
        bport = yield listenBackend(self, backend)
        config = (
            'admin: {listen: "tcp:port=0:interface=127.0.0.1"}\n'
            "namers:\n"
            '  - {kind: static, prefix: /#/static, services: {hello: ["127.0.0.1:%d"]}}\n'
            "routers:\n"
            "  - name: secure\n"
            '    listen: "ssl:0:interface=127.0.0.1:privateKey=%s:certKey=%s"\n'
            '    rules: "/svc => /#/static;"\n' % (bport, keyPath, certPath)
        )
        port, _, _ = yield startProxy(self, None, config=config)
        out, err, code = yield getProcessOutputAndValue(
            curl,
            [
                "-sS",
                "--noproxy",
                "*",
                "--cacert",
                certPath,
                "-H",
                "Host: hello",
                "https://127.0.0.1:%d/tls" % (port,),
            ],
            env={},
        )
        self.assertEqual(code, 0, err)
        self.assertEqual(out, b"ok /tls")
        [seen] = backend.requests
        self.assertEqual(seen.header(b"x-forwarded-proto"), b"https")
