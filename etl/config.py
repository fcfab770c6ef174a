"""Job files, as one import: the models of their keys, the validated :class:`Job`, validation.

Each part has its module, one layer each (see docs/architecture.md): :mod:`etl.models` (what
each key may hold), :mod:`etl.job` (:class:`Job` and :class:`StageConfig`),
:mod:`etl.located` (pydantic's errors located in the file) and :mod:`etl.validation`
(:func:`validate`). This module gathers their names for the layers above it.
"""

from __future__ import annotations

from etl.job import Job, StageConfig
from etl.models import (
    NAME_PATTERN,
    Duration,
    IncrementalSpec,
    JobSpec,
    Kind,
    ParamSpec,
    RetrySpec,
    Thresholds,
)
from etl.validation import Registry, StageType, validate

__all__ = [
    "NAME_PATTERN",
    "Duration",
    "IncrementalSpec",
    "Job",
    "JobSpec",
    "Kind",
    "ParamSpec",
    "Registry",
    "RetrySpec",
    "StageConfig",
    "StageType",
    "Thresholds",
    "validate",
]
