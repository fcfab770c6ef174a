"""Hostile and malformed job files: every one is valid or a config error, never anything else.

Property tests (hypothesis) load, through the function ``etl validate`` and ``etl run`` use,
real job files (``configs/`` and the docs' examples) with any YAML value at any key, their
text mutated (hostile YAML tokens, tabs, control characters, cuts), and plain binary junk;
a table of the hostile shapes a security probe found (alias bombs, recursive aliases, deep
nesting, tags that would build objects, numbers past Python's limits) checks each is refused
with the limit or problem named. A few real ``etl`` processes check the exit codes and that
no traceback is printed.

``make fuzz`` runs the property tests longer (tests/fuzzing.py).
"""

from __future__ import annotations

import datetime as dt
import os
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from etl.errors import ConfigError, ConfigErrors
from etl.jobs import load, load_job
from etl.manager import get_plugin_manager
from etl.scheduler import scheduled_jobs
from etl.yamldoc import LIMITS, parse
from tests.fuzzing import finishes, fuzz

ROOT = Path(__file__).resolve().parents[1]
FUZZ = fuzz(100)
# Variables the examples refer to, so that the seeds are valid and a value put in is what's judged.
ENV = {
    "DATABASE_URL": "postgresql://app:pw@127.0.0.1:5432/test",
    "SOURCE_DATABASE_URL": "postgresql://app:pw@127.0.0.1:5432/test",
    "BIGQUERY_PROJECT": "p",
    "BIGQUERY_CREDENTIALS": "/nonexistent/credentials.json",
    "ETL_WEBHOOK_SECRET": "s3cret",
    "SLACK_WEBHOOK_URL": "https://hooks.example.com/x",
    "DB": "out/db.duckdb",
    "SMTP_PASSWORD": "pw",
}


def _seeds() -> list[str]:
    """configs/*.yaml and the YAML examples in docs/ that are job files (or parts of one)."""
    texts = [p.read_text(encoding="utf-8") for p in sorted((ROOT / "configs").glob("*.yaml"))]
    for page in sorted((ROOT / "docs").glob("*.md")):
        texts += [b for b in re.findall(r"```yaml\n(.*?)```", page.read_text(encoding="utf-8"), re.S) if "type:" in b]
    return texts


SEEDS = _seeds()


def _data(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:  # the docs show some broken YAML, on purpose
        return None


# Whole jobs (the docs show parts of some), for changing one value at a time.
SEED_DATA = [d for d in map(_data, SEEDS) if isinstance(d, dict) and {"name", "source", "sink"} <= set(d)]


@pytest.fixture(scope="module")
def pm():
    """One plugin manager for every example (a job's ``plugins:`` are not imported: the fuzz
    must not import modules named by random text; test_odd_plugins_values checks that key)."""
    return get_plugin_manager()


def judge(text: str, pm: Any) -> list[ConfigError]:
    """Load ``text`` as ``etl validate`` does: a job, or every problem as config errors; any
    other exception fails the test (it would be a traceback)."""
    try:
        load(None, text=text, params={}, sets=(), env=ENV, pm=pm, origin="fuzz.yaml")
    except ConfigErrors as exc:
        assert exc.errors, "a ConfigErrors with no error in it"
        for error in exc.errors:
            assert isinstance(error, ConfigError)
            assert str(error) and error.file, error  # says something, and where
        return exc.errors
    return []


# -- strategies ---------------------------------------------------------------------------

# Text that means something to some part of a job: durations, crons, types, references,
# templates, SQL, URLs with passwords, YAML's own special words.
# fmt: off
WORDS = [
    "", " ", "\t", "x", "type", "table", "generate", "duckdb", "csv", "postgres", "merge", "append", "5m", "100ms",
    "-1s", "1e999s", "*/15 * * * *", "@daily", "61 * * * *", "UTC", "Mars/Olympus", "int", "list<int>",
    "struct<a: int>", "decimal(76, 38)", "timestamp[ns, tz=UTC]", "${X}", "${X:-d}", "$${X}", "${",
    "{{ params.x }}", "{{ run.start }}", "{{", "$x", "select 1", "value >", "'; drop table t; --",
    "postgresql://u:p@h/db", "a://b:c@", "../../etc/passwd", "null", "~", "yes", "no", "on", ".inf", ".nan", "0x_",
    "0o8", "1:2:3", "2026-02-30", "=", "<<",
]
# fmt: on
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.sampled_from([2**63, -(2**63) - 1, 10**639, 10**640, -(10**4299)]),  # past 640 characters: refused
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
    st.text(st.characters(codec="utf-8"), max_size=40),  # control characters too (dumped escaped)
    st.sampled_from(WORDS),
    st.dates(),
    st.datetimes(timezones=st.sampled_from([None, dt.UTC])),
    st.binary(max_size=20),
)
keys = st.one_of(st.sampled_from(WORDS), st.text(max_size=12), st.integers(-3, 3))
values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4), max_leaves=12
)


def _paths(data: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [path]
    if isinstance(data, dict):
        for key, value in data.items():
            found += _paths(value, (*path, key))
    elif isinstance(data, list):
        for index, value in enumerate(data):
            found += _paths(value, (*path, index))
    return found


@st.composite
def changed_jobs(draw: st.DrawFn) -> str:
    """A real job with one to three keys given any value, removed, or added."""
    data = yaml.safe_load(yaml.safe_dump(draw(st.sampled_from(SEED_DATA))))  # a copy
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(_paths(data)))
        if not path:
            data = draw(values) if draw(st.integers(0, 9)) == 0 else data
            continue
        parent = data
        for part in path[:-1]:
            parent = parent[part]
        action = draw(st.sampled_from(["replace", "replace", "delete", "add"]))
        if action == "replace":
            parent[path[-1]] = draw(values)
        elif action == "delete":
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent[draw(keys)] = draw(values)
        else:
            parent.append(draw(values))
    return yaml.safe_dump(data, allow_unicode=draw(st.booleans()), default_flow_style=draw(st.booleans()))


# Pieces of YAML that the probe used, put anywhere in a real job's text.
# fmt: off
HOSTILE = [
    "&a ", "*a", "&r [*r]", "&r {k: *r}", "{<<: *a}", "<<: *a\n", "!!python/object/apply:os.system ['true']",
    "!!python/name:os.system", "!!python/object:object {}", "!!float x", "!!int x", "!!bool x", "!!timestamp x",
    "!!binary ë", "!!set {a}", "!!omap [a: 1]", "!custom x", "!<tag:x> y", "? [a]\n: b\n", "? {a: 1}\n", "---\n",
    "...\n", "%YAML 1.1\n---\n", "%TAG ! tag:x:\n---\n", "\t", "\x00", "\x01", "\x1b[31m", "\x7f", "\x85", "\ufeff",
    "\ufffe", "\ud800", "\u2028", "9" * 5000, "1" + ":59" * 3000, "0x_", "2026-02-30", "1e999", "=", "<<",
    "[" * 300, "{" * 300, "- " * 300, '"' + "\\" * 50, "'", "|", ">-\n", "#", ": ", "- ", "${" * 200, "{{" * 200,
]
# fmt: on


@st.composite
def mutated_texts(draw: st.DrawFn) -> str:
    """A real job's text with one to four cuts, insertions and changes."""
    text = draw(st.sampled_from(SEEDS))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(text)))
        kind = draw(st.sampled_from(["hostile", "hostile", "text", "cut", "line", "tabs", "truncate"]))
        if kind == "hostile":
            text = text[:at] + draw(st.sampled_from(HOSTILE)) + text[at:]
        elif kind == "text":
            text = text[:at] + draw(st.text(st.characters(codec=None), max_size=8)) + text[at:]
        elif kind == "cut":
            text = text[:at] + text[at + draw(st.integers(1, 20)) :]
        elif kind == "line":  # a line repeated: duplicate keys, mostly
            lines = text.splitlines(keepends=True) or [""]
            index = draw(st.integers(0, len(lines) - 1))
            text = "".join(lines[: index + 1] + lines[index:])
        elif kind == "tabs":
            text = re.sub(r"^  ", "\t", text, count=draw(st.integers(1, 5)), flags=re.M)
        else:
            text = text[:at]
    return text


# -- properties ---------------------------------------------------------------------------


@pytest.mark.parametrize("text", SEEDS[:4], ids=lambda t: t.split("name: ", 1)[-1].split("\n", 1)[0])
def test_the_seeds_are_valid_jobs(text, pm):
    """The configs the fuzz starts from are valid, so that what it changes is what is judged."""
    assert judge(text, pm) == []


@FUZZ
@given(changed_jobs())
def test_any_value_at_any_key_is_valid_or_a_config_error(pm, text):
    judge(text, pm)


@FUZZ
@given(mutated_texts())
def test_mutated_job_files_are_valid_or_a_config_error(pm, text):
    judge(text, pm)


@FUZZ
@given(st.text(st.characters(codec=None), max_size=200))
def test_any_text_is_valid_or_a_config_error(pm, text):
    judge(text, pm)


@fuzz(40)
@given(st.binary(max_size=300) | st.sampled_from(SEEDS).map(str.encode).flatmap(lambda b: st.just(b[:50] + b"\xff")))
def test_any_bytes_in_a_file_are_valid_or_a_config_error(tmp_path, pm, data):
    path = tmp_path / "junk.yaml"
    path.write_bytes(data)
    try:
        load_job(path, pm=pm, env=ENV)
    except ConfigErrors as exc:
        assert all(e.file == str(path) for e in exc.errors), exc.errors


@FUZZ
@given(
    st.sampled_from(SEEDS[:4]),
    st.lists(
        st.tuples(
            st.sampled_from(["", "sink.", "source.", "params.x.", "transforms[0].", "[9]", "a.b[1]"]),
            st.text(max_size=12),
            st.sampled_from(["=", "", "=="]),
            st.sampled_from(WORDS) | st.text(max_size=20) | st.sampled_from(HOSTILE),
        ),
        max_size=3,
    ),
    st.dictionaries(st.text(max_size=10), st.text(max_size=20), max_size=3),
)
def test_any_overrides_and_params_are_valid_or_a_config_error(pm, text, sets, params):
    """``--set`` and ``-p`` values: read with the same rules and limits as the file."""
    given_sets = [f"{prefix}{key}{sep}{value}" for prefix, key, sep, value in sets]
    try:
        load(None, text=text, params=params, sets=given_sets, env=ENV, pm=pm, origin="fuzz.yaml")
    except ConfigErrors as exc:
        assert all(str(e) for e in exc.errors)


def test_odd_plugins_values_are_config_errors(tmp_path):
    """A job's ``plugins:`` is imported (with no plugin manager given): odd values are refused
    as config errors too."""
    base = "name: j\nsource: {type: generate, rows: 1}\nsink: {type: duckdb, path: x.duckdb, table: t}\n"
    (tmp_path / "broken.py").write_text("raise RuntimeError('broken plugin')\n")
    for value in [
        "5",
        "[[1]]",
        "[{}]",
        "['']",
        "['.']",
        "['..']",
        "[etl_no_such_module_q]",
        "['no/such/file.py']",
        "[broken.py]",
        "['\\0']",
        "[{a: *x}]",
    ]:
        text = base + f"plugins: {value}\n"
        try:
            load_job(text=text, env={}, origin=str(tmp_path / "job.yaml"))
        except ConfigErrors as exc:
            assert exc.errors and all(str(e) for e in exc.errors)
        else:
            raise AssertionError(f"plugins: {value} was accepted")


# -- the hostile shapes, each refused with its problem named --------------------------------


def _alias_bomb(levels: int, width: int = 10) -> str:
    """A list of `width` aliases to a list of `width` aliases… (width**levels values in full)."""
    lines = ["name: bomb", "a0: &a0 [x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * width)}]" for i in range(1, levels + 1)]
    return "\n".join(lines) + "\n"


def _merge_bomb(levels: int) -> str:
    """Mappings each merging the one before twice (``<<: [*m, *m]``)."""
    lines = ["name: bomb", "m0: &m0 {k: v}"]
    lines += [f"m{i}: &m{i} {{<<: [*m{i - 1}, *m{i - 1}], k{i}: v}}" for i in range(1, levels + 1)]
    return "\n".join(lines) + "\n"


DEEP = f"lists and mappings nested more than {LIMITS.depth} levels deep"
EXPANDED = f"more than {LIMITS.values:,} values once its aliases are expanded"
REFUSED = "is not allowed: a job file holds plain values"
# (what, the text, a fragment of the error, its line)
HOSTILE_CASES = [
    ("recursive alias in a list", "name: x\nsource: &r [*r]\n", "the alias *r is inside the value &r", 2),
    ("recursive alias in a mapping", "name: x\nsource: &r {a: {b: *r}}\n", "(a recursive alias)", 2),
    ("recursive merge key", "name: x\nsource: &r {<<: *r}\n", "(a recursive alias)", 2),
    ("recursive through two anchors", "name: x\nsource: &a [&b [*a]]\n", "(a recursive alias)", 2),
    ("alias bomb, 10^9 values", _alias_bomb(9), EXPANDED, 2),
    ("alias bomb of merge keys, 2^30", _merge_bomb(30), EXPANDED, None),
    (
        "aliases of aliases 300 deep",
        "\n".join(["a0: &a0 x"] + [f"a{i}: &a{i} [*a{i - 1}]" for i in range(1, 301)]),
        DEEP + " once its aliases are expanded",
        None,
    ),
    ("101 lists in lists", "x: " + "[" * 101 + "]" * 101, DEEP, 1),
    ("1,000 lists in lists", "name: x\nsource: " + "[" * 1000 + "]" * 1000, DEEP, 2),
    ("5,000 mappings in mappings", "x: " + "{a: " * 5000 + "}" * 5000, DEEP, 1),
    ("1,000 levels of block mappings", "".join(" " * i + f"k{i}:\n" for i in range(1000)), DEEP, 101),
    (
        f"{LIMITS.values + 1:,} values written",
        "x: [" + "1," * LIMITS.values + "]",
        f"more than {LIMITS.values:,} values",
        1,
    ),
    ("a control character", "name: a\x01b\n", "the character U+0001 is not allowed", 1),
    ("a NUL", "name: x\nsink: \x00\n", "U+0000", 2),
    ("an escape sequence", "name: x\n\x1b[31mred: 1\n", "U+001B", 2),
    ("a lone surrogate", "name: x\ndescription: \ud800\n", "U+D800", 2),
    (
        "!!python/object/apply",
        "name: !!python/object/apply:os.system ['touch pwned']\n",
        "!!python/object/apply:os.system " + REFUSED,
        1,
    ),
    ("!!python/object/new on a mapping", "name: x\nsource: !!python/object/new:os.system {args: [x]}\n", REFUSED, 2),
    ("!!python/name", "name: x\nsink: !!python/name:os.system\n", "!!python/name:os.system " + REFUSED, 2),
    ("!!python/module", "name: !!python/module:os\n", REFUSED, 1),
    ("a verbatim python tag", "name: !<tag:yaml.org,2002:python/object:object> {}\n", REFUSED, 1),
    ("an unknown tag", "name: !custom x\n", "the tag !custom " + REFUSED, 1),
    ("!!set", "name: x\nsink: !!set {a, b}\n", "the tag !!set " + REFUSED, 2),
    ("!!omap", "name: x\nsink: !!omap [a: 1]\n", "the tag !!omap " + REFUSED, 2),
    ("!!str on a mapping", "name: x\nsink: !!str {a: 1}\n", "the tag !!str " + REFUSED, 2),
    (
        "an integer of 5,000 digits",
        "name: x\nchunk_size: " + "9" * 5000 + "\n",
        "a number of 5,000 characters; one may have at most 640",
        2,
    ),
    (
        "a sexagesimal integer of 9,001 characters",
        "name: x\nchunk_size: 1" + ":59" * 3000 + "\n",
        "a number of 9,001 characters",
        2,
    ),
    ("!!float x", "name: x\ndelay: !!float x\n", "'x' is not a valid number", 2),
    ("!!int x", "name: x\nchunk_size: !!int x\n", "'x' is not a valid integer", 2),
    ("!!bool maybe", "name: x\ncatchup: !!bool maybe\n", "'maybe' is not a valid boolean", 2),
    ("!!timestamp x", "name: x\ndelay: !!timestamp x\n", "'x' is not a valid date or timestamp", 2),
    ("!!binary ë", "name: x\ndescription: !!binary ë\n", "is not a valid base64 text", 2),
    (
        "an impossible date",
        "name: x\nincremental: {cursor: c, initial: 2026-02-30}\n",
        "'2026-02-30' is not a valid date or timestamp: day is out of range for month",
        2,
    ),
    ("an empty hexadecimal", "name: x\nchunk_size: 0x_\n", "'0x_' is not a valid integer", 2),
    ("a list as a key", "name: x\n? [a, b]\n: c\n", "a key is text or a number, not a list or a mapping", 2),
    ("a merge of a number", "name: x\nsink: {<<: 5}\n", "`<<:` takes a mapping", 2),
    ("an undefined alias", "name: x\nsink: *nowhere\n", "found undefined alias", 2),
    ("two documents", "name: x\n---\nname: y\n", "expected a single document", 2),
    ("tabs for indentation", "name: x\nsink:\n\ttype: csv\n", "invalid YAML", 3),
    ("an unclosed flow", "name: x\nsink: {" + "a: [" * 20, "invalid YAML", None),
    (
        f"{LIMITS.chars + 1:,} characters",
        "name: " + "a" * LIMITS.chars,
        f"a job file may hold at most {LIMITS.chars:,}",
        None,
    ),
]


@pytest.mark.parametrize(
    ("text", "fragment", "line"), [c[1:] for c in HOSTILE_CASES], ids=[c[0] for c in HOSTILE_CASES]
)
def test_hostile_job_files_are_refused_naming_the_problem(pm, text, fragment, line, tmp_path):
    errors = finishes(lambda: judge(text, pm))
    matching = [e for e in errors if fragment in e.message]
    assert matching, f"no error containing {fragment!r} in {[str(e)[:300] for e in errors]}"
    assert matching[0].file == "fuzz.yaml"
    if line is not None:
        assert matching[0].line == line, str(matching[0])
    assert not (tmp_path / "pwned").exists()


def test_nesting_up_to_the_limit_is_read(pm):
    """100 levels (the limit) of lists and mappings are read, and reach a stage's options; 101 are not."""

    def job(levels: int) -> str:  # the job's mapping, transforms, its item and args: 4 levels
        deep = "[" * (levels - 4) + "1" + "]" * (levels - 4)
        return (
            "name: deep\nsource: {type: generate, rows: 1}\n"
            f"transforms: [{{type: python, function: 'json:dumps', args: {{x: {deep}}}}}]\n"
            "sink: {type: duckdb, path: x.duckdb, table: t}\n"
        )

    assert not any(DEEP in e.message for e in judge(job(LIMITS.depth), pm))
    assert [e.line for e in judge(job(LIMITS.depth + 1), pm) if DEEP in e.message] == [3]


def test_aliases_within_the_limits_expand_in_full():
    """Aliases of aliases are read as if written out, up to the limit on values: 10^4 here."""

    def leaves(value: Any) -> int:
        return sum(map(leaves, value)) if isinstance(value, list) else 1

    assert leaves(parse(_alias_bomb(4), "f.yaml", {}).data["a4"]) == 10**4
    with pytest.raises(ConfigError, match=EXPANDED):
        parse(_alias_bomb(5), "f.yaml", {})  # 10^5 leaves and their lists


# -- long values: linear time, short messages ---------------------------------------------

JOB = "name: j\nsource: {type: generate, rows: 1}\nsink: {type: duckdb, path: x.duckdb, table: t}\n"
LONG = 200_000
LONG_CASES = [
    ("a long name", JOB.replace("name: j", "name: " + "a" * LONG)),
    ("a long name of URL-like text", JOB.replace("name: j", "name: '" + "a://u:" * (LONG // 6) + "'")),
    ("a long URL password", JOB.replace("x.duckdb", "'postgresql://u:" + "p" * LONG + "@h/db'")),
    ("unclosed references", JOB.replace("x.duckdb", "'" + "${" * LONG + "'")),
    ("unclosed templates", JOB.replace("x.duckdb", "'" + "{{ params." * (LONG // 10) + "'")),
    ("a long duration", JOB + "delay: '" + " " * LONG + "x'\n"),
    ("a long time zone", JOB + "timezone: '" + "a/" * LONG + "'\n"),
    (
        "a long cast type",
        JOB + "transforms: [{type: cast, columns: {a: '" + "list<" * 1000 + "int" + ">" * 1000 + "'}}]\n",
    ),
    ("a long SQL filter", JOB + "transforms: [{type: filter, expr: '" + "(" * LONG + "'}]\n"),
]


@pytest.mark.parametrize("text", [c[1] for c in LONG_CASES], ids=[c[0] for c in LONG_CASES])
def test_long_values_are_read_in_time_and_errors_stay_short(pm, text):
    for error in finishes(lambda: judge(text, pm)):
        assert len(str(error)) < 1_000, str(error)[:2_000]
        assert "p" * 200 not in str(error)


# -- files that can't be read, and real etl processes -------------------------------------

BAD_FILES = {
    "control.yaml": b"name: x\x01\nsource: {type: generate, rows: 1}\n",
    "latin1.yaml": "name: caf\xe9\n".encode("latin-1"),
    "bomb.yaml": _alias_bomb(7).encode(),
    "python.yaml": b"name: !!python/object/apply:os.system ['touch pwned']\n",
    "deep.yaml": b"name: x\nsource: " + b"[" * 1000 + b"]" * 1000 + b"\n",
    "recursive.yaml": b"name: x\nsource: &r [*r]\n",
    "huge-number.yaml": b"name: x\nchunk_size: " + b"9" * 5000 + b"\n",
}


@pytest.fixture
def bad_configs(tmp_path):
    """A configs directory: one valid scheduled job, the files above, a directory named like
    a job file, a FIFO no one writes to, and (unless root, who reads anything) an unreadable file."""
    directory = tmp_path / "configs"
    directory.mkdir()
    (directory / "good.yaml").write_text(JOB.replace("name: j", "name: good") + "schedule: '@daily'\n")
    for name, data in BAD_FILES.items():
        (directory / name).write_bytes(data)
    (directory / "folder.yaml").mkdir()
    os.mkfifo(directory / "fifo.yaml")
    if os.geteuid() != 0:
        (directory / "secret.yaml").write_text(JOB)
        (directory / "secret.yaml").chmod(0)
    return directory


def test_files_that_cannot_be_read_are_config_errors_naming_them(bad_configs):
    expected = {
        "folder.yaml": "is a directory, not a job file",
        "latin1.yaml": "not UTF-8 text (byte 0xe9 can't be decoded)",
        "fifo.yaml": "a job file is a mapping",  # read at once, as empty: never waits for a writer
        "secret.yaml": "cannot read the job file: Permission denied",
    }
    for name, fragment in expected.items():
        path = bad_configs / name
        if not path.exists() and not path.is_symlink():
            continue  # secret.yaml, when root
        with pytest.raises(ConfigErrors) as info:
            finishes(lambda path=path: load_job(path, env={}), timeout=60)
        assert info.value.errors[0].file == str(path)
        assert fragment in info.value.errors[0].message


def test_scheduled_jobs_lists_every_bad_file_as_invalid(bad_configs):
    jobs, problems = scheduled_jobs(bad_configs)
    assert [job.name for job in jobs] == ["good"]
    bad = {Path(p).name for p in problems}
    assert bad == {*BAD_FILES, "folder.yaml", "fifo.yaml"} | ({"secret.yaml"} if os.geteuid() != 0 else set())
    assert all(errors and all(e.file == path for e in errors) for path, errors in problems.items())


def test_etl_schedule_lists_bad_files_as_invalid_and_exits_normally(cli, bad_configs):
    proc = cli("schedule", "--configs", str(bad_configs))
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "good: 0 0 * * *" in proc.stdout
    invalid = [line for line in proc.stderr.splitlines() if line.startswith("invalid, not scheduled: ")]
    assert len(invalid) == len(scheduled_jobs(bad_configs)[1])
    control = bad_configs / "control.yaml"
    assert f"invalid, not scheduled: {control}:1: invalid YAML: the character U+0001 is not allowed" in proc.stderr
    assert f"invalid, not scheduled: {bad_configs / 'folder.yaml'}: is a directory, not a job file" in proc.stderr


def test_etl_validate_exits_2_without_a_traceback(cli, bad_configs):
    paths = [str(bad_configs / name) for name in [*BAD_FILES, "fifo.yaml", "good.yaml"]]
    proc = cli("validate", *paths)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert f"{bad_configs / 'good.yaml'}: ok" in proc.stdout
    assert f"{len(BAD_FILES) + 1} of {len(paths)} job files invalid" in proc.stderr
    for name in BAD_FILES:
        assert f"error: {bad_configs / name}:" in proc.stderr, name
    assert f"{bad_configs / 'bomb.yaml'}:2: a5" in proc.stderr and EXPANDED in proc.stderr
    assert not (bad_configs.parent / "pwned").exists()


def test_etl_run_dry_run_exits_2_without_a_traceback(cli, bad_configs):
    proc = cli("run", "--dry-run", str(bad_configs / "bomb.yaml"))
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert f"error: {bad_configs / 'bomb.yaml'}:2: " in proc.stderr and EXPANDED in proc.stderr
