"""
Problems found in a configuration, carried through pydantic.

Every problem travels inside pydantic's L{ValidationError} as a custom
error of type L{ERROR_TYPE} whose context holds the finished message, so
that pydantic keeps track of where it is (the key path) while the wording
stays ours. L{problemsOf} reads them back, translating pydantic's own
errors (a missing key, a value of the wrong type) into the same wording.

Values read from a file are validated with a context made by
L{documentContext}; values built in Python (C{TimeoutsConfig(total=2.0)})
have none.
"""

from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple, NoReturn

from pydantic import TypeAdapter, ValidationError
from pydantic_core import InitErrorDetails, PydanticCustomError

from meshproxy.config.checks import show

ERROR_TYPE = "meshproxy"
"""The pydantic error type of the proxy's own messages."""

Loc = tuple[str | int, ...]


class Problem(NamedTuple):
    """
    One problem, where it is and what it is.

    @ivar loc: the key path, as pydantic gives it (C{("routers", 0, "listen")}).
    @ivar message: what is wrong, in the user's terms. C{"{ref}"} in it
        stands for the path given by C{ref}.
    @ivar ref: another key path the message names, as C{(up, tail)}: leave
        C{up} elements off the end of C{loc}, then add C{tail}.
    @ivar native: the type of the pydantic error it was translated from.
    """

    loc: Loc
    message: str
    ref: tuple[int, Loc] | None = None
    native: str | None = None


def fail(title: str, problems: Iterable[Problem]) -> NoReturn:
    """
    Raise problems as one L{ValidationError}.
    """
    lineErrors: list[InitErrorDetails] = []
    for problem in problems:
        context: dict[str, Any] = {"message": problem.message}
        if problem.ref is not None:
            context["refUp"], context["refTail"] = problem.ref[0], list(problem.ref[1])
        lineErrors.append(
            {
                "type": PydanticCustomError(ERROR_TYPE, "{message}", context),
                "loc": problem.loc,
                "input": None,
            }
        )
    raise ValidationError.from_exception_data(title, lineErrors)


def failOne(message: str) -> NoReturn:
    """
    Raise one problem from inside a validator: pydantic adds the key path.
    """
    raise PydanticCustomError(ERROR_TYPE, "{message}", {"message": message})


# pydantic's own errors, in our words; {} is the value shown.
_NATIVE = {
    "missing": "required",
    "extra_forbidden": "unknown key",
    "int_type": "expected an integer, got {}",
    "bool_type": "expected true or false, got {}",
    "float_type": "expected a number, got {}",
    "finite_number": "expected a finite number, got {}",
    "string_type": "expected a string, got {}",
    "model_type": "expected a mapping, got {}",
    "dict_type": "expected a mapping, got {}",
    "tuple_type": "expected a list, got {}",
    "list_type": "expected a list, got {}",
}


def problemsOf(error: ValidationError, prefix: Loc = ()) -> list[Problem]:
    """
    The problems a L{ValidationError} holds, in our words.

    @param prefix: put in front of every key path.
    """
    problems = []
    for line in error.errors(include_url=False):
        loc = prefix + tuple(line["loc"])
        context = line.get("ctx") or {}
        if line["type"] == ERROR_TYPE:
            ref = None
            if "refUp" in context:
                ref = (context["refUp"], tuple(context["refTail"]))
            problems.append(Problem(loc, context["message"], ref))
        else:
            template = _NATIVE.get(line["type"])
            message = line["msg"] if template is None else template.format(show(line["input"]))
            problems.append(Problem(loc, message, native=line["type"]))
    return problems


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


class LazyAdapter:
    """
    A L{TypeAdapter}, made the first time it is needed (making one is not
    cheap, and the types it adapts may not all be defined yet).
    """

    def __init__(self, type: Any) -> None:
        self.type = type
        self._adapter: TypeAdapter | None = None

    def validate(self, value: Any, context: Mapping[str, Any] | None) -> Any:
        """
        Validate C{value}.

        @raise ValidationError: if it is not valid.
        """
        if self._adapter is None:
            self._adapter = TypeAdapter(self.type)
        return self._adapter.validate_python(value, context=context)
