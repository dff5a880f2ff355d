"""Every error the API answers has one shape: JSON `{"message": "..."}`, whatever the status; /readyz's 503
adds its `checks`."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
import redis
from rq.job import JobStatus
from werkzeug.test import TestResponse

from api import create_app
from api.outcomes import LOST_CAUSE
from common.queue import HEARTBEAT_TTL, PENDING_KEY, read_job
from common.redis_tools import text
from harness.in_process import Service

ERROR_PATHS = [
    ("GET", "/nope", 404),
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
TOKEN = "a-token-of-sixteen-chars"
WRONG_TOKEN_MESSAGE = "missing or wrong API token: send 'Authorization: Bearer <token>'"


def error_body(response: TestResponse, status: int, *details: str) -> dict[str, object]:
    """The body of `response`, asserted to be the error shape: a non-empty `message` and `details`, nothing else."""
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.content_type == "application/json"
    body = response.get_json()
    assert set(body) == {"message", *details}, body
    assert isinstance(body["message"], str) and body["message"]
    answer: dict[str, object] = body
    return answer


@pytest.mark.parametrize(("method", "path", "status"), ERROR_PATHS)
def test_client_errors(service: Service, method: str, path: str, status: int) -> None:
    response = service.client.open(path, method=method)
    if method == "HEAD":  # no body, but the type of the GET's
        assert response.status_code == status and response.content_type == "application/json"
    else:
        error_body(response, status)
    if status == 405:
        assert "Allow" in response.headers


@pytest.mark.parametrize("authorization", [None, "Bearer wrong-token-of-some-length"])
def test_401_without_the_api_token(make_service: Callable[..., Service], authorization: str | None) -> None:
    service = make_service(worker=False, api_token=TOKEN)
    headers = {"Authorization": authorization} if authorization else {}
    response = service.client.post("/api/v1/backup", headers=headers)
    assert error_body(response, 401) == {"message": WRONG_TOKEN_MESSAGE}


def test_422_from_a_backup_that_fails_its_check(service: Service) -> None:
    name = "snapshot-20240101_000000.tar.gz"
    (service.config.backup_dir / name).write_bytes(b"no gzip at all")
    response = service.client.post(f"/api/v1/backup/{name}/verify")
    message = error_body(response, 422)["message"]
    assert isinstance(message, str) and message.startswith("backup verification failed: not an intact .tar.gz")


def test_500_from_etcd_failure(make_service: Callable[..., Service]) -> None:
    service = make_service(etcd_overrides={"endpoints": ["http://127.0.0.1:1"], "timeout": "300ms"})
    message = error_body(service.client.post("/api/v1/backup"), 500)["message"]
    assert isinstance(message, str) and message.startswith("failed to save an etcd backup: ")


def test_500_from_a_lost_worker(make_service: Callable[..., Service]) -> None:
    """The waiting POST's job is left as a killed worker leaves it: started long ago, no heartbeat."""
    service = make_service(worker=False, backup_timeout="30s")

    def lose_the_pending_job() -> None:
        deadline = time.monotonic() + 10
        while (pending := service.connection.get(PENDING_KEY)) is None and time.monotonic() < deadline:
            time.sleep(0.05)
        job = read_job(service.connection, text(pending)) if pending is not None else None
        assert job is not None
        job.set_status(JobStatus.STARTED)
        job.started_at = datetime.now(UTC) - timedelta(seconds=HEARTBEAT_TTL + 5)
        job.save()

    loser = threading.Thread(target=lose_the_pending_job)
    loser.start()
    response = service.client.post("/api/v1/backup")
    loser.join()
    assert error_body(response, 500) == {"message": f"failed to save an etcd backup: {LOST_CAUSE}"}


def test_503_from_redis_failure(make_service: Callable[..., Service]) -> None:
    service = make_service(worker=False)
    dead = redis.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.5)
    client = create_app(service.config, dead).test_client()
    for method, path in [("POST", "/api/v1/backup"), ("GET", "/api/v1/jobs/" + "a" * 32)]:
        message = error_body(client.open(path, method=method), 503)["message"]
        assert isinstance(message, str) and message.startswith("job queue (Redis) unavailable: ")


def test_503_from_readyz_names_the_failed_check(service: Service) -> None:
    backup_dir = service.config.backup_dir
    shutil.rmtree(backup_dir)
    body = error_body(service.client.get("/readyz"), 503, "checks")
    why = f"{backup_dir} is not a readable directory"
    assert body["message"] == f"not ready: backup-dir: {why}"
    checks = body["checks"]
    assert isinstance(checks, dict) and set(checks) == {"redis", "backup-dir", "etcd", "api-auth"}
    assert checks["backup-dir"] == {"ok": False, "error": why}


def test_500_from_a_vanished_backup_dir(service: Service) -> None:
    service.config.backup_dir.rmdir()
    response = service.client.get("/api/v1/backup")
    assert error_body(response, 500) == {"message": "cannot read backup-dir: No such file or directory"}


def test_202_carries_a_message(make_service: Callable[..., Service]) -> None:
    service = make_service(worker=False, backup_timeout="500ms")
    response = service.client.post("/api/v1/backup")
    assert response.status_code == 202
    assert response.get_json()["message"] == "backup queued"
