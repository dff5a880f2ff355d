"""Faults, with real processes killed for real: nothing partial is ever listed, no good backup lost.

The deployments are the Procfile's (gunicorn web + `etcd-backup worker` processes on a real Redis)
backing up a real etcd filled to 150 MB (`big_etcd`), so that a backup lasts long enough to be hit mid-stream.
"""

from __future__ import annotations

import gzip
import json
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from api.outcomes import LOST_CAUSE
from harness.deployment import Deployment
from harness.processes import wait_until
from harness.report import Report
from harness.servers import EtcdServer, RedisServer, start_cluster
from worker.backup import STALL_SECONDS

pytestmark = pytest.mark.slow

@pytest.fixture
def deployment(tmp_path: Path, big_etcd: EtcdServer, redis_server: RedisServer,
               redis_conn: redis.Redis) -> Iterator[Deployment]:
    running = Deployment(tmp_path / "service", [big_etcd.url], redis_server, etcd={
        "endpoints": [big_etcd.url], "timeout": "2s"}).start()
    yield running
    running.stop()


class BackgroundPost(threading.Thread):
    """A POST /api/v1/backup that waits in the background, as a client would."""

    def __init__(self, deployment: Deployment) -> None:
        super().__init__(daemon=True)
        self.deployment = deployment
        self.status = 0
        self.answer: dict[str, Any] = {}
        self.finished_at = 0.0
        self.start()

    def run(self) -> None:
        status, _, body = self.deployment.request("POST", "/api/v1/backup", timeout=300)
        self.finished_at = time.monotonic()
        self.status, self.answer = status, json.loads(body)


def wait_for_temp_file(deployment: Deployment) -> str:
    """Wait until a backup is being written (its temp file has bytes); return the temp file's name."""

    def writing() -> bool:
        names = deployment.temp_files()
        return bool(names) and (deployment.backup_dir / names[0]).stat().st_size > 0

    wait_until(writing, 60, "a backup to be written")
    return deployment.temp_files()[0]


def assert_intact(deployment: Deployment, name: str) -> None:
    with gzip.open(deployment.backup_dir / name) as archive:
        while archive.read(1 << 20):
            pass


def test_worker_killed_mid_backup(deployment: Deployment, report: Report) -> None:
    post = BackgroundPost(deployment)
    temp = wait_for_temp_file(deployment)
    killed_at = time.monotonic()
    deployment.workers[0].send_signal(signal.SIGKILL)
    deployment.workers[0].wait()
    post.join(90)
    waited = post.finished_at - killed_at
    assert post.status == 500, post.answer
    assert post.answer["message"] == f"failed to save an etcd backup: {LOST_CAUSE}"
    assert waited < 60
    assert deployment.backups() == []
    assert deployment.temp_files() == [temp]  # the dead worker's, until a worker starts
    deployment.workers.pop()

    deployment.start_worker()
    wait_until(lambda: deployment.temp_files() == [], 10, "the new worker to remove the dead one's temp file")
    began = time.monotonic()
    answer = deployment.post_backup()
    next_post = time.monotonic() - began
    assert deployment.backups() == [answer["filename"]]
    assert_intact(deployment, answer["filename"])
    report("worker process killed (SIGKILL) in the middle of a 150 MB backup",
           f"the waiting POST got 500 {waited:.1f} s after the kill: \"{LOST_CAUSE}\"; nothing listed; "
           f"the temp file was removed by the next worker's start; the next POST took a backup in {next_post:.1f} s")


def test_worker_sigterm_mid_backup_finishes_it_then_exits(deployment: Deployment, report: Report) -> None:
    post = BackgroundPost(deployment)
    wait_for_temp_file(deployment)
    worker = deployment.workers[0]
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(60) == 0
    post.join(60)
    assert post.status == 200, post.answer
    assert deployment.backups() == [post.answer["filename"]]
    assert deployment.temp_files() == []
    assert_intact(deployment, post.answer["filename"])
    deployment.workers.pop()
    report("SIGTERM to a worker process in the middle of a backup",
           "the worker finished that backup (POST 200, archive intact), then exited with status 0; no temp file")


def signal_etcd_mid_stream(deployment: Deployment, etcd: EtcdServer, signum: int) -> tuple[BackgroundPost, float]:
    """Start a POST, wait until its backup is being written, signal etcd; return the POST and when."""
    post = BackgroundPost(deployment)
    wait_for_temp_file(deployment)
    assert etcd.proc is not None
    signalled_at = time.monotonic()
    etcd.proc.send_signal(signum)
    return post, signalled_at


def test_etcd_killed_mid_stream(deployment: Deployment, big_etcd: EtcdServer, report: Report) -> None:
    post, killed_at = signal_etcd_mid_stream(deployment, big_etcd, signal.SIGKILL)
    assert big_etcd.proc is not None
    big_etcd.proc.wait()
    try:
        post.join(90)
        assert post.status == 500, post.answer
        assert post.answer["message"].startswith(f"failed to save an etcd backup: snapshot stream from {big_etcd.url}")
        assert deployment.backups() == []
        assert deployment.temp_files() == []
        report("etcd killed (SIGKILL) in the middle of streaming a 150 MB snapshot",
               f"POST 500 after {post.finished_at - killed_at:.2f} s: \"{post.answer['message']}\"; "
               "no file, no temp file")
    finally:
        big_etcd.start()  # the same data dir and ports, for the tests that follow


def test_redis_down_then_back(tmp_path: Path, big_etcd: EtcdServer, report: Report) -> None:
    own_redis = RedisServer(tmp_path / "redis").start()
    deployment = Deployment(tmp_path / "service", [big_etcd.url], own_redis).start()
    try:
        first = deployment.post_backup()["filename"]
        own_redis.stop()
        status, _, body = deployment.request("POST", "/api/v1/backup")
        assert status == 503
        down_message = json.loads(body)["message"]
        assert "Redis" in down_message
        status, _, body = deployment.request("GET", "/api/v1/backup")
        assert status == 200 and json.loads(body) == [first]
        status, _, data = deployment.request("GET", f"/api/v1/backup/{first}")
        assert status == 200 and data == (deployment.backup_dir / first).read_bytes()

        own_redis.start()  # an empty Redis on the same port, as after a restart without persistence
        back_at = time.monotonic()
        answer = deployment.post_backup()
        recovered = time.monotonic() - back_at
        assert deployment.backups() == [first, answer["filename"]]
    finally:
        deployment.stop()
        own_redis.stop()
    report("Redis stopped, then started again (empty) on the same port",
           f"while down: POST 503 \"{down_message}\", GET list and download 200; once back: the next POST "
           f"took a backup in {recovered:.1f} s, no restart of the web or worker processes")


def test_a_backup_with_the_first_cluster_member_stopped(tmp_path: Path, redis_server: RedisServer,
                                                        redis_conn: redis.Redis, report: Report) -> None:
    members = start_cluster(tmp_path / "cluster")
    try:
        members[0].client().put("/before/backup", "kept")
        members[0].stop()
        deployment = Deployment(tmp_path / "service", [member.url for member in members], redis_server,
                                etcd={"endpoints": [member.url for member in members], "timeout": "2s"}).start()
        try:
            began = time.monotonic()
            answer = deployment.post_backup()
            seconds = time.monotonic() - began
        finally:
            deployment.stop()
        assert deployment.backups() == [answer["filename"]]
        log = (deployment.work / "worker0.log").read_text()
        assert f"from {members[1].url}" in log
    finally:
        for member in members:
            member.stop()
    report("3-member etcd cluster, the first configured member stopped",
           f"POST 200 in {seconds:.2f} s, snapshot taken from the second member")


def test_etcd_frozen_mid_stream(deployment: Deployment, big_etcd: EtcdServer, report: Report) -> None:
    """SIGSTOP: the connection stays open and nothing more arrives (a hung etcd, a black-holed network)."""
    post, frozen_at = signal_etcd_mid_stream(deployment, big_etcd, signal.SIGSTOP)
    assert big_etcd.proc is not None
    try:
        post.join(90)
    finally:
        big_etcd.proc.send_signal(signal.SIGCONT)
    waited = post.finished_at - frozen_at
    assert post.status == 500, post.answer
    assert post.answer["message"] == (f"failed to save an etcd backup: snapshot stream from {big_etcd.url} stalled: "
                                      f"nothing received for {STALL_SECONDS:g}s")
    assert waited < STALL_SECONDS + 10
    assert deployment.backups() == [] and deployment.temp_files() == []
    report("etcd frozen (SIGSTOP) in the middle of streaming a 150 MB snapshot",
           f"POST 500 after {waited:.1f} s: \"{post.answer['message']}\"; no file, no temp file")
