"""PostgreSQL: the ``postgres`` sink (binary COPY from Arrow, exactly once) and source."""

from __future__ import annotations

from etl import Sink, Source, hookimpl

from .sink import PostgresSink


@hookimpl
def etl_register_sinks() -> list[type[Sink]]:
    return [PostgresSink]


@hookimpl
def etl_register_sources() -> list[type[Source]]:
    try:
        from .source import PostgresSource
    except ImportError:  # the source is being written
        return []
    return [PostgresSource]
