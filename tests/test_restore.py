"""A backup is a real etcd snapshot: etcdctl restores it (hash check on) and the keys come back."""

from __future__ import annotations

import subprocess
import tarfile
from pathlib import Path

import pytest

from harness.in_process import Service
from harness.servers import EtcdServer, etcdctl


def test_backup_restores_with_etcdctl_and_keeps_every_key(service: Service, etcd: EtcdServer, tmp_path: Path) -> None:
    client = etcd.client()
    written = {f"/restore-test/key-{i:04d}": f"value-{i}-".encode() * (i % 50 + 1) for i in range(500)}
    written["/restore-test/binary"] = bytes(range(256))
    for key, value in written.items():
        client.put(key, value)

    response = service.client.post("/api/v1/backup")
    assert response.status_code == 200
    name = response.get_json()["filename"]

    # Unpack with the real tar, as an operator would.
    unpacked = tmp_path / "unpacked"
    unpacked.mkdir()
    subprocess.run(["tar", "xzf", str(service.config.backup_dir / name), "-C", str(unpacked)], check=True)
    db = unpacked / name.replace(".tar.gz", ".db")
    assert db.is_file()

    restored = EtcdServer(tmp_path / "restored", name="restored")
    etcdctl("snapshot", "restore", str(db), f"--data-dir={restored.data_dir}", f"--name={restored.name}",
            f"--initial-cluster={restored.name}={restored.peer_url}",
            f"--initial-advertise-peer-urls={restored.peer_url}")
    restored.start()
    try:
        found = {meta.key.decode(): value for value, meta in restored.client().get_prefix("/restore-test/")}
    finally:
        restored.stop()
    assert found == written


def test_member_is_byte_for_byte_what_etcdctl_saves(service: Service, etcd: EtcdServer, tmp_path: Path) -> None:
    etcd.client().put("/identity-test", "same bytes")
    reference = tmp_path / "etcdctl.db"
    etcdctl("snapshot", "save", str(reference), endpoint=etcd.url)
    response = service.client.post("/api/v1/backup")
    assert response.status_code == 200
    name = response.get_json()["filename"]
    with tarfile.open(service.config.backup_dir / name, "r:gz") as archive:
        member = archive.extractfile(archive.getmembers()[0])
        assert member is not None
        ours = member.read()
    # Nothing was written to etcd between the two snapshots, so bbolt gives the same file.
    assert ours == reference.read_bytes()


def test_etcdctl_refuses_a_corrupted_member(service: Service, tmp_path: Path) -> None:
    """The trailer is what etcdctl checks: flipping one data byte must make restore fail."""
    response = service.client.post("/api/v1/backup")
    name = response.get_json()["filename"]
    with tarfile.open(service.config.backup_dir / name, "r:gz") as archive:
        member = archive.extractfile(archive.getmembers()[0])
        assert member is not None
        data = bytearray(member.read())
    data[100] ^= 0xFF
    corrupt = tmp_path / "corrupt.db"
    corrupt.write_bytes(bytes(data))
    with pytest.raises(subprocess.CalledProcessError) as info:
        etcdctl("snapshot", "restore", str(corrupt), f"--data-dir={tmp_path / 'out'}")
    assert "Error: expected sha256" in info.value.stderr
