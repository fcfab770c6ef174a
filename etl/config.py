"""Job files: the models of every key, validation with locations, parameters and overrides.

Validation runs once, up front, and reports every problem in one :class:`ConfigErrors`, each
with file, line, key path, what is wrong and what would be right. Stage options are validated
by the stage's own :class:`~etl.stages.StageOptions` model, found through a registry that the
plugin manager supplies.
"""

from __future__ import annotations

import datetime as dt
import re
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, Protocol

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    TypeAdapter,
    ValidationError,
    WithJsonSchema,
    field_validator,
)

from etl.errors import ConfigError, ConfigErrors, did_you_mean
from etl.units import parse_cron, parse_duration
from etl.yamldoc import Document, KeyPath, format_key

if TYPE_CHECKING:
    from etl.stages import Stage, StageOptions

__all__ = [
    "Duration",
    "Job",
    "JobSpec",
    "ParamSpec",
    "RetrySpec",
    "StageConfig",
    "Thresholds",
    "apply_sets",
    "mask",
    "validate",
]

NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]*$"
Kind = Literal["source", "transform", "sink"]

Duration = Annotated[
    float,
    BeforeValidator(parse_duration),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "number", "minimum": 0},
                {"type": "string", "pattern": r"^\s*\d+(\.\d+)?\s*(ms|s|m|h|d|w)?\s*$"},
            ],
            "description": "seconds, or a number with a unit: 100ms, 30s, 5m, 2h, 7d",
        }
    ),
]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


ParamType = Literal["string", "integer", "number", "boolean", "date", "datetime"]


class ParamSpec(_Model):
    """A named parameter of a job, given at run time with ``-p name=value``."""

    type: ParamType = Field("string", description="the value's type")
    default: Any = Field(None, description="the value when none is given")
    required: bool = Field(False, description="refuse to run without a value")
    description: str | None = Field(None, description="what the parameter means")
    choices: list[Any] | None = Field(None, description="the only values allowed")


class Thresholds(_Model):
    """Row counts that decide how a run is carried out."""

    background: int = Field(10_000, ge=0, description="rows at or above which a run goes to the queue")
    warn: int | None = Field(None, ge=0, description="above this many rows, log that the run is very large")
    max: int | None = Field(None, ge=1, description="above this many rows, refuse to run")


class RetrySpec(_Model):
    """How a failed chunk is retried: exponential backoff with a cap and jitter."""

    attempts: int = Field(3, ge=1, le=100, description="tries per chunk, the first included")
    backoff: Duration = Field(1.0, description="the delay before the first retry")
    factor: float = Field(2.0, ge=1.0, le=10.0, description="each further delay is this many times the last")
    max_backoff: Duration = Field(300.0, description="no delay is longer than this")
    jitter: bool | Annotated[float, Field(ge=0.0, le=1.0)] = Field(
        True, description="true, or the fraction of each delay drawn at random (true = 0.5)"
    )


class JobSpec(_Model):
    """The keys of a job file. Stage mappings are validated against their stage's options."""

    name: str = Field(pattern=NAME_PATTERN, max_length=100, description="the job's name", examples=["forecast-sync"])
    description: str | None = Field(None, description="free text")
    params: dict[str, ParamSpec] = Field(default_factory=dict, description="named parameters")
    source: dict[str, Any] = Field(description="where rows come from: `type` and that stage's options")
    transforms: list[dict[str, Any]] = Field(default_factory=list, description="applied in order")
    sink: dict[str, Any] = Field(description="where rows go: `type` and that stage's options")
    chunk_size: int = Field(50_000, ge=1, description="rows per chunk")
    delay: Duration = Field(0.0, description="pause between chunks")
    thresholds: Thresholds = Field(default_factory=Thresholds)
    retry: RetrySpec = Field(default_factory=RetrySpec)
    schedule: str | None = Field(None, description="cron expression (five fields, or @hourly, @daily, ...)")
    plugins: list[str] = Field(default_factory=list, description="plugin modules or .py files to load")
    on_error: Literal["fail", "skip"] = Field("fail", description="what a rejected row does to the run")
    max_rejects: int | None = Field(None, ge=0, description="with on_error: skip, fail the run beyond this many")

    @field_validator("schedule")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        return None if value is None else parse_cron(value)

    @field_validator("params")
    @classmethod
    def _param_names(cls, value: dict[str, ParamSpec]) -> dict[str, ParamSpec]:
        for name in value:
            if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", name):
                raise ValueError(f"parameter name {name!r} must be an identifier (letters, digits, _)")
        return value


class StageType(Protocol):
    kind: Kind
    name: str
    cls: type[Stage]


class Registry(Protocol):
    """What validation needs from the plugin manager: the stage types it knows."""

    def get(self, kind: Kind, name: str) -> StageType | None: ...

    def names(self, kind: Kind) -> list[str]: ...


@dataclass(frozen=True)
class StageConfig:
    """One stage of a job, validated.

    Attributes:
        kind: ``source``, ``transform`` or ``sink``.
        type: its ``type:``.
        cls: the stage class that the registry gave for it.
        options: its options, validated.
        key: where it sits in the job, such as ``transforms[1]``.
    """

    kind: Kind
    type: str
    cls: type[Stage]
    options: StageOptions
    key: str

    @property
    def label(self) -> str:
        """How errors name the stage: ``sink (duckdb)``, ``transforms[1] (cast)``."""
        return f"{self.key} ({self.type})"


@dataclass(frozen=True)
class Job:
    """A validated job, ready to run.

    Attributes:
        spec: the job's keys, validated.
        source, transforms, sink: its stages.
        params: parameter values, typed.
        file: the file it came from (or ``<string>``).
        text: the job as written, ``${VAR}`` references and all: what a run record keeps, so
            that no resolved secret is stored.
        written: the as-written text of values that held ``${VAR}`` references, by key path.
    """

    spec: JobSpec
    source: StageConfig
    transforms: tuple[StageConfig, ...]
    sink: StageConfig
    params: dict[str, Any]
    file: str
    text: str
    written: Mapping[KeyPath, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def directory(self) -> Path:
        """The job file's directory, where code paths are looked up first."""
        return Path(self.file).resolve().parent if not self.file.startswith("<") else Path.cwd()

    def stages(self) -> tuple[StageConfig, ...]:
        return (self.source, *self.transforms, self.sink)

    def describe(self) -> dict[str, Any]:
        """The job's settings, defaults filled in, with secrets masked."""
        data = self.spec.model_dump(mode="json")
        for stage in self.stages():
            options = stage.options.model_dump(mode="json")
            dumped = {"type": stage.type, **options}
            if stage.kind == "transform":
                data["transforms"][int(stage.key.split("[")[1].rstrip("]"))] = dumped
            else:
                data[stage.kind] = dumped
        data["params"] = {k: _json_value(v) for k, v in self.params.items()}
        return mask(data, self.written)


def _json_value(value: Any) -> Any:
    return value.isoformat() if isinstance(value, dt.date | dt.datetime) else value


# -- Secrets ------------------------------------------------------------------------------

_SECRET_KEY = re.compile(r"(passw(or)?d|secret|token|api_?key|private_?key|credential|auth)", re.I)
_URL_PASSWORD = re.compile(r"(?P<head>[a-z][a-z0-9+.-]*://[^:/@\s]*:)(?P<password>[^@\s]+)(?P<tail>@)", re.I)
MASK = "***"


def mask(data: Any, written: Mapping[KeyPath, str] | None = None, path: KeyPath = ()) -> Any:
    """``data`` with secrets hidden.

    A value that came from a ``${VAR}`` reference is shown as written; values under keys that
    name a secret (``password``, ``token``, ``credentials``...) become ``***``; a password in a
    URL (``postgres://user:pw@host``) becomes ``***``.
    """
    written = written or {}
    if path in written:
        return written[path]
    if isinstance(data, Mapping):
        return {
            k: (
                MASK
                if _SECRET_KEY.search(str(k)) and v not in (None, "") and (*path, k) not in written
                else mask(v, written, (*path, k))
            )
            for k, v in data.items()
        }
    if isinstance(data, list | tuple):
        return [mask(v, written, (*path, i)) for i, v in enumerate(data)]
    if isinstance(data, SecretStr):
        return MASK
    if isinstance(data, str):
        return _URL_PASSWORD.sub(lambda m: m["head"] + MASK + m["tail"], data)
    return data


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


def apply_sets(doc: Document, sets: Sequence[str]) -> dict[KeyPath, str]:
    """Apply ``--set key.path=value`` overrides to ``doc.data``; values are YAML scalars.

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
        target = doc.data if isinstance(doc.data, dict) else {}
        doc.data = target
        problem = _assign(target, path, value)
        if problem:
            errors.append(ConfigError(problem, file=origin, key=format_key(path)))
        else:
            applied[path] = origin
            doc.written.pop(path, None)
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


# -- Parameters ---------------------------------------------------------------------------

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
        if isinstance(value, dt.date) and not isinstance(value, dt.datetime):
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
    doc: Document, specs: Mapping[str, ParamSpec], given: Mapping[str, str]
) -> tuple[dict[str, Any], list[ConfigError]]:
    """Typed parameter values from the job's declarations and the values given at run time."""
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


# -- Validation ---------------------------------------------------------------------------


def validate(
    doc: Document,
    registry: Registry,
    *,
    params: Mapping[str, str] | None = None,
    sets: Mapping[KeyPath, str] | None = None,
) -> Job:
    """Validate a parsed job file (``--set`` overrides already applied) into a :class:`Job`.

    Raises:
        ConfigErrors: every problem found, in file order.
    """
    sets = sets or {}
    errors: list[ConfigError] = list(doc.errors)
    data = doc.data
    if not isinstance(data, dict):
        raise ConfigErrors([*errors, doc.error((), "a job file is a mapping of keys such as name, source and sink")])

    spec: JobSpec | None = None
    try:
        spec = JobSpec.model_validate(data)
    except ValidationError as exc:
        errors.extend(_pydantic_errors(exc, doc, (), JobSpec, sets))

    specs = spec.params if spec is not None else _param_specs(data.get("params"))
    values, param_errors = resolve_params(doc, specs, params or {})
    errors.extend(param_errors)
    if spec is not None and spec.on_error == "fail" and spec.max_rejects is not None:
        errors.append(
            doc.error(("max_rejects",), "only applies with `on_error: skip`; remove it or set on_error: skip")
        )

    def stage(kind: Kind, path: KeyPath, raw: Any) -> StageConfig | None:
        count = len(errors)
        rendered = _render(doc, path, raw, values, specs, errors)
        if len(errors) > count or rendered is _INVALID:
            return None  # reported already; its options can't be checked with a value missing
        return _stage(doc, registry, kind, path, rendered, sets, errors)

    stages = {kind: stage(kind, (kind,), data[kind]) for kind in ("source", "sink") if kind in data}
    transforms: list[StageConfig | None] = []
    raw_transforms = data.get("transforms") or []
    if isinstance(raw_transforms, list):
        transforms = [stage("transform", ("transforms", i), raw) for i, raw in enumerate(raw_transforms)]

    if errors or spec is None:
        raise ConfigErrors(sorted(errors, key=lambda e: (e.file or "", e.line or 0)))
    return Job(
        spec=spec,
        source=stages["source"],
        transforms=tuple(t for t in transforms if t is not None),
        sink=stages["sink"],
        params=values,
        file=doc.file,
        text=doc.text,
        written=dict(doc.written),
    )


def _param_specs(raw: Any) -> dict[str, ParamSpec]:
    """The parameter declarations alone, when the job as a whole did not validate."""
    try:
        return TypeAdapter(dict[str, ParamSpec]).validate_python(raw or {})
    except ValidationError:
        return {}


_TEMPLATE = re.compile(r"\{\{\s*params\.([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
_SQL_KEYS = {"query", "expr"}


_INVALID = object()


def _render(
    doc: Document,
    path: KeyPath,
    raw: Any,
    values: Mapping[str, Any],
    specs: Mapping[str, ParamSpec],
    errors: list[ConfigError],
) -> Any:
    """Stage options with ``{{ params.NAME }}`` replaced by the parameter's value.

    A string that is just one template takes the parameter's typed value (``rows: "{{
    params.rows }}"`` is an integer); templates inside longer text are replaced by the value's
    text. SQL keys (``query``, ``expr``) refuse templates: there, ``$NAME`` binds the value
    safely instead of splicing it into the SQL text.
    """
    if isinstance(raw, dict):
        items = {k: _render(doc, (*path, k), v, values, specs, errors) for k, v in raw.items()}
        return _INVALID if _INVALID in items.values() else items
    if isinstance(raw, list):
        listed = [_render(doc, (*path, i), v, values, specs, errors) for i, v in enumerate(raw)]
        return _INVALID if any(v is _INVALID for v in listed) else listed
    if not isinstance(raw, str) or "{{" not in raw:
        return raw
    names = _TEMPLATE.findall(raw)
    if path[-1] in _SQL_KEYS and names:
        errors.append(
            doc.error(
                path,
                f"use ${names[0]} to pass a parameter to SQL (bound as a value, never spliced "
                f"into the text), not {{{{ params.{names[0]} }}}}",
            )
        )
        return raw
    if any(n in specs and n not in values for n in names):
        return _INVALID  # a declared parameter whose value was rejected (and reported) above
    unknown = [n for n in names if n not in values]
    for name in unknown:
        hint = did_you_mean(name, values) or (
            f"; the job's params: {', '.join(values)}" if values else "; the job declares no params"
        )
        errors.append(doc.error(path, f"{{{{ params.{name} }}}}: no such parameter{hint}"))
    if unknown:
        return raw
    whole = _TEMPLATE.fullmatch(raw.strip())
    if whole:
        return values[whole[1]]
    return _TEMPLATE.sub(lambda m: str(_json_value(values[m[1]])), raw)


def _stage(
    doc: Document,
    registry: Registry,
    kind: Kind,
    path: KeyPath,
    raw: Any,
    sets: Mapping[KeyPath, str],
    errors: list[ConfigError],
) -> StageConfig | None:
    known = registry.names(kind)
    if not isinstance(raw, dict):
        errors.append(_located(doc, path, f"expected a mapping with `type:` and the {kind}'s options", sets))
        return None
    name = raw.get("type")
    if name is None:
        errors.append(_located(doc, path, f"missing `type:`; expected one of: {', '.join(known)}", sets))
        return None
    stage_type = registry.get(kind, str(name))
    if stage_type is None:
        hint = did_you_mean(str(name), known)
        errors.append(
            _located(
                doc,
                (*path, "type"),
                f"unknown {kind} type {name!r}{hint}; known {kind} types: {', '.join(known)}",
                sets,
            )
        )
        return None
    options_model = stage_type.cls.Options
    options = {k: v for k, v in raw.items() if k != "type"}
    try:
        validated = options_model.model_validate(options, context={"job_dir": _job_dir(doc)})
    except ValidationError as exc:
        errors.extend(_pydantic_errors(exc, doc, path, options_model, sets))
        return None
    return StageConfig(kind=kind, type=str(name), cls=stage_type.cls, options=validated, key=format_key(path))


def _job_dir(doc: Document) -> Path:
    return Path(doc.file).resolve().parent if not doc.file.startswith("<") else Path.cwd()


def _located(
    doc: Document, path: KeyPath, message: str, sets: Mapping[KeyPath, str], *, key: bool = False
) -> ConfigError:
    for end in range(len(path), 0, -1):
        if path[:end] in sets:
            return ConfigError(message, file=sets[path[:end]], key=format_key(path))
    return doc.error(path, message, key=key)


def _pydantic_errors(
    exc: ValidationError, doc: Document, prefix: KeyPath, model: type[BaseModel], sets: Mapping[KeyPath, str]
) -> list[ConfigError]:
    result = []
    for item in exc.errors(include_url=False):
        loc = tuple(p for p in item["loc"] if not (isinstance(p, str) and ("[" in p or p in {"bool", "float"})))
        path = (*prefix, *loc)
        kind = item["type"]
        if kind == "extra_forbidden":
            parent_model = _model_at(model, loc[:-1])
            allowed = list(parent_model.model_fields) if parent_model else []
            name = str(loc[-1])
            hint = did_you_mean(name, allowed)
            valid = f"; valid keys: {', '.join(allowed)}" if allowed else ""
            result.append(_located(doc, path, f"unknown key{hint}{valid}", sets, key=True))
        elif kind == "missing":
            result.append(_located(doc, path, f"missing{_expected(model, loc)}", sets, key=True))
        else:
            result.append(_located(doc, path, _describe(item, doc, path), sets, key=True))
    # A union (bool | float) reports once per member; keep one line per location and message.
    unique: dict[tuple[Any, ...], ConfigError] = {}
    for error in result:
        unique.setdefault((error.file, error.line, error.key), error)
    return list(unique.values())


def _describe(item: Mapping[str, Any], doc: Document, path: KeyPath) -> str:
    message = item["msg"]
    kind = item["type"]
    if kind == "value_error":
        message = message.removeprefix("Value error, ")
        return message
    shown = doc.written.get(path, item.get("input"))
    if kind == "literal_error":
        expected = item.get("ctx", {}).get("expected", "")
        choices = re.findall(r"'([^']*)'", expected)
        hint = did_you_mean(str(shown), choices)
        return f"{shown!r} is not one of: {', '.join(choices)}{hint}"
    if kind == "string_pattern_mismatch" and path[-1:] == ("name",):
        return (
            f"{shown!r} is not a valid name; use lowercase letters, digits, '-' and '_', "
            "starting with a letter or digit"
        )
    text = message[0].lower() + message[1:] if message else "invalid"
    text = text.replace("input should be", "should be")
    return f"{mask(shown)!r}: {text}" if not isinstance(shown, dict | list) else text


def _model_at(model: type[BaseModel], loc: KeyPath) -> type[BaseModel] | None:
    """The model that validates the mapping at ``loc`` (relative to ``model``)."""
    current: Any = model
    skip_key = False
    for part in loc:
        if skip_key or isinstance(part, int):
            skip_key = False
            continue
        fields = getattr(current, "model_fields", None)
        if not fields or part not in fields:
            return None
        annotation = fields[part].annotation
        skip_key = typing.get_origin(annotation) is dict  # the next part is a key of the dict
        current = _model_in(annotation)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _model_in(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _expected(model: type[BaseModel], loc: KeyPath) -> str:
    parent = _model_at(model, loc[:-1])
    info = parent.model_fields.get(str(loc[-1])) if parent else None
    if info is None:
        return ""
    text = f"; expected {info.description}" if info.description else ""
    if info.examples:
        text += f", such as {info.examples[0]!r}"
    return text
