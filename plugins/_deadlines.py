"""How long the database stages wait on a server: three options, their defaults from the
environment, and durations as log lines show them.

The ``postgres`` and ``bigquery`` stages take the same options, mapped onto each client's own
mechanism (libpq's ``connect_timeout``, keepalives and ``statement_timeout``; requests'
connect and read timeouts, google.api_core's retry deadline, BigQuery's job timeout, gRPC's
connection deadline):

* ``connect_timeout``: the longest opening a connection may take;
* ``timeout``: the longest a call waits on a server that has gone quiet (no answer to a
  request, a connection gone silent); a call's retries stop after as long again;
* ``statement_timeout``: the longest one statement (PostgreSQL) or job (BigQuery) may run.

Each is the stage's option when the job sets it, else the environment's ``ETL_CONNECT_TIMEOUT``,
``ETL_TIMEOUT`` or ``ETL_STATEMENT_TIMEOUT`` (read where the stage runs: a worker's own), else
the built-in default. The job wins: it knows its loads; the environment sets the default for
the jobs of a machine.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from pydantic import Field, field_validator

from etl import Duration, PermanentError, StageOptions, parse_duration

__all__ = ["DEFAULTS", "ENVIRONMENT", "DeadlineOptions", "Deadlines", "env_duration", "shown"]

Name = Literal["connect_timeout", "timeout", "statement_timeout"]
Origin = Literal["job", "environment", "default"]

#: The built-in defaults, in seconds.
DEFAULTS: dict[Name, float] = {"connect_timeout": 30.0, "timeout": 60.0, "statement_timeout": 3600.0}
#: The environment variable that sets each default.
ENVIRONMENT: dict[Name, str] = {
    "connect_timeout": "ETL_CONNECT_TIMEOUT",
    "timeout": "ETL_TIMEOUT",
    "statement_timeout": "ETL_STATEMENT_TIMEOUT",
}


class DeadlineOptions(StageOptions):
    """The options of a stage that talks to a server."""

    connect_timeout: Duration | None = Field(
        None,
        description="the longest opening a connection may take (default: ETL_CONNECT_TIMEOUT, else 30s)",
        examples=["10s"],
    )
    timeout: Duration | None = Field(
        None,
        description="the longest a call waits on a server that has gone quiet before it is retried or fails "
        "(default: ETL_TIMEOUT, else 60s)",
        examples=["2m"],
    )
    statement_timeout: Duration | None = Field(
        None,
        description="the longest one statement (PostgreSQL) or job (BigQuery) may run (default: "
        "ETL_STATEMENT_TIMEOUT, else 1h)",
        examples=["6h"],
    )

    @field_validator("connect_timeout", "timeout", "statement_timeout")
    @classmethod
    def _positive(cls, value: float | None) -> float | None:
        if value is not None and value <= 0:
            raise ValueError("must be more than 0")
        return value


@dataclass(frozen=True)
class Deadlines:
    """The deadlines a stage keeps, in seconds, and where each came from."""

    connect: float
    timeout: float
    statement: float
    origins: Mapping[Name, Origin] = field(default_factory=dict)

    @classmethod
    def of(cls, options: DeadlineOptions, environ: Mapping[str, str] | None = None) -> Deadlines:
        """The deadlines of ``options``: the job's, else the environment's, else the defaults.

        Raises:
            PermanentError: an ``ETL_…`` variable that is not a duration, naming it.
        """
        env = os.environ if environ is None else environ
        values: dict[Name, float] = {}
        origins: dict[Name, Origin] = {}
        for name, default in DEFAULTS.items():
            given = getattr(options, name)
            if given is not None:
                values[name], origins[name] = float(given), "job"
            elif (from_env := env_duration(ENVIRONMENT[name], env)) is not None:
                values[name], origins[name] = from_env, "environment"
            else:
                values[name], origins[name] = default, "default"
        return cls(values["connect_timeout"], values["timeout"], values["statement_timeout"], origins)

    def origin(self, name: Name) -> Origin:
        return self.origins.get(name, "default")


def env_duration(name: str, env: Mapping[str, str] | None = None) -> float | None:
    """The duration in the environment variable ``name``, or ``None`` when it is unset or empty.

    Raises:
        PermanentError: naming the variable, when it holds no duration more than 0.
    """
    raw = ((os.environ if env is None else env).get(name) or "").strip()
    if not raw:
        return None
    try:
        value = parse_duration(raw)
    except ValueError as exc:
        raise PermanentError(f"{name}: {exc}") from None
    if value <= 0:
        raise PermanentError(f"{name}: {raw!r} must be more than 0, e.g. 30s")
    return value


def shown(seconds: float) -> str:
    """A duration as written in a job: ``500ms``, ``2s``, ``1.5s``, ``5m``, ``1h``, ``90s``."""
    if seconds < 1:
        return f"{seconds * 1000:g}ms"
    for unit, size in (("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"
