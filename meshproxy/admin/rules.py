"""
Versioned routing rules for the admin API: read, replace with optimistic
concurrency, dry-run, history, rollback and persistence.

A L{RulesStore} is the L{VersionedStore<meshproxy.admin.versioned.VersionedStore>}
of the rule table of one HTTP router
(L{IRuleTable<meshproxy.routing.table.IRuleTable>}): the table stays the
owner of the rules in force (C{rulesText}), the versioned store adds the
version (the first 16 hex digits of the SHA-256 of the text, sent as the
C{ETag}), C{If-Match}, the history, the state file and the audit log. This
module adds what only rules have: their validation errors with a line and
a column, and the dry run.

What the store needs from the table (named C{router} below)::

    router.name: str
    router.rulesText: str                       # the rules currently applied
    router.validateRules(text) -> dtab          # ValueError (.line, .column) if bad
    router.setRules(dtab, text) -> None         # atomic swap
    router.recentNames() -> list[str]           # logical names seen recently
    router.describe(dtab, name) -> str          # where a name goes under dtab

The state file, C{rules-<router>.json} in the state directory, holds the
text in force and the history (newest first)::

    {"format": 1, "router": "web", "version": "…", "text": "…",
     "configVersion": "…", "history": [{"version", "time", "who", "text"}…]}
"""

from __future__ import annotations

from typing import Any

from zope.interface import implementer

from meshproxy.admin.versioned import (
    InvalidValue,
    IVersioned,
    PersistError,
    StaleVersion,
    UnknownVersion,
    VersionedStore,
    textVersion,
)
from meshproxy.routing.table import RulesError

__all__ = [
    "InvalidRules",
    "PersistError",
    "RulesStore",
    "StaleVersion",
    "UnknownVersion",
    "rulesVersion",
]


def rulesVersion(text: str) -> str:
    """
    The version of a rules text: the first 16 hex digits of the SHA-256 of
    its UTF-8 encoding.

    @param text: the rules, exactly as applied.
    @return: 16 lowercase hex digits.
    """
    return textVersion(text)


class InvalidRules(RulesError, InvalidValue):
    """
    Rules the router refuses: a syntax error or a reference it cannot
    resolve (an unknown namer prefix), with the message, line and column of
    L{RulesError}.
    """

    def details(self) -> dict[str, Any]:
        """
        C{{"error", "line", "column"}}, the position 1-based or L{None}.
        """
        return {"error": self.message, "line": self.line, "column": self.column}


def _invalid(error: ValueError) -> InvalidRules:
    """
    Turn a router's validation error (a L{DtabSyntaxError}, a C{RulesError}
    or any other L{ValueError}) into L{InvalidRules}.
    """
    message = getattr(error, "message", None)
    if not isinstance(message, str):
        message = error.args[0] if error.args and isinstance(error.args[0], str) else str(error)
    return InvalidRules(
        message, getattr(error, "line", None), getattr(error, "column", None)
    )


@implementer(IVersioned)
class _Rules:
    """
    The rules of one rule table, as a L{VersionedStore} sees them: the
    text is its own canonical form.
    """

    kind = "rules"
    field = "text"

    def __init__(self, table: Any) -> None:
        self.table = table
        self.router = table.name

    def current(self) -> str:
        return str(self.table.rulesText)

    def canonical(self, value: Any) -> str:
        if not isinstance(value, str):
            raise ValueError("the rules are not text")
        return value

    def validate(self, value: Any) -> tuple[Any, str]:
        try:
            return self.table.validateRules(value), value
        except ValueError as e:
            raise _invalid(e) from e

    def apply(self, prepared: Any, value: Any) -> None:
        self.table.setRules(prepared, value)

    def show(self, value: Any) -> str:
        return str(value)


class RulesStore(VersionedStore):
    """
    The versioned rules of one router (see L{VersionedStore}), and their
    dry run.

    @param router: the rule table (see the module docstring for what it
        needs).
    @param stateDir: the directory of the state file, or L{None} to keep
        nothing on disk. Created on the first write if missing.
    @param clock: an C{IReactorTime}, for the times in the history.
    @param historySize: how many accepted versions to keep, at least 1.
    """

    def __init__(
        self,
        router: Any,
        *,
        stateDir: str | None,
        clock: Any,
        historySize: int = 50,
    ) -> None:
        self._router = router
        super().__init__(_Rules(router), stateDir=stateDir, clock=clock, historySize=historySize)

    def dryRun(self, text: str, names: list[str] | None = None) -> dict[str, Any]:
        """
        Validate rules and show where the names seen in recent traffic would
        go under them, without applying them.

        @param text: the proposed rules.
        @param names: the names to check, most recent first; L{None}: the
            router's own C{recentNames()} (with worker processes, the
            admin API gives those of the workers).
        @return: C{{"valid": True, "checked": n, "changes": [{"name",
            "old", "new"}…]}}: the names (of the C{n} recently seen) whose
            destination would change, most recently seen first.
        @raise InvalidRules: if the router refuses C{text}.
        """
        proposed = self.validate(text)
        currentText, _ = self.current()
        try:
            inForce = self._router.validateRules(currentText)
        except ValueError:
            inForce = None
        if names is None:
            names = list(self._router.recentNames())
        changes = []
        for name in names:
            old = "invalid rules" if inForce is None else self._describe(inForce, name)
            new = self._describe(proposed, name)
            if old != new:
                changes.append({"name": name, "old": old, "new": new})
        return {"valid": True, "checked": len(names), "changes": changes}

    def _describe(self, dtab: Any, name: str) -> str:
        # One odd name must not hide the answer for the others.
        try:
            return self._router.describe(dtab, name)
        except Exception as e:
            return f"error: {e}"
