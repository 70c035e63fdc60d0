"""
Hierarchical names: L{Path}, the C{/svc/users} values that identifiers
produce, dtabs rewrite and namers bind.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import ClassVar

import attrs

__all__ = ["Path", "SEGMENT_CHARS", "isSegment"]

SEGMENT_CHARS = frozenset(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.:-#$%!*"
)
"""
The characters a path segment may contain.  C{*} is a wildcard only in a
dentry prefix, where a segment that is exactly C{*} matches any segment.
"""

_segment = re.compile(r"[A-Za-z0-9_.:\-#$%!*]+\Z")


def isSegment(text: object) -> bool:
    """
    Is C{text} a valid path segment?

    @param text: anything.
    @return: C{True} if C{text} is a non-empty C{str} made only of
        L{SEGMENT_CHARS}.
    """
    return type(text) is str and _segment.match(text) is not None


def _checkSegments(value: object) -> None:
    # A tuple exactly (not a list): paths are hashed, and a str would be
    # silently split into one-character segments.
    if type(value) is not tuple:
        raise TypeError(f"Path segments must be a tuple of str, got {value!r}")
    match = _segment.match
    for segment in value:
        if type(segment) is not str or match(segment) is None:
            raise ValueError(f"invalid path segment {segment!r}")


class Path:
    """
    A hierarchical name such as C{/svc/users}: a tuple of non-empty
    segments.  Immutable and hashable, so paths are cheap dictionary keys.

    Build one from text with L{Path.read}, or from segments with
    C{Path(("svc", "users"))}; both validate the segments.

    Written by hand rather than with C{attrs}: paths are made and hashed on
    every request, so the hash is computed once at construction and the
    operations that combine valid paths skip validation.

    @ivar segments: the segments, each a non-empty C{str} of
        L{SEGMENT_CHARS}.
    """

    __slots__ = ("segments", "_hash")

    segments: tuple[str, ...]
    _hash: int
    empty: ClassVar[Path]
    """The empty path, written C{/}."""

    def __init__(self, segments: tuple[str, ...]) -> None:
        """
        @param segments: a tuple of segments.
        @raise TypeError: if C{segments} is not a tuple.
        @raise ValueError: if a segment is not a non-empty C{str} of
            L{SEGMENT_CHARS}.
        """
        _checkSegments(segments)
        object.__setattr__(self, "segments", segments)
        object.__setattr__(self, "_hash", hash(segments))

    @classmethod
    def _unchecked(cls, segments: tuple[str, ...]) -> Path:
        """
        Make a path from segments already known to be valid.  For the
        routing package's hot paths only.
        """
        path = object.__new__(cls)
        object.__setattr__(path, "segments", segments)
        object.__setattr__(path, "_hash", hash(segments))
        return path

    def __setattr__(self, name: str, value: object) -> None:
        raise attrs.exceptions.FrozenInstanceError()

    def __delattr__(self, name: str) -> None:
        raise attrs.exceptions.FrozenInstanceError()

    def __reduce__(self) -> tuple:
        return (Path, (self.segments,))

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not Path:
            return NotImplemented
        return self._hash == other._hash and self.segments == other.segments

    def __ne__(self, other: object) -> bool:
        if other.__class__ is not Path:
            return NotImplemented
        return self.segments != other.segments

    @classmethod
    def read(cls, text: str) -> Path:
        """
        Parse a path written as C{/seg1/seg2}.

        @param text: the path; C{"/"} is the empty path.
        @return: the L{Path}.
        @raise ValueError: if C{text} is not a path: it does not start with
            C{/}, has an empty segment (C{//}, a trailing C{/}), or a
            character outside L{SEGMENT_CHARS}.
        """
        if type(text) is not str:
            raise TypeError(f"Path.read expects a str, got {text!r}")
        if text == "/":
            return cls.empty
        if not text.startswith("/"):
            raise ValueError(f"invalid path {text!r}: a path starts with '/'")
        segments = tuple(text[1:].split("/"))
        match = _segment.match
        for segment in segments:
            if not segment:
                raise ValueError(f"invalid path {text!r}: empty segment")
            if match(segment) is None:
                raise ValueError(
                    f"invalid path {text!r}: segment {segment!r} has a character "
                    f"outside [A-Za-z0-9_.:-#$%!*]"
                )
        return cls._unchecked(segments)

    def startswith(self, prefix: Path) -> bool:
        """
        Does this path begin with all the segments of C{prefix}?  (Literal
        comparison: C{*} has no special meaning here.)

        @param prefix: a L{Path}.
        @return: C{True} if C{prefix} is a prefix of this path (every path
            starts with the empty path).
        """
        n = len(prefix.segments)
        return self.segments[:n] == prefix.segments

    def take(self, n: int) -> Path:
        """
        The first C{n} segments.

        @param n: how many segments to keep; may exceed the length.
        @return: a L{Path}.
        """
        return Path._unchecked(self.segments[:n])

    def drop(self, n: int) -> Path:
        """
        All but the first C{n} segments.

        @param n: how many segments to drop; may exceed the length.
        @return: a L{Path}.
        """
        if n == 0:
            return self
        return Path._unchecked(self.segments[n:])

    def show(self) -> str:
        """
        The path as text, C{/a/b}, or C{/} for the empty path.

        @return: text that L{Path.read} parses back to this path.
        """
        return "/" + "/".join(self.segments)

    def __str__(self) -> str:
        return "/" + "/".join(self.segments)

    def __repr__(self) -> str:
        return f"Path.read({str(self)!r})"

    def __add__(self, other: object) -> Path:
        if other.__class__ is not Path:
            return NotImplemented
        if not other.segments:
            return self
        if not self.segments:
            return other
        return Path._unchecked(self.segments + other.segments)

    def __len__(self) -> int:
        return len(self.segments)

    def __iter__(self) -> Iterator[str]:
        return iter(self.segments)


Path.empty = Path(())
