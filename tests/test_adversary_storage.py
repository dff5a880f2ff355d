"""Adversary tests for the storage interface (common/storage) and allow-stale-member (issue 17).

Each test attacks one promise of the README or of common.storage.interface. Written by an adversary
review; seven of them failed until the service was fixed (metadata of the wrong shape or nested too deep,
a descriptor left open by a failed download, a drill's temp file taken for a dead backup's, a stale
backup just taken but named in the future)."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from common import backups, etcd, retention
from common.metadata import BackupMetadata
from common.storage import LocalStore, StorageError
from harness.in_process import Service, fetch


def post_backup(service: Service) -> dict[str, object]:
    response = service.client.post("/api/v1/backup")
    assert response.status_code == 200, response.get_json()
    body: dict[str, object] = response.get_json()
    return body


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture(autouse=True)
def _collect_leaked_files(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """A break would leave descriptors to the garbage collector (logged tracebacks hold them); collect them
    here, quietly, so that their ResourceWarning fails no other test."""
    import gc
    import warnings

    yield
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        caplog.get_records("call").clear()
        gc.collect()


# ---------------------------------------------------------------- hostile metadata


def _with_metadata(service: Service, edit: Callable[[dict[str, object]], object]) -> str:
    """Take a real backup, then rewrite its metadata file through `edit` (what someone who can write to
    backup-dir, or a disk error, could leave)."""
    name = str(post_backup(service)["filename"])
    path = service.config.backup_dir / (name + ".json")
    document = json.loads(path.read_bytes())
    replaced = edit(document)
    path.write_bytes(replaced if isinstance(replaced, bytes) else json.dumps(document).encode())
    return name


def test_deeply_nested_metadata_is_not_ours(service: Service) -> None:
    name = _with_metadata(service, lambda document: b"[" * 60000)
    assert fetch(service, f"/api/v1/backup/{name}").status_code == 200
    assert fetch(service, "/api/v1/backup?detail=true").status_code == 200
    assert fetch(service, "/metrics").status_code == 200


def test_metadata_with_a_non_hex_archive_sha256_does_not_break_the_download(service: Service) -> None:
    name = _with_metadata(service, lambda document: document.update(archive_sha256="zz"))
    assert fetch(service, f"/api/v1/backup/{name}").status_code == 200


def test_metadata_with_a_newline_in_a_header_value_does_not_break_the_download(service: Service) -> None:
    name = _with_metadata(service, lambda document: document.update(etcd_version="3.4\r\nX-Injected: 1"))
    response = fetch(service, f"/api/v1/backup/{name}")
    assert response.status_code == 200
    assert "X-Injected" not in response.headers


def test_metadata_with_wrong_types_does_not_break_metrics(service: Service) -> None:
    _with_metadata(service, lambda document: document.update(started=12, duration="x"))
    assert fetch(service, "/metrics").status_code == 200


def test_download_does_not_leak_descriptors(service: Service) -> None:
    name = str(post_backup(service)["filename"])
    url = f"/api/v1/backup/{name}"
    full = fetch(service, url)
    size = len(full.data)
    requests = [
        dict(method="HEAD"),
        dict(headers={"If-None-Match": full.headers["ETag"]}),
        dict(headers={"If-Modified-Since": full.headers["Last-Modified"]}),
        dict(headers={"Range": f"bytes={size + 10}-{size + 20}"}),
        dict(headers={"Range": "bytes=0-1,5-6"}),
        dict(headers={"Range": "bytes=abc"}),
        dict(headers={"Range": "bytes=3-9", "If-Range": full.headers["ETag"]}),
        dict(headers={"Range": "bytes=3-9", "If-Range": '"other"'}),
    ]
    fetch(service, url, method="HEAD")  # warm up
    before = open_fds()
    statuses = set()
    for _ in range(30):
        for kwargs in requests:
            statuses.add(fetch(service, url, **kwargs).status_code)  # type: ignore[arg-type]
    assert open_fds() <= before + 2, statuses
    assert statuses == {200, 206, 304, 416}


# ---------------------------------------------------------------- disk full mid-publish


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a tmpfs")
    mounted: list[Path] = []

    def mount(options: str) -> Path:
        path = tmp_path / f"tmpfs{len(mounted)}"
        path.mkdir(mode=0o700)
        subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], check=True)
        mounted.append(path)
        path.chmod(0o700)
        return path

    yield mount
    for path in mounted:
        subprocess.run(["umount", str(path)], check=False)


def _metadata(name: str) -> BackupMetadata:
    return BackupMetadata(filename=name, filesize=1, cluster_id="1", member_id="1", endpoint="x", revision=1,
                          etcd_version="3.4", db_size=1, db_sha256="0" * 64, started="2026-01-01T00:00:00+00:00",
                          duration=0.1)


def _visible(directory: Path) -> list[str]:
    return sorted(os.listdir(directory))


def test_a_disk_that_fills_while_the_archive_is_written_leaves_nothing(tmpfs: Callable[[str], Path]) -> None:
    directory = tmpfs("size=2m")
    store = LocalStore(directory)
    store.prepare()
    name = "snapshot-20260101_000000.tar.gz"
    with pytest.raises(StorageError, match="full"), store.new_backup(name, "tag") as pending:
        for _ in range(64):
            pending.write(b"x" * 65536)
        pending.flush()
        pending.publish(_metadata(name))
    assert _visible(directory) == []


def test_a_disk_with_room_for_the_archive_but_not_its_metadata(tmpfs: Callable[[str], Path]) -> None:
    directory = tmpfs("size=64k")
    store = LocalStore(directory)
    store.prepare()
    name = "snapshot-20260101_000000.tar.gz"
    # Fill all but the archive's blocks: the metadata's temp file finds no room.
    with pytest.raises(StorageError), store.new_backup(name, "tag") as pending:
        data = b"x" * 4096
        try:
            while True:
                pending.write(data)
                pending.flush()
        except OSError:
            pass
        # What fitted is the archive; now publish.
        pending.publish(_metadata(name))
    assert _visible(directory) == []
    assert store.list_backups() == []


def test_no_inode_left_for_the_archive_link_leaves_nothing(tmpfs: Callable[[str], Path]) -> None:
    """tmpfs counts each hard link against nr_inodes: the archive's link into place fails after the metadata's."""
    for inodes in range(2, 8):
        directory = tmpfs(f"size=1m,nr_inodes={inodes}")
        store = LocalStore(directory)
        store.prepare()
        name = "snapshot-20260101_000000.tar.gz"
        try:
            with store.new_backup(name, "tag") as pending:
                pending.write(b"x" * 1000)
                pending.publish(_metadata(name))
        except StorageError:
            assert _visible(directory) == [], inodes
        else:
            assert _visible(directory) == [name, name + ".json"]
            assert store.list_backups() == [name]


def test_a_taken_name_fails_the_new_backup_and_keeps_the_old(tmp_path: Path) -> None:
    directory = tmp_path / "d"
    store = LocalStore(directory)
    store.prepare()
    name = "snapshot-20260101_000000.tar.gz"
    (directory / name).write_bytes(b"old archive, no metadata")
    with pytest.raises(StorageError, match="already exists"), store.new_backup(name, "tag") as pending:
        pending.write(b"new")
        pending.publish(_metadata(name))
    assert (directory / name).read_bytes() == b"old archive, no metadata"
    assert _visible(directory) == [name]


def test_a_planted_directory_named_like_the_metadata_fails_cleanly(tmp_path: Path) -> None:
    directory = tmp_path / "d"
    store = LocalStore(directory)
    store.prepare()
    name = "snapshot-20260101_000000.tar.gz"
    (directory / (name + ".json")).mkdir()
    with pytest.raises(StorageError), store.new_backup(name, "tag") as pending:
        pending.write(b"new")
        pending.publish(_metadata(name))
    assert store.list_backups() == []
    assert _visible(directory) == [name + ".json"]


# ---------------------------------------------------------------- planted files


def test_planted_files_are_never_served(service: Service, tmp_path: Path) -> None:
    name = str(post_backup(service)["filename"])
    directory = service.config.backup_dir
    fifo_meta = directory / (name + ".json")
    fifo_meta.unlink()
    os.mkfifo(fifo_meta)
    os.symlink("/etc/shadow", directory / "snapshot-20200101_000000.tar.gz")
    os.symlink("/dev/zero", directory / "snapshot-20200101_000001.stale.tar.gz")
    os.mkfifo(directory / "snapshot-20200101_000002.tar.gz")
    (directory / "snapshot-20200101_000003.tar.gz").mkdir()
    (directory / "snapshot-20200101_000004.tar.gz").write_bytes(b"x")
    (directory / "snapshot-20200101_000004.tar.gz.json").write_bytes(b" " * (1 << 20))
    os.symlink("/etc/shadow", directory / "snapshot-20200101_000005.tar.gz.json")
    (directory / "snapshot-20200101_000005.tar.gz").write_bytes(b"y")
    listed = fetch(service, "/api/v1/backup").get_json()
    assert listed == ["snapshot-20200101_000004.tar.gz", "snapshot-20200101_000005.tar.gz", name]
    for planted in ("snapshot-20200101_000000.tar.gz", "snapshot-20200101_000001.stale.tar.gz",
                    "snapshot-20200101_000002.tar.gz", "snapshot-20200101_000003.tar.gz"):
        assert fetch(service, f"/api/v1/backup/{planted}").status_code == 404
    assert fetch(service, f"/api/v1/backup/{name}").status_code == 200
    detail = fetch(service, "/api/v1/backup?detail=true").get_json()
    assert [entry.get("cluster_id") for entry in detail] == [None, None, None]
    assert fetch(service, "/metrics").status_code == 200


# ---------------------------------------------------------------- allow-stale-member


@pytest.fixture
def no_member_current(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every member fails the currency proof (as with the quorum gone), but still answers."""
    real = etcd.connect

    def connect(config: Any, prove: bool = True) -> etcd.EtcdConnection:
        if prove:
            raise etcd.EtcdUnavailable("no current etcd member answered: m1: not current: no leader (test)")
        return real(config, prove=False)

    monkeypatch.setattr(etcd, "connect", connect)
    # The one test etcd has a leader: stand in for a member without one.
    monkeypatch.setattr(etcd, "connect_leaderless", lambda config: real(config, prove=False))


def test_without_the_opt_in_nothing_changes(make_service: Callable[..., Service], no_member_current: None) -> None:
    service = make_service()
    response = service.client.post("/api/v1/backup")
    assert response.status_code == 500
    assert "m1: not current" in response.get_json()["message"]
    assert fetch(service, "/api/v1/backup").get_json() == []


def test_a_stale_backup_is_served_verified_and_never_latest(make_service: Callable[..., Service],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    service = make_service(allow_stale_member=True, rotate=1)
    current = str(post_backup(service)["filename"])
    real = etcd.connect
    monkeypatch.setattr(etcd, "connect", lambda config, prove=True: (_ for _ in ()).throw(
        etcd.EtcdUnavailable("no current etcd member answered: m1: not current")) if prove else real(config, False))
    monkeypatch.setattr(etcd, "connect_leaderless", lambda config: real(config, prove=False))
    first = post_backup(service)
    second = post_backup(service)
    assert backups.is_stale(str(first["filename"])) and "not current" in str(first["stale"])
    listed = fetch(service, "/api/v1/backup").get_json()
    # rotate 1: the current backup stays, and the newest stale one.
    assert listed == [current, second["filename"]], listed
    for name in listed:
        assert fetch(service, f"/api/v1/backup/{name}").status_code == 200
        verified = service.client.post(f"/api/v1/backup/{name}/verify")
        assert verified.status_code == 200, verified.get_json()
    metrics = fetch(service, "/metrics").data.decode()
    assert "etcd_backup_stale_backups 1.0" in metrics
    current_meta = json.loads((service.config.backup_dir / (current + ".json")).read_bytes())
    assert f"etcd_backup_last_revision {float(current_meta['revision'])}" in metrics
    # the quorum is back: the next backup is current, and the stale one goes.
    monkeypatch.setattr(etcd, "connect", real)
    third = post_backup(service)
    assert "stale" not in third
    assert fetch(service, "/api/v1/backup").get_json() == [third["filename"]]


def _plan(names: list[str], now: datetime, rotate: int, retention_config: Any = None,
          protect: str | None = None) -> dict[str, bool]:
    return {d.name: d.keep for d in retention.plan(names, now, rotate, retention_config, protect)}


NOW = datetime(2026, 11, 27, 12, 0, 0, tzinfo=UTC)


def _name(delta: timedelta, stale: bool = False) -> str:
    return backups.backup_name(NOW + delta, stale)


def test_retention_stale_and_current_mixes() -> None:
    c_old, c_new = _name(-timedelta(hours=2)), _name(-timedelta(hours=1))
    s_between, s_same, s_newer = (_name(-timedelta(hours=1, minutes=30), True), _name(-timedelta(hours=1), True),
                                  _name(-timedelta(minutes=1), True))
    s_future = _name(timedelta(hours=5), True)
    c_future = _name(timedelta(hours=5))
    kept = _plan([c_old, c_new, s_between, s_same, s_newer, s_future, c_future], NOW, 1)
    assert kept == {c_old: False, c_new: True, s_between: False, s_same: False, s_newer: True,
                    s_future: False, c_future: False}
    # Only stale ones (the quorum is gone for good): the newest rotate of them are kept.
    only = [_name(-timedelta(minutes=m), True) for m in range(5)]
    kept = _plan(only, NOW, 2)
    assert sum(kept.values()) == 2 and kept[only[0]] and kept[only[1]]


def test_stale_names_and_the_client_latest(monkeypatch: pytest.MonkeyPatch) -> None:
    from recovery.client import Client, ClientError

    client = Client.__new__(Client)
    client.base_url = "http://x"
    names = [_name(-timedelta(hours=1)), _name(-timedelta(minutes=1), True)]
    monkeypatch.setattr(Client, "list", lambda self: names)
    assert client.resolve("latest") == names[0]
    names[:] = [_name(-timedelta(minutes=1), True)]
    with pytest.raises(ClientError):
        client.resolve("latest")


def test_a_download_that_fails_after_open_closes_the_archive(service: Service) -> None:
    import gc

    name = _with_metadata(service, lambda document: document.update(archive_sha256="zz"))
    url = f"/api/v1/backup/{name}"
    fetch(service, f"/api/v1/backup/{name}", method="HEAD")
    gc.collect()
    before = open_fds()
    gc.disable()
    try:
        for _ in range(20):
            fetch(service, url)
        leaked = open_fds() - before
    finally:
        gc.enable()
        gc.collect()
    assert leaked <= 2, f"{leaked} descriptors left open by 20 failed downloads"


def test_a_backup_deleted_or_replaced_mid_download_is_served_whole(service: Service) -> None:
    name = str(post_backup(service)["filename"])
    path = service.config.backup_dir / name
    content = path.read_bytes()
    response = service.client.get(f"/api/v1/backup/{name}", buffered=False)
    etag = response.headers["ETag"]
    chunks: Iterator[bytes] = iter(response.response)  # type: ignore[arg-type]
    first = next(chunks)
    path.unlink()
    path.write_bytes(b"replaced" * 1000)
    body = first + b"".join(chunks)
    response.close()
    assert body == content
    again = fetch(service, f"/api/v1/backup/{name}")
    assert again.headers["ETag"] != etag
    # A resumed download with the old ETag in If-Range gets the whole new file, never a mix.
    mixed = fetch(service, f"/api/v1/backup/{name}", headers={"Range": "bytes=10-", "If-Range": etag})
    assert mixed.status_code == 200 and mixed.data == b"replaced" * 1000


@pytest.mark.slow
def test_gunicorn_worker_keeps_no_descriptor_of_head_304_416_or_cut_downloads(
        tmp_path: Path, etcd: Any, redis_server: Any, redis_conn: Any) -> None:
    import http.client
    import socket

    from harness.deployment import Deployment

    deployment = Deployment(tmp_path / "service", [etcd.url], redis_server).start()
    try:
        name = deployment.post_backup()["filename"]
        path = f"/api/v1/backup/{name}"
        _, headers, body = deployment.request("GET", path)
        etag = {key.lower(): value for key, value in headers.items()}["etag"]
        size = len(body)
        pid = deployment.web_worker_pid()

        def count() -> int:
            return len(os.listdir(f"/proc/{pid}/fd"))

        def ask(method: str, extra: dict[str, str]) -> int:
            connection = http.client.HTTPConnection("127.0.0.1", deployment.port, timeout=10)
            connection.request(method, path, headers=extra)
            response = connection.getresponse()
            response.read()
            connection.close()
            return response.status

        def cut() -> None:  # a client that reads the headers and a few bytes, then goes
            with socket.create_connection(("127.0.0.1", deployment.port), timeout=10) as sock:
                sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
                sock.recv(100)

        ask("HEAD", {})
        before = count()
        statuses = set()
        for _ in range(40):
            statuses.add(ask("HEAD", {}))
            statuses.add(ask("GET", {"If-None-Match": etag}))
            statuses.add(ask("GET", {"Range": f"bytes={size + 5}-"}))
            statuses.add(ask("GET", {"Range": "bytes=1-2"}))
            cut()
        import time
        time.sleep(1)
        assert statuses == {200, 304, 416, 206}
        assert count() <= before + 2, (before, count())
    finally:
        deployment.stop()


def test_a_backup_starting_while_the_drill_records_does_not_remove_the_drills_temp_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import dataclasses

    directory = tmp_path / "d"
    store = LocalStore(directory)
    store.prepare()
    name = "snapshot-20260101_000000.tar.gz"
    with store.new_backup(name, "a" * 32) as pending:
        pending.write(b"archive")
        pending.publish(_metadata(name))
    real_replace = os.replace

    def replace(source: Any, target: Any) -> None:
        # The interleaving: a backup job takes the lock and cleans up (worker.jobs.take_backup) between
        # the drill's write and its rename.
        store.remove_unpublished(lambda: "b" * 32)
        return real_replace(source, target)

    monkeypatch.setattr(os, "replace", replace)
    store.update_metadata(dataclasses.replace(_metadata(name), drill={"passed": True}))
    monkeypatch.setattr(os, "replace", real_replace)
    recorded = store.read_metadata(name)
    assert recorded is not None and recorded.drill == {"passed": True}


def test_retention_protects_the_stale_backup_just_taken_as_it_does_a_current_one() -> None:
    future_current, future_stale = _name(timedelta(seconds=90)), _name(timedelta(seconds=90), True)
    assert _plan([future_current], NOW, 1, protect=future_current) == {future_current: True}
    assert _plan([future_stale], NOW, 1, protect=future_stale) == {future_stale: True}


def test_the_opt_in_never_takes_a_member_that_has_a_leader(make_service: Callable[..., Service],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A member that failed the proof yet has a leader (a CORRUPT alarm, a read that timed out) is not one of a
    lost quorum: allow-stale-member does not back it up."""
    service = make_service(allow_stale_member=True)
    real = etcd.connect
    monkeypatch.setattr(etcd, "connect", lambda config, prove=True: (_ for _ in ()).throw(
        etcd.EtcdUnavailable("no current etcd member answered: m1: not current: etcd raised a CORRUPT alarm on it"))
        if prove else real(config, False))
    response = service.client.post("/api/v1/backup")
    assert response.status_code == 500
    message = response.get_json()["message"]
    assert "CORRUPT" in message and "it has a leader, so the quorum is not gone" in message
    assert fetch(service, "/api/v1/backup").get_json() == []
