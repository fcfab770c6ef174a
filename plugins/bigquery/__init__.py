"""BigQuery: the ``bigquery`` source (Storage Read API in Arrow) and sink (load jobs).

Needs the ``bigquery`` extra: ``pip install 'etl-toolkit[bigquery]'``.
"""

from __future__ import annotations

from etl import Sink, Source, hookimpl


@hookimpl
def etl_register_sources() -> list[type[Source]]:
    try:
        from .source import BigQuerySource
    except ImportError:  # google-cloud-bigquery is not installed, or the source is being written
        return []
    return [BigQuerySource]


@hookimpl
def etl_register_sinks() -> list[type[Sink]]:
    try:
        from .sink import BigQuerySink
    except ImportError:
        return []
    return [BigQuerySink]
