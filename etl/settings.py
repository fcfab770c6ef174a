"""Where the queue and the run state live: settings from the environment.

``ETL_QUEUE_URL`` names it: ``redis://[user:password@]host[:port][/db]``, ``rediss://…`` (TLS),
``unix:///path/to/redis.sock[?db=N]``, or a directory path (or ``file://…``) for the embedded
default, which keeps both the queue and the run state in SQLite files there. Without it, the
familiar ``REDIS_HOST``, ``REDIS_PORT``, ``REDIS_PASSWORD``, ``REDIS_DB`` and ``REDIS_USERNAME``
(a Redis ACL user) are used when ``REDIS_HOST`` is set; otherwise the embedded default lives in
``$ETL_HOME`` (``.etl``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import parse_qs, quote, unquote, urlsplit

from etl.errors import UsageError, did_you_mean

__all__ = ["QueueSettings", "queue_settings"]

_SCHEMES = ("redis", "rediss", "unix", "file")


@dataclass(frozen=True)
class QueueSettings:
    """Resolved queue settings.

    Attributes:
        kind: ``redis`` or ``embedded``.
        url: the Redis URL (``redis``), with the password in it.
        directory: the embedded default's directory (``embedded``).
        name: the queue's name (``ETL_QUEUE_NAME``, default ``etl``): several toolkits can share
            one Redis under different names.
        secret: ``ETL_SECRET_KEY``: when set, queue messages are signed with it.
        origin: where the settings came from, for messages.
    """

    kind: Literal["redis", "embedded"]
    url: str = ""
    directory: Path = field(default_factory=lambda: Path(".etl"))
    name: str = "etl"
    secret: str | None = None
    origin: str = ""

    @property
    def display(self) -> str:
        """The location with any password masked, for logs and errors."""
        if self.kind == "embedded":
            return f"embedded queue in {self.directory}"
        parts = urlsplit(self.url)
        if parts.password:
            netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
            return parts._replace(netloc=netloc).geturl()
        return self.url


def queue_settings(env: Mapping[str, str] | None = None) -> QueueSettings:
    """The queue settings from ``env`` (the process environment by default).

    Raises:
        UsageError: a malformed ``ETL_QUEUE_URL`` or ``REDIS_*`` value, saying what would be right.
    """
    env = os.environ if env is None else env
    name = env.get("ETL_QUEUE_NAME") or "etl"
    if not name.isascii() or not name.isalnum() or name != name.lower():
        # Huey keeps only lowercase letters and digits of a queue's name: "team-a" and "teama"
        # would share one queue.
        raise UsageError(f"ETL_QUEUE_NAME: {name!r} must be lowercase letters and digits, e.g. etl or teama")
    secret = env.get("ETL_SECRET_KEY") or None
    home = Path(env.get("ETL_HOME") or ".etl")
    raw = (env.get("ETL_QUEUE_URL") or "").strip()
    if raw:
        return _from_url(raw, name, secret)
    if (env.get("REDIS_HOST") or "").strip():
        return QueueSettings("redis", url=_from_parts(env), name=name, secret=secret, origin="REDIS_HOST")
    return QueueSettings("embedded", directory=home, name=name, secret=secret, origin="default")


def _from_url(raw: str, name: str, secret: str | None) -> QueueSettings:
    origin = "ETL_QUEUE_URL"
    if "://" not in raw:  # a plain path: the embedded default in that directory
        return QueueSettings("embedded", directory=Path(raw), name=name, secret=secret, origin=origin)
    scheme = raw.split("://", 1)[0].lower()
    raw = scheme + raw[len(scheme) :]  # REDIS:// works as redis:// does
    if scheme not in _SCHEMES:
        raise UsageError(
            f"ETL_QUEUE_URL: unknown scheme {scheme!r}{did_you_mean(scheme, _SCHEMES)} "
            "(expected redis://host:6379/0, rediss://…, unix:///path/redis.sock, or a directory path)"
        )
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
        port = parts.port
    except ValueError:
        raise UsageError(f"ETL_QUEUE_URL: the port in {_masked(raw)!r} is not a number") from None
    if not parts.hostname:
        raise UsageError(f"ETL_QUEUE_URL: {_masked(raw)!r} has no host; expected e.g. redis://localhost:6379/0")
    database = parts.path.strip("/")
    if database and not database.isdigit():
        raise UsageError(f"ETL_QUEUE_URL: the database in {_masked(raw)!r} must be a number, e.g. redis://host:6379/0")
    del port
    return QueueSettings("redis", url=raw, name=name, secret=secret, origin=origin)


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
    user = env.get("REDIS_USERNAME") or env.get("REDIS_USER") or ""
    password = env.get("REDIS_PASSWORD") or ""
    auth = ""
    if user or password:
        auth = f"{quote(user, safe='')}:{quote(password, safe='')}@"
    scheme = "rediss" if (env.get("REDIS_TLS") or "").lower() in {"1", "true", "yes"} else "redis"
    return f"{scheme}://{auth}{host}:{port}/{database}"


def _masked(url: str) -> str:
    parts = urlsplit(url)
    if parts.password:
        return url.replace(f":{parts.password}@", ":***@")
    return url
