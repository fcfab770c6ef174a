"""Job files: validation errors (one table of bad snippets), env, params, overrides, masking."""

from __future__ import annotations

import datetime as dt
import textwrap

import pytest

import etl
from etl.errors import ConfigErrors
from etl.masking import mask

GOOD = """\
name: forecast-sync
params:
  start_date: {type: date, default: "2026-01-01"}
  environment: {type: string, required: true, choices: [production, staging]}
source: {type: generate, rows: 100}
transforms:
  - {type: rename, columns: {forecast: value}}
sink:
  type: duckdb
  path: out/f.duckdb
  table: forecasts
"""


def load(text: str, **kwargs):
    kwargs.setdefault("params", {"environment": "production"})
    return etl.load_job(text=textwrap.dedent(text), **kwargs)


def errors_of(text: str, **kwargs) -> list[etl.ConfigError]:
    with pytest.raises(ConfigErrors) as info:
        load(text, **kwargs)
    return info.value.errors


# (what is wrong, the job text, expected line, expected key, a fragment of the message)
BAD = [
    ("not YAML", "name: [unclosed\n", 2, None, "invalid YAML"),
    ("not a mapping", "- a\n- b\n", 1, None, "a job file is a mapping"),
    (
        "misspelled sink key",
        GOOD.replace("table: forecasts", "tabel: forecasts"),
        11,
        "sink.tabel",
        'unknown key; did you mean "table"?',
    ),
    ("misspelled top key", GOOD + "chunk_sise: 10\n", 12, "chunk_sise", 'did you mean "chunk_size"?'),
    (
        "unknown source type",
        GOOD.replace("type: generate", "type: generat"),
        5,
        "source.type",
        "unknown source type 'generat'; did you mean \"generate\"? (known source types: ",
    ),
    (
        "unknown transform type",
        GOOD.replace("type: rename", "type: renam"),
        7,
        "transforms[0].type",
        'did you mean "rename"?',
    ),
    ("stage without type", GOOD.replace("{type: generate, rows: 100}", "{rows: 100}"), 5, "source", "missing `type:`"),
    ("missing sink", GOOD.split("sink:")[0], 1, "sink", "missing"),
    (
        "missing sink option",
        GOOD.replace("  table: forecasts\n", ""),
        8,
        "sink.table",
        "missing; expected the table, optionally schema-qualified, such as 'forecasts'",
    ),
    ("bad name", GOOD.replace("name: forecast-sync", "name: Forecast Sync"), 1, "name", "is not a valid name"),
    ("negative chunk size", GOOD + "chunk_size: -5\n", 12, "chunk_size", "greater than or equal to 1"),
    ("chunk size not a number", GOOD + "chunk_size: lots\n", 12, "chunk_size", "valid integer"),
    ("bad duration", GOOD + "delay: 5 parsecs\n", 12, "delay", "is not a duration"),
    ("bad mode", GOOD + "  mode: upsert\n", 12, "sink.mode", "'upsert' is not one of: append, replace, merge"),
    ("merge without key", GOOD + "  mode: merge\n", 8, "sink", "mode merge needs `key:`"),
    ("bad cron", GOOD + "schedule: '61 * * * *'\n", 12, "schedule", "field 1 (minute) '61' is invalid"),
    ("cron with four fields", GOOD + "schedule: '* * * *'\n", 12, "schedule", "has 4 fields"),
    (
        "bad param type",
        GOOD.replace("type: date,", "type: datum,"),
        3,
        "params.start_date.type",
        "'datum' is not one of: string, integer, number, boolean, date, datetime",
    ),
    (
        "bad param default",
        GOOD.replace('"2026-01-01"', '"2026-13-01"'),
        3,
        "params.start_date.default",
        "is not a date; expected YYYY-MM-DD",
    ),
    ("duplicate key", GOOD + "chunk_size: 10\nchunk_size: 20\n", 13, "chunk_size", "duplicate key"),
    (
        "bad SQL",
        GOOD.replace("{type: rename, columns: {forecast: value}}", "{type: filter, expr: 'value >'}"),
        7,
        "transforms[0].expr",
        "invalid SQL",
    ),
    (
        "bad cast type",
        GOOD.replace("{type: rename, columns: {forecast: value}}", "{type: cast, columns: {id: intt}}"),
        7,
        "transforms[0].columns",
        "'intt' is not a known type",
    ),
    ("max_rejects without skip", GOOD + "max_rejects: 10\n", 12, "max_rejects", "only applies with `on_error: skip`"),
    (
        "unset variable",
        GOOD.replace("out/f.duckdb", "${NO_SUCH_VAR_XYZ}/f.duckdb"),
        10,
        "sink.path",
        "environment variable NO_SUCH_VAR_XYZ is not set",
    ),
    (
        "template of unknown param",
        GOOD.replace("rows: 100", 'rows: "{{ params.rowz }}"'),
        5,
        "source.rows",
        "no such parameter",
    ),
    (
        "template in SQL",
        GOOD.replace(
            "{type: rename, columns: {forecast: value}}", "{type: filter, expr: 'ds > {{ params.start_date }}'}"
        ),
        7,
        "transforms[0].expr",
        "use $start_date to pass a parameter to SQL",
    ),
    (
        "template in derive SQL",
        GOOD.replace(
            "{type: rename, columns: {forecast: value}}", "{type: derive, columns: {x: '{{ params.start_date }}'}}"
        ),
        7,
        "transforms[0].columns.x",
        "use $start_date to pass a parameter to SQL",
    ),
    (
        "unknown $param in SQL",
        GOOD.replace("{type: rename, columns: {forecast: value}}", "{type: filter, expr: 'ds > $start_dat'}"),
        7,
        "transforms[0].expr",
        '$start_dat is not a parameter of the job; did you mean "start_date"?',
    ),
    (
        "template of a param without value",
        GOOD.replace("rows: 100", 'rows: "{{ params.limit }}"').replace(
            "params:\n", "params:\n  limit: {type: integer}\n"
        ),
        6,
        "source.rows",
        "the parameter has no value; give it with -p limit=VALUE",
    ),
    ("jitter out of range", GOOD + "retry: {jitter: 2}\n", 12, "retry.jitter", "less than or equal to 1"),
    ("retry attempts zero", GOOD + "retry: {attempts: 0}\n", 12, "retry.attempts", "greater than or equal to 1"),
    ("unknown retry key", GOOD + "retry: {attempt: 3}\n", 12, "retry.attempt", 'did you mean "attempts"?'),
    # Hostile YAML (tests/test_fuzz_config.py has the rest): refused before validation, located.
    (
        "a python tag",
        GOOD + "chunk_size: !!python/object/apply:os.system [true]\n",
        12,
        "chunk_size",
        "the tag !!python/object/apply:os.system is not allowed",
    ),
    ("a recursive alias", GOOD.replace("{type: generate, rows: 100}", "&r [*r]"), 5, "source[0]", "recursive alias"),
    (
        "a control character",
        GOOD.replace("table: forecasts", "table: fore\x07casts"),
        11,
        None,
        "the character U+0007 is not allowed",
    ),
    (
        "an impossible date",
        GOOD.replace('"2026-01-01"', "2026-02-30"),
        3,
        "params.start_date.default",
        "'2026-02-30' is not a valid date or timestamp: day is out of range for month",
    ),
    ("a huge integer", GOOD + "chunk_size: " + "9" * 700 + "\n", 12, "chunk_size", "a number of 700 characters"),
    ("nested too deep", GOOD + "x: " + "[" * 101 + "]" * 101 + "\n", 12, None, "nested more than 100 levels deep"),
    ("a list as a key", GOOD + "? [a]\n: b\n", 12, None, "a key is text or a number"),
]


@pytest.mark.parametrize(("text", "line", "key", "fragment"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_job_files_are_reported_with_location_and_hint(text, line, key, fragment):
    errors = errors_of(text)
    matching = [e for e in errors if fragment in e.message]
    assert matching, f"no error containing {fragment!r} in {[str(e) for e in errors]}"
    error = matching[0]
    assert error.file == "<string>"
    assert error.line == line
    assert error.key == key


def test_merge_keys_merge_and_the_mappings_own_keys_win():
    """``<<:`` merges mappings: the first of a list wins over the next, the mapping's own keys
    over both, and an overridden key is no duplicate."""
    sink = "sink:\n  type: duckdb\n  path: out/f.duckdb\n  table: forecasts\n"
    merged = "sink:\n  <<: [{type: duckdb, path: out/f.duckdb, table: first}, {table: second, mode: replace}]\n"
    job = load(GOOD.replace(sink, merged + "  path: out/g.duckdb\n"))
    options = job.sink.options
    assert (options.table, options.mode, options.path) == ("first", "replace", "out/g.duckdb")


def test_every_problem_is_reported_in_one_pass():
    text = GOOD.replace("table: forecasts", "tabel: forecasts").replace("type: rename", "type: renam")
    text += "chunk_size: 0\n"
    errors = errors_of(text)
    keys = {e.key for e in errors}
    assert {"sink.tabel", "transforms[0].type", "chunk_size"} <= keys
    lines = [e.line for e in errors]
    assert lines == sorted(lines), "errors are given in file order"


def test_errors_name_the_file(write):
    path = write("jobs/broken.yaml", GOOD.replace("table: forecasts", "tabel: forecasts"))
    with pytest.raises(ConfigErrors) as info:
        etl.load_job(path, params={"environment": "production"})
    assert any(str(e).startswith(f"{path}:11: sink.tabel: unknown key") for e in info.value.errors)


def test_a_missing_job_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigErrors, match="no such job file"):
        etl.load_job(tmp_path / "nope.yaml")


def test_defaults_are_filled_in():
    job = load(GOOD)
    spec = job.spec
    assert (spec.chunk_size, spec.delay, spec.thresholds.background, spec.retry.attempts) == (50_000, 0.0, 10_000, 3)
    assert spec.on_error == "fail"
    assert job.sink.options.mode == "append"


def test_durations_accept_units_and_numbers():
    job = load(GOOD + "delay: 100ms\nretry: {backoff: 2s, max_backoff: 5m}\n")
    assert job.spec.delay == pytest.approx(0.1)
    assert (job.spec.retry.backoff, job.spec.retry.max_backoff) == (2.0, 300.0)
    assert load(GOOD + "delay: 1.5\n").spec.delay == 1.5


def test_schedule_aliases_expand():
    assert load(GOOD + "schedule: '@daily'\n").spec.schedule == "0 0 * * *"


# -- parameters ---------------------------------------------------------------------------


def test_params_are_typed():
    job = load(GOOD, params={"environment": "staging", "start_date": "2026-03-01"})
    assert job.params == {"start_date": dt.date(2026, 3, 1), "environment": "staging"}


def test_a_required_param_missing_is_an_error():
    errors = errors_of(GOOD, params={})
    assert any(
        e.key == "params.environment" and "required parameter; give it with -p environment=VALUE" in e.message
        for e in errors
    )


def test_param_values_are_checked_against_type_and_choices():
    errors = errors_of(GOOD, params={"environment": "prod", "start_date": "yesterday"})
    messages = {e.file: e.message for e in errors}
    assert "is not one of: production, staging" in messages["-p environment=prod"]
    assert 'did you mean "production"?' in messages["-p environment=prod"]
    assert "is not a date" in messages["-p start_date=yesterday"]


def test_an_unknown_param_is_an_error_with_a_suggestion():
    errors = errors_of(GOOD, params={"environment": "production", "start_dat": "2026-01-01"})
    assert any(
        "unknown parameter 'start_dat'" in e.message and 'did you mean "start_date"' in e.message for e in errors
    )


def test_a_whole_template_takes_the_typed_value():
    text = GOOD.replace(
        "environment: {type: string, required: true, choices: [production, staging]}",
        "rows: {type: integer, default: 7}",
    ).replace("rows: 100", 'rows: "{{ params.rows }}"')
    job = load(text, params={"rows": "42"})
    assert job.source.options.rows == 42


def test_a_template_inside_text_takes_the_value_as_text():
    text = GOOD.replace("out/f.duckdb", "out/{{ params.start_date }}/f.duckdb")
    assert load(text).sink.options.path == "out/2026-01-01/f.duckdb"


# -- environment --------------------------------------------------------------------------


def test_variables_come_from_env_files_and_the_environment(tmp_path, monkeypatch):
    (tmp_path / ".env").write_text("TARGET_DIR=from-env\nTABLE=env_table\nOTHER=x\n")
    (tmp_path / ".env.local").write_text("TABLE=local_table\n")
    monkeypatch.setenv("OTHER", "from-process")
    text = GOOD.replace("out/f.duckdb", "${TARGET_DIR}/${OTHER}.duckdb").replace("forecasts", "${TABLE}")
    job = load(text)
    assert job.sink.options.path == "from-env/from-process.duckdb"
    assert job.sink.options.table == "local_table"


def test_defaults_and_escapes_in_references(monkeypatch):
    monkeypatch.setenv("EMPTY_VAR", "")
    text = GOOD.replace("out/f.duckdb", "${UNSET_VAR_1:-a}/${EMPTY_VAR:-b}/${EMPTY_VAR-c}x/$${LITERAL}")
    assert load(text).sink.options.path == "a/b/x/${LITERAL}"


# -- overrides ----------------------------------------------------------------------------


def test_set_overrides_keys_and_list_items():
    job = load(GOOD, sets=["chunk_size=1000", "sink.table=other", "transforms[0].columns.forecast=v2"])
    assert job.spec.chunk_size == 1000
    assert job.sink.options.table == "other"
    assert job.transforms[0].options.columns == {"forecast": "v2"}


def test_a_bad_override_is_located_at_the_option():
    errors = errors_of(GOOD, sets=["sink.tabel=x"])
    assert errors[0].file == "--set sink.tabel=x"
    assert 'did you mean "table"' in errors[0].message


def test_an_override_without_a_value_is_an_error():
    errors = errors_of(GOOD, sets=["chunk_size"])
    assert "expected key.path=value" in errors[0].message


# -- secrets ------------------------------------------------------------------------------


def test_describe_masks_secrets(monkeypatch):
    monkeypatch.setenv("DB_PASSWORD", "hunter2")
    text = GOOD.replace("out/f.duckdb", "${DB_PASSWORD}/f.duckdb")
    described = load(text).describe()
    assert described["sink"]["path"] == "${DB_PASSWORD}/f.duckdb"
    assert "hunter2" not in repr(described)


def test_mask_hides_secret_keys_and_url_passwords():
    data = {"dsn": "postgresql://app:s3cret@db:5432/x", "password": "pw", "token": "t", "table": "x"}
    masked = mask(data)
    assert masked == {"dsn": "postgresql://app:***@db:5432/x", "password": "***", "token": "***", "table": "x"}


def test_errors_show_a_reference_not_its_secret_value(monkeypatch):
    monkeypatch.setenv("SECRET_ROWS", "hunter2")
    errors = errors_of(GOOD.replace("rows: 100", 'rows: "${SECRET_ROWS}"'))
    text = " ".join(str(e) for e in errors)
    assert "${SECRET_ROWS}" in text
    assert "hunter2" not in text


def test_set_values_resolve_references_and_stay_masked(monkeypatch):
    monkeypatch.setenv("OUT_DIR", "secret-dir")
    job = load(GOOD, sets=["sink.path=${OUT_DIR}/x.duckdb"])
    assert job.sink.options.path == "secret-dir/x.duckdb"
    assert job.describe()["sink"]["path"] == "${OUT_DIR}/x.duckdb"
    errors = errors_of(GOOD, sets=["sink.path=${NO_SUCH_VAR_Q}"])
    assert errors[0].file == "--set sink.path=${NO_SUCH_VAR_Q}" and "NO_SUCH_VAR_Q is not set" in errors[0].message


def test_only_whole_words_mark_a_key_secret():
    data = {"author": "ann", "oauth_scope": "read", "client_secret": "s", "db-password": "p", "API_KEY": "k"}
    assert mask(data) == {
        "author": "ann",
        "oauth_scope": "read",
        "client_secret": "***",
        "db-password": "***",
        "API_KEY": "***",
    }


def test_show_keeps_param_declarations_with_the_values_given():
    described = load(GOOD, params={"environment": "staging"}).describe()
    assert described["params"]["environment"] == {
        "type": "string",
        "default": "staging",
        "required": True,
        "description": None,
        "choices": ["production", "staging"],
    }


def test_etl_config_still_gives_every_name_it_gave_before_it_was_split():
    from etl import config, job, models, validation

    names = ["Duration", "IncrementalSpec", "JobSpec", "Kind", "NAME_PATTERN", "ParamSpec", "RetrySpec", "Thresholds"]
    names += ["Job", "StageConfig", "Registry", "StageType", "validate"]
    homes = {name: getattr(m, name) for m in (models, job, validation) for name in m.__all__}
    assert {name: getattr(config, name) for name in names} == {name: homes[name] for name in names}
    assert isinstance(load(GOOD), config.Job)
