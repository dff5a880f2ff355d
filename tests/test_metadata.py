"""Metadata recorded beside each backup: the detail listing, the download headers, deleted with the archive."""

from __future__ import annotations

import base64
import hashlib
import json
import stat
import tarfile
from collections.abc import Callable
from datetime import datetime

from common.backups import backup_time
from harness.in_process import Service
from harness.servers import EtcdServer


def test_metadata_of_a_backup(service: Service, etcd: EtcdServer) -> None:
    revision = int(etcd.client().put("/metadata-test", "x").header.revision)
    answer = service.client.post("/api/v1/backup").get_json()
    name = answer["filename"]
    path = service.config.backup_dir / f"{name}.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    metadata = json.loads(path.read_text())
    with tarfile.open(service.config.backup_dir / name) as archive:
        member = archive.getmembers()[0]
        snapshot = archive.extractfile(member).read()  # type: ignore[union-attr]
    data, trailer = snapshot[:-32], snapshot[-32:]
    assert metadata["filename"] == name and metadata["filesize"] == answer["filesize"]
    assert metadata["endpoint"] == etcd.url
    assert metadata["revision"] >= revision
    assert metadata["key_count"] == etcd.client().get_all_response(keys_only=True).count
    assert metadata["etcd_version"].startswith("3.")
    assert metadata["db_size"] == len(data)
    assert metadata["db_sha256"] == hashlib.sha256(data).hexdigest() == trailer.hex()
    assert int(metadata["cluster_id"], 16) > 0 and int(metadata["member_id"], 16) > 0
    started = backup_time(name)
    # The instant the name was chosen, to the microsecond: the name has its second.
    assert started is not None and datetime.fromisoformat(metadata["started"]).replace(microsecond=0) == started
    assert 0 < metadata["duration"] < 60


def test_detail_listing_and_download_headers(service: Service) -> None:
    names = [service.client.post("/api/v1/backup").get_json()["filename"] for _ in range(2)]
    (service.config.backup_dir / "snapshot-20200101_000000.tar.gz").write_bytes(b"taken before metadata existed")
    assert service.client.get("/api/v1/backup").get_json() == ["snapshot-20200101_000000.tar.gz", *names]
    detail = service.client.get("/api/v1/backup?detail=true").get_json()
    assert detail[0] == {"filename": "snapshot-20200101_000000.tar.gz", "filesize": 29}
    assert [entry["filename"] for entry in detail[1:]] == names
    assert all({"revision", "etcd_version", "db_sha256", "duration"} <= set(entry) for entry in detail[1:])
    assert service.client.get("/api/v1/backup?detail=false").get_json() == [detail[0]["filename"], *names]
    assert service.client.get("/api/v1/backup?detail=maybe").status_code == 400
    response = service.client.get(f"/api/v1/backup/{names[-1]}")
    response.close()
    assert response.headers["X-Etcd-Revision"] == str(detail[-1]["revision"])
    assert response.headers["X-Etcd-Version"] == detail[-1]["etcd_version"]


def test_rotation_deletes_the_metadata_with_the_archive(make_service: Callable[..., Service]) -> None:
    service = make_service(rotate=1)
    for _ in range(2):
        newest = service.client.post("/api/v1/backup").get_json()["filename"]
    assert sorted(path.name for path in service.config.backup_dir.iterdir()) == [newest, f"{newest}.json"]


def test_orphan_metadata_is_removed_before_the_next_backup(service: Service) -> None:
    """A crash between linking the metadata and linking the archive leaves metadata alone."""
    orphan = service.config.backup_dir / "snapshot-20200101_000000.tar.gz.json"
    orphan.write_text("{}")
    kept = service.config.backup_dir / "notes.json"
    kept.write_text("an operator's file")
    name = service.client.post("/api/v1/backup").get_json()["filename"]
    assert not orphan.exists() and kept.exists()
    assert (service.config.backup_dir / f"{name}.json").exists()


def test_downloads_carry_the_archive_sha256(service: Service) -> None:
    name = service.client.post("/api/v1/backup").get_json()["filename"]
    digest = hashlib.sha256((service.config.backup_dir / name).read_bytes())
    metadata = json.loads((service.config.backup_dir / f"{name}.json").read_text())
    assert metadata["archive_sha256"] == digest.hexdigest()
    repr_digest = f"sha-256=:{base64.b64encode(digest.digest()).decode()}:"
    for headers, status in (({}, 200), ({"Range": "bytes=100-"}, 206)):
        response = service.client.get(f"/api/v1/backup/{name}", headers=headers)
        response.close()
        assert response.status_code == status
        # Of the whole archive on a 206 too: RFC 9530's Repr-Digest is the representation's, not the part's.
        assert response.headers["X-Backup-Sha256"] == digest.hexdigest()
        assert response.headers["Repr-Digest"] == repr_digest
    planted = "snapshot-20200101_000000.tar.gz"  # no metadata: no digest to send
    (service.config.backup_dir / planted).write_bytes(b"taken before metadata existed")
    response = service.client.get(f"/api/v1/backup/{planted}")
    response.close()
    assert "X-Backup-Sha256" not in response.headers and "Repr-Digest" not in response.headers
