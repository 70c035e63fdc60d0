"""
Tests for what meshproxy keeps of the header blocks a connection reads
again and again: L{FastDecoder}'s blocks (the same bytes decode to the same
list while the table and the limits are unchanged) and L{RequestMemo} (the
same list makes the same request), each giving what the library's decoder
and L{requestFrom} give, with the same errors.
"""

from __future__ import annotations

import gc
import random

from h2.settings import SettingCodes
from hpack import Decoder, Encoder, NeverIndexedHeaderTuple
from hpack.exceptions import InvalidTableIndex, InvalidTableSizeError, OversizedHeaderListError
from hyperframe.frame import SettingsFrame
from twisted.trial.unittest import SynchronousTestCase

from meshproxy.config import ServerConfig
from meshproxy.http.exchange import Exchange
from meshproxy.http.message import ProxyError, Request
from meshproxy.http2.fast import FastDecoder, PlainEncoder
from meshproxy.http2.fastpath import sendHeaders
from meshproxy.http2.headers import (
    RequestMemo,
    ResponseMemo,
    copyRequest,
    requestFrom,
    responseFields,
)
from tests.test_http2_fastpath import _raw, _server, _state as _connectionState
from tests.test_http2_server import H2Harness, get

REQUEST = [
    (b":method", b"GET"),
    (b":path", b"/"),
    (b":scheme", b"http"),
    (b":authority", b"hello"),
    (b"user-agent", b"h2load nghttp2/1.52.0"),
]


def _literal(name: bytes, value: bytes, kind: int) -> bytes:
    """
    A literal field with a new name: C{kind} 0x40 (incremental indexing),
    0x00 (without indexing) or 0x10 (never indexed); short strings, no
    Huffman.
    """
    return bytes([kind, len(name)]) + name + bytes([len(value)]) + value


def _state(decoder):
    table = decoder.header_table
    return list(table.dynamic_entries), table.maxsize, table._current_size


class DecoderBlocksTests(SynchronousTestCase):
    """
    L{FastDecoder} gives the header list of a block seen before at once,
    only while decoding it again would give the same list and change
    nothing.
    """

    def assertSame(self, fastDecoder, slow, block):
        """
        C{block} decodes alike with both decoders (or fails alike), and
        leaves their tables alike.
        """
        try:
            expected = slow.decode(block, raw=True)
        except Exception as e:
            self.assertRaises(type(e), fastDecoder.decode, block, raw=True)
        else:
            self.assertEqual(fastDecoder.decode(block, raw=True), expected)
        self.assertEqual(_state(fastDecoder), _state(slow))

    def test_indexedBlockKept(self):
        """
        A block of indexed fields decoded again gives the same list.
        """
        encoder, decoder = Encoder(), FastDecoder()
        decoder.decode(encoder.encode(REQUEST), raw=True)
        block = encoder.encode(REQUEST)
        first = decoder.decode(block, raw=True)
        self.assertEqual(first, REQUEST)
        self.assertIs(decoder.decode(block, raw=True), first)

    def test_literalBlockKept(self):
        """
        A block of literals not indexed (the table unchanged) is kept too;
        a never-indexed field stays one.
        """
        block = b"\x82" + _literal(b"x-a", b"1", 0x00) + _literal(b"x-b", b"2", 0x10)
        decoder = FastDecoder()
        first = decoder.decode(block, raw=True)
        self.assertEqual(first, [(b":method", b"GET"), (b"x-a", b"1"), (b"x-b", b"2")])
        self.assertIsInstance(first[2], NeverIndexedHeaderTuple)
        self.assertIs(decoder.decode(block, raw=True), first)

    def test_indexingBlockNotKept(self):
        """
        A block that adds to the table adds again each time it comes (and
        the entries pushed out go), as with the library's decoder.
        """
        block = _literal(b"x-a", b"1", 0x40) + b"\xbe"
        fastDecoder, slow = FastDecoder(), Decoder()
        fastDecoder.header_table_size = slow.header_table_size = 80
        for _ in range(3):
            self.assertSame(fastDecoder, slow, block)
        self.assertEqual(len(fastDecoder.header_table.dynamic_entries), 2)

    def test_tableChangeForgets(self):
        """
        A block naming a dynamic entry decodes to the entry now at its
        index once another block added one.
        """
        fastDecoder, slow = FastDecoder(), Decoder()
        self.assertSame(fastDecoder, slow, _literal(b"x-a", b"1", 0x40))
        self.assertSame(fastDecoder, slow, b"\xbe")
        self.assertSame(fastDecoder, slow, _literal(b"x-b", b"2", 0x40))
        self.assertEqual(fastDecoder.decode(b"\xbe", raw=True), [(b"x-b", b"2")])
        self.assertSame(fastDecoder, slow, b"\xbe\xbf")

    def test_sizeUpdateForgets(self):
        """
        A block resizing the table (evicting entries) forgets the blocks
        kept: an index past the table is refused again.
        """
        fastDecoder, slow = FastDecoder(), Decoder()
        self.assertSame(fastDecoder, slow, _literal(b"x-a", b"1", 0x40))
        self.assertSame(fastDecoder, slow, b"\xbe")
        # (a dynamic table size update to 0, then :method GET)
        self.assertSame(fastDecoder, slow, b"\x20\x82")
        self.assertSame(fastDecoder, slow, b"\xbe")
        self.assertSame(fastDecoder, slow, b"\x20\x82")

    def test_headerListLimitForgets(self):
        """
        A block within the header list limit is refused once the limit is
        lowered under it.
        """
        decoder = FastDecoder()
        self.assertEqual(len(decoder.decode(b"\x82\x84\x86", raw=True)), 3)
        decoder.max_header_list_size = 100
        self.assertEqual(decoder.max_header_list_size, 100)
        self.assertRaises(OversizedHeaderListError, decoder.decode, b"\x82\x84\x86", raw=True)

    def test_tableLimitForgets(self):
        """
        A block is refused once the table allowed is lowered under the
        table's size (the peer was to shrink it first).
        """
        decoder = FastDecoder()
        self.assertEqual(decoder.decode(b"\x82", raw=True), [(b":method", b"GET")])
        decoder.max_allowed_table_size = 100
        self.assertEqual(decoder.max_allowed_table_size, 100)
        self.assertRaises(InvalidTableSizeError, decoder.decode, b"\x82", raw=True)

    def test_tableSizeSetForgets(self):
        """
        Shrinking the table from outside (evicting entries) forgets the
        blocks kept.
        """
        decoder = FastDecoder()
        decoder.decode(_literal(b"x-a", b"1", 0x40), raw=True)
        self.assertEqual(decoder.decode(b"\xbe", raw=True), [(b"x-a", b"1")])
        decoder.header_table_size = 0
        self.assertEqual(decoder.header_table_size, 0)
        self.assertRaises(InvalidTableIndex, decoder.decode, b"\xbe", raw=True)

    def test_blocksBounded(self):
        """
        The blocks kept are bounded in number and in size.
        """
        decoder = FastDecoder()
        for i in range(FastDecoder.BLOCKS * 3):
            decoder.decode(b"\x82" + _literal(b"x-n", b"%d" % (i,), 0x00), raw=True)
            self.assertLessEqual(len(decoder._blocks), FastDecoder.BLOCKS)
        long = _literal(b"x-long", b"v" * 100, 0x00) * 6
        decoder.decode(long, raw=True)
        self.assertNotIn(long, decoder._blocks)

    def test_notRawNotKept(self):
        """
        Asked for text, the library's decoder answers, each time.
        """
        decoder = FastDecoder()
        self.assertEqual(decoder.decode(b"\x82"), [(":method", "GET")])
        self.assertEqual(decoder.decode(b"\x82"), [(":method", "GET")])
        self.assertEqual(decoder._blocks, {})

    def test_randomSequences(self):
        """
        Seeded random sequences of blocks (indexed, literals of each kind,
        size updates, repeats, small tables that evict) decode alike and
        leave the tables alike.
        """
        rng = random.Random(1315)
        for _ in range(40):
            fastDecoder, slow = FastDecoder(), Decoder()
            size = rng.choice([64, 200, 4096])
            fastDecoder.header_table_size = slow.header_table_size = size
            blocks = [b"\x82\x84"]
            for _ in range(60):
                if rng.random() < 0.5:
                    block = rng.choice(blocks)
                else:
                    parts = []
                    for _ in range(rng.randint(1, 4)):
                        kind = rng.random()
                        if kind < 0.4:
                            parts.append(bytes([0x80 | rng.randint(1, 66)]))
                        else:
                            flag = rng.choice([0x40, 0x00, 0x10])
                            name = b"x-%d" % rng.randint(0, 3)
                            parts.append(_literal(name, b"%d" % rng.randint(0, 3), flag))
                    if rng.random() < 0.05:
                        parts.insert(0, bytes([0x20 | rng.randint(0, 31)]))
                    block = b"".join(parts)
                    blocks.append(block)
                self.assertSame(fastDecoder, slow, block)


class RequestMemoTests(SynchronousTestCase):
    """
    L{RequestMemo} makes the request of a header list seen before as a copy
    of the one L{requestFrom} made, the same in every attribute.
    """

    def setUp(self):
        self.settings = ServerConfig()

    def assertRequestsEqual(self, request, expected):
        for name in Request.__slots__:
            self.assertEqual(getattr(request, name), getattr(expected, name), name)

    def test_sameListCopied(self):
        """
        The same list again makes requests equal to L{requestFrom}'s, each
        its own object with its own fields.
        """
        memo = RequestMemo(self.settings)
        headers = REQUEST + [(b"content-length", b"5"), (b"mesh-ctx-dtab", b"/a=>/b")]
        expected = requestFrom(headers, False, self.settings)
        made = [memo.request(headers, False) for _ in range(4)]
        for request in made:
            self.assertRequestsEqual(request, expected)
        self.assertEqual(len({id(r) for r in made}), 4)
        self.assertEqual(len({id(r.headers) for r in made}), 4)
        self.assertEqual(expected.contentLength, 5)
        self.assertTrue(expected.meshHeaders)

    def test_changesNotShared(self):
        """
        What an exchange changes in its request (fields, framing) is not
        seen in the next one.
        """
        memo = RequestMemo(self.settings)
        for _ in range(3):
            request = memo.request(REQUEST, True)
            self.assertEqual(request.headers[0], (b"host", b"hello"))
            self.assertFalse(request.chunked)
            self.assertIsNone(request.peer)
            del request.headers[0]
            request.chunked = True
            request.peer = "10.0.0.1"

    def test_endedApart(self):
        """
        The same list with and without the end of the stream makes each its
        request (a body of unknown length is chunked).
        """
        memo = RequestMemo(self.settings)
        for _ in range(3):
            self.assertFalse(memo.request(REQUEST, True).chunked)
            self.assertTrue(memo.request(REQUEST, False).chunked)

    def test_refusedEachTime(self):
        """
        A list L{requestFrom} refuses is refused each time it comes.
        """
        memo = RequestMemo(self.settings)
        headers = REQUEST + [(b"connection", b"close")]
        for _ in range(3):
            error = self.assertRaises(ProxyError, memo.request, headers, True)
            self.assertEqual(error.status, 400)

    def test_equalListsApart(self):
        """
        Lists are known by identity: an equal list of its own is taken
        apart (and a list kept is never mistaken for a new one at its id).
        """
        memo = RequestMemo(self.settings)
        for i in range(RequestMemo.SIZE * 3):
            headers = list(REQUEST) + [(b"x-n", b"%d" % (i % 5,))]
            request = memo.request(headers, True)
            self.assertEqual(request.headers[-1], (b"x-n", b"%d" % (i % 5,)))
            self.assertLessEqual(len(memo._seen), RequestMemo.SIZE)

    def test_copyRequestEverySlot(self):
        """
        L{copyRequest} copies every attribute of a L{Request} (a new one
        would otherwise be lost on the memo's copies).
        """
        request = Request(b"GET", b"/", "2.0", [(b"host", b"a")])
        for i, name in enumerate(Request.__slots__):
            if name != "headers":
                setattr(request, name, ("value", i))
        copy = copyRequest(request)
        self.assertRequestsEqual(copy, request)
        self.assertIsNot(copy.headers, request.headers)


UPSTREAM = [
    (b"Server", b"nginx/1.22.1"),
    (b"Date", b"Tue, 01 Dec 2026 12:00:00 GMT"),
    (b"Content-Type", b"text/plain"),
    (b"Content-Length", b"6"),
    (b"Connection", b"keep-alive, x-hop"),
    (b"X-Hop", b"1"),
]


class ResponseMemoTests(SynchronousTestCase):
    """
    L{ResponseMemo} gives the header list L{responseFields} makes, and its
    block as a L{PlainEncoder} writes it, kept for the same upstream head.
    """

    def test_sameHeadKept(self):
        """
        An equal head (its own list and pairs) gives the same list and
        block: those of L{responseFields} and the connection's encoder.
        """
        memo = ResponseMemo(PlainEncoder())
        fields, block = memo.head(200, UPSTREAM, b"6", False)
        expected = responseFields(200, UPSTREAM, b"6", False)
        self.assertEqual(fields, expected)
        self.assertNotIn((b"x-hop", b"1"), fields)
        self.assertEqual(block, PlainEncoder().encode(expected))
        again = memo.head(200, [(bytes(n), bytes(v)) for n, v in UPSTREAM], b"6", False)
        self.assertIs(again[0], fields)
        self.assertIs(again[1], block)

    def test_headsApart(self):
        """
        A head differing in its status, a field, its length or its framing
        gets its own list.
        """
        memo = ResponseMemo(PlainEncoder())
        later = [UPSTREAM[0], (b"Date", b"Tue, 01 Dec 2026 12:00:01 GMT")] + UPSTREAM[2:]
        for args in [
            (200, UPSTREAM, b"6", False),
            (404, UPSTREAM, b"6", False),
            (200, later, b"6", False),
            (200, UPSTREAM, b"7", False),
            (200, UPSTREAM, b"6", True),
            (200, UPSTREAM, None, False),
        ]:
            fields, block = memo.head(*args)
            self.assertEqual(fields, responseFields(*args))
            self.assertEqual(block, PlainEncoder().encode(fields))

    def test_otherEncoderNoBlock(self):
        """
        With an encoder other than L{PlainEncoder} (whose blocks depend on
        its table), no block is kept.
        """
        fields, block = ResponseMemo(Encoder()).head(200, UPSTREAM, b"6", False)
        self.assertEqual(fields, responseFields(200, UPSTREAM, b"6", False))
        self.assertIsNone(block)

    def test_resizedEncoderNoBlock(self):
        """
        While the encoder owes the peer a table size update, no block is
        made (the update stays owed, for the next block sent).
        """
        encoder = PlainEncoder()
        encoder.header_table_size = 100
        self.assertTrue(encoder.header_table.resized)
        fields, block = ResponseMemo(encoder).head(200, UPSTREAM, b"6", False)
        self.assertIsNone(block)
        self.assertTrue(encoder.header_table.resized)

    def test_listPairsNotKept(self):
        """
        Fields given as lists (not hashable) are made each time.
        """
        memo = ResponseMemo(PlainEncoder())
        pairs = [[n, v] for n, v in UPSTREAM]
        fields, block = memo.head(200, pairs, b"6", False)
        self.assertEqual(fields, responseFields(200, UPSTREAM, b"6", False))
        self.assertIsNone(block)
        self.assertEqual(memo._heads, {})

    def test_bounded(self):
        """
        The heads kept are bounded.
        """
        memo = ResponseMemo(PlainEncoder())
        for i in range(ResponseMemo.SIZE * 3):
            memo.head(200, UPSTREAM, b"%d" % (i,), False)
            self.assertLessEqual(len(memo._heads), ResponseMemo.SIZE)


class SendBlockTests(SynchronousTestCase):
    """
    L{sendHeaders} given a head's block writes what the library writes for
    its fields.
    """

    def test_blockSent(self):
        """
        The block is written as the head's HEADERS frame.
        """
        library, fast = _server()
        fields = [(b":status", b"200"), (b"content-type", b"text/plain")]
        block = PlainEncoder().encode(fields)
        library.send_headers(3, fields, end_stream=True)
        sendHeaders(fast, 3, fields, True, block)
        self.assertEqual(_connectionState(library), _connectionState(fast))

    def test_tableSizeUpdateFirst(self):
        """
        When the peer changed its table size, the update goes first: the
        fields are encoded again, not the block.
        """
        library, fast = _server()
        for h2 in (library, fast):
            h2.update_settings({})
            h2.receive_data(_raw(SettingsFrame(0, settings={SettingCodes.HEADER_TABLE_SIZE: 100})))
            h2.data_to_send()
        self.assertTrue(fast.encoder.header_table.resized)
        fields = [(b":status", b"200"), (b"content-type", b"text/plain")]
        block = PlainEncoder().encode(fields)
        library.send_headers(3, fields, end_stream=True)
        sendHeaders(fast, 3, fields, True, block)
        self.assertEqual(_connectionState(library), _connectionState(fast))
        self.assertFalse(fast.encoder.header_table.resized)


class ConnectionTests(SynchronousTestCase):
    """
    Through a client connection: requests and responses that repeat are
    read and written as the first ones were.
    """

    def test_repeatedRequestsAndResponses(self):
        """
        The same request again and again (its block all indexed after the
        first) goes upstream the same; the same response comes back each
        time; a request that differs goes as it is.
        """
        h = H2Harness()
        c = h.h2()
        answer = (
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: keep-alive, X-Hop\r\n"
            b"X-Hop: 1\r\nX-Kept: Yes\r\n\r\nhello"
        )
        heads = []
        up = upTransport = None
        for i in range(4):
            extra = [(b"x-n", b"2")] if i == 3 else [(b"x-n", b"1")]
            sid = c.request(get(b"/a", extra=extra))
            if up is None:
                up, upTransport = h.upstream()
            heads.append(upTransport.value())
            upTransport.clear()
            up.dataReceived(answer)
            c.pump()
            headers, body, trailers, ended = c.response(sid)
            self.assertEqual(
                (headers, body, trailers, ended),
                (
                    {
                        b":status": b"200",
                        b"x-kept": b"Yes",
                        b"via": b"1.1 meshproxy",
                        b"content-length": b"5",
                    },
                    b"hello",
                    None,
                    True,
                ),
            )
        for head in heads:
            self.assertTrue(head.startswith(b"GET /a HTTP/1.1\r\nhost: hello\r\n"), head)
        self.assertEqual([head.count(b"x-n: 1\r\n") for head in heads], [1, 1, 1, 0])
        self.assertIn(b"x-n: 2\r\n", heads[3])
        # (the first block and the last add to the table: their lists are
        # seen once; the second list came again, and made the third request)
        seen = c.proto._h2.requests._seen.values()
        self.assertEqual(sorted(template is not None for _, template in seen), [False, False, True])

    def test_errorReplacesAQueuedHead(self):
        """
        An answer of meshproxy's own replaces a head queued with its block:
        the block goes with it.
        """
        h = H2Harness()
        c = h.h2()
        sid = c.request(get(method=b"POST"), end=False)
        [stream] = c.proto._h2.streams.values()
        stream.queueHead([(b":status", b"200")], b"\xff\xff")
        stream.sendError(ProxyError(502, "upstream-error", "No."))
        stream.flush()
        c.pump()
        headers, body, trailers, ended = c.response(sid)
        self.assertEqual(headers[b":status"], b"502")
        self.assertEqual(body, b"No.\n")
        self.assertIsNone(c.goaway())

    def test_gateOnlyForABody(self):
        """
        A stream makes its gate only when its request body needs one.
        """
        h = H2Harness()
        c = h.h2()
        c.request(get(), end=False)
        [stream] = c.proto._h2.streams.values()
        self.assertIsNone(stream._gate)
        gate = stream.gate
        self.assertIs(stream.gate, gate)
        self.assertIs(gate.transport, stream)

    def test_exchangeFreedWithTheStream(self):
        """
        Once its stream is closed, an exchange is freed at once (its
        stream no longer refers to it), not left to the garbage collector.
        """
        h = H2Harness()
        c = h.h2()
        sid = c.request(get())
        [stream] = c.proto._h2.streams.values()
        up, upTransport = h.upstream()
        gc.collect()
        gc.disable()
        self.addCleanup(gc.enable)
        up.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        c.pump()
        self.assertEqual(c.response(sid)[1], b"ok")
        self.assertEqual(stream.state, "CLOSED")
        self.assertIsNone(stream.exchange)
        self.assertEqual(
            [o for o in gc.get_objects() if type(o) is Exchange and o.server is stream], []
        )
