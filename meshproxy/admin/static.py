"""
The dashboard's files: package data under C{meshproxy/admin/static/}, read
once, served by name only, under a strict content security policy.
"""

from __future__ import annotations

import importlib.resources
import posixpath

STATIC_TYPES = {
    ".html": b"text/html; charset=utf-8",
    ".js": b"text/javascript; charset=utf-8",
    ".css": b"text/css; charset=utf-8",
    ".svg": b"image/svg+xml",
}
"""The content type of each kind of file the dashboard is made of."""

PAGE_POLICY = (
    b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    b"connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)
"""
The C{Content-Security-Policy} of the dashboard's files: its script and
styles come from its own files only (nothing inline, nothing from
elsewhere), it may only call back home, and no page may frame it.
"""


def loadStatic(package: str = "meshproxy.admin") -> dict[str, tuple[bytes, bytes]]:
    """
    Read the dashboard's files: those directly in the C{static} folder of
    C{package} (package data, so this works from a wheel or a zip) whose
    extension is one of L{STATIC_TYPES}. Nothing else can be served:
    subfolders, hidden files and other extensions are left out.

    @param package: the package holding the C{static} folder.
    @return: file name to C{(content type, bytes)}.
    """
    files = {}
    for entry in importlib.resources.files(package).joinpath("static").iterdir():
        name = entry.name
        contentType = STATIC_TYPES.get(posixpath.splitext(name)[1])
        if contentType is None or name.startswith(".") or not entry.is_file():
            continue
        files[name] = (contentType, entry.read_bytes())
    return files
