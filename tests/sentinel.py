"""A Redis watched by Sentinel, on loopback ports, for tests and the soak: a primary, replicas
and sentinels, each a real ``redis-server`` (``--sentinel`` for the sentinels) started from
config files in a directory of its own.

    with RedisHA(tmp_path / "ha") as ha:
        env = {"ETL_QUEUE_URL": ha.url(db=0)}
        ...
        old = ha.kill_primary()          # SIGKILL
        new = ha.wait_failover(old)      # the sentinels promoted a replica
        ha.restart(old)                  # back, and made a replica of the new primary

Failover is made quick (``down-after-milliseconds`` 600 by default): a few seconds from the
kill to a new primary.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
REPLICATION_PASSWORD = "replication-only"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except redis.RedisError:
            value = None
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class RedisHA:
    """A primary, ``replicas`` replicas and ``sentinels`` sentinels (quorum: a majority) on
    free loopback ports, under ``directory``; ``stop()`` (or leaving the ``with``) ends them."""

    def __init__(
        self,
        directory: Path,
        *,
        replicas: int = 1,
        sentinels: int = 3,
        service: str = "etlha",
        down_after_ms: int = 600,
        failover_timeout_ms: int = 4000,
        appendonly: bool = False,
        tls: bool = False,
    ) -> None:
        self.directory = directory
        self.tls = tls
        self.service = service
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self.appendonly = appendonly
        self.node_ports = [free_port() for _ in range(1 + replicas)]
        self.sentinel_ports = [free_port() for _ in range(sentinels)]
        self.procs: dict[int, subprocess.Popen] = {}

    # -- starting and stopping ----------------------------------------------------------------

    def __enter__(self) -> RedisHA:
        try:
            self.start()
        except BaseException:
            self.stop()  # what did start: no server left behind
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, timeout: float = 30) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        if self.tls:
            self._certificates()
        primary = self.node_ports[0]
        for port in self.node_ports:
            self._start_node(port, replica_of=None if port == primary else primary)
        for port in self.sentinel_ports:
            self._write_sentinel_config(port, primary)
            self._spawn(port, [SERVER, str(self._config(port)), "--sentinel"])
        replicas = len(self.node_ports) - 1
        _wait(
            lambda: all(self._sentinel_ready(p, replicas) for p in self.sentinel_ports),
            timeout,
            "the sentinels to see the primary, its replicas and each other",
        )
        if replicas:
            _wait(lambda: self.client(primary).info("replication")["connected_slaves"] >= replicas, timeout, "replicas")

    def _config(self, port: int) -> Path:
        return self.directory / f"{port}.conf"

    @property
    def ca(self) -> Path:
        """The certificate authority that signed the servers' certificate (``tls=True``)."""
        return self.directory / "ca.crt"

    def _certificates(self) -> None:
        """A CA and a certificate for 127.0.0.1 signed by it."""
        d = self.directory
        key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
        for argv in (
            ["req", "-x509", *key, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", "/CN=etl-test-ca"],
            ["req", *key, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1"],
            ["x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial"]
            + ["-out", "server.crt", "-days", "2", "-extfile", "san.ext"],
        ):
            subprocess.run(["openssl", *argv], cwd=d, check=True, capture_output=True)

    def _listen(self, port: int) -> list[str]:
        """How a server listens on ``port``: plainly, or only with TLS (replication too)."""
        if not self.tls:
            return [f"port {port}"]
        d = self.directory
        return [
            "port 0",
            f"tls-port {port}",
            f"tls-cert-file {d / 'server.crt'}",
            f"tls-key-file {d / 'server.key'}",
            f"tls-ca-cert-file {self.ca}",
            "tls-auth-clients no",
            "tls-replication yes",
        ]

    def _start_node(self, port: int, replica_of: int | None) -> None:
        config = self._config(port)
        if not config.exists():  # a restart keeps what Sentinel wrote into it
            data = self.directory / f"node-{port}"
            data.mkdir(exist_ok=True)
            lines = [
                *self._listen(port),
                "bind 127.0.0.1",
                f"dir {data}",
                'save ""',
                f"appendonly {'yes' if self.appendonly else 'no'}",
                "appendfsync everysec",
                "repl-diskless-sync yes",
                "repl-diskless-sync-delay 0",
                "maxmemory-policy noeviction",
                # Replicas log in as their own user, so that cut_replication() can shut them out.
                "user default on nopass ~* &* +@all",
                f"user replicator on >{REPLICATION_PASSWORD} ~* &* +@all",
                "masteruser replicator",
                f"masterauth {REPLICATION_PASSWORD}",
                f"logfile {self.directory / f'{port}.log'}",
            ]
            if replica_of is not None:
                lines.append(f"replicaof 127.0.0.1 {replica_of}")
            config.write_text("\n".join(lines) + "\n")
        self._spawn(port, [SERVER, str(config)])
        _wait(lambda: self.client(port).ping(), 15, f"redis-server on port {port}")

    def _write_sentinel_config(self, port: int, primary: int) -> None:
        lines = [
            *self._listen(port),
            "bind 127.0.0.1",
            f"dir {self.directory}",
            f"logfile {self.directory / f'{port}.log'}",
            f"sentinel monitor {self.service} 127.0.0.1 {primary} {len(self.sentinel_ports) // 2 + 1}",
            f"sentinel down-after-milliseconds {self.service} {self.down_after_ms}",
            f"sentinel failover-timeout {self.service} {self.failover_timeout_ms}",
            f"sentinel parallel-syncs {self.service} 1",
        ]
        self._config(port).write_text("\n".join(lines) + "\n")

    def _spawn(self, port: int, argv: list[str]) -> None:
        self.procs[port] = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def _sentinel_ready(self, port: int, replicas: int) -> bool:
        state = self.sentinel(port).sentinel_master(self.service)
        return (
            int(state["num-slaves"]) >= replicas
            and int(state["num-other-sentinels"]) >= len(self.sentinel_ports) - 1
            and not state["is_sdown"]
        )

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)

    # -- looking ------------------------------------------------------------------------------

    def url(self, db: int = 0) -> str:
        """``ETL_QUEUE_URL`` for this set (``rediss+sentinel://…?ssl_ca_certs=…`` with TLS)."""
        hosts = ",".join(f"127.0.0.1:{p}" for p in self.sentinel_ports)
        if self.tls:
            return f"rediss+sentinel://{hosts}/{self.service}/{db}?ssl_ca_certs={self.ca}"
        return f"redis+sentinel://{hosts}/{self.service}/{db}"

    def client(self, port: int, **kwargs: Any) -> redis.Redis:
        tls = {"ssl": True, "ssl_ca_certs": str(self.ca)} if self.tls else {}
        return redis.Redis("127.0.0.1", port, socket_connect_timeout=2, socket_timeout=5, **tls, **kwargs)

    def sentinel(self, port: int) -> redis.Redis:
        return self.client(port, decode_responses=True)

    def primary(self) -> int:
        """The port of the primary, as a majority of the sentinels name it."""
        named = [self._named(p) for p in self.sentinel_ports]
        votes = {port: named.count(port) for port in named if port}
        best = max(votes, key=lambda p: votes[p], default=None)
        if best is None or votes[best] <= len(self.sentinel_ports) // 2:
            raise AssertionError(f"the sentinels don't agree on a primary: {named}")
        return best

    def _named(self, port: int) -> int | None:
        try:
            address = self.sentinel(port).sentinel_get_master_addr_by_name(self.service)
        except redis.RedisError:
            return None
        return int(address[1]) if address else None

    def role(self, port: int) -> str | None:
        try:
            return self.client(port).info("replication")["role"]
        except redis.RedisError:
            return None

    def replicas(self) -> list[int]:
        primary = self.primary()
        return [p for p in self.node_ports if p != primary and self.role(p) == "slave"]

    # -- faults -------------------------------------------------------------------------------

    def kill_primary(self, sig: int = signal.SIGKILL) -> int:
        """Send ``sig`` to the primary's process; its port."""
        port = self.primary()
        proc = self.procs[port]
        proc.send_signal(sig)
        if sig == signal.SIGKILL:
            proc.wait(10)
        return port

    def cut_replication(self) -> int:
        """Stop the primary's replicas from receiving its writes, while they stay up and answer
        the sentinels (so that one can still be promoted): their replication user is turned off
        and their connections closed. What the primary acknowledges from now on is on it alone.
        Returns the primary's port."""
        port = self.primary()
        client = self.client(port)
        client.execute_command("ACL", "SETUSER", "replicator", "off")
        client.execute_command("CLIENT", "KILL", "TYPE", "replica")
        _wait(lambda: client.info("replication")["connected_slaves"] == 0, 10, "the replicas to be cut off")
        return port

    def restore_replication(self) -> None:
        """Let replicas of the current primary log in again."""
        self.client(self.primary()).execute_command("ACL", "SETUSER", "replicator", "on")

    def wait_failover(self, old: int, timeout: float = 30) -> int:
        """Wait until every sentinel names a primary other than ``old`` and it answers as one."""

        def promoted() -> int | None:
            named = {self._named(p) for p in self.sentinel_ports}
            if len(named) != 1 or None in named or old in named:
                return None
            [port] = named
            return port if self.role(port) == "master" else None

        return _wait(promoted, timeout, f"a failover from the primary on port {old}")

    def restart(self, port: int) -> None:
        """Start a stopped node again on its port, with its data and its config as Sentinel
        last rewrote it; the sentinels make it a replica of the current primary."""
        proc = self.procs[port]
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        self._start_node(port, replica_of=None)

    def wait_replica(self, port: int, timeout: float = 30) -> None:
        """Wait until the node on ``port`` replicates the current primary, in sync."""

        def synced() -> bool:
            info = self.client(port).info("replication")
            return (
                info["role"] == "slave"
                and info["master_port"] == self.primary()
                and info["master_link_status"] == "up"
                and not info.get("master_sync_in_progress")
            )

        _wait(synced, timeout, f"the node on port {port} to replicate the primary")
