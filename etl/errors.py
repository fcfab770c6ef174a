"""Every error the toolkit raises on purpose.

Three families:

* :class:`ConfigError` — a job file, a parameter or a command line is wrong. The CLI exits 2.
  A :class:`ConfigErrors` carries every problem found in one pass.
* :class:`PluginError` — a plugin could not be loaded or misbehaves. Exit 2.
* :class:`StageError` — a source, transform or sink failed while running. Tagged
  ``transient`` (retry with backoff) or permanent (fail the chunk at once). A run that fails
  because of one is reported as a :class:`JobFailed`, exit 1.

Errors pickle (they cross process boundaries) and keep their attributes when they do.

Secrets never reach an error's text: the values :func:`hide` was given (the passwords and keys
of the jobs this process loaded, its ``ETL_SECRET_KEY`` and Redis password) are replaced with
``***`` (:func:`scrub`) wherever an error becomes text: in :func:`describe` (what run records
and messages hold), in our own errors' ``str()``, and in every log line
(:mod:`etl.logsetup`). A driver's message that quotes a malformed password, as libpq's does, is
stored and logged without it.
"""

from __future__ import annotations

import difflib
import re
import threading
from collections.abc import Iterable, Sequence

__all__ = [
    "ConfigError",
    "ConfigErrors",
    "EtlError",
    "Interrupted",
    "JobFailed",
    "PermanentError",
    "PluginError",
    "RejectedRows",
    "StageError",
    "TransientError",
    "UsageError",
    "describe",
    "did_you_mean",
    "hide",
    "hide_passwords",
    "is_transient",
    "mask_keyword_passwords",
    "scrub",
]


class EtlError(Exception):
    """Base class of every error the toolkit raises on purpose."""

    #: Exit code of the ``etl`` command when this error ends it.
    exit_code = 1

    def __str__(self) -> str:
        return scrub(super().__str__())

    def __reduce__(self):
        # Exceptions pickle their ``args`` only; keep the attributes too.
        return (_rebuild, (type(self), self.args, self.__dict__))


def _rebuild(cls, args, state):
    error = cls.__new__(cls)
    Exception.__init__(error, *args)
    error.__dict__.update(state)
    return error


class UsageError(EtlError):
    """The command line or an API call asked for something impossible."""

    exit_code = 2


class ConfigError(EtlError):
    """One problem in a job file (or in values given for it on the command line).

    Attributes:
        message: what is wrong and what would be right.
        file: the file (or ``--set``/``-p`` option) the value came from.
        line: 1-based line in ``file``, when known.
        column: 1-based column, when known.
        key: the key path, such as ``sink.table`` or ``transforms[1].type``.
    """

    exit_code = 2

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        line: int | None = None,
        column: int | None = None,
        key: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.file = file
        self.line = line
        self.column = column
        self.key = key

    @property
    def where(self) -> str:
        """``file:line`` (or whatever part of it is known)."""
        if self.file and self.line:
            return f"{self.file}:{self.line}"
        return self.file or ""

    def __str__(self) -> str:
        parts = [p for p in (self.where, self.key) if p]
        return scrub(": ".join([*parts, self.message]))


class ConfigErrors(ConfigError):
    """Every problem found in one pass over one or more job files."""

    def __init__(self, errors: Sequence[ConfigError]) -> None:
        self.errors = list(errors)
        first = self.errors[0] if self.errors else ConfigError("invalid configuration")
        super().__init__(first.message, file=first.file, line=first.line, key=first.key)

    def __str__(self) -> str:
        return "\n".join(str(e) for e in self.errors)


class PluginError(EtlError):
    """A plugin could not be loaded, or registered something invalid."""

    exit_code = 2


class StageError(EtlError):
    """A stage failed while running.

    ``transient`` errors (a dropped connection, a lock timeout, a rate limit) are retried with
    backoff; permanent ones (a schema mismatch, a value that can't be converted) fail the chunk
    at once, because retrying cannot help.
    """

    transient = False

    def __init__(self, message: str, *, transient: bool | None = None) -> None:
        super().__init__(message)
        self.message = message
        if transient is not None:
            self.transient = transient


class TransientError(StageError):
    """A stage error worth retrying."""

    transient = True


class PermanentError(StageError):
    """A stage error that retrying cannot fix."""

    transient = False


class RejectedRows(PermanentError):
    """Rows that a stage could not process, with ``on_error: fail`` (the default).

    Attributes:
        stage: the stage that rejected them, such as ``transforms[2] (cast)``.
        count: how many rows in the batch were rejected.
        row: 0-based position of the first rejected row in its chunk.
        column: the column at fault, when there is one.
        value: the offending value (shortened), when there is one.
        reason: why it was rejected.
    """

    def __init__(
        self,
        *,
        stage: str,
        count: int,
        row: int,
        reason: str,
        column: str | None = None,
        value: str | None = None,
        chunk: int | None = None,
    ) -> None:
        self.stage = stage
        self.count = count
        self.row = row
        self.column = column
        self.value = value
        self.reason = reason
        self.chunk = chunk
        super().__init__(self._describe())

    def _describe(self) -> str:
        where = f"chunk {self.chunk}, row {self.row}" if self.chunk is not None else f"row {self.row}"
        what = f"column {self.column!r}" + (f" value {self.value}" if self.value is not None else "")
        more = f" (and {self.count - 1} more in that batch)" if self.count > 1 else ""
        return (
            f"{self.stage} rejected {where}: {what}: {self.reason}{more}; "
            "set `on_error: skip` to count such rows and write them to a rejects file instead"
        )

    def in_chunk(self, chunk: int, first_row: int) -> RejectedRows:
        """The same error, with the row position made relative to the whole chunk."""
        return RejectedRows(
            stage=self.stage,
            count=self.count,
            row=first_row + self.row,
            reason=self.reason,
            column=self.column,
            value=self.value,
            chunk=chunk,
        )


class Interrupted(EtlError):
    """An attempt at a chunk was stopped between two batches: its lease was lost to another
    attempt (``reason="lost"``), or its run was cancelled or failed (``reason="stopped"``)."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"interrupted: {reason}")
        self.reason = reason


class JobFailed(EtlError):
    """A run ended ``failed``. ``result`` is its :class:`~etl.runner.RunResult`."""

    exit_code = 1

    def __init__(self, message: str, result=None) -> None:
        super().__init__(message)
        self.result = result


# Errors from the standard library that say nothing about the data: worth retrying.
_TRANSIENT_TYPES: tuple[type[BaseException], ...] = (ConnectionError, TimeoutError)
# OSErrors that retrying cannot fix.
_PERMANENT_OS_ERRORS: tuple[type[BaseException], ...] = (
    FileNotFoundError,
    IsADirectoryError,
    NotADirectoryError,
    PermissionError,
)


def is_transient(error: BaseException) -> bool:
    """Whether retrying might help.

    An error says so itself with a boolean ``transient`` attribute (every :class:`StageError`
    has one, and plugins may set it on their own exceptions). Otherwise connection errors,
    timeouts and other ``OSError``s (except missing files and permissions) are transient, and
    everything else (a bug, bad data, a bad query) is permanent: retrying deterministic code on
    the same input gives the same error.
    """
    flag = getattr(error, "transient", None)
    if isinstance(flag, bool):
        return flag
    if isinstance(error, _TRANSIENT_TYPES):
        return True
    if isinstance(error, OSError):
        return not isinstance(error, _PERMANENT_OS_ERRORS)
    return False


def describe(error: BaseException) -> str:
    """An error as one line, secrets scrubbed: our own errors by their message, others with
    their type too."""
    text = str(error).strip() or type(error).__name__
    if not isinstance(error, EtlError):  # not one of ours: say what kind of error it was
        text = f"{type(error).__name__}: {text}"
    return scrub(text)


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """``'; did you mean "table"?'`` when a choice is close to ``word``, else ``''``."""
    choices = [str(c) for c in choices]
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    if not close and len(word) >= 3:  # an abbreviation: "prod" for "production"
        close = [c for c in choices if c.lower().startswith(word.lower())][:1]
    return f'; did you mean "{close[0]}"?' if close else ""


# -- secrets scrubbed from every error's text ------------------------------------------------

#: A password in a libpq keyword/value connection string: ``host=db password='s3 cret'``.
_KEYWORD_PASSWORD = re.compile(r"""\b((?:password|passwd|pwd)\s*=\s*)('(?:[^'\\]|\\.)*'|[^\s'"]+)""", re.I)


def mask_keyword_passwords(text: str) -> str:
    """``text`` with the passwords of libpq keyword/value strings in it (``password=pw``) masked
    (``password=***``)."""
    return _KEYWORD_PASSWORD.sub(lambda m: m[1] + "***", text)


#: Shorter values are not scrubbed: replacing every "ab" would garble every message.
MIN_SECRET_LENGTH = 4
_secrets: set[str] = set()
_pattern: re.Pattern[str] | None = None
_lock = threading.Lock()
_SCHEME = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+.-")


def hide(*values: str | None) -> None:
    """Scrub these values (passwords, keys, tokens: whatever this process resolved that must
    not be shown) from every error text and log line of this process, from now on."""
    global _pattern
    new = {v for v in values if isinstance(v, str) and len(v) >= MIN_SECRET_LENGTH} - _secrets
    if not new:
        return
    with _lock:
        _secrets.update(new)
        # Longest first: a secret that contains another is replaced whole.
        ordered = sorted(_secrets, key=len, reverse=True)
        _pattern = re.compile("|".join(re.escape(v) for v in ordered))


def hide_passwords(text: str) -> None:
    """:func:`hide` the passwords written in ``text``: a URL's (``postgresql://user:pw@host``,
    as written and percent-decoded; spaces included when ``text`` is the URL) and a libpq
    keyword/value string's (``password=pw``). The parts of a password around an ``@`` are
    hidden too: libpq cuts a URL's password there, and names the rest as a host. Linear in the
    length of ``text``."""
    from urllib.parse import unquote

    found: list[str] = []
    at = text.find("://")
    while at >= 0:
        start = at
        while start > 0 and text[start - 1] in _SCHEME:  # stops at the previous URL's "://"
            start -= 1
        end = at + 3  # the end of the URL's user, password and host: "/", "?" or "#"
        while end < len(text) and text[end] not in "/?#" and (start == 0 or not text[end].isspace()):
            end += 1
        userinfo, at_sign, _ = text[at + 3 : end].rpartition("@")
        user, colon, password = userinfo.partition(":")
        if start < at and text[start].isalpha() and at_sign and colon and password:
            found += [password, unquote(password), *password.split("@")]
        at = text.find("://", at + 3)
    for match in _KEYWORD_PASSWORD.finditer(text):
        value = match[2]
        found += [value, value.strip("'").replace("\\'", "'")]
    hide(*found)


def scrub(text: str) -> str:
    """``text`` with every value given to :func:`hide` replaced with ``***``."""
    pattern = _pattern
    if pattern is None or not text:
        return text
    return pattern.sub("***", text)
