"""Load on the Procfile deployment: bursts of POSTs coalesce, many downloads stay correct and leak nothing."""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from harness.deployment import Deployment
from harness.processes import wait_until
from harness.report import Report
from harness.servers import EtcdServer, RedisServer

pytestmark = pytest.mark.slow


def run_concurrently(count: int, action: Callable[[], object]) -> None:
    threads = [threading.Thread(target=action) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)


def test_fifty_concurrent_posts(tmp_path: Path, etcd: EtcdServer, redis_server: RedisServer,
                                redis_conn: redis.Redis, report: Report) -> None:
    deployment = Deployment(tmp_path, [etcd.url], redis_server, rotate=3).start(workers=2)
    answers: list[tuple[int, dict[str, object]]] = []

    def post() -> None:
        status, _, body = deployment.request("POST", "/api/v1/backup", timeout=300)
        answers.append((status, json.loads(body)))

    try:
        began = time.monotonic()
        run_concurrently(50, post)
        seconds = time.monotonic() - began
    finally:
        deployment.stop()
    statuses = Counter(status for status, _ in answers)
    assert len(answers) == 50
    assert set(statuses) <= {200, 500, 503}, statuses
    assert all(isinstance(body.get("message"), str) for _, body in answers)
    sizes_by_name: dict[str, set[object]] = {}
    for status, body in answers:
        if status == 200:
            sizes_by_name.setdefault(str(body["filename"]), set()).add(body["filesize"])
    # One file per name: every POST that names a file got that file's size.
    assert all(len(sizes) == 1 for sizes in sizes_by_name.values())
    jobs_done = sum(log.read_text().count("Job OK") for log in tmp_path.glob("worker*.log"))
    assert jobs_done == len(sizes_by_name)  # each snapshot taken has a name of its own
    assert len(sizes_by_name) <= 5  # queued requests joined one job
    assert deployment.backups() == sorted(sizes_by_name)[-3:]
    report("50 concurrent POSTs (gunicorn + Redis + 2 workers, rotate 3)",
           f"{dict(statuses)} in {seconds:.1f} s; {len(sizes_by_name)} snapshots taken, each with a name of its "
           f"own; {len(deployment.backups())} files left by rotation")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_hundred_concurrent_downloads_while_a_backup_is_written(
    tmp_path: Path, big_etcd: EtcdServer, redis_server: RedisServer, redis_conn: redis.Redis, report: Report
) -> None:
    deployment = Deployment(tmp_path, [big_etcd.url], redis_server).start()
    try:
        name = deployment.post_backup()["filename"]
        expected = hashlib.sha256((deployment.backup_dir / name).read_bytes()).hexdigest()
        web = deployment.web_worker_pid()
        fds_before = open_fds(web)
        digests: list[str] = []

        def download() -> None:
            digest = hashlib.sha256()
            with urllib.request.urlopen(f"{deployment.base}/api/v1/backup/{name}", timeout=300) as response:
                while chunk := response.read(1 << 20):
                    digest.update(chunk)
            digests.append(digest.hexdigest())

        writer = threading.Thread(target=deployment.post_backup)
        writer.start()
        began = time.monotonic()
        run_concurrently(100, download)
        seconds = time.monotonic() - began
        writer.join(120)
        assert len(digests) == 100 and set(digests) == {expected}
        assert len(deployment.backups()) == 2
        # Let gunicorn close what its keep-alive handling still holds, then compare.
        wait_until(lambda: open_fds(web) <= fds_before, 15, "the web worker's file descriptors to settle")
        fds_after = open_fds(web)
    finally:
        deployment.stop()
    size_mb = (deployment.backup_dir / name).stat().st_size / (1 << 20)
    report(f"100 concurrent downloads of a {size_mb:.0f} MB backup while another backup is written",
           f"all 100 SHA-256-equal to the file, in {seconds:.1f} s; the web worker's open files "
           f"{fds_before} before, {fds_after} after")
