"""The real processes: `etcd-backup --config` (embedded queue) and the Procfile's web + workers on Redis."""

from __future__ import annotations

import json
import os
import signal
import threading
from pathlib import Path
from typing import Any

import pytest
import redis
from rq import Worker

from common.queue import QUEUE_NAME
from harness.deployment import procfile, start, wait_for_api
from harness.in_process import ConfigFactory
from harness.processes import free_port, http, stop_process, wait_until
from harness.servers import RedisServer

pytestmark = pytest.mark.slow

def test_all_in_one_cli_on_the_embedded_queue(write_config: ConfigFactory, tmp_path: Path) -> None:
    port = free_port()
    config = write_config(listen=f"127.0.0.1:{port}")
    base = f"http://127.0.0.1:{port}"
    proc = start(f"exec etcd-backup --config {config}", config, tmp_path / "server.log", REDIS_URL="")
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

        # Rounds of concurrent POSTs: each round coalesces into few jobs, spread over both workers.
        for _ in range(4):
            threads = [threading.Thread(target=post) for _ in range(3)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(60)
        assert [status for status, _ in answers] == [200] * 12, answers
        names = {body["filename"] for _, body in answers}
        assert 4 <= len(names) < 12
        status, _, listing = http("GET", f"{base}/api/v1/backup")
        assert json.loads(listing) == sorted(names)[-3:]
        workers_used = {line.split(":")[0] for line in _job_lines(tmp_path)}
        assert workers_used == {"worker0.log", "worker1.log"}
    finally:
        for proc in procs:
            os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            stop_process(proc)
    assert redis_conn.llen(f"rq:queue:{QUEUE_NAME}") == 0


def _job_lines(log_dir: Path) -> list[str]:
    """Lines 'workerN.log: ...' for each job a worker process completed."""
    return [f"{log.name}: {line}" for log in sorted(log_dir.glob("worker*.log"))
            for line in log.read_text().splitlines() if "Job OK" in line]
