"""The original etcd-backup's three endpoints and the job endpoint, against a real etcd, Redis and worker.

The original's contract (list, POST, download, 404 and 400, rotation, concurrent POSTs) holds wherever the
backups are kept: those tests take `service_on_backend` / `make_service_on_backend` (tests/conftest.py) and run
on a local backup-dir and on an S3 bucket alike, reaching the backups through the store. The tests of the job
queue, the lock and etcd's endpoints run on backup-dir only: where backups are kept changes nothing in them.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
import stat
import tarfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
import redis as redis_lib
from rq.job import JobStatus

from api import create_app
from api.outcomes import LOST_CAUSE
from common.backups import backup_time
from common.queue import HEARTBEAT_TTL, LOCK_KEY, enqueue_or_join, heartbeat_key, job_queue
from common.storage import S3Store
from harness.in_process import Service, fetch
from harness.processes import loopback_socket
from harness.report import Report
from harness.servers import EtcdServer
from worker.leases import backup_lock, job_heartbeat


def kept_where(service: Service) -> str:
    """Where `service` keeps its backups, for a report row: the name of the backend, not the test's random path."""
    return "in an S3 bucket (SeaweedFS)" if isinstance(service.store, S3Store) else "in a local backup-dir"


def post_backup(service: Service) -> dict[str, object]:
    response = service.client.post("/api/v1/backup")
    assert response.status_code == 200, response.get_json()
    body: dict[str, object] = response.get_json()
    return body




def test_list_is_empty_at_first(service_on_backend: Service) -> None:
    service = service_on_backend
    response = service.client.get("/api/v1/backup")
    assert response.status_code == 200
    assert response.content_type == "application/json"
    assert response.get_json() == []
    trailing_slash = service.client.get("/api/v1/backup/")  # the same list, not a redirect (HTML)
    assert trailing_slash.status_code == 200 and trailing_slash.get_json() == []


def test_post_takes_a_backup_with_the_original_answer(service_on_backend: Service, etcd: EtcdServer) -> None:
    service = service_on_backend
    etcd.client().put("/test/post", "value")
    before = datetime.now(UTC).replace(microsecond=0)
    response = service.client.post("/api/v1/backup")
    assert response.status_code == 200
    assert response.content_type == "application/json"
    body = response.get_json()
    assert list(body) == ["message", "filename", "filesize"]
    assert body["message"] == "backup successfully"
    stored = service.store.stat(body["filename"])
    assert stored is not None and body["filesize"] == stored.size
    started = backup_time(body["filename"])
    assert started is not None and before <= started <= datetime.now(UTC)
    assert service.client.get("/api/v1/backup").get_json() == [body["filename"]]
    # The archive and its metadata, and nothing unfinished (a temp file, an S3 multipart upload) left beside them.
    assert service.leftovers() == [body["filename"], body["filename"] + ".json"]


def test_backups_and_backup_dir_are_private(service: Service) -> None:
    # Local only: file modes are a file system's. Who may read a bucket is its policy's, not the service's.
    name = str(post_backup(service)["filename"])
    assert stat.S_IMODE((service.config.backup_dir / name).stat().st_mode) == 0o600
    assert stat.S_IMODE(service.config.backup_dir.stat().st_mode) == 0o700


def test_download_is_a_tar_gz_of_one_verified_snapshot(service_on_backend: Service) -> None:
    service = service_on_backend
    name = str(post_backup(service)["filename"])
    downloaded = fetch(service, f"/api/v1/backup/{name}").data
    with tarfile.open(fileobj=io.BytesIO(downloaded), mode="r:gz") as archive:
        members = archive.getmembers()
        assert [m.name for m in members] == [name.replace(".tar.gz", ".db")]
        data = archive.extractfile(members[0]).read()  # type: ignore[union-attr]

    # etcd's trailer: the last 32 bytes are the SHA-256 of everything before them.
    assert len(data) % 512 == 32
    assert hashlib.sha256(data[:-32]).digest() == data[-32:]


def test_download_serves_the_file(service_on_backend: Service) -> None:
    service = service_on_backend
    name = str(post_backup(service)["filename"])
    content = service.read_backup(name)
    response = fetch(service, f"/api/v1/backup/{name}")
    assert response.status_code == 200
    assert response.content_type == "application/gzip"
    assert response.headers["Content-Length"] == str(len(content))
    assert response.data == content
    assert response.headers["ETag"]


def test_download_head_range_and_conditional(service_on_backend: Service) -> None:
    service = service_on_backend
    name = str(post_backup(service)["filename"])
    content = service.read_backup(name)
    url = f"/api/v1/backup/{name}"

    head = fetch(service, url, method="HEAD")
    assert head.status_code == 200 and head.data == b""
    assert head.headers["Content-Length"] == str(len(content))

    partial = fetch(service, url, headers={"Range": "bytes=10-19"})
    assert partial.status_code == 206
    assert partial.data == content[10:20]
    assert partial.headers["Content-Range"] == f"bytes 10-19/{len(content)}"

    full = fetch(service, url)
    assert fetch(service, url, headers={"If-None-Match": full.headers["ETag"]}).status_code == 304
    assert fetch(service, url, headers={"If-Modified-Since": full.headers["Last-Modified"]}).status_code == 304


def test_list_shows_only_complete_backups_oldest_first(service_on_backend: Service) -> None:
    service = service_on_backend
    first = str(post_backup(service)["filename"])
    second = str(post_backup(service)["filename"])
    service.plant(".snapshot-20300101_000000.tar.gz.1234abcd.part", b"partial")  # a local backup's temp file
    service.plant("notes.txt", b"not a backup")
    service.plant("snapshot-20301301_000000.tar.gz", b"month 13 is no backup time")
    service.plant("snapshot-20300101_000000.tar.gz.bak", b"a copy")
    assert first < second
    assert service.client.get("/api/v1/backup").get_json() == [first, second]


def test_a_directory_or_symlink_named_like_a_backup_is_neither_listed_nor_served(service: Service) -> None:
    # Local only: a bucket has neither (test_s3.py plants their nearest kin there: a "directory" key, a key deeper).
    name = str(post_backup(service)["filename"])
    os.mkdir(service.config.backup_dir / "snapshot-20300102_000000.tar.gz")
    os.symlink("/etc/passwd", service.config.backup_dir / "snapshot-20300103_000000.tar.gz")
    assert service.client.get("/api/v1/backup").get_json() == [name]
    for planted in ("snapshot-20300102_000000.tar.gz", "snapshot-20300103_000000.tar.gz"):
        assert fetch(service, f"/api/v1/backup/{planted}").status_code == 404


def test_two_backups_never_share_a_second(service_on_backend: Service) -> None:
    service = service_on_backend
    names = [str(post_backup(service)["filename"]) for _ in range(3)]
    assert len(set(names)) == 3
    assert names == sorted(names)


def test_rotation_keeps_the_newest_and_never_touches_other_files(
        make_service_on_backend: Callable[..., Service]) -> None:
    service = make_service_on_backend(rotate=2)
    old = ["snapshot-20200101_000000.tar.gz", "snapshot-20200102_000000.tar.gz"]
    for name in old:
        service.plant(name, b"old backup")
    service.plant("keep-me.txt", b"operator's notes")
    made = [str(post_backup(service)["filename"]) for _ in range(3)]
    assert service.client.get("/api/v1/backup").get_json() == made[-2:]
    assert [service.peek(name) for name in [*old, made[0]]] == [None] * 3  # deleted, not only unlisted
    assert service.peek("keep-me.txt") == b"operator's notes"


def test_concurrent_posts_join_the_queued_job(make_service_on_backend: Callable[..., Service]) -> None:
    service = make_service_on_backend(worker=False)
    answers: list[dict[str, object]] = []

    def post() -> None:
        client = service.client.application.test_client()
        response = client.post("/api/v1/backup")
        answers.append({"status": response.status_code, **response.get_json()})

    threads = [threading.Thread(target=post) for _ in range(5)]
    for thread in threads:
        thread.start()
    # All five POSTs queue behind one job while no worker runs; one worker then serves them all.
    deadline = time.monotonic() + 10
    while service.connection.llen("rq:queue:etcd-backup") < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    assert service.connection.llen("rq:queue:etcd-backup") == 1
    service.start_worker()
    for thread in threads:
        thread.join(30)
    assert [a["status"] for a in answers] == [200] * 5
    assert len({a["filename"] for a in answers}) == 1
    assert len(service.client.get("/api/v1/backup").get_json()) == 1


def test_a_post_never_gets_a_snapshot_started_before_it(service_on_backend: Service) -> None:
    service = service_on_backend
    first = post_backup(service)
    arrived = datetime.now(UTC).replace(microsecond=0)
    second = post_backup(service)
    assert second["filename"] != first["filename"]
    started = backup_time(str(second["filename"]))
    assert started is not None and started >= arrived


def test_post_answers_202_with_a_job_when_the_wait_ends_first(make_service: Callable[..., Service]) -> None:
    service = make_service(worker=False, backup_timeout="1s")
    began = time.monotonic()
    response = service.client.post("/api/v1/backup")
    assert time.monotonic() - began < 5
    assert response.status_code == 202
    body = response.get_json()
    assert body["message"] == "backup queued"
    location = response.headers["Location"]
    assert location == f"/api/v1/jobs/{body['job']}"

    queued = service.client.get(location)
    assert queued.status_code == 200
    assert queued.get_json()["status"] == "queued"

    service.start_worker()
    deadline = time.monotonic() + 30
    while (done := service.client.get(location).get_json())["status"] != "finished":
        assert time.monotonic() < deadline, done
        time.sleep(0.1)
    assert done["message"] == "backup successfully"
    assert done["filename"] in service.client.get("/api/v1/backup").get_json()
    stored = service.store.stat(done["filename"])
    assert stored is not None and done["filesize"] == stored.size


@pytest.mark.parametrize("silent", [False, True], ids=["refused", "silent"])
def test_etcd_down_is_a_500_within_the_timeout(make_service_on_backend: Callable[..., Service], silent: bool,
                                               report: Report) -> None:
    # Down: nothing listens (connection refused), or something accepts connections and never answers.
    listener, port = loopback_socket(listen=silent)
    with listener:
        endpoint = f"http://127.0.0.1:{port}"
        service = make_service_on_backend(etcd_overrides={"endpoints": [endpoint], "timeout": "2s"})
        began = time.monotonic()
        response = service.client.post("/api/v1/backup")
        elapsed = time.monotonic() - began
    assert response.status_code == 500
    message = response.get_json()["message"]
    assert message.startswith("failed to save an etcd backup: ")
    assert endpoint in message
    assert elapsed < 2 + 5
    assert service.client.get("/api/v1/backup").get_json() == []
    assert service.leftovers() == []
    what = "accepts connections but never answers" if silent else "refuses connections (etcd down)"
    report(f"the only etcd endpoint {what}, timeout 2s, backups {kept_where(service)}",
           f"POST 500 after {elapsed:.1f} s: \"{message}\"; nothing written")


def test_unreachable_endpoints_are_skipped_in_order(make_service: Callable[..., Service], etcd: EtcdServer) -> None:
    service = make_service(etcd_overrides={"endpoints": ["http://127.0.0.1:1", etcd.url], "timeout": "1s"})
    assert post_backup(service)["message"] == "backup successfully"


def test_failed_job_reports_its_cause_on_the_job_endpoint(make_service: Callable[..., Service]) -> None:
    service = make_service(etcd_overrides={"endpoints": ["http://127.0.0.1:1"], "timeout": "500ms"})
    service.client.post("/api/v1/backup")
    job_ids = [key.decode().rsplit(":", 1)[1] for key in service.connection.keys("rq:job:*")]
    assert len(job_ids) == 1
    body = service.client.get(f"/api/v1/jobs/{job_ids[0]}").get_json()
    assert body["status"] == "failed"
    assert body["message"].startswith("failed to save an etcd backup: no current etcd member answered")


def test_redis_down_is_503_and_gets_keep_working(service_on_backend: Service) -> None:
    service = service_on_backend
    name = str(post_backup(service)["filename"])
    dead = redis_lib.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=1)
    client = create_app(service.config, dead).test_client()
    response = client.post("/api/v1/backup")
    assert response.status_code == 503
    assert response.get_json()["message"].startswith("job queue (Redis) unavailable: ")
    assert client.get("/api/v1/backup").get_json() == [name]
    with client.get(f"/api/v1/backup/{name}") as download:
        assert download.status_code == 200
    assert client.get("/api/v1/jobs/" + "0" * 32).status_code == 503


@pytest.mark.parametrize("name", [
    "snapshot-2018122_024105.tar.gz",
    "snapshot-20181220_024105.tar",
    "passwd",
    "..",
    "../../etc/passwd",
    "%2e%2e/%2e%2e/etc/passwd",
    "..%2f..%2fetc%2fpasswd",
    "%2fetc%2fpasswd",
    "/etc/passwd",
    "snapshot-20181220_024105.tar.gz%00.txt",
    "snapshot-20181220_024105.tar.gz/..",
    "a" * 5000,
])
def test_bad_names_get_400_and_nothing_outside_is_read(make_service_on_backend: Callable[..., Service],
                                                       name: str) -> None:
    service = make_service_on_backend(worker=False)  # no backup is taken
    response = fetch(service, f"/api/v1/backup/{name}")
    assert response.status_code == 400
    assert response.content_type == "application/json"
    assert "root:" not in response.get_data(as_text=True)
    assert response.get_json()["message"].startswith("invalid backup file name")


@pytest.mark.parametrize("name", ["snapshot-20181220_024105.tar.gz", "snapshot-20181320_024105.tar.gz"])
def test_well_formed_missing_name_is_404(make_service_on_backend: Callable[..., Service], name: str) -> None:
    """A name of the right form is not found if no such backup exists, or if its time is impossible (month 13):
    a file of that name is never a backup, even if one was put there."""
    service = make_service_on_backend(worker=False)  # no backup is taken
    service.plant("snapshot-20181320_024105.tar.gz", b"not a backup")
    response = service.client.get(f"/api/v1/backup/{name}")
    assert response.status_code == 404
    assert response.get_json() == {"message": f"{name} not found"}


VARYING_HEADERS = {"Date", "Content-Length", "Content-Range", "Content-Disposition", "ETag", "Last-Modified",
                   "X-Etcd-Revision", "X-Backup-Sha256", "Repr-Digest"}
"""Headers whose values are the backup's own (its name, size, digest, revision, when it was stored), or the time's."""


def test_both_backends_answer_alike(make_service: Callable[..., Service], s3_service: Callable[..., Service],
                                    request: pytest.FixtureRequest, report: Report) -> None:
    """The same requests to a service on backup-dir and to one on a bucket get the same answers: status, the
    headers sent and their values, the JSON; only what is the backup's own (its name, size, dates) differs."""

    def walk(service: Service) -> list[tuple[object, ...]]:
        responses = [service.client.get("/api/v1/backup"), posted := service.client.post("/api/v1/backup")]
        name = posted.get_json()["filename"]
        url = f"/api/v1/backup/{name}"
        responses += [service.client.get("/api/v1/backup"), full := fetch(service, url),
                      fetch(service, url, method="HEAD"), fetch(service, url, headers={"Range": "bytes=10-19"}),
                      fetch(service, url, headers={"If-None-Match": full.headers["ETag"]}),
                      fetch(service, "/api/v1/backup/snapshot-20181220_024105.tar.gz"),
                      fetch(service, "/api/v1/backup/passwd")]
        return [(response.status_code,
                 sorted((header, "..." if header in VARYING_HEADERS else value)
                        for header, value in response.headers.items()),
                 re.sub(r'"filesize":\d+', '"filesize":...', response.get_data(as_text=True).replace(name, "NAME"))
                 if response.is_json else "archive bytes" if response.data else "no body")
                for response in responses]

    local_service = make_service()
    on_disk = walk(local_service)
    local_service.stop_worker()  # both services share the test's Redis queue: its worker would take the other's job
    on_bucket = walk(s3_service())
    assert on_bucket == on_disk
    assert [answer[0] for answer in on_disk] == [200, 200, 200, 200, 200, 206, 304, 404, 400]
    # What ran of the contract tests in this session: each on both backends (make_service_on_backend's params).
    runs = Counter(item.callspec.params["make_service_on_backend"] for item in request.session.items
                   if isinstance(item, pytest.Function) and "make_service_on_backend" in item.fixturenames)
    report("the original API's contract (list, POST, download with HEAD/Range/ETag, 404/400, rotation, concurrent "
           "POSTs, etcd and Redis down) on a local backup-dir and on an S3 bucket (SeaweedFS), by one parametrized "
           "fixture; and the same 9 requests to a service on each, side by side",
           f"contract test runs in this session: {', '.join(f'{n} on {on}' for on, n in runs.items()) or 'none'}, "
           f"all passed; side by side the same statuses "
           f"{[answer[0] for answer in on_disk]}, the same headers and values and JSON, but for the backup's own "
           "name, size, ETag, dates and digests")


def test_a_worker_waits_for_the_backup_lock(make_service: Callable[..., Service]) -> None:
    """While another worker holds the cluster's lock, a backup job waits; then it runs."""
    service = make_service(backup_timeout="1s")
    with job_heartbeat(service.connection, "another-job"), backup_lock(service.connection, "another-job") as acquired:
        assert acquired
        response = service.client.post("/api/v1/backup")
        assert response.status_code == 202
        assert response.get_json()["message"] == "backup in progress"
        assert service.leftovers() == []
    location = response.headers["Location"]
    deadline = time.monotonic() + 30
    while (job := service.client.get(location).get_json())["status"] != "finished":
        assert time.monotonic() < deadline, job
        time.sleep(0.1)
    assert service.client.get("/api/v1/backup").get_json() == [job["filename"]]


def test_a_dead_workers_lock_is_taken_over_once_its_heartbeat_expires(make_service: Callable[..., Service]) -> None:
    """A worker killed mid-backup leaves the lock behind for up to its TTL; its heartbeat is gone."""
    service = make_service()
    service.connection.set(LOCK_KEY, "killed-job", ex=30)
    began = time.monotonic()
    response = service.client.post("/api/v1/backup")
    assert response.status_code == 200, response.get_json()
    assert time.monotonic() - began < 5  # not the 30 s until the lock expires
    assert service.connection.get(LOCK_KEY) is None


def test_a_started_job_without_heartbeat_is_reported_lost(make_service: Callable[..., Service]) -> None:
    """What a worker killed mid-backup leaves in Redis: a job "started" long ago, no heartbeat."""
    service = make_service(worker=False)
    job = enqueue_or_join(job_queue(service.connection))
    job.set_status(JobStatus.STARTED)
    job.started_at = datetime.now(UTC) - timedelta(seconds=HEARTBEAT_TTL + 5)
    job.save()
    answer = service.client.get(f"/api/v1/jobs/{job.id}").get_json()
    assert answer["status"] == "lost"
    assert answer["message"] == f"failed to save an etcd backup: {LOST_CAUSE}"
    service.connection.set(heartbeat_key(job.id), 1, ex=10)  # a live worker's job is not lost
    assert service.client.get(f"/api/v1/jobs/{job.id}").get_json()["status"] == "started"


def test_one_log_line_per_backup(service: Service, etcd: EtcdServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="worker.backup")
    revision = int(etcd.client().put("/log-line-test", "x").header.revision)
    answer = post_backup(service)
    lines = [record.getMessage() for record in caplog.records if record.name == "worker.backup"]
    assert len(lines) == 1
    assert re.fullmatch(rf"backup {answer['filename']}: {answer['filesize']} bytes in \d+\.\d\ds, "
                        rf"revision (\d+) from {re.escape(etcd.url)}", lines[0])
    assert int(lines[0].split("revision ")[1].split()[0]) >= revision
