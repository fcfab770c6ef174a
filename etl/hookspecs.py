"""The hooks a plugin can implement.

Two families. **Registration** hooks return the stage classes a plugin supplies; they are
called once when the plugin manager is built. **Lifecycle** hooks observe runs: they fire in
the process that does the work they describe (the chunk hooks in whichever process runs the
chunk). A hook implementation may accept any subset of a hook's arguments.

Implement a hook with the :data:`hookimpl` marker::

    from etl import hookimpl

    @hookimpl
    def etl_after_chunk_run(run, chunk, result):
        print(run.id, chunk.index, result.rows_written)

Every hook's docstring is the source of truth for ``docs/plugin_hooks.md``; a test keeps the two
in step.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from etl.config import Job
    from etl.runs import ChunkResult, RunInfo, RunResult
    from etl.stages import Chunk, Sink, Source, Transform

PROJECT = "etl"

#: Marks a hook specification (for this module, and for plugins that add hooks of their own).
hookspec = pluggy.HookspecMarker(PROJECT)
#: Marks a hook implementation in a plugin.
hookimpl = pluggy.HookimplMarker(PROJECT)


# -- Registration -------------------------------------------------------------------------


@hookspec
def etl_register_sources() -> list[type[Source]]:
    """Register source stages.

    Returns:
        The :class:`~etl.stages.Source` subclasses this plugin supplies. Each one's ``name``
        is the ``type:`` that selects it in a job file; two plugins may not register the same
        name.
    """


@hookspec
def etl_register_transforms() -> list[type[Transform]]:
    """Register transform stages.

    Returns:
        The :class:`~etl.stages.Transform` subclasses this plugin supplies.
    """


@hookspec
def etl_register_sinks() -> list[type[Sink]]:
    """Register sink stages.

    Returns:
        The :class:`~etl.stages.Sink` subclasses this plugin supplies.
    """


@hookspec
def etl_register_job_keys() -> dict[str, Any]:
    """Register top-level keys of job files that this plugin reads (such as ``notify:``).

    Returns:
        ``{key: type}``: each key's value in a job file is validated by its type (a pydantic
        model, or a type such as ``list[Model]``), reported like any other key when it is
        wrong, described in the JSON Schema, and handed to the lifecycle hooks as
        ``job.extras[key]`` (absent when the job doesn't set it). A key may not be one of the
        job's own, nor registered by two plugins.
    """


# -- Job lifecycle ------------------------------------------------------------------------


@hookspec
def etl_before_job_run(job: Job, run: RunInfo) -> None:
    """Called once a run is planned, before its first chunk.

    Args:
        job: the validated job.
        run: the run: id, parameters, row count and chunk plan.
    """


@hookspec
def etl_after_job_run(job: Job, run: RunInfo, result: RunResult) -> None:
    """Called when a run has completed: every chunk written and the sink finalized.

    Args:
        job: the validated job.
        run: the run.
        result: its counters and timings.
    """


@hookspec
def etl_on_job_error(job: Job, run: RunInfo, error: BaseException, result: RunResult) -> None:
    """Called when a run has failed: a chunk failed for good, finalizing failed, too many rows
    were rejected, or the reaper gave up on a chunk whose workers kept dying (then in the worker
    whose reaper failed it). What the sink staged is kept, so that ``etl retry`` resumes the run;
    ``etl cancel`` drops it (and :func:`etl_on_job_cancel` follows).

    Args:
        job: the validated job.
        run: the run.
        error: the error that failed it (the last one of the failed chunk).
        result: its counters and timings up to the failure.
    """


@hookspec
def etl_on_job_cancel(job: Job, run: RunInfo, result: RunResult) -> None:
    """Called when a run was cancelled (``etl cancel``, Ctrl-C, the dashboard), once its sink has
    dropped what the run staged.

    Args:
        job: the validated job.
        run: the run.
        result: its counters and timings up to the cancel (``state`` is ``cancelled``).
    """


# -- Chunk lifecycle ----------------------------------------------------------------------


@hookspec
def etl_before_chunk_run(job: Job, run: RunInfo, chunk: Chunk, attempt: int) -> None:
    """Called before each attempt at a chunk.

    Args:
        job: the validated job.
        run: the run the chunk belongs to.
        chunk: the chunk's descriptor.
        attempt: 1 for the first attempt, 2 for the first retry, and so on.
    """


@hookspec
def etl_after_chunk_run(job: Job, run: RunInfo, chunk: Chunk, result: ChunkResult) -> None:
    """Called after a chunk was written successfully.

    Args:
        job: the validated job.
        run: the run the chunk belongs to.
        chunk: the chunk's descriptor.
        result: rows read, written and rejected, duration and attempt.
    """


@hookspec
def etl_on_chunk_error(
    job: Job,
    run: RunInfo,
    chunk: Chunk,
    error: BaseException,
    attempt: int,
    will_retry: bool,
) -> None:
    """Called when an attempt at a chunk failed.

    Args:
        job: the validated job.
        run: the run the chunk belongs to.
        chunk: the chunk's descriptor.
        error: what went wrong.
        attempt: the attempt that failed (1 for the first).
        will_retry: whether the chunk will be tried again (the error is transient and
            attempts remain).
    """
