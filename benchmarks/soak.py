"""A soak: background runs into PostgreSQL, in the three ways a run is worked, under chaos.

    make soak                  # 10 minutes
    make soak DURATION=2m      # or: .venv/bin/python benchmarks/soak.py --duration 2m

It starts what it needs, of its own, on free loopback ports under a temporary directory: a
Redis primary with two replicas and three sentinels (AOF on; tests/sentinel.py), and a
PostgreSQL cluster (initdb; never the machine's own servers). Three loops submit runs one after
another, each into a table of its own:

* ``sync``: ``etl run --sync``, in process, recorded in the Sentinel-backed store;
* ``embedded``: ``etl run`` on the embedded queue (no Redis), which works its run itself, beside
  an embedded ``etl worker``;
* ``workers``: ``etl run --background`` on the Sentinel-backed queue, worked by two
  ``etl worker -w 2``.

Meanwhile a chaos loop, every 5 to 10 s, does one of these (each once a round, in a random
order): SIGKILL a worker (restarted a second later, as a supervisor would), SIGSTOP one past its
lease (then SIGCONT), SIGKILL the embedded worker, restart the Redis primary (SIGTERM, AOF
reloaded), fail Redis over (SIGKILL the primary; Sentinel promotes a replica; the old primary
comes back as a replica), restart PostgreSQL (immediate or fast). A run that fails is retried
(``etl retry``), twice at most.

At the end it prints the runs (by mode and outcome), the faults, the rows lost and duplicated
(each run's table against its source: ``count(*)`` and ``count(DISTINCT id)``), and the time
from each SIGKILL (and each SIGSTOP) of a worker to its chunk running again (p50, max). Not
part of ``make test``; asserts nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.sentinel import RedisHA, free_port  # noqa: E402

ETL = Path(sys.executable).with_name("etl")
STAGES = ROOT / "tests/background/stages.py"
PG_BIN = Path("/usr/lib/postgresql/15/bin")
ROWS, CHUNK = 100_000, 10_000
TIMINGS = {
    "ETL_LEASE_SECONDS": "3",
    "ETL_REAPER_SECONDS": "1",
    "ETL_HEARTBEAT_SECONDS": "1",
    "ETL_LOST_AFTER_SECONDS": "4",
    "ETL_GRACE_SECONDS": "5",
    "ETL_REDIS_RETRY_SECONDS": "30",  # longer than a failover
}


def seconds(text: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([smh]?)", text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration such as 90s, 10m or 1h")
    return float(match[1]) * {"": 1, "s": 1, "m": 60, "h": 3600}[match[2]]


class Postgres:
    """A PostgreSQL cluster of the soak's own (run as ``postgres`` when the soak runs as root)."""

    def __init__(self, directory: Path) -> None:
        self.directory, self.port = directory, free_port()
        self.data = directory / "data"
        self.prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        directory.mkdir(parents=True)
        if self.prefix:
            shutil.chown(directory, "postgres", "postgres")
        self._pg("initdb", "-D", str(self.data), "-A", "trust", "-U", "soak", "--no-sync")
        self.start()

    @property
    def dsn(self) -> str:
        return f"postgresql://soak@127.0.0.1:{self.port}/postgres"

    def _pg(self, tool: str, *args: str) -> None:
        subprocess.run([*self.prefix, str(PG_BIN / tool), *args], check=True, capture_output=True)

    def start(self) -> None:
        options = f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1 -c max_connections=200"
        self._pg("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.directory / "log"), "-w", "start")

    def restart(self, mode: str) -> None:
        self._pg("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")
        self.start()

    def stop(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self._pg("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def counts(self, table: str) -> tuple[int, int]:
        """``count(*)`` and ``count(DISTINCT id)`` of ``table`` (riding out a restart)."""
        import psycopg

        for wait in (1, 2, 4, 8, 16, 32, None):
            try:
                with psycopg.connect(self.dsn, connect_timeout=10) as con:
                    return con.execute(f"SELECT count(*), count(DISTINCT id) FROM {table}").fetchone()
            except psycopg.OperationalError:
                if wait is None:
                    raise
                time.sleep(wait)
        raise AssertionError("unreachable")


class Soak:
    def __init__(self, work: Path, duration: float) -> None:
        self.work, self.duration = work, duration
        self.pg = Postgres(work / "pg")
        self.ha = RedisHA(work / "redis", replicas=2, down_after_ms=3000, appendonly=True)
        try:
            self.ha.start()
        except BaseException:
            self.ha.stop()
            self.pg.stop()
            raise
        self.redis_env = {**os.environ, **TIMINGS, "ETL_QUEUE_URL": self.ha.url(db=0), "ETL_QUEUE_NAME": "soak"}
        self.redis_env["ETL_HOME"] = str(work / "home-redis")
        self.embedded_env = {k: v for k, v in self.redis_env.items() if k != "ETL_QUEUE_URL"}
        self.embedded_env["ETL_HOME"] = str(work / "home-embedded")
        self.workers: dict[str, list[subprocess.Popen]] = {"workers": [], "embedded": []}
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.runs: list[dict] = []
        self.faults: Counter[str] = Counter()
        self.recoveries: dict[str, list[float]] = {"SIGKILL": [], "SIGSTOP": []}
        self.serial = 0
        self.own_errors: list[str] = []
        self.logs = work / "logs"
        self.logs.mkdir()

    # -- processes ----------------------------------------------------------------------------

    def _etl(self, args: list[str], env: dict[str, str], log: str, wait: bool = True):
        out = open(self.logs / log, "a")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen([str(ETL), *args], cwd=self.work, env=env, stdout=out, stderr=subprocess.STDOUT)
        if wait:
            proc.wait()
            out.close()
        return proc

    def start_worker(self, pool: str) -> None:
        env = self.redis_env if pool == "workers" else self.embedded_env
        proc = self._etl(["worker", "-w", "2"], env, f"{pool}-worker.log", wait=False)
        self.workers[pool].append(proc)

    def store(self, pool: str):
        from etl.queue import open_store
        from etl.settings import queue_settings

        return open_store(queue_settings(self.redis_env if pool != "embedded" else self.embedded_env))

    def say(self, what: str) -> None:
        print(f"  {time.strftime('%H:%M:%S')} {what}", flush=True)

    # -- runs ---------------------------------------------------------------------------------

    def job(self, mode: str) -> tuple[str, Path]:
        with self.lock:
            self.serial += 1
            name = f"{mode}{self.serial}"
        text = f"""\
            name: {name}
            plugins: ["{STAGES}"]
            source: {{type: generate, rows: {ROWS}, columns: {{id: {{kind: sequence}}, v: {{kind: int}}}}}}
            transforms: [{{type: sleepy, seconds: 1.0}}]
            sink: {{type: postgres, dsn: "{self.pg.dsn}", table: "soak.{name}"}}
            chunk_size: {CHUNK}
            thresholds: {{background: 1}}
            retry: {{attempts: 10, backoff: 1s, factor: 2, max_backoff: 8s}}
        """
        path = self.work / f"{name}.yaml"
        path.write_text(textwrap.dedent(text))
        return name, path

    def loop(self, mode: str) -> None:
        while not self.stop.is_set():
            try:
                self.one_run(mode)
            except Exception as exc:  # noqa: BLE001 - the soak's own trouble: say it, go on
                self.say(f"{mode} loop: {type(exc).__name__}: {exc}")
                with self.lock:
                    self.own_errors.append(f"{mode}: {type(exc).__name__}: {exc}")

    def one_run(self, mode: str) -> None:
        """Submit a run, follow it to its end (``etl retry`` a failed one, twice at most), and
        count its rows in PostgreSQL."""
        pool = "embedded" if mode == "embedded" else "workers"
        env = self.embedded_env if mode == "embedded" else self.redis_env
        name, path = self.job(mode)
        args = {"sync": ["--sync"], "embedded": [], "workers": ["--background"]}[mode]
        self._etl(["run", str(path), *args], env, f"{mode}-runs.log")
        run = self.finished(pool, name)
        retries, first_error = 0, run.error if run is not None and run.state == "failed" else None
        while run is not None and run.state == "failed" and retries < 2:
            retries += 1
            self._etl(["retry", run.id], env, f"{mode}-runs.log")
            run = self.finished(pool, name)
        count, distinct = self.pg.counts(f"soak.{name}") if run is not None else (0, 0)
        record = {
            "mode": mode,
            "name": name,
            "state": run.state if run else "lost",
            "retried": retries,
            "lost": ROWS - distinct,
            "duplicated": count - distinct,
            "error": run.error if run else "no such run",
            "first_error": first_error,
        }
        with self.lock:
            self.runs.append(record)
        self.say(f"run {name}: {record['state']}, {count:,} rows, {record['duplicated']} duplicated")

    def finished(self, pool: str, name: str, timeout: float = 600):
        """The run of job ``name``, once finished; ``None`` if it is not in the store (a minute
        to appear) or does not finish in ``timeout``."""
        store = self.store(pool)
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            try:
                runs = store.list_runs(job=name, limit=1)
            except Exception:  # noqa: BLE001 - the store may be failing over: look again
                runs = None
            if runs and runs[0].finished:
                return runs[0]
            if runs == [] and time.monotonic() - started > 60:
                return None
            time.sleep(1)
        return None

    # -- chaos --------------------------------------------------------------------------------

    def chaos(self) -> None:
        kinds = ["worker SIGKILL", "worker SIGSTOP", "embedded worker SIGKILL", "redis restart", "redis failover"]
        kinds += ["postgres restart"]
        order: list[str] = []
        while not self.stop.wait(random.uniform(5, 10)):
            if not order:  # every kind once a round, in a random order
                order = random.sample(kinds, len(kinds))
            kind = order.pop()
            try:
                getattr(self, "_" + kind.replace(" ", "_").lower())()
            except Exception as exc:  # noqa: BLE001 - report, and go on
                self.say(f"{kind} failed: {exc}")
                continue
            with self.lock:
                self.faults[kind] += 1
            self.say(kind)

    def _held(self, pool: str, pid: int) -> list[tuple[str, int, int]]:
        store = self.store(pool)
        held = []
        for run in store.list_runs(state="active", limit=50):
            for chunk in store.get_chunks(run.id):
                if chunk.state == "running" and f":{pid}:" in (chunk.worker or ""):
                    held.append((run.id, chunk.index, chunk.attempts))
        return held

    def _signal_worker(self, pool: str, sig: int) -> None:
        alive = [p for p in self.workers[pool] if p.poll() is None]
        victim = random.choice(alive)
        held = self._held(pool, victim.pid)
        victim.send_signal(sig)
        at = time.monotonic()
        name = "SIGKILL" if sig == signal.SIGKILL else "SIGSTOP"
        for run_id, index, attempts in held:
            threading.Thread(target=self._watch, args=(pool, run_id, index, attempts, at, name), daemon=True).start()
        if sig == signal.SIGKILL:
            victim.wait()
            self.workers[pool].remove(victim)
            time.sleep(1)
            self.start_worker(pool)
        else:
            time.sleep(float(TIMINGS["ETL_LEASE_SECONDS"]) + 2)  # past its lease: a zombie
            victim.send_signal(signal.SIGCONT)

    def _watch(self, pool: str, run_id: str, index: int, attempts: int, at: float, name: str) -> None:
        """Record how long the chunk took to run again (another attempt took it)."""
        store = self.store(pool)
        while time.monotonic() - at < 300:
            with contextlib.suppress(Exception):
                chunk = store.get_chunk(run_id, index)
                if chunk is not None and chunk.attempts > attempts:
                    with self.lock:
                        self.recoveries[name].append(time.monotonic() - at)
                    return
                if chunk is not None and chunk.state in ("done", "failed"):
                    return  # it finished before the signal landed: no victim
            time.sleep(0.1)

    def _worker_sigkill(self) -> None:
        self._signal_worker("workers", signal.SIGKILL)

    def _worker_sigstop(self) -> None:
        self._signal_worker("workers", signal.SIGSTOP)

    def _embedded_worker_sigkill(self) -> None:
        self._signal_worker("embedded", signal.SIGKILL)

    def _redis_restart(self) -> None:
        port = self.ha.kill_primary(signal.SIGTERM)  # a graceful stop writes the AOF out
        self.ha.procs[port].wait(30)
        self.ha.restart(port)

    def _redis_failover(self) -> None:
        old = self.ha.kill_primary()
        self.ha.wait_failover(old, timeout=60)
        self.ha.restart(old)  # Sentinel makes it a replica of the new primary
        self.ha.wait_replica(old, timeout=60)

    def _postgres_restart(self) -> None:
        self.pg.restart(random.choice(["immediate", "fast"]))

    # -- the whole --------------------------------------------------------------------------

    def run(self) -> None:
        for _ in range(2):
            self.start_worker("workers")
        self.start_worker("embedded")
        started = time.monotonic()
        loops = [threading.Thread(target=self.loop, args=(mode,)) for mode in ("sync", "embedded", "workers")]
        chaos = threading.Thread(target=self.chaos)
        for thread in [*loops, chaos]:
            thread.start()
        while time.monotonic() - started < self.duration:
            time.sleep(1)
        self.stop.set()  # no new runs, no new faults: the runs in flight finish
        chaos.join()
        for thread in loops:
            thread.join()
        self.report(time.monotonic() - started)

    def close(self) -> None:
        for proc in [p for pool in self.workers.values() for p in pool]:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGCONT)
                proc.terminate()
        for proc in [p for pool in self.workers.values() for p in pool]:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
        self.ha.stop()
        self.pg.stop()

    def report(self, took: float) -> None:
        runs = self.runs
        by_mode = Counter((r["mode"], r["state"]) for r in runs)
        print(f"soak: {took / 60:.1f} min, {len(runs)} runs of {ROWS:,} rows into PostgreSQL ({CHUNK:,}-row chunks)")
        for mode in ("sync", "embedded", "workers"):
            states = ", ".join(f"{n} {s}" for (m, s), n in sorted(by_mode.items()) if m == mode)
            retried = sum(r["retried"] > 0 for r in runs if r["mode"] == mode)
            print(f"  runs {mode:<9} {states or 'none'}" + (f" ({retried} after etl retry)" if retried else ""))
        faults = ", ".join(f"{k} {n}" for k, n in sorted(self.faults.items()))
        print(f"  faults   {sum(self.faults.values())}: {faults}")
        lost = sum(r["lost"] for r in runs)
        duplicated = sum(r["duplicated"] for r in runs)
        print(f"  rows     {len(runs) * ROWS:,} expected, {lost:,} lost, {duplicated:,} duplicated")
        for name, times in self.recoveries.items():
            if times:
                print(
                    f"  {name} of a worker → its chunk running again: {len(times)} chunks, "
                    f"p50 {statistics.median(times):.1f}s, max {max(times):.1f}s"
                )
        for r in runs:
            if r["state"] != "completed" or r["lost"] or r["duplicated"]:
                print(f"  ! {r['name']}: {r['state']}, {r['lost']} lost, {r['duplicated']} duplicated: {r['error']}")
            elif r["first_error"]:
                print(f"  ~ {r['name']} failed, then completed after etl retry: {r['first_error']}")
        for error in self.own_errors:
            print(f"  ? the soak's own error: {error}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=seconds, default=600.0, help="how long to make trouble (10m)")
    parser.add_argument("--keep", action="store_true", help="keep the working directory (logs, data)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="etl-soak-"))
    os.chmod(work, 0o755)
    soak = None
    try:
        soak = Soak(work, args.duration)
        soak.run()
    finally:
        if soak is not None:
            soak.close()
        if args.keep:
            print(f"  logs and data: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
