"""Figures for the dashboard's event streams: what N watchers of one run cost the run store.

    .venv/bin/python benchmarks/dashboard.py [--redis redis://127.0.0.1:6379/13] [--seconds 10]

Starts a real `etl dashboard` against a queue of its own, with one slow run in progress (one
real worker), then holds 1, 10 and 100 server-sent-event connections on the run for a while
and prints the Redis commands per second and the events each watcher received. Asserts
nothing (figures vary by machine).
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import httpx
import redis

ETL = Path(sys.executable).with_name("etl")

SLOW = """\
name: slow
plugins: ["{stages}"]
source: {{type: generate, rows: 300000, columns: {{id: {{kind: sequence}}}}}}
transforms: [{{type: sleepy, seconds: 0.2}}]
sink: {{type: jsonl, path: out/slow}}
chunk_size: 1000
thresholds: {{background: 1}}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def watch(url: str, seconds: float, counts: list[int]) -> None:
    events = 0
    deadline = time.monotonic() + seconds
    with httpx.stream("GET", url, timeout=seconds + 10) as response:
        for line in response.iter_lines():
            if line.startswith("event: progress"):
                events += 1
            if time.monotonic() > deadline:
                break
    counts.append(events)


def commands(client: redis.Redis) -> int:
    return int(client.info("stats")["total_commands_processed"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/13")
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    stages = Path(__file__).resolve().parents[1] / "tests" / "background" / "stages.py"
    client = redis.Redis.from_url(args.redis)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        env = {**os.environ, "ETL_QUEUE_URL": args.redis, "ETL_QUEUE_NAME": f"bench{uuid.uuid4().hex[:8]}"}
        env["ETL_HOME"] = str(work / ".etl")
        job = work / "slow.yaml"
        job.write_text(SLOW.format(stages=stages))
        port = free_port()
        procs = [
            subprocess.Popen([str(ETL), "worker"], cwd=work, env=env, stderr=subprocess.DEVNULL),
            subprocess.Popen(
                [str(ETL), "dashboard", "--port", str(port)], cwd=work, env=env, stderr=subprocess.DEVNULL
            ),
        ]
        try:
            run_id = subprocess.run(
                [str(ETL), "run", str(job), "--background"],
                cwd=work,
                env=env,
                capture_output=True,
                text=True,
                check=True,
            ).stdout.split()[-1]
            base = f"http://127.0.0.1:{port}"
            while True:
                try:
                    if httpx.get(f"{base}/api/runs/{run_id}").json()["state"] == "active":
                        break
                except (httpx.HTTPError, KeyError):
                    pass
                time.sleep(0.2)
            # The store's own traffic (the worker's chunks and heartbeats) without watchers.
            before, started = commands(client), time.monotonic()
            time.sleep(args.seconds)
            idle = (commands(client) - before) / (time.monotonic() - started)
            print(f"{'watchers':>8} {'redis commands/s':>17} {'over idle':>10} {'events/watcher':>15}")
            print(f"{0:>8} {idle:>17,.0f} {0:>10,.0f} {'-':>15}")
            for watchers in (1, 10, 100):
                counts: list[int] = []
                threads = [
                    threading.Thread(target=watch, args=(f"{base}/api/runs/{run_id}/events", args.seconds, counts))
                    for _ in range(watchers)
                ]
                before, started = commands(client), time.monotonic()
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                rate = (commands(client) - before) / (time.monotonic() - started)
                mean = sum(counts) / max(len(counts), 1)
                print(f"{watchers:>8} {rate:>17,.0f} {rate - idle:>10,.0f} {mean:>15.1f}")
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.wait(15)
            for key in client.scan_iter(match=f"{env['ETL_QUEUE_NAME']}*", count=1000):
                client.unlink(key)


if __name__ == "__main__":
    main()
