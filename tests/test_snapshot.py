"""The snapshot stream check and the archive writer, on fake streams (pure units)."""

from __future__ import annotations

import hashlib
import os
import stat
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from common.snapshot_format import TrailerCheck
from harness.report import Report
from worker.archive import write_archive
from worker.errors import SnapshotError
from worker.snapshot import verified_snapshot

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
    size, chunks = verified_snapshot(etcd_stream(data))
    assert size == len(data) + 32
    assert b"".join(chunks) == data + hashlib.sha256(data).digest()


def test_trailer_split_across_messages_is_accepted() -> None:
    data = database(1000)
    whole = data + hashlib.sha256(data).digest()
    messages = [Message(whole[:990], 10), Message(whole[990:1010], 0), Message(whole[1010:], 0)]
    size, chunks = verified_snapshot(messages)
    assert b"".join(chunks) == whole and size == len(whole)


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
        size, chunks = verified_snapshot(messages)
        for _ in chunks:
            pass


def test_archive_is_a_tar_gz_with_the_snapshot_member(tmp_path: Path) -> None:
    data = database(300_000)
    size, chunks = verified_snapshot(etcd_stream(data))
    filesize = write_archive(tmp_path, NAME, STARTED, size, chunks, level=1, tag="t")
    path = tmp_path / NAME
    assert os.listdir(tmp_path) == [NAME]
    assert filesize == path.stat().st_size
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with tarfile.open(path, "r:gz") as archive:
        (member,) = archive.getmembers()
        assert member.name == "snapshot-20240506_070809.db"
        assert member.size == len(data) + 32 and member.mode == 0o600
        assert member.mtime == int(STARTED.timestamp())
        assert archive.extractfile(member).read() == data + hashlib.sha256(data).digest()  # type: ignore[union-attr]


@pytest.mark.parametrize("level", [0, 3, 9])
def test_every_gzip_level_gives_the_same_content(tmp_path: Path, level: int) -> None:
    data = database(50_000)
    size, chunks = verified_snapshot(etcd_stream(data))
    write_archive(tmp_path, NAME, STARTED, size, chunks, level=level, tag="t")
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
    size, chunks = verified_snapshot(messages(data))  # type: ignore[operator]
    with pytest.raises(SnapshotError) as failure:
        write_archive(tmp_path, NAME, STARTED, size, chunks, level=1, tag="t")
    assert os.listdir(tmp_path) == []
    report(f"{what} (a fake stream, unit level)", f"the backup fails: \"{failure.value}\"; nothing written")


def test_an_existing_name_is_never_overwritten(tmp_path: Path) -> None:
    (tmp_path / NAME).write_bytes(b"the older backup")
    size, chunks = verified_snapshot(etcd_stream(database(1000)))
    with pytest.raises(FileExistsError):
        write_archive(tmp_path, NAME, STARTED, size, chunks, level=1, tag="t")
    assert (tmp_path / NAME).read_bytes() == b"the older backup"
    assert os.listdir(tmp_path) == [NAME]
