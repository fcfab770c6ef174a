"""Where log lines go. The only module that calls ``logger.add()``.

Applications (the CLI, a worker) call :func:`configure`; the library itself stays disabled
until they do. Every line of a run carries ``job`` and ``run`` (and ``chunk`` where it
applies) in its ``extra``. Every sink writes lines scrubbed of secrets (:func:`etl.errors.scrub`),
tracebacks included: a driver's error that quotes a password never reaches a terminal or a
run log. :func:`hide_job_secrets` names a job's secrets for it.
"""

from __future__ import annotations

import json
import sys
import traceback
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TextIO

from loguru import logger

from etl.errors import hide, hide_passwords, scrub

if TYPE_CHECKING:
    from etl.config import Job

__all__ = ["add_run_log", "add_run_logs", "configure", "hide_job_secrets"]

LogFormat = Literal["text", "json"]
_FIELDS = ("job", "run", "chunk")


def _text_format(record: dict[str, Any]) -> str:
    extra = record["extra"]
    where = " ".join(f"{k}={extra[k]}" for k in ("run", "chunk") if k in extra)
    where = f" <dim>{where}</dim>" if where else ""
    tail = "\n{exception}" if record["exception"] else ""
    return "<green>{time:HH:mm:ss}</green> <level>{level: <7}</level>" + where + " {message}" + tail + "\n"


def _file_format(record: dict[str, Any]) -> str:
    extra = record["extra"]
    where = " ".join(f"{k}={extra[k]}" for k in _FIELDS if k in extra)
    return "{time:YYYY-MM-DDTHH:mm:ss.SSSZ} {level: <7} " + where + " {message}\n{exception}"


def _json_sink(stream: TextIO):
    def write(message: Any) -> None:
        record = message.record
        data = {
            "time": record["time"].isoformat(),
            "level": record["level"].name,
            "message": scrub(record["message"]),
            **{k: record["extra"][k] for k in _FIELDS if k in record["extra"]},
        }
        error = record["exception"]
        if error is not None and error.type is not None:
            data["exception"] = scrub("".join(traceback.format_exception(error.type, error.value, error.traceback)))
        stream.write(json.dumps(data, default=str) + "\n")
        stream.flush()

    return write


class _Scrubbed:
    """A sink writing each formatted line (its traceback included) to ``stream`` with secrets
    scrubbed; ``owned``: the stream is this sink's, closed when the sink is removed."""

    def __init__(self, stream: TextIO, *, owned: bool = False) -> None:
        self.stream = stream
        self.owned = owned

    def write(self, message: str) -> None:
        self.stream.write(scrub(message))

    def flush(self) -> None:
        self.stream.flush()

    def stop(self) -> None:
        if self.owned:
            self.stream.close()

    def isatty(self) -> bool:
        return hasattr(self.stream, "isatty") and self.stream.isatty()


def configure(level: str = "INFO", fmt: LogFormat = "text", stream: TextIO | None = None) -> None:
    """Send the toolkit's log lines to ``stream`` (stderr): human lines, or JSON lines."""
    stream = stream or sys.stderr
    logger.remove()
    logger.enable("etl")
    logger.enable("etl_plugins")
    if fmt == "json":
        logger.add(_json_sink(stream), level=level, format="{message}", backtrace=False, diagnose=False)
    else:
        sink = _Scrubbed(stream)
        logger.add(sink, level=level, format=_text_format, colorize=sink.isatty(), backtrace=False, diagnose=False)


def add_run_log(path: Path, run_id: str) -> int:
    """Also write every line of run ``run_id``, tracebacks included, to ``path``.

    Returns the handler id, for :func:`loguru.logger.remove` when the run is over.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    return logger.add(
        _Scrubbed(open(path, "a", encoding="utf-8"), owned=True),  # noqa: SIM115 - closed by logger.remove()
        level="DEBUG",
        format=_file_format,
        filter=lambda record: record["extra"].get("run") == run_id,
        colorize=False,
        backtrace=False,
        diagnose=False,
    )


def add_run_logs(home: Path) -> int:
    """Write every line of every run this process works on, tracebacks included, to
    ``home/runs/RUN_ID/run.log`` (a worker's own record of the runs it took part in).

    Returns the handler id, for :func:`loguru.logger.remove`.
    """

    def write(message: Any) -> None:
        run = message.record["extra"].get("run")
        if not run:
            return
        path = home / "runs" / str(run) / "run.log"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as f:
            f.write(scrub(str(message)))

    return logger.add(write, level="DEBUG", format=_file_format, backtrace=False, diagnose=False)


def hide_job_secrets(job: Job) -> None:
    """Scrub ``job``'s secrets from every error and log line of this process
    (:func:`etl.errors.hide`): the values of options declared secret (``SecretStr``), of
    parameters whose name names a secret, and of keys whose name names one (``password``,
    ``token``...) where a ``${VAR}`` reference gave it; and the passwords in the URLs and
    connection strings of every value."""
    from pydantic import BaseModel, SecretStr

    from etl.masking import MASK, mask

    def named_secret(key: Any) -> bool:
        return mask({str(key): "x"}) == {str(key): MASK}

    found: list[str] = []

    def walk(value: Any) -> None:
        if isinstance(value, SecretStr):
            found.append(value.get_secret_value())
            walk(value.get_secret_value())
        elif isinstance(value, BaseModel):
            for name in type(value).model_fields:
                walk(getattr(value, name))
        elif isinstance(value, Mapping):
            for item in value.values():
                walk(item)
        elif isinstance(value, list | tuple):
            for item in value:
                walk(item)
        elif isinstance(value, str):
            hide_passwords(value)

    walk([job.spec, dict(job.extras), *(stage.options for stage in job.stages())])
    params = {k: str(v) for k, v in job.params.items() if v is not None}
    walk(params)
    found += [v for k, v in params.items() if named_secret(k)]
    found += [v for path in job.written if path and named_secret(path[-1]) for v in [_value_at(job, path)] if v]
    hide(*found)


def _value_at(job: Job, path: tuple[Any, ...]) -> str | None:
    """The resolved text at a key path of ``job`` (``("sink", "password")``), if there is one."""
    from pydantic import BaseModel, SecretStr

    head, *rest = path
    if head in ("source", "sink"):
        value: Any = getattr(job, head).options
    elif head == "transforms" and rest and isinstance(rest[0], int) and rest[0] < len(job.transforms):
        value, rest = job.transforms[rest[0]].options, rest[1:]
    elif head in job.extras:
        value = job.extras[head]
    else:
        value = getattr(job.spec, str(head), None)
    for key in rest:
        if isinstance(value, BaseModel):
            value = getattr(value, str(key), None)
        elif isinstance(value, Mapping):
            value = value.get(key)
        elif isinstance(value, list | tuple) and isinstance(key, int) and key < len(value):
            value = value[key]
        else:
            return None
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    return value if isinstance(value, str) else None
