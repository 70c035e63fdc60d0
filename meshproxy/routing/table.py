"""
A router's rules in force: the dtab, the text it came from, and a cache of
where each logical name goes under it.

The rules are an immutable L{Dtab} swapped whole (L{RuleTable.setRules}):
a request routes with either the old table or the new one, never a mix.
Delegation results are cached per logical name for the rules in force;
the cache goes with the rules it was computed for.
"""

from __future__ import annotations

from collections.abc import Sequence

from zope.interface import Attribute, Interface, implementer

from meshproxy.routing.delegate import DelegationError, delegate, explain, showBound
from meshproxy.routing.dtab import Dtab
from meshproxy.routing.nametree import NameTree, leaves
from meshproxy.routing.path import Path

__all__ = [
    "IRuleTable",
    "InetNotAllowed",
    "MAX_CACHED_NAMES",
    "RuleTable",
    "RulesError",
    "checkRules",
]

#: Bound on the cache of delegation results (names come from requests).
MAX_CACHED_NAMES = 10000

#: Names routed just before the last rules change, kept for dry runs.
MAX_RECENT_NAMES = 200


class RulesError(ValueError):
    """
    Rules that parse but cannot be used by this router (for example a
    namer prefix no namer owns).

    @ivar line: the 1-based line of the problem, or L{None}.
    @ivar column: the 1-based column, or L{None}.
    """

    def __init__(self, message: str, line: int | None = None, column: int | None = None) -> None:
        ValueError.__init__(self, message)
        self.message = message
        self.line = line
        self.column = column

    def __str__(self) -> str:
        if self.line is None:
            return self.message
        # A position is a line and a column, given together.
        return "%s at line %d, column %d" % (self.message, self.line, self.column)  # type: ignore[str-format]


class InetNotAllowed(RulesError):
    """
    Rules that lead to a C{/$/} name (an address) where only names owned
    by the configured namers are allowed.
    """


def checkRules(text: str, prefixes: Sequence[Path], allowInet: bool = True) -> Dtab:
    """
    Parse rules and check that every C{/#/} name they lead to belongs to
    one of C{prefixes}.

    @param text: dtab text.
    @param prefixes: the namer prefixes the rules may use.
    @param allowInet: whether the rules may lead to C{/$/} names
        (C{/$/inet/host/port}: any address). Rules from the config and, by
        default, the admin API may; overrides sent by callers may not,
        unless C{trust.allowInet} says so.
    @return: the parsed L{Dtab}.
    @raise DtabSyntaxError: on a syntax error.
    @raise RulesError: on an unknown namer prefix.
    @raise InetNotAllowed: on a C{/$/} name when C{allowInet} is false.
    """
    dtab = Dtab.read(text)
    known = tuple(prefixes)
    for dentry in dtab.dentries:
        for path in leaves(dentry.dst):
            if not allowInet and len(path) >= 1 and path.segments[0] == "$":
                line, column = _locate(text, str(path))
                raise InetNotAllowed(
                    "%s leads to an address, not to a namer's name (allowed: %s)"
                    % (path, ", ".join(sorted(str(p) for p in known)) or "none"),
                    line,
                    column,
                )
            if len(path) >= 2 and path.segments[0] == "#":
                if not any(path.startswith(p) for p in known):
                    line, column = _locate(text, str(path))
                    raise RulesError(
                        "unknown namer prefix %s (namers: %s)"
                        % (
                            str(path.take(2)),
                            ", ".join(sorted(str(p) for p in known if str(p).startswith("/#")))
                            or "none",
                        ),
                        line,
                        column,
                    )
    return dtab


def _locate(text: str, needle: str) -> tuple[int | None, int | None]:
    """
    The 1-based line and column of C{needle} in C{text}, or (None, None).
    """
    index = text.find(needle)
    if index < 0:
        return None, None
    line = text.count("\n", 0, index) + 1
    column = index - (text.rfind("\n", 0, index) + 1) + 1
    return line, column


class IRuleTable(Interface):
    """
    The rules of one router, as the admin API's rules store sees them.
    """

    name = Attribute("The router's name.")
    rulesText = Attribute("The rules in force, as written.")

    def validateRules(text: str) -> Dtab:
        """
        Parse rules and check that this router can use them.

        @raise DtabSyntaxError: on a syntax error (with line and column).
        @raise RulesError: when the router cannot use them.
        """

    def setRules(dtab: Dtab, text: str) -> None:
        """
        Replace the rules in force, whole.
        """

    def recentNames() -> list[str]:
        """
        The logical names routed recently, most recent first.
        """

    def describe(dtab: Dtab, name: str) -> str:
        """
        Where a logical name goes under C{dtab}, as text.
        """


@implementer(IRuleTable)
class RuleTable:
    """
    The rules of one router and the delegation cache for them.

    @ivar name: the router's name.
    @ivar dtab: the rules in force.
    @ivar rulesText: the text they came from.
    @ivar prefixes: the namer prefixes the rules may lead to.
    """

    def __init__(
        self, name: str, prefixes: Sequence[Path], text: str, *, allowInet: bool = True
    ) -> None:
        """
        @param name: the router's name.
        @param prefixes: the configured namers' prefixes.
        @param text: the rules from the config (always allowed to lead to
            addresses: the operator wrote them).
        @param allowInet: whether rules replaced later (L{validateRules})
            may lead to C{/$/} addresses.
        @raise DtabSyntaxError: on a syntax error in C{text}.
        @raise RulesError: when C{text} names an unknown namer.
        """
        self.name = name
        self.prefixes = tuple(prefixes)
        self._allowInet = allowInet
        self.dtab = checkRules(text, self.prefixes)
        self.rulesText = text
        self._trees: dict[Path, NameTree] = {}
        self._recent: dict[Path, None] = {}

    def resolve(self, path: Path) -> NameTree:
        """
        Where C{path} goes under the rules in force (cached).

        @raise DelegationError: on a loop or too many rewrites.
        """
        tree = self._trees.get(path)
        if tree is None:
            tree = delegate(self.dtab, path, self.prefixes)
            if len(self._trees) >= MAX_CACHED_NAMES:
                self._trees.clear()
            self._trees[path] = tree
        return tree

    def resolveWith(self, override: Dtab, path: Path) -> NameTree:
        """
        Where C{path} goes under the rules in force followed by
        C{override} (not cached: one request's rules).

        @raise DelegationError: on a loop or too many rewrites.
        """
        return delegate(self.dtab + override, path, self.prefixes)

    def forget(self) -> None:
        """
        Drop the cached results (after bound names were dropped).
        """
        if self._trees:
            self._trees = {}

    def validateRules(self, text: str) -> Dtab:
        """
        See L{IRuleTable.validateRules}.

        @raise InetNotAllowed: when the rules lead to an address and the
            table does not allow it (C{admin.rulesAllowInet: false}).
        """
        return checkRules(text, self.prefixes, allowInet=self._allowInet)

    def setRules(self, dtab: Dtab, text: str) -> None:
        """
        See L{IRuleTable.setRules}. The swap is one assignment of an
        immutable value (and of a fresh cache): a request routes with
        either the old table or the new one.
        """
        recent = dict(self._recent)
        recent.update(dict.fromkeys(self._trees))
        while len(recent) > MAX_RECENT_NAMES:
            del recent[next(iter(recent))]
        self._recent = recent
        self.dtab = dtab
        self.rulesText = text
        self._trees = {}

    def recentNames(self) -> list[str]:
        """
        See L{IRuleTable.recentNames}: the names routed under the current
        rules and just before the last change (at most L{MAX_CACHED_NAMES}
        plus L{MAX_RECENT_NAMES}), every one of them, so that a dry run sees
        all the traffic the cache has seen, not a sample.
        """
        names = list(dict.fromkeys(list(self._recent) + list(self._trees)))
        names.reverse()
        return [str(p) for p in names]

    def describe(self, dtab: Dtab, name: str) -> str:
        """
        See L{IRuleTable.describe}.

        @return: e.g. C{"/#/fs/users"}, C{"~"} (nowhere), or C{"error: ..."}.
        """
        try:
            return showBound(delegate(dtab, Path.read(name), self.prefixes))
        except (DelegationError, ValueError) as e:
            return "error: %s" % (e,)

    def explainSteps(self, path: Path) -> dict:
        """
        Every delegation step for C{path} under the rules in force.
        """
        return explain(self.dtab, path, self.prefixes)
