"""Verify etcd's snapshot stream while it passes through.

etcd's Maintenance.Snapshot streams the bbolt file in messages that carry `remaining_bytes`, so the
first one tells the data size up front. After the data, etcd sends one more message whose blob is
the 32-byte SHA-256 of all the data. `etcdctl snapshot save` writes data + that trailer, and
`etcdctl snapshot restore` checks it; we keep it so our member is byte for byte the same file.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from itertools import chain
from typing import Protocol

from common.snapshot_format import TRAILER_SIZE, TrailerCheck
from worker.errors import SnapshotError


class SnapshotMessage(Protocol):
    blob: bytes
    remaining_bytes: int


def verified_snapshot(
    responses: Iterable[SnapshotMessage], on_verified: Callable[[bytes], object] = lambda digest: None
) -> tuple[int, Iterator[bytes]]:
    """Return the size of the snapshot file (data + trailer) and an iterator over its bytes.

    The iterator raises SnapshotError, after the last data byte and before the trailer, if the
    stream ended early or the trailer does not match the data; if it matches, `on_verified` gets
    the SHA-256 of the data.
    """
    stream = iter(responses)
    first = next(stream, None)
    if first is None:
        raise SnapshotError("etcd ended the snapshot stream before sending any data")
    data_size = len(first.blob) + first.remaining_bytes
    return data_size + TRAILER_SIZE, _checked(chain([first], stream), data_size, on_verified)


def _checked(
    stream: Iterator[SnapshotMessage], data_size: int, on_verified: Callable[[bytes], object]
) -> Iterator[bytes]:
    check = TrailerCheck(data_size)
    for message in stream:
        if data := check.feed(message.blob):
            yield data
        if len(check.trailer) > TRAILER_SIZE:
            raise SnapshotError(f"etcd sent more than the {data_size} bytes it announced")
    if check.data_left:
        raise SnapshotError(f"snapshot stream ended early, after {check.data_received} of {data_size} bytes")
    if len(check.trailer) != TRAILER_SIZE:
        raise SnapshotError("snapshot stream ended without its SHA-256 trailer")
    if not check.matches():
        raise SnapshotError("snapshot SHA-256 trailer does not match the data: the snapshot is corrupt")
    on_verified(check.trailer)
    yield check.trailer
