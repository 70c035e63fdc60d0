"""
What a process and an idle connection hold: the C allocator's free memory
given back once the process has started.

(Which modules a plain config imports: L{tests.test_imports}.)
"""

from __future__ import annotations

import ctypes

from twisted.trial.unittest import SynchronousTestCase

from meshproxy import tap
from meshproxy.tap import freezeStartupObjects, releaseFreedMemory


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
