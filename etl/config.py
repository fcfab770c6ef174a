"""Job files: the models of every key, validation with locations, parameters and overrides.

Validation runs once, up front, and reports every problem in one :class:`ConfigErrors`, each
with file, line, key path, what is wrong and what would be right. Stage options are validated
by the stage's own :class:`~etl.stages.StageOptions` model, found through a registry that the
plugin manager supplies.
"""

from __future__ import annotations

import re
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, Protocol

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    WithJsonSchema,
    field_validator,
)

from etl.errors import ConfigError, ConfigErrors, did_you_mean
from etl.masking import mask
from etl.params import INVALID, ParamType, json_value, render, resolve_params
from etl.units import parse_cron, parse_duration
from etl.yamldoc import Document, KeyPath, format_key

if TYPE_CHECKING:
    from etl.stages import Stage, StageOptions

__all__ = [
    "Duration",
    "IncrementalSpec",
    "Job",
    "JobSpec",
    "ParamSpec",
    "RetrySpec",
    "StageConfig",
    "Thresholds",
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


class ParamSpec(_Model):
    """A named parameter of a job, given at run time with ``-p name=value``."""

    type: ParamType = Field("string", description="the value's type")
    default: Any = Field(None, description="the value when none is given")
    required: bool = Field(False, description="refuse to run without a value")
    description: str | None = Field(None, description="what the parameter means")
    choices: list[Any] | None = Field(None, description="the only values allowed")


class Thresholds(_Model):
    """Row counts that decide how a run is carried out."""

    background: int = Field(10_000, ge=0, description="rows at or above which a run goes to the background queue")
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


class IncrementalSpec(_Model):
    """Read only what is new since the last completed run (see docs/scheduling.md)."""

    cursor: str = Field(
        min_length=1,
        description="the column whose values only grow as rows are added or changed (a file source: `mtime`)",
        examples=["updated_at"],
    )
    initial: Any = Field(
        None, description="where the first run starts (inclusive): a date, a time or a number; none: from the start"
    )
    lookback: Duration = Field(
        0.0,
        description="read again this far below the mark, for rows that arrive late "
        "(a duration; for number cursors, a number)",
    )

    @field_validator("initial")
    @classmethod
    def _initial(cls, value: Any) -> Any:
        from etl.incremental import parse_value

        return None if value is None else parse_value(value)


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
    max_parallel: int | None = Field(
        None, ge=1, description="chunks of one background run in flight at once (default: the live workers' slots)"
    )
    concurrency: int | None = Field(
        None, ge=1, description="unfinished background runs of this job at once; more are refused"
    )
    thresholds: Thresholds = Field(default_factory=Thresholds)
    retry: RetrySpec = Field(default_factory=RetrySpec)
    schedule: str | None = Field(None, description="cron expression (five fields, or @hourly, @daily, ...)")
    timezone: str = Field("UTC", description="the time zone the schedule is read in", examples=["Europe/Paris"])
    overlap: Literal["skip", "queue"] = Field(
        "skip", description="a scheduled run due while the last one is unfinished: skip it, or queue it behind"
    )
    catchup: bool = Field(
        False, description="after the scheduler was down: fire every missed run (true) or only the latest (false)"
    )
    incremental: IncrementalSpec | None = Field(None, description="read only rows new since the last completed run")
    plugins: list[str] = Field(default_factory=list, description="plugin modules or .py files to load")
    on_error: Literal["fail", "skip"] = Field("fail", description="what a rejected row does to the run")
    max_rejects: int | None = Field(None, ge=0, description="with on_error: skip, fail the run beyond this many")

    @field_validator("schedule")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        return None if value is None else parse_cron(value)

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        from etl.units import parse_timezone

        parse_timezone(value)
        return value

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

    def job_keys(self) -> dict[str, Any]: ...


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
        extras: the values of the top-level keys that plugins registered
            (``etl_register_job_keys``), validated, by key.
    """

    spec: JobSpec
    source: StageConfig
    transforms: tuple[StageConfig, ...]
    sink: StageConfig
    params: dict[str, Any]
    file: str
    text: str
    written: Mapping[KeyPath, str] = field(default_factory=dict)
    extras: Mapping[str, Any] = field(default_factory=dict)

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
        for key, value in self.extras.items():
            data[key] = TypeAdapter(Any).dump_python(value, mode="json")
        for stage in self.stages():
            options = stage.options.model_dump(mode="json")
            dumped = {"type": stage.type, **options}
            if stage.kind == "transform":
                data["transforms"][int(stage.key.split("[")[1].rstrip("]"))] = dumped
            else:
                data[stage.kind] = dumped
        for name, value in self.params.items():  # the values this job was loaded with
            if value is not None:
                data["params"][name]["default"] = json_value(value)
        return mask(data, self.written)


# -- Validation ---------------------------------------------------------------------------


def validate(
    doc: Document,
    registry: Registry,
    *,
    params: Mapping[str, str] | None = None,
    sets: Mapping[KeyPath, str] | None = None,
    run: Mapping[str, Any] | None = None,
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

    plugin_keys = registry.job_keys()
    extras = _extras(doc, plugin_keys, sets, errors)
    spec: JobSpec | None = None
    try:
        spec = JobSpec.model_validate({k: v for k, v in data.items() if k not in plugin_keys})
    except ValidationError as exc:
        errors.extend(_pydantic_errors(exc, doc, (), JobSpec, sets, list(plugin_keys)))

    specs = spec.params if spec is not None else _param_specs(data.get("params"))
    if run is None and isinstance(data.get("schedule"), str):
        run = _run_context(data)
    values, param_errors = resolve_params(doc, specs, params or {}, run)
    errors.extend(param_errors)
    if spec is not None and spec.on_error == "fail" and spec.max_rejects is not None:
        errors.append(
            _located(doc, ("max_rejects",), "only applies with `on_error: skip`; remove it or set on_error: skip", sets)
        )

    def stage(kind: Kind, path: KeyPath, raw: Any) -> StageConfig | None:
        return _stage(doc, registry, kind, path, raw, sets, errors, values, specs)

    stages = {kind: stage(kind, (kind,), data[kind]) for kind in ("source", "sink") if kind in data}
    transforms: list[StageConfig | None] = []
    raw_transforms = data.get("transforms") or []
    if isinstance(raw_transforms, list):
        transforms = [stage("transform", ("transforms", i), raw) for i, raw in enumerate(raw_transforms)]

    if spec is not None and spec.incremental is not None and stages.get("source") is not None:
        _check_incremental(doc, registry, stages["source"], spec.incremental.cursor, sets, errors)
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
        extras=extras,
    )


def _extras(
    doc: Document, keys: Mapping[str, Any], sets: Mapping[KeyPath, str], errors: list[ConfigError]
) -> dict[str, Any]:
    """The values of the job keys that plugins registered, each validated by its type."""
    from pydantic import create_model

    found: dict[str, Any] = {}
    for key, kind in keys.items():
        if key not in doc.data:
            continue
        model = create_model(f"JobKey_{key}", __base__=_Model, **{key: (kind, ...)})
        try:
            found[key] = getattr(model.model_validate({key: doc.data[key]}), key)
        except ValidationError as exc:
            errors.extend(_pydantic_errors(exc, doc, (), model, sets))
    return found


def _check_incremental(
    doc: Document,
    registry: Registry,
    source: StageConfig,
    cursor: str,
    sets: Mapping[KeyPath, str],
    errors: list[ConfigError],
) -> None:
    try:
        source.cls.check_cursor(source.options, cursor)
    except ValueError as exc:
        able = [n for n in registry.names("source") if getattr(registry.get("source", n).cls, "incremental", False)]
        which = f" (the sources that can: {', '.join(able)})" if not source.cls.incremental and able else ""
        path: KeyPath = ("incremental",) if not source.cls.incremental else ("incremental", "cursor")
        errors.append(_located(doc, path, f"{exc}{which}", sets))


def _run_context(data: Mapping[str, Any]) -> dict[str, Any] | None:
    """For a run started by hand: the latest interval of the job's schedule that has ended."""
    import time

    from etl.schedule import run_context

    try:
        return run_context(parse_cron(data["schedule"]), str(data.get("timezone") or "UTC"), time.time())
    except ValueError:
        return None  # the schedule or time zone is wrong, and reported as such


def _param_specs(raw: Any) -> dict[str, ParamSpec]:
    """The parameter declarations alone, when the job as a whole did not validate."""
    try:
        return TypeAdapter(dict[str, ParamSpec]).validate_python(raw or {})
    except ValidationError:
        return {}


def _stage(
    doc: Document,
    registry: Registry,
    kind: Kind,
    path: KeyPath,
    raw: Any,
    sets: Mapping[KeyPath, str],
    errors: list[ConfigError],
    values: Mapping[str, Any],
    specs: Mapping[str, ParamSpec],
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
                f"unknown {kind} type {name!r}{hint} (known {kind} types: {', '.join(known)})",
                sets,
            )
        )
        return None
    options_model = stage_type.cls.Options
    options: dict[str, Any] = {}
    count = len(errors)
    for key, value in raw.items():
        if key != "type":
            field = options_model.model_fields.get(str(key))
            sql = field is not None and _is_sql(field)
            options[key] = render(doc, (*path, key), value, values, specs, errors, sql=sql)
    if len(errors) > count or any(v is INVALID for v in options.values()):
        return None  # reported already; the options can't be checked with a value missing
    context = {"job_dir": _job_dir(doc), "params": list(specs)}
    try:
        validated = options_model.model_validate(options, context=context)
    except ValidationError as exc:
        errors.extend(_pydantic_errors(exc, doc, path, options_model, sets))
        return None
    return StageConfig(kind=kind, type=str(name), cls=stage_type.cls, options=validated, key=format_key(path))


def _is_sql(field: Any) -> bool:
    """Whether an option holds SQL: declared with ``json_schema_extra={"sql": True}``."""
    extra = field.json_schema_extra
    return isinstance(extra, dict) and extra.get("sql") is True


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
    exc: ValidationError,
    doc: Document,
    prefix: KeyPath,
    model: type[BaseModel],
    sets: Mapping[KeyPath, str],
    more_keys: list[str] | None = None,
) -> list[ConfigError]:
    located: dict[tuple[Any, ...], list[str]] = {}
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
        error = _located(doc, path, message, sets, key=True)
        where = (error.file, error.line, error.key)
        first.setdefault(where, error)
        if message not in located.setdefault(where, []):
            located[where].append(message)
    # A value that fits no member of a union gets one line saying why for each member.
    return [
        ConfigError("; or ".join(located[where]), file=e.file, line=e.line, column=e.column, key=e.key)
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
