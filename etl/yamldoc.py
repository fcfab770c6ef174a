"""YAML read once at the boundary, remembering where every value was written.

:func:`parse` gives a :class:`Document`: plain Python values (``${VAR}`` references already
resolved from the environment) plus the line and column of every key and value, so that a
validation error can point at ``jobs/orders.yaml:12``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from etl.errors import ConfigError, ConfigErrors

__all__ = [
    "LIMITS",
    "Document",
    "KeyPath",
    "Limits",
    "apply_sets",
    "environment",
    "format_key",
    "interpolate",
    "parse",
    "parse_key_path",
    "parse_value",
]

KeyPath = tuple[str | int, ...]

# ${VAR}, ${VAR:-default} (default when unset or empty), ${VAR-default} (when unset); $${ escapes.
_REFERENCE = re.compile(r"\$(\$)?\{([^}]*)\}")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def environment(directory: Path | None = None, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The variables ``${VAR}`` may refer to.

    ``.env`` and then ``.env.local`` in ``directory`` (the working directory by default) are
    read first; the process environment wins over both, as with most tools that read them.
    """
    from dotenv import dotenv_values

    directory = directory or Path.cwd()
    merged: dict[str, str] = {}
    for name in (".env", ".env.local"):
        path = directory / name
        if path.is_file():
            merged.update({k: v for k, v in dotenv_values(path).items() if v is not None})
    merged.update(os.environ if base is None else base)
    return merged


def format_key(path: KeyPath) -> str:
    """``('transforms', 1, 'type')`` → ``transforms[1].type``."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


@dataclass
class Document:
    """A parsed YAML file.

    Attributes:
        data: the values, with ``${VAR}`` references resolved.
        file: the name used in error messages.
        text: the text as written.
        value_marks: (line, column) of each value, by key path (1-based).
        key_marks: (line, column) of each mapping key, by the key path it introduces.
        written: for strings that held a ``${VAR}`` reference, the text as written, by key
            path; error messages show this rather than the (possibly secret) value.
        errors: problems found while reading (an unset variable, a duplicate key).
    """

    data: Any
    file: str
    text: str
    value_marks: dict[KeyPath, tuple[int, int]] = field(default_factory=dict)
    key_marks: dict[KeyPath, tuple[int, int]] = field(default_factory=dict)
    written: dict[KeyPath, str] = field(default_factory=dict)
    errors: list[ConfigError] = field(default_factory=list)

    def locate(self, path: KeyPath, *, key: bool = False) -> tuple[int | None, int | None]:
        """The line and column for ``path``, or for its nearest ancestor that was written."""
        marks = (self.key_marks, self.value_marks) if key else (self.value_marks, self.key_marks)
        for end in range(len(path), -1, -1):
            for table in marks:
                if path[:end] in table:
                    return table[path[:end]]
        return None, None

    def error(self, path: KeyPath, message: str, *, key: bool = False) -> ConfigError:
        """A :class:`ConfigError` for ``path``, located in this file."""
        line, column = self.locate(path, key=key)
        return ConfigError(message, file=self.file, line=line, column=column, key=format_key(path) or None)


def interpolate(text: str, env: Mapping[str, str]) -> tuple[str, list[str]]:
    """``text`` with its ``${VAR}`` references replaced from ``env``, and what went wrong."""
    problems: list[str] = []

    def replace(match: re.Match[str]) -> str:
        if match[1]:  # $${...} is a literal ${...}
            return "${" + match[2] + "}"
        body = match[2]
        name, sep, default = body, "", None
        for candidate in (":-", "-"):
            if candidate in body:
                name, default = body.split(candidate, 1)
                sep = candidate
                break
        if not _NAME.match(name):
            problems.append(f"${{{body}}} is not a valid reference; write ${{NAME}} or ${{NAME:-default}}")
            return match[0]
        value = env.get(name)
        if value is None or (sep == ":-" and value == ""):
            if default is not None:
                return default
            problems.append(
                f"environment variable {name} is not set; set it (in the environment, .env or "
                f".env.local) or give a default: ${{{name}:-value}}"
            )
            return ""
        return value

    # Every reference ends at a `}`: past the last one there is none to find, and searching there
    # would cost a scan to the end from every `${` (quadratic in a long hostile value).
    end = text.rfind("}") + 1
    return _REFERENCE.sub(replace, text[:end]) + text[end:], problems


def parse(text: str, file: str, env: Mapping[str, str]) -> Document:
    """Parse one YAML document, within the limits of :data:`LIMITS`.

    Only plain values are read: text, numbers, booleans, null, dates and timestamps, binary,
    lists and mappings (with aliases and ``<<`` merge keys). Any other tag (``!!python/…``,
    ``!!set``, ``!custom``) is refused, never constructed.

    Raises:
        ConfigError: when the text is not YAML, holds a tag or a value that can't be read, or
            goes past a limit; with the line and column of the problem.
    """
    doc = Document(data=None, file=file, text=text)
    doc.data = _read(text, file, env, doc)
    return doc


def parse_value(text: str) -> Any:
    """One YAML value as ``--set`` gives it: the same rules and limits as a job file, with
    ``${VAR}`` references left as written.

    Raises:
        ConfigError: as :func:`parse`.
    """
    return _read(text, "<value>", None, Document(data=None, file="<value>", text=text))


@dataclass(frozen=True)
class Limits:
    """What one job file may hold, so that no file, however broken or hostile, costs more than
    a few seconds and some tens of megabytes to read (docs/configuration.md)."""

    #: Characters in the file (bytes, when read from a file).
    chars: int = 1_000_000
    #: Lists and mappings within each other.
    depth: int = 100
    #: Values (each scalar, list and mapping, and each key), every use of an alias counted in
    #: full: a few aliases of aliases would otherwise make billions ("billion laughs").
    values: int = 50_000
    #: Characters of one number: Python reads integers of at most 4,300 digits, and can be set
    #: to read as few as 640 (``PYTHONINTMAXSTRDIGITS``).
    number_chars: int = 640


LIMITS = Limits()

_YAML = "tag:yaml.org,2002:"
# What each scalar tag reads, for messages; any other tag is refused.
_SCALARS = {
    f"{_YAML}str": "text",
    f"{_YAML}int": "integer",
    f"{_YAML}float": "number",
    f"{_YAML}bool": "boolean (true or false)",
    f"{_YAML}null": "null",
    f"{_YAML}timestamp": "date or timestamp",
    f"{_YAML}binary": "base64 text (!!binary)",
}
_NUMBERS = (f"{_YAML}int", f"{_YAML}float")
# A plain `<<` or `=` away from where YAML gives them a meaning is just that text.
_AS_TEXT = (f"{_YAML}merge", f"{_YAML}value")


def _read(text: str, file: str, env: Mapping[str, str] | None, doc: Document) -> Any:
    if len(text) > LIMITS.chars:
        raise ConfigError(
            f"the file holds {len(text):,} characters; a job file may hold at most {LIMITS.chars:,}", file=file
        )
    try:
        loader = _Loader(text, file)
    except yaml.reader.ReaderError as exc:  # checked at once, for the whole text
        raise _unprintable(exc, text, file) from None
    try:
        node = loader.get_single_node()
        return None if node is None else _Builder(loader, doc, env).build(node, (), 0)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or "invalid YAML"
        if problem.startswith("but ") and exc.context:  # "…a single document, but found another"
            problem = f"{exc.context}, {problem}"
        raise ConfigError(
            f"invalid YAML: {problem}",
            file=file,
            line=mark.line + 1 if mark else None,
            column=mark.column + 1 if mark else None,
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"invalid YAML: {exc}", file=file) from None
    finally:
        loader.dispose()


def _unprintable(exc: yaml.reader.ReaderError, text: str, file: str) -> ConfigError:
    line = text.count("\n", 0, exc.position) + 1
    column = exc.position - (text.rfind("\n", 0, exc.position) + 1) + 1
    code = exc.character if isinstance(exc.character, int) else ord(exc.character)
    escape = f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"
    return ConfigError(
        f"invalid YAML: the character U+{code:04X} is not allowed (YAML allows no control characters "
        f'but tab and line breaks); remove it, or write it as "{escape}" in a double-quoted string',
        file=file,
        line=line,
        column=column,
    )


def _limit(file: str, mark: yaml.Mark | None, message: str, path: KeyPath = ()) -> ConfigError:
    key = format_key(path[:8]) + ("…" if len(path) > 8 else "")
    return ConfigError(
        message,
        file=file,
        line=mark.line + 1 if mark else None,
        column=mark.column + 1 if mark else None,
        key=key or None,
    )


def _too_deep(file: str, mark: yaml.Mark | None, path: KeyPath = (), how: str = "") -> ConfigError:
    message = (
        f"lists and mappings nested more than {LIMITS.depth} levels deep{how}; "
        f"a job file may nest at most {LIMITS.depth}"
    )
    return _limit(file, mark, message, path)


def _shown(tag: str) -> str:
    return "!!" + tag.removeprefix(_YAML) if tag.startswith(_YAML) else tag


def _excerpt(text: str, size: int = 60) -> str:
    return repr(text) if len(text) <= size else f"{text[:size]!r}… ({len(text):,} characters)"


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, counting the values it composes and how deep they nest, and
    refusing past the limits before anything more is read."""

    def __init__(self, text: str, file: str) -> None:
        super().__init__(text)
        self.file = file
        self.values = 0
        self.depth = 0
        self.anchors_of: dict[int, str] = {}  # the anchor of each anchored node, for messages

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        if self.check_event(yaml.AliasEvent):
            return super().compose_node(parent, index)
        event = self.peek_event()
        self.values += 1
        if self.values > LIMITS.values:
            raise _limit(
                self.file,
                event.start_mark,
                f"more than {LIMITS.values:,} values; a job file may hold at most {LIMITS.values:,}",
            )
        nests = isinstance(event, yaml.CollectionStartEvent)
        self.depth += nests
        if self.depth > LIMITS.depth:
            raise _too_deep(self.file, event.start_mark)
        try:
            node = super().compose_node(parent, index)
        finally:
            self.depth -= nests
        if event.anchor is not None:
            self.anchors_of[id(node)] = event.anchor
        return node


class _Builder:
    """Plain values from composed nodes, with the place of each, aliases expanded within the
    limits; ``${VAR}`` references resolved from ``env`` (left as written without one)."""

    def __init__(self, loader: _Loader, doc: Document, env: Mapping[str, str] | None) -> None:
        self.loader = loader
        self.doc = doc
        self.env = env
        self.values = 0
        self.building: set[int] = set()  # the lists and mappings being built: an alias to one recurses
        self.reported: set[tuple[int | None, int | None, str]] = set()

    def error(self, node: yaml.Node, path: KeyPath, message: str) -> ConfigError:
        return _limit(self.doc.file, node.start_mark, message, path)

    def build(self, node: yaml.Node, path: KeyPath, depth: int) -> Any:
        self.count(node, path)
        mark = node.start_mark
        self.doc.value_marks[path] = (mark.line + 1, mark.column + 1)
        if isinstance(node, yaml.ScalarNode):
            value = self.scalar(node, path)
            if isinstance(value, str) and "${" in value and self.env is not None:
                self.doc.written[path] = value
                value = self._interpolate(value, path)
            return value
        self.enter(node, path, depth)
        try:
            if isinstance(node, yaml.MappingNode):
                return self.mapping(node, path, depth + 1)
            return [self.build(item, (*path, i), depth + 1) for i, item in enumerate(node.value)]
        finally:
            self.building.discard(id(node))

    def count(self, node: yaml.Node, path: KeyPath) -> None:
        self.values += 1
        if self.values > LIMITS.values:
            raise self.error(
                node,
                path,
                f"more than {LIMITS.values:,} values once its aliases are expanded (each use of an alias counts "
                f"in full); a job file may hold at most {LIMITS.values:,}",
            )

    def enter(self, node: yaml.Node, path: KeyPath, depth: int) -> None:
        """Check a list or mapping before building it: its tag, its depth, and that it is not
        being built already (an alias inside the value it refers to)."""
        expected = f"{_YAML}map" if isinstance(node, yaml.MappingNode) else f"{_YAML}seq"
        if node.tag != expected:
            raise self.error(node, path, self._tag_refused(node.tag))
        if id(node) in self.building:
            anchor = self.loader.anchors_of.get(id(node), "")
            raise self.error(
                node, path, f"the alias *{anchor} is inside the value &{anchor} it refers to (a recursive alias)"
            )
        if depth >= LIMITS.depth:
            raise _too_deep(self.doc.file, node.start_mark, path, " once its aliases are expanded")
        self.building.add(id(node))

    def mapping(self, node: yaml.MappingNode, path: KeyPath, depth: int) -> dict[Any, Any]:
        result: dict[Any, Any] = {}
        for key_node, value_node in node.value:  # `<<: *defaults` first: the keys written here win
            if key_node.tag == f"{_YAML}merge":
                self.merge(result, value_node, path, depth)
        written: set[Any] = set()
        for key_node, value_node in node.value:
            if key_node.tag == f"{_YAML}merge":
                continue
            key = self.key(key_node, path)
            key_mark = key_node.start_mark
            self.doc.key_marks[(*path, key)] = (key_mark.line + 1, key_mark.column + 1)
            if key in written:
                self.report(self.doc.error((*path, key), "duplicate key", key=True))
            written.add(key)
            result[key] = self.build(value_node, (*path, key), depth)
        return result

    def merge(self, result: dict[Any, Any], node: yaml.Node, path: KeyPath, depth: int) -> None:
        """``<<: *a`` or ``<<: [*a, *b]``: the keys of each mapping (of the first, where two
        have one) that the mapping doesn't write itself."""
        sources = list(reversed(node.value)) if isinstance(node, yaml.SequenceNode) else [node]
        for source in sources:
            if not isinstance(source, yaml.MappingNode):
                raise self.error(source, path, "`<<:` takes a mapping (*alias) or a list of them")
            self.count(source, path)
            self.enter(source, path, depth - 1)
            try:
                result.update(self.mapping(source, path, depth))
            finally:
                self.building.discard(id(source))

    def key(self, node: yaml.Node, path: KeyPath) -> str | int:
        self.count(node, path)
        if not isinstance(node, yaml.ScalarNode):
            raise self.error(node, path, "a key is text or a number, not a list or a mapping")
        key = self.scalar(node, path)
        return key if isinstance(key, str | int) and not isinstance(key, bool) else str(key)

    def scalar(self, node: yaml.ScalarNode, path: KeyPath) -> Any:
        if node.tag in _AS_TEXT:
            return node.value
        kind = _SCALARS.get(node.tag)
        if kind is None:
            raise self.error(node, path, self._tag_refused(node.tag))
        if node.tag in _NUMBERS and len(node.value) > LIMITS.number_chars:
            raise self.error(
                node,
                path,
                f"a number of {len(node.value):,} characters; one may have at most {LIMITS.number_chars}",
            )
        try:
            return self.loader.construct_object(node)
        except Exception as exc:  # SafeConstructor's own scalars, on text that isn't one
            reason = f": {exc}" if isinstance(exc, ValueError) and node.tag == f"{_YAML}timestamp" else ""
            raise self.error(
                node,
                path,
                f"{_excerpt(node.value)} is not a valid {kind}{reason}; correct it, or quote it to keep it as text",
            ) from None

    def _tag_refused(self, tag: str) -> str:
        return (
            f"the tag {_shown(tag)} is not allowed: a job file holds plain values (text, numbers, booleans, "
            "dates, lists and mappings), and no tag makes YAML build anything else"
        )

    def report(self, error: ConfigError) -> None:
        """Add a problem once per place in the file, however many aliases repeat it."""
        where = (error.line, error.column, error.message)
        if where not in self.reported:
            self.reported.add(where)
            self.doc.errors.append(error)

    def _interpolate(self, text: str, path: KeyPath) -> str:
        value, problems = interpolate(text, self.env or {})
        for problem in problems:
            self.report(self.doc.error(path, problem))
        return value


# -- Overrides ----------------------------------------------------------------------------

_SET_PART = re.compile(r"([^.\[\]]+)|\[([0-9]+)\]")
_INDEX_DIGITS = 18  # a longer index names no item of any list: keep it as text, as a key


def parse_key_path(text: str) -> KeyPath:
    """``transforms[1].query`` or ``transforms.1.query`` → ``('transforms', 1, 'query')``."""
    parts: list[str | int] = []
    for name, index in _SET_PART.findall(text):
        text_or_index = index or name
        is_index = text_or_index.isascii() and text_or_index.isdigit() and len(text_or_index) <= _INDEX_DIGITS
        parts.append(int(text_or_index) if is_index else text_or_index)
    return tuple(parts)


def apply_sets(doc: Document, sets: Sequence[str], env: Mapping[str, str]) -> dict[KeyPath, str]:
    """Apply ``--set key.path=value`` overrides to ``doc.data``.

    Values are YAML scalars, with ``${VAR}`` references resolved from ``env`` as in the file.

    Returns the option text of each override, by key path, for error messages.

    Raises:
        ConfigErrors: for an override that is not ``key=value`` or leads nowhere.
    """
    applied: dict[KeyPath, str] = {}
    errors: list[ConfigError] = []
    for item in sets:
        origin = f"--set {item}"
        key, sep, raw = item.partition("=")
        path = parse_key_path(key.strip())
        if not sep or not path:
            errors.append(ConfigError("expected key.path=value, e.g. --set sink.table=forecasts", file=origin))
            continue
        try:
            value = parse_value(raw) if raw.strip() else ""
        except ConfigError:  # not a YAML value (or past the limits): the text as given
            value = raw
        if isinstance(value, str) and "${" in value:
            value, problems = interpolate(value, env)
            if problems:
                errors.extend(ConfigError(p, file=origin, key=format_key(path)) for p in problems)
                continue
            doc.written[path] = raw
        else:
            doc.written.pop(path, None)
        target = doc.data if isinstance(doc.data, dict) else {}
        doc.data = target
        problem = _assign(target, path, value)
        if problem:
            errors.append(ConfigError(problem, file=origin, key=format_key(path)))
        else:
            applied[path] = origin
    if errors:
        raise ConfigErrors(errors)
    return applied


def _assign(target: Any, path: KeyPath, value: Any) -> str | None:
    for depth, part in enumerate(path[:-1]):
        nxt = path[depth + 1]
        if isinstance(target, dict):
            target = target.setdefault(part, [] if isinstance(nxt, int) else {})
        elif isinstance(target, list) and isinstance(part, int) and part < len(target):
            target = target[part]
        else:
            return f"cannot set {format_key(path)}: {format_key(path[: depth + 1])} is not a mapping or a list item"
    last = path[-1]
    if isinstance(target, dict) or isinstance(target, list) and isinstance(last, int) and last < len(target):
        target[last] = value
    else:
        return f"cannot set {format_key(path)}: its parent is not a mapping, or the list is shorter"
    return None
