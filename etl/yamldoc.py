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

__all__ = ["Document", "KeyPath", "apply_sets", "environment", "format_key", "interpolate", "parse", "parse_key_path"]

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

    return _REFERENCE.sub(replace, text), problems


def parse(text: str, file: str, env: Mapping[str, str]) -> Document:
    """Parse one YAML document.

    Raises:
        ConfigError: when the text is not YAML, with the line and column of the problem.
    """
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or "invalid YAML"
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
    doc = Document(data=None, file=file, text=text)
    if node is not None:
        doc.data = _Builder(loader, doc, env).build(node, ())
    return doc


class _Builder:
    def __init__(self, loader: yaml.SafeLoader, doc: Document, env: Mapping[str, str]) -> None:
        self.loader = loader
        self.doc = doc
        self.env = env

    def build(self, node: yaml.Node, path: KeyPath) -> Any:
        mark = node.start_mark
        self.doc.value_marks[path] = (mark.line + 1, mark.column + 1)
        if isinstance(node, yaml.MappingNode):
            self.loader.flatten_mapping(node)  # YAML merge keys (<<: *anchor)
            result: dict[Any, Any] = {}
            for key_node, value_node in node.value:
                key = self.loader.construct_object(key_node, deep=True)
                if not isinstance(key, str | int) or isinstance(key, bool):
                    key = str(key)
                key_mark = key_node.start_mark
                self.doc.key_marks[(*path, key)] = (key_mark.line + 1, key_mark.column + 1)
                if key in result:
                    self.doc.errors.append(self.doc.error((*path, key), "duplicate key", key=True))
                result[key] = self.build(value_node, (*path, key))
            return result
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, (*path, i)) for i, item in enumerate(node.value)]
        value = self.loader.construct_object(node, deep=True)
        if isinstance(value, str) and "${" in value:
            self.doc.written[path] = value
            value = self._interpolate(value, path)
        return value

    def _interpolate(self, text: str, path: KeyPath) -> str:
        value, problems = interpolate(text, self.env)
        self.doc.errors.extend(self.doc.error(path, problem) for problem in problems)
        return value


# -- Overrides ----------------------------------------------------------------------------

_SET_PART = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def parse_key_path(text: str) -> KeyPath:
    """``transforms[1].query`` or ``transforms.1.query`` → ``('transforms', 1, 'query')``."""
    parts: list[str | int] = []
    for name, index in _SET_PART.findall(text):
        if index:
            parts.append(int(index))
        else:
            parts.append(int(name) if name.isdigit() else name)
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
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
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
