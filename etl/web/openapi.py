"""The OpenAPI 3.2 description of the dashboard's JSON API and event streams.

It says exactly what the server does: every parameter's bounds (the server refuses what the
description refuses, with 400), every status each operation answers, and every response's
shape, event streams included (OpenAPI 3.2's ``itemSchema``: each event, its ``data`` a JSON
document of the schema it names). ``tests/background/test_api_contract.py`` holds the two to it
with schemathesis.
"""

from __future__ import annotations

import re
from typing import Any

from etl.version import __version__

__all__ = ["OLDER_THAN", "openapi_schema"]

_STATES = ["waiting", "active", "completed", "failed", "cancelled"]
_CHUNK_STATES = ["pending", "queued", "running", "retrying", "done", "failed"]
#: ``older_than`` of a clean: a number and a unit, as the server checks it (and the schema says).
OLDER_THAN = re.compile(r"[0-9]{1,10}(\.[0-9]{1,6})?(ms|s|m|h|d|w)?")

_STR = {"type": "string"}
_INT = {"type": "integer"}
_NUM = {"type": "number"}
_BOOL = {"type": "boolean"}
_TIME = {"type": ["string", "null"], "format": "date-time"}
_INTS = {"type": "array", "items": _INT}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _object(properties: dict[str, Any], optional: tuple[str, ...] = (), **extra: Any) -> dict[str, Any]:
    """An object with these properties, all required but ``optional``."""
    required = [k for k in properties if k not in optional]
    return {"type": "object", "required": required, "properties": properties, **extra}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _error(description: str) -> dict[str, Any]:
    return _json(_ref("Error"), description)


def _stream(description: str, events: dict[str, str]) -> dict[str, Any]:
    """A ``text/event-stream`` response whose events are named ``events`` (name → the schema of
    the event's data)."""
    item = {
        "oneOf": [
            _object(
                {
                    "event": {"const": name},
                    "data": {"type": "string", "contentMediaType": "application/json", "contentSchema": _ref(schema)},
                    "id": _STR,
                    "retry": _INT,
                },
                optional=("id", "retry"),
            )
            for name, schema in events.items()
        ]
    }
    return {"description": description, "content": {"text/event-stream": {"schema": _STR, "itemSchema": item}}}


_RUN_ID = {"name": "run_id", "in": "path", "required": True, "schema": _STR}
_BEARER = [{"token": []}]
_NOT_FOUND = _error("no such run (it may have been cleaned)")
_AUTH = {
    "401": _error("no token, or not the dashboard's token (Authorization: Bearer TOKEN)"),
    "403": _error("actions are off: the dashboard is read-only, or has no ETL_DASHBOARD_TOKEN"),
    "429": {
        "description": "too many wrong tokens from this client address: wait as Retry-After says",
        "headers": {"Retry-After": {"required": True, "schema": _INT, "description": "seconds to wait"}},
        "content": {"application/json": {"schema": _ref("Error")}},
    },
}
# A run's id for the operations on one run, from a listing (the stateful tests follow these).
_RUN_LINKS = {
    name: {"operationId": operation, "parameters": {"run_id": "$response.body#/0/id"}}
    for name, operation in (
        ("GetRun", "getRun"),
        ("GetRunChunks", "getRunChunks"),
        ("GetRunLog", "getRunLog"),
        ("GetRunEvents", "getRunEvents"),
        ("RetryRun", "retryRun"),
        ("CancelRun", "cancelRun"),
    )
}

_DISPLAY = ("percent", "rows", "rows_total", "written", "rate", "eta", "chunks", "retries", "line")
_RUN = _object(
    {
        "id": {"type": "string", "examples": ["20261128-203300-4f1a2b"]},
        "job": _STR,
        "state": {"enum": _STATES},
        "job_file": {"type": "string", "description": "the job file it was submitted from"},
        "params": {"type": "object", "additionalProperties": _STR, "description": "-p values, secrets masked"},
        "sets": {"type": "array", "items": _STR, "description": "--set values, secrets masked"},
        "max_parallel": _INT,
        "delay": _NUM,
        "attempts": {"type": "integer", "description": "attempts a chunk gets"},
        "rows_total": {"type": ["integer", "null"], "description": "rows the source holds (null: unknown)"},
        "rows_exact": _BOOL,
        "rows_read": {"type": "integer", "description": "rows read so far: what fraction, rows/s and ETA count"},
        "rows_written": _INT,
        "rows_rejected": _INT,
        "chunks_total": _INT,
        "chunks_done": _INT,
        "chunks_failed": _INT,
        "retries": _INT,
        "planned": _BOOL,
        "fraction": {
            "type": "number",
            "minimum": 0,
            "maximum": 1,
            "description": "share done, 0 to 1: rows read of rows_total when known, else chunks done",
        },
        "seconds": _NUM,
        "rows_per_second": {"type": "number", "description": "rows read per second"},
        "eta_seconds": {
            "type": ["number", "null"],
            "description": "seconds left at the pace so far (null unless active, with a pace)",
        },
        "created_at": _TIME,
        "started_at": _TIME,
        "finished_at": _TIME,
        "scheduled_for": _TIME,
        "finalize_until": _TIME,
        "error": {"type": ["string", "null"]},
        "error_chunk": {"type": ["integer", "null"]},
        "finalizer": {"type": ["string", "null"]},
        "finalize_attempts": _INT,
        "aborted": _BOOL,
        "submitted_by": _STR,
        "window": {"type": ["object", "null"], "description": "an incremental run's window"},
        "interval": {"type": ["object", "null"], "additionalProperties": _STR},
        "after": {"type": ["string", "null"], "description": "with overlap: queue, the run it waits for"},
        "driver": {"enum": ["queue", "process"], "description": "workers, or the process that started it"},
        "display": _object(
            {k: _STR for k in _DISPLAY}, description="the same figures as text, as `etl status` shows them"
        ),
        "chunks": {"type": "array", "items": _ref("ChunkState"), "description": "only for one run"},
        "chunks_running": {"type": "integer", "description": "only for one run"},
        "chunks_retrying": {"type": "integer", "description": "only for one run"},
        "chunks_queued": {"type": "integer", "description": "only for one run"},
        "chunks_pending": {"type": "integer", "description": "only for one run"},
    },
    optional=("chunks", "chunks_running", "chunks_retrying", "chunks_queued", "chunks_pending"),
)
_ONE_RUN = {
    "allOf": [
        _ref("Run"),
        {"required": ["chunks", "chunks_running", "chunks_retrying", "chunks_queued", "chunks_pending"]},
    ]
}

_SCHEMAS: dict[str, Any] = {
    "Run": _RUN,
    "ChunkState": _object(
        {
            "index": _INT,
            "state": {"enum": _CHUNK_STATES},
            "attempts": _INT,
            "rows_read": _INT,
            "rows_written": _INT,
            "label": _STR,
        }
    ),
    "Chunk": _object(
        {
            "run_id": _STR,
            "index": _INT,
            "label": _STR,
            "rows": {"type": ["integer", "null"]},
            "args": {"type": "object", "description": "what the chunk reads (a range, files, a stream)"},
            "state": {"enum": _CHUNK_STATES},
            "attempts": _INT,
            "token": {"type": "integer", "description": "the fencing token of its latest attempt"},
            "worker": {"type": ["string", "null"]},
            "lease_until": _TIME,
            "queued_at": _TIME,
            "not_before": _TIME,
            "finished_at": _TIME,
            "rows_read": _INT,
            "rows_written": _INT,
            "rows_rejected": _INT,
            "seconds": _NUM,
            "error": {"type": ["string", "null"]},
            "errors": {"type": "array", "items": _STR, "description": "each failed attempt's error"},
        }
    ),
    "Summary": _object(
        {
            "counts": _object({s: _INT for s in _STATES}),
            "workers": {"type": "integer", "description": "live workers"},
            "slots": {"type": "integer", "description": "chunks the live workers can run at once"},
            "stalled": {"type": "boolean", "description": "runs wait and no worker is alive"},
        }
    ),
    "Worker": _object(
        {
            "id": _STR,
            "host": _STR,
            "pid": _INT,
            "concurrency": _INT,
            "started_at": _TIME,
            "last_seen": _TIME,
            "current": {"type": "array", "items": _STR, "description": "chunks in hand (RUN|INDEX)"},
            "version": _STR,
        }
    ),
    "ScheduledJob": _object(
        {
            "file": _STR,
            "job": _STR,
            "schedule": _STR,
            "timezone": _STR,
            "paused": _BOOL,
            "next": {"type": "array", "items": {"type": "string", "format": "date-time"}},
        }
    ),
    "InvalidJobFile": _object(
        {"file": _STR, "errors": {"type": "array", "items": _STR}},
        description="a job file that fails to load: its schedule, if it has one, does not fire",
    ),
    "RunEnd": _object({"run": _STR, "state": {"enum": _STATES[2:]}}),
    "RunGone": _object({"run": _STR}),
    "Error": _object({"error": _STR}),
}


def openapi_schema(server: str = "") -> dict[str, Any]:
    """The API's description (``/api/openapi.json``)."""
    return {
        "openapi": "3.2.0",
        "info": {
            "title": "etl dashboard API",
            "version": __version__,
            "description": (
                "Runs, their progress and workers, for applications that show progress in their own pages. "
                "Reading needs nothing; actions need the dashboard's token as a bearer token. "
                "Every operation answers 400 to a Host the dashboard is not allowed to serve "
                "(--allowed-host), and 405, with Allow, to a method it does not have."
            ),
        },
        "servers": [{"url": server}] if server else [],
        "components": {
            "securitySchemes": {"token": {"type": "http", "scheme": "bearer", "description": "ETL_DASHBOARD_TOKEN"}},
            "schemas": _SCHEMAS,
        },
        "paths": _paths(),
    }


def _paths() -> dict[str, Any]:
    one_run = (
        "Server-sent events: `progress` (the run, with its chunks, whenever it changes), then `end` when it "
        "has finished, or `gone` when it was deleted; comments keep the connection alive. Subscribe with "
        "`new EventSource('/api/runs/ID/events')`."
    )
    all_runs = (
        "Server-sent events: `summary` when the counts change, `progress` (a run, without chunks) whenever a "
        "waiting, active or just-finished run changes; comments keep the connection alive."
    )
    return {
        "/api/summary": {
            "get": {
                "operationId": "getSummary",
                "summary": "Runs per state and live workers",
                "responses": {"200": _json(_ref("Summary"), "the counts")},
            }
        },
        "/api/runs": {
            "get": {
                "operationId": "listRuns",
                "summary": "Runs, newest first",
                "parameters": [
                    {"name": "state", "in": "query", "schema": {"enum": _STATES}},
                    {"name": "job", "in": "query", "schema": _STR, "description": "a job's name (empty: any job)"},
                    {
                        "name": "limit",
                        "in": "query",
                        "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 50},
                    },
                ],
                "responses": {
                    "200": {**_json({"type": "array", "items": _ref("Run")}, "the runs"), "links": _RUN_LINKS},
                    "400": _error("a state or limit out of bounds"),
                },
            }
        },
        "/api/runs/{run_id}": {
            "get": {
                "operationId": "getRun",
                "summary": "One run's state and progress, with its chunks",
                "parameters": [_RUN_ID],
                "responses": {"200": _json(_ONE_RUN, "the run"), "404": _NOT_FOUND},
            }
        },
        "/api/runs/{run_id}/chunks": {
            "get": {
                "operationId": "getRunChunks",
                "summary": "A run's chunk ledger: state, attempts, errors, lease",
                "parameters": [_RUN_ID],
                "responses": {"200": _json({"type": "array", "items": _ref("Chunk")}, "its chunks"), "404": _NOT_FOUND},
            }
        },
        "/api/runs/{run_id}/log": {
            "get": {
                "operationId": "getRunLog",
                "summary": "The last lines of the run's log (where the dashboard shares ETL_HOME with the workers)",
                "parameters": [_RUN_ID],
                "responses": {
                    "200": _json(_object({"run": _STR, "lines": {"type": "array", "items": _STR}}), "its last lines"),
                    "404": _error("no such run, or no log of it on this machine"),
                },
            }
        },
        "/api/runs/{run_id}/events": {
            "get": {
                "operationId": "getRunEvents",
                "summary": "A stream of one run's progress",
                "description": one_run,
                "parameters": [_RUN_ID],
                "responses": {
                    "200": _stream(one_run, {"progress": "Run", "end": "RunEnd", "gone": "RunGone"}),
                    "404": _NOT_FOUND,
                },
            }
        },
        "/api/events": {
            "get": {
                "operationId": "getEvents",
                "summary": "A stream of every run's progress",
                "description": all_runs,
                "responses": {"200": _stream(all_runs, {"summary": "Summary", "progress": "Run"})},
            }
        },
        "/api/workers": {
            "get": {
                "operationId": "listWorkers",
                "summary": "Live workers",
                "responses": {"200": _json({"type": "array", "items": _ref("Worker")}, "the live workers")},
            }
        },
        "/api/throughput": {
            "get": {
                "operationId": "getThroughput",
                "summary": "Rows read per minute over the last hour",
                "responses": {
                    "200": _json(
                        {
                            "type": "array",
                            "items": _object({"minute": {"type": "string", "format": "date-time"}, "rows": _INT}),
                        },
                        "one point a minute",
                    )
                },
            }
        },
        "/api/schedule": {
            "get": {
                "operationId": "getSchedule",
                "summary": "Scheduled jobs (of the dashboard's --configs) and their next fire times, and the files "
                "there that fail to load",
                "responses": {
                    "200": _json(
                        {"type": "array", "items": {"oneOf": [_ref("ScheduledJob"), _ref("InvalidJobFile")]}},
                        "the jobs, then the invalid files",
                    )
                },
            }
        },
        "/api/runs/{run_id}/retry": {
            "post": {
                "operationId": "retryRun",
                "summary": "Run a failed run's failed chunks again",
                "security": _BEARER,
                "parameters": [_RUN_ID],
                "responses": {
                    "200": _json(
                        _object({"run": _STR, "action": {"const": "retry"}, "chunks": _INTS}),
                        "the chunks that run again",
                    ),
                    **_AUTH,
                    "404": _NOT_FOUND,
                    "409": _error("the run is not failed"),
                },
            }
        },
        "/api/runs/{run_id}/cancel": {
            "post": {
                "operationId": "cancelRun",
                "summary": "Cancel a run",
                "security": _BEARER,
                "parameters": [_RUN_ID],
                "responses": {
                    "200": _json(
                        _object({"run": _STR, "action": {"const": "cancel"}, "state": {"enum": _STATES}}),
                        "the run's state now",
                    ),
                    **_AUTH,
                    "404": _NOT_FOUND,
                    "409": _error("the run has completed"),
                },
            }
        },
        "/api/clean": {
            "post": {
                "operationId": "clean",
                "summary": "Delete finished runs of a state",
                "security": _BEARER,
                "parameters": [
                    {"name": "state", "in": "query", "required": True, "schema": {"enum": _STATES[2:]}},
                    {
                        "name": "older_than",
                        "in": "query",
                        "description": "only runs that finished longer ago than this (absent: all of them)",
                        "schema": {"type": "string", "pattern": f"^{OLDER_THAN.pattern}$", "examples": ["7d"]},
                    },
                ],
                "responses": {
                    "200": _json(
                        _object({"deleted": _INT, "state": {"enum": _STATES[2:]}}), "how many runs were deleted"
                    ),
                    "400": _error("a state or older_than out of bounds"),
                    **_AUTH,
                },
            }
        },
    }
