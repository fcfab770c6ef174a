"""Parquet → PostgreSQL: etl against a minimal hand-written COPY, and a merge.

    .venv/bin/python benchmarks/postgres.py [--rows 5000000] [--dsn postgresql://…] [--redis redis://…]

Prints rows, wall seconds, rows/s and peak RSS of each process for:

1. the baseline: pyarrow reads the Parquet file in batches, one binary COPY (pgpq + psycopg)
   writes them in one transaction;
2. ``etl run`` of the same file → ``postgres`` (append), in process (``--sync``);
3. the same as a background run with 2 workers (needs Redis);
4. ``generate`` → ``postgres`` with ``merge`` on ``id``, into a table holding half the keys;
and the in-process run at a tenth of the rows, to show memory does not grow with the table.
Asserts nothing: figures vary by machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ETL = Path(sys.executable).with_name("etl")
DSN = "postgresql://root@127.0.0.1:5432/test"
COLUMNS = (
    "id bigint, dataset_id text, environment text, volume_type text, ds date, forecast double precision, "
    "lower double precision, upper double precision, updated_at timestamptz"
)


def sql(dsn: str, statement: str) -> list[tuple]:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as con:
        cur = con.execute(statement)
        return cur.fetchall() if cur.description else []


def measured(args: list[str], cwd: Path, env: dict[str, str] | None = None, dsn: str = DSN) -> tuple[float, float, str]:
    """Run a process; its wall seconds, peak RSS in MB (from the kernel) and stdout. The server
    checkpoints first, so that no run pays for the writes of the one before."""
    sql(dsn, "CHECKPOINT")
    started = time.perf_counter()
    proc = subprocess.Popen(args, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    out = proc.stdout.read().decode() if proc.stdout else ""
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status):
        raise SystemExit(f"failed: {' '.join(args)}")
    return time.perf_counter() - started, usage.ru_maxrss / 1024, out


def baseline(path: str, dsn: str, table: str) -> None:
    """The hand-written baseline, run as its own process."""
    import psycopg
    import pyarrow.parquet as pq
    from pgpq import ArrowToPostgresBinaryEncoder

    source = pq.ParquetFile(path, pre_buffer=False)
    encoder = ArrowToPostgresBinaryEncoder(source.schema_arrow)
    with psycopg.connect(dsn) as con, con.cursor() as cur:
        with cur.copy(f"COPY {table} FROM STDIN (FORMAT binary)") as copy:
            copy.write(encoder.write_header())
            for batch in source.iter_batches(batch_size=50_000):
                copy.write(encoder.write_batch(batch))
            copy.write(encoder.finish())
        con.commit()


def make_parquet(rows: int, path: Path, workdir: Path) -> None:
    parts = workdir / "parts"
    subprocess.run(
        [
            str(ETL),
            "run",
            str(ROOT / "configs/demo.yaml"),
            "--sync",
            "-p",
            f"rows={rows}",
            "--set",
            "transforms=[]",
            "--set",
            f"sink={{type: parquet, path: {parts}, mode: replace}}",
        ],
        cwd=workdir,
        check=True,
        capture_output=True,
    )
    import pyarrow.dataset as ds
    import pyarrow.parquet as pq

    with pq.ParquetWriter(path, ds.dataset(parts).schema, compression="zstd") as writer:
        for fragment in sorted(ds.dataset(parts).get_fragments(), key=lambda f: f.path):
            writer.write_table(fragment.to_table(), row_group_size=100_000)


def job(workdir: Path, name: str, text: str) -> Path:
    path = workdir / f"{name}.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def row(what: str, rows: int, wall: float, peak: float) -> None:
    print(f"{what:<46} {rows:>10,} {wall:>8.2f} {rows / wall:>12,.0f} {peak:>10.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=5_000_000)
    parser.add_argument("--dsn", default=os.environ.get("ETL_BENCH_POSTGRES", DSN))
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/13")
    parser.add_argument("--baseline", nargs=2, metavar=("PARQUET", "TABLE"), help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.baseline:
        baseline(options.baseline[0], options.dsn, options.baseline[1])
        return
    schema = f"bench_{uuid.uuid4().hex[:6]}"
    sql(options.dsn, f"CREATE SCHEMA {schema}")
    print(f"{'what':<46} {'rows':>10} {'wall s':>8} {'rows/s':>12} {'peak MB':>10}")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            workdir = Path(tmp)
            data = workdir / "forecast.parquet"
            make_parquet(options.rows, data, workdir)
            small = workdir / "forecast-small.parquet"
            make_parquet(options.rows // 10, small, workdir)

            sql(options.dsn, f"CREATE TABLE {schema}.base ({COLUMNS})")
            wall, peak, _ = measured(
                [sys.executable, __file__, "--dsn", options.dsn, "--baseline", str(data), f"{schema}.base"],
                workdir,
                dsn=options.dsn,
            )
            row("1 baseline: pyarrow + one binary COPY", options.rows, wall, peak)

            for label, path, table in (("2 etl run, in process", data, "etl"), ("  etl run, a tenth", small, "tenth")):
                spec = job(
                    workdir,
                    table,
                    f"""\
                    name: bench-{table}
                    source: {{type: parquet, path: "{path}"}}
                    sink: {{type: postgres, dsn: "{options.dsn}", table: {schema}.{table}}}
                """,
                )
                wall, peak, out = measured([str(ETL), "run", str(spec), "--sync", "--json"], workdir, dsn=options.dsn)
                row(label, json.loads(out)["rows_written"], wall, peak)

            spec = job(
                workdir,
                "bg",
                f"""\
                name: bench-bg
                source: {{type: parquet, path: "{data}"}}
                sink: {{type: postgres, dsn: "{options.dsn}", table: {schema}.bg}}
            """,
            )
            env = {**os.environ, "ETL_QUEUE_URL": options.redis, "ETL_QUEUE_NAME": f"bench{uuid.uuid4().hex[:6]}"}
            workers = [
                subprocess.Popen(
                    [str(ETL), "worker"], cwd=workdir, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
                )
                for _ in range(2)
            ]
            try:
                time.sleep(3)  # let the workers start
                wall, _, out = measured(
                    [str(ETL), "run", str(spec), "--background", "--wait", "--json"], workdir, env, dsn=options.dsn
                )
                row("3 background, 2 workers (peak: the submitter)", json.loads(out)["rows_written"], wall, 0)
            finally:
                for worker in workers:
                    worker.terminate()
                for worker in workers:
                    worker.wait(60)

            half = options.rows // 2
            sql(options.dsn, f"CREATE TABLE {schema}.merged ({COLUMNS}, PRIMARY KEY (id))")
            sql(
                options.dsn, f"INSERT INTO {schema}.merged (id, forecast) SELECT g, 0 FROM generate_series(1, {half}) g"
            )
            spec = job(
                workdir,
                "merge",
                f"""\
                name: bench-merge
                source: {{type: generate, rows: {options.rows}, seed: 1}}
                sink: {{type: postgres, dsn: "{options.dsn}", table: {schema}.merged, mode: merge, key: [id]}}
            """,
            )
            wall, peak, out = measured([str(ETL), "run", str(spec), "--sync", "--json"], workdir, dsn=options.dsn)
            row("4 generate → merge on id (half the keys exist)", json.loads(out)["rows_written"], wall, peak)
            total = sql(options.dsn, f"SELECT count(*) FROM {schema}.merged")[0][0]
            print(f"  merged table: {total:,} rows")
    finally:
        sql(options.dsn, f"DROP SCHEMA {schema} CASCADE")


if __name__ == "__main__":
    main()
