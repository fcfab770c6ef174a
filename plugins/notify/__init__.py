"""Notifications when a run completes, fails or is cancelled: signed webhooks, Slack, email.

A job lists its targets under the top-level ``notify:`` key (registered through
``etl_register_job_keys``); the lifecycle hooks ``etl_after_job_run`` and ``etl_on_job_error``
send each target a summary of the run. See ``docs/notifications.md``.

Sending never fails the run. Each target is sent from a short-lived daemon thread, so a slow
endpoint holds up neither the run nor a worker's slot; each delivery has a time budget that
bounds its attempts and the waits between them. Before the process exits, an ``atexit`` hook
waits for the deliveries still in flight, each up to the end of its budget, so that an
``etl run`` in process delivers before it returns to the shell. Embedding programs that end
with ``os._exit`` call :func:`flush` first.

One concern a module: the targets a job lists, their validation and how each sends
(``_targets``); one attempt over HTTP or SMTP and its failure told transient or permanent
(``_transport``); the message in each form (``_message``); delivery in threads with retries
within a budget, and :func:`flush` (``_delivery``); here, the hooks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from loguru import logger

from etl import hookimpl

from ._delivery import _start, flush
from ._message import _event, signature, summarize
from ._targets import EmailTarget, SlackTarget, Target, WebhookTarget
from ._transport import _one_line

if TYPE_CHECKING:
    from etl import Job, RunInfo, RunResult

__all__ = ["EmailTarget", "SlackTarget", "Target", "WebhookTarget", "flush", "signature"]

# -- Hooks ----------------------------------------------------------------------------------


@hookimpl
def etl_register_job_keys() -> dict[str, Any]:
    return {"notify": list[Target]}


@hookimpl
def etl_after_job_run(job: Job, run: RunInfo, result: RunResult) -> None:
    _notify(job, run, result, None)


@hookimpl
def etl_on_job_error(job: Job, run: RunInfo, error: BaseException, result: RunResult) -> None:
    _notify(job, run, result, error)


@hookimpl
def etl_on_job_cancel(job: Job, run: RunInfo, result: RunResult) -> None:
    _notify(job, run, result, None)


def _notify(job: Job, run: RunInfo, result: RunResult, error: BaseException | None) -> None:
    log = logger.bind(job=job.name, run=run.id)
    try:
        state = _event(result, error)
        targets = [t for t in job.extras.get("notify") or () if state in t.when]
        if not targets:
            return
        summary = summarize(job, run, result, error)
        for target in targets:
            _start(target, summary, log)
    except Exception as exc:  # a notification never fails a run
        log.opt(exception=exc).error("notifications not sent: {}", _one_line(exc))
