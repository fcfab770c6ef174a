"""A validated job: its keys, its stages with their options, and its parameter values.

:func:`etl.validation.validate` makes a :class:`Job` from a job file (:mod:`etl.jobs` loads
one); runs, hooks and the queue are given one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import TypeAdapter

from etl.masking import mask
from etl.models import JobSpec, Kind
from etl.params import json_value
from etl.yamldoc import KeyPath

if TYPE_CHECKING:
    from etl.stages import Stage, StageOptions

__all__ = ["Job", "StageConfig"]


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
