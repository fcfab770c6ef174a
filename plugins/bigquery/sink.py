"""Sink ``bigquery``: a BigQuery table, loaded chunk by chunk with load jobs from Parquet.

Options:

* ``table``: ``project.dataset.table``, or ``dataset.table`` in the client's project
  (``project:``, else the credentials' project). Jobs run and are billed in the client's project.
* ``mode``: ``append`` (default) adds the run's rows; ``replace`` makes the run's rows the
  table's only rows. Either way the rows appear all at once, when the run finishes.
* ``create``: create the table from the rows' schema when it is missing (default), when the
  run finishes; with ``false`` a missing table is an error (at prepare). An existing table keeps
  its definition (partitioning, clustering, descriptions, policy tags, column defaults, REQUIRED
  columns): rows are converted to its column types, and columns they lack get their default.
* ``staging_dataset``: where the staging tables and the ``_etl_finalized`` ledger live
  (``dataset``, in the table's project, or ``project.dataset``); by default the table's own
  dataset. Created, in the table's location, when missing.
* ``project``, ``location``, ``credentials``, ``api_endpoint``, ``storage_endpoint``: the client,
  as for the ``bigquery`` source.

Exactly once: BigQuery load jobs can't join a transaction, so each chunk is staged. ``write``
streams the chunk's batches, converted to the table's types, into a temporary Parquet file (row
groups of about 64 MB: memory stays bounded), then one load job replaces (``WRITE_TRUNCATE``)
the chunk's own staging table, ``<staging dataset>._etl_stage_<table>_<digest>_c<chunk>`` (the
digest is of the run id and the table), made just before with the rows' columns and a 7-day
expiration. Writing a chunk again (a retry, in any process) replaces its earlier attempt, so a
chunk never counts twice; a write that fails before its load leaves nothing. A label on the
staging table holds the newest attempt (``chunk.attempt``): an attempt that finds a newer one
has marked it stops with ``Interrupted`` before loading. ``finalize`` finds the run's staging
tables by their name prefix (in ``INFORMATION_SCHEMA.COLUMNS``: the process that finalizes
need not be one that wrote) and, in one multi-statement transaction, inserts their rows into
the table (after ``TRUNCATE TABLE`` for ``replace``) together with a row ``(run_id, target)``
in the ledger table ``_etl_finalized``; then drops them. A finalize run again after that
commit finds the ledger row and only drops what is left: the rows go in once (appended rows
are also guarded by the ledger row inside the transaction, against a finalize that committed
meanwhile elsewhere). More than 500 staging tables are first merged 500 at a time (``CREATE
TABLE … AS SELECT``, then the parts dropped; a merged table is named after the chunks it
holds, so a merge cut short is safe), so that no statement reads more than 500 tables.
``abort`` drops the staging tables. So readers see the table as it was until the commit, then
all of the run's rows, and a failed run leaves it untouched; staging tables of a run that dies
expire (7 days: a failed background run can be completed with ``etl retry`` until then). A new
run has a new run id: running an ``append`` job twice loads its rows twice.

Why load jobs, not the Storage Write API: measured against the emulator, 1,000,000 rows of 8
columns (``generate`` → this sink, in one process, finalize included) load at 0.87-1.03 M rows/s
in chunks of 1,000,000, 0.79-0.86 M in chunks of 250,000 and 0.32-0.34 M in chunks of 50,000;
staged through the Write API instead (Arrow rows on pending streams), 1.05-1.15 M, 0.88-0.95 M
and 0.37-0.41 M: 10-20% faster there. But on Google load jobs are free where the Write API is
billed per GB, and ``WRITE_TRUNCATE`` makes a retried chunk replace its earlier attempt in one
atomic step, which the Write API can't (there, a fresh table per attempt, and finalize would
have to tell committed attempts from abandoned ones). Each load job has a few seconds of fixed
latency on Google: chunks of 500,000 rows or more, or several workers, hide it.
The transaction's ``INSERT … SELECT`` reads the staged rows once (query bytes, billed on
on-demand pricing); a merge of staging tables reads them once more.

Types (Arrow → BigQuery, for a table the sink creates):

=====================================================  ==========================================
int8 … int64, uint8 … uint64                           INT64 (a uint64 above 2^63-1 is rejected)
float16, float32, float64                              FLOAT64
decimal(p, s), s ≤ 9 and p - s ≤ 29                     NUMERIC
decimal(p, s), s ≤ 38 and p - s ≤ 38                    BIGNUMERIC
bool                                                   BOOL
string, large_string                                   STRING
binary, large_binary, fixed_size_binary                BYTES
date32, date64                                         DATE
time32, time64                                         TIME (finer than a microsecond: rejected)
timestamp without time zone                            DATETIME (finer than a microsecond: rejected)
timestamp with a time zone                             TIMESTAMP (the same instant, in UTC)
json                                                   JSON
list<T> (large, fixed-size)                            T, REPEATED (ARRAY<T>)
struct<…>                                              RECORD (STRUCT), field by field
dictionary<…, T>                                       as T
a column of nulls only (Arrow type null)               STRING
=====================================================  ==========================================

Into an existing table a column may also go into a wider type: integers into NUMERIC or
BIGNUMERIC, NUMERIC into BIGNUMERIC, text into JSON; a nulls-only column into any type. Anything
else is an error naming the column and its type in the rows and in the table. Refused outright,
naming the column: a list of lists (BigQuery has no ARRAY of ARRAY: wrap the inner list in a
struct), maps, durations, intervals, decimals beyond BIGNUMERIC, column names BigQuery doesn't
accept, columns the table lacks, REQUIRED columns the rows lack. Rows are rejected (the run
fails naming row, column and value, or with ``on_error: skip`` they go to the rejects file),
never altered: values that don't fit their column (a uint64 beyond INT64, a decimal with more
digits than its column, sub-microsecond times), dates and timestamps outside 0001-01-01 …
9999-12-31, a list holding a NULL element (an ARRAY can't), NULL in a REQUIRED column. A NULL
list is stored as an empty array: BigQuery has no NULL arrays.

Staged where: each chunk's Parquet file in the temporary directory (``TMPDIR``) of the process
writing it, while it is written and loaded (about the chunk's size, compressed); the staging
tables and the ledger in the staging dataset.

Permissions: ``bigquery.jobs.create`` on the client's project (BigQuery Job User); on the
table's dataset and the staging dataset ``bigquery.tables.create``, ``.get``, ``.getData``,
``.updateData``, ``.update`` (labels), ``.delete`` and ``.list`` (BigQuery Data Editor); with a
``staging_dataset`` that does not exist yet, ``bigquery.datasets.create`` on its project.

The emulator the tests use can't do everything Google does, and the code keeps to Google's
behaviour: it can't make BIGNUMERIC columns, doesn't roll a failed transaction back, ignores
table expiration, labels in listings and ``REQUIRED``, and copies only the first table of a multi-table copy job
(hence ``CREATE TABLE … AS SELECT`` for merging).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
from loguru import logger

from etl import PermanentError, Sink, TransientError

from ._client import Clients, split_table
from ._sink_finalize import Finalizing
from ._sink_load import STAGING_EXPIRATION, ChunkLoads
from ._sink_options import BigQuerySinkOptions
from ._sink_types import Plan


@dataclass(frozen=True)
class _Names:
    project: str
    dataset: str
    table: str
    staging_project: str
    staging_dataset: str
    prefix: str

    @property
    def target(self) -> str:
        return f"{self.project}.{self.dataset}.{self.table}"

    def staged(self, name: str) -> str:
        return f"{self.staging_project}.{self.staging_dataset}.{name}"


class BigQuerySink(ChunkLoads, Finalizing, Sink):
    """A BigQuery table: append or replace, each chunk staged by a load job, all shown at once."""

    name = "bigquery"
    Options = BigQuerySinkOptions
    options: BigQuerySinkOptions

    def __init__(self, options: BigQuerySinkOptions, context) -> None:
        super().__init__(options, context)
        self.clients = Clients(options, logger.bind(job=context.job, run=context.run_id))
        self._names: _Names | None = None
        self._target: Any = None  # the table, once known to exist in this process
        self._plans: dict[pa.Schema, Plan] = {}
        self._ledger_ready = False

    @property
    def bq(self) -> Any:
        return self.clients.bq

    @property
    def names(self) -> _Names:
        if self._names is None:
            options = self.options
            try:
                project, dataset, table = split_table(options.table, options.project)
            except ValueError:  # dataset.table: in the client's project (that of the credentials)
                project, dataset, table = split_table(options.table, self.clients.project)
            staging_project, staging_dataset = project, dataset
            if options.staging_dataset:
                staging_project, _, staging_dataset = options.staging_dataset.rpartition(".")
                staging_project = staging_project or project
            digest = hashlib.sha1(f"{self.context.run_id}|{project}.{dataset}.{table}".encode()).hexdigest()[:12]
            prefix = f"_etl_stage_{table[:100]}_{digest}_"
            self._names = _Names(project, dataset, table, staging_project, staging_dataset, prefix)
        return self._names

    def _where(self) -> str:
        return f"{self.context.label}: table {self.names.target}"

    def staged(self) -> list[str]:
        names = self.names
        where = f"{names.staging_project}.{names.staging_dataset}"
        return [f"the tables {where}.{names.prefix}c* (they expire after {STAGING_EXPIRATION.days} days)"]

    def close(self) -> None:
        self.clients.close()

    # -- calls ------------------------------------------------------------------------------

    @contextmanager
    def _google(self, what: str) -> Iterator[Any]:
        """The retry policy of the calls inside, and Google's errors as ours (quota, rate
        limits, 5xx and lost connections transient; the rest permanent), named after this
        stage and ``what`` it was doing."""
        try:
            with self.clients.call(f"{self.context.label}: {what}") as retry:
                yield retry
        except PermanentError as exc:
            if "concurrent update" in str(exc).lower():  # another transaction won: worth a retry
                raise TransientError(str(exc)) from exc
            raise

    def _get(self, ref: str) -> Any:
        """The table, or ``None`` when it does not exist."""
        from google.api_core.exceptions import NotFound

        with self._google(f"reading the definition of {ref}") as retry:
            try:
                return self.bq.get_table(ref, retry=retry)
            except NotFound:
                return None

    def _query(self, sql: str, what: str) -> list[Any]:
        from google.cloud import bigquery

        config = self.clients.job_config(bigquery.QueryJobConfig(labels=self._labels()))
        with self._google(what) as retry:
            job = self.bq.query(sql, job_config=config, retry=retry)
            job_retry = self.clients.retry(f"{self.context.label}: {what}", job=True)
            return list(job.result(retry=retry, job_retry=job_retry))

    def _labels(self) -> dict[str, str]:
        """Labels of the jobs and staging tables: find a run's jobs (and costs) by them."""
        return {"etl_job": _label(self.context.job), "etl_run": _label(self.context.run_id)}

    def _delete(self, refs: Iterable[str]) -> None:
        refs = list(refs)
        if not refs:
            return

        def delete(ref: str) -> None:
            with self._google(f"dropping {ref}") as retry:
                self.bq.delete_table(ref, not_found_ok=True, retry=retry)

        with ThreadPoolExecutor(min(8, len(refs))) as pool:
            list(pool.map(delete, refs))

    # -- prepare ----------------------------------------------------------------------------

    def prepare(self) -> None:
        """Check the dataset and the table (or that it may be created), make the staging dataset
        and the ledger when missing."""
        names = self.names
        dataset = self._dataset(names.project, names.dataset)
        if (names.staging_project, names.staging_dataset) != (names.project, names.dataset):
            self._dataset(names.staging_project, names.staging_dataset, create_in=dataset.location)
        table = self._get(names.target)
        if table is None and not self.options.create:
            raise self._missing()
        if table is not None:
            self._check_kind(table)
        self._ensure_ledger()

    def _dataset(self, project: str, dataset: str, create_in: str | None = None) -> Any:
        from google.api_core.exceptions import NotFound
        from google.cloud import bigquery

        ref = f"{project}.{dataset}"
        with self._google(f"reading dataset {ref}") as retry:
            try:
                return self.bq.get_dataset(ref, retry=retry)
            except NotFound:
                if create_in is None:
                    raise PermanentError(
                        f"{self.context.label}: dataset {ref} does not exist (for table {self.options.table}); "
                        f"create it (bq mk --dataset {project}:{dataset}) or correct `table`"
                    ) from None
        made = bigquery.Dataset(ref)
        made.location = create_in
        made.description = "etl: staging tables of the bigquery sink, and its ledger of finalized runs"
        with self._google(f"creating the staging dataset {ref}") as retry:
            return self.bq.create_dataset(made, exists_ok=True, retry=retry)

    def _missing(self) -> PermanentError:
        return PermanentError(
            f"{self.context.label}: table {self.names.target} does not exist; create it, or set `create: true`"
        )

    def _check_kind(self, table: Any) -> None:
        kind = getattr(table, "table_type", None) or "TABLE"
        if kind != "TABLE":
            raise PermanentError(
                f"{self.context.label}: {self.names.target} is a {kind.lower().replace('_', ' ')}; "
                "the bigquery sink loads tables"
            )


def _label(text: str) -> str:
    """A BigQuery label value: lowercase letters, digits, ``_`` and ``-``, at most 63."""
    return re.sub(r"[^a-z0-9_-]", "_", text.lower())[:63]
