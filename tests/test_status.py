"""`etcd-backup status` (and GET /api/v1/status behind it) against a live service in each state: no
backups, fresh, stale, the last backup failed, the drill failed; its exit statuses, --json, and colour
only on a terminal. The service is the real API and worker on the test's etcd and Redis, served over
HTTP; the command is the installed console script, run as a separate process."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import redis
from werkzeug.serving import make_server

from common.config import load_config
from common.metrics import LAST_FAILURE_KEY
from common.status import EMBEDDED_REDIS
from harness.cli import etcd_backup, on_terminal
from harness.in_process import Service, served_over_http
from harness.processes import free_port
from harness.servers import EtcdServer
from worker.drill import run_drill

SCHEDULE = {"schedule": "0 */6 * * *", "drill": "30 3 * * *"}
TOKEN = "status-token-0123456789"


def status_json(*args: str) -> dict[str, Any]:
    done = etcd_backup("status", "--json", *args)
    assert done.returncode == 0, done.stderr
    document: dict[str, Any] = json.loads(done.stdout)
    return document


def field(text: str, label: str) -> str:
    """The value on the report's line labelled `label`."""
    lines = [line for line in text.splitlines() if line.startswith(label + " ")]
    assert len(lines) == 1, (label, text)
    return lines[0][len(label):].strip()


@pytest.fixture
def live(make_service: Callable[..., Service]) -> Iterator[tuple[Service, str]]:
    """A service with a schedule and a drill, and its base URL."""
    service = make_service(**SCHEDULE)
    with served_over_http(service) as base:
        yield service, base


def test_no_backups_yet(live: tuple[Service, str]) -> None:
    service, base = live
    done = etcd_backup("status", "--url", base)
    assert done.returncode == 0, done.stderr
    assert field(done.stdout, "newest backup") == "none"
    assert field(done.stdout, "kept") == "0 backups, 0 bytes"
    assert field(done.stdout, "last failure") == "none"
    assert field(done.stdout, "drill") == "never run"
    assert "(0 */6 * * *)" in field(done.stdout, "next backup")
    assert "(30 3 * * *)" in field(done.stdout, "next drill")
    assert "\033[" not in done.stdout  # not a terminal: no colour

    document = status_json("--url", base)
    assert document["newest"] is None and document["backups"] == {"count": 0, "bytes": 0, "signed_by": None}
    assert document["queue"]["workers"] == 1 and document["queue"]["queued"] == 0
    next_backup = datetime.fromisoformat(document["schedule"]["backup"]["next"])
    assert next_backup.hour % 6 == 0 and next_backup.minute == 0 and next_backup > datetime.fromisoformat(
        document["time"])

    check = etcd_backup("status", "--url", base, "--max-age", "1h")
    assert check.returncode == 1 and field(check.stdout, "check") == "FAILED: no backup"
    failed = etcd_backup("status", "--url", base, "--max-age", "1h", "--json")
    assert failed.returncode == 1
    assert json.loads(failed.stdout)["ok"] is False and json.loads(failed.stdout)["problems"] == ["no backup"]


def test_a_fresh_backup_then_stale(live: tuple[Service, str]) -> None:
    service, base = live
    taken = service.client.post("/api/v1/backup").get_json()
    detail = service.client.get("/api/v1/backup?detail=true").get_json()[-1]

    document = status_json("--url", base, "--max-age", "1h")
    assert document["ok"] is True and document["problems"] == []
    newest = document["newest"]
    assert newest["filename"] == taken["filename"] and newest["filesize"] == taken["filesize"]
    assert newest["revision"] == detail["revision"]
    assert 0 <= newest["age_seconds"] < 30
    archive = service.config.backup_dir / taken["filename"]
    assert document["backups"] == {"count": 1, "bytes": archive.stat().st_size, "signed_by": None}
    assert document["failing"] is False and document["last_failure"] is None

    done = etcd_backup("status", "--url", base, "--max-age", "1h")
    assert done.returncode == 0, done.stdout
    line = field(done.stdout, "newest backup")
    assert line.startswith(f"{taken['filename']}, ") and f"revision {detail['revision']}" in line
    assert " s ago (" in line

    time.sleep(2.1)  # older than a --max-age of 1 s
    stale = etcd_backup("status", "--url", base, "--max-age", "1s")
    assert stale.returncode == 1, stale.stdout
    verdict = field(stale.stdout, "check")
    assert re.fullmatch(r"FAILED: the newest backup is \d+ s old, more than --max-age 1 s", verdict), verdict


def test_reading_the_store_directly_with_config(live: tuple[Service, str], tmp_path: Path) -> None:
    """--config: the same facts, read from the store and Redis of the config, no service asked."""
    service, base = live
    taken = service.client.post("/api/v1/backup").get_json()
    config = tmp_path / "config.yml"  # the one the service was built from (conftest's write_config)
    direct = status_json("--config", str(config))
    asked = status_json("--url", base)
    for key in ("backups", "last_failure", "drill", "schedule", "failing"):
        assert direct[key] == asked[key], key
    assert {**direct["newest"], "age_seconds": 0} == {**asked["newest"], "age_seconds": 0}  # asked a moment apart
    assert direct["newest"]["filename"] == taken["filename"]
    assert etcd_backup("status", "--config", str(config), "--max-age", "1h").returncode == 0
    both = etcd_backup("status", "--config", str(config), "--url", base)
    assert both.returncode == 2 and "not both" in both.stderr


def test_the_last_backup_failed(make_service: Callable[..., Service], tmp_path: Path) -> None:
    """A backup, then etcd goes away: the next backup fails, and status says so, with its cause."""
    etcd = EtcdServer(tmp_path / "etcd").start()
    try:
        service = make_service(etcd_overrides={"endpoints": [etcd.url]})
        first = service.client.post("/api/v1/backup").get_json()["filename"]
        etcd.stop()
        failure = service.client.post("/api/v1/backup")
        assert failure.status_code == 500
        cause = failure.get_json()["message"].removeprefix("failed to save an etcd backup: ")
        with served_over_http(service) as base:
            document = status_json("--url", base)
            done = etcd_backup("status", "--url", base, "--max-age", "1h")
    finally:
        etcd.stop()
    assert document["newest"]["filename"] == first
    assert document["failing"] is True and document["last_failure"]["message"] == cause
    assert etcd.url.removeprefix("http://") in cause  # the cause names the endpoint
    assert done.returncode == 0  # --max-age is the check: the newest backup is still young
    assert field(done.stdout, "last failure").endswith(f": {cause}")
    assert field(done.stdout, "check") == "the last backup failed"


def test_the_drill_failed(live: tuple[Service, str], redis_conn: redis.Redis) -> None:
    service, base = live
    name = service.client.post("/api/v1/backup").get_json()["filename"]
    archive = service.config.backup_dir / name
    data = bytearray(archive.read_bytes())
    data[-8] ^= 0xFF  # the gzip CRC-32: always a corruption
    archive.write_bytes(bytes(data))
    drilled = run_drill(service.config, redis_conn)
    assert not drilled.passed

    document = status_json("--url", base)
    assert document["drill"]["passed"] is False and document["drill"]["backup"] == name
    assert document["drill"]["reason"] == drilled.reason and document["drill"]["last_success"] is None
    done = etcd_backup("status", "--url", base)
    line = field(done.stdout, "drill")
    assert line.startswith("failed ") and f" on {name}: " in line and line.endswith("(never passed)")


def test_a_failure_message_cannot_drive_the_terminal(live: tuple[Service, str], redis_conn: redis.Redis) -> None:
    """What the report shows comes from Redis and the store, which others can write: no escape reaches the
    terminal, no newline forges a line."""
    service, base = live
    redis_conn.hset(LAST_FAILURE_KEY, mapping={"time": str(time.time()), "message": "boom\n\033[2Jcheck  OK"})
    done = etcd_backup("status", "--url", base)
    assert field(done.stdout, "last failure").endswith(": boom [2Jcheck OK")
    assert "\033" not in done.stdout
    labels = [line.split("  ")[0] for line in done.stdout.splitlines()]
    assert labels == ["status of", "newest backup", "kept", "last failure", "drill", "queue", "deltas", "next backup",
                      "next drill", "check"]  # no line forged
    assert field(done.stdout, "check") == "the last backup failed"


def test_colour_on_a_terminal_only(live: tuple[Service, str]) -> None:
    service, base = live
    service.client.post("/api/v1/backup")
    status, output = on_terminal("status", "--url", base)
    assert status == 0 and "\033[32m" in output  # green: a fresh backup
    status, output = on_terminal("status", "--url", base, env={"NO_COLOR": "1"})
    assert status == 0 and "\033[" not in output and "newest backup" in output
    assert "\033[" not in etcd_backup("status", "--url", base).stdout


def test_the_token_and_an_unreachable_service(make_service: Callable[..., Service]) -> None:
    service = make_service(api_token=TOKEN)
    with served_over_http(service) as base:
        refused = etcd_backup("status", "--url", base)
        allowed = etcd_backup("status", "--url", base, "--token", TOKEN)
        from_environment = etcd_backup("status", env={"ETCD_BACKUP_URL": base, "ETCD_BACKUP_API_TOKEN": TOKEN})
    assert refused.returncode == 1 and "401" in refused.stderr and refused.stdout == ""
    assert refused.stderr.startswith("etcd-backup status: ") and refused.stderr.count("\n") == 1
    assert allowed.returncode == 0 and field(allowed.stdout, "newest backup") == "none"
    assert from_environment.returncode == 0
    assert from_environment.stdout.splitlines()[1:] == allowed.stdout.splitlines()[1:]  # but the time asked
    dead = etcd_backup("status", "--url", f"http://127.0.0.1:{free_port()}")
    assert dead.returncode == 1 and "cannot reach" in dead.stderr
    bad_usage = etcd_backup("status", "--max-age", "soon")
    assert bad_usage.returncode == 2 and "--max-age" in bad_usage.stderr


def test_with_the_embedded_queue_config_reads_the_store_only(write_config: Callable[..., Path],
                                                             make_service: Callable[..., Service]) -> None:
    """Without redis-url the queue lives inside the service: --config tells what the store holds, and where
    the rest is to be asked."""
    service = make_service()
    taken = service.client.post("/api/v1/backup").get_json()
    config = write_config()  # the same etcd and backup-dir, no redis-url
    done = etcd_backup("status", "--config", str(config), "--max-age", "1h", env={"REDIS_URL": ""})
    assert done.returncode == 0, done.stderr
    assert field(done.stdout, "newest backup").startswith(taken["filename"])
    assert field(done.stdout, "last failure") == "unknown" and field(done.stdout, "drill") == "unknown"
    assert field(done.stdout, "redis") == EMBEDDED_REDIS


def test_redis_down_the_store_facts_remain(write_config: Callable[..., Path],
                                           make_service: Callable[..., Service]) -> None:
    """Redis does not answer: the store's facts are still there, and the report says what could not be read."""
    service = make_service()
    taken = service.client.post("/api/v1/backup").get_json()
    config = load_config(write_config(redis_url="redis://127.0.0.1:1"))  # nothing listens there
    document = Service(config, redis.Redis.from_url("redis://127.0.0.1:1")).client.get("/api/v1/status").get_json()
    assert document["newest"]["filename"] == taken["filename"] and document["backups"]["count"] == 1
    assert document["redis"].startswith("unreachable: ") and "Connection refused" in document["redis"]
    assert document["queue"] is None and document["last_failure"] is None and document["drill"] is None


@pytest.mark.parametrize("answer", [b'["snapshot-20260101_000000.tar.gz"]', b'{"backups": {}, "time": "now"}',
                                    b'{"backups": {"count": 1}, "time": "2026-01-01T00:00:00+00:00", "newest": 5}'])
def test_an_answer_that_is_no_status_document(answer: bytes) -> None:
    """An older service, or something else at that address: one line naming it, exit 1, never a traceback."""
    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "application/json")])
        return [answer]

    server = make_server("127.0.0.1", 0, app)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        done = etcd_backup("status", "--url", f"http://127.0.0.1:{server.server_port}")
    finally:
        server.shutdown()
        thread.join()
    assert done.returncode == 1 and done.stdout == "", (done.stdout, done.stderr)
    assert done.stderr.startswith("etcd-backup status: ") and done.stderr.count("\n") == 1, done.stderr
    assert "status document" in done.stderr and "Traceback" not in done.stderr
