"""Loopback servers that misbehave, for the tests that prove every network wait is bounded.

Three shapes, whatever the protocol:

* :func:`silent`: accepts connections and never sends a byte (a server that hangs, a proxy
  that holds the connection, a half-open firewall);
* :func:`refusing`: a port where nothing listens, so that a connection is refused at once;
* :func:`dropping`: accepts, reads the client's first message, answers part of a response
  (``answer``, or what ``answer(connection)`` returns) and closes the connection mid-stream;
  :func:`cutting`, a proxy to a real server that cuts a connection after so many bytes.

Each is a context manager yielding ``(host, port)``; the server stops when the block ends.
``PARTIAL`` holds a half-answer for each protocol the toolkit speaks.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from collections.abc import Callable, Iterator

HOST = "127.0.0.1"

Address = tuple[str, int]
Answer = bytes | Callable[[socket.socket], bytes]


class _Server:
    """Accepts on a loopback port in a thread, handing each connection to ``handle``."""

    def __init__(self, handle: Callable[[socket.socket], None]) -> None:
        self.listener = socket.create_server((HOST, 0))
        self.listener.settimeout(0.1)
        self.address: Address = (HOST, self.listener.getsockname()[1])
        self.handle = handle
        self.connections: list[socket.socket] = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._serve, name="hostile-server", daemon=True)

    def _serve(self) -> None:
        while not self.stopping.is_set():
            try:
                connection, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections.append(connection)
            threading.Thread(target=self._guarded, args=(connection,), daemon=True).start()

    def _guarded(self, connection: socket.socket) -> None:
        with contextlib.suppress(OSError):
            self.handle(connection)

    def __enter__(self) -> Address:
        self.thread.start()
        return self.address

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.thread.join(5)
        self.listener.close()
        for connection in self.connections:
            with contextlib.suppress(OSError):
                connection.close()


def _hold(connection: socket.socket, stopping: threading.Event) -> None:
    """Read and discard what the client sends, answer nothing, until the server stops."""
    connection.settimeout(0.1)
    while not stopping.is_set():
        try:
            if not connection.recv(65536):
                return
        except TimeoutError:
            continue


@contextlib.contextmanager
def silent() -> Iterator[Address]:
    """A server that accepts every connection and never answers."""
    server = _Server(lambda connection: _hold(connection, server.stopping))
    with server as address:
        yield address


@contextlib.contextmanager
def refusing() -> Iterator[Address]:
    """A port that refuses connections: bound (so that no one else takes it) but not listening."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        yield (HOST, sock.getsockname()[1])


@contextlib.contextmanager
def dropping(answer: Answer) -> Iterator[Address]:
    """A server that reads the client's first message, sends ``answer`` (bytes, or a function
    of the connection that reads what it needs and returns them) and hangs up."""

    def handle(connection: socket.socket) -> None:
        connection.settimeout(5)
        data = answer(connection) if callable(answer) else _first(connection, answer)
        connection.sendall(data)
        connection.shutdown(socket.SHUT_RDWR)
        connection.close()

    with _Server(handle) as address:
        yield address


@contextlib.contextmanager
def cutting(target: Address, after: int, times: int = 1_000_000, moved: list[int] | None = None) -> Iterator[Address]:
    """A proxy to ``target`` that cuts each of its first ``times`` connections once ``after``
    bytes have gone through it (both ways counted): a server dropping a stream mid-way. Each
    connection's bytes are added to ``moved`` when it ends."""
    cuts = [0]

    def handle(client: socket.socket) -> None:
        upstream = socket.create_connection(target, timeout=5)
        cut = cuts[0] < times
        cuts[0] += 1
        sent = [0]
        done = threading.Event()

        def pump(source: socket.socket, sink: socket.socket) -> None:
            with contextlib.suppress(OSError):
                while not done.is_set():
                    data = source.recv(16384)
                    if not data:
                        break
                    if cut and sent[0] + len(data) >= after:
                        sink.sendall(data[: max(0, after - sent[0])])
                        break
                    sent[0] += len(data)
                    sink.sendall(data)
            done.set()
            for sock in (client, upstream):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

        other = threading.Thread(target=pump, args=(upstream, client), daemon=True)
        other.start()
        pump(client, upstream)
        other.join()
        client.close()
        upstream.close()
        if moved is not None:
            moved.append(sent[0])

    with _Server(handle) as address:
        yield address


def _first(connection: socket.socket, answer: bytes) -> bytes:
    connection.recv(65536)
    return answer


# -- half-answers, by protocol ---------------------------------------------------------------------


def http_partial(connection: socket.socket) -> bytes:
    """A response whose headers promise a body longer than what is sent."""
    connection.recv(65536)
    return b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 4096\r\n\r\n{"kind": "bigq'


def postgres_partial(connection: socket.socket) -> bytes:
    """Refuse SSL and GSS encryption as a server without them does, read the startup message,
    then send half of ``AuthenticationOk``."""
    while True:
        head = _recv_exactly(connection, 8)
        length, code = struct.unpack("!II", head)
        if code in (80877103, 80877104) and length == 8:  # SSLRequest, GSSENCRequest
            connection.sendall(b"N")
            continue
        _recv_exactly(connection, length - 8)  # the rest of the startup message
        return b"R\x00\x00"


def smtp_partial(connection: socket.socket) -> bytes:
    """Greet, read EHLO, and send the first line of a multi-line answer only."""
    connection.sendall(b"220 hostile.test ESMTP\r\n")
    connection.recv(65536)
    return b"250-hostile.test greets you\r\n"


def _recv_exactly(connection: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        more = connection.recv(size - len(data))
        if not more:
            raise ConnectionError("the client hung up")
        data += more
    return data
