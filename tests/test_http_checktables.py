"""
The character checks of L{checkHead} by translation tables (a value whose
translation is itself has only allowed bytes): every byte, at every place,
is judged as the allowed sets say, and values that are not plain C{bytes}
are judged the same way.
"""

from twisted.trial.unittest import SynchronousTestCase

from meshproxy.config import parseConfig
from meshproxy.http.checks import _HOST_OK, _TARGET_OK, checkHead
from meshproxy.http.message import ProxyError, Request

from .test_http_server import CONFIG


class _Bytes(bytes):
    """
    A C{bytes} subclass: its translation is never the value itself.
    """


class CharacterTableTests(SynchronousTestCase):
    """
    Each of the 256 byte values in a target, a Host and a field value.
    """

    def setUp(self) -> None:
        self.settings = parseConfig(CONFIG).routers[0].server

    def _verdict(self, target: bytes, host: bytes, value: bytes) -> str | None:
        request = Request(b"GET", target, "1.1", [(b"Host", host), (b"X-Note", value)])
        try:
            checkHead(request, self.settings)
        except ProxyError as e:
            return e.reason
        return None

    def test_target(self) -> None:
        """
        A target byte outside RFC 3986's set is a 400 C{bad-request},
        first, last or in the middle; every allowed one passes.
        """
        for c in range(256):
            byte = bytes([c])
            expected = None if c in _TARGET_OK else "bad-request"
            for target in (b"/" + byte, b"/a" + byte + b"b", b"/" + byte * 3):
                self.assertEqual(self._verdict(target, b"h", b"v"), expected, target)

    def test_host(self) -> None:
        """
        A Host byte outside its set is a 400 C{bad-host}, wherever it is
        (C{bad-header} for CR, LF and NUL, refused in any field value
        first); every allowed one passes, alone or among others.
        """
        for c in range(256):
            byte = bytes([c])
            if c in (0x0D, 0x0A, 0x00):
                expected: str | None = "bad-header"
            else:
                expected = None if c in _HOST_OK else "bad-host"
            for host in (byte, byte + b"h", b"h" + byte, b"a" + byte + b"b"):
                self.assertEqual(self._verdict(b"/", host, b"v"), expected, host)

    def test_hostLength(self) -> None:
        """
        A Host longer than MAX_HOST_LENGTH bytes is a 400 C{bad-host}; one
        of that length passes.
        """
        from meshproxy.http.checks import MAX_HOST_LENGTH

        self.assertIsNone(self._verdict(b"/", b"h" * MAX_HOST_LENGTH, b"v"))
        self.assertEqual(self._verdict(b"/", b"h" * (MAX_HOST_LENGTH + 1), b"v"), "bad-host")

    def test_fieldValue(self) -> None:
        """
        A field value with CR, LF or NUL anywhere is a 400 C{bad-header};
        every other byte passes (empty values too).
        """
        self.assertIsNone(self._verdict(b"/", b"h", b""))
        for c in range(256):
            byte = bytes([c])
            expected = "bad-header" if c in (0x0D, 0x0A, 0x00) else None
            for value in (byte, byte + b"v", b"v" + byte, b"ab" + byte + b"cd"):
                self.assertEqual(self._verdict(b"/", b"h", value), expected, value)

    def test_notPlainBytes(self) -> None:
        """
        Values of a C{bytes} subclass (whose translation is a new object even
        when nothing changed) are judged by their bytes: good ones pass, bad
        ones are refused.
        """
        self.assertIsNone(self._verdict(_Bytes(b"/a"), _Bytes(b"h"), _Bytes(b"v")))
        self.assertEqual(self._verdict(_Bytes(b"/a b"), b"h", b"v"), "bad-request")
        self.assertEqual(self._verdict(b"/", _Bytes(b"h h"), b"v"), "bad-host")
        self.assertEqual(self._verdict(b"/", b"h", _Bytes(b"v\r")), "bad-header")
