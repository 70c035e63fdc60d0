"""
Reading a configuration: YAML text into L{MeshConfig}, and every problem
into one L{ConfigError} whose messages start with the key path.

Also the checks that depend on the host rather than on the text
(L{hostProblems}) and the warnings about what may be fine later
(L{configWarnings}), which C{meshproxy check} reports.
"""

import json
import os
import re
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

import yaml

from meshproxy.config import endpoints
from meshproxy.config.checks import Invalid, show
from meshproxy.config.problems import Loc, Problem, ValidationError, documentContext, problemsOf
from meshproxy.config.schema import MeshConfig
from meshproxy.config.section import Section

__all__ = [
    "ConfigError",
    "configWarnings",
    "formatPath",
    "hostProblems",
    "loadConfig",
    "parseConfig",
    "parseSection",
]

_Section = TypeVar("_Section", bound=Section)


class ConfigError(Exception):
    """
    The configuration could not be read or is not valid.

    @ivar errors: one message per problem found, in the order found. A
        validation message starts with the path of the bad key
        (C{routers[0].listen: required}); a message about the file as a whole
        (missing file, YAML syntax) starts with the file name.
    @ivar source: the file name (or other label) of the configuration.
    """

    def __init__(self, errors: Iterable[str], source: str = "<config>") -> None:
        """
        @param errors: the problems found; at least one.
        @param source: where the configuration came from.
        """
        self.errors = list(errors)
        self.source = source
        super().__init__(*self.errors)

    def __str__(self) -> str:
        return "\n".join(self.errors)


def loadConfig(path: str) -> MeshConfig:
    """
    Read and validate a configuration file. Relative paths in it are
    relative to the file's directory.

    @param path: the YAML file to read (UTF-8).
    @return: the validated L{MeshConfig}, whose C{source} is C{path}.
    @raise ConfigError: if the file cannot be read, is not UTF-8, is not
        valid YAML (the message names the line and column) or does not
        describe a valid configuration.
    """
    try:
        with open(path, encoding="utf-8") as f:
            data = f.read()
    except OSError as e:
        raise ConfigError([f"{path}: cannot read the file: {e.strerror}"], path) from e
    except UnicodeDecodeError as e:
        raise ConfigError([f"{path}: not UTF-8 text ({e.reason} at byte {e.start})"], path) from e
    return parseConfig(data, source=path, baseDirectory=os.path.dirname(os.path.abspath(path)))


def parseConfig(
    data: str, source: str = "<config>", *, baseDirectory: str | None = None
) -> MeshConfig:
    """
    Validate a configuration given as YAML text.

    @param data: the YAML text.
    @param source: names the text in messages and in L{MeshConfig.source}.
    @param baseDirectory: what relative paths in the text are relative to;
        the working directory by default.
    @return: the validated L{MeshConfig}.
    @raise ConfigError: listing every problem found, if any. YAML syntax
        errors and duplicate keys are reported with line and column.
    """
    try:
        document = yaml.load(data, Loader=_Loader)
    except yaml.YAMLError as e:
        raise ConfigError([f"{source}: {_describeYAMLError(e)}"], source) from e
    except RecursionError as e:
        raise ConfigError([f"{source}: the YAML is nested too deeply"], source) from e
    except ValueError as e:
        # PyYAML's int() of an integer of more than 4,300 digits.
        reason = str(e).split(";")[0]
        raise ConfigError([f"{source}: a value the YAML cannot hold ({reason})"], source) from e
    if document is None:
        raise ConfigError(
            [f'{source}: the config is empty (expected a mapping with a "routers" list)'],
            source,
        )
    if not isinstance(document, Mapping):
        raise ConfigError([f"{source}: expected a mapping, got {show(document)}"], source)
    context = documentContext(baseDirectory or os.getcwd(), source)
    try:
        return MeshConfig.model_validate(document, context=context)
    except ValidationError as e:
        raise ConfigError([_format(problem, source) for problem in problemsOf(e)], source) from e


def parseSection(
    section: type[_Section], data: Any, source: str, *, baseDirectory: str | None = None
) -> _Section:
    """
    Validate one section of a config given as data rather than in a file
    (the JSON body of an admin API call, say), with the checks and the
    messages the same section gets in a config file: unknown keys, types
    and values, each problem named by its key path inside the section.

    @param section: the section's class (L{PolicyConfig<meshproxy.config.PolicyConfig>}).
    @param data: the decoded JSON (or YAML) value.
    @param source: names the value as a whole, in a message about it (a
        value that is not a mapping).
    @param baseDirectory: what relative paths in it are relative to; the
        working directory by default.
    @return: the validated section.
    @raise ConfigError: listing every problem found, each message starting
        with its key path (C{rules[0].action: ...}), or with C{source}.
    """
    context = documentContext(baseDirectory or os.getcwd(), source)
    try:
        return section.model_validate(data, context=context)
    except ValidationError as e:
        raise ConfigError([_format(problem, source) for problem in problemsOf(e)], source) from e


_KEY = re.compile(r"[A-Za-z0-9_-]+")


def formatPath(loc: Loc) -> str:
    """
    Write a key path as messages show it: C{routers[0].timeouts.total},
    C{routers[0].boundNames["/#/fs/users"]}.
    """
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        elif _KEY.fullmatch(part):
            text += f".{part}" if text else part
        else:
            text += f"[{json.dumps(part)}]"
    return text


def _format(problem: Problem, source: str) -> str:
    message = problem.message
    if problem.ref is not None:
        up, tail = problem.ref
        message = message.replace("{ref}", formatPath(problem.loc[: len(problem.loc) - up] + tail))
    return f"{formatPath(problem.loc) or source}: {message}"


def hostProblems(config: MeshConfig) -> list[str]:
    """
    What stops this configuration from running on this host, found without
    listening: an C{interface=} address that is not one of the host's.

    @return: messages starting with the key path, as in L{ConfigError}.
    """
    listeners: list[tuple[Loc, str]] = [(("admin", "listen"), config.admin.listen)]
    listeners += [(("routers", i, "listen"), r.listen) for i, r in enumerate(config.routers)]
    problems = []
    for loc, listen in listeners:
        try:
            endpoints.checkInterface(listen)
        except Invalid as e:
            problems.append(f"{formatPath(loc)}: {e}")
    return problems


def configWarnings(config: MeshConfig) -> list[str]:
    """
    What is valid but probably not meant yet: a file namer whose directory
    does not exist (its services are unknown until it appears).

    @return: messages starting with the key path.
    """
    warnings = []
    for i, namer in enumerate(config.namers):
        if namer.kind == "file" and not os.path.isdir(namer.root):
            what = "is not a directory" if os.path.exists(namer.root) else "does not exist"
            warnings.append(
                f"{formatPath(('namers', i, 'root'))}: {json.dumps(namer.root)} {what}:"
                " this namer knows no service until it is created"
            )
    return warnings


class _Loader(yaml.SafeLoader):
    """
    A safe YAML loader that rejects duplicate keys in a mapping, which
    PyYAML otherwise resolves silently by keeping the last one: a second
    C{routers:} block would hide the first.
    """

    def construct_mapping(self, node: yaml.Node, deep: bool = False) -> dict:
        if isinstance(node, yaml.MappingNode):
            seen: set[tuple[str, str]] = set()
            for keyNode, _ in node.value:
                # Keys brought in by a "<<" merge may be overridden: that is
                # what merging is for. Only keys written twice are an error.
                if not isinstance(keyNode, yaml.ScalarNode) or keyNode.tag == (
                    "tag:yaml.org,2002:merge"
                ):
                    continue
                identity = (keyNode.tag, keyNode.value)
                if identity in seen:
                    raise yaml.constructor.ConstructorError(
                        "while constructing a mapping",
                        node.start_mark,
                        f"duplicate key {json.dumps(keyNode.value)}",
                        keyNode.start_mark,
                    )
                seen.add(identity)
        # PyYAML refuses a node that is no mapping itself.
        return super().construct_mapping(node, deep=deep)  # type: ignore[arg-type]


def _describeYAMLError(error: yaml.YAMLError) -> str:
    """
    Describe a YAML error with 1-based line and column of the problem.
    """
    if isinstance(error, yaml.MarkedYAMLError) and error.problem_mark is not None:
        mark = error.problem_mark
        text = f"line {mark.line + 1}, column {mark.column + 1}: {error.problem}"
        if error.context and error.context_mark is not None:
            context = error.context_mark
            text += (
                f" ({error.context} at line {context.line + 1},"
                f" column {context.column + 1})"
            )
        return text
    return str(error)
