"""Rows/s and peak memory of `etl run` on the demo job: in process and on the embedded queue,
at several sizes, with two sinks.

    .venv/bin/python benchmarks/demo.py [ROWS ...]      # default: 1000000 5000000

Each run is a fresh `etl run` process; its peak RSS comes from the kernel (wait4). Prints a
table; asserts nothing (figures vary by machine).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ETL = Path(sys.executable).with_name("etl")
SINKS = {
    "duckdb": [],
    "parquet": ["--set", "sink={type: parquet, path: out/demo-parquet, mode: replace}"],
}
# In this process, chunk after chunk; and queued on the embedded queue, worked by this
# process's threads (what `etl run` does at or above thresholds.background with no server).
MODES = {"in-process": ["--sync"], "embedded queue": ["--background"]}


def measure(rows: int, sink: str, mode: str, workdir: Path) -> dict[str, float]:
    args = [
        str(ETL),
        "run",
        str(ROOT / "configs/demo.yaml"),
        "-p",
        f"rows={rows}",
        "--json",
        *SINKS[sink],
        *MODES[mode],
    ]
    started = time.perf_counter()
    process = subprocess.Popen(args, cwd=workdir, env=environment(), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    out = process.stdout.read() if process.stdout else b""
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"etl run failed for {rows} rows into {sink}")
    result = json.loads(out)
    return {"wall": wall, "rows_per_second": result["rows_per_second"], "peak_mb": usage.ru_maxrss / 1024}


def environment() -> dict[str, str]:
    """This process's environment without a queue setting: the embedded queue is measured."""
    return {k: v for k, v in os.environ.items() if k not in ("ETL_QUEUE_URL", "REDIS_HOST")}


def main(sizes: list[int]) -> None:
    print(f"{'mode':<15} {'sink':<8} {'rows':>12} {'wall s':>8} {'rows/s':>12} {'peak RSS MB':>12}")
    with tempfile.TemporaryDirectory() as workdir:
        for mode in MODES:
            for sink in SINKS:
                for rows in sizes:
                    figures = measure(rows, sink, mode, Path(workdir))
                    print(
                        f"{mode:<15} {sink:<8} {rows:>12,} {figures['wall']:>8.2f} "
                        f"{figures['rows_per_second']:>12,.0f} {figures['peak_mb']:>12.0f}"
                    )


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]] or [1_000_000, 5_000_000])
