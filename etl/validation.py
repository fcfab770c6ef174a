"""Validating a job file into a :class:`~etl.job.Job`, every problem reported at once.

Validation runs once, up front, and reports every problem in one :class:`ConfigErrors`, each
with file, line, key path, what is wrong and what would be right (:mod:`etl.located`). Stage
options are validated by the stage's own :class:`~etl.stages.StageOptions` model, found
through a registry that the plugin manager supplies.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import TypeAdapter, ValidationError, create_model

from etl.errors import ConfigError, ConfigErrors, did_you_mean
from etl.job import Job, StageConfig
from etl.located import located, pydantic_errors
from etl.masking import shown
from etl.models import JobSpec, Kind, Model, ParamSpec
from etl.params import INVALID, render, resolve_params
from etl.units import parse_cron
from etl.yamldoc import Document, KeyPath, format_key

if TYPE_CHECKING:
    from etl.stages import Stage

__all__ = ["Registry", "StageType", "validate"]


class StageType(Protocol):
    kind: Kind
    name: str
    cls: type[Stage]


class Registry(Protocol):
    """What validation needs from the plugin manager: the stage types it knows."""

    def get(self, kind: Kind, name: str) -> StageType | None: ...

    def names(self, kind: Kind) -> list[str]: ...

    def job_keys(self) -> dict[str, Any]: ...


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
        errors.extend(pydantic_errors(exc, doc, (), JobSpec, sets, list(plugin_keys)))

    specs = spec.params if spec is not None else _param_specs(data.get("params"))
    if run is None and isinstance(data.get("schedule"), str):
        run = _run_context(data)
    values, param_errors = resolve_params(doc, specs, params or {}, run)
    errors.extend(param_errors)
    if spec is not None and spec.on_error == "fail" and spec.max_rejects is not None:
        errors.append(
            located(doc, ("max_rejects",), "only applies with `on_error: skip`; remove it or set on_error: skip", sets)
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
    found: dict[str, Any] = {}
    for key, kind in keys.items():
        if key not in doc.data:
            continue
        model = create_model(f"JobKey_{key}", __base__=Model, **{key: (kind, ...)})
        try:
            found[key] = getattr(model.model_validate({key: doc.data[key]}), key)
        except ValidationError as exc:
            errors.extend(pydantic_errors(exc, doc, (), model, sets))
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
        errors.append(located(doc, path, f"{exc}{which}", sets))


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
        errors.append(located(doc, path, f"expected a mapping with `type:` and the {kind}'s options", sets))
        return None
    name = raw.get("type")
    if name is None:
        errors.append(located(doc, path, f"missing `type:`; expected one of: {', '.join(known)}", sets))
        return None
    stage_type = registry.get(kind, str(name))
    if stage_type is None:
        hint = did_you_mean(str(name), known)
        errors.append(
            located(
                doc,
                (*path, "type"),
                f"unknown {kind} type {shown(name)}{hint} (known {kind} types: {', '.join(known)})",
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
        errors.extend(pydantic_errors(exc, doc, path, options_model, sets))
        return None
    return StageConfig(kind=kind, type=str(name), cls=stage_type.cls, options=validated, key=format_key(path))


def _is_sql(field: Any) -> bool:
    """Whether an option holds SQL: declared with ``json_schema_extra={"sql": True}``."""
    extra = field.json_schema_extra
    return isinstance(extra, dict) and extra.get("sql") is True


def _job_dir(doc: Document) -> Path:
    return Path(doc.file).resolve().parent if not doc.file.startswith("<") else Path.cwd()
