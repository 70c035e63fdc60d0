"""
The types of configuration values, as pydantic annotations: each checks its
value with L{meshproxy.config.checks} (or pydantic's strict types), words
its problems as the proxy does, and says what it accepts in the JSON Schema.
"""

import os
from collections.abc import Callable, Hashable, Iterable, Mapping
from typing import TYPE_CHECKING, Annotated, Any, Union

from pydantic import (
    AfterValidator,
    AllowInfNan,
    BeforeValidator,
    Field,
    PlainValidator,
    Strict,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    WrapValidator,
)

from meshproxy.config import checks, endpoints
from meshproxy.config.checks import Invalid, show, suggest
from meshproxy.config.problems import (
    LazyAdapter,
    Loc,
    Problem,
    fail,
    failOne,
    isDocument,
    problemsOf,
)

if TYPE_CHECKING:
    from meshproxy.config.section import Section


def _raising(check: Callable[..., Any]) -> Callable[[Any], Any]:
    def validate(value: Any) -> Any:
        try:
            return check(value)
        except Invalid as e:
            failOne(str(e))

    return validate


Bool = Annotated[bool, Strict()]
"""C{true} or C{false}."""

def _bounds(minimum: float | None, maximum: float | None, exclusive: bool) -> dict:
    schema: dict[str, Any] = {}
    if minimum is not None:
        schema["exclusiveMinimum" if exclusive else "minimum"] = minimum
    if maximum is not None:
        schema["maximum"] = maximum
    return schema


def Integer(minimum: int | None = None, maximum: int | None = None) -> Any:
    """
    An integer (not a boolean, not C{1.0}) within bounds.
    """

    def inRange(value: int) -> int:
        checks.checkRange(value, minimum, maximum)
        return value

    schema = {"type": "integer", **_bounds(minimum, maximum, False)}
    return Annotated[int, Strict(), AfterValidator(_raising(inRange)), WithJsonSchema(schema)]


def Number(
    minimum: float | None = None,
    maximum: float | None = None,
    exclusiveMinimum: bool = False,
) -> Any:
    """
    A finite number (an integer is taken as a float) within bounds.
    """

    def inRange(value: Any, handler: Callable[[Any], float]) -> float:
        number = handler(value)
        try:
            # The value as written: 1001, not 1001.0.
            checks.checkRange(value, minimum, maximum, exclusiveMinimum)
        except Invalid as e:
            failOne(str(e))
        return number

    schema = {"type": "number", **_bounds(minimum, maximum, exclusiveMinimum)}
    return Annotated[
        float, Strict(), AllowInfNan(False), WrapValidator(inRange), WithJsonSchema(schema)
    ]


def Checked(check: Callable[[Any], Any], schema: Mapping[str, Any], type: Any = str) -> Any:
    """
    A value checked, and perhaps normalised, by C{check}.

    @param check: a function of L{meshproxy.config.checks}.
    @param schema: its JSON Schema.
    @param type: the type of the values C{check} returns.
    """
    return Annotated[type, PlainValidator(_raising(check)), WithJsonSchema(dict(schema))]


def Choice(*options: str) -> Any:
    """
    One of a few fixed words, spelt exactly (a wrong one gets a suggestion).
    """

    def choose(value: Any) -> str:
        return checks.choice(value, options)

    return Checked(choose, {"type": "string", "enum": list(options)})


def Duration(positive: bool = True, maximum: str | None = None) -> Any:
    """
    A duration, kept as float seconds: in a file, a string with a unit
    (C{"250ms"}); in Python, also a number of seconds.

    @param positive: whether C{0s} is refused.
    @param maximum: the longest allowed, written with a unit, or L{None}.
    """
    longest = None if maximum is None else checks.parseDuration(maximum)

    def validate(value: Any, info: ValidationInfo) -> float:
        try:
            seconds = checks.duration(value, positive, seconds=not isDocument(info.context))
        except Invalid as e:
            failOne(str(e))
        if longest is not None and seconds > longest:
            failOne(f"expected a duration of at most {maximum}, got {show(value)}")
        return seconds

    schema = {
        "type": "string",
        "pattern": checks.DURATION_PATTERN,
        "description": "a number and a unit: ms, s, m or h (250ms, 10s, 5m)",
    }
    return Annotated[float, PlainValidator(validate), WithJsonSchema(schema)]


def _baseDirectory(info: ValidationInfo) -> str:
    return (info.context or {}).get("baseDirectory") or os.getcwd()


def Directory() -> Any:
    """
    A directory, kept as an absolute path: a relative one is relative to
    the directory of the config file (or the working directory).
    """

    def validate(value: Any, info: ValidationInfo) -> str:
        try:
            return checks.directory(value, _baseDirectory(info))
        except Invalid as e:
            failOne(str(e))

    return Annotated[
        str, PlainValidator(validate), WithJsonSchema({"type": "string", "minLength": 1})
    ]


def _emptyIfNone(value: Any) -> Any:
    return {} if value is None else value


def EmptyIsDefaults(section: type) -> Any:
    """
    A section whose empty value (all of it commented out) means its
    defaults.
    """
    return Annotated[section, BeforeValidator(_emptyIfNone, json_schema_input_type=section | None)]


def Defaulted(section: type) -> Any:
    """
    A section attribute, its defaults when the key is absent or empty.
    """
    # A factory rather than a default value: the JSON Schema then shows the
    # defaults of each key of the section rather than the whole section.
    return Annotated[EmptyIsDefaults(section), Field(default_factory=section)]


def _validated(raw: Any, validated: Any) -> Any:
    return validated


def ListOf(
    item: Any,
    *,
    unique: bool = False,
    uniqueBy: Callable[[Any, Any], Hashable | None] | None = None,
    uniqueAt: Loc = (),
    duplicate: str = "{shown} is already listed at {ref}",
    nonEmpty: str | None = None,
) -> Any:
    """
    A list, kept as a tuple of its items. An empty value is an empty list;
    each bad item is reported at its index, and the others are still read.

    @param unique: whether an item equal to an earlier one (once
        validated: C{A.B} and C{a.b} are the same host name) is refused.
    @param uniqueBy: when given, items with equal keys are refused; it is
        called with the item as written and as validated (L{None} when
        invalid), and returns the key or L{None} for no key.
    @param uniqueAt: where in the item a repeated key is reported.
    @param duplicate: the message for a repeat; C{{shown}} is the key and
        C{{ref}} the path of its first use.
    @param nonEmpty: when given, the message for an empty list.
    """
    adapter = LazyAdapter(item)
    if unique:
        uniqueBy = _validated

    def validate(value: Any, info: ValidationInfo) -> tuple:
        if value is None:
            value = []
        if not isinstance(value, (list, tuple)):
            fail("list", [Problem((), f"expected a list, got {show(value)}")])
        items: list[Any] = []
        problems: list[Problem] = []
        seen: dict[Hashable, int] = {}
        for i, raw in enumerate(value):
            validated = None
            try:
                validated = adapter.validate(raw, info.context)
            except ValidationError as e:
                problems.extend(problemsOf(e, (i,)))
            else:
                items.append(validated)
            key = None if uniqueBy is None else uniqueBy(raw, validated)
            if key is None:
                continue
            if key in seen:
                message = duplicate.format(shown=show(key), ref="{ref}")
                problems.append(Problem((i, *uniqueAt), message, (1 + len(uniqueAt), (seen[key],))))
            else:
                seen[key] = i
        if not value and nonEmpty is not None:
            problems.append(Problem((), nonEmpty))
        if problems:
            fail("list", problems)
        return tuple(items)

    written: Any = list[item] | None
    if nonEmpty is not None:
        written = Annotated[list[item], Field(min_length=1)]
    return Annotated[tuple[item, ...], PlainValidator(validate, json_schema_input_type=written)]


def PairsOf(
    key: Callable[[str], str],
    value: Any,
    *,
    keyPattern: str,
    notMapping: str,
    keyProblemsAtKey: bool,
) -> Any:
    """
    A mapping, kept as a tuple of C{(key, value)} pairs in the order written.
    An empty value is an empty mapping. In Python, pairs are accepted too.

    @param key: checks a key.
    @param keyPattern: what keys look like, for the JSON Schema.
    @param notMapping: the message for a value that is no mapping.
    @param keyProblemsAtKey: whether a bad key is reported at its own path
        (C{boundNames["/svc"]}) rather than at the mapping's.
    """
    adapter = LazyAdapter(value)

    def validate(raw: Any, info: ValidationInfo) -> tuple:
        if raw is None:
            return ()
        pairs: Iterable[Any]
        if isinstance(raw, Mapping):
            pairs = raw.items()
        elif isinstance(raw, tuple) or (isinstance(raw, list) and not isDocument(info.context)):
            # Pairs, as stored: the default, or a value built in Python.
            pairs = raw
        else:
            fail("mapping", [Problem((), f"{notMapping}, got {show(raw)}")])
        result, problems = [], []
        for name, item in pairs:
            if not isinstance(name, str):
                problems.append(Problem((), f"keys must be strings, got {show(name)}"))
                continue
            try:
                key(name)
            except Invalid as e:
                problems.append(Problem((name,) if keyProblemsAtKey else (), str(e)))
                continue
            try:
                result.append((name, adapter.validate(item, info.context)))
            except ValidationError as e:
                problems.extend(problemsOf(e, (name,)))
        if problems:
            fail("mapping", problems)
        return tuple(result)

    keyType = Annotated[str, Field(pattern=keyPattern)]
    return Annotated[
        tuple[tuple[str, value], ...],
        PlainValidator(validate, json_schema_input_type=dict[keyType, value] | None),
    ]


def KindOf(*classes: type["Section"]) -> Any:
    """
    A value of one of several section classes, chosen by its C{kind} key,
    which must be given.
    """
    byKind = {cls.model_fields["kind"].default: cls for cls in classes}
    known = [key for cls in classes for key in cls.documentKeys()]

    def validate(value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, classes):
            return value
        if not isinstance(value, Mapping):
            fail("kind", [Problem((), f"expected a mapping, got {show(value)}")])
        kind, problems = None, []
        if "kind" not in value:
            problems.append(Problem(("kind",), "required"))
        else:
            try:
                kind = checks.choice(value["kind"], byKind)
            except Invalid as e:
                problems.append(Problem(("kind",), str(e)))
        if kind is None:
            problems.extend(_keyProblems(value, known))
            fail("kind", problems)
        try:
            return byKind[kind].model_validate(value, context=info.context)
        except ValidationError as e:
            fail("kind", problemsOf(e))

    # A union of classes given at run time, which has no "A | B" spelling.
    anyOf = Union[classes]  # type: ignore[valid-type]  # noqa: UP007
    return Annotated[
        anyOf,
        PlainValidator(
            validate, json_schema_input_type=Annotated[anyOf, Field(discriminator="kind")]
        ),
    ]


def _keyProblems(data: Mapping, known: Iterable[str]) -> list[Problem]:
    """
    The keys of C{data} that are not strings or not C{known}, in order.
    """
    problems = []
    for key in data:
        if not isinstance(key, str):
            problems.append(Problem((), f"keys must be strings, got {show(key)}"))
        elif key not in known:
            problems.append(Problem((key,), "unknown key" + suggest(key, known)))
    return problems


# -- the values of the proxy's domain -----------------------------------------

_SEGMENTS = f"(/{checks.SEGMENT_PATTERN})+"

Endpoint = Checked(
    endpoints.endpoint,
    {
        "type": "string",
        "minLength": 1,
        "description": (
            'a Twisted server endpoint description, such as "tcp:4140:interface=127.0.0.1"'
        ),
    },
)
NonEmptyText = Checked(checks.nonEmptyString, {"type": "string", "minLength": 1})
NamePath = Checked(checks.path, {"type": "string", "pattern": f"^(/|{_SEGMENTS})$"})
NamerPrefix = Checked(checks.namerPrefix, {"type": "string", "pattern": f"^/#{_SEGMENTS}$"})
BoundName = Checked(
    checks.boundName,
    {"type": "string", "pattern": f"^(/#{_SEGMENTS}|/\\$/inet/{checks.SEGMENT_PATTERN}/[0-9]+)$"},
)
RouterName = Checked(
    checks.routerName, {"type": "string", "pattern": f"^{checks.ROUTER_NAME_PATTERN}$"}
)
HeaderName = Checked(checks.headerName, {"type": "string", "minLength": 1})
Network = Checked(checks.network, {"type": "string", "description": "an IP address or network"})
AllowedHost = Checked(checks.allowedHost, {"type": "string", "minLength": 1})
Rules = Checked(checks.rules, {"type": "string", "description": "a dtab"})
Address = Checked(
    checks.address,
    {"type": "string", "description": '"host:port" or "host:port weight"'},
    tuple[str, int, float],
)
