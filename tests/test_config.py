"""Config loading: the seed's keys and defaults, etcdutil's etcd section, one-line errors."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import redis
import yaml

from common.config import Config, ConfigError, load_config, parse_config, parse_duration
from common.queue import connect
from tests.conftest import Report
from tests.services import BIN_DIR, RedisServer, free_port

PEM = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


def parse(document: Any, environ: dict[str, str] | None = None) -> Config:
    return parse_config(document, environ or {})


def test_seed_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # backup-dir defaults to /etcd-backup/ (created if missing); keep this test away from it.
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
            "tls-key": str(ca),
        },
    })
    assert config.listen_host_port == ("::1", 9090)
    assert config.rotate == 3 and config.gzip_level == 6 and config.backup_timeout == 90.0
    assert config.redis_url == "redis://localhost:6379/2"
    assert config.etcd.timeout == 0.5 and config.etcd.prefix == "/app/"
    assert config.etcd.tls_ca == PEM.encode() and config.etcd.tls_cert == PEM.encode()
    assert config.etcd.tls_key == PEM.encode()  # a value that is not PEM is a path
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
    ({"etcd": {}, "gzip-level": 10}, "gzip-level", "between 0 and 9"),
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
    ({"etcd": {}, "backup-dir": "/proc/etcd-backup"}, "backup-dir", "cannot create"),
    ({"etcd": "http://127.0.0.1:2379"}, "etcd", "expected a mapping"),
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


def test_unwritable_backup_dir(tmp_path: Path) -> None:
    target = tmp_path / "file"
    target.write_text("")
    with pytest.raises(ConfigError, match="^backup-dir: .* is not a directory$"):
        parse({"etcd": {}, "backup-dir": str(target)})


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


def test_example_configs_use_only_known_keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = Path(__file__).resolve().parent.parent
    example = yaml.safe_load((root / "examples" / "config.yml").read_text())
    for key in ("tls-ca-file", "tls-cert-file", "tls-key-file"):
        del example["etcd"][key]  # they name files of a real deployment
    example["backup-dir"] = str(tmp_path / "b")
    config = parse(example)
    assert config.etcd.endpoints == ("https://10.0.0.1:2379", "https://10.0.0.2:2379")
    monkeypatch.chdir(tmp_path)
    demo = load_config(root / "examples" / "demo.yml")
    assert demo.listen == "127.0.0.1:8080" and demo.redis_url is None


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
