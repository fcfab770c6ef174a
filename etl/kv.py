"""The few storage primitives the run state needs, on Redis or on a SQLite file.

JSON documents by key, integer counters and sorted sets, changed inside :meth:`KV.atomic`
transactions: on Redis an optimistic ``WATCH``/``MULTI`` transaction retried on conflict, on
SQLite a ``BEGIN IMMEDIATE`` transaction. :mod:`etl.store` writes the run-state logic once, on
top of this.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Protocol, TypeVar

from loguru import logger

from etl.errors import TransientError, UsageError, describe
from etl.settings import QueueSettings, queue_settings

__all__ = ["KV", "RedisKV", "SqliteKV", "Tx", "TxCounts"]

T = TypeVar("T")


class TxCounts:
    """How many transactions a KV committed, and how many of their attempts it redid because of a
    conflict: on Redis, a watched key changed between the reads and ``EXEC`` (another process's
    transaction came first); on SQLite, the file stayed locked past its busy timeout. Shared by
    the KV's threads; :meth:`listen` adds a function called with each transaction's conflicts
    (a worker's Prometheus counters)."""

    def __init__(self) -> None:
        self.transactions = 0
        self.conflicts = 0
        self._lock = threading.Lock()
        self._listeners: list[Callable[[int], None]] = []

    def listen(self, fn: Callable[[int], None]) -> None:
        self._listeners.append(fn)

    def add(self, conflicts: int) -> None:
        with self._lock:
            self.transactions += 1
            self.conflicts += conflicts
        for fn in self._listeners:
            fn(conflicts)


class Tx(Protocol):
    """What a transaction function may do. Reads see the state as of the transaction; writes
    are applied together when the function returns."""

    def get(self, key: str) -> dict[str, Any] | None: ...

    def get_many(self, keys: list[str]) -> list[Any]:
        """Several documents (or counters' integers) at once (on Redis, one round trip)."""
        ...

    def watch(self, keys: Iterable[str]) -> None:
        """Watch more keys, before reading them: a key the function chose from what it read."""
        ...

    def put(self, key: str, doc: dict[str, Any]) -> None: ...

    def delete(self, key: str) -> None: ...

    def zadd(self, name: str, member: str, score: float) -> None: ...

    def zrem(self, name: str, member: str) -> None: ...

    def zrange(self, name: str, low: float, high: float, limit: int) -> list[tuple[str, float]]: ...

    def zcard(self, name: str) -> int: ...

    def incr(self, key: str, amount: int) -> Callable[[], int]:
        """Add ``amount`` to the counter at ``key`` (0 when there is none), without reading it
        first: transactions that only add to a counter don't conflict. Returns its value just
        after this addition, to call once the transaction has committed."""
        ...

    def zcard_then(self, name: str) -> Callable[[], int]:
        """The size of sorted set ``name`` after the writes so far, to call once the transaction
        has committed."""
        ...


class KV(Protocol):
    #: Transactions committed and conflicts redone, in this process.
    counts: TxCounts

    def atomic(self, fn: Callable[[Tx], T], watch: Iterable[str]) -> T: ...

    def get(self, key: str) -> dict[str, Any] | None: ...

    def get_many(self, keys: list[str]) -> list[Any]: ...

    def zrange(self, name: str, low: float, high: float, limit: int) -> list[tuple[str, float]]: ...

    def zrevrange(self, name: str, start: int, stop: int) -> list[str]: ...

    def zcard(self, name: str) -> int: ...

    def delete_many(self, keys: list[str], zsets: dict[str, list[str]]) -> None: ...

    def ping(self) -> None: ...

    def close(self) -> None: ...


# -- Redis -------------------------------------------------------------------------------


class _RedisTx:
    """A transaction's reads and writes on Redis. The keys to watch go with the first read after
    them (``WATCH`` and the read in one round trip); documents are read once, several at once
    (``MGET``); writes wait for ``EXEC``."""

    def __init__(self, pipe: Any, watch: Iterable[str]) -> None:
        self.pipe = pipe
        self.writes: list[Callable[[Any], Any]] = []
        self.cache: dict[str, Any] = {}
        self.unwatched = list(dict.fromkeys(watch))
        #: What EXEC answered, one reply per write.
        self.replies: list[Any] | None = None

    def watch(self, keys: Iterable[str]) -> None:
        self.unwatched += [k for k in keys if k not in self.unwatched]

    def _read(self, *commands: tuple[Any, ...]) -> list[Any]:
        """Send ``commands`` (reads) in one round trip, after a ``WATCH`` of the keys not yet
        watched, on the connection the transaction keeps until ``EXEC``; their replies."""
        import redis

        pipe, watching = self.pipe, bool(self.unwatched)
        batch = [("WATCH", *self.unwatched), *commands] if watching else list(commands)
        conn = pipe.connection
        if conn is None:
            conn = pipe.connection = pipe.connection_pool.get_connection()

        def send() -> list[Any]:
            conn.send_packed_command(conn.pack_commands(batch))
            replies, error = [], None
            for _ in batch:  # every reply is read, so that the connection stays in step
                try:
                    replies.append(conn.read_response())
                except redis.ResponseError as exc:
                    replies.append(exc)
                    error = error or exc
            if error is not None:
                raise error
            return replies

        def lost(exc: Exception) -> None:
            conn.disconnect()
            if pipe.watching:  # what was watched is lost with the connection: start over
                pipe.reset()
                raise redis.WatchError(f"a {type(exc).__name__} occurred while watching keys")

        replies = conn.retry.call_with_retry(send, lost)
        if watching:
            pipe.watching, self.unwatched = True, []
        return replies[len(batch) - len(commands) :]

    def get(self, key: str) -> dict[str, Any] | None:
        return self.get_many([key])[0]

    def get_many(self, keys: list[str]) -> list[Any]:
        missing = [k for k in dict.fromkeys(keys) if k not in self.cache]
        if missing:
            (raws,) = self._read(("MGET", *missing))
            for key, raw in zip(missing, raws, strict=True):
                self.cache[key] = json.loads(raw) if raw else None
        return [self.cache[k] for k in keys]

    def put(self, key: str, doc: dict[str, Any]) -> None:
        self.cache[key] = doc
        text = json.dumps(doc, separators=(",", ":"))
        self.writes.append(lambda p: p.set(key, text))

    def delete(self, key: str) -> None:
        self.cache[key] = None
        self.writes.append(lambda p: p.delete(key))

    def zadd(self, name: str, member: str, score: float) -> None:
        self.writes.append(lambda p: p.zadd(name, {member: score}))

    def zrem(self, name: str, member: str) -> None:
        self.writes.append(lambda p: p.zrem(name, member))

    def zrange(self, name: str, low: float, high: float, limit: int) -> list[tuple[str, float]]:
        (rows,) = self._read(("ZRANGEBYSCORE", name, low, high, "LIMIT", 0, limit, "WITHSCORES"))
        return _scored(rows)

    def zcard(self, name: str) -> int:
        return int(self._read(("ZCARD", name))[0])

    def incr(self, key: str, amount: int) -> Callable[[], int]:
        return self._then(lambda p: p.incrby(key, amount))

    def zcard_then(self, name: str) -> Callable[[], int]:
        return self._then(lambda p: p.zcard(name))

    def _then(self, command: Callable[[Any], Any]) -> Callable[[], int]:
        """Queue ``command`` with the writes; its reply, once EXEC has answered."""
        slot = len(self.writes)
        self.writes.append(command)

        def reply() -> int:
            if self.replies is None:
                raise RuntimeError("a transaction's reply was asked for before the transaction committed")
            return int(self.replies[slot])

        return reply


def _scored(reply: list[Any]) -> list[tuple[str, float]]:
    """A ``WITHSCORES`` reply as (member, score) pairs: pairs in RESP3, a flat list in RESP2."""
    if reply and isinstance(reply[0], list | tuple):
        pairs = [(m, s) for m, s in reply]
    else:
        pairs = list(zip(reply[::2], reply[1::2], strict=True))
    return [(m.decode() if isinstance(m, bytes) else m, float(s)) for m, s in pairs]


class RedisKV:
    """Documents as JSON strings, sorted sets as Redis sorted sets.

    Built from queue settings (or a bare URL, with the ``ETL_REDIS_*`` defaults): a plain Redis
    or the primary of a Sentinel set, each call bounded and retried as :mod:`etl.redisconn`
    says. With ``wait_replicas`` (``ETL_REDIS_WAIT_REPLICAS``; 1 by default with Sentinel),
    each transaction that wrote waits until that many replicas have it (``WAIT``, on the
    transaction's own connection), so that a failover does not undo a change a worker has
    acted on. When they don't confirm within ``ETL_REDIS_WAIT_SECONDS`` (a replica down or
    lagging), it says so once and goes on without waiting for a while: availability first,
    as Redis itself does.
    """

    #: How long transactions go on without waiting once replicas failed to confirm one.
    UNCONFIRMED_PAUSE = 30.0

    def __init__(self, target: str | QueueSettings, display: str = "") -> None:
        from etl.redisconn import Connector

        settings = target if isinstance(target, QueueSettings) else url_settings(target)
        self.connector = Connector(settings)
        self.display = display or settings.display
        self.options = settings.redis
        self.counts = TxCounts()
        self._waiting_again_at = 0.0  # monotonic time until which transactions don't wait
        # Checks fail fast (a wrong password, nothing listening); work retries with backoff.
        self.probe = self.connector.client(retry=False)
        self.client = self.connector.client()

    def _call(self, fn: Callable[[], T], check: bool = False) -> T:
        import redis

        started = time.monotonic()
        try:
            return fn()
        except redis.AuthenticationError as exc:
            raise UsageError(f"Redis at {self.display} refused the password: {exc}") from None
        except redis.exceptions.NoPermissionError as exc:
            raise UsageError(
                f"Redis at {self.display}: the user may not run this command or touch this key ({exc}); "
                "see the ACL permissions in docs/operations.md"
            ) from None
        except redis.exceptions.ReadOnlyError:
            raise TransientError(
                f"Redis at {self.display} is a read-only replica (READONLY): after a failover, point ETL_QUEUE_URL "
                "at the new primary, or let Sentinel name it (redis+sentinel://…)"
            ) from None
        except redis.ResponseError as exc:
            if "NOAUTH" in str(exc) or "WRONGPASS" in str(exc) or "NOPERM" in str(exc):
                raise UsageError(f"Redis at {self.display}: {exc}") from None
            if "NOREPLICAS" in str(exc):
                raise TransientError(
                    f"Redis at {self.display} refuses writes: fewer replicas in sync than its min-replicas-to-write "
                    "(NOREPLICAS); check its replicas (INFO replication)"
                ) from None
            raise
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise TransientError(self.connector.unreachable(exc, time.monotonic() - started, check)) from None

    def atomic(self, fn: Callable[[Tx], T], watch: Iterable[str]) -> T:
        import redis

        keys = list(watch)

        def attempt() -> T:
            conflicts = 0
            while True:
                with self._pipeline() as pipe:
                    try:
                        tx = _RedisTx(pipe, keys)  # watched with the first read
                        result = fn(tx)
                        pipe.multi()
                        for write in tx.writes:
                            write(pipe)
                        if not tx.writes:
                            pipe.replicas = 0  # nothing to confirm
                        tx.replies = pipe.execute()
                        self.counts.add(conflicts)
                        self._confirmed(pipe)
                        return result
                    except redis.WatchError:
                        conflicts += 1  # someone changed a watched key: read again and redo

        return self._call(attempt)

    def _pipeline(self) -> Any:
        pipe = _waiting_pipeline()(self.client.connection_pool, self.client.response_callbacks, True, None)
        if self.options.wait_replicas and time.monotonic() >= self._waiting_again_at:
            pipe.replicas, pipe.wait_ms = self.options.wait_replicas, int(self.options.wait * 1000)
        return pipe

    def _confirmed(self, pipe: Any) -> None:
        """Say once when replicas did not confirm a transaction, and stop waiting a while."""
        if not pipe.replicas or (pipe.acked is not None and pipe.acked >= pipe.replicas):
            return
        self._waiting_again_at = time.monotonic() + self.UNCONFIRMED_PAUSE
        got = "no answer" if pipe.acked is None else f"{pipe.acked} of {pipe.replicas}"
        logger.warning(
            "Redis at {}: a change was not confirmed by {} replica(s) within {:g}s ({}{}); going on without "
            "waiting for replicas for {:g}s: a failover meanwhile can undo the last changes (docs/operations.md, "
            "Failover)",
            self.display,
            pipe.replicas,
            self.options.wait,
            got,
            f": {pipe.wait_error}" if pipe.wait_error else "",
            self.UNCONFIRMED_PAUSE,
        )

    def get(self, key: str) -> dict[str, Any] | None:
        raw = self._call(lambda: self.client.get(key))
        return json.loads(raw) if raw else None

    def get_many(self, keys: list[str]) -> list[Any]:
        if not keys:
            return []
        raws = self._call(lambda: self.client.mget(keys))
        return [json.loads(r) if r else None for r in raws]

    def zrange(self, name: str, low: float, high: float, limit: int) -> list[tuple[str, float]]:
        rows = self._call(lambda: self.client.zrangebyscore(name, low, high, start=0, num=limit, withscores=True))
        return [(m.decode(), s) for m, s in rows]

    def zrevrange(self, name: str, start: int, stop: int) -> list[str]:
        return [m.decode() for m in self._call(lambda: self.client.zrevrange(name, start, stop))]

    def zcard(self, name: str) -> int:
        return int(self._call(lambda: self.client.zcard(name)))

    def delete_many(self, keys: list[str], zsets: dict[str, list[str]]) -> None:
        def run() -> None:
            with self.client.pipeline(transaction=False) as pipe:
                if keys:
                    pipe.unlink(*keys)
                for name, members in zsets.items():
                    if members:
                        pipe.zrem(name, *members)
                pipe.execute()

        self._call(run)

    def ping(self) -> None:
        self._call(self.probe.ping, check=True)

    def close(self) -> None:
        from etl.redisconn import release

        for client in (self.client, self.probe):
            client.close()
            release(client.connection_pool)


def url_settings(url: str) -> QueueSettings:
    """Settings for a bare Redis URL, with this process's ``ETL_REDIS_*``."""
    import os

    return queue_settings({**os.environ, "ETL_QUEUE_URL": url, "ETL_QUEUE_NAME": "etl"})


_WAITING_PIPELINE: type | None = None


def _waiting_pipeline() -> type:
    """redis-py's transaction pipeline, followed by ``WAIT`` on the same connection (``WAIT``
    counts the replicas that have this connection's writes: on another connection it would
    not wait for them). Made on first use: ``import etl`` does not import redis."""
    global _WAITING_PIPELINE
    if _WAITING_PIPELINE is None:
        import redis
        from redis.client import Pipeline

        class WaitingPipeline(Pipeline):
            replicas = 0
            wait_ms = 0
            acked: int | None = None
            wait_error: str = ""

            def _execute_transaction(self, connection: Any, commands: Any, raise_on_error: bool) -> Any:
                response = super()._execute_transaction(connection, commands, raise_on_error)
                if self.replicas:
                    # Never raise from here: redis-py would run the transaction again.
                    try:
                        connection.send_command("WAIT", self.replicas, self.wait_ms)
                        timeout = (self.wait_ms / 1000) + (connection.socket_timeout or 0)
                        self.acked = int(connection.read_response(timeout=timeout))
                    except (redis.ConnectionError, redis.TimeoutError) as exc:
                        connection.disconnect()
                        self.wait_error = describe(exc)
                    except redis.ResponseError as exc:
                        self.wait_error = describe(exc)
                return response

        _WAITING_PIPELINE = WaitingPipeline
    return _WAITING_PIPELINE


# -- SQLite ------------------------------------------------------------------------------


class _SqliteTx:
    def __init__(self, con: sqlite3.Connection) -> None:
        self.con = con

    def get(self, key: str) -> dict[str, Any] | None:
        row = self.con.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def get_many(self, keys: list[str]) -> list[Any]:
        return _get_many(self.con, keys)

    def watch(self, keys: Iterable[str]) -> None:
        pass  # the whole transaction holds the file's write lock

    def incr(self, key: str, amount: int) -> Callable[[], int]:
        # A counter is a document holding an integer (read by get_many like any other).
        (value,) = self.con.execute(
            "INSERT INTO kv (key, value) VALUES (?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = CAST(value AS INTEGER) + CAST(excluded.value AS INTEGER) "
            "RETURNING value",
            (key, str(amount)),
        ).fetchone()
        return lambda: int(value)

    def zcard_then(self, name: str) -> Callable[[], int]:
        size = self.zcard(name)
        return lambda: size

    def put(self, key: str, doc: dict[str, Any]) -> None:
        self.con.execute(
            "INSERT INTO kv (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, json.dumps(doc, separators=(",", ":"))),
        )

    def delete(self, key: str) -> None:
        # Like Redis's DEL, whatever the key holds: a document or a sorted set.
        self.con.execute("DELETE FROM kv WHERE key = ?", (key,))
        self.con.execute("DELETE FROM zset WHERE name = ?", (key,))

    def zadd(self, name: str, member: str, score: float) -> None:
        self.con.execute(
            "INSERT INTO zset (name, member, score) VALUES (?, ?, ?) "
            "ON CONFLICT (name, member) DO UPDATE SET score = excluded.score",
            (name, member, score),
        )

    def zrem(self, name: str, member: str) -> None:
        self.con.execute("DELETE FROM zset WHERE name = ? AND member = ?", (name, member))

    def zrange(self, name: str, low: float, high: float, limit: int) -> list[tuple[str, float]]:
        rows = self.con.execute(
            "SELECT member, score FROM zset WHERE name = ? AND score BETWEEN ? AND ? ORDER BY score, member LIMIT ?",
            (name, _bound(low), _bound(high), limit),
        ).fetchall()
        return [(m, s) for m, s in rows]

    def zcard(self, name: str) -> int:
        return int(self.con.execute("SELECT count(*) FROM zset WHERE name = ?", (name,)).fetchone()[0])


def _get_many(con: sqlite3.Connection, keys: list[str]) -> list[Any]:
    found: dict[str, str] = {}
    for start in range(0, len(keys), 500):
        part = keys[start : start + 500]
        marks = ",".join("?" * len(part))
        found.update(con.execute(f"SELECT key, value FROM kv WHERE key IN ({marks})", part).fetchall())
    return [json.loads(found[k]) if k in found else None for k in keys]


def _bound(value: float) -> float:
    return max(min(value, 1e308), -1e308)


class SqliteKV:
    """The embedded default: documents and sorted sets in one SQLite file (WAL mode), safe to
    share between the processes of one machine."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.display = str(path)
        self.counts = TxCounts()
        self._local = threading.local()
        con = self._con()
        con.execute("CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        con.execute(
            "CREATE TABLE IF NOT EXISTS zset (name TEXT NOT NULL, member TEXT NOT NULL, score REAL NOT NULL, "
            "PRIMARY KEY (name, member))"
        )
        con.execute("CREATE INDEX IF NOT EXISTS zset_by_score ON zset (name, score)")

    def _con(self) -> sqlite3.Connection:
        con = getattr(self._local, "con", None)
        if con is None:
            con = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
            con.execute("PRAGMA journal_mode = WAL")
            con.execute("PRAGMA synchronous = NORMAL")
            con.execute("PRAGMA busy_timeout = 30000")
            self._local.con = con
        return con

    def atomic(self, fn: Callable[[Tx], T], watch: Iterable[str]) -> T:
        con = self._con()
        conflicts = 0
        for pause in (0.05, 0.1, 0.2, 0.5, 1.0, None):
            try:
                con.execute("BEGIN IMMEDIATE")
                break
            except sqlite3.OperationalError as exc:  # locked beyond busy_timeout
                if pause is None:
                    raise TransientError(f"the state file {self.path} is locked: {exc}") from None
                conflicts += 1
                time.sleep(pause)
        try:
            result = fn(_SqliteTx(con))
        except BaseException:
            con.execute("ROLLBACK")
            raise
        con.execute("COMMIT")
        self.counts.add(conflicts)
        return result

    def get(self, key: str) -> dict[str, Any] | None:
        return _SqliteTx(self._con()).get(key)

    def get_many(self, keys: list[str]) -> list[Any]:
        return _get_many(self._con(), keys)

    def zrange(self, name: str, low: float, high: float, limit: int) -> list[tuple[str, float]]:
        return _SqliteTx(self._con()).zrange(name, low, high, limit)

    def zrevrange(self, name: str, start: int, stop: int) -> list[str]:
        count = -1 if stop < 0 else stop - start + 1
        rows = (
            self._con()
            .execute(
                "SELECT member FROM zset WHERE name = ? ORDER BY score DESC, member DESC LIMIT ? OFFSET ?",
                (name, count, start),
            )
            .fetchall()
        )
        return [r[0] for r in rows]

    def zcard(self, name: str) -> int:
        return _SqliteTx(self._con()).zcard(name)

    def delete_many(self, keys: list[str], zsets: dict[str, list[str]]) -> None:
        def run(tx: Tx) -> None:
            for key in keys:
                tx.delete(key)
            for name, members in zsets.items():
                for member in members:
                    tx.zrem(name, member)

        self.atomic(run, ())

    def ping(self) -> None:
        self._con().execute("SELECT 1")

    def close(self) -> None:
        con = getattr(self._local, "con", None)
        if con is not None:
            con.close()
            self._local.con = None
