"""Work from requests is bounded and every success is real (issue 25, items 3 and 4): verify requests for one
backup join one job, the queue answers 429 beyond `max-queued-jobs` (backups and scheduler ticks are never
refused), a worker waits out a full Redis, and what a Redis writer plants (a pending marker without a TTL,
a job never queued, a forged result) never makes a POST or a tick answer for a backup that is not there."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis
from rq.job import JobStatus
from rq.results import Result
from rq.serializers import JSONSerializer

from common import backups
from common import queue as queue_module
from common.clock import redis_clock
from common.config import ConfigError, load_config
from common.config.schema import DEFAULT_MAX_QUEUED_JOBS
from common.jobs import BACKUP_JOB, VERIFY_JOB, TrustedJob
from common.queue import (
    PENDING_KEY,
    PENDING_TTL,
    QueueFull,
    connect,
    enqueue_or_join,
    heartbeat_key,
    job_queue,
    new_job_id,
)
from harness.deployment import Deployment
from harness.in_process import ConfigFactory, Service
from harness.processes import wait_until
from harness.report import Report
from harness.servers import EtcdServer, RedisServer
from scheduler.cron import run_tick

FORGED_NAME = "snapshot-20991231_235959.tar.gz"


def post_concurrently(service: Service, path: str, count: int) -> list[tuple[int, dict[str, object]]]:
    answers: list[tuple[int, dict[str, object]]] = []

    def post() -> None:
        answer = service.client.post(path)
        answers.append((answer.status_code, answer.get_json()))

    threads = [threading.Thread(target=post) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return answers


def take_backups(service: Service, count: int) -> list[str]:
    """Take `count` backups (a second apart: names are to the second) and return their names."""
    for _ in range(count):
        assert service.client.post("/api/v1/backup").status_code == 200
        time.sleep(1)
    names: list[str] = service.client.get("/api/v1/backup").get_json()
    return names


def test_verify_requests_for_one_backup_join_one_job(make_service: Callable[..., Service], report: Report) -> None:
    service = make_service(backup_timeout="0.1s")
    [name] = take_backups(service, 1)
    service.stop_worker()  # the verify jobs stay queued

    answers = post_concurrently(service, f"/api/v1/backup/{name}/verify", 20)
    assert {status for status, _ in answers} == {202}, answers
    jobs = {body["job"] for _, body in answers}
    assert len(jobs) == 1 and job_queue(service.connection).count == 1, jobs

    service.start_worker()  # the one job answers them all
    [job_id] = jobs
    wait_until(lambda: service.client.get(f"/api/v1/jobs/{job_id}").get_json()["status"] == "finished", 60,
               "the verify job")
    again = service.client.post(f"/api/v1/backup/{name}/verify")  # a new request after it ran: a new check
    assert again.status_code == 200 and again.get_json()["message"] == "backup verified"
    report("20 concurrent POST .../verify of one backup, no worker running",
           f"1 job queued, all 20 answers name it; after it ran, the next POST ran a new check ({again.status_code})")


def test_the_queue_bound_answers_429_but_never_refuses_a_backup(make_service: Callable[..., Service],
                                                                write_config: ConfigFactory,
                                                                redis_conn: redis.Redis, report: Report) -> None:
    service = make_service(backup_timeout="0.1s", max_queued_jobs=2, schedule="0 */6 * * *")
    first, second, third = take_backups(service, 3)
    service.stop_worker()
    for name in (first, second):
        assert service.client.post(f"/api/v1/backup/{name}/verify").status_code == 202
    assert job_queue(redis_conn).count == 2

    refused = service.client.post(f"/api/v1/backup/{third}/verify")
    assert refused.status_code == 429, refused.get_json()
    assert int(refused.headers["Retry-After"]) > 0
    assert refused.get_json() == {"message": "the job queue is full (2 jobs queued, max-queued-jobs is 2): "
                                             "retry later"}
    joined = service.client.post(f"/api/v1/backup/{first}/verify")  # joining costs nothing
    assert joined.status_code == 202
    backup = service.client.post("/api/v1/backup")  # a backup is always queued
    assert backup.status_code == 202, backup.get_json()
    assert run_tick(service.config, redis_conn, datetime(2026, 11, 27, 6, 0, tzinfo=UTC), "a") is not None
    assert job_queue(redis_conn).count == 3  # the two verifies and the one backup (the tick joined it)

    service.start_worker()
    wait_until(lambda: job_queue(redis_conn).count == 0, 60, "the queue to drain")
    assert service.client.post(f"/api/v1/backup/{third}/verify").status_code == 200
    report("max-queued-jobs 2 with two verify jobs queued",
           f"a third backup's verify: 429 Retry-After {refused.headers['Retry-After']} "
           f"\"{refused.get_json()['message']}\"; a verify joining a queued one, a POST /api/v1/backup and a "
           "scheduler tick: queued")


def test_the_embedded_queue_is_bounded_the_same_way(write_config: ConfigFactory) -> None:
    config = load_config(write_config(max_queued_jobs=3))
    connection = connect(config)  # no redis-url: the all-in-one's in-process Redis
    queue = job_queue(connection)
    jobs = {enqueue_or_join(queue, VERIFY_JOB, ("snapshot-20260101_000000.tar.gz",), config.max_queued_jobs).id
            for _ in range(1000)}
    assert len(jobs) == 1
    for second in (1, 2):
        enqueue_or_join(queue, VERIFY_JOB, (f"snapshot-20260101_00000{second}.tar.gz",), config.max_queued_jobs)
    with pytest.raises(QueueFull):
        enqueue_or_join(queue, VERIFY_JOB, ("snapshot-20260101_000003.tar.gz",), config.max_queued_jobs)
    assert enqueue_or_join(queue).func_name == BACKUP_JOB
    assert queue.count == 4


def test_max_queued_jobs_has_a_default_and_is_read(write_config: ConfigFactory) -> None:
    assert load_config(write_config()).max_queued_jobs == DEFAULT_MAX_QUEUED_JOBS
    assert load_config(write_config(max_queued_jobs=5)).max_queued_jobs == 5


@pytest.mark.parametrize("value", [0, -1, "many", 1.5, True, 1_000_001])
def test_max_queued_jobs_is_checked(write_config: ConfigFactory, value: object) -> None:
    with pytest.raises(ConfigError, match="^max-queued-jobs: "):
        load_config(write_config(max_queued_jobs=value))


def plant_forged_success(connection: redis.Redis, *, on_the_queue: bool = False, marker_ttl: int | None = None,
                         queued_at: datetime | None = None, result: dict[str, object] | None = None) -> str:
    """As the issue's attacker writes to Redis: a backup job hash marked queued (pushed onto the queue only if
    `on_the_queue`), with an id of the service's own form telling it was queued at `queued_at` (now by default), a
    successful `result` naming a backup that does not exist (by default), and the pending marker naming the job
    (with no TTL unless `marker_ttl`). Return the job's id."""
    job_id = new_job_id(queued_at or redis_clock(connection)())
    job = TrustedJob.create(BACKUP_JOB, connection=connection, serializer=JSONSerializer, origin="etcd-backup",
                            timeout=3600, id=job_id)
    job.set_status(JobStatus.QUEUED, pipeline=None)
    job.save()
    Result.create(job, Result.Type.SUCCESSFUL, ttl=None,
                  return_value=result or {"filename": FORGED_NAME, "filesize": 4096})
    if on_the_queue:
        connection.rpush("rq:queue:etcd-backup", job.id)
    connection.set(PENDING_KEY, job.id, ex=marker_ttl)
    return job.id


def test_a_forged_pending_job_is_never_joined(make_service: Callable[..., Service], redis_conn: redis.Redis,
                                              report: Report) -> None:
    """The issue's attack exactly: every POST answered 200 for a backup that was never taken, and the scheduler
    joined the same job."""
    service = make_service()
    forged = plant_forged_success(redis_conn)
    assert redis_conn.ttl(PENDING_KEY) == -1

    answer = service.client.post("/api/v1/backup")
    body = answer.get_json()
    assert answer.status_code == 200, body
    assert body["filename"] != FORGED_NAME and body["filename"] in service.store.list_backups()
    assert body["message"] == "backup successfully"

    forged = plant_forged_success(redis_conn)  # again, for the scheduler
    time.sleep(1)  # a backup name of its own
    ticked = run_tick(service.config, redis_conn, datetime(2026, 11, 27, 6, 0, tzinfo=UTC), "a")
    assert ticked is not None and ticked.id != forged
    wait_until(lambda: ticked.get_status(refresh=True) == JobStatus.FINISHED, 60, "the scheduled backup")
    assert len(service.store.list_backups()) == 2
    report("the issue's forged pending job (queued hash never queued, forged result, marker without TTL)",
           f"POST: 200 {body['filename']} (a real backup, in the store); the scheduler's tick queued a job of its "
           "own and a backup was taken")


def test_a_marker_with_a_ttl_naming_a_job_not_on_the_queue_is_not_joined(make_service: Callable[..., Service],
                                                                         redis_conn: redis.Redis) -> None:
    service = make_service()
    forged = plant_forged_success(redis_conn, marker_ttl=60)
    answer = service.client.post("/api/v1/backup")
    assert answer.status_code == 200 and answer.get_json()["filename"] != FORGED_NAME, answer.get_json()
    assert redis_conn.get(PENDING_KEY) != forged.encode()


def test_a_forged_result_on_a_queued_job_is_no_success(make_service: Callable[..., Service],
                                                       redis_conn: redis.Redis, report: Report) -> None:
    """A writer who also pushes the job onto the queue gets it joined; its forged result names no stored
    backup, and the POST says so rather than answer 200."""
    service = make_service(worker=False)
    plant_forged_success(redis_conn, on_the_queue=True, marker_ttl=60)
    answer = service.client.post("/api/v1/backup")
    assert answer.status_code == 500, answer.get_json()
    message = answer.get_json()["message"]
    assert message.startswith(f"failed to save an etcd backup: the worker's report names {FORGED_NAME}, which is "
                              "not in the store"), message
    report("a forged successful result on a job pushed onto the queue, marker with a TTL",
           f"POST: 500 \"{message}\"")


def test_a_forged_result_naming_a_real_backup_with_another_size_is_no_success(
        make_service: Callable[..., Service], redis_conn: redis.Redis) -> None:
    service = make_service()
    [name] = take_backups(service, 1)
    service.stop_worker()
    forged = plant_forged_success(redis_conn, on_the_queue=True, marker_ttl=60)
    Result.create(TrustedJob.fetch(forged, connection=redis_conn, serializer=JSONSerializer), Result.Type.SUCCESSFUL,
                  ttl=None, return_value={"filename": name, "filesize": 1})
    answer = service.client.post("/api/v1/backup")
    assert answer.status_code == 500, answer.get_json()
    size = service.store.stat(name).size  # type: ignore[union-attr]
    assert answer.get_json()["message"] == (f"failed to save an etcd backup: the worker's report gives {name} 1 "
                                            f"bytes, the store holds {size} (a forged report in Redis)")


def test_a_forged_result_naming_an_older_backup_is_no_success_on_get_either(
        make_service: Callable[..., Service], redis_conn: redis.Redis, report: Report) -> None:
    """The adversary's forged success (tests/test_adversary_edges.py) answered on GET /api/v1/jobs/<id>: the old
    backup is in the store at its size, but its snapshot started before the job was queued, as the job's id (which
    the client holds, and no Redis writer changes) says."""
    service = make_service()
    [name] = take_backups(service, 1)
    service.stop_worker()
    time.sleep(1)  # the job is queued in a later second than the backup's
    old = {"filename": name, "filesize": service.store.stat(name).size}  # type: ignore[union-attr]
    forged = plant_forged_success(redis_conn, on_the_queue=True, marker_ttl=60, result=old)
    answer = service.client.get(f"/api/v1/jobs/{forged}")
    body = answer.get_json()
    assert answer.status_code == 200 and body["message"].startswith(
        f"failed to save an etcd backup: the worker's report names {name}, whose snapshot started "), body
    assert "before the backup was asked for" in body["message"], body
    report("a forged successful result naming the previous backup (real name and size), GET /api/v1/jobs/<id>",
           f"\"{body['message']}\"")


@pytest.mark.parametrize("named_before", [True, False], ids=["named a second before the POST", "named in its second"])
def test_a_backup_without_metadata_is_dated_by_its_name(make_service: Callable[..., Service], redis_conn: redis.Redis,
                                                       named_before: bool) -> None:
    """A backup with no metadata (taken before metadata was recorded, or put there by hand) is as old as its name
    says: a forged success naming one named in a second before the POST's is a 500; one named in the POST's own
    second may have started after it arrived (names tell the second), and is taken."""
    service = make_service(worker=False)
    # Early in a second, so that the POST below arrives in the same one.
    wait_until(lambda: redis_clock(redis_conn)().microsecond < 300_000, 2, "the start of a second")
    name = backups.backup_name(redis_clock(redis_conn)() - timedelta(seconds=1 if named_before else 0))
    service.plant(name, b"an archive of old")
    old = {"filename": name, "filesize": len(b"an archive of old")}
    plant_forged_success(redis_conn, on_the_queue=True, marker_ttl=60, result=old)
    answer = service.client.post("/api/v1/backup")
    body = answer.get_json()
    if named_before:
        assert answer.status_code == 500 and body["message"].startswith(
            f"failed to save an etcd backup: the worker's report names {name}, whose snapshot started "), body
    else:
        assert answer.status_code == 200 and body["filename"] == name, body


@pytest.mark.parametrize("age", [PENDING_TTL + 60, -60], ids=["older than a marker lives", "in the future"])
def test_a_queued_job_whose_id_tells_another_time_is_not_joined(make_service: Callable[..., Service],
                                                                redis_conn: redis.Redis, age: int) -> None:
    """A job a Redis writer queued with an id telling an old time would let GET /api/v1/jobs/<id> take a forged
    success naming any backup since: a POST never joins it (and so never hands out its id)."""
    service = make_service(worker=False, backup_timeout="1s")  # a worker would run the planted job: no join then
    queued_at = redis_clock(redis_conn)() - timedelta(seconds=age)
    forged = plant_forged_success(redis_conn, on_the_queue=True, marker_ttl=60, queued_at=queued_at)
    answer = service.client.post("/api/v1/backup")
    body = answer.get_json()
    assert answer.status_code == 202 and body["job"] != forged, body  # its own job, queued; not the forged 500
    assert redis_conn.get(PENDING_KEY) == body["job"].encode()


def test_the_pending_marker_outlives_no_legitimate_wait(make_service: Callable[..., Service],
                                                        redis_conn: redis.Redis) -> None:
    """A queued backup goes to the front of the queue: it waits at most for the jobs running to end, each
    within its timeout. The marker lasts that long, not a day."""
    make_service(worker=False)
    job = enqueue_or_join(job_queue(redis_conn))
    assert 0 < redis_conn.ttl(PENDING_KEY) <= PENDING_TTL <= 3600 + 120
    assert redis_conn.get(PENDING_KEY) == job.id.encode()


@pytest.fixture
def full_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis",
                         extra_args=("--maxmemory", "8mb", "--maxmemory-policy", "noeviction")).start()
    yield server
    server.stop()


def fill(connection: redis.Redis) -> None:
    """Bring Redis past its maxmemory, firmly: 4 MiB written, then maxmemory set to half of what it holds (filling
    up to the limit alone leaves Redis a few hundred KiB under it as client buffers shrink, and writes go through
    again). Deleting the filler brings it back under."""
    for number in range(16):
        connection.set(f"filler:{number}", b"x" * (256 << 10))
    connection.config_set("maxmemory", int(connection.info("memory")["used_memory"]) // 2)
    with pytest.raises(redis.exceptions.OutOfMemoryError):
        connection.set("filler:last", b"x")


@pytest.mark.slow
def test_a_worker_waits_out_a_full_redis(tmp_path: Path, etcd: EtcdServer, full_redis: RedisServer,
                                         report: Report) -> None:
    connection = full_redis.client()
    deployment = Deployment(tmp_path, [etcd.url], full_redis, backup_timeout="1s").start(workers=0)
    try:
        status, _, _ = deployment.request("POST", "/api/v1/backup")
        assert status == 202
        fill(connection)
        worker = deployment.start_worker(wait=False)  # its registration is a write that Redis refuses now
        time.sleep(8)  # the worker tries to take the job and Redis refuses every write
        assert worker.poll() is None, (tmp_path / "worker0.log").read_text()[-3000:]
        assert deployment.backups() == []
        for key in connection.scan_iter("filler:*"):
            connection.delete(key)
        wait_until(lambda: len(deployment.backups()) == 1, 60, "the queued backup to be taken", worker)
        assert job_queue(connection).count == 0
    finally:
        deployment.stop()
    log = (tmp_path / "worker0.log").read_text()
    assert "out of memory" in log.lower()
    report("a worker started while Redis is at its maxmemory (noeviction), one backup queued",
           "it stayed up, waiting; once memory was freed it took the queued backup")


def test_only_the_newest_jobs_are_kept(make_service: Callable[..., Service], redis_conn: redis.Redis,
                                       monkeypatch: pytest.MonkeyPatch, report: Report) -> None:
    """Kept a day each, the jobs of a day of requests would grow Redis without a bound."""
    monkeypatch.setattr(queue_module, "MAX_KEPT_JOBS", 3)
    service = make_service()
    [name] = take_backups(service, 1)
    for _ in range(6):
        assert service.client.post(f"/api/v1/backup/{name}/verify").status_code == 200
    registry = job_queue(redis_conn).finished_job_registry

    def kept() -> tuple[int, int, int]:
        return (registry.count, len(list(redis_conn.scan_iter("rq:job:*"))),
                len(list(redis_conn.scan_iter("rq:results:*"))))

    # The worker forgets after the last answer, and RQ deletes a job's hash and its result in two steps:
    # wait until all three agree rather than read them at an instant between the steps.
    wait_until(lambda: kept() == (3, 3, 3), 10, "the worker to forget the oldest jobs")
    finished = registry.get_job_ids()
    for job_id in finished:
        assert service.client.get(f"/api/v1/jobs/{job_id}").get_json()["status"] == "finished"
    report("7 jobs run (a backup, 6 checks) with the kept jobs capped at 3",
           "the 3 newest kept (hash and result), the 4 oldest deleted")


@pytest.mark.slow
def test_a_job_that_a_full_redis_interrupts_goes_back_on_the_queue(tmp_path: Path, big_etcd: EtcdServer,
                                                                   full_redis: RedisServer, report: Report) -> None:
    connection = full_redis.client()
    deployment = Deployment(tmp_path, [big_etcd.url], full_redis).start()
    try:
        job_id = enqueue_or_join(job_queue(connection)).id  # as a POST queues it
        wait_until(lambda: bool(connection.exists(heartbeat_key(job_id))), 10, "the backup to start")
        fill(connection)  # while the 150 MB snapshot streams: the job's result cannot be written
        log = tmp_path / "worker0.log"
        wait_until(lambda: "out of memory" in log.read_text().lower(), 60, "the worker to find Redis full")
        time.sleep(3)
        assert deployment.workers[0].poll() is None
        for key in connection.scan_iter("filler:*"):
            connection.delete(key)

        def outcome() -> dict[str, object]:
            answer: dict[str, object] = json.loads(deployment.request("GET", f"/api/v1/jobs/{job_id}")[2])
            return answer

        wait_until(lambda: outcome()["status"] == "finished", 120, "the job to finish", deployment.workers[0])
        answer = outcome()
        assert answer["message"] == "backup successfully" and answer["filename"] in deployment.backups(), answer
        assert job_queue(connection).count == 0
    finally:
        deployment.stop()
    assert "put back on the queue" in log.read_text()
    report("Redis filled to its maxmemory while a backup job streams a 150 MB snapshot",
           f"the worker stayed up and waited; once memory was freed the job went back on the queue and ran again: "
           f"finished, {answer['filename']} in the store")
