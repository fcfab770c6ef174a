"""Fixtures for background runs: a real Redis, a private queue per test, real worker processes."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pyarrow.dataset as ds
import pytest

ETL = Path(sys.executable).with_name("etl")
STAGES = Path(__file__).with_name("stages.py")
REDIS = "redis://127.0.0.1:6379/14"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def redis_up(url: str) -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1).ping())
    except redis.RedisError:
        return False


@pytest.fixture(scope="session")
def redis_url():
    """The machine's Redis, or one started for the session. Without either the tests fail."""
    if redis_up(REDIS):
        yield REDIS
        return
    server = shutil.which("redis-server")
    if server is None:
        pytest.fail("the background tests need Redis: none on 127.0.0.1:6379 and no redis-server to start")
    port = free_port()
    proc = subprocess.Popen(
        [server, "--port", str(port), "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL
    )
    url = f"redis://127.0.0.1:{port}/14"
    wait_for(lambda: redis_up(url), 10, "the Redis started for the tests")
    yield url
    proc.terminate()
    proc.wait(10)


def wait_for(predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def quick_queue(url: str | None, name: str, tmp_path: Path, monkeypatch) -> dict[str, str]:
    """The environment of a queue with short leases and timings, set for this process too: on
    Redis at ``url``, or (``None``) the embedded queue in the test's own ``ETL_HOME``."""
    if url is None:
        for variable in ("ETL_QUEUE_URL", "REDIS_HOST", "REDIS_URL"):
            monkeypatch.delenv(variable, raising=False)
    env = {
        **({"ETL_QUEUE_URL": url} if url is not None else {}),
        "ETL_QUEUE_NAME": name,
        "ETL_HOME": str(tmp_path / ".etl"),
        "ETL_LEASE_SECONDS": "3",
        "ETL_REAPER_SECONDS": "1",
        "ETL_HEARTBEAT_SECONDS": "1",
        "ETL_LOST_AFTER_SECONDS": "4",
        "ETL_GRACE_SECONDS": "5",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


@pytest.fixture
def queue_env(redis_url, tmp_path, monkeypatch):
    """A queue of its own on the shared Redis, with short leases, for this test and its workers."""
    import redis

    name = f"t{uuid.uuid4().hex[:10]}"
    env = quick_queue(redis_url, name, tmp_path, monkeypatch)
    yield env
    client = redis.Redis.from_url(env["ETL_QUEUE_URL"])
    for pattern in (f"{name}:*", f"huey.*{name}*"):
        keys = list(client.scan_iter(match=pattern, count=1000))
        for start in range(0, len(keys), 1000):
            client.unlink(*keys[start : start + 1000])


class Workers:
    """Real `etl worker` processes, with their output in files."""

    def __init__(self, env: dict[str, str], cwd: Path) -> None:
        self.env = {**os.environ, **env}
        self.cwd = cwd
        self.procs: list[subprocess.Popen] = []
        self.logs: dict[int, Path] = {}
        self._files: list = []

    def start(self, n: int = 1, concurrency: int = 1, args: tuple[str, ...] = (), **env: str) -> list[subprocess.Popen]:
        started = []
        for _ in range(n):
            log = self.cwd / f"worker-{len(self.procs)}.log"
            out = open(log, "w")  # noqa: SIM115 - closed in stop()
            self._files.append(out)
            proc = subprocess.Popen(
                [str(ETL), "worker", "-w", str(concurrency), *args],
                cwd=self.cwd,
                env={**self.env, **env},
                stdout=out,
                stderr=subprocess.STDOUT,
            )
            self.procs.append(proc)
            self.logs[proc.pid] = log
            started.append(proc)
        return started

    def log(self, proc: subprocess.Popen) -> str:
        return self.logs[proc.pid].read_text()

    def all_logs(self) -> str:
        return "\n".join(p.read_text() for p in self.logs.values())

    def alive(self) -> list[subprocess.Popen]:
        return [p for p in self.procs if p.poll() is None]

    def stop(self) -> None:
        for proc in self.alive():
            try:
                proc.send_signal(signal.SIGCONT)
                proc.terminate()
            except ProcessLookupError:
                pass
        for proc in self.procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        for out in self._files:
            out.close()


@pytest.fixture
def workers(queue_env, tmp_path):
    pool = Workers(queue_env, tmp_path)
    yield pool
    pool.stop()


@pytest.fixture
def start_dashboard(queue_env, tmp_path):
    """Start an `etl dashboard` on the test's queue (its arguments, token and environment as given)."""
    from tests.background.dashboards import Dashboards

    boards = Dashboards(queue_env, tmp_path)
    yield boards.start
    boards.stop()


@pytest.fixture
def dashboard(start_dashboard):
    """An `etl dashboard` on the test's queue, with the test token."""
    return start_dashboard()


@pytest.fixture
def job_file(tmp_path):
    """Write a background test job: generated ids → the given transforms → a parquet directory."""

    def make(
        rows: int, chunk_size: int, transforms: str = "[]", extra: str = "", name: str = "bg", sink: str | None = None
    ) -> Path:
        text = f"""\
            name: {name}
            plugins: ["{STAGES}"]
            source: {{type: generate, rows: {rows}, columns: {{id: {{kind: sequence}}, v: {{kind: int}}}}}}
            transforms: {transforms}
            sink: {sink or f"{{type: parquet, path: out/{name}}}"}
            chunk_size: {chunk_size}
            thresholds: {{background: 1}}
            retry: {{attempts: 3, backoff: 1s, factor: 2, jitter: false}}
        """
        path = tmp_path / f"{name}.yaml"
        path.write_text(textwrap.dedent(text) + textwrap.dedent(extra))
        return path

    return make


def target_ids(directory: Path) -> list[int]:
    if not directory.exists():
        return []
    return ds.dataset(directory, format="parquet").to_table(columns=["id"]).column("id").to_pylist()


def submit(cli, job: Path, *args: str) -> str:
    result = cli("run", str(job), "--background", *args)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()[-1]


_QUEUES: dict[str, object] = {}


def queue():
    """The queue of the current test's environment (one per queue name)."""
    from etl import api

    name = os.environ["ETL_QUEUE_NAME"]
    if name not in _QUEUES:
        _QUEUES.clear()
        _QUEUES[name] = api.open_queue()
    return _QUEUES[name]


def run_record(run_id: str):
    from etl import api

    return api.get_run(run_id, queue())


def wait_finished(run_id: str, timeout: float = 90):
    return wait_for(lambda: (r := run_record(run_id)).finished and r, timeout, f"run {run_id} to finish")
