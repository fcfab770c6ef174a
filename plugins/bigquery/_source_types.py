"""The bigquery source's types: a BigQuery column's Arrow type, and each batch conformed to the
schema the run planned (the same for every chunk and either API; GEOGRAPHY as WKT)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pyarrow as pa

from etl import PermanentError

_SIMPLE = {
    "INTEGER": pa.int64(),
    "INT64": pa.int64(),
    "FLOAT": pa.float64(),
    "FLOAT64": pa.float64(),
    "BOOLEAN": pa.bool_(),
    "BOOL": pa.bool_(),
    "STRING": pa.string(),
    "BYTES": pa.binary(),
    "DATE": pa.date32(),
    "TIME": pa.time64("us"),
    "DATETIME": pa.timestamp("us"),
    "TIMESTAMP": pa.timestamp("us", tz="UTC"),
    "GEOGRAPHY": pa.string(),
    "INTERVAL": pa.month_day_nano_interval(),
}


def arrow_type(field: Any, label: str = "source") -> pa.DataType:
    """The Arrow type of a BigQuery column (a ``SchemaField``)."""
    kind = field.field_type.upper()
    if kind in _SIMPLE:
        arrow = _SIMPLE[kind]
    elif kind == "JSON":
        arrow = pa.json_(pa.string())
    elif kind == "NUMERIC":
        arrow = pa.decimal128(field.precision or 38, field.scale or (0 if field.precision else 9))
    elif kind == "BIGNUMERIC":
        precision = field.precision or 76
        scale = field.scale or (0 if field.precision else 38)
        arrow = pa.decimal128(precision, scale) if precision <= 38 else pa.decimal256(min(precision, 76), scale)
    elif kind in ("RECORD", "STRUCT"):
        arrow = pa.struct([pa.field(f.name, arrow_type(f, label)) for f in field.fields])
    elif kind == "RANGE":
        element = getattr(field.range_element_type, "element_type", None) or "DATE"
        inner = _SIMPLE.get(str(element).upper(), pa.date32())
        arrow = pa.struct([pa.field("start", inner), pa.field("end", inner)])
    else:
        raise PermanentError(f"{label}: column {field.name!r} is of type {kind}, which etl can't read yet")
    return pa.list_(arrow) if field.mode == "REPEATED" else arrow


def arrow_schema(fields: Sequence[Any], label: str = "source") -> pa.Schema:
    return pa.schema([pa.field(f.name, arrow_type(f, label)) for f in fields])


def conform(batch: pa.RecordBatch, target: pa.Schema, kinds: Sequence[str], label: str) -> pa.RecordBatch:
    """A batch as the API gave it, in the planned schema (the same for every chunk and API)."""
    arrays = []
    for i, field in enumerate(target):
        index = batch.schema.get_field_index(field.name)
        if index < 0:
            raise PermanentError(f"{label}: BigQuery sent no column {field.name!r}")
        column = batch.column(index)
        if i < len(kinds) and kinds[i] == "GEOGRAPHY" and pa.types.is_binary(column.type):
            column = _wkb_to_wkt(column, label, field.name)
        if column.type != field.type:
            try:
                column = column.cast(field.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise PermanentError(
                    f"{label}: column {field.name!r}: {column.type} is not {field.type} ({exc})"
                ) from None
        arrays.append(column)
    return pa.RecordBatch.from_arrays(arrays, schema=target)


def _wkb_to_wkt(column: pa.Array, label: str, name: str) -> pa.Array:
    """GEOGRAPHY as WKT. BigQuery sends WKT; an emulator may send WKB, converted by shapely."""
    try:
        import shapely
    except ImportError:
        raise PermanentError(
            f"{label}: column {name!r} (GEOGRAPHY) arrived as WKB; install shapely to read it as WKT"
        ) from None
    values = column.to_numpy(zero_copy_only=False)
    geometries = shapely.from_wkb(values)
    nulls = column.is_null().to_numpy(zero_copy_only=False)
    return pa.array(shapely.to_wkt(geometries, rounding_precision=-1), type=pa.string(), mask=nulls)
