"""
Reading the server name of a TLS ClientHello (L{meshproxy.transport.clienthello}):
real ClientHellos made by the standard library's TLS, fed whole, byte by
byte and split across TLS records; and what is not a ClientHello: other
protocols, malformed records and messages, oversized ones.
"""

import ssl
import struct

from twisted.trial.unittest import SynchronousTestCase

from meshproxy.transport.clienthello import ClientHelloError, ClientHelloReader


def realClientHello(serverName="a.example", **options):
    """
    The first flight of a TLS client from the standard library: one
    handshake record holding its ClientHello.

    @param serverName: the name sent by SNI, or L{None} for none.
    """
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if options.get("alpn"):
        context.set_alpn_protocols(options["alpn"])
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname=serverName)
    try:
        tls.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


def record(payload, contentType=22, version=b"\x03\x01"):
    return bytes([contentType]) + version + struct.pack("!H", len(payload)) + payload


def handshakeOf(flight):
    """
    The handshake bytes of a flight of records.
    """
    out = b""
    while flight:
        length = struct.unpack("!H", flight[3:5])[0]
        out += flight[5 : 5 + length]
        flight = flight[5 + length :]
    return out


def hello(extensions=b"", sessionId=b"", suites=b"\x13\x01", methods=b"\x00", raw=None):
    """
    A ClientHello handshake message built by hand.

    @param extensions: the extensions' bytes, or L{None} for no extensions
        block at all.
    """
    body = b"\x03\x03" + b"\x11" * 32
    body += bytes([len(sessionId)]) + sessionId
    body += struct.pack("!H", len(suites)) + suites
    body += bytes([len(methods)]) + methods
    if extensions is not None:
        body += struct.pack("!H", len(extensions)) + extensions
    if raw is not None:
        body = raw
    return b"\x01" + len(body).to_bytes(3, "big") + body


def extension(kind, data):
    return struct.pack("!HH", kind, len(data)) + data


def sni(*names, kind=0):
    entries = b"".join(bytes([kind]) + struct.pack("!H", len(n)) + n for n in names)
    return extension(0, struct.pack("!H", len(entries)) + entries)


class ClientHelloTests(SynchronousTestCase):
    def read(self, data, maxBytes=16384):
        reader = ClientHelloReader(maxBytes)
        self.assertTrue(reader.feed(data))
        return reader

    def refused(self, data, reason, maxBytes=16384):
        reader = ClientHelloReader(maxBytes)
        error = self.assertRaises(ClientHelloError, reader.feed, data)
        self.assertEqual(error.reason, reason, error.detail)
        return error

    def test_realClientHello(self):
        """
        The server name of the standard library's ClientHello, lowercased;
        every byte kept for the upstream.
        """
        flight = realClientHello("Svc.A.Example", alpn=["h2", "http/1.1"])
        reader = self.read(flight)
        self.assertEqual(reader.serverName, "svc.a.example")
        self.assertEqual(reader.received, flight)

    def test_noServerName(self):
        """
        A ClientHello without SNI has no server name (it is not an error).
        """
        self.assertIsNone(self.read(realClientHello(None)).serverName)
        self.assertIsNone(self.read(record(hello(None))).serverName)
        self.assertIsNone(self.read(record(hello(extension(16, b"\x00\x03\x02h2")))).serverName)

    def test_finalDotDropped(self):
        reader = self.read(record(hello(sni(b"a.example."))))
        self.assertEqual(reader.serverName, "a.example")

    def test_byteByByte(self):
        """
        Fed one byte at a time, the reader answers only on the last byte.
        """
        flight = realClientHello("b.example")
        reader = ClientHelloReader()
        for i in range(len(flight) - 1):
            self.assertFalse(reader.feed(flight[i : i + 1]), i)
        self.assertTrue(reader.feed(flight[-1:]))
        self.assertEqual(reader.serverName, "b.example")
        self.assertEqual(reader.received, flight)

    def test_fragmentedAcrossRecords(self):
        """
        A ClientHello split over several handshake records (as TLS allows)
        is put back together; the records may come split across reads.
        """
        message = handshakeOf(realClientHello("frag.example"))
        pieces = [message[:3], message[3:40], message[40:41], message[41:]]
        flight = b"".join(record(p) for p in pieces)
        reader = ClientHelloReader()
        self.assertFalse(reader.feed(flight[:7]))
        self.assertFalse(reader.feed(flight[7:30]))
        self.assertTrue(reader.feed(flight[30:]))
        self.assertEqual(reader.serverName, "frag.example")
        self.assertEqual(reader.received, flight)

    def test_bytesAfterTheHelloKept(self):
        """
        Bytes that follow the ClientHello in the same read (or later) are
        kept in order too.
        """
        flight = realClientHello("a.example")
        reader = self.read(flight + b"more")
        reader.feed(b"!")
        self.assertEqual(reader.received, flight + b"more!")

    def test_otherProtocols(self):
        """
        The first byte of another protocol is refused at once.
        """
        for data in [b"G", b"GET / HTTP/1.1\r\n", b"*1\r\n$4\r\nPING\r\n", b"\x00\x00\x00\x08",
                     b"PROXY TCP4 ", b"\r\n\r\n\x00\r\nQUIT\n"]:
            self.refused(data, "not-tls")
        # An SSLv2-style hello, and a record of TLS "version 2".
        self.refused(b"\x80\x2e\x01\x03\x01", "not-tls")
        self.refused(b"\x16\x02", "not-tls")

    def test_notAHandshake(self):
        """
        A first record of another content type, or a handshake message
        other than a ClientHello, is refused.
        """
        self.refused(record(b"\x01", contentType=23), "not-tls")
        self.refused(record(b"\x02\x00\x00\x01\x00"), "malformed")
        message = handshakeOf(realClientHello())
        self.refused(record(message[:10]) + record(b"x", contentType=21), "malformed")

    def test_badRecordLengths(self):
        self.refused(b"\x16\x03\x01\x00\x00", "malformed")
        self.refused(b"\x16\x03\x01\x40\x01" + b"\x00" * 10, "malformed")

    def test_oversized(self):
        """
        More bytes than the bound before the ClientHello is complete, or a
        message declaring more, is refused.
        """
        flight = realClientHello("a.example")
        self.refused(flight, "oversized", maxBytes=len(flight) - 10)
        declared = b"\x01" + (100000).to_bytes(3, "big") + b"\x03\x03"
        self.refused(record(declared), "oversized")
        # Records that never complete a message, fed in pieces.
        reader = ClientHelloReader(1024)
        start = b"\x01" + (900).to_bytes(3, "big")
        reader.feed(record(start))
        error = None
        for _ in range(300):
            try:
                reader.feed(record(b"\x00" * 3))
            except ClientHelloError as e:
                error = e
                break
        self.assertEqual(error.reason, "oversized")

    def test_malformedMessages(self):
        """
        Lengths inside the ClientHello that do not add up are refused.
        """
        cases = {
            "short": hello(raw=b"\x03\x03" + b"\x00" * 10),
            "session id": hello(raw=b"\x03\x03" + b"\x00" * 32 + b"\x21" + b"\x00" * 40),
            "odd suites": hello(suites=b"\x13"),
            "no suites": hello(suites=b""),
            "no methods": hello(methods=b""),
            "extensions short": hello(raw=hello(sni(b"a.b"))[4:-2]),
            "extensions long": hello(raw=hello(sni(b"a.b"))[4:] + b"\x00"),
            "truncated extension": hello(b"\x00\x00\x00"),
            "extension past end": hello(b"\x00\x10\x00\x09abc"),
            "twice": hello(sni(b"a.b") + sni(b"c.d")),
            "sni list length": hello(extension(0, b"\x00\x09\x00\x00\x01a")),
            "empty name": hello(sni(b"")),
            "two host names": hello(extension(0, b"\x00\x0a\x00\x00\x02ab\x00\x00\x02cd")),
            "not a host": hello(sni(b"a b.example")),
            "dot dot": hello(sni(b"a..example")),
            "slash": hello(sni(b"../etc")),
            "dot": hello(sni(b".")),
            "high bit": hello(sni("é.example".encode())),
            "label too long": hello(sni(b"a" * 64 + b".example")),
        }
        for what, message in cases.items():
            reader = ClientHelloReader()
            error = self.assertRaises(ClientHelloError, reader.feed, record(message))
            self.assertEqual(error.reason, "malformed", what)

    def test_otherNameTypesIgnored(self):
        """
        Server name entries of another type than host_name are skipped.
        """
        entries = b"\x01\x00\x02xy" + b"\x00\x00\x09a.example"
        data = record(hello(extension(0, struct.pack("!H", len(entries)) + entries)))
        self.assertEqual(self.read(data).serverName, "a.example")

    def test_garbageNeverRaisesAnythingElse(self):
        """
        Random bytes after a plausible record header end in a
        L{ClientHelloError} or a wait for more, never another exception.
        """
        import random

        rng = random.Random(13)
        base = handshakeOf(realClientHello("fuzz.example"))
        for _ in range(2000):
            mutated = bytearray(base)
            for _ in range(rng.randint(1, 6)):
                mutated[rng.randrange(len(mutated))] = rng.randrange(256)
            reader = ClientHelloReader()
            try:
                reader.feed(record(bytes(mutated)))
            except ClientHelloError:
                pass

    def test_emptyReads(self):
        """
        Empty reads change nothing, before the first byte or after.
        """
        reader = ClientHelloReader()
        self.assertFalse(reader.feed(b""))
        flight = realClientHello("a.example")
        self.assertFalse(reader.feed(flight[:3]))
        self.assertFalse(reader.feed(b""))
        self.assertTrue(reader.feed(flight[3:]))
        self.assertEqual(reader.serverName, "a.example")

    def test_tooSmallABound(self):
        self.assertRaises(ValueError, ClientHelloReader, 8)


class ReferenceComparisonTests(SynchronousTestCase):
    """
    The reader judges every input as the reader it replaced did
    (L{tests.clienthello_reference}): the same verdict (complete, waiting,
    or refused with the same reason) and the same server name, on real,
    hand-made, mutated, truncated and randomly split ClientHellos.
    """

    def verdict(self, cls, errorClass, pieces, maxBytes):
        reader = cls(maxBytes)
        results = []
        try:
            for piece in pieces:
                results.append(reader.feed(piece))
        except errorClass as e:
            return ("refused", e.reason, len(results))
        return ("read", results, reader.serverName, reader.received)

    def compare(self, data, rng, maxBytes=16384):
        from tests import clienthello_reference as reference

        cuts = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, rng.randint(0, 4))))
        pieces = [data[a:b] for a, b in zip([0] + cuts, cuts + [len(data)], strict=True)]
        for split in ([data], pieces):
            old = self.verdict(reference.ClientHelloReader, reference.ClientHelloError, split,
                               maxBytes)
            new = self.verdict(ClientHelloReader, ClientHelloError, split, maxBytes)
            self.assertEqual(new, old, (data, split))
        return old

    def corpus(self):
        yield realClientHello("fuzz.example")
        yield realClientHello(None)
        yield realClientHello("Alpn.Example", alpn=["h2", "http/1.1"])
        yield record(hello(sni(b"a.example") + extension(16, b"\x00\x03\x02h2")))
        yield record(hello(extension(43, b"\x02\x03\x04") + sni(b"b.example")))
        yield record(hello(None))
        yield record(hello(b""))
        message = handshakeOf(realClientHello("split.example"))
        yield record(message[:50]) + record(message[50:])

    def test_mutatedHellosJudgedAsBefore(self):
        """
        Hellos with bytes changed, inserted, removed or cut short, and
        bounds around their size.
        """
        import random

        rng = random.Random(1313)
        seen = set()
        for base in self.corpus():
            for _ in range(1500):
                data = bytearray(base)
                for _ in range(rng.randint(1, 4)):
                    how = rng.randrange(4)
                    where = rng.randrange(len(data))
                    if how == 0:
                        data[where] = rng.randrange(256)
                    elif how == 1:
                        # A length byte made slightly off.
                        data[where] = (data[where] + rng.choice((-2, -1, 1, 2))) % 256
                    elif how == 2:
                        del data[where : where + rng.randint(1, 4)]
                    else:
                        data[where:where] = bytes(rng.randrange(256) for _ in range(3))
                    if not data:
                        break
                if rng.random() < 0.1:
                    data = data[: rng.randrange(1, len(data) + 1)]
                if not data:
                    continue
                maxBytes = rng.choice((16384, len(base), len(base) - 1, 9, 600))
                outcome = self.compare(bytes(data), rng, maxBytes)
                seen.add(outcome[1] if outcome[0] == "refused" else outcome[0])
        # Every kind of verdict came up.
        self.assertEqual(seen, {"read", "malformed", "not-tls", "oversized"})

    def test_randomBytesJudgedAsBefore(self):
        """
        Random bytes behind a handshake record header, or none.
        """
        import random

        rng = random.Random(7)
        for _ in range(3000):
            body = bytes(rng.randrange(256) for _ in range(rng.randint(0, 80)))
            if rng.random() < 0.5:
                body = b"\x01" + len(body).to_bytes(3, "big") + body
            data = record(body) if rng.random() < 0.8 else body
            if data:
                self.compare(data, rng)
