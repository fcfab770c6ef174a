"""Job parameters in PostgreSQL text: ``$name`` found (outside literals, quoted names, comments
and dollar-quoted strings) and turned into the server's positional ``$1, $2, …``, so that values
are bound, never spliced into the SQL."""

from __future__ import annotations

import re

from pydantic import ValidationInfo

from etl import did_you_mean

_SCAN = re.compile(
    r"""
      [Ee]'(?:[^'\\]|\\.|'')*'
    | '(?:[^']|'')*'
    | "(?:[^"]|"")*"
    | --[^\n]*
    | /\*.*?\*/
    | \$(?P<tag>(?:[A-Za-z_]\w*)?)\$.*?\$(?P=tag)\$
    | (?<![\w$])\$(?P<name>[A-Za-z_]\w*)
    | (?<![\w$])\$(?P<number>\d+)
    """,
    re.S | re.X,
)

# A connection that failed or was lost (worth retrying), unless the server refused who we are.


def parameters(sql: str) -> list[str]:
    """The job parameters (``$name``) that ``sql`` uses, in order of first use.

    Raises:
        ValueError: ``sql`` uses a positional parameter (``$1``).
    """
    names: dict[str, None] = {}
    for match in _SCAN.finditer(sql):
        if match["number"] is not None:
            raise ValueError(
                f"${match['number']}: positional parameters are not supported; use $name for the job's param `name`"
            )
        if match["name"] is not None:
            names.setdefault(match["name"], None)
    return list(names)


def positional(sql: str, positions: dict[str, int]) -> str:
    """``sql`` with each ``$name`` as the server's ``$n``, numbering new names from ``positions``."""

    def replace(match: re.Match[str]) -> str:
        name = match["name"]
        if name is None:
            return match[0]
        if name not in positions:
            positions[name] = len(positions) + 1
        return f"${positions[name]}"

    return _SCAN.sub(replace, sql)


def check_sql(value: str, info: ValidationInfo) -> str:
    if not value.strip():
        raise ValueError("is empty")
    names = parameters(value)
    declared = (info.context or {}).get("params")
    if declared is not None:
        for name in names:
            if name not in declared:
                hint = did_you_mean(name, declared) or (
                    f"; the job's params: {', '.join(declared)}" if declared else "; the job declares no params"
                )
                raise ValueError(f"${name} is not a parameter of the job{hint}")
    return value
