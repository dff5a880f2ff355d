"""The object store refusing parts of a backup (issue 12): the service's bucket is on a real SeaweedFS, reached
through a proxy (harness.s3_faults) that refuses UploadPart requests when told to. A few refusals are
retried away; a store that refuses every part fails the POST after a bounded number of attempts, leaving
nothing behind and the backups before it as they were."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from common.config.schema import MIN_PART_SIZE
from harness.in_process import Service
from harness.report import Report
from harness.s3 import SECRET_KEY, S3Server
from harness.s3_faults import S3_ERRORS, PartRefusingProxy
from harness.servers import EtcdServer

ATTEMPTS_PER_PART = 6
"""The first try and 5 retries: common/storage/s3.py's client has `retries={"max_attempts": 5}`, which botocore
takes as retries (its `total_max_attempts` is that plus one)."""
CONCURRENCY = 2
"""Parts in flight at once, when every part is refused (`s3: concurrency`): fewer than the archive has."""
RANDOM_MIB = 12
"""The database's random (incompressible) values: an archive of several parts of MIN_PART_SIZE (4 here)."""


@pytest.fixture(scope="module")
def incompressible_etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    """An etcd holding RANDOM_MIB MiB of random bytes, which gzip cannot shrink: its backup takes several parts."""
    server = EtcdServer(tmp_path_factory.mktemp("incompressible-etcd") / "data").start()
    client = server.client()
    for number in range(RANDOM_MIB):
        client.put(f"/random/{number}", os.urandom(1 << 20))
    client.close()
    yield server
    server.stop()


@pytest.fixture
def proxy(seaweedfs: S3Server) -> Iterator[PartRefusingProxy]:
    running = PartRefusingProxy(seaweedfs).start()
    yield running
    running.stop()


@pytest.fixture
def place(seaweedfs: S3Server) -> tuple[str, str]:
    return seaweedfs.place()


@pytest.fixture
def proxied_service(make_service: Callable[..., Service], proxy: PartRefusingProxy, place: tuple[str, str],
                    incompressible_etcd: EtcdServer) -> Callable[..., Service]:
    """A function that builds a Service backing up incompressible_etcd into `place`, through the proxy, in
    parts of the smallest size (and the `s3` settings given)."""

    def make(s3: dict[str, Any] | None = None, **overrides: Any) -> Service:
        settings = proxy.settings(*place)
        return make_service(etcd={"endpoints": [incompressible_etcd.url]}, **overrides, **{
            **settings, "s3": {**settings["s3"], "part-size": MIN_PART_SIZE, **(s3 or {})}})
    return make


def parts_of(filesize: int) -> int:
    return -(-filesize // MIN_PART_SIZE)


def keys_under(seaweedfs: S3Server, place: tuple[str, str]) -> tuple[list[str], list[str]]:
    """The objects and the multipart uploads under `place`, as SeaweedFS itself lists them (not via the proxy)."""
    bucket, prefix = place
    client = seaweedfs.client()
    objects = client.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
    uploads = client.list_multipart_uploads(Bucket=bucket, Prefix=prefix).get("Uploads", [])
    return ([item["Key"].removeprefix(prefix) for item in objects],
            [upload["Key"].removeprefix(prefix) for upload in uploads])


def test_parts_refused_a_few_times_are_retried_into_a_good_backup(
        proxied_service: Callable[..., Service], proxy: PartRefusingProxy, seaweedfs: S3Server,
        place: tuple[str, str], report: Report) -> None:
    service = proxied_service()
    proxy.refuse_parts(3, status=503)  # SlowDown: fewer than the retries even if all three hit one part
    answer = service.client.post("/api/v1/backup")
    assert answer.status_code == 200, answer.get_json()
    name, filesize = answer.get_json()["filename"], answer.get_json()["filesize"]
    parts = parts_of(filesize)
    assert parts >= 3, filesize  # refusals spread over parts in flight together
    assert proxy.refused == 3
    assert len({upload for upload, _ in proxy.attempts}) == 1
    assert sorted(number for _, number in proxy.attempts) == list(range(1, parts + 1))
    assert sum(proxy.attempts.values()) == parts + 3, proxy.attempts  # each refusal retried once more
    verified = service.client.post(f"/api/v1/backup/{name}/verify")
    assert verified.status_code == 200, verified.get_json()
    assert keys_under(seaweedfs, place) == ([name, name + ".json"], [])
    bucket, prefix = place
    assert seaweedfs.client().head_object(Bucket=bucket, Key=prefix + name)["ContentLength"] == filesize
    retried = sorted(count for count in proxy.attempts.values() if count > 1)
    report("SeaweedFS refusing 3 UploadParts with 503 SlowDown (a proxy in front), a backup of "
           f"{parts} parts of 5 MiB", f"POST 200 after {sum(proxy.attempts.values())} UploadPart attempts "
           f"(attempts of the parts refused: {retried}); the object as big as the archive, verify 200, "
           "no upload left")


@pytest.mark.parametrize("status", [500, pytest.param(503, marks=pytest.mark.slow)])  # 503: 1 s backoff steps
def test_every_part_refused_is_a_500_after_bounded_attempts_that_leaves_nothing(
        proxied_service: Callable[..., Service], proxy: PartRefusingProxy, seaweedfs: S3Server,
        place: tuple[str, str], caplog: pytest.LogCaptureFixture, report: Report, status: int) -> None:
    # rotate 1: a failed backup that rotated would take the earlier one with it. CONCURRENCY: a part waits
    # for a slot while the first ones are refused.
    service = proxied_service(rotate=1, s3={"concurrency": CONCURRENCY})
    earlier = service.client.post("/api/v1/backup")
    assert earlier.status_code == 200, earlier.get_json()
    earlier_name = earlier.get_json()["filename"]
    earlier_sha256 = service.client.get("/api/v1/backup?detail=true").get_json()[0]["archive_sha256"]
    parts = parts_of(earlier.get_json()["filesize"])

    proxy.refuse_parts(None, status=status)
    caplog.set_level(logging.DEBUG)  # boto's own debug lines too: none may carry the secret
    began = time.monotonic()
    answer = service.client.post("/api/v1/backup")
    took = time.monotonic() - began
    message = answer.get_json()["message"]
    assert answer.status_code == 500, answer.get_json()
    bucket, prefix = place
    assert f"s3://{bucket}/{prefix} at {proxy.endpoint}" in message, message
    assert f"({S3_ERRORS[status][0]}) when calling the UploadPart operation" in message, message
    assert SECRET_KEY not in json.dumps(answer.get_json())
    assert SECRET_KEY not in caplog.text
    assert len({upload for upload, _ in proxy.attempts}) == 1
    tried = sorted(number for _, number in proxy.attempts)
    # Parts go out while etcd streams: those in flight when one fails run their course, and no part goes after.
    assert tried == list(range(1, len(tried) + 1)) and len(tried) <= CONCURRENCY < parts
    assert set(proxy.attempts.values()) == {ATTEMPTS_PER_PART}, proxy.attempts
    assert proxy.refused == sum(proxy.attempts.values())

    assert keys_under(seaweedfs, place) == ([earlier_name, earlier_name + ".json"], [])
    assert service.client.get("/api/v1/backup").get_json() == [earlier_name]
    download = service.client.get(f"/api/v1/backup/{earlier_name}")
    assert hashlib.sha256(download.data).hexdigest() == earlier_sha256
    verified = service.client.post(f"/api/v1/backup/{earlier_name}/verify")
    assert verified.status_code == 200, verified.get_json()
    report(f"SeaweedFS refusing every UploadPart with {status} {S3_ERRORS[status][0]} (a proxy in front), rotate 1, "
           f"a backup there before, s3 concurrency {CONCURRENCY}",
           f"POST 500 after {took:.1f}s {message!r}; {ATTEMPTS_PER_PART} attempts for each of the {len(tried)} parts "
           f"sent (of {parts}), {proxy.refused} in all; no object and no upload left on SeaweedFS; the earlier "
           "backup still listed, its download's SHA-256 as recorded, verify 200; no secret key in the answer or "
           "the logs")


def test_an_outage_leaves_the_next_backup_its_retries(proxied_service: Callable[..., Service],
                                                      proxy: PartRefusingProxy, report: Report) -> None:
    """boto's standard retry mode spends a client's retry quota (500 tokens, 14 a retry of a 500): one client
    for every backup of a worker would come out of an outage with no retries left. Each backup has its own."""
    service = proxied_service(s3={"concurrency": CONCURRENCY})
    outages = 4  # at least 2 parts x 5 retries x 14 tokens each: more than the quota, together
    for _ in range(outages):
        proxy.refuse_parts(None, status=500)
        assert service.client.post("/api/v1/backup").status_code == 500
    proxy.refuse_parts(2, status=500)  # and counts the attempts afresh
    answer = service.client.post("/api/v1/backup")
    assert answer.status_code == 200, answer.get_json()
    assert proxy.refused == 2 and sum(proxy.attempts.values()) == parts_of(answer.get_json()["filesize"]) + 2
    report(f"{outages} backups failed by SeaweedFS refusing every part (500), then one whose first 2 parts are "
           "refused once", f"the {outages} POSTs 500, then POST 200 with "
           f"{sum(proxy.attempts.values())} UploadPart attempts: each refusal retried")
