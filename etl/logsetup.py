"""Where log lines go. The only module that calls ``logger.add()``.

Applications (the CLI, a worker) call :func:`configure`; the library itself stays disabled
until they do. Every line of a run carries ``job`` and ``run`` (and ``chunk`` where it
applies) in its ``extra``.
"""

from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path
from typing import Any, Literal, TextIO

from loguru import logger

__all__ = ["add_run_log", "add_run_logs", "configure"]

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
            "message": record["message"],
            **{k: record["extra"][k] for k in _FIELDS if k in record["extra"]},
        }
        error = record["exception"]
        if error is not None and error.type is not None:
            data["exception"] = "".join(traceback.format_exception(error.type, error.value, error.traceback))
        stream.write(json.dumps(data, default=str) + "\n")
        stream.flush()

    return write


def configure(level: str = "INFO", fmt: LogFormat = "text", stream: TextIO | None = None) -> None:
    """Send the toolkit's log lines to ``stream`` (stderr): human lines, or JSON lines."""
    stream = stream or sys.stderr
    logger.remove()
    logger.enable("etl")
    logger.enable("etl_plugins")
    if fmt == "json":
        logger.add(_json_sink(stream), level=level, format="{message}", backtrace=False, diagnose=False)
    else:
        colorize = hasattr(stream, "isatty") and stream.isatty()
        logger.add(stream, level=level, format=_text_format, colorize=colorize, backtrace=False, diagnose=False)


def add_run_log(path: Path, run_id: str) -> int:
    """Also write every line of run ``run_id``, tracebacks included, to ``path``.

    Returns the handler id, for :func:`loguru.logger.remove` when the run is over.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    return logger.add(
        path,
        level="DEBUG",
        format=_file_format,
        filter=lambda record: record["extra"].get("run") == run_id,
        backtrace=False,
        diagnose=False,
        encoding="utf-8",
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
            f.write(str(message))

    return logger.add(write, level="DEBUG", format=_file_format, backtrace=False, diagnose=False)
