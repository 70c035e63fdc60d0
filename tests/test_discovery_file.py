"""
Tests for L{meshproxy.discovery.file}.
"""

import os

from twisted.application.service import IService
from twisted.internet.task import Clock
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from meshproxy.discovery import file as fileModule
from meshproxy.discovery.endpoints import Addr, Endpoint
from meshproxy.discovery.file import FileNamer, isServiceName, parseEndpoints
from meshproxy.discovery.interfaces import INamer


def bound(*texts):
    """
    @return: the bound address of the endpoints given as text.
    """
    return Addr.bound(frozenset(Endpoint.parse(text) for text in texts))


class ParseEndpointsTests(SynchronousTestCase):
    """
    Tests for L{parseEndpoints}.
    """

    def test_linesCommentsAndBlanks(self):
        """
        Each line is C{host:port [weight]}; blank lines, whole-line and
        trailing comments are ignored and not counted as entries.
        """
        endpoints, errors, entries = parseEndpoints(
            "# users\n\n10.0.0.1:80\n  10.0.0.2:80 2   # canary\n\t\n[::1]:8080 0.5\n"
        )
        self.assertEqual(
            endpoints,
            frozenset(
                {Endpoint("10.0.0.1", 80), Endpoint("10.0.0.2", 80, 2), Endpoint("::1", 8080, 0.5)}
            ),
        )
        self.assertEqual((errors, entries), ([], 3))

    def test_badLinesReportedWithNumbers(self):
        """
        Invalid lines are returned with their 1-based number, text and
        reason; valid lines around them still count.
        """
        endpoints, errors, entries = parseEndpoints("h:80\nnope\nh:81 heavy\nh:82\n")
        self.assertEqual(endpoints, frozenset({Endpoint("h", 80), Endpoint("h", 82)}))
        self.assertEqual([(n, line) for n, line, _ in errors], [(2, "nope"), (3, "h:81 heavy")])
        self.assertIn("weight", errors[1][2])
        self.assertEqual(entries, 4)

    def test_duplicateAddressLaterLineWins(self):
        """
        An address listed twice appears once, with the later line's weight.
        """
        endpoints, errors, _ = parseEndpoints("h:80 1\nh:80 3\n")
        self.assertEqual(endpoints, frozenset({Endpoint("h", 80, 3)}))
        self.assertEqual(errors, [])

    def test_crlf(self):
        """
        Lines may end in CRLF.
        """
        endpoints, errors, _ = parseEndpoints("h:80\r\nh:81 2\r\n")
        self.assertEqual(endpoints, frozenset({Endpoint("h", 80), Endpoint("h", 81, 2)}))
        self.assertEqual(errors, [])


class IsServiceNameTests(SynchronousTestCase):
    """
    Tests for L{isServiceName}.
    """

    def test_names(self):
        """
        Plain names are services; dotfiles, backup and temporary files, and
        anything with a separator are not.
        """
        for name in ["users", "users.v2", "a-b_c", "x.swpx"]:
            self.assertTrue(isServiceName(name), name)
        for name in [
            "", ".", "..", ".users", "users~", "users.swp", "users.tmp",
            "a/b", "../x", "a\0b",
        ]:
            self.assertFalse(isServiceName(name), name)


class FileNamerTests(SynchronousTestCase):
    """
    Tests for L{FileNamer}.
    """

    def setUp(self):
        self.root = self.mktemp()
        os.mkdir(self.root)
        self.clock = Clock()
        self.mtime = 1_000_000_000 * 10**9
        self.events = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def namer(self, start=True, interval=1.0):
        """
        @return: a file namer over C{self.root}, started unless told not to.
        """
        namer = _FollowedFileNamer("/#/fs", self.root, reactor=self.clock, interval=interval)
        if start:
            namer.startService()
            self.addCleanup(lambda: namer.running and namer.stopService())
        return namer

    def write(self, name, content, root=None):
        """
        Write a file and give it a new modification time, so that the change
        is seen whatever the file system's time granularity.
        """
        path = os.path.join(root or self.root, name)
        with open(path, "wb") as f:
            f.write(content.encode("utf-8") if isinstance(content, str) else content)
        self.mtime += 10**9
        os.utime(path, ns=(self.mtime, self.mtime))
        return path

    def logged(self):
        """
        @return: the text of the events this module logged, and forget them.
        """
        texts = [
            formatEvent(event)
            for event in self.events
            if event.get("log_namespace") == fileModule.__name__
        ]
        del self.events[:]
        return texts

    def countReads(self):
        """
        Count the calls to the function that reads a file.

        @return: a list that grows by one path per read.
        """
        reads = []
        original = fileModule._readFile

        def counting(path, maxBytes):
            reads.append(path)
            return original(path, maxBytes)

        self.patch(fileModule, "_readFile", counting)
        return reads

    def test_providesINamer(self):
        """
        A file namer is an L{INamer} and an L{IService}.
        """
        namer = self.namer(start=False)
        self.assertTrue(verifyObject(INamer, namer))
        self.assertTrue(IService.providedBy(namer))
        self.assertEqual(str(namer.prefix), "/#/fs")

    def test_badInterval(self):
        """
        A non-positive interval is refused.
        """
        self.assertRaises(ValueError, FileNamer, "/#/fs", self.root, reactor=self.clock, interval=0)

    def test_bindReadsAtOnce(self):
        """
        The first bind of a service reads its file, before any poll and
        without the service started.
        """
        self.write("users", "10.0.0.1:80\n10.0.0.2:80 2\n")
        namer = self.namer(start=False)
        self.assertEqual(namer.bind("users").current, bound("10.0.0.1:80", "10.0.0.2:80 2"))

    def test_sameObservableEachTime(self):
        """
        Binding a service again gives the same observable, without reading the
        file again.
        """
        self.write("users", "10.0.0.1:80\n")
        namer = self.namer(start=False)
        reads = self.countReads()
        observable = namer.bind("users")
        self.assertIs(namer.bind("users"), observable)
        self.assertEqual(len(reads), 1)

    def test_missingFileIsNeg(self):
        """
        A service with no file does not exist.
        """
        self.assertEqual(self.namer().bind("users").current, Addr.neg())

    def test_ignoredNamesAreNeg(self):
        """
        Dotfiles, backup and temporary files are never services, even when
        they exist and are valid; nor is anything outside the directory.
        """
        for name in [".users", "users~", "users.swp", "users.tmp"]:
            self.write(name, "10.0.0.1:80\n")
        inside = os.path.join(self.root, "sub")
        os.mkdir(inside)
        self.write("users", "10.0.0.1:80\n", root=inside)
        namer = self.namer()
        for name in [
            ".users", "users~", "users.swp", "users.tmp",
            "..", ".", "", "sub/users", "../x",
        ]:
            self.assertEqual(namer.bind(name).current, Addr.neg(), name)

    def test_emptyFileIsBoundToNothing(self):
        """
        An empty file, or one with only comments, means the service exists
        and has no instance: explicitly the empty set.
        """
        self.write("users", "")
        self.write("orders", "# nothing here\n\n")
        namer = self.namer()
        self.assertEqual(namer.bind("users").current, Addr.bound(frozenset()))
        self.assertEqual(namer.bind("orders").current, Addr.bound(frozenset()))

    def test_weightsIPv6AndComments(self):
        """
        Weights, bracketed IPv6 addresses, comments and blank lines are
        understood.
        """
        self.write(
            "users",
            "# users\n\n10.0.0.1:80 3\n[::1]:8080   # local\n[fd00::2]:8080 0.25\n",
        )
        self.assertEqual(
            self.namer().bind("users").current,
            bound("10.0.0.1:80 3", "[::1]:8080", "[fd00::2]:8080 0.25"),
        )

    def test_byteOrderMark(self):
        """
        A UTF-8 byte order mark does not spoil the first line.
        """
        self.write("users", "\ufeff10.0.0.1:80\n".encode("utf-8"))
        self.assertEqual(self.namer().bind("users").current, bound("10.0.0.1:80"))
        self.assertEqual(self.logged(), ["namer /#/fs: 1 service in %s: users" % (self.root,)])

    def test_reloadOnChange(self):
        """
        A changed file is read at the next poll and its subscribers are told.
        """
        self.write("users", "10.0.0.1:80\n")
        namer = self.namer()
        observable = namer.bind("users")
        seen = []
        observable.subscribe(seen.append)
        self.write("users", "10.0.0.1:80\n10.0.0.2:80\n")
        self.clock.advance(1)
        self.assertEqual(seen, [bound("10.0.0.1:80", "10.0.0.2:80")])

    def test_sameSizeChangeSeenByMtime(self):
        """
        A rewrite to content of the same size is seen through the new
        modification time.
        """
        self.write("users", "10.0.0.1:80\n")
        namer = self.namer()
        observable = namer.bind("users")
        self.write("users", "10.0.0.2:80\n")
        self.clock.advance(1)
        self.assertEqual(observable.current, bound("10.0.0.2:80"))

    def test_atomicRenameSeen(self):
        """
        A file replaced by renaming a temporary file over it (a new inode) is
        read again, and the temporary file is never taken for a service.
        """
        path = self.write("users", "10.0.0.1:80\n")
        namer = self.namer()
        observable = namer.bind("users")
        tmp = self.write(".users.tmp", "10.0.0.9:80\n")
        os.utime(tmp, ns=(os.stat(path).st_mtime_ns,) * 2)
        os.rename(tmp, path)
        self.clock.advance(1)
        self.assertEqual(observable.current, bound("10.0.0.9:80"))

    def test_symlinkSwapSeen(self):
        """
        Files that are symbolic links into a versioned directory, swapped
        whole (as Kubernetes mounts ConfigMaps), are followed.
        """
        for version, content in [("v1", "10.0.0.1:80\n"), ("v2", "10.0.0.2:80\n")]:
            os.mkdir(os.path.join(self.root, "..%s" % (version,)))
            self.write("users", content, root=os.path.join(self.root, "..%s" % (version,)))
        os.symlink("..v1", os.path.join(self.root, "..data"))
        os.symlink(os.path.join("..data", "users"), os.path.join(self.root, "users"))
        namer = self.namer()
        observable = namer.bind("users")
        self.assertEqual(observable.current, bound("10.0.0.1:80"))
        os.symlink("..v2", os.path.join(self.root, "..data_tmp"))
        os.rename(os.path.join(self.root, "..data_tmp"), os.path.join(self.root, "..data"))
        self.clock.advance(1)
        self.assertEqual(observable.current, bound("10.0.0.2:80"))

    def test_intervalRespected(self):
        """
        Nothing is read until the clock has advanced by the interval.
        """
        self.write("users", "10.0.0.1:80\n")
        namer = self.namer(interval=5.0)
        observable = namer.bind("users")
        reads = self.countReads()
        self.write("users", "10.0.0.2:80\n")
        self.clock.advance(4.9)
        self.assertEqual(reads, [])
        self.assertEqual(observable.current, bound("10.0.0.1:80"))
        self.clock.advance(0.1)
        self.assertEqual(len(reads), 1)
        self.assertEqual(observable.current, bound("10.0.0.2:80"))

    def test_noPollBeforeStart(self):
        """
        A namer that is not started does not poll; starting it polls after
        one interval, and stopping it stops the polls.
        """
        self.write("users", "10.0.0.1:80\n")
        namer = self.namer(start=False)
        observable = namer.bind("users")
        self.write("users", "10.0.0.2:80\n")
        self.clock.advance(10)
        self.assertEqual(observable.current, bound("10.0.0.1:80"))
        namer.startService()
        self.assertEqual(observable.current, bound("10.0.0.1:80"))
        self.clock.advance(1)
        self.assertEqual(observable.current, bound("10.0.0.2:80"))
        namer.stopService()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.write("users", "10.0.0.3:80\n")
        self.clock.advance(10)
        self.assertEqual(observable.current, bound("10.0.0.2:80"))

    def test_unchangedFileNotReadAgain(self):
        """
        A poll reads only files whose stat key changed.
        """
        self.write("users", "10.0.0.1:80\n")
        self.write("orders", "10.0.0.2:80\n")
        namer = self.namer()
        namer.bind("users")
        namer.bind("orders")
        reads = self.countReads()
        self.clock.pump([1] * 5)
        self.assertEqual(reads, [])
        self.write("orders", "10.0.0.3:80\n")
        self.clock.advance(1)
        self.assertEqual(reads, [os.path.join(self.root, "orders")])

    def test_removedFileIsNeg(self):
        """
        A removed file makes its service unknown; a file that comes back is
        read again.
        """
        path = self.write("users", "10.0.0.1:80\n")
        namer = self.namer()
        observable = namer.bind("users")
        os.remove(path)
        self.clock.advance(1)
        self.assertEqual(observable.current, Addr.neg())
        self.write("users", "10.0.0.1:80\n")
        self.clock.advance(1)
        self.assertEqual(observable.current, bound("10.0.0.1:80"))

    def test_unfollowedUnknownNamesForgotten(self):
        """
        A name with no file that nobody subscribes to is forgotten at the
        next poll (names come from requests and must not pile up); a
        followed one is kept and picks up its file when it appears.
        """
        namer = FileNamer("/#/fs", self.root, reactor=self.clock)
        namer.startService()
        self.addCleanup(namer.stopService)
        namer.bind("ghost")
        followed = namer.bind("later")
        followed.subscribe(lambda addr: None)
        self.clock.advance(1)
        self.assertNotIn("ghost", namer._watches)
        self.write("later", "10.0.0.1:80\n")
        self.clock.advance(1)
        self.assertEqual(followed.current, bound("10.0.0.1:80"))

    def test_fileCreatedAfterBind(self):
        """
        A service bound before its file exists is bound once the file appears.
        """
        namer = self.namer()
        observable = namer.bind("users")
        self.write("users", "10.0.0.1:80\n")
        self.clock.advance(1)
        self.assertEqual(observable.current, bound("10.0.0.1:80"))

    def test_badLinesSkippedAndLogged(self):
        """
        Invalid lines are skipped, the valid ones used, and each invalid one
        logged with its line number, once per change.
        """
        self.write("users", "10.0.0.1:80\nlocalhost\n10.0.0.2:80 x\n10.0.0.3:80\n")
        namer = self.namer()
        observable = namer.bind("users")
        self.assertEqual(observable.current, bound("10.0.0.1:80", "10.0.0.3:80"))
        path = os.path.join(self.root, "users")
        messages = self.logged()
        self.assertEqual(len(messages), 3, messages)
        self.assertTrue(messages[0].startswith(f"{path}:2: ignoring invalid line 'localhost'"))
        self.assertTrue(messages[1].startswith(f"{path}:3: ignoring invalid line"))
        self.assertIn("weight", messages[1])
        self.clock.pump([1] * 3)
        self.assertEqual(self.logged(), [])

    def test_manyBadLinesLoggedInBrief(self):
        """
        Past a few, invalid lines are counted rather than logged one by one.
        """
        self.write("users", "10.0.0.1:80\n" + "junk\n" * 25)
        self.namer().bind("users")
        messages = self.logged()
        self.assertEqual(len(messages), fileModule._maxLoggedLines + 2, messages)
        self.assertIn("15 more invalid lines", messages[-2])

    def test_invalidUtf8LineIsBad(self):
        """
        Bytes that are not UTF-8 spoil their line only.
        """
        self.write("users", b"10.0.0.1:80\n10.0.0.\xff:80\n")
        self.assertEqual(self.namer().bind("users").current, bound("10.0.0.1:80"))

    def test_entirelyInvalidKeepsLastGood(self):
        """
        A file with no valid line keeps the last good set, logged once until
        the file changes again.
        """
        self.write("users", "10.0.0.1:80\n")
        namer = self.namer()
        observable = namer.bind("users")
        seen = []
        observable.subscribe(seen.append)
        self.logged()
        self.write("users", "garbage\nmore garbage\n")
        self.clock.pump([1] * 5)
        self.assertEqual(observable.current, bound("10.0.0.1:80"))
        self.assertEqual(seen, [])
        messages = self.logged()
        self.assertEqual(len(messages), 1, messages)
        self.assertIn("no valid line (2 invalid; line 1:", messages[0])
        self.assertIn("keeping the last 1 endpoints", messages[0])
        self.write("users", "still garbage\n")
        self.clock.advance(1)
        self.assertEqual(len(self.logged()), 1)
        self.write("users", "10.0.0.2:80\n")
        self.clock.advance(1)
        self.assertEqual(seen, [bound("10.0.0.2:80")])
        self.assertIn("valid again", " ".join(self.logged()))

    def test_entirelyInvalidFromTheStartFails(self):
        """
        A service whose file never had a valid line is L{Addr.failed}, with
        the reason.
        """
        self.write("users", "garbage\n")
        current = self.namer().bind("users").current
        self.assertEqual(current.kind, "failed")
        self.assertIn("no valid line", current.reason)

    def test_unreadableKeepsLastGood(self):
        """
        A file that cannot be read keeps the last good set; the reason is
        logged once however many polls fail, and the file is read again once
        it can be.
        """
        self.write("users", "10.0.0.1:80\n")
        namer = self.namer()
        observable = namer.bind("users")
        self.logged()
        failing = [True]
        original = fileModule._readFile

        def readFile(path, maxBytes):
            if failing[0]:
                raise PermissionError(13, "Permission denied")
            return original(path, maxBytes)

        self.patch(fileModule, "_readFile", readFile)
        self.write("users", "10.0.0.2:80\n")
        self.clock.pump([1] * 5)
        self.assertEqual(observable.current, bound("10.0.0.1:80"))
        messages = self.logged()
        self.assertEqual(len(messages), 1, messages)
        self.assertIn("cannot read: Permission denied; keeping the last 1 endpoints", messages[0])
        failing[0] = False
        self.clock.advance(1)
        self.assertEqual(observable.current, bound("10.0.0.2:80"))

    def test_unreadableFromTheStartFails(self):
        """
        A file that cannot be read on the first bind makes the service
        L{Addr.failed}; it is bound once the file can be read, even if it did
        not change (a permission fix changes no modification time).
        """
        self.write("users", "10.0.0.1:80\n")
        failing = [True]
        original = fileModule._readFile

        def readFile(path, maxBytes):
            if failing[0]:
                raise PermissionError(13, "Permission denied")
            return original(path, maxBytes)

        self.patch(fileModule, "_readFile", readFile)
        observable = self.namer().bind("users")
        self.assertEqual(observable.current.kind, "failed")
        self.assertIn("Permission denied", observable.current.reason)
        failing[0] = False
        self.clock.advance(1)
        self.assertEqual(observable.current, bound("10.0.0.1:80"))

    def test_fileChangingDuringReadRetried(self):
        """
        A file that changed while being read is not used, and is read again at
        the next poll.
        """
        self.write("users", "10.0.0.1:80\n")
        namer = self.namer()
        observable = namer.bind("users")
        original = fileModule._readFile
        calls = []

        def readFile(path, maxBytes):
            calls.append(path)
            if len(calls) == 1:
                raise fileModule._Unstable()
            return original(path, maxBytes)

        self.patch(fileModule, "_readFile", readFile)
        self.write("users", "10.0.0.2:80\n")
        self.clock.advance(1)
        self.assertEqual(observable.current, bound("10.0.0.1:80"))
        self.clock.advance(1)
        self.assertEqual(observable.current, bound("10.0.0.2:80"))
        self.assertEqual(len(calls), 2)

    def test_tooLargeKeepsLastGood(self):
        """
        A file larger than the limit is not read, and the last good set is
        kept.
        """
        self.patch(fileModule, "MaxFileBytes", 64)
        self.write("users", "10.0.0.1:80\n")
        namer = self.namer()
        observable = namer.bind("users")
        self.logged()
        self.write("users", "10.0.0.2:80\n" * 10)
        self.clock.pump([1] * 3)
        self.assertEqual(observable.current, bound("10.0.0.1:80"))
        messages = self.logged()
        self.assertEqual(len(messages), 1, messages)
        self.assertIn("larger than 64 bytes", messages[0])

    def test_directoryIsNotAService(self):
        """
        A directory in place of a file makes the service unknown.
        """
        self.write("users", "10.0.0.1:80\n")
        namer = self.namer()
        observable = namer.bind("users")
        os.remove(os.path.join(self.root, "users"))
        os.mkdir(os.path.join(self.root, "users"))
        self.clock.pump([1] * 3)
        self.assertEqual(observable.current, Addr.neg())
        self.assertEqual(len([m for m in self.logged() if "not a regular file" in m]), 1)

    def test_fifoNeverOpened(self):
        """
        A FIFO is not a service, and reading it does not block.
        """
        if not hasattr(os, "mkfifo"):
            raise self.skipTest("no FIFOs here")
        os.mkfifo(os.path.join(self.root, "users"))
        self.assertEqual(self.namer().bind("users").current, Addr.neg())

    def test_rootMissing(self):
        """
        A missing directory makes every service unknown, is logged once, and
        is recovered from when the directory appears.
        """
        os.rmdir(self.root)
        namer = self.namer()
        observable = namer.bind("users")
        self.assertEqual(observable.current, Addr.neg())
        self.clock.pump([1] * 5)
        messages = self.logged()
        self.assertEqual(len(messages), 1, messages)
        self.assertIn("does not exist", messages[0])
        os.mkdir(self.root)
        self.write("users", "10.0.0.1:80\n")
        self.clock.advance(1)
        self.assertEqual(observable.current, bound("10.0.0.1:80"))
        self.assertIn("is back", self.logged()[0])

    def test_rootRemoved(self):
        """
        A directory removed while in use makes its services unknown; when it
        comes back with the same files, they are read again.
        """
        path = self.write("users", "10.0.0.1:80\n")
        namer = self.namer()
        observable = namer.bind("users")
        os.remove(path)
        os.rmdir(self.root)
        self.clock.advance(1)
        self.assertEqual(observable.current, Addr.neg())
        os.mkdir(self.root)
        self.write("users", "10.0.0.1:80\n")
        self.clock.advance(1)
        self.assertEqual(observable.current, bound("10.0.0.1:80"))

    def test_rootIsAFile(self):
        """
        A root that is not a directory is treated like a missing one.
        """
        os.rmdir(self.root)
        with open(self.root, "w") as f:
            f.write("10.0.0.1:80\n")
        self.assertEqual(self.namer().bind("users").current, Addr.neg())
        self.assertIn("is not a directory", self.logged()[0])

    def test_pollFailureDoesNotStopPolling(self):
        """
        An unexpected error in one poll is logged, and polling goes on.
        """
        self.write("users", "10.0.0.1:80\n")
        namer = self.namer()
        observable = namer.bind("users")
        original = namer._check
        calls = []

        def check(watch):
            calls.append(watch)
            if len(calls) == 1:
                raise RuntimeError("unexpected")
            return original(watch)

        namer._check = check
        self.write("users", "10.0.0.2:80\n")
        self.clock.advance(1)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.clock.advance(1)
        self.assertEqual(observable.current, bound("10.0.0.2:80"))

    def test_failingSubscriberDoesNotStopPolling(self):
        """
        A subscriber that raises does not keep other services from being
        updated.
        """
        self.write("a", "10.0.0.1:80\n")
        self.write("b", "10.0.0.1:80\n")
        namer = self.namer()
        a, b = namer.bind("a"), namer.bind("b")
        a.subscribe(lambda addr: 1 / 0)
        b.subscribe(lambda addr: 1 / 0)
        self.write("a", "10.0.0.2:80\n")
        self.write("b", "10.0.0.2:80\n")
        self.clock.advance(1)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 2)
        self.assertEqual((a.current, b.current), (bound("10.0.0.2:80"),) * 2)


class FirstLoadTests(SynchronousTestCase):
    """
    The first load of a file namer (L{INamer.loaded}, L{INamer.whenLoaded}):
    one scan of the directory at start.
    """

    def setUp(self):
        self.root = self.mktemp()
        os.mkdir(self.root)
        self.clock = Clock()
        self.events = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def write(self, name, content):
        with open(os.path.join(self.root, name), "w") as f:
            f.write(content)

    def logged(self):
        texts = [
            formatEvent(event)
            for event in self.events
            if event.get("log_namespace") == fileModule.__name__
        ]
        del self.events[:]
        return texts

    def start(self, namer):
        namer.startService()
        self.addCleanup(lambda: namer.running and namer.stopService())

    def test_loadedOnceStartHasScanned(self):
        """
        A namer is not loaded before it starts; starting it scans the
        directory, which is its first load: L{whenLoaded} fires then, and at
        once afterwards.
        """
        self.write("users", "10.0.0.1:80\n")
        namer = FileNamer("/#/fs", self.root, reactor=self.clock)
        d = namer.whenLoaded()
        self.assertFalse(namer.loaded)
        self.assertNoResult(d)
        self.start(namer)
        self.assertTrue(namer.loaded)
        self.assertIsNone(self.successResultOf(d))
        self.assertIsNone(self.successResultOf(namer.whenLoaded()))
        namer.stopService()
        self.assertTrue(namer.loaded)

    def test_scanReadsEveryServiceFile(self):
        """
        The scan reads every service file (not dotfiles, temporary files or
        subdirectories) before any request, and says what it found in one
        line; the first bind then reads nothing.
        """
        self.write("users", "10.0.0.1:80\n")
        self.write("orders", "10.0.0.2:80\n10.0.0.3:80\n")
        self.write(".hidden", "10.0.0.4:80\n")
        self.write("orders.tmp", "10.0.0.4:80\n")
        os.mkdir(os.path.join(self.root, "sub"))
        reads = []
        original = fileModule._readFile
        self.patch(
            fileModule, "_readFile", lambda path, size: reads.append(path) or original(path, size)
        )
        namer = FileNamer("/#/fs", self.root, reactor=self.clock)
        self.start(namer)
        self.assertEqual(
            sorted(reads), [os.path.join(self.root, n) for n in ("orders", "users")]
        )
        self.assertEqual(
            self.logged(), ["namer /#/fs: 2 services in %s: orders, users" % (self.root,)]
        )
        self.assertEqual(
            namer.bind("orders").current,
            Addr.bound(frozenset([Endpoint("10.0.0.2", 80), Endpoint("10.0.0.3", 80)])),
        )
        self.assertEqual(len(reads), 2)

    def test_scanOfAMissingDirectoryIsALoad(self):
        """
        A directory that does not exist is an answer (no service): the
        namer is loaded, and says why it knows nothing.
        """
        os.rmdir(self.root)
        namer = FileNamer("/#/fs", self.root, reactor=self.clock)
        self.start(namer)
        self.assertTrue(namer.loaded)
        [message] = self.logged()
        self.assertIn("does not exist", message)

    def test_scanFailureIsStillALoad(self):
        """
        An unexpected error during the scan is logged and does not keep the
        namer from being loaded (readiness would wait for nothing).
        """
        self.write("users", "10.0.0.1:80\n")
        namer = FileNamer("/#/fs", self.root, reactor=self.clock)
        self.patch(namer, "_check", lambda watch: 1 / 0)
        self.start(namer)
        self.assertTrue(namer.loaded)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    def test_cancelledWaitIsForgotten(self):
        """
        A cancelled L{whenLoaded} fails with L{CancelledError}; the others
        still fire.
        """
        from twisted.internet.defer import CancelledError

        namer = FileNamer("/#/fs", self.root, reactor=self.clock)
        cancelled, kept = namer.whenLoaded(), namer.whenLoaded()
        cancelled.cancel()
        self.failureResultOf(cancelled, CancelledError)
        self.start(namer)
        self.successResultOf(kept)

    def test_noGoneLineForAFileThatNeverExisted(self):
        """
        A name asked for that never had a file is unknown without a word
        (Host headers and typos would fill the log with "is gone"); a file
        that existed and was removed is logged once.
        """
        path = os.path.join(self.root, "users")
        self.write("users", "10.0.0.1:80\n")
        namer = _FollowedFileNamer("/#/fs", self.root, reactor=self.clock)
        self.start(namer)
        ghost = namer.bind("ghost")
        users = namer.bind("users")
        self.clock.pump([1] * 3)
        self.logged()
        os.remove(path)
        self.clock.pump([1] * 3)
        self.assertEqual((ghost.current, users.current), (Addr.neg(), Addr.neg()))
        self.assertEqual(self.logged(), ["%s is gone; users is unknown" % (path,)])
        self.write("users", "10.0.0.1:80\n")
        self.clock.advance(1)
        self.assertEqual(self.logged(), ["%s: 1 endpoints" % (path,)])
        os.remove(path)
        self.clock.advance(1)
        self.assertEqual(self.logged(), ["%s is gone; users is unknown" % (path,)])


class _FollowedFileNamer(FileNamer):
    """
    A file namer whose every bound name has a subscriber, as the router's
    are (an unfollowed unknown name is forgotten).
    """

    def bind(self, service):
        observable = FileNamer.bind(self, service)
        observable.subscribe(lambda addr: None)
        return observable
