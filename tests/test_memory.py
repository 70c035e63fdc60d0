"""
What a process and an idle connection hold: the C allocator's free memory
given back once the process has started, and a connection's pause gate
that costs nothing while nothing pauses it.

(Which modules a plain config imports: L{tests.test_imports}.)
"""

from __future__ import annotations

import ctypes

from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from meshproxy import tap
from meshproxy.tap import freezeStartupObjects, releaseFreedMemory
from meshproxy.transport.gate import PauseGate
from tests.test_http_server import Harness


class ReleaseFreedMemoryTests(SynchronousTestCase):
    """
    L{releaseFreedMemory} gives glibc's free pages back after the start.
    """

    def test_trimsWithGlibc(self) -> None:
        """
        On a C library with C{malloc_trim} (glibc, as here), it is called
        and L{releaseFreedMemory} says so.
        """
        if not hasattr(ctypes.CDLL(None), "malloc_trim"):
            raise self.skipTest("no malloc_trim in this C library") from None
        self.assertTrue(releaseFreedMemory())

    def test_withoutMallocTrim(self) -> None:
        """
        A C library without C{malloc_trim} (musl) is no error: nothing is
        released, and L{releaseFreedMemory} says so.
        """

        class NoTrim:
            def __init__(self, name: object) -> None:
                pass

            def __getattr__(self, name: str) -> object:
                raise AttributeError(name)

        self.patch(ctypes, "CDLL", NoTrim)
        self.assertFalse(releaseFreedMemory())

    def test_freezeReleases(self) -> None:
        """
        L{freezeStartupObjects} (once the reactor runs) releases the freed
        memory after its collection.
        """
        import gc

        self.addCleanup(gc.unfreeze)
        calls: list[bool] = []
        self.patch(tap, "releaseFreedMemory", lambda: calls.append(True) or True)
        freezeStartupObjects()
        self.assertEqual(calls, [True])


class PauseGateMemoryTests(SynchronousTestCase):
    """
    A gate no one paused holds no container of its own.
    """

    def test_idleGateSharesTheEmptyTuple(self) -> None:
        """
        Every idle gate's reasons are the one empty tuple (an empty set
        would cost each connection 216 bytes).
        """
        one, other = PauseGate(StringTransport()), PauseGate(StringTransport())
        self.assertIs(one._reasons, ())
        self.assertIs(one._reasons, other._reasons)

    def test_reasonsCountedOnce(self) -> None:
        """
        A reason given twice is withdrawn by one resume (as with a set),
        and reading resumes once the last reason is gone; the gate is then
        back to the shared empty tuple.
        """
        transport = StringTransport()
        gate = PauseGate(transport)
        gate.pause("a")
        gate.pause("a")
        gate.pause("b")
        self.assertEqual(transport.producerState, "paused")
        gate.resume("a")
        self.assertTrue(gate.paused)
        self.assertFalse(gate.pausedFor("a"))
        self.assertEqual(transport.producerState, "paused")
        gate.resume("c")
        gate.resume("b")
        self.assertEqual(transport.producerState, "producing")
        self.assertFalse(gate.paused)
        self.assertIs(gate._reasons, ())

    def test_idleConnectionAfterARequest(self) -> None:
        """
        A client connection that answered a request and waits for the next
        has a gate with no set of its own.
        """
        h = Harness()
        proto, transport = h.client()
        proto.dataReceived(b"GET / HTTP/1.1\r\nHost: hello\r\n\r\n")
        up, upTransport = h.upstream()
        up.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        self.assertTrue(transport.value().endswith(b"ok"))
        self.assertIs(proto.gate._reasons, ())
