"""Where the queue and the run state live, and how long Redis may take: settings from the
environment.

``ETL_QUEUE_URL`` names it: ``redis://[user:password@]host[:port][/db]``, ``rediss://…`` (TLS),
``unix:///path/to/redis.sock[?db=N]``, a Sentinel set
``redis+sentinel://[user:password@]host:port[,host:port…]/service[/db]`` (``rediss+sentinel://``
with TLS), or a directory path (or ``file://…``) for the embedded default, which keeps both the
queue and the run state in SQLite files there. Without it, the familiar ``REDIS_HOST``,
``REDIS_PORT``, ``REDIS_PASSWORD``, ``REDIS_DB`` and ``REDIS_USERNAME`` (a Redis ACL user) are
used when ``REDIS_HOST`` is set, or ``REDIS_SENTINELS`` (``host:port,…``) with
``REDIS_SENTINEL_SERVICE`` for a Sentinel set; otherwise the embedded default lives in
``$ETL_HOME`` (``.etl``). The sentinels' own credentials, if they have any, come from
``REDIS_SENTINEL_USERNAME`` and ``REDIS_SENTINEL_PASSWORD``.

``ETL_REDIS_*`` bound every Redis call (:class:`RedisOptions`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal
from urllib.parse import parse_qs, quote, unquote, urlsplit

from etl.errors import UsageError, did_you_mean

__all__ = ["QueueSettings", "RedisOptions", "SentinelSet", "env_count", "env_seconds", "queue_settings"]

_SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
_SCHEMES = ("redis", "rediss", "unix", "file", *_SENTINEL_SCHEMES)
_CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster", "cluster")
#: What a ``rediss+sentinel://`` URL may say about TLS in its query string (redis-py's names).
TLS_OPTIONS = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs", "ssl_check_hostname")
_TRUE = {"1", "true", "yes"}


@dataclass(frozen=True)
class RedisOptions:
    """How long a Redis call may take, and how many replicas confirm each change of the run
    store before it counts (``ETL_REDIS_*``; every figure in seconds).

    Attributes:
        connect: ``ETL_REDIS_CONNECT_SECONDS``: to open a connection (each attempt).
        timeout: ``ETL_REDIS_TIMEOUT_SECONDS``: for a reply to come, once a command is sent (a
            blocking read, Huey's, is given its own wait on top).
        retry: ``ETL_REDIS_RETRY_SECONDS``: how long a failed call is tried again, with
            backoff, before it gives up (``0``: never).
        wait_replicas: ``ETL_REDIS_WAIT_REPLICAS``: replicas that must have each change of the
            run store (``WAIT``) before it counts; ``1`` with Sentinel by default, else ``0``.
        wait: ``ETL_REDIS_WAIT_SECONDS``: how long a change waits for them.
    """

    connect: float = 5.0
    timeout: float = 10.0
    retry: float = 10.0
    wait_replicas: int = 0
    wait: float = 1.0


@dataclass(frozen=True)
class SentinelSet:
    """A Redis watched by Sentinel: where to ask for its primary, and how to talk to it.

    Attributes:
        addresses: the sentinels, ``(host, port)``.
        service: the name the sentinels monitor the primary under (``sentinel monitor NAME …``).
        db: the database number on the primary.
        username, password: the primary's (and replicas') ACL user and password.
        tls: TLS to the sentinels and to the primary (``rediss+sentinel://``).
        tls_options: redis-py's ``ssl_*`` options from the URL's query string.
        sentinel_username, sentinel_password: the sentinels' own credentials
            (``REDIS_SENTINEL_USERNAME``, ``REDIS_SENTINEL_PASSWORD``), when they require any.
    """

    addresses: tuple[tuple[str, int], ...]
    service: str
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: bool = False
    tls_options: tuple[tuple[str, str], ...] = ()
    sentinel_username: str | None = None
    sentinel_password: str | None = field(default=None, repr=False)

    @property
    def hosts(self) -> str:
        """The sentinels as ``host:port,host:port``, for messages."""
        return ",".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in self.addresses)


@dataclass(frozen=True)
class QueueSettings:
    """Resolved queue settings.

    Attributes:
        kind: ``redis`` or ``embedded``.
        url: the Redis URL (``redis``), with the password in it; a ``redis+sentinel://`` URL
            when ``sentinel`` is set.
        directory: the embedded default's directory (``embedded``).
        name: the queue's name (``ETL_QUEUE_NAME``, default ``etl``): several toolkits can share
            one Redis under different names.
        secret: ``ETL_SECRET_KEY``: when set, queue messages are signed with it.
        origin: where the settings came from, for messages.
        sentinel: the Sentinel set that names the primary, when there is one.
        redis: how long Redis calls may take (``ETL_REDIS_*``).
    """

    kind: Literal["redis", "embedded"]
    url: str = ""
    directory: Path = field(default_factory=lambda: Path(".etl"))
    name: str = "etl"
    secret: str | None = None
    origin: str = ""
    sentinel: SentinelSet | None = None
    redis: RedisOptions = field(default_factory=RedisOptions)

    @property
    def display(self) -> str:
        """The location with any password masked, for logs and errors."""
        if self.kind == "embedded":
            return f"embedded queue in {self.directory}"
        return _masked(self.url)


def queue_settings(env: Mapping[str, str] | None = None) -> QueueSettings:
    """The queue settings from ``env`` (the process environment by default).

    Raises:
        UsageError: a malformed ``ETL_QUEUE_URL``, ``REDIS_*`` or ``ETL_REDIS_*`` value, saying
            what would be right.
    """
    env = os.environ if env is None else env
    name = env.get("ETL_QUEUE_NAME") or "etl"
    if not name.isascii() or not name.isalnum() or name != name.lower():
        # Huey keeps only lowercase letters and digits of a queue's name: "team-a" and "teama"
        # would share one queue.
        raise UsageError(f"ETL_QUEUE_NAME: {name!r} must be lowercase letters and digits, e.g. etl or teama")
    common = {"name": name, "secret": env.get("ETL_SECRET_KEY") or None}
    home = Path(env.get("ETL_HOME") or ".etl")
    raw = (env.get("ETL_QUEUE_URL") or "").strip()
    if raw:
        settings = _from_url(raw, env, **common)
    elif (env.get("REDIS_SENTINELS") or "").strip():
        url = _sentinel_url_from_parts(env)
        settings = QueueSettings(
            "redis", url=url, sentinel=_sentinel_set(url, env, "REDIS_SENTINELS"), origin="REDIS_SENTINELS", **common
        )
    elif (env.get("REDIS_HOST") or "").strip():
        settings = QueueSettings("redis", url=_from_parts(env), origin="REDIS_HOST", **common)
    else:
        return QueueSettings("embedded", directory=home, origin="default", **common)
    if settings.kind == "embedded":
        return settings
    return replace(settings, redis=redis_options(env, sentinel=settings.sentinel is not None))


def redis_options(env: Mapping[str, str], *, sentinel: bool = False) -> RedisOptions:
    """The ``ETL_REDIS_*`` settings of ``env``.

    Raises:
        UsageError: a value that is not a number, or out of range.
    """
    defaults = RedisOptions()
    replicas = (env.get("ETL_REDIS_WAIT_REPLICAS") or "").strip()
    if replicas and not replicas.isdigit():
        raise UsageError(
            f"ETL_REDIS_WAIT_REPLICAS: {replicas!r} is not a number of replicas; expected e.g. 1, or 0 not to wait"
        )
    return RedisOptions(
        connect=env_seconds(env, "ETL_REDIS_CONNECT_SECONDS", defaults.connect, positive=True),
        timeout=env_seconds(env, "ETL_REDIS_TIMEOUT_SECONDS", defaults.timeout, positive=True),
        retry=env_seconds(env, "ETL_REDIS_RETRY_SECONDS", defaults.retry),
        wait_replicas=int(replicas) if replicas else (1 if sentinel else 0),
        wait=env_seconds(env, "ETL_REDIS_WAIT_SECONDS", defaults.wait, positive=True),
    )


def env_seconds(env: Mapping[str, str], name: str, default: float, positive: bool = False) -> float:
    """The environment variable ``name``, a number of seconds (``default`` when unset or empty).

    Raises:
        UsageError: not a number, infinite, negative (or 0 with ``positive``).
    """
    raw = (env.get(name) or "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not (value > 0 if positive else value >= 0) or value == float("inf"):
        least = "more than 0" if positive else "0 or more"
        raise UsageError(f"{name}: {raw!r} is not a number of seconds ({least}); expected e.g. {default:g}")
    return value


def env_count(env: Mapping[str, str], name: str, default: int, least: int = 0) -> int:
    """The environment variable ``name``, a whole number of at least ``least``.

    Raises:
        UsageError: not a whole number, or less than ``least``.
    """
    raw = (env.get(name) or "").strip()
    if not raw:
        return default
    if not raw.isdecimal() or int(raw) < least:
        raise UsageError(f"{name}: {raw!r} is not a whole number of {least} or more; expected e.g. {default}")
    return int(raw)


def _from_url(raw: str, env: Mapping[str, str], name: str, secret: str | None) -> QueueSettings:
    origin = "ETL_QUEUE_URL"
    if "://" not in raw:  # a plain path: the embedded default in that directory
        return QueueSettings("embedded", directory=Path(raw), name=name, secret=secret, origin=origin)
    scheme = raw.split("://", 1)[0].lower()
    raw = scheme + raw[len(scheme) :]  # REDIS:// works as redis:// does
    if scheme in _CLUSTER_SCHEMES:
        raise UsageError(
            f"ETL_QUEUE_URL: Redis Cluster ({scheme}://) is not supported: every change of the run store is one "
            "transaction over the queue's shared indexes, which Cluster would put on one node anyway; for "
            "failover use Sentinel (redis+sentinel://host:26379,host:26379/mymaster/0)"
        )
    if scheme not in _SCHEMES:
        raise UsageError(
            f"ETL_QUEUE_URL: unknown scheme {scheme!r}{did_you_mean(scheme, _SCHEMES)} (expected redis://host:6379/0, "
            "rediss://…, unix:///path/redis.sock, redis+sentinel://host:26379,…/service/0, or a directory path)"
        )
    if scheme in _SENTINEL_SCHEMES:
        sentinel = _sentinel_set(raw, env, origin)
        return QueueSettings("redis", url=raw, name=name, secret=secret, origin=origin, sentinel=sentinel)
    parts = urlsplit(raw)
    if scheme == "file":
        return QueueSettings("embedded", directory=Path(unquote(parts.path)), name=name, secret=secret, origin=origin)
    query_db = parse_qs(parts.query).get("db", ["0"])[0]
    if not query_db.isdigit():
        raise UsageError(f"ETL_QUEUE_URL: ?db={query_db!r} must be a database number, e.g. ?db=0")
    if scheme == "unix":
        if not parts.path:
            raise UsageError("ETL_QUEUE_URL: a unix:// URL needs the socket's path, e.g. unix:///run/redis/redis.sock")
        return QueueSettings("redis", url=raw, name=name, secret=secret, origin=origin)
    try:
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError:
        raise UsageError(f"ETL_QUEUE_URL: the port in {_masked(raw)!r} is not a number") from None
    if not parts.hostname:
        raise UsageError(f"ETL_QUEUE_URL: {_masked(raw)!r} has no host; expected e.g. redis://localhost:6379/0")
    database = parts.path.strip("/")
    if database and not database.isdigit():
        raise UsageError(f"ETL_QUEUE_URL: the database in {_masked(raw)!r} must be a number, e.g. redis://host:6379/0")
    return QueueSettings("redis", url=raw, name=name, secret=secret, origin=origin)


def _sentinel_set(url: str, env: Mapping[str, str], origin: str) -> SentinelSet:
    """Parse ``redis+sentinel://[user:password@]host:port[,host:port…]/service[/db][?ssl_…]``.

    urlsplit can't: its netloc holds one host and one port.
    """
    shown = _masked(url)
    example = "redis+sentinel://s1:26379,s2:26379,s3:26379/mymaster/0"
    scheme, rest = url.split("://", 1)
    rest, _, query = rest.partition("?")
    netloc, _, path = rest.partition("/")
    userinfo, _, hosts = netloc.rpartition("@")
    username, _, password = userinfo.partition(":")
    addresses = []
    for item in hosts.split(","):
        address = _address(item.strip())
        if address is None:
            raise UsageError(
                f"{origin}: {item.strip()!r} in {shown!r} is not a sentinel's host:port; expected e.g. {example}"
            )
        addresses.append(address)
    segments = [unquote(s) for s in path.split("/")] if path else []
    if not segments or not segments[0]:
        raise UsageError(
            f"{origin}: {shown!r} names no service: after the sentinels comes the name they monitor the "
            f"primary under (sentinel monitor NAME …), e.g. {example}"
        )
    if len(segments) > 2 or (len(segments) == 2 and not segments[1].isdigit()):
        raise UsageError(f"{origin}: {shown!r}: after the service comes only a database number, e.g. {example}")
    tls = scheme == "rediss+sentinel"
    options = []
    for key, values in parse_qs(query, keep_blank_values=True).items():
        if key not in TLS_OPTIONS or not tls:
            allowed = f"only TLS options ({', '.join(TLS_OPTIONS)}) with rediss+sentinel://" if tls else "none"
            raise UsageError(f"{origin}: unknown option {key!r} in {shown!r}; a Sentinel URL takes {allowed}")
        options.append((key, values[-1]))
    return SentinelSet(
        addresses=tuple(addresses),
        service=segments[0],
        db=int(segments[1]) if len(segments) == 2 else 0,
        username=unquote(username) or None,
        password=unquote(password) or None,
        tls=tls,
        tls_options=tuple(options),
        sentinel_username=env.get("REDIS_SENTINEL_USERNAME") or None,
        sentinel_password=env.get("REDIS_SENTINEL_PASSWORD") or None,
    )


def _address(item: str) -> tuple[str, int] | None:
    """``host:port``, ``host`` (port 26379) or ``[::1]:26379``; ``None`` when malformed."""
    if item.startswith("["):
        host, _, port = item[1:].partition("]")
        port = port[1:] if port.startswith(":") else ("" if not port else "x")
    elif item.count(":") > 1:  # a bare IPv6 address: no port
        host, port = item, ""
    else:
        host, _, port = item.partition(":")
    if not host or any(c in host for c in "@/?# ") or (port and not port.isdigit()):
        return None
    number = int(port) if port else 26379
    return (host, number) if 0 < number < 65536 else None


def _sentinel_url_from_parts(env: Mapping[str, str]) -> str:
    """``REDIS_SENTINELS`` and its companions as one ``redis+sentinel://`` URL."""
    service = (env.get("REDIS_SENTINEL_SERVICE") or "").strip()
    if not service:
        raise UsageError(
            "REDIS_SENTINEL_SERVICE: missing; with REDIS_SENTINELS, name the service the sentinels monitor the "
            "primary under (sentinel monitor NAME …), e.g. mymaster"
        )
    database = (env.get("REDIS_DB") or "0").strip()
    if not database.isdigit():
        raise UsageError(f"REDIS_DB: {database!r} is not a database number; expected e.g. 0")
    scheme = "rediss+sentinel" if (env.get("REDIS_TLS") or "").lower() in _TRUE else "redis+sentinel"
    hosts = ",".join(h.strip() for h in env["REDIS_SENTINELS"].split(","))
    return f"{scheme}://{_auth(env)}{hosts}/{quote(service, safe='')}/{database}"


def _auth(env: Mapping[str, str]) -> str:
    user = env.get("REDIS_USERNAME") or env.get("REDIS_USER") or ""
    password = env.get("REDIS_PASSWORD") or ""
    if user or password:
        return f"{quote(user, safe='')}:{quote(password, safe='')}@"
    return ""


def _from_parts(env: Mapping[str, str]) -> str:
    host = env["REDIS_HOST"].strip()
    if host.count(":") == 1 or "/" in host or "@" in host:
        raise UsageError(
            f"REDIS_HOST: {host!r} is not a host name; give the port in REDIS_PORT and the password in REDIS_PASSWORD"
        )
    if ":" in host and not host.startswith("["):  # an IPv6 address goes in brackets in a URL
        host = f"[{host}]"
    port = (env.get("REDIS_PORT") or "6379").strip()
    database = (env.get("REDIS_DB") or "0").strip()
    if not port.isdigit():
        raise UsageError(f"REDIS_PORT: {port!r} is not a port number; expected e.g. 6379")
    if not database.isdigit():
        raise UsageError(f"REDIS_DB: {database!r} is not a database number; expected e.g. 0")
    scheme = "rediss" if (env.get("REDIS_TLS") or "").lower() in _TRUE else "redis"
    return f"{scheme}://{_auth(env)}{host}:{port}/{database}"


def _masked(url: str) -> str:
    """``url`` with the password of its user part as ``***``, whatever its host part holds (a
    password with an unquoted ``@`` or ``/`` too)."""
    scheme, sep, rest = url.partition("://")
    head, mark, query = rest.partition("?")
    userinfo, at, tail = head.rpartition("@")
    if not at or ":" not in userinfo:
        return url
    return f"{scheme}{sep}{userinfo.split(':', 1)[0]}:***@{tail}{mark}{query}"
