"""Least privilege for the API's pods, as deploy/kubernetes/procfile gives them: no etcd credentials at all (its
/readyz reads what the workers saw of etcd, common.etcd_seen), and S3 keys that may read and list but neither
write nor delete. The Procfile's processes, real etcd (TLS, client certificates required), real Redis, SeaweedFS."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from common import etcd
from common.config import EtcdConfig
from harness.deployment import Deployment, procfile, start, wait_for_api
from harness.files import write_private
from harness.processes import stop_process, wait_until
from harness.report import Report
from harness.s3 import ACCESS_KEY, READ_ACCESS_KEY, READ_SECRET_KEY, SECRET_KEY, S3Server
from harness.servers import EtcdServer, RedisServer

pytestmark = pytest.mark.slow


def test_the_api_serves_without_the_etcd_client_key(tls_etcd: EtcdServer, redis_server: RedisServer,
                                                    tmp_path: Path, report: Report) -> None:
    """The config names the etcd client certificate and key (one ConfigMap for every Deployment), but only the
    worker's container has them: the API starts, is ready, lists, takes a backup through the worker, serves it."""
    tls = tls_etcd.tls
    assert tls is not None
    with pytest.raises(etcd.EtcdUnavailable):  # etcd does require the client certificate
        etcd.connect(EtcdConfig(endpoints=(tls_etcd.url,), tls_ca=tls.ca.read_bytes(), timeout=2))
    secret = tmp_path / "etcd-client"  # the Secret's files, mounted in the worker's pod only
    secret.mkdir()
    files = {"tls-ca-file": shutil.copy(tls.ca, secret / "ca.pem"),
             "tls-cert-file": shutil.copy(tls.client_cert, secret / "client.pem"),
             "tls-key-file": write_private(secret / "client-key.pem", tls.client_key.read_bytes())}
    deployment = Deployment(tmp_path / "deploy", [], redis_server,
                            etcd={"endpoints": [tls_etcd.url], **{key: str(path) for key, path in files.items()}})
    try:
        deployment.start_worker()  # it reads the files at start-up
        shutil.rmtree(secret)  # the API's container never has them
        deployment.web = start(procfile()["web"], deployment.config, deployment.work / "web.log")
        wait_for_api(deployment.base, deployment.web)
        assert not any(Path(path).exists() for path in files.values())

        wait_until(lambda: deployment.request("GET", "/readyz")[0] == 200, 30, "/readyz 200", deployment.web)
        ready = json.loads(deployment.request("GET", "/readyz")[2])
        detail = ready["checks"]["etcd"]["detail"]
        assert detail.startswith(f"{tls_etcd.url} answers (etcd 3.") and ", as seen by worker@" in detail, ready
        answer = deployment.post_backup()
        assert answer["message"] == "backup successfully"
        status, _, listing = deployment.request("GET", "/api/v1/backup")
        assert status == 200 and json.loads(listing) == [answer["filename"]]
        status, headers, data = deployment.request("GET", f"/api/v1/backup/{answer['filename']}")
        assert status == 200 and len(data) == answer["filesize"] and data[:2] == b"\x1f\x8b"
        status, _, body = deployment.request("GET", "/api/v1/status")
        assert status == 200, body
    finally:
        deployment.stop()
    report("Procfile deployment, etcd requires client certificates, the API's container without the etcd "
           "client key, CA or certificate", f"web starts, /readyz 200 ({detail!r}), POST 200, list, download "
           f"{answer['filesize']} bytes, status 200")


def test_the_api_serves_the_bucket_with_keys_that_only_read_and_list(
        seaweedfs: S3Server, etcd: EtcdServer, redis_server: RedisServer, tmp_path: Path, report: Report) -> None:
    """SeaweedFS with two identities: the workers' (read, write, list) and the API's (read, list). The Procfile's
    web process on the latter lists, serves, verifies (on a worker) and reports; the key itself cannot write or
    delete there."""
    bucket, prefix = seaweedfs.place()
    settings = seaweedfs.settings(bucket, prefix)
    for key in ("access-key-id", "secret-access-key"):  # from the environment, each process its own
        del settings["s3"][key]
    reader = {"AWS_ACCESS_KEY_ID": READ_ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": READ_SECRET_KEY}
    writer = {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}
    deployment = Deployment(tmp_path / "deploy", [etcd.url], redis_server, deltas=True, delta_period="1s",
                            environments={"web": reader, "worker": writer, "deltas": writer}, **settings)
    deployment.start()
    try:
        watcher = deployment.start_process(procfile()["deltas"], "deltas")
        answer = deployment.post_backup()
        name = answer["filename"]
        status, _, listing = deployment.request("GET", "/api/v1/backup")
        assert status == 200 and json.loads(listing) == [name]
        status, _, data = deployment.request("GET", f"/api/v1/backup/{name}")
        assert status == 200 and len(data) == answer["filesize"] and data[:2] == b"\x1f\x8b"
        status, _, body = deployment.request("POST", f"/api/v1/backup/{name}/verify")
        assert status == 200 and json.loads(body)["message"] == "backup verified", body
        etcd.client().put(f"/{prefix}after", "x")
        wait_until(lambda: any(span["deltas"] for span in json.loads(
            deployment.request("GET", "/api/v1/recovery-window")[2])["backups"]), 60, "a delta the API reads",
            deployment.web)
        for path in ("/readyz", "/api/v1/status", "/metrics", "/"):
            status, _, body = deployment.request("GET", path)
            assert status == 200, (path, body[:300])
        stop_process(watcher, timeout=30)
    finally:
        deployment.stop()
    api_key = seaweedfs.client(READ_SECRET_KEY, READ_ACCESS_KEY)
    key = f"{prefix}{name}"
    assert api_key.get_object(Bucket=bucket, Key=key)["Body"].read() == data
    refused = []
    planted = f"{prefix}snapshot-20991231_235959.tar.gz"
    for attempt in (lambda: api_key.put_object(Bucket=bucket, Key=key, Body=b"forged"),
                    lambda: api_key.put_object(Bucket=bucket, Key=planted, Body=b"x"),
                    lambda: api_key.delete_object(Bucket=bucket, Key=key),
                    lambda: api_key.copy_object(Bucket=bucket, Key=planted, CopySource={"Bucket": bucket, "Key": key})):
        with pytest.raises(ClientError) as denied:
            attempt()
        refused.append(denied.value.response["Error"]["Code"])
    assert set(refused) == {"AccessDenied"}, refused
    assert seaweedfs.client().get_object(Bucket=bucket, Key=key)["Body"].read() == data  # unchanged
    report("Procfile deployment on SeaweedFS, the API's S3 key may only Read and List",
           f"list, download, verify, recovery window, readyz 200; that key's PUT, overwrite, DELETE, COPY: {refused}")


def test_the_all_in_one_servers_worker_reports_etcd_as_the_workers_do(etcd: EtcdServer, tmp_path: Path) -> None:
    """`etcd-backup --config` alone (the embedded queue): its worker thread reports, and its /readyz reads that."""
    deployment = Deployment(tmp_path / "deploy", [etcd.url]).start()
    try:
        wait_until(lambda: deployment.request("GET", "/readyz")[0] == 200, 30, "/readyz 200", deployment.web)
        detail = json.loads(deployment.request("GET", "/readyz")[2])["checks"]["etcd"]["detail"]
    finally:
        deployment.stop()
    assert detail.startswith(f"{etcd.url} answers (etcd 3.") and ", as seen by worker@" in detail, detail
