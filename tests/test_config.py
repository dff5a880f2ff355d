"""Config loading: the original etcd-backup's keys and defaults, etcdutil's etcd section, one-line errors."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from operator import attrgetter
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import redis
import yaml
from pyrage import x25519

from common.config import (
    Config,
    ConfigError,
    effective_config,
    load_config,
    parse_config,
    parse_duration,
    split_listen,
)
from common.queue import connect
from common.startup import prepare_backup_dir
from harness.files import write_private
from harness.in_process import ConfigFactory
from harness.pki import certificate_and_key
from harness.processes import BIN_DIR, free_port
from harness.report import Report
from harness.servers import RedisServer

PEM, KEY_PEM = certificate_and_key()
"""A certificate and its key: TLS files are parsed at load (common.config.tls_files)."""


def parse(document: Any, environ: dict[str, str] | None = None) -> Config:
    return parse_config(document, environ or {})


def test_original_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # backup-dir defaults to /etcd-backup/ (created at start-up if missing); keep this test away from it.
    config = parse({"etcd": {}, "backup-dir": str(tmp_path / "b")})
    assert config.listen == "0.0.0.0:8080"
    assert config.rotate == 14
    assert config.etcd.endpoints == ("http://127.0.0.1:2379",)
    assert config.etcd.timeout == 2.0
    assert config.backup_timeout == 300.0
    assert config.redis_url is None
    assert config.gzip_level == 1
    import common.config as module

    assert module.DEFAULT_BACKUP_DIR == "/etcd-backup/"


def test_all_keys(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text(PEM)
    config = parse({
        "backup-dir": str(tmp_path / "b"),
        "listen": "[::1]:9090",
        "rotate": 3,
        "redis-url": "redis://localhost:6379/2",
        "backup-timeout": "1m30s",
        "gzip-level": 6,
        "etcd": {
            "endpoints": ["https://10.0.0.1:2379", "https://10.0.0.2:2379"],
            "prefix": "/app/",
            "timeout": "500ms",
            "username": "root",
            "password": "secret",
            "tls-ca-file": str(ca),
            "tls-cert": PEM,
            "tls-key": str(write_private(tmp_path / "key.pem", KEY_PEM)),
        },
    })
    assert split_listen(config.listen) == ("::1", 9090)
    assert config.rotate == 3 and config.gzip_level == 6 and config.backup_timeout == 90.0
    assert config.redis_url == "redis://localhost:6379/2"
    assert config.etcd.timeout == 0.5 and config.etcd.prefix == "/app/"
    assert config.etcd.tls_ca == PEM.encode() and config.etcd.tls_cert == PEM.encode()
    assert config.etcd.tls_key == KEY_PEM.encode()  # a value that is not PEM is a path
    assert "secret" not in repr(config) and "BEGIN" not in repr(config)


def test_redis_url_from_environment(tmp_path: Path) -> None:
    document = {"etcd": {}, "backup-dir": str(tmp_path)}
    assert parse(document, {"REDIS_URL": "redis://r:6379/0"}).redis_url == "redis://r:6379/0"
    document["redis-url"] = "redis://file:6379/0"
    assert parse(document, {"REDIS_URL": "redis://r:6379/0"}).redis_url == "redis://file:6379/0"


@pytest.mark.parametrize(("text", "seconds"), [
    ("2s", 2.0), ("500ms", 0.5), ("1m30s", 90.0), ("1h", 3600.0), ("1.5s", 1.5), ("100us", 1e-4), ("0", 0.0),
])
def test_go_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "2", "s", "2 s", "2sec", "-1s", "1d"])
def test_bad_go_durations(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


@pytest.mark.parametrize(("document", "key", "words"), [
    ({}, "etcd", "is required"),
    ([], "config", "expected a mapping"),
    ({"etcd": {}, "rotat": 3}, "rotat", "unknown key"),
    ({"etcd": {"endpoint": "x"}}, "etcd.endpoint", "unknown key"),
    ({"etcd": {}, "rotate": -1}, "rotate", "at least 1"),
    ({"etcd": {}, "rotate": "14"}, "rotate", "expected an integer"),
    ({"etcd": {}, "rotate": True}, "rotate", "expected an integer"),
    ({"etcd": {}, "listen": 8080}, "listen", "expected a string"),
    ({"etcd": {}, "listen": "localhost"}, "listen", "HOST:PORT"),
    ({"etcd": {}, "gzip-level": 10}, "gzip-level", "at most 9"),
    ({"etcd": {}, "backup-timeout": "5 minutes"}, "backup-timeout", "invalid duration"),
    ({"etcd": {}, "backup-timeout": "0s"}, "backup-timeout", "longer than zero"),
    ({"etcd": {"timeout": "2"}}, "etcd.timeout", "invalid duration"),
    ({"etcd": {"timeout": 2}}, "etcd.timeout", "expected a string"),
    ({"etcd": {"endpoints": []}}, "etcd.endpoints", "non-empty list"),
    ({"etcd": {"endpoints": ["127.0.0.1:2379"]}}, "etcd.endpoints", "http:// or https://"),
    ({"etcd": {"endpoints": ["http://h:port"]}}, "etcd.endpoints", "bad port"),
    ({"etcd": {"username": "root"}}, "etcd.password", "together"),
    ({"etcd": {"tls-ca-file": "/nonexistent/ca.pem"}}, "etcd.tls-ca-file", "cannot read /nonexistent/ca.pem"),
    ({"etcd": {"tls-ca": "/nonexistent/ca.pem"}}, "etcd.tls-ca", "cannot read"),
    ({"etcd": {"tls-ca": PEM, "tls-ca-file": "/x"}}, "etcd.tls-ca", "not both"),
    ({"etcd": {"tls-cert": PEM}}, "etcd.tls-key", "together"),
    ({"etcd": {}, "redis-url": "http://r"}, "redis-url", "redis://"),
    ({"etcd": "http://127.0.0.1:2379"}, "etcd", "expected a mapping"),
    ({"etcd": {}, "etcd-bin": "etcd"}, "etcd-bin", "absolute path"),
    ({"etcd": {}, "etcd-bin": ["/usr/bin/etcd", "/nonexistent/etcd"]}, "etcd-bin", "/nonexistent/etcd is not an exec"),
    ({"etcd": {}, "etcd-bin": "/etc/passwd"}, "etcd-bin", "not an executable file"),
    ({"etcd": {}, "etcd-bin": []}, "etcd-bin", "non-empty list"),
])
def test_bad_config_names_the_key(document: Any, key: str, words: str, tmp_path: Path) -> None:
    if isinstance(document, dict) and "backup-dir" not in document:
        document["backup-dir"] = str(tmp_path / "b")
    with pytest.raises(ConfigError) as info:
        parse(document)
    assert info.value.key == key
    assert str(info.value).startswith(f"{key}: ")
    assert words in str(info.value)
    assert "\n" not in str(info.value)


def test_parsing_creates_no_backup_dir(tmp_path: Path) -> None:
    config = parse({"etcd": {}, "backup-dir": str(tmp_path / "b")})
    assert config.backup_dir == tmp_path / "b" and not config.backup_dir.exists()
    prepare_backup_dir(config)  # at start-up
    assert config.backup_dir.is_dir() and config.backup_dir.stat().st_mode & 0o777 == 0o700


def test_backup_dir_that_cannot_be_created() -> None:
    with pytest.raises(ConfigError) as info:
        prepare_backup_dir(parse({"etcd": {}, "backup-dir": "/proc/etcd-backup"}))
    assert info.value.key == "backup-dir"
    assert str(info.value).startswith("backup-dir: ")
    assert "cannot create" in str(info.value)
    assert "\n" not in str(info.value)


def test_unwritable_backup_dir(tmp_path: Path) -> None:
    target = tmp_path / "file"
    target.write_text("")
    with pytest.raises(ConfigError, match="^backup-dir: .* is not a directory$"):
        prepare_backup_dir(parse({"etcd": {}, "backup-dir": str(target)}))


def test_unreadable_and_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="^config: cannot read"):
        load_config(tmp_path / "missing.yml")
    bad = tmp_path / "bad.yml"
    bad.write_text("etcd: [unclosed\n")
    with pytest.raises(ConfigError, match="^config: .* is not valid YAML"):
        load_config(bad)


@pytest.mark.parametrize("command", [[], ["worker"]])
def test_cli_exits_2_with_one_line(tmp_path: Path, command: list[str]) -> None:
    path = tmp_path / "config.yml"
    path.write_text(yaml.safe_dump({"etcd": {}, "rotate": -3, "backup-dir": str(tmp_path)}))
    result = subprocess.run([str(BIN_DIR / "etcd-backup"), *command, "--config", str(path)],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr == f"etcd-backup: bad config {path}: rotate: must be at least 1, got -3\n"


def test_worker_process_needs_redis(tmp_path: Path) -> None:
    path = tmp_path / "config.yml"
    path.write_text(yaml.safe_dump({"etcd": {}, "backup-dir": str(tmp_path)}))
    result = subprocess.run([str(BIN_DIR / "etcd-backup"), "worker", "--config", str(path)],
                            env={"PATH": str(BIN_DIR)}, capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert result.stderr == ("etcd-backup: redis-url: required when a worker runs apart from the API "
                             "(set redis-url in the config or REDIS_URL)\n")


def test_web_process_needs_redis(tmp_path: Path) -> None:
    path = tmp_path / "config.yml"
    path.write_text(yaml.safe_dump({"etcd": {}, "backup-dir": str(tmp_path)}))
    result = subprocess.run([str(BIN_DIR / "gunicorn"), "--config", "python:api.gunicorn_conf"],
                            env={"ETCD_BACKUP_CONFIG": str(path), "PATH": str(BIN_DIR)},
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "etcd-backup: redis-url: required when the API runs apart from its workers "
        "(set redis-url in the config or REDIS_URL)"
    ]


# Passwords with the characters that cut a URL short. The ids name the character: a test's tmp_path (and so
# the config path in the error line) must not hold the password.
SECRET_PASSWORDS = {"hash": "Xk7#Pq2Vn9", "slash": "Xk7/Pq2Vn9", "question": "Xk7?Pq2Vn9"}


def shown_secret(secret: str, text: str) -> str | None:
    """The longest piece (3 characters or more) of `secret` that `text` shows, if any."""
    pieces = (secret[start:end] for start in range(len(secret)) for end in range(len(secret), start + 2, -1))
    return next((piece for piece in pieces if piece in text), None)


@pytest.mark.parametrize("secret", SECRET_PASSWORDS.values(), ids=SECRET_PASSWORDS.keys())
@pytest.mark.parametrize("from_environment", [False, True], ids=["redis-url", "REDIS_URL"])
def test_redis_password_that_cuts_the_url_is_one_line_without_it(tmp_path: Path, secret: str,
                                                                 from_environment: bool) -> None:
    url = f"redis://:{secret}@127.0.0.1:6379/0"
    document: dict[str, Any] = {"etcd": {}, "backup-dir": str(tmp_path / "b")}
    if not from_environment:
        document["redis-url"] = url
    with pytest.raises(ConfigError) as info:
        parse(document, {"REDIS_URL": url} if from_environment else {})
    assert info.value.key == ("REDIS_URL" if from_environment else "redis-url")
    assert "percent-encode" in str(info.value) and "\n" not in str(info.value)
    assert shown_secret(secret, str(info.value)) is None, str(info.value)


COMMANDS = {"all-in-one": ["etcd-backup"], "worker": ["etcd-backup", "worker"],
            "scheduler": ["etcd-backup", "scheduler"], "web": ["gunicorn", "--config", "python:api.gunicorn_conf"]}


@pytest.mark.parametrize("secret", SECRET_PASSWORDS.values(), ids=SECRET_PASSWORDS.keys())
@pytest.mark.parametrize("process", COMMANDS)
def test_every_process_refuses_an_unencoded_redis_password(tmp_path: Path, process: str, secret: str,
                                                           report: Report) -> None:
    path = tmp_path / "config.yml"
    path.write_text(yaml.safe_dump({"etcd": {}, "backup-dir": str(tmp_path / "b"), "listen": f"127.0.0.1:{free_port()}",
                                    "redis-url": f"redis://:{secret}@127.0.0.1:6379/0"}))
    command = [str(BIN_DIR / COMMANDS[process][0]), *COMMANDS[process][1:]]
    result = subprocess.run(command if process == "web" else [*command, "--config", str(path)],
                            env={"ETCD_BACKUP_CONFIG": str(path), "PATH": str(BIN_DIR)},
                            capture_output=True, text=True, timeout=60)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith(f"etcd-backup: bad config {path}: redis-url: "), lines
    shown = shown_secret(secret, result.stdout + result.stderr)
    assert shown is None, f"{shown!r} shown in: {result.stdout + result.stderr}"
    report(f"`{' '.join(COMMANDS[process])}` with a Redis password holding {secret[3]!r}, not percent-encoded",
           f"exit {result.returncode}, {len(lines)} line on stderr, no 3 characters of the password: "
           f"\"{lines[0].split(': ', 1)[1].replace(str(path), 'PATH')}\"")


def test_a_percent_encoded_redis_password_connects(tmp_path: Path, redis_conn: redis.Redis,
                                                   redis_server: RedisServer) -> None:
    """The README's advice works: with #, / and ? percent-encoded, the service logs in to a real Redis."""
    secret = "Xk7#Pq2/Vn9?Wm"
    redis_conn.acl_setuser("etcd-backup-test", enabled=True, passwords=[f"+{secret}"], keys=["*"],
                           commands=["+@all"])
    try:
        raw = f"redis://etcd-backup-test:{secret}@127.0.0.1:{redis_server.port}/0"
        with pytest.raises(ConfigError, match="^redis-url: .*percent-encode"):
            parse({"etcd": {}, "backup-dir": str(tmp_path / "b"), "redis-url": raw})
        encoded = f"redis://etcd-backup-test:{quote(secret, safe='')}@127.0.0.1:{redis_server.port}/0"
        config = parse({"etcd": {}, "backup-dir": str(tmp_path / "b"), "redis-url": encoded})
        assert connect(config).acl_whoami() == "etcd-backup-test"
    finally:
        redis_conn.acl_deluser("etcd-backup-test")


# Refusing what cannot work: each case runs the real `etcd-backup` as a user starts it. A value the
# service wrongly accepts makes it serve until the timeout (and the test fail), never pass.

def etcd_backup(*arguments: str, env: dict[str, str] | None = None,
                timeout: float = 20) -> tuple[subprocess.CompletedProcess[str], float]:
    """Run the real command; return its result and how long it took."""
    env = env or {"PATH": str(BIN_DIR)}
    if "PYTHONPATH" in os.environ:  # the code under test, also when it is not the installed checkout's
        env = {**env, "PYTHONPATH": os.environ["PYTHONPATH"]}
    started = time.monotonic()
    result = subprocess.run([str(BIN_DIR / "etcd-backup"), *arguments], env=env, capture_output=True, text=True,
                            timeout=timeout)
    return result, time.monotonic() - started


def refused(result: subprocess.CompletedProcess[str], path: Path, key: str) -> str:
    """Check the one line and exit 2 of a refused config naming `key`; return the problem it states."""
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stdout == ""
    prefix = f"etcd-backup: bad config {path}: {key}: "
    assert result.stderr.count("\n") == 1 and result.stderr.endswith("\n"), result.stderr[-3000:]
    assert result.stderr.startswith(prefix), result.stderr
    return result.stderr[len(prefix):-1]


def written(tmp_path: Path, text: str | bytes, name: str = "config.yml") -> Path:
    return write_private(tmp_path / name, text)  # 0600: it may hold secrets


def header(tmp_path: Path) -> str:
    """The lines every case starts with: a private backup-dir, a free port (a wrongly started service binds it)."""
    return f"backup-dir: {tmp_path / 'b'}\nlisten: 127.0.0.1:{free_port()}\n"


@pytest.mark.parametrize("kind", ["fifo", "directory"])
def test_a_config_path_that_is_not_a_regular_file_is_refused_promptly(tmp_path: Path, kind: str,
                                                                      report: Report) -> None:
    path = tmp_path / "config.yml"
    if kind == "fifo":
        os.mkfifo(path)  # nobody writes to it: opening it to read would wait forever
    else:
        path.mkdir()
    result, seconds = etcd_backup("--config", str(path), timeout=10)
    problem = refused(result, path, "config")
    assert problem == f"{path} is not a regular file"
    assert seconds < 5
    report(f"`etcd-backup --config` naming a {kind} (a FIFO nobody writes to)" if kind == "fifo" else
           f"`etcd-backup --config` naming a {kind}",
           f"exit 2 after {seconds:.1f} s, 1 line on stderr: \"config: PATH is not a regular file\"")


NESTED_1000 = "[" * 1000 + "]" * 1000

UNREADABLE_FILES: dict[str, tuple[bytes, str, str]] = {
    # id: (the file after the header, the key named, words of the problem)
    "non-UTF-8 byte": (b'etcd: {}\ngzip-level: 1  # caf\xe9\n', "config", "not UTF-8 text: byte 0xe9 on line 4"),
    "NUL escaped in a path": (b'etcd: {}\napi-tls-cert: "/etc/x\\0.pem"\napi-tls-key: /k\n', "api-tls-cert",
                              "contains a NUL character"),
    "NUL escaped in a secret": (b'etcd:\n  username: root\n  password: "s3\\0cret"\n', "etcd.password",
                                "contains a NUL character"),
    "raw NUL byte": (b'etcd: {}\nprefix: "a\x00b"\n', "config", "unacceptable character #x0000"),
    "1,000-deep flow list": (f"etcd:\n  endpoints: {NESTED_1000}\n".encode(), "etcd.endpoints",
                             "nested more than 20 levels deep"),
    "1,000-deep block mapping": (b"etcd: {}\nretention:\n" + b"".join(b"  " * (i + 1) + b"a:\n" for i in range(1000)),
                                 "retention.a", "nested more than 20 levels deep"),
    "5,000-digit number": (b"etcd: {}\nrotate: " + b"9" * 5000 + b"\n", "rotate",
                           "a number of 5000 digits, beyond every bound"),
    "duplicate top-level key": (b"etcd: {}\nrotate: 3\nrotate: 50\n", "rotate",
                                "duplicate key (lines 4 and 5): YAML would silently keep the last"),
    "duplicate nested key": (b"etcd:\n  timeout: 2s\n  timeout: 5s\n", "etcd.timeout",
                             "duplicate key (lines 4 and 5)"),
}


@pytest.mark.parametrize("case", UNREADABLE_FILES)
def test_a_config_file_that_cannot_be_read_as_meant_is_one_line(tmp_path: Path, case: str, report: Report) -> None:
    body, key, words = UNREADABLE_FILES[case]
    path = written(tmp_path, header(tmp_path).encode() + body)
    result, seconds = etcd_backup("--config", str(path))
    problem = refused(result, path, key)
    assert words in problem
    assert "s3" not in problem and "cret" not in problem  # a value is never quoted: it may be a secret
    report(f"`etcd-backup --config` on a config with a {case}",
           f"exit 2 after {seconds:.1f} s, 1 line on stderr: \"{key}: {problem.replace(str(path), 'PATH')}\"")


def test_a_config_nested_1000_deep_at_its_root_is_one_line(tmp_path: Path) -> None:
    path = written(tmp_path, NESTED_1000)
    assert refused(etcd_backup("--config", str(path))[0], path, "config").startswith("nested more than 20 levels")


ALL_IN_ONE: tuple[str, ...] = ()
PRUNE = ("prune",)
SCHEDULER = ("scheduler",)
FOREVER = "9" * 400  # a float() of it is infinity

OUT_OF_BOUNDS: dict[str, tuple[tuple[str, ...], dict[str, Any], str, str]] = {
    # id: (the command, the config's keys besides backup-dir and listen, the key named, words of the problem)
    "backup-timeout 1ns": (ALL_IN_ONE, {"backup-timeout": "1ns"}, "backup-timeout",
                           "must be at least 100ms, got '1ns'"),
    "backup-timeout of 400 digits": (ALL_IN_ONE, {"backup-timeout": FOREVER + "s"}, "backup-timeout",
                                     "must be at most 1h, got a 401-character duration"),
    "etcd.timeout 1ns": (ALL_IN_ONE, {"etcd": {"timeout": "1ns"}}, "etcd.timeout", "must be at least 100ms"),
    "etcd.timeout of 400 digits": (ALL_IN_ONE, {"etcd": {"timeout": FOREVER + "ms"}}, "etcd.timeout",
                                   "must be at most 10m"),
    "retention.max-age of 400 digits": (PRUNE, {"retention": {"max-age": FOREVER + "h"}}, "retention.max-age",
                                        "must be at most 876600h (100 years)"),
    "retention.max-age 1ns": (PRUNE, {"retention": {"max-age": "1ns"}}, "retention.max-age",
                              "must be at least 1m"),
    "retention.hourly 10^20": (PRUNE, {"retention": {"hourly": 10**20}}, "retention.hourly",
                               "must be at most 876600 (100 years), got 100000000000000000000"),
    "retention.daily 10^20": (PRUNE, {"retention": {"daily": 10**20}}, "retention.daily",
                              "must be at most 36525 (100 years)"),
    "retention.weekly 10^20": (PRUNE, {"retention": {"weekly": 10**20}}, "retention.weekly",
                               "must be at most 5217 (100 years)"),
    "empty backup-dir": (ALL_IN_ONE, {"backup-dir": ""}, "backup-dir",
                         "is empty (it would mean the current directory): give a directory"),
    "schedule 0 0 30 2 * (all-in-one)": (ALL_IN_ONE, {"schedule": "0 0 30 2 *"}, "schedule",
                                         "'0 0 30 2 *' does not fire within a year (is there such a day?)"),
    "schedule 0 0 30 2 * (scheduler)": (SCHEDULER, {"schedule": "0 0 30 2 *"}, "schedule",
                                        "does not fire within a year"),
    "drill 0 0 30 2 * (all-in-one)": (ALL_IN_ONE, {"drill": "0 0 30 2 *"}, "drill", "does not fire within a year"),
    "drill 0 0 30 2 * (scheduler)": (SCHEDULER, {"drill": "0 0 30 2 *"}, "drill", "does not fire within a year"),
    "schedule 0 0 29 2 * (every 4 years)": (ALL_IN_ONE, {"schedule": "0 0 29 2 *"}, "schedule",
                                            "does not fire within a year"),
    "delta-period 10ms": (ALL_IN_ONE, {"delta-period": "10ms"}, "delta-period", "must be at least 100ms, got '10ms'"),
    "delta-period 1h": (ALL_IN_ONE, {"delta-period": "1h"}, "delta-period", "must be at most 10m, got '1h'"),
    "deltas yes": (ALL_IN_ONE, {"deltas": "yes"}, "deltas", "expected true or false, got a string"),
    "compact-after-revisions 99": (ALL_IN_ONE, {"compact-after-revisions": 99}, "compact-after-revisions",
                                   "must be 0 (never compact) or at least 100, got 99"),
    "compact-after-revisions -1": (ALL_IN_ONE, {"compact-after-revisions": -1}, "compact-after-revisions",
                                   "must be at least 0, got -1"),
    "compact-after-revisions 10^10": (ALL_IN_ONE, {"compact-after-revisions": 10**10}, "compact-after-revisions",
                                      "must be at most 1000000000"),
}


@pytest.mark.parametrize("case", OUT_OF_BOUNDS)
def test_values_that_cannot_work_are_refused_with_one_line(tmp_path: Path, case: str, redis_server: RedisServer,
                                                           report: Report) -> None:
    command, keys, key, words = OUT_OF_BOUNDS[case]
    # The scheduler needs Redis, and a real one: the old code died there with a traceback.
    document: dict[str, Any] = {"backup-dir": str(tmp_path / "b"), "listen": f"127.0.0.1:{free_port()}",
                                "etcd": {}, "redis-url": redis_server.url, **keys}
    path = written(tmp_path, yaml.safe_dump(document, width=10_000))
    result, seconds = etcd_backup(*command, "--config", str(path))
    problem = refused(result, path, key)
    assert words in problem
    report(f"`{' '.join(['etcd-backup', *command])} --config` with {case}",
           f"exit 2 after {seconds:.1f} s, 1 line on stderr: \"{key}: {problem}\"")


@pytest.mark.parametrize(("keys", "attribute", "value"), [
    ({"backup-timeout": "100ms"}, "backup_timeout", 0.1), ({"backup-timeout": "1h"}, "backup_timeout", 3600.0),
    ({"etcd": {"timeout": "100ms"}}, "etcd.timeout", 0.1), ({"etcd": {"timeout": "10m"}}, "etcd.timeout", 600.0),
    ({"retention": {"max-age": "1m"}}, "retention.max_age", 60.0),
    ({"retention": {"max-age": "876600h"}}, "retention.max_age", 876600 * 3600.0),
    ({"retention": {"hourly": 876600, "daily": 36525, "weekly": 5217}}, "retention.weekly", 5217),
    ({"schedule": "0 0 1 1 *"}, "schedule", "0 0 1 1 *"), ({"drill": "* * * * * */2"}, "drill", "* * * * * */2"),
    ({"delta-period": "100ms"}, "delta_period", 0.1), ({"delta-period": "10m"}, "delta_period", 600.0),
    ({"compact-after-revisions": 0}, "compact_after_revisions", 0),
    ({"compact-after-revisions": 100}, "compact_after_revisions", 100),
    ({"compact-after-revisions": 10**9}, "compact_after_revisions", 10**9),
])
def test_the_bounds_themselves_are_accepted(tmp_path: Path, keys: dict[str, Any], attribute: str, value: Any) -> None:
    assert attrgetter(attribute)(parse({"etcd": {}, "backup-dir": str(tmp_path / "b"), **keys})) == value


SECRETS = {"api-token": "Tq8zVw3RkP1mXn6Y", "etcd password": "Hd5pLs9Qe2Zr",
           "redis password": "Gm4Jt7Wb1Kc", "read-token": "Rt5Kp8Wm2Zx7Qv4N"}


def test_config_check_prints_the_effective_config_with_secrets_masked(tmp_path: Path, report: Report) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text(PEM)
    key_pem = KEY_PEM
    path = written(tmp_path, yaml.safe_dump({
        "backup-dir": str(tmp_path / "b"),
        "etcd": {"endpoints": ["https://10.0.0.1:2379"], "username": "root", "password": SECRETS["etcd password"],
                 "tls-ca-file": str(ca), "tls-cert": PEM, "tls-key": key_pem},
        "retention": {"daily": 7},
        "schedule": "0 */6 * * *",
    }))
    environment = {"PATH": str(BIN_DIR), "ETCD_BACKUP_API_TOKEN": SECRETS["api-token"],
                   "ETCD_BACKUP_READ_TOKEN": SECRETS["read-token"],
                   "REDIS_URL": f"redis://default:{SECRETS['redis password']}@127.0.0.1:6379/0"}
    result, _ = etcd_backup("config", "check", "--config", str(path), env=environment)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    # The certificate is public and shown; its base64, new each run, held 3 characters of a secret by chance once.
    without_certificate = re.sub(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", "", result.stdout,
                                 flags=re.S)
    for what, secret in SECRETS.items():
        assert shown_secret(secret, without_certificate) is None, f"the {what} is shown: {result.stdout}"
    assert not any(line in result.stdout for line in KEY_PEM.splitlines()[1:-1]), result.stdout  # the key's base64
    assert yaml.safe_load(result.stdout) == {
        "backup-dir": str(tmp_path / "b"),
        "listen": "0.0.0.0:8080",
        "allowed-hosts": None,
        "rotate": 14,
        "etcd": {"endpoints": ["https://10.0.0.1:2379"], "timeout": "2s", "prefix": "", "username": "root",
                 "password": "***", "tls-ca-file": str(ca), "tls-cert": PEM, "tls-key": "***"},
        "redis-url": "redis://default:***@127.0.0.1:6379/0",
        "backup-timeout": "5m",
        "gzip-level": 1,
        "api-token": "***",
        "read-token": "***",
        "backup-token": None,
        "download-token": None,
        "api-tls-cert": None,
        "api-tls-key": None,
        "retention": {"max-age": None, "hourly": 0, "daily": 7, "weekly": 0},
        "schedule": "0 */6 * * *",
        "skip-unchanged": False,
        "drill": None,
        "allow-stale-member": False, "deltas": False, "delta-period": "10s", "max-queued-jobs": 100,
        "etcd-bin": None, "compact-after-revisions": 100_000,
    }
    report("`etcd-backup config check` on a config with every kind of secret (api-token and REDIS_URL "
           "from the environment, etcd password, inline TLS key)",
           f"exit 0, the effective config ({len(result.stdout.splitlines())} lines of YAML, defaults filled in); "
           "no 3 characters of any secret shown")


def test_config_check_prints_file_paths_and_durations_as_given(tmp_path: Path) -> None:
    cert, key = tmp_path / "client.pem", write_private(tmp_path / "client-key.pem", KEY_PEM)
    cert.write_text(PEM)
    path = written(tmp_path, yaml.safe_dump({
        "backup-dir": str(tmp_path / "b"), "backup-timeout": "1m30s",
        "etcd": {"timeout": "1500ms", "tls-cert-file": str(cert), "tls-key": str(key)},
        "redis-url": "redis://127.0.0.1:6379/0", "retention": {"max-age": "720h"},
    }))
    result, _ = etcd_backup("config", "check", "--config", str(path))
    printed = yaml.safe_load(result.stdout)
    assert (printed["backup-timeout"], printed["etcd"]["timeout"]) == ("1m30s", "1s500ms")
    assert (printed["etcd"]["tls-cert-file"], printed["etcd"]["tls-key-file"]) == (str(cert), str(key))
    assert printed["redis-url"] == "redis://127.0.0.1:6379/0"  # no password, nothing masked
    assert printed["retention"]["max-age"] == "720h"
    # What it prints reads back as the same config.
    assert load_config(written(tmp_path, result.stdout, "printed.yml"), {}) == load_config(path, {})


def test_config_check_refuses_a_bad_config_with_one_line(tmp_path: Path) -> None:
    path = written(tmp_path, header(tmp_path) + "etcd: {}\nbackup-timeout: 1ns\n")
    result, _ = etcd_backup("config", "check", "--config", str(path))
    assert refused(result, path, "backup-timeout") == "must be at least 100ms, got '1ns'"


def test_a_redis_password_given_as_a_query_is_masked_too(tmp_path: Path) -> None:
    secret = "Rk2Vn8Qz5Wp"
    config = parse({"etcd": {}, "backup-dir": str(tmp_path / "b"),
                    "redis-url": f"redis://127.0.0.1:6379/0?password={secret}&socket_timeout=5"})
    assert effective_config(config)["redis-url"] == "redis://127.0.0.1:6379/0?password=***&socket_timeout=5"


def test_an_empty_api_token_is_refused_not_taken_for_none(write_config: ConfigFactory) -> None:
    """`api-token: ""` must not silently leave the API open (it fell back to no token before)."""
    with pytest.raises(ConfigError, match="api-token: must be at least 16 characters"):
        load_config(write_config(api_token=""), environ={})


def test_allow_stale_member_is_off_unless_set_and_must_be_a_boolean(tmp_path: Path) -> None:
    base = {"etcd": {}, "backup-dir": str(tmp_path / "b")}
    assert parse(base).allow_stale_member is False
    assert parse({**base, "allow-stale-member": True}).allow_stale_member is True
    with pytest.raises(ConfigError, match=r"^allow-stale-member: .*true or false"):
        parse({**base, "allow-stale-member": "yes please"})


@pytest.mark.parametrize(("document", "key", "words"), [
    ({"backup-dir": "s3://ab/x"}, "backup-dir", "no S3 bucket name"),
    ({"backup-dir": "s3://Bucket/x"}, "backup-dir", "no S3 bucket name"),
    ({"backup-dir": "s3://bucket//x"}, "backup-dir", "empty path segment"),
    ({"backup-dir": "/var/backups", "s3": {"region": "eu-west-1"}}, "s3", "backup-dir is not an s3://"),
    ({"backup-dir": "s3://bucket/x", "s3": {"endpoint": "minio:9000"}}, "s3.endpoint", "http:// or https://"),
    ({"backup-dir": "s3://bucket/x", "s3": {"addressing-style": "dns"}}, "s3.addressing-style", "auto, path"),
    ({"backup-dir": "s3://bucket/x", "s3": {"sse": "AES128"}}, "s3.sse", "AES256 or aws:kms"),
    ({"backup-dir": "s3://bucket/x", "s3": {"kms-key-id": "k"}}, "s3.kms-key-id", "needs sse: aws:kms"),
    ({"backup-dir": "s3://bucket/x", "s3": {"part-size": 1 << 20}}, "s3.part-size", "at least"),
    ({"backup-dir": "s3://bucket/x", "s3": {"concurrency": 0}}, "s3.concurrency", "at least"),
    ({"backup-dir": "s3://bucket/x", "s3": {"ca-file": "/nonexistent/ca.pem"}}, "s3.ca-file",
     "cannot read /nonexistent/ca.pem: No such file"),
    ({"backup-dir": "s3://bucket/x", "s3": {"secret": "x"}}, "s3", "secret"),
])
def test_bad_s3_settings_are_one_line_naming_the_key(document: dict[str, Any], key: str, words: str) -> None:
    with pytest.raises(ConfigError) as error:
        parse({"etcd": {}, **document})
    message = str(error.value)
    assert message.startswith(f"{key}") and words in message and "\n" not in message


def test_s3_settings_parse_and_their_secrets_are_masked(tmp_path: Path) -> None:
    config = parse({"etcd": {}, "backup-dir": "s3://etcd-backups/prod/cluster-1", "s3": {
        "endpoint": "https://minio.example:9000", "access-key-id": "AKID", "secret-access-key": "Sk3tSecretValue",
        "session-token": "TokenValue123", "sse": "aws:kms", "kms-key-id": "alias/etcd"}})
    assert config.s3 is not None
    assert (config.s3.bucket, config.s3.prefix, config.s3.url) == (
        "etcd-backups", "prod/cluster-1/", "s3://etcd-backups/prod/cluster-1/")
    assert "Sk3tSecretValue" not in repr(config) and "TokenValue123" not in repr(config)
    shown = yaml.safe_dump(effective_config(config))
    assert "Sk3tSecretValue" not in shown and "TokenValue123" not in shown
    assert effective_config(config)["backup-dir"] == "s3://etcd-backups/prod/cluster-1/"


# ---------------------------------------------------------------- secrets on disk (issue 24, item 10)

def private_key_settings(key: str, path: Path) -> dict[str, Any]:
    """A config's keys that name `path` as the private key `key` (and what goes with it)."""
    if key == "encryption.identity-file":
        identity = x25519.Identity.generate()
        path.write_text(f"{identity}\n")
        return {"encryption": {"recipients": [str(identity.to_public())], "identity-file": str(path)}}
    path.write_text(KEY_PEM)
    if key == "api-tls-key":
        return {"api-tls-cert": str(write_private(path.with_name("cert.pem"), PEM)), "api-tls-key": str(path)}
    return {"etcd": {"tls-cert": PEM, key.removeprefix("etcd."): str(path)}}


PRIVATE_KEYS = ["encryption.identity-file", "etcd.tls-key-file", "etcd.tls-key", "api-tls-key"]


@pytest.mark.parametrize("key", PRIVATE_KEYS)
@pytest.mark.parametrize(("mode", "who"), [pytest.param(mode, who, id=f"{mode:04o}") for mode, who in (
    (0o644, "group and others can read it"), (0o640, "group can read it"), (0o604, "others can read it"),
    (0o620, "group can write it"), (0o666, "group and others can read and write it"),
)])
def test_a_private_key_that_others_can_read_is_refused_naming_the_key(tmp_path: Path, key: str, mode: int,
                                                                      who: str) -> None:
    """As ssh refuses such a private key: the age identity, etcd's client key, the API's TLS key."""
    path = tmp_path / "private.key"
    document = {"etcd": {}, "backup-dir": str(tmp_path / "b"), **private_key_settings(key, path)}
    path.chmod(mode)
    with pytest.raises(ConfigError) as info:
        parse(document)
    assert str(info.value) == f"{key}: {path} {who} (mode {mode:04o}); run chmod 600 {path}"
    for private in (0o600, 0o400):
        path.chmod(private)
        parse(document)


@pytest.mark.parametrize("key", PRIVATE_KEYS)
def test_a_private_key_another_user_owns_is_refused(tmp_path: Path, key: str) -> None:
    """Whatever its mode: its owner can read it, or replace it."""
    if os.geteuid() != 0:
        pytest.skip("needs root to give a file to another user")
    path = tmp_path / "private.key"
    document = {"etcd": {}, "backup-dir": str(tmp_path / "b"), **private_key_settings(key, path)}
    path.chmod(0o600)
    os.chown(path, 12345, 12345)
    with pytest.raises(ConfigError) as info:
        parse(document)
    assert str(info.value).startswith(f"{key}: {path} is owned by uid 12345, not by this process' user (uid 0) "
                                      "or root: ")
    assert str(info.value).endswith(f"(chown 0 {path}) and run chmod 600 {path}")


def test_a_key_of_root_s_may_be_read_through_its_group_as_a_kubernetes_secret_mounts_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The manifests' Secret volume (defaultMode 0440, fsGroup): the files are root's, readable by the pod's
    group. Root's file, this process another user's: the group may read it, not write it; others nothing."""
    if os.geteuid() != 0:
        pytest.skip("needs a file of root's")
    path = tmp_path / "etcd-client-key.pem"
    document = {"etcd": {}, "backup-dir": str(tmp_path / "b"), **private_key_settings("etcd.tls-key-file", path)}
    monkeypatch.setattr(os, "geteuid", lambda: 10000)  # the image's user
    for mode in (0o440, 0o400, 0o640, 0o600):
        path.chmod(mode)
        parse(document)
    for mode, who in ((0o444, "others can read it"), (0o460, "group can write it")):
        path.chmod(mode)
        with pytest.raises(ConfigError) as info:
            parse(document)
        assert str(info.value) == (f"etcd.tls-key-file: {path} {who} (mode {mode:04o}); run chmod 640 {path} "
                                   "(root's file, read through its group), or chmod 600 a copy this user owns")


CONFIG_SECRETS = {
    "api-token": ({"api-token": "Tq8zVw3RkP1mXn6Y"}, "; or move api-token to $ETCD_BACKUP_API_TOKEN"),
    "etcd.password": ({"etcd": {"username": "root", "password": "Hd5pLs9Qe2Zr"}}, ""),
    "etcd.tls-key": ({"etcd": {"tls-cert": PEM, "tls-key": KEY_PEM}}, "; or move etcd.tls-key to etcd.tls-key-file"),
    "redis-url": ({"redis-url": "redis://default:Gm4Jt7Wb1Kc@127.0.0.1:6379/0"}, "; or move redis-url to $REDIS_URL"),
    "s3.secret-access-key": ({"backup-dir": "s3://bucket/prefix", "s3": {"secret-access-key": "Zq7Wx2Lp9Ty4"}},
                             "; or move s3.secret-access-key to $AWS_SECRET_ACCESS_KEY (with s3.access-key-id to "
                             "$AWS_ACCESS_KEY_ID)"),
    "s3.session-token": ({"backup-dir": "s3://bucket/prefix", "s3": {"session-token": "Zq7Wx2Lp9Ty4"}},
                         "; or move s3.session-token to $AWS_SESSION_TOKEN (with the keys to $AWS_ACCESS_KEY_ID, "
                         "$AWS_SECRET_ACCESS_KEY)"),
}


@pytest.mark.parametrize("secret", CONFIG_SECRETS)
def test_a_config_file_holding_a_secret_that_others_can_read_is_refused(tmp_path: Path, secret: str) -> None:
    settings, move = CONFIG_SECRETS[secret]
    document = {"backup-dir": str(tmp_path / "b"), "etcd": {}, **settings}
    path = written(tmp_path, yaml.safe_dump(document))
    path.chmod(0o644)
    with pytest.raises(ConfigError) as info:
        load_config(path, {})
    assert str(info.value) == (f"config: {path} holds secrets ({secret}) and group and others can read it "
                               f"(mode 0644); run chmod 600 {path}{move}")
    path.chmod(0o600)
    load_config(path, {})
    parse(document)  # a document, not a file: nothing to check


def test_every_process_refuses_a_config_whose_secrets_others_can_read_with_one_line(tmp_path: Path) -> None:
    path = written(tmp_path, header(tmp_path) + "etcd:\n  username: root\n  password: Hd5pLs9Qe2Zr\n"
                                                "api-token: Tq8zVw3RkP1mXn6Y\n")
    path.chmod(0o640)
    result, _ = etcd_backup("config", "check", "--config", str(path))
    assert refused(result, path, "config") == (
        f"{path} holds secrets (api-token, etcd.password) and group can read it (mode 0640); run chmod 600 {path}; "
        "or move api-token to $ETCD_BACKUP_API_TOKEN")
    assert all(shown_secret(secret, result.stderr) is None for secret in ("Hd5pLs9Qe2Zr", "Tq8zVw3RkP1mXn6Y"))
    # Its secrets moved out (the token to the environment, etcd's user to client certificates), it may be anyone's
    # to read, as a Kubernetes ConfigMap is (0644).
    key = write_private(tmp_path / "client-key.pem", KEY_PEM)
    written(tmp_path, header(tmp_path) + f"etcd:\n  tls-cert: {json.dumps(PEM)}\n  tls-key-file: {key}\n").chmod(0o644)
    result, _ = etcd_backup("config", "check", "--config", str(path),
                            env={"PATH": str(BIN_DIR), "ETCD_BACKUP_API_TOKEN": "Tq8zVw3RkP1mXn6Y"})
    assert result.returncode == 0 and result.stderr == "", result.stderr


def test_a_process_that_never_connects_to_etcd_reads_none_of_its_credentials(write_config: ConfigFactory,
                                                                             tmp_path: Path) -> None:
    """The Procfile's web (common.startup.load_web_config): etcd's TLS files need not exist where it runs, and its
    password is not kept; their keys are still checked for type."""
    absent = tmp_path / "not-mounted"
    path = write_config(etcd_overrides={"tls-ca-file": str(absent / "ca.pem"), "tls-cert-file": str(absent / "c.pem"),
                                        "tls-key-file": str(absent / "k.pem"), "username": "root",
                                        "password": "etcd-secret"})
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(path)
    config = load_config(path, etcd_credentials=False)
    assert (config.etcd.tls_ca, config.etcd.tls_cert, config.etcd.tls_key, config.etcd.password) == (None,) * 4
    assert "etcd-secret" not in repr(config)
    wrong = write_config(etcd_overrides={"tls-key-file": 5})
    with pytest.raises(ConfigError) as info:
        load_config(wrong, etcd_credentials=False)
    assert info.value.key == "etcd.tls-key-file"
