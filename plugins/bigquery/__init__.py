"""BigQuery: the ``bigquery`` source (Storage Read API in Arrow) and sink (load jobs).

Needs the ``bigquery`` extra: ``pip install 'etl-toolkit[bigquery]'``.

One concern a module:

* ``_client``: the options both stages share, Google's clients, retries and deadlines, errors
  as ours, query parameters.
* ``source``: the source stage (what is read, counting, planning, reading), with its options
  (``_source_options``), its BigQuery jobs and staged query results (``_source_queries``), its
  reads through the Storage Read API (``_source_storage``) and REST (``_source_rest``), the
  conditions it writes from values (``_source_conditions``) and its types (``_source_types``).
* ``sink``: the sink stage (its tables' names, its calls, prepare), with its options
  (``_sink_options``), writing one chunk (``_sink_load``), finalize and abort
  (``_sink_finalize``) and its types (``_sink_types``).
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
