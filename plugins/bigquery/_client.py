"""What the BigQuery source and sink share: clients, endpoints, credentials, errors, parameters.

Endpoints are configurable so that the same code runs against Google and against an emulator:
``BIGQUERY_EMULATOR_HOST`` (``http://host:port``, the REST API; anonymous credentials) and
``BIGQUERY_STORAGE_EMULATOR_HOST`` (``host:port``, the Storage Read API over plain gRPC), or the
stages' ``api_endpoint`` and ``storage_endpoint`` options. Google's clients are imported inside
the functions that need them.
"""

from __future__ import annotations

import datetime as dt
import decimal
import importlib
import importlib.util
import os
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from pydantic import Field

from etl import PermanentError, StageOptions, TransientError

__all__ = [
    "BigQueryOptions",
    "Clients",
    "api_retry",
    "classify",
    "decimal_type",
    "google_errors",
    "parameters",
    "split_table",
]

#: How long one API call (a GET, a job insert, a poll) is retried on 5xx and connection errors
#: before it fails; Google's default is 10 minutes. A failed call fails the chunk, whose own
#: retries (with backoff) take over.
API_DEADLINE = 60.0


class BigQueryOptions(StageOptions):
    project: str | None = Field(
        None, description="the project that runs jobs and is billed (default: the credentials' project)"
    )
    location: str | None = Field(None, description="where jobs run, e.g. US or europe-west1 (default: the data's)")
    credentials: str | None = Field(
        None, description="a service-account JSON key file; without it, Application Default Credentials"
    )
    api_endpoint: str | None = Field(
        None, description="the REST endpoint (default: Google's, or BIGQUERY_EMULATOR_HOST)"
    )
    storage_endpoint: str | None = Field(
        None,
        description="host:port of the Storage Read API over plain gRPC, for an emulator "
        "(default: Google's, or BIGQUERY_STORAGE_EMULATOR_HOST)",
    )


_TABLE = re.compile(r"^`?(?:(?P<project>[\w.:-]+)\.)?(?P<dataset>\w+)\.(?P<table>[\w$-]+)`?$")


def split_table(name: str, default_project: str | None = None) -> tuple[str, str, str]:
    """``project.dataset.table`` (or ``dataset.table`` in the default project) → its parts."""
    match = _TABLE.match(name.strip())
    if not match:
        raise ValueError(f"{name!r} is not a table name; expected project.dataset.table")
    project = match["project"] or default_project
    if not project:
        raise ValueError(f"{name!r} names no project; write project.dataset.table or set `project:`")
    return project, match["dataset"], match["table"]


class Clients:
    """The REST client (jobs, metadata) and, when it can be had, the Storage Read client."""

    def __init__(self, options: BigQueryOptions) -> None:
        if not _installed("google.cloud.bigquery"):
            raise PermanentError("BigQuery stages need google-cloud-bigquery: pip install 'etl-toolkit[bigquery]'")
        self.options = options
        self._bq: Any = None
        self._read: Any = None

    @property
    def emulated(self) -> bool:
        return bool(self.options.api_endpoint or os.environ.get("BIGQUERY_EMULATOR_HOST"))

    @property
    def bq(self) -> Any:
        if self._bq is None:
            from google.api_core.client_options import ClientOptions
            from google.cloud import bigquery

            endpoint = self.options.api_endpoint or os.environ.get("BIGQUERY_EMULATOR_HOST")
            kwargs: dict[str, Any] = {"project": self.options.project, "location": self.options.location}
            if endpoint:
                from google.auth.credentials import AnonymousCredentials

                kwargs["client_options"] = ClientOptions(api_endpoint=endpoint)
                kwargs["credentials"] = AnonymousCredentials()
                kwargs["project"] = self.options.project or "emulator"
            elif self.options.credentials:
                from google.oauth2 import service_account

                kwargs["credentials"] = service_account.Credentials.from_service_account_file(self.options.credentials)
            try:
                self._bq = bigquery.Client(**kwargs)
            except Exception as exc:  # no credentials found, a bad key file
                raise PermanentError(f"BigQuery: cannot make a client: {describe_google(exc)}") from None
        return self._bq

    @property
    def project(self) -> str:
        return str(self.bq.project)

    def read_client(self) -> Any:
        """The Storage Read API client, or ``None`` when it can't be had (then REST pages)."""
        if self._read is None:
            try:
                bigquery_storage_v1 = importlib.import_module("google.cloud.bigquery_storage_v1")
            except ImportError:
                return None
            endpoint = self.options.storage_endpoint or os.environ.get("BIGQUERY_STORAGE_EMULATOR_HOST")
            if endpoint:
                import grpc
                from google.cloud.bigquery_storage_v1.services.big_query_read.transports import (
                    BigQueryReadGrpcTransport,
                )

                # As Google's own channel: no limit on a message's size (a batch of rows can be
                # larger than gRPC's default 4 MB); and no window growth, so that a reader
                # slower than the server does not buffer tens of MB ahead (measured: 50 MB less
                # peak memory, no loss of speed).
                options = [
                    ("grpc.max_send_message_length", -1),
                    ("grpc.max_receive_message_length", -1),
                    ("grpc.http2.bdp_probe", 0),
                ]
                transport = BigQueryReadGrpcTransport(channel=grpc.insecure_channel(endpoint, options=options))
                self._read = bigquery_storage_v1.BigQueryReadClient(transport=transport)
            else:
                self._read = bigquery_storage_v1.BigQueryReadClient(credentials=self.bq._credentials)
        return self._read

    def close(self) -> None:
        if self._bq is not None:
            self._bq.close()
            self._bq = None
        self._read = None


def api_retry() -> Any:
    """The retry policy of our REST calls: Google's, with a deadline of ``API_DEADLINE``."""
    from google.cloud import bigquery

    return bigquery.DEFAULT_RETRY.with_deadline(API_DEADLINE)


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a parent package is missing
        return False


# -- errors -------------------------------------------------------------------------------


@contextmanager
def google_errors(what: str) -> Iterator[None]:
    """Turn what Google's clients raise (API errors, connection errors) into our errors."""
    from google.api_core import exceptions as g

    try:
        yield
    except (g.GoogleAPIError, OSError) as exc:
        raise classify(exc, what) from None


_TRANSIENT_REASONS = {"rateLimitExceeded", "quotaExceeded", "backendError", "internalError", "jobBackendError"}


def describe_google(exc: BaseException) -> str:
    """What Google said, without the request's method and URL: the first error's message and
    reason (``Syntax error: ... (invalidQuery)``), or the exception's message."""
    errors = [e for e in getattr(exc, "errors", None) or [] if isinstance(e, dict) and e.get("message")]
    if errors:
        first = errors[0]
        message = f"{first['message']} ({first['reason']})" if first.get("reason") else str(first["message"])
    else:
        message = str(getattr(exc, "message", None) or exc)
        message = re.sub(r"^(GET|POST|PUT|PATCH|DELETE) \S+: ", "", message)
    return " ".join(message.split())[:500]


def classify(exc: BaseException, what: str) -> Exception:
    """A Google error as ours: quota, rate and 5xx are transient (retried with backoff); a
    missing project, dataset or table, a permission error or a bad query are permanent."""
    from google.api_core import exceptions as g

    text = f"{what}: {describe_google(exc)}"
    reasons = {e.get("reason") for e in getattr(exc, "errors", None) or [] if isinstance(e, dict)}
    if isinstance(
        exc, g.TooManyRequests | g.ServerError | g.ServiceUnavailable | g.GatewayTimeout | g.DeadlineExceeded
    ):
        return TransientError(text)
    if reasons & _TRANSIENT_REASONS:
        return TransientError(text)
    if isinstance(exc, g.NotFound):
        return PermanentError(f"{text} (check the project, dataset and table names, and `location:`)")
    if isinstance(exc, g.Forbidden):
        return PermanentError(f"{text} (the credentials lack a permission)")
    if isinstance(exc, g.RetryError | OSError) or "UNAVAILABLE" in text:
        return TransientError(text)
    return PermanentError(text)


# -- parameters ----------------------------------------------------------------------------

_PARAM = re.compile(r"(?<![\w@])@([A-Za-z_]\w*)")


def parameters(sql: str, params: Mapping[str, Any]) -> list[Any]:
    """BigQuery named query parameters for the ``@name``s ``sql`` uses, typed from the values.

    Raises:
        PermanentError: ``sql`` uses a name that is not one of the job's parameters.
    """
    from google.cloud import bigquery

    from etl import did_you_mean

    result = []
    for name in dict.fromkeys(_PARAM.findall(sql)):
        if name not in params:
            hint = did_you_mean(name, params) or (f"; the job's params: {', '.join(params)}" if params else "")
            raise PermanentError(f"@{name} is not a parameter of the job{hint}")
        value = params[name]
        result.append(bigquery.ScalarQueryParameter(name, _bq_type(value), value))
    return result


def _bq_type(value: Any) -> str:
    if isinstance(value, bool):
        return "BOOL"
    if isinstance(value, int):
        return "INT64"
    if isinstance(value, float):
        return "FLOAT64"
    if isinstance(value, decimal.Decimal):
        return decimal_type(value)
    if isinstance(value, dt.datetime):
        return "TIMESTAMP" if value.tzinfo else "DATETIME"
    if isinstance(value, dt.date):
        return "DATE"
    return "STRING"


def decimal_type(value: decimal.Decimal) -> str:
    """``NUMERIC`` for a decimal that it holds exactly (29 digits before the point, 9 after),
    ``BIGNUMERIC`` for one that it doesn't."""
    _, digits, exponent = value.as_tuple()
    if not isinstance(exponent, int):  # NaN, Infinity: neither holds them; BigQuery says so
        return "NUMERIC"
    scale = max(0, -exponent)
    whole = max(0, len(digits) + exponent)
    return "NUMERIC" if scale <= 9 and whole <= 29 else "BIGNUMERIC"


def param_names(sql: str) -> list[str]:
    return list(dict.fromkeys(_PARAM.findall(sql)))
