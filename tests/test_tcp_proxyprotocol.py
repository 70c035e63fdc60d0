"""
PROXY protocol headers (L{meshproxy.transport.proxyprotocol}): versions 1
and 2 read strictly and in pieces, their TLVs checked, headers written for
upstreams read back, and the trusted senders.
"""

import struct

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.trial.unittest import SynchronousTestCase

from meshproxy.transport.proxyprotocol import (
    MAX_V2_LENGTH,
    V2_SIGNATURE,
    ProxyHeader,
    ProxyProtocolError,
    TrustedSenders,
    formatHeader,
    looksLikeHeader,
    parseHeader,
)

V4 = IPv4Address("TCP", "192.0.2.10", 50123)
V4_DST = IPv4Address("TCP", "198.51.100.1", 443)
V6 = IPv6Address("TCP", "2001:db8::1", 40000)
V6_DST = IPv6Address("TCP", "2001:db8::2", 5432)


def v2(command=0x21, family=0x11, body=b"", length=None):
    length = len(body) if length is None else length
    return V2_SIGNATURE + struct.pack("!BBH", command, family, length) + body


def inet(src="\xc0\x00\x02\x0a", dst="\xc6\x33\x64\x01", sport=50123, dport=443):
    return src.encode("latin-1") + dst.encode("latin-1") + struct.pack("!HH", sport, dport)


def tlv(kind, value):
    return struct.pack("!BH", kind, len(value)) + value


class LooksLikeTests(SynchronousTestCase):
    def test_signatures(self):
        self.assertIs(looksLikeHeader(b"PROXY TCP4"), True)
        self.assertIs(looksLikeHeader(V2_SIGNATURE + b"\x21"), True)
        self.assertIsNone(looksLikeHeader(b""))
        self.assertIsNone(looksLikeHeader(b"PRO"))
        self.assertIsNone(looksLikeHeader(b"\r\n\r\n"))
        self.assertIs(looksLikeHeader(b"POST /"), False)
        self.assertIs(looksLikeHeader(b"\x16\x03\x01"), False)
        self.assertIs(looksLikeHeader(b"\r\n\r\nx"), False)


class Version1Tests(SynchronousTestCase):
    def test_tcp4(self):
        header = parseHeader(b"PROXY TCP4 192.0.2.10 198.51.100.1 50123 443\r\nGET /")
        self.assertEqual(header, ProxyHeader(1, V4, V4_DST, (), 46))

    def test_tcp6(self):
        data = b"PROXY TCP6 2001:db8::1 2001:db8::2 40000 5432\r\n"
        self.assertEqual(parseHeader(data), ProxyHeader(1, V6, V6_DST, (), len(data)))

    def test_unknown(self):
        """
        C{UNKNOWN} gives no addresses, whatever follows it.
        """
        for data in [b"PROXY UNKNOWN\r\n", b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n"]:
            self.assertEqual(parseHeader(data), ProxyHeader(1, None, None, (), len(data)))

    def test_inPieces(self):
        """
        A header read in pieces needs more until its CRLF.
        """
        data = b"PROXY TCP4 192.0.2.10 198.51.100.1 50123 443\r\n"
        for i in range(1, len(data)):
            self.assertIsNone(parseHeader(data[:i]), i)
        self.assertEqual(parseHeader(data).length, len(data))

    def test_tooLong(self):
        self.assertIsNone(parseHeader(b"PROXY TCP4 " + b"1" * 95))
        error = self.assertRaises(ProxyProtocolError, parseHeader, b"PROXY TCP4 " + b"1" * 96)
        self.assertIn("longer than 107", error.detail)

    def test_bad(self):
        """
        Anything but the exact form is refused.
        """
        for data in [
            b"PROXY TCP4 192.0.2.10 198.51.100.1 50123 443\n",
            b"PROXY TCP4 192.0.2.10 198.51.100.1 50123 443\rX",
            b"PROXY TCP5 192.0.2.10 198.51.100.1 50123 443\r\n",
            b"PROXY TCP4 192.0.2.10 198.51.100.1 50123\r\n",
            b"PROXY TCP4 192.0.2.10  198.51.100.1 50123 443\r\n",
            b"PROXY TCP4 192.0.2.10 198.51.100.1 50123 443 \r\n",
            b"PROXY TCP4 2001:db8::1 198.51.100.1 50123 443\r\n",
            b"PROXY TCP6 192.0.2.10 2001:db8::2 1 2\r\n",
            b"PROXY TCP4 192.0.2.010 198.51.100.1 1 2\r\n",
            b"PROXY TCP4 192.0.2.10 198.51.100.1 65536 443\r\n",
            b"PROXY TCP4 192.0.2.10 198.51.100.1 -1 443\r\n",
            b"PROXY TCP4 192.0.2.10 198.51.100.1 0443 443\r\n",
            b"PROXY TCP4 host.example 198.51.100.1 1 2\r\n",
            b"PROXY TCP6 fe80::1%eth0 2001:db8::2 1 2\r\n",
            b"PROXY\r\n",
            b"GET / HTTP/1.1\r\n",
        ]:
            self.assertRaises(ProxyProtocolError, parseHeader, data)


class Version2Tests(SynchronousTestCase):
    def test_inet(self):
        data = v2(body=inet()) + b"payload"
        self.assertEqual(parseHeader(data), ProxyHeader(2, V4, V4_DST, (), 28))

    def test_inet6(self):
        import socket

        body = (
            socket.inet_pton(socket.AF_INET6, V6.host)
            + socket.inet_pton(socket.AF_INET6, V6_DST.host)
            + struct.pack("!HH", V6.port, V6_DST.port)
        )
        self.assertEqual(parseHeader(v2(family=0x21, body=body)).source, V6)

    def test_inPieces(self):
        data = v2(body=inet() + tlv(0x05, b"id-1"))
        for i in range(len(data)):
            self.assertIsNone(parseHeader(data[:i]), i)
        header = parseHeader(data)
        self.assertEqual(header.tlvs, ((0x05, b"id-1"),))
        self.assertEqual(header.length, len(data))

    def test_local(self):
        """
        A LOCAL header (a health check) gives no addresses, whatever its
        body holds.
        """
        header = parseHeader(v2(command=0x20, family=0x00, body=b"\xff" * 5))
        self.assertEqual(header, ProxyHeader(2, None, None, (), 21))

    def test_unspecAndUnix(self):
        self.assertIsNone(parseHeader(v2(family=0x00)).source)
        unix = parseHeader(v2(family=0x31, body=b"\x00" * 216))
        self.assertEqual((unix.source, unix.destination), (None, None))

    def test_tlvs(self):
        """
        TLVs are read in order; an SSL TLV's sub-TLVs are checked too.
        """
        ssl = tlv(0x20, b"\x07\x00\x00\x00\x00" + tlv(0x21, b"TLSv1.3") + tlv(0x22, b"web"))
        body = inet() + tlv(0x01, b"h2") + tlv(0x03, b"\x00\x01\x02\x03") + ssl + tlv(0xE0, b"")
        header = parseHeader(v2(body=body))
        self.assertEqual([kind for kind, _ in header.tlvs], [0x01, 0x03, 0x20, 0xE0])

    def test_bad(self):
        """
        Wrong versions, commands, families, short addresses and TLVs that
        do not fill the header exactly are refused.
        """
        for data in [
            v2(command=0x11, body=inet()),
            v2(command=0x22, body=inet()),
            v2(family=0x12, body=inet()),
            v2(family=0x41, body=inet()),
            v2(family=0x01),
            v2(body=inet()[:11]),
            v2(family=0x21, body=inet()),
            v2(family=0x31, body=b"\x00" * 100),
            v2(body=inet() + b"\x01\x00"),
            v2(body=inet() + tlv(0x01, b"abc")[:-1]),
            v2(body=inet() + tlv(0x03, b"\x00\x01\x02")),
            v2(body=inet() + tlv(0x05, b"x" * 129)),
            v2(body=inet() + tlv(0x20, b"\x01\x00\x00")),
            v2(body=inet() + tlv(0x20, b"\x01\x00\x00\x00\x00\x21\x00\x09x")),
        ]:
            self.assertRaises(ProxyProtocolError, parseHeader, data)

    def test_tooLong(self):
        """
        A header declaring more than the bound is refused before it is read.
        """
        error = self.assertRaises(
            ProxyProtocolError, parseHeader, v2(body=b"", length=MAX_V2_LENGTH + 1)
        )
        self.assertIn("at most", error.detail)
        self.assertIsNone(parseHeader(v2(body=inet(), length=MAX_V2_LENGTH)))


class FormatTests(SynchronousTestCase):
    def test_v1(self):
        self.assertEqual(
            formatHeader(1, V4, V4_DST), b"PROXY TCP4 192.0.2.10 198.51.100.1 50123 443\r\n"
        )
        self.assertEqual(formatHeader(1, None, V4_DST), b"PROXY UNKNOWN\r\n")

    def test_roundTrips(self):
        for version in (1, 2):
            for src, dst in [(V4, V4_DST), (V6, V6_DST)]:
                data = formatHeader(version, src, dst)
                header = parseHeader(data)
                self.assertEqual((header.version, header.source, header.destination),
                                 (version, src, dst))
                self.assertEqual(header.length, len(data))

    def test_mixedFamilies(self):
        """
        An IPv4 client on an IPv6 listener is sent as an IPv4-mapped IPv6
        address: both addresses of a header are of one family.
        """
        header = parseHeader(formatHeader(1, V4, V6_DST))
        self.assertEqual(header.source, IPv6Address("TCP", "::ffff:c000:20a", 50123))

    def test_v2Local(self):
        header = parseHeader(formatHeader(2, None, None))
        self.assertEqual((header.version, header.source), (2, None))

    def test_v2Tlvs(self):
        header = parseHeader(formatHeader(2, V4, V4_DST, [(0x05, b"abc")]))
        self.assertEqual(header.tlvs, ((0x05, b"abc"),))

    def test_badVersion(self):
        self.assertRaises(ValueError, formatHeader, 3, V4, V4_DST)


class TrustedSendersTests(SynchronousTestCase):
    def test_trusts(self):
        senders = TrustedSenders(["10.0.0.0/8", "2001:db8::/32"])
        self.assertTrue(senders.trusts("10.1.2.3"))
        self.assertTrue(senders.trusts("::ffff:10.1.2.3"))
        self.assertTrue(senders.trusts("2001:db8::5"))
        self.assertFalse(senders.trusts("192.0.2.1"))
        self.assertFalse(senders.trusts(None))
        self.assertFalse(senders.trusts("not an address"))
        # Answers are kept: the same again.
        self.assertTrue(senders.trusts("10.1.2.3"))
