"""
The server name of a TLS ClientHello, read without terminating TLS.

A TCP router that routes by SNI reads the first bytes a client sends (the
ClientHello, in one or more TLS records), finds the C{server_name}
extension, and then hands every byte it read, unchanged, to the upstream
(or to its own TLS layer). L{ClientHelloReader} is fed the reads as they
come: it keeps the bytes, parses each complete record once, and stops as
soon as the handshake message is complete, or fails with
L{ClientHelloError} on anything that is not a well-formed ClientHello:
bytes that are not a TLS handshake record, a message other than a
ClientHello, a length that does not add up, a duplicated extension, a
server name that is not a host name, or more bytes than the reader's
bound before the message is complete.

Only the structure the server name depends on is checked: the versions,
cipher suites and other extensions are the upstream's (or the TLS layer's)
business.
"""

from __future__ import annotations

import re
import struct

__all__ = [
    "ClientHelloError",
    "ClientHelloReader",
    "MAX_CLIENT_HELLO",
    "TLS_RECORD_MAX",
    "checkServerName",
]

#: The default bound on the bytes read before the ClientHello is complete.
MAX_CLIENT_HELLO = 16384

#: The longest plaintext fragment a TLS record may carry (RFC 8446, 5.1).
TLS_RECORD_MAX = 16384

_HANDSHAKE = 22
_CLIENT_HELLO = 1
_SERVER_NAME = 0
_HOST_NAME = 0

# A DNS host name: labels of letters, digits, "_" and "-" (not first or
# last), at most 63 each; what meshproxy takes as a path segment.
_HOST = re.compile(
    rb"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
    rb"(?:\.[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)*\.?"
)


class ClientHelloError(Exception):
    """
    The bytes read are not a ClientHello meshproxy can route by.

    @ivar reason: C{"not-tls"} (the first bytes are not a TLS handshake
        record), C{"malformed"} (a record or the message is ill-formed), or
        C{"oversized"} (more than the reader's bound before the message is
        complete).
    @ivar detail: what was wrong, in words, for the log.
    """

    def __init__(self, reason: str, detail: str) -> None:
        Exception.__init__(self, reason, detail)
        self.reason = reason
        self.detail = detail

    def __str__(self) -> str:
        return "%s: %s" % (self.reason, self.detail)


class ClientHelloReader:
    """
    Reads a ClientHello incrementally (see the module docstring).

    The common case, a first read holding one record with the whole
    ClientHello, is parsed where it lies: no byte is copied, and the bytes
    read are handed on as they came.

    @ivar maxBytes: the bytes read at most before the ClientHello is
        complete.
    @ivar done: whether the ClientHello is complete.
    @ivar serverName: its server name, lowercased and without a final dot,
        or L{None} (no C{server_name} extension, or not read yet).
    """

    __slots__ = ("maxBytes", "done", "serverName", "_raw", "_next", "_message")

    def __init__(self, maxBytes: int = MAX_CLIENT_HELLO) -> None:
        """
        @param maxBytes: see L{maxBytes}; at least the 9 bytes of a record
            header and a handshake header.
        """
        if maxBytes < 9:
            raise ValueError("maxBytes must be at least 9, got %r" % (maxBytes,))
        self.maxBytes = maxBytes
        self.done = False
        self.serverName: str | None = None
        # Every byte read, to be handed on as it came: the first read
        # itself when the ClientHello was all in it.
        self._raw: bytes | bytearray = bytearray()
        # The offset in _raw of the next record header.
        self._next = 0
        # The handshake bytes of the records parsed so far.
        self._message = bytearray()

    @property
    def received(self) -> bytes:
        """
        Every byte fed so far, in order.
        """
        raw = self._raw
        return raw if type(raw) is bytes else bytes(raw)

    def feed(self, data: bytes) -> bool:
        """
        Add the bytes of one read.

        @return: whether the ClientHello is complete (then L{serverName} is
            set, and L{received} holds every byte, including any that
            followed the ClientHello in the same read).
        @raise ClientHelloError: when the bytes cannot be a ClientHello, or
            pass L{maxBytes} before it is complete.
        """
        if self.done:
            self._raw += data
            return True
        raw = self._raw
        if not raw and len(data) >= 9 and self._quick(data):
            return True
        raw += data  # (a bytearray until done)
        if 0 < len(raw) <= 5 and self._next == 0:
            # Judge the first bytes as soon as they come: a client speaking
            # another protocol is told apart without waiting for more.
            _checkRecordStart(bytes(raw))
        while True:
            start = self._next
            if len(raw) - start < 5:
                break
            _checkRecordHeader(raw, start)
            end = start + 5 + ((raw[start + 3] << 8) | raw[start + 4])
            if len(raw) < end:
                break
            self._message += raw[start + 5 : end]
            self._next = end
            if self._complete():
                return True
        if len(raw) > self.maxBytes:
            raise ClientHelloError(
                "oversized", "no complete ClientHello in %d bytes" % (self.maxBytes,)
            )
        return False

    def _quick(self, data: bytes) -> bool:
        """
        Parse a first read that holds a whole record with the whole
        ClientHello in place.

        @return: whether it did (else the read is taken the long way,
            which judges it the same).
        """
        if data[0] != _HANDSHAKE or data[1] != 3 or data[5] != _CLIENT_HELLO:
            return False
        record = (data[3] << 8) | data[4]
        length = (data[6] << 16) | (data[7] << 8) | data[8]
        if (
            record == 0
            or record > TLS_RECORD_MAX
            or len(data) < 5 + record
            or 4 + length > record
            or 4 + length > self.maxBytes
        ):
            return False
        self.serverName = _serverName(data, 9, 9 + length)
        self._raw = data
        self.done = True
        return True

    def _complete(self) -> bool:
        """
        Parse the handshake message once it is all there.
        """
        message = self._message
        if len(message) < 4:
            return False
        if message[0] != _CLIENT_HELLO:
            raise ClientHelloError("malformed", "handshake message %d, not a ClientHello" % (
                message[0],))
        length = (message[1] << 16) | (message[2] << 8) | message[3]
        if 4 + length > self.maxBytes:
            raise ClientHelloError(
                "oversized", "a ClientHello of %d bytes (at most %d)" % (length, self.maxBytes)
            )
        if len(message) < 4 + length:
            return False
        self.serverName = _serverName(bytes(message), 4, 4 + length)
        self._raw = bytes(self._raw)
        self.done = True
        return True


def _checkRecordStart(first: bytes) -> None:
    """
    Refuse at once first bytes that no TLS handshake record starts with.
    """
    if first[0] != _HANDSHAKE:
        raise ClientHelloError("not-tls", "first byte 0x%02x" % (first[0],))
    if len(first) > 1 and first[1] != 3:
        raise ClientHelloError("not-tls", "record version %d" % (first[1],))


def _checkRecordHeader(raw: bytes | bytearray, start: int) -> None:
    """
    Refuse a record header that is not a handshake record's.
    """
    if raw[start] != _HANDSHAKE:
        raise ClientHelloError(
            "not-tls" if start == 0 else "malformed",
            "record of content type %d, not a handshake" % (raw[start],),
        )
    if raw[start + 1] != 3:
        raise ClientHelloError(
            "not-tls" if start == 0 else "malformed",
            "record version %d.%d" % (raw[start + 1], raw[start + 2]),
        )
    length = (raw[start + 3] << 8) | raw[start + 4]
    if length == 0 or length > TLS_RECORD_MAX:
        raise ClientHelloError("malformed", "record length %d" % (length,))


_unpackPair = struct.Struct(">HH").unpack_from


def _serverName(data: bytes, pos: int, size: int) -> str | None:
    """
    The host name of a ClientHello's C{server_name} extension.

    Only the lengths are walked: each extension is skipped by its length,
    and only the server name's body is looked into.

    @param data: bytes holding the ClientHello's body (after its 4-byte
        header) from C{pos} to C{size}.
    @param pos: where the body starts.
    @param size: where it ends.
    @return: the name, lowercased, without a final dot; L{None} without
        the extension.
    @raise ClientHelloError: C{"malformed"}.
    """
    # legacy_version (2), random (32), legacy_session_id (1 + up to 32)
    pos += 34
    if size < pos + 1:
        raise ClientHelloError("malformed", "ClientHello too short")
    sessionLength = data[pos]
    if sessionLength > 32:
        raise ClientHelloError("malformed", "session id of %d bytes" % (sessionLength,))
    pos += 1 + sessionLength
    # (_length16, inline: once per connection routed by SNI)
    if pos + 2 > size:
        raise ClientHelloError("malformed", "cipher suites past the end")
    suites = (data[pos] << 8) | data[pos + 1]
    if pos + 2 + suites > size:
        raise ClientHelloError("malformed", "cipher suites past the end")
    if suites == 0 or suites % 2:
        raise ClientHelloError("malformed", "cipher suites of %d bytes" % (suites,))
    pos += 2 + suites
    if pos >= size:
        raise ClientHelloError("malformed", "no compression methods")
    methods = data[pos]
    if methods == 0:
        raise ClientHelloError("malformed", "no compression methods")
    pos += 1 + methods
    if pos > size:
        raise ClientHelloError("malformed", "compression methods past the end")
    if pos == size:
        # No extensions at all (TLS 1.2 and before allow it).
        return None
    # (_length16, inline)
    if pos + 2 > size:
        raise ClientHelloError("malformed", "extensions past the end")
    extensions = (data[pos] << 8) | data[pos + 1]
    if pos + 2 + extensions > size:
        raise ClientHelloError("malformed", "extensions past the end")
    pos += 2
    if pos + extensions != size:
        raise ClientHelloError("malformed", "extensions do not fill the ClientHello")
    kinds = []
    found = -1
    # Checked once, before the loop: from there on each extension header
    # has its 4 bytes or is the last one, truncated (found after it).
    last = size - 4
    while pos <= last:
        kind, length = _unpackPair(data, pos)
        pos += 4 + length
        if kind == _SERVER_NAME:
            found = pos - length
        kinds.append(kind)
    if pos != size:
        if pos < size:
            raise ClientHelloError("malformed", "truncated extension")
        raise ClientHelloError("malformed", "extension %d past the end" % (kinds[-1],))
    if len(kinds) != len(set(kinds)):
        raise ClientHelloError("malformed", "an extension twice")
    if found < 0:
        return None
    return _hostName(data, found, found + ((data[found - 2] << 8) | data[found - 1]))


def _hostName(data: bytes, start: int, size: int) -> str | None:
    """
    The host name of a C{server_name} extension's body (RFC 6066, 3),
    from C{start} to C{size} in C{data}.
    """
    if size - start < 2 or (data[start] << 8) | data[start + 1] != size - start - 2:
        raise ClientHelloError("malformed", "server_name list length")
    pos = start + 2
    name = None
    while pos < size:
        if size - pos < 3:
            raise ClientHelloError("malformed", "truncated server name")
        kind = data[pos]
        length = (data[pos + 1] << 8) | data[pos + 2]
        pos += 3
        if length == 0 or pos + length > size:
            raise ClientHelloError("malformed", "server name length %d" % (length,))
        if kind == _HOST_NAME:
            if name is not None:
                raise ClientHelloError("malformed", "two host names")
            name = checkServerName(data[pos : pos + length])
        pos += length
    return name


def checkServerName(value: bytes) -> str:
    """
    A server name as a client sends it by SNI, as the router sees it:
    lowercased, without a final dot.

    @raise ClientHelloError: C{"malformed"}, when it is not a host name.
    """
    if len(value) > 254 or not _HOST.fullmatch(value):
        raise ClientHelloError("malformed", "server name %r is not a host name" % (value[:64],))
    return value.decode("ascii").lower().rstrip(".")
