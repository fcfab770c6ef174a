"""Every contract case: the core built-ins', the file formats', PostgreSQL's and BigQuery's."""

from __future__ import annotations

from tests.contract import cases_bigquery, cases_core, cases_postgres

SOURCE_CASES = list(cases_core.SOURCE_CASES) + cases_postgres.SOURCE_CASES + cases_bigquery.SOURCE_CASES
SINK_CASES = list(cases_core.SINK_CASES) + cases_postgres.SINK_CASES + cases_bigquery.SINK_CASES

try:  # the file formats' cases live beside their own tests
    from tests.contract import cases_files
except ImportError:  # pragma: no cover - only while the file formats are being written
    cases_files = None
else:
    SOURCE_CASES += cases_files.SOURCE_CASES
    SINK_CASES += cases_files.SINK_CASES
