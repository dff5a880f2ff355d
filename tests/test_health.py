"""GET /healthz and GET /readyz: up, and ready to take a backup (Redis, backup-dir, an etcd endpoint that a
worker saw answer: the API itself never connects to etcd, common.etcd_seen)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import time
from collections.abc import Callable

import pytest
import redis

from common.config import load_config
from common.etcd_seen import FRESH_SECONDS, MAX_REPORT_BYTES, SEEN_KEY
from common.startup import prepare_backup_dir
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
    detail = body["checks"]["etcd"]["detail"]
    assert detail.startswith(f"{etcd.url} answers (etcd 3."), detail
    assert f", as seen by worker@{socket.gethostname()}:{os.getpid()} at " in detail, detail


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
    failed = failed_checks(service)
    assert list(failed) == ["redis", "etcd"]  # what the workers saw of etcd is in Redis
    assert failed["etcd"].startswith("unknown: cannot read the workers' reports of etcd from Redis (")


def test_not_ready_without_backup_dir(service: Service) -> None:
    shutil.rmtree(service.config.backup_dir)
    failed = failed_checks(service)
    assert list(failed) == ["backup-dir"] and "is not a readable directory" in failed["backup-dir"]


def test_not_ready_without_an_answering_etcd(make_service: Callable[..., Service]) -> None:
    """The worker saw etcd fail: /readyz says so, in the worker's words, with who and when."""
    service = make_service(etcd_overrides={"endpoints": ["http://127.0.0.1:1"], "timeout": "1s"})
    failed = failed_checks(service)
    assert list(failed) == ["etcd"]
    assert failed["etcd"].startswith(f"no worker has reported etcd answering in {FRESH_SECONDS:g} s; the last "
                                     f"report: worker@{socket.gethostname()}:{os.getpid()} at "), failed
    assert " s ago): no current etcd member answered: http://127.0.0.1:1: " in failed["etcd"], failed


def test_not_ready_while_no_worker_reports(make_service: Callable[..., Service], etcd: EtcdServer) -> None:
    """etcd answers, but no worker runs to see it (nor to take a backup): not ready."""
    service = make_service(worker=False)
    failed = failed_checks(service)
    assert failed == {"etcd": f"no worker has reported etcd answering in {FRESH_SECONDS:g} s (is a worker running?)"}


def test_a_stale_report_is_not_taken(service: Service, redis_conn: redis.Redis) -> None:
    """A worker that stopped reporting (its last report outlives its TTL, e.g. set again by hand) says nothing."""
    assert service.client.get("/readyz").status_code == 200
    service.stop_worker()
    report = json.loads(redis_conn.get(SEEN_KEY) or b"{}")
    redis_conn.set(SEEN_KEY, json.dumps({**report, "at": time.time() - FRESH_SECONDS - 1}))  # no TTL
    assert list(failed_checks(service)) == ["etcd"]


FRESH = {"reporter": "worker@pod:1", "endpoint": "https://etcd:2379", "version": "3.5.0", "revision": 7}
HOSTILE_REPORTS: list[Callable[[redis.Redis], object]] = [
    lambda r: r.set(SEEN_KEY, b"not json"),
    lambda r: r.set(SEEN_KEY, b"\xff\xfe"),
    lambda r: r.set(SEEN_KEY, json.dumps([1, 2])),
    lambda r: r.set(SEEN_KEY, json.dumps({**FRESH, "at": time.time(), "pad": "x" * MAX_REPORT_BYTES})),
    lambda r: r.set(SEEN_KEY, b"x" * (64 << 20)),  # never read whole
    lambda r: r.set(SEEN_KEY, json.dumps({**FRESH, "at": time.time() + 3600})),  # from the future
    lambda r: r.set(SEEN_KEY, json.dumps({**FRESH, "at": float("nan")}).replace("NaN", "1e999")),
    lambda r: r.set(SEEN_KEY, json.dumps({**FRESH, "at": True})),
    lambda r: r.set(SEEN_KEY, json.dumps({**FRESH, "at": str(time.time())})),
    lambda r: r.set(SEEN_KEY, json.dumps({**FRESH, "at": time.time(), "revision": True})),
    lambda r: r.set(SEEN_KEY, json.dumps({**FRESH, "at": time.time(), "revision": -1})),
    lambda r: r.set(SEEN_KEY, json.dumps({**FRESH, "at": time.time(), "reporter": ["x"]})),
    lambda r: r.set(SEEN_KEY, json.dumps({"at": time.time()})),
    lambda r: r.rpush(SEEN_KEY, "a list"),
    lambda r: r.hset(SEEN_KEY, "at", time.time()),
]


@pytest.mark.parametrize("plant", HOSTILE_REPORTS)
def test_a_report_that_is_not_one_is_not_taken(make_service: Callable[..., Service], redis_conn: redis.Redis,
                                               plant: Callable[[redis.Redis], object]) -> None:
    """Whoever can write Redis can write the report: what is not one never makes the API ready, nor 500."""
    service = make_service(worker=False)
    plant(redis_conn)
    response = service.client.get("/readyz")
    assert response.status_code == 503, response.get_json()
    failed = failed_checks(service)
    assert list(failed) == ["etcd"] and failed["etcd"].startswith("no worker has reported etcd answering")
    # WRONGTYPE says nothing about etcd either: the check fails, in the error shape, without a 500.


def test_a_reports_text_is_shown_escaped(make_service: Callable[..., Service], redis_conn: redis.Redis) -> None:
    service = make_service(worker=False)
    redis_conn.set(SEEN_KEY, json.dumps({**FRESH, "at": time.time(), "reporter": "w\x1b[2J\r\nforged: ok"}))
    detail = service.client.get("/readyz").get_json()["checks"]["etcd"]["detail"]
    assert "as seen by w\\x1b[2J\\r\\nforged: ok at " in detail and "\x1b" not in detail


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
