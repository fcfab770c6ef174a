"""The queue's Huey: what it carries, and what it does not look up."""

from __future__ import annotations

import uuid

import pytest

from etl import api
from tests.test_store import REDIS_URL


@pytest.mark.parametrize("kind", ["embedded", "redis"])
def test_a_message_runs_without_huey_looking_up_revocations(kind, monkeypatch):
    """etl revokes no Huey task (a run is stopped in the run store, which every message reads
    first), so Huey's two look-ups per message are dropped: a flag set through Huey changes nothing."""
    if kind == "redis":
        monkeypatch.setenv("ETL_QUEUE_URL", REDIS_URL)
        monkeypatch.setenv("ETL_QUEUE_NAME", f"test{uuid.uuid4().hex[:8]}")
    queue = api.open_queue()
    ran: list[str] = []
    queue.bind({"etl.abort": ran.append})
    try:
        queue.send("etl.abort", "r1")
        message = queue.huey.dequeue()
        queue.huey.revoke(message)
        assert not queue.huey.is_revoked(message)
        queue.huey.execute(message)
        assert ran == ["r1"]
        assert queue.huey.pending_count() == 0
    finally:
        queue.huey.flush()
        queue.close()
