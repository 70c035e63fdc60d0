"""
Tests for L{meshproxy.http2.fast}: the h2 library's stream count and HPACK
coding made cheaper, with the same results and the same checks.
"""

from __future__ import annotations

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import RequestReceived
from h2.exceptions import TooManyStreamsError
from h2.settings import SettingCodes
from hpack import Decoder, Encoder, HeaderTuple, NeverIndexedHeaderTuple
from hpack.exceptions import InvalidTableIndex, OversizedHeaderListError
from twisted.trial.unittest import SynchronousTestCase

from meshproxy.http2 import fast
from meshproxy.http2.fast import CountedStreams, FastDecoder, PlainEncoder


class _Counted(CountedStreams, H2Connection):
    pass


def _pair(serverLimit=100, clientLimit=100):
    """
    A client and a server connection (both counting), their settings
    exchanged.
    """
    client = _Counted(H2Configuration(client_side=True, header_encoding=None))
    server = _Counted(H2Configuration(client_side=False, header_encoding=None))
    client.initiate_connection()
    server.initiate_connection()
    client.update_settings({SettingCodes.MAX_CONCURRENT_STREAMS: clientLimit})
    server.update_settings({SettingCodes.MAX_CONCURRENT_STREAMS: serverLimit})
    _pump(client, server)
    return client, server


def _pump(a, b):
    for _ in range(4):
        data = a.data_to_send()
        if data:
            b.receive_data(data)
        data = b.data_to_send()
        if data:
            a.receive_data(data)


REQUEST = [
    (b":method", b"GET"),
    (b":path", b"/"),
    (b":scheme", b"http"),
    (b":authority", b"hello"),
]


class CountedStreamsTests(SynchronousTestCase):
    """
    L{CountedStreams} counts open streams only when the limit could be
    reached, and still forgets closed streams.
    """

    def _exchange(self, client, server, n):
        """
        C{n} requests answered, one at a time.
        """
        for _ in range(n):
            sid = client.get_next_available_stream_id()
            client.send_headers(sid, REQUEST, end_stream=True)
            server.receive_data(client.data_to_send())
            server.send_headers(sid, [(b":status", b"200")], end_stream=True)
            client.receive_data(server.data_to_send())

    def test_closedStreamsForgotten(self):
        """
        However many streams a connection carries one after the other, the
        streams the library remembers stay bounded (the count's walk is
        made once they double).
        """
        client, server = _pair()
        self._exchange(client, server, 2000)
        self.assertLessEqual(len(server.streams), 2 * CountedStreams.PRUNE_AT)
        self.assertLessEqual(len(client.streams), 2 * CountedStreams.PRUNE_AT)

    def test_pruneClosed(self):
        """
        L{CountedStreams.pruneClosed} forgets the closed streams at once.
        """
        client, server = _pair()
        self._exchange(client, server, 10)
        self.assertEqual(len(server.streams), 10)
        server.pruneClosed()
        client.pruneClosed()
        self.assertEqual(server.streams, {})
        self.assertEqual(client.streams, {})
        self.assertEqual(server.open_inbound_streams, 0)

    def test_countUpperBoundUnderTheLimit(self):
        """
        Under the limit, the count is the streams known: an upper bound of
        the open ones, with no walk.
        """
        client, server = _pair()
        self._exchange(client, server, 5)
        self.assertEqual(server.open_inbound_streams, 5)
        self.assertEqual(H2Connection._open_streams(server, 0), 0)

    def test_inboundLimitEnforced(self):
        """
        At the limit the count is exact: a stream past the server's
        SETTINGS_MAX_CONCURRENT_STREAMS is refused as the library refuses
        it, and one more is taken once a stream closed (the closed ones
        were counted out).
        """
        client, server = _pair(serverLimit=3)
        for _ in range(2):
            sid = client.get_next_available_stream_id()
            client.send_headers(sid, REQUEST, end_stream=True)
            server.receive_data(client.data_to_send())
            server.send_headers(sid, [(b":status", b"200")], end_stream=True)
            client.receive_data(server.data_to_send())
        for _ in range(3):
            sid = client.get_next_available_stream_id()
            client.send_headers(sid, REQUEST, end_stream=True)
            events = server.receive_data(client.data_to_send())
            self.assertIsInstance(events[0], RequestReceived)
        self.assertEqual(server.open_inbound_streams, 3)
        # (a client that does not keep to the limit)
        sid = client.get_next_available_stream_id()
        client.remote_settings[SettingCodes.MAX_CONCURRENT_STREAMS] = 10
        client.remote_settings.acknowledge()
        client.send_headers(sid, REQUEST, end_stream=True)
        self.assertRaises(TooManyStreamsError, server.receive_data, client.data_to_send())

    def test_outboundLimitEnforced(self):
        """
        A client may not open more streams than the server allows, exactly
        as with the library's own count.
        """
        client, server = _pair(serverLimit=2)
        for _ in range(2):
            client.send_headers(client.get_next_available_stream_id(), REQUEST, end_stream=True)
        self.assertEqual(client.open_outbound_streams, 2)
        self.assertRaises(
            TooManyStreamsError,
            client.send_headers,
            client.get_next_available_stream_id(),
            REQUEST,
        )
        # A stream reset is closed: room for one more.
        client.reset_stream(1, ErrorCodes.CANCEL)
        client.send_headers(client.get_next_available_stream_id(), REQUEST)
        self.assertEqual(client.open_outbound_streams, 2)


FIELDS = [
    (b":status", b"200"),
    (b"content-type", b"text/plain"),
    (b"content-length", b"6"),
    (b"server", b"nginx/1.22.1"),
    (b"date", b"Tue, 01 Dec 2026 12:00:00 GMT"),
    (b"x-custom", b"value"),
    (b"via", b"2 meshproxy"),
]


class PlainEncoderTests(SynchronousTestCase):
    """
    L{PlainEncoder} writes blocks any HPACK decoder reads, without touching
    the dynamic table.
    """

    def test_roundTrip(self):
        """
        A block decodes to the fields given, in order, every time (the
        second from the cache), and neither side's dynamic table grows.
        """
        encoder = PlainEncoder()
        decoder = Decoder()
        for _ in range(3):
            self.assertEqual(decoder.decode(encoder.encode(FIELDS), raw=True), FIELDS)
        self.assertEqual(len(decoder.header_table.dynamic_entries), 0)
        self.assertEqual(len(encoder.header_table.dynamic_entries), 0)

    def test_otherShapes(self):
        """
        Fields as lists, as triples, or as text are written as the library's
        encoder takes them.
        """
        encoder = PlainEncoder()
        fields = [
            [b"x-list", b"1"],
            (b"x-triple", b"2", False),
            ("x-text", "3"),
            HeaderTuple(b"x-tuple", b"4"),
        ]
        for _ in range(2):
            self.assertEqual(
                Decoder().decode(encoder.encode(fields), raw=True),
                [(b"x-list", b"1"), (b"x-triple", b"2"), (b"x-text", b"3"), (b"x-tuple", b"4")],
            )

    def test_longValues(self):
        """
        Values of 127 bytes or more have their length on several bytes.
        """
        encoder = PlainEncoder()
        for size in (126, 127, 128, 300, 20000):
            fields = [(b"x-v", b"v" * size), NeverIndexedHeaderTuple(b"x-n", b"n" * size)]
            self.assertEqual(Decoder().decode(encoder.encode(fields), raw=True), fields)

    def test_representations(self):
        """
        A static table match is one indexed byte; a static name is a
        literal without indexing naming its index; a new name is a literal
        with the name; no Huffman coding.
        """
        encoder = PlainEncoder()
        self.assertEqual(encoder.encode([(b":status", b"200")]), b"\x88")
        # content-length is static entry 28: 0000 1111, then 28 - 15.
        self.assertEqual(encoder.encode([(b"content-length", b"6")]), b"\x0f\x0d\x016")
        self.assertEqual(encoder.encode([(b"x-a", b"b")]), b"\x00\x03x-a\x01b")

    def test_neverIndexed(self):
        """
        A field marked never-indexed (or a triple marked sensitive) is
        written so, and decoded as such.
        """
        encoder = PlainEncoder()
        block = encoder.encode(
            [NeverIndexedHeaderTuple(b"set-cookie", b"a=b"), (b"x-token", b"s", True)]
        )
        # set-cookie is static entry 55: 0001 1111, then 55 - 15.
        self.assertTrue(block.startswith(b"\x1f\x28\x03a=b"))
        decoded = Decoder().decode(block, raw=True)
        self.assertEqual(decoded, [(b"set-cookie", b"a=b"), (b"x-token", b"s")])
        self.assertEqual([h.indexable for h in decoded], [False, False])

    def test_tableSizeChange(self):
        """
        A change of the peer's table size is signalled at the start of the
        next block, once.
        """
        encoder = PlainEncoder()
        encoder.header_table_size = 1024
        block = encoder.encode([(b":status", b"200")])
        decoder = Decoder()
        self.assertEqual(decoder.decode(block, raw=True), [(b":status", b"200")])
        self.assertEqual(decoder.header_table_size, 1024)
        self.assertEqual(encoder.encode([(b":status", b"200")]), b"\x88")

    def test_cacheBounded(self):
        """
        The representations kept are bounded, and long values not kept.
        """
        encoder = PlainEncoder()
        for i in range(fast.CACHE_SIZE * 2 + 1):
            encoder.encode([(b"x-n", b"%d" % (i,))])
        self.assertLessEqual(len(encoder._cache), fast.CACHE_SIZE)
        for i in range(fast.CACHE_SIZE * 2 + 1):
            encoder.encode([NeverIndexedHeaderTuple(b"x-%d" % (i,), b"v")])
        self.assertLessEqual(len(encoder._heads), fast.CACHE_SIZE)
        encoder._cache.clear()
        long = b"v" * (fast.CACHE_VALUE + 1)
        self.assertEqual(Decoder().decode(encoder.encode([(b"x-l", long)]), raw=True),
                         [(b"x-l", long)])
        self.assertEqual(encoder._cache, {})


class FastDecoderTests(SynchronousTestCase):
    """
    L{FastDecoder} decodes as the library's decoder does, with the same
    checks.
    """

    def _both(self, blocks):
        fastDecoder, slow = FastDecoder(), Decoder()
        for block in blocks:
            self.assertEqual(fastDecoder.decode(block, raw=True), slow.decode(block, raw=True))
        return fastDecoder

    def test_indexedBlocks(self):
        """
        Blocks of indexed fields (from the static and the dynamic table)
        decode as with the library's decoder, to plain C{(name, value)}
        tuples (the table's own: no field of such a block is never-indexed,
        and nothing is made per field).
        """
        encoder = Encoder()
        fields = REQUEST + [(b"user-agent", b"h2load"), (b"x-trace", b"abc")]
        first = encoder.encode(fields)
        second = encoder.encode(fields)
        self.assertFalse(second.translate(None, fast._ONE_BYTE_INDEXED))
        decoder = self._both([first, second, second])
        decoded = decoder.decode(second, raw=True)
        self.assertEqual(decoded, fields)
        self.assertIs(type(decoded[0]), tuple)
        self.assertIs(decoded[0], decoder.decode(second, raw=True)[0])

    def test_otherBlocks(self):
        """
        Blocks with literals go through the library's decoder.
        """
        self._both([Encoder().encode(FIELDS), PlainEncoder().encode(FIELDS)])

    def test_notRaw(self):
        """
        Asked for text, the library's decoder answers.
        """
        self.assertEqual(FastDecoder().decode(b"\x82"), [(":method", "GET")])

    def test_invalidIndex(self):
        """
        An index past the dynamic table is refused.
        """
        decoder = FastDecoder()
        self.assertRaises(InvalidTableIndex, decoder.decode, b"\x82\xbe", raw=True)
        self.assertRaises(InvalidTableIndex, decoder.decode, b"\x80", raw=True)

    def test_headerListSize(self):
        """
        A header list past C{max_header_list_size} is refused.
        """
        decoder = FastDecoder()
        decoder.max_header_list_size = 100
        # :method GET (42), :path / (38): 80; then :scheme http (43)
        self.assertEqual(len(decoder.decode(b"\x82\x84", raw=True)), 2)
        self.assertRaises(OversizedHeaderListError, decoder.decode, b"\x82\x84\x86", raw=True)
