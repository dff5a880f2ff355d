"""Every error the API answers has one shape: JSON `{"message": "..."}`, whatever the status."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import redis

from api import create_app
from harness.in_process import Service

ERROR_PATHS = [
    ("GET", "/nope", 404),
    ("GET", "/api/v1/backup/", 200),
    ("GET", "/api/v1/backup/nope", 400),
    ("GET", "/api/v1/backup/..%2f..%2fetc%2fpasswd", 400),
    ("GET", "/api/v1/backup/snapshot-20181220_024105.tar.gz", 404),
    ("HEAD", "/api/v1/backup/snapshot-20181220_024105.tar.gz", 404),
    ("DELETE", "/api/v1/backup", 405),
    ("PUT", "/api/v1/backup/snapshot-20181220_024105.tar.gz", 405),
    ("POST", "/api/v1/jobs/abc", 405),
    ("GET", "/api/v1/jobs/abc", 404),
    ("GET", "/api/v1/jobs/" + "0" * 32, 404),
]


@pytest.mark.parametrize(("method", "path", "status"), ERROR_PATHS)
def test_client_errors(service: Service, method: str, path: str, status: int) -> None:
    response = service.client.open(path, method=method)
    assert response.status_code == status
    assert response.content_type == "application/json"
    if method != "HEAD":
        body = response.get_json()
        assert isinstance(body, list) or (set(body) == {"message"} and body["message"])
    if status == 405:
        assert "Allow" in response.headers


def test_500_from_etcd_failure(make_service: Callable[..., Service]) -> None:
    service = make_service(etcd_overrides={"endpoints": ["http://127.0.0.1:1"], "timeout": "300ms"})
    response = service.client.post("/api/v1/backup")
    assert response.status_code == 500
    assert response.content_type == "application/json"
    body = response.get_json()
    assert set(body) == {"message"} and body["message"].startswith("failed to save an etcd backup: ")


def test_503_from_redis_failure(make_service: Callable[..., Service]) -> None:
    service = make_service(worker=False)
    dead = redis.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.5)
    client = create_app(service.config, dead).test_client()
    for method, path in [("POST", "/api/v1/backup"), ("GET", "/api/v1/jobs/" + "a" * 32)]:
        response = client.open(path, method=method)
        assert response.status_code == 503
        assert response.content_type == "application/json"
        assert set(response.get_json()) == {"message"}


def test_500_from_a_vanished_backup_dir(service: Service) -> None:
    service.config.backup_dir.rmdir()
    response = service.client.get("/api/v1/backup")
    assert response.status_code == 500
    assert response.get_json() == {"message": "cannot read backup-dir: No such file or directory"}


def test_202_carries_a_message(make_service: Callable[..., Service]) -> None:
    service = make_service(worker=False, backup_timeout="500ms")
    response = service.client.post("/api/v1/backup")
    assert response.status_code == 202
    assert response.get_json()["message"] == "backup queued"
