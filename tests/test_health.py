"""GET /healthz and GET /readyz: up, and ready to take a backup (Redis, backup-dir, an etcd endpoint)."""

from __future__ import annotations

import shutil
from collections.abc import Callable

import redis

from common.config import load_config
from tests.conftest import ConfigFactory, Service
from tests.services import EtcdServer


def test_healthz(service: Service) -> None:
    response = service.client.get("/healthz")
    assert response.status_code == 200 and response.get_json() == {"status": "ok"}


def test_ready_when_redis_backup_dir_and_etcd_are(service: Service, etcd: EtcdServer) -> None:
    response = service.client.get("/readyz")
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert body["status"] == "ready"
    assert {name: check["ok"] for name, check in body["checks"].items()} == {
        "redis": True, "backup-dir": True, "etcd": True}
    assert body["checks"]["etcd"]["detail"].startswith(f"{etcd.url} answers (etcd 3.")


def failed_checks(service: Service) -> dict[str, str]:
    response = service.client.get("/readyz")
    assert response.status_code == 503
    body = response.get_json()
    assert body["status"] == "not ready" and body["message"].startswith("not ready: ")
    return {name: check["error"] for name, check in body["checks"].items() if not check["ok"]}


def test_not_ready_without_redis(write_config: ConfigFactory) -> None:
    service = Service(load_config(write_config()), redis.Redis.from_url("redis://127.0.0.1:1"))
    assert list(failed_checks(service)) == ["redis"]


def test_not_ready_without_backup_dir(service: Service) -> None:
    shutil.rmtree(service.config.backup_dir)
    failed = failed_checks(service)
    assert list(failed) == ["backup-dir"] and "is not a readable directory" in failed["backup-dir"]


def test_not_ready_without_an_answering_etcd(make_service: Callable[..., Service]) -> None:
    service = make_service(worker=False, etcd_overrides={"endpoints": ["http://127.0.0.1:1"], "timeout": "1s"})
    failed = failed_checks(service)
    assert list(failed) == ["etcd"] and failed["etcd"].startswith("no etcd endpoint answered: http://127.0.0.1:1")
