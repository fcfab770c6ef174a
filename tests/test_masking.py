"""Masking secrets: the same passwords hidden as before, in time linear in the text's length.

``mask_urls`` replaced a regular expression that took time quadratic in the length of a long
value without a match (1.1 s at 10,000 characters, 15 s at 40,000: a long ``name:`` made
``etl validate`` take half a minute). The expression is kept here as the reference: on short
texts, whatever it masks, ``mask_urls`` masks, and nothing else.
"""

from __future__ import annotations

import re

from hypothesis import example, given
from hypothesis import strategies as st
from pydantic import SecretStr

from etl.masking import MASK, mask, mask_urls, shown
from tests.fuzzing import finishes, fuzz

REFERENCE = re.compile(r"(?P<head>[a-z][a-z0-9+.-]*://[^:/@\s]*:)(?P<password>[^@\s]+)(?P<tail>@)", re.I)


def reference(text: str) -> str:
    return REFERENCE.sub(lambda m: m["head"] + MASK + m["tail"], text)


# The characters that matter to the expression, and a few that fold to ASCII letters when
# case is ignored (the Kelvin sign, a long s), or are white space beyond ASCII.
PIECES = st.sampled_from(["a", "Z", "1", "+", ".", "-", ":", "/", "@", " ", "\t", "\u212a", "\u017f", "\u2003", "é"])
URLISH = st.lists(PIECES | st.sampled_from(["://", "pg://u:p@h", "x:y@", "@@"]), max_size=30).map("".join)


@fuzz(400)
@given(URLISH)
@example("postgresql://app:s3cret@db:5432/x")
@example("a://b://c:d@e")
@example("9x://u:p@h")
@example("redis://:pw@host redis://u:p2@h2")
@example("s3://key:se/cr:et@bucket/a@b")
def test_mask_urls_masks_exactly_what_the_regular_expression_did(text):
    assert mask_urls(text) == reference(text)


def test_url_passwords_are_masked_in_every_shape():
    cases = {
        "postgresql://app:s3cret@db:5432/x": "postgresql://app:***@db:5432/x",
        "redis://:pw@localhost:6379/0": "redis://:***@localhost:6379/0",
        "dsn=postgresql://u:p%40ss@h/db and redis://u:x@h": "dsn=postgresql://u:***@h/db and redis://u:***@h",
        "HTTPS://User:Pw@Host": "HTTPS://User:***@Host",
        "postgresql://app@db/x": "postgresql://app@db/x",  # no password
        "postgresql://app:pw db@x": "postgresql://app:pw db@x",  # white space ends a URL
        "not a url: a:b@c": "not a url: a:b@c",
    }
    assert {text: mask_urls(text) for text in cases} == cases


LONG = 200_000


def test_long_hostile_texts_are_masked_in_linear_time():
    """Each of these took minutes with the regular expression; the outputs are exact."""
    cases = {
        "a" * LONG: "a" * LONG,  # the scheme's characters, no "://"
        "a" * LONG + "://u:p@h": "a" * LONG + "://u:***@h",
        "a://" + "b" * LONG: "a://" + "b" * LONG,  # a user that never ends
        "a://" + ":" * LONG: "a://" + ":" * LONG,
        "a://u:" * (LONG // 6): "a://u:" * (LONG // 6),  # passwords that never end
        "a://u:" * (LONG // 6) + "@h": "a://u:***@h",
        "postgresql://u:" + "p" * LONG + "@h": "postgresql://u:***@h",
        ("x://u:p@" + " ") * (LONG // 9): ("x://u:***@" + " ") * (LONG // 9),
    }
    for text, expected in cases.items():
        assert finishes(lambda text=text: mask_urls(text), timeout=60) == expected


def test_mask_walks_values_and_keeps_its_rules():
    data = {
        "dsn": "postgresql://app:s3cret@db/x",
        "password": "pw",
        "options": [{"api_key": "k", "url": "https://u:t@h"}, SecretStr("s")],
        "empty_token": "",
        "table": "x",
        "rows": 5,
    }
    assert mask(data, {("table",): "${TABLE}"}) == {
        "dsn": "postgresql://app:***@db/x",
        "password": MASK,
        "options": [{"api_key": MASK, "url": "https://u:***@h"}, MASK],
        "empty_token": "",
        "table": "${TABLE}",
        "rows": 5,
    }


def test_shown_values_are_masked_then_cut_short():
    assert shown("postgresql://u:pw@h") == "'postgresql://u:***@h'"
    long = "a" * 1_000 + " postgresql://u:" + "p" * 1_000 + "@h"
    assert shown(long) == repr("a" * 100) + "… (1,021 characters)"
    assert shown(list(range(1_000))).endswith("… (4,890 characters)")
    assert shown(5) == "5"
