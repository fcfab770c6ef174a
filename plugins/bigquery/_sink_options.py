"""The bigquery sink's options (what a job writes under ``sink:``), checked as the job is
validated: a table, not a partition; a staging dataset that is ``dataset`` or
``project.dataset``. What they mean: the ``sink`` module's docstring."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, model_validator

from ._client import BigQueryOptions, split_table

_DATASET = re.compile(r"^(?:[\w.:-]+\.)?\w+$")


class BigQuerySinkOptions(BigQueryOptions):
    table: str = Field(
        description="the table: project.dataset.table, or dataset.table in the client's project",
        examples=["analytics.forecasts", "my-project.analytics.forecasts"],
    )
    mode: Literal["append", "replace"] = Field(
        "append",
        description="append: add the run's rows; replace: the run's rows replace the table's. "
        "Either way they appear at once, when the run finishes",
        examples=["replace"],
    )
    create: bool = Field(
        True,
        description="create the table from the rows' schema when it is missing; false: a missing table is an error",
        examples=[False],
    )
    staging_dataset: str | None = Field(
        None,
        description="the dataset (dataset, in the table's project, or project.dataset) for the per-chunk staging "
        "tables and the _etl_finalized ledger; default: the table's dataset; made in the table's location if missing",
        examples=["etl_staging"],
    )

    @model_validator(mode="after")
    def _valid(self) -> BigQuerySinkOptions:
        _, _, table = split_table(self.table, self.project or "project")
        if "$" in table:
            raise ValueError(f"{self.table!r} names a partition ($…); name the table, the sink writes it whole")
        if self.staging_dataset is not None and not _DATASET.match(self.staging_dataset):
            raise ValueError(f"{self.staging_dataset!r} is not a dataset; expected dataset or project.dataset")
        return self
