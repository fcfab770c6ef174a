"""Job parameters: typed values from the command line and defaults, and ``{{ params.NAME }}``.

A job declares its parameters (``params:``); values arrive as text (``-p name=value``) or from
the declared defaults and are converted to the declared type. Stage options may use them as
``{{ params.NAME }}`` templates; SQL binds them as ``$NAME`` instead, never as text.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from etl.errors import ConfigError, did_you_mean
from etl.models import ParamType
from etl.yamldoc import Document, KeyPath

if TYPE_CHECKING:
    from etl.models import ParamSpec

__all__ = ["INVALID", "ParamType", "convert_param", "json_value", "render", "resolve_params"]


def json_value(value: Any) -> Any:
    """A parameter value as JSON can hold it (dates as ISO 8601 text)."""
    return value.isoformat() if isinstance(value, dt.date | dt.datetime) else value


_TRUE = {"true", "yes", "y", "1", "on"}
_FALSE = {"false", "no", "n", "0", "off"}


def convert_param(kind: ParamType, value: Any) -> Any:
    """A parameter value of type ``kind`` from YAML or command-line text.

    Raises:
        ValueError: saying what a valid value looks like.
    """
    text = str(value).strip()
    if kind == "string":
        return value if isinstance(value, str) else text
    if kind == "integer":
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if re.fullmatch(r"[+-]?\d[\d_]*", text):
            return int(text)
        raise ValueError(f"{value!r} is not an integer; expected e.g. 42")
    if kind == "number":
        try:
            return float(text) if not isinstance(value, bool) else _fail()
        except ValueError:
            raise ValueError(f"{value!r} is not a number; expected e.g. 0.5") from None
    if kind == "boolean":
        if isinstance(value, bool):
            return value
        if text.lower() in _TRUE | _FALSE:
            return text.lower() in _TRUE
        raise ValueError(f"{value!r} is not a boolean; expected true or false")
    if kind == "date":
        if isinstance(value, dt.datetime):
            return value.date()  # the date where the time is (a run's interval in its time zone)
        if isinstance(value, dt.date):
            return value
        try:
            return dt.date.fromisoformat(text)
        except ValueError:
            raise ValueError(f"{value!r} is not a date; expected YYYY-MM-DD, e.g. 2026-01-31") from None
    if kind == "datetime":
        if isinstance(value, dt.datetime):
            return value
        try:
            return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(
                f"{value!r} is not a date and time; expected ISO 8601, e.g. 2026-01-31T06:00:00Z"
            ) from None
    raise ValueError(f"unknown parameter type {kind!r}")


def _fail() -> float:
    raise ValueError


def resolve_params(
    doc: Document,
    specs: Mapping[str, ParamSpec],
    given: Mapping[str, str],
    run: Mapping[str, Any] | None = None,
) -> tuple[dict[str, Any], list[ConfigError]]:
    """Typed parameter values from the job's declarations and the values given at run time.

    A default may be ``{{ run.interval_start }}`` or ``{{ run.interval_end }}``: the interval
    of the scheduled run (``run``), or of the latest one that has ended.
    """
    values: dict[str, Any] = {}
    errors: list[ConfigError] = []
    for name in given:
        if name not in specs:
            hint = did_you_mean(name, specs) or (
                f"; the job declares: {', '.join(specs)}" if specs else "; the job declares no params"
            )
            errors.append(ConfigError(f"unknown parameter {name!r}{hint}", file=f"-p {name}={given[name]}"))
    for name, spec in specs.items():
        path: KeyPath = ("params", name)
        if name in given:
            raw, origin = given[name], f"-p {name}={given[name]}"
        elif spec.default is not None:
            raw, origin = spec.default, None
            if isinstance(raw, str) and "{{" in raw and "run." in raw:
                raw = _run_template(doc, (*path, "default"), raw, run, errors)
                if raw is INVALID:
                    continue
        elif spec.required:
            errors.append(doc.error(path, f"required parameter; give it with -p {name}=VALUE"))
            continue
        else:
            values[name] = None
            continue
        try:
            value = convert_param(spec.type, raw)
            if spec.choices is not None:
                allowed = [convert_param(spec.type, c) for c in spec.choices]
                if value not in allowed:
                    shown = ", ".join(str(c) for c in spec.choices)
                    raise ValueError(f"{raw!r} is not one of: {shown}{did_you_mean(str(raw), map(str, spec.choices))}")
        except ValueError as exc:
            if origin:
                errors.append(ConfigError(str(exc), file=origin, key=f"params.{name}"))
            else:
                errors.append(doc.error((*path, "default"), str(exc)))
            continue
        values[name] = value
    return values, errors


_TEMPLATE = re.compile(r"\{\{\s*params\.([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
_RUN = re.compile(r"\{\{\s*run\.([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
RUN_NAMES = ("interval_start", "interval_end")


def _run_template(
    doc: Document, path: KeyPath, raw: str, run: Mapping[str, Any] | None, errors: list[ConfigError]
) -> Any:
    """A default with ``{{ run.interval_start }}`` (or ``interval_end``) filled in."""
    names = _RUN.findall(raw)
    if not names:  # "{{" and "run." but no template: text, judged as the parameter's type
        return raw
    for name in names:
        if name not in RUN_NAMES:
            errors.append(
                doc.error(
                    path,
                    f"{{{{ run.{name} }}}}: no such value{did_you_mean(name, RUN_NAMES)}; expected one of: "
                    + ", ".join(f"run.{n}" for n in RUN_NAMES),
                )
            )
            return INVALID
    if run is None:
        errors.append(
            doc.error(
                path,
                f"{{{{ run.{names[0]} }}}} is the interval of a scheduled run: the job needs a `schedule:` "
                "(or give the parameter a value with -p)",
            )
        )
        return INVALID
    whole = _RUN.fullmatch(raw.strip())
    if whole:
        return run[whole[1]]
    return _RUN.sub(lambda m: run[m[1]].isoformat(), raw)


INVALID = object()


def render(
    doc: Document,
    path: KeyPath,
    raw: Any,
    values: Mapping[str, Any],
    specs: Mapping[str, ParamSpec],
    errors: list[ConfigError],
    sql: bool = False,
) -> Any:
    """Stage options with ``{{ params.NAME }}`` replaced by the parameter's value.

    A string that is just one template takes the parameter's typed value (``rows: "{{
    params.rows }}"`` is an integer); templates inside longer text are replaced by the value's
    text. Under an option that holds SQL (``sql=True``) templates are refused: there,
    ``$NAME`` binds the value safely instead of splicing it into the SQL text.
    """
    if isinstance(raw, dict):
        items = {k: render(doc, (*path, k), v, values, specs, errors, sql) for k, v in raw.items()}
        return INVALID if INVALID in items.values() else items
    if isinstance(raw, list):
        listed = [render(doc, (*path, i), v, values, specs, errors, sql) for i, v in enumerate(raw)]
        return INVALID if any(v is INVALID for v in listed) else listed
    if not isinstance(raw, str) or "{{" not in raw:
        return raw
    names = _TEMPLATE.findall(raw)
    if sql and names:
        errors.append(
            doc.error(
                path,
                f"use ${names[0]} to pass a parameter to SQL (bound as a value, never spliced "
                f"into the text), not {{{{ params.{names[0]} }}}}",
            )
        )
        return INVALID
    if any(n in specs and n not in values for n in names):
        return INVALID  # a declared parameter whose value was rejected (and reported) above
    for name in names:
        if name not in values:
            hint = did_you_mean(name, values) or (
                f"; the job's params: {', '.join(values)}" if values else "; the job declares no params"
            )
            errors.append(doc.error(path, f"{{{{ params.{name} }}}}: no such parameter{hint}"))
        elif values[name] is None:
            errors.append(
                doc.error(
                    path,
                    f"{{{{ params.{name} }}}}: the parameter has no value; give it with -p {name}=VALUE "
                    "or declare a default",
                )
            )
    if any(values.get(n) is None for n in names):
        return INVALID
    whole = _TEMPLATE.fullmatch(raw.strip())
    if whole:
        return values[whole[1]]
    return _TEMPLATE.sub(lambda m: str(json_value(values[m[1]])), raw)
