"""
L{Section}, the base class of the configuration classes: a frozen value
refusing unknown keys, whose validation gives the proxy's messages in the
proxy's order.

A section's attributes are its annotated class attributes, in the order
written (C{total: Duration() = "10s"}): the annotation says how the value
is checked (see L{meshproxy.config.fields}), the value given is the default,
written as in YAML (C{"10s"}) and validated, without a file's context, once
per class (the validated defaults are immutable, so every instance shares
them); an attribute without one is required. L{Field} gives an attribute a
key of another name (C{for}).

Within one mapping, problems come in this order: its C{kind} (or
C{protocol}), then its keys (unknown, or meant for another kind) in the
order written, then its values in the order of the class's fields, then
the checks across several of its values (C{_crossCheck}, which sees the
mapping through a L{View}).
"""

import inspect
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar, Optional, TypeVar, get_origin

from meshproxy.config import checks
from meshproxy.config.checks import Invalid, show, suggest
from meshproxy.config.fields import INVALID, Constant, Validator, problemsAt, validatorOf
from meshproxy.config.problems import Problem, ValidationError, fail, isDocument

_Self = TypeVar("_Self", bound="Section")


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()
"""The default of an attribute that has none: it is required."""


class Field:
    """
    One attribute of a section class; written as its class attribute's
    value, to give it a default and another key (C{Field("30s",
    alias="for")}).

    @ivar name: the attribute's name.
    @ivar alias: the key a file gives it by, or L{None} for C{name}.
    @ivar default: the default as written, or L{MISSING}.
    @ivar default_factory: makes the default, or L{None}.
    @ivar annotation: the attribute's annotation.
    @ivar validator: the L{Validator} the annotation stands for.
    """

    name: str
    annotation: Any
    validator: Validator
    default_factory: Callable[[], Any] | None

    def __init__(self, default: Any = MISSING, *, alias: str | None = None) -> None:
        self.default = default
        self.alias = alias
        self.default_factory = None

    @property
    def required(self) -> bool:
        """
        Whether the attribute has no default.
        """
        return self.default is MISSING and self.default_factory is None

    def get_default(self, call_default_factory: bool = False) -> Any:
        """
        The default as written (or made by the factory).
        """
        if self.default_factory is not None and call_default_factory:
            return self.default_factory()
        return self.default

    def __repr__(self) -> str:
        return f"Field({self.name!r}, alias={self.alias!r}, default={self.default!r})"


def _fields(cls: type) -> dict[str, Field]:
    """
    The attributes of a section class, from its (and its bases')
    annotations, the class attributes taken off the class.
    """
    fields: dict[str, Field] = {}
    for base in reversed(cls.__mro__):
        if base is cls:
            continue
        fields.update(getattr(base, "model_fields", {}))
    for name, annotation in cls.__dict__.get("__annotations__", {}).items():
        if name.startswith("_") or annotation is ClassVar or get_origin(annotation) is ClassVar:
            continue
        given = cls.__dict__.get(name, MISSING)
        field = given if isinstance(given, Field) else Field(given)
        if name in cls.__dict__:
            delattr(cls, name)
        field.name = name
        field.annotation = annotation
        field.validator = validatorOf(annotation)
        if field.default is MISSING:
            field.default_factory = field.validator.factory
        fields[name] = field
    return fields


class View:
    """
    What the checks across the values of one section see: the keys as
    written, and the values validated (those without problems).
    """

    def __init__(
        self,
        section: type["Section"],
        data: Mapping[str, Any],
        config: Optional["Section"],
        failed: set,
        context: Mapping[str, Any] | None,
    ) -> None:
        """
        @param section: the class.
        @param data: the keys and values written, as validated.
        @param config: the validated section, or L{None} if it had problems.
        @param failed: the keys that had problems.
        @param context: the validation context.
        """
        self._section = section
        self._data = data
        self._config = config
        self._failed = failed
        self._context = context

    def given(self, key: str) -> bool:
        """
        Whether C{key} is written (even as C{null}).
        """
        return key in self._data

    def raw(self, key: str) -> Any:
        """
        The value of C{key} as written, or L{None}.
        """
        return self._data.get(key)

    def ok(self, *keys: str) -> bool:
        """
        Whether none of C{keys} had a problem.
        """
        return self._failed.isdisjoint(keys)

    def values(self, *names: str) -> tuple | None:
        """
        The validated values of the attributes C{names} (their defaults when
        not written), or L{None} if any of them had a problem.
        """
        if self._config is not None:
            return tuple(getattr(self._config, name) for name in names)
        result = []
        defaults = self._section._defaults()
        for name in names:
            field = self._section.model_fields[name]
            key = field.alias or name
            if key in self._failed:
                return None
            if key not in self._data:
                if field.required:
                    return None
                result.append(defaults[name])
                continue
            try:
                result.append(field.validator.validate(self._data[key], self._context))
            except INVALID:
                return None
        return tuple(result)

    def items(self, name: str, item: Any) -> list[tuple[int, Any]]:
        """
        The valid items of the list attribute C{name}, with their indexes.

        @param item: the type of the items (as an annotation).
        """
        if self._config is not None:
            return list(enumerate(getattr(self._config, name)))
        raw = self._data.get(name)
        if not isinstance(raw, list):
            return []
        validator = validatorOf(item)
        valid = []
        for i, value in enumerate(raw):
            try:
                valid.append((i, validator.validate(value, self._context)))
            except INVALID:
                pass
        return valid


class Section:
    """
    A mapping of the configuration: a frozen value refusing unknown keys.

    Built from keywords (C{TimeoutsConfig(total=2.0)}: values built in
    Python, checked one by one) or by L{model_validate} (with a document
    context: a file). Equal to another of the same class with equal
    attributes; hashable. (C{model_validate}, C{model_fields} and
    C{model_copy} are named as pydantic, the engine before this one, names
    them.)

    Subclasses whose keys depend on a selector (C{kind}, C{protocol}) name
    it in C{_selector} and list in C{_kinds} the keys only some kinds have;
    C{_common} keys belong to every kind.

    @cvar model_fields: the L{Field}s, by attribute name, in order.
    """

    model_fields: ClassVar[dict[str, Field]] = {}
    # The defaults validated, made on first use (see _defaults).
    _defaultValues: ClassVar[dict[str, Any] | None] = None

    _selector: ClassVar[str | None] = None
    _kinds: ClassVar[Mapping[str, tuple[str, ...]]] = {}
    _common: ClassVar[tuple[str, ...]] = ()
    # Looked up by kind, None for a section without kinds (which needs nothing).
    _requiredFor: ClassVar[Mapping[str | None, tuple[str, ...]]] = {}
    _notInDocument: ClassVar[tuple[str, ...]] = ()
    _selectorRequired: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.model_fields = _fields(cls)
        cls._defaultValues = None

    def __init__(self, **data: Any) -> None:
        """
        Build a section from values given in Python (durations may be
        numbers of seconds), each checked as in a file.

        @raise ValidationError: listing every problem.
        """
        validated = type(self)._validateMapping(data, None)
        object.__setattr__(self, "__dict__", validated.__dict__)

    # -- the value ------------------------------------------------------------

    def __setattr__(self, name: str, value: Any) -> None:
        fail(type(self).__name__, [Problem((name,), "a configuration value is frozen")])

    def __delattr__(self, name: str) -> None:
        fail(type(self).__name__, [Problem((name,), "a configuration value is frozen")])

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Section):
            return NotImplemented
        return type(self) is type(other) and self.__dict__ == other.__dict__

    def __hash__(self) -> int:
        return hash((type(self), *self.__dict__.values()))

    def __repr__(self) -> str:
        shown = ", ".join(f"{name}={value!r}" for name, value in self.__dict__.items())
        return f"{type(self).__name__}({shown})"

    def model_copy(self: _Self, *, update: Mapping[str, Any] | None = None) -> _Self:
        """
        A copy with the attributes C{update} gives replaced, without
        validation.
        """
        return type(self)._make({**self.__dict__, **(update or {})})

    @classmethod
    def _make(cls: type[_Self], values: dict[str, Any]) -> _Self:
        """
        An instance holding C{values}, by attribute name, as they are.
        """
        instance = object.__new__(cls)
        object.__setattr__(instance, "__dict__", values)
        return instance

    @classmethod
    def _defaults(cls) -> dict[str, Any]:
        """
        The defaults of the attributes that have one, validated (as values
        built in Python: they need no file's context).
        """
        if cls._defaultValues is None:
            values = {}
            for name, field in cls.model_fields.items():
                if field.default_factory is not None:
                    values[name] = field.default_factory()
                elif field.default is not MISSING:
                    try:
                        values[name] = field.validator.validate(field.default, None)
                    except INVALID as e:
                        problems = problemsAt(e, (field.alias or name,))
                        raise TypeError(f"bad default in {cls.__name__}: {problems}") from e
            cls._defaultValues = values
        return cls._defaultValues

    # -- validation -------------------------------------------------------------

    @classmethod
    def model_validate(
        cls: type[_Self], data: Any, *, context: Mapping[str, Any] | None = None
    ) -> _Self:
        """
        Validate a mapping (or take an instance as it is).

        @param context: a document context (L{documentContext
            <meshproxy.config.problems.documentContext>}) for a file's
            values, or L{None} for values built in Python.
        @raise ValidationError: listing every problem, in order.
        """
        return cls._validateSection(data, context)

    @classmethod
    def documentKeys(cls) -> dict[str, str]:
        """
        The keys a file may give, each mapped to its attribute's name.
        """
        return {
            field.alias or name: name
            for name, field in cls.model_fields.items()
            if name not in cls._notInDocument
        }

    @classmethod
    def misplaced(cls, kind: str) -> dict[str, str]:
        """
        The keys of other kinds than C{kind}, each with why it is refused.
        """
        others = {key for keys in cls._kinds.values() for key in keys}
        others.difference_update(cls._kinds[kind], cls._common)
        reasons = {}
        for key in sorted(others):
            owners = [name for name, keys in cls._kinds.items() if key in keys]
            reasons[key] = "only for " + " or ".join(f'{cls._selector} "{o}"' for o in owners)
        return reasons

    @classmethod
    def _prepare(cls, data: dict, kind: str | None, context: Any) -> list[Problem]:
        """
        Adjust the keys as written before the values are validated.

        @return: problems with keys, reported with the unknown keys.
        """
        return []

    @classmethod
    def _crossCheck(cls, view: View) -> Iterable[Problem]:
        """
        The problems across several values of this section.
        """
        return ()

    @classmethod
    def _validateSection(cls: type[_Self], data: Any, context: Mapping[str, Any] | None) -> _Self:
        """
        Validate a mapping (or take an instance as it is), raising every
        problem of the section at once, in the order described above.
        """
        if isinstance(data, cls):
            return data
        if not isinstance(data, Mapping):
            fail(cls.__name__, [Problem((), f"expected a mapping, got {show(data)}")])
        if isDocument(context):
            # The checks across sections look again at the valid parts of a
            # section that had problems: each mapping is validated once.
            # Keeping the mapping keeps its id from being reused.
            # A document's context is a dict (isDocument).
            memo = context["validated"]  # type: ignore[index]
            seen = memo.get((cls, id(data)))
            if seen is None or seen[0] is not data:
                try:
                    seen = (data, cls._validateMapping(data, context), None)
                except ValidationError as e:
                    seen = (data, None, e)
                memo[cls, id(data)] = seen
            if seen[2] is not None:
                raise seen[2]
            return seen[1]
        return cls._validateMapping(data, context)

    @classmethod
    def _validateMapping(
        cls: type[_Self], data: Mapping, context: Mapping[str, Any] | None
    ) -> _Self:
        document = isDocument(context)
        data = dict(data)
        position = {key: i for i, key in enumerate(data)}
        selector: list[Problem] = []
        keyed: list[tuple[int, Problem]] = []
        for key in [key for key in data if not isinstance(key, str)]:
            keyed.append((position[key], Problem((), f"keys must be strings, got {show(key)}")))
            del data[key]
        kind, kindValid = cls._readKind(data, selector)
        known = cls.documentKeys()
        if document:
            for key in [key for key in data if key not in known and key in cls.model_fields]:
                # An attribute without a key of its own ("duration", read as "for").
                keyed.append((position[key], Problem((key,), "unknown key" + suggest(key, known))))
                del data[key]
        if document and kind is not None:
            for key, reason in cls.misplaced(kind).items():
                if key in data:
                    keyed.append((position[key], Problem((key,), reason)))
                    del data[key]
        if not kindValid:
            # Only the keys every kind has are read, so that the mistake in
            # the kind is not drowned in follow-on errors.
            data = {
                key: value
                for key, value in data.items()
                if key in cls._common or key not in known
            }
        for problem in cls._prepare(data, kind, context):
            keyed.append((position.get(problem.loc[0], len(position)), problem))
        attributes, values, unknown = cls._readValues(data, context)
        for key in unknown:
            problem = Problem((key,), "unknown key" + suggest(key, known))
            keyed.append((position.get(key, len(position)), problem))
        config = None if values or unknown else cls._make(attributes)
        cross: list[Problem] = []
        if kindValid and document:
            # Which keys are written, and how values fit together, are
            # rules about files: a value built in Python is checked value
            # by value.
            failed = {problem.loc[0] for problem in values if problem.loc}
            for key in cls._requiredFor.get(kind, ()):
                if data.get(key) is None and key not in failed:
                    cross.append(Problem((key,), "required"))
            cross.extend(cls._crossCheck(View(cls, data, config, failed, context)))
        keyed.sort(key=lambda item: item[0])
        problems = selector + [problem for _, problem in keyed] + values + cross
        if problems:
            fail(cls.__name__, problems)
        assert config is not None
        return config

    @classmethod
    def _readValues(
        cls, data: Mapping[str, Any], context: Mapping[str, Any] | None
    ) -> tuple[dict[str, Any], list[Problem], list[str]]:
        """
        Validate the value of each attribute: the one written (by its key,
        or in Python by its name), else its default.

        @return: the values by attribute name, their problems in the order
            of the attributes, and the keys that are no attribute's.
        """
        attributes: dict[str, Any] = {}
        problems: list[Problem] = []
        used = set()
        defaults = cls._defaults()
        for name, field in cls.model_fields.items():
            key = field.alias or name
            if key not in data and name in data:
                key = name
            elif key not in data:
                if field.required:
                    problems.append(Problem((key,), "required"))
                else:
                    attributes[name] = defaults[name]
                continue
            used.add(key)
            try:
                attributes[name] = field.validator.validate(data[key], context)
            except INVALID as e:
                problems.extend(problemsAt(e, (key,)))
        unknown = [key for key in data if key not in used]
        return attributes, problems, unknown

    @classmethod
    def _readKind(cls, data: Mapping, problems: list[Problem]) -> tuple[str | None, bool]:
        """
        @return: the kind, and whether it is valid.
        """
        if cls._selector is None:
            return None, True
        if cls._selector not in data:
            return cls.model_fields[cls._selector].default, True
        try:
            return checks.choice(data[cls._selector], cls._kinds), True
        except Invalid as e:
            problems.append(Problem((cls._selector,), str(e)))
            return None, False

    # -- JSON Schema ----------------------------------------------------------

    @classmethod
    def _jsonSchemaRef(cls, definitions: dict[str, Any]) -> dict[str, Any]:
        """
        A reference to the class's JSON Schema, added to C{definitions}.
        """
        name = cls.__name__
        if name not in definitions:
            # Taken before the schema is made: a class may hold itself.
            definitions[name] = {}
            definitions[name] = cls._jsonSchema(definitions)
        return {"$ref": f"#/definitions/{name}"}

    @classmethod
    def _jsonSchema(cls, definitions: dict[str, Any]) -> dict[str, Any]:
        """
        The class's JSON Schema, with the descriptions of its docstring and
        a rule per kind, so that an editor knows what the loader knows.

        @param definitions: the schemas of the classes referred to, by name,
            to which those this class holds are added.
        """
        documented = _attributeDocs(cls)
        properties: dict[str, Any] = {}
        required: list[str] = []
        for name, field in cls.model_fields.items():
            if name in cls._notInDocument:
                continue
            key = field.alias or name
            property = field.validator.jsonSchema(definitions)
            if field.default is not MISSING:
                property["default"] = _jsonValue(field.default)
            elif field.required:
                required.append(key)
            if name in documented:
                described = [documented[name], property.get("description")]
                property["description"] = "\n\n".join(filter(None, described))
            properties[key] = property
        schema: dict[str, Any] = {
            "additionalProperties": False,
            "description": _summary(cls),
            "properties": properties,
        }
        if required:
            schema["required"] = required
        schema["title"] = cls.__name__
        schema["type"] = "object"
        if cls._selectorRequired:
            schema["required"] = [cls._selector, *schema.get("required", ())]
        branches = [branch for kind in cls._kinds if (branch := cls._kindSchema(kind))]
        if branches:
            schema["allOf"] = branches
        return schema

    @classmethod
    def _kindSchema(cls, kind: str) -> dict | None:
        """
        The JSON Schema rule for one kind: the keys it refuses and needs.
        """
        then: dict[str, Any] = {}
        if cls._selector is None:
            return None
        field = cls.model_fields[cls._selector]
        if not isinstance(field.validator, Constant) or len(field.validator.options) < 2:
            # A class for one kind only (the namers).
            return None
        misplaced = cls.misplaced(kind)
        if misplaced:
            then["properties"] = {key: False for key in misplaced}
        if cls._requiredFor.get(kind):
            then["required"] = list(cls._requiredFor[kind])
        if not then:
            return None
        test: dict[str, Any] = {
            "properties": {cls._selector: {"const": kind}},
            "required": [cls._selector],
        }
        if kind == field.default:
            test = {"anyOf": [test, {"not": {"required": [cls._selector]}}]}
        return {"if": test, "then": then}


def jsonSchemaOf(section: type[Section], title: str) -> dict[str, Any]:
    """
    The draft-07 JSON Schema of a document that is one C{section}: the
    schemas of the classes it holds under C{definitions}.

    @param title: the schema's title.
    """
    definitions: dict[str, Any] = {}
    schema = _sortKeys(section._jsonSchema(definitions))
    schema["title"] = title
    return {
        "$schema": "http://json-schema.org/draft-07/schema#",
        **schema,
        "definitions": _sortKeys(definitions),
    }


def _sortKeys(value: Any, parent: str | None = None) -> Any:
    """
    A JSON Schema with the keys of each mapping sorted, but for the names
    of properties (in the order of the attributes) and the mappings in
    defaults: the order pydantic, which made the schema before, gave them.
    """
    if isinstance(value, dict):
        keys = value if parent in ("properties", "default") else sorted(value)
        return {key: _sortKeys(value[key], key) for key in keys}
    if isinstance(value, list):
        return [_sortKeys(item, parent) for item in value]
    return value


def _jsonValue(value: Any) -> Any:
    """
    A default as JSON has it: tuples as lists.
    """
    if isinstance(value, (tuple, list)):
        return [_jsonValue(item) for item in value]
    return value


_LINK = re.compile(r"L\{([^{}<]*)(?:<[^>]*>)?\}")
_CODE = re.compile(r"[CI]\{([^{}]*)\}")


def _plain(text: str) -> str:
    """
    Epytext as plain text: C{None} as YAML says it, markup removed.
    """
    text = _CODE.sub(r"\1", _LINK.sub(r"\1", text.replace("L{None}", "null")))
    return " ".join(text.split())


def _summary(cls: type) -> str:
    """
    The first paragraph of a class's docstring, as plain text.
    """
    return _plain(inspect.cleandoc(cls.__doc__ or "").split("\n\n")[0])


def _attributeDocs(cls: type) -> dict[str, str]:
    """
    The C{@ivar} descriptions of a class's docstring, as plain text.
    """
    doc = inspect.cleandoc(cls.__doc__ or "")
    found = re.findall(r"^@ivar (\w+):(.*?)(?=^@|\Z)", doc, re.MULTILINE | re.DOTALL)
    return {name: _plain(text) for name, text in found}
