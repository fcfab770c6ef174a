"""The commands for background runs: worker, workers, status, runs, retry, cancel, clean.

Every command takes ``--json``. Bad input (an unknown run id, a malformed ``--older-than``, a
Redis URL with a typo) is a clear error and exit 2, with nothing changed.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import TYPE_CHECKING, Any, TextIO

import click

from etl import api
from etl.errors import JobFailed
from etl.progress import RunProgress, runs_header, runs_row, status_line
from etl.units import parse_duration


def log_options(command: Any) -> Any:
    """``--log-format`` and ``--log-level``, for the commands that work on runs."""
    command = click.option(
        "--log-level",
        type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
        default="INFO",
        show_default=True,
    )(command)
    return click.option("--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True)(command)


if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from prometheus_client import CollectorRegistry

    from etl.lifecycle import PlannedRun
    from etl.metrics import WorkerMetrics
    from etl.queue import Queue
    from etl.store import ChunkRecord, RunRecord, WorkerInfo

__all__ = ["COMMANDS", "ended", "follow", "render", "work_here"]

_STATES = ("waiting", "active", "completed", "failed", "cancelled")


def render(run: RunRecord, chunks: list[ChunkRecord] | None = None, now: float | None = None) -> str:
    """One line of progress: bar, share, rows, rows/s, ETA, chunk counts, retries
    (:func:`etl.progress.status_line`)."""
    return status_line(RunProgress.of(run, chunks, now))


def follow(queue: Queue, run_id: str, stream: TextIO | None = None, interval: float = 0.5) -> RunRecord:
    """Show the run's progress until it finishes (a redrawn line on a terminal, a line every
    few seconds otherwise); returns the finished run."""
    stream = stream or sys.stderr
    tty = stream.isatty()
    last_line, last_print = "", 0.0
    while True:
        run = api.get_run(run_id, queue)
        line = render(run, queue.store.get_chunks(run_id, run.chunks_total))
        now = time.monotonic()
        if tty:
            stream.write("\r\033[K" + line)
            stream.flush()
        elif line != last_line and (now - last_print >= 5 or run.finished):
            stream.write(line + "\n")
            stream.flush()
            last_print = now
        last_line = line
        if run.finished:
            if tty:
                stream.write("\n")
            return run
        time.sleep(interval)


def _open() -> Queue:
    return api.open_queue()


def _echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


class _Processes(click.ParamType):
    """``--processes``: a number of worker processes (1-256), or ``auto`` (one per CPU)."""

    name = "N|auto"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        if str(value).strip().lower() == "auto":
            from etl.supervisor import cpu_count

            return cpu_count()
        try:
            number = int(value)
        except ValueError:
            self.fail(f"{value!r} is not a number of processes; expected 1 to 256, or auto (one per CPU)", param, ctx)
        if not 1 <= number <= 256:
            self.fail(f"{number} is not in the range 1 to 256 (or auto: one per CPU)", param, ctx)
        return number


@click.command()
@click.option(
    "-w",
    "--workers",
    "concurrency",
    type=click.IntRange(1, 256),
    default=1,
    show_default=True,
    help="Chunks each worker process works on at once (threads).",
)
@click.option(
    "--processes",
    type=_Processes(),
    metavar="N|auto",
    help="Run this many worker processes (-w threads each) under a supervisor that restarts them: "
    "auto is one per CPU. For transforms in pure Python, which use one core per process.",
)
@click.option(
    "--configs",
    type=click.Path(file_okay=False, exists=True),
    help="A directory of job files whose schedules this worker fires (one worker at a time does).",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    help="Serve Prometheus metrics on this port, at /metrics (0: any free port).",
)
@click.option(
    "--metrics-host",
    default="127.0.0.1",
    show_default=True,
    help="The address the metrics server listens on (0.0.0.0 or :: for every interface).",
)
@click.option("--supervised-by", "supervisor", hidden=True, help="The id of the supervisor that started this process.")
@log_options
def worker(
    concurrency: int,
    processes: int | None,
    configs: str | None,
    metrics_port: int | None,
    metrics_host: str,
    supervisor: str | None,
    log_format: str,
    log_level: str,
) -> None:
    """Run a worker: execute background runs' chunks until SIGTERM or Ctrl-C.

    Start as many as you like, on as many machines, against one queue. A worker that stops
    finishes its chunks in hand (ETL_GRACE_SECONDS, 30 by default) or gives them back. With
    --processes, a supervisor runs that many worker processes and restarts those that die
    (docs/operations.md#running-workers). With --configs, the scheduled jobs of that directory
    are fired on their schedules: by one of the workers given the directory at a time, each due
    run exactly once. With --metrics-port, Prometheus metrics are served on that port
    (docs/operations.md#metrics).
    """
    from etl import logsetup
    from etl.worker import Worker, WorkerOptions

    logsetup.configure(level=log_level.upper(), fmt=log_format)  # type: ignore[arg-type]
    if processes is not None:
        if supervisor is not None:
            raise click.UsageError("--processes and --supervised-by don't go together")
        sys.exit(_supervise(processes, concurrency, configs, metrics_port, metrics_host, log_format, log_level))
    if configs:
        _check_configs(configs)
    queue = _open()
    options = WorkerOptions.from_env(concurrency)
    metrics: WorkerMetrics | None = None
    server: WSGIServer | None = None
    # Under a supervisor serving metrics, this process's counters go to the supervisor's files.
    if metrics_port is not None or (supervisor is not None and os.environ.get("PROMETHEUS_MULTIPROC_DIR")):
        from etl import metrics as metrics_module

        metrics = metrics_module.WorkerMetrics()
        metrics.watch_store(queue.store.kv.counts)
        if metrics_port is not None:
            registry = metrics_module.registry(queue.store, metrics, worker_ttl=options.heartbeat * 3)
            server = _serve_metrics(registry, metrics_host, metrics_port)
    if supervisor is not None:
        from etl.supervisor import SupervisedWorker

        instance: Worker = SupervisedWorker(queue, options, configs=configs, metrics=metrics, supervisor=supervisor)
    else:
        instance = Worker(queue, options, configs=configs, metrics=metrics)
    try:
        instance.start()
        instance.wait()
    finally:
        if server is not None:
            server.shutdown()


def _supervise(
    processes: int,
    concurrency: int,
    configs: str | None,
    metrics_port: int | None,
    metrics_host: str,
    log_format: str,
    log_level: str,
) -> int:
    """``etl worker --processes``: check the queue, serve the metrics of every worker process,
    run them under a :class:`~etl.supervisor.Supervisor`; its exit code."""
    import shutil
    import tempfile

    from etl.supervisor import Supervisor, supervisor_id
    from etl.worker import WorkerOptions

    queue = _open()
    queue.check()  # a queue out of reach is one line and exit 1, before any process starts
    options = WorkerOptions.from_env(concurrency)
    ident = supervisor_id()
    env = dict(os.environ)
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)

    def command(slot: int) -> list[str]:
        args = ["worker", "-w", str(concurrency), "--log-format", log_format, "--log-level", log_level]
        if configs and slot == 0:
            args += ["--configs", configs]  # one scheduler per supervisor: the others would only wait
        code = "from etl.cli import main; main(prog_name='etl')"
        return [sys.executable, "-c", code, *args, "--supervised-by", ident]

    if metrics_port is None:
        return Supervisor(command, processes, env=env, grace=options.grace, id=ident).run()
    from etl import metrics as metrics_module

    # prometheus_client's multiprocess mode: each worker process writes its counters to files of
    # this directory (the variable is read when prometheus_client is imported there).
    env["PROMETHEUS_MULTIPROC_DIR"] = processes_dir = tempfile.mkdtemp(prefix="etl-metrics-")
    try:
        registry = metrics_module.registry(queue.store, worker_ttl=options.heartbeat * 3, processes_dir=processes_dir)
        server = _serve_metrics(registry, metrics_host, metrics_port)
        try:
            return Supervisor(command, processes, env=env, grace=options.grace, id=ident).run()
        finally:
            server.shutdown()
    finally:
        shutil.rmtree(processes_dir, ignore_errors=True)


def _serve_metrics(registry: CollectorRegistry, host: str, port: int) -> WSGIServer:
    """Start ``prometheus_client``'s HTTP server (a daemon thread) over ``registry``; a port
    that can't be had is a usage error (exit 2)."""
    from loguru import logger
    from prometheus_client import start_http_server

    from etl.errors import UsageError

    try:
        server, _thread = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        raise UsageError(f"--metrics-port {port}: cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    bound = server.server_port
    shown = f"[{host}]" if ":" in host else host
    logger.info("metrics at http://{}:{}/metrics", shown, bound)
    return server


def _check_configs(directory: str) -> None:
    """Validate every job in ``directory``: a bad file is reported and skipped, not fatal."""
    from pathlib import Path

    from loguru import logger

    paths = sorted(Path(directory).glob("*.y*ml"))
    for path, problems in api.validate(paths).items():
        for problem in problems:
            logger.error("skipping {}: {}", path, problem)
    logger.info("{} job file(s) in {}", len(paths), directory)


@click.command()
@click.option("--json", "as_json", is_flag=True)
def workers(as_json: bool) -> None:
    """List live workers: host, pid, slots, chunks in hand, last heartbeat; the processes of a
    supervisor (etl worker --processes) under it."""
    live = api.workers(_open())
    if as_json:
        _echo_json([w.to_json() for w in live])
        return
    if not live:
        click.echo("no live workers")
        return
    now = time.time()
    groups: dict[str, list[WorkerInfo]] = {}
    for w in sorted(live, key=lambda w: (w.supervisor, w.host, w.pid)):
        groups.setdefault(w.supervisor, []).append(w)
    click.echo(f"{'worker':<34} {'slots':>5} {'seen':>6}  in hand")
    for supervisor, members in groups.items():
        indent = "  " if supervisor else ""
        if supervisor:
            slots = sum(w.concurrency for w in members)
            click.echo(f"supervisor {supervisor}: {len(members)} process(es), {slots} slot(s)")
        for w in members:
            name = indent + w.id
            click.echo(f"{name:<34} {w.concurrency:>5} {now - w.last_seen:>5.0f}s  {', '.join(w.current) or '-'}")


@click.command()
@click.argument("run_id")
@click.option("--follow", "-f", "follow_", is_flag=True, help="Show progress until the run finishes.")
@click.option("--json", "as_json", is_flag=True)
def status(run_id: str, follow_: bool, as_json: bool) -> None:
    """Show a run's state and progress (exit 1 when it failed or was cancelled)."""
    queue = _open()
    run = follow(queue, run_id) if follow_ else api.get_run(run_id, queue)
    chunks = queue.store.get_chunks(run_id, run.chunks_total)
    if as_json:
        _echo_json({**run.to_json(chunks=chunks), "chunks": [c.to_json() for c in chunks]})
    else:
        if not follow_:
            click.echo(f"run {run.id} of {run.job}")
            click.echo(render(run, chunks))
            if run.state == "waiting" and run.after is not None:
                click.echo(f"queued behind run {run.after} (overlap: queue): planned once it has finished")
        if run.error:
            where = f" (chunk {run.error_chunk})" if run.error_chunk is not None else ""
            click.echo(f"last error{where}: {run.error}")
    if run.state in ("failed", "cancelled"):
        sys.exit(1)


@click.command()
@click.option("--state", type=click.Choice(_STATES))
@click.option("--job", help="Only runs of this job.")
@click.option("--limit", type=click.IntRange(1, 10_000), default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def runs(state: str | None, job: str | None, limit: int, as_json: bool) -> None:
    """List background runs, newest first."""
    found = api.list_runs(state=state, job=job, limit=limit, queue=_open())
    if as_json:
        _echo_json([r.to_json() for r in found])
        return
    if not found:
        click.echo("no runs")
        return
    click.echo(runs_header())
    for r in found:
        click.echo(runs_row(RunProgress.of(r), r.created_at))


@click.command()
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True)
@click.option("--wait", is_flag=True, help="Follow the run to its end (always, on the embedded queue).")
def retry(run_id: str, as_json: bool, wait: bool) -> None:
    """Run a failed run's failed chunks again (those that succeeded are not re-run), then
    finalize it. On the embedded queue this command works the run itself, as `etl run` does."""
    queue = _open()
    again = api.retry(run_id, queue)
    if as_json and not (queue.embedded or wait):
        _echo_json({"run": run_id, "chunks": again})
    elif not as_json:
        click.echo(f"run {run_id}: {len(again)} chunk(s) to run again", err=queue.embedded or wait)
    if queue.embedded or wait:
        done = work_here(queue, run_id) if queue.embedded else follow(queue, run_id)
        if as_json:
            _echo_json(done.to_json())
        if done.state != "completed":
            raise JobFailed(ended(done))


@click.command()
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True)
def cancel(run_id: str, as_json: bool) -> None:
    """Cancel a run: no more of its chunks are handed out; chunks in flight stop at their next
    batch, and what it staged is dropped."""
    run = api.cancel(run_id, _open())
    if as_json:
        _echo_json(run.to_json())
    elif run.aborted:
        click.echo(f"run {run_id} cancelled; what it staged was dropped")
    elif run.in_process:
        click.echo(f"run {run_id} cancelled; the process running it stops at its next batch and drops what it staged")
    else:
        click.echo(f"run {run_id} cancelled; a worker drops what it staged once its chunks in flight have stopped")


def ended(run: RunRecord, planned: PlannedRun | None = None) -> str:
    """What a run that did not complete left, for its error line: a failed run's staging, as its
    sink names it (with the job and plugins ``planned`` loaded, else loaded from the record)."""
    from etl.lifecycle import kept

    if run.state != "failed":
        return f"run {run.id} {run.state}: {run.error}"
    return f"run {run.id} failed: {run.error}" + kept(run.id, api.staged(run, planned))


def work_here(queue: Queue, run_id: str, planned: PlannedRun | None = None) -> RunRecord:
    """Work a queued run in this process until it finishes (the embedded queue has no server and
    maybe no worker): a worker's threads, and its progress on stderr. Ctrl-C cancels the run.
    A run this process ``planned`` keeps its job and plugin manager."""
    import os

    from etl.worker import Worker, WorkerOptions

    worker = Worker(queue, WorkerOptions.from_env(concurrency=max(min(os.cpu_count() or 1, 4), 1)))
    if planned is not None:
        worker.executor.adopt(run_id, planned.job, planned.life.pm)
    worker.start(install_signals=False)
    try:
        return follow(queue, run_id)
    except KeyboardInterrupt:
        api.cancel(run_id, queue)
        click.echo(f"run {run_id} cancelled", err=True)
        raise
    finally:
        worker.stop()


def _older_than(ctx: click.Context, param: click.Parameter, value: str | None) -> float:
    if value is None:
        return 0.0
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@click.command()
@click.option("--state", type=click.Choice(("completed", "failed", "cancelled")), required=True)
@click.option("--older-than", callback=_older_than, help="Only runs that finished longer ago than this (7d, 12h).")
@click.option("--json", "as_json", is_flag=True)
def clean(state: str, older_than: float, as_json: bool) -> None:
    """Delete finished runs (in batches: a big clean never blocks Redis for long)."""
    deleted = api.clean(state, older_than, _open())
    if as_json:
        _echo_json({"deleted": deleted, "state": state})
    else:
        click.echo(f"deleted {deleted:,} {state} run(s)")


COMMANDS = [worker, workers, status, runs, retry, cancel, clean]
