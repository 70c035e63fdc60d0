"""
A router's access policy for the admin API, versioned like its rules: read,
replace with optimistic concurrency, history, rollback and persistence.

A L{PolicyStore} is the L{VersionedStore<meshproxy.admin.versioned.VersionedStore>}
of one router's C{policy} (HTTP and TCP routers alike). The router stays
the owner of the policy in force; what the store needs of it::

    router.name: str
    router.policy: Policy | None    # None: everything allowed; assigned whole

The policy is written as JSON in the config's own C{policy} shape
(L{Policy.describe<meshproxy.policy.Policy.describe>})::

    {"default": "allow", "rules": [{"callers": [...], "names": [...],
                                    "methods": [...], "action": "deny"}]}

and checked by the config's own L{PolicyConfig<meshproxy.config.PolicyConfig>}:
the same problems, in the same words, named by their key path
(C{rules[0].action: expected one of "allow", "deny", got "block"}). The
canonical form of a policy is that shape with every key present, as
C{describe()} gives it; its version is the first 16 hex digits of the
SHA-256 of its JSON with sorted keys and no spaces.

The state file, C{policy-<router>.json} in the state directory, holds the
policy in force and the history (newest first)::

    {"format": 1, "router": "web", "version": "…", "policy": {…},
     "configVersion": "…", "history": [{"version", "time", "who", "policy"}…]}
"""

from __future__ import annotations

import json
from typing import Any

from zope.interface import implementer

from meshproxy.admin.versioned import InvalidValue, IVersioned, VersionedStore, textVersion
from meshproxy.config.loading import ConfigError, parseSection
from meshproxy.config.security import PolicyConfig
from meshproxy.policy import Policy, PolicyError

__all__ = ["InvalidPolicy", "PolicyStore", "policyVersion"]


def _open() -> dict[str, Any]:
    """
    The canonical form of the policy of a router that checks nothing.
    """
    return {"default": "allow", "rules": []}


def _versionText(value: dict[str, Any]) -> str:
    """
    The text a policy's version is the hash of: its JSON with sorted keys
    and no spaces.
    """
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def policyVersion(value: dict[str, Any]) -> str:
    """
    The version of a policy: the first 16 hex digits of the SHA-256 of its
    JSON with sorted keys and no spaces.

    @param value: a policy in canonical form (as C{describe()} gives it).
    @return: 16 lowercase hex digits.
    """
    return textVersion(_versionText(value))


class InvalidPolicy(InvalidValue):
    """
    A policy the config's checks refuse.

    @ivar problems: one message per problem, each starting with its key
        path (C{rules[0].action: ...}).
    """

    def __init__(self, problems: list[str]) -> None:
        super().__init__("invalid policy: " + "; ".join(problems))
        self.problems = problems

    def details(self) -> dict[str, Any]:
        """
        C{{"error", "problems"}}: the problems in one line, and as a list.
        """
        return {"error": str(self), "problems": list(self.problems)}


@implementer(IVersioned)
class _Policy:
    """
    The access policy of one router, as a L{VersionedStore} sees it.
    """

    kind = "policy"
    field = "policy"

    def __init__(self, router: Any) -> None:
        self._router = router
        self.router = router.name

    def current(self) -> dict[str, Any]:
        policy = self._router.policy
        return _open() if policy is None else policy.describe()

    def canonical(self, value: Any) -> str:
        if not isinstance(value, dict):
            raise ValueError("the policy is not a JSON object")
        return _versionText(value)

    def validate(self, value: Any) -> tuple[Policy | None, dict[str, Any]]:
        try:
            config = parseSection(PolicyConfig, value, "policy")
        except ConfigError as e:
            raise InvalidPolicy(e.errors) from e
        try:
            policy = Policy.active(config)
        except PolicyError as e:
            # The config's checks let nothing through that Policy refuses;
            # should they ever differ, the answer is still a 400.
            raise InvalidPolicy([str(e)]) from e
        return policy, _open() if policy is None else policy.describe()

    def apply(self, prepared: Any, value: Any) -> None:
        # One assignment: the next request (or connection) sees the new
        # policy whole, one in progress keeps the one it read.
        self._router.policy = prepared

    def show(self, value: Any) -> str:
        return json.dumps(value, indent=2, sort_keys=True)


class PolicyStore(VersionedStore):
    """
    The versioned access policy of one router (see L{VersionedStore}).

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
        super().__init__(_Policy(router), stateDir=stateDir, clock=clock, historySize=historySize)
