"""The bigquery source's options (what a job writes under ``source:``), checked as the job is
validated: one of ``table`` and ``query``, every ``@name`` in the SQL a param of the job, names
and durations well formed. What they mean: the ``source`` module's docstring."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from etl import did_you_mean

from .._chunking import SliceBy, every_seconds, parse_chunk_by
from ._client import BigQueryOptions, param_names, split_table

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,1023}$")


class BigQuerySourceOptions(BigQueryOptions):
    table: str | None = Field(
        None,
        description="a table to read: project.dataset.table, or dataset.table in the job's project",
        examples=["my-project.forecasts.daily"],
    )
    columns: list[str] | None = Field(
        None, min_length=1, description="with `table`: the columns to read (all by default)", examples=[["id", "ds"]]
    )
    row_filter: str | None = Field(
        None,
        description="with `table`: a condition the rows must meet (as in a WHERE clause); `@name` is the job's "
        "param `name`",
        examples=["environment = 'prod'"],
        json_schema_extra={"sql": True},
    )
    query: str | None = Field(
        None,
        description="a GoogleSQL query whose rows are read; `@name` is the job's param `name`, a query parameter",
        examples=["SELECT * FROM forecasts.daily WHERE ds BETWEEN @start_date AND @end_date"],
        json_schema_extra={"sql": True},
    )
    chunk_by: str | SliceBy | None = Field(
        None,
        description="{column, every} for slices of a date or timestamp column, or an integer column to split "
        "into key ranges; without it, chunks are the Storage Read API's streams",
        examples=[{"column": "ds", "every": "1 day"}, "id"],
    )
    staging_dataset: str = Field(
        "_etl_staging",
        description="the dataset (in the job's project) where query results are written to be read; made when "
        "missing, in the data's location",
    )
    staging_expiration: str = Field(
        "1 day", description="how long a query's result table is kept", examples=["1 day", "6 hours"]
    )
    read_api: Literal["storage", "rest"] = Field(
        "storage",
        description="storage: the Storage Read API in Arrow (REST when it can't be had); rest: REST pages, slow",
    )

    @field_validator("table")
    @classmethod
    def _table(cls, value: str | None) -> str | None:
        if value is not None:
            split_table(value, default_project="-")
        return value

    @field_validator("query", "row_filter")
    @classmethod
    def _sql(cls, value: str | None, info: ValidationInfo) -> str | None:
        """Empty SQL, or an ``@name`` the job declares no param for, is an error at validation."""
        if value is None:
            return None
        if not value.strip():
            raise ValueError("is empty")
        declared = (info.context or {}).get("params")
        if declared is not None:
            for name in param_names(value):
                if name not in declared:
                    hint = did_you_mean(name, declared) or (
                        f"; the job's params: {', '.join(declared)}" if declared else "; the job declares no params"
                    )
                    raise ValueError(f"@{name} is not a parameter of the job{hint}")
        return value

    @field_validator("chunk_by", mode="before")
    @classmethod
    def _chunk_by(cls, value: Any) -> Any:
        return parse_chunk_by(value)

    @field_validator("staging_dataset")
    @classmethod
    def _dataset(cls, value: str) -> str:
        if not _IDENTIFIER.match(value):
            raise ValueError(f"{value!r} is not a dataset name; use letters, digits and underscores")
        return value

    @field_validator("staging_expiration")
    @classmethod
    def _expiration(cls, value: str) -> str:
        every_seconds(value)
        return value

    @model_validator(mode="after")
    def _one_of(self) -> BigQuerySourceOptions:
        if (self.query is None) == (self.table is None):
            raise ValueError("give `query` or `table`, one of them")
        if self.query is not None and (self.columns is not None or self.row_filter is not None):
            raise ValueError("`columns` and `row_filter` go with `table`; with `query`, write them in the query")
        return self
