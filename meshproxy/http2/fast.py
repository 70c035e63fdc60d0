"""
The parts of the C{h2} and C{hpack} libraries that cost the most per
request, made cheaper without changing what goes on the wire or what is
checked.

  - L{CountedStreams}: the h2 library counts the open streams by walking
    every stream it knows, on every new stream (and prunes the closed ones
    in the same walk): at 100 concurrent streams a connection, that walk
    was the largest single cost of a request. The count is now taken
    only when the library's check could fail (or the streams it remembers
    pass a bound): below, the number of streams it knows is an upper bound
    of the open ones, under the limit, so the check passes as it would
    have.
  - L{PlainEncoder}: HPACK header blocks written without Huffman coding and
    without the dynamic table (the fields a proxy forwards are mostly new
    values: date, lengths, ids), each field's representation kept in a
    bounded cache; names from the static table by index, full matches
    (C{:status: 200}) as one byte. Fields marked never-indexed stay so.
  - L{FastDecoder}: a header block made only of one-byte indexed fields
    (what h2load, curl and grpcio send for every request after the first,
    and nginx for most responses) is read by table look-ups alone (its
    fields plain C{(name, value)} tuples, not C{HeaderTuple}s); any
    other block goes through the library's decoder, unchanged, with the
    same checks (header list size, table size). A block that left the
    dynamic table as it was is kept with its header list: the same bytes
    again, while the table and the limits are unchanged, decode to the
    same list (the very same object, which no caller changes), with no
    other effect, so the list kept is given at once. Whatever changes the
    table or the limits forgets every block kept.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, cast

from h2.stream import StreamClosedBy, StreamState
from hpack import Decoder, Encoder, HeaderTuple, NeverIndexedHeaderTuple
from hpack.exceptions import InvalidTableIndex, OversizedHeaderListError
from hpack.hpack import DEFAULT_MAX_HEADER_LIST_SIZE, encode_integer
from hpack.table import HeaderTable

__all__ = ["CountedStreams", "FastDecoder", "PlainEncoder"]

#: Field representations an L{PlainEncoder} keeps (it starts over past it),
#: and the name heads of its literals.
CACHE_SIZE = 128
#: Values longer than this are encoded each time, not kept.
CACHE_VALUE = 64

_STATIC_FULL: dict[tuple[bytes, bytes], int] = {}
_STATIC_NAME: dict[bytes, int] = {}
for _i, _entry in enumerate(HeaderTable.STATIC_TABLE, 1):
    _STATIC_FULL.setdefault(_entry, _i)
    _STATIC_NAME.setdefault(_entry[0], _i)
del _i, _entry

#: The bytes of a block of one-byte indexed fields only (0x81 to 0xfe: an
#: index from 1 to 126), deleted by C{bytes.translate}.
_ONE_BYTE_INDEXED = bytes(range(0x81, 0xFF))

_CLOSED = StreamState.CLOSED


class CountedStreams:
    """
    A mixin for C{h2.connection.H2Connection} that counts open streams
    only when the count matters (see the module docstring).

    The library asks for the count before each new stream, and compares
    count + 1 with the limit (the local C{SETTINGS_MAX_CONCURRENT_STREAMS}
    for streams the peer opens, the peer's for those this side opens).
    C{open_inbound_streams} and C{open_outbound_streams} are therefore an
    upper bound (the streams the library knows, closed ones not yet
    forgotten), exact whenever it reaches the limit. The walk that counts
    also forgets closed streams: it is made anyway once the streams known
    double (amortised: one walk per as many new streams as it walked), or
    at once with L{pruneClosed}; a stream meshproxy is done with is
    forgotten at once, if closed, with L{forgetClosed} (then the walks are
    rare). The closed streams remembered (the library's C{SizeLimitDict},
    which checks its size in Python on every insert) are an
    C{OrderedDict}, bounded the same way.
    """

    #: The fewest streams known before a walk is made to forget the closed.
    PRUNE_AT = 64

    streams: dict[int, Any]
    config: Any
    local_settings: Any
    remote_settings: Any
    MAX_CLOSED_STREAMS: int
    _closed_streams: dict[int, StreamClosedBy | None]
    _pruneAt: int = PRUNE_AT

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # (ordered, and its oldest entry taken in constant time: a dict
        # would walk past the entries deleted before it)
        self._closed_streams = OrderedDict()

    def _trimClosed(self) -> None:
        """
        Forget the oldest closed streams past the number remembered.
        """
        closed = cast("OrderedDict[int, Any]", self._closed_streams)
        limit = self.MAX_CLOSED_STREAMS
        while len(closed) > limit:
            closed.popitem(last=False)

    def forgetClosed(self, streamId: int) -> None:
        """
        Forget stream C{streamId} now if it is closed, as the count's walk
        would (remembering how it was closed).
        """
        stream = self.streams.get(streamId)
        if stream is None:
            return
        machine = stream.state_machine
        if machine.state is not _CLOSED:
            return
        del self.streams[streamId]
        closed = cast("OrderedDict[int, Any]", self._closed_streams)
        closed[streamId] = machine.stream_closed_by
        if len(closed) > self.MAX_CLOSED_STREAMS:
            closed.popitem(last=False)

    def _open_streams(self, remainder: int) -> int:
        known = len(self.streams)
        if known < self._pruneAt:
            if remainder == int(self.config.client_side):
                limit = self.remote_settings.max_concurrent_streams
            else:
                limit = self.local_settings.max_concurrent_streams
            if known + 1 < limit:
                # (an upper bound of the open streams, and under the limit)
                return known
        count: int = super()._open_streams(remainder)  # type: ignore[misc]
        self._trimClosed()
        self._pruneAt = max(self.PRUNE_AT, 2 * len(self.streams))
        return count

    def pruneClosed(self) -> None:
        """
        Forget the closed streams now (as the library's count would).
        """
        # (no stream id has remainder -1: the walk only prunes)
        super()._open_streams(-1)  # type: ignore[misc]
        self._trimClosed()
        self._pruneAt = max(self.PRUNE_AT, 2 * len(self.streams))


class PlainEncoder(Encoder):
    """
    An HPACK encoder writing literals without indexing and without Huffman
    coding (see the module docstring).
    """

    def __init__(self) -> None:
        Encoder.__init__(self)
        self._cache: dict[tuple[bytes, bytes], bytes] = {}
        self._heads: dict[tuple[bytes, int], bytes] = {}

    def encode(self, headers: Any, huffman: bool = False) -> bytes:
        """
        The header block of C{headers}: an iterable of C{(name, value)}
        pairs of bytes, those meant never to be indexed as
        L{NeverIndexedHeaderTuple}s.
        """
        block = []
        table = self.header_table
        if table.resized:
            block.append(self._encode_table_size_change())
            table.resized = False
        cache = self._cache
        for field in headers:
            if field.__class__ is not tuple or len(field) != 2:
                if len(field) != 2:
                    # (a (name, value, sensitive) triple)
                    name, value, sensitive = field
                    kind = NeverIndexedHeaderTuple if sensitive else HeaderTuple
                    field = kind(_bytes(name), _bytes(value))
                if isinstance(field, HeaderTuple):
                    if not field.indexable:
                        block.append(self._literal(_bytes(field[0]), _bytes(field[1]), 0x10))
                        continue
                else:
                    # (a list, say)
                    field = tuple(field)
            encoded = cache.get(field)
            if encoded is None:
                name, value = field
                name, value = _bytes(name), _bytes(value)
                index = _STATIC_FULL.get((name, value))
                if index is not None:
                    encoded = bytes(_integer(index, 7, 0x80))
                else:
                    encoded = self._literal(name, value, 0x00)
                if len(value) <= CACHE_VALUE:
                    if len(cache) >= CACHE_SIZE:
                        cache.clear()
                    cache[(name, value)] = encoded
            block.append(encoded)
        return b"".join(block)

    def _literal(self, name: bytes, value: bytes, flags: int) -> bytes:
        """
        A literal field without indexing (C{flags} 0) or never indexed
        (C{0x10}), its name by index when the static table has it.
        """
        heads = self._heads
        head = heads.get((name, flags))
        if head is None:
            index = _STATIC_NAME.get(name)
            if index is not None:
                head = bytes(_integer(index, 4, flags))
            else:
                head = bytes((flags,)) + bytes(_integer(len(name), 7, 0)) + name
            if len(heads) >= CACHE_SIZE:
                heads.clear()
            heads[(name, flags)] = head
        length = len(value)
        if length < 0x7F:
            return head + bytes((length,)) + value
        return head + bytes(_integer(length, 7, 0)) + value


def _bytes(value: bytes | str) -> bytes:
    """
    A field's name or value as bytes (text is UTF-8, as the h2 library has
    it).
    """
    return value if isinstance(value, bytes) else value.encode("utf-8")


def _integer(value: int, prefix: int, flags: int) -> bytearray:
    """
    An HPACK integer on C{prefix} bits, the first byte's other bits
    C{flags}.
    """
    encoded = encode_integer(value, prefix)
    encoded[0] |= flags
    return encoded


class FastDecoder(Decoder):
    """
    An HPACK decoder that reads blocks of one-byte indexed fields by table
    look-ups alone, and gives the header list of a block seen before at
    once while the table and its limits are unchanged (see the module
    docstring).

    The lists it returns are shared: callers must not change them.
    """

    #: Blocks kept (it starts over past it), and the longest kept.
    BLOCKS = 32
    BLOCK_SIZE = 512

    _blocks: dict[bytes, list[Any]]

    def __init__(self, max_header_list_size: int = DEFAULT_MAX_HEADER_LIST_SIZE) -> None:
        self._blocks = {}
        Decoder.__init__(self, max_header_list_size)

    # The limits a block was checked against: changing one forgets the
    # blocks kept (a block within the old ones may not be within the new).

    @property
    def max_header_list_size(self) -> int:
        """
        See C{hpack.Decoder.max_header_list_size}.
        """
        return self._maxHeaderList

    @max_header_list_size.setter
    def max_header_list_size(self, value: int) -> None:
        self._maxHeaderList = value
        self._blocks.clear()

    @property
    def max_allowed_table_size(self) -> int:
        """
        See C{hpack.Decoder.max_allowed_table_size}.
        """
        return self._maxTable

    @max_allowed_table_size.setter
    def max_allowed_table_size(self, value: int) -> None:
        self._maxTable = value
        self._blocks.clear()

    @property
    def header_table_size(self) -> int:
        """
        See C{hpack.Decoder.header_table_size}.
        """
        return self.header_table.maxsize

    @header_table_size.setter
    def header_table_size(self, value: int) -> None:
        self.header_table.maxsize = value
        self._blocks.clear()

    def decode(self, data: bytes, raw: bool = False) -> Any:
        """
        See C{hpack.Decoder.decode}.
        """
        if not raw:
            return Decoder.decode(self, data, raw)
        blocks = self._blocks
        headers = blocks.get(data)
        if headers is not None:
            return headers
        if not data or data.translate(None, _ONE_BYTE_INDEXED):
            headers, kept = self._decodeOther(data)
        else:
            headers, kept = self._decodeIndexed(data), True
        if kept and len(data) <= self.BLOCK_SIZE:
            if len(blocks) >= self.BLOCKS:
                blocks.clear()
            blocks[data] = headers
        return headers

    def _decodeOther(self, data: bytes) -> tuple[Any, bool]:
        """
        A block with more than indexed fields, by the library's decoder:
        the blocks kept are forgotten if it changed the table.

        @return: the header list, and whether the table is as it was (the
            block may be kept).
        """
        table = self.header_table
        dynamic = table.dynamic_entries
        size = len(dynamic)
        first = dynamic[0] if size else None
        maxsize = table.maxsize
        try:
            headers = Decoder.decode(self, data, True)
        finally:
            # (an entry added is a new tuple first in the table; one
            # evicted changes its length, unless one is added too)
            changed = (
                len(dynamic) != size
                or (size and dynamic[0] is not first)
                or table.maxsize != maxsize
            )
            if changed:
                self._blocks.clear()
        return headers, not changed

    def _decodeIndexed(self, data: bytes) -> list[Any]:
        """
        A block of one-byte indexed fields, by table look-ups.
        """
        table = self.header_table
        static = HeaderTable.STATIC_TABLE
        staticLength = len(static)
        dynamic = table.dynamic_entries
        headers = []
        size = 0
        limit = self.max_header_list_size
        for byte in data:
            index = (byte & 0x7F) - 1
            if index < staticLength:
                field = static[index]
            else:
                index -= staticLength
                if index >= len(dynamic):
                    raise InvalidTableIndex("Invalid table index %d" % ((byte & 0x7F),))
                field = dynamic[index]
            # (the table's own pair, a plain tuple: every field of such a
            # block is indexable)
            headers.append(field)
            size += 32 + len(field[0]) + len(field[1])
            if size > limit:
                raise OversizedHeaderListError(
                    f"A header list larger than {limit} has been received"
                )
        self._assert_valid_table_size()
        return headers
