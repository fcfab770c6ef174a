"""Every Redis call is bounded: a server that never answers, a port that refuses, a server that
drops the connection mid-reply, and sentinels that can't be reached are each given up on within
the ETL_REDIS_* settings, with one log line per retry naming the endpoint (masked) and the
attempt, and a last error that says what was tried and what to check.

The settings here are short (1 s to connect, 1 s for a reply, 2 s of retries); the bound each
test checks is generous (it only has to tell "gave up" from "hangs").
"""

from __future__ import annotations

import re
import subprocess
import threading
import time
import uuid

import pytest

from etl.errors import TransientError
from etl.kv import RedisKV
from etl.settings import queue_settings
from tests import hostile
from tests.background.conftest import ETL, REDIS

SHORT = {"ETL_REDIS_CONNECT_SECONDS": "1", "ETL_REDIS_TIMEOUT_SECONDS": "1", "ETL_REDIS_RETRY_SECONDS": "2"}
#: Connect 1 s + reply 1 s per attempt, retries begun within 2 s: about 4 s at most. Generous.
BOUND = 12.0


@pytest.fixture
def log_lines():
    """This test's log lines (loguru, which the library keeps disabled)."""
    from loguru import logger

    lines: list[str] = []
    logger.enable("etl")
    handler = logger.add(lambda message: lines.append(str(message)), level="DEBUG", format="{level} {message}")
    yield lines
    logger.remove(handler)
    logger.disable("etl")


def _settings(url: str, **env: str):
    return queue_settings({"ETL_QUEUE_URL": url, **SHORT, **env})


def _gives_up(call) -> tuple[str, float]:
    """Run ``call`` in a thread (left behind if it hangs); its TransientError's message and the
    time it took."""
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            call()
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            outcome.append(exc)

    started = time.monotonic()
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(BOUND * 3)
    took = time.monotonic() - started
    assert outcome, f"still waiting after {took:.0f}s: the call is not bounded"
    assert isinstance(outcome[0], TransientError), outcome[0]
    return str(outcome[0]), took


def _retries(lines: list[str], endpoint: str) -> list[int]:
    """The attempt numbers of the retry lines naming ``endpoint``."""
    found = [re.search(r"attempt (\d+) failed", line) for line in lines if endpoint in line]
    return [int(m[1]) for m in found if m]


@pytest.mark.parametrize("fault", ["silent", "refused", "dropping"])
def test_a_store_call_to_a_failing_redis_is_given_up_on_in_bounded_time(fault, log_lines):
    servers = {"silent": hostile.silent, "refused": hostile.refusing}
    with servers[fault]() if fault in servers else hostile.dropping(hostile.redis_partial) as faulty:
        url = f"redis://etl:s3cret@127.0.0.1:{faulty.port}/0"
        kv = RedisKV(_settings(url))
        message, took = _gives_up(lambda: kv.get("etl:run:x"))
        assert took < BOUND
        endpoint = f"redis://etl:***@127.0.0.1:{faulty.port}/0"
        assert message.startswith(f"cannot reach Redis at {endpoint}: "), message
        assert "(tried for " in message and "s: connect timeout 1s, reply timeout 1s, retries for up to 2s" in message
        assert "check that Redis is up at that address and reachable from here (ETL_QUEUE_URL)" in message
        attempts = _retries(log_lines, endpoint)
        assert attempts and attempts == list(range(1, len(attempts) + 1)), log_lines
        assert all(line.startswith("WARNING") for line in log_lines if endpoint in line)
        if fault != "refused":  # it connected again for each retry
            assert faulty.accepted >= 2
        assert not any("s3cret" in line for line in log_lines) and "s3cret" not in message
        kv.close()


def test_the_check_at_start_does_not_retry(log_lines):
    with hostile.silent() as silent:
        kv = RedisKV(_settings(f"redis://127.0.0.1:{silent.port}/0", ETL_REDIS_RETRY_SECONDS="30"))
        message, took = _gives_up(kv.ping)
        assert took < 5  # one attempt: connect, then a reply that never comes (1 s)
        assert silent.accepted == 1
        assert "cannot reach Redis" in message and "(checked at start, for 1." in message
        assert not _retries(log_lines, str(silent.port))
        kv.close()


def test_the_check_at_start_does_not_retry_sentinels_that_do_not_answer(log_lines):
    with hostile.refusing() as one, hostile.refusing() as other:
        url = f"redis+sentinel://127.0.0.1:{one.port},127.0.0.1:{other.port}/etlha/0"
        kv = RedisKV(_settings(url, ETL_REDIS_RETRY_SECONDS="30"))
        message, took = _gives_up(kv.ping)
    assert took < 5 and "no sentinel names a primary for 'etlha'" in message
    assert not _retries(log_lines, "/etlha/0")  # a wrong address: no failover to wait out
    kv.close()


def test_sending_a_message_to_a_redis_that_never_answers_is_bounded(monkeypatch, tmp_path):
    from etl.queue import Queue

    with hostile.silent() as silent:
        queue = Queue(_settings(f"redis://127.0.0.1:{silent.port}/0", ETL_QUEUE_NAME="waits"))
        message, took = _gives_up(lambda: queue.send("etl.plan", "some-run"))
        assert took < BOUND
        assert message.startswith(f"cannot reach Redis at redis://127.0.0.1:{silent.port}/0: ")
        queue.close()


def test_unreachable_sentinels_are_named_in_bounded_time(log_lines):
    with hostile.silent() as silent, hostile.refusing() as nothing:
        refused = nothing.port
        url = f"redis+sentinel://etl:s3cret@127.0.0.1:{refused},127.0.0.1:{silent.port}/etlha/0"
        kv = RedisKV(_settings(url, REDIS_SENTINEL_PASSWORD="sentinel-pw"))
        message, took = _gives_up(lambda: kv.get("etl:run:x"))
        assert took < BOUND
        assert f"redis+sentinel://etl:***@127.0.0.1:{refused},127.0.0.1:{silent.port}/etlha/0" in message
        assert "no sentinel names a primary for 'etlha'" in message
        assert f"check that the sentinels (127.0.0.1:{refused},127.0.0.1:{silent.port}) are up and agree" in message
        assert "SENTINEL get-master-addr-by-name etlha" in message
        assert _retries(log_lines, "/etlha/0")  # each retry asked the sentinels again
        shown = "\n".join(log_lines) + message
        assert "s3cret" not in shown and "sentinel-pw" not in shown
        kv.close()


def test_a_blocking_read_longer_than_the_reply_timeout_neither_fails_nor_loses_a_message(redis_url, log_lines):
    """Huey's BRPOP waits 2 s on the server: with replies timing out after 0.5 s, its socket
    still waits the 2 s, and a message sent meanwhile is received, not dropped."""
    import redis

    from etl.queue import READ_TIMEOUT, Queue

    name = f"t{uuid.uuid4().hex[:10]}"
    queue = Queue(_settings(redis_url, ETL_QUEUE_NAME=name, ETL_REDIS_TIMEOUT_SECONDS="0.5"))
    storage = queue.huey.storage
    try:
        started = time.monotonic()
        assert storage.dequeue() is None  # empty: the read waited its 2 s, and no error
        assert time.monotonic() - started >= READ_TIMEOUT - 0.2
        threading.Timer(1.0, lambda: queue.send("etl.plan", "run-1")).start()
        started = time.monotonic()
        message = storage.dequeue()
        assert message is not None and 0.8 < time.monotonic() - started < READ_TIMEOUT + 0.5
        assert queue.huey.deserialize_task(message).args == ("run-1",)
        assert not [line for line in log_lines if "attempt" in line], log_lines
    finally:
        queue.close()
        with redis.Redis.from_url(redis_url) as client:
            client.delete(f"huey.redis.{name}")


def test_the_etl_command_gives_up_on_a_silent_redis_with_one_line(tmp_path):
    with hostile.silent() as silent:
        env = {
            "ETL_QUEUE_URL": f"redis://127.0.0.1:{silent.port}/0",
            "ETL_HOME": str(tmp_path),
            "PATH": "/usr/bin:/bin",
            **SHORT,
        }
        started = time.monotonic()
        proc = subprocess.run([str(ETL), "runs"], env=env, capture_output=True, text=True, timeout=BOUND * 3)
        assert time.monotonic() - started < BOUND + 5  # the interpreter's start on a loaded machine
        assert proc.returncode == 1, proc.stderr
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
        assert lines[0].startswith(f"error: cannot reach Redis at redis://127.0.0.1:{silent.port}/0"), lines


def test_redis_timings_come_from_the_environment():
    settings = queue_settings(
        {
            "ETL_QUEUE_URL": REDIS,
            "ETL_REDIS_CONNECT_SECONDS": "2.5",
            "ETL_REDIS_TIMEOUT_SECONDS": "7",
            "ETL_REDIS_RETRY_SECONDS": "0",
            "ETL_REDIS_WAIT_REPLICAS": "2",
            "ETL_REDIS_WAIT_SECONDS": "0.25",
        }
    )
    options = settings.redis
    assert (options.connect, options.timeout, options.retry, options.wait_replicas, options.wait) == (
        2.5,
        7,
        0,
        2,
        0.25,
    )
    kv = RedisKV(settings)
    kwargs = kv.client.connection_pool.connection_kwargs
    assert (kwargs["socket_connect_timeout"], kwargs["socket_timeout"]) == (2.5, 7)
    assert kv.probe.connection_pool.connection_kwargs["retry"].seconds == 0
    kv.close()


@pytest.fixture
def lone_redis(tmp_path):
    """Start ``redis-server`` processes of this test's own: ``start(*args)`` gives a port."""
    import shutil

    from tests.sentinel import _wait, free_port

    procs = []

    def start(*args: str) -> int:
        import redis

        port = free_port()
        argv = [shutil.which("redis-server") or "redis-server", "--port", str(port), "--save", "", *args]
        procs.append(subprocess.Popen(argv, cwd=tmp_path, stdout=subprocess.DEVNULL))
        _wait(lambda: redis.Redis(port=port).ping(), 10, f"redis-server on port {port}")
        return port

    yield start
    for proc in procs:
        proc.terminate()
        proc.wait(10)


def test_a_change_no_replica_confirms_is_said_once_and_then_not_waited_for(lone_redis, log_lines):
    port = lone_redis()
    kv = RedisKV(_settings(f"redis://127.0.0.1:{port}/0", ETL_REDIS_WAIT_REPLICAS="1", ETL_REDIS_WAIT_SECONDS="0.3"))
    started = time.monotonic()
    kv.atomic(lambda tx: tx.put("k", {"n": 1}), ["k"])
    assert time.monotonic() - started >= 0.3  # it waited for a replica
    warnings = [line for line in log_lines if "not confirmed by 1 replica(s) within 0.3s (0 of 1)" in line]
    assert len(warnings) == 1 and "going on without waiting for replicas for 30s" in warnings[0]
    started = time.monotonic()
    for n in range(5):
        kv.atomic(lambda tx, n=n: tx.put("k", {"n": n}), ["k"])
    assert time.monotonic() - started < 0.3 * 5  # no more waiting, and no more lines
    assert len([line for line in log_lines if "not confirmed" in line]) == 1
    assert kv.get("k") == {"n": 4}  # the changes were made all the same
    kv.close()


def test_a_primary_refusing_writes_without_replicas_is_a_transient_error(lone_redis):
    port = lone_redis("--min-replicas-to-write", "1")
    kv = RedisKV(_settings(f"redis://127.0.0.1:{port}/0"))
    with pytest.raises(TransientError, match="refuses writes: fewer replicas in sync than its min-replicas-to-write"):
        kv.atomic(lambda tx: tx.put("k", {"n": 1}), ["k"])
    kv.close()


def test_a_url_pointing_at_a_replica_is_a_transient_error_that_says_so(lone_redis):
    primary = lone_redis()
    replica = lone_redis("--replicaof", "127.0.0.1", str(primary))
    kv = RedisKV(_settings(f"redis://127.0.0.1:{replica}/0"))
    with pytest.raises(TransientError, match="is a read-only replica .*point ETL_QUEUE_URL at the new primary"):
        kv.atomic(lambda tx: tx.put("k", {"n": 1}), ["k"])
    kv.close()
