# mypy: disable-error-code="valid-type"
# (as in meshproxy.config.schema: the field types are built by calls.)
"""
The settings of a connection to etcd, shared by every section that talks
to it (the C{etcd} namer, and a rules store kept in etcd): the members'
URLs, the key prefix, authentication and TLS.

L{etcdProblems} holds the checks across these keys, for the sections'
C{_crossCheck}; L{meshproxy.etcd.clientFor} builds the client.
"""

from collections.abc import Iterable
from typing import Any

from meshproxy.config import checks
from meshproxy.config.checks import Invalid, show
from meshproxy.config.fields import Checked, Directory, ListOf
from meshproxy.config.problems import Problem
from meshproxy.config.section import Section, View

__all__ = ["EtcdEndpoints", "EtcdKeyPrefix", "EtcdTLSConfig", "etcdProblems"]


def _etcdURL(value: Any) -> str:
    """
    The base URL of an etcd member: C{http://} or C{https://}, a host and a
    port, nothing else.
    """
    parts = checks.httpURL(value, "an etcd URL", "http://127.0.0.1:2379")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise Invalid(f"an etcd URL is a scheme, a host and a port only, got {show(value)}")
    return value.rstrip("/")


def _keyPrefix(value: Any) -> str:
    """
    A key prefix: text starting with C{/}, kept ending with C{/} (so that
    C{/meshproxy/services} does not also cover C{/meshproxy/services-old/}).
    """
    text = checks.nonEmptyString(value)
    if not text.startswith("/"):
        raise Invalid(f'must start with "/", got {show(text)}')
    return text if text.endswith("/") else text + "/"


EtcdURL = Checked(_etcdURL, {"type": "string", "pattern": "^https?://"})
EtcdEndpoints = ListOf(EtcdURL, unique=True, nonEmpty="at least one etcd endpoint is required")
"""The members' URLs: each tried in turn until one answers."""
EtcdKeyPrefix = Checked(_keyPrefix, {"type": "string", "pattern": "^/"})
"""A prefix of etcd keys, kept ending with C{/}."""

File = Directory
"""A file, kept as an absolute path relative to the config file's directory."""


class EtcdTLSConfig(Section):
    """
    TLS to etcd (for C{https://} endpoints).

    @ivar ca: the PEM bundle etcd's certificate must chain to, or L{None}
        for the system's trust store.
    @ivar cert: a client certificate to present (etcd's
        C{--client-cert-auth}), or L{None}.
    @ivar key: its private key (needed with C{cert}).
    """

    ca: File() | None = None
    cert: File() | None = None
    key: File() | None = None

    @classmethod
    def _crossCheck(cls, view: View) -> Iterable[Problem]:
        if view.ok("cert", "key"):
            if view.raw("cert") is not None and view.raw("key") is None:
                yield Problem(("key",), "required with cert")
            if view.raw("key") is not None and view.raw("cert") is None:
                yield Problem(("cert",), "required with key")


def etcdProblems(view: View) -> Iterable[Problem]:
    """
    The checks across the etcd keys of a section: C{username} and
    C{password} go together, and C{tls} is for C{https://} endpoints.
    """
    if view.ok("username", "password"):
        if view.raw("username") is not None and view.raw("password") is None:
            yield Problem(("password",), "required with username")
        if view.raw("password") is not None and view.raw("username") is None:
            yield Problem(("username",), "required with password")
    endpoints = view.values("endpoints")
    if view.raw("tls") is not None and endpoints is not None:
        plain = [url for url in endpoints[0] if url.startswith("http://")]
        if plain:
            yield Problem(
                ("tls",),
                f"is for https:// endpoints, but {show(plain[0])} is http://",
            )
