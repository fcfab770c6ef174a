"""The models of a job file's keys: what each key may hold, its default and its description.

They validate a job's own keys (stage options have their stage's
:class:`~etl.stages.StageOptions` model) and are the source of the JSON Schema of job files
(:mod:`etl.schema`). :func:`etl.validation.validate` applies them with locations.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema, field_validator

from etl.incremental import parse_value
from etl.units import parse_cron, parse_duration, parse_timezone

__all__ = [
    "NAME_PATTERN",
    "Duration",
    "IncrementalSpec",
    "JobSpec",
    "Kind",
    "Model",
    "ParamSpec",
    "ParamType",
    "RetrySpec",
    "Thresholds",
]

NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]*$"
Kind = Literal["source", "transform", "sink"]
ParamType = Literal["string", "integer", "number", "boolean", "date", "datetime"]

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


class Model(BaseModel):
    """The base of these models: an unknown key is an error, and a validated value is frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ParamSpec(Model):
    """A named parameter of a job, given at run time with ``-p name=value``."""

    type: ParamType = Field("string", description="the value's type")
    default: Any = Field(None, description="the value when none is given")
    required: bool = Field(False, description="refuse to run without a value")
    description: str | None = Field(None, description="what the parameter means")
    choices: list[Any] | None = Field(None, description="the only values allowed")


class Thresholds(Model):
    """Row counts that decide how a run is carried out."""

    background: int = Field(10_000, ge=0, description="rows at or above which a run goes to the background queue")
    warn: int | None = Field(None, ge=0, description="above this many rows, log that the run is very large")
    max: int | None = Field(None, ge=1, description="above this many rows, refuse to run")
    max_chunks: int = Field(
        100_000, ge=1, description="refuse a run that would need more chunks than this (rows ÷ chunk_size)"
    )


class RetrySpec(Model):
    """How a failed chunk is retried: exponential backoff with a cap and jitter."""

    attempts: int = Field(3, ge=1, le=100, description="tries per chunk, the first included")
    backoff: Duration = Field(1.0, description="the delay before the first retry")
    factor: float = Field(2.0, ge=1.0, le=10.0, description="each further delay is this many times the last")
    max_backoff: Duration = Field(300.0, description="no delay is longer than this")
    jitter: bool | Annotated[float, Field(ge=0.0, le=1.0)] = Field(
        True, description="true, or the fraction of each delay drawn at random (true = 0.5)"
    )


class IncrementalSpec(Model):
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
        return None if value is None else parse_value(value)


class JobSpec(Model):
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
        parse_timezone(value)
        return value

    @field_validator("params")
    @classmethod
    def _param_names(cls, value: dict[str, ParamSpec]) -> dict[str, ParamSpec]:
        for name in value:
            if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", name):
                raise ValueError(f"parameter name {name!r} must be an identifier (letters, digits, _)")
        return value
