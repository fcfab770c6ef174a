"""What the BigQuery source and sink share: clients, endpoints, deadlines, errors, parameters.

Endpoints are configurable so that the same code runs against Google and against an emulator:
``BIGQUERY_EMULATOR_HOST`` (``http://host:port``, the REST API; anonymous credentials) and
``BIGQUERY_STORAGE_EMULATOR_HOST`` (``host:port``, the Storage Read API over plain gRPC), or the
stages' ``api_endpoint`` and ``storage_endpoint`` options. Google's clients are imported inside
the functions that need them.

Every call is bounded (``connect_timeout``, ``timeout``, ``statement_timeout``: see
``_deadlines``), through the clients' own mechanisms: each REST request gets requests'
``(connect, read)`` timeouts unless the library sets longer ones of its own (its long polls);
each call is retried by a google.api_core ``Retry`` whose deadline is ``timeout``, each failed
attempt logged with the endpoint; each job carries ``jobTimeoutMs``; the Storage Read API's
channel gives up connecting after ``connect_timeout`` and pings a quiet connection.
"""

from __future__ import annotations

import datetime as dt
import decimal
import importlib
import importlib.util
import os
import re
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Literal

from loguru import logger
from pydantic import Field

from etl import PermanentError, TransientError

from .._deadlines import DeadlineOptions, Deadlines, shown

__all__ = [
    "BigQueryOptions",
    "Clients",
    "classify",
    "decimal_type",
    "parameters",
    "split_table",
]

GOOGLE_REST = "https://bigquery.googleapis.com"
GOOGLE_STORAGE = "bigquerystorage.googleapis.com:443"
Api = Literal["rest", "storage"]


class BigQueryOptions(DeadlineOptions):
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
    """The REST client (jobs, metadata) and, when it can be had, the Storage Read client; the
    deadlines of their calls, and the endpoints that their errors name."""

    def __init__(self, options: BigQueryOptions, log: Any = None) -> None:
        if not _installed("google.cloud.bigquery"):
            raise PermanentError("BigQuery stages need google-cloud-bigquery: pip install 'etl-toolkit[bigquery]'")
        self.options = options
        self.deadlines = Deadlines.of(options)
        self.log = log or logger
        self._bq: Any = None
        self._read: Any = None
        #: Whether a broken read stream is resumed at the row it reached: Google's endpoint
        #: honours ``ReadRows``' offset; an emulator's may not (the one the tests use starts the
        #: stream over), so there a break fails the attempt, and the chunk is read again whole.
        self.resumable = not (options.storage_endpoint or os.environ.get("BIGQUERY_STORAGE_EMULATOR_HOST"))

    # -- endpoints ----------------------------------------------------------------------------

    @property
    def emulated(self) -> bool:
        return bool(self.options.api_endpoint or os.environ.get("BIGQUERY_EMULATOR_HOST"))

    @property
    def rest_endpoint(self) -> str:
        return _masked(self.options.api_endpoint or os.environ.get("BIGQUERY_EMULATOR_HOST") or GOOGLE_REST)

    @property
    def storage_endpoint(self) -> str | None:
        """``host:port`` of the Storage Read API: the option, the emulator's variable, or
        Google's; ``None`` for an emulator whose Storage endpoint is not set."""
        endpoint = self.options.storage_endpoint or os.environ.get("BIGQUERY_STORAGE_EMULATOR_HOST")
        if endpoint:
            return _masked(endpoint)
        return None if self.emulated else GOOGLE_STORAGE

    def storage_missing(self) -> str | None:
        """Why the Storage Read API can't be used here, or ``None`` when it can be tried.

        An emulator's REST endpoint with no Storage endpoint is said at once: Google's Storage
        endpoint can't read an emulator's tables (nor take its anonymous credentials), so
        trying it could only wait and fail."""
        if not _installed("google.cloud.bigquery_storage_v1"):
            return (
                "the Storage Read API client (google-cloud-bigquery-storage) is not installed "
                "(pip install 'etl-toolkit[bigquery]')"
            )
        if self.storage_endpoint is None:
            return (
                f"the REST API is an emulator's ({self.rest_endpoint}) and no Storage Read API endpoint is set: "
                "set BIGQUERY_STORAGE_EMULATOR_HOST (or storage_endpoint:) to the emulator's gRPC host:port, or "
                "read_api: rest to read through REST on purpose"
            )
        return None

    # -- clients ------------------------------------------------------------------------------

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
                client = bigquery.Client(**kwargs)
            except Exception as exc:  # no credentials found, a bad key file
                raise PermanentError(f"BigQuery: cannot make a client: {describe_google(exc)}") from None
            # Every request the library leaves without a timeout (most of them: its default is
            # none) gets ours; those it times itself (its long polls) keep their own.
            adapter = _timed_adapter(self.deadlines.connect, self.deadlines.timeout)
            client._http.mount("https://", adapter)
            client._http.mount("http://", adapter)
            self._bq = client
        return self._bq

    @property
    def project(self) -> str:
        return str(self.bq.project)

    def read_client(self) -> Any:
        """The Storage Read API client, or ``None`` when the package is not installed.

        Raises:
            PermanentError: an emulator's REST endpoint is set and no Storage endpoint.
        """
        if self._read is None:
            if not _installed("google.cloud.bigquery_storage_v1"):
                return None
            endpoint = self.storage_endpoint
            if endpoint is None:
                raise PermanentError(f"BigQuery: {self.storage_missing()}")
            import grpc

            # The generated client: its read_rows is the bare stream, which the source resumes
            # itself, logging each break (the library's wrapper reconnects without end or word).
            from google.cloud.bigquery_storage_v1.services.big_query_read import BigQueryReadClient
            from google.cloud.bigquery_storage_v1.services.big_query_read.transports import (
                BigQueryReadGrpcTransport,
            )

            # As Google's own channel: no limit on a message's size (a batch of rows can be
            # larger than gRPC's default 4 MB); and no window growth, so that a reader slower
            # than the server does not buffer tens of MB ahead (measured: 50 MB less peak
            # memory, no loss of speed). Bounded: a connection not made within connect_timeout
            # fails (gRPC's own default is 20s, then retries without end), and a connection
            # that goes quiet while a stream is read is pinged, and dropped when the pings go
            # unanswered.
            ping = max(30_000, int(self.deadlines.timeout * 500))
            options = [
                ("grpc.max_send_message_length", -1),
                ("grpc.max_receive_message_length", -1),
                ("grpc.http2.bdp_probe", 0),
                ("grpc.min_reconnect_backoff_ms", max(100, int(self.deadlines.connect * 1000))),
                ("grpc.initial_reconnect_backoff_ms", 1000),
                ("grpc.keepalive_time_ms", ping),
                ("grpc.keepalive_timeout_ms", max(5_000, int(self.deadlines.timeout * 500))),
                ("grpc.http2.max_pings_without_data", 0),
            ]
            if self.options.storage_endpoint or os.environ.get("BIGQUERY_STORAGE_EMULATOR_HOST"):
                channel = grpc.insecure_channel(endpoint, options=options)
            else:
                channel = BigQueryReadGrpcTransport.create_channel(
                    endpoint, credentials=self.bq._credentials, options=options
                )
            self._read = BigQueryReadClient(transport=BigQueryReadGrpcTransport(channel=channel))
        return self._read

    def job_config(self, config: Any) -> Any:
        """``config`` with ``statement_timeout`` as the job's own timeout: BigQuery stops it then."""
        config.job_timeout_ms = int(self.deadlines.statement * 1000)
        return config

    def close(self) -> None:
        if self._bq is not None:
            self._bq.close()
            self._bq = None
        self._read = None

    # -- calls --------------------------------------------------------------------------------

    def retry(self, what: str, api: Api = "rest", *, job: bool = False) -> Any:
        """Google's retry policy for one call (``job``: for restarting a failed query job),
        stopped after ``timeout``, logging each failed attempt with the endpoint."""
        from google.api_core import exceptions as g
        from google.api_core.retry import Retry, if_exception_type
        from google.cloud.bigquery import retry as policies

        base = policies.DEFAULT_JOB_RETRY if job else policies.DEFAULT_RETRY
        # The library's own choice of what is worth retrying; for gRPC, a lost connection.
        predicate = base._predicate if api == "rest" else if_exception_type(g.ServiceUnavailable, g.DeadlineExceeded)
        attempts = [0]
        endpoint = self._endpoint(api)

        def failed(exc: Exception) -> None:
            attempts[0] += 1
            self.log.warning(
                "{}: attempt {} failed: {} ({} at {}); retried for up to {} in all",
                what,
                attempts[0],
                self.short(exc),
                _API[api],
                endpoint,
                shown(self.deadlines.timeout),
            )

        retry = Retry(predicate, 1.0, 30.0, 2.0, timeout=self.deadlines.timeout, on_error=failed)
        retry.attempts = attempts  # type: ignore[attr-defined]
        return retry

    @contextmanager
    def call(self, what: str, api: Api = "rest") -> Iterator[Any]:
        """A retry policy for the calls made inside (see :meth:`retry`), and Google's errors
        turned into ours: giving up on an endpoint that does not answer names it, what was
        tried, and what to check."""
        from google.api_core import exceptions as g
        from google.auth import exceptions as auth

        retry = self.retry(what, api)
        started = time.monotonic()
        try:
            yield retry
        except (g.GoogleAPIError, auth.TransportError, OSError) as exc:
            last = exc.cause if isinstance(exc, g.RetryError) and exc.cause is not None else exc
            if not _unreachable(last):
                raise classify(last if isinstance(exc, g.RetryError) else exc, what) from None
            tries = max(1, retry.attempts[0])
            raise TransientError(
                f"{what}: gave up after {tries} attempt(s) in {shown(round(time.monotonic() - started, 1))}: "
                f"{self.short(last)} ({_API[api]} at {self._endpoint(api)}); check {self._hint(api)}"
            ) from None

    def _endpoint(self, api: Api) -> str:
        return self.rest_endpoint if api == "rest" else self.storage_endpoint or GOOGLE_STORAGE

    def _hint(self, api: Api) -> str:
        custom = self.options.storage_endpoint or os.environ.get("BIGQUERY_STORAGE_EMULATOR_HOST")
        if api == "rest" and self.emulated:
            return (
                "that the emulator is up and listening there (BIGQUERY_EMULATOR_HOST or api_endpoint), or raise timeout"
            )
        if api == "rest":
            return (
                "that this machine reaches bigquery.googleapis.com:443 (DNS, a firewall, HTTPS_PROXY) and "
                "oauth2.googleapis.com for its credentials, or raise timeout"
            )
        if custom:
            return (
                "that the emulator's gRPC port is up and listening there (BIGQUERY_STORAGE_EMULATOR_HOST or "
                "storage_endpoint), or set read_api: rest"
            )
        return (
            "that this machine reaches bigquerystorage.googleapis.com:443 over HTTP/2 (DNS, a firewall, a proxy), "
            "or set read_api: rest"
        )

    def short(self, exc: BaseException) -> str:
        """What went wrong with a connection, in a few words."""
        text = " ".join(str(exc).split())
        lower = text.lower()
        name = type(exc).__name__
        if name == "ConnectTimeout" or "before receiving settings" in lower or "connection attempt timed out" in lower:
            return f"no connection within {shown(self.deadlines.connect)}"
        if name in ("ReadTimeout", "DeadlineExceeded", "Timeout") or "read timed out" in lower:
            return f"no answer within {shown(self.deadlines.timeout)}"
        if "connection refused" in lower:
            return "connection refused"
        if "name or service not known" in lower or "failed to resolve" in lower or "dns resolution" in lower:
            return "the host name does not resolve"
        if name == "ChunkedEncodingError" or "incompleteread" in lower or "connection broken" in lower:
            return "the connection dropped mid-answer"
        if "connection reset" in lower or "connection aborted" in lower or "remotedisconnected" in lower:
            return "the connection was dropped"
        return f"{name}: {describe_google(exc)[:200]}"


_API: dict[str, str] = {"rest": "BigQuery", "storage": "the Storage Read API"}


def _unreachable(exc: BaseException) -> bool:
    """Whether ``exc`` says the endpoint did not answer (as opposed to an answer of refusal)."""
    from google.api_core import exceptions as g
    from google.auth import exceptions as auth

    if isinstance(exc, g.DeadlineExceeded):
        return True
    if isinstance(exc, g.ServiceUnavailable):  # gRPC's UNAVAILABLE (no connection), not an HTTP 503
        return not hasattr(getattr(exc, "response", None), "status_code")
    return isinstance(exc, auth.TransportError | OSError)  # requests' errors are OSErrors


def _timed_adapter(connect: float, read: float) -> Any:
    """A requests adapter that gives a request without a timeout ``(connect, read)``."""
    import requests.adapters

    class TimedAdapter(requests.adapters.HTTPAdapter):
        def send(self, request: Any, stream: bool = False, timeout: Any = None, **kwargs: Any) -> Any:
            timeout = (connect, read) if timeout is None else timeout
            return super().send(request, stream=stream, timeout=timeout, **kwargs)

    return TimedAdapter()


def _masked(endpoint: str) -> str:
    """An endpoint without a password (``https://user:pw@host`` → ``https://user:***@host``)."""
    return re.sub(r"(//[^/@:]*:)[^/@]*@", r"\1***@", endpoint)


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a parent package is missing
        return False


# -- errors -------------------------------------------------------------------------------


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
