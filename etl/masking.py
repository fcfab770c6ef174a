"""Secrets hidden wherever configuration is shown: in ``etl validate --show``, dry runs, errors."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from pydantic import SecretStr

from etl.yamldoc import KeyPath

__all__ = ["MASK", "mask"]

# A key names a secret when one of its words (split at _ and -) is one of these.
_SECRET_KEY = re.compile(
    r"(^|[_-])(password|passwd|pwd|secret|token|apikey|api[_-]key|private[_-]key|credentials?|auth|authorization)"
    r"([_-]|$)",
    re.I,
)
_URL_PASSWORD = re.compile(r"(?P<head>[a-z][a-z0-9+.-]*://[^:/@\s]*:)(?P<password>[^@\s]+)(?P<tail>@)", re.I)
MASK = "***"


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
        return _URL_PASSWORD.sub(lambda m: m["head"] + MASK + m["tail"], data)
    return data
