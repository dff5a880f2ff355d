"""GET /healthz and GET /readyz: up, and ready to take a backup (Redis, backup-dir, an etcd endpoint)."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable

import pytest
import redis

from cli.startup import prepare_backup_dir
from common.config import load_config
from harness.in_process import ConfigFactory, Service
from harness.servers import EtcdServer


def test_healthz(service: Service) -> None:
    response = service.client.get("/healthz")
    assert response.status_code == 200 and response.get_json() == {"status": "ok"}


def test_ready_when_redis_backup_dir_and_etcd_are(service: Service, etcd: EtcdServer) -> None:
    response = service.client.get("/readyz")
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert body["status"] == "ready"
    assert {name: check["ok"] for name, check in body["checks"].items()} == {
        "redis": True, "backup-dir": True, "etcd": True, "api-auth": True}
    assert body["checks"]["etcd"]["detail"].startswith(f"{etcd.url} answers (etcd 3.")


def failed_checks(service: Service) -> dict[str, str]:
    response = service.client.get("/readyz")
    assert response.status_code == 503
    body = response.get_json()
    assert set(body) == {"message", "checks"} and body["message"].startswith("not ready: ")  # the error shape
    return {name: check["error"] for name, check in body["checks"].items() if not check["ok"]}


def test_not_ready_without_redis(write_config: ConfigFactory) -> None:
    config = load_config(write_config())
    prepare_backup_dir(config)
    service = Service(config, redis.Redis.from_url("redis://127.0.0.1:1"))
    assert list(failed_checks(service)) == ["redis"]


def test_not_ready_without_backup_dir(service: Service) -> None:
    shutil.rmtree(service.config.backup_dir)
    failed = failed_checks(service)
    assert list(failed) == ["backup-dir"] and "is not a readable directory" in failed["backup-dir"]


def test_not_ready_without_an_answering_etcd(make_service: Callable[..., Service]) -> None:
    service = make_service(worker=False, etcd_overrides={"endpoints": ["http://127.0.0.1:1"], "timeout": "1s"})
    failed = failed_checks(service)
    assert list(failed) == ["etcd"] and failed["etcd"].startswith("no current etcd member answered: http://127.0.0.1:1")


@pytest.mark.parametrize(("listen", "token", "open_"), [
    ("0.0.0.0:8080", None, True), ("[::]:8080", None, True), ("10.1.2.3:8080", None, True),
    ("backup.example:8080", None, True), ("127.0.0.1:8080", None, False), ("localhost:8080", None, False),
    ("[::1]:8080", None, False), ("0.0.0.0:8080", "a-token-of-sixteen-chars", False),
])
def test_an_api_open_to_the_network_is_said_at_start_in_readyz_and_metrics(
    make_service: Callable[..., Service], caplog: pytest.LogCaptureFixture, listen: str, token: str | None,
    open_: bool,
) -> None:
    with caplog.at_level(logging.WARNING, logger="api"):
        service = make_service(worker=False, listen=listen, api_token=token)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    detail = service.client.get("/readyz", headers=headers).get_json()["checks"]["api-auth"]
    metrics = service.client.get("/metrics", headers=headers).get_data(as_text=True)
    warned = [record.getMessage() for record in caplog.records if "anyone who can reach it" in record.getMessage()]
    assert detail["ok"] is True
    assert detail["detail"].startswith("WARNING") is open_ and len(warned) == int(open_)
    assert f"etcd_backup_api_auth_enabled {0.0 if token is None else 1.0}" in metrics
