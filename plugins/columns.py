"""Transforms on columns: ``rename``, ``select``, ``drop`` and ``cast``.

All four work on Arrow arrays directly (no copy for rename, select and drop). ``cast`` never
alters a value: a value that its new type can't hold exactly is rejected (the run fails, or
with ``on_error: skip`` the row goes to the rejects file); :mod:`._casting` says what is kept.
"""

from __future__ import annotations

from collections.abc import Iterable

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from etl import ConfigError, ConfigErrors, PermanentError, StageOptions, Transform, hookimpl, parse_type

from ._casting import cast_batch
from ._timeformat import compile_format


def _require(batch: pa.RecordBatch, names: list[str], stage: str) -> None:
    missing = [n for n in names if n not in batch.schema.names]
    if missing:
        raise PermanentError(
            f"{stage}: no column {', '.join(map(repr, missing))}; the rows have: {', '.join(batch.schema.names)}"
        )


def _require_keys(stage: Transform, schema: pa.Schema, names: Iterable[str]) -> None:
    """The columns that the keys of a ``columns:`` mapping name, each checked at its own key."""
    problems: list[ConfigError] = []
    for name in names:
        try:
            stage.require_columns(schema, [name], key=f"columns.{name}")
        except ConfigErrors as exc:
            problems.extend(exc.errors)
    if problems:
        raise ConfigErrors(problems)


class RenameOptions(StageOptions):
    columns: dict[str, str] = Field(min_length=1, description="old name → new name", examples=[{"forecast": "value"}])


class Rename(Transform):
    """Rename columns."""

    name = "rename"
    Options = RenameOptions
    options: RenameOptions

    def apply(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        mapping = self.options.columns
        _require(batch, list(mapping), self.context.label)
        return batch.rename_columns([mapping.get(n, n) for n in batch.schema.names])

    def output_schema(self, schema: pa.Schema) -> pa.Schema:
        _require_keys(self, schema, self.options.columns)
        mapping = self.options.columns
        return pa.schema([field.with_name(mapping.get(field.name, field.name)) for field in schema])


class SelectOptions(StageOptions):
    columns: list[str] = Field(min_length=1, description="the columns to keep, in this order")


class Select(Transform):
    """Keep only the listed columns, in the listed order."""

    name = "select"
    Options = SelectOptions
    options: SelectOptions

    def apply(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        _require(batch, self.options.columns, self.context.label)
        return batch.select(self.options.columns)

    def output_schema(self, schema: pa.Schema) -> pa.Schema:
        self.require_columns(schema, self.options.columns, key="columns")
        return pa.schema([schema.field(name) for name in self.options.columns])


class DropOptions(StageOptions):
    columns: list[str] = Field(min_length=1, description="the columns to remove")
    missing_ok: bool = Field(False, description="don't fail when a listed column is absent")


class Drop(Transform):
    """Remove the listed columns."""

    name = "drop"
    Options = DropOptions
    options: DropOptions

    def apply(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        if not self.options.missing_ok:
            _require(batch, self.options.columns, self.context.label)
        drop = set(self.options.columns)
        return batch.select([n for n in batch.schema.names if n not in drop])

    def output_schema(self, schema: pa.Schema) -> pa.Schema:
        if not self.options.missing_ok:
            self.require_columns(schema, self.options.columns, key="columns")
        drop = set(self.options.columns)
        return pa.schema([field for field in schema if field.name not in drop])


class CastTo(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    type: str = Field(description="the new type, e.g. int64, decimal(18, 2), timestamp(us, UTC)")
    format: str | None = Field(
        None, description="strptime format for text → date, time or timestamp, read exactly, e.g. %d/%m/%Y"
    )

    @field_validator("type")
    @classmethod
    def _known(cls, value: str) -> str:
        parse_type(value)
        return value

    @model_validator(mode="after")
    def _readable(self) -> CastTo:
        if self.format is not None:
            compile_format(self.format, parse_type(self.type))
        return self


class CastOptions(StageOptions):
    columns: dict[str, str | CastTo] = Field(
        min_length=1, description="column → type, or column → {type, format}", examples=[{"id": "int32"}]
    )

    @field_validator("columns")
    @classmethod
    def _types(cls, value: dict[str, str | CastTo]) -> dict[str, str | CastTo]:
        for column, target in value.items():
            if isinstance(target, str):
                try:
                    parse_type(target)
                except ValueError as exc:
                    raise ValueError(f"{column}: {exc}") from None
        return value


class Cast(Transform):
    """Change column types; values that don't fit are rejected, never altered."""

    name = "cast"
    Options = CastOptions
    options: CastOptions

    def __init__(self, options: CastOptions, context) -> None:
        super().__init__(options, context)
        self.targets: dict[str, tuple[pa.DataType, str | None]] = {}
        for column, target in options.columns.items():
            spec = CastTo(type=target) if isinstance(target, str) else target
            self.targets[column] = (parse_type(spec.type), spec.format)

    def apply(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        _require(batch, list(self.targets), self.context.label)
        return cast_batch(batch, self.targets, self.context)

    def output_schema(self, schema: pa.Schema) -> pa.Schema:
        _require_keys(self, schema, self.targets)
        return pa.schema(
            [field.with_type(self.targets[field.name][0]) if field.name in self.targets else field for field in schema]
        )


@hookimpl
def etl_register_transforms() -> list[type[Transform]]:
    return [Rename, Select, Drop, Cast]
