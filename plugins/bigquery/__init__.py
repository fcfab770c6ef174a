"""BigQuery: the ``bigquery`` source (Storage Read API in Arrow) and sink (load jobs).

Needs the ``bigquery`` extra: ``pip install 'etl-toolkit[bigquery]'``.
"""

from __future__ import annotations

from etl import Sink, Source, hookimpl


@hookimpl
def etl_register_sources() -> list[type[Source]]:
    # Google's clients are imported when first used: without the `bigquery` extra the stage is
    # still listed and validated, and a run says what to install.
    from .source import BigQuerySource

    return [BigQuerySource]


@hookimpl
def etl_register_sinks() -> list[type[Sink]]:
    from .sink import BigQuerySink

    return [BigQuerySink]
