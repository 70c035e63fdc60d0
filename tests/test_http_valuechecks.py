"""
Character checks on the request path that avoid C{bytes in bytes} (which
formats and discards a TypeError each time): field values with CR, LF or
NUL are refused, and the C{Forwarded} element quotes IPv6 peers.
"""

from twisted.trial.unittest import SynchronousTestCase

from meshproxy.config import parseConfig
from meshproxy.http.checks import checkHead
from meshproxy.http.message import ProxyError, Request
from meshproxy.http.rewrite import _forwardedElement

from .test_http_server import CONFIG


class FieldValueTests(SynchronousTestCase):
    """
    L{checkHead} and the characters of field values.
    """

    def setUp(self) -> None:
        self.settings = parseConfig(CONFIG).routers[0].server

    def _request(self, value: bytes) -> Request:
        return Request(b"GET", b"/", "1.1", [(b"Host", b"hello"), (b"X-Note", value)])

    def test_controlCharactersRefused(self) -> None:
        """
        A field value holding CR, LF or NUL, anywhere, is a 400
        C{bad-header}.
        """
        for bad in (b"a\rb", b"\nab", b"ab\x00", b"\r\n"):
            error = self.assertRaises(ProxyError, checkHead, self._request(bad), self.settings)
            self.assertEqual((error.status, error.reason), (400, "bad-header"), bad)

    def test_otherCharactersAccepted(self) -> None:
        """
        Other values, tabs and obs-text included, pass.
        """
        for good in (b"", b"plain", b"a\tb", b"caf\xc3\xa9", b"r n 0"):
            checkHead(self._request(good), self.settings)


class ForwardedElementTests(SynchronousTestCase):
    """
    The C{for=} of the C{Forwarded} element meshproxy adds.
    """

    def test_ipv6Quoted(self) -> None:
        """
        An IPv6 peer (it has colons) is bracketed and quoted (RFC 7239 6).
        """
        self.assertEqual(_forwardedElement(b"::1", b"http"), b'for="[::1]";proto=http')

    def test_ipv4Bare(self) -> None:
        """
        An IPv4 peer is written as it is.
        """
        self.assertEqual(_forwardedElement(b"10.0.0.7", b"https"), b"for=10.0.0.7;proto=https")
