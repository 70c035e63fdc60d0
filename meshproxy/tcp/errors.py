"""
The errors of the TCP router.
"""

from __future__ import annotations

__all__ = ["RouteRefused"]


class RouteRefused(Exception):
    """
    A connection the router cannot route.

    @ivar reason: the error counted (C{no-sni}, C{no-route},
        C{route-failed}, C{delegation-failed}).
    """

    def __init__(self, reason: str, detail: str) -> None:
        Exception.__init__(self, reason, detail)
        self.reason = reason
        self.detail = detail
