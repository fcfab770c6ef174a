"""Loopback servers that fail the way a Redis can fail, for tests of bounded waits.

* :class:`Silent`: accepts connections and reads everything, and never answers (a frozen
  server, a black-holing firewall after the handshake).
* :class:`Dropping`: speaks just enough RESP to let a client connect (``+OK`` to the
  handshake's ``CLIENT``, ``SELECT``, ``AUTH``), then answers any other command with the
  first bytes of a reply and closes the connection (a server or a proxy dying mid-reply).
* :func:`refused_port`: a loopback port where nothing listens.

Each counts the connections it accepted, so that a test can tell a client tried again.
"""

from __future__ import annotations

import contextlib
import socket
import threading

from tests.sentinel import free_port

__all__ = ["Dropping", "Silent", "refused_port"]

_HANDSHAKE = {b"CLIENT", b"SELECT", b"AUTH", b"HELLO", b"READONLY"}


def refused_port() -> int:
    """A port on 127.0.0.1 where nothing listens: connecting is refused at once."""
    return free_port()


class _Server:
    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.accepted = 0
        self._conns: list[socket.socket] = []
        self._closed = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def __enter__(self) -> _Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.accepted += 1
            self._conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self._closed.set()
        self.listener.close()
        for conn in self._conns:
            with contextlib.suppress(OSError):
                conn.close()


class Silent(_Server):
    """Accepts, reads, never answers."""

    def _serve(self, conn: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while conn.recv(65536):
                pass


class Dropping(_Server):
    """Lets a client connect, then cuts every other command's reply short and hangs up."""

    def _serve(self, conn: socket.socket) -> None:
        buffer = b""
        with contextlib.suppress(OSError), conn:
            while True:
                data = conn.recv(65536)
                if not data:
                    return
                buffer += data
                while (parsed := _command(buffer)) is not None:
                    args, buffer = parsed
                    if args and args[0].upper() in _HANDSHAKE:
                        conn.sendall(b"+OK\r\n")
                        continue
                    conn.sendall(b"$100\r\nthe first bytes of a reply")
                    conn.shutdown(socket.SHUT_RDWR)
                    return


def _command(buffer: bytes) -> tuple[list[bytes], bytes] | None:
    """One RESP command (an array of bulk strings) from the front of ``buffer`` and the rest;
    ``None`` until it is all there."""
    if not buffer.startswith(b"*") or b"\r\n" not in buffer:
        return None
    head, rest = buffer.split(b"\r\n", 1)
    args = []
    for _ in range(int(head[1:])):
        if b"\r\n" not in rest:
            return None
        size, rest = rest.split(b"\r\n", 1)
        length = int(size[1:])
        if len(rest) < length + 2:
            return None
        args.append(rest[:length])
        rest = rest[length + 2 :]
    return args, rest
