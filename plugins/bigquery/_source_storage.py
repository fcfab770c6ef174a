"""The bigquery source's reads through the Storage Read API, in Arrow: a read session on a
table (the columns read, a row restriction, a snapshot time), its streams as chunks, and a
stream's rows, resumed from the row it reached when the stream breaks.

``StorageReads`` is a part of ``BigQuerySource``, split out of it: it uses the source's
``clients``, ``label``, ``log``, ``options``, ``table``, ``restriction`` and ``count()``.
"""

from __future__ import annotations

import base64
import datetime as dt
import math
from collections.abc import Iterator
from typing import Any

import pyarrow as pa

from etl import PermanentError, TransientError

from .._deadlines import shown

#: The most streams one read session is asked for.
MAX_STREAMS = 1_000
#: A stream that breaks this many times in a row with no row read in between is given up on.
_STALLS = 3


class _Denied(PermanentError):
    """The Storage Read API refused a session: no permission, or not offered here."""


class StorageReads:
    """The Storage Read API side of ``BigQuerySource``: sessions, streams, reading them."""

    def _session(self, table: str, *, restriction: str | None, streams: int, snapshot: str | None = None) -> Any:
        """A Storage Read API session on ``table``: Arrow, the columns read, ``restriction``."""
        from google.cloud.bigquery_storage_v1 import types

        project, dataset, name = table.split(".")
        options = types.ReadSession.TableReadOptions(selected_fields=self._selected(table))
        if restriction:
            options.row_restriction = restriction
        session = types.ReadSession(
            table=f"projects/{project}/datasets/{dataset}/tables/{name}",
            data_format=types.DataFormat.ARROW,
            read_options=options,
        )
        if snapshot is not None:
            from google.protobuf import timestamp_pb2

            stamp = timestamp_pb2.Timestamp()
            stamp.FromDatetime(dt.datetime.fromisoformat(snapshot))
            session.table_modifiers = types.ReadSession.TableModifiers(snapshot_time=stamp)
        from google.api_core import exceptions as g

        what = f"{self.label}: opening a Storage Read API session on {table}"
        client = self.clients.read_client()
        try:
            with self.clients.call(what, "storage") as retry:
                return client.create_read_session(
                    parent=f"projects/{self.clients.project}",
                    read_session=session,
                    max_stream_count=streams,
                    retry=retry,
                    timeout=self.clients.deadlines.timeout,
                )
        except PermanentError as exc:
            if isinstance(exc.__context__, g.PermissionDenied | g.MethodNotImplemented):
                raise _Denied(str(exc)) from None
            raise

    def _selected(self, table: str) -> list[str]:
        return list(self.options.columns or []) if table == self.table else []

    def _streams(self, table: str, chunk_size: int, restricted: bool) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        rows = self.count().rows or 0
        wanted = min(MAX_STREAMS, max(1, math.ceil(rows / max(1, chunk_size))))
        session = self._session(table, restriction=self.restriction if restricted else None, streams=wanted)
        names = [s.name for s in session.streams]
        self.log.info(
            "BigQuery: read session {} on {}: {} stream(s) for {:,} rows (asked for {})",
            session.name.rsplit("/", 1)[-1],
            table,
            len(names),
            rows,
            wanted,
        )
        chunks = [{"kind": "stream", "stream": n, "rows": rows if len(names) == 1 else None} for n in names]
        shared = {
            "session": session.name,
            "arrow_schema": base64.b64encode(session.arrow_schema.serialized_schema).decode("ascii"),
            "expires": session.expire_time.isoformat() if session.expire_time else None,
        }
        return chunks, shared

    def _read_stream(self, stream: str, schema: pa.Schema) -> Iterator[pa.RecordBatch]:
        """A read stream's rows. A stream that breaks is resumed from the row it reached (on
        Google's endpoint: see ``Clients.resumable``), each break logged; opening it is retried
        for up to ``timeout`` (then the chunk fails, and its retries take over), and a whole
        stream may take up to ``statement_timeout``."""
        from google.api_core import exceptions as g

        client = self.clients.read_client()
        if client is None:
            raise PermanentError(f"{self.label}: this run reads through the Storage Read API, not installed here")
        what = f"{self.label}: reading stream {stream.rsplit('/', 1)[-1]}"
        offset, breaks, reached, stalled = 0, 0, -1, 0
        while True:
            try:
                with self.clients.call(what, "storage") as retry:
                    try:
                        responses = client.read_rows(
                            read_stream=stream, offset=offset, retry=retry, timeout=self.clients.deadlines.statement
                        )
                        for response in responses:
                            offset += response.row_count
                            data = response.arrow_record_batch.serialized_record_batch
                            if data:
                                yield pa.ipc.read_record_batch(pa.py_buffer(data), schema)
                        return
                    except g.DeadlineExceeded:
                        if offset == 0:
                            raise  # no answer at all: as any call that gets none
                        raise TransientError(
                            f"{what}: the stream took longer than statement_timeout "
                            f"({shown(self.clients.deadlines.statement)}), at row {offset:,}: raise statement_timeout "
                            "(or ETL_STATEMENT_TIMEOUT), or make chunk_size smaller"
                        ) from None
                    except (g.ServiceUnavailable, g.Unknown, g.InternalServerError) as exc:
                        if isinstance(exc, g.InternalServerError) and "RST_STREAM" not in str(exc):
                            raise
                        if not self.clients.resumable:
                            raise TransientError(
                                f"{what}: the stream broke at row {offset:,} ({self.clients.short(exc)}; the Storage "
                                f"Read API at {self.clients.storage_endpoint}); an emulator's stream is read again "
                                "from its start, with the chunk"
                            ) from None
                        stalled = stalled + 1 if offset == reached else 0
                        if stalled >= _STALLS:
                            raise TransientError(
                                f"{what}: the stream broke {stalled} times in a row at row {offset:,} "
                                f"({self.clients.short(exc)}; the Storage Read API at "
                                f"{self.clients.storage_endpoint}); check that endpoint's log and the network to it"
                            ) from None
                        breaks, reached = breaks + 1, offset
                        self.log.warning(
                            "{}: the stream broke at row {:,} ({}; break {}); resuming from there",
                            what,
                            offset,
                            self.clients.short(exc),
                            breaks,
                        )
            except PermanentError as exc:
                if isinstance(exc.__context__, g.NotFound | g.FailedPrecondition):
                    raise PermanentError(
                        f"{exc} (a read session lasts at least 6 hours; a run that waits longer must start again)"
                    ) from None
                raise
