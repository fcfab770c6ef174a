"""The OpenAPI 3.1 description of the dashboard's JSON API and event streams."""

from __future__ import annotations

from typing import Any

from etl.version import __version__

__all__ = ["openapi_schema"]

_STATES = ["waiting", "active", "completed", "failed", "cancelled"]


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_ERROR = _json(_ref("Error"), "what is wrong")
_RUN_ID = {"name": "run_id", "in": "path", "required": True, "schema": {"type": "string"}}
_BEARER = [{"token": []}]

_RUN = {
    "type": "object",
    "required": ["id", "job", "state", "rows_read", "rows_written", "chunks_done", "chunks_total", "fraction"],
    "properties": {
        "id": {"type": "string", "examples": ["20261128-203300-4f1a2b"]},
        "job": {"type": "string"},
        "state": {"enum": _STATES},
        "rows_total": {"type": ["integer", "null"], "description": "rows the source holds (null: unknown)"},
        "rows_exact": {"type": "boolean"},
        "rows_read": {"type": "integer", "description": "rows read so far: what fraction, rows/s and ETA count"},
        "rows_written": {"type": "integer"},
        "rows_rejected": {"type": "integer"},
        "chunks_total": {"type": "integer"},
        "chunks_done": {"type": "integer"},
        "chunks_failed": {"type": "integer"},
        "retries": {"type": "integer"},
        "fraction": {
            "type": "number",
            "minimum": 0,
            "maximum": 1,
            "description": "share done, 0 to 1: rows read of rows_total when known, else chunks done",
        },
        "rows_per_second": {"type": "number", "description": "rows read per second"},
        "eta_seconds": {
            "type": ["number", "null"],
            "description": "seconds left at the pace so far (null unless active, with a pace)",
        },
        "seconds": {"type": "number"},
        "created_at": {"type": ["string", "null"], "format": "date-time"},
        "started_at": {"type": ["string", "null"], "format": "date-time"},
        "finished_at": {"type": ["string", "null"], "format": "date-time"},
        "scheduled_for": {"type": ["string", "null"], "format": "date-time"},
        "error": {"type": ["string", "null"]},
        "error_chunk": {"type": ["integer", "null"]},
        "params": {"type": "object", "additionalProperties": {"type": "string"}},
        "chunks": {"type": "array", "items": _ref("ChunkState"), "description": "only for one run"},
        "chunks_running": {"type": "integer", "description": "only for one run"},
        "chunks_retrying": {"type": "integer", "description": "only for one run"},
        "chunks_queued": {"type": "integer", "description": "only for one run"},
        "chunks_pending": {"type": "integer", "description": "only for one run"},
        "display": {
            "type": "object",
            "description": "the same figures as text, as `etl status` shows them",
            "properties": {
                k: {"type": "string"}
                for k in ("percent", "rows", "rows_total", "written", "rate", "eta", "chunks", "retries", "line")
            },
        },
    },
}


def openapi_schema(server: str = "") -> dict[str, Any]:
    """The API's description (``/api/openapi.json``)."""
    run_events = (
        "Server-sent events: `progress` (a Run, whenever it changes), then `end` ({run, state}) when it "
        "finishes, or `gone` when it was deleted; comments keep the connection alive. Subscribe with "
        "`new EventSource('/api/runs/ID/events')`."
    )
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "etl dashboard API",
            "version": __version__,
            "description": (
                "Runs, their progress and workers, for applications that show progress in their own pages. "
                "Reading needs nothing; actions need the dashboard's token as a bearer token."
            ),
        },
        "servers": [{"url": server}] if server else [],
        "components": {
            "securitySchemes": {"token": {"type": "http", "scheme": "bearer", "description": "ETL_DASHBOARD_TOKEN"}},
            "schemas": {
                "Run": _RUN,
                "ChunkState": {
                    "type": "object",
                    "properties": {
                        "index": {"type": "integer"},
                        "state": {"enum": ["pending", "queued", "running", "retrying", "done", "failed"]},
                        "attempts": {"type": "integer"},
                        "rows_read": {"type": "integer"},
                        "rows_written": {"type": "integer"},
                        "label": {"type": "string"},
                    },
                },
                "Summary": {
                    "type": "object",
                    "properties": {
                        "counts": {"type": "object", "properties": {s: {"type": "integer"} for s in _STATES}},
                        "workers": {"type": "integer", "description": "live workers"},
                        "slots": {"type": "integer", "description": "chunks the live workers can run at once"},
                        "stalled": {"type": "boolean", "description": "runs wait and no worker is alive"},
                    },
                },
                "Error": {"type": "object", "properties": {"error": {"type": "string"}}},
            },
        },
        "paths": {
            "/api/summary": {
                "get": {"summary": "Runs per state and live workers", "responses": {"200": _json(_ref("Summary"), "")}}
            },
            "/api/runs": {
                "get": {
                    "summary": "Runs, newest first",
                    "parameters": [
                        {"name": "state", "in": "query", "schema": {"enum": _STATES}},
                        {"name": "job", "in": "query", "schema": {"type": "string"}},
                        {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000}},
                    ],
                    "responses": {"200": _json({"type": "array", "items": _ref("Run")}, "runs"), "400": _ERROR},
                }
            },
            "/api/runs/{run_id}": {
                "get": {
                    "summary": "One run's state and progress, with its chunks",
                    "parameters": [_RUN_ID],
                    "responses": {"200": _json(_ref("Run"), "the run"), "404": _ERROR},
                }
            },
            "/api/runs/{run_id}/chunks": {
                "get": {
                    "summary": "A run's chunk ledger: state, attempts, errors, lease",
                    "parameters": [_RUN_ID],
                    "responses": {"200": _json({"type": "array", "items": {"type": "object"}}, ""), "404": _ERROR},
                }
            },
            "/api/runs/{run_id}/log": {
                "get": {
                    "summary": "The last lines of the run's log (where the dashboard shares ETL_HOME with the workers)",
                    "parameters": [_RUN_ID],
                    "responses": {"200": _json({"type": "object"}, "{run, lines}"), "404": _ERROR},
                }
            },
            "/api/runs/{run_id}/events": {
                "get": {
                    "summary": "A stream of one run's progress",
                    "description": run_events,
                    "parameters": [_RUN_ID],
                    "responses": {
                        "200": {"description": run_events, "content": {"text/event-stream": {"schema": _ref("Run")}}},
                        "404": _ERROR,
                    },
                }
            },
            "/api/events": {
                "get": {
                    "summary": "A stream of every run's progress",
                    "description": (
                        "Server-sent events: `summary` (a Summary) when the counts change, `progress` (a Run, "
                        "without chunks) whenever a waiting, active or just-finished run changes."
                    ),
                    "responses": {"200": {"description": "", "content": {"text/event-stream": {"schema": {}}}}},
                }
            },
            "/api/workers": {"get": {"summary": "Live workers", "responses": {"200": _json({"type": "array"}, "")}}},
            "/api/throughput": {
                "get": {
                    "summary": "Rows written per minute over the last hour",
                    "responses": {"200": _json({"type": "array"}, "[{minute, rows}]")},
                }
            },
            "/api/schedule": {
                "get": {
                    "summary": "Scheduled jobs (of the dashboard's --configs) and their next fire times",
                    "responses": {"200": _json({"type": "array"}, "")},
                }
            },
            "/api/runs/{run_id}/retry": {
                "post": {
                    "summary": "Run a failed run's failed chunks again",
                    "security": _BEARER,
                    "parameters": [_RUN_ID],
                    "responses": {"200": _json({"type": "object"}, ""), "401": _ERROR, "403": _ERROR, "409": _ERROR},
                }
            },
            "/api/runs/{run_id}/cancel": {
                "post": {
                    "summary": "Cancel a run",
                    "security": _BEARER,
                    "parameters": [_RUN_ID],
                    "responses": {"200": _json({"type": "object"}, ""), "401": _ERROR, "403": _ERROR, "409": _ERROR},
                }
            },
            "/api/clean": {
                "post": {
                    "summary": "Delete finished runs of a state",
                    "security": _BEARER,
                    "parameters": [
                        {"name": "state", "in": "query", "required": True, "schema": {"enum": _STATES[2:]}},
                        {"name": "older_than", "in": "query", "schema": {"type": "string", "examples": ["7d"]}},
                    ],
                    "responses": {"200": _json({"type": "object"}, "{deleted, state}"), "400": _ERROR, "401": _ERROR},
                }
            },
        },
    }
