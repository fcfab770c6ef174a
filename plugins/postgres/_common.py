"""What the PostgreSQL source and sink share: connecting, quoting, and the type mapping.

Rows move through the ADBC PostgreSQL driver (COPY in binary, straight from and into Arrow);
statements and catalog queries go through the same connection. Heavy imports stay inside the
functions that need them.
"""

from __future__ import annotations

import re
from typing import Any

import pyarrow as pa
from pydantic import Field, SecretStr

from etl import PermanentError, StageOptions, TransientError

#: Options both stages take.
DSN_FIELD = Field(
    None,
    description="a libpq URI such as postgresql://user@host:5432/db; without it the PG* environment "
    "variables (PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE) are used",
    examples=["postgresql://etl@db.internal:5432/warehouse"],
)


class ConnectionOptions(StageOptions):
    dsn: SecretStr | None = DSN_FIELD


def quote(name: str) -> str:
    """An identifier, double-quoted, inner quotes doubled: safe whatever the name holds."""
    return '"' + name.replace('"', '""') + '"'


def split_table(name: str) -> tuple[str, str]:
    """``schema.table`` (or ``table``, in ``public``) → (schema, table). Quoted parts may hold dots."""
    parts = [p[1:-1].replace('""', '"') if p.startswith('"') else p for p in re.findall(r'"(?:[^"]|"")*"|[^.]+', name)]
    if len(parts) == 1:
        return "public", parts[0]
    if len(parts) == 2:
        return parts[0], parts[1]
    raise ValueError(f"{name!r} is not a table name; expected table or schema.table")


def qualified(schema: str, table: str) -> str:
    return f"{quote(schema)}.{quote(table)}"


def connect(dsn: SecretStr | None, *, autocommit: bool = False) -> Any:
    """An ADBC connection (``postgresql://`` lets libpq fill in from the PG* variables)."""
    import adbc_driver_manager
    import adbc_driver_postgresql.dbapi as adbc

    uri = dsn.get_secret_value() if dsn is not None else "postgresql://"
    try:
        return adbc.connect(uri, autocommit=autocommit)
    except adbc_driver_manager.Error as exc:
        raise classify(exc, "connecting to PostgreSQL") from None


def pg_connect(dsn: SecretStr | None) -> Any:
    """A psycopg connection, in a transaction (libpq reads the PG* variables for what the DSN
    leaves out)."""
    import psycopg

    try:
        return psycopg.connect(dsn.get_secret_value() if dsn is not None else "")
    except psycopg.Error as exc:
        raise classify(exc, "connecting to PostgreSQL") from None


# SQLSTATE classes worth retrying: connection failures, serialization failures and deadlocks,
# insufficient resources, operator intervention (a restart), and lock timeouts.
_TRANSIENT_STATES = ("08", "40", "53", "57", "55P03")


def classify(exc: BaseException, what: str) -> Exception:
    """A driver error as one of ours: transient (worth retrying) or permanent, with a short message."""
    text = " ".join(str(exc).split())
    text = re.sub(r"postgres(ql)?://[^@\s]*@", "postgresql://***@", text)  # never a password
    state = getattr(exc, "sqlstate", None) or _sqlstate(text)
    lost = bool(_LOST.search(text)) and not _REFUSED.search(text)
    transient = (bool(state) and state.startswith(_TRANSIENT_STATES)) or (not state and lost)
    error = (TransientError if transient else PermanentError)(f"{what}: {text}")
    return error


# A connection refused or dropped says so without a SQLSTATE (the driver never got one); a
# connection the server refused (no such role or database, a wrong password) is no outage.
_LOST = re.compile(
    r"failed to connect|could not connect|connection refused|server closed the connection|no connection to the "
    r"server|could not (?:receive|send) data|timeout expired|ssl syscall|could not translate host name|"
    r"connection (?:timed out|reset)|no route to host|the database system is (?:starting up|shutting down|in "
    r"recovery mode|not yet accepting connections)|too many clients already|the connection is (?:closed|lost)",
    re.I,
)
_REFUSED = re.compile(r"does not exist|authentication failed|pg_hba\.conf|permission denied|password", re.I)


def _sqlstate(text: str) -> str | None:
    found = re.search(r"SQLSTATE: ([0-9A-Z]{5})", text)
    return found[1] if found else None


# -- types ------------------------------------------------------------------------------------

_SIMPLE = {
    "smallint": pa.int16(),
    "integer": pa.int32(),
    "bigint": pa.int64(),
    "real": pa.float32(),
    "double precision": pa.float64(),
    "boolean": pa.bool_(),
    "text": pa.string(),
    "character varying": pa.string(),
    "character": pa.string(),
    "name": pa.string(),
    "bytea": pa.binary(),
    "date": pa.date32(),
    "time without time zone": pa.time64("us"),
    "timestamp without time zone": pa.timestamp("us"),
    "timestamp with time zone": pa.timestamp("us", tz="UTC"),
    "json": pa.json_(pa.string()),
    "jsonb": pa.json_(pa.string()),
}


def arrow_type(pg_type: str) -> pa.DataType | None:
    """The Arrow type that a column of ``pg_type`` (as ``format_type`` spells it) is loaded as.

    ``None`` for types the sink can't write (uuid, inet, enums, ...)."""
    text = pg_type.strip().lower()
    if text.endswith("[]"):
        inner = arrow_type(text[:-2])
        return pa.list_(inner) if inner is not None else None
    text = re.sub(r"\((\d+)\)", "", text) if text.startswith(("character", "time", "timestamp")) else text
    if text in _SIMPLE:
        return _SIMPLE[text]
    numeric = re.fullmatch(r"numeric\((\d+),(\d+)\)", text.replace(" ", ""))
    if numeric:
        precision, scale = int(numeric[1]), int(numeric[2])
        if precision <= 38:
            return pa.decimal128(precision, scale)
        if precision <= 76:
            return pa.decimal256(precision, scale)
    if text == "numeric":
        return pa.decimal128(38, 9)
    return None


def pg_type(field: pa.Field) -> str:
    """The column type a new table gets for an Arrow field (the type table in docs/stages.md)."""
    t = field.type
    if pa.types.is_dictionary(t):
        return pg_type(pa.field(field.name, t.value_type))
    if pa.types.is_int8(t) or pa.types.is_int16(t) or pa.types.is_uint8(t):
        return "smallint"
    if pa.types.is_int32(t) or pa.types.is_uint16(t):
        return "integer"
    if pa.types.is_int64(t) or pa.types.is_uint32(t):
        return "bigint"
    if pa.types.is_uint64(t):
        return "numeric(20,0)"
    if pa.types.is_float16(t) or pa.types.is_float32(t):
        return "real"
    if pa.types.is_float64(t):
        return "double precision"
    if pa.types.is_decimal(t):
        return f"numeric({t.precision},{t.scale})"
    if pa.types.is_boolean(t):
        return "boolean"
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_null(t):
        return "text"
    if pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t):
        return "bytea"
    if pa.types.is_date(t):
        return "date"
    if pa.types.is_time(t):
        return "time"
    if pa.types.is_timestamp(t):
        return "timestamptz" if t.tz else "timestamp"
    if isinstance(t, pa.JsonType) or pa.types.is_struct(t) or pa.types.is_map(t):
        return "jsonb"
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        inner = t.value_type
        if pa.types.is_struct(inner) or pa.types.is_map(inner) or pa.types.is_list(inner):
            return "jsonb"
        return pg_type(pa.field(field.name, inner)) + "[]"
    raise PermanentError(f"column {field.name!r} has type {t}, which the postgres sink has no column type for")


# -- reading: how each result column comes back ------------------------------------------------


def _numeric_typmod(typmod: int) -> tuple[int, int] | None:
    """(precision, scale) of ``numeric(p, s)``, or ``None`` for an unconstrained numeric."""
    if typmod < 4:
        return None
    packed = typmod - 4
    scale = ((packed & 0x7FF) ^ 1024) - 1024  # 11 bits, signed (PostgreSQL 15 allows scale < 0)
    return (packed >> 16) & 0xFFFF, scale


def _has_extension(t: pa.DataType) -> bool:
    if isinstance(t, pa.BaseExtensionType):
        return True
    return any(_has_extension(t.field(i).type) for i in range(t.num_fields))


def _plain(t: pa.DataType) -> pa.DataType:
    """``t`` without the driver's field metadata on nested fields."""
    if pa.types.is_list(t):
        return pa.list_(_plain(t.value_type))
    if pa.types.is_large_list(t):
        return pa.large_list(_plain(t.value_type))
    return t


def column_plan(field: pa.Field) -> dict[str, Any]:
    """How a result column is read: its PostgreSQL type, a cast in the SELECT, its Arrow type."""
    meta = field.metadata or {}
    typname = meta.get(b"POSTGRESQL:type", b"").decode()
    typmod = int(meta.get(b"POSTGRESQL:typmod", b"-1") or -1)
    t = field.type
    if typname == "numeric":
        numeric = _numeric_typmod(typmod)
        if numeric is None:
            return {"pg_type": "numeric", "cast": "text", "arrow": pa.string()}
        precision, scale = numeric
        pg_type = f"numeric({precision},{scale})"
        if not 0 <= scale <= precision <= 76:
            return {"pg_type": pg_type, "cast": "text", "arrow": pa.string()}
        arrow = pa.decimal128(precision, scale) if precision <= 38 else pa.decimal256(precision, scale)
        return {"pg_type": pg_type, "cast": "text", "arrow": arrow}
    if typname == "money":
        return {"pg_type": typname, "cast": "numeric::text", "arrow": pa.string()}
    if typname == "oid":
        return {"pg_type": typname, "cast": "bigint", "arrow": pa.int64()}
    if _has_extension(t):
        if pa.types.is_list(t) or pa.types.is_large_list(t):
            return {"pg_type": typname, "cast": "text[]", "arrow": pa.list_(pa.string())}
        return {"pg_type": typname, "cast": "text", "arrow": pa.string()}
    return {"pg_type": typname, "cast": None, "arrow": _plain(t)}
