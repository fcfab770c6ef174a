"""etl: YAML jobs that move big tables in chunks, through stages that plugins supply.

The public API for job authors and embedding programs (:func:`load_job`, :func:`run`,
:func:`validate`) and for plugin authors (the stage contracts, :data:`hookimpl`, errors).
Importing it loads no queue, database or cloud client.
"""

from loguru import logger

from etl.api import load_job, plan, run, validate
from etl.config import Duration, Job, StageConfig
from etl.errors import (
    ConfigError,
    ConfigErrors,
    EtlError,
    Interrupted,
    JobFailed,
    PermanentError,
    PluginError,
    RejectedRows,
    StageError,
    TransientError,
    UsageError,
    did_you_mean,
)
from etl.hookspecs import hookimpl, hookspec
from etl.incremental import Window
from etl.runs import ChunkResult, RunInfo, RunResult
from etl.stages import Chunk, Plan, RowCount, Sink, Source, StageContext, StageOptions, Transform
from etl.units import parse_duration, parse_type
from etl.version import __version__

# A library stays quiet until the application that embeds it opts in: logger.enable("etl"),
# and logger.enable("etl_plugins") for the built-in stages' and plugins' own lines.
logger.disable("etl")
logger.disable("etl_plugins")

__all__ = [
    "Chunk",
    "ChunkResult",
    "ConfigError",
    "ConfigErrors",
    "Duration",
    "EtlError",
    "Interrupted",
    "Job",
    "JobFailed",
    "PermanentError",
    "Plan",
    "PluginError",
    "RejectedRows",
    "RowCount",
    "RunInfo",
    "RunResult",
    "Sink",
    "Source",
    "StageConfig",
    "StageContext",
    "StageError",
    "StageOptions",
    "Transform",
    "TransientError",
    "UsageError",
    "Window",
    "__version__",
    "did_you_mean",
    "hookimpl",
    "hookspec",
    "load_job",
    "parse_duration",
    "parse_type",
    "plan",
    "run",
    "validate",
]
