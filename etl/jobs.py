"""Loading jobs: read, parse, apply overrides, load the job's plugins, validate."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from etl import config
from etl.errors import ConfigError, ConfigErrors, PluginError
from etl.manager import StageRegistry, get_plugin_manager
from etl.yamldoc import LIMITS, Document, apply_sets, environment, parse

if TYPE_CHECKING:
    import pluggy

    from etl.config import Job

__all__ = ["load", "load_job", "read_job_file", "state_dir", "validate"]


def state_dir() -> Path:
    """Where runs keep their logs and rejects: ``$ETL_HOME``, else ``.etl`` in the working directory."""
    return Path(os.environ.get("ETL_HOME") or ".etl")


def load_job(
    source: str | os.PathLike[str] | None = None,
    *,
    text: str | None = None,
    params: Mapping[str, Any] | None = None,
    sets: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    pm: pluggy.PluginManager | None = None,
    origin: str | None = None,
) -> Job:
    """Read and validate a job.

    Args:
        source: the job file.
        text: the job's YAML, instead of a file.
        origin: with ``text``, the file it was read from (for messages and code paths).
        params: parameter values (text, or values of the parameter's type).
        sets: overrides, ``key.path=value``, as given to ``--set``.
        env: the variables ``${VAR}`` may use; by default the process environment over
            ``.env.local`` over ``.env`` of the working directory.
        pm: a plugin manager to use; by default one is made with the job's ``plugins:``.

    Raises:
        ConfigErrors: every problem found in the job, with file, line and key.
    """
    job, _ = load(source, text=text, params=params, sets=sets, env=env, pm=pm, origin=origin)
    return job


def load(
    source: str | os.PathLike[str] | None,
    *,
    text: str | None,
    params: Mapping[str, Any] | None,
    sets: Sequence[str],
    env: Mapping[str, str] | None,
    pm: pluggy.PluginManager | None,
    origin: str | None = None,
    run: Mapping[str, Any] | None = None,
) -> tuple[Job, pluggy.PluginManager]:
    if (source is None) == (text is None):
        raise TypeError("give either a job file or its text")
    file = str(source) if text is None else origin or "<string>"
    env = environment() if env is None else env
    try:
        doc = parse(read_job_file(file) if text is None else text, file, env)
    except ConfigError as exc:
        raise ConfigErrors([exc]) from None
    applied = apply_sets(doc, sets, env)
    if pm is None:
        pm = _manager_for(doc)
    registry = StageRegistry(pm)
    given = {k: v for k, v in (params or {}).items()}
    return config.validate(doc, registry, params=given, sets=applied, run=run), pm


def read_job_file(file: str) -> str:
    """The text of a job file (UTF-8, any line break read as LF), within the size limit.

    Raises:
        ConfigError: naming the file, when it is missing, unreadable, too big or not UTF-8.
    """
    try:
        # Opened without waiting (a FIFO without a writer reads as empty instead of hanging),
        # then read as usual; at most one byte past the limit is read (think of /dev/zero).
        fd = os.open(file, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        with os.fdopen(fd, "rb") as stream:
            os.set_blocking(fd, True)
            data = stream.read(LIMITS.chars + 1)
    except FileNotFoundError:
        raise ConfigError("no such job file", file=file) from None
    except IsADirectoryError:
        raise ConfigError("is a directory, not a job file", file=file) from None
    except OSError as exc:
        raise ConfigError(f"cannot read the job file: {exc.strerror or exc}", file=file) from None
    if len(data) > LIMITS.chars:
        raise ConfigError(f"the file is larger than {LIMITS.chars:,} bytes, the most a job file may hold", file=file)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ConfigError(
            f"not UTF-8 text (byte 0x{data[exc.start]:02x} can't be decoded); save the file as UTF-8",
            file=file,
            line=line,
        ) from None
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _manager_for(doc: Document) -> pluggy.PluginManager:
    refs = doc.data.get("plugins") if isinstance(doc.data, dict) else None
    refs = refs if isinstance(refs, list) else []
    job_dir = Path(doc.file).resolve().parent if not doc.file.startswith("<") else Path.cwd()
    try:
        return get_plugin_manager(job_plugins=[str(r) for r in refs], job_dir=job_dir)
    except PluginError as exc:
        index = next((i for i, r in enumerate(refs) if repr(str(r)) in str(exc)), None)
        path = ("plugins", index) if index is not None else ("plugins",)
        if index is None and "ETL_PLUGINS" in str(exc):
            raise
        raise ConfigErrors([doc.error(path, str(exc))]) from exc


def validate(paths: Sequence[str | os.PathLike[str]], **kwargs: Any) -> dict[str, list[ConfigError]]:
    """Validate job files; the problems of each, by file (an empty list when it is valid)."""
    problems: dict[str, list[ConfigError]] = {}
    for path in paths:
        try:
            load_job(path, **kwargs)
            problems[str(path)] = []
        except ConfigErrors as exc:
            problems[str(path)] = exc.errors
    return problems
