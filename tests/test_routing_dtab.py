"""
Tests for L{meshproxy.routing.dtab}: parsing, errors, printing, and the
L{Dentry} and L{Dtab} values.
"""

import random

import attrs
from twisted.trial.unittest import SynchronousTestCase

from meshproxy.routing.dtab import MAX_NESTING, Dentry, Dtab, DtabSyntaxError
from meshproxy.routing.nametree import Alt, Empty, Fail, Leaf, Neg, Union, Weighted
from meshproxy.routing.path import Path


def p(text):
    return Leaf(Path.read(text))


def dst(text):
    """
    The destination tree of a one-dentry dtab C{/x => text}.
    """
    (dentry,) = Dtab.read("/x => " + text).dentries
    return dentry.dst


class ReadTests(SynchronousTestCase):
    """
    L{Dtab.read} parses the dtab grammar.
    """

    def test_oneDentry(self):
        dtab = Dtab.read("/svc => /#/fs;")
        self.assertEqual(dtab.dentries, (Dentry(Path.read("/svc"), p("/#/fs")),))

    def test_finalSemicolonOptional(self):
        self.assertEqual(Dtab.read("/svc => /#/fs"), Dtab.read("/svc => /#/fs;"))

    def test_severalDentriesInOrder(self):
        dtab = Dtab.read("/a=>/b;/c=>/d;/e=>/f")
        self.assertEqual([str(d.prefix) for d in dtab], ["/a", "/c", "/e"])

    def test_whitespaceAndNewlinesAreFree(self):
        text = "\n\t /svc\n=>\n  /#/fs \r\n ;\n\n /a\t=>\t/b |\n /c\n"
        self.assertEqual(Dtab.read(text), Dtab.read("/svc=>/#/fs;/a=>/b|/c"))

    def test_comments(self):
        text = (
            "# routing rules\n"
            "/svc => /#/fs; # the default\n"
            "/svc/a => # why not\n"
            "   /#/fs/b   # comment before the semicolon\n"
            "; # trailing\n"
            "# the end"
        )
        self.assertEqual(Dtab.read(text), Dtab.read("/svc=>/#/fs;/svc/a=>/#/fs/b"))

    def test_hashInsideAPathIsNotAComment(self):
        dtab = Dtab.read("/svc=>/#/fs#x")
        self.assertEqual(dtab.dentries[0].dst, p("/#/fs#x"))

    def test_emptyText(self):
        self.assertEqual(Dtab.read(""), Dtab.empty)
        self.assertEqual(Dtab.read("  \n\t"), Dtab.empty)
        self.assertEqual(Dtab.read("# nothing here\n# at all"), Dtab.empty)

    def test_specials(self):
        self.assertIs(dst("~"), Neg)
        self.assertIs(dst("!"), Fail)
        self.assertIs(dst("$"), Empty)

    def test_emptyPathDestination(self):
        self.assertEqual(dst("/"), Leaf(Path.empty))
        self.assertEqual(dst("/ | /a"), Alt((Leaf(Path.empty), p("/a"))))

    def test_alt(self):
        self.assertEqual(dst("/a | /b | ~"), Alt((p("/a"), p("/b"), Neg)))

    def test_unionDefaultWeightIsOne(self):
        self.assertEqual(
            dst("/a & /b"), Union((Weighted(1.0, p("/a")), Weighted(1.0, p("/b"))))
        )

    def test_weights(self):
        self.assertEqual(
            dst("0.9 * /a & 0.1*/b & 3 * /c"),
            Union((Weighted(0.9, p("/a")), Weighted(0.1, p("/b")), Weighted(3.0, p("/c")))),
        )

    def test_numberForms(self):
        for text, weight in [("1", 1.0), ("0.5", 0.5), (".5", 0.5), ("2.", 2.0),
                             ("1e-3", 0.001), ("1E+2", 100.0), ("0", 0.0)]:
            tree = dst(f"{text}*/a & /b")
            self.assertEqual(tree.weighted[0].weight, weight, text)

    def test_aLoneWeightIsDropped(self):
        self.assertEqual(dst("0.5 * /a"), p("/a"))

    def test_unionBindsTighterThanAlt(self):
        self.assertEqual(
            dst("/a & /b | /c & /d"),
            Alt((
                Union((Weighted(1, p("/a")), Weighted(1, p("/b")))),
                Union((Weighted(1, p("/c")), Weighted(1, p("/d")))),
            )),
        )

    def test_parentheses(self):
        self.assertEqual(
            dst("0.5*(/a | /b) & /c"),
            Union((Weighted(0.5, Alt((p("/a"), p("/b")))), Weighted(1, p("/c")))),
        )
        self.assertEqual(dst("(/a)"), p("/a"))
        self.assertEqual(dst("((/a | /b)) | /c"), Alt((Alt((p("/a"), p("/b"))), p("/c"))))

    def test_nestingUpToTheLimit(self):
        text = "(" * MAX_NESTING + "/a" + ")" * MAX_NESTING
        self.assertEqual(dst(text), p("/a"))

    def test_wildcardPrefix(self):
        dtab = Dtab.read("/svc/*/v2 => /#/fs")
        self.assertEqual(dtab.dentries[0].prefix.segments, ("svc", "*", "v2"))

    def test_noSpacesAnywhere(self):
        self.assertEqual(
            Dtab.read("/a=>0.5*/b&/c|!;/d=>~"),
            Dtab((
                Dentry(Path.read("/a"), Alt((
                    Union((Weighted(0.5, p("/b")), Weighted(1, p("/c")))), Fail))),
                Dentry(Path.read("/d"), Neg),
            )),
        )

    def test_manyDentries(self):
        text = ";\n".join(f"/svc/s{i} => /#/fs/s{i}" for i in range(5000))
        dtab = Dtab.read(text)
        self.assertEqual(len(dtab), 5000)
        self.assertEqual(dtab.dentries[-1].dst, p("/#/fs/s4999"))

    def test_longAltIsNotRecursive(self):
        text = "/a => " + " | ".join(f"/b{i}" for i in range(5000))
        self.assertEqual(len(Dtab.read(text).dentries[0].dst.trees), 5000)

    def test_rejectsNonStr(self):
        self.assertRaises(TypeError, Dtab.read, b"/a=>/b")


class SyntaxErrorTests(SynchronousTestCase):
    """
    Bad text raises L{DtabSyntaxError} naming the line and column (1-based)
    of the offending character.
    """

    def assertSyntaxError(self, text, message, line, column):
        error = self.assertRaises(DtabSyntaxError, Dtab.read, text)
        self.assertEqual((error.message, error.line, error.column), (message, line, column))
        return error

    def test_isAValueErrorWithPosition(self):
        error = self.assertSyntaxError("/a /b", 'expected "=>", got "/"', 1, 4)
        self.assertIsInstance(error, ValueError)
        self.assertEqual(str(error), 'expected "=>", got "/" at line 1, column 4')

    def test_missingArrowAtEnd(self):
        self.assertSyntaxError("/a", 'expected "=>", got end of input', 1, 3)

    def test_halfArrow(self):
        self.assertSyntaxError("/a = /b", 'expected "=>", got "="', 1, 4)
        self.assertSyntaxError("/a => /b;\n/c -> /d", 'expected "=>", got "-"', 2, 4)

    def test_unexpectedCharacterInTree(self):
        self.assertSyntaxError("/a => }", 'unexpected "}"', 1, 7)

    def test_positionOnLaterLines(self):
        self.assertSyntaxError("/a => /b;\n/c =>\n    /d |\n    }", 'unexpected "}"', 4, 5)

    def test_columnCountsTabsAsOne(self):
        self.assertSyntaxError("\t/a\t=>\t}", 'unexpected "}"', 1, 8)

    def test_commentsAreSkippedWhenCounting(self):
        self.assertSyntaxError("# c => }\n/a => } # x", 'unexpected "}"', 2, 7)

    def test_missingTree(self):
        self.assertSyntaxError("/a =>", "unexpected end of input", 1, 6)
        self.assertSyntaxError("/a => ;", 'unexpected ";"', 1, 7)
        self.assertSyntaxError("/a => /b |", "unexpected end of input", 1, 11)
        self.assertSyntaxError("/a => /b & ;", 'unexpected ";"', 1, 12)

    def test_missingSemicolonBetweenDentries(self):
        self.assertSyntaxError("/a => /b\n/c => /d", 'expected ";", got "/"', 2, 1)

    def test_trailingGarbage(self):
        self.assertSyntaxError("/a => /b )", 'expected ";", got ")"', 1, 10)

    def test_doubleSemicolon(self):
        self.assertSyntaxError("/a => /b;;", 'unexpected ";"', 1, 10)
        self.assertSyntaxError("/a => /b; ;/c=>/d", 'unexpected ";"', 1, 11)

    def test_leadingSemicolon(self):
        self.assertSyntaxError(";/a => /b", 'unexpected ";"', 1, 1)

    def test_emptyDentryPrefix(self):
        self.assertSyntaxError("=> /b", "empty dentry prefix", 1, 1)
        self.assertSyntaxError("/a=>/b;\n  / => /b", "empty dentry prefix", 2, 3)

    def test_prefixNotAPath(self):
        self.assertSyntaxError("svc => /b", 'unexpected "s"', 1, 1)
        self.assertSyntaxError("~ => /b", 'unexpected "~"', 1, 1)

    def test_emptySegment(self):
        self.assertSyntaxError("/a//b => /c", "empty path segment", 1, 4)
        self.assertSyntaxError("/a => /b//c", "empty path segment", 1, 10)

    def test_trailingSlash(self):
        self.assertSyntaxError("/a/ => /c", 'path ends with "/"', 1, 3)
        self.assertSyntaxError("/a => /b/", 'path ends with "/"', 1, 9)

    def test_badCharacterInPath(self):
        self.assertSyntaxError("/a{b} => /c", 'unexpected "{"', 1, 3)
        self.assertSyntaxError("/a => /b/{c}", 'unexpected "{"', 1, 10)
        self.assertSyntaxError("/a => /{c}", 'unexpected "{"', 1, 8)
        self.assertSyntaxError("/a => /b~", 'unexpected "~"', 1, 9)
        self.assertSyntaxError("/a => /caf\u00e9", 'unexpected "\u00e9"', 1, 11)

    def test_nonPrintableCharacterIsNamedByCodePoint(self):
        self.assertSyntaxError("/a => \x00", "unexpected U+0000", 1, 7)

    def test_weightWithoutStar(self):
        self.assertSyntaxError("/a => 0.5 /b", 'expected "*", got "/"', 1, 11)
        self.assertSyntaxError("/a => 1.2.3 * /b", 'expected "*", got "."', 1, 10)

    def test_weightWithoutTree(self):
        self.assertSyntaxError("/a => 0.5 *", "unexpected end of input", 1, 12)
        self.assertSyntaxError("/a => 0.5 * 2 * /b", 'unexpected "2"', 1, 13)

    def test_negativeWeight(self):
        self.assertSyntaxError("/a => -1 * /b", 'unexpected "-"', 1, 7)

    def test_weightOutOfRange(self):
        self.assertSyntaxError("/a => /b & 1e999 * /c", "weight out of range", 1, 12)

    def test_unclosedParenthesis(self):
        self.assertSyntaxError("/a => (/b | /c", 'expected ")", got end of input', 1, 15)
        self.assertSyntaxError("/a => (/b | /c;", 'expected ")", got ";"', 1, 15)

    def test_emptyParentheses(self):
        self.assertSyntaxError("/a => ()", 'unexpected ")"', 1, 8)

    def test_nestingTooDeep(self):
        text = "/a => " + "(" * (MAX_NESTING + 1) + "/b" + ")" * (MAX_NESTING + 1)
        self.assertSyntaxError(
            text, f"parentheses nested more than {MAX_NESTING} deep", 1, 7 + MAX_NESTING
        )

    def test_absurdNestingIsASyntaxErrorNotACrash(self):
        text = "/a => " + "(" * 100000
        error = self.assertRaises(DtabSyntaxError, Dtab.read, text)
        self.assertIn("nested", error.message)

    def test_dentryReadWantsExactlyOne(self):
        self.assertEqual(Dentry.read("/a => /b;"), Dentry(Path.read("/a"), p("/b")))
        self.assertRaises(DtabSyntaxError, Dentry.read, "/a=>/b;/c=>/d")
        self.assertRaises(DtabSyntaxError, Dentry.read, "")
        self.assertRaises(DtabSyntaxError, Dentry.read, "/a")


class ShowTests(SynchronousTestCase):
    """
    L{Dtab.show} prints the canonical form, which reads back equal.
    """

    samples = [
        "",
        "/svc=>/#/fs",
        "/svc=>/#/fs;/svc/users=>/#/fs/users-v2 | /#/fs/users",
        "/a=>0.9*/b & 0.1*/c",
        "/a=>/b & /c | /d & 2*/e | ~",
        "/a=>0.5*(/b | /c) & /d",
        "/a=>(/b | /c) | /d",
        "/a=>(/b & /c) & /d",
        "/a=>!;/b=>$;/c=>~;/d=>/",
        "/svc/*/v2=>/#/fs/v2",
        "/a=>1e-05*/b & 1e+16*/c & 0*/d",
        "/a=>((/b | /c) & /d | $) | !",
    ]

    def test_canonicalFormIsAFixpoint(self):
        for text in self.samples:
            self.assertEqual(Dtab.read(text).show(), text)

    def test_showNormalisesSpacing(self):
        text = "/a => 0.50 * /b &1* /c |\n  ( /d ) ;\n/e=>/f;"
        self.assertEqual(Dtab.read(text).show(), "/a=>0.5*/b & /c | /d;/e=>/f")

    def test_strIsShow(self):
        dtab = Dtab.read("/a=>/b;/c=>/d")
        self.assertEqual(str(dtab), dtab.show())
        self.assertEqual(str(dtab.dentries[0]), "/a=>/b")

    def test_roundTripOfRandomTrees(self):
        rng = random.Random(1234)

        def tree(depth):
            kind = rng.randrange(6 if depth < 4 else 2)
            if kind == 0:
                return Leaf(Path(tuple(rng.choice(["a", "b", "#", "$", "*", "x.y:1"])
                                       for _ in range(rng.randrange(0, 3)))))
            if kind == 1:
                return rng.choice([Neg, Fail, Empty])
            if kind in (2, 3):
                return Alt(tuple(tree(depth + 1) for _ in range(rng.randrange(2, 4))))
            return Union(tuple(
                Weighted(rng.choice([1.0, 0.5, 0.0, 3.0, 0.1, 1e-7]), tree(depth + 1))
                for _ in range(rng.randrange(2, 4))
            ))

        for _ in range(300):
            dtab = Dtab(tuple(
                Dentry(Path(("svc", rng.choice(["a", "*"]))), tree(0))
                for _ in range(rng.randrange(1, 4))
            ))
            self.assertEqual(Dtab.read(dtab.show()), dtab, dtab.show())


class DentryTests(SynchronousTestCase):
    """
    L{Dentry} matches prefixes (with C{*}) and rewrites paths.
    """

    def test_matchGivesResidual(self):
        dentry = Dentry.read("/svc => /#/fs")
        self.assertEqual(dentry.match(Path.read("/svc/users/v2")), Path.read("/users/v2"))
        self.assertEqual(dentry.match(Path.read("/svc")), Path.empty)

    def test_noMatch(self):
        dentry = Dentry.read("/svc/users => /#/fs")
        self.assertIsNone(dentry.match(Path.read("/svc")))
        self.assertIsNone(dentry.match(Path.read("/svc/user")))
        self.assertIsNone(dentry.match(Path.read("/svcx/users")))
        self.assertIsNone(dentry.match(Path.empty))

    def test_wildcardMatchesAnyOneSegment(self):
        dentry = Dentry.read("/svc/*/v2 => /#/fs")
        self.assertEqual(dentry.match(Path.read("/svc/users/v2/x")), Path.read("/x"))
        self.assertEqual(dentry.match(Path.read("/svc/*/v2")), Path.empty)
        self.assertIsNone(dentry.match(Path.read("/svc/users/v1")))
        self.assertIsNone(dentry.match(Path.read("/svc/users")))

    def test_starInsideASegmentIsLiteral(self):
        dentry = Dentry.read("/svc/a* => /#/fs")
        self.assertIsNone(dentry.match(Path.read("/svc/ab")))
        self.assertEqual(dentry.match(Path.read("/svc/a*")), Path.empty)

    def test_rewriteAppendsResidualToEveryLeaf(self):
        dentry = Dentry.read("/svc => /#/a | 0.5*/#/b & /#/c | ! | ~")
        self.assertEqual(
            dentry.rewrite(Path.read("/svc/users/v2")),
            dst("/#/a/users/v2 | 0.5*/#/b/users/v2 & /#/c/users/v2 | ! | ~"),
        )

    def test_rewriteWithEmptyResidualIsTheDestination(self):
        dentry = Dentry.read("/svc/users => /#/fs/users")
        self.assertIs(dentry.rewrite(Path.read("/svc/users")), dentry.dst)

    def test_rewriteOfNonMatchingPathIsNone(self):
        self.assertIsNone(Dentry.read("/a => /b").rewrite(Path.read("/b")))

    def test_constructorValidates(self):
        self.assertRaises(ValueError, Dentry, Path.empty, p("/a"))
        self.assertRaises(TypeError, Dentry, "/a", p("/b"))
        self.assertRaises(TypeError, Dentry, Path.read("/a"), Path.read("/b"))


class DtabValueTests(SynchronousTestCase):
    """
    L{Dtab} is a frozen value: concatenation, length, iteration, equality.
    """

    def test_addPutsRightHandRulesLast(self):
        a = Dtab.read("/a=>/b")
        b = Dtab.read("/c=>/d;/e=>/f")
        self.assertEqual((a + b).show(), "/a=>/b;/c=>/d;/e=>/f")
        self.assertEqual((b + a).show(), "/c=>/d;/e=>/f;/a=>/b")

    def test_addEmpty(self):
        a = Dtab.read("/a=>/b")
        self.assertIs(a + Dtab.empty, a)
        self.assertIs(Dtab.empty + a, a)

    def test_addRejectsOtherTypes(self):
        self.assertRaises(TypeError, lambda: Dtab.empty + "/a=>/b")

    def test_lenAndIter(self):
        dtab = Dtab.read("/a=>/b;/c=>/d")
        self.assertEqual(len(dtab), 2)
        self.assertEqual(list(dtab), list(dtab.dentries))
        self.assertEqual(len(Dtab.empty), 0)

    def test_equalityAndHash(self):
        self.assertEqual(Dtab.read("/a => /b ;"), Dtab.read("/a=>/b"))
        self.assertEqual(hash(Dtab.read("/a => /b ;")), hash(Dtab.read("/a=>/b")))
        self.assertNotEqual(Dtab.read("/a=>/b;/c=>/d"), Dtab.read("/c=>/d;/a=>/b"))

    def test_frozen(self):
        dtab = Dtab.read("/a=>/b")
        self.assertRaises(attrs.exceptions.FrozenInstanceError, setattr, dtab, "dentries", ())

    def test_acceptsAnyIterableOfDentries(self):
        dentries = [Dentry.read("/a=>/b")]
        self.assertEqual(Dtab(dentries).dentries, tuple(dentries))

    def test_rejectsNonDentries(self):
        self.assertRaises(TypeError, Dtab, ["/a=>/b"])
