"""
Name trees: the values a dtab rewrites a name into.

A name tree is one of:

  - L{Leaf}C{(value)}: a single name (a L{Path} in a dtab, a bound name
    after delegation);
  - L{Alt}C{(trees)}: fail-over, written C{a | b}: the first tree that
    resolves to something;
  - L{Union}C{(weighted)}: load sharing, written C{0.9*a & 0.1*b}: a weighted
    random choice among the trees that resolve to something;
  - L{Neg}, written C{~}: nothing here, fall through;
  - L{Fail}, written C{!}: stop, the request fails;
  - L{Empty}, written C{$}: a name that exists but has no instances.

Trees are immutable and hashable.  L{simplify} gives an equivalent, smaller
tree, L{show} the text form, and L{evaluate} picks one leaf for a request.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

import attrs

__all__ = [
    "NameTree",
    "Leaf",
    "Alt",
    "Union",
    "Weighted",
    "Neg",
    "Fail",
    "Empty",
    "RoutingFailure",
    "mapTree",
    "leaves",
    "simplify",
    "simplifyAlt",
    "simplifyUnion",
    "show",
    "evaluate",
]

T = TypeVar("T")


class _Special:
    """
    The type of the three leaf-less trees L{Neg}, L{Fail} and L{Empty}: each
    is a singleton, compared by identity.
    """

    __slots__ = ("name", "symbol")

    name: str
    symbol: str

    def __init__(self, name: str, symbol: str) -> None:
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "symbol", symbol)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"{self.name} is immutable")

    def __repr__(self) -> str:
        return self.name

    def __reduce__(self) -> str:
        # Pickles (and copies) back to the same singleton.
        return self.name


Neg = _Special("Neg", "~")
"""Negative: no destination here; an L{Alt} falls through to its next tree."""

Fail = _Special("Fail", "!")
"""Failure: the request fails, and an L{Alt} stops here."""

Empty = _Special("Empty", "$")
"""A destination that exists but has no instances."""


@attrs.frozen(cache_hash=True)
class Leaf(Generic[T]):
    """
    A single name.

    @ivar value: the name: a L{Path} in a dtab, a
        L{meshproxy.routing.delegate.BoundName} after delegation.
    """

    value: T


def _checkTrees(instance: object, attribute: attrs.Attribute, value: tuple) -> None:
    for tree in value:
        if not isinstance(tree, (Leaf, Alt, Union, _Special)):
            raise TypeError(f"{attribute.name} must hold name trees, got {tree!r}")


@attrs.frozen(cache_hash=True)
class Alt(Generic[T]):
    """
    Fail-over between trees, written C{a | b | c}: the first tree that
    resolves to something wins; L{Neg} and empty trees fall through to the
    next one, L{Fail} stops the search.

    @ivar trees: the alternatives, in order of preference (a tuple; any
        iterable is accepted).
    """

    trees: tuple = attrs.field(converter=tuple, validator=_checkTrees)


def _checkWeight(instance: object, attribute: attrs.Attribute, value: float) -> None:
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"weight must be a finite number >= 0, got {value!r}")


@attrs.frozen(cache_hash=True)
class Weighted(Generic[T]):
    """
    One branch of a L{Union}.

    @ivar weight: the branch's relative weight, a finite number >= 0
        (1.0 when a dtab does not say).
    @ivar tree: the branch.
    """

    weight: float = attrs.field(converter=float, validator=_checkWeight)
    tree: Any = attrs.field(validator=lambda i, a, v: _checkTrees(i, a, (v,)))

    defaultWeight = 1.0


def _checkWeighted(instance: object, attribute: attrs.Attribute, value: tuple) -> None:
    for branch in value:
        if not isinstance(branch, Weighted):
            raise TypeError(f"Union branches must be Weighted, got {branch!r}")


@attrs.frozen(cache_hash=True)
class Union(Generic[T]):
    """
    Load sharing between trees, written C{0.9*/a & 0.1*/b}: each request
    goes to one branch chosen at random in proportion to the weights of the
    branches that resolve to something.

    @ivar weighted: the branches, L{Weighted} values (a tuple; any iterable
        is accepted).
    """

    weighted: tuple = attrs.field(converter=tuple, validator=_checkWeighted)


NameTree = Leaf | Alt | Union | _Special
"""The type of any name tree (for annotations)."""


class RoutingFailure(Exception):
    """
    The rules sent the request to L{Fail} (C{!}): it must fail rather than
    be routed anywhere.
    """

    def __init__(self, message: str = "the routing rules say this name fails (!)") -> None:
        super().__init__(message)
        self.message = message


def mapTree(tree: Any, fn: Callable[[Any], Any]) -> Any:
    """
    Replace every leaf value, keeping the structure.

    @param tree: a name tree.
    @param fn: called with each leaf value, returns the new value.
    @return: a tree of the same shape with C{Leaf(fn(v))} for each
        C{Leaf(v)}.
    """
    cls = tree.__class__
    if cls is Leaf:
        return Leaf(fn(tree.value))
    if cls is Alt:
        return Alt(tuple(mapTree(t, fn) for t in tree.trees))
    if cls is Union:
        # (attrs' mypy plugin cannot type the converter tuple's argument)
        return Union(
            tuple(Weighted(w.weight, mapTree(w.tree, fn)) for w in tree.weighted)  # type: ignore[misc]
        )
    return tree


def leaves(tree: Any) -> Iterator[Any]:
    """
    The leaf values of a tree, left to right.

    @param tree: a name tree.
    @return: an iterator over the values of its L{Leaf} nodes.
    """
    cls = tree.__class__
    if cls is Leaf:
        yield tree.value
    elif cls is Alt:
        for t in tree.trees:
            yield from leaves(t)
    elif cls is Union:
        for w in tree.weighted:
            yield from leaves(w.tree)


def simplifyAlt(trees: Any) -> Any:
    """
    Combine already simplified trees as an L{Alt}: nested alternatives are
    flattened, L{Neg} branches dropped, branches after a L{Fail} dropped
    (evaluation never gets past it), later duplicates of a branch dropped
    (if a tree resolved to nothing once it will again).

    @param trees: simplified name trees, in order of preference.
    @return: an equivalent simplified tree: L{Neg} if nothing is left, the
        only branch if one is left, an L{Alt} otherwise.
    """
    kept: dict = {}
    stack = list(reversed(trees))
    while stack:
        tree = stack.pop()
        if tree is Neg:
            continue
        if tree.__class__ is Alt:
            stack.extend(reversed(tree.trees))
            continue
        if tree not in kept:
            kept[tree] = None
        if tree is Fail:
            break
    if not kept:
        return Neg
    if len(kept) == 1:
        return next(iter(kept))
    return Alt(tuple(kept))


def simplifyUnion(weighted: Any) -> Any:
    """
    Combine already simplified L{Weighted} branches as a L{Union}: a
    L{Fail} branch makes the whole union fail (as in Finagle), L{Neg} and
    L{Empty} branches are dropped, and identical branches merged (their
    weights added).

    @param weighted: L{Weighted} values whose trees are simplified.
    @return: an equivalent simplified tree: L{Fail} if any branch fails;
        L{Empty} if only empty branches were there, L{Neg} if no branch is
        left at all; the branch's tree if one is left; a L{Union}
        otherwise.
    """
    kept: dict = {}
    sawEmpty = False
    for branch in weighted:
        tree = branch.tree
        if tree is Fail:
            return Fail
        if tree is Neg:
            continue
        if tree is Empty:
            sawEmpty = True
            continue
        kept[tree] = kept.get(tree, 0.0) + branch.weight
    if not kept:
        return Empty if sawEmpty else Neg
    if len(kept) == 1:
        return next(iter(kept))
    # (attrs' mypy plugin cannot type the converter tuple's argument)
    return Union(tuple(Weighted(w, t) for t, w in kept.items()))  # type: ignore[misc]


def simplify(tree: Any) -> Any:
    """
    An equivalent tree, as small as can be told without evaluating it.  See
    L{simplifyAlt} and L{simplifyUnion} for the rules.

    @param tree: a name tree.
    @return: the simplified tree (C{simplify(simplify(t)) == simplify(t)}).
    """
    cls = tree.__class__
    if cls is Alt:
        return simplifyAlt([simplify(t) for t in tree.trees])
    if cls is Union:
        return simplifyUnion(
            [Weighted(w.weight, simplify(w.tree)) for w in tree.weighted]
        )
    return tree


_TOP, _ALT_BRANCH, _UNION_BRANCH = range(3)


def _formatWeight(weight: float) -> str:
    text = repr(float(weight))
    return text[:-2] if text.endswith(".0") else text


def show(tree: Any, showLeaf: Callable[[Any], str] = str) -> str:
    """
    The text form of a tree, in the syntax of dtabs: C{/a | /b},
    C{0.9*/a & 0.1*/b}, C{~}, C{!}, C{$}, with parentheses only where a
    nested tree needs them.  A weight of 1 is not written.

    @param tree: a name tree.
    @param showLeaf: turns a leaf value into text (C{str} by default, which
        is right for L{Path}s).
    @return: the text; for trees of paths read from a dtab, reading it
        back gives an equal tree.
    """
    return _show(tree, showLeaf, _TOP)


def _show(tree: Any, showLeaf: Callable[[Any], str], context: int) -> str:
    cls = tree.__class__
    if cls is Leaf:
        return showLeaf(tree.value)
    if cls is Alt:
        if not tree.trees:
            return Neg.symbol
        text = " | ".join(_show(t, showLeaf, _ALT_BRANCH) for t in tree.trees)
        return text if context == _TOP else f"({text})"
    if cls is Union:
        if not tree.weighted:
            return Neg.symbol
        parts = []
        for branch in tree.weighted:
            part = _show(branch.tree, showLeaf, _UNION_BRANCH)
            if branch.weight != Weighted.defaultWeight:
                part = f"{_formatWeight(branch.weight)}*{part}"
            parts.append(part)
        text = " & ".join(parts)
        return f"({text})" if context == _UNION_BRANCH else text
    return tree.symbol


def evaluate(
    tree: Any, isEmpty: Callable[[Any], bool], random: Callable[[], float]
) -> Any:
    """
    Choose the one leaf a request goes to, now.

      - L{Leaf}: its value, unless C{isEmpty(value)} (then nothing);
      - L{Alt}: the first branch that gives something (L{Neg} and empty
        branches fall through);
      - L{Union}: a weighted random choice among the branches that give
        something, weights renormalised over those; if they all weigh 0,
        a uniform choice among them;
      - L{Fail}: raises L{RoutingFailure};
      - L{Neg}, L{Empty}: nothing.

    Each union with two or more live branches calls C{random} exactly once,
    after evaluating its branches.

    @param tree: a name tree (usually from
        L{meshproxy.routing.delegate.delegate}).
    @param isEmpty: called with a leaf value; returns C{True} if it has no
        instances to send to right now (for example a namer that answered
        with an empty set).
    @param random: returns a float in [0, 1), e.g. C{random.random}.
    @return: the chosen leaf value, or C{None} if nothing is available.
    @raise RoutingFailure: if the evaluation reaches a L{Fail}.
    """
    cls = tree.__class__
    if cls is Leaf:
        value = tree.value
        return None if isEmpty(value) else value
    if cls is Alt:
        for branch in tree.trees:
            value = evaluate(branch, isEmpty, random)
            if value is not None:
                return value
        return None
    if cls is Union:
        return _evaluateUnion(tree, isEmpty, random)
    if tree is Fail:
        raise RoutingFailure()
    return None


def _evaluateUnion(tree: Union, isEmpty: Callable, random: Callable) -> Any:
    live = []
    total = 0.0
    for branch in tree.weighted:
        value = evaluate(branch.tree, isEmpty, random)
        if value is not None:
            live.append((branch.weight, value))
            total += branch.weight
    if not live:
        return None
    if len(live) == 1:
        return live[0][1]
    if total <= 0.0:
        index = int(random() * len(live))
        return live[min(index, len(live) - 1)][1]
    point = random() * total
    for weight, value in live:
        if point < weight:
            return value
        point -= weight
    # Rounding can leave point a hair over the last weight: pick the last
    # branch that can be picked at all.
    for weight, value in reversed(live):
        if weight > 0:
            return value
    raise AssertionError("unreachable")  # pragma: no cover
