"""Username/password and TLS (server CA, client certificate) are applied as configured."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from harness.in_process import Service
from harness.pki import make_tls_files
from harness.report import Report
from harness.servers import EtcdServer, etcdctl

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def auth_etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    server = EtcdServer(tmp_path_factory.mktemp("auth-etcd") / "data").start()
    etcdctl("user", "add", "root:root-password", endpoint=server.url)
    etcdctl("auth", "enable", endpoint=server.url)
    yield server
    server.stop()


def test_username_and_password(make_service: Callable[..., Service], auth_etcd: EtcdServer, report: Report) -> None:
    service = make_service(etcd_overrides={"endpoints": [auth_etcd.url], "username": "root",
                                           "password": "root-password"})
    response = service.client.post("/api/v1/backup")
    assert response.status_code == 200, response.get_json()
    report("etcd with authentication enabled, right username and password", "POST 200, backup taken")


WRONG_PASSWORD = "Wr0ng-Pa55word-4-etcd"
API_TOKEN = "api-token-that-must-stay-secret"


def test_wrong_password_is_a_500_that_says_so_and_no_secret_leaks(
    make_service: Callable[..., Service], auth_etcd: EtcdServer, caplog: pytest.LogCaptureFixture, report: Report
) -> None:
    caplog.set_level(logging.DEBUG)
    service = make_service(api_token=API_TOKEN, etcd_overrides={
        "endpoints": [auth_etcd.url], "username": "root", "password": WRONG_PASSWORD})
    response = service.client.post("/api/v1/backup", headers={"Authorization": f"Bearer {API_TOKEN}"})
    assert response.status_code == 500
    message = response.get_json()["message"]
    assert message.startswith("failed to save an etcd backup: ")
    assert f"{auth_etcd.url}: authentication refused" in message
    # Nowhere: not in the answer, the logs, the config's repr, or anything in Redis (jobs, results).
    stored = redis_dump(service.connection)
    assert b"authentication refused" in stored  # the dump does hold the job's records
    for secret in (WRONG_PASSWORD, API_TOKEN):
        assert secret not in message
        assert secret not in caplog.text
        assert secret not in repr(service.config)
        assert secret.encode() not in stored
    report("etcd with authentication, wrong password",
           f"POST 500: \"{message}\"; the password and the API token appear in no answer, log line, config "
           f"repr or Redis key ({len(caplog.records)} log records, {service.connection.dbsize()} Redis keys searched)")


def redis_dump(connection: redis.Redis) -> bytes:
    """Every key and value in Redis (strings, hashes, lists, streams), as one blob to search."""
    parts = []
    for key in connection.scan_iter():
        parts.append(key)
        kind = connection.type(key)
        if kind == b"string":
            parts.append(connection.get(key) or b"")
        elif kind == b"hash":
            parts += [item for pair in connection.hgetall(key).items() for item in pair]
        elif kind == b"list":
            parts += connection.lrange(key, 0, -1)
        elif kind == b"zset":
            parts += connection.zrange(key, 0, -1)
        elif kind == b"set":
            parts += list(connection.smembers(key))
        elif kind == b"stream":
            parts += [value for _, fields in connection.xrange(key) for pair in fields.items() for value in pair]
    return b"\n".join(parts)


def test_tls_with_files(make_service: Callable[..., Service], tls_etcd: EtcdServer, report: Report) -> None:
    assert tls_etcd.tls is not None
    service = make_service(etcd_overrides={
        "endpoints": [tls_etcd.url], "tls-ca-file": str(tls_etcd.tls.ca),
        "tls-cert-file": str(tls_etcd.tls.client_cert), "tls-key-file": str(tls_etcd.tls.client_key),
    })
    response = service.client.post("/api/v1/backup")
    assert response.status_code == 200, response.get_json()
    report("etcd serving TLS with client-certificate auth; CA, cert and key as files", "POST 200, backup taken")


def test_tls_with_inline_pem(make_service: Callable[..., Service], tls_etcd: EtcdServer, report: Report) -> None:
    assert tls_etcd.tls is not None
    service = make_service(etcd_overrides={
        "endpoints": [tls_etcd.url], "tls-ca": tls_etcd.tls.ca.read_text(),
        "tls-cert": tls_etcd.tls.client_cert.read_text(), "tls-key": tls_etcd.tls.client_key.read_text(),
    })
    response = service.client.post("/api/v1/backup")
    assert response.status_code == 200, response.get_json()
    report("etcd serving TLS; CA, cert and key as inline PEM in the config", "POST 200, backup taken")


def test_tls_with_a_wrong_ca_is_refused(make_service: Callable[..., Service], tls_etcd: EtcdServer,
                                        tmp_path: Path, report: Report) -> None:
    assert tls_etcd.tls is not None
    other = make_tls_files(tmp_path / "other", prefix="other-")
    service = make_service(etcd_overrides={
        "endpoints": [tls_etcd.url], "tls-ca-file": str(other.ca), "timeout": "1s",
        "tls-cert-file": str(tls_etcd.tls.client_cert), "tls-key-file": str(tls_etcd.tls.client_key),
    })
    response = service.client.post("/api/v1/backup")
    assert response.status_code == 500
    message = response.get_json()["message"]
    assert message.startswith(f"failed to save an etcd backup: no current etcd member answered: {tls_etcd.url}: ")
    assert "CERTIFICATE_VERIFY_FAILED" in message
    assert service.client.get("/api/v1/backup").get_json() == []
    report("etcd serving TLS, the config's tls-ca is another CA", f"POST 500: \"{message}\"; nothing written")
