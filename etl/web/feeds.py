"""Server-sent event streams: one poll of the run store per stream, shared by its subscribers."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

from anyio import to_thread
from starlette.responses import StreamingResponse

__all__ = ["HEARTBEAT_SECONDS", "KEEP_ALIVE", "Feed", "all_events", "event", "run_events", "sse"]

#: A quiet stream sends a comment this often, so that proxies keep it open.
HEARTBEAT_SECONDS = 15.0
#: What a feed yields after a quiet spell (the stream sends a keep-alive).
KEEP_ALIVE = object()


class Feed:
    """One poll of the store every ``interval`` seconds for every subscriber of one stream (a
    run's progress, or all runs'), however many browsers and applications watch it: the store
    sees the same reads for one watcher or a thousand. It stops polling when the last one goes."""

    def __init__(self, poll: Callable[[], Any], interval: float, gone: Callable[[], Any]) -> None:
        self.poll = poll
        self.interval = interval
        self.gone = gone
        self.value: Any = None
        self.version = 0
        self.subscribers = 0
        self.changed = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        last = None
        try:
            while self.subscribers:
                try:
                    value = await to_thread.run_sync(self.poll)
                except Exception as exc:  # Redis away: keep the streams open, try again
                    from loguru import logger

                    logger.warning("dashboard: reading the run store failed: {}", exc)
                    await asyncio.sleep(self.interval)
                    continue
                text = json.dumps(value, sort_keys=True, default=str)
                if text != last:
                    last, self.value, self.version = text, value, self.version + 1
                    changed, self.changed = self.changed, asyncio.Event()
                    changed.set()
                await asyncio.sleep(self.interval)
        finally:
            self.task = None

    async def subscribe(self) -> AsyncIterator[Any]:
        """The stream's values as they change, its current one first; ``KEEP_ALIVE`` after a
        quiet spell."""
        self.subscribers += 1
        if self.task is None:
            self.task = asyncio.create_task(self._run())
        seen = 0
        try:
            while True:
                if self.version != seen:
                    seen = self.version
                    yield self.value
                    continue
                try:
                    await asyncio.wait_for(self.changed.wait(), HEARTBEAT_SECONDS)
                except TimeoutError:
                    yield KEEP_ALIVE
        finally:
            self.subscribers -= 1
            if not self.subscribers:
                self.gone()


def sse(events: AsyncIterator[str]) -> StreamingResponse:
    return StreamingResponse(
        events,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def event(name: str, data: Any) -> str:
    return f"event: {name}\ndata: {json.dumps(data, default=str)}\n\n"


async def run_events(run_id: str, feed: Feed) -> AsyncIterator[str]:
    """One run's stream: ``progress`` (the run) whenever it changes, then ``end`` when it has
    finished, or ``gone`` when it was deleted."""
    async for data in feed.subscribe():
        if data is KEEP_ALIVE:
            yield ": keep-alive\n\n"
        elif data is None:
            yield event("gone", {"run": run_id})
            return
        else:
            yield event("progress", data)
            if data["state"] in ("completed", "failed", "cancelled"):
                yield event("end", {"run": run_id, "state": data["state"]})
                return


async def all_events(feed: Feed) -> AsyncIterator[str]:
    """The stream of all runs: ``summary`` when the counts change, ``progress`` for each run of
    the feed's snapshot that changed."""
    summary_last: Any = None
    seen: dict[str, Any] = {}
    async for data in feed.subscribe():
        if data is KEEP_ALIVE:
            yield ": keep-alive\n\n"
            continue
        if data["summary"] != summary_last:
            summary_last = data["summary"]
            yield event("summary", summary_last)
        for run_id, progress in data["runs"].items():
            if seen.get(run_id) != progress:
                seen[run_id] = progress
                yield event("progress", progress)
        seen = {k: v for k, v in seen.items() if k in data["runs"]}
