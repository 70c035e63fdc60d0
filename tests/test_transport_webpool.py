"""
Tests for L{meshproxy.transport.webpool}: the control plane's HTTP clients
pool connections without logging each one.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import succeed
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import HTTPConnectionPool

from meshproxy.transport.webpool import quietPool


class _StartingEndpoint:
    """
    A client endpoint that starts its factory the way a reactor's connector
    does (C{doStart}, which logs "Starting factory" for a noisy one) and
    connects nothing.
    """

    def connect(self, factory: Any) -> Any:
        factory.doStart()
        return succeed(factory.buildProtocol(None))


class QuietPoolTests(SynchronousTestCase):
    """
    Tests for L{quietPool}.
    """

    def _loggedWhileConnecting(self, pool: HTTPConnectionPool) -> list[str]:
        """
        What is logged while C{pool} makes one new connection.
        """
        messages: list[str] = []

        def observe(event: dict[str, Any]) -> None:
            messages.append(str(event.get("log_format") or event.get("message")))

        globalLogPublisher.addObserver(observe)
        try:
            pool.getConnection(("http", b"127.0.0.1", 2379), _StartingEndpoint())
        finally:
            globalLogPublisher.removeObserver(observe)
        return [m for m in messages if "factory" in m]

    def test_noLinePerConnection(self) -> None:
        """
        A new connection of the pool logs nothing, where Twisted's own pool
        logs that its factory starts.
        """
        reactor = MemoryReactorClock()
        self.assertNotEqual(
            self._loggedWhileConnecting(HTTPConnectionPool(reactor, persistent=True)), []
        )
        self.assertEqual(self._loggedWhileConnecting(quietPool(reactor, 4)), [])

    def test_settings(self) -> None:
        """
        The pool keeps connections, as many per host as asked, and never
        resends a request by itself.
        """
        pool = quietPool(MemoryReactorClock(), 7)
        self.assertTrue(pool.persistent)
        self.assertEqual(pool.maxPersistentPerHost, 7)
        self.assertFalse(pool.retryAutomatically)
