"""
Tests for L{meshproxy.reactor}: Twisted's own reactor test builders run on
L{MeshReactor} (descriptors, system events), what it does differently
(no log context per event, failures logged under the selectable's
C{logPrefix()}), and that meshproxy's processes install it.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from typing import Any

from twisted.internet.abstract import FileDescriptor
from twisted.internet.test.reactormixins import ReactorBuilder
from twisted.internet.test.test_core import SystemEventTestsBuilder
from twisted.internet.test.test_fdset import ReactorFDSetTestsBuilder
from twisted.logger import globalLogPublisher
from twisted.python import log
from twisted.trial.unittest import SkipTest, SynchronousTestCase

_MESH = ["meshproxy.reactor.MeshReactor"]
_HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class MeshReactorFDSetTests(ReactorFDSetTestsBuilder):
    """
    Twisted's L{IReactorFDSet} tests (readers, writers, lost descriptors,
    descriptors removed during an event) on L{MeshReactor}.
    """

    _reactors = _MESH

    def test_lostFileDescriptor(self) -> None:
        # Skipped for EPollReactor by its class name: a closed descriptor
        # leaves the epoll set without an event, so no reactor on epoll
        # can notice.
        raise SkipTest("an epoll reactor cannot detect lost file descriptors")


class MeshReactorSystemEventTests(SystemEventTestsBuilder):
    """
    Twisted's startup and shutdown tests on L{MeshReactor}.
    """

    _reactors = _MESH


class _Reader(FileDescriptor):
    """
    One end of a socket pair, read by the reactor under test.

    @ivar systems: the log context's C{system} during each C{doRead}, and
        how many times C{logPrefix()} had been asked for by then.
    @ivar prefixes: how many times C{logPrefix()} was asked for.
    @ivar lost: the reasons passed to C{connectionLost}.
    """

    def __init__(self, reactor: Any, sock: socket.socket, onRead: Any = None) -> None:
        super().__init__(reactor)
        self.sock = sock
        self.onRead = onRead
        self.systems: list[tuple[str, int]] = []
        self.prefixes = 0
        self.lost: list[Any] = []

    def fileno(self) -> int:
        return self.sock.fileno()

    def logPrefix(self) -> str:
        self.prefixes += 1
        return "TestReader,7"

    def doRead(self) -> Any:
        self.systems.append((log.context.get(log.ILogContext)["system"], self.prefixes))
        self.sock.recv(100)
        if self.onRead is not None:
            return self.onRead()
        return None

    def connectionLost(self, reason: Any) -> None:
        self.lost.append(reason)
        self.reactor.removeReader(self)


class MeshReactorDispatchTestsBuilder(ReactorBuilder):
    """
    What L{MeshReactor} does unlike Twisted's epoll reactor.
    """

    _reactors = _MESH

    def _pair(self) -> tuple[socket.socket, socket.socket]:
        a, b = socket.socketpair()
        self.addCleanup(a.close)
        self.addCleanup(b.close)
        return a, b

    def _events(self) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        return events

    def test_noLogContextPerEvent(self) -> None:
        """
        A read is dispatched without asking the selectable for its
        C{logPrefix()} and without a log context naming it.
        """
        reactor = self.buildReactor()
        mine, theirs = self._pair()
        reader = _Reader(reactor, mine, onRead=lambda: reactor.stop())
        reactor.addReader(reader)
        theirs.sendall(b"x")
        self.runReactor(reactor)
        self.assertEqual(reader.systems, [("-", 0)])

    def test_readFailureLoggedUnderLogPrefix(self) -> None:
        """
        An exception raised by C{doRead} is logged with the selectable's
        C{logPrefix()} as its system, disconnects that selectable with it,
        and other selectables are still served.
        """
        reactor = self.buildReactor()
        events = self._events()
        a, aPeer = self._pair()
        b, bPeer = self._pair()

        def explode() -> None:
            raise ZeroDivisionError("boom")

        broken = _Reader(reactor, a, onRead=explode)
        healthy = _Reader(reactor, b, onRead=lambda: reactor.stop())
        reactor.addReader(broken)
        aPeer.sendall(b"x")

        def thenHealthy() -> None:
            reactor.addReader(healthy)
            bPeer.sendall(b"y")

        reactor.callLater(0.05, thenHealthy)
        self.runReactor(reactor)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        failures = [e for e in events if e.get("isError")]
        self.assertEqual([e["system"] for e in failures], ["TestReader,7"])
        self.assertEqual(len(broken.lost), 1)
        self.assertTrue(broken.lost[0].check(ZeroDivisionError))
        self.assertEqual(healthy.systems, [("-", 0)])

    def test_escapingFailureLoggedAndLoopGoesOn(self) -> None:
        """
        An exception escaping the dispatch itself (here from
        C{connectionLost}) is logged under the selectable's C{logPrefix()},
        and the reactor goes on serving the others.
        """
        reactor = self.buildReactor()
        events = self._events()
        a, aPeer = self._pair()
        b, bPeer = self._pair()

        class BadLoss(_Reader):
            def connectionLost(self, reason: Any) -> None:
                _Reader.connectionLost(self, reason)
                raise KeyError("lost badly")

        bad = BadLoss(reactor, a, onRead=lambda: ValueError("close"))
        healthy = _Reader(reactor, b, onRead=lambda: reactor.stop())
        reactor.addReader(bad)
        reactor.addReader(healthy)
        aPeer.sendall(b"x")
        reactor.callLater(0.05, bPeer.sendall, b"y")
        self.runReactor(reactor)
        self.assertEqual(len(self.flushLoggedErrors(KeyError)), 1)
        failures = [e for e in events if e.get("isError")]
        self.assertEqual([e["system"] for e in failures], ["TestReader,7"])
        self.assertEqual(healthy.systems, [("-", 0)])

    def test_callAfterEvents(self) -> None:
        """
        What an event queues with C{callAfterEvents} runs once every event
        of that poll was handled, in the order queued; outside an event the
        call queues nothing and says so.
        """
        reactor = self.buildReactor()
        a, aPeer = self._pair()
        b, bPeer = self._pair()
        order: list[str] = []
        self.assertFalse(reactor.callAfterEvents(lambda: order.append("outside")))

        def readThen(name: str) -> Any:
            def onRead() -> None:
                order.append("read " + name)
                self.assertTrue(reactor.callAfterEvents(lambda: order.append("after " + name)))
                if len(order) == 1:
                    return
                reactor.callLater(0, reactor.stop)

            return onRead

        reactor.addReader(_Reader(reactor, a, onRead=readThen("a")))
        reactor.addReader(_Reader(reactor, b, onRead=readThen("b")))
        # Both ready before the reactor polls: one poll returns both.
        aPeer.sendall(b"x")
        bPeer.sendall(b"y")
        self.runReactor(reactor)
        self.assertEqual(sorted(order[:2]), ["read a", "read b"])
        self.assertEqual(order[2:], ["after " + o[5:] for o in order[:2]])


globals().update(MeshReactorFDSetTests.makeTestCaseClasses())
globals().update(MeshReactorSystemEventTests.makeTestCaseClasses())
globals().update(MeshReactorDispatchTestsBuilder.makeTestCaseClasses())


def _python(script: str) -> str:
    """
    Run C{script} in a child Python with this checkout first on its path
    (this process's global reactor is the test runner's); return its last
    line of output.
    """
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=_HERE,
        env={**os.environ, "PYTHONPATH": _HERE}, capture_output=True, text=True, timeout=60,
    )
    if result.returncode != 0:
        raise AssertionError(result.stderr)
    return result.stdout.strip().splitlines()[-1]


class _FileEnd(FileDescriptor):
    """
    A regular file under a reactor: epoll refuses it, so the reactor polls
    it continuously.
    """

    def __init__(self, reactor: Any, fd: int) -> None:
        FileDescriptor.__init__(self, reactor)
        self.fd = fd

    def fileno(self) -> int:
        return self.fd


class RemovalTests(SynchronousTestCase):
    """
    L{MeshReactor.removeReader} and L{MeshReactor.removeWriter} remove from
    epoll or from the continuous poller, whichever holds the descriptor.
    """

    def setUp(self) -> None:
        from meshproxy.reactor import MeshReactor

        self.reactor = MeshReactor()
        self.addCleanup(self.reactor._poller.close)
        # The reactor's own waker, a reader from the start.
        waker = self.reactor.waker
        self.addCleanup(waker.connectionLost, None)
        self.base = set(self.reactor.getReaders())
        fd = os.open(os.devnull, os.O_RDWR)
        self.addCleanup(os.close, fd)
        self.file = _FileEnd(self.reactor, fd)
        left, right = socket.socketpair()
        self.addCleanup(left.close)
        self.addCleanup(right.close)
        self.socket = _FileEnd(self.reactor, left.fileno())

    def test_fileReaderAndWriter(self) -> None:
        """
        A regular file is read and written by the continuous poller, and
        removing it there leaves nothing behind, whatever the order.
        """
        r, f = self.reactor, self.file
        polling = r._continuousPolling
        r.addReader(f)
        r.addWriter(f)
        self.assertEqual((polling.isReading(f), polling.isWriting(f)), (True, True))
        self.assertEqual(set(r.getReaders()) | set(r.getWriters()), self.base | {f})
        r.removeReader(f)
        self.assertEqual((polling.isReading(f), polling.isWriting(f)), (False, True))
        r.removeWriter(f)
        self.assertEqual((polling.isReading(f), polling.isWriting(f)), (False, False))
        self.assertEqual((set(r.getReaders()), r.getWriters()), (self.base, []))

    def test_socketBesideAPolledFile(self) -> None:
        """
        With a file in the continuous poller, a socket's reader and writer
        are still removed from epoll, and the file stays polled.
        """
        r, f, s = self.reactor, self.file, self.socket
        r.addReader(f)
        r.addWriter(f)
        r.addReader(s)
        r.addWriter(s)
        self.assertIn(s.fileno(), r._selectables)
        r.removeWriter(s)
        self.assertEqual((s.fileno() in r._reads, s.fileno() in r._writes), (True, False))
        r.removeReader(s)
        self.assertNotIn(s.fileno(), r._selectables)
        self.assertEqual(set(r.getReaders()), self.base | {f})
        self.assertEqual(set(r.getWriters()), {f})

    def test_socketAlone(self) -> None:
        """
        With the continuous poller empty, a socket's removal goes to epoll.
        """
        r, s = self.reactor, self.socket
        r.addReader(s)
        r.addWriter(s)
        r.removeReader(s)
        self.assertEqual(r.getWriters(), [s])
        self.assertEqual(set(r.getReaders()), self.base)
        r.removeWriter(s)
        self.assertEqual((set(r.getReaders()), r.getWriters()), (self.base, []))
        self.assertNotIn(s.fileno(), r._selectables)


class InstallTests(SynchronousTestCase):
    """
    Which reactor meshproxy's processes run, each checked in a child Python.
    """

    def test_installWhenNoneInstalled(self) -> None:
        """
        L{install} installs a L{MeshReactor} as the global reactor and
        returns it; a second call returns the same one.
        """
        self.assertEqual(_python(
            "from meshproxy.reactor import MeshReactor, install\n"
            "r = install()\n"
            "from twisted.internet import reactor\n"
            "print(type(r).__name__, r is reactor, install() is r)\n"
        ), "MeshReactor True True")

    def test_installKeepsAnInstalledReactor(self) -> None:
        """
        A reactor installed already (as by C{twistd --reactor poll}) stays
        the global reactor.
        """
        self.assertEqual(_python(
            "from twisted.internet import pollreactor\n"
            "pollreactor.install()\n"
            "from meshproxy.reactor import install\n"
            "print(type(install()).__name__)\n"
        ), "PollReactor")

    def test_makeServiceRunsMeshReactor(self) -> None:
        """
        C{twistd meshproxy}'s L{makeService<meshproxy.tap.makeService>}
        installs a L{MeshReactor} when twistd was not told another.
        """
        self.assertEqual(_python(
            "from meshproxy.tap import Options, makeService\n"
            "o = Options(); o.parseOptions([])\n"
            "makeService(o)\n"
            "from twisted.internet import reactor\n"
            "print(type(reactor).__name__)\n"
        ), "MeshReactor")

    def test_freshWorkerReactorIsMeshReactor(self) -> None:
        """
        A worker whose parent had no reactor yet gets a L{MeshReactor}
        (with one, a fresh reactor of the same kind).
        """
        self.assertEqual(_python(
            "from meshproxy.workers.worker import installFreshReactor\n"
            "print(type(installFreshReactor()).__name__)\n"
        ), "MeshReactor")
