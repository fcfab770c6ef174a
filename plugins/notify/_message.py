"""The notification of a finished run, in every form the targets send: the JSON payload and
body of a webhook (and its HMAC-SHA256 signature), one line of chat text (and Slack's Block Kit
blocks), an email's subject and plain body.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from etl import __version__

if TYPE_CHECKING:
    from etl import Job, RunInfo, RunResult


Event = Literal["completed", "failed", "cancelled"]


@dataclass(frozen=True)
class Message:
    """One run's summary, in the forms the targets send."""

    event: str  # run.completed or run.failed
    delivery: str  # one id per notification, the same across its retries
    payload: dict[str, Any]
    body: bytes  # the JSON body of a webhook
    text: str  # one line for chat
    subject: str
    plain: str  # an email's body


def _event(result: RunResult, error: BaseException | None) -> Event:
    if error is not None or result.state == "failed":
        return "failed"
    return "cancelled" if result.state == "cancelled" else "completed"


def summarize(job: Job, run: RunInfo, result: RunResult, error: BaseException | None) -> Message:
    """The summary of a finished run (``error`` set when it failed)."""
    figures = result.to_json()
    state: Event = _event(result, error)
    payload: dict[str, Any] = {
        "event": f"run.{state}",
        "job": job.name,
        "run_id": run.id,
        "state": state,
        "host": _hostname(),
        "started_at": figures["started_at"],
        "finished_at": figures["finished_at"],
        "seconds": figures["seconds"],
        "rows_total": result.rows_total,
        "rows_read": result.rows_read,
        "rows_written": result.rows_written,
        "rows_rejected": result.rows_rejected,
        "rows_per_second": figures["rows_per_second"],
        "chunks_total": result.chunks_total,
        "chunks_done": result.chunks_done,
        "retries": result.retries,
        "error": result.error if state == "failed" else None,
        "error_type": type(error).__name__ if error is not None else None,
        "error_chunk": result.error_chunk,
        "etl_version": __version__,
    }
    if state == "failed" and payload["error"] is None and error is not None:
        payload["error"] = str(error) or type(error).__name__
    took = _duration(result.seconds)
    where = f" on {payload['host']}" if payload["host"] else ""
    if state == "completed":
        rejected = f", {result.rows_rejected:,} rejected" if result.rows_rejected else ""
        text = (
            f"✅ {job.name} completed: {result.rows_written:,} rows written{rejected} in {took} "
            f"({result.rows_per_second:,.0f} rows/s) · run {run.id}{where}"
        )
        subject = f"etl: {job.name} completed ({result.rows_written:,} rows)"
    elif state == "cancelled":
        text = (
            f"⏹ {job.name} cancelled after {took}: {result.rows_written:,} rows written, what it staged dropped · "
            f"run {run.id}{where}"
        )
        subject = f"etl: {job.name} cancelled"
    else:
        at = f" at chunk {result.error_chunk}" if result.error_chunk is not None else ""
        text = (
            f"❌ {job.name} failed{at} after {took}: {payload['error']} · "
            f"{result.rows_written:,} rows written · run {run.id}{where}"
        )
        subject = f"etl: {job.name} FAILED{at}"
    lines = [f"{key}: {'' if value is None else value}" for key, value in payload.items() if key != "event"]
    plain = f"{text}\n\n" + "\n".join(lines) + "\n"
    body = json.dumps(payload, ensure_ascii=False).encode()
    return Message(f"run.{state}", str(uuid.uuid4()), payload, body, text, subject, plain)


def signature(secret: str, timestamp: str, body: bytes) -> str:
    """``sha256=<hex>``: HMAC-SHA256, keyed with ``secret``, of ``<timestamp>.<body>``."""
    signed = timestamp.encode() + b"." + body
    return "sha256=" + hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()


def _slack_escape(text: str) -> str:
    """Text as Slack reads it: ``&``, ``<`` and ``>`` are its markup."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _slack_blocks(message: Message) -> list[dict[str, Any]]:
    p = message.payload
    fields = [
        ("Job", p["job"]),
        ("State", p["state"]),
        ("Rows written", f"{p['rows_written']:,}"),
        ("Rows rejected", f"{p['rows_rejected']:,}"),
        ("Duration", _duration(p["seconds"])),
        ("Host", p["host"] or "?"),
    ]
    blocks: list[dict[str, Any]] = [
        {"type": "section", "text": {"type": "mrkdwn", "text": _slack_escape(message.text)}},
        {"type": "section", "fields": [{"type": "mrkdwn", "text": f"*{k}*\n{_slack_escape(v)}"} for k, v in fields]},
    ]
    if p["error"]:
        error = _slack_escape(p["error"][:2900])
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": f"```{error}```"}})
    blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": f"run {p['run_id']}"}]})
    return blocks


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def _hostname() -> str:
    try:
        return socket.gethostname()
    except OSError:
        return ""
