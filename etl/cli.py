"""The ``etl`` command.

Exit codes, decided in one place (:class:`_Group`): 0 success, 1 a run failed, 2 bad
configuration or usage. Neither 1 nor 2 prints a traceback; an unexpected exception is a bug
and keeps its traceback.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click
import yaml

from etl import api
from etl.cli_queue import log_options
from etl.errors import ConfigErrors, EtlError, JobFailed
from etl.runs import new_run_id
from etl.version import __version__
from etl.yamldoc import environment

_SHOWN_CHUNKS = 20


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ConfigErrors as exc:
            for error in exc.errors:
                click.echo(f"error: {error}", err=True)
            ctx.exit(exc.exit_code)
        except JobFailed as exc:
            click.echo(f"error: {exc}", err=True)
            result = exc.result
            if result is not None:
                log = api.state_dir() / "runs" / result.run_id / "run.log"
                if log.exists():
                    click.echo(f"details and traceback: {log}", err=True)
            ctx.exit(exc.exit_code)
        except EtlError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(exc.exit_code)


def _load_env_files() -> None:
    """Make ``.env`` and ``.env.local`` visible to plugins that read the environment."""
    for key, value in environment().items():
        os.environ.setdefault(key, value)


def _pairs(values: Sequence[str], option: str) -> dict[str, str]:
    pairs = {}
    for item in values:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise click.UsageError(f"{option} {item!r}: expected name=value, e.g. {option} start_date=2026-01-01")
        pairs[name.strip()] = value
    return pairs


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="etl")
def main() -> None:
    """Run YAML jobs that move big tables in chunks: source → transforms → sink."""
    _load_env_files()


_param_option = click.option(
    "-p", "--param", "params", multiple=True, metavar="NAME=VALUE", help="A job parameter (repeatable)."
)
_set_option = click.option(
    "--set", "sets", multiple=True, metavar="KEY.PATH=VALUE", help="Override a key of the job, e.g. sink.table=x."
)


@main.command()
@click.argument("job_file", type=click.Path(dir_okay=False))
@_param_option
@_set_option
@click.option("--dry-run", is_flag=True, help="Validate, count and show the chunk plan; write nothing.")
@log_options
@click.option("--json", "as_json", is_flag=True, help="Print the result (or the plan) as JSON on stdout.")
@click.option("--sync", "mode", flag_value="sync", help="Run in this process, whatever the row count.")
@click.option("--background", "mode", flag_value="background", help="Queue the run, whatever the row count.")
@click.option("--wait", is_flag=True, help="With a queued run: follow it to the end with a progress bar.")
def run(
    job_file: str,
    params: Sequence[str],
    sets: Sequence[str],
    dry_run: bool,
    log_format: str,
    log_level: str,
    as_json: bool,
    mode: str | None,
    wait: bool,
) -> None:
    """Run JOB_FILE.

    Below the job's thresholds.background rows the run executes at once, in this process; at
    or above it, it is queued for the workers and the command prints the run id (--wait follows
    it). Without a queue configured (ETL_QUEUE_URL, REDIS_HOST), the embedded queue is used
    and this command works the run itself, so no server is needed.

    Progress goes to stderr as log lines; the run's own log, with tracebacks, goes to
    $ETL_HOME/runs/RUN_ID/run.log ($ETL_HOME is .etl by default).
    """
    from etl import logsetup

    logsetup.configure(level=log_level.upper(), fmt=log_format)  # type: ignore[arg-type]
    given = _pairs(params, "-p")
    # Loaded, counted and planned once, with one plugin manager, whichever way the run goes. One
    # run id from the count to the run: what a source stages while counting (a BigQuery query's
    # result) is the run's, and is not done twice; an incremental run's window, fixed by the
    # count, is the one it reads.
    planned = api.plan(job_file, params=given, sets=sets, run_id=new_run_id())
    if dry_run:
        planned.close()
        _dry_run(planned, as_json)
        return
    job, rows = planned.job, planned.info.rows
    if mode is None:
        mode = "background" if rows is not None and rows >= job.spec.thresholds.background else "sync"
    if mode == "background":
        _run_queued(planned, wait, as_json)
        return
    handler = logsetup.add_run_log(api.state_dir() / "runs" / planned.run_id / "run.log", planned.run_id)
    try:
        result = api.run(planned)
    finally:
        from loguru import logger

        logger.remove(handler)
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2))


def _run_queued(planned: Any, wait: bool, as_json: bool) -> None:
    from etl.cli_queue import ended, follow, work_here

    try:
        queue = api.open_queue()
    except BaseException:
        planned.close()
        raise
    for warning in planned.warnings:
        click.echo(f"warning: {warning}", err=True)
    record = api.submit(planned, queue=queue)
    if not queue.embedded:
        if not wait:
            click.echo(json.dumps(record.to_json(), indent=2) if as_json else record.id)
            return
        done = follow(queue, record.id)
    else:
        done = work_here(queue, record.id, planned)  # no server: this process is the worker
    if as_json:
        click.echo(json.dumps(done.to_json(), indent=2))
    if done.state != "completed":
        raise JobFailed(ended(done, planned))


def _dry_run(planned: Any, as_json: bool) -> None:
    job, info, plan, warnings = planned.job, planned.info, planned.plan, planned.warnings
    background = info.rows is not None and info.rows >= job.spec.thresholds.background
    if as_json:
        data = {
            "job": job.name,
            "rows": info.rows,
            "rows_exact": info.rows_exact,
            "chunks": [{"index": c.index, "rows": c.rows, "label": c.label, "args": dict(c.args)} for c in plan.chunks],
            "background": background,
            "window": info.window,
            "warnings": warnings,
            "config": job.describe(),
        }
        click.echo(json.dumps(data, indent=2, default=str))
        return
    rows = f"{info.rows:,}" if info.rows is not None else "unknown"
    exact = "" if info.rows_exact else " (estimate)"
    click.echo(f"job {job.name} ({job.file})")
    click.echo(f"source {job.source.type}: {rows} rows{exact} in {info.chunks} chunks of up to {job.spec.chunk_size:,}")
    if info.window is not None:
        from etl.incremental import Window

        click.echo(f"incremental: {Window.from_json(info.window).describe()}")
    click.echo(" → ".join([job.source.label, *(t.label for t in job.transforms), job.sink.label]))
    if background:
        click.echo(f"{rows} rows is at or above thresholds.background ({job.spec.thresholds.background:,})")
    for warning in warnings:
        click.echo(f"warning: {warning}")
    click.echo(f"{'chunk':>7}  {'rows':>12}  what")
    for chunk in plan.chunks[:_SHOWN_CHUNKS]:
        shown = f"{chunk.rows:,}" if chunk.rows is not None else "?"
        click.echo(f"{chunk.index:>7}  {shown:>12}  {chunk.label}")
    if len(plan.chunks) > _SHOWN_CHUNKS:
        click.echo(f"{'':>7}  … and {len(plan.chunks) - _SHOWN_CHUNKS} more")


@main.command()
@click.argument("job_files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@_param_option
@_set_option
@click.option("--show", is_flag=True, help="Print each valid job with defaults filled in and secrets masked.")
def validate(job_files: Sequence[str], params: Sequence[str], sets: Sequence[str], show: bool) -> None:
    """Check JOB_FILES without running them; report every problem found."""
    given = _pairs(params, "-p")
    failed = 0
    for path in job_files:
        try:
            job = api.load_job(path, params=given, sets=sets)
        except ConfigErrors as exc:
            failed += 1
            for error in exc.errors:
                click.echo(f"error: {error}", err=True)
            continue
        click.echo(f"{path}: ok")
        if show:
            click.echo(yaml.safe_dump(job.describe(), sort_keys=False, allow_unicode=True))
    if failed:
        click.echo(f"{failed} of {len(job_files)} job files invalid", err=True)
        sys.exit(2)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def plugins(as_json: bool) -> None:
    """List every stage type (with its plugin, version and options) and the job keys plugins add."""
    from etl.manager import StageRegistry, get_plugin_manager

    pm = get_plugin_manager()
    registry = StageRegistry(pm)
    versions = {pm.get_name(plugin): dist.version for plugin, dist in pm.list_plugin_distinfo()}
    stages = []
    for stage in registry.all():
        options = []
        schema = stage.cls.Options.model_json_schema()
        for name, info in stage.cls.Options.model_fields.items():
            options.append(
                {
                    "name": name,
                    "type": _type_name(schema["properties"].get(name, {}), schema.get("$defs", {})),
                    "required": info.is_required(),
                    "default": None if info.is_required() else _default(info),
                    "description": info.description or "",
                }
            )
        stages.append(
            {
                "kind": stage.kind,
                "type": stage.name,
                "plugin": stage.plugin,
                "version": stage.version,
                "description": stage.description,
                "options": options,
            }
        )
    for key, plugin in registry.job_key_plugins().items():
        stages.append(
            {
                "kind": "job_key",
                "type": key,
                "plugin": plugin,
                "version": versions.get(plugin),
                "description": f"the top-level `{key}:` key of job files",
                "options": [],
            }
        )
    if as_json:
        click.echo(json.dumps(stages, indent=2, default=str))
        return
    keys = [s for s in stages if s["kind"] == "job_key"]
    if keys:
        click.echo(click.style("job keys", bold=True))
        for key in keys:
            click.echo(f"  {key['type']:<10} {key['description']}  [{key['plugin']} {key['version'] or ''}]".rstrip())
    for kind in ("source", "transform", "sink"):
        click.echo(click.style(f"{kind}s", bold=True))
        for stage in (s for s in stages if s["kind"] == kind):
            click.echo(
                f"  {stage['type']:<10} {stage['description']}  [{stage['plugin']} {stage['version'] or ''}]".rstrip()
            )
            for option in stage["options"]:
                if option["required"]:
                    default = "required"
                else:
                    default = "optional" if option["default"] is None else f"default {json.dumps(option['default'])}"
                click.echo(f"      {option['name']}: {option['type']} ({default}) {option['description']}".rstrip())
        click.echo()


def _type_name(prop: dict[str, Any], defs: dict[str, Any]) -> str:
    """A short type for an option, from its JSON Schema: ``append | replace``, ``list[string]``."""
    if "$ref" in prop:
        return defs.get(prop["$ref"].rsplit("/", 1)[-1], {}).get("title", "object")
    if "enum" in prop:
        return " | ".join(map(str, prop["enum"]))
    if "const" in prop:
        return str(prop["const"])
    for key in ("anyOf", "oneOf"):
        if key in prop:
            kinds = [_type_name(p, defs) for p in prop[key] if p.get("type") != "null"]
            return " | ".join(dict.fromkeys(kinds)) or "null"
    kind = prop.get("type", "any")
    if kind == "array":
        return f"list[{_type_name(prop.get('items', {}), defs)}]"
    if kind == "object":
        extra = prop.get("additionalProperties")
        return f"mapping[string, {_type_name(extra, defs)}]" if isinstance(extra, dict) else "mapping"
    return str(kind)


def _default(info: Any) -> Any:
    value = info.get_default(call_default_factory=True)
    return value.model_dump(mode="json") if hasattr(value, "model_dump") else value


@main.command()
@click.option(
    "-o", "--output", type=click.Path(dir_okay=False, writable=True), help="Write to this file instead of stdout."
)
def schema(output: str | None) -> None:
    """Print the JSON Schema of job files (with every installed plugin's stages)."""
    from etl.manager import StageRegistry, get_plugin_manager
    from etl.schema import job_schema

    text = json.dumps(job_schema(StageRegistry(get_plugin_manager())), indent=2) + "\n"
    if output:
        Path(output).write_text(text, encoding="utf-8")
    else:
        click.echo(text, nl=False)


def _register() -> None:
    from etl import cli_queue, cli_schedule, cli_web

    for command in [*cli_queue.COMMANDS, *cli_schedule.COMMANDS, *cli_web.COMMANDS]:
        main.add_command(command)


_register()
