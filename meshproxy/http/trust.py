"""
What an HTTP router takes from its callers: which peers are trusted, and
the per-request rules (C{mesh-dtab}, C{mesh-ctx-dtab}) a trusted caller may
add, within C{trust.dtabPrefixes} and never leading to an address unless
C{trust.allowInet} says so.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from meshproxy.http.message import ProxyError, Request
from meshproxy.routing.dtab import Dtab
from meshproxy.routing.path import Path
from meshproxy.routing.table import InetNotAllowed, checkRules

if TYPE_CHECKING:
    from meshproxy.config import TrustConfig

__all__ = ["TrustPolicy", "MAX_CACHED_OVERRIDES", "MAX_CACHED_OVERRIDE_LENGTH"]

#: Bound on the cache of parsed overrides (their texts come from callers).
MAX_CACHED_OVERRIDES = 1000

#: The longest override text kept parsed (a longer one, up to what the
#: request head allows, is parsed for each request that sends it): with
#: the count, what a caller's headers can make the router keep.
MAX_CACHED_OVERRIDE_LENGTH = 4096


class TrustPolicy:
    """
    The trust settings of one router, applied to requests.
    """

    def __init__(
        self,
        config: TrustConfig,
        prefixes: Sequence[Path],
        *,
        countError: Callable[[str], None],
    ) -> None:
        """
        @param config: the router's L{TrustConfig<meshproxy.config.TrustConfig>}.
        @param prefixes: the configured namers' prefixes (where an override
            may lead).
        @param countError: counts refusals by reason.
        """
        self._networks = tuple(ipaddress.ip_network(c, strict=False) for c in config.callers)
        self._dtabPrefixes = tuple(Path.read(p) for p in config.dtabPrefixes)
        self._allowInet = config.allowInet
        self._prefixes = tuple(prefixes)
        self._count = countError
        self._overrides: dict[str, tuple[Dtab, bytes]] = {}

    def isTrusted(self, host: str | None) -> bool:
        """
        Whether a caller at C{host} may send rules overrides and deadlines.

        @param host: the peer's IP address as text, or L{None} (a UNIX
            socket peer, never trusted).
        """
        if not self._networks or host is None:
            return False
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(address in network for network in self._networks)

    def override(self, request: Request, trusted: bool) -> tuple[Dtab, bytes] | None:
        """
        The per-request rules of a caller: its C{mesh-ctx-dtab} (from
        earlier hops) then its C{mesh-dtab} headers, each in the order
        received. An untrusted caller's are ignored (and counted as
        C{dtab-override-untrusted}; they are never forwarded either).

        @return: C{(dtab, text)}: the rules, and their canonical text to
            pass on as C{mesh-ctx-dtab}; or L{None} for none.
        @raise ProxyError: 400 C{bad-dtab} for rules that do not parse,
            name an unknown namer, rewrite a prefix outside
            C{dtabPrefixes} or lead to an address.
        """
        context = []
        own = []
        for n, v in request.headers:
            n = n.lower()
            if n == b"mesh-ctx-dtab":
                context.append(v.decode("latin-1"))
            elif n == b"mesh-dtab":
                own.append(v.decode("latin-1"))
        # The context from earlier hops first: the caller's own rules win.
        texts = context + own
        if not texts:
            return None
        if not trusted:
            self._count("dtab-override-untrusted")
            return None
        text = ";".join(t for t in texts if t.strip())
        cached = self._overrides.get(text)
        if cached is None:
            dtab = self._check(text)
            cached = (dtab, dtab.show().encode("latin-1"))
            # Kept when short: a caller's headers bound what is kept.
            if len(text) <= MAX_CACHED_OVERRIDE_LENGTH:
                if len(self._overrides) >= MAX_CACHED_OVERRIDES:
                    self._overrides.clear()
                self._overrides[text] = cached
        return cached

    def _check(self, text: str) -> Dtab:
        try:
            dtab = checkRules(text, self._prefixes, allowInet=self._allowInet)
        except InetNotAllowed as e:
            # Else a trusted caller could make the proxy connect to any
            # address the host can reach (server-side request forgery).
            self._count("dtab-override-inet")
            raise ProxyError(400, "bad-dtab", "Bad mesh-dtab override: %s." % (e,)) from e
        except ValueError as e:
            raise ProxyError(400, "bad-dtab", "Bad mesh-dtab override: %s." % (e,)) from e
        allowed = self._dtabPrefixes
        if allowed:
            for dentry in dtab.dentries:
                if not any(dentry.prefix.startswith(p) for p in allowed):
                    self._count("dtab-override-prefix")
                    raise ProxyError(
                        400,
                        "bad-dtab",
                        "Override of %s is not allowed (allowed: %s)."
                        % (dentry.prefix, ", ".join(str(p) for p in allowed)),
                    )
        return dtab
