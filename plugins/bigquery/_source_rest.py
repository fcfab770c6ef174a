"""The bigquery source's reads through REST (``tabledata.list``), for when the Storage Read API
can't be had: a table's rows in row-offset ranges, one chunk each, paged. Far slower.

``RestReads`` is a part of ``BigQuerySource``, split out of it: it uses the source's
``clients``, ``label``, ``options``, ``table``, ``_get_table()`` and ``_fields()``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import pyarrow as pa


class RestReads:
    """The REST side of ``BigQuerySource``: row ranges as chunks, and paging through them."""

    def _row_ranges(self, table: str, chunk_size: int) -> list[dict[str, Any]]:
        rows = int(self._get_table(table).num_rows or 0)
        starts = list(range(0, rows, max(1, chunk_size))) or [0]
        # The last range is open-ended: rows added since the count are read too.
        return [
            {"kind": "rows", "start": s, "stop": starts[i + 1] if i + 1 < len(starts) else None, "rows": None}
            for i, s in enumerate(starts)
        ]

    def _read_rows(self, table: str, args: Mapping[str, Any], size: int) -> Iterator[pa.RecordBatch]:
        start, stop = int(args["start"]), args.get("stop")
        selected = self._rest_fields(table)
        with self.clients.call(f"{self.label}: paging {table} through REST") as retry:
            rows = self.clients.bq.list_rows(
                table,
                selected_fields=selected,
                start_index=start,
                max_results=None if stop is None else int(stop) - start,
                page_size=size,
                retry=retry,
            )
            yield from rows.to_arrow_iterable(bqstorage_client=None)

    def _rest_fields(self, table: str) -> list[Any] | None:
        if table != self.table or not self.options.columns:
            return None
        return self._fields()
