"""Transforms in SQL, run by DuckDB over each batch: ``filter``, ``derive`` and ``sql``.

The batch is the table ``batch``. The job's parameters are bound by name: ``$start_date``
in a query is the ``start_date`` parameter, passed as a value, never spliced into the text.
Syntax is checked when the job is validated.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import pyarrow as pa
from pydantic import Field, field_validator

from etl import PermanentError, StageOptions, Transform, did_you_mean, hookimpl

_PARAM = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)")


def _check_syntax(query: str) -> str:
    import duckdb

    try:
        duckdb.extract_statements(query)
    except duckdb.Error as exc:
        first = str(exc).splitlines()[0]
        raise ValueError(f"invalid SQL: {first.removeprefix('Parser Error: ')}") from None
    return query


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class _SqlTransform(Transform):
    """Runs one query per batch on a private in-memory DuckDB connection."""

    def __init__(self, options: StageOptions, context) -> None:
        super().__init__(options, context)
        self._con: Any = None
        self.query = self.build_query()
        self.params = self._bind(self.query, context.params)

    def build_query(self) -> str:  # pragma: no cover - each subclass builds its own
        raise NotImplementedError

    def _bind(self, query: str, params: Mapping[str, Any]) -> dict[str, Any]:
        bound = {}
        for name in dict.fromkeys(_PARAM.findall(query)):
            if name not in params:
                hint = did_you_mean(name, params) or (f"; the job's params: {', '.join(params)}" if params else "")
                raise PermanentError(f"{self.context.label}: ${name} is not a parameter of the job{hint}")
            bound[name] = params[name]
        return bound

    @property
    def con(self):
        if self._con is None:
            import duckdb

            self._con = duckdb.connect(":memory:")
            self._con.execute("SET TimeZone = 'UTC'")
        return self._con

    def apply(self, batch: pa.RecordBatch) -> pa.Table:
        import duckdb

        con = self.con
        con.register("batch", batch)
        try:
            return con.execute(self.query, self.params).to_arrow_table()
        except duckdb.Error as exc:
            message = str(exc).splitlines()[0]
            raise PermanentError(f"{self.context.label}: {message}") from None
        finally:
            con.unregister("batch")

    def close(self) -> None:
        if self._con is not None:
            self._con.close()
            self._con = None


class FilterOptions(StageOptions):
    expr: str = Field(
        description="a SQL condition; rows where it is false or NULL are dropped",
        examples=["forecast > 0 AND environment = 'production'"],
    )

    @field_validator("expr")
    @classmethod
    def _syntax(cls, value: str) -> str:
        _check_syntax(f"SELECT * FROM batch WHERE ({value})")
        return value


class Filter(_SqlTransform):
    """Keep the rows for which a SQL condition holds."""

    name = "filter"
    Options = FilterOptions
    options: FilterOptions

    def build_query(self) -> str:
        return f"SELECT * FROM batch WHERE ({self.options.expr})"


class DeriveOptions(StageOptions):
    columns: dict[str, str] = Field(
        min_length=1,
        description="new (or replaced) column → SQL expression; later ones may use earlier ones",
        examples=[{"spread": "upper - lower"}],
    )

    @field_validator("columns")
    @classmethod
    def _syntax(cls, value: dict[str, str]) -> dict[str, str]:
        for name, expr in value.items():
            try:
                _check_syntax(f"SELECT ({expr}) AS {_quote(name)} FROM batch")
            except ValueError as exc:
                raise ValueError(f"{name}: {exc}") from None
        return value


class Derive(_SqlTransform):
    """Add columns (or replace them) computed by SQL expressions."""

    name = "derive"
    Options = DeriveOptions
    options: DeriveOptions

    def build_query(self) -> str:
        return self._query(())

    def _query(self, names: tuple[str, ...]) -> str:
        # One nested SELECT per column, so that each expression sees the columns before it.
        # A column the rows already have is replaced in place (`* REPLACE`); a new one goes last.
        query = "SELECT * FROM batch"
        have = set(names)
        for name, expr in self.options.columns.items():
            if name in have:
                query = f"SELECT * REPLACE (({expr}) AS {_quote(name)}) FROM ({query})"
            else:
                query = f"SELECT *, ({expr}) AS {_quote(name)} FROM ({query})"
                have.add(name)
        return query

    def apply(self, batch: pa.RecordBatch) -> pa.Table:
        names = tuple(batch.schema.names)
        if names != self._names:
            self._names, self.query = names, self._query(names)
        return super().apply(batch)

    _names: tuple[str, ...] = ()


class SqlOptions(StageOptions):
    query: str = Field(
        description="a DuckDB query over the table `batch`", examples=["SELECT *, upper - lower AS spread FROM batch"]
    )

    @field_validator("query")
    @classmethod
    def _syntax(cls, value: str) -> str:
        _check_syntax(value)
        return value


class Sql(_SqlTransform):
    """Any DuckDB query over the batch (the table `batch`)."""

    name = "sql"
    Options = SqlOptions
    options: SqlOptions

    def build_query(self) -> str:
        return self.options.query


@hookimpl
def etl_register_transforms() -> list[type[Transform]]:
    return [Filter, Derive, Sql]
