"""
The zygote: a process forked from the supervisor once, after the imports
and before its reactor runs, that forks every worker (restarts included)
from that clean, pre-imported memory. Workers share the pages their code
and the imported modules live in, so that each costs only what it builds.

The zygote never runs a reactor. It waits on its end of a socketpair for
spawn requests: a JSON line and the file descriptors the worker gets (its
end of its own control socketpair, then the listening sockets), passed
with C{SCM_RIGHTS}. It dies with the supervisor (C{PR_SET_PDEATHSIG}, and
the end of its socket), and its workers with it.

A forked process shares the supervisor's kernel objects: its epoll
instance, its waker pipe, its sockets (the admin listener, connections to
etcd). The zygote replaces every inherited socket, pipe and epoll
descriptor above standard error with C{/dev/null} (the numbers stay taken
until the Python objects that held them close them, so none can close
something else later), and each worker builds a fresh reactor
(L{meshproxy.workers.worker}).
"""

from __future__ import annotations

import ctypes
import json
import os
import select
import signal
import socket
import stat
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from twisted.logger import Logger

__all__ = ["Zygote", "ZygoteGone", "dieWithParent", "neuterInherited"]

_log = Logger()

_PR_SET_PDEATHSIG = 1

#: Most descriptors one spawn request passes (control + listeners).
MAX_FDS = 250


class ZygoteGone(Exception):
    """
    The zygote is not there any more: no worker can be started.
    """


def dieWithParent(sig: int, parent: int) -> None:
    """
    Have the kernel send C{sig} to this process when its parent dies
    (Linux's C{PR_SET_PDEATHSIG}); exit now if it died already.

    @param sig: the signal.
    @param parent: the parent's pid, as known before the fork.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:
        os._exit(0)


def neuterInherited(keep: Sequence[int]) -> list[int]:
    """
    Replace every inherited socket, pipe and epoll descriptor (above
    standard error, except C{keep}) with C{/dev/null}: the supervisor's
    listeners, its connections, its reactor's epoll and waker.

    Regular files (a log file) and terminals stay.

    @param keep: descriptors to leave alone.
    @return: the descriptors replaced.
    """
    replaced: list[int] = []
    try:
        fds = [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:
        return replaced
    null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    for fd in fds:
        if fd <= 2 or fd == null or fd in keep:
            continue
        try:
            mode = os.fstat(fd).st_mode
            if stat.S_ISREG(mode) or stat.S_ISCHR(mode) or stat.S_ISDIR(mode):
                continue
            # Sockets, pipes, and anonymous inodes (epoll, eventfd).
            os.dup2(null, fd, inheritable=False)
            replaced.append(fd)
        except OSError:
            continue
    os.close(null)
    return replaced


def _resetSignals() -> None:
    """
    Signals as a child of the supervisor wants them: no wakeup descriptor
    (it was the supervisor's reactor's), C{SIGINT}, C{SIGHUP} and C{SIGUSR1}
    ignored (the supervisor handles them for the group), C{SIGTERM} and
    C{SIGCHLD} at their defaults.
    """
    try:
        signal.set_wakeup_fd(-1)
    except ValueError:
        pass
    for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGUSR1):
        signal.signal(sig, signal.SIG_IGN)
    for sig in (signal.SIGTERM, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)


#: What runs in a forked worker: given the spawn request and the passed
#: sockets (control first), it never returns.
WorkerMain = Callable[[dict[str, Any], list[socket.socket]], NoReturn]


class Zygote:
    """
    The supervisor's handle on its zygote process.

    @ivar pid: the zygote's pid.
    """

    def __init__(self, sock: socket.socket, pid: int) -> None:
        self._sock = sock
        self.pid = pid

    @classmethod
    def fork(cls, workerMain: WorkerMain) -> Zygote:
        """
        Fork the zygote from this process (which must not be running its
        reactor loop yet, nor hold threads that matter).

        @param workerMain: what each worker runs.
        @return: the handle, in the supervisor.
        """
        parentEnd, zygoteEnd = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        parent = os.getpid()
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # pragma: no cover (runs in the child)
            code = 1
            try:
                parentEnd.close()
                _zygoteMain(zygoteEnd, parent, workerMain)
                code = 0
            except BaseException:
                _log.failure("the worker zygote failed")
            finally:
                os._exit(code)
        zygoteEnd.close()
        return cls(parentEnd, pid)

    def spawn(self, request: dict[str, Any], sockets: Sequence[socket.socket]) -> None:
        """
        Ask for one worker.

        @param request: JSON-ready fields the worker gets (its id...).
        @param sockets: its control socket, then the listening sockets.
        @raise ZygoteGone: when the zygote is not there any more.
        """
        payload = json.dumps(request).encode("utf-8")
        try:
            socket.send_fds(self._sock, [payload], [s.fileno() for s in sockets])
        except OSError as e:
            raise ZygoteGone(str(e)) from e

    def close(self) -> None:
        """
        Let the zygote go: it exits once its socket ends (its workers exit
        on their own, told by their control socket).
        """
        self._sock.close()
        try:
            os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:
            pass


def _zygoteMain(
    sock: socket.socket, parent: int, workerMain: WorkerMain
) -> None:  # pragma: no cover (runs in the child)
    """
    The zygote's loop: fork one worker per request until the socket ends.
    """
    dieWithParent(signal.SIGKILL, parent)
    _resetSignals()
    neuterInherited([sock.fileno()])
    zygote = os.getpid()
    while True:
        readable, _, _ = select.select([sock], [], [], 1.0)
        _reap()
        if not readable:
            continue
        try:
            message, fds, _, _ = socket.recv_fds(sock, 65536, MAX_FDS)
        except InterruptedError:
            continue
        if not message:
            return
        request = json.loads(message)
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                sock.close()
                dieWithParent(signal.SIGTERM, zygote)
                sockets = [socket.socket(fileno=fd) for fd in fds]
                workerMain(request, sockets)
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else 1
            except BaseException:
                _log.failure("worker {worker} failed", worker=request.get("worker"))
            finally:
                os._exit(code)
        for fd in fds:
            os.close(fd)


def _reap() -> None:  # pragma: no cover (runs in the child)
    """
    Collect the workers that exited, and say how.
    """
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        if os.WIFSIGNALED(status):
            _log.warn("worker process {pid} was killed by signal {signal}",
                      pid=pid, signal=os.WTERMSIG(status))
        elif os.WEXITSTATUS(status) != 0:
            _log.warn("worker process {pid} exited with status {status}",
                      pid=pid, status=os.WEXITSTATUS(status))
