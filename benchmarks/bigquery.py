"""BigQuery (the emulator) → PostgreSQL: etl against a minimal hand-written Storage Read + COPY.

    .venv/bin/python benchmarks/bigquery.py [--rows 5000000] [--dsn postgresql://…] [--redis redis://…]
        [--etl PATH]

Starts ``bqemulator`` (tests/bq_emulator.py), makes a forecast table of ``--rows`` rows in it
with one CTAS, and prints rows, wall seconds, rows/s, peak RSS and the ratio to the baseline's
rows/s for:

1. the baseline, one process: one Storage Read API session on the table in Arrow (one stream),
   each batch straight into one binary COPY (pgpq + psycopg), in one transaction;
2. ``etl run`` of ``bigquery`` (the table) → ``postgres`` (append), in process (``--sync``): the
   Storage Read API's streams as chunks (as many as the emulator gives: rows / chunk_size asked);
3. the same with ``chunk_by: id``: key ranges of ``chunk_size`` rows, a read session each;
4. 2 and 5. 3 as background runs with 2 workers (needs Redis); peak RSS is the larger worker's.

Each run's table is counted in PostgreSQL afterwards; a count that differs from the rows made is
printed as an error. Asserts nothing: figures vary by machine.
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
DATASET = "bench"
COLUMNS = (
    "id bigint, dataset_id text, environment text, volume_type text, ds date, forecast double precision, "
    "lower_bound double precision, upper_bound double precision, updated_at timestamptz"
)
#: The forecast table, in GoogleSQL (the emulator runs it on DuckDB): the columns of
#: configs/forecast-sync.yaml's query.
FORECAST = """\
CREATE TABLE `{table}` AS
SELECT
  x AS id,
  CONCAT('ds-', LPAD(CAST(MOD(x, 50) AS STRING), 3, '0')) AS dataset_id,
  CASE MOD(x, 3) WHEN 0 THEN 'production' WHEN 1 THEN 'staging' ELSE 'development' END AS environment,
  IF(MOD(x, 2) = 0, 'inbound', 'outbound') AS volume_type,
  DATE_ADD(DATE '2026-01-01', INTERVAL MOD(x, 365) DAY) AS ds,
  MOD(x, 1000) * 1.5 AS forecast,
  MOD(x, 1000) * 1.5 - 10 AS lower_bound,
  MOD(x, 1000) * 1.5 + 10 AS upper_bound,
  TIMESTAMP_ADD(TIMESTAMP '2026-01-01 00:00:00+00', INTERVAL MOD(x, 86400) SECOND) AS updated_at
FROM UNNEST(GENERATE_ARRAY(1, {rows})) AS x
"""


def sql(dsn: str, statement: str) -> list[tuple]:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as con:
        cur = con.execute(statement)
        return cur.fetchall() if cur.description else []


def measured(args: list[str], cwd: Path, env: dict[str, str] | None = None, dsn: str = DSN) -> tuple[float, float, str]:
    """Run a process; its wall seconds, peak RSS in MB (from the kernel) and stdout. The server
    checkpoints first, so that no run pays for the writes of the one before. A failed process
    prints the end of its stderr and gives NaN figures."""
    sql(dsn, "CHECKPOINT")
    with tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        proc = subprocess.Popen(args, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=err)
        out = proc.stdout.read().decode() if proc.stdout else ""
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
        if os.waitstatus_to_exitcode(status):
            err.seek(0)
            tail = textwrap.indent(err.read().decode(errors="replace")[-3000:].rstrip(), "    ")
            print(f"  ERROR: exit code {os.waitstatus_to_exitcode(status)}: {' '.join(args)}\n{tail}", flush=True)
            return float("nan"), float("nan"), out
    return wall, usage.ru_maxrss / 1024, out


def baseline(table: str, endpoint: str, dsn: str, target: str) -> None:
    """The hand-written baseline, run as its own process: one read session, one stream, one COPY."""
    import grpc
    import psycopg
    import pyarrow as pa
    from google.cloud.bigquery_storage_v1 import BigQueryReadClient, types
    from google.cloud.bigquery_storage_v1.services.big_query_read.transports import BigQueryReadGrpcTransport
    from pgpq import ArrowToPostgresBinaryEncoder

    # As Google's own channel: no cap on message size (the emulator's batches pass 4 MB).
    channel = grpc.insecure_channel(endpoint, options=[("grpc.max_receive_message_length", -1)])
    client = BigQueryReadClient(transport=BigQueryReadGrpcTransport(channel=channel))
    project, dataset, name = table.split(".")
    session = client.create_read_session(
        parent=f"projects/{project}",
        read_session=types.ReadSession(
            table=f"projects/{project}/datasets/{dataset}/tables/{name}", data_format=types.DataFormat.ARROW
        ),
        max_stream_count=1,
    )
    schema = pa.ipc.read_schema(pa.py_buffer(session.arrow_schema.serialized_schema))
    encoder = ArrowToPostgresBinaryEncoder(schema)
    with psycopg.connect(dsn) as con, con.cursor() as cur:
        with cur.copy(f"COPY {target} FROM STDIN (FORMAT binary)") as copy:
            copy.write(encoder.write_header())
            for stream in session.streams:
                for response in client.read_rows(stream.name):
                    data = response.arrow_record_batch.serialized_record_batch
                    copy.write(encoder.write_batch(pa.ipc.read_record_batch(pa.py_buffer(data), schema)))
            copy.write(encoder.finish())
        con.commit()


def make_table(emulator, rows: int) -> str:
    from tests import bq_emulator

    client = bq_emulator.client(emulator)
    try:
        client.create_dataset(DATASET, exists_ok=True)
        table = f"{bq_emulator.PROJECT}.{DATASET}.forecast"
        client.query(FORECAST.format(table=table, rows=rows)).result()
        made = client.get_table(table).num_rows
        if made != rows:
            raise SystemExit(f"the emulator's table has {made:,} rows, not {rows:,}")
        return table
    finally:
        client.close()


def job(workdir: Path, name: str, text: str) -> Path:
    path = workdir / f"{name}.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def spec(workdir: Path, name: str, table: str, emulator, dsn: str, target: str, chunk_by: str | None) -> Path:
    chunking = f", chunk_by: {chunk_by}" if chunk_by else ""
    return job(
        workdir,
        name,
        f"""\
        name: bench-{name}
        source:
          {{type: bigquery, table: {table}, project: test-project{chunking},
           api_endpoint: "{emulator.rest}", storage_endpoint: "{emulator.grpc}"}}
        sink: {{type: postgres, dsn: "{dsn}", table: {target}}}
        chunk_size: 50000
    """,
    )


def row(what: str, rows: int, wall: float, peak: float, base: float | None, chunks: int = 0) -> None:
    what = f"{what} ({chunks} chunks)" if chunks else what
    if wall != wall:  # NaN: the run failed
        print(f"{what:<54} {rows:>10,}   FAILED (the error is above)", flush=True)
        return
    rate = rows / wall
    ratio = f"{rate / base:>7.2f}x" if base else f"{'':>8}"
    print(f"{what:<54} {rows:>10,} {wall:>8.2f} {rate:>12,.0f} {peak:>10.0f} {ratio}", flush=True)


def check(dsn: str, target: str, rows: int) -> None:
    """Say so when the table in PostgreSQL does not hold the rows made."""
    try:
        found = sql(dsn, f"SELECT count(*) FROM {target}")[0][0]
    except Exception as exc:  # the run failed before making its table
        print(f"  ERROR: {target}: cannot count its rows: {str(exc).strip().splitlines()[0]}", flush=True)
        return
    if found != rows:
        print(f"  ERROR: {target} holds {found:,} rows, not {rows:,}", flush=True)


def result(out: str) -> tuple[int, int]:
    """Rows written and chunks of an ``etl run --json``; zeros when it printed none."""
    try:
        done = json.loads(out)
        return int(done["rows_written"]), int(done["chunks_total"])
    except (ValueError, KeyError, TypeError):
        return 0, 0


def background(etl: str, path: Path, workdir: Path, env: dict[str, str], dsn: str) -> tuple[float, list[float], str]:
    """A background run of ``path`` with 2 fresh ``etl worker`` processes: wall seconds, each
    worker's peak RSS in MB, and the run's JSON."""
    workers = [
        subprocess.Popen([etl, "worker"], cwd=workdir, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(2)
    ]
    peaks: list[float] = []
    try:
        time.sleep(3)  # let the workers start
        wall, _, out = measured([etl, "run", str(path), "--background", "--wait", "--json"], workdir, env, dsn)
    finally:
        for worker in workers:
            worker.terminate()
        for worker in workers:
            _, _, usage = os.wait4(worker.pid, 0)
            worker.returncode = 0  # reaped here; Popen must not wait for it again
            peaks.append(usage.ru_maxrss / 1024)
    return wall, peaks, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=5_000_000)
    parser.add_argument("--dsn", default=os.environ.get("ETL_BENCH_POSTGRES", DSN))
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/13")
    parser.add_argument("--etl", default=str(ETL), help="the etl command measured (default: this environment's)")
    parser.add_argument("--baseline", nargs=3, metavar=("BQ_TABLE", "GRPC", "TABLE"), help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.baseline:
        baseline(options.baseline[0], options.baseline[1], options.dsn, options.baseline[2])
        return
    sys.path.insert(0, str(ROOT))
    from tests import bq_emulator

    emulator = bq_emulator.start()
    schema = f"bench_{uuid.uuid4().hex[:6]}"
    sql(options.dsn, f"CREATE SCHEMA {schema}")
    try:
        started = time.perf_counter()
        table = make_table(emulator, options.rows)
        print(f"emulator: {options.rows:,} rows in {table} in {time.perf_counter() - started:.1f}s")
        header = f"{'what':<54} {'rows':>10} {'wall s':>8} {'rows/s':>12} {'peak MB':>10} {'vs base':>8}"
        print(header, flush=True)
        with tempfile.TemporaryDirectory() as tmp:
            workdir = Path(tmp)
            env = {**os.environ, **emulator.env}

            sql(options.dsn, f"CREATE TABLE {schema}.base ({COLUMNS})")
            wall, peak, _ = measured(
                [
                    sys.executable,
                    __file__,
                    "--dsn",
                    options.dsn,
                    "--baseline",
                    table,
                    emulator.grpc,
                    f"{schema}.base",
                ],
                workdir,
                env,
                dsn=options.dsn,
            )
            base = options.rows / wall if wall == wall else None  # NaN when the baseline failed
            row("1 baseline: Storage Read (1 stream) + 1 COPY", options.rows, wall, peak, None)
            check(options.dsn, f"{schema}.base", options.rows)

            for label, name, chunk_by in (
                ("2 etl run, in process, streams", "etl", None),
                ("3 etl run, in process, chunk_by: id", "etl_by_id", "id"),
            ):
                path = spec(workdir, name, table, emulator, options.dsn, f"{schema}.{name}", chunk_by)
                wall, peak, out = measured(
                    [options.etl, "run", str(path), "--sync", "--json"], workdir, env, options.dsn
                )
                rows, chunks = result(out)
                row(label, rows or options.rows, wall, peak, base, chunks)
                check(options.dsn, f"{schema}.{name}", options.rows)

            queue = {"ETL_QUEUE_URL": options.redis, "ETL_QUEUE_NAME": f"bench{uuid.uuid4().hex[:6]}"}
            env = {**env, **queue}
            for label, name, chunk_by in (
                ("4 background, streams, 2 workers", "bg", None),
                ("5 background, chunk_by: id, 2 workers", "bg_by_id", "id"),
            ):
                path = spec(workdir, name, table, emulator, options.dsn, f"{schema}.{name}", chunk_by)
                wall, peaks, out = background(options.etl, path, workdir, env, options.dsn)
                rows, chunks = result(out)
                row(label, rows or options.rows, wall, max(peaks), base, chunks)
                print(f"  workers' peak RSS: {', '.join(f'{p:.0f} MB' for p in peaks)}")
                check(options.dsn, f"{schema}.{name}", options.rows)
    finally:
        sql(options.dsn, f"DROP SCHEMA {schema} CASCADE")
        emulator.stop()
        emulator.log.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
