"""Background runs with real workers: dispatch, commands, parallelism, retries, concurrency."""

from __future__ import annotations

import json
import time

from tests.background.conftest import queue, run_record, submit, target_ids, wait_finished, wait_for


def test_a_background_run_completes_on_two_workers(cli, workers, job_file, tmp_path):
    workers.start(2)
    job = job_file(50_000, 5_000, "[{type: sleepy, seconds: 0.05}]")
    run_id = submit(cli, job)
    run = wait_finished(run_id)
    assert run.state == "completed", run.error
    assert (run.rows_written, run.chunks_done, run.chunks_total) == (50_000, 10, 10)
    ids = target_ids(tmp_path / "out/bg")
    assert sorted(ids) == list(range(1, 50_001))
    status = json.loads(cli("status", run_id, "--json").stdout)
    assert status["state"] == "completed" and status["finished_at"].endswith("Z")
    assert len(status["chunks"]) == 10 and {c["state"] for c in status["chunks"]} == {"done"}
    listed = json.loads(cli("runs", "--json").stdout)
    assert [r["id"] for r in listed] == [run_id]
    live = json.loads(cli("workers", "--json").stdout)
    assert len(live) == 2 and {w["pid"] for w in live} == {p.pid for p in workers.procs}
    assert all(w["host"] and w["last_seen"].endswith("Z") for w in live)
    # Chunks ran on both workers, and Huey's own lines appear once, through loguru.
    logs = [workers.log(p) for p in workers.procs]
    assert all("chunk" in log and "done" in log for log in logs)
    assert all(log.count("worker") >= 1 and "Huey consumer started" not in log for log in logs)


def test_wait_follows_the_run_with_a_progress_bar(cli, workers, job_file):
    workers.start(1)
    result = cli("run", str(job_file(20_000, 5_000)), "--background", "--wait")
    assert result.returncode == 0, result.stderr
    assert "completed [##############################] 100.0% · 20,000/20,000 rows" in result.stderr
    assert "chunks 4/4" in result.stderr


def test_max_parallel_bounds_the_chunks_in_flight(cli, workers, job_file):
    workers.start(3)
    run_id = submit(cli, job_file(40_000, 5_000, "[{type: sleepy, seconds: 0.3}]", extra="max_parallel: 1\n"))
    seen = 0
    while not run_record(run_id).finished:
        chunks = queue().store.get_chunks(run_id)
        seen = max(seen, sum(c.state in ("queued", "running") for c in chunks))
        time.sleep(0.05)
    assert run_record(run_id).state == "completed"
    assert seen == 1


def test_a_failing_chunk_follows_the_retry_policy_then_retry_completes_it(cli, workers, job_file, tmp_path):
    marker, log = tmp_path / "down", tmp_path / "failures.log"
    marker.touch()
    workers.start(2)
    transforms = f'[{{type: fail_while, marker: "{marker}", on_id: 25001, log: "{log}"}}]'
    run_id = submit(cli, job_file(50_000, 5_000, transforms))
    run = wait_finished(run_id)
    assert run.state == "failed" and run.error_chunk == 5
    assert "upstream service is down" in run.error
    times = [float(t) for t in log.read_text().split()]
    assert len(times) == 3, "three attempts, as retry.attempts says"
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert gaps[0] >= 1.0 and gaps[1] >= 2.0, f"backoff 1s then 2s, got {gaps}"
    chunks = {c.index: c for c in queue().store.get_chunks(run_id)}
    assert chunks[5].state == "failed" and chunks[5].attempts == 3
    done_before = {i for i, c in chunks.items() if c.state == "done"}
    assert status_exit(cli, run_id) == 1
    # The cause is fixed: retry runs only what did not succeed.
    marker.unlink()
    result = cli("retry", run_id)
    assert result.returncode == 0, result.stderr
    run = wait_finished(run_id)
    assert run.state == "completed"
    after = {c.index: c for c in queue().store.get_chunks(run_id)}
    assert all(after[i].attempts == chunks[i].attempts for i in done_before), "succeeded chunks were not re-run"
    assert sorted(target_ids(tmp_path / "out/bg")) == list(range(1, 50_001))


def status_exit(cli, run_id: str) -> int:
    return cli("status", run_id).returncode


def test_two_runs_of_one_job_at_once_are_both_correct(cli, workers, job_file, tmp_path):
    workers.start(2)
    job = job_file(30_000, 5_000, "[{type: sleepy, seconds: 0.05}]")
    first, second = submit(cli, job), submit(cli, job)
    assert first != second
    for run_id in (first, second):
        assert wait_finished(run_id).state == "completed"
    ids = target_ids(tmp_path / "out/bg")
    assert sorted(ids) == sorted(list(range(1, 30_001)) * 2)


def test_concurrency_one_refuses_a_second_unfinished_run(cli, workers, job_file):
    job = job_file(30_000, 5_000, "[{type: sleepy, seconds: 0.2}]", extra="concurrency: 1\n")
    first = submit(cli, job)
    refused = cli("run", str(job), "--background")
    assert refused.returncode == 2
    assert f"allows 1 unfinished run(s) at a time (concurrency: 1) and {first} is still unfinished" in refused.stderr
    assert "Traceback" not in refused.stderr
    workers.start(1)
    assert wait_finished(first).state == "completed"
    assert cli("run", str(job), "--background").returncode == 0


def test_cancel_stops_a_run_and_drops_what_it_staged(cli, workers, job_file, tmp_path):
    workers.start(1)
    job = job_file(60_000, 5_000, "[{type: sleepy, seconds: 0.3}]")
    replace = "sink: {type: parquet, path: out/bg, mode: replace}"
    job.write_text(job.read_text().replace("sink: {type: parquet, path: out/bg}", replace))
    run_id = submit(cli, job)
    wait_for(lambda: run_record(run_id).chunks_done >= 2, 30, "two chunks done")
    result = cli("cancel", run_id)
    assert result.returncode == 0, result.stderr
    run = wait_finished(run_id)
    assert run.state == "cancelled"
    wait_for(lambda: not list(tmp_path.glob("out/.bg.etl-staging-*")), 20, "the staging directory to be dropped")
    assert not (tmp_path / "out/bg").exists(), "a cancelled replace never swaps in"
    time.sleep(1.5)
    assert run_record(run_id).chunks_done < 12, "no chunks are handed out after the cancel"


def test_bad_input_to_the_commands_exits_2_and_changes_nothing(cli, queue_env):
    for args, message in [
        (["status", "no-such-run"], "no run 'no-such-run'"),
        (["retry", "no-such-run"], "no run 'no-such-run'"),
        (["cancel", "no-such-run"], "no run 'no-such-run'"),
        (["clean", "--state", "completed", "--older-than", "7 fortnights"], "is not a duration"),
        (["clean", "--state", "done"], "'done' is not one of"),
        (["runs", "--state", "runing"], "'runing' is not one of"),
    ]:
        result = cli(*args)
        assert result.returncode == 2, (args, result.stderr)
        assert message in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr
    typo = cli("runs", env={"ETL_QUEUE_URL": "reddis://127.0.0.1:6379"})
    assert typo.returncode == 2 and 'did you mean "redis"' in typo.stderr


def test_retention_keeps_redis_memory_flat(cli, workers, job_file, queue_env):
    import redis

    workers.start(1, ETL_KEEP_RUNS="3")
    job = job_file(100, 100)
    client = redis.Redis.from_url(queue_env["ETL_QUEUE_URL"])
    name = queue_env["ETL_QUEUE_NAME"]
    counts = []
    for _ in range(8):
        assert wait_finished(submit(cli, job)).state == "completed"
        counts.append(sum(1 for _ in client.scan_iter(match=f"{name}:*", count=1000)))
    assert len(queue().store.list_runs(limit=100)) == 3
    assert counts[-1] == counts[3], f"keys stay flat once retention applies: {counts}"


def test_a_worker_keeps_a_log_of_each_run_it_works_on(cli, workers, job_file, tmp_path, queue_env):
    workers.start(1)
    run_id = submit(cli, job_file(10_000, 5_000, "[{type: fail_while, marker: " + f'"{tmp_path}"' + "}]"))
    run = wait_finished(run_id)
    assert run.state == "failed"
    log = (tmp_path / ".etl" / "runs" / run_id / "run.log").read_text()
    assert "planned bg" in log and "retrying in" in log
    assert "Traceback" in log and "TransientError: the upstream service is down" in log
