"""
Identifiers: the first step of routing, turning a request into the logical
name the dtab rewrites (C{/svc/users}).

A request is anything with C{.method} (bytes), C{.target} (bytes, the
request-target as received) and C{.header(lowercaseName) -> bytes | None}.
Identification runs on every request, so each identifier does a few
precompiled regular-expression matches and builds one L{Path}.
"""

from __future__ import annotations

import re
from typing import Any

import attrs
from zope.interface import Attribute, Interface, implementer

from meshproxy.routing.path import Path

__all__ = [
    "IIdentifier",
    "IdentificationError",
    "HostIdentifier",
    "PathIdentifier",
    "HeaderIdentifier",
    "ClientIdentityIdentifier",
    "makeIdentifier",
    "splitAbsoluteForm",
]

DEFAULT_PREFIX = Path(("svc",))
"""The prefix identifiers put in front of the names they make: C{/svc}."""


class IIdentifier(Interface):
    """
    Turns a request into a logical name.
    """

    prefix = Attribute("The L{Path} put in front of every name, e.g. C{/svc}.")

    def identify(request: Any) -> Path:
        """
        Name a request.

        @param request: has C{.method}, C{.target} and C{.header(name)}.
        @return: the logical name, C{prefix} followed by what the identifier
            read from the request.
        @raise IdentificationError: if the request does not carry a usable
            name (the router answers 400).
        """


class IdentificationError(Exception):
    """
    A request cannot be named: no Host header, too short a path, a header
    value that is not a path...

    @ivar reason: a short human-readable reason, safe to put in a header
        (any bytes from the request are shown escaped).
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _quote(value: bytes, limit: int = 64) -> str:
    # repr() escapes CR, LF and every other non-printable byte.
    if len(value) > limit:
        return repr(value[:limit])[:-1] + "...'"
    return repr(value)


def _checkPrefix(instance: object, attribute: attrs.Attribute, value: object) -> None:
    if not isinstance(value, Path):
        raise TypeError(f"identifier prefix must be a Path, got {value!r}")


def _dotSegment(segment: bytes) -> bool:
    # "." and ".." mean something to file systems and URL resolution; never
    # let them become part of a service name.
    return segment == b"." or segment == b".."


# A host name (dot-separated labels, an optional final dot) or a bracketed
# IPv6 literal, then an optional port.  Matched against the lowercased value.
_hostAndPort = re.compile(
    rb"(?:([a-z0-9_-]+(?:\.[a-z0-9_-]+)*\.?)|\[([0-9a-f:.]*:[0-9a-f:.]*)\])(?::[0-9]*)?\Z"
)
_segment = re.compile(rb"[A-Za-z0-9_.:\-#$%!*]+\Z")
_headerPath = re.compile(rb"(?:/[A-Za-z0-9_.:\-#$%!*]+)+\Z")


def _absoluteForm(target: bytes) -> int:
    """
    Where the authority of an absolute-form request-target starts, or -1
    if C{target} is not in absolute form.
    """
    if target[:1] == b"/":
        return -1
    index = target.find(b"://")
    return -1 if index <= 0 else index + 3


def _authorityEnd(target: bytes, start: int) -> int:
    end = len(target)
    for delimiter in b"/?#":
        index = target.find(bytes((delimiter,)), start)
        if 0 <= index < end:
            end = index
    return end


def splitAbsoluteForm(target: bytes) -> tuple[bytes, bytes] | None:
    """
    Split an absolute-form request-target (C{http://users:8080/x?y}) into
    its authority (C{users:8080}) and the rest (C{/x?y}, maybe empty).

    @return: the two parts, or L{None} when C{target} is not in absolute
        form.
    """
    start = _absoluteForm(target)
    if start < 0:
        return None
    end = _authorityEnd(target, start)
    return target[start:end], target[end:]


@implementer(IIdentifier)
@attrs.frozen
class HostIdentifier:
    """
    Names a request by its host: C{Host: Users.example:8080} becomes
    C{/svc/users.example}.

    The host is the authority of an absolute-form request-target
    (C{GET http://host:8080/p}, which RFC 9112 says wins over the Host
    header), the target of a C{CONNECT}, or else the Host header.  It is
    lowercased, the port and any userinfo are dropped, and an IPv6 literal
    loses its brackets (C{[::1]:80} becomes C{/svc/::1}), since brackets
    cannot appear in a path.

    @ivar prefix: the L{Path} put in front of the host, C{/svc} by default.
    """

    prefix: Path = attrs.field(default=DEFAULT_PREFIX, validator=_checkPrefix)

    def identify(self, request: Any) -> Path:
        """
        Name a request by its host.

        @param request: the request.
        @return: C{prefix} followed by the host.
        @raise IdentificationError: if there is no host, or it is empty or
            has characters a host name cannot have.
        """
        target = request.target
        start = _absoluteForm(target)
        if start >= 0:
            authority = target[start : _authorityEnd(target, start)]
            source = "request-target authority"
        elif request.method == b"CONNECT":
            authority = target
            source = "CONNECT target"
        else:
            authority = request.header(b"host")
            source = "Host header"
            if authority is None:
                raise IdentificationError("no Host header")
        at = authority.rfind(b"@")
        if at >= 0:
            authority = authority[at + 1 :]
        if not authority:
            raise IdentificationError(f"empty {source}")
        match = _hostAndPort.match(authority.lower())
        if match is None:
            raise IdentificationError(f"invalid {source} {_quote(authority)}")
        host = match.group(1) or match.group(2)
        # The pattern only admits segment characters.
        return Path._unchecked(self.prefix.segments + (host.decode("ascii"),))


def _checkSegmentCount(instance: object, attribute: attrs.Attribute, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"segments must be an integer >= 1, got {value!r}")


@implementer(IIdentifier)
@attrs.frozen
class PathIdentifier:
    """
    Names a request by the first segments of its path: with C{segments=2},
    C{GET /users/v2/42?x=1} becomes C{/svc/users/v2}.

    The query and fragment are ignored, so are empty segments
    (C{//users/} is C{/users}); segments are not percent-decoded.

    @ivar prefix: the L{Path} put in front, C{/svc} by default.
    @ivar segments: how many path segments make the name, 1 by default.
    """

    prefix: Path = attrs.field(default=DEFAULT_PREFIX, validator=_checkPrefix)
    segments: int = attrs.field(default=1, validator=_checkSegmentCount)

    def identify(self, request: Any) -> Path:
        """
        Name a request by the first C{segments} segments of its path.

        @param request: the request.
        @return: C{prefix} followed by those segments.
        @raise IdentificationError: if the path has fewer segments, or one
            of them has a character a name cannot have (anything outside
            C{[A-Za-z0-9_.:-#$%!*]}) or is C{.} or C{..}.
        """
        target = request.target
        if target[:1] != b"/":
            start = _absoluteForm(target)
            if start < 0:
                raise IdentificationError(
                    f"request-target {_quote(target)} has no path"
                )
            # The path (maybe empty) follows the authority.
            target = target[_authorityEnd(target, start) :]
        for delimiter in (b"?", b"#"):
            index = target.find(delimiter)
            if index >= 0:
                target = target[:index]
        n = self.segments
        found = [s for s in target.split(b"/") if s][:n]
        if len(found) < n:
            raise IdentificationError(
                f"request path has fewer than {n} segment{'s' if n > 1 else ''}"
            )
        match = _segment.match
        for segment in found:
            if match(segment) is None or _dotSegment(segment):
                raise IdentificationError(
                    f"request path segment {_quote(segment)} cannot be part of a name"
                )
        return Path._unchecked(
            self.prefix.segments + tuple(s.decode("ascii") for s in found)
        )


def _headerName(value: object) -> bytes:
    if isinstance(value, str):
        value = value.encode("ascii")
    if not isinstance(value, bytes) or not value:
        raise ValueError(f"header name must be a non-empty str or bytes, got {value!r}")
    return value.lower()


@implementer(IIdentifier)
@attrs.frozen
class HeaderIdentifier:
    """
    Names a request by the value of a header: with C{name="x-svc"},
    C{x-svc: users} becomes C{/svc/users} and C{x-svc: /users/v2} becomes
    C{/svc/users/v2} (a value without a leading C{/} gets one).

    @ivar prefix: the L{Path} put in front, C{/svc} by default.
    @ivar name: the header's name, stored lowercase as bytes (a C{str} is
        accepted).
    """

    prefix: Path = attrs.field(validator=_checkPrefix)
    name: bytes = attrs.field(converter=_headerName)

    def identify(self, request: Any) -> Path:
        """
        Name a request by the value of the header.

        @param request: the request.
        @return: C{prefix} followed by the value read as a path.
        @raise IdentificationError: if the header is missing or empty, or
            its value is not a path (empty segments, C{.} or C{..}
            segments, characters outside C{[A-Za-z0-9_.:-#$%!*/]}).
        """
        value = request.header(self.name)
        header = self.name.decode("ascii")
        if value is None:
            raise IdentificationError(f"no {header} header")
        value = value.strip(b" \t")
        if not value:
            raise IdentificationError(f"empty {header} header")
        text = value if value[:1] == b"/" else b"/" + value
        if _headerPath.match(text) is None:
            raise IdentificationError(f"{header} header {_quote(value)} is not a path")
        segments = text[1:].split(b"/")
        for segment in segments:
            if _dotSegment(segment):
                raise IdentificationError(
                    f"{header} header {_quote(value)} has a . or .. segment"
                )
        return Path._unchecked(
            self.prefix.segments + tuple(s.decode("ascii") for s in segments)
        )


_URI = re.compile(r"([a-z][a-z0-9+.-]*)://([^/?#]*)([^?#]*)\Z")


@implementer(IIdentifier)
@attrs.frozen
class ClientIdentityIdentifier:
    """
    Names a request by its caller's verified certificate identity (over TLS
    with client certificates): a URI SAN C{spiffe://mesh.local/ns/web}
    becomes C{/id/spiffe/mesh.local/ns/web}, a DNS SAN C{web.example}
    C{/id/dns/web.example}, a common name C{web} C{/id/cn/web}.

    A request reads the identity from C{.identity} (a
    L{PeerIdentity<meshproxy.tls.PeerIdentity>} or L{None}).

    @ivar prefix: C{/id}, always.
    """

    prefix: Path = attrs.field(default=Path(("id",)), init=False)

    def identify(self, request: Any) -> Path:
        """
        Name a request by its caller's identity.

        @raise IdentificationError: without a verified certificate, or when
            its identity cannot be a name (characters outside the name
            alphabet).
        """
        identity = getattr(request, "identity", None)
        if identity is None:
            raise IdentificationError("no verified client certificate")
        if identity.uris:
            match = _URI.match(identity.uris[0])
            if match is None:
                raise IdentificationError(f"URI {identity.uris[0]!r} cannot be a name")
            scheme, authority, path = match.groups()
            segments = [scheme, authority, *[s for s in path.split("/") if s]]
        elif identity.dnsNames:
            segments = ["dns", identity.dnsNames[0].lower()]
        elif identity.commonName:
            segments = ["cn", identity.commonName]
        else:
            raise IdentificationError("the client certificate names no one")
        try:
            return Path(("id", *segments))
        except (TypeError, ValueError):
            raise IdentificationError(
                f"identity {identity.name!r} cannot be a name (letters, digits, _ . : - only)"
            ) from None


def makeIdentifier(config: Any) -> IIdentifier:
    """
    The identifier an C{identifier} config section describes.

    @param config: an L{IdentifierConfig<meshproxy.config.IdentifierConfig>}
        (C{kind}, C{prefix}, and C{segments} or C{name}).
    """
    if config.kind == "clientIdentity":
        return ClientIdentityIdentifier()
    prefix = Path.read(config.prefix)
    if config.kind == "host":
        return HostIdentifier(prefix)
    if config.kind == "path":
        return PathIdentifier(prefix, config.segments)
    return HeaderIdentifier(prefix, config.name.encode("ascii"))
