"""
The types of configuration values: small validator objects, written as the
annotations of a L{Section<meshproxy.config.section.Section>}'s attributes
(C{total: Duration() = "10s"}). Each checks its value with
L{meshproxy.config.checks} (a value holding others, with its parts'
validators), words its problems as the proxy does, and says what it accepts
in the JSON Schema.

A validator's L{Validator.validate} returns the value to keep, or raises
L{Invalid} (one problem, at the value) or L{ValidationError} (problems at
paths inside the value); whoever holds the value puts its key in front.
C{X | None} is C{X} or C{null}.
"""

import os
import types
from collections.abc import Callable, Hashable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Literal, Union, get_args, get_origin

from meshproxy.config import checks, endpoints
from meshproxy.config.checks import Invalid, show, suggest
from meshproxy.config.problems import Loc, Problem, ValidationError, fail, isDocument, problemsOf

if TYPE_CHECKING:
    from meshproxy.config.section import Section

#: What a validator raises: L{Invalid}, L{ValidationError}, or another
#: L{ValueError} of the code it runs (see L{problemsAt}).
INVALID = ValueError

Context = Mapping[str, Any] | None


def problemsAt(error: ValueError, prefix: Loc) -> list[Problem]:
    """
    The problems of C{error}, raised by a validator, at C{prefix}. A
    L{ValueError} that is neither L{Invalid} nor L{ValidationError} (a value
    built in Python that a check did not foresee, such as a pair of three)
    is reported with its own words, as pydantic, the engine before this
    one, reported it.
    """
    if isinstance(error, ValidationError):
        return problemsOf(error, prefix)
    if isinstance(error, Invalid):
        return [Problem(prefix, str(error))]
    return [Problem(prefix, f"Value error, {error}")]


class Validator:
    """
    A type of configuration value.

    @ivar factory: when set, makes the default of an attribute of this type
        that gives none (L{Defaulted}).
    """

    factory: Callable[[], Any] | None = None

    def validate(self, value: Any, context: Context) -> Any:
        """
        Check C{value}.

        @param context: the validation context (L{isDocument}), or L{None}.
        @return: the value to keep.
        @raise Invalid: for a problem with the value as a whole.
        @raise ValidationError: for problems inside it.
        """
        raise NotImplementedError()

    def jsonSchema(self, definitions: dict[str, Any]) -> dict[str, Any]:
        """
        The JSON Schema of the values written.

        @param definitions: the schemas of the classes referred to, by
            name, to which the classes this value holds are added.
        """
        raise NotImplementedError()

    def __or__(self, other: Any) -> "Validator":
        if other is None:
            return Optional(self)
        return NotImplemented

    __ror__ = __or__


class Optional(Validator):
    """
    A value, or C{null}.
    """

    def __init__(self, inner: Validator) -> None:
        self.inner = inner

    def validate(self, value: Any, context: Context) -> Any:
        if value is None:
            return None
        return self.inner.validate(value, context)

    def jsonSchema(self, definitions: dict[str, Any]) -> dict[str, Any]:
        return {"anyOf": [self.inner.jsonSchema(definitions), {"type": "null"}]}


class SectionOf(Validator):
    """
    A value of a section class: a mapping, or an instance as it is.
    """

    def __init__(self, section: type["Section"]) -> None:
        self.section = section

    def validate(self, value: Any, context: Context) -> Any:
        return self.section._validateSection(value, context)

    def jsonSchema(self, definitions: dict[str, Any]) -> dict[str, Any]:
        return self.section._jsonSchemaRef(definitions)


class Constant(Validator):
    """
    One of a few fixed words (a selector's C{Literal[...]} annotation).
    """

    def __init__(self, options: tuple[str, ...]) -> None:
        self.options = options

    def validate(self, value: Any, context: Context) -> Any:
        return checks.choice(value, self.options)

    def jsonSchema(self, definitions: dict[str, Any]) -> dict[str, Any]:
        if len(self.options) == 1:
            return {"const": self.options[0], "type": "string"}
        return {"enum": list(self.options), "type": "string"}


class _Text(Validator):
    def validate(self, value: Any, context: Context) -> Any:
        return checks.string(value)

    def jsonSchema(self, definitions: dict[str, Any]) -> dict[str, Any]:
        return {"type": "string"}


Text = _Text()
"""A string, as it is."""


def validatorOf(annotation: Any) -> Validator:
    """
    The validator an attribute's annotation stands for: a L{Validator}, a
    section class, C{X | None}, C{Literal[...]} or C{str}.

    @raise TypeError: for anything else.
    """
    from meshproxy.config.section import Section

    if isinstance(annotation, Validator):
        return annotation
    if isinstance(annotation, type) and issubclass(annotation, Section):
        return SectionOf(annotation)
    if annotation is str:
        return Text
    origin = get_origin(annotation)
    if origin is Literal:
        return Constant(get_args(annotation))
    if origin is Union or origin is types.UnionType:
        others = [arg for arg in get_args(annotation) if arg is not type(None)]
        if len(others) == 1:
            return Optional(validatorOf(others[0]))
    if isinstance(annotation, str):
        raise TypeError(
            f"the annotation {annotation!r} is text: a configuration module cannot use"
            " 'from __future__ import annotations'"
        )
    raise TypeError(f"not a configuration value type: {annotation!r}")


class _Bool(Validator):
    def validate(self, value: Any, context: Context) -> Any:
        if not isinstance(value, bool):
            raise Invalid(f"expected true or false, got {show(value)}")
        return value

    def jsonSchema(self, definitions: dict[str, Any]) -> dict[str, Any]:
        return {"type": "boolean"}


Bool = _Bool()
"""C{true} or C{false}."""


def _bounds(minimum: float | None, maximum: float | None, exclusive: bool) -> dict:
    schema: dict[str, Any] = {}
    if minimum is not None:
        schema["exclusiveMinimum" if exclusive else "minimum"] = minimum
    if maximum is not None:
        schema["maximum"] = maximum
    return schema


class Integer(Validator):
    """
    An integer (not a boolean, not C{1.0}) within bounds.
    """

    def __init__(self, minimum: int | None = None, maximum: int | None = None) -> None:
        self.minimum = minimum
        self.maximum = maximum

    def validate(self, value: Any, context: Context) -> Any:
        if isinstance(value, bool) or not isinstance(value, int):
            raise Invalid(f"expected an integer, got {show(value)}")
        checks.checkRange(value, self.minimum, self.maximum)
        return value

    def jsonSchema(self, definitions: dict[str, Any]) -> dict[str, Any]:
        return {"type": "integer", **_bounds(self.minimum, self.maximum, False)}


class Number(Validator):
    """
    A finite number (an integer is taken as a float) within bounds.
    """

    def __init__(
        self,
        minimum: float | None = None,
        maximum: float | None = None,
        exclusiveMinimum: bool = False,
    ) -> None:
        self.minimum = minimum
        self.maximum = maximum
        self.exclusiveMinimum = exclusiveMinimum

    def validate(self, value: Any, context: Context) -> Any:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise Invalid(f"expected a number, got {show(value)}")
        number = checks.finite(value)
        if number is None:
            raise Invalid(f"expected a finite number, got {show(value)}")
        # The value as written: 1001, not 1001.0.
        checks.checkRange(value, self.minimum, self.maximum, self.exclusiveMinimum)
        return number

    def jsonSchema(self, definitions: dict[str, Any]) -> dict[str, Any]:
        bounds = _bounds(self.minimum, self.maximum, self.exclusiveMinimum)
        return {"type": "number", **bounds}


class Checked(Validator):
    """
    A value checked, and perhaps normalised, by a function of
    L{meshproxy.config.checks} (or one like them).
    """

    def __init__(
        self,
        check: Callable[..., Any],
        schema: Mapping[str, Any],
        *,
        withContext: bool = False,
    ) -> None:
        """
        @param check: takes the value (and the context, with
            C{withContext}), returns the value to keep, raises L{Invalid}.
        @param schema: its JSON Schema.
        """
        self.check = check
        self.schema = dict(schema)
        self.withContext = withContext

    def validate(self, value: Any, context: Context) -> Any:
        if self.withContext:
            return self.check(value, context)
        return self.check(value)

    def jsonSchema(self, definitions: dict[str, Any]) -> dict[str, Any]:
        return dict(self.schema)


def Choice(*options: str) -> Checked:
    """
    One of a few fixed words, spelt exactly (a wrong one gets a suggestion).
    """

    def choose(value: Any) -> str:
        return checks.choice(value, options)

    return Checked(choose, {"type": "string", "enum": list(options)})


_DURATION_SCHEMA = {
    "type": "string",
    "pattern": checks.DURATION_PATTERN,
    "description": "a number and a unit: ms, s, m or h (250ms, 10s, 5m)",
}


class Duration(Validator):
    """
    A duration, kept as float seconds: in a file, a string with a unit
    (C{"250ms"}); in Python, also a number of seconds.
    """

    def __init__(self, positive: bool = True, maximum: str | None = None) -> None:
        """
        @param positive: whether C{0s} is refused.
        @param maximum: the longest allowed, written with a unit, or L{None}.
        """
        self.positive = positive
        self.maximum = maximum
        self.longest = None if maximum is None else checks.parseDuration(maximum)

    def validate(self, value: Any, context: Context) -> Any:
        seconds = checks.duration(value, self.positive, seconds=not isDocument(context))
        if self.longest is not None and seconds > self.longest:
            raise Invalid(f"expected a duration of at most {self.maximum}, got {show(value)}")
        return seconds

    def jsonSchema(self, definitions: dict[str, Any]) -> dict[str, Any]:
        return dict(_DURATION_SCHEMA)


def baseDirectory(context: Context) -> str:
    """
    What relative paths are relative to: the directory of the config file,
    or the working directory.
    """
    return (context or {}).get("baseDirectory") or os.getcwd()


def _directory(value: Any, context: Context) -> str:
    return checks.directory(value, baseDirectory(context))


def Directory() -> Checked:
    """
    A directory, kept as an absolute path: a relative one is relative to
    the directory of the config file (or the working directory).
    """
    return Checked(_directory, {"type": "string", "minLength": 1}, withContext=True)


class EmptyIsDefaults(SectionOf):
    """
    A section whose empty value (all of it commented out) means its
    defaults.
    """

    def validate(self, value: Any, context: Context) -> Any:
        return self.section._validateSection({} if value is None else value, context)

    def jsonSchema(self, definitions: dict[str, Any]) -> dict[str, Any]:
        return {"anyOf": [super().jsonSchema(definitions), {"type": "null"}]}


def Defaulted(section: type["Section"]) -> EmptyIsDefaults:
    """
    A section attribute, its defaults when the key is absent or empty.
    """
    validator = EmptyIsDefaults(section)
    # A factory rather than a default value: the JSON Schema then shows the
    # defaults of each key of the section rather than the whole section.
    validator.factory = section
    return validator


def _validated(raw: Any, validated: Any) -> Any:
    return validated


class ListOf(Validator):
    """
    A list, kept as a tuple of its items. An empty value is an empty list;
    each bad item is reported at its index, and the others are still read.
    """

    def __init__(
        self,
        item: Any,
        *,
        unique: bool = False,
        uniqueBy: Callable[[Any, Any], Hashable | None] | None = None,
        uniqueAt: Loc = (),
        duplicate: str = "{shown} is already listed at {ref}",
        nonEmpty: str | None = None,
    ) -> None:
        """
        @param item: the type of the items (as an annotation).
        @param unique: whether an item equal to an earlier one (once
            validated: C{A.B} and C{a.b} are the same host name) is refused.
        @param uniqueBy: when given, items with equal keys are refused; it
            is called with the item as written and as validated (L{None}
            when invalid), and returns the key or L{None} for no key.
        @param uniqueAt: where in the item a repeated key is reported.
        @param duplicate: the message for a repeat; C{{shown}} is the key
            and C{{ref}} the path of its first use.
        @param nonEmpty: when given, the message for an empty list.
        """
        self.item = validatorOf(item)
        self.uniqueBy = _validated if unique else uniqueBy
        self.uniqueAt = uniqueAt
        self.duplicate = duplicate
        self.nonEmpty = nonEmpty

    def validate(self, value: Any, context: Context) -> Any:
        if value is None:
            value = ()
        if not isinstance(value, (list, tuple)):
            raise Invalid(f"expected a list, got {show(value)}")
        items: list[Any] = []
        problems: list[Problem] = []
        seen: dict[Hashable, int] = {}
        uniqueBy, uniqueAt = self.uniqueBy, self.uniqueAt
        for i, raw in enumerate(value):
            validated = None
            try:
                validated = self.item.validate(raw, context)
            except INVALID as e:
                problems.extend(problemsAt(e, (i,)))
            else:
                items.append(validated)
            key = None if uniqueBy is None else uniqueBy(raw, validated)
            if key is None:
                continue
            if key in seen:
                message = self.duplicate.format(shown=show(key), ref="{ref}")
                problems.append(Problem((i, *uniqueAt), message, (1 + len(uniqueAt), (seen[key],))))
            else:
                seen[key] = i
        if not value and self.nonEmpty is not None:
            problems.append(Problem((), self.nonEmpty))
        if problems:
            fail("list", problems)
        return tuple(items)

    def jsonSchema(self, definitions: dict[str, Any]) -> dict[str, Any]:
        items = self.item.jsonSchema(definitions)
        if self.nonEmpty is not None:
            return {"items": items, "minItems": 1, "type": "array"}
        return {"anyOf": [{"items": items, "type": "array"}, {"type": "null"}]}


class PairsOf(Validator):
    """
    A mapping, kept as a tuple of C{(key, value)} pairs in the order
    written. An empty value is an empty mapping. In Python, pairs are
    accepted too.
    """

    def __init__(
        self,
        key: Callable[[str], str],
        value: Any,
        *,
        keyPattern: str,
        notMapping: str,
        keyProblemsAtKey: bool,
    ) -> None:
        """
        @param key: checks a key.
        @param value: the type of the values (as an annotation).
        @param keyPattern: what keys look like, for the JSON Schema.
        @param notMapping: the message for a value that is no mapping.
        @param keyProblemsAtKey: whether a bad key is reported at its own
            path (C{boundNames["/svc"]}) rather than at the mapping's.
        """
        self.key = key
        self.value = validatorOf(value)
        self.keyPattern = keyPattern
        self.notMapping = notMapping
        self.keyProblemsAtKey = keyProblemsAtKey

    def validate(self, raw: Any, context: Context) -> Any:
        if raw is None:
            return ()
        pairs: Iterable[Any]
        if isinstance(raw, Mapping):
            pairs = raw.items()
        elif isinstance(raw, tuple) or (isinstance(raw, list) and not isDocument(context)):
            # Pairs, as stored: the default, or a value built in Python.
            pairs = raw
        else:
            raise Invalid(f"{self.notMapping}, got {show(raw)}")
        result, problems = [], []
        for name, item in pairs:
            if not isinstance(name, str):
                problems.append(Problem((), f"keys must be strings, got {show(name)}"))
                continue
            try:
                self.key(name)
            except Invalid as e:
                problems.append(Problem((name,) if self.keyProblemsAtKey else (), str(e)))
                continue
            try:
                result.append((name, self.value.validate(item, context)))
            except INVALID as e:
                problems.extend(problemsAt(e, (name,)))
        if problems:
            fail("mapping", problems)
        return tuple(result)

    def jsonSchema(self, definitions: dict[str, Any]) -> dict[str, Any]:
        mapping = {
            "patternProperties": {self.keyPattern: self.value.jsonSchema(definitions)},
            "type": "object",
        }
        return {"anyOf": [mapping, {"type": "null"}]}


class KindOf(Validator):
    """
    A value of one of several section classes, chosen by its C{kind} key,
    which must be given.
    """

    def __init__(self, *classes: type["Section"]) -> None:
        self.classes = classes
        self.byKind = {cls.model_fields["kind"].default: cls for cls in classes}
        self.known = [key for cls in classes for key in cls.documentKeys()]

    def validate(self, value: Any, context: Context) -> Any:
        if isinstance(value, self.classes):
            return value
        if not isinstance(value, Mapping):
            raise Invalid(f"expected a mapping, got {show(value)}")
        kind, problems = None, []
        if "kind" not in value:
            problems.append(Problem(("kind",), "required"))
        else:
            try:
                kind = checks.choice(value["kind"], self.byKind)
            except Invalid as e:
                problems.append(Problem(("kind",), str(e)))
        if kind is None:
            problems.extend(_keyProblems(value, self.known))
            fail("kind", problems)
        return self.byKind[kind]._validateSection(value, context)

    def jsonSchema(self, definitions: dict[str, Any]) -> dict[str, Any]:
        refs = [cls._jsonSchemaRef(definitions) for cls in self.classes]
        mapping = {
            kind: cls._jsonSchemaRef(definitions)["$ref"] for kind, cls in self.byKind.items()
        }
        return {
            "discriminator": {"mapping": mapping, "propertyName": "kind"},
            "oneOf": refs,
        }


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
)
