"""`etl worker --processes`: real worker processes under a supervisor, on Redis.

A killed worker process is started again and its chunk finishes; SIGTERM stops every process
gracefully, giving back the chunks in hand; a second signal stops them at once; a supervisor that
vanishes leaves no worker behind; `etl workers` and the supervisor's /metrics show them all.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess

from etl.store import WorkerInfo
from tests.background.conftest import free_port, queue, run_record, submit, target_ids, wait_finished, wait_for
from tests.background.test_metrics import try_scrape, value
from tests.test_supervisor import gone


def children(supervisor: subprocess.Popen) -> list[WorkerInfo]:
    """The live worker processes that ``supervisor`` started (by their registration)."""
    return [w for w in queue().store.workers(ttl=3) if w.supervisor.split(":")[1:2] == [str(supervisor.pid)]]


def start_supervisor(workers, processes: int = 2, args: tuple[str, ...] = (), **env: str):
    [supervisor] = workers.start(1, args=("--processes", str(processes), *args), **env)
    found = wait_for(lambda: len(ws := children(supervisor)) == processes and ws, 30, f"{processes} worker processes")
    return supervisor, found


def holder(run_id: str, among: list[WorkerInfo]) -> tuple[int, WorkerInfo] | None:
    """A chunk of the run being worked on now, and which of ``among`` holds it."""
    by_id = {w.id: w for w in among}
    for chunk in queue().store.get_chunks(run_id):
        if chunk.state == "running" and chunk.worker in by_id:
            return chunk.index, by_id[chunk.worker]
    return None


def test_a_killed_worker_process_is_started_again_and_its_chunk_finishes(cli, workers, job_file, tmp_path):
    port = free_port()
    supervisor, first = start_supervisor(workers, args=("--metrics-port", str(port)))
    assert len({w.supervisor for w in first}) == 1 and {w.pid for w in first}.isdisjoint({supervisor.pid})
    listed = cli("workers")
    assert f"supervisor {first[0].supervisor}: 2 process(es), 2 slot(s)" in listed.stdout
    assert all(f"  {w.id}" in listed.stdout for w in first)
    as_json = json.loads(cli("workers", "--json").stdout)
    assert sorted((w["id"], w["supervisor"]) for w in as_json) == sorted((w.id, w.supervisor) for w in first)

    run_id = submit(cli, job_file(60_000, 5_000, "[{type: sleepy, seconds: 1.0}]"))  # 12 chunks of 1 s
    wait_for(lambda: run_record(run_id).chunks_done >= 1, 60, "a chunk done")
    index, victim = wait_for(lambda: holder(run_id, first), 20, "a chunk in hand")
    os.kill(victim.pid, signal.SIGKILL)
    fresh = wait_for(
        lambda: [w for w in children(supervisor) if w.pid not in {f.pid for f in first}], 30, "a new worker process"
    )
    assert fresh[0].supervisor == victim.supervisor
    run = wait_finished(run_id)
    assert run.state == "completed", run.error
    assert queue().store.get_chunk(run_id, index).attempts >= 2
    ids = target_ids(tmp_path / "out/bg")
    assert sorted(ids) == list(range(1, 60_001))
    log = workers.log(supervisor)
    assert "worker process 0 died" in log or "worker process 1 died" in log
    assert "killed by SIGKILL); starting it again in 1s" in log
    # One port for every process: the counters of all of them, the killed one's included.
    samples = wait_for(lambda: try_scrape(port), 10, "the supervisor's metrics")
    assert value(samples, "etl_rows_written_total", job="bg") == 60_000
    assert value(samples, "etl_workers_live") == 2
    assert (value(samples, "etl_store_transactions_total") or 0) > 3 * 12
    assert value(samples, "etl_store_conflicts_total") is not None


def test_sigterm_stops_every_process_gracefully_and_gives_back_the_chunks_in_hand(cli, workers, job_file, tmp_path):
    supervisor, first = start_supervisor(workers, ETL_GRACE_SECONDS="1")
    run_id = submit(cli, job_file(20_000, 10_000, "[{type: sleepy, seconds: 5}]"))  # 2 chunks of 5 s
    wait_for(lambda: sum(c.state == "running" for c in queue().store.get_chunks(run_id)) == 2, 30, "both chunks held")
    supervisor.send_signal(signal.SIGTERM)
    assert supervisor.wait(20) == 0
    log = workers.log(supervisor)
    assert "SIGTERM: the worker processes finish their chunks in hand (up to 1.0s), then stop" in log
    assert log.count("gave back 1 chunk(s) still in hand") == 2
    assert all(gone(w.pid) for w in first)
    assert not children(supervisor), "every worker process deregistered"
    chunks = queue().store.get_chunks(run_id)
    assert [(c.state, c.attempts) for c in chunks] == [("queued", 0), ("queued", 0)]
    assert all("shut down before finishing" in c.errors[-1] for c in chunks)
    workers.start(1, concurrency=2)
    assert wait_finished(run_id).state == "completed"
    assert sorted(target_ids(tmp_path / "out/bg")) == list(range(1, 20_001))


def test_a_second_signal_kills_the_worker_processes_at_once(cli, workers, job_file):
    supervisor, first = start_supervisor(workers, ETL_GRACE_SECONDS="60")
    run_id = submit(cli, job_file(20_000, 10_000, "[{type: sleepy, seconds: 30}]"))
    wait_for(lambda: sum(c.state == "running" for c in queue().store.get_chunks(run_id)) == 2, 30, "both chunks held")
    supervisor.send_signal(signal.SIGTERM)
    wait_for(lambda: "SIGTERM: finishing the chunks in hand" in workers.log(supervisor), 10, "the processes told")
    supervisor.send_signal(signal.SIGINT)
    assert supervisor.wait(10) == 1
    assert "second SIGINT: killing the worker processes now" in workers.log(supervisor)
    assert all(gone(w.pid) for w in first)
    # Killed, not stopped: their chunks stay held until the leases run out, as after a SIGKILL.
    assert [c.state for c in queue().store.get_chunks(run_id)] == ["running", "running"]


def test_worker_processes_stop_when_their_supervisor_is_killed(workers, job_file, tmp_path):
    configs = tmp_path / "configs"
    configs.mkdir()
    job_file(10, 10).rename(configs / "bg.yaml")
    supervisor, first = start_supervisor(workers, args=("--configs", str(configs)))
    wait_for(lambda: "job file(s) in" in workers.log(supervisor), 10, "the schedules' directory read")
    assert workers.log(supervisor).count(f"1 job file(s) in {configs}") == 1, "only the first process fires schedules"
    supervisor.send_signal(signal.SIGKILL)
    supervisor.wait(5)
    wait_for(lambda: not queue().store.workers(ttl=60), 15, "the orphaned worker processes to deregister")
    assert workers.all_logs().count("the supervisor (pid") == 2


def test_the_supervisor_checks_the_queue_and_its_port_before_starting_any_process(cli, queue_env):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = cli("worker", "--processes", "2", "--metrics-port", str(port))
    assert result.returncode == 2, result.stderr
    assert f"--metrics-port {port}: cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "started" not in result.stderr and "Traceback" not in result.stderr

    nothing = f"redis://127.0.0.1:{free_port()}/0"
    result = cli("worker", "--processes", "2", env={"ETL_QUEUE_URL": nothing})
    assert result.returncode == 1, result.stderr
    assert "cannot reach Redis at redis://127.0.0.1" in result.stderr
    assert "started" not in result.stderr and "Traceback" not in result.stderr
