"""What the PostgreSQL source and sink share: connecting, deadlines, quoting, errors, and the
type mapping.

Rows move through the ADBC PostgreSQL driver (COPY in binary, straight from and into Arrow)
for the source and psycopg for the sink; both sit on libpq, which bounds each wait with its
own settings: ``connect_timeout`` (the whole start-up, login included), TCP keepalives and
``tcp_user_timeout`` (a connection gone quiet: the server's host or the network gone) from
the stage's ``timeout``, and the server's ``statement_timeout``, set on each connection. Heavy
imports stay inside the functions that need them.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
from pydantic import Field, SecretStr

from etl import PermanentError, TransientError

from .._deadlines import DeadlineOptions, Deadlines, shown

#: Options both stages take.
DSN_FIELD = Field(
    None,
    description="a libpq URI such as postgresql://user@host:5432/db; without it the PG* environment "
    "variables (PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE) are used",
    examples=["postgresql://etl@db.internal:5432/warehouse"],
)
#: The most ``statement_timeout`` takes, in milliseconds (a 32-bit integer: about 24 days).
_MAX_MS = 2_147_483_647


class ConnectionOptions(DeadlineOptions):
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


# -- connecting -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Server:
    """A server as a stage reaches it: the connection string with the deadlines in it (a
    secret: it may hold a password), the deadlines, and where it is, for messages."""

    conninfo: str
    where: str
    deadlines: Deadlines
    connect_timeout: float  # what libpq is given: the stage's, the DSN's or PGCONNECT_TIMEOUT

    @classmethod
    def of(cls, options: ConnectionOptions) -> Server:
        """The server of ``options``: its ``dsn`` (or the ``PG*`` variables), with libpq's
        ``connect_timeout`` and keepalives set from the stage's deadlines where the DSN leaves
        them out (the stage's own options win over the DSN).

        Raises:
            PermanentError: a ``dsn`` libpq can't read (not quoted: it may hold a password), or
                an ``ETL_…`` variable that is not a duration.
        """
        from psycopg import conninfo as ci

        deadlines = Deadlines.of(options)
        try:
            params: dict[str, Any] = ci.conninfo_to_dict(options.dsn.get_secret_value() if options.dsn else "")
        except Exception:
            raise PermanentError(
                "dsn: libpq can't read it; write a URI such as postgresql://user@host:5432/db (with special "
                "characters in the password percent-encoded) or key=value pairs such as host=db port=5432"
            ) from None
        ours: dict[str, Any] = {}
        origin = deadlines.origin("connect_timeout")
        given_elsewhere = "connect_timeout" in params or (origin == "default" and os.environ.get("PGCONNECT_TIMEOUT"))
        if origin == "job" or not given_elsewhere:
            ours["connect_timeout"] = max(2, math.ceil(deadlines.connect))  # libpq's least is 2 seconds
        quiet = deadlines.timeout
        keepalives = {
            "keepalives": 1,
            # A quiet connection is probed after half of `timeout`, then every sixth, three
            # times: dropped after about `timeout` of silence. Data sent and not acknowledged
            # for `timeout` drops it too.
            "keepalives_idle": max(1, math.ceil(quiet / 2)),
            "keepalives_interval": max(1, math.ceil(quiet / 6)),
            "keepalives_count": 3,
            "tcp_user_timeout": math.ceil(quiet * 1000),
        }
        for key, value in keepalives.items():
            if deadlines.origin("timeout") == "job" or key not in params:
                ours[key] = value
        conninfo = ci.make_conninfo(ci.make_conninfo("", **params), **ours)
        given = ours.get("connect_timeout") or params.get("connect_timeout") or os.environ.get("PGCONNECT_TIMEOUT")
        try:
            connect = max(2.0, float(given or 0))
        except ValueError:
            connect = deadlines.connect
        return cls(conninfo, _where(params), deadlines, connect)

    def session_sql(self) -> str:
        """The statement that sets ``statement_timeout`` on a new connection: the stage's (or
        the environment's); by default 1 hour, or the server's own when it is shorter."""
        ms = min(_MAX_MS, max(1, math.ceil(self.deadlines.statement * 1000)))
        if self.deadlines.origin("statement_timeout") == "default":
            return (
                "SELECT set_config('statement_timeout', CASE WHEN setting::bigint > 0 AND setting::bigint < "
                f"{ms} THEN setting ELSE '{ms}' END, false) FROM pg_settings WHERE name = 'statement_timeout'"
            )
        return f"SELECT set_config('statement_timeout', '{ms}', false)"


def _where(params: dict[str, Any]) -> str:
    """``PostgreSQL at host:port (database d, user u)``, from the DSN and the ``PG*`` variables;
    never the password."""
    env = os.environ
    host = params.get("host") or params.get("hostaddr") or env.get("PGHOST") or "the local socket"
    port = params.get("port") or env.get("PGPORT") or "5432"
    database = params.get("dbname") or env.get("PGDATABASE")
    user = params.get("user") or env.get("PGUSER")
    at = host if host.startswith("/") or host == "the local socket" else f"{host}:{port}"
    details = [f"database {database}" if database else "", f"user {user}" if user else ""]
    shown_details = ", ".join(d for d in details if d)
    return f"PostgreSQL at {at}" + (f" ({shown_details})" if shown_details else "")


def connect(server: Server, label: str, *, autocommit: bool = False) -> Any:
    """An ADBC connection to ``server``, its ``statement_timeout`` set."""
    import adbc_driver_manager
    import adbc_driver_postgresql.dbapi as adbc

    what = f"{label}: connecting to {server.where}"
    try:
        con = adbc.connect(server.conninfo, autocommit=autocommit)
    except adbc_driver_manager.Error as exc:
        raise classify(exc, what, server, connecting=True) from None
    try:
        with con.cursor() as cur:
            cur.execute(server.session_sql())
            cur.fetchall()
        if not autocommit:
            con.commit()
    except adbc_driver_manager.Error as exc:
        con.close()
        raise classify(exc, what, server, connecting=True) from None
    return con


def pg_connect(server: Server, label: str) -> Any:
    """A psycopg connection to ``server``, in a transaction, its ``statement_timeout`` set."""
    import psycopg

    what = f"{label}: connecting to {server.where}"
    try:
        con = psycopg.connect(server.conninfo)
    except psycopg.Error as exc:
        raise classify(exc, what, server, connecting=True) from None
    try:
        con.execute(server.session_sql())
        con.commit()
    except psycopg.Error as exc:
        con.close()
        raise classify(exc, what, server, connecting=True) from None
    return con


# -- errors -----------------------------------------------------------------------------------

# SQLSTATE classes worth retrying: connection failures, serialization failures and deadlocks,
# insufficient resources, operator intervention (a restart, a statement timeout), and lock
# timeouts.
_TRANSIENT_STATES = ("08", "40", "53", "57", "55P03")


def classify(exc: BaseException, what: str, server: Server | None = None, *, connecting: bool = False) -> Exception:
    """A driver error as one of ours: transient (worth retrying) or permanent, with a short
    message; one about reaching the server (a refused, lost or timed-out connection, a
    statement timeout) names it and says what to check."""
    text = " ".join(str(exc).split())
    text = re.sub(r"postgres(ql)?://[^@\s]*@", "postgresql://***@", text)  # never a password
    state = getattr(exc, "sqlstate", None) or _sqlstate(text)
    lost = bool(_LOST.search(text)) and not _REFUSED.search(text)
    transient = (bool(state) and state.startswith(_TRANSIENT_STATES)) or (not state and lost)
    hint = _hint(text, server, connecting) if server is not None else None
    if hint is not None and not connecting:
        what = f"{what} ({server.where})"  # type: ignore[union-attr]
    message = f"{what}: {text}" + (f"; {hint}" if hint else "")
    return (TransientError if transient else PermanentError)(message)


def _hint(text: str, server: Server, connecting: bool) -> str | None:
    """What to check, when ``text`` is about reaching the server."""
    lower = text.lower()
    deadlines = server.deadlines
    if "statement timeout" in lower:
        return (
            f"the statement ran longer than statement_timeout ({shown(deadlines.statement)}): raise "
            "statement_timeout (or ETL_STATEMENT_TIMEOUT), or make chunk_size smaller"
        )
    if connecting and "timeout expired" in lower:
        return (
            f"nothing answered within connect_timeout ({shown(server.connect_timeout)}): check the "
            "host and port, that the server is up, and that no firewall drops the connection (or raise "
            "connect_timeout)"
        )
    if "connection refused" in lower:
        return "check the host and port, and that the server is up and listening there (listen_addresses)"
    if "could not translate host name" in lower or "name or service not known" in lower:
        return "check the host name"
    if "connection timed out" in lower or "tcp_user_timeout" in lower:
        return (
            f"the server stopped answering for timeout ({shown(deadlines.timeout)}): check that it is up, and the "
            "network in between"
        )
    if _LOST.search(text) and not _REFUSED.search(text):
        return (
            "the connection was lost: check the server's log (a restart, a crash, a terminated backend, too "
            "many connections) and the network in between"
        )
    if connecting and ("authentication failed" in lower or "password" in lower):
        return "check the user and password (the DSN, PGUSER, PGPASSWORD, ~/.pgpass)"
    return None


# A connection refused or dropped says so without a SQLSTATE (the driver never got one); a
# connection the server refused (no such role or database, a wrong password) is no outage.
_LOST = re.compile(
    r"failed to connect|could not connect|connection refused|server closed the connection|no connection to the "
    r"server|could not (?:receive|send) data|timeout expired|ssl syscall|could not translate host name|"
    r"connection (?:timed out|reset)|no route to host|consuming input failed|connection is (?:closed|lost)|"
    r"the database system is (?:starting up|shutting down|in recovery mode|not yet accepting connections)|"
    r"too many clients already",
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
