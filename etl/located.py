"""Pydantic's validation errors as :class:`~etl.errors.ConfigError`, located in the job file.

Each error names the file and line of the key it is about (or the ``--set`` that gave the
value), the key path, and a message for people: the valid keys and the nearest one for an
unknown key, what was expected for a missing one, the choices for a wrong literal, and the
value as written (``${VAR}``, masked) rather than its secret.
"""

from __future__ import annotations

import re
import typing
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ValidationError

from etl.errors import ConfigError, did_you_mean
from etl.masking import shown as _shown
from etl.yamldoc import Document, KeyPath, format_key

__all__ = ["located", "pydantic_errors"]


def located(
    doc: Document, path: KeyPath, message: str, sets: Mapping[KeyPath, str], *, key: bool = False
) -> ConfigError:
    """An error about the value at ``path``: at its ``--set`` override when one gave it, else at
    its place in the file (at the key itself with ``key=True``)."""
    for end in range(len(path), 0, -1):
        if path[:end] in sets:
            return ConfigError(message, file=sets[path[:end]], key=format_key(path))
    return doc.error(path, message, key=key)


def pydantic_errors(
    exc: ValidationError,
    doc: Document,
    prefix: KeyPath,
    model: type[BaseModel],
    sets: Mapping[KeyPath, str],
    more_keys: list[str] | None = None,
) -> list[ConfigError]:
    """The errors of ``model`` validating the mapping at ``prefix``, one per place in the file.

    Args:
        more_keys: top-level keys valid besides the model's own (those that plugins add).
    """
    located_at: dict[tuple[Any, ...], list[str]] = {}
    first: dict[tuple[Any, ...], ConfigError] = {}
    for item in exc.errors(include_url=False):
        kind = item["type"]
        # Pydantic adds the union member it tried (`bool`, `constrained-float`) to the
        # location; keep only the part of the location that is in the file.
        loc = _written(doc, prefix, tuple(item["loc"]), keep_last=kind in ("missing", "extra_forbidden"))
        path = (*prefix, *loc)
        if kind == "extra_forbidden":
            parent_model = _model_at(model, loc[:-1])
            allowed = list(parent_model.model_fields) if parent_model else []
            if len(loc) == 1 and more_keys:  # a top-level key: plugins' keys are valid too
                allowed += more_keys
            valid = f" (valid keys: {', '.join(allowed)})" if allowed else ""
            message = f"unknown key{did_you_mean(str(loc[-1]), allowed)}{valid}"
        elif kind == "missing":
            message = f"missing{_expected(model, loc)}"
        else:
            message = _describe(item, doc, path)
        error = located(doc, path, message, sets, key=True)
        where = (error.file, error.line, error.key)
        first.setdefault(where, error)
        if message not in located_at.setdefault(where, []):
            located_at[where].append(message)
    # A value that fits no member of a union gets one line saying why for each member.
    return [
        ConfigError("; or ".join(located_at[where]), file=e.file, line=e.line, column=e.column, key=e.key)
        for where, e in first.items()
    ]


def _written(doc: Document, prefix: KeyPath, loc: KeyPath, *, keep_last: bool) -> KeyPath:
    """The longest start of ``loc`` that names something in the file (plus a missing key)."""
    node: Any = doc.data
    for part in prefix:
        node = node[part] if isinstance(node, dict | list) else None
    kept: list[str | int] = []
    for position, part in enumerate(loc):
        in_dict = isinstance(node, dict) and part in node
        in_list = isinstance(node, list) and isinstance(part, int) and part < len(node)
        if in_dict or in_list:
            node = node[part]
        else:
            if keep_last and position == len(loc) - 1:
                kept.append(part)
            break
        kept.append(part)
    return tuple(kept)


def _describe(item: Mapping[str, Any], doc: Document, path: KeyPath) -> str:
    message = item["msg"]
    kind = item["type"]
    if kind == "value_error":
        return _LONG_LITERAL.sub(_cut, message.removeprefix("Value error, "))
    shown = doc.written.get(path, item.get("input"))
    if kind == "literal_error":
        expected = item.get("ctx", {}).get("expected", "")
        choices = re.findall(r"'([^']*)'", expected)
        hint = did_you_mean(str(shown), choices)
        return f"{_shown(shown)} is not one of: {', '.join(choices)}{hint}"
    if kind == "string_pattern_mismatch" and path[-1:] == ("name",):
        return (
            f"{_shown(shown)} is not a valid name; use lowercase letters, digits, '-' and '_', "
            "starting with a letter or digit"
        )
    text = message[0].lower() + message[1:] if message else "invalid"
    text = text.replace("input should be", "should be")
    return f"{_shown(shown)}: {text}" if not isinstance(shown, dict | list) else text


# A long quoted value in a validator's message ('…' or "…", as Python writes strings).
_LONG_LITERAL = re.compile(r"'(?:[^'\\\n]|\\.){100,}'" r'|"(?:[^"\\\n]|\\.){100,}"')


def _cut(match: re.Match[str]) -> str:
    """A long value in a message, cut short (a value of a million characters helps no one)."""
    return f"{match[0][:101]}{match[0][0]}… ({len(match[0]) - 2:,} characters)"


def _model_at(model: type[BaseModel], loc: KeyPath) -> type[BaseModel] | None:
    """The model that validates the mapping at ``loc`` (relative to ``model``): the first of
    :func:`_models_at`."""
    found = _models_at(model, loc)
    return found[0] if found else None


def _models_at(model: type[BaseModel], loc: KeyPath) -> list[type[BaseModel]]:
    """The models that may validate the mapping at ``loc``: more than one where the value is a
    union of models (the targets of a plugin's job key, say)."""
    current: list[Any] = [model]
    skip_key = False
    for part in loc:
        if skip_key or isinstance(part, int):
            skip_key = False
            continue
        annotations = [m.model_fields[part].annotation for m in current if part in getattr(m, "model_fields", {})]
        if not annotations:
            return []
        skip_key = typing.get_origin(annotations[0]) is dict  # the next part is a key of the dict
        current = [found for annotation in annotations for found in _models_in(annotation)]
    return [m for m in current if isinstance(m, type) and issubclass(m, BaseModel)]


def _models_in(annotation: Any) -> list[Any]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [found for arg in getattr(annotation, "__args__", ()) for found in _models_in(arg)]


def _expected(model: type[BaseModel], loc: KeyPath) -> str:
    infos = [m.model_fields[str(loc[-1])] for m in _models_at(model, loc[:-1]) if str(loc[-1]) in m.model_fields]
    info = infos[0] if infos else None
    if info is None:
        return ""
    text = f"; expected {info.description}" if info.description else ""
    if info.examples:
        text += f", such as {info.examples[0]!r}"
    return text
