"""One lifecycle, three ways to run: the same scenarios in process, on the embedded queue and on
Redis workers give the same hooks, the same run record and the same rows in the target.

Each scenario runs `etl run` as a user would (``--sync``; ``--background`` on the embedded queue,
which the command works itself; ``--background --wait`` with a real `etl worker` on Redis). A test
plugin (``tests/background/stages.py``) records every lifecycle hook, from whichever process fires
it, into one file.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.background.conftest import ETL, Workers, quick_queue, target_ids, wait_for
from tests.conftest import run_cli

MODES = ["process", "embedded", "redis"]
ROWS, CHUNK = 4_000, 1_000  # four chunks: ids 1-1000 are chunk 0, 1001-2000 chunk 1, ...


@dataclass
class Mode:
    name: str
    tmp: Path
    env: dict[str, str]
    hooks: Path
    redis: str | None = None
    pool: Workers | None = field(default=None, repr=False)

    def workers(self, n: int = 1, concurrency: int = 2, **env: str) -> Workers:
        """The queue's workers (on Redis: real `etl worker` processes; none otherwise)."""
        if self.pool is None:
            self.pool = Workers({**self.env, **env}, self.tmp)
            self.pool.start(n, concurrency=concurrency)
        return self.pool

    def run(self, job: Path, *args: str) -> subprocess.CompletedProcess[str]:
        if self.name == "process":
            flags = ["--sync"]
        elif self.name == "embedded":
            flags = ["--background"]
        else:
            self.workers()
            flags = ["--background", "--wait"]
        return run_cli("run", str(job), *flags, *args, env=self.env)

    def start(self, job: Path) -> subprocess.Popen[bytes]:
        """`etl run` in the background of the test (to cancel it while it runs)."""
        if self.name == "redis":
            self.workers()
        flags = ["--sync"] if self.name == "process" else ["--background", "--wait"]
        with open(self.tmp / "run.err", "w") as err:
            return subprocess.Popen(
                [str(ETL), "run", str(job), *flags],
                env={**os.environ, **self.env},
                cwd=self.tmp,
                stdout=subprocess.DEVNULL,
                stderr=err,
            )

    def runs(self, job: str = "modes"):
        from etl import api

        return api.list_runs(job=job, limit=10)

    def last_run(self, job: str = "modes"):
        runs = self.runs(job)
        assert runs, f"no run of {job} was recorded"
        return runs[0]

    def events(self) -> list[dict]:
        if not self.hooks.exists():
            return []
        return [json.loads(line) for line in self.hooks.read_text().splitlines()]

    def hooks_seen(self) -> Counter:
        """How often each (hook, chunk, attempt, flag) happened: the order of different chunks'
        hooks differs between one process and several worker threads; their count does not."""
        seen = Counter()
        for e in self.events():
            if "." in e["hook"] or e["hook"] == "plugin_manager":
                continue
            seen[(e["hook"], e.get("chunk"), e.get("attempt"), e.get("will_retry", e.get("state")))] += 1
        return seen


@pytest.fixture(params=MODES)
def mode(request, redis_url, tmp_path, monkeypatch):
    hooks = tmp_path / "hooks.jsonl"
    monkeypatch.setenv("ETL_TEST_HOOKS", str(hooks))
    monkeypatch.delenv("ETL_TEST_HOOK_RAISES", raising=False)
    name = f"m{uuid.uuid4().hex[:10]}"
    env = quick_queue(redis_url if request.param == "redis" else None, name, tmp_path, monkeypatch)
    env["ETL_TEST_HOOKS"] = str(hooks)
    current = Mode(request.param, tmp_path, env, hooks, redis=env.get("ETL_QUEUE_URL"))
    yield current
    if current.pool is not None:
        current.pool.stop()
    if current.redis:
        import redis

        client = redis.Redis.from_url(current.redis)
        for pattern in (f"{env['ETL_QUEUE_NAME']}:*", f"huey.*{env['ETL_QUEUE_NAME']}*"):
            keys = list(client.scan_iter(match=pattern, count=1000))
            if keys:
                client.unlink(*keys)


def write_job(
    mode: Mode,
    transforms: str = "[]",
    sink: str | None = None,
    extra: str = "",
    rows: int = ROWS,
    source: str = "generate",
) -> Path:
    from tests.background.conftest import STAGES

    path = mode.tmp / "modes.yaml"
    path.write_text(
        f"""\
name: modes
plugins: ["{STAGES}"]
source: {{type: {source}, rows: {rows}, columns: {{id: {{kind: sequence}}, v: {{kind: int}}}}}}
transforms: {transforms}
sink: {sink or "{type: parquet, path: out/modes, mode: replace}"}
chunk_size: {CHUNK}
retry: {{attempts: 3, backoff: 0.2s, factor: 2, jitter: false}}
"""
        + extra
    )
    return path


def every_chunk(hook: str, attempt: int | None = 1, flag=None, chunks=range(4)) -> Counter:
    return Counter({(hook, c, attempt, flag): 1 for c in chunks})


def test_a_run_that_succeeds(mode):
    result = mode.run(write_job(mode))
    assert result.returncode == 0, result.stderr
    run = mode.last_run()
    assert (run.state, run.chunks_done, run.chunks_total, run.rows_read, run.rows_written) == (
        "completed",
        4,
        4,
        ROWS,
        ROWS,
    )
    assert run.retries == 0 and run.error is None
    assert sorted(target_ids(mode.tmp / "out/modes")) == list(range(1, ROWS + 1))
    assert mode.hooks_seen() == Counter(
        {("before_job_run", None, None, None): 1, ("after_job_run", None, None, "completed"): 1}
    ) + every_chunk("before_chunk_run") + every_chunk("after_chunk_run")
    events = [e["hook"] for e in mode.events() if e["hook"] != "plugin_manager" and "." not in e["hook"]]
    assert events[0] == "before_job_run" and events[-1] == "after_job_run"
    # The run shows in `etl runs` and `etl status`, whichever way it ran.
    listed = json.loads(run_cli("runs", "--json", env=mode.env).stdout)
    assert [r["id"] for r in listed] == [run.id]
    status = json.loads(run_cli("status", run.id, "--json", env=mode.env).stdout)
    assert status["state"] == "completed" and status["rows_read"] == ROWS


def test_etl_run_counts_and_plans_once_with_one_plugin_manager_per_process(mode):
    result = mode.run(write_job(mode, source="counted"))
    assert result.returncode == 0, result.stderr
    events = mode.events()
    assert [e["hook"] for e in events if e["hook"].startswith("source.")] == ["source.count", "source.plan"]
    managers = Counter(e["pid"] for e in events if e["hook"] == "plugin_manager")
    assert managers and set(managers.values()) == {1}, f"plugin managers built per process: {managers}"
    run = mode.last_run()
    assert (run.state, run.rows_total, run.chunks_total) == ("completed", ROWS, 4)


def test_a_transient_error_is_retried_then_the_run_completes(mode):
    log = mode.tmp / "failures.log"
    job = write_job(mode, f'[{{type: fail_times, on_id: 1500, times: 1, log: "{log}"}}]')
    result = mode.run(job)
    assert result.returncode == 0, result.stderr
    run = mode.last_run()
    assert (run.state, run.chunks_done, run.retries, run.rows_written) == ("completed", 4, 1, ROWS)
    assert sorted(target_ids(mode.tmp / "out/modes")) == list(range(1, ROWS + 1))
    seen = mode.hooks_seen()
    assert seen[("on_chunk_error", 1, 1, True)] == 1
    assert seen[("before_chunk_run", 1, 2, None)] == 1
    assert seen[("after_chunk_run", 1, 2, None)] == 1
    assert seen[("after_job_run", None, None, "completed")] == 1
    assert mode.last_run().chunks_failed == 0


def test_a_permanent_failure_fails_the_run_and_keeps_what_was_staged(mode):
    log = mode.tmp / "failures.log"
    job = write_job(mode, f'[{{type: fail_times, on_id: 2500, times: 9, log: "{log}", permanent: true}}]')
    result = mode.run(job)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    run = mode.last_run()
    assert (run.state, run.error_chunk, run.chunks_failed) == ("failed", 2, 1)
    assert "failure 1 of 9 at id 2500" in run.error
    assert len(log.read_text().split()) == 1, "a permanent error is not retried"
    seen = mode.hooks_seen()
    assert seen[("on_chunk_error", 2, 1, False)] == 1
    assert seen[("on_job_error", 2, None, "failed")] == 1
    assert seen[("after_job_run", None, None, "completed")] == 0
    assert not (mode.tmp / "out/modes").exists(), "a replace run that failed does not touch the target"
    staging = mode.tmp / f"out/.modes.etl-staging-{run.id}"
    assert f"it keeps what its sink staged (the directory {staging}): `etl retry {run.id}`" in result.stderr
    assert f"`etl cancel {run.id}` drops it" in result.stderr


def test_rejected_rows_are_skipped_and_counted(mode):
    job = write_job(mode, "[{type: reject_every, n: 10}]", extra="on_error: skip\n")
    result = mode.run(job)
    assert result.returncode == 0, result.stderr
    run = mode.last_run()
    assert (run.state, run.rows_read, run.rows_written, run.rows_rejected) == ("completed", ROWS, 3_600, 400)
    assert sorted(target_ids(mode.tmp / "out/modes")) == [i for i in range(1, ROWS + 1) if i % 10]
    assert mode.hooks_seen()[("after_job_run", None, None, "completed")] == 1


def test_max_rejects_fails_the_run(mode):
    job = write_job(mode, "[{type: reject_every, n: 10}]", extra="on_error: skip\nmax_rejects: 150\n")
    result = mode.run(job)
    assert result.returncode == 1
    run = mode.last_run()
    assert run.state == "failed" and "more than max_rejects (150)" in run.error
    assert mode.hooks_seen()[("on_job_error", run.error_chunk, None, "failed")] == 1


def test_a_cancelled_run_drops_what_it_staged(mode):
    job = write_job(mode, "[{type: sleepy, seconds: 0.5}]", rows=20_000)
    proc = mode.start(job)
    try:
        run = wait_for(lambda: next((r for r in mode.runs() if r.chunks_done >= 1), None), 60, "a chunk done")
        cancelled = run_cli("cancel", run.id, env=mode.env)
        assert cancelled.returncode == 0, cancelled.stderr
        proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0, (mode.tmp / "run.err").read_text()
    done = wait_for(lambda: (r := mode.last_run()).aborted and r, 30, "the run's staging to be dropped")
    assert done.state == "cancelled" and done.chunks_done < done.chunks_total
    assert not (mode.tmp / "out/modes").exists(), "the replace never happened"
    staging = list((mode.tmp / "out").glob("*")) if (mode.tmp / "out").exists() else []
    assert staging == [], f"staging left behind: {staging}"
    wait_for(lambda: mode.hooks_seen()[("on_job_cancel", None, None, "cancelled")] == 1, 10, "on_job_cancel")
    time.sleep(0.5)
    seen = mode.hooks_seen()
    assert seen[("on_job_cancel", None, None, "cancelled")] == 1, "once, whoever dropped the staging"
    assert seen[("on_job_error", None, None, "failed")] == 0


def test_a_finalize_failure_fails_the_run(mode):
    job = write_job(mode, sink="{type: finalize_fails, path: out/modes, mode: replace}")
    result = mode.run(job)
    assert result.returncode == 1
    run = mode.last_run()
    assert run.state == "failed" and run.error == "finalizing failed: the target refused the swap"
    assert run.chunks_done == 4 and run.error_chunk is None
    seen = mode.hooks_seen()
    assert seen[("on_job_error", None, None, "failed")] == 1
    assert seen == every_chunk("before_chunk_run") + every_chunk("after_chunk_run") + Counter(
        {("before_job_run", None, None, None): 1, ("on_job_error", None, None, "failed"): 1}
    )


def test_an_incremental_run_moves_the_mark_once_it_completes(mode):
    data = mode.tmp / "data"
    data.mkdir()
    pq.write_table(pa.table({"id": list(range(1, 1_001))}), data / "a.parquet")
    job = mode.tmp / "modes.yaml"
    job.write_text(
        f"""\
name: modes
source: {{type: parquet, path: "{data}/*.parquet"}}
sink: {{type: parquet, path: out/modes}}
incremental: {{cursor: mtime}}
chunk_size: 500
thresholds: {{background: 1}}
"""
    )
    first = mode.run(job)
    assert first.returncode == 0, first.stderr
    from etl import api

    mark = api.open_store().get_mark("modes")
    assert mark is not None and mark["run"] == mode.last_run().id
    time.sleep(0.05)
    pq.write_table(pa.table({"id": list(range(1_001, 1_301))}), data / "b.parquet")
    second = mode.run(job)
    assert second.returncode == 0, second.stderr
    runs = mode.runs()
    assert [r.rows_written for r in runs] == [300, 1_000], "the second run read only the new file"
    assert api.open_store().get_mark("modes")["run"] == runs[0].id
    assert sorted(target_ids(mode.tmp / "out/modes")) == list(range(1, 1_301))


def test_a_failing_observer_hook_is_logged_and_changes_nothing(mode, monkeypatch):
    monkeypatch.setenv("ETL_TEST_HOOK_RAISES", "after_chunk_run,before_job_run")
    mode.env["ETL_TEST_HOOK_RAISES"] = "after_chunk_run,before_job_run"
    result = mode.run(write_job(mode))
    assert result.returncode == 0, result.stderr
    run = mode.last_run()
    assert (run.state, run.rows_written, run.retries) == ("completed", ROWS, 0)
    assert sorted(target_ids(mode.tmp / "out/modes")) == list(range(1, ROWS + 1))
    assert mode.hooks_seen() == Counter(
        {("before_job_run", None, None, None): 1, ("after_job_run", None, None, "completed"): 1}
    ) + every_chunk("before_chunk_run") + every_chunk("after_chunk_run")
    logs = result.stderr + (mode.pool.all_logs() if mode.pool else "")
    assert "a plugin's etl_after_chunk_run failed: RuntimeError: the test plugin's after_chunk_run broke" in logs
    assert "a plugin's etl_before_job_run failed" in logs


class _Hooks:
    """A local webhook receiver: what a `notify:` webhook target posts."""

    def __init__(self) -> None:
        import http.server
        import threading

        received = self.received = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - the standard library's name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                received.append(json.loads(body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_a_run_whose_processes_die_is_failed_by_the_reaper_and_notified(mode):
    """A poison chunk SIGKILLs whatever process runs it: the process of an in-process run (a
    worker's reaper fails the run once its lease runs out), or every worker that takes it on a
    queue (the reaper gives up after the job's attempts). Either way the run fails, its hooks
    fire in the reaping worker, and the `notify:` webhook hears of it."""
    hooks = _Hooks()
    try:
        crashes = mode.tmp / "crashes.log"
        job = write_job(
            mode,
            f'[{{type: crash, on_id: 2345, log: "{crashes}"}}]',
            extra=f"notify: [{{type: webhook, url: '{hooks.url}', when: [failed]}}]\n",
        )
        if mode.name == "process":
            result = mode.run(job)
            assert result.returncode == -9, "the poison chunk killed the process running the run"
            run = mode.last_run()
            assert (run.state, run.driver) == ("active", "process")
            pool = mode.workers(1)  # any worker's reaper sees the lease run out
        else:
            mode.env["ETL_LEASE_SECONDS"] = "2"
            pool = mode.workers(2, concurrency=1)  # a killed worker takes no other chunk down
            from etl import api

            api.submit(job)
            deadline = time.monotonic() + 90
            restarted = set()
            while not (mode.runs() and mode.last_run().finished) and time.monotonic() < deadline:
                for proc in list(pool.procs):  # a supervisor restarts dead workers
                    if proc.poll() is not None and proc not in restarted:
                        restarted.add(proc)
                        pool.start(1, concurrency=1)
                time.sleep(0.2)
        run = wait_for(lambda: (r := mode.last_run()).finished and r, 60, "the reaper to fail the run")
        # In process, chunk 2 is read ahead while chunk 1 is written: the run dies holding chunk 1.
        assert run.state == "failed" and run.error_chunk == (1 if mode.name == "process" else 2), run.error
        if mode.name == "process":
            assert "the process running it" in run.error and len(crashes.read_text().split()) == 1
        else:
            assert "gave up after 3 attempts" in run.error and len(crashes.read_text().split()) == 3
        wait_for(lambda: hooks.received, 30, "the failure notification")
        assert [(n["run_id"], n["event"], n["error_chunk"]) for n in hooks.received] == [
            (run.id, "run.failed", run.error_chunk)
        ]
        wait_for(
            lambda: mode.hooks_seen()[("on_job_error", run.error_chunk, None, "failed")] == 1, 10, "etl_on_job_error"
        )
        reaper = {e["pid"] for e in mode.events() if e["hook"] == "on_job_error"}
        assert reaper <= {p.pid for p in pool.procs}, "the hook fired in a worker whose reaper failed the run"
    finally:
        hooks.close()


def test_a_failed_run_is_resumed_by_etl_retry_from_what_it_kept(mode):
    """A run that failed at chunk 2 kept chunks 0, 1 and 3 staged (replace mode); once the cause
    is gone, `etl retry` runs chunk 2 alone and finalizes, whichever way the run first ran."""
    log = mode.tmp / "failures.log"
    job = write_job(mode, f'[{{type: fail_times, on_id: 2500, times: 1, log: "{log}", permanent: true}}]')
    assert mode.run(job).returncode == 1
    failed = mode.last_run()
    assert failed.state == "failed" and not (mode.tmp / "out/modes").exists()
    done_before = {c.index for c in api_chunks(failed.id) if c.state == "done"}
    args = ["--wait"] if mode.name == "redis" else []
    retried = run_cli("retry", failed.id, *args, env=mode.env)
    assert retried.returncode == 0, retried.stderr
    run = mode.last_run()
    assert (run.id, run.state, run.rows_written) == (failed.id, "completed", ROWS)
    assert sorted(target_ids(mode.tmp / "out/modes")) == list(range(1, ROWS + 1))
    again = [e["chunk"] for e in mode.events() if e["hook"] == "before_chunk_run" and e["chunk"] in done_before]
    assert len(again) == len(done_before), "the chunks done before the failure did not run again"
    assert mode.hooks_seen()[("after_job_run", None, None, "completed")] == 1


def api_chunks(run_id: str):
    from etl import api

    return api.open_queue().store.get_chunks(run_id)
