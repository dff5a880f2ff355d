"""What no process starts with: a placeholder left from deploy/kubernetes/*/secret.yaml (REPLACE-ME, in a
value, an environment variable or a file the config names), a TLS file that is no certificate or key (or a
key that is not its certificate's), and a URL with a password in it where a password has a key of its own.
Each case runs the real commands as an operator starts them, and is one line naming the key, exit 2."""

from __future__ import annotations

import logging
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from pyrage import x25519

from common.config import ConfigError, load_config, parse_config
from common.queue import connect
from common.startup import prepare_backup_dir
from harness.cli import environment, etcd_backup
from harness.files import write_config, write_private
from harness.in_process import Service
from harness.keys import encryption
from harness.pki import TLSFiles, make_tls_files
from harness.processes import BIN_DIR, free_port
from harness.report import Report
from harness.servers import RedisServer

PLACEHOLDER = "REPLACE-ME"
UNREACHABLE_REDIS = "redis://127.0.0.1:1/0"  # never reached: the config is refused first

PROCESSES: dict[str, list[str]] = {
    "all-in-one": [], "serve": ["serve"], "worker": ["worker"], "scheduler": ["scheduler"], "deltas": ["deltas"],
    "config check": ["config", "check"], "web": [],  # the Procfile's web: gunicorn, the config from the environment
}


def run(process: str, path: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Start `process` (a key of PROCESSES) with the config at `path`, as a user would."""
    if process != "web":
        return etcd_backup(*PROCESSES[process], "--config", str(path), env=env, timeout=60)
    environment = {"PATH": str(BIN_DIR), "ETCD_BACKUP_CONFIG": str(path), **(env or {})}
    if "PYTHONPATH" in os.environ:  # the code under test
        environment["PYTHONPATH"] = os.environ["PYTHONPATH"]
    return subprocess.run([str(BIN_DIR / "gunicorn"), "--config", "python:api.gunicorn_conf"], env=environment,
                          capture_output=True, text=True, timeout=60)


def refused(result: subprocess.CompletedProcess[str], path: Path, key: str) -> str:
    """Check exit 2 and the one line naming `key`; return the problem it states."""
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert result.returncode == 2, (result.returncode, result.stdout[-2000:], result.stderr[-3000:])
    lines = result.stderr.strip().splitlines()
    prefix = f"etcd-backup: bad config {path}: {key}: "
    assert len(lines) == 1 and lines[0].startswith(prefix), result.stderr[-3000:]
    return lines[0][len(prefix):]


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TLSFiles:
    return make_tls_files(tmp_path_factory.mktemp("pki"))


def base(tmp_path: Path, **keys: Any) -> dict[str, Any]:
    return {"backup-dir": str(tmp_path / "b"), "listen": f"127.0.0.1:{free_port()}", "etcd": {},
            "redis-url": UNREACHABLE_REDIS, **keys}


def placeholder_file(tmp_path: Path, name: str) -> str:
    """A file whose content is the placeholder, as a Kubernetes Secret's `etcd-ca.pem: REPLACE-ME` mounts it."""
    return str(write_private(tmp_path / name, PLACEHOLDER))


S3 = {"backup-dir": "s3://etcd-backups/cluster-1"}

# id: (the config's keys over base(), the environment, the key named)
PLACEHOLDERS: dict[str, tuple[Any, dict[str, str], str]] = {
    "redis-url's password": ({"redis-url": f"redis://default:{PLACEHOLDER}@etcd-backup-redis:6379/0"}, {},
                             "redis-url"),
    "REDIS_URL's password": ({"redis-url": None}, {"REDIS_URL": f"redis://default:{PLACEHOLDER}@127.0.0.1:6379/0"},
                             "REDIS_URL"),
    "api-token": ({"api-token": PLACEHOLDER}, {}, "api-token"),
    "ETCD_BACKUP_API_TOKEN": ({}, {"ETCD_BACKUP_API_TOKEN": PLACEHOLDER}, "ETCD_BACKUP_API_TOKEN"),
    "ETCD_BACKUP_READ_TOKEN": ({}, {"ETCD_BACKUP_READ_TOKEN": PLACEHOLDER}, "ETCD_BACKUP_READ_TOKEN"),
    "etcd.password": ({"etcd": {"username": "root", "password": PLACEHOLDER}}, {}, "etcd.password"),
    "s3.secret-access-key": ({**S3, "s3": {"access-key-id": "AKIAEXAMPLE", "secret-access-key": PLACEHOLDER}}, {},
                             "s3.secret-access-key"),
    "AWS_ACCESS_KEY_ID": (S3, {"AWS_ACCESS_KEY_ID": PLACEHOLDER, "AWS_SECRET_ACCESS_KEY": "x" * 40},
                          "AWS_ACCESS_KEY_ID"),
    "AWS_SECRET_ACCESS_KEY": (S3, {"AWS_ACCESS_KEY_ID": "AKIAEXAMPLE", "AWS_SECRET_ACCESS_KEY": PLACEHOLDER},
                              "AWS_SECRET_ACCESS_KEY"),
    "etcd.tls-ca-file": (lambda t: {"etcd": {"tls-ca-file": placeholder_file(t, "etcd-ca.pem")}}, {},
                         "etcd.tls-ca-file"),
    "etcd.tls-key-file": (lambda t: {"etcd": {"tls-cert-file": placeholder_file(t, "etcd-client.pem"),
                                              "tls-key-file": placeholder_file(t, "etcd-client-key.pem")}}, {},
                          "etcd.tls-cert-file"),
    "signing.key-file": (lambda t: {"signing": {"key-file": placeholder_file(t, "signing.key")}}, {},
                         "signing.key-file"),
    "encryption.identity-file": (lambda t: {"encryption": {**encryption(x25519.Identity.generate()),
                                                           "identity-file": placeholder_file(t, "age.txt")}}, {},
                                 "encryption.identity-file"),
}


def placeholder_config(tmp_path: Path, case: str) -> tuple[Path, dict[str, str], str]:
    keys, env, key = PLACEHOLDERS[case]
    document = base(tmp_path, **(keys(tmp_path) if callable(keys) else keys))
    return write_config(tmp_path / "config.yml", {k: v for k, v in document.items() if v is not None}), env, key


@pytest.mark.parametrize("case", PLACEHOLDERS)
def test_a_placeholder_is_refused_naming_its_key(tmp_path: Path, case: str, report: Report) -> None:
    path, env, key = placeholder_config(tmp_path, case)
    problem = refused(run("config check", path, env), path, key)
    assert "placeholder REPLACE-ME" in problem, problem
    report(f"`etcd-backup config check` with {case} left at REPLACE-ME",
           f"exit 2, one line: \"{key}: {problem.replace(str(tmp_path), 'DIR')}\"")


@pytest.mark.parametrize("process", PROCESSES)
@pytest.mark.parametrize("case", ["redis-url's password", "etcd.tls-ca-file", "AWS_SECRET_ACCESS_KEY"])
def test_every_process_refuses_a_placeholder(tmp_path: Path, process: str, case: str) -> None:
    if process == "web" and case.startswith("etcd."):
        pytest.skip("the web reads no etcd file (it never connects to etcd: docs/least-privilege.md); "
                    "the processes that do refuse it")
    path, env, key = placeholder_config(tmp_path, case)
    assert "placeholder REPLACE-ME" in refused(run(process, path, env), path, key)


def _other_key_pem() -> bytes:
    return ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


BAD_CERTIFICATE = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"

# id: (a function of (tmp_path, tls) giving the config's keys over base(), the key named, words of the problem)
BAD_TLS: dict[str, tuple[Any, str, str]] = {
    "etcd.tls-ca-file: not PEM": (lambda t, tls: {"etcd": {"tls-ca-file": str(write_private(t / "ca", "hello"))}},
                                  "etcd.tls-ca-file", "no PEM certificate"),
    "etcd.tls-ca-file: a private key": (lambda t, tls: {"etcd": {"tls-ca-file": str(tls.client_key)}},
                                        "etcd.tls-ca-file", "no PEM certificate"),
    "etcd.tls-ca: a broken certificate": (lambda t, tls: {"etcd": {"tls-ca": BAD_CERTIFICATE}}, "etcd.tls-ca",
                                          "not a certificate"),
    "etcd.tls-cert-file: a private key": (lambda t, tls: {"etcd": {"tls-cert-file": str(tls.client_key),
                                                                   "tls-key-file": str(tls.client_key)}},
                                          "etcd.tls-cert-file", "no PEM certificate"),
    "etcd.tls-key-file: a certificate": (lambda t, tls: {"etcd": {"tls-cert-file": str(tls.client_cert),
                                                                  "tls-key-file": str(write_private(
                                                                      t / "k.pem", tls.client_cert.read_bytes()))}},
                                         "etcd.tls-key-file", "no PEM private key"),
    "etcd.tls-key-file: another key": (lambda t, tls: {"etcd": {"tls-cert-file": str(tls.client_cert),
                                                                "tls-key-file": str(tls.server_key)}},
                                       "etcd.tls-key-file", "is not the key of etcd.tls-cert-file"),
    "etcd.tls-key: another key inline": (lambda t, tls: {"etcd": {"tls-cert": tls.client_cert.read_text(),
                                                                  "tls-key": _other_key_pem().decode()}},
                                         "etcd.tls-key", "is not the key of etcd.tls-cert"),
    "api-tls-cert: a private key": (lambda t, tls: {"api-tls-cert": str(tls.server_key),
                                                    "api-tls-key": str(tls.server_key)},
                                    "api-tls-cert", "no PEM certificate"),
    "api-tls-key: another key": (lambda t, tls: {"api-tls-cert": str(tls.server_cert),
                                                 "api-tls-key": str(tls.client_key)},
                                 "api-tls-key", "is not the key of api-tls-cert"),
    "s3.ca-file: not PEM": (lambda t, tls: {**S3, "s3": {"ca-file": str(write_private(t / "s3-ca", "hello"))}},
                            "s3.ca-file", "no PEM certificate"),
}


@pytest.mark.parametrize("case", BAD_TLS)
def test_a_tls_file_that_is_not_what_its_key_says_is_refused(tmp_path: Path, tls: TLSFiles, case: str,
                                                             report: Report) -> None:
    keys, key, words = BAD_TLS[case]
    path = write_config(tmp_path / "config.yml", base(tmp_path, **keys(tmp_path, tls)))
    problem = refused(run("config check", path), path, key)
    assert words in problem, problem
    assert "MII" not in problem  # never the content (base64 DER starts so)
    report(f"`etcd-backup config check` with {case}", f"exit 2, one line: \"{key}: "
                                                      f"{problem.replace(str(tmp_path), 'DIR')}\"")


@pytest.mark.parametrize(("process", "case"), [
    ("all-in-one", "etcd.tls-key-file: another key"), ("worker", "etcd.tls-key-file: another key"),
    ("web", "api-tls-key: another key"),  # the web reads no etcd file: it never connects (docs/least-privilege.md)
])
def test_every_process_parses_its_tls_files_at_start(tmp_path: Path, tls: TLSFiles, process: str, case: str) -> None:
    keys, key, words = BAD_TLS[case]
    path = write_config(tmp_path / "config.yml", base(tmp_path, **keys(tmp_path, tls)))
    assert words in refused(run(process, path), path, key)


def test_real_tls_files_are_accepted(tmp_path: Path, tls: TLSFiles) -> None:
    path = write_config(tmp_path / "config.yml", base(tmp_path, **{
        "etcd": {"tls-ca-file": str(tls.ca), "tls-cert-file": str(tls.client_cert),
                 "tls-key-file": str(tls.client_key)},
        "api-tls-cert": str(tls.server_cert), "api-tls-key": str(tls.server_key)}))
    result = run("config check", path)
    assert result.returncode == 0, result.stderr


SECRET = "Pw9zQx4Lk2Vb"

# id: (the config's keys over base(), the key named, the keys the message points to)
CREDENTIALS_IN_URLS: dict[str, tuple[dict[str, Any], str, str]] = {
    "etcd endpoint user:password@": ({"etcd": {"endpoints": [f"http://root:{SECRET}@127.0.0.1:2379"]}},
                                     "etcd.endpoints", "etcd.username and etcd.password"),
    "etcd endpoint, second of two": ({"etcd": {"endpoints": ["https://10.0.0.1:2379",
                                                             f"https://root:{SECRET}@10.0.0.2:2379"]}},
                                     "etcd.endpoints", "etcd.username and etcd.password"),
    "etcd endpoint without a scheme": ({"etcd": {"endpoints": [f"root:{SECRET}@10.0.0.2:2379"]}},
                                       "etcd.endpoints", "etcd.username and etcd.password"),
    "etcd endpoint, password with /": ({"etcd": {"endpoints": [f"http://root:{SECRET}/x@10.0.0.2:2379"]}},
                                       "etcd.endpoints", "etcd.username and etcd.password"),
    "s3.endpoint": ({**S3, "s3": {"endpoint": f"https://AKIAEXAMPLE:{SECRET}@s3.internal:8333"}}, "s3.endpoint",
                    "s3.access-key-id and s3.secret-access-key"),
}


@pytest.mark.parametrize("process", ["config check", "all-in-one", "worker"])
@pytest.mark.parametrize("case", CREDENTIALS_IN_URLS)
def test_a_url_with_credentials_is_refused_without_echoing_them(tmp_path: Path, case: str, process: str,
                                                                report: Report) -> None:
    keys, key, hint = CREDENTIALS_IN_URLS[case]
    path = write_config(tmp_path / "config.yml", base(tmp_path, **keys))
    result = run(process, path)
    problem = refused(result, path, key)
    assert hint in problem, problem
    assert SECRET[:4] not in result.stdout + result.stderr and SECRET[-4:] not in result.stdout + result.stderr
    if process == "config check":
        report(f"`etcd-backup config check` with an {case}",
               f"exit 2, one line without the password: \"{key}: {problem}\"")


def test_redis_password_is_masked_in_config_check_and_never_logged(tmp_path: Path) -> None:
    """redis-url legitimately holds a password: `config check` masks it, and a worker that cannot reach Redis
    says so without it."""
    document = base(tmp_path, **{"redis-url": f"redis://default:{SECRET}@127.0.0.1:{free_port()}/0"})
    path = write_config(tmp_path / "config.yml", document)
    checked = run("config check", path)
    assert checked.returncode == 0 and yaml.safe_load(checked.stdout)["redis-url"].startswith("redis://default:***@")
    # The worker waits for Redis, saying so every few seconds: read what it said in the first 5.
    worker = subprocess.Popen([str(BIN_DIR / "etcd-backup"), "worker", "--config", str(path)], env=environment(None),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        output, _ = worker.communicate(timeout=5)
    except subprocess.TimeoutExpired:
        worker.terminate()
        output, _ = worker.communicate(timeout=30)
    assert "waiting for Redis" in output and "Connection refused" in output, output[-2000:]
    assert SECRET not in output, output[-2000:]


@pytest.mark.parametrize("where", ["a closed port", "the real Redis, wrong password"])
def test_redis_password_is_not_in_readyz_or_the_log(tmp_path: Path, redis_server: RedisServer,
                                                    redis_conn: redis.Redis, where: str,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    closed = where == "a closed port"
    # A user of its own: the default user has no password, and Redis lets any password log in to it.
    redis_conn.acl_setuser("etcd-backup-wrong", enabled=True, passwords=["+the-right-one"], keys=["*"],
                           commands=["+@all"])
    try:
        port = free_port() if closed else redis_server.port
        config = load_config(write_config(tmp_path / "config.yml", base(tmp_path, **{
            "redis-url": f"redis://etcd-backup-wrong:{SECRET}@127.0.0.1:{port}/0", "backup-timeout": "2s"})))
        prepare_backup_dir(config)
        service = Service(config, connect(config))
        with caplog.at_level(logging.DEBUG):
            response = service.client.get("/readyz")
            posted = service.client.post("/api/v1/backup")
    finally:
        redis_conn.acl_deluser("etcd-backup-wrong")
    assert response.status_code == 503 and posted.status_code == 503, posted.get_data(as_text=True)
    error = response.get_json()["checks"]["redis"]["error"]
    assert ("Connection refused" if closed else "invalid username-password pair") in error, error
    for text in (response.get_data(as_text=True), posted.get_data(as_text=True), caplog.text):
        assert SECRET not in text, text


def test_a_placeholder_in_a_comment_of_a_key_file_is_no_value(tmp_path: Path) -> None:
    recipient = str(x25519.Identity.generate().to_public())
    recipients = tmp_path / "recipients.txt"
    recipients.write_text(f"# REPLACE-ME below with your key, as done:\n{recipient}\n")
    document = base(tmp_path, encryption={"recipients-file": str(recipients)})
    assert parse_config(document, {}).encryption is not None
    recipients.write_text(f"# our keys\n{recipient}\nREPLACE-ME\n")
    with pytest.raises(ConfigError, match=f"^encryption.recipients-file: {recipients} holds the placeholder"):
        parse_config(document, {})
