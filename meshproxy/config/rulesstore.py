# mypy: disable-error-code="valid-type"
# (as in meshproxy.config.schema: the field types are built by calls.)
"""
The C{rulesStore} section: where the rules (and access policies) changed
through the admin API are kept, and shared, when they are not kept in the
local state directory.

Absent, each proxy keeps its rules in its config and its state directory.
With C{kind: etcd}, the store in etcd is the source of truth for every
router's rules and policy, followed by every proxy on the same key prefix
(see L{meshproxy.admin.etcdstore} and docs/many-hosts.md)::

    rulesStore: {kind: etcd, endpoints: ["http://127.0.0.1:2379"], keyPrefix: /meshproxy/rules/}
"""

from collections.abc import Iterable
from typing import Literal

from meshproxy.config.etcd import EtcdEndpoints, EtcdKeyPrefix, EtcdTLSConfig, etcdProblems
from meshproxy.config.fields import Duration, NonEmptyText
from meshproxy.config.problems import Problem
from meshproxy.config.section import Section, View

__all__ = ["RulesStoreConfig"]


class RulesStoreConfig(Section):
    """
    A rules store in etcd: the rules of router C{web} at
    C{<keyPrefix>web}, its policy at C{<keyPrefix>policy/web}.

    @ivar kind: always C{"etcd"} (the only kind so far).
    @ivar endpoints: the etcd members' URLs, tried in turn.
    @ivar keyPrefix: the prefix of the keys, kept ending with C{/}.
    @ivar username: the etcd user, or L{None} without authentication.
    @ivar password: its password (needed with C{username}).
    @ivar tls: the L{EtcdTLSConfig} for C{https://} endpoints, or L{None}.
    @ivar timeout: seconds one request to etcd may take.
    """

    _selector = "kind"
    _selectorRequired = True
    _kinds = {"etcd": ("endpoints", "keyPrefix", "username", "password", "tls", "timeout")}

    kind: Literal["etcd"] = "etcd"
    endpoints: EtcdEndpoints = ("http://127.0.0.1:2379",)
    keyPrefix: EtcdKeyPrefix = "/meshproxy/rules/"
    username: NonEmptyText | None = None
    password: NonEmptyText | None = None
    tls: EtcdTLSConfig | None = None
    timeout: Duration() = "5s"

    @classmethod
    def _crossCheck(cls, view: View) -> Iterable[Problem]:
        yield from etcdProblems(view)
