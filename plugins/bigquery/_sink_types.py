"""Arrow ↔ BigQuery column types for the ``bigquery`` sink: the BigQuery columns of a table
made for Arrow rows, whether rows fit an existing table's columns (and the Arrow types they are
converted to, which load into those columns exactly), and the values BigQuery can't store.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from etl import PermanentError

#: Which rows of an array BigQuery can't store (``None``: none).
Check = Callable[[pa.Array], pa.Array | None]

_COLUMN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,299}$")
_RESERVED = ("_table_", "_file_", "_partition", "_row_timestamp", "__root__", "_colidentifier")
_TYPES = {"INTEGER": "INT64", "FLOAT": "FLOAT64", "BOOLEAN": "BOOL", "STRUCT": "RECORD"}
#: Rows of the first type fit a column of the second exactly.
_WIDER = {("INT64", "NUMERIC"), ("INT64", "BIGNUMERIC"), ("NUMERIC", "BIGNUMERIC"), ("STRING", "JSON")}
# 0001-01-01 and 9999-12-31 (BigQuery's range for DATE, DATETIME and TIMESTAMP), in days and
# seconds from the Unix epoch.
_MIN_DAY, _MAX_DAY = -719_162, 2_932_896
_MIN_SECOND, _END_SECOND = -62_135_596_800, 253_402_300_800

#: Arrow scalar types and the BigQuery type of each (``NULL``: Arrow's null type).
_SCALARS: list[tuple[Callable[[pa.DataType], bool], str]] = [
    (pa.types.is_null, "NULL"),
    (pa.types.is_boolean, "BOOL"),
    (pa.types.is_integer, "INT64"),
    (pa.types.is_floating, "FLOAT64"),
    (lambda t: pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t), "STRING"),
    (
        lambda t: (
            pa.types.is_binary(t)
            or pa.types.is_large_binary(t)
            or pa.types.is_fixed_size_binary(t)
            or pa.types.is_binary_view(t)
        ),
        "BYTES",
    ),
    (pa.types.is_date, "DATE"),
    (pa.types.is_time, "TIME"),
]


@dataclass(frozen=True)
class Plan:
    """How batches of one Arrow schema become rows of the staging table."""

    names: list[str]  # the table's spelling of each column, in the rows' order
    fields: list[Any]  # the staging table's SchemaFields
    arrow: pa.Schema  # the Parquet file's schema: each column in the Arrow type its column loads from
    required: list[str]  # columns REQUIRED in the table


def schema_fields(schema: pa.Schema, where: str) -> list[Any]:
    """The BigQuery columns of a table made for rows of ``schema``.

    Raises:
        PermanentError: a column name BigQuery refuses, or a type it can't hold.
    """
    _check_names([f.name for f in schema], where, "")
    return [bq_field(f.name, f.type, where, f.name) for f in schema]


def bq_field(name: str, type_: pa.DataType, where: str, path: str) -> Any:
    from google.cloud.bigquery import SchemaField

    plain = _plain(type_)
    if _is_list(plain):
        if _is_list(_plain(plain.value_type)):
            raise PermanentError(
                f"{where}: column {path!r} is a list of lists ({type_}), which BigQuery can't hold (no ARRAY of "
                "ARRAY); wrap the inner lists in a struct, or turn them into JSON text"
            )
        element = bq_field(name, plain.value_type, where, f"{path}[]")
        return SchemaField(name, element.field_type, mode="REPEATED", fields=element.fields)
    if pa.types.is_struct(plain):
        if plain.num_fields == 0:
            raise PermanentError(f"{where}: column {path!r} is a struct without fields, which BigQuery can't hold")
        children = [plain.field(i) for i in range(plain.num_fields)]
        _check_names([c.name for c in children], where, f"{path}.")
        return SchemaField(
            name, "RECORD", fields=[bq_field(c.name, c.type, where, f"{path}.{c.name}") for c in children]
        )
    scalar = _scalar(plain)
    if scalar is None:
        raise PermanentError(f"{where}: column {path!r} has type {type_}, which BigQuery can't hold{_hint(plain)}")
    return SchemaField(name, "STRING" if scalar == "NULL" else scalar)


def _scalar(t: pa.DataType) -> str | None:
    """The BigQuery type of an Arrow scalar type (``NULL`` for Arrow's null type), or ``None``."""
    if isinstance(t, pa.JsonType):
        return "JSON"
    for test, name in _SCALARS:
        if test(t):
            return name
    if pa.types.is_timestamp(t):
        return "TIMESTAMP" if t.tz else "DATETIME"
    if pa.types.is_decimal(t):
        if t.scale < 0:
            return None
        if t.scale <= 9 and t.precision - t.scale <= 29:
            return "NUMERIC"
        if t.scale <= 38 and t.precision - t.scale <= 38:
            return "BIGNUMERIC"
    return None


def _hint(t: pa.DataType) -> str:
    if pa.types.is_map(t):
        return "; turn the map into a list of key/value structs, or into JSON text"
    if pa.types.is_duration(t) or pa.types.is_interval(t):
        return "; cast it to a number (of seconds, say) or to text"
    if pa.types.is_decimal(t):
        return " (NUMERIC: 29 digits before the point and 9 after; BIGNUMERIC: 38 and 38); cast it"
    return "; cast it to a type BigQuery has, with a `cast` transform"


def _check_names(names: Sequence[str], where: str, parent: str) -> None:
    seen: dict[str, str] = {}
    for name in names:
        if not _COLUMN.match(name) or name.lower().startswith(_RESERVED):
            raise PermanentError(
                f"{where}: {parent}{name!r} is not a column name BigQuery accepts (letters, digits and "
                "underscores, starting with a letter or underscore, at most 300, not starting with _TABLE_, "
                "_FILE_, _PARTITION, _ROW_TIMESTAMP, __ROOT__ or _COLIDENTIFIER); rename it with a `rename` transform"
            )
        if name.lower() in seen:
            raise PermanentError(
                f"{where}: columns {parent}{seen[name.lower()]!r} and {parent}{name!r} differ only in case, "
                "and BigQuery column names ignore case; rename one with a `rename` transform"
            )
        seen[name.lower()] = name


def arrow_type(field: Any) -> pa.DataType | None:
    """The Arrow type a BigQuery column loads from exactly (``None``: the sink can't load it)."""
    kind = _TYPES.get(field.field_type, field.field_type)
    if kind == "RECORD":
        children = [(f.name, arrow_type(f)) for f in field.fields]
        if not children or any(t is None for _, t in children):
            return None
        base: pa.DataType | None = pa.struct(children)  # type: ignore[arg-type]
    elif kind == "NUMERIC":
        base = pa.decimal128(field.precision or 38, field.scale or (0 if field.precision else 9))
    elif kind == "BIGNUMERIC":
        base = pa.decimal256(field.precision or 76, field.scale or (0 if field.precision else 38))
    else:
        base = {
            "INT64": pa.int64(),
            "FLOAT64": pa.float64(),
            "BOOL": pa.bool_(),
            "STRING": pa.string(),
            "BYTES": pa.binary(),
            "DATE": pa.date32(),
            "TIME": pa.time64("us"),
            "DATETIME": pa.timestamp("us"),
            "TIMESTAMP": pa.timestamp("us", tz="UTC"),
            "JSON": pa.json_(pa.string()),
        }.get(kind)
    if base is None:
        return None
    return pa.list_(base) if field.mode == "REPEATED" else base


def conform_plan(schema: pa.Schema, table: Sequence[Any], where: str) -> Plan:
    """How rows of ``schema`` load into a table of columns ``table``.

    Raises:
        PermanentError: a column the table lacks, of a type that doesn't fit its column, or a
            REQUIRED column of the table missing from the rows.
    """
    from google.cloud.bigquery import SchemaField

    columns = {f.name.lower(): f for f in table}
    names, fields, arrow = [], [], []
    _check_names(schema.names, where, "")
    for field in schema:
        column = columns.get(field.name.lower())
        if column is None:
            raise PermanentError(
                f"{where}: the table has no column {field.name!r}; it has {', '.join(f.name for f in table)}. "
                "Add the column (ALTER TABLE … ADD COLUMN), or leave it out with a `drop` or `select` transform"
            )
        _fits(field.type, column, where, field.name)
        target = arrow_type(column)
        if target is None:
            raise PermanentError(
                f"{where}: column {column.name!r} is {_describe(column)}, which the bigquery sink can't load; "
                "leave it out with a `drop` transform"
            )
        names.append(column.name)
        arrow.append(pa.field(column.name, target))
        fields.append(_nullable(column, SchemaField))
    present = {n.lower() for n in names}
    missing = [f.name for f in table if f.mode == "REQUIRED" and f.name.lower() not in present]
    if missing:
        raise PermanentError(
            f"{where}: the rows have no column {', '.join(map(repr, missing))}, which the table requires (REQUIRED)"
        )
    required = [f.name for f in table if f.mode == "REQUIRED"]
    return Plan(names, fields, pa.schema(arrow), required)


def _fits(type_: pa.DataType, column: Any, where: str, path: str) -> None:
    """Check that rows of ``type_`` fit ``column`` exactly (nothing rounded, nothing cut)."""
    plain = _plain(type_)
    if pa.types.is_null(plain):
        return
    repeated = column.mode == "REPEATED"
    kind = _TYPES.get(column.field_type, column.field_type)
    if _is_list(plain) != repeated:
        raise _mismatch(where, path, type_, column)
    if repeated:
        plain = _plain(plain.value_type)
        if pa.types.is_null(plain):
            return
    if kind == "RECORD":
        if not pa.types.is_struct(plain):
            raise _mismatch(where, path, type_, column)
        children = {f.name: f for f in column.fields}
        for i in range(plain.num_fields):
            child = plain.field(i)
            if child.name not in children:
                raise PermanentError(
                    f"{where}: {path!r} has a field {child.name!r} that the table's {column.name!r} lacks "
                    f"(it has {', '.join(children)}); nested field names must match, case included"
                )
            _fits(child.type, children[child.name], where, f"{path}.{child.name}")
        return
    rows = bq_field(path, plain, where, path).field_type if not pa.types.is_struct(plain) else "RECORD"
    if rows != kind and (rows, kind) not in _WIDER:
        raise _mismatch(where, path, type_, column)


def _mismatch(where: str, path: str, type_: pa.DataType, column: Any) -> PermanentError:
    plain = _plain(type_)
    try:
        mine = _describe(bq_field(path, plain, where, path))
    except PermanentError:
        mine = str(type_)
    return PermanentError(
        f"{where}: column {path!r} is {mine} in the rows ({type_}) but {_describe(column)} in the table; "
        "convert it with a `cast` transform, or load into another table"
    )


def _describe(field: Any) -> str:
    kind = _TYPES.get(field.field_type, field.field_type)
    if kind == "RECORD":
        kind = "STRUCT<" + ", ".join(f"{f.name} {_describe(f)}" for f in field.fields) + ">"
    return f"ARRAY<{kind}>" if field.mode == "REPEATED" else kind


def _nullable(field: Any, schema_field: Any) -> Any:
    """A staging column: the table's, but nullable (NULLs in REQUIRED columns are refused first)."""
    numeric = {k: v for k in ("precision", "scale") if (v := getattr(field, k)) is not None}
    return schema_field(
        field.name,
        field.field_type,
        mode="REPEATED" if field.mode == "REPEATED" else "NULLABLE",
        fields=[_nullable(f, schema_field) for f in field.fields],
        **numeric,
    )


def same_fields(a: Sequence[Any], b: Sequence[Any]) -> bool:
    def shape(fields: Sequence[Any]) -> list[Any]:
        return [(f.name.lower(), _TYPES.get(f.field_type, f.field_type), f.mode, shape(f.fields)) for f in fields]

    return shape(a) == shape(b)


def _plain(t: pa.DataType) -> pa.DataType:
    """Dictionaries as their values, extension types (but JSON) as their storage."""
    while True:
        if pa.types.is_dictionary(t):
            t = t.value_type
        elif isinstance(t, pa.ExtensionType) and not isinstance(t, pa.JsonType):
            t = t.storage_type
        else:
            return t


def _is_list(t: pa.DataType) -> bool:
    return (
        pa.types.is_list(t)
        or pa.types.is_large_list(t)
        or pa.types.is_fixed_size_list(t)
        or pa.types.is_list_view(t)
        or pa.types.is_large_list_view(t)
    )


def _nulls(array: pa.Array) -> pa.Array:
    return array.is_null()


def _null_elements(array: pa.Array) -> pa.Array | None:
    if pa.types.is_dictionary(array.type):
        array = array.dictionary_decode()
    flat = pc.list_flatten(array)
    if not flat.null_count:
        return None
    rows = pc.unique(pc.filter(pc.list_parent_indices(array), flat.is_null())).to_numpy()
    mask = np.zeros(len(array), dtype=bool)
    mask[rows] = True
    return pa.array(mask)


def out_of_range(array: pa.Array) -> pa.Array | None:
    """Which dates and timestamps lie outside 0001-01-01 … 9999-12-31 (``None``: none can)."""
    t = array.type
    if pa.types.is_date32(t):
        low, high, values = _MIN_DAY, _MAX_DAY, array.cast(pa.int32())
    elif pa.types.is_date64(t):
        low, high, values = _MIN_SECOND * 1000, _END_SECOND * 1000 - 1, array.cast(pa.int64())
    elif pa.types.is_timestamp(t) and t.unit != "ns":  # nanoseconds reach only 1677 … 2262
        per = {"s": 1, "ms": 1_000, "us": 1_000_000}[t.unit]
        low, high, values = _MIN_SECOND * per, _END_SECOND * per - 1, array.cast(pa.int64())
    else:
        return None
    return pc.fill_null(pc.or_(pc.less(values, low), pc.greater(values, high)), False)


def value_checks(schema: pa.Schema, plan: Plan, table: str) -> Iterator[tuple[str, str, Check]]:
    """What BigQuery can't store though the types agree: (column, reason, the rows at fault).
    ``schema`` has the table's column names (as in ``plan.names``)."""
    for field in schema:
        if field.name in plan.required:
            yield field.name, f"NULL in a column REQUIRED in {table}", _nulls
        if _is_list(_plain(field.type)):
            yield field.name, "the list holds a NULL element, which a BigQuery ARRAY can't", _null_elements
        if out_of_range(pa.nulls(0, field.type)) is not None:
            yield field.name, "outside BigQuery's dates and times, 0001-01-01 to 9999-12-31", out_of_range
