"""Loopback servers that misbehave, for the tests that prove every network wait is bounded.

Three shapes, whatever the protocol:

* :func:`silent`: accepts connections and never sends a byte (a server that hangs, a proxy
  that holds the connection, a half-open firewall);
* :func:`refusing`: a port where nothing listens, so that a connection is refused at once;
* :func:`dropping`: accepts, reads the client's first message, answers part of a response
  (``answer``, or what ``answer(connection)`` returns) and closes the connection mid-stream;
  :func:`cutting`, a proxy to a real server that cuts a connection after so many bytes.

Each is a context manager yielding ``(host, port)`` (a :class:`Listening`, which also counts
the connections accepted, so that a test can tell a client tried again); the server stops when
the block ends.
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


class Listening(tuple):
    """Where a hostile server listens, ``(host, port)``, and how many connections it accepted."""

    counted: list[socket.socket]

    def __new__(cls, address: Address, counted: list[socket.socket]) -> Listening:
        listening = super().__new__(cls, address)
        listening.counted = counted
        return listening

    @property
    def port(self) -> int:
        return self[1]

    @property
    def accepted(self) -> int:
        return len(self.counted)


class _Server:
    """Accepts on a loopback port in a thread, handing each connection to ``handle``."""

    def __init__(self, handle: Callable[[socket.socket], None]) -> None:
        self.listener = socket.create_server((HOST, 0))
        self.listener.settimeout(0.1)
        self.connections: list[socket.socket] = []
        self.address = Listening((HOST, self.listener.getsockname()[1]), self.connections)
        self.handle = handle
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

    def __enter__(self) -> Listening:
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
def silent() -> Iterator[Listening]:
    """A server that accepts every connection and never answers."""
    server = _Server(lambda connection: _hold(connection, server.stopping))
    with server as address:
        yield address


@contextlib.contextmanager
def refusing() -> Iterator[Listening]:
    """A port that refuses connections: bound (so that no one else takes it) but not listening."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        yield Listening((HOST, sock.getsockname()[1]), [])


@contextlib.contextmanager
def dropping(answer: Answer) -> Iterator[Listening]:
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


#: The commands redis-py sends as it connects, answered "+OK" by :func:`redis_partial`.
_REDIS_HANDSHAKE = {b"CLIENT", b"SELECT", b"AUTH", b"HELLO", b"READONLY"}


def redis_partial(connection: socket.socket) -> bytes:
    """Let a client connect (``+OK`` to the handshake's ``CLIENT``, ``SELECT``, ``AUTH``), then
    answer its first other command with the first bytes of a reply."""
    buffer = b""
    while True:
        data = connection.recv(65536)
        if not data:
            raise ConnectionError("the client hung up")
        buffer += data
        while (parsed := _resp_command(buffer)) is not None:
            args, buffer = parsed
            if not args or args[0].upper() not in _REDIS_HANDSHAKE:
                return b"$100\r\nthe first bytes of a reply"
            connection.sendall(b"+OK\r\n")


def _resp_command(buffer: bytes) -> tuple[list[bytes], bytes] | None:
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


def _recv_exactly(connection: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        more = connection.recv(size - len(data))
        if not more:
            raise ConnectionError("the client hung up")
        data += more
    return data
