"""
Tests for how L{meshproxy.transport.tls.TLSProtocol} reads records: the
OpenSSL behaviour its read loop relies on (a read that returns less than it
asked for leaves no plaintext behind), and records of every size, split
across reads at every kind of boundary, arriving whole and in order.
"""

import os
import ssl

from twisted.internet.protocol import Protocol
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from meshproxy import certs
from meshproxy.tls import CertificateFile, ServerTLS
from meshproxy.transport.tls import TLSProtocol


class _Sink(Protocol):
    """
    Records what it receives, and how many reads it came in.
    """

    def __init__(self):
        self.data = b""
        self.reads = 0

    def dataReceived(self, data):
        self.data += data
        self.reads += 1


class _Pair:
    """
    A server L{TLSProtocol} (the listener's L{ServerTLS}) on a
    L{StringTransport}, and a client C{ssl.SSLObject} between memory BIOs,
    handshaken.
    """

    def __init__(self, directory):
        ca = certs.initAuthority(directory, "records CA")
        server = certs.issue(directory, "server", dnsNames=("localhost",))
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        contexts = ServerTLS([CertificateFile(server.cert, server.key, ())])
        self.app = _Sink()
        self.server = TLSProtocol(self.app, contexts.serverObject(incoming, outgoing),
                                  incoming, outgoing)
        self.transport = StringTransport()
        self.server.makeConnection(self.transport)
        context = ssl.create_default_context(cafile=ca.cert)
        self.toServer, self.fromServer = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.client = context.wrap_bio(self.fromServer, self.toServer,
                                       server_hostname="localhost")
        for _ in range(10):
            try:
                self.client.do_handshake()
            except ssl.SSLWantReadError:
                pass
            else:
                break
            finally:
                self.server.dataReceived(self.toServer.read())
                self.fromServer.write(self.transport.value())
                self.transport.clear()
        else:
            raise AssertionError("no handshake")

    def records(self, *writes):
        """
        The bytes the client sends for C{writes}, one record (or more) a
        write.
        """
        for data in writes:
            self.client.write(data)
        return self.toServer.read()


class ReadLoopTests(SynchronousTestCase):
    def setUp(self):
        self.pair = _Pair(self.mktemp())

    def test_shortReadLeavesNothingPending(self):
        """
        OpenSSL's C{SSL_read} stops short of the size asked for only at the
        end of what it has decrypted: after a read that returned fewer bytes
        than asked, C{pending()} is 0, whatever the record and read sizes
        (the read loop asks C{pending()} only after reads that filled their
        size).
        """
        server, incoming = self.pair.server._tls, self.pair.server._incoming
        for recordSize in (1, 31, 100, 4000, 16383, 16384, 40000):
            for readSize in (1, 50, 100, 4096, 16384, 20000):
                body = os.urandom(recordSize)
                incoming.write(self.pair.records(body, b"next"))
                got = []
                while True:
                    try:
                        chunk = server.read(readSize)
                    except ssl.SSLWantReadError:
                        break
                    got.append(chunk)
                    if len(chunk) < readSize:
                        self.assertEqual(server.pending(), 0, (recordSize, readSize))
                self.assertEqual(b"".join(got), body + b"next")

    def test_recordsSplitAnywhereArriveWhole(self):
        """
        Records of every size (one byte, small, a full 16 KiB, more than
        one record's worth), sent in reads of every size (one byte, a few,
        a small read ending a record, reads crossing record boundaries),
        arrive whole and in order.
        """
        bodies = [os.urandom(n) for n in (1, 90, 700, 16384, 20000, 5)]
        stream = self.pair.records(*bodies)
        expected = b"".join(bodies)
        for step in (1, 7, 100, 511, 512, 4096, 16389, len(stream)):
            self.pair.app.data = b""
            for i in range(0, len(stream), step):
                self.pair.server.dataReceived(stream[i:i + step])
            self.assertEqual(self.pair.app.data, expected, step)
            stream = self.pair.records(*bodies)

    def test_oneSmallRecordOneRead(self):
        """
        A small record arriving alone is passed on in one read of exactly
        its plaintext.
        """
        self.pair.server.dataReceived(self.pair.records(b"GET / HTTP/1.1\r\n\r\n"))
        self.assertEqual((self.pair.app.data, self.pair.app.reads),
                         (b"GET / HTTP/1.1\r\n\r\n", 1))
