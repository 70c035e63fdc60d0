"""
Tests for the diff a change of rules or policy logs
(L{meshproxy.admin.versioned._diff}): bounded in time and in size.
"""

import random

from twisted.trial.unittest import SynchronousTestCase

from meshproxy.admin.versioned import DIFF_INPUT_LINES, DIFF_LINE_LENGTH, DIFF_LINES, _diff


def numbered(count: int, prefix: str) -> str:
    """
    C{count} dtab lines, each naming its number.
    """
    return "\n".join(f"/svc/{prefix}{i} => /#/fs/{prefix}{i};" for i in range(count))


class DiffTests(SynchronousTestCase):
    """
    L{_diff} shows what changed, within bounds.
    """

    def test_unifiedDiff(self) -> None:
        """
        A small change is a unified diff labelled with the two versions.
        """
        old = "/svc => /#/fs;\n/a => /b;"
        new = "/svc => /#/fs;\n/a => /c;"
        self.assertEqual(
            _diff("web", "v1", old, "v2", new).splitlines(),
            [
                "--- web@v1",
                "+++ web@v2",
                "@@ -1,2 +1,2 @@",
                " /svc => /#/fs;",
                "-/a => /b;",
                "+/a => /c;",
            ],
        )

    def test_longLineClipped(self) -> None:
        """
        A line longer than L{DIFF_LINE_LENGTH} is cut, saying how much was
        cut: a 256 KiB comment is not one 256 KiB log line.
        """
        new = "/svc => /#/fs;\n#" + "x" * 100_000
        lines = _diff("web", "v1", "/svc => /#/fs;", "v2", new).splitlines()
        clipped = "+#" + "x" * (DIFF_LINE_LENGTH - 2) + "... (99702 more characters)"
        self.assertEqual(lines[-1], clipped)
        self.assertLessEqual(max(len(line) for line in lines), DIFF_LINE_LENGTH + 40)

    def test_manyDiffLinesCounted(self) -> None:
        """
        At most L{DIFF_LINES} lines of diff are shown; the rest are counted.
        """
        count = DIFF_INPUT_LINES // 2 - 10
        lines = _diff("web", "v1", numbered(count, "a"), "v2", numbered(count, "b")).splitlines()
        self.assertEqual(len(lines), DIFF_LINES + 1)
        # Two labels, one hunk header, then every old and every new line.
        self.assertEqual(lines[-1], f"... ({2 * count + 3 - DIFF_LINES} more lines)")

    def test_largeValuesNotDiffed(self) -> None:
        """
        Above L{DIFF_INPUT_LINES} lines in the two values together, no diff
        is computed (its cost grows faster than the values: seconds of a
        blocked reactor for a 256 KiB body of short lines), only the counts.
        """
        rng = random.Random(1)
        old = "\n".join(f"/s{rng.randrange(1000)} => /b;" for _ in range(DIFF_INPUT_LINES))
        new = "\n".join(f"/s{rng.randrange(1000)} => /b;" for _ in range(40_000))
        self.assertEqual(
            _diff("web", "v1", old, "v2", new),
            f"(no diff: {DIFF_INPUT_LINES} lines before and 40000 after, more than"
            f" {DIFF_INPUT_LINES} together; the history has both)",
        )

    def test_atTheLimitDiffed(self) -> None:
        """
        Exactly L{DIFF_INPUT_LINES} lines together are still diffed.
        """
        half = DIFF_INPUT_LINES // 2
        old = numbered(half, "a")
        new = numbered(half - 1, "a") + "\n/svc/z => /#/fs/z;"
        lines = _diff("web", "v1", old, "v2", new).splitlines()
        self.assertEqual(lines[:2], ["--- web@v1", "+++ web@v2"])
        last = half - 1
        self.assertEqual(lines[-2:], [f"-/svc/a{last} => /#/fs/a{last};", "+/svc/z => /#/fs/z;"])
