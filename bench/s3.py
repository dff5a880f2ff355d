"""The S3 contenders, on SeaweedFS on loopback: a POST that streams the backup into the bucket against
`etcdctl snapshot save` alone and against the naive way (save, `gzip -1`, boto3's `upload_file`); a
download through the API against boto3's own; the list of many backups in a bucket."""

from __future__ import annotations

import hashlib
import json
import statistics
import subprocess
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench.measure import MB, curl_download, summary, timed
from common.backups import backup_name
from common.metadata import BackupMetadata
from harness.deployment import Deployment
from harness.processes import http, peak_rss
from harness.s3 import SeaweedServer
from harness.servers import ETCDCTL_BIN, EtcdServer, RedisServer


class S3Bench:
    def __init__(self, work: Path, etcd: EtcdServer, rounds: int, log: Callable[[str], None]) -> None:
        self.work, self.etcd, self.rounds, self.log = work, etcd, rounds, log
        self.server = SeaweedServer(work / "seaweedfs")
        # A Redis of its own: the local deployments' workers must not take its jobs (nor it theirs).
        self.redis = RedisServer(work / "redis")
        self.measured: dict[str, float] = {}
        self.details: dict[str, Any] = {}

    def start(self) -> None:
        self.server.start()
        self.redis.start()
        self.bucket, self.prefix = self.server.place()
        self.deployment = Deployment(self.work / "s3-deployment", [self.etcd.url], self.redis, rotate=2,
                                     **self.server.settings(self.bucket, self.prefix))
        self.deployment.start()

    def stop(self) -> None:
        self.deployment.stop()
        self.redis.stop()
        self.server.stop()

    def worker_peak_rss(self, size: int, take_backups: Callable[[], object]) -> None:
        """The peak RSS of a fresh S3 worker process over `take_backups` at a database of `size` MB."""
        worker = self.deployment.replace_workers()
        take_backups()
        self.details.setdefault("s3_worker_peak_rss_mb", {})[str(size)] = peak_rss(worker.pid) / MB

    def rss_measured(self, size: int, small: int, large: int) -> None:
        peaks = self.details["s3_worker_peak_rss_mb"]
        self.measured["s3_worker_peak_rss_mb_at_size"] = peaks[str(size)]
        self.measured["s3_worker_rss_growth_mb"] = peaks[str(large)] - peaks[str(small)]

    def contenders(self, etcdctl_seconds: list[float]) -> None:
        """POST to S3 against etcdctl alone and against the naive way, then a download through the API."""
        deployment, bucket = self.deployment, self.bucket
        scratch = self.work / "s3-scratch"
        scratch.mkdir(exist_ok=True)
        snapshot, packed = scratch / "snapshot.db", scratch / "snapshot.db.gz"
        client = self.server.client()

        def naive() -> None:
            subprocess.run([ETCDCTL_BIN, f"--endpoints={self.etcd.url}", "snapshot", "save", str(snapshot)],
                           env={"ETCDCTL_API": "3"}, check=True, capture_output=True)
            with open(packed, "wb") as out:
                subprocess.run(["gzip", "-1", "-c", str(snapshot)], stdout=out, check=True)
            client.upload_file(str(packed), bucket, "naive/" + packed.name)

        times: dict[str, list[float]] = {"s3": [], "naive_s3": []}
        self.log(f"S3 contenders on SeaweedFS: 1 warm-up round, {self.rounds} measured")
        for number in range(-1, self.rounds):
            for key in (("s3", "naive_s3") if number % 2 else ("naive_s3", "s3")):
                time.sleep(1)  # backup names have one-second resolution
                seconds = timed(deployment.post_backup if key == "s3" else naive)
                for leftover in (snapshot, packed):
                    leftover.unlink(missing_ok=True)
                if number >= 0:
                    times[key].append(seconds)
        medians = {key: statistics.median(values) for key, values in times.items()}
        self.measured["s3_vs_etcdctl"] = medians["s3"] / statistics.median(etcdctl_seconds)
        self.measured["s3_vs_naive"] = medians["s3"] / medians["naive_s3"]
        self.details["s3_seconds"] = {key: summary(values) for key, values in times.items()}
        self.download(deployment, bucket, self.prefix)

    def download(self, deployment: Deployment, bucket: str, prefix: str) -> None:
        """The newest backup through the API (curl) and straight from the bucket (boto3's download_fileobj)."""
        status, _, body = deployment.request("GET", "/api/v1/backup")
        name = json.loads(body)[-1]
        client = self.server.client()
        size = client.head_object(Bucket=bucket, Key=prefix + name)["ContentLength"]
        speeds: dict[str, list[float]] = {"api": [], "boto3": []}

        def direct() -> None:
            with open("/dev/null", "wb") as sink:
                client.download_fileobj(bucket, prefix + name, sink)

        for number in range(-1, self.rounds):
            for key in (("api", "boto3") if number % 2 else ("boto3", "api")):
                if key == "api":
                    speed = curl_download(f"{deployment.base}/api/v1/backup/{name}", size)
                else:
                    speed = size / MB / timed(direct)
                if number >= 0:
                    speeds[key].append(speed)
        self.measured["s3_download_vs_boto3"] = statistics.median(speeds["api"]) / statistics.median(speeds["boto3"])
        self.details["s3_download_mb_per_s"] = {key: summary(values) for key, values in speeds.items()}

    def listing(self, count: int) -> None:
        """GET /api/v1/backup with `count` backups in a bucket (one-byte archives and their metadata)."""
        bucket, prefix = self.server.place()
        client = self.server.client()
        self.log(f"GET /api/v1/backup with {count} backups in a bucket")
        first = datetime(2026, 1, 1, tzinfo=UTC)
        for number in range(count):
            started = first + timedelta(hours=number)
            name = backup_name(started)
            client.put_object(Bucket=bucket, Key=prefix + name, Body=b"\x1f")
            client.put_object(Bucket=bucket, Key=prefix + name + ".json", Body=BackupMetadata(
                filename=name, filesize=1, cluster_id="1", member_id="2", endpoint=self.etcd.url,
                revision=number + 1, etcd_version="3.4.23", db_size=0, db_sha256=hashlib.sha256(b"").hexdigest(),
                started=started.isoformat(), duration=1.0).to_bytes())
        lister = Deployment(self.work / "s3-lister", [self.etcd.url], rotate=count,
                            **self.server.settings(bucket, prefix))
        lister.start()
        try:
            for key, path in (("s3_list_ms", "/api/v1/backup"), ("s3_list_detail_ms", "/api/v1/backup?detail=true")):
                def get_list(path: str = path) -> None:
                    status, _, body = http("GET", f"{lister.base}{path}")
                    assert status == 200 and len(json.loads(body)) == count, (status, body[:200])

                # The first detail listing reads every metadata object; the ones after, only the listing.
                self.details[f"{key}_first"] = timed(get_list) * 1000
                values = [timed(get_list) * 1000 for _ in range(30)]
                self.measured[key] = statistics.median(values)
                self.details[key] = summary(values)
        finally:
            lister.stop()

