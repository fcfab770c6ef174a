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
from pydantic import Field, ValidationInfo, field_validator

from etl import ConfigError, PermanentError, StageOptions, Transform, did_you_mean, hookimpl

_PARAM = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)")
#: DuckDB's message for a column that isn't there.
_REFERENCED = re.compile(r'Referenced column "((?:[^"]|"")*)" not found')


#: Marks an option that holds SQL: `{{ params.X }}` templates are refused there.
SQL = {"sql": True}


def _check_sql(query: str, info: ValidationInfo, wrapped: str | None = None) -> str:
    """Check the syntax of ``query`` (inside ``wrapped``, a statement with ``{}`` for it) and
    that every ``$name`` in it is one of the job's parameters."""
    import duckdb

    try:
        duckdb.extract_statements(wrapped.format(query) if wrapped else query)
    except duckdb.Error as exc:
        first = str(exc).splitlines()[0]
        raise ValueError(f"invalid SQL: {first.removeprefix('Parser Error: ')}") from None
    declared = (info.context or {}).get("params")
    if declared is not None:
        for name in dict.fromkeys(_PARAM.findall(query)):
            if name not in declared:
                hint = did_you_mean(name, declared) or (
                    f"; the job's params: {', '.join(declared)}" if declared else "; the job declares no params"
                )
                raise ValueError(f"${name} is not a parameter of the job{hint}")
    return query


class _Unbound(PermanentError):
    """SQL that names a column (or function) the rows lack: a permanent error while rows flow,
    a :class:`ConfigError` at its key when found before the run."""

    def __init__(self, message: str, detail: str, key: str) -> None:
        super().__init__(message)
        self.detail, self.key = detail, key


def _first_line(exc: Exception) -> str:
    return str(exc).splitlines()[0]


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class _SqlTransform(Transform):
    """Runs queries over each batch on a private in-memory DuckDB connection."""

    def __init__(self, options: StageOptions, context) -> None:
        super().__init__(options, context)
        self._con: Any = None
        self.params = self._bind(self.sql_text(), context.params)

    def sql_text(self) -> str:  # pragma: no cover - each subclass gives its own
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

            # One batch at a time is small work: one thread does it with less overhead.
            self._con = duckdb.connect(":memory:", config={"threads": 1})
            self._con.execute("SET TimeZone = 'UTC'")
        return self._con

    def query(self, batch: pa.RecordBatch, sql: str, key: str = "") -> pa.Table:
        """The result of ``sql`` over ``batch`` (the table ``batch``), with the job's params bound.

        ``key`` is the option the SQL comes from, such as ``columns.spread``, for errors."""
        import duckdb

        con = self.con
        con.register("batch", batch)
        try:
            params = {k: v for k, v in self.params.items() if f"${k}" in sql}
            return con.execute(sql, params).to_arrow_table()
        except (duckdb.BinderException, duckdb.CatalogException) as exc:
            # A column or function the SQL names that isn't there: the query can't run on any row.
            raise _Unbound(f"{self.context.label}: {_first_line(exc)}", _first_line(exc), key) from None
        except duckdb.Error as exc:
            raise PermanentError(f"{self.context.label}: {_first_line(exc)}") from None
        finally:
            con.unregister("batch")

    #: The option that holds the SQL, for errors found before the run (``expr``, ``query``).
    sql_key: str = ""

    def output_schema(self, schema: pa.Schema) -> pa.Schema | None:
        """What :meth:`apply` makes of an empty batch of ``schema``: DuckDB binds the SQL (every
        column and function it names) without any row."""
        import duckdb

        try:
            empty = pa.RecordBatch.from_pylist([], schema=schema)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
            return None
        try:
            out = self.apply(empty)
        except _Unbound as exc:
            have = ", ".join(schema.names) or "no columns"
            detail, hint = exc.detail.rstrip("!. "), ""
            if (named := _REFERENCED.search(detail)) is not None:
                detail = f"column {named[1]!r} is not in the rows"
                hint = did_you_mean(named[1], schema.names)
            rest = f"{hint} The rows have: {have}" if hint else f"; the rows have: {have}"
            raise ConfigError(detail + rest, key=exc.key or self.sql_key) from None
        except (duckdb.Error, PermanentError):
            return None  # a type DuckDB can't take from Arrow, say: the rows will tell
        return out.schema

    def close(self) -> None:
        if self._con is not None:
            self._con.close()
            self._con = None


class FilterOptions(StageOptions):
    expr: str = Field(
        description="a SQL condition; rows where it is false or NULL are dropped",
        examples=["forecast > 0 AND environment = 'production'"],
        json_schema_extra=SQL,
    )

    @field_validator("expr")
    @classmethod
    def _syntax(cls, value: str, info: ValidationInfo) -> str:
        return _check_sql(value, info, "SELECT ({}) FROM batch")


class Filter(_SqlTransform):
    """Keep the rows for which a SQL condition holds."""

    name = "filter"
    Options = FilterOptions
    options: FilterOptions

    sql_key = "expr"

    def sql_text(self) -> str:
        return self.options.expr

    def apply(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        # DuckDB evaluates only the condition; the rows kept are the batch's own arrays, so
        # column types never change on the way through.
        keep = self.query(batch, f"SELECT ({self.options.expr})::BOOLEAN AS keep FROM batch").column(0)
        return batch.filter(keep.combine_chunks(), null_selection_behavior="drop")


class DeriveOptions(StageOptions):
    columns: dict[str, str] = Field(
        min_length=1,
        description="new (or replaced) column → SQL expression; later ones may use earlier ones",
        examples=[{"spread": "upper - lower"}],
        json_schema_extra=SQL,
    )

    @field_validator("columns")
    @classmethod
    def _syntax(cls, value: dict[str, str], info: ValidationInfo) -> dict[str, str]:
        for name, expr in value.items():
            try:
                _check_sql(expr, info, "SELECT ({}) FROM batch")
            except ValueError as exc:
                raise ValueError(f"{name}: {exc}") from None
        return value


class Derive(_SqlTransform):
    """Add columns (or replace them) computed by SQL expressions."""

    name = "derive"
    Options = DeriveOptions
    options: DeriveOptions

    def sql_text(self) -> str:
        return " ".join(self.options.columns.values())

    def apply(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        # One expression at a time, so each sees the columns derived before it. A column the
        # rows already have is replaced where it stands; a new one goes last.
        for name, expr in self.options.columns.items():
            sql = f"SELECT ({expr}) AS {_quote(name)} FROM batch"
            values = self.query(batch, sql, key=f"columns.{name}").column(0).combine_chunks()
            if name in batch.schema.names:
                batch = batch.set_column(batch.schema.get_field_index(name), name, values)
            else:
                batch = batch.append_column(name, values)
        return batch


class SqlOptions(StageOptions):
    query: str = Field(
        description="a DuckDB query over the table `batch`",
        examples=["SELECT *, upper - lower AS spread FROM batch"],
        json_schema_extra=SQL,
    )

    @field_validator("query")
    @classmethod
    def _syntax(cls, value: str, info: ValidationInfo) -> str:
        return _check_sql(value, info)


class Sql(_SqlTransform):
    """Any DuckDB query over the batch (the table `batch`)."""

    name = "sql"
    Options = SqlOptions
    options: SqlOptions

    sql_key = "query"

    def sql_text(self) -> str:
        return self.options.query

    def apply(self, batch: pa.RecordBatch) -> pa.Table:
        return self.query(batch, self.options.query)


@hookimpl
def etl_register_transforms() -> list[type[Transform]]:
    return [Filter, Derive, Sql]
