"""
Problems found in a configuration, and the exception that carries them.

A check of one value raises L{meshproxy.config.checks.Invalid} (or
L{failOne}) with a message in the proxy's own words and no key path; a
value holding others (a section, a list, a mapping) collects the problems
of its parts, puts its own key (or index) in front of each one's path, and
raises them all at once as one L{ValidationError} (L{fail}). L{problemsOf}
reads them back.

Values read from a file are validated with a context made by
L{documentContext}; values built in Python (C{TimeoutsConfig(total=2.0)})
have none.
"""

from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple, NoReturn

Loc = tuple[str | int, ...]


class Problem(NamedTuple):
    """
    One problem, where it is and what it is.

    @ivar loc: the key path (C{("routers", 0, "listen")}).
    @ivar message: what is wrong, in the user's terms. C{"{ref}"} in it
        stands for the path given by C{ref}.
    @ivar ref: another key path the message names, as C{(up, tail)}: leave
        C{up} elements off the end of C{loc}, then add C{tail}.
    """

    loc: Loc
    message: str
    ref: tuple[int, Loc] | None = None


class ValidationError(ValueError):
    """
    A value (a section, a list, one value) is not valid.

    @ivar title: what was validated (a class name, C{"list"}).
    @ivar problems: the L{Problem}s found, in order, their paths relative
        to the value.
    """

    def __init__(self, title: str, problems: Iterable[Problem]) -> None:
        self.title = title
        self.problems = list(problems)
        super().__init__(title, self.problems)

    def __str__(self) -> str:
        count = len(self.problems)
        lines = [f"{count} problem{'' if count == 1 else 's'} in {self.title}"]
        for problem in self.problems:
            where = ".".join(str(part) for part in problem.loc)
            lines.append(f"  {where or '(the value)'}: {problem.message}")
        return "\n".join(lines)


def fail(title: str, problems: Iterable[Problem]) -> NoReturn:
    """
    Raise problems as one L{ValidationError}.
    """
    raise ValidationError(title, problems)


def failOne(message: str) -> NoReturn:
    """
    Raise one problem of a value: whoever holds the value adds its key path.
    """
    raise ValidationError("value", [Problem((), message)])


def problemsOf(error: ValidationError, prefix: Loc = ()) -> list[Problem]:
    """
    The problems a L{ValidationError} holds.

    @param prefix: put in front of every key path.
    """
    if not prefix:
        return list(error.problems)
    return [problem._replace(loc=prefix + problem.loc) for problem in error.problems]


# -- context ------------------------------------------------------------------


def documentContext(baseDirectory: str, source: str) -> dict[str, Any]:
    """
    The validation context of a configuration read from a file.

    @param baseDirectory: what relative paths are relative to.
    @param source: names the file, for L{MeshConfig.source}.
    @return: the context, which also remembers each mapping validated
        (see L{Section._validateSection}).
    """
    return {"document": True, "baseDirectory": baseDirectory, "source": source, "validated": {}}


def isDocument(context: Mapping[str, Any] | None) -> bool:
    """
    Whether values are being read from a file (rather than built in Python).
    """
    return bool(context and context.get("document"))
