"""
meshproxy's reactor: Twisted's epoll reactor without a log context per event.

Twisted's L{EPollReactor.doPoll} hands every ready descriptor to
C{log.callWithLogger(selectable, ...)}: it asks the selectable for its
C{logPrefix()} and pushes a copy of the legacy log context with it as
C{system} around the read or write, so that legacy C{log.msg} lines written
meanwhile carry the connection's name. A proxied HTTP/1.1 request is two
such events (the client's request, the upstream's response), and the
context costs more than the dispatch itself. meshproxy logs with
L{twisted.logger.Logger}, whose events never read that context.

L{MeshReactor} dispatches each event directly, and reaches for the
selectable's C{logPrefix()} only when something raised: those tracebacks
are logged with the same C{system} as Twisted's. Legacy C{log.msg} lines
written by a protocol during an event (none of meshproxy's own) show
C{system} C{-} instead of the connection's name.

It also offers L{MeshReactor.callAfterEvents}: work queued by an event runs
once every event of that poll was handled (an HTTP/2 connection sends the
responses several upstream reads finished in one write).

And, off by default, a busy poll (L{MeshReactor.busyPoll}): before the poll
that would sleep, poll without waiting for up to that many seconds. One
request at a time, the answer of an upstream (or the client's next request)
comes within tens of microseconds of the send; a process that slept must
be woken for it, which costs more than the handling itself. Spinning trades
CPU time at light load for that latency (measured, pinned as
C{bench/run.py} pins: C{wrk -t1 -c1} p50 added over nginx direct, one
invocation each, 206 µs without, 130 µs with 100 µs of busy poll, HAProxy
148 µs in the same runs).

L{install} installs it as the global reactor unless one is installed
already (C{twistd --reactor NAME} wins); C{meshproxy.tap.makeService} calls
it, and each worker process builds a fresh one
(L{meshproxy.workers.worker.installFreshReactor}).
"""

from __future__ import annotations

import errno
import sys
import time
from collections.abc import Callable
from typing import Any

from twisted.internet.epollreactor import EPOLLIN, EPOLLOUT, EPollReactor
from twisted.internet.main import CONNECTION_DONE, CONNECTION_LOST
from twisted.internet.posixbase import _NO_FILEDESC
from twisted.python import log

__all__ = ["MeshReactor", "install"]

# The event masks of Twisted's poll-like reactors, as module constants: a
# class attribute read through an instance is looked up in full on every
# read in CPython 3.11 (never specialised), a global is not.
_POLL_DISCONNECTED: int = EPollReactor._POLL_DISCONNECTED
_POLL_IN: int = EPollReactor._POLL_IN
_POLL_OUT: int = EPollReactor._POLL_OUT


def _logPrefixOf(selectable: Any) -> str:
    """
    The C{system} of a failure raised handling C{selectable}'s event, as
    L{log.callWithLogger} would have set it.
    """
    try:
        return str(selectable.logPrefix())
    except KeyboardInterrupt:
        raise
    except BaseException:
        log.err(system="(buggy logPrefix method)")
        return "(buggy logPrefix method)"


class MeshReactor(EPollReactor):
    """
    An L{EPollReactor} whose per-event dispatch pushes no log context (see
    the module's docstring), and whose descriptor removal skips the empty
    continuous poller; everything else is Twisted's.
    """

    #: Seconds to poll without waiting before a poll that would wait (0:
    #: never; see the module's docstring).
    busyPoll = 0.0

    def __init__(self, busyPoll: float = 0.0) -> None:
        """
        @param busyPoll: see L{busyPoll}.
        @raise ValueError: for a negative C{busyPoll}.
        """
        if not busyPoll >= 0.0:
            raise ValueError("busyPoll must be 0 or more seconds, not %r" % (busyPoll,))
        self.busyPoll = busyPoll
        # The clock of the busy poll (only its differences are used).
        self._monotonic = time.monotonic
        # What callAfterEvents queued for the end of the events being
        # handled; whether events are being handled.
        self._afterEvents: list[Callable[[], object]] = []
        self._inEvents = False
        EPollReactor.__init__(self)

    def callAfterEvents(self, f: Callable[[], object]) -> bool:
        """
        Call C{f} once the events of this poll have all been handled, when
        called while handling one: output made by several events (the
        responses of many upstreams to one HTTP/2 client) goes out in one
        write.

        @return: whether C{f} was queued; L{False} outside an event, when
            the caller should do the work at once (the next poll may wait).
        """
        if not self._inEvents:
            return False
        self._afterEvents.append(f)
        return True

    def doPoll(self, timeout: float | None) -> None:
        """
        Poll for ready descriptors (at most C{timeout} seconds, forever when
        L{None}) and handle each event, then what L{callAfterEvents} queued.
        """
        if timeout is None:
            timeout = -1
        try:
            spin = self.busyPoll
            if spin and (timeout < 0 or timeout > spin):
                events = self._spin(timeout, spin)
            else:
                events = self._poller.poll(timeout, len(self._selectables))
        except OSError as err:
            if err.errno == errno.EINTR:
                return
            raise
        selectables = self._selectables
        self._inEvents = True
        try:
            for fd, event in events:
                selectable = selectables.get(fd)
                if selectable is None:
                    continue
                try:
                    # (called as a method: specialised by CPython, where
                    # taking the bound method first makes a new object
                    # per poll, which costs more than the lookups at the
                    # few events of a poll)
                    self._doReadOrWrite(selectable, fd, event)
                except KeyboardInterrupt:
                    raise
                except BaseException:
                    # What log.callWithLogger does with what escapes.
                    log.err(system=_logPrefixOf(selectable))
        finally:
            self._inEvents = False
        after = self._afterEvents
        if after:
            self._afterEvents = []
            for f in after:
                try:
                    f()
                except KeyboardInterrupt:
                    raise
                except BaseException:
                    log.err(system="-")

    doIteration = doPoll

    def _spin(self, timeout: float, spin: float) -> list[tuple[int, int]]:
        """
        Poll without waiting until something is ready or C{spin} seconds
        passed, then poll for what is left of C{timeout} (forever when
        negative).
        """
        poll = self._poller.poll
        now = self._monotonic
        count = len(self._selectables)
        start = now()
        while True:
            events = poll(0, count)
            if events:
                return events
            spent = now() - start
            if spent >= spin:
                break
        if timeout < 0:
            return poll(-1, count)
        left = timeout - spent
        return poll(left if left > 0.0 else 0, count)

    def runUntilCurrent(self) -> None:
        """
        Twisted's L{ReactorBase.runUntilCurrent}, returning at once when
        it has nothing to do (no call from another thread, no timed call
        added since the last turn or due now, no cleanup or stop pending):
        most turns of a busy proxy, which would otherwise pay for its
        helper calls at each.
        """
        if not (self.threadCallQueue or self._newTimedCalls or self._justStopped):
            pending = self._pendingTimedCalls
            if self._cancellations <= 50 and (not pending or pending[0].time > self.seconds()):
                return
        EPollReactor.runUntilCurrent(self)

    def timeout(self) -> float | None:
        """
        Twisted's L{ReactorBase.timeout}, without a call to insert the
        timed calls added since the last turn when there are none.
        """
        if self._newTimedCalls:
            self._insertNewDelayedCalls()
        pending = self._pendingTimedCalls
        if not pending:
            return None
        # (the longest wait epoll_wait takes: Twisted's bound)
        return max(0, min(2147483, pending[0].time - self.seconds()))

    def removeReader(self, reader: Any) -> None:
        """
        Twisted's L{EPollReactor.removeReader}, asking the continuous poller
        (regular files, which epoll refuses) only when it holds any: a
        short TCP connection removes its ends several times.
        """
        polling = self._continuousPolling
        if polling._readers and polling.isReading(reader):
            polling.removeReader(reader)
            return
        self._remove(reader, self._reads, self._writes, self._selectables, EPOLLIN, EPOLLOUT)

    def removeWriter(self, writer: Any) -> None:
        """
        Twisted's L{EPollReactor.removeWriter}, as L{removeReader}.
        """
        polling = self._continuousPolling
        if polling._writers and polling.isWriting(writer):
            polling.removeWriter(writer)
            return
        self._remove(writer, self._writes, self._reads, self._selectables, EPOLLOUT, EPOLLIN)

    def _doReadOrWrite(self, selectable: Any, fd: int, event: int) -> None:
        """
        Twisted's L{_PollLikeMixin._doReadOrWrite}: read or write as the
        event says, disconnect on a hang-up or an error; an exception from
        C{doRead} or C{doWrite} is logged (under the selectable's
        C{logPrefix()}, as Twisted's log context would name it) and
        disconnects the selectable.
        """
        why: Any = None
        inRead = False
        if event & _POLL_DISCONNECTED and not (event & _POLL_IN):
            # Hang-up with no input pending: clean if we were reading (it
            # may be a half-close), an error otherwise.
            if fd in self._reads:
                inRead = True
                why = CONNECTION_DONE
            else:
                why = CONNECTION_LOST
        else:
            try:
                if selectable.fileno() == -1:
                    why = _NO_FILEDESC
                else:
                    if event & _POLL_IN:
                        why = selectable.doRead()
                        inRead = True
                    if not why and event & _POLL_OUT:
                        why = selectable.doWrite()
                        inRead = False
            except BaseException:
                why = sys.exc_info()[1]
                log.err(system=_logPrefixOf(selectable))
        if why:
            self._disconnectSelectable(selectable, why, inRead)


def install(busyPoll: float = 0.0) -> Any:
    """
    Install a L{MeshReactor} as the global reactor, unless a reactor is
    installed already (C{twistd --reactor NAME}, or a test's).

    @param busyPoll: its L{MeshReactor.busyPoll}.
    @return: the global reactor: the new L{MeshReactor}, or the one that
        was there.
    """
    if "twisted.internet.reactor" not in sys.modules:
        from twisted.internet.main import installReactor

        installReactor(MeshReactor(busyPoll))
    from twisted.internet import reactor

    return reactor


def setBusyPoll(reactor: object, seconds: float) -> None:
    """
    Give a L{MeshReactor} its busy poll (the config's C{busyPoll}); any other
    reactor (C{twistd --reactor NAME}, a test's) has none and is left as
    it is.

    @param seconds: see L{MeshReactor.busyPoll}.
    """
    if isinstance(reactor, MeshReactor):
        reactor.busyPoll = seconds
