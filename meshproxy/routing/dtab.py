"""
Delegation tables (dtabs): the routing rules, as in Finagle and Linkerd 1.

A dtab is a list of dentries (delegation entries), each C{prefix => tree}::

    # comments run to the end of the line
    /svc        => /#/fs;
    /svc/users  => /#/fs/users-v2 | /#/fs/users;     # fail-over
    /svc/search => 0.9*/#/fs/search & 0.1*/#/fs/search-next;
    /svc/*/beta => !;                                  # * matches one segment

Grammar (whitespace, newlines and comments are free between tokens)::

    dtab     := [dentry (';' dentry)* [';']]
    dentry   := prefix '=>' tree
    tree     := alt
    alt      := union ('|' union)*
    union    := weighted ('&' weighted)*
    weighted := [number '*'] simple
    simple   := path | '~' | '!' | '$' | '(' tree ')'

A C{#} starts a comment only where a token may start; inside a path it is an
ordinary character (C{/#/fs}).  Rewriting a name with a dtab is
L{meshproxy.routing.delegate}'s job.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from typing import Any, ClassVar

import attrs

from meshproxy.routing.nametree import (
    Alt,
    Empty,
    Fail,
    Leaf,
    Neg,
    Union,
    Weighted,
    _Special,
    mapTree,
    show as showTree,
)
from meshproxy.routing.path import Path

__all__ = ["Dentry", "Dtab", "DtabSyntaxError"]

MAX_NESTING = 32
"""How deeply parentheses may nest in a dtab (bounds the parser's recursion)."""


class DtabSyntaxError(ValueError):
    """
    Dtab text that does not parse.

    @ivar message: what is wrong, e.g. C{expected "=>", got "/"}.
    @ivar line: the 1-based line of the offending character.
    @ivar column: its 1-based column (in characters).
    """

    def __init__(self, message: str, line: int, column: int) -> None:
        super().__init__(message, line, column)
        self.message = message
        self.line = line
        self.column = column

    def __str__(self) -> str:
        return f"{self.message} at line {self.line}, column {self.column}"


def _checkPrefix(instance: object, attribute: attrs.Attribute, value: object) -> None:
    if not isinstance(value, Path):
        raise TypeError(f"dentry prefix must be a Path, got {value!r}")
    if not value.segments:
        raise ValueError("empty dentry prefix")


def _checkDst(instance: object, attribute: attrs.Attribute, value: object) -> None:
    if not isinstance(value, (Leaf, Alt, Union, _Special)):
        raise TypeError(f"dentry destination must be a name tree, got {value!r}")


@attrs.frozen(cache_hash=True)
class Dentry:
    """
    One rule: names starting with C{prefix} are rewritten to C{dst}.

    @ivar prefix: a non-empty L{Path}; a segment that is exactly C{*}
        matches any one segment.
    @ivar dst: a name tree of L{Path}s.
    """

    prefix: Path = attrs.field(validator=_checkPrefix)
    dst: Any = attrs.field(validator=_checkDst)

    @classmethod
    def read(cls, text: str) -> Dentry:
        """
        Parse one dentry, C{prefix => tree} (a trailing C{;} is allowed).

        @param text: the dentry.
        @return: the L{Dentry}.
        @raise DtabSyntaxError: if C{text} is not exactly one dentry.
        """
        dtab = Dtab.read(text)
        if len(dtab.dentries) != 1:
            raise DtabSyntaxError(
                f"expected one dentry, got {len(dtab.dentries)}", 1, 1
            )
        return dtab.dentries[0]

    def match(self, path: Path) -> Path | None:
        """
        Match this dentry's prefix against a path.

        @param path: a L{Path}.
        @return: the residual (the segments of C{path} after the matched
            prefix) if every prefix segment equals the path's segment or is
            C{*}; C{None} if the prefix does not match.
        """
        prefix = self.prefix.segments
        segments = path.segments
        n = len(prefix)
        if len(segments) < n:
            return None
        if "*" in prefix:
            # Only the prefix's length of the path is compared.
            for want, got in zip(prefix, segments, strict=False):
                if want != "*" and want != got:
                    return None
        elif segments[:n] != prefix:
            return None
        return path.drop(n)

    def rewrite(self, path: Path) -> Any:
        """
        Apply this dentry to a path.

        @param path: a L{Path}.
        @return: C{dst} with the residual appended to each of its leaf
            paths, or C{None} if the prefix does not match.
        """
        residual = self.match(path)
        if residual is None:
            return None
        if not residual.segments:
            return self.dst
        return mapTree(self.dst, lambda p: p + residual)

    def show(self) -> str:
        """
        The dentry as text, C{/prefix=>tree}.

        @return: text that L{Dentry.read} parses back to this dentry.
        """
        return f"{self.prefix}=>{showTree(self.dst)}"

    def __str__(self) -> str:
        return self.show()


def _checkDentries(instance: object, attribute: attrs.Attribute, value: tuple) -> None:
    for dentry in value:
        if not isinstance(dentry, Dentry):
            raise TypeError(f"a Dtab holds Dentry values, got {dentry!r}")


@attrs.frozen(cache_hash=True)
class Dtab:
    """
    A delegation table: an ordered list of L{Dentry} rules.  Later rules
    win: delegation tries every matching rule, the last one first.

    C{a + b} appends C{b}'s rules to C{a}'s (so C{b}'s win), C{len()} counts
    rules and iterating yields them in order.

    @ivar dentries: the rules, in order (a tuple; any iterable is accepted).
    """

    dentries: tuple = attrs.field(converter=tuple, validator=_checkDentries)

    empty: ClassVar[Dtab]
    """The dtab with no rules."""

    @classmethod
    def read(cls, text: str) -> Dtab:
        """
        Parse dtab text (see the module docstring for the syntax).

        @param text: the rules.  Empty text (or only comments) is the empty
            dtab.
        @return: the L{Dtab}.
        @raise DtabSyntaxError: if the text does not parse; the error points
            at the offending character.
        """
        if type(text) is not str:
            raise TypeError(f"Dtab.read expects a str, got {text!r}")
        # (attrs' mypy plugin cannot type the converter tuple's argument)
        return cls(_Parser(text).dtab())  # type: ignore[arg-type]

    def show(self) -> str:
        """
        The dtab as text in canonical form, on one line:
        C{/svc=>/#/fs;/svc/a=>/b | /c}.

        @return: text that L{Dtab.read} parses back to an equal dtab.
        """
        return ";".join(dentry.show() for dentry in self.dentries)

    def __str__(self) -> str:
        return self.show()

    def __add__(self, other: object) -> Dtab:
        if not isinstance(other, Dtab):
            return NotImplemented
        if not other.dentries:
            return self
        if not self.dentries:
            return other
        return Dtab(self.dentries + other.dentries)

    def __len__(self) -> int:
        return len(self.dentries)

    def __iter__(self) -> Iterator[Dentry]:
        return iter(self.dentries)


Dtab.empty = Dtab(())


_WHITESPACE = frozenset(" \t\r\n\f\v")
_number = re.compile(r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_segmentRun = re.compile(r"[A-Za-z0-9_.:\-#$%!*]+")
# Characters that may legitimately follow a path: whitespace, the end, or
# the start of the next token.
_AFTER_PATH = frozenset(" \t\r\n\f\v;|&)=#")


def _describe(char: str) -> str:
    if char == "":
        return "end of input"
    if char.isprintable():
        return f'"{char}"'
    return f"U+{ord(char):04X}"


class _Parser:
    """
    A hand-written recursive-descent parser over the dtab text, so that
    errors can name the exact line and column.
    """

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.depth = 0

    # Positions and errors

    def error(self, message: str, pos: int | None = None) -> DtabSyntaxError:
        if pos is None:
            pos = self.pos
        text = self.text
        line = text.count("\n", 0, pos) + 1
        column = pos - (text.rfind("\n", 0, pos) + 1) + 1
        return DtabSyntaxError(message, line, column)

    def peek(self) -> str:
        return self.text[self.pos : self.pos + 1]

    def skipSpace(self) -> None:
        text = self.text
        pos = self.pos
        end = len(text)
        while pos < end:
            char = text[pos]
            if char in _WHITESPACE:
                pos += 1
            elif char == "#":
                newline = text.find("\n", pos)
                pos = end if newline < 0 else newline + 1
            else:
                break
        self.pos = pos

    def expect(self, token: str) -> None:
        self.skipSpace()
        if not self.text.startswith(token, self.pos):
            raise self.error(f'expected "{token}", got {_describe(self.peek())}')
        self.pos += len(token)

    # Grammar

    def dtab(self) -> list[Dentry]:
        dentries = []
        self.skipSpace()
        while self.pos < len(self.text):
            dentries.append(self.dentry())
            self.skipSpace()
            char = self.peek()
            if char == ";":
                self.pos += 1
                self.skipSpace()
            elif char != "":
                raise self.error(f'expected ";", got {_describe(char)}')
        return dentries

    def dentry(self) -> Dentry:
        start = self.pos
        char = self.peek()
        if char == "=":
            raise self.error("empty dentry prefix")
        if char != "/":
            raise self.error(f"unexpected {_describe(char)}")
        prefix = self.path()
        if not prefix.segments:
            raise self.error("empty dentry prefix", start)
        self.expect("=>")
        dst = self.tree()
        return Dentry(prefix, dst)

    def tree(self) -> Any:
        branches = [self.union()]
        while True:
            self.skipSpace()
            if self.peek() != "|":
                break
            self.pos += 1
            branches.append(self.union())
        return branches[0] if len(branches) == 1 else Alt(tuple(branches))

    def union(self) -> Any:
        branches = [self.weighted()]
        while True:
            self.skipSpace()
            if self.peek() != "&":
                break
            self.pos += 1
            branches.append(self.weighted())
        if len(branches) == 1:
            # A lone weight means nothing: "0.5*/a" is just "/a".
            return branches[0].tree
        # (attrs' mypy plugin cannot type the converter tuple's argument)
        return Union(tuple(branches))  # type: ignore[arg-type]

    def weighted(self) -> Weighted:
        self.skipSpace()
        weight = Weighted.defaultWeight
        match = _number.match(self.text, self.pos)
        if match is not None:
            start = self.pos
            weight = float(match.group())
            if not math.isfinite(weight):
                raise self.error("weight out of range", start)
            self.pos = match.end()
            self.expect("*")
        return Weighted(weight, self.simple())

    def simple(self) -> Any:
        self.skipSpace()
        char = self.peek()
        if char == "/":
            return Leaf(self.path())
        if char == "~":
            self.pos += 1
            return Neg
        if char == "!":
            self.pos += 1
            return Fail
        if char == "$":
            self.pos += 1
            return Empty
        if char == "(":
            if self.depth >= MAX_NESTING:
                raise self.error(
                    f"parentheses nested more than {MAX_NESTING} deep"
                )
            self.pos += 1
            self.depth += 1
            tree = self.tree()
            self.expect(")")
            self.depth -= 1
            return tree
        raise self.error(f"unexpected {_describe(char)}")

    def path(self) -> Path:
        # At a "/".
        text = self.text
        segments = []
        start = self.pos
        while self.peek() == "/":
            slash = self.pos
            match = _segmentRun.match(text, slash + 1)
            if match is None:
                following = text[slash + 1 : slash + 2]
                if slash == start and (following == "" or following in _AFTER_PATH):
                    self.pos = slash + 1
                    return Path.empty
                if following == "/":
                    raise self.error("empty path segment", slash + 1)
                if following == "" or following in _AFTER_PATH:
                    raise self.error('path ends with "/"', slash)
                raise self.error(f"unexpected {_describe(following)}", slash + 1)
            segments.append(match.group())
            self.pos = match.end()
        following = self.peek()
        if following != "" and following not in _AFTER_PATH:
            raise self.error(f"unexpected {_describe(following)}")
        return Path(tuple(segments))
