"""
Tests for L{meshproxy.routing.path}.
"""

import copy
import pickle

import attrs
from twisted.trial.unittest import SynchronousTestCase

from meshproxy.routing.path import SEGMENT_CHARS, Path, isSegment


class ReadTests(SynchronousTestCase):
    """
    L{Path.read} parses C{/a/b} text and rejects everything else.
    """

    def test_readsSegments(self):
        self.assertEqual(Path.read("/svc/users").segments, ("svc", "users"))

    def test_readsOneSegment(self):
        self.assertEqual(Path.read("/svc").segments, ("svc",))

    def test_slashIsTheEmptyPath(self):
        self.assertEqual(Path.read("/").segments, ())
        self.assertIs(Path.read("/"), Path.empty)

    def test_everyAllowedCharacter(self):
        text = "/" + "".join(sorted(SEGMENT_CHARS))
        self.assertEqual(Path.read(text).segments, ("".join(sorted(SEGMENT_CHARS)),))

    def test_namerAndSystemPaths(self):
        self.assertEqual(Path.read("/#/fs/users").segments, ("#", "fs", "users"))
        self.assertEqual(
            Path.read("/$/inet/127.0.0.1/8080").segments,
            ("$", "inet", "127.0.0.1", "8080"),
        )

    def test_rejectsEmptyText(self):
        self.assertRaises(ValueError, Path.read, "")

    def test_rejectsNoLeadingSlash(self):
        self.assertRaises(ValueError, Path.read, "svc/users")

    def test_rejectsTrailingSlash(self):
        self.assertRaises(ValueError, Path.read, "/svc/")

    def test_rejectsEmptySegment(self):
        self.assertRaises(ValueError, Path.read, "/svc//users")
        self.assertRaises(ValueError, Path.read, "//")

    def test_rejectsBadCharacters(self):
        for text in ["/a b", "/a\n", "/a?x=1", "/caf\u00e9", "/a|b", "/a&b", "/(a)",
                     "/a;", "/a=b", "/~", "/a@b", "/a+b", "/a,b", " /a", "/a\t"]:
            self.assertRaises(ValueError, Path.read, text)

    def test_errorNamesTheText(self):
        error = self.assertRaises(ValueError, Path.read, "/a/b c")
        self.assertIn("'/a/b c'", str(error))

    def test_rejectsNonStr(self):
        self.assertRaises(TypeError, Path.read, b"/a")
        self.assertRaises(TypeError, Path.read, None)


class ConstructorTests(SynchronousTestCase):
    """
    C{Path(segments)} validates like L{Path.read}.
    """

    def test_tupleOfSegments(self):
        self.assertEqual(Path(("a", "b")), Path.read("/a/b"))

    def test_rejectsList(self):
        self.assertRaises(TypeError, Path, ["a", "b"])

    def test_rejectsStr(self):
        # A str would otherwise become one segment per character.
        self.assertRaises(TypeError, Path, "ab")

    def test_rejectsBadSegments(self):
        self.assertRaises(ValueError, Path, ("a", ""))
        self.assertRaises(ValueError, Path, ("a/b",))
        self.assertRaises(ValueError, Path, ("a b",))
        self.assertRaises(ValueError, Path, (b"a",))
        self.assertRaises(ValueError, Path, (1,))


class ValueTests(SynchronousTestCase):
    """
    Paths are immutable, hashable values.
    """

    def test_equality(self):
        self.assertEqual(Path.read("/a/b"), Path(("a", "b")))
        self.assertNotEqual(Path.read("/a/b"), Path.read("/a"))
        self.assertNotEqual(Path.read("/a"), "/a")
        self.assertNotEqual(Path.read("/a"), ("a",))

    def test_hashable(self):
        cache = {Path.read("/svc/users"): 1}
        self.assertEqual(cache[Path(("svc", "users"))], 1)
        self.assertEqual(hash(Path.read("/a")), hash(Path.read("/a")))

    def test_frozen(self):
        path = Path.read("/a")
        self.assertRaises(attrs.exceptions.FrozenInstanceError, setattr, path, "segments", ())

    def test_str(self):
        self.assertEqual(str(Path.read("/svc/users")), "/svc/users")
        self.assertEqual(str(Path.empty), "/")
        self.assertEqual(Path.read("/a/b").show(), "/a/b")

    def test_repr(self):
        self.assertEqual(repr(Path.read("/a/b")), "Path.read('/a/b')")

    def test_picklesAndCopies(self):
        path = Path.read("/svc/users")
        self.assertEqual(pickle.loads(pickle.dumps(path)), path)
        self.assertEqual(copy.deepcopy(path), path)
        self.assertEqual(hash(pickle.loads(pickle.dumps(path))), hash(path))

    def test_lenAndIter(self):
        path = Path.read("/a/b/c")
        self.assertEqual(len(path), 3)
        self.assertEqual(list(path), ["a", "b", "c"])
        self.assertEqual(len(Path.empty), 0)


class OperationTests(SynchronousTestCase):
    """
    C{startswith}, C{take}, C{drop} and C{+}.
    """

    def test_startswith(self):
        path = Path.read("/svc/users/v2")
        self.assertTrue(path.startswith(Path.read("/svc")))
        self.assertTrue(path.startswith(Path.read("/svc/users/v2")))
        self.assertTrue(path.startswith(Path.empty))
        self.assertFalse(path.startswith(Path.read("/sv")))
        self.assertFalse(path.startswith(Path.read("/svc/users/v2/x")))
        self.assertFalse(path.startswith(Path.read("/users")))

    def test_startswithTreatsStarLiterally(self):
        self.assertFalse(Path.read("/svc/users").startswith(Path.read("/*")))

    def test_take(self):
        path = Path.read("/a/b/c")
        self.assertEqual(path.take(2), Path.read("/a/b"))
        self.assertEqual(path.take(0), Path.empty)
        self.assertEqual(path.take(10), path)

    def test_drop(self):
        path = Path.read("/a/b/c")
        self.assertEqual(path.drop(1), Path.read("/b/c"))
        self.assertIs(path.drop(0), path)
        self.assertEqual(path.drop(3), Path.empty)
        self.assertEqual(path.drop(10), Path.empty)

    def test_add(self):
        self.assertEqual(Path.read("/a") + Path.read("/b/c"), Path.read("/a/b/c"))
        self.assertEqual(Path.empty + Path.read("/a"), Path.read("/a"))
        self.assertEqual(Path.read("/a") + Path.empty, Path.read("/a"))

    def test_addRejectsOtherTypes(self):
        self.assertRaises(TypeError, lambda: Path.read("/a") + "/b")
        self.assertRaises(TypeError, lambda: Path.read("/a") + ("b",))


class IsSegmentTests(SynchronousTestCase):
    """
    L{isSegment} says whether text can be a path segment.
    """

    def test_valid(self):
        for text in ["users", "users-v2", "127.0.0.1", "::1", "*", "#", "$", "a%20b"]:
            self.assertTrue(isSegment(text), text)

    def test_invalid(self):
        for text in ["", "a/b", "a b", "[::1]", "caf\u00e9", None, b"a", "a\n"]:
            self.assertFalse(isSegment(text), text)
