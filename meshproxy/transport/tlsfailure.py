"""
Whether a connection ended in a TLS failure, without importing pyOpenSSL.

A connection's TLS is meshproxy's own (the standard library's C{ssl}, in
L{meshproxy.transport.tls}) or Twisted's (pyOpenSSL, on C{ssl:} listen
strings with arguments meshproxy leaves to it). pyOpenSSL is imported only
by a process that uses Twisted's TLS (L{meshproxy.reactor}): if no one has
imported it, none of its errors can have been raised, so a process without
it need not import it to tell.
"""

from __future__ import annotations

import ssl
import sys


def isTLSFailure(error: BaseException | None) -> bool:
    """
    Whether C{error} (the reason a connection was lost) is a failure of its
    TLS layer: most often a handshake (no or a bad client certificate, no
    common version or cipher).

    @param error: the exception (a L{Failure}'s C{value}), or L{None}.
    """
    if isinstance(error, ssl.SSLError):
        return True
    pyOpenSSL = sys.modules.get("OpenSSL.SSL")
    return pyOpenSSL is not None and isinstance(error, pyOpenSSL.Error)
