"""
Access policy: who may call what.

A policy is an ordered list of rules and a default. A rule matches a
request by its caller (a verified identity, or the peer's address), by the
name it goes to (a prefix of its logical name, C{/svc/users}, or of its
bound name, C{/#/fs/users}) and by its method; the first matching rule
decides (C{allow} or C{deny}). When none matches, a name that an C{allow}
rule names is closed (the rules say who may call it, and this caller is
not among them); any other name gets the default.

Callers are written as:
  - C{authenticated}: any caller with a verified client certificate;
  - C{unauthenticated}: any caller without one;
  - an IP address or network (C{10.0.0.0/8}): the peer's address;
  - a pattern with C{*} (C{spiffe://mesh.local/*}): the identity, where
    C{*} stands for any text;
  - anything else: the identity, exactly.

Policies are immutable values, swapped whole when they change.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["Decision", "Policy", "PolicyError", "Rule", "checkCaller"]

ALLOW = "allow"
DENY = "deny"


class PolicyError(ValueError):
    """
    A policy that cannot be used; the message names the rule and field.
    """


@dataclass(frozen=True)
class Decision:
    """
    What the policy says of one request.

    @ivar allowed: whether it may go on.
    @ivar rule: the index of the rule that decided, or L{None} for the
        default (or for a name closed by its allow rules).
    @ivar reason: in words, for logs, explain and error answers.
    """

    allowed: bool
    rule: int | None
    reason: str


def _namePrefix(text: str) -> tuple[str, ...]:
    if not text.startswith("/"):
        raise PolicyError(f'a name must start with "/", got {text!r}')
    return tuple(s for s in text.split("/") if s)


class _Caller:
    """
    One caller pattern.
    """

    __slots__ = ("text", "kind", "network", "regex")

    def __init__(self, text: str) -> None:
        self.text = text
        self.network: Any = None
        self.regex: Any = None
        if text in ("authenticated", "unauthenticated"):
            self.kind = text
            return
        try:
            self.network = ipaddress.ip_network(text, strict=False)
        except ValueError:
            pass
        else:
            self.kind = "network"
            return
        if not text:
            raise PolicyError("an empty caller matches nothing")
        if "*" in text:
            self.kind = "glob"
            self.regex = re.compile(fnmatch.translate(text))
        else:
            self.kind = "exact"

    def matches(self, identity: str | None, peer: Any) -> bool:
        kind = self.kind
        if kind == "exact":
            return identity == self.text
        if kind == "glob":
            return identity is not None and self.regex.match(identity) is not None
        if kind == "authenticated":
            return identity is not None
        if kind == "unauthenticated":
            return identity is None
        return peer is not None and peer.version == self.network.version and peer in self.network


@dataclass(frozen=True)
class Rule:
    """
    One rule of a policy.

    @ivar callers: caller patterns (see the module docstring); empty for any
        caller.
    @ivar names: name prefixes (logical or bound); empty for any name.
    @ivar methods: methods (upper case); empty for any method.
    @ivar action: C{"allow"} or C{"deny"}.
    """

    callers: tuple[str, ...] = ()
    names: tuple[str, ...] = ()
    methods: tuple[str, ...] = ()
    action: str = ALLOW


class Policy:
    """
    An access policy, ready to decide.
    """

    def __init__(self, rules: Sequence[Rule] = (), default: str = ALLOW) -> None:
        """
        @raise PolicyError: for a bad default, action, caller or name.
        """
        if default not in (ALLOW, DENY):
            raise PolicyError(f'default must be "allow" or "deny", got {default!r}')
        self.default = default
        self.rules = tuple(rules)
        compiled = []
        protected: list[tuple[str, ...]] = []
        for i, rule in enumerate(self.rules):
            if rule.action not in (ALLOW, DENY):
                raise PolicyError(
                    f'rules[{i}].action must be "allow" or "deny", got {rule.action!r}'
                )
            try:
                callers = tuple(_Caller(c) for c in rule.callers)
                names = tuple(_namePrefix(n) for n in rule.names)
            except PolicyError as e:
                raise PolicyError(f"rules[{i}]: {e}") from None
            methods = frozenset(m.upper() for m in rule.methods)
            compiled.append((callers, names, methods, rule.action == ALLOW))
            if rule.action == ALLOW:
                protected.extend(names)
        self._compiled = tuple(compiled)
        self._protected = tuple(protected)

    @classmethod
    def active(cls, config: Any) -> Policy | None:
        """
        The policy a router checks, or L{None} when its C{policy} section
        allows everything (no rules, default allow): nothing to check per
        request.
        """
        if config.default == ALLOW and not config.rules:
            return None
        return cls.fromConfig(config)

    @classmethod
    def fromConfig(cls, config: Any) -> Policy:
        """
        The policy a C{policy} config section (or its JSON) describes.

        @param config: an object with C{default} and C{rules} (each with
            C{callers}, C{names}, C{methods}, C{action}).
        """
        return cls(
            [
                Rule(tuple(r.callers), tuple(r.names), tuple(r.methods), r.action)
                for r in config.rules
            ],
            config.default,
        )

    def decide(
        self,
        identity: str | None,
        peer: str | None,
        names: Iterable[Sequence[str]],
        method: str,
    ) -> Decision:
        """
        Decide one request.

        @param identity: the caller's verified identity, or L{None}.
        @param peer: the caller's IP address as text, or L{None}.
        @param names: the names the request goes to, as segment tuples (its
            logical name and its bound name).
        @param method: the request's method (a TCP connection: C{"CONNECT"}).
        """
        address = None
        if peer is not None:
            try:
                address = ipaddress.ip_address(peer)
            except ValueError:
                address = None
        names = [tuple(n) for n in names]
        for i, (callers, prefixes, methods, allow) in enumerate(self._compiled):
            if methods and method not in methods:
                continue
            if prefixes and not any(_under(n, p) for n in names for p in prefixes):
                continue
            if callers and not any(c.matches(identity, address) for c in callers):
                continue
            return Decision(allow, i, "rule %d %s" % (i, "allows" if allow else "denies"))
        if any(_under(n, p) for n in names for p in self._protected):
            return Decision(False, None, "no rule allows this caller for this name")
        return Decision(self.default == ALLOW, None, "default %s" % (self.default,))

    def describe(self) -> dict[str, Any]:
        """
        The policy as JSON-ready data, in the config's own shape.
        """
        return {
            "default": self.default,
            "rules": [
                {
                    "callers": list(r.callers),
                    "names": list(r.names),
                    "methods": list(r.methods),
                    "action": r.action,
                }
                for r in self.rules
            ],
        }


def _under(name: Sequence[str], prefix: Sequence[str]) -> bool:
    return tuple(name[: len(prefix)]) == tuple(prefix)


def checkCaller(caller: str | None, peer: str | None) -> None:
    """
    Refuse a caller or peer no request or connection could have (what an
    explain is asked about).

    @param caller: a verified identity, or L{None} for an unauthenticated
        caller.
    @param peer: an IP address, or L{None}.
    @raise ValueError: saying which.
    """
    if caller is not None and not caller:
        raise ValueError("an empty caller identity (leave it out for an unauthenticated caller)")
    if peer is not None:
        try:
            ipaddress.ip_address(peer)
        except ValueError:
            raise ValueError("peer must be an IP address, got %r" % (peer,)) from None
