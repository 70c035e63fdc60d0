"""
The PROXY protocol (versions 1 and 2, as HAProxy specifies it): the header
a load balancer sends first on a connection to say which client it carries,
read from the peers that are trusted to send it, and sent to upstreams that
want it.

Parsing is strict and bounded: a version 1 header is one line of at most
107 bytes; a version 2 header is 16 bytes and at most L{MAX_V2_LENGTH}
more, its addresses and TLVs (nested SSL sub-TLVs included) filling it
exactly. L{parseHeader} is given what was read so far and answers that it
needs more, or the header and its length, or raises L{ProxyProtocolError}.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from collections.abc import Iterable, Sequence

import attrs
from twisted.internet.address import IPv4Address, IPv6Address

__all__ = [
    "MAX_V1_LENGTH",
    "MAX_V2_LENGTH",
    "ProxyHeader",
    "ProxyProtocolError",
    "TrustedSenders",
    "formatHeader",
    "looksLikeHeader",
    "parseHeader",
]

#: The longest version 1 header, CRLF included.
MAX_V1_LENGTH = 107

#: The most bytes a version 2 header may carry after its 16-byte start
#: (addresses and TLVs): a bound of meshproxy's, well above what load
#: balancers send.
MAX_V2_LENGTH = 4096

V1_PREFIX = b"PROXY "
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"

_V2_START = struct.Struct("!12sBBH")
_V2_INET = struct.Struct("!4s4sHH")
_V2_INET6 = struct.Struct("!16s16sHH")
_TLV = struct.Struct("!BH")

_LOCAL = 0x0
_PROXY = 0x1
_AF_UNSPEC, _AF_INET, _AF_INET6, _AF_UNIX = 0x0, 0x1, 0x2, 0x3
_STREAM = 0x1
_UNIX_LENGTH = 216

# TLV types (HAProxy's proxy-protocol.txt, 2.2) whose lengths are fixed or
# bounded, and the one with sub-TLVs.
_PP2_TYPE_CRC32C = 0x03
_PP2_TYPE_UNIQUE_ID = 0x05
_PP2_TYPE_SSL = 0x20
_SSL_FIXED = 5

_Address = IPv4Address | IPv6Address


class ProxyProtocolError(Exception):
    """
    A PROXY header that is not valid.

    @ivar detail: what was wrong, in words, for the log.
    """

    def __init__(self, detail: str) -> None:
        Exception.__init__(self, detail)
        self.detail = detail


@attrs.frozen
class ProxyHeader:
    """
    A PROXY header as read.

    @ivar version: 1 or 2.
    @ivar source: the client's address, or L{None} when the header gives
        none (version 1 C{UNKNOWN}, version 2 C{LOCAL} or an unspecified
        or UNIX family): the connection's own peer stands.
    @ivar destination: the address the client connected to, or L{None}
        likewise.
    @ivar tlvs: the version 2 TLVs, C{(type, value)} in order.
    @ivar length: the bytes the header took.
    """

    version: int
    source: _Address | None
    destination: _Address | None
    tlvs: tuple[tuple[int, bytes], ...] = ()
    length: int = 0


def looksLikeHeader(data: bytes) -> bool | None:
    """
    Whether C{data}, the first bytes of a connection, start a PROXY header.

    @return: C{True} when they do, C{False} when they cannot, L{None} when
        too few bytes were read to tell (a prefix of a signature).
    """
    for signature in (V1_PREFIX, V2_SIGNATURE):
        n = min(len(data), len(signature))
        if data[:n] == signature[:n]:
            return True if n == len(signature) else None
    return False


def parseHeader(data: bytes) -> ProxyHeader | None:
    """
    Read the PROXY header at the start of C{data}.

    @param data: the bytes read so far.
    @return: the header (its C{length} says where the client's bytes
        start), or L{None} when more bytes are needed.
    @raise ProxyProtocolError: when C{data} does not start with a valid
        header (or would not, whatever followed).
    """
    started = looksLikeHeader(data)
    if started is None:
        return None
    if not started:
        raise ProxyProtocolError("no PROXY protocol signature")
    if data[:1] == b"P":
        return _parseV1(data)
    return _parseV2(data)


def _parseV1(data: bytes) -> ProxyHeader | None:
    end = data.find(b"\r\n", 0, MAX_V1_LENGTH)
    if end < 0:
        if len(data) >= MAX_V1_LENGTH:
            raise ProxyProtocolError("a version 1 header longer than %d bytes" % MAX_V1_LENGTH)
        if b"\n" in data or b"\r" in data[:-1]:
            raise ProxyProtocolError("a version 1 header not ended by CRLF")
        return None
    line = data[:end]
    parts = line.split(b" ")
    if len(parts) < 2:
        raise ProxyProtocolError("a version 1 header without a protocol")
    family = parts[1]
    if family == b"UNKNOWN":
        # Whatever follows UNKNOWN is to be ignored (the spec says so).
        return ProxyHeader(1, None, None, (), end + 2)
    if family not in (b"TCP4", b"TCP6"):
        raise ProxyProtocolError("unknown version 1 protocol %r" % (family[:16],))
    if len(parts) != 6:
        raise ProxyProtocolError("a version 1 header needs 4 fields after %s" % (
            family.decode("ascii"),))
    kind = IPv4Address if family == b"TCP4" else IPv6Address
    version = 4 if family == b"TCP4" else 6
    source = _v1Address(parts[2], parts[4], kind, version)
    destination = _v1Address(parts[3], parts[5], kind, version)
    return ProxyHeader(1, source, destination, (), end + 2)


def _v1Address(host: bytes, port: bytes, kind: type, version: int) -> _Address:
    try:
        text = host.decode("ascii")
        address = ipaddress.ip_address(text)
    except (UnicodeDecodeError, ValueError):
        raise ProxyProtocolError("not an IP address: %r" % (host[:48],)) from None
    if address.version != version or "%" in text:
        raise ProxyProtocolError("not an IPv%d address: %r" % (version, host[:48]))
    if not (port.isdigit() and len(port) <= 5 and int(port) <= 65535):
        raise ProxyProtocolError("not a port: %r" % (port[:8],))
    if len(port) > 1 and port[:1] == b"0":
        raise ProxyProtocolError("a port with a leading zero: %r" % (port,))
    result: _Address = kind("TCP", str(address), int(port))
    return result


def _parseV2(data: bytes) -> ProxyHeader | None:
    if len(data) < 16:
        return None
    _, versionCommand, familyProtocol, length = _V2_START.unpack_from(data)
    if versionCommand >> 4 != 2:
        raise ProxyProtocolError("version 2 signature with version %d" % (versionCommand >> 4,))
    command = versionCommand & 0xF
    if command not in (_LOCAL, _PROXY):
        raise ProxyProtocolError("unknown version 2 command %d" % (command,))
    if length > MAX_V2_LENGTH:
        raise ProxyProtocolError("a version 2 header of %d bytes (at most %d)" % (
            length, MAX_V2_LENGTH))
    total = 16 + length
    if len(data) < total:
        return None
    if command == _LOCAL:
        # The proxy's own connection (a health check): the addresses and
        # TLVs are to be ignored, the connection's own endpoints stand.
        return ProxyHeader(2, None, None, (), total)
    family, protocol = familyProtocol >> 4, familyProtocol & 0xF
    body = memoryview(data)[16:total]
    if family == _AF_UNSPEC:
        if protocol != 0:
            raise ProxyProtocolError("an unspecified family with protocol %d" % (protocol,))
        return ProxyHeader(2, None, None, (), total)
    if protocol != _STREAM:
        raise ProxyProtocolError("version 2 protocol %d (only stream connections)" % (
            protocol,))
    source: _Address | None
    destination: _Address | None
    if family == _AF_INET:
        size = _V2_INET.size
        if length < size:
            raise ProxyProtocolError("IPv4 addresses of %d bytes" % (length,))
        s, d, sp, dp = _V2_INET.unpack_from(body)
        source = IPv4Address("TCP", socket.inet_ntop(socket.AF_INET, s), sp)
        destination = IPv4Address("TCP", socket.inet_ntop(socket.AF_INET, d), dp)
    elif family == _AF_INET6:
        size = _V2_INET6.size
        if length < size:
            raise ProxyProtocolError("IPv6 addresses of %d bytes" % (length,))
        s, d, sp, dp = _V2_INET6.unpack_from(body)
        source = IPv6Address("TCP", socket.inet_ntop(socket.AF_INET6, s), sp)
        destination = IPv6Address("TCP", socket.inet_ntop(socket.AF_INET6, d), dp)
    elif family == _AF_UNIX:
        size = _UNIX_LENGTH
        if length < size:
            raise ProxyProtocolError("UNIX addresses of %d bytes" % (length,))
        # A client on a UNIX socket has no IP address: the connection's own
        # peer stands.
        source = destination = None
    else:
        raise ProxyProtocolError("unknown version 2 address family %d" % (family,))
    tlvs = tuple(_tlvs(body[size:]))
    return ProxyHeader(2, source, destination, tlvs, total)


def _tlvs(data: memoryview) -> Iterable[tuple[int, bytes]]:
    """
    The TLVs filling C{data}, checked.
    """
    pos = 0
    size = len(data)
    while pos < size:
        if size - pos < 3:
            raise ProxyProtocolError("a truncated TLV")
        kind, length = _TLV.unpack_from(data, pos)
        pos += 3
        if pos + length > size:
            raise ProxyProtocolError("TLV 0x%02x past the end of the header" % (kind,))
        value = bytes(data[pos : pos + length])
        pos += length
        if kind == _PP2_TYPE_CRC32C and length != 4:
            raise ProxyProtocolError("a CRC32C TLV of %d bytes" % (length,))
        if kind == _PP2_TYPE_UNIQUE_ID and length > 128:
            raise ProxyProtocolError("a unique ID TLV of %d bytes" % (length,))
        if kind == _PP2_TYPE_SSL:
            if length < _SSL_FIXED:
                raise ProxyProtocolError("an SSL TLV of %d bytes" % (length,))
            # Its sub-TLVs follow the client flags (1) and verify (4).
            for _ in _tlvs(memoryview(value)[_SSL_FIXED:]):
                pass
        yield kind, value


def formatHeader(
    version: int,
    source: _Address | None,
    destination: _Address | None,
    tlvs: Sequence[tuple[int, bytes]] = (),
) -> bytes:
    """
    A PROXY header to send first to an upstream.

    @param version: 1 or 2.
    @param source: the client's address, or L{None} when it has none (a
        UNIX socket): version 1 says C{UNKNOWN}, version 2 C{LOCAL}.
    @param destination: the address the client connected to.
    @param tlvs: version 2 TLVs to add, C{(type, value)}.
    @return: the header's bytes.
    """
    pair = _pair(source, destination)
    if version == 1:
        if pair is None:
            return b"PROXY UNKNOWN\r\n"
        family, src, dst = pair
        return b"PROXY %s %s %s %d %d\r\n" % (
            b"TCP4" if family == 4 else b"TCP6",
            src.host.encode("ascii"),
            dst.host.encode("ascii"),
            src.port,
            dst.port,
        )
    if version != 2:
        raise ValueError("PROXY protocol version 1 or 2, got %r" % (version,))
    extra = b"".join(_TLV.pack(kind, len(value)) + value for kind, value in tlvs)
    if pair is None:
        return _V2_START.pack(V2_SIGNATURE, 0x20 | _LOCAL, 0, len(extra)) + extra
    family, src, dst = pair
    if family == 4:
        body = _V2_INET.pack(
            socket.inet_pton(socket.AF_INET, src.host),
            socket.inet_pton(socket.AF_INET, dst.host),
            src.port,
            dst.port,
        )
        familyProtocol = (_AF_INET << 4) | _STREAM
    else:
        body = _V2_INET6.pack(
            socket.inet_pton(socket.AF_INET6, src.host),
            socket.inet_pton(socket.AF_INET6, dst.host),
            src.port,
            dst.port,
        )
        familyProtocol = (_AF_INET6 << 4) | _STREAM
    body += extra
    return _V2_START.pack(V2_SIGNATURE, 0x20 | _PROXY, familyProtocol, len(body)) + body


def _pair(
    source: _Address | None, destination: _Address | None
) -> tuple[int, _Address, _Address] | None:
    """
    Both addresses in one family (an IPv4 one mapped into IPv6 when the
    other is IPv6), or L{None} when either is not an IP address.
    """
    if source is None or destination is None:
        return None
    try:
        s = ipaddress.ip_address(source.host)
        d = ipaddress.ip_address(destination.host)
    except (AttributeError, ValueError):
        return None
    if s.version == d.version:
        return s.version, source, destination
    return (
        6,
        IPv6Address("TCP", str(_asV6(s)), source.port),
        IPv6Address("TCP", str(_asV6(d)), destination.port),
    )


def _asV6(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> ipaddress.IPv6Address:
    if address.version == 6:
        return address
    return ipaddress.IPv6Address("::ffff:" + str(address))


class TrustedSenders:
    """
    The peers whose PROXY headers are read (C{proxyProtocol.from}).

    @ivar networks: the networks, as C{ipaddress} networks.
    """

    __slots__ = ("networks", "_cache")

    def __init__(self, networks: Iterable[str]) -> None:
        """
        @param networks: networks as text (C{"10.0.0.0/8"}, C{"::1/128"}).
        """
        self.networks = tuple(ipaddress.ip_network(n, strict=False) for n in networks)
        # Peers are few (the load balancers): their answers are kept.
        self._cache: dict[str, bool] = {}

    def trusts(self, host: str | None) -> bool:
        """
        Whether a peer at C{host} (an IP address as text) may send a header.
        """
        if host is None:
            return False
        known = self._cache.get(host)
        if known is not None:
            return known
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            answer = False
        else:
            mapped = getattr(address, "ipv4_mapped", None)
            answer = any(
                address in network or (mapped is not None and mapped in network)
                for network in self.networks
            )
        if len(self._cache) < 1024:
            self._cache[host] = answer
        return answer
