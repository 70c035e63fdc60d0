"""
A namer over a directory of files, one per service, polled for changes.

The file C{users} in the directory lists the instances of the service
C{users}, one per line::

    # the users service
    10.0.0.1:8080
    10.0.0.2:8080 2        # twice the traffic
    [fd00::3]:8080 0.5

Blank lines and C{#} comments are ignored. Dotfiles and names ending in C{~},
C{.swp} or C{.tmp} (editors' and writers' temporary files) are never services,
so a file written to C{.users.tmp} and renamed to C{users} appears at once and
whole; that is the recommended way to update a file.

How changes map to what the router sees:

  - a file with some bad lines: the good lines, the bad ones are logged;
  - a file that is empty (or only comments): the service has no instances;
  - a removed file (or a missing directory): the service does not exist;
  - a file that cannot be read or has no valid line at all: the last good set
    is kept and the reason logged once (L{Addr.failed} if there never was a
    good set).

At start the namer scans the directory once and reads every service file in
it, so that the first requests find their services loaded and a bad file is
reported at once; that scan is its first load (L{INamer.whenLoaded}). A
service whose file appears later is read when it is first asked for.
"""

from __future__ import annotations

import os
import stat

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from zope.interface import implementer

from meshproxy.discovery.endpoints import Addr, Endpoint, Observable
from meshproxy.discovery.interfaces import FirstLoad, INamer, _asPrefix

__all__ = ["FileNamer", "parseEndpoints", "isServiceName"]

_log = Logger()

# Endpoint files are a few lines long; anything this big is a mistake, and
# reading it would stall the reactor.
MaxFileBytes = 1 << 20

# How many bad lines of one file are logged one by one.
_maxLoggedLines = 10

# How many service names the line logged after the first scan lists.
_maxListedServices = 10

_ignoredSuffixes = ("~", ".swp", ".tmp")

_readFlags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)


def isServiceName(name: str) -> bool:
    """
    Tell whether a file of this name in the directory names a service.

    @param name: a file name (or a service name asked for by the router).
    @return: C{False} for dotfiles, temporary and backup files (C{~},
        C{.swp}, C{.tmp}) and anything that is not a single plain path
        component; C{True} otherwise.
    """
    return bool(
        name
        and not name.startswith(".")
        and not name.endswith(_ignoredSuffixes)
        and "/" not in name
        and "\0" not in name
        and (os.altsep is None or os.altsep not in name)
    )


def parseEndpoints(text: str) -> tuple[frozenset[Endpoint], list[tuple[int, str, str]], int]:
    """
    Parse the content of an endpoint file.

    @param text: the whole file.
    @return: C{(endpoints, errors, entries)}: the endpoints of the valid lines
        (when the same address appears twice, the later line wins), a list of
        C{(lineNumber, line, reason)} for the invalid ones (1-based line
        numbers), and the number of lines that were neither blank nor
        comments.
    """
    found: dict[tuple[str, int], Endpoint] = {}
    errors: list[tuple[int, str, str]] = []
    entries = 0
    for number, line in enumerate(text.splitlines(), 1):
        content = line.split("#", 1)[0].strip()
        if not content:
            continue
        entries += 1
        try:
            endpoint = Endpoint.parse(content)
        except ValueError as e:
            errors.append((number, line, str(e)))
            continue
        found[endpoint.address] = endpoint
    return frozenset(found.values()), errors, entries


def _statKey(st: os.stat_result) -> tuple[int, int, int, int]:
    return (st.st_mtime_ns, st.st_size, st.st_ino, st.st_dev)


class _NotRegular(Exception):
    """
    The path names something other than a regular file.
    """


class _Unstable(Exception):
    """
    The file changed while it was being read.
    """


def _readFile(path: str, maxBytes: int) -> tuple[tuple[int, int, int, int], bytes]:
    """
    Read a small regular file without ever blocking on a FIFO or a device.

    @return: C{(statKey, content)}; the key is that of the file read, taken
        from the open file.
    @raise FileNotFoundError: the file is gone.
    @raise _NotRegular: it is a directory, a FIFO, a device...
    @raise _Unstable: it changed while being read; try again later.
    @raise OSError: it cannot be read.
    @raise ValueError: it is larger than C{maxBytes}.
    """
    fd = os.open(path, _readFlags)
    with open(fd, "rb", closefd=True) as f:
        before = os.fstat(fd)
        if not stat.S_ISREG(before.st_mode):
            raise _NotRegular()
        if before.st_size > maxBytes:
            raise ValueError(f"file is larger than {maxBytes} bytes ({before.st_size})")
        content = f.read(maxBytes + 1)
        if len(content) > maxBytes:
            raise ValueError(f"file is larger than {maxBytes} bytes")
        key = _statKey(os.fstat(fd))
    if key != _statKey(before):
        raise _Unstable()
    return key, content


class _Watch:
    """
    What the namer remembers of one bound service.

    @ivar key: the stat key of the content last read and accepted (or
        rejected as invalid); C{None} forces a read at the next poll.
    @ivar good: whether C{observable} holds a set read from the file.
    @ivar problem: the last problem logged, so that it is logged once.
    @ivar seen: whether the file was there at the last look, so that only
        the removal of a file that existed is logged.
    """

    __slots__ = ("name", "path", "observable", "key", "good", "problem", "seen")

    def __init__(self, name: str, path: str) -> None:
        self.name = name
        self.path = path
        self.observable = Observable()
        self.key: tuple[int, int, int, int] | None = None
        self.good = False
        self.problem: str | None = None
        self.seen = False


@implementer(INamer)
class FileNamer(Service):
    """
    A namer over a directory of endpoint files (see the module docstring for
    the format and the rules), checked every C{interval} seconds while the
    service runs.

    Every poll stats the directory and each bound service's file, and reads
    again only the files whose modification time, size or inode changed.
    File I/O happens on the reactor thread: the files are small, and are read
    only when they change.

    The namer remembers every service it was asked to bind or found at its
    first scan, for as long as it lives (a name with no file costs one
    failed C{stat} per poll; unknown names nobody follows are forgotten).
    """

    def __init__(
        self,
        prefix: object,
        root: str | os.PathLike[str],
        *,
        reactor: IReactorTime,
        interval: float = 1.0,
    ) -> None:
        """
        @param prefix: the prefix this namer owns, a
            L{meshproxy.routing.path.Path} or its text (C{"/#/fs"}).
        @param root: the directory; it may not exist yet.
        @param reactor: the clock the polls are scheduled on.
        @param interval: seconds between polls, positive.
        @raise ValueError: if C{interval} is not positive.
        """
        if not interval > 0:
            raise ValueError(f"interval must be positive, got {interval!r}")
        self.prefix = _asPrefix(prefix)
        self.root = os.fspath(root)
        self.interval = interval
        self._reactor = reactor
        self._watches: dict[str, _Watch] = {}
        self._unknown = Observable(Addr.neg())
        self._rootProblem: str | None = None
        self._loop: LoopingCall | None = None
        self._firstLoad = FirstLoad()
        self._scanning = False

    @property
    def loaded(self) -> bool:
        """
        See L{INamer.loaded}: whether the directory was scanned once.
        """
        return self._firstLoad.done

    def whenLoaded(self) -> Deferred:
        """
        See L{INamer.whenLoaded}: fires once the directory was scanned once,
        which L{startService} does.
        """
        return self._firstLoad.wait()

    def bind(self, service: str) -> Observable:
        """
        See L{INamer.bind}. The first bind of a service reads its file at
        once; later binds return the same observable.

        A name that cannot be a service file (see L{isServiceName}) is
        L{Addr.neg}, and is not remembered.
        """
        watch = self._watches.get(service)
        if watch is not None:
            return watch.observable
        if not isServiceName(service):
            return self._unknown
        watch = self._watches[service] = _Watch(service, os.path.join(self.root, service))
        if self._checkRoot():
            self._check(watch)
        return watch.observable

    def startService(self) -> None:
        """
        Scan the directory (the first load), then poll it.
        """
        super().startService()
        self.scan()
        self._loop = LoopingCall(self.poll)
        self._loop.clock = self._reactor
        self._loop.start(self.interval, now=False)

    def stopService(self) -> None:
        """
        Stop polling; the bound observables keep their last values.
        """
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        return super().stopService()

    def scan(self) -> None:
        """
        Read every service file of the directory not bound yet, log what was
        found in one line, and mark the first load as done. Never raises.
        """
        self._scanning = True
        try:
            if not self._checkRoot():
                return
            try:
                with os.scandir(self.root) as entries:
                    names = sorted(
                        entry.name
                        for entry in entries
                        if isServiceName(entry.name) and entry.is_file()
                    )
            except OSError as e:
                _log.warn(
                    "endpoint directory {root} cannot be listed: {problem}",
                    root=self.root,
                    problem=e.strerror or e,
                )
                return
            for name in names:
                if name not in self._watches:
                    watch = self._watches[name] = _Watch(name, os.path.join(self.root, name))
                    self._check(watch)
            known = [
                name for name in names
                if self._watches.get(name) is not None
                and self._watches[name].observable.current.kind == "bound"
            ]
            listed = ", ".join(known[:_maxListedServices])
            if len(known) > _maxListedServices:
                listed += ", ..."
            _log.info(
                "namer {prefix}: {services} in {root}{listed}",
                prefix=str(self.prefix),
                services="1 service" if len(known) == 1 else f"{len(known)} services",
                root=self.root,
                listed=": " + listed if listed else "",
            )
        except Exception:
            _log.failure("scanning {root} failed", root=self.root)
        finally:
            self._scanning = False
            self._firstLoad.finish()

    def poll(self) -> None:
        """
        Check the directory and every bound service's file once, and update
        the observables of those that changed. Called every C{interval}
        seconds while the service runs; never raises.
        """
        try:
            if self._checkRoot():
                for watch in list(self._watches.values()):
                    if watch.observable.current.kind == "neg" and not watch.observable.subscribed:
                        # Names come from requests (Host headers): forget
                        # unknown ones nobody follows, so they cannot pile up.
                        del self._watches[watch.name]
                        continue
                    self._check(watch)
        except Exception:
            # An exception would stop the LoopingCall, and with it discovery.
            _log.failure("polling {root} failed", root=self.root)

    def _checkRoot(self) -> bool:
        """
        @return: whether the directory is there; if it is not, every bound
            service is set to L{Addr.neg} (missing) or keeps its set (the
            directory cannot be looked at), and why is logged once.
        """
        try:
            st = os.stat(self.root)
        except (FileNotFoundError, NotADirectoryError):
            problem, missing = "does not exist", True
        except OSError as e:
            problem, missing = f"cannot be read: {e.strerror or e}", False
        else:
            if stat.S_ISDIR(st.st_mode):
                if self._rootProblem is not None:
                    _log.info("endpoint directory {root} is back", root=self.root)
                    self._rootProblem = None
                return True
            problem, missing = "is not a directory", True
        if problem != self._rootProblem:
            self._rootProblem = problem
            _log.warn(
                "endpoint directory {root} {problem}; {consequence}",
                root=self.root,
                problem=problem,
                consequence="its services are unknown until it appears"
                if missing
                else "keeping the last known endpoints",
            )
        for watch in self._watches.values():
            if missing:
                watch.key = None
                watch.good = False
                watch.problem = None
                watch.seen = False
                watch.observable.set(Addr.neg())
            elif not watch.good:
                watch.observable.set(Addr.failed(f"endpoint directory {self.root} {problem}"))
        return False

    def _check(self, watch: _Watch) -> None:
        try:
            st = os.stat(watch.path)
        except (FileNotFoundError, NotADirectoryError):
            self._removed(watch)
            return
        except OSError as e:
            self._problem(watch, f"cannot stat: {e.strerror or e}", retry=True)
            return
        if not stat.S_ISREG(st.st_mode):
            self._notRegular(watch)
            return
        watch.seen = True
        if _statKey(st) == watch.key:
            return
        try:
            key, content = _readFile(watch.path, MaxFileBytes)
        except FileNotFoundError:
            self._removed(watch)
            return
        except _NotRegular:
            self._notRegular(watch)
            return
        except _Unstable:
            # Being written right now: read it at the next poll.
            return
        except OSError as e:
            self._problem(watch, f"cannot read: {e.strerror or e}", retry=True)
            return
        except ValueError as e:
            self._problem(watch, str(e), key=_statKey(st))
            return
        self._parsed(watch, key, content)

    def _parsed(self, watch: _Watch, key: tuple[int, int, int, int], content: bytes) -> None:
        text = content.decode("utf-8", errors="replace").removeprefix("\ufeff")
        endpoints, errors, entries = parseEndpoints(text)
        if errors and not endpoints:
            number, _, reason = errors[0]
            self._problem(
                watch,
                f"no valid line ({len(errors)} invalid; line {number}: {reason})",
                key=key,
            )
            return
        for number, line, reason in errors[:_maxLoggedLines]:
            _log.warn(
                "{path}:{line}: ignoring invalid line {text!r}: {reason}",
                path=watch.path,
                line=number,
                text=line,
                reason=reason,
            )
        if len(errors) > _maxLoggedLines:
            _log.warn(
                "{path}: {count} more invalid lines ignored",
                path=watch.path,
                count=len(errors) - _maxLoggedLines,
            )
        watch.key = key
        if watch.problem is not None:
            _log.info("{path} is valid again", path=watch.path)
            watch.problem = None
        watch.good = True
        addr = Addr.bound(endpoints)
        if addr != watch.observable.current:
            if not self._scanning:
                # The first scan sums up what it found in one line.
                _log.info(
                    "{path}: {count} endpoints{empty}",
                    path=watch.path,
                    count=len(endpoints),
                    empty=" (the file has no entry)" if not entries else "",
                )
            watch.observable.set(addr)

    def _removed(self, watch: _Watch) -> None:
        if watch.seen:
            # Only a file that was there goes: a name asked for that never
            # had a file (a Host header, a typo) is simply unknown.
            _log.info("{path} is gone; {service} is unknown", path=watch.path, service=watch.name)
        watch.seen = False
        watch.key = None
        watch.good = False
        watch.problem = None
        watch.observable.set(Addr.neg())

    def _notRegular(self, watch: _Watch) -> None:
        watch.seen = False
        if watch.problem != "not a regular file":
            _log.warn(
                "{path} is not a regular file; {service} is unknown",
                path=watch.path,
                service=watch.name,
            )
        watch.key = None
        watch.good = False
        watch.problem = "not a regular file"
        watch.observable.set(Addr.neg())

    def _problem(
        self,
        watch: _Watch,
        problem: str,
        *,
        retry: bool = False,
        key: tuple[int, int, int, int] | None = None,
    ) -> None:
        """
        Keep the last good set (or fail the service if there never was one)
        and log why.

        @param retry: the problem is with access, not content: try again at
            every poll, and log it only when it changes.
        @param key: for a content problem, the stat key of the bad content, so
            that it is read (and logged) again only when it changes.
        """
        if retry:
            watch.key = None
            if problem == watch.problem:
                return
        else:
            watch.key = key
        watch.problem = problem
        if watch.good:
            _log.warn(
                "{path}: {problem}; keeping the last {count} endpoints",
                path=watch.path,
                problem=problem,
                count=len(watch.observable.current.endpoints),
            )
        else:
            _log.warn("{path}: {problem}", path=watch.path, problem=problem)
            watch.observable.set(Addr.failed(f"{watch.path}: {problem}"))

    def __repr__(self) -> str:
        return f"<FileNamer {self.prefix} {self.root!r} services={len(self._watches)}>"
