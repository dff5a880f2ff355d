"""The snapshot stream check and the archive writer, on fake streams (pure units)."""

from __future__ import annotations

import hashlib
import os
import stat
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from common.metadata import BackupMetadata
from common.phases import Phases
from common.snapshot_format import TrailerCheck
from common.storage import LocalStore, StorageError
from harness.report import Report
from worker.archive import WrittenArchive, write_archive
from worker.errors import SnapshotError
from worker.snapshot import VerifiedSnapshot

STARTED = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)
NAME = "snapshot-20240506_070809.tar.gz"


@dataclass
class Message:
    blob: bytes
    remaining_bytes: int


def etcd_stream(data: bytes, chunk: int = 32 * 1024, trailer: bytes | None = None) -> list[Message]:
    """The messages etcd sends for a database `data`: chunks counting down, then the SHA-256."""
    messages, sent = [], 0
    while sent < len(data):
        blob = data[sent : sent + chunk]
        sent += len(blob)
        messages.append(Message(blob, len(data) - sent))
    messages.append(Message(hashlib.sha256(data).digest() if trailer is None else trailer, 0))
    return messages


def database(size: int) -> bytes:
    return os.urandom(size // 2) + b"k" * (size - size // 2)


def test_good_stream_yields_data_then_trailer() -> None:
    data = database(100_000)
    snapshot = VerifiedSnapshot(etcd_stream(data))
    assert snapshot.size == len(data) + 32 and snapshot.db_sha256 is None
    assert b"".join(snapshot) == data + hashlib.sha256(data).digest()
    assert snapshot.db_sha256 == hashlib.sha256(data).hexdigest()


def test_trailer_split_across_messages_is_accepted() -> None:
    data = database(1000)
    whole = data + hashlib.sha256(data).digest()
    messages = [Message(whole[:990], 10), Message(whole[990:1010], 0), Message(whole[1010:], 0)]
    snapshot = VerifiedSnapshot(messages)
    assert b"".join(snapshot) == whole and snapshot.size == len(whole)


@pytest.mark.parametrize("chunk", [1, 7, 999, 1000, 1031, 5000])
def test_trailer_check_splits_data_from_trailer_wherever_chunks_fall(chunk: int) -> None:
    data = database(1000)
    whole = data + hashlib.sha256(data).digest()
    check = TrailerCheck(len(data))
    fed = [check.feed(whole[start : start + chunk]) for start in range(0, len(whole), chunk)]
    assert b"".join(fed) == data and check.data_left == 0
    assert check.trailer == hashlib.sha256(data).digest() and check.matches()
    assert check.sha256_hex() == hashlib.sha256(data).hexdigest()
    check.feed(b"\0")
    assert not check.matches()


@pytest.mark.parametrize(("messages", "words"), [
    ([], "before sending any data"),
    (etcd_stream(b"x" * 70_000)[:-2], "ended early, after 65536 of 70000 bytes"),
    (etcd_stream(b"x" * 70_000)[:-1], "without its SHA-256 trailer"),
    (etcd_stream(b"x" * 70_000, trailer=b"\0" * 32), "does not match"),
    (etcd_stream(b"x" * 70_000, trailer=b"\0" * 31), "without its SHA-256 trailer"),
    (etcd_stream(b"x" * 70_000) + [Message(b"extra", 0)], "more than the 70000 bytes"),
])
def test_bad_streams_fail(messages: list[Message], words: str) -> None:
    with pytest.raises(SnapshotError, match=words):
        for _ in VerifiedSnapshot(messages):
            pass


@pytest.mark.parametrize("batch_bytes", [0, 32 * 1024, 100_000, 1 << 20])
def test_messages_are_handed_on_in_pieces_of_at_least_the_batch(batch_bytes: int) -> None:
    data = database(700_000)
    pieces = list(VerifiedSnapshot(etcd_stream(data), batch_bytes=batch_bytes))
    assert b"".join(pieces) == data + hashlib.sha256(data).digest()
    assert pieces[-1] == hashlib.sha256(data).digest()  # the trailer alone, once the data has matched it
    assert all(len(piece) >= batch_bytes for piece in pieces[:-2])  # all but the data's last and the trailer


@pytest.mark.parametrize(("messages", "words"), [
    (etcd_stream(b"x" * 700_000)[:-3], "ended early, after 655360 of 700000 bytes"),
    (etcd_stream(b"x" * 700_000, trailer=b"\0" * 32), "does not match"),
])
def test_a_bad_stream_in_pieces_fails_after_the_data_it_had(messages: list[Message], words: str) -> None:
    """Pieces do not hide a bad end: what came is handed on, then the stream fails as it would per message."""
    received = bytearray()
    with pytest.raises(SnapshotError, match=words):
        for piece in VerifiedSnapshot(messages, batch_bytes=256 << 10):
            received += piece
    assert bytes(received) == b"x" * (655_360 if "early" in words else 700_000)


def test_write_archive_records_its_phases() -> None:
    data = database(300_000)
    snapshot = VerifiedSnapshot(etcd_stream(data), batch_bytes=64 << 10)
    phases = Phases()

    class Sink:
        def write(self, chunk: bytes) -> int:
            return len(chunk)

        def flush(self) -> None:
            pass

    write_archive(Sink(), NAME, STARTED, snapshot.size, snapshot, 1, phases=phases)
    assert {"compress", "archive sha256", "write (to the store)"} <= set(phases.seconds)
    assert all(seconds >= 0 for seconds in phases.seconds.values())


def store_archive(directory: Path, messages: Iterable[Message], level: int = 1) -> WrittenArchive:
    """Archive a snapshot stream into a local store as a backup does: written unpublished, then published."""
    snapshot = VerifiedSnapshot(messages)
    with LocalStore(directory).new_backup(NAME, "t") as pending:
        written = write_archive(pending, NAME, STARTED, snapshot.size, snapshot, level)
        assert snapshot.db_sha256 is not None
        pending.publish(BackupMetadata(
            filename=NAME, filesize=written.size, archive_sha256=written.sha256, cluster_id="1", member_id="2",
            endpoint="http://127.0.0.1:2379", revision=1, etcd_version="3.4.23", db_size=snapshot.data_size,
            db_sha256=snapshot.db_sha256, started=STARTED.isoformat(), duration=0.1))
    return written


def test_archive_is_a_tar_gz_with_the_snapshot_member(tmp_path: Path) -> None:
    data = database(300_000)
    written = store_archive(tmp_path, etcd_stream(data))
    path = tmp_path / NAME
    assert sorted(os.listdir(tmp_path)) == [NAME, NAME + ".json"]
    assert written.size == path.stat().st_size
    assert written.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / (NAME + ".json")).stat().st_mode) == 0o600
    with tarfile.open(path, "r:gz") as archive:
        (member,) = archive.getmembers()
        assert member.name == "snapshot-20240506_070809.db"
        assert member.size == len(data) + 32 and member.mode == 0o600
        assert member.mtime == int(STARTED.timestamp())
        assert archive.extractfile(member).read() == data + hashlib.sha256(data).digest()  # type: ignore[union-attr]


@pytest.mark.parametrize("level", [0, 3, 9])
def test_every_gzip_level_gives_the_same_content(tmp_path: Path, level: int) -> None:
    data = database(50_000)
    store_archive(tmp_path, etcd_stream(data), level)
    with tarfile.open(tmp_path / NAME, "r:gz") as archive:
        assert archive.extractfile(archive.getmembers()[0]).read()[:-32] == data  # type: ignore[union-attr]


def corrupt_stream(data: bytes) -> Iterator[Message]:
    yield from etcd_stream(data, trailer=b"\1" * 32)


@pytest.mark.parametrize(("what", "messages"), [
    ("a snapshot stream whose SHA-256 trailer does not match its data", lambda data: corrupt_stream(data)),
    ("a snapshot stream that ends early", lambda data: iter(etcd_stream(data)[:3])),
], ids=["bad-trailer", "ended-early"])
def test_failed_stream_leaves_no_file(tmp_path: Path, what: str, messages: object, report: Report) -> None:
    data = database(200_000)
    with pytest.raises(SnapshotError) as failure:
        store_archive(tmp_path, messages(data))  # type: ignore[operator]
    assert os.listdir(tmp_path) == []
    report(f"{what} (a fake stream, unit level)", f"the backup fails: \"{failure.value}\"; nothing written")


@pytest.mark.parametrize("taken", [[NAME], [NAME, NAME + ".json"]], ids=["archive", "archive-and-metadata"])
def test_an_existing_name_is_never_overwritten(tmp_path: Path, taken: list[str]) -> None:
    for name in taken:
        (tmp_path / name).write_bytes(b"the older backup's")
    with pytest.raises(StorageError, match="already exists in backup-dir; it was not overwritten"):
        store_archive(tmp_path, etcd_stream(database(1000)))
    assert sorted(os.listdir(tmp_path)) == taken
    assert all((tmp_path / name).read_bytes() == b"the older backup's" for name in taken)
