"""Connections to Redis: a pool for a URL, or for the primary that a Sentinel set names; every
call bounded, every retry logged.

Each call has a connect deadline (``ETL_REDIS_CONNECT_SECONDS``) and a reply timeout
(``ETL_REDIS_TIMEOUT_SECONDS``), and is tried again with backoff while
``ETL_REDIS_RETRY_SECONDS`` last, one warning line per retry naming the Redis (its password
masked) and the attempt. Through Sentinel, each new connection asks the sentinels for the
primary first, so a retry after a failover finds the new one. The run store and Huey share
these settings; Huey's blocking read gets its own wait on top of the reply timeout (a socket
timeout shorter than ``BRPOP``'s would drop the connection, and the message it was popping).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from loguru import logger

from etl.errors import describe
from etl.settings import QueueSettings

if TYPE_CHECKING:
    import redis

__all__ = ["Connector", "release"]

T = TypeVar("T")


def _retry_class() -> type:
    """:class:`redis.retry.Retry` with a deadline and a line per retry (made on first use:
    ``import etl`` does not import redis)."""
    import socket

    from redis.backoff import ExponentialBackoff
    from redis.exceptions import ConnectionError, TimeoutError
    from redis.retry import Retry

    class LoggedRetry(Retry):
        """Try again with exponential backoff (0.1 s doubling to 2 s) until ``seconds`` have
        passed since the call began; log each retry. redis-py copies it into each connection,
        which one thread uses at a time, and nests calls (a command's retry reconnects, and
        connecting retries too): the outermost call's deadline holds for the nested ones."""

        def __init__(self, display: str, seconds: float, only_failovers: bool = False) -> None:
            super().__init__(
                ExponentialBackoff(cap=2.0, base=0.1), 1_000_000, (ConnectionError, TimeoutError, socket.timeout)
            )
            self.display, self.seconds, self.only_failovers = display, seconds, only_failovers
            self.deadline: float | None = None

        def call_with_retry(
            self,
            do: Callable[[], T],
            fail: Callable[..., Any],
            is_retryable: Callable[[Exception], bool] | None = None,
            with_failure_count: bool = False,
        ) -> T:
            outermost = self.deadline is None
            if outermost:
                self.deadline = time.monotonic() + self.seconds
            try:
                failures = 0
                while True:
                    try:
                        return do()
                    except self._supported_errors as error:
                        if is_retryable and not is_retryable(error):
                            raise
                        if self.only_failovers and getattr(error, "sentinels_answered", None) is False:
                            raise  # no sentinel answered, or none knows the service: a wrong address
                        failures += 1
                        if with_failure_count:
                            fail(error, failures)
                        else:
                            fail(error)
                        pause = self._backoff.compute(failures)
                        if time.monotonic() + pause > (self.deadline or 0):
                            raise
                        logger.warning(
                            "Redis at {}: attempt {} failed ({}); trying again in {:.1f}s",
                            self.display,
                            failures,
                            describe(error),
                            pause,
                        )
                        time.sleep(pause)
            finally:
                if outermost:
                    self.deadline = None

    return LoggedRetry


_LOGGED_RETRY: type | None = None


def logged_retry(display: str, seconds: float, only_failovers: bool = False) -> Any:
    """A redis-py ``Retry`` that retries for ``seconds`` (0: never), logging each retry;
    ``only_failovers``: not when the sentinels can't be reached or don't know the service."""
    global _LOGGED_RETRY
    if _LOGGED_RETRY is None:
        _LOGGED_RETRY = _retry_class()
    return _LOGGED_RETRY(display, seconds, only_failovers)


def _sentinel_class() -> type:
    """redis-py's Sentinel manager, whose failure to find the primary says, in a few words,
    what each sentinel answered (redis-py's own message holds each client's full repr)."""
    from redis.exceptions import ConnectionError, TimeoutError
    from redis.sentinel import MasterNotFoundError, Sentinel

    class Sentinels(Sentinel):
        def discover_master(self, service_name: str) -> tuple[str, int]:
            answers = []
            for number, sentinel in enumerate(self.sentinels):
                where = "{host}:{port}".format_map(sentinel.connection_pool.connection_kwargs)
                try:
                    state = sentinel.sentinel_masters().get(service_name)
                except (ConnectionError, TimeoutError) as exc:
                    answers.append(f"{where}: {describe(exc)}")
                    continue
                if state and self.check_master_state(state, service_name):
                    self.sentinels[0], self.sentinels[number] = sentinel, self.sentinels[0]  # ask it first next time
                    return state["ip"], state["port"]
                answers.append(f"{where}: {'no such service' if not state else 'its primary is down'}")
            error = MasterNotFoundError(f"no sentinel names a primary for {service_name!r} ({'; '.join(answers)})")
            error.sentinels_answered = any(a.endswith("its primary is down") for a in answers)  # a failover
            raise error

    return Sentinels


class Connector:
    """Makes the Redis clients of one set of queue settings (``kind == "redis"``)."""

    def __init__(self, settings: QueueSettings) -> None:
        self.settings = settings
        self.options = settings.redis
        self.display = settings.display
        self._sentinel: Any = None

    def client(self, *, retry: bool = True, blocking: float = 0.0) -> redis.Redis:
        """A client of the primary; ``blocking`` is the longest a blocking command of this
        client waits on the server. ``retry=False`` (a check at start) fails at the first error
        (nothing listening, a wrong address), but through Sentinel it rides out a failover in
        progress: sentinels that answer, naming a primary that is down or not yet reachable."""
        import redis

        return redis.Redis(connection_pool=self.pool(retry=retry, blocking=blocking))

    def pool(self, *, retry: bool = True, blocking: float = 0.0) -> redis.ConnectionPool:
        """A connection pool to the primary (Huey is handed one)."""
        import redis

        options = self.options
        kwargs: dict[str, Any] = {
            "socket_connect_timeout": options.connect,
            "socket_timeout": options.timeout + blocking,
            "retry": logged_retry(
                self.display,
                options.retry if retry or self.settings.sentinel else 0.0,
                only_failovers=not retry,
            ),
            "retry_on_error": [redis.ConnectionError, redis.TimeoutError],
            "health_check_interval": 15,
        }
        if self.settings.sentinel is None:
            return redis.ConnectionPool.from_url(self.settings.url, **kwargs)
        target = self.settings.sentinel
        tls = self._tls()
        client = self._sentinels().master_for(
            target.service, db=target.db, username=target.username, password=target.password, **tls, **kwargs
        )
        return client.connection_pool

    def _tls(self) -> dict[str, Any]:
        target = self.settings.sentinel
        if target is None or not target.tls:
            return {}
        options: dict[str, Any] = {"ssl": True, **dict(target.tls_options)}
        if "ssl_check_hostname" in options:
            options["ssl_check_hostname"] = str(options["ssl_check_hostname"]).lower() in {"1", "true", "yes"}
        return options

    def _sentinels(self) -> Any:
        """The Sentinel manager, made once: each sentinel is asked once per discovery, with the
        connect and reply timeouts and no retry of its own (the next sentinel is the retry)."""
        if self._sentinel is None:
            from redis.backoff import NoBackoff
            from redis.retry import Retry

            target = self.settings.sentinel
            assert target is not None
            self._sentinel = _sentinel_class()(
                list(target.addresses),
                sentinel_kwargs={
                    "socket_connect_timeout": self.options.connect,
                    "socket_timeout": self.options.timeout,
                    "retry": Retry(NoBackoff(), 0),
                    "username": target.sentinel_username,
                    "password": target.sentinel_password,
                    **self._tls(),
                },
            )
        return self._sentinel

    def unreachable(self, error: BaseException, seconds: float, check: bool = False) -> str:
        """The line that says a call gave up (``check``: the check at start, which does not
        retry): what was tried, for how long, and what to check."""
        options, target = self.options, self.settings.sentinel
        timeouts = f"connect timeout {options.connect:g}s, reply timeout {options.timeout:g}s"
        if check:
            tried = f"checked at start, for {seconds:.1f}s: {timeouts}; ETL_REDIS_*"
        else:
            tried = f"tried for {seconds:.1f}s: {timeouts}, retries for up to {options.retry:g}s; ETL_REDIS_*"
        if target is None:
            check = f"check that Redis is up at that address and reachable from here ({self.settings.origin})"
        else:
            check = (
                f"check that the sentinels ({target.hosts}) are up and agree on a primary for {target.service!r} "
                f"(redis-cli -p PORT SENTINEL get-master-addr-by-name {target.service}), and that it is reachable "
                "from here"
            )
        return f"cannot reach Redis at {self.display}: {describe(error)} ({tried}); {check}"


def release(pool: Any) -> None:
    """Close a pool's connections, and a Sentinel pool's connections to its sentinels: a
    client made on a pool of its caller's leaves them open when it closes."""
    pool.disconnect()
    manager = getattr(pool, "sentinel_manager", None)
    for sentinel in getattr(manager, "sentinels", ()):
        sentinel.connection_pool.disconnect()
