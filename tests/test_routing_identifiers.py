"""
Tests for L{meshproxy.routing.identifiers}.
"""

from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from meshproxy.routing.identifiers import (
    HeaderIdentifier,
    HostIdentifier,
    IdentificationError,
    IIdentifier,
    PathIdentifier,
)
from meshproxy.routing.path import Path

SVC = Path.read("/svc")


class FakeRequest:
    """
    The request interface identifiers rely on: C{method}, C{target},
    C{header(lowercaseName)}.
    """

    def __init__(self, target=b"/", method=b"GET", headers=None):
        self.method = method
        self.target = target
        self.headers = headers or {}
        self.asked = []

    def header(self, name):
        self.asked.append(name)
        return self.headers.get(name)


def host(value, target=b"/", method=b"GET"):
    headers = {} if value is None else {b"host": value}
    return FakeRequest(target, method, headers)


class InterfaceTests(SynchronousTestCase):
    """
    Every identifier provides L{IIdentifier}.
    """

    def test_provides(self):
        for identifier in [HostIdentifier(), PathIdentifier(), HeaderIdentifier(SVC, "x-svc")]:
            self.assertTrue(verifyObject(IIdentifier, identifier))

    def test_defaultPrefixIsSvc(self):
        self.assertEqual(HostIdentifier().prefix, SVC)
        self.assertEqual(PathIdentifier().prefix, SVC)

    def test_prefixMustBeAPath(self):
        self.assertRaises(TypeError, HostIdentifier, "/svc")
        self.assertRaises(TypeError, PathIdentifier, "/svc")
        self.assertRaises(TypeError, HeaderIdentifier, "/svc", "x-svc")

    def test_errorHasReason(self):
        error = IdentificationError("no Host header")
        self.assertEqual(error.reason, "no Host header")
        self.assertEqual(str(error), "no Host header")


class HostIdentifierTests(SynchronousTestCase):
    """
    L{HostIdentifier} names requests by host.
    """

    def identify(self, request, prefix=SVC):
        return HostIdentifier(prefix).identify(request)

    def assertFails(self, request, reason):
        error = self.assertRaises(IdentificationError, self.identify, request)
        self.assertEqual(error.reason, reason)
        return error

    def test_host(self):
        self.assertEqual(self.identify(host(b"users")), Path.read("/svc/users"))

    def test_lowercased(self):
        self.assertEqual(
            self.identify(host(b"Users.Example.COM")), Path.read("/svc/users.example.com")
        )

    def test_portStripped(self):
        self.assertEqual(self.identify(host(b"users:8080")), Path.read("/svc/users"))
        self.assertEqual(self.identify(host(b"users:")), Path.read("/svc/users"))

    def test_ipv4(self):
        self.assertEqual(self.identify(host(b"10.0.0.1:80")), Path.read("/svc/10.0.0.1"))

    def test_ipv6LosesBracketsAndPort(self):
        self.assertEqual(self.identify(host(b"[::1]:8080")), Path.read("/svc/::1"))
        self.assertEqual(self.identify(host(b"[FE80::1]")), Path.read("/svc/fe80::1"))

    def test_underscoreAndTrailingDot(self):
        self.assertEqual(self.identify(host(b"my_svc.local.")), Path.read("/svc/my_svc.local."))

    def test_customPrefix(self):
        self.assertEqual(
            self.identify(host(b"users"), Path.read("/http/1.1")),
            Path.read("/http/1.1/users"),
        )
        self.assertEqual(self.identify(host(b"users"), Path.empty), Path.read("/users"))

    def test_absoluteFormWinsOverHostHeader(self):
        request = host(b"other", b"http://Users:8080/p?q=1")
        self.assertEqual(self.identify(request), Path.read("/svc/users"))
        self.assertEqual(request.asked, [])

    def test_absoluteFormWithoutPath(self):
        self.assertEqual(self.identify(host(None, b"http://users")), Path.read("/svc/users"))
        self.assertEqual(self.identify(host(None, b"http://users?x")), Path.read("/svc/users"))

    def test_absoluteFormDropsUserinfo(self):
        self.assertEqual(
            self.identify(host(None, b"http://me:secret@users:81/")), Path.read("/svc/users")
        )

    def test_absoluteFormIPv6(self):
        self.assertEqual(self.identify(host(None, b"https://[::1]:8443/x")), Path.read("/svc/::1"))

    def test_absoluteFormEmptyAuthority(self):
        self.assertFails(host(b"users", b"http:///p"), "empty request-target authority")

    def test_connectUsesTarget(self):
        request = host(b"other", b"users:443", b"CONNECT")
        self.assertEqual(self.identify(request), Path.read("/svc/users"))

    def test_asteriskFormUsesHostHeader(self):
        self.assertEqual(self.identify(host(b"users", b"*", b"OPTIONS")), Path.read("/svc/users"))

    def test_pathLookingLikeAURLIsNotAbsoluteForm(self):
        self.assertEqual(
            self.identify(host(b"users", b"/redirect?to=http://evil")), Path.read("/svc/users")
        )

    def test_missingHost(self):
        self.assertFails(host(None), "no Host header")

    def test_emptyHost(self):
        self.assertFails(host(b""), "empty Host header")

    def test_invalidHosts(self):
        for value in [b"users/v2", b"a b", b"users:http", b"users:80:81", b"::1",
                      b"[::1", b"[]", b"[zz::1]", b":8080", b".", b"..", b"a..b",
                      b".users", b"caf\xc3\xa9", b"users\r\nx: y", b"[::1]x",
                      b"{users}", b"users%2f"]:
            error = self.assertRaises(IdentificationError, self.identify, host(value))
            self.assertTrue(error.reason.startswith("invalid Host header "), value)

    def test_reasonEscapesAndTruncatesTheValue(self):
        error = self.assertFails(host(b"a\r\nb"), "invalid Host header b'a\\r\\nb'")
        self.assertNotIn("\r", error.reason)
        error = self.assertRaises(IdentificationError, self.identify, host(b"/" * 1000))
        self.assertLess(len(error.reason), 120)


class PathIdentifierTests(SynchronousTestCase):
    """
    L{PathIdentifier} names requests by the first segments of the path.
    """

    def identify(self, target, segments=1, prefix=SVC):
        return PathIdentifier(prefix, segments).identify(FakeRequest(target))

    def assertFails(self, target, reason, segments=1):
        error = self.assertRaises(IdentificationError, self.identify, target, segments)
        self.assertEqual(error.reason, reason)

    def test_firstSegment(self):
        self.assertEqual(self.identify(b"/users/42"), Path.read("/svc/users"))

    def test_severalSegments(self):
        self.assertEqual(self.identify(b"/users/v2/42", 2), Path.read("/svc/users/v2"))
        self.assertEqual(self.identify(b"/users/v2", 2), Path.read("/svc/users/v2"))

    def test_queryAndFragmentIgnored(self):
        self.assertEqual(self.identify(b"/users?x=/a/b", 1), Path.read("/svc/users"))
        self.assertEqual(self.identify(b"/users/v2?x=1", 2), Path.read("/svc/users/v2"))
        self.assertEqual(self.identify(b"/users#frag", 1), Path.read("/svc/users"))
        self.assertFails(b"/users?/v2", "request path has fewer than 2 segments", 2)

    def test_emptySegmentsIgnored(self):
        self.assertEqual(self.identify(b"//users///v2/", 2), Path.read("/svc/users/v2"))

    def test_tooFewSegments(self):
        self.assertFails(b"/", "request path has fewer than 1 segment")
        self.assertFails(b"/users", "request path has fewer than 2 segments", 2)
        self.assertFails(b"/?users", "request path has fewer than 1 segment")

    def test_absoluteForm(self):
        self.assertEqual(self.identify(b"http://host:80/users/1"), Path.read("/svc/users"))
        self.assertFails(b"http://host:80", "request path has fewer than 1 segment")
        self.assertFails(b"http://host?x=/users", "request path has fewer than 1 segment")

    def test_noPath(self):
        self.assertFails(b"*", "request-target b'*' has no path")
        self.assertFails(b"host:443", "request-target b'host:443' has no path")

    def test_caseKeptAndNoPercentDecoding(self):
        self.assertEqual(self.identify(b"/Users%2Fx/1"), Path.read("/svc/Users%2Fx"))

    def test_invalidSegments(self):
        for target in [b"/~user/x", b"/a+b", b"/a@b", b"/caf\xc3\xa9", b"/a=b", b"/(x)"]:
            error = self.assertRaises(IdentificationError, self.identify, target)
            self.assertIn("cannot be part of a name", error.reason)

    def test_onlyTheNamedSegmentsAreChecked(self):
        self.assertEqual(self.identify(b"/users/~me/a+b"), Path.read("/svc/users"))

    def test_dotSegmentsRejected(self):
        for target in [b"/../etc", b"/./x", b"/users/..", b"/users/."]:
            self.assertRaises(IdentificationError, self.identify, target, 2)

    def test_segmentsMustBePositive(self):
        for bad in (0, -1, 1.5, "1", True):
            self.assertRaises(ValueError, PathIdentifier, SVC, bad)


class HeaderIdentifierTests(SynchronousTestCase):
    """
    L{HeaderIdentifier} names requests by a header's value.
    """

    def identify(self, value, name="x-svc", prefix=SVC):
        headers = {} if value is None else {b"x-svc": value}
        return HeaderIdentifier(prefix, name).identify(FakeRequest(b"/", b"GET", headers))

    def assertFails(self, value, reason):
        error = self.assertRaises(IdentificationError, self.identify, value)
        self.assertEqual(error.reason, reason)

    def test_singleName(self):
        self.assertEqual(self.identify(b"users"), Path.read("/svc/users"))

    def test_path(self):
        self.assertEqual(self.identify(b"/users/v2"), Path.read("/svc/users/v2"))
        self.assertEqual(self.identify(b"users/v2"), Path.read("/svc/users/v2"))

    def test_surroundingWhitespaceStripped(self):
        self.assertEqual(self.identify(b" \tusers "), Path.read("/svc/users"))

    def test_nameIsLowercasedAndMayBeBytes(self):
        self.assertEqual(HeaderIdentifier(SVC, "X-Svc").name, b"x-svc")
        self.assertEqual(self.identify(b"users", name=b"X-SVC"), Path.read("/svc/users"))

    def test_badNames(self):
        self.assertRaises(ValueError, HeaderIdentifier, SVC, "")
        self.assertRaises(ValueError, HeaderIdentifier, SVC, None)
        self.assertRaises(UnicodeEncodeError, HeaderIdentifier, SVC, "x-\u00e9")

    def test_missing(self):
        self.assertFails(None, "no x-svc header")

    def test_empty(self):
        self.assertFails(b"", "empty x-svc header")
        self.assertFails(b"  ", "empty x-svc header")

    def test_notAPath(self):
        for value, shown in [(b"/", "b'/'"), (b"//users", "b'//users'"),
                             (b"users/", "b'users/'"), (b"a b", "b'a b'"),
                             (b"caf\xc3\xa9", "b'caf\\xc3\\xa9'"), (b"a\r\nb", "b'a\\r\\nb'"),
                             (b"users?x", "b'users?x'")]:
            self.assertFails(value, f"x-svc header {shown} is not a path")

    def test_dotSegments(self):
        self.assertFails(b"../etc", "x-svc header b'../etc' has a . or .. segment")
        self.assertFails(b"/users/.", "x-svc header b'/users/.' has a . or .. segment")

    def test_dotsInsideSegmentsAreFine(self):
        self.assertEqual(self.identify(b"users.v2/..x"), Path.read("/svc/users.v2/..x"))
