"""The check of a planned run's columns, before anything is written.

A sink's merge key, a ``rename``'s old names, a ``select``'s list: every column a transform or
the sink names is looked up in the schema that reaches it, from the source's cheap look at its
rows (:meth:`~etl.stages.Source.output_schema`) through each transform's
:meth:`~etl.stages.Transform.output_schema`, to the sink's
:meth:`~etl.stages.Sink.check_schema`. A wrong name is a :class:`~etl.errors.ConfigError`
located at its key in the job file, found before the sink prepares its target, instead of a
failure after every row was copied. Where a stage can't tell its schema without rows, the
check stops there (logged at debug): the stages' own checks as rows arrive still hold.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from loguru import logger

from etl.errors import ConfigError, ConfigErrors
from etl.yamldoc import Document, format_key, parse, parse_key_path

if TYPE_CHECKING:
    import pyarrow as pa

    from etl.config import Job, StageConfig
    from etl.stages import Sink, Source, Transform

__all__ = ["check_columns"]


def check_columns(job: Job, source: Source, transforms: Sequence[Transform], sink: Sink) -> pa.Schema | None:
    """Check the columns that ``job``'s transforms and sink name against the planned rows.

    Returns the schema that reaches the sink, or ``None`` where a stage could not tell it.

    Raises:
        ConfigErrors: every problem found, each with the job file, line and key, such as
            ``jobs/orders.yaml:9: sink.key: column 'orderid' is not in the rows; ...``.
    """
    log = logger.bind(job=job.name)
    schema = source.output_schema()
    if schema is None:
        log.debug("{} can't tell its columns before reading: the columns stages name are not checked", job.source.label)
        return None
    locator = _Locator(job)
    for config, transform in zip(job.transforms, transforms, strict=True):
        try:
            schema = transform.output_schema(schema)
        except ConfigError as exc:
            raise ConfigErrors(locator.locate(config, exc)) from None
        if schema is None:
            log.debug("{} can't tell its columns before it has rows: the stages after it are not checked", config.label)
            return None
    try:
        sink.check_schema(schema)
    except ConfigError as exc:
        raise ConfigErrors(locator.locate(job.sink, exc)) from None
    return schema


class _Locator:
    """Puts a stage's errors at their keys in the job file (read again only when there is one)."""

    def __init__(self, job: Job) -> None:
        self.job = job
        self._doc: Document | None = None

    @property
    def doc(self) -> Document | None:
        if self._doc is None:
            try:
                self._doc = parse(self.job.text, self.job.file, {})
            except ConfigError:  # it was read once to load the job: this can't happen
                return None
        return self._doc

    def locate(self, stage: StageConfig, error: ConfigError) -> list[ConfigError]:
        located = []
        for each in error.errors if isinstance(error, ConfigErrors) else [error]:
            path = (*parse_key_path(stage.key), *parse_key_path(each.key or ""))
            line = column = None
            if each.file is None and self.doc is not None:
                line, column = self.doc.locate(path, key=True)
            located.append(
                ConfigError(
                    each.message,
                    file=each.file or self.job.file,
                    line=each.line or line,
                    column=each.column or column,
                    key=format_key(path),
                )
            )
        return located
