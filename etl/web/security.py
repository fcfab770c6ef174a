"""What guards the dashboard: the hosts it answers to, the headers every response carries,
sign-in sessions kept in the run store, token checks that never raise, and a limit on guesses.

* **Hosts** (:class:`HostGuard`): a request whose ``Host`` is not allowed gets 400, so that a
  page of another site can't reach the dashboard through a DNS name that it points at the
  dashboard's address (DNS rebinding). An IP address is always allowed: rebinding needs a name.
* **Headers** (:class:`SecurityHeaders`): a Content-Security-Policy that allows the dashboard's
  own scripts and styles only, and no framing; ``nosniff``; a same-origin referrer policy.
* **Sessions** (:class:`Sessions`): a browser that signs in gets a random session id, kept in
  the run store until it signs out or the session ends; a cookie replayed after that is refused.
* **Guesses** (:class:`Guesses`): after a few wrong tokens from one client address, each further
  attempt waits twice as long as the last (429 with ``Retry-After``).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import math
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

__all__ = [
    "CONTENT_SECURITY_POLICY",
    "Guesses",
    "HostGuard",
    "SecurityHeaders",
    "Sessions",
    "default_hosts",
    "same",
    "sign",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]], Awaitable[None]]

LOOPBACK_NAMES = ("localhost",)
_WILDCARD_BINDS = {"0.0.0.0", "::", ""}

#: The dashboard's pages load their own script and stylesheet and nothing else; nobody frames them.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
_HEADERS = [
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    # Not "no-referrer": with it, browsers send `Origin: null` on a form post, which the
    # dashboard's same-origin check refuses.
    (b"referrer-policy", b"same-origin"),
]


def same(given: str, expected: str) -> bool:
    """Whether two secrets are equal, in constant time, whatever characters they hold."""
    return hmac.compare_digest(given.encode("utf-8", "surrogatepass"), expected.encode("utf-8", "surrogatepass"))


def sign(key: str, what: str) -> str:
    return hmac.new(key.encode("utf-8", "surrogatepass"), what.encode("utf-8", "surrogatepass"), "sha256").hexdigest()


# -- hosts -----------------------------------------------------------------------------------


def default_hosts(bind: str) -> tuple[str, ...]:
    """The host names a dashboard bound to ``bind`` answers to without ``--allowed-host``:
    ``localhost``, and ``bind`` itself when it is a name. IP addresses are always allowed."""
    names = list(LOOPBACK_NAMES)
    if bind not in _WILDCARD_BINDS and not _is_ip(bind) and bind.lower() not in names:
        names.append(bind.lower())
    return tuple(names)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def _host_name(header: str) -> str:
    """The host of a ``Host`` header, without its port: ``[::1]:8088`` → ``::1``."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1 : header.find("]")] if "]" in header else header
    name, colon, port = header.rpartition(":")
    return name.rstrip(".") if colon and port.isdigit() else header.rstrip(".")


class HostGuard:
    """An ASGI middleware that answers 400 to a request whose ``Host`` is not allowed.

    ``allowed`` holds names (``dash.example.com``), suffixes (``*.example.com``: its subdomains),
    or ``*`` (any host: behind a proxy that checks it). IP addresses are always allowed.
    """

    def __init__(self, app: ASGIApp, allowed: Iterable[str]) -> None:
        self.app = app
        self.allowed = {h.strip().lower().rstrip(".") for h in allowed if h.strip()}

    def allows(self, host: str) -> bool:
        if "*" in self.allowed or host in self.allowed or _is_ip(host):
            return True
        return any(p.startswith("*.") and host.endswith(p[1:]) for p in self.allowed)

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        raw = next((v for k, v in scope["headers"] if k == b"host"), None)
        header = raw.decode("latin-1") if raw is not None else ""
        host = _host_name(header)
        if host and self.allows(host):
            await self.app(scope, receive, send)
            return
        message = (
            f"this dashboard does not answer to the host {header!r}: start it with --allowed-host {host} "
            "(or ETL_DASHBOARD_ALLOWED_HOSTS) to serve that name"
            if host
            else "a request needs a Host header"
        )
        await _plain_error(scope, send, 400, message)


async def _plain_error(scope: Scope, send: Any, status: int, message: str, headers: list | None = None) -> None:
    """An error answered before the app: JSON on the API's paths, text elsewhere."""
    path = scope.get("path", "")
    if path.startswith("/api/") or path == "/metrics":
        body, media = json.dumps({"error": message}).encode(), b"application/json"
    else:
        body, media = f"{message}\n".encode(), b"text/plain; charset=utf-8"
    headers = [(b"content-type", media), (b"content-length", str(len(body)).encode()), *(headers or [])]
    await send({"type": "http.response.start", "status": status, "headers": headers + _HEADERS})
    await send({"type": "http.response.body", "body": body})


class SecurityHeaders:
    """An ASGI middleware that adds the security headers to every response that lacks them."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {k.lower() for k, _ in message.get("headers", [])}
                message["headers"] = [*message.get("headers", []), *(h for h in _HEADERS if h[0] not in present)]
            await send(message)

        await self.app(scope, receive, send_with_headers)


# -- sessions ----------------------------------------------------------------------------------


class Sessions:
    """Sign-in sessions kept in the run store's key-value store (Redis, or the embedded file),
    so that every dashboard process sharing it sees them, and signing out ends one for good.

    A session is a random id; the store keeps its SHA-256 (``PREFIX:dashboard-session:HASH``),
    with when it ends, indexed by that time in ``PREFIX:z:dashboard-sessions`` so that ended
    ones are deleted as new ones start.
    """

    def __init__(self, kv: Any, prefix: str, lifetime: float, clock: Callable[[], float] = time.time) -> None:
        self.kv = kv
        self.prefix = prefix
        self.lifetime = lifetime
        self.clock = clock

    def _key(self, digest: str) -> str:
        return f"{self.prefix}:dashboard-session:{digest}"

    @property
    def _index(self) -> str:
        return f"{self.prefix}:z:dashboard-sessions"

    @staticmethod
    def _digest(session: str) -> str:
        return hashlib.sha256(session.encode("utf-8", "surrogatepass")).hexdigest()

    def start(self) -> str:
        """A new session's id, valid for ``lifetime`` seconds unless ended before."""
        now = self.clock()
        ended = [m for m, _ in self.kv.zrange(self._index, -math.inf, now, 1000)]
        if ended:
            self.kv.delete_many([self._key(d) for d in ended], {self._index: ended})
        session = secrets.token_urlsafe(32)
        digest, until = self._digest(session), now + self.lifetime

        def put(tx: Any) -> None:
            tx.put(self._key(digest), {"until": until})
            tx.zadd(self._index, digest, until)

        self.kv.atomic(put, ())
        return session

    def valid(self, session: str) -> bool:
        doc = self.kv.get(self._key(self._digest(session)))
        return bool(doc) and float(doc.get("until", 0)) > self.clock()

    def end(self, session: str) -> None:
        digest = self._digest(session)
        self.kv.delete_many([self._key(digest)], {self._index: [digest]})


# -- guesses -----------------------------------------------------------------------------------


class Guesses:
    """Wrong tokens per client address: after ``free`` of them, the next attempt from that
    address must wait ``first`` seconds, and each further wrong one doubles the wait, up to
    ``longest``. A right token clears the address. An address quiet for ``forget`` seconds is
    forgotten; at most ``size`` addresses are remembered (the least recent go first)."""

    def __init__(
        self,
        free: int = 5,
        first: float = 1.0,
        longest: float = 300.0,
        forget: float = 3600.0,
        size: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.free, self.first, self.longest, self.forget, self.size = free, first, longest, forget, size
        self.clock = clock
        self._seen: OrderedDict[str, tuple[int, float, float]] = OrderedDict()  # wrong, last, blocked until

    def wait(self, address: str) -> float:
        """Seconds before ``address`` may try a token again (0: now)."""
        entry = self._seen.get(address)
        if entry is None:
            return 0.0
        now = self.clock()
        if now - entry[1] > self.forget:
            del self._seen[address]
            return 0.0
        return max(entry[2] - now, 0.0)

    def wrong(self, address: str) -> None:
        now = self.clock()
        count, _, _ = self._seen.pop(address, (0, now, now))
        count += 1
        doublings = min(count - self.free, 32)
        blocked = now + min(self.first * 2**doublings, self.longest) if count >= self.free else now
        self._seen[address] = (count, now, blocked)
        while len(self._seen) > self.size:
            self._seen.popitem(last=False)

    def right(self, address: str) -> None:
        self._seen.pop(address, None)
