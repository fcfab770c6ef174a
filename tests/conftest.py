"""Fixtures shared by the whole suite."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ETL = Path(sys.executable).with_name("etl")


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """Every test runs in its own working directory with its own ETL_HOME and no ETL_PLUGINS."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ETL_HOME", str(tmp_path / ".etl"))
    monkeypatch.delenv("ETL_PLUGINS", raising=False)
    yield
    from loguru import logger

    logger.remove()  # a test that configured logging leaves none behind
    logger.disable("etl")
    logger.disable("etl_plugins")


@pytest.fixture
def write(tmp_path):
    """Write a file (dedented) under the test's directory; returns its path."""

    def write(name: str, text: str) -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip(), encoding="utf-8")
        return path

    return write


class FakeClock:
    """A clock that records sleeps instead of sleeping; time moves only when told to."""

    def __init__(self) -> None:
        self.now = 1_000.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def run_cli(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None, input: str = ""
) -> subprocess.CompletedProcess[str]:
    """Run the installed ``etl`` command as a user would (its stdin a pipe holding ``input``)."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [str(ETL), *args],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=cwd or Path.cwd(),
        timeout=300,
        input=input,
    )


@pytest.fixture
def cli():
    return run_cli


@pytest.fixture(scope="session")
def bq_emulator():
    """A BigQuery emulator (``bqemulator``) for the session, on free ports (shared with the
    contract cases; stopped when the session's process exits)."""
    from tests import bq_emulator

    return bq_emulator.shared()


@pytest.fixture
def bigquery(bq_emulator, monkeypatch):
    """The emulator, with the environment pointing our stages (and ``etl`` processes) at it;
    returns a REST client of its project."""
    from tests import bq_emulator as emulators

    for name, value in bq_emulator.env.items():
        monkeypatch.setenv(name, value)
    client = emulators.client(bq_emulator)
    yield client
    client.close()
