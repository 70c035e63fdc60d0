"""
The security sections of a router: TLS on its listener (C{tls}), TLS to
its upstreams (C{upstreamTls}, also per bound name) and its access policy
(C{policy}).

File paths in these sections are relative to the config file's directory,
kept absolute; the files themselves are read when the proxy (or
C{meshproxy check}) builds the TLS contexts.
"""

import re
from collections.abc import Iterable
from typing import Any

from meshproxy.config import checks
from meshproxy.config.checks import Invalid, show
from meshproxy.config.fields import Checked, Choice, Defaulted, Directory, ListOf, NonEmptyText
from meshproxy.config.problems import Problem
from meshproxy.config.section import Section, View

__all__ = [
    "CertificateConfig",
    "ClientCertificatesConfig",
    "PolicyConfig",
    "PolicyRuleConfig",
    "TLSConfig",
    "UpstreamTLSConfig",
]

File = Directory
"""A file, kept as an absolute path relative to the config file's directory."""

_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\Z")
_METHOD = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")


def _serverName(value: Any) -> str:
    """
    A name SNI chooses a certificate by: a DNS name, or C{*.} and one.
    """
    if not isinstance(value, str):
        raise Invalid(f"expected a server name, got {show(value)}")
    name = value.lower().rstrip(".")
    labels = name[2:].split(".") if name.startswith("*.") else name.split(".")
    if not name or not all(_LABEL.match(label) for label in labels):
        raise Invalid(
            f'expected a DNS name such as "api.example" or "*.api.example", got {show(value)}'
        )
    return name


def _method(value: Any) -> str:
    if not isinstance(value, str) or not _METHOD.match(value):
        raise Invalid(f"expected an HTTP method such as GET, got {show(value)}")
    return value.upper()


def _serverNameTemplate(value: Any) -> str:
    """
    The identity upstream certificates must name: a DNS name or a URI, where
    C{{service}} stands for the service's name.
    """
    text = checks.nonEmptyString(value)
    probe = text.replace("{service}", "service")
    if "{" in probe or "}" in probe:
        raise Invalid(f"only {{service}} may stand in braces, got {show(text)}")
    if "://" not in probe:
        try:
            _serverName(probe)
        except Invalid:
            raise Invalid(
                f'expected a DNS name or a URI (such as "{{service}}.mesh.local" or '
                f'"spiffe://mesh.local/{{service}}"), got {show(text)}'
            ) from None
    return text


def _minVersion(value: Any) -> str:
    if value in ("SSLv3", "TLSv1", "TLSv1.0", "TLSv1.1"):
        raise Invalid(f"{show(value)} is too old (broken): TLSv1.2 or TLSv1.3")
    return checks.choice(value, ("TLSv1.2", "TLSv1.3"))


def _policyName(value: Any) -> str:
    """
    A name prefix a policy rule matches: a logical name (C{/svc/users}), or
    a bound one (C{/#/fs/users}, C{/$/inet/127.0.0.1/8080}) or a prefix of
    one (C{/#/fs}, C{/#}).
    """
    text = checks.string(value)
    if text in ("/#", "/$"):
        return text
    if text.startswith(("/#/", "/$/")):
        try:
            checks.path(text[2:], allowRoot=False)
        except Invalid:
            raise Invalid(
                f'expected a logical name such as "/svc/users" or a bound one such as'
                f' "/#/fs/users", got {show(text)}'
            ) from None
        return text
    return checks.path(value)


ServerName = Checked(_serverName, {"type": "string", "minLength": 1})
MinVersion = Checked(_minVersion, {"type": "string", "enum": ["TLSv1.2", "TLSv1.3"]})
Method = Checked(_method, {"type": "string", "minLength": 1})
ServerNameTemplate = Checked(_serverNameTemplate, {"type": "string", "minLength": 1})
PolicyName = Checked(
    _policyName,
    {
        "type": "string",
        "pattern": f"^(/|/[#$]|(/[#$])?(/{checks.SEGMENT_PATTERN})+)$",
    },
)


class CertificateConfig(Section):
    """
    One certificate a TLS listener serves.

    @ivar cert: the PEM file of the certificate (and its chain).
    @ivar key: the PEM file of its private key.
    @ivar sni: the server names it is chosen for (C{api.example},
        C{*.api.example}); the first certificate is the default for other
        names.
    """

    cert: File()
    key: File()
    sni: ListOf(ServerName, unique=True) = ()


class ClientCertificatesConfig(Section):
    """
    Client certificates on a TLS listener.

    @ivar ca: the PEM bundle of the CAs client certificates must chain to.
    @ivar verify: C{"required"} (a client without a valid certificate fails
        the handshake) or C{"optional"} (one without a certificate is
        unauthenticated; a bad certificate still fails).
    """

    ca: File()
    verify: Choice("required", "optional") = "required"


class TLSConfig(Section):
    """
    TLS terminated on a router's listener (whose C{listen} is then a plain
    C{tcp:} endpoint).

    @ivar certificates: the certificates, chosen by SNI; the first is the
        default.
    @ivar clientCertificates: the client certificate check, or L{None} for
        none.
    @ivar minVersion: C{"TLSv1.2"} or C{"TLSv1.3"}; older versions never.
    """

    certificates: ListOf(CertificateConfig, nonEmpty="at least one certificate is required")
    clientCertificates: ClientCertificatesConfig | None = None
    minVersion: MinVersion = "TLSv1.2"


class UpstreamTLSConfig(Section):
    """
    TLS originated to upstreams.

    @ivar ca: the PEM bundle upstream certificates must chain to.
    @ivar serverName: the identity each upstream certificate must name: a
        DNS name or a URI SAN, where C{{service}} stands for the service
        (the segment after the namer prefix; for C{/$/inet/host/port}, the
        host).
    @ivar cert: a client certificate to present (mTLS), or L{None}.
    @ivar key: its private key (needed with C{cert}).
    @ivar minVersion: C{"TLSv1.2"} or C{"TLSv1.3"}.
    """

    ca: File()
    serverName: ServerNameTemplate = "{service}"
    cert: File() | None = None
    key: File() | None = None
    minVersion: MinVersion = "TLSv1.2"

    @classmethod
    def _crossCheck(cls, view: View) -> Iterable[Problem]:
        if view.ok("cert", "key"):
            if view.raw("cert") is not None and view.raw("key") is None:
                yield Problem(("key",), "required with cert")
            if view.raw("key") is not None and view.raw("cert") is None:
                yield Problem(("cert",), "required with key")


class PolicyRuleConfig(Section):
    """
    One rule of an access policy; the first rule that matches a request
    decides.

    @ivar callers: who it matches: an identity (C{spiffe://mesh.local/web}),
        a pattern with C{*}, C{authenticated}, C{unauthenticated}, or an IP
        address or network; empty for anyone.
    @ivar names: the name prefixes it matches, logical (C{/svc/users}) or
        bound (C{/#/fs/users}); empty for any name.
    @ivar methods: the methods it matches; empty for any.
    @ivar action: C{"allow"} or C{"deny"}.
    """

    callers: ListOf(NonEmptyText) = ()
    names: ListOf(PolicyName) = ()
    methods: ListOf(Method, unique=True) = ()
    action: Choice("allow", "deny") = "allow"


class PolicyConfig(Section):
    """
    Who may call what through a router. A name that an C{allow} rule names
    is closed to callers no rule lets in; other names get the default.

    @ivar default: C{"allow"} or C{"deny"}.
    @ivar rules: the L{PolicyRuleConfig}s, in order.
    """

    default: Choice("allow", "deny") = "allow"
    rules: ListOf(PolicyRuleConfig) = ()


DefaultPolicy = Defaulted(PolicyConfig)
