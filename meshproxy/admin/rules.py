"""
Versioned routing rules for the admin API: read, replace with optimistic
concurrency, dry-run, history, rollback and persistence.

A L{RulesStore} sits in front of the rule table of one HTTP router
(L{IRuleTable<meshproxy.routing.table.IRuleTable>}). The table stays the
owner of the rules in force (C{rulesText}); the store adds a version
to them (the first 16 hex digits of the SHA-256 of the text, sent as the
C{ETag}), checks C{If-Match} and swaps the rules in one synchronous step,
keeps the last accepted texts, writes every accepted change to its state
file before it is applied, and records each change in the audit log.

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

import datetime
import difflib
import hashlib
import json
import os
import tempfile
from collections.abc import Collection
from typing import Any
from urllib.parse import quote

from twisted.logger import Logger

from meshproxy.routing.table import RulesError

__all__ = [
    "InvalidRules",
    "PersistError",
    "RulesStore",
    "StaleVersion",
    "UnknownVersion",
    "rulesVersion",
]

_log = Logger()

# A namespace of its own, so that operators can route rule changes to a
# separate observer (or grep them) without the rest of the admin API's log.
_audit = Logger(namespace="meshproxy.admin.audit")

_FORMAT = 1


def rulesVersion(text: str) -> str:
    """
    The version of a rules text: the first 16 hex digits of the SHA-256 of
    its UTF-8 encoding.

    @param text: the rules, exactly as applied.
    @return: 16 lowercase hex digits.
    """
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _isoTime(seconds: float) -> str:
    """
    Format a POSIX time as ISO 8601 in UTC, to the millisecond.
    """
    moment = datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class StaleVersion(Exception):
    """
    The caller's C{If-Match} does not name the version in force.

    @ivar current: the version in force.
    """

    def __init__(self, current: str) -> None:
        super().__init__(current)
        self.current = current

    def __str__(self) -> str:
        return f"stale version: the rules in force are version {self.current}"


class InvalidRules(RulesError):
    """
    Rules the router refuses: a syntax error or a reference it cannot
    resolve (an unknown namer prefix), with the message, line and column of
    L{RulesError}.
    """


class UnknownVersion(KeyError):
    """
    A rollback named a version that is not in the history.

    @ivar version: the version asked for.
    """

    def __init__(self, version: str) -> None:
        super().__init__(version)
        self.version = version

    def __str__(self) -> str:
        return f"no version {self.version!r} in the history"


class PersistError(Exception):
    """
    The state file could not be written; nothing was changed.
    """


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


def _diff(router: str, oldVersion: str, oldText: str, newVersion: str, newText: str) -> str:
    """
    A unified diff between two rules texts, labelled with their versions.
    """
    return "\n".join(
        difflib.unified_diff(
            oldText.splitlines(),
            newText.splitlines(),
            fromfile=f"{router}@{oldVersion}",
            tofile=f"{router}@{newVersion}",
            lineterm="",
        )
    )


class RulesStore:
    """
    The versioned rules of one router.

    Every method runs synchronously on the reactor thread: L{replace} checks
    the version, validates, persists and swaps without yielding, so two
    changes made against the same version cannot both succeed.

    @param router: the router (see the module docstring for what it needs).
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
        if historySize < 1:
            raise ValueError("historySize must be at least 1")
        self._router = router
        self._stateDir = stateDir
        self._clock = clock
        self._historySize = historySize
        self._configText = router.rulesText
        self._history: list[dict[str, str]] = []
        self._noteCurrent("config")

    @property
    def path(self) -> str | None:
        """
        The state file, or L{None} without persistence.
        """
        if self._stateDir is None:
            return None
        return os.path.join(
            self._stateDir, "rules-%s.json" % (quote(self._router.name, safe=""),)
        )

    def current(self) -> tuple[str, str]:
        """
        The rules in force.

        @return: C{(text, version)}.
        """
        text = self._router.rulesText
        return text, rulesVersion(text)

    def history(self) -> list[dict[str, str]]:
        """
        The accepted versions, newest first, the one in force included.

        @return: at most C{historySize} dicts C{{"version", "time", "who",
            "text"}}, C{time} in ISO 8601 UTC; C{who} is C{"config"} for
            rules that came from the config file (or were set on the router
            without this store).
        """
        self._noteCurrent("config")
        return [dict(entry) for entry in self._history]

    def validate(self, text: str) -> Any:
        """
        Check rules without applying them.

        @param text: the rules.
        @return: the router's parsed rules.
        @raise InvalidRules: if the router refuses them.
        """
        try:
            return self._router.validateRules(text)
        except ValueError as e:
            raise _invalid(e) from e

    def replace(self, text: str, ifMatch: str | Collection[str], who: str) -> tuple[str, str]:
        """
        Replace the rules, if the caller saw the version in force.

        The check, the validation, the write of the state file and the swap
        happen in one synchronous step. Replacing the rules with the same
        text changes nothing and records nothing.

        @param text: the new rules.
        @param ifMatch: the version the caller based its change on, C{"*"}
            for whatever is in force, or a collection of versions (any of
            them may be in force).
        @param who: who asks, for the history and the audit log.
        @return: C{(previousVersion, newVersion)}.
        @raise StaleVersion: if C{ifMatch} does not match the version in
            force; nothing changed.
        @raise InvalidRules: if the router refuses C{text}; nothing changed.
        @raise PersistError: if the state file could not be written;
            nothing changed.
        """
        self._noteCurrent("config")
        oldText, oldVersion = self.current()
        if not _matches(ifMatch, oldVersion):
            raise StaleVersion(oldVersion)
        dtab = self.validate(text)
        newVersion = rulesVersion(text)
        if newVersion == oldVersion and text == oldText:
            _log.info(
                "rules of router {router} unchanged (version {version}), "
                "asked by {who}",
                router=self._router.name, version=oldVersion, who=who,
            )
            return oldVersion, newVersion
        now = self._clock.seconds()
        entry = {"version": newVersion, "time": _isoTime(now), "who": who, "text": text}
        history = ([entry] + self._history)[: self._historySize]
        # Written before the swap: a change that cannot be kept is not made,
        # so a restart always comes back with what was last accepted.
        self._save(text, newVersion, history)
        self._router.setRules(dtab, text)
        self._history = history
        _audit.info(
            "rules of router {router} changed by {who} at {when}: "
            "{old} -> {new}\n{diff}",
            router=self._router.name,
            who=who,
            when=entry["time"],
            old=oldVersion,
            new=newVersion,
            diff=_diff(self._router.name, oldVersion, oldText, newVersion, text),
        )
        return oldVersion, newVersion

    def rollback(self, version: str, ifMatch: str | Collection[str], who: str) -> tuple[str, str]:
        """
        Apply again the text of a version in the history, as a new change.

        @param version: a version listed by L{history}.
        @param ifMatch: as for L{replace}.
        @param who: as for L{replace}.
        @return: C{(previousVersion, newVersion)}; C{newVersion} is
            C{version}.
        @raise UnknownVersion: if C{version} is not in the history.
        @raise StaleVersion: as for L{replace}.
        @raise InvalidRules: if that text is no longer valid (the namer it
            names was removed from the config, say).
        @raise PersistError: as for L{replace}.
        """
        for entry in self._history:
            if entry["version"] == version:
                return self.replace(entry["text"], ifMatch, who)
        raise UnknownVersion(version)

    def dryRun(self, text: str) -> dict[str, Any]:
        """
        Validate rules and show where the names seen in recent traffic would
        go under them, without applying them.

        @param text: the proposed rules.
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

    def load(self) -> bool:
        """
        At startup: restore the rules last accepted, if the state file holds
        rules the router accepts; otherwise keep the config's rules and log
        why. A readable history is kept either way.

        @return: whether saved rules were restored.
        """
        path = self.path
        name = self._router.name
        if path is None:
            return False
        try:
            with open(path, "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            _log.info(
                "no saved rules for router {router} in {path}: using the config's",
                router=name, path=path,
            )
            return False
        except OSError as e:
            _log.warn(
                "cannot read the saved rules of router {router} from {path} "
                "({error}): using the config's",
                router=name, path=path, error=e,
            )
            return False
        try:
            state = json.loads(raw.decode("utf-8"))
            text, history, configVersion = _parseState(state, name)
        except (ValueError, UnicodeDecodeError) as e:
            _log.warn(
                "the saved rules of router {router} in {path} are unreadable "
                "({error}): using the config's",
                router=name, path=path, error=e,
            )
            return False
        self._history = history[: self._historySize]
        try:
            dtab = self.validate(text)
        except InvalidRules as e:
            _log.warn(
                "the saved rules of router {router} (version {version}) are no "
                "longer valid ({error}): using the config's",
                router=name, version=rulesVersion(text), error=str(e),
            )
            self._noteCurrent("config")
            return False
        ownConfig = rulesVersion(self._configText)
        if configVersion is not None and configVersion != ownConfig:
            _log.warn(
                "the config's rules of router {router} changed since the saved "
                "rules were accepted; keeping the saved rules (version "
                "{version}): change them through the admin API",
                router=name, version=rulesVersion(text),
            )
        self._router.setRules(dtab, text)
        self._noteCurrent("saved")
        _log.info(
            "restored rules version {version} of router {router} from {path}",
            router=name, version=rulesVersion(text), path=path,
        )
        return True

    def _noteCurrent(self, who: str) -> None:
        """
        Make sure the rules in force head the history.
        """
        text, version = self.current()
        if self._history and self._history[0]["version"] == version:
            return
        entry = {
            "version": version,
            "time": _isoTime(self._clock.seconds()),
            "who": who,
            "text": text,
        }
        self._history = ([entry] + self._history)[: self._historySize]

    def _save(self, text: str, version: str, history: list[dict[str, str]]) -> None:
        """
        Write the state file atomically and durably: a temporary file in the
        same directory, fsync, rename over the old one, fsync the directory.

        @raise PersistError: if any step fails; the old file is untouched.
        """
        path = self.path
        if path is None:
            return
        state = {
            "format": _FORMAT,
            "router": self._router.name,
            "version": version,
            "text": text,
            "configVersion": rulesVersion(self._configText),
            "history": history,
        }
        data = json.dumps(state, indent=1).encode("utf-8") + b"\n"
        directory = os.path.dirname(path)
        tmp = None
        try:
            os.makedirs(directory, exist_ok=True)
            fd, tmp = tempfile.mkstemp(
                dir=directory, prefix="." + os.path.basename(path) + ".", suffix=".tmp"
            )
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
            tmp = None
            _fsyncDirectory(directory)
        except OSError as e:
            raise PersistError(f"cannot save the rules to {path}: {e.strerror or e}") from e
        finally:
            if tmp is not None:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass


def _matches(ifMatch: str | Collection[str], version: str) -> bool:
    if isinstance(ifMatch, str):
        return ifMatch == "*" or ifMatch == version
    return "*" in ifMatch or version in ifMatch


def _fsyncDirectory(directory: str) -> None:
    """
    Make a rename in C{directory} durable (where the platform allows).
    """
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)
    try:
        fd = os.open(directory, flags)
    except OSError:
        # Windows cannot open a directory; its renames are durable enough.
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _parseState(state: Any, router: str) -> tuple[str, list[dict[str, str]], str | None]:
    """
    Check the shape of a state file.

    @return: C{(text, history, configVersion)}; history entries whose text
        does not match their version are dropped.
    @raise ValueError: if the file is not a state file of C{router}.
    """
    if not isinstance(state, dict):
        raise ValueError("not a JSON object")
    if state.get("format") != _FORMAT:
        raise ValueError(f"unknown format {state.get('format')!r}")
    if state.get("router") != router:
        raise ValueError(f"saved for router {state.get('router')!r}")
    text = state.get("text")
    if not isinstance(text, str):
        raise ValueError("no rules text")
    if state.get("version") != rulesVersion(text):
        raise ValueError("the rules text does not match its version")
    configVersion = state.get("configVersion")
    if not isinstance(configVersion, str):
        configVersion = None
    history = []
    entries = state.get("history")
    for entry in entries if isinstance(entries, list) else ():
        if not isinstance(entry, dict):
            continue
        keys = ("version", "time", "who", "text")
        fields = {key: value for key in keys if isinstance(value := entry.get(key), str)}
        if len(fields) != len(keys):
            # One is missing or not a string.
            continue
        if fields["version"] != rulesVersion(fields["text"]):
            continue
        history.append(fields)
    return text, history, configVersion
