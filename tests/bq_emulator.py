"""Start ``bqemulator`` (a BigQuery emulator: REST and gRPC) for the tests and benchmarks.

The emulator runs DuckDB underneath, which wants its ``spatial`` extension at start-up and
would download it; the ``duckdb-extension-spatial`` package (a dev dependency) carries it, and
it is copied where DuckDB looks (``~/.duckdb/extensions/vX/linux_amd64``) so that no network is
needed.
"""

from __future__ import annotations

import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

PROJECT = "test-project"


@dataclass
class Emulator:
    process: subprocess.Popen[bytes]
    rest_port: int
    grpc_port: int
    log: Path

    @property
    def rest(self) -> str:
        return f"http://127.0.0.1:{self.rest_port}"

    @property
    def grpc(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def env(self) -> dict[str, str]:
        """What our stages read to reach the emulator instead of Google."""
        return {"BIGQUERY_EMULATOR_HOST": self.rest, "BIGQUERY_STORAGE_EMULATOR_HOST": self.grpc}

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def install_spatial_extension() -> None:
    """Put the packaged ``spatial`` extension where DuckDB loads it from, if it isn't there."""
    import duckdb
    import duckdb_extension_spatial

    version = duckdb.__version__
    source = Path(duckdb_extension_spatial.__file__).parent / "extensions" / f"v{version}" / "spatial.duckdb_extension"
    if not source.exists():
        raise RuntimeError(f"duckdb-extension-spatial has no extension for duckdb {version}; pin the same version")
    machine = {"x86_64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(platform.machine(), platform.machine())
    target = Path.home() / ".duckdb" / "extensions" / f"v{version}" / f"linux_{machine}" / "spatial.duckdb_extension"
    if not target.exists() or target.stat().st_size != source.stat().st_size:
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(timeout: float = 60.0) -> Emulator:
    """Start an emulator on free ports and wait until both APIs answer."""
    install_spatial_extension()
    rest, grpc = free_port(), free_port()
    log = Path(tempfile.mkstemp(prefix="bqemulator-", suffix=".log")[1])
    command = [
        str(Path(sys.executable).with_name("bqemulator")),
        "start",
        "--rest-port",
        str(rest),
        "--grpc-port",
        str(grpc),
        "--project",
        PROJECT,
        "--log-level",
        "warning",
    ]
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=_die_with_parent
        )
    emulator = Emulator(process, rest, grpc, log)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"bqemulator exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        if _answers(rest) and _answers(grpc):
            return emulator
        time.sleep(0.2)
    emulator.stop()
    raise RuntimeError(f"bqemulator did not answer within {timeout:.0f}s:\n{log.read_text()[-3000:]}")


_shared: list[Emulator] = []


def shared() -> Emulator:
    """This process's emulator, started at the first call and stopped when the process exits:
    the tests' fixtures and the contract cases share one."""
    if not _shared:
        import atexit

        emulator = start()
        atexit.register(emulator.stop)
        _shared.append(emulator)
    return _shared[0]


def _die_with_parent() -> None:
    """In the emulator's process: be sent SIGTERM when the process that started it dies (Linux),
    so that a killed test run leaves no emulator behind."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def client(emulator: Emulator):
    """A BigQuery REST client of the emulator's project (anonymous)."""
    from google.api_core.client_options import ClientOptions
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import bigquery

    return bigquery.Client(
        project=PROJECT, credentials=AnonymousCredentials(), client_options=ClientOptions(api_endpoint=emulator.rest)
    )


if __name__ == "__main__":  # run one by hand: python tests/bq_emulator.py
    emulator = start()
    print(" ".join(f"{k}={v}" for k, v in emulator.env.items()), flush=True)
    try:
        emulator.process.wait()
    except KeyboardInterrupt:
        emulator.stop()
    os._exit(0)
