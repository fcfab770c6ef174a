"""Transform ``python``: a function of yours, given by its dotted path.

``function: mypackage.cleaning:fix_units`` (or ``mypackage.cleaning.fix_units``, or a file
beside the job, ``transforms.py:fix_units``). The function takes a ``pyarrow.RecordBatch`` and
returns a ``RecordBatch`` or ``Table``; with ``rowwise: true`` it takes one row as a dict and
returns a dict, or ``None`` to drop the row (the slow path: fine for small jobs).

``args:`` are passed as keyword arguments; a function with a ``context`` parameter also gets the
stage context (the job's ``params``, the run id).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
from pydantic import Field, ValidationInfo, field_validator

from etl import PermanentError, StageOptions, Transform, hookimpl


def load_function(ref: str, job_dir: Path | None) -> Callable[..., Any]:
    """The callable named by ``module:attr``, ``module.attr`` or ``file.py:attr``.

    Raises:
        ValueError: saying which part could not be found.
    """
    module_name, sep, attr = ref.partition(":")
    if not sep:
        module_name, _, attr = ref.rpartition(".")
    if not module_name or not attr:
        raise ValueError(f"{ref!r} is not a function path; expected module:function, e.g. mypkg.clean:fix_units")
    if module_name.endswith(".py"):
        path = Path(module_name)
        candidates = [path] if path.is_absolute() else [(job_dir or Path.cwd()) / path, Path.cwd() / path]
        found = next((p for p in candidates if p.is_file()), None)
        if found is None:
            raise ValueError(
                f"file {module_name!r} not found (looked in {', '.join(str(c.parent) for c in candidates)})"
            )
        unique = "etl_python_" + hashlib.sha1(str(found.resolve()).encode()).hexdigest()[:10]
        module = sys.modules.get(unique)
        if module is None:
            spec = importlib.util.spec_from_file_location(unique, found)
            assert spec and spec.loader
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            sys.modules[unique] = module
    else:
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise ValueError(f"cannot import {module_name!r}: {exc}") from None
    function = getattr(module, attr, None)
    if not callable(function):
        raise ValueError(f"{module_name!r} has no function {attr!r}")
    return function


class PythonOptions(StageOptions):
    function: str = Field(
        description="module:function, module.function or file.py:function", examples=["mypkg.cleaning:fix_units"]
    )
    args: dict[str, Any] = Field(default_factory=dict, description="keyword arguments for the function")
    rowwise: bool = Field(False, description="call the function once per row, with a dict")

    @field_validator("function")
    @classmethod
    def _importable(cls, value: str, info: ValidationInfo) -> str:
        job_dir = (info.context or {}).get("job_dir")
        load_function(value, job_dir)
        return value


class Python(Transform):
    """A Python function over each batch (or each row, with rowwise: true)."""

    name = "python"
    Options = PythonOptions
    options: PythonOptions

    def __init__(self, options: PythonOptions, context) -> None:
        super().__init__(options, context)
        try:
            self.function = load_function(options.function, context.job_dir)
        except ValueError as exc:
            raise PermanentError(f"{context.label}: {exc}") from None
        self.kwargs = dict(options.args)
        if "context" in inspect.signature(self.function).parameters:
            self.kwargs["context"] = context

    def apply(self, batch: pa.RecordBatch) -> pa.RecordBatch | pa.Table:
        if self.options.rowwise:
            return self._rows(batch)
        out = self.function(batch, **self.kwargs)
        if isinstance(out, pa.RecordBatch | pa.Table):
            return out
        if hasattr(out, "to_records") and hasattr(out, "columns"):  # a pandas DataFrame
            return pa.Table.from_pandas(out, preserve_index=False)
        raise PermanentError(
            f"{self.context.label}: {self.options.function} returned {type(out).__name__}; "
            "expected a pyarrow RecordBatch or Table"
        )

    def _rows(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        kept: list[dict[str, Any]] = []
        failed: list[int] = []
        reasons: list[str] = []
        for position, row in enumerate(batch.to_pylist()):
            try:
                out = self.function(row, **self.kwargs)
            except Exception as exc:  # the row is rejected, with the error as its reason
                failed.append(position)
                reasons.append(f"{type(exc).__name__}: {exc}")
                continue
            if out is not None:
                kept.append(out)
        if failed:
            self.context.reject(batch.take(failed), failed, reasons)
        if not kept:
            return batch.slice(0, 0)
        try:
            return pa.RecordBatch.from_pylist(kept)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            raise PermanentError(f"{self.context.label}: the rows returned don't form a table: {exc}") from None


@hookimpl
def etl_register_transforms() -> list[type[Transform]]:
    return [Python]
