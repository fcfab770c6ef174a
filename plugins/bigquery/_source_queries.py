"""The bigquery source's BigQuery jobs: queries run with the job's params as query parameters
(their bytes processed and billed logged), a dry run that checks the query, where the data is,
and a query's rows materialized (``CREATE TABLE ... AS SELECT``) into a table of the staging
dataset, made once per run, key and window, to be read from there.

``Queries`` is a part of ``BigQuerySource``, split out of it: it uses the source's ``clients``,
``label``, ``log``, ``options``, ``context``, ``table``, ``window``, ``base_sql``, ``sql``,
``_key()``, ``_params()`` and the caches ``_checked``, ``_location``, ``_staging_ready`` and
``_staged`` that its ``__init__`` sets.
"""

from __future__ import annotations

import hashlib
from typing import Any

from etl import PermanentError

from .._chunking import every_seconds


class Queries:
    """The query side of ``BigQuerySource``: running, checking, materializing."""

    # -- BigQuery calls ------------------------------------------------------------------------

    def _get_table(self, name: str, what: str | None = None) -> Any:
        with self.clients.call(f"{self.label}: {what or f'reading table {name}'}") as retry:
            return self.clients.bq.get_table(name, retry=retry)

    def _query(self, sql: str, *, what: str, dry_run: bool = False) -> Any:
        """Run ``sql`` with the job's params as query parameters; returns the finished job."""
        from google.cloud import bigquery

        config = self.clients.job_config(bigquery.QueryJobConfig(query_parameters=self._params(sql), dry_run=dry_run))
        what = f"{self.label}: {what}"
        with self.clients.call(what) as retry:
            job = self.clients.bq.query(sql, job_config=config, location=self._location, retry=retry)
            if not dry_run:
                job.result(retry=retry, job_retry=self.clients.retry(what, job=True))
        if not dry_run:
            self._report(job, what)
        return job

    def _report(self, job: Any, what: str) -> None:
        processed, billed = job.total_bytes_processed, job.total_bytes_billed
        if processed is not None:
            billed_text = f", {_bytes(billed)} billed" if billed is not None else ""
            self.log.info("BigQuery: {} processed {}{} (job {})", what, _bytes(processed), billed_text, job.job_id)

    def _rows(self, sql: str, what: str) -> list[tuple[Any, ...]]:
        job = self._query(sql, what=what)
        with self.clients.call(f"{self.label}: {what}") as retry:
            return [tuple(row.values()) for row in job.result(retry=retry)]

    def _check(self) -> Any:
        """The query checked by a dry run (done once): its schema and location."""
        if self._checked is None:
            assert self.base_sql is not None
            self._checked = self._query(self.base_sql, what="checking the query", dry_run=True)
        return self._checked

    def location(self) -> str | None:
        """Where the data is (the option, or the table's dataset's, or the query's)."""
        if self._location is None:
            if self.base_sql is None:
                project, dataset, _ = self.table.split(".")
                with self.clients.call(f"{self.label}: reading dataset {project}.{dataset}") as retry:
                    self._location = self.clients.bq.get_dataset(f"{project}.{dataset}", retry=retry).location
            else:
                self._location = self._check().location
        return self._location

    # -- the staging dataset -------------------------------------------------------------------

    def _staging(self) -> str:
        from google.cloud import bigquery

        name = f"{self.clients.project}.{self.options.staging_dataset}"
        if not self._staging_ready:
            dataset = bigquery.Dataset(name)
            dataset.location = self.location()
            dataset.default_table_expiration_ms = every_seconds(self.options.staging_expiration) * 1000
            dataset.description = "Query results staged by etl for reading; tables expire on their own."
            with self.clients.call(f"{self.label}: making the staging dataset {name}") as retry:
                self.clients.bq.create_dataset(dataset, exists_ok=True, retry=retry)
            self._staging_ready = True
        return name

    def _materialize(self, sql: str, key: str, what: str) -> Any:
        """``sql``'s rows in a table of the staging dataset (made once for ``key``); its table."""
        from google.api_core import exceptions as g

        named = f"{self.context.run_id}\0{key}\0{sql}"
        if self.window is not None:  # the bounds are parameters: their values name the result too
            named += "\0" + self._key(sql)[1]
        digest = hashlib.sha256(named.encode()).hexdigest()[:24]
        name = f"{self._staging()}.etl_{digest}"
        with self.clients.call(f"{self.label}: {what}") as retry:
            try:
                table = self.clients.bq.get_table(name, retry=retry)
                self.log.debug("BigQuery: {} already staged in {}", what, name)
                return table
            except g.NotFound:
                pass
        hours = max(1, every_seconds(self.options.staging_expiration) // 3600)
        ddl = (
            f"CREATE TABLE `{name}`\n"
            f"OPTIONS (expiration_timestamp = TIMESTAMP_ADD(CURRENT_TIMESTAMP(), INTERVAL {hours} HOUR)) AS\n{sql}"
        )
        try:
            self._query(ddl, what=what)
        except PermanentError:
            # Another attempt at the same chunk may have made it first (a lost lease).
            try:
                with self.clients.call(f"{self.label}: {what}") as retry:
                    return self.clients.bq.get_table(name, retry=retry)
            except Exception:
                pass
            raise
        return self._get_table(name, what)

    def _result(self) -> Any:
        """The query's result table (the query runs the first time only, for each window)."""
        sql = self.sql
        assert sql is not None
        key = self._key(sql)
        if key not in self._staged:
            self._staged[key] = self._materialize(sql, "query", "the query")
        return self._staged[key]


def _bytes(n: int | None) -> str:
    value = float(n or 0)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if value < 1024 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} PB"
