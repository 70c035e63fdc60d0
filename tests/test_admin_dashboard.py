"""
Tests for the dashboard's files (L{meshproxy.admin.static.loadStatic}, C{GET /}
and C{GET /static/<name>}), through L{treq.testing.StubTreq}: the content
types and headers they are served with, that nothing but those files can be
reached, and what the page may and may not contain under its policy.

The page running in a real browser is tested in
L{tests.test_dashboard_browser}.
"""

from __future__ import annotations

import importlib.resources
import os
import re
import sys

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from meshproxy.admin.site import AdminSite
from meshproxy.admin.static import PAGE_POLICY, STATIC_TYPES, loadStatic
from tests.test_admin_api import TOKEN, _APITestMixin

FILES = {
    "index.html": "text/html; charset=utf-8",
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}


def packaged(name: str) -> bytes:
    """
    A file of the dashboard as the installed package holds it.
    """
    return (
        importlib.resources.files("meshproxy.admin").joinpath("static", name).read_bytes()
    )


class LoadStaticTests(SynchronousTestCase):
    """
    L{loadStatic} reads the files of a package's C{static} folder.
    """

    def test_theDashboardsFiles(self) -> None:
        files = loadStatic()
        self.assertEqual(sorted(files), sorted(FILES))
        for name, contentType in FILES.items():
            self.assertEqual(files[name], (contentType.encode("ascii"), packaged(name)))

    def test_onlyKnownKindsOfFilesDirectlyInTheFolder(self) -> None:
        """
        Subfolders, hidden files and files of other kinds are not served,
        whatever their names.
        """
        root = self.mktemp()
        static = os.path.join(root, "fakedash", "static")
        os.makedirs(os.path.join(static, "sub.js"))
        with open(os.path.join(root, "fakedash", "__init__.py"), "w"):
            pass
        for name in ("app.js", "page.html", ".hidden.js", "notes.txt", "README",
                     "run.py", "x.js.bak", "style.CSS"):
            with open(os.path.join(static, name), "wb") as f:
                f.write(name.encode("ascii"))
        with open(os.path.join(static, "sub.js", "inner.js"), "wb") as f:
            f.write(b"inner")
        sys.path.insert(0, os.path.abspath(root))
        self.addCleanup(sys.path.remove, os.path.abspath(root))
        self.addCleanup(sys.modules.pop, "fakedash", None)
        files = loadStatic("fakedash")
        self.assertEqual(sorted(files), ["app.js", "page.html"])
        self.assertEqual(files["app.js"], (STATIC_TYPES[".js"], b"app.js"))


class ServedFilesTests(_APITestMixin, SynchronousTestCase):
    """
    C{/} is C{index.html}; C{/static/<name>} the other files; each with its
    content type, C{nosniff} and the page's policy.
    """

    def assertServed(self, path: str, name: str) -> None:
        response, body = self.request("GET", path)
        self.assertEqual(response.code, 200, path)
        self.assertEqual(self.header(response, "content-type"), FILES[name])
        self.assertEqual(self.header(response, "x-content-type-options"), "nosniff")
        self.assertEqual(self.header(response, "cache-control"), "no-store")
        self.assertEqual(
            self.header(response, "content-security-policy"), PAGE_POLICY.decode("ascii")
        )
        self.assertEqual(body, packaged(name))

    def test_rootIsTheIndex(self) -> None:
        self.assertServed("/", "index.html")

    def test_staticFiles(self) -> None:
        for name in FILES:
            self.assertServed("/static/" + name, name)

    def test_headServesNoBody(self) -> None:
        for path in ("/", "/static/dashboard.js"):
            response, body = self.request("HEAD", path)
            self.assertEqual((response.code, body), (200, b""), path)

    def test_onlyGet(self) -> None:
        for method in ("POST", "PUT", "DELETE"):
            response, _ = self.request(method, "/static/dashboard.js")
            self.assertEqual(response.code, 405, method)

    def test_policy(self) -> None:
        """
        Scripts and styles from the page's own files only (no
        C{'unsafe-inline'}), nothing else loaded, no framing.
        """
        policy = dict(
            (directive.split(" ", 1) + [""])[:2]
            for directive in PAGE_POLICY.decode("ascii").split("; ")
        )
        self.assertEqual(policy, {
            "default-src": "'none'",
            "script-src": "'self'",
            "style-src": "'self'",
            "img-src": "'self'",
            "connect-src": "'self'",
            "frame-ancestors": "'none'",
            "base-uri": "'none'",
            "form-action": "'none'",
        })

    def test_foreignHostRefused(self) -> None:
        for path in ("/", "/static/dashboard.js"):
            response, _ = self.request("GET", path, headers={"Host": "evil.example"})
            self.assertEqual(response.code, 421, path)


class NothingElseTests(_APITestMixin, SynchronousTestCase):
    """
    No other file can be reached under C{/static/}: not a neighbouring
    module, not the checkout, whatever the spelling; and no listing. The
    request targets are sent as raw bytes to the admin site, as a hostile
    client would send them (HTTP client libraries normalise C{..} away).
    """

    def raw(self, target: bytes) -> tuple[int, bytes, bytes]:
        """
        Send C{GET <target>} to the API through its L{AdminSite} on a
        L{StringTransport}.

        @return: the status, the head and the body of the answer.
        """
        site = AdminSite(self.api.app.resource())
        # No idle timeout: nothing may be left on the global reactor.
        site.timeOut = None
        peer = IPv4Address("TCP", "127.0.0.1", 31337)
        channel = site.buildProtocol(peer)
        transport = StringTransport(
            hostAddress=IPv4Address("TCP", "127.0.0.1", 9990), peerAddress=peer
        )
        channel.makeConnection(transport)
        channel.dataReceived(
            b"GET " + target + b" HTTP/1.1\r\nHost: 127.0.0.1:9990\r\nConnection: close\r\n\r\n"
        )
        channel.connectionLost(Failure(ConnectionDone()))
        head, _, body = transport.value().partition(b"\r\n\r\n")
        return int(head.split(b" ", 2)[1]), head, body

    def assertNotFound(self, target: bytes) -> None:
        status, head, body = self.raw(target)
        self.assertEqual(status, 404, f"{target!r}: {head[:200]!r}")
        self.assertIn(b"\r\ncontent-type: application/json", head.lower(), target)
        self.assertIn(b'{"error": "not found"}', body, target)

    def test_rawRequestsReachTheFiles(self) -> None:
        """
        The helper below does reach the files: its 404s mean something.
        """
        status, _, body = self.raw(b"/static/dashboard.css")
        self.assertEqual(status, 200)
        self.assertIn(packaged("dashboard.css"), body)

    def test_unknownNames(self) -> None:
        for name in (b"nope.js", b"dashboard.JS", b"DASHBOARD.js", b"dashboard.js.map",
                     b"api.py", b"__init__.py", b"index", b".", b"%00", b"dashboard.js%00",
                     b"dashboard.js%20", b"%20dashboard.js", b"dashboard.js;x"):
            self.assertNotFound(b"/static/" + name)

    def test_noListing(self) -> None:
        for target in (b"/static", b"/static/", b"/static//", b"/static/./", b"/static/.",
                       b"/static/%2e"):
            self.assertNotFound(target)

    def test_noTraversal(self) -> None:
        for target in (
            b"/static/../api.py",
            b"/static/../../setup.cfg",
            b"/static/../static/../api.py",
            b"/static/..%2fapi.py",
            b"/static/..%2Fapi.py",
            b"/static/%2e%2e/api.py",
            b"/static/%2e%2e%2fapi.py",
            b"/static/%2E%2E%2Fapi.py",
            b"/static/%2e%2e%2f%2e%2e%2fsetup.cfg",
            b"/static/%252e%252e%252fapi.py",
            b"/static/..%5capi.py",
            b"/static/..\\api.py",
            b"/static/.%2fdashboard.js",
            b"/static/%2fetc%2fpasswd",
            b"/static//etc/passwd",
            b"/static/dashboard.js/",
            b"/static/dashboard.js/..",
            b"/static/sub/../dashboard.js/x",
            b"/%2e%2e/api.py",
        ):
            self.assertNotFound(target)

    def test_overlongDotsAreNotDots(self) -> None:
        """
        Overlong UTF-8 for C{.} (C{%c0%ae}) is no UTF-8 at all: Klein
        refuses the path with 400 (and logs its decoding error).
        """
        status, _, body = self.raw(b"/static/%c0%ae%c0%ae/api.py")
        self.assertEqual(status, 400)
        self.assertNotIn(b"import", body)
        self.assertEqual(len(self.flushLoggedErrors(UnicodeDecodeError)), 1)

    def test_traversalNeverServesAFile(self) -> None:
        """
        Whatever the answer to a target with dots, it is never the bytes of
        a file outside the folder.
        """
        outside = [
            importlib.resources.files("meshproxy.admin").joinpath(name).read_bytes()
            for name in ("api.py", "__init__.py", "site.py")
        ]
        for target in (b"/static/../api.py", b"/static/%2e%2e/api.py", b"/%2e%2e/api.py",
                       b"/static/..%2fapi.py", b"/admin/../static/../api.py",
                       b"/static/../site.py", b"/static/../__init__.py"):
            status, _, body = self.raw(target)
            for content in outside:
                if content:
                    self.assertNotIn(content, body, target)


class ProtectedReadsTests(_APITestMixin, SynchronousTestCase):
    """
    With C{protectReads}, the page and its files still need no token: they
    hold no data, and the page asks for the token.
    """

    token = TOKEN
    protectReads = True

    def test_filesNeedNoToken(self) -> None:
        for path in ("/", "/static/dashboard.js", "/static/dashboard.css"):
            response, _ = self.request("GET", path)
            self.assertEqual(response.code, 200, path)

    def test_dataNeedsTheToken(self) -> None:
        for path in ("/admin/state", "/admin/stats"):
            response, _ = self.request("GET", path)
            self.assertEqual(response.code, 401, path)


class PageContentTests(SynchronousTestCase):
    """
    What the page's files contain, as the policy and safety demand.
    """

    def setUp(self) -> None:
        self.page = packaged("index.html").decode("utf-8")
        self.script = packaged("dashboard.js").decode("utf-8")
        self.style = packaged("dashboard.css").decode("utf-8")

    def test_pageLoadsOnlyItsOwnFiles(self) -> None:
        """
        Every C{src} and C{href} is one of the dashboard's files, relative
        to the page (so it works under a path prefix too); nothing names
        another host.
        """
        urls = re.findall(r'(?:src|href)="([^"]*)"', self.page)
        self.assertEqual(
            sorted(urls), ["static/dashboard.css", "static/dashboard.js", "static/favicon.svg"]
        )
        for text in (self.page, self.style):
            self.assertIsNone(re.search(r"https?:|//[a-z0-9]|@import|url\(", text, re.I))
        # The script names the SVG namespace, which is an identifier, never
        # fetched; nothing else.
        self.assertEqual(
            re.findall(r"https?://[^\"' ]*", self.script), ["http://www.w3.org/2000/svg"]
        )

    def test_nothingInline(self) -> None:
        """
        No inline script, style or event handler: the policy would block
        them (and report a violation).
        """
        scripts = re.findall(r"<script([^>]*)>(.*?)</script>", self.page, re.S)
        self.assertEqual(scripts, [(' src="static/dashboard.js" defer', "")])
        self.assertNotIn("<style", self.page)
        self.assertIsNone(re.search(r"\sstyle=", self.page))
        self.assertIsNone(re.search(r"\son[a-z]+=", self.page, re.I))
        self.assertNotIn("javascript:", self.page)
        # Nor styles set as attributes from the script.
        self.assertNotIn('"style"', self.script)
        self.assertNotIn("cssText", self.script)

    def test_scriptInsertsTextOnly(self) -> None:
        """
        Names and addresses come from namers: the script never has the
        browser parse anything as HTML or code.
        """
        for forbidden in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write",
                          "eval(", "new Function", "DOMParser", "createContextualFragment",
                          "srcdoc"):
            self.assertNotIn(forbidden, self.script)
        self.assertIn("textContent", self.script)
        # setTimeout with a function, never with a string of code.
        self.assertEqual(re.findall(r"setTimeout\(([^,]*),", self.script), ["tick"])

    def test_pollsTheStateAndTheStatsEveryTwoSeconds(self) -> None:
        self.assertIn("const POLL_MS = 2000;", self.script)
        self.assertIn('getJSON("admin/state")', self.script)
        self.assertIn('getJSON("admin/stats")', self.script)
        self.assertIn('"/rules"', self.script)

    def test_tokenKeptForTheSessionAndSentAsBearer(self) -> None:
        self.assertIn("sessionStorage.getItem(TOKEN_KEY)", self.script)
        self.assertIn("sessionStorage.setItem(TOKEN_KEY", self.script)
        self.assertNotIn("localStorage", self.script)
        self.assertIn('headers["Authorization"] = "Bearer " + token', self.script)
        self.assertIn("response.status === 401", self.script)
        for id in ('id="auth"', 'id="token"', 'id="save"'):
            self.assertIn(id, self.page)

    def test_explainForm(self) -> None:
        for fragment in ('id="explain-router"', 'id="explain-name"', 'id="explain-go"'):
            self.assertIn(fragment, self.page)
        for fragment in ('"admin/routers/"', '"/explain?name="', "encodeURIComponent(name)",
                         "encodeURIComponent(router)"):
            self.assertIn(fragment, self.script)
        # No <form>: the policy forbids submitting one (form-action 'none').
        self.assertNotIn("<form", self.page)

    def test_everyTableHasOneSetOfColumnWidths(self) -> None:
        """
        Tables are made in one place with the same number of columns, laid
        out fixed, with widths given once in the stylesheet.
        """
        self.assertEqual(self.script.count('el("table"'), 1)
        self.assertNotIn("<table", self.page)
        self.assertIn("const COLUMNS = 7;", self.script)
        headers = re.findall(r"\[(\"bound name\"[^\]]*)\]", self.script)
        self.assertEqual(len(headers), 5, headers)
        for header in headers:
            self.assertEqual(header.count('"'), 2 * 7, header)
        self.assertIn("table-layout: fixed", self.style)
        widths = re.findall(r"^table\.grid col[^{]*\{ width: (\d+)%; \}$", self.style, re.M)
        self.assertEqual(widths, ["12", "28"])
        self.assertEqual(28 + 6 * 12, 100)
