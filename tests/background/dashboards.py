"""Real `etl dashboard` processes for the tests, with their output in files."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import httpx

from tests.background.conftest import ETL, free_port, wait_for

TOKEN = "s3cret-token-for-tests"


class Dashboard:
    def __init__(self, url: str, proc: subprocess.Popen, log: Path) -> None:
        self.url = url
        self.proc = proc
        self.log = log

    def get(self, path: str, **kwargs) -> httpx.Response:
        return httpx.get(self.url + path, timeout=10, **kwargs)

    def post(self, path: str, **kwargs) -> httpx.Response:
        return httpx.post(self.url + path, timeout=10, **kwargs)


class Dashboards:
    """Starts dashboards on free ports in ``env``; :meth:`stop` stops them all."""

    def __init__(self, env: dict[str, str], directory: Path) -> None:
        self.env = env
        self.directory = directory
        self.procs: list[subprocess.Popen] = []
        self.files: list = []

    def start(self, *args: str, token: str | None = TOKEN, **env: str) -> Dashboard:
        port = free_port()
        full_env = {**os.environ, **self.env, **env}
        full_env.pop("ETL_DASHBOARD_TOKEN", None)
        if token:
            full_env["ETL_DASHBOARD_TOKEN"] = token
        log = self.directory / f"dashboard-{port}.log"
        out = log.open("w")
        self.files.append(out)
        proc = subprocess.Popen(
            [str(ETL), "dashboard", "--port", str(port), *args], env=full_env, stdout=out, stderr=subprocess.STDOUT
        )
        self.procs.append(proc)
        board = Dashboard(f"http://127.0.0.1:{port}", proc, log)

        def up() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"the dashboard exited: {log.read_text()}")
            try:
                return board.get("/healthz").status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(up, 20, "the dashboard to answer")
        return board

    def stop(self) -> None:
        for proc in self.procs:
            proc.terminate()
            proc.wait(10)
        for out in self.files:
            out.close()
