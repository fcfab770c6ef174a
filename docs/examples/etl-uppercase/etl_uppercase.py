"""Transform ``uppercase``: upper-case text columns.

An example etl plugin. ``pyproject.toml`` declares it under the ``etl`` entry-point group, so
installing the package is all it takes for jobs to use it::

    transforms:
      - {type: uppercase, columns: [environment, dataset_id]}
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

import etl


class UppercaseOptions(etl.StageOptions):
    columns: list[str] = Field(min_length=1, description="the text columns to upper-case", examples=[["environment"]])


class Uppercase(etl.Transform):
    """Upper-case text columns (Unicode-aware); other columns pass through unchanged."""

    name = "uppercase"
    Options = UppercaseOptions
    options: UppercaseOptions

    def apply(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        for column in self.options.columns:
            index = batch.schema.get_field_index(column)
            if index < 0:
                raise etl.PermanentError(
                    f"{self.context.label}: no column {column!r}; the rows have: {', '.join(batch.schema.names)}"
                )
            kind = batch.schema.field(index).type
            if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
                raise etl.PermanentError(
                    f"{self.context.label}: column {column!r} is {kind}, not text; cast it to string first"
                )
            batch = batch.set_column(index, column, pc.utf8_upper(batch.column(index)))
        return batch


@etl.hookimpl
def etl_register_transforms() -> list[type[etl.Transform]]:
    return [Uppercase]
