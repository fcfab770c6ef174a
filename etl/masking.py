"""Secrets hidden wherever configuration is shown: in ``etl validate --show``, dry runs, errors."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from pydantic import SecretStr

from etl.yamldoc import KeyPath

__all__ = ["MASK", "mask", "mask_urls", "shown"]

# A key names a secret when one of its words (split at _ and -) is one of these.
_SECRET_KEY = re.compile(
    r"(^|[_-])(password|passwd|pwd|secret|token|apikey|api[_-]key|private[_-]key|credentials?|auth|authorization)"
    r"([_-]|$)",
    re.I,
)
MASK = "***"

# A password in a URL: `scheme://user:PASSWORD@`, that is (as one regular expression)
#   [a-z][a-z0-9+.-]*://[^:/@\s]*:(?P<password>[^@\s]+)@   (ignoring case)
# found by mask_urls() in one pass (a backtracking regular expression takes time quadratic in
# the length of a long value without a match, and a job file's values can be long).
_SEPARATOR = re.compile("://")
_SCHEME_CHAR = re.compile(r"[a-z0-9+.-]", re.I).match
_LETTER = re.compile(r"[a-z]", re.I).match
_USER = re.compile(r"[^:/@\s]*")
_PASSWORD_END = re.compile(r"[@\s]")


def mask(data: Any, written: Mapping[KeyPath, str] | None = None, path: KeyPath = ()) -> Any:
    """``data`` with secrets hidden.

    A value that came from a ``${VAR}`` reference is shown as written; values under keys that
    name a secret (``password``, ``token``, ``credentials``...) become ``***``; a password in a
    URL (``postgres://user:pw@host``) becomes ``***``.
    """
    written = written or {}
    if path in written:
        return written[path]
    if isinstance(data, Mapping):
        return {
            k: (
                MASK
                if _SECRET_KEY.search(str(k)) and v not in (None, "") and (*path, k) not in written
                else mask(v, written, (*path, k))
            )
            for k, v in data.items()
        }
    if isinstance(data, list | tuple):
        return [mask(v, written, (*path, i)) for i, v in enumerate(data)]
    if isinstance(data, SecretStr):
        return MASK
    if isinstance(data, str):
        return mask_urls(data)
    return data


def mask_urls(text: str) -> str:
    """``text`` with the password of each URL in it (``postgres://user:pw@host``) as ``***``.

    Linear in the length of ``text``: each character is looked at a bounded number of times.
    """
    if "://" not in text:
        return text
    parts: list[str] = []
    done = 0  # text[:done] is in parts (or is the start of text not yet copied)
    end = -1  # the first `@` or white space at or after `end`'s search start (searches only move on)
    for separator in _SEPARATOR.finditer(text):
        colon = separator.start()
        # The scheme: a letter, then letters, digits, + . - up to "://", all after the last
        # match. The characters before each "://" are looked at once (a run of scheme
        # characters ends at the ':' or '/' of the separator before it).
        start = colon
        while start > done and _SCHEME_CHAR(text[start - 1]):
            start -= 1
        if not any(_LETTER(c) for c in text[start:colon]):
            continue
        user_end = _USER.match(text, colon + 3).end()  # stops at the next ':' at the latest
        if user_end >= len(text) or text[user_end] != ":":
            continue
        password = user_end + 1
        if end < password:
            found = _PASSWORD_END.search(text, password)
            end = found.start() if found else len(text)
        if end == password or end == len(text) or text[end] != "@":
            continue
        parts += [text[done:password], MASK]
        done = end  # the '@' and what follows are copied later
    return "".join([*parts, text[done:]]) if parts else text


def shown(value: Any, size: int = 100) -> str:
    """``value`` for a message: masked (as :func:`mask` does), as Python writes it, and cut
    short when long (a value of a million characters is no help in an error message)."""
    masked = mask(value)
    if isinstance(masked, str) and len(masked) > size:
        return f"{masked[:size]!r}… ({len(masked):,} characters)"
    text = repr(masked)
    return text if len(text) <= size else f"{text[:size]}… ({len(text):,} characters)"
