"""The bigquery sink's finalize and abort: the run's staging tables found by their name prefix,
merged ``MAX_UNION`` at a time when there are more, and inserted into the table in one
multi-statement transaction with the run's row in the ledger ``_etl_finalized`` (made at
prepare), so that a finalize run again inserts nothing twice; then the staging tables dropped.
Abort drops them only.

``Finalizing`` is a part of ``BigQuerySink``, split out of it: it uses the sink's ``bq``,
``context``, ``options``, ``names``, ``_ledger_ready``, ``_get()``, ``_google()``, ``_query()``,
``_delete()``, ``_missing()`` and ``_where()``.
"""

from __future__ import annotations

import datetime as dt
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from etl import PermanentError, TransientError

from ._sink_load import STAGING_EXPIRATION

if TYPE_CHECKING:
    from .sink import _Names

#: The ledger of finalized runs, in the staging dataset.
LEDGER = "_etl_finalized"
#: The most staging tables one statement reads; more are first merged, this many at a time.
MAX_UNION = 500


@dataclass(frozen=True)
class _Unit:
    """A staging table: one chunk's (``c<index>``), or chunks ``first``…``last`` merged (``m…``)."""

    name: str
    first: int
    last: int
    columns: tuple[str, ...]


class Finalizing:
    """The finalizing side of ``BigQuerySink``: the run's staged rows made visible at once, once."""

    def finalize(self) -> None:
        """Make the staged rows visible in one transaction, once; then drop the staging tables."""
        names = self.names
        self._ensure_ledger()
        if not self._finalized():
            units = self._units()
            self._check_staged(units)
            units = self._compact(units)
            if units and self._get(names.target) is None:
                self._create_target(units)
            script = self._transaction(units)
            try:
                self._query(script, f"making the run's rows visible in {names.target}")
            except PermanentError:
                if not self._finalized():  # not a finalize elsewhere that committed meanwhile
                    raise
        self._drop_staging()

    def _check_staged(self, units: list[_Unit]) -> None:
        """Refuse to make a run visible with the rows of a chunk missing: its staging table
        expired (a retry long after the run) or was dropped by hand."""
        written = self.context.written
        if written is None:
            return
        staged = {index for unit in units for index in range(unit.first, unit.last + 1)}
        missing = sorted(index for index, rows in written.items() if rows and index not in staged)
        if missing:
            shown = ", ".join(map(str, missing[:10])) + (" …" if len(missing) > 10 else "")
            raise PermanentError(
                f"{self._where()}: the staged rows of chunk(s) {shown} are gone (staging tables expire after "
                f"{STAGING_EXPIRATION.days} days, or were dropped); nothing was made visible: run the job again"
            )

    def abort(self) -> None:
        """Drop the run's staging tables: the table is left as it was."""
        self._drop_staging()

    def _finalized(self) -> bool:
        rows = self._query(
            f"SELECT COUNT(*) FROM {_ref(self.names.staged(LEDGER))} WHERE {self._this_run()}",
            f"reading the ledger {self.names.staged(LEDGER)}",
        )
        return bool(rows and rows[0][0])

    def _this_run(self) -> str:
        return f"run_id = {_literal(self.context.run_id)} AND target = {_literal(self.names.target)}"

    def _units(self) -> list[_Unit]:
        """The run's staging tables, less those whose rows a merged one holds."""
        names = self.names
        rows = self._query(
            "SELECT table_name, column_name FROM "
            f"{_ref(f'{names.staging_project}.{names.staging_dataset}.INFORMATION_SCHEMA.COLUMNS')} "
            f"WHERE STARTS_WITH(table_name, {_literal(names.prefix)}) ORDER BY table_name, ordinal_position",
            f"listing the staging tables of {names.target}",
        )
        columns: dict[str, list[str]] = defaultdict(list)
        for table, column in rows:
            columns[table].append(column)
        pattern = re.compile(re.escape(names.prefix) + r"(?:c(\d+)|m(\d+)_(\d+))$")
        units = []
        for table, cols in columns.items():
            match = pattern.match(table)
            if match:
                first = int(match[1] or match[2])
                units.append(_Unit(table, first, int(match[1] or match[3]), tuple(cols)))
        merged = [u for u in units if u.name[len(names.prefix)] == "m"]
        return sorted(
            (
                u
                for u in units
                if not any(
                    m is not u and set(m.columns) == set(u.columns) and m.first <= u.first and u.last <= m.last
                    for m in merged
                )
            ),
            key=lambda u: (u.first, u.last),
        )

    def _compact(self, units: list[_Unit]) -> list[_Unit]:
        """Merge staging tables (of the same columns) ``MAX_UNION`` at a time until one
        statement can read them all: BigQuery limits the tables and text of one query."""
        while len(units) > MAX_UNION:
            merged: list[_Unit] = []
            for group in _groups(units).values():
                for start in range(0, len(group), MAX_UNION):
                    part = group[start : start + MAX_UNION]
                    merged.append(self._merge(part) if len(part) > 1 else part[0])
            if len(merged) == len(units):
                raise PermanentError(f"{self._where()}: {len(units)} staging tables with different columns")
            units = sorted(merged, key=lambda u: (u.first, u.last))
        return units

    def _merge(self, part: Sequence[_Unit]) -> _Unit:
        name = f"{self.names.prefix}m{part[0].first:06d}_{part[-1].last:06d}"
        columns = part[0].columns
        expires = (dt.datetime.now(dt.UTC) + STAGING_EXPIRATION).strftime("%Y-%m-%d %H:%M:%S")
        self._query(
            f"CREATE OR REPLACE TABLE {_ref(self.names.staged(name))} "
            f"OPTIONS (expiration_timestamp = TIMESTAMP {_literal(expires + '+00')}) AS "
            + _union(self.names, part, columns),
            f"merging {len(part)} staging tables of {self.names.target}",
        )
        self._delete(self.names.staged(u.name) for u in part)
        return _Unit(name, part[0].first, part[-1].last, columns)

    def _transaction(self, units: list[_Unit]) -> str:
        names = self.names
        target = _ref(names.target)
        ledger = _ref(names.staged(LEDGER))
        statements = ["BEGIN TRANSACTION;"]
        if self.options.mode == "replace" and self._get(names.target) is not None:
            statements.append(f"TRUNCATE TABLE {target};")
        # Appended rows go in only while the ledger has no row of this run: a finalize that
        # committed meanwhile (elsewhere) leaves nothing to add. (``replace`` needs no guard:
        # doing it twice gives the same table.)
        guard = f" WHERE NOT EXISTS (SELECT 1 FROM {ledger} WHERE {self._this_run()})"
        for group in _groups(units).values():
            names_sql = ", ".join(f"`{c}`" for c in group[0].columns)
            where = guard if self.options.mode == "append" else ""
            statements.append(
                f"INSERT INTO {target} ({names_sql}) SELECT {names_sql} FROM ("
                + _union(names, group, group[0].columns)
                + f"){where};"
            )
        statements.append(
            f"INSERT INTO {ledger} (run_id, target, finalized_at) SELECT {_literal(self.context.run_id)}, "
            f"{_literal(names.target)}, CURRENT_TIMESTAMP() FROM UNNEST([1]){guard};"
        )
        statements.append("COMMIT TRANSACTION;")
        return "\n".join(statements)

    def _create_target(self, units: list[_Unit]) -> None:
        """Make the missing table with the columns of the staged rows."""
        from google.cloud import bigquery

        if not self.options.create:
            raise self._missing()
        staged = self._get(self.names.staged(units[0].name))
        if staged is None:
            raise TransientError(f"{self._where()}: the staging table {units[0].name} vanished; finalize again")
        table = bigquery.Table(self.names.target, schema=staged.schema)
        with self._google(f"creating {self.names.target}") as retry:
            self.bq.create_table(table, exists_ok=True, retry=retry)

    def _drop_staging(self) -> None:
        names = self.names
        from google.api_core.exceptions import NotFound

        with self._google(f"listing the staging tables of {names.target}") as retry:
            try:
                tables = [
                    t.table_id
                    for t in self.bq.list_tables(
                        f"{names.staging_project}.{names.staging_dataset}", page_size=1000, retry=retry
                    )
                ]
            except NotFound:  # no dataset, no staging tables
                return
        self._delete(names.staged(t) for t in tables if t.startswith(names.prefix))

    def _ensure_ledger(self) -> None:
        if self._ledger_ready:
            return
        from google.cloud import bigquery

        ref = self.names.staged(LEDGER)
        if self._get(ref) is None:
            ledger = bigquery.Table(
                ref,
                schema=[
                    bigquery.SchemaField("run_id", "STRING"),
                    bigquery.SchemaField("target", "STRING"),
                    bigquery.SchemaField("finalized_at", "TIMESTAMP"),
                ],
            )
            # A run's row is needed only while its finalize may be retried: old days expire.
            ledger.time_partitioning = bigquery.TimePartitioning(field="finalized_at", expiration_ms=90 * 86_400_000)
            ledger.description = "etl: the runs whose rows the bigquery sink has made visible"
            with self._google(f"creating the ledger {ref}") as retry:
                self.bq.create_table(ledger, exists_ok=True, retry=retry)
        self._ledger_ready = True


# -- SQL ------------------------------------------------------------------------------------------


def _ref(name: str) -> str:
    """A table path in backticks (its parts were checked: no backtick can be in them)."""
    return f"`{name}`"


def _literal(text: str) -> str:
    """A GoogleSQL string literal."""
    escaped = text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n").replace("\r", "\\r")
    return f"'{escaped}'"


def _union(names: _Names, units: Sequence[_Unit], columns: Sequence[str]) -> str:
    listed = ", ".join(f"`{c}`" for c in columns)
    return " UNION ALL ".join(f"SELECT {listed} FROM {_ref(names.staged(u.name))}" for u in units)


def _groups(units: Sequence[_Unit]) -> dict[frozenset[str], list[_Unit]]:
    """Staging tables by their set of columns (in a run, normally one set)."""
    groups: dict[frozenset[str], list[_Unit]] = defaultdict(list)
    for unit in units:
        groups[frozenset(c.lower() for c in unit.columns)].append(unit)
    return groups
