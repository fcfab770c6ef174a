"""Figures for background runs on Redis: the queue's per-chunk overhead and a run's throughput
with 1 and 2 workers.

    .venv/bin/python benchmarks/background.py [--redis redis://127.0.0.1:6379/13]

Starts real `etl worker` processes against a queue of its own and prints a table; asserts
nothing (figures vary by machine).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ETL = Path(sys.executable).with_name("etl")

TINY = """\
name: tiny-chunks
source: {type: generate, rows: 2000, columns: {id: {kind: sequence}}}
sink: {type: jsonl, path: out/tiny}
chunk_size: 1
"""


def measure(job: Path, args: list[str], workers: int, redis: str, workdir: Path) -> tuple[float, object]:
    sys.path.insert(0, str(ROOT))
    env = {**os.environ, "ETL_QUEUE_URL": redis, "ETL_QUEUE_NAME": f"bench{uuid.uuid4().hex[:8]}"}
    os.environ.update({k: env[k] for k in ("ETL_QUEUE_URL", "ETL_QUEUE_NAME")})
    from etl import api

    procs = [
        subprocess.Popen(
            [str(ETL), "worker"], cwd=workdir, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        for _ in range(workers)
    ]
    try:
        queue = api.open_queue()
        while len(queue.store.workers(15)) < workers:
            time.sleep(0.1)
        started = time.perf_counter()
        out = subprocess.run(
            [str(ETL), "run", str(job), "--background", *args],
            cwd=workdir,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        run_id = out.strip().splitlines()[-1]
        while not (run := api.get_run(run_id, queue)).finished:
            time.sleep(0.05)
        return time.perf_counter() - started, run
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/13")
    options = parser.parse_args()
    print(f"{'what':<44} {'workers':>7} {'wall s':>8} {'figure':>22}")
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        tiny = workdir / "tiny.yaml"
        tiny.write_text(TINY)
        demo = ROOT / "configs/demo.yaml"
        parquet = ["--set", "sink={type: parquet, path: out/demo, mode: replace}"]
        for workers in (1, 2):
            wall, run = measure(tiny, [], workers, options.redis, workdir)
            print(
                f"{'2,000 one-row chunks (queue overhead)':<44} {workers:>7} {wall:>8.2f} "
                f"{run.chunks_total / wall:>15,.0f} chunk/s"
            )
        for workers in (1, 2):
            wall, run = measure(demo, parquet, workers, options.redis, workdir)
            print(
                f"{'demo, 1,000,000 rows → parquet':<44} {workers:>7} {wall:>8.2f} "
                f"{run.rows_written / wall:>16,.0f} rows/s"
            )
            wall, run = measure(demo, [], workers, options.redis, workdir)
            print(
                f"{'demo, 1,000,000 rows → duckdb':<44} {workers:>7} {wall:>8.2f} "
                f"{run.rows_written / wall:>16,.0f} rows/s"
            )


if __name__ == "__main__":
    main()
