"""
Versioned values of a router for the admin API: read, replace with
optimistic concurrency, history, rollback, persistence and the audit log.

A L{VersionedStore} sits in front of one value a router keeps in force
(its routing rules, its access policy), seen through an L{IVersioned}
adapter that knows how to read, validate and swap that value. The store
adds what every such value needs the same way:

 - a version: the first 16 hex digits of the SHA-256 of the value's
   canonical text (L{IVersioned.canonical}), sent as the C{ETag};
 - C{If-Match}: a change names the version it is based on, checked,
   validated, persisted and swapped in one synchronous step;
 - the history of the accepted values (newest first), and rollback to one
   of them as a new change;
 - a state file, C{<kind>-<router>.json} in the state directory, written
   atomically before the change is applied and restored at startup (it
   wins over the config's value);
 - a line per change in the audit log (namespace C{meshproxy.admin.audit}),
   with who, both versions and a unified diff.

The state file holds the value in force and the history::

    {"format": 1, "router": "web", "version": "…", "<field>": …,
     "configVersion": "…", "history": [{"version", "time", "who", "<field>"}…]}

where C{<field>} is L{IVersioned.field} (C{"text"} for the rules).
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
from zope.interface import Attribute, Interface

__all__ = [
    "IVersioned",
    "InvalidValue",
    "PersistError",
    "StaleVersion",
    "UnknownVersion",
    "VersionedStore",
    "textVersion",
]

_log = Logger()

# A namespace of its own, so that operators can route changes to a separate
# observer (or grep them) without the rest of the admin API's log.
_audit = Logger(namespace="meshproxy.admin.audit")

_FORMAT = 1


def textVersion(text: str) -> str:
    """
    The version of a value whose canonical text is C{text}: the first 16
    hex digits of the SHA-256 of its UTF-8 encoding.

    @param text: the canonical text.
    @return: 16 lowercase hex digits.
    """
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _isoTime(seconds: float) -> str:
    """
    Format a POSIX time as ISO 8601 in UTC, to the millisecond.
    """
    moment = datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class IVersioned(Interface):
    """
    One value of one router that a L{VersionedStore} versions: what it is
    called, and how it is read, checked and swapped.

    Values are JSON-ready (text, or a JSON object); a value given to the
    store is validated by L{validate}, which also gives its canonical form:
    the form kept in force, in the history and in the state file.
    """

    router = Attribute("The router's name (str).")

    kind = Attribute(
        'What the value is, in one lowercase word for messages and for the state '
        'file\'s name: "rules", "policy".'
    )

    field = Attribute(
        'The key of the value in the state file and in history entries: "text" '
        'for the rules, "policy" for the policy.'
    )

    def current() -> Any:
        """
        The value in force, in canonical form.
        """

    def canonical(value: Any) -> str:
        """
        The text a canonical value is versioned by.

        @raise ValueError: if C{value} is not of this kind's type at all (a
            state file edited by hand).
        """

    def validate(value: Any) -> tuple[Any, Any]:
        """
        Check a value without applying it.

        @return: C{(prepared, canonicalValue)}: what L{apply} takes, and the
            value in canonical form.
        @raise InvalidValue: if the router cannot use it.
        """

    def apply(prepared: Any, value: Any) -> None:
        """
        Put a validated value in force, at once and whole.

        @param prepared: what L{validate} gave for C{value}.
        @param value: the value in canonical form.
        """

    def show(value: Any) -> str:
        """
        The value as lines of text, for the diff in the audit log.
        """


class InvalidValue(ValueError):
    """
    A value the router refuses. Subclasses say how the admin API tells it
    (L{details}).
    """

    def details(self) -> dict[str, Any]:
        """
        The JSON body of the admin API's 400 answer.
        """
        return {"error": str(self)}


class StaleVersion(Exception):
    """
    The caller's C{If-Match} does not name the version in force.

    @ivar current: the version in force.
    @ivar kind: what was versioned (C{"rules"}, C{"policy"}).
    """

    def __init__(self, current: str, kind: str = "value") -> None:
        super().__init__(current)
        self.current = current
        self.kind = kind

    def __str__(self) -> str:
        return f"stale version: the {self.kind} in force is version {self.current}"


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


DIFF_INPUT_LINES = 2000
"""
Above this many lines in the old and new values together, a change's log
line says how many lines each has instead of a diff: finding a diff costs
time on the reactor that grows faster than the values do (about 15 ms for
2,000 lines, 2 s for 80,000 short lines), and the whole value is in the
history anyway.
"""

DIFF_LINES = 200
"""At most this many lines of a diff are logged; the rest are counted."""

DIFF_LINE_LENGTH = 300
"""A longer line of a diff is logged cut to this many characters."""


def _clip(line: str) -> str:
    """
    C{line}, cut to L{DIFF_LINE_LENGTH} characters with the number cut off.
    """
    if len(line) <= DIFF_LINE_LENGTH:
        return line
    return f"{line[:DIFF_LINE_LENGTH]}... ({len(line) - DIFF_LINE_LENGTH} more characters)"


def _diff(router: str, oldVersion: str, oldText: str, newVersion: str, newText: str) -> str:
    """
    A unified diff between two values shown as text, labelled with their
    versions, for a log line: bounded in the time it takes and in its size
    (see L{DIFF_INPUT_LINES}, L{DIFF_LINES} and L{DIFF_LINE_LENGTH}).
    """
    oldLines = oldText.splitlines()
    newLines = newText.splitlines()
    if len(oldLines) + len(newLines) > DIFF_INPUT_LINES:
        return (
            f"(no diff: {len(oldLines)} lines before and {len(newLines)} after, more than"
            f" {DIFF_INPUT_LINES} together; the history has both)"
        )
    lines = [
        _clip(line)
        for line in difflib.unified_diff(
            oldLines,
            newLines,
            fromfile=f"{router}@{oldVersion}",
            tofile=f"{router}@{newVersion}",
            lineterm="",
        )
    ]
    if len(lines) > DIFF_LINES:
        lines[DIFF_LINES:] = [f"... ({len(lines) - DIFF_LINES} more lines)"]
    return "\n".join(lines)


class VersionedStore:
    """
    The versioned value of one router (see the module docstring).

    Every method runs synchronously on the reactor thread: L{replace} checks
    the version, validates, persists and swaps without yielding, so two
    changes made against the same version cannot both succeed.

    @param subject: the L{IVersioned} value.
    @param stateDir: the directory of the state file, or L{None} to keep
        nothing on disk. Created on the first write if missing.
    @param clock: an C{IReactorTime}, for the times in the history.
    @param historySize: how many accepted versions to keep, at least 1.
    """

    def __init__(
        self,
        subject: IVersioned,
        *,
        stateDir: str | None,
        clock: Any,
        historySize: int = 50,
    ) -> None:
        if historySize < 1:
            raise ValueError("historySize must be at least 1")
        self._subject = subject
        self._stateDir = stateDir
        self._clock = clock
        self._historySize = historySize
        self._configValue = subject.current()
        self._history: list[dict[str, Any]] = []
        self._noteCurrent("config")

    @property
    def kind(self) -> str:
        """
        What this store versions (C{"rules"}, C{"policy"}).
        """
        return str(self._subject.kind)

    @property
    def path(self) -> str | None:
        """
        The state file, or L{None} without persistence.
        """
        if self._stateDir is None:
            return None
        return os.path.join(
            self._stateDir,
            "%s-%s.json" % (self._subject.kind, quote(self._subject.router, safe="")),
        )

    def version(self, value: Any) -> str:
        """
        The version of a canonical value.

        @raise ValueError: if C{value} is not of this store's kind.
        """
        return textVersion(self._subject.canonical(value))

    def current(self) -> tuple[Any, str]:
        """
        The value in force.

        @return: C{(value, version)}.
        """
        value = self._subject.current()
        return value, self.version(value)

    def history(self) -> list[dict[str, Any]]:
        """
        The accepted versions, newest first, the one in force included.

        @return: at most C{historySize} dicts C{{"version", "time", "who",
            field}} (C{field} is the subject's, C{"text"} for the rules),
            C{time} in ISO 8601 UTC; C{who} is C{"config"} for a value that
            came from the config file (or was set on the router without
            this store).
        """
        self._noteCurrent("config")
        return [dict(entry) for entry in self._history]

    def validate(self, value: Any) -> Any:
        """
        Check a value without applying it.

        @return: what the subject prepared of it.
        @raise InvalidValue: if the router refuses it.
        """
        return self._subject.validate(value)[0]

    def replace(self, value: Any, ifMatch: str | Collection[str], who: str) -> tuple[str, str]:
        """
        Replace the value, if the caller saw the version in force.

        The check, the validation, the write of the state file and the swap
        happen in one synchronous step. Replacing the value with one whose
        canonical form is the same changes nothing and records nothing.

        @param value: the new value.
        @param ifMatch: the version the caller based its change on, C{"*"}
            for whatever is in force, or a collection of versions (any of
            them may be in force).
        @param who: who asks, for the history and the audit log.
        @return: C{(previousVersion, newVersion)}.
        @raise StaleVersion: if C{ifMatch} does not match the version in
            force; nothing changed.
        @raise InvalidValue: if the router refuses C{value}; nothing changed.
        @raise PersistError: if the state file could not be written;
            nothing changed.
        """
        subject = self._subject
        self._noteCurrent("config")
        oldValue, oldVersion = self.current()
        if not _matches(ifMatch, oldVersion):
            raise StaleVersion(oldVersion, subject.kind)
        prepared, value = subject.validate(value)
        newVersion = self.version(value)
        if newVersion == oldVersion and value == oldValue:
            _log.info(
                "{kind} of router {router} unchanged (version {version}), asked by {who}",
                kind=subject.kind, router=subject.router, version=oldVersion, who=who,
            )
            return oldVersion, newVersion
        now = self._clock.seconds()
        entry = {"version": newVersion, "time": _isoTime(now), "who": who, subject.field: value}
        history = ([entry] + self._history)[: self._historySize]
        # Written before the swap: a change that cannot be kept is not made,
        # so a restart always comes back with what was last accepted.
        self._save(value, newVersion, history)
        subject.apply(prepared, value)
        self._history = history
        _audit.info(
            "{kind} of router {router} changed by {who} at {when}: {old} -> {new}\n{diff}",
            kind=subject.kind,
            router=subject.router,
            who=who,
            when=entry["time"],
            old=oldVersion,
            new=newVersion,
            diff=_diff(
                subject.router, oldVersion, subject.show(oldValue), newVersion, subject.show(value)
            ),
        )
        return oldVersion, newVersion

    def rollback(self, version: str, ifMatch: str | Collection[str], who: str) -> tuple[str, str]:
        """
        Apply again the value of a version in the history, as a new change.

        @param version: a version listed by L{history}.
        @param ifMatch: as for L{replace}.
        @param who: as for L{replace}.
        @return: C{(previousVersion, newVersion)}; C{newVersion} is
            C{version}.
        @raise UnknownVersion: if C{version} is not in the history.
        @raise StaleVersion: as for L{replace}.
        @raise InvalidValue: if that value is no longer valid (the namer the
            rules name was removed from the config, say).
        @raise PersistError: as for L{replace}.
        """
        for entry in self._history:
            if entry["version"] == version:
                return self.replace(entry[self._subject.field], ifMatch, who)
        raise UnknownVersion(version)

    def load(self) -> bool:
        """
        At startup: restore the value last accepted, if the state file holds
        one the router accepts; otherwise keep the config's and log why. A
        readable history is kept either way.

        @return: whether a saved value was restored.
        """
        subject = self._subject
        path = self.path
        fields = {"kind": subject.kind, "router": subject.router, "path": path}
        if path is None:
            return False
        try:
            with open(path, "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            _log.info(
                "no saved {kind} for router {router} in {path}: using the config's", **fields
            )
            return False
        except OSError as e:
            _log.warn(
                "cannot read the saved {kind} of router {router} from {path} "
                "({error}): using the config's",
                error=e, **fields,
            )
            return False
        try:
            state = json.loads(raw.decode("utf-8"))
            value, history, configVersion = self._parseState(state)
        except (ValueError, UnicodeDecodeError) as e:
            _log.warn(
                "the saved {kind} of router {router} in {path} is unreadable "
                "({error}): using the config's",
                error=e, **fields,
            )
            return False
        self._history = history[: self._historySize]
        version = self.version(value)
        try:
            prepared, value = subject.validate(value)
        except InvalidValue as e:
            _log.warn(
                "the saved {kind} of router {router} (version {version}) is no longer "
                "valid ({error}): using the config's",
                version=version, error=str(e), **fields,
            )
            self._noteCurrent("config")
            return False
        if configVersion is not None and configVersion != self.version(self._configValue):
            _log.warn(
                "the config's {kind} of router {router} changed since the saved {kind} "
                "was accepted; keeping the saved {kind} (version {version}): change it "
                "through the admin API",
                version=version, **fields,
            )
        subject.apply(prepared, value)
        self._noteCurrent("saved")
        _log.info(
            "restored {kind} version {version} of router {router} from {path}",
            version=self.version(value), **fields,
        )
        return True

    def _noteCurrent(self, who: str) -> None:
        """
        Make sure the value in force heads the history.
        """
        value, version = self.current()
        if self._history and self._history[0]["version"] == version:
            return
        entry = {
            "version": version,
            "time": _isoTime(self._clock.seconds()),
            "who": who,
            self._subject.field: value,
        }
        self._history = ([entry] + self._history)[: self._historySize]

    def _save(self, value: Any, version: str, history: list[dict[str, Any]]) -> None:
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
            "router": self._subject.router,
            "version": version,
            self._subject.field: value,
            "configVersion": self.version(self._configValue),
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
            raise PersistError(
                f"cannot save the {self._subject.kind} to {path}: {e.strerror or e}"
            ) from e
        finally:
            if tmp is not None:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass

    def _parseState(self, state: Any) -> tuple[Any, list[dict[str, Any]], str | None]:
        """
        Check the shape of a state file.

        @return: C{(value, history, configVersion)}; history entries whose
            value does not match their version are dropped.
        @raise ValueError: if the file is not a state file of this router's
            kind of value.
        """
        field = self._subject.field
        if not isinstance(state, dict):
            raise ValueError("not a JSON object")
        if state.get("format") != _FORMAT:
            raise ValueError(f"unknown format {state.get('format')!r}")
        if state.get("router") != self._subject.router:
            raise ValueError(f"saved for router {state.get('router')!r}")
        if field not in state:
            raise ValueError(f"no {field!r}")
        value = state[field]
        if state.get("version") != self.version(value):
            raise ValueError(f"the {self._subject.kind} does not match its version")
        configVersion = state.get("configVersion")
        if not isinstance(configVersion, str):
            configVersion = None
        history = []
        entries = state.get("history")
        for entry in entries if isinstance(entries, list) else ():
            if not isinstance(entry, dict) or field not in entry:
                continue
            keys = ("version", "time", "who")
            kept = {key: item for key in keys if isinstance(item := entry.get(key), str)}
            if len(kept) != len(keys):
                # One is missing or not a string.
                continue
            try:
                if kept["version"] != self.version(entry[field]):
                    continue
            except ValueError:
                continue
            kept[field] = entry[field]
            history.append(kept)
        return value, history, configVersion


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
