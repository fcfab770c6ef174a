"""Queue settings from the environment (etl/settings.py), and how the ``etl`` command reports a
queue it can't use: one line, the right exit code, no traceback, no password.

The CLI tests that talk to Redis use the real one at 127.0.0.1:6379 and fail (not skip) when
it is not there.
"""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit
from uuid import uuid4

import pytest
from redis.connection import parse_url

from etl.errors import UsageError
from etl.kv import RedisKV
from etl.settings import QueueSettings, queue_settings

REDIS = "127.0.0.1:6379"

# -- the embedded default -------------------------------------------------------------------


def test_the_default_is_embedded_in_etl_home(tmp_path):
    settings = queue_settings({"ETL_HOME": str(tmp_path / "home")})
    assert (settings.kind, settings.directory, settings.url, settings.origin) == (
        "embedded",
        tmp_path / "home",
        "",
        "default",
    )
    assert (settings.name, settings.secret) == ("etl", None)
    assert settings.display == f"embedded queue in {tmp_path / 'home'}"
    assert queue_settings({}).directory == Path(".etl")  # without ETL_HOME


def test_the_process_environment_is_read_by_default(monkeypatch, tmp_path):
    for name in ("ETL_QUEUE_URL", "REDIS_HOST", "ETL_QUEUE_NAME", "ETL_SECRET_KEY"):
        monkeypatch.delenv(name, raising=False)
    settings = queue_settings()
    assert (settings.kind, settings.directory) == ("embedded", tmp_path / ".etl")  # ETL_HOME of conftest
    monkeypatch.setenv("ETL_QUEUE_URL", "redis://cache:6379/1")
    assert queue_settings().url == "redis://cache:6379/1"


def test_queue_name_and_secret():
    settings = queue_settings({"ETL_QUEUE_NAME": "teama", "ETL_SECRET_KEY": "k3y", "ETL_QUEUE_URL": "redis://h/0"})
    assert (settings.name, settings.secret) == ("teama", "k3y")
    settings = queue_settings({"ETL_QUEUE_NAME": "", "ETL_SECRET_KEY": ""})
    assert (settings.name, settings.secret) == ("etl", None)


@pytest.mark.parametrize("name", ["team-a", "Team", "a.b", "é"])
def test_a_queue_name_huey_would_mangle_is_refused(name):
    # Huey keeps only lowercase letters and digits: "team-a" would share "teama"'s queue.
    with pytest.raises(UsageError, match="ETL_QUEUE_NAME: .* must be lowercase letters and digits"):
        queue_settings({"ETL_QUEUE_NAME": name})


@pytest.mark.parametrize(
    ("value", "directory"),
    [
        ("/srv/etl-state", Path("/srv/etl-state")),
        ("state/queue", Path("state/queue")),
        ("  /srv/etl-state \n", Path("/srv/etl-state")),
        ("file:///srv/etl-state", Path("/srv/etl-state")),
        ("file:///srv/etl%20state", Path("/srv/etl state")),
        ("FILE:///srv/x", Path("/srv/x")),
    ],
)
def test_a_path_or_file_url_is_the_embedded_queue_in_that_directory(value, directory, tmp_path):
    settings = queue_settings({"ETL_QUEUE_URL": value, "ETL_HOME": str(tmp_path), "REDIS_HOST": "ignored"})
    assert (settings.kind, settings.directory, settings.origin) == ("embedded", directory, "ETL_QUEUE_URL")
    assert settings.display == f"embedded queue in {directory}"


# -- Redis URLs -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "redis://localhost",
        "redis://localhost:6379/0",
        "redis://10.0.0.5:6380/15",
        "redis://user:pw@cache.internal:6379/2",
        "redis://cache:6379/0?db=3",
        "rediss://:pw@cache.example.com:6380/1",
        "rediss://cache.example.com",
        "unix:///run/redis/redis.sock",
        "unix:///run/redis/redis.sock?db=4",
    ],
)
def test_redis_urls_are_taken_as_they_are(url):
    settings = queue_settings({"ETL_QUEUE_URL": f" {url} ", "REDIS_HOST": "ignored"})
    assert (settings.kind, settings.url, settings.origin) == ("redis", url, "ETL_QUEUE_URL")
    parse_url(settings.url)  # and redis-py can use it


# -- REDIS_* variables -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "url"),
    [
        ({"REDIS_HOST": "cache"}, "redis://cache:6379/0"),
        ({"REDIS_HOST": " cache ", "REDIS_PORT": " 6380 ", "REDIS_DB": " 3 "}, "redis://cache:6380/3"),
        ({"REDIS_HOST": "cache", "REDIS_PASSWORD": "pw"}, "redis://:pw@cache:6379/0"),
        ({"REDIS_HOST": "cache", "REDIS_USERNAME": "etl", "REDIS_PASSWORD": "pw"}, "redis://etl:pw@cache:6379/0"),
        ({"REDIS_HOST": "cache", "REDIS_USER": "etl", "REDIS_PASSWORD": "pw"}, "redis://etl:pw@cache:6379/0"),
        ({"REDIS_HOST": "cache", "REDIS_USERNAME": "etl"}, "redis://etl:@cache:6379/0"),
        ({"REDIS_HOST": "cache", "REDIS_TLS": "1"}, "rediss://cache:6379/0"),
        ({"REDIS_HOST": "cache", "REDIS_TLS": "true"}, "rediss://cache:6379/0"),
        ({"REDIS_HOST": "cache", "REDIS_TLS": "YES"}, "rediss://cache:6379/0"),
        ({"REDIS_HOST": "cache", "REDIS_TLS": "0"}, "redis://cache:6379/0"),
        ({"REDIS_HOST": "cache", "REDIS_TLS": "no"}, "redis://cache:6379/0"),
    ],
)
def test_redis_variables(env, url, tmp_path):
    settings = queue_settings({**env, "ETL_HOME": str(tmp_path)})
    assert (settings.kind, settings.url, settings.origin) == ("redis", url, "REDIS_HOST")
    parse_url(settings.url)


def test_a_password_with_special_characters_is_quoted():
    password = "p@ss:w/rd"
    settings = queue_settings(
        {"REDIS_HOST": "cache", "REDIS_PORT": "6380", "REDIS_USERNAME": "e t@l", "REDIS_PASSWORD": password}
    )
    assert settings.url == "redis://e%20t%40l:p%40ss%3Aw%2Frd@cache:6380/0"
    parts = urlsplit(settings.url)
    assert (parts.hostname, parts.port) == ("cache", 6380)
    parsed = parse_url(settings.url)  # what redis-py will connect with
    assert (parsed["host"], parsed["port"], parsed["db"]) == ("cache", 6380, 0)
    assert (parsed["username"], parsed["password"]) == ("e t@l", password)


# -- display ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "display"),
    [
        ({"ETL_QUEUE_URL": "redis://user:s3cret@cache:6379/0"}, "redis://user:***@cache:6379/0"),
        ({"ETL_QUEUE_URL": "redis://:s3cret@cache:6379/0"}, "redis://:***@cache:6379/0"),
        ({"ETL_QUEUE_URL": "rediss://u:s3cret@cache/1"}, "rediss://u:***@cache/1"),
        ({"ETL_QUEUE_URL": "redis://cache:6379/0"}, "redis://cache:6379/0"),
        ({"ETL_QUEUE_URL": "redis://user@cache:6379/0"}, "redis://user@cache:6379/0"),
        ({"REDIS_HOST": "cache", "REDIS_PASSWORD": "p@ss:w/rd"}, "redis://:***@cache:6379/0"),
        ({"REDIS_HOST": "cache", "REDIS_USERNAME": "etl", "REDIS_PASSWORD": "s3cret"}, "redis://etl:***@cache:6379/0"),
    ],
)
def test_display_masks_the_password(env, display):
    settings = queue_settings(env)
    assert settings.display == display
    for secret in ("s3cret", "p@ss", "p%40ss"):
        assert secret not in settings.display


def test_queue_settings_are_frozen():
    settings = queue_settings({"REDIS_HOST": "cache"})
    assert isinstance(settings, QueueSettings)
    with pytest.raises(AttributeError):
        settings.url = "redis://elsewhere"  # type: ignore[misc]


# -- errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "variable", "says"),
    [
        ({"ETL_QUEUE_URL": "reddis://localhost:6379/0"}, "ETL_QUEUE_URL", ["'reddis'", 'did you mean "redis"?']),
        ({"ETL_QUEUE_URL": "rediss2://localhost"}, "ETL_QUEUE_URL", ["unknown scheme", "did you mean"]),
        ({"ETL_QUEUE_URL": "http://localhost:6379"}, "ETL_QUEUE_URL", ["unknown scheme 'http'", "redis://"]),
        ({"ETL_QUEUE_URL": "redis://localhost:63x9/0"}, "ETL_QUEUE_URL", ["port", "not a number"]),
        ({"ETL_QUEUE_URL": "redis://localhost:99999/0"}, "ETL_QUEUE_URL", ["port"]),
        ({"ETL_QUEUE_URL": "redis:///0"}, "ETL_QUEUE_URL", ["no host"]),
        ({"ETL_QUEUE_URL": "redis://:pw@:6379/0"}, "ETL_QUEUE_URL", ["no host"]),
        ({"ETL_QUEUE_URL": "rediss://"}, "ETL_QUEUE_URL", ["no host"]),
        ({"ETL_QUEUE_URL": "redis://localhost:6379/zero"}, "ETL_QUEUE_URL", ["database", "must be a number"]),
        ({"ETL_QUEUE_URL": "redis://localhost:6379/0?db=one"}, "ETL_QUEUE_URL", ["?db=", "number"]),
        ({"ETL_QUEUE_URL": "unix://"}, "ETL_QUEUE_URL", ["socket's path"]),
        ({"REDIS_HOST": "cache", "REDIS_PORT": "63x9"}, "REDIS_PORT", ["'63x9'", "port number"]),
        ({"REDIS_HOST": "cache", "REDIS_PORT": "-1"}, "REDIS_PORT", ["port number"]),
        ({"REDIS_HOST": "cache", "REDIS_DB": "zero"}, "REDIS_DB", ["'zero'", "database number"]),
        # Sentinel
        ({"ETL_QUEUE_URL": "redis+sentinel://s1:26379"}, "ETL_QUEUE_URL", ["names no service", "mymaster"]),
        ({"ETL_QUEUE_URL": "redis+sentinel://s1:26379/"}, "ETL_QUEUE_URL", ["names no service"]),
        ({"ETL_QUEUE_URL": "redis+sentinel:///mymaster"}, "ETL_QUEUE_URL", ["'' in", "host:port"]),
        ({"ETL_QUEUE_URL": "redis+sentinel://s1:26379,,s2/m"}, "ETL_QUEUE_URL", ["host:port"]),
        ({"ETL_QUEUE_URL": "redis+sentinel://s1:2637x/m"}, "ETL_QUEUE_URL", ["'s1:2637x'", "host:port"]),
        ({"ETL_QUEUE_URL": "redis+sentinel://s1:99999/m"}, "ETL_QUEUE_URL", ["'s1:99999'"]),
        ({"ETL_QUEUE_URL": "redis+sentinel://s1/m/zero"}, "ETL_QUEUE_URL", ["only a database number"]),
        ({"ETL_QUEUE_URL": "redis+sentinel://s1/m/0/x"}, "ETL_QUEUE_URL", ["only a database number"]),
        ({"ETL_QUEUE_URL": "redis+sentinel://s1/m?ssl_ca_certs=/x"}, "ETL_QUEUE_URL", ["unknown option", "none"]),
        ({"ETL_QUEUE_URL": "rediss+sentinel://s1/m?db=1"}, "ETL_QUEUE_URL", ["unknown option 'db'", "ssl_ca_certs"]),
        ({"ETL_QUEUE_URL": "redis+sentinal://s1/m"}, "ETL_QUEUE_URL", ['did you mean "redis+sentinel"?']),
        ({"ETL_QUEUE_URL": "redis+cluster://n1:7000"}, "ETL_QUEUE_URL", ["Redis Cluster", "not supported", "Sentinel"]),
        ({"REDIS_SENTINELS": "s1:26379"}, "REDIS_SENTINEL_SERVICE", ["missing", "mymaster"]),
        ({"REDIS_SENTINELS": "s1:x", "REDIS_SENTINEL_SERVICE": "m"}, "REDIS_SENTINELS", ["'s1:x'"]),
        ({"REDIS_SENTINELS": "s1", "REDIS_SENTINEL_SERVICE": "m", "REDIS_DB": "x"}, "REDIS_DB", ["database number"]),
    ],
)
def test_a_malformed_setting_is_a_usage_error_naming_the_variable(env, variable, says):
    with pytest.raises(UsageError) as caught:
        queue_settings(env)
    message = str(caught.value)
    assert caught.value.exit_code == 2
    assert message.startswith(f"{variable}:"), message
    for text in says:
        assert text in message, message
    assert "\n" not in message


@pytest.mark.parametrize(
    "url",
    ["redis://user:s3cret@localhost:63x9/0", "redis://user:s3cret@localhost:6379/zero", "redis://:s3cret@/0"],
)
def test_an_error_about_a_url_never_shows_its_password(url):
    with pytest.raises(UsageError) as caught:
        queue_settings({"ETL_QUEUE_URL": url})
    assert "s3cret" not in str(caught.value)
    assert "***" in str(caught.value)


@pytest.mark.parametrize(
    "url", ["REDIS://localhost:6379/0", "Rediss://cache:6380/0", "unix:///run/redis/redis.sock?db=abc"]
)
def test_every_url_accepted_is_one_redis_py_can_use(url):
    try:
        settings = queue_settings({"ETL_QUEUE_URL": url})
    except UsageError as exc:  # refusing it is fine too, with a usage error
        assert str(exc).startswith("ETL_QUEUE_URL:")
    else:
        parse_url(settings.url)


@pytest.mark.parametrize("host", ["localhost:6380", "::1"])
def test_redis_host_is_validated_or_made_usable(host):
    try:
        settings = queue_settings({"REDIS_HOST": host})
    except UsageError as exc:
        assert str(exc).startswith("REDIS_HOST:")
    else:
        assert parse_url(settings.url)["host"] in ("localhost", "::1")


def test_redis_kv_never_shows_a_password_in_its_messages():
    kv = RedisKV("redis://etl:s3cret@127.0.0.1:1/0")
    try:
        assert "s3cret" not in kv.display
    finally:
        kv.close()


# -- Sentinel ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "addresses", "service", "db", "user", "password"),
    [
        ("redis+sentinel://s1:26379/mymaster", (("s1", 26379),), "mymaster", 0, None, None),
        (
            "redis+sentinel://s1,s2:26380,s3/mymaster/3",
            (("s1", 26379), ("s2", 26380), ("s3", 26379)),
            "mymaster",
            3,
            None,
            None,
        ),
        ("redis+sentinel://etl:p%40ss@s1:1,s2:2/prod/0", (("s1", 1), ("s2", 2)), "prod", 0, "etl", "p@ss"),
        (
            "redis+sentinel://:pw@[::1]:26379,10.0.0.7/etl-ha/1",
            (("::1", 26379), ("10.0.0.7", 26379)),
            "etl-ha",
            1,
            None,
            "pw",
        ),
        ("REDIS+SENTINEL://s1/m%20x", (("s1", 26379),), "m x", 0, None, None),
    ],
)
def test_sentinel_urls(url, addresses, service, db, user, password):
    settings = queue_settings({"ETL_QUEUE_URL": url, "REDIS_HOST": "ignored"})
    sentinel = settings.sentinel
    assert (settings.kind, settings.origin) == ("redis", "ETL_QUEUE_URL")
    assert (sentinel.addresses, sentinel.service, sentinel.db) == (addresses, service, db)
    assert (sentinel.username, sentinel.password, sentinel.tls) == (user, password, False)
    assert settings.redis.wait_replicas == 1  # with Sentinel, changes wait for a replica by default
    if password:
        assert password not in settings.display and ":***@" in settings.display


def test_sentinel_variables_make_the_same_url():
    env = {
        "REDIS_SENTINELS": " s1:26379, s2:26380 ",
        "REDIS_SENTINEL_SERVICE": "mymaster",
        "REDIS_USERNAME": "etl",
        "REDIS_PASSWORD": "p@ss",
        "REDIS_DB": "2",
        "REDIS_HOST": "ignored: REDIS_SENTINELS wins",
        "REDIS_SENTINEL_USERNAME": "watcher",
        "REDIS_SENTINEL_PASSWORD": "sentinel-pw",
    }
    settings = queue_settings(env)
    assert settings.origin == "REDIS_SENTINELS"
    assert settings.url == "redis+sentinel://etl:p%40ss@s1:26379,s2:26380/mymaster/2"
    assert settings.display == "redis+sentinel://etl:***@s1:26379,s2:26380/mymaster/2"
    sentinel = settings.sentinel
    assert (sentinel.addresses, sentinel.service, sentinel.db) == ((("s1", 26379), ("s2", 26380)), "mymaster", 2)
    assert (sentinel.username, sentinel.password) == ("etl", "p@ss")
    assert (sentinel.sentinel_username, sentinel.sentinel_password) == ("watcher", "sentinel-pw")
    assert "sentinel-pw" not in repr(settings) and "p@ss" not in repr(sentinel)
    tls = queue_settings({**env, "REDIS_TLS": "1"})
    assert tls.url.startswith("rediss+sentinel://") and tls.sentinel.tls


def test_a_tls_sentinel_url_takes_tls_options():
    url = "rediss+sentinel://s1:26379/mymaster/0?ssl_ca_certs=/etc/ca.pem&ssl_cert_reqs=required"
    settings = queue_settings({"ETL_QUEUE_URL": url})
    assert settings.sentinel.tls
    assert dict(settings.sentinel.tls_options) == {"ssl_ca_certs": "/etc/ca.pem", "ssl_cert_reqs": "required"}


def test_an_error_about_a_sentinel_url_never_shows_its_password():
    for url in ("redis+sentinel://u:s3cret@s1:x/m", "redis+sentinel://u:s3cret@s1/", "redis+sentinel://:s3cret@s1/m/z"):
        with pytest.raises(UsageError) as caught:
            queue_settings({"ETL_QUEUE_URL": url})
        assert "s3cret" not in str(caught.value) and "***" in str(caught.value)


@pytest.mark.parametrize(
    ("url", "display"),
    [
        ("redis://u:pa/ss@cache:6379/0", "redis://u:***@cache:6379/0"),
        ("redis://u:p@ss@cache:6379/0", "redis://u:***@cache:6379/0"),
        ("rediss://u:pw@cache/0?ssl_ca_certs=/a@b", "rediss://u:***@cache/0?ssl_ca_certs=/a@b"),
    ],
)
def test_display_masks_a_password_with_unquoted_characters(url, display):
    assert QueueSettings("redis", url=url).display == display


def test_every_sentinel_url_accepted_makes_a_pool_without_connecting():
    from etl.redisconn import Connector

    for url in ("redis+sentinel://s1,s2:2/m/1", "rediss+sentinel://u:p@s1/m?ssl_check_hostname=false"):
        pool = Connector(queue_settings({"ETL_QUEUE_URL": url})).pool()
        assert pool.service_name == "m"
        assert pool.connection_kwargs["db"] == (1 if "/m/1" in url else 0)
        pool.disconnect()


# -- ETL_REDIS_*: how long Redis calls may take --------------------------------------------------


def test_redis_timings_have_bounded_defaults():
    options = queue_settings({"ETL_QUEUE_URL": "redis://cache/0"}).redis
    assert (options.connect, options.timeout, options.retry) == (5, 10, 10)
    assert options.connect <= 60
    assert (options.wait_replicas, options.wait) == (0, 1)  # no replicas to wait for without Sentinel


@pytest.mark.parametrize(
    ("variable", "value", "says"),
    [
        ("ETL_REDIS_CONNECT_SECONDS", "five", "'five' is not a number of seconds (more than 0)"),
        ("ETL_REDIS_CONNECT_SECONDS", "0", "more than 0"),
        ("ETL_REDIS_TIMEOUT_SECONDS", "-1", "more than 0"),
        ("ETL_REDIS_TIMEOUT_SECONDS", "inf", "not a number of seconds"),
        ("ETL_REDIS_RETRY_SECONDS", "-3", "(0 or more)"),
        ("ETL_REDIS_RETRY_SECONDS", "nan", "not a number of seconds"),
        ("ETL_REDIS_WAIT_SECONDS", "0", "more than 0"),
        ("ETL_REDIS_WAIT_REPLICAS", "one", "not a number of replicas"),
        ("ETL_REDIS_WAIT_REPLICAS", "-1", "not a number of replicas"),
    ],
)
def test_a_malformed_redis_timing_is_a_usage_error(variable, value, says):
    with pytest.raises(UsageError) as caught:
        queue_settings({"ETL_QUEUE_URL": "redis://cache/0", variable: value})
    assert str(caught.value).startswith(f"{variable}: "), caught.value
    assert says in str(caught.value)


# -- through the etl command -------------------------------------------------------------------


def _one_line(proc) -> str:
    output = proc.stdout + proc.stderr
    assert "Traceback" not in output, output
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert proc.stdout == "", proc.stdout
    return lines[0]


@pytest.fixture(scope="module")
def real_redis():
    """A client of the real Redis (database 15); fails, never skips, when there is none."""
    import redis

    client = redis.Redis.from_url(f"redis://{REDIS}/15", socket_connect_timeout=2, socket_timeout=5)
    try:
        client.ping()
    except redis.AuthenticationError:
        pass  # it has a password: the tests that need more say so
    except Exception as exc:
        pytest.fail(f"these tests need the Redis at {REDIS}, which is not reachable: {exc}", pytrace=False)
    yield client
    client.close()


@pytest.fixture
def password_urls(real_redis):
    """URLs of the real Redis with a wrong password and, when known, the right one: an ACL
    user made for the test (deleted afterwards) when the Redis has no password; its default
    user otherwise."""
    import redis

    try:
        real_redis.ping()
    except redis.AuthenticationError:
        yield f"redis://default:wrongpw@{REDIS}/15", None
        return
    user = f"etltest-{uuid4().hex[:8]}"
    assert real_redis.execute_command("ACL", "SETUSER", user, "on", ">rightpw", "~*", "+@all") == b"OK"
    try:
        yield f"redis://{user}:wrongpw@{REDIS}/15", f"redis://{user}:rightpw@{REDIS}/15"
    finally:
        real_redis.execute_command("ACL", "DELUSER", user)


def test_cli_an_unknown_scheme_is_one_line_and_exit_2(cli):
    proc = cli("runs", env={"ETL_QUEUE_URL": "reddis://localhost"})
    assert proc.returncode == 2, proc.stderr
    line = _one_line(proc)
    assert "ETL_QUEUE_URL" in line
    assert 'did you mean "redis"?' in line


def test_cli_a_bad_redis_timing_is_one_line_and_exit_2(cli):
    proc = cli("runs", env={"ETL_QUEUE_URL": "redis://127.0.0.1:6379/0", "ETL_REDIS_TIMEOUT_SECONDS": "soon"})
    assert proc.returncode == 2, proc.stderr
    assert _one_line(proc).startswith("error: ETL_REDIS_TIMEOUT_SECONDS:")


def test_cli_a_bad_redis_port_variable_is_one_line_and_exit_2(cli):
    proc = cli("runs", env={"REDIS_HOST": "127.0.0.1", "REDIS_PORT": "six"})
    assert proc.returncode == 2, proc.stderr
    assert _one_line(proc).startswith("error: REDIS_PORT:")


def test_cli_redis_not_listening_is_one_clear_line(cli):
    proc = cli("runs", env={"ETL_QUEUE_URL": "redis://127.0.0.1:1/0"})
    assert proc.returncode not in (0, 2), proc.stderr
    line = _one_line(proc)
    assert "cannot reach Redis" in line
    assert "127.0.0.1:1" in line


def test_cli_a_wrong_password_is_one_line_and_exit_2(cli, password_urls):
    wrong, right = password_urls
    if right is not None:  # the user works with its password: it is the password that is refused
        ok = cli("runs", env={"ETL_QUEUE_URL": right})
        assert ok.returncode == 0, ok.stderr
    proc = cli("runs", env={"ETL_QUEUE_URL": wrong})
    assert proc.returncode == 2, proc.stderr
    line = _one_line(proc)
    assert "password" in line.lower() or "auth" in line.lower(), line
    assert "wrongpw" not in proc.stdout + proc.stderr  # masked
    assert "***" in line


def test_a_wrong_password_is_refused_at_once(password_urls):
    wrong, _ = password_urls
    outcome: list[BaseException | None] = []
    kv = RedisKV(wrong, display="the test Redis")

    def ping() -> None:
        try:
            kv.ping()
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    started = time.monotonic()
    thread = threading.Thread(target=ping, daemon=True)  # left behind if it hangs on retrying
    thread.start()
    thread.join(timeout=3)
    assert outcome, f"no answer after {time.monotonic() - started:.1f} s"
    assert isinstance(outcome[0], UsageError)


@pytest.mark.parametrize(
    ("name", "value", "says"),
    [
        ("ETL_LEASE_SECONDS", "abc", "not a number of seconds (more than 0)"),
        ("ETL_REAPER_SECONDS", "0", "not a number of seconds (more than 0)"),
        ("ETL_HEARTBEAT_SECONDS", "inf", "not a number of seconds"),
        ("ETL_GRACE_SECONDS", "-1", "not a number of seconds (0 or more)"),
        ("ETL_KEEP_RUNS", "1.5", "not a whole number"),
    ],
)
def test_a_bad_timing_setting_is_a_usage_error_naming_it(name, value, says):
    from etl.worker import WorkerOptions

    with pytest.raises(UsageError, match=rf"^{name}: '{value}' is .*{re.escape(says)}"):
        WorkerOptions.from_env(env={name: value})


def test_timing_settings_are_read_and_a_bad_one_exits_2_without_a_traceback(cli):
    from etl.worker import WorkerOptions

    options = WorkerOptions.from_env(env={"ETL_LEASE_SECONDS": "2.5", "ETL_GRACE_SECONDS": "0", "ETL_KEEP_RUNS": "7"})
    assert (options.lease, options.grace, options.keep_runs) == (2.5, 0.0, 7)
    proc = cli("workers", env={"ETL_LEASE_SECONDS": "15s"})
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert (
        _one_line(proc) == "error: ETL_LEASE_SECONDS: '15s' is not a number of seconds (more than 0); expected e.g. 15"
    )
