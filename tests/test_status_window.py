"""`etcd-backup status` and the recovery window: the recovery point, the window (earliest and latest revision
and time), the gaps with their reason and the delta watcher's state, in text and --json, asking the service
(--url) and reading the store and Redis itself (--config); --max-recovery-age, alone and with --max-age. Against
a real etcd, Redis and delta watcher storing deltas (tests/test_deltas.py's helpers); a gap made the way it is
made in production (etcd compacted past a stopped watcher); and with deltas off."""

from __future__ import annotations

import json
import os
import re
import socket
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import redis
from werkzeug.serving import make_server

from common import present
from common.recovery_window import COMPACTED
from harness.cli import etcd_backup
from harness.in_process import Service, served_over_http
from harness.processes import wait_until
from harness.servers import EtcdServer
from harness.writer import ContinuousWriter, current_revision
from tests.test_deltas import compacted_past_the_watcher, wait_stored, watcher
from tests.test_status import field, status_json

# The restores and watchers of test_deltas share an xdist group; these watchers only store, beside them.
pytestmark = pytest.mark.xdist_group("point-in-time")


def snapshot_holds(service: Service, backup: str) -> int:
    """The earliest revision a restore from `backup` reaches: its snapshot may hold up to revision_at_end."""
    metadata = service.store.read_metadata(backup)
    assert metadata is not None
    return max(metadata.revision, metadata.revision_at_end or 0)


def window_of(document: dict[str, Any]) -> dict[str, Any]:
    window: dict[str, Any] = document["recovery_window"]
    return window


@pytest.mark.slow  # about 12 s: a second of writes, a worker's report of etcd after them (every 5 s), a 2 s wait
def test_the_window_of_a_running_watcher_in_text_and_json_by_url_and_by_config(
        make_service: Callable[..., Service], etcd: EtcdServer, redis_conn: redis.Redis, tmp_path: Path) -> None:
    service = make_service(delta_period="100ms")
    config = str(tmp_path / "config.yml")  # the one the service was built from (conftest's write_config)
    writer = ContinuousWriter(etcd.client(), f"/status-window-{tmp_path.name}/").start()
    backup = service.client.post("/api/v1/backup").get_json()["filename"]
    with served_over_http(service) as base, watcher(service.config, redis_conn):
        time.sleep(1)
        writer.stop()
        end = current_revision(etcd.url)
        wait_stored(redis_conn, end)
        # How far behind etcd the watcher is: by the worker's report of etcd's revision (every 5 s) after it stored.
        wait_until(lambda: window_of(status_json("--url", base))["watcher"]["behind_revisions"] is not None, 10,
                   "a report of etcd's revision after the last delta")
        # The store lists what the watcher's Redis says it stored (a local backup-dir: at once).
        api = service.client.get("/api/v1/recovery-window").get_json()
        assert api["latest"]["revision"] == end, api
        by_url, by_config = status_json("--url", base), status_json("--config", config)
        text = etcd_backup("status", "--url", base)
        config_text = etcd_backup("status", "--config", config)
        checked = etcd_backup("status", "--url", base, "--max-recovery-age", "1h", "--max-age", "1h")
    earliest = snapshot_holds(service, backup)
    for document in (by_url, by_config):
        window = window_of(document)
        assert window["deltas_on"] is True and window["deltas_stored"] == len(service.store.list_deltas()) >= 3
        assert window["earliest"] == api["earliest"] and window["earliest"]["revision"] == earliest
        assert window["latest"] == api["latest"] and window["latest"]["revision"] == end
        assert window["gaps"] == []
        point = window["recovery_point"]
        assert point["revision"] == end and 0 <= point["age_seconds"] < 10, point
        assert datetime.fromisoformat(point["time"]) >= datetime.fromisoformat(api["latest"]["time"])
        running = window["watcher"]
        assert running["running"] is True, running
        assert f"@{socket.gethostname()}:{os.getpid()}" in running["lease_holder"]  # this process's thread
        assert running["last_stored"]["revision"] == end
        assert running["last_stored"]["time"] == api["latest"]["time"]
        assert running["behind_revisions"] == 0, running  # the worker's report of etcd: at most `end`

    for shown in (text, config_text):
        assert shown.returncode == 0, shown.stderr
        assert field(shown.stdout, "recovery point").startswith(f"revision {end}, ")
        assert field(shown.stdout, "recovery window") == (
            f"revision {earliest} ({present.when(api['earliest']['time'])}) "
            f"to {end} ({present.when(api['latest']['time'])})")
        assert field(shown.stdout, "gaps") == "none"
        line = field(shown.stdout, "delta watcher")
        assert line.startswith(f"running, lease held by delta-watcher@{socket.gethostname()}:{os.getpid()}/"), line
        assert f"last stored revision {end} " in line and "0 revisions behind etcd" in line, line
        assert "deltas" not in [row.split("  ")[0] for row in shown.stdout.splitlines()]  # on: said by the rest

    assert checked.returncode == 0, checked.stdout
    assert "check" not in [row.split("  ")[0] for row in checked.stdout.splitlines()]

    # The watcher stopped: it gave its lease back, and the recovery point grows old.
    time.sleep(2.1)
    with served_over_http(service) as base:
        stopped = etcd_backup("status", "--url", base, "--max-recovery-age", "1s")
        both = etcd_backup("status", "--url", base, "--max-recovery-age", "1s", "--max-age", "1s", "--json")
        young_backup = etcd_backup("status", "--url", base, "--max-recovery-age", "1h", "--max-age", "1h")
    assert stopped.returncode == 1, stopped.stdout
    assert field(stopped.stdout, "delta watcher").startswith("not running (no watcher holds the lease), "
                                                       f"last stored revision {end} ")
    verdict = field(stopped.stdout, "check")
    assert re.fullmatch(r"FAILED: the recovery point is \d+ s old, more than --max-recovery-age 1 s", verdict), \
        verdict
    assert both.returncode == 1
    problems = json.loads(both.stdout)["problems"]
    assert len(problems) == 2 and problems[0].startswith("the newest backup is ") and \
        problems[1].startswith("the recovery point is "), problems
    assert young_backup.returncode == 0, young_backup.stdout
    config_check = etcd_backup("status", "--config", config, "--max-recovery-age", "1s")
    assert config_check.returncode == 1 and "--max-recovery-age 1 s" in field(config_check.stdout, "check")


def test_a_gap_where_etcd_compacted_past_the_watcher(
        make_service: Callable[..., Service], redis_conn: redis.Redis, tmp_path: Path) -> None:
    """As tests/test_deltas.py makes one: a backup, writes while no watcher runs, etcd compacted past them; the
    watcher then records the gap and has a full backup taken. Status names the revisions and the reason."""
    own = EtcdServer(tmp_path / "etcd").start()  # compacted: not the shared one
    try:
        service = make_service(etcd_overrides={"endpoints": [own.url]}, delta_period="100ms")
        old, missed, _ = compacted_past_the_watcher(service, own)
        with watcher(service.config, redis_conn):
            wait_until(lambda: len(service.store.list_backups()) == 2, 30, "the full backup after the gap")
            end = own.client().put("/gap/d", "4").header.revision
            wait_stored(redis_conn, end)
            with served_over_http(service) as base:
                document = status_json("--url", base)
                text = etcd_backup("status", "--url", base)
                checked = etcd_backup("status", "--url", base, "--max-recovery-age", "1h")
            by_config = status_json("--config", str(tmp_path / "config.yml"))
    finally:
        own.stop()
    newer = service.store.list_backups()[-1]
    assert snapshot_holds(service, old) == missed - 1
    first, last = missed, snapshot_holds(service, newer) - 1
    for window in (window_of(document), window_of(by_config)):
        assert window["gaps"] == [{"from": first, "to": last, "reason": COMPACTED}], window
        assert window["earliest"]["revision"] == missed - 1 and window["latest"]["revision"] == end
        assert window["recovery_point"]["revision"] == end
    assert text.returncode == 0, text.stderr
    assert field(text.stdout, "gaps") == f"revisions {first} to {last}: {COMPACTED}"
    assert field(text.stdout, "recovery window").startswith(f"revision {missed - 1} (")
    assert checked.returncode == 0, checked.stdout  # a gap in the past: the recovery point is young


def test_deltas_off_in_one_line(make_service: Callable[..., Service], tmp_path: Path) -> None:
    service = make_service()
    service.client.post("/api/v1/backup")
    with served_over_http(service) as base:
        document = status_json("--url", base)
        text = etcd_backup("status", "--url", base)
        checked = etcd_backup("status", "--url", base, "--max-recovery-age", "1h")
        json_check = etcd_backup("status", "--url", base, "--max-recovery-age", "1h", "--json")
    local = status_json("--config", str(tmp_path / "config.yml"))
    for window in (window_of(document), window_of(local)):
        assert window["deltas_on"] is False and window["deltas_stored"] == 0 and window["recovery_point"] is None
    assert text.returncode == 0, text.stderr
    labels = [row.split("  ")[0] for row in text.stdout.splitlines()]
    assert field(text.stdout, "deltas").startswith("off: full backups only")
    for label in ("recovery point", "recovery window", "gaps", "delta watcher"):
        assert label not in labels
    assert checked.returncode == 1
    assert field(checked.stdout, "check") == "FAILED: no recovery point: deltas are off"
    assert json.loads(json_check.stdout)["problems"] == ["no recovery point: deltas are off"]
    bad_usage = etcd_backup("status", "--max-recovery-age", "soon")
    assert bad_usage.returncode == 2 and "--max-recovery-age" in bad_usage.stderr


def test_deltas_on_and_none_stored_yet_fails_the_check(make_service: Callable[..., Service],
                                                       redis_conn: redis.Redis) -> None:
    """`deltas: true`, but no watcher has stored anything (it is not running): no recovery point, and the check
    says so, whatever the full backups."""
    service = make_service(deltas=True)
    service.client.post("/api/v1/backup")
    with served_over_http(service) as base:
        document = status_json("--url", base)
        checked = etcd_backup("status", "--url", base, "--max-recovery-age", "1h", "--max-age", "1h")
    window = window_of(document)
    assert window["deltas_on"] is True and window["recovery_point"] is None and window["deltas_stored"] == 0
    assert window["watcher"]["running"] is False and window["watcher"]["last_stored"] is None
    assert checked.returncode == 1
    assert field(checked.stdout, "recovery point") == "none: no delta stored yet"
    assert field(checked.stdout, "delta watcher").startswith("not running (no watcher holds the lease), nothing stored")
    assert field(checked.stdout, "check") == "FAILED: no recovery point: no delta stored yet"


def test_an_older_service_without_the_window(make_service: Callable[..., Service]) -> None:
    """A service from before the window was in its status: said so, and the check cannot pass on it."""
    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps({"time": "2026-12-07T00:00:00+00:00", "newest": None, "backups": {"count": 0, "bytes": 0},
                            "schedule": {}, "redis": "ok"}).encode()]

    server = make_server("127.0.0.1", 0, app)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_port}"
        text = etcd_backup("status", "--url", url)
        checked = etcd_backup("status", "--url", url, "--max-recovery-age", "1h")
    finally:
        server.shutdown()
        thread.join()
    assert text.returncode == 0, text.stderr
    assert field(text.stdout, "recovery window") == "unknown: the service does not say (older than this command)"
    assert checked.returncode == 1
    assert field(checked.stdout, "check") == "FAILED: no recovery point: the service does not say"
