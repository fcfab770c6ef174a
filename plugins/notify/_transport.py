"""One attempt at sending a notification, over HTTP (a POST with httpx) or SMTP, and its failure
told apart: ``_Transient``, worth another attempt (no answer in time, a refused connection, an
HTTP 5xx, 408, 425 or 429, an SMTP 4xx), or ``_Permanent`` (another HTTP 4xx, an SMTP 5xx such
as a refused login, a certificate that does not verify). A URL is shown only as
``scheme://host[:port]``: its path may be a secret.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from etl import __version__


class _Transient(Exception):
    """A failure that may pass: try again after the backoff."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class _Permanent(Exception):
    """A failure that another attempt would repeat (a 4xx, a refused login)."""


def _post(url: str, body: bytes, headers: dict[str, str], timeout: float) -> None:
    import httpx

    try:
        # Each phase bounded: connecting, and every wait for the server (httpx has no total).
        with httpx.Client(timeout=httpx.Timeout(timeout), follow_redirects=False) as client:
            response = client.post(url, content=body, headers=headers)
    except httpx.TimeoutException as exc:
        raise _Transient(f"no answer within {timeout:g}s ({type(exc).__name__})") from exc
    except httpx.TransportError as exc:
        detail = f"{type(exc).__name__}: {exc}".replace(url, _redacted(url))
        raise (_Permanent if _bad_certificate(exc) else _Transient)(detail) from exc
    except Exception as exc:  # such as httpx.InvalidURL, whose message may quote the URL
        raise _Permanent(f"{type(exc).__name__}: {exc}".replace(url, _redacted(url))) from exc
    if response.is_success:
        return
    detail = f"HTTP {response.status_code} {response.reason_phrase}"
    snippet = response.text.strip()[:200]
    if snippet:
        detail += f": {snippet}"
    if response.status_code in (408, 425, 429) or response.status_code >= 500:
        raise _Transient(detail, _retry_after(response.headers.get("Retry-After")))
    raise _Permanent(detail)


def _bad_certificate(exc: BaseException) -> bool:
    """Whether a TLS certificate did not verify (another attempt would fail the same way)."""
    import ssl

    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header given in seconds (the date form is ignored)."""
    try:
        return max(float(value), 0.0) if value is not None else None
    except ValueError:
        return None


def _redacted(url: str) -> str:
    """``scheme://host[:port]``: what a log line may show of a URL."""
    try:
        parts = urlsplit(url)
        port = f":{parts.port}" if parts.port else ""
        return f"{parts.scheme}://{parts.hostname}{port}" if parts.hostname else "<url>"
    except ValueError:
        return "<url>"


def _default_headers() -> dict[str, str]:
    return {"Content-Type": "application/json", "User-Agent": f"etl-toolkit/{__version__}"}


def _smtp_error(exc: Exception) -> Exception:
    """An SMTP failure as :class:`_Transient` (4xx, connection trouble) or :class:`_Permanent`."""
    import smtplib
    import ssl

    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        refused = ", ".join(f"{who} ({code})" for who, (code, _) in exc.recipients.items())
        transient = all(400 <= code < 500 for code, _ in exc.recipients.values())
        return (_Transient if transient else _Permanent)(f"recipients refused: {refused}")
    if isinstance(exc, smtplib.SMTPResponseException):
        error = exc.smtp_error.decode(errors="replace") if isinstance(exc.smtp_error, bytes) else str(exc.smtp_error)
        return (_Transient if 400 <= exc.smtp_code < 500 else _Permanent)(f"SMTP {exc.smtp_code} {error}".strip())
    if isinstance(exc, smtplib.SMTPNotSupportedError):
        return _Permanent(f"{exc} (set starttls: false, or ssl: true, if the server offers no STARTTLS)")
    if isinstance(exc, smtplib.SMTPServerDisconnected):
        # smtplib reports a server that never answered as a disconnection ("…: timed out").
        return _Transient(f"no answer in time ({_one_line(exc)})" if "timed out" in str(exc) else _one_line(exc))
    if isinstance(exc, smtplib.SMTPException | ssl.SSLCertVerificationError):
        return _Permanent(_one_line(exc))
    if isinstance(exc, TimeoutError):
        return _Transient(f"no answer in time ({_one_line(exc)})")
    if isinstance(exc, OSError):
        return _Transient(_one_line(exc))
    return exc


def _quit(client: Any) -> None:
    """Say goodbye; a message sent stays sent whatever QUIT answers."""
    try:
        client.quit()
    except Exception:
        client.close()


def _one_line(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"
