"""How background runs scale with worker processes (`etl worker --processes`), on Redis.

    .venv/bin/python benchmarks/scale.py [--max N] [--threads T] [--workers 1,2,4,8,14]
                                         [--rows-python R] [--rows-arrow R] [--chunks C]
                                         [--repeat N] [--redis redis://127.0.0.1:6379/13]

Part 1: for 1, 2, 4, … worker processes (up to the CPUs this process may use, or --max; -w
--threads each), then one process with as many threads, one run of each of three jobs, and its
rows/s and speed-up over one process (layout: processes × threads):

* python: a transform in pure Python (rowwise, hashing each row), which holds the interpreter's
  lock: one process uses one core, whatever its threads;
* arrow: Arrow compute only (cast, select) into parquet, which mostly releases the lock;
* tiny: chunks of one row into a sink that writes nothing: the queue's cost per chunk (messages,
  the run store's transactions), in ms of wall time per chunk for the whole pool.

Part 2: the run store's optimistic transactions (WATCH/MULTI/EXEC, redone on a conflict) on the
tiny job at 1, 2, 4, 8, 14 workers (processes × threads, --workers): transactions and conflicts
per chunk, read from the supervisor's /metrics (`etl_store_transactions_total`,
`etl_store_conflicts_total`, summed over its processes), and the commands Redis ran per chunk
(`INFO commandstats`: every client of that Redis counts, so give it a Redis of its own for an
exact figure).

A run's time is the store's, from its start (a worker activating it) to its end, so the start
of `etl run` and of the workers is not counted. Each measurement uses a queue of its own
(ETL_QUEUE_NAME) on the given Redis, deleted afterwards. With --repeat N, each figure is the
median of N runs (the layouts taking turns). Prints tables; asserts nothing
(figures vary by machine and load). It prints the machine's capacity before and after: how many
times one process's work N pure-Python processes do at once; a speed-up can't exceed it.
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ETL = Path(sys.executable).with_name("etl")
sys.path.insert(0, str(ROOT))

HASHING = '''\
import hashlib


def digest(row):
    """Pure Python per row: 50 rounds of SHA-256 over a short string (too short for hashlib to
    release the interpreter's lock)."""
    h = str(row["id"]).encode()
    for _ in range(50):
        h = hashlib.sha256(h).digest()
    row["h"] = h.hex()
    return row
'''

NULL_SINK = '''\
from etl import Sink, hookimpl


class Null(Sink):
    """Counts the rows of each chunk and keeps nothing."""

    name = "null"

    def write(self, chunk, batches):
        return sum(batch.num_rows for batch in batches)


@hookimpl
def etl_register_sinks():
    return [Null]
'''

JOBS = {
    "python": """\
        name: scale-python
        source: {{type: generate, rows: {rows}, columns: {{id: {{kind: sequence}}, v: {{kind: int}}}}}}
        transforms: [{{type: python, function: "hashing.py:digest", rowwise: true}}]
        sink: {{type: parquet, path: out/python, mode: replace}}
        chunk_size: {chunk}
        thresholds: {{background: 1}}
    """,
    "arrow": """\
        name: scale-arrow
        source:
          type: generate
          rows: {rows}
          columns: {{id: {{kind: sequence}}, v: {{kind: int}}, x: {{kind: float}}}}
        transforms:
          - {{type: cast, columns: {{v: float64, x: float32}}}}
          - {{type: select, columns: [id, x, v]}}
        sink: {{type: parquet, path: out/arrow, mode: replace}}
        chunk_size: {chunk}
        thresholds: {{background: 1}}
    """,
    "tiny": """\
        name: scale-tiny
        plugins: ["null_sink.py"]
        source: {{type: generate, rows: {rows}, columns: {{id: {{kind: sequence}}}}}}
        sink: {{type: "null"}}
        chunk_size: 1
        thresholds: {{background: 1}}
    """,
}


@dataclass
class Measured:
    seconds: float
    rows: int
    chunks: int
    transactions: float
    conflicts: float
    #: Commands Redis ran meanwhile (all its clients'), from INFO commandstats.
    commands: float
    #: The 1-minute load average just after the run.
    load: float


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(port: int) -> dict[str, float]:
    """The supervisor's metrics without labels (the sums over its processes)."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30).read().decode()
    found: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#") and "{" not in line:
            name, _, value = line.rpartition(" ")
            found[name] = float(value)
    return found


def commands_run(client) -> float:
    """How many commands the Redis has run since its statistics were last reset."""
    return float(sum(stats["calls"] for stats in client.info("commandstats").values()))


def measure(job: Path, processes: int, threads: int, redis: str, workdir: Path) -> Measured:
    from etl import api
    from etl.settings import queue_settings

    name = f"scale{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "ETL_QUEUE_URL": redis, "ETL_QUEUE_NAME": name, "ETL_HOME": str(workdir / ".etl")}
    os.environ.update({k: env[k] for k in ("ETL_QUEUE_URL", "ETL_QUEUE_NAME", "ETL_HOME")})
    port = free_port()
    supervisor = subprocess.Popen(
        [str(ETL), "worker", "--processes", str(processes), "-w", str(threads), "--metrics-port", str(port)],
        cwd=workdir,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    queue = api.open_queue(queue_settings())
    try:
        deadline = time.monotonic() + 120
        while len(queue.store.workers(15)) < processes:
            if time.monotonic() > deadline or supervisor.poll() is not None:
                raise SystemExit(f"the {processes} worker processes did not start")
            time.sleep(0.1)
        before = scrape(port)
        client = queue.store.kv.client  # type: ignore[attr-defined]
        commands = commands_run(client)
        out = subprocess.run(
            [str(ETL), "run", str(job), "--background"], cwd=workdir, env=env, capture_output=True, text=True
        )
        if out.returncode != 0:
            raise SystemExit(f"etl run failed: {out.stderr}")
        run_id = out.stdout.strip().splitlines()[-1]
        while not (run := api.get_run(run_id, queue)).finished:
            time.sleep(0.05)
        if run.state != "completed":
            raise SystemExit(f"run {run_id} {run.state}: {run.error}")
        time.sleep(0.3)  # the last completion's counters are written after the run is
        after = scrape(port)
        commands = commands_run(client) - commands
        return Measured(
            seconds=(run.finished_at or 0) - (run.started_at or 0),
            rows=run.rows_written,
            chunks=run.chunks_total,
            transactions=after["etl_store_transactions_total"] - before["etl_store_transactions_total"],
            conflicts=after["etl_store_conflicts_total"] - before["etl_store_conflicts_total"],
            commands=commands,
            load=os.getloadavg()[0],
        )
    finally:
        supervisor.send_signal(signal.SIGTERM)
        supervisor.wait(60)
        client = queue.store.kv.client  # type: ignore[attr-defined]
        for pattern in (f"{name}:*", f"huey.*{name}*"):
            keys = list(client.scan_iter(match=pattern, count=1000))
            for start in range(0, len(keys), 500):
                client.unlink(*keys[start : start + 500])
        queue.close()


SPIN = "import hashlib\nh = b'x'\nfor _ in range(400_000):\n    h = hashlib.sha256(h).digest()\n"


def capacity(processes: int) -> float:
    """How many cores the machine gives now: ``processes`` copies of a pure-Python loop run at
    once, against one alone (2.0 for 2 processes on 2 free cores; less when other work shares
    them, and then no job can scale further than this)."""

    def wall(n: int) -> float:
        started = time.perf_counter()
        procs = [subprocess.Popen([sys.executable, "-c", SPIN]) for _ in range(n)]
        for proc in procs:
            proc.wait()
        return time.perf_counter() - started

    return processes * wall(1) / wall(processes)


def median_of(
    repeat: int, job: Path, layouts: list[tuple[int, int]], redis: str, workdir: Path
) -> list[tuple[tuple[int, int], Measured]]:
    """Each layout (processes, threads) measured ``repeat`` times, the layouts taking turns (so
    that a burst of other work on the machine hits them alike); of each, every figure's median."""
    layouts = list(dict.fromkeys(layouts))
    runs: dict[tuple[int, int], list[Measured]] = {layout: [] for layout in layouts}
    for _ in range(repeat):
        for processes, threads in layouts:
            runs[processes, threads].append(measure(job, processes, threads, redis, workdir))
    return [(layout, _median(runs[layout])) for layout in layouts]


def _median(runs: list[Measured]) -> Measured:
    """Each figure's median over the runs (a figure per chunk: of that figure over the chunks)."""
    chunks = runs[0].chunks
    figures = {f: statistics.median(getattr(m, f) for m in runs) for f in ("seconds", "rows", "load")}
    per_chunk = {
        f: chunks * statistics.median(getattr(m, f) / m.chunks for m in runs)
        for f in ("transactions", "conflicts", "commands")
    }
    return Measured(chunks=chunks, **figures, **per_chunk)  # type: ignore[arg-type]


def process_counts(most: int) -> list[int]:
    counts, n = [], 1
    while n < most:
        counts.append(n)
        n *= 2
    return [*counts, most]


def main() -> None:
    from etl.supervisor import cpu_count

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/13")
    parser.add_argument("--max", type=int, default=cpu_count(), help="most worker processes (default: the CPUs)")
    parser.add_argument("--threads", type=int, default=1, help="threads per worker process (-w)")
    parser.add_argument("--rows-python", type=int, default=400_000)
    parser.add_argument("--rows-arrow", type=int, default=5_000_000)
    parser.add_argument("--chunks", type=int, default=2_000, help="chunks of the tiny job")
    parser.add_argument("--workers", default="1,2,4,8,14", help="workers (processes × threads) of part 2")
    parser.add_argument("--jobs", default="python,arrow,tiny", help="the jobs of part 1")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each layout; the medians are shown")
    options = parser.parse_args()

    print(f"{os.cpu_count()} CPUs, {cpu_count()} usable; Redis {options.redis}; Python {sys.version.split()[0]}")
    print(
        f"the median of {options.repeat} run(s) each; load: the 1-minute load average after it "
        "(above the CPUs, other processes shared them)"
    )
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        (workdir / "hashing.py").write_text(HASHING)
        (workdir / "null_sink.py").write_text(NULL_SINK)
        sizes = {
            "python": (options.rows_python, max(options.rows_python // 40, 1)),
            "arrow": (options.rows_arrow, max(options.rows_arrow // 40, 1)),
            "tiny": (options.chunks, 1),
        }
        jobs = {}
        for name, (rows, chunk) in sizes.items():
            jobs[name] = workdir / f"{name}.yaml"
            jobs[name].write_text(textwrap.dedent(JOBS[name].format(rows=rows, chunk=chunk)))

        if options.max > 1:
            print(f"capacity now: {options.max} pure-Python processes at once do {capacity(options.max):.2f}× one")
        print(f"\nPart 1: worker processes (-w {options.threads} each), and one process of as many threads")
        print(
            f"{'job':<8} {'layout':>7} {'chunks':>7} {'seconds':>8} {'rows/s':>11} {'speed-up':>8} "
            f"{'ms/chunk':>8} {'tx/chunk':>8} {'conflicts/chunk':>15} {'load':>5}"
        )
        layouts = [(n, options.threads) for n in process_counts(options.max)]
        if options.max > 1:
            layouts.append((1, options.max * options.threads))
        for name in [j.strip() for j in options.jobs.split(",") if j.strip()]:
            first: float | None = None
            for (processes, threads), m in median_of(options.repeat, jobs[name], layouts, options.redis, workdir):
                rate = m.rows / m.seconds
                first = first or rate
                print(
                    f"{name:<8} {f'{processes}×{threads}':>7} {m.chunks:>7} {m.seconds:>8.2f} {rate:>11,.0f} "
                    f"{rate / first:>7.2f}x {1000 * m.seconds / m.chunks:>8.2f} {m.transactions / m.chunks:>8.2f} "
                    f"{m.conflicts / m.chunks:>15.3f} {m.load:>5.1f}",
                    flush=True,
                )

        print("\nPart 2: the run store's transactions on the tiny job (workers = processes × threads)")
        print(
            f"{'workers':>7} {'layout':>7} {'chunks':>7} {'ms/chunk':>8} {'tx/chunk':>8} {'conflicts/chunk':>15} "
            f"{'conflicts/tx':>12} {'commands/chunk':>14} {'load':>5}"
        )
        counts = [int(n) for n in options.workers.split(",") if n.strip()]
        layouts = [(min(n, options.max), math.ceil(n / min(n, options.max))) for n in counts]
        for (processes, threads), m in median_of(options.repeat, jobs["tiny"], layouts, options.redis, workdir):
            print(
                f"{processes * threads:>7} {f'{processes}×{threads}':>7} {m.chunks:>7} "
                f"{1000 * m.seconds / m.chunks:>8.2f} {m.transactions / m.chunks:>8.2f} "
                f"{m.conflicts / m.chunks:>15.3f} {m.conflicts / max(m.transactions, 1):>12.3f} "
                f"{m.commands / m.chunks:>14.1f} {m.load:>5.1f}",
                flush=True,
            )
        if options.max > 1:
            print(f"\ncapacity now: {options.max} pure-Python processes at once do {capacity(options.max):.2f}× one")


if __name__ == "__main__":
    main()
