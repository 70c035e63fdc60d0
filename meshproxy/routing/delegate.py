"""
Delegation: rewriting a logical name (C{/svc/users}) with a L{Dtab} until
every leaf is a L{BoundName} that a namer owns (C{/#/fs/users}).

Rules, as in Finagle and Linkerd 1:

  - a path under a namer prefix (C{/#/fs/users/v2} with a namer at
    C{/#/fs}) is bound, never rewritten: C{BoundName(id=/#/fs/users,
    prefix=/#/fs, service="users", residual=/v2)}; the service is one
    segment, or more under a L{NamerPrefix} that says so
    (C{/#/dns/a/users.example/8080/v2}: service C{"a/users.example/8080"});
  - C{/$/inet/<host>/<port>} is bound to that fixed address;
  - any other path under C{/#} or C{/$} is negative (L{Neg});
  - otherwise every dentry whose prefix matches is applied, the last one
    first, and the results are combined as an L{Alt} (so a rule whose
    result is negative falls through to the earlier rules, and one that
    fails stops the search); each leaf path of a rewrite is delegated in
    turn.  No matching dentry gives L{Neg}.

The result is simplified (see L{meshproxy.routing.nametree.simplifyAlt} and
L{meshproxy.routing.nametree.simplifyUnion}).  L{evaluate} then picks one
bound name per request.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import attrs

from meshproxy.routing.dtab import Dentry, Dtab
from meshproxy.routing.nametree import (
    Alt,
    Empty,
    Fail,
    Leaf,
    Neg,
    RoutingFailure,
    Union,
    Weighted,
    evaluate,
    show,
    simplifyAlt,
    simplifyUnion,
)
from meshproxy.routing.path import Path

__all__ = [
    "BoundName",
    "DelegationError",
    "NamerPrefix",
    "RoutingFailure",
    "INET_PREFIX",
    "delegate",
    "explain",
    "evaluate",
    "showBound",
]

INET_PREFIX = Path(("$", "inet"))
"""The built-in prefix of fixed addresses, C{/$/inet/<host>/<port>}."""


@attrs.frozen(cache_hash=True)
class BoundName:
    """
    A name a namer owns: the leaf of a delegated tree.

    @ivar id: the namer prefix plus the service, e.g. C{/#/fs/users}: one
        endpoint set per id.
    @ivar prefix: the namer's prefix, e.g. C{/#/fs} (or C{/$/inet}).
    @ivar service: the name the namer is asked to bind, e.g. C{"users"}; for
        C{/$/inet} it is C{"host:port"}; under a L{NamerPrefix}, its
        segments joined by C{/} (C{"a/users.example/8080"}).
    @ivar residual: what followed the service in the path, e.g. C{/v2}
        (usually empty).
    """

    id: Path
    prefix: Path
    service: str
    residual: Path

    @property
    def path(self) -> Path:
        """
        The whole bound path, C{id} followed by C{residual}.
        """
        return self.id + self.residual

    def show(self) -> str:
        """
        The bound path as text, e.g. C{/#/fs/users/v2}.
        """
        return str(self.id + self.residual)


def showBound(tree: Any) -> str:
    """
    A delegated tree as text, each bound name shown as its whole path.

    @param tree: a name tree of L{BoundName}s.
    @return: e.g. C{/#/fs/users | /#/static/users}, or C{~}, C{!}, C{$}.
    """
    return show(tree, BoundName.show)


class DelegationError(Exception):
    """
    Delegation gave up: the rules loop, or need more rewrites than allowed.

    @ivar path: the name whose delegation failed.
    @ivar chain: the paths being rewritten when it gave up, outermost first.
    """

    def __init__(self, message: str, path: Path, chain: tuple[Path, ...] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.path = path
        self.chain = chain

    def __str__(self) -> str:
        return self.message


class NamerPrefix(Path):
    """
    The prefix of a namer whose service names may take more than one
    segment: C{/#/dns} owns C{/#/dns/srv/_http._tcp.users.example} (two
    segments, C{srv} and the name) and C{/#/dns/a/users.example/8080}
    (three). How many is read from the first segment below the prefix:
    C{nameLengths} maps it to the length, any other first segment takes one
    (and the namer then says it does not know the name).

    A namer puts its prefix in this form; delegation binds the service's
    segments, joined by C{/}, and leaves the rest as the residual. It
    equals, and hashes as, the plain L{Path} with the same segments.

    @ivar nameLengths: first segment → how many segments a name starting
        with it takes (at least 1).
    """

    __slots__ = ("nameLengths",)

    nameLengths: Mapping[str, int]

    def __init__(self, segments: tuple[str, ...], nameLengths: Mapping[str, int]) -> None:
        """
        @param segments: the prefix's segments, as for L{Path}.
        @param nameLengths: see L{nameLengths}.
        @raise ValueError: if a length is not an integer of at least 1.
        """
        super().__init__(segments)
        for first, length in nameLengths.items():
            if isinstance(length, bool) or not isinstance(length, int) or length < 1:
                raise ValueError(f"name length of {first!r} must be an integer >= 1")
        object.__setattr__(self, "nameLengths", dict(nameLengths))

    def nameLength(self, below: tuple[str, ...]) -> int:
        """
        @param below: the segments after the prefix, at least one.
        @return: how many of them make the service name (maybe more than
            there are: the name is then incomplete).
        """
        return self.nameLengths.get(below[0], 1)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Path):
            return NotImplemented
        return self.segments == other.segments

    def __ne__(self, other: object) -> bool:
        if not isinstance(other, Path):
            return NotImplemented
        return self.segments != other.segments

    __hash__ = Path.__hash__

    def __repr__(self) -> str:
        return f"NamerPrefix({self.segments!r}, {self.nameLengths!r})"


def _showPath(path: Path, limit: int = 60) -> str:
    text = str(path)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _showChain(chain: list[Path]) -> str:
    # Enough of the chain to see the loop, short enough for a log line.
    if len(chain) > 6:
        shown = [_showPath(p) for p in chain[:3]] + ["..."]
        shown += [_showPath(p) for p in chain[-3:]]
    else:
        shown = [_showPath(p) for p in chain]
    return " -> ".join(shown)


def _bindInet(path: Path) -> BoundName | None:
    segments = path.segments
    if len(segments) < 4 or segments[1] != "inet":
        return None
    host, port = segments[2], segments[3]
    if not (port.isdigit() and port.isascii() and 0 < int(port) < 65536):
        return None
    return BoundName(
        id=Path._unchecked(segments[:4]),
        prefix=INET_PREFIX,
        service=f"{host}:{int(port)}",
        residual=path.drop(4),
    )


def _boundInfo(bound: BoundName) -> dict:
    return {
        "id": str(bound.id),
        "prefix": str(bound.prefix),
        "service": bound.service,
        "residual": str(bound.residual),
    }


_SPECIAL_REASONS = {
    Neg: ("neg", "the rule says ~ (negative)"),
    Fail: ("fail", "the rule says ! (fail)"),
    Empty: ("empty", "the rule says $ (empty)"),
}


class _Delegation:
    """
    One delegation of one name: the memo table, the rewrite count and,
    when explaining, the trace.
    """

    def __init__(
        self,
        dtab: Dtab,
        namerPrefixes: Iterable[Path],
        maxDepth: int,
    ) -> None:
        if not isinstance(dtab, Dtab):
            raise TypeError(f"expected a Dtab, got {dtab!r}")
        prefixes = []
        for prefix in namerPrefixes:
            if not isinstance(prefix, Path) or not prefix.segments:
                raise ValueError(f"namer prefixes must be non-empty Paths, got {prefix!r}")
            prefixes.append((prefix.segments, prefix))
        # Longest first, so that /#/fs/x beats /#/fs.
        prefixes.sort(key=lambda item: len(item[0]), reverse=True)
        if isinstance(maxDepth, bool) or not isinstance(maxDepth, int) or maxDepth < 0:
            raise ValueError(f"maxDepth must be an integer >= 0, got {maxDepth!r}")
        self.prefixes = prefixes
        self.dentries = tuple(reversed(dtab.dentries))
        self.maxDepth = maxDepth
        self.memo: dict[Path, Any] = {}
        self.rewrites = 0
        self.chain: list[Path] = []
        self.root: Path | None = None

    def run(self, path: Path, children: list | None) -> Any:
        if not isinstance(path, Path):
            raise TypeError(f"expected a Path, got {path!r}")
        self.root = path
        try:
            return self.path(path, None, children)
        except RecursionError:
            # Deeply nested trees in a long rewrite chain; the rewrite
            # limit normally stops delegation long before this.
            raise DelegationError(
                f"delegation of {path} nested too deeply: loop? "
                f"{_showChain(self.chain)}",
                path,
                tuple(self.chain),
            ) from None

    def bind(self, path: Path) -> BoundName | None:
        segments = path.segments
        for prefixSegments, prefix in self.prefixes:
            n = len(prefixSegments)
            if len(segments) > n and segments[:n] == prefixSegments:
                end = n + 1
                if isinstance(prefix, NamerPrefix):
                    # An incomplete name keeps what there is: its namer
                    # does not know it.
                    end = min(len(segments), n + prefix.nameLength(segments[n:]))
                return BoundName(
                    id=Path._unchecked(segments[:end]),
                    prefix=prefix,
                    service="/".join(segments[n:end]),
                    residual=path.drop(end),
                )
        if segments and segments[0] == "$":
            return _bindInet(path)
        return None

    def path(self, path: Path, dentry: Dentry | None, children: list | None) -> Any:
        node: dict[str, Any] | None = None
        if children is not None:
            node = {
                "path": str(path),
                "dentry": None if dentry is None else dentry.show(),
                "result": None,
                "children": [],
            }
            children.append(node)

        tree = self.memo.get(path)
        if tree is not None:
            if node is not None:
                node["result"] = showBound(tree)
                node["repeated"] = True
            return tree

        segments = path.segments
        bound = self.bind(path)
        if bound is not None:
            tree = Leaf(bound)
            if node is not None:
                node["bound"] = _boundInfo(bound)
        elif segments and segments[0] in ("#", "$"):
            tree = Neg
            if node is not None:
                node["neg"] = (
                    "no namer for this path"
                    if segments[0] == "#"
                    else "not a known /$ path (expected /$/inet/<host>/<port>)"
                )
        else:
            tree = self.rewrite(path, None if node is None else node["children"])
            if tree is None:
                tree = Neg
                if node is not None:
                    node["neg"] = "no rule matches"

        self.memo[path] = tree
        if node is not None:
            node["result"] = showBound(tree)
        return tree

    def rewrite(self, path: Path, children: list | None) -> Any:
        """
        Apply every matching dentry, later first; C{None} if none matches.
        """
        results = []
        for dentry in self.dentries:
            rewritten = dentry.rewrite(path)
            if rewritten is None:
                continue
            self.rewrites += 1
            self.chain.append(path)
            if self.rewrites > self.maxDepth:
                raise DelegationError(
                    f"delegation exceeded {self.maxDepth} rewrites: loop? "
                    f"resolving {self.root}: {_showChain(self.chain)}",
                    self.root,  # type: ignore[arg-type]  # set by run()
                    tuple(self.chain),
                )
            result = self.tree(rewritten, dentry, children)
            self.chain.pop()
            results.append(result)
            if result is Fail:
                break
        if not results:
            return None
        return simplifyAlt(results)

    def tree(self, tree: Any, dentry: Dentry, children: list | None) -> Any:
        cls = tree.__class__
        if cls is Leaf:
            return self.path(tree.value, dentry, children)
        if cls is Alt:
            results = []
            for branch in tree.trees:
                result = self.tree(branch, dentry, children)
                results.append(result)
                if result is Fail:
                    break
            return simplifyAlt(results)
        if cls is Union:
            results = []
            for branch in tree.weighted:
                result = self.tree(branch.tree, dentry, children)
                if result is Fail:
                    return Fail
                results.append(Weighted(branch.weight, result))
            return simplifyUnion(results)
        if children is not None:
            key, reason = _SPECIAL_REASONS[tree]
            children.append(
                {
                    "path": None,
                    "dentry": dentry.show(),
                    "result": tree.symbol,
                    "children": [],
                    key: reason,
                }
            )
        return tree


def delegate(
    dtab: Dtab, path: Path, namerPrefixes: Iterable[Path], maxDepth: int = 100
) -> Any:
    """
    Rewrite a logical name with a dtab into a tree of bound names.

    The work is bounded: each distinct path is delegated once per call, and
    at most C{maxDepth} dentry applications are made in total.

    @param dtab: the rules.
    @param path: the logical name, e.g. C{/svc/users}.
    @param namerPrefixes: the prefixes of the configured namers, e.g.
        C{[Path.read("/#/fs")]}.
    @param maxDepth: the most dentry applications (rewrites) allowed.
    @return: a simplified name tree whose leaves are L{BoundName}s (L{Neg}
        if nothing matches).
    @raise DelegationError: if the rules loop or need more than C{maxDepth}
        rewrites.
    """
    return _Delegation(dtab, namerPrefixes, maxDepth).run(path, None)


def explain(
    dtab: Dtab, path: Path, namerPrefixes: Iterable[Path], maxDepth: int = 100
) -> dict:
    """
    Delegate a name and record every step, for the admin API.

    Each node is a dict::

        {"path": "/svc/users",          # the path delegated at this step
         "dentry": "/svc=>/#/fs",       # the rule that produced it (None at the root)
         "result": "/#/fs/users",       # what it delegates to, as text ("~", "!", "$"...)
         "children": [...]}             # one node per leaf of each matching
                                        # rule's rewrite, later rules first

    plus, where they apply: C{"bound"} (C{{"id", "prefix", "service",
    "residual"}}) on a path a namer owns; C{"neg"} (a reason) on a path that
    is negative by itself (no rule matches, no such namer); C{"repeated":
    True} on a path already delegated elsewhere in the tree (its children
    are shown there).  A rule's C{~}, C{!} or C{$} is a child node with
    C{"path": None} and a C{"neg"}, C{"fail"} or C{"empty"} reason.  Branches
    after a C{!} are not delegated, so they do not appear.

    If delegation gives up, the root gets an C{"error"} (the
    L{DelegationError} message) and the tree is what was explored so far
    (unfinished nodes have C{"result": None}).

    @param dtab: the rules.
    @param path: the logical name.
    @param namerPrefixes: the prefixes of the configured namers.
    @param maxDepth: as for L{delegate}.
    @return: the root node, ready for C{json.dumps}; its C{"result"} is
        C{showBound(delegate(dtab, path, namerPrefixes))}.
    """
    children: list = []
    delegation = _Delegation(dtab, namerPrefixes, maxDepth)
    try:
        delegation.run(path, children)
    except DelegationError as e:
        root = children[0]
        root["error"] = e.message
        return root
    return children[0]
