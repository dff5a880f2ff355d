"""The real processes: `etcd-backup --config` (embedded queue) and the Procfile's web + workers on Redis."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import redis
from rq import Worker

from common.deltas import parse_delta_name
from common.queue import QUEUE_NAME
from common.storage.local import LocalStore
from harness.cli import etcd_backup
from harness.deployment import Deployment, procfile, start, wait_for_api
from harness.in_process import ConfigFactory
from harness.processes import free_port, http, stop_process, wait_until
from harness.servers import EtcdServer, RedisServer
from harness.writer import ContinuousWriter, current_revision, keys_at

pytestmark = pytest.mark.slow

def test_all_in_one_cli_on_the_embedded_queue(write_config: ConfigFactory, tmp_path: Path) -> None:
    port = free_port()
    config = write_config(listen=f"127.0.0.1:{port}")
    base = f"http://127.0.0.1:{port}"
    proc = start(f"etcd-backup --config {config}", config, tmp_path / "server.log", REDIS_URL="")
    try:
        wait_for_api(base, proc)
        status, headers, body = http("POST", f"{base}/api/v1/backup")
        assert status == 200, body
        answer = json.loads(body)
        assert answer["message"] == "backup successfully"
        status, headers, listing = http("GET", f"{base}/api/v1/backup")
        assert json.loads(listing) == [answer["filename"]]
        status, headers, data = http("GET", f"{base}/api/v1/backup/{answer['filename']}")
        assert status == 200 and headers["Content-Type"] == "application/gzip"
        assert len(data) == answer["filesize"] == int(headers["Content-Length"])
        status, _, body = http("GET", f"{base}/api/v1/backup/nope")
        assert status == 400 and "message" in json.loads(body)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0  # a clean shutdown, the worker thread stopped first
    log = (tmp_path / "server.log").read_text()
    assert "Starting gunicorn" in log  # a production WSGI server, not Flask's development server
    assert "WARNING: This is a development server" not in log


def test_procfile_web_and_two_workers_on_redis(
    write_config: ConfigFactory, redis_server: RedisServer, redis_conn: redis.Redis, tmp_path: Path
) -> None:
    port = free_port()
    config = write_config(listen=f"127.0.0.1:{port}", redis_url=redis_server.url, rotate=3)
    base = f"http://127.0.0.1:{port}"
    commands = procfile()
    assert set(commands) >= {"web", "worker"}
    procs = [start(commands["web"], config, tmp_path / "web.log")]
    procs += [start(commands["worker"], config, tmp_path / f"worker{i}.log") for i in range(2)]
    try:
        wait_for_api(base, procs[0])
        wait_until(lambda: len(Worker.all(connection=redis_conn)) == 2, 30, "two workers")
        answers: list[tuple[int, Any]] = []

        def post() -> None:
            status, _, body = http("POST", f"{base}/api/v1/backup")
            answers.append((status, json.loads(body)))

        # Rounds of concurrent POSTs: each round coalesces into few jobs, spread over both workers. Only a job
        # that has not started is joined, and two idle workers start the first two at once: six POSTs a round
        # make sure some arrive while both are busy (with three, a join was a race that the third rarely won).
        rounds, per_round = 4, 6
        for _ in range(rounds):
            threads = [threading.Thread(target=post) for _ in range(per_round)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(60)
        assert [status for status, _ in answers] == [200] * rounds * per_round, answers
        names = {body["filename"] for _, body in answers}
        assert rounds <= len(names) < rounds * per_round
        status, _, listing = http("GET", f"{base}/api/v1/backup")
        assert json.loads(listing) == sorted(names)[-3:]
        workers_used = {line.split(":")[0] for line in _job_lines(tmp_path)}
        assert workers_used == {"worker0.log", "worker1.log"}
    finally:
        for proc in procs:
            stop_process(proc)
    assert redis_conn.llen(f"rq:queue:{QUEUE_NAME}") == 0


def _job_lines(log_dir: Path) -> list[str]:
    """Lines 'workerN.log: ...' for each job a worker process completed."""
    return [f"{log.name}: {line}" for log in sorted(log_dir.glob("worker*.log"))
            for line in log.read_text().splitlines() if "Job OK" in line]


@pytest.mark.parametrize("watcher", ["all-in-one thread", "Procfile deltas process"])
def test_the_delta_watcher_as_deployed_stores_deltas_a_restore_uses(
    watcher: str, etcd: EtcdServer, redis_server: RedisServer, redis_conn: redis.Redis, tmp_path: Path
) -> None:
    """`deltas: true` in the all-in-one, or the Procfile's `deltas` line beside web and worker: either stores
    the writes after a full backup as deltas, and `etcd-backup restore --to-revision` reaches the last one."""
    if watcher == "all-in-one thread":
        deployment = Deployment(tmp_path / "deployed", [etcd.url], deltas=True, delta_period="200ms").start()
        process = deployment.web
    else:
        deployment = Deployment(tmp_path / "deployed", [etcd.url], redis_server, delta_period="200ms").start()
        process = deployment.start_process(procfile()["deltas"], "deltas")
    prefix = f"/deployed-{tmp_path.name}/"
    try:
        deployment.post_backup()
        writer = ContinuousWriter(etcd.client(), prefix).start()
        time.sleep(1)
        writer.stop()
        end = current_revision(etcd.url)
        wait_until(lambda: _deltas_reach(deployment.backup_dir) >= end, 30, f"deltas up to revision {end}", process)
    finally:
        if process is not None:
            stop_process(process, timeout=30)
        deployment.stop()
    # Nothing of it outlives it: a watcher left running on the shared Redis and etcd took later tests' lease.
    for stopped in (process, deployment.web):
        assert stopped is not None
        with pytest.raises(ProcessLookupError):
            os.killpg(stopped.pid, 0)
    done = etcd_backup("restore", "--config", str(deployment.config), "--to-revision", str(end),
                       "--data-dir", str(tmp_path / "restored"), timeout=120)
    assert done.returncode == 0, done.stderr
    assert f"etcd is at revision {end}" in done.stdout and " 0 deltas" not in done.stdout, done.stdout
    server = EtcdServer(tmp_path / "restored").start()
    try:
        assert keys_at(server.url, prefix) == keys_at(etcd.url, prefix, revision=end) != {}
    finally:
        server.stop()


def _deltas_reach(backup_dir: Path) -> int:
    """The last revision the deltas in `backup_dir` hold (0 without any)."""
    return max((said.last for name in LocalStore(backup_dir).list_deltas()
                if (said := parse_delta_name(name)) is not None), default=0)
