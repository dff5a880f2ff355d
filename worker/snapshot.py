"""Verify etcd's snapshot stream while it passes through.

etcd's Maintenance.Snapshot streams the bbolt file in messages that carry `remaining_bytes`, so the
first one tells the data size up front. After the data, etcd sends one more message whose blob is
the 32-byte SHA-256 of all the data. `etcdctl snapshot save` writes data + that trailer, and
`etcdctl snapshot restore` checks it; we keep it so our member is byte for byte the same file.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from itertools import chain
from typing import Protocol

from common.phases import Phases
from common.snapshot_format import TRAILER_SIZE, TrailerCheck
from worker.errors import SnapshotError


class SnapshotMessage(Protocol):
    blob: bytes
    remaining_bytes: int


class VerifiedSnapshot:
    """The bytes of the snapshot file (data + trailer), checked as they are iterated.

    `size` is known from the first message. Iteration raises SnapshotError, after the last data byte
    and before the trailer, if the stream ended early or the trailer does not match the data; once it
    has matched, `db_sha256` is the SHA-256 of the data (hex). `phases` gets the time spent waiting for
    etcd's messages ("receive") and hashing them ("snapshot sha256"). The data comes in pieces of at least
    `batch_bytes` (the last one excepted): etcd's messages are 32 KiB, and each piece handed to another
    thread, and to gzip, costs the same whatever its size.
    """

    def __init__(self, responses: Iterable[SnapshotMessage], phases: Phases | None = None,
                 batch_bytes: int = 0) -> None:
        stream = iter(responses)
        first = next(stream, None)
        if first is None:
            raise SnapshotError("etcd ended the snapshot stream before sending any data")
        self.data_size = len(first.blob) + first.remaining_bytes
        self.size = self.data_size + TRAILER_SIZE
        self.db_sha256: str | None = None
        self._stream = chain([first], stream)
        self._phases = Phases() if phases is None else phases
        self._batch_bytes = batch_bytes

    def __iter__(self) -> Iterator[bytes]:
        check = TrailerCheck(self.data_size)
        clock, phases = time.perf_counter, self._phases
        batch: list[bytes] = []
        batched = 0
        asked = clock()
        for message in self._stream:
            received = clock()
            data = check.feed(message.blob)
            phases.add("receive", received - asked)
            phases.add("snapshot sha256", clock() - received)
            if len(check.trailer) > TRAILER_SIZE:
                raise SnapshotError(f"etcd sent more than the {self.data_size} bytes it announced")
            if data:
                batch.append(data)
                batched += len(data)
            if batched and (batched >= self._batch_bytes or not check.data_left):
                yield batch[0] if len(batch) == 1 else b"".join(batch)
                batch, batched = [], 0
            asked = clock()
        if batch:  # the stream ended early: what came is yielded, then the error
            yield b"".join(batch)
        if check.data_left:
            raise SnapshotError(f"snapshot stream ended early, after {check.data_received} of {self.data_size} bytes")
        if len(check.trailer) != TRAILER_SIZE:
            raise SnapshotError("snapshot stream ended without its SHA-256 trailer")
        if not check.matches():
            raise SnapshotError("snapshot SHA-256 trailer does not match the data: the snapshot is corrupt")
        self.db_sha256 = check.sha256_hex()
        yield check.trailer
