"""Whoever can write to Redis cannot make a worker run code: jobs that are not ours are refused.

Each test writes a job hash straight into Redis, as an attacker with Redis access would, and checks
that nothing it names was imported or called. A canary module on the worker's import path records
any import of it or call into it, so the check fails if RQ (or our code) imports what a job names.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
import tracemalloc
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from rq.job import JobStatus
from rq.registry import FailedJobRegistry, StartedJobRegistry
from rq.serializers import JSONSerializer

from common.jobs import BACKUP_JOB, QUEUE_NAME, VERIFY_JOB, TrustedJob
from harness.deployment import Deployment
from harness.in_process import Service
from harness.processes import loopback_socket, wait_until
from harness.report import Report
from harness.servers import EtcdServer, RedisServer

QUEUE_KEY = f"rq:queue:{QUEUE_NAME}"


class Canary:
    """A module `etcd_backup_canary` on the import path: importing it or calling its `call` leaves a file."""

    MODULE = "etcd_backup_canary"

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.imported = directory / "imported"
        self.called = directory / "called"
        (directory / f"{self.MODULE}.py").write_text(
            f"open({str(self.imported)!r}, 'w').close()\n"
            f"def call(*args, **kwargs):\n    open({str(self.called)!r}, 'w').close()\n"
        )

    @property
    def function(self) -> str:
        return f"{self.MODULE}.call"

    def untouched(self) -> bool:
        return not self.imported.exists() and not self.called.exists()


@pytest.fixture
def canary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Canary:
    directory = tmp_path / "canary"
    directory.mkdir()
    monkeypatch.syspath_prepend(str(directory))
    return Canary(directory)


def plant_job(connection: redis.Redis, job_id: str, data: Any, *, push: bool = True, **fields: Any) -> None:
    """Write a job hash as RQ would, with `data` = [function, instance, args, kwargs], and queue it."""
    mapping: dict[str, Any] = {
        "data": data if isinstance(data, bytes) else json.dumps(data),
        "status": "queued", "origin": QUEUE_NAME, "created_at": "2026-01-01T00:00:00.000000Z",
        "enqueued_at": "2026-01-01T00:00:00.000000Z", "description": "x", "timeout": "3600",
    }
    mapping.update(fields)
    connection.hset(f"rq:job:{job_id}", mapping=mapping)
    if push:
        connection.rpush(QUEUE_KEY, job_id)


def wait_refused(connection: redis.Redis, job_id: str) -> None:
    """Wait until the worker has failed `job_id`; check it is in the failed registry, refused."""
    key = f"rq:job:{job_id}"
    wait_until(lambda: connection.hget(key, "status") == b"failed", 30, f"the worker to fail job {job_id}")
    origin = (connection.hget(key, "origin") or b"").decode()  # RQ files a failure under the job's own queue
    assert job_id in FailedJobRegistry(origin, connection=connection).get_job_ids()
    assert connection.llen(QUEUE_KEY) == 0  # not retried, repeated or re-queued


class Listener:
    """A TCP listener that counts connections: a webhook would connect to it."""

    def __init__(self) -> None:
        self.sock, self.port = loopback_socket()
        self.sock.settimeout(0.2)
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()


@pytest.fixture
def listener() -> Iterator[Listener]:
    server = Listener()
    yield server
    server.close()


ATTACKS: dict[str, Callable[[Canary, Path, Listener], tuple[Any, dict[str, Any]]]] = {
    # name: (job data, extra hash fields)
    "a stdlib function (subprocess.call of a shell)": lambda c, d, _: (
        ["subprocess.call", None, [["sh", "-c", f"touch {c.called}"]], {}], {}),
    "a module of the attacker's choice": lambda c, d, _: ([c.function, None, [], {}], {}),
    "a project function with hostile arguments (delete a backup)": lambda c, d, _: (
        ["common.backups.delete_backup", None, [str(d), "snapshot-20260101_000000.tar.gz"], {}], {}),
    "shutil.rmtree of backup-dir": lambda c, d, _: (["shutil.rmtree", None, [str(d)], {}], {}),
    "our verify job with a path as its argument": lambda c, d, _: (
        [VERIFY_JOB, None, ["../../../../etc/shadow"], {}], {}),
    "our backup job with an extra argument": lambda c, d, _: ([BACKUP_JOB, None, [], {"evil": 1}], {}),
    "our backup job as a method of an object": lambda c, d, _: ([BACKUP_JOB, {"x": 1}, [], {}], {}),
    "our backup job with a success callback": lambda c, d, _: (
        [BACKUP_JOB, None, [], {}], {"success_callback_name": c.function}),
    "our backup job with failure and stopped callbacks": lambda c, d, _: (
        [BACKUP_JOB, None, [], {}], {"failure_callback_name": c.function, "stopped_callback_name": c.function}),
    "our backup job with a webhook": lambda c, d, listener: (
        [BACKUP_JOB, None, [], {}],
        {"webhooks": json.dumps([{"url": f"http://127.0.0.1:{listener.port}/", "job_status": status}
                                 for status in ("finished", "failed")])}),
    "our backup job with retries": lambda c, d, _: ([BACKUP_JOB, None, [], {}], {"retries_left": "5"}),
    "our backup job from another queue": lambda c, d, _: ([BACKUP_JOB, None, [], {}], {"origin": "other"}),
    "an unknown function with a compressed argument list": lambda c, d, _: (
        zlib.compress(json.dumps([c.function, None, [], {}]).encode()), {}),
}


@pytest.mark.parametrize("attack", ATTACKS)
def test_a_job_that_is_not_ours_is_refused_and_nothing_runs(
    attack: str, make_service: Callable[..., Service], backup_dir: Path, canary: Canary, listener: Listener,
    caplog: pytest.LogCaptureFixture, report: Report,
) -> None:
    service = make_service()
    connection = service.connection
    backup_dir.joinpath("snapshot-20260101_000000.tar.gz").write_bytes(b"an older backup")
    data, fields = ATTACKS[attack](canary, backup_dir, listener)
    with caplog.at_level(logging.ERROR, logger="worker.runner"):
        plant_job(connection, "evil", data, **fields)
        wait_refused(connection, "evil")
        time.sleep(0.5)  # anything that would still run after the failure (callbacks, webhooks)
    assert canary.untouched(), "what the job named was imported or called"
    assert listener.connections == 0, "a webhook was sent"
    assert backup_dir.joinpath("snapshot-20260101_000000.tar.gz").exists()
    assert [name for name in service.client.get("/api/v1/backup").get_json()] == ["snapshot-20260101_000000.tar.gz"]
    refused = [record.getMessage() for record in caplog.records if "refused job evil" in record.getMessage()]
    assert len(refused) == 1, caplog.text
    result = TrustedJob.fetch("evil", connection=connection, serializer=JSONSerializer).latest_result()
    assert result is not None and "refused by etcd-backup's worker" in (result.exc_string or "")
    # The worker is still there and takes our own jobs.
    assert service.client.post("/api/v1/backup").status_code == 200
    assert canary.untouched()
    report(f"a job hash written straight into Redis, naming {attack}",
           f"refused: {refused[0].split(': ', 1)[1]}; failed, nothing imported or called, no webhook sent, "
           "no file touched; the next POST took a backup")


def test_a_dead_jobs_failure_callback_is_never_imported(
    make_service: Callable[..., Service], canary: Canary, report: Report
) -> None:
    """RQ's registry clean-up calls the failure callback of a job whose worker died: not ours."""
    service = make_service(worker=False)
    connection = service.connection
    plant_job(connection, "evil-started", [BACKUP_JOB, None, [], {}], push=False, status="started",
              failure_callback_name=canary.function)
    started = StartedJobRegistry(QUEUE_NAME, connection=connection).key
    connection.zadd(started, {"evil-started:execution1": 1})
    service.start_worker()  # its clean-up at start finds the dead job (one worker at a time holds RQ's lock)
    wait_until(lambda: connection.zcard(started) == 0, 30, "the worker's clean-up of the dead job")
    assert canary.untouched()
    report("a 'started' job with a failure callback planted in RQ's started-jobs registry, expired (RQ's clean-up "
           "calls the callback of a job whose worker died)", "cleaned up; the callback was never imported or called")


def zlib_bomb(size: int) -> bytes:
    """zlib data that inflates to `size` zero bytes, made without holding them in memory."""
    deflater = zlib.compressobj(9)
    block = bytes(1 << 20)
    return b"".join(deflater.compress(block) for _ in range(size >> 20)) + deflater.flush()


UNREADABLE: dict[str, dict[str, Any]] = {
    "a bad status": {"status": "zzz"},
    "a bad date": {"created_at": "yesterday"},
    "a bad timeout": {"timeout": "forever"},
    "data that is not JSON": {"data": b"\x80\x04not json"},
    "data that inflates to 256 MiB": {"data": zlib_bomb(256 << 20)},
    "a traceback that inflates to 256 MiB": {"exc_info": zlib_bomb(256 << 20)},
}


@pytest.mark.parametrize("fields", UNREADABLE)
def test_an_unreadable_job_does_not_stop_the_worker(
    fields: str, make_service: Callable[..., Service], canary: Canary, report: Report
) -> None:
    service = make_service()
    connection = service.connection
    fields_ = dict(UNREADABLE[fields])
    plant_job(connection, "broken", fields_.pop("data", [canary.function, None, [], {}]), **fields_)
    wait_until(lambda: connection.llen(QUEUE_KEY) == 0, 30, "the worker to take the job")
    assert service.worker is not None and service.worker._thread is not None
    answer = service.client.post("/api/v1/backup")
    assert answer.status_code == 200, answer.get_json()
    assert service.worker._thread.is_alive()
    assert canary.untouched()
    assert connection.hget("rq:job:broken", "status") != JobStatus.FINISHED.value.encode()
    report(f"a job hash with {fields} pushed on the queue",
           "skipped as unreadable (logged), nothing imported; the worker kept running and the next POST took "
           "a backup")


@pytest.mark.slow
def test_the_issue_repro_against_a_worker_process(
    tmp_path: Path, etcd: EtcdServer, redis_server: RedisServer, report: Report
) -> None:
    """The exact attack that was reproduced: redis-cli HSET + RPUSH of subprocess.call on a Procfile worker."""
    deployment = Deployment(tmp_path / "deployment", [etcd.url], redis_server).start()
    pwned = tmp_path / "pwned"
    try:
        connection = redis_server.client()
        plant_job(connection, "evil", ["subprocess.call", None, [["sh", "-c", f"id > {pwned}"]], {}])
        wait_refused(connection, "evil")
        time.sleep(1)
        assert not pwned.exists()
        assert deployment.post_backup()["message"] == "backup successfully"
        log = (deployment.work / "worker0.log").read_text()
        assert "refused job evil: 'subprocess.call' is not a job of etcd-backup's" in log
        assert "Job OK" not in log.split("refused job evil")[1].split("\n")[0]
    finally:
        deployment.stop()
    report("the reported exploit on a Procfile worker process: HSET rq:job:evil data "
           "'[\"subprocess.call\", null, [[\"sh\",\"-c\",\"id > pwned\"]], {}]' + RPUSH on the queue",
           "the worker logged 'refused job evil: ...', the job is failed, no file was written; the next POST "
           "took a backup")


# Keys RQ's own housekeeping parses when a worker starts (and every few minutes): whoever writes to
# Redis can fill them with anything. Each stopped a worker before (adversarial review).
HOUSEKEEPING_PLANTS: dict[str, Callable[[redis.Redis], object]] = {
    "a job id that is not UTF-8 on the queue": lambda r: r.rpush(QUEUE_KEY, b"\xff\xfe"),
    "a job id that is not UTF-8 in the intermediate list": lambda r: r.rpush(f"{QUEUE_KEY}:intermediate", b"\xff"),
    "a first-seen time that is no number": lambda r: (
        r.rpush(f"{QUEUE_KEY}:intermediate", "ghost"), r.set(f"{QUEUE_KEY}:intermediate:first_seen:ghost", "zzz")),
    "a group name that is not UTF-8": lambda r: r.sadd("rq:groups", b"\xff"),
    "a rate limit whose concurrency is no number": lambda r: (
        r.sadd("rq:rl-keys", "x"), r.hset("rq:rl:x", "concurrency", "abc")),
    "a started-jobs entry that is not UTF-8": lambda r: r.zadd(f"rq:wip:{QUEUE_NAME}", {b"\xff:\xfe": 1}),
    "a worker name that is not UTF-8": lambda r: r.sadd(f"rq:workers:{QUEUE_NAME}", b"\xff"),
}


@pytest.mark.parametrize("plant", HOUSEKEEPING_PLANTS)
def test_garbage_in_rqs_own_keys_does_not_stop_a_worker(
    plant: str, make_service: Callable[..., Service], report: Report
) -> None:
    service = make_service(worker=False, backup_timeout="10s")  # a stopped worker: 202 after 10 s
    HOUSEKEEPING_PLANTS[plant](service.connection)
    service.start_worker()  # RQ's housekeeping runs as a worker starts
    assert service.worker is not None and service.worker._thread is not None
    answer = service.client.post("/api/v1/backup")
    assert answer.status_code == 200, answer.get_json()
    service.worker.run_maintenance_tasks()  # and again, as the worker does every few minutes
    assert service.worker._thread.is_alive()
    assert service.client.post("/api/v1/backup").status_code == 200
    report(f"{plant}, planted in Redis before a worker starts", "the worker started, skipped it (logged), and "
           "took the next two backups")


def test_a_result_that_inflates_to_a_gigabyte_is_not_inflated(make_service: Callable[..., Service],
                                                              report: Report) -> None:
    service = make_service(worker=False)
    job_id = "0" * 32
    plant_job(service.connection, job_id, [BACKUP_JOB, None, [], {}], push=False, status="failed")
    bomb = base64.b64encode(zlib_bomb(1 << 30))
    service.connection.xadd(f"rq:results:{job_id}", {"type": "2", "exc_string": bomb})
    # tracemalloc's peak, not ru_maxrss: the process may have peaked higher in an earlier test.
    tracemalloc.start()
    try:
        answer = service.client.get(f"/api/v1/jobs/{job_id}")
        grown_mib = tracemalloc.get_traced_memory()[1] / (1 << 20)
    finally:
        tracemalloc.stop()
    assert answer.status_code == 500 and "inflates beyond" in answer.get_json()["message"], answer.get_json()
    assert grown_mib < 50
    report(f"a job result whose traceback is a zlib bomb ({len(bomb) >> 10} KiB in Redis, 1 GiB inflated)",
           f"GET /api/v1/jobs/<id>: 500 {answer.get_json()['message'][:90]!r}; the request's peak allocation "
           f"{grown_mib:.1f} MiB")
