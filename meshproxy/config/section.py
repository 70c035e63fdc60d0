"""
L{Section}, the base class of the configuration classes: a frozen pydantic
model refusing unknown keys, whose validator gives the proxy's messages in
the proxy's order.

Within one mapping, problems come in this order: its C{kind} (or
C{protocol}), then its keys (unknown, or meant for another kind) in the
order written, then its values in the order of the class's fields, then
the checks across several of its values (C{_crossCheck}, which sees the
mapping through a L{View}).
"""

import inspect
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Annotated, Any, ClassVar, Optional, get_args

from pydantic import BaseModel, ConfigDict, ValidationError, ValidationInfo, model_validator

from meshproxy.config import checks
from meshproxy.config.checks import Invalid, show, suggest
from meshproxy.config.problems import LazyAdapter, Problem, fail, isDocument, problemsOf

_fieldAdapters: dict[tuple[type, str], LazyAdapter] = {}


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
        for name in names:
            field = self._section.model_fields[name]
            key = field.alias or name
            if key in self._failed:
                return None
            raw = (
                self._data[key]
                if key in self._data
                else field.get_default(call_default_factory=True)
            )
            adapter = _fieldAdapters.get((self._section, name))
            if adapter is None:
                annotation: Any = field.annotation
                if field.metadata:
                    # The tuple is built apart: mypy reads X[(a, *b)] as the
                    # star index of Python 3.11.
                    parameters = (annotation, *field.metadata)
                    annotation = Annotated[parameters]
                adapter = _fieldAdapters[self._section, name] = LazyAdapter(annotation)
            try:
                result.append(adapter.validate(raw, self._context))
            except ValidationError:
                return None
        return tuple(result)

    def items(self, name: str, item: Any) -> list[tuple[int, Any]]:
        """
        The valid items of the list attribute C{name}, with their indexes.
        """
        if self._config is not None:
            return list(enumerate(getattr(self._config, name)))
        raw = self._data.get(name)
        if not isinstance(raw, list):
            return []
        adapter = LazyAdapter(item)
        valid = []
        for i, value in enumerate(raw):
            try:
                valid.append((i, adapter.validate(value, self._context)))
            except ValidationError:
                pass
        return valid


class Section(BaseModel):
    """
    A mapping of the configuration: a frozen model refusing unknown keys.

    Subclasses whose keys depend on a selector (C{kind}, C{protocol}) name
    it in C{_selector} and list in C{_kinds} the keys only some kinds have;
    C{_common} keys belong to every kind.
    """

    model_config = ConfigDict(
        frozen=True,
        extra="forbid",
        validate_by_name=True,
        validate_by_alias=True,
        validate_default=True,
    )

    _selector: ClassVar[str | None] = None
    _kinds: ClassVar[Mapping[str, tuple[str, ...]]] = {}
    _common: ClassVar[tuple[str, ...]] = ()
    # Looked up by kind, None for a section without kinds (which needs nothing).
    _requiredFor: ClassVar[Mapping[str | None, tuple[str, ...]]] = {}
    _notInDocument: ClassVar[tuple[str, ...]] = ()
    _selectorRequired: ClassVar[bool] = False

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

    @model_validator(mode="wrap")
    @classmethod
    def _validateSection(cls, data: Any, handler: Callable, info: ValidationInfo) -> Any:
        """
        Validate a mapping (or take an instance as it is), raising every
        problem of the section at once, in the order described above.

        @param handler: pydantic's validation of the fields.
        """
        if isinstance(data, cls):
            return handler(data)
        if not isinstance(data, Mapping):
            fail(cls.__name__, [Problem((), f"expected a mapping, got {show(data)}")])
        document = isDocument(info.context)
        if document:
            # The checks across sections look again at the valid parts of a
            # section that had problems: each mapping is validated once.
            # Keeping the mapping keeps its id from being reused.
            # A document's context is a dict (isDocument).
            memo = info.context["validated"]  # type: ignore[index]
            seen = memo.get((cls, id(data)))
            if seen is None or seen[0] is not data:
                try:
                    seen = (data, cls._validateMapping(data, handler, info), None)
                except ValidationError as e:
                    seen = (data, None, e)
                memo[cls, id(data)] = seen
            if seen[2] is not None:
                raise seen[2]
            return seen[1]
        return cls._validateMapping(data, handler, info)

    @classmethod
    def _validateMapping(cls, data: Mapping, handler: Callable, info: ValidationInfo) -> Any:
        document = isDocument(info.context)
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
        for problem in cls._prepare(data, kind, info.context):
            keyed.append((position.get(problem.loc[0], len(position)), problem))
        config, values = None, []
        try:
            config = handler(data)
        except ValidationError as e:
            for problem in problemsOf(e):
                if problem.native == "extra_forbidden" and len(problem.loc) == 1:
                    key = problem.loc[0]
                    problem = problem._replace(message="unknown key" + suggest(str(key), known))
                    keyed.append((position.get(key, len(position)), problem))
                else:
                    values.append(problem)
        cross: list[Problem] = []
        if kindValid and document:
            # Which keys are written, and how values fit together, are
            # rules about files: a value built in Python is checked value
            # by value.
            failed = {problem.loc[0] for problem in values if problem.loc}
            for key in cls._requiredFor.get(kind, ()):
                if data.get(key) is None and key not in failed:
                    cross.append(Problem((key,), "required"))
            cross.extend(cls._crossCheck(View(cls, data, config, failed, info.context)))
        keyed.sort(key=lambda item: item[0])
        problems = selector + [problem for _, problem in keyed] + values + cross
        if problems:
            fail(cls.__name__, problems)
        return config

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

    @classmethod
    def __get_pydantic_json_schema__(cls, core_schema: Any, handler: Any) -> Any:
        """
        The class's JSON Schema, with the descriptions of its docstring and
        a rule per kind, so that an editor knows what the loader knows.
        """
        schema = handler(core_schema)
        target = handler.resolve_ref_schema(schema)
        target["description"] = _summary(cls)
        documented = _attributeDocs(cls)
        keys = cls.documentKeys()
        for key, property in target.get("properties", {}).items():
            property.pop("title", None)
            if keys.get(key) in documented:
                described = [documented[keys[key]], property.get("description")]
                property["description"] = "\n\n".join(filter(None, described))
        if cls._selectorRequired:
            target["required"] = [cls._selector, *target.get("required", ())]
        branches = [branch for kind in cls._kinds if (branch := cls._kindSchema(kind))]
        if branches:
            target["allOf"] = branches
        return schema

    @classmethod
    def _kindSchema(cls, kind: str) -> dict | None:
        """
        The JSON Schema rule for one kind: the keys it refuses and needs.
        """
        then: dict[str, Any] = {}
        if cls._selector is None or len(get_args(cls.model_fields[cls._selector].annotation)) < 2:
            # No kinds, or a class for one kind only (the namers).
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
        if kind == cls.model_fields[cls._selector].default:
            test = {"anyOf": [test, {"not": {"required": [cls._selector]}}]}
        return {"if": test, "then": then}


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
