"""A worker killed during rotation, after its backup was published: the POST still reports the backup.

The Procfile deployment (gunicorn web + an `etcd-backup worker` process, real Redis, real etcd);
20,000 old backups make the rotation after the new backup last long enough to be hit.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis

from common import backups
from harness.deployment import Deployment
from harness.report import Report
from harness.servers import EtcdServer, RedisServer

OLD_BACKUPS = 20_000


@pytest.mark.slow
def test_a_worker_killed_during_rotation_still_reports_its_backup(
    tmp_path: Path, etcd: EtcdServer, redis_server: RedisServer, redis_conn: redis.Redis, report: Report,
) -> None:
    deployment = Deployment(tmp_path / "service", [etcd.url], redis_server, rotate=3).start()
    try:
        oldest = datetime(2020, 1, 1, tzinfo=UTC)
        for number in range(OLD_BACKUPS):
            (deployment.backup_dir / backups.backup_name(oldest + timedelta(minutes=number))).write_bytes(b"old")
        answer: dict[str, Any] = {}

        def post() -> None:
            status, _, body = deployment.request("POST", "/api/v1/backup", timeout=120)
            answer.update(status=status, body=json.loads(body))

        poster = threading.Thread(target=post, daemon=True)
        poster.start()
        # Rotation runs once the new backup is published, and deletes newest first: rotate 3 keeps the new
        # backup and the 2 newest old ones, so when the third newest old one is gone, it is under way.
        first_deleted = deployment.backup_dir / backups.backup_name(oldest + timedelta(minutes=OLD_BACKUPS - 3))
        deadline = time.monotonic() + 60
        while first_deleted.exists() and time.monotonic() < deadline:
            time.sleep(0.001)
        assert not first_deleted.exists(), "rotation did not start"
        deployment.workers[0].send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        deployment.workers[0].wait()
        left = len(deployment.backups())
        assert left > 3, f"rotation had already finished ({left} backups left): the kill came too late"
        published = deployment.backups()[-1]
        poster.join(60)
        waited = time.monotonic() - killed_at
        assert answer.get("status") == 200, answer
        assert answer["body"] == {"message": "backup successfully", "filename": published,
                                  "filesize": (deployment.backup_dir / published).stat().st_size}
        job_id = next(key.decode().split(":")[-1] for key in redis_conn.keys("rq:job:*")
                      if len(key.decode().split(":")[-1]) == 32)
        status, _, body = deployment.request("GET", f"/api/v1/jobs/{job_id}")
        job = json.loads(body)
        assert status == 200 and job["status"] == "finished" and job["filename"] == published, job
    finally:
        deployment.stop()
    report(f"a worker SIGKILLed during the rotation of {OLD_BACKUPS} old backups, after its new backup was "
           "published (Procfile deployment, real Redis)",
           f"{OLD_BACKUPS + 1 - left} deleted before the kill, {left} left; the POST answered 200 with "
           f"{published} {waited:.1f} s after the kill; GET /api/v1/jobs/<id> says finished with its filename")
